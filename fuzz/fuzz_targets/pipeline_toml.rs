//! pipeline.toml: parsing and validation against real models never panic. Steps may name
//! `fraud`, `fraud_lr` or `iris` from examples/models, loaded once on ONNX Runtime
//! (ORT_DYLIB_PATH must point at libonnxruntime).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kiln_pipeline::{ModelResolver, Pipeline};
use kiln_serving::{EngineError, ModelHandle};
use libfuzzer_sys::fuzz_target;

struct Examples(HashMap<String, ModelHandle>);

impl ModelResolver for Examples {
    fn resolve(&self, name: &str, _version: Option<&str>) -> Result<ModelHandle, EngineError> {
        self.0.get(name).cloned().ok_or_else(|| EngineError::ModelNotFound(name.to_string()))
    }
}

fn examples() -> Arc<Examples> {
    static MODELS: OnceLock<Arc<Examples>> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime (set ORT_DYLIB_PATH)");
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
            let models = ["fraud", "fraud_lr", "iris"]
                .into_iter()
                .map(|name| {
                    let model = kiln_engine::repository::load_path(&root.join(name)).expect("example model loads");
                    (name.to_string(), Arc::new(model))
                })
                .collect();
            Arc::new(Examples(models))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Pipeline::parse("fuzzed", text, examples());
});
