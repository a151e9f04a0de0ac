//! `POST /v1/stylize`: one image in, the stylized image out.

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use atelier_imaging::Format;

use super::{body_bytes, is_multipart, multipart, next_field, query, read_field, read_text};
use crate::auth::Caller;
use crate::metrics::{OVERLOADED, STYLIZE_SECONDS};
use crate::{ApiError, AppState};

/// Options of `POST /v1/stylize` (query string, or form fields of a multipart body).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StylizeQuery {
    /// Model name.
    pub model: Option<String>,
    /// `jpg`, `png` or `webp` (default: the input's format).
    pub format: Option<String>,
    /// Downscale so the longer side is at most this (capped by the server's limit).
    pub max_side: Option<u32>,
    /// 0 = the original, 1 = fully stylized (default 1).
    pub strength: Option<f32>,
    /// JPEG quality 1–100 (default 92).
    pub quality: Option<u8>,
}

fn set_field(q: &mut StylizeQuery, name: &str, v: String) -> Result<(), ApiError> {
    let num = |what: &str| ApiError::bad_request(format!("{what} must be a number"));
    match name {
        "model" => q.model = Some(v),
        "format" => q.format = Some(v),
        "max_side" => q.max_side = Some(v.trim().parse().map_err(|_| num("max_side"))?),
        "strength" => q.strength = Some(v.trim().parse().map_err(|_| num("strength"))?),
        "quality" => q.quality = Some(v.trim().parse().map_err(|_| num("quality"))?),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown form field `{other}`"
            )))
        }
    }
    Ok(())
}

pub async fn stylize(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<StylizeQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    let limit = state.config.max_body_bytes;
    let body: Bytes = if is_multipart(&req) {
        let mut m = multipart(req, &state).await?;
        let mut image = None;
        while let Some(f) = next_field(&mut m, limit).await? {
            let name = f.name().unwrap_or("").to_string();
            if name == "image" {
                image = Some(read_field(f, limit, limit).await?);
            } else {
                let v = read_text(f, limit).await?;
                set_field(&mut q, &name, v)?;
            }
        }
        image.ok_or_else(|| ApiError::bad_request("multipart body without an `image` part"))?
    } else {
        body_bytes(req, &state, limit).await?
    };
    let model_name = q
        .model
        .clone()
        .ok_or_else(|| ApiError::bad_request("`model` is required"))?;
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
    let model = state
        .catalog
        .resolve(&caller.owner, &model_name)
        .await?
        .ok_or_else(|| ApiError::model_not_found(&model_name))?;
    // Validate before decoding: format by content, dimensions from the header.
    let limits = state.config.limits();
    let (in_format, _, _) = atelier_imaging::probe(&body, &limits)?;
    let permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        state.metrics.inc(OVERLOADED, &[]);
        ApiError::overloaded(2)
    })?;
    let stylizer = state.catalog.stylizer(&model).await?;
    let max_side = q
        .max_side
        .unwrap_or(state.config.max_output_side)
        .clamp(1, state.config.max_output_side);
    let format = out_format.unwrap_or(in_format);
    let started = Instant::now();
    let (bytes, w, h) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let _permit = permit;
        let img = atelier_imaging::decode(&body, &limits)?;
        let (w, h) = atelier_imaging::fit_max_side(img.width, img.height, max_side);
        let img = if (w, h) != (img.width, img.height) {
            atelier_imaging::resize(&img, w, h)
        } else {
            img
        };
        let out = atelier_jobs::catalog::stylize_image(&stylizer, &img, strength)?;
        Ok((atelier_imaging::encode(&out, format, quality)?, w, h))
    })
    .await
    .map_err(ApiError::internal)??;
    state.metrics.observe(
        STYLIZE_SECONDS,
        &[("model", model.name())],
        started.elapsed().as_secs_f64(),
    );
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.mime_type()),
        )],
        bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{w}x{h}")) {
        resp.headers_mut().insert("x-atelier-size", v);
    }
    Ok(resp)
}
