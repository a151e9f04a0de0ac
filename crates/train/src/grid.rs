//! Sample grids: batches of images in `[-1, 1]` laid out in one picture with a 2-pixel white
//! gutter.

use atelier_imaging::Image;
use candle_core::{DType, Tensor};

use crate::TrainResult;

const GAP: usize = 2;

/// Lays out a batch `(N, 3, H, W)` row by row, `cols` images per row.
pub fn grid(batch: &Tensor, cols: usize) -> TrainResult<Image> {
    let (n, _, h, w) = batch.dims4()?;
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let data = to_rgb(batch)?;
    let mut canvas = Canvas::new(rows, cols, h, w);
    for i in 0..n {
        canvas.put(
            i / cols,
            i % cols,
            &data[i * 3 * h * w..(i + 1) * 3 * h * w],
        );
    }
    canvas.into_image()
}

/// Lays out several same-shaped batches as columns: row `i` shows image `i` of every batch
/// (e.g. input | output | target).
pub fn columns(batches: &[Tensor]) -> TrainResult<Image> {
    let Some(first) = batches.first() else {
        return Ok(Image::filled(1, 1, [1.0; 3]));
    };
    let (n, _, h, w) = first.dims4()?;
    let mut canvas = Canvas::new(n, batches.len(), h, w);
    for (c, b) in batches.iter().enumerate() {
        if b.dims4()? != (n, 3, h, w) {
            return Err(crate::TrainError::Config(
                "sample columns differ in shape".into(),
            ));
        }
        let data = to_rgb(b)?;
        for r in 0..n {
            canvas.put(r, c, &data[r * 3 * h * w..(r + 1) * 3 * h * w]);
        }
    }
    canvas.into_image()
}

fn to_rgb(batch: &Tensor) -> TrainResult<Vec<f32>> {
    let (_, c, _, _) = batch.dims4()?;
    let b = if c == 1 {
        batch.repeat((1, 3, 1, 1))?
    } else {
        batch.narrow(1, 0, 3)?
    };
    Ok(b.to_dtype(DType::F32)?
        .clamp(-1f32, 1f32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

struct Canvas {
    width: usize,
    height: usize,
    h: usize,
    w: usize,
    rgb: Vec<f32>,
}

impl Canvas {
    fn new(rows: usize, cols: usize, h: usize, w: usize) -> Self {
        let width = cols * w + (cols + 1) * GAP;
        let height = rows * h + (rows + 1) * GAP;
        Self {
            width,
            height,
            h,
            w,
            rgb: vec![1.0; 3 * width * height],
        }
    }

    fn put(&mut self, row: usize, col: usize, chw: &[f32]) {
        let (x0, y0) = (GAP + col * (self.w + GAP), GAP + row * (self.h + GAP));
        let plane = self.width * self.height;
        for ch in 0..3 {
            for y in 0..self.h {
                let src = &chw[ch * self.h * self.w + y * self.w..][..self.w];
                let dst = ch * plane + (y0 + y) * self.width + x0;
                self.rgb[dst..dst + self.w].copy_from_slice(src);
            }
        }
    }

    fn into_image(self) -> TrainResult<Image> {
        Image::new(self.width as u32, self.height as u32, self.rgb, None)
            .map_err(|e| crate::TrainError::Config(format!("sample grid: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn images_land_in_their_cells() {
        // Two 2×2 images: all -1 (black) and all 1 (white), in one row.
        let a = Tensor::full(-1f32, (1, 3, 2, 2), &Device::Cpu).unwrap();
        let b = Tensor::full(0.5f32, (1, 3, 2, 2), &Device::Cpu).unwrap();
        let batch = Tensor::cat(&[&a, &b], 0).unwrap();
        let img = grid(&batch, 2).unwrap();
        assert_eq!(
            (img.width, img.height),
            (2 * 2 + 3 * GAP as u32, 2 + 2 * GAP as u32)
        );
        let px = |x: usize, y: usize| img.rgb[y * img.width as usize + x];
        assert_eq!(px(GAP, GAP), -1.0);
        assert_eq!(px(2 * GAP + 2, GAP), 0.5);
        assert_eq!(px(0, 0), 1.0);
        let cols = columns(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(cols.width, img.width);
    }
}
