//! `REPO/<model>/config.toml`: the optional per-model settings.
//!
//! Every key is optional; unknown keys are errors (a typo must not be silently ignored).
//! Overrides may narrow what the ONNX file declares (fix a dynamic dimension, name class
//! labels) but never contradict it: a contradiction is a load error for that model.

use std::collections::BTreeMap;

use kiln_core::{DataType, ModelSignature, TensorSpec};
use serde::Deserialize;

/// The parsed `config.toml` of one model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Must equal the folder name when given (the folder name is the model's name).
    pub name: Option<String>,
    /// Only `"onnxruntime"` exists today.
    pub backend: Option<String>,
    /// Model instances, each an ONNX Runtime session on its own worker thread (default 1).
    pub instances: Option<usize>,
    /// ONNX Runtime intra-op threads per instance (default 1).
    pub threads: Option<usize>,
    /// Largest batch (first dimension) a request may carry; 0 or absent = no limit.
    pub max_batch_size: Option<usize>,
    /// Requests that may wait for a free instance before new ones are refused with
    /// "overloaded" (default 1024).
    pub max_queue_size: Option<usize>,
    /// Merge concurrent requests into batches along the first dimension (default: on when
    /// `max_batch_size` > 0).
    pub dynamic_batching: Option<bool>,
    /// Longest a batch waits for more requests, in microseconds (default 0: merge only what
    /// is already waiting).
    pub max_queue_delay_us: Option<u64>,
    /// Adaptive batching: tune the wait (up to `max_queue_delay_us`, or half the target) to
    /// keep request latency under this many milliseconds.
    pub latency_target_ms: Option<f64>,
    /// Default per-request timeout in milliseconds (a request's `timeout` parameter, in
    /// microseconds, overrides it); none by default.
    pub request_timeout_ms: Option<u64>,
    /// Which versions are served (default: the highest one).
    pub version_policy: Option<VersionPolicy>,
    #[serde(default)]
    pub inputs: Vec<TensorOverride>,
    #[serde(default)]
    pub outputs: Vec<TensorOverride>,
    /// Class labels per output name, in column order.
    #[serde(default)]
    pub labels: BTreeMap<String, Vec<String>>,
    /// `"onnx"` (default), `"text_embedding"` or `"embedding"` (tokenizer + encoder + pooling,
    /// see `[text]`; a Hugging Face folder in the version folder is one), `"rerank"` (a
    /// cross-encoder Hugging Face folder) or `"llm"` (a GGUF file on llama.cpp,
    /// `<version>/model.gguf`, see `[llm]`). A Hugging Face folder's kind is read from its
    /// config.json when config.toml says none.
    pub kind: Option<String>,
    /// Settings of a `text_embedding` model.
    pub text: Option<TextConfig>,
    /// Settings of an `llm` model.
    pub llm: Option<LlmConfig>,
    /// Settings of a `vector_index` collection.
    pub index: Option<IndexConfig>,
    /// What the prediction log keeps of this model's requests.
    pub records: Option<RecordsConfig>,
    /// A canary or shadow version beside the one that answers (`[rollout]`).
    pub rollout: Option<RolloutConfig>,
}

/// `[rollout]`: trying a version on live traffic. A request for the model (no version named)
/// is answered by the highest version that is neither the canary nor the shadow — or, for
/// `canary.percent` % of requests, by the canary; the shadow gets a copy of every request the
/// answering version ran, off the caller's path, and its answer is only compared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    pub canary: Option<Canary>,
    pub shadow: Option<u64>,
    /// How far apart (relative; absolute near zero) floating-point outputs may be and still
    /// agree (default 1e-4). Labels, integers and strings agree only when equal.
    pub tolerance: Option<f64>,
}

/// `canary = { version = 2, percent = 10 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub version: u64,
    pub percent: f64,
}

impl RolloutConfig {
    /// The versions it names (canary, shadow).
    pub fn versions(&self) -> Vec<u64> {
        self.canary.iter().map(|c| c.version).chain(self.shadow).collect()
    }
}

