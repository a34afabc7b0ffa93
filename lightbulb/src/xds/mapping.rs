//! The mapping of a validated rule set to Envoy resources (DESIGN §13): one CDS `Cluster`
//! per rule-set cluster (plus one aggregate cluster per fallback chain), one EDS
//! `ClusterLoadAssignment` per cluster whose endpoints are all IP addresses, and the RDS
//! `RouteConfiguration` named [`ROUTE_CONFIG_NAME`].
//!
//! [`map`] is pure: it reads only the rule set, iterates ordered maps only, and puts at most
//! one entry in any protobuf map field, so the same rule set always gives byte-identical
//! resources and every Lightbulb replica serves the same bytes at the same version.
//!
//! What Envoy cannot express is never dropped silently: each gap is one line of
//! [`Resources::unmapped`], naming the JSON path and why (the ADS server logs them once per
//! rule set; `lightbulb/README.md` lists them all).
//!
//! # The virtual host, in order
//!
//! ```text
//! invalid_traffic_class[:unprintable_key]  x-routing-key present, x-traffic-class present and
//!                                          not live|synthetic|shadow|replay           → 400
//! per routing key, in key order:
//!   synthetic:<key>           key, x-traffic-class synthetic|replay [, tenant]  → synthetic_cluster
//!   route:<key>               key [, tenant]                    → cluster, split or fallback chain
//!   tenant_not_allowed:<key>  key (only for a route with `tenants`)                     → 403
//! unknown_routing_key[:unprintable_key]    x-routing-key present                      → 404
//! missing_routing_key                      anything else                              → 400
//! ```
//!
//! The 400, 403 and 404 answers carry the router's JSON error body (`router/src/error.rs`);
//! the `:unprintable_key` variants answer with `"routing_key": null` for a key that cannot be
//! put in a JSON string as it is.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, CustomClusterType, DiscoveryType, EdsClusterConfig,
    LbPolicy as EnvoyLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::common::mutation_rules::v3::{HeaderMutation, header_mutation};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck, HealthChecker, HttpHealthCheck, TlsOptions,
};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue,
    HeaderValueOption, HealthCheck, Http1ProtocolOptions, Http2ProtocolOptions, RoutingPriority,
    RuntimeFractionalPercent, SocketAddress, SubstitutionFormatString, TransportSocket,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, RequestMirrorPolicy, hash_policy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::{
    ClusterWeight, RandomValueSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster, retry_policy,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, FractionalPercent, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value, UInt64Value};
use models_config::spec::{
    CircuitBreakerSpec, ClusterSpec, HealthCheckSpec, LbPolicy, MirrorSpec, OutlierDetectionSpec,
    Protocol, RetryCondition, RetrySpec, RouteSpec,
};
use models_config::{ValidCluster, ValidRuleSet};
use prost::{Message, Name};

/// Type URL of CDS resources.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of EDS resources.
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of RDS resources.
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The one route configuration's name (and its virtual host's).
pub const ROUTE_CONFIG_NAME: &str = "lightbulb";
/// The routing header Envoy matches.
pub const ROUTING_HEADER: &str = "x-routing-key";

/// The traffic-class header (DESIGN §11).
const TRAFFIC_CLASS_HEADER: &str = "x-traffic-class";
/// The tenant header (the router's default `--tenant-header`).
const TENANT_HEADER: &str = "x-tenant-id";
/// Every traffic class the router accepts.
const TRAFFIC_CLASSES: &str = "^(live|synthetic|shadow|replay)$";
/// The classes a route's `synthetic_cluster` takes.
const SYNTHETIC_CLASSES: &str = "^(synthetic|replay)$";
/// A header value that can be echoed inside a JSON string as it is: printable ASCII
/// without `"` and `\`.
const JSON_SAFE_VALUE: &str = r"^[ !#-\[\]-~]*$";
/// Prefix of the aggregate clusters that carry a fallback chain. Cluster names never hold a
/// comma, so `fallback:a,b` cannot be a rule-set cluster.
const FALLBACK_PREFIX: &str = "fallback:";
/// The `typed_extension_protocol_options` key of the HTTP upstream options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's retry budget always allows this many concurrent retries, as the router does.
const MIN_RETRY_CONCURRENCY: u32 = 3;
/// Overprovisioning factor of every load assignment (in percent): one healthy endpoint in a
/// thousand still counts as a fully available cluster, so an aggregate cluster moves to the
/// next cluster of a fallback chain only when one has no healthy endpoint, as the router
/// does (Envoy's default, 140, spills traffic over below 72 % healthy).
const OVERPROVISIONING_FACTOR: u32 = 100_000;

/// The router's JSON error answers that Envoy gives itself (`router/src/error.rs`).
#[derive(Debug, Clone, Copy)]
struct ErrorAnswer {
    status: u32,
    code: &'static str,
    message: &'static str,
}

const MISSING_ROUTING_KEY: ErrorAnswer = ErrorAnswer {
    status: 400,
    code: "missing_routing_key",
    message: "request has no routing key header",
};
const UNKNOWN_ROUTING_KEY: ErrorAnswer = ErrorAnswer {
    status: 404,
    code: "unknown_routing_key",
    message: "no route for this routing key",
};
const TENANT_NOT_ALLOWED: ErrorAnswer = ErrorAnswer {
    status: 403,
    code: "tenant_not_allowed",
    message: "the route does not allow this tenant",
};
const INVALID_TRAFFIC_CLASS: ErrorAnswer = ErrorAnswer {
    status: 400,
    code: "invalid_traffic_class",
    message: "x-traffic-class must be live, synthetic, shadow or replay",
};

