//! Supported container formats and content sniffing.

use std::fmt;

/// An image format this crate can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JPEG (baseline and progressive; 8 bit).
    Jpeg,
    /// PNG (all colour types and bit depths; 16-bit samples keep their precision).
    Png,
    /// WebP (lossy and lossless, with or without alpha; the encoder is lossless only).
    WebP,
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

impl Format {
    /// Every supported format.
    pub const ALL: [Format; 3] = [Format::Jpeg, Format::Png, Format::WebP];

    /// Identifies the format from the first bytes of the data (magic numbers only,
    /// never the file name). Returns `None` for anything else, including inputs too
    /// short to tell.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(PNG_MAGIC) {
            Some(Format::Png)
        } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else {
            None
        }
    }

    /// Maps a file extension (`jpg`, `.JPEG`, `png`, `webp`, ...; case-insensitive,
    /// leading dot optional) to a format. Meant for choosing an *output* format;
    /// inputs are always identified with [`Format::sniff`].
    pub fn from_extension(ext: &str) -> Option<Format> {
        let ext = ext.strip_prefix('.').unwrap_or(ext).to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" | "jpe" | "jfif" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::WebP),
            _ => None,
        }
    }

    /// The conventional file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::WebP => "webp",
        }
    }

    /// The MIME type (`image/jpeg`, `image/png`, `image/webp`).
    pub fn mime_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
        }
    }

    /// Whether the format can store an alpha channel (JPEG cannot).
    pub fn supports_alpha(self) -> bool {
        !matches!(self, Format::Jpeg)
    }

    pub(crate) fn to_image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::WebP => image::ImageFormat::WebP,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::WebP => "WebP",
        })
    }
}

/// Describes data that [`Format::sniff`] did not recognise, for error messages.
pub(crate) fn describe_unknown(bytes: &[u8]) -> String {
    let known: &[(&[u8], &str)] = &[
        (b"GIF87a", "GIF image"),
        (b"GIF89a", "GIF image"),
        (b"BM", "BMP image"),
        (b"II*\0", "TIFF image"),
        (b"MM\0*", "TIFF image"),
        (b"%PDF", "PDF document"),
        (b"\xFF\x0A", "JPEG XL image"),
        (b"\0\0\0\x0CJXL ", "JPEG XL image"),
        (b"\0\0\x01\0", "ICO image"),
        (b"8BPS", "Photoshop document"),
        (b"qoif", "QOI image"),
        (b"PK\x03\x04", "ZIP archive"),
        (b"\x1F\x8B", "gzip data"),
    ];
    if let Some((_, name)) = known.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return (*name).to_owned();
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = String::from_utf8_lossy(&bytes[8..12]).into_owned();
        return match brand.as_str() {
            "avif" | "avis" => "AVIF image".to_owned(),
            "heic" | "heix" | "mif1" | "msf1" | "hevc" => "HEIF/HEIC image".to_owned(),
            _ => format!("ISO media file (brand {brand:?})"),
        };
    }
    if bytes.starts_with(b"RIFF") {
        return "RIFF file that is not WebP".to_owned();
    }
    if Format::ALL.iter().any(|f| is_prefix_of_magic(*f, bytes)) {
        return format!("only {} bytes, too short to identify", bytes.len());
    }
    let head = &bytes[..bytes.len().min(512)];
    let text = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        // A multi-byte character cut off at the end of the sniffed window.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    let texty = text.is_some_and(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    });
    if texty {
        if text.is_some_and(|s| s.trim_start().starts_with('<')) {
            return "text (XML, SVG or HTML markup)".to_owned();
        }
        return "text, not an image".to_owned();
    }
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unrecognised data starting with {}", hex.join(" "))
}

/// True when `bytes` is a (strict) prefix of the signature of `format`.
fn is_prefix_of_magic(format: Format, bytes: &[u8]) -> bool {
    let magic: &[u8] = match format {
        Format::Jpeg => &[0xFF, 0xD8, 0xFF],
        Format::Png => PNG_MAGIC,
        Format::WebP => b"RIFF",
    };
    !bytes.is_empty() && bytes.len() < magic.len() && magic.starts_with(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_magic() {
        assert_eq!(Format::sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Format::Jpeg));
        assert_eq!(Format::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(Format::Png));
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::WebP));
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(Format::sniff(b"GIF89a"), None);
        assert_eq!(Format::sniff(b""), None);
        assert_eq!(Format::sniff(b"\x89PN"), None);
    }

    #[test]
    fn extensions() {
        assert_eq!(Format::from_extension("JPG"), Some(Format::Jpeg));
        assert_eq!(Format::from_extension(".jpeg"), Some(Format::Jpeg));
        assert_eq!(Format::from_extension("png"), Some(Format::Png));
        assert_eq!(Format::from_extension("WebP"), Some(Format::WebP));
        assert_eq!(Format::from_extension("gif"), None);
        assert_eq!(Format::from_extension(""), None);
        for f in Format::ALL {
            assert_eq!(Format::from_extension(f.extension()), Some(f));
        }
    }

    #[test]
    fn describe() {
        assert_eq!(describe_unknown(b"GIF89a..."), "GIF image");
        assert_eq!(describe_unknown(b"hello world\n"), "text, not an image");
        assert_eq!(
            describe_unknown(b"<svg xmlns=...>"),
            "text (XML, SVG or HTML markup)"
        );
        assert_eq!(
            describe_unknown(b"\x89PN"),
            "only 3 bytes, too short to identify"
        );
        assert_eq!(
            describe_unknown(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            "unrecognised data starting with 00 01 02 03 04 05 06 07"
        );
        assert_eq!(describe_unknown(b"\0\0\0\x1cftypavif\0\0"), "AVIF image");
    }
}
