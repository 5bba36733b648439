//! kiln-engine: the registry of served models — the one crate that knows every model kind.
//!
//! It owns loading ([`repository`]: a version of each kind — ONNX on kiln-backend-ort, `[text]`
//! on kiln-text, GGUF on kiln-llm, a collection, a pipeline — turned into a
//! `kiln_serving::ServedModel`), the executors of the kinds no other crate runs (LLM rows over
//! v2, collection search), and the cloneable [`Engine`] handle every transport calls: versions,
//! the repository index, the dependency-ordered load and reloads, readiness by dependency.
//!
//! It must not know HTTP, gRPC or JSON (the server maps `kiln_serving::EngineError` to status
//! codes), nor run a request's lifecycle (kiln-server does), nor parse the repository's files
//! (kiln-repository does).

pub mod collection;
pub mod config;
mod engine;
#[cfg(feature = "llm")]
mod llm;
mod load;
pub mod repository;
pub mod rollout;
mod state;

pub use engine::{Engine, EngineConfig, IndexEntry, ModelControl};
pub use state::{ModelState, VersionState};