/// The Envoy resources of one rule set, by type; each value is the resource encoded as
/// `Any`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// The rule set's version.
    pub version: u64,
    /// CDS, by cluster name (the aggregate fallback clusters included).
    pub clusters: BTreeMap<String, Any>,
    /// EDS `ClusterLoadAssignment`s, by cluster name (only EDS clusters).
    pub endpoints: BTreeMap<String, Any>,
    /// RDS: exactly one entry, [`ROUTE_CONFIG_NAME`].
    pub routes: BTreeMap<String, Any>,
    /// What could not be expressed in Envoy, one human-readable line each, naming the JSON
    /// path and why, e.g. `$.routes["ranker"].mirror.max_in_flight: Envoy does not bound
    /// mirrored requests in flight`.
    pub unmapped: Vec<String>,
}

impl Resources {
    /// The resources of `type_url` (`None` for a type this server does not serve).
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        match type_url {
            CLUSTER_TYPE => Some(&self.clusters),
            ENDPOINT_TYPE => Some(&self.endpoints),
            ROUTE_TYPE => Some(&self.routes),
            _ => None,
        }
    }
}

/// Maps a validated rule set (pure: the same rule set always gives byte-identical
/// resources, so Lightbulb replicas serve the same bytes at the same version).
pub fn map(rules: &ValidRuleSet) -> Resources {
    let mut mapper = Mapper {
        rules,
        unmapped: Vec::new(),
        budgets: BTreeMap::new(),
        aggregates: BTreeMap::new(),
    };
    let route_config = mapper.route_configuration();
    let mut resources = Resources {
        version: rules.version,
        ..Resources::default()
    };
    for (name, spec) in rules.clusters.iter() {
        let Some(valid) = rules.cluster(name) else {
            // Every cluster of a validated rule set has its parsed parts.
            continue;
        };
        let budget = mapper.budgets.get(name).map(|b| b.percent);
        let (cluster, assignment) = mapper.cluster(name, spec, valid, budget);
        resources.clusters.insert(name.clone(), any(&cluster));
        if let Some(assignment) = assignment {
            resources.endpoints.insert(name.clone(), any(&assignment));
        }
    }
    for (name, chain) in &mapper.aggregates {
        let budget = mapper.budgets.get(name).map(|b| b.percent);
        let cluster = aggregate_cluster(name, chain, budget);
        resources.clusters.insert(name.clone(), any(&cluster));
    }
    resources
        .routes
        .insert(ROUTE_CONFIG_NAME.to_owned(), any(&route_config));
    mapper.tenant_limits();
    resources.unmapped = mapper.unmapped;
    resources
}

/// A retry budget set on a cluster by a route.
#[derive(Debug, Clone)]
struct Budget {
    /// The budget in force (the largest asked for).
    percent: u32,
    /// The route that asked for it.
    route: String,
}

/// The state of one mapping: what routes ask of clusters is learned while the routes are
/// built, and used when the clusters are.
#[derive(Debug)]
struct Mapper<'a> {
    rules: &'a ValidRuleSet,
    unmapped: Vec<String>,
    /// Retry budgets by the name of the cluster a route sends to directly.
    budgets: BTreeMap<String, Budget>,
    /// Aggregate clusters by name, with their chain.
    aggregates: BTreeMap<String, Vec<String>>,
}

