//! The mapping, field by field: rule sets from JSON, resources decoded back into Envoy's
//! types.

use serde_json::Value;

use super::*;

fn parse(json: &str) -> ValidRuleSet {
    models_config::parse(json).expect("a valid rule set")
}

fn mapped(json: &str) -> Resources {
    map(&parse(json))
}

fn full() -> Resources {
    mapped(include_str!("../../../../models-config/examples/full.json"))
}

fn cluster(resources: &Resources, name: &str) -> Cluster {
    let any = resources
        .clusters
        .get(name)
        .unwrap_or_else(|| panic!("no cluster {name}: {:?}", resources.clusters.keys()));
    assert_eq!(any.type_url, CLUSTER_TYPE);
    Cluster::decode(any.value.as_slice()).expect("a Cluster")
}

fn assignment(resources: &Resources, name: &str) -> ClusterLoadAssignment {
    let any = resources.endpoints.get(name).expect("an EDS entry");
    assert_eq!(any.type_url, ENDPOINT_TYPE);
    ClusterLoadAssignment::decode(any.value.as_slice()).expect("a ClusterLoadAssignment")
}

fn route_configuration(resources: &Resources) -> RouteConfiguration {
    assert_eq!(
        resources.routes.keys().collect::<Vec<_>>(),
        [ROUTE_CONFIG_NAME]
    );
    let any = &resources.routes[ROUTE_CONFIG_NAME];
    assert_eq!(any.type_url, ROUTE_TYPE);
    RouteConfiguration::decode(any.value.as_slice()).expect("a RouteConfiguration")
}

fn routes(resources: &Resources) -> Vec<Route> {
    let mut config = route_configuration(resources);
    assert_eq!(config.name, ROUTE_CONFIG_NAME);
    assert_eq!(config.virtual_hosts.len(), 1);
    let host = config.virtual_hosts.remove(0);
    assert_eq!(host.name, ROUTE_CONFIG_NAME);
    assert_eq!(host.domains, ["*"]);
    host.routes
}

fn route(resources: &Resources, name: &str) -> Route {
    routes(resources)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

fn route_names(resources: &Resources) -> Vec<String> {
    routes(resources).into_iter().map(|r| r.name).collect()
}

fn action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(action)) => action,
        other => panic!("route {} forwards nowhere: {other:?}", route.name),
    }
}

fn direct(route: &Route) -> &DirectResponseAction {
    match &route.action {
        Some(Action::DirectResponse(answer)) => answer,
        other => panic!("route {} is not a direct response: {other:?}", route.name),
    }
}

/// The body format string of a direct response.
fn body_text(route: &Route) -> String {
    let format = direct(route).body_format.as_ref().expect("a body format");
    assert_eq!(format.content_type, "application/json");
    match &format.format {
        Some(Format::TextFormatSource(DataSource {
            specifier: Some(Specifier::InlineString(text)),
            ..
        })) => text.clone(),
        other => panic!("not an inline text format: {other:?}"),
    }
}

/// The body as the client gets it when the request's routing key is `key`.
fn body_json(route: &Route, key: &str) -> Value {
    let text = body_text(route).replace("%REQ(x-routing-key)%", key);
    serde_json::from_str(&text).expect("a JSON body")
}

fn target(action: &RouteAction) -> &str {
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => name,
        other => panic!("not one cluster: {other:?}"),
    }
}

fn weighted(action: &RouteAction) -> &WeightedCluster {
    match &action.cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(weighted)) => weighted,
        other => panic!("not weighted clusters: {other:?}"),
    }
}

fn weights(action: &RouteAction) -> Vec<(String, u32)> {
    weighted(action)
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
        .collect()
}

fn hash_headers(action: &RouteAction) -> Vec<&str> {
    action
        .hash_policy
        .iter()
        .map(|p| match &p.policy_specifier {
            Some(hash_policy::PolicySpecifier::Header(h)) => h.header_name.as_str(),
            other => panic!("not a header hash: {other:?}"),
        })
        .collect()
}

fn discovery_type(cluster: &Cluster) -> Option<DiscoveryType> {
    match &cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).ok(),
        _ => None,
    }
}

fn lb_policy(cluster: &Cluster) -> EnvoyLbPolicy {
    EnvoyLbPolicy::try_from(cluster.lb_policy).expect("a known policy")
}

fn http_options(cluster: &Cluster) -> Option<UpstreamProtocolOptions> {
    assert!(cluster.typed_extension_protocol_options.len() <= 1);
    let any = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)?;
    assert_eq!(any.type_url, HttpProtocolOptions::type_url());
    let options = HttpProtocolOptions::decode(any.value.as_slice()).expect("protocol options");
    options.upstream_protocol_options
}

fn tls_context(cluster: &Cluster) -> UpstreamTlsContext {
    let socket = cluster
        .transport_socket
        .as_ref()
        .expect("a transport socket");
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => {
            assert_eq!(any.type_url, UpstreamTlsContext::type_url());
            UpstreamTlsContext::decode(any.value.as_slice()).expect("a TLS context")
        }
        None => panic!("no TLS config"),
    }
}

fn validation(context: &UpstreamTlsContext) -> &CertificateValidationContext {
    match context
        .common_tls_context
        .as_ref()
        .and_then(|c| c.validation_context_type.as_ref())
    {
        Some(ValidationContextType::ValidationContext(v)) => v,
        other => panic!("no validation context: {other:?}"),
    }
}

fn sans(context: &UpstreamTlsContext) -> Vec<(SanType, String)> {
    validation(context)
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            let value = match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(v)) => v.clone(),
                other => panic!("not exact: {other:?}"),
            };
            (SanType::try_from(m.san_type).expect("a SAN type"), value)
        })
        .collect()
}

fn threshold(cluster: &Cluster) -> &Thresholds {
    let breakers = cluster.circuit_breakers.as_ref().expect("circuit breakers");
    assert_eq!(breakers.thresholds.len(), 1);
    let threshold = &breakers.thresholds[0];
    assert_eq!(threshold.priority, RoutingPriority::Default as i32);
    threshold
}

fn budget(cluster: &Cluster) -> Option<(f64, u32)> {
    let budget = cluster
        .circuit_breakers
        .as_ref()?
        .thresholds
        .first()?
        .retry_budget
        .as_ref()?;
    Some((
        budget.budget_percent.as_ref().map_or(-1.0, |p| p.value),
        budget.min_retry_concurrency.as_ref().map_or(0, |m| m.value),
    ))
}

fn value(v: &Option<UInt32Value>) -> Option<u32> {
    v.as_ref().map(|v| v.value)
}

