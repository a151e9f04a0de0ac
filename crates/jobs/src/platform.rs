//! The platform core: one method per API operation over the catalog, the queue, the blobs and
//! the pipeline. The HTTP routes (`atelier-server`), the CLI and the workers call these; no
//! caller outside this crate handles database rows or storage keys.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use atelier_imaging::{Format, Limits};
use atelier_store::db::{
    new_id, now, DatasetKind, DatasetRow, Db, JobKind, JobRow, JobStatus, Notice,
};
use atelier_store::Blobs;

use crate::catalog::{Catalog, ModelInfo, ModelRef};
use crate::datasets::{Ingest, IngestLimits};
use crate::gate::Gate;
use crate::spec::{JobSpec, StylizeSpec, TrainSpec};
use crate::worker::{input_prefix, job_blob, WorkerConfig};
use crate::JobsError;

/// Images one stylize job may carry.
pub const MAX_JOB_IMAGES: usize = 100;

/// Largest metrics log returned.
const MAX_METRICS: u64 = 32 << 20;

/// Largest result file returned.
const MAX_RESULT: u64 = 1 << 30;

/// What the platform needs to know (a part of the server's configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Local working space: `builtin/`, `cache/`, `runs/`, and the embedded defaults
    /// (`atelier.db`, `blobs/`) when `database` / `blobs` are not given.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; `None`: `sqlite://<data_dir>/atelier.db`.
    pub database: Option<String>,
    /// `file://DIR` or `s3://BUCKET[/PREFIX]`; `None`: `file://<data_dir>/blobs`.
    pub blobs: Option<String>,
    /// Extra folder of built-in model files.
    pub models_dir: Option<PathBuf>,
    pub precision: atelier_engine::PrecisionChoice,
    /// Bytes one pass of a model over a whole image may take; larger images are tiled.
    pub stylize_memory_budget: u64,
    /// Unfinished jobs per owner.
    pub max_active_jobs: i64,
    /// Bytes of datasets and models per owner (0: no quota).
    pub max_storage_bytes_per_owner: u64,
    /// `POST /v1/stylize` downscales larger images to this longer side.
    pub max_output_side: u32,
    /// Limits of uploaded images (stylize, job inputs).
    pub image_limits: Limits,
    /// Limits of dataset uploads.
    pub ingest_limits: IngestLimits,
    /// Dataset files decoded at the same time; further uploads wait.
    pub max_concurrent_ingest: usize,
    /// Requests per minute per owner (token bucket; also the burst size), across all API
    /// nodes of one database.
    pub rate_limit_per_minute: u32,
    pub worker: WorkerConfig,
}

/// The platform: cheap to clone.
#[derive(Clone)]
pub struct Platform {
    db: Db,
    blobs: Blobs,
    catalog: Arc<Catalog>,
    settings: Arc<Settings>,
    /// Wakes this process's idle workers when a job is queued.
    wake: Arc<Notify>,
    ingest_slots: Arc<Gate>,
    /// This node's buckets (single node); several nodes share theirs in PostgreSQL.
    limiter: Arc<crate::ratelimit::RateLimiter>,
}

fn not_found(code: &'static str, message: String) -> JobsError {
    JobsError::NotFound { code, message }
}

fn job_not_found(id: &str) -> JobsError {
    not_found("job_not_found", format!("no job `{id}`"))
}

fn dataset_not_found(id: &str) -> JobsError {
    not_found("dataset_not_found", format!("no dataset `{id}`"))
}

/// A model that does not exist for the caller.
pub fn model_not_found(name: &str) -> JobsError {
    not_found("model_not_found", format!("no model named `{name}`"))
}

