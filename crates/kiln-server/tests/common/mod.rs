//! Shared helpers for the server's integration tests: a repository with the demo and test
//! models, and a real server on an ephemeral port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_engine::Engine;
use kiln_server::{BoundServer, ServerConfig};
use tokio::sync::oneshot;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A temporary repository holding the demo models and the test models.
pub fn test_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&root().join("examples/models"), dir.path());
    copy_dir(&root().join("testdata/models"), dir.path());
    dir
}

/// A running server; dropping it stops the server.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    _repository: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServerConfig {
            http_port: 0,
            grpc_port: 0,
            limits: kiln_server::limits::RequestLimits { max_body_bytes: 1 << 20, ..Default::default() },
            ..ServerConfig::default()
        })
        .await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime (run scripts/setup-venv.sh)");
        let repository = test_repository();
        let path = repository.path().to_path_buf();
        let engine = tokio::task::spawn_blocking(move || Engine::load_repository(&path))
            .await
            .expect("join")
            .expect("repository loads");
        let server = BoundServer::bind(&config, engine).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            client: kiln_protocol::client::http_client_builder().build().expect("HTTP client"),
            stop: Some(stop),
            _repository: repository,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// POSTs raw bytes with no Content-Type (as tritonclient does).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, header_length: Option<usize>) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(n) = header_length {
            req = req.header("Inference-Header-Content-Length", n.to_string());
        }
        req.send().await.expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.post_raw(path, serde_json::to_vec(body).expect("json"), None).await;
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Asserts that the server still answers a normal inference.
    pub async fn assert_still_serving(&self) {
        let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
        let (status, v) = self.post_json("/v2/models/iris/infer", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["outputs"][0]["data"][0], "setosa");
    }
}

pub fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join(format!("examples/fixtures/{name}.json"))).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}
