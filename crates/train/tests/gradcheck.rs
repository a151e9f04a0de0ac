//! Gradient checks: candle's autograd through each layer type the networks use, and through
//! each loss, against central finite differences in float64.

use atelier_nets::layers::{leaky_relu, reflect_pad, Conv2d, ConvTranspose2d, Linear};
use atelier_nets::norm::{Ctx, Norm};
use atelier_train::loss::{bce_with_logits, l1, total_variation};
use atelier_train::{GanLoss, Rng};
use candle_core::{Device, Result, Tensor, Var};

fn rand_vec(n: usize, rng: &mut Rng, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.uniform() * 2.0 - 1.0) * scale)
        .collect()
}

fn var(shape: &[usize], rng: &mut Rng, scale: f64) -> Var {
    let n = shape.iter().product();
    Var::from_vec(rand_vec(n, rng, scale), shape, &Device::Cpu).unwrap()
}

/// Checks d f / d inputs at up to 12 elements per input. `f` builds a scalar from the inputs.
fn check(name: &str, inputs: &[Var], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors).unwrap();
    let grads = y.backward().unwrap();
    let mut rng = Rng::new(7);
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for (k, input) in inputs.iter().enumerate() {
        let g = grads
            .get(input.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for input {k}"));
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = input.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = input.dims().to_vec();
        for _ in 0..12.min(base.len()) {
            let i = rng.below(base.len());
            let eval = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[i] += delta;
                let mut ts = tensors.clone();
                ts[k] = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                f(&ts).unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (numeric - g[i]).abs() / (1e-3 + numeric.abs().max(g[i].abs()));
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{name}: input {k} element {i}: autograd {} vs numeric {numeric}",
                g[i]
            );
        }
    }
    eprintln!("{name}: worst relative error {worst:.1e}");
}

/// Weighted sum of an output, so that every output element matters differently.
fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let w = Tensor::from_vec(
        rand_vec(y.elem_count(), &mut rng, 1.0),
        y.dims(),
        y.device(),
    )?;
    y.mul(&w)?.sum_all()
}

#[test]
fn conv2d_stride_padding_groups() {
    let mut rng = Rng::new(1);
    // (k, stride, padding, groups, c_in, c_out); the strided cases leave the last padded
    // column (and, for k 4 / stride 3, an input column) unused: the regression for candle's
    // conv2d backward returning a gradient one column short.
    for (k, stride, padding, groups, cin, cout) in [
        (3, 1, 0, 1, 3, 4),
        (3, 2, 1, 1, 4, 6),
        (4, 3, 0, 1, 2, 3),
        (3, 1, 1, 4, 4, 4),
    ] {
        let x = var(&[2, cin, 7, 6], &mut rng, 1.0);
        let w = var(&[cout, cin / groups, k, k], &mut rng, 0.5);
        let b = var(&[cout], &mut rng, 0.5);
        check(
            &format!("conv2d k{k} s{stride} p{padding} g{groups}"),
            &[x, w, b],
            &|t| {
                let conv = Conv2d {
                    weight: t[1].clone(),
                    bias: Some(t[2].clone()),
                    stride,
                    padding,
                    groups,
                };
                project(&conv.forward(&t[0]).map_err(to_candle)?, 11)
            },
        );
    }
}

#[test]
fn conv_transpose2d_stride2_output_padding() {
    let mut rng = Rng::new(2);
    for (k, padding, output_padding) in [(3, 1, 1), (4, 1, 0)] {
        let x = var(&[2, 3, 4, 5], &mut rng, 1.0);
        let w = var(&[3, 2, k, k], &mut rng, 0.5);
        let b = var(&[2], &mut rng, 0.5);
        check(&format!("conv_transpose2d k{k}"), &[x, w, b], &|t| {
            let conv = ConvTranspose2d {
                weight: t[1].clone(),
                bias: Some(t[2].clone()),
                stride: 2,
                padding,
                output_padding,
            };
            project(&conv.forward(&t[0]).map_err(to_candle)?, 12)
        });
    }
}

