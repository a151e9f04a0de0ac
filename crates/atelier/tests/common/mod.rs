//! The real binary on real sockets: start `atelier serve` (and `atelier worker`) processes,
//! talk HTTP/1.1 to them, kill them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn atelier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atelier"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub child: Child,
    pub client: Client,
}

/// Requests to a server's port (usable from another thread while the server is killed).
#[derive(Clone, Copy)]
pub struct Client {
    pub port: u16,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Starts a server and waits until it is ready (`/readyz`: the built-in models loaded).
pub fn start(data: &Path, port: u16, extra: &[&str]) -> Server {
    start_until(data, port, extra, "/readyz")
}

/// Starts a server and waits only until it answers (`/healthz`), e.g. to watch its jobs while
/// it is still loading the built-in models.
pub fn start_live(data: &Path, port: u16, extra: &[&str]) -> Server {
    start_until(data, port, extra, "/healthz")
}

fn start_until(data: &Path, port: u16, extra: &[&str], probe: &str) -> Server {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let child = atelier()
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(data)
        .args(extra)
        .env("ATELIER_MODELS", data.with_extension("no-models"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let s = Server {
        child,
        client: Client { port },
    };
    let t0 = Instant::now();
    while s.request("GET", probe, None, &[]).map(|r| r.0) != Some(200) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

impl Client {
    /// One HTTP/1.1 request (Connection: close); `None` if nothing answers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Option<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&resp[..split]).to_string();
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let mut body = resp[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Some((status, body))
    }

    pub fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|v| v.to_string()).unwrap_or_default();
        let ct = (!b.is_empty()).then_some("application/json");
        let (s, r) = self
            .request(method, path, ct, b.as_bytes())
            .expect("no answer");
        (s, serde_json::from_slice(&r).unwrap_or(Value::Null))
    }

    pub fn multipart(&self, path: &str, parts: &[(&str, Option<&str>, Vec<u8>)]) -> (u16, Value) {
        self.try_multipart(path, parts).expect("no answer")
    }

    /// [`Client::multipart`], `None` if the server did not answer (it was killed).
    pub fn try_multipart(
        &self,
        path: &str,
        parts: &[(&str, Option<&str>, Vec<u8>)],
    ) -> Option<(u16, Value)> {
        let boundary = "serve-test-boundary";
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let disp = match file {
                Some(f) => format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\r\n"
                ),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
            };
            body.extend_from_slice(disp.as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        let (s, r) = self.request("POST", path, Some(&ct), &body)?;
        Some((s, serde_json::from_slice(&r).unwrap_or(Value::Null)))
    }

    pub fn job(&self, id: &str) -> Value {
        let (s, j) = self.json("GET", &format!("/v1/jobs/{id}"), None);
        assert_eq!(s, 200, "{j}");
        j
    }

    pub fn wait(&self, id: &str, what: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let j = self.job(id);
            if done(&j) {
                return j;
            }
            assert!(
                t0.elapsed().as_secs() < secs,
                "{what}: not within {secs} s: {j}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Server {
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit status and how long it took.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        (status, t0.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 4 + n..];
    }
}

pub fn png(w: u32, h: u32, rgb: [u8; 3], seed: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for i in 0..w * h {
        for (c, v) in rgb.iter().enumerate() {
            let n = (i
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 131 + c as u32)
                >> 26) as u8;
            px.push(v.saturating_add(n));
        }
    }
    let img = atelier_imaging::Image::from_rgb8(w, h, &px).unwrap();
    atelier_imaging::encode(&img, atelier_imaging::Format::Png, 0).unwrap()
}

/// Uploads a small unpaired dataset (4 reddish images in A, 4 bluish in B) through `s`;
/// returns its id.
pub fn dataset(s: &Server) -> String {
    let mut parts = Vec::new();
    for i in 0..4 {
        parts.push((
            "a",
            Some(format!("r{i}.png")),
            png(40, 40, [210, 40, 40], i),
        ));
        parts.push((
            "b",
            Some(format!("b{i}.png")),
            png(40, 40, [40, 40, 210], i),
        ));
    }
    let parts: Vec<(&str, Option<&str>, Vec<u8>)> = parts
        .iter()
        .map(|(n, f, d)| (*n, f.as_deref(), d.clone()))
        .collect();
    let (st, d) = s.multipart("/v1/datasets?name=rb", &parts);
    assert_eq!(st, 201, "{d}");
    d["id"].as_str().unwrap().to_string()
}
