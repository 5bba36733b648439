//! One served model version: its instances on their worker threads and the bounded queue
//! that feeds them.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use kiln_core::{ModelInstance, ModelSignature, Tensor};
use tokio::sync::oneshot;

use crate::EngineError;
use crate::stats::ModelStats;

/// What a caller asks of a model.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
    /// Outputs wanted, in this order; empty = all, in model order.
    pub outputs: Vec<String>,
}

/// What a model answers.
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: u64,
    pub outputs: Vec<Tensor>,
}

struct Job {
    enqueued: Instant,
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Tensor>, EngineError>>,
}

/// Settings a model version runs with, resolved from config.toml and defaults.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    pub instances: usize,
    pub threads: usize,
    pub max_batch_size: usize,
    pub max_queue_size: usize,
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
    queue: Sender<Job>,
    workers: Vec<JoinHandle<()>>,
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
        // Rows are counted along the first dimension when the model has a dynamic one.
        let batched = signature.inputs.first().is_some_and(|s| s.shape.first() == Some(&-1));
        let mut workers = Vec::with_capacity(instances.len());
        for (i, instance) in instances.into_iter().enumerate() {
            let jobs = jobs.clone();
            let stats = stats.clone();
            let worker = std::thread::Builder::new()
                .name(format!("kiln-{name}-v{version}-{i}"))
                .spawn(move || work(instance, &jobs, &stats, batched))
                .map_err(|e| EngineError::Backend(format!("cannot start a worker thread: {e}")))?;
            workers.push(worker);
        }
        Ok(ServedModel { name, version, signature, labels, settings, stats, queue, workers })
    }

    /// Validates a request and runs it on the next free instance.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        let started = Instant::now();
        let result = self.infer_inner(request).await;
        match &result {
            Ok(_) => self.stats.success.record(started.elapsed()),
            Err(_) => self.stats.fail.record(started.elapsed()),
        }
        result
    }

    async fn infer_inner(&self, request: InferRequest) -> Result<InferResponse, EngineError> {
        self.signature.validate_inputs(&request.inputs)?;
        let outputs = self.signature.resolve_outputs(&request.outputs)?;
        if self.settings.max_batch_size > 0
            && let Some(rows) = request.inputs.iter().find_map(|t| t.shape.first().copied())
            && rows > self.settings.max_batch_size
        {
            return Err(EngineError::InvalidRequest(format!(
                "batch of {rows} rows exceeds max_batch_size {} of model '{}'",
                self.settings.max_batch_size, self.name
            )));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { enqueued: Instant::now(), inputs: request.inputs, outputs, reply };
        match self.queue.try_send(job) {
            Ok(()) => {}
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
        let outputs = answer.await.map_err(|_| {
            EngineError::Backend(format!("model '{}' version {} dropped the request", self.name, self.version))
        })??;
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version, outputs })
    }

    /// Number of worker threads (instances) running.
    pub fn instance_count(&self) -> usize {
        self.workers.len()
    }
}

fn work(mut instance: Box<dyn ModelInstance>, jobs: &Receiver<Job>, stats: &ModelStats, batched: bool) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            continue; // the caller went away: do not spend compute on it
        }
        let started = Instant::now();
        stats.queue.record(started.duration_since(job.enqueued));
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| instance.run(&job.inputs, &job.outputs)));
        stats.compute_infer.record(started.elapsed());
        if matches!(result, Ok(Ok(_))) {
            let rows = if batched { job.inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1) } else { 1 };
            stats.record_execution(rows as u64);
        }
        let result = match result {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(EngineError::from(e)),
            Err(_) => {
                tracing::error!(thread = ?std::thread::current().name(), "the backend panicked; the request failed, the instance keeps serving");
                Err(EngineError::Backend("the backend panicked while running the model".into()))
            }
        };
        let _ = job.reply.send(result);
    }
}

/// Keeps the served model alive while in use.
pub type ModelHandle = Arc<ServedModel>;
