//! Route handlers, one module per resource, and the helpers they share.

pub mod datasets;
pub mod health;
pub mod jobs;
pub mod models;
pub mod stylize;
pub mod web;

use axum::body::Bytes;
use axum::extract::multipart::Field;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request};
use axum::http::{header, StatusCode};

use crate::{ApiError, AppState};

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// A known path with a method it does not have (axum adds the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see the Allow header)",
    )
}

/// A query string, or `400 bad_request` naming what is wrong.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::bad_request(atelier_jobs::spec::humanize_query_error(&e.body_text()))
    })
}

/// Whether the request body is `multipart/form-data`.
pub fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Whether the request body is JSON.
pub fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Whether a body error is the body read timeout (the client stopped sending).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body stopped arriving (body read timeout)",
    )
}

/// The whole body, mapping an over-limit body to `413 payload_too_large`.
pub async fn body_bytes(req: Request, state: &AppState, limit: usize) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if timed_out(&e) {
            request_timeout()
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request(e.body_text())
        }
    })
}

/// The multipart reader of a request.
pub async fn multipart(req: Request, state: &AppState) -> Result<Multipart, ApiError> {
    Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if timed_out(&e) {
        request_timeout()
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(limit)
    } else {
        ApiError::bad_request(format!("multipart: {}", e.body_text()))
    }
}

/// The next part of a multipart body.
pub async fn next_field<'a>(
    m: &'a mut Multipart,
    limit: usize,
) -> Result<Option<Field<'a>>, ApiError> {
    m.next_field().await.map_err(|e| multipart_error(e, limit))
}

/// Reads one part, refusing more than `max` bytes (the part is not buffered past that).
pub async fn read_field(mut f: Field<'_>, max: usize, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = f.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if buf.len() + chunk.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a part is over the limit of {max} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Reads a small text part (form fields).
pub async fn read_text(f: Field<'_>, limit: usize) -> Result<String, ApiError> {
    let b = read_field(f, 64 << 10, limit).await?;
    String::from_utf8(b.to_vec()).map_err(|_| ApiError::bad_request("a form field is not UTF-8"))
}
