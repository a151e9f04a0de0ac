//! Weight gradients of convolutions (training).
//!
//! `dW[o][i][ky][kx] = Σ_pixels x_pad[y·s + ky][x·s + kx][i] · dy[y][x][o]`: a GEMM whose
//! reduction runs over output pixels. Each task owns a block of `(ky, kx, i)` rows of dW and
//! sweeps every pixel, so no reduction between threads is needed; the tile keeps `MR` input
//! channels × `NV·16` output channels in registers.

use rayon::prelude::*;

use crate::map::Map;
use crate::micro::Isa;
use crate::{Error, Result};

/// Gradient of a k×k, stride-`stride` convolution's weight (PyTorch layout `(out, in, k, k)`),
/// from its padded input `xp` and the gradient of its output `dy`. The input must cover
/// every tap: `xp.h ≥ (dy.h − 1)·stride + k` (same for widths).
pub fn weight_grad(xp: &Map, dy: &Map, k: usize, stride: usize) -> Result<Vec<f32>> {
    weight_grad_with_isa(xp, dy, k, stride, Isa::detect())
}

/// [`weight_grad`] on a given instruction set.
pub fn weight_grad_with_isa(
    xp: &Map,
    dy: &Map,
    k: usize,
    stride: usize,
    isa: Isa,
) -> Result<Vec<f32>> {
    let (ci, co) = (xp.c, dy.c);
    if k == 0 || stride == 0 || dy.h == 0 || dy.w == 0 {
        return Err(Error::Spec("weight_grad: empty".into()));
    }
    if xp.h < (dy.h - 1) * stride + k || xp.w < (dy.w - 1) * stride + k {
        return Err(Error::Shape(format!(
            "weight_grad: input {}×{} does not cover a {k}×{k} stride-{stride} output {}×{}",
            xp.h, xp.w, dy.h, dy.w
        )));
    }
    // Few output channels (an RGB head, a PatchGAN's last layer): vectorize over the input
    // channels instead, so the lanes are not mostly masked off.
    if co < 16 && ci > co {
        return weight_grad_by_input(xp, dy, k, stride, isa);
    }
    const LANES: usize = 64;
    const MR: usize = 6;
    let use_avx512 = matches!(isa, Isa::Avx512 { .. });
    // Tasks: (tap, block of MR input channels); each writes dW rows [tap][i0..i0+MR][co].
    let blocks = ci.div_ceil(MR);
    let taps = k * k;
    let tasks: Vec<(usize, usize)> = (0..taps)
        .flat_map(|t| (0..blocks).map(move |b| (t, b)))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(t, b)| {
            let (ky, kx) = (t / k, t % k);
            let i0 = b * MR;
            let mr = (ci - i0).min(MR);
            let mut acc = vec![0f32; mr * co];
            for y in 0..dy.h {
                let xrow = &xp.data[((y * stride + ky) * xp.w + kx) * ci + i0..];
                let drow = &dy.data[y * dy.w * co..][..dy.w * co];
                let mut o0 = 0;
                while o0 < co {
                    let n = (co - o0).min(LANES);
                    #[cfg(target_arch = "x86_64")]
                    if use_avx512 {
                        // SAFETY: AVX-512F was detected. The tile reads x at
                        // `p·stride·ci + m` (m < mr, p < dy.w: inside `xrow`, which
                        // covers the row by the size check) and dy at `p·co + o0 + l`
                        // (l < n) inside `drow`; it adds into `acc[m·co + o0 + l]`.
                        #[allow(unsafe_code)]
                        unsafe {
                            tile_avx512(
                                xrow.as_ptr(),
                                stride * ci,
                                mr,
                                drow.as_ptr().add(o0),
                                co,
                                n,
                                dy.w,
                                acc.as_mut_ptr().add(o0),
                                co,
                            );
                        }
                        o0 += n;
                        continue;
                    }
                    for p in 0..dy.w {
                        let xv = &xrow[p * stride * ci..][..mr];
                        let dv = &drow[p * co + o0..][..n];
                        for (m, a) in xv.iter().enumerate() {
                            let dst = &mut acc[m * co + o0..][..n];
                            for (d, g) in dst.iter_mut().zip(dv) {
                                *d += a * g;
                            }
                        }
                    }
                    o0 += n;
                }
            }
            (t, i0, acc)
        })
        .collect();
    // Scatter into (out, in, ky, kx).
    let mut dw = vec![0f32; co * ci * taps];
    for (t, i0, acc) in results {
        let mr = acc.len() / co;
        for m in 0..mr {
            for o in 0..co {
                dw[(o * ci + i0 + m) * taps + t] = acc[m * co + o];
            }
        }
    }
    Ok(dw)
}

