//! Element-wise and per-channel operations on NHWC maps: normalization statistics, fused
//! scale/shift + activation (+ residual), and a vectorizable tanh.

use rayon::prelude::*;

use crate::map::{Map, PadMode, Workspace};

/// Activation after a normalization or convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    None,
    Relu,
    LeakyRelu(f32),
    Tanh,
}

impl Act {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::LeakyRelu(s) => {
                if v >= 0.0 {
                    v
                } else {
                    v * s
                }
            }
            Act::Tanh => tanh(v),
        }
    }
}

/// Runs `$body` with `$f` bound to `act` as a plain closure, so the loop inside is
/// monomorphic (and vectorizes) instead of matching the activation per element.
macro_rules! by_act {
    ($act:expr, |$f:ident| $body:expr) => {
        match $act {
            Act::None => {
                let $f = |v: f32| v;
                $body
            }
            Act::Relu => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            Act::LeakyRelu(slope) => {
                let $f = move |v: f32| if v >= 0.0 { v } else { v * slope };
                $body
            }
            Act::Tanh => {
                let $f = tanh;
                $body
            }
        }
    };
}

/// tanh by the rational approximation Eigen uses for `float` (max error ~1e-7 absolute in
/// [-9, 9]; saturated outside). Branch-free, so loops over it vectorize.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_187_9e-13;
    p = p * x2 - 8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= x;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347e-4;
    q = q * x2 + 2.268_434_7e-3;
    q = q * x2 + 4.893_525e-3;
    let r = p / q;
    if x.abs() < 4e-4 {
        x
    } else {
        r
    }
}

/// Per-channel mean and biased variance over all pixels (instance-norm statistics), in one
/// pass: sums of `x − pivot` and its square (pivot = the first pixel, so a large mean does
/// not cancel the variance away), f32 within a row, f64 across rows.
pub fn channel_stats(x: &Map) -> (Vec<f32>, Vec<f32>) {
    let c = x.c;
    let n = (x.h * x.w) as f64;
    let pivot: Vec<f32> = x.data[..c].to_vec();
    let sums = x
        .data
        .par_chunks(x.w * c)
        .map(|row| {
            let mut s = vec![0f32; 2 * c];
            let (s1, s2) = s.split_at_mut(c);
            stats_row(row, &pivot, s1, s2);
            s.into_iter().map(f64::from).collect::<Vec<f64>>()
        })
        .reduce(|| vec![0f64; 2 * c], add_vec);
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    for ch in 0..c {
        let m = sums[ch] / n;
        mean.push((m + pivot[ch] as f64) as f32);
        var.push((sums[c + ch] / n - m * m).max(0.0) as f32);
    }
    (mean, var)
}

multiversion! {
/// Adds each pixel's `v − pivot` and its square to `s1` and `s2` (channels-last `row`).
pub(crate) fn stats_row(row: &[f32], pivot: &[f32], s1: &mut [f32], s2: &mut [f32]) {
    let c = pivot.len();
    for px in row.chunks_exact(c) {
        for (((a, b), v), p) in s1.iter_mut().zip(s2.iter_mut()).zip(px).zip(pivot) {
            let d = v - p;
            *a += d;
            *b += d * d;
        }
    }
}
}

