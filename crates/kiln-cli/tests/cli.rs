//! The real `kiln` binary: serve (start, answer, stop on SIGTERM), predict, inspect, and
//! the messages a user gets when something is missing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let mut child = kiln()
        .args(["serve", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-format", "json"])
        .arg(root().join("examples/models"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let started = Instant::now();
    let addr = loop {
        let line = lines.next().expect("kiln exited before listening").expect("line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if let Some(rest) = event["message"].as_str().and_then(|m| m.strip_prefix("kiln listening on http://")) {
            assert!(event["startup_ms"].as_u64().is_some(), "{line}");
            break rest.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no listening line");
    };
    let body = r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let r = client.post(format!("http://{addr}/v2/models/iris/infer")).body(body).send().expect("infer");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().expect("json");
    assert_eq!(v["outputs"][0]["data"][0], "setosa");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "kiln should exit 0 after SIGTERM, got {exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("kiln stopped")), "{rest:?}");
}

#[test]
fn predict_runs_a_repository_model_once() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("examples/fixtures/fraud.json")).expect("fixture"))
            .expect("json");
    let rows = &fixture["inputs"].as_array().expect("rows")[..3];
    let request = serde_json::json!({"id": "cli", "inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "data": rows}]});
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("request.json");
    std::fs::write(&file, request.to_string()).expect("write");
    let out = kiln()
        .arg("predict")
        .arg(root().join("examples/models/fraud"))
        .arg("--input")
        .arg(&file)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("response json");
    assert_eq!(v["id"], "cli");
    assert_eq!(v["outputs"][0]["data"], serde_json::json!(fixture["labels"].as_array().expect("labels")[..3]));

    // A bad request is a clear error and a non-zero exit, not a panic.
    let out = kiln()
        .arg("predict")
        .arg(root().join("examples/models/fraud/1/model.onnx"))
        .arg("--input")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#)?;
            c.wait_with_output()
        })
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("input 'input': expected shape [-1, 30] (-1 = any size), got [1, 2]"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn inspect_shows_signature_opsets_and_ops() {
    let out =
        kiln().args(["inspect", "--json"]).arg(root().join("examples/models/iris/1/model.onnx")).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["outputs"][0]["datatype"], "BYTES");
    assert_eq!(v["labels"]["output_probability"], serde_json::json!(["setosa", "versicolor", "virginica"]));
    assert_eq!(v["ops"]["ai.onnx.ml:TreeEnsembleClassifier"], 1);
    assert!(v["opsets"].as_array().expect("opsets").iter().any(|o| o["domain"] == "ai.onnx.ml"));
    let out = kiln().args(["inspect"]).arg(root().join("testdata/models/broken/1/model.onnx")).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid ONNX model"));
}

#[test]
fn a_missing_runtime_is_explained_not_a_panic() {
    // A copy of the binary outside the checkout, with no way to find ONNX Runtime.
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("kiln");
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &exe).expect("copy");
    let out = Command::new(&exe)
        .args(["serve", "."])
        .current_dir(dir.path())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_ONNXRUNTIME")
        .env("PATH", dir.path()) // no python3 to ask
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ONNX Runtime library not found"), "{stderr}");
    assert!(stderr.contains("pip install onnxruntime==1.31.1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = kiln().args(["--onnxruntime", "/nonexistent/libonnxruntime.so", "serve", "."]).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--onnxruntime=/nonexistent/libonnxruntime.so (no such file)"), "{stderr}");

    let not_a_library = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&not_a_library, b"junk").expect("write");
    let out = kiln().arg("--onnxruntime").arg(&not_a_library).args(["serve", "."]).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be loaded"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_repository_is_explained() {
    let out = kiln()
        .args(["serve", "/nonexistent/models", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model repository /nonexistent/models is not a folder"), "{stderr}");
}
