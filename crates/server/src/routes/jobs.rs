//! `/v1/jobs`: durable stylize and training jobs, their progress as server-sent events,
//! cancel / resume, metrics and results.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::Stream;
use serde_json::{json, Value};

use atelier_jobs::worker::{input_prefix, job_blob};
use atelier_jobs::{JobSpec, StylizeSpec, TrainSpec};
use atelier_store::db::{new_id, now, DatasetKind, JobKind, JobRow, JobStatus};

use super::{is_json, is_multipart, multipart, next_field, parse_json, read_field, read_text};
use crate::auth::Caller;
use crate::{ApiError, AppState};

/// Images one stylize job may carry.
pub const MAX_JOB_IMAGES: usize = 100;

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("job_not_found", format!("no job `{id}`"))
}

/// The API's view of a job.
pub fn view(job: &JobRow) -> Value {
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

async fn own_job(state: &AppState, caller: &Caller, id: &str) -> Result<JobRow, ApiError> {
    state
        .db
        .job(&caller.owner, id)
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let id = new_id("j_", 12);
    let limit = state.config.max_upload_bytes;
    let (spec, inputs) = if is_multipart(&req) {
        let mut m = multipart(req, &state).await?;
        let mut spec: Option<JobSpec> = None;
        let mut n = 0usize;
        let limits = state.config.limits();
        let mut stored = Vec::new();
        let result: Result<(), ApiError> = async {
            while let Some(f) = next_field(&mut m, limit).await? {
                match f.name().unwrap_or("") {
                    "spec" => spec = Some(parse_json(read_text(f, limit).await?.as_bytes())?),
                    "image" => {
                        if n >= MAX_JOB_IMAGES {
                            return Err(ApiError::bad_request(format!(
                                "at most {MAX_JOB_IMAGES} images per job"
                            )));
                        }
                        let file = f.file_name().unwrap_or("image").to_string();
                        let data =
                            read_field(f, state.config.max_body_bytes.max(limit), limit).await?;
                        let (format, _, _) =
                            atelier_imaging::probe(&data, &limits).map_err(|e| {
                                let mut err = ApiError::from(e);
                                err.message = format!("{file}: {}", err.message);
                                err
                            })?;
                        let key = format!("{}/{n:04}.{}", input_prefix(&id), format.extension());
                        state.blobs.put(&key, data).await?;
                        stored.push(key);
                        n += 1;
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown part `{other}`: expected `spec` and `image` parts"
                        )))
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            for k in stored {
                let _ = state.blobs.delete(&k).await;
            }
            return Err(e);
        }
        let spec = spec.ok_or_else(|| ApiError::bad_request("a `spec` part is required"))?;
        (spec, stored)
    } else if is_json(&req) {
        let body = super::body_bytes(req, &state, state.config.max_body_bytes).await?;
        (parse_json::<JobSpec>(&body)?, Vec::new())
    } else {
        return Err(ApiError::bad_request(
            "send JSON (training) or multipart/form-data with `spec` and `image` parts (stylize)",
        ));
    };
    let cleanup = |keys: Vec<String>| {
        let blobs = state.blobs.clone();
        async move {
            for k in keys {
                let _ = blobs.delete(&k).await;
            }
        }
    };
    let job = match build_job(&state, &caller, &id, spec, inputs.len()).await {
        Ok(j) => j,
        Err(e) => {
            cleanup(inputs).await;
            return Err(e);
        }
    };
    if let Err(e) = state.db.enqueue(&job, state.config.max_active_jobs).await {
        cleanup(inputs).await;
        return Err(e.into());
    }
    state.wake.notify_waiters();
    let job = state
        .db
        .job(&caller.owner, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::ACCEPTED, Json(view(&job))).into_response())
}

async fn build_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
    spec: JobSpec,
    inputs: usize,
) -> Result<JobRow, ApiError> {
    let (kind, model, dataset, spec_json) = match spec {
        JobSpec::Stylize(mut s) => {
            check_stylize(state, caller, &s).await?;
            if inputs == 0 {
                return Err(ApiError::bad_request(
                    "a stylize job needs at least one `image` part (multipart/form-data)",
                ));
            }
            s.inputs = inputs;
            (
                JobKind::Stylize,
                None,
                None,
                serde_json::to_value(JobSpec::Stylize(s)),
            )
        }
        JobSpec::Train(mut t) => {
            // Stored with its family spelled out (the page and the job list show it).
            t.family = Some(t.family().to_string());
            if inputs > 0 {
                return Err(ApiError::bad_request(
                    "training jobs take no images; use a dataset",
                ));
            }
            check_train(state, caller, &t).await?;
            let (m, d) = (t.name.clone(), t.dataset.clone());
            (
                JobKind::Train,
                Some(m),
                Some(d),
                serde_json::to_value(JobSpec::Train(t)),
            )
        }
    };
    let t = now();
    Ok(JobRow {
        id: id.to_string(),
        owner: caller.owner.clone(),
        kind,
        status: JobStatus::Queued,
        spec: spec_json.map_err(ApiError::internal)?,
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

async fn check_stylize(state: &AppState, caller: &Caller, s: &StylizeSpec) -> Result<(), ApiError> {
    s.validate()?;
    let m = state
        .catalog
        .resolve(&caller.owner, &s.model)
        .await?
        .ok_or_else(|| ApiError::model_not_found(&s.model))?;
    if !m.info(&caller.owner)?.can_stylize {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "model_cannot_stylize",
            format!("model `{}` is not an image-to-image style model", s.model),
        ));
    }
    Ok(())
}

async fn check_train(state: &AppState, caller: &Caller, t: &TrainSpec) -> Result<(), ApiError> {
    t.validate()?;
    let d = state
        .db
        .dataset(&caller.owner, &t.dataset)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("dataset_not_found", format!("no dataset `{}`", t.dataset))
        })?;
    let fits = match t.family() {
        "cyclegan" | "cut" | "fastcut" => d.count_a > 0 && d.count_b > 0,
        "pix2pix" => d.kind == DatasetKind::Paired && d.count_a > 0,
        _ => d.count_a > 0,
    };
    if !fits {
        return Err(ApiError::bad_request(format!(
            "dataset `{}` ({}, {} images in A, {} in B) cannot train {}: CycleGAN, CUT and FastCUT need images in both domains, pix2pix a paired dataset, DCGAN images in A",
            d.name, d.kind.as_str(), d.count_a, d.count_b, t.family()
        )));
    }
    // The model it starts from must exist (and be one the caller may use), and the
    // configuration must build (a generator name, a size the U-Net takes…), so that a job that
    // cannot run is refused now rather than failing in the queue.
    let init = atelier_jobs::worker::init_model(&state.catalog, &caller.owner, t).await?;
    let b = t.unpaired().then(|| "/b".into());
    atelier_jobs::worker::train_config(t, "/a".into(), b, 0.0, init)?;
    if state.catalog.own(&caller.owner, &t.name).await?.is_some() {
        return Err(ApiError::conflict(
            "name_taken",
            format!("you already have a model named `{}`", t.name),
        ));
    }
    Ok(())
}

