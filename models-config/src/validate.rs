//! Total validation of a [`RuleSet`]: every problem is collected, never just the first.
//!
//! The checks run part by part (clusters, routes, models, experiments, objectives), each in
//! key order, so the issues come out in a stable order that follows the document. Paths use
//! the JSONPath-like syntax described on [`Issue::path`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{Issue, ValidationErrors};
use crate::spec::{
    CircuitBreakerSpec, ClusterSpec, EndpointSpec, ExperimentSpec, FallbackSpec, HealthCheckSpec,
    MatchSpec, MirrorSpec, ObjectiveSpec, OutlierDetectionSpec, RetryCondition, RetrySpec,
    RouteSpec, RuleSet, RuleSpec, TenantSpec, TlsSpec, TrafficClass,
};

/// Longest name allowed, in characters.
const NAME_MAX_LEN: usize = 128;
/// Largest endpoint weight.
const ENDPOINT_WEIGHT_MAX: u32 = 1_000;
/// Largest `connect_timeout_ms`: one minute.
const CONNECT_TIMEOUT_MAX_MS: u64 = 60_000;
/// Largest `request_timeout_ms` and route `timeout_ms`: one hour.
const REQUEST_TIMEOUT_MAX_MS: u64 = 3_600_000;
/// Largest `cache_ttl_ms`: one day.
const CACHE_TTL_MAX_MS: u64 = 86_400_000;
/// What split weights and cell percentages sum to.
const PERCENT: u32 = 100;
/// Shortest health-check interval: 10 ms.
const HEALTH_INTERVAL_MIN_MS: u64 = 10;
/// Most probes in a row a health-check threshold may ask for.
const HEALTH_THRESHOLD_MAX: u64 = 100;
/// Most failures in a row an outlier-detection threshold may ask for.
const OUTLIER_THRESHOLD_MAX: u64 = 10_000;
/// Longest ejection: one day.
const EJECTION_MAX_MS: u64 = 86_400_000;
/// Largest circuit-breaker limit.
const CIRCUIT_LIMIT_MAX: u64 = 1_000_000;
/// Largest route `max_request_body_bytes`: 1 TiB.
const MAX_REQUEST_BODY_MAX: u64 = 1 << 40;
/// Most tries a retry policy may ask for.
const RETRY_ATTEMPTS_MAX: u64 = 10;
/// Largest replay buffer: 1 GiB.
const REPLAY_BUFFER_MAX_BYTES: u64 = 1 << 30;
/// Most mirrored requests in flight per route.
const MIRROR_MAX_IN_FLIGHT: u64 = 100_000;
/// Largest tenant limit (requests in flight, per second, burst).
const TENANT_LIMIT_MAX: u64 = 10_000_000;
/// Largest mirror queue per request: 64 MiB.
const MIRROR_BUFFER_MAX_BYTES: u64 = 64 << 20;

/// Checks a rule set completely: names, references, weights and limits.
///
/// Runs on every rule set before it is used (through [`parse`](crate::parse()) and
/// [`load`](crate::load()), or directly on one built in code).
///
/// # Errors
///
/// When anything is wrong, returns every error-level problem found, in document order.
/// Otherwise returns the warnings (possibly none): spots that are legal but almost certainly
/// not meant, such as a rule that can never match.
pub fn validate(rules: &RuleSet) -> Result<Vec<Issue>, ValidationErrors> {
    let mut v = Validator {
        rules,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (name, cluster) in &rules.clusters {
        v.cluster(name, cluster);
    }
    v.shared_endpoints();
    for (key, route) in &rules.routes {
        v.route(key, route);
    }
    for (id, model) in &rules.models {
        let path = format!("$.models{}", key_path(id));
        v.name(&path, "model", id);
        if !rules.routes.contains_key(&model.routing_key) {
            v.error(
                format!("{path}.routing_key"),
                format!("unknown routing key {:?}", model.routing_key),
            );
        }
    }
    for (id, experiment) in &rules.experiments {
        v.experiment(id, experiment);
    }
    for (name, objective) in &rules.objectives {
        v.objective(name, objective);
    }
    for (name, tenant) in &rules.tenants {
        v.tenant(name, tenant);
    }

    if v.errors.is_empty() {
        Ok(v.warnings)
    } else {
        Err(ValidationErrors(v.errors))
    }
}

/// The rule set under check and what has been found so far.
struct Validator<'a> {
    rules: &'a RuleSet,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
}

/// What a weight map holds, for its messages.
#[derive(Clone, Copy)]
enum Weights {
    /// A route's split: cluster → weight.
    Clusters,
    /// A rule's split: model → weight.
    Models,
    /// An experiment's cells: cell → percentage.
    Cells,
}

