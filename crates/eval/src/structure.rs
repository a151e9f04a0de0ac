//! Structure metrics: how much of a photo's structure a translation keeps, and how sharp it is.
//!
//! Both compare a photo with its translation on 256×256 grayscale versions (BT.601 luma of the
//! RGB in `[0, 1]`, resized with Pillow's bicubic filter) through the Sobel gradient magnitude
//! `g = sqrt(gx² + gy²)`, `gx` the 3×3 kernel `[1,2,1]ᵀ ⊗ [−1,0,1]` and `gy` its transpose,
//! on interior pixels only (254×254 values):
//!
//! * **edge correlation**: the Pearson correlation of `g(photo)` and `g(translation)`;
//! * **sharpness**: `mean g(translation) / mean g(photo)`. Blur lowers it below 1; noise and
//!   checkerboards raise it.
//!
//! Over a set of images each is averaged over the images ([`StructureSummary`]). The reference
//! computation is `tests/reference/structure_reference.py` (NumPy + Pillow).

use atelier_imaging::Filter;
use atelier_imaging::Image;

use crate::{Error, Result};

/// The side both images are resized to.
pub const STRUCTURE_SIDE: u32 = 256;

/// Mean Sobel magnitude under which a photo counts as flat (values in `[0, 1]`; one grey
/// level's step is 1/255 ≈ 0.004).
const FLAT: f64 = 1e-4;

/// The two metrics of one photo and its translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Structure {
    /// Pearson correlation of the Sobel magnitudes (`NaN` if either is constant or the photo is
    /// flat).
    pub edge_correlation: f64,
    /// Mean Sobel magnitude of the translation over that of the photo (`NaN` if the photo is
    /// flat).
    pub sharpness: f64,
}

/// Means (and standard deviations) of [`Structure`] over image pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StructureSummary {
    pub edge_correlation: f64,
    pub edge_correlation_std: f64,
    pub sharpness: f64,
    pub sharpness_std: f64,
    /// Pairs averaged (those whose metrics are defined).
    pub images: usize,
}

/// BT.601 luma of `img` resized (bicubic) to `side`×`side`, values in `[0, 1]`.
pub fn gray(img: &Image, side: u32) -> Vec<f32> {
    let n = img.pixel_count();
    let (r, rest) = img.rgb.split_at(n);
    let (g, b) = rest.split_at(n);
    // One gray plane, resized as a 3-channel image whose channels are equal.
    let y: Vec<f32> = (0..n)
        .map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i])
        .collect();
    let mut planes = Vec::with_capacity(3 * n);
    for _ in 0..3 {
        planes.extend_from_slice(&y);
    }
    let gray = Image::new(img.width, img.height, planes, None).expect("same size as the input");
    let out = atelier_imaging::resize_with(&gray, side, side, Filter::CatmullRom);
    out.rgb[..(side * side) as usize].to_vec()
}

