//! `atelier bench`: generator forward-pass timings beside onnxruntime and PyTorch CPU, run in
//! the same invocation on identical weights (`bench/peers.py`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use atelier_nets::light::LightConfig;
use atelier_nets::resnet::ResnetConfig;
use atelier_nets::{Arch, Compiled, Ctx, Network, NormKind, Precision};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::cli::{BenchArgs, Global};

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    size: u32,
    /// Arithmetic precision of Atelier's kernels for this row (the peers run fp32).
    precision: &'static str,
    gmac: f64,
    atelier_ms: f64,
    onnxruntime_ms: Option<f64>,
    pytorch_ms: Option<f64>,
    /// Atelier's median over the best peer's median.
    ratio: Option<f64>,
    /// Achieved GFLOP/s (2 FLOP per MAC) and its fraction of the measured fp32 peak.
    gflops: Option<f64>,
    peak_fraction: Option<f64>,
    /// PSNR (dB) of this precision's output against Atelier's fp32 output, same input.
    psnr_db_vs_f32: Option<f64>,
    /// Peak RSS of the process while this case ran, and its growth over the RSS before.
    peak_rss_mb: Option<f64>,
    rss_growth_mb: Option<f64>,
    onnxruntime_peak_rss_mb: Option<f64>,
    onnxruntime_rss_growth_mb: Option<f64>,
}

impl Row {
    fn new(name: String, size: u32, precision: &'static str, gmac: f64, ms: f64) -> Self {
        Self {
            name,
            size,
            precision,
            gmac,
            atelier_ms: ms,
            onnxruntime_ms: None,
            pytorch_ms: None,
            ratio: None,
            gflops: None,
            peak_fraction: None,
            psnr_db_vs_f32: None,
            peak_rss_mb: None,
            rss_growth_mb: None,
            onnxruntime_peak_rss_mb: None,
            onnxruntime_rss_growth_mb: None,
        }
    }
}

