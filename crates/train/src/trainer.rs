//! The training loop of the three families, with checkpoints, metrics, samples and exact
//! resume.
//!
//! Every source of randomness is a seeded [`Rng`] whose state is checkpointed: weight
//! initialisation ([`SeededVarMap`]), data order and augmentation ([`Loader`]), noise `z`,
//! dropout masks and the image pool. On the CPU a run interrupted and resumed produces the same
//! weights, bit for bit, as a run that was never interrupted (see `tests/train.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use atelier_nets::arch::Arch;
use atelier_nets::card::{DataInfo, ModelCard};
use atelier_nets::{Ctx, Rng, SeededVarMap, Storage};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::config::TrainConfig;
use crate::data::images_to_tensor;
use crate::monitor::{collapse_warning, diversity, Monitor};
use crate::recipes::{self, Batch, DataKind, Recipe, State};
use crate::run::{CheckpointState, RunDir, CHECKPOINT_FORMAT};
use crate::{
    Adam, AdamConfig, Augment, Dataset, Loader, LoaderState, PairedDataset, Source, TrainError,
    TrainResult, UnpairedDataset,
};

/// Steps before DCGAN samples are checked for mode collapse.
const COLLAPSE_WARMUP: u64 = 500;
/// Fixed DCGAN sample batch (an 8×8 grid).
const DCGAN_SAMPLES: usize = 64;
/// Fixed image-to-image sample rows.
const PAIR_SAMPLES: usize = 4;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> TrainResult<Device> {
    let err = |reason: String| TrainError::Device {
        device: spec.to_string(),
        reason,
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| err("expected cuda or cuda:N".into()))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(err(
                    "this binary was built without CUDA support; rebuild with `cargo build --release --features cuda` (see README, GPU training)".into(),
                ));
            }
            Device::new_cuda(n).map_err(|e| err(e.to_string()))
        }
        _ => Err(err("expected cpu, cuda or cuda:N".into())),
    }
}

enum Data {
    Single(Loader<Dataset>),
    Paired(Loader<PairedDataset>),
    Unpaired(Loader<UnpairedDataset>),
}

/// Held-out validation images of domains A and B (decoded, original size).
type Held = Option<[Vec<atelier_imaging::Image>; 2]>;

impl Data {
    fn open(cfg: &TrainConfig, device: &Device) -> TrainResult<Data> {
        Ok(Self::open_held(cfg, device)?.0)
    }

    /// Opens the data; with `cfg.validation`, the held-out images are taken out of the
    /// training sets first and returned beside them.
    fn open_held(cfg: &TrainConfig, device: &Device) -> TrainResult<(Data, Held)> {
        let seed = cfg.seed ^ 0xDA7A;
        let mut held = None;
        let data = match recipes::for_family(cfg.family).data() {
            DataKind::Single | DataKind::Photos => Data::Single(Loader::new(
                Dataset::open(&cfg.data_a)?,
                cfg.augment,
                cfg.batch,
                seed,
                device,
            )?),
            DataKind::Paired => {
                let src = match &cfg.data_b {
                    None => PairedDataset::aligned(&cfg.data_a)?,
                    Some(b) => PairedDataset::matched(&cfg.data_a, b)?,
                };
                Data::Paired(Loader::new(src, cfg.augment, cfg.batch, seed, device)?)
            }
            DataKind::Unpaired => {
                let b = cfg.data_b.as_ref().ok_or_else(|| {
                    TrainError::Config(format!("{} needs --data-b", cfg.family.name()))
                })?;
                let mut src = UnpairedDataset::open(&cfg.data_a, b)?;
                if let Some(v) = &cfg.validation {
                    let (a, b) = match &v.folders {
                        Some([fa, fb]) => (
                            validation_images(fa, v.max_images)?,
                            validation_images(fb, v.max_images)?,
                        ),
                        None => (
                            src.a.hold_out(v.every, v.max_images),
                            src.b.hold_out(v.every, v.max_images),
                        ),
                    };
                    if a.len() < 2 || b.len() < 2 || src.a.is_empty() || src.b.is_empty() {
                        return Err(TrainError::Config(format!(
                            "validation: {} + {} validation and {} + {} training images; KID \
                             needs ≥ 2 validation images per domain",
                            a.len(),
                            b.len(),
                            src.a.len(),
                            src.b.len()
                        )));
                    }
                    held = Some([a, b]);
                }
                Data::Unpaired(Loader::new(src, cfg.augment, cfg.batch, seed, device)?)
            }
        };
        Ok((data, held))
    }

    fn next(&mut self) -> TrainResult<Batch> {
        Ok(match self {
            Data::Single(l) => Batch::Single(l.next_batch()?),
            Data::Paired(l) => Batch::Pair(l.next_batch()?),
            Data::Unpaired(l) => Batch::Pair(l.next_batch()?),
        })
    }

    fn state(&self) -> LoaderState {
        match self {
            Data::Single(l) => l.state(),
            Data::Paired(l) => l.state(),
            Data::Unpaired(l) => l.state(),
        }
    }

    fn restore(&mut self, s: LoaderState) -> TrainResult<()> {
        match self {
            Data::Single(l) => l.restore(s)?,
            Data::Paired(l) => l.restore(s)?,
            Data::Unpaired(l) => l.restore(s)?,
        }
        Ok(())
    }

