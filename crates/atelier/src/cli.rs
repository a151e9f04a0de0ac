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
    /// Time a generator forward pass against onnxruntime and PyTorch.
    Bench(BenchArgs),
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
    /// Tile side for large images (0: never tile).
    #[arg(long, default_value_t = 512)]
    pub tile: u32,
    /// Overlap between tiles in pixels (feathered blending).
    #[arg(long, default_value_t = 32)]
    pub overlap: u32,
    /// Extra image context around each tile in pixels (seen by the network, then cropped).
    #[arg(long, default_value_t = 32)]
    pub context: u32,
    /// Longer side of the image copy that gives tiles their shared normalization statistics
    /// (exact for images up to this side).
    #[arg(long, default_value_t = 1024)]
    pub stats_side: u32,
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
    /// Generator architecture: resnet_9blocks, resnet_6blocks, unet_128, unet_256, light.
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
    /// Generator: resnet_9blocks, resnet_6blocks or light.
    #[arg(long, default_value = "resnet_9blocks")]
    pub arch: String,
    /// Generator width.
    #[arg(long, default_value_t = 64)]
    pub ngf: usize,
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
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}
