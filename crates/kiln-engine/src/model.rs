//! One served model version: its instances on their worker threads, the bounded queue that
//! feeds them, and the dynamic batcher each worker runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use kiln_core::{ModelInstance, ModelSignature, Tensor};
use tokio::sync::oneshot;

use crate::batcher::{self, BatchWindow, Job};
use crate::error::EngineError;
use crate::metrics::{ModelMetrics, Outcome, Protocol};
use crate::stats::ModelStats;

/// What a caller asks of a model.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
    /// Outputs wanted, in this order; empty = all, in model order.
    pub outputs: Vec<String>,
    /// Give up (and answer "deadline exceeded") after this long; `None` = the model's
    /// `request_timeout_ms`, if any.
    pub timeout: Option<Duration>,
    /// Which transport the request came by (for metrics).
    pub protocol: Protocol,
    /// Pipelines: report each step's timing in the response (`kiln_trace`).
    pub trace: bool,
}

/// What a model answers.
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: u64,
    pub outputs: Vec<Tensor>,
    /// Pipelines asked for a trace: each step's start, duration and outcome.
    pub trace: Vec<crate::pipeline::StepTrace>,
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
    pub records: crate::config::RecordsPolicy,
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
    executor: Executor,
}

/// What runs a served version's requests.
enum Executor {
    /// A model: its instances on worker threads, fed by a bounded queue.
    Workers(WorkerPool),
    /// A pipeline: its steps, which call other models' executors (it has no queue of its own).
    Pipeline(Arc<crate::pipeline::Pipeline>),
}

/// One worker thread per instance, each running the dynamic batcher over the shared queue.
struct WorkerPool {
    queue: Sender<Job>,
    workers: Vec<JoinHandle<()>>,
    window: Arc<BatchWindow>,
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
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(settings.max_queue_size);
        let stats = Arc::new(ModelStats::default());
        let metrics = Arc::new(ModelMetrics::new(&name, version));
        let window = Arc::new(BatchWindow::new(settings.max_queue_delay, settings.latency_target));
        metrics.batch_window(window.current());
        // Rows are counted along the first dimension when the model has a dynamic one.
        let batched = signature.inputs.first().is_some_and(|s| s.shape.first() == Some(&-1));
        let mut workers = Vec::with_capacity(instances.len());
        for (i, instance) in instances.into_iter().enumerate() {
            let worker = batcher::Worker {
                instance,
                jobs: jobs.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
                window: window.clone(),
                counts_rows: batched,
                max_batch_size: settings.max_batch_size,
                dynamic_batching: settings.dynamic_batching,
            };
            let handle = std::thread::Builder::new()
                .name(format!("kiln-{name}-v{version}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| EngineError::Backend(format!("cannot start a worker thread: {e}")))?;
            workers.push(handle);
        }
        Ok(ServedModel {
            name,
            version,
            signature,
            labels,
            settings,
            stats,
            metrics,
            executor: Executor::Workers(WorkerPool { queue, workers, window }),
        })
    }

    /// Serves a pipeline under a model's name (version 1).
    pub fn pipeline(name: String, pipeline: crate::pipeline::Pipeline, settings: ServingSettings) -> Self {
        ServedModel {
            signature: pipeline.signature.clone(),
            metrics: Arc::new(ModelMetrics::new(&name, 1)),
            stats: Arc::new(ModelStats::default()),
            labels: BTreeMap::new(),
            name,
            version: 1,
            settings,
            executor: Executor::Pipeline(Arc::new(pipeline)),
        }
    }

    /// Whether this is a pipeline.
    pub fn is_pipeline(&self) -> bool {
        matches!(self.executor, Executor::Pipeline(_))
    }

    /// The pipeline this model runs, when it is one.
    pub fn pipeline_graph(&self) -> Option<&crate::pipeline::Pipeline> {
        match &self.executor {
            Executor::Pipeline(pipeline) => Some(pipeline),
            Executor::Workers(_) => None,
        }
    }

    /// Validates a request and runs it on the next free instance (merged with others when
    /// dynamic batching is on).
    ///
    /// The future may be dropped at any `.await` (a client disconnects, a pipeline times out):
    /// an [`InFlight`] guard then counts the request as cancelled and the in-flight gauge comes
    /// back down, and a worker that reaches the queued job skips it.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        let guard = InFlight::enter(self, request.protocol);
        let result = self.infer_inner(request).await;
        guard.finish(&result);
        result
    }

