//! The server's one configuration struct. The binary layers it: defaults, then environment
//! variables and flags (`atelier serve --help`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    pub port: u16,
    /// Data directory (created on first start).
    pub data_dir: PathBuf,
    /// Folder of model files (`NAME.safetensors`) served as styles.
    pub models_dir: PathBuf,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest image in pixels, checked before decoding.
    pub max_pixels: u64,
    /// Longest accepted image side, checked before decoding.
    pub max_image_side: u32,
    /// Images larger than this (longer side) are downscaled before stylizing unless the
    /// request asks for less; bounds the work of one synchronous request.
    pub max_output_side: u32,
    /// Images stylized at the same time; more requests get 429 with `Retry-After`.
    pub max_concurrent: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            data_dir: PathBuf::from("atelier-data"),
            models_dir: PathBuf::from("models"),
            max_body_bytes: 32 << 20,
            max_pixels: 64_000_000,
            max_image_side: 16384,
            max_output_side: 2048,
            max_concurrent: 1,
        }
    }
}

impl ServerConfig {
    /// Image limits for uploads.
    pub fn limits(&self) -> atelier_imaging::Limits {
        atelier_imaging::Limits {
            max_pixels: self.max_pixels,
            max_side: self.max_image_side,
            max_bytes: self.max_body_bytes as u64,
        }
    }
}
