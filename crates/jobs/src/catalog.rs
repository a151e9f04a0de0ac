//! The model catalog: built-in styles (shipped inside the binary, plus an optional folder of
//! model files) and the models people upload or train (rows in the database, files in the
//! blob store). Resolves a name for a caller, loads stylizers once and keeps a few of them,
//! and makes gallery thumbnails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use candle_core::Device;
use serde::Serialize;

use atelier_engine::Stylizer;
use atelier_imaging::{Format, Limits};
use atelier_nets::ModelCard;
use atelier_nets::Role;
use atelier_store::db::{Db, ModelRow, Visibility};
use atelier_store::Blobs;

use crate::JobsError;

/// The owner name of built-in models.
pub const BUILTIN_OWNER: &str = "builtin";
/// Loaded stylizers kept in memory.
const MAX_LOADED: usize = 12;
/// Activation buffers are trimmed to [`IDLE_KEEP_BYTES`] after this long without an image.
pub const IDLE_TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// What stays between bursts: about a 512² image's buffers through a full ResNet style.
pub const IDLE_KEEP_BYTES: usize = 256 << 20;
/// Side of gallery thumbnails.
pub const THUMBNAIL_SIDE: u32 = 256;

/// The photo every thumbnail is made from (CC-BY-4.0, see `examples/ATTRIBUTION.md`).
static THUMBNAIL_PHOTO: &[u8] = include_bytes!("../../../examples/photo.jpg");

/// A built-in model.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub name: String,
    pub card: ModelCard,
    /// The model file on local disk.
    pub path: PathBuf,
    pub size: u64,
    /// Hex prefix of the file's SHA-256 (cache key: a retrained built-in of the same size
    /// gets new thumbnails).
    pub hash: String,
}

/// A model as a caller sees it.
#[derive(Debug, Clone)]
pub enum ModelRef {
    Builtin(Arc<Builtin>),
    Stored(ModelRow),
}

/// The API's view of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub title: String,
    pub description: String,
    pub owner: String,
    /// `builtin`, `public` or `private`.
    pub visibility: &'static str,
    /// The caller owns it.
    pub mine: bool,
    pub arch: String,
    /// `translator`, `noise generator` or `discriminator`.
    pub role: &'static str,
    pub can_stylize: bool,
    pub train_size: Option<u32>,
    pub parameters: Option<usize>,
    pub size_bytes: u64,
    pub created: i64,
    /// The training job that made it.
    pub job: Option<String>,
    pub thumbnail_url: String,
    pub file_url: String,
}

fn title_of(name: &str) -> String {
    let mut t = String::new();
    for (i, w) in name.split(['-', '_']).filter(|w| !w.is_empty()).enumerate() {
        if i > 0 {
            t.push(' ');
        }
        let mut c = w.chars();
        if let Some(f) = c.next() {
            t.extend(f.to_uppercase());
            t.push_str(c.as_str());
        }
    }
    t
}

impl ModelRef {
    pub fn name(&self) -> &str {
        match self {
            ModelRef::Builtin(b) => &b.name,
            ModelRef::Stored(r) => &r.name,
        }
    }

    pub fn owner(&self) -> &str {
        match self {
            ModelRef::Builtin(_) => BUILTIN_OWNER,
            ModelRef::Stored(r) => &r.owner,
        }
    }

    /// The model card (a stored card that does not parse shows as an empty one).
    pub fn card(&self) -> Result<ModelCard, JobsError> {
        match self {
            ModelRef::Builtin(b) => Ok(b.card.clone()),
            ModelRef::Stored(r) => serde_json::from_value(r.card.clone())
                .map_err(|e| JobsError::Internal(format!("stored card of {}: {e}", r.name))),
        }
    }

    /// A key that changes whenever the file does (cache key of stylizers and thumbnails).
    /// The training job that made this model, when `caller` owns it.
    pub fn training_job(&self, caller: &str) -> Option<&str> {
        match self {
            ModelRef::Stored(row) if row.owner == caller => row.job.as_deref(),
            _ => None,
        }
    }

    pub fn cache_key(&self) -> String {
        match self {
            ModelRef::Builtin(b) => format!("builtin/{}-{}", b.name, b.hash),
            ModelRef::Stored(r) => format!("{}/{}-{}-{}", r.owner, r.name, r.created, r.size),
        }
    }

