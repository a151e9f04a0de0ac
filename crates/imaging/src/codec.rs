//! Probing, decoding and encoding.

use std::fs::File;
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::error::LimitErrorKind;
use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageReader};

use crate::buffer::{from_interleaved, Image};
use crate::error::{Error, Result};
use crate::format::{describe_unknown, Format};
use crate::limits::Limits;

/// Identifies the format and reads the dimensions from the header only, then checks them
/// against `limits`. No pixel data is decoded, so this is cheap and safe on hostile input
/// (a decompression bomb is refused here).
///
/// The dimensions are those stored in the file, before any EXIF rotation; since the limits
/// are symmetric, a rotation cannot change the outcome.
///
/// # Errors
/// [`Error::Empty`], [`Error::InputTooLarge`], [`Error::UnsupportedFormat`],
/// [`Error::ZeroSize`], [`Error::TooManyPixels`], [`Error::SideTooLong`], or a decoding
/// error ([`Error::Truncated`], [`Error::Corrupt`], ...) when the header is unreadable.
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<(Format, u32, u32)> {
    limits.check_input_len(bytes.len() as u64)?;
    let format = Format::sniff(bytes).ok_or_else(|| Error::UnsupportedFormat {
        found: describe_unknown(bytes),
    })?;
    let (width, height) = guard(format, || {
        ImageReader::with_format(Cursor::new(bytes), format.to_image_format()).into_dimensions()
    })?;
    limits.check_dimensions(width, height)?;
    Ok((format, width, height))
}

/// Decodes a JPEG, PNG or WebP image (identified by its content) into a planar [`Image`].
///
/// The size of the input and the dimensions in its header are checked (see [`probe`]) before
/// any pixel is decoded, and the decoders run with matching `image::Limits` so a lying header
/// cannot make them allocate without bound. The EXIF orientation (JPEG APP1, PNG `eXIf`,
/// WebP `EXIF`) is applied, so the result is upright; an unreadable EXIF block is ignored.
///
/// Gray, gray+alpha, palette, RGB and RGBA sources at any bit depth become RGB; 16-bit PNG
/// samples keep their precision (`x / 65535 * 2 - 1`). `alpha` is `Some` exactly when the
/// source has an alpha channel (including PNG palette transparency).
///
/// # Errors
/// Everything [`probe`] returns, plus [`Error::Truncated`], [`Error::Corrupt`],
/// [`Error::UnsupportedFeature`] and [`Error::MemoryLimit`] from the decoder.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Image> {
    let (format, width, height) = probe(bytes, limits)?;
    check_complete(format, bytes, width, height)?;
    let decoded = guard(format, || {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_format());
        reader.limits(limits.to_image_limits(width, height));
        let mut decoder = reader.into_decoder()?;
        if decoder.dimensions() != (width, height) {
            return Err(ImageError::Decoding(image::error::DecodingError::new(
                format.to_image_format().into(),
                "header dimensions changed between reads",
            )));
        }
        let budget = limits.decoder_alloc_budget(width, height);
        if decoder.total_bytes() > budget {
            return Err(ImageError::Limits(image::error::LimitError::from_kind(
                LimitErrorKind::InsufficientMemory,
            )));
        }
        // Broken EXIF must not make an otherwise fine image undecodable.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder)?;
        img.apply_orientation(orientation);
        Ok(img)
    })?;
    to_planar(decoded)
}

/// Reads and decodes an image file. The file size is checked against
/// [`Limits::max_bytes`] from its metadata before anything is read (and the read itself is
/// capped, in case the file grows meanwhile); the format comes from the content, never from
/// the file name.
///
/// # Errors
/// [`Error::Io`] or [`Error::NotAFile`] when the file cannot be read, otherwise as
/// [`decode`].
pub fn decode_file(path: impl AsRef<Path>, limits: &Limits) -> Result<Image> {
    let bytes = read_file(path.as_ref(), limits)?;
    decode(&bytes, limits)
}

/// Reads a whole file, refusing files larger than [`Limits::max_bytes`] (checked from the
/// metadata first, so an oversized file is never read) and non-regular files.
///
/// # Errors
/// [`Error::Io`], [`Error::NotAFile`], [`Error::Empty`] or [`Error::InputTooLarge`].
pub fn read_file(path: impl AsRef<Path>, limits: &Limits) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
        });
    }
    limits.check_input_len(meta.len())?;
    let file = File::open(path).map_err(io_err)?;
    let cap = usize::try_from(meta.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(cap);
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    limits.check_input_len(bytes.len() as u64)?;
    Ok(bytes)
}

