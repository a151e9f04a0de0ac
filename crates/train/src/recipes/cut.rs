//! CUT and FastCUT (Park et al., ECCV 2020; taesungp/contrastive-unpaired-translation): one
//! generator, one discriminator, and PatchNCE between the generator encoder's features of the
//! input and of its translation, through a two-layer MLP head per layer (`netF`).
//!
//! As the reference's `CUTModel.optimize_parameters`: forward `G` on the input (with the
//! B images appended for the identity term); update D on the detached fake and real B
//! (LSGAN by default, no image pool); then update G and the heads on
//! `λ_GAN·GAN(D(fake)) + NCE`, where NCE is `PatchNCE(real A, fake B)`, or the mean of that and
//! `PatchNCE(real B, G(real B))` with `nce_idt` (CUT). FastCUT drops the identity term, weighs
//! NCE by 10 and flips the input horizontally half the time, flipping the translation's features
//! back before they meet the input's (flip equivariance).

use atelier_nets::{Ctx, Rng, SeededVarMap};
use candle_core::{Device, Tensor};

use super::{judged, scalar, single_pair, Batch, DataKind, Net, Recipe, State, StepOut};
use crate::config::TrainConfig;
use crate::nce::{nce_over_layers, PatchSampler};
use crate::{TrainError, TrainResult};

#[derive(Default)]
pub(crate) struct Cut {
    /// The MLP heads and their variables (built with the networks).
    heads: Option<(SeededVarMap, PatchSampler)>,
}

/// Mirrors `(N, C, H, W)` along W (`torch.flip(x, [3])`), differentiably.
fn flip_w(x: &Tensor) -> TrainResult<Tensor> {
    let w = x.dim(3)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    let idx = Tensor::from_vec(idx, w, x.device())?;
    Ok(x.index_select(&idx, 3)?)
}

impl Cut {
    fn heads(&self) -> TrainResult<&PatchSampler> {
        self.heads
            .as_ref()
            .map(|h| &h.1)
            .ok_or_else(|| TrainError::Config("CUT: the MLP heads are not built".into()))
    }

    /// `calculate_NCE_loss` for `images` images: `q` are the translations' features (with
    /// gradients), `k` the inputs' (constants).
    fn nce(
        &self,
        cfg: &TrainConfig,
        q: &[Tensor],
        k: &[Tensor],
        images: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> TrainResult<Tensor> {
        let heads = self.heads()?;
        let ids = PatchSampler::sample_ids(k, cfg.nce.num_patches, rng, device)?;
        let fk: Vec<Tensor> = heads
            .forward(k, &ids, true)?
            .into_iter()
            .map(|t| t.detach())
            .collect();
        let fq = heads.forward(q, &ids, false)?;
        nce_over_layers(&fq, &fk, images, cfg.nce.tau, cfg.nce.lambda_nce)
    }
}

impl Recipe for Cut {
    fn data(&self) -> DataKind {
        DataKind::Unpaired
    }

    fn networks(
        &mut self,
        cfg: &TrainConfig,
        seeds: &mut Rng,
        device: &Device,
    ) -> TrainResult<(Vec<Net>, Vec<Net>)> {
        let (g, d) = single_pair(cfg, seeds, device)?;
        // The heads' input widths: the channels of each feature layer.
        let probe = Tensor::zeros(
            (1, cfg.generator.input_channels(), 16, 16),
            candle_core::DType::F32,
            device,
        )?;
        let feats = g[0].net.encode(&probe, &cfg.nce.layers, &mut Ctx::eval())?;
        let channels: Vec<usize> = feats.iter().map(|f| f.dim(1)).collect::<Result<_, _>>()?;
        let vars = SeededVarMap::new(seeds.next_u64());
        let sampler = PatchSampler::new(&channels, cfg.nce.nc, vars.builder(device))?;
        self.heads = Some((vars, sampler));
        Ok((g, d))
    }

    fn extra_vars(&self) -> Vec<(&'static str, &SeededVarMap)> {
        self.heads.iter().map(|(v, _)| ("F", v)).collect()
    }