impl Mapper<'_> {
    /// Records one unmapped line: `path: why`.
    fn note(&mut self, path: String, why: impl std::fmt::Display) {
        self.unmapped.push(format!("{path}: {why}"));
    }

    // === routes ===

    /// The route configuration: one virtual host with every route, in the order of the
    /// module documentation.
    fn route_configuration(&mut self) -> RouteConfiguration {
        let mut routes = invalid_traffic_class_routes();
        for (key, spec) in self.rules.routes.iter() {
            self.key_routes(key, spec, &mut routes);
        }
        routes.extend(unknown_routing_key_routes());
        routes.push(missing_routing_key_route());
        RouteConfiguration {
            name: ROUTE_CONFIG_NAME.to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: ROUTE_CONFIG_NAME.to_owned(),
                domains: vec!["*".to_owned()],
                routes,
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        }
    }

    /// The routes of one routing key: synthetic, main, tenant refusal.
    fn key_routes(&mut self, key: &str, spec: &RouteSpec, routes: &mut Vec<Route>) {
        let mut tenants: Vec<&str> = spec.tenants.iter().map(String::as_str).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let tenant_match =
            (!tenants.is_empty()).then(|| header_regex(TENANT_HEADER, &any_of(&tenants)));
        let timeout_ms = spec.timeout_ms.unwrap_or_else(|| {
            self.rules
                .clusters
                .get(&spec.cluster)
                .map_or(0, |c| c.request_timeout_ms)
        });
        let shared = Forwarding {
            timeout: millis(timeout_ms),
            retry: self.retry_policy(key, spec),
            mirror: spec.mirror.as_ref().map(mirror_policy),
            replay_buffer: spec.retry.as_ref().map(|r| UInt64Value {
                value: r.replay_buffer_bytes,
            }),
        };
        self.route_notes(key, spec);

        if let Some(synthetic) = &spec.synthetic_cluster {
            let mut headers = vec![
                header_exact(ROUTING_HEADER, key),
                header_regex(TRAFFIC_CLASS_HEADER, SYNTHETIC_CLASSES),
            ];
            headers.extend(tenant_match.clone());
            let hash_policy = self
                .hash_header(synthetic)
                .iter()
                .map(|h| header_hash(h))
                .collect();
            self.ask_budget(key, spec, synthetic);
            routes.push(forwarding_route(
                format!("synthetic:{key}"),
                headers,
                ClusterSpecifier::Cluster(synthetic.clone()),
                hash_policy,
                &shared,
            ));
        }

        let mut headers = vec![header_exact(ROUTING_HEADER, key)];
        headers.extend(tenant_match);
        let cluster_specifier = self.cluster_specifier(key, spec);
        let hash_policy = self.route_hash_policy(key, spec);
        routes.push(forwarding_route(
            format!("route:{key}"),
            headers,
            cluster_specifier,
            hash_policy,
            &shared,
        ));

        if !tenants.is_empty() {
            routes.push(error_route(
                format!("tenant_not_allowed:{key}"),
                vec![header_exact(ROUTING_HEADER, key)],
                TENANT_NOT_ALLOWED,
                BodyKey::Static(key),
            ));
        }
    }

    /// Where the main route sends: a cluster, or weighted clusters for a split; each target
    /// with a fallback chain becomes that chain's aggregate cluster.
    fn cluster_specifier(&mut self, key: &str, spec: &RouteSpec) -> ClusterSpecifier {
        let fallback: &[String] = spec.fallback.as_ref().map_or(&[], |f| f.clusters());
        match &spec.split {
            Some(split) if !split.is_empty() => {
                let clusters = split
                    .iter()
                    .map(|(name, weight)| {
                        let target = self.target(name, fallback);
                        self.ask_budget(key, spec, &target);
                        ClusterWeight {
                            name: target,
                            weight: Some(UInt32Value { value: *weight }),
                            ..ClusterWeight::default()
                        }
                    })
                    .collect();
                let sticky = spec.sticky_header.is_some();
                ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters,
                    random_value_specifier: sticky.then_some(RandomValueSpecifier::UseHashPolicy(
                        BoolValue { value: true },
                    )),
                    ..WeightedCluster::default()
                })
            }
            _ => {
                let target = self.target(&spec.cluster, fallback);
                self.ask_budget(key, spec, &target);
                ClusterSpecifier::Cluster(target)
            }
        }
    }

    /// The cluster Envoy routes to for `cluster` with `fallback` after it: the cluster
    /// itself, or the aggregate cluster of the chain (registered once, shared by every
    /// route with the same chain).
    fn target(&mut self, cluster: &str, fallback: &[String]) -> String {
        let mut chain = vec![cluster.to_owned()];
        for name in fallback {
            if !chain.contains(name) {
                chain.push(name.clone());
            }
        }
        if chain.len() == 1 {
            return chain.swap_remove(0);
        }
        let name = format!("{FALLBACK_PREFIX}{}", chain.join(","));
        self.aggregates.entry(name.clone()).or_insert(chain);
        name
    }

    /// Records the route's retry budget on `target`, keeping the larger of two.
    fn ask_budget(&mut self, key: &str, spec: &RouteSpec, target: &str) {
        let Some(retry) = &spec.retry else { return };
        let asked = retry.budget_percent;
        let Some(held) = self.budgets.get(target).cloned() else {
            self.budgets.insert(
                target.to_owned(),
                Budget {
                    percent: asked,
                    route: key.to_owned(),
                },
            );
            return;
        };
        if held.percent == asked || held.route == key {
            return;
        }
        let larger = held.percent.max(asked);
        self.note(
            route_path(key, "retry.budget_percent"),
            format!(
                "Envoy keeps one retry budget per cluster and cluster {} also serves route {} \
                 (budget_percent {}), so the larger, {larger} %, applies to both",
                quoted(target),
                quoted(&held.route),
                held.percent
            ),
        );
        if asked > held.percent {
            self.budgets.insert(
                target.to_owned(),
                Budget {
                    percent: asked,
                    route: key.to_owned(),
                },
            );
        }
    }

    /// The hash header of cluster `name`, when its policy hashes one.
    fn hash_header(&self, name: &str) -> Option<String> {
        let spec = self.rules.clusters.get(name)?;
        if !spec.lb_policy.uses_hash_header() {
            return None;
        }
        let valid = self.rules.cluster(name)?;
        valid.hash_header.as_ref().map(|h| h.as_str().to_owned())
    }

    /// The main route's hash policy: the sticky header of a split, then the hash headers of
    /// the clusters the route can reach.
    fn route_hash_policy(&mut self, key: &str, spec: &RouteSpec) -> Vec<HashPolicy> {
        let mut headers: Vec<String> = Vec::new();
        if spec.split.is_some() {
            let sticky = self
                .rules
                .route(key)
                .and_then(|r| r.sticky_header.as_ref())
                .map(|h| h.as_str().to_owned());
            headers.extend(sticky);
        }
        let reachable = spec
            .split
            .iter()
            .flat_map(|s| s.keys())
            .chain(std::iter::once(&spec.cluster))
            .chain(spec.fallback.iter().flat_map(|f| f.clusters()));
        for cluster in reachable {
            if let Some(header) = self.hash_header(cluster)
                && !headers.contains(&header)
            {
                headers.push(header);
            }
        }
        if headers.len() > 1 {
            self.note(
                format!("$.routes[{}]", quoted(key)),
                format!(
                    "Envoy has one hash policy per route, so the headers {} are hashed together, \
                     for the split and for the endpoint pick alike",
                    headers.join(", ")
                ),
            );
        }
        headers.iter().map(|h| header_hash(h)).collect()
    }

    /// The route's retry policy; without `retry`, the router's single move to another
    /// endpoint after a connect failure.
    fn retry_policy(&mut self, key: &str, spec: &RouteSpec) -> RetryPolicy {
        let Some(retry) = &spec.retry else {
            return RetryPolicy {
                retry_on: "connect-failure".to_owned(),
                num_retries: Some(UInt32Value { value: 1 }),
                ..other_host_retry_policy()
            };
        };
        let conditions = self
            .rules
            .route(key)
            .map(|r| r.retry_on.clone())
            .unwrap_or_default();
        self.retry_policy_of(key, retry, &conditions)
    }

    /// The Envoy retry policy of `retry`, whose `on` entries parsed to `conditions`.
    fn retry_policy_of(
        &mut self,
        key: &str,
        retry: &RetrySpec,
        conditions: &[RetryCondition],
    ) -> RetryPolicy {
        let mut retry_on: Vec<&'static str> = Vec::new();
        let mut codes: Vec<u32> = Vec::new();
        let mut on_timeout = false;
        /// Adds `name` to `on` once.
        fn add(on: &mut Vec<&'static str>, name: &'static str) {
            if !on.contains(&name) {
                on.push(name);
            }
        }
        for (i, (text, condition)) in retry.on.iter().zip(conditions).enumerate() {
            match *condition {
                RetryCondition::ConnectFailure => add(&mut retry_on, "connect-failure"),
                RetryCondition::Reset => add(&mut retry_on, "reset"),
                RetryCondition::Timeout => on_timeout = true,
                RetryCondition::StatusClass(5) => add(&mut retry_on, "5xx"),
                RetryCondition::StatusClass(class) => {
                    let first = u32::from(class) * 100;
                    codes.extend(first..first + 100);
                    add(&mut retry_on, "retriable-status-codes");
                }
                RetryCondition::Status(status) => {
                    codes.push(u32::from(status));
                    add(&mut retry_on, "retriable-status-codes");
                }
                RetryCondition::Grpc(code) => match grpc_retry_on(code) {
                    Some(name) => add(&mut retry_on, name),
                    None => self.note(
                        route_path(key, &format!("retry.on[{i}]")),
                        format!(
                            "Envoy retries no gRPC status {text:?} (only cancelled, \
                             deadline_exceeded, internal, resource_exhausted and unavailable)"
                        ),
                    ),
                },
            }
        }
        // Envoy retries a per-try timeout only under `5xx` or `gateway-error`.
        if on_timeout && !retry_on.contains(&"5xx") {
            add(&mut retry_on, "gateway-error");
        }
        codes.sort_unstable();
        codes.dedup();
        if retry.backoff_ms == 0 {
            self.note(
                route_path(key, "retry.backoff_ms"),
                "Envoy's shortest retry back-off is 1 ms, used instead of 0",
            );
        }
        RetryPolicy {
            retry_on: retry_on.join(","),
            num_retries: Some(UInt32Value {
                value: retry.attempts.saturating_sub(1),
            }),
            per_try_timeout: retry.per_try_timeout_ms.map(millis),
            retriable_status_codes: codes,
            retry_back_off: Some(retry_policy::RetryBackOff {
                base_interval: Some(millis(retry.backoff_ms.max(1))),
                max_interval: None,
            }),
            ..other_host_retry_policy()
        }
    }

    /// The unmapped lines of a route's own fields.
    fn route_notes(&mut self, key: &str, spec: &RouteSpec) {
        if let Some(mirror) = &spec.mirror {
            self.note(
                route_path(key, "mirror.max_in_flight"),
                "Envoy does not bound mirrored requests in flight",
            );
            self.note(
                route_path(key, "mirror.max_buffer_bytes"),
                "Envoy does not bound the body bytes held for a slow mirror apart from the \
                 request's own buffer limit",
            );
            if spec.sticky_header.is_some() && mirror.sample_percent > 0.0 {
                self.note(
                    route_path(key, "mirror.sample_percent"),
                    "Envoy samples mirrored requests at random, not on the sticky header",
                );
            }
        }
        if spec.split.is_some() && spec.sticky_header.is_some() {
            self.note(
                route_path(key, "sticky_header"),
                "Envoy assigns the split by its own hash of the header, not by Lightbulb's \
                 allocation function, so Envoy and the resolver can place a subject on \
                 different clusters",
            );
        }
        if spec.fallback.is_some() {
            self.note(
                route_path(key, "fallback"),
                "Envoy's aggregate cluster moves to the next cluster when one has no healthy \
                 endpoint, not when it is overloaded or every connect attempt failed",
            );
        }
        if spec.max_request_body_bytes.is_some() {
            self.note(
                route_path(key, "max_request_body_bytes"),
                "Envoy has no per-route limit on a streamed request body (the router answers \
                 413 request_body_too_large)",
            );
        }
    }

    /// One unmapped line per tenant limit: the router enforces them, Envoy does not.
    fn tenant_limits(&mut self) {
        let rules = self.rules;
        for (name, tenant) in rules.tenants.iter() {
            let limits = [
                ("max_concurrent", tenant.max_concurrent.is_some()),
                ("requests_per_second", tenant.requests_per_second.is_some()),
                ("burst", tenant.burst.is_some()),
            ];
            for (field, set) in limits {
                if set {
                    self.note(
                        format!("$.tenants[{}].{field}", quoted(name)),
                        "Envoy does not enforce per-tenant limits; only the router does",
                    );
                }
            }
        }
    }

    // === clusters ===

    /// The Envoy cluster of one rule-set cluster, and its EDS load assignment when its
    /// endpoints are all IP addresses.
    fn cluster(
        &mut self,
        name: &str,
        spec: &ClusterSpec,
        valid: &ValidCluster,
        budget: Option<u32>,
    ) -> (Cluster, Option<ClusterLoadAssignment>) {
        let assignment = load_assignment(name, spec, valid);
        let eds = valid.endpoints.iter().all(|e| e.socket.is_some());
        let tls = spec.tls.is_some();
        let mut cluster = Cluster {
            name: name.to_owned(),
            connect_timeout: Some(millis(spec.connect_timeout_ms)),
            lb_policy: envoy_lb_policy(spec.lb_policy) as i32,
            common_lb_config: Some(no_panic_mode()),
            health_checks: spec
                .health_check
                .iter()
                .map(|h| health_check(h, spec.protocol, tls))
                .collect(),
            outlier_detection: spec.outlier_detection.as_ref().map(outlier_detection),
            circuit_breakers: Some(circuit_breakers(spec.circuit_breaker.as_ref(), budget)),
            transport_socket: self.transport_socket(name, spec, valid),
            ..Cluster::default()
        };
        if let Some(options) = protocol_options(spec.protocol, tls) {
            cluster
                .typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&options));
        }
        if eds {
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: String::new(),
            });
            (cluster, Some(assignment))
        } else {
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            cluster.load_assignment = Some(assignment);
            (cluster, None)
        }
    }

    /// The TLS transport socket of a cluster with `tls`.
    fn transport_socket(
        &mut self,
        name: &str,
        spec: &ClusterSpec,
        valid: &ValidCluster,
    ) -> Option<TransportSocket> {
        let tls = spec.tls.as_ref()?;
        let server_names = valid
            .tls
            .as_ref()
            .map(|t| t.server_names.as_slice())
            .unwrap_or_default();
        let mut names: Vec<&str> = Vec::new();
        for server_name in server_names {
            if !names.contains(&&**server_name) {
                names.push(server_name);
            }
        }
        let mut context = UpstreamTlsContext::default();
        let mut san_matchers = Vec::new();
        match names.as_slice() {
            [] => {}
            [one] => {
                if one.parse::<IpAddr>().is_err() {
                    context.sni = (*one).to_owned();
                }
                san_matchers.push(san_matcher(one));
            }
            several if several.iter().all(|n| n.parse::<IpAddr>().is_err()) => {
                // Each endpoint is a DNS name of its own (a STRICT_DNS cluster): Envoy sends
                // each host's name as SNI and checks the certificate against it.
                context.auto_host_sni = true;
                context.auto_sni_san_validation = true;
            }
            several => {
                san_matchers.extend(several.iter().map(|n| san_matcher(n)));
                self.note(
                    format!("$.clusters[{}].tls.server_name", quoted(name)),
                    format!(
                        "each endpoint's certificate must be valid for its own host ({}); Envoy \
                         accepts a certificate valid for any of them",
                        several.join(", ")
                    ),
                );
            }
        }
        let tls_certificates = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..TlsCertificate::default()
            }],
            _ => Vec::new(),
        };
        context.common_tls_context = Some(CommonTlsContext {
            tls_certificates,
            alpn_protocols: alpn(spec.protocol),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(&tls.ca_file)),
                    match_typed_subject_alt_names: san_matchers,
                    ..CertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        });
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
        })
    }
}

