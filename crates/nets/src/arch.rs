//! The network zoo as one enum: architecture descriptions (serialised in model cards) and the
//! built networks.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::dcgan::{
    BriefDConfig, BriefDiscriminator, BriefGConfig, BriefGenerator, Dcgan64Config,
    Dcgan64Discriminator, Dcgan64Generator,
};
use crate::discriminators::{NLayerConfig, NLayerDiscriminator, PixelConfig, PixelDiscriminator};
use crate::light::{LightConfig, LightGenerator};
use crate::norm::Ctx;
use crate::resnet::{ResnetConfig, ResnetGenerator};
use crate::unet::{UnetConfig, UnetGenerator};
use crate::{Error, Result};

/// An architecture with all its hyper-parameters; stored in the model card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Arch {
    /// `ResnetGenerator` (`resnet_6blocks`, `resnet_9blocks`).
    Resnet(ResnetConfig),
    /// `UnetGenerator` (`unet_128`, `unet_256`).
    Unet(UnetConfig),
    /// Atelier's light real-time generator.
    Light(LightConfig),
    /// PatchGAN `NLayerDiscriminator` (`basic` = 3 layers, `n_layers`).
    NLayer(NLayerConfig),
    /// `PixelDiscriminator`.
    Pixel(PixelConfig),
    /// The brief's DCGAN generator (28×28).
    BriefG(BriefGConfig),
    /// The brief's DCGAN discriminator.
    BriefD(BriefDConfig),
    /// pytorch/examples DCGAN generator (64×64).
    Dcgan64G(Dcgan64Config),
    /// pytorch/examples DCGAN discriminator (64×64).
    Dcgan64D(Dcgan64Config),
}

/// What a network maps from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Image → image generator (style transfer).
    Translator,
    /// Noise → image generator.
    NoiseGenerator,
    /// Discriminator.
    Discriminator,
}

impl Arch {
    /// A short human-readable name in the reference's vocabulary.
    pub fn name(&self) -> String {
        match self {
            Arch::Resnet(c) => c.name(),
            Arch::Unet(c) => format!("unet_{}", 1usize << c.num_downs),
            Arch::Light(c) => format!("light_{}blocks", c.n_blocks),
            Arch::NLayer(c) if c.n_layers == 3 => "basic".into(),
            Arch::NLayer(c) => format!("n_layers_{}", c.n_layers),
            Arch::Pixel(_) => "pixel".into(),
            Arch::BriefG(_) => "dcgan_brief_G".into(),
            Arch::BriefD(_) => "dcgan_brief_D".into(),
            Arch::Dcgan64G(_) => "dcgan64_G".into(),
            Arch::Dcgan64D(_) => "dcgan64_D".into(),
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Arch::Resnet(_) | Arch::Unet(_) | Arch::Light(_) => Role::Translator,
            Arch::BriefG(_) | Arch::Dcgan64G(_) => Role::NoiseGenerator,
            _ => Role::Discriminator,
        }
    }

