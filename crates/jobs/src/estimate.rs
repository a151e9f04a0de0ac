//! The cost of a training request before it starts: seconds per step measured on this
//! machine (a few real steps of the same recipe and networks on random images, remembered per
//! configuration), the run's ETA, and warnings when it is too short to learn or long.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use atelier_train::estimate::{MIN_STEPS_FROM_INIT, MIN_STEPS_FROM_SCRATCH};

use crate::spec::TrainSpec;
use crate::worker::{init_model, train_config};
use crate::{Catalog, JobsError};

/// A run longer than this gets a warning (the default job stays under it on 2 cores).
pub const LONG_RUN_SECONDS: f64 = 30.0 * 60.0;

/// What [`estimate`] answers.
#[derive(Debug, Clone, Serialize)]
pub struct TrainEstimate {
    pub family: String,
    /// The generator's architecture (`resnet_6blocks_resize`, …) and width.
    pub generator: String,
    /// The model the run starts from, if any.
    pub init_from: Option<String>,
    pub steps: u64,
    /// Measured seconds per training step on this server.
    pub step_seconds: f64,
    /// `steps × step_seconds`: training time, not counting samples and checkpoints.
    pub eta_seconds: f64,
    pub warnings: Vec<String>,
}

/// Seconds per step by configuration (the machine does not change while the process runs).
fn cache() -> &'static Mutex<HashMap<String, f64>> {
    static CACHE: OnceLock<Mutex<HashMap<String, f64>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Estimates `spec` (already validated) for `owner`: resolves its `init_from`, measures a few
/// steps (on a blocking thread, once per configuration) and checks its length.
pub async fn estimate(
    catalog: &Catalog,
    owner: &str,
    spec: &TrainSpec,
) -> Result<TrainEstimate, JobsError> {
    let init = init_model(catalog, owner, spec).await?;
    let b = spec.unpaired().then(|| "/b".into());
    let cfg = train_config(spec, "/a".into(), b, 0.0, init)?;
    let key = serde_json::to_string(&(
        &cfg.family,
        &cfg.generator,
        &cfg.discriminator,
        cfg.augment.crop_size,
        cfg.batch,
        &cfg.nce,
        cfg.precision,
    ))
    .map_err(|e| JobsError::Internal(e.to_string()))?;
    let known = cache().lock().expect("estimate cache").get(&key).copied();
    let step_seconds = match known {
        Some(s) => s,
        None => {
            let c = cfg.clone();
            let s =
                tokio::task::spawn_blocking(move || atelier_train::estimate::step_seconds(&c, 2))
                    .await
                    .map_err(|e| JobsError::Internal(e.to_string()))??;
            cache().lock().expect("estimate cache").insert(key, s);
            s
        }
    };
    let eta = step_seconds * spec.steps as f64;
    let mut warnings = Vec::new();
    let init_from = spec.init_model().map(str::to_string);
    let min = if init_from.is_some() {
        MIN_STEPS_FROM_INIT
    } else {
        MIN_STEPS_FROM_SCRATCH
    };
    if spec.family() != "dcgan" && spec.steps < min {
        warnings.push(match &init_from {
            Some(m) => format!(
                "{} steps is likely too few to learn a style even starting from `{m}`; use at least {min}",
                spec.steps
            ),
            None => format!(
                "{} steps from random weights is likely too few to learn a style; use at least {min}, or start from a built-in style (init_from)",
                spec.steps
            ),
        });
    }
    if eta > LONG_RUN_SECONDS {
        let sooner = if spec.family() == "fastcut" {
            "fewer steps or a smaller size finish sooner"
        } else {
            "fewer steps, a smaller size or family fastcut finish sooner"
        };
        warnings.push(format!(
            "about {:.0} minutes on this server (measured now, with its current load): {sooner}",
            eta / 60.0
        ));
    }
    Ok(TrainEstimate {
        family: cfg.family.name().to_string(),
        generator: format!(
            "{} ngf {}",
            cfg.generator.name(),
            match cfg.generator {
                atelier_nets::Arch::Resnet(c) => c.ngf,
                atelier_nets::Arch::Light(c) => c.ngf,
                atelier_nets::Arch::Unet(c) => c.ngf,
                _ => 0,
            }
        ),
        init_from,
        steps: spec.steps,
        step_seconds,
        eta_seconds: eta,
        warnings,
    })
}
