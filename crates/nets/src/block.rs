//! The ResNet generator's residual block as one training op, channels-last inside.
//!
//! Composed from the single-layer ops, a block is eight graph nodes (reflect pad, conv,
//! instance norm + ReLU, reflect pad, conv, instance norm, add) over NCHW tensors, and every
//! convolution converts its input to the kernels' channels-last layout and its output back,
//! in the forward and again in the backward pass. Here the block converts its input once,
//! runs pad → conv → norm + ReLU → pad → conv → norm + residual on channels-last maps (the
//! second padding written by the normalization itself), keeps the maps the backward pass
//! needs, and in the backward pass converts the output gradient once and runs the adjoint of
//! each step on the same layout: the norm backward, the weight gradient from the saved padded
//! input, the input gradient as a transposed convolution and the adjoint of the reflection
//! padding.
//!
//! The convolutions' biases are left out: instance norm subtracts each channel's mean, so a
//! bias before it changes neither the output nor any other gradient, and its own gradient is
//! zero (PyTorch computes it as rounding noise). The biases get no gradient here and keep
//! their values.

use std::sync::Mutex;

use atelier_kernels::grad::weight_grad_in;
use atelier_kernels::map::{fold_pad_add, pad_in};
use atelier_kernels::ops::{channel_stats, norm_act_backward, normalize_into_padded};
use atelier_kernels::{Act, Conv, ConvSpec, Isa, Map, PadMode, Precision};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use crate::conv::{training_precision, workspace};
use crate::fused::{contiguous_f32, with_f32};
use crate::Result;

/// What the backward pass needs of one image.
#[derive(Debug)]
struct Saved {
    /// The input, reflect-padded by 1 (also the residual).
    xp1: Map,
    /// The first convolution's output, its statistics (mean, 1/√(var + eps)).
    h1: Map,
    stats1: (Vec<f32>, Vec<f32>),
    /// ReLU(norm(h1)), reflect-padded by 1: the second convolution's input.
    xp2: Map,
    h2: Map,
    stats2: (Vec<f32>, Vec<f32>),
}

impl Saved {
    fn recycle(self) {
        let ws = workspace();
        for m in [self.xp1, self.h1, self.xp2, self.h2] {
            ws.recycle(m);
        }
    }
}

#[derive(Debug)]
struct ResnetBlockOp {
    eps: f32,
    precision: Precision,
    /// Whether a backward pass can follow (some input tracks gradients): otherwise the
    /// forward pass keeps nothing.
    keep: bool,
    saved: Mutex<Vec<Saved>>,
}

impl Drop for ResnetBlockOp {
    fn drop(&mut self) {
        if let Ok(v) = self.saved.get_mut() {
            for s in v.drain(..) {
                s.recycle();
            }
        }
    }
}

