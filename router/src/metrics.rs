//! Metric names, their descriptions, and per-route handles.
//!
//! Handles for a (route, cluster) pair are registered the first time that pair serves a
//! request, then reused: the hot path only does atomic increments. A 100,000-key table that
//! serves ten keys registers ten sets of series, not a million.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram, Unit};

use crate::headers::TrafficClass;
use crate::tenant::Tenant;

/// Requests answered, by route, cluster, status code and traffic class, and by tenant for
/// requests of a declared tenant.
pub const REQUESTS_TOTAL: &str = "router_requests_total";
/// Time from receiving the request to sending the response headers.
pub const REQUEST_DURATION_SECONDS: &str = "router_request_duration_seconds";
/// Requests in flight.
pub const ACTIVE_REQUESTS: &str = "router_active_requests";
/// Connection attempts to an endpoint that failed (refused, reset, timed out).
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str = "router_upstream_connect_failures_total";
/// Requests sent to another endpoint after a connect failure.
pub const RETRIES_TOTAL: &str = "router_retries_total";
/// Requests sent to a route's fallback cluster.
pub const FALLBACKS_TOTAL: &str = "router_fallbacks_total";
/// Version of the rule set in use (assigned by the store).
pub const CONFIG_VERSION: &str = "router_config_version";
/// Local generation of the route table in use.
pub const CONFIG_GENERATION: &str = "router_config_generation";
/// Routes in the table in use.
pub const ROUTES: &str = "router_routes";
/// Config reload attempts by result (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "router_config_reloads_total";
/// Where the rule set in use came from: 1 for its `source` label (`file`, `snapshot`,
/// `control_plane`, `none`), 0 for the others.
pub const CONFIG_SOURCE: &str = "router_config_source";
/// 1 while a control-plane Watch stream is open, else 0.
pub const CONTROL_PLANE_CONNECTED: &str = "router_control_plane_connected";
/// Snapshots written to the snapshot dir, by result (`ok`, `error`).
pub const SNAPSHOT_WRITES_TOTAL: &str = "router_snapshot_writes_total";
/// Snapshots older than the routes in force, held back (see `--control-plane-stale-grace-ms`).
pub const STALE_SNAPSHOTS_TOTAL: &str = "router_control_plane_stale_snapshots_total";

/// 1 when an endpoint is not held unhealthy by its health check, else 0; by cluster and
/// endpoint.
pub const ENDPOINT_HEALTHY: &str = "router_endpoint_healthy";
/// 1 while outlier detection has an endpoint ejected, else 0; by cluster and endpoint.
pub const ENDPOINT_EJECTED: &str = "router_endpoint_ejected";
/// Ejections by outlier detection, by cluster, endpoint and reason (`consecutive_5xx`,
/// `consecutive_gateway_failures`).
pub const OUTLIER_EJECTIONS_TOTAL: &str = "router_outlier_ejections_total";
/// Requests refused by a cluster's circuit breaker, by cluster and limit (`max_requests`,
/// `max_pending`).
pub const CIRCUIT_BREAKER_REFUSED_TOTAL: &str = "router_circuit_breaker_refused_total";
/// Time a health-check probe took, by cluster.
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "router_health_check_duration_seconds";
/// Failed health-check probes, by cluster and endpoint.
pub const HEALTH_CHECK_FAILURES_TOTAL: &str = "router_health_check_failures_total";

/// Retries not made, by route and reason (`body_over_replay_cap`, `budget_exhausted`).
pub const RETRIES_ABANDONED_TOTAL: &str = "router_retries_abandoned_total";
/// Requests copied to a route's mirror, by route.
pub const MIRROR_REQUESTS_TOTAL: &str = "router_mirror_requests_total";
/// Mirror copies dropped, by route and reason (`max_in_flight`, `buffer_full`).
pub const MIRROR_DROPPED_TOTAL: &str = "router_mirror_dropped_total";
/// Mirror copies that failed (no connection, reset, timeout), by route.
pub const MIRROR_FAILED_TOTAL: &str = "router_mirror_failed_total";
/// Mirror answers compared with the primary's, by route and `match` (`true`, `false`).
pub const MIRROR_STATUS_MATCH_TOTAL: &str = "router_mirror_status_match_total";

