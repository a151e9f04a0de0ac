//! End-to-end tests of the `atelier` binary: model import and inspection, stylizing single
//! files and folders, and clean one-line errors on bad input.
//!
//! Every child runs with `RUST_BACKTRACE=1`, so an error message that drags a backtrace along
//! (candle attaches one to its errors when that variable is set) or a panic shows up.
//! Images are synthetic (made with `atelier_imaging::encode`, or by hand where they must be
//! broken); models are imported from the committed PyTorch checkpoints in `tests/golden`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use atelier_imaging::{alpha_to_u8, decode, encode, Format, Image, Limits};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(name)
}

/// Runs the binary with a clean environment for its own settings.
fn atelier(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .env_remove("ATELIER_MODELS")
        .env_remove("ATELIER_MAX_PIXELS")
        .env_remove("ATELIER_MAX_IMAGE_SIDE")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("could not run the atelier binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "atelier {args:?} panicked:\n{stderr}"
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Asserts a failed run whose stderr is exactly one `error: ...` line; returns it.
fn one_line_error(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what}: succeeded");
    let lines = stderr_lines(out);
    assert_eq!(lines.len(), 1, "{what}: stderr is not one line: {lines:#?}");
    assert!(lines[0].starts_with("error: "), "{what}: {}", lines[0]);
    lines[0].clone()
}

/// Imports a golden checkpoint with the CLI and returns the model file.
fn import_golden(dir: &Path, checkpoint: &str, extra: &[&str]) -> PathBuf {
    let out_file = dir.join(checkpoint.replace(".pth", ".safetensors"));
    let src = golden(checkpoint);
    let mut args = vec!["models", "import", p(&src), "-o", p(&out_file)];
    args.extend_from_slice(extra);
    let out = atelier(&args);
    assert!(
        out.status.success(),
        "import of {checkpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_file.is_file());
    out_file
}

fn light_model(dir: &Path) -> PathBuf {
    import_golden(dir, "G_light_ngf8_b2.pth", &[])
}

/// A smooth synthetic RGBA image with some texture and a varied alpha plane (0 and 255
/// included).
fn synthetic_rgba(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 / w as f32;
            let fy = y as f32 / h as f32;
            let r = 40.0 + 180.0 * fx + 20.0 * (y as f32 * 0.7).sin();
            let g = 30.0 + 200.0 * fy + 15.0 * (x as f32 * 0.9).cos();
            let b = 128.0 + 100.0 * ((fx - 0.5) * (fy - 0.5) * 12.0).sin();
            let a = if x < 4 {
                0
            } else if x >= w - 4 {
                255
            } else {
                ((x * 7 + y * 13) % 256) as u8
            };
            v.extend_from_slice(&[r as u8, g as u8, b.clamp(0.0, 255.0) as u8, a]);
        }
    }
    v
}

fn synthetic_rgb(w: u32, h: u32) -> Image {
    let rgba = synthetic_rgba(w, h);
    let rgb: Vec<u8> = rgba.chunks(4).flat_map(|c| [c[0], c[1], c[2]]).collect();
    Image::from_rgb8(w, h, &rgb).unwrap()
}

fn write_image(path: &Path, img: &Image, format: Format) {
    std::fs::write(path, encode(img, format, 92).unwrap()).unwrap();
}

