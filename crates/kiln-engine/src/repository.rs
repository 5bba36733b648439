//! Loading one model version from the repository (the folder layout, config.toml and
//! config.pbtxt are kiln-repository's): ONNX models on ONNX Runtime, text
//! embedding models, GGUF LLMs, with their serving settings.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_backend_ort::{PreparedModel, SessionOptions};
use kiln_core::{ModelInstance, ModelSignature, Tensor, TensorData};

use kiln_repository::layout::*;

use kiln_repository::config::ModelConfig;
use kiln_serving::EngineError;
use kiln_serving::{ServedModel, ServingSettings};

/// Loads one model file with its config: prepares it, applies the overrides and starts
/// its instances. Blocking: call it off the async executor.
pub fn load_model_file(
    name: &str,
    version: u64,
    file: &Path,
    config: &ModelConfig,
) -> Result<ServedModel, EngineError> {
    prepare_model_file(name, version, file, config)?.start()
}

/// A model version loaded and warmed up, not yet serving: its instances can go to worker
/// threads ([`LoadedVersion::start`]) or be driven directly by the caller (the Python bridge).
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub signature: ModelSignature,
    pub labels: BTreeMap<String, Vec<String>>,
    pub settings: ServingSettings,
    pub instances: Vec<Box<dyn ModelInstance>>,
}

impl LoadedVersion {
    /// Starts serving: one worker thread per instance behind the model's queue.
    pub fn start(self) -> Result<ServedModel, EngineError> {
        ServedModel::start(self.name, self.version, self.signature, self.labels, self.settings, self.instances)
    }
}

/// Loads one model file with its config and warms its instances up, without starting
/// workers. Blocking.
pub fn prepare_model_file(
    name: &str,
    version: u64,
    file: &Path,
    config: &ModelConfig,
) -> Result<LoadedVersion, EngineError> {
    let load_error = |reason: String| EngineError::LoadFailed { model: name.to_string(), version, reason };
    let version_dir = file.parent().unwrap_or(Path::new("."));
    let names_files = config.text.as_ref().is_some_and(|t| t.model.is_some() || t.tokenizer.is_some());
    if !file.is_file() && !names_files && kiln_text::hf::is_hf_folder(version_dir) {
        return prepare_hf_model(name, version, version_dir, config).map_err(load_error);
    }
    if config.kind.as_deref() == Some("rerank") {
        return Err(load_error(format!(
            "kind = \"rerank\" needs a Hugging Face cross-encoder folder (config.json, model.safetensors, \
             tokenizer.json) in {}",
            version_dir.display()
        )));
    }
    if config.is_text() {
        let text = config.text.clone().unwrap_or_default();
        return prepare_text_model(name, version, file, config, &text).map_err(load_error);
    }
    let bytes = std::fs::read(file).map_err(|e| load_error(format!("cannot read {}: {e}", file.display())))?;
    let options = SessionOptions { intra_threads: config.threads() };
    let prepared = PreparedModel::new(bytes, options).map_err(|e| load_error(e.to_string()))?;
    // What kiln changed in the model to serve it (a ZipMap rewrite): information, not a fault.
    for notice in &prepared.notices {
        tracing::info!(model = name, version, "{notice}");
    }
    let mut signature = prepared.signature.clone();
    let mut labels = prepared.labels.clone();
    config.apply(&mut signature, &mut labels).map_err(load_error)?;
    let mut settings = ServingSettings::of(config);
    settings.records = config.records_policy(&signature).map_err(load_error)?;
    if settings.dynamic_batching
        && let Some(fixed) = signature.outputs.iter().find(|s| s.shape.first().is_none_or(|&d| d >= 0))
    {
        return Err(load_error(format!(
            "dynamic batching is on, but output '{}' has no dynamic first (batch) dimension: {:?}; \
             set dynamic_batching = false",
            fixed.name, fixed.shape
        )));
    }
    if settings.max_batch_size > 0
        && let Some(fixed) = signature.inputs.iter().find(|s| s.shape.first().is_none_or(|&d| d >= 0))
    {
        return Err(load_error(format!(
            "max_batch_size is set, but input '{}' has no dynamic first (batch) dimension: {:?}",
            fixed.name, fixed.shape
        )));
    }
    let mut instances: Vec<Box<dyn ModelInstance>> = Vec::with_capacity(settings.instances);
    let warmup = warmup_inputs(&prepared.signature, 1);
    let outputs = prepared.signature.output_names();
    for _ in 0..settings.instances {
        let mut instance = prepared.instantiate().map_err(|e| load_error(e.to_string()))?;
        // Warm up before serving: the first run allocates and plans; pay it here, not in a
        // user's request. A model may reject all-zero inputs (a shape or value check inside
        // its graph): that is no load error, it serves, and its first request pays the warm-up.
        if let Err(e) = instance.run(&warmup, &outputs)
            && instances.is_empty()
        {
            tracing::info!(model = name, version, "warm-up skipped: the model rejects all-zero inputs ({e})");
        }
        if instances.is_empty() {
            check_batch_dimensions(&mut instance, &signature, config).map_err(load_error)?;
        }
        instances.push(Box::new(instance));
    }
    Ok(LoadedVersion { name: name.to_string(), version, signature, labels, settings, instances })
}

