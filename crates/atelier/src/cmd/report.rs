//! `atelier eval report`: KID of each style's models and baselines on held-out images, a
//! sample grid per style, and (optionally) the numbers written into the model cards.
//!
//! For a style `NAME=PAINTINGS` every held-out photo is translated by each model found
//! (`NAME` and `NAME_light` in the models folder: Atelier's full and light versions;
//! `REFERENCE/NAME.safetensors`: the PyTorch reference imported with `atelier models import`)
//! and by two baselines computed the same way: the untranslated photos (`identity`) and a
//! simple non-learned filter. Each set is scored with KID against the held-out paintings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use atelier_engine::{Options, Stylizer};
use atelier_eval::stats::Rows;
use atelier_eval::{image_features, list_images, Inception, FEATURES};
use atelier_imaging::{Format, Image};
use candle_core::Device;
use serde_json::json;

use crate::cli::{Global, ReportArgs};

/// Side of the square CPU latency measurement.
const LATENCY_SIDE: u32 = 512;
/// Side of each cell of the sample grids.
const CELL: u32 = 192;
const GAP: u32 = 4;

/// One scored set of images.
struct Entry {
    label: String,
    kind: &'static str,
    /// The model file (models only).
    file: Option<PathBuf>,
    /// The grid's photos as this entry shows them.
    grid: Vec<Image>,
    kid: atelier_eval::Kid,
    params: Option<usize>,
    macs_512: Option<u64>,
    latency_512_ms: Option<f64>,
    card: Option<atelier_nets::ModelCard>,
}

