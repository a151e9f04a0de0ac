//! `/v1/datasets`: upload images or zips into domain A/B, list, show, delete.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use atelier_jobs::datasets::Ingest;
use atelier_store::db::{new_id, now, DatasetKind, DatasetRow, Skipped};

use super::{is_multipart, multipart, next_field, query, read_field};
use crate::auth::Caller;
use crate::{ApiError, AppState};

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("dataset_not_found", format!("no dataset `{id}`"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    pub name: String,
    /// `unpaired` (default), `paired` or `single`.
    pub kind: Option<String>,
}

/// What one upload added to a dataset.
#[derive(Debug, Default)]
struct Tally {
    a: i64,
    b: i64,
    bytes: i64,
    skipped: Vec<Skipped>,
}

/// Checks that `adding` more bytes keep the caller within their storage quota.
pub(crate) async fn check_quota(
    state: &AppState,
    owner: &str,
    adding: u64,
) -> Result<(), ApiError> {
    let quota = state.config.max_storage_bytes_per_owner;
    if quota == 0 {
        return Ok(());
    }
    let used = state.db.storage_used(owner).await?.max(0) as u64;
    if used.saturating_add(adding) > quota {
        return Err(ApiError::storage_quota(used, adding, quota));
    }
    Ok(())
}

/// The body's declared length, if any.
fn declared(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the multipart parts into the dataset, adding what it stored to `tally` (also when
/// it fails part-way, so that the caller records what was stored).
async fn ingest(
    state: &AppState,
    req: Request,
    row: &DatasetRow,
    fixed: Option<char>,
    tally: &mut Tally,
) -> Result<(), ApiError> {
    if !is_multipart(&req) {
        return Err(ApiError::bad_request(
            "send multipart/form-data with image or .zip files in parts `a` and `b`",
        ));
    }
    // A body that says it is too big is refused before any of it is read.
    if let Some(n) = declared(&req) {
        check_quota(state, &row.owner, n).await?;
    }
    let limit = state.config.max_upload_bytes;
    let limits = state.config.ingest_limits();
    let mut m = multipart(req, state).await?;
    let mut total = (row.count_a + row.count_b) as usize;
    while let Some(f) = next_field(&mut m, limit).await? {
        let part = f.name().unwrap_or("").to_ascii_lowercase();
        let domain = match (fixed, part.as_str()) {
            (Some(d), _) => d,
            (None, "a") => 'a',
            (None, "b") => 'b',
            (None, other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown part `{other}`: files go in parts `a` and `b`"
                )))
            }
        };
        if domain == 'b' && row.kind == DatasetKind::Single {
            return Err(ApiError::bad_request(
                "a `single` dataset has only domain A",
            ));
        }
        let file = f.file_name().unwrap_or("upload").to_string();
        let data = read_field(f, limit, limit).await?;
        // Without a declared length (chunked bodies), each file is checked as it comes.
        check_quota(state, &row.owner, tally.bytes as u64 + data.len() as u64).await?;
        // Decoding is CPU and memory: a few uploads at a time, the others wait.
        let _slot = state.ingest_slots.enter().await;
        let mut ing = Ingest::new(&state.blobs, &row.id, domain, total, limits).await?;
        let added = ing.add_file(&file, data).await;
        total = ing.total;
        let out = ing.out;
        if domain == 'a' {
            tally.a += out.added as i64;
        } else {
            tally.b += out.added as i64;
        }
        tally.bytes += out.bytes as i64;
        tally.skipped.extend(out.skipped);
        match added {
            Ok(()) => {}
            // One unusable archive is reported like an unusable image.
            Err(atelier_jobs::JobsError::InvalidArchive(reason)) => {
                tally.skipped.push(Skipped { file, reason })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<CreateQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let name = q.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name: 1–100 printable characters"));
    }
    let kind = match q.kind.as_deref() {
        None => DatasetKind::Unpaired,
        Some(k) => DatasetKind::parse(k)
            .ok_or_else(|| ApiError::bad_request("kind: expected unpaired, paired or single"))?,
    };
    let mut row = DatasetRow {
        id: new_id("d_", 10),
        owner: caller.owner.clone(),
        name,
        kind,
        count_a: 0,
        count_b: 0,
        bytes: 0,
        skipped: vec![],
        created: now(),
    };
    let mut tally = Tally::default();
    if let Err(e) = ingest(&state, req, &row, None, &mut tally).await {
        // Nothing half-made stays behind.
        let _ = atelier_jobs::datasets::remove(&state.blobs, &row.id).await;
        return Err(e);
    }
    row.count_a = tally.a;
    row.count_b = tally.b;
    row.bytes = tally.bytes;
    row.skipped = tally.skipped;
    if let Err(e) = state.db.insert_dataset(&row).await {
        // No row, no images: a failed insert (a full disk) leaves nothing behind.
        let _ = atelier_jobs::datasets::remove(&state.blobs, &row.id).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddQuery {
    /// `a` or `b`.
    pub domain: String,
}

pub async fn add_images(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<AddQuery>, QueryRejection>,
    req: Request,
) -> Result<Json<DatasetRow>, ApiError> {
    let q = query(q)?;
    let domain = match q.domain.to_ascii_lowercase().as_str() {
        "a" => 'a',
        "b" => 'b',
        _ => return Err(ApiError::bad_request("domain: expected a or b")),
    };
    let row = state
        .db
        .dataset(&caller.owner, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut tally = Tally::default();
    let result = ingest(&state, req, &row, Some(domain), &mut tally).await;
    // What was stored before a failure is kept and counted (nothing stored goes uncounted).
    if tally.a + tally.b > 0 || !tally.skipped.is_empty() {
        state
            .db
            .add_to_dataset(&id, tally.a, tally.b, tally.bytes, &tally.skipped)
            .await?;
    }
    result?;
    let skipped = tally.skipped;
    let mut row = state
        .db
        .dataset(&caller.owner, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    // This request's skips first, so the caller sees them.
    row.skipped = skipped;
    Ok(Json(row))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        json!({ "datasets": state.db.datasets(&caller.owner).await? }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DatasetRow>, ApiError> {
    Ok(Json(
        state
            .db
            .dataset(&caller.owner, &id)
            .await?
            .ok_or_else(|| not_found(&id))?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = state
        .db
        .delete_dataset(&caller.owner, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    atelier_jobs::datasets::remove(&state.blobs, &row.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
