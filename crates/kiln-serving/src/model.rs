//! One served model version: its instances on their worker threads, the bounded queue that
//! feeds them, and the dynamic batcher each worker runs — or an [`Executor`] of another kind
//! (a pipeline, an LLM, a collection), which lives in its own module and depends on this one.
//! This module knows none of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_core::{ModelInstance, ModelSignature, Tensor};
use kiln_repository::config::{ModelConfig, RecordsPolicy};
use tokio::sync::oneshot;

use crate::batcher::{self, BatchWindow, Runner, Slot};
use crate::error::EngineError;
use crate::metrics::{ModelMetrics, Outcome, Phase, Protocol};
use crate::queue::{Answer, Job, JobQueue, Refused, Reply};
use crate::request::{InferRequest, InferResponse};
use crate::stats::ModelStats;

/// Finds models by name when a pipeline runs (and when it is validated), or when a collection
/// embeds with its embedder.
pub trait ModelResolver: Send + Sync {
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError>;
}

/// A boxed future of an [`Executor`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What kind of executor runs a version (for callers that route by kind: OpenAI chat goes to
/// LLMs, pipelines are not steps of pipelines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Pipeline,
    Llm,
    Collection,
}

/// What runs a version's requests when it is not a pool of model instances.
pub trait Executor: Send + Sync + 'static {
    fn kind(&self) -> ExecutorKind;

    /// Runs one request for `model` (the caller's [`InFlight`] guard counts it).
    fn run<'a>(
        &'a self,
        model: &'a ServedModel,
        request: InferRequest,
    ) -> BoxFuture<'a, Result<InferResponse, EngineError>>;

    /// The models it calls, each with the version asked for (None: the newest ready one).
    fn dependencies(&self) -> Vec<(String, Option<String>)> {
        Vec::new()
    }

    /// Why it refuses requests now, by itself.
    fn refusal(&self, _model: &ServedModel) -> Option<String> {
        None
    }

    /// Requests waiting in it now.
    fn queue_depth(&self) -> usize {
        0
    }

    /// What it runs, for callers that use that directly (OpenAI chat an LLM, REST upserts a
    /// collection): found with [`ServedModel::runs`] by the type's owner, so this crate names
    /// no kind.
    fn runs(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Settings a model version runs with, resolved from config.toml and defaults.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    pub instances: usize,
    pub threads: usize,
    /// Largest first dimension of a request, and of a merged batch. 0 = no limit and no
    /// dynamic batching.
    pub max_batch_size: usize,
    pub max_queue_size: usize,
    /// Whether concurrent requests are merged into batches.
    pub dynamic_batching: bool,
    /// Longest a worker waits for more requests to fill a batch.
    pub max_queue_delay: Duration,
    /// Adaptive mode: tune the wait to keep request latency under this.
    pub latency_target: Option<Duration>,
    /// Default per-request timeout.
    pub request_timeout: Option<Duration>,
    /// What the prediction log keeps of this model's requests.
    pub records: RecordsPolicy,
}

impl ServingSettings {
    /// config.toml's values, with kiln's defaults where it says nothing.
    pub fn of(config: &ModelConfig) -> Self {
        ServingSettings {
            instances: config.instances(),
            threads: config.threads(),
            max_batch_size: config.max_batch_size(),
            max_queue_size: config.max_queue_size(),
            dynamic_batching: config.dynamic_batching(),
            max_queue_delay: config.max_queue_delay(),
            latency_target: config.latency_target(),
            request_timeout: config.request_timeout(),
            records: config.records.as_ref().and_then(|r| r.policy().ok()).unwrap_or_default(),
        }
    }
}

impl Default for ServingSettings {
    /// The settings of a model without a config.toml.
    fn default() -> Self {
        ServingSettings::of(&ModelConfig::default())
    }
}

