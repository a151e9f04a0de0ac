//! Discriminators of pytorch-CycleGAN-and-pix2pix: `NLayerDiscriminator` (PatchGAN,
//! `--netD basic|n_layers`) and `PixelDiscriminator` (`--netD pixel`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::fused::Activation;
use crate::layers::{leaky_relu, Conv2d, ConvCfg};
use crate::norm::{Ctx, Norm, NormKind};
use crate::Result;

/// Hyper-parameters of an [`NLayerDiscriminator`]; `n_layers = 3` is the 70×70 PatchGAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NLayerConfig {
    pub input_nc: usize,
    pub ndf: usize,
    pub n_layers: usize,
    pub norm: NormKind,
}

impl Default for NLayerConfig {
    fn default() -> Self {
        Self {
            input_nc: 3,
            ndf: 64,
            n_layers: 3,
            norm: NormKind::Instance,
        }
    }
}

/// PatchGAN discriminator: `model.0` conv, then `(conv, norm)` pairs at 2, 5, 8, ... and a final
/// 1-channel conv. Output is a map of logits (no sigmoid).
#[derive(Debug, Clone)]
pub struct NLayerDiscriminator {
    cfg: NLayerConfig,
    pub(crate) first: Conv2d,
    pub(crate) mids: Vec<(Conv2d, Norm)>,
    pub(crate) last: Conv2d,
}

impl NLayerDiscriminator {
    pub fn new(cfg: NLayerConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.n_layers == 0 {
            return Err(crate::Error::Arch("n_layers must be at least 1".into()));
        }
        let vb = vb.pp("model");
        let ndf = cfg.ndf;
        let bias = cfg.norm.use_bias();
        let k4 = ConvCfg::k(4).pad(1);
        let first = Conv2d::new(cfg.input_nc, ndf, k4.stride(2), vb.pp("0"))?;
        let mut mids = Vec::new();
        let mut idx = 2;
        let mut mult = 1;
        for n in 1..=cfg.n_layers {
            let prev = mult;
            mult = (1usize << n.min(3)).min(8);
            let stride = if n == cfg.n_layers { 1 } else { 2 };
            let conv = Conv2d::new(
                ndf * prev,
                ndf * mult,
                k4.stride(stride).bias(bias),
                vb.pp(idx),
            )?;
            let norm = Norm::new(cfg.norm, ndf * mult, vb.pp(idx + 1))?;
            mids.push((conv, norm));
            idx += 3;
        }
        let last = Conv2d::new(ndf * mult, 1, k4, vb.pp(idx))?;
        Ok(Self {
            cfg,
            first,
            mids,
            last,
        })
    }

    pub fn config(&self) -> &NLayerConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.input_nc, "NLayerDiscriminator")?;
        if let Some(y) = self.forward_fused(x, ctx)? {
            return Ok(y);
        }
        self.forward_composed(x, ctx)
    }

    /// [`NLayerDiscriminator::forward`] layer by layer (where the one-op discriminator does
    /// not apply, and its reference in the tests).
    pub(crate) fn forward_composed(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let f = ctx.frozen;
        let mut h = leaky_relu(&self.first.forward_in(x, f)?, 0.2)?;
        for (conv, norm) in &self.mids {
            h = norm.forward_act(&conv.forward_in(&h, f)?, ctx, Activation::Leaky(0.2))?;
        }
        self.last.forward_in(&h, f)
    }
}

/// Hyper-parameters of a [`PixelDiscriminator`] (1×1 PatchGAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelConfig {
    pub input_nc: usize,
    pub ndf: usize,
    pub norm: NormKind,
}

/// 1×1 PatchGAN: `net.0` conv, `net.2` conv, `net.3` norm, `net.5` conv.
#[derive(Debug, Clone)]
pub struct PixelDiscriminator {
    cfg: PixelConfig,
    c0: Conv2d,
    c2: Conv2d,
    n3: Norm,
    c5: Conv2d,
}

impl PixelDiscriminator {
    pub fn new(cfg: PixelConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("net");
        let ndf = cfg.ndf;
        let bias = cfg.norm.use_bias();
        Ok(Self {
            cfg,
            c0: Conv2d::new(cfg.input_nc, ndf, ConvCfg::k(1), vb.pp("0"))?,
            c2: Conv2d::new(ndf, ndf * 2, ConvCfg::k(1).bias(bias), vb.pp("2"))?,
            n3: Norm::new(cfg.norm, ndf * 2, vb.pp("3"))?,
            c5: Conv2d::new(ndf * 2, 1, ConvCfg::k(1).bias(bias), vb.pp("5"))?,
        })
    }

    pub fn config(&self) -> &PixelConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.input_nc, "PixelDiscriminator")?;
        let f = ctx.frozen;
        let h = leaky_relu(&self.c0.forward_in(x, f)?, 0.2)?;
        let h = self
            .n3
            .forward_act(&self.c2.forward_in(&h, f)?, ctx, Activation::Leaky(0.2))?;
        self.c5.forward_in(&h, f)
    }
}
