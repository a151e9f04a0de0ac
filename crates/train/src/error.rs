//! Typed errors of the training crate.

use std::path::PathBuf;

/// Errors that stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid options or config file.
    #[error("{0}")]
    Config(String),
    /// Dataset problems (nothing readable, bad folder, ...).
    #[error(transparent)]
    Data(#[from] crate::DataError),
    /// A loss or weight became NaN or infinite; nothing after the last good checkpoint is kept.
    #[error(
        "training diverged at step {step}: {what} is not finite. {}",
        match last_good { Some(s) => format!("The last good checkpoint (step {s}) is kept; resume it with a lower --lr or a different seed."), None => "No checkpoint was written yet; start again with a lower --lr.".to_string() }
    )]
    Diverged {
        step: u64,
        what: String,
        last_good: Option<u64>,
    },
    /// The run was interrupted (Ctrl-C); a checkpoint was written.
    #[error("interrupted at step {step}; checkpoint saved, continue with `atelier train resume {}`", run.display())]
    Interrupted { step: u64, run: PathBuf },
    /// A checkpoint could not be read.
    #[error("{path}: not a usable checkpoint: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    /// The run directory is unusable.
    #[error("{path}: {reason}")]
    Run { path: PathBuf, reason: String },
    /// I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The requested device is not available.
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },
    /// Network building or model file errors.
    #[error(transparent)]
    Nets(#[from] atelier_nets::Error),
    /// Tensor engine errors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate's trainers.
pub type TrainResult<T> = std::result::Result<T, TrainError>;
