//! Separable resampling on the planar `f32` data.

use std::borrow::Cow;

use crate::buffer::{pixel_count, Image};

/// Resampling filter for [`resize_with`].
///
/// When downscaling, every filter is stretched by the scale factor (as Pillow and the
/// `image` crate do), so each output pixel averages all the source pixels it covers instead
/// of point-sampling them; this is what makes downscaling alias-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Filter {
    /// Box filter: exact area averaging when downscaling, nearest neighbour when upscaling.
    Box,
    /// Triangle (bilinear) filter, support 1.
    Triangle,
    /// Catmull-Rom / Keys cubic with `a = -0.5` (Pillow's `BICUBIC`, which
    /// pytorch-CycleGAN-and-pix2pix uses for its resizes), support 2.
    CatmullRom,
    /// Lanczos windowed sinc with 3 lobes, support 3. The default: sharpest result.
    #[default]
    Lanczos3,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Triangle => 1.0,
            Filter::CatmullRom => 2.0,
            Filter::Lanczos3 => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let ax = x.abs();
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Triangle => (1.0 - ax).max(0.0),
            Filter::CatmullRom => {
                const A: f64 = -0.5;
                if ax < 1.0 {
                    ((A + 2.0) * ax - (A + 3.0)) * ax * ax + 1.0
                } else if ax < 2.0 {
                    ((A * ax - 5.0 * A) * ax + 8.0 * A) * ax - 4.0 * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos3 => {
                if ax < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// For each output position along one axis: the first source index and the normalised
/// weights of the source samples from there on.
fn contributions(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f64 / out_size as f64;
    let fscale = scale.max(1.0);
    let support = filter.support() * fscale;
    let last = in_size.saturating_sub(1);
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0) as usize).min(last);
            let hi = ((center + support).ceil().max(0.0) as usize)
                .min(in_size)
                .max(lo + 1);
            let weights: Vec<f64> = (lo..hi)
                .map(|j| filter.eval((j as f64 + 0.5 - center) / fscale))
                .collect();
            let sum: f64 = weights.iter().sum();
            if sum.abs() < 1e-12 {
                // Cannot happen for these filters, but never divide by zero.
                ((center.floor().max(0.0) as usize).min(last), vec![1.0])
            } else {
                (lo, weights.iter().map(|w| (w / sum) as f32).collect())
            }
        })
        .collect()
}

/// Resamples one `in_w × in_h` plane to `out_w × out_h` (both source sides non-zero).
fn resample_plane(
    src: &[f32],
    (in_w, in_h): (usize, usize),
    (out_w, out_h): (usize, usize),
    horizontal: &[(usize, Vec<f32>)],
    vertical: &[(usize, Vec<f32>)],
) -> Vec<f32> {
    // Horizontal pass: in_h rows of out_w samples.
    let tmp: Cow<'_, [f32]> = if in_w == out_w {
        Cow::Borrowed(src)
    } else {
        let mut tmp = Vec::with_capacity(out_w * in_h);
        for row in src.chunks_exact(in_w).take(in_h) {
            for (start, weights) in horizontal {
                let taps = row.get(*start..).unwrap_or(&[]);
                tmp.push(weights.iter().zip(taps).map(|(w, s)| w * s).sum());
            }
        }
        Cow::Owned(tmp)
    };
    if in_h == out_h {
        return tmp.into_owned();
    }
    // Vertical pass, row by row for cache friendliness.
    let mut out = vec![0.0f32; out_w * out_h];
    for (row_out, (start, weights)) in out.chunks_exact_mut(out_w).zip(vertical) {
        for (k, w) in weights.iter().enumerate() {
            let offset = (start + k) * out_w;
            let Some(row_in) = tmp.get(offset..offset + out_w) else {
                break;
            };
            for (o, s) in row_out.iter_mut().zip(row_in) {
                *o += w * s;
            }
        }
    }
    out
}

/// Resizes with the default filter, [`Filter::Lanczos3`] (stretched when downscaling, so
/// it averages properly). See [`resize_with`].
pub fn resize(img: &Image, width: u32, height: u32) -> Image {
    resize_with(img, width, height, Filter::default())
}

