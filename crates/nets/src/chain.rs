//! Whole networks as one training op, channels-last inside: the ResNet generator and the
//! PatchGAN discriminator.
//!
//! [`crate::block`] keeps a residual block channels-last, but most of the generator's
//! activation volume is outside the blocks: the 7×7 stem and head, the downsamplings and the
//! upsamplings run at 2–4× the blocks' resolution, and there each layer still converted its
//! input and output between NCHW and channels-last, in the forward and the backward pass.
//! Here a network converts its input once and its output once; every layer reads the
//! previous one's output as the normalization wrote it — already padded (reflect or zero) or
//! upsampled the way the layer needs — and the backward pass runs each layer's adjoint on the
//! same layout: norm + activation backward, weight gradient from the saved (padded) input,
//! input gradient as the transposed convolution (or, for a transposed convolution, the
//! convolution), and the adjoint of the padding / upsampling.
//!
//! The parameters arrive as one flat tensor (per layer its weight, then its bias where the
//! layer has one that matters), so candle's graph has one node for the network whose
//! backward pass returns the gradient of that tensor (split back to the variables by candle's
//! `cat` backward). As in [`crate::block`], the biases of convolutions followed by instance
//! norm are left out: they change nothing and their gradient is zero. With constant
//! parameters (a frozen discriminator) no weight gradient is computed.

use std::sync::Mutex;

use atelier_kernels::grad::weight_grad_in;
use atelier_kernels::map::{
    fold_pad_add, fold_upsample2_pad_add, pad_in, upsample_nearest2_padded,
};
use atelier_kernels::ops::{norm_act_backward, normalize_into_padded, scale_shift_act};
use atelier_kernels::{Act, Conv, ConvSpec, Isa, Map, PadMode, PlanarConv, Precision};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

use crate::conv::{training_precision, workspace};
use crate::discriminators::NLayerDiscriminator;
use crate::fused::{contiguous_f32, with_f32};
use crate::resnet::{ResnetGenerator, UpConv, Upsampling};
use crate::Result;
use atelier_kernels::ops::channel_stats;

fn cerr(e: atelier_kernels::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// How a layer's input is made from the previous layer's output.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prep {
    pad: usize,
    mode: PadMode,
    /// Nearest-neighbour ×2 before padding (resize-convolution).
    up2: bool,
}

impl Prep {
    const fn pad(pad: usize, mode: PadMode) -> Self {
        Self {
            pad,
            mode,
            up2: false,
        }
    }

    /// `act(h·scale + shift) [+ residual]`, prepared as this input.
    fn make(
        &self,
        h: &Map,
        scale: &[f32],
        shift: &[f32],
        act: Act,
        residual: Option<(&Map, usize)>,
    ) -> Map {
        let ws = workspace();
        if self.up2 {
            let a = normalize_into_padded(h, scale, shift, act, residual, 0, PadMode::Zero, ws);
            let out = upsample_nearest2_padded(&a, self.pad, self.mode, ws);
            ws.recycle(a);
            out
        } else {
            normalize_into_padded(h, scale, shift, act, residual, self.pad, self.mode, ws)
        }
    }

