//! Import of pytorch-CycleGAN-and-pix2pix checkpoints (`*_net_G.pth`, `*_net_D.pth`: a
//! `torch.save(state_dict)` zip archive, read here without Python) and of the same state dict
//! saved as `.safetensors`.
//!
//! The architecture comes from the reference's flags (`--netG`, `--netD`, `--ngf`, `--ndf`,
//! `--n_layers_D`, `--norm`, `--no_dropout`, `--input_nc`, `--output_nc`); whatever is not given
//! is inferred from the weight names and shapes, and every inference is reported.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::dcgan::{BriefDConfig, BriefGConfig, Dcgan64Config};
use crate::discriminators::{NLayerConfig, PixelConfig};
use crate::light::LightConfig;
use crate::resnet::{ResnetConfig, Upsampling};
use crate::unet::UnetConfig;
use crate::{Arch, Error, NormKind, Result};

/// Largest checkpoint accepted.
pub const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;

/// Architecture flags as in the reference's options; `None` means "infer".
#[derive(Debug, Clone, Default)]
pub struct ImportHints {
    /// `resnet_9blocks`, `resnet_6blocks`, `unet_128`, `unet_256`, `light` (or `resnet_<n>blocks`, and
    /// `resnet_<n>blocks_resize` for resize-convolution upsampling).
    pub net_g: Option<String>,
    /// `basic`, `n_layers`, `pixel`.
    pub net_d: Option<String>,
    pub ngf: Option<usize>,
    pub ndf: Option<usize>,
    pub n_layers_d: Option<usize>,
    pub norm: Option<NormKind>,
    /// The reference's `--no_dropout`.
    pub no_dropout: Option<bool>,
    pub input_nc: Option<usize>,
    pub output_nc: Option<usize>,
}

/// A checkpoint turned into an architecture and weights.
#[derive(Debug, Clone)]
pub struct Imported {
    pub arch: Arch,
    pub tensors: HashMap<String, Tensor>,
    /// Human-readable notes: what was inferred, what was dropped.
    pub notes: Vec<String>,
}

/// Reads a state dict from a `.pth` (zip) or `.safetensors` file, detected by content.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |reason: String| Error::BadCheckpoint {
        path: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len == 0 {
        return Err(bad("the file is empty".into()));
    }
    if len > MAX_CHECKPOINT_BYTES {
        return Err(bad(format!("{len} bytes is over the limit")));
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        read_pth(path).map_err(bad)
    } else if head.len() == 8 && u64::from_le_bytes(head.try_into().unwrap_or([0; 8])) < len {
        let (t, _) = crate::file::read_safetensors(path).map_err(|e| match e {
            Error::BadFile { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(t)
    } else if head.first() == Some(&0x80) {
        Err(bad(
            "this is the legacy (pre-1.6) torch.save format; load it in PyTorch and save it \
             again with torch>=1.6 (zip format) or as .safetensors"
                .into(),
        ))
    } else {
        Err(bad(
            "neither a PyTorch zip checkpoint nor safetensors".into()
        ))
    }
}

/// Opens a zip archive. PyTorch writes plain archives that start at offset 0; the `zip`
/// crate's automatic offset detection mis-reads some of them ("Invalid Central Directory
/// header"), so offset 0 is tried first.
fn open_zip(
    path: &Path,
) -> std::result::Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>, String> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| e.to_string())
    };
    let known = zip::read::Config {
        archive_offset: zip::read::ArchiveOffset::Known(0),
    };
    match zip::ZipArchive::with_config(known, open()?) {
        Ok(z) => Ok(z),
        Err(_) => {
            zip::ZipArchive::new(open()?).map_err(|e| format!("not a valid zip archive: {e}"))
        }
    }
}

