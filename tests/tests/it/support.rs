//! Helpers shared by the test modules: rule-set fixtures and request shorthands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use integration_tests::client::{self, Body, ROUTING_KEY};
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::{Collected, DEADLINE, HttpClient, Listening, RouterProcess, within};
use serde_json::{Value, json};

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
    let give_up = tokio::time::Instant::now() + DEADLINE;
    // Polls an observable condition; the deadline only turns a hang into a failure.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let endpoint = endpoint_state(router, cluster, address).await;
        if ok(&endpoint) {
            return endpoint;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {DEADLINE:?} waiting until endpoint {address} of cluster {cluster:?} is {what}; last seen: {endpoint}"
        );
    }
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
    let give_up = tokio::time::Instant::now() + DEADLINE;
    // Polls an observable condition; the deadline only turns a hang into a failure.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let cluster = cluster_state(router, name).await;
        if ok(&cluster) {
            return cluster;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {DEADLINE:?} waiting until cluster {name:?} is {what}; last seen: {cluster}"
        );
    }
}
