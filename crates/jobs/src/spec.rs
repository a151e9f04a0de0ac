//! What a job is asked to do: the JSON a client posts to `POST /v1/jobs`, checked here so the
//! server rejects bad requests before queueing and the worker reads the same types back.

use serde::{Deserialize, Serialize};

use atelier_imaging::Format;

use crate::JobsError;

/// A job request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
// Parsed once per request and stored as JSON: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum JobSpec {
    Stylize(StylizeSpec),
    Train(TrainSpec),
}

/// Stylize uploaded images at full resolution (tiled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StylizeSpec {
    pub model: String,
    /// `jpg`, `png` or `webp`; default: each input's own format.
    #[serde(default)]
    pub format: Option<String>,
    /// 0 = the original, 1 = fully stylized.
    #[serde(default = "one")]
    pub strength: f32,
    /// Downscale so the longer side is at most this (capped by the server's limit).
    #[serde(default)]
    pub max_side: Option<u32>,
    /// JPEG quality.
    #[serde(default = "quality")]
    pub quality: u8,
    /// Number of input images (set by the server from the upload).
    #[serde(default)]
    pub inputs: usize,
}

fn one() -> f32 {
    1.0
}
fn quality() -> u8 {
    92
}

/// Train a new style on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Dataset id (`d_…`), owned by the caller.
    pub dataset: String,
    /// Name of the model it makes (the caller's private model).
    pub name: String,
    /// `fastcut`, `cut`, `cyclegan`, `pix2pix` or `dcgan`; see [`TrainSpec::family`] for the
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Start from this style's generator (a built-in or one of the caller's models) instead
    /// of random weights: a new style is recognisable in far fewer steps. Absent: the
    /// built-in [`DEFAULT_INIT`] for the unpaired families; `null`: random weights. The
    /// generator's architecture is then the model's (`net_g` and `ngf` must be absent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub init_from: Option<Option<String>>,
    /// Optimisation steps.
    #[serde(default = "steps")]
    pub steps: u64,
    /// Training crop size (default 128; DCGAN 64).
    #[serde(default)]
    pub size: Option<u32>,
    /// Generator: `light`, `resnet_6blocks`, `resnet_9blocks`, `resnet_6blocks_resize`
    /// (resize-convolution upsampling), `unet`, … (default: the `init_from` model's; else
    /// light for CycleGAN, resnet_6blocks_resize for CUT/FastCUT, unet for pix2pix).
    #[serde(default)]
    pub net_g: Option<String>,
    #[serde(default)]
    pub ngf: Option<usize>,
    #[serde(default)]
    pub ndf: Option<usize>,
    #[serde(default)]
    pub batch: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    /// `vanilla`, `lsgan` or `hinge`.
    #[serde(default)]
    pub loss: Option<String>,
    /// A sample grid every this many steps (default 100).
    #[serde(default)]
    pub sample_every: Option<u64>,
    /// A checkpoint every this many steps (default 200; also every 5 minutes).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    #[serde(default)]
    pub seed: u64,
    /// Description shown on the model page.
    #[serde(default)]
    pub description: String,
}

/// The style a new unpaired style starts from unless the request says otherwise.
pub const DEFAULT_INIT: &str = "monet";

/// The families a request may ask for.
pub const FAMILIES: [&str; 5] = ["fastcut", "cut", "cyclegan", "pix2pix", "dcgan"];

/// `Some(value)` for a present field, `null` included (so that absent and `null` differ).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}
fn steps() -> u64 {
    2000
}

/// Longest training run a request may ask for.
pub const MAX_STEPS: u64 = 1_000_000;

/// Is `name` usable as a model name (also a file and URL segment)?
pub fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn bad(m: impl Into<String>) -> JobsError {
    JobsError::BadRequest(m.into())
}

impl StylizeSpec {
    /// Checks the fields (not the model's existence).
    pub fn validate(&self) -> Result<(), JobsError> {
        if !(0.0..=1.0).contains(&self.strength) {
            return Err(bad("strength must be between 0 and 1"));
        }
        if !(1..=100).contains(&self.quality) {
            return Err(bad("quality must be between 1 and 100"));
        }
        self.output_format(Format::Png)?;
        if self.max_side == Some(0) {
            return Err(bad("max_side must be positive"));
        }
        Ok(())
    }

    /// The output format for an input of format `input`.
    pub fn output_format(&self, input: Format) -> Result<Format, JobsError> {
        match self.format.as_deref() {
            None => Ok(input),
            Some(f) => Format::from_extension(f)
                .ok_or_else(|| bad(format!("format `{f}`: expected jpg, png or webp"))),
        }
    }
}

impl TrainSpec {
    /// The family: as asked, else `fastcut`, or `cyclegan` when the request names a generator
    /// FastCUT cannot use (e.g. `light`, as requests before FastCUT did).
    pub fn family(&self) -> &str {
        match (&self.family, &self.net_g) {
            (Some(f), _) => f,
            (None, Some(g)) if !g.starts_with("resnet_") => "cyclegan",
            (None, _) => "fastcut",
        }
    }

    /// Whether the family trains on two unpaired domains.
    pub fn unpaired(&self) -> bool {
        matches!(self.family(), "cyclegan" | "cut" | "fastcut")
    }

    /// The model the run starts from: `init_from`, or by default [`DEFAULT_INIT`] for the
    /// unpaired families when no generator is asked for.
    pub fn init_model(&self) -> Option<&str> {
        match &self.init_from {
            Some(m) => m.as_deref(),
            None if self.unpaired() && self.net_g.is_none() && self.ngf.is_none() => {
                Some(DEFAULT_INIT)
            }
            None => None,
        }
    }