/// Time from sending a request upstream to its response headers, by route and cluster.
pub const UPSTREAM_DURATION_SECONDS: &str = "router_upstream_duration_seconds";
/// The router's own time per request, from receiving it to sending it upstream, by route
/// and cluster.
pub const OVERHEAD_DURATION_SECONDS: &str = "router_overhead_duration_seconds";
/// Response body bytes sent to clients, by route and cluster.
pub const RESPONSE_BYTES_TOTAL: &str = "router_response_bytes_total";
/// Request body bytes read from clients, by route.
pub const REQUEST_BYTES_TOTAL: &str = "router_request_bytes_total";
/// Requests in flight per cluster.
pub const CLUSTER_ACTIVE_REQUESTS: &str = "router_cluster_active_requests";
/// gRPC answers by route, cluster and status code (from trailers-only answers and trailers).
pub const GRPC_RESPONSES_TOTAL: &str = "router_grpc_responses_total";
/// Histogram buckets for the router's overhead, in seconds (microseconds up).
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    1.0,
];

/// Requests of declared tenants, by tenant.
pub const TENANT_REQUESTS_TOTAL: &str = "router_tenant_requests_total";
/// Requests refused for their tenant, by tenant (`other` for an undeclared one, `none`
/// without one) and reason (`not_allowed`, `rate_limited`, `max_concurrent`).
pub const TENANT_REFUSED_TOTAL: &str = "router_tenant_refused_total";

/// Client connections closed at once because `--max-connections` were open.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "router_connections_refused_total";

/// Histogram buckets for request durations, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Label used for requests whose routing key matched no route.
pub const UNKNOWN_ROUTE: &str = "unknown";
/// Label used for the cluster of requests that reached none.
pub const NO_CLUSTER: &str = "none";

/// Requests in flight, striped so that workers do not write one shared cache line: each
/// thread counts on its own stripe and a scrape sums them. A request is taken off the
/// stripe it was counted on, wherever it ends.
static ACTIVE: [Stripe; STRIPES] = [const { Stripe(AtomicI64::new(0)) }; STRIPES];
/// Stripes of [`ACTIVE`]: threads beyond this many share them round robin.
const STRIPES: usize = 16;

/// One counter on a cache line of its own (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct Stripe(AtomicI64);

/// The stripe of the calling thread.
fn stripe() -> &'static AtomicI64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    let i = MINE.with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        mine.get()
    });
    &ACTIVE[i].0
}