fn read_image(path: &Path) -> Image {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn psnr_rgb8(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn png_signature_and_ihdr(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png_chunk(&mut png, b"IHDR", &ihdr);
    png
}

/// A PNG whose header declares 20000×20000 (1.2 GB of pixels) in a few dozen bytes: a
/// well-formed header (correct CRCs) and a tiny zlib stream (one empty scanline's worth).
fn decompression_bomb() -> Vec<u8> {
    let mut png = png_signature_and_ihdr(20_000, 20_000);
    // zlib: stored block holding a single zero byte, Adler-32 of [0] = 0x00010001.
    let idat = [
        0x78, 0x01, 0x01, 0x01, 0x00, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];
    png_chunk(&mut png, b"IDAT", &idat);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// An EXIF APP1 segment (little-endian TIFF) with a camera make and orientation 1.
fn exif_app1() -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    // 0x010F Make, ASCII, 10 bytes at offset 38.
    tiff.extend_from_slice(&0x010Fu16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&10u32.to_le_bytes());
    tiff.extend_from_slice(&38u32.to_le_bytes());
    // 0x0112 Orientation, SHORT, 1 = upright.
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[1, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(tiff.len(), 38);
    tiff.extend_from_slice(b"SecretCam\0");
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

/// The marker segments of a JPEG before its first scan: (marker, payload).
fn jpeg_segments(jpeg: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "not a JPEG");
    let mut out = Vec::new();
    let mut pos = 2;
    while pos + 4 <= jpeg.len() {
        assert_eq!(jpeg[pos], 0xFF, "bad marker at {pos}");
        let marker = jpeg[pos + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        out.push((marker, jpeg[pos + 4..pos + 2 + len].to_vec()));
        if marker == 0xDA {
            break;
        }
        pos += 2 + len;
    }
    out
}

fn has_exif(jpeg: &[u8]) -> bool {
    jpeg_segments(jpeg)
        .iter()
        .any(|(m, payload)| *m == 0xE1 && payload.starts_with(b"Exif\0\0"))
}

/// A zip archive with stored entries, written by hand (local headers, central directory,
/// end record).
fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let mut common = Vec::new();
        common.extend_from_slice(&20u16.to_le_bytes()); // version needed
        common.extend_from_slice(&0u16.to_le_bytes()); // flags
        common.extend_from_slice(&0u16.to_le_bytes()); // stored
        common.extend_from_slice(&0u32.to_le_bytes()); // time, date
        common.extend_from_slice(&crc.to_le_bytes());
        common.extend_from_slice(&(data.len() as u32).to_le_bytes());
        common.extend_from_slice(&(data.len() as u32).to_le_bytes());
        common.extend_from_slice(&(name.len() as u16).to_le_bytes());
        common.extend_from_slice(&0u16.to_le_bytes()); // extra
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&common);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&common);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

#[test]
fn import_then_inspect_shows_the_card() {
    use sha2::Digest;
    let dir = TempDir::new().unwrap();
    let models = dir.path().join("models");
    let src = golden("G_light_ngf8_b2.pth");
    let out = atelier(&[
        "--models-dir",
        p(&models),
        "models",
        "import",
        p(&src),
        "--name",
        "sketchy",
        "--description",
        "golden light generator",
        "--license",
        "MIT",
        "--train-size",
        "256",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {err}");
    assert!(
        err.contains("inferred the architecture light_2blocks"),
        "{err}"
    );
    let file = models.join("sketchy.safetensors");
    assert!(file.is_file(), "no model written to the models folder");

    let check = |out: Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (json, params) = stdout
            .rsplit_once("parameters: ")
            .unwrap_or_else(|| panic!("no parameter count in {stdout}"));
        let card: serde_json::Value = serde_json::from_str(json).expect("card is not JSON");
        assert_eq!(card["format"], "atelier-model/1");
        assert_eq!(card["name"], "sketchy");
        assert_eq!(card["description"], "golden light generator");
        assert_eq!(card["license"], "MIT");
        assert_eq!(card["input"]["train_size"], 256);
        assert_eq!(card["arch"]["type"], "light");
        assert_eq!(card["arch"]["ngf"], 8);
        assert_eq!(card["arch"]["n_blocks"], 2);
        assert_eq!(card["arch"]["input_nc"], 3);
        assert_eq!(card["arch"]["output_nc"], 3);
        assert_eq!(card["provenance"]["original_file"], "G_light_ngf8_b2.pth");
        let sha: String = sha2::Sha256::digest(std::fs::read(&src).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(card["provenance"]["original_sha256"], sha.as_str());
        assert!(card["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("inferred")));
        // The parameter count matches the architecture (checked against the library).
        let arch: atelier_nets::Arch = serde_json::from_value(card["arch"].clone()).unwrap();
        assert_eq!(
            params.trim().parse::<usize>().unwrap(),
            arch.parameter_count().unwrap()
        );
    };
    // By path and by name in the models folder.
    check(atelier(&["models", "inspect", p(&file)]));
    check(atelier(&[
        "--models-dir",
        p(&models),
        "models",
        "inspect",
        "sketchy",
    ]));

    // A second import (fp16) and the listing.
    let out = atelier(&[
        "--models-dir",
        p(&models),
        "models",
        "import",
        p(&golden("G_resnet_6blocks_instance_ngf4.pth")),
        "--fp16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(models
        .join("G_resnet_6blocks_instance_ngf4.safetensors")
        .is_file());
    let out = atelier(&["--models-dir", p(&models), "models", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // A header, the folder's models (sorted), then the built-ins compiled into the binary.
    let lines: Vec<&str> = list.lines().collect();
    let builtins = atelier_jobs::builtin::EMBEDDED;
    assert_eq!(lines.len(), 1 + 2 + builtins.len(), "{list}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("QUALITY"));
    assert!(
        lines[1].starts_with("G_resnet_6blocks_instance_ngf4")
            && lines[1].contains("resnet_6blocks")
            && lines[1].contains("no KID"),
        "{list}"
    );
    assert!(lines[2].starts_with("sketchy") && lines[2].contains("golden light generator"));
    for ((name, title, _), line) in builtins.iter().zip(&lines[3..]) {
        assert!(
            line.starts_with(name) && line.contains(&format!("built-in \"{title}\"")),
            "{list}"
        );
    }

    // Inspecting something that is not a model is a one-line error.
    let bogus = dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"not a model").unwrap();
    let line = one_line_error(&atelier(&["models", "inspect", p(&bogus)]), "inspect bogus");
    assert!(line.contains("bogus.safetensors"), "{line}");
}

#[test]
fn import_of_broken_checkpoints_is_a_one_line_error() {
    let dir = TempDir::new().unwrap();
    let pth = std::fs::read(golden("G_light_ngf8_b2.pth")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pth", Vec::new(), "empty"),
        ("half.pth", pth[..pth.len() / 2].to_vec(), "zip"),
        (
            "bad_pickle.pth",
            stored_zip(&[
                ("archive/data.pkl", &noise(300, 3)),
                ("archive/data/0", &[0; 32]),
            ]),
            "pickle",
        ),
        (
            "not_torch.pth",
            stored_zip(&[("hello.txt", b"hi there")]),
            "data.pkl",
        ),
        ("random.pth", noise(5000, 11), "neither"),
        (
            "notes.txt",
            b"just some text\nover two lines\n".to_vec(),
            "neither",
        ),
    ];
    for (name, bytes, says) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out_file = dir.path().join("out.safetensors");
        let out = atelier(&["models", "import", p(&path), "-o", p(&out_file)]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let line = one_line_error(&out, name);
        assert!(line.contains(name), "{name}: {line}");
        assert!(
            line.to_lowercase().contains(says),
            "{name}: expected `{says}` in {line}"
        );
        assert!(!out_file.exists(), "{name}: a model file was written");
    }

    // Contradicting flags: the first mismatched weight is named.
    let out = atelier(&[
        "models",
        "import",
        p(&golden("G_resnet_6blocks_instance_ngf4.pth")),
        "--ngf",
        "8",
        "-o",
        p(&dir.path().join("x.safetensors")),
    ]);
    let line = one_line_error(&out, "--ngf 8");
    assert!(
        line.contains("weight `model.1.bias` has shape [4]"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Stylize: good inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn png_with_alpha_keeps_size_and_alpha_exactly() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let (w, h) = (64, 48);
    let rgba = synthetic_rgba(w, h);
    let input = Image::from_rgba8(w, h, &rgba).unwrap();
    let in_path = dir.path().join("in.png");
    write_image(&in_path, &input, Format::Png);
    let out_path = dir.path().join("out.png");

    let out = atelier(&["stylize", p(&in_path), "-m", p(&model), "-o", p(&out_path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    assert_eq!(Format::sniff(&bytes), Some(Format::Png));
    let result = read_image(&out_path);
    assert_eq!((result.width, result.height), (w, h));
    let alpha: Vec<u8> = result
        .alpha
        .as_ref()
        .expect("the output lost its alpha channel")
        .iter()
        .map(|&a| alpha_to_u8(a))
        .collect();
    let want: Vec<u8> = rgba.chunks(4).map(|c| c[3]).collect();
    assert_eq!(alpha, want, "alpha changed");

    // The colours are the model's output (computed here in-process), not the input.
    let loaded = atelier_nets::load(&model, &candle_core::Device::Cpu).unwrap();
    let stylizer = atelier_engine::Stylizer::new(loaded, candle_core::Device::Cpu).unwrap();
    let expected = stylizer
        .stylize(&input, &atelier_engine::Options::default(), &mut |_| {})
        .unwrap();
    let (got, exp) = (result.to_rgb8(), expected.to_rgb8());
    let worst = got
        .iter()
        .zip(&exp)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "CLI output differs from the engine's by {worst}"
    );
    let changed = got
        .iter()
        .zip(input.to_rgb8())
        .filter(|(a, b)| a.abs_diff(*b) > 8)
        .count();
    assert!(
        changed > got.len() / 4,
        "the image was barely changed ({changed} samples)"
    );
}

#[test]
fn jpeg_output_has_no_exif() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let img = synthetic_rgb(64, 48);
    let plain = encode(&img, Format::Jpeg, 90).unwrap();
    // Insert an EXIF block right after SOI.
    let mut with_exif = plain[..2].to_vec();
    with_exif.extend_from_slice(&exif_app1());
    with_exif.extend_from_slice(&plain[2..]);
    assert!(has_exif(&with_exif), "the fixture has no EXIF");
    let in_path = dir.path().join("camera.jpg");
    std::fs::write(&in_path, &with_exif).unwrap();
    // The fixture is a valid JPEG.
    assert_eq!(read_image(&in_path).width, 64);

    for (out_name, extra) in [("out.jpg", vec![]), ("out.jpeg", vec!["--quality", "60"])] {
        let out_path = dir.path().join(out_name);
        let mut args = vec!["stylize", p(&in_path), "-m", p(&model), "-o", p(&out_path)];
        args.extend(extra);
        let out = atelier(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&out_path).unwrap();
        assert_eq!(Format::sniff(&bytes), Some(Format::Jpeg));
        assert!(!has_exif(&bytes), "{out_name} carries EXIF");
        assert!(
            !bytes.windows(9).any(|w| w == b"SecretCam"),
            "{out_name} leaks the camera make"
        );
        let result = read_image(&out_path);
        assert_eq!((result.width, result.height), (64, 48));
    }

    // Folder output keeps the input's format (JPEG) and also drops EXIF.
    let out_dir = dir.path().join("outdir");
    let out = atelier(&["stylize", p(&in_path), "-m", p(&model), "-o", p(&out_dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(out_dir.join("camera.jpg")).unwrap();
    assert!(!has_exif(&bytes));
}

#[test]
fn max_side_downsizes() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let in_path = dir.path().join("wide.png");
    write_image(&in_path, &synthetic_rgb(64, 48), Format::Png);
    for (max, want) in [("32", (32, 24)), ("40", (40, 30)), ("100", (64, 48))] {
        let out_path = dir.path().join(format!("out{max}.png"));
        let out = atelier(&[
            "stylize",
            p(&in_path),
            "-m",
            p(&model),
            "-o",
            p(&out_path),
            "--max-side",
            max,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = read_image(&out_path);
        assert_eq!((r.width, r.height), want, "--max-side {max}");
    }
}

#[test]
fn folder_input_processes_every_image() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let src = dir.path().join("photos");
    std::fs::create_dir(&src).unwrap();
    let sizes = [
        ("a.png", Format::Png, 64, 48),
        ("b.jpg", Format::Jpeg, 48, 64),
        ("c.webp", Format::WebP, 40, 36),
        ("D.JPEG", Format::Jpeg, 30, 22),
    ];
    for (name, fmt, w, h) in sizes {
        write_image(&src.join(name), &synthetic_rgb(w, h), fmt);
    }
    std::fs::write(src.join("readme.txt"), "not an image").unwrap();
    std::fs::create_dir(src.join("nested")).unwrap();
    write_image(
        &src.join("nested/skip.png"),
        &synthetic_rgb(8, 8),
        Format::Png,
    );

    let out_dir = dir.path().join("styled");
    let out = atelier(&["stylize", p(&src), "-m", p(&model), "-o", p(&out_dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("4 image(s) stylized"), "{err}");
    let mut written: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(written, ["D.jpg", "a.png", "b.jpg", "c.webp"]);
    for (name, fmt, w, h) in sizes {
        let stem = name.split('.').next().unwrap();
        let path = out_dir.join(format!("{stem}.{}", fmt.extension()));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(Format::sniff(&bytes), Some(fmt), "{name}");
        let r = read_image(&path);
        assert_eq!((r.width, r.height), (w, h), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Stylize: bad inputs and bad models
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_inputs_fail_one_line_each_and_good_ones_still_run() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let d = dir.path();

    let good = d.join("good.png");
    write_image(&good, &synthetic_rgb(64, 48), Format::Png);

    let corrupt = d.join("corrupt.png");
    let mut bytes = png_signature_and_ihdr(64, 48);
    bytes.extend(noise(2000, 42));
    std::fs::write(&corrupt, bytes).unwrap();

    let truncated = d.join("truncated.jpg");
    let jpeg = encode(&synthetic_rgb(64, 48), Format::Jpeg, 90).unwrap();
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();

    let empty = d.join("empty.png");
    std::fs::write(&empty, b"").unwrap();

    let bomb = d.join("bomb.png");
    let bomb_bytes = decompression_bomb();
    assert!(bomb_bytes.len() < 100);
    std::fs::write(&bomb, &bomb_bytes).unwrap();

    let text = d.join("notes.txt");
    std::fs::write(&text, "dear diary,\ntoday I tried to stylize a text file\n").unwrap();

    let missing = d.join("missing.png");

    let out_dir = d.join("out");
    let bad: [(&Path, &str); 6] = [
        (&corrupt, "png"),
        (&truncated, "truncated"),
        (&empty, "empty"),
        (&bomb, "20000×20000"),
        (&text, "unsupported image format"),
        (&missing, "no such file"),
    ];
    let mut args = vec!["stylize", "-m", p(&model), "-o", p(&out_dir), p(&corrupt)];
    args.extend([
        p(&truncated),
        p(&good),
        p(&empty),
        p(&bomb),
        p(&text),
        p(&missing),
    ]);
    let out = atelier(&args);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    for (path, says) in bad {
        let prefix = format!("error: {}:", path.display());
        let hits: Vec<&String> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(hits.len(), 1, "{}: {lines:#?}", path.display());
        assert!(
            hits[0].to_lowercase().contains(&says.to_lowercase()),
            "{}: expected `{says}` in {}",
            path.display(),
            hits[0]
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("1 of 7 image(s) stylized, 6 failed")),
        "no summary line: {lines:#?}"
    );
    assert_eq!(
        lines.len(),
        bad.len() + 1,
        "unexpected stderr lines: {lines:#?}"
    );

    // The good image was written, and nothing else.
    let r = read_image(&out_dir.join("good.png"));
    assert_eq!((r.width, r.height), (64, 48));
    let written: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert_eq!(written.len(), 1, "{written:?}");

    // Each bad input alone: exit code 1, its error line and the summary, no panic.
    for (path, _) in bad {
        let out = atelier(&[
            "stylize",
            "-m",
            p(&model),
            "-o",
            p(&d.join("solo")),
            p(path),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].starts_with(&format!("error: {}:", path.display())));
    }
}

/// Issue 21, item 7: `atelier stylize --model monet` and `models inspect monet` find the
/// built-in styles from any folder (they said "available: none" outside the repository).
#[test]
fn builtin_styles_work_from_any_folder() {
    let dir = TempDir::new().unwrap();
    let in_path = dir.path().join("in.png");
    write_image(&in_path, &synthetic_rgb(40, 24), Format::Png);
    let out_path = dir.path().join("out.jpg");
    let empty = dir.path().join("models");
    std::fs::create_dir(&empty).unwrap();
    let out = atelier(&[
        "--models-dir",
        p(&empty),
        "-q",
        "stylize",
        p(&in_path),
        "-m",
        "monet_light",
        "-o",
        p(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = read_image(&out_path);
    assert_eq!((img.width, img.height), (40, 24));
    let out = atelier(&["--models-dir", p(&empty), "models", "inspect", "monet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"name\": \"monet\"") && text.contains("parameters: "),
        "{text}"
    );
}

/// Issue 21, item 7: an admin command never creates a data folder (a typo in --data gave a
/// key to a database no server reads).
#[test]
fn admin_create_key_needs_an_existing_data_folder() {
    let dir = TempDir::new().unwrap();
    let typo = dir.path().join("atelier-dta");
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args([
            "admin",
            "create-key",
            "--owner",
            "alice",
            "--data",
            p(&typo),
        ])
        .env_remove("ATELIER_DATA")
        .env_remove("ATELIER_DATABASE")
        .output()
        .unwrap();
    let line = one_line_error(&out, "create-key in a missing folder");
    assert!(
        line.contains("no Atelier data folder") && line.contains("atelier-dta"),
        "{line}"
    );
    assert!(!typo.exists());
    // ATELIER_DATA is honoured like --data.
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(["admin", "create-key", "--owner", "alice"])
        .env("ATELIER_DATA", &typo)
        .env_remove("ATELIER_DATABASE")
        .output()
        .unwrap();
    let line = one_line_error(&out, "create-key via ATELIER_DATA");
    assert!(line.contains("atelier-dta"), "{line}");
    assert!(!typo.exists());
}

#[test]
fn missing_model_is_a_one_line_error() {
    let dir = TempDir::new().unwrap();
    let in_path = dir.path().join("in.png");
    write_image(&in_path, &synthetic_rgb(16, 16), Format::Png);
    let out_path = dir.path().join("out.png");
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();

    let out = atelier(&[
        "--models-dir",
        p(&models),
        "stylize",
        p(&in_path),
        "-m",
        "no-such-model",
        "-o",
        p(&out_path),
    ]);
    let line = one_line_error(&out, "missing model");
    assert!(line.contains("no-such-model"), "{line}");
    // It lists what there is: the built-in styles compiled into the binary.
    assert!(
        line.contains("available: ") && line.contains("monet"),
        "{line}"
    );
    assert!(!out_path.exists());

    // A file that exists but is not a model.
    let out = atelier(&[
        "stylize",
        p(&in_path),
        "-m",
        p(&in_path),
        "-o",
        p(&out_path),
    ]);
    let line = one_line_error(&out, "image as model");
    assert!(
        line.contains("in.png") && line.contains("not a valid model file"),
        "{line}"
    );

    // Without --model at all, clap refuses and names the flag.
    let out = atelier(&["stylize", p(&in_path), "-o", p(&out_path)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

#[test]
fn discriminator_model_cannot_stylize() {
    let dir = TempDir::new().unwrap();
    let model = import_golden(dir.path(), "D_basic_instance_ndf4_in3.pth", &[]);
    let in_path = dir.path().join("in.png");
    write_image(&in_path, &synthetic_rgb(32, 32), Format::Png);
    let out_path = dir.path().join("out.png");
    let out = atelier(&["stylize", p(&in_path), "-m", p(&model), "-o", p(&out_path)]);
    let line = one_line_error(&out, "discriminator");
    assert!(line.contains("discriminator"), "{line}");
    assert!(line.contains("cannot stylize"), "{line}");
    assert!(!out_path.exists());
}

// ---------------------------------------------------------------------------------------------
// Tiling
// ---------------------------------------------------------------------------------------------

/// Stylizes a synthetic 96×80 image with the light golden model untiled (`--tile 0`) and
/// with each of `tiled` (`(tile, overlap)`), checks every output's size and returns the PSNR
/// of each tiled output against the untiled one.
fn tiled_vs_untiled_psnr(tiled: &[(u32, u32)]) -> Vec<f64> {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let (w, h) = (96, 80);
    let img = synthetic_rgb(w, h);
    let in_path = dir.path().join("in.png");
    write_image(&in_path, &img, Format::Png);
    let loaded = atelier_nets::load(&model, &candle_core::Device::Cpu).unwrap();
    let stylizer = atelier_engine::Stylizer::new(loaded, candle_core::Device::Cpu).unwrap();

    let run = |name: &str, extra: &[&str]| {
        let out_path = dir.path().join(name);
        let mut args = vec!["stylize", p(&in_path), "-m", p(&model), "-o", p(&out_path)];
        args.extend_from_slice(extra);
        let out = atelier(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = read_image(&out_path);
        assert_eq!((r.width, r.height), (w, h), "{name}");
        r.to_rgb8()
    };
    let untiled = run("untiled.png", &["--tile", "0"]);
    // The model changes the image a lot, so a high PSNR between outputs is not a trivial one.
    let baseline = psnr_rgb8(&untiled, &img.to_rgb8());
    assert!(baseline < 20.0, "output vs input {baseline:.2} dB");

    tiled
        .iter()
        .map(|&(tile, overlap)| {
            // These options really tile this image (several passes, not one).
            let opts = atelier_engine::Options {
                tile,
                overlap,
                context: 8,
                memory_budget: 0,
                ..atelier_engine::Options::default()
            };
            let passes = stylizer.passes(w, h, &opts);
            assert!(passes > 2, "tile {tile}: only {passes} passes");
            let (t, o) = (tile.to_string(), overlap.to_string());
            let out = run(
                &format!("tiled_{tile}_{overlap}.png"),
                &[
                    "--tile",
                    &t,
                    "--overlap",
                    &o,
                    "--context",
                    "8",
                    "--memory-budget",
                    "0",
                ],
            );
            let psnr = psnr_rgb8(&out, &untiled);
            eprintln!(
                "tile {tile} overlap {overlap} ({passes} passes) vs untiled: PSNR {psnr:.2} dB \
                 (untiled output vs input: {baseline:.2} dB)"
            );
            psnr
        })
        .collect()
}

/// Tiled runs have the right size and stay close to the untiled output; larger tiles and
/// overlaps get closer.
///
/// The statistics every tile replays are exact here (the image is smaller than
/// `--stats-side`), and each tile sees 8 px of context around it (`--context 8`; the default
/// 32 would cover this small image whole), so what remains comes from the light model's
/// receptive field being wider than that.
#[test]
fn tiled_output_is_close_to_untiled() {
    let psnr = tiled_vs_untiled_psnr(&[(32, 8), (64, 16)]);
    assert!(psnr[0] > 30.0, "tile 32 overlap 8: {:.2} dB", psnr[0]);
    assert!(psnr[1] > 35.0, "tile 64 overlap 16: {:.2} dB", psnr[1]);
}

/// Regression: `a.jpg` and `a.png` stylized to PNG used to both write `a.png`, the second
/// silently overwriting the first.
#[test]
fn same_stem_outputs_do_not_overwrite_each_other() {
    let dir = TempDir::new().unwrap();
    let model = light_model(dir.path());
    let src = dir.path().join("in");
    std::fs::create_dir(&src).unwrap();
    write_image(&src.join("a.jpg"), &synthetic_rgb(32, 24), Format::Jpeg);
    write_image(&src.join("a.png"), &synthetic_rgb(40, 28), Format::Png);
    let out_dir = dir.path().join("out");
    let out = atelier(&[
        "stylize",
        p(&src),
        "-m",
        p(&model),
        "-o",
        p(&out_dir),
        "--format",
        "png",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sizes: Vec<(u32, u32)> = ["a.png", "a-2.png"]
        .iter()
        .map(|n| {
            let r = read_image(&out_dir.join(n));
            (r.width, r.height)
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes, [(32, 24), (40, 28)]);
}
