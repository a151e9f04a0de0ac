//! Adam against `torch.optim.Adam` (golden values from `reference_adam.py` beside this file),
//! and checkpointed state resuming bit-for-bit.

use atelier_train::{Adam, AdamConfig};
use candle_core::{DType, Device, Tensor, Var};

fn golden() -> serde_json::Value {
    let text = include_str!("adam_golden.json");
    serde_json::from_str(text).unwrap()
}

fn vec_of(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn setup(g: &serde_json::Value) -> (Var, Tensor, Tensor, Adam) {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec_of(&g["w0"]), 4, &dev).unwrap();
    let t = Tensor::from_vec(vec_of(&g["t"]), 4, &dev).unwrap();
    let c = Tensor::from_vec(vec_of(&g["c"]), 4, &dev).unwrap();
    let cfg = AdamConfig {
        lr: g["lr"].as_f64().unwrap(),
        beta1: g["beta1"].as_f64().unwrap(),
        beta2: g["beta2"].as_f64().unwrap(),
        eps: g["eps"].as_f64().unwrap(),
    };
    let opt = Adam::new(vec![("w".into(), w.clone())], cfg).unwrap();
    (w, t, c, opt)
}

fn step(w: &Var, t: &Tensor, c: &Tensor, opt: &mut Adam) {
    let loss = w
        .as_tensor()
        .sub(t)
        .unwrap()
        .sqr()
        .unwrap()
        .mul(c)
        .unwrap()
        .sum_all()
        .unwrap();
    opt.backward_step(&loss).unwrap();
}

#[test]
fn matches_torch_adam() {
    let g = golden();
    let (w, t, c, mut opt) = setup(&g);
    assert_eq!(w.dtype(), DType::F64);
    for (i, expected) in g["steps"].as_array().unwrap().iter().enumerate() {
        step(&w, &t, &c, &mut opt);
        let got: Vec<f64> = w.as_tensor().to_vec1().unwrap();
        for (a, b) in got.iter().zip(vec_of(expected)) {
            assert!(
                (a - b).abs() < 1e-12,
                "step {}: {got:?} vs {expected}",
                i + 1
            );
        }
    }
}

#[test]
fn restored_state_continues_bit_for_bit() {
    let g = golden();
    let (w, t, c, mut opt) = setup(&g);
    for _ in 0..3 {
        step(&w, &t, &c, &mut opt);
    }
    // Checkpoint: weights, moments, step.
    let saved_w: Vec<f64> = w.as_tensor().to_vec1().unwrap();
    let state: std::collections::HashMap<String, Tensor> = opt.state().into_iter().collect();
    let steps = opt.step_count();
    for _ in 0..3 {
        step(&w, &t, &c, &mut opt);
    }
    let straight: Vec<f64> = w.as_tensor().to_vec1().unwrap();

    let (w2, t2, c2, mut opt2) = setup(&g);
    w2.set(&Tensor::from_vec(saved_w, 4, &Device::Cpu).unwrap())
        .unwrap();
    opt2.restore(steps, &state).unwrap();
    for _ in 0..3 {
        step(&w2, &t2, &c2, &mut opt2);
    }
    let resumed: Vec<f64> = w2.as_tensor().to_vec1().unwrap();
    assert_eq!(straight, resumed);
}

/// The one-pass f32 update (what training on the CPU uses) against the same golden values,
/// to f32 precision.
#[test]
fn f32_update_matches_torch_adam() {
    let g = golden();
    let dev = Device::Cpu;
    let f32s = |v: &serde_json::Value| vec_of(v).iter().map(|&x| x as f32).collect::<Vec<_>>();
    let w = Var::from_vec(f32s(&g["w0"]), 4, &dev).unwrap();
    let t = Tensor::from_vec(f32s(&g["t"]), 4, &dev).unwrap();
    let c = Tensor::from_vec(f32s(&g["c"]), 4, &dev).unwrap();
    let (_, _, _, f64_opt) = setup(&g);
    let mut opt = Adam::new(vec![("w".into(), w.clone())], f64_opt.config).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    for (i, expected) in g["steps"].as_array().unwrap().iter().enumerate() {
        step(&w, &t, &c, &mut opt);
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (a, b) in got.iter().zip(vec_of(expected)) {
            let tol = 2e-6 * b.abs().max(1.0);
            assert!(
                (*a as f64 - b).abs() < tol,
                "step {}: {got:?} vs {expected}",
                i + 1
            );
        }
    }
}
