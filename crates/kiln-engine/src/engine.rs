//! The [`Engine`] handle: which model versions are served, and how that changes while
//! serving (explicit load/unload, repository polling) without dropping a request.
//!
//! Zero-downtime rule: a model's new state is built completely (new versions loaded and
//! warmed up, unchanged versions reused) before it replaces the old one in one map write.
//! Requests in flight hold an `Arc` of the version they started on and finish on it; the old
//! version's workers stop once the last of them is answered. A version that fails to load
//! leaves the copy already serving in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::load::{
    build_state, by_level, depends_on, is_collection_dir, is_pipeline_dir, keep_previous_or_fail, load_in_parallel,
    load_parallelism, pipeline_text, same_versions,
};
use crate::state::{ModelState, VersionState};
use kiln_pipeline::{ModelResolver, Pipeline};
use kiln_repository::layout::{self, Fingerprint, ModelDir};
use kiln_serving::EngineError;
use kiln_serving::{InferRequest, InferResponse, ModelHandle};

/// How the set of served models may change after start (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelControl {
    /// Everything in the repository is loaded at start and never changes.
    None,
    /// The repository is rescanned every `interval`; new, changed and removed models and
    /// versions are applied.
    Poll { interval: Duration },
    /// Models are loaded and unloaded on request (REST/gRPC repository API) only.
    Explicit,
}

/// What the engine serves and how.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub repository: PathBuf,
    pub control: ModelControl,
    /// In explicit mode, the models to load at start (`*` = all); ignored otherwise.
    pub startup_models: Vec<String>,
    /// Collections get their points from a store as well as their folder: a collection built
    /// before [`Engine::on_new_collection`] is set refuses searches until it has caught up.
    /// Without one, a collection is ready as soon as its folder's points are indexed.
    pub points_store: bool,
}

/// What runs each newly built collection's catch-up (see [`Engine::on_new_collection`]). It must
/// not block: it starts the work and returns.
pub type CollectionHook = Arc<dyn Fn(Arc<kiln_collection::Collection>) + Send + Sync>;

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<u64>,
    pub ready: bool,
    pub reason: Option<String>,
}

struct EngineInner {
    config: EngineConfig,
    models: RwLock<BTreeMap<String, Arc<ModelState>>>,
    /// Serializes loads and unloads so two reloads of one model cannot interleave.
    changes: Mutex<()>,
    /// Brings each new collection from built to ready (the server's points store catch-up).
    collection_hook: RwLock<Option<CollectionHook>>,
}