fn ms(d: &Option<Duration>) -> Option<u64> {
    d.as_ref()
        .map(|d| d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000)
}

/// The JSON path of each unmapped line (before `: `).
fn unmapped_paths(resources: &Resources) -> Vec<&str> {
    resources
        .unmapped
        .iter()
        .map(|line| {
            let (path, why) = line.split_once(": ").expect("path: reason");
            assert!(path.starts_with("$."), "{line}");
            assert!(!why.is_empty(), "{line}");
            path
        })
        .collect()
}

fn header_names(route: &Route) -> Vec<&str> {
    route
        .r#match
        .as_ref()
        .map(|m| m.headers.iter().map(|h| h.name.as_str()).collect())
        .unwrap_or_default()
}

fn header_pattern<'a>(route: &'a Route, name: &str) -> &'a HeaderMatchSpecifier {
    route
        .r#match
        .as_ref()
        .and_then(|m| m.headers.iter().find(|h| h.name == name))
        .and_then(|h| h.header_match_specifier.as_ref())
        .unwrap_or_else(|| panic!("route {} does not match {name}", route.name))
}

fn header_regex_of(route: &Route, name: &str) -> String {
    let found = route
        .r#match
        .as_ref()
        .and_then(|m| {
            m.headers.iter().find(|h| {
                h.name == name
                    && !h.invert_match
                    && matches!(
                        &h.header_match_specifier,
                        Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(_)),
                            ..
                        }))
                    )
            })
        })
        .and_then(|h| match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(r)),
                ..
            })) => Some(r.regex.clone()),
            _ => None,
        });
    found.unwrap_or_else(|| panic!("route {} has no regex on {name}", route.name))
}

fn exact_key(route: &Route) -> &str {
    match header_pattern(route, ROUTING_HEADER) {
        HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(key)),
            ..
        }) => key,
        other => panic!("not an exact key match: {other:?}"),
    }
}

// === the API ===

#[test]
fn resources_by_type_and_version() {
    let resources = full();
    assert_eq!(resources.version, 42);
    assert_eq!(resources.of_type(CLUSTER_TYPE), Some(&resources.clusters));
    assert_eq!(resources.of_type(ENDPOINT_TYPE), Some(&resources.endpoints));
    assert_eq!(resources.of_type(ROUTE_TYPE), Some(&resources.routes));
    assert_eq!(
        resources.of_type("type.googleapis.com/envoy.config.listener.v3.Listener"),
        None
    );
    for (name, any) in &resources.clusters {
        assert_eq!(cluster(&resources, name).name, *name);
        assert_eq!(any.type_url, CLUSTER_TYPE);
    }
    for name in resources.endpoints.keys() {
        assert_eq!(assignment(&resources, name).cluster_name, *name);
    }
}

#[test]
fn the_same_rule_set_maps_to_the_same_bytes() {
    let text = include_str!("../../../../models-config/examples/full.json");
    let first = map(&parse(text));
    assert_eq!(first, map(&parse(text)));
    // The same document with every object's keys in reverse order.
    let reordered = reversed(&serde_json::from_str(text).expect("JSON"));
    assert_ne!(
        reordered.replace([' ', '\n'], ""),
        text.replace([' ', '\n'], "")
    );
    assert_eq!(first, map(&parse(&reordered)));
}

/// `value` as JSON text with the keys of every object in reverse order.
fn reversed(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", quoted(k), reversed(v)))
                .collect();
            format!("{{{}}}", entries.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reversed).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

#[test]
fn full_example_maps_and_lists_what_envoy_cannot_do() {
    let resources = full();
    let clusters: Vec<&str> = resources.clusters.keys().map(String::as_str).collect();
    assert_eq!(
        clusters,
        [
            "fallback:fraud-v4,fraud-v3",
            "fallback:llm-small,llm-large",
            "fallback:ranker-v1,ranker-v2",
            "fallback:ranker-v2,ranker-v1,ranker-synthetic",
            "fraud-v3",
            "fraud-v4",
            "llm-large",
            "llm-small",
            "ranker-synthetic",
            "ranker-v1",
            "ranker-v2",
        ]
    );
    // Every endpoint of the example is an IP address.
    assert_eq!(
        resources.endpoints.keys().collect::<Vec<_>>(),
        [
            "fraud-v3",
            "fraud-v4",
            "llm-large",
            "llm-small",
            "ranker-synthetic",
            "ranker-v1",
            "ranker-v2"
        ]
    );
    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["fraud-v4"].sticky_header"#,
            r#"$.routes["fraud-v4"].fallback"#,
            r#"$.routes["llm-small"].mirror.max_in_flight"#,
            r#"$.routes["llm-small"].mirror.max_buffer_bytes"#,
            r#"$.routes["llm-small"].fallback"#,
            r#"$.routes["ranker-v1"].fallback"#,
            r#"$.routes["ranker-v1"].max_request_body_bytes"#,
            r#"$.routes["ranker-v2"].fallback"#,
            r#"$.tenants["homepage"].max_concurrent"#,
            r#"$.tenants["kids"].max_concurrent"#,
            r#"$.tenants["kids"].requests_per_second"#,
            r#"$.tenants["kids"].burst"#,
            r#"$.tenants["payments"].requests_per_second"#,
        ],
        "{:#?}",
        resources.unmapped
    );
    assert_eq!(
        resources.unmapped[2],
        r#"$.routes["llm-small"].mirror.max_in_flight: Envoy does not bound mirrored requests in flight"#
    );
    assert_eq!(
        route_names(&resources),
        [
            "invalid_traffic_class",
            "invalid_traffic_class:unprintable_key",
            "route:fraud-v3",
            "route:fraud-v4",
            "route:llm-large",
            "route:llm-small",
            "route:ranker-synthetic",
            "synthetic:ranker-v1",
            "route:ranker-v1",
            "tenant_not_allowed:ranker-v1",
            "route:ranker-v2",
            "unknown_routing_key",
            "unknown_routing_key:unprintable_key",
            "missing_routing_key",
        ]
    );
}

// === clusters ===

