//! What a job is asked to do: the JSON a client posts to `POST /v1/jobs`, checked here so the
//! server rejects bad requests before queueing and the worker reads the same types back.

use serde::{Deserialize, Serialize};

use atelier_imaging::Format;

use crate::JobsError;

/// The queue's name of stylize jobs.
pub const STYLIZE: &str = "stylize";
/// The queue's name of training jobs.
pub const TRAIN: &str = "train";

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
    /// JPEG quality 1–100.
    #[serde(default = "quality")]
    pub quality: u32,
    /// Number of input images (set by the server from the upload).
    #[serde(default)]
    pub inputs: usize,
    /// The inputs' file names as uploaded (set by the server); the results keep their stems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

fn one() -> f32 {
    1.0
}
fn quality() -> u32 {
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
    /// `f32` (default) or `bf16` (the training convolutions in bf16 with f32 sums, on workers
    /// with AVX512_BF16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
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

/// The file stems of a stylize job's results, one per input: each upload's own stem made
/// safe for a URL segment (letters, digits, `-`, `_`, `.`; at most 80 characters), numbered
/// when two are the same (`a`, `a-2`); `0`, `1`, … for jobs stored without names.
pub fn result_stems(names: &[String], inputs: usize) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    (0..inputs)
        .map(|n| {
            let base = names
                .get(n)
                .map(|name| {
                    let file = name.rsplit(['/', '\\']).next().unwrap_or("");
                    let stem = match file.rsplit_once('.') {
                        Some((s, _)) if !s.is_empty() => s,
                        _ => file,
                    };
                    let safe: String = stem
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                                c
                            } else {
                                '_'
                            }
                        })
                        .take(80)
                        .collect();
                    safe.trim_start_matches('.').to_string()
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| n.to_string());
            let mut stem = base.clone();
            let mut k = 2;
            // Case-insensitively unique: `Photo` and `photo` are one file on some disks.
            while !used.insert(stem.to_ascii_lowercase()) {
                stem = format!("{base}-{k}");
                k += 1;
            }
            stem
        })
        .collect()
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
        if let Some(g) = self.net_g.as_deref() {
            let resnet = atelier_nets::resnet::ResnetConfig::parse_name(g);
            let known = matches!(g, "light" | "unet" | "unet_128" | "unet_256")
                || resnet.is_some_and(|(n, _)| (1..=32).contains(&n));
            if !known {
                return Err(bad(format!(
                    "net_g `{g}`: expected light, resnet_<N>blocks or resnet_<N>blocks_resize (N 1–32, e.g. resnet_6blocks), unet, unet_128 or unet_256"
                )));
            }
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
        if let Some(p) = &self.precision {
            if atelier_train::config::TrainPrecision::parse(p).is_none() {
                return Err(bad(format!("precision `{p}`: expected f32 or bf16")));
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

impl JobSpec {
    /// Parses a job request (JSON) with messages for people: which field is wrong and what
    /// it takes.
    pub fn from_json(body: &[u8]) -> Result<JobSpec, JobsError> {
        let v: serde_json::Value = from_json(body)?;
        let serde_json::Value::Object(mut map) = v else {
            return Err(bad("the spec must be a JSON object with a `type`"));
        };
        let kind = match map.remove("type") {
            Some(serde_json::Value::String(t)) => t,
            Some(_) => return Err(bad("`type` must be \"stylize\" or \"train\"")),
            None => return Err(bad("`type` is required: \"stylize\" or \"train\"")),
        };
        // Each variant on its own (an internally tagged enum hides the field paths).
        let rest = serde_json::Value::Object(map);
        let path_err = |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            bad(humanize(
                &path,
                &strip_position(&e.into_inner().to_string()),
            ))
        };
        match kind.as_str() {
            "stylize" => serde_path_to_error::deserialize(rest)
                .map(JobSpec::Stylize)
                .map_err(path_err),
            "train" => serde_path_to_error::deserialize(rest)
                .map(JobSpec::Train)
                .map_err(path_err),
            other => Err(bad(format!(
                "`type` `{other}` is not one of `stylize` or `train`"
            ))),
        }
    }
}

/// Parses a JSON request body with messages for people: which field, and what it takes
/// (`` `model` is required ``, `` `strength`: expected a number ``) instead of serde's wording.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, JobsError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            bad(format!("the body is not valid JSON: {inner}"))
        } else {
            bad(humanize(&path, &strip_position(&inner.to_string())))
        }
    })
}