/// The cloneable handle to every served model.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl Engine {
    /// Loads every model of a repository (model control `none`).
    pub fn load_repository(repository: &Path) -> Result<Engine, EngineError> {
        Engine::start(EngineConfig {
            repository: repository.to_path_buf(),
            control: ModelControl::None,
            startup_models: Vec::new(),
            points_store: false,
        })
    }

    /// Creates the engine and loads the models its mode loads at start: all of them, or in
    /// explicit mode those named in `startup_models`. A model that fails is recorded with
    /// its reason and does not stop the others; only an unreadable repository is an error.
    /// Blocking; ONNX Runtime must be initialised first (`kiln_backend_ort::runtime`).
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let dirs = layout::scan(&config.repository)?;
        let explicit = config.control == ModelControl::Explicit;
        let startup = config.startup_models.clone();
        let wanted = |name: &str| !explicit || startup.iter().any(|m| m == "*" || m == name);
        if config.control == ModelControl::Explicit {
            for name in config.startup_models.iter().filter(|m| *m != "*") {
                if !dirs.iter().any(|d| &d.name == name) {
                    return Err(EngineError::Repository(format!(
                        "--load-model {name}: no such model folder in {}",
                        config.repository.display()
                    )));
                }
            }
        }
        let engine = Engine {
            inner: Arc::new(EngineInner {
                config,
                models: RwLock::new(BTreeMap::new()),
                changes: Mutex::new(()),
                collection_hook: RwLock::new(None),
            }),
        };
        // In dependency order, never by name: models first, in parallel; then collections,
        // which may embed with a model; then pipelines, which call models and collections and
        // are validated against them. (A pipeline cannot call a pipeline, nor embed a
        // collection: the graph has these three levels and no cycle.)
        let wanted: Vec<&ModelDir> = dirs.iter().filter(|d| wanted(&d.name)).collect();
        let (models, collections, pipelines) = by_level(&wanted);
        for (name, state) in load_in_parallel(&models, load_parallelism()) {
            engine.write_models().insert(name, Arc::new(state));
        }
        for dir in collections.into_iter().chain(pipelines) {
            let state = engine.build_state(dir, None);
            engine.write_models().insert(dir.name.clone(), Arc::new(state));
        }
        Ok(engine)
    }

    /// The repository folder this engine serves.
    pub fn repository(&self) -> &Path {
        &self.inner.config.repository
    }

    /// The model control mode.
    pub fn control(&self) -> ModelControl {
        self.inner.config.control
    }

    fn models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ModelState>>> {
        // Writers replace whole entries, so a poisoned lock never holds a half-written map.
        self.inner.models.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_models(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ModelState>>> {
        self.inner.models.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of one model.
    pub fn model_state(&self, name: &str) -> Result<Arc<ModelState>, EngineError> {
        self.models().get(name).cloned().ok_or_else(|| EngineError::ModelNotFound(name.to_string()))
    }

    /// Every model currently known, by name.
    pub fn model_states(&self) -> Vec<Arc<ModelState>> {
        self.models().values().cloned().collect()
    }

    /// The ready version to use: the named one, or the highest ready one — with a `[rollout]`,
    /// the canary for its share of requests, else the highest that is neither canary nor shadow.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError> {
        let state = self.model_state(name)?;
        match version {
            None | Some("") => {
                let ready = |v: &u64| match state.versions.get(v) {
                    Some(VersionState::Ready(m)) => Some(m.clone()),
                    _ => None,
                };
                if let Some(rollout) = &state.rollout {
                    // The canary's share; then the highest version that is neither the canary
                    // nor the shadow (or, when none of those is ready, whatever is).
                    if let Some(c) = rollout.config.canary
                        && rollout.takes_canary(c.percent)
                        && let Some(m) = ready(&c.version)
                    {
                        return Ok(m);
                    }
                    let named = rollout.config.versions();
                    if let Some(m) = state.versions.keys().rev().filter(|v| !named.contains(v)).find_map(ready) {
                        return Ok(m);
                    }
                }
                let any = state.versions.keys().rev().find_map(ready);
                any.ok_or_else(|| EngineError::NotReady(state.unavailable_reason().unwrap_or_default()))
            }
            Some(text) => {
                let not_found = || EngineError::VersionNotFound {
                    model: name.to_string(),
                    version: text.to_string(),
                    served: state.ready_versions(),
                };
                let version: u64 = text.parse().map_err(|_| not_found())?;
                match state.versions.get(&version) {
                    Some(VersionState::Ready(m)) => Ok(m.clone()),
                    Some(VersionState::Failed(reason)) => Err(EngineError::NotReady(format!(
                        "model '{name}' version {version} is not available: {reason}"
                    ))),
                    None => Err(not_found()),
                }
            }
        }
    }

    /// The shadow of a request that `answered` ran, when its model has one (ready, and not
    /// `answered` itself), with the rollout that counts its comparisons.
    pub fn shadow(
        &self,
        answered: &kiln_serving::ServedModel,
    ) -> Option<(ModelHandle, std::sync::Arc<crate::rollout::Rollout>)> {
        let state = self.model_state(&answered.name).ok()?;
        let rollout = state.rollout.clone()?;
        let shadow = rollout.config.shadow.filter(|&v| v != answered.version)?;
        match state.versions.get(&shadow) {
            Some(VersionState::Ready(m)) => Some((m.clone(), rollout)),
            _ => None,
        }
    }

    /// The version [`Engine::model`] picks, if it can answer now: not only loaded, but every
    /// model it calls (a pipeline's steps, a collection's embedder, and theirs) ready too, and
    /// not refusing requests itself. The error names the chain down to what is missing.
    pub fn ready_model(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError> {
        let handle = self.model(name, version)?;
        let mut seen = vec![name.to_string()];
        match self.unready_reason(&handle, &mut seen) {
            Some(reason) => Err(EngineError::NotReady(format!("model '{name}' is not ready: {reason}"))),
            None => Ok(handle),
        }
    }

    /// Why `handle` (or a model it calls, named along the chain) refuses requests now; None
    /// when it is ready.
    fn unready_reason(&self, handle: &ModelHandle, seen: &mut Vec<String>) -> Option<String> {
        if let Some(reason) = handle.refusal() {
            return Some(reason);
        }
        for (name, version) in handle.dependencies() {
            if seen.contains(&name) {
                continue; // a cycle is the loader's error to report, not readiness'.
            }
            let dependency = match self.model(&name, version.as_deref()) {
                Ok(dependency) => dependency,
                Err(e) => return Some(format!("it calls '{name}': {e}")),
            };
            seen.push(name.clone());
            if let Some(reason) = self.unready_reason(&dependency, seen) {
                return Some(format!("it calls '{name}': {reason}"));
            }
        }
        None
    }

    /// Runs one request on a model.
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResponse, EngineError> {
        self.model(name, version)?.infer(request).await
    }

    /// Every model and version with its state, sorted by name and version; in explicit mode
    /// also the repository's models that are not loaded.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        let models = self.models().clone();
        for state in models.values() {
            let ready_any = !state.ready_versions().is_empty();
            if state.versions.is_empty() {
                rows.push(IndexEntry {
                    name: state.name.clone(),
                    version: None,
                    ready: false,
                    reason: state.unavailable_reason(),
                });
            }
            for (&version, s) in &state.versions {
                let (ready, reason) = match s {
                    VersionState::Ready(handle) => {
                        let mut seen = vec![state.name.clone()];
                        match self.unready_reason(handle, &mut seen) {
                            None => (true, state.error.clone().filter(|_| ready_any)),
                            Some(reason) => (false, Some(reason)),
                        }
                    }
                    VersionState::Failed(r) => (false, Some(r.clone())),
                };
                rows.push(IndexEntry { name: state.name.clone(), version: Some(version), ready, reason });
            }
        }
        if let Ok(dirs) = layout::scan(self.repository()) {
            for dir in dirs.into_iter().filter(|d| !models.contains_key(&d.name)) {
                rows.push(IndexEntry {
                    name: dir.name,
                    version: None,
                    ready: false,
                    reason: Some("not loaded".into()),
                });
            }
        }
        rows.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        rows
    }

    /// Loads or reloads one model from the repository (explicit mode's load). New and
    /// changed versions are loaded and warmed up before they replace the serving ones;
    /// unchanged versions keep serving untouched. Blocking: call it off the executor.
    pub fn load_model(&self, name: &str) -> Result<(), EngineError> {
        layout::validate_model_name(name)?;
        let _guard = self.inner.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = layout::scan(self.repository())?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| EngineError::ModelNotFound(format!("{name}' (no such folder in the model repository)")))?;
        let previous = self.models().get(name).cloned();
        let state = self.build_state(&dir, previous.as_deref());
        let result = match state.unavailable_reason() {
            Some(reason) => Err(EngineError::NotReady(reason)),
            None => Ok(()),
        };
        let changed = previous.is_none_or(|p| !same_versions(&p, &state));
        self.write_models().insert(name.to_string(), Arc::new(state));
        if changed {
            self.rebuild_dependents(name);
        }
        result
    }

    /// After `changed` was loaded, reloaded or unloaded: rebuilds, collections first, the
    /// collections and pipelines that call it (a collection's embedder, a pipeline's steps) —
    /// they are checked against what it is now, and a collection re-embeds its folder's points —
    /// and retries those that failed naming it (a pipeline loaded before the collection it
    /// searches). Then the same for what depends on those. Called with the changes lock held.
    fn rebuild_dependents(&self, changed: &str) {
        let Ok(dirs) = layout::scan(self.repository()) else { return };
        let mut changed = vec![changed.to_string()];
        let mut done: Vec<String> = Vec::new();
        // Two levels at most (model → collection → pipeline); a third pass finds nothing.
        for _ in 0..3 {
            let current = self.models().clone();
            let dependents: Vec<&ModelDir> = dirs
                .iter()
                .filter(|d| !changed.contains(&d.name) && !done.contains(&d.name))
                .filter(|d| current.get(&d.name).is_some_and(|state| depends_on(state, &changed)))
                .collect();
            if dependents.is_empty() {
                return;
            }
            let (_, collections, pipelines) = by_level(&dependents);
            let mut next = Vec::new();
            for dir in collections.into_iter().chain(pipelines) {
                tracing::info!(model = %dir.name, after = ?changed, "rebuilding: a model it calls changed");
                let previous = self.models().get(&dir.name).cloned();
                let state = if is_collection_dir(&dir.path) {
                    self.rebuild_collection(dir, previous.as_deref())
                } else {
                    self.build_state(dir, previous.as_deref())
                };
                self.write_models().insert(dir.name.clone(), Arc::new(state));
                next.push(dir.name.clone());
            }
            done.append(&mut changed);
            changed = next;
        }
    }

    /// Stops serving a model. Requests in flight finish; the model stays in the index as
    /// unavailable ("unloaded").
    pub fn unload_model(&self, name: &str) -> Result<(), EngineError> {
        layout::validate_model_name(name)?;
        let _guard = self.inner.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let on_disk = || layout::scan(self.repository()).is_ok_and(|dirs| dirs.iter().any(|d| d.name == name));
        if !self.models().contains_key(name) && !on_disk() {
            return Err(EngineError::ModelNotFound(name.to_string()));
        }
        self.write_models()
            .insert(name.to_string(), Arc::new(ModelState::failed(name, "unloaded".into(), Fingerprint::default())));
        tracing::info!(model = name, "model unloaded");
        self.rebuild_dependents(name);
        Ok(())
    }

    /// One pass of poll mode: applies new, changed and removed models. A model whose files
    /// are still changing (a copy in progress) is left for the next pass. Blocking.
    pub fn poll_once(&self, settle: Duration) {
        let dirs = match layout::scan(self.repository()) {
            Ok(dirs) => dirs,
            Err(e) => {
                tracing::warn!("repository poll failed: {e}");
                return;
            }
        };
        let current = self.models().clone();
        for dir in &dirs {
            let fingerprint = layout::fingerprint(&dir.path);
            let changed = current.get(&dir.name).is_none_or(|s| s.fingerprint != fingerprint);
            if !changed {
                continue;
            }
            std::thread::sleep(settle);
            if layout::fingerprint(&dir.path) != fingerprint {
                tracing::debug!(model = %dir.name, "files still changing; trying again next poll");
                continue;
            }
            tracing::info!(model = %dir.name, "repository change detected; reloading");
            if let Err(e) = self.load_model(&dir.name) {
                tracing::warn!(model = %dir.name, "{e}");
            }
        }
        for name in current.keys().filter(|n| !dirs.iter().any(|d| &d.name == *n)) {
            let _guard = self.inner.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.write_models().remove(name);
            tracing::info!(model = %name, "model folder removed; model unloaded");
            self.rebuild_dependents(name);
        }
    }

    /// Finds this engine's models by name, for pipelines built in code
    /// ([`kiln_pipeline::PipelineBuilder::build`]). It does not keep the engine alive.
    pub fn resolver(&self) -> Arc<dyn ModelResolver> {
        Arc::new(EngineResolver(Arc::downgrade(&self.inner)))
    }

    /// Builds a model's or a pipeline's new state (see [`build_state`]).
    fn build_state(&self, dir: &ModelDir, previous: Option<&ModelState>) -> ModelState {
        if is_collection_dir(&dir.path) {
            return self.build_collection(dir, previous);
        }
        if !is_pipeline_dir(&dir.path) {
            return build_state(dir, previous);
        }
        let fingerprint = layout::fingerprint(&dir.path);
        let resolver = self.resolver();
        let built = pipeline_text(dir).and_then(|text| Pipeline::parse(&dir.name, &text, resolver));
        match built {
            Ok(pipeline) => {
                tracing::info!(pipeline = %dir.name, models = ?pipeline.models(), "pipeline ready");
                let settings =
                    kiln_serving::ServingSettings { records: pipeline.records.clone(), ..Default::default() };
                let model = kiln_pipeline::serve(dir.name.clone(), pipeline, settings);
                let mut versions = BTreeMap::new();
                versions.insert(1, VersionState::Ready(Arc::new(model)));
                ModelState { name: dir.name.clone(), versions, error: None, fingerprint, rollout: None }
            }
            Err(e) => keep_previous_or_fail(dir, previous, e, fingerprint),
        }
    }

    /// A collection's state: its config and points file read, the points embedded and indexed.
    /// A reload with an unchanged config.toml keeps the collection as it is — its points include
    /// what clients upserted since, which the folder does not hold.
    fn build_collection(&self, dir: &ModelDir, previous: Option<&ModelState>) -> ModelState {
        let fingerprint = layout::fingerprint(&dir.path);
        if let Some(previous) = previous
            && previous.fingerprint.config == fingerprint.config
            && !previous.ready_versions().is_empty()
        {
            return ModelState { fingerprint, ..previous.clone() };
        }
        self.rebuild_collection(dir, previous)
    }

    /// A collection built anew from its folder (and, through the hook, its store), whatever
    /// changed: its embedder did, say. Until the new copy is complete the old one serves.
    fn rebuild_collection(&self, dir: &ModelDir, previous: Option<&ModelState>) -> ModelState {
        let fingerprint = layout::fingerprint(&dir.path);
        let resolver = self.resolver();
        let built = layout::read_config(&dir.path).and_then(|config| {
            let index = config.index.clone().ok_or("kind = \"vector_index\" needs an [index] table")?;
            let collection = kiln_collection::Collection::new(&dir.name, index, false).map_err(|e| e.to_string())?;
            let embedder = match &collection.config.embedder {
                Some(name) => Some(resolver.resolve(name, None).map_err(|e| format!("[index] embedder: {e}"))?),
                None => None,
            };
            let embed = embedder.as_ref().map(|model| {
                let collection = &collection;
                move |texts: Vec<String>| crate::collection::serve::embed_blocking(collection, model, &texts)
            });
            let records = config.records_policy(&crate::collection::serve::signature(&collection))?;
            let loaded = collection.load_points_file(
                &dir.path,
                embed.as_ref().map(|f| f as &dyn Fn(Vec<String>) -> Result<Vec<Vec<f32>>, String>),
            )?;
            Ok((collection, loaded, config, records))
        });
        match built {
            Ok((collection, loaded, config, records)) => {
                tracing::info!(collection = %dir.name, points = loaded, dim = collection.config.dim,
                    metric = collection.config.metric.as_str(), exact = collection.config.exact, "collection ready");
                let settings = kiln_serving::ServingSettings {
                    request_timeout: config.request_timeout_ms.map(Duration::from_millis),
                    records,
                    ..Default::default()
                };
                let collection = Arc::new(collection);
                self.announce(&collection);
                let model = crate::collection::serve::served(collection, resolver, settings);
                let mut versions = BTreeMap::new();
                versions.insert(1, VersionState::Ready(Arc::new(model)));
                ModelState { name: dir.name.clone(), versions, error: None, fingerprint, rollout: None }
            }
            Err(e) => keep_previous_or_fail(dir, previous, e, fingerprint),
        }
    }

    /// Sets what brings every collection built from now on — at a reload too — from built to
    /// ready: the server's points-store catch-up, or, without a store, ready at once. Collections
    /// built before it (at start) are the caller's to bring up (they are not ready yet when
    /// `points_store` is set).
    pub fn on_new_collection(&self, hook: CollectionHook) {
        *self.inner.collection_hook.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
    }

    /// A collection just built (its folder's points indexed): the hook takes it from here;
    /// without a hook and without a store it is complete.
    fn announce(&self, collection: &Arc<kiln_collection::Collection>) {
        let hook = self.inner.collection_hook.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match hook {
            Some(hook) => hook(collection.clone()),
            None if !self.inner.config.points_store => collection.set_ready(),
            None => {}
        }
    }

    /// Every collection served now.
    pub fn collections(&self) -> Vec<Arc<kiln_collection::Collection>> {
        self.models()
            .values()
            .filter_map(|state| match state.versions.get(&1) {
                Some(VersionState::Ready(model)) => model.runs::<Arc<kiln_collection::Collection>>().cloned(),
                _ => None,
            })
            .collect()
    }

    /// Runs poll mode until the returned task is dropped or aborted. Does nothing in other
    /// modes.
    pub fn spawn_poller(&self) -> Option<tokio::task::JoinHandle<()>> {
        let ModelControl::Poll { interval } = self.control() else { return None };
        let engine = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let engine = engine.clone();
                let settle = interval.min(Duration::from_millis(200));
                if tokio::task::spawn_blocking(move || engine.poll_once(settle)).await.is_err() {
                    tracing::error!("repository poll panicked; polling continues");
                }
            }
        }))
    }
}

/// Lets pipelines find models at call time without keeping the engine alive.
struct EngineResolver(std::sync::Weak<EngineInner>);

impl ModelResolver for EngineResolver {
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError> {
        let inner = self.0.upgrade().ok_or_else(|| EngineError::Unavailable("kiln is shutting down".into()))?;
        let model = Engine { inner }.model(name, version)?;
        if model.is_pipeline() {
            return Err(EngineError::InvalidRequest(format!("'{name}' is a pipeline; pipeline steps call models")));
        }
        Ok(model)
    }
}
