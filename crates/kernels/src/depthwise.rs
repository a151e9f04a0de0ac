//! Depthwise convolutions (groups = channels) on NHWC maps: the channel vector is contiguous,
//! so each tap is one vector load and one FMA per 16 channels, with the tap weights kept per
//! channel block.

use rayon::prelude::*;

use crate::map::{pad_in, Map, PadMode, Workspace};
use crate::micro::Isa;
use crate::{Error, Result};

/// A k×k depthwise convolution, stride 1.
#[derive(Debug, Clone)]
pub struct Depthwise {
    c: usize,
    k: usize,
    padding: usize,
    pad_mode: PadMode,
    /// `[ky][kx][c]`.
    w: Vec<f32>,
    bias: Vec<f32>,
    isa: Isa,
}

impl Depthwise {
    /// From PyTorch's `(c, 1, k, k)` weight.
    pub fn new(
        c: usize,
        k: usize,
        padding: usize,
        pad_mode: PadMode,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        if weight.len() != c * k * k || c == 0 || k == 0 {
            return Err(Error::Spec(format!(
                "depthwise weight has {} values, {c} channels × {k}² need {}",
                weight.len(),
                c * k * k
            )));
        }
        let mut w = vec![0f32; c * k * k];
        for ch in 0..c {
            for t in 0..k * k {
                w[t * c + ch] = weight[ch * k * k + t];
            }
        }
        let bias = match bias {
            Some(b) if b.len() == c => b.to_vec(),
            Some(b) => return Err(Error::Spec(format!("bias has {} values, not {c}", b.len()))),
            None => vec![0.0; c],
        };
        Ok(Self {
            c,
            k,
            padding,
            pad_mode,
            w,
            bias,
            isa: Isa::detect(),
        })
    }

    pub fn forward(&self, x: &Map) -> Result<Map> {
        self.forward_ws(x, &Workspace::default())
    }

    /// [`Depthwise::forward`] with buffers from `ws`.
    pub fn forward_ws(&self, x: &Map, ws: &Workspace) -> Result<Map> {
        if x.c != self.c {
            return Err(Error::Shape(format!(
                "input has {} channels, the convolution takes {}",
                x.c, self.c
            )));
        }
        let p = self.padding;
        let xp = pad_in(x, p, p, p, p, self.pad_mode, ws);
        let out = self.forward_padded(&xp, ws);
        ws.recycle(xp);
        out
    }

    /// The border [`Depthwise::forward_padded`] expects.
    pub fn input_padding(&self) -> (usize, PadMode) {
        (self.padding, self.pad_mode)
    }

    /// On an input that already carries its padding.
    pub fn forward_padded(&self, xp: &Map, ws: &Workspace) -> Result<Map> {
        if xp.c != self.c {
            return Err(Error::Shape(format!(
                "input has {} channels, the convolution takes {}",
                xp.c, self.c
            )));
        }
        if xp.h < self.k || xp.w < self.k {
            return Err(Error::Shape(format!(
                "input {}×{} is too small",
                xp.h, xp.w
            )));
        }
        let (ho, wo) = (xp.h - self.k + 1, xp.w - self.k + 1);
        let mut out = ws.map(ho, wo, self.c);
        out.data
            .par_chunks_mut(wo * self.c)
            .enumerate()
            .for_each(|(y, row)| self.row(xp, y, row));
        Ok(out)
    }

    fn row(&self, xp: &Map, y: usize, row: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the features were detected at run time; the body is safe Rust.
            #[allow(unsafe_code)]
            match self.isa {
                Isa::Avx512 { .. } => return unsafe { self.row_avx512(xp, y, row) },
                Isa::Avx2 => return unsafe { self.row_avx2(xp, y, row) },
                Isa::Portable => {}
            }
        }
        self.row_body(xp, y, row)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn row_avx512(&self, xp: &Map, y: usize, row: &mut [f32]) {
        if self.k != 3 || !self.c.is_multiple_of(16) {
            return self.row_body(xp, y, row);
        }
        // 3×3: per block of 16 channels the 9 tap weights stay in registers while the row
        // is swept, one load and one FMA per tap.
        use std::arch::x86_64::*;
        let c = self.c;
        let wo = row.len() / c;
        let wp = xp.w;
        for c0 in (0..c).step_by(16) {
            let w: [__m512; 9] = std::array::from_fn(|t| {
                let v: &[f32; 16] = self.w[t * c + c0..][..16].try_into().expect("16 lanes");
                // SAFETY: `v` is 16 floats.
                #[allow(unsafe_code)]
                unsafe {
                    _mm512_loadu_ps(v.as_ptr())
                }
            });
            let b: &[f32; 16] = self.bias[c0..c0 + 16].try_into().expect("16 lanes");
            // SAFETY: `b` is 16 floats.
            #[allow(unsafe_code)]
            let bias = unsafe { _mm512_loadu_ps(b.as_ptr()) };
            let rows: [&[f32]; 3] =
                std::array::from_fn(|ky| &xp.data[(y + ky) * wp * c..(y + ky + 1) * wp * c]);
            for x in 0..wo {
                let mut acc = bias;
                for (ky, r) in rows.iter().enumerate() {
                    for kx in 0..3 {
                        let s: &[f32; 16] =
                            r[(x + kx) * c + c0..][..16].try_into().expect("16 lanes");
                        // SAFETY: `s` is 16 floats.
                        #[allow(unsafe_code)]
                        let v = unsafe { _mm512_loadu_ps(s.as_ptr()) };
                        acc = _mm512_fmadd_ps(v, w[ky * 3 + kx], acc);
                    }
                }
                let o: &mut [f32; 16] = (&mut row[x * c + c0..x * c + c0 + 16])
                    .try_into()
                    .expect("16 lanes");
                // SAFETY: `o` is 16 floats.
                #[allow(unsafe_code)]
                unsafe {
                    _mm512_storeu_ps(o.as_mut_ptr(), acc)
                };
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_avx2(&self, xp: &Map, y: usize, row: &mut [f32]) {
        self.row_body(xp, y, row)
    }

    #[inline(always)]
    fn row_body(&self, xp: &Map, y: usize, row: &mut [f32]) {
        let (c, k) = (self.c, self.k);
        const B: usize = 32;
        for (x, o) in row.chunks_exact_mut(c).enumerate() {
            let mut c0 = 0;
            while c0 < c {
                let n = (c - c0).min(B);
                let mut acc = [0f32; B];
                acc[..n].copy_from_slice(&self.bias[c0..c0 + n]);
                for ky in 0..k {
                    let src = &xp.data[((y + ky) * xp.w + x) * c..];
                    for kx in 0..k {
                        let s = &src[kx * c + c0..][..n];
                        let w = &self.w[(ky * k + kx) * c + c0..][..n];
                        for ((a, s), w) in acc[..n].iter_mut().zip(s).zip(w) {
                            *a += s * w;
                        }
                    }
                }
                o[c0..c0 + n].copy_from_slice(&acc[..n]);
                c0 += n;
            }
        }
    }
}
