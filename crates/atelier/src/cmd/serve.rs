//! `atelier serve`: the HTTP API on the models folder.

use std::process::ExitCode;

use anyhow::Context;
use atelier_server::{AppState, ServerConfig};

use crate::cli::{Global, ServeArgs};

pub fn run(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        data_dir: args.data,
        models_dir: global.models_dir.clone(),
        max_body_bytes: args.max_body_bytes,
        max_pixels: global.max_pixels,
        max_image_side: global.max_image_side,
        max_output_side: args.max_output_side,
        max_concurrent: args.max_concurrent,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime
        .block_on(atelier_server::serve(AppState::new(config)))
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}
