//! kiln-core: the vocabulary every other kiln crate speaks.
//!
//! It owns the KServe v2 datatypes ([`DataType`]), concrete tensors ([`Tensor`],
//! [`TensorData`]), what a model declares ([`TensorSpec`], [`ModelSignature`]), the checks a
//! request must pass before it reaches a backend ([`ModelSignature::validate_inputs`]) and the
//! [`ModelInstance`] trait that backends implement.
//!
//! It must stay free of I/O, of protocols (no JSON, no HTTP) and of any particular runtime:
//! backends and transports depend on it, never the other way round.

mod datatype;
mod signature;
mod tensor;

pub use datatype::DataType;
pub use signature::{ModelSignature, TensorSpec, ValidationError};
pub use tensor::{ShapeError, Tensor, TensorData, TensorDataRef, TensorLike, TensorView, element_count};

/// A failure inside a backend while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model file could not be read or parsed, or the runtime refused it.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The runtime failed while running the model on inputs that passed validation.
    #[error("inference failed: {0}")]
    Run(String),
    /// The inputs passed the signature checks but the backend cannot accept their values
    /// (for example BYTES that are not UTF-8 for an ONNX string tensor).
    #[error("{0}")]
    InvalidInput(String),
    /// The model uses a type kiln cannot carry over the v2 protocol.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An output the backend made whose elements do not match its shape.
    #[error("inference failed: {0}")]
    Shape(#[from] ShapeError),
}

/// One loaded copy of a model that can run inferences.
///
/// Runtimes such as ONNX Runtime need exclusive access to run a session (`&mut self`), so
/// each instance is owned by exactly one worker thread; parallelism comes from several
/// instances, not from sharing one.
pub trait ModelInstance: Send {
    /// Runs the model. `inputs` have already been validated against the signature;
    /// `outputs` names the outputs wanted, in the order they must be returned.
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, BackendError>;

    /// Runs the model on borrowed inputs. Backends that can read caller memory in place
    /// override this; the default copies.
    fn run_views(&mut self, inputs: &[TensorView<'_>], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let owned: Vec<Tensor> = inputs
            .iter()
            .map(|v| Tensor { name: v.name.to_string(), shape: v.shape.clone(), data: v.data.to_owned_data() })
            .collect();
        self.run(&owned, outputs)
    }
}
