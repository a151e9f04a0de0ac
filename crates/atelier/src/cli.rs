//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Atelier: GAN-based image style transfer.
#[derive(Debug, Parser)]
#[command(name = "atelier", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by all commands (flags, or environment variables).
#[derive(Debug, Args)]
pub struct Global {
    /// Folder where `--model NAME` looks for `NAME.safetensors`.
    #[arg(long, env = "ATELIER_MODELS", default_value = "models", global = true)]
    pub models_dir: PathBuf,
    /// Largest accepted image in pixels (checked before decoding).
    #[arg(
        long,
        env = "ATELIER_MAX_PIXELS",
        default_value_t = 64_000_000,
        global = true
    )]
    pub max_pixels: u64,
    /// Largest accepted image side in pixels (checked before decoding).
    #[arg(
        long,
        env = "ATELIER_MAX_IMAGE_SIDE",
        default_value_t = 16384,
        global = true
    )]
    pub max_image_side: u32,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stylize images with a model.
    Stylize(Box<StylizeArgs>),
    /// Import, inspect and list model files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Time a generator forward pass (and a CycleGAN training step) against onnxruntime and
    /// PyTorch.
    Bench(Box<BenchArgs>),
    /// Train a GAN (DCGAN, pix2pix, CycleGAN); resume, export or plot a run.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Run the platform: web page, HTTP API and job workers, on SQLite + a local data folder.
    Serve(Box<ServeArgs>),
    /// Run queued jobs without serving HTTP: scale-out workers beside API nodes started with
    /// `serve --workers 0`, all on one database (`--database postgres://…`) and one blob store
    /// (`--blobs s3://…`).
    Worker(Box<WorkerArgs>),
    /// Manage the server: its database (migrate) and API keys.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Measure image quality: FID and KID between two image folders.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Fréchet Inception Distance (pytorch-fid's network, preprocessing and formula).
    Fid(EvalArgs),
    /// Kernel Inception Distance (torch-fidelity's defaults: cubic kernel, 100 subsets of
    /// up to 1000 images).
    Kid(EvalArgs),
    /// KID of each style's models (full, light, PyTorch reference) and baselines (identity,
    /// a non-learned filter) on held-out images: report.md, report.json and sample grids.
    Report(Box<ReportArgs>),
}

/// `atelier eval report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Held-out photos: every model translates all of them.
    #[arg(long)]
    pub photos: PathBuf,
    /// A style to report, `NAME=PAINTINGS` (its held-out paintings); its models are NAME and
    /// NAME_light in the models folder (repeat the flag for more styles).
    #[arg(long = "style", required = true)]
    pub styles: Vec<String>,
    /// Folder with the PyTorch reference generators as NAME.safetensors (trained by
    /// bench/reference_cyclegan.py, converted with `atelier models import`).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Output folder: report.md, report.json, grid_NAME.png.
    #[arg(long)]
    pub out: PathBuf,
    /// The FID Inception-v3 weights [default: weights/fid_inception_v3.safetensors].
    #[arg(long, env = "ATELIER_FID_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// The photos are resized to SIZE×SIZE before translation.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// KID: number of random subsets (each as large as the smaller set).
    #[arg(long, default_value_t = 100)]
    pub subsets: usize,
    /// KID: seed of the subset draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Photos (rows) in each sample grid.
    #[arg(long, default_value_t = 4)]
    pub grid_rows: usize,
    /// Photos for the sample grids instead of the first held-out ones (e.g. CC-licensed
    /// photos, so that the grids may be published).
    #[arg(long)]
    pub grid_photos: Option<PathBuf>,
    /// Timed runs of each model at 512² on the CPU (median reported; 0: skip).
    #[arg(long, default_value_t = 5)]
    pub latency_runs: usize,
    /// Write each Atelier model's KID into its model card (the file is re-saved with fp16
    /// weights).
    #[arg(long)]
    pub write_cards: bool,
    /// A markdown file appended to report.md (the discussion of the numbers, kept beside the
    /// report so that regenerating it keeps the text).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// The overview (overview.jpg): 8 photos translated at this side by every style's models,
    /// one column each (0: no overview).
    #[arg(long, default_value_t = 512)]
    pub overview_size: u32,
    /// Photos for the overview (the first 8), decoded at full size, centre squares resized to
    /// the overview's side (e.g. the Kodak images, free to publish); default: the grid photos,
    /// then the held-out ones.
    #[arg(long)]
    pub overview_photos: Option<PathBuf>,
    /// An image for the detail crops (crop_NAME.jpg): translated with its longer side at
    /// 1024 px, a 1:1 crop of its centre beside the same crop of the photo.
    #[arg(long)]
    pub crop_photo: Option<PathBuf>,
}

