//! `ResnetGenerator` of pytorch-CycleGAN-and-pix2pix (`--netG resnet_6blocks|resnet_9blocks`).
//!
//! Layout of `self.model` (an `nn.Sequential`), which fixes the checkpoint keys:
//! `0` ReflectionPad(3), `1` Conv 7×7, `2` norm, `3` ReLU, then two downsamplings
//! (`4`/`7` Conv 3×3 s2, `5`/`8` norm), `10..10+n` ResnetBlocks (`conv_block.1` conv, `.2` norm,
//! [`.4` dropout], `.5|.6` conv, `.6|.7` norm), two ConvTranspose upsamplings, ReflectionPad(3),
//! Conv 7×7 (always with bias) and Tanh.
//!
//! [`Upsampling::Resize`] (Atelier's `resnet_<n>blocks_resize`) replaces each ConvTranspose
//! (`conv`, `norm`, `ReLU`: three modules) by `Upsample(×2, nearest)`, `ReflectionPad(1)`,
//! Conv 3×3, norm, ReLU (five modules), which moves the later indices: the head conv is
//! `model.{21+n}` instead of `model.{17+n}`. Resize-convolution cannot produce the checkerboard
//! of a stride-2 transposed convolution whose kernel size is not a multiple of its stride
//! (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::fused::Activation;
use crate::layers::{dropout, reflect_pad, Conv2d, ConvCfg, ConvTranspose2d};
use crate::norm::{Ctx, Norm, NormKind};
use crate::Result;

/// How the generator doubles its resolution (twice) before the RGB head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsampling {
    /// `ConvTranspose2d` 3×3, stride 2, output padding 1: the reference's layout.
    #[default]
    Transposed,
    /// Nearest-neighbour ×2, reflect padding 1, `Conv2d` 3×3: resize-convolution.
    Resize,
}

impl Upsampling {
    pub fn is_transposed(&self) -> bool {
        *self == Upsampling::Transposed
    }

    /// Checkpoint modules per upsampling layer.
    pub(crate) fn modules(&self) -> usize {
        match self {
            Upsampling::Transposed => 3,
            Upsampling::Resize => 5,
        }
    }
}

/// Hyper-parameters of a [`ResnetGenerator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResnetConfig {
    pub input_nc: usize,
    pub output_nc: usize,
    pub ngf: usize,
    pub n_blocks: usize,
    pub norm: NormKind,
    pub use_dropout: bool,
    /// Absent from cards written before it existed (and omitted for the reference's layout).
    #[serde(default, skip_serializing_if = "Upsampling::is_transposed")]
    pub upsampling: Upsampling,
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
            upsampling: Upsampling::Transposed,
        }
    }
}

impl ResnetConfig {
    /// The `--netG` name: `resnet_<n>blocks`, with `_resize` for resize-convolution.
    pub fn name(&self) -> String {
        match self.upsampling {
            Upsampling::Transposed => format!("resnet_{}blocks", self.n_blocks),
            Upsampling::Resize => format!("resnet_{}blocks_resize", self.n_blocks),
        }
    }

    /// Parses a `--netG` name of the form `resnet_<n>blocks[_resize]`; `None` if it has
    /// another form.
    pub fn parse_name(name: &str) -> Option<(usize, Upsampling)> {
        let rest = name.strip_prefix("resnet_")?;
        let (rest, up) = match rest.strip_suffix("_resize") {
            Some(r) => (r, Upsampling::Resize),
            None => (rest, Upsampling::Transposed),
        };
        Some((rest.strip_suffix("blocks")?.parse().ok()?, up))
    }
}

/// One ×2 upsampling convolution.
#[derive(Debug, Clone)]
pub(crate) enum UpConv {
    Transposed(ConvTranspose2d),
    /// Applied to the nearest-neighbour ×2 upsampled, reflect-padded input.
    Resize(Conv2d),
}

