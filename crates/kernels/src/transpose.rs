//! Matrix transposes for layout conversion (NCHW planes ↔ NHWC maps).
//!
//! `(C, H·W) → (H·W, C)` is [`Map::from_chw`](crate::map::Map::from_chw), the reverse is
//! `to_chw`. Training converts every convolution's input, output and gradients, so these run
//! thousands of times per step. Blocks of 8×8 are transposed in registers on AVX2; the
//! portable path works on the same blocks element by element.

use rayon::prelude::*;

use crate::micro::Isa;

/// Columns of `src` per task: a task writes `COLS` whole rows of `dst`.
const COLS: usize = 64;

/// `dst[j·rows + i] = src[i·cols + j]` for a row-major `rows × cols` matrix.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    transpose_with_isa(src, rows, cols, dst, Isa::detect())
}

/// [`transpose`] on a given instruction set (tests compare them).
pub fn transpose_with_isa(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], isa: Isa) {
    assert_eq!(src.len(), rows * cols, "transpose: source size");
    assert_eq!(dst.len(), rows * cols, "transpose: destination size");
    if rows == 0 || cols == 0 {
        return;
    }
    let work = |(b, out): (usize, &mut [f32])| {
        let j0 = b * COLS;
        let nj = out.len() / rows;
        block(src, rows, cols, j0, nj, out, isa);
    };
    // Small matrices are not worth a task each.
    if rows * cols < 1 << 14 {
        dst.chunks_mut(COLS * rows).enumerate().for_each(work);
    } else {
        dst.par_chunks_mut(COLS * rows).enumerate().for_each(work);
    }
}

/// Columns `j0..j0 + nj` of `src` into `out` (rows `j0..` of the destination).
fn block(src: &[f32], rows: usize, cols: usize, j0: usize, nj: usize, out: &mut [f32], isa: Isa) {
    let full_i = rows / 8 * 8;
    let full_j = nj / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2 | Isa::Avx512 { .. } = isa {
        for i0 in (0..full_i).step_by(8) {
            for jj in (0..full_j).step_by(8) {
                // SAFETY: AVX2 was detected (AVX-512 CPUs have it). Reads rows i0..i0+8,
                // columns j0+jj..+8 of `src` (i0 + 8 ≤ rows, j0 + jj + 8 ≤ j0 + nj ≤ cols);
                // writes rows jj..jj+8, columns i0..i0+8 of `out` (nj × rows).
                #[allow(unsafe_code)]
                unsafe {
                    t8x8_avx2(
                        src.as_ptr().add(i0 * cols + j0 + jj),
                        cols,
                        out.as_mut_ptr().add(jj * rows + i0),
                        rows,
                    );
                }
            }
        }
        scalar(src, cols, (0, full_i), (full_j, nj), j0, rows, out);
        scalar(src, cols, (full_i, rows), (0, nj), j0, rows, out);
        return;
    }
    let _ = isa;
    for i0 in (0..full_i).step_by(8) {
        for jj in (0..full_j).step_by(8) {
            let mut t = [[0f32; 8]; 8];
            for (a, row) in t.iter_mut().enumerate() {
                row.copy_from_slice(&src[(i0 + a) * cols + j0 + jj..][..8]);
            }
            for b in 0..8 {
                let o = &mut out[(jj + b) * rows + i0..][..8];
                for (a, v) in o.iter_mut().enumerate() {
                    *v = t[a][b];
                }
            }
        }
    }
    scalar(src, cols, (0, full_i), (full_j, nj), j0, rows, out);
    scalar(src, cols, (full_i, rows), (0, nj), j0, rows, out);
}

/// The edges: rows `ir`, block columns `jr` (relative to `j0`).
fn scalar(
    src: &[f32],
    cols: usize,
    ir: (usize, usize),
    jr: (usize, usize),
    j0: usize,
    rows: usize,
    out: &mut [f32],
) {
    for i in ir.0..ir.1 {
        for j in jr.0..jr.1 {
            out[j * rows + i] = src[i * cols + j0 + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn t8x8_avx2(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|a| _mm256_loadu_ps(src.add(a * ss)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let o = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (b, v) in o.iter().enumerate() {
        _mm256_storeu_ps(dst.add(b * ds), *v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_match_on_every_isa() {
        let mut isas = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            isas.push(Isa::detect());
        }
        for (r, c) in [
            (1, 1),
            (3, 5),
            (8, 8),
            (9, 17),
            (32, 129),
            (130, 64),
            (64, 300),
        ] {
            let src: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            for &isa in &isas {
                let mut dst = vec![-1f32; r * c];
                transpose_with_isa(&src, r, c, &mut dst, isa);
                for i in 0..r {
                    for j in 0..c {
                        assert_eq!(dst[j * r + i], src[i * c + j], "{r}x{c} {isa:?} ({i},{j})");
                    }
                }
            }
        }
    }
}
