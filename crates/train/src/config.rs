//! The one description of a training run, written to `config.json` in the run directory and
//! read back by `atelier train resume`.

use std::path::PathBuf;

use atelier_nets::arch::Arch;
use atelier_nets::dcgan::{BriefDConfig, BriefGConfig, Dcgan64Config};
use atelier_nets::discriminators::{NLayerConfig, PixelConfig};
use atelier_nets::light::LightConfig;
use atelier_nets::resnet::ResnetConfig;
use atelier_nets::unet::UnetConfig;
use atelier_nets::NormKind;
use serde::{Deserialize, Serialize};

use crate::{Augment, GanLoss, TrainError};

/// Version tag of `config.json`.
pub const CONFIG_FORMAT: &str = "atelier-train-config/1";

/// The model families (one recipe each, `crate::recipes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Noise → image (the brief's example).
    Dcgan,
    /// Paired image → image with the conditional GAN objective + L1.
    Pix2pix,
    /// Unpaired image → image with cycle and identity losses.
    Cyclegan,
    /// Unpaired image → image with one generator and PatchNCE (Park et al. 2020), with the
    /// identity NCE term.
    Cut,
    /// CUT without the identity term, λ_NCE 10 and flip equivariance.
    Fastcut,
    /// A (lighter) generator trained on photos to reproduce a teacher generator's
    /// translations: L1 to the teacher's output plus a conditional PatchGAN.
    Distill,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Dcgan => "dcgan",
            Family::Pix2pix => "pix2pix",
            Family::Cyclegan => "cyclegan",
            Family::Cut => "cut",
            Family::Fastcut => "fastcut",
            Family::Distill => "distill",
        }
    }

    /// Whether the family trains on two unpaired domains.
    pub fn unpaired(self) -> bool {
        matches!(self, Family::Cyclegan | Family::Cut | Family::Fastcut)
    }
}

/// PatchNCE settings of CUT and FastCUT (the reference's options of the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NceConfig {
    /// `--nce_layers`: indices of the generator's modules whose outputs are compared (see
    /// `ResnetGenerator::encode`).
    pub layers: Vec<usize>,
    /// `--num_patches` sampled per layer and image.
    pub num_patches: usize,
    /// `--netF_nc`: width of the MLP heads.
    pub nc: usize,
    /// `--nce_T`: the temperature τ.
    pub tau: f64,
    /// `--lambda_NCE`.
    pub lambda_nce: f64,
    /// `--lambda_GAN`.
    pub lambda_gan: f64,
    /// `--nce_idt`: the identity term PatchNCE(B, G(B)).
    pub nce_idt: bool,
    /// `--flip_equivariance`.
    pub flip_equivariance: bool,
    /// Weight of the total variation of the translation ([`crate::loss::total_variation`])
    /// in G's loss; 0 (the reference) is off.
    #[serde(default)]
    pub lambda_tv: f64,
}

impl NceConfig {
    /// The reference's `--CUT_mode CUT` (FastCUT with `fast`).
    pub fn reference(fast: bool) -> Self {
        Self {
            layers: vec![0, 4, 8, 12, 16],
            num_patches: 256,
            nc: 256,
            tau: 0.07,
            lambda_nce: if fast { 10.0 } else { 1.0 },
            lambda_gan: 1.0,
            nce_idt: !fast,
            flip_equivariance: fast,
            lambda_tv: 0.0,
        }
    }
}

impl Default for NceConfig {
    fn default() -> Self {
        Self::reference(false)
    }
}

/// DCGAN presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcganPreset {
    /// The brief's network (TensorFlow DCGAN tutorial): 28×28, Adam(1e-4).
    Brief,
    /// pytorch/examples DCGAN: 64×64, Adam(2e-4, β1 0.5).
    #[serde(rename = "64")]
    D64,
}

/// pix2pix direction (the reference's `--direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Direction {
    #[default]
    AtoB,
    BtoA,
}

/// Learning-rate schedule: a factor applied to the base rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum LrPolicy {
    /// The base rate throughout.
    Constant,
    /// The reference's `linear` policy: the base rate for `n_epochs` epochs, then linear decay
    /// over `n_epochs_decay` epochs: factor `1 − max(0, e + 1 − n_epochs) / (n_epochs_decay + 1)`
    /// for 0-based epoch `e`. This is the schedule of the CycleGAN paper and of the reference's
    /// `train.py` before 2020 (scheduler stepped at the end of each epoch: constant for
    /// `n_epochs`, the last epoch at 1/(n_epochs_decay + 1)); the current `train.py` steps it at
    /// the start of each epoch, one epoch earlier, so its last epoch trains at rate 0.
    LinearEpochs { n_epochs: u64, n_epochs_decay: u64 },
    /// The same rule counted in steps (used when a run is given in steps).
    LinearSteps { constant: u64, decay: u64 },
}

