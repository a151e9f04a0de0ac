//! Image I/O and pixel plumbing for Atelier.
//!
//! * **Decoding** untrusted JPEG, PNG and WebP bytes into a planar `f32` [`Image`] with
//!   values in `[-1, 1]` (the pytorch-CycleGAN-and-pix2pix convention), with hard
//!   [`Limits`] checked from the header before any pixel is decoded, EXIF orientation
//!   applied, and typed [`Error`]s instead of panics on malformed input.
//! * **Encoding** back to JPEG, PNG or (lossless) WebP without any metadata.
//! * **Resampling** ([`resize`], [`fit_max_side`], [`thumbnail`]).
//! * **Tiling** for large images: [`TileGrid`], [`feather_weight`], [`Blender`], [`crop`].
//! * **Metrics**: [`psnr`], [`psnr_u8`].
//!
//! ```
//! use atelier_imaging::{decode, encode, Format, Image, Limits};
//!
//! let img = Image::filled(4, 3, [1.0, -1.0, 0.0]);
//! let png = encode(&img, Format::Png, 90)?;
//! let back = decode(&png, &Limits::default())?;
//! assert_eq!(back.to_rgb8(), img.to_rgb8());
//! # Ok::<(), atelier_imaging::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod buffer;
mod codec;
mod error;
mod format;
mod limits;
mod metrics;
mod resize;
mod tile;

pub use buffer::{alpha_to_u8, denorm_u8, norm_u16, norm_u8, Image};
pub use codec::{decode, decode_file, encode, probe, read_file};
pub use error::{Error, Result};
pub use format::Format;
pub use limits::Limits;
pub use metrics::{psnr, psnr_u8};
pub use resize::{fit_max_side, resize, resize_planes, resize_with, thumbnail, Filter};
pub use tile::{center_square, crop, crop_chw, feather_weight, Blender, Rect, TileGrid};
