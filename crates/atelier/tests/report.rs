//! `atelier eval report` end to end: synthetic photos and "paintings", a model imported from
//! the committed PyTorch golden checkpoint, the real FID Inception network (skipped, saying
//! so, when its weights are not beside the checkout: see ../shared/weights/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use atelier_imaging::{encode, Format, Image};
use serde_json::Value;
use tempfile::TempDir;

fn weights() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ATELIER_FID_WEIGHTS") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/weights/fid_inception_v3.safetensors");
    p.is_file().then_some(p)
}

fn atelier(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running atelier")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Smooth "photos": gradients with a soft blob, varied per index.
fn photo(i: u32, side: u32) -> Image {
    let mut rgb = Vec::with_capacity((side * side * 3) as usize);
    let (cx, cy) = (
        0.2 + 0.6 * ((i * 37 % 11) as f32 / 10.0),
        0.3 + 0.4 * ((i * 53 % 7) as f32 / 6.0),
    );
    for y in 0..side {
        for x in 0..side {
            let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
            let blob = (-((fx - cx).powi(2) + (fy - cy).powi(2)) * 12.0).exp();
            rgb.push((60.0 + 120.0 * fy + 60.0 * blob) as u8);
            rgb.push((90.0 + 100.0 * fx * (1.0 - blob)) as u8);
            rgb.push((150.0 + 80.0 * (1.0 - fy) - 40.0 * blob) as u8);
        }
    }
    Image::from_rgb8(side, side, &rgb).unwrap()
}

/// Hard-edged, saturated "paintings": stripes whose width and colours vary per index.
fn painting(i: u32, side: u32) -> Image {
    let mut rgb = Vec::with_capacity((side * side * 3) as usize);
    let period = 4 + i % 5;
    for y in 0..side {
        for x in 0..side {
            let band = ((x + 2 * y) / period + i) % 3;
            let c = [[230u8, 40, 30], [250, 210, 20], [20, 40, 160]][band as usize];
            rgb.extend_from_slice(&c);
        }
    }
    Image::from_rgb8(side, side, &rgb).unwrap()
}

fn write_set(dir: &Path, n: u32, make: fn(u32, u32) -> Image) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = make(i, 64);
        std::fs::write(
            dir.join(format!("{i:02}.png")),
            encode(&img, Format::Png, 90).unwrap(),
        )
        .unwrap();
    }
}