/// Requests in flight in this process, over every worker.
pub fn active_requests() -> i64 {
    ACTIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

/// Status codes with a preregistered counter slot; others are looked up per request.
const STATUS_SLOTS: [u16; 16] = [
    200, 201, 204, 206, 304, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504, 499,
];

/// Describes every metric once, at startup.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route, cluster and status code"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from receiving a request to sending its response headers"
    );
    metrics::describe_gauge!(ACTIVE_REQUESTS, "Requests in flight");
    metrics::describe_counter!(
        UPSTREAM_CONNECT_FAILURES_TOTAL,
        "Failed connection attempts to endpoints"
    );
    metrics::describe_counter!(
        RETRIES_TOTAL,
        "Requests retried on another endpoint after a connect failure"
    );
    metrics::describe_counter!(
        FALLBACKS_TOTAL,
        "Requests sent to a route's fallback cluster"
    );
    metrics::describe_gauge!(CONFIG_VERSION, "Version of the rule set in use");
    metrics::describe_gauge!(
        CONFIG_GENERATION,
        "Local generation of the route table in use"
    );
    metrics::describe_gauge!(ROUTES, "Routes in the table in use");
    metrics::describe_counter!(CONFIG_RELOADS_TOTAL, "Config reload attempts by result");
    metrics::describe_gauge!(
        CONFIG_SOURCE,
        "Where the rule set in use came from (1 for its source label)"
    );
    metrics::describe_gauge!(
        CONTROL_PLANE_CONNECTED,
        "1 while a control-plane Watch stream is open"
    );
    metrics::describe_counter!(
        SNAPSHOT_WRITES_TOTAL,
        "Snapshots written to the snapshot dir, by result"
    );
    metrics::describe_counter!(
        STALE_SNAPSHOTS_TOTAL,
        "Snapshots older than the routes in force, held back"
    );
    metrics::describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when the endpoint is not held unhealthy by its health check"
    );
    metrics::describe_gauge!(
        ENDPOINT_EJECTED,
        "1 while outlier detection has the endpoint ejected"
    );
    metrics::describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        "Endpoints ejected by outlier detection, by reason"
    );
    metrics::describe_counter!(
        CIRCUIT_BREAKER_REFUSED_TOTAL,
        "Requests refused by a cluster's circuit breaker, by limit"
    );
    metrics::describe_histogram!(
        HEALTH_CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Time a health-check probe took"
    );
    metrics::describe_counter!(HEALTH_CHECK_FAILURES_TOTAL, "Failed health-check probes");
    metrics::describe_counter!(RETRIES_ABANDONED_TOTAL, "Retries not made, by reason");
    metrics::describe_counter!(TENANT_REQUESTS_TOTAL, "Requests of declared tenants");
    metrics::describe_histogram!(
        UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Time from sending a request upstream to its response headers"
    );
    metrics::describe_histogram!(
        OVERHEAD_DURATION_SECONDS,
        Unit::Seconds,
        "The router's own time per request: received until sent upstream"
    );
    metrics::describe_counter!(
        RESPONSE_BYTES_TOTAL,
        Unit::Bytes,
        "Response body bytes sent"
    );
    metrics::describe_counter!(REQUEST_BYTES_TOTAL, Unit::Bytes, "Request body bytes read");
    metrics::describe_gauge!(CLUSTER_ACTIVE_REQUESTS, "Requests in flight per cluster");
    metrics::describe_counter!(GRPC_RESPONSES_TOTAL, "gRPC answers by status code");
    metrics::describe_counter!(
        TENANT_REFUSED_TOTAL,
        "Requests refused for their tenant, by reason"
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Client connections closed at once because --max-connections were open"
    );
    metrics::describe_counter!(MIRROR_REQUESTS_TOTAL, "Requests copied to a route's mirror");
    metrics::describe_counter!(MIRROR_DROPPED_TOTAL, "Mirror copies dropped, by reason");
    metrics::describe_counter!(MIRROR_FAILED_TOTAL, "Mirror copies that failed");
    metrics::describe_counter!(
        MIRROR_STATUS_MATCH_TOTAL,
        "Mirror answers whose status matched the primary's, or not"
    );
}

/// Counts a connection closed at once for `--max-connections`.
pub fn connection_refused() {
    metrics::counter!(CONNECTIONS_REFUSED_TOTAL).increment(1);
}

/// Records a retry not made on `route` for `reason`.
pub fn record_retry_abandoned(route: &str, reason: &'static str) {
    metrics::counter!(RETRIES_ABANDONED_TOTAL, "route" => route.to_string(), "reason" => reason)
        .increment(1);
}

/// The counter of requests `cluster`'s circuit breaker refused at `limit`.
pub fn circuit_breaker_refused(cluster: &str, limit: &'static str) -> Counter {
    metrics::counter!(CIRCUIT_BREAKER_REFUSED_TOTAL, "cluster" => cluster.to_string(), "limit" => limit)
}

