//! Typed errors of the evaluation crate.

/// Errors from loading the Inception weights, reading image folders or computing metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Inception weights file is missing, unreadable or not the FID Inception.
    #[error("{path}: not the FID Inception-v3 weights: {reason}")]
    Weights { path: String, reason: String },
    /// An image could not be read or decoded.
    #[error("{path}: {source}")]
    Image {
        path: String,
        source: atelier_imaging::Error,
    },
    /// I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Too few samples (or mismatched feature sizes) for the statistic.
    #[error("{0}")]
    Samples(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
