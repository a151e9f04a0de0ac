//! Leftovers of interrupted work, collected when a node starts: blobs written by an upload
//! or a job that was killed before its database row was written (`datasets/<id>/…`,
//! `jobs/<id>/…`, `models/<owner>/<file>` with no row), half-written blob files
//! (object_store's `<name>#<n>` staging files) and temporary import files (`cache/import-*`).
//!
//! Call it before serving, on a single node only: nothing is in flight then. With several
//! nodes sharing one blob store another node's upload in flight looks like a leftover, so
//! [`crate::Platform::recover`] does not sweep there (uploads clean up after themselves).

use std::path::Path;

use atelier_store::db::Db;
use atelier_store::Blobs;

use crate::JobsError;

/// What [`sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Blobs of datasets, jobs and models without a row.
    pub orphan_blobs: usize,
    /// Staging and temporary files.
    pub temp_files: usize,
}

/// Removes leftovers (see the module docs). `blob_dir` is the local blob folder, if blobs are
/// local; `cache_dir` holds temporary import files.
pub async fn sweep(
    db: &Db,
    blobs: &Blobs,
    blob_dir: Option<&Path>,
    cache_dir: &Path,
) -> Result<Swept, JobsError> {
    let mut swept = Swept::default();
    let refs = db.referenced().await?;
    for (prefix, known) in [("datasets", &refs.datasets), ("jobs", &refs.jobs)] {
        for k in blobs.list(prefix).await? {
            let id = k.split('/').nth(1).unwrap_or("");
            if !known.contains(id) {
                blobs.delete(&k).await?;
                swept.orphan_blobs += 1;
            }
        }
    }
    for k in blobs.list("models").await? {
        if !refs.model_blobs.contains(&k) {
            blobs.delete(&k).await?;
            swept.orphan_blobs += 1;
        }
    }
    let mut temp = Vec::new();
    if let Some(dir) = blob_dir {
        walk(
            dir,
            &mut |p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains('#'))
            },
            &mut temp,
        );
    }
    walk(
        cache_dir,
        &mut |p| {
            p.parent() == Some(cache_dir)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("import-"))
        },
        &mut temp,
    );
    for p in temp {
        if std::fs::remove_file(&p).is_ok() {
            swept.temp_files += 1;
        }
    }
    Ok(swept)
}

/// Files under `dir` (recursively, not following links) that `keep` selects.
fn walk(dir: &Path, keep: &mut dyn FnMut(&Path) -> bool, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() {
            walk(&p, keep, out);
        } else if t.is_file() && keep(&p) {
            out.push(p);
        }
    }
}