/// Rewrites the message of a query-string rejection (`PATH: MESSAGE`, serde_path_to_error's
/// form) like [`from_json`]'s.
pub fn humanize_query_error(text: &str) -> String {
    let text = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    match text.split_once(": ") {
        Some((path, m)) if !path.contains(' ') => humanize(path, m),
        _ => humanize(".", text),
    }
}

/// serde_json's " at line 1 column 17" helps nobody with a one-line body.
fn strip_position(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// What a serde type name means to a person.
fn kind_of(expected: &str) -> &str {
    match expected.trim() {
        "u8" => "a whole number from 0 to 255",
        "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        other => other,
    }
}

/// Rewrites one serde message about the field at `path` (`.` for the top level).
fn humanize(path: &str, m: &str) -> String {
    let field = |f: &str| format!("`{f}`");
    let at = if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{}: ", field(path))
    };
    if let Some(rest) = m.strip_prefix("missing field ") {
        let name = rest.trim_matches('`');
        let full = if at.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return format!("{} is required", field(&full));
    }
    if let Some(rest) = m.strip_prefix("unknown field ") {
        return match rest.split_once(", expected ") {
            // (The path ends at the unknown field itself.)
            Some((f, exp)) => {
                format!(
                    "unknown field {f}; the fields are {}",
                    exp.replace("one of ", "")
                )
            }
            None => format!("unknown field {rest}"),
        };
    }
    if let Some(rest) = m.strip_prefix("unknown variant ") {
        let (v, exp) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let what = if at.is_empty() {
            "`type` ".to_string()
        } else {
            at.clone()
        };
        return format!("{what}{v} is not one of {}", exp.replace("one of ", ""));
    }
    for prefix in ["invalid value: ", "invalid type: "] {
        if let Some(rest) = m.strip_prefix(prefix) {
            if let Some((got, exp)) = rest.split_once(", expected ") {
                return format!("{at}expected {}, got {got}", kind_of(exp));
            }
        }
    }
    match m {
        "number too large to fit in target type" => format!("{at}the number is too large"),
        "number too small to fit in target type" => format!("{at}the number is too small"),
        "invalid digit found in string" => format!("{at}not a whole number"),
        "cannot parse integer from empty string" | "cannot parse float from empty string" => {
            format!("{at}a value is required")
        }
        "invalid float literal" => format!("{at}not a number"),
        _ => format!("{at}{m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_read_as_sentences() {
        let e = |b: &[u8]| JobSpec::from_json(b).unwrap_err().to_string();
        assert_eq!(e(br#"{"type":"stylize"}"#), "`model` is required");
        assert_eq!(
            e(br#"{"model":"monet"}"#),
            "`type` is required: \"stylize\" or \"train\""
        );
        assert_eq!(e(b"[1]"), "the spec must be a JSON object with a `type`");
        assert_eq!(
            e(br#"{"type":"stylize","model":"monet","strength":"strong"}"#),
            "`strength`: expected a number, got string \"strong\""
        );
        assert_eq!(
            e(br#"{"type":"paint"}"#),
            "`type` `paint` is not one of `stylize` or `train`"
        );
        let unknown = e(br#"{"type":"train","dataset":"d","name":"x","stpes":3}"#);
        assert!(
            unknown.starts_with("unknown field `stpes`; the fields are `dataset`, `name`"),
            "{unknown}"
        );
        assert!(e(b"{").starts_with("the body is not valid JSON"));
        assert!(JobSpec::from_json(br#"{"type":"train","dataset":"d","name":"x"}"#).is_ok());
        let q = humanize_query_error;
        assert_eq!(
            q("Failed to deserialize query string: quality: number too large to fit in target type"),
            "`quality`: the number is too large"
        );
        assert_eq!(
            q("Failed to deserialize query string: max_side: invalid digit found in string"),
            "`max_side`: not a whole number"
        );
        assert_eq!(
            q("Failed to deserialize query string: missing field `name`"),
            "`name` is required"
        );
    }

    #[test]
    fn result_stems_keep_upload_names() {
        let names: Vec<String> = [
            "holiday.jpg",
            "C:\\pics\\holiday.png",
            "ünï cödé.webp",
            "..png",
            "noext",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            result_stems(&names, 6),
            ["holiday", "holiday-2", "_n__c_d_", "3", "noext", "5"]
        );
        assert_eq!(result_stems(&[], 2), ["0", "1"]);
        let names: Vec<String> = ["Photo.png", "photo.jpg"].map(String::from).to_vec();
        assert_eq!(result_stems(&names, 2), ["Photo", "photo-2"]);
    }

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
            r#"{"type":"train","dataset":"d","name":"x","precision":"fp16"}"#,
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
