//! Scale-out under faults (issue 21): PostgreSQL + SeaweedFS (S3), two API nodes started with
//! `serve --workers 0` and three `atelier worker` processes, all real processes on real
//! sockets. Two trainings and thirty stylize jobs go in through alternating API nodes; the
//! worker running a training is killed with SIGKILL after its first checkpoint, one API node is
//! killed with SIGKILL, and PostgreSQL restarts once mid-run. Every job must finish exactly
//! once, the killed training must continue on another worker from its checkpoint in S3, and a
//! client must see the job's events through the surviving API node.
//!
//! Needs `ATELIER_TEST_POSTGRES`, `ATELIER_TEST_PG_RESTART` and `ATELIER_TEST_S3` (+ `AWS_*`)
//! from `scripts/services.sh`; skipped without them unless `ATELIER_REQUIRE_SERVERS` is set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Servers {
    postgres: String,
    restart: String,
    s3: String,
}

fn servers() -> Option<Servers> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("ATELIER_TEST_POSTGRES"),
        get("ATELIER_TEST_PG_RESTART"),
        get("ATELIER_TEST_S3"),
    ) {
        (Some(postgres), Some(restart), Some(s3)) => Some(Servers {
            postgres,
            restart,
            s3,
        }),
        _ => {
            assert!(
                std::env::var_os("ATELIER_REQUIRE_SERVERS").is_none(),
                "ATELIER_REQUIRE_SERVERS is set but PostgreSQL/S3 are not: run it under \
                 `source scripts/services.sh && start_postgres && start_s3`"
            );
            eprintln!("no ATELIER_TEST_POSTGRES / ATELIER_TEST_S3: the fault test is skipped");
            None
        }
    }
}

/// An `atelier worker` process and its log.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(dir: &Path, storage: &[String]) -> Worker {
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = atelier()
            .arg("worker")
            .arg("--data")
            .arg(dir)
            .args(storage)
            .env("ATELIER_MODELS", dir.with_extension("no-models"))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let w = Worker { child, log };
        let t0 = Instant::now();
        while !w.text().contains("atelier worker: train + stylize") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "worker did not start: {}",
                w.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        w
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether this worker's newest start of job `id` is in its log.
    fn started(&self, id: &str) -> bool {
        self.text()
            .lines()
            .any(|l| l.contains("job started") && l.contains(id))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server-sent events of a job until `end` (or the stream closes): their names.
fn events(port: u16, id: &str) -> Vec<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    write!(
        s,
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut names = Vec::new();
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        if let Some(name) = line.strip_prefix("event: ") {
            names.push(name.trim().to_string());
            if name.trim() == "end" {
                break;
            }
        }
    }
    names
}

