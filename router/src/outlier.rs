//! Passive outlier detection: endpoints that fail real requests in a row are ejected for a
//! while (DESIGN §11 `outlier_detection`).
//!
//! Each answer of an upstream is classified once ([`Outcome`]): a 5xx (or a gRPC
//! trailers-only `UNAVAILABLE`/`INTERNAL`) counts towards `consecutive_5xx`; a connect
//! failure, a reset or a timeout towards `consecutive_gateway_failures`; anything else resets
//! both counts. Past a threshold the host is ejected for `base_ejection_ms × times ejected`
//! (at most `max_ejection_ms`), unless that would eject more than `max_ejection_percent` of
//! the cluster, or its last endpoint that is not ejected: passive signals alone never empty
//! a cluster. A timer brings the host back; both moments are logged with the reason.
//!
//! On the hot path a success costs one relaxed load per counter (a store only when a count
//! was not already zero), so endpoints that answer well are never written by every worker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use models_config::spec::OutlierDetectionSpec;

use crate::host::{EJECTED, Host, OutlierState};
use crate::metrics;

/// What one exchange with an endpoint said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that is not a server error.
    Success,
    /// A 5xx, or a gRPC `UNAVAILABLE`/`INTERNAL` trailers-only answer.
    ServerError,
    /// A connect failure, a reset before response headers, or a timeout.
    GatewayFailure,
}

/// Why a host was ejected (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_5xx` server errors in a row.
    Consecutive5xx,
    /// `consecutive_gateway_failures` gateway failures in a row.
    ConsecutiveGatewayFailures,
}

/// A cluster's `outlier_detection` block, ready for the hot path.
#[derive(Debug)]
pub struct OutlierPolicy {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    base: Duration,
    max: Duration,
    max_percent: u32,
    /// The configured block, for display.
    pub spec: OutlierDetectionSpec,
}

// === impl Reason ===

impl Reason {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailures => "consecutive_gateway_failures",
        }
    }
}

// === impl OutlierState ===

impl OutlierState {
    /// Times this host has been ejected (the multiplier of the next ejection time).
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// Unix milliseconds until which the host is ejected, when it is.
    pub fn ejected_until_ms(&self) -> Option<u64> {
        match self.ejected_until_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
}

// === impl OutlierPolicy ===

impl OutlierPolicy {
    /// The policy of a validated `outlier_detection` block.
    pub fn new(spec: &OutlierDetectionSpec) -> Self {
        OutlierPolicy {
            consecutive_5xx: spec.consecutive_5xx,
            consecutive_gateway: spec.consecutive_gateway_failures,
            base: Duration::from_millis(spec.base_ejection_ms),
            max: Duration::from_millis(spec.max_ejection_ms()),
            max_percent: spec.max_ejection_percent,
            spec: spec.clone(),
        }
    }

    /// Records `outcome` for `host` of cluster `cluster` (whose endpoints are `hosts`), and
    /// ejects the host when a threshold is reached and the cluster can spare it.
    #[inline]
    pub fn observe(
        &self,
        cluster: &Arc<str>,
        hosts: &[Arc<Host>],
        host: &Arc<Host>,
        outcome: Outcome,
    ) {
        let state = &host.outlier;
        match outcome {
            Outcome::Success => {
                // Loads first: a host that keeps answering well is only read.
                if state.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    state.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if state.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                    state.consecutive_gateway.store(0, Ordering::Relaxed);
                }
            }
            Outcome::ServerError => {
                let n = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.consecutive_5xx {
                    self.eject(cluster, hosts, host, Reason::Consecutive5xx);
                }
            }
            Outcome::GatewayFailure => {
                let n = state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.consecutive_gateway {
                    self.eject(cluster, hosts, host, Reason::ConsecutiveGatewayFailures);
                }
            }
        }
    }

