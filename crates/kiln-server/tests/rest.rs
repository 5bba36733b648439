//! The KServe v2 REST API against a real server on an ephemeral port, with the real ONNX
//! Runtime and the demo models: every endpoint, every datatype, JSON and binary bodies,
//! parity with scikit-learn, and each error path.

mod common;

use common::{TestServer, fixture};
use serde_json::{Value, json};

fn flat_f64(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat_f64).collect(),
        other => vec![other.as_f64().expect("number")],
    }
}

fn fixture_request(fx: &Value) -> Value {
    let rows = fx["inputs"].as_array().expect("rows");
    let cols = rows[0].as_array().expect("row").len();
    json!({"id": "parity", "inputs": [{"name": fx["input"], "shape": [rows.len(), cols], "datatype": "FP32", "data": fx["inputs"]}]})
}

fn labels_as_strings(v: &Value) -> Vec<String> {
    v.as_array().expect("labels").iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let (status, meta) = s.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "kiln");
    assert!(meta["extensions"].as_array().expect("list").contains(&json!("binary_tensor_data")));
    let (status, body) = s.get("/v3/nothing").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().expect("error").contains("no endpoint GET /v3/nothing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_readiness() {
    let s = TestServer::start().await;
    let (status, meta) = s.get("/v2/models/fraud").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["name"], "fraud");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]));
    assert_eq!(meta["outputs"][1]["name"], "probabilities");
    assert_eq!(meta["outputs"][1]["labels"], json!(["legit", "fraud"]));
    assert_eq!(meta["instances"], 2);

    let (_, meta) = s.get("/v2/models/breast_cancer").await;
    assert_eq!(
        meta["outputs"][1],
        json!({"name": "output_probability", "datatype": "FP32", "shape": [-1, 2], "labels": ["0", "1"]})
    );

    assert_eq!(s.get("/v2/models/fraud/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/fraud/versions/1").await.0, 200);
    assert_eq!(s.get("/v2/models/fraud/versions/1/ready").await.0, 200);

    // Two versions on disk, the default policy serves the highest.
    let (status, meta) = s.get("/v2/models/fixed_add").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["2"]));
    let (status, body) = s.get("/v2/models/fixed_add/versions/1").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "model 'fixed_add' has no version 1; served versions: [2]");
    assert_eq!(s.get("/v2/models/fixed_add/versions/x/ready").await.0, 404);

    let (status, body) = s.get("/v2/models/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "unknown model 'nope'");
    assert_eq!(s.get("/v2/models/nope/ready").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_is_reported_and_the_others_serve() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/v2/models/broken").await;
    assert_eq!(status, 503);
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("model 'broken' is not available: version 1: cannot load model"), "{error}");
    assert_eq!(s.get("/v2/models/broken/ready").await.0, 503);
    let (status, _) = s.post_json("/v2/models/broken/infer", &json!({"inputs": []})).await;
    assert_eq!(status, 503);

    let r = s.client.post(s.url("/v2/repository/index")).send().await.expect("index");
    assert_eq!(r.status(), 200);
    let index: Value = r.json().await.expect("json");
    let rows = index.as_array().expect("rows");
    let broken = rows.iter().find(|r| r["name"] == "broken").expect("broken listed");
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(broken["reason"].as_str().expect("reason").contains("cannot load model"));
    let fraud = rows.iter().find(|r| r["name"] == "fraud").expect("fraud listed");
    assert_eq!(fraud["state"], "READY");
    assert_eq!(fraud["version"], "1");
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_inference_matches_scikit_learn_for_every_demo_model() {
    let s = TestServer::start().await;
    for name in ["fraud", "breast_cancer", "digits_mlp", "iris"] {
        let fx = fixture(name);
        let (status, v) = s.post_json(&format!("/v2/models/{name}/infer"), &fixture_request(&fx)).await;
        assert_eq!(status, 200, "{name}: {v}");
        assert_eq!(v["id"], "parity");
        assert_eq!(v["model_name"], name);
        assert_eq!(v["model_version"], "1");
        let outputs = v["outputs"].as_array().expect("outputs");
        assert_eq!(labels_as_strings(&outputs[0]["data"]), labels_as_strings(&fx["labels"]), "{name}: labels");
        let diff = max_diff(&flat_f64(&outputs[1]["data"]), &flat_f64(&fx["probabilities"]));
        assert!(diff <= 1e-5, "{name}: probabilities differ by {diff}");
    }
}

fn split_binary(bytes: &[u8], header_length: usize) -> (Value, Vec<u8>) {
    let (head, rest) = bytes.split_at(header_length);
    (serde_json::from_slice(head).expect("json header"), rest.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_inference_matches_scikit_learn() {
    let s = TestServer::start().await;
    let fx = fixture("fraud");
    let rows = fx["inputs"].as_array().expect("rows").len();
    let data: Vec<u8> = flat_f64(&fx["inputs"]).iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label", "parameters": {"binary_data": false}}]
    });
    let mut body = serde_json::to_vec(&header).expect("json");
    let n = body.len();
    body.extend_from_slice(&data);
    let r = s.post_raw("/v2/models/fraud/infer", body, Some(n)).await;
    assert_eq!(r.status(), 200);
    let length: usize =
        r.headers()["inference-header-content-length"].to_str().expect("ascii").parse().expect("number");
    let bytes = r.bytes().await.expect("body");
    let (head, binary) = split_binary(&bytes, length);
    // Outputs come back in the order they were requested.
    assert_eq!(head["outputs"][0]["name"], "probabilities");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], rows * 2 * 4);
    assert_eq!(head["outputs"][1]["name"], "label");
    let proba: Vec<f64> =
        binary.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4")))).collect();
    assert!(max_diff(&proba, &flat_f64(&fx["probabilities"])) <= 1e-5);
    assert_eq!(labels_as_strings(&head["outputs"][1]["data"]), labels_as_strings(&fx["labels"]));

    // binary_data_output asks for every output in binary.
    let req = json!({"parameters": {"binary_data_output": true}, "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let r = s.post_raw("/v2/models/iris/infer", serde_json::to_vec(&req).expect("json"), None).await;
    assert_eq!(r.status(), 200);
    let length: usize =
        r.headers()["inference-header-content-length"].to_str().expect("ascii").parse().expect("number");
    let bytes = r.bytes().await.expect("body");
    let (head, binary) = split_binary(&bytes, length);
    assert_eq!(head["parameters"]["binary_data_output"], true);
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 4 + 6);
    assert_eq!(&binary[..10], b"\x06\x00\x00\x00setosa");
}

