//! The serde-facing shape of a rule set, exactly as it is written in JSON.
//!
//! Every struct denies unknown fields, so a typo is an error rather than a silently ignored
//! setting. Every field documents its unit and default. These types say nothing about whether
//! references resolve: [`crate::validate`] checks that, and consumers only ever act on a rule
//! set that passed it.
//!
//! Names (cluster names, routing keys, model ids, experiment ids, cell names, objective names)
//! are 1 to 128 characters of `A-Z a-z 0-9 . _ : / -`, starting with a letter or digit, so a
//! routing key is always a valid HTTP header value. Every JSON object in a rule set, including
//! splits, cells and attribute maps, is read with duplicate keys rejected.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::unique_map::UniqueMap;

/// A whole rule set: clusters and routes for the routers, models, experiments and objectives
/// for Lightbulb, and the version the store assigned to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Version assigned by the store on every accepted change (monotonic). A file written by
    /// hand may leave it out (default `0`).
    #[serde(default)]
    pub version: u64,
    /// Model serving clusters by name.
    #[serde(default)]
    pub clusters: UniqueMap<ClusterSpec>,
    /// Routes by routing key (the value of the `x-routing-key` header).
    #[serde(default)]
    pub routes: UniqueMap<RouteSpec>,
    /// Models by model id.
    #[serde(default)]
    pub models: UniqueMap<ModelSpec>,
    /// A/B experiments by id.
    #[serde(default)]
    pub experiments: UniqueMap<ExperimentSpec>,
    /// Objectives (business use cases) by name.
    #[serde(default)]
    pub objectives: UniqueMap<ObjectiveSpec>,
    /// Tenants (calling teams) by name, with their limits in every router. Names used by
    /// routes' `tenants` must be declared here; objective rules' `tenants` too, once this
    /// block is not empty. Default none.
    #[serde(default, skip_serializing_if = "no_tenants")]
    pub tenants: UniqueMap<TenantSpec>,
}

/// One tenant's limits, exact per router process (across all its workers). Every limit is
/// optional; a tenant without any is only a name routes can allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Requests in flight at once (until the response body ends), 1 to 10000000; past it,
    /// 503 `overloaded` with `retry-after`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_concurrent: Option<u32>,
    /// Sustained requests per second, 0.001 to 10000000 (fractions allowed); past it and
    /// the `burst`, 429 `rate_limited` with `retry-after`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the sustained rate (the token bucket's size), 1 to
    /// 10000000, with `requests_per_second` only. Default: one second's worth, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub burst: Option<u32>,
}

/// A set of interchangeable serving hosts for one model (a VIP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The hosts, as `"host:port"` strings or `{ "address": "host:port", "weight": N }`.
    /// At least one.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<EndpointSpec>,
    /// Upstream protocol. Default `http1`.
    #[serde(default)]
    pub protocol: Protocol,
    /// How an endpoint is picked for each request. Default `round_robin`.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Request header whose value is hashed by `ring_hash` and `maglev` (required by those
    /// policies, not allowed with the others). When a request lacks it, the pick is random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Time allowed to open a TCP connection to an endpoint, in milliseconds, 1 to 60000.
    /// Default 1000.
    #[serde(default = "default_connect_timeout_ms")]
    #[schemars(range(min = 1, max = 60_000))]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending a request until the response headers arrive, in
    /// milliseconds, 1 to 3600000; a route may override it. Default 30000.
    #[serde(default = "default_request_timeout_ms")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub request_timeout_ms: u64,
    /// Active health checks of every endpoint. Absent: no probes, every endpoint is
    /// eligible as far as health goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Passive outlier detection from real traffic, with ejection. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Limits on requests in flight and waiting for a connection. Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// TLS to the endpoints (and mTLS with a client certificate), for requests and health
    /// checks alike. Absent: plaintext (HTTP/1.1, or h2c with prior knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS from the router to a cluster's endpoints.
///
/// The files are read by each router when it applies the rule set (at start, on every
/// reload and push), never by Lightbulb; a file that cannot be loaded there gets the whole
/// rule set refused, naming the cluster and the file. ALPN follows `protocol`: `http1`
/// offers `http/1.1`, `http2` offers `h2`, and `auto` offers both and speaks the one the
/// endpoint picks. An endpoint shared by several clusters must have the same `tls` block
/// in each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM file of the CA certificates trusted to have signed the endpoints' certificates;
    /// nothing else is trusted (not the system roots). Required.
    #[schemars(length(min = 1))]
    pub ca_file: String,
    /// The name the endpoints' certificates must be valid for, also sent as SNI: a DNS
    /// name or an IP address (IPv6 without brackets). Default: each endpoint's own host
    /// (its IP address for an IP-address endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM certificate chain (leaf first) presented to endpoints that ask for a client
    /// certificate (mTLS), with `key_file`: both or neither. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`, with `cert_file`: both or
    /// neither. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// An active health check, run against every endpoint of a cluster by one prober per
