//! The worker loop of a model instance, with dynamic batching: a worker takes the first
//! waiting request, gathers compatible ones (same inputs, datatypes, non-batch dimensions and
//! requested outputs) until `max_batch_size` rows or the batching window closes, runs them as
//! one batch along the first dimension, and splits the outputs back per request.
//!
//! Requests that cannot join the current batch are carried to the next one, in order.
//! Requests whose caller left (timeout, disconnect) are dropped unrun.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use kiln_core::{ModelInstance, Tensor, TensorData};
use tokio::sync::oneshot;

use crate::error::EngineError;
use crate::metrics::ModelMetrics;
use crate::stats::ModelStats;

/// One queued request.
pub(crate) struct Job {
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    /// First dimension of the inputs (1 when they have none).
    pub rows: usize,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    pub reply: oneshot::Sender<Result<Vec<Tensor>, EngineError>>,
}

impl Job {
    /// Whether the caller is gone or out of time; answers the latter.
    fn abandoned(self) -> Option<Job> {
        if self.reply.is_closed() {
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = self
                .reply
                .send(Err(EngineError::Timeout("the request timed out while waiting for a model instance".into())));
            return None;
        }
        Some(self)
    }

    /// Whether two requests can be merged into one batch.
    fn compatible(&self, other: &Job) -> bool {
        self.outputs == other.outputs
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().all(|a| {
                other.inputs.iter().any(|b| {
                    a.name == b.name
                        && a.datatype() == b.datatype()
                        && a.shape.len() == b.shape.len()
                        && a.shape.get(1..) == b.shape.get(1..)
                })
            })
    }
}

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

/// One instance's loop.
pub(crate) struct Worker {
    pub instance: Box<dyn ModelInstance>,
    pub jobs: Receiver<Job>,
    pub stats: Arc<ModelStats>,
    pub metrics: Arc<ModelMetrics>,
    pub window: Arc<BatchWindow>,
    /// Count rows along the first dimension in the statistics.
    pub counts_rows: bool,
    pub max_batch_size: usize,
    pub dynamic_batching: bool,
}