impl LrPolicy {
    /// The factor at `step` (0-based) in 0-based `epoch`.
    pub fn factor(&self, step: u64, epoch: u64) -> f64 {
        let rule = |t: u64, n: u64, d: u64| {
            let over = (t + 1).saturating_sub(n) as f64;
            (1.0 - over / (d + 1) as f64).max(0.0)
        };
        match *self {
            LrPolicy::Constant => 1.0,
            LrPolicy::LinearEpochs {
                n_epochs,
                n_epochs_decay,
            } => rule(epoch, n_epochs, n_epochs_decay),
            LrPolicy::LinearSteps { constant, decay } => rule(step, constant, decay),
        }
    }
}

/// Everything that defines a run. Paths are stored as given (absolute after
/// [`TrainConfig::absolutize`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Always [`CONFIG_FORMAT`].
    pub format: String,
    pub family: Family,
    /// Images (DCGAN), domain A (CycleGAN), aligned AB images or inputs (pix2pix).
    pub data_a: PathBuf,
    /// Domain B (CycleGAN) or targets matched by file name (pix2pix).
    pub data_b: Option<PathBuf>,
    /// Augmentation; `crop_size` is the training size.
    pub augment: Augment,
    pub batch: usize,
    /// Total optimisation steps (one step = one D and one G update).
    pub steps: u64,
    /// The epochs asked for, when the run was given in epochs.
    pub epochs: Option<u64>,
    pub loss: GanLoss,
    pub generator: Arch,
    pub discriminator: Arch,
    /// Adam for G and D.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub lr_policy: LrPolicy,
    /// pix2pix λ_L1.
    pub lambda_l1: f64,
    /// CycleGAN λ_A = λ_B.
    pub lambda_cycle: f64,
    /// CycleGAN identity weight (relative to λ_cycle).
    pub lambda_identity: f64,
    /// CycleGAN image pool size (0 = off).
    pub pool_size: usize,
    pub direction: Direction,
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub checkpoint_every: u64,
    /// Also checkpoint when this many minutes passed since the last checkpoint (0 = off), so
    /// that slow steps do not put hours of work at risk.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    pub sample_every: u64,
    pub log_every: u64,
    /// Periodic checkpoints kept on disk (the newest ones). Checkpoints of validated steps
    /// (multiples of the validation's `kid_every`) are all kept besides, so any validated
    /// state can be exported (`atelier train export RUN --step N`).
    pub keep_checkpoints: usize,
    /// Consecutive steps with a near-zero D loss before the "D wins" warning.
    pub d_wins_steps: u64,
    /// Name of the exported model(s).
    pub name: String,
    /// Free text about the data and its licence, copied into the model card.
    pub data_description: String,
    pub data_licence: String,
    /// Periodic KID on held-out images (CycleGAN); `None`: off.
    #[serde(default)]
    pub validation: Option<Validation>,
    /// CycleGAN: a network's passes over independent inputs (G over the real image and the
    /// identity input; D over the real and the pooled fake) run as one batch when the network
    /// treats samples independently. Same results as separate passes up to float rounding.
    #[serde(default = "yes")]
    pub batched_passes: bool,
    /// CUT / FastCUT: PatchNCE settings.
    #[serde(default)]
    pub nce: NceConfig,
    /// Start from these weights (a model file, or a run directory's newest checkpoint)
    /// instead of random ones; copied into the run at creation (`init.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// How `init_from` is named in notes and model cards (e.g. a built-in style's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_label: Option<String>,
    /// Distillation: the teacher model file (copied into the run at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// Arithmetic of the convolutions while training (stored, so a resumed run keeps it;
    /// runs written before it existed train in f32).
    #[serde(default)]
    pub precision: TrainPrecision,
}

/// The arithmetic of a run's training convolutions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 products with f32 sums in every convolution's forward, input gradient and weight
    /// gradient, as PyTorch's `autocast(dtype=bfloat16)` on the CPU; parameters, optimizer,
    /// norms and losses stay f32. Runs f32 on CPUs without AVX512_BF16.
    Bf16,
}