    async fn infer_inner(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        self.signature.validate_inputs(&request.inputs)?;
        let outputs = self.signature.resolve_outputs(&request.outputs)?;
        let rows = request.inputs.iter().find_map(|t| t.shape.first().copied()).unwrap_or(1);
        if self.settings.max_batch_size > 0 && rows > self.settings.max_batch_size {
            return Err(EngineError::InvalidRequest(format!(
                "batch of {rows} rows exceeds max_batch_size {} of model '{}'",
                self.settings.max_batch_size, self.name
            )));
        }
        let timeout = request.timeout.or(self.settings.request_timeout);
        let pool = match &self.executor {
            Executor::Workers(pool) => pool,
            Executor::Pipeline(pipeline) => return self.run_pipeline(pipeline, request, &outputs, rows, timeout).await,
        };
        let now = Instant::now();
        let (reply, answer) = oneshot::channel();
        let job =
            Job { enqueued: now, deadline: timeout.map(|t| now + t), rows, inputs: request.inputs, outputs, reply };
        match pool.queue.try_send(job) {
            Ok(()) => self.metrics.queue_depth(pool.queue.len()),
            Err(TrySendError::Full(_)) => {
                return Err(EngineError::Overloaded(format!(
                    "model '{}' version {} has {} requests waiting (max_queue_size); retry later",
                    self.name, self.version, self.settings.max_queue_size
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(EngineError::Unavailable(format!(
                    "model '{}' version {} is shutting down",
                    self.name, self.version
                )));
            }
        }
        let dropped =
            || EngineError::Backend(format!("model '{}' version {} dropped the request", self.name, self.version));
        let outputs = match timeout {
            // Dropping `answer` on timeout closes the reply channel: a worker that reaches the
            // job later skips it instead of running it for nobody.
            Some(limit) => match tokio::time::timeout(limit, answer).await {
                Ok(reply) => reply.map_err(|_| dropped())??,
                Err(_) => return Err(timeout_error(&self.name, self.version, limit)),
            },
            None => answer.await.map_err(|_| dropped())??,
        };
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version, outputs, trace: Vec::new() })
    }

    /// Runs a pipeline's steps under the request's timeout.
    async fn run_pipeline(
        &self,
        pipeline: &crate::pipeline::Pipeline,
        request: InferRequest,
        outputs: &[String],
        rows: usize,
        timeout: Option<Duration>,
    ) -> Result<InferResponse, EngineError> {
        let run = pipeline.run(request.inputs, outputs, request.protocol, timeout);
        let (outputs, trace) = match timeout {
            Some(limit) => {
                tokio::time::timeout(limit, run).await.map_err(|_| timeout_error(&self.name, self.version, limit))??
            }
            None => run.await?,
        };
        self.stats.record_execution(rows as u64);
        let trace = if request.trace { trace } else { Vec::new() };
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version, outputs, trace })
    }

    /// Number of worker threads (instances) running; 0 for a pipeline.
    pub fn instance_count(&self) -> usize {
        match &self.executor {
            Executor::Workers(pool) => pool.workers.len(),
            Executor::Pipeline(_) => 0,
        }
    }

    /// Requests waiting for an instance now; 0 for a pipeline.
    pub fn queue_depth(&self) -> usize {
        match &self.executor {
            Executor::Workers(pool) => pool.queue.len(),
            Executor::Pipeline(_) => 0,
        }
    }

    /// The batching window workers use now (adaptive mode moves it); zero for a pipeline.
    pub fn batch_window(&self) -> Duration {
        match &self.executor {
            Executor::Workers(pool) => pool.window.current(),
            Executor::Pipeline(_) => Duration::ZERO,
        }
    }
}

/// One request inside [`ServedModel::infer`]: raises the in-flight gauge on entry; on drop
/// lowers it and records the outcome — `cancelled` when the future was dropped before
/// [`InFlight::finish`] said how it ended.
struct InFlight<'a> {
    model: &'a ServedModel,
    protocol: Protocol,
    started: Instant,
    outcome: Outcome,
}

impl<'a> InFlight<'a> {
    fn enter(model: &'a ServedModel, protocol: Protocol) -> Self {
        model.metrics.in_flight(1.0);
        InFlight { model, protocol, started: Instant::now(), outcome: Outcome::Cancelled }
    }

    fn finish(mut self, result: &Result<InferResponse, EngineError>) {
        self.outcome = Outcome::of(result);
    }
}

impl Drop for InFlight<'_> {
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

pub(crate) fn timeout_error(model: &str, version: u64, limit: Duration) -> EngineError {
    EngineError::Timeout(format!(
        "model '{model}' version {version} did not answer within the request timeout of {} µs",
        limit.as_micros()
    ))
}

/// Keeps the served model alive while in use.
pub type ModelHandle = Arc<ServedModel>;
