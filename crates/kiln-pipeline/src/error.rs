//! What can go wrong while a step runs, typed, so that the server chooses the status from the
//! kind and never from the text. Load-time problems (a pipeline.toml that does not check) stay
//! text: they are read by people, not mapped to status codes.

use kiln_core::ShapeError;
use kiln_serving::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// What a request sent does not fit what a step does (a datatype, a row count, a value
    /// out of range, a condition that is not boolean): the caller's to fix (400).
    #[error("{0}")]
    Input(String),
    /// The pipeline cannot answer as it declares (a constant fallback that does not fit its
    /// output, an output with no fixed row shape): the pipeline's fault (500).
    #[error("{0}")]
    Pipeline(String),
    /// A tensor a step built does not match its shape (500).
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

impl From<StepError> for EngineError {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Input(m) => EngineError::InvalidRequest(m),
            StepError::Pipeline(m) => EngineError::Backend(m),
            StepError::Shape(e) => EngineError::Backend(e.to_string()),
        }
    }
}
