//! Golden tests against the PyTorch reference.
//!
//! `tests/reference/make_golden.py` (PyTorch; run `tests/reference/regen.sh` to regenerate)
//! builds each reference network with a fixed seed, saves its `state_dict` with `torch.save`
//! (`<case>.pth`, and for some cases also `<case>.safetensors`), and the input and outputs
//! (`<case>.io.safetensors`: `input`, `output` in eval mode, and for batch-norm networks
//! `output_batchstats` with batch statistics). Here each checkpoint goes through the same
//! import path as `atelier models import`, the architecture is inferred from the weights alone
//! and compared with the manifest, and the outputs must match to 1e-4 max abs error.

use std::path::{Path, PathBuf};

use atelier_nets::import::{import, ImportHints};
use atelier_nets::{Arch, Ctx, NormKind};
use candle_core::{Device, Tensor};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(golden_dir().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest json")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn usize_of(c: &Value, k: &str) -> Option<usize> {
    c.get(k).and_then(Value::as_u64).map(|v| v as usize)
}

/// The flags a user would pass for this case (the reference's vocabulary).
fn hints_for(c: &Value) -> ImportHints {
    let arch = c["arch"].as_str().unwrap();
    let norm = c
        .get("norm")
        .and_then(Value::as_str)
        .and_then(NormKind::parse);
    let mut h = ImportHints {
        norm,
        ngf: usize_of(c, "ngf"),
        ndf: usize_of(c, "ndf"),
        input_nc: usize_of(c, "input_nc"),
        no_dropout: c.get("use_dropout").and_then(Value::as_bool).map(|d| !d),
        ..ImportHints::default()
    };
    match arch {
        "basic" | "n_layers" | "pixel" => {
            h.net_d = Some(arch.into());
            h.n_layers_d = usize_of(c, "n_layers");
        }
        "dcgan64_G" | "dcgan64_D" => h.net_g = Some(arch.into()),
        "brief_G" => h.net_g = Some("dcgan_brief_G".into()),
        "brief_D" => h.net_g = Some("dcgan_brief_D".into()),
        _ => h.net_g = Some(arch.into()),
    }
    if !arch.starts_with("dcgan") && !arch.starts_with("brief") {
        h
    } else {
        ImportHints {
            net_g: h.net_g,
            ..ImportHints::default()
        }
    }
}

/// Checks that what was inferred from the weights alone agrees with the manifest.
fn check_inferred(c: &Value, arch: &Arch) {
    let name = c["case"].as_str().unwrap();
    let norm = c
        .get("norm")
        .and_then(Value::as_str)
        .and_then(NormKind::parse);
    match arch {
        Arch::Resnet(r) => {
            assert_eq!(r.name(), c["arch"], "{name}");
            assert_eq!(Some(r.ngf), usize_of(c, "ngf"), "{name}");
            assert_eq!(Some(r.norm), norm, "{name}");
            assert_eq!(Some(r.input_nc), usize_of(c, "input_nc"), "{name}");
            assert_eq!(Some(r.output_nc), usize_of(c, "output_nc"), "{name}");
            assert_eq!(Some(r.use_dropout), c["use_dropout"].as_bool(), "{name}");
        }
        Arch::Unet(u) => {
            assert_eq!(format!("unet_{}", 1 << u.num_downs), c["arch"], "{name}");
            assert_eq!(Some(u.ngf), usize_of(c, "ngf"), "{name}");
            assert_eq!(Some(u.norm), norm, "{name}");
        }
        Arch::Light(l) => {
            assert_eq!(c["arch"], "light", "{name}");
            assert_eq!(Some(l.ngf), usize_of(c, "ngf"), "{name}");
            assert_eq!(Some(l.n_blocks), usize_of(c, "n_blocks"), "{name}");
        }
        Arch::NLayer(d) => {
            assert!(c["arch"] == "basic" || c["arch"] == "n_layers", "{name}");
            assert_eq!(Some(d.ndf), usize_of(c, "ndf"), "{name}");
            assert_eq!(Some(d.norm), norm, "{name}");
            assert_eq!(Some(d.input_nc), usize_of(c, "input_nc"), "{name}");
            assert_eq!(Some(d.n_layers), usize_of(c, "n_layers"), "{name}");
        }
        Arch::Pixel(d) => {
            assert_eq!(c["arch"], "pixel", "{name}");
            assert_eq!(Some(d.ndf), usize_of(c, "ndf"), "{name}");
            assert_eq!(Some(d.norm), norm, "{name}");
        }
        Arch::BriefG(g) => {
            assert_eq!(c["arch"], "brief_G", "{name}");
            assert_eq!(Some(g.width), usize_of(c, "width"), "{name}");
        }
        Arch::BriefD(d) => {
            assert_eq!(c["arch"], "brief_D", "{name}");
            assert_eq!(Some(d.width), usize_of(c, "width"), "{name}");
            assert_eq!(Some(d.size), usize_of(c, "size"), "{name}");
        }
        Arch::Dcgan64G(_) => assert_eq!(c["arch"], "dcgan64_G", "{name}"),
        Arch::Dcgan64D(_) => assert_eq!(c["arch"], "dcgan64_D", "{name}"),
    }
}