/// Reads the tensor descriptions of the `*/data.pkl` state dict (the pickle is parsed with
/// candle's reader; tensor storages are read afterwards, with their sizes checked).
fn pth_tensor_infos(
    zip: &mut zip::ZipArchive<std::io::BufReader<std::fs::File>>,
) -> std::result::Result<Vec<candle_core::pickle::TensorInfo>, String> {
    use candle_core::pickle::{Object, Stack};
    let pkl: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    let Some(pkl) = pkl.first() else {
        return Err("no data.pkl in the archive (not a torch.save file)".into());
    };
    let dir = std::path::PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(pkl));
    let entry = zip.by_name(pkl).map_err(|e| e.to_string())?;
    const MAX_PICKLE: u64 = 64 << 20;
    if entry.size() > MAX_PICKLE {
        return Err("data.pkl is implausibly large".into());
    }
    // Read it whole (bounded: the header's size is the sender's word), check it, then parse.
    let mut bytes = Vec::new();
    entry
        .take(MAX_PICKLE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("data.pkl: {e}"))?;
    if bytes.len() as u64 > MAX_PICKLE {
        return Err("data.pkl is implausibly large".into());
    }
    crate::pickle_guard::check(&bytes).map_err(|e| format!("pickle: {e}"))?;
    let mut reader = std::io::Cursor::new(bytes);
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut reader)
        .map_err(|e| format!("pickle: {}", candle_one_line(&e)))?;
    let obj = stack
        .finalize()
        .map_err(|e| format!("pickle: {}", candle_one_line(&e)))?;
    check_globals(&obj)?;
    let Object::Dict(items) = obj else {
        return Err(
            "the pickle is not a state_dict (expected a dict of tensors; save \
                    `net.state_dict()`, not the module)"
                .into(),
        );
    };
    let mut infos = Vec::new();
    for (name, value) in items {
        match value.into_tensor_info(name, &dir) {
            Ok(Some(info)) => infos.push(info),
            Ok(None) => {}
            Err(e) => return Err(format!("pickle: {}", candle_one_line(&e))),
        }
    }
    Ok(infos)
}

/// The only globals (classes and functions) a state dict's pickle may name: dicts, tensor
/// rebuilding and storage types. The pickle reader never calls them (it only builds a tree of
/// values), and anything else (`os.system`, `builtins.eval`, a model class) is refused before
/// any tensor is read.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Refuses a pickle that names a global outside [`ALLOWED_GLOBALS`].
fn check_globals(obj: &candle_core::pickle::Object) -> std::result::Result<(), String> {
    use candle_core::pickle::Object;
    let mut todo = vec![obj];
    while let Some(o) = todo.pop() {
        match o {
            Object::Class {
                module_name,
                class_name,
            } if !ALLOWED_GLOBALS
                .iter()
                .any(|(m, c)| m == module_name && c == class_name) =>
            {
                return Err(format!(
                    "the pickle names `{}.{}`, which a state dict does not need; refused \
                     (only tensors, storages and dicts are read)",
                    module_name.chars().take(80).collect::<String>(),
                    class_name.chars().take(80).collect::<String>()
                ));
            }
            Object::Tuple(v) | Object::List(v) => todo.extend(v.iter()),
            Object::Dict(kv) => {
                for (k, v) in kv {
                    todo.push(k);
                    todo.push(v);
                }
            }
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.push(callable);
                todo.push(args);
            }
            Object::PersistentLoad(x) => todo.push(x),
            _ => {}
        }
    }
    Ok(())
}

/// A candle error as one line: candle appends a multi-line backtrace to its errors when
/// `RUST_BACKTRACE` is set, and some variants span several lines; error messages here are
/// shown to users on one line.
fn candle_one_line(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_one_line(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_one_line(inner))
        }
        other => other
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Largest single tensor a checkpoint may hold (the largest architecture's widest layer is far
/// smaller; `MAX_PARAMETERS` bounds the whole model).
const MAX_TENSOR_BYTES: usize = 1 << 30;

fn read_pth(path: &Path) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut zip = open_zip(path)?;
    // The pickle reader is third-party code fed with untrusted bytes: contain any panic.
    let infos =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pth_tensor_infos(&mut zip)))
            .map_err(|_| "the pickled state dict is malformed".to_string())??;
    if infos.is_empty() {
        return Err("no tensors found (is this a state_dict?)".into());
    }
    let mut out = HashMap::new();
    for info in infos {
        let layout = &info.layout;
        if !layout.is_contiguous() {
            return Err(format!("tensor `{}` is not contiguous", info.name));
        }
        let elem = info.dtype.size_in_bytes();
        let count = layout.shape().elem_count();
        let start = layout.start_offset();
        let mut entry = zip
            .by_name(&info.path)
            .map_err(|e| format!("tensor `{}`: storage {}: {e}", info.name, info.path))?;
        let need = (start + count)
            .checked_mul(elem)
            .ok_or_else(|| format!("tensor `{}` is too large", info.name))?;
        // The zip header's size is the sender's word: bound what is allocated from it.
        if need > MAX_TENSOR_BYTES {
            return Err(format!(
                "tensor `{}` would take {need} bytes (at most {MAX_TENSOR_BYTES})",
                info.name
            ));
        }
        if (entry.size() as usize) < need {
            return Err(format!(
                "tensor `{}` needs {need} bytes but its storage holds {} (truncated file?)",
                info.name,
                entry.size()
            ));
        }
        let mut skip = vec![0u8; start * elem];
        entry.read_exact(&mut skip).map_err(|e| e.to_string())?;
        let mut data = vec![0u8; count * elem];
        entry
            .read_exact(&mut data)
            .map_err(|e| format!("tensor `{}`: {e}", info.name))?;
        let t = Tensor::from_raw_buffer(&data, info.dtype, layout.dims(), &Device::Cpu)
            .map_err(|e| format!("tensor `{}`: {}", info.name, candle_one_line(&e)))?;
        out.insert(info.name, t);
    }
    Ok(out)
}

