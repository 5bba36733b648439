//! kiln-protocol: the wire formats kiln speaks and the clients that call other servers.
//!
//! [`v2`] is the KServe v2 / Open Inference Protocol REST encoding (JSON tensors and the binary
//! tensor extension), [`proto`] the gRPC messages and service generated from
//! `proto/inference.proto`, [`grpc`] their tensor decoding, and [`client`] the outbound side —
//! KServe v2 over REST/gRPC and OpenAI-compatible endpoints — used by pipelines' remote steps
//! and by `kiln bench`. It knows nothing of the engine: it turns bytes into
//! [`kiln_core::Tensor`]s and back. It never listens on a socket (that is kiln-server's job).

pub mod client;
pub mod grpc;
mod nonfinite;
pub mod v2;

/// The code generated from proto/inference.proto (messages, service trait, client).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");

    /// The encoded descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}