/// `[records]`: what the prediction log keeps of a model's requests (when the server runs
/// with a prediction log at all).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// `all` (default), `sampled` (a `rate` share of requests) or `none`.
    #[serde(default)]
    pub log: RecordsLog,
    /// For `sampled`: the share of requests logged, 0 to 1.
    pub rate: Option<f64>,
    /// Input tensors to keep (default all; `[]` keeps none).
    pub inputs: Option<Vec<String>>,
    /// Output tensors to keep (default all).
    pub outputs: Option<Vec<String>>,
    /// Bytes of encoded tensors kept for inputs and for outputs each (their binary size plus a
    /// few bytes of name and shape); past it a row keeps only the tensors' names and shapes and
    /// is marked truncated (default 65536).
    pub max_bytes: Option<usize>,
    /// The output holding the predicted label per row, compared with feedback for quality
    /// (default: the first INT64/INT32/BYTES output with one dimension).
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordsLog {
    #[default]
    All,
    Sampled,
    None,
}

/// The prediction-log policy of a model, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordsPolicy {
    /// Share of requests logged: 1 = all, 0 = none.
    pub rate: f64,
    pub inputs: Option<Vec<String>>,
    pub outputs: Option<Vec<String>>,
    pub max_bytes: usize,
    pub label: Option<String>,
}

impl Default for RecordsPolicy {
    fn default() -> Self {
        RecordsPolicy { rate: 1.0, inputs: None, outputs: None, max_bytes: 65_536, label: None }
    }
}

impl ModelConfig {
    /// The `[records]` policy (the default when absent), checked against the signature.
    pub fn records_policy(&self, signature: &ModelSignature) -> Result<RecordsPolicy, String> {
        let policy = self.records.as_ref().map(RecordsConfig::policy).transpose()?.unwrap_or_default();
        let unknown = |list: &Option<Vec<String>>, specs: &[TensorSpec], what: &str| -> Result<(), String> {
            if let Some(name) = list.iter().flatten().find(|n| !specs.iter().any(|s| &s.name == *n)) {
                return Err(format!("[records] {what} names '{name}', which the model does not have"));
            }
            Ok(())
        };
        unknown(&policy.inputs, &signature.inputs, "inputs")?;
        unknown(&policy.outputs, &signature.outputs, "outputs")?;
        unknown(&policy.label.clone().map(|l| vec![l]), &signature.outputs, "label")?;
        Ok(policy)
    }
}

impl RecordsConfig {
    pub fn policy(&self) -> Result<RecordsPolicy, String> {
        let rate = match (self.log, self.rate) {
            (RecordsLog::All, None) => 1.0,
            (RecordsLog::None, None) => 0.0,
            (RecordsLog::Sampled, Some(r)) if (0.0..=1.0).contains(&r) => r,
            (RecordsLog::Sampled, Some(r)) => return Err(format!("[records] rate must be between 0 and 1, not {r}")),
            (RecordsLog::Sampled, None) => return Err("[records] log = \"sampled\" needs a rate (0 to 1)".into()),
            (_, Some(_)) => return Err("[records] rate applies only to log = \"sampled\"".into()),
        };
        Ok(RecordsPolicy {
            rate,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            max_bytes: self.max_bytes.unwrap_or(65_536),
            label: self.label.clone(),
        })
    }
}

/// `[text]`: a sentence-embedding model. Paths are relative to the model folder; by default
/// the version folder's `model.onnx` and `tokenizer.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// The encoder (inputs input_ids/attention_mask[/token_type_ids], output [batch, seq, dim]).
    pub model: Option<String>,
    pub tokenizer: Option<String>,
    /// `mean` (default) or `cls`.
    pub pooling: Option<Pooling>,
    /// L2-normalize embeddings (default true).
    pub normalize: Option<bool>,
    /// Tokens per text including special tokens; longer texts are truncated (default 256).
    pub max_length: Option<usize>,
    /// Tokens, padding included, per encoder run (default 16384).
    pub max_batch_tokens: Option<usize>,
    /// Longest text accepted in UTF-8 bytes (default 65536).
    pub max_input_bytes: Option<usize>,
}

/// How token states become one vector (`[text] pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the real (unpadded) tokens — sentence-transformers' default.
    Mean,
    /// The first token's state ([CLS]).
    Cls,
}

