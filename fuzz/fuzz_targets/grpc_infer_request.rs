//! The gRPC `ModelInferRequest` conversion: protobuf bytes → typed input tensors, from either
//! `raw_input_contents` or the typed `contents` fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = kiln_protocol::proto::ModelInferRequest::decode(data) else { return };
    // The very function the gRPC server calls.
    if let Ok(tensors) = kiln_protocol::grpc::decode_inputs(request.inputs, &request.raw_input_contents) {
        for t in &tensors {
            assert_eq!(kiln_core::element_count(&t.shape), Some(t.data.len()), "tensor '{}'", t.name);
        }
    }
});
