//! Model files and checkpoint import: round trips, and clean errors on anything broken.
//!
//! Fixtures are made here: small networks built with a `SeededVarMap` (random weights) and saved
//! with `atelier_nets::save`, hand-edited safetensors files, and the committed PyTorch
//! checkpoints in `tests/golden`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use atelier_nets::card::CARD_KEY;
use atelier_nets::import::{import, read_state_dict, ImportHints};
use atelier_nets::light::LightConfig;
use atelier_nets::resnet::ResnetConfig;
use atelier_nets::{Arch, Ctx, Error, ModelCard, Network, NormKind, Storage};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(name)
}

/// A fresh, empty folder for one test under cargo's per-target temporary directory, removed
/// when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(test: &str) -> Scratch {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("nets_model_files")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn small_resnet(norm: NormKind) -> Arch {
    Arch::Resnet(ResnetConfig {
        input_nc: 3,
        output_nc: 3,
        ngf: 8,
        n_blocks: 6,
        norm,
        use_dropout: false,
        upsampling: Default::default(),
    })
}

fn small_light() -> Arch {
    Arch::Light(LightConfig {
        input_nc: 3,
        output_nc: 3,
        ngf: 4,
        n_blocks: 2,
    })
}

/// Builds `arch` with random weights and returns its tensors. Batch-norm running statistics
/// get non-trivial values (a fresh `VarMap` holds zeros and ones), so that a round trip that
/// lost them would show.
///
/// Seeded, so that a test never meets an unlucky draw (the unseeded version once gave a network
/// whose outputs all stayed under 1e-3).
fn random_weights(arch: Arch) -> HashMap<String, Tensor> {
    let map = atelier_nets::SeededVarMap::new(11);
    Network::new(arch, map.builder(&Device::Cpu)).unwrap();
    let mut tensors = atelier_nets::file::tensors_of(map.varmap()).unwrap();
    let mut rng = atelier_nets::Rng::new(12);
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    for k in keys {
        let t = tensors.get_mut(&k).unwrap();
        let n = t.elem_count();
        let v: Vec<f32> = if k.ends_with("running_mean") {
            (0..n).map(|_| (rng.normal() * 0.5) as f32).collect()
        } else if k.ends_with("running_var") {
            (0..n).map(|_| (0.5 + 1.5 * rng.uniform()) as f32).collect()
        } else {
            continue;
        };
        *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    }
    tensors
}

fn card_for(arch: Arch) -> ModelCard {
    let mut card = ModelCard::new("round-trip", arch);
    card.description = "a test model — with non-ASCII text ✓".into();
    card.license = "CC0-1.0".into();
    card.input.train_size = Some(256);
    card.inference.batch_stats = true;
    card.metrics.insert("kid_x100".into(), 1.25);
    card.notes = vec!["note one".into(), "note \"two\"".into()];
    card.provenance.steps = Some(1234);
    card
}

/// A deterministic input image tensor in [-1, 1].
fn input(h: usize, w: usize) -> Tensor {
    let n = 3 * h * w;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.37).sin() * 0.9 + (i % 7) as f32 * 0.01).clamp(-1.0, 1.0))
        .collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

