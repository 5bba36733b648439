//! kiln-engine: everything between a transport and a backend.
//!
//! It owns the model repository on disk ([`repository`]), per-model settings
//! ([`config::ModelConfig`]), the served model versions with their worker threads and
//! bounded queues ([`ServedModel`]), and the cloneable [`Engine`] handle that every
//! transport (REST, gRPC, the CLI, Python) calls.
//!
//! It knows nothing of HTTP, gRPC or JSON: errors are typed ([`EngineError`]) and the server
//! maps them to status codes.

pub mod config;
mod model;
pub mod repository;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kiln_core::{BackendError, ValidationError};

pub use model::{InferRequest, InferResponse, ModelHandle, ServedModel, ServingSettings};

/// Everything that can go wrong between a request and a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no version {version}; served versions: {served:?}")]
    VersionNotFound { model: String, version: String, served: Vec<u64> },
    #[error("{0}")]
    NotReady(String),
    #[error("model '{model}' version {version} failed to load: {reason}")]
    LoadFailed { model: String, version: u64, reason: String },
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Repository(String),
    #[error("{0}")]
    Backend(String),
}

impl From<BackendError> for EngineError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::InvalidInput(msg) => EngineError::InvalidRequest(msg),
            other => EngineError::Backend(other.to_string()),
        }
    }
}

/// The state of one version of a model.
#[derive(Debug, Clone)]
pub enum VersionState {
    Ready(ModelHandle),
    Failed(String),
}

/// One model of the repository and the state of each version kiln tried to serve.
#[derive(Debug, Clone)]
pub struct ModelState {
    pub name: String,
    pub versions: BTreeMap<u64, VersionState>,
    /// A problem with the model as a whole (bad config.toml, no version folders).
    pub error: Option<String>,
}

impl ModelState {
    /// Versions that are ready, ascending.
    pub fn ready_versions(&self) -> Vec<u64> {
        self.versions.iter().filter(|(_, s)| matches!(s, VersionState::Ready(_))).map(|(&v, _)| v).collect()
    }

    /// Why the model cannot serve, when it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(format!("model '{}' is not available: {error}", self.name));
        }
        if !self.ready_versions().is_empty() {
            return None;
        }
        let reasons: Vec<String> = self
            .versions
            .iter()
            .filter_map(|(v, s)| match s {
                VersionState::Failed(reason) => Some(format!("version {v}: {reason}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        Some(format!("model '{}' is not available: {}", self.name, reasons.join("; ")))
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<u64>,
    pub ready: bool,
    pub reason: Option<String>,
}

struct EngineInner {
    repository: PathBuf,
    models: RwLock<BTreeMap<String, Arc<ModelState>>>,
}

/// The cloneable handle to every served model.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl Engine {
    /// Loads every model of a repository. A model that fails is recorded with its reason
    /// and does not stop the others; only an unreadable repository is an error. Blocking.
    /// ONNX Runtime must be initialised first (`kiln_backend_ort::runtime`).
    pub fn load_repository(repository: &Path) -> Result<Engine, EngineError> {
        let dirs = repository::scan(repository)?;
        let mut models = BTreeMap::new();
        for dir in dirs {
            let state = load_model_dir(&dir);
            models.insert(dir.name.clone(), Arc::new(state));
        }
        Ok(Engine {
            inner: Arc::new(EngineInner { repository: repository.to_path_buf(), models: RwLock::new(models) }),
        })
    }

    /// The repository folder this engine serves.
    pub fn repository(&self) -> &Path {
        &self.inner.repository
    }

    fn models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ModelState>>> {
        // A panic while holding the lock cannot leave the map half-written (writers replace
        // whole entries), so a poisoned lock is still safe to read.
        self.inner.models.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of one model.
    pub fn model_state(&self, name: &str) -> Result<Arc<ModelState>, EngineError> {
        self.models().get(name).cloned().ok_or_else(|| EngineError::ModelNotFound(name.to_string()))
    }

    /// The ready version to use: the named one, or the highest ready one.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError> {
        let state = self.model_state(name)?;
        match version {
            None | Some("") => {
                let ready = state.versions.values().rev().find_map(|s| match s {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Failed(_) => None,
                });
                ready.ok_or_else(|| EngineError::NotReady(state.unavailable_reason().unwrap_or_default()))
            }
            Some(text) => {
                let not_found = || EngineError::VersionNotFound {
                    model: name.to_string(),
                    version: text.to_string(),
                    served: state.ready_versions(),
                };
                let version: u64 = text.parse().map_err(|_| not_found())?;
                match state.versions.get(&version) {
                    Some(VersionState::Ready(m)) => Ok(m.clone()),
                    Some(VersionState::Failed(reason)) => Err(EngineError::NotReady(format!(
                        "model '{name}' version {version} is not available: {reason}"
                    ))),
                    None => Err(not_found()),
                }
            }
        }
    }

    /// Runs one request on a model.
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResponse, EngineError> {
        self.model(name, version)?.infer(request).await
    }

    /// Every model and version with its state, sorted by name and version.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        for state in self.models().values() {
            if state.versions.is_empty() || state.error.is_some() {
                rows.push(IndexEntry {
                    name: state.name.clone(),
                    version: None,
                    ready: false,
                    reason: state.unavailable_reason(),
                });
            }
            for (&version, s) in &state.versions {
                let (ready, reason) = match s {
                    VersionState::Ready(_) => (true, None),
                    VersionState::Failed(r) => (false, Some(r.clone())),
                };
                rows.push(IndexEntry { name: state.name.clone(), version: Some(version), ready, reason });
            }
        }
        rows
    }
}

/// Loads the versions a model's policy selects; failures are recorded, not raised.
fn load_model_dir(dir: &repository::ModelDir) -> ModelState {
    let mut state = ModelState { name: dir.name.clone(), versions: BTreeMap::new(), error: None };
    let config = match repository::read_config(&dir.path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(model = %dir.name, "{e}");
            state.error = Some(e);
            return state;
        }
    };
    if let Some(named) = &config.name
        && named != &dir.name
    {
        let e = format!("config.toml names the model '{named}', but its folder is '{}'", dir.name);
        tracing::error!(model = %dir.name, "{e}");
        state.error = Some(e);
        return state;
    }
    let selected = config.version_policy().select(&dir.versions);
    if selected.is_empty() {
        let e = if dir.versions.is_empty() {
            format!("no version folders in {} (expected {}/1/model.onnx)", dir.path.display(), dir.path.display())
        } else {
            format!("the version policy selects none of the versions on disk {:?}", dir.versions)
        };
        tracing::error!(model = %dir.name, "{e}");
        state.error = Some(e);
        return state;
    }
    for version in selected {
        match repository::load_version(dir, version, &config) {
            Ok(model) => {
                tracing::info!(
                    model = %dir.name,
                    version,
                    instances = model.instance_count(),
                    inputs = ?model.signature.input_names(),
                    outputs = ?model.signature.output_names(),
                    "model ready"
                );
                state.versions.insert(version, VersionState::Ready(Arc::new(model)));
            }
            Err(e) => {
                tracing::error!(model = %dir.name, version, "{e}");
                let reason = match e {
                    EngineError::LoadFailed { reason, .. } => reason,
                    other => other.to_string(),
                };
                state.versions.insert(version, VersionState::Failed(reason));
            }
        }
    }
    state
}
