//! `atelier bench`: generator forward-pass timings beside onnxruntime and PyTorch CPU, run in
//! the same invocation on identical weights (`bench/peers.py`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use atelier_nets::light::LightConfig;
use atelier_nets::resnet::ResnetConfig;
use atelier_nets::{Arch, Ctx, Network, NormKind};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::cli::{BenchArgs, Global};

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    size: u32,
    gmac: f64,
    atelier_ms: f64,
    onnxruntime_ms: Option<f64>,
    pytorch_ms: Option<f64>,
    /// Atelier's median over the best peer's median.
    ratio: Option<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn arch_of(args: &BenchArgs) -> anyhow::Result<(Arch, &'static str)> {
    Ok(match args.arch.as_str() {
        "resnet_9blocks" | "resnet_6blocks" => (
            Arch::Resnet(ResnetConfig {
                ngf: args.ngf,
                n_blocks: if args.arch == "resnet_9blocks" { 9 } else { 6 },
                norm: NormKind::Instance,
                ..ResnetConfig::default()
            }),
            if args.arch == "resnet_9blocks" {
                "resnet_9blocks"
            } else {
                "resnet_6blocks"
            },
        ),
        "light" => (
            Arch::Light(LightConfig {
                ngf: args.ngf,
                ..LightConfig::default()
            }),
            "light",
        ),
        other => bail!("--arch must be resnet_9blocks, resnet_6blocks or light, not `{other}`"),
    })
}

