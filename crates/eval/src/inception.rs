//! The FID Inception-v3 network (pytorch-fid's `fid_inception_v3`) up to its 2048-d pool
//! features, on candle tensors.
//!
//! Every named layer is a "basic conv": `conv2d` without bias → inference batch norm
//! (eps 0.001) → ReLU. The batch norm is folded into the convolution at load time. The
//! FID-specific parts (why torchvision's Inception must not be used): the average pools of
//! blocks A, C and the first E exclude the zero padding from the divisor (TensorFlow
//! semantics), and the last E block pools its pool branch with a max.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// Length of the pool feature vector.
pub const FEATURES: usize = 2048;

/// Batch-norm epsilon of the TensorFlow graph.
const BN_EPS: f64 = 1e-3;

/// conv (BN folded in) → ReLU.
struct Basic {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl Basic {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.pad;
        let y = if ph == pw {
            x.conv2d(&self.w, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.w, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_add(&self.b)?.relu()?)
    }
}

/// How the pool branch of a block pools (3×3, stride 1, padding 1).
#[derive(Clone, Copy)]
enum Pool {
    /// Average over the in-image taps only (`count_include_pad=False`).
    AvgExcludePad,
    /// Max; the inputs are ReLU outputs (≥ 0), so zero padding never wins.
    Max,
}

fn pool3_same(x: &Tensor, kind: Pool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let xp = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    match kind {
        Pool::Max => Ok(xp.max_pool2d_with_stride(3, 1)?),
        Pool::AvgExcludePad => {
            // avg_pool2d divides by 9; rescale each position by 9 / (its in-image taps).
            let taps = |i: usize, n: usize| (i.min(1) + 1 + usize::from(i + 1 < n)) as f32;
            let mut f = Vec::with_capacity(h * w);
            for y in 0..h {
                for xx in 0..w {
                    f.push(9.0 / (taps(y, h) * taps(xx, w)));
                }
            }
            let f = Tensor::from_vec(f, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
            Ok(xp.avg_pool2d_with_stride(3, 1)?.broadcast_mul(&f)?)
        }
    }
}

fn max_pool3_s2(x: &Tensor) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(3, 2)?)
}

/// Reads the layers out of the weights file, checking names and shapes.
struct Loader {
    tensors: HashMap<String, Tensor>,
    used: HashSet<String>,
    path: String,
}

