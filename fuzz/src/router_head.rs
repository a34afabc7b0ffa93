//! `router_head`: a request head (see [`crate::head`]) through the router's head handling, in
//! the order of `router::proxy::handle`, against the route table of
//! `models-config/examples/full.json` (splits, a sticky header, hash balancers, tenants, a
//! mirror, a synthetic cluster; its clusters' `tls` blocks left out, since their CA and key
//! files exist only where the router is deployed):
//!
//! 0. the checks made before routing (`head_problem`);
//! 1. routing key (`x-routing-key`, as bytes) → route; traffic class, gRPC detection,
//!    tenant → admission;
//! 2. hop-by-hop stripping and the upgrade check;
//! 3. `x-forwarded-for` (IPv4 and IPv6 clients) and `x-request-id`;
//! 4. target pick (split, sticky), endpoint pick (hash policies), mirror sampling;
//! 5. URI rewrite for HTTP/1.1 (origin-form + `Host`) and HTTP/2 (absolute-form), plain
//!    and over TLS;
//! 6. the retry buffer's save/restore of the headers.
//!
//! Each step's documented effect is checked on the result, beside "never panics".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use http::header::{self, HOST};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use router::headers::{self, SavedHeaders, TrafficClass};
use router::health::ProbeSpawner;
use router::host::HostRegistry;
use router::route::{Route, RouteTable};

/// The rule set the table is built from.
const RULES: &str = include_str!("../../models-config/examples/full.json");

/// The names that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut json: serde_json::Value =
            serde_json::from_str(RULES).expect("the example rule set is JSON");
        if let Some(clusters) = json["clusters"].as_object_mut() {
            for cluster in clusters.values_mut() {
                if let Some(cluster) = cluster.as_object_mut() {
                    cluster.remove("tls");
                }
            }
        }
        let rules = models_config::parse(&json.to_string()).expect("the example rule set is valid");
        let hosts = HostRegistry::new(1);
        // Probers are queued on the spawner's channel and never run: nothing here connects.
        let (probes, _receiver) = ProbeSpawner::new();
        RouteTable::build(rules, None, &hosts, &probes, 1, String::new(), true)
    })
}

