//! Metadata in SQL (SQLite or PostgreSQL through sqlx's `Any` driver, one set of queries):
//! API keys, models, datasets and the durable job queue.
//!
//! The job queue follows the lease pattern: a worker claims the oldest queued job in one
//! statement (`UPDATE … WHERE id = (SELECT … LIMIT 1) AND status = 'queued'`, which SQLite
//! serialises; PostgreSQL adds `FOR UPDATE SKIP LOCKED`), renews its lease with heartbeats
//! that also carry the cancel flag back, and a reaper returns jobs whose lease ran out to the
//! queue. A job that was running when its worker died therefore runs again; training jobs
//! resume from their checkpoint.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, FromRow, Row};

use crate::{Result, StoreError};

/// What the database refers to in the blob store ([`Db::referenced`]).
#[derive(Debug, Default, Clone)]
pub struct Referenced {
    pub datasets: std::collections::HashSet<String>,
    pub jobs: std::collections::HashSet<String>,
    pub model_blobs: std::collections::HashSet<String>,
}

/// `url` without its password (for messages).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random identifier: `prefix` + `n` lowercase base-32 characters from the OS generator.
pub fn new_id(prefix: &str, n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    s.extend(bytes.iter().map(|b| ALPHABET[(*b as usize) % 32] as char));
    s
}

/// An API key row (the secret itself is never stored, only its argon2 hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub owner: String,
    pub hash: String,
    pub label: String,
    pub created: i64,
    pub revoked: bool,
}

// Flags are 0/1 integers in both databases (sqlx's `Any` reads no SQLite booleans), so the
// row is mapped by hand rather than derived.
impl FromRow<'_, AnyRow> for KeyRow {
    fn from_row(r: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(KeyRow {
            id: r.try_get("id")?,
            owner: r.try_get("owner")?,
            hash: r.try_get("hash")?,
            label: r.try_get("label")?,
            created: r.try_get("created")?,
            revoked: r.try_get::<i64, _>("revoked")? != 0,
        })
    }
}

/// Who may see a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Private,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

/// A user's model (built-in models are not rows; they ship with the binary).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub owner: String,
    pub name: String,
    pub visibility: Visibility,
    pub blob: String,
    /// The model card as JSON.
    pub card: serde_json::Value,
    pub size: i64,
    pub job: Option<String>,
    pub created: i64,
}

/// Dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Two unpaired domains (CycleGAN).
    Unpaired,
    /// Pairs matched by file name, or side-by-side AB images in domain A (pix2pix).
    Paired,
    /// One domain (DCGAN).
    Single,
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Unpaired => "unpaired",
            DatasetKind::Paired => "paired",
            DatasetKind::Single => "single",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unpaired" => Some(Self::Unpaired),
            "paired" => Some(Self::Paired),
            "single" => Some(Self::Single),
            _ => None,
        }
    }
}

/// A skipped upload file and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// A dataset; its images are blobs under `datasets/{id}/a/` and `datasets/{id}/b/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetRow {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub kind: DatasetKind,
    pub count_a: i64,
    pub count_b: i64,
    pub bytes: i64,
    pub skipped: Vec<Skipped>,
    pub created: i64,
}

/// What a job does: the name of the kind of job (`stylize`, `train`, …). The store keeps
/// any well-formed name; which kinds exist is the job handlers' business (`atelier-jobs`), so
/// a new kind needs no change here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobKind(String);