// === route helpers ===

/// What the forwarding routes of one routing key share.
#[derive(Debug)]
struct Forwarding {
    /// The route's timeout.
    timeout: Duration,
    /// Its retry policy.
    retry: RetryPolicy,
    /// Its mirror.
    mirror: Option<RequestMirrorPolicy>,
    /// The body bytes kept for retries.
    replay_buffer: Option<UInt64Value>,
}

/// A route matching `headers` (on every path) that forwards to `cluster_specifier`.
fn forwarding_route(
    name: String,
    headers: Vec<HeaderMatcher>,
    cluster_specifier: ClusterSpecifier,
    hash_policy: Vec<HashPolicy>,
    shared: &Forwarding,
) -> Route {
    Route {
        name,
        r#match: Some(prefix_match(headers)),
        request_body_buffer_limit: shared.replay_buffer,
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: Some(shared.timeout),
            retry_policy: Some(shared.retry.clone()),
            hash_policy,
            request_mirror_policies: shared.mirror.iter().cloned().collect(),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}

/// The routes that refuse an unknown traffic class, as the router does before it looks the
/// routing key up.
fn invalid_traffic_class_routes() -> Vec<Route> {
    let matchers = |safe: bool| {
        let mut headers = vec![
            if safe {
                header_regex(ROUTING_HEADER, JSON_SAFE_VALUE)
            } else {
                header_present(ROUTING_HEADER)
            },
            header_present(TRAFFIC_CLASS_HEADER),
        ];
        headers.push(HeaderMatcher {
            invert_match: true,
            ..header_regex(TRAFFIC_CLASS_HEADER, TRAFFIC_CLASSES)
        });
        headers
    };
    vec![
        error_route(
            "invalid_traffic_class".to_owned(),
            matchers(true),
            INVALID_TRAFFIC_CLASS,
            BodyKey::FromHeader,
        ),
        error_route(
            "invalid_traffic_class:unprintable_key".to_owned(),
            matchers(false),
            INVALID_TRAFFIC_CLASS,
            BodyKey::Null,
        ),
    ]
}

/// The 404 routes for a routing key no route has: the key is echoed when it can be put in
/// a JSON string as it is, `null` otherwise.
fn unknown_routing_key_routes() -> Vec<Route> {
    vec![
        error_route(
            "unknown_routing_key".to_owned(),
            vec![header_regex(ROUTING_HEADER, JSON_SAFE_VALUE)],
            UNKNOWN_ROUTING_KEY,
            BodyKey::FromHeader,
        ),
        error_route(
            "unknown_routing_key:unprintable_key".to_owned(),
            vec![header_present(ROUTING_HEADER)],
            UNKNOWN_ROUTING_KEY,
            BodyKey::Null,
        ),
    ]
}

/// The last route: no routing key, 400.
fn missing_routing_key_route() -> Route {
    error_route(
        "missing_routing_key".to_owned(),
        Vec::new(),
        MISSING_ROUTING_KEY,
        BodyKey::Null,
    )
}

/// The `routing_key` of an error body.
#[derive(Debug, Clone, Copy)]
enum BodyKey<'a> {
    /// `null`.
    Null,
    /// This key (a route's own).
    Static(&'a str),
    /// The request's `x-routing-key`, substituted by Envoy.
    FromHeader,
}

/// The router's JSON error body: `{"error":{"code":…,"message":…,"routing_key":…}}`, as a
/// format string (no `%` but in the routing-key command: codes, messages and route keys
/// hold none).
fn error_body(answer: ErrorAnswer, key: BodyKey<'_>) -> String {
    let key = match key {
        BodyKey::Null => "null".to_owned(),
        BodyKey::Static(key) => quoted(key),
        BodyKey::FromHeader => format!("\"%REQ({ROUTING_HEADER})%\""),
    };
    format!(
        r#"{{"error":{{"code":{},"message":{},"routing_key":{key}}}}}"#,
        quoted(answer.code),
        quoted(answer.message),
    )
}

/// A route matching `headers` that Envoy answers itself with the router's JSON error.
fn error_route(
    name: String,
    headers: Vec<HeaderMatcher>,
    answer: ErrorAnswer,
    key: BodyKey<'_>,
) -> Route {
    Route {
        name,
        r#match: Some(prefix_match(headers)),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "content-type".to_owned(),
                value: "application/json".to_owned(),
                ..HeaderValue::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..HeaderValueOption::default()
        }],
        action: Some(Action::DirectResponse(DirectResponseAction {
            status: answer.status,
            body: None,
            body_format: Some(SubstitutionFormatString {
                omit_empty_values: true,
                content_type: "application/json".to_owned(),
                format: Some(Format::TextFormatSource(inline(error_body(answer, key)))),
                ..SubstitutionFormatString::default()
            }),
        })),
        ..Route::default()
    }
}

