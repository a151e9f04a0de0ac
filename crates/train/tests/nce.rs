//! PatchNCE (CUT) against `tests/reference_nce.py`: PyTorch's `PatchSampleF` +
//! `PatchNCELoss` on fixed features, MLP weights and patch ids (golden file
//! `tests/golden/nce.safetensors`), in f64: the per-patch losses, the layer-averaged loss and
//! the gradients with respect to the query features and every MLP weight.

use atelier_nets::layers::Linear;
use atelier_train::nce::{nce_over_layers, patch_nce_loss, PatchSampler};
use candle_core::{DType, Device, Tensor, Var};

fn golden() -> std::collections::HashMap<String, Tensor> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nce.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn patch_nce_loss_and_gradients_match_the_reference() {
    let g = golden();
    let batch = 2;
    let var = |k: &str| Var::from_tensor(&g[k]).unwrap();
    let mut qs = Vec::new();
    let mut heads = Vec::new();
    let mut params = Vec::new();
    for i in 0..2 {
        qs.push(var(&format!("q{i}")));
        let p: Vec<Var> = ["w1", "b1", "w2", "b2"]
            .iter()
            .map(|n| var(&format!("mlp{i}.{n}")))
            .collect();
        heads.push((
            Linear {
                weight: p[0].as_tensor().clone(),
                bias: Some(p[1].as_tensor().clone()),
            },
            Linear {
                weight: p[2].as_tensor().clone(),
                bias: Some(p[3].as_tensor().clone()),
            },
        ));
        params.push(p);
    }
    let sampler = PatchSampler::from_heads(heads);
    let ids: Vec<Tensor> = (0..2)
        .map(|i| g[&format!("ids{i}")].to_dtype(DType::U32).unwrap())
        .collect();
    let q_feats: Vec<Tensor> = qs.iter().map(|v| v.as_tensor().clone()).collect();
    let k_feats: Vec<Tensor> = (0..2).map(|i| g[&format!("k{i}")].clone()).collect();
    let fq = sampler.forward(&q_feats, &ids, false).unwrap();
    let fk = sampler.forward(&k_feats, &ids, false).unwrap();
    for i in 0..2 {
        let per = patch_nce_loss(&fq[i], &fk[i], batch, 0.07).unwrap();
        let d = max_diff(&per, &g[&format!("per_patch{i}")]);
        eprintln!("layer {i}: per-patch loss max |diff| {d:.2e}");
        assert!(d < 1e-10, "layer {i}: {d}");
    }
    let loss = nce_over_layers(&fq, &fk, batch, 0.07, 10.0).unwrap();
    let d = max_diff(&loss.reshape(1).unwrap(), &g["loss"]);
    eprintln!("loss {} (|diff| {d:.2e})", loss.to_scalar::<f64>().unwrap());
    assert!(d < 1e-10);
    let grads = loss.backward().unwrap();
    for i in 0..2 {
        let gq = grads.get(qs[i].as_tensor()).expect("query gradient");
        let d = max_diff(gq, &g[&format!("grad_q{i}")]);
        eprintln!("layer {i}: d loss / d query features max |diff| {d:.2e}");
        assert!(d < 1e-10, "grad q{i}: {d}");
        for (n, p) in ["w1", "b1", "w2", "b2"].iter().zip(&params[i]) {
            let gp = grads.get(p.as_tensor()).expect("MLP gradient");
            let d = max_diff(gp, &g[&format!("grad_mlp{i}.{n}")]);
            assert!(d < 1e-10, "grad mlp{i}.{n}: {d}");
        }
    }
    // The keys are constants: no gradient reaches them.
    let k0 = Var::from_tensor(&k_feats[0]).unwrap();
    let fk0 = sampler
        .forward(&[k0.as_tensor().clone(), k_feats[1].clone()], &ids, false)
        .unwrap();
    let l = nce_over_layers(&fq, &fk0, batch, 0.07, 10.0).unwrap();
    assert!(l.backward().unwrap().get(k0.as_tensor()).is_none());
}

/// The patch ids are a prefix of a permutation: distinct and in range, `min(P, H·W)` of them.
#[test]
fn sampled_patch_ids_are_distinct_positions() {
    let mut rng = atelier_train::Rng::new(5);
    let f = Tensor::zeros((2, 3, 4, 5), DType::F32, &Device::Cpu).unwrap();
    let small = Tensor::zeros((2, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let ids = PatchSampler::sample_ids(&[f, small], 16, &mut rng, &Device::Cpu).unwrap();
    for (id, n, want) in [(&ids[0], 20, 16), (&ids[1], 9, 9)] {
        let mut v = id.to_vec1::<u32>().unwrap();
        assert_eq!(v.len(), want);
        v.sort();
        v.dedup();
        assert_eq!(v.len(), want, "repeated ids");
        assert!(v.iter().all(|&x| (x as usize) < n));
    }
}
