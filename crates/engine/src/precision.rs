//! `--precision auto`: the fastest kernel precision for a model on this CPU that keeps its
//! output within a quality floor of fp32.
//!
//! Which precision is fastest is a rule, from `atelier bench` on the CPUs Atelier was measured
//! on (README, "Kernel precision"), not a timing taken at load: timings taken while a server
//! resumes its jobs, or beside other processes, came out anywhere from 0.3× to 4× and flipped
//! the choice between restarts. The rule: a ResNet generator (nearly all of its work in wide
//! 3×3 convolutions) runs int8 where the CPU has AVX512_VNNI (0.50–0.60× its fp32 time at
//! 512²–1024²), else bf16 where it has AVX512_BF16 (0.6–0.7×); the light generator stays fp32
//! (int8 0.98–1.2× and bf16 0.87–0.9× of fp32: its 1×1 and depthwise layers are too small for
//! the lower precisions to pay). Before a lower precision is used, the model stylizes a probe
//! photo (the repository's `examples/photo.jpg`, CC-BY-4.0, centre square at [`PROBE_SIDE`]²)
//! in it and in fp32: below [`PSNR_FLOOR_DB`] against fp32 the next candidate is tried, and
//! fp32 runs if none passes. That costs two passes at 128² when the model loads (≈ 0.1 s for a
//! full-size generator on two cores), and the int8 pass is also the int8 network's calibration
//! (each layer's smoothing factors come from the probe photo).

use atelier_imaging::Limits;
use atelier_nets::{Compiled, Ctx, Network, Precision};

use crate::Result;

/// Least PSNR (dB) against fp32 on the probe photo for a precision `auto` may pick.
pub const PSNR_FLOOR_DB: f64 = 40.0;
/// Side of the probe photo.
pub const PROBE_SIDE: usize = 128;

/// The precision a stylizer is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// The fastest precision that meets the quality floor on this CPU (see the module docs).
    #[default]
    Auto,
    /// This precision where the CPU has it (bf16 and int8 fall back to fp32 elsewhere).
    Fixed(Precision),
}

impl Choice {
    /// `auto`, `f32`, `bf16` or `int8`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Choice::Auto),
            s => Precision::parse(s).map(Choice::Fixed),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Fixed(p) => p.name(),
        }
    }
}

impl From<Precision> for Choice {
    fn from(p: Precision) -> Self {
        Choice::Fixed(p)
    }
}

/// What the probe measured for one lower precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub precision: Precision,
    /// PSNR of its output on the probe photo against fp32's.
    pub psnr_db: f64,
}

/// The lower precisions `auto` tries for `net` on this CPU, fastest first (see the module
/// docs).
pub fn candidates(net: &Network) -> Vec<Precision> {
    let mut v = Vec::new();
    if matches!(net, Network::Resnet(_)) {
        if atelier_nets::has_int8() {
            v.push(Precision::Int8);
        }
        if atelier_nets::kernels_isa().has_bf16() {
            v.push(Precision::Bf16);
        }
    }
    v
}

/// The probe image, planar RGB in [-1, 1], `side`².
fn probe(side: usize) -> Result<Vec<f32>> {
    static PHOTO: &[u8] = include_bytes!("../../../examples/photo.jpg");
    let img = atelier_imaging::decode(PHOTO, &Limits::default())?;
    let sq = atelier_imaging::center_square(&img);
    Ok(atelier_imaging::resize(&sq, side as u32, side as u32).rgb)
}

/// Calibrates an int8 network on the probe photo (`Compiled::calibrate`: each layer's
/// smoothing factors and quantized weights fixed once, instead of derived again for every
/// image).
pub(crate) fn calibrate(net: &Compiled, multiple: usize) -> Result<()> {
    if net.precision() == Precision::Int8 {
        let side = PROBE_SIDE.div_ceil(multiple) * multiple;
        net.calibrate(&probe(side)?, side, side)?;
    }
    Ok(())
}

/// Picks the precision for `net` (already compiled in fp32 as `f32net`): the compiled
/// network to run and what the probe measured (empty where no lower precision was tried).
pub(crate) fn choose(
    net: &Network,
    f32net: Compiled,
    multiple: usize,
) -> Result<(Compiled, Vec<Measured>)> {
    let lower = candidates(net);
    if lower.is_empty() {
        return Ok((f32net, Vec::new()));
    }
    let side = PROBE_SIDE.div_ceil(multiple) * multiple;
    let x = probe(side)?;
    let run = |c: &Compiled| -> Result<Vec<f32>> {
        Ok(c.forward_chw(&x, side, side, &mut Ctx::eval())?.0)
    };
    let base = run(&f32net)?;
    let mut measured = Vec::new();
    for p in lower {
        let Some(c) = Compiled::new(net, p)? else {
            continue;
        };
        c.calibrate(&x, side, side)?;
        let psnr_db = atelier_imaging::psnr(&run(&c)?, &base, 2.0);
        measured.push(Measured {
            precision: p,
            psnr_db,
        });
        if psnr_db >= PSNR_FLOOR_DB {
            return Ok((c, measured));
        }
    }
    Ok((f32net, measured))
}