fn add_vec(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// Scale and shift that normalize with `(mean, var)`: `y = x·scale + shift`.
pub fn norm_coefficients(mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let shift = mean.iter().zip(&scale).map(|(m, s)| -m * s).collect();
    (scale, shift)
}

/// `x = act(x·scale + shift)` per channel, then `+ residual` if given.
pub fn scale_shift_act(
    x: &mut Map,
    scale: &[f32],
    shift: &[f32],
    act: Act,
    residual: Option<&Map>,
) {
    let c = x.c;
    assert!(
        scale.len() == c && shift.len() == c,
        "scale_shift_act: channels"
    );
    if let Some(r) = residual {
        assert_eq!(
            (r.h, r.w, r.c),
            (x.h, x.w, x.c),
            "scale_shift_act: residual shape"
        );
    }
    let row = x.w * c;
    x.data.par_chunks_mut(row).enumerate().for_each(|(y, d)| {
        let rr = residual.map(|r| &r.data[y * row..][..row]);
        norm_row(d, None, rr, scale, shift, act);
    });
}

multiversion! {
/// One row of channels-last pixels: `dst = act(src·scale + shift) [+ residual]` per channel,
/// in place when `src` is `None`.
pub(crate) fn norm_row(
    dst: &mut [f32],
    src: Option<&[f32]>,
    residual: Option<&[f32]>,
    scale: &[f32],
    shift: &[f32],
    act: Act,
) {
    let c = scale.len();
    let shift = &shift[..c];
    match (src, residual) {
        (None, None) => by_act!(act, |f| {
            for d in dst.chunks_exact_mut(c) {
                let d = &mut d[..c];
                for i in 0..c {
                    d[i] = f(d[i] * scale[i] + shift[i]);
                }
            }
        }),
        (None, Some(r)) => by_act!(act, |f| {
            for (d, rp) in dst.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                let (d, rp) = (&mut d[..c], &rp[..c]);
                for i in 0..c {
                    d[i] = f(d[i] * scale[i] + shift[i]) + rp[i];
                }
            }
        }),
        (Some(s), None) => by_act!(act, |f| {
            for (d, s) in dst.chunks_exact_mut(c).zip(s.chunks_exact(c)) {
                let (d, s) = (&mut d[..c], &s[..c]);
                for i in 0..c {
                    d[i] = f(s[i] * scale[i] + shift[i]);
                }
            }
        }),
        (Some(s), Some(r)) => by_act!(act, |f| {
            for ((d, s), rp) in dst
                .chunks_exact_mut(c)
                .zip(s.chunks_exact(c))
                .zip(r.chunks_exact(c))
            {
                let (d, s, rp) = (&mut d[..c], &s[..c], &rp[..c]);
                for i in 0..c {
                    d[i] = f(s[i] * scale[i] + shift[i]) + rp[i];
                }
            }
        }),
    }
}
}

/// `act(x·scale + shift) [+ residual]` written into a new map padded by `pad` on every side
/// (`mode`), ready for the next convolution. `residual` may itself carry a border of
/// `residual_border` pixels (its interior is what is added).
#[allow(clippy::too_many_arguments)]
pub fn normalize_into_padded(
    x: &Map,
    scale: &[f32],
    shift: &[f32],
    act: Act,
    residual: Option<(&Map, usize)>,
    pad: usize,
    mode: PadMode,
    ws: &Workspace,
) -> Map {
    let c = x.c;
    assert!(scale.len() == c && shift.len() == c, "normalize: channels");
    let (scale, shift) = (&scale[..c], &shift[..c]);
    if let Some((r, b)) = residual {
        assert_eq!(
            (r.h, r.w, r.c),
            (x.h + 2 * b, x.w + 2 * b, c),
            "normalize: residual"
        );
    }
    let (h, w) = (x.h, x.w);
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = ws.take(hp * wp * c);
    // Interior rows first (parallel), then the border rows and columns.
    out.par_chunks_mut(wp * c)
        .enumerate()
        .skip(pad)
        .take(h)
        .for_each(|(yp, orow)| {
            let y = yp - pad;
            let src = &x.data[y * w * c..][..w * c];
            let dst = &mut orow[pad * c..(pad + w) * c];
            let rrow = residual.map(|(r, b)| &r.data[((y + b) * r.w + b) * c..][..w * c]);
            norm_row(dst, Some(src), rrow, scale, shift, act);
            for xp in (0..pad).chain(pad + w..wp) {
                match mode {
                    PadMode::Zero => orow[xp * c..(xp + 1) * c].fill(0.0),
                    PadMode::Reflect => {
                        let sx = crate::map::reflect(xp as isize - pad as isize, w) + pad;
                        orow.copy_within(sx * c..(sx + 1) * c, xp * c);
                    }
                }
            }
        });
    for yp in (0..pad).chain(pad + h..hp) {
        match mode {
            PadMode::Zero => out[yp * wp * c..(yp + 1) * wp * c].fill(0.0),
            PadMode::Reflect => {
                let sy = crate::map::reflect(yp as isize - pad as isize, h) + pad;
                out.copy_within(sy * wp * c..(sy + 1) * wp * c, yp * wp * c);
            }
        }
    }
    Map {
        h: hp,
        w: wp,
        c,
        data: out,
    }
}

