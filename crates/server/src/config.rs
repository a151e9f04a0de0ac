//! The server's one configuration struct. Layers, each overriding the one before: built-in
//! defaults, a TOML file (`--config`, env `ATELIER_CONFIG`), environment variables and flags
//! (`atelier serve --help` lists them; the binary applies the last two).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use atelier_jobs::worker::WorkerConfig;

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    pub port: u16,
    /// Data directory: the SQLite database, blobs (uploads, results, models), training runs.
    /// Created with its schema on first start.
    pub data_dir: PathBuf,
    /// Metadata and job queue: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    /// Unset: `sqlite://<data_dir>/atelier.db`.
    pub database: Option<String>,
    /// Blob store (uploads, results, model files): `file://DIR` or `s3://BUCKET[/PREFIX]`
    /// (endpoint and credentials from the standard `AWS_*` variables). Unset:
    /// `file://<data_dir>/blobs`.
    pub blobs: Option<String>,
    /// Extra folder of model files (`NAME.safetensors`) served as built-in styles beside
    /// the ones compiled into the binary.
    pub models_dir: Option<PathBuf>,
    /// Key-less use as the local user `local`. Unset: on when listening on a loopback
    /// address, off otherwise.
    pub open: Option<bool>,
    /// Largest request body of `POST /v1/stylize` and other small requests, in bytes.
    pub max_body_bytes: usize,
    /// Largest upload (datasets, stylize jobs, model files and checkpoints: a resnet_9blocks
    /// ngf 64 checkpoint is 45 MB), in bytes.
    pub max_upload_bytes: usize,
    /// Largest image in pixels, checked before decoding.
    pub max_pixels: u64,
    /// Longest accepted image side, checked before decoding.
    pub max_image_side: u32,
    /// `POST /v1/stylize` downscales larger images to this longer side (jobs go further).
    pub max_output_side: u32,
    /// Images stylized at the same time by `POST /v1/stylize`; more wait (see
    /// `max_stylize_wait_s`).
    pub max_concurrent: usize,
    /// Seconds a `POST /v1/stylize` may wait for a free slot when all `max_concurrent` are
    /// busy. A request whose expected wait (from recent stylize times and the requests ahead
    /// of it) is longer, or that waits this long, gets `429 overloaded` with Retry-After.
    /// 0: never wait.
    pub max_stylize_wait_s: f64,
    /// MiB one pass of a model over a whole image may take (stylize requests and jobs);
    /// images that need more run in tiles. 0: tile every image larger than 1024 px.
    pub stylize_memory_mb: u64,
    /// Requests per minute per key (token bucket; also the burst size).
    pub rate_limit_per_minute: u32,
    /// Unfinished (queued or running) jobs per key.
    pub max_active_jobs: i64,
    /// Images per dataset.
    pub max_dataset_images: usize,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Kernel precision of stylization: `auto` (the fastest precision for the model on this
    /// CPU whose output on a probe photo stays within 40 dB PSNR of f32, see
    /// `atelier_engine::precision`), `f32`, `bf16` (AVX512_BF16 CPUs) or `int8` (AVX512_VNNI
    /// CPUs); others run f32.
    pub precision: String,
    /// Open connections; further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (from its first byte, or from the
    /// end of the previous request on a kept-alive connection); slower connections are closed.
    pub header_timeout_s: u64,
    /// Seconds a request body may go without sending any data before the request fails
    /// (`408 request_timeout`).
    pub body_timeout_s: u64,
    /// Bytes each owner may store (uploaded datasets, models, job inputs and results);
    /// uploads past it get `413 storage_quota_exceeded`. 0: no limit.
    pub max_storage_bytes_per_owner: u64,
    /// Uploaded images decoded at the same time (dataset ingest checks every image);
    /// further uploads wait for a slot.
    pub max_concurrent_ingest: usize,
    /// The in-process workers.
    pub worker: WorkerConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            data_dir: PathBuf::from("atelier-data"),
            database: None,
            blobs: None,
            models_dir: None,
            open: None,
            max_body_bytes: 32 << 20,
            max_upload_bytes: 256 << 20,
            max_pixels: 64_000_000,
            max_image_side: 16384,
            max_output_side: 2048,
            max_concurrent: 1,
            max_stylize_wait_s: 10.0,
            stylize_memory_mb: atelier_engine::DEFAULT_MEMORY_BUDGET >> 20,
            rate_limit_per_minute: 600,
            max_active_jobs: 4,
            max_dataset_images: 5000,
            log_format: "text".into(),
            precision: "auto".into(),
            max_connections: 512,
            header_timeout_s: 30,
            body_timeout_s: 60,
            max_storage_bytes_per_owner: 10 << 30,
            max_concurrent_ingest: 1,
            worker: WorkerConfig::default(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Defaults overlaid with the TOML file at `path`, if given.
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(ServerConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks values that would fail later in less clear ways.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.max_concurrent == 0 {
            return bad("max_concurrent must be at least 1");
        }
        if !(0.0..=600.0).contains(&self.max_stylize_wait_s) {
            return bad("max_stylize_wait_s must be in 0..=600");
        }
        if self.max_body_bytes < 1024 || self.max_upload_bytes < 1024 {
            return bad("max_body_bytes and max_upload_bytes must be at least 1024");
        }
        if self.rate_limit_per_minute == 0 {
            return bad("rate_limit_per_minute must be at least 1");
        }
        if self.max_connections == 0 || self.max_concurrent_ingest == 0 {
            return bad("max_connections and max_concurrent_ingest must be at least 1");
        }
        if self.header_timeout_s == 0 || self.body_timeout_s == 0 {
            return bad("header_timeout_s and body_timeout_s must be at least 1");
        }
        if self.max_active_jobs < 1 {
            return bad("max_active_jobs must be at least 1");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format: expected text or json");
        }
        if atelier_engine::PrecisionChoice::parse(&self.precision).is_none() {
            return bad("precision: expected auto, f32, bf16 or int8");
        }
        if self.worker.lease_s <= self.worker.heartbeat_s {
            return bad("worker.lease_s must be longer than worker.heartbeat_s");
        }
        Ok(())
    }

    /// The kernel precision (validated).
    pub fn kernel_precision(&self) -> atelier_engine::PrecisionChoice {
        atelier_engine::PrecisionChoice::parse(&self.precision).unwrap_or_default()
    }

    /// Whether key-less requests are allowed.
    pub fn is_open(&self) -> bool {
        self.open.unwrap_or_else(|| is_loopback(&self.host))
    }

    /// Image limits for uploads.
    pub fn limits(&self) -> atelier_imaging::Limits {
        atelier_imaging::Limits {
            max_pixels: self.max_pixels,
            max_side: self.max_image_side,
            max_bytes: self.max_body_bytes.max(self.max_upload_bytes) as u64,
        }
    }

    /// The platform's part of the configuration.
    pub fn platform_settings(&self) -> atelier_jobs::Settings {
        atelier_jobs::Settings {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            blobs: self.blobs.clone(),
            models_dir: self.models_dir.clone(),
            precision: self.kernel_precision(),
            stylize_memory_budget: self.stylize_memory_mb.saturating_mul(1 << 20),
            max_active_jobs: self.max_active_jobs,
            max_storage_bytes_per_owner: self.max_storage_bytes_per_owner,
            max_output_side: self.max_output_side,
            image_limits: self.limits(),
            ingest_limits: self.ingest_limits(),
            max_concurrent_ingest: self.max_concurrent_ingest,
            rate_limit_per_minute: self.rate_limit_per_minute,
            worker: self.worker.clone(),
        }
    }

    /// Limits for dataset uploads.
    pub fn ingest_limits(&self) -> atelier_jobs::datasets::IngestLimits {
        let d = atelier_jobs::datasets::IngestLimits::default();
        atelier_jobs::datasets::IngestLimits {
            max_images: self.max_dataset_images,
            image: atelier_imaging::Limits {
                max_pixels: self.max_pixels.min(d.image.max_pixels),
                max_side: self.max_image_side.min(d.image.max_side),
                max_bytes: d.max_image_bytes,
            },
            ..d
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layer_and_open_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("atelier.toml");
        std::fs::write(
            &p,
            "port = 9000\nhost = \"0.0.0.0\"\n[worker]\ntrain_workers = 2\n",
        )
        .unwrap();
        let c = ServerConfig::load(Some(&p)).unwrap();
        assert_eq!((c.port, c.worker.train_workers), (9000, 2));
        assert_eq!(c.max_concurrent, 1);
        assert!(!c.is_open());
        assert!(ServerConfig::default().is_open());
        std::fs::write(&p, "prot = 9000\n").unwrap();
        let e = ServerConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
    }
}