fn entry<'a>(report: &'a Value, style: &str, kind: &str) -> &'a Value {
    report["styles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["style"] == style)
        .unwrap_or_else(|| panic!("no style {style}"))["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("{style}: no {kind} entry"))
}

#[test]
fn report_scores_models_and_baselines_and_writes_the_cards() {
    let Some(w) = weights() else {
        eprintln!("SKIPPED: fid_inception_v3.safetensors not found (ATELIER_FID_WEIGHTS)");
        return;
    };
    let dir = TempDir::new().unwrap();
    let (photos, paintings, models, out) = (
        dir.path().join("photos"),
        dir.path().join("paintings"),
        dir.path().join("models"),
        dir.path().join("report"),
    );
    write_set(&photos, 6, photo);
    write_set(&paintings, 5, painting);
    std::fs::create_dir_all(&models).unwrap();
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/G_light_ngf8_b2.pth");
    let model = models.join("toy.safetensors");
    let imp = atelier(&[
        "models",
        "import",
        p(&golden),
        "-o",
        p(&model),
        "--name",
        "toy",
    ]);
    assert!(
        imp.status.success(),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );

    let notes = dir.path().join("notes.md");
    std::fs::write(&notes, "## Discussion\n\nWhat the numbers mean.\n").unwrap();
    // The overview's own photos (not square: centre squares) and a large crop photo.
    let overview = dir.path().join("overview");
    std::fs::create_dir_all(&overview).unwrap();
    for i in 0..2 {
        let img = photo(i, 96);
        let wide = atelier_imaging::resize(&img, 96, 64);
        std::fs::write(
            overview.join(format!("o{i}.png")),
            encode(&wide, Format::Png, 90).unwrap(),
        )
        .unwrap();
    }
    let big = dir.path().join("big.png");
    std::fs::write(
        &big,
        encode(
            &atelier_imaging::resize(&photo(7, 96), 1200, 800),
            Format::Png,
            90,
        )
        .unwrap(),
    )
    .unwrap();
    let toy = format!("toy={}", p(&paintings));
    let same = format!("same={}", p(&photos));
    let out_run = atelier(&[
        "-q",
        "--models-dir",
        p(&models),
        "eval",
        "report",
        "--photos",
        p(&photos),
        "--style",
        &toy,
        "--style",
        &same,
        "--out",
        p(&out),
        "--weights",
        p(&w),
        "--size",
        "64",
        "--subsets",
        "20",
        "--latency-runs",
        "1",
        "--write-cards",
        "--notes",
        p(&notes),
        "--overview-photos",
        p(&overview),
        "--overview-size",
        "64",
        "--crop-photo",
        p(&big),
    ]);
    assert!(
        out_run.status.success(),
        "{}",
        String::from_utf8_lossy(&out_run.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in ["| identity", "| filter", "| atelier: toy"] {
        assert!(md.contains(row), "report.md lacks {row}:\n{md}");
    }
    // The overview of --overview-photos, and the crops of the large photo at 1024 px.
    assert!(
        md.contains(&format!(
            "2 photos of `{}` translated at 64×64",
            p(&overview)
        )),
        "{md}"
    );
    assert!(out.join("overview.jpg").is_file());
    assert!(md.contains("## Detail at 1024×683"), "{md}");
    assert!(out.join("crop_toy.jpg").is_file());
    assert!(
        md.trim_end()
            .ends_with("## Discussion\n\nWhat the numbers mean."),
        "--notes is appended:\n{md}"
    );

    // Against the photos themselves, the untranslated photos score far better than the
    // filtered ones; against the stripes, the identity is far from them.
    let kid = |style: &str, kind: &str| entry(&report, style, kind)["kid_x100"].as_f64().unwrap();
    let baselines: Vec<&Value> = report["styles"][1]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(
        baselines.len(),
        2,
        "style `same` has no model, only the baselines"
    );
    assert!(
        kid("same", "baseline").abs() < 0.2 * kid("toy", "baseline"),
        "identity vs itself {} should be ≈ 0 next to identity vs stripes {}",
        kid("same", "baseline"),
        kid("toy", "baseline")
    );
    let filter_same = baselines[1]["kid_x100"].as_f64().unwrap();
    assert!(filter_same > kid("same", "baseline"), "{filter_same}");

    // The model entry: MACs and latency at 512², and its KID written into its card.
    let m = entry(&report, "toy", "atelier");
    assert!(m["macs_512"].as_u64().unwrap() > 0);
    assert!(m["cpu_ms_512"].as_f64().unwrap() > 0.0);
    let inspect = atelier(&["models", "inspect", p(&model)]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    let card: Value = serde_json::from_str(text.rsplit_once("\nparameters").unwrap().0).unwrap();
    let written = card["metrics"]["kid_x100"].as_f64().unwrap();
    assert!((written - m["kid_x100"].as_f64().unwrap()).abs() < 1e-9);

    // One grid per style: a column per entry, a row per photo (at most 4).
    let grid = atelier_imaging::decode(
        &std::fs::read(out.join("grid_toy.png")).unwrap(),
        &atelier_imaging::Limits::default(),
    )
    .unwrap();
    assert_eq!(
        (grid.width, grid.height),
        (3 * 192 + 4 * 4, 4 * 192 + 5 * 4)
    );
    let list = atelier(&["--models-dir", p(&models), "models", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(&format!("KID×100 {written:.2}")), "{list}");
}
