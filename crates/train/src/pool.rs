//! The image pool of CycleGAN (Shrivastava et al.): the discriminator sees a mix of the latest
//! generated images and older ones, which stabilises training. Same semantics as the reference
//! `ImagePool`: while the pool is not full every image is stored and returned; afterwards each
//! image is, with probability ½, swapped with a random stored one (the stored one is returned).

use candle_core::{Result, Tensor};

use crate::Rng;

#[derive(Debug, Clone)]
pub struct ImagePool {
    size: usize,
    images: Vec<Tensor>,
}

impl ImagePool {
    /// A pool of `size` images; 0 disables it (images pass through).
    pub fn new(size: usize) -> Self {
        Self {
            size,
            images: Vec::new(),
        }
    }

    /// Stored images (for checkpoints).
    pub fn images(&self) -> &[Tensor] {
        &self.images
    }

    /// Restores stored images from a checkpoint.
    pub fn restore(&mut self, images: Vec<Tensor>) {
        self.images = images;
        self.images.truncate(self.size);
    }

    /// Returns a batch for the discriminator, given a batch `(N, C, H, W)` of new fakes.
    pub fn query(&mut self, batch: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        if self.size == 0 {
            return Ok(batch.clone());
        }
        let n = batch.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let img = batch.narrow(0, i, 1)?.detach();
            if self.images.len() < self.size {
                self.images.push(img.clone());
                out.push(img);
            } else if rng.uniform() > 0.5 {
                let j = rng.below(self.size);
                let old = std::mem::replace(&mut self.images[j], img);
                out.push(old);
            } else {
                out.push(img);
            }
        }
        Tensor::cat(&out, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn img(v: f32) -> Tensor {
        Tensor::full(v, (1, 1, 2, 2), &Device::Cpu).unwrap()
    }

    fn value(t: &Tensor) -> f32 {
        t.flatten_all()
            .unwrap()
            .get(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fills_first_then_swaps_about_half_the_time() {
        let mut pool = ImagePool::new(3);
        let mut rng = Rng::new(42);
        for i in 0..3 {
            assert_eq!(
                value(&pool.query(&img(i as f32), &mut rng).unwrap()),
                i as f32
            );
        }
        let mut old = 0;
        let n = 400;
        for i in 0..n {
            let v = 100.0 + i as f32;
            let out = value(&pool.query(&img(v), &mut rng).unwrap());
            if out != v {
                old += 1;
                assert!(out < v, "a stored image is older than the new one");
            }
        }
        assert!((150..250).contains(&old), "{old} of {n} came from the pool");
        assert_eq!(pool.images().len(), 3);
    }

    #[test]
    fn same_seed_same_choices() {
        let run = || {
            let mut pool = ImagePool::new(2);
            let mut rng = Rng::new(9);
            (0..50)
                .map(|i| value(&pool.query(&img(i as f32), &mut rng).unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