fn forward(net: &Network, x: &Tensor) -> Vec<f32> {
    net.forward(x, &mut Ctx::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Writes tensors (as f32) with optional metadata, bypassing `atelier_nets::save` and its
/// checks: the way to make files that are wrong on purpose.
fn write_raw(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: Option<HashMap<String, String>>,
) {
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes = t
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (k.clone(), t.dims().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(StDtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let data = safetensors::tensor::serialize(views, meta).unwrap();
    std::fs::write(path, data).unwrap();
}

fn card_meta(card: &ModelCard) -> HashMap<String, String> {
    [(CARD_KEY.to_string(), serde_json::to_string(card).unwrap())].into()
}

/// Asserts a clean, useful, one-line error and returns its message.
fn one_line(err: &Error) -> String {
    let msg = err.to_string();
    assert!(!msg.trim().is_empty(), "empty error message");
    assert!(!msg.contains('\n'), "multi-line error message: {msg:?}");
    msg
}

/// Loads (and reads the card of) a file that must be refused, checking the message names the
/// file and says why.
fn assert_refused(path: &Path, expect: &[&str]) -> String {
    let err = atelier_nets::load(path, &Device::Cpu).expect_err("a broken model file loaded");
    let msg = one_line(&err);
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(msg.contains(&name), "message does not name the file: {msg}");
    assert!(
        expect
            .iter()
            .any(|e| msg.to_lowercase().contains(&e.to_lowercase())),
        "message {msg:?} says none of {expect:?}"
    );
    let card_err = atelier_nets::file::read_card(path).expect_err("read_card accepted it");
    one_line(&card_err);
    msg
}

/// A tiny, valid PNG (stored deflate, correct CRCs and Adler-32), built by hand.
fn tiny_png(w: u32, h: u32) -> Vec<u8> {
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
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0u8);
        for x in 0..w {
            raw.extend_from_slice(&[(x * 40) as u8, (y * 40) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    z.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &v in &raw {
        a = (a + u32::from(v)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
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

fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn import_err(path: &Path, hints: &ImportHints) -> String {
    let err = import(path, hints).expect_err("import accepted a broken checkpoint");
    one_line(&err)
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn f32_round_trip_keeps_card_and_outputs_exactly() {
    let dir = scratch("f32_round_trip");
    for arch in [small_resnet(NormKind::Batch), small_light()] {
        let tensors = random_weights(arch);
        let card = card_for(arch);
        let path = dir.join(format!("{}.safetensors", arch.name()));
        atelier_nets::save(&path, &card, &tensors, Storage::F32).unwrap();

        let model = atelier_nets::load(&path, &Device::Cpu).unwrap();
        assert_eq!(model.card, card, "card changed in the round trip");
        assert_eq!(atelier_nets::file::read_card(&path).unwrap(), card);

        // Every stored tensor is bit-identical.
        let (stored, meta) = atelier_nets::file::read_safetensors(&path).unwrap();
        assert!(meta.unwrap().contains_key(CARD_KEY));
        assert_eq!(stored.len(), tensors.len());
        for (k, t) in &tensors {
            let s = &stored[k];
            assert_eq!(s.dtype(), DType::F32, "{k}");
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{k} changed"
            );
        }

        // Same outputs, exactly.
        let original = Network::from_tensors(arch, &tensors, &Device::Cpu).unwrap();
        let x = input(32, 24);
        let want = forward(&original, &x);
        let got = forward(&model.net, &x);
        assert_eq!(
            max_abs_diff(&want, &got),
            0.0,
            "{}: outputs differ",
            arch.name()
        );
        // Random weights actually produce something (the comparison is not vacuous).
        assert!(want.iter().any(|v| v.abs() > 1e-3));
    }
}

#[test]
fn f16_round_trip_is_close_and_half_the_size() {
    let dir = scratch("f16_round_trip");
    for arch in [
        small_resnet(NormKind::Batch),
        small_resnet(NormKind::Instance),
    ] {
        let tensors = random_weights(arch);
        let card = card_for(arch);
        let p32 = dir.join("m32.safetensors");
        let p16 = dir.join("m16.safetensors");
        atelier_nets::save(&p32, &card, &tensors, Storage::F32).unwrap();
        atelier_nets::save(&p16, &card, &tensors, Storage::F16).unwrap();

        let s32 = std::fs::metadata(&p32).unwrap().len() as f64;
        let s16 = std::fs::metadata(&p16).unwrap().len() as f64;
        let ratio = s16 / s32;
        eprintln!(
            "{} f16/f32 file size: {s16} / {s32} = {ratio:.3}",
            arch.name()
        );
        assert!(
            (0.45..0.56).contains(&ratio),
            "f16 file is {ratio:.3} of the f32 one"
        );

        // Weights are f16; batch-norm running statistics stay f32 (they can exceed f16's
        // precision needs and are few).
        let bytes = std::fs::read(&p16).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let want = if name.ends_with("running_mean") || name.ends_with("running_var") {
                StDtype::F32
            } else {
                StDtype::F16
            };
            assert_eq!(view.dtype(), want, "{name}");
        }

        let m16 = atelier_nets::load(&p16, &Device::Cpu).unwrap();
        assert_eq!(m16.card, card);
        let original = Network::from_tensors(arch, &tensors, &Device::Cpu).unwrap();
        let x = input(32, 24);
        let want = forward(&original, &x);
        let got = forward(&m16.net, &x);
        let diff = max_abs_diff(&want, &got);
        eprintln!("{} f16 max abs output difference: {diff:e}", arch.name());
        assert!(diff < 2e-2, "f16 outputs differ by {diff}");
        assert!(
            diff > 0.0,
            "f16 storage changed nothing: weights were not rounded"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Files that do not match their architecture
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_shape_is_refused_naming_the_weight() {
    let dir = scratch("wrong_shape");
    let arch = small_resnet(NormKind::Instance);
    let card = card_for(arch);
    let mut tensors = random_weights(arch);
    let key = "model.12.conv_block.5.weight";
    let good = tensors[key].dims().to_vec();
    assert_eq!(good, vec![32, 32, 3, 3]);
    tensors.insert(
        key.into(),
        Tensor::zeros((32, 32, 3, 1), DType::F32, &Device::Cpu).unwrap(),
    );

    let path = dir.join("wrong_shape.safetensors");
    write_raw(&path, &tensors, Some(card_meta(&card)));
    let err = atelier_nets::load(&path, &Device::Cpu).expect_err("wrong shape loaded");
    let msg = one_line(&err);
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(msg.contains(key), "message does not name `{key}`: {msg}");
    assert!(
        msg.contains("[32, 32, 3, 1]") && msg.contains("[32, 32, 3, 3]"),
        "{msg}"
    );
    // The card alone is still readable (inspect works on such a file).
    assert_eq!(atelier_nets::file::read_card(&path).unwrap(), card);

    // `save` refuses to write such a file in the first place.
    let out = dir.join("never.safetensors");
    let err = atelier_nets::save(&out, &card, &tensors, Storage::F32).expect_err("saved");
    assert!(one_line(&err).contains(key));
    assert!(!out.exists(), "a refused save left a file behind");
}

#[test]
fn missing_weight_is_refused_naming_the_key() {
    let dir = scratch("missing_key");
    let arch = small_resnet(NormKind::Batch);
    let card = card_for(arch);
    for key in ["model.2.running_var", "model.23.weight", "model.1.weight"] {
        let mut tensors = random_weights(arch);
        assert!(
            tensors.remove(key).is_some(),
            "{key} is not a weight of {}",
            arch.name()
        );
        let path = dir.join("missing.safetensors");
        write_raw(&path, &tensors, Some(card_meta(&card)));
        let err = atelier_nets::load(&path, &Device::Cpu).expect_err("missing key loaded");
        let msg = one_line(&err);
        assert!(matches!(err, Error::MissingKey { .. }), "{err:?}");
        assert!(
            msg.contains(&format!("`{key}`")),
            "message does not name `{key}`: {msg}"
        );
    }
}

#[test]
fn unexpected_weight_is_refused() {
    let dir = scratch("extra_key");
    let arch = small_light();
    let card = card_for(arch);
    let mut tensors = random_weights(arch);
    let n = tensors.len();
    tensors.insert(
        "blocks.7.dw1.weight".into(),
        Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.join("extra.safetensors");
    write_raw(&path, &tensors, Some(card_meta(&card)));
    let err = atelier_nets::load(&path, &Device::Cpu).expect_err("extra key loaded");
    let msg = one_line(&err);
    assert!(
        matches!(err, Error::UnexpectedKeys { count: 1, .. }),
        "{err:?}"
    );
    assert!(msg.contains("blocks.7.dw1.weight"), "{msg}");

    // Control: the same tensors without the extra one load.
    tensors.remove("blocks.7.dw1.weight");
    assert_eq!(tensors.len(), n);
    write_raw(&path, &tensors, Some(card_meta(&card)));
    atelier_nets::load(&path, &Device::Cpu).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Files that are not model files
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_model_files_fail_cleanly() {
    let dir = scratch("truncated");
    let arch = small_light();
    let full = dir.join("full.safetensors");
    atelier_nets::save(&full, &card_for(arch), &random_weights(arch), Storage::F32).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let len = bytes.len();
    let cuts = [
        1,
        4,
        7,
        8,
        9,
        8 + header / 2,
        8 + header - 1,
        8 + header,
        8 + header + 1,
        len / 2,
        len - 4,
        len - 1,
    ];
    for cut in cuts {
        let path = dir.join(format!("cut_{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = assert_refused(&path, &["not a valid model file"]);
        if cut < 8 {
            assert!(msg.contains("too short"), "cut at {cut}: {msg}");
        }
    }
    // Control: the untruncated file loads.
    atelier_nets::load(&full, &Device::Cpu).unwrap();
}

#[test]
fn empty_random_png_and_plain_safetensors_fail_cleanly() {
    let dir = scratch("not_models");

    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert_refused(&empty, &["empty"]);

    for seed in [1u64, 2, 3, 0xDEAD_BEEF] {
        let random = dir.join(format!("random{seed}.safetensors"));
        std::fs::write(&random, noise(4096, seed)).unwrap();
        assert_refused(&random, &["not a valid model file"]);
    }

    // A random small header length followed by noise: gets past the first size check.
    let mut lying = 64u64.to_le_bytes().to_vec();
    lying.extend(noise(500, 9));
    let lying_path = dir.join("lying.safetensors");
    std::fs::write(&lying_path, lying).unwrap();
    assert_refused(&lying_path, &["not a valid model file"]);

    let png = dir.join("picture.safetensors");
    std::fs::write(&png, tiny_png(4, 3)).unwrap();
    assert_refused(&png, &["not a valid model file"]);

    // A well-formed safetensors file without a card (e.g. a raw state dict).
    let arch = small_light();
    let plain = dir.join("plain.safetensors");
    write_raw(&plain, &random_weights(arch), None);
    let msg = assert_refused(&plain, &["atelier.card"]);
    assert!(
        msg.contains("models import"),
        "no hint at the importer: {msg}"
    );

    // Metadata present but the card is not JSON, or of another format version.
    let bad_json = dir.join("bad_json.safetensors");
    write_raw(
        &bad_json,
        &random_weights(arch),
        Some([(CARD_KEY.to_string(), "{not json".to_string())].into()),
    );
    assert_refused(&bad_json, &["model card"]);
    let mut card = card_for(arch);
    card.format = "atelier-model/99".into();
    let future = dir.join("future.safetensors");
    write_raw(&future, &random_weights(arch), Some(card_meta(&card)));
    assert_refused(&future, &["atelier-model/99"]);

    // A missing file is an I/O error naming the path.
    let missing = dir.join("missing.safetensors");
    let err = atelier_nets::load(&missing, &Device::Cpu).expect_err("missing file loaded");
    assert!(one_line(&err).contains("missing.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------

#[test]
fn import_refuses_broken_checkpoints_cleanly() {
    let dir = scratch("bad_checkpoints");
    let hints = ImportHints::default();
    let check = |name: &str, bytes: &[u8], expect: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = import_err(&path, &hints);
        assert!(
            msg.contains(name),
            "{name}: message does not name the file: {msg}"
        );
        assert!(
            expect
                .iter()
                .any(|e| msg.to_lowercase().contains(&e.to_lowercase())),
            "{name}: {msg:?} says none of {expect:?}"
        );
        msg
    };

    check("empty.pth", b"", &["empty"]);

    let pth = std::fs::read(golden("G_resnet_6blocks_instance_ngf4.pth")).unwrap();
    for (i, cut) in [pth.len() / 2, pth.len() - 30, pth.len() - 1]
        .into_iter()
        .enumerate()
    {
        check(&format!("cut{i}.pth"), &pth[..cut], &["checkpoint"]);
    }

    let not_torch = zip_with(&[("readme.txt", b"hello"), ("data/0", &[0u8; 16])]);
    check("plain.zip.pth", &not_torch, &["data.pkl"]);

    let bad_pickle = zip_with(&[
        ("archive/data.pkl", &noise(200, 5)),
        ("archive/data/0", &[0u8; 64]),
    ]);
    check("bad_pickle.pth", &bad_pickle, &["pickle", "malformed"]);

    check("random.pth", &noise(10_000, 77), &["neither"]);
    check(
        "notes.txt",
        b"this is a text file, not a checkpoint\nsecond line\n",
        &["neither"],
    );
    check(
        "legacy.pth",
        &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46],
        &["legacy"],
    );

    // A pickle that would run `os.system("ls")` when unpickled by Python: refused by name,
    // before any tensor is read (SECURITY.md: the importer refuses every global outside its
    // allow-list).
    let evil: &[u8] = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
    let evil = zip_with(&[("archive/data.pkl", evil), ("archive/data/0", &[0u8; 16])]);
    check("os_system.pth", &evil, &["os.system", "refused"]);
    // A dict whose value is built by another global (a model class).
    let class: &[u8] = b"\x80\x02}X\x01\x00\x00\x00wcmodels.networks\nResnetGenerator\n)Rs.";
    let class = zip_with(&[("archive/data.pkl", class)]);
    check(
        "model_class.pth",
        &class,
        &["models.networks.ResnetGenerator", "refused"],
    );

    // Control: the untouched checkpoint imports.
    import(&golden("G_resnet_6blocks_instance_ngf4.pth"), &hints).unwrap();
}

#[test]
fn contradicting_flags_name_the_first_mismatched_weight() {
    let path = golden("G_resnet_6blocks_instance_ngf4.pth");
    let sd = read_state_dict(&path).unwrap();
    for (hints, what) in [
        (
            ImportHints {
                ngf: Some(8),
                ..ImportHints::default()
            },
            "--ngf 8",
        ),
        (
            ImportHints {
                net_g: Some("resnet_6blocks".into()),
                ngf: Some(8),
                ..ImportHints::default()
            },
            "--netG resnet_6blocks --ngf 8",
        ),
    ] {
        let err = import(&path, &hints).expect_err(what);
        let msg = one_line(&err);
        let Error::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } = &err
        else {
            panic!("{what}: expected a shape mismatch, got {err:?}");
        };
        // The weights whose shapes contradict an ngf-8 resnet_6blocks, worked out here.
        let arch = small_resnet(NormKind::Instance);
        let expect = arch.expected_shapes().unwrap();
        let mismatched: Vec<&String> = expect
            .iter()
            .filter(|(k, s)| sd.get(*k).is_some_and(|t| t.dims() != s.as_slice()))
            .map(|(k, _)| k)
            .collect();
        assert!(!mismatched.is_empty());
        assert_eq!(key, mismatched[0], "{what}: {msg}");
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
        assert_eq!(found.as_slice(), sd[key].dims());
        assert_eq!(expected, &expect[key]);
    }

    // On the light checkpoint too (ngf 8 in the file, 4 claimed).
    let err = import(
        &golden("G_light_ngf8_b2.pth"),
        &ImportHints {
            ngf: Some(4),
            ..ImportHints::default()
        },
    )
    .expect_err("--ngf 4 on an ngf-8 light model");
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(one_line(&err).contains("weight `"));

    // Other contradictions fail too and name a weight.
    for (hints, what) in [
        (
            ImportHints {
                norm: Some(NormKind::Batch),
                ..ImportHints::default()
            },
            "--norm batch",
        ),
        (
            ImportHints {
                net_g: Some("resnet_9blocks".into()),
                ..ImportHints::default()
            },
            "--netG resnet_9blocks",
        ),
    ] {
        let err = import(&path, &hints).expect_err(what);
        let msg = one_line(&err);
        assert!(msg.contains("`model."), "{what}: no weight named in {msg}");
    }
}

#[test]
fn module_prefixed_checkpoint_imports_with_a_note() {
    let dir = scratch("module_prefix");
    for name in [
        "G_resnet_9blocks_batch_ngf4.safetensors",
        "D_basic_batch_ndf8_in6.safetensors",
    ] {
        let src = golden(name);
        let bytes = std::fs::read(&src).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (format!("module.{k}"), v))
            .collect();
        assert!(!views.is_empty());
        let prefixed = dir.join(format!("module_{name}"));
        std::fs::write(
            &prefixed,
            safetensors::tensor::serialize(views, None).unwrap(),
        )
        .unwrap();

        // The rewritten file really carries the prefix.
        let raw = read_state_dict(&prefixed).unwrap();
        assert!(raw.keys().all(|k| k.starts_with("module.")));

        let plain = import(&src, &ImportHints::default()).unwrap();
        let got = import(&prefixed, &ImportHints::default()).unwrap();
        assert_eq!(got.arch, plain.arch, "{name}");
        assert!(
            got.notes.iter().any(|n| n.contains("module.")),
            "{name}: no note about the prefix in {:?}",
            got.notes
        );
        assert!(!plain.notes.iter().any(|n| n.contains("module.")));
        assert_eq!(got.tensors.len(), plain.tensors.len());
        for (k, t) in &plain.tensors {
            let u = got
                .tensors
                .get(k)
                .unwrap_or_else(|| panic!("{name}: lost `{k}`"));
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = u.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{name}: `{k}` differs");
        }

        // And the result saves and loads as a model.
        let out = dir.join("imported.safetensors");
        let card = ModelCard::new("prefixed", got.arch);
        atelier_nets::save(&out, &card, &got.tensors, Storage::F32).unwrap();
        atelier_nets::load(&out, &Device::Cpu).unwrap();
    }
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes; 0 where unknown.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Regression (issue 20, found by probing the server): architecture numbers in an uploaded
/// card, or an import query, were trusted. A 185 KB model file declaring `"ngf":
/// 1099511627776` aborted the server ("memory allocation of 646512837132288 bytes failed"),
/// `"n_blocks": 1000000000` grew it to 22.5 GB: validation built a network before checking
/// anything. Now every number is bounded and shapes are compared without allocating weights.
#[test]
fn hostile_architecture_numbers_are_refused_before_allocating() {
    let dir = scratch("hostile_arch");
    let small = small_resnet(NormKind::Instance);
    let tensors = random_weights(small);
    let Arch::Resnet(base) = small else {
        unreachable!()
    };
    let before = peak_rss();
    let t0 = std::time::Instant::now();
    for (name, arch, says) in [
        (
            "ngf_2_40",
            Arch::Resnet(ResnetConfig {
                ngf: 1 << 40,
                ..base
            }),
            "ngf 1099511627776 is outside 1..=1024",
        ),
        (
            "blocks_1e9",
            Arch::Resnet(ResnetConfig {
                n_blocks: 1_000_000_000,
                ..base
            }),
            "n_blocks 1000000000 is outside 0..=64",
        ),
        (
            // Every number in range, the whole too big (64 blocks of 4096² 3×3 convolutions).
            "params",
            Arch::Resnet(ResnetConfig {
                ngf: 1024,
                n_blocks: 64,
                ..base
            }),
            "weights is over the limit",
        ),
        (
            "channels",
            Arch::Resnet(ResnetConfig {
                input_nc: 1 << 30,
                ..base
            }),
            "input_nc",
        ),
    ] {
        let path = dir.join(format!("{name}.safetensors"));
        write_raw(&path, &tensors, Some(card_meta(&card_for(arch))));
        let err = atelier_nets::load(&path, &Device::Cpu).expect_err(name);
        let msg = one_line(&err);
        assert!(msg.contains(says), "{name}: {msg}");
        // The architecture's own queries answer without allocating or overflowing.
        assert!(arch.check().is_err(), "{name}");
        if name != "params" {
            assert_eq!(arch.macs(1024, 1024), None, "{name}");
        }
    }
    // The same numbers from an import query.
    let err = import(
        &golden("G_resnet_6blocks_instance_ngf4.pth"),
        &ImportHints {
            ngf: Some(1 << 40),
            ..ImportHints::default()
        },
    )
    .expect_err("ngf 2^40 imported");
    assert!(one_line(&err).contains("ngf"), "{err}");
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 200 << 20, "peak RSS grew by {} MB", grown >> 20);
    assert!(t0.elapsed().as_secs_f64() < 5.0, "{:?}", t0.elapsed());
    // Control: a real architecture still loads.
    let path = dir.join("ok.safetensors");
    write_raw(&path, &tensors, Some(card_meta(&card_for(small))));
    atelier_nets::load(&path, &Device::Cpu).unwrap();
}

/// Found by fuzzing (`fuzz/regressions/pth_import/oom-binunicode-4gib-length`, and `-valid-crc`, the same pickle in a
/// zip whose checksum holds): a pickle
/// string declaring 4 GiB made candle's reader allocate 4 GiB before reading it. The pickle is
/// checked first and refused without allocating.
#[test]
fn fuzz_regression_oom_binunicode_4gib_length() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/pth_import/oom-binunicode-4gib-length-valid-crc");
    let err = import(&path, &ImportHints::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ends inside an opcode's argument"), "{err}");
}
