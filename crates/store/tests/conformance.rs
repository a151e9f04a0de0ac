//! One conformance suite for the metadata store, run against SQLite and against PostgreSQL:
//! keys, models, datasets and the job queue behave the same on both, including concurrent
//! claims (every job claimed exactly once) and concurrent enqueues against a quota.
//!
//! PostgreSQL comes from `ATELIER_TEST_POSTGRES` (a superuser URL; each run creates its own
//! database): `./scripts/test.sh` starts a real server for it (`scripts/services.sh`). Without
//! it the PostgreSQL test says so and passes, unless `ATELIER_REQUIRE_SERVERS` is set (as the
//! test command sets it), where a missing server is a failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use atelier_store::db::{
    now, Backend, DatasetKind, DatasetRow, Db, JobKind, JobRow, JobStatus, KeyRow, Lease, ModelRow,
    Outcome, Skipped, Visibility,
};
use atelier_store::StoreError;
use serde_json::json;

async fn sqlite() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // A path a URL would misread, to hold the encoding to account.
    let db = Db::open_sqlite(&dir.path().join("a dir?#%").join("atelier.db"))
        .await
        .unwrap();
    (db, dir)
}

/// A fresh database on the test PostgreSQL server, or `None` when there is none.
async fn postgres() -> Option<Db> {
    let Ok(admin) = std::env::var("ATELIER_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("ATELIER_REQUIRE_SERVERS").is_none(),
            "ATELIER_REQUIRE_SERVERS is set but ATELIER_TEST_POSTGRES is not: start one with \
             `source scripts/services.sh && start_postgres`"
        );
        eprintln!("no ATELIER_TEST_POSTGRES: the PostgreSQL conformance run is skipped");
        return None;
    };
    let url = Db::create_postgres_database(&admin, "conformance_")
        .await
        .expect("creating a database on ATELIER_TEST_POSTGRES");
    Some(Db::open(&url).await.unwrap())
}

fn key(id: &str, owner: &str) -> KeyRow {
    KeyRow {
        id: id.into(),
        owner: owner.into(),
        hash: "$argon2id$…".into(),
        label: "laptop".into(),
        created: now(),
        revoked: false,
    }
}

fn model(owner: &str, name: &str, size: i64) -> ModelRow {
    ModelRow {
        owner: owner.into(),
        name: name.into(),
        visibility: Visibility::Private,
        blob: format!("models/{owner}/{name}.safetensors"),
        card: json!({"family": "cut", "ngf": 32}),
        size,
        job: None,
        created: now(),
    }
}

fn dataset(id: &str, owner: &str) -> DatasetRow {
    DatasetRow {
        id: id.into(),
        owner: owner.into(),
        name: "photos".into(),
        kind: DatasetKind::Unpaired,
        count_a: 2,
        count_b: 3,
        bytes: 1000,
        skipped: vec![],
        created: now(),
    }
}

fn kind(name: &str) -> JobKind {
    JobKind::new(name).unwrap()
}

fn job(id: &str, owner: &str, kind: JobKind, created: i64, dataset: Option<&str>) -> JobRow {
    let spec = json!({"type": kind.as_str(), "n": 1});
    JobRow {
        id: id.into(),
        owner: owner.into(),
        kind,
        status: JobStatus::Queued,
        spec,
        progress: json!({}),
        results: vec![],
        error: None,
        model: None,
        dataset: dataset.map(String::from),
        attempts: 0,
        lease_owner: None,
        lease_until: None,
        cancel_requested: false,
        created,
        updated: created,
        finished: None,
    }
}

const LEASE: Duration = Duration::from_secs(60);