    fn step(&mut self, st: &mut State, cfg: &TrainConfig, batch: Batch) -> TrainResult<StepOut> {
        let Batch::Pair(p) = batch else {
            return Err(TrainError::Config("CUT trains on two domains".into()));
        };
        let loss = cfg.loss;
        let nce = &cfg.nce;
        let (real_a, real_b) = (p.a, p.b);
        let n = real_a.dim(0)?;
        let flipped = nce.flip_equivariance && st.rng.uniform() < 0.5;
        let real = if nce.nce_idt {
            Tensor::cat(&[&real_a, &real_b], 0)?
        } else {
            real_a.clone()
        };
        let input = if flipped {
            flip_w(&real)?
        } else {
            real.clone()
        };
        let mut cg = st.ctx();
        let mut cd = st.ctx();
        let fake = st.g[0].forward(&input, &mut cg)?;
        let fake_b = fake.narrow(0, 0, n)?;
        // D step: the detached fake against real B.
        let d = &st.d[0];
        let (pred_fake, pred_real) = if cfg.batched_passes && cfg.discriminator.per_sample() {
            let y = d.forward(&Tensor::cat(&[&fake_b.detach(), &real_b], 0)?, &mut cd)?;
            (y.narrow(0, 0, n)?, y.narrow(0, n, n)?)
        } else {
            (
                d.forward(&fake_b.detach(), &mut cd)?,
                d.forward(&real_b, &mut cd)?,
            )
        };
        let d_fake = loss.discriminator(&pred_fake, false)?;
        let d_real = loss.discriminator(&pred_real, true)?;
        let loss_d = ((&d_fake + &d_real)? * 0.5)?;
        st.opt_d.backward_step(&loss_d)?;
        // G (and heads) step against the updated, frozen D.
        cd.frozen = true;
        let g_gan = (loss.generator(&st.d[0].forward(&fake_b, &mut cd)?)? * nce.lambda_gan)?;
        cd.frozen = false;
        // Encoder features of the translations (queries) and of the inputs (keys), each set
        // in one batched pass; the keys need no gradients.
        let mut q = st.g[0].net.encode(&fake, &nce.layers, &mut cg)?;
        if flipped {
            q = q.iter().map(flip_w).collect::<TrainResult<_>>()?;
        }
        let mut ck = Ctx::eval();
        ck.frozen = true;
        let k: Vec<Tensor> = st.g[0]
            .net
            .encode(&real.detach(), &nce.layers, &mut ck)?
            .into_iter()
            .map(|t| t.detach())
            .collect();
        let part = |v: &[Tensor], i: usize| -> TrainResult<Vec<Tensor>> {
            v.iter().map(|t| Ok(t.narrow(0, i * n, n)?)).collect()
        };
        let device = st.device.clone();
        let nce_x = self.nce(cfg, &part(&q, 0)?, &part(&k, 0)?, n, &mut st.rng, &device)?;
        let (nce_total, nce_y) = if nce.nce_idt {
            let y = self.nce(cfg, &part(&q, 1)?, &part(&k, 1)?, n, &mut st.rng, &device)?;
            (((&nce_x + &y)? * 0.5)?, Some(y))
        } else {
            (nce_x.clone(), None)
        };
        let mut loss_g = (&g_gan + &nce_total)?;
        let tv = if nce.lambda_tv > 0.0 {
            let tv = crate::loss::total_variation(&fake_b)?;
            loss_g = (loss_g + (&tv * nce.lambda_tv)?)?;
            Some(tv)
        } else {
            None
        };
        st.opt_g.backward_step(&loss_g)?;
        cg.apply_running_stats()?;
        cd.apply_running_stats()?;
        let (lf, lr_) = (scalar(&d_fake)?, scalar(&d_real)?);
        let mut losses = vec![
            ("D_real", lr_),
            ("D_fake", lf),
            ("G_GAN", scalar(&g_gan)?),
            ("NCE", scalar(&nce_x)?),
        ];
        if let Some(y) = nce_y {
            losses.push(("NCE_Y", scalar(&y)?));
        }
        if let Some(tv) = tv {
            losses.push(("TV", scalar(&tv)?));
        }
        Ok(StepOut {
            losses,
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
        b: &Tensor,
        ctx: &mut Ctx,
    ) -> TrainResult<Vec<Tensor>> {
        // Inputs (A then B) over their translations (A → B, and B through G: the identity).
        let x = Tensor::cat(&[a, b], 0)?;
        let y = st.g[0].net.forward(&x, ctx)?;
        Ok(vec![x, y])
    }

    fn export_label(&self, cfg: &TrainConfig, _index: usize) -> (String, &'static str) {
        let what = if cfg.family == crate::Family::Fastcut {
            "FastCUT generator A→B"
        } else {
            "CUT generator A→B"
        };
        (cfg.name.clone(), what)
    }

    fn directions(&self) -> &'static [(&'static str, usize, usize)] {
        &[("a2b", 0, 0)]
    }
}
