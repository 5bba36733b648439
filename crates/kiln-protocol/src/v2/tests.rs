//! The v2 REST codec on edge cases: every refusal names the tensor and the element.

#[test]
fn out_of_range_floats_and_ragged_data_are_refused_by_position() {
    let one = |data: &str, shape: &str, datatype: &str| {
        let body = format!(r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#);
        decode_request(body.as_bytes(), None).map(|r| r.inputs[0].data.clone())
    };
    let e = one("[1.0, 1e39]", "[2]", "FP32").expect_err("out of range");
    assert_eq!(e.0, "input 'x': element 1 (1e+39) is out of range for FP32");
    let e = one("[[1.0], [-1e39]]", "[2, 1]", "FP32").expect_err("out of range");
    assert_eq!(e.0, "input 'x': element 1 (-1e+39) is out of range for FP32");
    let e = one("[70000.0]", "[1]", "FP16").expect_err("out of range");
    assert_eq!(e.0, "input 'x': element 0 (70000.0) is out of range for FP16");
    assert_eq!(one("[1e39]", "[1]", "FP64").expect("fits"), TensorData::Fp64(vec![1e39]));
    assert_eq!(one("[Infinity]", "[1]", "FP32").expect("explicit"), TensorData::Fp32(vec![f32::INFINITY]));
    let ragged = format!("[[{}], [{}, [1]]]", ["1"; 30].join(","), ["1"; 29].join(","));
    let e = one(&ragged, "[2, 30]", "FP32").expect_err("ragged");
    assert_eq!(e.0, "input 'x': 'data' is ragged: values at depths 2 and 3 (element 59)");
    let e = one("[[1, 2], [3]]", "[3]", "INT64").expect_err("ragged");
    assert_eq!(e.0, "input 'x': 'data' is ragged: arrays at depth 1 hold 2 and 1 elements");
    assert_eq!(one("[[1, 2], [3, 4]]", "[2, 2]", "INT64").expect("grid"), TensorData::Int64(vec![1, 2, 3, 4]));
}

use super::*;
use serde_json::json;

fn decode(text: &str) -> Result<DecodedRequest, DecodeError> {
    decode_request(text.as_bytes(), None)
}

#[test]
fn json_tensors_flat_and_nested() {
    let req = decode(r#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#)
        .expect("valid");
    assert_eq!(req.id.as_deref(), Some("a"));
    assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.5, 4.0]));
    let req = decode(r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","é"]}]}"#).expect("valid");
    assert_eq!(req.inputs[0].data, TensorData::Bytes(vec![b"a".to_vec(), "é".as_bytes().to_vec()]));
}

#[test]
fn precise_json_errors() {
    let err = decode(r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]}]}"#).unwrap_err();
    assert_eq!(err.0, "input 'x': the shape needs 6 elements, but 'data' holds 5");
    let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}"#).unwrap_err();
    assert_eq!(err.0, "input 'x': element 0 (300) is not a valid UINT8");
    let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#).unwrap_err();
    assert_eq!(err.0, "input 'x': element 0 (1.5) is not a valid INT32");
    let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#).unwrap_err();
    assert!(err.0.starts_with("input 'x': unknown datatype 'FLOAT'"), "{}", err.0);
    let err = decode(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
    assert!(err.0.contains("negative dimension"), "{}", err.0);
    let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2,3]}]}"#).unwrap_err();
    assert!(err.0.contains("more elements than the shape's 1"), "{}", err.0);
    let err = decode("{\"inputs\": [").unwrap_err();
    assert!(err.0.starts_with("malformed inference request JSON"), "{}", err.0);
    let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#).unwrap_err();
    assert!(err.0.contains("neither 'data' nor binary_data_size"), "{}", err.0);
    let huge =
        format!(r#"{{"inputs":[{{"name":"x","shape":[{},{}],"datatype":"FP32","data":[1]}}]}}"#, u64::MAX / 2, 8);
    assert!(decode(&huge).unwrap_err().0.contains("too large"));
}

fn binary_body(header: &str, data: &[u8]) -> Vec<u8> {
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(data);
    body
}

#[test]
fn binary_tensors() {
    let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
    let mut data = Vec::new();
    data.extend_from_slice(&1.5f32.to_le_bytes());
    data.extend_from_slice(&(-2.0f32).to_le_bytes());
    data.extend_from_slice(&encode_binary(&TensorData::Bytes(vec![b"abc".to_vec(), vec![]])));
    let req = decode_request(&binary_body(header, &data), Some(header.len())).expect("valid");
    assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
    assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"abc".to_vec(), vec![]]));
    assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: true, classification: None }]);
}

#[test]
fn binary_errors() {
    let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
    let err = decode_request(&binary_body(header, &[0; 5]), Some(header.len())).unwrap_err();
    assert_eq!(err.0, "input 'x': binary_data_size is 8, but only 5 bytes of binary data are left in the body");
    let err = decode_request(&binary_body(header, &[0; 12]), Some(header.len())).unwrap_err();
    assert!(err.0.contains("4 bytes of binary data follow"), "{}", err.0);
    let err = decode_request(header.as_bytes(), Some(10_000)).unwrap_err();
    assert!(err.0.contains("Inference-Header-Content-Length is 10000"), "{}", err.0);
    let big = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":18446744073709551615}}]}"#;
    let err = decode_request(&binary_body(big, &[0; 8]), Some(big.len())).unwrap_err();
    assert!(err.0.contains("only 8 bytes"), "{}", err.0);
    let wrong = r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
    let err = decode_request(&binary_body(wrong, &[0; 8]), Some(wrong.len())).unwrap_err();
    assert_eq!(err.0, "input 'x': FP32 with 3 elements needs 12 bytes, but binary_data_size is 8");
    let s = r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
    let err = decode_request(&binary_body(s, &[200, 0, 0, 0, 1, 2]), Some(s.len())).unwrap_err();
    assert!(err.0.contains("declares 200 bytes"), "{}", err.0);
}