    #[cold]
    fn eject(&self, cluster: &Arc<str>, hosts: &[Arc<Host>], host: &Arc<Host>, reason: Reason) {
        if host.has_flag(EJECTED) {
            return;
        }
        let ejected = hosts.iter().filter(|h| h.has_flag(EJECTED)).count();
        let n = hosts.len();
        let within_percent = (ejected + 1) * 100 <= self.max_percent as usize * n;
        if !within_percent || ejected + 1 >= n {
            // Per request when a whole cluster fails: debug, not warn.
            tracing::debug!(
                cluster = %cluster,
                endpoint = %host.address,
                reason = reason.as_str(),
                ejected,
                endpoints = n,
                max_ejection_percent = self.max_percent,
                "outlier not ejected: the cluster cannot spare another endpoint"
            );
            reset_counts(host);
            return;
        }
        if !host.set_flag(EJECTED) {
            return; // another worker ejected it just now
        }
        let state = &host.outlier;
        let now = unix_ms();
        // A host that stayed in for a whole maximum ejection since its last return starts
        // over at the base time.
        let returned = state.returned_at_ms.load(Ordering::Relaxed);
        if returned != 0 && now.saturating_sub(returned) >= self.max.as_millis() as u64 {
            state.times_ejected.store(0, Ordering::Relaxed);
        }
        let times = state.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self.base.saturating_mul(times).min(self.max);
        state
            .ejected_until_ms
            .store(now + duration.as_millis() as u64, Ordering::Relaxed);
        let epoch = state.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        reset_counts(host);
        metrics::record_ejection(cluster, &host.address, reason.as_str());
        tracing::warn!(
            cluster = %cluster,
            endpoint = %host.address,
            reason = reason.as_str(),
            times_ejected = times,
            ejection_ms = duration.as_millis() as u64,
            "endpoint ejected"
        );
        let weak = Arc::downgrade(host);
        let cluster = Arc::clone(cluster);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(return_after(weak, cluster, epoch, duration));
            }
            Err(_) => {
                // Only outside a runtime (unit tests): nothing would bring it back.
                host.clear_flag(EJECTED);
                state.ejected_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

fn reset_counts(host: &Host) {
    host.outlier.consecutive_5xx.store(0, Ordering::Relaxed);
    host.outlier.consecutive_gateway.store(0, Ordering::Relaxed);
}

/// Brings `host` back after `duration`, unless it was ejected again in the meantime.
async fn return_after(host: Weak<Host>, cluster: Arc<str>, epoch: u64, duration: Duration) {
    tokio::time::sleep(duration).await;
    let Some(host) = host.upgrade() else {
        return;
    };
    let state = &host.outlier;
    if state.epoch.load(Ordering::Relaxed) != epoch {
        return;
    }
    state.ejected_until_ms.store(0, Ordering::Relaxed);
    state.returned_at_ms.store(unix_ms(), Ordering::Relaxed);
    reset_counts(&host);
    if host.clear_flag(EJECTED) {
        tracing::info!(
            cluster = %cluster,
            endpoint = %host.address,
            after_ms = duration.as_millis() as u64,
            "ejected endpoint returned"
        );
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostRegistry;
    use models_config::ValidEndpoint;

    fn hosts(n: usize) -> (HostRegistry, Vec<Arc<Host>>) {
        let registry = HostRegistry::new(1);
        let hosts = (0..n)
            .map(|i| {
                let address = format!("127.0.0.1:{}", i + 1);
                registry.host(&ValidEndpoint {
                    address: Arc::from(address.as_str()),
                    authority: address.parse().unwrap(),
                    socket: address.parse().ok(),
                    weight: 1,
                })
            })
            .collect();
        (registry, hosts)
    }

    fn policy(json: &str) -> OutlierPolicy {
        OutlierPolicy::new(&serde_json::from_str(json).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_server_errors_eject_until_the_ejection_time_passes() {
        let (_r, hosts) = hosts(4);
        let p = policy(r#"{"consecutive_5xx": 3, "base_ejection_ms": 1000}"#);
        let c: Arc<str> = Arc::from("c");
        p.observe(&c, &hosts, &hosts[0], Outcome::ServerError);
        p.observe(&c, &hosts, &hosts[0], Outcome::ServerError);
        p.observe(&c, &hosts, &hosts[0], Outcome::Success);
        p.observe(&c, &hosts, &hosts[0], Outcome::ServerError);
        p.observe(&c, &hosts, &hosts[0], Outcome::ServerError);
        assert!(
            !hosts[0].has_flag(EJECTED),
            "a success in between resets the count"
        );
        p.observe(&c, &hosts, &hosts[0], Outcome::ServerError);
        assert!(hosts[0].has_flag(EJECTED));
        assert_eq!(hosts[0].outlier.times_ejected(), 1);
        assert!(hosts[0].outlier.ejected_until_ms().is_some());
        tokio::time::sleep(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        assert!(!hosts[0].has_flag(EJECTED));
        assert_eq!(hosts[0].outlier.ejected_until_ms(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_ejection_lasts_longer() {
        let (_r, hosts) = hosts(2);
        let p = policy(
            r#"{"consecutive_gateway_failures": 1, "base_ejection_ms": 1000, "max_ejection_percent": 50}"#,
        );
        let c: Arc<str> = Arc::from("c");
        p.observe(&c, &hosts, &hosts[0], Outcome::GatewayFailure);
        assert!(hosts[0].has_flag(EJECTED));
        tokio::time::sleep(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        assert!(!hosts[0].has_flag(EJECTED));
        p.observe(&c, &hosts, &hosts[0], Outcome::GatewayFailure);
        assert_eq!(hosts[0].outlier.times_ejected(), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::yield_now().await;
        assert!(hosts[0].has_flag(EJECTED), "2 × base = 2 s");
        tokio::time::sleep(Duration::from_millis(600)).await;
        tokio::task::yield_now().await;
        assert!(!hosts[0].has_flag(EJECTED));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_the_last_endpoint_are_kept() {
        let (_r, three) = hosts(3);
        let p = policy(r#"{"consecutive_5xx": 1, "max_ejection_percent": 50}"#);
        let c: Arc<str> = Arc::from("c");
        for h in &three {
            p.observe(&c, &three, h, Outcome::ServerError);
        }
        let ejected = three.iter().filter(|h| h.has_flag(EJECTED)).count();
        assert_eq!(ejected, 1, "50 % of 3 endpoints is one");

        let (_r, two) = hosts(2);
        let p = policy(r#"{"consecutive_5xx": 1, "max_ejection_percent": 100}"#);
        for h in &two {
            p.observe(&c, &two, h, Outcome::ServerError);
        }
        let ejected = two.iter().filter(|h| h.has_flag(EJECTED)).count();
        assert_eq!(ejected, 1, "never the last endpoint");
    }
}
