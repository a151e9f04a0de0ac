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
    /// Edge correlation and sharpness against the photos.
    structure: atelier_eval::StructureSummary,
    params: Option<usize>,
    macs_512: Option<u64>,
    latency_512_ms: Option<f64>,
    card: Option<atelier_nets::ModelCard>,
}

pub fn run(global: &Global, args: ReportArgs) -> anyhow::Result<ExitCode> {
    // The overview's photos are listed before the scoring, so that a wrong folder fails fast.
    let overview_paths = match &args.overview_photos {
        Some(dir) if args.overview_size > 0 => {
            let paths = list_images(dir)?;
            if paths.is_empty() {
                bail!("--overview-photos {}: no images", dir.display());
            }
            Some(paths[..paths.len().min(OVERVIEW_ROWS)].to_vec())
        }
        _ => None,
    };
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
    // (column title, model file) of every Atelier model, for the overview and the crops.
    let mut showcase: Vec<(String, PathBuf)> = Vec::new();
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
                structure: structure_of(&photos, &photos)?,
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
                structure: structure_of(&photos, &filtered)?,
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
            if kind != "reference" && file.is_file() {
                showcase.push((
                    format!(
                        "{name}{}",
                        if kind == "atelier light" {
                            " (light)"
                        } else {
                            ""
                        }
                    ),
                    file.clone(),
                ));
            }
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
                structure: structure_of(&photos, &out)?,
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
            "| images | KID ×100 | edge correlation | sharpness | parameters | GMAC at 512² | CPU ms at 512² | training |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|")?;
        for e in &entries {
            let training = e.card.as_ref().map(training_of).unwrap_or_default();
            writeln!(
                md,
                "| {} | {:.2} ± {:.2} | {:.3} ± {:.3} | {:.3} ± {:.3} | {} | {} | {} | {} |",
                e.label,
                e.kid.mean * 100.0,
                e.kid.std * 100.0,
                e.structure.edge_correlation,
                e.structure.edge_correlation_std,
                e.structure.sharpness,
                e.structure.sharpness_std,
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
                "edge_correlation": e.structure.edge_correlation,
                "edge_correlation_std": e.structure.edge_correlation_std,
                "sharpness": e.structure.sharpness,
                "sharpness_std": e.structure.sharpness_std,
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
                    write_card_metrics(file, card, e, paintings.len(), photos.len())?;
                    log(format!("{name}: KID written into {}", file.display()));
                }
            }
        }
    }
    if args.overview_size > 0 && !showcase.is_empty() {
        let chosen: Vec<Image> = match &overview_paths {
            // Decoded straight to the overview's side (centre squares).
            Some(paths) => decode_all(paths, &limits, args.overview_size)?,
            None => grid_photos
                .iter()
                .chain(&photos)
                .take(OVERVIEW_ROWS)
                .cloned()
                .collect(),
        };
        let side = args.overview_size;
        let rows: Vec<Image> = chosen
            .into_iter()
            .map(|p| {
                if (p.width, p.height) == (side, side) {
                    p
                } else {
                    atelier_imaging::resize(&atelier_imaging::center_square(&p), side, side)
                }
            })
            .collect();
        let grid = overview(&rows, &showcase, &device)?;
        std::fs::write(
            args.out.join("overview.jpg"),
            atelier_imaging::encode(&grid, Format::Jpeg, 88)?,
        )?;
        let titles: Vec<&str> = showcase.iter().map(|(t, _)| t.as_str()).collect();
        writeln!(
            md,
            "## Overview\n\n{} photos{} translated at {s}×{s} (shown at {OVERVIEW_CELL} px). \
             Columns: photo | {}.\n\n![overview](overview.jpg)\n",
            rows.len(),
            match &args.overview_photos {
                Some(dir) => format!(" of `{}`", dir.display()),
                None => String::new(),
            },
            titles.join(" | "),
            s = args.overview_size
        )?;
    }
    if let Some(crop_photo) = &args.crop_photo {
        let img = atelier_imaging::decode_file(crop_photo, &limits)
            .with_context(|| format!("decoding {}", crop_photo.display()))?;
        let (w, h) = atelier_imaging::fit_max_side(img.width, img.height, CROP_SIDE);
        let big = atelier_imaging::resize(&img, w, h);
        writeln!(
            md,
            "## Detail at {w}×{h}\n\n`{}` translated at {w}×{h} (its longer side at most \
             {CROP_SIDE} px); the {CROP}×{CROP} centre at 1:1, photo on the left.\n",
            crop_photo.display()
        )?;
        for (title, file) in &showcase {
            let model = atelier_nets::load(file, &device)?;
            let st = Stylizer::new(model, device.clone())?;
            let out = st.stylize(&big, &Options::default(), &mut |_| {})?;
            let pair = side_by_side(&[centre_crop(&big, CROP), centre_crop(&out, CROP)]);
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let fname = format!("crop_{stem}.jpg");
            std::fs::write(
                args.out.join(&fname),
                atelier_imaging::encode(&pair, Format::Jpeg, 90)?,
            )?;
            writeln!(md, "**{title}**\n\n![{title}]({fname})\n")?;
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

/// Rows of the overview.
const OVERVIEW_ROWS: usize = 8;
/// Side of an overview cell.
const OVERVIEW_CELL: u32 = 256;
/// Longer side of the detail translation, and the side of its crop.
const CROP_SIDE: u32 = 1024;
const CROP: u32 = 384;

fn structure_of(photos: &[Image], out: &[Image]) -> anyhow::Result<atelier_eval::StructureSummary> {
    let pairs: Vec<(&Image, &Image)> = photos.iter().zip(out).collect();
    Ok(atelier_eval::structure_summary(&pairs)?)
}

/// Rows: the photos; columns: the photo, then each model's translation.
fn overview(
    rows: &[Image],
    models: &[(String, PathBuf)],
    device: &Device,
) -> anyhow::Result<Image> {
    let mut columns: Vec<Vec<Image>> = vec![rows.to_vec()];
    for (_, file) in models {
        let model = atelier_nets::load(file, device)?;
        let st = Stylizer::new(model, device.clone())?;
        columns.push(
            rows.iter()
                .map(|p| st.stylize(p, &Options::default(), &mut |_| {}))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    Ok(paste_grid(&columns, OVERVIEW_CELL))
}

/// Columns of images, each cell resized to `cell`², on white with gaps.
fn paste_grid(columns: &[Vec<Image>], cell: u32) -> Image {
    let cols = columns.len() as u32;
    let rows = columns.iter().map(Vec::len).max().unwrap_or(1).max(1) as u32;
    let (gw, gh) = (
        cols * cell + (cols + 1) * GAP,
        rows * cell + (rows + 1) * GAP,
    );
    let mut canvas = Image::filled(gw, gh, [1.0; 3]);
    for (c, col) in columns.iter().enumerate() {
        for (r, img) in col.iter().enumerate() {
            let x0 = GAP + c as u32 * (cell + GAP);
            let y0 = GAP + r as u32 * (cell + GAP);
            paste(
                &mut canvas,
                &atelier_imaging::resize(img, cell, cell),
                x0,
                y0,
            );
        }
    }
    canvas
}

fn paste(canvas: &mut Image, img: &Image, x0: u32, y0: u32) {
    let (gw, plane) = (canvas.width, canvas.pixel_count());
    let n = img.pixel_count();
    for ch in 0..3 {
        for y in 0..img.height {
            for x in 0..img.width {
                canvas.rgb[ch * plane + ((y0 + y) * gw + x0 + x) as usize] =
                    img.rgb[ch * n + (y * img.width + x) as usize];
            }
        }
    }
}

/// The centre `side`² of an image (smaller if the image is).
fn centre_crop(img: &Image, side: u32) -> Image {
    let (w, h) = (side.min(img.width), side.min(img.height));
    let rect = atelier_imaging::Rect {
        x: (img.width - w) / 2,
        y: (img.height - h) / 2,
        w,
        h,
    };
    atelier_imaging::crop(img, rect)
}

/// Images left to right, top-aligned, on white with gaps.
fn side_by_side(images: &[Image]) -> Image {
    let w: u32 = images.iter().map(|i| i.width).sum::<u32>() + GAP * (images.len() as u32 + 1);
    let h = images.iter().map(|i| i.height).max().unwrap_or(1) + 2 * GAP;
    let mut canvas = Image::filled(w, h, [1.0; 3]);
    let mut x = GAP;
    for img in images {
        paste(&mut canvas, img, x, GAP);
        x += img.width + GAP;
    }
    canvas
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
    let columns: Vec<Vec<Image>> = entries
        .iter()
        .map(|e| e.grid.iter().take(rows.max(1)).cloned().collect())
        .collect();
    paste_grid(&columns, CELL)
}

/// Writes the KID into a model file's card (metrics `kid_x100`, `kid_x100_std`, and a note
/// naming the held-out sets); the file is re-saved with fp16 weights.
fn write_card_metrics(
    file: &Path,
    card: &atelier_nets::ModelCard,
    e: &Entry,
    paintings: usize,
    photos: usize,
) -> anyhow::Result<()> {
    let kid = &e.kid;
    let (tensors, _) = atelier_nets::file::read_safetensors(file)?;
    let mut card = card.clone();
    card.metrics.insert("kid_x100".into(), kid.mean * 100.0);
    card.metrics.insert("kid_x100_std".into(), kid.std * 100.0);
    card.metrics
        .insert("edge_correlation".into(), e.structure.edge_correlation);
    card.metrics
        .insert("sharpness".into(), e.structure.sharpness);
    card.notes.retain(|n| !n.starts_with("KID: "));
    card.notes.push(format!(
        "KID: {photos} held-out photos translated vs {paintings} held-out paintings, {} \
         subsets of {} (atelier eval report)",
        kid.subsets, kid.subset_size
    ));
    atelier_nets::save(file, &card, &tensors, atelier_nets::Storage::F16)?;
    Ok(())
}