/// A loaded, ready model version. Dropping the last handle stops its workers once the
/// requests already queued are answered.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub signature: ModelSignature,
    /// Class labels per output, in column order.
    pub labels: BTreeMap<String, Vec<String>>,
    pub settings: ServingSettings,
    /// Request, queue and compute counters (Triton's statistics extension).
    pub stats: Arc<ModelStats>,
    metrics: Arc<ModelMetrics>,
    executor: Runs,
}

/// What runs a served version's requests.
enum Runs {
    /// A model: its instances on worker threads, fed by a bounded queue.
    Workers(WorkerPool),
    /// A pipeline, an LLM or a collection.
    Other(Box<dyn Executor>),
}

/// One worker thread per instance, each running the dynamic batcher over the shared queue.
/// Dropping it closes the queue: the workers answer what is queued, then exit.
struct WorkerPool {
    queue: Arc<JobQueue>,
    /// The instances, each locked by its worker while it runs a batch, or by a blocking
    /// caller that found it idle.
    slots: Vec<Slot>,
    runner: Arc<Runner>,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

impl ServedModel {
    /// Starts one worker thread per instance. `instances` must not be empty.
    pub fn start(
        name: String,
        version: u64,
        signature: ModelSignature,
        labels: BTreeMap<String, Vec<String>>,
        settings: ServingSettings,
        instances: Vec<Box<dyn ModelInstance>>,
    ) -> Result<Self, EngineError> {
        let per_turn = if settings.dynamic_batching { settings.max_batch_size } else { 1 };
        let queue = Arc::new(JobQueue::new(settings.max_queue_size, per_turn));
        let stats = Arc::new(ModelStats::default());
        let metrics = Arc::new(ModelMetrics::new(&name, version));
        let window = Arc::new(BatchWindow::new(settings.max_queue_delay, settings.latency_target));
        metrics.batch_window(window.current());
        // Rows are counted along the first dimension when the model has a dynamic one.
        let batched = signature.inputs.first().is_some_and(|s| s.shape.first() == Some(&-1));
        let runner = Arc::new(Runner {
            stats: stats.clone(),
            metrics: metrics.clone(),
            window,
            counts_rows: batched,
            max_batch_size: settings.max_batch_size,
            dynamic_batching: settings.dynamic_batching,
        });
        let slots: Vec<Slot> = instances.into_iter().map(|i| Arc::new(std::sync::Mutex::new(i))).collect();
        let mut pool = WorkerPool { queue, slots, runner, workers: Vec::new() };
        for (i, slot) in pool.slots.iter().enumerate() {
            let worker = batcher::Worker { slot: slot.clone(), queue: pool.queue.clone(), runner: pool.runner.clone() };
            let handle = std::thread::Builder::new()
                .name(format!("kiln-{name}-v{version}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| EngineError::Backend(format!("cannot start a worker thread: {e}")))?;
            pool.workers.push(handle);
        }
        Ok(ServedModel { name, version, signature, labels, settings, stats, metrics, executor: Runs::Workers(pool) })
    }

    /// Serves a version with an executor of another kind (a pipeline, an LLM, a collection:
    /// their modules' constructors call this).
    pub fn with_executor(
        name: String,
        version: u64,
        signature: ModelSignature,
        settings: ServingSettings,
        executor: impl Executor,
    ) -> Self {
        ServedModel {
            metrics: Arc::new(ModelMetrics::new(&name, version)),
            stats: Arc::new(ModelStats::default()),
            labels: BTreeMap::new(),
            signature,
            name,
            version,
            settings,
            executor: Runs::Other(Box::new(executor)),
        }
    }

    /// What this version's executor runs, when it is a `T` (an `Arc<LlmModel>`, an
    /// `Arc<Collection>`: see [`Executor::runs`]).
    pub fn runs<T: 'static>(&self) -> Option<&T> {
        match &self.executor {
            Runs::Other(e) => e.runs().and_then(|r| r.downcast_ref::<T>()),
            Runs::Workers(_) => None,
        }
    }

    fn kind(&self) -> Option<ExecutorKind> {
        match &self.executor {
            Runs::Other(e) => Some(e.kind()),
            Runs::Workers(_) => None,
        }
    }

    /// Counts a request that bypasses [`ServedModel::infer`] (an OpenAI chat or completion,
    /// which may stream) in the model's metrics and statistics, however it ends.
    pub fn track(model: &ModelHandle, protocol: Protocol) -> InFlight<ModelHandle> {
        InFlight::enter(model.clone(), protocol)
    }

    /// Whether this is a generative LLM (`kind = "llm"`).
    pub fn is_llm(&self) -> bool {
        self.kind() == Some(ExecutorKind::Llm)
    }

    /// Whether this is a pipeline.
    pub fn is_collection(&self) -> bool {
        self.kind() == Some(ExecutorKind::Collection)
    }

    pub fn is_pipeline(&self) -> bool {
        self.kind() == Some(ExecutorKind::Pipeline)
    }

    /// The models this one calls to answer (a pipeline's steps, a collection's embedder),
    /// with the version asked for (None: the newest ready one); it is ready only when they are.
    pub fn dependencies(&self) -> Vec<(String, Option<String>)> {
        match &self.executor {
            Runs::Other(e) => e.dependencies(),
            Runs::Workers(_) => Vec::new(),
        }
    }

    /// Why this version refuses requests by itself (a collection still loading its points).
    pub fn refusal(&self) -> Option<String> {
        match &self.executor {
            Runs::Other(e) => e.refusal(self),
            Runs::Workers(_) => None,
        }
    }

    /// Validates a request and runs it on the next free instance (merged with others when
    /// dynamic batching is on).
    ///
    /// The future may be dropped at any `.await` (a client disconnects, a pipeline times out):
    /// an [`InFlight`] guard then counts the request as cancelled and the in-flight gauge comes
    /// back down, and a worker that reaches the queued job skips it.
    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse, EngineError> {
        let guard = InFlight::enter(self, request.protocol);
        // A sampled request's span for this model: what runs it (queue, batch, steps) hangs
        // under it.
        let mut span = request.span.as_ref().map(|s| {
            let mut span = s.child(format!("{} {}", self.kind_label(), self.name));
            span.set("kiln.model", self.name.as_str());
            span.set("kiln.model.version", self.version);
            span
        });
        if let Some(span) = &span {
            request.span = Some(span.span().clone());
        }
        let result = self.infer_inner(request).await;
        if let (Some(span), Err(e)) = (span.as_mut(), &result) {
            span.fail(e);
        }
        guard.finish(&result);
        result
    }

    /// What runs this version, for span names: `model`, `pipeline`, `llm` or `collection`.
    fn kind_label(&self) -> &'static str {
        match &self.executor {
            Runs::Workers(_) => "model",
            Runs::Other(e) => match e.kind() {
                ExecutorKind::Pipeline => "pipeline",
                ExecutorKind::Llm => "llm",
                ExecutorKind::Collection => "collection",
            },
        }
    }

