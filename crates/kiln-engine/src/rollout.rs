//! `[rollout]`: a canary version that answers a share of a model's requests, and a shadow
//! version that gets a copy of them off the caller's path and is only compared. The engine picks
//! the version ([`crate::Engine::model`]); the server sends the copies ([`Rollout::try_send`])
//! and counts what the shadow answered against what the caller got ([`agree`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_core::{Tensor, TensorData};
use kiln_repository::config::RolloutConfig;

/// Shadow copies in flight at once; beyond, a copy is dropped (counted), never queued.
pub const SHADOW_IN_FLIGHT: usize = 64;

/// Relative (and absolute, near zero) tolerance for floating-point outputs to agree, unless
/// `[rollout] tolerance` says otherwise.
pub const TOLERANCE: f64 = 1e-4;

/// A model's rollout and what its shadow did so far.
#[derive(Debug)]
pub struct Rollout {
    pub config: RolloutConfig,
    slots: Arc<tokio::sync::Semaphore>,
    pub sent: AtomicU64,
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Requests that asked for the model's default version so far (the canary's split).
    picks: AtomicU64,
}

/// The right to run one shadow copy; released when dropped.
pub type ShadowSlot = tokio::sync::OwnedSemaphorePermit;

impl Rollout {
    pub fn new(config: RolloutConfig) -> Rollout {
        Rollout {
            config,
            slots: Arc::new(tokio::sync::Semaphore::new(SHADOW_IN_FLIGHT)),
            sent: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            disagreed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            picks: AtomicU64::new(0),
        }
    }

    /// Whether this request goes to the canary: an even split by count, not a coin — of any
    /// run of requests, `percent` % (to 0.01 %, rounded down) go to the canary, spread evenly,
    /// so a canary's share holds at low traffic too and its statistics are not noise.
    pub fn takes_canary(&self, percent: f64) -> bool {
        let per_10k = (percent * 100.0).round().clamp(0.0, 10_000.0) as u64;
        let n = self.picks.fetch_add(1, Ordering::Relaxed) % 10_000;
        (n + 1) * per_10k / 10_000 > n * per_10k / 10_000
    }

    /// A slot for one more shadow copy, or `None` (counted as dropped) when the shadow is behind.
    pub fn try_send(&self) -> Option<ShadowSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                Some(slot)
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts one shadow answer: `Some(agreed)`, or `None` when the shadow failed.
    pub fn count(&self, outcome: Option<bool>) {
        let counter = match outcome {
            Some(true) => &self.agreed,
            Some(false) => &self.disagreed,
            None => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The tolerance its comparisons use.
    pub fn tolerance(&self) -> f64 {
        self.config.tolerance.unwrap_or(TOLERANCE)
    }

    /// The role of `version`: `canary`, `shadow` or `primary`.
    pub fn role(&self, version: u64) -> &'static str {
        if self.config.canary.is_some_and(|c| c.version == version) {
            "canary"
        } else if self.config.shadow == Some(version) {
            "shadow"
        } else {
            "primary"
        }
    }
}

/// Whether two answers agree: the same outputs with the same shapes; integers, strings and
/// booleans exactly (labels), floating-point values within `tolerance` (relative, or absolute
/// near zero).
pub fn agree(a: &[Tensor], b: &[Tensor], tolerance: f64) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter()
                .find(|y| y.name == x.name)
                .is_some_and(|y| x.shape == y.shape && same_values(&x.data, &y.data, tolerance))
        })
}

fn same_values(a: &TensorData, b: &TensorData, tolerance: f64) -> bool {
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= tolerance * x.abs().max(y.abs()).max(1.0);
    match (a, b) {
        (TensorData::Fp32(x), TensorData::Fp32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(f64::from(*p), f64::from(*q)))
        }
        (TensorData::Fp64(x), TensorData::Fp64(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(*p, *q)),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_canary_gets_its_share_of_any_run_of_requests_spread_evenly() {
        let rollout = Rollout::new(RolloutConfig { canary: None, shadow: None, tolerance: None });
        let picks: Vec<bool> = (0..2000).map(|_| rollout.takes_canary(10.0)).collect();
        assert_eq!(picks.iter().filter(|&&p| p).count(), 200);
        // Every run of 10 has exactly one.
        assert!(picks.chunks(10).all(|c| c.iter().filter(|&&p| p).count() == 1));
        let rollout = Rollout::new(RolloutConfig { canary: None, shadow: None, tolerance: None });
        assert_eq!((0..10_000).filter(|_| rollout.takes_canary(2.5)).count(), 250);
        assert!(!(0..100).any(|_| rollout.takes_canary(0.0)));
        assert!((0..100).all(|_| rollout.takes_canary(100.0)));
    }

    use super::*;

    fn t(name: &str, data: TensorData) -> Tensor {
        let n = data.len();
        Tensor::new(name, vec![n], data).expect("tensor")
    }

    #[test]
    fn labels_agree_exactly_and_scores_within_the_tolerance() {
        let a = [t("label", TensorData::Int64(vec![1, 0])), t("p", TensorData::Fp32(vec![0.5, 100.0]))];
        let near = [t("label", TensorData::Int64(vec![1, 0])), t("p", TensorData::Fp32(vec![0.50001, 100.001]))];
        let far = [t("label", TensorData::Int64(vec![1, 0])), t("p", TensorData::Fp32(vec![0.51, 100.0]))];
        let other_label = [t("label", TensorData::Int64(vec![1, 1])), t("p", TensorData::Fp32(vec![0.5, 100.0]))];
        assert!(agree(&a, &near, TOLERANCE));
        assert!(!agree(&a, &far, TOLERANCE));
        assert!(agree(&a, &far, 0.05));
        assert!(!agree(&a, &other_label, 0.05));
        assert!(!agree(&a, &a[..1], TOLERANCE));
    }
}
