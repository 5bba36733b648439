//! The worker loop of a model instance, with dynamic batching: a worker takes the next batch
//! from the shared [`JobQueue`] (the first waiting request and the compatible ones behind it,
//! see [`JobQueue::next_batch`]), runs it as one batch along the first dimension, and splits
//! the outputs back per request. Every phase is timed into `kiln_request_phase_seconds`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_core::{ModelInstance, Tensor, TensorData};

use crate::error::EngineError;
use crate::metrics::{ModelMetrics, Phase};
use crate::queue::{self, Gather, Job, JobQueue, Ran};
use crate::stats::ModelStats;

/// The batching window, in microseconds, shared by a model's workers. In adaptive mode it
/// moves: additive increase while latency stays well under the target and batches are not
/// full, multiplicative decrease as soon as a request exceeds the target.
pub(crate) struct BatchWindow {
    current_us: AtomicU64,
    max_us: u64,
    target: Option<Duration>,
}

impl BatchWindow {
    pub fn new(max_delay: Duration, target: Option<Duration>) -> Self {
        let max_us = u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX);
        // Adaptive mode starts small and earns its window.
        let start = if target.is_some() { max_us / 8 } else { max_us };
        BatchWindow { current_us: AtomicU64::new(start), max_us, target }
    }

    pub fn current(&self) -> Duration {
        Duration::from_micros(self.current_us.load(Ordering::Relaxed))
    }

    /// Feeds the slowest request latency of a finished batch back into the window.
    pub fn observe(&self, worst: Duration, batch_full: bool) -> Option<Duration> {
        let target = self.target?;
        let now = self.current_us.load(Ordering::Relaxed);
        let next = if worst > target {
            now / 2
        } else if !batch_full && worst < target.mul_f64(0.7) {
            (now + (self.max_us / 32).max(5)).min(self.max_us)
        } else {
            now
        };
        if next != now {
            self.current_us.store(next, Ordering::Relaxed);
        }
        Some(Duration::from_micros(next))
    }
}

/// A model instance, shared by its worker thread and callers that run it on their own thread
/// while it is idle ([`crate::ServedModel::infer_blocking`]).
pub(crate) type Slot = Arc<Mutex<Box<dyn ModelInstance>>>;

/// Takes the instance; a panic inside an earlier run was caught, so the instance is whole.
pub(crate) fn lock_slot(slot: &Slot) -> std::sync::MutexGuard<'_, Box<dyn ModelInstance>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one worker (or one inline call) needs to run batches and account for them.
pub(crate) struct Runner {
    pub stats: Arc<ModelStats>,
    pub metrics: Arc<ModelMetrics>,
    pub window: Arc<BatchWindow>,
    /// Count rows along the first dimension in the statistics.
    pub counts_rows: bool,
    pub max_batch_size: usize,
    pub dynamic_batching: bool,
}

/// One instance's loop.
pub(crate) struct Worker {
    pub slot: Slot,
    pub queue: Arc<JobQueue>,
    pub runner: Arc<Runner>,
}

impl Worker {
    pub fn run(self) {
        let runner = &self.runner;
        let mut last_done = Instant::now();
        loop {
            let gather = Gather {
                max_rows: runner.max_batch_size.max(1),
                batching: runner.dynamic_batching,
                window: runner.window.current(),
            };
            // `None`: the model was replaced or unloaded and its queue drained.
            let Some(batch) = self.queue.next_batch(gather) else { return };
            runner.metrics.queue_depth(self.queue.len());
            let (mut instance, batch) = match self.slot.try_lock() {
                Ok(instance) => (instance, batch),
                Err(_) => {
                    // A caller is running the instance on its own thread: wait for it, then
                    // drop what timed out or was abandoned meanwhile.
                    let instance = lock_slot(&self.slot);
                    (instance, queue::still_wanted(batch))
                }
            };
            if !batch.is_empty() {
                let started = Instant::now();
                runner.execute(instance.as_mut(), batch);
                let done = Instant::now();
                self.queue.observe_batch(done - started, done - last_done);
                last_done = done;
            }
        }
    }
}

