//! Command implementations.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Global};

mod bench;
mod bench_int8;
mod bench_product;
mod bench_serve;
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
        Command::Bench(args) => bench::run(&cli.global, *args),
        Command::Train(cmd) => train::run(&cli.global, cmd),
        Command::Serve(args) => serve::run(&cli.global, *args),
        Command::Worker(args) => serve::worker(&cli.global, *args),
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

    /// Resolves `--model`: an existing file, `<models_dir>/<name>.safetensors`, or a
    /// built-in style compiled into the binary (the ones `atelier serve` shows).
    pub fn model_source(&self, model: &str) -> anyhow::Result<ModelSource> {
        let p = std::path::Path::new(model);
        if p.is_file() {
            return Ok(ModelSource::File(p.to_path_buf()));
        }
        let named = self.models_dir.join(format!("{model}.safetensors"));
        if named.is_file() {
            return Ok(ModelSource::File(named));
        }
        if let Some((name, _, bytes)) = atelier_jobs::builtin::EMBEDDED
            .iter()
            .find(|(n, _, _)| *n == model)
        {
            return Ok(ModelSource::Builtin(name, bytes));
        }
        let mut available = atelier_nets::file::model_names(&self.models_dir);
        for (name, _, _) in atelier_jobs::builtin::EMBEDDED {
            if !available.iter().any(|n| n == name) {
                available.push(name.to_string());
            }
        }
        anyhow::bail!(
            "no model file `{model}`, no model named `{model}` in {} and no built-in style `{model}` (available: {})",
            self.models_dir.display(),
            available.join(", ")
        )
    }

    /// Loads `--model` (see [`Global::model_source`]).
    pub fn load_model(
        &self,
        model: &str,
        device: &candle_core::Device,
    ) -> anyhow::Result<atelier_nets::Model> {
        use anyhow::Context;
        match self.model_source(model)? {
            ModelSource::File(path) => atelier_nets::load(&path, device)
                .with_context(|| format!("loading model {}", path.display())),
            ModelSource::Builtin(name, bytes) => {
                Ok(atelier_nets::file::load_bytes(name, bytes, device)?)
            }
        }
    }

    /// The card of `--model`.
    pub fn model_card(&self, model: &str) -> anyhow::Result<atelier_nets::ModelCard> {
        match self.model_source(model)? {
            ModelSource::File(path) => Ok(atelier_nets::file::read_card(&path)?),
            ModelSource::Builtin(name, bytes) => {
                let (_, meta) = atelier_nets::file::parse_safetensors(bytes)
                    .map_err(|reason| anyhow::anyhow!("built-in model {name}: {reason}"))?;
                Ok(atelier_nets::file::card_from_metadata(
                    std::path::Path::new(name),
                    meta.as_ref(),
                )?)
            }
        }
    }
}

/// Where a `--model` comes from.
pub enum ModelSource {
    File(std::path::PathBuf),
    Builtin(&'static str, &'static [u8]),
}
