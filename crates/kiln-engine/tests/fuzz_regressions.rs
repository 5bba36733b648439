//! Replays the fuzzers' seeds and every input that ever crashed the config.toml fuzz target
//! (fuzz/seeds/model_config, fuzz/regressions/model_config): parsing never panics and a valid
//! config gives usable settings. (pipeline.toml inputs need ONNX Runtime models; they are
//! replayed by `bash scripts/fuzz.sh`, whose corpus includes the regressions.)

use std::path::PathBuf;

#[test]
fn model_config_inputs() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut seen = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join("model_config")) else { continue };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable fuzz input");
            seen += 1;
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            if let Ok(config) = kiln_repository::config::ModelConfig::parse(text) {
                let _ = config.max_queue_delay();
                assert!(config.max_queue_size() > 0);
                if config.dynamic_batching() {
                    assert!(config.max_batch_size() > 0);
                }
            }
        }
    }
    assert!(seen > 0, "fuzz/seeds/model_config is empty");
}
