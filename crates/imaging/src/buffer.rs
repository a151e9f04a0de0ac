//! The planar floating-point [`Image`] and its sample conversions.

use crate::error::{Error, Result};

/// An RGB image with optional alpha, as planar `f32` data ready for a network.
///
/// * `rgb` holds three planes (R, then G, then B), each `width × height` values in row-major
///   order (CHW layout), with values in `[-1, 1]` as in pytorch-CycleGAN-and-pix2pix
///   (`x / 255 * 2 - 1` for 8-bit sources, `x / 65535 * 2 - 1` for 16-bit ones).
/// * `alpha`, present only when the source had an alpha channel, holds one plane of
///   `width × height` values in `[0, 1]`.
///
/// The fields are public for convenience; [`Image::validate`] checks that the buffer lengths
/// match the dimensions. Functions that take an `Image` never panic on inconsistent buffers:
/// the fallible ones return [`Error::InvalidImage`], the infallible ones read missing samples
/// as `0.0` (and missing alpha as `1.0`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Planar RGB samples in `[-1, 1]`, length `3 × width × height`.
    pub rgb: Vec<f32>,
    /// Optional alpha plane in `[0, 1]`, length `width × height`.
    pub alpha: Option<Vec<f32>>,
}

/// Number of pixels of a `width × height` image as `usize` (saturating).
pub(crate) fn pixel_count(width: u32, height: u32) -> usize {
    (width as usize).saturating_mul(height as usize)
}

impl Image {
    /// Builds an image, checking the buffer lengths.
    pub fn new(width: u32, height: u32, rgb: Vec<f32>, alpha: Option<Vec<f32>>) -> Result<Image> {
        let img = Image {
            width,
            height,
            rgb,
            alpha,
        };
        img.validate()?;
        Ok(img)
    }

    /// An image filled with one colour (values in `[-1, 1]`), without alpha.
    pub fn filled(width: u32, height: u32, color: [f32; 3]) -> Image {
        let n = pixel_count(width, height);
        let mut rgb = Vec::with_capacity(n.saturating_mul(3));
        for c in color {
            rgb.extend(std::iter::repeat_n(c, n));
        }
        Image {
            width,
            height,
            rgb,
            alpha: None,
        }
    }

    /// Builds an image from interleaved 8-bit RGB bytes (`3 × width × height` of them).
    pub fn from_rgb8(width: u32, height: u32, data: &[u8]) -> Result<Image> {
        from_interleaved(width, height, data, 3, 255.0)
    }

    /// Builds an image with alpha from interleaved 8-bit RGBA bytes.
    pub fn from_rgba8(width: u32, height: u32, data: &[u8]) -> Result<Image> {
        from_interleaved(width, height, data, 4, 255.0)
    }

    /// Number of pixels (`width × height`).
    pub fn pixel_count(&self) -> usize {
        pixel_count(self.width, self.height)
    }

    /// Whether the image carries an alpha plane.
    pub fn has_alpha(&self) -> bool {
        self.alpha.is_some()
    }

    /// Checks that the buffer lengths match the dimensions.
    pub fn validate(&self) -> Result<()> {
        let n = self.pixel_count();
        let want = n.saturating_mul(3);
        if self.rgb.len() != want {
            return Err(Error::InvalidImage(format!(
                "{}×{} image needs {want} RGB samples, has {}",
                self.width,
                self.height,
                self.rgb.len()
            )));
        }
        if let Some(alpha) = &self.alpha {
            if alpha.len() != n {
                return Err(Error::InvalidImage(format!(
                    "{}×{} image needs {n} alpha samples, has {}",
                    self.width,
                    self.height,
                    alpha.len()
                )));
            }
        }
        Ok(())
    }