/// Encodes an [`Image`] as 8-bit JPEG, PNG or WebP. The output carries no metadata at all
/// (no EXIF, GPS, ICC profile or text chunks).
///
/// * JPEG: `quality` (clamped to 1–100) is the libjpeg-style quality; 4:4:4, no chroma
///   subsampling. JPEG has no alpha, so `alpha` is dropped.
/// * PNG: RGBA when the image has alpha, RGB otherwise; `quality` is ignored.
/// * WebP: **lossless** (the `image` crate has no lossy WebP encoder); RGBA when the image has
///   alpha; `quality` is ignored.
///
/// Samples are mapped with [`denorm_u8`](crate::denorm_u8) (`round((y + 1) / 2 * 255)`,
/// clamped).
///
/// # Errors
/// [`Error::InvalidImage`] when the buffers do not match the dimensions, [`Error::Encode`]
/// for an empty image or one the format cannot hold (JPEG sides are at most 65 535 pixels,
/// WebP sides at most 16 384).
pub fn encode(img: &Image, format: Format, quality: u8) -> Result<Vec<u8>> {
    img.validate()?;
    let encode_err = |reason: String| Error::Encode {
        format,
        width: img.width,
        height: img.height,
        reason,
    };
    if img.width == 0 || img.height == 0 {
        return Err(encode_err("the image has no pixels".to_owned()));
    }
    let with_alpha = img.has_alpha() && format.supports_alpha();
    let (data, color) = if with_alpha {
        (img.to_rgba8(), ExtendedColorType::Rgba8)
    } else {
        (img.to_rgb8(), ExtendedColorType::Rgb8)
    };
    let (w, h) = (img.width, img.height);
    let mut out = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| match format {
        Format::Jpeg => encode_jpeg(&mut out, &data, w, h, quality),
        Format::Png => PngEncoder::new(&mut out).write_image(&data, w, h, color),
        Format::WebP => WebPEncoder::new_lossless(&mut out).encode(&data, w, h, color),
    }));
    match result {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(encode_err(e.to_string())),
        Err(_) => Err(encode_err("the encoder panicked".to_owned())),
    }
}

/// Baseline JPEG (the standard tables scaled to `quality`; chroma at full resolution from
/// quality 90, halved both ways below) of interleaved RGB bytes,
/// through `jpeg-encoder`: a quarter of the time `image`'s encoder takes at the same size and
/// quality.
fn encode_jpeg(
    out: &mut Vec<u8>,
    rgb: &[u8],
    w: u32,
    h: u32,
    quality: u8,
) -> image::ImageResult<()> {
    let side =
        |v: u32| u16::try_from(v).map_err(|_| "JPEG sides are at most 65 535 pixels".to_owned());
    let to_err = |m: String| {
        ImageError::Encoding(image::error::EncodingError::new(
            image::ImageFormat::Jpeg.into(),
            m,
        ))
    };
    let (w, h) = (side(w).map_err(to_err)?, side(h).map_err(to_err)?);
    jpeg_encoder::Encoder::new(out, quality.clamp(1, 100))
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| to_err(e.to_string()))
}

