//! Atelier's networks on candle: the pytorch-CycleGAN-and-pix2pix generators and
//! discriminators (numerically identical to the reference given the same weights), the DCGANs of
//! the brief and of pytorch/examples, a light real-time generator, self-describing model files
//! and the checkpoint importer.

pub mod arch;
pub mod card;
pub mod dcgan;
pub mod discriminators;
mod error;
pub mod file;
pub mod import;
pub mod layers;
pub mod light;
pub mod norm;
pub mod resnet;
pub mod unet;

pub use arch::{Arch, Network, Role};
pub use card::ModelCard;
pub use error::{Error, Result};
pub use file::{load, save, Model, Storage};
pub use norm::{Ctx, LayerStats, NormKind};
