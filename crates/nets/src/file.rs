//! Model files: one safetensors file per model, with the [`ModelCard`] as JSON in the metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use crate::card::{ModelCard, CARD_KEY, FORMAT};
use crate::{Error, Network, Result};

/// Largest model file read into memory (guards against a hostile header).
pub const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Storage precision of a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
}

/// A loaded model: its card and the built network.
#[derive(Debug, Clone)]
pub struct Model {
    pub card: ModelCard,
    pub net: Network,
}

/// Named tensors and the safetensors metadata of a file.
pub type TensorsAndMeta = (HashMap<String, Tensor>, Option<HashMap<String, String>>);

/// Reads a safetensors file into named tensors and its metadata. Fails cleanly on anything
/// that is not a complete safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorsAndMeta> {
    let bad = |reason: String| Error::BadFile {
        path: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_MODEL_BYTES {
        return Err(bad(format!(
            "{len} bytes is over the {MAX_MODEL_BYTES}-byte limit"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(&bytes).map_err(bad)
}

/// Parses safetensors bytes (see [`read_safetensors`]).
pub fn parse_safetensors(bytes: &[u8]) -> std::result::Result<TensorsAndMeta, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() < 8 {
        return Err("the file is too short to be safetensors".into());
    }
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("{e}"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("{e}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F64 => DType::F64,
            StDtype::I64 => DType::I64,
            StDtype::U8 => DType::U8,
            StDtype::U32 => DType::U32,
            other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone()))
}

/// Reads the model card of a model file.
pub fn card_from_metadata(
    path: &Path,
    meta: Option<&HashMap<String, String>>,
) -> Result<ModelCard> {
    let bad = |reason: String| Error::BadCard {
        path: path.display().to_string(),
        reason,
    };
    let json = meta.and_then(|m| m.get(CARD_KEY)).ok_or_else(|| {
        bad(format!(
            "no `{CARD_KEY}` metadata: this is a plain safetensors file, not an Atelier model \
                 (use `atelier models import` for pytorch-CycleGAN-and-pix2pix state dicts)"
        ))
    })?;
    let card: ModelCard = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if card.format != FORMAT {
        return Err(bad(format!(
            "format `{}` is not supported (expected `{FORMAT}`)",
            card.format
        )));
    }
    Ok(card)
}

/// Loads a model file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Model> {
    let (tensors, meta) = read_safetensors(path)?;
    let card = card_from_metadata(path, meta.as_ref())?;
    let net = Network::from_tensors(card.arch, &tensors, device)?;
    Ok(Model { card, net })
}

/// Loads a model from the bytes of a model file; `label` names it in errors.
pub fn load_bytes(label: &str, bytes: &[u8], device: &Device) -> Result<Model> {
    let (tensors, meta) = parse_safetensors(bytes).map_err(|reason| Error::BadFile {
        path: label.to_string(),
        reason,
    })?;
    let card = card_from_metadata(Path::new(label), meta.as_ref())?;
    let net = Network::from_tensors(card.arch, &tensors, device)?;
    Ok(Model { card, net })
}

/// Reads only the card of a model file.
pub fn read_card(path: &Path) -> Result<ModelCard> {
    let (_, meta) = read_safetensors(path)?;
    card_from_metadata(path, meta.as_ref())
}

/// Writes a model file atomically (temporary file + rename). The tensors are checked against
/// the card's architecture first.
pub fn save(
    path: &Path,
    card: &ModelCard,
    tensors: &HashMap<String, Tensor>,
    storage: Storage,
) -> Result<()> {
    // Refuse to write a file that would not load.
    Network::from_tensors(card.arch, tensors, &Device::Cpu)?;
    let json = serde_json::to_string(card).map_err(|e| Error::BadCard {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let meta: HashMap<String, String> =
        [(CARD_KEY.to_string(), json), ("format".into(), "pt".into())].into();
    let data = encode_safetensors(tensors, storage, meta).map_err(|reason| Error::BadFile {
        path: path.display().to_string(),
        reason,
    })?;
    write_atomic(path, &data)
}

/// Serialises named tensors (sorted by name) with `metadata` into safetensors bytes. With
/// [`Storage::F16`] float weights are stored as f16, except batch-norm running statistics.
pub fn encode_safetensors(
    tensors: &HashMap<String, Tensor>,
    storage: Storage,
    metadata: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut buffers = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[*name];
        let e = |e: candle_core::Error| format!("`{name}`: {e}");
        let (t, dt) = match (storage, t.dtype()) {
            (Storage::F16, DType::F32 | DType::F16 | DType::BF16)
                if !name.ends_with("running_var") && !name.ends_with("running_mean") =>
            {
                (t.to_dtype(DType::F16).map_err(e)?, StDtype::F16)
            }
            _ => (t.to_dtype(DType::F32).map_err(e)?, StDtype::F32),
        };
        let flat = t.flatten_all().map_err(e)?;
        let bytes: Vec<u8> = match dt {
            StDtype::F16 => flat
                .to_vec1::<half::f16>()
                .map_err(e)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => flat
                .to_vec1::<f32>()
                .map_err(e)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        buffers.push((name.to_string(), dt, t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, dt, shape, b)| {
            TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<_, String>>()?;
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Names (file stems) of the model files (`*.safetensors`) in `dir`, sorted; empty when the
/// folder does not exist.
pub fn model_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .filter_map(|p| Some(p.file_stem()?.to_string_lossy().to_string()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The tensors of a built network's `VarMap`-free weights, for saving: re-reads them from the
/// given map.
pub fn tensors_of(map: &candle_nn::VarMap) -> Result<HashMap<String, Tensor>> {
    let data = map
        .data()
        .lock()
        .map_err(|_| Error::Arch("poisoned var map".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}
