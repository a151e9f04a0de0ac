//! CUT's PatchNCE loss (Park et al., "Contrastive Learning for Unpaired Image-to-Image
//! Translation", ECCV 2020), as the reference implementation
//! (taesungp/contrastive-unpaired-translation) computes it:
//!
//! * [`PatchSampler`] (`PatchSampleF`): for every feature layer, the same random
//!   `num_patches` locations are taken from the query (features of the translation) and the
//!   key (features of the input); each sampled feature vector goes through that layer's
//!   two-layer MLP (`Linear(C, nc)`, ReLU, `Linear(nc, nc)`) and is L2-normalised
//!   (`x / (‖x‖ + 1e-7)`);
//! * [`patch_nce_loss`] (`PatchNCELoss`): for each query patch, the logit of its own key
//!   against those of the other patches *of the same image* (the diagonal is masked with
//!   −10), over the temperature τ, in a cross-entropy whose target is the positive. The keys are
//!   constants (`feat_k.detach()`).
//!
//! The golden test (`tests/nce.rs`) compares loss and gradients with a PyTorch script of these
//! formulas (`tests/reference_nce.py`).

use candle_core::{Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use atelier_nets::layers::Linear;

use crate::{Rng, TrainResult};

/// The value the reference writes on the diagonal of the negatives' logits.
const DIAGONAL: f64 = -10.0;

/// The MLP heads of CUT's `PatchSampleF` (`netF`), one per feature layer.
#[derive(Debug, Clone)]
pub struct PatchSampler {
    heads: Vec<(Linear, Linear)>,
}

impl PatchSampler {
    /// Heads for feature layers of `channels` channels each, `nc` units wide (the reference's
    /// `--netF_nc 256`). Weights are drawn as the reference's `init_net(..., 'xavier', 0.02)`:
    /// normal with std `0.02·sqrt(2 / (fan_in + fan_out))`, biases zero. Keys are
    /// `mlp_<i>.0.weight` and `mlp_<i>.2.weight` as in the reference's state dict.
    pub fn new(channels: &[usize], nc: usize, vb: VarBuilder) -> TrainResult<Self> {
        let linear = |c_in: usize, c_out: usize, vb: VarBuilder| -> TrainResult<Linear> {
            let std = 0.02 * (2.0 / (c_in + c_out) as f64).sqrt();
            let weight = vb.get_with_hints(
                (c_out, c_in),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?;
            let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
            Ok(Linear {
                weight,
                bias: Some(bias),
            })
        };
        let heads = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let vb = vb.pp(format!("mlp_{i}"));
                Ok((linear(c, nc, vb.pp("0"))?, linear(nc, nc, vb.pp("2"))?))
            })
            .collect::<TrainResult<Vec<_>>>()?;
        Ok(Self { heads })
    }

    /// Heads from given layers (`(first, second)` per feature layer), e.g. to compare with a
    /// reference.
    pub fn from_heads(heads: Vec<(Linear, Linear)>) -> Self {
        Self { heads }
    }

    /// Feature layers handled.
    pub fn layers(&self) -> usize {
        self.heads.len()
    }

    /// Random patch locations for each feature `(N, C, H, W)`: the first `min(num_patches,
    /// H·W)` of a random permutation of the `H·W` positions (as `np.random.permutation`).
    pub fn sample_ids(
        feats: &[Tensor],
        num_patches: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> TrainResult<Vec<Tensor>> {
        feats
            .iter()
            .map(|f| {
                let (_, _, h, w) = f.dims4()?;
                let n = h * w;
                let mut perm: Vec<u32> = (0..n as u32).collect();
                // Fisher–Yates, only as far as needed.
                let take = num_patches.min(n);
                for i in 0..take {
                    let j = i + (rng.uniform() * (n - i) as f64) as usize;
                    perm.swap(i, j.min(n - 1));
                }
                perm.truncate(take);
                Ok(Tensor::from_vec(perm, take, device)?)
            })
            .collect()
    }

    /// The sampled, projected and normalised patches of each feature: `(N·P, nc)`, image-major.
    /// With `frozen` the heads' parameters are constants of this pass.
    pub fn forward(
        &self,
        feats: &[Tensor],
        ids: &[Tensor],
        frozen: bool,
    ) -> TrainResult<Vec<Tensor>> {
        if feats.len() != self.heads.len() || ids.len() != self.heads.len() {
            return Err(crate::TrainError::Config(format!(
                "PatchNCE: {} feature layers and {} id sets for {} heads",
                feats.len(),
                ids.len(),
                self.heads.len()
            )));
        }
        feats
            .iter()
            .zip(ids)
            .zip(&self.heads)
            .map(|((f, id), (l1, l2))| {
                let (n, c, h, w) = f.dims4()?;
                let x = f.permute((0, 2, 3, 1))?.reshape((n, h * w, c))?;
                let x = x.index_select(id, 1)?;
                let p = id.dim(0)?;
                let x = x.reshape((n * p, c))?;
                let x = l2.forward_in(&l1.forward_in(&x, frozen)?.relu()?, frozen)?;
                l2_normalize(&x)
            })
            .collect()
    }
}

/// `x / (‖x‖₂ + 1e-7)` over each row (the reference's `Normalize(2)`).
pub fn l2_normalize(x: &Tensor) -> TrainResult<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&(norm + 1e-7)?)?)
}