impl JobKind {
    /// A kind name: 1–32 of `a-z`, `0-9`, `_`, starting with a letter.
    pub fn new(name: &str) -> Result<JobKind> {
        let ok = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(JobKind(name.to_string()))
        } else {
            Err(StoreError::Corrupt(format!("job kind `{name}`")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobKind {
    type Error = StoreError;
    fn try_from(s: String) -> Result<JobKind> {
        JobKind::new(&s)
    }
}

impl From<JobKind> for String {
    fn from(k: JobKind) -> String {
        k.0
    }
}

impl PartialEq<&str> for JobKind {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(StoreError::Corrupt(format!("job status `{s}`"))),
        })
    }
    /// No further change will come.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: String,
    pub owner: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub spec: serde_json::Value,
    pub progress: serde_json::Value,
    /// Names of the result files (blobs `jobs/{id}/{name}`).
    pub results: Vec<String>,
    pub error: Option<String>,
    pub model: Option<String>,
    pub dataset: Option<String>,
    pub attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested: bool,
    pub created: i64,
    pub updated: i64,
    pub finished: Option<i64>,
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours; keep going.
    Held,
    /// Still ours, and the owner asked to cancel.
    CancelRequested,
    /// No longer ours (reaped, or the job was deleted): stop without writing.
    Lost,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Cancelled,
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The metadata database: SQLite (embedded, the default) or PostgreSQL (scale-out), one set
/// of queries through sqlx's `Any` driver; the few statements that differ ask [`Db::backend`].
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Job notices of every process on this database ([`Db::subscribe`]).
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// Alive while a clone of this `Db` is: the PostgreSQL listener stops after it.
    _alive: std::sync::Arc<()>,
}

/// What happened in the queue, for whoever waits on it (idle workers, event streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job of this kind (`None`: of some kind) can be claimed.
    Queued(Option<String>),
    /// Job `id` changed (status, progress, results, cancel flag).
    Changed(String),
    /// Notices may have been missed (the listener reconnected): look again at everything.
    Resync,
}

impl Notice {
    fn payload(&self) -> String {
        match self {
            Notice::Queued(Some(k)) => format!("q:{k}"),
            Notice::Queued(None) => "q:".into(),
            Notice::Changed(id) => format!("j:{id}"),
            Notice::Resync => "r:".into(),
        }
    }

    fn parse(p: &str) -> Option<Notice> {
        match p.split_once(':')? {
            ("q", "") => Some(Notice::Queued(None)),
            ("q", k) => Some(Notice::Queued(Some(k.to_string()))),
            ("j", id) => Some(Notice::Changed(id.to_string())),
            ("r", _) => Some(Notice::Resync),
            _ => None,
        }
    }
}

/// The PostgreSQL channel of [`Notice`]s.
const CHANNEL: &str = "atelier_jobs";

/// SQLite connections: WAL (readers never wait for the writer), `NORMAL` sync (durable at
/// checkpoints, never corrupt), writers wait their turn for up to 10 s, foreign keys on.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                              PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

/// Write transactions on PostgreSQL take this advisory lock first: they check a count and then
/// write (quotas, a public name, a dataset in use), which must not interleave, as SQLite's
/// single writer guarantees there. Claims do not take it (`FOR UPDATE SKIP LOCKED`).
const PG_WRITE_LOCK: i64 = 0x0041_7465_6c69_6572; // "Atelier"

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn job_from_row(r: &AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        kind: JobKind::new(r.try_get("kind")?)?,
        status: JobStatus::parse(r.try_get("status")?)?,
        spec: serde_json::from_str(r.try_get("spec")?).map_err(corrupt)?,
        progress: serde_json::from_str(r.try_get("progress")?).map_err(corrupt)?,
        results: serde_json::from_str(r.try_get("results")?).map_err(corrupt)?,
        error: r.try_get("error")?,
        model: r.try_get("model")?,
        dataset: r.try_get("dataset")?,
        attempts: r.try_get("attempts")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_until: r.try_get("lease_until")?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        finished: r.try_get("finished")?,
    })
}

fn model_from_row(r: &AnyRow) -> Result<ModelRow> {
    let vis: String = r.try_get("visibility")?;
    Ok(ModelRow {
        owner: r.try_get("owner")?,
        name: r.try_get("name")?,
        visibility: if vis == "public" {
            Visibility::Public
        } else {
            Visibility::Private
        },
        blob: r.try_get("blob")?,
        card: serde_json::from_str(r.try_get("card")?).map_err(corrupt)?,
        size: r.try_get("size")?,
        job: r.try_get("job")?,
        created: r.try_get("created")?,
    })
}