fn check_case(c: &Value, weights: &Path) -> Vec<String> {
    let name = c["case"].as_str().unwrap();
    let dev = Device::Cpu;
    let mut io =
        candle_core::safetensors::load(golden_dir().join(format!("{name}.io.safetensors")), &dev)
            .expect("io file");
    // Large inputs are shared between cases to keep the golden files small.
    if let Some(other) = c.get("input_from").and_then(Value::as_str) {
        let src = candle_core::safetensors::load(
            golden_dir().join(format!("{other}.io.safetensors")),
            &dev,
        )
        .expect("shared input");
        io.insert("input".into(), src["input"].clone());
    }

    // Architecture from the weights alone, as `atelier models import` without flags.
    let inferred = import(weights, &ImportHints::default())
        .unwrap_or_else(|e| panic!("{name}: import without flags: {e}"));
    check_inferred(c, &inferred.arch);

    // And with the reference's flags.
    let imported = import(weights, &hints_for(c)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let net = atelier_nets::Network::from_tensors(imported.arch, &imported.tensors, &dev)
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    let mut report = Vec::new();
    let out = net.forward(&io["input"], &mut Ctx::eval()).unwrap();
    let err = max_abs(&out, &io["output"]);
    report.push(format!(
        "{name} ({}): eval max abs err {err:.2e}",
        weights.display()
    ));
    assert!(err <= TOL, "{name}: eval output differs by {err}");

    // The same network on Atelier's own kernels (every ISA this CPU has is covered by the
    // kernels' own tests; this checks the wiring against PyTorch), f32 and bf16.
    for precision in [atelier_nets::Precision::F32, atelier_nets::Precision::Bf16] {
        if let Some(fast) = atelier_nets::Compiled::new(&net, precision).unwrap() {
            let out = fast.forward(&io["input"], &mut Ctx::eval()).unwrap();
            let err = max_abs(&out, &io["output"]);
            report.push(format!(
                "{name}: kernels {precision:?} max abs err {err:.2e}"
            ));
            // bf16 rounds inputs and weights to 8 bits of mantissa: a looser bound.
            let tol = if precision == atelier_nets::Precision::F32 {
                TOL
            } else {
                0.1
            };
            assert!(
                err <= tol,
                "{name}: kernels {precision:?} output differs by {err}"
            );
        }
    }

    if let Some(expected) = io.get("output_batchstats") {
        let mut ctx = Ctx::eval();
        ctx.batch_stats = true;
        let out = net.forward(&io["input"], &mut ctx).unwrap();
        let err = max_abs(&out, expected);
        report.push(format!("{name}: batch-stats max abs err {err:.2e}"));
        assert!(
            err <= TOL,
            "{name}: batch-statistics output differs by {err}"
        );
    }
    report
}

#[test]
fn golden_outputs_match_pytorch() {
    let cases = manifest();
    assert!(cases.len() >= 20, "manifest lists too few cases");
    let mut report = Vec::new();
    for c in &cases {
        let name = c["case"].as_str().unwrap();
        report.extend(check_case(c, &golden_dir().join(format!("{name}.pth"))));
        if c["safetensors"].as_bool() == Some(true) {
            report.extend(check_case(
                c,
                &golden_dir().join(format!("{name}.safetensors")),
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// The `--netG` / `--netD` values of pytorch-CycleGAN-and-pix2pix that the importer supports.
const FAMILIES: [&str; 7] = [
    "resnet_6blocks",
    "resnet_9blocks",
    "unet_128",
    "unet_256",
    "basic",
    "n_layers",
    "pixel",
];

#[test]
fn every_reference_family_is_covered() {
    let cases = manifest();
    let has = |arch: &str, norm: &str| {
        cases
            .iter()
            .any(|c| c["arch"] == arch && c.get("norm").and_then(Value::as_str) == Some(norm))
    };
    for arch in FAMILIES {
        for norm in ["instance", "batch"] {
            assert!(
                has(arch, norm),
                "no golden case for {arch} with {norm} norm"
            );
        }
    }
    for arch in FAMILIES {
        let mut widths: Vec<u64> = cases
            .iter()
            .filter(|c| c["arch"] == arch)
            .filter_map(|c| c.get("ngf").or(c.get("ndf")).and_then(Value::as_u64))
            .collect();
        widths.sort();
        widths.dedup();
        assert!(
            widths.len() >= 2,
            "{arch}: golden cases cover only widths {widths:?}"
        );
    }
}