#[test]
fn reflect_pad_upsample_activations_linear() {
    let mut rng = Rng::new(3);
    let x = var(&[2, 3, 5, 6], &mut rng, 1.0);
    check("reflect_pad(2)", std::slice::from_ref(&x), &|t| {
        project(&reflect_pad(&t[0], 2).map_err(to_candle)?, 13)
    });
    check("upsample_nearest2d", std::slice::from_ref(&x), &|t| {
        project(&t[0].upsample_nearest2d(10, 12)?, 14)
    });
    check("leaky_relu(0.2)", std::slice::from_ref(&x), &|t| {
        project(&leaky_relu(&t[0], 0.2).map_err(to_candle)?, 15)
    });
    check("relu+tanh", std::slice::from_ref(&x), &|t| {
        project(&t[0].tanh()?.affine(1.0, 0.3)?.relu()?, 16)
    });
    let z = var(&[3, 5], &mut rng, 1.0);
    let w = var(&[4, 5], &mut rng, 0.5);
    let b = var(&[4], &mut rng, 0.5);
    check("linear", &[z, w, b], &|t| {
        let lin = Linear {
            weight: t[1].clone(),
            bias: Some(t[2].clone()),
        };
        project(&lin.forward(&t[0]).map_err(to_candle)?, 17)
    });
}

#[test]
fn instance_and_batch_norm() {
    let mut rng = Rng::new(4);
    let x = var(&[2, 3, 4, 5], &mut rng, 1.0);
    check("instance norm", std::slice::from_ref(&x), &|t| {
        let n = Norm::Instance { eps: 1e-5 };
        project(&n.forward(&t[0], &mut Ctx::train()).map_err(to_candle)?, 18)
    });
    let w = var(&[3], &mut rng, 1.0);
    let b = var(&[3], &mut rng, 1.0);
    check("batch norm (train)", &[x, w, b], &|t| {
        let n = Norm::Batch {
            weight: t[1].clone(),
            bias: t[2].clone(),
            running_mean: Tensor::zeros(3, t[0].dtype(), t[0].device())?,
            running_var: Tensor::ones(3, t[0].dtype(), t[0].device())?,
            eps: 1e-5,
        };
        project(&n.forward(&t[0], &mut Ctx::train()).map_err(to_candle)?, 19)
    });
}

#[test]
fn losses() {
    let mut rng = Rng::new(5);
    let pred = var(&[2, 1, 3, 3], &mut rng, 3.0);
    for loss in [GanLoss::Vanilla, GanLoss::Lsgan, GanLoss::Hinge] {
        for real in [true, false] {
            check(
                &format!("{loss:?} D real={real}"),
                std::slice::from_ref(&pred),
                &|t| loss.discriminator(&t[0], real),
            );
        }
        check(&format!("{loss:?} G"), std::slice::from_ref(&pred), &|t| {
            loss.generator(&t[0])
        });
    }
    let a = var(&[2, 3, 4], &mut rng, 1.0);
    let b = var(&[2, 3, 4], &mut rng, 1.0);
    check("l1", &[a, b], &|t| l1(&t[0], &t[1]));
    let x = var(&[2, 3, 4, 5], &mut rng, 1.0);
    check("total_variation", &[x], &|t| total_variation(&t[0]));
}

/// Total variation against a hand computation: one 2×3 channel `[[0, 1, 3], [2, 2, 2]]`
/// has vertical differences 2, 1, 1 (mean 4/3) and horizontal ones 1, 2, 0, 0 (mean 3/4).
#[test]
fn total_variation_by_hand() {
    let x = Tensor::new(&[0.0f64, 1.0, 3.0, 2.0, 2.0, 2.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 3))
        .unwrap();
    let tv = total_variation(&x).unwrap().to_scalar::<f64>().unwrap();
    assert!((tv - (4.0 / 3.0 + 0.75)).abs() < 1e-12, "{tv}");
    // A constant image has none.
    let flat = Tensor::ones((2, 3, 4, 4), candle_core::DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        total_variation(&flat).unwrap().to_scalar::<f64>().unwrap(),
        0.0
    );
}

/// The stable BCE agrees with the textbook formula where the latter is finite, and stays
/// finite for large logits.
#[test]
fn bce_is_stable_and_correct() {
    let x = Tensor::new(&[-3.0f64, -0.5, 0.0, 0.7, 4.0], &Device::Cpu).unwrap();
    let ours = bce_with_logits(&x, 1.0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let textbook: f64 = [-3.0f64, -0.5, 0.0, 0.7, 4.0]
        .iter()
        .map(|v| -(1.0 / (1.0 + (-v).exp())).ln())
        .sum::<f64>()
        / 5.0;
    assert!((ours - textbook).abs() < 1e-12, "{ours} vs {textbook}");
    let big = Tensor::new(&[1000.0f64, -1000.0], &Device::Cpu).unwrap();
    let v = bce_with_logits(&big, 0.0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((v - 500.0).abs() < 1e-9, "{v}");
}

fn to_candle(e: atelier_nets::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
