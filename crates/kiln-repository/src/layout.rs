//! The repository's folder layout: which folders are models, their version folders, the
//! stamps that tell a change, and reading a folder's config (config.toml, else config.pbtxt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;

/// The file each version folder holds.
pub const MODEL_FILE: &str = "model.onnx";
/// The optional per-model settings file.
pub const CONFIG_FILE: &str = "config.toml";
/// The file of an LLM version folder.
pub const GGUF_FILE: &str = "model.gguf";
/// A Hugging Face folder's weights (with config.json and tokenizer.json in the version folder).
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The file that makes a repository folder a pipeline.
pub const PIPELINE_FILE: &str = "pipeline.toml";

/// Why the repository cannot be read, or a name cannot be a model's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    /// A model name that could leave the repository or is not one kiln accepts.
    #[error("{0}")]
    InvalidName(String),
    /// The repository folder cannot be read.
    #[error("{0}")]
    Unreadable(String),
}

/// One model folder as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
    /// Numeric version folders, ascending.
    pub versions: Vec<u64>,
}

/// Checks a model name from a request or a folder: 1 to 128 characters of letters, digits,
/// `_`, `-` and `.`, not starting with `.` — so it can never name a path outside the
/// repository (`..`, `/`, `\\`) nor a hidden folder.
pub fn validate_model_name(name: &str) -> Result<(), RepositoryError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        let shown: String = name.chars().take(64).flat_map(char::escape_default).collect();
        Err(RepositoryError::InvalidName(format!(
            "invalid model name '{shown}': use 1 to 128 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

/// Errs when `path` resolves (symlinks followed) outside `root`.
pub fn confine(root: &Path, path: &Path) -> Result<(), String> {
    let root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    let resolved = path.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    if resolved.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "{} resolves to {}, outside the model repository {}; kiln serves only files inside it",
            path.display(),
            resolved.display(),
            root.display()
        ))
    }
}

/// Lists the model folders of a repository (hidden folders, plain files, folders whose names
/// are not valid model names and symlinks leading outside the repository are skipped).
pub fn scan(repository: &Path) -> Result<Vec<ModelDir>, RepositoryError> {
    let entries = std::fs::read_dir(repository).map_err(|e| {
        RepositoryError::Unreadable(format!("cannot read model repository {}: {e}", repository.display()))
    })?;
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        if let Err(e) = validate_model_name(&name) {
            tracing::warn!("model folder skipped: {e}");
            continue;
        }
        if let Err(e) = confine(repository, &path) {
            tracing::warn!("model folder '{name}' skipped: {e}");
            continue;
        }
        let versions = scan_versions(&path);
        models.push(ModelDir { name, path, versions });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

fn scan_versions(model_dir: &Path) -> Vec<u64> {
    let mut versions: Vec<u64> = std::fs::read_dir(model_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect();
    versions.sort_unstable();
    versions
}

/// Size and modification time of one file; `None` when it does not exist.
pub type FileStamp = Option<(u64, std::time::SystemTime)>;

/// What a model folder's files looked like, to tell whether anything changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub config: FileStamp,
    /// Per numeric version folder, its model file (`model.onnx`, else `model.gguf`).
    pub versions: BTreeMap<u64, FileStamp>,
}

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Reads the stamps of a model folder's config.toml and version files.
pub fn fingerprint(model_dir: &Path) -> Fingerprint {
    let pipeline = model_dir.join(PIPELINE_FILE);
    Fingerprint {
        config: if pipeline.is_file() {
            stamp(&pipeline)
        } else {
            stamp(&model_dir.join(CONFIG_FILE)).or_else(|| stamp(&model_dir.join(crate::triton_config::FILE)))
        },
        versions: scan_versions(model_dir)
            .into_iter()
            .map(|v| {
                let folder = model_dir.join(v.to_string());
                (
                    v,
                    stamp(&folder.join(MODEL_FILE))
                        .or_else(|| stamp(&folder.join(GGUF_FILE)))
                        .or_else(|| stamp(&folder.join(SAFETENSORS_FILE))),
                )
            })
            .collect(),
    }
}

/// Reads `config.toml` of a model folder (defaults when there is none).
pub fn read_config(model_dir: &Path) -> Result<ModelConfig, String> {
    let path = model_dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => ModelConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => read_triton_config(model_dir),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A Triton `config.pbtxt` (read when there is no config.toml); the fields kiln does not apply
/// are named in one warning.
fn read_triton_config(model_dir: &Path) -> Result<ModelConfig, String> {
    let path = model_dir.join(crate::triton_config::FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let parsed = crate::triton_config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if !parsed.ignored.is_empty() {
                let model = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                tracing::warn!(model, "config.pbtxt: kiln does not apply {}", parsed.ignored.join(", "));
            }
            Ok(parsed.config)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelConfig::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}