/// `[llm]`: a generative model. `threads` (llama.cpp's CPU threads, default 2 here) and
/// `max_queue_size` (requests waiting for a sequence slot, default 64 here) are the top-level
/// keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Tokens per sequence, prompt and completion together (default: the model's training
    /// context, at most 4096).
    pub context_length: Option<u32>,
    /// Sequences generated together by continuous batching (default 4).
    pub max_sequences: Option<usize>,
    /// `max_tokens` when a request does not say (default 256).
    pub max_tokens: Option<u32>,
    /// `temperature` when a request does not say (default 1.0; 0 = greedy).
    pub temperature: Option<f32>,
    /// `top_p` when a request does not say (default 1.0).
    pub top_p: Option<f32>,
    /// Layers offloaded to a GPU; needs kiln built with `--features cuda` (default 0).
    pub gpu_layers: Option<u32>,
    /// llama.cpp's flash attention (default false, as llama-cpp-python: greedy texts then
    /// equal the prototype's).
    pub flash_attention: Option<bool>,
    /// Reuse the KV cache of a finished request's prompt for a later prompt with the same
    /// start (default true).
    pub prefix_cache: Option<bool>,
    /// Parse special-token text inside message content as control tokens, as llama.cpp's
    /// server does (default false: content is plain text, so user text cannot open a turn).
    pub special_tokens_in_content: Option<bool>,
    /// The chat template instead of the GGUF's (or where it has none): a built-in name
    /// (`chatml`, `llama3`, `gemma`, `mistral`, `phi3`) or a `.jinja` file in the model folder.
    pub chat_template: Option<String>,
}

impl ModelConfig {
    /// Whether this is a vector collection (`kind = "vector_index"`).
    pub fn is_vector_index(&self) -> bool {
        self.kind.as_deref() == Some("vector_index")
    }

    /// Whether this is a generative (`kind = "llm"`) model.
    /// Whether config.toml names a text model kind (`text_embedding`/`embedding` or `rerank`):
    /// a tokenizer + encoder, from `[text]` paths or a Hugging Face folder.
    pub fn is_text(&self) -> bool {
        matches!(self.kind.as_deref(), Some("text_embedding" | "embedding" | "rerank")) || self.text.is_some()
    }

    pub fn is_llm(&self) -> bool {
        self.kind.as_deref() == Some("llm")
    }
}

/// Triton's version policies.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(usize),
    /// Every version in the folder.
    All(bool),
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those on disk (sorted ascending).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => available[available.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All(_) => available.to_vec(),
            VersionPolicy::Specific(wanted) => available.iter().copied().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// A declaration in config.toml that narrows one input or output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    pub name: String,
    pub datatype: Option<DataType>,
    pub shape: Option<Vec<i64>>,
    /// The model fixes the first dimension at 1, but it is the batch dimension (onnxmltools'
    /// LightGBM export declares `label` as `[1]`): serve it as `-1`. A two-row warm-up checks
    /// that the model really answers one row per input row.
    pub batch_dimension: Option<bool>,
}

/// Numbers kiln uses when config.toml says nothing.
pub const DEFAULT_INSTANCES: usize = 1;
pub const DEFAULT_THREADS: usize = 1;
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