#[test]
fn ip_endpoints_go_over_eds_and_dns_names_are_strict_dns() {
    let resources = mapped(
        r#"{
            "clusters": {
                "ips": { "endpoints": [{ "address": "10.0.0.1:9000", "weight": 3 }, "[::1]:9001"],
                         "lb_policy": "weighted_round_robin" },
                "dns": { "endpoints": ["model.internal:8080", "10.0.0.2:9000"] },
                "rr": { "endpoints": [{ "address": "10.0.0.3:9000", "weight": 5 }] }
            },
            "routes": { "a": { "cluster": "ips" }, "b": { "cluster": "dns" }, "c": { "cluster": "rr" } }
        }"#,
    );
    let ips = cluster(&resources, "ips");
    assert_eq!(discovery_type(&ips), Some(DiscoveryType::Eds));
    assert_eq!(ips.load_assignment, None);
    let eds = ips.eds_cluster_config.expect("EDS config");
    let source = eds.eds_config.expect("a config source");
    assert_eq!(source.resource_api_version, ApiVersion::V3 as i32);
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    let cla = assignment(&resources, "ips");
    assert_eq!(cla.endpoints.len(), 1);
    let endpoints: Vec<(String, u32, Option<u32>)> = cla.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| {
            let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                panic!("not an endpoint");
            };
            let Some(AddressKind::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("not a socket address");
            };
            let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
                panic!("no port");
            };
            (
                socket.address.clone(),
                port,
                value(&e.load_balancing_weight),
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            ("10.0.0.1".to_owned(), 9000, Some(3)),
            ("::1".to_owned(), 9001, Some(1))
        ]
    );
    assert_eq!(
        value(&cla.policy.and_then(|p| p.overprovisioning_factor)),
        Some(OVERPROVISIONING_FACTOR)
    );

    let dns = cluster(&resources, "dns");
    assert_eq!(discovery_type(&dns), Some(DiscoveryType::StrictDns));
    assert_eq!(dns.eds_cluster_config, None);
    assert!(!resources.endpoints.contains_key("dns"));
    let inline = dns.load_assignment.expect("inline endpoints");
    assert_eq!(inline.cluster_name, "dns");
    assert_eq!(inline.endpoints[0].lb_endpoints.len(), 2);
    let Some(HostIdentifier::Endpoint(first)) =
        &inline.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!("not an endpoint");
    };
    assert!(matches!(
        first.address.as_ref().and_then(|a| a.address.as_ref()),
        Some(AddressKind::SocketAddress(s)) if s.address == "model.internal"
            && s.port_specifier == Some(PortSpecifier::PortValue(8080))
    ));

    // Round robin ignores weights, as the router does.
    let rr = assignment(&resources, "rr");
    assert_eq!(rr.endpoints[0].lb_endpoints[0].load_balancing_weight, None);
}

#[test]
fn timeouts_connect_per_cluster_and_request_per_route() {
    let resources = mapped(
        r#"{
            "clusters": {
                "a": { "endpoints": ["10.0.0.1:1"], "connect_timeout_ms": 250, "request_timeout_ms": 1500 },
                "b": { "endpoints": ["10.0.0.2:1"] }
            },
            "routes": {
                "own": { "cluster": "a" },
                "override": { "cluster": "a", "timeout_ms": 40 },
                "default": { "cluster": "b" }
            }
        }"#,
    );
    let a = cluster(&resources, "a");
    assert_eq!(
        a.connect_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
    assert_eq!(ms(&cluster(&resources, "b").connect_timeout), Some(1000));
    assert_eq!(
        action(&route(&resources, "route:own")).timeout,
        Some(Duration {
            seconds: 1,
            nanos: 500_000_000
        })
    );
    assert_eq!(
        ms(&action(&route(&resources, "route:override")).timeout),
        Some(40)
    );
    assert_eq!(
        ms(&action(&route(&resources, "route:default")).timeout),
        Some(30_000)
    );
}

#[test]
fn protocols_become_http_upstream_options() {
    let resources = mapped(
        r#"{
            "clusters": {
                "h1": { "endpoints": ["10.0.0.1:1"] },
                "h2": { "endpoints": ["10.0.0.2:1"], "protocol": "http2" },
                "auto": { "endpoints": ["10.0.0.3:1"], "protocol": "auto" },
                "auto-tls": { "endpoints": ["10.0.0.4:1"], "protocol": "auto",
                              "tls": { "ca_file": "/ca.pem", "server_name": "m.internal" } }
            },
            "routes": { "a": { "cluster": "h1" }, "b": { "cluster": "h2" }, "c": { "cluster": "auto" },
                        "d": { "cluster": "auto-tls" } }
        }"#,
    );
    assert!(
        cluster(&resources, "h1")
            .typed_extension_protocol_options
            .is_empty()
    );
    assert!(matches!(
        http_options(&cluster(&resources, "h2")),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    _
                ))
            }
        ))
    ));
    assert!(matches!(
        http_options(&cluster(&resources, "auto")),
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(_),
                http2_protocol_options: Some(_),
                http3_protocol_options: None,
            }
        ))
    ));
    // Over TLS, `auto` speaks what ALPN picks.
    let auto_tls = cluster(&resources, "auto-tls");
    assert!(matches!(
        http_options(&auto_tls),
        Some(UpstreamProtocolOptions::AutoConfig(AutoHttpConfig {
            http_protocol_options: Some(_),
            http2_protocol_options: Some(_),
            ..
        }))
    ));
    let alpn = tls_context(&auto_tls)
        .common_tls_context
        .expect("common")
        .alpn_protocols;
    assert_eq!(alpn, ["h2", "http/1.1"]);
}

#[test]
fn every_lb_policy_and_hash_headers_on_the_routes() {
    let resources = mapped(
        r#"{
            "clusters": {
                "rr": { "endpoints": ["10.0.0.1:1"], "lb_policy": "round_robin" },
                "wrr": { "endpoints": [{ "address": "10.0.0.2:1", "weight": 2 }, "10.0.0.3:1"],
                         "lb_policy": "weighted_round_robin" },
                "random": { "endpoints": ["10.0.0.4:1"], "lb_policy": "random" },
                "lr": { "endpoints": ["10.0.0.5:1"], "lb_policy": "least_request" },
                "ring": { "endpoints": ["10.0.0.6:1"], "lb_policy": "ring_hash", "hash_header": "X-Session" },
                "maglev": { "endpoints": ["10.0.0.7:1"], "lb_policy": "maglev", "hash_header": "x-user" }
            },
            "routes": {
                "rr": { "cluster": "rr" }, "wrr": { "cluster": "wrr" }, "random": { "cluster": "random" },
                "lr": { "cluster": "lr" }, "ring": { "cluster": "ring" }, "maglev": { "cluster": "maglev" }
            }
        }"#,
    );
    let policies = [
        ("rr", EnvoyLbPolicy::RoundRobin),
        ("wrr", EnvoyLbPolicy::RoundRobin),
        ("random", EnvoyLbPolicy::Random),
        ("lr", EnvoyLbPolicy::LeastRequest),
        ("ring", EnvoyLbPolicy::RingHash),
        ("maglev", EnvoyLbPolicy::Maglev),
    ];
    for (name, policy) in policies {
        assert_eq!(lb_policy(&cluster(&resources, name)), policy, "{name}");
    }
    let wrr = assignment(&resources, "wrr");
    let weights: Vec<Option<u32>> = wrr.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| value(&e.load_balancing_weight))
        .collect();
    assert_eq!(weights, [Some(2), Some(1)]);
    // The hash header (lowercased) goes on the routes that use the cluster.
    assert_eq!(
        hash_headers(action(&route(&resources, "route:ring"))),
        ["x-session"]
    );
    assert_eq!(
        hash_headers(action(&route(&resources, "route:maglev"))),
        ["x-user"]
    );
    assert!(
        hash_headers(action(&route(&resources, "route:rr"))).is_empty(),
        "no hash without a hashing cluster"
    );
    assert!(resources.unmapped.is_empty(), "{:?}", resources.unmapped);
}

