//! pytorch-fid's input pipeline, bit for bit where it matters.
//!
//! 1. 8-bit RGB, scaled to `[0, 1]` (torchvision `ToTensor`);
//! 2. `F.interpolate(size=(299, 299), mode='bilinear', align_corners=False)`: half-pixel
//!    centres, no antialiasing, applied even to 299×299 inputs (where it is the identity);
//! 3. `2x − 1`.

/// Side of the network input.
pub const SIZE: usize = 299;

/// One output coordinate of a bilinear resize: the two source indices and their weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// PyTorch's `area_pixel_compute_source_index` for `align_corners=False`, in `f32`.
fn taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|d| {
            let s = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (s as usize).min(n_in - 1);
            let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
            let w1 = s - i0 as f32;
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// The network input (3 × 299 × 299, CHW, values in `[-1, 1]`) of an 8-bit RGB image given
/// as `width × height` row-major pixels (`rgb.len() == 3 · width · height`).
///
/// # Panics
/// If the buffer does not match the dimensions or an axis is empty (callers decode through
/// `atelier_imaging`, which guarantees both).
pub fn input_from_rgb8(rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
    assert!(width > 0 && height > 0 && rgb.len() == 3 * width * height);
    let tx = taps(width, SIZE);
    let ty = taps(height, SIZE);
    let mut out = vec![0f32; 3 * SIZE * SIZE];
    let at = |c: usize, y: usize, x: usize| f32::from(rgb[(y * width + x) * 3 + c]) / 255.0;
    for c in 0..3 {
        let plane = &mut out[c * SIZE * SIZE..(c + 1) * SIZE * SIZE];
        for (oy, t) in ty.iter().enumerate() {
            let row = &mut plane[oy * SIZE..(oy + 1) * SIZE];
            for (o, u) in row.iter_mut().zip(&tx) {
                let top = u.w0 * at(c, t.i0, u.i0) + u.w1 * at(c, t.i0, u.i1);
                let bottom = u.w0 * at(c, t.i1, u.i0) + u.w1 * at(c, t.i1, u.i1);
                let v = t.w0 * top + t.w1 * bottom;
                *o = 2.0 * v - 1.0;
            }
        }
    }
    out
}

/// The 256×256 synthetic test image of the weights' README: `R = x`, `G = y`,
/// `B = (x + y) / 2` (integer division).
pub fn synthetic_gradient_256() -> Vec<u8> {
    let mut v = Vec::with_capacity(256 * 256 * 3);
    for y in 0..256u32 {
        for x in 0..256u32 {
            v.extend([x as u8, y as u8, ((x + y) / 2) as u8]);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checkpoints the weights' README gives for pytorch-fid's preprocessing of the
    /// synthetic image (sum of the network input and its first values).
    #[test]
    fn synthetic_input_matches_pytorch_fid() {
        let x = input_from_rgb8(&synthetic_gradient_256(), 256, 256);
        let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - -175.2922).abs() < 2e-3, "sum {sum}");
        for (got, want) in x[..4].iter().zip([-1.0, -0.993849, -0.987134, -0.980418]) {
            assert!((got - want).abs() < 2e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn resize_to_same_size_is_identity() {
        let rgb: Vec<u8> = (0..SIZE * SIZE * 3).map(|i| (i * 7 % 251) as u8).collect();
        let x = input_from_rgb8(&rgb, SIZE, SIZE);
        for c in 0..3 {
            for i in [0, 1, 500, SIZE * SIZE - 1] {
                let want = f32::from(rgb[i * 3 + c]) / 255.0 * 2.0 - 1.0;
                assert!((x[c * SIZE * SIZE + i] - want).abs() < 1e-6);
            }
        }
    }
}