    /// Interleaved 8-bit RGB bytes (alpha, if any, is dropped).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.to_interleaved8(false)
    }

    /// Interleaved 8-bit RGBA bytes (alpha 255 where the image has none).
    pub fn to_rgba8(&self) -> Vec<u8> {
        self.to_interleaved8(true)
    }

    fn to_interleaved8(&self, with_alpha: bool) -> Vec<u8> {
        let n = self.pixel_count();
        let channels = if with_alpha { 4 } else { 3 };
        let plane = |c: usize| self.rgb.get(c * n..(c + 1) * n).unwrap_or(&[]);
        let (r, g, b) = (plane(0), plane(1), plane(2));
        if r.len() != n || g.len() != n || b.len() != n {
            // A malformed buffer (`validate` refuses it): missing samples read as mid-gray.
            let at = |p: &[f32], i: usize| denorm_u8(p.get(i).copied().unwrap_or(0.0));
            let alpha = self.alpha.as_deref().unwrap_or(&[]);
            let mut out = Vec::with_capacity(n.saturating_mul(channels));
            for i in 0..n {
                out.extend([at(r, i), at(g, i), at(b, i)]);
                if with_alpha {
                    out.push(alpha_to_u8(alpha.get(i).copied().unwrap_or(1.0)));
                }
            }
            return out;
        }
        let mut out = vec![0u8; n * channels];
        if with_alpha {
            let alpha = self.alpha.as_deref().filter(|a| a.len() == n);
            for (i, px) in out.chunks_exact_mut(4).enumerate() {
                px[0] = denorm_u8(r[i]);
                px[1] = denorm_u8(g[i]);
                px[2] = denorm_u8(b[i]);
                px[3] = alpha.map_or(255, |a| alpha_to_u8(a[i]));
            }
        } else {
            // Zipped slices, no bounds checks: the compiler vectorizes the conversion.
            for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                px[0] = denorm_u8(r);
                px[1] = denorm_u8(g);
                px[2] = denorm_u8(b);
            }
        }
        out
    }
}

/// Turns interleaved samples (1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA channels)
/// whose full scale is `max` (255, 65535 or 1.0) into a planar [`Image`]: colour becomes
/// `x / max * 2 - 1`, alpha `x / max`.
pub(crate) fn from_interleaved<T: Copy + Into<f32>>(
    width: u32,
    height: u32,
    data: &[T],
    channels: usize,
    max: f32,
) -> Result<Image> {
    let n = pixel_count(width, height);
    if !(1..=4).contains(&channels) || data.len() != n.saturating_mul(channels) {
        return Err(Error::InvalidImage(format!(
            "{width}×{height} image with {channels} channels needs {} samples, has {}",
            n.saturating_mul(channels),
            data.len()
        )));
    }
    let mut rgb = vec![0.0f32; n * 3];
    let mut alpha = (channels == 2 || channels == 4).then(|| vec![0.0f32; n]);
    let (r, rest) = rgb.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    // One loop per channel count, with no per-sample branch or bounds check, so that it
    // vectorises: this runs on every decoded pixel (it was half of a JPEG decode's time).
    let a = alpha.as_deref_mut().unwrap_or(&mut []);
    match channels {
        1 => spread::<T, 1>(data, max, r, g, b, a),
        2 => spread::<T, 2>(data, max, r, g, b, a),
        3 => spread::<T, 3>(data, max, r, g, b, a),
        _ => spread::<T, 4>(data, max, r, g, b, a),
    }
    Ok(Image {
        width,
        height,
        rgb,
        alpha,
    })
}

/// Interleaved samples of `C` channels (gray, gray+alpha, RGB, RGBA) to planes: colour as
/// `x / max * 2 - 1`, alpha as `x / max`. `a` is empty when there is no alpha channel.
#[inline(always)]
fn spread<T: Copy + Into<f32>, const C: usize>(
    data: &[T],
    max: f32,
    r: &mut [f32],
    g: &mut [f32],
    b: &mut [f32],
    a: &mut [f32],
) {
    let norm = |x: T| x.into() / max * 2.0 - 1.0;
    let px = data.chunks_exact(C);
    if C >= 3 {
        for (((px, r), g), b) in px.zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
            *r = norm(px[0]);
            *g = norm(px[1]);
            *b = norm(px[2]);
        }
    } else {
        for (((px, r), g), b) in px.zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
            let v = norm(px[0]);
            (*r, *g, *b) = (v, v, v);
        }
    }
    if C.is_multiple_of(2) {
        for (px, a) in data.chunks_exact(C).zip(a.iter_mut()) {
            *a = px[C - 1].into() / max;
        }
    }
}

/// 8-bit sample to `[-1, 1]`: `x / 255 * 2 - 1`.
#[inline]
pub fn norm_u8(x: u8) -> f32 {
    f32::from(x) / 255.0 * 2.0 - 1.0
}

