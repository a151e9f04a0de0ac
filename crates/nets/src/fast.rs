//! Inference on Atelier's own CPU kernels (`atelier-kernels`).
//!
//! [`Compiled::new`] takes a built generator, packs its weights for this CPU once, and runs
//! it channels-last from the first convolution to the RGB head: layout conversion happens
//! only at the network's edges. Normalization statistics follow the same [`Ctx`] modes as the
//! candle path (own, recorded, replayed), so tiled stylization works unchanged.
//!
//! Supported: the ResNet generator (instance norm, or batch norm with running statistics)
//! and the light generator. Everything else (and batch norm with batch statistics) stays on
//! candle; [`Compiled::new`] returns `None` for it.

use std::sync::Arc;

use atelier_kernels::map::Workspace;
use atelier_kernels::{ops, Act, Conv, ConvSpec, Depthwise, Map, PadMode, PlanarConv, Precision};
use candle_core::{Device, Tensor};

use crate::layers::{Conv2d, ConvTranspose2d};
use crate::light::LightGenerator;
use crate::norm::{Ctx, Norm};
use crate::resnet::{ResnetGenerator, UpConv};
use crate::{Error, Network, Result};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn kerr(e: atelier_kernels::Error) -> Error {
    Error::Input(e.to_string())
}

/// Planar `(C, H, W)` values with `H` and `W`.
pub type Out = (Vec<f32>, usize, usize);

/// A normalization layer with its data-independent part folded.
#[derive(Debug, Clone)]
enum FastNorm {
    Instance {
        eps: f32,
    },
    /// Batch norm with running statistics: `x·scale + shift`.
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    None,
}

impl FastNorm {
    fn new(n: &Norm) -> Result<Self> {
        Ok(match n {
            Norm::Instance { eps } => FastNorm::Instance { eps: *eps as f32 },
            Norm::None => FastNorm::None,
            Norm::Batch {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
            } => {
                let (w, b) = (values(weight)?, values(bias)?);
                let (m, v) = (values(running_mean)?, values(running_var)?);
                let scale: Vec<f32> = w
                    .iter()
                    .zip(&v)
                    .map(|(w, v)| w / (v + *eps as f32).sqrt())
                    .collect();
                let shift = b
                    .iter()
                    .zip(&m)
                    .zip(&scale)
                    .map(|((b, m), s)| b - m * s)
                    .collect();
                FastNorm::Affine { scale, shift }
            }
        })
    }

    /// Per-channel `(scale, shift)` for `x`.
    fn coefficients(&self, x: &Map, ctx: &mut Ctx) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(match self {
            FastNorm::Instance { eps } => {
                let (mean, var) = ctx.stats_values(x.c, || ops::channel_stats(x))?;
                ops::norm_coefficients(&mean, &var, *eps)
            }
            FastNorm::Affine { scale, shift } => (scale.clone(), shift.clone()),
            FastNorm::None => (vec![1.0; x.c], vec![0.0; x.c]),
        })
    }

    /// Normalizes `x` and applies `act` into the row-planar, padded input of a planar head.
    fn apply_hcw(
        &self,
        x: &Map,
        ctx: &mut Ctx,
        act: Act,
        pad: (usize, PadMode),
        ws: &Workspace,
    ) -> Result<Vec<f32>> {
        let (s, b) = self.coefficients(x, ctx)?;
        Ok(ops::normalize_into_hcw_padded(
            x, &s, &b, act, pad.0, pad.1, ws,
        ))
    }

    /// Normalizes `x`, applies `act`, adds `residual` (with its border), and writes the result
    /// with the border the next layer reads (`next`).
    fn apply_padded(
        &self,
        x: &Map,
        ctx: &mut Ctx,
        act: Act,
        residual: Option<(&Map, usize)>,
        next: (usize, PadMode),
        ws: &Workspace,
    ) -> Result<Map> {
        let (s, b) = self.coefficients(x, ctx)?;
        Ok(ops::normalize_into_padded(
            x, &s, &b, act, residual, next.0, next.1, ws,
        ))
    }
}

