//! The fused f32 training ops against the composed candle ops in f64 (forward and gradients).

use atelier_nets::layers::reflect_pad;
use atelier_nets::norm::Norm;
use atelier_nets::{Activation, Ctx};
use candle_core::{DType, Device, Tensor, Var};

fn rand(shape: (usize, usize, usize, usize), seed: u64) -> Vec<f32> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Offsets per element so planes have a non-zero mean.
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 1.5
        })
        .collect()
}

/// Value and input gradient of `Σ f(x) · r` at `x`, in `dtype`.
fn value_and_grad(
    x: &[f32],
    shape: (usize, usize, usize, usize),
    dtype: DType,
    f: &dyn Fn(&Tensor) -> Tensor,
) -> (Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let xv = Var::from_tensor(
        &Tensor::from_slice(x, shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let y = f(xv.as_tensor());
    let r = Tensor::from_vec(rand(y.dims4().unwrap(), 99), y.dims4().unwrap(), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(xv.as_tensor()).unwrap();
    (flat(&y), flat(g))
}

/// A tensor's values as f64, flattened.
fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn instance_norm_with_activation_matches_the_composed_ops() {
    let shape = (2, 3, 7, 9);
    let x = rand(shape, 1);
    let norm = Norm::Instance { eps: 1e-5 };
    for act in [Activation::None, Activation::Relu, Activation::Leaky(0.2)] {
        let f = |t: &Tensor| norm.forward_act(t, &mut Ctx::train(), act).unwrap();
        let (y32, g32) = value_and_grad(&x, shape, DType::F32, &f);
        // f64 takes the composed candle path.
        let (y64, g64) = value_and_grad(&x, shape, DType::F64, &f);
        let (dy, dg) = (max_diff(&y32, &y64), max_diff(&g32, &g64));
        assert!(dy < 1e-5, "{act:?}: forward differs by {dy}");
        assert!(dg < 1e-4, "{act:?}: gradient differs by {dg}");
        // And the gradient is not trivially zero.
        assert!(g64.iter().any(|v| v.abs() > 1e-3), "{act:?}");
    }
}

#[test]
fn reflect_padding_matches_the_composed_ops() {
    for (shape, p) in [((1, 2, 5, 6), 1), ((2, 3, 8, 7), 3), ((1, 1, 4, 4), 3)] {
        let x = rand(shape, 5);
        let f = |t: &Tensor| reflect_pad(t, p).unwrap();
        let (y32, g32) = value_and_grad(&x, shape, DType::F32, &f);
        let (y64, g64) = value_and_grad(&x, shape, DType::F64, &f);
        assert_eq!(
            y32.len(),
            shape.0 * shape.1 * (shape.2 + 2 * p) * (shape.3 + 2 * p)
        );
        assert!(max_diff(&y32, &y64) < 1e-6, "{shape:?} p {p}: forward");
        assert!(max_diff(&g32, &g64) < 1e-5, "{shape:?} p {p}: gradient");
    }
}

#[test]
fn leaky_relu_matches_the_composed_ops() {
    let shape = (2, 3, 7, 9);
    let x = rand(shape, 3);
    for slope in [0.0, 0.01, 0.2, 0.3] {
        let f = |t: &Tensor| atelier_nets::layers::leaky_relu(t, slope).unwrap();
        let (y32, g32) = value_and_grad(&x, shape, DType::F32, &f);
        let (y64, g64) = value_and_grad(&x, shape, DType::F64, &f);
        assert!(max_diff(&y32, &y64) < 1e-6, "slope {slope}: forward");
        assert!(max_diff(&g32, &g64) < 1e-6, "slope {slope}: gradient");
    }
    // At exactly 0 the fused op takes PyTorch's convention (the slope); candle's composed
    // `maximum` would split the gradient in half.
    let zeros = vec![0f32; 2 * 3 * 4 * 4];
    let f = |t: &Tensor| atelier_nets::layers::leaky_relu(t, 0.2).unwrap();
    let (_, g) = value_and_grad(&zeros, (2, 3, 4, 4), DType::F32, &f);
    let r = rand((2, 3, 4, 4), 99);
    for (gv, rv) in g.iter().zip(&r) {
        assert!((gv - 0.2 * *rv as f64).abs() < 1e-6, "{gv} vs 0.2 · {rv}");
    }
}

/// A convolution's bias through the fused per-channel add: the output and both gradients
/// (input and bias) against the broadcast add in f64.
#[test]
fn bias_add_matches_the_composed_ops() {
    let dev = Device::Cpu;
    let shape = (3, 4, 5, 6);
    let x = rand(shape, 11);
    let b: Vec<f32> = rand((1, 4, 1, 1), 12);
    let run = |dtype: DType| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let xv = Var::from_tensor(
            &Tensor::from_slice(&x, shape, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let bv = Var::from_tensor(
            &Tensor::from_slice(&b, 4, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        // A 1×1 convolution with identity weights and the bias: y = x + b.
        let eye: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        let conv = atelier_nets::layers::Conv2d {
            weight: Tensor::from_vec(eye, (4, 4, 1, 1), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
            bias: Some(bv.as_tensor().clone()),
            stride: 1,
            padding: 0,
            groups: 1,
        };
        let y = conv.forward(xv.as_tensor()).unwrap();
        let r = Tensor::from_vec(rand(shape, 99), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            flat(&y),
            flat(grads.get(xv.as_tensor()).unwrap()),
            flat(grads.get(bv.as_tensor()).unwrap()),
        )
    };
    let (y32, gx32, gb32) = run(DType::F32);
    let (y64, gx64, gb64) = run(DType::F64);
    assert!(max_diff(&y32, &y64) < 1e-6, "forward");
    assert!(max_diff(&gx32, &gx64) < 1e-6, "input gradient");
    assert!(
        max_diff(&gb32, &gb64) < 1e-4,
        "bias gradient {gb32:?} vs {gb64:?}"
    );
    assert!(gb64.iter().all(|v| v.abs() > 1e-3));
}
