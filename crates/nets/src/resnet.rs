//! `ResnetGenerator` of pytorch-CycleGAN-and-pix2pix (`--netG resnet_6blocks|resnet_9blocks`).
//!
//! Layout of `self.model` (an `nn.Sequential`), which fixes the checkpoint keys:
//! `0` ReflectionPad(3), `1` Conv 7×7, `2` norm, `3` ReLU, then two downsamplings
//! (`4`/`7` Conv 3×3 s2, `5`/`8` norm), `10..10+n` ResnetBlocks (`conv_block.1` conv, `.2` norm,
//! [`.4` dropout], `.5|.6` conv, `.6|.7` norm), two ConvTranspose upsamplings, ReflectionPad(3),
//! Conv 7×7 (always with bias) and Tanh.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::fused::Activation;
use crate::layers::{dropout, reflect_pad, Conv2d, ConvCfg, ConvTranspose2d};
use crate::norm::{Ctx, Norm, NormKind};
use crate::Result;

/// Hyper-parameters of a [`ResnetGenerator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResnetConfig {
    pub input_nc: usize,
    pub output_nc: usize,
    pub ngf: usize,
    pub n_blocks: usize,
    pub norm: NormKind,
    pub use_dropout: bool,
}

impl Default for ResnetConfig {
    fn default() -> Self {
        Self {
            input_nc: 3,
            output_nc: 3,
            ngf: 64,
            n_blocks: 9,
            norm: NormKind::Instance,
            use_dropout: false,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock {
    pub(crate) conv1: Conv2d,
    pub(crate) norm1: Norm,
    pub(crate) conv2: Conv2d,
    pub(crate) norm2: Norm,
    use_dropout: bool,
}

impl ResnetBlock {
    fn new(dim: usize, cfg: &ResnetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv_block");
        let c = ConvCfg::k(3).bias(cfg.norm.use_bias());
        let second = if cfg.use_dropout { 6 } else { 5 };
        Ok(Self {
            conv1: Conv2d::new(dim, dim, c, vb.pp("1"))?,
            norm1: Norm::new(cfg.norm, dim, vb.pp("2"))?,
            conv2: Conv2d::new(dim, dim, c, vb.pp(second))?,
            norm2: Norm::new(cfg.norm, dim, vb.pp(second + 1))?,
            use_dropout: cfg.use_dropout,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.conv1.forward(&reflect_pad(x, 1)?)?;
        let h = self.norm1.forward_act(&h, ctx, Activation::Relu)?;
        let h = dropout(&h, 0.5, self.use_dropout && ctx.train, ctx)?;
        let h = self.conv2.forward(&reflect_pad(&h, 1)?)?;
        let h = self.norm2.forward_act(&h, ctx, Activation::None)?;
        Ok((x + h)?)
    }
}

/// The ResNet-based generator (Johnson et al.) used by CycleGAN.
#[derive(Debug, Clone)]
pub struct ResnetGenerator {
    cfg: ResnetConfig,
    pub(crate) stem: Conv2d,
    pub(crate) stem_norm: Norm,
    pub(crate) down: Vec<(Conv2d, Norm)>,
    pub(crate) blocks: Vec<ResnetBlock>,
    pub(crate) up: Vec<(ConvTranspose2d, Norm)>,
    pub(crate) head: Conv2d,
}

impl ResnetGenerator {
    pub fn new(cfg: ResnetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("model");
        let ngf = cfg.ngf;
        let bias = cfg.norm.use_bias();
        let stem = Conv2d::new(cfg.input_nc, ngf, ConvCfg::k(7).bias(bias), vb.pp("1"))?;
        let stem_norm = Norm::new(cfg.norm, ngf, vb.pp("2"))?;
        let mut down = Vec::new();
        let mut idx = 4;
        for i in 0..2 {
            let mult = 1 << i;
            let conv = Conv2d::new(
                ngf * mult,
                ngf * mult * 2,
                ConvCfg::k(3).stride(2).pad(1).bias(bias),
                vb.pp(idx),
            )?;
            let norm = Norm::new(cfg.norm, ngf * mult * 2, vb.pp(idx + 1))?;
            down.push((conv, norm));
            idx += 3;
        }
        let mut blocks = Vec::new();
        for _ in 0..cfg.n_blocks {
            blocks.push(ResnetBlock::new(ngf * 4, &cfg, vb.pp(idx))?);
            idx += 1;
        }
        let mut up = Vec::new();
        for i in 0..2 {
            let mult = 4 >> i;
            let conv = ConvTranspose2d::new(
                ngf * mult,
                ngf * mult / 2,
                ConvCfg::k(3).stride(2).pad(1).bias(bias),
                1,
                vb.pp(idx),
            )?;
            let norm = Norm::new(cfg.norm, ngf * mult / 2, vb.pp(idx + 1))?;
            up.push((conv, norm));
            idx += 3;
        }
        let head = Conv2d::new(ngf, cfg.output_nc, ConvCfg::k(7), vb.pp(idx + 1))?;
        Ok(Self {
            cfg,
            stem,
            stem_norm,
            down,
            blocks,
            up,
            head,
        })
    }

    pub fn config(&self) -> &ResnetConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.input_nc, "ResnetGenerator")?;
        let h = self.stem.forward(&reflect_pad(x, 3)?)?;
        let mut h = self.stem_norm.forward_act(&h, ctx, Activation::Relu)?;
        for (conv, norm) in &self.down {
            h = norm.forward_act(&conv.forward(&h)?, ctx, Activation::Relu)?;
        }
        for b in &self.blocks {
            h = b.forward(&h, ctx)?;
        }
        for (conv, norm) in &self.up {
            h = norm.forward_act(&conv.forward(&h)?, ctx, Activation::Relu)?;
        }
        Ok(self.head.forward(&reflect_pad(&h, 3)?)?.tanh()?)
    }
}