    pub fn info(&self, caller: &str) -> Result<ModelInfo, JobsError> {
        let card = self.card()?;
        let role = card.arch.role();
        let (visibility, size, created, job) = match self {
            ModelRef::Builtin(b) => ("builtin", b.size, 0, None),
            ModelRef::Stored(r) => (
                r.visibility.as_str(),
                r.size as u64,
                r.created,
                r.job.clone(),
            ),
        };
        let name = self.name().to_string();
        Ok(ModelInfo {
            title: crate::builtin::title(&name)
                .filter(|_| matches!(self, ModelRef::Builtin(_)))
                .map(str::to_string)
                .unwrap_or_else(|| title_of(&name)),
            description: card.description.clone(),
            owner: self.owner().to_string(),
            visibility,
            mine: self.owner() == caller,
            arch: card.arch.name(),
            role: match role {
                Role::Translator => "translator",
                Role::Discriminator => "discriminator",
                Role::NoiseGenerator => "noise generator",
            },
            can_stylize: role == Role::Translator
                && card.arch.input_channels() == 3
                && card.arch.output_channels() == 3,
            train_size: card.input.train_size,
            parameters: card.arch.parameter_count().ok(),
            size_bytes: size,
            created,
            job,
            thumbnail_url: format!("/v1/models/{name}/thumbnail"),
            file_url: format!("/v1/models/{name}/file"),
            name,
        })
    }
}

/// The model catalog.
pub struct Catalog {
    db: Db,
    blobs: Blobs,
    cache_dir: PathBuf,
    builtins: Vec<Arc<Builtin>>,
    loaded: Mutex<Vec<(String, Arc<Stylizer>)>>,
    /// Activation buffers shared by every loaded stylizer (bounded after each image).
    workspace: Arc<atelier_nets::Workspace>,
    /// [`Catalog::warm_builtins`]: 0 not asked, 1 loading the built-ins, 2 loaded.
    warm: std::sync::atomic::AtomicU8,
    thumbnail_lock: tokio::sync::Mutex<()>,
    precision: atelier_engine::PrecisionChoice,
    /// Tiling and memory options of every stylize (requests and jobs).
    engine: atelier_engine::Options,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("builtins", &self.builtins.len())
            .finish()
    }
}

/// Largest model file the catalog accepts.
pub const MAX_MODEL_BYTES: u64 = 512 << 20;

impl Catalog {
    /// Opens the catalog. Embedded built-in models are written to `data_dir/builtin/` (once);
    /// model files in `models_dir`, if given, are built-ins too and win over embedded ones of
    /// the same name.
    pub fn open(
        db: Db,
        blobs: Blobs,
        data_dir: &Path,
        models_dir: Option<&Path>,
    ) -> Result<Catalog, JobsError> {
        let dir = data_dir.join("builtin");
        let io = |p: &Path, e: std::io::Error| JobsError::Internal(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut by_name: HashMap<String, PathBuf> = HashMap::new();
        for (name, _, bytes) in crate::builtin::EMBEDDED {
            let path = dir.join(format!("{name}.safetensors"));
            let same = std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64)
                && std::fs::read(&path).is_ok_and(|b| b == *bytes);
            if !same {
                atelier_nets::file::write_atomic(&path, bytes)
                    .map_err(|e| JobsError::Internal(format!("{}: {e}", path.display())))?;
            }
            by_name.insert(name.to_string(), path);
        }
        if let Some(md) = models_dir {
            for name in atelier_nets::file::model_names(md) {
                by_name.insert(name.clone(), md.join(format!("{name}.safetensors")));
            }
        }
        let mut builtins = Vec::new();
        let mut names: Vec<_> = by_name.into_iter().collect();
        names.sort();
        for (name, path) in names {
            match atelier_nets::file::read_card(&path) {
                Ok(card) => builtins.push(Arc::new(Builtin {
                    size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    hash: file_hash(&path),
                    name,
                    card,
                    path,
                })),
                Err(e) => tracing::warn!("skipping built-in model {}: {e}", path.display()),
            }
        }
        let cache_dir = data_dir.join("cache").join("models");
        std::fs::create_dir_all(&cache_dir).map_err(|e| io(&cache_dir, e))?;
        Ok(Catalog {
            db,
            blobs,
            cache_dir,
            builtins,
            loaded: Mutex::new(Vec::new()),
            workspace: Default::default(),
            warm: Default::default(),
            thumbnail_lock: tokio::sync::Mutex::new(()),
            precision: atelier_engine::PrecisionChoice::Fixed(atelier_nets::Precision::F32),
            engine: atelier_engine::Options::default(),
        })
    }

