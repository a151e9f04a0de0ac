//! Register-blocked micro-kernels: one call computes `MR` output pixels × `NV`·16 output
//! channels of an implicit-GEMM convolution.
//!
//! The A operand (input pixels) is read in place from the NHWC input: pixel `m` of the tile
//! starts `m · a_pix` floats after the tile's base, and each K segment (one kernel row, or one
//! tap group of a transposed convolution) is `klen` contiguous floats at `segs[i]` from there.
//! The B operand (weights) is pre-packed at load time as `[K][NV·16]` (zero-padded channels),
//! so the inner loop is `NV` vector loads, `MR` broadcasts and `MR · NV` FMAs.
//!
//! Three instruction sets: AVX-512F (and AVX512_BF16 for bf16), AVX2+FMA, and a portable
//! fallback. All three share one generic body; the SIMD ones are explicit intrinsics.

/// Instruction sets the kernels can use, detected at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F; `bf16` when the CPU also has AVX512_BF16.
    Avx512 { bf16: bool },
    /// AVX2 with FMA.
    Avx2,
    /// Plain Rust (whatever the compiler auto-vectorizes for the build target).
    Portable,
}

impl Isa {
    /// The best instruction set of this CPU (`ATELIER_ISA=portable|avx2|avx512` lowers it,
    /// for tests and comparisons). Detected once per process: layers are built on every
    /// training step.
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::best();
            match std::env::var("ATELIER_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if best != Isa::Portable => Isa::Avx2,
                _ => best,
            }
        })
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512 {
                    bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether bf16 dot products run natively.
    pub fn has_bf16(self) -> bool {
        matches!(self, Isa::Avx512 { bf16: true })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 { bf16: true } => "avx512+bf16",
            Isa::Avx512 { bf16: false } => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Largest tile height for `nv` vectors of 16 channels (keeps the accumulators in
    /// registers: 32 zmm on AVX-512, 16 ymm on AVX2).
    pub fn max_mr(self, nv: usize) -> usize {
        match (self, nv) {
            (Isa::Avx2, 1) => 6,
            (Isa::Avx2, 2) => 3,
            (Isa::Avx2, _) => 1,
            (_, 1) => 14,
            (_, 2) => 12,
            _ => 6,
        }
    }
}

/// One tile's operands. Pointers stay inside the slices the caller owns; see `conv.rs`.
pub(crate) struct Tile {
    /// A base (the tile's first pixel, before segment offsets).
    pub a: *const f32,
    /// Floats between consecutive pixels of the tile in A.
    pub a_pix: usize,
    /// Offsets of the K segments from `a`, in floats.
    pub segs: *const isize,
    pub nseg: usize,
    /// Floats per segment.
    pub klen: usize,
    /// Packed weights `[nseg·klen][NV·16]`.
    pub b: *const f32,
    /// Output of the first pixel; pixel `m` at `c + m · c_pix`.
    pub c: *mut f32,
    pub c_pix: usize,
    /// Valid channels in this panel (≤ NV·16); the rest are not stored.
    pub nvalid: usize,
    /// Bias of the panel's channels (NV·16 floats, zero-padded).
    pub bias: *const f32,
    /// Accumulate into the existing output instead of overwriting it.
    pub accumulate: bool,
}

/// The same tile in bf16: A and B hold bf16 pairs, `klen` counts bf16 values (even).
pub(crate) struct TileBf16 {
    pub a: *const u16,
    pub a_pix: usize,
    pub segs: *const isize,
    pub nseg: usize,
    pub klen: usize,
    /// Packed weights `[nseg·klen/2][NV·16][2]`.
    pub b: *const u16,
    pub c: *mut f32,
    pub c_pix: usize,
    pub nvalid: usize,
    pub bias: *const f32,
    pub accumulate: bool,
}

/// Runs one tile of `mr` pixels with `nv` vectors of 16 channels.
///
/// # Safety
/// Every pointer of `t` must be valid for the reads and writes its description implies.
#[allow(unsafe_code)]
pub(crate) unsafe fn tile(isa: Isa, nv: usize, mr: usize, t: &Tile) {
    macro_rules! dispatch {
        ($f:ident, $nv:literal, [$($mr:literal),*]) => {
            match mr { $($mr => $f::<$nv, $mr>(t),)* _ => unreachable!("mr {mr}") }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 { .. } if mr == isa.max_mr(nv) && matches!(t.a_pix, 64 | 128 | 256) => {
            macro_rules! fixed {
                ($nv:literal, $mr:literal) => {
                    match t.a_pix {
                        64 => avx512_f32_fixed::<$nv, $mr, 64>(t),
                        128 => avx512_f32_fixed::<$nv, $mr, 128>(t),
                        _ => avx512_f32_fixed::<$nv, $mr, 256>(t),
                    }
                };
            }
            match (nv, mr) {
                (1, 14) => fixed!(1, 14),
                (2, 12) => fixed!(2, 12),
                (4, 6) => fixed!(4, 6),
                _ => match nv {
                    1 => dispatch!(
                        avx512_f32,
                        1,
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
                    ),
                    2 => dispatch!(avx512_f32, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
                    _ => dispatch!(avx512_f32, 4, [1, 2, 3, 4, 5, 6]),
                },
            }
        }
        Isa::Avx512 { .. } => match nv {
            1 => dispatch!(
                avx512_f32,
                1,
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
            ),
            2 => dispatch!(avx512_f32, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            4 => dispatch!(avx512_f32, 4, [1, 2, 3, 4, 5, 6]),
            _ => unreachable!("nv {nv}"),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if nv == 1 && mr == 6 && matches!(t.a_pix, 32 | 64 | 128 | 256) => {
            match t.a_pix {
                32 => avx2_f32_fixed::<1, 6, 32>(t),
                64 => avx2_f32_fixed::<1, 6, 64>(t),
                128 => avx2_f32_fixed::<1, 6, 128>(t),
                _ => avx2_f32_fixed::<1, 6, 256>(t),
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match nv {
            1 => dispatch!(avx2_f32, 1, [1, 2, 3, 4, 5, 6]),
            2 => dispatch!(avx2_f32, 2, [1, 2, 3]),
            4 => dispatch!(avx2_f32, 4, [1]),
            _ => unreachable!("nv {nv}"),
        },
        _ => portable_f32(nv, mr, t),
    }
}

/// bf16 tile (AVX512_BF16 only; the caller checks [`Isa::has_bf16`]).
///
/// # Safety
/// As [`tile`].
#[allow(unsafe_code)]
pub(crate) unsafe fn tile_bf16(nv: usize, mr: usize, t: &TileBf16) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($nv:literal, [$($mr:literal),*]) => {
                match mr { $($mr => avx512_bf16::<$nv, $mr>(t),)* _ => unreachable!("mr {mr}") }
            };
        }
        match nv {
            1 => dispatch!(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]),
            2 => dispatch!(2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            4 => dispatch!(4, [1, 2, 3, 4, 5, 6]),
            _ => unreachable!("nv {nv}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (nv, mr, t);
        unreachable!("bf16 tiles need AVX512_BF16");
    }
}

#[allow(unsafe_code)]
unsafe fn portable_f32(nv: usize, mr: usize, t: &Tile) {
    let w = nv * 16;
    let mut acc = [0f32; 16 * 4 * 14];
    let acc = &mut acc[..mr * w];
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        let bs = t.b.add(s * t.klen * w);
        for j in 0..t.klen {
            let b = std::slice::from_raw_parts(bs.add(j * w), w);
            for m in 0..mr {
                let a = *ap.add(m * t.a_pix + j);
                for (o, bv) in acc[m * w..(m + 1) * w].iter_mut().zip(b) {
                    *o += a * bv;
                }
            }
        }
    }
    for m in 0..mr {
        let c = t.c.add(m * t.c_pix);
        for l in 0..t.nvalid {
            let v = acc[m * w + l] + *t.bias.add(l);
            *c.add(l) = if t.accumulate { *c.add(l) + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f32<const NV: usize, const MR: usize>(t: &Tile) {
    avx512_f32_body::<NV, MR, 0>(t)
}

/// Full tiles with a pixel stride known at compile time: every broadcast is `[p + j·4 + disp]`
/// from one register, so the loop is loads and FMAs only.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f32_fixed<const NV: usize, const MR: usize, const AP: usize>(t: &Tile) {
    avx512_f32_body::<NV, MR, AP>(t)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
unsafe fn avx512_f32_body<const NV: usize, const MR: usize, const AP: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let a_pix = if AP > 0 { AP } else { t.a_pix };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut bp = t.b;
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        for j in 0..t.klen {
            let mut b = [_mm512_setzero_ps(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(bp.add(v * 16));
            }
            bp = bp.add(NV * 16);
            let aj = ap.add(j);
            for (m, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*aj.add(m * a_pix));
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(a, b[v], row[v]);
                }
            }
        }
    }
    let mut bias = [_mm512_setzero_ps(); NV];
    for (v, bv) in bias.iter_mut().enumerate() {
        *bv = _mm512_loadu_ps(t.bias.add(v * 16));
    }
    let full = t.nvalid == NV * 16;
    for (m, row) in acc.iter().enumerate() {
        let c = t.c.add(m * t.c_pix);
        for v in 0..NV {
            let mut r = _mm512_add_ps(row[v], bias[v]);
            let cv = c.add(v * 16);
            if full {
                if t.accumulate {
                    r = _mm512_add_ps(r, _mm512_loadu_ps(cv));
                }
                _mm512_storeu_ps(cv, r);
            } else {
                let n = t.nvalid.saturating_sub(v * 16).min(16);
                if n == 0 {
                    continue;
                }
                let mask: __mmask16 = ((1u32 << n) - 1) as u16;
                if t.accumulate {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, cv));
                }
                _mm512_mask_storeu_ps(cv, mask, r);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_bf16<const NV: usize, const MR: usize>(t: &TileBf16) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut bp = t.b;
    let pairs = t.klen / 2;
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        for j in 0..pairs {
            let mut b = [_mm512_setzero_si512(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = _mm512_loadu_si512(bp.add(v * 32) as *const _);
            }
            bp = bp.add(NV * 32);
            let aj = ap.add(2 * j) as *const i32;
            for (m, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(aj.byte_add(m * t.a_pix * 2).read_unaligned());
                for v in 0..NV {
                    row[v] = _mm512_dpbf16_ps(
                        row[v],
                        std::mem::transmute::<__m512i, __m512bh>(a),
                        std::mem::transmute::<__m512i, __m512bh>(b[v]),
                    );
                }
            }
        }
    }
    let mut bias = [_mm512_setzero_ps(); NV];
    for (v, bv) in bias.iter_mut().enumerate() {
        *bv = _mm512_loadu_ps(t.bias.add(v * 16));
    }
    for (m, row) in acc.iter().enumerate() {
        let c = t.c.add(m * t.c_pix);
        for v in 0..NV {
            let n = t.nvalid.saturating_sub(v * 16).min(16);
            if n == 0 {
                continue;
            }
            let mask: __mmask16 = ((1u32 << n) - 1) as u16;
            let cv = c.add(v * 16);
            let mut r = _mm512_add_ps(row[v], bias[v]);
            if t.accumulate {
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, cv));
            }
            _mm512_mask_storeu_ps(cv, mask, r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_f32<const NV: usize, const MR: usize>(t: &Tile) {
    avx2_f32_body::<NV, MR, 0>(t)
}

/// Full AVX2 tiles with a compile-time pixel stride (as [`avx512_f32_fixed`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_f32_fixed<const NV: usize, const MR: usize, const AP: usize>(t: &Tile) {
    avx2_f32_body::<NV, MR, AP>(t)
}

/// The accumulators are only ever touched by value (no references into the array, whose
/// address would pin it to the stack and cost a store per FMA).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
// Constant-index loops over the register arrays keep the accumulators in
// registers; iterator borrows pin them to the stack (a 3x slowdown measured).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn avx2_f32_body<const NV: usize, const MR: usize, const AP: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let a_pix = if AP > 0 { AP } else { t.a_pix };
    // NV counts 16-channel groups: two ymm per group.
    let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; MR];
    let mut bp = t.b;
    for s in 0..t.nseg {
        let ap = t.a.offset(*t.segs.add(s));
        for j in 0..t.klen {
            let mut b = [[_mm256_setzero_ps(); 2]; NV];
            for (v, bv) in b.iter_mut().enumerate() {
                bv[0] = _mm256_loadu_ps(bp.add(v * 16));
                bv[1] = _mm256_loadu_ps(bp.add(v * 16 + 8));
            }
            bp = bp.add(NV * 16);
            let aj = ap.add(j);
            for m in 0..MR {
                let a = _mm256_set1_ps(*aj.add(m * a_pix));
                for v in 0..NV {
                    acc[m][v][0] = _mm256_fmadd_ps(a, b[v][0], acc[m][v][0]);
                    acc[m][v][1] = _mm256_fmadd_ps(a, b[v][1], acc[m][v][1]);
                }
            }
        }
    }
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for m in 0..MR {
        let c = t.c.add(m * t.c_pix);
        for v in 0..NV {
            for h in 0..2 {
                let base = v * 16 + h * 8;
                let cv = c.add(base);
                let mut r = _mm256_add_ps(acc[m][v][h], _mm256_loadu_ps(t.bias.add(base)));
                if base + 8 <= t.nvalid {
                    if t.accumulate {
                        r = _mm256_add_ps(r, _mm256_loadu_ps(cv));
                    }
                    _mm256_storeu_ps(cv, r);
                } else if base < t.nvalid {
                    let n = (t.nvalid - base) as i32;
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
                    if t.accumulate {
                        r = _mm256_add_ps(r, _mm256_maskload_ps(cv, mask));
                    }
                    _mm256_maskstore_ps(cv, mask, r);
                }
            }
        }
    }
}
