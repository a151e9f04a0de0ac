//! Convolutions with very few output channels (a generator's RGB head: 7×7, 32 → 3).
//!
//! A channels-last GEMM tile would leave 13 of 16 lanes idle. Here the input is planar and
//! the vector runs along x: each step loads 4×16 neighbouring input pixels of one channel and
//! multiplies them by up to 4 broadcast weights, 12 FMAs per 4 loads.

use rayon::prelude::*;

use crate::map::{Map, PadMode, Workspace};
use crate::micro::Isa;
use crate::ops::{activate, Act};
use crate::{Error, Result};

/// A stride-1 k×k convolution with `c_out ≤ 4`, producing planar `(C, H, W)` output.
#[derive(Debug, Clone)]
pub struct PlanarConv {
    c_in: usize,
    c_out: usize,
    k: usize,
    padding: usize,
    pad_mode: PadMode,
    /// `[ci][ky][kx][4]`, zero-padded to 4 outputs.
    packed: Vec<f32>,
    bias: [f32; 4],
    act: Act,
    isa: Isa,
}

impl PlanarConv {
    pub const MAX_OUT: usize = 4;

    /// From PyTorch's `(out, in, k, k)` weight.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        padding: usize,
        pad_mode: PadMode,
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Act,
    ) -> Result<Self> {
        if c_out == 0 || c_out > Self::MAX_OUT || c_in == 0 || k == 0 {
            return Err(Error::Spec(format!(
                "planar convolution takes 1..=4 outputs, not {c_out}"
            )));
        }
        if weight.len() != c_out * c_in * k * k {
            return Err(Error::Spec("planar convolution: weight size".into()));
        }
        let mut packed = vec![0f32; c_in * k * k * 4];
        for o in 0..c_out {
            for i in 0..c_in {
                for t in 0..k * k {
                    packed[(i * k * k + t) * 4 + o] = weight[(o * c_in + i) * k * k + t];
                }
            }
        }
        let mut b = [0f32; 4];
        if let Some(bias) = bias {
            b[..c_out].copy_from_slice(bias);
        }
        Ok(Self {
            c_in,
            c_out,
            k,
            padding,
            pad_mode,
            packed,
            bias: b,
            act,
            isa: Isa::detect(),
        })
    }

    /// The border it reads.
    pub fn input_padding(&self) -> (usize, PadMode) {
        (self.padding, self.pad_mode)
    }

    /// Kernel side.
    pub fn kernel(&self) -> usize {
        self.k
    }

    /// Applies it to one NHWC map; returns `(C, H, W)` planes.
    pub fn forward(&self, x: &Map) -> Result<(Vec<f32>, usize, usize)> {
        self.forward_ws(x, &Workspace::default())
    }

    /// [`PlanarConv::forward`] with buffers from `ws`.
    pub fn forward_ws(&self, x: &Map, ws: &Workspace) -> Result<(Vec<f32>, usize, usize)> {
        if x.c != self.c_in {
            return Err(Error::Shape(format!(
                "input has {} channels, the convolution takes {}",
                x.c, self.c_in
            )));
        }
        let p = self.padding;
        let (hp, wp) = (x.h + 2 * p, x.w + 2 * p);
        if hp < self.k || wp < self.k {
            return Err(Error::Shape(format!("input {}×{} is too small", x.h, x.w)));
        }
        let (ho, wo) = (hp - self.k + 1, wp - self.k + 1);
        let planes = x.to_hcw_padded(p, self.pad_mode, ws);
        let out = self.forward_hcw(planes, hp, wp, ws);
        Ok((out, ho, wo))
    }

    /// From a row-planar `(H + 2p, C, W + 2p)` input that already carries the padding (see
    /// [`crate::map::Map::to_hcw_padded`], [`crate::ops::normalize_into_hcw_padded`]);
    /// returns `(C_out, H, W)` planes. The buffer goes back to `ws`.
    pub fn forward_hcw(
        &self,
        mut planes: Vec<f32>,
        hp: usize,
        wp: usize,
        ws: &Workspace,
    ) -> Vec<f32> {
        assert_eq!(planes.len(), hp * self.c_in * wp, "forward_hcw: input size");
        let (ho, wo) = (hp + 1 - self.k, wp + 1 - self.k);
        // A vector of slack so row tails can be loaded.
        planes.extend(std::iter::repeat_n(0.0, 64));
        // Output rows in pairs: row y+1 with kernel row ky reads the input row that row y
        // reads with ky+1, so each loaded input vector feeds both.
        let pairs: Vec<Vec<f32>> = (0..ho.div_ceil(2))
            .into_par_iter()
            .map(|py| {
                let y = 2 * py;
                let two = y + 1 < ho;
                let mut out = vec![0f32; self.c_out * wo * if two { 2 } else { 1 }];
                if two {
                    self.row_pair(&planes, wp, y, wo, &mut out);
                } else {
                    self.row(&planes, wp, y, wo, &mut out);
                }
                out
            })
            .collect();
        ws.give(planes);
        let mut out = vec![0f32; self.c_out * ho * wo];
        for (py, r) in pairs.iter().enumerate() {
            for (i, chunk) in r.chunks(self.c_out * wo).enumerate() {
                let y = 2 * py + i;
                for o in 0..self.c_out {
                    out[(o * ho + y) * wo..][..wo].copy_from_slice(&chunk[o * wo..][..wo]);
                }
            }
        }
        activate(&mut out, self.act);
        out
    }

    /// Rows `y` and `y + 1` into `out` (`[row][c_out][wo]`).
    fn row_pair(&self, planes: &[f32], wp: usize, y: usize, wo: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx512 { .. } = self.isa {
            // SAFETY: as in `row`, for input rows y..=y+k (y + 1 < ho, so all exist).
            #[allow(unsafe_code)]
            unsafe {
                match self.c_out {
                    1 => self.rows_avx512::<1, 2>(planes, wp, y, wo, out),
                    2 => self.rows_avx512::<2, 2>(planes, wp, y, wo, out),
                    3 => self.rows_avx512::<3, 2>(planes, wp, y, wo, out),
                    _ => self.rows_avx512::<4, 2>(planes, wp, y, wo, out),
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx2 = self.isa {
            // SAFETY: as in `row`.
            #[allow(unsafe_code)]
            unsafe {
                match self.c_out {
                    1 => self.rows_avx2::<1, 2>(planes, wp, y, wo, out),
                    2 => self.rows_avx2::<2, 2>(planes, wp, y, wo, out),
                    3 => self.rows_avx2::<3, 2>(planes, wp, y, wo, out),
                    _ => self.rows_avx2::<4, 2>(planes, wp, y, wo, out),
                }
            }
            return;
        }
        let n = self.c_out * wo;
        let (a, b) = out.split_at_mut(n);
        self.row(planes, wp, y, wo, a);
        self.row(planes, wp, y + 1, wo, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn rows_avx512<const CO: usize, const R: usize>(
        &self,
        planes: &[f32],
        wp: usize,
        y: usize,
        wo: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        // R ≤ 2 rows × CO ≤ 4 outputs × XV vectors ≤ 24 accumulators.
        const XV: usize = 3;
        let k = self.k;
        let base = planes.as_ptr();
        let mut x0 = 0;
        while x0 < wo {
            let mut acc = [[[_mm512_setzero_ps(); XV]; CO]; R];
            for i in 0..self.c_in {
                for r in 0..k + R - 1 {
                    let src = base.add(((y + r) * self.c_in + i) * wp + x0);
                    for kx in 0..k {
                        let mut a = [_mm512_setzero_ps(); XV];
                        for (v, av) in a.iter_mut().enumerate() {
                            *av = _mm512_loadu_ps(src.add(kx + 16 * v));
                        }
                        // Output row j uses kernel row r − j.
                        for row in 0..R {
                            let ky = r.wrapping_sub(row);
                            if ky >= k {
                                continue;
                            }
                            let wrow = self.packed.as_ptr().add(((i * k + ky) * k + kx) * 4);
                            for o in 0..CO {
                                let w = _mm512_set1_ps(*wrow.add(o));
                                for v in 0..XV {
                                    acc[row][o][v] = _mm512_fmadd_ps(a[v], w, acc[row][o][v]);
                                }
                            }
                        }
                    }
                }
            }
            for (row, per) in acc.iter().enumerate() {
                for (o, vs) in per.iter().enumerate() {
                    let b = _mm512_set1_ps(self.bias[o]);
                    for (v, r) in vs.iter().enumerate() {
                        let x = x0 + 16 * v;
                        if x >= wo {
                            break;
                        }
                        let n = (wo - x).min(16);
                        let mask: __mmask16 = ((1u32 << n) - 1) as u16;
                        _mm512_mask_storeu_ps(
                            out.as_mut_ptr().add((row * CO + o) * wo + x),
                            mask,
                            _mm512_add_ps(*r, b),
                        );
                    }
                }
            }
            x0 += 16 * XV;
        }
    }

    /// [`PlanarConv::rows_avx512`] with 8-lane vectors: R ≤ 2 rows × CO ≤ 4 × 2 vectors ≤ 16
    /// accumulators (CO = 4 with two rows spills a little; the RGB head has CO = 3).
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn rows_avx2<const CO: usize, const R: usize>(
        &self,
        planes: &[f32],
        wp: usize,
        y: usize,
        wo: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        const XV: usize = 2;
        let k = self.k;
        let base = planes.as_ptr();
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut x0 = 0;
        while x0 < wo {
            let mut acc = [[[_mm256_setzero_ps(); XV]; CO]; R];
            for i in 0..self.c_in {
                for r in 0..k + R - 1 {
                    let src = base.add(((y + r) * self.c_in + i) * wp + x0);
                    for kx in 0..k {
                        let mut a = [_mm256_setzero_ps(); XV];
                        for v in 0..XV {
                            a[v] = _mm256_loadu_ps(src.add(kx + 8 * v));
                        }
                        for row in 0..R {
                            let ky = r.wrapping_sub(row);
                            if ky >= k {
                                continue;
                            }
                            let wrow = self.packed.as_ptr().add(((i * k + ky) * k + kx) * 4);
                            for o in 0..CO {
                                let w = _mm256_set1_ps(*wrow.add(o));
                                for v in 0..XV {
                                    acc[row][o][v] = _mm256_fmadd_ps(a[v], w, acc[row][o][v]);
                                }
                            }
                        }
                    }
                }
            }
            for row in 0..R {
                for o in 0..CO {
                    let b = _mm256_set1_ps(self.bias[o]);
                    for v in 0..XV {
                        let x = x0 + 8 * v;
                        if x >= wo {
                            break;
                        }
                        let dst = out.as_mut_ptr().add((row * CO + o) * wo + x);
                        let r = _mm256_add_ps(acc[row][o][v], b);
                        if x + 8 <= wo {
                            _mm256_storeu_ps(dst, r);
                        } else {
                            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((wo - x) as i32), lane);
                            _mm256_maskstore_ps(dst, mask, r);
                        }
                    }
                }
            }
            x0 += 8 * XV;
        }
    }

    fn row(&self, planes: &[f32], wp: usize, y: usize, wo: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx512 { .. } = self.isa {
            // SAFETY: AVX-512F was detected; `rows_avx512` reads planes[y+ky][ci][x+kx] for
            // x < wo rounded up to 48 (the 64 floats of slack cover the last row's tail) and
            // writes `c_out · wo` floats of `out`.
            #[allow(unsafe_code)]
            unsafe {
                match self.c_out {
                    1 => self.rows_avx512::<1, 1>(planes, wp, y, wo, out),
                    2 => self.rows_avx512::<2, 1>(planes, wp, y, wo, out),
                    3 => self.rows_avx512::<3, 1>(planes, wp, y, wo, out),
                    _ => self.rows_avx512::<4, 1>(planes, wp, y, wo, out),
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx2 = self.isa {
            // SAFETY: AVX2 and FMA were detected; `rows_avx2` reads planes[y+ky][ci][x+kx] for
            // x < wo rounded up to 16 (inside the 64 floats of slack) and writes
            // `c_out · wo` floats of `out`.
            #[allow(unsafe_code)]
            unsafe {
                match self.c_out {
                    1 => self.rows_avx2::<1, 1>(planes, wp, y, wo, out),
                    2 => self.rows_avx2::<2, 1>(planes, wp, y, wo, out),
                    3 => self.rows_avx2::<3, 1>(planes, wp, y, wo, out),
                    _ => self.rows_avx2::<4, 1>(planes, wp, y, wo, out),
                }
            }
            return;
        }
        let k = self.k;
        for o in 0..self.c_out {
            out[o * wo..(o + 1) * wo].fill(self.bias[o]);
        }
        for i in 0..self.c_in {
            for ky in 0..k {
                let src = &planes[((y + ky) * self.c_in + i) * wp..][..wp];
                for kx in 0..k {
                    let wv = &self.packed[((i * k + ky) * k + kx) * 4..][..4];
                    for o in 0..self.c_out {
                        let w = wv[o];
                        for (d, s) in out[o * wo..(o + 1) * wo].iter_mut().zip(&src[kx..]) {
                            *d += w * s;
                        }
                    }
                }
            }
        }
    }
}
