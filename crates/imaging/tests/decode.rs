//! Decoding, encoding and hostile-input tests. Every fixture is generated in code.

use std::io::Cursor;

use atelier_imaging::{
    decode, decode_file, encode, norm_u16, probe, read_file, Error, Format, Image, Limits,
};

// ---------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------

/// A smooth RGBA test pattern (alpha varies too) as interleaved bytes.
fn pattern_rgba(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            v.push((x * 255 / w.max(2).saturating_sub(1).max(1)) as u8);
            v.push((y * 255 / h.max(2).saturating_sub(1).max(1)) as u8);
            v.push(((x + y) * 4 % 256) as u8);
            v.push((255 - (x * 3 + y * 5) % 256) as u8);
        }
    }
    v
}

fn pattern_rgb(w: u32, h: u32) -> Vec<u8> {
    pattern_rgba(w, h)
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// Deterministic xorshift64 byte generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// One PNG chunk with its length and CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// zlib stream with a single stored (uncompressed) deflate block.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() <= 65535);
    let len = data.len() as u16;
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn ihdr(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut d = width.to_be_bytes().to_vec();
    d.extend_from_slice(&height.to_be_bytes());
    d.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    png_chunk(b"IHDR", &d)
}

/// A PNG built by hand: signature, IHDR, extra chunks, one IDAT with `scanlines` (each
/// already prefixed with its filter byte), IEND.
fn handmade_png(ihdr_chunk: Vec<u8>, extra: &[Vec<u8>], scanlines: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(ihdr_chunk);
    for chunk in extra {
        out.extend_from_slice(chunk);
    }
    out.extend(png_chunk(b"IDAT", &zlib_stored(scanlines)));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Chunk types of a PNG, in order.
fn png_chunk_types(png: &[u8]) -> Vec<String> {
    let mut types = Vec::new();
    let mut pos = 8;
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        types.push(String::from_utf8_lossy(&png[pos + 4..pos + 8]).into_owned());
        pos += 12 + len;
    }
    types
}

/// JPEG marker bytes of the segments before the scan data (SOI excluded).
fn jpeg_markers(jpeg: &[u8]) -> Vec<u8> {
    let mut markers = Vec::new();
    let mut pos = 2;
    while pos + 4 <= jpeg.len() && jpeg[pos] == 0xFF {
        let marker = jpeg[pos + 1];
        markers.push(marker);
        if marker == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
        pos += 2 + len;
    }
    markers
}

/// RIFF chunk ids of a WebP file.
fn webp_chunks(webp: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut pos = 12;
    while pos + 8 <= webp.len() {
        ids.push(String::from_utf8_lossy(&webp[pos..pos + 4]).into_owned());
        let len = u32::from_le_bytes(webp[pos + 4..pos + 8].try_into().unwrap()) as usize;
        pos += 8 + len + (len & 1);
    }
    ids
}

/// A big-endian TIFF block holding only an Orientation tag.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD0
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_be_bytes()); // count
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0]); // value padding
    t.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    t
}

/// Inserts an APP1 Exif segment right after the JPEG SOI marker.
fn with_jpeg_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(exif_tiff(orientation));
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The error of a result that must have failed (without dumping a decoded image on Ok).
fn expect_err<T>(r: atelier_imaging::Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e,
    }
}

fn limits() -> Limits {
    Limits::default()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x.abs_diff(y)))
        .sum::<f64>()
        / a.len() as f64
}

/// Average 8-bit luma-ish value of a square around `(x, y)` of an RGB image.
fn patch_mean(img: &Image, x: u32, y: u32, r: u32) -> f64 {
    let rgb = img.to_rgb8();
    let mut sum = 0.0;
    let mut n = 0.0;
    for yy in y.saturating_sub(r)..(y + r + 1).min(img.height) {
        for xx in x.saturating_sub(r)..(x + r + 1).min(img.width) {
            let i = ((yy * img.width + xx) * 3) as usize;
            sum += f64::from(rgb[i]) + f64::from(rgb[i + 1]) + f64::from(rgb[i + 2]);
            n += 3.0;
        }
    }
    sum / n
}