    /// The adjoint of [`Prep::make`]'s padding / upsampling: adds `dxin` folded back to
    /// `dst`, the gradient of the previous layer's output.
    fn fold(&self, dxin: &Map, dst: &mut Map) {
        let p = self.pad;
        if self.up2 {
            fold_upsample2_pad_add(dxin, p, self.mode, dst);
        } else {
            fold_pad_add(dxin, p, p, p, p, self.mode, dst);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// k×k convolution over the prepared input (which carries the padding).
    Conv { k: usize, stride: usize },
    /// 3×3 stride-2 transposed convolution, padding 1, output padding 1 (input unpadded).
    ConvT,
    /// Residual block of `c_in` channels (its input prepared with reflect padding 1; its own
    /// instance norms, ReLU between them, no activation after the residual sum).
    Block,
}

/// What follows a layer's convolution.
#[derive(Debug, Clone, Copy)]
enum Post {
    /// Instance norm, then the activation.
    Norm(Act),
    /// The layer's bias (after its weight in the parameters), then the activation.
    Bias(Act),
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    kind: Kind,
    c_in: usize,
    c_out: usize,
    prep: Prep,
    post: Post,
    /// Offset of the weight(s) in the flat parameters (a block has two of `c²·9`).
    w: usize,
}

impl Layer {
    fn w_len(&self) -> usize {
        match self.kind {
            Kind::Conv { k, .. } => self.c_out * self.c_in * k * k,
            Kind::ConvT => self.c_in * self.c_out * 9,
            Kind::Block => 2 * self.c_in * self.c_in * 9,
        }
    }

    /// Weight and bias.
    fn params_len(&self) -> usize {
        match (self.kind, self.post) {
            (Kind::Block, _) | (_, Post::Norm(_)) => self.w_len(),
            (_, Post::Bias(_)) => self.w_len() + self.c_out,
        }
    }
}

/// Builds a layer list, placing each layer's parameters after the previous one's.
#[derive(Default)]
struct Layers(Vec<Layer>);

impl Layers {
    fn push(&mut self, kind: Kind, (c_in, c_out): (usize, usize), prep: Prep, post: Post) {
        let w = self.0.last().map(|l| l.w + l.params_len()).unwrap_or(0);
        self.0.push(Layer {
            kind,
            c_in,
            c_out,
            prep,
            post,
            w,
        });
    }
}

/// The layers of a ResNet generator.
fn generator_layers(
    input_nc: usize,
    output_nc: usize,
    ngf: usize,
    n_blocks: usize,
    up: Upsampling,
) -> Vec<Layer> {
    let mut v = Layers::default();
    let relu = Post::Norm(Act::Relu);
    let conv = |k, stride| Kind::Conv { k, stride };
    v.push(
        conv(7, 1),
        (input_nc, ngf),
        Prep::pad(3, PadMode::Reflect),
        relu,
    );
    for i in 0..2 {
        let c = ngf << i;
        v.push(conv(3, 2), (c, 2 * c), Prep::pad(1, PadMode::Zero), relu);
    }
    for _ in 0..n_blocks {
        let c = 4 * ngf;
        v.push(Kind::Block, (c, c), Prep::pad(1, PadMode::Reflect), relu);
    }
    for i in 0..2 {
        let c = (4 * ngf) >> i;
        match up {
            Upsampling::Transposed => {
                v.push(Kind::ConvT, (c, c / 2), Prep::pad(0, PadMode::Zero), relu)
            }
            Upsampling::Resize => {
                let prep = Prep {
                    pad: 1,
                    mode: PadMode::Reflect,
                    up2: true,
                };
                v.push(conv(3, 1), (c, c / 2), prep, relu)
            }
        }
    }
    let head = (ngf, output_nc);
    v.push(
        conv(7, 1),
        head,
        Prep::pad(3, PadMode::Reflect),
        Post::Bias(Act::Tanh),
    );
    v.0
}

/// The layers of a PatchGAN discriminator with instance norm: 4×4 convolutions with zero
/// padding 1, LeakyReLU(0.2) after each but the last.
fn discriminator_layers(input_nc: usize, ndf: usize, n_layers: usize) -> Vec<Layer> {
    let mut v = Layers::default();
    let leaky = Act::LeakyRelu(0.2);
    let zero1 = Prep::pad(1, PadMode::Zero);
    let conv = |stride| Kind::Conv { k: 4, stride };
    v.push(conv(2), (input_nc, ndf), zero1, Post::Bias(leaky));
    let mut mult = 1;
    for n in 1..=n_layers {
        let prev = mult;
        mult = (1usize << n.min(3)).min(8);
        let stride = if n == n_layers { 1 } else { 2 };
        v.push(
            conv(stride),
            (ndf * prev, ndf * mult),
            zero1,
            Post::Norm(leaky),
        );
    }
    v.push(conv(1), (ndf * mult, 1), zero1, Post::Bias(Act::None));
    v.0
}

/// Per-channel mean and 1/√(var + eps) of a norm's input.
type Stats = (Vec<f32>, Vec<f32>);

/// What the backward pass needs of one layer of one image.
#[derive(Debug)]
struct Saved {
    /// The layer's input as prepared (padded / upsampled).
    xin: Map,
    /// Norm layers: the convolution's output before the norm; bias layers: the output after
    /// the bias and the activation; blocks: the first convolution's output.
    h: Map,
    stats: Stats,
    /// Blocks: the second convolution's prepared input, its output and statistics.
    block: Option<(Map, Map, Stats)>,
}

impl Saved {
    fn recycle(self) {
        let ws = workspace();
        ws.recycle(self.xin);
        ws.recycle(self.h);
        if let Some((a, b, _)) = self.block {
            ws.recycle(a);
            ws.recycle(b);
        }
    }
}

#[derive(Debug)]
struct ChainOp {
    name: &'static str,
    layers: Vec<Layer>,
    eps: f32,
    precision: Precision,
    /// Whether a backward pass can follow (some input tracks gradients): otherwise the
    /// forward pass keeps nothing (inference, e.g. sampling with constant weights).
    keep: bool,
    saved: Mutex<Vec<Vec<Saved>>>,
}

impl Drop for ChainOp {
    fn drop(&mut self) {
        if let Ok(v) = self.saved.get_mut() {
            for s in v.drain(..).flatten() {
                s.recycle();
            }
        }
    }
}

/// A k×k convolution over a prepared input.
fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    w: &[f32],
    p: Precision,
) -> candle_core::Result<Conv> {
    Conv::new(ConvSpec::new(c_in, c_out, k).stride(stride), w, None, p).map_err(cerr)
}

/// The kernel `(out, in, k, k)` flipped in both axes with in and out swapped: the stride-1
/// convolution whose output is the input gradient.
fn flipped(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    let mut f = vec![0f32; w.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for ky in 0..k {
                for kx in 0..k {
                    f[((i * c_out + o) * k + ky) * k + kx] =
                        w[((o * c_in + i) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
                }
            }
        }
    }
    f
}

fn convt_spec(c_in: usize, c_out: usize) -> ConvSpec {
    ConvSpec::new(c_in, c_out, 3)
        .stride(2)
        .pad(1, PadMode::Zero)
        .transposed(1)
}

/// `dact/dz` from the activation's output `y`.
fn act_grad(act: Act, y: f32) -> f32 {
    match act {
        Act::None => 1.0,
        Act::Relu => (y > 0.0) as u8 as f32,
        Act::LeakyRelu(s) => {
            if y > 0.0 {
                1.0
            } else {
                s
            }
        }
        Act::Tanh => 1.0 - y * y,
    }
}

/// The slope below zero of a norm's activation (what `norm_act_backward` takes).
fn slope(act: Act) -> candle_core::Result<f32> {
    match act {
        Act::None => Ok(1.0),
        Act::Relu => Ok(0.0),
        Act::LeakyRelu(s) => Ok(s),
        Act::Tanh => candle_core::bail!("chain op: tanh after a norm"),
    }
}

/// Mean and 1/√(var + eps) per channel of a channels-last map.
fn stats(m: &Map, eps: f32) -> Stats {
    let (mean, var) = channel_stats(m);
    let rstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    (mean, rstd)
}

/// The scale and shift that normalize with `(mean, rstd)`.
fn coefficients((mean, rstd): &Stats) -> (Vec<f32>, Vec<f32>) {
    let shift = mean.iter().zip(rstd).map(|(m, r)| -m * r).collect();
    (rstd.clone(), shift)
}

/// The convolution that gives a layer's input gradient (packed once per backward call).
enum Back {
    /// Into the prepared (padded) input's shape: folded back afterwards.
    Prepared(Conv),
    /// Into the previous layer's output shape directly.
    Unpadded(Conv),
    /// A planar convolution with the flipped kernel, into the prepared input's shape.
    Planar(PlanarConv),
    /// A residual block's two (prepared, reflect-padded).
    Block(Box<(Conv, Conv)>),
}

/// The gradient a layer's backward pass gives for its input.
enum Grad {
    /// Of the prepared input (padded / upsampled): still to be folded back.
    Prepared(Map),
    /// Of the previous layer's output itself.
    Unpadded(Map),
}

/// Per layer of one call: the convolution(s) with packed weights, or the planar one of a last
/// layer with few outputs.
enum Packed {
    Conv(Conv),
    Block(Box<(Conv, Conv)>),
    Planar(PlanarConv),
}

impl ChainOp {
    fn pack(&self, params: &[f32]) -> candle_core::Result<Vec<Packed>> {
        let p = self.precision;
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let wv = &params[l.w..l.w + l.w_len()];
                Ok(match (l.kind, l.post) {
                    (Kind::Conv { k, stride: 1 }, Post::Bias(act))
                        if i == last && l.c_out <= PlanarConv::MAX_OUT =>
                    {
                        // Few outputs (an RGB head, a PatchGAN's logits): vectorized along x,
                        // bias and activation inside.
                        let b = &params[l.w + l.w_len()..][..l.c_out];
                        let pc =
                            PlanarConv::new(l.c_in, l.c_out, k, 0, PadMode::Zero, wv, Some(b), act);
                        Packed::Planar(pc.map_err(cerr)?)
                    }
                    (Kind::Conv { k, stride }, _) => {
                        Packed::Conv(conv(l.c_in, l.c_out, k, stride, wv, p)?)
                    }
                    (Kind::ConvT, _) => Packed::Conv(
                        Conv::new(convt_spec(l.c_in, l.c_out), wv, None, p).map_err(cerr)?,
                    ),
                    (Kind::Block, _) => {
                        let half = wv.len() / 2;
                        Packed::Block(Box::new((
                            conv(l.c_in, l.c_in, 3, 1, &wv[..half], p)?,
                            conv(l.c_in, l.c_in, 3, 1, &wv[half..], p)?,
                        )))
                    }
                })
            })
            .collect()
    }