/// Resizes every plane (RGB and alpha, independently, i.e. straight alpha) to
/// `width × height` with `filter`, computing in `f32` directly on the planar data.
/// Results are clamped to `[-1, 1]` (colour) and `[0, 1]` (alpha), since the cubic and
/// Lanczos filters overshoot slightly at hard edges.
///
/// Edge cases never panic: a zero target side gives an empty image; a zero-size source
/// gives a mid-gray (`0.0`) image; buffers shorter than the dimensions require are read as
/// `0.0` (alpha `1.0`). The output is allocated in full, so the caller bounds `width` and
/// `height` (e.g. with [`fit_max_side`]).
pub fn resize_with(img: &Image, width: u32, height: u32, filter: Filter) -> Image {
    let n_out = pixel_count(width, height);
    let (in_w, in_h) = (img.width as usize, img.height as usize);
    let n_in = pixel_count(img.width, img.height);
    if n_out == 0 || n_in == 0 {
        return Image {
            width,
            height,
            rgb: vec![0.0; n_out.saturating_mul(3)],
            alpha: img.alpha.as_ref().map(|_| vec![1.0; n_out]),
        };
    }
    let rgb = padded(&img.rgb, n_in.saturating_mul(3), 0.0);
    let alpha = img.alpha.as_deref().map(|a| padded(a, n_in, 1.0));
    if (img.width, img.height) == (width, height) {
        return Image {
            width,
            height,
            rgb: rgb.into_owned(),
            alpha: alpha.map(Cow::into_owned),
        };
    }
    let (out_w, out_h) = (width as usize, height as usize);
    let horizontal = contributions(in_w, out_w, filter);
    let vertical = contributions(in_h, out_h, filter);
    let run = |plane: &[f32], lo: f32, hi: f32| {
        let mut out = resample_plane(plane, (in_w, in_h), (out_w, out_h), &horizontal, &vertical);
        for v in &mut out {
            *v = v.clamp(lo, hi);
        }
        out
    };
    let mut out_rgb = Vec::with_capacity(n_out * 3);
    for plane in rgb.chunks_exact(n_in) {
        out_rgb.extend(run(plane, -1.0, 1.0));
    }
    Image {
        width,
        height,
        rgb: out_rgb,
        alpha: alpha.map(|a| run(&a, 0.0, 1.0)),
    }
}