/// An image that is black except for a white `size × size` block in the top-left corner.
fn corner_marked(w: u32, h: u32, size: u32) -> Image {
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let v = if x < size && y < size { 255 } else { 0 };
            rgb.extend_from_slice(&[v, v, v]);
        }
    }
    Image::from_rgb8(w, h, &rgb).unwrap()
}

fn tmp_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("atelier-imaging-{}-{name}", std::process::id()))
}

/// A lossy WebP (VP8) made with `cwebp -q 90` from a 16×16 pattern: R = 16x, G = 16y,
/// B = 128.
const LOSSY_WEBP_RGB: &[u8] = &[
    0x52, 0x49, 0x46, 0x46, 0x62, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x20,
    0x56, 0x00, 0x00, 0x00, 0xd0, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x10, 0x00, 0x10, 0x00, 0x00, 0xc0,
    0x12, 0x25, 0xb0, 0x02, 0x74, 0x73, 0x01, 0x72, 0x81, 0xbc, 0x00, 0xaf, 0x00, 0x13, 0x77, 0x2d,
    0xb9, 0x5a, 0xe8, 0x00, 0xfe, 0xff, 0xab, 0xcc, 0xfd, 0x7c, 0x41, 0x4e, 0xe0, 0x59, 0x77, 0x83,
    0xaa, 0x58, 0x88, 0x68, 0x3c, 0x0f, 0x05, 0xbb, 0xff, 0xf6, 0x5d, 0x63, 0x1f, 0xe4, 0x2e, 0xbb,
    0x4d, 0xd8, 0x1f, 0x74, 0x5c, 0x17, 0xbf, 0xca, 0x05, 0xdf, 0xff, 0x97, 0x1a, 0x50, 0x2e, 0xff,
    0xfc, 0xdb, 0xf2, 0x81, 0x2e, 0x95, 0xf3, 0x60, 0x00, 0x00,
];

/// The same pattern as [`LOSSY_WEBP_RGB`] with an alpha channel (VP8X + lossless ALPH +
/// lossy VP8): alpha 255 for x < 8, else 0 for y < 8 and 128 below.
const LOSSY_WEBP_RGBA: &[u8] = &[
    0x52, 0x49, 0x46, 0x46, 0x96, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x58,
    0x0a, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x41, 0x4c,
    0x50, 0x48, 0x19, 0x00, 0x00, 0x00, 0x01, 0x17, 0x20, 0x10, 0x48, 0x52, 0x9f, 0x7c, 0x8d, 0x88,
    0x08, 0x07, 0x81, 0x00, 0x61, 0xd2, 0xa4, 0x53, 0x07, 0x11, 0xfd, 0x0f, 0x85, 0x5b, 0x0f, 0x00,
    0x56, 0x50, 0x38, 0x20, 0x56, 0x00, 0x00, 0x00, 0xd0, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x10, 0x00,
    0x10, 0x00, 0x00, 0xc0, 0x12, 0x25, 0xb0, 0x02, 0x74, 0x73, 0x01, 0x72, 0x81, 0xbc, 0x00, 0xaf,
    0x00, 0x13, 0x77, 0x2d, 0xb9, 0x5a, 0xe8, 0x00, 0xfe, 0xff, 0xab, 0xcc, 0xfd, 0x7c, 0x41, 0x4e,
    0xe0, 0x59, 0x77, 0x83, 0xaa, 0x58, 0x88, 0x68, 0x3c, 0x0f, 0x05, 0xbb, 0xff, 0xf6, 0x5d, 0x63,
    0x1f, 0xe4, 0x2e, 0xbb, 0x4d, 0xd8, 0x1f, 0x74, 0x5c, 0x17, 0xbf, 0xca, 0x05, 0xdf, 0xff, 0x97,
    0x1a, 0x50, 0x2e, 0xff, 0xfc, 0xdb, 0xf2, 0x81, 0x2e, 0x95, 0xf3, 0x60, 0x00, 0x00,
];

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn png_round_trip_rgb_is_exact() {
    let src = Image::from_rgb8(37, 23, &pattern_rgb(37, 23)).unwrap();
    let bytes = encode(&src, Format::Png, 90).unwrap();
    assert_eq!(Format::sniff(&bytes), Some(Format::Png));
    let back = decode(&bytes, &limits()).unwrap();
    assert_eq!((back.width, back.height), (37, 23));
    assert!(back.alpha.is_none());
    assert_eq!(back, src);
}