/// Runs two rows of zeros through a model whose config.toml declares batch dimensions
/// (`batch_dimension = true`) and checks that each declared output answers two rows. A model
/// that rejects zeros cannot be checked; that is a note, not an error.
fn check_batch_dimensions(
    instance: &mut kiln_backend_ort::OrtInstance,
    signature: &ModelSignature,
    config: &ModelConfig,
) -> Result<(), String> {
    let declared = config.declared_batch_dimensions();
    if declared.is_empty() {
        return Ok(());
    }
    let inputs = warmup_inputs(signature, 2);
    let outputs = signature.output_names();
    let answered = match instance.run(&inputs, &outputs) {
        Ok(answered) => answered,
        Err(e) => {
            tracing::info!("batch dimensions declared in config.toml not checked: the model rejects zeros ({e})");
            return Ok(());
        }
    };
    for out in answered.iter().filter(|t| declared.contains(&t.name.as_str())) {
        if out.shape.first() != Some(&2) {
            return Err(format!(
                "config.toml says the first dimension of output '{}' is the batch dimension, but for 2 input rows \
                 the model answered shape {:?}",
                out.name, out.shape
            ));
        }
    }
    Ok(())
}

/// A `text_embedding` model: paths from `[text]` are relative to the model folder (the
/// parent of the version folder); defaults are the version folder's files.
fn prepare_text_model(
    name: &str,
    version: u64,
    file: &Path,
    config: &ModelConfig,
    text: &kiln_repository::config::TextConfig,
) -> Result<LoadedVersion, String> {
    let version_dir = file.parent().unwrap_or(Path::new("."));
    let model_dir = version_dir.parent().unwrap_or(Path::new("."));
    let resolve = |configured: &Option<String>, default: &str| match configured {
        Some(p) => model_dir.join(p),
        None => version_dir.join(default),
    };
    let encoder = resolve(&text.model, MODEL_FILE);
    let tokenizer = resolve(&text.tokenizer, "tokenizer.json");
    // Like model.onnx, files named in [text] must be inside the repository (the model folder's
    // parent), symlinks followed: config.toml may not make kiln read files elsewhere.
    let repository = model_dir.parent().unwrap_or(Path::new("."));
    for (field, path) in [("model", &encoder), ("tokenizer", &tokenizer)] {
        if path.exists() {
            confine(repository, path).map_err(|e| format!("[text] {field}: {e}"))?;
        }
    }
    let model = kiln_text::TextModel::load(&encoder, &tokenizer, crate::config::text_settings(text, config.threads()))
        .map_err(|e| e.to_string())?;
    tracing::info!(model = name, version, encoder = %encoder.display(), "text embedding model loaded");
    let warmup = vec![text_tensor(kiln_text::TEXT_INPUT, "warm up")?];
    warmed_up(name, version, config, model.signature(), &warmup, || model.instantiate())
}

