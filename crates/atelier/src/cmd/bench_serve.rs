//! `atelier bench --serve`: the server as users meet it. This binary's `atelier serve` runs on
//! a fresh data folder and a free port (default settings: one image at a time, a short
//! queue); clients send a JPEG to `POST /v1/stylize` back to back over keep-alive
//! connections, and the rows give images per second beside the raw model's (one forward pass
//! after another, in-process), the answers other than 200, and the latency of the first
//! request after a restart against warm ones.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::{BenchArgs, Global};

/// Clients sending at once, for `seconds`.
#[derive(Debug, Serialize)]
pub struct ServeRow {
    pub model: String,
    pub size: u32,
    pub clients: usize,
    pub seconds: f64,
    pub images: usize,
    pub images_per_s: f64,
    /// One forward pass after another, in-process, same model and size.
    pub raw_images_per_s: f64,
    pub fraction_of_raw: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers `429 overloaded`, and anything else that was not 200.
    pub overloaded: usize,
    pub other_errors: usize,
}

/// The first request to a restarted server against the warm ones after it.
#[derive(Debug, Serialize)]
pub struct ColdStart {
    pub model: String,
    pub size: u32,
    /// From `atelier serve` starting to `/readyz` answering 200.
    pub ready_after_ms: f64,
    pub first_ms: f64,
    pub warm_median_ms: f64,
    pub ratio: f64,
}

