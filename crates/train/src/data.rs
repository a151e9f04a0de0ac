//! The dataset side of the trainers: image folders (or `.zip` archives of images), paired and
//! unpaired datasets, the augmentation of the reference implementations, and a resumable
//! batch [`Loader`].
//!
//! * Files are recognised by their content ([`Format::sniff`]), never by their extension, and
//!   listed in sorted order so a seed fixes everything.
//! * Images are decoded lazily, when sampled. A file that cannot be read or decoded never
//!   aborts a run: it is recorded in [`Dataset::skipped`] and the loader moves on to the next
//!   sample of its (deterministic) order.
//! * All randomness comes from [`Rng`]. The [`Loader`] keeps only the generator state at the
//!   start of the current epoch plus its position: the epoch's permutation is drawn from that
//!   state and every sample gets its own generator derived from `(state, position)`, so
//!   [`LoaderState`] (three numbers) is enough to resume with exactly the same batches.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use atelier_imaging::{decode, decode_file, resize, Format, Image, Limits};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Rng;

/// Largest accepted (uncompressed) zip entry.
pub const MAX_ZIP_ENTRY_BYTES: u64 = 64 << 20;
/// Largest accepted number of entries in a zip archive.
pub const MAX_ZIP_ENTRIES: usize = 100_000;

/// Errors that stop a dataset from being built or a batch from being produced. (Single bad
/// files are not errors: they are skipped and reported by [`Dataset::skipped`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The dataset folder or archive cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The folder or archive.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The zip archive is unreadable or over the limits.
    #[error("zip archive {}: {reason}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Not a single usable image.
    #[error("no JPEG, PNG or WebP images in {} ({skipped} other files skipped)", path.display())]
    NoImages {
        /// The folder or archive.
        path: PathBuf,
        /// How many entries were skipped.
        skipped: usize,
    },
    /// Two folders to be matched by file stem have no stem in common.
    #[error(
        "no file names match between {} and {}; unmatched in A: [{}]; unmatched in B: [{}]",
        a.display(), b.display(), unmatched_a.join(", "), unmatched_b.join(", ")
    )]
    NoMatches {
        /// The A folder.
        a: PathBuf,
        /// The B folder.
        b: PathBuf,
        /// Stems of A without a partner.
        unmatched_a: Vec<String>,
        /// Stems of B without a partner.
        unmatched_b: Vec<String>,
    },
    /// Every image of the dataset failed to decode.
    #[error("none of the {count} images could be decoded (see the skipped list)")]
    NothingReadable {
        /// Number of images tried.
        count: usize,
    },
    /// Inconsistent augmentation or loader settings.
    #[error("invalid data settings: {0}")]
    Config(String),
    /// Building a tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this module.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Dataset
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Item {
    /// The file, or `archive.zip/entry/name` for zip entries (for messages).
    path: PathBuf,
    /// File name without its last extension.
    stem: String,
    /// Index of the entry in the zip archive.
    zip_index: Option<usize>,
}

enum Backend {
    Dir,
    Zip(Box<zip::ZipArchive<BufReader<File>>>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Dir => f.write_str("Dir"),
            Backend::Zip(z) => write!(f, "Zip({} entries)", z.len()),
        }
    }
}

/// The images of one folder (not recursive) or one `.zip` archive (all entries), in sorted
/// order. Only files whose content is JPEG, PNG or WebP count; the others are listed in
/// [`skipped`](Dataset::skipped) right away, and images that fail to decode are added there
/// when first sampled.
#[derive(Debug)]
pub struct Dataset {
    root: PathBuf,
    items: Vec<Item>,
    bad: Vec<bool>,
    skipped: Vec<(PathBuf, String)>,
    backend: Backend,
    limits: Limits,
}

fn stem_of(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    match base.rfind('.') {
        Some(i) if i > 0 => base[..i].to_string(),
        _ => base.to_string(),
    }
}

fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| &magic == b"PK\x03\x04" || &magic == b"PK\x05\x06")
        .unwrap_or(false)
}

