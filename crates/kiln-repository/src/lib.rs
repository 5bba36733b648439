//! kiln-repository: the model repository as files — the folder layout
//! (`REPO/<model>/<version>/model.onnx`, `model.gguf`, `pipeline.toml`), `config.toml`
//! ([`config::ModelConfig`], checked whole), Triton's `config.pbtxt` ([`pbtxt`], [`triton_config`],
//! ensembles translated to pipeline.toml text) and the stamps that tell a change.
//!
//! It reads files and parses them, nothing more: no async, no model is loaded, no runtime is
//! touched, no request is seen (kiln-engine does those). The fuzz targets for configuration
//! parse through it.

pub mod config;
pub mod layout;
pub mod pbtxt;
pub mod triton_config;

pub use config::ModelConfig;
pub use layout::RepositoryError;
