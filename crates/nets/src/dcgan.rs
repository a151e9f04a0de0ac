//! DCGAN networks: the brief's configuration (a PyTorch statement of the Keras DCGAN of the
//! TensorFlow tutorial: z=100 → dense 7·7·256 → BN → LeakyReLU → 5×5 transposed convs to
//! 28×28; D = 5×5 stride-2 convs from 64 filters) and the common 64×64 DCGAN of
//! pytorch/examples (`main.N` keys).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{dropout, leaky_relu, Conv2d, ConvCfg, ConvTranspose2d, Linear};
use crate::norm::{Ctx, Norm, NormKind};
use crate::Result;

/// Keras' default LeakyReLU slope.
const KERAS_SLOPE: f64 = 0.3;
/// Keras' default BatchNormalization epsilon.
const KERAS_EPS: f64 = 1e-3;

/// The brief's generator: `fc`, `bn0`, `up1`, `bn1`, `up2`, `bn2`, `up3`; output 28×28.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BriefGConfig {
    pub nz: usize,
    pub channels: usize,
    /// Width `w`: the dense layer has 7·7·4w units, then 2w and w channels (w = 64 is the
    /// brief's 256/128/64).
    #[serde(default = "default_width")]
    pub width: usize,
}

fn default_width() -> usize {
    64
}

impl Default for BriefGConfig {
    fn default() -> Self {
        Self {
            nz: 100,
            channels: 3,
            width: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BriefGenerator {
    cfg: BriefGConfig,
    fc: Linear,
    bn0: Norm,
    up1: ConvTranspose2d,
    bn1: Norm,
    up2: ConvTranspose2d,
    bn2: Norm,
    up3: ConvTranspose2d,
}

impl BriefGenerator {
    pub fn new(cfg: BriefGConfig, vb: VarBuilder) -> Result<Self> {
        let k5 = ConvCfg::k(5).pad(2).bias(false);
        let w = cfg.width;
        Ok(Self {
            cfg,
            fc: Linear::new(cfg.nz, 7 * 7 * 4 * w, false, vb.pp("fc"))?,
            bn0: Norm::with_eps(NormKind::Batch, 7 * 7 * 4 * w, KERAS_EPS, vb.pp("bn0"))?,
            up1: ConvTranspose2d::new(4 * w, 2 * w, k5, 0, vb.pp("up1"))?,
            bn1: Norm::with_eps(NormKind::Batch, 2 * w, KERAS_EPS, vb.pp("bn1"))?,
            up2: ConvTranspose2d::new(2 * w, w, k5.stride(2), 1, vb.pp("up2"))?,
            bn2: Norm::with_eps(NormKind::Batch, w, KERAS_EPS, vb.pp("bn2"))?,
            up3: ConvTranspose2d::new(w, cfg.channels, k5.stride(2), 1, vb.pp("up3"))?,
        })
    }

    pub fn config(&self) -> &BriefGConfig {
        &self.cfg
    }

    /// `z`: `(N, nz)` (or `(N, nz, 1, 1)`); output `(N, channels, 28, 28)` in [-1, 1].
    pub fn forward(&self, z: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let n = z.dim(0)?;
        let z = z.reshape((n, self.cfg.nz))?;
        let h = leaky_relu(&self.bn0.forward(&self.fc.forward(&z)?, ctx)?, KERAS_SLOPE)?;
        let h = h.reshape((n, 4 * self.cfg.width, 7, 7))?;
        let h = leaky_relu(&self.bn1.forward(&self.up1.forward(&h)?, ctx)?, KERAS_SLOPE)?;
        let h = leaky_relu(&self.bn2.forward(&self.up2.forward(&h)?, ctx)?, KERAS_SLOPE)?;
        Ok(self.up3.forward(&h)?.tanh()?)
    }
}

/// The brief's discriminator on `size`×`size` images: `conv1` (64, 5×5, s2), `conv2` (128, 5×5,
/// s2), `fc` → one logit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BriefDConfig {
    pub channels: usize,
    pub size: usize,
    /// Filters of the first conv (the second has twice as many); the brief uses 64.
    #[serde(default = "default_width")]
    pub width: usize,
}

impl Default for BriefDConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            size: 32,
            width: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BriefDiscriminator {
    cfg: BriefDConfig,
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

impl BriefDiscriminator {
    pub fn new(cfg: BriefDConfig, vb: VarBuilder) -> Result<Self> {
        if !cfg.size.is_multiple_of(4) || cfg.size == 0 {
            return Err(crate::Error::Arch(format!(
                "brief discriminator size must be a positive multiple of 4, got {}",
                cfg.size
            )));
        }
        let k5 = ConvCfg::k(5).stride(2).pad(2);
        let q = cfg.size / 4;
        let w = cfg.width;
        Ok(Self {
            cfg,
            conv1: Conv2d::new(cfg.channels, w, k5, vb.pp("conv1"))?,
            conv2: Conv2d::new(w, 2 * w, k5, vb.pp("conv2"))?,
            fc: Linear::new(2 * w * q * q, 1, true, vb.pp("fc"))?,
        })
    }

    pub fn config(&self) -> &BriefDConfig {
        &self.cfg
    }

    /// Output: `(N, 1)` logits.
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.channels, "BriefDiscriminator")?;
        let (n, _, h, w) = x.dims4()?;
        if h != self.cfg.size || w != self.cfg.size {
            return Err(crate::Error::Input(format!(
                "brief discriminator expects {s}×{s} images, got {w}×{h}",
                s = self.cfg.size
            )));
        }
        let f = ctx.frozen;
        let h = leaky_relu(&self.conv1.forward_in(x, f)?, KERAS_SLOPE)?;
        let h = dropout(&h, 0.3, ctx.train, ctx)?;
        let h = leaky_relu(&self.conv2.forward_in(&h, f)?, KERAS_SLOPE)?;
        let h = dropout(&h, 0.3, ctx.train, ctx)?;
        self.fc.forward_in(&h.reshape((n, ()))?, f)
    }
}

/// pytorch/examples DCGAN at 64×64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dcgan64Config {
    pub nz: usize,
    /// `ngf` for the generator, `ndf` for the discriminator.
    pub width: usize,
    pub nc: usize,
}