impl Loader {
    fn bad(&self, reason: String) -> Error {
        Error::Weights {
            path: self.path.clone(),
            reason,
        }
    }

    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| self.bad(format!("missing tensor `{key}`")))?;
        if t.dims() != shape {
            return Err(self.bad(format!(
                "tensor `{key}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        let t = t.to_dtype(DType::F32)?;
        self.used.insert(key.to_string());
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn basic(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        (kh, kw): (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Basic> {
        let w = self.get(&format!("{name}.conv.weight"), &[c_out, c_in, kh, kw])?;
        let gamma = self.get(&format!("{name}.bn.weight"), &[c_out])?;
        let beta = self.get(&format!("{name}.bn.bias"), &[c_out])?;
        let mean = self.get(&format!("{name}.bn.running_mean"), &[c_out])?;
        let var = self.get(&format!("{name}.bn.running_var"), &[c_out])?;
        let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
        let w = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let b = (beta - mean.mul(&scale)?)?.reshape((1, c_out, 1, 1))?;
        Ok(Basic { w, b, stride, pad })
    }

    fn c1(&mut self, name: &str, c_in: usize, c_out: usize) -> Result<Basic> {
        self.basic(name, c_in, c_out, (1, 1), 1, (0, 0))
    }
}

/// FIDInceptionA (`Mixed_5b/5c/5d`).
struct BlockA {
    b1: Basic,
    b5: [Basic; 2],
    dbl: [Basic; 3],
    pool: Basic,
}

impl BlockA {
    fn load(l: &mut Loader, n: &str, c_in: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            b1: l.c1(&format!("{n}.branch1x1"), c_in, 64)?,
            b5: [
                l.c1(&format!("{n}.branch5x5_1"), c_in, 48)?,
                l.basic(&format!("{n}.branch5x5_2"), 48, 64, (5, 5), 1, (2, 2))?,
            ],
            dbl: [
                l.c1(&format!("{n}.branch3x3dbl_1"), c_in, 64)?,
                l.basic(&format!("{n}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                l.basic(&format!("{n}.branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1))?,
            ],
            pool: l.c1(&format!("{n}.branch_pool"), c_in, pool_features)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b5 = chain(&self.b5, x)?;
        let dbl = chain(&self.dbl, x)?;
        let pool = self.pool.forward(&pool3_same(x, Pool::AvgExcludePad)?)?;
        Ok(Tensor::cat(&[b1, b5, dbl, pool], 1)?)
    }
}

/// InceptionB (`Mixed_6a`).
struct BlockB {
    b3: Basic,
    dbl: [Basic; 3],
}

impl BlockB {
    fn load(l: &mut Loader, n: &str, c_in: usize) -> Result<Self> {
        Ok(Self {
            b3: l.basic(&format!("{n}.branch3x3"), c_in, 384, (3, 3), 2, (0, 0))?,
            dbl: [
                l.c1(&format!("{n}.branch3x3dbl_1"), c_in, 64)?,
                l.basic(&format!("{n}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                l.basic(&format!("{n}.branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let dbl = chain(&self.dbl, x)?;
        Ok(Tensor::cat(&[b3, dbl, max_pool3_s2(x)?], 1)?)
    }
}

/// FIDInceptionC (`Mixed_6b..6e`).
struct BlockC {
    b1: Basic,
    b7: [Basic; 3],
    dbl: [Basic; 5],
    pool: Basic,
}

impl BlockC {
    fn load(l: &mut Loader, n: &str, c7: usize) -> Result<Self> {
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
        let mut k =
            |name: &str, ci: usize, co: usize, (ks, p): ((usize, usize), (usize, usize))| {
                l.basic(&format!("{n}.{name}"), ci, co, ks, 1, p)
            };
        Ok(Self {
            b1: k("branch1x1", 768, 192, ((1, 1), (0, 0)))?,
            b7: [
                k("branch7x7_1", 768, c7, ((1, 1), (0, 0)))?,
                k("branch7x7_2", c7, c7, row)?,
                k("branch7x7_3", c7, 192, col)?,
            ],
            dbl: [
                k("branch7x7dbl_1", 768, c7, ((1, 1), (0, 0)))?,
                k("branch7x7dbl_2", c7, c7, col)?,
                k("branch7x7dbl_3", c7, c7, row)?,
                k("branch7x7dbl_4", c7, c7, col)?,
                k("branch7x7dbl_5", c7, 192, row)?,
            ],
            pool: k("branch_pool", 768, 192, ((1, 1), (0, 0)))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b7 = chain(&self.b7, x)?;
        let dbl = chain(&self.dbl, x)?;
        let pool = self.pool.forward(&pool3_same(x, Pool::AvgExcludePad)?)?;
        Ok(Tensor::cat(&[b1, b7, dbl, pool], 1)?)
    }
}

/// InceptionD (`Mixed_7a`).
struct BlockD {
    b3: [Basic; 2],
    b7: [Basic; 4],
}

impl BlockD {
    fn load(l: &mut Loader, n: &str) -> Result<Self> {
        Ok(Self {
            b3: [
                l.c1(&format!("{n}.branch3x3_1"), 768, 192)?,
                l.basic(&format!("{n}.branch3x3_2"), 192, 320, (3, 3), 2, (0, 0))?,
            ],
            b7: [
                l.c1(&format!("{n}.branch7x7x3_1"), 768, 192)?,
                l.basic(&format!("{n}.branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
                l.basic(&format!("{n}.branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
                l.basic(&format!("{n}.branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = chain(&self.b3, x)?;
        let b7 = chain(&self.b7, x)?;
        Ok(Tensor::cat(&[b3, b7, max_pool3_s2(x)?], 1)?)
    }
}

/// FIDInceptionE_1 / E_2 (`Mixed_7b` / `Mixed_7c`).
struct BlockE {
    b1: Basic,
    b3_1: Basic,
    b3_2: [Basic; 2],
    dbl_1: [Basic; 2],
    dbl_3: [Basic; 2],
    pool: Basic,
    pool_kind: Pool,
}

impl BlockE {
    fn load(l: &mut Loader, n: &str, c_in: usize, pool_kind: Pool) -> Result<Self> {
        let mut k = |name: &str, ci: usize, co: usize, ks: (usize, usize), p: (usize, usize)| {
            l.basic(&format!("{n}.{name}"), ci, co, ks, 1, p)
        };
        Ok(Self {
            b1: k("branch1x1", c_in, 320, (1, 1), (0, 0))?,
            b3_1: k("branch3x3_1", c_in, 384, (1, 1), (0, 0))?,
            b3_2: [
                k("branch3x3_2a", 384, 384, (1, 3), (0, 1))?,
                k("branch3x3_2b", 384, 384, (3, 1), (1, 0))?,
            ],
            dbl_1: [
                k("branch3x3dbl_1", c_in, 448, (1, 1), (0, 0))?,
                k("branch3x3dbl_2", 448, 384, (3, 3), (1, 1))?,
            ],
            dbl_3: [
                k("branch3x3dbl_3a", 384, 384, (1, 3), (0, 1))?,
                k("branch3x3dbl_3b", 384, 384, (3, 1), (1, 0))?,
            ],
            pool: k("branch_pool", c_in, 192, (1, 1), (0, 0))?,
            pool_kind,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let t = self.b3_1.forward(x)?;
        let (a2, b2) = (self.b3_2[0].forward(&t)?, self.b3_2[1].forward(&t)?);
        let d = chain(&self.dbl_1, x)?;
        let (a3, b3) = (self.dbl_3[0].forward(&d)?, self.dbl_3[1].forward(&d)?);
        let pool = self.pool.forward(&pool3_same(x, self.pool_kind)?)?;
        Ok(Tensor::cat(&[b1, a2, b2, a3, b3, pool], 1)?)
    }
}

fn chain(layers: &[Basic], x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    for l in layers {
        y = l.forward(&y)?;
    }
    Ok(y)
}

/// The FID Inception-v3 feature extractor.
pub struct Inception {
    stem: [Basic; 5],
    a: [BlockA; 3],
    b: BlockB,
    c: [BlockC; 4],
    d: BlockD,
    e: [BlockE; 2],
}

impl Inception {
    /// Loads `fid_inception_v3.safetensors` (pytorch-fid key names; see the README for where
    /// to get it). Every tensor is checked by name and shape, and a file with tensors the
    /// network does not use is refused, so a wrong file fails here, not with odd numbers.
    ///
    /// # Errors
    /// [`Error::Weights`] when the file is unreadable or not these weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let display = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Weights {
                path: display,
                reason: "no such file (see the README's \"Quality metrics\" section for how to \
                         obtain fid_inception_v3.safetensors)"
                    .into(),
            });
        }
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| Error::Weights {
            path: display.clone(),
            reason: format!("not a readable safetensors file ({e})"),
        })?;
        let mut l = Loader {
            tensors,
            used: HashSet::new(),
            path: display,
        };
        let net = Self::build(&mut l)?;
        let mut unused: Vec<&String> = l.tensors.keys().filter(|k| !l.used.contains(*k)).collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(l.bad(format!(
                "{} tensor(s) the network does not use, e.g. `{}`",
                unused.len(),
                unused[0]
            )));
        }
        Ok(net)
    }

    fn build(l: &mut Loader) -> Result<Self> {
        Ok(Self {
            stem: [
                l.basic("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0))?,
                l.basic("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?,
                l.basic("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
                l.c1("Conv2d_3b_1x1", 64, 80)?,
                l.basic("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))?,
            ],
            a: [
                BlockA::load(l, "Mixed_5b", 192, 32)?,
                BlockA::load(l, "Mixed_5c", 256, 64)?,
                BlockA::load(l, "Mixed_5d", 288, 64)?,
            ],
            b: BlockB::load(l, "Mixed_6a", 288)?,
            c: [
                BlockC::load(l, "Mixed_6b", 128)?,
                BlockC::load(l, "Mixed_6c", 160)?,
                BlockC::load(l, "Mixed_6d", 160)?,
                BlockC::load(l, "Mixed_6e", 192)?,
            ],
            d: BlockD::load(l, "Mixed_7a")?,
            e: [
                BlockE::load(l, "Mixed_7b", 1280, Pool::AvgExcludePad)?,
                BlockE::load(l, "Mixed_7c", 2048, Pool::Max)?,
            ],
        })
    }

    /// Pool features `(N, 2048)` of a preprocessed batch `(N, 3, 299, 299)` (see
    /// [`crate::preprocess`]).
    ///
    /// # Errors
    /// [`Error::Samples`] for a batch of another shape, else tensor errors.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let size = crate::preprocess::SIZE;
        match x.dims() {
            &[_, 3, h, w] if h == size && w == size => {}
            d => {
                return Err(Error::Samples(format!(
                    "Inception input must be (N, 3, {size}, {size}), got {d:?}"
                )))
            }
        }
        let x = x.to_dtype(DType::F32)?;
        let mut y = self.stem[0].forward(&x)?;
        y = self.stem[1].forward(&y)?;
        y = self.stem[2].forward(&y)?;
        y = max_pool3_s2(&y)?;
        y = self.stem[3].forward(&y)?;
        y = self.stem[4].forward(&y)?;
        y = max_pool3_s2(&y)?;
        for a in &self.a {
            y = a.forward(&y)?;
        }
        y = self.b.forward(&y)?;
        for c in &self.c {
            y = c.forward(&y)?;
        }
        y = self.d.forward(&y)?;
        for e in &self.e {
            y = e.forward(&y)?;
        }
        Ok(y.mean(D::Minus1)?.mean(D::Minus1)?)
    }
}
