//! The platform's work, shared by `atelier serve` (in-process workers) and a future
//! `atelier worker`: job specifications ([`spec`]), the model catalog ([`catalog`]), dataset
//! ingestion with limits ([`datasets`]) and the worker that runs queued jobs ([`worker`]).

pub mod builtin;
pub mod catalog;
pub mod datasets;
pub mod estimate;
pub mod leftovers;
pub mod memory;
pub mod spec;
pub mod worker;

pub use catalog::{Catalog, ModelInfo, ModelRef};
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
    /// Anything else (logged, not shown to clients).
    #[error("{0}")]
    Internal(String),
}