    /// Input sides of a translator must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        match self {
            Arch::Resnet(_) | Arch::Light(_) => 4,
            Arch::Unet(c) => 1 << c.num_downs,
            _ => 1,
        }
    }

    /// Input channels (image channels, or `nz` for noise generators).
    pub fn input_channels(&self) -> usize {
        match self {
            Arch::Resnet(c) => c.input_nc,
            Arch::Unet(c) => c.input_nc,
            Arch::Light(c) => c.input_nc,
            Arch::NLayer(c) => c.input_nc,
            Arch::Pixel(c) => c.input_nc,
            Arch::BriefG(c) => c.nz,
            Arch::BriefD(c) => c.channels,
            Arch::Dcgan64G(c) => c.nz,
            Arch::Dcgan64D(c) => c.nc,
        }
    }

    /// Output channels of a generator.
    pub fn output_channels(&self) -> usize {
        match self {
            Arch::Resnet(c) => c.output_nc,
            Arch::Unet(c) => c.output_nc,
            Arch::Light(c) => c.output_nc,
            Arch::BriefG(c) => c.channels,
            Arch::Dcgan64G(c) => c.nc,
            _ => 1,
        }
    }

    /// Whether the network has data-dependent normalization (instance norm), so that tiled
    /// inference needs shared statistics.
    pub fn has_instance_norm(&self) -> bool {
        use crate::NormKind::Instance;
        match self {
            Arch::Resnet(c) => c.norm == Instance,
            Arch::Unet(c) => c.norm == Instance,
            Arch::Light(_) => true,
            Arch::NLayer(c) => c.norm == Instance,
            Arch::Pixel(c) => c.norm == Instance,
            _ => false,
        }
    }

    /// Whether a forward pass over a batch gives each sample what a pass over that sample alone
    /// would (no batch norm, no dropout), so that independent passes may share one batch.
    pub fn per_sample(&self) -> bool {
        use crate::NormKind::Batch;
        match self {
            Arch::Resnet(c) => c.norm != Batch && !c.use_dropout,
            Arch::Unet(c) => c.norm != Batch && !c.use_dropout,
            Arch::Light(_) => true,
            Arch::NLayer(c) => c.norm != Batch,
            Arch::Pixel(c) => c.norm != Batch,
            _ => false,
        }
    }

    /// The weights this architecture expects: name → shape, in a stable order. Nothing of
    /// the weights' size is allocated (every architecture number is bounded first, see
    /// [`Arch::check`]), so a hostile model card cannot exhaust memory here.
    pub fn expected_shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        self.check_numbers()?;
        let rec = ShapeRecorder::default();
        let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
        Network::new_unchecked(*self, vb)?;
        let shapes = rec
            .shapes
            .lock()
            .map_err(|_| Error::Arch("poisoned".into()))?
            .clone();
        Ok(shapes)
    }

    /// Refuses architectures no real model has, before anything is built: each number within
    /// its range (widths ≤ [`MAX_WIDTH`], blocks ≤ [`MAX_BLOCKS`], …) and at most
    /// [`MAX_PARAMETERS`] weights in all.
    pub fn check(&self) -> Result<()> {
        let n: u128 = self
            .expected_shapes()?
            .values()
            .map(|s| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        if n > MAX_PARAMETERS as u128 {
            return Err(Error::Arch(format!(
                "{}: {n} weights is over the limit of {MAX_PARAMETERS}",
                self.name()
            )));
        }
        Ok(())
    }

    /// The per-number ranges of [`Arch::check`].
    fn check_numbers(&self) -> Result<()> {
        let range = |what: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Arch(format!("{what} {v} is outside {lo}..={hi}")))
            }
        };
        let channels = |what: &str, v: usize| range(what, v, 1, MAX_CHANNELS);
        let width = |what: &str, v: usize| range(what, v, 1, MAX_WIDTH);
        match *self {
            Arch::Resnet(c) => {
                channels("input_nc", c.input_nc)?;
                channels("output_nc", c.output_nc)?;
                width("ngf", c.ngf)?;
                range("n_blocks", c.n_blocks, 0, MAX_BLOCKS)
            }
            Arch::Unet(c) => {
                channels("input_nc", c.input_nc)?;
                channels("output_nc", c.output_nc)?;
                width("ngf", c.ngf)?;
                range("num_downs", c.num_downs, 2, 10)
            }
            Arch::Light(c) => {
                channels("input_nc", c.input_nc)?;
                channels("output_nc", c.output_nc)?;
                width("ngf", c.ngf)?;
                range("n_blocks", c.n_blocks, 0, MAX_BLOCKS)
            }
            Arch::NLayer(c) => {
                channels("input_nc", c.input_nc)?;
                width("ndf", c.ndf)?;
                range("n_layers", c.n_layers, 0, 8)
            }
            Arch::Pixel(c) => {
                channels("input_nc", c.input_nc)?;
                width("ndf", c.ndf)
            }
            Arch::BriefG(c) => {
                range("nz", c.nz, 1, MAX_NZ)?;
                channels("channels", c.channels)?;
                width("width", c.width)
            }
            Arch::BriefD(c) => {
                channels("channels", c.channels)?;
                range("size", c.size, 4, 4096)?;
                width("width", c.width)
            }
            Arch::Dcgan64G(c) | Arch::Dcgan64D(c) => {
                range("nz", c.nz, 1, MAX_NZ)?;
                channels("nc", c.nc)?;
                width("width", c.width)
            }
        }
    }

    /// Multiply-accumulates of the convolutions in one forward pass at `h`×`w` (generators with
    /// a closed form: ResNet and light), `None` otherwise.
    pub fn macs(&self, h: usize, w: usize) -> Option<u64> {
        // Out-of-range numbers (a hostile card) would overflow the products below.
        self.check_numbers().ok()?;
        if h.max(w) > 1 << 20 {
            return None;
        }
        match self {
            Arch::Light(c) => Some(LightGenerator::macs(c, h, w)),
            Arch::Resnet(c) => {
                let (g, px) = (c.ngf as u64, (h * w) as u64);
                let (p2, p4) = (px / 4, px / 16);
                let mut m = 49 * c.input_nc as u64 * g * px; // stem
                m += 9 * g * 2 * g * p2 + 9 * 2 * g * 4 * g * p4; // downsampling
                m += c.n_blocks as u64 * 2 * 9 * (4 * g) * (4 * g) * p4; // residual blocks
                m += match c.upsampling {
                    // Transposed convs, per input pixel.
                    crate::resnet::Upsampling::Transposed => {
                        9 * 4 * g * 2 * g * p4 + 9 * 2 * g * g * p2
                    }
                    // Resize-convs, per output pixel.
                    crate::resnet::Upsampling::Resize => {
                        9 * 4 * g * 2 * g * p2 + 9 * 2 * g * g * px
                    }
                };
                m += 49 * g * c.output_nc as u64 * px; // head
                Some(m)
            }
            _ => None,
        }
    }

    /// Parameter count.
    pub fn parameter_count(&self) -> Result<usize> {
        Ok(self
            .expected_shapes()?
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum())
    }
}

