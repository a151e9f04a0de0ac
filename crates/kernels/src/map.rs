//! [`Map`]: one image's feature map in NHWC, and layout conversion at the network's edges.

use rayon::prelude::*;

/// A feature map of one image, channels last: element `(y, x, c)` at `(y·w + x)·c_count + c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// How a convolution's border is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Zero,
    /// PyTorch's `ReflectionPad2d` (the edge pixel is not repeated).
    Reflect,
}

impl Map {
    pub fn zeros(h: usize, w: usize, c: usize) -> Self {
        Self {
            h,
            w,
            c,
            data: vec![0.0; h * w * c],
        }
    }

    /// From planar `(C, H, W)` data (one image of an NCHW tensor).
    pub fn from_chw(chw: &[f32], c: usize, h: usize, w: usize) -> Self {
        assert_eq!(chw.len(), c * h * w, "Map::from_chw: length");
        let mut data = vec![0f32; c * h * w];
        data.par_chunks_mut(w * c)
            .enumerate()
            .for_each(|(y, row)| {
                for ch in 0..c {
                    let src = &chw[(ch * h + y) * w..][..w];
                    for (x, v) in src.iter().enumerate() {
                        row[x * c + ch] = *v;
                    }
                }
            });
        Self { h, w, c, data }
    }

    /// To planar `(C, H, W)`.
    pub fn to_chw(&self) -> Vec<f32> {
        let (h, w, c) = (self.h, self.w, self.c);
        let mut out = vec![0f32; c * h * w];
        // Parallel over channels: each task writes one plane.
        out.par_chunks_mut(h * w).enumerate().for_each(|(ch, plane)| {
            for (i, v) in plane.iter_mut().enumerate() {
                *v = self.data[i * c + ch];
            }
        });
        out
    }

    /// Pixel `(y, x)`'s channels.
    pub fn px(&self, y: usize, x: usize) -> &[f32] {
        &self.data[(y * self.w + x) * self.c..][..self.c]
    }
}

/// Source index of padded coordinate `i` (may be negative) in `0..n`.
pub(crate) fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// Pads `x` by `(top, bottom, left, right)` pixels.
pub fn pad(x: &Map, t: usize, b: usize, l: usize, r: usize, mode: PadMode) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let (hp, wp) = (h + t + b, w + l + r);
    let mut out = vec![0f32; hp * wp * c];
    out.par_chunks_mut(wp * c).enumerate().for_each(|(yp, row)| {
        let sy = yp as isize - t as isize;
        let src_y = match mode {
            PadMode::Zero if sy < 0 || sy >= h as isize => return,
            PadMode::Zero => sy as usize,
            PadMode::Reflect => reflect(sy, h),
        };
        let src = &x.data[src_y * w * c..][..w * c];
        row[l * c..(l + w) * c].copy_from_slice(src);
        if mode == PadMode::Reflect {
            for xp in (0..l).chain(l + w..wp) {
                let sx = reflect(xp as isize - l as isize, w);
                row[xp * c..(xp + 1) * c].copy_from_slice(&src[sx * c..(sx + 1) * c]);
            }
        }
    });
    Map {
        h: hp,
        w: wp,
        c,
        data: out,
    }
}

/// Nearest-neighbour upsampling by 2 in both directions.
pub fn upsample_nearest2(x: &Map) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let mut out = vec![0f32; 4 * h * w * c];
    out.par_chunks_mut(2 * w * c).enumerate().for_each(|(y, row)| {
        let src = &x.data[(y / 2) * w * c..][..w * c];
        for xo in 0..2 * w {
            row[xo * c..(xo + 1) * c].copy_from_slice(&src[(xo / 2) * c..(xo / 2 + 1) * c]);
        }
    });
    Map {
        h: 2 * h,
        w: 2 * w,
        c,
        data: out,
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32.
#[inline]
#[cfg(test)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A bf16 copy of `data`.
pub(crate) fn to_bf16(data: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; data.len()];
    out.par_chunks_mut(1 << 14)
        .zip(data.par_chunks(1 << 14))
        .for_each(|(o, i)| {
            for (o, i) in o.iter_mut().zip(i) {
                *o = bf16_bits(*i);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip_and_reflection() {
        let chw: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let m = Map::from_chw(&chw, 2, 3, 4);
        assert_eq!(m.px(1, 2), &[6.0, 18.0]);
        assert_eq!(m.to_chw(), chw);
        // ReflectionPad2d(2) of a row 0 1 2 3 is 2 1 | 0 1 2 3 | 2 1.
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 3, 2, 1]);
        let p = pad(&m, 1, 2, 2, 1, PadMode::Reflect);
        assert_eq!((p.h, p.w), (6, 7));
        assert_eq!(p.px(0, 0), m.px(1, 2));
        assert_eq!(p.px(5, 6), m.px(0, 2));
        let z = pad(&m, 1, 0, 0, 1, PadMode::Zero);
        assert_eq!(z.px(0, 0), &[0.0, 0.0]);
        assert_eq!(z.px(1, 4), &[0.0, 0.0]);
        assert_eq!(z.px(1, 3), m.px(0, 3));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_to_f32(bf16_bits(1.0)), 1.0);
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(bf16_to_f32(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            bf16_to_f32(bf16_bits(1.0 + 3.0 / 256.0)),
            1.0 + 1.0 / 64.0
        );
        assert!(bf16_to_f32(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(half::bf16::from_f32(-3.3).to_bits(), bf16_bits(-3.3));
    }
}
