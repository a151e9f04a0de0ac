//! Held-out validation images and the periodic KID of a CycleGAN run.

use std::path::{Path, PathBuf};

use atelier_imaging::{encode, Format, Image};
use atelier_train::config::{Family, NetChoice, TrainConfig, Validation};
use atelier_train::{Dataset, Silent, Trainer};

fn save_solid(dir: &Path, name: &str, rgb: [f32; 3], size: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let img = Image::filled(size, size, rgb);
    std::fs::write(dir.join(name), encode(&img, Format::Png, 0).unwrap()).unwrap();
}

fn weights() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ATELIER_FID_WEIGHTS") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/weights/fid_inception_v3.safetensors");
    p.is_file().then_some(p)
}

#[test]
fn hold_out_takes_every_nth_image_and_leaves_the_rest_for_training() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..10 {
        save_solid(
            tmp.path(),
            &format!("{i:02}.png"),
            [i as f32 / 10.0, 0.0, 0.0],
            8,
        );
    }
    let mut ds = Dataset::open(tmp.path()).unwrap();
    let held = ds.hold_out(3, 100);
    assert_eq!(held.len(), 4, "indices 0, 3, 6, 9");
    assert_eq!(ds.len(), 6);
    let stems: Vec<&str> = (0..ds.len()).map(|i| ds.stem(i).unwrap()).collect();
    assert_eq!(stems, ["01", "02", "04", "05", "07", "08"]);
    // The held-out images are the ones taken (red channel = index / 10, as 8-bit).
    let red: Vec<u8> = held.iter().map(|img| img.to_rgb8()[0]).collect();
    let want: Vec<u8> = [0.0f32, 0.3, 0.6, 0.9]
        .iter()
        .map(|r| atelier_imaging::denorm_u8(*r))
        .collect();
    assert_eq!(red, want);
    // At most `max`.
    let mut ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.hold_out(2, 2).len(), 2);
    assert_eq!(ds.len(), 8);
}

fn cyclegan_config(a: &Path, b: &Path, steps: u64) -> TrainConfig {
    let nets = NetChoice {
        net_g: Some("resnet_2blocks".into()),
        ngf: Some(8),
        ndf: Some(8),
        ..NetChoice::default()
    };
    let mut cfg =
        TrainConfig::new(Family::Cyclegan, a.into(), Some(b.into()), Some(32), &nets).unwrap();
    cfg.augment.load_size = 32;
    cfg.augment.flip = false;
    cfg.set_length(Some(steps), None, None, 1).unwrap();
    cfg.log_every = 5;
    cfg.sample_every = 100;
    cfg.checkpoint_every = 100;
    cfg
}

#[test]
fn validation_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    for i in 0..4 {
        save_solid(&a, &format!("{i}.png"), [0.8, 0.0, 0.0], 32);
        save_solid(&b, &format!("{i}.png"), [0.0, 0.0, 0.8], 32);
    }
    let mut cfg = cyclegan_config(&a, &b, 4);
    cfg.validation = Some(Validation {
        every: 2,
        max_images: 100,
        kid_every: 2,
        weights: tmp.path().join("absent.safetensors"),
        folders: None,
        size: None,
    });
    // 2 held out + 2 training images per domain: allowed; the missing weights are reported
    // when the first KID is due, by name.
    let mut t = Trainer::create(cfg.clone(), &tmp.path().join("run")).unwrap();
    let err = t.run(&mut Silent).err().unwrap().to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
    // Too few images to hold out.
    cfg.validation.as_mut().unwrap().every = 5;
    let err = Trainer::create(cfg.clone(), &tmp.path().join("run2"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("KID needs ≥ 2 validation images"), "{err}");
    // Not for pix2pix.
    let mut p = cfg.clone();
    p.family = Family::Pix2pix;
    assert!(p.validate().is_err());
}

#[test]
fn a_cyclegan_run_logs_and_plots_kid_on_held_out_images() {
    let Some(w) = weights() else {
        eprintln!("SKIPPED: fid_inception_v3.safetensors not found (ATELIER_FID_WEIGHTS)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    for i in 0..12 {
        let t = i as f32 / 24.0;
        save_solid(&a, &format!("{i:02}.png"), [0.8 - t, 0.1, 0.1], 32);
        save_solid(&b, &format!("{i:02}.png"), [0.1, 0.1 + t, 0.8], 32);
    }
    let mut cfg = cyclegan_config(&a, &b, 10);
    cfg.validation = Some(Validation {
        every: 4,
        max_images: 100,
        kid_every: 5,
        weights: w,
        folders: None,
        size: None,
    });
    // A checkpoint every step, one kept (9: the newest of the others), and the validated
    // steps' (5, 10) besides.
    cfg.checkpoint_every = 1;
    cfg.keep_checkpoints = 1;
    let out = tmp.path().join("run");
    let mut t = Trainer::create(cfg, &out).unwrap();
    t.run(&mut Silent).unwrap();
    let mut kept: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            "step-00000005.safetensors",
            "step-00000009.safetensors",
            "step-00000010.safetensors"
        ]
    );
    let mut at5 = Trainer::load_at(&out, Some(5), Some("cpu")).unwrap();
    assert_eq!(at5.step(), 5);
    assert!(!at5.export_now().unwrap().is_empty());
    let err = Trainer::load_at(&out, Some(3), Some("cpu"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no checkpoint of step 3 (there are: 5, 9, 10)"),
        "{err}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let start = lines.iter().find(|l| l["event"] == "start").unwrap();
    assert_eq!(start["images"], 9, "3 of 12 images per domain are held out");
    let kids: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "kid").collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    for k in &kids {
        assert_eq!(k["val_images"], serde_json::json!([3, 3]));
        for key in ["kid_a2b", "kid_b2a", "kid_a2b_std"] {
            assert!(k[key].as_f64().unwrap().is_finite(), "{k}");
        }
    }
    assert_eq!(kids[1]["step"], 10);
    let charts = atelier_train::plot::charts(&lines);
    assert!(charts.iter().any(|c| c.title.starts_with("KID")));
}
