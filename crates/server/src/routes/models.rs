//! `/v1/models`: the gallery (built-in, published and own models), details, thumbnails,
//! downloads, uploads, checkpoint import, publishing and deletion.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use atelier_nets::import::ImportHints;
use atelier_nets::NormKind;

use super::{body_bytes, query};
use crate::auth::Caller;
use crate::{ApiError, AppState};

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let models = state.platform.models(&caller.owner).await?;
    Ok(Json(json!({ "models": models })))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        state.platform.model_details(&caller.owner, &name).await?,
    ))
}

pub async fn thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let png = state.platform.model_thumbnail(&caller.owner, &name).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        png,
    )
        .into_response())
}

pub async fn file(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (file, bytes) = state.platform.model_file(&caller.owner, &name).await?;
    let disposition = format!("attachment; filename=\"{file}\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    pub name: String,
}

pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body = body_bytes(req, &state, state.config.max_upload_bytes).await?;
    let info = state
        .platform
        .upload_model(&caller.owner, &q.name, body)
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    pub name: String,
    #[serde(rename = "netG")]
    pub net_g: Option<String>,
    pub ngf: Option<usize>,
    pub norm: Option<String>,
    pub no_dropout: Option<bool>,
    pub description: Option<String>,
}

pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ImportQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let norm = match q.norm.as_deref() {
        None => None,
        Some(n) => Some(
            NormKind::parse(n)
                .ok_or_else(|| ApiError::bad_request("norm: expected instance, batch or none"))?,
        ),
    };
    let hints = ImportHints {
        net_g: q.net_g.clone(),
        ngf: q.ngf,
        norm,
        no_dropout: q.no_dropout,
        ..ImportHints::default()
    };
    let body = body_bytes(req, &state, state.config.max_upload_bytes).await?;
    let info = state
        .platform
        .import_model(&caller.owner, &q.name, hints, q.description, body)
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<atelier_jobs::ModelInfo>, ApiError> {
    Ok(Json(
        state.platform.publish_model(&caller.owner, &name).await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.platform.delete_model(&caller.owner, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
