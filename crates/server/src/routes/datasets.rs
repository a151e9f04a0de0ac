//! `/v1/datasets`: upload images or zips into domain A/B, list, show, delete.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use atelier_jobs::platform::DatasetUpload;
use atelier_jobs::Dataset;

use super::{is_multipart, multipart, next_field, query, read_field};
use crate::auth::Caller;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    pub name: String,
    /// `unpaired` (default), `paired` or `single`.
    pub kind: Option<String>,
}

/// The body's declared length, if any.
fn declared(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the multipart parts into the upload (what was stored before a failure stays
/// counted in it).
async fn ingest(
    state: &AppState,
    req: Request,
    upload: &mut DatasetUpload,
) -> Result<(), ApiError> {
    if !is_multipart(&req) {
        return Err(ApiError::bad_request(
            "send multipart/form-data with image or .zip files in parts `a` and `b`",
        ));
    }
    // A body that says it is too big is refused before any of it is read.
    if let Some(n) = declared(&req) {
        state.platform.check_quota(upload.owner(), n).await?;
    }
    let limit = state.config.max_upload_bytes;
    let mut m = multipart(req, state).await?;
    while let Some(f) = next_field(&mut m, limit).await? {
        let part = f.name().unwrap_or("").to_string();
        let file = f.file_name().unwrap_or("upload").to_string();
        let data = read_field(f, limit, limit).await?;
        state.platform.ingest(upload, &part, &file, data).await?;
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<CreateQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let mut upload = state
        .platform
        .begin_dataset(&caller.owner, &q.name, q.kind.as_deref())?;
    if let Err(e) = ingest(&state, req, &mut upload).await {
        // Nothing half-made stays behind.
        state.platform.abort_dataset(upload).await;
        return Err(e);
    }
    let dataset = state.platform.commit_dataset(upload).await?;
    Ok((StatusCode::CREATED, Json(dataset)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddQuery {
    /// `a` or `b`.
    pub domain: String,
}

pub async fn add_images(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<AddQuery>, QueryRejection>,
    req: Request,
) -> Result<Json<Dataset>, ApiError> {
    let q = query(q)?;
    let mut upload = state
        .platform
        .begin_adding(&caller.owner, &id, &q.domain)
        .await?;
    let result = ingest(&state, req, &mut upload).await;
    // What was stored before a failure is kept and counted (nothing stored goes uncounted).
    let dataset = state.platform.commit_dataset(upload).await?;
    result?;
    Ok(Json(dataset))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        json!({ "datasets": state.platform.datasets(&caller.owner).await? }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Dataset>, ApiError> {
    Ok(Json(state.platform.dataset(&caller.owner, &id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.platform.delete_dataset(&caller.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
