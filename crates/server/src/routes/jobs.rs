//! `/v1/jobs`: durable stylize and training jobs, their progress as server-sent events,
//! cancel / resume, metrics and results.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use atelier_jobs::platform::{content_type, Submission};
use atelier_jobs::{Job, JobSpec};

use super::{is_json, is_multipart, multipart, next_field, read_field, read_text};
use crate::auth::Caller;
use crate::{ApiError, AppState};

/// Reads a multipart job request: the `spec` part and the `image` parts, staged as they come.
async fn read_multipart(
    state: &AppState,
    req: Request,
    sub: &mut Submission,
) -> Result<JobSpec, ApiError> {
    let limit = state.config.max_upload_bytes;
    let mut m = multipart(req, state).await?;
    let mut spec: Option<JobSpec> = None;
    while let Some(f) = next_field(&mut m, limit).await? {
        match f.name().unwrap_or("") {
            "spec" => spec = Some(JobSpec::from_json(read_text(f, limit).await?.as_bytes())?),
            "image" => {
                let file = f.file_name().unwrap_or("image").to_string();
                let data = read_field(f, state.config.max_body_bytes.max(limit), limit).await?;
                state.platform.stage_image(sub, &file, data).await?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown part `{other}`: expected `spec` and `image` parts"
                )))
            }
        }
    }
    spec.ok_or_else(|| ApiError::bad_request("a `spec` part is required"))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let mut sub = state.platform.begin_job(&caller.owner);
    let spec = if is_multipart(&req) {
        match read_multipart(&state, req, &mut sub).await {
            Ok(spec) => spec,
            Err(e) => {
                state.platform.discard(sub).await;
                return Err(e);
            }
        }
    } else if is_json(&req) {
        let body = super::body_bytes(req, &state, state.config.max_body_bytes).await?;
        JobSpec::from_json(&body)?
    } else {
        return Err(ApiError::bad_request(
            "send JSON (training) or multipart/form-data with `spec` and `image` parts (stylize)",
        ));
    };
    let job = state.platform.submit(sub, spec).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// `POST /v1/jobs/estimate`: what a training spec will cost on this server, before it starts.
pub async fn estimate(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let body = super::body_bytes(req, &state, state.config.max_body_bytes).await?;
    let e = state
        .platform
        .estimate(&caller.owner, JobSpec::from_json(&body)?)
        .await?;
    Ok(Json(serde_json::to_value(e).map_err(ApiError::internal)?))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let jobs: Vec<Job> = state.platform.jobs(&caller.owner).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.platform.job(&caller.owner, &id).await?))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.platform.cancel(&caller.owner, &id).await?))
}

pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.platform.resume(&caller.owner, &id).await?))
}

pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let metrics = state.platform.job_metrics(&caller.owner, &id).await?;
    Ok(Json(json!({ "metrics": metrics })))
}

pub async fn result(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = state.platform.job_result(&caller.owner, &id, &file).await?;
    let disposition = if content_type(&file).starts_with("image/") {
        "inline".to_string()
    } else {
        format!("attachment; filename=\"{id}-{file}\"")
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
    let events = state
        .platform
        .job_events(&caller.owner, &id, state.shutdown.subscribe())
        .await?;
    let stream = events.map(|e| Ok(Event::default().event(e.name).data(e.data.to_string())));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
