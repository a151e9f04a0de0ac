//! Normalization layers and the statistics context that makes tiled inference seamless.
//!
//! Instance normalization (and batch normalization with batch statistics) computes its
//! statistics from the image it sees. Run on tiles, every tile would get its own mean and
//! variance and the tiles would not match. [`Ctx`] lets the caller record the statistics of
//! each normalization layer on one pass (e.g. a thumbnail, as in URST's thumbnail instance
//! normalization) and replay them on the tiles.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::fused::Activation;
use crate::Result;

/// Statistics of one normalization layer: per-channel mean and biased variance, shape (1, C, 1, 1).
#[derive(Debug, Clone)]
pub struct LayerStats {
    pub mean: Tensor,
    pub var: Tensor,
}

/// How data-dependent normalization layers get their statistics.
#[derive(Debug, Clone, Default)]
enum StatsMode {
    /// From the current input (the normal behaviour).
    #[default]
    Own,
    /// From the current input, and remember them in order.
    Record(Vec<LayerStats>),
    /// Use previously recorded statistics, in order.
    Replay(Vec<LayerStats>),
}

/// Forward-pass context: training flag, batch-norm statistics choice and the statistics mode.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// Training mode: dropout is active and batch norm uses batch statistics.
    pub train: bool,
    /// Use batch statistics in batch norm even when not training (what the reference's
    /// `test.py` does without `--eval`, e.g. for pix2pix).
    pub batch_stats: bool,
    /// The discriminators' parameters are constants in this pass: gradients flow through the
    /// network to its input but none is computed for its weights (PyTorch's
    /// `set_requires_grad(netD, False)` in the generator step, which saves the discriminator's
    /// weight gradients there).
    pub frozen: bool,
    mode: StatsMode,
    cursor: usize,
    /// Random generator for dropout masks in training; `None` uses candle's (unseeded) one.
    pub rng: Option<crate::Rng>,
    /// Batch-norm running-statistics updates gathered in training mode, applied by
    /// [`Ctx::apply_running_stats`] once the step's forward passes are done.
    running_updates: Vec<RunningUpdate>,
}

/// One batch-norm layer's pending running-statistics update.
#[derive(Debug, Clone)]
struct RunningUpdate {
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var_unbiased: Tensor,
}

/// PyTorch's default batch-norm momentum.
const BN_MOMENTUM: f64 = 0.1;

impl Ctx {
    /// For an op that runs `count` norm layers itself with statistics of its own input: true
    /// (and the layers counted) when this context uses the inputs' own statistics.
    pub(crate) fn fuse_norms(&mut self, count: usize) -> bool {
        if matches!(self.mode, StatsMode::Own) {
            self.cursor += count;
            true
        } else {
            false
        }
    }

    /// Inference context (eval mode, running statistics for batch norm).
    pub fn eval() -> Self {
        Self::default()
    }

    /// Training context.
    pub fn train() -> Self {
        Self {
            train: true,
            ..Self::default()
        }
    }

    /// Training context whose dropout masks come from `rng` (deterministic runs).
    pub fn train_with_rng(rng: crate::Rng) -> Self {
        Self {
            train: true,
            rng: Some(rng),
            ..Self::default()
        }
    }

    /// Applies the batch-norm running-average updates gathered by training-mode forward passes
    /// (`running = (1 - 0.1)·running + 0.1·batch`, unbiased variance, as PyTorch), in order.
    /// Running statistics that are not variables (a loaded, frozen model) are left alone.
    pub fn apply_running_stats(&mut self) -> Result<()> {
        for u in std::mem::take(&mut self.running_updates) {
            for (running, batch) in [
                (&u.running_mean, &u.mean),
                (&u.running_var, &u.var_unbiased),
            ] {
                if !running.is_variable() {
                    continue;
                }
                let next = running
                    .affine(1.0 - BN_MOMENTUM, 0.0)?
                    .add(&batch.affine(BN_MOMENTUM, 0.0)?)?;
                candle_core::Var::from_tensor(running)?.set(&next)?;
            }
        }
        Ok(())
    }

    /// Number of pending running-statistics updates.
    pub fn pending_running_updates(&self) -> usize {
        self.running_updates.len()
    }

