//! The API through `tower::ServiceExt::oneshot` (and one test on a real socket): health,
//! model list, stylization, limits, overload and the error codes.

use atelier_imaging::{encode, Format, Image};
use atelier_nets::arch::Arch;
use atelier_nets::resnet::ResnetConfig;
use atelier_nets::{ModelCard, Network, Storage};
use atelier_server::{app, AppState, ServerConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A models folder with one small random-weight ResNet generator called `tiny`.
fn models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let arch = Arch::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        ..ResnetConfig::default()
    });
    let map = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(
        &map,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    Network::new(arch, vb).unwrap();
    let tensors = atelier_nets::file::tensors_of(&map).unwrap();
    let mut card = ModelCard::new("tiny", arch);
    card.description = "test model".into();
    atelier_nets::save(
        &dir.path().join("tiny.safetensors"),
        &card,
        &tensors,
        Storage::F32,
    )
    .unwrap();
    dir
}

fn state(models: &std::path::Path) -> AppState {
    AppState::new(ServerConfig {
        models_dir: models.to_path_buf(),
        max_body_bytes: 1 << 20,
        ..ServerConfig::default()
    })
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    encode(&Image::from_rgb8(w, h, &px).unwrap(), Format::Png, 0).unwrap()
}

async fn call(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri).body(Body::from(body)).unwrap()
}

fn code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn health_ready_and_model_list() {
    let empty = tempfile::tempdir().unwrap();
    let (s, _, _) = call(
        &state(empty.path()),
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = call(
        &state(empty.path()),
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_models")
    );
    let dir = models();
    let st = state(dir.path());
    let (s, _, _) = call(&st, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = call(&st, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["models"][0]["name"], "tiny");
    assert_eq!(v["models"][0]["arch"], "resnet_1blocks");
    let (s, _, b) = call(&st, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn stylize_returns_an_image_of_the_same_size() {
    let dir = models();
    let st = state(dir.path());
    let (s, h, b) = call(&st, post("/v1/stylize?model=tiny", png(37, 21))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "image/png");
    let img = atelier_imaging::decode(&b, &Default::default()).unwrap();
    assert_eq!((img.width, img.height), (37, 21));
    // Other format, downscaling, and strength 0 = the (resized) original.
    let (s, h, b) = call(
        &st,
        post(
            "/v1/stylize?model=tiny&format=webp&max_side=16&strength=0",
            png(32, 32),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "image/webp");
    let out = atelier_imaging::decode(&b, &Default::default()).unwrap();
    assert_eq!((out.width, out.height), (16, 16));
    let src = atelier_imaging::decode(&png(32, 32), &Default::default()).unwrap();
    let expect = atelier_imaging::resize(&src, 16, 16);
    let p = atelier_imaging::psnr(&out.rgb, &expect.rgb, 2.0);
    assert!(p > 45.0, "{p}");
}

/// PNG's CRC-32 (over a chunk's type and data).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[tokio::test]
async fn bad_requests_get_stable_codes() {
    let dir = models();
    let st = state(dir.path());
    // A PNG header declaring 20000×20000: rejected from the header, nothing decoded.
    let mut bomb = png(1, 1);
    bomb[16..20].copy_from_slice(&20000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let cases: Vec<(String, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/v1/stylize?model=nope".into(),
            png(8, 8),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "/v1/stylize?model=../tiny".into(),
            png(8, 8),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "/v1/stylize".into(),
            png(8, 8),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_image",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            b"GIF89a....".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image_format",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            b"hello, not an image".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image_format",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            png(8, 8)[..40].to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            bomb,
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
        ),
        (
            "/v1/stylize?model=tiny".into(),
            vec![0u8; 2 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "/v1/stylize?model=tiny&strength=2".into(),
            png(8, 8),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/stylize?model=tiny&format=gif".into(),
            png(8, 8),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (uri, body, status, expected) in cases {
        let (s, h, b) = call(&st, post(&uri, body)).await;
        assert_eq!((s, code(&b).as_str()), (status, expected), "{uri}");
        assert_eq!(h["content-type"], "application/json");
        let msg = String::from_utf8_lossy(&b);
        assert!(
            !msg.contains("/tmp") && !msg.contains("candle"),
            "{uri}: leaks internals: {msg}"
        );
    }
}

#[tokio::test]
async fn overload_answers_429_with_retry_after() {
    let dir = models();
    let st = state(dir.path());
    let _busy = st.permits.clone().try_acquire_owned().unwrap();
    let (s, h, b) = call(&st, post("/v1/stylize?model=tiny", png(8, 8))).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "overloaded")
    );
    assert_eq!(h["retry-after"], "2");
    drop(_busy);
    let (s, _, _) = call(&st, post("/v1/stylize?model=tiny", png(8, 8))).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = models();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(atelier_server::serve_on(listener, state(dir.path())));
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("ok"), "{resp}");
}
