//! Retries (DESIGN §11 `retry`): which failures a route retries, the jittered backoff, and
//! the retry budget that keeps retries from multiplying the load on a failing cluster.
//!
//! The attempts themselves are made by [`crate::proxy`]; the body of each is a
//! [`crate::body::replay::Attempt`] of the same kept chunks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use models_config::spec::{RetryCondition, RetrySpec};

use crate::headers::{GRPC_STATUS, grpc_code};
use crate::host::ClusterState;
use crate::rng;

/// Retries always allowed in flight per cluster, whatever the budget says.
const MIN_RETRIES_IN_FLIGHT: usize = 3;
/// Longest backoff, as a multiple of `backoff_ms`.
const MAX_BACKOFF_FACTOR: u32 = 10;

/// A route's retry policy, ready for the request path.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Retry when no connection could be opened.
    pub connect_failure: bool,
    /// Retry when the upstream broke the exchange before response headers.
    pub reset: bool,
    /// Retry when a try saw no response headers within `per_try_timeout`.
    pub timeout: bool,
    /// Bit `s % 64` of word `s / 64` set: retry status `s` (statuses are below 600).
    statuses: [u64; STATUS_WORDS],
    /// Bit `c` set: retry every status of class `c`xx.
    classes: u8,
    /// Bit `n` set: retry gRPC status `n` in a trailers-only answer.
    grpc: u32,
    /// Time allowed for each try until response headers.
    pub per_try_timeout: Option<Duration>,
    backoff: Duration,
    budget_percent: usize,
    /// Request body bytes kept for replay.
    pub replay_cap: u64,
    /// The configured block, for display.
    pub spec: RetrySpec,
}

/// Words of the listed-status bit set (statuses 0 to 639).
const STATUS_WORDS: usize = 10;

/// One retry counted in its cluster's retries in flight until dropped.
#[derive(Debug)]
pub struct RetryPermit(Arc<ClusterState>);

impl RetryPolicy {
    /// The policy of a validated `retry` block whose `on` list parsed to `conditions`.
    pub fn new(spec: &RetrySpec, conditions: &[RetryCondition]) -> Self {
        let mut policy = RetryPolicy {
            attempts: spec.attempts.max(1),
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: [0; STATUS_WORDS],
            classes: 0,
            grpc: 0,
            per_try_timeout: spec.per_try_timeout_ms.map(Duration::from_millis),
            backoff: Duration::from_millis(spec.backoff_ms),
            budget_percent: spec.budget_percent as usize,
            replay_cap: spec.replay_buffer_bytes,
            spec: spec.clone(),
        };
        for condition in conditions {
            match *condition {
                RetryCondition::ConnectFailure => policy.connect_failure = true,
                RetryCondition::Reset => policy.reset = true,
                RetryCondition::Timeout => policy.timeout = true,
                RetryCondition::Status(s) => {
                    if let Some(word) = policy.statuses.get_mut(usize::from(s / 64)) {
                        *word |= 1 << (s % 64);
                    }
                }
                RetryCondition::StatusClass(c) => policy.classes |= 1 << c,
                RetryCondition::Grpc(code) => policy.grpc |= 1 << code,
            }
        }
        policy
    }

    /// Whether status `status` is listed on its own.
    fn lists(&self, status: u16) -> bool {
        self.statuses
            .get(usize::from(status / 64))
            .is_some_and(|word| word & (1 << (status % 64)) != 0)
    }

    /// Whether an answer is one this policy retries: a listed status or class, or a listed
    /// gRPC code in a trailers-only answer.
    pub fn retries_response(&self, resp: &Response<Incoming>) -> bool {
        let status = resp.status().as_u16();
        if self.classes & (1 << (status / 100)) != 0 || self.lists(status) {
            return true;
        }
        if self.grpc != 0
            && let Some(code) = resp.headers().get(GRPC_STATUS).and_then(grpc_code)
            && code < 32
        {
            return self.grpc & (1 << code) != 0;
        }
        false
    }

    /// The wait before retry number `retry` (1 for the first): a random time between half
    /// and one and a half times `backoff × 2^(retry-1)`, at most ten times `backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        if self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let factor = (1u32 << retry.saturating_sub(1).min(16)).min(MAX_BACKOFF_FACTOR);
        let base = self.backoff * factor;
        let ms = base.as_millis() as u64;
        let jittered = ms / 2 + rng::below(ms as usize + 1) as u64;
        Duration::from_millis(jittered)
    }

    /// A place for one more retry in flight on a cluster with `in_flight` requests, when the
    /// budget allows one.
    pub fn admit_retry(&self, state: &Arc<ClusterState>, in_flight: usize) -> Option<RetryPermit> {
        let allowed = (in_flight * self.budget_percent / 100).max(MIN_RETRIES_IN_FLIGHT);
        let before = state.retries.fetch_add(1, Ordering::Relaxed);
        if before >= allowed {
            state.retries.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryPermit(Arc::clone(state)))
    }
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> RetryPolicy {
        let spec: RetrySpec = serde_json::from_str(json).unwrap();
        let conditions: Vec<_> = spec
            .on
            .iter()
            .map(|c| RetryCondition::parse(c).unwrap())
            .collect();
        RetryPolicy::new(&spec, &conditions)
    }

    #[test]
    fn conditions_become_flags_and_masks() {
        let p = policy(r#"{"on": ["reset", "503", "4xx", "unavailable"]}"#);
        assert!(p.reset && !p.connect_failure && !p.timeout);
        assert!(p.lists(503) && !p.lists(502) && !p.lists(200) && !p.lists(999));
        assert_eq!(p.classes, 1 << 4);
        assert_eq!(p.grpc, 1 << 14);
    }

    #[test]
    fn backoff_is_jittered_around_an_exponential_and_capped() {
        let p = policy(r#"{"backoff_ms": 100}"#);
        for _ in 0..200 {
            let first = p.backoff(1).as_millis();
            assert!((50..=150).contains(&first), "{first}");
            let third = p.backoff(3).as_millis();
            assert!((200..=600).contains(&third), "{third}");
            let capped = p.backoff(12).as_millis();
            assert!(capped <= 1500, "{capped}");
        }
        assert_eq!(policy(r#"{"backoff_ms": 0}"#).backoff(2), Duration::ZERO);
    }

    #[test]
    fn the_budget_allows_at_least_three_and_then_a_share() {
        let p = policy(r#"{"budget_percent": 20}"#);
        let state = Arc::new(ClusterState::default());
        let held: Vec<_> = (0..3).map(|_| p.admit_retry(&state, 1).unwrap()).collect();
        assert!(p.admit_retry(&state, 1).is_none(), "3 at a small load");
        assert!(p.admit_retry(&state, 20).is_some(), "20 % of 20 is 4");
        drop(held);
        assert_eq!(state.retries.load(Ordering::Relaxed), 0);
    }
}
