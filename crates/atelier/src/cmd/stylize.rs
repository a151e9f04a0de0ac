//! `atelier stylize`: images or folders in, stylized images out; one failed file does not stop
//! the others.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use atelier_engine::{Options, Stylizer};
use atelier_imaging::Format;
use candle_core::Device;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Global, OutFormat, StylizeArgs};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Expands folders (their image files, sorted, not recursive); files are taken as given
/// (their content decides whether they are images).
fn collect_inputs(inputs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut files: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && has_image_extension(p))
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        out.push((p.clone(), Some("folder has no jpg/png/webp files".into())));
                    }
                    out.extend(files.into_iter().map(|f| (f, None)));
                }
                Err(e) => out.push((p.clone(), Some(e.to_string()))),
            }
        } else if p.exists() {
            out.push((p.clone(), None));
        } else {
            out.push((p.clone(), Some("no such file or folder".into())));
        }
    }
    out
}

fn format_of(arg: Option<OutFormat>) -> Option<Format> {
    arg.map(|f| match f {
        OutFormat::Jpg => Format::Jpeg,
        OutFormat::Png => Format::Png,
        OutFormat::Webp => Format::WebP,
    })
}

pub fn run(global: &Global, args: StylizeArgs) -> anyhow::Result<ExitCode> {
    let model = global.load_model(&args.model, &Device::Cpu)?;
    let choice = atelier_engine::PrecisionChoice::parse(&args.precision).unwrap_or_default();
    let stylizer = Stylizer::with_choice(model, Device::Cpu, choice)?;
    let opts = Options {
        tile: args.tile,
        overlap: args.overlap,
        context: args.context,
        thumbnail_side: args.stats_side,
        memory_budget: args.memory_budget,
    };
    let limits = global.limits();
    let inputs = collect_inputs(&args.inputs);
    let images = inputs.iter().filter(|(_, e)| e.is_none()).count();

    // A single image with an image-like output name is written to that file.
    let single_file =
        inputs.len() == 1 && !args.inputs[0].is_dir() && has_image_extension(&args.output);
    if !single_file {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("creating output folder {}", args.output.display()))?;
    }
    let out_format = format_of(args.format).or_else(|| {
        single_file
            .then(|| {
                args.output
                    .extension()?
                    .to_str()
                    .and_then(Format::from_extension)
            })
            .flatten()
    });

    let multi = MultiProgress::new();
    if global.quiet {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let bar = multi.add(ProgressBar::new(images as u64));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} images {elapsed_precise} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("stylize");
    let tiles = multi.add(ProgressBar::new(0));
    tiles.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} passes {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    tiles.set_prefix("tiles");

    // Output names already used in this run: `a.jpg` and `a.png`, or same-named files from two
    // folders, must not overwrite each other.
    let mut used: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut failed = 0usize;
    let mut ok = 0usize;
    let started = Instant::now();
    for (path, pre_error) in &inputs {
        if let Some(e) = pre_error {
            multi.suspend(|| eprintln!("error: {}: {e}", path.display()));
            failed += 1;
            continue;
        }
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        );
        let res = stylize_one(
            &stylizer,
            path,
            &args,
            &opts,
            &limits,
            single_file,
            out_format,
            &tiles,
            &mut used,
        );
        match res {
            Ok(out) => {
                ok += 1;
                if global.quiet {
                    // Logs only: one line per image.
                    eprintln!("{} -> {}", path.display(), out.display());
                }
            }
            Err(e) => {
                failed += 1;
                let mut msg = format!("{e}");
                for c in e.chain().skip(1) {
                    msg.push_str(&format!(": {c}"));
                }
                multi.suspend(|| eprintln!("error: {}: {msg}", path.display()));
            }
        }
        bar.inc(1);
    }
    tiles.finish_and_clear();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if failed > 0 {
        eprintln!(
            "{ok} of {} image(s) stylized, {failed} failed ({secs:.1} s)",
            ok + failed
        );
        Ok(ExitCode::from(1))
    } else {
        if !global.quiet {
            eprintln!(
                "{ok} image(s) stylized with `{}` in {secs:.1} s, {}",
                stylizer.card().name,
                precision_note(&stylizer)
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The precision the images ran at, and what `auto` measured to pick it.
fn precision_note(stylizer: &Stylizer) -> String {
    let p = stylizer.precision().name();
    let probe = stylizer.precision_probe();
    if probe.is_empty() {
        return p.to_string();
    }
    let tried: Vec<String> = probe
        .iter()
        .map(|m| format!("{} {:.1} dB", m.precision.name(), m.psnr_db))
        .collect();
    format!(
        "{p} (auto, PSNR against f32 on the probe photo: {})",
        tried.join(", ")
    )
}

#[allow(clippy::too_many_arguments)]
fn stylize_one(
    stylizer: &Stylizer,
    path: &Path,
    args: &StylizeArgs,
    opts: &Options,
    limits: &atelier_imaging::Limits,
    single_file: bool,
    out_format: Option<Format>,
    tiles: &ProgressBar,
    used: &mut std::collections::HashSet<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let bytes = atelier_imaging::read_file(path, limits)?;
    let request = atelier_jobs::pipeline::Request {
        strength: 1.0,
        max_side: args.max_side,
        format: out_format,
        quality: args.quality.into(),
        engine: *opts,
    };
    tiles.set_position(0);
    let out = atelier_jobs::pipeline::stylize_bytes(
        stylizer,
        &bytes,
        limits,
        &request,
        &mut |p| {
            tiles.set_length(p.total as u64);
            tiles.set_position(p.done as u64);
        },
        &|| false,
    )?;
    drop(bytes);
    tiles.set_message(format!("{}×{}", out.width, out.height));
    let (format, data) = (out.format, out.bytes);
    let target = if single_file {
        args.output.clone()
    } else {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "image".into());
        let ext = format.extension();
        let mut target = args.output.join(format!("{stem}.{ext}"));
        let mut n = 2;
        while used.contains(&target) {
            target = args.output.join(format!("{stem}-{n}.{ext}"));
            n += 1;
        }
        target
    };
    used.insert(target.clone());
    atelier_nets::file::write_atomic(&target, &data)?;
    Ok(target)
}
