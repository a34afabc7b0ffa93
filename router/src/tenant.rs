//! Tenants (DESIGN §11 `tenants`): who is calling, and the limits that keep one calling team
//! from starving the others.
//!
//! The limits of a tenant are exact per router process, across all its workers, and
//! lock-free: `max_concurrent` is one shared count, `requests_per_second` + `burst` a token
//! bucket kept as one atomic "theoretical arrival time" (GCRA) that each admitted request
//! moves forward by one emission interval with a compare-and-swap. The state belongs to the
//! tenant's name, not to a table, so a table swap that keeps the tenant keeps its count and
//! its bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics::Counter;
use models_config::spec::TenantSpec;

use crate::metrics as router_metrics;

/// The state of one tenant name that outlives tables.
#[derive(Debug, Default)]
pub struct TenantState {
    in_flight: AtomicUsize,
    /// Nanoseconds since [`clock`]'s origin at which the bucket is empty again.
    tat_ns: AtomicU64,
}

/// A declared tenant, ready for the request path.
#[derive(Debug)]
pub struct Tenant {
    /// The name (a metric label).
    pub name: Arc<str>,
    /// The tenant's place among its table's tenants (its request counters' slot).
    pub index: usize,
    state: Arc<TenantState>,
    max_concurrent: Option<usize>,
    /// `(emission interval, bucket size × interval)`, in nanoseconds.
    rate: Option<(u64, u64)>,
    requests: Counter,
    refused_rate: Counter,
    refused_concurrent: Counter,
    /// The configured block, for display.
    pub spec: TenantSpec,
}

/// Why a tenant's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past the rate and burst; a token is back in this many seconds (at least 1).
    RateLimited(u32),
    /// `max_concurrent` requests are in flight.
    Overloaded,
}

/// One request counted in its tenant's in-flight total until dropped.
#[derive(Debug)]
pub struct TenantPermit(Arc<TenantState>);

impl Tenant {
    /// A tenant from its validated block and the state its name keeps across tables.
    pub fn new(name: &str, index: usize, spec: &TenantSpec, state: Arc<TenantState>) -> Self {
        let rate = spec.requests_per_second.map(|rps| {
            let interval = (1e9 / rps).round().max(1.0) as u64;
            let burst = u64::from(spec.burst().unwrap_or(1));
            (interval, interval.saturating_mul(burst))
        });
        // The clock's origin comes before any request this tenant admits.
        origin();
        Tenant {
            name: Arc::from(name),
            index,
            state,
            max_concurrent: spec.max_concurrent.map(|m| m as usize),
            rate,
            requests: router_metrics::tenant_requests(name),
            refused_rate: router_metrics::tenant_refused(name, "rate_limited"),
            refused_concurrent: router_metrics::tenant_refused(name, "max_concurrent"),
            spec: spec.clone(),
        }
    }

    /// Whether the tenant has a limit at all.
    pub fn is_limited(&self) -> bool {
        self.max_concurrent.is_some() || self.rate.is_some()
    }

    /// Counts one request of this tenant, arrived at `now`, and admits it, or says why not.
    /// The permit (when `max_concurrent` is set) counts the request until it is dropped.
    pub fn admit(&self, now: Instant) -> Result<Option<TenantPermit>, Refusal> {
        self.requests.increment(1);
        let permit = match self.max_concurrent {
            None => None,
            Some(max) => {
                if self.state.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
                    self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.refused_concurrent.increment(1);
                    return Err(Refusal::Overloaded);
                }
                Some(TenantPermit(Arc::clone(&self.state)))
            }
        };
        if let Some((interval, tolerance)) = self.rate
            && let Err(wait_ns) = take_token(&self.state.tat_ns, interval, tolerance, nanos_at(now))
        {
            self.refused_rate.increment(1);
            let seconds = wait_ns
                .div_ceil(1_000_000_000)
                .clamp(1, u64::from(u32::MAX));
            return Err(Refusal::RateLimited(seconds as u32));
        }
        Ok(permit)
    }

    /// Requests of this tenant in flight (those counted by `max_concurrent`).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// GCRA: admits a request at `now` when the bucket has a token, moving the theoretical
/// arrival time `tat` one `interval` on; otherwise the nanoseconds until a token is back.
fn take_token(tat: &AtomicU64, interval: u64, tolerance: u64, now: u64) -> Result<(), u64> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = current.max(now) + interval;
        if next - now > tolerance {
            return Err(next - now - tolerance);
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => current = seen,
        }
    }
}

/// The origin of the buckets' clock, shared by every worker: set when the first tenant is
/// built, so before any request is admitted.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds from the clock's origin to `now` (the request's arrival, read once for the
/// whole request: the bucket needs no clock of its own).
fn nanos_at(now: Instant) -> u64 {
    // Seconds and nanoseconds apart: `as_nanos` would widen to `u128` and back.
    let since = now.saturating_duration_since(origin());
    since.as_secs() * 1_000_000_000 + u64::from(since.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let tat = AtomicU64::new(0);
        let second = 1_000_000_000;
        // 2 per second, burst 3, all at t = 10 s.
        let now = 10 * second;
        for _ in 0..3 {
            assert_eq!(take_token(&tat, second / 2, 3 * second / 2, now), Ok(()));
        }
        let wait = take_token(&tat, second / 2, 3 * second / 2, now).unwrap_err();
        assert_eq!(wait, second / 2);
        // Half a second later one token is back, and only one.
        let later = now + second / 2;
        assert_eq!(take_token(&tat, second / 2, 3 * second / 2, later), Ok(()));
        assert!(take_token(&tat, second / 2, 3 * second / 2, later).is_err());
    }

    #[test]
    fn limits_are_counted_and_released() {
        let spec: TenantSpec = serde_json::from_str(
            r#"{"max_concurrent": 1, "requests_per_second": 0.001, "burst": 2}"#,
        )
        .unwrap();
        let tenant = Tenant::new("t", 0, &spec, Arc::default());
        let first = tenant.admit(Instant::now()).unwrap();
        assert_eq!(
            tenant.admit(Instant::now()).unwrap_err(),
            Refusal::Overloaded
        );
        drop(first);
        assert_eq!(tenant.in_flight(), 0);
        let second = tenant.admit(Instant::now()).unwrap();
        drop(second);
        match tenant.admit(Instant::now()).unwrap_err() {
            Refusal::RateLimited(seconds) => assert!(seconds >= 999, "{seconds}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(tenant.in_flight(), 0, "a rate refusal gives its place back");
    }
}