async fn keys_models_datasets(db: &Db) {
    // Keys.
    db.insert_key(&key("k1", "alice")).await.unwrap();
    db.insert_key(&key("k2", "bob")).await.unwrap();
    assert!(db.insert_key(&key("k1", "mallory")).await.is_err());
    assert_eq!(db.key("k1").await.unwrap().unwrap().owner, "alice");
    assert!(db.key("k3").await.unwrap().is_none());
    assert!(db.revoke_key("k1").await.unwrap());
    assert!(!db.revoke_key("k3").await.unwrap());
    assert!(db.key("k1").await.unwrap().unwrap().revoked);
    assert!(!db.key("k2").await.unwrap().unwrap().revoked);
    assert_eq!(db.keys().await.unwrap().len(), 2);

    // Models: one name per owner, one public model per name.
    assert!(db.insert_model(&model("alice", "ink", 10)).await.unwrap());
    assert!(!db.insert_model(&model("alice", "ink", 11)).await.unwrap());
    assert!(db.insert_model(&model("bob", "ink", 20)).await.unwrap());
    assert!(db.insert_model(&model("bob", "sun", 30)).await.unwrap());
    let m = db.model("alice", "ink").await.unwrap().unwrap();
    assert_eq!((m.size, m.card["ngf"].as_i64()), (10, Some(32)));
    assert!(db.public_model("ink").await.unwrap().is_none());
    assert!(db.publish_model("alice", "ink").await.unwrap());
    assert!(!db.publish_model("bob", "ink").await.unwrap(), "name taken");
    assert_eq!(
        db.public_model("ink").await.unwrap().unwrap().owner,
        "alice"
    );
    let seen: Vec<(String, String)> = db
        .visible_models("bob")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.owner, m.name))
        .collect();
    let pair = |o: &str, n: &str| (o.to_string(), n.to_string());
    assert_eq!(
        seen,
        [pair("alice", "ink"), pair("bob", "ink"), pair("bob", "sun")]
    );
    assert_eq!(db.visible_models("carol").await.unwrap().len(), 1);

    // Datasets.
    db.insert_dataset(&dataset("d1", "alice")).await.unwrap();
    let skipped = Skipped {
        file: "x.gif".into(),
        reason: "not an image".into(),
    };
    db.add_to_dataset("d1", 1, 2, 500, std::slice::from_ref(&skipped))
        .await
        .unwrap();
    let d = db.dataset("alice", "d1").await.unwrap().unwrap();
    assert_eq!((d.count_a, d.count_b, d.bytes), (3, 5, 1500));
    assert_eq!(d.skipped, vec![skipped]);
    assert!(db.dataset("bob", "d1").await.unwrap().is_none());
    assert_eq!(db.datasets("alice").await.unwrap().len(), 1);
    assert_eq!(db.storage_used("alice").await.unwrap(), 1500 + 10);
    assert_eq!(db.storage_used("bob").await.unwrap(), 50);
    assert_eq!(db.storage_used("carol").await.unwrap(), 0);

    // A dataset in use by an unfinished job cannot be deleted; afterwards it can.
    db.enqueue(&job("jd", "alice", kind("train"), 1, Some("d1")), 10)
        .await
        .unwrap();
    assert!(matches!(
        db.delete_dataset("alice", "d1").await,
        Err(StoreError::Conflict(_))
    ));
    let c = db.request_cancel("alice", "jd").await.unwrap().unwrap();
    assert_eq!(c.status, JobStatus::Cancelled);
    assert!(db.delete_dataset("bob", "d1").await.unwrap().is_none());
    assert_eq!(
        db.delete_dataset("alice", "d1").await.unwrap().unwrap().id,
        "d1"
    );
    assert!(db.dataset("alice", "d1").await.unwrap().is_none());

    let refs = db.referenced().await.unwrap();
    assert!(refs.jobs.contains("jd") && refs.datasets.is_empty());
    assert!(refs.model_blobs.contains("models/alice/ink.safetensors"));
    assert_eq!(
        db.delete_model("alice", "ink").await.unwrap().unwrap().size,
        10
    );
    assert!(db.delete_model("alice", "ink").await.unwrap().is_none());
}

