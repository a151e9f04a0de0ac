//! GAN training for Atelier: the DCGAN, pix2pix, CycleGAN, CUT and FastCUT trainers ([`Trainer`],
//! one recipe per family) with their
//! run directories ([`RunDir`]: config, checkpoints, metrics, samples, loss plot), exact resume,
//! and the building blocks: adversarial losses, a checkpointable Adam, the image pool, datasets
//! and a resumable deterministic batch loader.

pub mod adam;
pub mod config;
pub mod data;
mod error;
pub mod estimate;
pub mod grid;
pub mod init;
pub mod loss;
pub mod monitor;
pub mod nce;
pub mod plot;
pub mod pool;
mod recipes;
pub mod run;
pub mod trainer;

pub use adam::{Adam, AdamConfig};
pub use atelier_nets::Rng;
pub use config::{DcganPreset, Direction, Family, LrPolicy, NceConfig, NetChoice, TrainConfig};
pub use data::{
    Augment, DataError, Dataset, Loader, LoaderState, PairBatch, PairedDataset, Source,
    UnpairedDataset,
};
pub use error::{TrainError, TrainResult};
pub use loss::GanLoss;
pub use pool::ImagePool;
pub use run::RunDir;
pub use trainer::{cpu_model, parse_device, Event, Finished, Observer, Progress, Silent, Trainer};