pub fn run(global: &Global, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let weights = args
        .weights
        .clone()
        .unwrap_or_else(super::eval::default_weights);
    let device = Device::Cpu;
    let net = Inception::load(&weights, &device)
        .with_context(|| format!("loading the FID Inception weights {}", weights.display()))?;
    let limits = global.limits();
    let photo_paths = images_in(&args.photos)?;
    let photos = decode_all(&photo_paths, &limits, args.size)?;
    let log = |msg: String| {
        if !global.quiet {
            eprintln!("{msg}");
        }
    };
    log(format!(
        "{} held-out photos from {}",
        photos.len(),
        args.photos.display()
    ));
    let started = Instant::now();
    let photo_feats = image_features(&net, &photos, args.batch, &device)?;
    let filtered: Vec<Image> = photos.iter().map(painterly_filter).collect();
    // The sample grids show --grid-photos (e.g. CC-licensed photos that may be published) or
    // the first held-out photos.
    let grid_photos = match &args.grid_photos {
        Some(dir) => decode_all(&images_in(dir)?, &limits, args.size)?,
        None => photos.clone(),
    };
    let grid_photos: Vec<Image> = grid_photos
        .into_iter()
        .take(args.grid_rows.max(1))
        .collect();
    let filter_feats = image_features(&net, &filtered, args.batch, &device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut md = String::new();
    let mut styles_json = Vec::new();
    writeln!(
        md,
        "# Evaluation report\n\nKID ×100 (mean ± std over {} random subsets; lower is better) of \
         the {} held-out photos of `{}`, translated at {}², against each style's held-out \
         paintings; Inception features of pytorch-fid's FID network. Written by `atelier {}`.\n",
        args.subsets,
        photos.len(),
        args.photos.display(),
        args.size,
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )?;
    for spec in &args.styles {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--style {spec}: expected NAME=PAINTINGS_FOLDER"))?;
        let paint_paths = images_in(Path::new(dir))?;
        let paintings = decode_all(&paint_paths, &limits, 0)?;
        let paint_feats = image_features(&net, &paintings, args.batch, &device)?;
        let score = |feats: &[f32]| -> anyhow::Result<atelier_eval::Kid> {
            Ok(atelier_eval::kid(
                Rows::new(&paint_feats, FEATURES)?,
                Rows::new(feats, FEATURES)?,
                args.subsets,
                usize::MAX,
                args.seed,
            )?)
        };
        let mut entries = vec![
            Entry {
                label: "identity (untranslated photos)".into(),
                kind: "baseline",
                file: None,
                grid: grid_photos.clone(),
                kid: score(&photo_feats)?,
                params: None,
                macs_512: None,
                latency_512_ms: None,
                card: None,
            },
            Entry {
                label: "filter (box blur 5×5, 6-level posterize, saturation ×1.3)".into(),
                kind: "baseline",
                file: None,
                grid: grid_photos.iter().map(painterly_filter).collect(),
                kid: score(&filter_feats)?,
                params: None,
                macs_512: None,
                latency_512_ms: None,
                card: None,
            },
        ];
        let mut candidates = vec![
            (
                "atelier",
                global.models_dir.join(format!("{name}.safetensors")),
            ),
            (
                "atelier light",
                global.models_dir.join(format!("{name}_light.safetensors")),
            ),
        ];
        if let Some(r) = &args.reference {
            candidates.push(("reference", r.join(format!("{name}.safetensors"))));
        }
        for (kind, file) in candidates {
            if !file.is_file() {
                log(format!(
                    "{name}: no {kind} model ({} missing)",
                    file.display()
                ));
                continue;
            }
            let model = atelier_nets::load(&file, &device)
                .with_context(|| format!("loading {}", file.display()))?;
            let card = model.card.clone();
            let params = card.arch.parameter_count().ok();
            let macs = card.arch.macs(LATENCY_SIDE as usize, LATENCY_SIDE as usize);
            let st = Stylizer::new(model, device.clone())?;
            let opts = Options::default();
            let t = Instant::now();
            let mut out = Vec::with_capacity(photos.len());
            for p in &photos {
                out.push(st.stylize(p, &opts, &mut |_| {})?);
            }
            log(format!(
                "{name}: {kind} translated {} photos in {:.1} s",
                out.len(),
                t.elapsed().as_secs_f64()
            ));
            let latency = if args.latency_runs > 0 {
                let big = atelier_imaging::resize(&photos[0], LATENCY_SIDE, LATENCY_SIDE);
                let mut times = Vec::new();
                st.stylize(&big, &opts, &mut |_| {})?; // warm-up
                for _ in 0..args.latency_runs {
                    let t = Instant::now();
                    st.stylize(&big, &opts, &mut |_| {})?;
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Some(median(&mut times))
            } else {
                None
            };
            let grid = grid_photos
                .iter()
                .map(|p| st.stylize(p, &opts, &mut |_| {}))
                .collect::<Result<Vec<_>, _>>()?;
            let feats = image_features(&net, &out, args.batch, &device)?;
            entries.push(Entry {
                label: format!("{kind}: {}", card.name),
                kind,
                file: Some(file),
                grid,
                kid: score(&feats)?,
                params,
                macs_512: macs,
                latency_512_ms: latency,
                card: Some(card),
            });
        }

        // Markdown table.
        writeln!(
            md,
            "## {name}\n\n{} held-out paintings from `{dir}`; subsets of {} images.\n",
            paintings.len(),
            entries[0].kid.subset_size
        )?;
        writeln!(
            md,
            "| images | KID ×100 | parameters | GMAC at 512² | CPU ms at 512² | training |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|")?;
        for e in &entries {
            let training = e.card.as_ref().map(training_of).unwrap_or_default();
            writeln!(
                md,
                "| {} | {:.2} ± {:.2} | {} | {} | {} | {} |",
                e.label,
                e.kid.mean * 100.0,
                e.kid.std * 100.0,
                e.params
                    .map(|p| format!("{:.2} M", p as f64 / 1e6))
                    .unwrap_or_default(),
                e.macs_512
                    .map(|m| format!("{:.2}", m as f64 / 1e9))
                    .unwrap_or_default(),
                e.latency_512_ms
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_default(),
                training
            )?;
        }
        let grid_name = format!("grid_{name}.png");
        let grid = sample_grid(&entries, grid_photos.len());
        std::fs::write(
            args.out.join(&grid_name),
            atelier_imaging::encode(&grid, Format::Png, 90)?,
        )?;
        let columns: Vec<&str> = entries
            .iter()
            .map(|e| e.label.split(" (").next().unwrap_or(&e.label))
            .collect();
        writeln!(
            md,
            "\n![{name} samples]({grid_name})\n\nColumns: {}.\n",
            columns.join(" | ")
        )?;
        styles_json.push(json!({
            "style": name,
            "paintings": dir,
            "held_out_paintings": paintings.len(),
            "entries": entries.iter().map(|e| json!({
                "label": e.label,
                "kind": e.kind,
                "file": e.file.as_ref().map(|f| f.display().to_string()),
                "kid_x100": e.kid.mean * 100.0,
                "kid_x100_std": e.kid.std * 100.0,
                "subset_size": e.kid.subset_size,
                "parameters": e.params,
                "macs_512": e.macs_512,
                "cpu_ms_512": e.latency_512_ms,
                "steps": e.card.as_ref().and_then(|c| c.provenance.steps),
            })).collect::<Vec<_>>(),
        }));
        if args.write_cards {
            for e in entries.iter().filter(|e| e.kind.starts_with("atelier")) {
                if let (Some(file), Some(card)) = (&e.file, &e.card) {
                    write_card_metrics(file, card, &e.kid, paintings.len(), photos.len())?;
                    log(format!("{name}: KID written into {}", file.display()));
                }
            }
        }
    }
    writeln!(
        md,
        "Scored in {:.0} s on {}.",
        started.elapsed().as_secs_f64(),
        atelier_train::cpu_model()
    )?;
    if let Some(notes) = &args.notes {
        let text = std::fs::read_to_string(notes)
            .with_context(|| format!("reading --notes {}", notes.display()))?;
        writeln!(md, "\n{}", text.trim_end())?;
    }
    std::fs::write(args.out.join("report.md"), &md)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&json!({
            "photos": args.photos.display().to_string(),
            "held_out_photos": photos.len(),
            "size": args.size,
            "subsets": args.subsets,
            "seed": args.seed,
            "styles": styles_json,
        }))?,
    )?;
    print!("{md}");
    eprintln!("wrote {}", args.out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let v = list_images(dir)?;
    if v.len() < 2 {
        bail!(
            "{}: {} image(s) found; KID needs at least 2",
            dir.display(),
            v.len()
        );
    }
    Ok(v)
}

/// Decodes images; with `size > 0` each is cropped to its centre square and resized to
/// `size`×`size`.
fn decode_all(
    paths: &[PathBuf],
    limits: &atelier_imaging::Limits,
    size: u32,
) -> anyhow::Result<Vec<Image>> {
    paths
        .iter()
        .map(|p| {
            let img = atelier_imaging::decode_file(p, limits)
                .with_context(|| format!("decoding {}", p.display()))?;
            if size == 0 || (img.width, img.height) == (size, size) {
                return Ok(img);
            }
            let square = atelier_imaging::center_square(&img);
            Ok(atelier_imaging::resize(&square, size, size))
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn training_of(card: &atelier_nets::ModelCard) -> String {
    let p = &card.provenance;
    let mut parts = Vec::new();
    if let Some(s) = p.steps {
        parts.push(format!("{s} steps"));
    }
    if let Some(h) = &p.hardware {
        parts.push(h.clone());
    }
    if parts.is_empty() {
        p.source.clone()
    } else {
        parts.join(", ")
    }
}

/// The non-learned baseline: a 5×5 box blur (flattens photographic detail), each channel
/// posterized to 6 levels (flat colour areas) and saturation raised by 30 %.
pub fn painterly_filter(img: &Image) -> Image {
    let (w, h) = (img.width as usize, img.height as usize);
    let n = w * h;
    let mut rgb = vec![0f32; 3 * n];
    for c in 0..3 {
        let src = &img.rgb[c * n..(c + 1) * n];
        let dst = &mut rgb[c * n..(c + 1) * n];
        for y in 0..h {
            for x in 0..w {
                let (mut s, mut k) = (0f32, 0f32);
                for yy in y.saturating_sub(2)..(y + 3).min(h) {
                    for xx in x.saturating_sub(2)..(x + 3).min(w) {
                        s += src[yy * w + xx];
                        k += 1.0;
                    }
                }
                dst[y * w + x] = s / k;
            }
        }
    }
    const LEVELS: f32 = 5.0; // 6 levels: 0, 1/5, ..., 1
    for i in 0..n {
        let v: [f32; 3] = std::array::from_fn(|c| (rgb[c * n + i] + 1.0) / 2.0);
        let grey = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        for (c, &vc) in v.iter().enumerate() {
            let sat = (grey + 1.3 * (vc - grey)).clamp(0.0, 1.0);
            let q = (sat * LEVELS).round() / LEVELS;
            rgb[c * n + i] = q * 2.0 - 1.0;
        }
    }
    Image {
        width: img.width,
        height: img.height,
        rgb,
        alpha: None,
    }
}

/// Rows: the grid photos; columns: every entry (identity first).
fn sample_grid(entries: &[Entry], rows: usize) -> Image {
    let cols = entries.len() as u32;
    let rows = rows.max(1) as u32;
    let (gw, gh) = (
        cols * CELL + (cols + 1) * GAP,
        rows * CELL + (rows + 1) * GAP,
    );
    let mut canvas = Image::filled(gw, gh, [1.0; 3]);
    let plane = (gw * gh) as usize;
    for (c, e) in entries.iter().enumerate() {
        for (r, img) in e.grid.iter().take(rows as usize).enumerate() {
            let cell = atelier_imaging::resize(img, CELL, CELL);
            let (x0, y0) = (GAP + c as u32 * (CELL + GAP), GAP + r as u32 * (CELL + GAP));
            let cn = (CELL * CELL) as usize;
            for ch in 0..3 {
                for y in 0..CELL {
                    for x in 0..CELL {
                        canvas.rgb[ch * plane + ((y0 + y) * gw + x0 + x) as usize] =
                            cell.rgb[ch * cn + (y * CELL + x) as usize];
                    }
                }
            }
        }
    }
    canvas
}

/// Writes the KID into a model file's card (metrics `kid_x100`, `kid_x100_std`, and a note
/// naming the held-out sets); the file is re-saved with fp16 weights.
fn write_card_metrics(
    file: &Path,
    card: &atelier_nets::ModelCard,
    kid: &atelier_eval::Kid,
    paintings: usize,
    photos: usize,
) -> anyhow::Result<()> {
    let (tensors, _) = atelier_nets::file::read_safetensors(file)?;
    let mut card = card.clone();
    card.metrics.insert("kid_x100".into(), kid.mean * 100.0);
    card.metrics.insert("kid_x100_std".into(), kid.std * 100.0);
    card.notes.retain(|n| !n.starts_with("KID: "));
    card.notes.push(format!(
        "KID: {photos} held-out photos translated vs {paintings} held-out paintings, {} \
         subsets of {} (atelier eval report)",
        kid.subsets, kid.subset_size
    ));
    atelier_nets::save(file, &card, &tensors, atelier_nets::Storage::F16)?;
    Ok(())
}
