//! Weight gradients of convolutions (training).
//!
//! `dW[o][i][ky][kx] = Σ_pixels x_pad[y·s + ky][x·s + kx][i] · dy[y][x][o]`: a GEMM whose
//! reduction runs over output pixels. Each task owns a block of `(i, ky, kx)` rows of dW, so no
//! reduction between threads is needed; the tile keeps `MR` input channels × 16 (AVX2) or 32
//! (AVX-512) output channels in registers. Both operands are packed first (the pixels in
//! chunks that stay in cache), and the result is transposed to PyTorch's layout in one pass
//! that reads it in order. The portable path (and layers with fewer than 16 outputs) sweep
//! the maps in place.

use rayon::prelude::*;

use crate::map::{to_bf16, Map};
use crate::micro::Isa;
use crate::{Error, Precision, Result};

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
    weight_grad_in(xp, dy, k, stride, isa, Precision::F32)
}

/// [`weight_grad`] on a given instruction set and precision: [`Precision::Bf16`] multiplies
/// the bf16-rounded input and gradient (summed in f32, `vdpbf16ps` over pairs of pixels)
/// where the CPU has AVX512_BF16 and the layer has at least 16 outputs; everything else
/// (including [`Precision::Int8`]) runs in f32.
pub fn weight_grad_in(
    xp: &Map,
    dy: &Map,
    k: usize,
    stride: usize,
    isa: Isa,
    precision: Precision,
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
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16 && isa.has_bf16() && co >= 16 {
        return Ok(weight_grad_chunked_bf16(xp, dy, k, stride));
    }
    let _ = precision;
    const LANES: usize = 64;
    const MR: usize = 6;
    #[cfg(target_arch = "x86_64")]
    let (use_avx512, use_avx2) = (matches!(isa, Isa::Avx512 { .. }), isa == Isa::Avx2);
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        return Ok(weight_grad_chunked::<16>(xp, dy, k, stride));
    }
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        return Ok(weight_grad_chunked::<32>(xp, dy, k, stride));
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

/// The AVX2 (`NR` = 16) and AVX-512 (`NR` = 32) path of [`weight_grad_with_isa`], as a GEMM `dWᵀ[(tap, i)][o] = Σ_pixels
/// X[pixel][(tap, i)] · dY[pixel][o]` with packed operands (as BLIS does): the output pixels
/// are taken in chunks of `kc`; each chunk's `dy` is packed into 16-lane panels
/// `[o / NR][pixel][NR]` (contiguous streams from L2, shared by both threads), and every task
/// (one tap, a block of 6 input channels) packs its `kc × 6` slice of the input once into L1
/// and runs the 6×`NR` register tile over every panel. Reading `dy` in place instead had a
/// pixel stride of `c_out` floats, which maps successive pixels onto a few L1 sets (8 % of
/// peak for a 256→512 4×4 layer).
#[cfg(target_arch = "x86_64")]
fn weight_grad_chunked<const NR: usize>(xp: &Map, dy: &Map, k: usize, stride: usize) -> Vec<f32> {
    const MR: usize = 6;
    const KC_MAX: usize = 512;
    let (ci, co) = (xp.c, dy.c);
    let taps = k * k;
    let blocks = ci.div_ceil(MR);
    let panels = co.div_ceil(NR);
    let pixels = dy.h * dy.w;
    // About 256 KiB of packed dy per chunk (L2), at most KC_MAX pixels (the packed input
    // slice, kc × 6 floats, stays in L1).
    let kc = (65536 / (panels * NR)).clamp(16, KC_MAX).min(pixels);
    // [block][tap][MR][co]: every task owns one chunk.
    let mut acc = vec![0f32; taps * blocks * MR * co];
    let mut packed = vec![0f32; panels * kc * NR];
    for p0 in (0..pixels).step_by(kc) {
        let np = kc.min(pixels - p0);
        // Pack dy[p0..p0 + np][..] into [panel][pixel][NR], zero lanes past c_out.
        packed
            .par_chunks_mut(kc * NR)
            .enumerate()
            .for_each(|(j, panel)| {
                let (o0, n) = (j * NR, NR.min(co - j * NR));
                for (q, dst) in panel.chunks_exact_mut(NR).take(np).enumerate() {
                    let src = &dy.data[(p0 + q) * co + o0..][..n];
                    dst[..n].copy_from_slice(src);
                    dst[n..].fill(0.0);
                }
            });
        let packed = &packed;
        acc.par_chunks_mut(MR * co)
            .enumerate()
            .for_each(|(c, dst)| {
                let (b, t) = (c / taps, c % taps);
                let (ky, kx) = (t / k, t % k);
                let i0 = b * MR;
                let mr = (ci - i0).min(MR);
                // Pack this tap's input values of channels i0..i0 + mr for the chunk's
                // pixels as [pixel][MR], zero rows past mr.
                let mut a = [0f32; KC_MAX * MR];
                let (mut y, mut x) = (p0 / dy.w, p0 % dy.w);
                for row in a.chunks_exact_mut(MR).take(np) {
                    let off = ((y * stride + ky) * xp.w + x * stride + kx) * ci + i0;
                    if mr == MR {
                        // A fixed-length copy (no memmove call per pixel).
                        for (d, v) in row.iter_mut().zip(&xp.data[off..off + MR]) {
                            *d = *v;
                        }
                    } else {
                        row[..mr].copy_from_slice(&xp.data[off..][..mr]);
                    }
                    x += 1;
                    if x == dy.w {
                        (y, x) = (y + 1, 0);
                    }
                }
                for j in 0..panels {
                    let n = NR.min(co - j * NR);
                    // SAFETY: AVX2 and FMA (NR = 16) or AVX-512F (NR = 32) were detected
                    // (the caller's ISA). `a` holds np · MR floats and the panel np · NR
                    // (np ≤ kc); the tile adds into `dst[m·co + j·NR + l]` for m < mr ≤ MR,
                    // l < n, inside `dst` (MR · co).
                    #[allow(unsafe_code)]
                    unsafe {
                        let (a, b) = (a.as_ptr(), packed[j * kc * NR..].as_ptr());
                        let out = dst.as_mut_ptr().add(j * NR);
                        if NR == 32 {
                            packed_tile_avx512(a, b, np, mr, n, out, co);
                        } else {
                            packed_tile_avx2(a, b, np, mr, n, out, co);
                        }
                    }
                }
            });
    }
    unpack_rows(&acc, ci, co, taps, MR)
}