#[test]
fn http_and_grpc_health_checks_with_the_spec_defaults() {
    let resources = mapped(
        r#"{
            "clusters": {
                "defaults": { "endpoints": ["10.0.0.1:1"], "health_check": { "http_path": "/ready" } },
                "statuses": { "endpoints": ["10.0.0.2:1"], "protocol": "http2",
                              "health_check": { "http_path": "/v2/health/ready", "expected_statuses": [200, 204],
                                                "interval_ms": 5000, "timeout_ms": 800,
                                                "unhealthy_threshold": 4, "healthy_threshold": 3 } },
                "grpc": { "endpoints": ["10.0.0.3:1"], "protocol": "http2",
                          "health_check": { "grpc_service": "", "interval_ms": 500 } },
                "none": { "endpoints": ["10.0.0.4:1"] }
            },
            "routes": { "a": { "cluster": "defaults" }, "b": { "cluster": "statuses" },
                        "c": { "cluster": "grpc" }, "d": { "cluster": "none" } }
        }"#,
    );
    let check = |name: &str| {
        let mut checks = cluster(&resources, name).health_checks;
        assert_eq!(checks.len(), 1, "{name}");
        checks.remove(0)
    };
    let defaults = check("defaults");
    assert_eq!(ms(&defaults.interval), Some(1000));
    assert_eq!(ms(&defaults.no_traffic_interval), Some(1000));
    assert_eq!(ms(&defaults.timeout), Some(500));
    assert_eq!(value(&defaults.unhealthy_threshold), Some(2));
    assert_eq!(value(&defaults.healthy_threshold), Some(1));
    assert_eq!(defaults.interval_jitter_percent, 10);
    assert_eq!(defaults.tls_options, None);
    let Some(HealthChecker::HttpHealthCheck(http)) = &defaults.health_checker else {
        panic!("not an HTTP check");
    };
    assert_eq!(http.path, "/ready");
    assert_eq!(
        http.expected_statuses,
        [Int64Range {
            start: 200,
            end: 300
        }],
        "any 2xx"
    );
    assert_eq!(http.codec_client_type, CodecClientType::Http1 as i32);

    let statuses = check("statuses");
    assert_eq!(ms(&statuses.interval), Some(5000));
    assert_eq!(ms(&statuses.timeout), Some(800));
    assert_eq!(value(&statuses.unhealthy_threshold), Some(4));
    assert_eq!(value(&statuses.healthy_threshold), Some(3));
    let Some(HealthChecker::HttpHealthCheck(http)) = &statuses.health_checker else {
        panic!("not an HTTP check");
    };
    assert_eq!(
        http.expected_statuses,
        [
            Int64Range {
                start: 200,
                end: 201
            },
            Int64Range {
                start: 204,
                end: 205
            }
        ]
    );
    assert_eq!(http.codec_client_type, CodecClientType::Http2 as i32);

    let grpc = check("grpc");
    assert_eq!(ms(&grpc.interval), Some(500));
    assert_eq!(ms(&grpc.timeout), Some(250), "half the interval");
    assert!(matches!(
        &grpc.health_checker,
        Some(HealthChecker::GrpcHealthCheck(g)) if g.service_name.is_empty()
    ));

    assert!(cluster(&resources, "none").health_checks.is_empty());
    // Envoy believes its checks even when every endpoint fails them.
    let lb = cluster(&resources, "none")
        .common_lb_config
        .expect("lb config");
    assert_eq!(lb.healthy_panic_threshold, Some(Percent { value: 0.0 }));
}

#[test]
fn outlier_detection_enforces_consecutive_errors() {
    let resources = mapped(
        r#"{
            "clusters": {
                "set": { "endpoints": ["10.0.0.1:1"],
                         "outlier_detection": { "consecutive_5xx": 7, "consecutive_gateway_failures": 2,
                                                "base_ejection_ms": 10000, "max_ejection_ms": 60000,
                                                "max_ejection_percent": 30 } },
                "defaults": { "endpoints": ["10.0.0.2:1"], "outlier_detection": {} },
                "off": { "endpoints": ["10.0.0.3:1"] }
            },
            "routes": { "a": { "cluster": "set" }, "b": { "cluster": "defaults" }, "c": { "cluster": "off" } }
        }"#,
    );
    let set = cluster(&resources, "set")
        .outlier_detection
        .expect("outlier detection");
    assert_eq!(value(&set.consecutive_5xx), Some(7));
    assert_eq!(value(&set.consecutive_gateway_failure), Some(2));
    assert_eq!(value(&set.enforcing_consecutive_5xx), Some(100));
    assert_eq!(value(&set.enforcing_consecutive_gateway_failure), Some(100));
    assert_eq!(value(&set.enforcing_success_rate), Some(0));
    assert_eq!(ms(&set.base_ejection_time), Some(10_000));
    assert_eq!(ms(&set.max_ejection_time), Some(60_000));
    assert_eq!(value(&set.max_ejection_percent), Some(30));
    assert!(!set.split_external_local_origin_errors);

    let defaults = cluster(&resources, "defaults")
        .outlier_detection
        .expect("outlier detection");
    assert_eq!(value(&defaults.consecutive_5xx), Some(5));
    assert_eq!(value(&defaults.consecutive_gateway_failure), Some(3));
    assert_eq!(ms(&defaults.base_ejection_time), Some(30_000));
    assert_eq!(ms(&defaults.max_ejection_time), Some(300_000));
    assert_eq!(value(&defaults.max_ejection_percent), Some(50));

    assert_eq!(cluster(&resources, "off").outlier_detection, None);
}

