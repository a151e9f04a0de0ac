//! The model families as recipes: each is one module behind [`Recipe`] (its networks, its
//! data, one optimisation step, its sample grid and the names of what it exports), while
//! [`crate::Trainer`] keeps what they share: the loop, checkpoints and exact resume, metrics,
//! samples, validation and export.

use std::collections::HashMap;

use atelier_nets::arch::Arch;
use atelier_nets::{Ctx, Network, Rng, SeededVarMap};
use candle_core::{DType, Device, Tensor, Var};

use crate::config::{Family, TrainConfig};
use crate::{Adam, ImagePool, PairBatch, TrainError, TrainResult};

mod cut;
mod cyclegan;
mod dcgan;
pub(crate) mod distill;
mod pix2pix;

/// The recipe of a family.
pub(crate) fn for_family(family: Family) -> Box<dyn Recipe + Send> {
    match family {
        Family::Dcgan => Box::new(dcgan::Dcgan),
        Family::Pix2pix => Box::new(pix2pix::Pix2pix),
        Family::Cyclegan => Box::new(cyclegan::Cyclegan),
        Family::Cut | Family::Fastcut => Box::new(cut::Cut::default()),
        Family::Distill => Box::new(distill::Distill::default()),
    }
}

/// What a family trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataKind {
    /// One folder of images (DCGAN).
    Single,
    /// Aligned or matched pairs (pix2pix).
    Paired,
    /// Two unpaired domains (CycleGAN, CUT).
    Unpaired,
    /// One folder of photos to translate (distillation: the targets come from a teacher).
    Photos,
}

/// One batch of the data.
pub(crate) enum Batch {
    Single(Tensor),
    Pair(PairBatch),
}

/// What one step reports.
pub(crate) struct StepOut {
    pub losses: Vec<(&'static str, f64)>,
    /// Per-discriminator mean D loss per term, for the "D wins" monitor.
    pub d_terms: Vec<f64>,
    pub d_real: f64,
    pub d_fake: f64,
}

/// A family's training procedure.
pub(crate) trait Recipe {
    fn data(&self) -> DataKind;

    /// Loads what the recipe keeps in the run directory (the distillation teacher).
    fn load(&mut self, _run: &crate::RunDir, _device: &Device) -> TrainResult<()> {
        Ok(())
    }

    /// Builds the generators and discriminators (in checkpoint order), drawing their seeds
    /// from `seeds` in a fixed order, and any auxiliary networks of the recipe.
    fn networks(
        &mut self,
        cfg: &TrainConfig,
        seeds: &mut Rng,
        device: &Device,
    ) -> TrainResult<(Vec<Net>, Vec<Net>)>;

    /// Further variables trained with the generators (CUT's MLP heads), by name; they are
    /// checkpointed as `net.<name>.*` and updated by the generators' optimiser.
    fn extra_vars(&self) -> Vec<(&'static str, &SeededVarMap)> {
        Vec::new()
    }

    /// Image pools (CycleGAN: one per discriminator).
    fn pools(&self, _cfg: &TrainConfig) -> Vec<ImagePool> {
        Vec::new()
    }

    /// One optimisation step: D and G (and the recipe's own networks) updated once.
    fn step(&mut self, st: &mut State, cfg: &TrainConfig, batch: Batch) -> TrainResult<StepOut>;

    /// The sample grid's rows (each `(n, 3, H, W)`) for the fixed images `a` and `b`.
    fn sample_rows(
        &self,
        st: &State,
        cfg: &TrainConfig,
        a: &Tensor,
        b: &Tensor,
        ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>>;

    /// The exported model's name and what it is, for generator `index`.
    fn export_label(&self, cfg: &TrainConfig, index: usize) -> (String, &'static str);

    /// Translations scored on held-out images: `(label, generator, source domain)`; the
    /// target domain is the other one.
    fn directions(&self) -> &'static [(&'static str, usize, usize)] {
        &[]
    }
}

/// The networks, optimisers, pools and random generator of a run: what a step changes.
pub(crate) struct State {
    pub g: Vec<Net>,
    pub d: Vec<Net>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub pools: Vec<ImagePool>,
    pub rng: Rng,
    pub device: Device,
}

impl State {
    /// A training context with its own stream of the run's randomness (dropout masks).
    pub fn ctx(&mut self) -> Ctx {
        Ctx::train_with_rng(self.rng.fork())
    }

    pub fn noise(&mut self, n: usize, nz: usize) -> TrainResult<Tensor> {
        let v: Vec<f32> = (0..n * nz).map(|_| self.rng.normal() as f32).collect();
        Ok(Tensor::from_vec(v, (n, nz), &self.device)?)
    }
}

/// One network being trained and its variables.
pub(crate) struct Net {
    pub name: &'static str,
    pub arch: Arch,
    pub vars: SeededVarMap,
    pub net: Network,
}

impl Net {
    pub fn new(name: &'static str, arch: Arch, seed: u64, device: &Device) -> TrainResult<Net> {
        let vars = SeededVarMap::new(seed);
        let net = Network::new(arch, vars.builder(device))?;
        Ok(Net {
            name,
            arch,
            vars,
            net,
        })
    }

    /// Trainable variables, prefixed with the network's name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        trainable(self.name, &self.vars)
    }

    /// Weights as named in a model file.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        sorted_vars(&self.vars)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> TrainResult<Tensor> {
        Ok(self.net.forward_logits(x, ctx)?)
    }
}

/// The variables of `vars` sorted by name.
pub(crate) fn sorted_vars(vars: &SeededVarMap) -> Vec<(String, Var)> {
    let data = vars.varmap().data().lock().expect("varmap lock");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Trainable variables (not batch-norm running statistics), prefixed with `name`.
pub(crate) fn trainable(name: &str, vars: &SeededVarMap) -> Vec<(String, Var)> {
    sorted_vars(vars)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(k, v)| (format!("{name}.{k}"), v))
        .collect()
}

/// Sets `vars` from a checkpoint's `net.<name>.*` tensors.
pub(crate) fn restore_vars(
    name: &str,
    vars: &SeededVarMap,
    tensors: &HashMap<String, Tensor>,
) -> TrainResult<()> {
    for (k, var) in sorted_vars(vars) {
        let key = format!("net.{name}.{k}");
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

/// Whether every value of `vars` is finite.
pub(crate) fn all_finite(vars: &SeededVarMap) -> TrainResult<bool> {
    for (_, v) in sorted_vars(vars) {
        let s = v.as_tensor().sum_all()?.to_scalar::<f32>()?;
        if !s.is_finite() {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn scalar(t: &Tensor) -> TrainResult<f64> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

/// The mean of D's verdict: a probability for the vanilla loss, the raw output otherwise.
pub(crate) fn judged(loss: crate::GanLoss, pred: &Tensor) -> TrainResult<f64> {
    let p = match loss {
        crate::GanLoss::Vanilla => candle_nn::ops::sigmoid(pred)?,
        _ => pred.clone(),
    };
    scalar(&p.mean_all()?)
}

/// One generator and one discriminator named `G` and `D` (DCGAN, pix2pix, CUT).
pub(crate) fn single_pair(
    cfg: &TrainConfig,
    seeds: &mut Rng,
    device: &Device,
) -> TrainResult<(Vec<Net>, Vec<Net>)> {
    Ok((
        vec![Net::new("G", cfg.generator, seeds.next_u64(), device)?],
        vec![Net::new("D", cfg.discriminator, seeds.next_u64(), device)?],
    ))
}
