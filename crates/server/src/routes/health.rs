//! Health, readiness, metrics and the caller's identity.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::auth::Caller;
use crate::metrics::JOBS;
use crate::{ApiError, AppState};

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers, at least one model is available and the built-in models
/// are loaded (at start they load in the background: a request before would pay for it).
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.platform.ping().await.map_err(|e| {
        tracing::error!("readyz: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database does not answer",
        )
    })?;
    if state.platform.catalog().builtins().is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_models",
            "no built-in models",
        ));
    }
    if state.platform.catalog().warming() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "loading the built-in models",
        ));
    }
    Ok("ready")
}

/// Prometheus metrics. Like the API, a closed server wants a key (any key: the metrics are
/// totals, not anyone's data); Prometheus sends it with `authorization: {credentials: …}`.
pub async fn metrics(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    let mut gauges = Vec::new();
    if let Ok(counts) = state.platform.job_counts().await {
        for (kind, status, n) in counts {
            gauges.push((JOBS, vec![("kind", kind), ("status", status)], n as f64));
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&gauges),
    )
}

/// Who the caller is and whether the server is open.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Json<serde_json::Value> {
    Json(json!({ "owner": caller.owner, "open": state.config.is_open() }))
}
