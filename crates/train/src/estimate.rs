//! What a run will cost before it starts: seconds per step measured by running a few real steps
//! of the same recipe and networks on random images of the training size, on this machine.

use std::time::Instant;

use crate::config::TrainConfig;
use crate::{Event, Observer, TrainError, TrainResult, Trainer};

/// Steps below which a run from random weights rarely learns a recognisable style (our
/// recipe study: the validation KID and structure metrics still move fast there).
pub const MIN_STEPS_FROM_SCRATCH: u64 = 1500;
/// The same when starting from an existing style (`init_from`).
pub const MIN_STEPS_FROM_INIT: u64 = 300;

/// Median wall-clock seconds of `steps` training steps (after one warm-up step) of `cfg`'s
/// recipe and networks, on random images of its training size (its data folders are not
/// read; a distillation teacher is). Threads as the process is configured.
pub fn step_seconds(cfg: &TrainConfig, steps: usize) -> TrainResult<f64> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::io(std::env::temp_dir(), e))?;
    measure(cfg, steps.max(1), tmp.path())
}

fn measure(cfg: &TrainConfig, steps: usize, tmp: &std::path::Path) -> TrainResult<f64> {
    let size = cfg.augment.crop_size;
    let mut rng = crate::Rng::new(1);
    let mut folder = |name: &str| -> TrainResult<std::path::PathBuf> {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        for i in 0..2 {
            let px: Vec<u8> = (0..size * size * 3).map(|_| rng.next_u64() as u8).collect();
            let img = atelier_imaging::Image::from_rgb8(size, size, &px)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let png = atelier_imaging::encode(&img, atelier_imaging::Format::Png, 0)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let path = dir.join(format!("{i}.png"));
            std::fs::write(&path, png).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(dir)
    };
    let mut c = cfg.clone();
    c.data_a = folder("A")?;
    c.data_b = match &cfg.data_b {
        Some(_) => Some(folder("B")?),
        None => None,
    };
    c.augment.load_size = size;
    c.validation = None;
    c.init_from = None;
    c.steps = steps as u64 + 1;
    c.checkpoint_every = u64::MAX / 2;
    c.checkpoint_minutes = 0.0;
    c.sample_every = u64::MAX / 2;
    c.log_every = u64::MAX / 2;
    struct Timer {
        last: Instant,
        times: Vec<f64>,
    }
    impl Observer for Timer {
        fn event(&mut self, e: &Event<'_>) {
            match e {
                Event::Started { .. } => self.last = Instant::now(),
                Event::Step(_) => {
                    self.times.push(self.last.elapsed().as_secs_f64());
                    self.last = Instant::now();
                }
                _ => {}
            }
        }
    }
    let mut timer = Timer {
        last: Instant::now(),
        times: Vec::new(),
    };
    let mut t = Trainer::create(c, &tmp.join("run"))?;
    match t.run(&mut timer) {
        Ok(_) => {}
        // Random images can make a tiny network's losses overflow: the step still ran, and
        // its time is what is asked for.
        Err(TrainError::Diverged { .. }) => timer.times.push(timer.last.elapsed().as_secs_f64()),
        Err(e) => return Err(e),
    }
    // The first step warms up (packing, allocation); it counts only if it is all there is.
    let warm = usize::from(timer.times.len() > 1);
    let mut times: Vec<f64> = timer.times.into_iter().skip(warm).collect();
    times.sort_by(f64::total_cmp);
    times
        .get(times.len() / 2)
        .copied()
        .ok_or_else(|| TrainError::Config("no step was timed".into()))
}
