//! Building a model's state from its folder, off to the side of what is served: versions
//! loaded (in parallel at start) and warmed up, unchanged ones reused, a failed reload keeping
//! the serving copy; and the dependency order (models → collections → pipelines).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kiln_pipeline::PIPELINE_FILE;
use kiln_repository::config::ModelConfig;
use kiln_repository::layout::{self, Fingerprint, ModelDir};
use kiln_serving::{EngineError, ServedModel};

use crate::repository;
use crate::state::{ModelState, VersionState};

/// How many models load at once at start: one per core (loading is CPU-bound: parsing,
/// graph optimisation, warm-up), `KILN_LOAD_THREADS` to override.
pub(crate) fn load_parallelism() -> usize {
    std::env::var("KILN_LOAD_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// Builds the states of model folders (not pipelines) on up to `threads` threads, each taking
/// the next folder when it is done with one; returns them in the folders' order.
pub(crate) fn load_in_parallel(dirs: &[&ModelDir], threads: usize) -> Vec<(String, ModelState)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let built: Mutex<Vec<(usize, ModelState)>> = Mutex::new(Vec::with_capacity(dirs.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, dirs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(dir) = dirs.get(i) else { return };
                    let state = build_state(dir, None);
                    built.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((i, state));
                }
            });
        }
    });
    let mut built = built.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    built.sort_by_key(|(i, _)| *i);
    built.into_iter().map(|(i, state)| (dirs[i].name.clone(), state)).collect()
}