/// `POST /v1/jobs/estimate`: what a training spec will cost on this server, before it starts.
pub async fn estimate(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let body = super::body_bytes(req, &state, state.config.max_body_bytes).await?;
    let JobSpec::Train(t) = parse_json::<JobSpec>(&body)? else {
        return Err(ApiError::bad_request(
            "estimates are for training specs (`\"type\": \"train\"`)",
        ));
    };
    t.validate()?;
    let e = atelier_jobs::estimate::estimate(&state.catalog, &caller.owner, &t).await?;
    Ok(Json(serde_json::to_value(e).map_err(ApiError::internal)?))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let jobs: Vec<Value> = state
        .db
        .jobs(&caller.owner, 200)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&own_job(&state, &caller, &id).await?)))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state
        .db
        .request_cancel(&caller.owner, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&job)))
}

pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state
        .db
        .requeue(&caller.owner, &id, state.config.max_active_jobs)
        .await?
        .ok_or_else(|| not_found(&id))?;
    state.wake.notify_waiters();
    Ok(Json(view(&job)))
}

/// Largest metrics log returned.
const MAX_METRICS: u64 = 32 << 20;

pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    // The live run's file when this node runs it; else the copy in the blob store.
    let local = state
        .config
        .data_dir
        .join("runs")
        .join(&job.id)
        .join("run")
        .join("metrics.jsonl");
    let text = match std::fs::metadata(&local) {
        Ok(m) if m.len() <= MAX_METRICS => std::fs::read(&local).ok().map(Bytes::from),
        _ => None,
    };
    let text = match text {
        Some(t) => Some(t),
        None => {
            state
                .blobs
                .get(&job_blob(&job.id, "metrics.jsonl"), MAX_METRICS)
                .await?
        }
    };
    let metrics: Vec<Value> = text
        .map(|t| {
            String::from_utf8_lossy(&t)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("event").is_none())
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({ "metrics": metrics })))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "jsonl" => "application/x-ndjson",
        _ => "application/octet-stream",
    }
}

pub async fn result(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    let missing = || {
        ApiError::not_found(
            "result_not_found",
            format!("job `{id}` has no result `{file}`"),
        )
    };
    if !job.results.contains(&file) {
        return Err(missing());
    }
    let bytes = state
        .blobs
        .get(&job_blob(&job.id, &file), 1 << 30)
        .await?
        .ok_or_else(missing)?;
    let disposition = if content_type(&file).starts_with("image/") {
        "inline".to_string()
    } else {
        format!("attachment; filename=\"{}-{file}\"", job.id)
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&file).to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// Server-sent events of one job: `status` on every status change, `progress` when it
/// moves, `sample` for each new sample grid, `end` when it is over.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    struct S {
        state: AppState,
        owner: String,
        id: String,
        last: Option<JobRow>,
        pending: std::collections::VecDeque<Event>,
        done: bool,
    }
    let start = S {
        state,
        owner: caller.owner,
        id,
        last: None,
        pending: Default::default(),
        done: false,
    };
    let _ = job;
    let stream = futures::stream::unfold(start, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok(e), s));
            }
            if s.done || *s.state.shutdown.borrow() {
                return None;
            }
            if s.last.is_some() {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            let job = match s.state.db.job(&s.owner, &s.id).await {
                Ok(Some(j)) => j,
                _ => return None,
            };
            let ev = |name: &str, v: &Value| Event::default().event(name).data(v.to_string());
            let prev = s.last.as_ref();
            if prev.is_none_or(|p| {
                p.status != job.status || p.cancel_requested != job.cancel_requested
            }) {
                s.pending.push_back(ev("status", &view(&job)));
            }
            if prev.is_none_or(|p| p.progress != job.progress) {
                s.pending.push_back(ev("progress", &job.progress));
            }
            let sample = job.progress.get("sample_step").cloned();
            if sample.is_some()
                && prev.is_none_or(|p| p.progress.get("sample_step") != sample.as_ref())
            {
                s.pending.push_back(ev(
                    "sample",
                    &json!({"step": sample, "url": format!("/v1/jobs/{}/results/sample.png", job.id)}),
                ));
            }
            if job.status.is_final() {
                s.pending.push_back(ev("end", &view(&job)));
                s.done = true;
            }
            s.last = Some(job);
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