/// Sobel gradient magnitude on the interior `(side−2)²` pixels of a `side`×`side` plane.
pub fn sobel_magnitude(plane: &[f32], side: usize) -> Vec<f64> {
    assert_eq!(plane.len(), side * side, "plane of {side}×{side}");
    let p = |y: usize, x: usize| plane[y * side + x] as f64;
    let mut out = Vec::with_capacity(side.saturating_sub(2).pow(2));
    for y in 1..side.saturating_sub(1) {
        for x in 1..side - 1 {
            let gx = (p(y - 1, x + 1) - p(y - 1, x - 1))
                + 2.0 * (p(y, x + 1) - p(y, x - 1))
                + (p(y + 1, x + 1) - p(y + 1, x - 1));
            let gy = (p(y + 1, x - 1) - p(y - 1, x - 1))
                + 2.0 * (p(y + 1, x) - p(y - 1, x))
                + (p(y + 1, x + 1) - p(y - 1, x + 1));
            out.push((gx * gx + gy * gy).sqrt());
        }
    }
    out
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

/// The metrics of one photo and its translation (any sizes: both are resized to 256²).
pub fn structure(photo: &Image, translated: &Image) -> Structure {
    let side = STRUCTURE_SIDE as usize;
    let gp = sobel_magnitude(&gray(photo, STRUCTURE_SIDE), side);
    let gt = sobel_magnitude(&gray(translated, STRUCTURE_SIDE), side);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // A photo without edges (resampling leaves rounding-level gradients) has no structure to
    // keep: both metrics are undefined.
    if mean(&gp) < FLAT {
        return Structure {
            edge_correlation: f64::NAN,
            sharpness: f64::NAN,
        };
    }
    Structure {
        edge_correlation: pearson(&gp, &gt),
        sharpness: mean(&gt) / mean(&gp),
    }
}

/// Means and standard deviations of the metrics over `pairs` (photo, translation). Pairs whose
/// metrics are undefined (a flat image) are left out; an error if none is left.
pub fn structure_summary(pairs: &[(&Image, &Image)]) -> Result<StructureSummary> {
    let all: Vec<Structure> = pairs
        .iter()
        .map(|(p, t)| structure(p, t))
        .filter(|s| s.edge_correlation.is_finite() && s.sharpness.is_finite())
        .collect();
    if all.is_empty() {
        return Err(Error::Samples(
            "structure metrics: no image pair with defined metrics (all flat?)".into(),
        ));
    }
    let stats = |f: &dyn Fn(&Structure) -> f64| {
        let n = all.len() as f64;
        let m = all.iter().map(f).sum::<f64>() / n;
        let var = all.iter().map(|s| (f(s) - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    };
    let (ec, ec_std) = stats(&|s| s.edge_correlation);
    let (sh, sh_std) = stats(&|s| s.sharpness);
    Ok(StructureSummary {
        edge_correlation: ec,
        edge_correlation_std: ec_std,
        sharpness: sh,
        sharpness_std: sh_std,
        images: all.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise_image(side: u32, seed: u64) -> Image {
        let mut s = seed;
        let rgb = (0..3 * side * side)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        Image::new(side, side, rgb, None).unwrap()
    }

    #[test]
    fn an_image_against_itself_is_perfect() {
        let img = noise_image(64, 1);
        let s = structure(&img, &img);
        assert!((s.edge_correlation - 1.0).abs() < 1e-12, "{s:?}");
        assert!((s.sharpness - 1.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn blur_lowers_sharpness_and_a_colour_grade_keeps_structure() {
        let img = noise_image(256, 2);
        let blurred = atelier_imaging::resize_with(
            &atelier_imaging::resize_with(&img, 64, 64, Filter::CatmullRom),
            256,
            256,
            Filter::CatmullRom,
        );
        let s = structure(&img, &blurred);
        assert!(s.sharpness < 0.6, "blur: {s:?}");
        let graded = Image::new(
            256,
            256,
            img.rgb.iter().map(|v| 0.2 + 0.5 * v).collect(),
            None,
        )
        .unwrap();
        let g = structure(&img, &graded);
        assert!((g.edge_correlation - 1.0).abs() < 1e-6, "grade: {g:?}");
        assert!((g.sharpness - 0.5).abs() < 1e-3, "grade: {g:?}");
        let other = structure(&img, &noise_image(256, 3));
        assert!(other.edge_correlation.abs() < 0.05, "unrelated: {other:?}");
    }

    #[test]
    fn flat_images_are_left_out_of_the_summary() {
        let flat = Image::filled(32, 32, [0.5; 3]);
        let img = noise_image(32, 4);
        assert!(structure_summary(&[(&flat, &img)]).is_err());
        let s = structure_summary(&[(&flat, &img), (&img, &img)]).unwrap();
        assert_eq!(s.images, 1);
        assert!((s.edge_correlation - 1.0).abs() < 1e-12);
    }
}
