//! The bounded request queue a model version's instances share, and what waits in it.
//!
//! One mutex-guarded deque instead of a channel, so that a worker can look into the queue:
//! it takes the first request and the compatible ones behind it, leaving requests it cannot
//! merge in place, in order, for the next free instance — nothing is set aside where only
//! one worker could see it. The queue also knows how many workers are parked, so a request
//! pays for a wake-up only when nobody is awake to take it, and a gathering worker waits for
//! more requests only while no other instance is idle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kiln_core::Tensor;
use tokio::sync::oneshot;

use crate::error::EngineError;

/// What a worker sends back: the outputs (or why not), and when it sent them, so the caller
/// can measure the hop back.
pub(crate) struct Answer {
    pub result: Result<Vec<Tensor>, EngineError>,
    pub sent: Instant,
    /// The batch it ran in, when it ran.
    pub ran: Option<Ran>,
}

/// The batch a request ran in: when the instance started it, how many requests and rows.
#[derive(Clone, Copy)]
pub(crate) struct Ran {
    pub started: Instant,
    pub requests: usize,
    pub rows: usize,
}

/// Where a request's answer goes.
pub(crate) enum Reply {
    /// A future awaiting it (the server, pipelines).
    Task(oneshot::Sender<Answer>),
    /// A thread blocked on it ([`crate::ServedModel::infer_blocking`]).
    Thread(std::sync::mpsc::SyncSender<Answer>),
}

impl Reply {
    /// Whether the caller stopped waiting. A blocked thread gives up only at its deadline,
    /// which [`Job::expired`] sees.
    fn is_closed(&self) -> bool {
        match self {
            Reply::Task(tx) => tx.is_closed(),
            Reply::Thread(_) => false,
        }
    }

    pub fn send(self, result: Result<Vec<Tensor>, EngineError>, ran: Option<Ran>) {
        let answer = Answer { result, sent: Instant::now(), ran };
        // A caller that left has nobody to tell.
        match self {
            Reply::Task(tx) => drop(tx.send(answer)),
            Reply::Thread(tx) => drop(tx.send(answer)),
        }
    }
}

/// One queued request.
pub(crate) struct Job {
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    /// First dimension of the inputs (1 when they have none).
    pub rows: usize,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    pub reply: Reply,
}

/// Whether a queued request is still worth running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    Waiting,
    /// The caller left: drop it unrun.
    Gone,
    /// Past its deadline: answer it with a timeout, unrun.
    Expired,
}

impl Job {
    fn standing(&self, now: Instant) -> Standing {
        if self.reply.is_closed() {
            Standing::Gone
        } else if self.deadline.is_some_and(|d| now >= d) {
            Standing::Expired
        } else {
            Standing::Waiting
        }
    }

    /// The job if its caller still waits; an expired one goes to `expired`.
    fn keep(self, now: Instant, expired: &mut Vec<Job>) -> Option<Job> {
        match self.standing(now) {
            Standing::Waiting => Some(self),
            Standing::Gone => None,
            Standing::Expired => {
                expired.push(self);
                None
            }
        }
    }

    /// Whether two requests can be merged into one batch: same inputs, datatypes, non-batch
    /// dimensions and requested outputs.
    pub fn compatible(&self, other: &Job) -> bool {
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

/// Why a request was not queued.
pub(crate) enum Refused {
    /// `max_queue_size` requests are waiting.
    Full,
    /// The model version is shutting down.
    Closed,
}

/// How a worker gathers a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gather {
    /// Largest merged batch, in rows; 1 request per batch when batching is off.
    pub max_rows: usize,
    pub batching: bool,
    /// Longest to wait for more requests once the queue is empty (zero: merge only what is
    /// already waiting).
    pub window: Duration,
}

/// How far behind the first request a worker looks for compatible ones, in requests per row
/// of batch room: the scan stays bounded when the queue holds many requests it cannot merge.
const SCAN_PER_ROW: usize = 4;

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers running a batch (between two `next_batch` calls).
    running: usize,
    /// Workers waiting for a request (not gathering, not running).
    parked: usize,
    /// Workers holding a partial batch, waiting for more requests to fill it.
    gathering: usize,
}