/// Every path (prefix `/`) with these header matchers.
fn prefix_match(headers: Vec<HeaderMatcher>) -> RouteMatch {
    RouteMatch {
        headers,
        path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
        ..RouteMatch::default()
    }
}

/// Header `name` equals `value`.
fn header_exact(name: &str, value: &str) -> HeaderMatcher {
    header_string_match(name, MatchPattern::Exact(value.to_owned()))
}

/// Header `name` matches the RE2 `regex` (whole value).
fn header_regex(name: &str, regex: &str) -> HeaderMatcher {
    header_string_match(
        name,
        MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.to_owned(),
            engine_type: None,
        }),
    )
}

/// Header `name` matches `pattern`.
fn header_string_match(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            ignore_case: false,
            match_pattern: Some(pattern),
        })),
        ..HeaderMatcher::default()
    }
}

/// Header `name` is present.
fn header_present(name: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
        ..HeaderMatcher::default()
    }
}

/// An RE2 regex matching exactly one of `names`.
fn any_of(names: &[&str]) -> String {
    let alternatives: Vec<String> = names.iter().map(|n| escape_regex(n)).collect();
    format!("^({})$", alternatives.join("|"))
}

/// `text` with every RE2 metacharacter escaped.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A hash policy on header `name`.
fn header_hash(name: &str) -> HashPolicy {
    HashPolicy {
        terminal: false,
        policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: name.to_owned(),
            regex_rewrite: None,
        })),
    }
}