/// Reads up to `n` leading bytes.
fn head(r: impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

const NOT_AN_IMAGE: &str = "not a JPEG, PNG or WebP image (by content)";

impl Dataset {
    /// Opens a folder of images, or a `.zip` archive of images (recognised by content).
    ///
    /// # Errors
    /// [`DataError::Io`] when the folder cannot be listed, [`DataError::Zip`] for a broken or
    /// oversized archive, [`DataError::NoImages`] when nothing in it is an image.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let mut ds = if path.is_file() && is_zip(path) {
            Self::open_zip(path)?
        } else {
            Self::open_dir(path)?
        };
        ds.bad = vec![false; ds.items.len()];
        if ds.items.is_empty() {
            return Err(DataError::NoImages {
                path: path.to_path_buf(),
                skipped: ds.skipped.len(),
            });
        }
        Ok(ds)
    }

    fn open_dir(root: &Path) -> Result<Dataset> {
        let io = |source| DataError::Io {
            path: root.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io)? {
            let p = entry.map_err(io)?.path();
            // Follows symlinks; sub-folders and special files are ignored.
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for p in files {
            match File::open(&p).and_then(|f| head(f, 16)) {
                Ok(h) if Format::sniff(&h).is_some() => items.push(Item {
                    stem: stem_of(&p.file_name().unwrap_or_default().to_string_lossy()),
                    path: p,
                    zip_index: None,
                }),
                Ok(_) => skipped.push((p, NOT_AN_IMAGE.to_string())),
                Err(e) => skipped.push((p, format!("unreadable: {e}"))),
            }
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            items,
            bad: Vec::new(),
            skipped,
            backend: Backend::Dir,
            limits: Limits::default(),
        })
    }

    fn open_zip(root: &Path) -> Result<Dataset> {
        let zerr = |reason: String| DataError::Zip {
            path: root.to_path_buf(),
            reason,
        };
        let open = || {
            File::open(root)
                .map(BufReader::new)
                .map_err(|source| DataError::Io {
                    path: root.to_path_buf(),
                    source,
                })
        };
        let known = zip::read::Config {
            archive_offset: zip::read::ArchiveOffset::Known(0),
        };
        let mut archive = match zip::ZipArchive::with_config(known, open()?) {
            Ok(z) => z,
            Err(_) => zip::ZipArchive::new(open()?)
                .map_err(|e| zerr(format!("not a valid zip archive: {e}")))?,
        };
        if archive.len() > MAX_ZIP_ENTRIES {
            return Err(zerr(format!(
                "{} entries, over the limit of {MAX_ZIP_ENTRIES}",
                archive.len()
            )));
        }
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for i in 0..archive.len() {
            let entry = match archive.by_index(i) {
                Ok(e) => e,
                Err(e) => {
                    skipped.push((root.join(format!("#{i}")), format!("unreadable entry: {e}")));
                    continue;
                }
            };
            if entry.is_dir() {
                continue;
            }
            let name = match entry.name() {
                Ok(n) => n.into_owned(),
                Err(e) => {
                    skipped.push((root.join(format!("#{i}")), format!("bad entry name: {e}")));
                    continue;
                }
            };
            let path = root.join(&name);
            if entry.size() > MAX_ZIP_ENTRY_BYTES {
                skipped.push((
                    path,
                    format!(
                        "entry is {} bytes, over the limit of {MAX_ZIP_ENTRY_BYTES}",
                        entry.size()
                    ),
                ));
                continue;
            }
            match head(entry, 16) {
                Ok(h) if Format::sniff(&h).is_some() => entries.push((name, path, i)),
                Ok(_) => skipped.push((path, NOT_AN_IMAGE.to_string())),
                Err(e) => skipped.push((path, format!("unreadable entry: {e}"))),
            }
        }
        entries.sort();
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        let items = entries
            .into_iter()
            .map(|(name, path, i)| Item {
                stem: stem_of(&name),
                path,
                zip_index: Some(i),
            })
            .collect();
        Ok(Dataset {
            root: root.to_path_buf(),
            items,
            bad: Vec::new(),
            skipped,
            backend: Backend::Zip(Box::new(archive)),
            limits: Limits::default(),
        })
    }

    /// The folder or archive.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of images (including ones that will turn out undecodable).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no images (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The image paths, in dataset order (zip entries as `archive.zip/entry/name`).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.items.iter().map(|i| i.path.as_path())
    }

    /// File stem of image `index`.
    pub fn stem(&self, index: usize) -> Option<&str> {
        self.items.get(index).map(|i| i.stem.as_str())
    }

    /// Files that were skipped, with the reason: non-images found when opening, and images
    /// that failed to decode when sampled.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// Number of images known to be unusable.
    pub fn bad_count(&self) -> usize {
        self.bad.iter().filter(|b| **b).count()
    }

    /// Decodes image `index`. On failure the image is recorded as skipped (once) and `None`
    /// is returned, now and on every later call.
    pub fn load(&mut self, index: usize) -> Option<Image> {
        let item = self.items.get(index)?;
        if self.bad[index] {
            return None;
        }
        let result = match (&mut self.backend, item.zip_index) {
            (Backend::Zip(archive), Some(i)) => read_zip_entry(archive, i)
                .and_then(|bytes| decode(&bytes, &self.limits).map_err(|e| e.to_string())),
            _ => decode_file(&item.path, &self.limits).map_err(|e| e.to_string()),
        };
        match result {
            Ok(img) => Some(img),
            Err(reason) => {
                self.bad[index] = true;
                self.skipped.push((item.path.clone(), reason));
                None
            }
        }
    }

    /// Takes every `every`-th image (indices 0, every, 2·every, …; at most `max`) out of the
    /// dataset and returns them decoded, for validation. The split depends only on the sorted
    /// file list, so a resumed run holds out the same images. Images that fail to decode are
    /// dropped from both sides and recorded as skipped.
    pub fn hold_out(&mut self, every: usize, max: usize) -> Vec<Image> {
        self.hold_out_inner(every, max)
    }

    /// Up to `max` images decoded at their original size, in sorted order (a folder of
    /// validation images); undecodable ones are recorded as skipped.
    pub fn originals(&mut self, max: usize) -> Vec<Image> {
        let mut out = Vec::new();
        for i in 0..self.items.len() {
            if out.len() == max {
                break;
            }
            if let Some(img) = self.load(i) {
                out.push(img);
            }
        }
        out
    }

    fn hold_out_inner(&mut self, every: usize, max: usize) -> Vec<Image> {
        let every = every.max(2);
        let mut keep = Vec::with_capacity(self.items.len());
        let mut keep_bad = Vec::with_capacity(self.items.len());
        let mut held = Vec::new();
        let items = std::mem::take(&mut self.items);
        let bad = std::mem::take(&mut self.bad);
        let mut taken = Vec::new();
        for (i, (item, b)) in items.into_iter().zip(bad).enumerate() {
            if i % every == 0 && taken.len() < max && !b {
                taken.push(item);
            } else {
                keep.push(item);
                keep_bad.push(b);
            }
        }
        self.items = taken;
        self.bad = vec![false; self.items.len()];
        for i in 0..self.items.len() {
            if let Some(img) = self.load(i) {
                held.push(img);
            }
        }
        self.items = keep;
        self.bad = keep_bad;
        held
    }

    fn mark_bad(&mut self, index: usize, reason: String) {
        if !self.bad[index] {
            self.bad[index] = true;
            self.skipped.push((self.items[index].path.clone(), reason));
        }
    }
}

