//! pix2pix: paired image → image with the conditional GAN objective and L1.

use atelier_nets::{Ctx, Rng};
use candle_core::{Device, Tensor};

use super::{judged, scalar, single_pair, Batch, DataKind, Net, Recipe, State, StepOut};
use crate::config::{Direction, TrainConfig};
use crate::loss::l1;
use crate::{TrainError, TrainResult};

pub(crate) struct Pix2pix;

impl Recipe for Pix2pix {
    fn data(&self) -> DataKind {
        DataKind::Paired
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
        let Batch::Pair(p) = batch else {
            return Err(TrainError::Config("pix2pix trains on pairs".into()));
        };
        let loss = cfg.loss;
        let (a, b) = match cfg.direction {
            Direction::AtoB => (p.a, p.b),
            Direction::BtoA => (p.b, p.a),
        };
        let mut cg = st.ctx();
        let mut cd = st.ctx();
        let fake_b = st.g[0].forward(&a, &mut cg)?;
        // D step on (A, B) pairs.
        let fake_ab = Tensor::cat(&[&a, &fake_b.detach()], 1)?;
        let real_ab = Tensor::cat(&[&a, &b], 1)?;
        let pred_fake = st.d[0].forward(&fake_ab, &mut cd)?;
        let pred_real = st.d[0].forward(&real_ab, &mut cd)?;
        let l_fake = loss.discriminator(&pred_fake, false)?;
        let l_real = loss.discriminator(&pred_real, true)?;
        let loss_d = ((&l_fake + &l_real)? * 0.5)?;
        st.opt_d.backward_step(&loss_d)?;
        // G step: fool the updated D and stay close to B in L1.
        cd.frozen = true;
        let pred = st.d[0].forward(&Tensor::cat(&[&a, &fake_b], 1)?, &mut cd)?;
        cd.frozen = false;
        let g_gan = loss.generator(&pred)?;
        let g_l1 = (l1(&fake_b, &b)? * cfg.lambda_l1)?;
        let loss_g = (&g_gan + &g_l1)?;
        st.opt_g.backward_step(&loss_g)?;
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
        cfg: &TrainConfig,
        a: &Tensor,
        b: &Tensor,
        ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>> {
        let (x, y) = match cfg.direction {
            Direction::AtoB => (a, b),
            Direction::BtoA => (b, a),
        };
        // One image at a time, as the reference's test.py (batch norm uses each image's own
        // statistics).
        let mut fakes = Vec::new();
        for i in 0..x.dim(0)? {
            ctx.rewind();
            fakes.push(st.g[0].net.forward(&x.narrow(0, i, 1)?, ctx)?);
        }
        Ok(vec![x.clone(), Tensor::cat(&fakes, 0)?, y.clone()])
    }

    fn export_label(&self, cfg: &TrainConfig, _index: usize) -> (String, &'static str) {
        (cfg.name.clone(), "pix2pix generator")
    }
}
