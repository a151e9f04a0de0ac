//! End-to-end training on small synthetic datasets: each family must actually learn, runs
//! resume exactly, and bad data or diverging weights are handled. Every test runs on the CPU in
//! a few seconds to a few tens of seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use atelier_imaging::{encode, Format, Image};
use atelier_train::config::{DcganPreset, Family, NetChoice, TrainConfig, TrainPrecision};
use atelier_train::{Dataset, Event, Observer, Rng, Silent, Source, TrainError, Trainer};
use candle_core::{Device, Tensor};

const S: u32 = 32;

/// A synthetic image: `shape` (0 disc, 1 square) of `color` at a random place and size, on a
/// background of mild grey noise. Values in [0, 1].
fn shape_image(rng: &mut Rng, shape: u8, color: [f32; 3]) -> Vec<f32> {
    shape_on(rng, shape, color, 0.45)
}

/// [`shape_image`] on a background of grey level `bg`..`bg + 0.1`.
fn shape_on(rng: &mut Rng, shape: u8, color: [f32; 3], bg: f32) -> Vec<f32> {
    let n = (S * S) as usize;
    let mut rgb = vec![0.0f32; 3 * n];
    for i in 0..n {
        let g = bg + 0.1 * rng.uniform() as f32;
        for c in 0..3 {
            rgb[c * n + i] = g;
        }
    }
    let r = 6.0 + 4.0 * rng.uniform() as f32;
    let cx = r + (S as f32 - 2.0 * r) * rng.uniform() as f32;
    let cy = r + (S as f32 - 2.0 * r) * rng.uniform() as f32;
    for y in 0..S as usize {
        for x in 0..S as usize {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match shape {
                0 => dx * dx + dy * dy <= r * r,
                _ => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
            };
            if inside {
                for c in 0..3 {
                    rgb[c * n + y * S as usize + x] = color[c];
                }
            }
        }
    }
    rgb
}

fn to_image(rgb01: &[f32]) -> Image {
    Image::new(S, S, rgb01.iter().map(|v| v * 2.0 - 1.0).collect(), None).unwrap()
}

