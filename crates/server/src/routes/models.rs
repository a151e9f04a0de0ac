//! `/v1/models`: the gallery (built-in, published and own models), details, thumbnails,
//! downloads, uploads, checkpoint import, publishing and deletion.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use atelier_jobs::ModelRef;
use atelier_nets::import::ImportHints;
use atelier_nets::{ModelCard, NormKind, Storage};

use super::{body_bytes, query};
use crate::auth::Caller;
use crate::{ApiError, AppState};

fn not_found(name: &str) -> ApiError {
    ApiError::model_not_found(name)
}

async fn resolve(state: &AppState, caller: &Caller, name: &str) -> Result<ModelRef, ApiError> {
    state
        .catalog
        .resolve(&caller.owner, name)
        .await?
        .ok_or_else(|| not_found(name))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut models = Vec::new();
    for m in state.catalog.list(&caller.owner).await? {
        models.push(m.info(&caller.owner)?);
    }
    Ok(Json(json!({ "models": models })))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = resolve(&state, &caller, &name).await?;
    let mut v = serde_json::to_value(m.info(&caller.owner)?).map_err(ApiError::internal)?;
    v["card"] = serde_json::to_value(m.card()?).map_err(ApiError::internal)?;
    let mut samples = vec![json!({"kind": "thumbnail", "url": v["thumbnail_url"]})];
    if let ModelRef::Stored(row) = &m {
        if let Some(job) = &row.job {
            if row.owner == caller.owner {
                samples.push(json!({
                    "kind": "training samples",
                    "url": format!("/v1/jobs/{job}/results/sample.png"),
                }));
            }
        }
    }
    v["samples"] = json!(samples);
    Ok(Json(v))
}

pub async fn thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = resolve(&state, &caller, &name).await?;
    let png = state.catalog.thumbnail(&m).await?.ok_or_else(|| {
        ApiError::not_found(
            "result_not_found",
            format!("model `{name}` cannot stylize, so it has no thumbnail"),
        )
    })?;
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
    let m = resolve(&state, &caller, &name).await?;
    let bytes = state.catalog.file_bytes(&m).await?;
    let disposition = format!("attachment; filename=\"{}.safetensors\"", m.name());
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

async fn created(
    state: &AppState,
    caller: &Caller,
    row: atelier_store::db::ModelRow,
) -> Result<Response, ApiError> {
    let _ = state;
    let info = ModelRef::Stored(row).info(&caller.owner)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body = body_bytes(req, &state, state.config.max_upload_bytes).await?;
    super::datasets::check_quota(&state, &caller.owner, body.len() as u64).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send a .safetensors model file",
        ));
    }
    let row = state
        .catalog
        .add(&caller.owner, &q.name, body, None)
        .await?;
    created(&state, &caller, row).await
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
    if !atelier_jobs::spec::valid_model_name(&q.name) {
        return Err(ApiError::bad_request(
            "name: 1–64 letters, digits, `-` or `_`, starting with a letter or digit",
        ));
    }
    let norm = match q.norm.as_deref() {
        None => None,
        Some(n) => Some(
            NormKind::parse(n)
                .ok_or_else(|| ApiError::bad_request("norm: expected instance, batch or none"))?,
        ),
    };
    let body = body_bytes(req, &state, state.config.max_upload_bytes).await?;
    super::datasets::check_quota(&state, &caller.owner, body.len() as u64).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send a .pth checkpoint",
        ));
    }
    let dir = state.config.data_dir.join("cache");
    let name = q.name.clone();
    let file = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        use sha2::Digest;
        let tag = atelier_store::db::new_id("", 8);
        let src = dir.join(format!("import-{tag}.pth"));
        let out = dir.join(format!("import-{tag}.safetensors"));
        std::fs::write(&src, &body).map_err(ApiError::internal)?;
        let hints = ImportHints {
            net_g: q.net_g.clone(),
            ngf: q.ngf,
            norm,
            no_dropout: q.no_dropout,
            ..ImportHints::default()
        };
        let result = atelier_nets::import::import(&src, &hints);
        let _ = std::fs::remove_file(&src);
        let imported = result.map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_model_file",
                format!(
                    "not a usable pytorch-CycleGAN-and-pix2pix checkpoint: {}",
                    e.to_string().replace(&src.display().to_string(), "upload")
                ),
            )
        })?;
        let mut card = ModelCard::new(name, imported.arch);
        card.description = q.description.clone().unwrap_or_default();
        card.provenance.source = "imported from a pytorch-CycleGAN-and-pix2pix checkpoint".into();
        card.provenance.original_sha256 = Some(
            sha2::Sha256::digest(&body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        card.provenance.created = atelier_store::db::now().to_string();
        card.notes = imported.notes.clone();
        atelier_nets::save(&out, &card, &imported.tensors, Storage::F32)
            .map_err(ApiError::internal)?;
        let bytes = std::fs::read(&out).map_err(ApiError::internal);
        let _ = std::fs::remove_file(&out);
        bytes
    })
    .await
    .map_err(ApiError::internal)??;
    let row = state
        .catalog
        .add(&caller.owner, &q.name, bytes::Bytes::from(file), None)
        .await?;
    created(&state, &caller, row).await
}

pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<atelier_jobs::ModelInfo>, ApiError> {
    if state.catalog.own(&caller.owner, &name).await?.is_none() {
        return Err(not_found(&name));
    }
    if state.catalog.builtin(&name).is_some()
        || !state.db.publish_model(&caller.owner, &name).await?
    {
        return Err(ApiError::conflict(
            "name_taken",
            format!("a public or built-in model is already called `{name}`; upload it under another name to publish"),
        ));
    }
    let row = state
        .catalog
        .own(&caller.owner, &name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(ModelRef::Stored(row).info(&caller.owner)?))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.catalog.delete(&caller.owner, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&name))
    }
}