    fn forward_image(
        &self,
        x: &Map,
        params: &[f32],
        packed: &[Packed],
    ) -> candle_core::Result<(Map, Vec<Saved>)> {
        let ws = workspace();
        let first = self.layers[0].prep;
        let p = first.pad;
        let mut xin = if first.up2 {
            upsample_nearest2_padded(x, p, first.mode, ws)
        } else {
            pad_in(x, p, p, p, p, first.mode, ws)
        };
        let mut saved = Vec::with_capacity(self.layers.len());
        for (i, (l, pk)) in self.layers.iter().zip(packed).enumerate() {
            let next = self.layers.get(i + 1).map(|l| l.prep);
            let (out, s) = match (pk, l.post) {
                (Packed::Block(pair), _) => {
                    let (c1, c2) = (&pair.0, &pair.1);
                    let h1 = c1.forward_padded(&xin, ws).map_err(cerr)?;
                    let s1 = stats(&h1, self.eps);
                    let (sc, sh) = coefficients(&s1);
                    let xp2 = normalize_into_padded(
                        &h1,
                        &sc,
                        &sh,
                        Act::Relu,
                        None,
                        1,
                        PadMode::Reflect,
                        ws,
                    );
                    let h2 = c2.forward_padded(&xp2, ws).map_err(cerr)?;
                    let s2 = stats(&h2, self.eps);
                    let (sc, sh) = coefficients(&s2);
                    let out = match next {
                        Some(next) => next.make(&h2, &sc, &sh, Act::None, Some((&xin, 1))),
                        None => normalize_into_padded(
                            &h2,
                            &sc,
                            &sh,
                            Act::None,
                            Some((&xin, 1)),
                            0,
                            PadMode::Zero,
                            ws,
                        ),
                    };
                    let s = (h1, s1, Some((xp2, h2, s2)));
                    (out, s)
                }
                (Packed::Planar(pc), _) => {
                    let (planes, ho, wo) = pc.forward_ws(&xin, ws).map_err(cerr)?;
                    let y = Map::from_chw_in(&planes, l.c_out, ho, wo, ws);
                    let mut out = ws.map(ho, wo, l.c_out);
                    out.data.copy_from_slice(&y.data);
                    (out, (y, (Vec::new(), Vec::new()), None))
                }
                (Packed::Conv(c), post) => {
                    let mut h = match l.kind {
                        Kind::ConvT => c.forward_sized(&xin, 2 * xin.h, 2 * xin.w, ws),
                        _ => c.forward_padded(&xin, ws),
                    }
                    .map_err(cerr)?;
                    match post {
                        Post::Norm(act) => {
                            let st = stats(&h, self.eps);
                            let (sc, sh) = coefficients(&st);
                            let out = match next {
                                Some(next) => next.make(&h, &sc, &sh, act, None),
                                None => normalize_into_padded(
                                    &h,
                                    &sc,
                                    &sh,
                                    act,
                                    None,
                                    0,
                                    PadMode::Zero,
                                    ws,
                                ),
                            };
                            (out, (h, st, None))
                        }
                        Post::Bias(act) => {
                            let b = &params[l.w + l.w_len()..][..l.c_out];
                            scale_shift_act(&mut h, &vec![1.0; l.c_out], b, act, None);
                            let (one, zero) = (vec![1.0; l.c_out], vec![0.0; l.c_out]);
                            let out = match next {
                                Some(next) => next.make(&h, &one, &zero, Act::None, None),
                                None => {
                                    let mut out = ws.map(h.h, h.w, h.c);
                                    out.data.copy_from_slice(&h.data);
                                    out
                                }
                            };
                            (out, (h, (Vec::new(), Vec::new()), None))
                        }
                    }
                }
            };
            saved.push(Saved {
                xin: std::mem::replace(&mut xin, out),
                h: s.0,
                stats: s.1,
                block: s.2,
            });
        }
        Ok((xin, saved))
    }

