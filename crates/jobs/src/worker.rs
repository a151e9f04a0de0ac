//! The worker: lanes that claim jobs from the queue and run them, a heartbeat per running job
//! (renews the lease, carries cancel requests back) and a reaper that returns jobs of dead
//! workers to the queue.
//!
//! Stopping: a cancel request stops a training run at the end of its step, after a checkpoint
//! (the job ends `cancelled` and can be resumed); a shutdown does the same but hands the job
//! back to the queue, so the next start continues it. A stylize job stops between two tiles
//! of an image and continues with the images not done yet. A process that dies without either (kill -9, power
//! loss) leaves its jobs `running` until their lease runs out (or, for the single-node
//! SQLite setup, until the next start), then they run again from their last checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};

use atelier_imaging::{Format, Limits};
use atelier_store::db::{Db, JobKind, JobRow, Lease, Notice, Outcome};
use atelier_store::Blobs;
use atelier_train::config::{Family, NetChoice, TrainConfig};
use atelier_train::{Event, Observer, TrainError, Trainer};

use crate::catalog::Catalog;
use crate::spec::{JobSpec, StylizeSpec, TrainSpec};
use crate::JobsError;

/// Worker settings (a section of the server's configuration).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Training jobs run at the same time.
    pub train_workers: usize,
    /// Stylize jobs run at the same time.
    pub stylize_workers: usize,
    /// A job whose worker has not renewed its lease for this long runs again elsewhere.
    pub lease_s: u64,
    /// Lease renewals (and cancel checks) every this many seconds.
    pub heartbeat_s: u64,
    /// Attempts in a row without durable progress (no image done, no checkpoint) before a job
    /// whose worker keeps dying is failed; progress resets the count.
    pub max_attempts: i64,
    /// Longest side a stylize job produces.
    pub max_job_side: u32,
    /// Training checkpoints at least this often, in minutes (and every `checkpoint_every`).
    pub checkpoint_minutes: f64,
    /// Where training runs: `cpu`, or `cuda` / `cuda:N` (a binary built with `--features
    /// cuda`).
    pub device: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            train_workers: 1,
            stylize_workers: 1,
            lease_s: 30,
            heartbeat_s: 3,
            max_attempts: 5,
            max_job_side: 8192,
            checkpoint_minutes: 5.0,
            device: "cpu".into(),
        }
    }
}

/// What a worker needs.
pub struct Context {
    pub db: Db,
    pub blobs: Blobs,
    pub catalog: Arc<Catalog>,
    /// Local working space: training runs live in `data_dir/runs/{job}`.
    pub data_dir: PathBuf,
    pub config: WorkerConfig,
    /// Limits for decoding job inputs.
    pub image_limits: Limits,
    /// Wakes idle lanes when a job is queued.
    pub wake: Arc<Notify>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// This process's worker id prefix.
    pub id: String,
}

/// Largest stored input or result a worker reads back.
const MAX_BLOB: u64 = 512 << 20;

/// Why a job was told to stop.
const GO: u8 = 0;
const CANCEL: u8 = 1;
const SHUTDOWN: u8 = 2;
const LOST: u8 = 3;

/// A kind of job the workers run. The queue knows kinds only by name: a new kind is a module
/// with a `Handler` (and its spec, checked by the platform before queueing), added to
/// [`handlers`].
pub trait Handler: Send + Sync {
    /// The kind's name in the queue.
    fn kind(&self) -> &'static str;
    /// Runs one job on a blocking thread; returns the names of its result files.
    fn run(&self, job: &Running<'_>) -> Result<Vec<String>, JobsError>;
    /// After a job of this kind ended, off the async threads.
    fn after(&self) {}
}

/// A claimed job as its handler sees it.
pub struct Running<'a> {
    pub ctx: &'a Context,
    pub rt: &'a Handle,
    pub job: &'a JobRow,
    pub worker: &'a str,
    control: &'a Control,
}

impl Running<'_> {
    /// Whether the job was told to stop (cancel, shutdown, lost lease).
    pub fn stopped(&self) -> bool {
        self.control.stopped()
    }
}

/// The job kinds this build runs.
pub fn handlers() -> Vec<Arc<dyn Handler>> {
    vec![Arc::new(StylizeHandler), Arc::new(TrainHandler)]
}

struct StylizeHandler;

impl Handler for StylizeHandler {
    fn kind(&self) -> &'static str {
        crate::spec::STYLIZE
    }
    fn run(&self, r: &Running<'_>) -> Result<Vec<String>, JobsError> {
        let JobSpec::Stylize(s) = parse_spec(r.job)? else {
            return Err(JobsError::Internal(
                "a stylize job without a stylize spec".into(),
            ));
        };
        stylize_job(r.ctx, r.rt, r.job, r.worker, r.control, &s)
    }
}

struct TrainHandler;