fn cerr(e: atelier_kernels::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Mean and 1/√(var + eps) per channel of a channels-last map.
pub(crate) fn stats(m: &Map, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let (mean, var) = channel_stats(m);
    let rstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    (mean, rstd)
}

/// The scale and shift that normalize with `(mean, rstd)`.
pub(crate) fn coefficients((mean, rstd): &(Vec<f32>, Vec<f32>)) -> (Vec<f32>, Vec<f32>) {
    let shift = mean.iter().zip(rstd).map(|(m, r)| -m * r).collect();
    (rstd.clone(), shift)
}

/// A 3×3 stride-1 convolution of `c` channels (no padding: its input carries it).
fn conv3(c: usize, w: &[f32], precision: Precision) -> candle_core::Result<Conv> {
    Conv::new(ConvSpec::new(c, c, 3), w, None, precision).map_err(cerr)
}

/// The input gradient of a 3×3 stride-1 convolution over its padded input: the transposed
/// convolution of `dy` with the same weights, `(h + 2)×(w + 2)`.
fn conv3_input_grad(w: &[f32], dy: &Map, precision: Precision) -> candle_core::Result<Map> {
    let spec = ConvSpec::new(dy.c, dy.c, 3).transposed(0);
    let conv = Conv::new(spec, w, None, precision).map_err(cerr)?;
    conv.forward_sized(dy, dy.h + 2, dy.w + 2, workspace())
        .map_err(cerr)
}

impl CustomOp3 for ResnetBlockOp {
    fn name(&self) -> &'static str {
        "atelier-resnet-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "resnet block")?;
        let w1 = contiguous_f32(s2, l2, "resnet block")?;
        let w2 = contiguous_f32(s3, l3, "resnet block")?;
        let (n, c, h, wd) = l1.shape().dims4()?;
        let ws = workspace();
        let conv1 = conv3(c, w1, self.precision)?;
        let conv2 = conv3(c, w2, self.precision)?;
        let per = c * h * wd;
        let mut out = vec![0f32; n * per];
        let mut saved = Vec::with_capacity(n);
        for (xi, slot) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            let xm = Map::from_chw_in(xi, c, h, wd, ws);
            let xp1 = pad_in(&xm, 1, 1, 1, 1, PadMode::Reflect, ws);
            ws.recycle(xm);
            let h1 = conv1.forward_padded(&xp1, ws).map_err(cerr)?;
            let stats1 = stats(&h1, self.eps);
            let (sc, sh) = coefficients(&stats1);
            let xp2 =
                normalize_into_padded(&h1, &sc, &sh, Act::Relu, None, 1, PadMode::Reflect, ws);
            let h2 = conv2.forward_padded(&xp2, ws).map_err(cerr)?;
            let stats2 = stats(&h2, self.eps);
            let (sc, sh) = coefficients(&stats2);
            let y = normalize_into_padded(
                &h2,
                &sc,
                &sh,
                Act::None,
                Some((&xp1, 1)),
                0,
                PadMode::Zero,
                ws,
            );
            y.write_chw(slot);
            ws.recycle(y);
            let s = Saved {
                xp1,
                h1,
                stats1,
                xp2,
                h2,
                stats2,
            };
            if self.keep {
                saved.push(s);
            } else {
                s.recycle();
            }
        }
        let mut slot = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("resnet block: poisoned state".into()))?;
        for s in std::mem::replace(&mut *slot, saved) {
            s.recycle();
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("resnet block: poisoned state".into()))?;
        if saved.len() != n {
            candle_core::bail!("resnet block: the backward pass has no forward state");
        }
        let grad = grad.contiguous()?;
        let ws = workspace();
        let isa = Isa::detect();
        let p = self.precision;
        let (want_x, want_w1, want_w2) = (x.track_op(), w1.track_op(), w2.track_op());
        let per = c * h * wd;
        let mut dx = if want_x {
            vec![0f32; n * per]
        } else {
            Vec::new()
        };
        let mut dw1: Vec<f32> = Vec::new();
        let mut dw2: Vec<f32> = Vec::new();
        let accumulate = |acc: &mut Vec<f32>, d: Vec<f32>| {
            if acc.is_empty() {
                *acc = d;
            } else {
                for (a, b) in acc.iter_mut().zip(d) {
                    *a += b;
                }
            }
        };
        with_f32(&grad, |g| {
            with_f32(w1, |w1v| {
                with_f32(w2, |w2v| -> candle_core::Result<()> {
                    for (i, s) in saved.iter().enumerate() {
                        let mut gm = Map::from_chw_in(&g[i * per..][..per], c, h, wd, ws);
                        // Second norm (no activation); the residual passes `gm` to dx.
                        let dh2 = norm_act_backward(&s.h2, &gm, &s.stats2.0, &s.stats2.1, 1.0, ws);
                        if want_w2 {
                            let d = weight_grad_in(&s.xp2, &dh2, 3, 1, isa, p).map_err(cerr)?;
                            accumulate(&mut dw2, d);
                        }
                        let dxp2 = conv3_input_grad(w2v, &dh2, p)?;
                        ws.recycle(dh2);
                        let mut d2 = ws.map(h, wd, c);
                        d2.data.fill(0.0);
                        fold_pad_add(&dxp2, 1, 1, 1, 1, PadMode::Reflect, &mut d2);
                        ws.recycle(dxp2);
                        // First norm + ReLU.
                        let dh1 = norm_act_backward(&s.h1, &d2, &s.stats1.0, &s.stats1.1, 0.0, ws);
                        ws.recycle(d2);
                        if want_w1 {
                            let d = weight_grad_in(&s.xp1, &dh1, 3, 1, isa, p).map_err(cerr)?;
                            accumulate(&mut dw1, d);
                        }
                        if want_x {
                            let dxp1 = conv3_input_grad(w1v, &dh1, p)?;
                            fold_pad_add(&dxp1, 1, 1, 1, 1, PadMode::Reflect, &mut gm);
                            ws.recycle(dxp1);
                            gm.write_chw(&mut dx[i * per..][..per]);
                        }
                        ws.recycle(dh1);
                        ws.recycle(gm);
                    }
                    Ok(())
                })
            })
        })????;
        let dev = Device::Cpu;
        let dx = if want_x {
            Some(Tensor::from_vec(dx, (n, c, h, wd), &dev)?)
        } else {
            None
        };
        let wshape = w1.shape().clone();
        let dw1 = if want_w1 {
            Some(Tensor::from_vec(dw1, wshape.clone(), &dev)?)
        } else {
            None
        };
        let dw2 = if want_w2 {
            Some(Tensor::from_vec(dw2, wshape, &dev)?)
        } else {
            None
        };
        Ok((dx, dw1, dw2))
    }
}

