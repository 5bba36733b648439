//! The KServe v2 binary tensor extension: a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw tensor data. The first two input bytes choose the header length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, body)) = data.split_first_chunk::<2>() else { return };
    let header_length = usize::from(u16::from_le_bytes(*len));
    if let Ok(request) = kiln_protocol::v2::decode_request(body, Some(header_length)) {
        for t in &request.inputs {
            assert_eq!(kiln_core::element_count(&t.shape), Some(t.data.len()), "tensor '{}'", t.name);
        }
    }
});
