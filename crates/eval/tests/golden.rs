//! Golden test of the FID Inception against pytorch-fid's features.
//!
//! The reference vectors come with the weights (`fid_inception_v3_reference.safetensors`,
//! written by pytorch-fid 0.3.0 on these weights; see ../shared/weights/README.md). The
//! weights (83 MiB) are not part of the repository: the test looks for them in
//! `$ATELIER_FID_WEIGHTS` or `../shared/weights/` beside the checkout and says so when it
//! cannot find them.

use std::path::PathBuf;

use atelier_eval::preprocess::{input_from_rgb8, synthetic_gradient_256, SIZE};
use atelier_eval::Inception;
use candle_core::{Device, Tensor};

fn weights_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ATELIER_FID_WEIGHTS") {
        return PathBuf::from(p).parent().map(PathBuf::from);
    }
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/weights");
    d.join("fid_inception_v3.safetensors")
        .is_file()
        .then_some(d)
}

fn relative_error(got: &[f32], want: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = f64::from(g) - f64::from(w);
        num += d * d;
        den += f64::from(w) * f64::from(w);
        max_abs = max_abs.max(d.abs());
    }
    ((num / den).sqrt(), max_abs)
}

#[test]
fn features_match_pytorch_fid() {
    let Some(dir) = weights_dir() else {
        eprintln!(
            "SKIPPED: fid_inception_v3.safetensors not found (set ATELIER_FID_WEIGHTS or put it \
             in ../shared/weights)"
        );
        return;
    };
    let dev = Device::Cpu;
    let net = Inception::load(&dir.join("fid_inception_v3.safetensors"), &dev).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("fid_inception_v3_reference.safetensors"), &dev)
            .unwrap();
    let mut cases: Vec<(String, Vec<f32>)> = vec![(
        "synthetic_gradient_256".into(),
        input_from_rgb8(&synthetic_gradient_256(), 256, 256),
    )];
    let photos = dir.join("../datasets/photo");
    for i in 1..=4 {
        let p = photos.join(format!("{i:04}.jpg"));
        if let Ok(img) = atelier_imaging::decode_file(&p, &Default::default()) {
            let rgb = img.to_rgb8();
            cases.push((
                format!("{i:04}"),
                input_from_rgb8(&rgb, img.width as usize, img.height as usize),
            ));
        }
    }
    let n = cases.len();
    let input: Vec<f32> = cases.iter().flat_map(|(_, x)| x.iter().copied()).collect();
    let x = Tensor::from_vec(input, (n, 3, SIZE, SIZE), &dev).unwrap();
    let f = net.features(&x).unwrap().to_vec2::<f32>().unwrap();
    for ((name, _), got) in cases.iter().zip(&f) {
        let want = reference[&format!("pool3.{name}")]
            .to_vec1::<f32>()
            .unwrap();
        let (rel, max_abs) = relative_error(got, &want);
        eprintln!("{name}: relative L2 error {rel:.2e}, max abs {max_abs:.2e}");
        // The synthetic image is the same input bit for bit: the network itself must agree
        // to 1e-3. The photos go through a different JPEG decoder than Pillow's
        // libjpeg-turbo (chroma upsampling differs by a level here and there), which moves
        // the features by about 2 %; they are held to a looser bound.
        let bound = if name.starts_with("synthetic") {
            1e-3
        } else {
            5e-2
        };
        assert!(
            rel <= bound,
            "{name}: relative error {rel:.2e} > {bound:.0e}"
        );
    }
}

#[test]
fn a_wrong_file_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("not-inception.safetensors");
    let t = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("fc.weight", t)].into_iter().collect(), &p).unwrap();
    let err = Inception::load(&p, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("missing tensor `Conv2d_1a_3x3.conv.weight`"),
        "{err}"
    );
    std::fs::write(&p, b"garbage").unwrap();
    let err = Inception::load(&p, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a readable safetensors file"), "{err}");
    let err = Inception::load(&dir.path().join("absent"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no such file"), "{err}");
}
