//! Shared server state: configuration, the platform (catalog, queue, blobs), admission,
//! limits and metrics. Cheap to clone; everything behind `Arc`s. No globals: tests build as
//! many as they like.

use std::sync::Arc;

use atelier_jobs::Platform;

use crate::auth::KeyCache;
use crate::metrics::Metrics;
use crate::ServerConfig;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    /// Every API operation: the routes are an HTTP adapter over it.
    pub platform: Platform,
    /// Slots and the short queue of `POST /v1/stylize`.
    pub admission: Arc<crate::admission::Admission>,
    pub keys: Arc<KeyCache>,
    pub metrics: Arc<Metrics>,
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
    Jobs(#[from] atelier_jobs::JobsError),
}

impl AppState {
    /// Opens (creating on first start) the data directory: `atelier.db` (SQLite, migrated;
    /// or the `database` URL's PostgreSQL), `blobs/` (or the `blobs` URL's bucket),
    /// `builtin/`, `cache/`, `runs/`.
    pub async fn open(config: ServerConfig) -> Result<AppState, StartError> {
        config.validate()?;
        let platform = Platform::open(config.platform_settings()).await?;
        Ok(AppState {
            admission: Arc::new(crate::admission::Admission::new(
                config.max_concurrent,
                config.max_stylize_wait_s,
            )),
            keys: Arc::new(KeyCache::default()),
            metrics: Arc::new(Metrics::default()),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
            config: Arc::new(config),
            platform,
        })
    }

    /// The worker context for in-process workers.
    pub fn worker_context(&self) -> atelier_jobs::worker::Context {
        self.platform.worker_context(self.shutdown.subscribe())
    }
}