fn all_types_request(binary: bool) -> (Vec<u8>, Option<usize>, Vec<(String, Value)>) {
    let cases: Vec<(&str, Value)> = vec![
        ("BOOL", json!([true, false, true, false, false, true])),
        ("UINT8", json!([0, 1, 2, 3, 254, 255])),
        ("UINT16", json!([0, 1, 2, 3, 65534, 65535])),
        ("UINT32", json!([0, 1, 2, 3, 4, 4_294_967_295u64])),
        ("UINT64", json!([0, 1, 2, 3, 4, u64::MAX])),
        ("INT8", json!([-128, -1, 0, 1, 2, 127])),
        ("INT16", json!([-32768, -1, 0, 1, 2, 32767])),
        ("INT32", json!([-2_147_483_648i64, -1, 0, 1, 2, 2_147_483_647])),
        ("INT64", json!([i64::MIN, -1, 0, 1, 2, i64::MAX])),
        ("FP16", json!([0.5, -1.0, 2.0, 65504.0, 0.0, 3.25])),
        ("FP32", json!([0.5, -1.0, 1e-30, 3.4e38, 0.0, 2.5])),
        ("FP64", json!([0.5, -1.0, 1e-300, 1e300, 0.0, 2.0])),
        ("BYTES", json!(["a", "", "héllo", "日本", "🙂", "x y"])),
    ];
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut binary_data = Vec::new();
    for (dt, data) in &cases {
        let name = format!("in_{}", dt.to_lowercase());
        if binary {
            let bytes = encode(dt, data);
            inputs.push(
                json!({"name": name, "shape": [2, 3], "datatype": dt, "parameters": {"binary_data_size": bytes.len()}}),
            );
            binary_data.extend_from_slice(&bytes);
        } else {
            inputs.push(json!({"name": name, "shape": [2, 3], "datatype": dt, "data": [data.as_array().expect("a")[..3], data.as_array().expect("a")[3..]]}));
        }
        outputs.push(json!({"name": format!("out_{}", dt.to_lowercase()), "parameters": {"binary_data": false}}));
    }
    let mut body = serde_json::to_vec(&json!({"inputs": inputs, "outputs": outputs})).expect("json");
    let header_length = binary.then_some(body.len());
    body.extend_from_slice(&binary_data);
    let expected = cases.into_iter().map(|(dt, data)| (format!("out_{}", dt.to_lowercase()), data)).collect();
    (body, header_length, expected)
}