/// Like [`normalize_into_padded`], but the output is row-planar `(H + 2p, C, W + 2p)` for
/// [`crate::PlanarConv::forward_hcw`]: the transposition rides along with the normalization.
pub fn normalize_into_hcw_padded(
    x: &Map,
    scale: &[f32],
    shift: &[f32],
    act: Act,
    pad: usize,
    mode: PadMode,
    ws: &Workspace,
) -> Vec<f32> {
    let c = x.c;
    assert!(scale.len() == c && shift.len() == c, "normalize: channels");
    let (scale, shift) = (&scale[..c], &shift[..c]);
    let (h, w) = (x.h, x.w);
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = ws.take(hp * c * wp);
    out.par_chunks_mut(c * wp)
        .enumerate()
        .skip(pad)
        .take(h)
        .for_each(|(yp, orow)| {
            let y = yp - pad;
            let src = &x.data[y * w * c..][..w * c];
            // Normalize a block of pixels into a small buffer, then scatter per channel.
            const B: usize = 16;
            let mut buf = vec![0f32; B * c];
            for x0 in (0..w).step_by(B) {
                let n = (w - x0).min(B);
                by_act!(act, |f| {
                    for (d, s) in buf[..n * c]
                        .chunks_exact_mut(c)
                        .zip(src[x0 * c..(x0 + n) * c].chunks_exact(c))
                    {
                        let (d, s) = (&mut d[..c], &s[..c]);
                        for i in 0..c {
                            d[i] = f(s[i] * scale[i] + shift[i]);
                        }
                    }
                });
                for ch in 0..c {
                    let line = &mut orow[ch * wp + pad + x0..][..n];
                    for (i, v) in line.iter_mut().enumerate() {
                        *v = buf[i * c + ch];
                    }
                }
            }
            for ch in 0..c {
                let line = &mut orow[ch * wp..(ch + 1) * wp];
                for xp in (0..pad).chain(pad + w..wp) {
                    line[xp] = match mode {
                        PadMode::Zero => 0.0,
                        PadMode::Reflect => {
                            line[crate::map::reflect(xp as isize - pad as isize, w) + pad]
                        }
                    };
                }
            }
        });
    for yp in (0..pad).chain(pad + h..hp) {
        match mode {
            PadMode::Zero => out[yp * c * wp..(yp + 1) * c * wp].fill(0.0),
            PadMode::Reflect => {
                let sy = crate::map::reflect(yp as isize - pad as isize, h) + pad;
                out.copy_within(sy * c * wp..(sy + 1) * c * wp, yp * c * wp);
            }
        }
    }
    out
}

/// `x = act(x)` in place.
pub fn activate(x: &mut [f32], act: Act) {
    if act == Act::None {
        return;
    }
    x.par_chunks_mut(1 << 14).for_each(|d| {
        for v in d {
            *v = act.apply(*v);
        }
    });
}

