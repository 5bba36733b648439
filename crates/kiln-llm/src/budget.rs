//! Several LLMs in one process under a memory budget (`--llm-memory-budget`). A model under the
//! budget keeps only its vocabulary loaded for good (templates, tokenizing, grammars); its
//! weights and KV cache — the scheduler thread's — are loaded when a request needs them (at
//! start when they fit), and the least recently used idle model is unloaded when another needs
//! the room. A busy model is never unloaded: a request that finds no room gets
//! [`LlmError::NoRoom`] (503) naming who holds it, at once.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use crate::LlmError;
use crate::metrics::LlmMetrics;
use crate::worker::Running;

/// The process's budget, set once before models load.
static BUDGET: OnceLock<Budget> = OnceLock::new();

/// Sets the memory budget for every LLM loaded after it (bytes of weights, KV cache and compute
/// buffers, as estimated at load). Once per process; a second call is an error.
pub fn set_memory_budget(bytes: u64) -> Result<(), LlmError> {
    BUDGET
        .set(Budget { limit: bytes, members: Mutex::new(Vec::new()) })
        .map_err(|_| LlmError::Load("the LLM memory budget is already set".into()))
}

pub(crate) fn current() -> Option<&'static Budget> {
    BUDGET.get()
}

pub(crate) struct Budget {
    pub limit: u64,
    members: Mutex<Vec<Weak<Resident>>>,
}

/// Starts a model's scheduler (it loads the weights on its thread, after the models unloaded to
/// make room have exited).
pub(crate) type Starter = dyn Fn(Vec<Arc<AtomicBool>>) -> Result<Running, LlmError> + Send + Sync;

/// A model under the budget.
pub(crate) struct Resident {
    pub name: String,
    pub bytes: u64,
    budget: &'static Budget,
    start: Box<Starter>,
    metrics: Arc<LlmMetrics>,
    state: Mutex<State>,
}

struct State {
    running: Option<Running>,
    last_used: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const MIB: u64 = 1 << 20;

impl Budget {
    /// Adds a model; starts it now (waiting for its load, so a broken file is a load error)
    /// when it fits beside the loaded ones without unloading any.
    pub(crate) fn register(
        &self,
        resident: &Arc<Resident>,
        start_now: impl FnOnce() -> Result<Running, LlmError>,
    ) -> Result<(), LlmError> {
        if resident.bytes > self.limit {
            return Err(LlmError::Load(format!(
                "it needs about {} MiB (weights, KV cache, buffers), more than the whole --llm-memory-budget of {} MiB",
                resident.bytes / MIB,
                self.limit / MIB
            )));
        }
        let mut members = lock(&self.members);
        members.retain(|m| m.strong_count() > 0);
        let used: u64 = loaded(&members).map(|m| m.bytes).sum();
        if used + resident.bytes <= self.limit {
            let running = start_now()?;
            lock(&resident.state).running = Some(running);
        }
        members.push(Arc::downgrade(resident));
        Ok(())
    }

    /// Unloads idle models, least recently used first, until `resident` fits; the flags say when
    /// their threads have exited (their memory is free).
    fn make_room(&self, members: &[Weak<Resident>], resident: &Resident) -> Result<Vec<Arc<AtomicBool>>, LlmError> {
        let others: Vec<Arc<Resident>> = loaded(members).filter(|m| !std::ptr::eq(Arc::as_ptr(m), resident)).collect();
        let mut used: u64 = others.iter().map(|m| m.bytes).sum();
        let mut idle: Vec<(Instant, &Arc<Resident>)> = others.iter().map(|m| (lock(&m.state).last_used, m)).collect();
        idle.sort_by_key(|(at, _)| *at);
        let mut exited = Vec::new();
        for (_, other) in idle {
            if used + resident.bytes <= self.limit {
                break;
            }
            if let Some(flag) = other.unload_if_idle() {
                tracing::info!(model = %other.name, for_model = %resident.name, "LLM unloaded to make room (--llm-memory-budget)");
                used -= other.bytes;
                exited.push(flag);
            }
        }
        if used + resident.bytes > self.limit {
            let busy: Vec<String> = loaded(members)
                .filter(|m| !std::ptr::eq(Arc::as_ptr(m), resident))
                .map(|m| format!("{} ({} MiB)", m.name, m.bytes / MIB))
                .collect();
            return Err(LlmError::NoRoom(format!(
                "model '{}' needs {} MiB and the --llm-memory-budget of {} MiB is held by busy models: {}; try again later",
                resident.name,
                resident.bytes / MIB,
                self.limit / MIB,
                busy.join(", ")
            )));
        }
        Ok(exited)
    }
}

/// The members whose weights are loaded now.
fn loaded(members: &[Weak<Resident>]) -> impl Iterator<Item = Arc<Resident>> + '_ {
    members.iter().filter_map(Weak::upgrade).filter(|m| m.is_loaded())
}