fn peers_script() -> Option<PathBuf> {
    let local = PathBuf::from("bench/peers.py");
    if local.is_file() {
        return Some(local);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers.py");
    built.is_file().then_some(built)
}

pub fn run(_global: &Global, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (arch, arch_name) = arch_of(&args)?;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let net = Network::new(arch, vb)?;
    let tensors = atelier_nets::file::tensors_of(&map)?;
    let dir = std::env::temp_dir().join(format!("atelier-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let weights = dir.join("weights.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;

    eprintln!(
        "bench: {arch_name} ngf {} ({} parameters), {} threads, median of {} runs",
        args.ngf,
        arch.parameter_count()?,
        args.threads,
        args.repeat
    );
    let mut atelier: Vec<f64> = Vec::new();
    let sizes: Vec<u32> = if args.train_only {
        Vec::new()
    } else {
        args.sizes.clone()
    };
    let fast = atelier_nets::Compiled::new(&net, atelier_nets::Precision::F32)?;
    let fwd = |x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(match &fast {
            Some(f) => f.forward(x, &mut Ctx::eval())?,
            None => net.forward(x, &mut Ctx::eval())?,
        })
    };
    for &s in &sizes {
        let x = Tensor::rand(-1f32, 1f32, (1, 3, s as usize, s as usize), &Device::Cpu)?;
        fwd(&x)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let t = Instant::now();
            let y = fwd(&x)?;
            y.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let m = median(&mut times);
        eprintln!("  atelier {s}x{s}: {m:.1} ms");
        atelier.push(m);
    }

    let peers = if args.no_peers || sizes.is_empty() {
        None
    } else {
        run_peers(&args, arch_name, &weights, &dir, &net)?
    };
    let _ = std::fs::remove_dir_all(&dir);

    let mut rows = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let find = |key: &str| -> Option<f64> {
            peers
                .as_ref()?
                .get("results")?
                .as_array()?
                .iter()
                .find_map(|r| {
                    (r.get("size")?.as_u64()? == s as u64).then(|| r.get(key)?.as_f64())?
                })
        };
        let ort = find("onnxruntime_median_ms");
        let pt = find("pytorch_median_ms");
        let best = match (ort, pt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        rows.push(Row {
            name: format!("{arch_name} ngf{} fwd {s}x{s}", args.ngf),
            size: s,
            gmac: arch.macs(s as usize, s as usize).unwrap_or(0) as f64 / 1e9,
            atelier_ms: atelier[i],
            onnxruntime_ms: ort,
            pytorch_ms: pt,
            ratio: best.map(|b| atelier[i] / b),
        });
    }
    if args.train || args.train_only {
        rows.push(train_row(&args, arch, arch_name)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!("| case | GMAC | atelier ms | onnxruntime ms | pytorch ms | ratio to best peer |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.2} | {:.1} | {} | {} | {} |",
                r.name,
                r.gmac,
                r.atelier_ms,
                fmt(r.onnxruntime_ms),
                fmt(r.pytorch_ms),
                r.ratio.map_or("-".to_string(), |v| format!("{v:.2}x"))
            );
        }
        if let Some(p) = &peers {
            println!(
                "\npeers: torch {}, onnxruntime {}, {} threads; outputs agree with Atelier's to {}",
                p.get("torch_version")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?"),
                p.get("onnxruntime_version")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?"),
                args.threads,
                p.get("atelier_max_abs_diff")
                    .and_then(|v| v.as_f64())
                    .map_or("?".into(), |v| format!("{v:.1e} max abs")),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Python of the peers (`--python`, default `bench/.venv/bin/python`), if it exists.
fn peer_python(args: &BenchArgs) -> Option<PathBuf> {
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench/.venv/bin/python"));
    if !python.exists() {
        eprintln!(
            "bench: {} not found; peers skipped. Create it with: python3 -m venv bench/.venv && \
             bench/.venv/bin/pip install -r bench/requirements.txt",
            python.display()
        );
        return None;
    }
    Some(python)
}

fn run_peers(
    args: &BenchArgs,
    arch_name: &str,
    weights: &Path,
    dir: &Path,
    net: &Network,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(script) = peers_script() else {
        eprintln!("bench: bench/peers.py not found; peers skipped (run from the repository root)");
        return Ok(None);
    };
    let Some(python) = peer_python(args) else {
        return Ok(None);
    };
    let check = dir.join("check.safetensors");
    let sizes: Vec<String> = args.sizes.iter().map(|s| s.to_string()).collect();
    eprintln!(
        "bench: running peers ({} {})",
        python.display(),
        script.display()
    );
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["--weights", &weights.to_string_lossy()])
        .args([
            "--arch",
            arch_name,
            "--ngf",
            &args.ngf.to_string(),
            "--norm",
            "instance",
        ])
        .args(["--sizes", &sizes.join(",")])
        .args(["--threads", &args.threads.to_string()])
        .args(["--repeat", &args.repeat.to_string()])
        .args(["--check-output", &check.to_string_lossy()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running bench/peers.py")?;
    if !out.status.success() {
        bail!("bench/peers.py failed ({})", out.status);
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bench/peers.py output")?;
    // Same weights, same input: the outputs must agree.
    let t = candle_core::safetensors::load(&check, &Device::Cpu)?;
    if let (Some(x), Some(y)) = (t.get("input"), t.get("pytorch")) {
        let ours = net.forward(x, &mut Ctx::eval())?;
        let diff = ours
            .sub(y)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        v["atelier_max_abs_diff"] = serde_json::json!(diff);
        if diff > 1e-3 {
            bail!("Atelier's output differs from PyTorch's by {diff} on the same weights");
        }
    }
    Ok(Some(v))
}

/// Times `steps` CycleGAN steps through the real trainer (synthetic noise images on disk, no
/// checkpoints or samples until the end) and returns each step's milliseconds.
fn atelier_train_steps(arch: Arch, size: u32, steps: u64) -> anyhow::Result<Vec<f64>> {
    use atelier_train::config::{Family, NetChoice, TrainConfig};
    use atelier_train::{Event, Observer, Trainer};
    let dir = std::env::temp_dir().join(format!("atelier-bench-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = atelier_nets::Rng::new(1);
    for d in ["A", "B"] {
        std::fs::create_dir_all(dir.join(d))?;
        for i in 0..4 {
            let px: Vec<u8> = (0..size * size * 3).map(|_| rng.next_u64() as u8).collect();
            let img = atelier_imaging::Image::from_rgb8(size, size, &px)?;
            let png = atelier_imaging::encode(&img, atelier_imaging::Format::Png, 0)?;
            std::fs::write(dir.join(d).join(format!("{i}.png")), png)?;
        }
    }
    let mut cfg = TrainConfig::new(
        Family::Cyclegan,
        dir.join("A"),
        Some(dir.join("B")),
        Some(size),
        &NetChoice::default(),
    )?;
    cfg.generator = arch;
    cfg.augment.load_size = size;
    cfg.augment.flip = false;
    cfg.set_length(Some(steps), None, None, 4)?;
    cfg.checkpoint_every = steps;
    cfg.sample_every = steps;
    cfg.log_every = steps;
    struct Timer(Instant, Vec<f64>);
    impl Observer for Timer {
        fn event(&mut self, e: &Event<'_>) {
            match e {
                Event::Started { .. } => self.0 = Instant::now(),
                Event::Step(_) => {
                    self.1.push(self.0.elapsed().as_secs_f64() * 1e3);
                    self.0 = Instant::now();
                }
                _ => {}
            }
        }
    }
    let mut timer = Timer(Instant::now(), Vec::new());
    let result = Trainer::create(cfg, &dir.join("run")).and_then(|mut t| t.run(&mut timer));
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(timer.1)
}

fn train_row(args: &BenchArgs, arch: Arch, arch_name: &str) -> anyhow::Result<Row> {
    let size = args.train_size;
    let warmup = 2usize;
    let repeat = args.repeat.max(1);
    eprintln!(
        "bench: CycleGAN step {arch_name} ngf {} at {size}x{size}, batch 1",
        args.ngf
    );
    let times = atelier_train_steps(arch, size, (warmup + repeat) as u64)?;
    let mut timed: Vec<f64> = times[warmup.min(times.len())..].to_vec();
    let ours = median(&mut timed);
    eprintln!("  atelier: {ours:.1} ms per step");
    let pytorch = if args.no_peers || arch_name == "light" {
        None
    } else {
        run_train_peer(args, arch, size, warmup, repeat)?
    };
    Ok(Row {
        name: format!(
            "cyclegan step {arch_name} ngf{} {size}x{size} batch 1",
            args.ngf
        ),
        size,
        gmac: 0.0,
        atelier_ms: ours,
        onnxruntime_ms: None,
        pytorch_ms: pytorch,
        ratio: pytorch.map(|p| ours / p),
    })
}

fn run_train_peer(
    args: &BenchArgs,
    arch: Arch,
    size: u32,
    warmup: usize,
    repeat: usize,
) -> anyhow::Result<Option<f64>> {
    let Some(script) = peers_script().map(|p| p.with_file_name("train_step.py")) else {
        eprintln!("bench: bench/train_step.py not found; PyTorch skipped");
        return Ok(None);
    };
    let Some(python) = peer_python(args) else {
        return Ok(None);
    };
    let Arch::Resnet(c) = arch else {
        return Ok(None);
    };
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["--size", &size.to_string(), "--batch", "1"])
        .args([
            "--ngf",
            &c.ngf.to_string(),
            "--n-blocks",
            &c.n_blocks.to_string(),
        ])
        .args(["--threads", &args.threads.to_string()])
        .args([
            "--warmup",
            &warmup.to_string(),
            "--repeat",
            &repeat.to_string(),
        ])
        .arg("--json")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running bench/train_step.py")?;
    if !out.status.success() {
        bail!("bench/train_step.py failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bench/train_step.py output")?;
    let ms = v.get("median_ms").and_then(|m| m.as_f64());
    if let Some(ms) = ms {
        eprintln!("  pytorch: {ms:.1} ms per step");
    }
    Ok(ms)
}