impl ModelConfig {
    /// The inputs and outputs config.toml declares batch dimensions (`batch_dimension = true`).
    pub fn declared_batch_dimensions(&self) -> Vec<&str> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .filter(|o| o.batch_dimension == Some(true))
            .map(|o| o.name.as_str())
            .collect()
    }

    /// Parses config.toml text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: ModelConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(backend) = &config.backend
            && backend != "onnxruntime"
        {
            return Err(format!("backend '{backend}' is not supported (only \"onnxruntime\")"));
        }
        for (key, value) in
            [("instances", config.instances), ("threads", config.threads), ("max_queue_size", config.max_queue_size)]
        {
            if value == Some(0) {
                return Err(format!("{key} must be at least 1"));
            }
        }
        match (config.kind.as_deref(), &config.text) {
            (None | Some("onnx" | "llm" | "vector_index" | "text_embedding" | "embedding" | "rerank"), None)
            | (Some("text_embedding" | "embedding" | "rerank"), Some(_)) => {}
            (None | Some("onnx" | "llm" | "vector_index"), Some(_)) => {
                return Err("a [text] table needs kind = \"text_embedding\" (or \"rerank\")".into());
            }
            (Some(other), _) => {
                return Err(format!(
                    "kind '{other}' is not supported (\"onnx\", \"text_embedding\" (or \"embedding\"), \"rerank\", \
                     \"llm\" or \"vector_index\")"
                ));
            }
        }
        match (config.is_vector_index(), &config.index) {
            (true, None) => return Err("kind = \"vector_index\" needs an [index] table (dim, metric)".into()),
            (false, Some(_)) => return Err("an [index] table needs kind = \"vector_index\"".into()),
            (true, Some(index)) => index.check()?,
            (false, None) => {}
        }
        if config.llm.is_some() && !config.is_llm() {
            return Err("an [llm] table needs kind = \"llm\"".into());
        }
        if config.is_llm() {
            config.check_llm()?;
        }
        if config.text.as_ref().is_some_and(|t| t.max_length == Some(0) || t.max_batch_tokens == Some(0)) {
            return Err("[text] max_length and max_batch_tokens must be at least 1".into());
        }
        if config.dynamic_batching == Some(true) && config.max_batch_size() == 0 {
            return Err("dynamic_batching needs max_batch_size > 0 (the largest merged batch)".into());
        }
        if let Some(t) = config.latency_target_ms
            && !(t > 0.0 && std::time::Duration::try_from_secs_f64(t / 1000.0).is_ok())
        {
            return Err(format!("latency_target_ms must be a positive number of milliseconds, got {t}"));
        }
        if let Some(VersionPolicy::Latest(0)) = config.version_policy {
            return Err("version_policy latest must be at least 1".into());
        }
        if let Some(rollout) = &config.rollout {
            if let Some(c) = rollout.canary
                && !(c.percent > 0.0 && c.percent <= 100.0)
            {
                return Err(format!("[rollout] canary percent must be above 0 and at most 100, got {}", c.percent));
            }
            if let Some(t) = rollout.tolerance
                && !(t >= 0.0 && t.is_finite())
            {
                return Err(format!("[rollout] tolerance must be a number of 0 or more, got {t}"));
            }
            if rollout.canary.is_some_and(|c| Some(c.version) == rollout.shadow) {
                return Err("[rollout] the canary and the shadow must be different versions".into());
            }
        }
        Ok(config)
    }

    /// What an `llm` model may not say, and the ranges of its numbers.
    fn check_llm(&self) -> Result<(), String> {
        let onnx_only = [
            ("instances", self.instances.is_some()),
            ("max_batch_size", self.max_batch_size.is_some()),
            ("dynamic_batching", self.dynamic_batching.is_some()),
            ("max_queue_delay_us", self.max_queue_delay_us.is_some()),
            ("latency_target_ms", self.latency_target_ms.is_some()),
            ("[[inputs]]", !self.inputs.is_empty()),
            ("[[outputs]]", !self.outputs.is_empty()),
            ("[labels]", !self.labels.is_empty()),
        ];
        if let Some((key, _)) = onnx_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{key} does not apply to kind = \"llm\" (sequences are batched continuously; see [llm] max_sequences)"
            ));
        }
        let Some(llm) = &self.llm else { return Ok(()) };
        if llm.max_sequences == Some(0) {
            return Err("[llm] max_sequences must be at least 1".into());
        }
        if llm.context_length.is_some_and(|n| n < 16) {
            return Err("[llm] context_length must be at least 16 tokens".into());
        }
        if llm.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err("[llm] temperature must be between 0 and 2".into());
        }
        if llm.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err("[llm] top_p must be in (0, 1]".into());
        }
        if let Some(t) = &llm.chat_template {
            let bare = !t.is_empty() && !t.starts_with('.') && !t.contains(['/', '\\']);
            if !bare {
                return Err(format!(
                    "[llm] chat_template must be a built-in name or a .jinja file in the model folder, not '{t}'"
                ));
            }
        }
        Ok(())
    }

    pub fn instances(&self) -> usize {
        self.instances.unwrap_or(DEFAULT_INSTANCES)
    }

    pub fn threads(&self) -> usize {
        self.threads.unwrap_or(DEFAULT_THREADS)
    }

    pub fn max_queue_size(&self) -> usize {
        self.max_queue_size.unwrap_or(DEFAULT_MAX_QUEUE_SIZE)
    }

    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size.unwrap_or(0)
    }

    pub fn dynamic_batching(&self) -> bool {
        self.dynamic_batching.unwrap_or(self.max_batch_size() > 0)
    }

    pub fn latency_target(&self) -> Option<std::time::Duration> {
        self.latency_target_ms.and_then(|ms| std::time::Duration::try_from_secs_f64(ms / 1000.0).ok())
    }

    /// The batching window's upper bound.
    pub fn max_queue_delay(&self) -> std::time::Duration {
        match (self.max_queue_delay_us, self.latency_target()) {
            (Some(us), _) => std::time::Duration::from_micros(us),
            (None, Some(target)) => target / 2,
            (None, None) => std::time::Duration::ZERO,
        }
    }

    pub fn request_timeout(&self) -> Option<std::time::Duration> {
        self.request_timeout_ms.map(std::time::Duration::from_millis)
    }

    /// The versions a model has: its numeric folders, or for a text model whose files are
    /// named in `[text]` and that has no version folders, version 1.
    pub fn versions_on_disk(&self, folders: &[u64]) -> Vec<u64> {
        if folders.is_empty() && self.text.as_ref().is_some_and(|t| t.model.is_some()) {
            vec![1]
        } else {
            folders.to_vec()
        }
    }

    pub fn version_policy(&self) -> VersionPolicy {
        self.version_policy.clone().unwrap_or_default()
    }

    /// Applies the input/output overrides and label lists to what the model declares.
    /// `labels` starts with what the model itself carries (rewritten ZipMaps); config
    /// labels replace those.
    pub fn apply(
        &self,
        signature: &mut ModelSignature,
        labels: &mut BTreeMap<String, Vec<String>>,
    ) -> Result<(), String> {
        for (kind, overrides, specs) in
            [("input", &self.inputs, &mut signature.inputs), ("output", &self.outputs, &mut signature.outputs)]
        {
            for o in overrides {
                let Some(spec) = specs.iter_mut().find(|s| s.name == o.name) else {
                    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    return Err(format!(
                        "config.toml names {kind} '{}', but the model's {kind}s are {names:?}",
                        o.name
                    ));
                };
                narrow(kind, spec, o)?;
            }
        }
        for (output, names) in &self.labels {
            let Some(spec) = signature.outputs.iter().find(|s| &s.name == output) else {
                return Err(format!(
                    "config.toml has labels for output '{output}', but the model's outputs are {:?}",
                    signature.output_names()
                ));
            };
            if let Some(&cols) = spec.shape.last().filter(|&&d| d >= 0)
                && usize::try_from(cols).ok() != Some(names.len())
            {
                return Err(format!(
                    "config.toml gives {} labels for output '{output}', which has {cols} columns",
                    names.len()
                ));
            }
            labels.insert(output.clone(), names.clone());
        }
        Ok(())
    }
}