/// Below this typical batch time a busy worker answers a new request sooner than a parked
/// one wakes up (a futex wake and a context switch, tens of µs on a loaded machine), and
/// waking it costs the CPU the busy worker and the transport need.
const WAKE_COST: Duration = Duration::from_micros(50);

/// From this typical batch time on, a queued request always wakes an idle instance: the wait
/// for a busy one would be long whatever the CPU.
const SLOW_BATCH: Duration = Duration::from_millis(1);

/// Running workers must be this busy (‰ of their time in batches) before a growing queue
/// wakes another: below it they are not what holds requests back.
const BUSY_TO_WAKE: u64 = 700;

/// The queue of one model version.
pub(crate) struct JobQueue {
    state: Mutex<State>,
    /// Parked workers and gathering workers wait here.
    arrived: Condvar,
    capacity: usize,
    /// Requests one running worker takes at its next turn (1 without batching).
    per_turn: usize,
    /// Requests waiting, readable without the lock (metrics, the inline path's check).
    len: AtomicUsize,
    /// Moving average of a batch's run time, in ns (see [`WAKE_COST`]).
    batch_ns: AtomicU64,
    /// Moving average of the share of a worker's time spent running batches, in ‰ (see
    /// [`JobQueue::needs_wake`]).
    busy_permille: AtomicU64,
}

impl JobQueue {
    /// `per_turn`: how many requests a worker takes at once when they are waiting
    /// (`max_batch_size` with batching, else 1).
    pub fn new(capacity: usize, per_turn: usize) -> Self {
        JobQueue {
            state: Mutex::new(State { jobs: VecDeque::new(), closed: false, running: 0, parked: 0, gathering: 0 }),
            arrived: Condvar::new(),
            capacity: capacity.max(1),
            per_turn: per_turn.max(1),
            len: AtomicUsize::new(0),
            // Until measured, assume a batch is slow: wake a parked worker.
            batch_ns: AtomicU64::new(u64::MAX),
            busy_permille: AtomicU64::new(1000),
        }
    }

    /// A worker ran a batch in `took`, `cycle` after it finished its previous one.
    pub fn observe_batch(&self, took: Duration, cycle: Duration) {
        let took_ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.batch_ns.load(Ordering::Relaxed);
        let next = if old == u64::MAX { took_ns } else { old - old / 8 + took_ns / 8 };
        self.batch_ns.store(next, Ordering::Relaxed);
        let busy = (took.as_secs_f64() / cycle.as_secs_f64().max(1e-9) * 1000.0).min(1000.0) as u64;
        let old = self.busy_permille.load(Ordering::Relaxed);
        self.busy_permille.store(old - old / 16 + busy / 16, Ordering::Relaxed);
    }

    /// Whether a request just queued should wake a parked worker. Always for a slow model;
    /// for a fast one, not when running workers
    /// will take every waiting request at their next turn, and soon; nor when they spend
    /// less than [`BUSY_TO_WAKE`] of their time running batches — then requests queue because
    /// the workers wait for a core (the transport's threads keep it), not for work, and
    /// another worker would only take more of the CPU the transport needs.
    fn needs_wake(&self, state: &State) -> bool {
        if state.parked == 0 {
            return false;
        }
        let batch_ns = self.batch_ns.load(Ordering::Relaxed);
        // A slow model (or one not yet measured): an idle instance always starts sooner.
        if state.running == 0 || batch_ns >= SLOW_BATCH.as_nanos() as u64 {
            return true;
        }
        if batch_ns < WAKE_COST.as_nanos() as u64 && state.jobs.len() <= state.running * self.per_turn {
            return false;
        }
        self.busy_permille.load(Ordering::Relaxed) >= BUSY_TO_WAKE
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole, so a panic elsewhere cannot poison
        // it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Queues a request; wakes a parked worker only when one is parked. Returns the depth.
    pub fn push(&self, job: Job) -> Result<usize, (Refused, Job)> {
        let mut state = self.lock();
        if state.closed {
            return Err((Refused::Closed, job));
        }
        if state.jobs.len() >= self.capacity {
            return Err((Refused::Full, job));
        }
        state.jobs.push_back(job);
        let depth = state.jobs.len();
        self.len.store(depth, Ordering::Relaxed);
        // A gathering worker must see every arrival; otherwise one parked worker is enough.
        let (all, one) = (state.gathering > 0, self.needs_wake(&state));
        drop(state);
        if all {
            self.arrived.notify_all();
        } else if one {
            self.arrived.notify_one();
        }
        Ok(depth)
    }

    /// Stops accepting requests; workers finish the queued ones and then exit.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
    }