    /// Runs a request on the calling thread when an instance is idle and nothing is queued
    /// (no hop to a worker thread and back: the cost of calling ONNX Runtime directly),
    /// otherwise queues it like [`ServedModel::infer`] and blocks this thread on the answer.
    ///
    /// For threads of the caller's own (the Python bridge, an embedding program,
    /// `kiln bench --protocol in-process`). Never call it on an async executor's thread: it
    /// blocks for as long as the model runs. Pipelines run on the async engine: call
    /// [`ServedModel::infer`] for them.
    pub fn infer_blocking(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        let guard = InFlight::enter(self, request.protocol);
        let result = self.infer_blocking_inner(request);
        guard.finish(&result);
        result
    }

    fn infer_blocking_inner(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        let Runs::Workers(pool) = &self.executor else {
            return Err(EngineError::InvalidRequest(format!(
                "'{}' is a pipeline or an LLM; it runs on the async engine (ServedModel::infer)",
                self.name
            )));
        };
        let admitted = self.admit(&request)?;
        let timeout = admitted.timeout;
        let (reply, answer) = std::sync::mpsc::sync_channel::<Answer>(1);
        let job = admitted.job(request.inputs, Reply::Thread(reply));
        // Run here only when that overtakes nobody.
        let idle = if pool.queue.len() == 0 { pool.slots.iter().find_map(|slot| try_lock_slot(slot)) } else { None };
        let answer = match idle {
            Some(mut instance) => {
                pool.runner.execute(instance.as_mut(), vec![job]);
                drop(instance);
                answer.recv().map_err(|_| self.dropped())?
            }
            None => {
                self.enqueue(pool, job)?;
                let answer = match timeout {
                    Some(limit) => answer.recv_timeout(limit).map_err(|e| match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout => timeout_error(&self.name, self.version, limit),
                        std::sync::mpsc::RecvTimeoutError::Disconnected => self.dropped(),
                    })?,
                    None => answer.recv().map_err(|_| self.dropped())?,
                };
                self.metrics.phase(Phase::Reply, answer.sent.elapsed());
                answer
            }
        };
        Ok(self.response(answer.result?))
    }

