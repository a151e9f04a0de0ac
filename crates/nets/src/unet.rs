//! `UnetGenerator` of pytorch-CycleGAN-and-pix2pix (`--netG unet_128|unet_256`).
//!
//! Built recursively from skip-connection blocks, each an `nn.Sequential` named `model`:
//! outermost `[downconv, submodule, uprelu, upconv, tanh]`, innermost
//! `[downrelu, downconv, uprelu, upconv, upnorm]`, others
//! `[downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm, (dropout)]`.
//! The reference's `LeakyReLU(0.2, inplace=True)` at the start of an inner block modifies the
//! block's input in place, so the skip connection carries `leaky_relu(x)`, not `x`; this
//! implementation reproduces that.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{dropout, leaky_relu, Conv2d, ConvCfg, ConvTranspose2d};
use crate::norm::{Ctx, Norm, NormKind};
use crate::Result;

/// Hyper-parameters of a [`UnetGenerator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnetConfig {
    pub input_nc: usize,
    pub output_nc: usize,
    pub ngf: usize,
    /// 7 for `unet_128`, 8 for `unet_256`; the input side must be a multiple of 2^num_downs.
    pub num_downs: usize,
    pub norm: NormKind,
    pub use_dropout: bool,
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            input_nc: 3,
            output_nc: 3,
            ngf: 64,
            num_downs: 8,
            norm: NormKind::Batch,
            use_dropout: true,
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Outermost,
    Innermost,
    Middle,
}

#[derive(Debug, Clone)]
struct Block {
    kind: Kind,
    downconv: Conv2d,
    downnorm: Norm,
    sub: Option<Box<Block>>,
    upconv: ConvTranspose2d,
    upnorm: Norm,
    use_dropout: bool,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        outer_nc: usize,
        inner_nc: usize,
        input_nc: Option<usize>,
        sub: Option<Block>,
        kind: Kind,
        norm: NormKind,
        use_dropout: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("model");
        let bias = norm.use_bias();
        let input_nc = input_nc.unwrap_or(outer_nc);
        let down = ConvCfg::k(4).stride(2).pad(1);
        let (downconv, downnorm, upconv, upnorm) = match kind {
            Kind::Outermost => (
                Conv2d::new(input_nc, inner_nc, down.bias(bias), vb.pp("0"))?,
                Norm::None,
                ConvTranspose2d::new(inner_nc * 2, outer_nc, down, 0, vb.pp("3"))?,
                Norm::None,
            ),
            Kind::Innermost => (
                Conv2d::new(input_nc, inner_nc, down.bias(bias), vb.pp("1"))?,
                Norm::None,
                ConvTranspose2d::new(inner_nc, outer_nc, down.bias(bias), 0, vb.pp("3"))?,
                Norm::new(norm, outer_nc, vb.pp("4"))?,
            ),
            Kind::Middle => (
                Conv2d::new(input_nc, inner_nc, down.bias(bias), vb.pp("1"))?,
                Norm::new(norm, inner_nc, vb.pp("2"))?,
                ConvTranspose2d::new(inner_nc * 2, outer_nc, down.bias(bias), 0, vb.pp("5"))?,
                Norm::new(norm, outer_nc, vb.pp("6"))?,
            ),
        };
        let sub = match (&kind, sub) {
            (Kind::Innermost, _) => None,
            (_, Some(s)) => Some(Box::new(s)),
            (_, None) => return Err(crate::Error::Arch("U-Net block without submodule".into())),
        };
        Ok(Self {
            kind,
            downconv,
            downnorm,
            sub,
            upconv,
            upnorm,
            use_dropout,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match self.kind {
            Kind::Outermost => {
                let h = self.downconv.forward(x)?;
                let h = self.sub_forward(&h, ctx)?.relu()?;
                Ok(self.upconv.forward(&h)?.tanh()?)
            }
            Kind::Innermost => {
                let x = leaky_relu(x, 0.2)?;
                let h = self.downconv.forward(&x)?.relu()?;
                let h = self.upnorm.forward(&self.upconv.forward(&h)?, ctx)?;
                Ok(Tensor::cat(&[&x, &h], 1)?)
            }
            Kind::Middle => {
                let x = leaky_relu(x, 0.2)?;
                let h = self.downnorm.forward(&self.downconv.forward(&x)?, ctx)?;
                let h = self.sub_forward(&h, ctx)?.relu()?;
                let h = self.upnorm.forward(&self.upconv.forward(&h)?, ctx)?;
                let h = dropout(&h, 0.5, self.use_dropout && ctx.train, ctx)?;
                Ok(Tensor::cat(&[&x, &h], 1)?)
            }
        }
    }

    fn sub_forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match &self.sub {
            Some(s) => s.forward(x, ctx),
            None => Ok(x.clone()),
        }
    }
}

/// The U-Net generator used by pix2pix.
#[derive(Debug, Clone)]
pub struct UnetGenerator {
    cfg: UnetConfig,
    root: Block,
}

impl UnetGenerator {
    pub fn new(cfg: UnetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_downs < 5 {
            return Err(crate::Error::Arch(format!(
                "U-Net needs num_downs >= 5, got {}",
                cfg.num_downs
            )));
        }
        let ngf = cfg.ngf;
        let n = cfg.norm;
        // Prefix of the block at nesting depth d: model(.model.1|.model.3)*.
        let path = |depth: usize| -> String {
            let mut p = String::from("model");
            for d in 0..depth {
                p.push_str(if d == 0 { ".model.1" } else { ".model.3" });
            }
            p
        };
        let depth_inner = cfg.num_downs - 1;
        let mut block = Block::new(
            ngf * 8,
            ngf * 8,
            None,
            None,
            Kind::Innermost,
            n,
            false,
            vb.pp(path(depth_inner)),
        )?;
        let mut depth = depth_inner;
        for _ in 0..cfg.num_downs - 5 {
            depth -= 1;
            block = Block::new(
                ngf * 8,
                ngf * 8,
                None,
                Some(block),
                Kind::Middle,
                n,
                cfg.use_dropout,
                vb.pp(path(depth)),
            )?;
        }
        for (outer, inner) in [(ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)] {
            depth -= 1;
            block = Block::new(
                outer,
                inner,
                None,
                Some(block),
                Kind::Middle,
                n,
                false,
                vb.pp(path(depth)),
            )?;
        }
        let root = Block::new(
            cfg.output_nc,
            ngf,
            Some(cfg.input_nc),
            Some(block),
            Kind::Outermost,
            n,
            false,
            vb.pp(path(0)),
        )?;
        Ok(Self { cfg, root })
    }

    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        crate::layers::check_input(x, self.cfg.input_nc, "UnetGenerator")?;
        let (_, _, h, w) = x.dims4()?;
        let m = 1usize << self.cfg.num_downs;
        if h % m != 0 || w % m != 0 {
            return Err(crate::Error::Input(format!(
                "U-Net with {} downsamplings needs sides that are multiples of {m}, got {w}×{h}",
                self.cfg.num_downs
            )));
        }
        self.root.forward(x, ctx)
    }
}
