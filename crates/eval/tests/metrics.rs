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

/// Edge correlation and sharpness against `tests/reference/structure_reference.py` (NumPy +
/// Pillow) on its synthetic images: blur, a colour grade, an unrelated image and a
/// half-size copy of photos of three sizes (upscaled and downscaled to 256²).
#[test]
fn structure_metrics_match_the_numpy_reference() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/structure");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/metrics.json")).unwrap())
            .unwrap();
    let load = |name: &str| {
        atelier_imaging::decode_file(format!("{dir}/{name}"), &atelier_imaging::Limits::default())
            .unwrap()
    };
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 12);
    let mut pairs = Vec::new();
    for case in cases {
        let (p, t) = (
            load(case["photo"].as_str().unwrap()),
            load(case["translation"].as_str().unwrap()),
        );
        let got = atelier_eval::structure(&p, &t);
        let (ec, sh) = (
            case["edge_correlation"].as_f64().unwrap(),
            case["sharpness"].as_f64().unwrap(),
        );
        let name = case["translation"].as_str().unwrap();
        eprintln!(
            "{name}: edge correlation {:.6} (reference {ec:.6}), sharpness {:.6} ({sh:.6})",
            got.edge_correlation, got.sharpness
        );
        // Pillow resizes in float32 with its own rounding of the filter weights.
        assert!((got.edge_correlation - ec).abs() < 2e-3, "{name}");
        assert!((got.sharpness - sh).abs() < 2e-3 * sh, "{name}");
        pairs.push((p, t));
    }
    let refs: Vec<(&atelier_imaging::Image, &atelier_imaging::Image)> =
        pairs.iter().map(|(p, t)| (p, t)).collect();
    let s = atelier_eval::structure_summary(&refs).unwrap();
    let mean = |k: &str| cases.iter().map(|c| c[k].as_f64().unwrap()).sum::<f64>() / 12.0;
    assert_eq!(s.images, 12);
    assert!((s.edge_correlation - mean("edge_correlation")).abs() < 2e-3);
    assert!((s.sharpness - mean("sharpness")).abs() < 2e-3);
}
