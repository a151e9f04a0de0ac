//! Datasets, augmentation and the resumable loader, on small synthetic images.

use std::io::Write;
use std::path::Path;

use atelier_imaging::{encode, Format, Image};
use atelier_train::data::{split_ab, DataError, MAX_ZIP_ENTRY_BYTES};
use atelier_train::{
    Augment, Dataset, Loader, LoaderState, PairedDataset, Rng, Source, UnpairedDataset,
};
use candle_core::{Device, Tensor};

/// A deterministic, textured 8-bit image.
fn pixels(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..w * h * 3)
        .map(|i| ((i * 7) as u64 % 200 + rng.next_u64() % 56) as u8)
        .collect()
}

fn image(w: u32, h: u32, seed: u64) -> Image {
    Image::from_rgb8(w, h, &pixels(w, h, seed)).unwrap()
}

fn write(dir: &Path, name: &str, img: &Image, format: Format) {
    std::fs::write(dir.join(name), encode(img, format, 95).unwrap()).unwrap();
}

/// `n` textured 40×30 PNGs.
fn folder(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        write(
            dir.path(),
            &format!("img{i}.png"),
            &image(40, 30, i),
            Format::Png,
        );
    }
    dir
}

fn small() -> Augment {
    Augment {
        load_size: 24,
        crop_size: 16,
        flip: true,
        color_jitter: 0.0,
        center_square: false,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn batches<S: Source<Batch = Tensor>>(loader: &mut Loader<S>, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| values(&loader.next_batch().unwrap()))
        .collect()
}

fn loader(path: &Path, augment: Augment, seed: u64) -> Loader<Dataset> {
    Loader::new(Dataset::open(path).unwrap(), augment, 2, seed, &Device::Cpu).unwrap()
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let dir = folder(5);
    let aug = Augment {
        color_jitter: 0.3,
        ..small()
    };
    // 7 batches of 2 over 5 images: crosses epoch boundaries.
    let a = batches(&mut loader(dir.path(), aug, 7), 7);
    let b = batches(&mut loader(dir.path(), aug, 7), 7);
    let c = batches(&mut loader(dir.path(), aug, 8), 7);
    assert_eq!(a, b);
    assert_ne!(a, c);
    for v in a.iter().flatten() {
        assert!((-1.0..=1.0).contains(v));
    }
}

#[test]
fn resumed_loader_continues_with_identical_batches() {
    let dir = folder(5);
    let n = 8;
    let straight = batches(&mut loader(dir.path(), small(), 3), n);

    let mut first = loader(dir.path(), small(), 3);
    let mut resumed = batches(&mut first, n / 2);
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);

    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    let mut second = loader(dir.path(), small(), 999); // the seed is overridden by the state
    second.restore(state).unwrap();
    assert_eq!(second.state(), state);
    resumed.extend(batches(&mut second, n - n / 2));
    assert_eq!(straight, resumed);
    assert!(second.epoch() >= 2, "the run spans several epochs");
}