impl Handler for TrainHandler {
    fn kind(&self) -> &'static str {
        crate::spec::TRAIN
    }
    fn run(&self, r: &Running<'_>) -> Result<Vec<String>, JobsError> {
        let JobSpec::Train(t) = parse_spec(r.job)? else {
            return Err(JobsError::Internal(
                "a train job without a train spec".into(),
            ));
        };
        train_job(r.ctx, r.rt, r.job, r.worker, r.control, &t)
    }
    fn after(&self) {
        // The run's buffers are free now (the training convolutions' kept ones too); give
        // their pages back (see `crate::memory`).
        atelier_nets::conv::release_training_buffers();
        crate::memory::release_free_memory();
    }
}

fn parse_spec(job: &JobRow) -> Result<JobSpec, JobsError> {
    serde_json::from_value(job.spec.clone())
        .map_err(|e| JobsError::BadRequest(format!("job spec: {e}")))
}

impl WorkerConfig {
    /// Lanes (jobs at once) of this process for `kind`.
    pub fn lanes(&self, kind: &str) -> usize {
        match kind {
            crate::spec::TRAIN => self.train_workers,
            crate::spec::STYLIZE => self.stylize_workers,
            _ => usize::from(self.train_workers + self.stylize_workers > 0),
        }
    }
}

/// Starts the worker lanes (per job kind, [`WorkerConfig::lanes`]) and the reaper; they end
/// after `shutdown` turns true (running jobs are checkpointed and handed back first).
pub fn spawn(ctx: Arc<Context>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for h in handlers() {
        for i in 0..ctx.config.lanes(h.kind()) {
            let name = format!("{}-{i}", h.kind());
            handles.push(tokio::spawn(lane(ctx.clone(), h.clone(), name)));
        }
    }
    handles.push(tokio::spawn(reaper(ctx)));
    handles
}

