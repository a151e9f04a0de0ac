//! The crate's error type.

use std::path::PathBuf;

use crate::format::Format;

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, decoding, encoding or tiling images.
///
/// Every message is a single line that says what was wrong, so it can be shown to a
/// user as is (for example `image is 20000×20000 (400.0 megapixels), over the limit of
/// 64 megapixels`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input holds no bytes at all.
    #[error("input is empty (0 bytes)")]
    Empty,

    /// The input is not JPEG, PNG or WebP; `found` describes what it looks like instead.
    #[error("unsupported image format: {found}; supported formats are JPEG, PNG and WebP")]
    UnsupportedFormat {
        /// A short description of what the input looks like (e.g. `GIF image`, `text`).
        found: String,
    },

    /// The encoded input is larger than [`Limits::max_bytes`](crate::Limits::max_bytes).
    #[error(
        "input is {} ({bytes} bytes), over the limit of {}",
        human_bytes(*bytes),
        human_bytes(*max_bytes)
    )]
    InputTooLarge {
        /// Size of the input in bytes.
        bytes: u64,
        /// The configured limit in bytes.
        max_bytes: u64,
    },

    /// The image has more pixels than [`Limits::max_pixels`](crate::Limits::max_pixels).
    #[error(
        "image is {width}×{height} ({}), over the limit of {}",
        image_pixels(u64::from(*width) * u64::from(*height)),
        limit_pixels(*max_pixels)
    )]
    TooManyPixels {
        /// Width declared by the image header.
        width: u32,
        /// Height declared by the image header.
        height: u32,
        /// The configured pixel limit.
        max_pixels: u64,
    },

    /// One side of the image is longer than [`Limits::max_side`](crate::Limits::max_side).
    #[error("image is {width}×{height}, a side is longer than the limit of {max_side} pixels")]
    SideTooLong {
        /// Width declared by the image header.
        width: u32,
        /// Height declared by the image header.
        height: u32,
        /// The configured side limit.
        max_side: u32,
    },

    /// The image header declares a zero width or height.
    #[error("image is {width}×{height}, it has no pixels")]
    ZeroSize {
        /// Width declared by the image header.
        width: u32,
        /// Height declared by the image header.
        height: u32,
    },

    /// The data ends before the image is complete.
    #[error("{format} data is truncated: {reason}")]
    Truncated {
        /// Format of the input.
        format: Format,
        /// What the decoder reported.
        reason: String,
    },

    /// The data is malformed.
    #[error("corrupt {format} data: {reason}")]
    Corrupt {
        /// Format of the input.
        format: Format,
        /// What the decoder reported.
        reason: String,
    },

    /// The file is well formed but uses a feature the decoder does not support.
    #[error("unsupported {format} feature: {reason}")]
    UnsupportedFeature {
        /// Format of the input.
        format: Format,
        /// What the decoder reported.
        reason: String,
    },

    /// Decoding would need more memory than the limits allow.
    #[error("decoding this {format} image would exceed the memory limit: {reason}")]
    MemoryLimit {
        /// Format of the input.
        format: Format,
        /// What exceeded the limit.
        reason: String,
    },

    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The path exists but is not a regular file (a directory, a device, ...).
    #[error("cannot read {}: not a regular file", path.display())]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },

    /// An [`Image`](crate::Image)'s buffers do not match its dimensions.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// Encoding failed.
    #[error("cannot encode {width}×{height} image as {format}: {reason}")]
    Encode {
        /// The requested output format.
        format: Format,
        /// Width of the image.
        width: u32,
        /// Height of the image.
        height: u32,
        /// What the encoder reported.
        reason: String,
    },

    /// Tiling parameters are unusable (zero tile size, overlap not smaller than the tile).
    #[error("invalid tiling: {0}")]
    InvalidTiling(String),

    /// A tile handed to a [`Blender`](crate::Blender) does not fit the output image.
    #[error("tile does not fit: {0}")]
    TileMismatch(String),
}

/// `12.3 MiB`-style rendering of a byte count (binary units, trailing zeros trimmed).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{} {}", trim_float(value, 1), UNITS[unit])
    }
}

/// Pixel count of an actual image: `400.0 megapixels`, or `1234 pixels` when small.
fn image_pixels(pixels: u64) -> String {
    if pixels >= 100_000 {
        format!("{:.1} megapixels", pixels as f64 / 1e6)
    } else {
        format!("{pixels} pixels")
    }
}

/// Pixel count of a limit: `64 megapixels`, `1.5 megapixels`, or `1000 pixels` when small.
fn limit_pixels(pixels: u64) -> String {
    if pixels >= 100_000 {
        format!("{} megapixels", trim_float(pixels as f64 / 1e6, 3))
    } else {
        format!("{pixels} pixels")
    }
}

/// Formats with at most `decimals` decimals and no trailing zeros.
fn trim_float(value: f64, decimals: usize) -> String {
    let s = format!("{value:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_pixels_message() {
        let e = Error::TooManyPixels {
            width: 20000,
            height: 20000,
            max_pixels: 64_000_000,
        };
        assert_eq!(
            e.to_string(),
            "image is 20000×20000 (400.0 megapixels), over the limit of 64 megapixels"
        );
        let e = Error::TooManyPixels {
            width: 20,
            height: 10,
            max_pixels: 100,
        };
        assert_eq!(
            e.to_string(),
            "image is 20×10 (200 pixels), over the limit of 100 pixels"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 << 20), "256 MiB");
        let e = Error::InputTooLarge {
            bytes: 300 << 20,
            max_bytes: 256 << 20,
        };
        assert_eq!(
            e.to_string(),
            "input is 300 MiB (314572800 bytes), over the limit of 256 MiB"
        );
    }

    #[test]
    fn limit_rendering() {
        assert_eq!(limit_pixels(1_500_000), "1.5 megapixels");
        assert_eq!(limit_pixels(64_000_000), "64 megapixels");
        assert_eq!(image_pixels(99_999), "99999 pixels");
    }
}