fn conv(c: &Conv2d, pad: usize, mode: PadMode, precision: Precision) -> Result<Conv> {
    let (co, ci, k, _) = c.weight.dims4()?;
    if c.groups != 1 {
        return Err(Error::Input("grouped convolution".into()));
    }
    let spec = ConvSpec::new(ci, co, k).stride(c.stride).pad(
        pad.max(c.padding),
        if pad > 0 { mode } else { PadMode::Zero },
    );
    let bias = c.bias.as_ref().map(values).transpose()?;
    Conv::new(spec, &values(&c.weight)?, bias.as_deref(), precision).map_err(kerr)
}

fn conv_t(c: &ConvTranspose2d, precision: Precision) -> Result<Conv> {
    let (ci, co, k, _) = c.weight.dims4()?;
    let spec = ConvSpec::new(ci, co, k)
        .stride(c.stride)
        .pad(c.padding, PadMode::Zero)
        .transposed(c.output_padding);
    let bias = c.bias.as_ref().map(values).transpose()?;
    Conv::new(spec, &values(&c.weight)?, bias.as_deref(), precision).map_err(kerr)
}

fn depthwise(c: &Conv2d, pad: usize) -> Result<Depthwise> {
    let (co, _, k, _) = c.weight.dims4()?;
    let bias = c.bias.as_ref().map(values).transpose()?;
    Depthwise::new(
        co,
        k,
        pad,
        PadMode::Reflect,
        &values(&c.weight)?,
        bias.as_deref(),
    )
    .map_err(kerr)
}

/// The RGB head: a 7×7 reflect-padded convolution and tanh, planar output.
#[derive(Debug, Clone)]
enum Head {
    Planar(PlanarConv),
    /// More than 4 output channels: a channels-last convolution.
    Wide(Conv),
}

impl Head {
    fn new(c: &Conv2d, precision: Precision) -> Result<Self> {
        let (co, ci, k, _) = c.weight.dims4()?;
        let bias = c.bias.as_ref().map(values).transpose()?;
        let w = values(&c.weight)?;
        if co <= PlanarConv::MAX_OUT {
            Ok(Head::Planar(
                PlanarConv::new(
                    ci,
                    co,
                    k,
                    3,
                    PadMode::Reflect,
                    &w,
                    bias.as_deref(),
                    Act::Tanh,
                )
                .map_err(kerr)?,
            ))
        } else {
            Ok(Head::Wide(conv(c, 3, PadMode::Reflect, precision)?))
        }
    }

    /// Planar output and its height and width.
    /// The border the head reads.
    fn input_padding(&self) -> (usize, PadMode) {
        match self {
            Head::Planar(p) => p.input_padding(),
            Head::Wide(c) => c.input_padding(),
        }
    }

    /// Normalizes the last feature map into the head's input and runs the head.
    fn norm_and_forward(
        &self,
        norm: &FastNorm,
        y: &Map,
        ctx: &mut Ctx,
        ws: &Workspace,
    ) -> Result<Out> {
        let pad = self.input_padding();
        match self {
            Head::Planar(p) => {
                let planes = norm.apply_hcw(y, ctx, Act::Relu, pad, ws)?;
                let (hp, wp) = (y.h + 2 * pad.0, y.w + 2 * pad.0);
                let (ho, wo) = (hp + 1 - p.kernel(), wp + 1 - p.kernel());
                Ok((p.forward_hcw(planes, hp, wp, ws), ho, wo))
            }
            Head::Wide(_) => {
                let xp = norm.apply_padded(y, ctx, Act::Relu, None, pad, ws)?;
                let out = self.forward(&xp, ws);
                ws.recycle(xp);
                out
            }
        }
    }