/// The AVX512_BF16 path of [`weight_grad_in`]: [`weight_grad_chunked`]'s GEMM with both
/// operands rounded to bf16 (once, before packing), packed in pairs of consecutive output
/// pixels (the reduction axis): `dy` as `[o / 32][pixel pair][32][2]`, the input slice as
/// `[pixel pair][MR][2]`; each `vdpbf16ps` adds two pixels' products into the f32 tile. An odd
/// last pixel is paired with zeros.
#[cfg(target_arch = "x86_64")]
fn weight_grad_chunked_bf16(xp: &Map, dy: &Map, k: usize, stride: usize) -> Vec<f32> {
    const MR: usize = 6;
    const NR: usize = 32;
    const KC_MAX: usize = 1024;
    let (ci, co) = (xp.c, dy.c);
    let taps = k * k;
    let blocks = ci.div_ceil(MR);
    let panels = co.div_ceil(NR);
    let pixels = dy.h * dy.w;
    // About 256 KiB of packed dy per chunk, as in f32 (bf16 holds twice the pixels); kc is
    // even so that only a chunk at the end of the map has an odd pixel.
    let kc = ((131072 / (panels * NR)).clamp(16, KC_MAX) & !1).min(pixels.next_multiple_of(2));
    let mut acc = vec![0f32; taps * blocks * MR * co];
    let mut packed = vec![0u16; panels * kc * NR];
    // Both operands rounded once, vectorized (the packing below then only moves bits; the
    // input is read taps times over).
    let (xb, db) = (to_bf16(&xp.data), to_bf16(&dy.data));
    for p0 in (0..pixels).step_by(kc) {
        let np = kc.min(pixels - p0);
        let pairs = np.div_ceil(2);
        packed
            .par_chunks_mut(kc * NR)
            .enumerate()
            .for_each(|(j, panel)| {
                let (o0, n) = (j * NR, NR.min(co - j * NR));
                for (q, dst) in panel.chunks_exact_mut(2 * NR).take(pairs).enumerate() {
                    dst.fill(0);
                    for h in 0..2 {
                        let p = 2 * q + h;
                        if p >= np {
                            break;
                        }
                        let src = &db[(p0 + p) * co + o0..][..n];
                        for (l, v) in src.iter().enumerate() {
                            dst[2 * l + h] = *v;
                        }
                    }
                }
            });
        let packed = &packed;
        acc.par_chunks_mut(MR * co)
            .enumerate()
            .for_each(|(c, dst)| {
                let (b, t) = (c / taps, c % taps);
                let (ky, kx) = (t / k, t % k);
                let i0 = b * MR;
                let mr = (ci - i0).min(MR);
                // This tap's input values of channels i0..i0 + mr, as [pair][MR][2] bf16.
                let mut a = [0u16; KC_MAX * MR];
                let (mut y, mut x) = (p0 / dy.w, p0 % dy.w);
                for p in 0..np {
                    let off = ((y * stride + ky) * xp.w + x * stride + kx) * ci + i0;
                    let row = &mut a[(p / 2) * 2 * MR + (p % 2)..];
                    for (m, v) in xb[off..][..mr].iter().enumerate() {
                        row[2 * m] = *v;
                    }
                    x += 1;
                    if x == dy.w {
                        (y, x) = (y + 1, 0);
                    }
                }
                if np % 2 == 1 {
                    // The odd pixel's partner: zeros (the array may hold an earlier chunk's).
                    for m in 0..MR {
                        a[(np / 2) * 2 * MR + 2 * m + 1] = 0;
                    }
                }
                if mr < MR {
                    for q in 0..pairs {
                        a[q * 2 * MR + 2 * mr..][..2 * (MR - mr)].fill(0);
                    }
                }
                for j in 0..panels {
                    let n = NR.min(co - j * NR);
                    // SAFETY: AVX-512F and AVX512_BF16 were detected (the caller's ISA). `a`
                    // holds pairs · MR · 2 values and the panel pairs · NR · 2 (2·pairs ≤ kc);
                    // the tile adds into `dst[m·co + j·NR + l]` for m < mr ≤ MR, l < n, inside
                    // `dst` (MR · co).
                    #[allow(unsafe_code)]
                    unsafe {
                        let (a, b) = (a.as_ptr(), packed[j * kc * NR..].as_ptr());
                        let out = dst.as_mut_ptr().add(j * NR);
                        packed_tile_avx512_bf16(a, b, pairs, mr, n, out, co);
                    }
                }
            });
    }
    unpack_rows(&acc, ci, co, taps, MR)
}