fn text_tensor(name: &str, text: &str) -> Result<Tensor, String> {
    Tensor::new(name, vec![1], TensorData::Bytes(vec![text.as_bytes().to_vec()])).map_err(|e| e.to_string())
}

/// `config.instances` instances, each run once on `warmup` before serving.
fn warmed_up<I: ModelInstance + 'static>(
    name: &str,
    version: u64,
    config: &ModelConfig,
    signature: ModelSignature,
    warmup: &[Tensor],
    instantiate: impl Fn() -> Result<I, kiln_core::BackendError>,
) -> Result<LoadedVersion, String> {
    let mut settings = ServingSettings::of(config);
    settings.records = config.records_policy(&signature)?;
    let outputs = signature.output_names();
    let mut instances: Vec<Box<dyn ModelInstance>> = Vec::with_capacity(settings.instances);
    for _ in 0..settings.instances {
        let mut instance = instantiate().map_err(|e| e.to_string())?;
        instance.run(warmup, &outputs).map_err(|e| format!("warm-up failed: {e}"))?;
        instances.push(Box::new(instance));
    }
    Ok(LoadedVersion { name: name.to_string(), version, signature, labels: BTreeMap::new(), settings, instances })
}

/// A Hugging Face folder (config.json + model.safetensors + tokenizer.json) in the version
/// folder: an embedding model (pooling, normalization and truncation from the folder's
/// sentence-transformers files unless `[text]` sets them) or, for a sequence-classification
/// architecture, a reranker.
fn prepare_hf_model(name: &str, version: u64, folder: &Path, config: &ModelConfig) -> Result<LoadedVersion, String> {
    if let Some(repository) = folder.parent().and_then(Path::parent) {
        for file in [kiln_text::hf::CONFIG_FILE, kiln_text::hf::WEIGHTS_FILE, "tokenizer.json"] {
            let path = folder.join(file);
            if path.exists() {
                confine(repository, &path)?;
            }
        }
    }
    let hf = kiln_text::hf::HfModel::read(folder).map_err(|e| e.to_string())?;
    let text = config.text.clone().unwrap_or_default();
    let mut settings = crate::config::text_settings(&text, config.threads());
    if text.pooling.is_none()
        && let Some(pooling) = hf.pooling
    {
        settings.pooling = pooling;
    }
    if text.normalize.is_none()
        && let Some(normalize) = hf.normalize
    {
        settings.normalize = normalize;
    }
    match text.max_length {
        None => settings.max_length = hf.max_length,
        Some(n) if n > hf.max_length => {
            return Err(format!(
                "[text] max_length {n} is more than this model takes ({} tokens: its position table or \
                 sentence_bert_config.json's max_seq_length)",
                hf.max_length
            ));
        }
        Some(_) => {}
    }
    let kind = config.kind.as_deref();
    match (&hf.head, kind) {
        (kiln_text::hf::Head::Encoder, None | Some("text_embedding" | "embedding")) => {
            let model =
                kiln_text::TextModel::from_encoder(hf.onnx, &hf.tokenizer, settings).map_err(|e| e.to_string())?;
            tracing::info!(model = name, version, architecture = %hf.architecture, "text embedding model loaded (Hugging Face folder)");
            let warmup = vec![text_tensor(kiln_text::TEXT_INPUT, "warm up")?];
            warmed_up(name, version, config, model.signature(), &warmup, || model.instantiate())
        }
        (kiln_text::hf::Head::Classifier { .. }, None | Some("rerank")) => {
            let model =
                kiln_text::RerankModel::from_encoder(hf.onnx, &hf.tokenizer, settings).map_err(|e| e.to_string())?;
            tracing::info!(model = name, version, architecture = %hf.architecture, "reranker loaded (Hugging Face folder)");
            let document =
                Tensor::new(kiln_text::DOCUMENT_INPUT, vec![1, 1], TensorData::Bytes(vec![b"warm up".to_vec()]))
                    .map_err(|e| e.to_string())?;
            let warmup = vec![text_tensor(kiln_text::QUERY_INPUT, "warm up")?, document];
            warmed_up(name, version, config, model.signature(), &warmup, || model.instantiate())
        }
        (head, kind) => Err(format!(
            "config.toml says kind = {kind:?}, but config.json's architecture {} is {}",
            hf.architecture,
            match head {
                kiln_text::hf::Head::Encoder => "an encoder (kind = \"text_embedding\")",
                kiln_text::hf::Head::Classifier { .. } => "a sequence classifier (kind = \"rerank\")",
            }
        )),
    }
}

