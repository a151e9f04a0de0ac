//! CycleGAN: two generators and two discriminators, cycle and identity losses, image pools.

use atelier_nets::{Ctx, Rng};
use candle_core::{DType, Device, Tensor};

use super::{judged, scalar, Batch, DataKind, Net, Recipe, State, StepOut};
use crate::config::TrainConfig;
use crate::loss::l1;
use crate::{ImagePool, TrainError, TrainResult};

pub(crate) struct Cyclegan;

impl Recipe for Cyclegan {
    fn data(&self) -> DataKind {
        DataKind::Unpaired
    }

    fn networks(
        &mut self,
        cfg: &TrainConfig,
        seeds: &mut Rng,
        device: &Device,
    ) -> TrainResult<(Vec<Net>, Vec<Net>)> {
        Ok((
            vec![
                Net::new("G_A", cfg.generator, seeds.next_u64(), device)?,
                Net::new("G_B", cfg.generator, seeds.next_u64(), device)?,
            ],
            vec![
                Net::new("D_A", cfg.discriminator, seeds.next_u64(), device)?,
                Net::new("D_B", cfg.discriminator, seeds.next_u64(), device)?,
            ],
        ))
    }

    fn pools(&self, cfg: &TrainConfig) -> Vec<ImagePool> {
        vec![ImagePool::new(cfg.pool_size), ImagePool::new(cfg.pool_size)]
    }