    /// Adds this image's parameter gradients to `dp` (if `want_params`); returns the input's
    /// gradient if `want_x`.
    #[allow(clippy::too_many_arguments)]
    fn backward_image(
        &self,
        saved: &[Saved],
        g_out: Map,
        back: &[Back],
        dp: &mut [f32],
        (want_x, want_params): (bool, bool),
        x_shape: (usize, usize, usize),
    ) -> candle_core::Result<Option<Map>> {
        let ws = workspace();
        let isa = Isa::detect();
        let p = self.precision;
        let add = |dst: &mut [f32], d: Vec<f32>| {
            for (a, b) in dst.iter_mut().zip(d) {
                *a += b;
            }
        };
        let mut g = g_out;
        for (i, (l, s)) in self.layers.iter().zip(saved).enumerate().rev() {
            let need_input = i > 0 || want_x;
            // The gradient of the layer's prepared input.
            let dxin = match l.kind {
                Kind::Block => {
                    let c = l.c_in;
                    let wl = c * c * 9;
                    let (w1, w2) = (l.w, l.w + wl);
                    let (xp2, h2, s2) = s.block.as_ref().expect("block state");
                    let dh2 = norm_act_backward(h2, &g, &s2.0, &s2.1, 1.0, ws);
                    if want_params {
                        let d = weight_grad_in(xp2, &dh2, 3, 1, isa, p).map_err(cerr)?;
                        add(&mut dp[w2..w2 + wl], d);
                    }
                    let Back::Block(pair) = &back[i] else {
                        unreachable!("packed per layer");
                    };
                    let (back1, back2) = (&pair.0, &pair.1);
                    let dxp2 = back2.forward_sized(&dh2, xp2.h, xp2.w, ws).map_err(cerr)?;
                    ws.recycle(dh2);
                    let mut d2 = ws.map(s.h.h, s.h.w, c);
                    d2.data.fill(0.0);
                    fold_pad_add(&dxp2, 1, 1, 1, 1, PadMode::Reflect, &mut d2);
                    ws.recycle(dxp2);
                    let dh1 = norm_act_backward(&s.h, &d2, &s.stats.0, &s.stats.1, 0.0, ws);
                    ws.recycle(d2);
                    if want_params {
                        let d = weight_grad_in(&s.xin, &dh1, 3, 1, isa, p).map_err(cerr)?;
                        add(&mut dp[w1..w1 + wl], d);
                    }
                    if !need_input {
                        ws.recycle(dh1);
                        ws.recycle(g);
                        return Ok(None);
                    }
                    let (xh, xw) = (s.xin.h, s.xin.w);
                    let dxp1 = back1.forward_sized(&dh1, xh, xw, ws).map_err(cerr)?;
                    ws.recycle(dh1);
                    // The residual: the block's output gradient reaches its input directly;
                    // the convolution path's comes back through the input's padding.
                    let mut prev = g;
                    l.prep.fold(&dxp1, &mut prev);
                    ws.recycle(dxp1);
                    g = prev;
                    continue;
                }
                Kind::Conv { .. } | Kind::ConvT => {
                    let gh = match l.post {
                        Post::Norm(act) => {
                            norm_act_backward(&s.h, &g, &s.stats.0, &s.stats.1, slope(act)?, ws)
                        }
                        Post::Bias(act) => {
                            let mut gh = ws.map(g.h, g.w, g.c);
                            for ((d, &gv), &y) in gh.data.iter_mut().zip(&g.data).zip(&s.h.data) {
                                *d = gv * act_grad(act, y);
                            }
                            if want_params {
                                let off = l.w + l.w_len();
                                let db = &mut dp[off..off + l.c_out];
                                for px in gh.data.chunks_exact(l.c_out) {
                                    for (b, v) in db.iter_mut().zip(px) {
                                        *b += v;
                                    }
                                }
                            }
                            gh
                        }
                    };
                    ws.recycle(g);
                    let d =
                        self.conv_backward(l, s, &gh, &back[i], dp, (need_input, want_params))?;
                    ws.recycle(gh);
                    d
                }
            };
            let dxin = match dxin {
                None => return Ok(None),
                Some(Grad::Unpadded(d)) => {
                    g = d;
                    continue;
                }
                Some(Grad::Prepared(d)) => d,
            };
            // Fold back to the previous layer's output (or the network's input).
            let (h, w, c) = if i == 0 {
                x_shape
            } else {
                let prev = &saved[i - 1];
                let src = match &prev.block {
                    Some((_, h2, _)) => h2,
                    None => &prev.h,
                };
                (src.h, src.w, src.c)
            };
            let mut prev = ws.map(h, w, c);
            prev.data.fill(0.0);
            l.prep.fold(&dxin, &mut prev);
            ws.recycle(dxin);
            g = prev;
        }
        Ok(if want_x { Some(g) } else { None })
    }