/// endpoint. Exactly one of `http_path` and `grpc_service`.
///
/// An endpoint starts eligible, in state `unknown`; it becomes `unhealthy` after
/// `unhealthy_threshold` failed probes in a row and `healthy` again after
/// `healthy_threshold` good ones in a row. An unhealthy endpoint gets no new requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path of an HTTP `GET` probe (starting with `/`), sent over the cluster's protocol
    /// (h2c for `http2`, HTTP/1.1 otherwise; over TLS when the cluster has `tls`). Healthy
    /// on a 2xx answer, or on one of `expected_statuses` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// Service name for a `grpc.health.v1.Health/Check` probe over h2c, or h2 over TLS
    /// when the cluster has `tls` (`""`: the whole server). Healthy when the answer is
    /// `SERVING`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Statuses (100 to 599) that count as healthy for `http_path`. Default empty: any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
    /// Time between probes of one endpoint, in milliseconds, 10 to 3600000; each wait is
    /// lengthened by a random 0 to 10 % so probers do not move in lockstep. Default 1000.
    #[serde(default = "default_health_interval_ms")]
    #[schemars(range(min = 10, max = 3_600_000))]
    pub interval_ms: u64,
    /// Time allowed for one probe (connect included), in milliseconds, 1 to less than
    /// `interval_ms`. Default 500, or half the interval when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Failed probes in a row that make an endpoint unhealthy, 1 to 100. Default 2.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: u32,
    /// Good probes in a row that make an unhealthy endpoint healthy again, 1 to 100.
    /// Default 1.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: u32,
}

/// Passive outlier detection: endpoints that fail real requests in a row are ejected (get
/// no requests) for a while.
///
/// An ejected endpoint comes back after `base_ejection_ms` × the number of times it has
/// been ejected, at most `max_ejection_ms`. Never more than `max_ejection_percent` of the
/// cluster's endpoints are ejected at once, and never the last one that is not: traffic
/// alone never empties a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// 5xx answers (and gRPC `UNAVAILABLE`/`INTERNAL` trailers-only answers) in a row that
    /// eject an endpoint, 1 to 10000. Default 5.
    #[serde(default = "default_consecutive_5xx")]
    #[schemars(range(min = 1, max = 10_000))]
    pub consecutive_5xx: u32,
    /// Connect failures, resets and timeouts in a row that eject an endpoint, 1 to 10000.
    /// Default 3.
    #[serde(default = "default_consecutive_gateway_failures")]
    #[schemars(range(min = 1, max = 10_000))]
    pub consecutive_gateway_failures: u32,
    /// Ejection time of a first ejection, in milliseconds, 1 to 3600000. Default 30000.
    #[serde(default = "default_base_ejection_ms")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub base_ejection_ms: u64,
    /// Longest ejection, in milliseconds, at least `base_ejection_ms`, at most 86400000.
    /// Default 300000, or `base_ejection_ms` when that is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub max_ejection_ms: Option<u64>,
    /// Largest share of the cluster's endpoints ejected at once, in percent, 0 to 100.
    /// Default 50.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: u32,
}

/// Per-cluster limits; a request past either is answered 503 `overloaded` with
/// `retry-after` (gRPC `UNAVAILABLE`), or goes to the route's fallback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Requests in flight to the cluster at once (from the pick until the response body
    /// ends), 1 to 1000000. Default 1024.
    #[serde(default = "default_max_requests")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_requests: u32,
    /// Requests waiting for a new upstream connection at once, 1 to 1000000. Default 1024.
    #[serde(default = "default_max_pending")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_pending: u32,
}

/// One serving host of a cluster.
// `Deserialize` is written by hand (below) rather than derived with `untagged`, so that a
// mistake inside the object form (an unknown field, a bad weight) is reported with its field
// and path instead of as "data did not match any variant". `untagged` here still shapes
// `Serialize` and the schema.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `"host:port"` with weight 1.
    Address(String),
    /// An address with an explicit weight.
    Weighted(WeightedEndpointSpec),
}

