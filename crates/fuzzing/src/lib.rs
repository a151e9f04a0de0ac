//! The fuzz targets. Each function takes the fuzzer's bytes, drives one parser of untrusted
//! input the way the platform does, and panics only on a bug (a crash, an accepted input that
//! breaks an invariant). libFuzzer runs them from `fuzz/` (`cargo +nightly fuzz run NAME`);
//! `cargo test -p atelier-fuzzing` replays the committed corpora and regressions through them.
//!
//! | target | what it drives |
//! |---|---|
//! | `image` | image probing and decoding with limits (`atelier_imaging::probe`, `decode`) |
//! | `dataset_zip` | a dataset upload (`Ingest::add_file`: zip reader and image checks) |
//! | `model_file` | an uploaded model file (`validate_model_file`: safetensors, card, shapes) |
//! | `model_card` | a model card's JSON and its architecture check, alone |
//! | `pth_import` | the PyTorch checkpoint importer (zip + pickle) |
//! | `stylize_request` | `POST /v1/stylize` through the router: query, content type, multipart, image, model |
//! | `stylize_form` | the same request's parsing alone (`read_stylize_form`: query, multipart, options) |

use std::sync::OnceLock;

use atelier_imaging::Limits;

/// A fuzz target: the fuzzer's bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and the corpus folders).
pub const TARGETS: [(&str, Target); 7] = [
    ("image", image),
    ("dataset_zip", dataset_zip),
    ("model_file", model_file),
    ("model_card", model_card),
    ("pth_import", pth_import),
    ("stylize_request", stylize_request),
    ("stylize_form", stylize_form),
];

/// Limits small enough to keep every execution fast (the limits themselves are under test:
/// an image over them must be refused before decoding).
const LIMITS: Limits = Limits {
    max_pixels: 1 << 20,
    max_side: 2048,
    max_bytes: 1 << 20,
};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Probing and decoding: a decoded image has the probed size, within the limits.
pub fn image(data: &[u8]) {
    let probed = atelier_imaging::probe(data, &LIMITS);
    if let Ok(img) = atelier_imaging::decode(data, &LIMITS) {
        let (_, w, h) = probed.expect("decoded an image that did not probe");
        assert_eq!(
            (img.width, img.height),
            (w, h),
            "decoded size differs from the probe"
        );
        assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
        assert_eq!(img.rgb.len(), (w * h * 3) as usize);
    }
}

/// A dataset upload of one file (image or zip) into an in-memory blob store.
pub fn dataset_zip(data: &[u8]) {
    let blobs = atelier_store::Blobs::from_store(std::sync::Arc::new(
        object_store::memory::InMemory::new(),
    ));
    let limits = atelier_jobs::datasets::IngestLimits {
        max_images: 64,
        max_image_bytes: 1 << 20,
        image: LIMITS,
        max_archive_entries: 256,
    };
    runtime().block_on(async {
        let mut ing = atelier_jobs::datasets::Ingest::new(&blobs, "d_fuzz", 'a', 0, limits)
            .await
            .expect("an empty in-memory dataset");
        let _ = ing
            .add_file("upload.zip", bytes::Bytes::copy_from_slice(data))
            .await;
        let stored = blobs.list("datasets/d_fuzz/a").await.expect("list");
        assert_eq!(
            stored.len(),
            ing.out.added,
            "stored and counted images differ"
        );
        assert!(ing.out.added <= limits.max_images);
    });
}

/// An uploaded model file, validated as the catalog does before storing it.
pub fn model_file(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let checked = runtime().block_on(atelier_jobs::catalog::validate_model_file(bytes));
    if let Ok(card) = checked {
        // What was accepted has a bounded architecture.
        card.arch
            .check()
            .expect("accepted a card that fails its check");
    }
}

/// A model card's JSON: parsing, the architecture's bounds, and counting its parameters
/// (allocation-free).
pub fn model_card(data: &[u8]) {
    let Ok(card) = serde_json::from_slice::<atelier_nets::ModelCard>(data) else {
        return;
    };
    if card.arch.check().is_ok() {
        let n = card
            .arch
            .parameter_count()
            .expect("a checked architecture has a parameter count");
        assert!(n as u64 <= atelier_nets::arch::MAX_PARAMETERS);
    }
}

/// A PyTorch checkpoint (torch.save zip with a pickle, or a safetensors state dict).
pub fn pth_import(data: &[u8]) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a temporary folder")
    });
    let path = dir.path().join("fuzz.pth");
    std::fs::write(&path, data).expect("write the input");
    if let Ok(imported) = atelier_nets::import::import(&path, &Default::default()) {
        imported
            .arch
            .check()
            .expect("imported an unbounded architecture");
    }
}

/// The server of [`stylize_request`]: a fresh data folder with one tiny model, `tiny`.
/// The fuzzer's bytes as a `POST /v1/stylize` request: the query string, a newline, the
/// content type, a newline, the body (the seeds of both stylize targets have this layout).
fn stylize_http_request(data: &[u8]) -> Option<axum::http::Request<axum::body::Body>> {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let query = lines.next().unwrap_or_default();
    let ctype = lines.next().unwrap_or_default();
    let body = lines.next().unwrap_or_default().to_vec();
    let uri = format!(
        "/v1/stylize?{}",
        String::from_utf8_lossy(query).replace(['#', ' '], "")
    );
    axum::http::Request::post(uri)
        .header("content-type", ctype)
        .body(axum::body::Body::from(body))
        .ok()
}

