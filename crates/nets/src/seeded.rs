//! A [`VarMap`] whose new variables are initialised from a seeded [`Rng`], so that a training
//! run started twice with the same seed starts from the same weights (candle's own CPU random
//! generator cannot be seeded).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::Rng;

/// A variable store with deterministic initialisation. Variables are created in the order the
/// network constructors ask for them, which is fixed, so the weights depend only on the seed.
#[derive(Clone)]
pub struct SeededVarMap {
    map: VarMap,
    rng: Arc<Mutex<Rng>>,
}

impl std::fmt::Debug for SeededVarMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededVarMap").finish_non_exhaustive()
    }
}

impl SeededVarMap {
    pub fn new(seed: u64) -> Self {
        Self {
            map: VarMap::new(),
            rng: Arc::new(Mutex::new(Rng::new(seed))),
        }
    }

    /// The underlying variables.
    pub fn varmap(&self) -> &VarMap {
        &self.map
    }

    /// A builder that creates (or returns existing) variables of type f32 on `device`.
    pub fn builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    fn init_values(&self, shape: &Shape, init: Init) -> candle_core::Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("seeded varmap poisoned".into()))?;
        let normal = |rng: &mut Rng, mean: f64, std: f64| (mean + std * rng.normal()) as f32;
        let uniform = |rng: &mut Rng, lo: f64, up: f64| (lo + (up - lo) * rng.uniform()) as f32;
        Ok(match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| normal(&mut rng, mean, stdev)).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| uniform(&mut rng, lo, up)).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Normal => {
                        (0..n).map(|_| normal(&mut rng, 0.0, std)).collect()
                    }
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| uniform(&mut rng, -b, b)).collect()
                    }
                }
            }
        })
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let data = self
                .map
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("varmap poisoned".into()))?;
            if let Some(v) = data.get(name) {
                if v.shape() != &s {
                    candle_core::bail!(
                        "variable `{name}` exists with shape {:?}, requested {s:?}",
                        v.shape()
                    );
                }
                return Ok(v.as_tensor().clone());
            }
        }
        let values = self.init_values(&s, h)?;
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("varmap poisoned".into()))?
            .insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}`: a seeded varmap creates variables, use `get`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_the_requested_distribution() {
        let make = |seed| {
            let m = SeededVarMap::new(seed);
            let vb = m.builder(&Device::Cpu);
            vb.get_with_hints(
                (64, 32, 3, 3),
                "w",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let (a, b, c) = (make(1), make(1), make(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002, "{mean}");
        assert!((std - 0.02).abs() < 0.001, "{std}");
    }
}