/// Zero-valued inputs of the declared shapes: a dynamic first dimension set to `rows`, other
/// dynamic dimensions to 1.
fn warmup_inputs(signature: &ModelSignature, rows: usize) -> Vec<Tensor> {
    signature
        .inputs
        .iter()
        .filter_map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| usize::try_from(d).unwrap_or(if i == 0 { rows } else { 1 }))
                .collect();
            let n = kiln_core::element_count(&shape)?;
            let data = TensorData::zeros(spec.datatype, n);
            Tensor::new(spec.name.clone(), shape, data).ok()
        })
        .collect()
}

/// Loads `REPO/<model>/<version>/model.onnx` (`model.gguf` for an LLM).
pub fn load_version(dir: &ModelDir, version: u64, config: &ModelConfig) -> Result<ServedModel, EngineError> {
    if config.is_llm() {
        return load_llm(dir, version, config);
    }
    let file = dir.path.join(version.to_string()).join(MODEL_FILE);
    let hf_folder = kiln_text::hf::is_hf_folder(&dir.path.join(version.to_string()));
    if !config.is_text() && !hf_folder && !file.is_file() {
        return Err(EngineError::LoadFailed {
            model: dir.name.clone(),
            version,
            reason: format!("no {MODEL_FILE} in {}", file.parent().unwrap_or(&dir.path).display()),
        });
    }
    if !config.is_text()
        && !hf_folder
        && let Some(repository) = dir.path.parent()
    {
        confine(repository, &file).map_err(|reason| EngineError::LoadFailed {
            model: dir.name.clone(),
            version,
            reason,
        })?;
    }
    load_model_file(&dir.name, version, &file, config)
}

/// Loads `REPO/<model>/<version>/model.gguf` on llama.cpp and starts its scheduler.
#[cfg(feature = "llm")]
fn load_llm(dir: &ModelDir, version: u64, config: &ModelConfig) -> Result<ServedModel, EngineError> {
    let load_error = |reason: String| EngineError::LoadFailed { model: dir.name.clone(), version, reason };
    let file = dir.path.join(version.to_string()).join(GGUF_FILE);
    if !file.is_file() {
        return Err(load_error(format!("no {GGUF_FILE} in {}", file.parent().unwrap_or(&dir.path).display())));
    }
    if let Some(repository) = dir.path.parent() {
        confine(repository, &file).map_err(load_error)?;
    }
    let llm_settings = crate::config::llm_settings(config, Some(&dir.path)).map_err(load_error)?;
    let llm =
        kiln_llm::LlmModel::load(&dir.name, version, &file, llm_settings).map_err(|e| load_error(e.to_string()))?;
    let mut settings = ServingSettings::of(config);
    settings.records = config.records_policy(&crate::llm::signature()).map_err(load_error)?;
    settings.max_queue_size = llm.settings().max_queue_size;
    settings.threads = llm.settings().threads;
    Ok(crate::llm::serve(dir.name.clone(), version, llm, settings))
}

/// Without the `llm` feature an LLM folder is a load error that says so.
#[cfg(not(feature = "llm"))]
fn load_llm(dir: &ModelDir, version: u64, _config: &ModelConfig) -> Result<ServedModel, EngineError> {
    Err(EngineError::LoadFailed {
        model: dir.name.clone(),
        version,
        reason: "kind = \"llm\" needs kiln built with LLM support (kiln-engine's `llm` feature)".into(),
    })
}

