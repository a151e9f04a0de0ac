//! Atelier's HTTP API and web page. [`app`] builds the router from an [`AppState`], so tests
//! drive it with `tower::ServiceExt::oneshot` and `atelier serve` binds it to a socket.
//!
//! Every API route is a row of [`operations`]: the router and the OpenAPI document
//! ([`openapi::document`]) are both made from it. Errors go through one mapping
//! ([`ApiError`]) with stable codes; limits are checked before decoding; a semaphore in front
//! of the models answers overload with 429 + `Retry-After`; each key is rate-limited and sees
//! only its own datasets, jobs and private models (404 for anything else).

pub mod admission;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;

mod routes;
pub mod state;

pub use atelier_jobs::catalog::BUILTIN_OWNER;
pub use config::ServerConfig;
pub use error::ApiError;
pub use routes::stylize::{read_stylize_form, StylizeForm, StylizeQuery};
pub use state::AppState;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use openapi::{p, q, q_req, Answer, Op, ReqBody};
use routes::{datasets, health, jobs, models, stylize, web};

const IMAGE_TYPES: &str = "image/jpeg, image/png, image/webp";

/// Every API operation with its handler. `upload` marks routes whose body may be as large
/// as `max_upload_bytes` (the others: `max_body_bytes`).
pub fn operations() -> Vec<(Op, MethodRouter<AppState>, bool)> {
    const NAME: openapi::Param = p("name", "Model name.");
    const NAME_SCHEMA: &str =
        r#"{"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}"#;
    const JOB: openapi::Param = p("id", "Job id (`j_…`).");
    const DS: openapi::Param = p("id", "Dataset id (`d_…`).");
    let op = |method, path, tag, summary| Op {
        method,
        path,
        tag,
        summary,
        description: "",
        params: &[],
        body: ReqBody::None,
        answer: Answer::Text(200),
        errors: &[],
        auth: true,
    };
    vec![
        (Op { auth: false, ..op("get", "/healthz", "operations", "Liveness: `ok`.") }, get(health::healthz), false),
        (Op { auth: false, errors: &["not_ready", "no_models"], ..op("get", "/readyz", "operations", "Readiness: the database answers, a model is available and the built-in models are loaded.") }, get(health::readyz), false),
        (Op { description: "Key-less on an open server; a closed server wants a key, as for the API.", ..op("get", "/metrics", "operations", "Prometheus metrics (text format).") }, get(health::metrics), false),
        (Op { answer: Answer::Json(200, "Me"), ..op("get", "/v1/me", "operations", "Who the caller is, and whether key-less use is allowed.") }, get(health::me), false),
        (Op {
            description: "The body is the image (format recognised by content), or multipart/form-data with an `image` part and the options as form fields. Larger images are downscaled to `max_side` (at most the server's `max_output_side`); use a job for full resolution. `X-Atelier-Size: WxH` gives the output size.",
            params: const { &[
                q("model", r#"{"type": "string", "examples": ["monet", "ukiyoe"]}"#, "Model name (required, as query or form field)."),
                q("format", r#"{"type": "string", "enum": ["jpg", "jpeg", "png", "webp"]}"#, "jpg, png or webp (default: the input's)."),
                q("max_side", r#"{"type": "integer", "minimum": 1}"#, "Downscale so the longer side is at most this."),
                q("strength", r#"{"type": "number", "minimum": 0, "maximum": 1}"#, "0 = the original, 1 = fully stylized (default 1)."),
                q("quality", r#"{"type": "integer", "minimum": 1, "maximum": 100}"#, "JPEG quality 1–100 (default 92)."),
            ] },
            body: ReqBody::BytesOrMultipart(IMAGE_TYPES, &[("image", "The image."), ("model", "Model name."), ("strength", "0–1.")]),
            answer: Answer::Bytes(200, IMAGE_TYPES),
            errors: &["bad_request", "model_not_found", "empty_image", "unsupported_image_format", "invalid_image", "image_too_large", "payload_too_large", "model_cannot_stylize", "overloaded", "request_timeout"],
            ..op("post", "/v1/stylize", "stylize", "Stylize one image.")
        }, post(stylize::stylize), false),
        (Op { answer: Answer::Json(200, "ModelList"), ..op("get", "/v1/models", "models", "Built-in, published and your own models.") }, get(models::list), false),
        (Op {
            params: const { &[q_req("name", NAME_SCHEMA, "Name of the new model (1–64 letters, digits, `-`, `_`).")] },
            body: ReqBody::Bytes("application/octet-stream", "An Atelier .safetensors model file (with its model card)."),
            answer: Answer::Json(201, "Model"),
            errors: &["bad_request", "invalid_model_file", "name_taken", "name_reserved", "payload_too_large", "storage_quota_exceeded", "request_timeout"],
            ..op("post", "/v1/models", "models", "Upload a model file (private until published).")
        }, post(models::upload), true),
        (Op {
            params: const { &[
                q_req("name", NAME_SCHEMA, "Name of the new model."),
                q("netG", "string", "Generator architecture (inferred from the weights if omitted)."),
                q("ngf", "integer", "Generator width."),
                q("norm", r#"{"type": "string", "enum": ["instance", "batch", "none"]}"#, "instance, batch or none."),
                q("no_dropout", "boolean", "The reference's --no_dropout."),
                q("description", "string", "Shown on the model page."),
            ] },
            body: ReqBody::Bytes("application/octet-stream", "A pytorch-CycleGAN-and-pix2pix checkpoint (torch.save zip or .safetensors state dict)."),
            answer: Answer::Json(201, "Model"),
            errors: &["bad_request", "invalid_model_file", "name_taken", "name_reserved", "payload_too_large", "storage_quota_exceeded", "request_timeout"],
            ..op("post", "/v1/models/import", "models", "Import a pytorch-CycleGAN-and-pix2pix checkpoint.")
        }, post(models::import), true),
        (Op { params: &[NAME], answer: Answer::Json(200, "Model"), errors: &["model_not_found"], ..op("get", "/v1/models/{name}", "models", "A model with its card and sample images.") }, get(models::get), false),
        (Op { params: &[NAME], answer: Answer::Empty(204), errors: &["model_not_found"], ..op("delete", "/v1/models/{name}", "models", "Delete your model.") }, delete(models::delete), false),
        (Op { params: &[NAME], answer: Answer::Bytes(200, "image/png"), errors: &["model_not_found", "result_not_found"], ..op("get", "/v1/models/{name}/thumbnail", "models", "Gallery preview: a fixed photo stylized by the model (PNG, 256 px).") }, get(models::thumbnail), false),
        (Op { params: &[NAME], answer: Answer::Bytes(200, "application/octet-stream"), errors: &["model_not_found"], ..op("get", "/v1/models/{name}/file", "models", "Download the model file (.safetensors).") }, get(models::file), false),
        (Op { params: &[NAME], answer: Answer::Json(200, "Model"), errors: &["model_not_found", "name_taken"], ..op("post", "/v1/models/{name}/publish", "models", "Publish your model to the gallery (visible to everyone).") }, post(models::publish), false),
        (Op { answer: Answer::Json(200, "DatasetList"), ..op("get", "/v1/datasets", "datasets", "Your datasets.") }, get(datasets::list), false),
        (Op {
            description: "Files in part `a` go to domain A, in part `b` to domain B; each file is an image or a .zip of images. Unreadable files are skipped and listed in `skipped`, never stored. `paired` datasets match A and B by file name (or hold side-by-side AB images in A); `single` (DCGAN) has only A.",
            params: const { &[q_req("name", "string", "Dataset name."), q("kind", r#"{"type": "string", "enum": ["unpaired", "paired", "single"]}"#, "unpaired (default), paired or single.")] },
            body: ReqBody::Multipart(&[("a", "Images or zips for domain A (repeatable)."), ("b", "Images or zips for domain B (repeatable).")]),
            answer: Answer::Json(201, "Dataset"),
            errors: &["bad_request", "payload_too_large", "storage_quota_exceeded", "request_timeout"],
            ..op("post", "/v1/datasets", "datasets", "Create a dataset from uploaded images or zips.")
        }, post(datasets::create), true),
        (Op { params: &[DS], answer: Answer::Json(200, "Dataset"), errors: &["dataset_not_found"], ..op("get", "/v1/datasets/{id}", "datasets", "One dataset.") }, get(datasets::get), false),
        (Op { params: &[DS], answer: Answer::Empty(204), errors: &["dataset_not_found", "conflict"], ..op("delete", "/v1/datasets/{id}", "datasets", "Delete a dataset (refused while an unfinished job uses it).") }, delete(datasets::delete), false),
        (Op {
            params: const { &[DS, q_req("domain", r#"{"type": "string", "enum": ["a", "b"]}"#, "a or b.")] },
            body: ReqBody::Multipart(&[("files", "Images or zips (repeatable).")]),
            answer: Answer::Json(200, "Dataset"),
            errors: &["dataset_not_found", "bad_request", "payload_too_large", "storage_quota_exceeded", "request_timeout"],
            ..op("post", "/v1/datasets/{id}/images", "datasets", "Add images to one domain of a dataset.")
        }, post(datasets::add_images), true),
        (Op { answer: Answer::Json(200, "JobList"), ..op("get", "/v1/jobs", "jobs", "Your jobs, newest first.") }, get(jobs::list), false),
        (Op {
            description: "Training: a JSON `TrainSpec`. Stylizing large images or batches: multipart/form-data with a `spec` part (JSON `StylizeSpec`) and one or more `image` parts. Jobs are durable: a restart loses none, and training resumes from its last checkpoint.",
            body: ReqBody::JsonOrMultipart("JobSpec", &[("spec", "JSON StylizeSpec."), ("image", "An image (repeatable, up to 100).")]),
            answer: Answer::Json(202, "Job"),
            errors: &["bad_request", "model_not_found", "dataset_not_found", "name_taken", "name_reserved", "model_cannot_stylize", "quota_exceeded", "unsupported_image_format", "invalid_image", "image_too_large", "empty_image", "payload_too_large", "request_timeout"],
            ..op("post", "/v1/jobs", "jobs", "Start a job: training a style, or stylizing images at full resolution.")
        }, post(jobs::create), true),
        (Op {
            description: "The same JSON as a training job's `TrainSpec` (`dataset` is not read). The first estimate of a configuration runs two training steps on random images (a few seconds); later ones are remembered.",
            body: ReqBody::Json("JobSpec"),
            answer: Answer::Json(200, "TrainEstimate"),
            errors: &["bad_request"],
            ..op("post", "/v1/jobs/estimate", "jobs", "Estimate a training job: seconds per step measured on this server, ETA, and warnings (too few steps to learn, long runs).")
        }, post(jobs::estimate), false),
        (Op { params: &[JOB], answer: Answer::Json(200, "Job"), errors: &["job_not_found"], ..op("get", "/v1/jobs/{id}", "jobs", "One job.") }, get(jobs::get), false),
        (Op { params: &[JOB], answer: Answer::EventStream, errors: &["job_not_found"], ..op("get", "/v1/jobs/{id}/events", "jobs", "Live progress as server-sent events.") }, get(jobs::events), false),
        (Op { params: &[JOB], answer: Answer::Json(200, "Job"), errors: &["job_not_found"], ..op("post", "/v1/jobs/{id}/cancel", "jobs", "Cancel (a running training job checkpoints first).") }, post(jobs::cancel), false),
        (Op { params: &[JOB], answer: Answer::Json(200, "Job"), errors: &["job_not_found", "conflict", "quota_exceeded"], ..op("post", "/v1/jobs/{id}/resume", "jobs", "Queue a cancelled or failed job again (training continues from its checkpoint).") }, post(jobs::resume), false),
        (Op { params: &[JOB], answer: Answer::Json(200, "Metrics"), errors: &["job_not_found"], ..op("get", "/v1/jobs/{id}/metrics", "jobs", "A training job's logged metrics (loss history).") }, get(jobs::metrics), false),
        (Op {
            params: const { &[JOB, p("file", "Result name: `0.png`… (stylize), `sample.png`, `loss.png`, `metrics.jsonl`, `model.safetensors`, `reverse.safetensors` (training).")] },
            answer: Answer::Bytes(200, "image/png, image/jpeg, image/webp, application/octet-stream"),
            errors: &["job_not_found", "result_not_found"],
            ..op("get", "/v1/jobs/{id}/results/{file}", "jobs", "Download a result.")
        }, get(jobs::result), false),
    ]
}

/// The OpenAPI document of [`operations`].
pub fn openapi_document() -> serde_json::Value {
    let ops: Vec<Op> = operations().into_iter().map(|(o, _, _)| o).collect();
    openapi::document(&ops)
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi_document())
}

/// The router: the API, the web page and the docs.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (op, handler, upload) in operations() {
        let limit = if upload {
            state.config.max_upload_bytes
        } else {
            state.config.max_body_bytes
        };
        router = router.route(
            op.path,
            handler
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn(
                    move |req: Request, next: Next| declared_length(req, next, limit),
                )),
        );
    }
    router
        .route("/openapi.json", get(openapi_json))
        .route("/", get(web::index))
        .route("/docs", get(web::docs))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/assets/docs.js", get(web::docs_js))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(security_headers())
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            state.config.body_timeout_s,
        )))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

/// Headers every response carries (a handler's own win): no MIME sniffing, no referrer
/// leaving the site, no framing, and for anything that is not a page a CSP that allows nothing
/// (an API answer opened in a browser runs no script). No CORS headers: other origins'
/// scripts cannot read the API.
fn security_headers() -> tower::layer::util::Stack<
    SetResponseHeaderLayer<HeaderValue>,
    tower::layer::util::Stack<
        SetResponseHeaderLayer<HeaderValue>,
        SetResponseHeaderLayer<HeaderValue>,
    >,
> {
    tower::layer::util::Stack::new(
        SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ),
        tower::layer::util::Stack::new(
            SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            SetResponseHeaderLayer::overriding(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ),
    )
}

/// Refuses a body whose declared `Content-Length` is over `limit` before reading any of it
/// (the body limit alone reads up to the limit first: issue 20).
async fn declared_length(req: Request, next: Next, limit: usize) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            axum::response::IntoResponse::into_response(ApiError::payload_too_large(limit))
        }
        _ => next.run(req).await,
    }
}

/// One log line and the request metrics per request.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let secs = started.elapsed().as_secs_f64();
    let status = resp.status();
    // Labels come from bounded sets only (a client's own method string would add a series
    // per request: issue 20).
    state.metrics.inc(
        metrics::HTTP_REQUESTS,
        &[
            ("route", &route),
            ("method", metrics::method_label(&method)),
            ("status", status.as_str()),
        ],
    );
    state
        .metrics
        .observe(metrics::HTTP_SECONDS, &[("route", &route)], secs);
    if route != "/healthz" && route != "/metrics" {
        tracing::info!(
            method = %metrics::method_label(&method),
            path = %path,
            status = status.as_u16(),
            ms = (secs * 1000.0).round() as u64,
            "request"
        );
    }
    resp
}

/// Runs the platform until Ctrl-C / SIGTERM: the HTTP server and the in-process workers.
/// On shutdown, requests in flight finish and running jobs are checkpointed and handed back
/// to the queue (they continue on the next start).
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let addr = format!("{}:{}", state.config.host, state.config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    serve_on(listener, state).await
}

/// [`serve`] on an already bound listener (tests bind port 0).
pub async fn serve_on(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    state.platform.recover().await;
    let workers = atelier_jobs::worker::spawn(std::sync::Arc::new(state.worker_context()));
    let addr = listener.local_addr()?;
    tracing::info!(
        "listening on http://{addr} ({})",
        if state.config.is_open() {
            "open: key-less requests act as `local`"
        } else {
            "API keys required"
        }
    );
    eprintln!("atelier: listening on http://{addr}");
    let platform = state.platform.clone();
    let result = accept_loop(listener, state).await;
    // Workers checkpoint and hand back their jobs; give training a while to finish its step.
    let wait = async {
        for w in workers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within 120 s; their jobs continue on the next start");
    }
    platform.close().await;
    eprintln!("atelier: stopped");
    result
}

/// Accepts connections until a shutdown signal (or `state.shutdown`), then lets requests in
/// flight finish (30 s at most). Each connection is HTTP/1.1 with a header read timeout; at most
/// `max_connections` are open, further clients wait in the listen backlog.
async fn accept_loop(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let config = state.config.clone();
    let stop = state.shutdown.clone();
    let mut stopped = stop.subscribe();
    let service = app(state).into_service();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let until_stop = async {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::pin!(until_stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = &mut signal => break,
            _ = &mut until_stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
            _ = &mut until_stop => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(config.header_timeout_s))
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
            drop(slot);
        });
    }
    stop.send_replace(true);
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s were closed");
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
    eprintln!("atelier: shutting down: finishing requests, checkpointing running jobs");
}

/// Runs this process's job workers without HTTP until Ctrl-C / SIGTERM (`atelier worker`):
/// running jobs are checkpointed and handed back to the queue on the way out.
pub async fn work(platform: atelier_jobs::Platform) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handles = atelier_jobs::worker::spawn(std::sync::Arc::new(platform.worker_context(rx)));
    shutdown_signal().await;
    let _ = tx.send(true);
    let wait = async {
        for h in handles {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .is_err()
    {
        tracing::warn!(
            "workers did not stop within 120 s; their leases run out and another worker continues"
        );
    }
    platform.close().await;
    eprintln!("atelier: worker stopped");
}