#[test]
fn circuit_breakers_and_retry_budgets() {
    let resources = mapped(
        r#"{
            "clusters": {
                "limited": { "endpoints": ["10.0.0.1:1"],
                             "circuit_breaker": { "max_requests": 100, "max_pending": 10 } },
                "open": { "endpoints": ["10.0.0.2:1"] },
                "shared": { "endpoints": ["10.0.0.3:1"] }
            },
            "routes": {
                "a": { "cluster": "limited", "retry": { "budget_percent": 25 } },
                "b": { "cluster": "open" },
                "c": { "cluster": "shared", "retry": { "budget_percent": 10 } },
                "d": { "cluster": "shared", "retry": { "budget_percent": 40 } },
                "e": { "cluster": "shared", "retry": {} }
            }
        }"#,
    );
    let limited = cluster(&resources, "limited");
    let t = threshold(&limited);
    assert_eq!(value(&t.max_requests), Some(100));
    assert_eq!(value(&t.max_pending_requests), Some(10));
    assert_eq!(value(&t.max_connections), Some(u32::MAX));
    assert_eq!(budget(&limited), Some((25.0, 3)));

    // No `circuit_breaker`: no limits, not Envoy's 1024.
    let open = cluster(&resources, "open");
    let t = threshold(&open);
    assert_eq!(value(&t.max_requests), Some(u32::MAX));
    assert_eq!(value(&t.max_pending_requests), Some(u32::MAX));
    assert_eq!(budget(&open), None);

    // Three routes on one cluster: the largest budget, and a line for each disagreement.
    assert_eq!(budget(&cluster(&resources, "shared")), Some((40.0, 3)));
    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["d"].retry.budget_percent"#,
            r#"$.routes["e"].retry.budget_percent"#
        ]
    );
    assert!(
        resources.unmapped[0].contains(r#"cluster "shared" also serves route "c""#)
            && resources.unmapped[0].contains("40 %"),
        "{}",
        resources.unmapped[0]
    );
}

#[test]
fn tls_with_a_server_name_and_a_client_certificate() {
    let resources = mapped(
        r#"{
            "clusters": {
                "fraud": { "endpoints": ["10.0.1.1:8001", "10.0.1.2:8001"], "protocol": "http2",
                           "health_check": { "grpc_service": "" },
                           "tls": { "ca_file": "/etc/router/ca.pem", "server_name": "Fraud.Internal",
                                    "cert_file": "/etc/router/client.pem", "key_file": "/etc/router/client.key" } },
                "h1": { "endpoints": ["10.0.1.3:443"], "health_check": { "http_path": "/h" },
                        "tls": { "ca_file": "/ca.pem" } }
            },
            "routes": { "a": { "cluster": "fraud" }, "b": { "cluster": "h1" } }
        }"#,
    );
    let fraud = cluster(&resources, "fraud");
    let context = tls_context(&fraud);
    assert_eq!(context.sni, "Fraud.Internal");
    assert!(!context.auto_host_sni);
    let common = context.common_tls_context.as_ref().expect("common");
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert_eq!(common.tls_certificates.len(), 1);
    assert_eq!(
        common.tls_certificates[0].certificate_chain,
        Some(file("/etc/router/client.pem"))
    );
    assert_eq!(
        common.tls_certificates[0].private_key,
        Some(file("/etc/router/client.key"))
    );
    assert_eq!(
        validation(&context).trusted_ca,
        Some(file("/etc/router/ca.pem"))
    );
    assert_eq!(
        sans(&context),
        [(SanType::Dns, "fraud.internal".to_owned())]
    );
    // The gRPC probe offers h2 over the same TLS.
    assert_eq!(
        fraud.health_checks[0].tls_options,
        Some(TlsOptions {
            alpn_protocols: vec!["h2".to_owned()]
        })
    );

    // No server name, one IP endpoint: no SNI (an address is never sent as SNI), its IP
    // address SAN checked.
    let h1 = cluster(&resources, "h1");
    let context = tls_context(&h1);
    assert_eq!(context.sni, "");
    assert!(
        context
            .common_tls_context
            .as_ref()
            .expect("common")
            .tls_certificates
            .is_empty()
    );
    assert_eq!(
        context
            .common_tls_context
            .as_ref()
            .expect("common")
            .alpn_protocols,
        ["http/1.1"]
    );
    assert_eq!(
        sans(&context),
        [(SanType::IpAddress, "10.0.1.3".to_owned())]
    );
    assert_eq!(
        h1.health_checks[0].tls_options,
        Some(TlsOptions {
            alpn_protocols: vec!["http/1.1".to_owned()]
        })
    );
    assert!(resources.unmapped.is_empty(), "{:?}", resources.unmapped);
}

#[test]
fn tls_endpoints_that_need_names_of_their_own() {
    let resources = mapped(
        r#"{
            "clusters": {
                "dns": { "endpoints": ["a.models.internal:443", "b.models.internal:443"],
                         "tls": { "ca_file": "/ca.pem" } },
                "mixed": { "endpoints": ["a.models.internal:443", "10.0.0.9:443"], "protocol": "auto",
                           "tls": { "ca_file": "/ca.pem" } }
            },
            "routes": { "a": { "cluster": "dns" }, "b": { "cluster": "mixed" } }
        }"#,
    );
    // Each DNS endpoint's own name, as SNI and as the name checked.
    let dns = tls_context(&cluster(&resources, "dns"));
    assert_eq!(dns.sni, "");
    assert!(dns.auto_host_sni && dns.auto_sni_san_validation);
    assert!(sans(&dns).is_empty());
    // A DNS name and an address: either name is accepted, and that is a line.
    let mixed = tls_context(&cluster(&resources, "mixed"));
    assert!(!mixed.auto_host_sni);
    assert_eq!(
        sans(&mixed),
        [
            (SanType::Dns, "a.models.internal".to_owned()),
            (SanType::IpAddress, "10.0.0.9".to_owned())
        ]
    );
    assert_eq!(
        unmapped_paths(&resources),
        [r#"$.clusters["mixed"].tls.server_name"#]
    );
    assert!(
        resources.unmapped[0].contains("a.models.internal, 10.0.0.9"),
        "{}",
        resources.unmapped[0]
    );
}