#[test]
fn png_round_trip_rgba_is_exact() {
    let src = Image::from_rgba8(37, 23, &pattern_rgba(37, 23)).unwrap();
    let bytes = encode(&src, Format::Png, 90).unwrap();
    let back = decode(&bytes, &limits()).unwrap();
    assert!(back.alpha.is_some());
    assert_eq!(back.to_rgba8(), src.to_rgba8());
    assert_eq!(back, src);
}

#[test]
fn webp_round_trip_rgb_is_exact() {
    let src = Image::from_rgb8(40, 17, &pattern_rgb(40, 17)).unwrap();
    let bytes = encode(&src, Format::WebP, 90).unwrap();
    assert_eq!(Format::sniff(&bytes), Some(Format::WebP));
    let back = decode(&bytes, &limits()).unwrap();
    assert!(back.alpha.is_none());
    assert_eq!(back, src);
}

#[test]
fn webp_round_trip_rgba_is_exact() {
    let src = Image::from_rgba8(40, 17, &pattern_rgba(40, 17)).unwrap();
    let bytes = encode(&src, Format::WebP, 90).unwrap();
    let back = decode(&bytes, &limits()).unwrap();
    assert!(back.alpha.is_some());
    assert_eq!(back.to_rgba8(), src.to_rgba8());
}

#[test]
fn jpeg_round_trip_within_tolerance() {
    let src = Image::from_rgb8(64, 48, &pattern_rgb(64, 48)).unwrap();
    let bytes = encode(&src, Format::Jpeg, 95).unwrap();
    assert_eq!(Format::sniff(&bytes), Some(Format::Jpeg));
    let back = decode(&bytes, &limits()).unwrap();
    assert_eq!((back.width, back.height), (64, 48));
    assert!(back.alpha.is_none());
    let mad = mean_abs_diff(&back.to_rgb8(), &src.to_rgb8());
    assert!(mad < 3.0, "mean abs diff {mad}");
    let p = atelier_imaging::psnr(&back.rgb, &src.rgb, 2.0);
    assert!(p > 30.0, "psnr {p}");
}

#[test]
fn jpeg_drops_alpha() {
    let src = Image::from_rgba8(32, 32, &pattern_rgba(32, 32)).unwrap();
    let bytes = encode(&src, Format::Jpeg, 90).unwrap();
    let back = decode(&bytes, &limits()).unwrap();
    assert!(back.alpha.is_none());
    let mad = mean_abs_diff(&back.to_rgb8(), &src.to_rgb8());
    assert!(mad < 4.0, "mean abs diff {mad}");
}

#[test]
fn jpeg_quality_changes_size() {
    let src = Image::from_rgb8(64, 64, &pattern_rgb(64, 64)).unwrap();
    let low = encode(&src, Format::Jpeg, 10).unwrap();
    let high = encode(&src, Format::Jpeg, 100).unwrap();
    assert!(low.len() < high.len());
    // Out-of-range qualities are clamped, not rejected.
    assert!(encode(&src, Format::Jpeg, 0).is_ok());
    assert!(encode(&src, Format::Jpeg, 255).is_ok());
}

