//! Adversarial and reconstruction losses.
//!
//! `GanLoss` follows pytorch-CycleGAN-and-pix2pix's `GANLoss`: `vanilla` is binary
//! cross-entropy on logits (computed stably as `max(x,0) - x·t + log(1 + e^{-|x|})`), `lsgan`
//! the mean squared error to 1 (real) or 0 (fake), and `hinge` the hinge loss of SAGAN
//! (`relu(1 - x)` for real, `relu(1 + x)` for fake, `-x` for the generator).

use candle_core::{Result, Tensor};

/// Which adversarial loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GanLoss {
    Vanilla,
    Lsgan,
    Hinge,
}

impl GanLoss {
    /// Loss of the discriminator's output `pred` (logits) for real (`true`) or fake images.
    pub fn discriminator(self, pred: &Tensor, real: bool) -> Result<Tensor> {
        match self {
            GanLoss::Vanilla => bce_with_logits(pred, if real { 1.0 } else { 0.0 }),
            GanLoss::Lsgan => {
                let t = if real { 1.0 } else { 0.0 };
                pred.affine(1.0, -t)?.sqr()?.mean_all()
            }
            GanLoss::Hinge => {
                let m = if real {
                    pred.affine(-1.0, 1.0)?
                } else {
                    pred.affine(1.0, 1.0)?
                };
                m.relu()?.mean_all()
            }
        }
    }

    /// Loss of the generator given the discriminator's output on its images.
    pub fn generator(self, pred_fake: &Tensor) -> Result<Tensor> {
        match self {
            GanLoss::Hinge => pred_fake.mean_all()?.neg(),
            other => other.discriminator(pred_fake, true),
        }
    }
}

impl GanLoss {
    /// Parses `vanilla`, `lsgan` or `hinge`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vanilla" => Some(Self::Vanilla),
            "lsgan" => Some(Self::Lsgan),
            "hinge" => Some(Self::Hinge),
            _ => None,
        }
    }

    /// A D loss per term (real or fake) below this means D separates real from fake almost
    /// perfectly ("D wins"): vanilla BCE 0.01 ≈ D(x) > 0.99; LSGAN 0.001 ≈ |D − target| < 0.03.
    /// Hinge: 0 (never): a zero hinge loss is normal and G still gets gradient from −D(G(z)).
    pub fn d_wins_threshold(self) -> f64 {
        match self {
            GanLoss::Vanilla => 0.01,
            GanLoss::Lsgan => 0.001,
            GanLoss::Hinge => 0.0,
        }
    }
}

/// Mean binary cross-entropy of logits `x` against a constant target `t`, numerically stable.
pub fn bce_with_logits(x: &Tensor, t: f64) -> Result<Tensor> {
    let pos = x.relu()?;
    let log_term = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (pos - x.affine(t, 0.0)?)?.add(&log_term)?.mean_all()
}

/// Mean absolute error.
pub fn l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.sub(b)?.abs()?.mean_all()
}

/// Anisotropic total variation of a batch of images `(n, c, h, w)`: the mean absolute
/// difference of vertically neighbouring pixels plus that of horizontal neighbours. As a
/// small penalty on a generator's output (the TV regulariser of fast style transfer) it
/// discourages the high-frequency noise a generator can use to fool a patch discriminator.
pub fn total_variation(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dy = x.narrow(2, 1, h - 1)?.sub(&x.narrow(2, 0, h - 1)?)?;
    let dx = x.narrow(3, 1, w - 1)?.sub(&x.narrow(3, 0, w - 1)?)?;
    dy.abs()?.mean_all()?.add(&dx.abs()?.mean_all()?)
}