async fn reaper(ctx: Arc<Context>) {
    let mut shutdown = ctx.shutdown.clone();
    let every = Duration::from_secs((ctx.config.lease_s / 2).max(1));
    loop {
        match ctx.db.reap_expired(ctx.config.max_attempts).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!("requeued {n} job(s) whose worker stopped renewing its lease");
                ctx.wake.notify_waiters();
            }
            Err(e) => tracing::error!("reaper: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn lane(ctx: Arc<Context>, handler: Arc<dyn Handler>, name: String) {
    let worker = format!("{}/{name}", ctx.id);
    let mut shutdown = ctx.shutdown.clone();
    let lease = Duration::from_secs(ctx.config.lease_s);
    let kind = match JobKind::new(handler.kind()) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("{worker}: {e}");
            return;
        }
    };
    // Woken by the queue's notices (LISTEN/NOTIFY on PostgreSQL) when a job of this kind is
    // queued; the slow timer only covers a missed notice.
    let mut notices = ctx.db.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Notices from before this claim are answered by it (a long job leaves many behind).
        while notices.try_recv().is_ok() {}
        match ctx
            .db
            .claim(std::slice::from_ref(&kind), &worker, lease)
            .await
        {
            Ok(Some(job)) => run_job(&ctx, &handler, job, &worker).await,
            Ok(None) => {
                let queued = async {
                    loop {
                        match notices.recv().await {
                            Ok(Notice::Queued(None) | Notice::Resync) => return,
                            Ok(Notice::Queued(Some(k))) if k == kind.as_str() => return,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = queued => {}
                    _ = ctx.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::error!("{worker}: claiming a job: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Shared between a running job and its heartbeat.
struct Control {
    reason: AtomicU8,
    stop: AtomicBool,
}

impl Control {
    fn stop(&self, why: u8) {
        let _ = self
            .reason
            .compare_exchange(GO, why, Ordering::SeqCst, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The error a job returns when it was told to stop.
fn stopped() -> JobsError {
    JobsError::Internal("stopped".into())
}

async fn run_job(ctx: &Arc<Context>, handler: &Arc<dyn Handler>, job: JobRow, worker: &str) {
    let id = job.id.clone();
    tracing::info!(job = %id, kind = job.kind.as_str(), attempt = job.attempts, "job started");
    let control = Arc::new(Control {
        reason: AtomicU8::new(GO),
        stop: AtomicBool::new(false),
    });
    let beat = {
        let (ctx, control, id, worker) =
            (ctx.clone(), control.clone(), id.clone(), worker.to_string());
        tokio::spawn(async move {
            let mut shutdown = ctx.shutdown.clone();
            let lease = Duration::from_secs(ctx.config.lease_s);
            let every = Duration::from_secs(ctx.config.heartbeat_s.max(1));
            loop {
                if *shutdown.borrow() {
                    control.stop(SHUTDOWN);
                }
                match ctx.db.heartbeat(&id, &worker, lease).await {
                    Ok(Lease::Held) => {}
                    Ok(Lease::CancelRequested) => control.stop(CANCEL),
                    Ok(Lease::Lost) => {
                        control.stop(LOST);
                        return;
                    }
                    Err(e) => tracing::warn!(job = %id, "heartbeat: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {}
                }
            }
        })
    };
    let started = Instant::now();
    let result = {
        let (ctx, control, job, worker) = (
            ctx.clone(),
            control.clone(),
            job.clone(),
            worker.to_string(),
        );
        let handle = Handle::current();
        let handler = handler.clone();
        tokio::task::spawn_blocking(move || {
            handler.run(&Running {
                ctx: &ctx,
                rt: &handle,
                job: &job,
                worker: &worker,
                control: &control,
            })
        })
        .await
        .unwrap_or_else(|e| Err(JobsError::Internal(format!("the job panicked: {e}"))))
    };
    // The heartbeat keeps the lease until the outcome is recorded (the database may be
    // restarting), so that no reaper hands the job to another worker meanwhile.
    {
        let handler = handler.clone();
        let _ = tokio::task::spawn_blocking(move || handler.after()).await;
    }
    let reason = control.reason.load(Ordering::SeqCst);
    let secs = started.elapsed().as_secs_f64();
    let db = &ctx.db;
    // The database may be restarting: the end of a job is recorded once it answers again
    // (else the job would run a second time after its lease runs out).
    let ended = match result {
        Ok(results) => persist(|| db.finish(&id, worker, &Outcome::Succeeded, &results)).await,
        Err(_) if reason == LOST => Ok(false),
        Err(_) if reason == SHUTDOWN => {
            tracing::info!(job = %id, "handed back to the queue for the next start");
            persist(|| db.release(&id, worker)).await
        }
        Err(e) => {
            let outcome = if reason == CANCEL {
                Outcome::Cancelled
            } else {
                tracing::warn!(job = %id, "job failed: {e}");
                Outcome::Failed(public_message(&e))
            };
            let results = persist(|| db.job_any(&id))
                .await
                .ok()
                .flatten()
                .map(|j| j.results)
                .unwrap_or_default();
            persist(|| db.finish(&id, worker, &outcome, &results)).await
        }
    };
    beat.abort();
    match ended {
        Ok(true) => tracing::info!(job = %id, seconds = secs, "job ended"),
        Ok(false) => tracing::warn!(job = %id, "the job's lease was lost; another worker has it"),
        Err(e) => tracing::error!(job = %id, "recording the job's end: {e}"),
    }
    ctx.wake.notify_waiters();
}

/// How long a worker keeps retrying a database write that records a job's outcome.
const PERSIST_FOR: Duration = Duration::from_secs(120);

/// Runs `op` until it succeeds or [`PERSIST_FOR`] has passed (the database restarting,
/// a connection dropped), one second apart.
async fn persist<T, F, Fut>(op: F) -> Result<T, atelier_store::StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, atelier_store::StoreError>>,
{
    let t0 = Instant::now();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() < PERSIST_FOR => {
                tracing::warn!("database write failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A message for the job's owner: user-facing errors as they are, internal ones generic.
fn public_message(e: &JobsError) -> String {
    match e {
        JobsError::BadRequest(m) | JobsError::TooLarge(m) => m.clone(),
        JobsError::Imaging(e) => e.to_string(),
        JobsError::Train(
            t @ (TrainError::Diverged { .. } | TrainError::Config(_) | TrainError::Data(_)),
        ) => t.to_string(),
        JobsError::Engine(atelier_engine::Error::NotATranslator { .. }) => e.to_string(),
        _ => "internal error while running the job; it has been logged".into(),
    }
}

/// Blob key of a job's file.
pub fn job_blob(job: &str, name: &str) -> String {
    format!("jobs/{job}/{name}")
}

/// Blob key prefix of a stylize job's uploaded inputs.
pub fn input_prefix(job: &str) -> String {
    format!("jobs/{job}/input")
}

fn stylize_job(
    ctx: &Context,
    rt: &Handle,
    job: &JobRow,
    worker: &str,
    control: &Control,
    spec: &StylizeSpec,
) -> Result<Vec<String>, JobsError> {
    let model = rt
        .block_on(ctx.catalog.resolve(&job.owner, &spec.model))?
        .ok_or_else(|| JobsError::BadRequest(format!("model `{}` no longer exists", spec.model)))?;
    let stylizer = rt.block_on(ctx.catalog.stylizer(&model))?;
    let inputs = rt.block_on(ctx.blobs.list(&input_prefix(&job.id)))?;
    let total = inputs.len();
    let mut results = job.results.clone();
    let mut errors: Vec<Value> = Vec::new();
    let max_side = spec
        .max_side
        .unwrap_or(ctx.config.max_job_side)
        .min(ctx.config.max_job_side);
    let stems = crate::spec::result_stems(&spec.names, total);
    let format = spec
        .format
        .as_deref()
        .map(|_| spec.output_format(Format::Png))
        .transpose()?;
    let request = crate::pipeline::Request {
        strength: spec.strength,
        max_side: Some(max_side),
        format,
        quality: spec.quality,
        engine: ctx.catalog.engine_options(),
    };
    for (n, key) in inputs.iter().enumerate() {
        if control.stopped() {
            return Err(stopped());
        }
        let stem = &stems[n];
        if results
            .iter()
            .any(|r| r.rsplit_once('.').map(|(s, _)| s) == Some(stem.as_str()))
        {
            continue;
        }
        let bytes = rt
            .block_on(ctx.blobs.get(key, MAX_BLOB))?
            .ok_or_else(|| JobsError::Internal(format!("input {key} is missing")))?;
        let one = {
            let mut last = Instant::now();
            let mut on_progress = |p: atelier_engine::Progress| {
                if last.elapsed() >= Duration::from_millis(500) {
                    last = Instant::now();
                    let frac = (n as f64 + p.done as f64 / p.total.max(1) as f64) / total as f64;
                    let _ = rt.block_on(ctx.db.set_progress(
                        &job.id,
                        worker,
                        &json!({"done": n, "total": total, "fraction": frac}),
                        None,
                    ));
                }
            };
            let stop = || control.stopped();
            crate::pipeline::stylize_bytes(
                &stylizer,
                &bytes,
                &ctx.image_limits,
                &request,
                &mut on_progress,
                &stop,
            )
        };
        if control.stopped() {
            // Told to stop inside the image (cancel, shutdown, lost lease): it runs again
            // from its start when the job is resumed.
            return Err(stopped());
        }
        match one {
            Ok(out) => {
                let name = format!("{stem}.{}", out.format.extension());
                rt.block_on(
                    ctx.blobs
                        .put(&job_blob(&job.id, &name), Bytes::from(out.bytes)),
                )?;
                results.push(name);
            }
            Err(e @ (JobsError::Imaging(_) | JobsError::BadRequest(_))) => {
                errors.push(json!({"input": n, "name": spec.names.get(n), "error": e.to_string()}));
            }
            Err(e) => return Err(e),
        }
        let progress = json!({
            "done": n + 1, "total": total, "fraction": (n + 1) as f64 / total.max(1) as f64,
            "errors": errors,
        });
        if rt.block_on(persist(|| {
            ctx.db
                .set_progress(&job.id, worker, &progress, Some(&results))
        }))? == Lease::Lost
        {
            control.stop(LOST);
            return Err(stopped());
        }
    }
    if results.is_empty() && !errors.is_empty() {
        return Err(JobsError::BadRequest(format!(
            "no input could be stylized: {}",
            errors[0]["error"].as_str().unwrap_or("")
        )));
    }
    Ok(results)
}

/// The model a training job starts from: its local file, generator architecture and name.
pub type InitModel = (PathBuf, atelier_nets::Arch, String);

/// Resolves a spec's `init_from` (see [`TrainSpec::init_model`]) for `owner`.
pub async fn init_model(
    catalog: &crate::Catalog,
    owner: &str,
    spec: &TrainSpec,
) -> Result<Option<InitModel>, JobsError> {
    let Some(name) = spec.init_model() else {
        return Ok(None);
    };
    let m = catalog.resolve(owner, name).await?.ok_or_else(|| {
        JobsError::BadRequest(format!("init_from: no model `{name}` (built-in or yours)"))
    })?;
    let card = m.card()?;
    if card.arch.role() != atelier_nets::Role::Translator {
        return Err(JobsError::BadRequest(format!(
            "init_from: `{name}` is a {}, not an image-to-image style",
            card.arch.name()
        )));
    }
    Ok(Some((
        catalog.local_file(&m).await?,
        card.arch,
        name.to_string(),
    )))
}

/// Builds the trainer's configuration from a job's spec, its local data folders and the
/// resolved `init_from` model.
pub fn train_config(
    spec: &TrainSpec,
    data_a: PathBuf,
    data_b: Option<PathBuf>,
    checkpoint_minutes: f64,
    init: Option<InitModel>,
) -> Result<TrainConfig, JobsError> {
    let family = match spec.family() {
        "pix2pix" => Family::Pix2pix,
        "dcgan" => Family::Dcgan,
        "cut" => Family::Cut,
        "fastcut" => Family::Fastcut,
        _ => Family::Cyclegan,
    };
    let net_g = spec.net_g.clone().or(match family {
        Family::Cyclegan => Some("light".to_string()),
        Family::Cut | Family::Fastcut => Some("resnet_6blocks_resize".to_string()),
        _ => None,
    });
    let nets = NetChoice {
        ngf: spec.ngf.or(match net_g.as_deref() {
            Some("light") | Some("resnet_6blocks_resize") => Some(32),
            _ => None,
        }),
        net_g,
        ndf: spec.ndf,
        ..NetChoice::default()
    };
    let size = spec.size.or(match family {
        Family::Dcgan => None,
        _ => Some(128),
    });
    let mut cfg = TrainConfig::new(family, data_a, data_b, size, &nets)?;
    if let Some((path, arch, name)) = init {
        cfg.generator = arch;
        cfg.init_from = Some(path);
        cfg.init_label = Some(format!("the model `{name}`"));
    }
    if let Some(b) = spec.batch {
        cfg.batch = b;
    }
    if let Some(lr) = spec.lr {
        cfg.lr = lr;
    }
    if let Some(l) = &spec.loss {
        cfg.loss = atelier_train::GanLoss::parse(l)
            .ok_or_else(|| JobsError::BadRequest(format!("loss `{l}`")))?;
    }
    if let Some(p) = &spec.precision {
        cfg.precision = atelier_train::config::TrainPrecision::parse(p)
            .ok_or_else(|| JobsError::BadRequest(format!("precision `{p}`")))?;
    }
    cfg.seed = spec.seed;
    cfg.sample_every = spec.sample_every.unwrap_or(100);
    cfg.checkpoint_every = spec.checkpoint_every.unwrap_or(200);
    cfg.checkpoint_minutes = checkpoint_minutes;
    cfg.log_every = cfg.sample_every.clamp(1, 10);
    cfg.name = spec.name.clone();
    cfg.set_length(Some(spec.steps), None, None, 1)?;
    Ok(cfg)
}

fn train_job(
    ctx: &Context,
    rt: &Handle,
    job: &JobRow,
    worker: &str,
    control: &Control,
    spec: &TrainSpec,
) -> Result<Vec<String>, JobsError> {
    let root = ctx.data_dir.join("runs").join(&job.id);
    let run_dir = root.join("run");
    // Another worker's run continues here from its last checkpoint in the blob store (also
    // when this worker has an older copy of the run from before).
    let listed = rt.block_on(
        ctx.blobs
            .list(&format!("{}/checkpoints", run_prefix(&job.id))),
    );
    let stored = match listed {
        Ok(keys) => newest_step(&keys),
        // The blob store briefly unreachable: this worker's own copy of the run will do.
        Err(e) if run_dir.join("config.json").is_file() => {
            tracing::warn!(job = %job.id, "listing the stored run state: {e}; using the local copy");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let local = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !run_dir.join("config.json").is_file() || stored > newest_step(&local) {
        let _ = std::fs::remove_dir_all(&run_dir);
        restore_run(ctx, rt, job, spec, &root)?;
    }
    let device = Some(ctx.config.device.as_str());
    let mut trainer = if run_dir.join("config.json").is_file() {
        Trainer::resume_on(&run_dir, device)?
    } else {
        let (a, b, dataset) = materialize_dataset(ctx, rt, job, spec, &root)?;
        let init = rt.block_on(init_model(&ctx.catalog, &job.owner, spec))?;
        let mut cfg = train_config(spec, a, b, ctx.config.checkpoint_minutes, init)?;
        cfg.device = ctx.config.device.clone();
        cfg.data_description = format!(
            "dataset `{}` ({}) uploaded by {}: {} images in A, {} in B",
            dataset.name, dataset.id, job.owner, dataset.count_a, dataset.count_b
        );
        cfg.data_licence = "as stated by the uploader".into();
        Trainer::create(cfg, &run_dir)?
    };
    if control.stopped() {
        return Err(stopped());
    }
    let mut obs = JobObserver {
        ctx,
        rt,
        job: &job.id,
        worker,
        control,
        trainer_stop: trainer.stop_flag(),
        last_write: None,
        progress: job.progress.clone(),
        results: job.results.clone(),
        run_dir: run_dir.clone(),
        started: Instant::now(),
        start_step: trainer.step(),
    };
    let outcome = trainer.run(&mut obs);
    let mut results = obs.results.clone();
    match outcome {
        Ok(done) => {
            obs.upload_samples();
            let model_path = done
                .models
                .first()
                .ok_or_else(|| JobsError::Internal("the run exported no model".into()))?;
            let bytes = Bytes::from(
                std::fs::read(model_path)
                    .map_err(|e| JobsError::Internal(format!("{}: {e}", model_path.display())))?,
            );
            // Only the lease holder registers the model and clears the run state (a worker
            // whose lease ran out while it finished must not touch the run's new owner's).
            let lease = Duration::from_secs(ctx.config.lease_s);
            if rt.block_on(persist(|| ctx.db.heartbeat(&job.id, worker, lease)))? == Lease::Lost {
                control.stop(LOST);
                return Err(stopped());
            }
            let name = register_model(ctx, rt, job, spec, bytes.clone())?;
            rt.block_on(
                ctx.blobs
                    .put(&job_blob(&job.id, "model.safetensors"), bytes),
            )?;
            push_unique(&mut results, "model.safetensors");
            if let Some(rev) = done.models.get(1) {
                if let Ok(b) = std::fs::read(rev) {
                    rt.block_on(
                        ctx.blobs
                            .put(&job_blob(&job.id, "reverse.safetensors"), Bytes::from(b)),
                    )?;
                    push_unique(&mut results, "reverse.safetensors");
                }
            }
            let mut progress = obs.progress.clone();
            progress["model"] = json!(name);
            progress["fraction"] = json!(1.0);
            rt.block_on(persist(|| {
                ctx.db
                    .set_progress(&job.id, worker, &progress, Some(&results))
            }))?;
            // The run folder (checkpoints, local data) and its copy in the blob store are no
            // longer needed.
            let _ = std::fs::remove_dir_all(&root);
            for k in rt
                .block_on(ctx.blobs.list(&run_prefix(&job.id)))
                .unwrap_or_default()
            {
                let _ = rt.block_on(ctx.blobs.delete(&k));
            }
            Ok(results)
        }
        Err(TrainError::Interrupted { .. }) => Err(stopped()),
        Err(e) => Err(e.into()),
    }
}

/// Copies the job's dataset to `root/data/{a,b}` on this worker.
fn materialize_dataset(
    ctx: &Context,
    rt: &Handle,
    job: &JobRow,
    spec: &TrainSpec,
    root: &Path,
) -> Result<(PathBuf, Option<PathBuf>, atelier_store::db::DatasetRow), JobsError> {
    let dataset = rt
        .block_on(ctx.db.dataset(&job.owner, &spec.dataset))?
        .ok_or_else(|| {
            JobsError::BadRequest(format!("dataset {} no longer exists", spec.dataset))
        })?;
    let max = 64 << 20;
    let a = root.join("data").join("a");
    let _ = std::fs::remove_dir_all(root.join("data"));
    let n_a = rt.block_on(crate::datasets::materialize(
        &ctx.blobs,
        &dataset.id,
        'a',
        &a,
        max,
    ))?;
    let b = if spec.family() == "dcgan" {
        None
    } else {
        let b = root.join("data").join("b");
        let n_b = rt.block_on(crate::datasets::materialize(
            &ctx.blobs,
            &dataset.id,
            'b',
            &b,
            max,
        ))?;
        // pix2pix with side-by-side AB images keeps everything in domain A.
        (n_b > 0 || spec.unpaired()).then_some(b)
    };
    if n_a == 0 {
        return Err(JobsError::BadRequest(format!(
            "dataset {} has no images in domain A",
            dataset.id
        )));
    }
    Ok((a, b, dataset))
}

/// Blob key prefix of a training job's run state (its configuration and newest checkpoint):
/// any worker can continue the run from there.
pub fn run_prefix(job: &str) -> String {
    format!("jobs/{job}/run")
}

/// The newest step among checkpoint file names or keys (`…/step-00000400.safetensors`).
fn newest_step(names: &[String]) -> Option<u64> {
    names
        .iter()
        .filter_map(|n| {
            n.rsplit('/')
                .next()?
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .max()
}

/// Largest checkpoint a worker downloads.
const MAX_CHECKPOINT: u64 = 2 << 30;

/// Rebuilds `root/run` from the run state another worker left in the blob store (its
/// configuration, newest checkpoint and metrics), with this worker's copy of the dataset.
/// Nothing stored (the run never reached a checkpoint): the run starts over.
fn restore_run(
    ctx: &Context,
    rt: &Handle,
    job: &JobRow,
    spec: &TrainSpec,
    root: &Path,
) -> Result<bool, JobsError> {
    let prefix = run_prefix(&job.id);
    let checkpoints = rt.block_on(ctx.blobs.list(&format!("{prefix}/checkpoints")))?;
    let Some(newest) = checkpoints
        .into_iter()
        .max_by_key(|k| newest_step(std::slice::from_ref(k)))
    else {
        return Ok(false);
    };
    let get = |key: &str, max: u64| -> Result<Bytes, JobsError> {
        rt.block_on(ctx.blobs.get(key, max))?
            .ok_or_else(|| JobsError::Internal(format!("run state {key} is missing")))
    };
    let config = get(&format!("{prefix}/config.json"), 1 << 20)?;
    let mut config: Value = serde_json::from_slice(&config)
        .map_err(|e| JobsError::Internal(format!("run state config.json: {e}")))?;
    let (a, b, _) = materialize_dataset(ctx, rt, job, spec, root)?;
    config["data_a"] = json!(a);
    config["data_b"] = json!(b);
    let checkpoint = get(&newest, MAX_CHECKPOINT)?;
    let run_dir = root.join("run");
    let file = newest
        .rsplit('/')
        .next()
        .unwrap_or("step-00000000.safetensors");
    let io = |p: &Path, e: std::io::Error| JobsError::Internal(format!("{}: {e}", p.display()));
    for d in [run_dir.join("checkpoints"), run_dir.join("samples")] {
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    }
    atelier_nets::file::write_atomic(&run_dir.join("checkpoints").join(file), &checkpoint)
        .map_err(|e| JobsError::Internal(e.to_string()))?;
    if let Some(m) = rt.block_on(ctx.blobs.get(&job_blob(&job.id, "metrics.jsonl"), 64 << 20))? {
        std::fs::write(run_dir.join("metrics.jsonl"), &m).map_err(|e| io(&run_dir, e))?;
    }
    // The configuration last: a run folder with a config.json is complete.
    let text =
        serde_json::to_vec_pretty(&config).map_err(|e| JobsError::Internal(e.to_string()))?;
    atelier_nets::file::write_atomic(&run_dir.join("config.json"), &text)
        .map_err(|e| JobsError::Internal(e.to_string()))?;
    tracing::info!(job = %job.id, checkpoint = %file, "continuing the run from the blob store");
    Ok(true)
}

fn push_unique(v: &mut Vec<String>, name: &str) {
    if !v.iter().any(|x| x == name) {
        v.push(name.to_string());
    }
}

/// Registers the trained model under the requested name, or, if the owner took that name
/// meanwhile, under `name-<job>`: a finished run is never thrown away.
fn register_model(
    ctx: &Context,
    rt: &Handle,
    job: &JobRow,
    spec: &TrainSpec,
    bytes: Bytes,
) -> Result<String, JobsError> {
    let bytes = with_description(bytes, &spec.description);
    let mut name = spec.name.clone();
    let mut renamed = false;
    let t0 = Instant::now();
    loop {
        match rt.block_on(
            ctx.catalog
                .add(&job.owner, &name, bytes.clone(), Some(job.id.clone())),
        ) {
            Ok(_) => return Ok(name),
            // Registered by this job already (a retry whose first insert did commit).
            Err(JobsError::NameTaken(_))
                if rt
                    .block_on(ctx.catalog.own(&job.owner, &name))
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.job.as_deref() == Some(job.id.as_str())) =>
            {
                return Ok(name)
            }
            Err(JobsError::NameTaken(_) | JobsError::Conflict { .. }) if !renamed => {
                name = format!("{}-{}", spec.name, job.id.trim_start_matches("j_"));
                name.truncate(64);
                renamed = true;
            }
            // The database restarting: hours of training are not failed for a second of it.
            Err(JobsError::Store(e)) if t0.elapsed() < PERSIST_FOR => {
                tracing::warn!(job = %job.id, "registering the model, retrying: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Puts the job's description into the model card (the file is rewritten in memory).
fn with_description(bytes: Bytes, description: &str) -> Bytes {
    if description.is_empty() {
        return bytes;
    }
    let Ok((tensors, Some(mut meta))) = atelier_nets::file::parse_safetensors(&bytes) else {
        return bytes;
    };
    let Some(card) = meta.get(atelier_nets::card::CARD_KEY).cloned() else {
        return bytes;
    };
    let Ok(mut card) = serde_json::from_str::<Value>(&card) else {
        return bytes;
    };
    card["description"] = json!(description);
    meta.insert(atelier_nets::card::CARD_KEY.into(), card.to_string());
    match atelier_nets::file::encode_safetensors(&tensors, atelier_nets::Storage::F32, meta) {
        Ok(b) => Bytes::from(b),
        Err(_) => bytes,
    }
}

/// Turns trainer events into job progress, sample uploads and stop requests.
struct JobObserver<'a> {
    ctx: &'a Context,
    rt: &'a Handle,
    job: &'a str,
    worker: &'a str,
    control: &'a Control,
    trainer_stop: Arc<AtomicBool>,
    last_write: Option<Instant>,
    progress: Value,
    results: Vec<String>,
    run_dir: PathBuf,
    started: Instant,
    start_step: u64,
}

impl JobObserver<'_> {
    fn write(&mut self, results: bool) {
        self.last_write = Some(Instant::now());
        let res = results.then_some(self.results.as_slice());
        match self.rt.block_on(
            self.ctx
                .db
                .set_progress(self.job, self.worker, &self.progress, res),
        ) {
            Ok(Lease::Lost) => self.control.stop(LOST),
            Ok(_) => {}
            Err(e) => tracing::warn!(job = %self.job, "recording progress: {e}"),
        }
    }

    fn upload(&mut self, file: &Path, name: &str) -> bool {
        let Ok(bytes) = std::fs::read(file) else {
            return false;
        };
        match self.rt.block_on(
            self.ctx
                .blobs
                .put(&job_blob(self.job, name), Bytes::from(bytes)),
        ) {
            Ok(()) => {
                push_unique(&mut self.results, name);
                true
            }
            Err(e) => {
                tracing::warn!(job = %self.job, "uploading {name}: {e}");
                false
            }
        }
    }

    /// Stores the run's configuration and the checkpoint at `path` under
    /// [`run_prefix`], then drops older checkpoints there.
    fn store_run_state(&mut self, path: &Path) -> bool {
        let prefix = run_prefix(self.job);
        let put = |key: String, file: &Path| -> Result<(), String> {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            self.rt
                .block_on(self.ctx.blobs.put(&key, Bytes::from(bytes)))
                .map_err(|e| e.to_string())
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let key = format!("{prefix}/checkpoints/{name}");
        let stored = put(
            format!("{prefix}/config.json"),
            &self.run_dir.join("config.json"),
        )
        .and_then(|()| put(key.clone(), path));
        if let Err(e) = stored {
            tracing::warn!(job = %self.job, "storing the run state: {e}");
            return false;
        }
        // Only older checkpoints go (never a newer one another worker may have stored).
        let stored = newest_step(std::slice::from_ref(&key));
        let older = self
            .rt
            .block_on(self.ctx.blobs.list(&format!("{prefix}/checkpoints")))
            .unwrap_or_default();
        for k in older
            .into_iter()
            .filter(|k| newest_step(std::slice::from_ref(k)) < stored)
        {
            let _ = self.rt.block_on(self.ctx.blobs.delete(&k));
        }
        true
    }

    fn upload_samples(&mut self) {
        let run = self.run_dir.clone();
        self.upload(&run.join("samples").join("latest.png"), "sample.png");
        self.upload(&run.join("loss.png"), "loss.png");
        let _ = self.upload(&run.join("metrics.jsonl"), "metrics.jsonl");
    }
}

impl Observer for JobObserver<'_> {
    fn event(&mut self, event: &Event<'_>) {
        if self.control.stopped() {
            self.trainer_stop.store(true, Ordering::SeqCst);
        }
        match event {
            Event::Started { step, total, .. } => {
                self.progress["step"] = json!(step);
                self.progress["total"] = json!(total);
                self.progress["fraction"] = json!(*step as f64 / (*total).max(1) as f64);
                self.write(false);
            }
            Event::Step(p) => {
                let losses: serde_json::Map<String, Value> = p
                    .losses
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                let done_here = p.step.saturating_sub(self.start_step) as f64;
                let eta = (done_here > 0.0).then(|| {
                    self.started.elapsed().as_secs_f64() / done_here
                        * (p.total.saturating_sub(p.step)) as f64
                });
                self.progress["step"] = json!(p.step);
                self.progress["total"] = json!(p.total);
                self.progress["fraction"] = json!(p.step as f64 / p.total.max(1) as f64);
                self.progress["epoch"] = json!(p.epoch);
                self.progress["images_per_s"] = json!(p.images_per_s);
                self.progress["eta_s"] = json!(eta.map(|e| e.round()));
                self.progress["lr"] = json!(p.lr);
                self.progress["losses"] = Value::Object(losses);
                let due = self
                    .last_write
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(700));
                if due || p.step == p.total {
                    self.write(false);
                }
            }
            Event::Warning(w) => {
                self.progress["warning"] = json!(w);
                self.write(false);
            }
            Event::Skipped { .. } | Event::Finished { .. } => {}
            Event::Checkpoint { step, path } => {
                let _ = self.upload(&self.run_dir.join("metrics.jsonl"), "metrics.jsonl");
                // Progress says "checkpoint" only once the run state is stored (any worker can
                // continue from it).
                if self.store_run_state(path) {
                    self.progress["checkpoint_step"] = json!(step);
                }
                self.write(true);
            }
            Event::Sample { step, path } => {
                let path = path.to_path_buf();
                if self.upload(&path, "sample.png") {
                    self.progress["sample_step"] = json!(step);
                }
                let loss = self.run_dir.join("loss.png");
                self.upload(&loss, "loss.png");
                let _ = self.upload(&self.run_dir.join("metrics.jsonl"), "metrics.jsonl");
                self.write(true);
            }
        }
        if self.control.stopped() {
            self.trainer_stop.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_spec() {
        let spec: TrainSpec = serde_json::from_value(
            json!({"dataset": "d", "name": "x", "steps": 50, "family": "cyclegan", "init_from": null}),
        )
        .unwrap();
        let cfg = train_config(&spec, "/a".into(), Some("/b".into()), 5.0, None).unwrap();
        assert_eq!(cfg.steps, 50);
        assert_eq!(cfg.augment.crop_size, 128);
        assert_eq!(cfg.name, "x");
        assert_eq!(cfg.precision, atelier_train::config::TrainPrecision::F32);
        let spec: TrainSpec = serde_json::from_value(
            json!({"dataset": "d", "name": "x", "family": "cyclegan", "init_from": null, "precision": "bf16"}),
        )
        .unwrap();
        let cfg = train_config(&spec, "/a".into(), Some("/b".into()), 5.0, None).unwrap();
        assert_eq!(cfg.precision, atelier_train::config::TrainPrecision::Bf16);
        assert!(
            cfg.generator.name().starts_with("light"),
            "{}",
            cfg.generator.name()
        );
        // The default job: FastCUT from the init model's generator.
        let spec: TrainSpec = serde_json::from_value(json!({"dataset": "d", "name": "x"})).unwrap();
        let arch = crate::builtin::EMBEDDED
            .iter()
            .find(|(n, _, _)| *n == crate::spec::DEFAULT_INIT)
            .map(|(n, _, bytes)| {
                let (_, meta) = atelier_nets::file::parse_safetensors(bytes).unwrap();
                atelier_nets::file::card_from_metadata(std::path::Path::new(n), meta.as_ref())
                    .unwrap()
                    .arch
            })
            .unwrap();
        let cfg = train_config(
            &spec,
            "/a".into(),
            Some("/b".into()),
            5.0,
            Some(("/m.safetensors".into(), arch, "monet".into())),
        )
        .unwrap();
        assert_eq!(cfg.family, Family::Fastcut);
        assert_eq!(cfg.generator, arch);
        assert_eq!(
            cfg.init_from.as_deref(),
            Some(std::path::Path::new("/m.safetensors"))
        );
    }
}
