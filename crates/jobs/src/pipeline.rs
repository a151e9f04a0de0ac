//! The one stylize pipeline: encoded bytes in → a decoded image within the limits → (scaled
//! down to `max_side`) → the engine → blended by `strength` → encoded bytes out. The CLI
//! (`atelier stylize`), the server (`POST /v1/stylize`) and the workers (stylize jobs) all call
//! [`stylize_bytes`].

use atelier_engine::{Options, Progress, Stylizer};
use atelier_imaging::{Format, Image, Limits};

use crate::JobsError;

/// What to do with one image.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0 = the original, 1 = fully stylized.
    pub strength: f32,
    /// Downscale so that the longer side is at most this.
    pub max_side: Option<u32>,
    /// Output format; `None`: the input's.
    pub format: Option<Format>,
    /// JPEG / WebP quality 1–100.
    pub quality: u32,
    /// Tiling and statistics.
    pub engine: Options,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            strength: 1.0,
            max_side: None,
            format: None,
            quality: 92,
            engine: Options::default(),
        }
    }
}

impl Request {
    /// Checks the options before any work (the model and the image are checked by
    /// [`stylize_bytes`]).
    pub fn validate(&self) -> Result<(), JobsError> {
        let bad = |m: &str| Err(JobsError::BadRequest(m.into()));
        if !(0.0..=1.0).contains(&self.strength) {
            return bad("strength must be between 0 and 1");
        }
        if !(1..=100).contains(&self.quality) {
            return bad("quality must be between 1 and 100");
        }
        if self.max_side == Some(0) {
            return bad("max_side must be at least 1");
        }
        Ok(())
    }
}

/// One stylized image.
#[derive(Debug)]
pub struct Stylized {
    pub bytes: Vec<u8>,
    pub format: Format,
    pub width: u32,
    pub height: u32,
}

/// Decodes `input` (checked against `limits` before decoding), stylizes and encodes it.
/// `progress` hears of each network pass; `stop` is asked between passes (then
/// [`atelier_engine::Error::Stopped`]).
pub fn stylize_bytes(
    stylizer: &Stylizer,
    input: &[u8],
    limits: &Limits,
    req: &Request,
    progress: &mut dyn FnMut(Progress),
    stop: &dyn Fn() -> bool,
) -> Result<Stylized, JobsError> {
    req.validate()?;
    let (in_format, _, _) = atelier_imaging::probe(input, limits)?;
    let mut img = atelier_imaging::decode(input, limits)?;
    if let Some(max) = req.max_side {
        let (w, h) = atelier_imaging::fit_max_side(img.width, img.height, max);
        if (w, h) != (img.width, img.height) {
            img = atelier_imaging::resize(&img, w, h);
        }
    }
    let out = stylize_image(stylizer, &img, req.strength, &req.engine, progress, stop)?;
    drop(img);
    let format = req.format.unwrap_or(in_format);
    Ok(Stylized {
        bytes: atelier_imaging::encode(&out, format, req.quality.min(100) as u8)?,
        format,
        width: out.width,
        height: out.height,
    })
}

/// Stylizes a decoded image (tiled as `opts` says, shared statistics) and blends it with the
/// original by `strength` (0 = original, 1 = fully stylized).
pub fn stylize_image(
    stylizer: &Stylizer,
    img: &Image,
    strength: f32,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
    stop: &dyn Fn() -> bool,
) -> Result<Image, JobsError> {
    let mut out = stylizer.stylize_until(img, opts, progress, stop)?;
    if strength < 1.0 {
        for (o, i) in out.rgb.iter_mut().zip(&img.rgb) {
            *o = strength * *o + (1.0 - strength) * i;
        }
    }
    Ok(out)
}