fn dataset_from_row(r: &AnyRow) -> Result<DatasetRow> {
    let kind: String = r.try_get("kind")?;
    Ok(DatasetRow {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        name: r.try_get("name")?,
        kind: DatasetKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("dataset kind `{kind}`")))?,
        count_a: r.try_get("count_a")?,
        count_b: r.try_get("count_b")?,
        bytes: r.try_get("bytes")?,
        skipped: serde_json::from_str(r.try_get("skipped")?).map_err(corrupt)?,
        created: r.try_get("created")?,
    })
}

impl Db {
    /// A write transaction that takes SQLite's write lock when it begins (`BEGIN IMMEDIATE`),
    /// so it waits its turn under the busy timeout. A deferred transaction that reads and then
    /// writes cannot wait: SQLite fails it at once (`database is locked`) when another
    /// connection wrote in between.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                // (wrapped: sqlx's `Any` reads no `void` column)
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(PG_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        })
    }

    /// Opens the database at `url` and applies the migrations: `sqlite://PATH` (created if
    /// missing, with its folder) or `postgres://USER:PASSWORD@HOST:PORT/DB` (the database
    /// must exist).
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Db::open_sqlite(Path::new(path)).await;
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Config(format!(
                "unsupported database URL `{}`: use sqlite://PATH or postgres://…",
                redact(url)
            )));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let db = Db::new(pool, Backend::Postgres);
        db.listen(url.to_string());
        Ok(db)
    }

    fn new(pool: AnyPool, backend: Backend) -> Db {
        Db {
            pool,
            backend,
            notices: tokio::sync::broadcast::channel(4096).0,
            _alive: std::sync::Arc::new(()),
        }
    }

    /// Job notices from every process on this database: LISTEN/NOTIFY on PostgreSQL, this
    /// process's own writes on SQLite. Waiters still look again now and then (a notice can be
    /// missed, e.g. from another process on SQLite), but need not poll.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Publishes a notice to every process (best effort: a failed NOTIFY is logged).
    async fn notify(&self, notice: Notice) {
        match self.backend {
            Backend::Sqlite => {
                let _ = self.notices.send(notice);
            }
            Backend::Postgres => {
                // (wrapped: sqlx's `Any` reads no `void` column) The listener hears it back,
                // like every other process does.
                let r = sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS n")
                    .bind(CHANNEL)
                    .bind(notice.payload())
                    .execute(&self.pool)
                    .await;
                if let Err(e) = r {
                    tracing::warn!("NOTIFY {CHANNEL}: {e}");
                }
            }
        }
    }

    /// Forwards PostgreSQL's notices to [`Db::subscribe`]rs until the last clone of this `Db`
    /// is dropped; after a lost connection it reconnects and sends [`Notice::Resync`].
    fn listen(&self, url: String) {
        let tx = self.notices.clone();
        let alive = std::sync::Arc::downgrade(&self._alive);
        tokio::spawn(async move {
            while alive.strong_count() > 0 {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut l) => match l.listen(CHANNEL).await {
                        Ok(()) => {
                            // Whatever was sent before this LISTEN is unheard: look again.
                            let _ = tx.send(Notice::Resync);
                            while alive.strong_count() > 0 {
                                match tokio::time::timeout(Duration::from_secs(5), l.try_recv())
                                    .await
                                {
                                    Err(_) => continue,
                                    Ok(Ok(Some(n))) => {
                                        if let Some(notice) = Notice::parse(n.payload()) {
                                            let _ = tx.send(notice);
                                        }
                                    }
                                    // The connection was lost: reconnect (and resync).
                                    Ok(Ok(None)) | Ok(Err(_)) => break,
                                }
                            }
                        }
                        Err(e) => tracing::warn!("LISTEN {CHANNEL}: {e}"),
                    },
                    Err(e) => tracing::warn!("LISTEN {CHANNEL}: connecting: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Creates an empty PostgreSQL database named `prefix` + a random suffix on the server of
    /// `admin_url` (whose user may create databases) and returns its URL (tests, first
    /// setups).
    pub async fn create_postgres_database(admin_url: &str, prefix: &str) -> Result<String> {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let name = new_id(prefix, 12).to_ascii_lowercase();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Config(format!("database name `{name}`")));
        }
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let (base, _) = admin_url.rsplit_once('/').ok_or_else(|| {
            StoreError::Config(format!("database URL `{}` has no /DB", redact(admin_url)))
        })?;
        Ok(format!("{base}/{name}"))
    }

    /// Opens (creating if missing) the SQLite database at `path` and applies the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Db> {
        sqlx::any::install_default_drivers();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let path = path.to_str().ok_or_else(|| {
            StoreError::Config(format!("{}: the path is not UTF-8", path.display()))
        })?;
        // The path travels in a URL: percent-encode what a URL would read differently.
        let mut encoded = String::with_capacity(path.len());
        for c in path.chars() {
            match c {
                '%' | '?' | '#' | ' ' => encoded.push_str(&format!("%{:02X}", c as u32)),
                c => encoded.push(c),
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect(&format!("sqlite://{encoded}?mode=rwc"))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Db::new(pool, Backend::Sqlite))
    }

    /// The database this talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- API keys ----

    pub async fn insert_key(&self, key: &KeyRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, owner, hash, label, created, revoked) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.owner)
        .bind(&key.hash)
        .bind(&key.label)
        .bind(key.created)
        .bind(i64::from(key.revoked))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>> {
        Ok(
            sqlx::query_as::<_, KeyRow>("SELECT * FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn keys(&self) -> Result<Vec<KeyRow>> {
        Ok(
            sqlx::query_as::<_, KeyRow>("SELECT * FROM api_keys ORDER BY created, id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Revokes a key; false if there is no such key.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE api_keys SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- models ----

    /// Inserts a model; false if the owner already has one of that name.
    pub async fn insert_model(&self, m: &ModelRow) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO models (owner, name, visibility, blob, card, size, job, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (owner, name) DO NOTHING",
        )
        .bind(&m.owner)
        .bind(&m.name)
        .bind(m.visibility.as_str())
        .bind(&m.blob)
        .bind(m.card.to_string())
        .bind(m.size)
        .bind(&m.job)
        .bind(m.created)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn model(&self, owner: &str, name: &str) -> Result<Option<ModelRow>> {
        sqlx::query("SELECT * FROM models WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| model_from_row(&r))
            .transpose()
    }

    /// The public model called `name`, if any.
    pub async fn public_model(&self, name: &str) -> Result<Option<ModelRow>> {
        sqlx::query("SELECT * FROM models WHERE visibility = 'public' AND name = $1 LIMIT 1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| model_from_row(&r))
            .transpose()
    }

    /// The owner's models and every public one, by name.
    pub async fn visible_models(&self, owner: &str) -> Result<Vec<ModelRow>> {
        sqlx::query(
            "SELECT * FROM models WHERE owner = $1 OR visibility = 'public' ORDER BY name, owner",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(model_from_row)
        .collect()
    }

    /// Makes the owner's model public, unless another public model already has that name.
    /// Returns false if the name is taken.
    pub async fn publish_model(&self, owner: &str, name: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM models WHERE visibility = 'public' AND name = $1 AND owner != $2",
        )
        .bind(name)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            return Ok(false);
        }
        sqlx::query("UPDATE models SET visibility = 'public' WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes the owner's model; returns its row.
    pub async fn delete_model(&self, owner: &str, name: &str) -> Result<Option<ModelRow>> {
        sqlx::query("DELETE FROM models WHERE owner = $1 AND name = $2 RETURNING *")
            .bind(owner)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| model_from_row(&r))
            .transpose()
    }

    // ---- datasets ----

    pub async fn insert_dataset(&self, d: &DatasetRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO datasets (id, owner, name, kind, count_a, count_b, bytes, skipped, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&d.id)
        .bind(&d.owner)
        .bind(&d.name)
        .bind(d.kind.as_str())
        .bind(d.count_a)
        .bind(d.count_b)
        .bind(d.bytes)
        .bind(serde_json::to_string(&d.skipped).map_err(corrupt)?)
        .bind(d.created)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds images to a dataset's counts and skipped list.
    pub async fn add_to_dataset(
        &self,
        id: &str,
        add_a: i64,
        add_b: i64,
        bytes: i64,
        skipped: &[Skipped],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let old: String = sqlx::query_scalar("SELECT skipped FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let mut all: Vec<Skipped> = serde_json::from_str(&old).map_err(corrupt)?;
        all.extend_from_slice(skipped);
        // Keep the list bounded: the newest 200 reasons are enough to act on.
        let drop = all.len().saturating_sub(200);
        all.drain(..drop);
        sqlx::query(
            "UPDATE datasets SET count_a = count_a + $1, count_b = count_b + $2, bytes = bytes + $3,
             skipped = $4 WHERE id = $5",
        )
        .bind(add_a)
        .bind(add_b)
        .bind(bytes)
        .bind(serde_json::to_string(&all).map_err(corrupt)?)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The dataset `id` if `owner` owns it.
    pub async fn dataset(&self, owner: &str, id: &str) -> Result<Option<DatasetRow>> {
        sqlx::query("SELECT * FROM datasets WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| dataset_from_row(&r))
            .transpose()
    }

    pub async fn datasets(&self, owner: &str) -> Result<Vec<DatasetRow>> {
        sqlx::query("SELECT * FROM datasets WHERE owner = $1 ORDER BY created DESC, id")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dataset_from_row)
            .collect()
    }

    /// Deletes a dataset unless an unfinished job reads it. `Ok(None)`: no such dataset;
    /// `Err(Conflict)`: in use.
    pub async fn delete_dataset(&self, owner: &str, id: &str) -> Result<Option<DatasetRow>> {
        let mut tx = self.write_tx().await?;
        let busy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE dataset = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM datasets WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| dataset_from_row(&r))
            .transpose()?;
        if row.is_some() && busy > 0 {
            return Err(StoreError::Conflict(format!(
                "dataset {id} is used by {busy} unfinished job(s)"
            )));
        }
        sqlx::query("DELETE FROM datasets WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    // ---- jobs ----

    /// Queues a job, unless the owner already has `max_active` unfinished jobs
    /// (`Err(QuotaExceeded)`); the check and the insert are one transaction.
    pub async fn enqueue(&self, job: &JobRow, max_active: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')",
        )
        .bind(&job.owner)
        .fetch_one(&mut *tx)
        .await?;
        if active >= max_active {
            return Err(StoreError::QuotaExceeded(format!(
                "{active} unfinished jobs (at most {max_active} at a time)"
            )));
        }
        sqlx::query(
            "INSERT INTO jobs (id, owner, kind, status, spec, progress, results, model, dataset,
             created, updated) VALUES ($1, $2, $3, 'queued', $4, $5, '[]', $6, $7, $8, $9)",
        )
        .bind(&job.id)
        .bind(&job.owner)
        .bind(job.kind.as_str())
        .bind(job.spec.to_string())
        .bind(job.progress.to_string())
        .bind(&job.model)
        .bind(&job.dataset)
        .bind(job.created)
        .bind(job.created)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify(Notice::Queued(Some(job.kind.as_str().to_string())))
            .await;
        Ok(())
    }

    /// The job `id` if `owner` owns it.
    pub async fn job(&self, owner: &str, id: &str) -> Result<Option<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| job_from_row(&r))
            .transpose()
    }

    /// The job `id`, whoever owns it (workers).
    pub async fn job_any(&self, id: &str) -> Result<Option<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| job_from_row(&r))
            .transpose()
    }

    /// The owner's newest jobs.
    pub async fn jobs(&self, owner: &str, limit: i64) -> Result<Vec<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE owner = $1 ORDER BY created DESC, id DESC LIMIT $2")
            .bind(owner)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    /// `(kind, status, count)` of all jobs (metrics).
    /// Every dataset id, job id and model blob key (to find blobs that belong to nothing).
    pub async fn referenced(&self) -> Result<Referenced> {
        let datasets = sqlx::query_scalar("SELECT id FROM datasets")
            .fetch_all(&self.pool)
            .await?;
        let jobs = sqlx::query_scalar("SELECT id FROM jobs")
            .fetch_all(&self.pool)
            .await?;
        let model_blobs = sqlx::query_scalar("SELECT blob FROM models")
            .fetch_all(&self.pool)
            .await?;
        Ok(Referenced {
            datasets: datasets.into_iter().collect(),
            jobs: jobs.into_iter().collect(),
            model_blobs: model_blobs.into_iter().collect(),
        })
    }

    /// Bytes an owner stores: their datasets' images and their model files.
    pub async fn storage_used(&self, owner: &str) -> Result<i64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST((SELECT COALESCE(SUM(bytes), 0) FROM datasets WHERE owner = $1)
                  + (SELECT COALESCE(SUM(size), 0) FROM models WHERE owner = $1) AS BIGINT)",
        )
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    pub async fn job_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT kind, status, COUNT(*) AS n FROM jobs GROUP BY kind, status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Claims the oldest queued job of one of `kinds` for `worker` with a lease of `lease`.
    pub async fn claim(
        &self,
        kinds: &[JobKind],
        worker: &str,
        lease: Duration,
    ) -> Result<Option<JobRow>> {
        if kinds.is_empty() {
            return Ok(None);
        }
        // `$4…`: one placeholder per kind; the kinds themselves are bound.
        let placeholders: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 4)).collect();
        let placeholders = placeholders.join(", ");
        // SQLite serialises writers, so the subquery's row is still queued when the UPDATE
        // runs; PostgreSQL locks it, and SKIP LOCKED lets concurrent claimers take the next
        // queued job instead of waiting on (and then missing) this one.
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2,
                 attempts = attempts + 1, updated = $3
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND kind IN ({placeholders})
                         ORDER BY created, id LIMIT 1 {lock})
               AND status = 'queued'
             RETURNING *"
        );
        let t = now();
        // `placeholders` and `lock` are built from constants only.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker)
            .bind(t + lease.as_secs() as i64)
            .bind(t);
        for k in kinds {
            q = q.bind(k.as_str());
        }
        let job = q
            .fetch_optional(&self.pool)
            .await?
            .map(|r| job_from_row(&r))
            .transpose()?;
        if let Some(j) = &job {
            self.notify(Notice::Changed(j.id.clone())).await;
        }
        Ok(job)
    }

    /// Renews `worker`'s lease on job `id` and reports whether to go on.
    pub async fn heartbeat(&self, id: &str, worker: &str, lease: Duration) -> Result<Lease> {
        let t = now();
        let row = sqlx::query(
            "UPDATE jobs SET lease_until = $1, updated = updated
             WHERE id = $2 AND lease_owner = $3 AND status = 'running'
             RETURNING cancel_requested",
        )
        .bind(t + lease.as_secs() as i64)
        .bind(id)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Lease::Lost,
            Some(r) if r.try_get::<i64, _>("cancel_requested")? != 0 => Lease::CancelRequested,
            Some(_) => Lease::Held,
        })
    }

    /// Records progress (and optionally the result list) of a job `worker` holds.
    pub async fn set_progress(
        &self,
        id: &str,
        worker: &str,
        progress: &serde_json::Value,
        results: Option<&[String]>,
    ) -> Result<Lease> {
        let r = match results {
            // Stored results (an image done, a checkpoint) are durable progress: earlier
            // attempts that ended in a crash no longer count against `max_attempts`, which
            // is for jobs that never get anywhere (a poison input), not for a server that was
            // killed while they worked.
            Some(res) => sqlx::query(
                "UPDATE jobs SET progress = $1, results = $2, updated = $3, attempts = CASE WHEN attempts > 1 THEN 1 ELSE attempts END
                     WHERE id = $4 AND lease_owner = $5 AND status = 'running'",
            )
            .bind(progress.to_string())
            .bind(serde_json::to_string(res).map_err(corrupt)?),
            None => sqlx::query(
                "UPDATE jobs SET progress = $1, updated = $2
                     WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
            )
            .bind(progress.to_string()),
        }
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(if r.rows_affected() == 0 {
            Lease::Lost
        } else {
            self.notify(Notice::Changed(id.to_string())).await;
            Lease::Held
        })
    }

    /// Ends a job `worker` holds. False if the lease was lost meanwhile.
    pub async fn finish(
        &self,
        id: &str,
        worker: &str,
        outcome: &Outcome,
        results: &[String],
    ) -> Result<bool> {
        let (status, error) = match outcome {
            Outcome::Succeeded => ("succeeded", None),
            Outcome::Failed(e) => ("failed", Some(e.as_str())),
            Outcome::Cancelled => ("cancelled", None),
        };
        let t = now();
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, error = $2, results = $3, lease_owner = NULL,
                 lease_until = NULL, cancel_requested = 0, updated = $4, finished = $5
             WHERE id = $6 AND lease_owner = $7 AND status = 'running'",
        )
        .bind(status)
        .bind(error)
        .bind(serde_json::to_string(results).map_err(corrupt)?)
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            self.notify(Notice::Changed(id.to_string())).await;
        }
        Ok(r.rows_affected() > 0)
    }

    /// Hands a job `worker` holds back to the queue (shutdown): it runs again later,
    /// without counting the attempt.
    pub async fn release(&self, id: &str, worker: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated = $1
             WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            self.notify(Notice::Queued(None)).await;
            self.notify(Notice::Changed(id.to_string())).await;
        }
        Ok(r.rows_affected() > 0)
    }

    /// Cancels: a queued job ends at once; a running one gets its flag set and ends at its
    /// worker's next heartbeat. Returns the job after the change, `None` if not the owner's.
    pub async fn request_cancel(&self, owner: &str, id: &str) -> Result<Option<JobRow>> {
        let t = now();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE jobs SET status = 'cancelled', updated = $1, finished = $2
             WHERE id = $3 AND owner = $4 AND status = 'queued'",
        )
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated = $1
             WHERE id = $2 AND owner = $3 AND status = 'running'",
        )
        .bind(t)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify(Notice::Changed(id.to_string())).await;
        self.job(owner, id).await
    }

    /// Puts a cancelled or failed job back in the queue (training resumes from its
    /// checkpoint). `Ok(None)`: no such job; `Err(Conflict)`: not in a resumable state.
    pub async fn requeue(&self, owner: &str, id: &str, max_active: i64) -> Result<Option<JobRow>> {
        let Some(job) = self.job(owner, id).await? else {
            return Ok(None);
        };
        if !matches!(job.status, JobStatus::Cancelled | JobStatus::Failed) {
            return Err(StoreError::Conflict(format!(
                "job {id} is {}; only cancelled or failed jobs can be resumed",
                job.status.as_str()
            )));
        }
        let mut tx = self.write_tx().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')",
        )
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
        if active >= max_active {
            return Err(StoreError::QuotaExceeded(format!(
                "{active} unfinished jobs (at most {max_active} at a time)"
            )));
        }
        sqlx::query(
            "UPDATE jobs SET status = 'queued', error = NULL, attempts = 0, cancel_requested = 0,
                 finished = NULL, updated = $1
             WHERE id = $2 AND owner = $3 AND status IN ('cancelled', 'failed')",
        )
        .bind(now())
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify(Notice::Queued(Some(job.kind.as_str().to_string())))
            .await;
        self.notify(Notice::Changed(id.to_string())).await;
        self.job(owner, id).await
    }

    /// Takes one request token from `owner`'s bucket (`per_minute` tokens a minute, bursts of
    /// as many), shared by every process on this PostgreSQL database: `Ok(Err(seconds))` to
    /// wait when it is empty. One statement, so concurrent API nodes cannot both take the
    /// last token. (SQLite: one node, whose buckets live in its memory; this errs.)
    pub async fn take_token(
        &self,
        owner: &str,
        per_minute: u32,
    ) -> Result<std::result::Result<(), u32>> {
        if self.backend != Backend::Postgres {
            return Err(StoreError::Config(
                "shared rate limits need PostgreSQL".into(),
            ));
        }
        let cap = per_minute.max(1) as f64;
        let per_ms = cap / 60_000.0;
        // The database's clock, not the node's: nodes whose clocks differ share one bucket.
        let row = sqlx::query(
            "WITH now AS (SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS ms)
             INSERT INTO rate_limits AS r (owner, tokens, updated_ms, ok)
               SELECT $1, $2 - 1, now.ms, 1 FROM now
             ON CONFLICT (owner) DO UPDATE SET
               tokens = CASE WHEN LEAST($2, r.tokens + GREATEST(0, EXCLUDED.updated_ms - r.updated_ms) * $3) >= 1
                             THEN LEAST($2, r.tokens + GREATEST(0, EXCLUDED.updated_ms - r.updated_ms) * $3) - 1
                             ELSE LEAST($2, r.tokens + GREATEST(0, EXCLUDED.updated_ms - r.updated_ms) * $3) END,
               ok = CASE WHEN LEAST($2, r.tokens + GREATEST(0, EXCLUDED.updated_ms - r.updated_ms) * $3) >= 1
                         THEN 1 ELSE 0 END,
               updated_ms = GREATEST(r.updated_ms, EXCLUDED.updated_ms)
             RETURNING tokens, ok",
        )
        .bind(owner)
        .bind(cap)
        .bind(per_ms)
        .fetch_one(&self.pool)
        .await?;
        let tokens: f64 = row.try_get("tokens")?;
        let ok: i32 = row.try_get("ok")?;
        Ok(if ok != 0 {
            Ok(())
        } else {
            Err(((1.0 - tokens) / per_ms / 1000.0).ceil().max(1.0) as u32)
        })
    }

    /// Returns running jobs whose lease ran out to the queue (their worker died), or fails
    /// them once they have used `max_attempts`. Returns how many were requeued.
    pub async fn reap_expired(&self, max_attempts: i64) -> Result<u64> {
        self.reap(Some(now()), max_attempts).await
    }

    /// Returns every running job to the queue regardless of its lease: for a single-node
    /// start, where no other worker can hold one. Returns how many.
    pub async fn requeue_orphans(&self, max_attempts: i64) -> Result<u64> {
        self.reap(None, max_attempts).await
    }

    async fn reap(&self, before: Option<i64>, max_attempts: i64) -> Result<u64> {
        let t = now();
        // A running job always has a lease; `None` takes every one.
        let before = before.unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE jobs SET status = 'failed', lease_owner = NULL, lease_until = NULL,
                 error = 'the worker stopped during every attempt', updated = $1, finished = $2
             WHERE status = 'running' AND lease_until < $3 AND attempts >= $4
               AND cancel_requested = 0",
        )
        .bind(t)
        .bind(t)
        .bind(before)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        let r = sqlx::query(
            "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
                 finished = CASE WHEN cancel_requested = 1 THEN $1 ELSE NULL END,
                 lease_owner = NULL, lease_until = NULL, updated = $2
             WHERE status = 'running' AND lease_until < $3",
        )
        .bind(t)
        .bind(t)
        .bind(before)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            self.notify(Notice::Queued(None)).await;
            self.notify(Notice::Resync).await;
        }
        Ok(r.rows_affected())
    }
}