/// Widest layer base a model may declare (`ngf`, `ndf`, `width`): the largest published
/// CycleGAN/pix2pix networks use 64.
pub const MAX_WIDTH: usize = 1024;
/// Most residual blocks (the published ones use 6 or 9).
pub const MAX_BLOCKS: usize = 64;
/// Most image channels in or out.
pub const MAX_CHANNELS: usize = 16;
/// Largest noise vector.
pub const MAX_NZ: usize = 4096;
/// Most weights a model may have (1 GB as f32; ResNet-9 ngf 64 has 11.4 M).
pub const MAX_PARAMETERS: u64 = 256 << 20;

/// A [`VarBuilder`] backend that records the shapes asked for and hands out zero-stride views
/// of one scalar: building a network through it allocates nothing of its weights' size.
#[derive(Clone, Default)]
struct ShapeRecorder {
    shapes: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.shapes
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}`: shapes only")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A built network of any architecture.
#[derive(Debug, Clone)]
pub enum Network {
    Resnet(ResnetGenerator),
    Unet(UnetGenerator),
    Light(LightGenerator),
    NLayer(NLayerDiscriminator),
    Pixel(PixelDiscriminator),
    BriefG(BriefGenerator),
    BriefD(BriefDiscriminator),
    Dcgan64G(Dcgan64Generator),
    Dcgan64D(Dcgan64Discriminator),
}

impl Network {
    /// Builds the network, reading (or, with a `VarMap`, creating) its weights through `vb`,
    /// after [`Arch::check`].
    pub fn new(arch: Arch, vb: VarBuilder) -> Result<Self> {
        arch.check()?;
        Self::new_unchecked(arch, vb)
    }

    fn new_unchecked(arch: Arch, vb: VarBuilder) -> Result<Self> {
        Ok(match arch {
            Arch::Resnet(c) => Network::Resnet(ResnetGenerator::new(c, vb)?),
            Arch::Unet(c) => Network::Unet(UnetGenerator::new(c, vb)?),
            Arch::Light(c) => Network::Light(LightGenerator::new(c, vb)?),
            Arch::NLayer(c) => Network::NLayer(NLayerDiscriminator::new(c, vb)?),
            Arch::Pixel(c) => Network::Pixel(PixelDiscriminator::new(c, vb)?),
            Arch::BriefG(c) => Network::BriefG(BriefGenerator::new(c, vb)?),
            Arch::BriefD(c) => Network::BriefD(BriefDiscriminator::new(c, vb)?),
            Arch::Dcgan64G(c) => Network::Dcgan64G(Dcgan64Generator::new(c, vb)?),
            Arch::Dcgan64D(c) => Network::Dcgan64D(Dcgan64Discriminator::new(c, vb)?),
        })
    }

    /// Builds the network from named tensors, checking every key and shape first so that a
    /// wrong file fails with a message naming the weight.
    pub fn from_tensors(
        arch: Arch,
        tensors: &std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        arch.check()?;
        let expected = arch.expected_shapes()?;
        let arch_name = arch.name();
        for (key, shape) in &expected {
            match tensors.get(key) {
                None => {
                    return Err(Error::MissingKey {
                        key: key.clone(),
                        arch: arch_name,
                    })
                }
                Some(t) if t.dims() != shape.as_slice() => {
                    return Err(Error::ShapeMismatch {
                        key: key.clone(),
                        expected: shape.clone(),
                        found: t.dims().to_vec(),
                        arch: arch_name,
                    })
                }
                Some(_) => {}
            }
        }
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        if let Some(first) = extra.iter().min() {
            return Err(Error::UnexpectedKeys {
                count: extra.len(),
                first: (*first).clone(),
                arch: arch_name,
            });
        }
        let mut converted = std::collections::HashMap::new();
        for (k, t) in tensors {
            converted.insert(k.clone(), t.to_dtype(DType::F32)?.to_device(device)?);
        }
        let vb = VarBuilder::from_tensors(converted, DType::F32, device);
        Network::new(arch, vb)
    }

    /// Like [`Network::forward`], but discriminators that end in a sigmoid (DCGAN 64) return
    /// the logits before it, for numerically stable losses.
    pub fn forward_logits(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match self {
            Network::Dcgan64D(n) => n.forward_logits(x, ctx),
            other => other.forward(x, ctx),
        }
    }

    /// Intermediate outputs at `layers` (CUT's `encode_only`; see [`ResnetGenerator::encode`]).
    /// Only the ResNet generator has them.
    pub fn encode(&self, x: &Tensor, layers: &[usize], ctx: &mut Ctx) -> Result<Vec<Tensor>> {
        match self {
            Network::Resnet(n) => n.encode(x, layers, ctx),
            _ => Err(Error::Arch(
                "intermediate features (CUT's PatchNCE) need a resnet_<N>blocks generator".into(),
            )),
        }
    }

    /// Runs the network. Translators and discriminators take `(N, C, H, W)` images in [-1, 1];
    /// noise generators take `(N, nz)`.
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match self {
            Network::Resnet(n) => n.forward(x, ctx),
            Network::Unet(n) => n.forward(x, ctx),
            Network::Light(n) => n.forward(x, ctx),
            Network::NLayer(n) => n.forward(x, ctx),
            Network::Pixel(n) => n.forward(x, ctx),
            Network::BriefG(n) => n.forward(x, ctx),
            Network::BriefD(n) => n.forward(x, ctx),
            Network::Dcgan64G(n) => n.forward(x, ctx),
            Network::Dcgan64D(n) => n.forward(x, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 49.552 GMAC is what PyTorch forward hooks count for the reference resnet_9blocks
    /// (ngf 64, 256²); 9.072 for resnet_6blocks ngf 32 (issue 5's benchmark network), 10.884
    /// for resnet_6blocks_resize ngf 32.
    #[test]
    fn resnet_macs_match_the_reference_count() {
        let r9 = Arch::Resnet(ResnetConfig::default());
        let g = r9.macs(256, 256).unwrap() as f64 / 1e9;
        assert!((g - 49.552).abs() < 1e-3, "{g}");
        let r6 = Arch::Resnet(ResnetConfig {
            ngf: 32,
            n_blocks: 6,
            ..ResnetConfig::default()
        });
        let g = r6.macs(256, 256).unwrap() as f64 / 1e9;
        assert!((g - 9.072).abs() < 1e-3, "{g}");
        // Resize-convolution: the same count of the refnets.py variant (upsampling="resize").
        let r6 = Arch::Resnet(ResnetConfig {
            ngf: 32,
            n_blocks: 6,
            upsampling: crate::resnet::Upsampling::Resize,
            ..ResnetConfig::default()
        });
        let g = r6.macs(256, 256).unwrap() as f64 / 1e9;
        assert!((g - 10.884).abs() < 1e-3, "{g}");
        assert_eq!(r6.name(), "resnet_6blocks_resize");
    }
}
