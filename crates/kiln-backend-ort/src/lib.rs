//! kiln-backend-ort: runs ONNX models on ONNX Runtime through the `ort` crate.
//!
//! It owns finding and loading `libonnxruntime` ([`runtime`]), building one session per
//! model instance ([`PreparedModel`], [`OrtInstance`]), converting kiln tensors to ONNX Runtime
//! values and back, and reading/rewriting ONNX files ([`onnx_proto`]): scikit-learn's ZipMap
//! outputs become plain FP32 tensors at load time.
//!
//! It knows nothing of repositories, queues or protocols.

pub mod onnx_build;
pub mod onnx_proto;
pub mod runtime;
mod session;

pub use session::{OrtInstance, PreparedModel, SessionOptions};