impl Default for Dcgan64Config {
    fn default() -> Self {
        Self {
            nz: 100,
            width: 64,
            nc: 3,
        }
    }
}

/// `main.0` ConvT(nz→8w, 4, 1, 0), BN, ReLU, ConvT ×3 halving channels, ConvT(w→nc), Tanh.
#[derive(Debug, Clone)]
pub struct Dcgan64Generator {
    cfg: Dcgan64Config,
    layers: Vec<(ConvTranspose2d, Norm)>,
}

impl Dcgan64Generator {
    pub fn new(cfg: Dcgan64Config, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("main");
        let w = cfg.width;
        let chans = [cfg.nz, w * 8, w * 4, w * 2, w, cfg.nc];
        let mut layers = Vec::new();
        for i in 0..5 {
            let c = if i == 0 {
                ConvCfg::k(4).bias(false)
            } else {
                ConvCfg::k(4).stride(2).pad(1).bias(false)
            };
            let conv = ConvTranspose2d::new(chans[i], chans[i + 1], c, 0, vb.pp(i * 3))?;
            let norm = if i < 4 {
                Norm::new(NormKind::Batch, chans[i + 1], vb.pp(i * 3 + 1))?
            } else {
                Norm::None
            };
            layers.push((conv, norm));
        }
        Ok(Self { cfg, layers })
    }

    pub fn config(&self) -> &Dcgan64Config {
        &self.cfg
    }

    /// `z`: `(N, nz)` or `(N, nz, 1, 1)`; output `(N, nc, 64, 64)`.
    pub fn forward(&self, z: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut h = z.reshape((n, self.cfg.nz, 1, 1))?;
        let last = self.layers.len() - 1;
        for (i, (conv, norm)) in self.layers.iter().enumerate() {
            h = conv.forward(&h)?;
            h = if i < last {
                norm.forward(&h, ctx)?.relu()?
            } else {
                h.tanh()?
            };
        }
        Ok(h)
    }
}

/// `main.0` Conv(nc→w, 4, 2, 1), LeakyReLU, 3× (Conv, BN, LeakyReLU), Conv(8w→1, 4, 1, 0),
/// Sigmoid. Output: `(N,)` probabilities, as in the reference.
#[derive(Debug, Clone)]
pub struct Dcgan64Discriminator {
    cfg: Dcgan64Config,
    convs: Vec<(Conv2d, Norm)>,
    last: Conv2d,
}

impl Dcgan64Discriminator {
    pub fn new(cfg: Dcgan64Config, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("main");
        let w = cfg.width;
        let chans = [cfg.nc, w, w * 2, w * 4, w * 8];
        let k = ConvCfg::k(4).stride(2).pad(1).bias(false);
        let mut convs = Vec::new();
        let mut idx = 0;
        for i in 0..4 {
            let conv = Conv2d::new(chans[i], chans[i + 1], k, vb.pp(idx))?;
            let norm = if i == 0 {
                idx += 2;
                Norm::None
            } else {
                let n = Norm::new(NormKind::Batch, chans[i + 1], vb.pp(idx + 1))?;
                idx += 3;
                n
            };
            convs.push((conv, norm));
        }
        let last = Conv2d::new(w * 8, 1, ConvCfg::k(4).bias(false), vb.pp(idx))?;
        Ok(Self { cfg, convs, last })
    }

    pub fn config(&self) -> &Dcgan64Config {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.forward_logits(x, ctx)?;
        Ok(candle_nn::ops::sigmoid(&h)?)
    }

    /// The output before the final sigmoid, `(N,)`: what a numerically stable BCE loss takes.
    pub fn forward_logits(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.nc, "Dcgan64Discriminator")?;
        let mut h = x.clone();
        for (conv, norm) in &self.convs {
            h = leaky_relu(&norm.forward(&conv.forward_in(&h, ctx.frozen)?, ctx)?, 0.2)?;
        }
        let h = self.last.forward_in(&h, ctx.frozen)?;
        let n = h.dim(0)?;
        Ok(h.reshape(n)?)
    }
}