async fn queue(db: &Db) {
    // Quota: at most 2 unfinished jobs per owner.
    db.enqueue(&job("j1", "q", kind("stylize"), 100, None), 2)
        .await
        .unwrap();
    db.enqueue(&job("j2", "q", kind("train"), 101, None), 2)
        .await
        .unwrap();
    assert!(matches!(
        db.enqueue(&job("j3", "q", kind("stylize"), 102, None), 2)
            .await,
        Err(StoreError::QuotaExceeded(_))
    ));
    assert!(db.job("q", "j3").await.unwrap().is_none());
    assert!(db.job("other", "j1").await.unwrap().is_none());

    // Claims: oldest first, only the lane's kinds.
    assert!(db
        .claim(&[kind("train")], "w-train", LEASE)
        .await
        .unwrap()
        .is_some_and(|j| j.id == "j2" && j.status == JobStatus::Running && j.attempts == 1));
    assert!(db
        .claim(&[kind("train")], "w-train", LEASE)
        .await
        .unwrap()
        .is_none());
    assert!(db.claim(&[], "w", LEASE).await.unwrap().is_none());
    let j1 = db
        .claim(&[kind("stylize"), kind("train")], "w1", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (j1.id.as_str(), j1.lease_owner.as_deref()),
        ("j1", Some("w1"))
    );
    assert!(j1.lease_until.unwrap() >= now() + 59);

    // Heartbeats, progress, cancel, finish.
    assert_eq!(db.heartbeat("j1", "w1", LEASE).await.unwrap(), Lease::Held);
    assert_eq!(db.heartbeat("j1", "w2", LEASE).await.unwrap(), Lease::Lost);
    let p = json!({"step": 3, "fraction": 0.5});
    assert_eq!(
        db.set_progress("j1", "w1", &p, None).await.unwrap(),
        Lease::Held
    );
    assert_eq!(
        db.set_progress("j1", "w2", &p, None).await.unwrap(),
        Lease::Lost
    );
    db.request_cancel("q", "j1").await.unwrap();
    assert!(db.job("q", "j1").await.unwrap().unwrap().cancel_requested);
    assert_eq!(
        db.heartbeat("j1", "w1", LEASE).await.unwrap(),
        Lease::CancelRequested
    );
    let names = vec!["out.png".to_string()];
    assert!(db
        .finish("j1", "w1", &Outcome::Cancelled, &names)
        .await
        .unwrap());
    assert!(!db
        .finish("j1", "w1", &Outcome::Succeeded, &[])
        .await
        .unwrap());
    let j1 = db.job("q", "j1").await.unwrap().unwrap();
    assert_eq!(j1.status, JobStatus::Cancelled);
    assert_eq!((j1.results, j1.progress), (names, p));
    assert!(!j1.cancel_requested && j1.finished.is_some() && j1.lease_owner.is_none());

    // Durable progress resets the attempts; release hands the job back without counting one.
    let res = vec!["checkpoint".to_string()];
    db.set_progress("j2", "w-train", &json!({}), Some(&res))
        .await
        .unwrap();
    assert!(db.release("j2", "w-train").await.unwrap());
    let j2 = db.job_any("j2").await.unwrap().unwrap();
    assert_eq!((j2.status, j2.attempts), (JobStatus::Queued, 0));
    assert_eq!(j2.results, res);

    // Failed, requeued (resume), succeeded.
    let j2 = db
        .claim(&[kind("train")], "w3", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(db
        .finish(&j2.id, "w3", &Outcome::Failed("bad input".into()), &[])
        .await
        .unwrap());
    assert_eq!(
        db.job("q", "j2").await.unwrap().unwrap().error.as_deref(),
        Some("bad input")
    );
    assert!(matches!(
        db.requeue("q", "j2", 2).await.unwrap(),
        Some(j) if j.status == JobStatus::Queued && j.error.is_none() && j.attempts == 0
    ));
    assert!(db.requeue("x", "j2", 2).await.unwrap().is_none());
    assert!(matches!(
        db.requeue("q", "j2", 2).await,
        Err(StoreError::Conflict(_))
    ));
    db.claim(&[kind("train")], "w4", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(db
        .finish("j2", "w4", &Outcome::Succeeded, &[])
        .await
        .unwrap());
    assert_eq!(
        db.job("q", "j2").await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );

    // A queued job cancelled ends at once.
    db.enqueue(&job("j4", "q", kind("stylize"), 103, None), 2)
        .await
        .unwrap();
    assert_eq!(
        db.request_cancel("q", "j4").await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );

    // Reaping: an expired lease goes back to the queue, or fails after max_attempts; a
    // cancel requested before the worker died ends the job as cancelled.
    for (id, created) in [("r1", 200), ("r2", 201), ("r3", 202)] {
        db.enqueue(&job(id, "reap", kind("stylize"), created, None), 10)
            .await
            .unwrap();
    }
    let expired = Duration::from_secs(0);
    for w in ["d1", "d2", "d3"] {
        db.claim(&[kind("stylize")], w, expired)
            .await
            .unwrap()
            .unwrap();
    }
    db.request_cancel("reap", "r3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // r1 and r2 used their one attempt: failed; r3 was being cancelled: cancelled.
    assert_eq!(db.reap_expired(1).await.unwrap(), 1);
    for id in ["r1", "r2"] {
        let j = db.job_any(id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    }
    let r3 = db.job_any("r3").await.unwrap().unwrap();
    assert_eq!(
        r3.status,
        JobStatus::Cancelled,
        "its owner cancelled it: {r3:?}"
    );
    db.enqueue(&job("r4", "reap", kind("stylize"), 203, None), 10)
        .await
        .unwrap();
    db.enqueue(&job("r5", "reap", kind("stylize"), 204, None), 10)
        .await
        .unwrap();
    db.claim(&[kind("stylize")], "d4", expired)
        .await
        .unwrap()
        .unwrap();
    db.claim(&[kind("stylize")], "d5", LEASE)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        db.reap_expired(5).await.unwrap(),
        1,
        "only r4's lease ran out"
    );
    assert_eq!(
        db.job_any("r4").await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert_eq!(
        db.job_any("r5").await.unwrap().unwrap().status,
        JobStatus::Running
    );
    assert_eq!(
        db.requeue_orphans(5).await.unwrap(),
        1,
        "r5, whatever its lease"
    );
    assert_eq!(
        db.job_any("r5").await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    let counts = db.job_counts().await.unwrap();
    let n = |k: &str, s: &str| {
        counts
            .iter()
            .find(|(kk, ss, _)| kk == k && ss == s)
            .map_or(0, |c| c.2)
    };
    assert_eq!(n("stylize", "queued"), 2);
    assert_eq!(n("stylize", "failed"), 2);
    assert_eq!(n("stylize", "cancelled"), 3);
    assert_eq!(n("train", "succeeded"), 1);
    let newest: Vec<String> = db
        .jobs("reap", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(newest, ["r5", "r4"]);
    for id in ["r4", "r5"] {
        db.request_cancel("reap", id).await.unwrap();
    }
}

/// 8 claimers race for 40 jobs: every job is claimed exactly once.
async fn concurrent_claims(db: &Db) {
    for i in 0..40 {
        db.enqueue(
            &job(&format!("c{i:02}"), "race", kind("stylize"), 1000 + i, None),
            100,
        )
        .await
        .unwrap();
    }
    let db = Arc::new(db.clone());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(j) = db
                .claim(&[kind("stylize")], &format!("racer{w}"), LEASE)
                .await
                .unwrap()
            {
                assert_eq!(j.lease_owner.as_deref(), Some(format!("racer{w}").as_str()));
                mine.push(j.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 40, "claims: {all:?}");
    assert_eq!(unique.len(), 40);
}

/// 10 concurrent enqueues against a quota of 3: exactly 3 get in.
async fn concurrent_quota(db: &Db) {
    let db = Arc::new(db.clone());
    let mut tasks = Vec::new();
    for i in 0..10 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.enqueue(
                &job(&format!("quota{i}"), "greedy", kind("train"), 2000, None),
                3,
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::QuotaExceeded(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 3);
}

/// Job kinds are open: a kind the store has never heard of queues and claims like the others
/// (issue 21), and only well-formed names are kept.
async fn open_kinds(db: &Db) {
    db.enqueue(&job("k1", "kinds", kind("compress_v2"), 5000, None), 10)
        .await
        .unwrap();
    let got = db
        .claim(&[kind("compress_v2")], "wk", LEASE)
        .await
        .unwrap()
        .expect("the new kind is claimed");
    assert_eq!((got.id.as_str(), got.kind.as_str()), ("k1", "compress_v2"));
    assert!(db
        .claim(&[kind("other")], "wk", LEASE)
        .await
        .unwrap()
        .is_none());
    for bad in ["", "Train", "a b", "x;DROP", &"k".repeat(33)] {
        assert!(JobKind::new(bad).is_err(), "{bad:?}");
    }
}

/// Queue notices reach subscribers (on PostgreSQL through LISTEN/NOTIFY, from any process):
/// idle workers and event streams wait on them instead of polling.
async fn notices(db: &Db) {
    use atelier_store::db::Notice;
    let mut rx = db.subscribe();
    async fn next(rx: &mut tokio::sync::broadcast::Receiver<Notice>) -> Option<Notice> {
        let fut = async {
            loop {
                match rx.recv().await {
                    // A reconnect, or a warm-up job's notice that arrived after the drain
                    // below (the listener may connect between a warm-up enqueue and its
                    // notice): neither is what the test asserts.
                    Ok(Notice::Resync) => continue,
                    Ok(Notice::Queued(Some(k))) if k == "warmup" => continue,
                    Ok(n) => return Some(n),
                    Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .ok()
            .flatten()
    }
    // The PostgreSQL listener connects in the background: wait until it hears anything.
    let mut heard = false;
    for i in 0..20 {
        db.enqueue(
            &job(
                &format!("warm{i}"),
                "notices",
                kind("warmup"),
                6000 + i,
                None,
            ),
            100,
        )
        .await
        .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .map(|r| r.ok())
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "no notice within 6 s");
    while rx.try_recv().is_ok() {}
    db.enqueue(&job("n1", "notices", kind("noticed"), 7000, None), 100)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Some(Notice::Queued(Some("noticed".into())))
    );
    let got = db
        .claim(&[kind("noticed")], "wn", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut rx).await, Some(Notice::Changed(got.id.clone())));
    db.set_progress("n1", "wn", &json!({"step": 1}), None)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Some(Notice::Changed("n1".into())));
    db.finish("n1", "wn", &atelier_store::db::Outcome::Succeeded, &[])
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Some(Notice::Changed("n1".into())));
}

/// Shared token buckets (PostgreSQL): `per_minute` at once, then a wait; SQLite keeps its
/// buckets in the server's memory and refuses.
async fn shared_rate_limits(db: &Db) {
    if db.backend() != Backend::Postgres {
        assert!(db.take_token("o", 3).await.is_err());
        return;
    }
    for _ in 0..3 {
        assert_eq!(db.take_token("limited", 3).await.unwrap(), Ok(()));
    }
    let wait = db.take_token("limited", 3).await.unwrap().unwrap_err();
    assert!((1..=20).contains(&wait), "{wait}");
    // Refused requests cost nothing; other owners have their own bucket.
    assert!(db.take_token("limited", 3).await.unwrap().is_err());
    assert_eq!(db.take_token("other", 3).await.unwrap(), Ok(()));
}

async fn suite(db: Db) {
    shared_rate_limits(&db).await;
    keys_models_datasets(&db).await;
    queue(&db).await;
    open_kinds(&db).await;
    notices(&db).await;
    concurrent_claims(&db).await;
    concurrent_quota(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let (db, _dir) = sqlite().await;
    assert_eq!(db.backend(), Backend::Sqlite);
    suite(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms() {
    let Some(db) = postgres().await else {
        return;
    };
    assert_eq!(db.backend(), Backend::Postgres);
    suite(db).await;
}

#[tokio::test]
async fn unsupported_database_urls_are_refused_with_the_password_hidden() {
    let e = Db::open("mysql://root:hunter2@db/atelier")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("sqlite://") && msg.contains("postgres://"),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2") && msg.contains("root:***@db"),
        "{msg}"
    );
}