fn save(dir: &Path, name: &str, rgb01: &[f32]) {
    std::fs::create_dir_all(dir).unwrap();
    let png = encode(&to_image(rgb01), Format::Png, 0).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Unpaired domains: `root`/A holds four red shapes of kind 0, `root`/B four blue ones of kind 1.
fn two_domains(root: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let (a, b) = (root.join("A"), root.join("B"));
    let mut rng = Rng::new(seed);
    for i in 0..4 {
        save(
            &a,
            &format!("{i}.png"),
            &shape_image(&mut rng, 0, [0.9, 0.1, 0.1]),
        );
        save(
            &b,
            &format!("{i}.png"),
            &shape_image(&mut rng, 1, [0.1, 0.1, 0.9]),
        );
    }
    (a, b)
}

/// Images of a tensor `(N, 3, H, W)` in [-1, 1] as flat vectors.
fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let n = t.dim(0).unwrap();
    (0..n)
        .map(|i| {
            t.narrow(0, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn load_folder(dir: &Path) -> Tensor {
    let mut ds = Dataset::open(dir).unwrap();
    let plain = atelier_train::Augment {
        load_size: S,
        crop_size: S,
        flip: false,
        color_jitter: 0.0,
        center_square: false,
    };
    let imgs: Vec<Image> = (0..ds.len())
        .filter_map(|i| ds.sample(i, &plain, &mut Rng::new(0)))
        .collect();
    Dataset::collate(&imgs, &Device::Cpu).unwrap()
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    // Both in [-1, 1]: peak-to-peak 2.
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

fn small_nets(g: &str) -> NetChoice {
    NetChoice {
        net_g: Some(g.into()),
        ngf: Some(16),
        ndf: Some(16),
        ..NetChoice::default()
    }
}

fn config(family: Family, a: &Path, b: Option<&Path>, nets: &NetChoice, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(family, a.into(), b.map(Into::into), Some(S), nets).unwrap();
    cfg.augment.load_size = S;
    cfg.augment.flip = false;
    cfg.set_length(Some(steps), None, None, 1).unwrap();
    cfg.log_every = 10;
    cfg.sample_every = 50;
    cfg.checkpoint_every = 100;
    cfg
}

/// pix2pix on shapes → their colour inversion: held-out PSNR after training beats a fixed
/// bar that the untrained generator is far from.
#[test]
fn pix2pix_learns_colour_inversion() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, held) = (
        tmp.path().join("A"),
        tmp.path().join("B"),
        tmp.path().join("held"),
    );
    let mut rng = Rng::new(1);
    let palette = [
        [0.9, 0.2, 0.1],
        [0.1, 0.7, 0.2],
        [0.2, 0.3, 0.9],
        [0.9, 0.8, 0.1],
    ];
    let mut held_pairs = Vec::new();
    for i in 0..40 {
        let img = shape_on(&mut rng, (i % 2) as u8, palette[i % 4], 0.1);
        let inv: Vec<f32> = img.iter().map(|v| 1.0 - v).collect();
        if i < 32 {
            save(&a, &format!("{i}.png"), &img);
            save(&b, &format!("{i}.png"), &inv);
        } else {
            save(&held.join("A"), &format!("{i}.png"), &img);
            held_pairs.push(inv);
        }
    }
    let mut cfg = config(Family::Pix2pix, &a, Some(&b), &small_nets("unet"), 150);
    cfg.batch = 4;
    cfg.lr = 2e-3;
    let out = tmp.path().join("run");
    let mut t = Trainer::create(cfg, &out).unwrap();
    let x = load_folder(&held.join("A"));
    let score = |t: &Trainer| {
        let y = rows(&t.generate(0, &x).unwrap());
        let targets: Vec<Vec<f32>> = held_pairs
            .iter()
            .map(|v| v.iter().map(|p| p * 2.0 - 1.0).collect())
            .collect();
        y.iter().zip(&targets).map(|(p, q)| psnr(p, q)).sum::<f64>() / y.len() as f64
    };
    let before = score(&t);
    let done = t.run(&mut Silent).unwrap();
    let after = score(&t);
    eprintln!("pix2pix held-out PSNR: untrained {before:.2} dB, trained {after:.2} dB");
    assert!(before < 12.0, "untrained PSNR {before}");
    assert!(after > 22.0, "trained PSNR {after} (untrained {before})");
    // The run directory has what a person looks at.
    for f in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples/latest.png",
        "pix2pix.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let card = atelier_nets::file::read_card(&done.models[0]).unwrap();
    assert_eq!(card.provenance.steps, Some(150));
    assert!(card.inference.batch_stats);
    assert!(card.metrics.contains_key("final_loss_G_L1"));
}

fn blueness(img: &[f32]) -> f64 {
    let n = img.len() / 3;
    (img[2 * n..].iter().sum::<f32>() - img[..n].iter().sum::<f32>()) as f64 / n as f64
}

/// CycleGAN between red discs and blue squares: translated A has B's colour statistics, and
/// the cycle reconstructs A.
#[test]
fn cyclegan_translates_red_discs_to_blue_squares() {
    cyclegan_learns_discs_to_squares("resnet_2blocks");
}

/// The same with resize-convolution upsampling (`_resize`, the built-in styles' generator).
#[test]
fn cyclegan_with_resize_convolution_translates_discs_to_squares() {
    cyclegan_learns_discs_to_squares("resnet_2blocks_resize");
}

/// 24 red discs in `root`/A, 24 blue squares in `root`/B and 8 held-out red discs in
/// `root`/held (the learning tests of the unpaired families).
fn discs_and_squares(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b, held) = (root.join("A"), root.join("B"), root.join("held"));
    let mut rng = Rng::new(2);
    for i in 0..24 {
        let disc = shape_image(&mut rng, 0, [0.9, 0.15, 0.1]);
        save(&a, &format!("{i}.png"), &disc);
        let square = shape_image(&mut rng, 1, [0.1, 0.2, 0.9]);
        save(&b, &format!("{i}.png"), &square);
    }
    for i in 0..8 {
        save(
            &held,
            &format!("{i}.png"),
            &shape_image(&mut rng, 0, [0.9, 0.15, 0.1]),
        );
    }
    (a, b, held)
}

fn cyclegan_learns_discs_to_squares(net_g: &str) {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, held) = discs_and_squares(tmp.path());
    let mut cfg = config(Family::Cyclegan, &a, Some(&b), &small_nets(net_g), 120);
    cfg.lr = 2e-3;
    let out = tmp.path().join("run");
    let mut t = Trainer::create(cfg, &out).unwrap();
    let x = load_folder(&held);
    let real_b = load_folder(&b);
    let mean_blue = |t: &Tensor| {
        let r = rows(t);
        r.iter().map(|v| blueness(v)).sum::<f64>() / r.len() as f64
    };
    let cycle_err = |t: &Trainer| {
        let rec = t.generate(1, &t.generate(0, &x).unwrap()).unwrap();
        (rec - &x)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = cycle_err(&t);
    t.run(&mut Silent).unwrap();
    let fake = t.generate(0, &x).unwrap();
    let (bl_a, bl_b, bl_fake) = (mean_blue(&x), mean_blue(&real_b), mean_blue(&fake));
    let after = cycle_err(&t);
    eprintln!(
        "cyclegan {net_g}: blueness A {bl_a:.3} B {bl_b:.3} G_A(A) {bl_fake:.3}; cycle L1 {before:.3} → {after:.3}"
    );
    assert!(
        (bl_fake - bl_b).abs() < 0.35 * (bl_b - bl_a).abs(),
        "translated A is not blue enough: {bl_fake} (A {bl_a}, B {bl_b})"
    );
    assert!(
        after < 0.12 && after < 0.4 * before,
        "cycle L1 {after} (untrained {before})"
    );
    assert!(out.join("cyclegan_reverse.safetensors").is_file());
}

/// CUT and FastCUT between red discs and blue squares: the translation takes B's colour, and
/// keeps the input's layout (PatchNCE): the shape's pixels in the input are the blue ones in
/// the output, the background stays background.
///
/// CUT meets both bars from every seed tried (0–4, f32) at this learning rate and length; at
/// twice the rate for half the steps only one seed in five did. FastCUT (no identity NCE)
/// sometimes settles on the swapped layout on this toy (blue background, seeds 2 of 0–4 here),
/// a property of the method rather than of a seed: it is judged on the majority of three seeds.
#[test]
fn cut_translates_red_discs_to_blue_shapes_in_place() {
    cut_learns_in(Family::Cut, TrainPrecision::F32, 0).unwrap();
}

#[test]
fn fastcut_translates_red_discs_to_blue_shapes_in_place() {
    let results: Vec<Result<(), String>> = (0..3)
        .map(|seed| cut_learns_in(Family::Fastcut, TrainPrecision::F32, seed))
        .collect();
    let passed = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        passed >= 2,
        "FastCUT learned in {passed} of 3 seeds: {results:?}"
    );
}

/// CUT (the built-in styles' family) trained with bf16 convolutions (`--precision bf16`)
/// learns the same translation to the same bars (f32 on CPUs without AVX512_BF16).
#[test]
fn cut_in_bf16_translates_red_discs_to_blue_shapes_in_place() {
    cut_learns_in(Family::Cut, TrainPrecision::Bf16, 0).unwrap();
}

/// Trains `family` from `seed`; `Err` says which bar the translation missed.
fn cut_learns_in(family: Family, precision: TrainPrecision, seed: u64) -> Result<(), String> {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, held) = discs_and_squares(tmp.path());
    let mut cfg = config(
        family,
        &a,
        Some(&b),
        &small_nets("resnet_2blocks_resize"),
        300,
    );
    cfg.lr = 1e-3;
    cfg.nce.num_patches = 64;
    cfg.precision = precision;
    cfg.seed = seed;
    let out = tmp.path().join("run");
    let mut t = Trainer::create(cfg, &out).unwrap();
    let x = load_folder(&held);
    let real_b = load_folder(&b);
    let mean_blue = |t: &Tensor| {
        let r = rows(t);
        r.iter().map(|v| blueness(v)).sum::<f64>() / r.len() as f64
    };
    // Mean blueness of the output on the input's shape minus that on its background.
    let in_place = |t: &Trainer| {
        let fake = rows(&t.generate(0, &x).unwrap());
        let input = rows(&x);
        let n = (S * S) as usize;
        let mut contrast = 0.0;
        for (f, i) in fake.iter().zip(&input) {
            let (mut on, mut off, mut n_on, mut n_off) = (0.0, 0.0, 0, 0);
            for p in 0..n {
                let blue = (f[2 * n + p] - f[p]) as f64;
                // Input in [-1, 1]: the red shape has red ≫ blue.
                if i[p] - i[2 * n + p] > 0.8 {
                    on += blue;
                    n_on += 1;
                } else {
                    off += blue;
                    n_off += 1;
                }
            }
            contrast += on / n_on as f64 - off / n_off as f64;
        }
        contrast / fake.len() as f64
    };
    t.run(&mut Silent).unwrap();
    let fake = t.generate(0, &x).unwrap();
    let (bl_a, bl_b, bl_fake) = (mean_blue(&x), mean_blue(&real_b), mean_blue(&fake));
    let place = in_place(&t);
    eprintln!(
        "{} ({}, seed {seed}): blueness A {bl_a:.3} B {bl_b:.3} G(A) {bl_fake:.3}; shape-vs-background blueness {place:.3}",
        family.name(),
        precision.name()
    );
    let model = out.join(format!("{}.safetensors", family.name()));
    assert!(model.is_file());
    if (bl_fake - bl_b).abs() >= 0.35 * (bl_b - bl_a).abs() {
        return Err(format!(
            "seed {seed}: translated A is not blue enough: {bl_fake} (A {bl_a}, B {bl_b})"
        ));
    }
    // B's shapes are 1.6 (blue − red in [-1, 1]) above the background's 0.
    if place <= 0.8 {
        return Err(format!(
            "seed {seed}: the shape did not stay in place: {place}"
        ));
    }
    Ok(())
}

