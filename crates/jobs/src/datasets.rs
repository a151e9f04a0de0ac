//! Dataset ingestion: uploaded images and zip archives become blobs
//! `datasets/{id}/{a|b}/{name}`. Every image is decoded once before it is stored, so a
//! dataset never holds a file the trainer cannot read; anything else is skipped with a reason.
//! Archives are read entry by entry with bounded sizes (zip bombs stop at the limit).

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;

use atelier_imaging::Limits;
use atelier_store::db::Skipped;
use atelier_store::Blobs;

use crate::JobsError;

/// Limits on what an upload may add.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Images in one dataset (both domains together).
    pub max_images: usize,
    /// Bytes of one image file (also inside archives).
    pub max_image_bytes: u64,
    /// Pixels and side of one image.
    pub image: Limits,
    /// Entries read from one archive (files and folders).
    pub max_archive_entries: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_images: 5000,
            max_image_bytes: 32 << 20,
            image: Limits {
                max_pixels: 16_000_000,
                max_side: 8192,
                max_bytes: 32 << 20,
            },
            max_archive_entries: 20_000,
        }
    }
}

/// What one upload added.
#[derive(Debug, Default, Clone)]
pub struct Ingested {
    pub added: usize,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
}

/// Blob prefix of a dataset's domain.
pub fn prefix(dataset: &str, domain: char) -> String {
    format!("datasets/{dataset}/{domain}")
}

/// Adds images to one domain of a dataset.
pub struct Ingest<'a> {
    blobs: &'a Blobs,
    prefix: String,
    taken: HashSet<String>,
    limits: IngestLimits,
    /// Images the dataset holds now (both domains).
    pub total: usize,
    pub out: Ingested,
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// A safe blob file name from an upload's name: letters, digits, `-`, `_`, `.`; the stem
/// is kept so that paired datasets can match A and B by name.
fn safe_stem(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let s: String = stem
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "image".into()
    } else {
        s
    }
}