/// `acc[m][l] += Σ_q Σ_h a[(q·6 + m)·2 + h] · b[(q·32 + l)·2 + h]` (bf16 operands, f32 sums)
/// for q < pairs, stored for m < mr, l < n (≤ 32): the 6×32 AVX512_BF16 register tile.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[allow(clippy::needless_range_loop)] // constant-index loops keep the tile in registers
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn packed_tile_avx512_bf16(
    a: *const u16,
    b: *const u16,
    pairs: usize,
    mr: usize,
    n: usize,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let mut t = [[_mm512_setzero_ps(); 2]; 6];
    for q in 0..pairs {
        let bp = b.add(q * 64);
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const _));
        let ap = a.add(q * 12) as *const i32;
        for m in 0..6 {
            let v: __m512bh = std::mem::transmute(_mm512_set1_epi32(ap.add(m).read_unaligned()));
            t[m][0] = _mm512_dpbf16_ps(t[m][0], v, b0);
            t[m][1] = _mm512_dpbf16_ps(t[m][1], v, b1);
        }
    }
    add_tile_avx512(&t, mr, n, acc, acc_stride);
}

/// `[block of mr][tap][m][out]` (row `(i, tap)`, `out` contiguous) → PyTorch's
/// `(out, in, ky, kx)`, in parallel over the input blocks: each block's rows are one
/// contiguous region, read in order, and for each output they become one contiguous run of
/// `mr · taps` values. (Gathering one cache line per row for every 16 outputs was bound by
/// memory latency: 12 ms for a 256→512 4×4 layer.)
fn unpack_rows(acc: &[f32], ci: usize, co: usize, taps: usize, mr: usize) -> Vec<f32> {
    let blocks = ci.div_ceil(mr);
    let mut dw = vec![0f32; co * ci * taps];
    let out = SyncPtr(dw.as_mut_ptr());
    (0..blocks).into_par_iter().for_each(|b| {
        let out = &out;
        let i0 = b * mr;
        let nb = (ci - i0).min(mr);
        let region = &acc[b * taps * mr * co..][..taps * mr * co];
        // The region transposed to [out][(m, t)], filled in reading order.
        let mut tile = vec![0f32; co * nb * taps];
        for t in 0..taps {
            for m in 0..nb {
                let src = &region[(t * mr + m) * co..][..co];
                for (o, &v) in src.iter().enumerate() {
                    tile[(o * nb + m) * taps + t] = v;
                }
            }
        }
        for (o, run) in tile.chunks_exact(nb * taps).enumerate() {
            // SAFETY: `dw` has co · ci · taps elements and outlives the loop; this writes
            // `[(o·ci + i0)·taps, +nb·taps)`, inside it, and the input blocks
            // (i0..i0 + nb) of different tasks are disjoint, so no two tasks write the
            // same element.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(
                    run.as_ptr(),
                    out.0.add((o * ci + i0) * taps),
                    nb * taps,
                );
            }
        }
    });
    dw
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
struct SyncPtr(*mut f32);
// SAFETY: only used by `unpack_rows`, whose tasks write disjoint elements.
#[allow(unsafe_code)]
unsafe impl Sync for SyncPtr {}

