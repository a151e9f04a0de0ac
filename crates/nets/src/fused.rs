//! Fused training ops for f32 tensors on the CPU, as candle custom ops with backward passes.
//!
//! Composed from candle primitives, an instance norm with its activation is ~10 tensor ops
//! forward and ~25 backward, each a full pass over memory with its own allocation. Here each
//! is one pass per plane (NCHW planes are contiguous) forward and one backward:
//!
//! * [`instance_norm_act`]: `act((x − μ) / √(σ² + ε))` per `(n, c)` plane, with ReLU,
//!   LeakyReLU or no activation;
//! * [`reflect_pad`]: `nn.ReflectionPad2d`, whose backward folds the border back in;
//! * [`bias_add`]: a convolution's per-channel bias, whose backward sums planes;
//! * [`leaky_relu`]: LeakyReLU without a normalization (PatchGAN's first layer).
//!
//! The arithmetic runs in `atelier_kernels::planes`, vectorized for the CPU at hand.
//!
//! Other dtypes and devices fall back to the composed candle ops (the f64 gradient checks run
//! there), so both paths stay tested against each other (`tests/fused.rs`).

use std::sync::OnceLock;

use atelier_kernels::planes;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
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

/// Instance norm + activation. The per-plane statistics of the forward pass are kept for the
/// backward pass (candle hands the same op instance to both).
#[derive(Debug)]
struct InstanceNormAct {
    eps: f32,
    act: Activation,
    stats: OnceLock<Vec<(f32, f32)>>,
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
        let stats: Vec<(f32, f32)> = y
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .map(|(yp, xp)| {
                let (mean, r) = planes::plane_stats(xp, self.eps);
                planes::norm_act_forward(xp, yp, mean, r, slope);
                (mean, r)
            })
            .collect();
        let _ = self.stats.set(stats);
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
            with_f32(grad, |g| {
                let planes = x.len() / hw.max(1);
                let stats = match self.stats.get() {
                    Some(s) if s.len() == planes => s.clone(),
                    _ => x
                        .par_chunks(hw)
                        .map(|xp| planes::plane_stats(xp, self.eps))
                        .collect(),
                };
                dx.par_chunks_mut(hw)
                    .zip(x.par_chunks(hw).zip(g.par_chunks(hw)))
                    .zip(stats)
                    .for_each(|((dp, (xp, gp)), (mean, r))| {
                        planes::norm_act_backward(xp, gp, dp, mean, r, slope)
                    });
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `act(InstanceNorm2d(x))` (no affine parameters) on an f32 CPU tensor `(N, C, H, W)`.
pub fn instance_norm_act(x: &Tensor, eps: f64, act: Activation) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(InstanceNormAct {
        eps: eps as f32,
        act,
        stats: OnceLock::new(),
    })?)
}

/// LeakyReLU (`0 ≤ slope`) on an f32 CPU tensor.
#[derive(Debug, Clone, Copy)]
struct Leaky {
    slope: f32,
}

/// Splits `n` values into chunks for the pool (whole planes are not needed here).
const CHUNK: usize = 1 << 14;

impl CustomOp1 for Leaky {
    fn name(&self) -> &'static str {
        "atelier-leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "leaky relu")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| planes::leaky_forward(xc, yc, self.slope));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut dx = vec![0f32; arg.elem_count()];
        with_f32(arg, |x| {
            with_f32(grad, |g| {
                dx.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(d, (xc, gc))| planes::leaky_backward(xc, gc, d, self.slope));
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `LeakyReLU(slope)` on an f32 CPU tensor (any shape), one pass each way.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Leaky {
        slope: slope as f32,
    })?)
}

/// `x + b` with one value of `b` per channel of an NCHW f32 CPU tensor (a convolution's
/// bias); the backward pass sums the gradient per channel.
#[derive(Debug, Clone, Copy)]
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "atelier-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "bias add")?;
        let b = contiguous_f32(s2, l2, "bias add")?;
        let (_, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        if b.len() != c {
            candle_core::bail!("bias add: {} values for {c} channels", b.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (yp, xp))| planes::add_scalar(xp, yp, b[i % c]));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        let hw = h * w;
        let grad = grad.contiguous()?;
        let gb = if b.track_op() {
            let sums: Vec<f32> = with_f32(&grad, |g| {
                g.par_chunks(hw).map(planes::plane_sum).collect::<Vec<_>>()
            })?;
            let mut db = vec![0f32; c];
            for (i, s) in sums.iter().enumerate() {
                db[i % c] += s;
            }
            Some(Tensor::from_vec(db, c, b.device())?)
        } else {
            None
        };
        Ok((Some(grad), gb))
    }
}

/// `x + b.reshape(1, C, 1, 1)` for an f32 CPU tensor `(N, C, H, W)` and a bias `(C)`.
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)?)
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
