//! FID and KID against the reference implementations (pytorch-fid, torch-fidelity) on the
//! feature sets of `tests/golden/metrics.json` (written by
//! `tests/reference/metrics_reference.py`).

use atelier_eval::stats::Rows;
use atelier_eval::{fid, kid};
use serde_json::Value;

fn golden() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn fid_matches_pytorch_fid() {
    for case in golden()["fid"].as_array().unwrap() {
        let d = case["dim"].as_u64().unwrap() as usize;
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let got = fid(Rows::new(&a, d).unwrap(), Rows::new(&b, d).unwrap()).unwrap();
        let want = case["fid"].as_f64().unwrap();
        let name = case["name"].as_str().unwrap();
        eprintln!("{name}: FID {got} (pytorch-fid {want})");
        assert!((got - want).abs() <= 1e-6 * want, "{name}: {got} vs {want}");
        let own = fid(Rows::new(&a, d).unwrap(), Rows::new(&a, d).unwrap()).unwrap();
        assert!(own.abs() < 1e-6, "{name}: FID of a set with itself {own}");
    }
}

#[test]
fn kid_matches_torch_fidelity() {
    for case in golden()["kid"].as_array().unwrap() {
        let d = case["dim"].as_u64().unwrap() as usize;
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let n = a.len() / d;
        let got = kid(
            Rows::new(&a, d).unwrap(),
            Rows::new(&b, d).unwrap(),
            3,
            n,
            7,
        )
        .unwrap();
        let want = case["kid_mean"].as_f64().unwrap();
        let name = case["name"].as_str().unwrap();
        eprintln!("{name}: KID {} (torch-fidelity {want})", got.mean);
        // torch-fidelity computes the kernels in float32.
        assert!(
            (got.mean - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name}: {} vs {want}",
            got.mean
        );
        assert_eq!(got.subset_size, n);
    }
}