/// `atelier eval fid|kid`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Folder of reference images (e.g. the paintings).
    #[arg(long)]
    pub real: PathBuf,
    /// Folder of images to score (e.g. translated photos).
    #[arg(long)]
    pub fake: PathBuf,
    /// The FID Inception-v3 weights (`fid_inception_v3.safetensors`; see the README's
    /// "Quality metrics" section) [default: weights/fid_inception_v3.safetensors].
    #[arg(long, env = "ATELIER_FID_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// KID: number of random subsets.
    #[arg(long, default_value_t = 100)]
    pub subsets: usize,
    /// KID: images per subset (capped at the smaller folder).
    #[arg(long, default_value_t = 1000)]
    pub subset_size: usize,
    /// KID: seed of the subset draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// `atelier serve`: each flag overrides its environment variable, which overrides the
/// `--config` file, which overrides the defaults (`ServerConfig`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in `ServerConfig`, e.g. `port = 8080`, `[worker]`).
    #[arg(long, env = "ATELIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "ATELIER_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long, env = "ATELIER_PORT")]
    pub port: Option<u16>,
    /// Data directory: database, uploads, results, models, training runs [default: ./atelier-data].
    #[arg(long, env = "ATELIER_DATA")]
    pub data: Option<PathBuf>,
    /// Metadata and job queue: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// [default: sqlite://DATA/atelier.db].
    #[arg(long, env = "ATELIER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Blob store for uploads, results and model files: `file://DIR` or
    /// `s3://BUCKET[/PREFIX]` (endpoint and credentials from `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`) [default: file://DATA/blobs].
    #[arg(long, env = "ATELIER_BLOBS")]
    pub blobs: Option<String>,
    /// Allow key-less use as the user `local` [default: only when listening on loopback].
    #[arg(long, env = "ATELIER_OPEN", conflicts_with = "require_keys")]
    pub open: bool,
    /// Require an API key for every request, also on loopback.
    #[arg(long)]
    pub require_keys: bool,
    /// Largest request body of POST /v1/stylize and other small requests [default: 32 MiB].
    #[arg(long, env = "ATELIER_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest upload: datasets, stylize jobs, model files, checkpoints [default: 256 MiB].
    #[arg(long, env = "ATELIER_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<usize>,
    /// Longest output side of POST /v1/stylize (jobs go up to worker.max_job_side) [default: 2048].
    #[arg(long, env = "ATELIER_MAX_OUTPUT_SIDE")]
    pub max_output_side: Option<u32>,
    /// Images stylized at once by POST /v1/stylize; more wait (--max-stylize-wait) [default: 1].
    #[arg(long, env = "ATELIER_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Seconds a POST /v1/stylize may wait for a busy slot; a longer expected wait gets 429 +
    /// Retry-After (0: never wait) [default: 10].
    #[arg(long, env = "ATELIER_MAX_STYLIZE_WAIT")]
    pub max_stylize_wait: Option<f64>,
    /// MiB one pass of a model over a whole image may take; larger images run in tiles (0: tile
    /// every image above 1024 px) [default: 4096].
    #[arg(long, env = "ATELIER_STYLIZE_MEMORY_MB")]
    pub stylize_memory_mb: Option<u64>,
    /// Requests per minute per key [default: 600].
    #[arg(long, env = "ATELIER_RATE_LIMIT")]
    pub rate_limit_per_minute: Option<u32>,
    /// Unfinished jobs per key [default: 4].
    #[arg(long, env = "ATELIER_MAX_ACTIVE_JOBS")]
    pub max_active_jobs: Option<i64>,
    /// Job workers in this process: sets both --train-workers and --stylize-workers (0: an
    /// API-only node; `atelier worker` processes run the jobs).
    #[arg(long, env = "ATELIER_WORKERS")]
    pub workers: Option<usize>,
    /// Training jobs run at once by this process (0: none; another process works) [default: 1].
    #[arg(long, env = "ATELIER_TRAIN_WORKERS")]
    pub train_workers: Option<usize>,
    /// Stylize jobs run at once by this process [default: 1].
    #[arg(long, env = "ATELIER_STYLIZE_WORKERS")]
    pub stylize_workers: Option<usize>,
    /// Kernel precision of stylization: auto (full-size models int8 on AVX512_VNNI CPUs, else
    /// bf16 on AVX512_BF16 ones, if their output on a probe photo stays within 40 dB PSNR of
    /// f32; light models f32), f32, bf16 (AVX512_BF16 CPUs) or int8 (AVX512_VNNI CPUs); others
    /// run f32 [default: auto].
    #[arg(long, env = "ATELIER_PRECISION")]
    pub precision: Option<String>,
    /// Open connections at most; more clients wait in the listen backlog [default: 512].
    #[arg(long, env = "ATELIER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send its request headers [default: 30].
    #[arg(long, env = "ATELIER_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Seconds a request body may send nothing before it fails with 408 [default: 60].
    #[arg(long, env = "ATELIER_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Bytes of datasets and models each owner may store; 0 = no limit [default: 10 GiB].
    #[arg(long, env = "ATELIER_MAX_STORAGE_PER_OWNER")]
    pub max_storage_per_owner: Option<u64>,
    /// Uploaded dataset images decoded at once; more uploads wait [default: 1].
    #[arg(long, env = "ATELIER_MAX_CONCURRENT_INGEST")]
    pub max_concurrent_ingest: Option<usize>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "ATELIER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create the data folder's database, or bring a database (SQLite or PostgreSQL) to the
    /// current schema. `serve` does this on start; the other admin commands never create one.
    Migrate {
        #[command(flatten)]
        data: DataArg,
    },
    /// Create an API key and print it (shown once; only its argon2 hash is stored).
    CreateKey {
        /// The account the key acts for; keys of one owner share datasets, jobs and models.
        #[arg(long, default_value = "default")]
        owner: String,
        /// A note to recognise the key by.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// List API keys (ids, owners, labels; never secrets).
    ListKeys {
        #[command(flatten)]
        data: DataArg,
    },
    /// Revoke an API key by its id (`k…`).
    RevokeKey {
        id: String,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// TOML configuration file (the server's keys; `[worker]` and storage are what matter).
    #[arg(long, env = "ATELIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Local working space: training runs, caches [default: ./atelier-data].
    #[arg(long, env = "ATELIER_DATA")]
    pub data: Option<PathBuf>,
    /// The queue and metadata: `postgres://…` (or the `sqlite://PATH` of a server on this
    /// machine) [default: sqlite://DATA/atelier.db].
    #[arg(long, env = "ATELIER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// The blob store the API nodes use: `s3://BUCKET[/PREFIX]` or `file://DIR`
    /// [default: file://DATA/blobs].
    #[arg(long, env = "ATELIER_BLOBS")]
    pub blobs: Option<String>,
    /// Kinds of jobs this worker takes, each with one lane: `train`, `stylize` or both.
    #[arg(
        long,
        env = "ATELIER_LANES",
        value_delimiter = ',',
        default_value = "train,stylize"
    )]
    pub lanes: Vec<Lane>,
    /// Where training runs: cpu, or cuda / cuda:N (a binary built with `--features cuda`).
    #[arg(long, env = "ATELIER_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Kernel precision of stylization: auto (full-size models int8 on AVX512_VNNI CPUs, else
    /// bf16 on AVX512_BF16 ones, if their output on a probe photo stays within 40 dB PSNR of
    /// f32; light models f32), f32, bf16 (AVX512_BF16 CPUs) or int8 (AVX512_VNNI CPUs); others
    /// run f32 [default: auto].
    #[arg(long, env = "ATELIER_PRECISION")]
    pub precision: Option<String>,
    /// `text` or `json` log lines [default: text].
    #[arg(long, env = "ATELIER_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// A kind of job a worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lane {
    Train,
    Stylize,
}

