//! The engine's one error type: every failure between a request and a model, typed so that
//! the server alone chooses status codes.

use kiln_core::{BackendError, ValidationError};

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
    /// The request's timeout passed before it was answered.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Repository(String),
    /// A repository load/unload request in a model-control mode that does not allow it.
    #[error("{0}")]
    ModelControl(String),
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

#[cfg(feature = "llm")]
impl From<kiln_llm::LlmError> for EngineError {
    fn from(e: kiln_llm::LlmError) -> Self {
        use kiln_llm::LlmError;
        match e {
            LlmError::PromptTooLong { .. }
            | LlmError::PromptTooLarge(_)
            | LlmError::EmptyPrompt
            | LlmError::Template(_)
            | LlmError::Grammar(_) => EngineError::InvalidRequest(e.to_string()),
            LlmError::Overloaded { .. } => EngineError::Overloaded(e.to_string()),
            LlmError::ShuttingDown | LlmError::NoRoom(_) => EngineError::Unavailable(e.to_string()),
            // At request time a load error is a model that could not load now (under
            // --llm-memory-budget, on demand): unavailable, with the reason; the next request
            // tries again.
            LlmError::Load(reason) => EngineError::Unavailable(format!("the model could not be loaded: {reason}")),
            LlmError::Engine(_) => EngineError::Backend(e.to_string()),
        }
    }
}

impl From<kiln_repository::RepositoryError> for EngineError {
    fn from(e: kiln_repository::RepositoryError) -> Self {
        match e {
            kiln_repository::RepositoryError::InvalidName(m) => EngineError::InvalidRequest(m),
            kiln_repository::RepositoryError::Unreadable(m) => EngineError::Repository(m),
        }
    }
}