impl<'a> Ingest<'a> {
    /// Starts adding to `dataset`'s `domain` (`a` or `b`), which already holds `total` images
    /// in both domains together.
    pub async fn new(
        blobs: &'a Blobs,
        dataset: &str,
        domain: char,
        total: usize,
        limits: IngestLimits,
    ) -> Result<Ingest<'a>, JobsError> {
        let prefix = prefix(dataset, domain);
        let taken = blobs
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|k| {
                let f = k.rsplit('/').next()?;
                Some(f.rsplit_once('.').map_or(f, |(s, _)| s).to_string())
            })
            .collect();
        Ok(Ingest {
            blobs,
            prefix,
            taken,
            limits,
            total,
            out: Ingested::default(),
        })
    }

    fn skip(&mut self, file: &str, reason: impl Into<String>) {
        self.out.skipped.push(Skipped {
            file: file.chars().take(200).collect(),
            reason: reason.into(),
        });
    }

    /// Adds one uploaded file: an image, or a zip archive of images.
    pub async fn add_file(&mut self, name: &str, bytes: Bytes) -> Result<(), JobsError> {
        if is_zip(&bytes) {
            return self.add_zip(name, bytes).await;
        }
        self.add_image(name, bytes).await
    }

    /// Adds one image if it decodes; otherwise records why not. A blob store that cannot
    /// take it (a full disk, an unreachable S3) is not the image's fault: that error ends the
    /// upload (`Err`), so that the caller reports it instead of a dataset of skipped images.
    pub async fn add_image(&mut self, name: &str, bytes: Bytes) -> Result<(), JobsError> {
        if self.total >= self.limits.max_images {
            self.skip(
                name,
                format!(
                    "the dataset is full ({} images at most)",
                    self.limits.max_images
                ),
            );
            return Ok(());
        }
        if bytes.len() as u64 > self.limits.max_image_bytes {
            self.skip(
                name,
                format!("file is over {} MiB", self.limits.max_image_bytes >> 20),
            );
            return Ok(());
        }
        let limits = self.limits.image;
        let check = bytes.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let (format, _, _) = atelier_imaging::probe(&check, &limits)?;
            atelier_imaging::decode(&check, &limits)?;
            Ok::<_, atelier_imaging::Error>(format)
        })
        .await;
        let format = match verdict {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.skip(name, e.to_string());
                return Ok(());
            }
            Err(e) => {
                self.skip(name, format!("could not be checked: {e}"));
                return Ok(());
            }
        };
        let mut stem = safe_stem(name);
        if self.taken.contains(&stem) {
            let base = stem.clone();
            let mut n = 2;
            while self.taken.contains(&stem) {
                stem = format!("{base}-{n}");
                n += 1;
            }
        }
        let key = format!("{}/{stem}.{}", self.prefix, format.extension());
        let len = bytes.len() as u64;
        self.blobs.put(&key, bytes).await?;
        self.taken.insert(stem);
        self.total += 1;
        self.out.added += 1;
        self.out.bytes += len;
        Ok(())
    }

    async fn add_zip(&mut self, name: &str, bytes: Bytes) -> Result<(), JobsError> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| JobsError::InvalidArchive(format!("{name}: {e}")))?;
        if archive.len() > self.limits.max_archive_entries {
            return Err(JobsError::InvalidArchive(format!(
                "{name}: {} entries (at most {})",
                archive.len(),
                self.limits.max_archive_entries
            )));
        }
        let max = self.limits.max_image_bytes;
        for i in 0..archive.len() {
            // Read one entry at a time, bounded, then store it.
            let (entry_name, data) = {
                let mut entry = match archive.by_index(i) {
                    Ok(e) => e,
                    Err(e) => {
                        self.skip(&format!("{name}#{i}"), format!("unreadable entry: {e}"));
                        continue;
                    }
                };
                let entry_name = entry
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| format!("{name}#{i}"));
                if entry.is_dir() {
                    continue;
                }
                let base = Path::new(&entry_name)
                    .file_name()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                if base.starts_with('.') || entry_name.starts_with("__MACOSX") {
                    continue;
                }
                if entry.size() > max {
                    self.skip(&entry_name, format!("file is over {} MiB", max >> 20));
                    continue;
                }
                let mut data = Vec::new();
                match (&mut entry).take(max + 1).read_to_end(&mut data) {
                    Ok(_) if data.len() as u64 > max => {
                        self.skip(&entry_name, format!("file is over {} MiB", max >> 20));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.skip(&entry_name, format!("unreadable entry: {e}"));
                        continue;
                    }
                }
                (entry_name, data)
            };
            self.add_image(&entry_name, Bytes::from(data)).await?;
        }
        Ok(())
    }
}

/// Deletes every image blob of a dataset (both domains).
pub async fn remove(blobs: &Blobs, dataset: &str) -> Result<(), JobsError> {
    for d in ['a', 'b'] {
        for k in blobs.list(&prefix(dataset, d)).await? {
            blobs.delete(&k).await?;
        }
    }
    Ok(())
}

/// Writes a dataset's domain into a local folder (for the trainer); returns the image count.
pub async fn materialize(
    blobs: &Blobs,
    dataset: &str,
    domain: char,
    dir: &Path,
    max_image_bytes: u64,
) -> Result<usize, JobsError> {
    let io = |e: std::io::Error| JobsError::Internal(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let keys = blobs.list(&prefix(dataset, domain)).await?;
    for k in &keys {
        let file = k.rsplit('/').next().unwrap_or(k);
        let path = dir.join(file);
        if path.is_file() {
            continue;
        }
        let Some(bytes) = blobs.get(k, max_image_bytes).await? else {
            continue;
        };
        let tmp = dir.join(format!(".{file}.part"));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe() {
        assert_eq!(safe_stem("../../etc/passwd"), "passwd");
        assert_eq!(safe_stem("photos/IMG 001.JPG"), "IMG_001");
        assert_eq!(safe_stem(".hidden"), "_hidden");
        assert_eq!(safe_stem(""), "image");
        assert_eq!(safe_stem("C:\\x\\été.png"), "_t_");
    }
}