// === impl Validator ===

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Issue::new(path, message));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue::new(path, message));
    }

    /// Checks that `name`, found at `path`, is well-formed.
    fn name(&mut self, path: &str, kind: &str, name: &str) {
        if let Err(reason) = check_name(name) {
            self.error(path, format!("invalid {kind} name {name:?}: {reason}"));
        }
    }

    fn cluster(&mut self, name: &str, cluster: &ClusterSpec) {
        let path = format!("$.clusters{}", key_path(name));
        self.name(&path, "cluster", name);

        if cluster.endpoints.is_empty() {
            self.error(
                format!("{path}.endpoints"),
                "cluster has no endpoints, at least one is required",
            );
        }
        // Normalized address → index of its first occurrence.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, endpoint) in cluster.endpoints.iter().enumerate() {
            let endpoint_path = format!("{path}.endpoints[{i}]");
            let address_path = match endpoint {
                EndpointSpec::Address(_) => endpoint_path.clone(),
                EndpointSpec::Weighted(_) => format!("{endpoint_path}.address"),
            };
            let address = endpoint.address();
            match normalize_address(address) {
                Err(reason) => {
                    self.error(
                        address_path,
                        format!("invalid endpoint address {address:?}: {reason}"),
                    );
                }
                Ok(normalized) => {
                    if let Some(first) = seen.get(&normalized) {
                        self.error(
                            address_path,
                            format!(
                                "duplicate endpoint address {address:?} (first at endpoints[{first}])"
                            ),
                        );
                    } else {
                        seen.insert(normalized, i);
                    }
                }
            }
            if let EndpointSpec::Weighted(w) = endpoint
                && !(1..=ENDPOINT_WEIGHT_MAX).contains(&w.weight)
            {
                self.error(
                    format!("{endpoint_path}.weight"),
                    format!(
                        "weight {} is out of range 1..={ENDPOINT_WEIGHT_MAX}",
                        w.weight
                    ),
                );
            }
        }

        let policy = cluster.lb_policy;
        let hash_path = format!("{path}.hash_header");
        match &cluster.hash_header {
            None if policy.uses_hash_header() => self.error(
                hash_path,
                format!("hash_header is required by lb_policy {}", policy.as_str()),
            ),
            None => {}
            Some(header) if !policy.uses_hash_header() => self.error(
                hash_path,
                format!(
                    "hash_header {header:?} is not allowed with lb_policy {}, only with ring_hash and maglev",
                    policy.as_str()
                ),
            ),
            Some(header) => {
                if let Err(reason) = check_header_name(header) {
                    self.error(hash_path, format!("invalid hash_header {header:?}: {reason}"));
                }
            }
        }

        self.range(
            format!("{path}.connect_timeout_ms"),
            "connect_timeout_ms",
            cluster.connect_timeout_ms,
            1,
            CONNECT_TIMEOUT_MAX_MS,
        );
        self.range(
            format!("{path}.request_timeout_ms"),
            "request_timeout_ms",
            cluster.request_timeout_ms,
            1,
            REQUEST_TIMEOUT_MAX_MS,
        );
        if let Some(check) = &cluster.health_check {
            self.health_check(&format!("{path}.health_check"), check);
        }
        if let Some(outlier) = &cluster.outlier_detection {
            self.outlier_detection(&format!("{path}.outlier_detection"), outlier);
        }
        if let Some(breaker) = &cluster.circuit_breaker {
            self.circuit_breaker(&format!("{path}.circuit_breaker"), breaker);
        }
        if let Some(tls) = &cluster.tls {
            self.tls(&format!("{path}.tls"), tls);
        }
    }

    /// What can be checked of a `tls` block without the files: each router reads them
    /// when it applies the rule set.
    fn tls(&mut self, path: &str, tls: &TlsSpec) {
        self.file_path(format!("{path}.ca_file"), "ca_file", &tls.ca_file);
        if let Some(name) = &tls.server_name
            && let Err(reason) = check_server_name(name)
        {
            self.error(
                format!("{path}.server_name"),
                format!("invalid server_name {name:?}: {reason}"),
            );
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                self.file_path(format!("{path}.cert_file"), "cert_file", cert);
                self.file_path(format!("{path}.key_file"), "key_file", key);
            }
            (Some(_), None) => self.error(
                path,
                "tls has cert_file without key_file; a client certificate needs both",
            ),
            (None, Some(_)) => self.error(
                path,
                "tls has key_file without cert_file; a client certificate needs both",
            ),
            (None, None) => {}
        }
    }

    /// Checks a file path of a `tls` block: not empty, no NUL (the file itself is not
    /// looked at).
    fn file_path(&mut self, path: String, field: &str, file: &str) {
        if file.is_empty() {
            self.error(path, format!("{field} is empty"));
        } else if file.contains('\0') {
            self.error(path, format!("{field} {file:?} contains a NUL character"));
        }
    }

    fn health_check(&mut self, path: &str, check: &HealthCheckSpec) {
        match (&check.http_path, &check.grpc_service) {
            (Some(_), Some(_)) => self.error(
                path,
                "health_check has both http_path and grpc_service, expected exactly one",
            ),
            (None, None) => self.error(
                path,
                "health_check has neither http_path nor grpc_service, expected exactly one",
            ),
            (Some(http_path), None) => {
                if !http_path.starts_with('/') {
                    self.error(
                        format!("{path}.http_path"),
                        format!("http_path {http_path:?} must start with '/'"),
                    );
                } else if let Some(c) = http_path
                    .chars()
                    .find(|&c| !c.is_ascii_graphic() || c == '#')
                {
                    self.error(
                        format!("{path}.http_path"),
                        format!("character {c:?} is not allowed in http_path {http_path:?}"),
                    );
                }
            }
            (None, Some(service)) => {
                if let Some(c) = service.chars().find(|c| c.is_control()) {
                    self.error(
                        format!("{path}.grpc_service"),
                        format!("character {c:?} is not allowed in grpc_service {service:?}"),
                    );
                }
            }
        }
        if !check.expected_statuses.is_empty() && check.http_path.is_none() {
            self.error(
                format!("{path}.expected_statuses"),
                "expected_statuses applies to http_path checks only",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, &status) in check.expected_statuses.iter().enumerate() {
            let status_path = format!("{path}.expected_statuses[{i}]");
            if !(100..=599).contains(&status) {
                self.error(
                    status_path,
                    format!("status {status} is out of range 100..=599"),
                );
            } else if !seen.insert(status) {
                self.error(status_path, format!("duplicate status {status}"));
            }
        }
        self.range(
            format!("{path}.interval_ms"),
            "interval_ms",
            check.interval_ms,
            HEALTH_INTERVAL_MIN_MS,
            REQUEST_TIMEOUT_MAX_MS,
        );
        if let Some(timeout) = check.timeout_ms {
            if timeout == 0 {
                self.error(
                    format!("{path}.timeout_ms"),
                    "timeout_ms 0 is out of range, at least 1 is required",
                );
            } else if timeout >= check.interval_ms {
                self.error(
                    format!("{path}.timeout_ms"),
                    format!(
                        "timeout_ms {timeout} must be less than interval_ms {}",
                        check.interval_ms
                    ),
                );
            }
        }
        for (field, value) in [
            ("unhealthy_threshold", check.unhealthy_threshold),
            ("healthy_threshold", check.healthy_threshold),
        ] {
            self.range(
                format!("{path}.{field}"),
                field,
                u64::from(value),
                1,
                HEALTH_THRESHOLD_MAX,
            );
        }
    }

    fn outlier_detection(&mut self, path: &str, outlier: &OutlierDetectionSpec) {
        for (field, value) in [
            ("consecutive_5xx", outlier.consecutive_5xx),
            (
                "consecutive_gateway_failures",
                outlier.consecutive_gateway_failures,
            ),
        ] {
            self.range(
                format!("{path}.{field}"),
                field,
                u64::from(value),
                1,
                OUTLIER_THRESHOLD_MAX,
            );
        }
        self.range(
            format!("{path}.base_ejection_ms"),
            "base_ejection_ms",
            outlier.base_ejection_ms,
            1,
            REQUEST_TIMEOUT_MAX_MS,
        );
        if let Some(max) = outlier.max_ejection_ms {
            if max < outlier.base_ejection_ms {
                self.error(
                    format!("{path}.max_ejection_ms"),
                    format!(
                        "max_ejection_ms {max} is less than base_ejection_ms {}",
                        outlier.base_ejection_ms
                    ),
                );
            } else {
                self.range(
                    format!("{path}.max_ejection_ms"),
                    "max_ejection_ms",
                    max,
                    1,
                    EJECTION_MAX_MS,
                );
            }
        }
        self.range(
            format!("{path}.max_ejection_percent"),
            "max_ejection_percent",
            u64::from(outlier.max_ejection_percent),
            0,
            u64::from(PERCENT),
        );
    }

    fn circuit_breaker(&mut self, path: &str, breaker: &CircuitBreakerSpec) {
        for (field, value) in [
            ("max_requests", breaker.max_requests),
            ("max_pending", breaker.max_pending),
        ] {
            self.range(
                format!("{path}.{field}"),
                field,
                u64::from(value),
                1,
                CIRCUIT_LIMIT_MAX,
            );
        }
    }

    /// An endpoint has one health state and one connection pool: clusters that share an
    /// address must probe it the same way, and reach it with the same `tls` block (or
    /// none).
    fn shared_endpoints(&mut self) {
        // Normalized address → (cluster, its tls block) of the first cluster using it.
        let mut reached: HashMap<String, (&str, Option<&TlsSpec>)> = HashMap::new();
        for (name, cluster) in &self.rules.clusters {
            let tls = cluster.tls.as_ref();
            for endpoint in &cluster.endpoints {
                let Ok(address) = normalize_address(endpoint.address()) else {
                    continue;
                };
                match reached.get(&address) {
                    Some((first, first_tls)) if *first_tls != tls => {
                        let message = format!(
                            "endpoint {:?} is also in cluster {first:?} with a different tls block; an endpoint has one connection pool, so clusters sharing it must reach it the same way",
                            endpoint.address()
                        );
                        self.errors.push(Issue::new(
                            format!("$.clusters{}.tls", key_path(name)),
                            message,
                        ));
                    }
                    Some(_) => {}
                    None => {
                        reached.insert(address, (name, tls));
                    }
                }
            }
        }
        // Normalized address → (cluster, its health check) of the first cluster probing it.
        let mut probed: HashMap<String, (&str, &HealthCheckSpec)> = HashMap::new();
        for (name, cluster) in &self.rules.clusters {
            let Some(check) = &cluster.health_check else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                let Ok(address) = normalize_address(endpoint.address()) else {
                    continue;
                };
                match probed.get(&address) {
                    Some((first, first_check)) if *first_check != check => {
                        let message = format!(
                            "endpoint {:?} is also in cluster {first:?} with a different health_check; an endpoint has one health state, so clusters sharing it must check it the same way",
                            endpoint.address()
                        );
                        self.errors.push(Issue::new(
                            format!("$.clusters{}.health_check", key_path(name)),
                            message,
                        ));
                    }
                    Some(_) => {}
                    None => {
                        probed.insert(address, (name, check));
                    }
                }
            }
        }
    }

    fn route(&mut self, key: &str, route: &RouteSpec) {
        let path = format!("$.routes{}", key_path(key));
        self.name(&path, "routing key", key);

        if !self.rules.clusters.contains_key(&route.cluster) {
            self.error(
                format!("{path}.cluster"),
                format!("unknown cluster {:?}", route.cluster),
            );
        }
        if let Some(fallback) = &route.fallback {
            self.fallback(&format!("{path}.fallback"), route, fallback);
        }
        if let Some(split) = &route.split {
            let split_path = format!("{path}.split");
            if split.is_empty() {
                self.error(
                    split_path,
                    "split is empty, at least one cluster is required",
                );
            } else {
                self.weights(&split_path, split, Weights::Clusters);
                if !split.contains_key(&route.cluster) {
                    self.error(
                        split_path,
                        format!(
                            "split does not include the primary cluster {:?}",
                            route.cluster
                        ),
                    );
                }
            }
        }
        if let Some(timeout) = route.timeout_ms {
            self.range(
                format!("{path}.timeout_ms"),
                "timeout_ms",
                timeout,
                1,
                REQUEST_TIMEOUT_MAX_MS,
            );
        }
        if let Some(limit) = route.max_request_body_bytes {
            self.range(
                format!("{path}.max_request_body_bytes"),
                "max_request_body_bytes",
                limit,
                1,
                MAX_REQUEST_BODY_MAX,
            );
        }
        if let Some(header) = &route.sticky_header {
            let header_path = format!("{path}.sticky_header");
            if let Err(reason) = check_header_name(header) {
                self.error(
                    &header_path,
                    format!("invalid sticky_header {header:?}: {reason}"),
                );
            }
            if route.split.is_none() && route.mirror.is_none() {
                self.error(
                    header_path,
                    "sticky_header needs a split or a mirror to act on",
                );
            }
        }
        if let Some(retry) = &route.retry {
            self.retry(&format!("{path}.retry"), retry);
        }
        if let Some(mirror) = &route.mirror {
            self.mirror(&format!("{path}.mirror"), route, mirror);
        }
        let mut allowed = BTreeSet::new();
        for (i, tenant) in route.tenants.iter().enumerate() {
            let tenant_path = format!("{path}.tenants[{i}]");
            if !allowed.insert(tenant.as_str()) {
                self.error(tenant_path, format!("duplicate tenant {tenant:?}"));
            } else if !self.rules.tenants.contains_key(tenant) {
                self.error(
                    tenant_path,
                    format!("unknown tenant {tenant:?}: declare it in the top-level tenants"),
                );
            }
        }
        if let Some(synthetic) = &route.synthetic_cluster {
            let synthetic_path = format!("{path}.synthetic_cluster");
            let own = route.cluster == *synthetic
                || route
                    .split
                    .as_ref()
                    .is_some_and(|s| s.contains_key(synthetic))
                || route
                    .fallback
                    .as_ref()
                    .is_some_and(|f| f.clusters().contains(synthetic));
            if own {
                self.error(
                    synthetic_path,
                    format!("synthetic_cluster {synthetic:?} is a live cluster of the route"),
                );
            } else if !self.rules.clusters.contains_key(synthetic) {
                self.error(synthetic_path, format!("unknown cluster {synthetic:?}"));
            }
        }
    }

    fn tenant(&mut self, name: &str, tenant: &TenantSpec) {
        let path = format!("$.tenants{}", key_path(name));
        self.name(&path, "tenant", name);
        if let Some(max) = tenant.max_concurrent {
            self.range(
                format!("{path}.max_concurrent"),
                "max_concurrent",
                u64::from(max),
                1,
                TENANT_LIMIT_MAX,
            );
        }
        match (tenant.requests_per_second, tenant.burst) {
            (Some(rate), burst) => {
                if !(rate.is_finite() && (0.001..=TENANT_LIMIT_MAX as f64).contains(&rate)) {
                    self.error(
                        format!("{path}.requests_per_second"),
                        format!(
                            "requests_per_second {rate} is out of range 0.001..={TENANT_LIMIT_MAX}"
                        ),
                    );
                }
                if let Some(burst) = burst {
                    self.range(
                        format!("{path}.burst"),
                        "burst",
                        u64::from(burst),
                        1,
                        TENANT_LIMIT_MAX,
                    );
                }
            }
            (None, Some(_)) => self.error(
                format!("{path}.burst"),
                "burst applies with requests_per_second only",
            ),
            (None, None) => {}
        }
    }

    fn retry(&mut self, path: &str, retry: &RetrySpec) {
        self.range(
            format!("{path}.attempts"),
            "attempts",
            u64::from(retry.attempts),
            1,
            RETRY_ATTEMPTS_MAX,
        );
        let mut seen = BTreeSet::new();
        for (i, condition) in retry.on.iter().enumerate() {
            let entry_path = format!("{path}.on[{i}]");
            if let Err(message) = RetryCondition::parse(condition) {
                self.error(entry_path, message);
            } else if !seen.insert(condition.as_str()) {
                self.error(
                    entry_path,
                    format!("duplicate retry condition {condition:?}"),
                );
            }
        }
        if let Some(timeout) = retry.per_try_timeout_ms {
            self.range(
                format!("{path}.per_try_timeout_ms"),
                "per_try_timeout_ms",
                timeout,
                1,
                REQUEST_TIMEOUT_MAX_MS,
            );
        }
        self.range(
            format!("{path}.backoff_ms"),
            "backoff_ms",
            retry.backoff_ms,
            0,
            CONNECT_TIMEOUT_MAX_MS,
        );
        self.range(
            format!("{path}.budget_percent"),
            "budget_percent",
            u64::from(retry.budget_percent),
            0,
            u64::from(PERCENT),
        );
        self.range(
            format!("{path}.replay_buffer_bytes"),
            "replay_buffer_bytes",
            retry.replay_buffer_bytes,
            0,
            REPLAY_BUFFER_MAX_BYTES,
        );
    }

    fn mirror(&mut self, path: &str, route: &RouteSpec, mirror: &MirrorSpec) {
        let cluster_path = format!("{path}.cluster");
        let own = route.cluster == mirror.cluster
            || route
                .split
                .as_ref()
                .is_some_and(|s| s.contains_key(&mirror.cluster));
        if own {
            self.error(
                cluster_path,
                format!(
                    "mirror cluster {:?} is one the route itself sends to",
                    mirror.cluster
                ),
            );
        } else if !self.rules.clusters.contains_key(&mirror.cluster) {
            self.error(
                cluster_path,
                format!("unknown cluster {:?}", mirror.cluster),
            );
        }
        let percent = mirror.sample_percent;
        if !(percent.is_finite() && (0.0..=f64::from(PERCENT)).contains(&percent)) {
            self.error(
                format!("{path}.sample_percent"),
                format!("sample_percent {percent} is out of range 0..={PERCENT}"),
            );
        }
        self.range(
            format!("{path}.max_in_flight"),
            "max_in_flight",
            u64::from(mirror.max_in_flight),
            1,
            MIRROR_MAX_IN_FLIGHT,
        );
        self.range(
            format!("{path}.max_buffer_bytes"),
            "max_buffer_bytes",
            mirror.max_buffer_bytes,
            1,
            MIRROR_BUFFER_MAX_BYTES,
        );
    }

    /// A fallback chain: every name resolves, and no cluster comes twice in it (the primary
    /// included), so a chain never loops. A split's other clusters may be fallbacks: a
    /// request never tries the cluster it was sent to twice.
    fn fallback(&mut self, path: &str, route: &RouteSpec, fallback: &FallbackSpec) {
        let names = fallback.clusters();
        if names.is_empty() {
            self.error(
                path,
                "fallback list is empty, leave it out or name at least one cluster",
            );
        }
        let indexed = matches!(fallback, FallbackSpec::Chain(_));
        for (i, name) in names.iter().enumerate() {
            let entry_path = if indexed {
                format!("{path}[{i}]")
            } else {
                path.to_owned()
            };
            if *name == route.cluster {
                self.error(
                    entry_path,
                    format!("fallback {name:?} is the primary cluster itself"),
                );
            } else if names[..i].contains(name) {
                let first = names.iter().position(|n| n == name).unwrap_or(0);
                self.error(
                    entry_path,
                    format!(
                        "fallback {name:?} comes twice in the chain (first at fallback[{first}])"
                    ),
                );
            } else if !self.rules.clusters.contains_key(name) {
                self.error(entry_path, format!("unknown cluster {name:?}"));
            }
        }
    }

    fn experiment(&mut self, id: &str, experiment: &ExperimentSpec) {
        let path = format!("$.experiments{}", key_path(id));
        self.name(&path, "experiment", id);

        if experiment.salt.as_deref() == Some("") {
            self.error(
                format!("{path}.salt"),
                "salt is empty, leave it out to use the experiment id",
            );
        }
        let cells_path = format!("{path}.cells");
        if experiment.cells.is_empty() {
            self.error(
                cells_path,
                "experiment has no cells, at least one is required",
            );
        } else {
            self.weights(&cells_path, &experiment.cells, Weights::Cells);
        }
    }

    fn objective(&mut self, name: &str, objective: &ObjectiveSpec) {
        let path = format!("$.objectives{}", key_path(name));
        self.name(&path, "objective", name);

        self.model_ref(format!("{path}.default"), &objective.default);
        for (i, rule) in objective.rules.iter().enumerate() {
            self.rule(&format!("{path}.rules[{i}]"), rule);
        }
        self.unreachable_rules(&path, &objective.rules);

        // Shadow model → index of its first entry.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, shadow) in objective.shadow.iter().enumerate() {
            let shadow_path = format!("{path}.shadow[{i}]");
            if let Some(first) = seen.get(shadow.model.as_str()) {
                self.error(
                    format!("{shadow_path}.model"),
                    format!(
                        "duplicate shadow model {:?} (first at shadow[{first}])",
                        shadow.model
                    ),
                );
            } else {
                seen.insert(&shadow.model, i);
                self.model_ref(format!("{shadow_path}.model"), &shadow.model);
            }
            let percent = shadow.sample_percent;
            if !(percent.is_finite() && (0.0..=f64::from(PERCENT)).contains(&percent)) {
                self.error(
                    format!("{shadow_path}.sample_percent"),
                    format!("sample_percent {percent} is out of range 0..={PERCENT}"),
                );
            }
        }

        self.range(
            format!("{path}.cache_ttl_ms"),
            "cache_ttl_ms",
            objective.cache_ttl_ms,
            0,
            CACHE_TTL_MAX_MS,
        );
    }

    fn rule(&mut self, path: &str, rule: &RuleSpec) {
        match (&rule.model, &rule.split) {
            (Some(_), Some(_)) => {
                self.error(path, "rule has both model and split, expected exactly one");
            }
            (None, None) => {
                self.error(
                    path,
                    "rule has neither model nor split, expected exactly one",
                );
            }
            _ => {}
        }
        if let Some(model) = &rule.model {
            self.model_ref(format!("{path}.model"), model);
        }
        if let Some(split) = &rule.split {
            let split_path = format!("{path}.split");
            if split.is_empty() {
                self.error(split_path, "split is empty, at least one model is required");
            } else {
                self.weights(&split_path, split, Weights::Models);
            }
        }
        self.condition(&format!("{path}.when"), &rule.when);
    }

    fn condition(&mut self, path: &str, when: &MatchSpec) {
        for (i, tenant) in when.tenants.iter().enumerate() {
            if tenant.is_empty() {
                self.error(format!("{path}.tenants[{i}]"), "tenant is empty");
            } else if !self.rules.tenants.is_empty() && !self.rules.tenants.contains_key(tenant) {
                self.error(
                    format!("{path}.tenants[{i}]"),
                    format!("unknown tenant {tenant:?}: declare it in the top-level tenants"),
                );
            }
        }
        for (attribute, values) in &when.attributes {
            let attribute_path = format!("{path}.attributes{}", key_path(attribute));
            if attribute.is_empty() {
                self.error(&attribute_path, "attribute name is empty");
            }
            if values.is_empty() {
                self.error(
                    attribute_path,
                    format!("attribute {attribute:?} lists no values, at least one is required"),
                );
            }
        }
        match (&when.experiment, &when.cell) {
            (None, None) => {}
            (Some(experiment), None) => self.error(
                path,
                format!("experiment {experiment:?} is given without a cell"),
            ),
            (None, Some(cell)) => {
                self.error(
                    path,
                    format!("cell {cell:?} is given without an experiment"),
                );
            }
            (Some(experiment), Some(cell)) => match self.rules.experiments.get(experiment) {
                None => self.error(
                    format!("{path}.experiment"),
                    format!("unknown experiment {experiment:?}"),
                ),
                Some(spec) if !spec.cells.contains_key(cell) => self.error(
                    format!("{path}.cell"),
                    format!("unknown cell {cell:?} of experiment {experiment:?}"),
                ),
                Some(_) => {}
            },
        }
    }

    /// Warns about each rule that an earlier rule of the same objective always wins over.
    fn unreachable_rules(&mut self, path: &str, rules: &[RuleSpec]) {
        let conditions: Vec<Condition<'_>> =
            rules.iter().map(|r| Condition::new(&r.when)).collect();
        for (i, later) in conditions.iter().enumerate() {
            let Some((j, earlier)) = conditions[..i]
                .iter()
                .enumerate()
                .find(|(_, earlier)| earlier.covers(later))
            else {
                continue;
            };
            let why = if earlier.is_empty() {
                format!("rules[{j}] has an empty when and matches every request")
            } else if earlier == later {
                format!("rules[{j}] has the same when")
            } else {
                format!("rules[{j}] matches every request this rule matches")
            };
            self.warn(
                format!("{path}.rules[{i}]"),
                format!("rule can never match: {why}"),
            );
        }
    }

    /// Checks a reference to a model.
    fn model_ref(&mut self, path: String, model: &str) {
        if !self.rules.models.contains_key(model) {
            self.error(path, format!("unknown model {model:?}"));
        }
    }

    /// Checks the entries of a non-empty weight map and that they sum to 100.
    fn weights(&mut self, path: &str, weights: &BTreeMap<String, u32>, kind: Weights) {
        let mut sum: u64 = 0;
        for (name, &weight) in weights {
            let entry_path = format!("{path}{}", key_path(name));
            match kind {
                Weights::Clusters if !self.rules.clusters.contains_key(name) => {
                    self.error(&entry_path, format!("unknown cluster {name:?}"));
                }
                Weights::Models if !self.rules.models.contains_key(name) => {
                    self.error(&entry_path, format!("unknown model {name:?}"));
                }
                Weights::Cells => self.name(&entry_path, "cell", name),
                _ => {}
            }
            if !(1..=PERCENT).contains(&weight) {
                self.error(
                    entry_path,
                    format!("{} {weight} is out of range 1..={PERCENT}", kind.unit()),
                );
            }
            sum += u64::from(weight);
        }
        if sum != u64::from(PERCENT) {
            self.error(
                path,
                format!("{}s sum to {sum}, expected {PERCENT}", kind.unit()),
            );
        }
    }

    /// Checks that `value` lies in `min..=max`.
    fn range(&mut self, path: String, field: &str, value: u64, min: u64, max: u64) {
        if !(min..=max).contains(&value) {
            self.error(
                path,
                format!("{field} {value} is out of range {min}..={max}"),
            );
        }
    }
}