/// An endpoint with a weight, for `weighted_round_robin`, `ring_hash` and `maglev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpointSpec {
    /// `"host:port"`; the host is an IP address or a DNS name.
    pub address: String,
    /// Relative weight, 1 to 1000. Default 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1_000))]
    pub weight: u32,
}

/// The protocol the router speaks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2: over cleartext with prior knowledge (h2c), or over TLS (ALPN `h2`) with
    /// `tls`; required for gRPC upstreams.
    Http2,
    /// The same version the client used towards the router; with `tls`, the router offers
    /// both by ALPN and speaks the version the endpoint picks.
    Auto,
}

/// Endpoint selection within a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Each endpoint in turn, in proportion to its weight (smooth interleaving).
    WeightedRoundRobin,
    /// Uniformly at random.
    Random,
    /// The less loaded of two endpoints drawn at random (power of two choices).
    LeastRequest,
    /// Consistent hashing of `hash_header` on a ring of virtual nodes.
    RingHash,
    /// Maglev consistent hashing of `hash_header`.
    Maglev,
}

/// Where requests carrying one routing key go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The primary cluster.
    pub cluster: String,
    /// Clusters tried in turn when the one before has no eligible endpoint, is overloaded,
    /// or every connect attempt to it failed: one name or an ordered list. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    /// Weighted split across clusters (weights 1 to 100, summing to 100). When present, each
    /// request goes to one of these clusters, and `cluster` must be one of them.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::unique_map::unique_btree_opt"
    )]
    pub split: Option<BTreeMap<String, u32>>,
    /// Overrides the cluster's `request_timeout_ms` for this route, in milliseconds, 1 to
    /// 3600000. Default: the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub timeout_ms: Option<u64>,
    /// Request header whose value makes a weighted `split` sticky: the value is hashed with
    /// the allocation function Lightbulb uses (salt = the routing key), so one subject
    /// always lands on the same cluster; also makes `mirror` sampling deterministic.
    /// Requires `split` or `mirror`. Without the header on a request, the draw is random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// Retries of failed attempts, with the request body replayed from a bounded buffer.
    /// Absent: no retries (a connect failure still moves once to another endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// A sampled shadow copy of the requests to another cluster. Absent: no mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Tenants allowed on this route (declared in the top-level `tenants`); requests of
    /// other tenants, or without one, are refused with 403 `tenant_not_allowed`. Empty:
    /// every request, with or without a tenant. Default empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// The cluster that takes this route's `synthetic` and `replay` traffic, which then
    /// never reaches the live clusters. Default: none (every class goes to the live ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_cluster: Option<String>,
    /// The largest request body this route takes, in bytes, 1 to 1099511627776 (1 TiB).
    /// The body is counted as it streams, never buffered for it: a `Content-Length` past
    /// the limit is refused before anything is sent upstream, and a body that grows past it
    /// (chunked, or HTTP/2 without a length) is cut off there. Either way the answer is 413
    /// `request_body_too_large` (gRPC RESOURCE_EXHAUSTED) unless the model server already
    /// answered. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_099_511_627_776u64))]
    pub max_request_body_bytes: Option<u64>,
}

/// A route's retry policy.
///
/// A retry goes to another endpoint of the cluster when there is one, after a jittered
/// backoff, and never once response headers have gone to the client. Retries in flight
/// stay under `budget_percent` of the cluster's requests in flight (at least 3 are always
/// allowed). The request body is kept, as the same reference-counted chunks, up to
/// `replay_buffer_bytes`; past it the buffer is dropped and a later failure is answered,
/// not retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries in all, the first included (3 = the first and two retries), 1 to 10. Default 2.
    #[serde(default = "default_retry_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// What is retried: `connect_failure`, `reset` (the upstream broke the exchange before
    /// response headers), `timeout` (no response headers within `per_try_timeout_ms`), a
    /// status (`"503"`) or class (`"5xx"`), and gRPC codes by name (`"unavailable"`,
    /// `"resource_exhausted"`, ...) read from a trailers-only answer. Default
    /// `["connect_failure", "reset"]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Time allowed for each try until response headers, in milliseconds, 1 to 3600000.
    /// Default: none (only the route timeout applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub per_try_timeout_ms: Option<u64>,
    /// Base wait before a retry, in milliseconds, 0 to 60000; the n-th retry waits a random
    /// time between half and one and a half times `backoff_ms × 2^(n-1)`. Default 25.
    #[serde(default = "default_backoff_ms")]
    #[schemars(range(max = 60_000))]
    pub backoff_ms: u64,
    /// Retries in flight as a share of the cluster's requests in flight, in percent, 0 to
    /// 100 (at least 3 retries are always allowed). Default 20.
    #[serde(default = "default_budget_percent")]
    #[schemars(range(max = 100))]
    pub budget_percent: u32,
    /// Request body bytes kept for replay, 0 to 1073741824 (1 GiB). Default 4194304 (4 MiB).
    #[serde(default = "default_replay_buffer_bytes")]
    #[schemars(range(max = 1_073_741_824))]
    pub replay_buffer_bytes: u64,
}

