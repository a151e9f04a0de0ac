//! The whole ResNet generator as one training op, channels-last inside.
//!
//! [`crate::block`] keeps a residual block channels-last, but most of the generator's
//! activation volume is outside the blocks: the 7×7 stem and head, the downsamplings and the
//! upsamplings run at 2–4× the blocks' resolution, and there each layer still converted its
//! input and output between NCHW and channels-last, in the forward and the backward pass.
//! Here the generator converts its (3-channel) input once and its output once; every layer
//! reads the previous one's output as the normalization wrote it — already padded (reflect or
//! zero) or upsampled the way the layer needs — and the backward pass runs each layer's
//! adjoint on the same layout: norm (+ ReLU) backward, weight gradient from the saved
//! (padded) input, input gradient as the transposed convolution (or, for a transposed
//! convolution, the convolution), and the adjoint of the padding / upsampling.
//!
//! The parameters arrive as one flat tensor (the weights in layer order, then the head's
//! bias), so candle's graph has one node for the generator whose backward pass returns the
//! gradient of that tensor (split back to the variables by candle's `cat` backward). As in
//! [`crate::block`], the biases of convolutions followed by instance norm are left out: they
//! change nothing and their gradient is zero.

use std::sync::Mutex;

use atelier_kernels::grad::weight_grad_in;
use atelier_kernels::map::{
    fold_pad_add, fold_upsample2_pad_add, pad_in, upsample_nearest2_padded,
};
use atelier_kernels::ops::{norm_act_backward, normalize_into_padded, scale_shift_act};
use atelier_kernels::{Act, Conv, ConvSpec, Isa, Map, PadMode, PlanarConv, Precision};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

use crate::block::{coefficients, stats};
use crate::conv::{training_precision, workspace};
use crate::fused::{contiguous_f32, with_f32};
use crate::resnet::{ResnetGenerator, Upsampling};
use crate::Result;

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
    #[allow(clippy::too_many_arguments)]
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
    /// Residual block of `c` channels (its input prepared with reflect padding 1).
    Block,
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    kind: Kind,
    c_in: usize,
    c_out: usize,
    prep: Prep,
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
}

/// The layer list of a generator; the head is the last layer and its bias follows the
/// weights.
fn layers(
    input_nc: usize,
    output_nc: usize,
    ngf: usize,
    n_blocks: usize,
    up: Upsampling,
) -> Vec<Layer> {
    let mut v = Vec::new();
    let mut push = |kind, c_in, c_out, prep| {
        let w = v.last().map(|l: &Layer| l.w + l.w_len()).unwrap_or(0);
        v.push(Layer {
            kind,
            c_in,
            c_out,
            prep,
            w,
        });
    };
    push(
        Kind::Conv { k: 7, stride: 1 },
        input_nc,
        ngf,
        Prep::pad(3, PadMode::Reflect),
    );
    for i in 0..2 {
        let c = ngf << i;
        push(
            Kind::Conv { k: 3, stride: 2 },
            c,
            2 * c,
            Prep::pad(1, PadMode::Zero),
        );
    }
    for _ in 0..n_blocks {
        push(
            Kind::Block,
            4 * ngf,
            4 * ngf,
            Prep::pad(1, PadMode::Reflect),
        );
    }
    for i in 0..2 {
        let c = (4 * ngf) >> i;
        match up {
            Upsampling::Transposed => push(Kind::ConvT, c, c / 2, Prep::pad(0, PadMode::Zero)),
            Upsampling::Resize => push(
                Kind::Conv { k: 3, stride: 1 },
                c,
                c / 2,
                Prep {
                    pad: 1,
                    mode: PadMode::Reflect,
                    up2: true,
                },
            ),
        }
    }
    push(
        Kind::Conv { k: 7, stride: 1 },
        ngf,
        output_nc,
        Prep::pad(3, PadMode::Reflect),
    );
    v
}

/// Per-channel mean and 1/√(var + eps) of a norm's input.
type Stats = (Vec<f32>, Vec<f32>);

