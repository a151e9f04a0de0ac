//! int8 convolutions on AVX512_VNNI: `u8 × i8 → i32` dot products of four (VPDPBUSD), with
//! the scales applied to the i32 sums in fp32.
//!
//! Each input channel `c` is first divided by a smoothing factor `f[c] = √(max|x_c| /
//! max|w_{·,c}|)` and its weights multiplied by it (SmoothQuant, α = ½: exact in real
//! arithmetic, it evens out channels whose ranges differ a hundredfold, which one per-tensor
//! scale resolves badly). Weights are then quantized per output channel and symmetrically,
//! `w·f ≈ s_w[o] · q_w`, `q_w ∈ [-127, 127]`. Activations are quantized on every call, per
//! tensor, from the smoothed input's own range `[lo, hi]` (always including 0) mapped onto
//! `u8 [0, 255]` with a zero point `z_a = round(−lo / s_a)`, so a tile of any image keeps its
//! whole range. The factors (and so the quantized weights) are fixed by a calibration pass
//! ([`crate::map::Workspace::calibrating`]); before one, every call derives them from its
//! own input. A tile's output is then
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

/// Quantized activations: `x_c ≈ f[c] · scale · (q − zero)`, the codes held in a
/// workspace buffer.
#[derive(Debug)]
pub(crate) struct Quantized {
    buf: Vec<f32>,
    len: usize,
    pub scale: f32,
    pub zero: i32,
}

impl Quantized {
    /// The codes.
    pub fn q(&self) -> &[u8] {
        // SAFETY: `buf` holds at least `len` bytes (`len.div_ceil(4)` floats), any bytes
        // are valid `u8`, and u8 needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, self.len)
        }
    }

    /// Gives the codes' buffer back to `ws`.
    pub fn recycle(self, ws: &crate::map::Workspace) {
        ws.give(self.buf);
    }
}

/// Each input channel's smallest and largest value (each at most 0 and at least 0) in
/// channels-last `data` of `ci` channels.
pub(crate) fn channel_range(data: &[f32], ci: usize) -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let chunk = ci * 4096usize.div_ceil(ci).max(1);
    data.par_chunks(chunk)
        .map(|c| {
            let (mut lo, mut hi) = (vec![0f32; ci], vec![0f32; ci]);
            range_chunk(c, &mut lo, &mut hi);
            (lo, hi)
        })
        .reduce(
            || (vec![0f32; ci], vec![0f32; ci]),
            |(mut lo, mut hi), (l, h)| {
                for (a, b) in lo.iter_mut().zip(l) {
                    *a = a.min(b);
                }
                for (a, b) in hi.iter_mut().zip(h) {
                    *a = a.max(b);
                }
                (lo, hi)
            },
        )
}

multiversion! {
/// Widens `lo` and `hi` to each channel's range over the channels-last pixels of `data`.
pub(crate) fn range_chunk(data: &[f32], lo: &mut [f32], hi: &mut [f32]) {
    let ci = lo.len();
    for px in data.chunks_exact(ci) {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(px) {
            *l = l.min(v);
            *h = h.max(v);
        }
    }
}
}

multiversion! {
/// `o = clamp(i·mul + z, 0, 255)` truncated to a byte, per channel of channels-last pixels.
#[allow(unsafe_code)]
pub(crate) fn quantize_chunk(o: &mut [u8], i: &[f32], mul: &[f32], z: f32) {
    let ci = mul.len();
    for (o, i) in o.chunks_exact_mut(ci).zip(i.chunks_exact(ci)) {
        for ((o, &v), &m) in o.iter_mut().zip(i).zip(mul) {
            // `max`/`min` map NaN to 0 and bound the value to [0, 255], so the plain
            // truncating conversion is defined; `as u8` from a float is a saturating one,
            // which the compiler does not vectorize (it was 11 % of an int8 forward pass).
            #[allow(clippy::manual_clamp)] // `clamp` would keep NaN, which must become 0 here
            let c = (v * m + z).max(0.0).min(255.0);
            // SAFETY: `c` is finite and in [0, 255], representable as i32.
            *o = unsafe { c.to_int_unchecked::<i32>() } as u8;
        }
    }
}
}

/// Quantizes channels-last `data` of `ci` channels, whose channel ranges are `range`
/// ([`channel_range`]), per tensor after dividing each channel by its smoothing factor `f[c]`
/// (see [`smoothing`]); the codes go into a buffer of `ws`.
pub(crate) fn quantize(
    data: &[f32],
    ci: usize,
    range: &(Vec<f32>, Vec<f32>),
    f: &[f32],
    ws: &crate::map::Workspace,
) -> Quantized {
    use rayon::prelude::*;
    debug_assert_eq!(f.len(), ci);
    let (lo, hi) = range
        .0
        .iter()
        .zip(&range.1)
        .zip(f)
        .fold((0f32, 0f32), |(lo, hi), ((&l, &h), &f)| {
            (lo.min(l / f), hi.max(h / f))
        });
    let scale = (hi - lo) / 255.0;
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    let zero = ((-lo / scale).round() as i32).clamp(0, 255);
    let mul: Vec<f32> = f.iter().map(|f| 1.0 / (f * scale)).collect();
    let len = data.len();
    let mut buf = ws.take(len.div_ceil(4));
    // SAFETY: the buffer's `len.div_ceil(4)` floats hold `len` bytes; u8 needs no alignment
    // and every byte is written below before it is read.
    #[allow(unsafe_code)]
    let q = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, len) };
    // Rounding half up by truncation (the value is clamped to be non-negative first), which
    // vectorizes where `round` is a library call.
    let z = zero as f32 + 0.5;
    let chunk = ci * 4096usize.div_ceil(ci).max(1);
    q.par_chunks_mut(chunk)
        .zip(data.par_chunks(chunk))
        .for_each(|(o, i)| quantize_chunk(o, i, &mul, z));
    Quantized {
        buf,
        len,
        scale,
        zero,
    }
}