/// A route's mirror: a sampled copy of its requests goes to `cluster` too, with
/// `x-traffic-class: shadow`, sharing the primary's body chunks. The mirror's answer is
/// discarded; its slowness, failure or backlog never delays or fails the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The shadow cluster (not the route's own).
    pub cluster: String,
    /// Share of requests mirrored, in percent, 0 to 100 (fractions allowed); deterministic
    /// on `sticky_header` when the route has one. Default 100.
    #[serde(default = "default_sample_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub sample_percent: f64,
    /// Mirrored requests of this route in flight at once, 1 to 100000; past it, mirror
    /// copies are dropped (and counted). Default 64.
    #[serde(default = "default_mirror_max_in_flight")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_in_flight: u32,
    /// Body bytes a mirrored request may hold queued for a mirror that reads slower than
    /// the primary, 1 to 67108864; past it the mirror copy is abandoned (and counted).
    /// Default 1048576 (1 MiB).
    #[serde(default = "default_mirror_max_buffer_bytes")]
    #[schemars(range(min = 1, max = 67_108_864))]
    pub max_buffer_bytes: u64,
}

/// A route's fallback: one cluster name, or an ordered chain of them.
// `Deserialize` is written by hand (below) for the same reason as `EndpointSpec`'s.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FallbackSpec {
    /// One cluster.
    One(String),
    /// Clusters tried in this order.
    Chain(Vec<String>),
}

/// A model that can serve requests, reached through a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The route (routing key) requests for this model are sent with.
    pub routing_key: String,
    /// Model version, echoed in the ObjectiveConfig. Default empty.
    #[serde(default)]
    pub version: String,
    /// The input type the model expects (e.g. `"triton_v2"`, `"openai_chat"`). Default empty.
    #[serde(default)]
    pub input_type: String,
    /// Parameters the client passes to the model, echoed in the ObjectiveConfig. Default empty.
    #[serde(default, deserialize_with = "crate::unique_map::unique_btree")]
    pub parameters: BTreeMap<String, String>,
    /// Free-form metadata echoed in the ObjectiveConfig. Default empty.
    #[serde(default, deserialize_with = "crate::unique_map::unique_btree")]
    pub metadata: BTreeMap<String, String>,
}

/// An A/B experiment: subjects are hashed with the salt into cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Salt mixed into the allocation hash; not empty when given. Default: the experiment id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Cells and their allocation percentages (each 1 to 100, summing to 100). At least one.
    #[serde(deserialize_with = "crate::unique_map::unique_btree")]
    pub cells: BTreeMap<String, u32>,
}

/// A business use case and the ordered rules that pick its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSpec {
    /// Rules evaluated in order; the first that matches picks the model. Default none.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The model used when no rule matches.
    pub default: String,
    /// Models that receive a sampled shadow copy of this objective's traffic. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowSpec>,
    /// How long a client may cache a resolution, in milliseconds, 0 to 86400000 (0: do not
    /// cache). Default 60000.
    #[serde(default = "default_cache_ttl_ms")]
    #[schemars(range(max = 86_400_000))]
    pub cache_ttl_ms: u64,
}

/// One rule of an objective: a condition and a selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The condition; an empty one matches every request.
    #[serde(default)]
    pub when: MatchSpec,
    /// The model selected. Exactly one of `model` and `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A weighted split of models (weights 1 to 100, summing to 100), sticky on the subject id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::unique_map::unique_btree_opt"
    )]
    pub split: Option<BTreeMap<String, u32>>,
}

