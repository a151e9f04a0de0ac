//! Basic layers with PyTorch's parameter names and semantics.

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::Result;

/// Weight initialisation of the reference (`init_weights(net, 'normal', 0.02)`).
pub(crate) const W_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// `nn.Conv2d` with zero padding, stride and groups; weight `(out, in/groups, k, k)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// Hyper-parameters of a convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvCfg {
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
}

impl ConvCfg {
    /// A k×k convolution with stride 1, no padding, one group, with bias.
    pub const fn k(k: usize) -> Self {
        Self {
            k,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: true,
        }
    }
    pub const fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub const fn pad(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    pub const fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub const fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, cfg: ConvCfg, vb: VarBuilder) -> Result<Self> {
        let weight =
            vb.get_with_hints((c_out, c_in / cfg.groups, cfg.k, cfg.k), "weight", W_INIT)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride: cfg.stride,
            padding: cfg.padding,
            groups: cfg.groups,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in(x, false)
    }

    /// [`Conv2d::forward`]; with `frozen` the parameters are constants of this pass (see
    /// [`crate::Ctx::frozen`]): gradients flow to `x` only.
    pub fn forward_in(&self, x: &Tensor, frozen: bool) -> Result<Tensor> {
        let (weight, bias) = params(&self.weight, self.bias.as_ref(), frozen);
        let y = match (self.explicit_padding(x)?, self.groups) {
            (Some(padded), 1) => crate::conv::conv2d(&padded, &weight, 0, self.stride)?,
            (None, 1) => crate::conv::conv2d(x, &weight, self.padding, self.stride)?,
            (Some(padded), g) if g == padded.dim(1)? && weight.dim(0)? == g => {
                crate::depthwise::depthwise_conv2d(&padded, &weight, 0, self.stride)?
            }
            (None, g) if g == x.dim(1)? && weight.dim(0)? == g => {
                crate::depthwise::depthwise_conv2d(x, &weight, self.padding, self.stride)?
            }
            (Some(padded), g) => padded.conv2d(&weight, 0, self.stride, 1, g)?,
            (None, g) => x.conv2d(&weight, self.padding, self.stride, 1, g)?,
        };
        add_bias(y, bias.as_ref())
    }

    /// A strided convolution whose padded input does not end exactly on a stride (e.g. 3×3,
    /// stride 2, padding 1 on an even size) leaves the last padded rows/columns unused. candle
    /// 0.11's conv2d backward then returns an input gradient one short along that axis and the
    /// backward pass fails with a shape mismatch. Padding explicitly, without the unused tail
    /// (and cutting unused input if the tail is longer than the padding), gives the same output
    /// and a backward pass that works (see the gradient checks in `crates/train/tests`).
    fn explicit_padding(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (s, p) = (self.stride, self.padding);
        if s == 1 {
            return Ok(None);
        }
        let k = self.weight.dim(2)?;
        let (_, _, h, w) = x.dims4()?;
        let rem = |n: usize| (n + 2 * p).checked_sub(k).map_or(0, |t| t % s);
        if rem(h) == 0 && rem(w) == 0 {
            return Ok(None);
        }
        let mut x = x.clone();
        for axis in [2, 3] {
            let n = x.dim(axis)?;
            let r = rem(n);
            let (cut, right) = if r <= p { (0, p - r) } else { (r - p, 0) };
            if cut > 0 {
                x = x.narrow(axis, 0, n - cut)?;
            }
            x = x.pad_with_zeros(axis, p, right)?;
        }
        Ok(Some(x))
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) if crate::fused::applies(&y) && b.dtype() == DType::F32 => {
            crate::fused::bias_add(&y, b)
        }
        Some(b) => {
            let c = b.dim(0)?;
            Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
        }
        None => Ok(y),
    }
}

/// `nn.ConvTranspose2d`; weight `(in, out, k, k)`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
}

impl ConvTranspose2d {
    pub fn new(
        c_in: usize,
        c_out: usize,
        cfg: ConvCfg,
        output_padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((c_in, c_out, cfg.k, cfg.k), "weight", W_INIT)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride: cfg.stride,
            padding: cfg.padding,
            output_padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::conv::conv_transpose2d(
            x,
            &self.weight,
            self.padding,
            self.output_padding,
            self.stride,
        )?;
        add_bias(y, self.bias.as_ref())
    }
}

/// `nn.Linear`; weight `(out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(c_in: usize, c_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((c_out, c_in), "weight", W_INIT)?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in(x, false)
    }

    /// [`Linear::forward`]; with `frozen` the parameters are constants of this pass.
    pub fn forward_in(&self, x: &Tensor, frozen: bool) -> Result<Tensor> {
        let (weight, bias) = params(&self.weight, self.bias.as_ref(), frozen);
        let y = x.matmul(&weight.t()?)?;
        match &bias {
            Some(b) => Ok(y.broadcast_add(&b.unsqueeze(0)?)?),
            None => Ok(y),
        }
    }
}

/// A layer's parameters for one pass: detached (constants, no gradient computed) when frozen.
fn params(weight: &Tensor, bias: Option<&Tensor>, frozen: bool) -> (Tensor, Option<Tensor>) {
    if frozen {
        (weight.detach(), bias.map(Tensor::detach))
    } else {
        (weight.clone(), bias.cloned())
    }
}

/// Reflection padding (`nn.ReflectionPad2d(p)`) of an `(N, C, H, W)` tensor.
pub fn reflect_pad(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    if p >= h || p >= w {
        return Err(crate::Error::Input(format!(
            "reflection padding {p} needs an input larger than {p}×{p}, got {w}×{h}"
        )));
    }
    if crate::fused::applies(x) {
        return crate::fused::reflect_pad(x, p);
    }
    let idx = |n: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..n + 2 * p)
            .map(|i| {
                let j = i as i64 - p as i64;
                let j = if j < 0 {
                    -j
                } else if j >= n as i64 {
                    2 * (n as i64 - 1) - j
                } else {
                    j
                };
                j as u32
            })
            .collect();
        Ok(Tensor::from_vec(v, n + 2 * p, x.device())?)
    };
    let x = x.index_select(&idx(h)?, 2)?;
    Ok(x.index_select(&idx(w)?, 3)?)
}

/// `LeakyReLU(slope)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() && (0.0..1.0).contains(&slope) {
        return crate::fused::leaky_relu(x, slope);
    }
    // max(x, slope*x) for 0 < slope < 1.
    Ok(x.maximum(&(x * slope)?)?)
}

/// `Dropout(p)` when `active` (training), identity otherwise. The mask comes from the
/// context's seeded generator when it has one, so training runs are reproducible.
pub fn dropout(x: &Tensor, p: f32, active: bool, ctx: &mut crate::Ctx) -> Result<Tensor> {
    if !active || p <= 0.0 {
        return Ok(x.clone());
    }
    let Some(rng) = ctx.rng.as_mut() else {
        return Ok(candle_nn::ops::dropout(x, p)?);
    };
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform() as f32 >= p { keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Checks that an input is `(N, C, H, W)` float with the expected channel count.
pub fn check_input(x: &Tensor, channels: usize, what: &str) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != channels {
        return Err(crate::Error::Input(format!(
            "{what} expects a (N, {channels}, H, W) tensor, got {dims:?}"
        )));
    }
    if x.dtype() != DType::F32 && x.dtype() != DType::F16 && x.dtype() != DType::BF16 {
        return Err(crate::Error::Input(format!(
            "{what} expects a float tensor, got {:?}",
            x.dtype()
        )));
    }
    Ok(())
}
