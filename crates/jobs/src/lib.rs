//! The platform's work, shared by `atelier serve` (the HTTP adapter and in-process workers),
//! the CLI and standalone workers: the service layer ([`platform`]: one method per API
//! operation), the one stylize pipeline ([`pipeline`]), job specifications ([`spec`]), the
//! model catalog ([`catalog`]), dataset ingestion with limits ([`datasets`]), API keys
//! ([`keys`]) and the worker that runs queued jobs ([`worker`]).

pub mod builtin;
pub mod catalog;
pub mod datasets;
pub mod estimate;
pub mod gate;
pub mod keys;
pub mod leftovers;
pub mod memory;
pub mod pipeline;
pub mod platform;
pub mod ratelimit;
pub mod spec;
pub mod worker;

pub use catalog::{Catalog, ModelInfo, ModelRef};
pub use platform::{Dataset, Job, JobEvent, Platform, Settings};
pub use spec::{JobSpec, StylizeSpec, TrainSpec};

/// Errors of the platform logic; the server maps each to an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller already has a model of this name.
    #[error("you already have a model named `{0}`")]
    NameTaken(String),
    /// An uploaded model file is not a loadable Atelier model.
    #[error("invalid model file: {0}")]
    InvalidModel(String),
    /// An uploaded archive cannot be used.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// An upload exceeds a limit.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Imaging(#[from] atelier_imaging::Error),
    #[error(transparent)]
    Engine(#[from] atelier_engine::Error),
    #[error(transparent)]
    Store(#[from] atelier_store::StoreError),
    #[error(transparent)]
    Train(#[from] atelier_train::TrainError),
    /// Something the caller asked for does not exist (for them); `code` is the API's
    /// machine code (`job_not_found`, `model_not_found`…).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request conflicts with what exists.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Well-formed, but not something this model or file can do.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// An upload would take the owner past their storage quota.
    #[error("this upload ({adding} bytes) would take your storage past its quota: {used} of {quota} bytes used (delete datasets or models to make room)")]
    StorageQuota { used: u64, adding: u64, quota: u64 },
    /// One named upload is not a usable image.
    #[error("{file}: {source}")]
    Upload {
        file: String,
        source: atelier_imaging::Error,
    },
    /// Anything else (logged, not shown to clients).
    #[error("{0}")]
    Internal(String),
}