/// Cheap structural check for truncation that the decoders tolerate: zune-jpeg fills a
/// JPEG cut inside its scan data with gray, and image-webp accepts a file shorter than its
/// RIFF header declares when the missing bytes are padding. Both are refused here, as
/// libjpeg-turbo's strict mode and libwebp do.
fn check_complete(format: Format, bytes: &[u8], width: u32, height: u32) -> Result<()> {
    let truncated = |reason: &str| {
        Err(Error::Truncated {
            format,
            reason: reason.to_owned(),
        })
    };
    // Huffman-coded JPEG (the only kind the decoder reads) spends at least one bit on every
    // 8×8 luma block (its DC code), so a file with fewer than blocks/16 bytes (half of that)
    // cannot hold its declared picture: it would decode to a mostly invented image at the full
    // cost of its declared size (a 633-byte file declaring 4000×16000 took 3.6 s and 1.26 GB).
    let blocks = u64::from(width.div_ceil(8)) * u64::from(height.div_ceil(8));
    match format {
        Format::Jpeg if jpeg_eoi(bytes) == Some(false) => {
            truncated("the end-of-image marker is missing")
        }
        Format::Jpeg if (bytes.len() as u64) < blocks / 16 => truncated(&format!(
            "{} bytes cannot hold a {width}×{height} picture (at least {} for its {blocks} blocks)",
            bytes.len(),
            blocks / 16
        )),
        Format::WebP => {
            let declared = bytes
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .map_or(0, |size| u64::from(size) + 8);
            if declared > bytes.len() as u64 {
                return Err(Error::Truncated {
                    format,
                    reason: format!(
                        "the RIFF header declares {declared} bytes, only {} present",
                        bytes.len()
                    ),
                });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether a JPEG stream has an end-of-image marker after its first scan header:
/// `Some(true)` yes, `Some(false)` the data ends first, `None` the marker structure is not
/// understood (left to the decoder to judge).
///
/// The marker segments are walked up to the first SOS so that the EOI of a thumbnail
/// embedded in an APP segment does not count; after that any `FF D9` is a real marker,
/// since entropy-coded data escapes `0xFF` as `FF 00`.
fn jpeg_eoi(bytes: &[u8]) -> Option<bool> {
    let mut pos = 2; // after SOI
    loop {
        match bytes.get(pos) {
            None => return Some(false),
            Some(0xFF) => {}
            Some(_) => return None,
        }
        while bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        let Some(&marker) = bytes.get(pos + 1) else {
            return Some(false);
        };
        match marker {
            0xD9 => return Some(true),
            0x01 | 0xD0..=0xD7 => {
                pos += 2; // markers without a length
                continue;
            }
            _ => {}
        }
        let Some(len) = bytes.get(pos + 2..pos + 4) else {
            return Some(false);
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return None;
        }
        let next = pos + 2 + len;
        if marker == 0xDA {
            let rest = bytes.get(next..).unwrap_or(&[]);
            return Some(rest.windows(2).any(|w| w == [0xFF, 0xD9]));
        }
        pos = next;
    }
}

/// Runs a decoder step, turning `image` errors and decoder panics into [`Error`]s.
///
/// The decoders are not supposed to panic, but they parse hostile data; a panic (with the
/// default `panic = "unwind"`) is reported as [`Error::Corrupt`] instead of taking the
/// process down.
fn guard<T>(format: Format, f: impl FnOnce() -> image::ImageResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_image_error(format, e)),
        Err(_) => Err(Error::Corrupt {
            format,
            reason: "the decoder panicked on malformed data".to_owned(),
        }),
    }
}

/// Maps an `image` decoding error onto this crate's [`Error`].
fn map_image_error(format: Format, e: ImageError) -> Error {
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Truncated {
                format,
                reason: "unexpected end of data".to_owned(),
            }
        }
        ImageError::Limits(l) => Error::MemoryLimit {
            format,
            reason: l.to_string(),
        },
        ImageError::Unsupported(u) => Error::UnsupportedFeature {
            format,
            reason: u.to_string(),
        },
        other => {
            let reason = one_line(&other.to_string());
            if looks_truncated(&reason) {
                Error::Truncated { format, reason }
            } else {
                Error::Corrupt { format, reason }
            }
        }
    }
}

/// Decoder messages that mean the data stopped early.
fn looks_truncated(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "unexpected end",
        "unexpected eof",
        "no more bytes",
        "end of file",
        "truncated",
    ]
    .iter()
    .any(|needle| r.contains(needle))
}

/// Collapses a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Converts whatever the decoder produced into planar `[-1, 1]` RGB plus optional alpha.
fn to_planar(img: DynamicImage) -> Result<Image> {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageLuma8(b) => from_interleaved(w, h, b.as_raw(), 1, 255.0),
        DynamicImage::ImageLumaA8(b) => from_interleaved(w, h, b.as_raw(), 2, 255.0),
        DynamicImage::ImageRgb8(b) => from_interleaved(w, h, b.as_raw(), 3, 255.0),
        DynamicImage::ImageRgba8(b) => from_interleaved(w, h, b.as_raw(), 4, 255.0),
        DynamicImage::ImageLuma16(b) => from_interleaved(w, h, b.as_raw(), 1, 65535.0),
        DynamicImage::ImageLumaA16(b) => from_interleaved(w, h, b.as_raw(), 2, 65535.0),
        DynamicImage::ImageRgb16(b) => from_interleaved(w, h, b.as_raw(), 3, 65535.0),
        DynamicImage::ImageRgba16(b) => from_interleaved(w, h, b.as_raw(), 4, 65535.0),
        DynamicImage::ImageRgb32F(b) => from_interleaved(w, h, b.as_raw(), 3, 1.0),
        DynamicImage::ImageRgba32F(b) => from_interleaved(w, h, b.as_raw(), 4, 1.0),
        other => {
            let has_alpha = other.color().has_alpha();
            let rgba = other.into_rgba32f();
            let img = from_interleaved(w, h, rgba.as_raw(), 4, 1.0)?;
            Ok(if has_alpha {
                img
            } else {
                Image { alpha: None, ..img }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_eoi_walk() {
        // SOI, APP1 holding a fake thumbnail EOI, SOS, data, EOI.
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x04, 0x01, 0x02, 0x12, 0xFF, 0x00, 0x34]);
        assert_eq!(jpeg_eoi(&j), Some(false), "thumbnail EOI must not count");
        j.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(jpeg_eoi(&j), Some(true));
        assert_eq!(jpeg_eoi(&j[..5]), Some(false));
        assert_eq!(jpeg_eoi(&[0xFF, 0xD8, 0x00]), None);
        assert_eq!(jpeg_eoi(&[0xFF, 0xD8]), Some(false));
    }
}