/// Loads a model from a path for one-process use (`kiln predict`, `kiln bench`, the Python
/// bridge): an ONNX file with default settings, or a repository model folder (its
/// config.toml, highest version).
pub fn load_path(path: &Path) -> Result<ServedModel, EngineError> {
    prepare_path(path, None, |_| {})?.start()
}

/// [`load_path`] without starting workers; `version` picks one (default: the highest).
/// `adjust` may change the settings read from config.toml (the Python bridge's
/// `threads=`/`instances=`).
pub fn prepare_path(
    path: &Path,
    version: Option<u64>,
    adjust: impl FnOnce(&mut ModelConfig),
) -> Result<LoadedVersion, EngineError> {
    let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or("model").to_string();
    if path.is_file() {
        let mut config = ModelConfig::default();
        adjust(&mut config);
        return prepare_model_file(&name, 1, path, &config);
    }
    if !path.is_dir() {
        return Err(EngineError::Repository(format!("{} is neither an ONNX file nor a model folder", path.display())));
    }
    let mut config = read_config(path).map_err(EngineError::Repository)?;
    adjust(&mut config);
    if config.is_llm() {
        return Err(EngineError::Repository(format!(
            "{} is an LLM (kind = \"llm\"): load it with kiln.LLM, or serve it with `kiln serve`",
            path.display()
        )));
    }
    let (dir, version) = pick_version(path, version, &config)?;
    let file = dir.path.join(version.to_string()).join(MODEL_FILE);
    prepare_model_file(&dir.name, version, &file, &config)
}

/// Loads an LLM for one-process use (the Python bridge's `kiln.LLM`): a `.gguf` file with kiln's
/// default settings, or a repository model folder with `kind = "llm"` (its config.toml, the
/// highest version or `version`).
#[cfg(feature = "llm")]
pub fn load_llm_path(path: &Path, version: Option<u64>) -> Result<ServedModel, EngineError> {
    let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or("llm").to_string();
    if path.is_file() {
        let settings = crate::config::llm_settings(&ModelConfig::default(), None).map_err(EngineError::Repository)?;
        let llm = kiln_llm::LlmModel::load(&name, 1, path, settings).map_err(|e| EngineError::LoadFailed {
            model: name.clone(),
            version: 1,
            reason: e.to_string(),
        })?;
        return Ok(crate::llm::serve(name, 1, llm, ServingSettings::default()));
    }
    if !path.is_dir() {
        return Err(EngineError::Repository(format!("{} is neither a GGUF file nor a model folder", path.display())));
    }
    let config = read_config(path).map_err(EngineError::Repository)?;
    if !config.is_llm() {
        return Err(EngineError::Repository(format!(
            "{} is not an LLM (its config.toml has no kind = \"llm\"); load it with kiln.Model",
            path.display()
        )));
    }
    let (dir, version) = pick_version(path, version, &config)?;
    load_llm(&dir, version, &config)
}

/// The model folder at `path` and the version to load: `version`, or the highest on disk.
fn pick_version(path: &Path, version: Option<u64>, config: &ModelConfig) -> Result<(ModelDir, u64), EngineError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = scan(parent)?
        .into_iter()
        .find(|d| d.path.file_name() == path.file_name())
        .ok_or_else(|| EngineError::Repository(format!("{} is not a model folder", path.display())))?;
    let versions = config.versions_on_disk(&dir.versions);
    let version = match version {
        Some(v) if versions.contains(&v) => v,
        Some(v) => {
            return Err(EngineError::VersionNotFound {
                model: dir.name.clone(),
                version: v.to_string(),
                served: versions.clone(),
            });
        }
        None => *versions.last().ok_or_else(|| {
            EngineError::Repository(format!(
                "{} has no version folders (expected {}/1/model.onnx)",
                path.display(),
                path.display()
            ))
        })?,
    };
    Ok((dir, version))
}
