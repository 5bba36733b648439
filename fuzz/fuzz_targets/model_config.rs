//! A model folder's config.toml: parsing and validation never panic, and a config that
//! validates yields settings the scheduler can use.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = kiln_repository::config::ModelConfig::parse(text) {
        let _ = config.max_queue_delay();
        assert!(config.max_queue_size() > 0);
        if config.dynamic_batching() {
            assert!(config.max_batch_size() > 0);
        }
    }
});