    fn batches_per_epoch(&self) -> usize {
        match self {
            Data::Single(l) => l.batches_per_epoch(),
            Data::Paired(l) => l.batches_per_epoch(),
            Data::Unpaired(l) => l.batches_per_epoch(),
        }
    }

    fn len(&self) -> (usize, Option<usize>) {
        match self {
            Data::Single(l) => (l.source().len(), None),
            Data::Paired(l) => (l.source().len(), None),
            Data::Unpaired(l) => (l.source().a.len(), Some(l.source().b.len())),
        }
    }

    fn skipped(&self) -> Vec<(PathBuf, String)> {
        match self {
            Data::Single(l) => l.source().skipped().to_vec(),
            Data::Paired(l) => l.source().skipped(),
            Data::Unpaired(l) => l.source().skipped(),
        }
    }
}

/// Opens the dataset of a config and returns its batches per epoch (for
/// [`TrainConfig::set_length`]).
pub fn batches_per_epoch(cfg: &TrainConfig) -> TrainResult<u64> {
    Ok(Data::open(cfg, &Device::Cpu)?.batches_per_epoch() as u64)
}

/// Fixed inputs of the sample grids.
enum Fixed {
    Noise { z: Tensor, real_diversity: f64 },
    Pairs { a: Tensor, b: Tensor },
}

/// Progress of a run, sent to the [`Observer`] after every step.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub epoch: u64,
    /// Images per second over the recent steps.
    pub images_per_s: f64,
    /// This step's losses.
    pub losses: Vec<(&'static str, f64)>,
    pub lr: f64,
}

