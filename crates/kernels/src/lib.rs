//! Atelier's CPU kernels.
//!
//! candle's CPU convolutions (im2col + a generic GEMM, NCHW) run a CycleGAN generator about
//! ten times slower than onnxruntime on the same machine. These kernels work on channels-last
//! maps ([`Map`]) with weights packed once at load time:
//!
//! * [`Conv`]: k×k convolutions (stride, zero/reflect padding) and transposed convolutions as
//!   implicit GEMM — register-blocked micro-kernels ([`micro`]) read the input in place, no
//!   im2col buffer; transposed convolutions are split into stride² phases so no zero is ever
//!   multiplied;
//! * [`PlanarConv`]: the RGB head (few output channels), vectorized along x;
//! * [`Depthwise`]: depthwise convolutions for the light generator;
//! * [`ops`]: instance-norm statistics, fused scale/shift + activation + residual, tanh;
//! * [`planes`]: the element-wise training ops over NCHW planes (instance norm + activation
//!   forward and backward, bias, LeakyReLU).
//!
//! Instruction sets are chosen at run time ([`Isa::detect`]): AVX-512 (with AVX512_BF16 for
//! [`Precision::Bf16`]), AVX2+FMA, or portable Rust, so one binary runs everywhere.
//! Parallelism is over output rows on rayon's pool.

#[macro_use]
pub mod planes;
pub mod conv;
pub mod depthwise;
pub mod grad;
pub mod int8;
pub mod map;
pub mod micro;
pub mod ops;
pub mod peak;
pub mod planar;
pub mod transpose;

pub use conv::{Conv, ConvSpec};
pub use depthwise::Depthwise;
pub use map::{Map, PadMode};
pub use micro::Isa;
pub use ops::Act;
pub use planar::PlanarConv;

/// Arithmetic precision of the convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 inputs and weights with f32 accumulation (AVX512_BF16); falls back to f32 where
    /// the CPU lacks it or a layer's K is odd.
    Bf16,
    /// u8 activations (per tensor, from each input's range after per-channel smoothing) and
    /// i8 weights (per output channel) with i32 dot products (AVX512_VNNI), scaled in f32;
    /// falls back to f32 where the CPU lacks VNNI or a layer's K row is not a multiple of 4.
    Int8,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "fp32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "int8" => Some(Precision::Int8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// Errors of the kernels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid layer description or weight.
    #[error("invalid kernel: {0}")]
    Spec(String),
    /// An input that does not fit the layer.
    #[error("input does not fit the layer: {0}")]
    Shape(String),
}

pub type Result<T> = std::result::Result<T, Error>;