/// A running `atelier serve`, stopped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// Starts the server on `data` and waits until `/readyz` says ready; the time that took.
fn start(global: &Global, data: &Path, models: &Path) -> anyhow::Result<(Server, f64)> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let port = free_port()?;
    let started = Instant::now();
    let child = Command::new(exe)
        .arg("--models-dir")
        .arg(models)
        .arg("--max-pixels")
        .arg(global.max_pixels.to_string())
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting atelier serve")?;
    let server = Server { child, port };
    let agent = agent();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if agent.get(&url).call().is_ok_and(|r| r.status() == 200) {
            return Ok((server, started.elapsed().as_secs_f64() * 1e3));
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("atelier serve was not ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `POST /v1/stylize`: its status and how long it took.
fn stylize(agent: &ureq::Agent, port: u16, model: &str, jpeg: &[u8]) -> anyhow::Result<(u16, f64)> {
    let t = Instant::now();
    let mut r = agent
        .post(format!("http://127.0.0.1:{port}/v1/stylize?model={model}"))
        .header("content-type", "image/jpeg")
        .send(jpeg)?;
    r.body_mut().with_config().limit(256 << 20).read_to_vec()?;
    Ok((r.status().as_u16(), t.elapsed().as_secs_f64() * 1e3))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The model as the server knows it: a built-in's name, or a file copied into `models` under
/// its stem.
fn install(global: &Global, model: &str, models: &Path) -> anyhow::Result<String> {
    match global.model_source(model)? {
        super::ModelSource::Builtin(name, _) => Ok(name.to_string()),
        super::ModelSource::File(path) => {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("model file name")?
                .to_string();
            std::fs::copy(&path, models.join(format!("{stem}.safetensors")))?;
            Ok(stem)
        }
    }
}

pub fn serve_rows(
    global: &Global,
    args: &BenchArgs,
    model: &str,
    raw_ms: f64,
) -> anyhow::Result<(Vec<ServeRow>, Option<ColdStart>)> {
    let dir = tempfile::tempdir()?;
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    std::fs::create_dir_all(&models)?;
    let name = install(global, model, &models)?;
    let size = args.serve_size;
    let jpeg = super::bench_product::photo_jpeg(size)?;
    eprintln!(
        "bench: `atelier serve` with `{name}`, {size}² JPEG, clients {:?} for {} s each",
        args.serve_clients, args.serve_seconds
    );

    // A first start makes the gallery thumbnails; the restart is what is measured.
    let (server, _) = start(global, &data, &models)?;
    stylize(&agent(), server.port, &name, &jpeg)?;
    drop(server);
    let (server, ready_after_ms) = start(global, &data, &models)?;
    let a = agent();
    let (status, first_ms) = stylize(&a, server.port, &name, &jpeg)?;
    if status != 200 {
        bail!("the first request answered {status}");
    }
    let mut warm = Vec::new();
    for _ in 0..args.repeat.max(3) {
        warm.push(stylize(&a, server.port, &name, &jpeg)?.1);
    }
    let warm_median_ms = super::bench::median(&mut warm);
    let cold = ColdStart {
        model: name.clone(),
        size,
        ready_after_ms,
        first_ms,
        warm_median_ms,
        ratio: first_ms / warm_median_ms,
    };
    eprintln!(
        "  restart: ready after {ready_after_ms:.0} ms, first request {first_ms:.0} ms, warm \
         {warm_median_ms:.0} ms ({:.2}×)",
        cold.ratio
    );

    let mut rows = Vec::new();
    for &clients in &args.serve_clients {
        let stop = Arc::new(AtomicBool::new(false));
        let jpeg = Arc::new(jpeg.clone());
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (stop, jpeg, name, port) =
                    (stop.clone(), jpeg.clone(), name.clone(), server.port);
                std::thread::spawn(move || -> anyhow::Result<Vec<(u16, f64, f64)>> {
                    let a = agent();
                    let mut out = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let (status, ms) = stylize(&a, port, &name, &jpeg)?;
                        out.push((status, ms, started.elapsed().as_secs_f64()));
                        if status == 429 {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(args.serve_seconds));
        stop.store(true, Ordering::SeqCst);
        let window = started.elapsed().as_secs_f64();
        let mut answers = Vec::new();
        for h in handles {
            answers.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        // Images completed within the window (requests in flight at its end finish after).
        let done: Vec<&(u16, f64, f64)> = answers
            .iter()
            .filter(|a| a.0 == 200 && a.2 <= window)
            .collect();
        let mut lat: Vec<f64> = done.iter().map(|a| a.1).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let images_per_s = done.len() as f64 / window;
        let raw_images_per_s = 1e3 / raw_ms;
        let row = ServeRow {
            model: name.clone(),
            size,
            clients,
            seconds: window,
            images: done.len(),
            images_per_s,
            raw_images_per_s,
            fraction_of_raw: images_per_s / raw_images_per_s,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            overloaded: answers.iter().filter(|a| a.0 == 429).count(),
            other_errors: answers.iter().filter(|a| a.0 != 200 && a.0 != 429).count(),
        };
        eprintln!(
            "  {clients} clients: {:.2} images/s ({:.0} % of raw {:.2}), p50 {:.0} ms, p99 {:.0} \
             ms, {} × 429, {} other errors",
            row.images_per_s,
            row.fraction_of_raw * 100.0,
            row.raw_images_per_s,
            row.p50_ms,
            row.p99_ms,
            row.overloaded,
            row.other_errors
        );
        rows.push(row);
    }
    Ok((rows, Some(cold)))
}

/// The serve table in Markdown.
pub fn print(rows: &[ServeRow], cold: Option<&ColdStart>) {
    if let Some(c) = cold {
        println!(
            "\nrestarted server, `{}` at {}²: ready after {:.0} ms; first request {:.0} ms, warm \
             median {:.0} ms: {:.2}×",
            c.model, c.size, c.ready_after_ms, c.first_ms, c.warm_median_ms, c.ratio
        );
    }
    if rows.is_empty() {
        return;
    }
    println!(
        "\n| server | clients | images/s | raw model images/s | of raw | p50 ms | p99 ms | 429 | \
         other errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} {}² | {} | {:.2} | {:.2} | {:.0} % | {:.0} | {:.0} | {} | {} |",
            r.model,
            r.size,
            r.clients,
            r.images_per_s,
            r.raw_images_per_s,
            r.fraction_of_raw * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.overloaded,
            r.other_errors
        );
    }
}