#[test]
fn a_split_is_weighted_clusters_and_a_sticky_one_hashes_the_header() {
    let resources = mapped(
        r#"{
            "clusters": {
                "v1": { "endpoints": ["10.0.0.1:1"] },
                "v2": { "endpoints": ["10.0.0.2:1"] },
                "v3": { "endpoints": ["10.0.0.3:1"] }
            },
            "routes": {
                "random": { "cluster": "v2", "split": { "v2": 70, "v1": 20, "v3": 10 } },
                "sticky": { "cluster": "v1", "split": { "v1": 90, "v2": 10 }, "sticky_header": "X-Subject-Id" }
            }
        }"#,
    );
    let random = route(&resources, "route:random");
    let random = action(&random);
    assert_eq!(
        weights(random),
        [
            ("v1".to_owned(), 20),
            ("v2".to_owned(), 70),
            ("v3".to_owned(), 10)
        ]
    );
    assert_eq!(weighted(random).random_value_specifier, None);
    assert!(random.hash_policy.is_empty());

    let sticky = route(&resources, "route:sticky");
    let sticky = action(&sticky);
    assert_eq!(
        weights(sticky),
        [("v1".to_owned(), 90), ("v2".to_owned(), 10)]
    );
    assert_eq!(
        weighted(sticky).random_value_specifier,
        Some(RandomValueSpecifier::UseHashPolicy(BoolValue {
            value: true
        }))
    );
    assert_eq!(hash_headers(sticky), ["x-subject-id"]);
    assert_eq!(
        unmapped_paths(&resources),
        [r#"$.routes["sticky"].sticky_header"#]
    );
    assert!(resources.unmapped[0].contains("allocation function"));
}

#[test]
fn a_fallback_chain_is_an_aggregate_cluster_shared_by_its_routes() {
    let resources = mapped(
        r#"{
            "clusters": {
                "v1": { "endpoints": ["10.0.0.1:1"] },
                "v2": { "endpoints": ["10.0.0.2:1"] },
                "static": { "endpoints": ["static.internal:80"] }
            },
            "routes": {
                "a": { "cluster": "v2", "fallback": ["v1", "static"] },
                "b": { "cluster": "v2", "fallback": ["v1", "static"], "retry": { "budget_percent": 30 } },
                "one": { "cluster": "v1", "fallback": "v2" },
                "split": { "cluster": "v2", "split": { "v1": 50, "v2": 50 }, "fallback": "v1" }
            }
        }"#,
    );
    let chain = "fallback:v2,v1,static";
    assert_eq!(target(action(&route(&resources, "route:a"))), chain);
    assert_eq!(target(action(&route(&resources, "route:b"))), chain);
    assert_eq!(
        target(action(&route(&resources, "route:one"))),
        "fallback:v1,v2"
    );
    // Each weighted entry gets its own chain; v1 falling back to itself is v1.
    assert_eq!(
        weights(action(&route(&resources, "route:split"))),
        [("v1".to_owned(), 50), ("fallback:v2,v1".to_owned(), 50)]
    );

    let aggregate = cluster(&resources, chain);
    assert_eq!(lb_policy(&aggregate), EnvoyLbPolicy::ClusterProvided);
    let Some(ClusterDiscoveryType::ClusterType(custom)) = &aggregate.cluster_discovery_type else {
        panic!("not a custom cluster type");
    };
    assert_eq!(custom.name, "envoy.clusters.aggregate");
    let config = custom.typed_config.as_ref().expect("aggregate config");
    assert_eq!(config.type_url, ClusterConfig::type_url());
    let config = ClusterConfig::decode(config.value.as_slice()).expect("ClusterConfig");
    assert_eq!(config.clusters, ["v2", "v1", "static"]);
    // Route b's retry budget is counted where Envoy counts it: on the route's cluster.
    assert_eq!(budget(&aggregate), Some((30.0, 3)));
    assert_eq!(budget(&cluster(&resources, "v2")), None);
    assert_eq!(budget(&cluster(&resources, "fallback:v1,v2")), None);
    assert_eq!(
        resources
            .clusters
            .keys()
            .filter(|n| n.starts_with(FALLBACK_PREFIX))
            .count(),
        3
    );
    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["a"].fallback"#,
            r#"$.routes["b"].fallback"#,
            r#"$.routes["one"].fallback"#,
            r#"$.routes["split"].fallback"#,
        ]
    );
}

