//! Atelier's networks on candle: the pytorch-CycleGAN-and-pix2pix generators and
//! discriminators (numerically identical to the reference given the same weights), the DCGANs of
//! the brief and of pytorch/examples, a light real-time generator, self-describing model files
//! and the checkpoint importer.

pub mod arch;
mod block;
pub mod card;
mod chain;
pub mod conv;
pub mod dcgan;
pub mod depthwise;
pub mod discriminators;
mod error;
pub mod fast;
pub mod file;
pub mod fused;
pub mod import;
pub mod layers;
pub mod light;
pub mod norm;
pub mod pickle_guard;
pub mod resnet;
pub mod rng;
pub mod seeded;
pub mod unet;

pub use arch::{Arch, Network, Role};
pub use atelier_kernels::map::Workspace;
pub use atelier_kernels::Precision;
pub use card::ModelCard;
pub use error::{Error, Result};
pub use fast::Compiled;
pub use file::{load, save, Model, Storage};
pub use fused::Activation;
pub use norm::{Ctx, LayerStats, NormKind};
pub use rng::Rng;

/// The instruction set the CPU kernels use on this machine (`ATELIER_ISA` may lower it).
pub fn kernels_isa() -> atelier_kernels::Isa {
    atelier_kernels::Isa::detect()
}

/// Whether the CPU kernels run int8 natively here (AVX-512 kernels on a CPU with
/// AVX512_VNNI); elsewhere [`Precision::Int8`] runs fp32.
pub fn has_int8() -> bool {
    matches!(kernels_isa(), atelier_kernels::Isa::Avx512 { .. })
        && atelier_kernels::int8::has_vnni()
}
pub use seeded::SeededVarMap;

/// Fixes the number of CPU threads candle uses (default: all available cores).
///
/// * candle 0.11 looks its thread count up on every CPU operation and, unless
///   `RAYON_NUM_THREADS` is set, does so by reading `/proc/cpuinfo` each time (thousands of
///   file reads per training step). Setting the variable once, before any work, removes that
///   cost. An explicit `RAYON_NUM_THREADS` in the environment wins over `threads`.
/// * candle's element-wise ops run on its own "barrier pool" of `CANDLE_NUM_THREADS − 1`
///   helper threads, which spin after every op waiting for the next one. The heavy work here
///   (convolutions, norms) runs on rayon, so on a 2-core machine a spinning helper took about
///   10 % of a CycleGAN training step away from the rayon workers; with the pool off
///   (`CANDLE_NUM_THREADS=1`) the step was about 7 % faster (3 of 3 alternating runs). It is
///   the default unless `CANDLE_NUM_THREADS` is set.
pub fn init_threads(threads: Option<usize>) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = threads.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}
