//! Helpers shared by the test modules: fakes, rule-set fixtures, request shorthands, gRPC
//! calls and waits on `GET /clusters` and `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Version, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use integration_tests::client::{self, Body, ROUTING_KEY};
use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_grpc::pb::{SayReply, SayRequest};
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::{
    Collected, DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, within,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// The header naming a request's tenant (without `--tenant-header`).
pub const TENANT: &str = "x-tenant-id";

/// Both client versions the router must accept.
pub const CLIENT_VERSIONS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

/// A rule set with one cluster per `(name, endpoints)` and one route per cluster, keyed by the
/// cluster's name.
pub fn simple_rules(clusters: &[(&str, Vec<String>)]) -> Value {
    let mut c = serde_json::Map::new();
    let mut r = serde_json::Map::new();
    for (name, endpoints) in clusters {
        c.insert((*name).to_owned(), json!({ "endpoints": endpoints }));
        r.insert((*name).to_owned(), json!({ "cluster": name }));
    }
    json!({ "clusters": c, "routes": r })
}

/// A router with the key `h1` on an HTTP/1.1 cluster and `h2` on an h2c cluster, both
/// pointing at `fake`.
pub async fn h1_h2_router(fake: &Listening) -> RouterProcess {
    RouterProcess::start(&json!({
        "clusters": {
            "h1": { "endpoints": [fake.endpoint()], "protocol": "http1" },
            "h2": { "endpoints": [fake.endpoint()], "protocol": "http2" },
        },
        "routes": {
            "h1": { "cluster": "h1" },
            "h2": { "cluster": "h2" },
        },
    }))
    .await
}

/// A request builder for `http://addr{path}` carrying `x-routing-key: key`.
pub fn keyed(method: Method, addr: SocketAddr, path: &str, key: &str) -> http::request::Builder {
    client::request(method, addr, path).header(ROUTING_KEY, key)
}

/// `GET path` with `key`, read to the end.
pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str, key: &str) -> Collected {
    within(
        &format!("GET {path} with key {key}"),
        DEADLINE,
        client.get(addr, path, Some(key)),
    )
    .await
}

/// `GET /` with `key`, expecting 200; returns the name of the fake that answered.
pub async fn served_by(client: &HttpClient, addr: SocketAddr, key: &str) -> String {
    let resp = get(client, addr, "/", key).await;
    assert_eq!(
        resp.status,
        200,
        "GET / with key {key}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    resp.header(SERVER_HEADER)
        .expect("the answer of a fake model names it")
}

/// Sends `n` requests with `key` and counts the answers per fake name.
pub async fn spread(
    client: &HttpClient,
    addr: SocketAddr,
    key: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(served_by(client, addr, key).await)
            .or_default() += 1;
    }
    counts
}

/// Asserts that `resp` has `status`, showing its body otherwise.
#[track_caller]
pub fn assert_status(resp: &Collected, status: u16) {
    assert_eq!(
        resp.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
}

/// `req` read to the end, within the deadline.
pub async fn fetch(client: &HttpClient, req: http::Request<Body>) -> Collected {
    within("a response", DEADLINE, client.fetch(req)).await
}

/// `POST path` with `key` and the first `len` bytes of the pattern as a streamed body, read
/// to the end (allowed four deadlines: large bodies through a debug build take a while).
pub async fn post_pattern(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    key: &str,
    len: u64,
) -> Collected {
    let req = keyed(Method::POST, addr, path, key)
        .body(client::pattern_body(len))
        .expect("a valid request");
    within(
        &format!("POST {path} of {len} bytes with key {key}"),
        4 * DEADLINE,
        client.fetch(req),
    )
    .await
}

/// Starts the router on `rule_set`, expecting a refusal whose stderr names `path` and
/// mentions each of `details`.
pub async fn refused_naming(rule_set: Value, path: &str, details: &[&str]) {
    let failed = RouterProcess::start_expecting_failure(&rule_set).await;
    assert!(!failed.status.success(), "exit status {}", failed.status);
    assert!(
        failed.stderr.contains(path),
        "stderr names the JSON path {path}:\n{}",
        failed.stderr
    );
    for detail in details {
        assert!(
            failed.stderr.contains(detail),
            "stderr mentions {detail:?}:\n{}",
            failed.stderr
        );
    }
}

/// Reads data from `body` until it holds `expected`'s length in bytes, and checks it equals
/// `expected` (frames may be split or merged on the way).
pub async fn read_exactly(body: &mut Incoming, expected: &[u8], what: &str) {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let frame = within(what, DEADLINE, body.frame())
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{what}: the body ended after {:?}",
                    String::from_utf8_lossy(&got)
                )
            })
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "{what}"
    );
}

/// Reads the rest of `body` and checks it is empty.
pub async fn expect_end(body: Incoming, what: &str) {
    let rest = within(what, DEADLINE, body.collect())
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
    assert_eq!(
        rest.to_bytes(),
        Bytes::new(),
        "{what}: unexpected data at the end"
    );
}