fn client_values() -> &'static [HeaderValue; 2] {
    static VALUES: OnceLock<[HeaderValue; 2]> = OnceLock::new();
    VALUES.get_or_init(|| {
        [
            headers::forwarded_for_value(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            headers::forwarded_for_value(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
            ))),
        ]
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let head = crate::head::split(data);
    let Some(req) = head.request(()) else {
        return;
    };
    let table = table();

    // 0: what is refused before routing (an absolute-form target that disagrees with
    // `Host`, too many HTTP/2 header fields).
    let problem = headers::head_problem(&req, 100);
    if req.version() < http::Version::HTTP_2 && req.uri().authority().is_none() {
        assert!(
            problem.is_none(),
            "an origin-form HTTP/1 head has no such problem"
        );
    }

    // 1: route and admission, as `proxy::handle` reads them.
    let class = TrafficClass::of(req.headers());
    let own =
        headers::OwnHeaders::find(req.headers(), &headers::ROUTING_KEY, &headers::X_TENANT_ID);
    let h = req.headers();
    assert_eq!(
        own.routing_key,
        h.get(headers::ROUTING_KEY),
        "the routing key as get finds it"
    );
    assert_eq!(
        own.tenant,
        h.get(headers::X_TENANT_ID),
        "the tenant as get finds it"
    );
    assert_eq!(
        own.traffic_class,
        h.get(headers::TRAFFIC_CLASS),
        "the class as get finds it"
    );
    assert_eq!(
        own.content_type,
        h.get(http::header::CONTENT_TYPE),
        "content-type as get finds it"
    );
    assert_eq!(
        own.host,
        h.contains_key(http::header::HOST),
        "host as contains_key finds it"
    );
    let _ = own.is_grpc();
    let route = req
        .headers()
        .get(headers::ROUTING_KEY)
        .and_then(|key| table.route(key.as_bytes()))
        .cloned();
    if let Some(route) = &route {
        let key = req.headers()[headers::ROUTING_KEY].as_bytes();
        assert_eq!(route.key.as_bytes(), key, "a route is found by its own key");
        let given = req
            .headers()
            .get(headers::X_TENANT_ID)
            .map(HeaderValue::as_bytes);
        let tenant = given.and_then(|t| table.tenant(t));
        let allowed = route.allows(tenant.map(|t| &**t));
        assert!(
            !allowed || route.tenants.is_empty() || tenant.is_some(),
            "a route with tenants allows only declared ones"
        );
        assert!(
            allowed || !route.tenants.is_empty(),
            "a route without tenants allows all"
        );
    }
    if let Some(class) = class {
        let _ = (class.as_str(), class.index(), class.is_synthetic());
    }
    if let Some(status) = req.headers().get(headers::GRPC_STATUS) {
        let _ = headers::grpc_code(status);
    }

    // 2: hop-by-hop headers out.
    let listed = connection_listed(req.headers());
    let had_upgrade = req.headers().contains_key(header::UPGRADE);
    let (mut parts, ()) = req.into_parts();
    let asked = headers::strip_hop_by_hop(&mut parts.headers, true);
    check_stripped(&parts.headers, &listed);
    assert!(
        asked.is_none() || had_upgrade,
        "an upgrade is reported only when asked for"
    );
    if asked.is_some() {
        // No connection to hand over here: nothing is taken, but the call is made.
        let upgrade = router::upgrade::requested(
            parts.version,
            &mut parts.headers,
            &mut parts.extensions,
            asked,
        );
        assert!(upgrade.is_none(), "there is no connection to upgrade");
    }

    // 3: x-forwarded-for and x-request-id.
    for client in client_values() {
        let before: Vec<HeaderValue> = parts
            .headers
            .get_all(headers::X_FORWARDED_FOR)
            .iter()
            .cloned()
            .collect();
        headers::append_forwarded_for(&mut parts.headers, client);
        check_forwarded_for(&parts.headers, &before, client);
    }
    let had_id = parts.headers.get(headers::X_REQUEST_ID).cloned();
    headers::ensure_request_id(&mut parts.headers);
    match had_id {
        Some(id) => assert_eq!(parts.headers[headers::X_REQUEST_ID], id, "an id is kept"),
        None => assert_eq!(parts.headers[headers::X_REQUEST_ID].len(), 36, "a new id"),
    }

    // 4: target, endpoint and mirror.
    let endpoint = route.as_ref().map(|route| pick(route, &parts.headers));

    // 5: the URI for each upstream protocol.
    let endpoint = endpoint.unwrap_or_else(|| Authority::from_static("127.0.0.1:9"));
    let req = Request::from_parts(parts, ());
    for (h2, tls) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut copy = clone_request(&req);
        let has_host = copy.headers().contains_key(http::header::HOST);
        headers::prepare_uri(&mut copy, &endpoint, h2, tls, has_host);
        check_uri(&copy, &req, h2, tls);
    }

    // 6: the retry buffer's copy of the headers.
    let saved = SavedHeaders::save(req.headers());
    let restored = saved.restore().expect("saved headers restore");
    assert_eq!(
        &restored,
        req.headers(),
        "saved headers come back as they were"
    );
    let order = |m: &HeaderMap| {
        m.iter()
            .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&restored), order(req.headers()), "in the same order");
}

/// Names listed in `Connection` (as `strip_hop_by_hop` reads them: values that are visible
/// ASCII, split at commas).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect()
}

