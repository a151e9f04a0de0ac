//! Capacity of the job queue: claim + finish cycles per second with 32 concurrent no-op
//! workers, on PostgreSQL (`ATELIER_TEST_POSTGRES`, e.g. from `scripts/services.sh`) and on
//! SQLite, beside the ceiling of the same 32 tasks doing bare `SELECT 1` round trips (a
//! claim + finish cycle is two statements plus two NOTIFYs on PostgreSQL).
//!
//!     source scripts/services.sh && start_postgres
//!     cargo bench -p atelier-store --bench claims [-- JOBS]
//!
//! One process shares one pool (16 connections): the figure is what the database carries, not
//! what one worker needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atelier_store::db::{now, Db, JobKind, JobRow, JobStatus, Outcome};
use serde_json::json;

const WORKERS: usize = 32;

fn job(i: usize, kind: &JobKind) -> JobRow {
    let t = now();
    JobRow {
        id: format!("bench{i:06}"),
        owner: format!("owner{}", i % 8),
        kind: kind.clone(),
        status: JobStatus::Queued,
        spec: json!({"type": "noop"}),
        progress: json!({}),
        results: vec![],
        error: None,
        model: None,
        dataset: None,
        attempts: 0,
        lease_owner: None,
        lease_until: None,
        cancel_requested: false,
        created: t,
        updated: t,
        finished: None,
    }
}

async fn run(name: &str, db: Db, jobs: usize) {
    let kind = JobKind::new("noop").unwrap();
    let t0 = Instant::now();
    for i in 0..jobs {
        db.enqueue(&job(i, &kind), i64::MAX).await.unwrap();
    }
    let enqueue = t0.elapsed().as_secs_f64();
    let db = Arc::new(db);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (db, kind) = (db.clone(), kind.clone());
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut n = 0usize;
            while let Some(j) = db
                .claim(
                    std::slice::from_ref(&kind),
                    &worker,
                    Duration::from_secs(60),
                )
                .await
                .unwrap()
            {
                assert!(db
                    .finish(&j.id, &worker, &Outcome::Succeeded, &[])
                    .await
                    .unwrap());
                n += 1;
            }
            n
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(done, jobs, "every job claimed exactly once");
    // The ceiling: the same 32 tasks, bare round trips for about as long.
    let t1 = Instant::now();
    let mut pings = Vec::new();
    for _ in 0..WORKERS {
        let db = db.clone();
        pings.push(tokio::spawn(async move {
            let mut n = 0usize;
            while t1.elapsed() < Duration::from_secs(3) {
                db.ping().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut trips = 0;
    for p in pings {
        trips += p.await.unwrap();
    }
    let trips_s = trips as f64 / t1.elapsed().as_secs_f64();
    let cycles_s = done as f64 / secs;
    println!(
        "{name:<10} {jobs} jobs: enqueue {:.0}/s (one client); claim+finish with {WORKERS} workers {cycles_s:.0}/s ({:.2} ms each per worker); bare round trips {trips_s:.0}/s, i.e. {:.1} round trips per cycle",
        jobs as f64 / enqueue,
        secs * 1000.0 * WORKERS as f64 / done as f64,
        trips_s / cycles_s,
    );
}

fn main() {
    let jobs: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("bench.db")).await.unwrap();
        run("sqlite", db, jobs).await;
        match std::env::var("ATELIER_TEST_POSTGRES") {
            Ok(admin) => {
                let url = Db::create_postgres_database(&admin, "bench_").await.unwrap();
                run("postgres", Db::open(&url).await.unwrap(), jobs).await;
            }
            Err(_) => eprintln!("no ATELIER_TEST_POSTGRES: PostgreSQL skipped (source scripts/services.sh && start_postgres)"),
        }
    });
}