/// Smoothing factors that move quantization difficulty between activations and weights
/// (SmoothQuant, α = ½): `f[c] = √(max|x_c| / max|w_{·,c}|)`. The input is quantized as
/// `x_c / f[c]` and the weights as `w_{·,c} · f[c]`, which leaves the product unchanged in
/// exact arithmetic but evens out channels of very different ranges (a depthwise layer's
/// outputs span a few hundredths in one channel and tens in the next, which a single
/// per-tensor scale resolves badly).
pub(crate) fn smoothing(range: &(Vec<f32>, Vec<f32>), w_absmax: &[f32]) -> Vec<f32> {
    range
        .0
        .iter()
        .zip(&range.1)
        .zip(w_absmax)
        .map(|((&lo, &hi), &w)| {
            let f = (hi.max(-lo) / w).sqrt();
            if f > 0.0 && f.is_finite() {
                f
            } else {
                1.0
            }
        })
        .collect()
}

/// Weights quantized for one call: `[panels][kk/4][lanes][4]` codes, per-lane scales and
/// column prefix sums (see [`pack`]).
#[derive(Debug, Clone)]
pub(crate) struct Weights8 {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
    pub colsum: Vec<i32>,
}

/// Quantizes packed fp32 weights `[panels][kk][lanes]` whose row `k` reads input channel
/// `k % ci`, each row scaled by that channel's factor `f`.
pub(crate) fn quantize_weights(
    packed: &[f32],
    panels: usize,
    kk: usize,
    lanes: usize,
    ci: usize,
    f: &[f32],
) -> Weights8 {
    let mut w = packed.to_vec();
    for (k, row) in w.chunks_exact_mut(lanes).enumerate() {
        let m = f[(k % kk) % ci];
        for v in row {
            *v *= m;
        }
    }
    let scale = weight_scales(&w, panels, kk, lanes);
    let (q, colsum) = pack(&w, &scale, panels, kk, lanes);
    Weights8 { q, scale, colsum }
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

    fn quant(x: &[f32], ci: usize, f: &[f32]) -> Quantized {
        quantize(
            x,
            ci,
            &channel_range(x, ci),
            f,
            &crate::map::Workspace::default(),
        )
    }

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let relu: Vec<f32> = (0..1000)
            .map(|i| (i as f32 * 0.37).sin().max(0.0) * 3.0)
            .collect();
        let q = quant(&relu, 1, &[1.0]);
        assert_eq!(q.zero, 0);
        for (v, &b) in relu.iter().zip(q.q()) {
            let back = q.scale * (i32::from(b) - q.zero) as f32;
            assert!((back - v).abs() <= 0.5 * q.scale + 1e-6, "{v} → {back}");
        }
        // Signed and skewed: the codes span [min, max], with zero exactly representable.
        let signed: Vec<f32> = (0..1000)
            .map(|i| (i as f32 * 0.37).sin() * 2.0 + 1.0)
            .collect();
        let q = quant(&signed, 1, &[1.0]);
        assert!((62..66).contains(&q.zero), "zero point {}", q.zero);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-3, "scale {}", q.scale);
        for (v, &b) in signed.iter().zip(q.q()) {
            let back = q.scale * (i32::from(b) - q.zero) as f32;
            assert!((back - v).abs() <= 0.5 * q.scale + 1e-6, "{v} → {back}");
        }
        // All zeros: a usable scale, all codes at the zero point.
        let z = quant(&[0.0; 10], 1, &[1.0]);
        assert_eq!((z.scale, z.zero), (1.0, 0));
    }

    #[test]
    fn smoothing_evens_out_channels_and_keeps_the_product() {
        // Two channels a thousand times apart in range, with equal weights: after smoothing
        // both use the codes' full range, and quantizing x/f and w·f reproduces x·w.
        let x: Vec<f32> = (0..2000)
            .map(|i| {
                let t = (i / 2) as f32 * 0.01;
                if i % 2 == 0 {
                    t.sin() * 0.01
                } else {
                    t.cos() * 10.0
                }
            })
            .collect();
        let f = smoothing(&channel_range(&x, 2), &[1.0, 1.0]);
        assert!((f[1] / f[0] - 1000f32.sqrt()).abs() < 1.0, "{f:?}");
        let q = quant(&x, 2, &f);
        let small: Vec<u8> = q.q().iter().step_by(2).copied().collect();
        let spread = small.iter().max().unwrap() - small.iter().min().unwrap();
        assert!(spread >= 6, "the small channel keeps {spread} codes");
        let flat = quant(&x, 2, &[1.0, 1.0]);
        let small: Vec<u8> = flat.q().iter().step_by(2).copied().collect();
        assert!(small.iter().max().unwrap() - small.iter().min().unwrap() <= 1);
        for (px, qs) in x.chunks_exact(2).zip(q.q().chunks_exact(2)) {
            for c in 0..2 {
                let back = q.scale * (i32::from(qs[c]) - q.zero) as f32 * f[c];
                assert!((back - px[c]).abs() <= 0.5 * q.scale * f[c] + 1e-5);
            }
        }
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