#[derive(Debug, Args)]
pub struct DataArg {
    /// The server's data directory.
    #[arg(long, env = "ATELIER_DATA", default_value = "atelier-data")]
    pub data: PathBuf,
    /// The server's database: `sqlite://PATH` or `postgres://…` [default: sqlite://DATA/atelier.db].
    #[arg(long, env = "ATELIER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Noise → image: the brief's DCGAN (`--preset brief`, 28×28) or the 64×64 DCGAN.
    Dcgan(Box<TrainArgs>),
    /// Paired image → image (`--data-a` aligned AB images, or `--data-a` inputs and
    /// `--data-b` targets matched by file name).
    Pix2pix(Box<TrainArgs>),
    /// Unpaired translation between two image folders (`--data-a`, `--data-b`).
    Cyclegan(Box<TrainArgs>),
    /// Unpaired translation with one generator and PatchNCE (CUT, Park et al. 2020): about
    /// half of CycleGAN's work per step; keeps the photo's structure.
    Cut(Box<TrainArgs>),
    /// CUT without the identity term, λ_NCE 10 and flip equivariance (the cheapest unpaired
    /// recipe per step).
    Fastcut(Box<TrainArgs>),
    /// Distil a style into a lighter generator (default: light): trained on photos
    /// (`--data-a`) to reproduce `--teacher`'s translations (L1 + conditional PatchGAN).
    Distill(Box<TrainArgs>),
    /// Continue a run after Ctrl-C, `kill -9` or a crash, from its newest checkpoint.
    Resume {
        /// The run directory.
        run: PathBuf,
        /// Continue on another device (the run's own by default).
        #[arg(long)]
        device: Option<String>,
    },
    /// Export the generator(s) of a run's newest checkpoint as model files (RUN/NAME.safetensors),
    /// without training; works while the run is still going.
    Export {
        /// The run directory.
        run: PathBuf,
        /// Export this step's checkpoint instead of the newest (checkpoints of validated
        /// steps are all kept).
        #[arg(long)]
        step: Option<u64>,
    },
    /// Redraw RUN/loss.png from RUN/metrics.jsonl.
    Plot {
        /// The run directory.
        run: PathBuf,
        /// Write the PNG here instead.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Compare runs at equal CPU budget: their validation KID, edge correlation and sharpness
    /// against the CPU minutes spent training (a PNG), and a markdown table of each run's last
    /// validation within the budget (runs trained with --kid-every).
    Compare {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The chart (PNG).
        #[arg(long, short)]
        output: PathBuf,
        /// The budget in CPU minutes (default: the smallest any of the runs reached).
        #[arg(long)]
        budget_minutes: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    Vanilla,
    Lsgan,
    Hinge,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    /// The brief's network: z=100 → dense 7×7×256 → 5×5 transposed convs → 28×28; Adam 1e-4.
    Brief,
    /// pytorch/examples DCGAN at 64×64; Adam 2e-4, β1 0.5.
    #[value(name = "64")]
    D64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DirectionArg {
    #[value(name = "AtoB")]
    AtoB,
    #[value(name = "BtoA")]
    BtoA,
}

/// Options of a new training run; defaults are the reference implementations'.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training images (DCGAN), domain A (CycleGAN), or aligned AB images / inputs (pix2pix):
    /// a folder or a zip.
    #[arg(long)]
    pub data_a: PathBuf,
    /// Domain B (CycleGAN) or pix2pix targets matched to --data-a by file name.
    #[arg(long)]
    pub data_b: Option<PathBuf>,
    /// Run directory (created): config, checkpoints, metrics, samples, loss plot, models.
    #[arg(long)]
    pub out: PathBuf,
    /// Training crop size (default 256; DCGAN 64, or 28 for --preset brief).
    #[arg(long)]
    pub size: Option<u32>,
    /// Images are resized to this before the random crop (default size×286/256).
    #[arg(long)]
    pub load_size: Option<u32>,
    /// Batch size (default 1 for pix2pix/CycleGAN, 64 for DCGAN, 256 for the brief's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Run length in optimisation steps.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Run length in epochs (pix2pix/CycleGAN: then as many epochs of linear LR decay,
    /// as the reference's 100 + 100).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Epochs of linear learning-rate decay (pix2pix/CycleGAN; default: as many as --epochs
    /// with --epochs, the second half of the run with --steps).
    #[arg(long)]
    pub epochs_decay: Option<u64>,
    /// With --steps: the last N steps decay the learning rate linearly to 0 (instead of
    /// --epochs-decay).
    #[arg(long, conflicts_with_all = ["epochs", "epochs_decay"], requires = "steps")]
    pub steps_decay: Option<u64>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of every random choice (weights, data order, augmentation, noise, dropout, pool).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Adversarial loss (default: vanilla for DCGAN/pix2pix, lsgan for CycleGAN).
    #[arg(long)]
    pub loss: Option<LossArg>,
    /// Generator: resnet_9blocks (CycleGAN default), resnet_6blocks, resnet_NNblocks (any NN;
    /// add `_resize` for resize-convolution upsampling, no checkerboard), unet (pix2pix
    /// default, depth from --size), unet_128, unet_256, light.
    #[arg(long = "netG", alias = "netg")]
    pub net_g: Option<String>,
    /// Discriminator: basic (70×70 PatchGAN), n_layers, pixel.
    #[arg(long = "netD", alias = "netd")]
    pub net_d: Option<String>,
    /// Generator width (filters of the first layer).
    #[arg(long)]
    pub ngf: Option<usize>,
    /// Discriminator width.
    #[arg(long)]
    pub ndf: Option<usize>,
    /// Layers of an n_layers discriminator.
    #[arg(long, default_value_t = 3)]
    pub n_layers_d: usize,
    /// instance or batch (default: batch for pix2pix, instance for CycleGAN).
    #[arg(long)]
    pub norm: Option<String>,
    /// No dropout in the generator (pix2pix uses dropout as its noise z).
    #[arg(long)]
    pub no_dropout: bool,
    /// DCGAN network preset.
    #[arg(long, value_enum, default_value = "64")]
    pub preset: PresetArg,
    /// DCGAN noise dimension.
    #[arg(long, default_value_t = 100)]
    pub nz: usize,
    /// Adam learning rate (default 2e-4; 1e-4 for the brief's DCGAN).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam β1 (default 0.5; 0.9 for the brief's DCGAN).
    #[arg(long)]
    pub beta1: Option<f64>,
    /// pix2pix L1 weight.
    #[arg(long, default_value_t = 100.0)]
    pub lambda_l1: f64,
    /// CycleGAN cycle-consistency weight.
    #[arg(long, default_value_t = 10.0)]
    pub lambda_cycle: f64,
    /// CycleGAN identity weight, relative to --lambda-cycle.
    #[arg(long, default_value_t = 0.5)]
    pub lambda_identity: f64,
    /// CycleGAN image pool size (0 turns it off).
    #[arg(long, default_value_t = 50)]
    pub pool_size: usize,
    /// pix2pix direction.
    #[arg(long, value_enum, default_value = "AtoB")]
    pub direction: DirectionArg,
    /// No random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Random brightness/contrast/saturation jitter, e.g. 0.2 (against over-fitting).
    #[arg(long, default_value_t = 0.0)]
    pub color_jitter: f32,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Also checkpoint after this many minutes without one (0: off).
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_minutes: f64,
    /// Sample grid (and loss plot) every N steps.
    #[arg(long, default_value_t = 200)]
    pub sample_every: u64,
    /// Metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Periodic checkpoints kept on disk.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Arithmetic of the training convolutions: f32, or bf16 (bf16 products with f32 sums in
    /// every convolution and its gradients, like PyTorch's CPU autocast; needs AVX512_BF16,
    /// f32 elsewhere; parameters and optimizer stay f32). Kept when the run resumes.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
    /// Warn when the discriminator's loss stays near zero this many steps.
    #[arg(long, default_value_t = 200)]
    pub d_wins_steps: u64,
    /// Name of the exported model file(s).
    #[arg(long)]
    pub name: Option<String>,
    /// What the data is, for the model card.
    #[arg(long, default_value = "")]
    pub data_description: String,
    /// Licence of the data, for the model card.
    #[arg(long, default_value = "")]
    pub data_licence: String,
    /// Start from an existing style instead of random weights: a model file, a model name
    /// (the models folder, then the built-ins, e.g. `monet`), or a run directory (its newest
    /// checkpoint: generator, discriminator and CUT's heads where they fit). Without --netG /
    /// --ngf the generator's architecture is the source's.
    #[arg(long)]
    pub init_from: Option<String>,
    /// distill: the teacher, a model file or name (models folder, then the built-ins).
    #[arg(long)]
    pub teacher: Option<String>,
    /// CUT/FastCUT: generator modules whose features PatchNCE compares (reference indices).
    #[arg(long, value_delimiter = ',', default_value = "0,4,8,12,16")]
    pub nce_layers: Vec<usize>,
    /// CUT/FastCUT: patches sampled per layer and image.
    #[arg(long, default_value_t = 256)]
    pub num_patches: usize,
    /// CUT/FastCUT: width of the PatchNCE MLP heads.
    #[arg(long = "netF-nc", alias = "netf-nc", default_value_t = 256)]
    pub netf_nc: usize,
    /// CUT/FastCUT: PatchNCE temperature.
    #[arg(long = "nce-T", alias = "nce-t", default_value_t = 0.07)]
    pub nce_t: f64,
    /// CUT/FastCUT: PatchNCE weight (default 1 for CUT, 10 for FastCUT).
    #[arg(long = "lambda-NCE", alias = "lambda-nce")]
    pub lambda_nce: Option<f64>,
    /// CUT/FastCUT: adversarial weight.
    #[arg(long = "lambda-GAN", alias = "lambda-gan", default_value_t = 1.0)]
    pub lambda_gan: f64,
    /// CUT/FastCUT: weight of the translation's total variation, a penalty on high-frequency
    /// noise (0 = off, as in the reference; 0.5–2 tames grainy results).
    #[arg(long = "lambda-TV", alias = "lambda-tv", default_value_t = 0.0)]
    pub lambda_tv: f64,
    /// Unpaired runs: KID and structure metrics (edge correlation, sharpness) of translated
    /// validation images every N steps (and at the end), written to metrics.jsonl and the loss
    /// plot; needs the FID Inception weights (--fid-weights).
    #[arg(long)]
    pub kid_every: Option<u64>,
    /// With --kid-every: validation folders of domains A and B (e.g. a split's val folders)
    /// instead of holding images out of the training folders.
    #[arg(long, num_args = 2, value_names = ["VAL_A", "VAL_B"])]
    pub val_folders: Option<Vec<PathBuf>>,
    /// With --kid-every: translate validation images at this side (default: --size).
    #[arg(long)]
    pub val_size: Option<u32>,
    /// With --kid-every: hold out every Nth image of each folder (sorted; never trained on).
    #[arg(long, default_value_t = 10)]
    pub val_every: usize,
    /// With --kid-every: at most this many held-out images per domain.
    #[arg(long, default_value_t = 100)]
    pub val_max_images: usize,
    /// With --kid-every: `fid_inception_v3.safetensors` (see the README's quality metrics)
    /// [default: weights/fid_inception_v3.safetensors].
    #[arg(long, env = "ATELIER_FID_WEIGHTS")]
    pub fid_weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutFormat {
    Jpg,
    Png,
    Webp,
}

#[derive(Debug, Args)]
pub struct StylizeArgs {
    /// Image files or folders of images (jpg, png, webp).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Model file, or the name of a model in the models folder.
    #[arg(long, short)]
    pub model: String,
    /// Output folder, or output file when there is one input image.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Output format (default: from the output file name, else the input's format).
    #[arg(long)]
    pub format: Option<OutFormat>,
    /// JPEG quality.
    #[arg(long, default_value_t = 92, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Downscale inputs so that their longer side is at most N pixels.
    #[arg(long)]
    pub max_side: Option<u32>,
    /// Memory one pass of the network over a whole image may take (e.g. 4G, 512M, 0);
    /// images that need more run in tiles. 0: tile every image larger than --tile.
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    pub memory_budget: u64,
    /// Largest tile side when an image is tiled (0: never tile, whatever the memory).
    #[arg(long, default_value_t = 1024)]
    pub tile: u32,
    /// Least overlap between tiles in pixels (feathered blending).
    #[arg(long, default_value_t = 32)]
    pub overlap: u32,
    /// Extra image context around each tile in pixels (seen by the network, then cropped).
    #[arg(long, default_value_t = 16)]
    pub context: u32,
    /// Longer side of the image copy that gives tiles their shared normalization statistics
    /// (exact for images up to this side).
    #[arg(long, default_value_t = 1024)]
    pub stats_side: u32,
    /// Kernel precision: auto (full-size models int8 on AVX512_VNNI CPUs, else bf16 on
    /// AVX512_BF16 ones, if their output on a probe photo stays within 40 dB PSNR of f32;
    /// light models f32), f32, bf16 on CPUs with AVX512_BF16, int8 on CPUs with AVX512_VNNI
    /// (others run f32).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "int8"])]
    pub precision: String,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Convert a pytorch-CycleGAN-and-pix2pix checkpoint (.pth or .safetensors state dict)
    /// into an Atelier model file.
    Import(Box<ImportArgs>),
    /// Print a model file's card and parameter count.
    Inspect {
        /// Model file or name.
        model: String,
    },
    /// List the models in the models folder.
    List,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The checkpoint, e.g. `latest_net_G_A.pth`.
    pub checkpoint: PathBuf,
    /// Output model file (default: the models folder, named after --name).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Model name (default: the checkpoint's file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Generator architecture: resnet_9blocks, resnet_6blocks (resnet_NNblocks_resize for
    /// resize-convolution upsampling), unet_128, unet_256, light.
    #[arg(long = "netG", alias = "netg")]
    pub net_g: Option<String>,
    /// Discriminator architecture: basic, n_layers, pixel.
    #[arg(long = "netD", alias = "netd", conflicts_with = "net_g")]
    pub net_d: Option<String>,
    /// Generator filters in the first conv layer.
    #[arg(long)]
    pub ngf: Option<usize>,
    /// Discriminator filters in the first conv layer.
    #[arg(long)]
    pub ndf: Option<usize>,
    /// Layers of an n_layers discriminator.
    #[arg(long = "n_layers_D", alias = "n-layers-d")]
    pub n_layers_d: Option<usize>,
    /// instance, batch or none.
    #[arg(long)]
    pub norm: Option<String>,
    /// The generator was built without dropout.
    #[arg(long = "no_dropout", alias = "no-dropout")]
    pub no_dropout: bool,
    /// Input channels.
    #[arg(long = "input_nc", alias = "input-nc")]
    pub input_nc: Option<usize>,
    /// Output channels.
    #[arg(long = "output_nc", alias = "output-nc")]
    pub output_nc: Option<usize>,
    /// Batch norm uses the input's statistics at inference (the reference's test.py without --eval).
    #[arg(long)]
    pub batch_stats: bool,
    /// Description for the model card.
    #[arg(long, default_value = "")]
    pub description: String,
    /// What the model was trained on, for the model card.
    #[arg(long, default_value = "unknown")]
    pub data: String,
    /// Licence of the training data, for the model card.
    #[arg(long, default_value = "unknown")]
    pub data_licence: String,
    /// Licence of the weights.
    #[arg(long, default_value = "unknown")]
    pub license: String,
    /// Side length the model was trained at.
    #[arg(long)]
    pub train_size: Option<u32>,
    /// Store weights as float16 (half the size).
    #[arg(long)]
    pub fp16: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image sides to time.
    #[arg(long, value_delimiter = ',', default_values_t = [256u32, 512, 1024])]
    pub sizes: Vec<u32>,
    /// Generator: resnet_9blocks, resnet_6blocks or light. The default is the benchmark
    /// network of the kernels issue: 32-64-128 channels, 6 blocks, 9.07 GMAC at 256².
    #[arg(long, default_value = "resnet_6blocks")]
    pub arch: String,
    /// Generator width.
    #[arg(long, default_value_t = 32)]
    pub ngf: usize,
    /// Image sides for the light generator's rows.
    #[arg(long, value_delimiter = ',', default_values_t = [512u32])]
    pub light_sizes: Vec<u32>,
    /// Width of the light generator.
    #[arg(long, default_value_t = 32)]
    pub light_ngf: usize,
    /// Skip the light generator's rows.
    #[arg(long)]
    pub no_light: bool,
    /// Skip the bf16 rows.
    #[arg(long)]
    pub no_bf16: bool,
    /// Skip the int8 rows.
    #[arg(long)]
    pub no_int8: bool,
    /// Models of the int8 quality rows: each one's fp32 and int8 forward times and the PSNR
    /// of its int8 output against its fp32 output on --int8-images (default: every model in
    /// the models folder).
    #[arg(long, value_delimiter = ',')]
    pub int8_models: Vec<String>,
    /// Image sides of the int8 quality rows.
    #[arg(long, value_delimiter = ',', default_values_t = [512u32, 1024])]
    pub int8_sizes: Vec<u32>,
    /// Photos for the int8 quality rows (a folder; each is resized to every --int8-sizes
    /// side and the PSNR averaged over them). Without it the rows use one synthetic image,
    /// which says little about quality on photos.
    #[arg(long)]
    pub int8_images: Option<PathBuf>,
    /// Largest number of --int8-images used.
    #[arg(long, default_value_t = 8)]
    pub int8_max_images: usize,
    /// Timed repetitions per size (median reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Threads for every engine (Atelier uses rayon's pool, the peers their own settings).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python with torch and onnxruntime for the peers (default: bench/.venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the peers.
    #[arg(long)]
    pub no_peers: bool,
    /// Print the tables as JSON: the forward rows as an array, or, where int8 model rows or
    /// product rows were measured, an object `{rows, int8, product, serve, cold_start}`.
    #[arg(long)]
    pub json: bool,
    /// Also time one CycleGAN training step (this generator, 70×70 PatchGAN D, LSGAN, pool,
    /// Adam) at --train-size, batch 1, against PyTorch (bench/train_step.py).
    #[arg(long)]
    pub train: bool,
    /// Only the training step (no forward-pass sizes).
    #[arg(long)]
    pub train_only: bool,
    /// Also time the product path (JPEG in → stylized JPEG out, the default options) of this
    /// model beside its raw forward pass at --product-sizes (a built-in name or a file).
    #[arg(long)]
    pub product: Option<String>,
    /// Image sides of the product-path rows.
    #[arg(long, value_delimiter = ',', default_values_t = [512u32, 513, 1024, 2048, 4096])]
    pub product_sizes: Vec<u32>,
    /// Only the product-path rows (no generator forward-pass rows, no training step).
    #[arg(long, requires = "product")]
    pub product_only: bool,
    /// Also time `atelier serve` with the --product model: the first request after a restart
    /// against warm ones, and images per second at --serve-clients concurrent clients beside
    /// the raw model's.
    #[arg(long, requires = "product")]
    pub serve: bool,
    /// Concurrent clients of the --serve rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    pub serve_clients: Vec<usize>,
    /// Seconds each --serve row sends requests.
    #[arg(long, default_value_t = 20.0)]
    pub serve_seconds: f64,
    /// Image side of the --serve rows.
    #[arg(long, default_value_t = 512)]
    pub serve_size: u32,
    /// Image side of the training-step benchmark.
    #[arg(long, default_value_t = 128)]
    pub train_size: u32,
    /// Training step: run each network's passes separately, as the reference does, instead of
    /// batching a network's independent passes (to measure what the batching buys).
    #[arg(long)]
    pub train_separate_passes: bool,
    /// Precisions of the training-step rows: f32 (PyTorch's default as the peer) and bf16
    /// (`train --precision bf16`, PyTorch under `torch.autocast` bf16 as the peer; skipped on
    /// CPUs without AVX512_BF16).
    #[arg(long, value_delimiter = ',', default_values_t = ["f32".to_string(), "bf16".to_string()], value_parser = ["f32", "bf16"])]
    pub train_precision: Vec<String>,
}

/// A byte count: a number with an optional K, M, G or T suffix (powers of 1024; `KiB`, `MB`
/// and the like are read the same way).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4G, 512M, 1000000)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes(" 64 KB "), Ok(64 << 10));
        for bad in ["", "G", "4X", "-1", "1e999", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