impl Weights {
    /// What one entry's number is called.
    fn unit(self) -> &'static str {
        match self {
            Weights::Clusters | Weights::Models => "weight",
            Weights::Cells => "percentage",
        }
    }
}

/// A rule's condition with its lists turned into sets, so that order and repetition in the
/// JSON do not matter when conditions are compared.
#[derive(PartialEq)]
struct Condition<'a> {
    tenants: BTreeSet<&'a str>,
    traffic_class: Option<TrafficClass>,
    attributes: BTreeMap<&'a str, BTreeSet<&'a str>>,
    experiment: Option<(&'a str, Option<&'a str>)>,
}

// === impl Condition ===

impl<'a> Condition<'a> {
    fn new(when: &'a MatchSpec) -> Self {
        Self {
            tenants: when.tenants.iter().map(String::as_str).collect(),
            traffic_class: when.traffic_class,
            attributes: when
                .attributes
                .iter()
                .map(|(k, vs)| (k.as_str(), vs.iter().map(String::as_str).collect()))
                .collect(),
            experiment: when
                .experiment
                .as_deref()
                .map(|e| (e, when.cell.as_deref())),
        }
    }

    fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.traffic_class.is_none()
            && self.attributes.is_empty()
            && self.experiment.is_none()
    }

    /// Whether every request that `other` matches is also matched by `self`, so that a rule
    /// with `other` placed after one with `self` can never win.
    fn covers(&self, other: &Condition<'_>) -> bool {
        let tenants = self.tenants.is_empty()
            || (!other.tenants.is_empty() && other.tenants.is_subset(&self.tenants));
        let traffic_class =
            self.traffic_class.is_none() || self.traffic_class == other.traffic_class;
        let attributes = self.attributes.iter().all(|(name, allowed)| {
            other
                .attributes
                .get(name)
                .is_some_and(|values| values.is_subset(allowed))
        });
        let experiment = self.experiment.is_none() || self.experiment == other.experiment;
        tenants && traffic_class && attributes && experiment
    }
}