#[test]
fn corrupt_and_text_files_are_skipped_not_fatal() {
    let dir = folder(3);
    let png = encode(&image(40, 30, 9), Format::Png, 90).unwrap();
    std::fs::write(dir.path().join("broken.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    std::fs::write(
        dir.path().join("fake.jpg"),
        "a text file with an image name",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();

    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(
        ds.len(),
        4,
        "broken.png sniffs as PNG; it fails only when decoded"
    );
    let names = |ds: &Dataset| {
        ds.skipped()
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ds), ["fake.jpg", "notes.txt"]);

    let mut l = Loader::new(ds, small(), 2, 1, &Device::Cpu).unwrap();
    for _ in 0..6 {
        assert_eq!(l.next_batch().unwrap().dims(), [2, 3, 16, 16]);
    }
    let skipped = l.source().skipped();
    assert_eq!(names(l.source()), ["fake.jpg", "notes.txt", "broken.png"]);
    assert!(!skipped[2].1.is_empty());
    assert_eq!(l.source().bad_count(), 1);

    // Deterministic despite the skip.
    let again = batches(&mut loader(dir.path(), small(), 1), 6);
    assert_eq!(batches(&mut loader(dir.path(), small(), 1), 6), again);

    // Nothing decodable: an error, not a hang.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("a.png"), &png[..40]).unwrap();
    let mut l = loader(bad.path(), small(), 1);
    assert!(matches!(
        l.next_batch(),
        Err(DataError::NothingReadable { count: 1 })
    ));
    // And no image at all: refused when opening.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("x.txt"), "x").unwrap();
    assert!(matches!(
        Dataset::open(empty.path()),
        Err(DataError::NoImages { skipped: 1, .. })
    ));
}

/// Side-by-side AB with B the colour inversion of A.
fn ab_image(w: u32, h: u32, seed: u64) -> Image {
    let a = pixels(w, h, seed);
    let mut ab = Vec::with_capacity(a.len() * 2);
    for y in 0..h as usize {
        let row = &a[y * w as usize * 3..(y + 1) * w as usize * 3];
        ab.extend_from_slice(row);
        ab.extend(row.iter().map(|v| 255 - v));
    }
    Image::from_rgb8(2 * w, h, &ab).unwrap()
}

fn assert_inverse(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x + y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn aligned_ab_halves_stay_aligned_through_crop_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write(
            dir.path(),
            &format!("{i}.png"),
            &ab_image(20, 20, i),
            Format::Png,
        );
    }
    let (a, b) = split_ab(&ab_image(20, 20, 0));
    assert_eq!((a.width, b.width), (20, 20));
    assert_inverse(&a.rgb, &b.rgb);

    // Resized (24), cropped (12) and flipped alike.
    let aug = Augment {
        load_size: 24,
        crop_size: 12,
        ..small()
    };
    let ds = PairedDataset::aligned(dir.path()).unwrap();
    let mut l = Loader::new(ds, aug, 3, 5, &Device::Cpu).unwrap();
    for _ in 0..4 {
        let batch = l.next_batch().unwrap();
        assert_eq!(batch.a.dims(), [3, 3, 12, 12]);
        assert_inverse(&values(&batch.a), &values(&batch.b));
    }

    // Without resize or crop: the A sample is the source or its mirror, and both occur.
    let aug = Augment {
        load_size: 20,
        crop_size: 20,
        ..small()
    };
    let src = image_a(0);
    let mirrored = mirror(&src, 20);
    let ds = PairedDataset::aligned(dir.path()).unwrap();
    let mut l = Loader::new(ds, aug, 1, 11, &Device::Cpu).unwrap();
    let (mut plain, mut flipped) = (0, 0);
    for _ in 0..40 {
        let batch = l.next_batch().unwrap();
        let (a, b) = (values(&batch.a), values(&batch.b));
        assert_inverse(&a, &b);
        if a == src {
            plain += 1;
        } else if a == mirrored {
            flipped += 1;
        }
    }
    assert!(plain > 0 && flipped > 0, "plain {plain}, flipped {flipped}");
}

/// The A half of `ab_image(20, 20, seed)` as planar floats.
fn image_a(seed: u64) -> Vec<f32> {
    image(20, 20, seed).rgb
}

fn mirror(planar: &[f32], w: usize) -> Vec<f32> {
    planar
        .chunks(w)
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

#[test]
fn folders_matched_by_stem() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let inv = |img: &Image| Image {
        rgb: img.rgb.iter().map(|v| -v).collect(),
        ..img.clone()
    };
    for (i, stem) in ["x", "y", "z"].iter().enumerate() {
        let img = image(24, 24, i as u64);
        write(a.path(), &format!("{stem}.png"), &img, Format::Png);
        // Same stem, other format and extension (lossless WebP keeps the values).
        write(b.path(), &format!("{stem}.webp"), &inv(&img), Format::WebP);
    }
    write(a.path(), "only_a.png", &image(24, 24, 7), Format::Png);
    write(b.path(), "only_b.png", &image(24, 24, 8), Format::Png);

    let ds = PairedDataset::matched(a.path(), b.path()).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.stem(2), Some("z"));
    let skipped: Vec<String> = ds
        .skipped()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, ["only_a.png", "only_b.png"]);

    let mut l = Loader::new(ds, small(), 2, 4, &Device::Cpu).unwrap();
    for _ in 0..3 {
        let batch = l.next_batch().unwrap();
        assert_inverse(&values(&batch.a), &values(&batch.b));
    }

    // No stem in common: an error naming the files.
    let c = tempfile::tempdir().unwrap();
    write(c.path(), "other.png", &image(8, 8, 1), Format::Png);
    let err = PairedDataset::matched(a.path(), c.path()).unwrap_err();
    assert!(matches!(err, DataError::NoMatches { .. }));
    let msg = err.to_string();
    assert!(msg.contains("only_a") && msg.contains("other"), "{msg}");
}

#[test]
fn zip_archive_works_like_the_folder() {
    let dir = folder(4);
    let zdir = tempfile::tempdir().unwrap();
    let zpath = zdir.path().join("images.zip");
    {
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&zpath).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        // Written in reverse order: the dataset sorts by name.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.reverse();
        for name in names {
            zw.start_file(name.as_str(), opts).unwrap();
            zw.write_all(&std::fs::read(dir.path().join(&name)).unwrap())
                .unwrap();
        }
        zw.start_file("readme.txt", opts).unwrap();
        zw.write_all(b"hello").unwrap();
        zw.add_directory("empty/", opts).unwrap();
        zw.start_file("huge.png", opts.large_file(true)).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_ZIP_ENTRY_BYTES >> 20) {
            zw.write_all(&zeros).unwrap();
        }
        zw.finish().unwrap();
    }
    // Named `.zip` or not, it is recognised by content.
    let renamed = zdir.path().join("images.dat");
    std::fs::copy(&zpath, &renamed).unwrap();

    let folder_batches = batches(&mut loader(dir.path(), small(), 21), 5);
    for path in [&zpath, &renamed] {
        let ds = Dataset::open(path).unwrap();
        assert_eq!(ds.len(), 4);
        let reasons: Vec<_> = ds
            .skipped()
            .iter()
            .map(|(p, r)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    r.clone(),
                )
            })
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, "huge.png");
        assert!(reasons[0].1.contains("over the limit"), "{reasons:?}");
        assert_eq!(reasons[1].0, "readme.txt");
        assert_eq!(batches(&mut loader(path, small(), 21), 5), folder_batches);
    }
}

