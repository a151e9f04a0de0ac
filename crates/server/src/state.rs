//! Shared server state: configuration, storage, the model catalog, admission, limits and
//! metrics. Cheap to clone; everything behind `Arc`s. No globals: tests build as many as
//! they like.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use atelier_jobs::Catalog;
use atelier_store::db::Db;
use atelier_store::Blobs;

use crate::auth::KeyCache;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::ServerConfig;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub db: Db,
    pub blobs: Blobs,
    pub catalog: Arc<Catalog>,
    /// Permits for `POST /v1/stylize`; none left → 429.
    pub permits: Arc<Semaphore>,
    pub limiter: Arc<RateLimiter>,
    pub keys: Arc<KeyCache>,
    pub metrics: Arc<Metrics>,
    /// Permits to decode uploaded dataset images; further uploads wait.
    pub ingest_slots: Arc<crate::gate::Gate>,
    /// Wakes the workers when a job is queued.
    pub wake: Arc<Notify>,
    /// Turns true when the server stops: workers checkpoint and hand back their jobs, event
    /// streams end (so graceful shutdown does not wait for them).
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] atelier_store::StoreError),
    #[error(transparent)]
    Jobs(#[from] atelier_jobs::JobsError),
}

impl AppState {
    /// Opens (creating on first start) the data directory: `atelier.db` (SQLite, migrated;
    /// or the `database` URL's PostgreSQL), `blobs/`, `builtin/`, `cache/`, `runs/`.
    pub async fn open(config: ServerConfig) -> Result<AppState, StartError> {
        config.validate()?;
        let data = &config.data_dir;
        let db = match &config.database {
            Some(url) => Db::open(url).await?,
            None => Db::open_sqlite(&data.join("atelier.db")).await?,
        };
        let blobs = match &config.blobs {
            Some(url) => Blobs::open(url).await?,
            None => Blobs::local(data.join("blobs"))?,
        };
        let catalog = Catalog::open(
            db.clone(),
            blobs.clone(),
            data,
            config.models_dir.as_deref(),
        )?
        .with_precision(config.kernel_precision());
        Ok(AppState {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            ingest_slots: Arc::new(crate::gate::Gate::new(config.max_concurrent_ingest)),
            limiter: Arc::new(RateLimiter::new(config.rate_limit_per_minute)),
            keys: Arc::new(KeyCache::default()),
            metrics: Arc::new(Metrics::default()),
            wake: Arc::new(Notify::new()),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
            catalog: Arc::new(catalog),
            config: Arc::new(config),
            db,
            blobs,
        })
    }

    /// The worker context for in-process workers.
    pub fn worker_context(&self) -> atelier_jobs::worker::Context {
        let shutdown = self.shutdown.subscribe();
        atelier_jobs::worker::Context {
            db: self.db.clone(),
            blobs: self.blobs.clone(),
            catalog: self.catalog.clone(),
            data_dir: self.config.data_dir.clone(),
            config: self.config.worker.clone(),
            image_limits: self.config.limits(),
            wake: self.wake.clone(),
            shutdown,
            id: format!(
                "{}-{}",
                std::process::id(),
                atelier_store::db::new_id("", 6)
            ),
        }
    }
}