/// Records an ejection of `endpoint` of `cluster`.
pub fn record_ejection(cluster: &str, endpoint: &str, reason: &'static str) {
    metrics::counter!(
        OUTLIER_EJECTIONS_TOTAL,
        "cluster" => cluster.to_string(),
        "endpoint" => endpoint.to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// Records one health-check probe of `endpoint` for `cluster`.
pub fn record_health_check(cluster: &str, endpoint: &str, took: Duration, ok: bool) {
    metrics::histogram!(HEALTH_CHECK_DURATION_SECONDS, "cluster" => cluster.to_string())
        .record(took.as_secs_f64());
    if !ok {
        metrics::counter!(
            HEALTH_CHECK_FAILURES_TOTAL,
            "cluster" => cluster.to_string(),
            "endpoint" => endpoint.to_string()
        )
        .increment(1);
    }
}

/// Publishes an endpoint's health and ejection gauges (called before a scrape).
pub fn record_endpoint(cluster: &str, endpoint: &str, healthy: bool, ejected: bool) {
    let labels = [
        ("cluster", cluster.to_string()),
        ("endpoint", endpoint.to_string()),
    ];
    metrics::gauge!(ENDPOINT_HEALTHY, &labels).set(if healthy { 1.0 } else { 0.0 });
    metrics::gauge!(ENDPOINT_EJECTED, &labels).set(if ejected { 1.0 } else { 0.0 });
}

/// Publishes gauges that are kept as plain atomics on the hot path; called before a scrape.
pub fn refresh_gauges() {
    metrics::gauge!(ACTIVE_REQUESTS).set(active_requests() as f64);
}

/// Counts one request in flight until dropped (on the stripe of the thread it started on).
#[derive(Debug)]
pub struct ActiveRequest(&'static AtomicI64);

impl ActiveRequest {
    /// Starts counting.
    pub fn start() -> Self {
        let stripe = stripe();
        stripe.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(stripe)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The metric handles of one (route, cluster) pair, registered on first use.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    cluster: Arc<str>,
    /// Tenants declared by the table (their [`crate::tenant::Tenant::index`] is below this).
    tenants: usize,
    handles: OnceLock<Arc<PairHandles>>,
}

/// Request counters of one traffic class and status slot each.
type StatusSlots = [[OnceLock<Counter>; STATUS_SLOTS.len()]; TrafficClass::COUNT];

/// The registered handles of one (route, cluster) pair; a response body holds them (one
/// `Arc`) to count its bytes and its gRPC status when it ends.
#[derive(Debug)]
pub struct PairHandles {
    duration: Histogram,
    upstream: Histogram,
    overhead: Histogram,
    response_bytes: Counter,
    /// By gRPC status code, 0 to 16.
    grpc: [OnceLock<Counter>; 17],
    route: Arc<str>,
    cluster: Arc<str>,
    /// Per traffic class ([`TrafficClass::index`]), per status slot; requests without a
    /// declared tenant.
    by_status: StatusSlots,
    /// The same per declared tenant, by index; allocated when the first tenant's request
    /// is counted.
    by_tenant: OnceLock<Box<[StatusSlots]>>,
    tenants: usize,
    connect_failures: Counter,
    retries: Counter,
    fallbacks: Counter,
}

impl RouteMetrics {
    /// Handles for `route` served by `cluster`, in a table declaring `tenants` tenants
    /// (nothing is registered yet).
    pub fn new(route: Arc<str>, cluster: Arc<str>, tenants: usize) -> Self {
        RouteMetrics {
            route,
            cluster,
            tenants,
            handles: OnceLock::new(),
        }
    }

    /// The pair's handles (registered on first use), to keep for the life of a response.
    pub fn handles(&self) -> &Arc<PairHandles> {
        self.handles.get_or_init(|| {
            let labels = [
                ("route", self.route.to_string()),
                ("cluster", self.cluster.to_string()),
            ];
            Arc::new(PairHandles {
                duration: metrics::histogram!(REQUEST_DURATION_SECONDS, &labels),
                upstream: metrics::histogram!(UPSTREAM_DURATION_SECONDS, &labels),
                overhead: metrics::histogram!(OVERHEAD_DURATION_SECONDS, &labels),
                response_bytes: metrics::counter!(RESPONSE_BYTES_TOTAL, &labels),
                grpc: Default::default(),
                route: Arc::clone(&self.route),
                cluster: Arc::clone(&self.cluster),
                by_status: Default::default(),
                by_tenant: OnceLock::new(),
                tenants: self.tenants,
                connect_failures: metrics::counter!(UPSTREAM_CONNECT_FAILURES_TOTAL, "cluster" => self.cluster.to_string()),
                retries: metrics::counter!(RETRIES_TOTAL, "cluster" => self.cluster.to_string()),
                fallbacks: metrics::counter!(FALLBACKS_TOTAL, &labels),
            })
        })
    }

    /// Records one answered request of traffic class `class`, from `tenant` when it is a
    /// declared one.
    pub fn record(
        &self,
        status: StatusCode,
        elapsed: Duration,
        class: TrafficClass,
        tenant: Option<&Tenant>,
    ) {
        let h = self.handles();
        h.duration.record(elapsed.as_secs_f64());
        let slots = match tenant {
            None => &h.by_status,
            Some(t) => match h.tenant_slots(t.index) {
                Some(slots) => slots,
                None => return status_counter(self, status, class, tenant).increment(1),
            },
        };
        match STATUS_SLOTS.iter().position(|&s| s == status.as_u16()) {
            Some(i) => slots[class.index()][i]
                .get_or_init(|| status_counter(self, status, class, tenant))
                .increment(1),
            None => status_counter(self, status, class, tenant).increment(1),
        }
    }

    /// Records a failed connection attempt to an endpoint of this pair's cluster.
    pub fn connect_failed(&self) {
        self.handles().connect_failures.increment(1);
    }

    /// Records a retry on another endpoint.
    pub fn retried(&self) {
        self.handles().retries.increment(1);
    }

    /// Records a request sent to this (fallback) pair.
    pub fn fell_back(&self) {
        self.handles().fallbacks.increment(1);
    }
}

fn status_counter(
    pair: &RouteMetrics,
    status: StatusCode,
    class: TrafficClass,
    tenant: Option<&Tenant>,
) -> Counter {
    let mut labels = vec![
        ("route", pair.route.to_string()),
        ("cluster", pair.cluster.to_string()),
        ("status", status.as_str().to_string()),
        ("traffic_class", class.as_str().to_string()),
    ];
    if let Some(tenant) = tenant {
        labels.push(("tenant", tenant.name.to_string()));
    }
    metrics::counter!(REQUESTS_TOTAL, &labels)
}

/// The counter of requests of declared tenant `tenant`.
pub fn tenant_requests(tenant: &str) -> Counter {
    metrics::counter!(TENANT_REQUESTS_TOTAL, "tenant" => tenant.to_string())
}

/// The counter of `tenant`'s requests refused for `reason`.
pub fn tenant_refused(tenant: &str, reason: &'static str) -> Counter {
    metrics::counter!(TENANT_REFUSED_TOTAL, "tenant" => tenant.to_string(), "reason" => reason)
}

impl PairHandles {
    /// The request counters of the tenant with index `index` (`None` past the table's
    /// tenants, which cannot happen for a tenant of the same table).
    fn tenant_slots(&self, index: usize) -> Option<&StatusSlots> {
        self.by_tenant
            .get_or_init(|| (0..self.tenants).map(|_| StatusSlots::default()).collect())
            .get(index)
    }

    /// Records the time from sending a request upstream to its response headers.
    #[inline]
    pub fn upstream(&self, took: Duration) {
        self.upstream.record(took.as_secs_f64());
    }

    /// Records the router's own time for a request: received until sent upstream.
    #[inline]
    pub fn overhead(&self, took: Duration) {
        self.overhead.record(took.as_secs_f64());
    }

    /// Records the response body bytes of one request.
    #[inline]
    pub fn response_bytes(&self, bytes: u64) {
        self.response_bytes.increment(bytes);
    }

    /// Records one gRPC answer with status `code`.
    pub fn grpc(&self, code: u8) {
        let Some(slot) = self.grpc.get(usize::from(code)) else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!(
                GRPC_RESPONSES_TOTAL,
                "route" => self.route.to_string(),
                "cluster" => self.cluster.to_string(),
                "grpc_status" => code.to_string()
            )
        })
        .increment(1);
    }
}

/// The counter of request body bytes of `route` (registered on first use).
pub fn request_bytes(route: &str) -> Counter {
    metrics::counter!(REQUEST_BYTES_TOTAL, "route" => route.to_string())
}

/// Publishes the requests in flight of `cluster` (called before a scrape).
pub fn record_cluster_active(cluster: &str, active: usize) {
    metrics::gauge!(CLUSTER_ACTIVE_REQUESTS, "cluster" => cluster.to_string()).set(active as f64);
}

/// Records a request that matched no route (or carried no key).
pub fn record_unrouted(status: StatusCode, elapsed: Duration, class: TrafficClass) {
    static UNROUTED: OnceLock<RouteMetrics> = OnceLock::new();
    UNROUTED
        .get_or_init(|| RouteMetrics::new(Arc::from(UNKNOWN_ROUTE), Arc::from(NO_CLUSTER), 0))
        .record(status, elapsed, class, None);
}

/// Records the outcome of a config reload and, on success, the table now in use.
pub fn record_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// Publishes the version, generation and size of the table now in use.
pub fn record_table(version: u64, generation: u64, routes: usize) {
    metrics::gauge!(CONFIG_VERSION).set(version as f64);
    metrics::gauge!(CONFIG_GENERATION).set(generation as f64);
    metrics::gauge!(ROUTES).set(routes as f64);
}

/// Publishes where the rule set in use came from.
pub fn record_source(source: crate::source::ConfigSource) {
    for s in crate::source::ConfigSource::ALL {
        metrics::gauge!(CONFIG_SOURCE, "source" => s.as_str()).set(if s == source {
            1.0
        } else {
            0.0
        });
    }
}

/// Publishes whether a control-plane Watch stream is open.
pub fn record_control_plane_connected(connected: bool) {
    metrics::gauge!(CONTROL_PLANE_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// Records a snapshot older than the routes in force.
pub fn record_stale_snapshot() {
    metrics::counter!(STALE_SNAPSHOTS_TOTAL).increment(1);
}

/// Records the outcome of writing a snapshot to the snapshot dir.
pub fn record_snapshot_write(ok: bool) {
    metrics::counter!(SNAPSHOT_WRITES_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

#[cfg(test)]
mod active_tests {
    use super::{ActiveRequest, active_requests};

    #[test]
    fn requests_in_flight_are_summed_over_every_thread_and_released_anywhere() {
        // Other tests of this binary may hold requests too: compare with a baseline taken
        // while this test's threads hold theirs.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let tx = hold_tx.clone();
                std::thread::spawn(move || {
                    let held: Vec<ActiveRequest> = (0..5).map(|_| ActiveRequest::start()).collect();
                    tx.send(held).unwrap();
                })
            })
            .collect();
        drop(hold_tx);
        for t in threads {
            t.join().unwrap();
        }
        let held: Vec<Vec<ActiveRequest>> = hold_rx.iter().collect();
        let during = active_requests();
        let count = held.iter().map(Vec::len).sum::<usize>() as i64;
        assert_eq!(count, 100);
        // Dropped here, on another thread than each was counted on.
        drop(held);
        assert_eq!(during - active_requests(), count);
    }
}
