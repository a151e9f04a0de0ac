//! DCGAN (the brief's example): noise → image, D on real and generated images.

use atelier_nets::{Ctx, Rng};
use candle_core::{Device, Tensor};

use super::{judged, scalar, single_pair, Batch, DataKind, Net, Recipe, State, StepOut};
use crate::config::TrainConfig;
use crate::{TrainError, TrainResult};

pub(crate) struct Dcgan;

impl Recipe for Dcgan {
    fn data(&self) -> DataKind {
        DataKind::Single
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
        let Batch::Single(real) = batch else {
            return Err(TrainError::Config("DCGAN trains on single images".into()));
        };
        let loss = cfg.loss;
        let n = real.dim(0)?;
        let z = st.noise(n, cfg.generator.input_channels())?;
        let mut cg = st.ctx();
        let mut cd = st.ctx();
        let fake = st.g[0].forward(&z, &mut cg)?;
        // D step: real → 1, G(z) → 0 (G's graph cut).
        let d_real = st.d[0].forward(&real, &mut cd)?;
        let d_fake = st.d[0].forward(&fake.detach(), &mut cd)?;
        let l_real = loss.discriminator(&d_real, true)?;
        let l_fake = loss.discriminator(&d_fake, false)?;
        let loss_d = (&l_real + &l_fake)?;
        st.opt_d.backward_step(&loss_d)?;
        // G step against the updated D.
        cd.frozen = true;
        let d_fake2 = st.d[0].forward(&fake, &mut cd)?;
        cd.frozen = false;
        let loss_g = loss.generator(&d_fake2)?;
        st.opt_g.backward_step(&loss_g)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lr_, lf) = (scalar(&l_real)?, scalar(&l_fake)?);
        Ok(StepOut {
            losses: vec![("D", lr_ + lf), ("G", scalar(&loss_g)?)],
            d_terms: vec![(lr_ + lf) / 2.0],
            d_real: judged(loss, &d_real)?,
            d_fake: judged(loss, &d_fake)?,
        })
    }

    fn sample_rows(
        &self,
        _st: &State,
        _cfg: &TrainConfig,
        _a: &Tensor,
        _b: &Tensor,
        _ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>> {
        Err(TrainError::Config(
            "DCGAN samples come from fixed noise".into(),
        ))
    }

    fn export_label(&self, cfg: &TrainConfig, _index: usize) -> (String, &'static str) {
        (cfg.name.clone(), "DCGAN generator (noise → image)")
    }
}