fn encode(dt: &str, data: &Value) -> Vec<u8> {
    let items = data.as_array().expect("array");
    items
        .iter()
        .flat_map(|v| -> Vec<u8> {
            match dt {
                "BOOL" => vec![u8::from(v.as_bool().expect("bool"))],
                "UINT8" => vec![v.as_u64().expect("u") as u8],
                "INT8" => vec![v.as_i64().expect("i") as i8 as u8],
                "UINT16" => (v.as_u64().expect("u") as u16).to_le_bytes().to_vec(),
                "INT16" => (v.as_i64().expect("i") as i16).to_le_bytes().to_vec(),
                "UINT32" => (v.as_u64().expect("u") as u32).to_le_bytes().to_vec(),
                "INT32" => (v.as_i64().expect("i") as i32).to_le_bytes().to_vec(),
                "UINT64" => v.as_u64().expect("u").to_le_bytes().to_vec(),
                "INT64" => v.as_i64().expect("i").to_le_bytes().to_vec(),
                "FP16" => half::f16::from_f64(v.as_f64().expect("f")).to_le_bytes().to_vec(),
                "FP32" => (v.as_f64().expect("f") as f32).to_le_bytes().to_vec(),
                "FP64" => v.as_f64().expect("f").to_le_bytes().to_vec(),
                "BYTES" => {
                    let s = v.as_str().expect("s").as_bytes();
                    let mut out = (s.len() as u32).to_le_bytes().to_vec();
                    out.extend_from_slice(s);
                    out
                }
                other => panic!("{other}"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_over_json_and_binary() {
    let s = TestServer::start().await;
    for binary in [false, true] {
        let (body, header_length, expected) = all_types_request(binary);
        let r = s.post_raw("/v2/models/all_types/infer", body, header_length).await;
        assert_eq!(r.status(), 200, "binary={binary}");
        let v: Value = r.json().await.expect("json");
        let outputs = v["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 13);
        for (out, (name, data)) in outputs.iter().zip(&expected) {
            assert_eq!(&out["name"], name);
            assert_eq!(out["shape"], json!([2, 3]), "{name}");
            if name == "out_fp32" {
                // FP32 values come back with f32 precision.
                let got = flat_f64(&out["data"]);
                for (g, w) in got.iter().zip(flat_f64(data)) {
                    assert!((g - w).abs() <= w.abs() * 1e-6, "{name}: {g} vs {w}");
                }
            } else {
                assert_eq!(&out["data"], data, "{name} (binary={binary})");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_outputs_id_and_parameters() {
    let s = TestServer::start().await;
    let body = json!({
        "id": "42", "parameters": {"trace": "abc"},
        "inputs": [{"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
                   {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": [[1, 1, 1], [2, 2, 2]]}],
        "outputs": [{"name": "product"}]
    });
    let (status, v) = s.post_json("/v2/models/fixed_add/versions/2/infer", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], "42");
    assert_eq!(v["parameters"]["trace"], "abc");
    assert_eq!(v["model_version"], "2");
    assert_eq!(
        v["outputs"],
        json!([{"name": "product", "datatype": "FP32", "shape": [2, 3], "data": [1.0, 2.0, 3.0, 8.0, 10.0, 12.0]}])
    );
    let (status, v) = s.post_json("/v2/models/fixed_add/versions/1/infer", &body).await;
    assert_eq!(status, 404, "{v}");
}

async fn expect_400(s: &TestServer, path: &str, body: Vec<u8>, header_length: Option<usize>, needle: &str) {
    let r = s.post_raw(path, body, header_length).await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("error json");
    let error = v["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, 400, "{error}");
    assert!(error.contains(needle), "expected '{needle}' in '{error}'");
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_400s_and_the_server_keeps_serving() {
    let s = TestServer::start().await;
    let path = "/v2/models/fraud/infer";
    let req = |input: Value| serde_json::to_vec(&json!({"inputs": [input]})).expect("json");
    expect_400(&s, path, b"{\"inputs\": [".to_vec(), None, "malformed inference request JSON").await;
    expect_400(&s, path, b"not json at all".to_vec(), None, "malformed inference request JSON").await;
    expect_400(&s, path, Vec::new(), None, "malformed inference request JSON").await;
    expect_400(
        &s,
        path,
        req(json!({"name": "input", "shape": [1, 30], "datatype": "INT64", "data": vec![1; 30]})),
        None,
        "input 'input': expected datatype FP32, got INT64",
    )
    .await;
    expect_400(
        &s,
        path,
        req(json!({"name": "input", "shape": [1, 29], "datatype": "FP32", "data": vec![1.0; 29]})),
        None,
        "input 'input': expected shape [-1, 30] (-1 = any size), got [1, 29]",
    )
    .await;
    expect_400(
        &s,
        path,
        req(json!({"name": "input", "shape": [30], "datatype": "FP32", "data": vec![1.0; 30]})),
        None,
        "expected shape [-1, 30]",
    )
    .await;
    expect_400(
        &s,
        path,
        req(json!({"name": "input", "shape": [2, 30], "datatype": "FP32", "data": vec![1.0; 59]})),
        None,
        "input 'input': the shape needs 60 elements, but 'data' holds 59",
    )
    .await;
    expect_400(
        &s,
        path,
        req(json!({"name": "x", "shape": [1, 30], "datatype": "FP32", "data": vec![1.0; 30]})),
        None,
        "unknown input 'x': the model expects inputs [\"input\"]",
    )
    .await;
    expect_400(
        &s,
        path,
        req(json!({"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![json!("a"); 30]})),
        None,
        "input 'input': element 0 (\"a\") is not a valid FP32",
    )
    .await;
    expect_400(&s, path, serde_json::to_vec(&json!({"inputs": []})).expect("json"), None, "missing input 'input'")
        .await;
    let with_output = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![1.0; 30]}], "outputs": [{"name": "score"}]});
    expect_400(
        &s,
        path,
        serde_json::to_vec(&with_output).expect("json"),
        None,
        "unknown output 'score': the model has outputs [\"label\", \"probabilities\"]",
    )
    .await;

    // Binary body problems.
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}]})).expect("json");
    let n = header.len();
    let mut truncated = header.clone();
    truncated.extend_from_slice(&[0u8; 100]);
    expect_400(&s, path, truncated, Some(n), "binary_data_size is 120, but only 100 bytes of binary data are left")
        .await;
    expect_400(&s, path, header.clone(), Some(n + 5000), "Inference-Header-Content-Length is").await;
    let huge = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [4_000_000_000u64, 30], "datatype": "FP32", "parameters": {"binary_data_size": 480_000_000_000u64}}]})).expect("json");
    let hn = huge.len();
    expect_400(&s, path, huge, Some(hn), "binary_data_size is 480000000000, but only 0 bytes").await;
    let big_shape =
        req(json!({"name": "input", "shape": [1_000_000_000_000u64, 30], "datatype": "FP32", "data": [1.0]}));
    expect_400(&s, path, big_shape, None, "the shape needs 30000000000000 elements, but 'data' holds 1").await;
    let r = s
        .client
        .post(s.url(path))
        .header("Inference-Header-Content-Length", "abc")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);

    // BYTES that are not text cannot feed an ONNX string tensor.
    let (mut body, hl, _) = all_types_request(true);
    let needle = "héllo".as_bytes();
    let pos = body.windows(needle.len()).position(|w| w == needle).expect("héllo in body");
    body[pos + 1] = 0xff;
    expect_400(&s, "/v2/models/all_types/infer", body, hl, "is not valid UTF-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_oversized_bodies() {
    let s = TestServer::start().await;
    let (status, v) = s.post_json("/v2/models/nope/infer", &json!({"inputs": []})).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "unknown model 'nope'");
    // The server answers 413 and closes that connection without reading the rest of the body:
    // a client of its own, so the shared client's pool never reuses the closed connection.
    let once = reqwest::Client::new();
    let r = once.post(s.url("/v2/models/fraud/infer")).body(vec![b' '; (1 << 20) + 1]).send().await.expect("send");
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.expect("json");
    assert!(v["error"].as_str().expect("error").contains("exceeds the limit of 1048576 bytes"), "{v}");
    let r = s.client.get(s.url("/v2/models/fraud/infer")).send().await.expect("send");
    assert_eq!(r.status(), 405);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_what_was_sent() {
    let s = TestServer::start().await;
    let body = json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2, 6.2, 2.9, 4.3, 1.3]}]});
    for _ in 0..4 {
        assert_eq!(s.post_json("/v2/models/iris/infer", &body).await.0, 200);
    }
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(s.post_json("/v2/models/iris/infer", &bad).await.0, 400);
    let (status, v) = s.get("/v2/models/iris/stats").await;
    assert_eq!(status, 200, "{v}");
    let st = &v["model_stats"][0];
    assert_eq!(st["name"], "iris");
    assert_eq!(st["version"], "1");
    assert_eq!(st["inference_stats"]["success"]["count"], 4);
    assert_eq!(st["inference_stats"]["fail"]["count"], 1);
    assert_eq!(st["inference_count"], 8);
    assert_eq!(st["execution_count"], 4);
    assert_eq!(st["inference_stats"]["queue"]["count"], 4);
    assert!(st["inference_stats"]["compute_infer"]["ns"].as_u64().expect("ns") > 0);
    assert!(st["last_inference"].as_u64().expect("ms") > 1_700_000_000_000);
    assert_eq!(s.get("/v2/models/iris/versions/1/stats").await.0, 200);
    assert_eq!(s.get("/v2/models/iris/versions/9/stats").await.0, 404);
    let (_, all) = s.get("/v2/models/stats").await;
    assert!(all["model_stats"].as_array().expect("rows").len() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_unload_need_explicit_mode() {
    let s = TestServer::start().await;
    let r = s.client.post(s.url("/v2/repository/models/iris/unload")).send().await.expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert!(v["error"].as_str().expect("error").contains("needs `--model-control explicit`"), "{v}");
    s.assert_still_serving().await;
}
