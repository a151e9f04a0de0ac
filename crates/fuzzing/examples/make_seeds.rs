//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/` from small
//! generated fixtures (no dataset image): `cargo run -p atelier-fuzzing --example make_seeds`.
//! The seeds are committed; this command is only for regenerating them.

use std::io::Write;
use std::path::Path;

use atelier_imaging::{encode, Format, Image};

fn img(w: u32, h: u32, seed: u32) -> Image {
    let px: Vec<u8> = (0..w * h * 3)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 24) as u8)
        .collect();
    Image::from_rgb8(w, h, &px).unwrap()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let b = "fuzzboundary";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{b}\r\n").as_bytes());
        let disp = match file {
            Some(f) => {
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\r\n")
            }
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        body.extend_from_slice(disp.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let png = encode(&img(8, 8, 1), Format::Png, 0).unwrap();
    let jpg = encode(&img(16, 8, 2), Format::Jpeg, 80).unwrap();
    let webp = encode(&img(8, 16, 3), Format::WebP, 0).unwrap();
    write("image", "seed-8x8.png", &png);
    write("image", "seed-16x8.jpg", &jpg);
    write("image", "seed-8x16.webp", &webp);
    write("image", "seed-truncated.jpg", &jpg[..jpg.len() / 2]);
    let zip = zip_of(&[
        ("a/1.png", &png),
        ("2.jpg", &jpg),
        ("__MACOSX/._x", b"junk"),
        ("notes.txt", b"hello"),
    ]);
    write("dataset_zip", "seed-mixed.zip", &zip);
    write("dataset_zip", "seed-one.png", &png);
    let model = atelier_fuzzing::tiny_model();
    write("model_file", "seed-tiny.safetensors", &model);
    let card = atelier_nets::file::parse_safetensors(&model)
        .unwrap()
        .1
        .unwrap();
    let card = &card[atelier_nets::card::CARD_KEY];
    write("model_card", "seed-tiny.json", card.as_bytes());
    // The two cards that killed the server (issue 20).
    let huge = card.replace("\"ngf\":4", "\"ngf\":1099511627776");
    write("model_card", "seed-huge-ngf.json", huge.as_bytes());
    let deep = card.replace("\"n_blocks\":1", "\"n_blocks\":1000000000");
    write("model_card", "seed-many-blocks.json", deep.as_bytes());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    for f in [
        "D_pixel_instance_ndf4_in6.pth",
        "D_pixel_batch_ndf8_in3.pth",
    ] {
        write(
            "pth_import",
            &format!("seed-{f}"),
            &std::fs::read(golden.join(f)).unwrap(),
        );
    }
    // Both stylize targets read the same layout: query, newline, content type, newline, body.
    for t in ["stylize_request", "stylize_form"] {
        write(
            t,
            "seed-raw.txt",
            &[b"model=tiny\nimage/png\n" as &[u8], &png].concat(),
        );
        write(
            t,
            "seed-options.txt",
            &[
                b"model=tiny&strength=0.5&format=webp&max_side=4&quality=50\nimage/jpeg\n"
                    as &[u8],
                &jpg,
            ]
            .concat(),
        );
        let (ct, body) = multipart(&[
            ("image", Some("x.png"), &png),
            ("model", None, b"tiny"),
            ("strength", None, b"0.25"),
        ]);
        write(
            t,
            "seed-multipart.txt",
            &[b"\n" as &[u8], ct.as_bytes(), b"\n", &body].concat(),
        );
    }
    println!("seeds written to {}", root.display());
}