    fn push_running_update(
        &mut self,
        running_mean: &Tensor,
        running_var: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        count: usize,
    ) -> Result<()> {
        if !self.train || !running_mean.is_variable() {
            return Ok(());
        }
        let c = running_mean.dim(0)?;
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        self.running_updates.push(RunningUpdate {
            running_mean: running_mean.clone(),
            running_var: running_var.clone(),
            mean: mean.detach().reshape(c)?,
            var_unbiased: var.detach().reshape(c)?.affine(unbias, 0.0)?,
        });
        Ok(())
    }

    /// Record the statistics of every data-dependent normalization layer.
    pub fn recording(mut self) -> Self {
        self.mode = StatsMode::Record(Vec::new());
        self.cursor = 0;
        self
    }

    /// Replay recorded statistics instead of computing them from the input.
    pub fn replaying(mut self, stats: Vec<LayerStats>) -> Self {
        self.mode = StatsMode::Replay(stats);
        self.cursor = 0;
        self
    }

    /// Resets the layer cursor before another forward pass with the same context.
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Takes the recorded statistics (after a recording pass).
    pub fn take_recorded(&mut self) -> Vec<LayerStats> {
        match std::mem::take(&mut self.mode) {
            StatsMode::Record(v) | StatsMode::Replay(v) => v,
            StatsMode::Own => Vec::new(),
        }
    }

    /// Whether this context records statistics.
    pub fn is_recording(&self) -> bool {
        matches!(self.mode, StatsMode::Record(_))
    }

    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    pub(crate) fn set_cursor(&mut self, c: usize) {
        self.cursor = c;
    }

    /// Advances the layer cursor; in replay mode, the statistics recorded for this layer
    /// (checked to have `c` channels).
    fn next_replayed(&mut self, c: usize) -> Result<Option<&LayerStats>> {
        let layer = self.cursor;
        self.cursor += 1;
        let StatsMode::Replay(stats) = &self.mode else {
            return Ok(None);
        };
        let s = stats.get(layer).ok_or_else(|| {
            crate::Error::Input(format!(
                "replayed statistics have {} layers, the network has more",
                stats.len()
            ))
        })?;
        if s.mean.dim(1)? != c || s.var.dim(1)? != c {
            return Err(crate::Error::Input(format!(
                "replayed statistics of layer {layer} have {} channels, expected {c}",
                s.mean.dim(1)?
            )));
        }
        Ok(Some(s))
    }

    /// Instance-norm statistics of the compiled path as plain values: `compute` gives the
    /// current input's; replay and record work as in [`Ctx::stats`].
    pub(crate) fn stats_values(
        &mut self,
        c: usize,
        compute: impl FnOnce() -> (Vec<f32>, Vec<f32>),
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if let Some(s) = self.next_replayed(c)? {
            let mean = s.mean.flatten_all()?.to_vec1::<f32>()?;
            let var = s.var.flatten_all()?.to_vec1::<f32>()?;
            return Ok((mean, var));
        }
        let (mean, var) = compute();
        if let StatsMode::Record(v) = &mut self.mode {
            let dev = candle_core::Device::Cpu;
            v.push(LayerStats {
                mean: Tensor::from_slice(&mean, (1, c, 1, 1), &dev)?,
                var: Tensor::from_slice(&var, (1, c, 1, 1), &dev)?,
            });
        }
        Ok((mean, var))
    }

    /// Statistics for a data-dependent normalization: per sample (instance norm) or over the
    /// batch (batch norm).
    fn stats(&mut self, x: &Tensor, per_sample: bool) -> Result<(Tensor, Tensor)> {
        if let Some(s) = self.next_replayed(x.dim(1)?)? {
            return Ok((s.mean.clone(), s.var.clone()));
        }
        let (mean, var) = if per_sample {
            let mean = x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
            let var = x
                .broadcast_sub(&mean)?
                .sqr()?
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(D::Minus2)?;
            (mean, var)
        } else {
            let mean = x
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(D::Minus2)?
                .mean_keepdim(0)?;
            let var = x
                .broadcast_sub(&mean)?
                .sqr()?
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(D::Minus2)?
                .mean_keepdim(0)?;
            (mean, var)
        };
        if let StatsMode::Record(v) = &mut self.mode {
            // Thumbnail statistics are shared by every tile: average over the batch.
            v.push(LayerStats {
                mean: mean.mean_keepdim(0)?,
                var: var.mean_keepdim(0)?,
            });
        }
        Ok((mean, var))
    }
}

