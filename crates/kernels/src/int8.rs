//! int8 convolutions on AVX512_VNNI: `u8 × i8 → i32` dot products of four (VPDPBUSD), with
//! the scales applied to the i32 sums in fp32.
//!
//! Weights are quantized once, at load, per output channel and symmetrically:
//! `w ≈ s_w[o] · q_w`, `q_w ∈ [-127, 127]`. Activations are quantized on every call, per
//! tensor, from the input's own range (dynamic quantization: no calibration set, and a tile
//! of a different image cannot fall outside the range it was calibrated on): an input with no
//! negative value (after a ReLU, most layers' inputs) maps `[0, max]` onto `u8 [0, 255]`;
//! one with negative values (the residual stream) maps `[-m, m]` onto `[1, 255]` around a zero
//! point of 128. A tile's output is then
//!
//! `y[o] = s_a · s_w[o] · (Σ_k q_a[k] · q_w[k][o] − z_a · Σ_k q_w[k][o]) + bias[o]`,
//!
//! where the column sums `Σ_k q_w` of every K chunk are kept beside the packed weights.

/// One tile's operands in int8 (see [`crate::micro::Tile`] for the geometry).
pub(crate) struct TileI8 {
    /// Quantized input `u8`, the tile's first pixel.
    pub a: *const u8,
    /// Bytes between consecutive pixels.
    pub a_pix: usize,
    pub segs: *const isize,
    pub nseg: usize,
    /// Bytes per K segment (a multiple of 4).
    pub klen: usize,
    /// Packed weights `[klen·nseg/4][NV·16][4]` of `i8`.
    pub b: *const i8,
    pub c: *mut f32,
    pub c_pix: usize,
    pub nvalid: usize,
    /// `NV·16` values each: the bias (zeros for all but a tile's first K chunk), `s_a·s_w[o]`,
    /// and `z_a · Σ_k q_w[k][o]` over this chunk.
    pub bias: *const f32,
    pub scale: *const f32,
    pub corr: *const i32,
    pub accumulate: bool,
}

/// Whether this CPU has AVX512_VNNI (detected once).
pub fn has_vnni() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Quantized activations: `x ≈ scale · (q − zero)`.
#[derive(Debug)]
pub(crate) struct Quantized {
    pub q: Vec<u8>,
    pub scale: f32,
    pub zero: i32,
}

