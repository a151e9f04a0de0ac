//! Resource limits applied before and during decoding.

use crate::error::{Error, Result};

/// Bounds on untrusted input, checked before any pixel is decoded.
///
/// The limits are symmetric in width and height, so an EXIF rotation that swaps the
/// dimensions never changes the outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest accepted `width × height`. Default: 64 000 000 (64 megapixels).
    pub max_pixels: u64,
    /// Largest accepted width and largest accepted height. Default: 16 384.
    pub max_side: u32,
    /// Largest accepted encoded input, in bytes. Default: 256 MiB.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 64_000_000,
            max_side: 16_384,
            max_bytes: 256 << 20,
        }
    }
}

impl Limits {
    /// Checks image dimensions: no zero side, no side over `max_side`, at most
    /// `max_pixels` pixels.
    pub fn check_dimensions(&self, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::ZeroSize { width, height });
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(Error::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        if width > self.max_side || height > self.max_side {
            return Err(Error::SideTooLong {
                width,
                height,
                max_side: self.max_side,
            });
        }
        Ok(())
    }

    /// Checks the size of an encoded input (the empty input is rejected too).
    pub fn check_input_len(&self, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Err(Error::Empty);
        }
        if bytes > self.max_bytes {
            return Err(Error::InputTooLarge {
                bytes,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Memory budget handed to the decoders for a `width × height` image (capped at
    /// `max_pixels`): room for the decoded pixels at the widest sample type this crate meets
    /// (RGBA, 16 bit: 8 bytes per pixel) plus 64 MiB for the decoders' own buffers (zlib
    /// window, ICC profile, decompressed text chunks).
    pub(crate) fn decoder_alloc_budget(&self, width: u32, height: u32) -> u64 {
        let pixels = (u64::from(width) * u64::from(height)).min(self.max_pixels);
        pixels.saturating_mul(8).saturating_add(64 << 20)
    }

    /// The equivalent [`image::Limits`] for decoding a `width × height` image.
    pub(crate) fn to_image_limits(self, width: u32, height: u32) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits.max_alloc = Some(self.decoder_alloc_budget(width, height));
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.max_pixels, 64_000_000);
        assert_eq!(l.max_side, 16384);
        assert_eq!(l.max_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn dimension_checks() {
        let l = Limits::default();
        assert!(l.check_dimensions(8000, 8000).is_ok());
        assert!(matches!(
            l.check_dimensions(0, 10),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            l.check_dimensions(20000, 20000),
            Err(Error::TooManyPixels { .. })
        ));
        assert!(matches!(
            l.check_dimensions(16385, 10),
            Err(Error::SideTooLong { .. })
        ));
        assert!(matches!(
            l.check_dimensions(u32::MAX, u32::MAX),
            Err(Error::TooManyPixels { .. })
        ));
        // Symmetric: swapping the sides (EXIF rotation) never changes the outcome.
        assert!(l.check_dimensions(16384, 3000).is_ok());
        assert!(l.check_dimensions(3000, 16384).is_ok());
    }

    #[test]
    fn input_len_checks() {
        let l = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(l.check_input_len(0), Err(Error::Empty)));
        assert!(l.check_input_len(10).is_ok());
        assert!(matches!(
            l.check_input_len(11),
            Err(Error::InputTooLarge {
                bytes: 11,
                max_bytes: 10
            })
        ));
    }

    #[test]
    fn budget_saturates() {
        let l = Limits {
            max_pixels: u64::MAX,
            ..Limits::default()
        };
        assert_eq!(l.decoder_alloc_budget(u32::MAX, u32::MAX), u64::MAX);
        // Small images get a small budget, whatever the limit.
        let small = Limits::default().decoder_alloc_budget(10, 10);
        assert_eq!(small, 800 + (64 << 20));
        let image = l.to_image_limits(100, 100);
        assert_eq!(image.max_image_width, Some(16384));
        assert_eq!(image.max_alloc, Some(80_000 + (64 << 20)));
    }
}