pub(super) fn median(v: &mut [f64]) -> f64 {
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

fn arch_of(arch: &str, ngf: usize) -> anyhow::Result<(Arch, &'static str)> {
    Ok(match arch {
        "resnet_9blocks" | "resnet_6blocks" => (
            Arch::Resnet(ResnetConfig {
                ngf,
                n_blocks: if arch == "resnet_9blocks" { 9 } else { 6 },
                norm: NormKind::Instance,
                ..ResnetConfig::default()
            }),
            if arch == "resnet_9blocks" {
                "resnet_9blocks"
            } else {
                "resnet_6blocks"
            },
        ),
        "light" => (
            Arch::Light(LightConfig {
                ngf,
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

/// `/proc/self/status` field in MiB (Linux).
pub(super) fn status_mb(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5).
pub(super) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Times one forward pass `repeat` times after a warm-up; the median in ms and the output.
fn time_forward(
    f: &dyn Fn(&Tensor) -> anyhow::Result<Tensor>,
    x: &Tensor,
    repeat: usize,
) -> anyhow::Result<(f64, Vec<f32>)> {
    f(x)?;
    let mut times = Vec::new();
    let mut out = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let y = f(x)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        out = y.flatten_all()?.to_vec1::<f32>()?;
    }
    Ok((median(&mut times), out))
}

pub fn run(global: &Global, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let isa = atelier_kernels::Isa::detect();
    let peak = atelier_kernels::peak::fp32_gflops(args.threads, 300);
    eprintln!(
        "bench: kernels {}, measured fp32 peak {peak:.0} GFLOP/s on {} threads",
        isa.name(),
        args.threads
    );
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if !args.train_only && !args.product_only {
        let (arch, name) = arch_of(&args.arch, args.ngf)?;
        rows.extend(forward_rows(
            &args,
            arch,
            name,
            &args.sizes,
            peak,
            &mut notes,
        )?);
        if !args.no_light && name != "light" {
            let (light, lname) = arch_of("light", args.light_ngf)?;
            rows.extend(forward_rows(
                &args,
                light,
                lname,
                &args.light_sizes,
                peak,
                &mut notes,
            )?);
        }
    }
    if (args.train || args.train_only) && !args.product_only {
        let (arch, name) = arch_of(&args.arch, args.ngf)?;
        for p in &args.train_precision {
            let precision = atelier_train::config::TrainPrecision::parse(p)
                .context("--train-precision: f32 or bf16")?;
            if precision == atelier_train::config::TrainPrecision::Bf16
                && !atelier_nets::kernels_isa().has_bf16()
            {
                notes.push("training step in bf16 skipped: this CPU has no AVX512_BF16".into());
                continue;
            }
            rows.push(train_row(&args, arch, name, precision)?);
        }
        // The bf16 step against PyTorch's default (f32) step too, where both ran.
        let step = |p: &str| {
            rows.iter()
                .find(|r| r.name.starts_with("cyclegan step") && r.precision == p)
        };
        if let (Some(b), Some(f)) = (step("bf16"), step("f32")) {
            if let Some(torch_f32) = f.pytorch_ms {
                notes.push(format!(
                    "cyclegan step: Atelier bf16 {:.1} ms = {:.2}x PyTorch's f32 step ({torch_f32:.1} ms)",
                    b.atelier_ms,
                    b.atelier_ms / torch_f32
                ));
            }
        }
    }
    let int8 = if args.train_only || args.product_only {
        Vec::new()
    } else {
        super::bench_int8::int8_rows(global, &args, &mut notes)?
    };
    let product = if args.train_only {
        Vec::new()
    } else {
        super::bench_product::product_rows(global, &args)?
    };
    let (serve, cold) = match (&args.product, args.serve && !args.train_only) {
        (Some(model), true) => {
            let raw_ms = match product.iter().find(|r| r.size == args.serve_size) {
                Some(r) => r.raw_forward_ms,
                None => super::bench_product::raw_forward_ms(
                    global,
                    model,
                    args.serve_size,
                    args.repeat,
                )?,
            };
            super::bench_serve::serve_rows(global, &args, model, raw_ms)?
        }
        _ => (Vec::new(), None),
    };
    if args.json {
        // The forward and training rows as before; the product and server rows beside them
        // when asked.
        if args.product.is_some() || !int8.is_empty() {
            let doc = serde_json::json!({
                "rows": rows, "int8": int8, "product": product, "serve": serve,
                "cold_start": cold,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    if !rows.is_empty() {
        println!(
            "| case | precision | GMAC | atelier ms | onnxruntime ms | pytorch ms | ratio to best peer \
             | GFLOP/s | % of fp32 peak | PSNR vs f32 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {} |",
                r.name,
                r.precision,
                r.gmac,
                r.atelier_ms,
                fmt(r.onnxruntime_ms, 1),
                fmt(r.pytorch_ms, 1),
                r.ratio.map_or("-".to_string(), |v| format!("{v:.2}x")),
                fmt(r.gflops, 0),
                fmt(r.peak_fraction.map(|f| f * 100.0), 0),
                r.psnr_db_vs_f32
                    .map_or("-".to_string(), |v| format!("{v:.1} dB")),
            );
        }
        for r in rows.iter().filter(|r| r.peak_rss_mb.is_some()) {
            println!(
                "\npeak RSS {}: atelier {} MiB (+{} MiB during the case), onnxruntime {} MiB (+{} MiB)",
                r.name,
                fmt(r.peak_rss_mb, 0),
                fmt(r.rss_growth_mb, 0),
                fmt(r.onnxruntime_peak_rss_mb, 0),
                fmt(r.onnxruntime_rss_growth_mb, 0),
            );
        }
    }
    println!(
        "\nkernels {}, fp32 peak {peak:.0} GFLOP/s measured on {} threads; peers fp32, {} threads",
        isa.name(),
        args.threads,
        args.threads
    );
    super::bench_int8::print(&int8);
    super::bench_product::print(&product);
    super::bench_serve::print(&serve, cold.as_ref());
    for n in notes {
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Forward rows of one generator: fp32 (and bf16 where the CPU has it) at every size,
/// beside the peers on the same weights.
fn forward_rows(
    args: &BenchArgs,
    arch: Arch,
    arch_name: &str,
    sizes: &[u32],
    peak: f64,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    if sizes.is_empty() {
        return Ok(Vec::new());
    }
    let ngf = match arch {
        Arch::Resnet(c) => c.ngf,
        Arch::Light(c) => c.ngf,
        _ => 0,
    };
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let net = Network::new(arch, vb)?;
    let tensors = atelier_nets::file::tensors_of(&map)?;
    let dir = std::env::temp_dir().join(format!("atelier-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let weights = dir.join("weights.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    eprintln!(
        "bench: {arch_name} ngf {ngf} ({} parameters), {} threads, median of {} runs",
        arch.parameter_count()?,
        args.threads,
        args.repeat
    );
    let f32_net = Compiled::new(&net, Precision::F32)?;
    let low = if atelier_kernels::Isa::detect().has_bf16() && !args.no_bf16 {
        Compiled::new(&net, Precision::Bf16)?
    } else {
        None
    };
    let int8 = if atelier_kernels::int8::has_vnni() && !args.no_int8 {
        Compiled::new(&net, Precision::Int8)?
    } else {
        None
    };
    // Calibrated once, as the engine does at load (uncalibrated int8 layers quantize their
    // weights again on every call).
    if let Some(q) = &int8 {
        let side = atelier_engine::precision::PROBE_SIDE;
        let x = Tensor::rand(-1f32, 1f32, (3, side, side), &Device::Cpu)?;
        q.calibrate(&x.flatten_all()?.to_vec1::<f32>()?, side, side)?;
    }
    let fwd32 = |x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(match &f32_net {
            Some(f) => f.forward(x, &mut Ctx::eval())?,
            None => net.forward(x, &mut Ctx::eval())?,
        })
    };
    let mut rows = Vec::new();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    // Warm-up before the first timed case: a second of passes at the first size (the first
    // case of a run used to come out slower than a rerun of it: clocks ramping up, first-touch
    // page faults, the peers' sessions being built).
    if let Some(&s) = sizes.first() {
        let x = Tensor::rand(-1f32, 1f32, (1, 3, s as usize, s as usize), &Device::Cpu)?;
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < 1.0 {
            fwd32(&x)?;
        }
    }
    for &s in sizes {
        let x = Tensor::rand(-1f32, 1f32, (1, 3, s as usize, s as usize), &Device::Cpu)?;
        let rss = s == largest && reset_peak_rss();
        let before = status_mb("VmRSS");
        let (ms, out32) = time_forward(&fwd32, &x, args.repeat)?;
        let gmac = arch.macs(s as usize, s as usize).unwrap_or(0) as f64 / 1e9;
        let mut row = Row::new(
            format!("{arch_name} ngf{ngf} fwd {s}x{s}"),
            s,
            "f32",
            gmac,
            ms,
        );
        if rss {
            row.peak_rss_mb = status_mb("VmHWM");
            row.rss_growth_mb = row.peak_rss_mb.zip(before).map(|(p, b)| p - b);
        }
        eprintln!("  atelier {s}x{s} f32: {ms:.1} ms");
        rows.push(row);
        for (net, precision) in [(&low, "bf16"), (&int8, "int8")] {
            let Some(net) = net else { continue };
            let f =
                |x: &Tensor| -> anyhow::Result<Tensor> { Ok(net.forward(x, &mut Ctx::eval())?) };
            let (ms, out) = time_forward(&f, &x, args.repeat)?;
            let mut row = Row::new(
                format!("{arch_name} ngf{ngf} fwd {s}x{s}"),
                s,
                precision,
                gmac,
                ms,
            );
            row.psnr_db_vs_f32 = Some(atelier_imaging::psnr(&out, &out32, 2.0));
            eprintln!("  atelier {s}x{s} {precision}: {ms:.1} ms");
            rows.push(row);
        }
    }
    if int8.is_none() && !args.no_int8 {
        notes.push("int8 rows skipped: this CPU has no AVX512_VNNI".into());
    }
    if low.is_none() && !args.no_bf16 {
        notes.push("bf16 rows skipped: this CPU has no AVX512_BF16".into());
    }
    let peers = if args.no_peers {
        None
    } else {
        run_peers(args, arch_name, ngf, sizes, &weights, &dir, &net)?
    };
    let _ = std::fs::remove_dir_all(&dir);
    for row in &mut rows {
        let find = |key: &str| -> Option<f64> {
            peers
                .as_ref()?
                .get("results")?
                .as_array()?
                .iter()
                .find_map(|r| {
                    (r.get("size")?.as_u64()? == row.size as u64).then(|| r.get(key)?.as_f64())?
                })
        };
        row.onnxruntime_ms = find("onnxruntime_median_ms");
        row.pytorch_ms = find("pytorch_median_ms");
        if row.peak_rss_mb.is_some() {
            row.onnxruntime_peak_rss_mb = find("onnxruntime_peak_rss_mb");
            row.onnxruntime_rss_growth_mb = find("onnxruntime_rss_growth_mb");
        }
        let best = match (row.onnxruntime_ms, row.pytorch_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        row.ratio = best.map(|b| row.atelier_ms / b);
        if row.gmac > 0.0 {
            let g = 2.0 * row.gmac / (row.atelier_ms / 1e3);
            row.gflops = Some(g);
            row.peak_fraction = (peak > 0.0).then(|| g / peak);
        }
    }
    if let Some(p) = &peers {
        notes.push(format!(
            "{arch_name}: peers torch {}, onnxruntime {}; outputs agree with Atelier's to {}",
            p.get("torch_version")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            p.get("onnxruntime_version")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            p.get("atelier_max_abs_diff")
                .and_then(|v| v.as_f64())
                .map_or("?".into(), |v| format!("{v:.1e} max abs")),
        ));
    }
    Ok(rows)
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
    ngf: usize,
    sizes: &[u32],
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
    let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
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
            &ngf.to_string(),
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

/// PyTorch's CycleGAN step (`bench/train_step.py --interleave`), driven one step at a time so
/// that its steps alternate with Atelier's and both see the same machine load.
struct TorchPeer {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl TorchPeer {
    fn spawn(
        args: &BenchArgs,
        arch: Arch,
        size: u32,
        warmup: usize,
        autocast: &str,
    ) -> anyhow::Result<Option<Self>> {
        use std::io::BufRead;
        use std::process::Stdio;
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
        let mut child = std::process::Command::new(&python)
            .arg(&script)
            .args(["--size", &size.to_string(), "--batch", "1"])
            .args([
                "--ngf",
                &c.ngf.to_string(),
                "--n-blocks",
                &c.n_blocks.to_string(),
            ])
            .args(["--threads", &args.threads.to_string()])
            .args(["--warmup", &warmup.to_string(), "--json", "--interleave"])
            .args(["--autocast", autocast])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running bench/train_step.py")?;
        let stdin = child.stdin.take();
        let out = std::io::BufReader::new(child.stdout.take().context("peer stdout")?);
        let mut peer = Self { child, stdin, out };
        let mut line = String::new();
        peer.out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let status = peer.child.wait()?;
            bail!("bench/train_step.py did not start ({status}; its error is above)");
        }
        Ok(Some(peer))
    }

    /// Runs one PyTorch step; its milliseconds.
    fn step(&mut self) -> anyhow::Result<f64> {
        use std::io::{BufRead, Write};
        let stdin = self.stdin.as_mut().context("peer stdin closed")?;
        stdin.write_all(b"step\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.trim()
            .parse()
            .with_context(|| format!("bench/train_step.py answered {line:?}"))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("bench/train_step.py failed ({status})");
        }
        Ok(())
    }
}

/// Times `steps` CycleGAN steps through the real trainer (synthetic noise images on disk, no
/// checkpoints or samples until the end) and returns each step's milliseconds; with a peer,
/// one PyTorch step runs after each of Atelier's (not counted in Atelier's time) and its
/// milliseconds come second.
fn atelier_train_steps(
    arch: Arch,
    size: u32,
    steps: u64,
    batched_passes: bool,
    precision: atelier_train::config::TrainPrecision,
    peer: Option<&mut TorchPeer>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
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
    cfg.batched_passes = batched_passes;
    cfg.precision = precision;
    struct Timer<'a> {
        start: Instant,
        ours: Vec<f64>,
        peer: Option<&'a mut TorchPeer>,
        theirs: Vec<f64>,
        error: Option<anyhow::Error>,
    }
    impl Observer for Timer<'_> {
        fn event(&mut self, e: &Event<'_>) {
            match e {
                Event::Started { .. } => self.start = Instant::now(),
                Event::Step(_) => {
                    self.ours.push(self.start.elapsed().as_secs_f64() * 1e3);
                    if let (Some(p), None) = (self.peer.as_deref_mut(), &self.error) {
                        match p.step() {
                            Ok(ms) => self.theirs.push(ms),
                            Err(e) => self.error = Some(e),
                        }
                    }
                    self.start = Instant::now();
                }
                _ => {}
            }
        }
    }
    let mut timer = Timer {
        start: Instant::now(),
        ours: Vec::new(),
        peer,
        theirs: Vec::new(),
        error: None,
    };
    let result = Trainer::create(cfg, &dir.join("run")).and_then(|mut t| t.run(&mut timer));
    let _ = std::fs::remove_dir_all(&dir);
    // What a worker does when a training job ends, so that the rows measured after this one
    // (peak RSS of the product path) start from the same memory as a server would.
    atelier_nets::conv::release_training_buffers();
    atelier_jobs::memory::release_free_memory();
    result?;
    if let Some(e) = timer.error {
        return Err(e.context("PyTorch peer step"));
    }
    Ok((timer.ours, timer.theirs))
}

fn train_row(
    args: &BenchArgs,
    arch: Arch,
    arch_name: &str,
    precision: atelier_train::config::TrainPrecision,
) -> anyhow::Result<Row> {
    let size = args.train_size;
    let warmup = 2usize;
    let repeat = args.repeat.max(1);
    let bf16 = precision == atelier_train::config::TrainPrecision::Bf16;
    eprintln!(
        "bench: CycleGAN step {arch_name} ngf {} at {size}x{size}, batch 1, {}, {} passes \
         (Atelier's and PyTorch's steps alternate)",
        args.ngf,
        if bf16 {
            "bf16 (PyTorch under autocast bf16)"
        } else {
            "f32"
        },
        if args.train_separate_passes {
            "separate"
        } else {
            "batched"
        }
    );
    let mut peer = if args.no_peers || arch_name == "light" {
        None
    } else {
        TorchPeer::spawn(args, arch, size, warmup, if bf16 { "bf16" } else { "none" })?
    };
    let (ours, theirs) = atelier_train_steps(
        arch,
        size,
        (warmup + repeat) as u64,
        !args.train_separate_passes,
        precision,
        peer.as_mut(),
    )?;
    if let Some(p) = peer {
        p.finish()?;
    }
    let mut timed: Vec<f64> = ours[warmup.min(ours.len())..].to_vec();
    let ours = median(&mut timed);
    eprintln!("  atelier: {ours:.1} ms per step");
    let pytorch = (theirs.len() > warmup).then(|| median(&mut theirs[warmup..].to_vec()));
    if let Some(ms) = pytorch {
        eprintln!("  pytorch: {ms:.1} ms per step");
    }
    let mut row = Row::new(
        format!(
            "cyclegan step {arch_name} ngf{} {size}x{size} batch 1",
            args.ngf
        ),
        size,
        precision.name(),
        0.0,
        ours,
    );
    row.pytorch_ms = pytorch;
    row.ratio = pytorch.map(|p| ours / p);
    Ok(row)
}
