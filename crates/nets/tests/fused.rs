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
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    (flat(&y), flat(g))
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