/// Quantizes `data` per tensor from its own range (see the module docs).
pub(crate) fn quantize(data: &[f32]) -> Quantized {
    use rayon::prelude::*;
    let (lo, hi) = data
        .par_chunks(1 << 14)
        .map(|c| {
            c.iter()
                .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    let (scale, zero) = if lo >= 0.0 {
        (hi / 255.0, 0)
    } else {
        (hi.max(-lo) / 127.0, 128)
    };
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    let mut q = vec![0u8; data.len()];
    q.par_chunks_mut(1 << 14)
        .zip(data.par_chunks(1 << 14))
        .for_each(|(o, i)| {
            for (o, &v) in o.iter_mut().zip(i) {
                *o = ((v * inv).round() as i32 + zero).clamp(0, 255) as u8;
            }
        });
    Quantized { q, scale, zero }
}

/// Per-output-channel weight scales of packed fp32 weights `[panels][kk][lanes]`:
/// `max_k |w| / 127` (1 for an all-zero channel).
pub(crate) fn weight_scales(packed: &[f32], panels: usize, kk: usize, lanes: usize) -> Vec<f32> {
    let mut s = vec![0f32; panels * lanes];
    for p in 0..panels {
        for row in packed[p * kk * lanes..(p + 1) * kk * lanes].chunks_exact(lanes) {
            for (m, v) in s[p * lanes..(p + 1) * lanes].iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    for v in &mut s {
        *v = if *v > 0.0 { *v / 127.0 } else { 1.0 };
    }
    s
}

/// Quantizes and repacks fp32 weights `[panels][kk][lanes]` into `[panels][kk/4][lanes][4]`
/// `i8` (`kk` a multiple of 4), with the prefix sums of each lane's column
/// `[panels][kk/4 + 1][lanes]` (so a chunk of rows `[r0, r1)` sums to
/// `prefix[r1/4] − prefix[r0/4]`).
pub(crate) fn pack(
    packed: &[f32],
    scales: &[f32],
    panels: usize,
    kk: usize,
    lanes: usize,
) -> (Vec<i8>, Vec<i32>) {
    debug_assert_eq!(kk % 4, 0);
    let quads = kk / 4;
    let mut out = vec![0i8; panels * kk * lanes];
    let mut prefix = vec![0i32; panels * (quads + 1) * lanes];
    for p in 0..panels {
        for j in 0..quads {
            for l in 0..lanes {
                let inv = 1.0 / scales[p * lanes + l];
                let mut sum = 0i32;
                for h in 0..4 {
                    let w = packed[(p * kk + 4 * j + h) * lanes + l];
                    let q = (w * inv).round().clamp(-127.0, 127.0) as i8;
                    out[((p * quads + j) * lanes + l) * 4 + h] = q;
                    sum += i32::from(q);
                }
                let at = (p * (quads + 1) + j) * lanes + l;
                prefix[at + lanes] = prefix[at] + sum;
            }
        }
    }
    (out, prefix)
}

/// Runs one int8 tile of `mr` pixels with `nv` vectors of 16 channels: AVX512_VNNI where
/// `vnni`, else the portable loop (tests).
///
/// # Safety
/// Every pointer of `t` must be valid for the reads and writes its description implies.
#[allow(unsafe_code)]
pub(crate) unsafe fn tile(vnni: bool, nv: usize, mr: usize, t: &TileI8) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        macro_rules! dispatch {
            ($nv:literal, [$($mr:literal),*]) => {
                match mr { $($mr => avx512_vnni::<$nv, $mr>(t),)* _ => unreachable!("mr {mr}") }
            };
        }
        match nv {
            1 => dispatch!(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]),
            2 => dispatch!(2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            4 => dispatch!(4, [1, 2, 3, 4, 5, 6]),
            _ => unreachable!("nv {nv}"),
        }
        return;
    }
    let _ = vnni;
    portable(nv, mr, t)
}

#[allow(unsafe_code)]
unsafe fn portable(nv: usize, mr: usize, t: &TileI8) {
    let w = nv * 16;
    let mut acc = [0i32; 16 * 4 * 14];
    let acc = &mut acc[..mr * w];
    let quads = t.klen / 4;
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        let bs = t.b.add(s * t.klen * w);
        for j in 0..quads {
            let b = std::slice::from_raw_parts(bs.add(j * w * 4), w * 4);
            for m in 0..mr {
                let a = std::slice::from_raw_parts(ap.add(m * t.a_pix + 4 * j), 4);
                for (l, o) in acc[m * w..(m + 1) * w].iter_mut().enumerate() {
                    for h in 0..4 {
                        *o += i32::from(a[h]) * i32::from(b[l * 4 + h]);
                    }
                }
            }
        }
    }
    for m in 0..mr {
        let c = t.c.add(m * t.c_pix);
        for l in 0..t.nvalid {
            let v = (acc[m * w + l] - *t.corr.add(l)) as f32 * *t.scale.add(l) + *t.bias.add(l);
            *c.add(l) = if t.accumulate { *c.add(l) + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn avx512_vnni<const NV: usize, const MR: usize>(t: &TileI8) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    let mut bp = t.b;
    let quads = t.klen / 4;
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        for j in 0..quads {
            let mut b = [_mm512_setzero_si512(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = _mm512_loadu_si512(bp.add(v * 64) as *const _);
            }
            bp = bp.add(NV * 64);
            let aj = ap.add(4 * j);
            for (m, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32((aj.add(m * t.a_pix) as *const i32).read_unaligned());
                for v in 0..NV {
                    row[v] = _mm512_dpbusd_epi32(row[v], a, b[v]);
                }
            }
        }
    }
    for (m, row) in acc.iter().enumerate() {
        let c = t.c.add(m * t.c_pix);
        for (v, &sum) in row.iter().enumerate() {
            let n = t.nvalid.saturating_sub(v * 16).min(16);
            if n == 0 {
                continue;
            }
            let mask: __mmask16 = ((1u32 << n) - 1) as u16;
            let cv = c.add(v * 16);
            let corr = _mm512_loadu_si512(t.corr.add(v * 16) as *const _);
            let sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, corr));
            let mut r = _mm512_fmadd_ps(
                sums,
                _mm512_loadu_ps(t.scale.add(v * 16)),
                _mm512_loadu_ps(t.bias.add(v * 16)),
            );
            if t.accumulate {
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, cv));
            }
            _mm512_mask_storeu_ps(cv, mask, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let relu: Vec<f32> = (0..1000)
            .map(|i| (i as f32 * 0.37).sin().max(0.0) * 3.0)
            .collect();
        let q = quantize(&relu);
        assert_eq!(q.zero, 0);
        for (v, &b) in relu.iter().zip(&q.q) {
            let back = q.scale * (i32::from(b) - q.zero) as f32;
            assert!((back - v).abs() <= 0.5 * q.scale + 1e-6, "{v} → {back}");
        }
        let signed: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let q = quantize(&signed);
        assert_eq!(q.zero, 128);
        assert!(q.q.iter().all(|&b| b >= 1));
        for (v, &b) in signed.iter().zip(&q.q) {
            let back = q.scale * (i32::from(b) - q.zero) as f32;
            assert!((back - v).abs() <= 0.5 * q.scale + 1e-6, "{v} → {back}");
        }
        // All zeros: a usable scale, all codes at the zero point.
        let z = quantize(&[0.0; 10]);
        assert_eq!((z.scale, z.zero), (1.0, 0));
    }

    #[test]
    fn packing_keeps_each_quad_and_its_column_sums() {
        let (panels, kk, lanes) = (2, 8, 16);
        let w: Vec<f32> = (0..panels * kk * lanes)
            .map(|i| ((i * 7919) % 255) as f32 / 100.0 - 1.27)
            .collect();
        let s = weight_scales(&w, panels, kk, lanes);
        let (q, prefix) = pack(&w, &s, panels, kk, lanes);
        for p in 0..panels {
            for l in 0..lanes {
                let mut sum = 0;
                for r in 0..kk {
                    let v = q[((p * kk / 4 + r / 4) * lanes + l) * 4 + r % 4];
                    let orig = w[(p * kk + r) * lanes + l];
                    assert!(
                        (f32::from(v) * s[p * lanes + l] - orig).abs()
                            <= 0.5 * s[p * lanes + l] + 1e-6
                    );
                    sum += i32::from(v);
                }
                let at = |j: usize| prefix[(p * (kk / 4 + 1) + j) * lanes + l];
                assert_eq!(at(kk / 4) - at(0), sum);
            }
        }
    }
}