/// Whether [`resnet_block`] runs these tensors: f32 on the CPU, `x` `(N, C, H, W)` with
/// `H, W ≥ 2` (reflection by 1), both weights `(C, C, 3, 3)`.
pub(crate) fn applies(x: &Tensor, w1: &Tensor, w2: &Tensor) -> bool {
    let Ok((_, c, h, w)) = x.dims4() else {
        return false;
    };
    [x, w1, w2]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
        && h >= 2
        && w >= 2
        && w1.dims() == [c, c, 3, 3]
        && w2.dims() == [c, c, 3, 3]
}

/// `x + IN(conv(pad(ReLU(IN(conv(pad(x, 1), w1))), 1), w2))` with reflection padding,
/// instance norm without affine parameters (`eps`), no biases; one graph node whose backward
/// pass gives the gradients of `x`, `w1` and `w2` (see the module documentation). The
/// convolutions run in this thread's training precision.
pub(crate) fn resnet_block(x: &Tensor, w1: &Tensor, w2: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &w1.contiguous()?,
        &w2.contiguous()?,
        ResnetBlockOp {
            eps: eps as f32,
            precision: training_precision(),
            keep: x.track_op() || w1.track_op() || w2.track_op(),
            saved: Mutex::new(Vec::new()),
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::{instance_norm_act, Activation};
    use crate::layers::reflect_pad;
    use candle_core::Var;

    fn noise(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let mut rng = crate::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The block through the single-layer ops (each checked against candle's own ops).
    fn composed(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Tensor {
        let h = crate::conv::conv2d(&reflect_pad(x, 1).unwrap(), w1, 0, 1).unwrap();
        let h = instance_norm_act(&h, 1e-5, Activation::Relu).unwrap();
        let h = crate::conv::conv2d(&reflect_pad(&h, 1).unwrap(), w2, 0, 1).unwrap();
        let h = instance_norm_act(&h, 1e-5, Activation::None).unwrap();
        (x + h).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
    }

    /// Output and the gradients of x, w1 and w2 (of a random projection of the output) match
    /// the composed graph, for a batch of two odd-sized images with more than 16 channels.
    #[test]
    fn block_matches_the_composed_layers() {
        let (n, c, h, w) = (2, 20, 7, 9);
        let x = Var::from_tensor(&noise(&[n, c, h, w], 1, 1.0)).unwrap();
        let w1 = Var::from_tensor(&noise(&[c, c, 3, 3], 2, 0.1)).unwrap();
        let w2 = Var::from_tensor(&noise(&[c, c, 3, 3], 3, 0.1)).unwrap();
        let proj = noise(&[n, c, h, w], 4, 1.0);
        assert!(applies(&x, &w1, &w2));
        let fused = resnet_block(&x, &w1, &w2, 1e-5).unwrap();
        let want = composed(&x, &w1, &w2);
        assert!(
            max_rel(&fused, &want) < 1e-5,
            "forward {}",
            max_rel(&fused, &want)
        );
        let gf = (&fused * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gw = (&want * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("w1", &w1), ("w2", &w2)] {
            let (a, b) = (gf.get(v).unwrap(), gw.get(v).unwrap());
            let e = max_rel(a, b);
            assert!(e < 1e-4, "gradient of {name}: relative error {e}");
        }
    }

    /// A frozen weight gets no gradient and the others are unchanged; a second forward of the
    /// same op state is not needed (each call makes its own op).
    #[test]
    fn constant_weights_get_no_gradient() {
        let (n, c, h, w) = (1, 16, 5, 6);
        let x = Var::from_tensor(&noise(&[n, c, h, w], 5, 1.0)).unwrap();
        let w1 = noise(&[c, c, 3, 3], 6, 0.1);
        let w2 = Var::from_tensor(&noise(&[c, c, 3, 3], 7, 0.1)).unwrap();
        let y = resnet_block(&x, &w1, &w2, 1e-5).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w1).is_none());
        assert!(g.get(&w2).is_some() && g.get(&x).is_some());
    }
}
