//! Shared server state: configuration, loaded models and the admission semaphore.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use atelier_engine::Stylizer;
use tokio::sync::Semaphore;

use crate::{ApiError, ServerConfig};

/// Cheap to clone; everything behind `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    /// Permits for stylizing; none left → 429.
    pub permits: Arc<Semaphore>,
    models: Arc<Mutex<HashMap<String, Arc<Stylizer>>>>,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self {
            config: Arc::new(config),
            permits,
            models: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Names of the model files in the models folder, sorted.
    pub fn model_names(&self) -> Vec<String> {
        atelier_nets::file::model_names(&self.config.models_dir)
    }

    /// The file of model `name`, if the name is well-formed and the file exists.
    pub fn model_path(&self, name: &str) -> Option<PathBuf> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !name.starts_with('.');
        let path = self.config.models_dir.join(format!("{name}.safetensors"));
        (ok && path.is_file()).then_some(path)
    }

    /// Loads (once) and returns the stylizer of model `name`. Blocking: call it off the
    /// async runtime.
    pub fn stylizer(&self, name: &str) -> Result<Arc<Stylizer>, ApiError> {
        if let Some(s) = self.models.lock().map_err(ApiError::internal)?.get(name) {
            return Ok(s.clone());
        }
        let path = self.model_path(name).ok_or_else(|| {
            ApiError::not_found("model_not_found", format!("no model named `{name}`"))
        })?;
        let model = atelier_nets::load(&path, &candle_core::Device::Cpu)
            .map_err(|e| ApiError::internal(format!("loading {}: {e}", path.display())))?;
        let stylizer =
            Arc::new(Stylizer::new(model, candle_core::Device::Cpu).map_err(ApiError::from)?);
        self.models
            .lock()
            .map_err(ApiError::internal)?
            .insert(name.to_string(), stylizer.clone());
        Ok(stylizer)
    }
}