/// The JSON `error` object of a router error response, checking the status, content type
/// and code.
pub fn expect_router_error(resp: &Collected, status: u16, code: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "expected {status} {code}, got body {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "an error body is JSON, got content-type {content_type:?}"
    );
    let json = resp.json();
    assert_eq!(json["error"]["code"], code, "error body {json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error has a message: {json}"
    );
    json["error"].clone()
}

/// The entry of cluster `name` in a `GET /clusters` document.
///
/// # Panics
///
/// When the document lists no such cluster.
pub fn cluster_in<'a>(clusters: &'a Value, name: &str) -> &'a Value {
    clusters["clusters"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("GET /clusters lists no cluster {name:?}: {clusters}"))
}

/// The entry of endpoint `address` of cluster `cluster` in a `GET /clusters` document.
///
/// # Panics
///
/// When the document lists no such cluster or endpoint.
pub fn endpoint_in<'a>(clusters: &'a Value, cluster: &str, address: &str) -> &'a Value {
    cluster_in(clusters, cluster)["endpoints"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["address"] == address))
        .unwrap_or_else(|| {
            panic!("GET /clusters lists no endpoint {address} in cluster {cluster:?}: {clusters}")
        })
}

/// The `GET /clusters` entry of cluster `name`.
///
/// # Panics
///
/// When the admin API does not answer 200 with JSON, or lists no such cluster.
pub async fn cluster_state(router: &RouterProcess, name: &str) -> Value {
    cluster_in(&router.admin_json("/clusters").await, name).clone()
}

/// The `GET /clusters` entry of endpoint `address` of cluster `cluster`.
///
/// # Panics
///
/// When the admin API does not answer 200 with JSON, or lists no such endpoint.
pub async fn endpoint_state(router: &RouterProcess, cluster: &str, address: &str) -> Value {
    endpoint_in(&router.admin_json("/clusters").await, cluster, address).clone()
}

/// Polls `entry` until it satisfies `ok`, and returns it; `what` describes the awaited
/// state.
///
/// # Panics
///
/// At the deadline, with the last entry seen in the message.
async fn wait_for_entry<F: Future<Output = Value>>(
    what: &str,
    entry: impl Fn() -> F,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    // Polls an observable condition; the deadline only turns a hang into a failure.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let seen = entry().await;
        if ok(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {DEADLINE:?} waiting until {what}; last seen: {seen}"
        );
    }
}

/// Polls `GET /clusters` until the entry of endpoint `address` of cluster `cluster`
/// satisfies `ok`, and returns that entry; `what` describes the awaited state.
///
/// # Panics
///
/// At the deadline, with the last entry seen in the message.
pub async fn wait_for_endpoint(
    router: &RouterProcess,
    cluster: &str,
    address: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_entry(
        &format!("endpoint {address} of cluster {cluster:?} is {what}"),
        || endpoint_state(router, cluster, address),
        ok,
    )
    .await
}

/// Polls `GET /clusters` until cluster `name`'s entry satisfies `ok`, and returns it;
/// `what` describes the awaited state.
///
/// # Panics
///
/// At the deadline, with the last entry seen in the message.
pub async fn wait_for_cluster(
    router: &RouterProcess,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_entry(
        &format!("cluster {name:?} is {what}"),
        || cluster_state(router, name),
        ok,
    )
    .await
}

/// Waits until the sum of the samples of metric `name` matching `labels` reaches
/// `expected`, and checks it settled there, not past it (`what` says why it must).
///
/// # Panics
///
/// At the deadline, or when the value is past `expected`.
pub async fn wait_for_metric_exactly(
    router: &RouterProcess,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
    what: &str,
) {
    let value = router
        .wait_for_metric(name, labels, |v| v >= expected)
        .await;
    assert_eq!(value, expected, "{name}{labels:?}: {what}");
}

/// The labels `route` and `reason` of the per-route drop and abandon counters.
pub fn route_reason_labels<'a>(route: &'a str, reason: &'a str) -> [(&'a str, &'a str); 2] {
    [("route", route), ("reason", reason)]
}

/// Starts one fake model per name, in order.
pub async fn fakes(names: &[&str]) -> Vec<Listening> {
    let mut out = Vec::new();
    for name in names {
        out.push(FakeModel::new().name(*name).start().await);
    }
    out
}

/// The endpoint addresses of `fakes`, in order.
pub fn addresses(fakes: &[Listening]) -> Vec<String> {
    fakes.iter().map(Listening::endpoint).collect()
}