/// PatchNCE per query patch: `q`, `k` of shape `(N·P, D)` (image-major, `N` images of `P`
/// patches), `k` treated as constant. Returns the `(N·P,)` cross-entropy losses (the
/// reference's `reduction='none'`); CUT takes their mean.
pub fn patch_nce_loss(q: &Tensor, k: &Tensor, images: usize, tau: f64) -> TrainResult<Tensor> {
    let k = k.detach();
    let (np, d) = q.dims2()?;
    if k.dims2()? != (np, d) || images == 0 || !np.is_multiple_of(images) {
        return Err(crate::TrainError::Config(format!(
            "PatchNCE: query {:?} and key {:?} for {images} images",
            q.dims(),
            k.dims()
        )));
    }
    let p = np / images;
    let pos = (q * &k)?.sum_keepdim(1)?; // (N·P, 1)
    let q3 = q.reshape((images, p, d))?;
    let k3 = k.reshape((images, p, d))?;
    let neg = q3.matmul(&k3.transpose(1, 2)?.contiguous()?)?; // (N, P, P)
    let eye = Tensor::eye(p, q.dtype(), q.device())?.unsqueeze(0)?;
    let keep = eye.affine(-1.0, 1.0)?;
    let neg =
        (neg.broadcast_mul(&keep)? + eye.affine(DIAGONAL, 0.0)?.broadcast_as(neg.shape())?)?;
    let neg = neg.reshape((np, p))?;
    let logits = (Tensor::cat(&[&pos, &neg], 1)? / tau)?;
    // Cross-entropy with target 0: logsumexp(row) − row[0], stably.
    let max = logits.max_keepdim(1)?.detach();
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .add(&max)?;
    Ok((lse - logits.narrow(1, 0, 1)?)?.squeeze(1)?)
}

/// CUT's `calculate_NCE_loss` after the features: the mean PatchNCE of each layer, times
/// `lambda`, averaged over the layers.
pub fn nce_over_layers(
    q: &[Tensor],
    k: &[Tensor],
    images: usize,
    tau: f64,
    lambda: f64,
) -> TrainResult<Tensor> {
    let mut total: Option<Tensor> = None;
    for (q, k) in q.iter().zip(k) {
        let l = (patch_nce_loss(q, k, images, tau)?.mean_all()? * lambda)?;
        total = Some(match total {
            None => l,
            Some(t) => (t + l)?,
        });
    }
    let total = total.ok_or_else(|| crate::TrainError::Config("PatchNCE: no layers".into()))?;
    Ok((total / q.len() as f64)?)
}