/// Input gradient of `act(instance_norm(x))` on an NHWC map (training), from the statistics
/// the forward pass used (`mean`, `rstd = 1/√(var + eps)` per channel) and the output's
/// gradient `g`: with `t = (x − mean)·rstd` and `gy = g` where `t > 0`, `g·slope` elsewhere
/// (`slope` 1 for no activation, 0 for ReLU), `dx = rstd·(gy − mean(gy) − t·mean(gy·t))`.
/// The means run over pixels per channel: f32 within a row, f64 across rows.
pub fn norm_act_backward(
    x: &Map,
    g: &Map,
    mean: &[f32],
    rstd: &[f32],
    slope: f32,
    ws: &Workspace,
) -> Map {
    let c = x.c;
    assert!(
        (g.h, g.w, g.c) == (x.h, x.w, c) && mean.len() == c && rstd.len() == c,
        "norm_act_backward: shapes"
    );
    let row = x.w * c;
    let sums = x
        .data
        .par_chunks(row)
        .zip(g.data.par_chunks(row))
        .map(|(xr, gr)| {
            let mut s = vec![0f32; 2 * c];
            let (s1, s2) = s.split_at_mut(c);
            norm_backward_sums_row(xr, gr, mean, rstd, slope, s1, s2);
            s.into_iter().map(f64::from).collect::<Vec<f64>>()
        })
        .reduce(|| vec![0f64; 2 * c], add_vec);
    let n = (x.h * x.w).max(1) as f64;
    let mg: Vec<f32> = sums[..c].iter().map(|v| (v / n) as f32).collect();
    let mgt: Vec<f32> = sums[c..].iter().map(|v| (v / n) as f32).collect();
    let mut out = ws.map(x.h, x.w, c);
    out.data
        .par_chunks_mut(row)
        .zip(x.data.par_chunks(row).zip(g.data.par_chunks(row)))
        .for_each(|(dr, (xr, gr))| norm_backward_row(xr, gr, dr, mean, rstd, slope, &mg, &mgt));
    out
}

multiversion! {
/// Adds each pixel's `gy` and `gy·t` to `s1` and `s2` (see [`norm_act_backward`]).
fn norm_backward_sums_row(
    x: &[f32],
    g: &[f32],
    mean: &[f32],
    rstd: &[f32],
    slope: f32,
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let c = mean.len();
    let (rstd, s1, s2) = (&rstd[..c], &mut s1[..c], &mut s2[..c]);
    for (xp, gp) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
        let (xp, gp) = (&xp[..c], &gp[..c]);
        for i in 0..c {
            let t = (xp[i] - mean[i]) * rstd[i];
            let gy = if t > 0.0 { gp[i] } else { gp[i] * slope };
            s1[i] += gy;
            s2[i] += gy * t;
        }
    }
}
}

