//! Adam (Kingma & Ba) as in `torch.optim.Adam` (no weight decay, bias-corrected moments), with
//! the moments exposed so that a checkpoint can store them and a resumed run continues
//! bit-for-bit.

use candle_core::{Result, Tensor, Var};

/// Whether the one-pass update handles these tensors (f32 on the CPU).
fn fused_applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == candle_core::DType::F32 && t.device().is_cpu())
}

/// Hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    /// The GAN defaults of the reference implementations: lr 2e-4, β1 0.5.
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam over a fixed list of named variables.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from the gradients of `loss`.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // candle 0.11 returns some gradients still attached to the graph that produced
            // them; keeping those in the moments would keep every step's graph alive.
            let g = g.detach();
            if fused_applies(&[&g, &self.m[i], &self.v[i], var.as_tensor()]) {
                fused_update(&c, var, (&mut self.m[i], &mut self.v[i]), &g, (bc1, bc2))?;
                continue;
            }
            self.m[i] = self.m[i]
                .affine(c.beta1, 0.0)?
                .add(&g.affine(1.0 - c.beta1, 0.0)?)?
                .detach();
            self.v[i] = self.v[i]
                .affine(c.beta2, 0.0)?
                .add(&g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?
                .detach();
            let denom = self.v[i]
                .affine(1.0 / bc2, 0.0)?
                .sqrt()?
                .affine(1.0, c.eps)?;
            let update = self.m[i].affine(c.lr / bc1, 0.0)?.div(&denom)?;
            var.set(&var.as_tensor().sub(&update)?)?;
        }
        Ok(())
    }

    /// Named optimizer state (`<name>.m`, `<name>.v`) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("{name}.m"), self.m[i].clone()));
            out.push((format!("{name}.v"), self.v[i].clone()));
        }
        out
    }

    /// Restores the state written by [`Adam::state`].
    pub fn restore(
        &mut self,
        step: u64,
        state: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (suffix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks `{key}`"))
                })?;
                if t.dims() != var.dims() {
                    candle_core::bail!("optimizer state `{key}` has shape {:?}", t.dims());
                }
                *slot = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The update of one variable in one pass over its values (f32 on the CPU), with the same
/// arithmetic as the composed ops above (which make ~12 passes and allocations).
fn fused_update(
    c: &AdamConfig,
    var: &Var,
    (m_t, v_t): (&mut Tensor, &mut Tensor),
    g: &Tensor,
    (bc1, bc2): (f64, f64),
) -> Result<()> {
    use atelier_nets::fused::with_f32;
    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
    let (nb1, nb2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
    let (inv_bc2, eps, step) = ((1.0 / bc2) as f32, c.eps as f32, (c.lr / bc1) as f32);
    use rayon::prelude::*;
    // Written by index into three buffers (rayon's `unzip` gathered per-task lists and
    // copied them into place: three more passes over every parameter).
    const CHUNK: usize = 1 << 14;
    let n = g.elem_count();
    let (mut m2, mut v2, mut p2) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    with_f32(g, |g| {
        with_f32(m_t, |m| {
            with_f32(v_t, |v| {
                with_f32(var.as_tensor(), |p| {
                    m2.par_chunks_mut(CHUNK)
                        .zip(v2.par_chunks_mut(CHUNK))
                        .zip(p2.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, ((mo, vo), po))| {
                            let r = c * CHUNK..c * CHUNK + mo.len();
                            let (g, m, v, p) = (&g[r.clone()], &m[r.clone()], &v[r.clone()], &p[r]);
                            for i in 0..mo.len() {
                                let mi = m[i] * b1 + g[i] * nb1;
                                let vi = v[i] * b2 + (g[i] * g[i]) * nb2;
                                let denom = (vi * inv_bc2).sqrt() + eps;
                                mo[i] = mi;
                                vo[i] = vi;
                                po[i] = p[i] - (mi * step) / denom;
                            }
                        })
                })
            })
        })
    })????;
    let shape = var.shape().clone();
    let dev = var.device().clone();
    *m_t = Tensor::from_vec(m2, shape.clone(), &dev)?;
    *v_t = Tensor::from_vec(v2, shape.clone(), &dev)?;
    var.set(&Tensor::from_vec(p2, shape, &dev)?)
}