/// A retry policy that moves each retry to an endpoint not tried yet, when there is one.
fn other_host_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 3,
        ..RetryPolicy::default()
    }
}

/// Envoy's `retry_on` name of a gRPC status code, for the five Envoy retries.
fn grpc_retry_on(code: u8) -> Option<&'static str> {
    match code {
        1 => Some("cancelled"),
        4 => Some("deadline-exceeded"),
        8 => Some("resource-exhausted"),
        13 => Some("internal"),
        14 => Some("unavailable"),
        _ => None,
    }
}

/// The route's mirror: a sampled copy to the mirror cluster, marked `x-traffic-class:
/// shadow`, with its `Host` unchanged (as the router sends it).
fn mirror_policy(mirror: &MirrorSpec) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster: mirror.cluster.clone(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fractional_percent(mirror.sample_percent)),
            runtime_key: String::new(),
        }),
        disable_shadow_host_suffix_append: true,
        request_headers_mutations: vec![HeaderMutation {
            action: Some(header_mutation::Action::Append(HeaderValueOption {
                header: Some(HeaderValue {
                    key: TRAFFIC_CLASS_HEADER.to_owned(),
                    value: "shadow".to_owned(),
                    ..HeaderValue::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..HeaderValueOption::default()
            })),
        }],
        ..RequestMirrorPolicy::default()
    }
}

