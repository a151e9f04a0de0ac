//! One conformance suite for the blob store, run against a local folder (`file://`) and
//! against a real S3 server (`s3://`, SeaweedFS started by `scripts/services.sh`, which
//! exports `ATELIER_TEST_S3` and the standard `AWS_*` variables). Without it the S3 run says
//! so and passes, unless `ATELIER_REQUIRE_SERVERS` is set (the test command sets it).

use atelier_store::{Blobs, StoreError};
use bytes::Bytes;

/// Each run gets its own prefix, so runs never see each other's blobs.
fn run_prefix() -> String {
    atelier_store::db::new_id("run", 10)
}

async fn suite(blobs: &Blobs) {
    blobs
        .put("jobs/1/result.png", Bytes::from_static(b"png"))
        .await
        .unwrap();
    blobs
        .put("jobs/2/result.png", Bytes::from_static(b"png2"))
        .await
        .unwrap();
    // Overwrites replace the whole content.
    blobs
        .put("jobs/2/result.png", Bytes::from_static(b"png22"))
        .await
        .unwrap();
    assert_eq!(
        blobs.get("jobs/1/result.png", 10).await.unwrap().unwrap(),
        Bytes::from_static(b"png")
    );
    assert!(matches!(
        blobs.get("jobs/2/result.png", 3).await,
        Err(StoreError::TooLarge { size: 5, .. })
    ));
    assert!(blobs.get("jobs/3/result.png", 10).await.unwrap().is_none());
    assert!(blobs.get("../escape", 10).await.is_err());
    assert_eq!(
        blobs.list("jobs").await.unwrap(),
        ["jobs/1/result.png", "jobs/2/result.png"]
    );
    assert!(blobs.list("nothing/here").await.unwrap().is_empty());
    blobs.delete("jobs/1/result.png").await.unwrap();
    blobs.delete("jobs/1/result.png").await.unwrap();
    assert_eq!(blobs.list("jobs").await.unwrap(), ["jobs/2/result.png"]);
    // A large blob (several S3 parts' worth would be multipart; one put is one object).
    let big = Bytes::from(vec![42u8; 6 << 20]);
    blobs.put("big/one", big.clone()).await.unwrap();
    assert_eq!(blobs.get("big/one", 8 << 20).await.unwrap().unwrap(), big);
    blobs.delete("big/one").await.unwrap();
}

#[tokio::test]
async fn local_folder_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("blobs").display());
    suite(&Blobs::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn s3_conforms() {
    let Ok(url) = std::env::var("ATELIER_TEST_S3") else {
        assert!(
            std::env::var_os("ATELIER_REQUIRE_SERVERS").is_none(),
            "ATELIER_REQUIRE_SERVERS is set but ATELIER_TEST_S3 is not: start one with \
             `source scripts/services.sh && start_s3`"
        );
        eprintln!("no ATELIER_TEST_S3: the S3 blob run is skipped");
        return;
    };
    let blobs = Blobs::open(&format!("{url}/{}", run_prefix()))
        .await
        .unwrap();
    suite(&blobs).await;
}

#[tokio::test]
async fn bad_blob_urls_are_refused_clearly() {
    for (url, says) in [
        ("ftp://host/x", "file://DIR or s3://BUCKET"),
        ("s3://", "no bucket"),
    ] {
        let e = Blobs::open(url).await.unwrap_err().to_string();
        assert!(e.contains(says), "{url}: {e}");
    }
}
