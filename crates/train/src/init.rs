//! `--init-from`: start a run from an existing generator (a model file) or from another run's
//! newest checkpoint (generator, discriminator and CUT's heads where names and shapes allow).
//!
//! At creation the source's network tensors are copied into the run as `init.safetensors`
//! (keys `net.<network>.<weight>`), so that a run resumed before its first checkpoint starts
//! from the same weights, and the source may change or go away afterwards.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::run::RunDir;
use crate::{TrainError, TrainResult};

/// The file inside a run that holds the initial weights.
pub const INIT_FILE: &str = "init.safetensors";

/// Names a network may be found under in the source: CycleGAN's `G_A` (A → B) is CUT's `G`,
/// and `D_A` (which judges B) is CUT's `D`.
fn aliases(name: &str) -> &'static [&'static str] {
    match name {
        "G" => &["G", "G_A"],
        "G_A" => &["G_A", "G"],
        "G_B" => &["G_B"],
        "D" => &["D", "D_A"],
        "D_A" => &["D_A", "D"],
        "D_B" => &["D_B"],
        "F" => &["F"],
        _ => &[],
    }
}

/// Reads the source's network tensors (`net.<network>.<key>`): a run directory's newest
/// checkpoint, or a model file as the generator `G` (with `NAME_reverse.safetensors` beside
/// it as `G_B`).
fn read_source(src: &Path, device: &Device) -> TrainResult<(HashMap<String, Tensor>, String)> {
    let bad =
        |reason: String| TrainError::Config(format!("--init-from {}: {reason}", src.display()));
    if src.is_dir() {
        let (run, _) = RunDir::open(src)?;
        let (state, tensors, _) = run
            .latest_checkpoint(device)?
            .ok_or_else(|| bad("the run has no checkpoint yet".into()))?;
        let nets: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(k, _)| k.starts_with("net."))
            .collect();
        return Ok((
            nets,
            format!("run {} at step {}", src.display(), state.step),
        ));
    }
    let (tensors, _) = atelier_nets::file::read_safetensors(src).map_err(|e| bad(e.to_string()))?;
    let mut out: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (format!("net.G.{k}"), v))
        .collect();
    let mut what = format!("model {}", src.display());
    if let (Some(stem), Some(dir)) = (src.file_stem().and_then(|s| s.to_str()), src.parent()) {
        let rev = dir.join(format!("{stem}_reverse.safetensors"));
        if rev.is_file() {
            let (t, _) =
                atelier_nets::file::read_safetensors(&rev).map_err(|e| bad(e.to_string()))?;
            out.extend(t.into_iter().map(|(k, v)| (format!("net.G_B.{k}"), v)));
            what.push_str(&format!(" (+ {})", rev.display()));
        }
    }
    Ok((out, what))
}

/// Copies the source's tensors into `run` (see the module docs); returns a description of the
/// source for the notes and the card.
pub(crate) fn prepare(src: &Path, run: &RunDir, device: &Device) -> TrainResult<String> {
    let (tensors, what) = read_source(src, device)?;
    let path = run.root().join(INIT_FILE);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(what)
}

/// The tensors saved by [`prepare`], if the run has them.
pub(crate) fn load(run: &RunDir, device: &Device) -> TrainResult<Option<HashMap<String, Tensor>>> {
    let path = run.root().join(INIT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(candle_core::safetensors::load(&path, device)?))
}

/// Sets the variables of network `name` from `init` where a tensor of the same key and shape
/// exists under one of its aliases. Returns `(set, total)` variable counts.
pub(crate) fn apply(
    name: &str,
    vars: &atelier_nets::SeededVarMap,
    init: &HashMap<String, Tensor>,
) -> TrainResult<(usize, usize)> {
    let all = crate::recipes::sorted_vars(vars);
    for alias in aliases(name) {
        let found: Vec<Option<&Tensor>> = all
            .iter()
            .map(|(k, v)| {
                init.get(&format!("net.{alias}.{k}"))
                    .filter(|t| t.dims() == v.dims())
            })
            .collect();
        let n = found.iter().filter(|t| t.is_some()).count();
        if n == 0 {
            continue;
        }
        for ((_, var), t) in all.iter().zip(&found) {
            if let Some(t) = t {
                var.set(&t.to_dtype(candle_core::DType::F32)?)?;
            }
        }
        return Ok((n, all.len()));
    }
    Ok((0, all.len()))
}