/// [`resize`] of planar colour values (`channels` planes of `in_w × in_h`, as in
/// [`Image::rgb`]) without an [`Image`] around them, so a caller holding a borrowed buffer
/// need not copy it first. Values are clamped to `[-1, 1]`.
///
/// # Panics
/// When `planes` does not hold `channels × in_w × in_h` values.
pub fn resize_planes(
    planes: &[f32],
    channels: usize,
    (in_w, in_h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<f32> {
    let n_in = in_w * in_h;
    assert_eq!(planes.len(), channels * n_in, "resize_planes: length");
    if n_in == 0 || out_w * out_h == 0 {
        return vec![0.0; channels * out_w * out_h];
    }
    let horizontal = contributions(in_w, out_w, Filter::default());
    let vertical = contributions(in_h, out_h, Filter::default());
    let mut out = Vec::with_capacity(channels * out_w * out_h);
    for plane in planes.chunks_exact(n_in) {
        let mut p = resample_plane(plane, (in_w, in_h), (out_w, out_h), &horizontal, &vertical);
        for v in &mut p {
            *v = v.clamp(-1.0, 1.0);
        }
        out.extend(p);
    }
    out
}

/// `data` if it has exactly `len` values, otherwise a copy truncated or padded with `fill`.
fn padded(data: &[f32], len: usize, fill: f32) -> Cow<'_, [f32]> {
    if data.len() == len {
        Cow::Borrowed(data)
    } else {
        let mut v: Vec<f32> = data.iter().copied().take(len).collect();
        v.resize(len, fill);
        Cow::Owned(v)
    }
}

/// Dimensions scaled down (never up) so that the longer side is at most `max_side`,
/// keeping the aspect ratio (rounded, each non-zero side at least 1). A `max_side` of 0 is
/// treated as 1.
pub fn fit_max_side(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let max_side = max_side.max(1);
    let long = width.max(height);
    if long <= max_side {
        return (width, height);
    }
    let scale = f64::from(max_side) / f64::from(long);
    let fit = |side: u32| {
        if side == 0 {
            0
        } else if side == long {
            max_side
        } else {
            ((f64::from(side) * scale).round() as u32).clamp(1, max_side)
        }
    };
    (fit(width), fit(height))
}

/// A downscaled copy whose longer side is at most `max_side` (a plain copy when the image
/// is already small enough), for previews.
pub fn thumbnail(img: &Image, max_side: u32) -> Image {
    let (w, h) = fit_max_side(img.width, img.height, max_side);
    resize(img, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Image {
        let n = (w * h) as usize;
        let mut rgb = Vec::with_capacity(3 * n);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = (x as f32 / w.max(2) as f32) * 0.8 + (y as f32 / h.max(2) as f32) * 0.2;
                    rgb.push(v * 2.0 - 1.0 + c as f32 * 0.01);
                }
            }
        }
        Image::new(w, h, rgb, None).unwrap()
    }

    #[test]
    fn resize_planes_matches_resize() {
        let (w, h) = (37, 23);
        let rgb: Vec<f32> = (0..3 * w * h)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let img = Image::new(w as u32, h as u32, rgb.clone(), None).unwrap();
        for (ow, oh) in [(10, 7), (37, 23), (50, 40)] {
            let a = resize(&img, ow as u32, oh as u32).rgb;
            assert_eq!(resize_planes(&rgb, 3, (w, h), (ow, oh)), a, "{ow}×{oh}");
        }
    }

    #[test]
    fn weights_are_normalised() {
        for filter in [
            Filter::Box,
            Filter::Triangle,
            Filter::CatmullRom,
            Filter::Lanczos3,
        ] {
            for (i, o) in [(100, 7), (7, 100), (1, 5), (5, 1), (33, 33), (1000, 999)] {
                for (start, w) in contributions(i, o, filter) {
                    assert!(start + w.len() <= i);
                    let s: f32 = w.iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{filter:?} {i}->{o}: {s}");
                }
            }
        }
    }

    #[test]
    fn constant_stays_constant() {
        let img = Image::filled(37, 23, [0.25, -0.5, 0.75]);
        for filter in [
            Filter::Box,
            Filter::Triangle,
            Filter::CatmullRom,
            Filter::Lanczos3,
        ] {
            for (w, h) in [(10, 6), (80, 51), (1, 1), (37, 5)] {
                let out = resize_with(&img, w, h, filter);
                assert!(out.validate().is_ok());
                let n = (w * h) as usize;
                for (c, expect) in [0.25f32, -0.5, 0.75].iter().enumerate() {
                    for v in &out.rgb[c * n..(c + 1) * n] {
                        assert!((v - expect).abs() < 1e-5, "{filter:?} {w}x{h}: {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn box_downscale_is_area_average() {
        let data: Vec<f32> = [-1.0, 1.0, 0.0, 0.5].repeat(3);
        let img = Image::new(2, 2, data, Some(vec![0.0, 1.0, 1.0, 0.0])).unwrap();
        let out = resize_with(&img, 1, 1, Filter::Box);
        assert!((out.rgb[0] - 0.125).abs() < 1e-6);
        assert!((out.alpha.unwrap()[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn downscale_of_checkerboard_is_gray() {
        // Point sampling would alias a 1-px checkerboard to black or white.
        let n = 64 * 64;
        let plane: Vec<f32> = (0..n)
            .map(|i| {
                if (i % 64 + i / 64) % 2 == 0 {
                    -1.0
                } else {
                    1.0
                }
            })
            .collect();
        let img = Image::new(64, 64, plane.repeat(3), None).unwrap();
        for filter in [Filter::Box, Filter::Triangle, Filter::Lanczos3] {
            let out = resize_with(&img, 16, 16, filter);
            for v in &out.rgb {
                assert!(v.abs() < 0.05, "{filter:?}: {v}");
            }
        }
    }

    #[test]
    fn identity_and_round_trip() {
        let img = gradient(40, 30);
        assert_eq!(resize(&img, 40, 30), img);
        let up = resize(&img, 80, 60);
        let back = resize(&up, 40, 30);
        let p = crate::psnr(&img.rgb, &back.rgb, 2.0);
        assert!(p > 35.0, "psnr {p}");
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let img = gradient(5, 4);
        assert_eq!(resize(&img, 0, 10).rgb.len(), 0);
        let empty = Image::filled(0, 0, [0.0; 3]);
        let out = resize(&empty, 3, 2);
        assert_eq!(out.rgb, vec![0.0; 18]);
        let broken = Image {
            width: 10,
            height: 10,
            rgb: vec![0.5; 7],
            alpha: Some(vec![0.0; 3]),
        };
        let out = resize(&broken, 4, 4);
        assert!(out.validate().is_ok());
        let out = resize(&broken, 10, 10);
        assert!(out.validate().is_ok());
        assert_eq!(resize(&img, 1, 1).rgb.len(), 3);
    }

    #[test]
    fn fit() {
        assert_eq!(fit_max_side(4000, 3000, 1000), (1000, 750));
        assert_eq!(fit_max_side(3000, 4000, 1000), (750, 1000));
        assert_eq!(fit_max_side(800, 600, 1000), (800, 600));
        assert_eq!(fit_max_side(10000, 1, 100), (100, 1));
        assert_eq!(fit_max_side(1001, 1001, 1000), (1000, 1000));
        assert_eq!(fit_max_side(0, 5000, 100), (0, 100));
        assert_eq!(fit_max_side(5, 5, 0), (1, 1));
        assert_eq!(fit_max_side(u32::MAX, u32::MAX - 1, 512), (512, 512));
    }

    #[test]
    fn thumbnail_fits() {
        let t = thumbnail(&gradient(300, 200), 64);
        assert_eq!((t.width, t.height), (64, 43));
        assert!(t.validate().is_ok());
    }
}