/// DCGAN (the brief's network, narrowed) on two modes — horizontal and vertical bars —
/// produces both.
#[test]
fn dcgan_covers_both_modes() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bars");
    std::fs::create_dir_all(&dir).unwrap();
    let n = 28usize;
    let bar = |vertical: bool, offset: usize| -> Vec<u8> {
        let mut v = vec![20u8; n * n * 3];
        for y in 0..n {
            for x in 0..n {
                let c = if vertical { x } else { y };
                if (10 + offset..18 + offset).contains(&c) {
                    for ch in 0..3 {
                        v[(y * n + x) * 3 + ch] = 230;
                    }
                }
            }
        }
        v
    };
    for i in 0..32 {
        let img = Image::from_rgb8(28, 28, &bar(i % 2 == 0, i % 3)).unwrap();
        std::fs::write(
            dir.join(format!("{i}.png")),
            encode(&img, Format::Png, 0).unwrap(),
        )
        .unwrap();
    }
    let nets = NetChoice {
        preset: DcganPreset::Brief,
        ngf: Some(16),
        ndf: Some(16),
        nz: 16,
        ..NetChoice::default()
    };
    let mut cfg = TrainConfig::new(Family::Dcgan, dir.clone(), None, None, &nets).unwrap();
    cfg.batch = 16;
    cfg.lr = 1e-3;
    cfg.beta1 = 0.5;
    // 350 steps. Clear samples by length (seed 0): 1 step 0, 50 steps 42, 100 steps 49;
    // at 250 steps, seeds 0-5 on AVX-512 and AVX2 gave 47-57 (summation order alone moves
    // the count by up to 10), at 350 steps seeds 0, 2, 3, 5 on both gave 53-60.
    cfg.set_length(Some(350), None, None, 2).unwrap();
    cfg.sample_every = 100;
    let mut t = Trainer::create(cfg, &tmp.path().join("run")).unwrap();
    t.run(&mut Silent).unwrap();
    let mut rng = Rng::new(77);
    let z: Vec<f32> = (0..64 * 16).map(|_| rng.normal() as f32).collect();
    let z = Tensor::from_vec(z, (64, 16), &Device::Cpu).unwrap();
    let samples = rows(&t.generate(0, &z).unwrap());
    let template = |vertical: bool| -> Vec<f32> {
        bar(vertical, 1)
            .iter()
            .step_by(3)
            .map(|&v| v as f32 / 127.5 - 1.0)
            .collect()
    };
    let (th, tv) = (template(false), template(true));
    let (mut horizontal, mut vertical) = (0, 0);
    for s in &samples {
        let red = &s[..n * n];
        let d = |t: &[f32]| red.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
        let (dh, dv) = (d(&th), d(&tv));
        if dh < 0.5 * dv {
            horizontal += 1;
        } else if dv < 0.5 * dh {
            vertical += 1;
        }
    }
    eprintln!("dcgan: {horizontal} horizontal, {vertical} vertical of 64");
    assert!(
        horizontal >= 8 && vertical >= 8,
        "{horizontal} horizontal, {vertical} vertical"
    );
    assert!(
        horizontal + vertical >= 48,
        "{horizontal} + {vertical} clear samples of 64"
    );
}

