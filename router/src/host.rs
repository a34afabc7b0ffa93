//! The host registry: the state of every endpoint address and cluster, kept apart from the
//! route tables that refer to it.
//!
//! A route table is rebuilt whole on every config change, but what the router knows about a
//! model server must not start over each time: its connection pool, the requests in flight
//! on it, its health and its ejection belong to the **address**, and a table swap that keeps
//! the address keeps all of it. The same holds for a cluster's in-flight and pending counts
//! (the circuit breaker's), which belong to the cluster **name**, and a tenant's in-flight
//! count and token bucket, which belong to the tenant **name**.
//!
//! The registry holds weak references only: tables own the [`Host`]s and [`ClusterState`]s,
//! so an address that no table uses any more is dropped (its pool closed, its prober
//! stopped) once the last request on it has finished.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::uri::Authority;
use models_config::ValidEndpoint;

use crate::tenant::TenantState;
use crate::upstream::Pool;

/// Eligibility flag: the active health check says the host is unhealthy.
pub const UNHEALTHY: u8 = 1;
/// Eligibility flag: outlier detection has ejected the host.
pub const EJECTED: u8 = 2;

/// One endpoint address and everything the router knows about it.
#[derive(Debug)]
pub struct Host {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, parsed once for request URIs and `Host` headers.
    pub authority: Authority,
    /// Connections, one slot per worker.
    pub pool: Pool,
    /// Requests in flight, from pick until the response body ends (least request,
    /// `GET /clusters`).
    active: AtomicUsize,
    /// [`UNHEALTHY`] and [`EJECTED`] bits; a cluster masks out the ones it does not use.
    flags: AtomicU8,
    /// Active health-check state (written by this host's prober only).
    pub health: HealthState,
    /// Passive outlier-detection state.
    pub outlier: OutlierState,
}

/// The state of one cluster name that outlives route tables: the circuit breaker's counts.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Requests in flight to the cluster.
    pub in_flight: AtomicUsize,
    /// Requests waiting for a new upstream connection.
    pub pending: AtomicUsize,
    /// Retries in flight (the retry budget's count).
    pub retries: AtomicUsize,
}

/// The outlier-detection state of one host (belongs to the address, survives table swaps).
#[derive(Debug, Default)]
pub struct OutlierState {
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) times_ejected: AtomicU32,
    /// Unix milliseconds until which the host is ejected; 0 when it is not.
    pub(crate) ejected_until_ms: AtomicU64,
    /// Unix milliseconds of the last return from an ejection; 0 when none.
    pub(crate) returned_at_ms: AtomicU64,
    /// Bumped on every ejection, so a stale return timer does nothing.
    pub(crate) epoch: AtomicU64,
}

/// The active health-check state of one host: written by its prober, read by
/// `GET /clusters`; the hot path reads only the host's [`UNHEALTHY`] flag.
#[derive(Debug, Default)]
pub struct HealthState {
    pub(crate) detail: Mutex<HealthDetail>,
}

/// What the prober of a host has found so far.
#[derive(Debug, Default)]
pub(crate) struct HealthDetail {
    pub(crate) status: HealthStatus,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    pub(crate) last: Option<LastCheck>,
    /// The running prober; dropping it stops the prober.
    pub(crate) probe: Option<ProbeHandle>,
}

/// What the active health check says of a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HealthStatus {
    /// Not probed yet (or no check configured): eligible.
    #[default]
    Unknown,
    /// The last `healthy_threshold` probes passed.
    Healthy,
    /// The last `unhealthy_threshold` probes failed: no new requests.
    Unhealthy,
}

/// The result of the latest probe.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// Whether it passed.
    pub ok: bool,
    /// What was seen (`"200"`, `"status 503"`, `"connect: connection refused"`, ...).
    pub detail: String,
    /// When it ended, in Unix milliseconds.
    pub at_unix_ms: u64,
    /// How long it took.
    pub duration: std::time::Duration,
}

/// A running prober: the check it runs, and the token that stops it (cancelled on drop).
#[derive(Debug)]
pub(crate) struct ProbeHandle {
    pub(crate) key: ProbeKey,
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

/// What makes two probers the same: the check and the protocol it is sent over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeKey {
    pub(crate) spec: models_config::spec::HealthCheckSpec,
    pub(crate) h2: bool,
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every live [`Host`] by address and [`ClusterState`] by cluster name.
#[derive(Debug)]
pub struct HostRegistry {
    workers: usize,
    hosts: Mutex<HashMap<Arc<str>, Weak<Host>>>,
    clusters: Mutex<HashMap<Arc<str>, Weak<ClusterState>>>,
    tenants: Mutex<HashMap<Arc<str>, Weak<TenantState>>>,
}

/// Counts a request against its host (and its cluster, when the cluster has a circuit
/// breaker) until dropped: when the response body ends, or the attempt fails.
#[derive(Debug)]
pub struct InFlight {
    host: Arc<Host>,
    cluster: Option<ClusterPermit>,
}

/// One request counted in a cluster's in-flight total (circuit breaker) until dropped.
#[derive(Debug)]
pub struct ClusterPermit(Arc<ClusterState>);

// === impl Host ===

impl Host {
    fn new(endpoint: &ValidEndpoint, workers: usize) -> Self {
        Host {
            address: Arc::clone(&endpoint.address),
            authority: endpoint.authority.clone(),
            pool: Pool::new(Arc::clone(&endpoint.address), endpoint.socket, workers),
            active: AtomicUsize::new(0),
            flags: AtomicU8::new(0),
            health: HealthState::default(),
            outlier: OutlierState::default(),
        }
    }