/// The condition of a rule; every present part must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The request's tenant is one of these. Empty: any tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// The request's traffic class is this one. Absent: any class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_class: Option<TrafficClass>,
    /// For each attribute, the request's value is one of the listed values (each list not
    /// empty). Empty: any attributes.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::unique_map::unique_btree"
    )]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The subject is allocated to `cell` of this experiment (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The experiment cell required, with `experiment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
}

/// Live traffic from real users, or synthetic traffic (load tests, probes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrafficClass {
    /// Real user traffic.
    #[default]
    Live,
    /// Load tests, probes and other synthetic traffic.
    Synthetic,
}

/// A shadow target of an objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The shadow model.
    pub model: String,
    /// Share of requests mirrored to it, in percent (0 to 100, fractions allowed).
    #[schemars(range(min = 0, max = 100))]
    pub sample_percent: f64,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_weight() -> u32 {
    1
}

fn no_tenants(tenants: &UniqueMap<TenantSpec>) -> bool {
    tenants.0.is_empty()
}

fn default_retry_attempts() -> u32 {
    2
}

fn default_retry_on() -> Vec<String> {
    vec!["connect_failure".to_owned(), "reset".to_owned()]
}

fn default_backoff_ms() -> u64 {
    25
}

fn default_budget_percent() -> u32 {
    20
}

fn default_replay_buffer_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_sample_percent() -> f64 {
    100.0
}

fn default_mirror_max_in_flight() -> u32 {
    64
}

fn default_mirror_max_buffer_bytes() -> u64 {
    1024 * 1024
}

fn default_health_interval_ms() -> u64 {
    1_000
}

fn default_unhealthy_threshold() -> u32 {
    2
}

fn default_healthy_threshold() -> u32 {
    1
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_consecutive_gateway_failures() -> u32 {
    3
}

fn default_base_ejection_ms() -> u64 {
    30_000
}

fn default_max_ejection_percent() -> u32 {
    50
}

fn default_max_requests() -> u32 {
    1_024
}

fn default_max_pending() -> u32 {
    1_024
}

/// Default probe timeout, in milliseconds (capped at half the interval).
const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 500;
/// Default longest ejection, in milliseconds.
const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;

fn default_cache_ttl_ms() -> u64 {
    60_000
}

impl Protocol {
    /// The name used in JSON (`"http1"`, `"http2"`, `"auto"`), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Auto => "auto",
        }
    }
}

impl LbPolicy {
    /// The name used in JSON (`"round_robin"`, `"maglev"`, ...), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::WeightedRoundRobin => "weighted_round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }

    /// Whether the policy hashes a request header, and so needs `hash_header`.
    pub fn uses_hash_header(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

impl TrafficClass {
    /// The name used in JSON (`"live"`, `"synthetic"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Live => "live",
            TrafficClass::Synthetic => "synthetic",
        }
    }
}

impl MatchSpec {
    /// Whether the condition is empty, so that it matches every request.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.traffic_class.is_none()
            && self.attributes.is_empty()
            && self.experiment.is_none()
            && self.cell.is_none()
    }
}

impl EndpointSpec {
    /// The `host:port` of this endpoint.
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) => a,
            EndpointSpec::Weighted(w) => &w.address,
        }
    }

    /// The relative weight of this endpoint (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 1,
            EndpointSpec::Weighted(w) => w.weight,
        }
    }
}

impl TenantSpec {
    /// The token bucket's size in force: `burst`, or one second's worth rounded up.
    pub fn burst(&self) -> Option<u32> {
        let rate = self.requests_per_second?;
        Some(self.burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)))
    }
}

impl HealthCheckSpec {
    /// The probe timeout in force: `timeout_ms`, or 500 ms capped at half the interval.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
            .unwrap_or_else(|| DEFAULT_HEALTH_TIMEOUT_MS.min(self.interval_ms / 2).max(1))
    }
}

impl OutlierDetectionSpec {
    /// The longest ejection in force: `max_ejection_ms`, or 300000 ms (at least
    /// `base_ejection_ms`).
    pub fn max_ejection_ms(&self) -> u64 {
        self.max_ejection_ms
            .unwrap_or_else(|| DEFAULT_MAX_EJECTION_MS.max(self.base_ejection_ms))
    }
}

/// One parsed entry of a retry policy's `on` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// No connection could be opened.
    ConnectFailure,
    /// The upstream broke the exchange before response headers.
    Reset,
    /// No response headers within the per-try timeout.
    Timeout,
    /// This exact status.
    Status(u16),
    /// Any status of this class (`5` for `"5xx"`).
    StatusClass(u8),
    /// This gRPC status code in a trailers-only answer.
    Grpc(u8),
}