#[test]
fn crop_and_flip_shapes() {
    let img = image(40, 30, 3);
    let mut rng = Rng::new(1);
    let out = small().apply(&img, &mut rng);
    assert_eq!(
        (out.width, out.height, out.rgb.len()),
        (16, 16, 3 * 16 * 16)
    );
    assert!(out.alpha.is_none());

    // Full-size "crop" without resize: flip is an exact mirror.
    let aug = Augment {
        load_size: 20,
        crop_size: 20,
        flip: true,
        color_jitter: 0.0,
        center_square: false,
    };
    let src = image(20, 20, 4);
    let mut p = aug.params(&mut rng);
    p.flip = false;
    assert_eq!(aug.apply_with(&src, &p).rgb, src.rgb);
    p.flip = true;
    assert_eq!(aug.apply_with(&src, &p).rgb, mirror(&src.rgb, 20));

    // A crop is a window of the resized image.
    let aug8 = Augment {
        crop_size: 8,
        flip: false,
        ..aug
    };
    let p8 = aug8.params(&mut Rng::new(5));
    assert!(!p8.flip);
    let crop = aug8.apply_with(&src, &p8);
    let (x, y) = (p8.x as usize, p8.y as usize);
    for c in 0..3 {
        for r in 0..8 {
            let s = c * 400 + (y + r) * 20 + x;
            assert_eq!(
                &crop.rgb[c * 64 + r * 8..c * 64 + r * 8 + 8],
                &src.rgb[s..s + 8]
            );
        }
    }

    // Jitter stays in range and changes the pixels.
    let jit = Augment {
        color_jitter: 0.5,
        ..small()
    };
    let j = jit.apply(&img, &mut Rng::new(2));
    assert!(j.rgb.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_ne!(j.rgb, small().apply(&img, &mut Rng::new(2)).rgb);

    // Invalid settings are refused.
    let bad = Augment {
        crop_size: 30,
        ..small()
    };
    assert!(bad.validate().is_err());
    let dir = folder(2);
    assert!(Loader::new(Dataset::open(dir.path()).unwrap(), bad, 1, 0, &Device::Cpu).is_err());
    assert_eq!(Augment::default().load_size, 286);
    assert_eq!(Augment::default().crop_size, 256);

    // Batch tensor shape.
    let batch = loader(dir.path(), small(), 0).next_batch().unwrap();
    assert_eq!(batch.dims(), [2, 3, 16, 16]);
}

#[test]
fn unpaired_batches_are_deterministic() {
    let (a, b) = (folder(3), folder(5));
    let run = |seed| {
        let ds = UnpairedDataset::open(a.path(), b.path()).unwrap();
        assert_eq!(ds.epoch_len(), 5);
        let mut l = Loader::new(ds, small(), 2, seed, &Device::Cpu).unwrap();
        (0..4)
            .map(|_| {
                let batch = l.next_batch().unwrap();
                assert_eq!(batch.b.dims(), [2, 3, 16, 16]);
                (values(&batch.a), values(&batch.b))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// `center_square` keeps the aspect ratio (DCGAN's Resize + CenterCrop); without it the image
/// is squashed to a square (the pix2pix/CycleGAN reference).
#[test]
fn center_square_crops_before_resizing() {
    let (w, h) = (40u32, 20u32);
    let mut px = Vec::new();
    for _y in 0..h {
        for x in 0..w {
            px.extend_from_slice(match x {
                0..10 => &[255u8, 0, 0],
                10..30 => &[0, 255, 0],
                _ => &[0, 0, 255],
            });
        }
    }
    let img = Image::from_rgb8(w, h, &px).unwrap();
    let aug = |center_square| Augment {
        load_size: 10,
        crop_size: 10,
        flip: false,
        color_jitter: 0.0,
        center_square,
    };
    let out = aug(true).apply(&img, &mut Rng::new(0));
    let n = 100;
    let red: f32 = out.rgb[..n].iter().map(|v| (v + 1.0) / 2.0).sum();
    let green: f32 = out.rgb[n..2 * n].iter().map(|v| (v + 1.0) / 2.0).sum();
    assert!(red < 1.0 && green > 99.0, "red {red}, green {green}");
    let squashed = aug(false).apply(&img, &mut Rng::new(0));
    let red: f32 = squashed.rgb[..n].iter().map(|v| (v + 1.0) / 2.0).sum();
    assert!(red > 15.0, "squashed image lost its red quarter: {red}");
}
