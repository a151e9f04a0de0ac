//! `atelier serve` and `atelier admin`.

use std::process::ExitCode;

use anyhow::Context;
use atelier_server::{AppState, ServerConfig};

use crate::cli::{AdminCommand, Global, Lane, ServeArgs, WorkerArgs};

/// Defaults → `--config` file → environment → flags (clap resolves the last two).
fn config(global: &Global, a: ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut c = ServerConfig::load(a.config.as_deref())?;
    macro_rules! set {
        ($($field:ident).+ = $value:expr) => {
            if let Some(v) = $value {
                c.$($field).+ = v;
            }
        };
    }
    set!(host = a.host);
    set!(port = a.port);
    set!(data_dir = a.data);
    if a.database.is_some() {
        c.database = a.database;
    }
    if a.blobs.is_some() {
        c.blobs = a.blobs;
    }
    set!(max_body_bytes = a.max_body_bytes);
    set!(max_upload_bytes = a.max_upload_bytes);
    set!(max_output_side = a.max_output_side);
    set!(max_concurrent = a.max_concurrent);
    set!(max_stylize_wait_s = a.max_stylize_wait);
    set!(stylize_memory_mb = a.stylize_memory_mb);
    set!(rate_limit_per_minute = a.rate_limit_per_minute);
    set!(max_active_jobs = a.max_active_jobs);
    set!(worker.train_workers = a.workers);
    set!(worker.stylize_workers = a.workers);
    set!(worker.train_workers = a.train_workers);
    set!(worker.stylize_workers = a.stylize_workers);
    set!(max_connections = a.max_connections);
    set!(header_timeout_s = a.header_timeout);
    set!(body_timeout_s = a.body_timeout);
    set!(max_storage_bytes_per_owner = a.max_storage_per_owner);
    set!(max_concurrent_ingest = a.max_concurrent_ingest);
    set!(log_format = a.log_format);
    set!(precision = a.precision);
    if a.open {
        c.open = Some(true);
    }
    if a.require_keys {
        c.open = Some(false);
    }
    if c.models_dir.is_none() && global.models_dir.is_dir() {
        c.models_dir = Some(global.models_dir.clone());
    }
    c.max_pixels = global.max_pixels;
    c.max_image_side = global.max_image_side;
    c.validate()?;
    Ok(c)
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub fn run(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let print = args.print_config;
    let config = config(global, args)?;
    if print {
        let mut shown = config.clone();
        shown.database = shown.database.as_deref().map(atelier_store::db::redact);
        print!("{}", toml::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    init_logs(&config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let data = config.data_dir.clone();
        let state = AppState::open(config)
            .await
            .with_context(|| format!("opening the data directory {}", data.display()))?;
        let catalog = state.platform.catalog().clone();
        catalog.begin_warming();
        tokio::spawn(async move { catalog.warm_builtins().await });
        atelier_server::serve(state).await.context("serving")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `atelier worker`: the server's configuration file and storage, no HTTP.
pub fn worker(global: &Global, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut c = ServerConfig::load(a.config.as_deref())?;
    if let Some(d) = a.data {
        c.data_dir = d;
    }
    if a.database.is_some() {
        c.database = a.database;
    }
    if a.blobs.is_some() {
        c.blobs = a.blobs;
    }
    if let Some(p) = a.precision {
        c.precision = p;
    }
    if let Some(f) = a.log_format {
        c.log_format = f;
    }
    c.worker.train_workers = usize::from(a.lanes.contains(&Lane::Train));
    c.worker.stylize_workers = usize::from(a.lanes.contains(&Lane::Stylize));
    if a.lanes.is_empty() {
        anyhow::bail!("--lanes: name at least one of train, stylize");
    }
    // Checked now (a CUDA device on a CPU-only build), not at the first training job.
    atelier_train::trainer::parse_device(&a.device)?;
    c.worker.device = a.device;
    if c.models_dir.is_none() && global.models_dir.is_dir() {
        c.models_dir = Some(global.models_dir.clone());
    }
    c.max_pixels = global.max_pixels;
    c.max_image_side = global.max_image_side;
    c.validate()?;
    init_logs(&c.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let data = c.data_dir.clone();
        let platform = atelier_jobs::Platform::open(c.platform_settings())
            .await
            .with_context(|| format!("opening the storage (working space {})", data.display()))?;
        eprintln!(
            "atelier worker: {} on {} (database {}, blobs {})",
            [
                (c.worker.train_workers > 0).then_some("train"),
                (c.worker.stylize_workers > 0).then_some("stylize"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" + "),
            c.worker.device,
            c.database
                .as_deref()
                .map(atelier_store::db::redact)
                .unwrap_or_else(|| format!("sqlite://{}", data.join("atelier.db").display())),
            c.blobs
                .clone()
                .unwrap_or_else(|| format!("file://{}", data.join("blobs").display())),
        );
        atelier_server::work(platform).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn admin(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let open = |a: crate::cli::DataArg| async move {
            match &a.database {
                Some(url) => atelier_store::db::Db::open(url).await.with_context(|| {
                    format!("opening the database {}", atelier_store::db::redact(url))
                }),
                None => {
                    let file = a.data.join("atelier.db");
                    // An admin command never makes a data folder: a typo in --data would
                    // otherwise give a key to a database no server reads.
                    if !file.is_file() {
                        anyhow::bail!(
                            "no Atelier data folder at {} (it has no atelier.db): pass the server's --data (or set ATELIER_DATA), or --database for PostgreSQL; `atelier admin migrate --data {}` creates one",
                            a.data.display(),
                            a.data.display()
                        );
                    }
                    atelier_store::db::Db::open_sqlite(&file)
                        .await
                        .with_context(|| format!("opening the database in {}", a.data.display()))
                }
            }
        };
        match cmd {
            AdminCommand::Migrate { data } => {
                let (db, what) = match &data.database {
                    Some(url) => (
                        atelier_store::db::Db::open(url).await.with_context(|| {
                            format!("opening the database {}", atelier_store::db::redact(url))
                        })?,
                        atelier_store::db::redact(url),
                    ),
                    None => {
                        std::fs::create_dir_all(&data.data).with_context(|| {
                            format!("creating the data folder {}", data.data.display())
                        })?;
                        let file = data.data.join("atelier.db");
                        (
                            atelier_store::db::Db::open_sqlite(&file)
                                .await
                                .with_context(|| format!("opening {}", file.display()))?,
                            format!("sqlite://{}", file.display()),
                        )
                    }
                };
                db.close().await;
                eprintln!("{what}: the schema is current");
            }
            AdminCommand::CreateKey { owner, label, data } => {
                if !atelier_jobs::keys::valid_owner(&owner) {
                    anyhow::bail!("--owner: 1–64 letters, digits, `-` or `_` (not `builtin`)");
                }
                let db = open(data).await?;
                let key = atelier_jobs::keys::create(&db, &owner, &label).await?;
                eprintln!(
                    "API key for `{owner}` (shown once; send it as `Authorization: Bearer <key>`):"
                );
                println!("{key}");
            }
            AdminCommand::ListKeys { data } => {
                let db = open(data).await?;
                for k in db.keys().await? {
                    println!(
                        "{:<14} {:<20} {:<8} {}",
                        k.id,
                        k.owner,
                        if k.revoked { "revoked" } else { "active" },
                        k.label
                    );
                }
            }
            AdminCommand::RevokeKey { id, data } => {
                let db = open(data).await?;
                if !db.revoke_key(&id).await? {
                    anyhow::bail!("no key `{id}`");
                }
                eprintln!("revoked {id} (a running server stops accepting it within a minute)");
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
