//! Storage for the platform. Blobs (uploads, results, model files, checkpoints) go through
//! [`Blobs`], a thin layer over the `object_store` trait: a local directory by default
//! (`object_store::local::LocalFileSystem`, which writes through a temporary file and a rename,
//! so a blob is never half-written) and any S3-compatible store for scale-out. Keys are
//! validated here so that no request can name a path outside the store.
//!
//! Metadata (keys, models, datasets, the job queue) lives in [`db::Db`].

pub mod db;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is not a valid blob key.
    #[error("invalid blob key `{0}`: use 1–512 characters of a–z, A–Z, 0–9, `-`, `_`, `.` and `/`, no empty, `.` or `..` segments")]
    InvalidKey(String),
    /// The blob is larger than the caller accepts.
    #[error("blob `{key}` is {size} bytes, over the limit of {max}")]
    TooLarge { key: String, size: u64, max: u64 },
    /// The backing store failed.
    #[error("blob store: {0}")]
    Backend(#[from] object_store::Error),
    /// The local directory cannot be used.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The database schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The storage configuration is not usable (a URL, a path).
    #[error("{0}")]
    Config(String),
    /// A stored value does not parse (a bug or a hand-edited database).
    #[error("corrupt database value: {0}")]
    Corrupt(String),
    /// The change conflicts with the current state (e.g. deleting a dataset in use).
    #[error("{0}")]
    Conflict(String),
    /// The owner has too many unfinished jobs.
    #[error("{0}")]
    QuotaExceeded(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A blob store.
#[derive(Clone)]
pub struct Blobs {
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.inner)
    }
}

/// Checks a key and converts it to a store path.
pub fn key(k: &str) -> Result<StorePath> {
    let ok = !k.is_empty()
        && k.len() <= 512
        && k.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok {
        return Err(StoreError::InvalidKey(k.chars().take(80).collect()));
    }
    StorePath::parse(k).map_err(|_| StoreError::InvalidKey(k.chars().take(80).collect()))
}

impl Blobs {
    /// Blobs in a local directory (created if missing).
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Blobs> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(true);
        Ok(Blobs {
            inner: Arc::new(fs),
        })
    }

    /// The blob store at `url`: `file://DIR` (a local directory, created if missing) or
    /// `s3://BUCKET[/PREFIX]` (any S3-compatible store; endpoint, credentials and region from
    /// the standard `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_REGION` variables; plain `http://` endpoints are allowed for stores on a private
    /// network). Checks that the store answers before returning.
    pub async fn open(url: &str) -> Result<Blobs> {
        if let Some(dir) = url.strip_prefix("file://") {
            return Blobs::local(dir);
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StoreError::Config(format!(
                "unsupported blob store URL `{url}`: use file://DIR or s3://BUCKET[/PREFIX]"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config(format!("{url}: no bucket name")));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
        let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
            "" => s3,
            p => Arc::new(object_store::prefix::PrefixStore::new(s3, key(p)?)),
        };
        let blobs = Blobs { inner: store };
        // A wrong endpoint, bucket or key fails here, at start, not on the first upload.
        match blobs.inner.head(&key("atelier-probe")?).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(blobs),
            Err(e) => Err(StoreError::Config(format!("blob store {url}: {e}"))),
        }
    }

    /// Any `object_store` backend (e.g. S3 for scale-out, in-memory for tests).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Blobs {
        Blobs { inner: store }
    }

    /// Writes a blob (atomically: readers see the old or the new content, never a mix).
    pub async fn put(&self, k: &str, data: Bytes) -> Result<()> {
        self.inner.put(&key(k)?, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Reads a blob, refusing ones over `max` bytes; `None` if it does not exist.
    pub async fn get(&self, k: &str, max: u64) -> Result<Option<Bytes>> {
        let path = key(k)?;
        let res = match self.inner.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = res.meta.size;
        if size > max {
            return Err(StoreError::TooLarge {
                key: k.to_string(),
                size,
                max,
            });
        }
        Ok(Some(res.bytes().await?))
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    pub async fn delete(&self, k: &str) -> Result<()> {
        match self.inner.delete(&key(k)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys under `prefix` (a directory-like key), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = key(prefix)?;
        let mut keys: Vec<String> = self
            .inner
            .list(Some(&p))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", "a/./b", "a\\\\b", "a b", "ä", "a/",
        ] {
            assert!(key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["uploads/3f2a/photo.jpg", "models/monet.safetensors", "a"] {
            assert!(key(good).is_ok(), "{good:?} refused");
        }
    }

    #[tokio::test]
    async fn local_put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path().join("blobs")).unwrap();
        blobs
            .put("jobs/1/result.png", Bytes::from_static(b"png"))
            .await
            .unwrap();
        blobs
            .put("jobs/2/result.png", Bytes::from_static(b"png2"))
            .await
            .unwrap();
        assert_eq!(
            blobs.get("jobs/1/result.png", 10).await.unwrap().unwrap(),
            Bytes::from_static(b"png")
        );
        assert!(matches!(
            blobs.get("jobs/2/result.png", 3).await,
            Err(StoreError::TooLarge { size: 4, .. })
        ));
        assert!(blobs.get("jobs/3/result.png", 10).await.unwrap().is_none());
        assert_eq!(
            blobs.list("jobs").await.unwrap(),
            vec!["jobs/1/result.png", "jobs/2/result.png"]
        );
        blobs.delete("jobs/1/result.png").await.unwrap();
        blobs.delete("jobs/1/result.png").await.unwrap();
        assert_eq!(blobs.list("jobs").await.unwrap(), vec!["jobs/2/result.png"]);
        // The file is where the key says, inside the directory.
        assert!(dir.path().join("blobs/jobs/2/result.png").is_file());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs/jobs/2"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
