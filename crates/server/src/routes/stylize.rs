//! `POST /v1/stylize`: one image in, the stylized image out.

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

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
    pub quality: Option<u32>,
}

/// The option a form field sets, or why it cannot be one.
fn option_field(name: &str) -> Result<(), ApiError> {
    match name {
        "model" | "format" | "max_side" | "strength" | "quality" => Ok(()),
        other => Err(ApiError::bad_request(format!(
            "unknown form field `{other}`: the image goes in a part named `image`; the options are model, format, max_side, strength and quality"
        ))),
    }
}

fn set_field(q: &mut StylizeQuery, name: &str, v: String) -> Result<(), ApiError> {
    let num = |what: &str| ApiError::bad_request(format!("{what} must be a number"));
    match name {
        "model" => q.model = Some(v),
        "format" => q.format = Some(v),
        "max_side" => q.max_side = Some(v.trim().parse().map_err(|_| num("max_side"))?),
        "strength" => q.strength = Some(v.trim().parse().map_err(|_| num("strength"))?),
        "quality" => q.quality = Some(v.trim().parse().map_err(|_| num("quality"))?),
        other => option_field(other)?,
    }
    Ok(())
}

/// A stylize request once its query and body are read: the model's name, the options and
/// the image's bytes (nothing checked yet against the catalog or the image's header).
#[derive(Debug)]
pub struct StylizeForm {
    /// The model's name.
    pub model: String,
    /// The options, as the pipeline takes them.
    pub request: atelier_jobs::pipeline::Request,
    /// The uploaded image (a raw body, or the multipart part named `image`).
    pub image: Bytes,
}

/// Reads a stylize request: its query (`q`, as axum extracted it) and its body, raw or
/// `multipart/form-data` with the image in a part named `image` and the options as other parts
/// (a part overrides the query). Bodies are bounded by the server's `max_body_bytes`.
pub async fn read_stylize_form(
    state: &AppState,
    q: Result<Query<StylizeQuery>, QueryRejection>,
    req: Request,
) -> Result<StylizeForm, ApiError> {
    let mut q = query(q)?;
    let limit = state.config.max_body_bytes;
    let image: Bytes = if is_multipart(&req) {
        let mut m = multipart(req, state).await?;
        let mut image = None;
        while let Some(f) = next_field(&mut m, limit).await? {
            let name = f.name().unwrap_or("").to_string();
            if name == "image" {
                image = Some(read_field(f, limit, limit).await?);
            } else {
                // Named first: a misnamed image part is an unknown field, not bad text.
                option_field(&name)?;
                let v = read_text(f, limit).await?;
                set_field(&mut q, &name, v)?;
            }
        }
        image.ok_or_else(|| ApiError::bad_request("multipart body without an `image` part"))?
    } else {
        body_bytes(req, state, limit).await?
    };
    let model = q
        .model
        .clone()
        .ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    let request = atelier_jobs::pipeline::Request {
        strength: q.strength.unwrap_or(1.0),
        max_side: q.max_side,
        format: q
            .format
            .as_deref()
            .map(atelier_jobs::platform::parse_format)
            .transpose()?,
        quality: q.quality.unwrap_or(92),
        engine: Default::default(),
    };
    Ok(StylizeForm {
        model,
        request,
        image,
    })
}

pub async fn stylize(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<StylizeQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let StylizeForm {
        model,
        request,
        image: body,
    } = read_stylize_form(&state, q, req).await?;
    // Checked before waiting for a slot: options, model, the image's header.
    let prepared = state
        .platform
        .prepare_stylize(&caller.owner, &model, body, request)
        .await?;
    let permit = state.admission.enter().await.map_err(|busy| {
        state.metrics.inc(OVERLOADED, &[]);
        ApiError::overloaded(busy.retry_after)
    })?;
    let model = prepared.model().to_string();
    let started = Instant::now();
    let out = prepared.run(permit).await;
    let secs = started.elapsed().as_secs_f64();
    let out = out?;
    state.admission.observe(secs);
    state
        .metrics
        .observe(STYLIZE_SECONDS, &[("model", &model)], secs);
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(out.format.mime_type()),
        )],
        out.bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}x{}", out.width, out.height)) {
        resp.headers_mut().insert("x-atelier-size", v);
    }
    Ok(resp)
}