    /// Checks a request against the model before it may queue.
    pub fn admit(&self, request: &InferRequest) -> Result<Admitted, EngineError> {
        self.signature.validate_inputs(&request.inputs)?;
        let outputs = self.signature.resolve_outputs(&request.outputs)?;
        let rows = request.inputs.iter().find_map(|t| t.shape.first().copied()).unwrap_or(1);
        if self.settings.max_batch_size > 0 && rows > self.settings.max_batch_size {
            return Err(EngineError::InvalidRequest(format!(
                "batch of {rows} rows exceeds max_batch_size {} of model '{}'",
                self.settings.max_batch_size, self.name
            )));
        }
        Ok(Admitted { outputs, rows, timeout: request.timeout.or(self.settings.request_timeout) })
    }

    fn enqueue(&self, pool: &WorkerPool, job: Job) -> Result<(), EngineError> {
        match pool.queue.push(job) {
            Ok(depth) => {
                self.metrics.queue_depth(depth);
                Ok(())
            }
            Err((Refused::Full, _)) => Err(EngineError::Overloaded(format!(
                "model '{}' version {} has {} requests waiting (max_queue_size); retry later",
                self.name, self.version, self.settings.max_queue_size
            ))),
            Err((Refused::Closed, _)) => Err(EngineError::Unavailable(format!(
                "model '{}' version {} is shutting down",
                self.name, self.version
            ))),
        }
    }

    fn dropped(&self) -> EngineError {
        EngineError::Backend(format!("model '{}' version {} dropped the request", self.name, self.version))
    }

    pub fn response(&self, outputs: Vec<Tensor>) -> InferResponse {
        InferResponse { model_name: self.name.clone(), model_version: self.version, outputs, trace: Vec::new() }
    }

    async fn infer_inner(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        let pool = match &self.executor {
            Runs::Workers(pool) => pool,
            Runs::Other(executor) => return executor.run(self, request).await,
        };
        let admitted = self.admit(&request)?;
        let (reply, answer) = oneshot::channel();
        let timeout = admitted.timeout;
        let enqueued = Instant::now();
        self.enqueue(pool, admitted.job(request.inputs, Reply::Task(reply)))?;
        let answer = match timeout {
            // Dropping `answer` on timeout closes the reply channel: a worker that reaches the
            // job later skips it instead of running it for nobody.
            Some(limit) => match tokio::time::timeout(limit, answer).await {
                Ok(reply) => reply.map_err(|_| self.dropped())?,
                Err(_) => return Err(timeout_error(&self.name, self.version, limit)),
            },
            None => answer.await.map_err(|_| self.dropped())?,
        };
        self.metrics.phase(Phase::Reply, answer.sent.elapsed());
        if let (Some(span), Some(ran)) = (&request.span, answer.ran) {
            span.record("queue", enqueued, ran.started, Vec::new());
            span.record(
                "compute",
                ran.started,
                answer.sent,
                vec![("kiln.batch.requests", ran.requests.into()), ("kiln.batch.rows", ran.rows.into())],
            );
        }
        Ok(self.response(answer.result?))
    }

