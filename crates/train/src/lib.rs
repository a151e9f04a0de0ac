//! GAN training building blocks: the adversarial losses of the reference implementations, an
//! Adam optimizer whose state can be checkpointed, and the CycleGAN image pool with a
//! deterministic, serialisable random generator, and the datasets and resumable batch loader
//! of [`data`]. The trainers themselves (DCGAN, pix2pix,
//! CycleGAN) build on these (issue 3).

pub mod adam;
pub mod data;
pub mod loss;
pub mod pool;
pub mod rng;

pub use adam::{Adam, AdamConfig};
pub use data::{
    Augment, DataError, Dataset, Loader, LoaderState, PairBatch, PairedDataset, Source,
    UnpairedDataset,
};
pub use loss::GanLoss;
pub use pool::ImagePool;
pub use rng::Rng;
