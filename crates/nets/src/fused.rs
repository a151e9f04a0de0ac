//! Fused training ops for f32 tensors on the CPU, as candle custom ops with backward passes.
//!
//! Composed from candle primitives, an instance norm with its activation is ~10 tensor ops
//! forward and ~25 backward, each a full pass over memory with its own allocation. Here each
//! is one pass per plane (NCHW planes are contiguous) forward and one backward:
//!
//! * [`instance_norm_act`]: `act((x − μ) / √(σ² + ε))` per `(n, c)` plane, with ReLU,
//!   LeakyReLU or no activation;
//! * [`reflect_pad`]: `nn.ReflectionPad2d`, whose backward folds the border back in.
//!
//! Other dtypes and devices fall back to the composed candle ops (the f64 gradient checks run
//! there), so both paths stay tested against each other (`tests/fused.rs`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// The activation after a normalization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    None,
    Relu,
    /// LeakyReLU with this negative slope (0 < slope < 1).
    Leaky(f64),
}

impl Activation {
    /// Applies it with candle ops.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(x.clone()),
            Activation::Relu => Ok(x.relu()?),
            Activation::Leaky(s) => crate::layers::leaky_relu(x, s),
        }
    }
}

/// Whether the fused ops handle `x` (f32 on the CPU).
pub(crate) fn applies(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() == 4
}

pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: non-contiguous input");
    };
    Ok(&v[a..b])
}

/// Runs `f` on the values of an f32 tensor in row-major order, borrowing a contiguous CPU
/// tensor's storage (no copy) and copying anything else. `f` must not write to `t`.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (st, l) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*st, l.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

/// `Σ f(i)` over `0..n` in 16 f32 lanes (vectorizes; lane sums of ≤ 2^16 terms each keep
/// the rounding error near f64's for the plane sizes of training).
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let full = n / 16 * 16;
    for i0 in (0..full).step_by(16) {
        for (l, acc) in lanes.iter_mut().enumerate() {
            *acc += f(i0 + l);
        }
    }
    let tail: f32 = (full..n).map(&f).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Mean and `1/√(σ² + ε)` of one plane (two passes; the plane is in cache for the second).
fn plane_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len();
    let mean = lane_sum(n, |i| x[i]) / n as f32;
    let var = lane_sum(n, |i| {
        let d = x[i] - mean;
        d * d
    }) / n as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

#[derive(Debug, Clone, Copy)]
struct InstanceNormAct {
    eps: f32,
    act: Activation,
}

impl InstanceNormAct {
    fn slope(&self) -> f32 {
        match self.act {
            Activation::None => 1.0,
            Activation::Relu => 0.0,
            Activation::Leaky(s) => s as f32,
        }
    }
}

impl CustomOp1 for InstanceNormAct {
    fn name(&self) -> &'static str {
        "atelier-instance-norm-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "instance norm")?;
        let (_, _, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let slope = self.slope();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .for_each(|(yp, xp)| {
                let (mean, r) = plane_stats(xp, self.eps);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    let t = (v - mean) * r;
                    *o = if t >= 0.0 { t } else { t * slope };
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let hw = h * w;
        let slope = self.slope();
        let mut dx = vec![0f32; arg.elem_count()];
        with_f32(arg, |x| {
            with_f32(grad, |g| self.backward_planes(x, g, hw, slope, &mut dx))
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

impl InstanceNormAct {
    fn backward_planes(&self, x: &[f32], g: &[f32], hw: usize, slope: f32, dx: &mut [f32]) {
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(g.par_chunks(hw)))
            .for_each(|(dp, (xp, gp))| {
                let (mean, r) = plane_stats(xp, self.eps);
                // gy = dL/dy through the activation; dx = r·(gy − mean(gy) − y·mean(gy·y)).
                let gy = |i: usize| {
                    let y = (xp[i] - mean) * r;
                    if y > 0.0 {
                        gp[i]
                    } else {
                        gp[i] * slope
                    }
                };
                let mg = lane_sum(hw, gy) / hw as f32;
                let mgy = lane_sum(hw, |i| gy(i) * (xp[i] - mean) * r) / hw as f32;
                for ((d, &v), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                    let y = (v - mean) * r;
                    let gy = if y > 0.0 { gv } else { gv * slope };
                    *d = r * (gy - mg - y * mgy);
                }
            });
    }
}

/// `act(InstanceNorm2d(x))` (no affine parameters) on an f32 CPU tensor `(N, C, H, W)`.
pub fn instance_norm_act(x: &Tensor, eps: f64, act: Activation) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(InstanceNormAct {
        eps: eps as f32,
        act,
    })?)
}

#[derive(Debug, Clone, Copy)]
struct ReflectPad {
    p: usize,
}

/// Source index of padded position `i` (reflection without repeating the edge).
fn reflect(i: usize, p: usize, n: usize) -> usize {
    let j = i as isize - p as isize;
    let n = n as isize;
    (if j < 0 {
        -j
    } else if j >= n {
        2 * (n - 1) - j
    } else {
        j
    }) as usize
}

impl CustomOp1 for ReflectPad {
    fn name(&self) -> &'static str {
        "atelier-reflect-pad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "reflect pad")?;
        let (n, c, h, w) = l.shape().dims4()?;
        let p = self.p;
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut y = vec![0f32; n * c * hp * wp];
        y.par_chunks_mut(hp * wp)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for (r, row) in yp.chunks_exact_mut(wp).enumerate() {
                    let src = &xp[reflect(r, p, h) * w..][..w];
                    row[p..p + w].copy_from_slice(src);
                    for i in 0..p {
                        row[i] = src[p - i];
                        row[p + w + i] = src[w - 2 - i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, hp, wp))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let p = self.p;
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut dx = vec![0f32; arg.elem_count()];
        with_f32(grad, |g| {
            dx.par_chunks_mut(h * w)
                .zip(g.par_chunks(hp * wp))
                .for_each(|(dp, gp)| {
                    for (r, row) in gp.chunks_exact(wp).enumerate() {
                        let dst = &mut dp[reflect(r, p, h) * w..][..w];
                        for (d, g) in dst.iter_mut().zip(&row[p..p + w]) {
                            *d += g;
                        }
                        for i in 0..p {
                            dst[p - i] += row[i];
                            dst[w - 2 - i] += row[p + w + i];
                        }
                    }
                });
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `nn.ReflectionPad2d(p)` on an f32 CPU tensor `(N, C, H, W)`; the caller checks `p < H, W`.
pub fn reflect_pad(x: &Tensor, p: usize) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(ReflectPad { p })?)
}
