//! Atelier's HTTP API. [`app`] builds the router from an [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot` and `atelier serve` binds it to a socket.
//!
//! This is the first slice of the platform (issue 4): health checks, the model list and
//! synchronous stylization, with limits checked before decoding, a semaphore in front of the
//! models (overload answers 429 with `Retry-After`) and one error → HTTP mapping with stable
//! codes ([`ApiError`]).

pub mod config;
pub mod error;
mod routes;
pub mod state;

pub use config::ServerConfig;
pub use error::ApiError;
pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

/// The API router.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/stylize", post(routes::stylize))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `app` on the configured address until Ctrl-C / SIGTERM; in-flight requests finish.
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let addr = format!("{}:{}", state.config.host, state.config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    serve_on(listener, state).await
}

/// [`serve`] on an already bound listener (tests bind port 0).
pub async fn serve_on(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    eprintln!("atelier: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("atelier: shutting down, finishing requests in flight");
}
