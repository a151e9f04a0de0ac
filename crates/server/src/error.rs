//! The one mapping from errors to HTTP responses: a stable machine code, a status and a human
//! message. Internal details (paths, tensor errors) never reach the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `image_too_large`.
    pub code: &'static str,
    /// One human-readable line.
    pub message: String,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Overload: 429 with `Retry-After`.
    pub fn overloaded(retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the server is busy with other images; retry shortly",
            )
        }
    }

    /// 404 `model_not_found` (also for models that exist but are not the caller's to see).
    pub fn model_not_found(name: &str) -> Self {
        Self::not_found("model_not_found", format!("no model named `{name}`"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 with a code and `Retry-After`.
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// The body of a request was over its limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {limit} bytes"),
        )
    }

    /// An upload would take its owner past `max_storage_bytes_per_owner`.
    pub fn storage_quota(used: u64, adding: u64, quota: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "storage_quota_exceeded",
            format!(
                "this upload ({adding} bytes) would take your storage past its quota: {used} of {quota} bytes used (delete datasets or models to make room)"
            ),
        )
    }

    /// The server's disk (or database) is full: nothing was stored; try again later.
    pub fn storage_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server's storage is full: nothing was stored; try again later",
        )
    }

    /// An unexpected failure; the detail goes to the log, not to the client. A full disk
    /// (`ENOSPC`, SQLite's `SQLITE_FULL`), wherever it surfaced, answers `507 storage_full`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        if is_storage_full(&detail) {
            tracing::error!("storage full: {detail}");
            return Self::storage_full();
        }
        if detail.contains("database is locked") {
            // Another process held the database past the busy timeout (10 s).
            tracing::warn!("database busy: {detail}");
            return Self {
                retry_after: Some(2),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the database is busy; try again shortly",
                )
            };
        }
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

impl From<atelier_imaging::Error> for ApiError {
    fn from(e: atelier_imaging::Error) -> Self {
        use atelier_imaging::Error as E;
        let (status, code) = match &e {
            E::Empty => (StatusCode::BAD_REQUEST, "empty_image"),
            E::UnsupportedFormat { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_image_format",
            ),
            E::InputTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            E::TooManyPixels { .. } | E::SideTooLong { .. } | E::MemoryLimit { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
            }
            E::Encode { .. } | E::Io { .. } => return ApiError::internal(e),
            _ => (StatusCode::BAD_REQUEST, "invalid_image"),
        };
        // Imaging messages are written for users and carry no paths for in-memory input.
        ApiError::new(status, code, e.to_string())
    }
}

impl From<atelier_engine::Error> for ApiError {
    fn from(e: atelier_engine::Error) -> Self {
        match e {
            atelier_engine::Error::Imaging(e) => e.into(),
            atelier_engine::Error::NotATranslator { name, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "model_cannot_stylize",
                format!("model `{name}` is not an image-to-image style model"),
            ),
            atelier_engine::Error::Options(m) => ApiError::bad_request(m),
            other => ApiError::internal(other),
        }
    }
}

/// Whether an error's text is the operating system's or SQLite's "disk full" (the errors reach
/// here through several libraries, as text at the end).
fn is_storage_full(detail: &str) -> bool {
    detail.contains("No space left on device")
        || detail.contains("database or disk is full")
        || detail.contains("StorageFull")
}

impl From<atelier_store::StoreError> for ApiError {
    fn from(e: atelier_store::StoreError) -> Self {
        use atelier_store::StoreError as E;
        match e {
            E::Conflict(m) => ApiError::conflict("conflict", m),
            E::QuotaExceeded(m) => ApiError::too_many("quota_exceeded", m, 30),
            E::InvalidKey(_) => ApiError::bad_request("invalid name"),
            other => ApiError::internal(other),
        }
    }
}

impl From<atelier_jobs::JobsError> for ApiError {
    fn from(e: atelier_jobs::JobsError) -> Self {
        use atelier_jobs::JobsError as E;
        match e {
            E::BadRequest(m) => ApiError::bad_request(m),
            E::NameTaken(n) => ApiError::conflict(
                "name_taken",
                format!("you already have a model named `{n}`"),
            ),
            E::InvalidModel(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_model_file",
                format!("not a usable model file: {m}"),
            ),
            E::InvalidArchive(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_archive",
                format!("invalid archive: {m}"),
            ),
            E::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m),
            E::NotFound { code, message } => ApiError::not_found(code, message),
            E::Conflict { code, message } => ApiError::conflict(code, message),
            E::Unprocessable { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            E::StorageQuota {
                used,
                adding,
                quota,
            } => ApiError::storage_quota(used, adding, quota),
            E::Upload { file, source } => {
                let mut err = ApiError::from(source);
                err.message = format!("{file}: {}", err.message);
                err
            }
            // A training configuration that cannot be built is the request's fault.
            E::Train(atelier_train::TrainError::Config(m)) => ApiError::bad_request(m),
            E::Imaging(e) => e.into(),
            E::Engine(e) => e.into(),
            E::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_default();
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