/// Cleans a state dict: strips `module.` prefixes (DataParallel), drops batch-norm step
/// counters and the running statistics that pre-0.4 PyTorch stored for instance norm (the
/// reference's `__patch_instance_norm_state_dict` does the same).
fn normalise(sd: HashMap<String, Tensor>, notes: &mut Vec<String>) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut stripped = false;
    let mut dropped = 0;
    for (k, v) in sd {
        let k = match k.strip_prefix("module.") {
            Some(s) => {
                stripped = true;
                s.to_string()
            }
            None => k,
        };
        if k.ends_with("num_batches_tracked") {
            dropped += 1;
            continue;
        }
        out.insert(k, v);
    }
    if stripped {
        notes.push("stripped the `module.` prefix (DataParallel checkpoint)".into());
    }
    if dropped > 0 {
        notes.push(format!("ignored {dropped} num_batches_tracked counter(s)"));
    }
    out
}

fn dims(sd: &HashMap<String, Tensor>, key: &str) -> Option<Vec<usize>> {
    sd.get(key).map(|t| t.dims().to_vec())
}

fn infer_norm(
    sd: &HashMap<String, Tensor>,
    bias_key: &str,
    hint: Option<NormKind>,
    notes: &mut Vec<String>,
) -> NormKind {
    if let Some(n) = hint {
        return n;
    }
    let has_bn = sd.keys().any(|k| k.ends_with("running_mean"));
    let has_bias = sd.contains_key(bias_key);
    let n = if has_bias {
        NormKind::Instance
    } else if has_bn {
        NormKind::Batch
    } else {
        NormKind::None
    };
    notes.push(format!(
        "inferred --norm {n} ({})",
        match n {
            NormKind::Instance => "convolutions have biases, no affine norm weights",
            NormKind::Batch => "batch-norm running statistics present",
            NormKind::None => "no norm weights and no conv biases",
        }
    ));
    n
}

fn unet_path(depth: usize) -> String {
    let mut p = String::from("model");
    for d in 0..depth {
        p.push_str(if d == 0 { ".model.1" } else { ".model.3" });
    }
    p
}

fn need(v: Option<Vec<usize>>, key: &str) -> Result<Vec<usize>> {
    v.ok_or_else(|| Error::Arch(format!("cannot infer the architecture: no `{key}` weight")))
}