    /// Number of worker threads (instances) running; 0 for a pipeline.
    pub fn instance_count(&self) -> usize {
        match &self.executor {
            Runs::Workers(pool) => pool.workers.len(),
            Runs::Other(_) => 0,
        }
    }

    /// Requests waiting for an instance (or an LLM's sequence slot) now; 0 for a pipeline.
    pub fn queue_depth(&self) -> usize {
        match &self.executor {
            Runs::Workers(pool) => pool.queue.len(),
            Runs::Other(e) => e.queue_depth(),
        }
    }

    /// The batching window workers use now (adaptive mode moves it); zero for a pipeline.
    pub fn batch_window(&self) -> Duration {
        match &self.executor {
            Runs::Workers(pool) => pool.runner.window.current(),
            Runs::Other(_) => Duration::ZERO,
        }
    }
}

/// A request that fits the model: what it asks for and how long it may wait.
pub struct Admitted {
    pub outputs: Vec<String>,
    pub rows: usize,
    pub timeout: Option<Duration>,
}

impl Admitted {
    fn job(self, inputs: Vec<Tensor>, reply: Reply) -> Job {
        let now = Instant::now();
        Job {
            enqueued: now,
            deadline: self.timeout.map(|t| now + t),
            rows: self.rows,
            inputs,
            outputs: self.outputs,
            reply,
        }
    }
}

/// The instance in `slot` when nobody is running it.
fn try_lock_slot(slot: &Slot) -> Option<std::sync::MutexGuard<'_, Box<dyn ModelInstance>>> {
    match slot.try_lock() {
        Ok(instance) => Some(instance),
        // A panic inside a run was caught there; the instance is whole.
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// One request inside [`ServedModel::infer`] (or a streamed LLM request, holding its
/// [`ModelHandle`]): raises the in-flight gauge on entry; on drop lowers it and records the
/// outcome — `cancelled` when the future was dropped before [`InFlight::finish`] or
/// [`InFlight::end`] said how it ended.
pub struct InFlight<M: std::ops::Deref<Target = ServedModel>> {
    model: M,
    protocol: Protocol,
    started: Instant,
    outcome: Outcome,
}

impl<M: std::ops::Deref<Target = ServedModel>> InFlight<M> {
    fn enter(model: M, protocol: Protocol) -> Self {
        model.metrics.in_flight(1.0);
        InFlight { model, protocol, started: Instant::now(), outcome: Outcome::Cancelled }
    }

    fn finish(mut self, result: &Result<InferResponse, EngineError>) {
        self.outcome = Outcome::of(result);
    }

    /// Says how the request ended; a guard dropped without it counts as cancelled.
    pub fn end(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl<M: std::ops::Deref<Target = ServedModel>> Drop for InFlight<M> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let (metrics, stats) = (&self.model.metrics, &self.model.stats);
        metrics.in_flight(-1.0);
        if self.outcome == Outcome::Success {
            stats.success.record(elapsed);
            stats.latency.record(elapsed);
        } else {
            stats.fail.record(elapsed);
        }
        metrics.request(self.protocol, self.outcome, elapsed);
    }
}

pub fn timeout_error(model: &str, version: u64, limit: Duration) -> EngineError {
    EngineError::Timeout(format!(
        "model '{model}' version {version} did not answer within the request timeout of {} µs",
        limit.as_micros()
    ))
}

/// Keeps the served model alive while in use.
pub type ModelHandle = Arc<ServedModel>;

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
