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
use atelier_nets::{Ctx, Network, Rng, SeededVarMap, Storage};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

use crate::config::{Direction, Family, TrainConfig};
use crate::data::images_to_tensor;
use crate::loss::l1;
use crate::monitor::{collapse_warning, diversity, Monitor};
use crate::run::{CheckpointState, RunDir, CHECKPOINT_FORMAT};
use crate::{
    Adam, AdamConfig, Augment, Dataset, ImagePool, Loader, LoaderState, PairBatch, PairedDataset,
    Source, TrainError, TrainResult, UnpairedDataset,
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

/// One network being trained and its variables.
struct Net {
    name: &'static str,
    arch: Arch,
    vars: SeededVarMap,
    net: Network,
}

impl Net {
    fn new(name: &'static str, arch: Arch, seed: u64, device: &Device) -> TrainResult<Net> {
        let vars = SeededVarMap::new(seed);
        let net = Network::new(arch, vars.builder(device))?;
        Ok(Net {
            name,
            arch,
            vars,
            net,
        })
    }

    fn sorted_vars(&self) -> Vec<(String, Var)> {
        let data = self.vars.varmap().data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Trainable variables, prefixed with the network's name.
    fn trainable(&self) -> Vec<(String, Var)> {
        self.sorted_vars()
            .into_iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(k, v)| (format!("{}.{k}", self.name), v))
            .collect()
    }

    /// Weights as named in a model file.
    fn weights(&self) -> HashMap<String, Tensor> {
        self.sorted_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    fn restore(&self, tensors: &HashMap<String, Tensor>) -> TrainResult<()> {
        for (k, var) in self.sorted_vars() {
            let key = format!("net.{}.{k}", self.name);
            let t = tensors.get(&key).ok_or_else(|| {
                TrainError::Config(format!("checkpoint lacks `{key}` (different networks?)"))
            })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Config(format!(
                    "checkpoint `{key}` has shape {:?}, the network {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn all_finite(&self) -> TrainResult<bool> {
        for (_, v) in self.sorted_vars() {
            let s = v.as_tensor().sum_all()?.to_scalar::<f32>()?;
            if !s.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> TrainResult<Tensor> {
        Ok(self.net.forward_logits(x, ctx)?)
    }
}

enum Data {
    Single(Loader<Dataset>),
    Paired(Loader<PairedDataset>),
    Unpaired(Loader<UnpairedDataset>),
}

enum Batch {
    Single(Tensor),
    Pair(PairBatch),
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
        let data = match cfg.family {
            Family::Dcgan => Data::Single(Loader::new(
                Dataset::open(&cfg.data_a)?,
                cfg.augment,
                cfg.batch,
                seed,
                device,
            )?),
            Family::Pix2pix => {
                let src = match &cfg.data_b {
                    None => PairedDataset::aligned(&cfg.data_a)?,
                    Some(b) => PairedDataset::matched(&cfg.data_a, b)?,
                };
                Data::Paired(Loader::new(src, cfg.augment, cfg.batch, seed, device)?)
            }
            Family::Cyclegan => {
                let b = cfg
                    .data_b
                    .as_ref()
                    .ok_or_else(|| TrainError::Config("CycleGAN needs --data-b".into()))?;
                let mut src = UnpairedDataset::open(&cfg.data_a, b)?;
                if let Some(v) = &cfg.validation {
                    let a = src.a.hold_out(v.every, v.max_images);
                    let b = src.b.hold_out(v.every, v.max_images);
                    if a.len() < 2 || b.len() < 2 || src.a.is_empty() || src.b.is_empty() {
                        return Err(TrainError::Config(format!(
                            "validation: holding out every {}th image leaves {} + {} held-out and \
                             {} + {} training images; KID needs ≥ 2 held out per domain",
                            v.every,
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
    device: Device,
    data: Data,
    g: Vec<Net>,
    d: Vec<Net>,
    opt_g: Adam,
    opt_d: Adam,
    pools: Vec<ImagePool>,
    rng: Rng,
    step: u64,
    monitor: Monitor,
    fixed: Fixed,
    elapsed_s: f64,
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
    pub fn load_latest(run: &Path, device: Option<&str>) -> TrainResult<Trainer> {
        let (run, cfg) = RunDir::open(run)?;
        let device = parse_device(device.unwrap_or(&cfg.device))?;
        let (data, held) = Data::open_held(&cfg, &device)?;
        let mut t = Self::build(cfg, run, device, data, held)?;
        t.resumed = true;
        match t.run.latest_checkpoint(&t.device)? {
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
        let (g, d) = match cfg.family {
            Family::Cyclegan => (
                vec![
                    Net::new("G_A", cfg.generator, seeds.next_u64(), &device)?,
                    Net::new("G_B", cfg.generator, seeds.next_u64(), &device)?,
                ],
                vec![
                    Net::new("D_A", cfg.discriminator, seeds.next_u64(), &device)?,
                    Net::new("D_B", cfg.discriminator, seeds.next_u64(), &device)?,
                ],
            ),
            _ => (
                vec![Net::new("G", cfg.generator, seeds.next_u64(), &device)?],
                vec![Net::new("D", cfg.discriminator, seeds.next_u64(), &device)?],
            ),
        };
        let adam = AdamConfig {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: 1e-8,
        };
        let opt_g = Adam::new(g.iter().flat_map(|n| n.trainable()).collect(), adam)?;
        let opt_d = Adam::new(d.iter().flat_map(|n| n.trainable()).collect(), adam)?;
        let pools = if cfg.family == Family::Cyclegan {
            vec![ImagePool::new(cfg.pool_size), ImagePool::new(cfg.pool_size)]
        } else {
            Vec::new()
        };
        let monitor = Monitor::new(d.len(), cfg.loss.d_wins_threshold(), cfg.d_wins_steps);
        let fixed = fixed_inputs(&cfg, &device, &mut seeds)?;
        let rng = Rng::new(seeds.next_u64());
        let batches_per_epoch = data.batches_per_epoch() as u64;
        Ok(Trainer {
            cfg,
            run,
            device,
            data,
            g,
            d,
            opt_g,
            opt_d,
            pools,
            rng,
            step: 0,
            monitor,
            fixed,
            elapsed_s: 0.0,
            trained_on: None,
            stop: Arc::new(AtomicBool::new(false)),
            acc: Accumulator::default(),
            last_losses: Vec::new(),
            skipped_seen: 0,
            notes: Vec::new(),
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
        self.g
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

    /// Runs a generator in inference mode (e.g. for evaluation in tests): index 0 is G (or
    /// G_A), 1 is G_B.
    pub fn generate(&self, index: usize, x: &Tensor) -> TrainResult<Tensor> {
        let net = self
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
        for n in self.g.iter().chain(&self.d) {
            n.restore(t)?;
        }
        let strip = |prefix: &str| -> HashMap<String, Tensor> {
            t.iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                .collect()
        };
        self.opt_g.restore(s.opt_steps[0], &strip("opt_g."))?;
        self.opt_d.restore(s.opt_steps[1], &strip("opt_d."))?;
        for (i, pool) in self.pools.iter_mut().enumerate() {
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
        self.rng = Rng::new(s.rng);
        self.monitor.state = s.monitor;
        self.step = s.step;
        self.elapsed_s = s.elapsed_s;
        self.trained_on = s.hardware.clone();
        Ok(())
    }

    fn checkpoint(&mut self, obs: &mut dyn Observer) -> TrainResult<()> {
        for n in self.g.iter().chain(&self.d) {
            if !n.all_finite()? {
                return Err(TrainError::Diverged {
                    step: self.step,
                    what: format!("a weight of {}", n.name),
                    last_good: self.monitor.state.last_good,
                });
            }
        }
        self.monitor.state.last_good = Some(self.step);
        let mut tensors = HashMap::new();
        for n in self.g.iter().chain(&self.d) {
            for (k, v) in n.sorted_vars() {
                tensors.insert(format!("net.{}.{k}", n.name), v.as_tensor().clone());
            }
        }
        for (prefix, opt) in [("opt_g.", &self.opt_g), ("opt_d.", &self.opt_d)] {
            for (k, v) in opt.state() {
                tensors.insert(format!("{prefix}{k}"), v);
            }
        }
        for (i, pool) in self.pools.iter().enumerate() {
            for (j, img) in pool.images().iter().enumerate() {
                tensors.insert(format!("pool.{i}.{j}"), img.clone());
            }
        }
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            step: self.step,
            loader: self.data.state(),
            rng: self.rng.state(),
            opt_steps: [self.opt_g.step_count(), self.opt_d.step_count()],
            pool_sizes: self.pools.iter().map(|p| p.images().len()).collect(),
            monitor: self.monitor.state.clone(),
            elapsed_s: self.elapsed_s,
            hardware: self.trained_on.clone(),
        };
        let path = self
            .run
            .write_checkpoint(&state, &tensors, self.cfg.keep_checkpoints)?;
        obs.event(&Event::Checkpoint {
            step: self.step,
            path: &path,
        });
        self.write_samples(true, obs)?;
        Ok(())
    }

    /// Trains until the configured number of steps, then exports the generator(s).
    pub fn run(&mut self, obs: &mut dyn Observer) -> TrainResult<Finished> {
        self.trained_on = Some(hardware(&self.device));
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
            let epoch = self.epoch();
            let lr = self.cfg.lr * self.cfg.lr_policy.factor(self.step, epoch);
            self.opt_g.config.lr = lr;
            self.opt_d.config.lr = lr;
            let batch = self.data.next()?;
            self.report_skipped(obs);
            let out = match (self.cfg.family, batch) {
                (Family::Dcgan, Batch::Single(real)) => self.step_dcgan(&real)?,
                (Family::Pix2pix, Batch::Pair(p)) => self.step_pix2pix(p)?,
                (Family::Cyclegan, Batch::Pair(p)) => self.step_cyclegan(p)?,
                _ => return Err(TrainError::Config("data does not fit the family".into())),
            };
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
            self.acc.seconds += dt;
            rate.push(dt, self.cfg.batch);
            let names: Vec<&str> = self.d.iter().map(|n| n.name).collect();
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
            "lr": self.opt_g.config.lr,
            "losses": losses,
            "elapsed_s": (self.elapsed_s * 1000.0).round() / 1000.0,
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

    fn ctx(&mut self) -> Ctx {
        Ctx::train_with_rng(self.rng.fork())
    }

    fn noise(&mut self, n: usize, nz: usize) -> TrainResult<Tensor> {
        let v: Vec<f32> = (0..n * nz).map(|_| self.rng.normal() as f32).collect();
        Ok(Tensor::from_vec(v, (n, nz), &self.device)?)
    }

    fn step_dcgan(&mut self, real: &Tensor) -> TrainResult<StepOut> {
        let loss = self.cfg.loss;
        let n = real.dim(0)?;
        let z = self.noise(n, self.cfg.generator.input_channels())?;
        let mut cg = self.ctx();
        let mut cd = self.ctx();
        let fake = self.g[0].forward(&z, &mut cg)?;
        // D step: real → 1, G(z) → 0 (G's graph cut).
        let d_real = self.d[0].forward(real, &mut cd)?;
        let d_fake = self.d[0].forward(&fake.detach(), &mut cd)?;
        let l_real = loss.discriminator(&d_real, true)?;
        let l_fake = loss.discriminator(&d_fake, false)?;
        let loss_d = (&l_real + &l_fake)?;
        self.opt_d.backward_step(&loss_d)?;
        // G step against the updated D.
        cd.frozen = true;
        let d_fake2 = self.d[0].forward(&fake, &mut cd)?;
        cd.frozen = false;
        let loss_g = loss.generator(&d_fake2)?;
        self.opt_g.backward_step(&loss_g)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lr_, lf) = (scalar(&l_real)?, scalar(&l_fake)?);
        Ok(StepOut {
            losses: vec![("D", lr_ + lf), ("G", scalar(&loss_g)?)],
            d_terms: vec![(lr_ + lf) / 2.0],
            d_real: judged(loss, &d_real)?,
            d_fake: judged(loss, &d_fake)?,
        })
    }

    fn step_pix2pix(&mut self, p: PairBatch) -> TrainResult<StepOut> {
        let loss = self.cfg.loss;
        let (a, b) = match self.cfg.direction {
            Direction::AtoB => (p.a, p.b),
            Direction::BtoA => (p.b, p.a),
        };
        let mut cg = self.ctx();
        let mut cd = self.ctx();
        let fake_b = self.g[0].forward(&a, &mut cg)?;
        // D step on (A, B) pairs.
        let fake_ab = Tensor::cat(&[&a, &fake_b.detach()], 1)?;
        let real_ab = Tensor::cat(&[&a, &b], 1)?;
        let pred_fake = self.d[0].forward(&fake_ab, &mut cd)?;
        let pred_real = self.d[0].forward(&real_ab, &mut cd)?;
        let l_fake = loss.discriminator(&pred_fake, false)?;
        let l_real = loss.discriminator(&pred_real, true)?;
        let loss_d = ((&l_fake + &l_real)? * 0.5)?;
        self.opt_d.backward_step(&loss_d)?;
        // G step: fool the updated D and stay close to B in L1.
        cd.frozen = true;
        let pred = self.d[0].forward(&Tensor::cat(&[&a, &fake_b], 1)?, &mut cd)?;
        cd.frozen = false;
        let g_gan = loss.generator(&pred)?;
        let g_l1 = (l1(&fake_b, &b)? * self.cfg.lambda_l1)?;
        let loss_g = (&g_gan + &g_l1)?;
        self.opt_g.backward_step(&loss_g)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lf, lr_) = (scalar(&l_fake)?, scalar(&l_real)?);
        Ok(StepOut {
            losses: vec![
                ("D_real", lr_),
                ("D_fake", lf),
                ("G_GAN", scalar(&g_gan)?),
                ("G_L1", scalar(&g_l1)?),
            ],
            d_terms: vec![(lr_ + lf) / 2.0],
            d_real: judged(loss, &pred_real)?,
            d_fake: judged(loss, &pred_fake)?,
        })
    }

    fn step_cyclegan(&mut self, p: PairBatch) -> TrainResult<StepOut> {
        let loss = self.cfg.loss;
        let (real_a, real_b) = (p.a, p.b);
        let lc = self.cfg.lambda_cycle;
        let li = self.cfg.lambda_identity;
        let mut cg = self.ctx();
        let mut cd = self.ctx();
        let (ga, gb) = (&self.g[0], &self.g[1]);
        let (da, db) = (&self.d[0], &self.d[1]);
        // Passes of one network over independent inputs share a batch when the network
        // treats samples independently (instance norm, no dropout): the same numbers as
        // separate passes, but one weight gradient per network and step instead of one per use.
        let batch_g = self.cfg.batched_passes && li > 0.0 && self.cfg.generator.per_sample();
        let batch_d = self.cfg.batched_passes && self.cfg.discriminator.per_sample();
        let n = real_a.dim(0)?;
        let (fake_b, fake_a, ia, ib) = if batch_g {
            let ya = ga.forward(&Tensor::cat(&[&real_a, &real_b], 0)?, &mut cg)?;
            let yb = gb.forward(&Tensor::cat(&[&real_b, &real_a], 0)?, &mut cg)?;
            (
                ya.narrow(0, 0, n)?,
                yb.narrow(0, 0, n)?,
                Some(ya.narrow(0, n, n)?),
                Some(yb.narrow(0, n, n)?),
            )
        } else {
            let fake_b = ga.forward(&real_a, &mut cg)?;
            let fake_a = gb.forward(&real_b, &mut cg)?;
            (fake_b, fake_a, None, None)
        };
        let rec_a = gb.forward(&fake_b, &mut cg)?;
        let rec_b = ga.forward(&fake_a, &mut cg)?;
        // G step (the reference's backward_G).
        let (idt_a, idt_b) = if li > 0.0 {
            let ia = match ia {
                Some(t) => t,
                None => ga.forward(&real_b, &mut cg)?,
            };
            let ib = match ib {
                Some(t) => t,
                None => gb.forward(&real_a, &mut cg)?,
            };
            (
                (l1(&ia, &real_b)? * (lc * li))?,
                (l1(&ib, &real_a)? * (lc * li))?,
            )
        } else {
            let z = Tensor::zeros((), DType::F32, &self.device)?;
            (z.clone(), z)
        };
        // D judges the fakes with its parameters frozen (only G is updated here).
        cd.frozen = true;
        let g_a = loss.generator(&da.forward(&fake_b, &mut cd)?)?;
        let g_b = loss.generator(&db.forward(&fake_a, &mut cd)?)?;
        cd.frozen = false;
        let cyc_a = (l1(&rec_a, &real_a)? * lc)?;
        let cyc_b = (l1(&rec_b, &real_b)? * lc)?;
        let loss_g = (((((&g_a + &g_b)? + &cyc_a)? + &cyc_b)? + &idt_a)? + &idt_b)?;
        self.opt_g.backward_step(&loss_g)?;
        // D step (backward_D_A, backward_D_B) with pooled fakes.
        let pooled_b = self.pools[1].query(&fake_b.detach(), &mut self.rng)?;
        let pooled_a = self.pools[0].query(&fake_a.detach(), &mut self.rng)?;
        let (da, db) = (&self.d[0], &self.d[1]);
        let judge = |d: &Net, real: &Tensor, fake: &Tensor, cd: &mut Ctx| {
            if batch_d {
                let y = d.forward(&Tensor::cat(&[real, fake], 0)?, cd)?;
                Ok::<_, TrainError>((y.narrow(0, 0, n)?, y.narrow(0, n, n)?))
            } else {
                Ok((d.forward(real, cd)?, d.forward(fake, cd)?))
            }
        };
        let (pred_real_b, pred_fake_b) = judge(da, &real_b, &pooled_b, &mut cd)?;
        let da_real = loss.discriminator(&pred_real_b, true)?;
        let da_fake = loss.discriminator(&pred_fake_b, false)?;
        let loss_da = ((&da_real + &da_fake)? * 0.5)?;
        let (pred_real_a, pred_fake_a) = judge(db, &real_a, &pooled_a, &mut cd)?;
        let db_real = loss.discriminator(&pred_real_a, true)?;
        let db_fake = loss.discriminator(&pred_fake_a, false)?;
        let loss_db = ((&db_real + &db_fake)? * 0.5)?;
        self.opt_d.backward_step(&(&loss_da + &loss_db)?)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lda, ldb) = (scalar(&loss_da)?, scalar(&loss_db)?);
        Ok(StepOut {
            losses: vec![
                ("D_A", lda),
                ("G_A", scalar(&g_a)?),
                ("cycle_A", scalar(&cyc_a)?),
                ("idt_A", scalar(&idt_a)?),
                ("D_B", ldb),
                ("G_B", scalar(&g_b)?),
                ("cycle_B", scalar(&cyc_b)?),
                ("idt_B", scalar(&idt_b)?),
            ],
            d_terms: vec![lda, ldb],
            d_real: (judged(loss, &pred_real_b)? + judged(loss, &pred_real_a)?) / 2.0,
            d_fake: (judged(loss, &pred_fake_b)? + judged(loss, &pred_fake_a)?) / 2.0,
        })
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
            let net = atelier_eval::Inception::load(&v.weights, &self.device).map_err(eval_err)?;
            let mut feats = [Vec::new(), Vec::new()];
            for (f, imgs) in feats.iter_mut().zip(&val.images) {
                *f = image_features(&net, imgs, &self.device)?;
            }
            val.loaded = Some((net, feats));
        }
        let crop = self.cfg.augment.crop_size;
        let mut line = json!({"event": "kid", "step": self.step});
        for (dir, g, src, other) in [("a2b", 0, 0, 1), ("b2a", 1, 1, 0)] {
            let mut fakes = Vec::new();
            for img in &val.images[src] {
                let x = atelier_imaging::resize(img, crop, crop);
                let x = images_to_tensor(&[&x], &self.device)?;
                let y = self.g[g].net.forward(&x, &mut ctx)?;
                fakes.push(tensor_image(&y)?);
            }
            let (net, feats) = val.loaded.as_ref().expect("loaded above");
            let fake = image_features(net, &fakes, &self.device)?;
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
                let fake = self.g[0].net.forward(z, &mut ctx)?;
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
                let rows = match self.cfg.family {
                    Family::Pix2pix => {
                        let (x, y) = match self.cfg.direction {
                            Direction::AtoB => (a, b),
                            Direction::BtoA => (b, a),
                        };
                        // One image at a time, as the reference's test.py (batch norm
                        // uses each image's own statistics).
                        let mut fakes = Vec::new();
                        for i in 0..x.dim(0)? {
                            ctx.rewind();
                            fakes.push(self.g[0].net.forward(&x.narrow(0, i, 1)?, &mut ctx)?);
                        }
                        vec![x.clone(), Tensor::cat(&fakes, 0)?, y.clone()]
                    }
                    _ => {
                        let fb = self.g[0].net.forward(a, &mut ctx)?;
                        let ra = self.g[1].net.forward(&fb, &mut ctx)?;
                        let fa = self.g[1].net.forward(b, &mut ctx)?;
                        let rb = self.g[0].net.forward(&fa, &mut ctx)?;
                        vec![
                            Tensor::cat(&[a, b], 0)?,
                            Tensor::cat(&[&fb, &fa], 0)?,
                            Tensor::cat(&[&ra, &rb], 0)?,
                        ]
                    }
                };
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
        for (i, net) in self.g.iter().enumerate() {
            let (name, what) = match (self.cfg.family, i) {
                (Family::Cyclegan, 0) => (self.cfg.name.clone(), "CycleGAN generator A→B"),
                (Family::Cyclegan, _) => (
                    format!("{}_reverse", self.cfg.name),
                    "CycleGAN generator B→A",
                ),
                (Family::Pix2pix, _) => (self.cfg.name.clone(), "pix2pix generator"),
                (Family::Dcgan, _) => (self.cfg.name.clone(), "DCGAN generator (noise → image)"),
            };
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
            card.inference.batch_stats = self.uses_batch_stats();
            card.provenance.source = format!("atelier train {}", self.cfg.family.name());
            card.provenance.steps = Some(self.step);
            card.provenance.hardware = Some(
                self.trained_on
                    .clone()
                    .unwrap_or_else(|| hardware(&self.device)),
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

struct StepOut {
    losses: Vec<(&'static str, f64)>,
    /// Per-discriminator mean D loss per term, for the "D wins" monitor.
    d_terms: Vec<f64>,
    d_real: f64,
    d_fake: f64,
}

fn scalar(t: &Tensor) -> TrainResult<f64> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

/// The mean of D's verdict: a probability for the vanilla loss, the raw output otherwise.
fn judged(loss: crate::GanLoss, pred: &Tensor) -> TrainResult<f64> {
    let p = match loss {
        crate::GanLoss::Vanilla => candle_nn::ops::sigmoid(pred)?,
        _ => pred.clone(),
    };
    scalar(&p.mean_all()?)
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

fn fixed_inputs(cfg: &TrainConfig, device: &Device, seeds: &mut Rng) -> TrainResult<Fixed> {
    let mut rng = seeds.fork();
    let plain = Augment {
        load_size: cfg.augment.crop_size,
        crop_size: cfg.augment.crop_size,
        flip: false,
        color_jitter: 0.0,
        center_square: false,
    };
    Ok(match cfg.family {
        Family::Dcgan => {
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
        Family::Pix2pix => {
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
        Family::Cyclegan => {
            let b_path = cfg
                .data_b
                .as_ref()
                .ok_or_else(|| TrainError::Config("CycleGAN needs --data-b".into()))?;
            let pick = |path: &Path| -> TrainResult<Tensor> {
                let mut ds = Dataset::open(path)?;
                let mut images = Vec::new();
                for i in 0..ds.len() {
                    if images.len() == PAIR_SAMPLES / 2 {
                        break;
                    }
                    if let Some(img) = ds.sample(i, &plain, &mut Rng::new(0)) {
                        images.push(img);
                    }
                }
                Ok(Dataset::collate(&images, device)?)
            };
            Fixed::Pairs {
                a: pick(&cfg.data_a)?,
                b: pick(b_path)?,
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
