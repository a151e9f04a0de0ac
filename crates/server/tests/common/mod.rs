//! Helpers shared by the server's integration tests: a harness on a fresh data directory,
//! requests through `oneshot`, and test images, zips and model files.
#![allow(dead_code, unused_imports)]

pub use std::time::Duration;

pub use atelier_imaging::{encode, Format, Image};
pub use atelier_nets::arch::Arch;
pub use atelier_nets::resnet::ResnetConfig;
pub use atelier_nets::{ModelCard, Network, Storage};
pub use atelier_server::{app, AppState, ServerConfig};
pub use axum::body::Body;
pub use axum::http::{Request, StatusCode};
pub use http_body_util::BodyExt;
pub use serde_json::{json, Value};
pub use tower::ServiceExt;

/// A small random-weight ResNet generator as model-file bytes.
pub fn tiny_model_bytes(name: &str) -> Vec<u8> {
    model_bytes(name, 4, 1)
}

/// A random-weight ResNet generator of width `ngf` with `n_blocks` blocks as model-file bytes.
pub fn model_bytes(name: &str, ngf: usize, n_blocks: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let arch = Arch::Resnet(ResnetConfig {
        ngf,
        n_blocks,
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
    let mut card = ModelCard::new(name, arch);
    card.description = "test model".into();
    let path = dir.path().join("m.safetensors");
    atelier_nets::save(&path, &card, &tensors, Storage::F32).unwrap();
    std::fs::read(path).unwrap()
}

/// Whether this run drives the API on PostgreSQL (`ATELIER_TEST_API_DATABASE=postgres`, with
/// `ATELIER_TEST_POSTGRES` from `scripts/services.sh`) instead of the embedded SQLite.
pub fn api_on_postgres() -> bool {
    std::env::var("ATELIER_TEST_API_DATABASE").as_deref() == Ok("postgres")
}

/// Whether this run keeps the API's blobs in S3 (`ATELIER_TEST_API_BLOBS=s3`, with
/// `ATELIER_TEST_S3` and the `AWS_*` variables from `scripts/services.sh`).
pub fn api_on_s3() -> bool {
    std::env::var("ATELIER_TEST_API_BLOBS").as_deref() == Ok("s3")
}

/// A new, empty database on the test PostgreSQL server; its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = std::env::var("ATELIER_TEST_POSTGRES").expect(
        "ATELIER_TEST_API_DATABASE=postgres needs ATELIER_TEST_POSTGRES (scripts/services.sh)",
    );
    atelier_store::db::Db::create_postgres_database(&admin, "api_")
        .await
        .expect("creating a database on ATELIER_TEST_POSTGRES")
}

pub struct Harness {
    pub st: AppState,
    pub _dir: tempfile::TempDir,
}

/// A server on a fresh data directory whose models folder holds `tiny`.
pub async fn harness(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
    // Server-side errors (the detail behind an "internal" answer) in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("tiny.safetensors"), tiny_model_bytes("tiny")).unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().join("data"),
        models_dir: Some(models),
        max_body_bytes: 1 << 20,
        max_upload_bytes: 4 << 20,
        ..ServerConfig::default()
    };
    config.worker.heartbeat_s = 1;
    config.worker.lease_s = 5;
    if api_on_postgres() {
        config.database = Some(fresh_postgres_database().await);
    }
    if api_on_s3() {
        let s3 = std::env::var("ATELIER_TEST_S3")
            .expect("ATELIER_TEST_API_BLOBS=s3 needs ATELIER_TEST_S3 (scripts/services.sh)");
        config.blobs = Some(format!("{s3}/{}", atelier_store::db::new_id("api", 10)));
    }
    tweak(&mut config);
    Harness {
        st: AppState::open(config).await.unwrap(),
        _dir: dir,
    }
}

/// One request through the router of `st` (for tasks that hold a clone of the state): status,
/// headers and the whole body.
pub async fn send(
    st: AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(st).oneshot(req).await.unwrap();
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

impl Harness {
    pub async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        send(self.st.clone(), req).await
    }

    pub async fn get(&self, uri: &str, key: Option<&str>) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .call(
                with_key(Request::get(uri), key)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        (s, b)
    }

    pub async fn json(&self, uri: &str, key: Option<&str>) -> Value {
        let (s, b) = self.get(uri, key).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }

    pub async fn post(&self, uri: &str, key: Option<&str>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .call(
                with_key(Request::post(uri), key)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        (s, b)
    }

    pub async fn post_json(&self, uri: &str, key: Option<&str>, v: Value) -> (StatusCode, Value) {
        let req = with_key(Request::post(uri), key)
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap();
        let (s, _, b) = self.call(req).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub async fn post_multipart(
        &self,
        uri: &str,
        key: Option<&str>,
        parts: &[(&str, Option<&str>, Vec<u8>)],
    ) -> (StatusCode, Value) {
        let (ct, body) = multipart(parts);
        let req = with_key(Request::post(uri), key)
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        let (s, _, b) = self.call(req).await;
        (
            s,
            serde_json::from_slice(&b)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&b)})),
        )
    }

    pub async fn delete(&self, uri: &str, key: Option<&str>) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .call(
                with_key(Request::delete(uri), key)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        (s, b)
    }

    /// Runs the in-process workers until the returned guard is dropped.
    pub fn workers(&self) -> StopOnDrop {
        atelier_jobs::worker::spawn(std::sync::Arc::new(self.st.worker_context()));
        StopOnDrop(self.st.shutdown.clone())
    }

    pub async fn wait_job(&self, id: &str, key: Option<&str>, secs: u64) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let j = self.json(&format!("/v1/jobs/{id}"), key).await;
            let s = j["status"].as_str().unwrap().to_string();
            if !matches!(s.as_str(), "queued" | "running") {
                return j;
            }
            assert!(
                t0.elapsed().as_secs() < secs,
                "job {id} still {s} after {secs} s: {j}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub struct StopOnDrop(pub std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

pub fn with_key(
    b: axum::http::request::Builder,
    key: Option<&str>,
) -> axum::http::request::Builder {
    match key {
        Some(k) => b.header("authorization", format!("Bearer {k}")),
        None => b,
    }
}

pub fn multipart(parts: &[(&str, Option<&str>, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "atelier-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    encode(&Image::from_rgb8(w, h, &px).unwrap(), Format::Png, 0).unwrap()
}

/// A solid-colour image with a little noise.
pub fn colour_png(w: u32, h: u32, rgb: [u8; 3], seed: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for i in 0..w * h {
        for (c, v) in rgb.iter().enumerate() {
            let n = ((i
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 97 + c as u32))
                >> 27) as u8;
            px.push(v.saturating_add(n));
        }
    }
    encode(&Image::from_rgb8(w, h, &px).unwrap(), Format::Png, 0).unwrap()
}

pub fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap().to_string()
}

/// PNG's CRC-32 (over a chunk's type and data).
pub fn crc32(data: &[u8]) -> u32 {
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

/// A PNG whose header declares 20000×20000: rejected from the header, nothing decoded.
pub fn bomb() -> Vec<u8> {
    let mut bomb = png(1, 1);
    bomb[16..20].copy_from_slice(&20000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

pub async fn key(h: &Harness, owner: &str) -> String {
    h.st.platform.create_key(owner, "test").await.unwrap()
}