impl TrainPrecision {
    /// `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "fp32" => Some(Self::F32),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The kernels' precision.
    pub fn kernels(self) -> atelier_nets::Precision {
        match self {
            Self::F32 => atelier_nets::Precision::F32,
            Self::Bf16 => atelier_nets::Precision::Bf16,
        }
    }
}

fn yes() -> bool {
    true
}

/// Held-out validation images and the periodic KID and structure metrics on them (unpaired
/// families).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Every `every`-th image of each folder (in sorted order, starting with the first) is
    /// kept out of training.
    pub every: usize,
    /// At most this many held-out images per domain.
    pub max_images: usize,
    /// KID of the translated held-out images every this many steps (and at the end).
    pub kid_every: u64,
    /// The FID Inception weights (`fid_inception_v3.safetensors`).
    pub weights: PathBuf,
    /// Folders of validation images for domains A and B (e.g. a split's `val` folders). When
    /// given, nothing is held out of the training folders and up to `max_images` of each are
    /// used instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folders: Option<[PathBuf; 2]>,
    /// The side validation images are translated at (default: the training crop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

/// Choices that shape the networks; resolved into [`Arch`]s by [`TrainConfig::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct NetChoice {
    /// `resnet_<N>blocks`, `unet` (depth from the size), `unet_128`, `unet_256`, `light`;
    /// DCGAN ignores it.
    pub net_g: Option<String>,
    /// `basic`, `n_layers`, `pixel`.
    pub net_d: Option<String>,
    pub ngf: Option<usize>,
    pub ndf: Option<usize>,
    pub n_layers_d: usize,
    pub norm: Option<NormKind>,
    pub dropout: Option<bool>,
    pub preset: DcganPreset,
    pub nz: usize,
}

impl Default for NetChoice {
    fn default() -> Self {
        Self {
            net_g: None,
            net_d: None,
            ngf: None,
            ndf: None,
            n_layers_d: 3,
            norm: None,
            dropout: None,
            preset: DcganPreset::D64,
            nz: 100,
        }
    }
}

fn default_checkpoint_minutes() -> f64 {
    10.0
}