#[test]
fn retry_policies_in_envoys_terms() {
    let resources = mapped(
        r#"{
            "clusters": { "c": { "endpoints": ["10.0.0.1:1"] }, "d": { "endpoints": ["10.0.0.2:1"] } },
            "routes": {
                "full": { "cluster": "c", "retry": {
                    "attempts": 3,
                    "on": ["connect_failure", "reset", "503", "504", "unavailable", "resource_exhausted",
                           "cancelled", "deadline_exceeded", "internal", "unknown", "timeout"],
                    "per_try_timeout_ms": 1000, "backoff_ms": 40, "replay_buffer_bytes": 16777216 } },
                "classes": { "cluster": "c", "retry": { "on": ["5xx", "timeout", "4xx"], "backoff_ms": 0 } },
                "defaults": { "cluster": "d", "retry": {} },
                "none": { "cluster": "d" }
            }
        }"#,
    );
    let full = route(&resources, "route:full");
    let policy = action(&full).retry_policy.as_ref().expect("a retry policy");
    assert_eq!(
        policy.retry_on,
        "connect-failure,reset,retriable-status-codes,unavailable,resource-exhausted,cancelled,\
         deadline-exceeded,internal,gateway-error"
    );
    assert_eq!(policy.retriable_status_codes, [503, 504]);
    assert_eq!(value(&policy.num_retries), Some(2));
    assert_eq!(ms(&policy.per_try_timeout), Some(1000));
    let back_off = policy.retry_back_off.as_ref().expect("a back-off");
    assert_eq!(ms(&back_off.base_interval), Some(40));
    assert_eq!(
        policy
            .retry_host_predicate
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["envoy.retry_host_predicates.previous_hosts"]
    );
    assert_eq!(policy.host_selection_retry_max_attempts, 3);
    assert_eq!(
        full.request_body_buffer_limit,
        Some(UInt64Value { value: 16_777_216 })
    );

    // A per-try timeout is retried under 5xx already; a class other than 5xx is its codes.
    let classes = route(&resources, "route:classes");
    let policy = action(&classes).retry_policy.as_ref().expect("a policy");
    assert_eq!(policy.retry_on, "5xx,retriable-status-codes");
    assert_eq!(
        policy.retriable_status_codes,
        (400..500).collect::<Vec<u32>>()
    );
    assert_eq!(
        value(&policy.num_retries),
        Some(1),
        "two attempts by default"
    );
    assert_eq!(
        ms(&policy
            .retry_back_off
            .as_ref()
            .expect("back-off")
            .base_interval),
        Some(1)
    );

    let defaults = route(&resources, "route:defaults");
    let policy = action(&defaults).retry_policy.as_ref().expect("a policy");
    assert_eq!(policy.retry_on, "connect-failure,reset");
    assert_eq!(
        defaults.request_body_buffer_limit,
        Some(UInt64Value {
            value: 4 * 1024 * 1024
        })
    );

    // Without `retry`: one move to another endpoint after a connect failure.
    let none = route(&resources, "route:none");
    let policy = action(&none).retry_policy.as_ref().expect("a policy");
    assert_eq!(policy.retry_on, "connect-failure");
    assert_eq!(value(&policy.num_retries), Some(1));
    assert_eq!(none.request_body_buffer_limit, None);

    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["classes"].retry.backoff_ms"#,
            r#"$.routes["full"].retry.on[9]"#,
        ]
    );
    assert!(resources.unmapped[1].contains(r#""unknown""#));
}

#[test]
fn a_mirror_copies_a_sample_marked_shadow() {
    let resources = mapped(
        r#"{
            "clusters": {
                "live": { "endpoints": ["10.0.0.1:1"] },
                "other": { "endpoints": ["10.0.0.2:1"] },
                "shadow": { "endpoints": ["10.0.0.3:1"] }
            },
            "routes": {
                "five": { "cluster": "live", "mirror": { "cluster": "shadow", "sample_percent": 5 } },
                "all": { "cluster": "live", "mirror": { "cluster": "shadow" } },
                "sticky": { "cluster": "live", "split": { "live": 50, "other": 50 }, "sticky_header": "x-s",
                            "mirror": { "cluster": "shadow", "sample_percent": 2.5, "max_in_flight": 8 } }
            }
        }"#,
    );
    let five = route(&resources, "route:five");
    let mirrors = &action(&five).request_mirror_policies;
    assert_eq!(mirrors.len(), 1);
    let mirror = &mirrors[0];
    assert_eq!(mirror.cluster, "shadow");
    assert_eq!(
        mirror
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value),
        Some(FractionalPercent {
            numerator: 5,
            denominator: DenominatorType::Hundred as i32
        })
    );
    assert!(mirror.disable_shadow_host_suffix_append);
    assert_eq!(mirror.request_headers_mutations.len(), 1);
    let Some(header_mutation::Action::Append(added)) = &mirror.request_headers_mutations[0].action
    else {
        panic!("not an added header");
    };
    let header = added.header.as_ref().expect("a header");
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("x-traffic-class", "shadow")
    );
    assert_eq!(
        added.append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );

    let all = route(&resources, "route:all");
    assert_eq!(
        action(&all).request_mirror_policies[0]
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value),
        Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32
        })
    );
    let sticky = route(&resources, "route:sticky");
    assert_eq!(
        action(&sticky).request_mirror_policies[0]
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value),
        Some(FractionalPercent {
            numerator: 250,
            denominator: DenominatorType::TenThousand as i32
        })
    );
    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["all"].mirror.max_in_flight"#,
            r#"$.routes["all"].mirror.max_buffer_bytes"#,
            r#"$.routes["five"].mirror.max_in_flight"#,
            r#"$.routes["five"].mirror.max_buffer_bytes"#,
            r#"$.routes["sticky"].mirror.max_in_flight"#,
            r#"$.routes["sticky"].mirror.max_buffer_bytes"#,
            r#"$.routes["sticky"].mirror.sample_percent"#,
            r#"$.routes["sticky"].sticky_header"#,
        ]
    );
}

#[test]
fn synthetic_traffic_and_tenants_before_the_main_route() {
    let resources = mapped(
        r#"{
            "clusters": {
                "live": { "endpoints": ["10.0.0.1:1"], "request_timeout_ms": 700 },
                "synthetic": { "endpoints": ["10.0.0.2:1"], "lb_policy": "ring_hash", "hash_header": "x-h" },
                "shadow": { "endpoints": ["10.0.0.3:1"] }
            },
            "routes": {
                "k": { "cluster": "live", "tenants": ["search", "home.page"],
                       "synthetic_cluster": "synthetic", "retry": { "budget_percent": 15 },
                       "mirror": { "cluster": "shadow" } },
                "open": { "cluster": "live", "synthetic_cluster": "synthetic" }
            },
            "tenants": { "search": {}, "home.page": {} }
        }"#,
    );
    let names = route_names(&resources);
    let k: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.ends_with(":k"))
        .collect();
    assert_eq!(k, ["synthetic:k", "route:k", "tenant_not_allowed:k"]);
    let position = |name: &str| names.iter().position(|n| n == name).expect("a route");
    assert!(position("tenant_not_allowed:k") < position("synthetic:open"));

    let synthetic = route(&resources, "synthetic:k");
    assert_eq!(exact_key(&synthetic), "k");
    assert_eq!(
        header_regex_of(&synthetic, "x-traffic-class"),
        "^(synthetic|replay)$"
    );
    // The tenant list, sorted and escaped.
    assert_eq!(
        header_regex_of(&synthetic, "x-tenant-id"),
        r"^(home\.page|search)$"
    );
    let forward = action(&synthetic);
    assert_eq!(target(forward), "synthetic");
    assert_eq!(ms(&forward.timeout), Some(700), "the route's timeout");
    assert_eq!(hash_headers(forward), ["x-h"]);
    assert!(forward.retry_policy.is_some());
    assert_eq!(forward.request_mirror_policies.len(), 1);
    assert_eq!(budget(&cluster(&resources, "synthetic")), Some((15.0, 3)));

    let main = route(&resources, "route:k");
    assert_eq!(header_names(&main), ["x-routing-key", "x-tenant-id"]);
    assert_eq!(target(action(&main)), "live");
    assert!(action(&main).hash_policy.is_empty());

    let refused = route(&resources, "tenant_not_allowed:k");
    assert_eq!(header_names(&refused), ["x-routing-key"]);
    assert_eq!(exact_key(&refused), "k");
    assert_eq!(direct(&refused).status, 403);
    assert_eq!(
        body_json(&refused, "ignored"),
        serde_json::json!({ "error": {
            "code": "tenant_not_allowed",
            "message": "the route does not allow this tenant",
            "routing_key": "k",
        }})
    );

    let open = route(&resources, "synthetic:open");
    assert_eq!(header_names(&open), ["x-routing-key", "x-traffic-class"]);
    assert!(!names.contains(&"tenant_not_allowed:open".to_owned()));
    assert_eq!(
        header_names(&route(&resources, "route:open")),
        ["x-routing-key"]
    );
}