impl Runner {
    /// Runs one batch on `instance` and answers every request in it.
    pub fn execute(&self, instance: &mut dyn ModelInstance, batch: Vec<Job>) {
        let started = Instant::now();
        for job in &batch {
            let waited = started.duration_since(job.enqueued);
            self.stats.queue.record(waited);
            self.metrics.phase(Phase::Queue, waited);
        }
        let rows: usize = batch.iter().map(|j| j.rows).sum();
        let result = if batch.len() == 1 {
            run_guarded(instance, &batch[0].inputs, &batch[0].outputs)
        } else {
            let merged = merge_inputs(&batch);
            self.metrics.phase(Phase::Merge, started.elapsed());
            match merged {
                Some(inputs) => run_guarded(instance, &inputs, &batch[0].outputs),
                None => Err(EngineError::Backend("cannot merge the batch's inputs".into())),
            }
        };
        let compute = started.elapsed();
        self.stats.compute_infer.record(compute);
        self.metrics.phase(Phase::Compute, compute);
        self.metrics.batch_size(rows);
        if result.is_ok() {
            self.stats.record_execution(if self.counts_rows { rows as u64 } else { batch.len() as u64 });
        }
        let worst = batch.iter().map(|j| j.enqueued.elapsed()).max().unwrap_or_default();
        if let Some(window) = self.window.observe(worst, rows >= self.max_batch_size) {
            self.metrics.batch_window(window);
        }
        let ran = Some(Ran { started, requests: batch.len(), rows });
        match result {
            Ok(outputs) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                job.reply.send(Ok(outputs), ran);
            }
            Ok(outputs) => {
                let split = Instant::now();
                split_outputs(batch, &outputs, rows, ran);
                self.metrics.phase(Phase::Split, split.elapsed());
            }
            Err(e) => {
                for job in batch {
                    job.reply.send(Err(e.clone()), ran);
                }
            }
        }
    }
}

fn run_guarded(
    instance: &mut dyn ModelInstance,
    inputs: &[Tensor],
    outputs: &[String],
) -> Result<Vec<Tensor>, EngineError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| instance.run(inputs, outputs))) {
        Ok(result) => result.map_err(EngineError::from),
        Err(_) => {
            tracing::error!(thread = ?std::thread::current().name(), "the backend panicked; the request failed, the instance keeps serving");
            Err(EngineError::Backend("the backend panicked while running the model".into()))
        }
    }
}

/// Concatenates each input of the batch along the first dimension, in the first job's
/// input order.
fn merge_inputs(batch: &[Job]) -> Option<Vec<Tensor>> {
    let rows: usize = batch.iter().map(|j| j.rows).sum();
    batch[0]
        .inputs
        .iter()
        .map(|template| {
            let parts: Vec<&TensorData> = batch
                .iter()
                .map(|j| j.inputs.iter().find(|t| t.name == template.name).map(|t| &t.data))
                .collect::<Option<_>>()?;
            let mut shape = template.shape.clone();
            *shape.first_mut()? = rows;
            Tensor::new(template.name.clone(), shape, TensorData::concat(&parts)?).ok()
        })
        .collect()
}

