//! Stylizes images of any size with an Atelier model.
//!
//! An image runs whole, in one pass, while the network's memory for it fits
//! [`Options::memory_budget`] (default 4 GiB: a 2048² photo through a full-size ResNet
//! generator needs about 3 GB). The memory a pass takes is measured once per model, by running
//! it on a small blank image and counting its activation buffers ([`Stylizer::memory_for`]).
//!
//! Above the budget the image is cut into the fewest overlapping tiles of at most
//! [`Options::tile`] pixels a side ([`TileGrid::balanced`]), each seen with some extra image
//! context around it, and their outputs are blended with feathered weights, so memory is
//! bounded by the tile size, not the image size. Instance normalization would normally
//! compute its statistics per tile, which shows as seams and colour shifts between tiles.
//! Here every tile uses statistics that are global to the image, as in URST's thumbnail
//! instance normalization (Chen et al., AAAI 2022): the network runs once on a copy of the
//! image whose longer side is at most `thumbnail_side` (default 1024) and records each
//! normalization layer's mean and variance; every tile then replays them. For a 4096² image
//! that pass costs 1/16 of the image. The statistics of the last few images are kept, so a
//! second request for the same image (another model strength, another format) skips it.
//!
//! Two other estimators were tried and measured worse (tile 256 on a 1024² photo, PSNR against
//! the untiled output, random-weight ResNet and light generators): re-measuring
//! full-resolution statistics over the tiles with the thumbnail statistics upstream (the layers
//! become inconsistent: 27–32 dB, diverging when iterated) and pooled statistics of
//! full-resolution patches sampled over the image (25–37 dB); a 512-px thumbnail gave 34–40 dB.
//!
//! Batch-norm models in eval mode (running statistics) need none of this: their tiles are
//! independent.

pub mod precision;

pub use precision::Choice as PrecisionChoice;

use atelier_imaging::{Blender, Image, Rect, TileGrid};
use atelier_nets::{Arch, Ctx, LayerStats, Model, Precision, Role};
use candle_core::{Device, Tensor};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nets(#[from] atelier_nets::Error),
    #[error(transparent)]
    Imaging(#[from] atelier_imaging::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model cannot stylize images (a discriminator, a noise generator, wrong channels).
    #[error("model `{name}` ({arch}) cannot stylize RGB images: {why}")]
    NotATranslator {
        name: String,
        arch: String,
        why: String,
    },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// [`Stylizer::stylize_until`] was told to stop before the image was done.
    #[error("stopped before the image was done")]
    Stopped,
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// Options of [`Stylizer::stylize`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Largest tile side in pixels when the image is above the memory budget; 0 never tiles
    /// (the whole image in one pass, whatever its size).
    pub tile: u32,
    /// Least overlap between neighbouring tiles in pixels (blended with feathered weights).
    pub overlap: u32,
    /// Extra image context around each tile in pixels: the network sees it, the output keeps
    /// only the tile (so tile borders are not computed from reflection padding).
    pub context: u32,
    /// Longer side of the copy of the image that gives tiles their normalization statistics.
    pub thumbnail_side: u32,
    /// Bytes the network may use for one pass over the whole image; larger images are tiled.
    /// 0: tile every image larger than `tile`.
    pub memory_budget: u64,
}

/// [`Options::memory_budget`]'s default: 4 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;

impl Default for Options {
    fn default() -> Self {
        Self {
            tile: 1024,
            overlap: 32,
            context: 16,
            thumbnail_side: 1024,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Progress of one image: `done` of `total` network passes (tiles, thumbnails).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// A loaded model ready to stylize.
pub struct Stylizer {
    model: Model,
    device: Device,
    /// The network on Atelier's CPU kernels (CPU, supported architectures).
    compiled: Option<atelier_nets::Compiled>,
    /// Bytes per input pixel of one pass on the kernels (measured at load).
    bytes_per_pixel: Option<f64>,
    /// The precision the kernels run at, and what `auto` measured to pick it.
    precision: Precision,
    measured: Vec<precision::Measured>,
    /// Normalization statistics of recently tiled images.
    stats_cache: std::sync::Mutex<StatsCache>,
}

/// Side of the blank image [`Stylizer::memory_for`] measures at load.
const PROBE_SIDE: usize = 128;

/// Statistics of the last few tiled images, keyed by [`image_key`].
#[derive(Default)]
struct StatsCache {
    entries: std::collections::VecDeque<([u8; 32], std::sync::Arc<Vec<LayerStats>>)>,
}

impl StatsCache {
    const KEEP: usize = 8;

    fn get(&self, key: [u8; 32]) -> Option<std::sync::Arc<Vec<LayerStats>>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: [u8; 32], stats: std::sync::Arc<Vec<LayerStats>>) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, stats));
        self.entries.truncate(Self::KEEP);
    }
}