#[test]
fn errors_answer_with_the_routers_json_bodies_last_404_then_400() {
    let resources = mapped(
        r#"{ "clusters": { "c": { "endpoints": ["10.0.0.1:1"] } }, "routes": { "k": { "cluster": "c" } } }"#,
    );
    let all = routes(&resources);
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "invalid_traffic_class",
            "invalid_traffic_class:unprintable_key",
            "route:k",
            "unknown_routing_key",
            "unknown_routing_key:unprintable_key",
            "missing_routing_key",
        ]
    );
    for route in &all {
        let m = route.r#match.as_ref().expect("a match");
        assert_eq!(
            m.path_specifier,
            Some(PathSpecifier::Prefix("/".to_owned()))
        );
    }

    // An unknown traffic class, as the router checks it before the key.
    let class = &all[0];
    assert_eq!(direct(class).status, 400);
    assert_eq!(
        header_names(class),
        ["x-routing-key", "x-traffic-class", "x-traffic-class"]
    );
    let inverted = &class.r#match.as_ref().expect("a match").headers[2];
    assert!(inverted.invert_match);
    assert_eq!(header_regex_of(&all[3], ROUTING_HEADER), JSON_SAFE_VALUE);
    assert_eq!(
        body_json(class, "k")["error"]["code"],
        "invalid_traffic_class"
    );

    // 404: the key echoed when it fits a JSON string as it is, null otherwise.
    let unknown = &all[3];
    assert_eq!(direct(unknown).status, 404);
    assert!(body_text(unknown).contains("\"%REQ(x-routing-key)%\""));
    assert_eq!(
        body_json(unknown, "ranker-v9"),
        serde_json::json!({ "error": {
            "code": "unknown_routing_key",
            "message": "no route for this routing key",
            "routing_key": "ranker-v9",
        }})
    );
    let unprintable = &all[4];
    assert_eq!(direct(unprintable).status, 404);
    assert!(matches!(
        header_pattern(unprintable, ROUTING_HEADER),
        HeaderMatchSpecifier::PresentMatch(true)
    ));
    assert_eq!(
        body_json(unprintable, "x")["error"]["routing_key"],
        Value::Null
    );

    // 400: no key, matched by anything that is left.
    let missing = &all[5];
    assert!(header_names(missing).is_empty());
    assert_eq!(direct(missing).status, 400);
    assert_eq!(
        body_text(missing),
        r#"{"error":{"code":"missing_routing_key","message":"request has no routing key header","routing_key":null}}"#
    );
    for route in &all[3..] {
        let header = route.response_headers_to_add[0]
            .header
            .as_ref()
            .expect("a header");
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("content-type", "application/json")
        );
    }
}

#[test]
fn hash_headers_of_several_clusters_are_one_line() {
    let resources = mapped(
        r#"{
            "clusters": {
                "ring": { "endpoints": ["10.0.0.1:1"], "lb_policy": "ring_hash", "hash_header": "x-a" },
                "maglev": { "endpoints": ["10.0.0.2:1"], "lb_policy": "maglev", "hash_header": "x-b" },
                "same": { "endpoints": ["10.0.0.3:1"], "lb_policy": "maglev", "hash_header": "x-a" }
            },
            "routes": {
                "two": { "cluster": "ring", "fallback": "maglev" },
                "one": { "cluster": "ring", "fallback": "same" }
            }
        }"#,
    );
    assert_eq!(
        hash_headers(action(&route(&resources, "route:two"))),
        ["x-a", "x-b"]
    );
    assert_eq!(
        hash_headers(action(&route(&resources, "route:one"))),
        ["x-a"]
    );
    assert_eq!(
        unmapped_paths(&resources),
        [
            r#"$.routes["one"].fallback"#,
            r#"$.routes["two"].fallback"#,
            r#"$.routes["two"]"#
        ]
    );
}

#[test]
fn tenant_limits_are_the_routers_alone() {
    let resources = mapped(
        r#"{
            "clusters": { "c": { "endpoints": ["10.0.0.1:1"] } },
            "routes": { "k": { "cluster": "c" } },
            "tenants": { "a": { "requests_per_second": 5, "burst": 10, "max_concurrent": 3 }, "b": {} }
        }"#,
    );
    assert_eq!(
        resources.unmapped,
        [
            r#"$.tenants["a"].max_concurrent: Envoy does not enforce per-tenant limits; only the router does"#,
            r#"$.tenants["a"].requests_per_second: Envoy does not enforce per-tenant limits; only the router does"#,
            r#"$.tenants["a"].burst: Envoy does not enforce per-tenant limits; only the router does"#,
        ]
    );
}

// === helpers ===

#[test]
fn regexes_escape_names() {
    assert_eq!(escape_regex("a.b-c:d/e_f"), r"a\.b-c:d/e_f");
    assert_eq!(
        escape_regex(r"()[]{}|^$*+?\"),
        r"\(\)\[\]\{\}\|\^\$\*\+\?\\"
    );
    assert_eq!(any_of(&["x", "y.z"]), r"^(x|y\.z)$");
}

#[test]
fn percentages_in_the_coarsest_exact_denominator() {
    let percent = |p: f64| {
        let f = fractional_percent(p);
        (
            f.numerator,
            DenominatorType::try_from(f.denominator).expect("a denominator"),
        )
    };
    assert_eq!(percent(0.0), (0, DenominatorType::Hundred));
    assert_eq!(percent(100.0), (100, DenominatorType::Hundred));
    assert_eq!(percent(12.5), (1250, DenominatorType::TenThousand));
    assert_eq!(percent(0.0001), (1, DenominatorType::Million));
    assert_eq!(percent(33.3333), (333_333, DenominatorType::Million));
}

#[test]
fn error_bodies_are_json() {
    let body = error_body(TENANT_NOT_ALLOWED, BodyKey::Static("a/b:c"));
    let parsed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(parsed["error"]["routing_key"], "a/b:c");
    let body = error_body(MISSING_ROUTING_KEY, BodyKey::Null);
    let parsed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        parsed["error"]["message"],
        "request has no routing key header"
    );
}

#[test]
fn durations_in_milliseconds() {
    assert_eq!(
        millis(3_600_000),
        Duration {
            seconds: 3600,
            nanos: 0
        }
    );
    assert_eq!(
        millis(1),
        Duration {
            seconds: 0,
            nanos: 1_000_000
        }
    );
}
