//! Model cards: the JSON document stored in every Atelier model file's safetensors metadata.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Arch;

/// Version tag of the model-file format.
pub const FORMAT: &str = "atelier-model/1";
/// The safetensors metadata key that holds the card.
pub const CARD_KEY: &str = "atelier.card";

/// Everything a person or program needs to know about a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Always [`FORMAT`].
    pub format: String,
    /// Short identifier, e.g. `monet`.
    pub name: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Architecture and hyper-parameters.
    pub arch: Arch,
    /// How inputs are expected.
    #[serde(default)]
    pub input: InputSpec,
    /// Inference options the model was meant to run with.
    #[serde(default)]
    pub inference: InferenceSpec,
    /// Where the weights come from.
    #[serde(default)]
    pub provenance: Provenance,
    /// Training data and its licence.
    #[serde(default)]
    pub data: DataInfo,
    /// Licence of the weights themselves.
    #[serde(default)]
    pub license: String,
    /// Named quality metrics (e.g. `kid_x100`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Free-form notes (e.g. what the importer inferred).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Input conventions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Side length the model was trained at (a hint for tiling), if known.
    pub train_size: Option<u32>,
    /// Value range of inputs and outputs; Atelier uses the reference's `[-1, 1]`.
    pub range: String,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            train_size: None,
            range: "[-1, 1] (x/255*2-1)".into(),
        }
    }
}

/// Inference options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceSpec {
    /// Batch norm uses the statistics of the input instead of the running averages (the
    /// reference's `test.py` without `--eval`, as pix2pix recommends).
    #[serde(default)]
    pub batch_stats: bool,
}

/// Where the weights come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// e.g. `imported from pytorch-CycleGAN-and-pix2pix checkpoint` or `atelier train`.
    pub source: String,
    /// Original file name and its sha256, when imported.
    #[serde(default)]
    pub original_file: Option<String>,
    #[serde(default)]
    pub original_sha256: Option<String>,
    /// Training steps, if known.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Hardware used for training, if known.
    #[serde(default)]
    pub hardware: Option<String>,
    /// Creation time (RFC 3339 or Unix seconds as text).
    #[serde(default)]
    pub created: String,
    /// Tool and version that wrote the file.
    #[serde(default)]
    pub written_by: String,
}

/// Training data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    pub description: String,
    pub licence: String,
}

impl ModelCard {
    /// A card with defaults for everything but the name and architecture.
    pub fn new(name: impl Into<String>, arch: Arch) -> Self {
        Self {
            format: FORMAT.into(),
            name: name.into(),
            description: String::new(),
            arch,
            input: InputSpec::default(),
            inference: InferenceSpec::default(),
            provenance: Provenance {
                written_by: format!("atelier {}", env!("CARGO_PKG_VERSION")),
                ..Provenance::default()
            },
            data: DataInfo::default(),
            license: String::new(),
            metrics: BTreeMap::new(),
            notes: Vec::new(),
        }
    }
}
