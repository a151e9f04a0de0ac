//! Distillation of a generator into a lighter one (the full model is the teacher, as in GAN
//! Compression, Li et al. 2020): on photos only, the student learns the teacher's translation
//! through an L1 term and a conditional PatchGAN that tells the teacher's output for a photo
//! from the student's (pix2pix's objective with the teacher as the target).
//!
//! The teacher is a model file copied into the run at creation (`teacher.safetensors`), run in
//! inference mode without gradients.

use std::path::Path;

use atelier_nets::{Ctx, Network, Rng};
use candle_core::{Device, Tensor};

use super::{judged, scalar, single_pair, Batch, DataKind, Net, Recipe, State, StepOut};
use crate::config::TrainConfig;
use crate::loss::l1;
use crate::run::RunDir;
use crate::{TrainError, TrainResult};

/// The teacher's copy inside a run.
pub const TEACHER_FILE: &str = "teacher.safetensors";

#[derive(Default)]
pub(crate) struct Distill {
    teacher: Option<Network>,
}

/// Copies the teacher model file into `run` (at creation).
pub(crate) fn prepare(src: &Path, run: &RunDir) -> TrainResult<()> {
    let dst = run.root().join(TEACHER_FILE);
    std::fs::copy(src, &dst).map_err(|e| TrainError::io(src, e))?;
    Ok(())
}

impl Distill {
    fn teacher(&self) -> TrainResult<&Network> {
        self.teacher
            .as_ref()
            .ok_or_else(|| TrainError::Config("distill: no teacher loaded".into()))
    }

    fn teach(&self, x: &Tensor) -> TrainResult<Tensor> {
        Ok(self.teacher()?.forward(x, &mut Ctx::eval())?.detach())
    }
}

impl Recipe for Distill {
    fn data(&self) -> DataKind {
        DataKind::Photos
    }

    fn load(&mut self, run: &RunDir, device: &Device) -> TrainResult<()> {
        let path = run.root().join(TEACHER_FILE);
        let model = atelier_nets::load(&path, device).map_err(|e| {
            TrainError::Config(format!("distill: the teacher {}: {e}", path.display()))
        })?;
        self.teacher = Some(model.net);
        Ok(())
    }

    fn networks(
        &mut self,
        cfg: &TrainConfig,
        seeds: &mut Rng,
        device: &Device,
    ) -> TrainResult<(Vec<Net>, Vec<Net>)> {
        single_pair(cfg, seeds, device)
    }

    fn step(&mut self, st: &mut State, cfg: &TrainConfig, batch: Batch) -> TrainResult<StepOut> {
        let Batch::Single(x) = batch else {
            return Err(TrainError::Config("distill trains on photos".into()));
        };
        let loss = cfg.loss;
        let target = self.teach(&x)?;
        let mut cg = st.ctx();
        let mut cd = st.ctx();
        let fake = st.g[0].forward(&x, &mut cg)?;
        // D step on (photo, translation) pairs: the teacher's is real.
        let n = x.dim(0)?;
        let fake_pair = Tensor::cat(&[&x, &fake.detach()], 1)?;
        let real_pair = Tensor::cat(&[&x, &target], 1)?;
        let (pred_fake, pred_real) = if cfg.batched_passes && cfg.discriminator.per_sample() {
            let y = st.d[0].forward(&Tensor::cat(&[&fake_pair, &real_pair], 0)?, &mut cd)?;
            (y.narrow(0, 0, n)?, y.narrow(0, n, n)?)
        } else {
            (
                st.d[0].forward(&fake_pair, &mut cd)?,
                st.d[0].forward(&real_pair, &mut cd)?,
            )
        };
        let l_fake = loss.discriminator(&pred_fake, false)?;
        let l_real = loss.discriminator(&pred_real, true)?;
        st.opt_d.backward_step(&((&l_fake + &l_real)? * 0.5)?)?;
        // G step: fool the updated D and match the teacher.
        cd.frozen = true;
        let pred = st.d[0].forward(&Tensor::cat(&[&x, &fake], 1)?, &mut cd)?;
        cd.frozen = false;
        let g_gan = loss.generator(&pred)?;
        let g_l1 = (l1(&fake, &target)? * cfg.lambda_l1)?;
        st.opt_g.backward_step(&(&g_gan + &g_l1)?)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lf, lr_) = (scalar(&l_fake)?, scalar(&l_real)?);
        Ok(StepOut {
            losses: vec![
                ("D_real", lr_),
                ("D_fake", lf),
                ("G_GAN", scalar(&g_gan)?),
                ("G_L1", scalar(&g_l1)?),
            ],
            d_terms: vec![(lr_ + lf) / 2.0],
            d_real: judged(loss, &pred_real)?,
            d_fake: judged(loss, &pred_fake)?,
        })
    }

    fn sample_rows(
        &self,
        st: &State,
        _cfg: &TrainConfig,
        a: &Tensor,
        _b: &Tensor,
        ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>> {
        // Photos, the teacher's translations, the student's.
        Ok(vec![
            a.clone(),
            self.teach(a)?,
            st.g[0].net.forward(a, ctx)?,
        ])
    }

    fn export_label(&self, cfg: &TrainConfig, _index: usize) -> (String, &'static str) {
        (cfg.name.clone(), "generator distilled from a teacher")
    }
}