/// `["name"]`: a map key in an issue path, JSON-quoted.
fn key_path(key: &str) -> String {
    let quoted = serde_json::to_string(key).expect("serializing a str to JSON cannot fail");
    format!("[{quoted}]")
}

/// Checks a name: 1 to 128 characters of `A-Z a-z 0-9 . _ : / -`, starting with a letter or
/// a digit.
fn check_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("must not be empty".to_owned());
    };
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')))
    {
        return Err(format!(
            "character {c:?} is not allowed (use A-Z a-z 0-9 . _ : / -)"
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(format!("must start with a letter or digit, not {first:?}"));
    }
    // Only ASCII is left, so bytes are characters.
    if name.len() > NAME_MAX_LEN {
        return Err(format!(
            "{} characters, at most {NAME_MAX_LEN} are allowed",
            name.len()
        ));
    }
    Ok(())
}

/// Checks an HTTP header name (an RFC 9110 token; upper case is allowed and is lowered when
/// used).
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    match name.chars().find(|&c| !is_tchar(c)) {
        Some(c) => Err(format!("character {c:?} is not allowed in a header name")),
        None => Ok(()),
    }
}

/// Checks a `host:port` endpoint address and returns a normalized form (lowercase host,
/// canonical IP text, port without leading zeros) used to find duplicates.
fn normalize_address(address: &str) -> Result<String, String> {
    if address.is_empty() {
        return Err("address is empty".to_owned());
    }
    if address.contains("://") {
        return Err("expected host:port without a scheme".to_owned());
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_owned())?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing :port".to_owned())?;
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| "missing :port".to_owned())?;
        if host.contains(':') {
            return Err("an IPv6 address must be in brackets, as in [::1]:8080".to_owned());
        }
        (normalize_host(host)?, port)
    };
    let port = check_port(port)?;
    Ok(format!("{host}:{port}"))
}

/// Checks a host that is an IPv4 address or a DNS name, and returns it normalized.
fn normalize_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("host is empty".to_owned());
    }
    // Digits and dots only: meant as an IPv4 address, never as a DNS name.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"));
    }
    if host.len() > 253 {
        return Err(format!(
            "host name is {} characters long, at most 253 are allowed",
            host.len()
        ));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!("host name {host:?} has an empty label"));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!(
                "character {c:?} is not allowed in host name {host:?}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} of host name {host:?} starts or ends with '-'"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "label {label:?} of host name {host:?} is longer than 63 characters"
            ));
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// Checks a TLS server name: an IP address (IPv6 without brackets) or a DNS name, as a
/// certificate can be issued for it and SNI can carry it (no wildcard, no port).
fn check_server_name(name: &str) -> Result<(), String> {
    if name.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if name.starts_with('[') {
        return Err("write an IPv6 address without brackets".to_owned());
    }
    normalize_host(name).map(|_| ())
}

/// Checks a port: decimal digits, 1 to 65535.
fn check_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("port is missing".to_owned());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number"));
    }
    match port.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {port} is out of range 1..=65535")),
    }
}

#[cfg(test)]
mod tests;
