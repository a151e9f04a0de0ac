//! `atelier eval fid|kid`: quality metrics between two image folders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use atelier_eval::stats::Rows;
use atelier_eval::{folder_features, list_images, Inception, FEATURES};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{EvalArgs, EvalCommand, Global};

pub fn run(global: &Global, cmd: EvalCommand) -> anyhow::Result<ExitCode> {
    let (metric, args) = match cmd {
        EvalCommand::Fid(a) => ("fid", a),
        EvalCommand::Kid(a) => ("kid", a),
        EvalCommand::Report(a) => return super::report::run(global, *a),
    };
    let weights = args.weights.clone().unwrap_or_else(default_weights);
    let real = images_of(&args.real)?;
    let fake = images_of(&args.fake)?;
    let device = Device::Cpu;
    let net = Inception::load(&weights, &device)?;
    let started = Instant::now();
    let fr = features(global, &net, &real, &args, "real", &device)?;
    let ff = features(global, &net, &fake, &args, "fake", &device)?;
    let (a, b) = (Rows::new(&fr, FEATURES)?, Rows::new(&ff, FEATURES)?);
    let secs = started.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "metric": metric,
        "real": args.real.display().to_string(),
        "fake": args.fake.display().to_string(),
        "real_images": real.len(),
        "fake_images": fake.len(),
        "seconds": (secs * 10.0).round() / 10.0,
    });
    let line = if metric == "fid" {
        let v = atelier_eval::fid(a, b)?;
        out["fid"] = v.into();
        format!("FID {v:.3}")
    } else {
        let k = atelier_eval::kid(a, b, args.subsets, args.subset_size, args.seed)?;
        out["kid_mean"] = k.mean.into();
        out["kid_std"] = k.std.into();
        out["subsets"] = k.subsets.into();
        out["subset_size"] = k.subset_size.into();
        format!(
            "KID {:.5} ± {:.5} (×100: {:.3} ± {:.3}; {} subsets of {})",
            k.mean,
            k.std,
            k.mean * 100.0,
            k.std * 100.0,
            k.subsets,
            k.subset_size
        )
    };
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{line}  [{} real vs {} fake images, {secs:.1} s]",
            real.len(),
            fake.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the FID Inception weights are looked for without `--weights` /
/// `ATELIER_FID_WEIGHTS`.
pub fn default_weights() -> PathBuf {
    PathBuf::from("weights/fid_inception_v3.safetensors")
}

fn images_of(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let v = list_images(dir)?;
    if v.len() < 2 {
        bail!(
            "{}: {} image(s) found (jpg, png, webp); FID and KID need at least 2 per folder",
            dir.display(),
            v.len()
        );
    }
    Ok(v)
}

fn features(
    global: &Global,
    net: &Inception,
    paths: &[PathBuf],
    args: &EvalArgs,
    label: &str,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let bar = ProgressBar::new(paths.len() as u64);
    if global.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} images {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let f = folder_features(net, paths, args.batch, device, &mut |done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("Inception features of the {label} images"))?;
    bar.finish_and_clear();
    Ok(f)
}
