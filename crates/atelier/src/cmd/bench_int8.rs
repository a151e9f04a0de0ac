//! `atelier bench` int8 rows for real models: each model's fp32 and int8 forward times on the
//! same photo, and the PSNR of its int8 output against its fp32 output (the quality cost of
//! `--precision int8`, which a random-weight network cannot show).

use std::path::Path;

use anyhow::Context;
use atelier_imaging::{Image, Limits};
use atelier_nets::{Compiled, Ctx, Precision};
use candle_core::Device;
use serde::Serialize;

use crate::cli::{BenchArgs, Global};

/// One model at one size.
#[derive(Debug, Serialize)]
pub struct Int8Row {
    pub model: String,
    pub size: u32,
    /// Medians of the raw forward pass on the first image.
    pub f32_ms: f64,
    pub int8_ms: f64,
    /// int8 time over fp32 time.
    pub ratio: f64,
    /// PSNR (dB, data range 2) of the int8 output against the fp32 output: mean and lowest
    /// over the images.
    pub psnr_db_mean: f64,
    pub psnr_db_min: f64,
    pub images: usize,
}

/// The photos of the rows: up to `max` images of `dir`, or the repository's example photo.
fn photos(dir: Option<&Path>, max: usize) -> anyhow::Result<(Vec<Image>, String)> {
    let limits = Limits::default();
    let Some(dir) = dir else {
        let photo = include_bytes!("../../../../examples/photo.jpg");
        return Ok((
            vec![atelier_imaging::decode(photo, &limits)?],
            "examples/photo.jpg".into(),
        ));
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("--int8-images {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "webp"
                )
            })
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files.iter().take(max.max(1)) {
        let bytes = std::fs::read(f)?;
        out.push(
            atelier_imaging::decode(&bytes, &limits)
                .with_context(|| format!("decoding {}", f.display()))?,
        );
    }
    anyhow::ensure!(
        !out.is_empty(),
        "--int8-images {}: no images",
        dir.display()
    );
    Ok((
        out,
        format!(
            "{} images of {}",
            files.len().min(max.max(1)),
            dir.display()
        ),
    ))
}

/// The int8 rows, or none where the CPU has no AVX512_VNNI (`notes` says so).
pub fn int8_rows(
    global: &Global,
    args: &BenchArgs,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Int8Row>> {
    if args.no_int8 || args.int8_sizes.is_empty() {
        return Ok(Vec::new());
    }
    if !atelier_kernels::int8::has_vnni() {
        notes.push("int8 model rows skipped: this CPU has no AVX512_VNNI".into());
        return Ok(Vec::new());
    }
    let names: Vec<String> = if args.int8_models.is_empty() {
        atelier_jobs::builtin::EMBEDDED
            .iter()
            .map(|(n, _, _)| n.to_string())
            .collect()
    } else {
        args.int8_models.clone()
    };
    let (images, source) = photos(args.int8_images.as_deref(), args.int8_max_images)?;
    eprintln!(
        "bench: int8 against fp32 on {source}, sizes {:?}, {} models",
        args.int8_sizes,
        names.len()
    );
    let calib_photo = atelier_imaging::center_square(&photos(None, 1)?.0.remove(0));
    let mut rows = Vec::new();
    for name in &names {
        let model = global
            .load_model(name, &Device::Cpu)
            .with_context(|| format!("--int8-models {name}"))?;
        let m = model.card.arch.size_multiple().max(1) as u32;
        let f32n = Compiled::new(&model.net, Precision::F32)?
            .with_context(|| format!("{name}: the kernels do not cover this architecture"))?;
        let i8n = Compiled::new(&model.net, Precision::Int8)?
            .with_context(|| format!("{name}: the kernels do not cover this architecture"))?;
        // Calibrated as the engine does: one pass over the repository's photo, centre square.
        let side = (atelier_engine::precision::PROBE_SIDE as u32).div_ceil(m) * m;
        let calib = atelier_imaging::resize(&calib_photo, side, side);
        i8n.calibrate(&calib.rgb, side as usize, side as usize)?;
        for &side in &args.int8_sizes {
            let p = side.div_ceil(m) * m;
            let run = |net: &Compiled, img: &Image| -> anyhow::Result<Vec<f32>> {
                Ok(net
                    .forward_chw(&img.rgb, p as usize, p as usize, &mut Ctx::eval())?
                    .0)
            };
            let mut psnrs = Vec::new();
            let (mut t32, mut t8) = (Vec::new(), Vec::new());
            for (i, photo) in images.iter().enumerate() {
                let img = atelier_imaging::resize(&atelier_imaging::center_square(photo), p, p);
                // The first image is timed (alternating, after one pass of each); the others
                // only add to the PSNR.
                let reps = if i == 0 { args.repeat.max(1) } else { 0 };
                let a = run(&f32n, &img)?;
                let b = run(&i8n, &img)?;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    run(&f32n, &img)?;
                    t32.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = std::time::Instant::now();
                    run(&i8n, &img)?;
                    t8.push(t.elapsed().as_secs_f64() * 1e3);
                }
                psnrs.push(atelier_imaging::psnr(&b, &a, 2.0));
            }
            let (f32_ms, int8_ms) = (
                super::bench::median(&mut t32),
                super::bench::median(&mut t8),
            );
            let row = Int8Row {
                model: name.clone(),
                size: side,
                f32_ms,
                int8_ms,
                ratio: int8_ms / f32_ms,
                psnr_db_mean: psnrs.iter().sum::<f64>() / psnrs.len() as f64,
                psnr_db_min: psnrs.iter().copied().fold(f64::INFINITY, f64::min),
                images: psnrs.len(),
            };
            eprintln!(
                "  {name} {side}²: f32 {f32_ms:.0} ms, int8 {int8_ms:.0} ms ({:.2}×), PSNR {:.1} dB \
                 (lowest {:.1})",
                row.ratio, row.psnr_db_mean, row.psnr_db_min
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The int8 table in Markdown.
pub fn print(rows: &[Int8Row]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n| int8 model | size | f32 ms | int8 ms | int8 / f32 | PSNR vs f32 (mean) | lowest | \
         images |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {}² | {:.0} | {:.0} | {:.2}× | {:.1} dB | {:.1} dB | {} |",
            r.model, r.size, r.f32_ms, r.int8_ms, r.ratio, r.psnr_db_mean, r.psnr_db_min, r.images
        );
    }
}