impl Resident {
    pub(crate) fn new(
        name: String,
        bytes: u64,
        budget: &'static Budget,
        metrics: Arc<LlmMetrics>,
        start: Box<Starter>,
    ) -> Resident {
        let state = Mutex::new(State { running: None, last_used: Instant::now() });
        Resident { name, bytes, budget, start, metrics, state }
    }

    /// Whether its weights are loaded (or loading): a scheduler runs and its load did not fail.
    pub(crate) fn is_loaded(&self) -> bool {
        lock(&self.state).running.as_ref().is_some_and(|r| !r.ended())
    }

    /// Hands `pending` to the scheduler, loading the model first (making room) when it is not.
    pub(crate) fn send(&self, pending: crate::Pending) -> Result<(), LlmError> {
        let budget = self.budget;
        let mut members = lock(&budget.members);
        members.retain(|m| m.strong_count() > 0);
        let mut state = lock(&self.state);
        state.last_used = Instant::now();
        if state.running.as_ref().is_some_and(Running::ended) {
            // Its load failed (or it stopped): the next request tries again.
            state.running = None;
        }
        if state.running.is_none() {
            drop(state);
            let exited = budget.make_room(&members, self)?;
            let running = (self.start)(exited)?;
            tracing::info!(model = %self.name, "LLM loading on demand (--llm-memory-budget)");
            state = lock(&self.state);
            state.running = Some(running);
        }
        drop(members);
        let running = state.running.as_ref().ok_or(LlmError::ShuttingDown)?;
        running.send(pending)
    }

    /// Stops the scheduler if no request is running or waiting; the flag turns true when its
    /// thread (and the memory it holds) is gone.
    fn unload_if_idle(&self) -> Option<Arc<AtomicBool>> {
        let mut state = lock(&self.state);
        if self.metrics.active() + self.metrics.waiting() > 0 {
            return None;
        }
        let running = state.running.take()?;
        running.stop();
        Some(running.exited())
    }
}

/// What a model takes when loaded: its file (the weights), the KV cache of every sequence slot
/// (f16 keys and values per layer and cell) and the logits of one token per slot (kiln asks for
/// no more), plus room for llama.cpp's compute buffers. Read from the GGUF's metadata (a
/// vocabulary-only load has it).
pub(crate) fn estimate(model: &llama_cpp_2::model::LlamaModel, file_bytes: u64, cells: usize, slots: usize) -> u64 {
    // Metadata only: a vocabulary-only load has no hyperparameters.
    let meta = |key: &str| meta_u64(model, key);
    let layers = meta("block_count").unwrap_or(0);
    let heads = meta("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = meta("attention.head_count_kv").unwrap_or(heads);
    let embd = meta("embedding_length").unwrap_or(0);
    let key = meta("attention.key_length").unwrap_or(embd / heads);
    let value = meta("attention.value_length").unwrap_or(embd / heads);
    let kv = layers * cells as u64 * kv_heads * (key + value) * 2;
    let logits = u64::try_from(model.n_vocab()).unwrap_or(0) * slots as u64 * 4;
    file_bytes + kv + logits + 64 * MIB
}

/// A number from the GGUF's metadata under the model's architecture (`{arch}.{key}`).
pub(crate) fn meta_u64(model: &llama_cpp_2::model::LlamaModel, key: &str) -> Option<u64> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    model.meta_val_str(&format!("{arch}.{key}")).ok().and_then(|v| v.trim().parse::<u64>().ok())
}
