//! kiln-engine: everything between a transport and a backend.
//!
//! It owns the model repository on disk ([`repository`]), per-model settings
//! ([`config::ModelConfig`]), the served model versions with their worker threads and
//! bounded queues ([`ServedModel`]), and the cloneable [`Engine`] handle that every
//! transport (REST, gRPC, the CLI, Python) calls.
//!
//! It knows nothing of HTTP, gRPC or JSON: errors are typed ([`EngineError`]) and the server
//! maps them to status codes.

mod batcher;
pub mod collection;
pub mod config;
mod engine;
pub mod error;
#[cfg(feature = "llm")]
mod llm;
pub mod metrics;
mod model;
pub mod pipeline;
mod queue;
pub mod repository;
pub mod stats;

pub use kiln_repository::{pbtxt, triton_config};

pub use engine::{Engine, EngineConfig, IndexEntry, ModelControl, ModelState, VersionState};
pub use error::EngineError;
pub use metrics::{Outcome, Protocol};
pub use model::{InFlight, InferRequest, InferResponse, ModelHandle, ServedModel, ServingSettings};