fn narrow(kind: &str, spec: &mut TensorSpec, o: &TensorOverride) -> Result<(), String> {
    if o.batch_dimension == Some(true) {
        match spec.shape.first_mut() {
            Some(d) if *d == 1 || *d == -1 => *d = -1,
            _ => {
                return Err(format!(
                    "config.toml says the first dimension of {kind} '{}' is the batch dimension, but the model \
                     declares {:?} (only a fixed 1 can be declared a batch dimension)",
                    o.name, spec.shape
                ));
            }
        }
    }
    if let Some(datatype) = o.datatype
        && datatype != spec.datatype
    {
        return Err(format!(
            "config.toml declares {kind} '{}' as {datatype}, but the model has {}",
            o.name, spec.datatype
        ));
    }
    if let Some(shape) = &o.shape {
        let fits = shape.len() == spec.shape.len()
            && shape.iter().zip(&spec.shape).all(|(&want, &model)| model < 0 || want == model)
            && shape.iter().all(|&d| d >= -1);
        if !fits {
            return Err(format!(
                "config.toml declares {kind} '{}' with shape {shape:?}, which contradicts the model's {:?}",
                o.name, spec.shape
            ));
        }
        spec.shape.clone_from(shape);
    }
    Ok(())
}

// `[index]` (a vector collection) is kiln-collection's `IndexConfig`.
pub use kiln_collection::{IndexConfig, Metric};

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
