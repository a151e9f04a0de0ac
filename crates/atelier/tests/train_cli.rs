//! `atelier train` end to end: a run that is killed with SIGKILL and resumed ends with the
//! same weights as one that was not; a trained model stylizes; plots and errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use atelier_imaging::{encode, Format, Image};

fn atelier(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("could not run the atelier binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "atelier {args:?} panicked:\n{stderr}"
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

/// Two small folders of synthetic 40×40 images (warm stripes vs cool checks).
fn domains(root: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (root.join("A"), root.join("B"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..4u32 {
        let mut pa = Vec::new();
        let mut pb = Vec::new();
        for y in 0..40u32 {
            for x in 0..40u32 {
                let s = ((x + 3 * i) / 5) % 2 == 0;
                pa.extend_from_slice(if s { &[220, 120, 40] } else { &[90, 30, 20] });
                let c = ((x / 8) + (y / 8) + i) % 2 == 0;
                pb.extend_from_slice(if c { &[40, 90, 200] } else { &[20, 40, 80] });
            }
        }
        for (dir, px) in [(&a, pa), (&b, pb)] {
            let img = Image::from_rgb8(40, 40, &px).unwrap();
            std::fs::write(
                dir.join(format!("{i}.png")),
                encode(&img, Format::Png, 0).unwrap(),
            )
            .unwrap();
        }
    }
    (a, b)
}

fn train_args<'a>(a: &'a str, b: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--quiet",
        "train",
        "cyclegan",
        "--data-a",
        a,
        "--data-b",
        b,
        "--out",
        out,
        "--size",
        "32",
        "--netG",
        "resnet_1blocks",
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--steps",
        "12",
        "--checkpoint-every",
        "3",
        "--sample-every",
        "4",
        "--pool-size",
        "4",
        "--seed",
        "7",
    ]
}

fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    let (tensors, _) = atelier_nets::file::read_safetensors(path).unwrap();
    tensors
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_weights_and_the_model_stylizes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = domains(tmp.path());
    let straight = tmp.path().join("straight");
    let out = atelier(&train_args(p(&a), p(&b), p(&straight)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cyclegan.safetensors"), "{stdout}");

    // Same run, killed with SIGKILL once its second checkpoint is on disk.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(train_args(p(&a), p(&b), p(&killed)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let marker = killed.join("checkpoints/step-00000006.safetensors");
    while !marker.exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("cyclegan.safetensors").exists(),
        "the run finished before the kill"
    );

    // A run's newest checkpoint can be exported without training (and without touching it).
    let metrics_before = std::fs::read(killed.join("metrics.jsonl")).unwrap();
    let out = atelier(&["train", "export", p(&killed)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = atelier_nets::file::read_card(&killed.join("cyclegan.safetensors")).unwrap();
    let step = card.provenance.steps.unwrap();
    assert!(step >= 6 && step.is_multiple_of(3), "exported step {step}");
    assert_eq!(
        std::fs::read(killed.join("metrics.jsonl")).unwrap(),
        metrics_before
    );

    let out = atelier(&["--quiet", "train", "resume", p(&killed)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["cyclegan.safetensors", "cyclegan_reverse.safetensors"] {
        let (x, y) = (weights(&straight.join(name)), weights(&killed.join(name)));
        assert_eq!(x.len(), y.len());
        for (k, v) in &x {
            assert!(v == &y[k], "{name}: `{k}` differs after kill -9 and resume");
        }
    }

    // The trained generator is a model file `stylize` takes.
    let img = tmp.path().join("in.png");
    std::fs::copy(a.join("0.png"), &img).unwrap();
    let styled = tmp.path().join("out.png");
    let model = killed.join("cyclegan.safetensors");
    let out = atelier(&[
        "--quiet",
        "stylize",
        p(&img),
        "--model",
        p(&model),
        "-o",
        p(&styled),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(styled.is_file());

    // `train plot` redraws the loss plot.
    let plot = tmp.path().join("plot.png");
    let out = atelier(&["train", "plot", p(&killed), "-o", p(&plot)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = atelier_imaging::decode(&std::fs::read(&plot).unwrap(), &Default::default()).unwrap();
    assert!(png.width >= 800 && png.height >= 600);
}

#[test]
fn bad_training_requests_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = domains(tmp.path());
    let run = tmp.path().join("run");
    let nothing = tmp.path().join("nothing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "cyclegan",
                "--data-a",
                p(&a),
                "--out",
                p(&run),
                "--steps",
                "2",
            ],
            "--data-b",
        ),
        (
            vec![
                "train",
                "cyclegan",
                "--data-a",
                p(&a),
                "--data-b",
                p(&b),
                "--out",
                p(&run),
            ],
            "--steps or --epochs",
        ),
        (
            vec![
                "train",
                "pix2pix",
                "--data-a",
                p(&a),
                "--data-b",
                p(&b),
                "--out",
                p(&run),
                "--steps",
                "2",
                "--size",
                "30",
            ],
            "multiple of",
        ),
        (
            vec![
                "train",
                "cyclegan",
                "--data-a",
                "/nonexistent/folder",
                "--data-b",
                p(&b),
                "--out",
                p(&run),
                "--steps",
                "2",
            ],
            "/nonexistent/folder",
        ),
        (
            vec![
                "train",
                "dcgan",
                "--data-a",
                p(&a),
                "--out",
                p(&run),
                "--steps",
                "2",
                "--device",
                "cuda",
            ],
            "cuda",
        ),
        (vec!["train", "resume", p(&nothing)], "not a training run"),
    ];
    for (args, needle) in cases {
        let out = atelier(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {lines:#?}");
        assert!(lines[0].contains(needle), "{args:?}: {}", lines[0]);
    }
    // An existing run is never overwritten.
    let ok = atelier(&[
        "--quiet",
        "train",
        "dcgan",
        "--preset",
        "brief",
        "--data-a",
        p(&a),
        "--out",
        p(&run),
        "--steps",
        "1",
        "--batch",
        "2",
        "--ngf",
        "4",
        "--ndf",
        "4",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let again = atelier(&[
        "train",
        "dcgan",
        "--preset",
        "brief",
        "--data-a",
        p(&a),
        "--out",
        p(&run),
        "--steps",
        "1",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a training run"));

    // pix2pix on the reference's aligned format: A and B side by side in one image.
    let ab = tmp.path().join("AB");
    std::fs::create_dir_all(&ab).unwrap();
    for i in 0..3u8 {
        let px: Vec<u8> = (0..80 * 40)
            .flat_map(|j| {
                let left = j % 80 < 40;
                if left {
                    [40 * i, 100, 200]
                } else {
                    [215 - 40 * i, 155, 55]
                }
            })
            .collect();
        let img = Image::from_rgb8(80, 40, &px).unwrap();
        std::fs::write(
            ab.join(format!("{i}.png")),
            encode(&img, Format::Png, 0).unwrap(),
        )
        .unwrap();
    }
    let run = tmp.path().join("p2p");
    let out = atelier(&[
        "--quiet",
        "train",
        "pix2pix",
        "--data-a",
        p(&ab),
        "--out",
        p(&run),
        "--size",
        "32",
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--steps",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = atelier_nets::file::read_card(&run.join("pix2pix.safetensors")).unwrap();
    assert_eq!(card.arch.name(), "unet_32");
    assert!(
        card.data.description.contains("(3 images)"),
        "{}",
        card.data.description
    );
}
