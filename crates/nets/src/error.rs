//! Typed errors of the networks crate.

/// Errors from building, loading, saving or running a network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight the architecture needs is not in the file.
    #[error("missing weight `{key}` (the file does not match the architecture {arch})")]
    MissingKey { key: String, arch: String },
    /// A weight has a different shape than the architecture expects.
    #[error("weight `{key}` has shape {found:?}, but {arch} expects {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        arch: String,
    },
    /// The file holds weights the architecture does not use.
    #[error("{count} unexpected weight(s) for {arch}, e.g. `{first}`")]
    UnexpectedKeys {
        count: usize,
        first: String,
        arch: String,
    },
    /// The file is not a readable model file (not safetensors, truncated, ...).
    #[error("{path}: not a valid model file: {reason}")]
    BadFile { path: String, reason: String },
    /// The model card in the file is missing or invalid.
    #[error("{path}: model card: {reason}")]
    BadCard { path: String, reason: String },
    /// A PyTorch checkpoint could not be read.
    #[error("{path}: not a readable PyTorch checkpoint: {reason}")]
    BadCheckpoint { path: String, reason: String },
    /// The architecture could not be determined or is inconsistent.
    #[error("architecture: {0}")]
    Arch(String),
    /// An input tensor does not fit the network.
    #[error("input: {0}")]
    Input(String),
    /// I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The caller's stop check said yes between two layers.
    #[error("stopped before the pass was done")]
    Stopped,
    /// Error from the tensor engine.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