impl UpConv {
    pub(crate) fn weight(&self) -> &Tensor {
        match self {
            UpConv::Transposed(c) => &c.weight,
            UpConv::Resize(c) => &c.weight,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            UpConv::Transposed(c) => c.forward(x)?,
            UpConv::Resize(c) => {
                let (_, _, h, w) = x.dims4()?;
                c.forward(&reflect_pad(&x.upsample_nearest2d(2 * h, 2 * w)?, 1)?)?
            }
        })
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
        // One channels-last op for the whole block where it applies (see `crate::block`).
        if let (Some(eps), Some(eps2)) = (self.norm1.instance_eps(), self.norm2.instance_eps()) {
            let (w1, w2) = (&self.conv1.weight, &self.conv2.weight);
            if eps == eps2
                && !(self.use_dropout && ctx.train)
                && (self.conv1.stride, self.conv1.padding, self.conv1.groups) == (1, 0, 1)
                && (self.conv2.stride, self.conv2.padding, self.conv2.groups) == (1, 0, 1)
                && crate::block::applies(x, w1, w2)
                && ctx.fuse_norms(2)
            {
                return crate::block::resnet_block(x, w1, w2, eps);
            }
        }
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
    pub(crate) up: Vec<(UpConv, Norm)>,
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
            let (cin, cout) = (ngf * mult, ngf * mult / 2);
            let (conv, norm_idx) = match cfg.upsampling {
                Upsampling::Transposed => (
                    UpConv::Transposed(ConvTranspose2d::new(
                        cin,
                        cout,
                        ConvCfg::k(3).stride(2).pad(1).bias(bias),
                        1,
                        vb.pp(idx),
                    )?),
                    idx + 1,
                ),
                Upsampling::Resize => (
                    UpConv::Resize(Conv2d::new(
                        cin,
                        cout,
                        ConvCfg::k(3).bias(bias),
                        vb.pp(idx + 2),
                    )?),
                    idx + 3,
                ),
            };
            let norm = Norm::new(cfg.norm, cout, vb.pp(norm_idx))?;
            up.push((conv, norm));
            idx += cfg.upsampling.modules();
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
        if let Some(y) = self.forward_fused(x, ctx)? {
            return Ok(y);
        }
        self.forward_composed(x, ctx)
    }

    /// [`ResnetGenerator::forward`] layer by layer (where the one-op generator does not
    /// apply, and its reference in the tests).
    pub(crate) fn forward_composed(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
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

    /// The outputs of the modules of `self.model` at `layers` (indices of the reference's
    /// `nn.Sequential`, see the module docs; ascending, no repeats), computing no further than
    /// the last one: CUT's `netG(x, nce_layers, encode_only=True)`. With the reference's
    /// layout, `0` is the reflect-padded input, `4` the first downsampling convolution (before
    /// its norm), `8` the second downsampling's norm (before its ReLU), `10 + i` ResnetBlock
    /// `i`. Indices past the blocks reach into the upsampling modules.
    pub fn encode(&self, x: &Tensor, layers: &[usize], ctx: &mut Ctx) -> Result<Vec<Tensor>> {
        crate::layers::check_input(x, self.cfg.input_nc, "ResnetGenerator")?;
        let Some(&last) = layers.last() else {
            return Ok(Vec::new());
        };
        if layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(crate::Error::Arch(format!(
                "feature layers {layers:?}: expected ascending indices without repeats"
            )));
        }
        let n = self.cfg.n_blocks;
        let end = 10 + n + 2 * self.cfg.upsampling.modules();
        if last >= end {
            return Err(crate::Error::Arch(format!(
                "feature layer {last}: the encoder and upsampling of {} end at module {}",
                self.cfg.name(),
                end - 1
            )));
        }
        let mut feats = Vec::with_capacity(layers.len());
        let mut i = 0usize;
        // Records module `i`'s output; true once the last wanted module is done.
        let mut take = |i: usize, t: &Tensor| {
            if layers.contains(&i) {
                feats.push(t.clone());
            }
            i >= last
        };
        // norm at `i`, ReLU at `i + 1`: fused unless the norm's own output is wanted.
        let norm_relu = |norm: &Norm, h: &Tensor, i: usize, ctx: &mut Ctx| -> Result<_> {
            Ok(if layers.contains(&i) {
                let y = norm.forward_act(h, ctx, Activation::None)?;
                let r = y.relu()?;
                (Some(y), r)
            } else {
                (None, norm.forward_act(h, ctx, Activation::Relu)?)
            })
        };
        let mut h = reflect_pad(x, 3)?;
        macro_rules! out {
            ($t:expr) => {{
                let done = take(i, &$t);
                i += 1;
                if done {
                    return Ok(feats);
                }
            }};
        }
        out!(h);
        h = self.stem.forward(&h)?;
        out!(h);
        let mut stages: Vec<(&Norm, Option<&Conv2d>)> = vec![(&self.stem_norm, None)];
        for (conv, norm) in &self.down {
            stages.push((norm, Some(conv)));
        }
        for (norm, conv) in stages {
            if let Some(conv) = conv {
                h = conv.forward(&h)?;
                out!(h);
            }
            let (y, r) = norm_relu(norm, &h, i, ctx)?;
            out!(y.unwrap_or_else(|| r.clone()));
            h = r;
            out!(h);
        }
        for b in &self.blocks {
            h = b.forward(&h, ctx)?;
            out!(h);
        }
        for (conv, norm) in &self.up {
            match conv {
                UpConv::Transposed(c) => {
                    h = c.forward(&h)?;
                    out!(h);
                }
                UpConv::Resize(c) => {
                    let (_, _, hh, ww) = h.dims4()?;
                    h = h.upsample_nearest2d(2 * hh, 2 * ww)?;
                    out!(h);
                    h = reflect_pad(&h, 1)?;
                    out!(h);
                    h = c.forward(&h)?;
                    out!(h);
                }
            }
            let (y, r) = norm_relu(norm, &h, i, ctx)?;
            out!(y.unwrap_or_else(|| r.clone()));
            h = r;
            out!(h);
        }
        unreachable!("layer {last} was checked against the module count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netg_names_round_trip_and_reject_other_forms() {
        for (name, n, up) in [
            ("resnet_9blocks", 9, Upsampling::Transposed),
            ("resnet_6blocks_resize", 6, Upsampling::Resize),
            ("resnet_12blocks", 12, Upsampling::Transposed),
        ] {
            assert_eq!(ResnetConfig::parse_name(name), Some((n, up)), "{name}");
            let cfg = ResnetConfig {
                n_blocks: n,
                upsampling: up,
                ..ResnetConfig::default()
            };
            assert_eq!(cfg.name(), name);
        }
        for bad in [
            "resnet",
            "resnet_blocks",
            "resnet_6",
            "resnet_6blocks_bilinear",
            "unet_6blocks",
        ] {
            assert_eq!(ResnetConfig::parse_name(bad), None, "{bad}");
        }
    }

    /// Cards written before the field existed still load, and the reference's layout is not
    /// written out (its cards stay as they were).
    #[test]
    fn upsampling_defaults_to_transposed_in_cards() {
        let old = r#"{"input_nc":3,"output_nc":3,"ngf":8,"n_blocks":6,"norm":"instance","use_dropout":false}"#;
        let cfg: ResnetConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg.upsampling, Upsampling::Transposed);
        assert_eq!(serde_json::to_string(&cfg).unwrap(), old);
        let resize = ResnetConfig {
            upsampling: Upsampling::Resize,
            ..cfg
        };
        let json = serde_json::to_string(&resize).unwrap();
        assert!(json.contains(r#""upsampling":"resize""#), "{json}");
        assert_eq!(serde_json::from_str::<ResnetConfig>(&json).unwrap(), resize);
    }
}