#[test]
fn two_api_nodes_three_workers_survive_kills_and_a_database_restart() {
    let Some(srv) = servers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let database = rt
        .block_on(atelier_store::db::Db::create_postgres_database(
            &srv.postgres,
            "scale_",
        ))
        .unwrap();
    let storage = vec![
        "--database".to_string(),
        database,
        "--blobs".to_string(),
        format!("{}/{}", srv.s3, atelier_store::db::new_id("scale", 10)),
    ];
    let mut api_args: Vec<&str> = storage.iter().map(String::as_str).collect();
    api_args.extend(["--workers", "0", "--max-active-jobs", "100"]);
    let api_a = start(&dir.path().join("api-a"), free_port(), &api_args);
    let api_b = start(&dir.path().join("api-b"), free_port(), &api_args);
    let mut workers: Vec<Option<Worker>> = (0..3)
        .map(|i| {
            Some(Worker::start(
                &dir.path().join(format!("worker-{i}")),
                &storage,
            ))
        })
        .collect();
    let nodes = [*api_a, *api_b];

    // A small unpaired dataset, then two trainings and thirty stylize jobs through
    // alternating API nodes.
    let dataset = dataset(&api_a);
    let mut trains = Vec::new();
    for i in 0..2 {
        let spec = json!({
            "type": "train", "dataset": dataset, "name": format!("style-{i}"),
            "family": "cyclegan", "net_g": "light", "ngf": 8, "ndf": 8, "size": 32,
            "steps": 300, "checkpoint_every": 20, "sample_every": 50, "init_from": null,
        });
        let (st, j) = nodes[i % 2].json("POST", "/v1/jobs", Some(spec));
        assert_eq!(st, 202, "{j}");
        trains.push(j["id"].as_str().unwrap().to_string());
    }
    let mut stylizes = Vec::new();
    for i in 0..30u32 {
        let spec = br#"{"type":"stylize","model":"monet_light","format":"png"}"#.to_vec();
        let (st, j) = nodes[i as usize % 2].multipart(
            "/v1/jobs",
            &[
                ("spec", None, spec),
                (
                    "image",
                    Some(&format!("photo-{i}.png")),
                    png(48, 32, [120, 160, 90], i),
                ),
            ],
        );
        assert_eq!(st, 202, "{j}");
        stylizes.push((
            j["id"].as_str().unwrap().to_string(),
            format!("photo-{i}.png"),
        ));
    }

    // The first training to store a checkpoint loses its worker.
    let t0 = Instant::now();
    let (victim, step) = loop {
        let found = trains.iter().find_map(|id| {
            let j = api_b.job(id);
            let c = j["progress"]["checkpoint_step"].as_u64().unwrap_or(0);
            (c > 0 && j["status"] == "running").then(|| (id.clone(), c))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no training reached a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let owner = workers
        .iter()
        .position(|w| w.as_ref().is_some_and(|w| w.started(&victim)))
        .expect("the worker running the training");
    let mut w = workers[owner].take().unwrap();
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    eprintln!("killed worker {owner} (training {victim} at checkpoint {step})");
    // One API node goes, and the database restarts under everyone.
    api_a.kill9();
    let restart = std::process::Command::new("sh")
        .args(["-c", &srv.restart])
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    eprintln!(
        "PostgreSQL restarted {:.1} s into the run",
        t0.elapsed().as_secs_f64()
    );

    // A client follows the killed training through the surviving node to its end.
    let seen = events(api_b.port, &victim);
    assert!(seen.contains(&"progress".to_string()), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("end"), "{seen:?}");

    // Everything finishes, exactly once.
    let all: Vec<&String> = trains
        .iter()
        .chain(stylizes.iter().map(|(id, _)| id))
        .collect();
    for id in &all {
        api_b.wait(id, "job", 900, |j| {
            ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or(""))
        });
    }
    for (id, upload) in &stylizes {
        let j = api_b.job(id);
        assert_eq!(j["status"], "succeeded", "{j}");
        let names: Vec<&str> = j["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [upload.as_str()], "{j}");
        let (st, _) = api_b
            .request("GET", &format!("/v1/jobs/{id}/results/{upload}"), None, &[])
            .unwrap();
        assert_eq!(st, 200);
    }
    for id in &trains {
        let j = api_b.job(id);
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["progress"]["step"], 300, "{j}");
    }
    let (_, models) = api_b.json("GET", "/v1/models", None);
    let mine: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["visibility"] == "private")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        mine.len(),
        2,
        "one model per training, no duplicates: {mine:?}"
    );
    assert!(
        mine.contains(&"style-0") && mine.contains(&"style-1"),
        "{mine:?}"
    );

    // The killed training went on elsewhere from its checkpoint in the blob store.
    let resumed: Vec<String> = workers
        .iter()
        .flatten()
        .flat_map(|w| {
            w.text()
                .lines()
                .filter(|l| {
                    l.contains("continuing the run from the blob store") && l.contains(&victim)
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let from: u64 = resumed[0]
        .split("step-")
        .nth(1)
        .and_then(|s| s.get(..8))
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(from > 0, "{}", resumed[0]);
    let metrics = api_b
        .json("GET", &format!("/v1/jobs/{victim}/metrics"), None)
        .1;
    let steps: Vec<u64> = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["step"].as_u64())
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "metric steps repeat: {steps:?}"
    );
    eprintln!(
        "{} jobs finished once each; {victim} continued from step {from} on another worker; events through the surviving node: {}",
        all.len(),
        seen.len()
    );
}