#[test]
fn every_datatype_survives_binary_encoding() {
    let all = [
        TensorData::Bool(vec![true, false]),
        TensorData::Uint8(vec![0, 255]),
        TensorData::Uint16(vec![1, 65535]),
        TensorData::Uint32(vec![1, u32::MAX]),
        TensorData::Uint64(vec![1, u64::MAX]),
        TensorData::Int8(vec![-128, 127]),
        TensorData::Int16(vec![-1, i16::MAX]),
        TensorData::Int32(vec![i32::MIN, 7]),
        TensorData::Int64(vec![i64::MIN, 7]),
        TensorData::Fp16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)]),
        TensorData::Fp32(vec![0.1, f32::MAX]),
        TensorData::Fp64(vec![0.1, f64::MIN]),
        TensorData::Bytes(vec![b"x".to_vec(), vec![0, 159]]),
    ];
    for data in all {
        let dt = data.datatype();
        let bytes = encode_binary(&data);
        assert_eq!(decode_binary("t", dt, 2, &bytes).expect("decodes"), data, "{dt}");
    }
}

#[test]
fn response_json_and_binary() {
    let y = Tensor::new("y", vec![2], TensorData::Fp32(vec![0.25, 1.0])).expect("tensor");
    let l = Tensor::new("l", vec![2], TensorData::Int64(vec![1, 0])).expect("tensor");
    let r = encode_response("m", 3, Some("req-1"), None, &[(y.clone(), false), (l.clone(), true)]);
    let v: Value = serde_json::from_slice(&r.json).expect("json");
    assert_eq!(v["model_version"], "3");
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["outputs"][0]["data"], json!([0.25, 1.0]));
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 16);
    assert_eq!(r.binary, encode_binary(&l.data));
}

#[test]
fn nan_and_infinity_as_bare_tokens_both_ways() {
    let body = r#"{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","data":[NaN,Infinity,-Infinity,0.5]},
        {"name":"s","shape":[1],"datatype":"BYTES","data":["NaN"]}]}"#;
    let req = decode(body).expect("Python's json.dumps writes these tokens");
    let TensorData::Fp32(x) = &req.inputs[0].data else { panic!("fp32") };
    assert!(x[0].is_nan());
    assert_eq!(x[1..], [f32::INFINITY, f32::NEG_INFINITY, 0.5]);
    assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"NaN".to_vec()]), "a string stays a string");
    let err = decode(r#"{"inputs":[{"name":"i","shape":[1],"datatype":"INT64","data":[NaN]}]}"#).unwrap_err();
    assert_eq!(err.0, "input 'i': element 0 (NaN) is not a valid INT64");
    let err = decode(r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":[Infinity]}]}"#).unwrap_err();
    assert_eq!(err.0, "input 's': element 0 (Infinity) is not a valid BYTES");

    let y = Tensor::new("y", vec![3], TensorData::Fp64(vec![f64::NAN, -1.5, f64::NEG_INFINITY])).expect("tensor");
    let h = Tensor::new("h", vec![1], TensorData::Fp16(vec![half::f16::INFINITY])).expect("tensor");
    let r = encode_response("m", 1, None, None, &[(y, false), (h, false)]);
    let text = String::from_utf8(r.json.clone()).expect("utf-8");
    assert!(text.contains(r#""data":[NaN,-1.5,-Infinity]"#), "{text}");
    assert!(text.contains(r#""data":[Infinity]"#), "{text}");
    let back = decode_response(&r.json, None).expect("kiln reads its own answer");
    assert!(matches!(&back[0].data, TensorData::Fp64(v) if v[0].is_nan() && v[1..] == [-1.5, f64::NEG_INFINITY]));
}

#[test]
fn client_side_round_trip() {
    let x = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![0.1, f32::NAN])).expect("tensor");
    let s = Tensor::new("s", vec![1], TensorData::Bytes(vec![b"hi".to_vec()])).expect("tensor");
    let (header_len, body) = encode_request(&[x.clone(), s.clone()], &["y".into()]);
    let req = decode_request(&body, Some(header_len)).expect("a server decodes it");
    assert_eq!(req.inputs[1], s);
    assert!(matches!(&req.inputs[0].data, TensorData::Fp32(v) if v[0] == 0.1 && v[1].is_nan()));
    assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: true, classification: None }]);
    let r = encode_response("m", 1, None, None, &[(s.clone(), true), (x.clone(), false)]);
    let mut answer = r.json.clone();
    answer.extend_from_slice(&r.binary);
    let outputs = decode_response(&answer, Some(r.json.len())).expect("decodes");
    assert_eq!(outputs[0], s);
    let err =
        decode_response(b"{\"outputs\":[{\"name\":\"y\",\"shape\":[2],\"datatype\":\"FP32\",\"data\":[1]}]}", None)
            .unwrap_err();
    assert_eq!(err.0, "output 'y': the shape needs 2 elements, but 'data' holds 1");
}
