//! The KServe v2 REST decoder on arbitrary JSON bodies: never panics, and every tensor it
//! accepts holds exactly as many elements as its shape says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = kiln_protocol::v2::decode_request(body, None) {
        for t in &request.inputs {
            assert_eq!(kiln_core::element_count(&t.shape), Some(t.data.len()), "tensor '{}'", t.name);
        }
    }
});
