//! kiln-serving: the serving runtime of one model version, whatever runs it.
//!
//! It owns [`ServedModel`] (admission, the bounded [`queue`], the dynamic [`batcher`] on each
//! instance's worker thread), the [`InFlight`] guard that counts a request from entry to its
//! outcome, per-model [`metrics`] and [`stats`], the [`Executor`] trait that pipelines, LLMs
//! and collections implement elsewhere, and [`EngineError`], the request path's error type.
//!
//! It must not know any model kind (it never names a pipeline, an LLM or a collection beyond
//! [`ExecutorKind`]), nor the repository on disk, nor HTTP, gRPC or JSON.

mod batcher;
pub mod error;
pub mod metrics;
mod model;
mod queue;
mod request;
pub mod span;
pub mod stats;

pub use error::EngineError;
pub use metrics::{Outcome, Protocol};
pub use model::{
    Admitted, BoxFuture, Executor, ExecutorKind, InFlight, ModelHandle, ModelResolver, ServedModel, ServingSettings,
    timeout_error,
};
pub use request::{InferRequest, InferResponse, StepTrace};
pub use span::Span;
