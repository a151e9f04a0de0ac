//! Route handlers.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use atelier_imaging::Format;

use crate::{ApiError, AppState};

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the models folder is readable and holds at least one model.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.model_names().is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_models",
            "no model files in the models folder",
        ));
    }
    Ok("ready")
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

pub async fn list_models(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut models = Vec::new();
    for name in state.model_names() {
        let Some(path) = state.model_path(&name) else {
            continue;
        };
        // A broken file is listed as such rather than failing the whole list.
        match atelier_nets::file::read_card(&path) {
            Ok(card) => models.push(serde_json::json!({
                "name": name,
                "description": card.description,
                "arch": card.arch.name(),
                "train_size": card.input.train_size,
                "data": card.data.description,
            })),
            Err(_) => {
                models.push(serde_json::json!({ "name": name, "error": "unreadable model file" }))
            }
        }
    }
    Ok(Json(serde_json::json!({ "models": models })))
}

/// Query of `POST /v1/stylize`; the body is the image itself.
#[derive(Debug, Deserialize)]
pub struct StylizeQuery {
    /// Model name.
    pub model: String,
    /// `jpg`, `png` or `webp` (default: the input's format).
    pub format: Option<String>,
    /// Downscale so the longer side is at most this (capped by the server's limit).
    pub max_side: Option<u32>,
    /// 0 = the original, 1 = fully stylized (default 1).
    pub strength: Option<f32>,
    /// JPEG quality 1–100 (default 92).
    pub quality: Option<u8>,
}

pub async fn stylize(
    State(state): State<AppState>,
    query: Result<Query<StylizeQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is over the limit of {} bytes",
                    state.config.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    let strength = q.strength.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&strength) {
        return Err(ApiError::bad_request("strength must be between 0 and 1"));
    }
    let out_format = match q.format.as_deref() {
        None => None,
        Some(f) => Some(Format::from_extension(f).ok_or_else(|| {
            ApiError::bad_request(format!("format `{f}`: expected jpg, png or webp"))
        })?),
    };
    let quality = q.quality.unwrap_or(92);
    if !(1..=100).contains(&quality) {
        return Err(ApiError::bad_request("quality must be between 1 and 100"));
    }
    if state.model_path(&q.model).is_none() {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("no model named `{}`", q.model),
        ));
    }
    // Validate before decoding: format by content, dimensions from the header.
    let limits = state.config.limits();
    let (in_format, _, _) = atelier_imaging::probe(&body, &limits)?;
    let permit = state
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded(2))?;
    let max_side = q
        .max_side
        .unwrap_or(state.config.max_output_side)
        .clamp(1, state.config.max_output_side);
    let format = out_format.unwrap_or(in_format);
    let work_state = state.clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let _permit = permit;
        let stylizer = work_state.stylizer(&q.model)?;
        let img = atelier_imaging::decode(&body, &limits)?;
        let (w, h) = atelier_imaging::fit_max_side(img.width, img.height, max_side);
        let img = if (w, h) != (img.width, img.height) {
            atelier_imaging::resize(&img, w, h)
        } else {
            img
        };
        let mut out = stylizer.stylize(&img, &atelier_engine::Options::default(), &mut |_| {})?;
        if strength < 1.0 {
            for (o, i) in out.rgb.iter_mut().zip(&img.rgb) {
                *o = strength * *o + (1.0 - strength) * i;
            }
        }
        Ok(atelier_imaging::encode(&out, format, quality)?)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.mime_type()),
        )],
        bytes,
    )
        .into_response())
}
