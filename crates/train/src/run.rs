//! The run directory: everything a training run writes, laid out so that a person can look at
//! it and `atelier train resume` can continue it.
//!
//! ```text
//! RUN/
//!   config.json                  the run's TrainConfig
//!   metrics.jsonl                one JSON object per logged step (losses, D(x), D(G(z)), lr, images/s, warnings)
//!   loss.png                     loss curves, refreshed at every checkpoint
//!   samples/latest.png           sample grid at fixed inputs, refreshed every --sample-every steps
//!   samples/step-00001000.png    the grid at each checkpoint
//!   checkpoints/step-00001000.safetensors   networks, Adam moments, pools + JSON state
//!   <name>.safetensors           exported generator(s) with model card, at the end
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::{LoaderState, TrainError, TrainResult};

/// Named tensors of a checkpoint.
pub type Tensors = HashMap<String, Tensor>;

/// Version tag of checkpoint files.
pub const CHECKPOINT_FORMAT: &str = "atelier-checkpoint/1";
/// Metadata key of the checkpoint state.
pub const CHECKPOINT_KEY: &str = "atelier.checkpoint";
/// Largest checkpoint read.
const MAX_CHECKPOINT_BYTES: u64 = 8 << 30;

/// The non-tensor state of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    /// Steps completed.
    pub step: u64,
    pub loader: LoaderState,
    /// The trainer's random generator.
    pub rng: u64,
    /// Adam step counts (G, D).
    pub opt_steps: [u64; 2],
    /// Images held by each image pool.
    pub pool_sizes: Vec<usize>,
    /// Convergence monitor state.
    pub monitor: crate::monitor::MonitorState,
    /// Training seconds so far.
    pub elapsed_s: f64,
    /// CPU seconds (all threads) of the training so far; absent before it was recorded.
    #[serde(default)]
    pub cpu_s: f64,
    /// The machine and thread count the last training segment ran on (the model card's
    /// hardware, which an export in another process would otherwise describe).
    #[serde(default)]
    pub hardware: Option<String>,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn run_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Run {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl RunDir {
    /// Creates a new run directory (it may exist but must not hold a run yet) and writes the
    /// config.
    pub fn create(root: impl Into<PathBuf>, config: &TrainConfig) -> TrainResult<RunDir> {
        let root = root.into();
        let dir = RunDir { root };
        if dir.config_path().exists() {
            return Err(run_err(
                &dir.root,
                "already holds a training run; continue it with `atelier train resume` or choose another --out",
            ));
        }
        for d in [dir.root.clone(), dir.checkpoints_dir(), dir.samples_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
        }
        let json = serde_json::to_vec_pretty(config)
            .map_err(|e| run_err(&dir.root, format!("config: {e}")))?;
        atelier_nets::file::write_atomic(&dir.config_path(), &json)?;
        Ok(dir)
    }

    /// Opens an existing run and reads its config.
    pub fn open(root: impl Into<PathBuf>) -> TrainResult<(RunDir, TrainConfig)> {
        let dir = RunDir { root: root.into() };
        let path = dir.config_path();
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                run_err(&dir.root, "not a training run (no config.json)")
            } else {
                TrainError::io(&path, e)
            }
        })?;
        let config: TrainConfig = serde_json::from_slice(&bytes)
            .map_err(|e| run_err(&path, format!("invalid config: {e}")))?;
        config.validate()?;
        for d in [dir.checkpoints_dir(), dir.samples_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
        }
        Ok((dir, config))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn plot_path(&self) -> PathBuf {
        self.root.join("loss.png")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }
    /// Where an exported model goes.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.safetensors"))
    }
    fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("step-{step:08}.safetensors"))
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn append_metrics(&self, line: &serde_json::Value) -> TrainResult<()> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))
    }

    /// Reads `metrics.jsonl` (lines that do not parse, e.g. one cut by a crash, are skipped).
    pub fn read_metrics(&self) -> TrainResult<Vec<serde_json::Value>> {
        let path = self.metrics_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Drops metric lines after `step` (they belong to steps that a resume repeats).
    pub fn truncate_metrics(&self, step: u64) -> TrainResult<()> {
        let keep: Vec<String> = self
            .read_metrics()?
            .into_iter()
            .filter(|v| v.get("step").and_then(|s| s.as_u64()).unwrap_or(0) <= step)
            .map(|v| v.to_string())
            .collect();
        let mut text = keep.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        atelier_nets::file::write_atomic(&self.metrics_path(), text.as_bytes())?;
        Ok(())
    }

    /// Checkpoints on disk, oldest first.
    pub fn checkpoints(&self) -> TrainResult<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints_dir();
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(TrainError::io(&dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.strip_suffix(".safetensors"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes a checkpoint atomically and removes all but the newest `keep` ones, except
    /// those that `pinned` selects (the checkpoints of validated steps, kept so that any
    /// validated state can be exported later).
    pub fn write_checkpoint(
        &self,
        state: &CheckpointState,
        tensors: &HashMap<String, Tensor>,
        keep: usize,
        pinned: &dyn Fn(u64) -> bool,
    ) -> TrainResult<PathBuf> {
        let path = self.checkpoint_path(state.step);
        let json = serde_json::to_string(state)
            .map_err(|e| run_err(&path, format!("checkpoint state: {e}")))?;
        let meta: HashMap<String, String> = [(CHECKPOINT_KEY.to_string(), json)].into();
        let bytes =
            atelier_nets::file::encode_safetensors(tensors, atelier_nets::Storage::F32, meta)
                .map_err(|reason| TrainError::BadCheckpoint {
                    path: path.clone(),
                    reason,
                })?;
        atelier_nets::file::write_atomic(&path, &bytes)?;
        let all: Vec<_> = self
            .checkpoints()?
            .into_iter()
            .filter(|(step, _)| !pinned(*step))
            .collect();
        if all.len() > keep.max(1) {
            for (_, old) in &all[..all.len() - keep.max(1)] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(path)
    }

    /// Reads a checkpoint onto `device`.
    pub fn read_checkpoint(
        path: &Path,
        device: &Device,
    ) -> TrainResult<(CheckpointState, HashMap<String, Tensor>)> {
        let bad = |reason: String| TrainError::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| TrainError::io(path, e))?
            .len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(bad(format!("{len} bytes is over the limit")));
        }
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let (tensors, meta) = atelier_nets::file::parse_safetensors(&bytes).map_err(bad)?;
        let json = meta
            .as_ref()
            .and_then(|m| m.get(CHECKPOINT_KEY))
            .ok_or_else(|| bad(format!("no `{CHECKPOINT_KEY}` metadata")))?;
        let state: CheckpointState =
            serde_json::from_str(json).map_err(|e| bad(format!("state: {e}")))?;
        if state.format != CHECKPOINT_FORMAT {
            return Err(bad(format!("format `{}`", state.format)));
        }
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        Ok((state, tensors))
    }

    /// The newest checkpoint that reads back, with a note for each newer one that did not.
    #[allow(clippy::type_complexity)]
    /// The checkpoint of exactly `step`.
    pub fn checkpoint_at(
        &self,
        step: u64,
        device: &Device,
    ) -> TrainResult<(CheckpointState, Tensors)> {
        let found = self.checkpoints()?.into_iter().find(|(s, _)| *s == step);
        let Some((_, path)) = found else {
            let have: Vec<String> = self
                .checkpoints()?
                .iter()
                .map(|(s, _)| s.to_string())
                .collect();
            return Err(TrainError::Config(format!(
                "no checkpoint of step {step} (there are: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )));
        };
        Self::read_checkpoint(&path, device)
    }

    pub fn latest_checkpoint(
        &self,
        device: &Device,
    ) -> TrainResult<Option<(CheckpointState, Tensors, Vec<String>)>> {
        let mut notes = Vec::new();
        for (_, path) in self.checkpoints()?.into_iter().rev() {
            match Self::read_checkpoint(&path, device) {
                Ok((s, t)) => return Ok(Some((s, t, notes))),
                Err(e) => notes.push(format!("skipped unreadable checkpoint: {e}")),
            }
        }
        Ok(None)
    }
}
