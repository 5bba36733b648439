//! ServedModel with a pool of instances: blocking and async callers, deadlines, rows.

use std::sync::mpsc;

use kiln_core::{BackendError, DataType, TensorData, TensorSpec};

use super::*;

/// Doubles FP32 input `x` into `y`, noting the thread it ran on; an input starting with
/// 99 holds the instance until the test lets go.
struct Doubler {
    threads: mpsc::Sender<String>,
    entered: mpsc::Sender<()>,
    gate: Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
}

impl ModelInstance for Doubler {
    fn run(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        let _ = self.threads.send(name);
        let x = &inputs[0];
        let TensorData::Fp32(v) = &x.data else { return Err(BackendError::Run("not fp32".into())) };
        if v.first() == Some(&99.0) {
            let _ = self.entered.send(());
            let _ = self.gate.lock().expect("gate").recv();
        }
        let y = v.iter().map(|f| f * 2.0).collect();
        Ok(vec![Tensor::new("y", x.shape.clone(), TensorData::Fp32(y)).map_err(|e| BackendError::Run(e.to_string()))?])
    }
}

struct Fixture {
    model: Arc<ServedModel>,
    threads: mpsc::Receiver<String>,
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn serve(instances: usize) -> Fixture {
    let (threads_tx, threads) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let (release, gate) = mpsc::channel();
    let gate = Arc::new(std::sync::Mutex::new(gate));
    let spec = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Fp32, shape: vec![-1, -1] };
    let signature = ModelSignature { inputs: vec![spec("x")], outputs: vec![spec("y")] };
    let settings = ServingSettings {
        instances,
        max_batch_size: 16,
        dynamic_batching: true,
        max_queue_size: 64,
        ..Default::default()
    };
    let boxed: Vec<Box<dyn ModelInstance>> = (0..instances)
        .map(|_| {
            Box::new(Doubler { threads: threads_tx.clone(), entered: entered_tx.clone(), gate: gate.clone() })
                as Box<dyn ModelInstance>
        })
        .collect();
    let model = ServedModel::start("t".into(), 1, signature, BTreeMap::new(), settings, boxed).expect("starts");
    Fixture { model: Arc::new(model), threads, entered, release }
}

fn request(values: Vec<f32>, cols: usize, timeout: Option<Duration>) -> InferRequest {
    let x = Tensor::new("x", vec![values.len() / cols, cols], TensorData::Fp32(values)).expect("tensor");
    InferRequest { inputs: vec![x], timeout, ..InferRequest::default() }
}

fn doubled(response: &InferResponse) -> Vec<f32> {
    let TensorData::Fp32(y) = &response.outputs[0].data else { panic!("fp32 output") };
    y.clone()
}

#[test]
fn a_blocking_call_runs_on_the_callers_thread_when_an_instance_is_idle() {
    let f = serve(1);
    let caller = std::thread::current().name().unwrap_or("").to_string();
    let answer = f.model.infer_blocking(request(vec![1.0, 2.0], 2, None)).expect("answer");
    assert_eq!(doubled(&answer), vec![2.0, 4.0]);
    assert_eq!(f.threads.recv().expect("ran"), caller, "no hop to the worker thread");
    assert_eq!(f.model.stats.snapshot().execution_count, 1);
}

#[test]
fn a_blocking_call_queues_behind_a_busy_instance_and_keeps_its_deadline() {
    let f = serve(1);
    let model = f.model.clone();
    let holder = std::thread::spawn(move || model.infer_blocking(request(vec![99.0], 1, None)));
    f.entered.recv().expect("the instance is busy");
    let refused = f.model.infer_blocking(request(vec![5.0], 1, Some(Duration::from_millis(20))));
    assert!(matches!(refused, Err(EngineError::Timeout(_))), "{refused:?}");
    f.release.send(()).expect("release");
    assert_eq!(doubled(&holder.join().expect("joined").expect("answer")), vec![198.0]);
    // The worker saw the timed-out job only after its deadline: it answers it unrun.
    let again = f.model.infer_blocking(request(vec![3.0], 1, None)).expect("answer");
    assert_eq!(doubled(&again), vec![6.0]);
    let ran: Vec<String> = f.threads.try_iter().collect();
    assert_eq!(ran.len(), 2, "the timed-out request never ran: {ran:?}");
}

#[test]
fn concurrent_callers_of_both_kinds_get_exactly_their_rows() {
    let f = serve(2);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    std::thread::scope(|scope| {
        for caller in 0..6usize {
            let model = f.model.clone();
            let handle = runtime.handle().clone();
            scope.spawn(move || {
                for i in 0..60usize {
                    // Widths 1..3 cannot merge with each other: they wait their turn in place.
                    let (rows, cols) = (1 + (caller + i) % 4, 1 + i % 3);
                    let values: Vec<f32> = (0..rows * cols).map(|k| (caller * 10_000 + i * 10 + k) as f32).collect();
                    let want: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
                    let req = request(values, cols, None);
                    let answer = if caller % 2 == 0 {
                        model.infer_blocking(req)
                    } else {
                        let model = model.clone();
                        handle.block_on(async move { model.infer(req).await })
                    }
                    .expect("answer");
                    assert_eq!(doubled(&answer), want, "caller {caller} request {i}");
                    assert_eq!(answer.outputs[0].shape, vec![rows, cols]);
                }
            });
        }
    });
    let stats = f.model.stats.snapshot();
    assert_eq!(stats.success.count, 360);
    assert_eq!(f.model.queue_depth(), 0);
}