/// [`weight_grad`] with the roles swapped: tiles of ≤ 6 output channels × 64 input channels
/// per tap (for `c_out` < 16).
fn weight_grad_by_input(xp: &Map, dy: &Map, k: usize, stride: usize, isa: Isa) -> Result<Vec<f32>> {
    let (ci, co) = (xp.c, dy.c);
    const LANES: usize = 64;
    const MR: usize = 6;
    let use_avx512 = matches!(isa, Isa::Avx512 { .. });
    let taps = k * k;
    let tasks: Vec<(usize, usize, usize)> = (0..taps)
        .flat_map(|t| {
            (0..co.div_ceil(MR))
                .flat_map(move |ob| (0..ci.div_ceil(LANES)).map(move |ib| (t, ob, ib)))
        })
        .collect();
    let results: Vec<(usize, usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(t, ob, ib)| {
            let (ky, kx) = (t / k, t % k);
            let (o0, i0) = (ob * MR, ib * LANES);
            let (mr, n) = ((co - o0).min(MR), (ci - i0).min(LANES));
            let mut acc = vec![0f32; mr * LANES];
            for y in 0..dy.h {
                let grow = &dy.data[y * dy.w * co + o0..];
                let xrow = &xp.data[((y * stride + ky) * xp.w + kx) * ci + i0..];
                #[cfg(target_arch = "x86_64")]
                if use_avx512 {
                    // SAFETY: AVX-512F was detected; reads dy at `p·co + m` (m < mr) and x at
                    // `p·stride·ci + l` (l < n) inside the rows (size checked by the caller),
                    // adds into `acc[m·LANES + l]`.
                    #[allow(unsafe_code)]
                    unsafe {
                        tile_avx512(
                            grow.as_ptr(),
                            co,
                            mr,
                            xrow.as_ptr(),
                            stride * ci,
                            n,
                            dy.w,
                            acc.as_mut_ptr(),
                            LANES,
                        );
                    }
                    continue;
                }
                for p in 0..dy.w {
                    let g = &grow[p * co..][..mr];
                    let xv = &xrow[p * stride * ci..][..n];
                    for (m, a) in g.iter().enumerate() {
                        for (d, x) in acc[m * LANES..][..n].iter_mut().zip(xv) {
                            *d += a * x;
                        }
                    }
                }
            }
            (t, o0, i0, acc)
        })
        .collect();
    let mut dw = vec![0f32; co * ci * taps];
    for (t, o0, i0, acc) in results {
        let mr = acc.len() / LANES;
        for m in 0..mr {
            for l in 0..(ci - i0).min(LANES) {
                dw[((o0 + m) * ci + i0 + l) * taps + t] = acc[m * LANES + l];
            }
        }
    }
    Ok(dw)
}

/// `acc[m][l] += Σ_p x[p·x_pix + m] · d[p·d_pix + l]` for m < mr (≤ 6), l < n (≤ 64).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    x: *const f32,
    x_pix: usize,
    mr: usize,
    d: *const f32,
    d_pix: usize,
    n: usize,
    np: usize,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 4] = std::array::from_fn(|v| {
        let left = n.saturating_sub(v * 16).min(16);
        ((1u32 << left) - 1) as u16
    });
    let mut a = [[_mm512_setzero_ps(); 4]; 6];
    for p in 0..np {
        let dp = d.add(p * d_pix);
        let mut b = [_mm512_setzero_ps(); 4];
        for (v, bv) in b.iter_mut().enumerate() {
            *bv = _mm512_maskz_loadu_ps(masks[v], dp.add(v * 16));
        }
        let xp = x.add(p * x_pix);
        for (m, row) in a.iter_mut().enumerate().take(mr) {
            let s = _mm512_set1_ps(*xp.add(m));
            for v in 0..4 {
                row[v] = _mm512_fmadd_ps(s, b[v], row[v]);
            }
        }
    }
    for (m, row) in a.iter().enumerate().take(mr) {
        let dst = acc.add(m * acc_stride);
        for (v, r) in row.iter().enumerate() {
            if masks[v] == 0 {
                continue;
            }
            let cur = _mm512_maskz_loadu_ps(masks[v], dst.add(v * 16));
            _mm512_mask_storeu_ps(dst.add(v * 16), masks[v], _mm512_add_ps(cur, *r));
        }
    }
}
