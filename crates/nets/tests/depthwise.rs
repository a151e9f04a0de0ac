//! The depthwise custom op against candle's grouped `conv2d` (f64): forward and gradients.

use atelier_nets::depthwise::depthwise_conv2d;
use atelier_nets::Rng;
use candle_core::{DType, Device, Tensor, Var};

fn rand(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn depthwise_matches_grouped_conv2d_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(5);
    // (n, c, h, w, k, padding, stride). Strided sizes end exactly on a stride: candle's own
    // backward (the reference) fails otherwise (see `layers::Conv2d::explicit_padding`).
    for (n, c, h, w, k, p, s) in [
        (2, 3, 9, 11, 3, 1, 1),
        (1, 4, 9, 7, 3, 1, 2),
        (1, 2, 8, 8, 5, 2, 1),
        (2, 3, 7, 9, 3, 0, 2),
        (1, 5, 8, 5, 3, 2, 3),
    ] {
        let xv = rand(&mut rng, &[n, c, h, w]);
        let wv = rand(&mut rng, &[c, 1, k, k]);
        let x = Var::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
        let wt = Var::from_vec(wv.clone(), (c, 1, k, k), &dev).unwrap();
        let y = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), p, s).unwrap();
        let r = Tensor::from_vec(rand(&mut rng, y.dims()), y.dims(), &dev).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Reference: candle's grouped conv2d in f64.
        let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let w64 = Var::from_tensor(&wt.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let y64 = x64.as_tensor().conv2d(w64.as_tensor(), p, s, 1, c).unwrap();
        let r64 = r.to_dtype(DType::F64).unwrap();
        let g64 = (&y64 * &r64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let case = format!("n{n} c{c} {h}x{w} k{k} p{p} s{s}");
        assert_eq!(y.dims(), y64.dims(), "{case}");
        let e = max_rel(&y, &y64);
        assert!(e < 1e-5, "{case}: forward {e}");
        let e = max_rel(grads.get(&x).unwrap(), g64.get(&x64).unwrap());
        assert!(e < 1e-5, "{case}: dx {e}");
        let e = max_rel(grads.get(&wt).unwrap(), g64.get(&w64).unwrap());
        assert!(e < 1e-5, "{case}: dw {e}");
    }
}