    fn step(&mut self, st: &mut State, cfg: &TrainConfig, batch: Batch) -> TrainResult<StepOut> {
        let Batch::Pair(p) = batch else {
            return Err(TrainError::Config("CycleGAN trains on two domains".into()));
        };
        let loss = cfg.loss;
        let (real_a, real_b) = (p.a, p.b);
        let lc = cfg.lambda_cycle;
        let li = cfg.lambda_identity;
        let mut cg = st.ctx();
        let mut cd = st.ctx();
        let (ga, gb) = (&st.g[0], &st.g[1]);
        let (da, db) = (&st.d[0], &st.d[1]);
        // Passes of one network over independent inputs share a batch when the network
        // treats samples independently (instance norm, no dropout): the same numbers as
        // separate passes, but one weight gradient per network and step instead of one per use.
        let batch_g = cfg.batched_passes && li > 0.0 && cfg.generator.per_sample();
        let batch_d = cfg.batched_passes && cfg.discriminator.per_sample();
        let n = real_a.dim(0)?;
        let (fake_b, fake_a, ia, ib) = if batch_g {
            let ya = ga.forward(&Tensor::cat(&[&real_a, &real_b], 0)?, &mut cg)?;
            let yb = gb.forward(&Tensor::cat(&[&real_b, &real_a], 0)?, &mut cg)?;
            (
                ya.narrow(0, 0, n)?,
                yb.narrow(0, 0, n)?,
                Some(ya.narrow(0, n, n)?),
                Some(yb.narrow(0, n, n)?),
            )
        } else {
            let fake_b = ga.forward(&real_a, &mut cg)?;
            let fake_a = gb.forward(&real_b, &mut cg)?;
            (fake_b, fake_a, None, None)
        };
        let rec_a = gb.forward(&fake_b, &mut cg)?;
        let rec_b = ga.forward(&fake_a, &mut cg)?;
        // G step (the reference's backward_G).
        let (idt_a, idt_b) = if li > 0.0 {
            let ia = match ia {
                Some(t) => t,
                None => ga.forward(&real_b, &mut cg)?,
            };
            let ib = match ib {
                Some(t) => t,
                None => gb.forward(&real_a, &mut cg)?,
            };
            (
                (l1(&ia, &real_b)? * (lc * li))?,
                (l1(&ib, &real_a)? * (lc * li))?,
            )
        } else {
            let z = Tensor::zeros((), DType::F32, &st.device)?;
            (z.clone(), z)
        };
        // D judges the fakes with its parameters frozen (only G is updated here).
        cd.frozen = true;
        let g_a = loss.generator(&da.forward(&fake_b, &mut cd)?)?;
        let g_b = loss.generator(&db.forward(&fake_a, &mut cd)?)?;
        cd.frozen = false;
        let cyc_a = (l1(&rec_a, &real_a)? * lc)?;
        let cyc_b = (l1(&rec_b, &real_b)? * lc)?;
        let loss_g = (((((&g_a + &g_b)? + &cyc_a)? + &cyc_b)? + &idt_a)? + &idt_b)?;
        st.opt_g.backward_step(&loss_g)?;
        // D step (backward_D_A, backward_D_B) with pooled fakes.
        let pooled_b = st.pools[1].query(&fake_b.detach(), &mut st.rng)?;
        let pooled_a = st.pools[0].query(&fake_a.detach(), &mut st.rng)?;
        let (da, db) = (&st.d[0], &st.d[1]);
        let judge = |d: &Net, real: &Tensor, fake: &Tensor, cd: &mut Ctx| {
            if batch_d {
                let y = d.forward(&Tensor::cat(&[real, fake], 0)?, cd)?;
                Ok::<_, TrainError>((y.narrow(0, 0, n)?, y.narrow(0, n, n)?))
            } else {
                Ok((d.forward(real, cd)?, d.forward(fake, cd)?))
            }
        };
        let (pred_real_b, pred_fake_b) = judge(da, &real_b, &pooled_b, &mut cd)?;
        let da_real = loss.discriminator(&pred_real_b, true)?;
        let da_fake = loss.discriminator(&pred_fake_b, false)?;
        let loss_da = ((&da_real + &da_fake)? * 0.5)?;
        let (pred_real_a, pred_fake_a) = judge(db, &real_a, &pooled_a, &mut cd)?;
        let db_real = loss.discriminator(&pred_real_a, true)?;
        let db_fake = loss.discriminator(&pred_fake_a, false)?;
        let loss_db = ((&db_real + &db_fake)? * 0.5)?;
        st.opt_d.backward_step(&(&loss_da + &loss_db)?)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lda, ldb) = (scalar(&loss_da)?, scalar(&loss_db)?);
        Ok(StepOut {
            losses: vec![
                ("D_A", lda),
                ("G_A", scalar(&g_a)?),
                ("cycle_A", scalar(&cyc_a)?),
                ("idt_A", scalar(&idt_a)?),
                ("D_B", ldb),
                ("G_B", scalar(&g_b)?),
                ("cycle_B", scalar(&cyc_b)?),
                ("idt_B", scalar(&idt_b)?),
            ],
            d_terms: vec![lda, ldb],
            d_real: (judged(loss, &pred_real_b)? + judged(loss, &pred_real_a)?) / 2.0,
            d_fake: (judged(loss, &pred_fake_b)? + judged(loss, &pred_fake_a)?) / 2.0,
        })
    }

    fn sample_rows(
        &self,
        st: &State,
        _cfg: &TrainConfig,
        a: &Tensor,
        b: &Tensor,
        ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>> {
        let fb = st.g[0].net.forward(a, ctx)?;
        let ra = st.g[1].net.forward(&fb, ctx)?;
        let fa = st.g[1].net.forward(b, ctx)?;
        let rb = st.g[0].net.forward(&fa, ctx)?;
        Ok(vec![
            Tensor::cat(&[a, b], 0)?,
            Tensor::cat(&[&fb, &fa], 0)?,
            Tensor::cat(&[&ra, &rb], 0)?,
        ])
    }

    fn export_label(&self, cfg: &TrainConfig, index: usize) -> (String, &'static str) {
        match index {
            0 => (cfg.name.clone(), "CycleGAN generator A→B"),
            _ => (format!("{}_reverse", cfg.name), "CycleGAN generator B→A"),
        }
    }

    fn directions(&self) -> &'static [(&'static str, usize, usize)] {
        &[("a2b", 0, 0), ("b2a", 1, 1)]
    }
}
