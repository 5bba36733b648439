//! Finding and loading `libonnxruntime`.
//!
//! kiln uses the very library that the `onnxruntime` Python wheel ships, so production runs
//! the same runtime binary as the Python prototype. The wheel has no unversioned
//! `libonnxruntime.so`, only `capi/libonnxruntime.so.<version>`, so the search looks inside
//! the package folder instead of relying on the dynamic loader's path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;

/// The ONNX Runtime version kiln is built and tested against (ort's `api-31`).
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// How to install the runtime, shown whenever it cannot be found or loaded.
pub const INSTALL_HINT: &str = "install it with `python3 -m pip install onnxruntime==1.31.1` \
(or run `bash scripts/setup-venv.sh` in the kiln checkout, which makes ./.venv), \
or point kiln at the library with `--onnxruntime PATH` or `ORT_DYLIB_PATH=PATH`, where PATH is \
site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// Why the runtime could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked at: {tried}); {hint}", tried = .tried.join("; "), hint = INSTALL_HINT)]
    NotFound { tried: Vec<String> },
    #[error("ONNX Runtime library at {path} could not be loaded: {reason}; {hint}", hint = INSTALL_HINT)]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime environment could not be created: {0}")]
    Environment(String),
}

/// Where the library was found, for logs and `--help` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLocation {
    pub path: PathBuf,
    /// Which rule found it (flag, environment variable, python3, virtualenv).
    pub source: String,
}

/// Locates `libonnxruntime` in kiln's documented order: the explicit path (the
/// `--onnxruntime` flag or config value), `ORT_DYLIB_PATH`, the `onnxruntime` package of the
/// `python3` on PATH, then the `.venv` of the kiln checkout (next to the executable or above
/// the current directory).
pub fn locate(explicit: Option<&Path>) -> Result<RuntimeLocation, RuntimeError> {
    let mut tried = Vec::new();
    if let Some(path) = explicit {
        return existing(path, "--onnxruntime", &mut tried).ok_or(RuntimeError::NotFound { tried });
    }
    if let Some(value) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return existing(Path::new(&value), "ORT_DYLIB_PATH", &mut tried).ok_or(RuntimeError::NotFound { tried });
    }
    match python_package_dir("python3") {
        Some(dir) => {
            if let Some(found) = library_in_package(&dir, "python3 on PATH", &mut tried) {
                return Ok(found);
            }
        }
        None => tried.push("python3 on PATH: no onnxruntime package".to_string()),
    }
    for venv in candidate_venvs() {
        let python = venv.join("bin").join("python3");
        if !python.exists() {
            continue;
        }
        match python_package_dir(&python.to_string_lossy()) {
            Some(dir) => {
                if let Some(found) = library_in_package(&dir, "project virtualenv", &mut tried) {
                    return Ok(found);
                }
            }
            None => tried.push(format!("{}: no onnxruntime package", venv.display())),
        }
    }
    Err(RuntimeError::NotFound { tried })
}

fn existing(path: &Path, source: &str, tried: &mut Vec<String>) -> Option<RuntimeLocation> {
    if path.is_file() {
        Some(RuntimeLocation { path: path.to_path_buf(), source: source.to_string() })
    } else {
        tried.push(format!("{source}={} (no such file)", path.display()));
        None
    }
}

/// Asks an interpreter where its `onnxruntime` package lives, without importing it (an
/// import pulls in numpy and takes far longer).
fn python_package_dir(python: &str) -> Option<PathBuf> {
    let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\nprint(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Picks `capi/libonnxruntime.so*` (or `.dylib`) inside an onnxruntime package folder.
fn library_in_package(package: &Path, source: &str, tried: &mut Vec<String>) -> Option<RuntimeLocation> {
    let capi = package.join("capi");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&capi)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so") || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
            })
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some(path) => Some(RuntimeLocation { path, source: source.to_string() }),
        None => {
            tried.push(format!("{source}: {} has no libonnxruntime", capi.display()));
            None
        }
    }
}

/// `.venv` folders a kiln checkout may have: above the executable (target/release/kiln)
/// and above the current directory.
fn candidate_venvs() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    for root in roots {
        let venv = root.join(".venv");
        if venv.is_dir() && !venvs.contains(&venv) {
            venvs.push(venv);
        }
    }
    venvs
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Loads the library at `location` and creates the process-wide ONNX Runtime environment.
/// Later calls return the environment made by the first successful one.
pub fn init(location: &RuntimeLocation) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let builder = ort::init_from(&location.path)
        .map_err(|e| RuntimeError::Load { path: location.path.clone(), reason: e.to_string() })?;
    let env = builder
        .with_name("kiln")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    tracing::info!(path = %location.path.display(), found_by = %location.source, "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Locates and loads the runtime in one step.
pub fn ensure(explicit: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    init(&locate(explicit)?)
}

/// The environment, when [`init`] has succeeded.
pub fn environment() -> Option<&'static Environment> {
    ENVIRONMENT.get()
}
