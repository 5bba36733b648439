//! config.toml as the engine applies it: kiln-repository's parsed [`ModelConfig`]
//! and the settings it gives the engines it names — kiln-text's and kiln-llm's.

use kiln_repository::config::{ModelConfig, Pooling, TextConfig};

/// The settings of a `text_embedding` model's `[text]` table, on `threads` intra-op threads.
pub fn text_settings(text: &TextConfig, threads: usize) -> kiln_text::TextSettings {
    let d = kiln_text::TextSettings::default();
    kiln_text::TextSettings {
        pooling: match text.pooling {
            Some(Pooling::Mean) => kiln_text::Pooling::Mean,
            Some(Pooling::Cls) => kiln_text::Pooling::Cls,
            None => d.pooling,
        },
        normalize: text.normalize.unwrap_or(d.normalize),
        max_length: text.max_length.unwrap_or(d.max_length),
        max_batch_tokens: text.max_batch_tokens.unwrap_or(d.max_batch_tokens),
        max_input_bytes: text.max_input_bytes.unwrap_or(d.max_input_bytes),
        intra_threads: threads,
    }
}

/// The settings of an `llm` model.
///
/// `folder` is the model folder a `.jinja` `chat_template` is read from (None: a bare GGUF file,
/// which can name only a built-in template).
#[cfg(feature = "llm")]
pub fn llm_settings(config: &ModelConfig, folder: Option<&std::path::Path>) -> Result<kiln_llm::LlmSettings, String> {
    let d = kiln_llm::LlmSettings::default();
    let llm = config.llm.clone().unwrap_or_default();
    let chat_template = match llm.chat_template {
        None => None,
        Some(name) if name.ends_with(".jinja") => {
            let folder =
                folder.ok_or_else(|| format!("[llm] chat_template '{name}' is a file: load the model folder"))?;
            let path = folder.join(&name);
            kiln_repository::layout::confine(folder, &path)?;
            let source = std::fs::read_to_string(&path)
                .map_err(|e| format!("[llm] chat_template: cannot read {}: {e}", path.display()))?;
            Some(kiln_llm::TemplateChoice::File { name, source })
        }
        Some(name) => Some(kiln_llm::TemplateChoice::Named(name)),
    };
    Ok(kiln_llm::LlmSettings {
        threads: config.threads.unwrap_or(d.threads),
        context_length: llm.context_length,
        max_sequences: llm.max_sequences.unwrap_or(d.max_sequences),
        max_queue_size: config.max_queue_size.unwrap_or(d.max_queue_size),
        max_tokens: llm.max_tokens.unwrap_or(d.max_tokens),
        temperature: llm.temperature.unwrap_or(d.temperature),
        top_p: llm.top_p.unwrap_or(d.top_p),
        gpu_layers: llm.gpu_layers.unwrap_or(d.gpu_layers),
        flash_attention: llm.flash_attention.unwrap_or(d.flash_attention),
        prefix_cache: llm.prefix_cache.unwrap_or(d.prefix_cache),
        special_tokens_in_content: llm.special_tokens_in_content.unwrap_or(d.special_tokens_in_content),
        chat_template,
    })
}

#[cfg(all(test, feature = "llm"))]
mod tests {
    use super::*;

    #[test]
    fn llm_settings_take_config_toml_and_kiln_defaults() {
        let config = ModelConfig::parse(
            "kind = \"llm\"\nthreads = 4\nmax_queue_size = 9\n[llm]\ncontext_length = 2048\nmax_sequences = 6\ntemperature = 0.0",
        )
        .expect("parses");
        let s = llm_settings(&config, None).expect("settings");
        assert_eq!((s.threads, s.max_queue_size, s.context_length, s.max_sequences), (4, 9, Some(2048), 6));
        assert_eq!((s.temperature, s.max_tokens, s.flash_attention), (0.0, 256, false));
    }
}