    /// A (transposed) convolution layer's weight gradient (added to `dp`) and the gradient of
    /// its prepared input, from the gradient `gh` of its output before the norm / bias.
    fn conv_backward(
        &self,
        l: &Layer,
        s: &Saved,
        gh: &Map,
        back: &Back,
        dp: &mut [f32],
        (need_input, want_params): (bool, bool),
    ) -> candle_core::Result<Option<Grad>> {
        let ws = workspace();
        let isa = Isa::detect();
        let p = self.precision;
        let wl = l.w_len();
        if want_params {
            let d = match l.kind {
                Kind::Conv { k, stride } => weight_grad_in(&s.xin, gh, k, stride, isa, p),
                Kind::ConvT => {
                    // The gradient, padded to cover every tap, plays the input; x the gradient.
                    let need =
                        |n_in: usize, n_out: usize| (2 * (n_in - 1) + 3).saturating_sub(n_out + 1);
                    let (bh, bw) = (need(s.xin.h, gh.h), need(s.xin.w, gh.w));
                    let gp = pad_in(gh, 1, bh, 1, bw, PadMode::Zero, ws);
                    let d = weight_grad_in(&gp, &s.xin, 3, 2, isa, p);
                    ws.recycle(gp);
                    d
                }
                Kind::Block => unreachable!("blocks have their own backward"),
            };
            for (a, b) in dp[l.w..l.w + wl].iter_mut().zip(d.map_err(cerr)?) {
                *a += b;
            }
        }
        if !need_input {
            return Ok(None);
        }
        Ok(Some(match back {
            Back::Planar(planar) => {
                let (planes, ho, wo) = planar.forward_ws(gh, ws).map_err(cerr)?;
                if (ho, wo) != (s.xin.h, s.xin.w) {
                    candle_core::bail!("{}: input gradient {ho}×{wo}", self.name);
                }
                Grad::Prepared(Map::from_chw_in(&planes, l.c_in, ho, wo, ws))
            }
            Back::Prepared(c) => {
                Grad::Prepared(c.forward_sized(gh, s.xin.h, s.xin.w, ws).map_err(cerr)?)
            }
            Back::Unpadded(c) if c.spec().transposed => {
                let pd = l.prep.pad;
                let (h, w) = (s.xin.h - 2 * pd, s.xin.w - 2 * pd);
                Grad::Unpadded(c.forward_sized(gh, h, w, ws).map_err(cerr)?)
            }
            Back::Unpadded(c) => Grad::Unpadded(c.forward_ws(gh, ws).map_err(cerr)?),
            Back::Block(..) => unreachable!("blocks have their own backward"),
        }))
    }

    /// The convolutions of the input gradients, packed once per backward call.
    fn pack_backward(&self, params: &[f32]) -> candle_core::Result<Vec<Back>> {
        let p = self.precision;
        let packed = |spec: ConvSpec, w: &[f32]| Conv::new(spec, w, None, p).map_err(cerr);
        self.layers
            .iter()
            .map(|l| {
                let wv = &params[l.w..l.w + l.w_len()];
                Ok(match l.kind {
                    Kind::Block => {
                        let half = wv.len() / 2;
                        let spec = ConvSpec::new(l.c_in, l.c_in, 3).transposed(0);
                        Back::Block(Box::new((
                            packed(spec, &wv[..half])?,
                            packed(spec, &wv[half..])?,
                        )))
                    }
                    Kind::Conv { k, stride: 1 } if l.c_in <= PlanarConv::MAX_OUT => {
                        // Few input channels (the stem): the input gradient as a planar
                        // convolution of the zero-padded gradient with the flipped kernel.
                        let wf = flipped(wv, l.c_out, l.c_in, k);
                        let pc = PlanarConv::new(
                            l.c_out,
                            l.c_in,
                            k,
                            k - 1,
                            PadMode::Zero,
                            &wf,
                            None,
                            Act::None,
                        );
                        Back::Planar(pc.map_err(cerr)?)
                    }
                    Kind::Conv { k, stride } if l.prep.mode == PadMode::Zero && !l.prep.up2 => {
                        // Zero padding: the transposed convolution with the same padding
                        // gives the unpadded input's gradient directly (fewer outputs than
                        // computing the padded one and dropping its border).
                        let spec = ConvSpec::new(l.c_out, l.c_in, k)
                            .stride(stride)
                            .pad(l.prep.pad, PadMode::Zero)
                            .transposed(0);
                        Back::Unpadded(packed(spec, wv)?)
                    }
                    Kind::Conv { k, stride } => {
                        let spec = ConvSpec::new(l.c_out, l.c_in, k)
                            .stride(stride)
                            .transposed(0);
                        Back::Prepared(packed(spec, wv)?)
                    }
                    Kind::ConvT => {
                        let spec = ConvSpec::new(l.c_out, l.c_in, 3)
                            .stride(2)
                            .pad(1, PadMode::Zero);
                        Back::Unpadded(packed(spec, wv)?)
                    }
                })
            })
            .collect()
    }
}