    /// Waits for the next batch: the first live request and, when batching, the compatible
    /// ones behind it up to `max_rows`, waiting up to `window` for more when the queue runs
    /// dry and no other instance is idle. `None` once the queue is closed and empty.
    /// Requests whose caller left are dropped unrun; those past their deadline are answered
    /// with a timeout.
    pub fn next_batch(&self, gather: Gather) -> Option<Vec<Job>> {
        let mut expired = Vec::new();
        let mut state = self.lock();
        // The caller's previous batch (if any) is done; it counts as running again once it
        // leaves with a new one.
        state.running = state.running.saturating_sub(1);
        let first = loop {
            if let Some(job) = take_first(&mut state.jobs, &mut expired) {
                break job;
            }
            if state.closed {
                self.len.store(0, Ordering::Relaxed);
                drop(state);
                answer_expired(expired);
                return None;
            }
            if !expired.is_empty() {
                // Tell callers out of time now, not when the next request arrives.
                drop(state);
                answer_expired(std::mem::take(&mut expired));
                state = self.lock();
                continue;
            }
            state.parked += 1;
            state = self.arrived.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.parked -= 1;
        };
        let mut batch = vec![first];
        if gather.batching {
            let mut rows = batch[0].rows;
            let closes = Instant::now() + gather.window;
            loop {
                rows = take_compatible(&mut state.jobs, &mut batch, rows, gather.max_rows, &mut expired);
                // Wait for more only while it can pay: room left, time left, and no other
                // instance idle (an idle one would take a new request at once, alone).
                let now = Instant::now();
                if rows >= gather.max_rows || now >= closes || state.parked > 0 || state.closed {
                    break;
                }
                state.gathering += 1;
                let (next, _) = self.arrived.wait_timeout(state, closes - now).unwrap_or_else(PoisonError::into_inner);
                state = next;
                state.gathering -= 1;
            }
        }
        state.running += 1;
        self.len.store(state.jobs.len(), Ordering::Relaxed);
        // A request left behind (incompatible, or no room) is for another worker.
        let wake = !state.jobs.is_empty() && state.parked > 0;
        drop(state);
        if wake {
            self.arrived.notify_one();
        }
        answer_expired(expired);
        Some(batch)
    }
}

/// Pops the first request whose caller still waits and has time left.
fn take_first(jobs: &mut VecDeque<Job>, expired: &mut Vec<Job>) -> Option<Job> {
    let now = Instant::now();
    while let Some(job) = jobs.pop_front() {
        if let Some(job) = job.keep(now, expired) {
            return Some(job);
        }
    }
    None
}

/// Moves the requests compatible with `batch[0]` that fit into `batch`, in queue order;
/// returns the rows in the batch.
fn take_compatible(
    jobs: &mut VecDeque<Job>,
    batch: &mut Vec<Job>,
    mut rows: usize,
    max_rows: usize,
    expired: &mut Vec<Job>,
) -> usize {
    let now = Instant::now();
    let scan = max_rows.saturating_sub(rows).saturating_mul(SCAN_PER_ROW).max(1);
    let mut i = 0;
    let mut looked = 0;
    while i < jobs.len() && rows < max_rows && looked < scan {
        looked += 1;
        let job = &jobs[i];
        if job.standing(now) != Standing::Waiting {
            if let Some(job) = jobs.remove(i) {
                job.keep(now, expired);
            }
            continue;
        }
        if rows + job.rows <= max_rows && batch[0].compatible(job) {
            rows += job.rows;
            batch.extend(jobs.remove(i));
        } else {
            i += 1;
        }
    }
    rows
}

/// The jobs of a batch whose callers still wait, answering those out of time: for a batch
/// that waited for its instance after leaving the queue.
pub(crate) fn still_wanted(batch: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let mut expired = Vec::new();
    let live = batch.into_iter().filter_map(|job| job.keep(now, &mut expired)).collect();
    answer_expired(expired);
    live
}

fn answer_expired(jobs: Vec<Job>) {
    for job in jobs {
        job.reply
            .send(Err(EngineError::Timeout("the request timed out while waiting for a model instance".into())), None);
    }
}