/// SHA-256 of an image's values, its size and the thumbnail side (a cryptographic hash, so
/// that no image can be made to take another's statistics; ~0.1 s for a 4096² image, under a
/// percent of its tiled pass).
fn image_key(src: &[f32], w: usize, h: usize, side: u32) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update((w as u64).to_le_bytes());
    hasher.update((h as u64).to_le_bytes());
    hasher.update(side.to_le_bytes());
    for chunk in src.chunks(1 << 14) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    hasher.finalize().into()
}

/// Reflect-pads a CHW buffer on the right and bottom.
fn pad_reflect_chw(data: &[f32], c: usize, w: usize, h: usize, pw: usize, ph: usize) -> Vec<f32> {
    let (nw, nh) = (w + pw, h + ph);
    let refl = |i: usize, n: usize| -> usize {
        if i < n {
            i
        } else {
            // Reflect about the last index; fall back to clamping for tiny inputs.
            let r = 2 * (n - 1) as i64 - i as i64;
            r.max(0) as usize
        }
    };
    let mut out = Vec::with_capacity(c * nw * nh);
    for ch in 0..c {
        let plane = &data[ch * w * h..(ch + 1) * w * h];
        for y in 0..nh {
            let row = &plane[refl(y, h) * w..][..w];
            out.extend_from_slice(row);
            for x in w..nw {
                out.push(row[refl(x, w)]);
            }
        }
    }
    out
}

fn round_up(v: u32, m: u32) -> u32 {
    v.div_ceil(m) * m
}

impl Stylizer {
    /// Wraps a loaded model; fails if it is not an RGB image-to-image generator. On the CPU
    /// the network runs on Atelier's own kernels in fp32 (see [`Stylizer::with_precision`]).
    pub fn new(model: Model, device: Device) -> Result<Self> {
        Self::with_precision(model, device, Precision::F32)
    }

    /// Like [`Stylizer::new`] with a kernel precision: bf16 where the CPU has AVX512_BF16,
    /// int8 where it has AVX512_VNNI, fp32 otherwise.
    pub fn with_precision(model: Model, device: Device, precision: Precision) -> Result<Self> {
        Self::with_choice(model, device, PrecisionChoice::Fixed(precision))
    }

