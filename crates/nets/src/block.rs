//! The ResNet generator's residual block as one training op, channels-last inside, where the
//! whole generator cannot be one (`crate::chain`: e.g. sides that are not multiples of 4).
//!
//! Composed from the single-layer ops, a block is eight graph nodes (reflect pad, conv,
//! instance norm + ReLU, reflect pad, conv, instance norm, add) over NCHW tensors, and every
//! convolution converts its input to the kernels' channels-last layout and its output back,
//! in the forward and again in the backward pass. As one op it is a chain of one layer (see
//! `crate::chain`): one conversion at each end, the adjoint of each step on the same layout.
//!
//! The convolutions' biases are left out: instance norm subtracts each channel's mean, so a
//! bias before it changes neither the output nor any other gradient, and its own gradient is
//! zero (PyTorch computes it as rounding noise). The biases get no gradient here and keep
//! their values.

use candle_core::{DType, Tensor};

use crate::Result;

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
    crate::chain::residual_block(x, w1, w2, eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::{max_rel, projected_grads};
    use crate::fused::{instance_norm_act, Activation};
    use crate::layers::reflect_pad;
    use candle_core::Device;
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
        let gf = projected_grads(&fused, &proj);
        let gw = projected_grads(&want, &proj);
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
