//! How a remote step calls out: a per-attempt timeout, retries with exponential backoff and
//! full jitter on retryable failures only, a circuit breaker, and a concurrency limit.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_protocol::client::ClientError;
use tokio::sync::Semaphore;

/// A remote step's call policy (from pipeline.toml or the builder).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first, on retryable failures only.
    pub retries: u32,
    /// The first retry waits up to this (full jitter); each later one up to twice as long.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Calls of this step in flight at once, across all requests.
    pub concurrency: usize,
    /// Consecutive failed attempts that open the breaker; 0 = no breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before letting one probe through.
    pub breaker_cooldown: Duration,
}

impl Policy {
    /// Defaults for a step kind: `slow` for LLM calls.
    pub fn defaults(slow: bool) -> Self {
        Policy {
            timeout: if slow { Duration::from_secs(60) } else { Duration::from_secs(10) },
            retries: 2,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            concurrency: if slow { 8 } else { 64 },
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// Why a guarded call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The last attempt's failure and how many attempts were made.
    Failed { error: ClientError, attempts: u32 },
    /// The breaker is open: the call was not made.
    CircuitOpen { retry_in: Duration },
    /// No concurrency slot came free in time.
    Saturated { limit: usize },
    /// The request's own deadline passed.
    DeadlineExceeded,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed { error, attempts: 1 } => write!(f, "{error}"),
            CallError::Failed { error, attempts } => write!(f, "{error} (after {attempts} attempts)"),
            CallError::CircuitOpen { retry_in } => {
                write!(f, "circuit breaker open after repeated failures; next probe in {} ms", retry_in.as_millis())
            }
            CallError::Saturated { limit } => write!(f, "all {limit} concurrent calls of this step stayed busy"),
            CallError::DeadlineExceeded => write!(f, "the request's deadline passed"),
        }
    }
}

#[derive(Debug)]
enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else fails fast until it returns.
    HalfOpen,
}

/// The one call let through a half-open breaker. Dropped unsettled — its call's future was
/// dropped mid-attempt (the request timed out, the client left) — it counts as a failed
/// probe: the breaker opens again for a cooldown and then lets the next probe through,
/// instead of staying half-open, refusing every call, for ever.
struct Probe<'a> {
    guard: &'a Guard,
    settled: bool,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!(step = %self.guard.step, "circuit breaker probe abandoned; counted as a failure");
            self.guard.record(false);
        }
    }
}

/// Policy plus the shared state it needs: the breaker and the concurrency slots.
#[derive(Debug)]
pub struct Guard {
    pub policy: Policy,
    breaker: Mutex<BreakerState>,
    slots: Arc<Semaphore>,
    pipeline: String,
    step: String,
}

impl Guard {
    pub fn new(pipeline: &str, step: &str, policy: Policy) -> Self {
        Guard {
            slots: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            breaker: Mutex::new(BreakerState::Closed { consecutive_failures: 0 }),
            policy,
            pipeline: pipeline.to_string(),
            step: step.to_string(),
        }
    }