    /// Like [`Stylizer::new`] with a precision or `auto` (the fastest precision that meets
    /// the quality floor on this CPU, measured now: see [`precision`]).
    pub fn with_choice(model: Model, device: Device, choice: PrecisionChoice) -> Result<Self> {
        let arch = model.card.arch;
        let not = |why: String| Error::NotATranslator {
            name: model.card.name.clone(),
            arch: arch.name(),
            why,
        };
        if arch.role() != Role::Translator {
            return Err(not(match arch.role() {
                Role::Discriminator => "it is a discriminator".into(),
                _ => "it generates images from noise".into(),
            }));
        }
        if arch.input_channels() != 3 || arch.output_channels() != 3 {
            return Err(not(format!(
                "it maps {} to {} channels",
                arch.input_channels(),
                arch.output_channels()
            )));
        }
        let m = arch.size_multiple().max(1);
        let (compiled, measured) = match (device.is_cpu(), choice) {
            (false, _) => (None, Vec::new()),
            (true, PrecisionChoice::Fixed(p)) => {
                let c = atelier_nets::Compiled::new(&model.net, p)?;
                if let Some(c) = &c {
                    precision::calibrate(c, m)?;
                }
                (c, Vec::new())
            }
            (true, PrecisionChoice::Auto) => {
                match atelier_nets::Compiled::new(&model.net, Precision::F32)? {
                    Some(f32net) => {
                        let (c, measured) = precision::choose(&model.net, f32net, m)?;
                        (Some(c), measured)
                    }
                    None => (None, Vec::new()),
                }
            }
        };
        // What actually runs: bf16 and int8 fall back to fp32 on CPUs without them.
        let precision = match compiled.as_ref().map(|c| c.precision()) {
            Some(Precision::Bf16) if atelier_nets::kernels_isa().has_bf16() => Precision::Bf16,
            Some(Precision::Int8) if atelier_nets::has_int8() => Precision::Int8,
            _ => Precision::F32,
        };
        // One small pass: the memory a pass takes per pixel, and the kernels' code and packed
        // weights warmed before the first real image.
        let side = PROBE_SIDE.div_ceil(m) * m;
        let bytes_per_pixel = match &compiled {
            Some(c) => Some(c.measure_bytes(side, side)? as f64 / (side * side) as f64),
            None => None,
        };
        Ok(Self {
            model,
            device,
            compiled,
            bytes_per_pixel,
            precision,
            measured,
            stats_cache: Default::default(),
        })
    }

    /// The precision the network runs at: with `auto` the one the probe picked; fp32 on
    /// candle and where the CPU lacks the precision asked for.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What `auto` measured at load: the PSNR against fp32 of each lower precision it tried,
    /// in order (empty for a fixed precision, or where it tried none).
    pub fn precision_probe(&self) -> &[precision::Measured] {
        &self.measured
    }

    /// Takes activation buffers from `ws`, shared with other stylizers (see
    /// [`atelier_nets::Compiled::share_workspace`]). The buffers an image used stay for the
    /// next one (a batch of same-size images allocates once); whoever owns the workspace
    /// bounds them with [`atelier_nets::Workspace::trim`], e.g. when idle.
    pub fn with_workspace(mut self, ws: std::sync::Arc<atelier_nets::Workspace>) -> Self {
        if let Some(c) = &mut self.compiled {
            c.share_workspace(ws);
        }
        self
    }

    /// Bytes one pass of the network over a `w`×`h` image takes (activations, the input and
    /// the output), measured for this model at load; `None` where the network runs on
    /// candle (the GPU, architectures the kernels do not cover).
    pub fn memory_for(&self, w: u32, h: u32) -> Option<u64> {
        self.bytes_per_pixel
            .map(|b| (b * f64::from(w) * f64::from(h)).ceil() as u64)
    }

    /// One pass of the network over a whole image (planar RGB in [-1, 1], `w`×`h` a multiple
    /// of the architecture's size multiple) at the stylizer's precision, without padding,
    /// tiling or shared statistics: what the network alone costs (benchmarks).
    pub fn forward_whole(&self, chw: &[f32], w: usize, h: usize) -> Result<Vec<f32>> {
        let mut ctx = self.ctx();
        self.run(chw, w, h, &mut ctx)
    }

    /// Drops the activation buffers kept between images, largest first, down to `max_bytes`
    /// (of the workspace this stylizer uses, shared or not).
    pub fn trim(&self, max_bytes: usize) {
        if let Some(c) = &self.compiled {
            c.trim(max_bytes);
        }
    }

    /// Whether the model runs on Atelier's CPU kernels (else on candle).
    pub fn uses_kernels(&self) -> bool {
        self.compiled.is_some()
    }

    /// The model's card.
    pub fn card(&self) -> &atelier_nets::ModelCard {
        &self.model.card
    }

