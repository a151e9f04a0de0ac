//! Weight gradients of convolutions (training).
//!
//! `dW[o][i][ky][kx] = Σ_pixels x_pad[y·s + ky][x·s + kx][i] · dy[y][x][o]`: a GEMM whose
//! reduction runs over output pixels. Each task owns a block of `(ky, kx, i)` rows of dW, so no
//! reduction between threads is needed; the tile keeps `MR` input channels × 16 (AVX2) or 64
//! (AVX-512) output channels in registers. On AVX2 the pixels are swept in bands of rows that
//! stay in cache while all tasks pass over them.

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
    let use_avx2 = matches!(isa, Isa::Avx2);
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        return Ok(weight_grad_avx2_chunked(xp, dy, k, stride));
    }
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

/// The AVX2 path of [`weight_grad_with_isa`]. The output rows are processed in bands small
/// enough that their slice of `dy` (and of `xp`) stays in cache while every
/// (tap, input-channel block) tile sweeps it; within a band the tiles run in parallel, each
/// adding into its own rows of the gradient. (One sweep of the whole map per tile re-read `dy`
/// from L3 once per tile instead.)
#[cfg(target_arch = "x86_64")]
fn weight_grad_avx2_chunked(xp: &Map, dy: &Map, k: usize, stride: usize) -> Vec<f32> {
    const MR: usize = 6;
    let (ci, co) = (xp.c, dy.c);
    let taps = k * k;
    let blocks = ci.div_ceil(MR);
    // About 128 KiB of dy per band.
    let band = (32 * 1024 / (dy.w * co).max(1)).clamp(1, dy.h);
    // [tap][block][MR][co]: every tile owns one chunk.
    let mut acc = vec![0f32; taps * blocks * MR * co];
    for y0 in (0..dy.h).step_by(band) {
        let rows = band.min(dy.h - y0);
        acc.par_chunks_mut(MR * co)
            .enumerate()
            .for_each(|(c, dst)| {
                let (t, b) = (c / blocks, c % blocks);
                let (ky, kx) = (t / k, t % k);
                let i0 = b * MR;
                let mr = (ci - i0).min(MR);
                let x_off = (((y0 * stride + ky) * xp.w) + kx) * ci + i0;
                // SAFETY: AVX2 and FMA were detected (the caller's ISA). The tile reads x at
                // `(y·stride + ky, p·stride + kx, i0 + m)` for y0 ≤ y < y0 + rows ≤ dy.h,
                // p < dy.w, m < mr (inside `xp` by the caller's size check) and dy at `(y, p, l)`
                // for l < co; it adds into `dst[m·co + l]`, m < mr ≤ MR.
                #[allow(unsafe_code)]
                unsafe {
                    tile_avx2(
                        Sweep {
                            x: xp.data[x_off..].as_ptr(),
                            x_pix: stride * ci,
                            x_row: stride * xp.w * ci,
                            d: dy.data[y0 * dy.w * co..].as_ptr(),
                            d_pix: co,
                            d_row: dy.w * co,
                            rows,
                            cols: dy.w,
                        },
                        mr,
                        co,
                        dst.as_mut_ptr(),
                        co,
                    );
                }
            });
    }
    // [tap][block][m][out] → (out, in, ky, kx).
    let mut dw = vec![0f32; co * ci * taps];
    for t in 0..taps {
        for i in 0..ci {
            let (b, m) = (i / MR, i % MR);
            let src = &acc[((t * blocks + b) * MR + m) * co..][..co];
            for (o, &v) in src.iter().enumerate() {
                dw[(o * ci + i) * taps + t] = v;
            }
        }
    }
    dw
}

