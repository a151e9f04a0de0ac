//! Quality metrics: FID and KID on the pool features of the FID Inception-v3 network.
//!
//! * [`Inception`]: the network used by pytorch-fid / TTUR / StyleGAN's metrics
//!   (TensorFlow's `inception-2015-12-05` graph, with its FID-specific blocks and pools),
//!   loaded from `fid_inception_v3.safetensors` (see the README for where it comes from);
//! * [`preprocess`]: pytorch-fid's input pipeline (8-bit RGB → bilinear 299×299 without
//!   antialiasing → `[-1, 1]`);
//! * [`stats`]: FID (Fréchet distance of the feature Gaussians) and KID (unbiased MMD² with
//!   the cubic polynomial kernel, over random subsets, as torch-fidelity computes it);
//! * [`mod@structure`]: edge correlation and sharpness of a translation against its photo
//!   (Sobel magnitudes on 256² grayscale).

pub mod error;
pub mod folder;
pub mod inception;
pub mod preprocess;
pub mod stats;
pub mod structure;

pub use error::{Error, Result};
pub use folder::{folder_features, image_features, list_images};
pub use inception::{Inception, FEATURES};
pub use stats::{fid, kid, Kid};
pub use structure::{structure, structure_summary, Structure, StructureSummary};