impl CustomOp2 for ChainOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name)?;
        let params = contiguous_f32(s2, l2, self.name)?;
        let (n, c, h, w) = l1.shape().dims4()?;
        let packed = self.pack(params)?;
        let ws = workspace();
        let per_in = c * h * w;
        let mut out: Vec<f32> = Vec::new();
        let mut dims = (0, 0, 0);
        let mut all = Vec::with_capacity(n);
        for (i, xi) in x.chunks_exact(per_in).enumerate() {
            let xm = Map::from_chw_in(xi, c, h, w, ws);
            let (y, saved) = self.forward_image(&xm, params, &packed)?;
            ws.recycle(xm);
            if out.is_empty() {
                dims = (y.c, y.h, y.w);
                out = vec![0f32; n * y.data.len()];
            }
            let per = y.data.len();
            y.write_chw(&mut out[i * per..][..per]);
            ws.recycle(y);
            if self.keep {
                all.push(saved);
            } else {
                saved.into_iter().for_each(Saved::recycle);
            }
        }
        let mut slot = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned state", self.name)))?;
        for s in std::mem::replace(&mut *slot, all).into_iter().flatten() {
            s.recycle();
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, dims.0, dims.1, dims.2)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let (_, co, ho, wo) = grad.dims4()?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned state", self.name)))?;
        if saved.len() != n {
            candle_core::bail!("{}: the backward pass has no forward state", self.name);
        }
        let grad = grad.contiguous()?;
        let ws = workspace();
        let (want_x, want_params) = (x.track_op(), params.track_op());
        let (per_in, per_out) = (c * h * w, co * ho * wo);
        let mut dp = vec![0f32; if want_params { params.elem_count() } else { 0 }];
        let mut dx = vec![0f32; if want_x { n * per_in } else { 0 }];
        with_f32(&grad, |g| {
            with_f32(params, |pv| -> candle_core::Result<()> {
                let back = self.pack_backward(pv)?;
                for (i, s) in saved.iter().enumerate() {
                    let gm = Map::from_chw_in(&g[i * per_out..][..per_out], co, ho, wo, ws);
                    let wants = (want_x, want_params);
                    if let Some(d) = self.backward_image(s, gm, &back, &mut dp, wants, (h, w, c))? {
                        d.write_chw(&mut dx[i * per_in..][..per_in]);
                        ws.recycle(d);
                    }
                }
                Ok(())
            })
        })???;
        let dev = Device::Cpu;
        let dx = want_x
            .then(|| Tensor::from_vec(dx, (n, c, h, w), &dev))
            .transpose()?;
        let dp = want_params
            .then(|| Tensor::from_vec(dp, params.shape(), &dev))
            .transpose()?;
        Ok((dx, dp))
    }
}

/// Runs `layers` over `x` with the tensors `params` (each flattened, in order) as one op.
fn apply(
    name: &'static str,
    x: &Tensor,
    layers: Vec<Layer>,
    params: &[Tensor],
    eps: f64,
) -> Result<Tensor> {
    let flat = params
        .iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let params = Tensor::cat(&flat, 0)?;
    let keep = x.track_op() || params.track_op();
    Ok(x.contiguous()?.apply_op2(
        &params,
        ChainOp {
            name,
            layers,
            eps: eps as f32,
            precision: training_precision(),
            keep,
            saved: Mutex::new(Vec::new()),
        },
    )?)
}

/// One residual block (`crate::block`) as a chain of one layer: `w1`, `w2` are `(C, C, 3, 3)`.
pub(crate) fn residual_block(x: &Tensor, w1: &Tensor, w2: &Tensor, eps: f64) -> Result<Tensor> {
    let c = w1.dim(0)?;
    let mut v = Layers::default();
    let prep = Prep::pad(1, PadMode::Reflect);
    v.push(Kind::Block, (c, c), prep, Post::Norm(Act::Relu));
    apply(
        "atelier-resnet-block",
        x,
        v.0,
        &[w1.clone(), w2.clone()],
        eps,
    )
}

/// Whether every tensor is f32 on the CPU.
fn f32_cpu(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
}

impl ResnetGenerator {
    /// The generator as one channels-last op (see the module documentation), where it
    /// applies: f32 on the CPU, instance norm with the same eps everywhere, no dropout,
    /// sides that are multiples of 4 (so the two stride-2 levels come back to the input's
    /// size) and at least 8 (reflection by 1 at a quarter of the size, by 3 at full size).
    pub(crate) fn forward_fused(&self, x: &Tensor, ctx: &mut crate::Ctx) -> Result<Option<Tensor>> {
        let cfg = self.config();
        let Ok((_, _, h, w)) = x.dims4() else {
            return Ok(None);
        };
        if !f32_cpu(&[x])
            || h % 4 != 0
            || w % 4 != 0
            || h < 8
            || w < 8
            || (cfg.use_dropout && ctx.train)
        {
            return Ok(None);
        }
        let Some(eps) = self.stem_norm.instance_eps() else {
            return Ok(None);
        };
        let mut params: Vec<Tensor> = vec![self.stem.weight.clone()];
        let mut eps_all = vec![eps];
        for (c, nm) in &self.down {
            params.push(c.weight.clone());
            eps_all.push(nm.instance_eps().unwrap_or(f64::NAN));
            if (c.stride, c.padding, c.groups) != (2, 1, 1) {
                return Ok(None);
            }
        }
        for b in &self.blocks {
            params.push(b.conv1.weight.clone());
            params.push(b.conv2.weight.clone());
            eps_all.push(b.norm1.instance_eps().unwrap_or(f64::NAN));
            eps_all.push(b.norm2.instance_eps().unwrap_or(f64::NAN));
        }
        for (c, nm) in &self.up {
            let ok = match c {
                UpConv::Transposed(t) => {
                    (t.stride, t.padding, t.output_padding) == (2, 1, 1)
                        && cfg.upsampling == Upsampling::Transposed
                }
                UpConv::Resize(r) => {
                    (r.stride, r.padding, r.groups) == (1, 0, 1)
                        && cfg.upsampling == Upsampling::Resize
                }
            };
            if !ok {
                return Ok(None);
            }
            params.push(c.weight().clone());
            eps_all.push(nm.instance_eps().unwrap_or(f64::NAN));
        }
        params.push(self.head.weight.clone());
        let Some(head_bias) = self.head.bias.as_ref() else {
            return Ok(None);
        };
        params.push(head_bias.clone());
        let refs: Vec<&Tensor> = params.iter().collect();
        if eps_all.iter().any(|e| *e != eps) || !f32_cpu(&refs) {
            return Ok(None);
        }
        let layers = generator_layers(
            cfg.input_nc,
            cfg.output_nc,
            cfg.ngf,
            cfg.n_blocks,
            cfg.upsampling,
        );
        let expected: usize = layers.iter().map(Layer::params_len).sum();
        let got: usize = params.iter().map(Tensor::elem_count).sum();
        if got != expected || !ctx.fuse_norms(5 + 2 * cfg.n_blocks) {
            return Ok(None);
        }
        Ok(Some(apply(
            "atelier-resnet-generator",
            x,
            layers,
            &params,
            eps,
        )?))
    }
}