/// What a run reports while it trains.
#[derive(Debug)]
pub enum Event<'a> {
    /// The run starts (or resumes) at `step` of `total`.
    Started {
        step: u64,
        total: u64,
        resumed: bool,
        notes: &'a [String],
    },
    /// A step finished.
    Step(&'a Progress),
    /// A convergence warning (also written to metrics.jsonl).
    Warning(&'a str),
    /// An unreadable training image was skipped.
    Skipped { path: &'a Path, reason: &'a str },
    /// A checkpoint was written.
    Checkpoint { step: u64, path: &'a Path },
    /// A sample grid was written.
    Sample { step: u64, path: &'a Path },
    /// The run finished and exported these model files.
    Finished { models: &'a [PathBuf] },
}

/// Receives [`Event`]s (a progress bar, a log, a server's event stream).
pub trait Observer {
    fn event(&mut self, event: &Event<'_>);
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: &Event<'_>) {}
}

/// Means over the steps since the last metrics line.
#[derive(Default)]
struct Accumulator {
    sums: Vec<(&'static str, f64)>,
    steps: u64,
    images: u64,
    /// Training seconds of these steps.
    seconds: f64,
    /// Sums of D's mean verdict on real and on generated images.
    verdicts: [f64; 2],
    warnings: Vec<String>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Accumulator {
    fn add(&mut self, losses: &[(&'static str, f64)], images: u64) {
        if self.sums.is_empty() {
            self.sums = losses.iter().map(|(k, _)| (*k, 0.0)).collect();
        }
        for ((_, s), (_, v)) in self.sums.iter_mut().zip(losses) {
            *s += v;
        }
        self.steps += 1;
        self.images += images;
    }
}

/// Outcome of a finished run.
#[derive(Debug, Clone)]
pub struct Finished {
    pub steps: u64,
    /// Exported model files.
    pub models: Vec<PathBuf>,
    /// Mean losses of the last logged interval.
    pub final_losses: Vec<(String, f64)>,
}

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    run: RunDir,
    data: Data,
    /// The family's procedure.
    recipe: Box<dyn Recipe + Send>,
    /// Networks, optimisers, pools and randomness.
    st: State,
    step: u64,
    monitor: Monitor,
    fixed: Fixed,
    elapsed_s: f64,
    /// CPU seconds of this process spent training, over all segments of the run.
    cpu_s: f64,
    /// Where the training ran (see [`CheckpointState::hardware`]).
    trained_on: Option<String>,
    stop: Arc<AtomicBool>,
    acc: Accumulator,
    last_losses: Vec<(String, f64)>,
    skipped_seen: usize,
    notes: Vec<String>,
    resumed: bool,
    batches_per_epoch: u64,
    /// Held-out images for the periodic KID (CycleGAN with `validation`).
    val: Option<ValState>,
}

/// The held-out images and, once first needed, the Inception and the real images' features.
struct ValState {
    images: [Vec<atelier_imaging::Image>; 2],
    /// Inception and the pool features of the held-out A and B images.
    loaded: Option<(atelier_eval::Inception, [Vec<f32>; 2])>,
}

impl ValState {
    fn new(a: Vec<atelier_imaging::Image>, b: Vec<atelier_imaging::Image>) -> Self {
        Self {
            images: [a, b],
            loaded: None,
        }
    }
}

fn eval_err(e: atelier_eval::Error) -> TrainError {
    TrainError::Config(format!("validation KID: {e}"))
}

impl Trainer {
    /// Starts a new run in `out` (created; it must not hold a run yet). `cfg` must have its
    /// length set ([`TrainConfig::set_length`]).
    pub fn create(mut cfg: TrainConfig, out: &Path) -> TrainResult<Trainer> {
        cfg.absolutize();
        cfg.validate()?;
        let device = parse_device(&cfg.device)?;
        let (data, held) = Data::open_held(&cfg, &device)?;
        let run = RunDir::create(out, &cfg)?;
        if let Some(src) = &cfg.init_from {
            crate::init::prepare(src, &run, &device)?;
        }
        if let Some(teacher) = &cfg.teacher {
            recipes::distill::prepare(teacher, &run)?;
        }
        Self::build(cfg, run, device, data, held)
    }

    /// Opens `run` and continues from its newest readable checkpoint (or from the start if it
    /// has none). Metric lines after that checkpoint are dropped; they are written again.
    pub fn resume(run: &Path) -> TrainResult<Trainer> {
        Self::resume_on(run, None)
    }

    /// [`Trainer::resume`] on another device than the run's own (e.g. a GPU run continued on
    /// the CPU); results are then no longer bit-identical to an uninterrupted run.
    pub fn resume_on(run: &Path, device: Option<&str>) -> TrainResult<Trainer> {
        let t = Self::load_latest(run, device)?;
        t.run.truncate_metrics(t.step)?;
        Ok(t)
    }

    /// The state of `run`'s newest readable checkpoint, without touching the run's files
    /// (safe while the run is still training elsewhere); for [`Trainer::export_now`].
    /// [`Trainer::load_latest`], or the checkpoint of exactly `step` when given.
    pub fn load_at(run: &Path, step: Option<u64>, device: Option<&str>) -> TrainResult<Trainer> {
        let Some(step) = step else {
            return Self::load_latest(run, device);
        };
        let (run, cfg) = RunDir::open(run)?;
        let device = parse_device(device.unwrap_or(&cfg.device))?;
        let (data, held) = Data::open_held(&cfg, &device)?;
        let mut t = Self::build(cfg, run, device, data, held)?;
        t.resumed = true;
        let (state, tensors) = t.run.checkpoint_at(step, &t.st.device)?;
        t.restore(state, &tensors)?;
        Ok(t)
    }

    pub fn load_latest(run: &Path, device: Option<&str>) -> TrainResult<Trainer> {
        let (run, cfg) = RunDir::open(run)?;
        let device = parse_device(device.unwrap_or(&cfg.device))?;
        let (data, held) = Data::open_held(&cfg, &device)?;
        let mut t = Self::build(cfg, run, device, data, held)?;
        t.resumed = true;
        match t.run.latest_checkpoint(&t.st.device)? {
            Some((state, tensors, notes)) => {
                t.notes.extend(notes);
                t.restore(state, &tensors)?;
            }
            None => t
                .notes
                .push("no checkpoint yet: starting from step 0".to_string()),
        }
        Ok(t)
    }

    fn build(
        cfg: TrainConfig,
        run: RunDir,
        device: Device,
        data: Data,
        held: Held,
    ) -> TrainResult<Trainer> {
        let mut seeds = Rng::new(cfg.seed);
        let mut recipe = recipes::for_family(cfg.family);
        recipe.load(&run, &device)?;
        let (g, d) = recipe.networks(&cfg, &mut seeds, &device)?;
        let adam = AdamConfig {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: 1e-8,
        };
        // Extra variables (CUT's heads) share the generators' optimiser: Adam works per
        // parameter, so this is the reference's separate optimiser with the same settings.
        let mut g_vars: Vec<_> = g.iter().flat_map(|n| n.trainable()).collect();
        for (name, vars) in recipe.extra_vars() {
            g_vars.extend(recipes::trainable(name, vars));
        }
        let opt_g = Adam::new(g_vars, adam)?;
        let opt_d = Adam::new(d.iter().flat_map(|n| n.trainable()).collect(), adam)?;
        let pools = recipe.pools(&cfg);
        let monitor = Monitor::new(d.len(), cfg.loss.d_wins_threshold(), cfg.d_wins_steps);
        let fixed = fixed_inputs(&cfg, recipe.data(), &device, &mut seeds)?;
        let rng = Rng::new(seeds.next_u64());
        let batches_per_epoch = data.batches_per_epoch() as u64;
        let mut notes = Vec::new();
        if let Some(init) = crate::init::load(&run, &device)? {
            let src = cfg.init_label.clone().unwrap_or_else(|| {
                cfg.init_from
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            });
            let mut sets: Vec<(&'static str, &SeededVarMap)> =
                g.iter().chain(&d).map(|n| (n.name, &n.vars)).collect();
            sets.extend(recipe.extra_vars());
            for (i, (name, vars)) in sets.into_iter().enumerate() {
                let (set, total) = crate::init::apply(name, vars, &init)?;
                if i == 0 && set < total {
                    return Err(TrainError::Config(format!(
                        "--init-from {src}: only {set} of the generator's {total} weights have \
                         a tensor of the same name and shape there; train with its \
                         architecture (omit --netG/--ngf to take it from the source)"
                    )));
                }
                notes.push(match set {
                    0 => format!("{name}: random initialisation (not in {src})"),
                    s if s == total => format!("{name}: initialised from {src}"),
                    s => format!("{name}: {s} of {total} weights from {src}, the rest random"),
                });
            }
        }
        Ok(Trainer {
            cfg,
            run,
            data,
            recipe,
            st: State {
                g,
                d,
                opt_g,
                opt_d,
                pools,
                rng,
                device,
            },
            step: 0,
            monitor,
            fixed,
            elapsed_s: 0.0,
            cpu_s: 0.0,
            trained_on: None,
            stop: Arc::new(AtomicBool::new(false)),
            acc: Accumulator::default(),
            last_losses: Vec::new(),
            skipped_seen: 0,
            notes,
            resumed: false,
            batches_per_epoch,
            val: held.map(|[a, b]| ValState::new(a, b)),
        })
    }

    /// Setting this flag (e.g. from a Ctrl-C handler) makes the run write a checkpoint after
    /// the current step and return [`TrainError::Interrupted`].
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// A copy of the generators' weights (model-file names), e.g. to compare runs.
    pub fn generator_weights(&self) -> TrainResult<Vec<(String, HashMap<String, Tensor>)>> {
        self.st
            .g
            .iter()
            .map(|n| {
                let w = n
                    .weights()
                    .into_iter()
                    .map(|(k, t)| Ok((k, t.copy()?)))
                    .collect::<TrainResult<HashMap<_, _>>>()?;
                Ok((n.name.to_string(), w))
            })
            .collect()
    }

    /// A copy of every trained variable (generators, discriminators and the recipe's own,
    /// e.g. CUT's heads) by checkpoint name (`<net>.<key>`), e.g. to compare runs.
    pub fn trained_weights(&self) -> TrainResult<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, vars) in self.var_sets() {
            for (k, v) in recipes::sorted_vars(vars) {
                out.insert(format!("{name}.{k}"), v.as_tensor().copy()?);
            }
        }
        Ok(out)
    }

    /// Runs a generator in inference mode (e.g. for evaluation in tests): index 0 is G (or
    /// G_A), 1 is G_B.
    pub fn generate(&self, index: usize, x: &Tensor) -> TrainResult<Tensor> {
        let net = self
            .st
            .g
            .get(index)
            .ok_or_else(|| TrainError::Config(format!("no generator {index}")))?;
        let mut ctx = self.sample_ctx();
        Ok(net.net.forward(x, &mut ctx)?)
    }

    fn sample_ctx(&self) -> Ctx {
        let mut ctx = Ctx::eval();
        ctx.batch_stats = self.uses_batch_stats();
        ctx
    }

    /// Batch-norm generators are run with batch statistics at inference, as the reference's
    /// `test.py` without `--eval` (and pytorch/examples' DCGAN samples).
    fn uses_batch_stats(&self) -> bool {
        use atelier_nets::NormKind::Batch;
        match self.cfg.generator {
            Arch::Unet(c) => c.norm == Batch,
            Arch::Resnet(c) => c.norm == Batch,
            Arch::BriefG(_) | Arch::Dcgan64G(_) => true,
            _ => false,
        }
    }

    fn restore(&mut self, s: CheckpointState, t: &HashMap<String, Tensor>) -> TrainResult<()> {
        for (name, vars) in self.var_sets() {
            recipes::restore_vars(name, vars, t)?;
        }
        let strip = |prefix: &str| -> HashMap<String, Tensor> {
            t.iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                .collect()
        };
        self.st.opt_g.restore(s.opt_steps[0], &strip("opt_g."))?;
        self.st.opt_d.restore(s.opt_steps[1], &strip("opt_d."))?;
        for (i, pool) in self.st.pools.iter_mut().enumerate() {
            let n = s.pool_sizes.get(i).copied().unwrap_or(0);
            let images = (0..n)
                .map(|j| {
                    t.get(&format!("pool.{i}.{j}")).cloned().ok_or_else(|| {
                        TrainError::Config(format!("checkpoint lacks pool image {i}.{j}"))
                    })
                })
                .collect::<TrainResult<Vec<_>>>()?;
            pool.restore(images);
        }
        self.data.restore(s.loader)?;
        self.st.rng = Rng::new(s.rng);
        self.monitor.state = s.monitor;
        self.step = s.step;
        self.elapsed_s = s.elapsed_s;
        self.cpu_s = s.cpu_s;
        self.trained_on = s.hardware.clone();
        Ok(())
    }

    fn checkpoint(&mut self, obs: &mut dyn Observer) -> TrainResult<()> {
        for (name, vars) in self.var_sets() {
            if !recipes::all_finite(vars)? {
                return Err(TrainError::Diverged {
                    step: self.step,
                    what: format!("a weight of {name}"),
                    last_good: self.monitor.state.last_good,
                });
            }
        }
        self.monitor.state.last_good = Some(self.step);
        let mut tensors = HashMap::new();
        for (name, vars) in self.var_sets() {
            for (k, v) in recipes::sorted_vars(vars) {
                tensors.insert(format!("net.{name}.{k}"), v.as_tensor().clone());
            }
        }
        for (prefix, opt) in [("opt_g.", &self.st.opt_g), ("opt_d.", &self.st.opt_d)] {
            for (k, v) in opt.state() {
                tensors.insert(format!("{prefix}{k}"), v);
            }
        }
        for (i, pool) in self.st.pools.iter().enumerate() {
            for (j, img) in pool.images().iter().enumerate() {
                tensors.insert(format!("pool.{i}.{j}"), img.clone());
            }
        }
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            step: self.step,
            loader: self.data.state(),
            rng: self.st.rng.state(),
            opt_steps: [self.st.opt_g.step_count(), self.st.opt_d.step_count()],
            pool_sizes: self.st.pools.iter().map(|p| p.images().len()).collect(),
            monitor: self.monitor.state.clone(),
            elapsed_s: self.elapsed_s,
            cpu_s: self.cpu_s,
            hardware: self.trained_on.clone(),
        };
        let every = self.cfg.validation.as_ref().map_or(0, |v| v.kid_every);
        let validated = move |step: u64| every > 0 && step > 0 && step.is_multiple_of(every);
        let path =
            self.run
                .write_checkpoint(&state, &tensors, self.cfg.keep_checkpoints, &validated)?;
        obs.event(&Event::Checkpoint {
            step: self.step,
            path: &path,
        });
        self.write_samples(true, obs)?;
        Ok(())
    }

    /// Trains until the configured number of steps, then exports the generator(s).
    pub fn run(&mut self, obs: &mut dyn Observer) -> TrainResult<Finished> {
        self.trained_on = Some(hardware(&self.st.device));
        obs.event(&Event::Started {
            step: self.step,
            total: self.cfg.steps,
            resumed: self.resumed,
            notes: &self.notes,
        });
        if self.step == 0 {
            self.run.append_metrics(&json!({
                "event": "start",
                "step": 0,
                "family": self.cfg.family.name(),
                "images": self.data.len().0,
                "images_b": self.data.len().1,
                "hardware": self.trained_on,
            }))?;
        }
        let mut rate = RateMeter::default();
        let mut last_checkpoint = Instant::now();
        while self.step < self.cfg.steps {
            if self.stop.load(Ordering::SeqCst) {
                self.flush_metrics()?;
                self.checkpoint(obs)?;
                return Err(TrainError::Interrupted {
                    step: self.step,
                    run: self.run.root().to_path_buf(),
                });
            }
            let t0 = Instant::now();
            let cpu0 = process_cpu_seconds();
            let epoch = self.epoch();
            let lr = self.cfg.lr * self.cfg.lr_policy.factor(self.step, epoch);
            self.st.opt_g.config.lr = lr;
            self.st.opt_d.config.lr = lr;
            let batch = self.data.next()?;
            self.report_skipped(obs);
            let (recipe, st, cfg) = (&mut self.recipe, &mut self.st, &self.cfg);
            // The step runs on a rayon worker: the kernels' parallel loops then start from a
            // worker (the other one steals) instead of handing every loop over from this
            // thread and sleeping until it ends (hundreds of hand-offs per step).
            let out = rayon::scope(|_| {
                atelier_nets::conv::with_training_precision(cfg.precision.kernels(), || {
                    recipe.step(st, cfg, batch)
                })
            })?;
            self.step += 1;
            for (name, v) in &out.losses {
                if !v.is_finite() {
                    self.flush_metrics()?;
                    self.run.append_metrics(&json!({
                        "event": "diverged", "step": self.step, "loss": name,
                    }))?;
                    return Err(TrainError::Diverged {
                        step: self.step,
                        what: format!("loss {name}"),
                        last_good: self.monitor.state.last_good,
                    });
                }
            }
            let dt = t0.elapsed().as_secs_f64();
            self.elapsed_s += dt;
            self.cpu_s += (process_cpu_seconds() - cpu0).max(0.0);
            self.acc.seconds += dt;
            rate.push(dt, self.cfg.batch);
            let names: Vec<&str> = self.st.d.iter().map(|n| n.name).collect();
            if let Some(w) = self.monitor.observe_d(&names, &out.d_terms) {
                obs.event(&Event::Warning(&w));
                self.acc.warnings.push(w);
            }
            self.acc.add(&out.losses, self.cfg.batch as u64);
            self.acc.verdicts[0] += out.d_real;
            self.acc.verdicts[1] += out.d_fake;
            let mut losses = out.losses.clone();
            losses.push(("D(x)", out.d_real));
            losses.push(("D(G(z))", out.d_fake));
            obs.event(&Event::Step(&Progress {
                step: self.step,
                total: self.cfg.steps,
                epoch,
                images_per_s: rate.images_per_s(),
                losses,
                lr,
            }));
            let minutes = self.cfg.checkpoint_minutes;
            let checkpoint = self.step.is_multiple_of(self.cfg.checkpoint_every)
                || self.step == self.cfg.steps
                || (minutes > 0.0 && last_checkpoint.elapsed().as_secs_f64() >= 60.0 * minutes);
            if self.step.is_multiple_of(self.cfg.sample_every) && !checkpoint {
                self.write_samples(false, obs)?;
            }
            if let Some(v) = &self.cfg.validation {
                if self.step.is_multiple_of(v.kid_every) || self.step == self.cfg.steps {
                    let line = self.validation_kid()?;
                    self.run.append_metrics(&line)?;
                }
            }
            if self.step.is_multiple_of(self.cfg.log_every) || checkpoint {
                self.flush_metrics()?;
            }
            if checkpoint {
                self.checkpoint(obs)?;
                last_checkpoint = Instant::now();
            }
        }
        let models = self.export()?;
        obs.event(&Event::Finished { models: &models });
        Ok(Finished {
            steps: self.step,
            models,
            final_losses: self.last_losses.clone(),
        })
    }

    fn report_skipped(&mut self, obs: &mut dyn Observer) {
        let skipped = self.data.skipped();
        if skipped.len() > self.skipped_seen {
            for (path, reason) in &skipped[self.skipped_seen..] {
                obs.event(&Event::Skipped { path, reason });
                self.acc.warnings.push(format!(
                    "skipped unreadable image {}: {reason}",
                    path.display()
                ));
            }
            self.skipped_seen = skipped.len();
        }
    }

    fn flush_metrics(&mut self) -> TrainResult<()> {
        let acc = std::mem::take(&mut self.acc);
        if acc.steps == 0 && acc.warnings.is_empty() {
            return Ok(());
        }
        let n = acc.steps.max(1) as f64;
        let losses: serde_json::Map<String, serde_json::Value> = acc
            .sums
            .iter()
            .map(|(k, s)| (k.to_string(), json!(s / n)))
            .collect();
        self.last_losses = acc
            .sums
            .iter()
            .map(|(k, s)| (k.to_string(), s / n))
            .collect();
        let epoch = self.epoch();
        let mut line = json!({
            "step": self.step,
            "epoch": epoch,
            "lr": self.st.opt_g.config.lr,
            "losses": losses,
            "elapsed_s": (self.elapsed_s * 1000.0).round() / 1000.0,
            "cpu_s": (self.cpu_s * 1000.0).round() / 1000.0,
            "skipped_images": self.skipped_seen,
        });
        let obj = line.as_object_mut().expect("object");
        if acc.steps > 0 {
            obj.insert("D_real".into(), json!(acc.verdicts[0] / n));
            obj.insert("D_fake".into(), json!(acc.verdicts[1] / n));
        }
        for (k, v) in acc.extra {
            obj.insert(k, v);
        }
        // Over this interval's steps (data loading included).
        obj.insert(
            "images_per_s".into(),
            json!(if acc.seconds > 0.0 {
                acc.images as f64 / acc.seconds
            } else {
                0.0
            }),
        );
        if !acc.warnings.is_empty() {
            obj.insert("warnings".into(), json!(acc.warnings));
        }
        self.run.append_metrics(&line)
    }

    // ------------------------------------------------------------------------------------
    // Steps
    // ------------------------------------------------------------------------------------

    /// The current epoch: steps over batches per epoch (batches may span the data's
    /// boundaries, so the loader's own count can run ahead).
    fn epoch(&self) -> u64 {
        self.step / self.batches_per_epoch.max(1)
    }

    // ------------------------------------------------------------------------------------
    // Samples and export
    // ------------------------------------------------------------------------------------

    /// KID of the translated held-out images against the other domain's held-out images
    /// (A → B and B → A), as one `metrics.jsonl` line.
    fn validation_kid(&mut self) -> TrainResult<serde_json::Value> {
        use atelier_eval::stats::Rows;
        use atelier_eval::FEATURES;
        let mut ctx = self.sample_ctx();
        let (Some(v), Some(val)) = (self.cfg.validation.clone(), self.val.as_mut()) else {
            return Err(TrainError::Config("validation is not set up".into()));
        };
        let t0 = Instant::now();
        if val.loaded.is_none() {
            let net =
                atelier_eval::Inception::load(&v.weights, &self.st.device).map_err(eval_err)?;
            let mut feats = [Vec::new(), Vec::new()];
            for (f, imgs) in feats.iter_mut().zip(&val.images) {
                *f = image_features(&net, imgs, &self.st.device)?;
            }
            val.loaded = Some((net, feats));
        }
        let side = v.size.unwrap_or(self.cfg.augment.crop_size);
        let mut line = json!({
            "event": "kid",
            "step": self.step,
            "cpu_s": (self.cpu_s * 10.0).round() / 10.0,
        });
        for &(dir, g, src) in self.recipe.directions() {
            let other = 1 - src;
            let mut inputs = Vec::new();
            let mut fakes = Vec::new();
            for img in &val.images[src] {
                let x = atelier_imaging::resize(img, side, side);
                let t = images_to_tensor(&[&x], &self.st.device)?;
                let y = self.st.g[g].net.forward(&t, &mut ctx)?;
                fakes.push(tensor_image(&y)?);
                inputs.push(x);
            }
            // Structure metrics (undefined, and left out, when every input is flat).
            let pairs: Vec<_> = inputs.iter().zip(&fakes).collect();
            if let Ok(s) = atelier_eval::structure_summary(&pairs) {
                line[format!("edge_corr_{dir}")] = json!(s.edge_correlation);
                line[format!("sharpness_{dir}")] = json!(s.sharpness);
            }
            let (net, feats) = val.loaded.as_ref().expect("loaded above");
            let fake = image_features(net, &fakes, &self.st.device)?;
            let k = atelier_eval::kid(
                Rows::new(&feats[other], FEATURES).map_err(eval_err)?,
                Rows::new(&fake, FEATURES).map_err(eval_err)?,
                100,
                1000,
                self.step,
            )
            .map_err(eval_err)?;
            line[format!("kid_{dir}")] = json!(k.mean);
            line[format!("kid_{dir}_std")] = json!(k.std);
        }
        line["val_images"] = json!([val.images[0].len(), val.images[1].len()]);
        line["seconds"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        Ok(line)
    }

    /// Writes the sample grid to `samples/latest.png` (and `samples/step-N.png` when
    /// `keep`) and reports it (and a mode-collapse warning) to `obs`.
    fn write_samples(&mut self, keep: bool, obs: &mut dyn Observer) -> TrainResult<()> {
        let mut ctx = self.sample_ctx();
        let (grid, warning) = match &self.fixed {
            Fixed::Noise { z, real_diversity } => {
                let fake = self.st.g[0].net.forward(z, &mut ctx)?;
                let n = fake.dim(0)?;
                let values = fake.flatten_all()?.to_vec1::<f32>()?;
                let div = diversity(&values, n);
                self.acc.extra.insert("diversity".into(), json!(div));
                self.acc
                    .extra
                    .insert("real_diversity".into(), json!(real_diversity));
                // Early samples are naturally alike; only a persistent drop after a warm-up
                // (two sample checks in a row) counts as collapse.
                let warmup = (self.cfg.steps / 10).max(COLLAPSE_WARMUP);
                let low = collapse_warning(div, *real_diversity).filter(|_| self.step >= warmup);
                let streak = &mut self.monitor.state.collapse_streak;
                *streak = if low.is_some() { *streak + 1 } else { 0 };
                let w = low.filter(|_| *streak == 2);
                (crate::grid::grid(&fake, 8)?, w)
            }
            Fixed::Pairs { a, b } => {
                let rows = self
                    .recipe
                    .sample_rows(&self.st, &self.cfg, a, b, &mut ctx)?;
                (crate::grid::columns(&rows)?, None)
            }
        };
        if let Some(w) = warning {
            obs.event(&Event::Warning(&w));
            self.acc.warnings.push(w);
        }
        let png = atelier_imaging::encode(&grid, atelier_imaging::Format::Png, 0)
            .map_err(|e| TrainError::Config(format!("sample grid: {e}")))?;
        let latest = self.run.samples_dir().join("latest.png");
        atelier_nets::file::write_atomic(&latest, &png)?;
        let mut path = latest;
        if keep {
            path = self
                .run
                .samples_dir()
                .join(format!("step-{:08}.png", self.step));
            atelier_nets::file::write_atomic(&path, &png)?;
        }
        obs.event(&Event::Sample {
            step: self.step,
            path: &path,
        });
        crate::plot::write_plot(&self.run)?;
        Ok(())
    }

    /// Exports the generator(s) of the current state (after [`Trainer::resume`]: the newest
    /// checkpoint) without training, e.g. to try a run that is still going. The cards carry
    /// the latest logged losses.
    pub fn export_now(&mut self) -> TrainResult<Vec<PathBuf>> {
        if self.last_losses.is_empty() {
            let metrics = self.run.read_metrics()?;
            if let Some(losses) = metrics
                .iter()
                .rev()
                .filter(|m| m["step"].as_u64().is_some_and(|s| s <= self.step))
                .find_map(|m| m.get("losses").and_then(|l| l.as_object()))
            {
                self.last_losses = losses
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect();
            }
        }
        self.export()
    }

    fn export(&mut self) -> TrainResult<Vec<PathBuf>> {
        let mut out = Vec::new();
        let (len_a, len_b) = self.data.len();
        let data_desc = if self.cfg.data_description.is_empty() {
            match &self.cfg.data_b {
                Some(b) => format!(
                    "A: {} ({len_a} images); B: {} ({} images)",
                    self.cfg.data_a.display(),
                    b.display(),
                    len_b.unwrap_or(0)
                ),
                None => format!("{} ({len_a} images)", self.cfg.data_a.display()),
            }
        } else {
            self.cfg.data_description.clone()
        };
        for (i, net) in self.st.g.iter().enumerate() {
            let (name, what) = self.recipe.export_label(&self.cfg, i);
            let mut card = ModelCard::new(name.clone(), net.arch);
            card.description = format!(
                "{what}, {} trained by `atelier train {}` for {} steps at {}×{} (batch {}, seed {})",
                net.arch.name(),
                self.cfg.family.name(),
                self.step,
                self.cfg.augment.crop_size,
                self.cfg.augment.crop_size,
                self.cfg.batch,
                self.cfg.seed
            );
            card.input.train_size = Some(self.cfg.augment.crop_size);
            if let Some(src) = &self.cfg.init_from {
                let label = self
                    .cfg
                    .init_label
                    .clone()
                    .unwrap_or_else(|| src.display().to_string());
                card.notes
                    .push(format!("initialised from {label} (--init-from)"));
            }
            card.inference.batch_stats = self.uses_batch_stats();
            card.provenance.source = format!("atelier train {}", self.cfg.family.name());
            card.provenance.steps = Some(self.step);
            card.provenance.hardware = Some(
                self.trained_on
                    .clone()
                    .unwrap_or_else(|| hardware(&self.st.device)),
            );
            card.provenance.created = format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            );
            card.data = DataInfo {
                description: data_desc.clone(),
                licence: self.cfg.data_licence.clone(),
            };
            for (k, v) in &self.last_losses {
                card.metrics.insert(format!("final_loss_{k}"), *v);
            }
            card.metrics.insert(
                "train_seconds".into(),
                (self.elapsed_s * 10.0).round() / 10.0,
            );
            if self.cpu_s > 0.0 {
                card.metrics.insert(
                    "train_cpu_seconds".into(),
                    (self.cpu_s * 10.0).round() / 10.0,
                );
            }
            let path = self.run.model_path(&name);
            atelier_nets::save(&path, &card, &net.weights(), Storage::F32)?;
            out.push(path);
        }
        Ok(out)
    }
}

/// The CPU's model name (`/proc/cpuinfo` on Linux), or `CPU`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "CPU".into())
}

fn hardware(device: &Device) -> String {
    match device {
        Device::Cpu => match rayon::current_num_threads() {
            1 => format!("{}, 1 thread", cpu_model()),
            n => format!("{}, {n} threads", cpu_model()),
        },
        Device::Cuda(_) => "NVIDIA GPU (CUDA)".into(),
        Device::Metal(_) => "Apple GPU (Metal)".into(),
    }
}

#[derive(Default)]
struct RateMeter {
    recent: std::collections::VecDeque<(f64, usize)>,
}

impl RateMeter {
    fn push(&mut self, dt: f64, images: usize) {
        self.recent.push_back((dt, images));
        if self.recent.len() > 20 {
            self.recent.pop_front();
        }
    }
    fn images_per_s(&self) -> f64 {
        let t: f64 = self.recent.iter().map(|r| r.0).sum();
        let n: usize = self.recent.iter().map(|r| r.1).sum();
        if t > 0.0 {
            n as f64 / t
        } else {
            0.0
        }
    }
}

fn fixed_inputs(
    cfg: &TrainConfig,
    kind: DataKind,
    device: &Device,
    seeds: &mut Rng,
) -> TrainResult<Fixed> {
    let mut rng = seeds.fork();
    let plain = Augment {
        load_size: cfg.augment.crop_size,
        crop_size: cfg.augment.crop_size,
        flip: false,
        color_jitter: 0.0,
        center_square: false,
    };
    Ok(match kind {
        DataKind::Single => {
            let nz = cfg.generator.input_channels();
            let z: Vec<f32> = (0..DCGAN_SAMPLES * nz)
                .map(|_| rng.normal() as f32)
                .collect();
            let z = Tensor::from_vec(z, (DCGAN_SAMPLES, nz), device)?;
            let mut ds = Dataset::open(&cfg.data_a)?;
            let mut images = Vec::new();
            for i in 0..ds.len() {
                if images.len() == DCGAN_SAMPLES {
                    break;
                }
                if let Some(img) = ds.sample(i, &plain, &mut Rng::new(0)) {
                    images.push(img);
                }
            }
            let values: Vec<f32> = images.iter().flat_map(|i| i.rgb.iter().copied()).collect();
            Fixed::Noise {
                z,
                real_diversity: diversity(&values, images.len()),
            }
        }
        DataKind::Paired => {
            let mut src = match &cfg.data_b {
                None => PairedDataset::aligned(&cfg.data_a)?,
                Some(b) => PairedDataset::matched(&cfg.data_a, b)?,
            };
            let mut items = Vec::new();
            for i in 0..src.len() {
                if items.len() == PAIR_SAMPLES {
                    break;
                }
                if let Some(it) = src.sample(i, &plain, &mut Rng::new(0)) {
                    items.push(it);
                }
            }
            let b = PairedDataset::collate(&items, device)?;
            Fixed::Pairs { a: b.a, b: b.b }
        }
        DataKind::Unpaired | DataKind::Photos => {
            let pick = |path: &Path, n: usize| -> TrainResult<Tensor> {
                let mut ds = Dataset::open(path)?;
                let mut images = Vec::new();
                for i in 0..ds.len() {
                    if images.len() == n {
                        break;
                    }
                    if let Some(img) = ds.sample(i, &plain, &mut Rng::new(0)) {
                        images.push(img);
                    }
                }
                Ok(Dataset::collate(&images, device)?)
            };
            if kind == DataKind::Photos {
                let a = pick(&cfg.data_a, PAIR_SAMPLES)?;
                return Ok(Fixed::Pairs { b: a.clone(), a });
            }
            let b_path = cfg.data_b.as_ref().ok_or_else(|| {
                TrainError::Config(format!("{} needs --data-b", cfg.family.name()))
            })?;
            Fixed::Pairs {
                a: pick(&cfg.data_a, PAIR_SAMPLES / 2)?,
                b: pick(b_path, PAIR_SAMPLES / 2)?,
            }
        }
    })
}

/// Inception pool features of images (8-bit RGB as they would be saved).
fn image_features(
    net: &atelier_eval::Inception,
    images: &[atelier_imaging::Image],
    device: &Device,
) -> TrainResult<Vec<f32>> {
    atelier_eval::image_features(net, images, 8, device).map_err(eval_err)
}

/// The first image of a `(N, 3, H, W)` batch in `[-1, 1]` as an [`atelier_imaging::Image`].
fn tensor_image(t: &Tensor) -> TrainResult<atelier_imaging::Image> {
    let (_, _, h, w) = t.dims4()?;
    let v = t.narrow(0, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
    atelier_imaging::Image::new(w as u32, h as u32, v, None)
        .map_err(|e| TrainError::Config(format!("validation image: {e}")))
}

/// CPU seconds (user + system, all threads) this process has used so far: `/proc/self/stat`
/// in clock ticks of 1/100 s (Linux's USER_HZ); 0 where it cannot be read.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Up to `max` decodable validation images of a folder, in sorted order.
fn validation_images(dir: &Path, max: usize) -> TrainResult<Vec<atelier_imaging::Image>> {
    Ok(Dataset::open(dir)?.originals(max))
}

impl Trainer {
    /// Every set of trained variables with its checkpoint name: generators, discriminators
    /// and the recipe's own (CUT's heads).
    fn var_sets(&self) -> Vec<(&'static str, &SeededVarMap)> {
        let mut v: Vec<(&'static str, &SeededVarMap)> = self
            .st
            .g
            .iter()
            .chain(&self.st.d)
            .map(|n| (n.name, &n.vars))
            .collect();
        v.extend(self.recipe.extra_vars());
        v
    }
}