/// `base` (a JSON object) with the fields of `extra` (a JSON object) added, replacing
/// any of the same name.
pub fn with_fields(mut base: Value, extra: &Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// A rule set with one route `k` to one cluster `c` of `endpoints` balanced by
/// `lb_policy`, with the fields of `extra` added to the cluster.
pub fn one_cluster_rules(endpoints: impl Into<Value>, lb_policy: &str, extra: &Value) -> Value {
    let cluster = json!({ "endpoints": endpoints.into(), "lb_policy": lb_policy });
    json!({
        "clusters": { "c": with_fields(cluster, extra) },
        "routes": { "k": { "cluster": "c" } },
    })
}

/// A router on [`one_cluster_rules`].
pub async fn one_cluster_router(
    endpoints: impl Into<Value>,
    lb_policy: &str,
    extra: &Value,
) -> RouterProcess {
    RouterProcess::start(&one_cluster_rules(endpoints, lb_policy, extra)).await
}

/// A rule set for validation tests: one cluster per name in `clusters` (the n-th at the
/// unreachable `127.0.0.1:n`), and route `k` to the first with the fields of `route` added.
pub fn route_k_rules(clusters: &[&str], route: &Value) -> Value {
    let c: serde_json::Map<String, Value> = clusters
        .iter()
        .zip(1..)
        .map(|(name, port)| {
            (
                (*name).to_owned(),
                json!({ "endpoints": [format!("127.0.0.1:{port}")] }),
            )
        })
        .collect();
    json!({
        "clusters": c,
        "routes": { "k": with_fields(json!({ "cluster": clusters[0] }), route) },
    })
}

/// A `GET path` request (no body) to `proxy` carrying `x-routing-key: key`.
pub fn keyed_get(proxy: SocketAddr, path: &str, key: &str) -> http::Request<Body> {
    keyed(Method::GET, proxy, path, key)
        .body(client::empty())
        .expect("a valid request")
}

/// A tonic client connected over h2c to the router's proxy port.
pub async fn echo_client(router: &RouterProcess) -> EchoClient<Channel> {
    within(
        "connecting a tonic client to the router",
        DEADLINE,
        EchoClient::connect(router.proxy_url("")),
    )
    .await
    .expect("connect to the router over h2c")
}

/// A gRPC request carrying `message` and `x-routing-key: key` as metadata.
pub fn keyed_call<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert(ROUTING_KEY, key.parse().expect("a valid key"));
    req
}

/// `Say(message)` with routing key `key`, awaited within the deadline (`what` names it).
pub async fn say(
    client: &mut EchoClient<Channel>,
    what: &str,
    key: &str,
    message: &str,
) -> Result<SayReply, tonic::Status> {
    let request = keyed_call(
        SayRequest {
            message: message.into(),
        },
        key,
    );
    within(what, DEADLINE, client.say(request))
        .await
        .map(tonic::Response::into_inner)
}

/// A raw gRPC request (h2c, `application/grpc+proto`) to `Say` with `key` and the `headers`
/// added, carrying one empty length-prefixed message, read to the end.
pub async fn grpc_call(router: &RouterProcess, key: &str, headers: &[(&str, &str)]) -> Collected {
    let mut builder = client::request(Method::POST, router.proxy_addr, "/echo.v1.Echo/Say")
        .header(header::CONTENT_TYPE, "application/grpc+proto")
        .header(header::TE, "trailers")
        .header(ROUTING_KEY, key);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(client::full(vec![0u8; 5]))
        .expect("a valid request");
    fetch(&HttpClient::h2c(), req).await
}

/// Asserts `resp` is a trailers-only gRPC answer (HTTP 200, `grpc-status` in the head, no
/// body) with status `code` and a `grpc-message`.
#[track_caller]
pub fn assert_trailers_only(resp: &Collected, code: &str, what: &str) {
    assert_eq!(
        resp.status, 200,
        "{what}: gRPC errors are HTTP 200: {resp:?}"
    );
    assert_eq!(
        resp.header("grpc-status").as_deref(),
        Some(code),
        "{what}: grpc-status in the head of a trailers-only answer (headers {:?}, trailers {:?})",
        resp.headers,
        resp.trailers
    );
    assert!(
        resp.header("grpc-message").is_some_and(|m| !m.is_empty()),
        "{what}: a grpc-message explains the refusal: {:?}",
        resp.headers
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc")),
        "{what}: {:?}",
        resp.headers
    );
    assert!(
        resp.body.is_empty(),
        "{what}: a trailers-only answer has no body"
    );
}

/// The values the fake's `/headers` answer `json` says it saw for `name` (lower case), in order.
pub fn seen(json: &Value, name: &str) -> Vec<String> {
    json["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `GET path` request to `proxy`, with `x-routing-key: key` when given and the `headers`
/// added.
pub fn get_request(
    proxy: SocketAddr,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> http::Request<Body> {
    let mut builder = client::request(Method::GET, proxy, path);
    if let Some(key) = key {
        builder = builder.header(ROUTING_KEY, key);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(client::empty()).expect("a valid request")
}