fn bad(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

impl TrainConfig {
    /// The reference defaults of a family, with networks built from `nets` and the given size
    /// (`None` = the family's default: 256, DCGAN 64 or 28).
    pub fn new(
        family: Family,
        data_a: PathBuf,
        data_b: Option<PathBuf>,
        size: Option<u32>,
        nets: &NetChoice,
    ) -> Result<TrainConfig, TrainError> {
        let size = size.unwrap_or(match (family, nets.preset) {
            (Family::Dcgan, DcganPreset::Brief) => 28,
            (Family::Dcgan, DcganPreset::D64) => 64,
            _ => 256,
        });
        if !(8..=4096).contains(&size) {
            return Err(bad(format!("size {size} is outside 8..=4096")));
        }
        let (generator, discriminator) = networks(family, size, nets)?;
        let augment = match family {
            // DCGAN: pytorch/examples' Resize + CenterCrop (aspect kept), no flip.
            Family::Dcgan => Augment {
                load_size: size,
                crop_size: size,
                flip: false,
                color_jitter: 0.0,
                center_square: true,
            },
            // The reference: load 286 for a 256 crop, i.e. ×286/256.
            _ => Augment {
                load_size: (size as u64 * 286).div_ceil(256) as u32,
                crop_size: size,
                flip: true,
                color_jitter: 0.0,
                center_square: false,
            },
        };
        let brief = family == Family::Dcgan && nets.preset == DcganPreset::Brief;
        Ok(TrainConfig {
            format: CONFIG_FORMAT.into(),
            family,
            data_a,
            data_b,
            augment,
            batch: match family {
                Family::Dcgan if brief => 256,
                Family::Dcgan => 64,
                Family::Pix2pix
                | Family::Cyclegan
                | Family::Cut
                | Family::Fastcut
                | Family::Distill => 1,
            },
            steps: 0,
            epochs: None,
            loss: match family {
                Family::Cyclegan | Family::Cut | Family::Fastcut | Family::Distill => {
                    GanLoss::Lsgan
                }
                _ => GanLoss::Vanilla,
            },
            generator,
            discriminator,
            lr: if brief { 1e-4 } else { 2e-4 },
            beta1: if brief { 0.9 } else { 0.5 },
            beta2: 0.999,
            lr_policy: LrPolicy::Constant,
            lambda_l1: 100.0,
            lambda_cycle: 10.0,
            lambda_identity: 0.5,
            pool_size: 50,
            direction: Direction::AtoB,
            seed: 0,
            device: "cpu".into(),
            checkpoint_every: 1000,
            checkpoint_minutes: default_checkpoint_minutes(),
            sample_every: 200,
            log_every: 10,
            keep_checkpoints: 3,
            d_wins_steps: 200,
            batched_passes: true,
            nce: NceConfig::reference(family == Family::Fastcut),
            init_from: None,
            init_label: None,
            teacher: None,
            precision: TrainPrecision::F32,
            name: family.name().into(),
            data_description: String::new(),
            data_licence: String::new(),
            validation: None,
        })
    }

    /// Sets the run length: `steps`, or `epochs` of `batches_per_epoch`, and the family's
    /// default schedule (pix2pix and CycleGAN: constant for the first half, linear decay to
    /// zero over the second half, as the reference's 100 + 100 epochs).
    pub fn set_length(
        &mut self,
        steps: Option<u64>,
        epochs: Option<u64>,
        epochs_decay: Option<u64>,
        batches_per_epoch: u64,
    ) -> Result<(), TrainError> {
        let decays = self.family != Family::Dcgan;
        match (steps, epochs) {
            (Some(_), Some(_)) => return Err(bad("give --steps or --epochs, not both")),
            (Some(0), _) | (_, Some(0)) => return Err(bad("the run length must be positive")),
            (Some(s), None) => {
                self.steps = s;
                self.epochs = None;
                if decays {
                    let decay = match epochs_decay {
                        Some(d) => (d * batches_per_epoch).min(s),
                        None => s / 2,
                    };
                    self.lr_policy = LrPolicy::LinearSteps {
                        constant: s - decay,
                        decay,
                    };
                }
            }
            (None, Some(e)) => {
                let decay = if decays { epochs_decay.unwrap_or(e) } else { 0 };
                self.epochs = Some(e + decay);
                self.steps = (e + decay) * batches_per_epoch;
                if decays {
                    self.lr_policy = LrPolicy::LinearEpochs {
                        n_epochs: e,
                        n_epochs_decay: decay,
                    };
                }
            }
            (None, None) => return Err(bad("give --steps or --epochs")),
        }
        Ok(())
    }

    /// Checks consistency (sizes against architectures, positive counts).
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.format != CONFIG_FORMAT {
            return Err(bad(format!(
                "config format `{}`, expected `{CONFIG_FORMAT}`",
                self.format
            )));
        }
        self.augment
            .validate()
            .map_err(|e| bad(format!("augmentation: {e}")))?;
        if self.batch == 0 || self.batch > 4096 {
            return Err(bad(format!("batch {} is outside 1..=4096", self.batch)));
        }
        if self.steps == 0 {
            return Err(bad("the run has zero steps"));
        }
        if !(self.checkpoint_minutes.is_finite() && self.checkpoint_minutes >= 0.0) {
            return Err(bad("--checkpoint-minutes must be ≥ 0"));
        }
        if self.log_every == 0 || self.checkpoint_every == 0 || self.sample_every == 0 {
            return Err(bad(
                "--log-every, --checkpoint-every and --sample-every must be positive",
            ));
        }
        if let Some(v) = &self.validation {
            if !self.family.unpaired() {
                return Err(bad(
                    "--kid-every is for unpaired runs (cyclegan, cut, fastcut)",
                ));
            }
            if v.every < 2 || v.kid_every == 0 || v.max_images < 2 {
                return Err(bad(
                    "--val-every must be ≥ 2, --kid-every ≥ 1 and --val-max-images ≥ 2",
                ));
            }
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err(bad(format!("learning rate {} is outside (0, 1)", self.lr)));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(format!("Adam {name} {b} is outside [0, 1)")));
            }
        }
        for (name, l) in [
            ("lambda-l1", self.lambda_l1),
            ("lambda-cycle", self.lambda_cycle),
            ("lambda-identity", self.lambda_identity),
        ] {
            if !(l.is_finite() && l >= 0.0) {
                return Err(bad(format!("--{name} must be ≥ 0, got {l}")));
            }
        }
        let size = self.augment.crop_size as usize;
        match self.family {
            Family::Dcgan => {
                let native = match self.generator {
                    Arch::BriefG(_) => 28,
                    _ => 64,
                };
                if size != native {
                    return Err(bad(format!(
                        "the {} generator makes {native}×{native} images; use --size {native}",
                        self.generator.name()
                    )));
                }
                if self.family == Family::Dcgan && self.data_b.is_some() {
                    return Err(bad("DCGAN takes one image folder (--data-a)"));
                }
            }
            Family::Pix2pix
            | Family::Cyclegan
            | Family::Cut
            | Family::Fastcut
            | Family::Distill => {
                let m = self.generator.size_multiple();
                if !size.is_multiple_of(m) {
                    return Err(bad(format!(
                        "{} needs a size that is a multiple of {m}; got {size}",
                        self.generator.name()
                    )));
                }
                if self.family.unpaired() && self.data_b.is_none() {
                    return Err(bad(format!(
                        "{} needs two image folders (--data-a and --data-b)",
                        self.family.name()
                    )));
                }
                if matches!(self.family, Family::Cut | Family::Fastcut) {
                    self.validate_nce()?;
                }
                if self.family == Family::Distill {
                    if self.teacher.is_none() {
                        return Err(bad("distill needs a teacher model (--teacher)"));
                    }
                    if self.data_b.is_some() {
                        return Err(bad(
                            "distill trains on photos only (--data-a); the teacher makes the targets",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_nce(&self) -> Result<(), TrainError> {
        let n = &self.nce;
        if !matches!(self.generator, Arch::Resnet(_)) {
            return Err(bad(format!(
                "{} compares the encoder features of a resnet_<N>blocks generator; --netG {} has none",
                self.family.name(),
                self.generator.name()
            )));
        }
        if n.layers.is_empty() || n.layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(format!(
                "--nce-layers {:?}: give ascending module indices without repeats",
                n.layers
            )));
        }
        if let Arch::Resnet(c) = self.generator {
            let end = 10 + c.n_blocks + 2 * if c.upsampling.is_transposed() { 3 } else { 5 };
            if let Some(&l) = n.layers.iter().find(|&&l| l >= end) {
                return Err(bad(format!(
                    "--nce-layers: {} has modules 0..{} before its head; {l} is past them",
                    c.name(),
                    end - 1
                )));
            }
        }
        if !(1..=4096).contains(&n.num_patches) || !(1..=4096).contains(&n.nc) {
            return Err(bad("--num-patches and --netf-nc must be in 1..=4096"));
        }
        if !(n.tau.is_finite() && n.tau > 0.0) {
            return Err(bad(format!("--nce-t must be positive, got {}", n.tau)));
        }
        for (name, l) in [
            ("lambda-nce", n.lambda_nce),
            ("lambda-gan", n.lambda_gan),
            ("lambda-tv", n.lambda_tv),
        ] {
            if !(l.is_finite() && l >= 0.0) {
                return Err(bad(format!("--{name} must be ≥ 0, got {l}")));
            }
        }
        Ok(())
    }

    /// Makes the data paths absolute so that `resume` works from any directory.
    pub fn absolutize(&mut self) {
        fn abs(p: &PathBuf) -> PathBuf {
            std::path::absolute(p).unwrap_or_else(|_| p.clone())
        }
        self.data_a = abs(&self.data_a);
        self.data_b = self.data_b.as_ref().map(abs);
        self.teacher = self.teacher.as_ref().map(abs);
        self.init_from = self.init_from.as_ref().map(abs);
        if let Some(v) = self.validation.as_mut() {
            if let Some([a, b]) = v.folders.as_ref() {
                v.folders = Some([abs(a), abs(b)]);
            }
        }
    }
}

fn networks(family: Family, size: u32, c: &NetChoice) -> Result<(Arch, Arch), TrainError> {
    if family == Family::Dcgan {
        let ngf = c.ngf.unwrap_or(64);
        let ndf = c.ndf.unwrap_or(64);
        return Ok(match c.preset {
            DcganPreset::Brief => (
                Arch::BriefG(BriefGConfig {
                    nz: c.nz,
                    channels: 3,
                    width: ngf,
                }),
                Arch::BriefD(BriefDConfig {
                    channels: 3,
                    size: size as usize,
                    width: ndf,
                }),
            ),
            DcganPreset::D64 => (
                Arch::Dcgan64G(Dcgan64Config {
                    nz: c.nz,
                    width: ngf,
                    nc: 3,
                }),
                Arch::Dcgan64D(Dcgan64Config {
                    nz: c.nz,
                    width: ndf,
                    nc: 3,
                }),
            ),
        });
    }
    let pix = family == Family::Pix2pix;
    // Conditional discriminators see (input, output) pairs.
    let conditional = pix || family == Family::Distill;
    let norm = c.norm.unwrap_or(if pix {
        NormKind::Batch
    } else {
        NormKind::Instance
    });
    let dropout = c.dropout.unwrap_or(pix);
    let ngf = c.ngf.unwrap_or(64);
    let default_g = match family {
        Family::Pix2pix => "unet",
        Family::Distill => "light",
        _ => "resnet_9blocks",
    };
    let g_name = c.net_g.as_deref().unwrap_or(default_g);
    let generator = if g_name.starts_with("resnet_") {
        let (n_blocks, upsampling) = ResnetConfig::parse_name(g_name).ok_or_else(|| {
            bad(format!(
                "--netG {g_name}: expected resnet_<N>blocks or resnet_<N>blocks_resize"
            ))
        })?;
        Arch::Resnet(ResnetConfig {
            input_nc: 3,
            output_nc: 3,
            ngf,
            n_blocks,
            norm,
            use_dropout: dropout,
            upsampling,
        })
    } else if g_name == "light" {
        Arch::Light(LightConfig {
            ngf: c.ngf.unwrap_or(32),
            ..LightConfig::default()
        })
    } else if let Some(rest) = g_name.strip_prefix("unet") {
        let num_downs = match rest {
            "" => (size.trailing_zeros() as usize).min(8),
            "_128" => 7,
            "_256" => 8,
            _ => {
                return Err(bad(format!(
                    "--netG {g_name}: expected unet, unet_128 or unet_256"
                )))
            }
        };
        if num_downs < 2 || !size.is_multiple_of(1 << num_downs) {
            return Err(bad(format!(
                "a U-Net with {num_downs} downsamplings needs a size that is a multiple of {} (at least 4); got {size}",
                1u32 << num_downs.max(2)
            )));
        }
        Arch::Unet(UnetConfig {
            input_nc: 3,
            output_nc: 3,
            ngf,
            num_downs,
            norm,
            use_dropout: dropout,
        })
    } else {
        return Err(bad(format!(
            "unknown --netG `{g_name}` (resnet_9blocks, resnet_6blocks, resnet_<N>blocks_resize, unet, unet_128, unet_256, light)"
        )));
    };
    let d_in = if conditional { 6 } else { 3 };
    let ndf = c.ndf.unwrap_or(64);
    let discriminator = match c.net_d.as_deref().unwrap_or("basic") {
        "basic" => Arch::NLayer(NLayerConfig {
            input_nc: d_in,
            ndf,
            n_layers: 3,
            norm,
        }),
        "n_layers" => Arch::NLayer(NLayerConfig {
            input_nc: d_in,
            ndf,
            n_layers: c.n_layers_d,
            norm,
        }),
        "pixel" => Arch::Pixel(PixelConfig {
            input_nc: d_in,
            ndf,
            norm,
        }),
        other => {
            return Err(bad(format!(
                "unknown --netD `{other}` (basic, n_layers, pixel)"
            )))
        }
    };
    Ok((generator, discriminator))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_policy_matches_the_reference_rule() {
        let p = LrPolicy::LinearEpochs {
            n_epochs: 100,
            n_epochs_decay: 100,
        };
        assert_eq!(p.factor(0, 0), 1.0);
        assert_eq!(p.factor(0, 99), 1.0);
        assert!((p.factor(0, 100) - (1.0 - 1.0 / 101.0)).abs() < 1e-12);
        assert!((p.factor(0, 199) - 1.0 / 101.0).abs() < 1e-12);
        let s = LrPolicy::LinearSteps {
            constant: 10,
            decay: 10,
        };
        assert_eq!(s.factor(9, 0), 1.0);
        assert!(s.factor(19, 0) > 0.0 && s.factor(19, 0) < 0.1);
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = TrainConfig::new(
            Family::Cyclegan,
            "a".into(),
            Some("b".into()),
            None,
            &NetChoice::default(),
        )
        .unwrap();
        assert_eq!(c.loss, GanLoss::Lsgan);
        assert_eq!(c.augment.load_size, 286);
        assert_eq!(c.generator.name(), "resnet_9blocks");
        assert_eq!(c.discriminator.name(), "basic");
        let p = TrainConfig::new(
            Family::Pix2pix,
            "a".into(),
            None,
            Some(64),
            &NetChoice::default(),
        )
        .unwrap();
        assert_eq!(p.generator.name(), "unet_64");
        assert_eq!(p.discriminator.input_channels(), 6);
        assert_eq!(p.augment.load_size, 72);
    }
}