impl Platform {
    /// Opens the metadata store (migrating it) and the blob store, and the model catalog.
    pub async fn open(settings: Settings) -> Result<Platform, JobsError> {
        let data = &settings.data_dir;
        let db = match &settings.database {
            Some(url) => Db::open(url).await?,
            None => Db::open_sqlite(&data.join("atelier.db")).await?,
        };
        let blobs = match &settings.blobs {
            Some(url) => Blobs::open(url).await?,
            None => Blobs::local(data.join("blobs"))?,
        };
        let catalog = Catalog::open(
            db.clone(),
            blobs.clone(),
            data,
            settings.models_dir.as_deref(),
        )?
        .with_precision(settings.precision)
        .with_memory_budget(settings.stylize_memory_budget);
        catalog.spawn_idle_trim(
            crate::catalog::IDLE_TRIM_AFTER,
            crate::catalog::IDLE_KEEP_BYTES,
        );
        Ok(Platform {
            ingest_slots: Arc::new(Gate::new(settings.max_concurrent_ingest)),
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(
                settings.rate_limit_per_minute,
            )),
            db,
            blobs,
            catalog: Arc::new(catalog),
            settings: Arc::new(settings),
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The most dataset files that were ever decoded at once (tests check the cap).
    pub fn ingest_peak(&self) -> usize {
        self.ingest_slots.peak()
    }

    /// Whether the metadata store answers.
    pub async fn ping(&self) -> Result<(), JobsError> {
        Ok(self.db.ping().await?)
    }

    /// Jobs by kind and status, for `/metrics`.
    pub async fn job_counts(&self) -> Result<Vec<(String, String, i64)>, JobsError> {
        Ok(self.db.job_counts().await?)
    }

    /// Closes the database pool.
    pub async fn close(&self) {
        self.db.close().await
    }

    /// Is this the embedded single-node setup (SQLite)? Then no other process can hold a
    /// lease, and jobs left running by the previous process may continue at once.
    pub fn single_node(&self) -> bool {
        self.db.backend() == atelier_store::db::Backend::Sqlite
    }

    /// Start-up chores of a node that runs its own workers: on a single node (SQLite), jobs
    /// the last process left running continue now (with several nodes, or separate
    /// `atelier worker` processes, their leases run out and the reaper requeues them);
    /// leftovers of interrupted work are collected.
    pub async fn recover(&self) {
        let runs_workers =
            self.settings.worker.train_workers + self.settings.worker.stylize_workers > 0;
        if self.single_node() && runs_workers {
            match self
                .db
                .requeue_orphans(self.settings.worker.max_attempts)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!("{n} job(s) interrupted by the last stop continue now"),
                Err(e) => tracing::error!("requeueing interrupted jobs: {e}"),
            }
        }
        // Blobs without a row are only leftovers when nothing else can be writing: on a
        // single node before it serves. Several nodes share the blob store, and another
        // node's upload in flight looks just like a leftover (their uploads clean up after
        // themselves, see `Submission` and `DatasetUpload`).
        if !self.single_node() {
            return;
        }
        let data = &self.settings.data_dir;
        let local_blobs = self.settings.blobs.is_none().then(|| data.join("blobs"));
        match crate::leftovers::sweep(
            &self.db,
            &self.blobs,
            local_blobs.as_deref(),
            &data.join("cache"),
        )
        .await
        {
            Ok(s) if s == Default::default() => {}
            Ok(s) => tracing::info!(
                "collected leftovers of interrupted work: {} blob(s) without a row, {} temporary file(s)",
                s.orphan_blobs,
                s.temp_files
            ),
            Err(e) => tracing::error!("collecting leftovers: {e}"),
        }
    }

    /// The context of this process's workers.
    pub fn worker_context(&self, shutdown: watch::Receiver<bool>) -> crate::worker::Context {
        crate::worker::Context {
            db: self.db.clone(),
            blobs: self.blobs.clone(),
            catalog: self.catalog.clone(),
            data_dir: self.settings.data_dir.clone(),
            config: self.settings.worker.clone(),
            image_limits: self.settings.image_limits,
            wake: self.wake.clone(),
            shutdown,
            id: format!("{}-{}", std::process::id(), new_id("", 6)),
        }
    }

    // ---------------------------------------------------------------- keys

    /// Creates an API key for `owner`; returns the key (shown once, not recoverable).
    pub async fn create_key(&self, owner: &str, label: &str) -> Result<String, JobsError> {
        crate::keys::create(&self.db, owner, label).await
    }

    /// Revokes a key; `false` if there is none of that id.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, JobsError> {
        Ok(self.db.revoke_key(id).await?)
    }

    /// The metadata store itself, for administration and tests (the API goes through the
    /// methods above).
    pub fn store(&self) -> &Db {
        &self.db
    }

    /// The blob store itself, for administration and tests.
    pub fn blob_store(&self) -> &Blobs {
        &self.blobs
    }

