//! The gRPC `ModelInferRequest` conversion: protobuf bytes → typed input tensors, from either
//! `raw_input_contents` or the typed `contents` fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = kiln_protocol::proto::ModelInferRequest::decode(data) else { return };
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return;
    }
    for (i, input) in request.inputs.into_iter().enumerate() {
        let decoded = kiln_protocol::grpc::decode_tensor(
            input.name,
            &input.datatype,
            &input.shape,
            raw.get(i).map(|b| &b[..]),
            input.contents,
        );
        if let Ok(t) = decoded {
            assert_eq!(kiln_core::element_count(&t.shape), Some(t.data.len()), "tensor '{}'", t.name);
        }
    }
});