    /// Checks the fields that do not need the dataset.
    pub fn validate(&self) -> Result<(), JobsError> {
        if !valid_model_name(&self.name) {
            return Err(bad(
                "name: 1–64 letters, digits, `-` or `_`, starting with a letter or digit",
            ));
        }
        if !FAMILIES.contains(&self.family()) {
            return Err(bad(format!(
                "family `{}`: expected {}",
                self.family(),
                FAMILIES.join(", ")
            )));
        }
        if matches!(self.family(), "cut" | "fastcut") {
            if let Some(g) = self.net_g.as_deref().filter(|g| !g.starts_with("resnet_")) {
                return Err(bad(format!(
                    "net_g `{g}`: {} compares a resnet_<N>blocks generator's encoder features",
                    self.family()
                )));
            }
        }
        if let Some(m) = self.init_model() {
            if self.family() == "dcgan" {
                return Err(bad(
                    "init_from: DCGAN generators start from noise, not a style",
                ));
            }
            if !valid_model_name(m) {
                return Err(bad(format!("init_from `{m}`: not a model name")));
            }
            if self.init_from.is_some() && (self.net_g.is_some() || self.ngf.is_some()) {
                return Err(bad(
                    "init_from takes the generator of that model: leave net_g and ngf out (or set init_from to null)",
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(bad(format!("steps must be in 1..={MAX_STEPS}")));
        }
        if let Some(s) = self.size {
            // 32: the smallest the 70×70 PatchGAN's five 4×4 convolutions can look at.
            if !(32..=512).contains(&s) {
                return Err(bad("size must be in 32..=512"));
            }
        }
        if let Some(b) = self.batch {
            if !(1..=64).contains(&b) {
                return Err(bad("batch must be in 1..=64"));
            }
        }
        for (what, v) in [("ngf", self.ngf), ("ndf", self.ndf)] {
            if let Some(v) = v {
                if !(1..=256).contains(&v) {
                    return Err(bad(format!("{what} must be in 1..=256")));
                }
            }
        }
        if let Some(lr) = self.lr {
            if !(lr > 0.0 && lr < 1.0) {
                return Err(bad("lr must be in (0, 1)"));
            }
        }
        if let Some(l) = &self.loss {
            if atelier_train::GanLoss::parse(l).is_none() {
                return Err(bad(format!("loss `{l}`: expected vanilla, lsgan or hinge")));
            }
        }
        if self.sample_every == Some(0) || self.checkpoint_every == Some(0) {
            return Err(bad("sample_every and checkpoint_every must be positive"));
        }
        if self.description.len() > 2000 {
            return Err(bad("description: at most 2000 characters"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s: JobSpec =
            serde_json::from_str(r#"{"type":"train","dataset":"d_1","name":"my-style"}"#).unwrap();
        let JobSpec::Train(t) = s else { panic!() };
        assert_eq!((t.family(), t.steps), ("fastcut", 2000));
        let light: TrainSpec =
            serde_json::from_str(r#"{"dataset":"d","name":"x","net_g":"light"}"#).unwrap();
        assert_eq!(light.family(), "cyclegan");
        assert_eq!(t.init_model(), Some(DEFAULT_INIT));
        t.validate().unwrap();
        // null: random weights; a generator of one's own: no default init.
        for (json, init) in [
            (
                r#"{"type":"train","dataset":"d","name":"x","init_from":null}"#,
                None,
            ),
            (
                r#"{"type":"train","dataset":"d","name":"x","net_g":"resnet_9blocks"}"#,
                None,
            ),
            // A generator FastCUT cannot use: CycleGAN, as before FastCUT existed.
            (
                r#"{"type":"train","dataset":"d","name":"x","net_g":"light"}"#,
                None,
            ),
            (
                r#"{"type":"train","dataset":"d","name":"x","family":"pix2pix"}"#,
                None,
            ),
            (
                r#"{"type":"train","dataset":"d","name":"x","init_from":"vangogh"}"#,
                Some("vangogh"),
            ),
        ] {
            let JobSpec::Train(t) = serde_json::from_str(json).unwrap() else {
                panic!()
            };
            assert_eq!(t.init_model(), init, "{json}");
            t.validate().unwrap();
            // Stored and read back by the worker: the same meaning.
            let back: TrainSpec =
                serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
            assert_eq!(back.init_model(), init, "{json}");
        }
        for bad in [
            r#"{"type":"train","dataset":"d","name":"../x"}"#,
            r#"{"type":"train","dataset":"d","name":"x","steps":0}"#,
            r#"{"type":"train","dataset":"d","name":"x","family":"vae"}"#,
            r#"{"type":"train","dataset":"d","name":"x","size":4}"#,
            r#"{"type":"train","dataset":"d","name":"x","loss":"wgan"}"#,
            r#"{"type":"train","dataset":"d","name":"x","init_from":"monet","ngf":8}"#,
            r#"{"type":"train","dataset":"d","name":"x","family":"dcgan","init_from":"monet"}"#,
        ] {
            let JobSpec::Train(t) = serde_json::from_str(bad).unwrap() else {
                panic!()
            };
            assert!(t.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<JobSpec>(
            r#"{"type":"train","dataset":"d","name":"x","stepz":3}"#
        )
        .is_err());
        let JobSpec::Stylize(s) =
            serde_json::from_str(r#"{"type":"stylize","model":"m","strength":1.5}"#).unwrap()
        else {
            panic!()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn model_names() {
        for ok in ["monet", "my-style_2", "A1"] {
            assert!(valid_model_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a.b", "é", &"x".repeat(65)] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