/// `acc[m][l] += Σ_p a[p·6 + m] · b[p·16 + l]` for p < np, stored for m < mr, l < n (≤ 16):
/// the 6×16 AVX2 register tile over packed operands.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[allow(clippy::needless_range_loop)] // constant-index loops keep the tile in registers
#[target_feature(enable = "avx2,fma")]
unsafe fn packed_tile_avx2(
    a: *const f32,
    b: *const f32,
    np: usize,
    mr: usize,
    n: usize,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let mut t = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..np {
        let bp = b.add(p * 16);
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        let ap = a.add(p * 6);
        for m in 0..6 {
            let v = _mm256_broadcast_ss(&*ap.add(m));
            t[m][0] = _mm256_fmadd_ps(v, b0, t[m][0]);
            t[m][1] = _mm256_fmadd_ps(v, b1, t[m][1]);
        }
    }
    if n == 16 {
        // Full panel: plain loads and stores (masked stores are microcoded on AMD).
        for m in 0..mr {
            let dst = acc.add(m * acc_stride);
            for h in 0..2 {
                let q = dst.add(h * 8);
                _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), t[m][h]));
            }
        }
        return;
    }
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; 2] = std::array::from_fn(|h| {
        let left = n.saturating_sub(h * 8).min(8) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane)
    });
    for m in 0..mr {
        let dst = acc.add(m * acc_stride);
        for h in 0..2 {
            let q = dst.add(h * 8);
            let cur = _mm256_maskload_ps(q, masks[h]);
            _mm256_maskstore_ps(q, masks[h], _mm256_add_ps(cur, t[m][h]));
        }
    }
}

/// `acc[m][l] += Σ_p a[p·6 + m] · b[p·32 + l]` for p < np, stored for m < mr, l < n (≤ 32):
/// the 6×32 AVX-512 register tile over packed operands.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[allow(clippy::needless_range_loop)] // constant-index loops keep the tile in registers
#[target_feature(enable = "avx512f")]
unsafe fn packed_tile_avx512(
    a: *const f32,
    b: *const f32,
    np: usize,
    mr: usize,
    n: usize,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let mut t = [[_mm512_setzero_ps(); 2]; 6];
    for p in 0..np {
        let bp = b.add(p * 32);
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        let ap = a.add(p * 6);
        for m in 0..6 {
            let v = _mm512_set1_ps(*ap.add(m));
            t[m][0] = _mm512_fmadd_ps(v, b0, t[m][0]);
            t[m][1] = _mm512_fmadd_ps(v, b1, t[m][1]);
        }
    }
    add_tile_avx512(&t, mr, n, acc, acc_stride);
}

/// `acc[m·acc_stride + l] += t[m][l / 16][l % 16]` for m < mr, l < n (≤ 32): the store of
/// both 6×32 AVX-512 weight-gradient tiles (f32 and bf16).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[allow(clippy::needless_range_loop)] // constant-index loops keep the tile in registers
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_tile_avx512(
    t: &[[std::arch::x86_64::__m512; 2]; 6],
    mr: usize,
    n: usize,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 2] = std::array::from_fn(|h| {
        let left = n.saturating_sub(h * 16).min(16);
        ((1u32 << left) - 1) as u16
    });
    for m in 0..mr {
        let dst = acc.add(m * acc_stride);
        for h in 0..2 {
            let q = dst.add(h * 16);
            if masks[h] == 0xffff {
                _mm512_storeu_ps(q, _mm512_add_ps(_mm512_loadu_ps(q), t[m][h]));
            } else if masks[h] != 0 {
                let cur = _mm512_maskz_loadu_ps(masks[h], q);
                _mm512_mask_storeu_ps(q, masks[h], _mm512_add_ps(cur, t[m][h]));
            }
        }
    }
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
