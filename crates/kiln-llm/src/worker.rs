//! A scheduler's thread: started, loaded, stopped. Under `--llm-memory-budget` a model's
//! thread loads its weights itself (after the models unloaded for room have exited), so a
//! request never waits on the async executor for a load.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;

use crate::metrics::LlmMetrics;
use crate::scheduler::{Limits, SCHEDULERS, STEP_TOKENS, Scheduler};
use crate::{Event, LlmError, Pending};

/// A started scheduler: where requests go, and how to stop it.
pub(crate) struct Running {
    queue: SyncSender<Pending>,
    /// Requests that may wait for a slot (for the refusal's message).
    queue_size: usize,
    stop: Arc<AtomicBool>,
    /// True once the thread has ended and dropped its context and weights.
    exited: Arc<AtomicBool>,
    /// True once its load failed (the thread then only answers requests with the error).
    failed: Arc<AtomicBool>,
}

impl Running {
    pub(crate) fn send(&self, pending: Pending) -> Result<(), LlmError> {
        match self.queue.try_send(pending) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LlmError::Overloaded { waiting: self.queue_size }),
            Err(TrySendError::Disconnected(_)) => Err(LlmError::ShuttingDown),
        }
    }

    /// Whether the thread has ended (its load failed, or it was stopped).
    pub(crate) fn ended(&self) -> bool {
        self.exited.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(crate) fn exited(&self) -> Arc<AtomicBool> {
        self.exited.clone()
    }
}

/// Sets its flag when dropped: the last thing a scheduler thread drops.
struct ExitFlag(Arc<AtomicBool>);

impl Drop for ExitFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What a scheduler thread loads before it serves: the model's weights.
pub(crate) type Load = Box<dyn FnOnce() -> Result<Arc<LlamaModel>, LlmError> + Send>;

/// Starts a scheduler thread: it waits for `after` (models unloaded to make room) to exit, runs
/// `load`, creates its context, then serves. With `wait`, returns once the context exists (a
/// model that cannot load is the caller's error); without, at once — a failed load then fails
/// the requests that came meanwhile, and [`Running::ended`] says so.
pub(crate) fn start(
    backend: &'static LlamaBackend,
    load: Load,
    limits: Limits,
    metrics: Arc<LlmMetrics>,
    thread_name: String,
    after: Vec<Arc<AtomicBool>>,
    wait: bool,
) -> Result<Running, LlmError> {
    let (queue, requests) = std::sync::mpsc::sync_channel::<Pending>(limits.channel.max(1));
    let queue_size = limits.channel.saturating_sub(limits.max_sequences);
    let (ready, started) = std::sync::mpsc::sync_channel::<Result<(), LlmError>>(1);
    let stop = Arc::new(AtomicBool::new(false));
    let exited = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let (stopped, exit, load_failed) = (stop.clone(), ExitFlag(exited.clone()), failed.clone());
    let thread = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let _exit = exit;
            let failed = load_failed;
            wait_exited(&after);
            // A failed load answers every request that reaches this thread with its error until
            // the sender is dropped (the next request starts a new thread) or the process stops.
            let fail = |e: LlmError| {
                tracing::error!("LLM load failed: {e}");
                failed.store(true, Ordering::Release);
                let _ = ready.send(Err(e.clone()));
                loop {
                    match requests.recv_timeout(Duration::from_millis(100)) {
                        Ok(pending) => pending.sink.send(Event::Failed(e.clone())),
                        Err(RecvTimeoutError::Timeout) if !stopped.load(Ordering::Relaxed) => {}
                        Err(_) => return,
                    }
                }
            };
            // A panic while loading fails the load (and the requests), never the thread silently.
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "a panic".into());
                Err(LlmError::Load(format!("loading the model failed: {why}")))
            });
            let model = match loaded {
                Ok(model) => model,
                Err(e) => return fail(e),
            };
            let context = match context(backend, &model, &limits) {
                Ok(context) => context,
                Err(e) => return fail(e),
            };
            let _ = ready.send(Ok(()));
            let mut scheduler = Scheduler::new(&model, context, &limits, metrics);
            scheduler.batched = limits.batched();
            scheduler.run(&requests, &stopped);
        })
        .map_err(|e| LlmError::Load(format!("cannot start the scheduler thread: {e}")))?;
    if wait {
        started.recv().map_err(|_| LlmError::Load("the scheduler thread ended while starting".into()))??;
    }
    let mut schedulers = SCHEDULERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Threads of models unloaded since have ended: forget them.
    schedulers.retain(|(_, t)| !t.is_finished());
    schedulers.push((stop.clone(), thread));
    Ok(Running { queue, queue_size, stop, exited, failed })
}

/// The llama.cpp context of a scheduler: a KV cache of `context_length` per sequence slot.
fn context<'m>(backend: &LlamaBackend, model: &'m LlamaModel, limits: &Limits) -> Result<LlamaContext<'m>, LlmError> {
    let threads = i32::try_from(limits.threads).unwrap_or(i32::MAX);
    let sequences = u32::try_from(limits.max_sequences).unwrap_or(u32::MAX);
    let total = limits.context_length.saturating_mul(limits.max_sequences);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(u32::try_from(total).unwrap_or(u32::MAX)))
        .with_n_batch(STEP_TOKENS as u32)
        .with_n_ubatch(STEP_TOKENS as u32)
        .with_n_seq_max(sequences)
        .with_kv_unified(false)
        .with_flash_attention_policy(if limits.flash_attention {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        })
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(backend, params).map_err(|e| LlmError::Load(format!("cannot create the llama.cpp context: {e}")))
}

/// Waits (bounded) until every unloaded model's thread has exited.
fn wait_exited(flags: &[Arc<AtomicBool>]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !flags.iter().all(|f| f.load(Ordering::Acquire)) {
        std::thread::sleep(Duration::from_millis(5));
    }
}