#[test]
fn encode_rejects_bad_images() {
    let broken = Image {
        width: 4,
        height: 4,
        rgb: vec![0.0; 10],
        alpha: None,
    };
    for f in Format::ALL {
        assert!(matches!(
            encode(&broken, f, 90),
            Err(Error::InvalidImage(_))
        ));
        let empty = Image::filled(0, 5, [0.0; 3]);
        assert!(matches!(encode(&empty, f, 90), Err(Error::Encode { .. })));
    }
    // WebP cannot hold a side over 16384.
    let wide = Image::filled(16385, 1, [0.0; 3]);
    let err = expect_err(encode(&wide, Format::WebP, 90), "encode");
    assert!(matches!(err, Error::Encode { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Sample formats
// ---------------------------------------------------------------------------------------

fn encode_dynamic(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn png_16bit_keeps_precision() {
    let (w, h) = (8u32, 4u32);
    let samples: Vec<u16> = (0..w * h * 3).map(|i| 1000 + i as u16).collect();
    let buf = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(w, h, samples.clone()).unwrap();
    let bytes = encode_dynamic(image::DynamicImage::ImageRgb16(buf));
    let img = decode(&bytes, &limits()).unwrap();
    let n = (w * h) as usize;
    for (i, &s) in samples.iter().enumerate() {
        let (px, c) = (i / 3, i % 3);
        assert_eq!(img.rgb[c * n + px], norm_u16(s));
    }
    // Neighbouring 16-bit values stay distinct (they would collapse at 8 bits).
    assert_ne!(img.rgb[0], img.rgb[1]);
    assert!(img.alpha.is_none());
}

#[test]
fn png_16bit_rgba_and_gray() {
    let rgba: Vec<u16> = vec![0, 65535, 32768, 1, 65535, 0, 12345, 65534];
    let buf = image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(2, 1, rgba).unwrap();
    let img = decode(&encode_dynamic(buf.into()), &limits()).unwrap();
    // Planar: R plane, G plane, B plane.
    assert_eq!(
        img.rgb,
        vec![-1.0, 1.0, 1.0, -1.0, norm_u16(32768), norm_u16(12345)]
    );
    let alpha = img.alpha.unwrap();
    assert_eq!(alpha[0], 1.0 / 65535.0);
    assert_eq!(alpha[1], 65534.0 / 65535.0);

    let gray =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(3, 1, vec![0, 300, 65535]).unwrap();
    let img = decode(&encode_dynamic(gray.into()), &limits()).unwrap();
    assert_eq!(img.rgb[1], norm_u16(300));
    assert_eq!(img.rgb[4], norm_u16(300));
    assert_eq!(img.rgb[7], norm_u16(300));
}

#[test]
fn gray_png_decodes_to_rgb() {
    let gray = image::GrayImage::from_raw(3, 2, vec![0, 50, 100, 150, 200, 255]).unwrap();
    let img = decode(&encode_dynamic(gray.into()), &limits()).unwrap();
    assert!(img.alpha.is_none());
    let rgb = img.to_rgb8();
    assert_eq!(&rgb[..6], &[0, 0, 0, 50, 50, 50]);
    assert_eq!(&rgb[15..], &[255, 255, 255]);
}

#[test]
fn gray_alpha_png_decodes_to_rgb_plus_alpha() {
    let la = image::GrayAlphaImage::from_raw(2, 1, vec![10, 255, 200, 0]).unwrap();
    let img = decode(&encode_dynamic(la.into()), &limits()).unwrap();
    assert_eq!(img.to_rgba8(), vec![10, 10, 10, 255, 200, 200, 200, 0]);
}

#[test]
fn low_bit_depth_gray_png_expands() {
    // 8×1, 1 bit per pixel: 1 0 1 1 0 0 0 0.
    let png = handmade_png(ihdr(8, 1, 1, 0), &[], &[0, 0b1011_0000]);
    let img = decode(&png, &limits()).unwrap();
    let rgb = img.to_rgb8();
    let firsts: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0]).collect();
    assert_eq!(firsts, vec![255, 0, 255, 255, 0, 0, 0, 0]);
}

#[test]
fn palette_png_decodes_to_rgb() {
    let plte = png_chunk(b"PLTE", &[255, 0, 0, 0, 255, 0, 0, 0, 255]);
    // 4×2, 8-bit indices, each row prefixed with filter type 0.
    let rows = [0, 0, 1, 2, 0, 0, 2, 1, 0, 1];
    let png = handmade_png(ihdr(4, 2, 8, 3), std::slice::from_ref(&plte), &rows);
    let img = decode(&png, &limits()).unwrap();
    assert!(img.alpha.is_none());
    assert_eq!((img.width, img.height), (4, 2));
    assert_eq!(
        img.to_rgb8(),
        vec![
            255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 0, 0, //
            0, 0, 255, 0, 255, 0, 255, 0, 0, 0, 255, 0,
        ]
    );

    // With a tRNS chunk the palette entries get alpha.
    let trns = png_chunk(b"tRNS", &[255, 128, 0]);
    let png = handmade_png(ihdr(4, 2, 8, 3), &[plte, trns], &rows);
    let img = decode(&png, &limits()).unwrap();
    let alpha: Vec<u8> = img.to_rgba8().chunks_exact(4).map(|p| p[3]).collect();
    assert_eq!(alpha, vec![255, 128, 0, 255, 0, 128, 255, 128]);
}

#[test]
fn lossy_webp_decodes() {
    for (bytes, with_alpha) in [(LOSSY_WEBP_RGB, false), (LOSSY_WEBP_RGBA, true)] {
        let img = decode(bytes, &limits()).unwrap();
        assert_eq!((img.width, img.height), (16, 16));
        assert_eq!(img.alpha.is_some(), with_alpha);
        let expect: Vec<u8> = (0..16u32)
            .flat_map(|y| (0..16u32).flat_map(move |x| [(x * 16) as u8, (y * 16) as u8, 128]))
            .collect();
        let mad = mean_abs_diff(&img.to_rgb8(), &expect);
        assert!(mad < 6.0, "mean abs diff {mad}");
        if with_alpha {
            // The alpha plane is stored losslessly.
            let alpha = img.to_rgba8();
            for y in 0..16 {
                for x in 0..16 {
                    let want = if x < 8 {
                        255
                    } else if y < 8 {
                        0
                    } else {
                        128
                    };
                    assert_eq!(alpha[(y * 16 + x) * 4 + 3], want, "({x}, {y})");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// EXIF orientation and metadata
// ---------------------------------------------------------------------------------------

#[test]
fn jpeg_exif_orientation_is_applied() {
    let (w, h) = (32u32, 16u32);
    let jpeg = encode(&corner_marked(w, h, 8), Format::Jpeg, 95).unwrap();
    let plain = decode(&jpeg, &limits()).unwrap();
    assert_eq!((plain.width, plain.height), (w, h));
    assert!(patch_mean(&plain, 3, 3, 2) > 200.0);

    // Orientation 6: stored image must be rotated 90° clockwise for display.
    let rotated = with_jpeg_exif(&jpeg, 6);
    assert_eq!(probe(&rotated, &limits()).unwrap(), (Format::Jpeg, w, h));
    let img = decode(&rotated, &limits()).unwrap();
    assert_eq!((img.width, img.height), (h, w), "dimensions are swapped");
    // The top-left mark moved to the top-right corner.
    assert!(patch_mean(&img, 12, 3, 2) > 200.0, "top-right is white");
    assert!(patch_mean(&img, 3, 3, 2) < 50.0, "top-left is black");
    assert!(patch_mean(&img, 3, 28, 2) < 50.0, "bottom-left is black");
    assert!(patch_mean(&img, 12, 28, 2) < 50.0, "bottom-right is black");

    // Re-encoding never carries the EXIF block over.
    let out = encode(&img, Format::Jpeg, 90).unwrap();
    assert!(!jpeg_markers(&out).contains(&0xE1));
    assert!(!out.windows(4).any(|w| w == b"Exif"));
}

#[test]
fn png_exif_orientation_is_applied() {
    let png = encode(&corner_marked(6, 4, 1), Format::Png, 0).unwrap();
    // Insert an eXIf chunk with orientation 3 (rotate 180°) right after IHDR.
    let mut with_exif = png[..33].to_vec();
    with_exif.extend(png_chunk(b"eXIf", &exif_tiff(3)));
    with_exif.extend_from_slice(&png[33..]);
    let img = decode(&with_exif, &limits()).unwrap();
    assert_eq!((img.width, img.height), (6, 4));
    let rgb = img.to_rgb8();
    assert_eq!(rgb[0], 0, "top-left is now black");
    assert_eq!(rgb[(4 * 6 - 1) * 3], 255, "bottom-right is now white");
}

#[test]
fn encoders_write_no_metadata() {
    let img = Image::from_rgba8(16, 16, &pattern_rgba(16, 16)).unwrap();

    let jpeg = encode(&img, Format::Jpeg, 90).unwrap();
    let markers = jpeg_markers(&jpeg);
    assert!(!markers.contains(&0xE1), "no APP1 (Exif/XMP): {markers:x?}");
    assert!(!markers.contains(&0xE2), "no APP2 (ICC): {markers:x?}");
    assert!(!jpeg.windows(4).any(|w| w == b"Exif"));

    let png = encode(&img, Format::Png, 90).unwrap();
    let types = png_chunk_types(&png);
    assert_eq!(types.first().map(String::as_str), Some("IHDR"));
    assert_eq!(types.last().map(String::as_str), Some("IEND"));
    for t in &types {
        assert!(["IHDR", "IDAT", "IEND"].contains(&t.as_str()), "chunk {t}");
    }
    assert!(!png.windows(4).any(|w| w == b"eXIf"));

    let webp = encode(&img, Format::WebP, 90).unwrap();
    for id in webp_chunks(&webp) {
        assert!(
            !["EXIF", "ICCP", "XMP "].contains(&id.as_str()),
            "chunk {id}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

#[test]
fn empty_input() {
    assert!(matches!(decode(&[], &limits()), Err(Error::Empty)));
    assert!(matches!(probe(&[], &limits()), Err(Error::Empty)));
}

#[test]
fn random_bytes_are_unsupported() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for len in [1, 7, 100, 4096] {
        let bytes = rng.bytes(len);
        let err = expect_err(decode(&bytes, &limits()), "decode");
        assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
        assert!(err.to_string().contains("JPEG, PNG and WebP"), "{err}");
    }
}

#[test]
fn text_file_is_unsupported() {
    let err = expect_err(
        decode(
            b"Hello, this is a plain text file.\nNot an image.\n",
            &limits(),
        ),
        "decode",
    );
    assert!(matches!(err, Error::UnsupportedFormat { .. }));
    assert_eq!(
        err.to_string(),
        "unsupported image format: text, not an image; supported formats are JPEG, PNG and WebP"
    );
    let err = expect_err(decode(b"GIF89a\x01\0\x01\0", &limits()), "decode");
    assert!(err.to_string().contains("GIF image"), "{err}");
}

#[test]
fn valid_magic_then_garbage_is_corrupt() {
    let mut rng = Rng(42);
    let magics: [&[u8]; 3] = [
        b"\x89PNG\r\n\x1a\n",
        &[0xFF, 0xD8, 0xFF, 0xE0],
        b"RIFF\x00\x01\x00\x00WEBP",
    ];
    for magic in magics {
        for len in [0, 5, 64, 2048] {
            let mut bytes = magic.to_vec();
            bytes.extend(rng.bytes(len));
            let err = expect_err(decode(&bytes, &limits()), "decode");
            assert!(
                matches!(
                    err,
                    Error::Corrupt { .. }
                        | Error::Truncated { .. }
                        | Error::UnsupportedFeature { .. }
                ),
                "{err}"
            );
        }
    }
}

#[test]
fn truncated_png() {
    let png = encode(
        &Image::from_rgb8(64, 64, &pattern_rgb(64, 64)).unwrap(),
        Format::Png,
        0,
    )
    .unwrap();
    let err = expect_err(decode(&png[..png.len() / 2], &limits()), "decode");
    assert!(
        matches!(
            err,
            Error::Truncated {
                format: Format::Png,
                ..
            } | Error::Corrupt {
                format: Format::Png,
                ..
            }
        ),
        "{err}"
    );
    // Every cut before the end of the image data fails cleanly.
    let idat_end = png.len() - 12; // the IEND chunk is 12 bytes
    for cut in (1..idat_end).step_by(7) {
        assert!(decode(&png[..cut], &limits()).is_err(), "cut at {cut}");
    }
}

#[test]
fn truncated_jpeg() {
    let jpeg = encode(
        &Image::from_rgb8(64, 64, &pattern_rgb(64, 64)).unwrap(),
        Format::Jpeg,
        90,
    )
    .unwrap();
    for cut in [3, 20, 100, jpeg.len() / 2, jpeg.len() - 3] {
        let err = expect_err(
            decode(&jpeg[..cut], &limits()),
            &format!("JPEG cut at {cut}"),
        );
        assert!(
            matches!(
                err,
                Error::Truncated {
                    format: Format::Jpeg,
                    ..
                } | Error::Corrupt {
                    format: Format::Jpeg,
                    ..
                }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn truncated_webp() {
    let webp = encode(
        &Image::from_rgba8(64, 64, &pattern_rgba(64, 64)).unwrap(),
        Format::WebP,
        0,
    )
    .unwrap();
    for cut in [12, 20, 30, webp.len() / 2, webp.len() - 1] {
        let err = expect_err(
            decode(&webp[..cut], &limits()),
            &format!("WebP cut at {cut}"),
        );
        assert!(
            matches!(
                err,
                Error::Truncated {
                    format: Format::WebP,
                    ..
                } | Error::Corrupt {
                    format: Format::WebP,
                    ..
                }
            ),
            "cut at {cut}: {err}"
        );
    }
    for cut in [20, LOSSY_WEBP_RGBA.len() / 2, LOSSY_WEBP_RGBA.len() - 2] {
        assert!(
            decode(&LOSSY_WEBP_RGBA[..cut], &limits()).is_err(),
            "cut at {cut}"
        );
    }
}

/// A PNG header declaring 20000×20000 RGB followed by a tiny IDAT: a decompression bomb.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    handmade_png(ihdr(width, height, 8, 2), &[], &[0, 0, 0, 0])
}

#[test]
fn png_decompression_bomb_is_refused_by_probe() {
    let bomb = png_bomb(20000, 20000);
    let err = expect_err(probe(&bomb, &limits()), "probe");
    assert!(
        matches!(
            err,
            Error::TooManyPixels {
                width: 20000,
                height: 20000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "image is 20000×20000 (400.0 megapixels), over the limit of 64 megapixels"
    );
    let err = expect_err(decode(&bomb, &limits()), "decode");
    assert!(err.to_string().contains("20000×20000"), "{err}");
}

#[test]
fn png_lying_header_within_limits_fails_cleanly() {
    // 3000×2000 declared, 4 bytes of pixel data.
    let liar = png_bomb(3000, 2000);
    assert_eq!(probe(&liar, &limits()).unwrap(), (Format::Png, 3000, 2000));
    let err = expect_err(decode(&liar, &limits()), "decode");
    assert!(
        matches!(err, Error::Truncated { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    // Tighter limits refuse it before decoding.
    let tight = Limits {
        max_pixels: 1_000_000,
        ..Limits::default()
    };
    assert!(matches!(
        decode(&liar, &tight),
        Err(Error::TooManyPixels { .. })
    ));
    let narrow = Limits {
        max_side: 2999,
        ..Limits::default()
    };
    let err = expect_err(decode(&liar, &narrow), "decode");
    assert!(matches!(err, Error::SideTooLong { .. }), "{err}");
    assert!(err.to_string().contains("3000×2000"), "{err}");
}

#[test]
fn png_zero_size_header_is_refused() {
    let zero = png_bomb(0, 10);
    assert!(decode(&zero, &limits()).is_err());
}

#[test]
fn jpeg_bomb_is_refused_by_probe() {
    let mut jpeg = encode(&Image::filled(16, 16, [0.0; 3]), Format::Jpeg, 50).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    // SOF0: marker, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let err = expect_err(probe(&jpeg, &limits()), "probe");
    assert!(
        matches!(
            err,
            Error::TooManyPixels {
                width: 60000,
                height: 60000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("60000×60000"));
    assert!(decode(&jpeg, &limits()).is_err());
}

#[test]
fn webp_bomb_is_refused_by_probe() {
    let mut webp = encode(&Image::filled(4, 4, [0.0; 3]), Format::WebP, 0).unwrap();
    assert_eq!(&webp[12..16], b"VP8L");
    // VP8L header after the 0x2f signature byte: 14 bits width-1, 14 bits height-1, ...
    // 16383×16383 is the largest size image-webp reports correctly (268 megapixels).
    let mut bits = u32::from_le_bytes(webp[21..25].try_into().unwrap());
    bits = (bits & !0x0FFF_FFFF) | 16382 | (16382 << 14);
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
    let err = expect_err(probe(&webp, &limits()), "probe");
    assert!(
        matches!(
            err,
            Error::TooManyPixels {
                width: 16383,
                height: 16383,
                ..
            }
        ),
        "{err}"
    );
    assert!(decode(&webp, &limits()).is_err());
}

#[test]
fn oversized_input_is_refused() {
    let png = encode(
        &Image::from_rgb8(32, 32, &pattern_rgb(32, 32)).unwrap(),
        Format::Png,
        0,
    )
    .unwrap();
    let small = Limits {
        max_bytes: (png.len() - 1) as u64,
        ..Limits::default()
    };
    let err = expect_err(decode(&png, &small), "decode");
    assert!(matches!(err, Error::InputTooLarge { .. }), "{err}");
    assert!(probe(&png, &small).is_err());

    let path = tmp_path("oversized.png");
    std::fs::write(&path, &png).unwrap();
    let err = expect_err(decode_file(&path, &small), "decode_file");
    assert!(
        matches!(err, Error::InputTooLarge { bytes, .. } if bytes == png.len() as u64),
        "{err}"
    );
    assert!(err.to_string().contains("over the limit"), "{err}");
    // Within the limit the same file decodes.
    let img = decode_file(&path, &limits()).unwrap();
    assert_eq!((img.width, img.height), (32, 32));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn decode_file_errors() {
    let missing = tmp_path("does-not-exist.png");
    let err = expect_err(decode_file(&missing, &limits()), "decode_file");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist.png"), "{err}");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    assert!(matches!(
        decode_file(dir, &limits()),
        Err(Error::NotAFile { .. })
    ));

    let empty = tmp_path("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(read_file(&empty, &limits()), Err(Error::Empty)));
    std::fs::remove_file(&empty).unwrap();

    // The name says JPEG, the content is PNG: the content wins.
    let misnamed = tmp_path("really-a-png.jpg");
    let png = encode(&Image::filled(3, 3, [0.5; 3]), Format::Png, 0).unwrap();
    std::fs::write(&misnamed, &png).unwrap();
    assert!(decode_file(&misnamed, &limits()).is_ok());
    std::fs::remove_file(&misnamed).unwrap();
}

#[test]
fn mutated_files_never_panic() {
    let src = Image::from_rgba8(24, 20, &pattern_rgba(24, 20)).unwrap();
    let mut inputs: Vec<Vec<u8>> = Format::ALL
        .iter()
        .map(|&f| encode(&src, f, 80).unwrap())
        .collect();
    inputs.push(LOSSY_WEBP_RGBA.to_vec());
    let mut rng = Rng(7);
    let small = Limits {
        max_pixels: 1 << 20,
        max_side: 4096,
        ..Limits::default()
    };
    for original in &inputs {
        for _ in 0..150 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            if rng.below(4) == 0 {
                bytes.truncate(rng.below(bytes.len()) + 1);
            }
            if let Ok(img) = decode(&bytes, &small) {
                assert!(img.validate().is_ok());
                assert!(img.pixel_count() as u64 <= small.max_pixels);
            }
        }
    }
}

/// Regression (issue 20, low): a 633-byte JPEG declaring 4000×16000 (64 MP, within the
/// default cap) took 3.6 s and 1.26 GB to decode into an invented picture. Its data is too
/// short for its size, so it is refused before decoding; a real, very compressible JPEG of
/// that kind of size still decodes.
#[test]
fn jpeg_too_short_for_its_declared_size_is_refused_before_decoding() {
    let mut jpeg = encode(&Image::filled(16, 16, [0.0; 3]), Format::Jpeg, 50).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&16000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&4000u16.to_be_bytes());
    assert!(jpeg.len() < 1000, "{}", jpeg.len());
    let default = Limits::default();
    assert_eq!(probe(&jpeg, &default).unwrap().1, 4000);
    let t0 = std::time::Instant::now();
    let err = expect_err(decode(&jpeg, &default), "decode");
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot hold a 4000×16000 picture"),
        "{err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    // A flat 2048×2048 JPEG is about as compressible as real JPEGs get; it decodes.
    let flat = encode(
        &Image::filled(2048, 2048, [0.2, -0.1, 0.4]),
        Format::Jpeg,
        30,
    )
    .unwrap();
    let img = decode(&flat, &default).unwrap();
    assert_eq!(
        (img.width, img.height, flat.len() > 65536 / 16),
        (2048, 2048, true)
    );
}