    /// The owner of a key, if it is a valid, unrevoked key (`verify` checks the secret
    /// against the stored hash; it runs off the async threads).
    pub async fn key_owner(
        &self,
        id: &str,
        verify: impl FnOnce(&str) -> bool + Send + 'static,
    ) -> Result<Option<String>, JobsError> {
        let Some(row) = self.db.key(id).await? else {
            return Ok(None);
        };
        if row.revoked {
            return Ok(None);
        }
        let hash = row.hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify(&hash))
            .await
            .map_err(|e| JobsError::Internal(e.to_string()))?;
        Ok(ok.then_some(row.owner))
    }

    /// Takes one request token of `owner`: `Ok(Err(seconds))` to wait. On PostgreSQL the
    /// buckets are shared by every API node; on the single SQLite node they live here.
    pub async fn rate_limit(&self, owner: &str) -> Result<Result<(), u32>, JobsError> {
        if self.single_node() {
            Ok(self.limiter.check(owner))
        } else {
            Ok(self
                .db
                .take_token(owner, self.settings.rate_limit_per_minute)
                .await?)
        }
    }

    // ---------------------------------------------------------------- quota

    /// Checks that `adding` more bytes keep `owner` within the storage quota.
    pub async fn check_quota(&self, owner: &str, adding: u64) -> Result<(), JobsError> {
        let quota = self.settings.max_storage_bytes_per_owner;
        if quota == 0 {
            return Ok(());
        }
        let used = self.db.storage_used(owner).await?.max(0) as u64;
        if used.saturating_add(adding) > quota {
            return Err(JobsError::StorageQuota {
                used,
                adding,
                quota,
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- stylize

    /// Checks a `POST /v1/stylize` request before any decoding: the options, the model (one
    /// that stylizes), the image's format and size from its header.
    pub async fn prepare_stylize(
        &self,
        owner: &str,
        model: &str,
        image: Bytes,
        mut request: crate::pipeline::Request,
    ) -> Result<PreparedStylize, JobsError> {
        let max = self.settings.max_output_side;
        request.max_side = Some(request.max_side.unwrap_or(max).min(max));
        request.engine = self.catalog.engine_options();
        request.validate()?;
        let m = self
            .catalog
            .resolve(owner, model)
            .await?
            .ok_or_else(|| model_not_found(model))?;
        let limits = self.settings.image_limits;
        atelier_imaging::probe(&image, &limits)?;
        let stylizer = self.catalog.stylizer(&m).await?;
        Ok(PreparedStylize {
            model: m.name().to_string(),
            stylizer,
            image,
            limits,
            request,
        })
    }

    // ---------------------------------------------------------------- jobs

    /// Starts a job submission; stage its images with [`Platform::stage_image`], then
    /// [`Platform::submit`] (or [`Platform::discard`]).
    pub fn begin_job(&self, owner: &str) -> Submission {
        Submission {
            blobs: self.blobs.clone(),
            id: new_id("j_", 12),
            owner: owner.to_string(),
            staged: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Stores one input image of a stylize job (its format and size checked first).
    pub async fn stage_image(
        &self,
        sub: &mut Submission,
        file: &str,
        data: Bytes,
    ) -> Result<(), JobsError> {
        let n = sub.staged.len();
        if n >= MAX_JOB_IMAGES {
            return Err(JobsError::BadRequest(format!(
                "at most {MAX_JOB_IMAGES} images per job"
            )));
        }
        let (format, _, _) =
            atelier_imaging::probe(&data, &self.settings.image_limits).map_err(|source| {
                JobsError::Upload {
                    file: file.to_string(),
                    source,
                }
            })?;
        let key = format!("{}/{n:04}.{}", input_prefix(&sub.id), format.extension());
        self.blobs.put(&key, data).await?;
        sub.staged.push(key);
        sub.names.push(file.to_string());
        Ok(())
    }

    /// Drops a submission's staged images.
    pub async fn discard(&self, mut sub: Submission) {
        for k in std::mem::take(&mut sub.staged) {
            let _ = self.blobs.delete(&k).await;
        }
    }

    /// Validates the spec against the staged images, the caller's models and datasets, and
    /// queues the job. Nothing is left behind when it fails.
    pub async fn submit(&self, mut sub: Submission, spec: JobSpec) -> Result<Job, JobsError> {
        let names = std::mem::take(&mut sub.names);
        let row = match self.build_job(&sub, spec, names).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(sub).await;
                return Err(e);
            }
        };
        if let Err(e) = self.db.enqueue(&row, self.settings.max_active_jobs).await {
            self.discard(sub).await;
            return Err(e.into());
        }
        // The staged images are the job's now.
        sub.staged.clear();
        self.wake.notify_waiters();
        self.job(&sub.owner, &sub.id).await
    }

    async fn build_job(
        &self,
        sub: &Submission,
        spec: JobSpec,
        names: Vec<String>,
    ) -> Result<JobRow, JobsError> {
        let inputs = sub.staged.len();
        let (kind, model, dataset, spec_json) = match spec {
            JobSpec::Stylize(mut s) => {
                self.check_stylize(&sub.owner, &s).await?;
                if inputs == 0 {
                    return Err(JobsError::BadRequest(
                        "a stylize job needs at least one `image` part (multipart/form-data)"
                            .into(),
                    ));
                }
                s.inputs = inputs;
                s.names = names;
                (
                    JobKind::new(crate::spec::STYLIZE)?,
                    None,
                    None,
                    serde_json::to_value(JobSpec::Stylize(s)),
                )
            }
            JobSpec::Train(mut t) => {
                // Stored with its family spelled out (the page and the job list show it).
                t.family = Some(t.family().to_string());
                if inputs > 0 {
                    return Err(JobsError::BadRequest(
                        "training jobs take no images; use a dataset".into(),
                    ));
                }
                self.check_train(&sub.owner, &t).await?;
                let (m, d) = (t.name.clone(), t.dataset.clone());
                (
                    JobKind::new(crate::spec::TRAIN)?,
                    Some(m),
                    Some(d),
                    serde_json::to_value(JobSpec::Train(t)),
                )
            }
        };
        let t = now();
        Ok(JobRow {
            id: sub.id.clone(),
            owner: sub.owner.clone(),
            kind,
            status: JobStatus::Queued,
            spec: spec_json.map_err(|e| JobsError::Internal(e.to_string()))?,
            progress: json!({}),
            results: vec![],
            error: None,
            model,
            dataset,
            attempts: 0,
            lease_owner: None,
            lease_until: None,
            cancel_requested: false,
            created: t,
            updated: t,
            finished: None,
        })
    }

    async fn check_stylize(&self, owner: &str, s: &StylizeSpec) -> Result<(), JobsError> {
        s.validate()?;
        let m = self
            .catalog
            .resolve(owner, &s.model)
            .await?
            .ok_or_else(|| model_not_found(&s.model))?;
        if !m.info(owner)?.can_stylize {
            return Err(JobsError::Unprocessable {
                code: "model_cannot_stylize",
                message: format!("model `{}` is not an image-to-image style model", s.model),
            });
        }
        Ok(())
    }

    async fn check_train(&self, owner: &str, t: &TrainSpec) -> Result<(), JobsError> {
        t.validate()?;
        let d = self
            .db
            .dataset(owner, &t.dataset)
            .await?
            .ok_or_else(|| dataset_not_found(&t.dataset))?;
        let fits = match t.family() {
            "cyclegan" | "cut" | "fastcut" => d.count_a > 0 && d.count_b > 0,
            "pix2pix" => d.kind == DatasetKind::Paired && d.count_a > 0,
            _ => d.count_a > 0,
        };
        if !fits {
            return Err(JobsError::BadRequest(format!(
                "dataset `{}` ({}, {} images in A, {} in B) cannot train {}: CycleGAN, CUT and FastCUT need images in both domains, pix2pix a paired dataset, DCGAN images in A",
                d.name, d.kind.as_str(), d.count_a, d.count_b, t.family()
            )));
        }
        // The model it starts from must exist (and be one the caller may use), and the
        // configuration must build (a generator name, a size the U-Net takes…), so that a job
        // that cannot run is refused now rather than failing in the queue.
        let init = crate::worker::init_model(&self.catalog, owner, t).await?;
        let b = t.unpaired().then(|| "/b".into());
        crate::worker::train_config(t, "/a".into(), b, 0.0, init)?;
        self.catalog.check_new_name(owner, &t.name).await?;
        Ok(())
    }

    /// What a training spec will cost on this server, before it starts.
    pub async fn estimate(
        &self,
        owner: &str,
        spec: JobSpec,
    ) -> Result<crate::estimate::TrainEstimate, JobsError> {
        let JobSpec::Train(t) = spec else {
            return Err(JobsError::BadRequest(
                "estimates are for training specs (`\"type\": \"train\"`)".into(),
            ));
        };
        t.validate()?;
        crate::estimate::estimate(&self.catalog, owner, &t).await
    }

    /// The owner's latest jobs (at most 200), newest first.
    pub async fn jobs(&self, owner: &str) -> Result<Vec<Job>, JobsError> {
        Ok(self
            .db
            .jobs(owner, 200)
            .await?
            .into_iter()
            .map(Job)
            .collect())
    }

    pub async fn job(&self, owner: &str, id: &str) -> Result<Job, JobsError> {
        self.db
            .job(owner, id)
            .await?
            .map(Job)
            .ok_or_else(|| job_not_found(id))
    }

    /// Asks a job to stop (a queued one is cancelled at once).
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Job, JobsError> {
        self.db
            .request_cancel(owner, id)
            .await?
            .map(Job)
            .ok_or_else(|| job_not_found(id))
    }

    /// Queues a cancelled or failed job again (a training continues from its checkpoint).
    pub async fn resume(&self, owner: &str, id: &str) -> Result<Job, JobsError> {
        let job = self
            .db
            .requeue(owner, id, self.settings.max_active_jobs)
            .await?
            .map(Job)
            .ok_or_else(|| job_not_found(id))?;
        self.wake.notify_waiters();
        Ok(job)
    }

    /// A training job's metrics lines (the live run's file when this node runs it, else the
    /// copy in the blob store).
    pub async fn job_metrics(&self, owner: &str, id: &str) -> Result<Vec<Value>, JobsError> {
        let job = self.job(owner, id).await?;
        let local = self
            .settings
            .data_dir
            .join("runs")
            .join(&job.0.id)
            .join("run")
            .join("metrics.jsonl");
        let text = match std::fs::metadata(&local) {
            Ok(m) if m.len() <= MAX_METRICS => std::fs::read(&local).ok().map(Bytes::from),
            _ => None,
        };
        let text = match text {
            Some(t) => Some(t),
            None => {
                self.blobs
                    .get(&job_blob(&job.0.id, "metrics.jsonl"), MAX_METRICS)
                    .await?
            }
        };
        Ok(text
            .map(|t| {
                String::from_utf8_lossy(&t)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v.get("event").is_none())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One of a job's result files.
    pub async fn job_result(&self, owner: &str, id: &str, file: &str) -> Result<Bytes, JobsError> {
        let job = self.job(owner, id).await?;
        let missing = || {
            not_found(
                "result_not_found",
                format!("job `{id}` has no result `{file}`"),
            )
        };
        if !job.0.results.iter().any(|r| r == file) {
            return Err(missing());
        }
        self.blobs
            .get(&job_blob(&job.0.id, file), MAX_RESULT)
            .await?
            .ok_or_else(missing)
    }

    /// A job's events until it is over (or `shutdown` turns true): `status` on every status
    /// change, `progress` when it moves, `sample` for each new sample grid, `end` last.
    pub async fn job_events(
        &self,
        owner: &str,
        id: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<impl Stream<Item = JobEvent> + Send + 'static, JobsError> {
        self.job(owner, id).await?;
        struct S {
            db: Db,
            owner: String,
            id: String,
            last: Option<JobRow>,
            pending: VecDeque<JobEvent>,
            done: bool,
            shutdown: watch::Receiver<bool>,
            notices: tokio::sync::broadcast::Receiver<Notice>,
            failures: u32,
        }
        let start = S {
            failures: 0,
            notices: self.db.subscribe(),
            db: self.db.clone(),
            owner: owner.to_string(),
            id: id.to_string(),
            last: None,
            pending: VecDeque::new(),
            done: false,
            shutdown,
        };
        Ok(futures::stream::unfold(start, |mut s| async move {
            loop {
                if let Some(e) = s.pending.pop_front() {
                    return Some((e, s));
                }
                if s.done || *s.shutdown.borrow() {
                    return None;
                }
                if s.last.is_some() {
                    // Until the job changes (a notice from whichever process runs it), with a
                    // slow look now and then in case a notice went missing.
                    let id = s.id.clone();
                    let notices = &mut s.notices;
                    let changed = async move {
                        loop {
                            match notices.recv().await {
                                Ok(Notice::Changed(j)) if j == id => return,
                                Ok(Notice::Resync) => return,
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await
                                }
                            }
                        }
                    };
                    let mut shutdown = s.shutdown.clone();
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        // (a dropped sender is a shutdown too)
                        r = shutdown.changed() => if r.is_err() { return None },
                    }
                }
                let job = match s.db.job(&s.owner, &s.id).await {
                    Ok(Some(j)) => {
                        s.failures = 0;
                        j
                    }
                    Ok(None) => return None,
                    // The database restarting: the stream waits for it (a few minutes at most)
                    // instead of ending without an `end` event.
                    Err(e) => {
                        s.failures += 1;
                        if s.failures > 60 {
                            tracing::warn!(job = %s.id, "event stream gives up: {e}");
                            return None;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let ev = |name: &'static str, data: Value| JobEvent { name, data };
                let prev = s.last.as_ref();
                if prev.is_none_or(|p| {
                    p.status != job.status || p.cancel_requested != job.cancel_requested
                }) {
                    s.pending.push_back(ev("status", view(&job)));
                }
                if prev.is_none_or(|p| p.progress != job.progress) {
                    s.pending.push_back(ev("progress", job.progress.clone()));
                }
                let sample = job.progress.get("sample_step").cloned();
                if sample.is_some()
                    && prev.is_none_or(|p| p.progress.get("sample_step") != sample.as_ref())
                {
                    s.pending.push_back(ev(
                        "sample",
                        json!({"step": sample, "url": format!("/v1/jobs/{}/results/sample.png", job.id)}),
                    ));
                }
                if job.status.is_final() {
                    s.pending.push_back(ev("end", view(&job)));
                    s.done = true;
                }
                s.last = Some(job);
            }
        }))
    }

    // ---------------------------------------------------------------- datasets

    /// Starts a new dataset (stored only by [`Platform::commit_dataset`]).
    pub fn begin_dataset(
        &self,
        owner: &str,
        name: &str,
        kind: Option<&str>,
    ) -> Result<DatasetUpload, JobsError> {
        let name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(JobsError::BadRequest(
                "name: 1–100 printable characters".into(),
            ));
        }
        let kind = match kind {
            None => DatasetKind::Unpaired,
            Some(k) => DatasetKind::parse(k).ok_or_else(|| {
                JobsError::BadRequest("kind: expected unpaired, paired or single".into())
            })?,
        };
        Ok(DatasetUpload {
            row: DatasetRow {
                id: new_id("d_", 10),
                owner: owner.to_string(),
                name,
                kind,
                count_a: 0,
                count_b: 0,
                bytes: 0,
                skipped: vec![],
                created: now(),
            },
            new: true,
            fixed: None,
            tally: Tally::default(),
            done: false,
            platform: self.clone(),
        })
    }

    /// Starts adding files to one domain (`a` or `b`) of an existing dataset.
    pub async fn begin_adding(
        &self,
        owner: &str,
        id: &str,
        domain: &str,
    ) -> Result<DatasetUpload, JobsError> {
        let domain = match domain.to_ascii_lowercase().as_str() {
            "a" => 'a',
            "b" => 'b',
            _ => return Err(JobsError::BadRequest("domain: expected a or b".into())),
        };
        let row = self
            .db
            .dataset(owner, id)
            .await?
            .ok_or_else(|| dataset_not_found(id))?;
        Ok(DatasetUpload {
            row,
            new: false,
            fixed: Some(domain),
            tally: Tally::default(),
            done: false,
            platform: self.clone(),
        })
    }

    /// Adds one uploaded file (an image or a zip of images) from multipart part `part`
    /// (`a` or `b`; ignored when adding to a fixed domain). Unusable images are skipped and
    /// reported; what was stored before a failure stays counted in `upload`.
    pub async fn ingest(
        &self,
        upload: &mut DatasetUpload,
        part: &str,
        file: &str,
        data: Bytes,
    ) -> Result<(), JobsError> {
        let domain = match (upload.fixed, part.to_ascii_lowercase().as_str()) {
            (Some(d), _) => d,
            (None, "a") => 'a',
            (None, "b") => 'b',
            (None, other) => {
                return Err(JobsError::BadRequest(format!(
                    "unknown part `{other}`: files go in parts `a` and `b`"
                )))
            }
        };
        if domain == 'b' && upload.row.kind == DatasetKind::Single {
            return Err(JobsError::BadRequest(
                "a `single` dataset has only domain A".into(),
            ));
        }
        // Without a declared length (chunked bodies), each file is checked as it comes.
        self.check_quota(
            &upload.row.owner,
            upload.tally.bytes as u64 + data.len() as u64,
        )
        .await?;
        // Decoding is CPU and memory: a few uploads at a time, the others wait.
        let _slot = self.ingest_slots.enter().await;
        let total = (upload.row.count_a + upload.row.count_b) as usize
            + (upload.tally.a + upload.tally.b) as usize;
        let mut ing = Ingest::new(
            &self.blobs,
            &upload.row.id,
            domain,
            total,
            self.settings.ingest_limits,
        )
        .await?;
        let added = ing.add_file(file, data).await;
        let out = ing.out;
        let t = &mut upload.tally;
        if domain == 'a' {
            t.a += out.added as i64;
        } else {
            t.b += out.added as i64;
        }
        t.bytes += out.bytes as i64;
        t.skipped.extend(out.skipped);
        match added {
            Ok(()) => Ok(()),
            // One unusable archive is reported like an unusable image.
            Err(JobsError::InvalidArchive(reason)) => {
                t.skipped.push(atelier_store::db::Skipped {
                    file: file.to_string(),
                    reason,
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Drops a new dataset whose upload failed (its stored images are removed).
    pub async fn abort_dataset(&self, mut upload: DatasetUpload) {
        upload.done = true;
        if upload.new {
            let _ = crate::datasets::remove(&self.blobs, &upload.row.id).await;
        }
    }

    /// Stores what an upload added. A new dataset must hold images in the domains its kind
    /// trains on (else it is dropped and the error says what was missing); an existing one
    /// keeps and counts what was stored, also before a failure. The dataset's `skipped`
    /// lists this upload's skipped files.
    pub async fn commit_dataset(&self, mut upload: DatasetUpload) -> Result<Dataset, JobsError> {
        upload.done = true;
        let (mut row, new) = (upload.row.clone(), upload.new);
        let tally = std::mem::take(&mut upload.tally);
        if new {
            // Unpaired needs both domains; paired may keep side-by-side AB images in A.
            let missing = if tally.a == 0 {
                Some("A")
            } else if tally.b == 0 && row.kind == DatasetKind::Unpaired {
                Some("B")
            } else {
                None
            };
            if let Some(domain) = missing {
                let _ = crate::datasets::remove(&self.blobs, &row.id).await;
                let mut msg = format!(
                    "no usable images in domain {domain} (part `{}`): {}",
                    domain.to_ascii_lowercase(),
                    match row.kind {
                        DatasetKind::Unpaired => "an unpaired dataset needs images in both A and B (for one kind of images only, create it with kind=single)",
                        DatasetKind::Paired => "a paired dataset needs images in A (and their partners of the same name in B, or side-by-side AB images in A)",
                        DatasetKind::Single => "a single dataset needs images in A",
                    }
                );
                if let Some(s) = tally.skipped.first() {
                    msg.push_str(&format!(
                        "; {} file(s) skipped, e.g. {}: {}",
                        tally.skipped.len(),
                        s.file,
                        s.reason
                    ));
                }
                return Err(JobsError::BadRequest(msg));
            }
            row.count_a = tally.a;
            row.count_b = tally.b;
            row.bytes = tally.bytes;
            row.skipped = tally.skipped;
            if let Err(e) = self.db.insert_dataset(&row).await {
                // No row, no images: a failed insert (a full disk) leaves nothing behind.
                let _ = crate::datasets::remove(&self.blobs, &row.id).await;
                return Err(e.into());
            }
            return Ok(Dataset(row));
        }
        if tally.a + tally.b > 0 || !tally.skipped.is_empty() {
            self.db
                .add_to_dataset(&row.id, tally.a, tally.b, tally.bytes, &tally.skipped)
                .await?;
        }
        let mut row = self
            .db
            .dataset(&row.owner, &row.id)
            .await?
            .ok_or_else(|| dataset_not_found(&row.id))?;
        // This request's skips, so the caller sees them.
        row.skipped = tally.skipped;
        Ok(Dataset(row))
    }

    pub async fn datasets(&self, owner: &str) -> Result<Vec<Dataset>, JobsError> {
        Ok(self
            .db
            .datasets(owner)
            .await?
            .into_iter()
            .map(Dataset)
            .collect())
    }

    pub async fn dataset(&self, owner: &str, id: &str) -> Result<Dataset, JobsError> {
        self.db
            .dataset(owner, id)
            .await?
            .map(Dataset)
            .ok_or_else(|| dataset_not_found(id))
    }

    pub async fn delete_dataset(&self, owner: &str, id: &str) -> Result<(), JobsError> {
        let row = self
            .db
            .delete_dataset(owner, id)
            .await?
            .ok_or_else(|| dataset_not_found(id))?;
        crate::datasets::remove(&self.blobs, &row.id).await
    }

    // ---------------------------------------------------------------- models

    /// Models the caller can use: built-ins, published ones, their own.
    pub async fn models(&self, owner: &str) -> Result<Vec<ModelInfo>, JobsError> {
        let mut out = Vec::new();
        for m in self.catalog.list(owner).await? {
            out.push(m.info(owner)?);
        }
        Ok(out)
    }

    /// A model the caller can use.
    pub async fn model(&self, owner: &str, name: &str) -> Result<ModelRef, JobsError> {
        self.catalog
            .resolve(owner, name)
            .await?
            .ok_or_else(|| model_not_found(name))
    }

    /// A model's details: its listing, card and sample images.
    pub async fn model_details(&self, owner: &str, name: &str) -> Result<Value, JobsError> {
        let m = self.model(owner, name).await?;
        let internal = |e: serde_json::Error| JobsError::Internal(e.to_string());
        let mut v = serde_json::to_value(m.info(owner)?).map_err(internal)?;
        v["card"] = serde_json::to_value(m.card()?).map_err(internal)?;
        let mut samples = vec![json!({"kind": "thumbnail", "url": v["thumbnail_url"]})];
        if let Some(job) = m.training_job(owner) {
            samples.push(json!({
                "kind": "training samples",
                "url": format!("/v1/jobs/{job}/results/sample.png"),
            }));
        }
        v["samples"] = json!(samples);
        Ok(v)
    }

    /// A model's thumbnail (PNG).
    pub async fn model_thumbnail(&self, owner: &str, name: &str) -> Result<Bytes, JobsError> {
        let m = self.model(owner, name).await?;
        self.catalog.thumbnail(&m).await?.ok_or_else(|| {
            not_found(
                "result_not_found",
                format!("model `{name}` cannot stylize, so it has no thumbnail"),
            )
        })
    }

    /// A model's file and its download name.
    pub async fn model_file(&self, owner: &str, name: &str) -> Result<(String, Bytes), JobsError> {
        let m = self.model(owner, name).await?;
        let bytes = self.catalog.file_bytes(&m).await?;
        Ok((format!("{}.safetensors", m.name()), bytes))
    }

    /// Stores an uploaded model file as the caller's private model.
    pub async fn upload_model(
        &self,
        owner: &str,
        name: &str,
        body: Bytes,
    ) -> Result<ModelInfo, JobsError> {
        self.check_quota(owner, body.len() as u64).await?;
        if body.is_empty() {
            return Err(JobsError::BadRequest(
                "the body is empty: send a .safetensors model file".into(),
            ));
        }
        let row = self.catalog.add(owner, name, body, None).await?;
        ModelRef::Stored(row).info(owner)
    }

    /// Converts a pytorch-CycleGAN-and-pix2pix generator checkpoint into the caller's model.
    pub async fn import_model(
        &self,
        owner: &str,
        name: &str,
        hints: atelier_nets::import::ImportHints,
        description: Option<String>,
        body: Bytes,
    ) -> Result<ModelInfo, JobsError> {
        self.catalog.check_new_name(owner, name).await?;
        self.check_quota(owner, body.len() as u64).await?;
        if body.is_empty() {
            return Err(JobsError::BadRequest(
                "the body is empty: send a .pth checkpoint".into(),
            ));
        }
        let dir = self.settings.data_dir.join("cache");
        let model_name = name.to_string();
        let file = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, JobsError> {
            use sha2::Digest;
            let internal = |e: &dyn std::fmt::Display| JobsError::Internal(e.to_string());
            let tag = new_id("", 8);
            let src = dir.join(format!("import-{tag}.pth"));
            let out = dir.join(format!("import-{tag}.safetensors"));
            std::fs::write(&src, &body).map_err(|e| internal(&e))?;
            let result = atelier_nets::import::import(&src, &hints);
            let _ = std::fs::remove_file(&src);
            let imported = result.map_err(|e| JobsError::Unprocessable {
                code: "invalid_model_file",
                message: format!(
                    "not a usable pytorch-CycleGAN-and-pix2pix checkpoint: {}",
                    e.to_string().replace(&src.display().to_string(), "upload")
                ),
            })?;
            let mut card = atelier_nets::ModelCard::new(model_name, imported.arch);
            card.description = description.unwrap_or_default();
            card.provenance.source =
                "imported from a pytorch-CycleGAN-and-pix2pix checkpoint".into();
            card.provenance.original_sha256 = Some(
                sha2::Sha256::digest(&body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
            card.provenance.created = now().to_string();
            card.notes = imported.notes.clone();
            atelier_nets::save(&out, &card, &imported.tensors, atelier_nets::Storage::F32)
                .map_err(|e| internal(&e))?;
            let bytes = std::fs::read(&out).map_err(|e| internal(&e));
            let _ = std::fs::remove_file(&out);
            bytes
        })
        .await
        .map_err(|e| JobsError::Internal(e.to_string()))??;
        let row = self
            .catalog
            .add(owner, name, Bytes::from(file), None)
            .await?;
        ModelRef::Stored(row).info(owner)
    }

    /// Makes the caller's model public under its name.
    pub async fn publish_model(&self, owner: &str, name: &str) -> Result<ModelInfo, JobsError> {
        if self.catalog.own(owner, name).await?.is_none() {
            return Err(model_not_found(name));
        }
        if self.catalog.builtin(name).is_some() || !self.db.publish_model(owner, name).await? {
            return Err(JobsError::Conflict {
                code: "name_taken",
                message: format!("a public or built-in model is already called `{name}`; upload it under another name to publish"),
            });
        }
        let row = self
            .catalog
            .own(owner, name)
            .await?
            .ok_or_else(|| model_not_found(name))?;
        ModelRef::Stored(row).info(owner)
    }

    /// Deletes the caller's model.
    pub async fn delete_model(&self, owner: &str, name: &str) -> Result<(), JobsError> {
        if self.catalog.delete(owner, name).await? {
            Ok(())
        } else {
            Err(model_not_found(name))
        }
    }
}

/// A `POST /v1/stylize` request that passed its checks; [`PreparedStylize::run`] does the
/// work (on a blocking thread).
pub struct PreparedStylize {
    model: String,
    stylizer: Arc<atelier_engine::Stylizer>,
    image: Bytes,
    limits: Limits,
    request: crate::pipeline::Request,
}

impl PreparedStylize {
    /// The model's name (for metrics).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Stylizes on a blocking thread that holds `slot` (the caller's admission permit) until
    /// the work is done, also when the caller stops waiting (the client went away).
    pub async fn run<G: Send + 'static>(
        self,
        slot: G,
    ) -> Result<crate::pipeline::Stylized, JobsError> {
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            crate::pipeline::stylize_bytes(
                &self.stylizer,
                &self.image,
                &self.limits,
                &self.request,
                &mut |_| {},
                &|| false,
            )
        })
        .await
        .map_err(|e| JobsError::Internal(e.to_string()))?
    }
}

/// A job being submitted: its id and the images staged so far. Dropped without
/// [`Platform::submit`] or [`Platform::discard`] (the client went away mid-upload), it deletes
/// its staged images in the background.
pub struct Submission {
    blobs: Blobs,
    id: String,
    owner: String,
    staged: Vec<String>,
    names: Vec<String>,
}

impl Submission {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        if staged.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let blobs = self.blobs.clone();
            rt.spawn(async move {
                for k in staged {
                    let _ = blobs.delete(&k).await;
                }
            });
        }
    }
}

/// What one upload added to a dataset.
#[derive(Debug, Default)]
struct Tally {
    a: i64,
    b: i64,
    bytes: i64,
    skipped: Vec<atelier_store::db::Skipped>,
}

/// A dataset upload in progress. Dropped without [`Platform::commit_dataset`] or
/// [`Platform::abort_dataset`] (the client went away mid-upload), it finishes in the
/// background: a new dataset's images are removed, images added to an existing one are
/// counted (so they count against the quota).
pub struct DatasetUpload {
    platform: Platform,
    row: DatasetRow,
    new: bool,
    fixed: Option<char>,
    tally: Tally,
    done: bool,
}

impl Drop for DatasetUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (platform, id, new) = (self.platform.clone(), self.row.id.clone(), self.new);
        let t = std::mem::take(&mut self.tally);
        rt.spawn(async move {
            if new {
                let _ = crate::datasets::remove(&platform.blobs, &id).await;
            } else if t.a + t.b > 0 || !t.skipped.is_empty() {
                if let Err(e) = platform
                    .db
                    .add_to_dataset(&id, t.a, t.b, t.bytes, &t.skipped)
                    .await
                {
                    tracing::warn!(dataset = %id, "counting an interrupted upload: {e}");
                }
            }
        });
    }
}

impl DatasetUpload {
    pub fn owner(&self) -> &str {
        &self.row.owner
    }
}

/// A job as the API shows it (serializes to the API's job object).
#[derive(Debug, Clone)]
pub struct Job(JobRow);

impl Job {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn is_final(&self) -> bool {
        self.0.status.is_final()
    }

    pub fn to_json(&self) -> Value {
        view(&self.0)
    }
}

impl Serialize for Job {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        view(&self.0).serialize(s)
    }
}

/// A dataset as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Dataset(DatasetRow);

impl Dataset {
    pub fn id(&self) -> &str {
        &self.0.id
    }
}

/// One server-sent event of a job.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub name: &'static str,
    pub data: Value,
}

/// The API's view of a job.
fn view(job: &JobRow) -> Value {
    let results: Vec<Value> = job
        .results
        .iter()
        .map(|r| json!({"name": r, "url": format!("/v1/jobs/{}/results/{r}", job.id)}))
        .collect();
    let model = job
        .progress
        .get("model")
        .cloned()
        .filter(|_| job.status == JobStatus::Succeeded)
        .or_else(|| job.model.clone().map(Value::String));
    json!({
        "id": job.id,
        "type": job.kind.as_str(),
        "status": job.status.as_str(),
        "created": job.created,
        "updated": job.updated,
        "finished": job.finished,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "progress": job.progress,
        "spec": job.spec,
        "error": job.error,
        "results": results,
        "model": model,
    })
}

/// The content type of a result file, by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "jsonl" => "application/x-ndjson",
        _ => "application/octet-stream",
    }
}

/// The output format named by a request (`jpg`, `png`, `webp`).
pub fn parse_format(f: &str) -> Result<Format, JobsError> {
    Format::from_extension(f)
        .ok_or_else(|| JobsError::BadRequest(format!("format `{f}`: expected jpg, png or webp")))
}
