//! `atelier bench` rows for the product path: what a user waits for when they stylize a JPEG
//! (decode → engine with its tiling decisions → encode, [`atelier_jobs::pipeline`]) beside the
//! raw forward pass of the same model on the same decoded image, whole, in one call.

use std::time::Instant;

use anyhow::Context;
use atelier_engine::{Options, PrecisionChoice, Stylizer};
use atelier_imaging::{Format, Limits};
use candle_core::Device;
use serde::Serialize;

use crate::cli::{BenchArgs, Global};

/// One size of the product path.
#[derive(Debug, Serialize)]
pub struct ProductRow {
    pub model: String,
    /// The precision both paths ran at (`auto`'s choice for this model and CPU).
    pub precision: &'static str,
    pub size: u32,
    /// Median of the whole pipeline, JPEG bytes in → JPEG bytes out.
    pub product_ms: f64,
    /// Median of the raw forward pass over the same (padded) image, whole.
    pub raw_forward_ms: f64,
    pub ratio: f64,
    /// Network passes the product path made (1: whole; else tiles + the statistics pass).
    pub passes: usize,
    /// Peak RSS of the process while the product path ran, and its growth over the RSS
    /// before.
    pub product_peak_rss_mb: Option<f64>,
    pub product_rss_growth_mb: Option<f64>,
}

/// The photo every row uses: the repository's example photo (768×512) resized to `side`²
/// and encoded as a JPEG of quality 92.
pub fn photo_jpeg(side: u32) -> anyhow::Result<Vec<u8>> {
    static PHOTO: &[u8] = include_bytes!("../../../../examples/photo.jpg");
    let img = atelier_imaging::decode(PHOTO, &Limits::default())?;
    let img = atelier_imaging::resize(&img, side, side);
    Ok(atelier_imaging::encode(&img, Format::Jpeg, 92)?)
}

fn median_ms(mut f: impl FnMut() -> anyhow::Result<()>, repeat: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(super::bench::median(&mut times))
}

/// Timed repetitions at `side`: `repeat` up to 1024², fewer above (a 4096² pass of a full
/// model takes about a minute on two cores).
fn repeats(repeat: usize, side: u32) -> usize {
    match side {
        0..=1024 => repeat,
        1025..=2048 => repeat.min(3),
        _ => repeat.min(2),
    }
}

pub fn product_rows(global: &Global, args: &BenchArgs) -> anyhow::Result<Vec<ProductRow>> {
    let Some(name) = args.product.as_deref() else {
        return Ok(Vec::new());
    };
    let model = global
        .load_model(name, &Device::Cpu)
        .with_context(|| format!("--product {name}"))?;
    let m = model.card.arch.size_multiple().max(1);
    // The precision a server picks by default (`auto`); the raw pass runs the same network.
    let stylizer = Stylizer::with_choice(model, Device::Cpu, PrecisionChoice::Auto)?;
    anyhow::ensure!(
        stylizer.uses_kernels(),
        "{name}: the kernels do not cover this architecture"
    );
    let precision = stylizer.precision().name();
    let limits = Limits::default();
    let request = atelier_jobs::pipeline::Request::default();
    eprintln!(
        "bench: product path of `{name}` (JPEG q92 in and out, default options: {precision} \
         (auto), memory budget {} MiB, tiles ≤ {} px) beside its raw forward pass",
        request.engine.memory_budget >> 20,
        request.engine.tile
    );
    let mut rows = Vec::new();
    for &side in &args.product_sizes {
        let jpeg = photo_jpeg(side)?;
        let reps = repeats(args.repeat, side);
        let run = || -> anyhow::Result<()> {
            atelier_jobs::pipeline::stylize_bytes(
                &stylizer,
                &jpeg,
                &limits,
                &request,
                &mut |_| {},
                &|| false,
            )?;
            Ok(())
        };
        // Warm-up (also the statistics cache's first fill, as a repeated request would have).
        run()?;
        let rss = super::bench::reset_peak_rss();
        let before = super::bench::status_mb("VmRSS");
        let product_ms = median_ms(run, reps)?;
        let peak = rss.then(|| super::bench::status_mb("VmHWM")).flatten();
        let passes = stylizer.passes(side, side, &Options::default());

        // The raw pass: the decoded image, padded to the network's multiple, in one call.
        let img = atelier_imaging::decode(&jpeg, &limits)?;
        let p = (side as usize).div_ceil(m) * m;
        let img = if p != side as usize {
            atelier_imaging::resize(&img, p as u32, p as u32)
        } else {
            img
        };
        let raw = || -> anyhow::Result<()> {
            stylizer.forward_whole(&img.rgb, p, p)?;
            Ok(())
        };
        raw()?;
        let raw_forward_ms = median_ms(raw, reps)?;
        // Its buffers (12 GB at 4096² for a full model) go before the next size, back to the
        // system as a server's idle trim gives them (`Catalog::spawn_idle_trim`): otherwise
        // malloc's arenas keep up to 256 MiB each and the next row's peak RSS counts them.
        stylizer.trim(0);
        atelier_jobs::memory::release_free_memory();
        let row = ProductRow {
            model: name.to_string(),
            precision,
            size: side,
            product_ms,
            raw_forward_ms,
            ratio: product_ms / raw_forward_ms,
            passes,
            product_peak_rss_mb: peak,
            product_rss_growth_mb: peak.zip(before).map(|(p, b)| p - b),
        };
        eprintln!(
            "  {side}²: product {product_ms:.0} ms ({passes} passes), raw forward \
             {raw_forward_ms:.0} ms, {:.2}×",
            row.ratio
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The raw forward pass of `model` at `side`² at the precision `auto` picks (as the server
/// does), median of `repeat` after a warm-up.
pub fn raw_forward_ms(
    global: &Global,
    model: &str,
    side: u32,
    repeat: usize,
) -> anyhow::Result<f64> {
    let model = global.load_model(model, &Device::Cpu)?;
    let m = model.card.arch.size_multiple().max(1);
    let stylizer = Stylizer::with_choice(model, Device::Cpu, PrecisionChoice::Auto)?;
    anyhow::ensure!(
        stylizer.uses_kernels(),
        "the kernels do not cover this architecture"
    );
    let img = atelier_imaging::decode(&photo_jpeg(side)?, &Limits::default())?;
    let p = (side as usize).div_ceil(m) * m;
    let img = atelier_imaging::resize(&img, p as u32, p as u32);
    let raw = || -> anyhow::Result<()> {
        stylizer.forward_whole(&img.rgb, p, p)?;
        Ok(())
    };
    raw()?;
    median_ms(raw, repeats(repeat, side))
}

/// The product table in Markdown.
pub fn print(rows: &[ProductRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n| product path | precision | size | product ms | raw forward ms | product / raw | \
         passes | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {}² | {:.0} | {:.0} | {:.2}× | {} | {} |",
            r.model,
            r.precision,
            r.size,
            r.product_ms,
            r.raw_forward_ms,
            r.ratio,
            r.passes,
            r.product_peak_rss_mb
                .map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
}