/// Stops the run after `at` steps, as Ctrl-C does.
struct StopAt {
    at: u64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Observer for StopAt {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::Step(p) = e {
            if p.step == self.at {
                self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// Every trained variable: generators, discriminators and CUT's heads.
fn all_weights(t: &Trainer) -> HashMap<String, Vec<f32>> {
    t.trained_weights()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn resume_matches(family: Family, g: &str) {
    resume_matches_in(family, g, TrainPrecision::F32)
}

fn resume_matches_in(family: Family, g: &str, precision: TrainPrecision) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    let mut rng = Rng::new(3);
    for i in 0..6 {
        let img = shape_image(&mut rng, 0, [0.9, 0.1, 0.1]);
        save(&a, &format!("{i}.png"), &img);
        save(
            &b,
            &format!("{i}.png"),
            &shape_image(&mut rng, 1, [0.1, 0.1, 0.9]),
        );
    }
    let distill = family == Family::Distill;
    let mut cfg = config(
        family,
        &a,
        (!distill).then_some(b.as_path()),
        &small_nets(g),
        12,
    );
    if distill {
        cfg.teacher = Some(random_teacher(tmp.path()));
    }
    cfg.augment.load_size = S + 4; // random crops and flips on
    cfg.augment.flip = true;
    cfg.batch = 2;
    cfg.pool_size = 3;
    cfg.checkpoint_every = 100;
    cfg.precision = precision;
    let mut straight = Trainer::create(cfg.clone(), &tmp.path().join("straight")).unwrap();
    straight.run(&mut Silent).unwrap();

    let run = tmp.path().join("interrupted");
    let mut first = Trainer::create(cfg, &run).unwrap();
    let flag = first.stop_flag();
    let err = first.run(&mut StopAt { at: 5, flag }).unwrap_err();
    assert!(
        matches!(err, TrainError::Interrupted { step: 5, .. }),
        "{err}"
    );
    drop(first);
    let mut second = Trainer::resume(&run).unwrap();
    assert_eq!(second.step(), 5);
    second.run(&mut Silent).unwrap();

    let (x, y) = (all_weights(&straight), all_weights(&second));
    assert_eq!(x.len(), y.len());
    let mut differing = 0;
    for (k, v) in &x {
        if v != &y[k] {
            differing += 1;
            eprintln!("{k} differs");
        }
    }
    assert!(
        x.keys().any(|k| k.starts_with('D')),
        "discriminators compared too"
    );
    assert_eq!(differing, 0, "{differing} tensors differ after resume");
    // Metrics were not duplicated by the resume.
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("losses").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps.clone();
    sorted.dedup();
    assert_eq!(steps, sorted, "{steps:?}");
}

/// N steps straight equal N/2 + interrupt + resume + N/2, bit for bit (CycleGAN: instance
/// norm, image pool, random crops and flips).
#[test]
fn cyclegan_resume_is_bitwise_exact() {
    atelier_nets::init_threads(None);
    resume_matches(Family::Cyclegan, "resnet_1blocks");
}

/// The same in bf16: the precision is part of the run's config, so the resumed half trains
/// in bf16 too (an f32 second half would differ in every tensor).
#[test]
fn bf16_resume_is_bitwise_exact() {
    atelier_nets::init_threads(None);
    resume_matches_in(Family::Cyclegan, "resnet_1blocks", TrainPrecision::Bf16);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    let mut rng = Rng::new(4);
    for i in 0..2 {
        save(
            &a,
            &format!("{i}.png"),
            &shape_image(&mut rng, 0, [0.9, 0.1, 0.1]),
        );
        save(
            &b,
            &format!("{i}.png"),
            &shape_image(&mut rng, 1, [0.1, 0.1, 0.9]),
        );
    }
    let mut cfg = config(
        Family::Cyclegan,
        &a,
        Some(&b),
        &small_nets("resnet_1blocks"),
        1,
    );
    cfg.precision = TrainPrecision::Bf16;
    let run = tmp.path().join("run");
    Trainer::create(cfg, &run).unwrap();
    let text = std::fs::read_to_string(run.join("config.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["precision"], "bf16", "{text}");
    let resumed = Trainer::resume(&run).unwrap();
    assert_eq!(resumed.config().precision, TrainPrecision::Bf16);
}

/// Same for CUT (PatchNCE heads in the generators' optimiser, sampled patch positions, the
/// identity term) and FastCUT (random flips for flip equivariance).
#[test]
fn cut_and_fastcut_resume_is_bitwise_exact() {
    atelier_nets::init_threads(None);
    resume_matches(Family::Cut, "resnet_2blocks");
    resume_matches(Family::Fastcut, "resnet_2blocks_resize");
}

/// Same for distillation (the teacher's targets, a conditional D).
#[test]
fn distill_resume_is_bitwise_exact() {
    atelier_nets::init_threads(None);
    resume_matches(Family::Distill, "light");
}

/// A model file of a randomly initialised small ResNet generator in `dir` (a fixed teacher).
fn random_teacher(dir: &Path) -> PathBuf {
    use atelier_nets::arch::Arch;
    use atelier_nets::resnet::{ResnetConfig, Upsampling};
    let arch = Arch::Resnet(ResnetConfig {
        ngf: 8,
        n_blocks: 1,
        upsampling: Upsampling::Resize,
        ..ResnetConfig::default()
    });
    let vars = atelier_nets::SeededVarMap::new(11);
    atelier_nets::Network::new(arch, vars.builder(&Device::Cpu)).unwrap();
    let weights: HashMap<String, Tensor> = vars
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let path = dir.join("teacher.safetensors");
    atelier_nets::save(
        &path,
        &atelier_nets::ModelCard::new("teacher", arch),
        &weights,
        atelier_nets::Storage::F32,
    )
    .unwrap();
    path
}

/// Same for pix2pix (dropout masks and batch-norm running statistics).
#[test]
fn pix2pix_resume_is_bitwise_exact() {
    atelier_nets::init_threads(None);
    resume_matches(Family::Pix2pix, "unet");
}

/// A corrupt image in the data is skipped with a warning and counted; the run completes.
#[test]
fn corrupt_image_is_skipped_and_the_run_completes() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_domains(tmp.path(), 4);
    std::fs::write(a.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let cfg = config(
        Family::Cyclegan,
        &a,
        Some(&b),
        &small_nets("resnet_1blocks"),
        10,
    );
    let out = tmp.path().join("run");
    let mut t = Trainer::create(cfg, &out).unwrap();
    struct Skips(Vec<String>);
    impl Observer for Skips {
        fn event(&mut self, e: &Event<'_>) {
            if let Event::Skipped { path, .. } = e {
                self.0.push(path.display().to_string());
            }
        }
    }
    let mut skips = Skips(Vec::new());
    let done = t.run(&mut skips).unwrap();
    assert_eq!(done.steps, 10);
    assert_eq!(skips.0.len(), 1, "{:?}", skips.0);
    assert!(skips.0[0].ends_with("broken.png"));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(text.contains("broken.png"), "warning not in metrics.jsonl");
    assert!(text.contains("\"skipped_images\":1"));
}

/// Weights that became NaN stop the run with a clear message naming the last good checkpoint,
/// which is kept.
#[test]
fn nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_domains(tmp.path(), 5);
    let mut cfg = config(
        Family::Cyclegan,
        &a,
        Some(&b),
        &small_nets("resnet_1blocks"),
        4,
    );
    cfg.checkpoint_every = 2;
    let run = tmp.path().join("run");
    Trainer::create(cfg.clone(), &run)
        .unwrap()
        .run(&mut Silent)
        .unwrap();
    // Extend the run and poison one generator weight in the last checkpoint.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    config["steps"] = 8.into();
    std::fs::write(run.join("config.json"), config.to_string()).unwrap();
    let ckpt = run.join("checkpoints/step-00000004.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let (mut tensors, meta) = atelier_nets::file::parse_safetensors(&bytes).unwrap();
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    let key = keys
        .into_iter()
        .find(|k| k.starts_with("net.G_A.") && k.ends_with("weight"))
        .unwrap();
    let w = &tensors[&key];
    let nan = Tensor::full(f32::NAN, w.shape(), &Device::Cpu).unwrap();
    tensors.insert(key, nan);
    let poisoned =
        atelier_nets::file::encode_safetensors(&tensors, atelier_nets::Storage::F32, meta.unwrap())
            .unwrap();
    std::fs::write(&ckpt, poisoned).unwrap();

    let err = Trainer::resume(&run).unwrap().run(&mut Silent).unwrap_err();
    let msg = err.to_string();
    // A NaN weight can hide behind a ReLU for one step (relu(NaN) = 0 in candle); the NaN
    // gradients then reach every weight and the next losses.
    assert!(
        matches!(
            err,
            TrainError::Diverged {
                step: 5..=6,
                last_good: Some(4),
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("checkpoint (step 4) is kept"), "{msg}");
    // Nothing after the last good state was written.
    let ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        ckpts
            .iter()
            .all(|c| !c.contains("0005") && !c.contains("0006")),
        "{ckpts:?}"
    );
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(text.contains("\"diverged\""));
}

/// CycleGAN with a network's independent passes batched (G over real and identity inputs, D
/// over real and pooled fake) trains like the separate passes of the reference, up to float
/// rounding: losses agree to 1e-3 and all but 1 % of the weights match to 1e-5. Adam's first
/// steps turn the sign of a near-zero gradient into a full ±lr step, so a few weights may differ
/// by up to one lr per step (measured: 550 of 249 606 after 4 steps). A wrong batch half (say
/// the identity loss read from the fake) moves the identity and cycle losses by far more.
#[test]
fn cyclegan_batched_passes_match_separate_passes() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_domains(tmp.path(), 5);
    let mut cfg = config(
        Family::Cyclegan,
        &a,
        Some(&b),
        &small_nets("resnet_1blocks"),
        4,
    );
    cfg.batch = 2;
    cfg.pool_size = 3;
    cfg.log_every = 4;
    let run = |batched: bool, name: &str| {
        let mut c = cfg.clone();
        c.batched_passes = batched;
        let mut t = Trainer::create(c, &tmp.path().join(name)).unwrap();
        let done = t.run(&mut Silent).unwrap();
        (all_weights(&t), done.final_losses)
    };
    let (wb, lb) = run(true, "batched");
    let (ws, ls) = run(false, "separate");
    assert_eq!(lb.len(), ls.len());
    for ((k, x), (_, y)) in lb.iter().zip(&ls) {
        assert!(
            (x - y).abs() <= 1e-3 * y.abs().max(1e-3),
            "loss {k}: batched {x} vs separate {y}"
        );
    }
    let (mut total, mut off) = (0usize, 0usize);
    for (k, v) in &ws {
        for (x, y) in v.iter().zip(&wb[k]) {
            total += 1;
            if (x - y).abs() > 1e-5 {
                off += 1;
                assert!((x - y).abs() <= 4.0 * 2e-4 * 1.01, "{k}: {x} vs {y}");
            }
        }
    }
    assert!(
        off * 100 <= total,
        "{off} of {total} generator weights differ by more than 1e-5"
    );
}

/// `init_from`: a CUT run starts from a CycleGAN model file's generator (D random), or from a
/// CycleGAN run directory (G from `G_A`, D from `D_A`); the weights are copied into the run so
/// a resume before the first checkpoint starts from them too; a generator of another shape is
/// refused by name.
#[test]
fn init_from_a_model_file_or_a_run() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_domains(tmp.path(), 4);
    let nets = small_nets("resnet_1blocks_resize");
    let src_cfg = config(Family::Cyclegan, &a, Some(&b), &nets, 3);
    let src_run = tmp.path().join("src");
    let mut src = Trainer::create(src_cfg, &src_run).unwrap();
    src.run(&mut Silent).unwrap();
    let source = all_weights(&src);
    let model = src_run.join("cyclegan.safetensors");
    assert!(src_run.join("cyclegan_reverse.safetensors").is_file());

    // From the model file: G = G_A; D starts random.
    let mut cfg = config(Family::Cut, &a, Some(&b), &nets, 3);
    cfg.init_from = Some(model.clone());
    let run = tmp.path().join("from_model");
    let t = Trainer::create(cfg.clone(), &run).unwrap();
    let w = all_weights(&t);
    let g_keys: Vec<&String> = w.keys().filter(|k| k.starts_with("G.")).collect();
    assert!(!g_keys.is_empty());
    for k in &g_keys {
        assert_eq!(w[*k], source[&format!("G_A.{}", &k[2..])], "{k}");
    }
    // (The biases of D's convolutions before an instance norm change nothing and get no
    // gradient, so training leaves them at their initial zeros in both runs.)
    let d_same = w
        .keys()
        .filter(|k| k.starts_with("D."))
        .map(|k| (k, &source[&format!("D_A.{}", &k[2..])]))
        .filter(|(_, src)| src.iter().any(|v| *v != 0.0))
        .filter(|(k, src)| w[*k] == **src)
        .count();
    assert_eq!(d_same, 0, "D is not in a model file");
    // Resumed before its first checkpoint: the same start.
    drop(t);
    let again = Trainer::resume(&run).unwrap();
    assert_eq!(all_weights(&again), w);

    // From the run: D from D_A as well.
    cfg.init_from = Some(src_run.clone());
    let t = Trainer::create(cfg.clone(), &tmp.path().join("from_run")).unwrap();
    let w = all_weights(&t);
    for (k, v) in w.iter().filter(|(k, _)| k.starts_with("D.")) {
        assert_eq!(v, &source[&format!("D_A.{}", &k[2..])], "{k}");
    }

    // Another generator width: refused, naming the source.
    let mut wide = config(
        Family::Cut,
        &a,
        Some(&b),
        &NetChoice {
            ngf: Some(8),
            ..nets
        },
        3,
    );
    wide.init_from = Some(model.clone());
    let err = Trainer::create(wide, &tmp.path().join("wide"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cyclegan.safetensors") && err.contains("weights"),
        "{err}"
    );
}

/// Distillation: a light student trained on photos only comes close to its teacher's
/// translations of held-out photos (the teacher: a CycleGAN generator trained here from red
/// discs to blue squares): L1 to the teacher far below the untrained student's and below the
/// best constant image's.
#[test]
fn distill_learns_the_teachers_translation() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    let held = tmp.path().join("held");
    let mut rng = Rng::new(6);
    for i in 0..32 {
        save(
            &a,
            &format!("{i}.png"),
            &shape_image(&mut rng, 0, [0.9, 0.15, 0.1]),
        );
        save(
            &b,
            &format!("{i}.png"),
            &shape_image(&mut rng, 1, [0.1, 0.2, 0.9]),
        );
    }
    for i in 0..6 {
        save(
            &held,
            &format!("{i}.png"),
            &shape_image(&mut rng, 0, [0.9, 0.15, 0.1]),
        );
    }
    let mut tcfg = config(
        Family::Cyclegan,
        &a,
        Some(&b),
        &small_nets("resnet_2blocks_resize"),
        120,
    );
    tcfg.lr = 2e-3;
    let mut teacher = Trainer::create(tcfg, &tmp.path().join("teacher")).unwrap();
    teacher.run(&mut Silent).unwrap();
    let x = load_folder(&held);
    let target = teacher.generate(0, &x).unwrap();

    let mut cfg = config(Family::Distill, &a, None, &small_nets("light"), 300);
    cfg.teacher = Some(tmp.path().join("teacher/cyclegan.safetensors"));
    cfg.lr = 1e-3;
    let mut t = Trainer::create(cfg, &tmp.path().join("run")).unwrap();
    let err = |t: &Trainer| {
        (t.generate(0, &x).unwrap() - &target)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = err(&t);
    // The best constant image: the teacher's per-pixel mean over the held-out photos.
    let constant = (&target
        - target
            .mean_keepdim(0)
            .unwrap()
            .broadcast_as(target.shape())
            .unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .mean_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    t.run(&mut Silent).unwrap();
    let after = err(&t);
    eprintln!(
        "distill: L1 to the teacher {before:.4} → {after:.4} (best constant image {constant:.4})"
    );
    assert!(
        after < 0.5 * before && after < 0.6 * constant,
        "L1 {before} → {after}, constant {constant}"
    );
    assert!(tmp.path().join("run/distill.safetensors").is_file());
}

/// Records each step's total variation loss.
struct TvLog(Vec<f64>);

impl Observer for TvLog {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::Step(p) = e {
            if let Some((_, v)) = p.losses.iter().find(|(n, _)| *n == "TV") {
                self.0.push(*v);
            }
        }
    }
}

/// `lambda_tv` reaches G's update, is reported as the `TV` loss, and is off (0) in configs
/// written before it existed.
#[test]
fn cut_total_variation_weight_reaches_the_generator() {
    atelier_nets::init_threads(None);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_domains(tmp.path(), 5);
    let nets = small_nets("resnet_1blocks_resize");
    let run = |tv: f64, name: &str| {
        let mut cfg = config(Family::Cut, &a, Some(&b), &nets, 2);
        cfg.nce.num_patches = 16;
        cfg.nce.lambda_tv = tv;
        let mut t = Trainer::create(cfg, &tmp.path().join(name)).unwrap();
        let mut log = TvLog(Vec::new());
        t.run(&mut log).unwrap();
        (all_weights(&t), log.0)
    };
    let (plain, none) = run(0.0, "plain");
    let (with_tv, tv) = run(5.0, "tv");
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(tv.len(), 2);
    assert!(tv.iter().all(|v| v.is_finite() && *v > 0.0), "{tv:?}");
    let g_diff = plain
        .keys()
        .filter(|k| k.starts_with("G."))
        .filter(|k| plain[*k] != with_tv[*k])
        .count();
    assert!(g_diff > 0, "the TV weight did not change G");
    // The config without the field (an older run's) reads as 0.
    let mut cfg = serde_json::to_value(config(Family::Cut, &a, Some(&b), &nets, 2)).unwrap();
    cfg["nce"].as_object_mut().unwrap().remove("lambda_tv");
    let back: TrainConfig = serde_json::from_value(cfg).unwrap();
    assert_eq!(back.nce.lambda_tv, 0.0);
}