/// Determines the architecture of a state dict from hints and weight shapes.
pub fn infer_arch(
    sd: &HashMap<String, Tensor>,
    hints: &ImportHints,
    notes: &mut Vec<String>,
) -> Result<Arch> {
    let family: String = if let Some(g) = &hints.net_g {
        g.clone()
    } else if let Some(d) = &hints.net_d {
        d.clone()
    } else if sd.contains_key("model.model.0.weight") {
        "unet".into()
    } else if sd.contains_key("stem.weight") {
        "light".into()
    } else if sd.keys().any(|k| k.contains(".conv_block.")) {
        "resnet".into()
    } else if sd.contains_key("net.0.weight") {
        "pixel".into()
    } else if sd.contains_key("model.0.weight") {
        "n_layers".into()
    } else if sd.contains_key("bn0.weight") && sd.contains_key("fc.weight") {
        "dcgan_brief_G".into()
    } else if sd.contains_key("conv1.weight") && sd.contains_key("fc.weight") {
        "dcgan_brief_D".into()
    } else if sd.contains_key("main.1.weight") {
        "dcgan64_G".into()
    } else if sd.contains_key("main.0.weight") {
        "dcgan64_D".into()
    } else {
        let mut keys: Vec<&String> = sd.keys().collect();
        keys.sort();
        return Err(Error::Arch(format!(
            "no known architecture has weights named like {:?}",
            keys.iter().take(3).collect::<Vec<_>>()
        )));
    };
    let inferred = hints.net_g.is_none() && hints.net_d.is_none();
    let arch = if family.starts_with("resnet") {
        let first = need(dims(sd, "model.1.weight"), "model.1.weight")?;
        let named = ResnetConfig::parse_name(&family);
        if named.is_none() && family != "resnet" {
            return Err(Error::Arch(format!("unknown --netG {family}")));
        }
        let n_blocks = match named {
            Some((n, _)) => n,
            None => {
                let mut idx: Vec<usize> = sd
                    .keys()
                    .filter_map(|k| k.strip_prefix("model."))
                    .filter(|k| k.contains(".conv_block."))
                    .filter_map(|k| k.split('.').next()?.parse().ok())
                    .collect();
                idx.sort();
                idx.dedup();
                idx.len()
            }
        };
        let ngf = hints.ngf.unwrap_or(first[0]);
        let norm = infer_norm(sd, "model.1.bias", hints.norm, notes);
        let use_dropout = match hints.no_dropout {
            Some(nd) => !nd,
            None => {
                // The second conv sits at index 6 after a dropout layer, 5 without.
                let d = sd
                    .iter()
                    .any(|(k, t)| k.ends_with(".conv_block.6.weight") && t.rank() == 4);
                notes.push(format!(
                    "inferred use_dropout={d} from the residual block layout"
                ));
                d
            }
        };
        // The first upsampling conv: `model.{10+n}` for ConvTranspose, `model.{12+n}` after
        // Upsample and ReflectionPad for resize-convolution.
        let upsampling = match named {
            Some((_, u)) => u,
            None => {
                let transposed = sd.contains_key(&format!("model.{}.weight", 10 + n_blocks));
                let resize = sd.contains_key(&format!("model.{}.weight", 12 + n_blocks));
                if resize && !transposed {
                    notes.push("inferred resize-convolution upsampling from the layout".into());
                    Upsampling::Resize
                } else {
                    Upsampling::Transposed
                }
            }
        };
        let head = format!("model.{}.weight", 11 + n_blocks + 2 * upsampling.modules());
        let output_nc = hints
            .output_nc
            .or_else(|| dims(sd, &head).map(|d| d[0]))
            .unwrap_or(3);
        Arch::Resnet(ResnetConfig {
            input_nc: hints.input_nc.unwrap_or(first[1]),
            output_nc,
            ngf,
            n_blocks,
            norm,
            use_dropout,
            upsampling,
        })
    } else if family.starts_with("unet") {
        let first = need(dims(sd, "model.model.0.weight"), "model.model.0.weight")?;
        let num_downs = match family.as_str() {
            "unet_128" => 7,
            "unet_256" => 8,
            _ => {
                let deepest = (1..32)
                    .take_while(|d| sd.contains_key(&format!("{}.model.1.weight", unet_path(*d))))
                    .last()
                    .ok_or_else(|| Error::Arch("U-Net without inner blocks".into()))?;
                deepest + 1
            }
        };
        let norm = infer_norm(sd, "model.model.0.bias", hints.norm, notes);
        let use_dropout = match hints.no_dropout {
            Some(nd) => !nd,
            None => {
                notes.push(
                    "dropout cannot be seen in U-Net weights: assumed on (the reference's \
                     default without --no_dropout); it only matters for training"
                        .into(),
                );
                true
            }
        };
        let output_nc = hints
            .output_nc
            .or_else(|| dims(sd, "model.model.3.weight").map(|d| d[1]))
            .unwrap_or(3);
        Arch::Unet(UnetConfig {
            input_nc: hints.input_nc.unwrap_or(first[1]),
            output_nc,
            ngf: hints.ngf.unwrap_or(first[0]),
            num_downs,
            norm,
            use_dropout,
        })
    } else if family.starts_with("light") {
        let stem = need(dims(sd, "stem.weight"), "stem.weight")?;
        let n_blocks = (0..)
            .take_while(|i| sd.contains_key(&format!("blocks.{i}.dw1.weight")))
            .count();
        let head = need(dims(sd, "head.weight"), "head.weight")?;
        Arch::Light(LightConfig {
            input_nc: hints.input_nc.unwrap_or(stem[1]),
            output_nc: hints.output_nc.unwrap_or(head[0]),
            ngf: hints.ngf.unwrap_or(stem[0]),
            n_blocks,
        })
    } else if family == "basic" || family == "n_layers" {
        let first = need(dims(sd, "model.0.weight"), "model.0.weight")?;
        let n_layers = match (family.as_str(), hints.n_layers_d) {
            (_, Some(n)) => n,
            ("basic", None) => 3,
            _ => {
                let convs = sd
                    .iter()
                    .filter(|(k, t)| {
                        k.starts_with("model.") && k.ends_with(".weight") && t.rank() == 4
                    })
                    .count();
                convs.saturating_sub(2)
            }
        };
        let norm = infer_norm(sd, "model.2.bias", hints.norm, notes);
        Arch::NLayer(NLayerConfig {
            input_nc: hints.input_nc.unwrap_or(first[1]),
            ndf: hints.ndf.unwrap_or(first[0]),
            n_layers,
            norm,
        })
    } else if family == "pixel" {
        let first = need(dims(sd, "net.0.weight"), "net.0.weight")?;
        let norm = infer_norm(sd, "net.2.bias", hints.norm, notes);
        Arch::Pixel(PixelConfig {
            input_nc: hints.input_nc.unwrap_or(first[1]),
            ndf: hints.ndf.unwrap_or(first[0]),
            norm,
        })
    } else if family == "dcgan_brief_G" {
        let fc = need(dims(sd, "fc.weight"), "fc.weight")?;
        let up3 = need(dims(sd, "up3.weight"), "up3.weight")?;
        Arch::BriefG(BriefGConfig {
            nz: fc[1],
            channels: up3[1],
            width: up3[0],
        })
    } else if family == "dcgan_brief_D" {
        let c1 = need(dims(sd, "conv1.weight"), "conv1.weight")?;
        let fc = need(dims(sd, "fc.weight"), "fc.weight")?;
        let width = c1[0];
        let q = ((fc[1] / (2 * width).max(1)) as f64).sqrt().round() as usize;
        Arch::BriefD(BriefDConfig {
            channels: c1[1],
            size: q * 4,
            width,
        })
    } else if family == "dcgan64_G" {
        let m0 = need(dims(sd, "main.0.weight"), "main.0.weight")?;
        let last = need(dims(sd, "main.12.weight"), "main.12.weight")?;
        Arch::Dcgan64G(Dcgan64Config {
            nz: m0[0],
            width: m0[1] / 8,
            nc: last[1],
        })
    } else if family == "dcgan64_D" {
        let m0 = need(dims(sd, "main.0.weight"), "main.0.weight")?;
        Arch::Dcgan64D(Dcgan64Config {
            nz: 100,
            width: m0[0],
            nc: m0[1],
        })
    } else {
        return Err(Error::Arch(format!(
            "unknown architecture `{family}` (known: resnet_9blocks, resnet_6blocks, unet_128, \
             unet_256, light, basic, n_layers, pixel, dcgan_brief_G, dcgan_brief_D, dcgan64_G, \
             dcgan64_D)"
        )));
    };
    if inferred {
        notes.insert(
            0,
            format!(
                "inferred the architecture {} from the weight names",
                arch.name()
            ),
        );
    }
    Ok(arch)
}