/// `percent` (0 to 100, fractions allowed) in the coarsest exact denominator, down to a
/// millionth.
fn fractional_percent(percent: f64) -> FractionalPercent {
    // In range by validation (0 to 100), so the product fits in u32.
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    let (numerator, denominator) = if per_million.is_multiple_of(10_000) {
        (per_million / 10_000, DenominatorType::Hundred)
    } else if per_million.is_multiple_of(100) {
        (per_million / 100, DenominatorType::TenThousand)
    } else {
        (per_million, DenominatorType::Million)
    };
    FractionalPercent {
        numerator,
        denominator: denominator as i32,
    }
}

// === cluster helpers ===

/// The aggregate cluster that tries `chain` in order.
fn aggregate_cluster(name: &str, chain: &[String], budget: Option<u32>) -> Cluster {
    let config = ClusterConfig {
        clusters: chain.to_vec(),
    };
    Cluster {
        name: name.to_owned(),
        lb_policy: EnvoyLbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: "envoy.clusters.aggregate".to_owned(),
            typed_config: Some(any(&config)),
        })),
        common_lb_config: Some(no_panic_mode()),
        // Of an aggregate cluster's circuit breakers Envoy uses only the retry limits.
        circuit_breakers: budget.map(|percent| CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::Default as i32,
                retry_budget: Some(retry_budget(percent)),
                ..Thresholds::default()
            }],
            per_host_thresholds: Vec::new(),
        }),
        ..Cluster::default()
    }
}

/// Envoy's load-balancing policy for the rule set's (weights and hash headers are set
/// elsewhere).
fn envoy_lb_policy(policy: LbPolicy) -> EnvoyLbPolicy {
    match policy {
        LbPolicy::RoundRobin | LbPolicy::WeightedRoundRobin => EnvoyLbPolicy::RoundRobin,
        LbPolicy::Random => EnvoyLbPolicy::Random,
        LbPolicy::LeastRequest => EnvoyLbPolicy::LeastRequest,
        LbPolicy::RingHash => EnvoyLbPolicy::RingHash,
        LbPolicy::Maglev => EnvoyLbPolicy::Maglev,
    }
}

/// Panic mode off: Envoy believes its health checks even when every endpoint fails them,
/// as the router does (Envoy's default sends to every endpoint below 50 % healthy).
fn no_panic_mode() -> CommonLbConfig {
    CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..CommonLbConfig::default()
    }
}

/// Every endpoint of the cluster in one locality; weights only for the policies that use
/// them, and only when some endpoint has one.
fn load_assignment(name: &str, spec: &ClusterSpec, valid: &ValidCluster) -> ClusterLoadAssignment {
    let uses_weights = matches!(
        spec.lb_policy,
        LbPolicy::WeightedRoundRobin | LbPolicy::RingHash | LbPolicy::Maglev
    ) && valid.endpoints.iter().any(|e| e.weight != 1);
    let lb_endpoints = valid
        .endpoints
        .iter()
        .map(|endpoint| {
            let (host, port) = match endpoint.socket {
                Some(socket) => (socket.ip().to_string(), u32::from(socket.port())),
                // Validation requires a port on every endpoint.
                None => (
                    endpoint.authority.host().to_owned(),
                    endpoint.authority.port_u16().map_or(0, u32::from),
                ),
            };
            LbEndpoint {
                load_balancing_weight: uses_weights.then_some(UInt32Value {
                    value: endpoint.weight,
                }),
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(host, port)),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        policy: Some(Policy {
            overprovisioning_factor: Some(UInt32Value {
                value: OVERPROVISIONING_FACTOR,
            }),
            ..Policy::default()
        }),
        ..ClusterLoadAssignment::default()
    }
}

/// A TCP socket address.
fn socket_address(host: String, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: host,
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// Resources over ADS, API v3.
fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

/// The HTTP upstream options of `protocol`: none for `http1` (Envoy's default), HTTP/2 with
/// prior knowledge for `http2`, and for `auto` the client's version in plaintext or the
/// version ALPN picks over TLS.
fn protocol_options(protocol: Protocol, tls: bool) -> Option<HttpProtocolOptions> {
    let options = match protocol {
        Protocol::Http1 => return None,
        Protocol::Http2 => UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )),
        }),
        Protocol::Auto if tls => UpstreamProtocolOptions::AutoConfig(AutoHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..AutoHttpConfig::default()
        }),
        Protocol::Auto => {
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                http3_protocol_options: None,
            })
        }
    };
    Some(HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..HttpProtocolOptions::default()
    })
}