    /// Whether a call may go out now; `Err` carries how long until the next probe. The call
    /// that takes a half-open breaker's one probe slot gets a [`Probe`]: however the call ends —
    /// even by its future being dropped — the breaker leaves the half-open state.
    fn admit(&self) -> Result<Option<Probe<'_>>, Duration> {
        if self.policy.breaker_failures == 0 {
            return Ok(None);
        }
        let mut state = self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *state {
            BreakerState::Closed { .. } => Ok(None),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::HalfOpen;
                    Ok(Some(Probe { guard: self, settled: false }))
                } else {
                    Err(until - now)
                }
            }
            BreakerState::HalfOpen => Err(Duration::ZERO),
        }
    }

    fn record(&self, ok: bool) {
        if self.policy.breaker_failures == 0 {
            return;
        }
        let mut state = self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_open = !matches!(*state, BreakerState::Closed { .. });
        *state = match (&*state, ok) {
            (_, true) => BreakerState::Closed { consecutive_failures: 0 },
            (BreakerState::Closed { consecutive_failures }, false)
                if consecutive_failures + 1 < self.policy.breaker_failures =>
            {
                BreakerState::Closed { consecutive_failures: consecutive_failures + 1 }
            }
            (_, false) => BreakerState::Open { until: Instant::now() + self.policy.breaker_cooldown },
        };
        let is_open = !matches!(*state, BreakerState::Closed { .. });
        if is_open != was_open {
            if is_open {
                tracing::warn!(step = %self.step, "circuit breaker opened");
            } else {
                tracing::info!(step = %self.step, "circuit breaker closed");
            }
            kiln_serving::metrics::breaker_state(&self.pipeline, &self.step, is_open);
        }
    }

    /// Records an attempt's result; a probe's own result settles it.
    fn settle(&self, probe: Option<Probe<'_>>, ok: bool) {
        if let Some(mut probe) = probe {
            probe.settled = true;
        }
        self.record(ok);
    }

    /// Whether the breaker is open now (for tests and status).
    pub fn is_open(&self) -> bool {
        matches!(
            *self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            BreakerState::Open { .. } | BreakerState::HalfOpen
        )
    }

    /// Runs `attempt` under the policy. `deadline` is the request's own, if it has one.
    pub async fn call<T, F, Fut>(&self, deadline: Option<Instant>, attempt: F) -> Result<T, CallError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.call_noting(deadline, &|_, _| {}, attempt).await
    }

    /// [`Guard::call`], telling `retrying` of each failed attempt that is retried (its number,
    /// its error) — a trace's events.
    pub async fn call_noting<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        retrying: &(dyn Fn(u32, &ClientError) + Sync),
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let remaining = |deadline: Option<Instant>| deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = remaining(deadline).unwrap_or(self.policy.timeout).min(self.policy.timeout);
        let _slot = match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(CallError::Saturated { limit: self.policy.concurrency }),
        };
        let mut attempts = 0;
        loop {
            let probe = self.admit().map_err(|retry_in| CallError::CircuitOpen { retry_in })?;
            let budget = match remaining(deadline) {
                Some(left) if left.is_zero() => return Err(CallError::DeadlineExceeded),
                Some(left) => left.min(self.policy.timeout),
                None => self.policy.timeout,
            };
            attempts += 1;
            let result = match tokio::time::timeout(budget, attempt(budget)).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout(budget)),
            };
            match result {
                Ok(value) => {
                    self.settle(probe, true);
                    return Ok(value);
                }
                Err(error) => {
                    self.settle(probe, false);
                    if !error.retryable() || attempts > self.policy.retries {
                        return Err(CallError::Failed { error, attempts });
                    }
                    kiln_serving::metrics::pipeline_retry(&self.pipeline, &self.step);
                    retrying(attempts, &error);
                    let ceiling =
                        self.policy.backoff.saturating_mul(1 << (attempts - 1).min(16)).min(self.policy.max_backoff);
                    let pause = ceiling.mul_f64(fastrand::f64());
                    tracing::debug!(step = %self.step, attempt = attempts, %error, ?pause, "retrying");
                    if let Some(left) = remaining(deadline)
                        && left <= pause
                    {
                        return Err(CallError::Failed { error, attempts });
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> Policy {
        Policy {
            timeout: Duration::from_millis(200),
            retries: 2,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            concurrency: 4,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn retries_only_retryable_failures() {
        let guard = Guard::new("p", "s", Policy { breaker_failures: 0, ..policy() });
        let calls = AtomicU32::new(0);
        let out = guard
            .call(None, |_| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Err(ClientError::Status { code: 503, message: "busy".into() }) } else { Ok(n) }
            })
            .await;
        assert_eq!(out, Ok(2));
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = guard
            .call(None, |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ClientError::Status { code: 400, message: "bad".into() })
            })
            .await;
        assert!(matches!(out, Err(CallError::Failed { attempts: 1, .. })), "{out:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn breaker_opens_fails_fast_and_recovers_through_a_probe() {
        let guard = Guard::new("p", "s", Policy { retries: 0, ..policy() });
        let fail = || async { Err::<(), _>(ClientError::Connection("refused".into())) };
        for _ in 0..3 {
            assert!(matches!(guard.call(None, |_| fail()).await, Err(CallError::Failed { .. })));
        }
        assert!(guard.is_open());
        let calls = AtomicU32::new(0);
        let out = guard
            .call(None, |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(matches!(out, Err(CallError::CircuitOpen { .. })), "{out:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "an open breaker makes no call");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(guard.call(None, |_| async { Ok(7) }).await, Ok(7));
        assert!(!guard.is_open());
    }

    #[tokio::test]
    async fn a_cancelled_probe_lets_the_next_probe_through_after_the_cooldown() {
        let guard = Guard::new("p", "s", Policy { retries: 0, ..policy() });
        for _ in 0..3 {
            let _ = guard.call(None, |_| async { Err::<(), _>(ClientError::Connection("refused".into())) }).await;
        }
        assert!(guard.is_open());
        tokio::time::sleep(Duration::from_millis(60)).await;
        // The probe's caller gives up mid-attempt: its future is dropped.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            guard.call(None, |_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }),
        )
        .await;
        assert!(abandoned.is_err(), "the probe was cut off");
        // Open again (not stuck half-open): fail fast until the cooldown passes...
        assert!(matches!(guard.call(None, |_| async { Ok(1) }).await, Err(CallError::CircuitOpen { .. })));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // ...then the next probe goes out, and the recovered remote closes the breaker.
        assert_eq!(guard.call(None, |_| async { Ok(2) }).await, Ok(2));
        assert!(!guard.is_open());
        assert_eq!(guard.call(None, |_| async { Ok(3) }).await, Ok(3));
    }

    #[tokio::test]
    async fn attempts_time_out() {
        let guard = Guard::new("p", "s", Policy { timeout: Duration::from_millis(20), retries: 1, ..policy() });
        let out: Result<(), _> = guard
            .call(None, |_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(matches!(out, Err(CallError::Failed { error: ClientError::Timeout(_), attempts: 2 })), "{out:?}");
    }
}