/// Imports a checkpoint: reads it, determines the architecture and checks that every weight
/// fits (the error names the first weight that does not).
pub fn import(path: &Path, hints: &ImportHints) -> Result<Imported> {
    let mut notes = Vec::new();
    let sd = normalise(read_state_dict(path)?, &mut notes);
    let arch = infer_arch(&sd, hints, &mut notes)?;
    let mut sd = sd;
    // Old (pre-0.4) checkpoints carry running stats for instance norm layers: drop them.
    if arch_norm(&arch) == Some(NormKind::Instance) {
        let before = sd.len();
        sd.retain(|k, _| !(k.ends_with("running_mean") || k.ends_with("running_var")));
        if sd.len() != before {
            notes.push(format!(
                "dropped {} instance-norm running statistic(s) of an old checkpoint",
                before - sd.len()
            ));
        }
    }
    let sd: HashMap<String, Tensor> = sd
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    crate::Network::from_tensors(arch, &sd, &Device::Cpu)?;
    Ok(Imported {
        arch,
        tensors: sd,
        notes,
    })
}

fn arch_norm(arch: &Arch) -> Option<NormKind> {
    match arch {
        Arch::Resnet(c) => Some(c.norm),
        Arch::Unet(c) => Some(c.norm),
        Arch::NLayer(c) => Some(c.norm),
        Arch::Pixel(c) => Some(c.norm),
        _ => None,
    }
}