/// gRPC status codes by their lowercase names, as `on` takes them.
const GRPC_CODES: [(&str, u8); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid_argument", 3),
    ("deadline_exceeded", 4),
    ("not_found", 5),
    ("already_exists", 6),
    ("permission_denied", 7),
    ("resource_exhausted", 8),
    ("failed_precondition", 9),
    ("aborted", 10),
    ("out_of_range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data_loss", 15),
    ("unauthenticated", 16),
];

impl RetryCondition {
    /// Parses one entry of `on`.
    ///
    /// # Errors
    ///
    /// A message naming what is accepted, when `text` is none of them.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "connect_failure" => return Ok(RetryCondition::ConnectFailure),
            "reset" => return Ok(RetryCondition::Reset),
            "timeout" => return Ok(RetryCondition::Timeout),
            _ => {}
        }
        if let Some(&(_, code)) = GRPC_CODES.iter().find(|(name, _)| *name == text) {
            return Ok(RetryCondition::Grpc(code));
        }
        let bytes = text.as_bytes();
        if bytes.len() == 3 && (b'1'..=b'5').contains(&bytes[0]) {
            if &bytes[1..] == b"xx" {
                return Ok(RetryCondition::StatusClass(bytes[0] - b'0'));
            }
            if let Ok(status) = text.parse::<u16>() {
                return Ok(RetryCondition::Status(status));
            }
        }
        Err(format!(
            "unknown retry condition {text:?}: expected connect_failure, reset, timeout, a status such as \"503\", a class such as \"5xx\", or a gRPC code name such as unavailable"
        ))
    }
}

impl FallbackSpec {
    /// The clusters of the chain, in order.
    pub fn clusters(&self) -> &[String] {
        match self {
            FallbackSpec::One(name) => std::slice::from_ref(name),
            FallbackSpec::Chain(names) => names,
        }
    }
}

impl<'de> Deserialize<'de> for FallbackSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FallbackVisitor;

        impl<'de> Visitor<'de> for FallbackVisitor {
            type Value = FallbackSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a cluster name or a list of cluster names")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FallbackSpec::One(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(FallbackSpec::One(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(FallbackSpec::Chain)
            }
        }

        deserializer.deserialize_any(FallbackVisitor)
    }
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"an endpoint: "host:port" or {"address": "host:port", "weight": N}"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EndpointSpec::Address(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(EndpointSpec::Address(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                WeightedEndpointSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(EndpointSpec::Weighted)
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_is_the_json_name() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::WeightedRoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
            LbPolicy::RingHash,
            LbPolicy::Maglev,
        ] {
            assert_eq!(serde_json::to_value(policy).unwrap(), policy.as_str());
        }
        for protocol in [Protocol::Http1, Protocol::Http2, Protocol::Auto] {
            assert_eq!(serde_json::to_value(protocol).unwrap(), protocol.as_str());
        }
        for class in [TrafficClass::Live, TrafficClass::Synthetic] {
            assert_eq!(serde_json::to_value(class).unwrap(), class.as_str());
        }
    }

    #[test]
    fn endpoint_reads_both_forms_and_writes_them_back() {
        let endpoints: Vec<EndpointSpec> = serde_json::from_str(
            r#"["127.0.0.1:19001", {"address": "127.0.0.1:19002", "weight": 5}, {"address": "127.0.0.1:19003"}]"#,
        )
        .unwrap();
        assert_eq!(
            endpoints[0],
            EndpointSpec::Address("127.0.0.1:19001".to_owned())
        );
        assert_eq!(
            (endpoints[1].address(), endpoints[1].weight()),
            ("127.0.0.1:19002", 5)
        );
        assert_eq!(
            (endpoints[2].address(), endpoints[2].weight()),
            ("127.0.0.1:19003", 1)
        );
        assert_eq!(
            serde_json::to_string(&endpoints).unwrap(),
            r#"["127.0.0.1:19001",{"address":"127.0.0.1:19002","weight":5},{"address":"127.0.0.1:19003","weight":1}]"#
        );
    }

    #[test]
    fn match_spec_is_empty_only_without_conditions() {
        assert!(MatchSpec::default().is_empty());
        let tenant = MatchSpec {
            tenants: vec!["kids".to_owned()],
            ..MatchSpec::default()
        };
        assert!(!tenant.is_empty());
    }
}