/// [`weight_grad`] with the roles swapped: tiles of ≤ 6 output channels × 64 input channels
/// per tap (for `c_out` < 16).
fn weight_grad_by_input(xp: &Map, dy: &Map, k: usize, stride: usize, isa: Isa) -> Result<Vec<f32>> {
    let (ci, co) = (xp.c, dy.c);
    const LANES: usize = 64;
    const MR: usize = 6;
    let use_avx512 = matches!(isa, Isa::Avx512 { .. });
    let use_avx2 = matches!(isa, Isa::Avx2);
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
            #[cfg(target_arch = "x86_64")]
            if use_avx2 {
                // SAFETY: AVX2 and FMA were detected; reads dy at `(y, p, o0 + m)` (m < mr)
                // and x at `(y·stride + ky, p·stride + kx, i0 + l)` (l < n) inside the maps
                // (size checked by the caller), adds into `acc[m·LANES + l]`.
                #[allow(unsafe_code)]
                unsafe {
                    tile_avx2(
                        Sweep {
                            x: dy.data[o0..].as_ptr(),
                            x_pix: co,
                            x_row: dy.w * co,
                            d: xp.data[(ky * xp.w + kx) * ci + i0..].as_ptr(),
                            d_pix: stride * ci,
                            d_row: stride * xp.w * ci,
                            rows: dy.h,
                            cols: dy.w,
                        },
                        mr,
                        n,
                        acc.as_mut_ptr(),
                        LANES,
                    );
                }
                return (t, o0, i0, acc);
            }
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

/// Two operands swept over a `rows × cols` grid of output pixels: `x` (broadcast, `mr`
/// consecutive values per pixel) and `d` (vectors, `n` consecutive values per pixel).
#[cfg(target_arch = "x86_64")]
struct Sweep {
    x: *const f32,
    x_pix: usize,
    x_row: usize,
    d: *const f32,
    d_pix: usize,
    d_row: usize,
    rows: usize,
    cols: usize,
}

/// `acc[m][l] += Σ_(y,p) x[y·x_row + p·x_pix + m] · d[y·d_row + p·d_pix + l]` for m < mr ≤ 6
/// and l < n, on AVX2: the lanes in blocks of 16 (MR × 2 ymm accumulators), each block
/// sweeping every pixel so the accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(s: Sweep, mr: usize, n: usize, acc: *mut f32, acc_stride: usize) {
    macro_rules! go {
        ($($m:literal),*) => {
            match mr {
                $($m => tile_avx2_body::<$m>(&s, n, acc, acc_stride),)*
                _ => unreachable!("mr {mr}"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
// Constant-index loops over the register arrays keep the accumulators in
// registers; iterator borrows pin them to the stack (a 3x slowdown measured).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile_avx2_body<const MR: usize>(s: &Sweep, n: usize, acc: *mut f32, acc_stride: usize) {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for l0 in (0..n).step_by(16) {
        let masks: [__m256i; 2] = std::array::from_fn(|h| {
            let left = n.saturating_sub(l0 + h * 8).min(8) as i32;
            _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane)
        });
        let full = l0 + 16 <= n;
        let mut a = [[_mm256_setzero_ps(); 2]; MR];
        for y in 0..s.rows {
            let xr = s.x.add(y * s.x_row);
            let dr = s.d.add(y * s.d_row + l0);
            if full {
                for p in 0..s.cols {
                    let dp = dr.add(p * s.d_pix);
                    let b = [_mm256_loadu_ps(dp), _mm256_loadu_ps(dp.add(8))];
                    let xp = xr.add(p * s.x_pix);
                    for m in 0..MR {
                        let v = _mm256_set1_ps(*xp.add(m));
                        a[m][0] = _mm256_fmadd_ps(v, b[0], a[m][0]);
                        a[m][1] = _mm256_fmadd_ps(v, b[1], a[m][1]);
                    }
                }
            } else {
                for p in 0..s.cols {
                    let dp = dr.add(p * s.d_pix);
                    let b = [
                        _mm256_maskload_ps(dp, masks[0]),
                        _mm256_maskload_ps(dp.add(8), masks[1]),
                    ];
                    let xp = xr.add(p * s.x_pix);
                    for m in 0..MR {
                        let v = _mm256_set1_ps(*xp.add(m));
                        a[m][0] = _mm256_fmadd_ps(v, b[0], a[m][0]);
                        a[m][1] = _mm256_fmadd_ps(v, b[1], a[m][1]);
                    }
                }
            }
        }
        for m in 0..MR {
            let dst = acc.add(m * acc_stride + l0);
            for h in 0..2 {
                let p = dst.add(h * 8);
                let cur = _mm256_maskload_ps(p, masks[h]);
                _mm256_maskstore_ps(p, masks[h], _mm256_add_ps(cur, a[m][h]));
            }
        }
    }
}
