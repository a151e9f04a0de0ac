//! Image comparison metrics.

/// Peak signal-to-noise ratio in dB between two equally long sample buffers whose values
/// span `peak_range` (2.0 for `[-1, 1]` data, 1.0 for `[0, 1]`, 255.0 for bytes).
///
/// Returns `f64::INFINITY` for identical inputs, and `NaN` when the lengths differ, the
/// inputs are empty or contain NaN.
pub fn psnr(a: &[f32], b: &[f32], peak_range: f64) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    from_mse(sse / a.len() as f64, peak_range)
}

/// [`psnr`] for 8-bit samples (peak 255).
pub fn psnr_u8(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let sse: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = u64::from(x.abs_diff(y));
            d * d
        })
        .sum();
    from_mse(sse as f64 / a.len() as f64, 255.0)
}

fn from_mse(mse: f64, peak: f64) -> f64 {
    if mse.is_nan() {
        f64::NAN
    } else if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_infinite() {
        let a = [0.1f32, -0.5, 0.9];
        assert_eq!(psnr(&a, &a, 2.0), f64::INFINITY);
        assert_eq!(psnr_u8(&[1, 2, 3], &[1, 2, 3]), f64::INFINITY);
    }

    #[test]
    fn known_values() {
        // MSE 1 with peak 255 -> 48.13 dB.
        let p = psnr_u8(&[10, 20], &[11, 19]);
        assert!((p - 48.1308).abs() < 1e-3, "{p}");
        // Max error on [-1, 1] data: 0 dB.
        assert!(psnr(&[-1.0], &[1.0], 2.0).abs() < 1e-12);
        // The same error in both representations gives the same PSNR.
        let pf = psnr(&[crate::norm_u8(10)], &[crate::norm_u8(11)], 2.0);
        let pu = psnr_u8(&[10], &[11]);
        assert!((pf - pu).abs() < 1e-3, "{pf} vs {pu}");
    }

    #[test]
    fn mismatched_or_empty_is_nan() {
        assert!(psnr(&[0.0], &[0.0, 1.0], 2.0).is_nan());
        assert!(psnr(&[], &[], 2.0).is_nan());
        assert!(psnr_u8(&[], &[]).is_nan());
        assert!(psnr(&[f32::NAN], &[0.0], 2.0).is_nan());
    }
}
