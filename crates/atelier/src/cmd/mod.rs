//! Command implementations.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Global};

mod bench;
mod eval;
mod models;
mod report;
mod serve;
mod stylize;
mod train;

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    atelier_nets::init_threads(match &cli.command {
        Command::Bench(args) => Some(args.threads),
        _ => None,
    });
    match cli.command {
        Command::Stylize(args) => stylize::run(&cli.global, *args),
        Command::Models(cmd) => models::run(&cli.global, cmd),
        Command::Bench(args) => bench::run(&cli.global, args),
        Command::Train(cmd) => train::run(&cli.global, cmd),
        Command::Serve(args) => serve::run(&cli.global, *args),
        Command::Admin(cmd) => serve::admin(cmd),
        Command::Eval(cmd) => eval::run(&cli.global, cmd),
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&atelier_server::openapi_document())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Global {
    pub fn limits(&self) -> atelier_imaging::Limits {
        atelier_imaging::Limits {
            max_pixels: self.max_pixels,
            max_side: self.max_image_side,
            ..atelier_imaging::Limits::default()
        }
    }

    /// Resolves `--model`: an existing file, or `<models_dir>/<name>.safetensors`.
    pub fn model_path(&self, model: &str) -> anyhow::Result<std::path::PathBuf> {
        let p = std::path::Path::new(model);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        let named = self.models_dir.join(format!("{model}.safetensors"));
        if named.is_file() {
            return Ok(named);
        }
        let available = atelier_nets::file::model_names(&self.models_dir);
        anyhow::bail!(
            "no model file `{model}` and no model named `{model}` in {} (available: {})",
            self.models_dir.display(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        )
    }
}
