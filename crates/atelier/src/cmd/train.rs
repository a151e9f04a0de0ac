//! `atelier train`: start, resume and plot training runs.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use atelier_train::config::{DcganPreset, Direction, Family, NetChoice, TrainConfig};
use atelier_train::{Event, GanLoss, Observer, TrainError, Trainer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{DirectionArg, Global, LossArg, PresetArg, TrainArgs, TrainCommand};

pub fn run(global: &Global, cmd: TrainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrainCommand::Dcgan(a) => start(global, Family::Dcgan, *a),
        TrainCommand::Pix2pix(a) => start(global, Family::Pix2pix, *a),
        TrainCommand::Cyclegan(a) => start(global, Family::Cyclegan, *a),
        TrainCommand::Cut(a) => start(global, Family::Cut, *a),
        TrainCommand::Fastcut(a) => start(global, Family::Fastcut, *a),
        TrainCommand::Distill(a) => start(global, Family::Distill, *a),
        TrainCommand::Resume { run, device } => {
            let trainer = Trainer::resume_on(&run, device.as_deref())?;
            train(global, trainer)
        }
        TrainCommand::Export { run, step } => {
            let mut trainer = Trainer::load_at(&run, step, Some("cpu"))?;
            if trainer.step() == 0 {
                anyhow::bail!("{}: no checkpoint to export yet", run.display());
            }
            for m in trainer.export_now()? {
                println!("{}", m.display());
            }
            eprintln!("exported the generator(s) at step {}", trainer.step());
            Ok(ExitCode::SUCCESS)
        }
        TrainCommand::Compare {
            runs,
            output,
            budget_minutes,
        } => compare(&runs, &output, budget_minutes),
        TrainCommand::Plot { run, output } => {
            let (dir, _) = atelier_train::RunDir::open(&run)?;
            let path = match output {
                None => atelier_train::plot::write_plot(&dir)?,
                Some(out) => {
                    let png = atelier_train::plot::plot_png(&dir.read_metrics()?)?;
                    std::fs::write(&out, png)
                        .with_context(|| format!("cannot write {}", out.display()))?;
                    out
                }
            };
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn compare(
    runs: &[std::path::PathBuf],
    output: &std::path::Path,
    budget: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for r in runs {
        let (dir, cfg) = atelier_train::RunDir::open(r)?;
        let name = r
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.display().to_string());
        all.push((name, cfg, dir.read_metrics()?));
    }
    let reached = |m: &[serde_json::Value]| {
        m.iter()
            .filter_map(|l| l["cpu_s"].as_f64())
            .fold(0.0f64, f64::max)
    };
    let budget_s = match budget {
        Some(b) => b * 60.0,
        None => all
            .iter()
            .map(|(_, _, m)| reached(m))
            .fold(f64::INFINITY, f64::min),
    };
    let named: Vec<(String, Vec<serde_json::Value>)> =
        all.iter().map(|(n, _, m)| (n.clone(), m.clone())).collect();
    let png = atelier_train::plot::compare_png(&named)?;
    std::fs::write(output, png).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "At {:.1} CPU minutes of training (each run's last validation within it):\n",
        budget_s / 60.0
    );
    println!(
        "| run | family | generator | crop | step | CPU min | KID ×100 | edge corr. | sharpness |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, cfg, m) in &all {
        let row = atelier_train::plot::validation_at(m, budget_s);
        let f = |k: &str, scale: f64, digits: usize| {
            row.and_then(|l| l[k].as_f64())
                .map(|v| format!("{:.*}", digits, v * scale))
                .unwrap_or_else(|| "–".into())
        };
        let ngf = match cfg.generator {
            atelier_nets::Arch::Resnet(c) => format!(" ngf {}", c.ngf),
            atelier_nets::Arch::Light(c) => format!(" ngf {}", c.ngf),
            _ => String::new(),
        };
        println!(
            "| {name} | {} | {}{ngf} | {} | {} | {} | {} ± {} | {} | {} |",
            cfg.family.name(),
            cfg.generator.name(),
            cfg.augment.crop_size,
            row.and_then(|l| l["step"].as_u64())
                .map(|s| s.to_string())
                .unwrap_or_else(|| "–".into()),
            f("cpu_s", 1.0 / 60.0, 1),
            f("kid_a2b", 100.0, 2),
            f("kid_a2b_std", 100.0, 2),
            f("edge_corr_a2b", 1.0, 3),
            f("sharpness_a2b", 1.0, 3),
        );
    }
    eprintln!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

/// Resolves `--init-from`: an existing path, a model in the models folder, or a built-in
/// style (written to a temporary file, which the trainer copies into the run). Returns the
/// file or run directory and the generator (and, from a run, discriminator) it holds.
fn init_source(
    global: &Global,
    spec: &str,
    keep: &mut Option<tempfile::TempDir>,
) -> anyhow::Result<(
    std::path::PathBuf,
    atelier_nets::Arch,
    Option<atelier_nets::Arch>,
)> {
    let path = std::path::PathBuf::from(spec);
    if path.is_dir() {
        let (_, cfg) = atelier_train::RunDir::open(&path)
            .with_context(|| format!("--init-from {spec}: not a model file or run directory"))?;
        return Ok((path, cfg.generator, Some(cfg.discriminator)));
    }
    let file = model_file(global, "--init-from", spec, keep)?;
    let card = atelier_nets::file::read_card(&file)
        .with_context(|| format!("--init-from {}", file.display()))?;
    if card.arch.role() != atelier_nets::Role::Translator {
        anyhow::bail!(
            "--init-from {}: a {} is not an image-to-image generator",
            file.display(),
            card.arch.name()
        );
    }
    Ok((file, card.arch, None))
}

/// A model file given as a path, a name in the models folder or a built-in style (written to
/// a temporary folder kept in `keep`).
fn model_file(
    global: &Global,
    flag: &str,
    spec: &str,
    keep: &mut Option<tempfile::TempDir>,
) -> anyhow::Result<std::path::PathBuf> {
    let path = std::path::PathBuf::from(spec);
    Ok(if path.is_file() {
        path
    } else {
        let in_dir = global.models_dir.join(format!("{spec}.safetensors"));
        if in_dir.is_file() {
            in_dir
        } else if let Some((name, _, bytes)) = atelier_jobs::builtin::EMBEDDED
            .iter()
            .find(|(n, _, _)| *n == spec)
        {
            let dir = match keep {
                Some(d) => d,
                None => keep.insert(tempfile::tempdir()?),
            };
            let f = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&f, bytes)?;
            f
        } else {
            anyhow::bail!(
                "{flag} {spec}: no such file, model in {} or built-in style",
                global.models_dir.display()
            );
        }
    })
}

fn config(family: Family, a: TrainArgs) -> anyhow::Result<TrainConfig> {
    let norm = match a.norm.as_deref() {
        None => None,
        Some(n) => Some(
            atelier_nets::NormKind::parse(n)
                .ok_or_else(|| anyhow::anyhow!("--norm {n}: expected instance, batch or none"))?,
        ),
    };
    let nets = NetChoice {
        net_g: a.net_g,
        net_d: a.net_d,
        ngf: a.ngf,
        ndf: a.ndf,
        n_layers_d: a.n_layers_d,
        norm,
        dropout: a.no_dropout.then_some(false),
        preset: match a.preset {
            PresetArg::Brief => DcganPreset::Brief,
            PresetArg::D64 => DcganPreset::D64,
        },
        nz: a.nz,
    };
    let mut cfg = TrainConfig::new(family, a.data_a, a.data_b, a.size, &nets)?;
    if let Some(l) = a.load_size {
        cfg.augment.load_size = l;
    }
    if let Some(b) = a.batch {
        cfg.batch = b;
    }
    if let Some(l) = a.loss {
        cfg.loss = match l {
            LossArg::Vanilla => GanLoss::Vanilla,
            LossArg::Lsgan => GanLoss::Lsgan,
            LossArg::Hinge => GanLoss::Hinge,
        };
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    if let Some(b) = a.beta1 {
        cfg.beta1 = b;
    }
    cfg.lambda_l1 = a.lambda_l1;
    cfg.lambda_cycle = a.lambda_cycle;
    cfg.lambda_identity = a.lambda_identity;
    cfg.pool_size = a.pool_size;
    cfg.direction = match a.direction {
        DirectionArg::AtoB => Direction::AtoB,
        DirectionArg::BtoA => Direction::BtoA,
    };
    if family != Family::Dcgan {
        cfg.augment.flip = !a.no_flip;
    }
    cfg.augment.color_jitter = a.color_jitter;
    cfg.seed = a.seed;
    cfg.device = a.device;
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.checkpoint_minutes = a.checkpoint_minutes;
    cfg.sample_every = a.sample_every;
    cfg.log_every = a.log_every;
    cfg.keep_checkpoints = a.keep_checkpoints;
    cfg.precision = atelier_train::config::TrainPrecision::parse(&a.precision)
        .context("--precision: expected f32 or bf16")?;
    cfg.d_wins_steps = a.d_wins_steps;
    if let Some(n) = a.name {
        cfg.name = n;
    }
    cfg.data_description = a.data_description;
    cfg.data_licence = a.data_licence;
    if let Some(kid_every) = a.kid_every {
        cfg.validation = Some(atelier_train::config::Validation {
            every: a.val_every,
            max_images: a.val_max_images,
            kid_every,
            weights: a
                .fid_weights
                .clone()
                .unwrap_or_else(crate::cmd::eval::default_weights),
            folders: a.val_folders.map(|v| [v[0].clone(), v[1].clone()]),
            size: a.val_size,
        });
    }
    cfg.nce.layers = a.nce_layers;
    cfg.nce.num_patches = a.num_patches;
    cfg.nce.nc = a.netf_nc;
    cfg.nce.tau = a.nce_t;
    if let Some(l) = a.lambda_nce {
        cfg.nce.lambda_nce = l;
    }
    cfg.nce.lambda_gan = a.lambda_gan;
    cfg.nce.lambda_tv = a.lambda_tv;
    let bpe = atelier_train::trainer::batches_per_epoch(&cfg)?;
    cfg.set_length(a.steps, a.epochs, a.epochs_decay, bpe)?;
    if let (Some(steps), Some(decay)) = (a.steps, a.steps_decay) {
        let decay = decay.min(steps);
        cfg.lr_policy = atelier_train::LrPolicy::LinearSteps {
            constant: steps - decay,
            decay,
        };
    }
    Ok(cfg)
}

fn start(global: &Global, family: Family, args: TrainArgs) -> anyhow::Result<ExitCode> {
    let out = args.out.clone();
    let mut keep = None;
    let init = match &args.init_from {
        Some(spec) => Some(init_source(global, spec, &mut keep)?),
        None => None,
    };
    let teacher = match &args.teacher {
        Some(spec) => Some(model_file(global, "--teacher", spec, &mut keep)?),
        None => None,
    };
    let args_init = args.init_from.clone().unwrap_or_default();
    let own_g = args.net_g.is_some() || args.ngf.is_some();
    let own_d = args.net_d.is_some() || args.ndf.is_some();
    let mut cfg = config(family, args)?;
    cfg.teacher = teacher.map(|t| std::path::absolute(&t).unwrap_or(t));
    if let Some((path, g, d)) = init {
        if !own_g {
            cfg.generator = g;
        }
        if let Some(d) =
            d.filter(|d| !own_d && d.input_channels() == cfg.discriminator.input_channels())
        {
            cfg.discriminator = d;
        }
        cfg.init_label = Some(match &keep {
            Some(tmp) if path.starts_with(tmp.path()) => {
                format!("the built-in style `{}`", args_init)
            }
            _ => path.display().to_string(),
        });
        cfg.init_from = Some(std::path::absolute(&path).unwrap_or(path));
    }
    // The trainer copies the initial weights into the run; the temporary file may go.
    let trainer = Trainer::create(cfg, &out)?;
    drop(keep);
    train(global, trainer)
}

fn train(global: &Global, mut trainer: Trainer) -> anyhow::Result<ExitCode> {
    // First Ctrl-C: finish the step, checkpoint, stop. Second: stop now.
    let stop = trainer.stop_flag();
    let presses = Arc::new(AtomicUsize::new(0));
    {
        let (stop, presses) = (stop.clone(), presses.clone());
        let _ = ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) >= 1 {
                eprintln!("\nstopping without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step (Ctrl-C again to stop at once)…");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let cfg = trainer.config().clone();
    let run = trainer.run_dir().root().to_path_buf();
    let mut progress = Progress::new(global.quiet, cfg.sample_every);
    let started = Instant::now();
    match trainer.run(&mut progress) {
        Ok(done) => {
            progress.finish();
            eprintln!(
                "trained {} steps in {:.0} s; run: {} (loss.png, samples/latest.png, metrics.jsonl)",
                done.steps,
                started.elapsed().as_secs_f64(),
                run.display()
            );
            for m in &done.models {
                println!("{}", m.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ TrainError::Interrupted { .. }) => {
            progress.finish();
            eprintln!("{e}");
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            progress.finish();
            Err(e.into())
        }
    }
}

/// Progress bar (or, with `--quiet`, a log line every `log_every` steps).
struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
    /// Short name of the latest warning and the step it came at (shown for 200 steps).
    warning: Option<(String, u64)>,
    step: u64,
}

impl Progress {
    fn new(quiet: bool, log_every: u64) -> Self {
        let bar = (!quiet).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:25}] {pos}/{len} steps, ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            log_every: log_every.max(1),
            warning: None,
            step: 0,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

fn losses_text(losses: &[(&str, f64)]) -> String {
    losses
        .iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Observer for Progress {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::Started {
                step,
                total,
                resumed,
                notes,
            } => {
                for n in *notes {
                    self.line(&format!("note: {n}"));
                }
                if *resumed {
                    self.line(&format!("resuming at step {step} of {total}"));
                }
                if let Some(bar) = &self.bar {
                    bar.set_length(*total);
                    bar.set_position(*step);
                    bar.reset_eta();
                    bar.set_prefix("train");
                }
            }
            Event::Step(p) => {
                self.step = p.step;
                let warn = match &self.warning {
                    Some((w, at)) if p.step < at + 200 => format!(" | ⚠ {w}"),
                    _ => String::new(),
                };
                let msg = format!(
                    "| epoch {} | {:.2} img/s | {}{warn}",
                    p.epoch,
                    p.images_per_s,
                    losses_text(&p.losses)
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(p.step);
                        bar.set_message(msg);
                    }
                    None if p.step.is_multiple_of(self.log_every) || p.step == p.total => {
                        eprintln!("step {}/{} {msg}", p.step, p.total);
                    }
                    None => {}
                }
            }
            Event::Warning(w) => {
                self.line(&format!("warning: {w}"));
                let short = w.split(':').next().unwrap_or("warning").to_string();
                self.warning = Some((short, self.step));
            }
            Event::Skipped { path, reason } => {
                self.line(&format!("warning: skipped {}: {reason}", path.display()));
            }
            Event::Checkpoint { step, path } => {
                if self.bar.is_none() {
                    eprintln!("checkpoint at step {step}: {}", path.display());
                }
            }
            Event::Sample { .. } => {}
            Event::Finished { models } => {
                let names: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
                self.line(&format!("exported {}", names.join(", ")));
            }
        }
    }
}