/// 16-bit sample to `[-1, 1]`: `x / 65535 * 2 - 1`.
#[inline]
pub fn norm_u16(x: u16) -> f32 {
    f32::from(x) / 65535.0 * 2.0 - 1.0
}

/// `[-1, 1]` value to an 8-bit sample: `round((y + 1) / 2 * 255)` clamped to `0..=255`
/// (NaN maps to 0).
#[inline]
pub fn denorm_u8(y: f32) -> u8 {
    // Rounds half up by adding ½ to the clamped (non-negative) value and truncating: the same
    // as `round()` here, without the library call that `round` is on baseline x86-64 (6× the
    // time of the whole conversion). `as` saturates and maps NaN to 0.
    (((y + 1.0) * 127.5).clamp(0.0, 255.0) + 0.5) as u8
}

/// `[0, 1]` alpha to an 8-bit sample: `round(a * 255)` clamped (NaN maps to 0).
#[inline]
pub fn alpha_to_u8(a: f32) -> u8 {
    ((a * 255.0).clamp(0.0, 255.0) + 0.5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_round_trip_is_exact_for_every_value() {
        for x in 0..=255u8 {
            let y = norm_u8(x);
            assert!((-1.0..=1.0).contains(&y));
            assert_eq!(denorm_u8(y), x, "value {x}");
            assert_eq!(alpha_to_u8(f32::from(x) / 255.0), x, "alpha {x}");
        }
        assert_eq!(norm_u8(0), -1.0);
        assert_eq!(norm_u8(255), 1.0);
    }

    #[test]
    fn u16_keeps_precision() {
        assert_eq!(norm_u16(0), -1.0);
        assert_eq!(norm_u16(65535), 1.0);
        assert!(norm_u16(1001) > norm_u16(1000));
        let back = ((norm_u16(40000) + 1.0) / 2.0 * 65535.0).round();
        assert_eq!(back, 40000.0);
    }

    #[test]
    fn denorm_clamps_and_handles_nan() {
        assert_eq!(denorm_u8(-3.0), 0);
        assert_eq!(denorm_u8(7.0), 255);
        assert_eq!(denorm_u8(f32::NAN), 0);
        assert_eq!(denorm_u8(f32::INFINITY), 255);
        assert_eq!(alpha_to_u8(2.0), 255);
        assert_eq!(alpha_to_u8(-1.0), 0);
    }

    #[test]
    fn interleaved_round_trip() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
        let img = Image::from_rgba8(3, 2, &data).unwrap();
        assert!(img.has_alpha());
        assert_eq!(img.rgb.len(), 18);
        assert_eq!(img.to_rgba8(), data);
        // Planar layout: the first plane is red.
        assert_eq!(img.rgb[1], norm_u8(data[4]));
        assert_eq!(img.rgb[6], norm_u8(data[1]));
        let rgb = img.to_rgb8();
        assert_eq!(rgb.len(), 18);
        assert_eq!(&rgb[..3], &data[..3]);
    }

    #[test]
    fn gray_expands_to_rgb() {
        let img = from_interleaved(2, 1, &[0u8, 255, 128, 64], 2, 255.0).unwrap();
        assert_eq!(
            img.rgb,
            vec![-1.0, norm_u8(128), -1.0, norm_u8(128), -1.0, norm_u8(128)]
        );
        assert_eq!(img.to_rgba8(), vec![0, 0, 0, 255, 128, 128, 128, 64]);
    }

    #[test]
    fn validation() {
        assert!(Image::new(2, 2, vec![0.0; 12], None).is_ok());
        assert!(matches!(
            Image::new(2, 2, vec![0.0; 11], None),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            Image::new(2, 2, vec![0.0; 12], Some(vec![1.0; 3])),
            Err(Error::InvalidImage(_))
        ));
        assert!(Image::from_rgb8(2, 2, &[0; 11]).is_err());
    }

    #[test]
    fn inconsistent_buffers_do_not_panic() {
        let img = Image {
            width: 4,
            height: 4,
            rgb: vec![0.0; 5],
            alpha: Some(vec![]),
        };
        assert_eq!(img.to_rgba8().len(), 64);
        assert_eq!(img.to_rgb8()[0], 128);
    }

    #[test]
    fn filled() {
        let img = Image::filled(3, 2, [-1.0, 0.0, 1.0]);
        assert!(img.validate().is_ok());
        assert_eq!(img.to_rgb8()[..3], [0, 128, 255]);
    }
}