fn read_zip_entry(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    index: usize,
) -> std::result::Result<Vec<u8>, String> {
    let entry = archive.by_index(index).map_err(|e| e.to_string())?;
    if entry.size() > MAX_ZIP_ENTRY_BYTES {
        return Err(format!(
            "entry is {} bytes, over the limit of {MAX_ZIP_ENTRY_BYTES}",
            entry.size()
        ));
    }
    let cap = usize::try_from(entry.size()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(cap);
    // The header's size could lie: never read past the limit.
    entry
        .take(MAX_ZIP_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_ZIP_ENTRY_BYTES {
        return Err(format!(
            "entry is over the limit of {MAX_ZIP_ENTRY_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Augmentation
// ---------------------------------------------------------------------------------------------

/// The training-time transform of the reference implementations (`resize_and_crop`):
/// resize to `load_size × load_size`, random `crop_size` crop, random horizontal flip, and
/// optional colour jitter. The output has no alpha.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Side the image is resized to first.
    pub load_size: u32,
    /// Side of the random square crop (at most `load_size`).
    pub crop_size: u32,
    /// Random horizontal flip with probability ½.
    pub flip: bool,
    /// 0 = off; otherwise brightness, contrast and saturation factors are drawn uniformly
    /// from `[1 - color_jitter, 1 + color_jitter]` (clamped at 0).
    pub color_jitter: f32,
    /// Cut the largest centred square first, so that resizing keeps the aspect ratio
    /// (torchvision's `Resize(n)` + `CenterCrop(n)`, as pytorch/examples' DCGAN); otherwise
    /// the image is resized to a square (the pix2pix/CycleGAN reference).
    #[serde(default)]
    pub center_square: bool,
}

impl Default for Augment {
    /// The reference's defaults: load 286, crop 256, flip, no jitter.
    fn default() -> Self {
        Augment {
            load_size: 286,
            crop_size: 256,
            flip: true,
            color_jitter: 0.0,
            center_square: false,
        }
    }
}

/// The random choices of one [`Augment`] application, so they can be applied to several
/// images (the two halves of a pair) alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    /// Left column of the crop.
    pub x: u32,
    /// Top row of the crop.
    pub y: u32,
    /// Whether to flip horizontally.
    pub flip: bool,
    /// Brightness, contrast and saturation factors (all 1 when jitter is off).
    pub jitter: [f32; 3],
}

impl Augment {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`DataError::Config`] for a zero size, a crop larger than the load size, or a
    /// negative or non-finite jitter.
    pub fn validate(&self) -> Result<()> {
        if self.crop_size == 0 || self.load_size == 0 {
            return Err(DataError::Config(
                "load and crop sizes must be positive".into(),
            ));
        }
        if self.crop_size > self.load_size {
            return Err(DataError::Config(format!(
                "crop size {} is larger than load size {}",
                self.crop_size, self.load_size
            )));
        }
        if !self.color_jitter.is_finite() || self.color_jitter < 0.0 {
            return Err(DataError::Config(format!(
                "color jitter must be ≥ 0, got {}",
                self.color_jitter
            )));
        }
        Ok(())
    }

    /// Draws the random choices (crop corner, flip, jitter factors), in that order. Flip
    /// and jitter draw nothing when disabled.
    pub fn params(&self, rng: &mut Rng) -> AugmentParams {
        let range = (self.load_size.saturating_sub(self.crop_size) + 1) as usize;
        let x = rng.below(range) as u32;
        let y = rng.below(range) as u32;
        let flip = self.flip && rng.uniform() < 0.5;
        let mut jitter = [1.0f32; 3];
        if self.color_jitter > 0.0 {
            for j in &mut jitter {
                let u = rng.uniform() as f32 * 2.0 - 1.0;
                *j = (1.0 + self.color_jitter * u).max(0.0);
            }
        }
        AugmentParams { x, y, flip, jitter }
    }

    /// Draws parameters and applies them.
    pub fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let p = self.params(rng);
        self.apply_with(img, &p)
    }

    /// Applies given parameters: resize, crop, flip, jitter.
    pub fn apply_with(&self, img: &Image, p: &AugmentParams) -> Image {
        let (l, c) = (self.load_size, self.crop_size.min(self.load_size));
        let squared;
        let img = if self.center_square && img.width != img.height {
            squared = atelier_imaging::center_square(img);
            &squared
        } else {
            img
        };
        let resized;
        let src = if img.width == l && img.height == l {
            img
        } else {
            resized = resize(img, l, l);
            &resized
        };
        let (lw, cw) = (l as usize, c as usize);
        let (x0, y0) = (p.x.min(l - c) as usize, p.y.min(l - c) as usize);
        let plane = lw * lw;
        let mut rgb = Vec::with_capacity(3 * cw * cw);
        for ch in 0..3 {
            for y in 0..cw {
                let row = ch * plane + (y0 + y) * lw + x0;
                let src_row = src.rgb.get(row..row + cw);
                match (src_row, p.flip) {
                    (Some(r), false) => rgb.extend_from_slice(r),
                    (Some(r), true) => rgb.extend(r.iter().rev()),
                    (None, _) => rgb.extend(std::iter::repeat_n(0.0, cw)),
                }
            }
        }
        if p.jitter != [1.0; 3] {
            color_jitter(&mut rgb, cw * cw, p.jitter);
        }
        Image {
            width: c,
            height: c,
            rgb,
            alpha: None,
        }
    }
}

/// torchvision-style brightness, contrast, saturation (in that order) on `[0, 1]` values.
fn color_jitter(rgb: &mut [f32], n: usize, [b, c, s]: [f32; 3]) {
    let to01 = |v: f32| (v + 1.0) * 0.5;
    let gray = |rgb: &[f32], i: usize| 0.299 * rgb[i] + 0.587 * rgb[n + i] + 0.114 * rgb[2 * n + i];
    for v in rgb.iter_mut() {
        *v = (to01(*v) * b).clamp(0.0, 1.0);
    }
    let mean = (0..n).map(|i| gray(rgb, i)).sum::<f32>() / n.max(1) as f32;
    for v in rgb.iter_mut() {
        *v = ((*v - mean) * c + mean).clamp(0.0, 1.0);
    }
    for i in 0..n {
        let g = gray(rgb, i);
        for ch in 0..3 {
            let v = &mut rgb[ch * n + i];
            *v = ((*v - g) * s + g).clamp(0.0, 1.0);
        }
    }
    for v in rgb.iter_mut() {
        *v = *v * 2.0 - 1.0;
    }
}

// ---------------------------------------------------------------------------------------------
// Sources: single, paired, unpaired
// ---------------------------------------------------------------------------------------------

/// What a [`Loader`] draws from: a [`Dataset`], a [`PairedDataset`] or an
/// [`UnpairedDataset`].
pub trait Source {
    /// One augmented sample.
    type Item;
    /// One batch of samples, as tensors.
    type Batch;
    /// Number of samples in one epoch.
    fn epoch_len(&self) -> usize;
    /// Number of samples not yet known to be unusable (0 stops the loader).
    fn usable(&self) -> usize;
    /// Sample `index` (`< epoch_len`), augmented with randomness from `rng`; `None` when it
    /// cannot be decoded (it is then recorded as skipped).
    fn sample(&mut self, index: usize, augment: &Augment, rng: &mut Rng) -> Option<Self::Item>;
    /// Stacks samples into a batch.
    fn collate(items: &[Self::Item], device: &Device) -> candle_core::Result<Self::Batch>;
}

/// Stacks same-size images into a `(N, 3, H, W)` tensor.
pub fn images_to_tensor(images: &[&Image], device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = images
        .first()
        .map(|i| (i.width as usize, i.height as usize))
        .unwrap_or((0, 0));
    let mut data = Vec::with_capacity(images.len() * 3 * w * h);
    for img in images {
        if (img.width as usize, img.height as usize) != (w, h) || img.rgb.len() != 3 * w * h {
            candle_core::bail!("images of a batch differ in size");
        }
        data.extend_from_slice(&img.rgb);
    }
    Tensor::from_vec(data, (images.len(), 3, h, w), device)
}

impl Source for Dataset {
    type Item = Image;
    type Batch = Tensor;

    fn epoch_len(&self) -> usize {
        self.len()
    }

    fn usable(&self) -> usize {
        self.len() - self.bad_count()
    }

    fn sample(&mut self, index: usize, augment: &Augment, rng: &mut Rng) -> Option<Image> {
        let img = self.load(index)?;
        Some(augment.apply(&img, rng))
    }

    fn collate(items: &[Image], device: &Device) -> candle_core::Result<Tensor> {
        images_to_tensor(&items.iter().collect::<Vec<_>>(), device)
    }
}

/// A batch of aligned or unaligned pairs, each `(N, 3, crop, crop)` in `[-1, 1]`.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// Domain A (pix2pix input / CycleGAN domain A).
    pub a: Tensor,
    /// Domain B (pix2pix target / CycleGAN domain B).
    pub b: Tensor,
}

fn collate_pairs(items: &[(Image, Image)], device: &Device) -> candle_core::Result<PairBatch> {
    let a: Vec<&Image> = items.iter().map(|p| &p.0).collect();
    let b: Vec<&Image> = items.iter().map(|p| &p.1).collect();
    Ok(PairBatch {
        a: images_to_tensor(&a, device)?,
        b: images_to_tensor(&b, device)?,
    })
}

/// Splits a side-by-side AB image (the reference's aligned format) into its left (A) and
/// right (B) halves; for an odd width B is one column wider, as in the reference.
pub fn split_ab(img: &Image) -> (Image, Image) {
    let w2 = img.width / 2;
    let half = |x: u32, w: u32| {
        atelier_imaging::crop(
            img,
            atelier_imaging::Rect {
                x,
                y: 0,
                w,
                h: img.height,
            },
        )
    };
    (half(0, w2), half(w2, img.width - w2))
}

#[derive(Debug)]
enum Paired {
    Aligned(Dataset),
    Matched {
        a: Dataset,
        b: Dataset,
        pairs: Vec<(usize, usize)>,
        bad: Vec<bool>,
    },
}

/// Aligned pairs for pix2pix: either side-by-side AB images or two folders matched by file
/// stem. The same crop, flip and jitter are applied to both images of a pair.
#[derive(Debug)]
pub struct PairedDataset {
    inner: Paired,
    warnings: Vec<(PathBuf, String)>,
}

impl PairedDataset {
    /// Side-by-side AB images (left half A, right half B) in one folder or zip archive.
    ///
    /// # Errors
    /// As [`Dataset::open`].
    pub fn aligned(path: impl AsRef<Path>) -> Result<PairedDataset> {
        Ok(PairedDataset {
            inner: Paired::Aligned(Dataset::open(path)?),
            warnings: Vec::new(),
        })
    }

    /// Two folders (or archives) whose images are paired by file stem (`x.png` in A with
    /// `x.jpg` in B). Unmatched files are skipped with a warning (see
    /// [`skipped`](Self::skipped)); a second image with the same stem in one folder is
    /// skipped too.
    ///
    /// # Errors
    /// As [`Dataset::open`], and [`DataError::NoMatches`] (listing the unmatched names) when
    /// no stem is in both.
    pub fn matched(a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<PairedDataset> {
        let (a, b) = (Dataset::open(a)?, Dataset::open(b)?);
        let mut warnings = Vec::new();
        let mut by_stem: HashMap<&str, usize> = HashMap::new();
        for (j, item) in b.items.iter().enumerate() {
            if by_stem.contains_key(item.stem.as_str()) {
                warnings.push((item.path.clone(), "duplicate file stem in B".to_string()));
            } else {
                by_stem.insert(&item.stem, j);
            }
        }
        let mut pairs = Vec::new();
        let mut used = vec![false; b.len()];
        let mut unmatched_a = Vec::new();
        for (i, item) in a.items.iter().enumerate() {
            match by_stem.get(item.stem.as_str()) {
                Some(&j) if !used[j] => {
                    used[j] = true;
                    pairs.push((i, j));
                }
                Some(_) => {
                    warnings.push((item.path.clone(), "duplicate file stem in A".to_string()))
                }
                None => {
                    unmatched_a.push(item.stem.clone());
                    warnings.push((item.path.clone(), "no file with this stem in B".to_string()));
                }
            }
        }
        let mut unmatched_b = Vec::new();
        for (j, item) in b.items.iter().enumerate() {
            if !used[j] && by_stem.get(item.stem.as_str()) == Some(&j) {
                unmatched_b.push(item.stem.clone());
                warnings.push((item.path.clone(), "no file with this stem in A".to_string()));
            }
        }
        if pairs.is_empty() {
            return Err(DataError::NoMatches {
                a: a.root.clone(),
                b: b.root.clone(),
                unmatched_a,
                unmatched_b,
            });
        }
        let bad = vec![false; pairs.len()];
        Ok(PairedDataset {
            inner: Paired::Matched { a, b, pairs, bad },
            warnings,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        match &self.inner {
            Paired::Aligned(d) => d.len(),
            Paired::Matched { pairs, .. } => pairs.len(),
        }
    }

    /// Whether there are no pairs (never true once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything skipped: unmatched or duplicate names, non-images, undecodable images.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        let mut out = self.warnings.clone();
        match &self.inner {
            Paired::Aligned(d) => out.extend_from_slice(d.skipped()),
            Paired::Matched { a, b, .. } => {
                out.extend_from_slice(a.skipped());
                out.extend_from_slice(b.skipped());
            }
        }
        out
    }

    /// The stems of pair `index` (equal for matched folders).
    pub fn stem(&self, index: usize) -> Option<&str> {
        match &self.inner {
            Paired::Aligned(d) => d.stem(index),
            Paired::Matched { a, pairs, .. } => a.stem(pairs.get(index)?.0),
        }
    }
}

impl Source for PairedDataset {
    type Item = (Image, Image);
    type Batch = PairBatch;

    fn epoch_len(&self) -> usize {
        self.len()
    }

    fn usable(&self) -> usize {
        match &self.inner {
            Paired::Aligned(d) => d.usable(),
            Paired::Matched { bad, .. } => bad.iter().filter(|b| !**b).count(),
        }
    }

    fn sample(&mut self, index: usize, augment: &Augment, rng: &mut Rng) -> Option<(Image, Image)> {
        let (img_a, img_b) = match &mut self.inner {
            Paired::Aligned(d) => {
                let img = d.load(index)?;
                if img.width < 2 {
                    d.mark_bad(index, "too narrow to split into A and B halves".into());
                    return None;
                }
                split_ab(&img)
            }
            Paired::Matched { a, b, pairs, bad } => {
                let (i, j) = *pairs.get(index)?;
                if bad[index] {
                    return None;
                }
                // Both are loaded (and recorded) even if A fails, so the skip list is complete.
                let (ia, ib) = (a.load(i), b.load(j));
                match (ia, ib) {
                    (Some(x), Some(y)) => (x, y),
                    _ => {
                        bad[index] = true;
                        return None;
                    }
                }
            }
        };
        let p = augment.params(rng);
        Some((
            augment.apply_with(&img_a, &p),
            augment.apply_with(&img_b, &p),
        ))
    }

    fn collate(items: &[(Image, Image)], device: &Device) -> candle_core::Result<PairBatch> {
        collate_pairs(items, device)
    }
}

/// Two independent image sets for CycleGAN (the reference's unaligned mode): an epoch walks
/// `max(|A|, |B|)` indices (A index modulo `|A|`), and each A image is paired with a random B
/// image. A and B get independent crops and flips.
#[derive(Debug)]
pub struct UnpairedDataset {
    /// Domain A.
    pub a: Dataset,
    /// Domain B.
    pub b: Dataset,
}

impl UnpairedDataset {
    /// Opens two folders or archives.
    ///
    /// # Errors
    /// As [`Dataset::open`].
    pub fn open(a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<UnpairedDataset> {
        Ok(UnpairedDataset {
            a: Dataset::open(a)?,
            b: Dataset::open(b)?,
        })
    }

    /// Everything skipped in A and B.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        let mut out = self.a.skipped().to_vec();
        out.extend_from_slice(self.b.skipped());
        out
    }
}

impl Source for UnpairedDataset {
    type Item = (Image, Image);
    type Batch = PairBatch;

    fn epoch_len(&self) -> usize {
        self.a.len().max(self.b.len())
    }

    fn usable(&self) -> usize {
        if self.b.usable() == 0 {
            0
        } else {
            self.a.usable()
        }
    }

    fn sample(&mut self, index: usize, augment: &Augment, rng: &mut Rng) -> Option<(Image, Image)> {
        let img_a = self.a.load(index % self.a.len())?;
        // Random B; an undecodable B is replaced by another random draw.
        let img_b = loop {
            if self.b.usable() == 0 {
                return None;
            }
            let j = rng.below(self.b.len());
            if let Some(img) = self.b.load(j) {
                break img;
            }
        };
        let a = augment.apply(&img_a, rng);
        let b = augment.apply(&img_b, rng);
        Some((a, b))
    }

    fn collate(items: &[(Image, Image)], device: &Device) -> candle_core::Result<PairBatch> {
        collate_pairs(items, device)
    }
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

/// Everything a [`Loader`] needs to continue where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoaderState {
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Next position in the current epoch's shuffled order.
    pub position: usize,
    /// Generator state at the start of the current epoch.
    pub rng: u64,
}

/// Produces shuffled, augmented batches from a [`Source`], epoch after epoch.
///
/// Each epoch visits every index once in an order shuffled (Fisher–Yates) with a generator
/// started from [`LoaderState::rng`]; the next epoch's state is drawn from the same generator
/// afterwards. Sample `p` of the epoch is augmented with its own generator seeded from
/// `(rng, p)`. Batches always hold `batch_size` samples and may span an epoch boundary;
/// unusable samples are skipped (the next position is taken instead).
#[derive(Debug)]
pub struct Loader<S: Source> {
    source: S,
    augment: Augment,
    batch_size: usize,
    device: Device,
    state: LoaderState,
    order: Vec<usize>,
    next_epoch_rng: u64,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut r = Rng::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64()
}

impl<S: Source> Loader<S> {
    /// A loader starting at epoch 0 with `seed`.
    ///
    /// # Errors
    /// [`DataError::Config`] for a zero batch size, an empty source or invalid `augment`.
    pub fn new(
        source: S,
        augment: Augment,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Loader<S>> {
        augment.validate()?;
        if batch_size == 0 {
            return Err(DataError::Config("batch size must be positive".into()));
        }
        if source.epoch_len() == 0 {
            return Err(DataError::Config("the dataset is empty".into()));
        }
        let mut loader = Loader {
            source,
            augment,
            batch_size,
            device: device.clone(),
            state: LoaderState {
                epoch: 0,
                position: 0,
                rng: seed,
            },
            order: Vec::new(),
            next_epoch_rng: 0,
        };
        loader.shuffle();
        Ok(loader)
    }

    /// Draws the current epoch's order from `state.rng`.
    fn shuffle(&mut self) {
        let mut rng = Rng::new(self.state.rng);
        let n = self.source.epoch_len();
        self.order = (0..n).collect();
        for i in (1..n).rev() {
            let j = rng.below(i + 1);
            self.order.swap(i, j);
        }
        self.next_epoch_rng = rng.next_u64();
    }

    /// The state to checkpoint (the position of the next batch).
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a checkpointed state (same source, augmentation and batch size assumed).
    ///
    /// # Errors
    /// [`DataError::Config`] when the position is past the end of the epoch.
    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if state.position > self.source.epoch_len() {
            return Err(DataError::Config(format!(
                "loader position {} is past the epoch length {}",
                state.position,
                self.source.epoch_len()
            )));
        }
        self.state = state;
        self.shuffle();
        Ok(())
    }

    /// Current epoch (0-based).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Full batches per epoch (rounded up).
    pub fn batches_per_epoch(&self) -> usize {
        self.source.epoch_len().div_ceil(self.batch_size)
    }

    /// The source (for [`Dataset::skipped`] and friends).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The augmentation.
    pub fn augment(&self) -> &Augment {
        &self.augment
    }

    /// Next sample (advancing across epochs and skipping unusable samples).
    fn next_item(&mut self) -> Result<S::Item> {
        loop {
            if self.source.usable() == 0 {
                return Err(DataError::NothingReadable {
                    count: self.source.epoch_len(),
                });
            }
            if self.state.position >= self.order.len() {
                self.state = LoaderState {
                    epoch: self.state.epoch + 1,
                    position: 0,
                    rng: self.next_epoch_rng,
                };
                self.shuffle();
            }
            let p = self.state.position;
            let index = self.order[p];
            self.state.position += 1;
            let mut rng = Rng::new(mix(self.state.rng, p as u64));
            if let Some(item) = self.source.sample(index, &self.augment, &mut rng) {
                return Ok(item);
            }
        }
    }

    /// The next batch: a `(N, 3, crop, crop)` tensor in `[-1, 1]` for a [`Dataset`], a
    /// [`PairBatch`] for paired and unpaired sources.
    ///
    /// # Errors
    /// [`DataError::NothingReadable`] when no image of the source decodes, or a tensor error.
    pub fn next_batch(&mut self) -> Result<S::Batch> {
        let mut items = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size {
            items.push(self.next_item()?);
        }
        Ok(S::collate(&items, &self.device)?)
    }
}