/// The ALPN protocols offered for `protocol`.
fn alpn(protocol: Protocol) -> Vec<String> {
    let names: &[&str] = match protocol {
        Protocol::Http1 => &["http/1.1"],
        Protocol::Http2 => &["h2"],
        Protocol::Auto => &["h2", "http/1.1"],
    };
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The active health check: every `interval_ms` (plus up to 10 % jitter, traffic or not),
/// HTTP `GET http_path` healthy on 2xx or `expected_statuses`, or `grpc.health.v1`.
fn health_check(spec: &HealthCheckSpec, protocol: Protocol, tls: bool) -> HealthCheck {
    let (checker, probe_alpn) = match &spec.grpc_service {
        Some(service) => (
            HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: service.clone(),
                ..GrpcHealthCheck::default()
            }),
            "h2",
        ),
        None => {
            let expected_statuses = if spec.expected_statuses.is_empty() {
                vec![Int64Range {
                    start: 200,
                    end: 300,
                }]
            } else {
                spec.expected_statuses
                    .iter()
                    .map(|s| Int64Range {
                        start: i64::from(*s),
                        end: i64::from(*s) + 1,
                    })
                    .collect()
            };
            let (codec, probe_alpn) = match protocol {
                Protocol::Http2 => (CodecClientType::Http2, "h2"),
                Protocol::Http1 | Protocol::Auto => (CodecClientType::Http1, "http/1.1"),
            };
            (
                HealthChecker::HttpHealthCheck(HttpHealthCheck {
                    path: spec.http_path.clone().unwrap_or_else(|| "/".to_owned()),
                    expected_statuses,
                    codec_client_type: codec as i32,
                    ..HttpHealthCheck::default()
                }),
                probe_alpn,
            )
        }
    };
    let interval = millis(spec.interval_ms);
    HealthCheck {
        timeout: Some(millis(spec.timeout_ms())),
        interval: Some(interval),
        no_traffic_interval: Some(interval),
        interval_jitter_percent: 10,
        unhealthy_threshold: Some(UInt32Value {
            value: spec.unhealthy_threshold,
        }),
        healthy_threshold: Some(UInt32Value {
            value: spec.healthy_threshold,
        }),
        tls_options: tls.then(|| TlsOptions {
            alpn_protocols: vec![probe_alpn.to_owned()],
        }),
        health_checker: Some(checker),
        ..HealthCheck::default()
    }
}

/// Consecutive-error ejection only (Envoy's success-rate detection off), enforced every
/// time.
fn outlier_detection(spec: &OutlierDetectionSpec) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: Some(UInt32Value {
            value: spec.consecutive_5xx,
        }),
        consecutive_gateway_failure: Some(UInt32Value {
            value: spec.consecutive_gateway_failures,
        }),
        enforcing_consecutive_5xx: Some(UInt32Value { value: 100 }),
        enforcing_consecutive_gateway_failure: Some(UInt32Value { value: 100 }),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        base_ejection_time: Some(millis(spec.base_ejection_ms)),
        max_ejection_time: Some(millis(spec.max_ejection_ms())),
        max_ejection_percent: Some(UInt32Value {
            value: spec.max_ejection_percent,
        }),
        split_external_local_origin_errors: false,
        ..OutlierDetection::default()
    }
}

/// The default-priority limits: the rule set's, or none (Envoy's 1024 defaults lifted, as
/// an absent `circuit_breaker` means no limits); connections are never limited.
fn circuit_breakers(spec: Option<&CircuitBreakerSpec>, budget: Option<u32>) -> CircuitBreakers {
    let limit = |value: Option<u32>| {
        Some(UInt32Value {
            value: value.unwrap_or(u32::MAX),
        })
    };
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: limit(None),
            max_pending_requests: limit(spec.map(|s| s.max_pending)),
            max_requests: limit(spec.map(|s| s.max_requests)),
            retry_budget: budget.map(retry_budget),
            ..Thresholds::default()
        }],
        per_host_thresholds: Vec::new(),
    }
}

/// Retries in flight at most `percent` of the requests in flight, at least 3.
fn retry_budget(percent: u32) -> RetryBudget {
    RetryBudget {
        budget_percent: Some(Percent {
            value: f64::from(percent),
        }),
        min_retry_concurrency: Some(UInt32Value {
            value: MIN_RETRY_CONCURRENCY,
        }),
        budget_interval: None,
    }
}

/// A SAN matcher for `name`: an IP address SAN for an address, a DNS SAN otherwise.
fn san_matcher(name: &str) -> SubjectAltNameMatcher {
    let (san_type, value) = match name.parse::<IpAddr>() {
        Ok(ip) => (SanType::IpAddress, ip.to_string()),
        Err(_) => (SanType::Dns, name.to_ascii_lowercase()),
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Exact(value)),
        }),
        oid: String::new(),
    }
}

// === small values ===

/// `message` as an `Any`.
fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// `ms` milliseconds.
fn millis(ms: u64) -> Duration {
    Duration {
        // At most 3600000 ms by validation: both fit.
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A file Envoy reads.
fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_owned())),
        ..DataSource::default()
    }
}

/// An inline string.
fn inline(text: String) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineString(text)),
        ..DataSource::default()
    }
}

/// `text` as a JSON string.
fn quoted(text: &str) -> String {
    // Serializing a str to JSON cannot fail.
    serde_json::to_string(text).unwrap_or_default()
}

/// `$.routes["key"].field`.
fn route_path(key: &str, field: &str) -> String {
    format!("$.routes[{}].{field}", quoted(key))
}

#[cfg(test)]
mod tests;