multiversion! {
/// `dx = rstd·(gy − mg − t·mgt)` over one row (see [`norm_act_backward`]).
#[allow(clippy::too_many_arguments)]
fn norm_backward_row(
    x: &[f32],
    g: &[f32],
    dx: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    slope: f32,
    mg: &[f32],
    mgt: &[f32],
) {
    let c = mean.len();
    let (rstd, mg, mgt) = (&rstd[..c], &mg[..c], &mgt[..c]);
    for ((xp, gp), dp) in x.chunks_exact(c).zip(g.chunks_exact(c)).zip(dx.chunks_exact_mut(c)) {
        let (xp, gp, dp) = (&xp[..c], &gp[..c], &mut dp[..c]);
        for i in 0..c {
            let t = (xp[i] - mean[i]) * rstd[i];
            let gy = if t > 0.0 { gp[i] } else { gp[i] * slope };
            dp[i] = rstd[i] * (gy - mg[i] - t * mgt[i]);
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NHWC norm backward gives what the per-plane NCHW one (`planes`, used by the
    /// composed training graph and checked against candle there) gives on the same values.
    #[test]
    fn nhwc_norm_backward_matches_the_planar_one() {
        let (h, w, c) = (5, 6, 19);
        let mut x = Map::zeros(h, w, c);
        let mut g = Map::zeros(h, w, c);
        for (i, v) in x.data.iter_mut().enumerate() {
            *v = ((i * 37) % 23) as f32 * 0.1 - 1.0;
        }
        for (i, v) in g.data.iter_mut().enumerate() {
            *v = ((i * 53) % 17) as f32 * 0.05 - 0.4;
        }
        let (mean, var) = channel_stats(&x);
        let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        for slope in [1.0, 0.0, 0.2] {
            let got = norm_act_backward(&x, &g, &mean, &rstd, slope, &Workspace::default());
            let (xc, gc, dc) = (x.to_chw(), g.to_chw(), got.to_chw());
            for ch in 0..c {
                let plane = ch * h * w..(ch + 1) * h * w;
                let mut want = vec![0f32; h * w];
                crate::planes::norm_act_backward(
                    &xc[plane.clone()],
                    &gc[plane.clone()],
                    &mut want,
                    mean[ch],
                    rstd[ch],
                    slope,
                );
                for (a, b) in dc[plane].iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "slope {slope}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn tanh_is_accurate() {
        let mut worst = 0f32;
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 2e-6, "tanh error {worst}");
        assert_eq!(tanh(100.0), tanh(7.905_311));
        assert!((tanh(100.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn stats_and_normalization() {
        let mut m = Map::zeros(3, 5, 2);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = if i % 2 == 0 {
                i as f32
            } else {
                7.0 - (i as f32) * 0.5
            };
        }
        let (mean, var) = channel_stats(&m);
        for ch in 0..2 {
            let vals: Vec<f64> = m
                .data
                .iter()
                .skip(ch)
                .step_by(2)
                .map(|v| *v as f64)
                .collect();
            let mu = vals.iter().sum::<f64>() / vals.len() as f64;
            let va = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!((mean[ch] as f64 - mu).abs() < 1e-5);
            assert!((var[ch] as f64 - va).abs() < 1e-4);
        }
        let (s, b) = norm_coefficients(&mean, &var, 1e-5);
        let r = m.clone();
        scale_shift_act(&mut m, &s, &b, Act::Relu, Some(&r));
        for (i, v) in m.data.iter().enumerate() {
            let ch = i % 2;
            let want = ((r.data[i] - mean[ch]) / (var[ch] + 1e-5).sqrt()).max(0.0) + r.data[i];
            assert!((v - want).abs() < 1e-4);
        }
    }

    #[test]
    fn hcw_normalization_is_normalize_then_transpose() {
        let mut m = Map::zeros(5, 19, 3);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = ((i * 29) % 17) as f32 - 8.0;
        }
        let (s, b) = (vec![0.5, 2.0, -1.0], vec![0.1, -0.2, 0.3]);
        let ws = Workspace::default();
        for mode in [PadMode::Reflect, PadMode::Zero] {
            let got = normalize_into_hcw_padded(&m, &s, &b, Act::Relu, 3, mode, &ws);
            let mut want = m.clone();
            scale_shift_act(&mut want, &s, &b, Act::Relu, None);
            assert_eq!(got, want.to_hcw_padded(3, mode, &ws));
        }
    }

    #[test]
    fn normalize_into_padded_is_normalize_then_pad() {
        let mut m = Map::zeros(4, 6, 3);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = ((i * 37) % 11) as f32 - 5.0 + 100.0;
        }
        let (mean, var) = channel_stats(&m);
        // Large offsets do not cancel the variance (pivoted sums).
        let vals: Vec<f64> = m.data.iter().step_by(3).map(|v| *v as f64).collect();
        let mu = vals.iter().sum::<f64>() / vals.len() as f64;
        let va = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!((var[0] as f64 - va).abs() < 1e-4, "{} {va}", var[0]);
        let (s, b) = norm_coefficients(&mean, &var, 1e-5);
        let res = crate::map::pad(&m, 2, 2, 2, 2, PadMode::Zero);
        for mode in [PadMode::Reflect, PadMode::Zero] {
            let got = normalize_into_padded(
                &m,
                &s,
                &b,
                Act::LeakyRelu(0.2),
                Some((&res, 2)),
                1,
                mode,
                &Workspace::default(),
            );
            let mut want = m.clone();
            scale_shift_act(&mut want, &s, &b, Act::LeakyRelu(0.2), Some(&m));
            let want = crate::map::pad(&want, 1, 1, 1, 1, mode);
            assert_eq!(got, want);
        }
    }
}