    /// Planar output and its height and width, from an input with [`Head::input_padding`].
    fn forward(&self, x: &Map, ws: &Workspace) -> Result<Out> {
        match self {
            Head::Planar(p) => {
                let (hp, wp) = (x.h, x.w);
                if hp < p.kernel() || wp < p.kernel() {
                    return Err(Error::Input(format!("input {hp}×{wp} is too small")));
                }
                let planes = x.to_hcw_padded(0, PadMode::Zero, ws);
                let (ho, wo) = (hp + 1 - p.kernel(), wp + 1 - p.kernel());
                Ok((p.forward_hcw(planes, hp, wp, ws), ho, wo))
            }
            Head::Wide(c) => {
                let y = c.forward_padded(x, ws).map_err(kerr)?;
                let mut out = y.to_chw();
                ops::activate(&mut out, Act::Tanh);
                Ok((out, y.h, y.w))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ResnetPlan {
    stem: (Conv, FastNorm),
    down: Vec<(Conv, FastNorm)>,
    blocks: Vec<[(Conv, FastNorm); 2]>,
    /// With `true`, the convolution reads the nearest-neighbour ×2 upsampled input.
    up: Vec<(Conv, FastNorm, bool)>,
    head: Head,
}

impl ResnetPlan {
    fn new(g: &ResnetGenerator, p: Precision) -> Result<Self> {
        let r = PadMode::Reflect;
        Ok(Self {
            stem: (conv(&g.stem, 3, r, p)?, FastNorm::new(&g.stem_norm)?),
            down: g
                .down
                .iter()
                .map(|(c, n)| Ok((conv(c, 0, r, p)?, FastNorm::new(n)?)))
                .collect::<Result<_>>()?,
            blocks: g
                .blocks
                .iter()
                .map(|b| {
                    Ok([
                        (conv(&b.conv1, 1, r, p)?, FastNorm::new(&b.norm1)?),
                        (conv(&b.conv2, 1, r, p)?, FastNorm::new(&b.norm2)?),
                    ])
                })
                .collect::<Result<_>>()?,
            up: g
                .up
                .iter()
                .map(|(c, n)| {
                    Ok(match c {
                        UpConv::Transposed(c) => (conv_t(c, p)?, FastNorm::new(n)?, false),
                        UpConv::Resize(c) => (conv(c, 1, r, p)?, FastNorm::new(n)?, true),
                    })
                })
                .collect::<Result<_>>()?,
            head: Head::new(&g.head, p)?,
        })
    }

    /// Every activation is written once, already padded for the layer that reads it. `stop`
    /// is asked between layers.
    fn forward(&self, x: Map, ctx: &mut Ctx, ws: &Workspace, stop: Stop) -> Result<Out> {
        let (p, mode) = self.stem.0.input_padding();
        let xp = atelier_kernels::map::pad_in(&x, p, p, p, p, mode, ws);
        ws.recycle(x);
        // The padding the layer after each normalization reads.
        let mut wants: Vec<(usize, PadMode)> = Vec::new();
        wants.extend(self.down.iter().map(|l| l.0.input_padding()));
        for b in &self.blocks {
            wants.push(b[0].0.input_padding());
            wants.push(b[1].0.input_padding());
        }
        // Upsampling writes the border of a resize-convolution itself.
        wants.extend(self.up.iter().map(|l| {
            if l.2 {
                (0, PadMode::Zero)
            } else {
                l.0.input_padding()
            }
        }));
        wants.push(self.head.input_padding());
        let mut next = wants.into_iter();
        let mut want = || next.next().unwrap_or((0, PadMode::Zero));

        let y = self.stem.0.forward_padded(&xp, ws).map_err(kerr)?;
        ws.recycle(xp);
        let mut hp = self
            .stem
            .1
            .apply_padded(&y, ctx, Act::Relu, None, want(), ws)?;
        ws.recycle(y);
        for l in &self.down {
            halt(stop)?;
            let y = l.0.forward_padded(&hp, ws).map_err(kerr)?;
            ws.recycle(hp);
            hp = l.1.apply_padded(&y, ctx, Act::Relu, None, want(), ws)?;
            ws.recycle(y);
        }
        for [a, b] in &self.blocks {
            halt(stop)?;
            let border = a.0.input_padding().0;
            let t = a.0.forward_padded(&hp, ws).map_err(kerr)?;
            let tp = a.1.apply_padded(&t, ctx, Act::Relu, None, want(), ws)?;
            ws.recycle(t);
            let u = b.0.forward_padded(&tp, ws).map_err(kerr)?;
            ws.recycle(tp);
            let next =
                b.1.apply_padded(&u, ctx, Act::None, Some((&hp, border)), want(), ws)?;
            ws.recycle(u);
            ws.recycle(std::mem::replace(&mut hp, next));
        }
        let n_up = self.up.len();
        for (i, l) in self.up.iter().enumerate() {
            halt(stop)?;
            let y = if l.2 {
                let (p, mode) = l.0.input_padding();
                let t = atelier_kernels::map::upsample_nearest2_padded(&hp, p, mode, ws);
                let y = l.0.forward_padded(&t, ws).map_err(kerr)?;
                ws.recycle(t);
                y
            } else if l.0.spec().transposed {
                l.0.forward_ws(&hp, ws).map_err(kerr)?
            } else {
                l.0.forward_padded(&hp, ws).map_err(kerr)?
            };
            ws.recycle(hp);
            if i + 1 == n_up {
                // The last normalization writes the head's input directly.
                let out = self.head.norm_and_forward(&l.1, &y, ctx, ws);
                ws.recycle(y);
                return out;
            }
            hp = l.1.apply_padded(&y, ctx, Act::Relu, None, want(), ws)?;
            ws.recycle(y);
        }
        let (p, mode) = self.head.input_padding();
        let xp = atelier_kernels::map::pad_in(&hp, p, p, p, p, mode, ws);
        ws.recycle(hp);
        let out = self.head.forward(&xp, ws);
        ws.recycle(xp);
        out
    }
}

#[derive(Debug, Clone)]
struct LightBlock {
    dw1: Depthwise,
    pw1: Conv,
    dw2: Depthwise,
    pw2: Conv,
}

#[derive(Debug, Clone)]
struct LightPlan {
    stem: Conv,
    down: Vec<Conv>,
    blocks: Vec<LightBlock>,
    up: Vec<(Depthwise, Conv)>,
    head: Head,
    norm: FastNorm,
}

impl LightPlan {
    fn new(g: &LightGenerator, p: Precision) -> Result<Self> {
        let r = PadMode::Reflect;
        Ok(Self {
            stem: conv(&g.stem, 3, r, p)?,
            down: g
                .down
                .iter()
                .map(|c| conv(c, 0, r, p))
                .collect::<Result<_>>()?,
            blocks: g
                .blocks
                .iter()
                .map(|b| {
                    Ok(LightBlock {
                        dw1: depthwise(&b.dw1, 1)?,
                        pw1: conv(&b.pw1, 0, r, p)?,
                        dw2: depthwise(&b.dw2, 1)?,
                        pw2: conv(&b.pw2, 0, r, p)?,
                    })
                })
                .collect::<Result<_>>()?,
            // In int8, the upsampling pointwise convolutions stay in fp32: about a tenth of
            // the network's multiply-adds, but the last ones before the image and the largest
            // share of its int8 error (vangogh_light and ukiyoe_light, 8 photos at 512² and
            // 1024²: lowest PSNR against fp32 39.7 dB with them in int8, 43.6 dB without).
            up: g
                .up
                .iter()
                .map(|u| {
                    let up_p = if p == Precision::Int8 {
                        Precision::F32
                    } else {
                        p
                    };
                    Ok((depthwise(&u.dw, 1)?, conv(&u.pw, 0, r, up_p)?))
                })
                .collect::<Result<_>>()?,
            head: Head::new(&g.head, p)?,
            norm: FastNorm::new(&g.norm)?,
        })
    }

    /// Like the ResNet plan, normalizations write the padded input of the depthwise
    /// convolution that reads them, and upsampling writes its padding too.
    fn forward(&self, x: Map, ctx: &mut Ctx, ws: &Workspace, stop: Stop) -> Result<Out> {
        let n = &self.norm;
        let z = (0, PadMode::Zero);
        let y = self.stem.forward_ws(&x, ws).map_err(kerr)?;
        ws.recycle(x);
        let mut h = n.apply_padded(&y, ctx, Act::Relu, None, z, ws)?;
        ws.recycle(y);
        let n_down = self.down.len();
        // The block input carries the border of the first depthwise convolution.
        let block_pad = self.blocks.first().map_or(z, |b| b.dw1.input_padding());
        for (i, d) in self.down.iter().enumerate() {
            halt(stop)?;
            let y = d.forward_ws(&h, ws).map_err(kerr)?;
            ws.recycle(h);
            let next = if i + 1 == n_down { block_pad } else { z };
            h = n.apply_padded(&y, ctx, Act::Relu, None, next, ws)?;
            ws.recycle(y);
        }
        let mut border = if n_down > 0 { block_pad.0 } else { 0 };
        let n_blocks = self.blocks.len();
        for (i, b) in self.blocks.iter().enumerate() {
            halt(stop)?;
            let t = if border == b.dw1.input_padding().0 {
                b.dw1.forward_padded(&h, ws)
            } else {
                b.dw1.forward_ws(&h, ws)
            }
            .map_err(kerr)?;
            let t2 = b.pw1.forward_ws(&t, ws).map_err(kerr)?;
            ws.recycle(t);
            let tp = n.apply_padded(&t2, ctx, Act::Relu, None, b.dw2.input_padding(), ws)?;
            ws.recycle(t2);
            let t = b.dw2.forward_padded(&tp, ws).map_err(kerr)?;
            ws.recycle(tp);
            let u = b.pw2.forward_ws(&t, ws).map_err(kerr)?;
            ws.recycle(t);
            let next = if i + 1 == n_blocks { z } else { block_pad };
            let hn = n.apply_padded(&u, ctx, Act::None, Some((&h, border)), next, ws)?;
            ws.recycle(u);
            ws.recycle(std::mem::replace(&mut h, hn));
            border = next.0;
        }
        if border != 0 {
            // No blocks ran after a padded down layer: drop the border.
            let inner = crop(&h, border);
            ws.recycle(std::mem::replace(&mut h, inner));
        }
        let n_up = self.up.len();
        for (i, (dw, pw)) in self.up.iter().enumerate() {
            halt(stop)?;
            let (p, mode) = dw.input_padding();
            let t = atelier_kernels::map::upsample_nearest2_padded(&h, p, mode, ws);
            ws.recycle(h);
            let t2 = dw.forward_padded(&t, ws).map_err(kerr)?;
            ws.recycle(t);
            let y = pw.forward_ws(&t2, ws).map_err(kerr)?;
            ws.recycle(t2);
            if i + 1 == n_up {
                let out = self.head.norm_and_forward(n, &y, ctx, ws);
                ws.recycle(y);
                return out;
            }
            h = n.apply_padded(&y, ctx, Act::Relu, None, z, ws)?;
            ws.recycle(y);
        }
        let (p, mode) = self.head.input_padding();
        let xp = atelier_kernels::map::pad_in(&h, p, p, p, p, mode, ws);
        ws.recycle(h);
        let out = self.head.forward(&xp, ws);
        ws.recycle(xp);
        out
    }
}

/// A caller's "should I stop?" check, asked between layers.
type Stop<'a> = &'a dyn Fn() -> bool;

fn halt(stop: Stop) -> Result<()> {
    if stop() {
        Err(Error::Stopped)
    } else {
        Ok(())
    }
}

/// The interior of a map with a border of `b` pixels.
fn crop(x: &Map, b: usize) -> Map {
    let (h, w, c) = (x.h - 2 * b, x.w - 2 * b, x.c);
    let mut data = Vec::with_capacity(h * w * c);
    for y in 0..h {
        data.extend_from_slice(&x.data[((y + b) * x.w + b) * c..][..w * c]);
    }
    Map { h, w, c, data }
}

#[derive(Debug, Clone)]
enum Plan {
    Resnet(ResnetPlan),
    Light(LightPlan),
}

/// A generator compiled for Atelier's CPU kernels.
#[derive(Debug, Clone)]
pub struct Compiled {
    plan: Plan,
    in_channels: usize,
    out_channels: usize,
    precision: Precision,
    /// Whether normalization needs data statistics (instance norm).
    data_stats: bool,
    /// Activation buffers reused across layers and calls.
    ws: Arc<Workspace>,
}

impl Compiled {
    /// Packs `net` for the CPU, or `None` if its architecture or normalization is not covered
    /// (it then keeps running on candle).
    pub fn new(net: &Network, precision: Precision) -> Result<Option<Self>> {
        let (plan, in_channels, out_channels, data_stats) = match net {
            Network::Resnet(g) => {
                let c = g.config();
                (
                    Plan::Resnet(ResnetPlan::new(g, precision)?),
                    c.input_nc,
                    c.output_nc,
                    c.norm == crate::NormKind::Instance,
                )
            }
            Network::Light(g) => {
                let c = g.config();
                (
                    Plan::Light(LightPlan::new(g, precision)?),
                    c.input_nc,
                    c.output_nc,
                    true,
                )
            }
            _ => return Ok(None),
        };
        Ok(Some(Self {
            plan,
            in_channels,
            out_channels,
            precision,
            data_stats,
            ws: Arc::new(Workspace::default()),
        }))
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether `ctx` can run here: batch statistics of a batch-norm model stay on candle.
    pub fn supports(&self, ctx: &Ctx) -> bool {
        !ctx.train && (self.data_stats || !ctx.batch_stats)
    }

    /// One image `(C, H, W)` → `(C_out, H', W')` (the same size for sizes the network's
    /// multiple divides).
    pub fn forward_chw(&self, chw: &[f32], h: usize, w: usize, ctx: &mut Ctx) -> Result<Out> {
        self.forward_chw_until(chw, h, w, ctx, &|| false)
    }

    /// [`Compiled::forward_chw`] that asks `stop` between layers and returns
    /// [`Error::Stopped`] once it says yes (a cancelled job ends within a layer, not after a
    /// whole large image).
    pub fn forward_chw_until(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        ctx: &mut Ctx,
        stop: &dyn Fn() -> bool,
    ) -> Result<Out> {
        if !self.supports(ctx) {
            return Err(Error::Input(
                "the compiled network runs inference without batch statistics only".into(),
            ));
        }
        if chw.len() != self.in_channels * h * w {
            return Err(Error::Input(format!(
                "expected {} channels of {h}×{w}",
                self.in_channels
            )));
        }
        self.forward_in(chw, h, w, ctx, &self.ws, stop)
    }

    fn forward_in(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        ctx: &mut Ctx,
        ws: &Workspace,
        stop: Stop,
    ) -> Result<Out> {
        let x = Map::from_chw(chw, self.in_channels, h, w);
        match &self.plan {
            Plan::Resnet(p) => p.forward(x, ctx, ws, stop),
            Plan::Light(p) => p.forward(x, ctx, ws, stop),
        }
    }

    /// Whether every int8 convolution has been calibrated ([`Compiled::calibrate`]; always
    /// true at other precisions).
    pub fn is_calibrated(&self) -> bool {
        let head = |h: &Head| match h {
            Head::Wide(c) => c.is_calibrated(),
            Head::Planar(_) => true,
        };
        match &self.plan {
            Plan::Resnet(p) => {
                p.stem.0.is_calibrated()
                    && p.down.iter().all(|l| l.0.is_calibrated())
                    && p.blocks.iter().flatten().all(|l| l.0.is_calibrated())
                    && p.up.iter().all(|l| l.0.is_calibrated())
                    && head(&p.head)
            }
            Plan::Light(p) => {
                p.stem.is_calibrated()
                    && p.down.iter().all(Conv::is_calibrated)
                    && p.blocks
                        .iter()
                        .all(|b| b.pw1.is_calibrated() && b.pw2.is_calibrated())
                    && p.up.iter().all(|l| l.1.is_calibrated())
                    && head(&p.head)
            }
        }
    }

    /// Calibrates the int8 convolutions on one image `(C, H, W)`: each fixes its smoothing
    /// factors and quantized weights from what it sees of this image (the first calibration
    /// wins; nothing to do at other precisions). Uncalibrated int8 convolutions derive both
    /// from every input anew, which costs a quantization of their weights per call.
    pub fn calibrate(&self, chw: &[f32], h: usize, w: usize) -> Result<()> {
        if self.precision != Precision::Int8 {
            return Ok(());
        }
        if chw.len() != self.in_channels * h * w {
            return Err(Error::Input(format!(
                "expected {} channels of {h}×{w}",
                self.in_channels
            )));
        }
        let ws = Workspace::calibrating();
        self.forward_in(chw, h, w, &mut Ctx::eval(), &ws, &|| false)?;
        Ok(())
    }

    /// The memory one forward pass of an `h × w` image holds at its peak, in bytes: every
    /// activation buffer handed out or kept for reuse at the worst moment (measured by
    /// running the network once on a blank image with a workspace of its own), plus the
    /// planar input, its channels-last copy and the output. Activations grow with the pixel
    /// count, so a measurement at a small size scales to large ones (slightly above: the
    /// padded borders weigh more on a small image).
    pub fn measure_bytes(&self, h: usize, w: usize) -> Result<usize> {
        let ws = Workspace::default();
        let x = vec![0f32; self.in_channels * h * w];
        let mut ctx = Ctx::eval();
        let (y, _, _) = self.forward_in(&x, h, w, &mut ctx, &ws, &|| false)?;
        let f = std::mem::size_of::<f32>();
        Ok(ws.peak_bytes() + 2 * x.len() * f + y.len() * f)
    }

    /// Takes its activation buffers from `ws`, e.g. one workspace for every model of a
    /// server, so that what one image leaves behind serves the next whatever its model, and
    /// a single [`Compiled::trim`] bounds them all.
    pub fn share_workspace(&mut self, ws: Arc<Workspace>) {
        self.ws = ws;
    }

    /// Drops the activation buffers kept between calls, largest first, down to `max_bytes`
    /// (a large image's buffers would otherwise stay with the process).
    pub fn trim(&self, max_bytes: usize) {
        self.ws.trim(max_bytes);
    }

    /// Bytes of activation buffers kept between calls.
    pub fn kept_bytes(&self) -> usize {
        self.ws.kept_bytes()
    }

    /// `(N, C, H, W)` → `(N, C_out, H, W)`; images run one after the other. Recording
    /// statistics needs a batch of one (the candle path averages over the batch).
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.in_channels {
            return Err(Error::Input(format!(
                "expected {} input channels, got {c}",
                self.in_channels
            )));
        }
        if n > 1 && ctx.is_recording() {
            return Err(Error::Input(
                "recording statistics on the compiled network needs a batch of one".into(),
            ));
        }
        let data = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(n * self.out_channels * h * w);
        let mut size = (h, w);
        for i in 0..n {
            let start = ctx.cursor();
            let (y, ho, wo) =
                self.forward_chw(&data[i * c * h * w..(i + 1) * c * h * w], h, w, ctx)?;
            out.extend(y);
            size = (ho, wo);
            if i + 1 < n {
                ctx.set_cursor(start);
            }
        }
        Ok(Tensor::from_vec(
            out,
            (n, self.out_channels, size.0, size.1),
            &Device::Cpu,
        )?)
    }
}