/// The parsing of a `POST /v1/stylize` request alone, as the handler does it before it asks the
/// catalog for the model: the query string, the raw or multipart body and the options (then the
/// options' own check). Cheap per execution, so it reaches millions of runs where
/// `stylize_request` (a whole request through the router, the model included) reaches thousands.
pub fn stylize_form(data: &[u8]) {
    use axum::extract::Query;
    let Some(req) = stylize_http_request(data) else {
        return;
    };
    let state = &server().0;
    let q = Query::<atelier_server::StylizeQuery>::try_from_uri(req.uri());
    let limit = state.config.max_body_bytes;
    match runtime().block_on(atelier_server::read_stylize_form(state, q, req)) {
        Ok(form) => {
            assert!(
                form.image.len() <= limit,
                "an image part over the body limit"
            );
            // The options' own check (strength, quality, side) must answer, not panic.
            if form.request.validate().is_ok() {
                assert!((0.0..=1.0).contains(&form.request.strength));
            }
        }
        Err(e) => {
            let status = e.status.as_u16();
            assert!(
                matches!(status, 400 | 408 | 413 | 415 | 422),
                "undocumented status {status} ({})",
                e.message
            );
            assert!(!e.message.is_empty(), "an error without a message");
        }
    }
}

fn server() -> &'static (atelier_server::AppState, tempfile::TempDir) {
    static S: OnceLock<(atelier_server::AppState, tempfile::TempDir)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).expect("models folder");
        std::fs::write(models.join("tiny.safetensors"), tiny_model()).expect("tiny model");
        let config = atelier_server::ServerConfig {
            data_dir: dir.path().join("data"),
            models_dir: Some(models),
            max_body_bytes: 1 << 20,
            max_upload_bytes: 1 << 20,
            // Small images only: every accepted request runs the decoder, the model and the
            // encoder, all instrumented for coverage, and at 64K pixels those made the target
            // ~700 executions/s. The decoders' handling of large and hostile images is the
            // `image` target's (1 MP).
            max_pixels: 1 << 12,
            max_image_side: 256,
            max_output_side: 32,
            max_concurrent: 4,
            // fp32 kernels: `auto` measures each style's int8 and bf16 kernels against fp32
            // when it loads (17 s for a full-size style under the sanitizer), which is a
            // property of the model, not of the request; those kernels have golden tests.
            precision: "f32".into(),
            rate_limit_per_minute: u32::MAX,
            ..Default::default()
        };
        let state = runtime()
            .block_on(atelier_server::AppState::open(config))
            .expect("a server");
        (state, dir)
    })
}

/// A random-weight ResNet generator (ngf 4, one block) as model-file bytes.
pub fn tiny_model() -> Vec<u8> {
    use atelier_nets::arch::Arch;
    use atelier_nets::resnet::ResnetConfig;
    let arch = Arch::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        ..ResnetConfig::default()
    });
    let shapes = arch.expected_shapes().expect("shapes");
    let tensors = shapes
        .into_iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 17) as f32 / 170.0 - 0.05)
                .collect();
            let t = candle_core::Tensor::from_vec(v, s, &candle_core::Device::Cpu).expect("tensor");
            (k, t)
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tiny.safetensors");
    let card = atelier_nets::ModelCard::new("tiny", arch);
    atelier_nets::save(&path, &card, &tensors, atelier_nets::Storage::F32).expect("save");
    std::fs::read(path).expect("read")
}

/// The router `stylize_request` drives, built once as the server does (a clone shares its
/// routes), over a server whose built-in styles are loaded.
fn router() -> &'static axum::Router {
    static APP: OnceLock<axum::Router> = OnceLock::new();
    APP.get_or_init(|| {
        let state = &server().0;
        // Load the styles now, as `atelier serve` does at start (`warm_builtins`, less the
        // gallery's thumbnails): the first request for one otherwise loads it under the
        // sanitizer (4.8 s for monet), a timeout that says nothing about the input.
        let catalog = state.platform.catalog();
        for b in catalog.builtins() {
            let m = atelier_jobs::ModelRef::Builtin(b.clone());
            if let Err(e) = runtime().block_on(catalog.stylizer(&m)) {
                panic!("loading the built-in `{}`: {e}", m.name());
            }
        }
        atelier_server::app(state.clone())
    })
}

/// Starts the server `stylize_request` sends its requests to, its styles loaded: the fuzz
/// target calls it before the first input (libFuzzer does not time that), so no input pays
/// for the start.
pub fn init_stylize_request() {
    router();
}

/// Starts the server whose settings `stylize_form` parses against (before the first input,
/// as [`init_stylize_request`]).
pub fn init_stylize_form() {
    server();
}

/// `POST /v1/stylize?<line 1>` with `Content-Type: <line 2>` and the rest as the body,
/// through the real router: every answer is a documented status with a JSON error body or
/// an image.
pub fn stylize_request(data: &[u8]) {
    use tower::ServiceExt;
    let Some(req) = stylize_http_request(data) else {
        return;
    };
    let resp = runtime()
        .block_on(router().clone().oneshot(req))
        .expect("the router is infallible");
    let status = resp.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 404 | 413 | 415 | 422 | 429),
        "undocumented status {status}"
    );
}