    /// Requests in flight right now.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether none of the flags in `mask` is set (a cluster's mask holds the flags of the
    /// features it has configured).
    #[inline]
    pub fn eligible(&self, mask: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & mask == 0
    }

    /// Whether `flag` is set.
    pub fn has_flag(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & flag != 0
    }

    /// Sets `flag`; returns whether it was clear before.
    pub fn set_flag(&self, flag: u8) -> bool {
        self.flags.fetch_or(flag, Ordering::Relaxed) & flag == 0
    }

    /// Clears `flag`; returns whether it was set before.
    pub fn clear_flag(&self, flag: u8) -> bool {
        self.flags.fetch_and(!flag, Ordering::Relaxed) & flag != 0
    }
}

// === impl HostRegistry ===

impl HostRegistry {
    /// An empty registry whose pools get one slot per proxy worker.
    pub fn new(workers: usize) -> Self {
        HostRegistry {
            workers,
            hosts: Mutex::new(HashMap::new()),
            clusters: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The host of `endpoint`'s address: the live one when a table still uses it, else a
    /// new one. Addresses nobody uses any more are forgotten on the way.
    pub fn host(&self, endpoint: &ValidEndpoint) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = hosts.get(&endpoint.address).and_then(Weak::upgrade) {
            return host;
        }
        let host = Arc::new(Host::new(endpoint, self.workers));
        hosts.insert(Arc::clone(&endpoint.address), Arc::downgrade(&host));
        host
    }

    /// The state of cluster `name`: the live one when a table still uses it, else a new one.
    pub fn cluster(&self, name: &Arc<str>) -> Arc<ClusterState> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = clusters.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(ClusterState::default());
        clusters.insert(Arc::clone(name), Arc::downgrade(&state));
        state
    }

    /// The state of tenant `name`: the live one when a table still uses it, else a new one.
    pub fn tenant(&self, name: &Arc<str>) -> Arc<TenantState> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = tenants.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(TenantState::default());
        tenants.insert(Arc::clone(name), Arc::downgrade(&state));
        state
    }

    /// Forgets entries whose host or cluster no table uses any more; called after a swap.
    pub fn prune(&self) {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, h| h.strong_count() > 0);
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| c.strong_count() > 0);
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, t| t.strong_count() > 0);
    }

    /// Number of live hosts (for tests and `GET /clusters`).
    pub fn live_hosts(&self) -> usize {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.strong_count() > 0)
            .count()
    }
}

// === impl InFlight ===

impl InFlight {
    /// Starts counting a request on `host`, holding `cluster`'s permit when there is one.
    #[inline]
    pub fn start(host: &Arc<Host>, cluster: Option<ClusterPermit>) -> Self {
        host.active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            host: Arc::clone(host),
            cluster,
        }
    }

    /// The host counted.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Stops counting on the host and hands back the cluster permit, for another attempt
    /// in the same cluster.
    pub fn release(mut self) -> Option<ClusterPermit> {
        self.cluster.take()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.host.active.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl ClusterPermit ===

impl ClusterPermit {
    /// Takes one of `max` in-flight places of `state`, or `None` when all are taken.
    pub fn try_acquire(state: &Arc<ClusterState>, max: usize) -> Option<Self> {
        let before = state.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClusterPermit(Arc::clone(state)))
    }
}

impl Drop for ClusterPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn endpoint(address: &str) -> ValidEndpoint {
        ValidEndpoint {
            address: Arc::from(address),
            authority: address.parse().unwrap(),
            socket: address.parse::<SocketAddr>().ok(),
            weight: 1,
        }
    }

    #[test]
    fn a_live_address_keeps_its_host_and_a_dropped_one_is_forgotten() {
        let registry = HostRegistry::new(1);
        let a = registry.host(&endpoint("127.0.0.1:1"));
        let again = registry.host(&endpoint("127.0.0.1:1"));
        assert!(Arc::ptr_eq(&a, &again));
        let b = registry.host(&endpoint("127.0.0.1:2"));
        assert_eq!(registry.live_hosts(), 2);
        drop(b);
        registry.prune();
        assert_eq!(registry.live_hosts(), 1);
        let b = registry.host(&endpoint("127.0.0.1:2"));
        assert_eq!(b.active_requests(), 0);
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let registry = HostRegistry::new(1);
        let host = registry.host(&endpoint("127.0.0.1:1"));
        let state = registry.cluster(&Arc::from("c"));
        let first = InFlight::start(&host, ClusterPermit::try_acquire(&state, 1));
        assert_eq!(host.active_requests(), 1);
        assert!(ClusterPermit::try_acquire(&state, 1).is_none());
        drop(first);
        assert_eq!(host.active_requests(), 0);
        assert!(ClusterPermit::try_acquire(&state, 1).is_some());
    }

    #[test]
    fn flags_are_masked_by_the_cluster() {
        let registry = HostRegistry::new(1);
        let host = registry.host(&endpoint("127.0.0.1:1"));
        assert!(host.set_flag(EJECTED));
        assert!(!host.set_flag(EJECTED));
        assert!(!host.eligible(EJECTED | UNHEALTHY));
        assert!(host.eligible(UNHEALTHY));
        assert!(host.eligible(0));
        assert!(host.clear_flag(EJECTED));
        assert!(host.eligible(EJECTED));
    }
}