impl NLayerDiscriminator {
    /// The discriminator as one channels-last op (see the module documentation), where it
    /// applies: f32 on the CPU, instance norm with the same eps everywhere, an input large
    /// enough for every layer (the layer-by-layer path reports the others). With
    /// `ctx.frozen` its parameters are constants of the op: gradients reach the input only.
    pub(crate) fn forward_fused(&self, x: &Tensor, ctx: &mut crate::Ctx) -> Result<Option<Tensor>> {
        let cfg = *self.config();
        let Ok((_, _, mut h, mut w)) = x.dims4() else {
            return Ok(None);
        };
        let Some(eps) = self.mids.first().and_then(|(_, nm)| nm.instance_eps()) else {
            return Ok(None);
        };
        if !f32_cpu(&[x])
            || self
                .mids
                .iter()
                .any(|(_, nm)| nm.instance_eps() != Some(eps))
        {
            return Ok(None);
        }
        let layers = discriminator_layers(cfg.input_nc, cfg.ndf, cfg.n_layers);
        for l in &layers {
            let Kind::Conv { k, stride } = l.kind else {
                return Ok(None);
            };
            if h + 2 < k || w + 2 < k {
                return Ok(None);
            }
            (h, w) = ((h + 2 - k) / stride + 1, (w + 2 - k) / stride + 1);
        }
        let convs = std::iter::once(&self.first)
            .chain(self.mids.iter().map(|(c, _)| c))
            .chain(std::iter::once(&self.last));
        let mut params = Vec::new();
        for (c, l) in convs.zip(&layers) {
            let Kind::Conv { stride, .. } = l.kind else {
                return Ok(None);
            };
            if (c.stride, c.padding, c.groups) != (stride, 1, 1) {
                return Ok(None);
            }
            let keep = |t: &Tensor| if ctx.frozen { t.detach() } else { t.clone() };
            params.push(keep(&c.weight));
            if let Post::Bias(_) = l.post {
                match &c.bias {
                    Some(b) => params.push(keep(b)),
                    None => return Ok(None),
                }
            }
        }
        let refs: Vec<&Tensor> = params.iter().collect();
        let expected: usize = layers.iter().map(Layer::params_len).sum();
        let got: usize = params.iter().map(Tensor::elem_count).sum();
        if !f32_cpu(&refs) || got != expected || !ctx.fuse_norms(cfg.n_layers) {
            return Ok(None);
        }
        Ok(Some(apply("atelier-patchgan", x, layers, &params, eps)?))
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::norm::NormKind;
    use crate::resnet::ResnetConfig;
    use crate::seeded::SeededVarMap;

    fn noise(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Largest absolute difference relative to `b`'s largest magnitude.
    pub(crate) fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
    }

    /// Gradients of `Σ y·proj` (a random projection of an output).
    pub(crate) fn projected_grads(y: &Tensor, proj: &Tensor) -> candle_core::backprop::GradStore {
        (y * proj).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// The one-op generator gives the layer-by-layer output and the same gradients for the
    /// input and every weight and the head's bias (the biases before instance norm, whose
    /// gradient is zero up to rounding, get none), for both upsamplings, a batch of two
    /// non-square images and an input that is itself a gradient-tracked tensor.
    #[test]
    fn fused_generator_matches_the_composed_layers() {
        for up in [Upsampling::Transposed, Upsampling::Resize] {
            let cfg = ResnetConfig {
                ngf: 8,
                n_blocks: 2,
                norm: NormKind::Instance,
                upsampling: up,
                ..ResnetConfig::default()
            };
            let vm = SeededVarMap::new(7);
            let g = ResnetGenerator::new(cfg, vm.builder(&Device::Cpu)).unwrap();
            let x = candle_core::Var::from_tensor(&noise(&[2, 3, 16, 12], 1)).unwrap();
            let proj = noise(&[2, 3, 16, 12], 2);
            let mut ctx = crate::Ctx::default();
            let fused = g.forward_fused(&x, &mut ctx).unwrap().expect("applies");
            let want = g.forward_composed(&x, &mut crate::Ctx::default()).unwrap();
            let e = max_rel(&fused, &want);
            assert!(e < 1e-5, "{up:?} forward: {e}");
            let gf = projected_grads(&fused, &proj);
            let gc = projected_grads(&want, &proj);
            let e = max_rel(gf.get(&x).unwrap(), gc.get(&x).unwrap());
            assert!(e < 1e-4, "{up:?} input gradient: {e}");
            let vars = vm.varmap().data().lock().unwrap().clone();
            let mut checked = 0;
            for (name, v) in &vars {
                // The composed path's residual blocks are `crate::block` ops: no bias
                // gradients there either.
                let Some(want) = gc.get(v) else {
                    assert!(
                        name.contains("conv_block") && name.ends_with(".bias"),
                        "{name}"
                    );
                    assert!(gf.get(v).is_none(), "{name}");
                    continue;
                };
                match gf.get(v) {
                    Some(got) => {
                        let e = max_rel(got, want);
                        assert!(e < 1e-4, "{up:?} {name}: {e}");
                        checked += 1;
                    }
                    None => {
                        assert!(name.ends_with(".bias"), "{up:?} {name} has no gradient");
                        let m = want
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        assert!(m < 1e-4, "{up:?} {name}: the composed gradient is {m}");
                    }
                }
            }
            // stem, 2 down, 2 × 2 block convs, 2 up, head weight and bias
            assert_eq!(checked, 1 + 2 + 4 + 2 + 2, "{up:?}");
        }
    }

    /// The one-op PatchGAN gives the layer-by-layer logits and gradients (input, weights,
    /// the first and last layers' biases), and with `ctx.frozen` gradients for the input only.
    #[test]
    fn fused_discriminator_matches_the_composed_layers() {
        use crate::discriminators::NLayerConfig;
        let cfg = NLayerConfig {
            ndf: 8,
            ..NLayerConfig::default()
        };
        for frozen in [false, true] {
            let vm = SeededVarMap::new(9);
            let d = NLayerDiscriminator::new(cfg, vm.builder(&Device::Cpu)).unwrap();
            let x = candle_core::Var::from_tensor(&noise(&[2, 3, 32, 28], 3)).unwrap();
            let ctx = || {
                let mut c = crate::Ctx::default();
                c.frozen = frozen;
                c
            };
            let fused = d.forward_fused(&x, &mut ctx()).unwrap().expect("applies");
            let want = d.forward_composed(&x, &mut ctx()).unwrap();
            assert_eq!(fused.dims(), want.dims());
            let e = max_rel(&fused, &want);
            assert!(e < 1e-5, "frozen {frozen}: forward {e}");
            let proj = noise(fused.dims(), 4);
            let gf = projected_grads(&fused, &proj);
            let gc = projected_grads(&want, &proj);
            let e = max_rel(gf.get(&x).unwrap(), gc.get(&x).unwrap());
            assert!(e < 1e-4, "frozen {frozen}: input gradient {e}");
            let vars = vm.varmap().data().lock().unwrap().clone();
            let mut checked = 0;
            for (name, v) in &vars {
                match (gf.get(v), gc.get(v)) {
                    (Some(got), Some(want)) => {
                        let e = max_rel(got, want);
                        assert!(e < 1e-4, "{name}: {e}");
                        checked += 1;
                    }
                    (None, None) => assert!(frozen, "{name} has no gradient"),
                    (None, Some(want)) => {
                        assert!(name.ends_with(".bias"), "{name} has no gradient");
                        let m = want.abs().unwrap().max_all().unwrap();
                        assert!(m.to_scalar::<f32>().unwrap() < 1e-4, "{name}");
                    }
                    (Some(_), None) => panic!("{name}: a gradient the composed path lacks"),
                }
            }
            // five weights, the first and last biases
            assert_eq!(checked, if frozen { 0 } else { 7 }, "frozen {frozen}");
        }
    }

    /// Inference (nothing tracks gradients, so the op keeps no state and hands its buffers
    /// back after each image) on a batch of three: every image matches the layer-by-layer
    /// output, also when the buffers come back dirty from a previous call.
    #[test]
    fn fused_generator_inference_matches_on_reused_buffers() {
        for up in [Upsampling::Transposed, Upsampling::Resize] {
            let cfg = ResnetConfig {
                ngf: 8,
                n_blocks: 2,
                norm: NormKind::Instance,
                upsampling: up,
                ..ResnetConfig::default()
            };
            let vm = SeededVarMap::new(11);
            let g = ResnetGenerator::new(cfg, vm.builder(&Device::Cpu)).unwrap();
            let want = g
                .forward_composed(&noise(&[3, 3, 16, 12], 5), &mut crate::Ctx::default())
                .unwrap();
            let params: Vec<Tensor> = {
                let mut p = vec![g.stem.weight.detach()];
                p.extend(g.down.iter().map(|(c, _)| c.weight.detach()));
                for b in &g.blocks {
                    p.push(b.conv1.weight.detach());
                    p.push(b.conv2.weight.detach());
                }
                p.extend(g.up.iter().map(|(c, _)| c.weight().detach()));
                p.push(g.head.weight.detach());
                p.push(g.head.bias.as_ref().unwrap().detach());
                p
            };
            for round in 0..3 {
                let layers = generator_layers(3, 3, 8, 2, up);
                let x = noise(&[3, 3, 16, 12], 5);
                let got = apply("test", &x, layers, &params, 1e-5).unwrap();
                for i in 0..3 {
                    let (a, b) = (got.narrow(0, i, 1).unwrap(), want.narrow(0, i, 1).unwrap());
                    let e = max_rel(&a, &b);
                    assert!(e < 1e-5, "{up:?} round {round} image {i}: {e}");
                }
            }
        }
    }
}
