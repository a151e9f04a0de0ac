//! The web page and the API docs page, compiled into the binary (no CDN, works offline).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const DOCS: &str = include_str!("../../assets/docs.html");
const DOCS_JS: &str = include_str!("../../assets/docs.js");

/// The pages' Content-Security-Policy: scripts only from the server's own files (no inline
/// script, no `eval`), no plugins, no framing, forms and `<base>` pinned to the server. Inline
/// style attributes stay allowed (the page sets element styles).
pub const PAGE_CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; connect-src 'self'; frame-ancestors 'none'";

fn page(body: &'static str, ctype: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        body,
    )
}

pub async fn index() -> impl IntoResponse {
    page(INDEX, "text/html; charset=utf-8")
}

pub async fn app_js() -> impl IntoResponse {
    page(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn app_css() -> impl IntoResponse {
    page(APP_CSS, "text/css; charset=utf-8")
}

pub async fn docs() -> impl IntoResponse {
    page(DOCS, "text/html; charset=utf-8")
}

pub async fn docs_js() -> impl IntoResponse {
    page(DOCS_JS, "text/javascript; charset=utf-8")
}