    /// Bytes one pass over a whole image may take (default
    /// [`atelier_engine::DEFAULT_MEMORY_BUDGET`]); larger images are tiled.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.engine.memory_budget = bytes;
        self
    }

    /// The engine options every stylize of this platform uses.
    pub fn engine_options(&self) -> atelier_engine::Options {
        self.engine
    }

    /// Kernel precision of the stylizers this catalog loads (default fp32).
    pub fn with_precision(mut self, precision: atelier_engine::PrecisionChoice) -> Self {
        self.precision = precision;
        self
    }

    pub fn builtins(&self) -> &[Arc<Builtin>] {
        &self.builtins
    }

    pub fn builtin(&self, name: &str) -> Option<Arc<Builtin>> {
        self.builtins.iter().find(|b| b.name == name).cloned()
    }

    /// The model `name` as `caller` sees it: their own first, then built-in, then public.
    pub async fn resolve(&self, caller: &str, name: &str) -> Result<Option<ModelRef>, JobsError> {
        if let Some(r) = self.db.model(caller, name).await? {
            return Ok(Some(ModelRef::Stored(r)));
        }
        if let Some(b) = self.builtin(name) {
            return Ok(Some(ModelRef::Builtin(b)));
        }
        Ok(self.db.public_model(name).await?.map(ModelRef::Stored))
    }

    /// The caller's own model `name`.
    pub async fn own(&self, caller: &str, name: &str) -> Result<Option<ModelRow>, JobsError> {
        Ok(self.db.model(caller, name).await?)
    }

    /// Every model `caller` can see: built-in, public and their own (a name the caller
    /// owns hides the built-in or public one of that name, as [`Catalog::resolve`] does).
    pub async fn list(&self, caller: &str) -> Result<Vec<ModelRef>, JobsError> {
        let stored = self.db.visible_models(caller).await?;
        let own: std::collections::HashSet<String> = stored
            .iter()
            .filter(|r| r.owner == caller)
            .map(|r| r.name.clone())
            .collect();
        let mut out: Vec<ModelRef> = self
            .builtins
            .iter()
            .filter(|b| !own.contains(&b.name))
            .map(|b| ModelRef::Builtin(b.clone()))
            .collect();
        for r in stored {
            let hidden =
                r.owner != caller && (own.contains(&r.name) || self.builtin(&r.name).is_some());
            if !hidden {
                out.push(ModelRef::Stored(r));
            }
        }
        Ok(out)
    }

    /// The model file on local disk (stored models are fetched into the cache once).
    pub async fn local_file(&self, m: &ModelRef) -> Result<PathBuf, JobsError> {
        match m {
            ModelRef::Builtin(b) => Ok(b.path.clone()),
            ModelRef::Stored(r) => {
                let path = self
                    .cache_dir
                    .join(m.cache_key().replace('/', "__") + ".safetensors");
                if !path.is_file() {
                    let bytes =
                        self.blobs
                            .get(&r.blob, MAX_MODEL_BYTES)
                            .await?
                            .ok_or_else(|| {
                                JobsError::Internal(format!("blob {} is missing", r.blob))
                            })?;
                    atelier_nets::file::write_atomic(&path, &bytes)
                        .map_err(|e| JobsError::Internal(e.to_string()))?;
                }
                Ok(path)
            }
        }
    }

    /// The file's bytes (downloads).
    pub async fn file_bytes(&self, m: &ModelRef) -> Result<Bytes, JobsError> {
        match m {
            ModelRef::Builtin(b) => std::fs::read(&b.path)
                .map(Bytes::from)
                .map_err(|e| JobsError::Internal(format!("{}: {e}", b.path.display()))),
            ModelRef::Stored(r) => self
                .blobs
                .get(&r.blob, MAX_MODEL_BYTES)
                .await?
                .ok_or_else(|| JobsError::Internal(format!("blob {} is missing", r.blob))),
        }
    }

    /// The loaded stylizer of `m` (loaded once; a few stay in memory).
    pub async fn stylizer(&self, m: &ModelRef) -> Result<Arc<Stylizer>, JobsError> {
        let key = m.cache_key();
        if let Some(s) = self.cached(&key) {
            return Ok(s);
        }
        let path = self.local_file(m).await?;
        let precision = self.precision;
        let ws = self.workspace.clone();
        let s = tokio::task::spawn_blocking(move || -> Result<Stylizer, JobsError> {
            let model = atelier_nets::load(&path, &Device::Cpu)
                .map_err(|e| JobsError::Internal(format!("loading {}: {e}", path.display())))?;
            let s = Stylizer::with_choice(model, Device::Cpu, precision)?.with_workspace(ws);
            let probe = s.precision_probe();
            if !probe.is_empty() {
                let probe: Vec<String> = probe
                    .iter()
                    .map(|m| format!("{} {:.1} dB", m.precision.name(), m.psnr_db))
                    .collect();
                tracing::info!(
                    model = %s.card().name,
                    precision = s.precision().name(),
                    psnr_vs_f32 = %probe.join(", "),
                    "precision auto"
                );
            }
            Ok(s)
        })
        .await
        .map_err(|e| JobsError::Internal(e.to_string()))??;
        let s = Arc::new(s);
        let mut loaded = self.loaded.lock().expect("catalog lock");
        loaded.retain(|(k, _)| *k != key);
        loaded.push((key, s.clone()));
        let excess = loaded.len().saturating_sub(MAX_LOADED);
        loaded.drain(..excess);
        Ok(s)
    }

    fn cached(&self, key: &str) -> Option<Arc<Stylizer>> {
        let loaded = self.loaded.lock().expect("catalog lock");
        loaded
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.clone())
    }

    /// Forgets a model's loaded stylizer and cached file (after deletion).
    pub fn evict(&self, m: &ModelRef) {
        let key = m.cache_key();
        self.loaded
            .lock()
            .expect("catalog lock")
            .retain(|(k, _)| *k != key);
        let _ = std::fs::remove_file(self.cache_dir.join(key.replace('/', "__") + ".safetensors"));
    }

    /// The gallery thumbnail of `m`: the bundled photo stylized by it, as PNG (made once,
    /// then kept in the blob store). `Ok(None)` for models that cannot stylize.
    pub async fn thumbnail(&self, m: &ModelRef) -> Result<Option<Bytes>, JobsError> {
        let info = m.info("")?;
        if !info.can_stylize {
            return Ok(None);
        }
        let key = format!("thumbnails/{}.png", m.cache_key());
        if let Some(b) = self.blobs.get(&key, 16 << 20).await? {
            return Ok(Some(b));
        }
        let _guard = self.thumbnail_lock.lock().await;
        if let Some(b) = self.blobs.get(&key, 16 << 20).await? {
            return Ok(Some(b));
        }
        let stylizer = self.stylizer(m).await?;
        let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, JobsError> {
            let photo = atelier_imaging::decode(THUMBNAIL_PHOTO, &Limits::default())?;
            let small = atelier_imaging::thumbnail(&photo, THUMBNAIL_SIDE);
            let out = crate::pipeline::stylize_image(
                &stylizer,
                &small,
                1.0,
                &Default::default(),
                &mut |_| {},
                &|| false,
            )?;
            Ok(atelier_imaging::encode(&out, Format::Png, 0)?)
        })
        .await
        .map_err(|e| JobsError::Internal(e.to_string()))??;
        let png = Bytes::from(png);
        self.blobs.put(&key, png.clone()).await?;
        Ok(Some(png))
    }

    /// Loads every built-in style (weights packed for this CPU, memory per pixel measured)
    /// and makes the gallery thumbnails of those that have none yet, one after the other, so
    /// that the first visitor of a fresh or restarted server gets images as fast as the tenth
    /// and sees the gallery at once (`atelier serve` runs it in the background at start).
    /// Failures are logged, not fatal: the routes try again on request.
    ///
    /// Call [`Catalog::begin_warming`] first: from then until the built-ins are loaded
    /// (before the thumbnails) [`Catalog::warming`] says so, and `/readyz` answers 503.
    pub async fn warm_builtins(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let stylable: Vec<ModelRef> = self
            .builtins
            .iter()
            .map(|b| ModelRef::Builtin(b.clone()))
            .filter(|m| m.info("").is_ok_and(|i| i.can_stylize))
            .collect();
        for m in &stylable {
            if let Err(e) = self.stylizer(m).await {
                tracing::warn!("loading built-in `{}`: {e}", m.name());
            }
        }
        self.warm.store(2, SeqCst);
        for m in &stylable {
            if let Err(e) = self.thumbnail(m).await {
                tracing::warn!("gallery thumbnail of built-in `{}`: {e}", m.name());
            }
        }
    }

    /// Keeps the activation buffers the loaded stylizers share for as long as images keep
    /// coming (a burst of same-size requests allocates once), and trims them to `keep` bytes
    /// once no image has used them for `idle`, returning the freed pages to the system (a
    /// server between bursts gives the memory back). Runs on the current tokio runtime until the catalog is dropped.
    pub fn spawn_idle_trim(&self, idle: std::time::Duration, keep: usize) {
        let ws = Arc::downgrade(&self.workspace);
        let every = (idle / 2).max(std::time::Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(ws) = ws.upgrade() else { return };
                if ws.kept_bytes() > keep && ws.idle_for() >= idle {
                    ws.trim(keep);
                    // The freed buffers stay in malloc's arenas (the binary keeps up to
                    // 256 MiB free per arena) unless handed back.
                    tokio::task::spawn_blocking(crate::memory::release_free_memory);
                }
            }
        });
    }

    /// Bytes of activation buffers the loaded stylizers keep between images.
    pub fn kept_bytes(&self) -> usize {
        self.workspace.kept_bytes()
    }

    /// Marks the built-ins as loading, until [`Catalog::warm_builtins`] has loaded them.
    pub fn begin_warming(&self) {
        let _ = self.warm.compare_exchange(
            0,
            1,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Whether the built-ins are still being loaded at start.
    pub fn warming(&self) -> bool {
        self.warm.load(std::sync::atomic::Ordering::SeqCst) == 1
    }

    /// Checks that `owner` may make a model called `name`: a valid name, not a built-in
    /// style's (the caller's own model would hide the built-in from them), not one of
    /// their models already.
    pub async fn check_new_name(&self, owner: &str, name: &str) -> Result<(), JobsError> {
        if !crate::spec::valid_model_name(name) {
            return Err(JobsError::BadRequest(
                "name: 1–64 letters, digits, `-` or `_`, starting with a letter or digit".into(),
            ));
        }
        if self.builtin(name).is_some() {
            return Err(JobsError::Conflict {
                code: "name_reserved",
                message: format!("`{name}` is a built-in style; choose another name"),
            });
        }
        if self.db.model(owner, name).await?.is_some() {
            return Err(JobsError::NameTaken(name.to_string()));
        }
        Ok(())
    }

    /// Stores a new model file for `owner` (validated: it must load). Returns the row, or
    /// `Err(NameTaken)` if the owner has a model of that name.
    pub async fn add(
        &self,
        owner: &str,
        name: &str,
        bytes: Bytes,
        job: Option<String>,
    ) -> Result<ModelRow, JobsError> {
        self.check_new_name(owner, name).await?;
        let card = validate_model_file(bytes.clone()).await?;
        let mut card_json =
            serde_json::to_value(&card).map_err(|e| JobsError::Internal(e.to_string()))?;
        card_json["name"] = serde_json::Value::String(name.to_string());
        let created = atelier_store::db::now();
        let blob = format!("models/{owner}/{name}-{created}.safetensors");
        self.blobs.put(&blob, bytes.clone()).await?;
        let row = ModelRow {
            owner: owner.to_string(),
            name: name.to_string(),
            visibility: Visibility::Private,
            blob: blob.clone(),
            card: card_json,
            size: bytes.len() as i64,
            job,
            created,
        };
        match self.db.insert_model(&row).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.blobs.delete(&blob).await;
                return Err(JobsError::NameTaken(name.to_string()));
            }
            Err(e) => {
                let _ = self.blobs.delete(&blob).await;
                return Err(e.into());
            }
        }
        Ok(row)
    }

    /// Deletes the owner's model (row, file, thumbnail, caches).
    pub async fn delete(&self, owner: &str, name: &str) -> Result<bool, JobsError> {
        let Some(row) = self.db.delete_model(owner, name).await? else {
            return Ok(false);
        };
        let m = ModelRef::Stored(row.clone());
        self.evict(&m);
        let _ = self.blobs.delete(&row.blob).await;
        let _ = self
            .blobs
            .delete(&format!("thumbnails/{}.png", m.cache_key()))
            .await;
        Ok(true)
    }
}