/// Gives each job its rows of every output.
fn split_outputs(batch: Vec<Job>, outputs: &[Tensor], rows: usize, ran: Option<Ran>) {
    let mut offset = 0;
    for job in batch {
        let answer = outputs
            .iter()
            .map(|out| {
                if out.shape.first() != Some(&rows) {
                    return Err(EngineError::Backend(format!(
                        "output '{}' has shape {:?}, which does not follow the batch of {rows} rows; \
                         turn dynamic batching off for this model",
                        out.name, out.shape
                    )));
                }
                let per_row: usize = out.shape[1..].iter().product();
                let data = out.data.slice(offset * per_row, (offset + job.rows) * per_row);
                let mut shape = out.shape.clone();
                shape[0] = job.rows;
                Tensor::new(out.name.clone(), shape, data).map_err(|e| EngineError::Backend(e.to_string()))
            })
            .collect();
        offset += job.rows;
        job.reply.send(answer, ran);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Answer, Reply};
    use kiln_core::BackendError;
    use tokio::sync::oneshot;

    /// A model that doubles FP32 input `x` into `y` and records the batch sizes it saw.
    struct Doubler {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl ModelInstance for Doubler {
        fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
            std::thread::sleep(self.delay);
            let x = &inputs[0];
            self.batches.lock().expect("lock").push(x.shape[0]);
            let TensorData::Fp32(v) = &x.data else { return Err(BackendError::Run("not fp32".into())) };
            if v.iter().any(|f| f.is_nan()) {
                panic!("NaN");
            }
            let y = Tensor::new("y", x.shape.clone(), TensorData::Fp32(v.iter().map(|f| f * 2.0).collect()))
                .map_err(BackendError::from)?;
            assert_eq!(outputs, ["y"]);
            Ok(vec![y])
        }
    }

    /// What a test's caller gets back.
    struct Waiting(oneshot::Receiver<Answer>);

    impl Waiting {
        fn result(self) -> Result<Vec<Tensor>, EngineError> {
            self.0.blocking_recv().expect("answered").result
        }
    }

    fn job(values: Vec<f32>, cols: usize) -> (Job, Waiting) {
        let rows = values.len() / cols;
        let (reply, answer) = oneshot::channel();
        let x = Tensor::new("x", vec![rows, cols], TensorData::Fp32(values)).expect("tensor");
        let job = Job {
            enqueued: Instant::now(),
            deadline: None,
            rows,
            inputs: vec![x],
            outputs: vec!["y".into()],
            reply: Reply::Task(reply),
        };
        (job, Waiting(answer))
    }

    /// A queue, pushing without blocking.
    struct Queue(Arc<JobQueue>);

    impl Queue {
        fn send(&self, job: Job) {
            assert!(self.0.push(job).is_ok(), "queued");
        }
    }

    fn worker(max_batch: usize, delay: Duration) -> (Worker, Queue, Arc<std::sync::Mutex<Vec<usize>>>) {
        let queue = Arc::new(JobQueue::new(64, max_batch));
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runner = Runner {
            stats: Arc::new(ModelStats::default()),
            metrics: Arc::new(ModelMetrics::new("t", 1)),
            window: Arc::new(BatchWindow::new(delay, None)),
            counts_rows: true,
            max_batch_size: max_batch,
            dynamic_batching: true,
        };
        let worker = Worker {
            slot: Arc::new(Mutex::new(Box::new(Doubler { batches: batches.clone(), delay: Duration::ZERO }))),
            queue: queue.clone(),
            runner: Arc::new(runner),
        };
        (worker, Queue(queue), batches)
    }

    #[test]
    fn merges_queued_requests_and_splits_exactly() {
        let (worker, tx, batches) = worker(8, Duration::from_millis(50));
        let mut answers = Vec::new();
        for (i, rows) in [1usize, 3, 2, 2].into_iter().enumerate() {
            let values: Vec<f32> = (0..rows * 2).map(|k| (i * 100 + k) as f32).collect();
            let (j, a) = job(values.clone(), 2);
            tx.send(j);
            answers.push((values, a));
        }
        tx.0.close();
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![8]);
        for (values, answer) in answers {
            let out = answer.result().expect("ok");
            let TensorData::Fp32(y) = &out[0].data else { panic!() };
            assert_eq!(y, &values.iter().map(|v| v * 2.0).collect::<Vec<_>>());
            assert_eq!(out[0].shape, vec![values.len() / 2, 2]);
        }
    }

    #[test]
    fn respects_max_batch_size_and_carries_incompatible_requests() {
        let (worker, tx, batches) = worker(4, Duration::from_millis(20));
        let (a, ra) = job(vec![1.0; 6], 2); // 3 rows
        let (b, rb) = job(vec![2.0; 4], 2); // 2 rows: does not fit with a
        let (c, rc) = job(vec![3.0; 3], 3); // other width: incompatible
        let (d, rd) = job(vec![4.0; 2], 2); // 1 row: fits with a
        for j in [a, b, c, d] {
            tx.send(j);
        }
        tx.0.close();
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![4, 2, 1]);
        for (answer, want) in [(ra, 2.0), (rb, 4.0), (rc, 6.0), (rd, 8.0)] {
            let out = answer.result().expect("ok");
            let TensorData::Fp32(y) = &out[0].data else { panic!() };
            assert!(y.iter().all(|&v| v == want), "{y:?} vs {want}");
        }
    }

    #[test]
    fn requests_that_cannot_join_stay_queued_in_order_for_any_worker() {
        let queue = JobQueue::new(8, 8);
        let (a, _ra) = job(vec![1.0; 2], 2);
        let (c, _rc) = job(vec![3.0; 3], 3); // other width
        let (d, _rd) = job(vec![4.0; 2], 2);
        let (e, _re) = job(vec![5.0; 3], 3);
        for j in [a, c, d, e] {
            assert!(queue.push(j).is_ok());
        }
        let gather = Gather { max_rows: 8, batching: true, window: Duration::ZERO };
        let first = queue.next_batch(gather).expect("batch");
        assert_eq!(first.iter().map(|j| j.inputs[0].shape.clone()).collect::<Vec<_>>(), vec![vec![1, 2], vec![1, 2]]);
        assert_eq!(queue.len(), 2, "the other width waits in the shared queue, not with one worker");
        let second = queue.next_batch(gather).expect("batch");
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|j| j.inputs[0].shape == vec![1, 3]));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn abandoned_and_expired_requests_are_not_run() {
        let (worker, tx, batches) = worker(8, Duration::ZERO);
        let (gone, answer_gone) = job(vec![1.0; 2], 2);
        drop(answer_gone);
        let (mut late, answer_late) = job(vec![1.0; 2], 2);
        late.deadline = Some(Instant::now());
        let (ok, answer_ok) = job(vec![5.0; 2], 2);
        for j in [gone, late, ok] {
            tx.send(j);
        }
        tx.0.close();
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![1]);
        assert!(matches!(answer_late.result(), Err(EngineError::Timeout(_))));
        assert!(answer_ok.result().is_ok());
    }

    #[test]
    fn a_panicking_backend_fails_the_batch_not_the_worker() {
        let (worker, tx, _) = worker(1, Duration::ZERO);
        let (bad, answer_bad) = job(vec![f32::NAN, 1.0], 2);
        let (good, answer_good) = job(vec![1.0, 1.0], 2);
        tx.send(bad);
        tx.send(good);
        tx.0.close();
        worker.run();
        assert!(matches!(answer_bad.result(), Err(EngineError::Backend(_))));
        assert!(answer_good.result().is_ok());
    }

    #[test]
    fn adaptive_window_backs_off_and_recovers() {
        let w = BatchWindow::new(Duration::from_micros(1600), Some(Duration::from_millis(2)));
        assert_eq!(w.current(), Duration::from_micros(200));
        for _ in 0..100 {
            w.observe(Duration::from_micros(500), false);
        }
        assert_eq!(w.current(), Duration::from_micros(1600), "grows to the cap while latency is low");
        w.observe(Duration::from_millis(3), false);
        assert_eq!(w.current(), Duration::from_micros(800), "halves when the target is missed");
        w.observe(Duration::from_micros(1500), true);
        assert_eq!(w.current(), Duration::from_micros(800), "holds when near the target");
        assert!(BatchWindow::new(Duration::from_micros(100), None).observe(Duration::from_secs(1), false).is_none());
    }
}