impl Worker {
    pub fn run(mut self) {
        let mut carried: VecDeque<Job> = VecDeque::new();
        loop {
            let first = match carried.pop_front() {
                Some(job) => job,
                None => match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return, // the model was replaced or unloaded and its queue drained
                },
            };
            let Some(first) = first.abandoned() else { continue };
            let batch = if self.dynamic_batching { self.gather(first, &mut carried) } else { vec![first] };
            self.metrics.queue_depth(self.jobs.len());
            self.execute(batch);
        }
    }

    /// Gathers requests compatible with `first` until the batch is full or the window closes.
    fn gather(&self, first: Job, carried: &mut VecDeque<Job>) -> Vec<Job> {
        let mut rows = first.rows;
        let mut batch = vec![first];
        // Requests set aside earlier come first, in order.
        let mut i = 0;
        while i < carried.len() && rows < self.max_batch_size {
            if batch[0].compatible(&carried[i]) && rows + carried[i].rows <= self.max_batch_size {
                let job = carried.remove(i).expect("index checked");
                if let Some(job) = job.abandoned() {
                    rows += job.rows;
                    batch.push(job);
                }
            } else {
                i += 1;
            }
        }
        let closes = Instant::now() + self.window.current();
        while rows < self.max_batch_size {
            let next = match self.jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match self.jobs.recv_deadline(closes) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            let Some(next) = next.abandoned() else { continue };
            if batch[0].compatible(&next) && rows + next.rows <= self.max_batch_size {
                rows += next.rows;
                batch.push(next);
            } else {
                carried.push_back(next);
                // Do not hoard: a full set-aside queue means the current batch is done.
                if carried.len() >= self.max_batch_size.max(1) {
                    break;
                }
            }
        }
        batch
    }

    fn execute(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
        for job in &batch {
            self.stats.queue.record(started.duration_since(job.enqueued));
            self.metrics.queue_time(started.duration_since(job.enqueued));
        }
        let rows: usize = batch.iter().map(|j| j.rows).sum();
        let result = if batch.len() == 1 {
            self.run_guarded(&batch[0].inputs, &batch[0].outputs)
        } else {
            match merge_inputs(&batch) {
                Some(inputs) => self.run_guarded(&inputs, &batch[0].outputs),
                None => Err(EngineError::Backend("cannot merge the batch's inputs".into())),
            }
        };
        let compute = started.elapsed();
        self.stats.compute_infer.record(compute);
        self.metrics.compute_time(compute);
        self.metrics.batch_size(rows);
        if result.is_ok() {
            self.stats.record_execution(if self.counts_rows { rows as u64 } else { batch.len() as u64 });
        }
        let worst = batch.iter().map(|j| j.enqueued.elapsed()).max().unwrap_or_default();
        if let Some(window) = self.window.observe(worst, rows >= self.max_batch_size) {
            self.metrics.batch_window(window);
        }
        match result {
            Ok(outputs) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                let _ = job.reply.send(Ok(outputs));
            }
            Ok(outputs) => split_outputs(batch, &outputs, rows),
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn run_guarded(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, EngineError> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.instance.run(inputs, outputs))) {
            Ok(result) => result.map_err(EngineError::from),
            Err(_) => {
                tracing::error!(thread = ?std::thread::current().name(), "the backend panicked; the request failed, the instance keeps serving");
                Err(EngineError::Backend("the backend panicked while running the model".into()))
            }
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
fn split_outputs(batch: Vec<Job>, outputs: &[Tensor], rows: usize) {
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
                Tensor::new(out.name.clone(), shape, data).map_err(EngineError::Backend)
            })
            .collect();
        offset += job.rows;
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::BackendError;

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
                .map_err(BackendError::Run)?;
            assert_eq!(outputs, ["y"]);
            Ok(vec![y])
        }
    }

    fn job(values: Vec<f32>, cols: usize) -> (Job, oneshot::Receiver<Result<Vec<Tensor>, EngineError>>) {
        let rows = values.len() / cols;
        let (reply, answer) = oneshot::channel();
        let x = Tensor::new("x", vec![rows, cols], TensorData::Fp32(values)).expect("tensor");
        let job =
            Job { enqueued: Instant::now(), deadline: None, rows, inputs: vec![x], outputs: vec!["y".into()], reply };
        (job, answer)
    }

    fn worker(
        max_batch: usize,
        delay: Duration,
    ) -> (Worker, crossbeam_channel::Sender<Job>, Arc<std::sync::Mutex<Vec<usize>>>) {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let worker = Worker {
            instance: Box::new(Doubler { batches: batches.clone(), delay: Duration::ZERO }),
            jobs: rx,
            stats: Arc::new(ModelStats::default()),
            metrics: Arc::new(ModelMetrics::new("t", 1)),
            window: Arc::new(BatchWindow::new(delay, None)),
            counts_rows: true,
            max_batch_size: max_batch,
            dynamic_batching: true,
        };
        (worker, tx, batches)
    }

    #[test]
    fn merges_queued_requests_and_splits_exactly() {
        let (worker, tx, batches) = worker(8, Duration::from_millis(50));
        let mut answers = Vec::new();
        for (i, rows) in [1usize, 3, 2, 2].into_iter().enumerate() {
            let values: Vec<f32> = (0..rows * 2).map(|k| (i * 100 + k) as f32).collect();
            let (j, a) = job(values.clone(), 2);
            tx.send(j).expect("send");
            answers.push((values, a));
        }
        drop(tx);
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![8]);
        for (values, answer) in answers {
            let out = answer.blocking_recv().expect("answered").expect("ok");
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
            tx.send(j).expect("send");
        }
        drop(tx);
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![4, 2, 1]);
        for (answer, want) in [(ra, 2.0), (rb, 4.0), (rc, 6.0), (rd, 8.0)] {
            let out = answer.blocking_recv().expect("answered").expect("ok");
            let TensorData::Fp32(y) = &out[0].data else { panic!() };
            assert!(y.iter().all(|&v| v == want), "{y:?} vs {want}");
        }
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
            tx.send(j).expect("send");
        }
        drop(tx);
        worker.run();
        assert_eq!(*batches.lock().expect("lock"), vec![1]);
        assert!(matches!(answer_late.blocking_recv().expect("answered"), Err(EngineError::Timeout(_))));
        assert!(answer_ok.blocking_recv().expect("answered").is_ok());
    }

    #[test]
    fn a_panicking_backend_fails_the_batch_not_the_worker() {
        let (worker, tx, _) = worker(1, Duration::ZERO);
        let (bad, answer_bad) = job(vec![f32::NAN, 1.0], 2);
        let (good, answer_good) = job(vec![1.0, 1.0], 2);
        tx.send(bad).expect("send");
        tx.send(good).expect("send");
        drop(tx);
        worker.run();
        assert!(matches!(answer_bad.blocking_recv().expect("answered"), Err(EngineError::Backend(_))));
        assert!(answer_good.blocking_recv().expect("answered").is_ok());
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