fn check_stripped(headers: &HeaderMap, listed: &[HeaderName]) {
    for name in HOP_BY_HOP {
        if name == "te" {
            // Kept as exactly `te: trailers` (gRPC needs it end to end), nothing else.
            let values: Vec<_> = headers.get_all(header::TE).iter().collect();
            assert!(
                values.is_empty() || values == [&HeaderValue::from_static("trailers")],
                "te is stripped or exactly `trailers`: {values:?}"
            );
            continue;
        }
        assert!(
            !headers.contains_key(name),
            "{name} is stripped: {headers:?}"
        );
    }
    for name in listed {
        // `close` is an option of `Connection`, not a header name; `te` is kept as above.
        if name == "close" || name == header::TE {
            continue;
        }
        assert!(
            !headers.contains_key(name),
            "{name} is listed in Connection, so it is stripped: {headers:?}"
        );
    }
}

fn check_forwarded_for(headers: &HeaderMap, before: &[HeaderValue], client: &HeaderValue) {
    let after: Vec<_> = headers.get_all(headers::X_FORWARDED_FOR).iter().collect();
    assert_eq!(after.len(), 1, "one x-forwarded-for line: {after:?}");
    let mut want = Vec::new();
    for value in before {
        want.extend_from_slice(value.as_bytes());
        want.extend_from_slice(b", ");
    }
    want.extend_from_slice(client.as_bytes());
    assert_eq!(
        after[0].as_bytes(),
        want,
        "every hop kept, in order, then the client"
    );
}

/// The target cluster and its endpoint for a request of `route`; checks that sticky picks
/// are sticky. Returns the endpoint's authority.
fn pick(route: &Arc<Route>, headers: &HeaderMap) -> Authority {
    let target = route.pick_target(headers);
    let sticky = route
        .sticky_header
        .as_ref()
        .is_some_and(|h| headers.contains_key(h));
    if sticky {
        let again = route.pick_target(headers);
        assert!(
            Arc::ptr_eq(&target.cluster, &again.cluster),
            "a sticky split picks the same cluster for the same subject"
        );
    }
    if let Some(synthetic) = &route.synthetic {
        let _ = &synthetic.cluster.name;
    }
    if let Some(mirror) = &route.mirror {
        let _ = mirror.sampled(headers, route.sticky_header.as_ref());
    }
    let cluster = &target.cluster;
    let n = cluster.endpoints.len();
    let i = cluster
        .pick(headers, None)
        .expect("every endpoint is eligible here");
    assert!(i < n, "an endpoint of the cluster: {i} of {n}");
    let hashed = match &cluster.balancer {
        router::balance::Balancer::RingHash { header, .. }
        | router::balance::Balancer::Maglev { header, .. } => headers.contains_key(header),
        _ => false,
    };
    if hashed {
        assert_eq!(
            cluster.pick(headers, None),
            Some(i),
            "a hash policy picks the same endpoint for the same key"
        );
    }
    if n > 1 {
        let other = cluster
            .pick(headers, Some(i))
            .expect("another endpoint is eligible");
        assert!(
            other != i && other < n,
            "an excluded endpoint is not picked again"
        );
    } else {
        assert_eq!(cluster.pick(headers, Some(i)), None, "no other endpoint");
    }
    cluster.endpoints[i].authority.clone()
}

fn clone_request(req: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn check_uri(out: &Request<()>, original: &Request<()>, h2: bool, tls: bool) {
    let uri = out.uri();
    let path = original.uri().path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(
        uri.path_and_query().map(|p| p.as_str()),
        Some(path),
        "the path and query are kept"
    );
    if h2 {
        let scheme = if tls { "https" } else { "http" };
        assert_eq!(uri.scheme_str(), Some(scheme), "absolute-form: {uri}");
        assert!(uri.authority().is_some(), "absolute-form: {uri}");
        assert!(!out.headers().contains_key(HOST), "no Host on HTTP/2");
        assert_eq!(out.version(), http::Version::HTTP_2);
    } else {
        assert!(
            uri.scheme().is_none() && uri.authority().is_none(),
            "origin-form: {uri}"
        );
        assert!(out.headers().contains_key(HOST), "Host on HTTP/1.1");
        assert_eq!(out.version(), http::Version::HTTP_11);
    }
}