    fn arch(&self) -> Arch {
        self.model.card.arch
    }

    fn ctx(&self) -> Ctx {
        let mut ctx = Ctx::eval();
        ctx.batch_stats = self.model.card.inference.batch_stats;
        ctx
    }

    /// Whether tiles need shared statistics.
    fn data_dependent_norm(&self) -> bool {
        self.arch().has_instance_norm() || self.model.card.inference.batch_stats
    }

    fn run(&self, chw: &[f32], w: usize, h: usize, ctx: &mut Ctx) -> Result<Vec<f32>> {
        self.run_until(chw, w, h, ctx, &|| false)
    }

    /// One pass; on the kernels `stop` is asked between layers.
    fn run_until(
        &self,
        chw: &[f32],
        w: usize,
        h: usize,
        ctx: &mut Ctx,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        ctx.rewind();
        if let Some(c) = self.compiled.as_ref().filter(|c| c.supports(ctx)) {
            return match c.forward_chw_until(chw, h, w, ctx, stop) {
                Ok(y) => Ok(y.0),
                Err(atelier_nets::Error::Stopped) => Err(Error::Stopped),
                Err(e) => Err(e.into()),
            };
        }
        let x = Tensor::from_slice(chw, (1, 3, h, w), &self.device)?;
        let y = self.model.net.forward(&x, ctx)?;
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Number of network passes [`Stylizer::stylize`] will make for a `w`×`h` image.
    pub fn passes(&self, w: u32, h: u32, opts: &Options) -> usize {
        match self.plan(w, h, opts) {
            Ok(Some(grid)) => grid.len() + usize::from(self.data_dependent_norm()),
            _ => 1,
        }
    }

    /// The tile grid for a padded image, or `None` when it runs in one pass.
    fn plan(&self, w: u32, h: u32, opts: &Options) -> Result<Option<TileGrid>> {
        let m = self.arch().size_multiple() as u32;
        let (pw, ph) = (round_up(w, m), round_up(h, m));
        let fits_tile = pw <= opts.tile && ph <= opts.tile;
        let fits_budget = match (opts.memory_budget, self.memory_for(pw, ph)) {
            (0, _) => false,
            (budget, Some(need)) => need <= budget,
            // On candle the tile size alone decides.
            (_, None) => false,
        };
        if opts.tile == 0 || fits_tile || fits_budget {
            return Ok(None);
        }
        let tile = (opts.tile / m) * m;
        if tile < m || tile < 2 * opts.overlap.max(1) {
            return Err(Error::Options(format!(
                "tile size {} is too small for this model (needs a multiple of {m} and more than \
                 twice the overlap {})",
                opts.tile, opts.overlap
            )));
        }
        let overlap = round_up(opts.overlap, m).min(tile - m);
        Ok(Some(TileGrid::balanced(pw, ph, tile, overlap, m)?))
    }

    /// Stylizes an image; the result has the input's size and its alpha plane unchanged.
    pub fn stylize(
        &self,
        img: &Image,
        opts: &Options,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Image> {
        self.stylize_until(img, opts, progress, &|| false)
    }

    /// [`stylize`](Self::stylize) that asks `stop` before each network pass (each tile, the
    /// statistics thumbnail) and, on the CPU kernels, between the layers of a pass, and
    /// returns [`Error::Stopped`] once it says yes, so that a cancelled job ends within a layer
    /// instead of after the whole image.
    ///
    /// # Errors
    /// As [`stylize`](Self::stylize), and [`Error::Stopped`].
    pub fn stylize_until(
        &self,
        img: &Image,
        opts: &Options,
        progress: &mut dyn FnMut(Progress),
        stop: &dyn Fn() -> bool,
    ) -> Result<Image> {
        let go = || if stop() { Err(Error::Stopped) } else { Ok(()) };
        img.validate()?;
        let (w, h) = (img.width as usize, img.height as usize);
        let m = self.arch().size_multiple();
        let (pw, ph) = (w.div_ceil(m) * m, h.div_ceil(m) * m);
        let padded = if (pw, ph) == (w, h) {
            None
        } else {
            Some(pad_reflect_chw(&img.rgb, 3, w, h, pw - w, ph - h))
        };
        let src: &[f32] = padded.as_deref().unwrap_or(&img.rgb);
        let total = self.passes(img.width, img.height, opts);
        let mut done = 0;
        let mut tick = |progress: &mut dyn FnMut(Progress)| {
            done += 1;
            progress(Progress { done, total });
        };

        let out = match self.plan(img.width, img.height, opts)? {
            None => {
                go()?;
                let mut ctx = self.ctx();
                let out = self.run_until(src, pw, ph, &mut ctx, stop)?;
                tick(progress);
                out
            }
            Some(grid) => {
                let stats = if self.data_dependent_norm() {
                    go()?;
                    let key = image_key(src, pw, ph, opts.thumbnail_side);
                    let cached = self.cache().get(key);
                    let stats = match cached {
                        Some(s) => s,
                        None => {
                            let s = std::sync::Arc::new(self.global_stats(src, pw, ph, opts)?);
                            self.cache().put(key, s.clone());
                            s
                        }
                    };
                    tick(progress);
                    Some(stats)
                } else {
                    None
                };
                let mut blender = Blender::for_grid(&grid, 3);
                // Context is a multiple of the size multiple, so every tile keeps the
                // untiled network's downsampling phase.
                let margin = round_up(opts.context, m as u32);
                for rect in grid.rects() {
                    go()?;
                    let (x0, y0) = (rect.x.saturating_sub(margin), rect.y.saturating_sub(margin));
                    let x1 = (rect.x + rect.w + margin).min(pw as u32);
                    let y1 = (rect.y + rect.h + margin).min(ph as u32);
                    let outer = Rect::new(x0, y0, x1 - x0, y1 - y0);
                    let tile = atelier_imaging::crop_chw(src, pw as u32, ph as u32, 3, outer);
                    let mut ctx = match &stats {
                        Some(s) => self.ctx().replaying(s.as_ref().clone()),
                        None => self.ctx(),
                    };
                    let y =
                        self.run_until(&tile, outer.w as usize, outer.h as usize, &mut ctx, stop)?;
                    let inner = Rect::new(rect.x - x0, rect.y - y0, rect.w, rect.h);
                    let y = atelier_imaging::crop_chw(&y, outer.w, outer.h, 3, inner);
                    blender.add(rect, &y)?;
                    tick(progress);
                }
                blender.finish()
            }
        };
        let rgb = if (pw, ph) == (w, h) {
            out
        } else {
            atelier_imaging::crop_chw(
                &out,
                pw as u32,
                ph as u32,
                3,
                Rect::new(0, 0, w as u32, h as u32),
            )
        };
        Ok(Image::new(img.width, img.height, rgb, img.alpha.clone())?)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StatsCache> {
        self.stats_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Normalization statistics global to the (padded) image; see the crate docs.
    fn global_stats(
        &self,
        src: &[f32],
        w: usize,
        h: usize,
        opts: &Options,
    ) -> Result<Vec<LayerStats>> {
        let m = self.arch().size_multiple() as u32;
        let mut ctx = self.ctx().recording();
        let (tw, th) =
            atelier_imaging::fit_max_side(w as u32, h as u32, opts.thumbnail_side.max(m));
        let (tw, th) = (round_up(tw, m), round_up(th, m));
        if (tw as usize, th as usize) == (w, h) {
            self.run(src, w, h, &mut ctx)?;
        } else {
            let thumb = atelier_imaging::resize_planes(src, 3, (w, h), (tw as usize, th as usize));
            self.run(&thumb, tw as usize, th as usize, &mut ctx)?;
        }
        Ok(ctx.take_recorded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_pad_mirrors_edges() {
        // 1 channel, 3x2: [1 2 3; 4 5 6] padded by 2 right, 1 bottom.
        let p = pad_reflect_chw(&[1., 2., 3., 4., 5., 6.], 1, 3, 2, 2, 1);
        assert_eq!(
            p,
            vec![1., 2., 3., 2., 1., 4., 5., 6., 5., 4., 1., 2., 3., 2., 1.]
        );
    }

    use atelier_nets::resnet::ResnetConfig;
    use atelier_nets::ModelCard;
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};

    fn model(arch: Arch) -> Model {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let net = atelier_nets::Network::new(arch, vb).unwrap();
        Model {
            card: ModelCard::new("test", arch),
            net,
        }
    }

    fn resnet(ngf: usize) -> Arch {
        Arch::Resnet(ResnetConfig {
            ngf,
            n_blocks: 2,
            ..ResnetConfig::default()
        })
    }

    /// `auto` keeps light models in fp32 without measuring, and runs a full-size one in the
    /// first lower precision of the rule whose probe output stays within the floor of fp32
    /// (whatever this CPU has: with neither AVX512_VNNI nor AVX512_BF16 it is fp32 untried).
    #[test]
    fn auto_picks_by_the_rule_and_checks_quality() {
        let light = Arch::Light(atelier_nets::light::LightConfig {
            ngf: 8,
            ..Default::default()
        });
        let s = Stylizer::with_choice(model(light), Device::Cpu, PrecisionChoice::Auto).unwrap();
        assert_eq!(s.precision(), Precision::F32);
        assert!(s.precision_probe().is_empty());

        let m = model(resnet(16));
        let candidates = precision::candidates(&m.net);
        let s = Stylizer::with_choice(m, Device::Cpu, PrecisionChoice::Auto).unwrap();
        let probe = s.precision_probe();
        if candidates.is_empty() {
            assert_eq!(s.precision(), Precision::F32);
            assert!(probe.is_empty());
            return;
        }
        // Tried in the rule's order, stopping at the first that passes.
        let tried: Vec<Precision> = probe.iter().map(|m| m.precision).collect();
        assert_eq!(tried, candidates[..tried.len()], "{probe:?}");
        for (i, m) in probe.iter().enumerate() {
            let passes = m.psnr_db >= precision::PSNR_FLOOR_DB;
            assert_eq!(
                passes,
                i + 1 == probe.len() && s.precision() != Precision::F32,
                "{probe:?}"
            );
        }
        if s.precision() == Precision::F32 {
            assert_eq!(probe.len(), candidates.len(), "{probe:?}");
        } else {
            assert_eq!(probe.last().map(|m| m.precision), Some(s.precision()));
        }
    }

    /// An int8 stylizer is calibrated when it loads (on the probe photo), so the first
    /// user image neither pays for it nor decides its factors.
    #[test]
    fn int8_is_calibrated_at_load() {
        let int8 = PrecisionChoice::Fixed(Precision::Int8);
        let s = Stylizer::with_choice(model(resnet(16)), Device::Cpu, int8).unwrap();
        assert!(s.compiled.as_ref().unwrap().is_calibrated());
        if s.precision() == Precision::Int8 {
            let uncalibrated = atelier_nets::Compiled::new(&s.model.net, Precision::Int8)
                .unwrap()
                .unwrap();
            assert!(!uncalibrated.is_calibrated());
        }
    }

    fn stylizer() -> Stylizer {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let arch = Arch::Resnet(ResnetConfig {
            ngf: 4,
            n_blocks: 2,
            ..ResnetConfig::default()
        });
        let net = atelier_nets::Network::new(arch, vb).unwrap();
        let model = Model {
            card: ModelCard::new("test", arch),
            net,
        };
        Stylizer::new(model, Device::Cpu).unwrap()
    }

    /// A smooth synthetic "photo" with an edge and texture, values in [-1, 1].
    fn photo(w: u32, h: u32) -> Image {
        let mut rgb = Vec::new();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                    let edge = if fx + 0.3 * fy > 0.6 { 0.5 } else { -0.3 };
                    let tex = (x as f32 * 0.7 + c as f32).sin() * (y as f32 * 0.45).cos() * 0.2;
                    rgb.push((edge + 0.4 * fy - 0.2 * c as f32 * fx + tex).clamp(-1.0, 1.0));
                }
            }
        }
        Image::new(w, h, rgb, None).unwrap()
    }

    fn psnr(a: &Image, b: &Image) -> f64 {
        atelier_imaging::psnr(&a.rgb, &b.rgb, 2.0)
    }

    /// The kernels path (default on the CPU) and candle's give the same image, untiled and
    /// tiled (statistics recorded and replayed through both).
    #[test]
    fn kernels_and_candle_agree() {
        let mut s = stylizer();
        assert!(s.uses_kernels());
        let img = photo(136, 100);
        for tile in [0, 64] {
            let opts = Options {
                tile,
                overlap: 16,
                context: 16,
                memory_budget: 0,
                ..Options::default()
            };
            let a = s.stylize(&img, &opts, &mut |_| {}).unwrap();
            let kernels = s.compiled.take();
            let b = s.stylize(&img, &opts, &mut |_| {}).unwrap();
            s.compiled = kernels;
            let db = psnr(&a, &b);
            assert!(db > 80.0, "tile {tile}: kernels vs candle PSNR {db}");
        }
    }

    #[test]
    fn tiles_with_shared_statistics_match_the_untiled_output() {
        let s = stylizer();
        let img = photo(200, 152); // not a multiple of the tile, needs padding to 4
        let untiled = s
            .stylize(
                &img,
                &Options {
                    tile: 0,
                    ..Options::default()
                },
                &mut |_| {},
            )
            .unwrap();
        let opts = Options {
            tile: 64,
            overlap: 16,
            context: 16,
            memory_budget: 0,
            ..Options::default()
        };
        let mut passes = 0;
        let tiled = s.stylize(&img, &opts, &mut |p| passes = p.total).unwrap();
        assert_eq!((tiled.width, tiled.height), (200, 152));
        assert!(passes > 5, "expected several tiles, got {passes} passes");
        let shared = psnr(&untiled, &tiled);

        // The same tiles with their own instance-norm statistics (what naive tiling does).
        let grid = s.plan(200, 152, &opts).unwrap().unwrap();
        let padded = pad_reflect_chw(&img.rgb, 3, 200, 152, 0, 0);
        let mut blender = Blender::for_grid(&grid, 3);
        for rect in grid.rects() {
            // Same context margin as `stylize`, only the statistics differ.
            let (x0, y0) = (rect.x.saturating_sub(16), rect.y.saturating_sub(16));
            let (x1, y1) = (
                (rect.x + rect.w + 16).min(200),
                (rect.y + rect.h + 16).min(152),
            );
            let outer = Rect::new(x0, y0, x1 - x0, y1 - y0);
            let tile = atelier_imaging::crop_chw(&padded, 200, 152, 3, outer);
            let y = s
                .run(&tile, outer.w as usize, outer.h as usize, &mut s.ctx())
                .unwrap();
            let inner = Rect::new(rect.x - x0, rect.y - y0, rect.w, rect.h);
            let y = atelier_imaging::crop_chw(&y, outer.w, outer.h, 3, inner);
            blender.add(rect, &y).unwrap();
        }
        let naive = Image::new(200, 152, blender.finish(), None).unwrap();
        let per_tile = psnr(&untiled, &naive);
        eprintln!(
            "tiled vs untiled PSNR: shared statistics {shared:.1} dB, per-tile {per_tile:.1} dB"
        );
        assert!(shared >= 40.0, "shared statistics: {shared:.1} dB");
        assert!(
            shared > per_tile + 3.0,
            "shared {shared:.1} dB vs per-tile {per_tile:.1} dB"
        );
    }

    /// The per-pixel memory measured at load on a small blank image bounds what a pass over a
    /// larger image really takes, without overstating it much.
    #[test]
    fn memory_estimate_bounds_a_real_pass() {
        let s = stylizer();
        let c = s.compiled.as_ref().unwrap();
        for (w, h) in [(256, 192), (400, 300)] {
            let real = c.measure_bytes(h, w).unwrap() as f64;
            let est = s.memory_for(w as u32, h as u32).unwrap() as f64;
            assert!(est >= real, "{w}×{h}: estimate {est} < real {real}");
            assert!(est <= 1.35 * real, "{w}×{h}: estimate {est} vs real {real}");
        }
    }

    /// Whole while the pass fits the budget, however large against the tile; tiled above it;
    /// never with `tile` 0.
    #[test]
    fn the_memory_budget_decides_tiling() {
        let s = stylizer();
        let need = s.memory_for(300, 200).unwrap();
        let opts = |tile, memory_budget| Options {
            tile,
            memory_budget,
            ..Options::default()
        };
        assert_eq!(s.passes(300, 200, &opts(64, need + 1)), 1);
        // Tiles ≤ 64 overlapping ≥ 32: 9 × 6 of them, and the statistics pass.
        assert_eq!(s.passes(300, 200, &opts(64, 0)), 9 * 6 + 1);
        assert!(s.passes(300, 200, &opts(64, need / 2)) > 1);
        assert_eq!(s.passes(300, 200, &opts(0, 0)), 1);
        assert_eq!(s.passes(60, 60, &opts(64, 0)), 1);
        // The default budget runs a 2048² image whole through this small model.
        assert_eq!(s.passes(2048, 2048, &Options::default()), 1);
    }

    /// A second tiled run of the same image takes its statistics from the cache, with the
    /// same result; another image gets its own.
    #[test]
    fn statistics_are_reused_for_the_same_image() {
        let s = stylizer();
        let opts = Options {
            tile: 64,
            overlap: 16,
            memory_budget: 0,
            ..Options::default()
        };
        let a = s.stylize(&photo(140, 100), &opts, &mut |_| {}).unwrap();
        assert_eq!(s.cache().entries.len(), 1);
        let b = s.stylize(&photo(140, 100), &opts, &mut |_| {}).unwrap();
        assert_eq!(s.cache().entries.len(), 1);
        assert_eq!(a.rgb, b.rgb);
        s.stylize(&photo(140, 104), &opts, &mut |_| {}).unwrap();
        assert_eq!(s.cache().entries.len(), 2);
    }

    /// A stop that says yes part-way through a whole-image pass ends it between layers.
    #[test]
    fn a_stop_ends_a_whole_image_pass_between_layers() {
        let s = stylizer();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let stop = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 3;
        let err = s
            .stylize_until(&photo(96, 64), &Options::default(), &mut |_| {}, &stop)
            .expect_err("stopped");
        assert!(matches!(err, Error::Stopped), "{err}");
        // Asked before the pass and then between layers, not only once per pass.
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[test]
    fn alpha_passes_through_and_size_is_kept() {
        let s = stylizer();
        let mut img = photo(37, 23);
        img.alpha = Some((0..37 * 23).map(|i| (i % 7) as f32 / 6.0).collect());
        let out = s.stylize(&img, &Options::default(), &mut |_| {}).unwrap();
        assert_eq!((out.width, out.height), (37, 23));
        assert_eq!(out.alpha, img.alpha);
        assert!(out.rgb.iter().all(|v| v.abs() <= 1.0));
    }

    #[test]
    fn discriminators_are_refused() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let arch = Arch::Pixel(atelier_nets::discriminators::PixelConfig {
            input_nc: 3,
            ndf: 4,
            norm: atelier_nets::NormKind::Batch,
        });
        let net = atelier_nets::Network::new(arch, vb).unwrap();
        let model = Model {
            card: ModelCard::new("d", arch),
            net,
        };
        let err = Stylizer::new(model, Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("discriminator"), "{err}");
    }
}