/// Which normalization a network uses (the reference's `--norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// `InstanceNorm2d(affine=False, track_running_stats=False)`.
    Instance,
    /// `BatchNorm2d(affine=True, track_running_stats=True)`.
    Batch,
    /// No normalization.
    None,
}

impl NormKind {
    /// The reference uses conv biases only with instance norm.
    pub fn use_bias(self) -> bool {
        self == NormKind::Instance
    }

    /// Parses the reference's flag value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instance" => Some(Self::Instance),
            "batch" => Some(Self::Batch),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

impl std::fmt::Display for NormKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Instance => "instance",
            Self::Batch => "batch",
            Self::None => "none",
        })
    }
}

/// A 2-d (or, for batch norm, 1-d on `(N, F)` inputs) normalization layer.
#[derive(Debug, Clone)]
pub enum Norm {
    Instance {
        eps: f64,
    },
    Batch {
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
    },
    None,
}

impl Norm {
    /// Builds the layer; batch norm reads `weight`, `bias`, `running_mean`, `running_var`.
    pub fn new(kind: NormKind, channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_eps(kind, channels, 1e-5, vb)
    }

    /// Same as [`Norm::new`] with a chosen epsilon.
    pub fn with_eps(kind: NormKind, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        use candle_nn::Init;
        Ok(match kind {
            NormKind::Instance => Norm::Instance { eps },
            NormKind::None => Norm::None,
            NormKind::Batch => Norm::Batch {
                weight: vb.get_with_hints(
                    channels,
                    "weight",
                    Init::Randn {
                        mean: 1.0,
                        stdev: 0.02,
                    },
                )?,
                bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
                running_mean: vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?,
                running_var: vb.get_with_hints(channels, "running_var", Init::Const(1.0))?,
                eps,
            },
        })
    }

    /// `act(self(x))`; instance norm on its own statistics is one fused op for f32 on the
    /// CPU ([`crate::fused::instance_norm_act`]).
    /// The `eps` of an instance norm (no affine parameters); `None` for other norms.
    pub(crate) fn instance_eps(&self) -> Option<f64> {
        match self {
            Norm::Instance { eps } => Some(*eps),
            _ => None,
        }
    }

    pub fn forward_act(&self, x: &Tensor, ctx: &mut Ctx, act: Activation) -> Result<Tensor> {
        if let Norm::Instance { eps } = self {
            if matches!(ctx.mode, StatsMode::Own) && crate::fused::applies(x) {
                ctx.cursor += 1;
                return crate::fused::instance_norm_act(x, *eps, act);
            }
        }
        act.apply(&self.forward(x, ctx)?)
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match self {
            Norm::None => Ok(x.clone()),
            Norm::Instance { eps } => {
                let (mean, var) = ctx.stats(x, true)?;
                Ok(x.broadcast_sub(&mean)?
                    .broadcast_div(&(var + *eps)?.sqrt()?)?)
            }
            Norm::Batch {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
            } => {
                let rank = x.rank();
                if rank == 2 {
                    // BatchNorm1d on (N, F).
                    let (mean, var) = if ctx.train || ctx.batch_stats {
                        let mean = x.mean_keepdim(0)?;
                        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
                        ctx.push_running_update(running_mean, running_var, &mean, &var, x.dim(0)?)?;
                        (mean, var)
                    } else {
                        (running_mean.unsqueeze(0)?, running_var.unsqueeze(0)?)
                    };
                    let y = x
                        .broadcast_sub(&mean)?
                        .broadcast_div(&(var + *eps)?.sqrt()?)?;
                    return Ok(y
                        .broadcast_mul(&weight.unsqueeze(0)?)?
                        .broadcast_add(&bias.unsqueeze(0)?)?);
                }
                let c = x.dim(1)?;
                let (mean, var) = if ctx.train || ctx.batch_stats {
                    let (mean, var) = ctx.stats(x, false)?;
                    let (n, _, h, w) = x.dims4()?;
                    ctx.push_running_update(running_mean, running_var, &mean, &var, n * h * w)?;
                    (mean, var)
                } else {
                    (
                        running_mean.reshape((1, c, 1, 1))?,
                        running_var.reshape((1, c, 1, 1))?,
                    )
                };
                let y = x
                    .broadcast_sub(&mean)?
                    .broadcast_div(&(var + *eps)?.sqrt()?)?;
                Ok(y.broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
                    .broadcast_add(&bias.reshape((1, c, 1, 1))?)?)
            }
        }
    }
}