/// Builds a model's state from its folder, reusing the versions of `previous` whose files
/// and config did not change, and keeping a serving copy when its replacement fails.
pub(crate) fn build_state(dir: &ModelDir, previous: Option<&ModelState>) -> ModelState {
    let fingerprint = layout::fingerprint(&dir.path);
    let config = match layout::read_config(&dir.path) {
        Ok(config) => config,
        Err(e) => return keep_previous_or_fail(dir, previous, e, fingerprint),
    };
    if let Some(named) = &config.name
        && named != &dir.name
    {
        let e = format!("config.toml names the model '{named}', but its folder is '{}'", dir.name);
        return keep_previous_or_fail(dir, previous, e, fingerprint);
    }
    let on_disk = config.versions_on_disk(&dir.versions);
    let mut selected = config.version_policy().select(&on_disk);
    // A rollout's versions are served whatever the version policy says; without a policy, the
    // version that answers is the highest other one.
    if let Some(rollout) = &config.rollout {
        if config.version_policy.is_none() {
            let named = rollout.versions();
            selected = on_disk.iter().rev().find(|v| !named.contains(v)).copied().into_iter().collect();
        }
        for v in rollout.versions() {
            if !on_disk.contains(&v) {
                let e = format!("[rollout] names version {v}, which is not in the folder (versions: {on_disk:?})");
                return keep_previous_or_fail(dir, previous, e, fingerprint);
            }
            if !selected.contains(&v) {
                selected.push(v);
            }
        }
        selected.sort_unstable();
        if selected.iter().all(|v| rollout.versions().contains(v)) {
            let e = "[rollout] needs a version to answer besides the canary and the shadow".to_string();
            return keep_previous_or_fail(dir, previous, e, fingerprint);
        }
    }
    if selected.is_empty() {
        let e = if dir.versions.is_empty() {
            format!("no version folders in {} (expected {}/1/model.onnx)", dir.path.display(), dir.path.display())
        } else {
            format!("the version policy selects none of the versions on disk {:?}", dir.versions)
        };
        return keep_previous_or_fail(dir, previous, e, fingerprint);
    }
    let config_unchanged = previous.is_some_and(|p| p.fingerprint.config == fingerprint.config);
    // The same rollout as before keeps its counts.
    let rollout = config.rollout.clone().map(|r| match previous.and_then(|p| p.rollout.clone()) {
        Some(kept) if kept.config == r => kept,
        _ => Arc::new(crate::rollout::Rollout::new(r)),
    });
    let mut state = ModelState { name: dir.name.clone(), versions: BTreeMap::new(), error: None, fingerprint, rollout };
    let mut errors = Vec::new();
    for version in selected {
        let old = previous.and_then(|p| match p.versions.get(&version) {
            Some(VersionState::Ready(m)) => Some((m.clone(), p.fingerprint.versions.get(&version).copied())),
            _ => None,
        });
        if let Some((model, old_file)) = &old
            && config_unchanged
            && *old_file == state.fingerprint.versions.get(&version).copied()
        {
            state.versions.insert(version, VersionState::Ready(model.clone()));
            continue;
        }
        match load_and_log(dir, version, &config) {
            Ok(model) => {
                state.versions.insert(version, VersionState::Ready(Arc::new(model)));
            }
            Err(reason) => match old {
                Some((model, _)) => {
                    errors.push(format!("version {version}: reload failed, the previous copy keeps serving: {reason}"));
                    state.versions.insert(version, VersionState::Ready(model));
                }
                None => {
                    state.versions.insert(version, VersionState::Failed(reason));
                }
            },
        }
    }
    // If none of the newly selected versions could load (say version 2 arrived corrupt
    // under `latest = 1`), the versions already serving carry on rather than going dark.
    if state.ready_versions().is_empty()
        && let Some(previous) = previous
        && !previous.ready_versions().is_empty()
    {
        let failed: Vec<String> = state
            .versions
            .iter()
            .filter_map(|(v, s)| match s {
                VersionState::Failed(reason) => Some(format!("version {v}: {reason}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        for (v, s) in &previous.versions {
            if let VersionState::Ready(model) = s {
                state.versions.insert(*v, VersionState::Ready(model.clone()));
            }
        }
        errors.push(format!(
            "new versions failed to load, still serving {:?}: {}",
            previous.ready_versions(),
            failed.join("; ")
        ));
    }
    if !errors.is_empty() {
        state.error = Some(errors.join("; "));
    }
    state
}

pub(crate) fn load_and_log(dir: &ModelDir, version: u64, config: &ModelConfig) -> Result<ServedModel, String> {
    match repository::load_version(dir, version, config) {
        Ok(model) => {
            tracing::info!(
                model = %dir.name,
                version,
                instances = model.instance_count(),
                inputs = ?model.signature.input_names(),
                outputs = ?model.signature.output_names(),
                "model ready"
            );
            Ok(model)
        }
        Err(e) => {
            tracing::error!(model = %dir.name, version, "{e}");
            Err(match e {
                EngineError::LoadFailed { reason, .. } => reason,
                other => other.to_string(),
            })
        }
    }
}

/// A model-level problem: keep serving what was served (noting the error), or fail.
pub(crate) fn keep_previous_or_fail(
    dir: &ModelDir,
    previous: Option<&ModelState>,
    error: String,
    fp: Fingerprint,
) -> ModelState {
    tracing::error!(model = %dir.name, "{error}");
    match previous.filter(|p| !p.ready_versions().is_empty()) {
        Some(p) => ModelState {
            error: Some(format!("reload failed, the previous copy keeps serving: {error}")),
            fingerprint: fp,
            ..p.clone()
        },
        None => ModelState::failed(&dir.name, error, fp),
    }
}

/// Folders by level of the dependency graph: models, collections (may embed with a model),
/// pipelines (call models and collections).
pub(crate) fn by_level<'a>(dirs: &[&'a ModelDir]) -> (Vec<&'a ModelDir>, Vec<&'a ModelDir>, Vec<&'a ModelDir>) {
    let (mut models, mut collections, mut pipelines) = (Vec::new(), Vec::new(), Vec::new());
    for &dir in dirs {
        if is_pipeline_dir(&dir.path) {
            pipelines.push(dir);
        } else if is_collection_dir(&dir.path) {
            collections.push(dir);
        } else {
            models.push(dir);
        }
    }
    (models, collections, pipelines)
}

/// Whether a model calls one of `changed` (its ready version's dependencies), or failed for
/// want of one (its error names it) — not one an operator unloaded.
pub(crate) fn depends_on(state: &ModelState, changed: &[String]) -> bool {
    let ready = state.versions.values().find_map(|v| match v {
        VersionState::Ready(handle) => Some(handle),
        VersionState::Failed(_) => None,
    });
    match ready {
        Some(handle) => handle.dependencies().iter().any(|(name, _)| changed.contains(name)),
        None => {
            let reason = state.unavailable_reason().unwrap_or_default();
            state.error.as_deref() != Some("unloaded") && changed.iter().any(|c| reason.contains(&format!("'{c}'")))
        }
    }
}

/// Whether two states serve the very same versions (a reload that changed nothing).
pub(crate) fn same_versions(a: &ModelState, b: &ModelState) -> bool {
    a.versions.len() == b.versions.len()
        && a.versions.iter().all(|(v, s)| match (s, b.versions.get(v)) {
            (VersionState::Ready(x), Some(VersionState::Ready(y))) => Arc::ptr_eq(x, y),
            (VersionState::Failed(x), Some(VersionState::Failed(y))) => x == y,
            _ => false,
        })
}

/// A folder that holds a pipeline: a pipeline.toml, or a Triton ensemble's config.pbtxt.
pub(crate) fn is_pipeline_dir(path: &std::path::Path) -> bool {
    path.join(PIPELINE_FILE).is_file() || kiln_repository::triton_config::is_ensemble(path)
}

/// A folder that holds a vector collection (`kind = "vector_index"` in its config.toml).
pub(crate) fn is_collection_dir(path: &std::path::Path) -> bool {
    layout::read_config(path).is_ok_and(|c| c.is_vector_index())
}

/// The pipeline.toml text of a pipeline folder (a Triton ensemble's, translated; the fields kiln
/// does not apply are named in one warning).
pub(crate) fn pipeline_text(dir: &ModelDir) -> Result<String, String> {
    let pipeline_file = dir.path.join(PIPELINE_FILE);
    if pipeline_file.is_file() {
        return std::fs::read_to_string(&pipeline_file)
            .map_err(|e| format!("cannot read {}: {e}", pipeline_file.display()));
    }
    let file = dir.path.join(kiln_repository::triton_config::FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (pipeline, ignored) =
        kiln_repository::triton_config::ensemble_pipeline(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if !ignored.is_empty() {
        tracing::warn!(model = %dir.name, "config.pbtxt: kiln does not apply {}", ignored.join(", "));
    }
    Ok(pipeline)
}
