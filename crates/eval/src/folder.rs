//! Pool features of every image in a folder.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::inception::{Inception, FEATURES};
use crate::preprocess::{input_from_rgb8, SIZE};

/// The image files of a folder (not recursive), by extension, sorted by name.
///
/// # Errors
/// [`Error::Io`] when the folder cannot be read.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if p.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png" | "webp")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Features (`n × 2048`, row-major) of `paths`, `batch` images at a time; `progress` is
/// called with (done, total) after every batch.
///
/// # Errors
/// [`Error::Image`] naming the first file that cannot be decoded; tensor errors.
pub fn folder_features(
    net: &Inception,
    paths: &[PathBuf],
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f32>> {
    let limits = atelier_imaging::Limits::default();
    let mut feats = Vec::with_capacity(paths.len() * FEATURES);
    for chunk in paths.chunks(batch.max(1)) {
        let images = chunk
            .iter()
            .map(|p| {
                atelier_imaging::decode_file(p, &limits).map_err(|e| Error::Image {
                    path: p.display().to_string(),
                    source: e,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        feats.extend(image_features(net, &images, chunk.len(), device)?);
        progress(feats.len() / FEATURES, paths.len());
    }
    Ok(feats)
}

/// Features (`n × 2048`, row-major) of decoded images (as 8-bit RGB, the way they would be
/// saved), `batch` images per Inception pass.
///
/// # Errors
/// Tensor errors.
pub fn image_features(
    net: &Inception,
    images: &[atelier_imaging::Image],
    batch: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let mut feats = Vec::with_capacity(images.len() * FEATURES);
    for chunk in images.chunks(batch.max(1)) {
        let mut input = Vec::with_capacity(chunk.len() * 3 * SIZE * SIZE);
        for img in chunk {
            let rgb = img.to_rgb8();
            input.extend(input_from_rgb8(
                &rgb,
                img.width as usize,
                img.height as usize,
            ));
        }
        let x = Tensor::from_vec(input, (chunk.len(), 3, SIZE, SIZE), device)?;
        feats.extend(net.features(&x)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(feats)
}
