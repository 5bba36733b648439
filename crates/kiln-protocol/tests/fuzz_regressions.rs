//! Replays the fuzzers' seeds and every input that ever crashed a fuzz target
//! (fuzz/seeds/<target>, fuzz/regressions/<target>) through the decoders, with the same
//! invariants the fuzz targets assert: no panic, and every accepted tensor holds as many
//! elements as its shape says.

use std::path::PathBuf;

use kiln_core::{Tensor, element_count};
use prost::Message;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable fuzz input");
            out.push((entry.path(), bytes));
        }
    }
    out
}

fn consistent(t: &Tensor) {
    assert_eq!(element_count(&t.shape), Some(t.data.len()), "tensor '{}'", t.name);
}

#[test]
fn v2_json_request_inputs() {
    let all = inputs("v2_json_request");
    assert!(!all.is_empty(), "fuzz/seeds/v2_json_request is empty");
    for (_path, body) in all {
        if let Ok(request) = kiln_protocol::v2::decode_request(&body, None) {
            request.inputs.iter().for_each(consistent);
        }
    }
}

#[test]
fn v2_binary_request_inputs() {
    let all = inputs("v2_binary_request");
    assert!(!all.is_empty(), "fuzz/seeds/v2_binary_request is empty");
    let mut decoded = 0;
    for (_path, data) in all {
        let Some((len, body)) = data.split_first_chunk::<2>() else { continue };
        if let Ok(request) = kiln_protocol::v2::decode_request(body, Some(usize::from(u16::from_le_bytes(*len)))) {
            request.inputs.iter().for_each(consistent);
            decoded += 1;
        }
    }
    assert!(decoded > 0, "the binary seed no longer decodes");
}

#[test]
fn grpc_infer_request_inputs() {
    let all = inputs("grpc_infer_request");
    assert!(!all.is_empty(), "fuzz/seeds/grpc_infer_request is empty");
    for (_path, data) in all {
        let Ok(request) = kiln_protocol::proto::ModelInferRequest::decode(&data[..]) else { continue };
        if let Ok(tensors) = kiln_protocol::grpc::decode_inputs(request.inputs, &request.raw_input_contents) {
            tensors.iter().for_each(consistent);
        }
    }
}