/// The first 16 hex digits of a file's SHA-256 (empty if unreadable).
fn file_hash(path: &Path) -> String {
    use sha2::Digest;
    std::fs::read(path)
        .map(|b| {
            sha2::Sha256::digest(&b)
                .iter()
                .take(8)
                .map(|x| format!("{x:02x}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that `bytes` is an Atelier model file that loads (every weight present with the
/// right shape); returns its card.
pub async fn validate_model_file(bytes: Bytes) -> Result<ModelCard, JobsError> {
    tokio::task::spawn_blocking(move || -> Result<ModelCard, JobsError> {
        let (tensors, meta) = atelier_nets::file::parse_safetensors(&bytes)
            .map_err(|e| JobsError::InvalidModel(format!("not a safetensors file: {e}")))?;
        let card = atelier_nets::file::card_from_metadata(Path::new("upload"), meta.as_ref())
            .map_err(|e| JobsError::InvalidModel(e.to_string()))?;
        atelier_nets::Network::from_tensors(card.arch, &tensors, &Device::Cpu)
            .map_err(|e| JobsError::InvalidModel(e.to_string()))?;
        Ok(card)
    })
    .await
    .map_err(|e| JobsError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(title_of("ukiyoe"), "Ukiyoe");
        assert_eq!(title_of("van-gogh_light"), "Van Gogh Light");
    }
}
