//! GAN training for Atelier: the DCGAN, pix2pix and CycleGAN trainers ([`Trainer`]) with their
//! run directories ([`RunDir`]: config, checkpoints, metrics, samples, loss plot), exact resume,
//! and the building blocks: adversarial losses, a checkpointable Adam, the image pool, datasets
//! and a resumable deterministic batch loader.

pub mod adam;
pub mod config;
pub mod data;
mod error;
pub mod grid;
pub mod loss;
pub mod monitor;
pub mod plot;
pub mod pool;
pub mod run;
pub mod trainer;

pub use adam::{Adam, AdamConfig};
pub use atelier_nets::Rng;
pub use config::{DcganPreset, Direction, Family, LrPolicy, NetChoice, TrainConfig};
pub use data::{
    Augment, DataError, Dataset, Loader, LoaderState, PairBatch, PairedDataset, Source,
    UnpairedDataset,
};
pub use error::{TrainError, TrainResult};
pub use loss::GanLoss;
pub use pool::ImagePool;
pub use run::RunDir;
pub use trainer::{cpu_model, parse_device, Event, Finished, Observer, Progress, Silent, Trainer};