/// What the backward pass needs of one layer of one image.
#[derive(Debug)]
struct Saved {
    /// The layer's input as prepared (padded / upsampled).
    xin: Map,
    /// The convolution's output before the norm; for the head, the output after tanh.
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
struct ResnetOp {
    layers: Vec<Layer>,
    eps: f32,
    precision: Precision,
    saved: Mutex<Vec<Vec<Saved>>>,
}

impl Drop for ResnetOp {
    fn drop(&mut self) {
        if let Ok(v) = self.saved.get_mut() {
            for s in v.drain(..).flatten() {
                s.recycle();
            }
        }
    }
}

/// A 3×3/k×k convolution over a prepared input.
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

/// The gradient of a convolution's prepared input `(xh, xw)` from its output's gradient.
#[allow(clippy::too_many_arguments)]
fn conv_input_grad(
    c_in: usize,
    k: usize,
    stride: usize,
    w: &[f32],
    gh: &Map,
    (xh, xw): (usize, usize),
    p: Precision,
) -> candle_core::Result<Map> {
    let spec = ConvSpec::new(gh.c, c_in, k).stride(stride).transposed(0);
    Conv::new(spec, w, None, p)
        .map_err(cerr)?
        .forward_sized(gh, xh, xw, workspace())
        .map_err(cerr)
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

impl ResnetOp {
    fn forward_image(
        &self,
        x: &Map,
        params: &[f32],
        convs: &[Conv],
        head: Option<&PlanarConv>,
    ) -> candle_core::Result<(Map, Vec<Saved>)> {
        let ws = workspace();
        let n = self.layers.len();
        let first = self.layers[0].prep;
        let mut xin = pad_in(
            x, first.pad, first.pad, first.pad, first.pad, first.mode, ws,
        );
        let mut saved = Vec::with_capacity(n);
        let mut ci = 0;
        for (i, l) in self.layers.iter().enumerate() {
            let next = self.layers.get(i + 1).map(|l| l.prep);
            match l.kind {
                Kind::Block => {
                    let (c1, c2) = (&convs[ci], &convs[ci + 1]);
                    ci += 2;
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
                    let next = next.ok_or_else(|| candle_core::Error::Msg("block last".into()))?;
                    let out = next.make(&h2, &sc, &sh, Act::None, Some((&xin, 1)));
                    saved.push(Saved {
                        xin: std::mem::replace(&mut xin, out),
                        h: h1,
                        stats: s1,
                        block: Some((xp2, h2, s2)),
                    });
                }
                Kind::Conv { .. } | Kind::ConvT if next.is_none() && head.is_some() => {
                    // The RGB head: few outputs, vectorized along x (bias and tanh inside).
                    let planar = head.expect("checked");
                    let (planes, ho, wo) = planar.forward_ws(&xin, ws).map_err(cerr)?;
                    let y = Map::from_chw_in(&planes, l.c_out, ho, wo, ws);
                    let mut out = ws.map(ho, wo, l.c_out);
                    out.data.copy_from_slice(&y.data);
                    saved.push(Saved {
                        xin: std::mem::replace(&mut xin, out),
                        h: y,
                        stats: (Vec::new(), Vec::new()),
                        block: None,
                    });
                }
                Kind::Conv { .. } | Kind::ConvT => {
                    let c = &convs[ci];
                    ci += 1;
                    let mut h = match l.kind {
                        Kind::ConvT => c.forward_sized(&xin, 2 * xin.h, 2 * xin.w, ws),
                        _ => c.forward_padded(&xin, ws),
                    }
                    .map_err(cerr)?;
                    match next {
                        Some(next) => {
                            let st = stats(&h, self.eps);
                            let (sc, sh) = coefficients(&st);
                            let out = next.make(&h, &sc, &sh, Act::Relu, None);
                            saved.push(Saved {
                                xin: std::mem::replace(&mut xin, out),
                                h,
                                stats: st,
                                block: None,
                            });
                        }
                        None => {
                            // The head: tanh(conv + bias).
                            let off = l.w + l.w_len();
                            let bias = &params[off..off + l.c_out];
                            scale_shift_act(&mut h, &vec![1.0; l.c_out], bias, Act::Tanh, None);
                            let mut y = ws.map(h.h, h.w, h.c);
                            y.data.copy_from_slice(&h.data);
                            saved.push(Saved {
                                xin: std::mem::replace(&mut xin, y),
                                h,
                                stats: (Vec::new(), Vec::new()),
                                block: None,
                            });
                        }
                    }
                }
            }
        }
        Ok((xin, saved))
    }

    /// Adds this image's parameter gradients to `dp`; returns the input's gradient if `want_x`.
    fn backward_image(
        &self,
        saved: &[Saved],
        g_out: Map,
        params: &[f32],
        dp: &mut [f32],
        want_x: bool,
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
        let n = self.layers.len();
        let mut g = g_out;
        for (i, (l, s)) in self.layers.iter().zip(saved).enumerate().rev() {
            let need_input = i > 0 || want_x;
            // The gradient of the layer's prepared input.
            let dxin = match l.kind {
                Kind::Block => {
                    let c = l.c_in;
                    let (w1, w2) = (l.w, l.w + c * c * 9);
                    let (xp2, h2, s2) = s.block.as_ref().expect("block state");
                    let dh2 = norm_act_backward(h2, &g, &s2.0, &s2.1, 1.0, ws);
                    add(
                        &mut dp[w2..w2 + c * c * 9],
                        weight_grad_in(xp2, &dh2, 3, 1, isa, p).map_err(cerr)?,
                    );
                    let dxp2 = conv_input_grad(
                        c,
                        3,
                        1,
                        &params[w2..w2 + c * c * 9],
                        &dh2,
                        (xp2.h, xp2.w),
                        p,
                    )?;
                    ws.recycle(dh2);
                    let mut d2 = ws.map(s.h.h, s.h.w, c);
                    d2.data.fill(0.0);
                    fold_pad_add(&dxp2, 1, 1, 1, 1, PadMode::Reflect, &mut d2);
                    ws.recycle(dxp2);
                    let dh1 = norm_act_backward(&s.h, &d2, &s.stats.0, &s.stats.1, 0.0, ws);
                    ws.recycle(d2);
                    add(
                        &mut dp[w1..w1 + c * c * 9],
                        weight_grad_in(&s.xin, &dh1, 3, 1, isa, p).map_err(cerr)?,
                    );
                    let dxp1 = conv_input_grad(
                        c,
                        3,
                        1,
                        &params[w1..w1 + c * c * 9],
                        &dh1,
                        (s.xin.h, s.xin.w),
                        p,
                    )?;
                    ws.recycle(dh1);
                    // The residual: the block's input is its prepared input's interior, and
                    // reflect padding by 1 is what `Prep::fold` undoes.
                    let mut prev = g;
                    l.prep.fold(&dxp1, &mut prev);
                    ws.recycle(dxp1);
                    g = prev;
                    continue;
                }
                Kind::Conv { k, stride } => {
                    let gh = if i + 1 == n {
                        // tanh: dy/dh = 1 − y²; the bias gets Σ gh.
                        let mut gh = ws.map(g.h, g.w, g.c);
                        for ((d, &gv), &y) in gh.data.iter_mut().zip(&g.data).zip(&s.h.data) {
                            *d = gv * (1.0 - y * y);
                        }
                        let off = l.w + l.w_len();
                        for px in gh.data.chunks_exact(l.c_out) {
                            for (b, v) in dp[off..off + l.c_out].iter_mut().zip(px) {
                                *b += v;
                            }
                        }
                        gh
                    } else {
                        norm_act_backward(&s.h, &g, &s.stats.0, &s.stats.1, 0.0, ws)
                    };
                    ws.recycle(g);
                    let wl = l.w_len();
                    add(
                        &mut dp[l.w..l.w + wl],
                        weight_grad_in(&s.xin, &gh, k, stride, isa, p).map_err(cerr)?,
                    );
                    let d = if need_input && l.c_in <= PlanarConv::MAX_OUT && stride == 1 {
                        // Few input channels (the stem): the input gradient as a planar
                        // convolution of the zero-padded gradient with the flipped kernel.
                        let wf = flipped(&params[l.w..l.w + wl], l.c_out, l.c_in, k);
                        let planar = PlanarConv::new(
                            l.c_out,
                            l.c_in,
                            k,
                            k - 1,
                            PadMode::Zero,
                            &wf,
                            None,
                            Act::None,
                        )
                        .map_err(cerr)?;
                        let (planes, ho, wo) = planar.forward_ws(&gh, ws).map_err(cerr)?;
                        if (ho, wo) != (s.xin.h, s.xin.w) {
                            candle_core::bail!("resnet generator: stem gradient {ho}×{wo}");
                        }
                        Some(Map::from_chw_in(&planes, l.c_in, ho, wo, ws))
                    } else if need_input {
                        Some(conv_input_grad(
                            l.c_in,
                            k,
                            stride,
                            &params[l.w..l.w + wl],
                            &gh,
                            (s.xin.h, s.xin.w),
                            p,
                        )?)
                    } else {
                        None
                    };
                    ws.recycle(gh);
                    d
                }
                Kind::ConvT => {
                    let gh = norm_act_backward(&s.h, &g, &s.stats.0, &s.stats.1, 0.0, ws);
                    ws.recycle(g);
                    let wl = l.w_len();
                    // The gradient, padded to cover every tap, plays the input; x the gradient.
                    let need =
                        |n_in: usize, n_out: usize| (2 * (n_in - 1) + 3).saturating_sub(n_out + 1);
                    let gp = pad_in(
                        &gh,
                        1,
                        need(s.xin.h, gh.h),
                        1,
                        need(s.xin.w, gh.w),
                        PadMode::Zero,
                        ws,
                    );
                    add(
                        &mut dp[l.w..l.w + wl],
                        weight_grad_in(&gp, &s.xin, 3, 2, isa, p).map_err(cerr)?,
                    );
                    ws.recycle(gp);
                    let spec = ConvSpec::new(l.c_out, l.c_in, 3)
                        .stride(2)
                        .pad(1, PadMode::Zero);
                    let conv = Conv::new(spec, &params[l.w..l.w + wl], None, p).map_err(cerr)?;
                    let d = conv.forward_ws(&gh, ws).map_err(cerr)?;
                    ws.recycle(gh);
                    Some(d)
                }
            };
            let Some(dxin) = dxin else {
                return Ok(None);
            };
            // Fold back to the previous layer's output (or the network's input).
            let (h, w, c) = if i == 0 {
                x_shape
            } else {
                let prev = &saved[i - 1];
                let src = if matches!(self.layers[i - 1].kind, Kind::Block) {
                    &prev.block.as_ref().expect("block state").1
                } else {
                    &prev.h
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
}

impl CustomOp2 for ResnetOp {
    fn name(&self) -> &'static str {
        "atelier-resnet-generator"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "resnet generator")?;
        let params = contiguous_f32(s2, l2, "resnet generator")?;
        let (n, c, h, w) = l1.shape().dims4()?;
        let mut convs = Vec::new();
        for l in &self.layers {
            let wv = &params[l.w..l.w + l.w_len()];
            match l.kind {
                Kind::Conv { k, stride } => {
                    convs.push(conv(l.c_in, l.c_out, k, stride, wv, self.precision)?)
                }
                Kind::ConvT => convs.push(
                    Conv::new(convt_spec(l.c_in, l.c_out), wv, None, self.precision)
                        .map_err(cerr)?,
                ),
                Kind::Block => {
                    let half = wv.len() / 2;
                    convs.push(conv(l.c_in, l.c_in, 3, 1, &wv[..half], self.precision)?);
                    convs.push(conv(l.c_in, l.c_in, 3, 1, &wv[half..], self.precision)?);
                }
            }
        }
        let head = match self.layers.last() {
            Some(l)
                if l.c_out <= PlanarConv::MAX_OUT
                    && matches!(l.kind, Kind::Conv { k: _, stride: 1 }) =>
            {
                let Kind::Conv { k, .. } = l.kind else {
                    unreachable!()
                };
                let off = l.w + l.w_len();
                Some(
                    PlanarConv::new(
                        l.c_in,
                        l.c_out,
                        k,
                        0,
                        PadMode::Zero,
                        &params[l.w..off],
                        Some(&params[off..off + l.c_out]),
                        Act::Tanh,
                    )
                    .map_err(cerr)?,
                )
            }
            _ => None,
        };
        let ws = workspace();
        let c_out = self.layers.last().map(|l| l.c_out).unwrap_or(0);
        let (per_in, per_out) = (c * h * w, c_out * h * w);
        let mut out = vec![0f32; n * per_out];
        let mut all = Vec::with_capacity(n);
        for (xi, slot) in x.chunks_exact(per_in).zip(out.chunks_exact_mut(per_out)) {
            let xm = Map::from_chw_in(xi, c, h, w, ws);
            let (y, saved) = self.forward_image(&xm, params, &convs, head.as_ref())?;
            ws.recycle(xm);
            if (y.h, y.w) != (h, w) {
                candle_core::bail!("resnet generator: output {}×{} for input {h}×{w}", y.h, y.w);
            }
            y.write_chw(slot);
            ws.recycle(y);
            all.push(saved);
        }
        let mut slot = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("resnet generator: poisoned state".into()))?;
        for s in std::mem::replace(&mut *slot, all).into_iter().flatten() {
            s.recycle();
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c_out, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("resnet generator: poisoned state".into()))?;
        if saved.len() != n {
            candle_core::bail!("resnet generator: the backward pass has no forward state");
        }
        let grad = grad.contiguous()?;
        let ws = workspace();
        let want_x = x.track_op();
        let c_out = self.layers.last().map(|l| l.c_out).unwrap_or(0);
        let (per_in, per_out) = (c * h * w, c_out * h * w);
        let mut dp = vec![0f32; params.elem_count()];
        let mut dx = if want_x {
            vec![0f32; n * per_in]
        } else {
            Vec::new()
        };
        with_f32(&grad, |g| {
            with_f32(params, |pv| -> candle_core::Result<()> {
                for (i, s) in saved.iter().enumerate() {
                    let gm = Map::from_chw_in(&g[i * per_out..][..per_out], c_out, h, w, ws);
                    if let Some(d) = self.backward_image(s, gm, pv, &mut dp, want_x, (h, w, c))? {
                        d.write_chw(&mut dx[i * per_in..][..per_in]);
                        ws.recycle(d);
                    }
                }
                Ok(())
            })
        })???;
        let dev = Device::Cpu;
        let dx = if want_x {
            Some(Tensor::from_vec(dx, (n, c, h, w), &dev)?)
        } else {
            None
        };
        let dp = if params.track_op() {
            Some(Tensor::from_vec(dp, params.shape(), &dev)?)
        } else {
            None
        };
        Ok((dx, dp))
    }
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
        if x.dtype() != DType::F32
            || !x.device().is_cpu()
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
        let mut weights: Vec<&Tensor> = vec![&self.stem.weight];
        let mut eps_all = vec![eps];
        for (c, nm) in &self.down {
            weights.push(&c.weight);
            eps_all.push(nm.instance_eps().unwrap_or(f64::NAN));
            if (c.stride, c.padding, c.groups) != (2, 1, 1) {
                return Ok(None);
            }
        }
        for b in &self.blocks {
            weights.push(&b.conv1.weight);
            weights.push(&b.conv2.weight);
            eps_all.push(b.norm1.instance_eps().unwrap_or(f64::NAN));
            eps_all.push(b.norm2.instance_eps().unwrap_or(f64::NAN));
        }
        for (c, nm) in &self.up {
            let ok = match c {
                crate::resnet::UpConv::Transposed(t) => {
                    (t.stride, t.padding, t.output_padding) == (2, 1, 1)
                        && cfg.upsampling == Upsampling::Transposed
                }
                crate::resnet::UpConv::Resize(r) => {
                    (r.stride, r.padding, r.groups) == (1, 0, 1)
                        && cfg.upsampling == Upsampling::Resize
                }
            };
            if !ok {
                return Ok(None);
            }
            weights.push(c.weight());
            eps_all.push(nm.instance_eps().unwrap_or(f64::NAN));
        }
        weights.push(&self.head.weight);
        let Some(head_bias) = self.head.bias.as_ref() else {
            return Ok(None);
        };
        if eps_all.iter().any(|e| *e != eps) || weights.iter().any(|t| t.dtype() != DType::F32) {
            return Ok(None);
        }
        let layers = layers(
            cfg.input_nc,
            cfg.output_nc,
            cfg.ngf,
            cfg.n_blocks,
            cfg.upsampling,
        );
        let expected: usize = layers.iter().map(Layer::w_len).sum();
        let got: usize = weights.iter().map(|t| t.elem_count()).sum();
        if got != expected {
            return Ok(None);
        }
        if !ctx.fuse_norms(5 + 2 * cfg.n_blocks) {
            return Ok(None);
        }
        let mut flat = Vec::with_capacity(weights.len() + 1);
        for t in weights {
            flat.push(t.flatten_all()?);
        }
        flat.push(head_bias.flatten_all()?);
        let params = Tensor::cat(&flat, 0)?;
        Ok(Some(x.contiguous()?.apply_op2(
            &params,
            ResnetOp {
                layers,
                eps: eps as f32,
                precision: training_precision(),
                saved: Mutex::new(Vec::new()),
            },
        )?))
    }
}

#[cfg(test)]
mod tests {
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

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
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
            let gf = (&fused * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&want * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
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
}
