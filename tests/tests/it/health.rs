//! Active health checks, passive outlier detection, circuit breakers and fallback chains
//! (DESIGN §6 and §11), seen from outside: where requests land, what `GET /clusters` and
//! `/metrics` report, and the router's errors.
//!
//! Probe intervals are short so the tests move quickly, but nothing waits for an interval to
//! pass: every test waits (with a generous deadline) for the state it needs to be visible in
//! `GET /clusters` or in where requests land. Probe timeouts are close to the interval so a
//! slow probe on a loaded machine does not mark a healthy endpoint unhealthy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Version, header};
use hyper::body::Incoming;
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_model::{SERVER_HEADER, sse_chunk};
use integration_tests::{
    Collected, DEADLINE, DeadPort, FakeGrpc, FakeModel, HttpClient, Listening, RouterProcess,
    trace_init, wait_until, within,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::{
    CLIENT_VERSIONS, addresses, cluster_in, cluster_state, echo_client, endpoint_in,
    endpoint_state, expect_end, expect_router_error, fakes, fetch, get, keyed_get,
    one_cluster_router, one_cluster_rules, read_exactly, refused_naming, route_k_rules, say,
    served_by, spread, wait_for_cluster, wait_for_endpoint,
};

/// Failed probes in a row that make an endpoint unhealthy, in every health check here.
const UNHEALTHY_THRESHOLD: usize = 2;

/// An HTTP health check on the fake's `/v2/health/ready`: a probe every 100 ms, each allowed
/// 90 ms, unhealthy after [`UNHEALTHY_THRESHOLD`] failures, healthy after one pass.
fn http_check() -> Value {
    json!({
        "http_path": "/v2/health/ready",
        "interval_ms": 100,
        "timeout_ms": 90,
        "unhealthy_threshold": UNHEALTHY_THRESHOLD,
        "healthy_threshold": 1,
    })
}

/// Outlier detection ejecting after 3 failures in a row for `base_ejection_ms` (times the
/// ejections so far), at most half the cluster at once.
fn outlier_detection(base_ejection_ms: u64) -> Value {
    json!({
        "consecutive_5xx": 3,
        "consecutive_gateway_failures": 3,
        "base_ejection_ms": base_ejection_ms,
        "max_ejection_percent": 50,
    })
}

/// A router with one route `k` to one round-robin cluster `c` of `endpoints`, with the
/// fields of `extra` added to the cluster.
async fn round_robin_router(endpoints: Vec<String>, extra: &Value) -> RouterProcess {
    one_cluster_router(endpoints, "round_robin", extra).await
}

fn is_healthy(endpoint: &Value) -> bool {
    endpoint["health"] == "healthy" && endpoint["eligible"] == true
}

fn is_unhealthy(endpoint: &Value) -> bool {
    endpoint["health"] == "unhealthy"
}

fn is_ejected(endpoint: &Value) -> bool {
    endpoint["ejected"] == true
}

/// Labels of the per-endpoint metrics.
fn endpoint_labels<'a>(cluster: &'a str, address: &'a str) -> [(&'a str, &'a str); 2] {
    [("cluster", cluster), ("endpoint", address)]
}

/// Starts `GET /sse?chunks=1` with `key` and returns its body once the response head
/// arrived: the request is then in flight (picked, body not ended) until the fake is
/// released and the body read to its end.
async fn hold_sse(client: &HttpClient, proxy: SocketAddr, key: &str) -> Incoming {
    let req = keyed_get(proxy, "/sse?chunks=1", key);
    let resp = within("an SSE head", DEADLINE, client.send(req))
        .await
        .expect("an SSE request through the router");
    assert_eq!(resp.status(), 200, "an SSE request is answered by the fake");
    resp.into_body()
}

/// Reads a held SSE body (released by the test) to its end.
async fn finish_sse(mut body: Incoming) {
    read_exactly(&mut body, sse_chunk(0).as_bytes(), "the released SSE chunk").await;
    expect_end(body, "the end of the SSE stream").await;
}

/// Two [`hold_sse`] requests with key `k`, in flight until [`release_held`].
async fn hold_two(client: &HttpClient, proxy: SocketAddr) -> [Incoming; 2] {
    [
        hold_sse(client, proxy, "k").await,
        hold_sse(client, proxy, "k").await,
    ]
}

/// Releases the SSE requests `fake` holds, reads each of `held` to its end, and waits until
/// `cluster` has no request in flight.
async fn release_held(
    router: &RouterProcess,
    cluster: &str,
    fake: &Listening,
    held: impl IntoIterator<Item = Incoming>,
) {
    let held: Vec<Incoming> = held.into_iter().collect();
    fake.release_sse(held.len());
    for body in held {
        finish_sse(body).await;
    }
    wait_for_cluster(router, cluster, "idle", |c| c["active_requests"] == 0).await;
}

/// A gRPC request (h2c, `content-type: application/grpc+proto`) to `Say` with `key`,
/// carrying one empty length-prefixed message.
async fn grpc_call(router: &RouterProcess, key: &str) -> Collected {
    let req = client::request(Method::POST, router.proxy_addr, "/echo.v1.Echo/Say")
        .header(header::CONTENT_TYPE, "application/grpc+proto")
        .header(header::TE, "trailers")
        .header(ROUTING_KEY, key)
        .body(client::full(vec![0u8; 5]))
        .unwrap();
    fetch(&HttpClient::h2c(), req).await
}

/// `Say("hi")` through the router with `key`; returns the name of the server that answered.
async fn say_served_by(client: &mut EchoClient<Channel>, key: &str) -> String {
    say(client, "Say through the router", key, "hi")
        .await
        .unwrap_or_else(|status| panic!("Say with key {key}: {status:?}"))
        .server
}

/// The config generation in force, per `GET /config`.
async fn generation(router: &RouterProcess) -> u64 {
    router.admin_json("/config").await["generation"]
        .as_u64()
        .expect("GET /config reports a generation")
}

// === active health checks ===

#[tokio::test]
async fn an_endpoint_failing_its_health_check_is_drained_and_gets_traffic_again_once_it_passes() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let (a, b) = (&f[0], &f[1]);
    let router = round_robin_router(addresses(&f), &json!({ "health_check": http_check() })).await;
    let client = HttpClient::http1();

    for fake in &f {
        wait_for_endpoint(
            &router,
            "c",
            &fake.endpoint(),
            "healthy after its first probe",
            is_healthy,
        )
        .await;
    }
    assert!(a.health_probes() >= 1, "a was probed");
    let counts = spread(&client, router.proxy_addr, "k", 10).await;
    assert!(
        counts.get("a").is_some_and(|&n| n > 0) && counts.get("b").is_some_and(|&n| n > 0),
        "both healthy endpoints serve: {counts:?}"
    );

    a.set_health(503);
    let drained = wait_for_endpoint(&router, "c", &a.endpoint(), "unhealthy", is_unhealthy).await;
    assert_eq!(drained["eligible"], false, "{drained}");
    assert_eq!(drained["last_check"]["ok"], false, "{drained}");
    assert!(
        a.health_probes_answered(503) >= UNHEALTHY_THRESHOLD,
        "a was marked unhealthy after {} failed probes, fewer than the threshold {UNHEALTHY_THRESHOLD}",
        a.health_probes_answered(503)
    );
    let served_before = a.requests();
    let counts = spread(&client, router.proxy_addr, "k", 20).await;
    assert_eq!(
        counts.get("b"),
        Some(&20),
        "an unhealthy endpoint gets no request: {counts:?}"
    );
    assert_eq!(a.requests(), served_before, "no request reached a");
    assert!(b.requests() >= 20);
    let a_addr = a.endpoint();
    let a_labels = endpoint_labels("c", &a_addr);
    router
        .wait_for_metric("router_endpoint_healthy", &a_labels, |v| v == 0.0)
        .await;
    router
        .wait_for_metric("router_health_check_failures_total", &a_labels, |v| {
            v >= UNHEALTHY_THRESHOLD as f64
        })
        .await;
    router
        .wait_for_metric(
            "router_health_check_duration_seconds_count",
            &[("cluster", "c")],
            |v| v >= 1.0,
        )
        .await;

    a.set_health(200);
    wait_for_endpoint(&router, "c", &a.endpoint(), "healthy again", is_healthy).await;
    wait_until("a request reaches a again", DEADLINE, || async {
        served_by(&client, router.proxy_addr, "k").await == "a"
    })
    .await;
    router
        .wait_for_metric("router_endpoint_healthy", &a_labels, |v| v == 1.0)
        .await;
}

#[tokio::test]
async fn the_clusters_page_shows_each_clusters_settings_and_the_last_probe_of_each_endpoint() {
    let _trace = trace_init();
    let f = fakes(&["guarded", "plain"]).await;
    let router = RouterProcess::start(&json!({
        "version": 7,
        "clusters": {
            "guarded": {
                "endpoints": [f[0].endpoint()],
                "health_check": http_check(),
                "outlier_detection": outlier_detection(300),
                "circuit_breaker": { "max_requests": 7, "max_pending": 5 },
            },
            "plain": { "endpoints": [f[1].endpoint()] },
        },
        "routes": { "g": { "cluster": "guarded" }, "p": { "cluster": "plain" } },
    }))
    .await;

    let probed = wait_for_endpoint(
        &router,
        "guarded",
        &f[0].endpoint(),
        "probed at least once",
        |e| !e["last_check"].is_null(),
    )
    .await;
    let last = &probed["last_check"];
    assert_eq!(last["ok"], true, "{probed}");
    assert!(last["detail"].is_string(), "{probed}");
    assert!(
        last["at_unix_ms"].as_u64().is_some_and(|t| t > 0),
        "{probed}"
    );
    assert!(
        last["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{probed}"
    );
    assert_eq!(probed["ejected"], false, "{probed}");
    assert_eq!(probed["ejected_until_unix_ms"], Value::Null, "{probed}");
    assert_eq!(probed["times_ejected"], 0, "{probed}");
    assert_eq!(probed["eligible"], true, "{probed}");
    assert_eq!(probed["weight"], 1, "{probed}");
    assert_eq!(probed["active_requests"], 0, "{probed}");
    assert!(probed["open_connections"].is_u64(), "{probed}");

    let clusters = router.admin_json("/clusters").await;
    assert_eq!(clusters["version"], 7, "{clusters}");
    assert!(clusters["generation"].is_u64(), "{clusters}");
    let guarded = cluster_in(&clusters, "guarded");
    assert_eq!(
        guarded["health_check"]["http_path"], "/v2/health/ready",
        "{guarded}"
    );
    assert_eq!(guarded["health_check"]["interval_ms"], 100, "{guarded}");
    assert_eq!(guarded["health_check"]["timeout_ms"], 90, "{guarded}");
    assert_eq!(
        guarded["health_check"]["unhealthy_threshold"], UNHEALTHY_THRESHOLD,
        "{guarded}"
    );
    assert_eq!(
        guarded["outlier_detection"]["consecutive_5xx"], 3,
        "{guarded}"
    );
    assert_eq!(
        guarded["outlier_detection"]["base_ejection_ms"], 300,
        "{guarded}"
    );
    assert_eq!(
        guarded["outlier_detection"]["max_ejection_percent"], 50,
        "{guarded}"
    );
    assert_eq!(guarded["circuit_breaker"]["max_requests"], 7, "{guarded}");
    assert_eq!(guarded["circuit_breaker"]["max_pending"], 5, "{guarded}");
    assert_eq!(guarded["active_requests"], 0, "{guarded}");
    assert_eq!(guarded["pending_requests"], 0, "{guarded}");

    let plain = cluster_in(&clusters, "plain");
    for block in ["health_check", "outlier_detection", "circuit_breaker"] {
        assert_eq!(
            plain[block],
            Value::Null,
            "an absent {block} is null: {plain}"
        );
    }
    let unprobed = endpoint_in(&clusters, "plain", &f[1].endpoint());
    assert_eq!(unprobed["health"], "unknown", "{unprobed}");
    assert_eq!(unprobed["last_check"], Value::Null, "{unprobed}");
    assert_eq!(unprobed["eligible"], true, "{unprobed}");
    assert_eq!(
        f[1].health_probes(),
        0,
        "a cluster without a check is not probed"
    );
}

#[tokio::test]
async fn a_grpc_endpoint_reporting_not_serving_is_drained_and_comes_back_when_serving() {
    let _trace = trace_init();
    let g1 = FakeGrpc::new().name("g1").start().await;
    let g2 = FakeGrpc::new().name("g2").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "grpc": {
                "endpoints": [g1.endpoint(), g2.endpoint()],
                "protocol": "http2",
                "lb_policy": "round_robin",
                "health_check": {
                    "grpc_service": "",
                    "interval_ms": 100,
                    "timeout_ms": 90,
                    "unhealthy_threshold": UNHEALTHY_THRESHOLD,
                    "healthy_threshold": 1,
                },
            },
        },
        "routes": { "echo": { "cluster": "grpc" } },
    }))
    .await;
    let mut client = echo_client(&router).await;

    for g in [&g1, &g2] {
        wait_for_endpoint(&router, "grpc", &g.endpoint(), "healthy", is_healthy).await;
    }
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(say_served_by(&mut client, "echo").await);
    }
    assert!(
        served.iter().any(|s| s == "g1") && served.iter().any(|s| s == "g2"),
        "both serving endpoints get calls: {served:?}"
    );

    g1.set_serving(false);
    let drained =
        wait_for_endpoint(&router, "grpc", &g1.endpoint(), "unhealthy", is_unhealthy).await;
    assert_eq!(drained["eligible"], false, "{drained}");
    assert!(
        g1.health_probes() >= UNHEALTHY_THRESHOLD,
        "g1 was checked {} times",
        g1.health_probes()
    );
    let served_before = g1.requests();
    for i in 0..10 {
        assert_eq!(
            say_served_by(&mut client, "echo").await,
            "g2",
            "call {i} while g1 is NOT_SERVING"
        );
    }
    assert_eq!(g1.requests(), served_before, "no call reached g1");

    g1.set_serving(true);
    wait_for_endpoint(&router, "grpc", &g1.endpoint(), "healthy again", is_healthy).await;
    wait_until("a call reaches g1 again", DEADLINE, || {
        let mut client = client.clone();
        async move { say_served_by(&mut client, "echo").await == "g1" }
    })
    .await;
}

// === outlier detection ===

#[tokio::test]
async fn an_endpoint_answering_500s_is_ejected_gets_no_traffic_and_returns_after_the_ejection_time()
{
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let (a, b) = (&f[0], &f[1]);
    // Long enough that requests sent right after the ejection see it in force; nothing
    // depends on it lasting any given time (see the bracketing below).
    let router = round_robin_router(
        addresses(&f),
        &json!({ "outlier_detection": outlier_detection(2_000) }),
    )
    .await;
    let client = HttpClient::http1();

    a.fail_with(Some(500));
    wait_until("a is ejected after its 500s", DEADLINE, || async {
        let resp = get(&client, router.proxy_addr, "/", "k").await;
        assert!(
            resp.status == 200 || resp.status == 500,
            "the fakes' answers pass through: {resp:?}"
        );
        is_ejected(&endpoint_state(&router, "c", &a.endpoint()).await)
    })
    .await;
    let ejected = endpoint_state(&router, "c", &a.endpoint()).await;
    assert_eq!(ejected["eligible"], false, "{ejected}");
    assert_eq!(ejected["times_ejected"], 1, "{ejected}");
    assert!(ejected["ejected_until_unix_ms"].is_u64(), "{ejected}");
    router
        .wait_for_metric(
            "router_outlier_ejections_total",
            &[
                ("cluster", "c"),
                ("endpoint", &a.endpoint()),
                ("reason", "consecutive_5xx"),
            ],
            |v| v >= 1.0,
        )
        .await;

    // Each request is bracketed by the ejection state: when it is still the same ejection
    // afterwards, the request was sent while a was ejected and must not have reached it.
    let mut checked = 0;
    for _ in 0..10 {
        let served_before = a.requests();
        let resp = get(&client, router.proxy_addr, "/", "k").await;
        let after = endpoint_state(&router, "c", &a.endpoint()).await;
        if !is_ejected(&after) || after["times_ejected"] != ejected["times_ejected"] {
            break;
        }
        assert_eq!(resp.status, 200, "b answers while a is ejected: {resp:?}");
        assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("b"));
        assert_eq!(a.requests(), served_before, "a got a request while ejected");
        checked += 1;
    }
    assert!(
        checked > 0,
        "no request could be sent while a was ejected (the machine stalled for the whole ejection)"
    );
    assert!(b.requests() >= checked);

    a.fail_with(None);
    wait_for_endpoint(
        &router,
        "c",
        &a.endpoint(),
        "back after its ejection",
        |e| !is_ejected(e) && e["eligible"] == true,
    )
    .await;
    wait_until("a request reaches a again", DEADLINE, || async {
        served_by(&client, router.proxy_addr, "k").await == "a"
    })
    .await;
    router
        .wait_for_metric(
            "router_endpoint_ejected",
            &endpoint_labels("c", &a.endpoint()),
            |v| v == 0.0,
        )
        .await;
}

#[tokio::test]
async fn with_every_endpoint_failing_at_most_max_ejection_percent_are_ejected_and_requests_are_still_answered()
 {
    let _trace = trace_init();
    let f = fakes(&["a", "b", "c"]).await;
    for fake in &f {
        fake.fail_with(Some(500));
    }
    let mut outlier = outlier_detection(100);
    outlier["max_ejection_ms"] = json!(300);
    let router = round_robin_router(addresses(&f), &json!({ "outlier_detection": outlier })).await;
    let proxy = router.proxy_addr;

    let mut traffic = Vec::new();
    for version in CLIENT_VERSIONS {
        traffic.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            for i in 0..150 {
                let resp = get(&client, proxy, "/", "k").await;
                assert_eq!(
                    resp.status, 500,
                    "{version:?} request {i}: a fake's 500, never a router error: {resp:?}"
                );
                assert!(
                    resp.header(SERVER_HEADER).is_some(),
                    "{version:?} request {i} was answered by a fake: {resp:?}"
                );
            }
        }));
    }

    // Sample the ejections for as long as the traffic runs (bounded by the traffic).
    let mut samples = 0;
    let mut most_ejected = 0;
    while !traffic.iter().all(tokio::task::JoinHandle::is_finished) {
        let clusters = router.admin_json("/clusters").await;
        let endpoints = cluster_in(&clusters, "c")["endpoints"]
            .as_array()
            .expect("endpoints")
            .clone();
        let ejected = endpoints.iter().filter(|e| is_ejected(e)).count();
        assert!(
            ejected <= 1,
            "max_ejection_percent 50 of 3 endpoints allows 1 ejected, /clusters shows {ejected}: {clusters}"
        );
        let eligible = endpoints.iter().filter(|e| e["eligible"] == true).count();
        assert!(eligible >= 2, "{clusters}");
        most_ejected = most_ejected.max(ejected);
        samples += 1;
    }
    for t in traffic {
        within("the failing traffic", DEADLINE, t)
            .await
            .expect("a traffic task panicked");
    }
    tracing::info!(samples, most_ejected, "ejections sampled");
    router
        .wait_for_metric(
            "router_outlier_ejections_total",
            &[("cluster", "c"), ("reason", "consecutive_5xx")],
            |v| v >= 1.0,
        )
        .await;
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_ejected_for_consecutive_gateway_failures() {
    let _trace = trace_init();
    let alive = FakeModel::new().name("alive").start().await;
    let dead = DeadPort::new();
    let dead_addr = dead.addr().to_string();
    let router = round_robin_router(
        vec![alive.endpoint(), dead_addr.clone()],
        &json!({ "outlier_detection": outlier_detection(60_000) }),
    )
    .await;
    let client = HttpClient::http1();

    wait_until("the refusing endpoint is ejected", DEADLINE, || async {
        // A refused connection costs no request: it is tried on the other endpoint.
        assert_eq!(served_by(&client, router.proxy_addr, "k").await, "alive");
        is_ejected(&endpoint_state(&router, "c", &dead_addr).await)
    })
    .await;
    let labels = endpoint_labels("c", &dead_addr);
    router
        .wait_for_metric(
            "router_outlier_ejections_total",
            &[
                labels[0],
                labels[1],
                ("reason", "consecutive_gateway_failures"),
            ],
            |v| v >= 1.0,
        )
        .await;
    router
        .wait_for_metric("router_endpoint_ejected", &labels, |v| v == 1.0)
        .await;
    let alive_state = endpoint_state(&router, "c", &alive.endpoint()).await;
    assert_eq!(alive_state["ejected"], false, "{alive_state}");
    assert_eq!(alive_state["eligible"], true, "{alive_state}");
}

// === circuit breaker ===

/// A router whose route `k` goes to cluster `c` (one endpoint, `fake`, spoken to in
/// `protocol`) allowing 2 requests in flight.
async fn breaker_router(fake: &Listening, protocol: &str) -> RouterProcess {
    RouterProcess::start(&json!({
        "clusters": {
            "c": {
                "endpoints": [fake.endpoint()],
                "protocol": protocol,
                "circuit_breaker": { "max_requests": 2, "max_pending": 16 },
            },
        },
        "routes": { "k": { "cluster": "c" } },
    }))
    .await
}

#[tokio::test]
async fn the_circuit_breaker_refuses_a_third_request_while_two_are_in_flight_and_closes_after() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let router = breaker_router(&fake, "http1").await;
    let holder = HttpClient::http1();

    let held = hold_two(&holder, router.proxy_addr).await;
    let cluster = cluster_state(&router, "c").await;
    assert_eq!(cluster["active_requests"], 2, "{cluster}");

    for version in CLIENT_VERSIONS {
        let resp = get(
            &HttpClient::for_version(version),
            router.proxy_addr,
            "/",
            "k",
        )
        .await;
        let error = expect_router_error(&resp, 503, "overloaded");
        assert_eq!(error["routing_key"], "k", "{version:?}");
        assert!(
            resp.header("retry-after").is_some_and(|v| !v.is_empty()),
            "{version:?}: an overloaded answer says when to retry: {:?}",
            resp.headers
        );
    }
    assert_eq!(
        fake.requests(),
        2,
        "refused requests never reach the upstream"
    );
    router
        .wait_for_metric(
            "router_circuit_breaker_refused_total",
            &[("cluster", "c"), ("limit", "max_requests")],
            |v| v >= 2.0,
        )
        .await;

    release_held(&router, "c", &fake, held).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "f");
}

#[tokio::test]
async fn a_grpc_request_past_the_circuit_breaker_gets_a_trailers_only_unavailable() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let router = breaker_router(&fake, "http2").await;
    let holder = HttpClient::h2c();

    let held = hold_two(&holder, router.proxy_addr).await;
    let resp = grpc_call(&router, "k").await;
    assert_eq!(resp.status, 200, "gRPC errors are HTTP 200: {resp:?}");
    assert_eq!(
        resp.header_or_trailer("grpc-status").as_deref(),
        Some("14"),
        "UNAVAILABLE (headers {:?}, trailers {:?})",
        resp.headers,
        resp.trailers
    );
    assert!(
        resp.header_or_trailer("grpc-message")
            .is_some_and(|m| !m.is_empty()),
        "a grpc-message explains the refusal"
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc")),
        "{:?}",
        resp.headers
    );
    assert!(resp.body.is_empty(), "a trailers-only response has no body");
    assert_eq!(
        fake.requests(),
        2,
        "the refused call never reached the upstream"
    );

    release_held(&router, "c", &fake, held).await;
}

#[tokio::test]
async fn an_overloaded_cluster_moves_the_request_to_the_routes_fallback() {
    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let backup = FakeModel::new().name("backup").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "primary": {
                "endpoints": [primary.endpoint()],
                "circuit_breaker": { "max_requests": 2, "max_pending": 16 },
            },
            "backup": { "endpoints": [backup.endpoint()] },
        },
        "routes": { "k": { "cluster": "primary", "fallback": "backup" } },
    }))
    .await;
    let holder = HttpClient::http1();

    let held = hold_two(&holder, router.proxy_addr).await;
    assert_eq!(
        primary.sse_started(),
        2,
        "the primary serves while it has room"
    );
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        assert_eq!(
            served_by(&client, router.proxy_addr, "k").await,
            "backup",
            "{version:?}"
        );
    }
    assert_eq!(primary.requests(), 2);
    assert_eq!(backup.requests(), 2);

    release_held(&router, "primary", &primary, held).await;
    assert_eq!(
        served_by(&HttpClient::http1(), router.proxy_addr, "k").await,
        "primary"
    );
}

// === fallback chains ===

#[tokio::test]
async fn a_fallback_chain_skips_an_unhealthy_and_a_refusing_cluster_then_answers_503_when_none_is_eligible()
 {
    let _trace = trace_init();
    let f = fakes(&["primary", "down-2", "down-3", "last"]).await;
    let (primary, down2, down3, last) = (&f[0], &f[1], &f[2], &f[3]);
    for fake in [primary, down2, down3] {
        fake.set_health(503);
    }
    let dead = DeadPort::new();
    let router = RouterProcess::start(&json!({
        "clusters": {
            "primary": { "endpoints": [primary.endpoint()], "health_check": http_check() },
            "dead": { "endpoints": [dead.addr().to_string()] },
            "last": { "endpoints": [last.endpoint()] },
            "down-2": { "endpoints": [down2.endpoint()], "health_check": http_check() },
            "down-3": { "endpoints": [down3.endpoint()], "health_check": http_check() },
        },
        "routes": {
            "k": { "cluster": "primary", "fallback": ["dead", "last"] },
            "all-down": { "cluster": "primary", "fallback": ["down-2", "down-3"] },
        },
    }))
    .await;
    for (cluster, fake) in [("primary", primary), ("down-2", down2), ("down-3", down3)] {
        wait_for_endpoint(
            &router,
            cluster,
            &fake.endpoint(),
            "unhealthy",
            is_unhealthy,
        )
        .await;
    }

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for _ in 0..3 {
            assert_eq!(
                served_by(&client, router.proxy_addr, "k").await,
                "last",
                "{version:?}: past the unhealthy primary and the refusing first fallback"
            );
        }
        let resp = get(&client, router.proxy_addr, "/", "all-down").await;
        let error = expect_router_error(&resp, 503, "no_healthy_upstream");
        assert_eq!(error["routing_key"], "all-down", "{version:?}");
    }
    assert_eq!(last.requests(), 6);
    for fake in [primary, down2, down3] {
        assert_eq!(
            fake.requests(),
            0,
            "{} is unhealthy and got no request",
            fake.name()
        );
    }
}

#[tokio::test]
async fn a_cluster_whose_every_endpoint_fails_its_health_check_answers_503_no_healthy_upstream() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    for fake in &f {
        fake.set_health(500);
    }
    let router = round_robin_router(addresses(&f), &json!({ "health_check": http_check() })).await;
    for fake in &f {
        wait_for_endpoint(&router, "c", &fake.endpoint(), "unhealthy", is_unhealthy).await;
    }
    // Active checks are believed even when they fail everywhere.
    for version in CLIENT_VERSIONS {
        let resp = get(
            &HttpClient::for_version(version),
            router.proxy_addr,
            "/",
            "k",
        )
        .await;
        let error = expect_router_error(&resp, 503, "no_healthy_upstream");
        assert_eq!(error["routing_key"], "k");
    }
    assert_eq!(f[0].requests() + f[1].requests(), 0);

    f[1].set_health(200);
    wait_for_endpoint(&router, "c", &f[1].endpoint(), "healthy", is_healthy).await;
    assert_eq!(
        served_by(&HttpClient::http1(), router.proxy_addr, "k").await,
        "b"
    );
}

// === table swaps ===

/// Rule set `version` with route `k` to cluster `c` (`c_endpoints`, plus `c_extra` fields);
/// with `other`, also an unrelated cluster `x` and route `unrelated` to it.
fn swap_rules(version: u64, c_endpoints: &[String], c_extra: &Value, other: Option<&str>) -> Value {
    let mut rules = one_cluster_rules(c_endpoints.to_vec(), "round_robin", c_extra);
    rules["version"] = json!(version);
    if let Some(other) = other {
        rules["clusters"]["x"] = json!({ "endpoints": [other] });
        rules["routes"]["unrelated"] = json!({ "cluster": "x" });
    }
    rules
}

#[tokio::test]
async fn a_table_swap_keeps_the_in_flight_count_of_an_endpoint_it_keeps() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let other = FakeModel::new().name("other").start().await;
    let endpoints = [fake.endpoint()];
    let router = RouterProcess::start(&swap_rules(1, &endpoints, &json!({}), None)).await;

    let held = hold_sse(&HttpClient::http1(), router.proxy_addr, "k").await;
    let before = endpoint_state(&router, "c", &fake.endpoint()).await;
    assert_eq!(before["active_requests"], 1, "{before}");

    let old = generation(&router).await;
    router.rewrite_config(&swap_rules(
        2,
        &endpoints,
        &json!({}),
        Some(&other.endpoint()),
    ));
    router.wait_for_generation(old + 1).await;
    let clusters = router.admin_json("/clusters").await;
    assert!(
        clusters["generation"].as_u64().is_some_and(|g| g > old),
        "/clusters describes the new table: {clusters}"
    );
    let after = endpoint_in(&clusters, "c", &fake.endpoint());
    assert_eq!(
        after["active_requests"], 1,
        "the request in flight is still counted after the swap: {after}"
    );
    assert_eq!(
        served_by(&HttpClient::http1(), router.proxy_addr, "unrelated").await,
        "other"
    );

    fake.release_sse(1);
    finish_sse(held).await;
    wait_for_endpoint(&router, "c", &fake.endpoint(), "idle", |e| {
        e["active_requests"] == 0
    })
    .await;
}

#[tokio::test]
async fn an_ejected_endpoint_stays_ejected_across_a_table_swap() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let (a, b) = (&f[0], &f[1]);
    let other = FakeModel::new().name("other").start().await;
    let endpoints = addresses(&f);
    // Ejected for a minute: far longer than the test takes.
    let extra = json!({ "outlier_detection": outlier_detection(60_000) });
    let router = RouterProcess::start(&swap_rules(1, &endpoints, &extra, None)).await;
    let client = HttpClient::http1();

    a.fail_with(Some(500));
    wait_until("a is ejected after its 500s", DEADLINE, || async {
        get(&client, router.proxy_addr, "/", "k").await;
        is_ejected(&endpoint_state(&router, "c", &a.endpoint()).await)
    })
    .await;
    let before = endpoint_state(&router, "c", &a.endpoint()).await;

    let old = generation(&router).await;
    router.rewrite_config(&swap_rules(2, &endpoints, &extra, Some(&other.endpoint())));
    router.wait_for_generation(old + 1).await;
    let clusters = router.admin_json("/clusters").await;
    assert!(
        clusters["generation"].as_u64().is_some_and(|g| g > old),
        "{clusters}"
    );
    let after = endpoint_in(&clusters, "c", &a.endpoint());
    assert_eq!(
        after["ejected"], true,
        "still ejected after the swap: {after}"
    );
    assert_eq!(after["times_ejected"], before["times_ejected"], "{after}");
    assert_eq!(
        after["ejected_until_unix_ms"], before["ejected_until_unix_ms"],
        "the same ejection: {after}"
    );
    router
        .wait_for_metric(
            "router_endpoint_ejected",
            &endpoint_labels("c", &a.endpoint()),
            |v| v == 1.0,
        )
        .await;

    let served_before = a.requests();
    let counts = spread(&client, router.proxy_addr, "k", 10).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    assert_eq!(
        a.requests(),
        served_before,
        "the ejected endpoint got no request"
    );
    assert!(b.requests() >= 10);
}

// === a backend killed under load ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_fails_at_most_the_requests_in_flight_to_it() {
    /// Concurrent client loops, each with one request in flight at a time.
    const CLIENTS: usize = 8;
    /// A bound on each loop, far above what the test needs.
    const MAX_PER_CLIENT: usize = 20_000;

    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let c = FakeModel::new().name("c").start().await;
    let a_addr = a.endpoint();
    let mut check = http_check();
    check["http_path"] = json!("/healthz");
    let router = round_robin_router(
        vec![a.endpoint(), b.endpoint(), c.endpoint()],
        &json!({
            "health_check": check,
            "outlier_detection": outlier_detection(5_000),
        }),
    )
    .await;
    let proxy = router.proxy_addr;

    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for n in 0..CLIENTS {
        let (sent, stop, failures) = (sent.clone(), stop.clone(), failures.clone());
        let version = if n % 2 == 0 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        loops.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            for i in 0..MAX_PER_CLIENT {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let req = keyed_get(proxy, "/", "k");
                let outcome = within("a request under load", DEADLINE, async {
                    match client.send(req).await {
                        Ok(resp) => client::collect(resp).await.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("{e:?}")),
                    }
                })
                .await;
                sent.fetch_add(1, Ordering::SeqCst);
                let failure = match outcome {
                    Ok(resp) if resp.status == 200 => continue,
                    Ok(resp) => format!(
                        "status {}: {:?}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ),
                    Err(e) => e,
                };
                failures
                    .lock()
                    .unwrap()
                    .push(format!("client {n} ({version:?}) request {i}: {failure}"));
            }
        }));
    }

    wait_until("the load is running", DEADLINE, || {
        std::future::ready(sent.load(Ordering::SeqCst) >= 200 && a.requests() > 0)
    })
    .await;
    let before_kill = failures.lock().unwrap().clone();
    assert!(
        before_kill.is_empty(),
        "no failure before the kill: {before_kill:?}"
    );
    let killed_at = a.addr;
    drop(a);
    // Keep the freed port from being taken by another test's server while this test runs: a
    // socket bound to it without listening refuses connections as the dead backend would.
    // Best effort: when the bind fails the port simply stays free.
    let _tombstone = tokio::net::TcpSocket::new_v4()
        .ok()
        .filter(|socket| socket.set_reuseaddr(true).is_ok() && socket.bind(killed_at).is_ok());
    let sent_at_kill = sent.load(Ordering::SeqCst);
    wait_for_endpoint(
        &router,
        "c",
        &a_addr,
        "unhealthy after the kill",
        is_unhealthy,
    )
    .await;
    wait_until("the load went on past the kill", DEADLINE, || {
        std::future::ready(sent.load(Ordering::SeqCst) >= sent_at_kill + 200)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        within("a client loop to stop", DEADLINE, l)
            .await
            .expect("a client loop panicked");
    }
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.len() <= CLIENTS,
        "{} requests failed, more than the {CLIENTS} that can have been in flight to the killed backend:\n{}",
        failed.len(),
        failed.join("\n")
    );

    // With the backend known unhealthy, a further batch all succeeds.
    let mut batch = Vec::new();
    for version in CLIENT_VERSIONS.into_iter().cycle().take(CLIENTS) {
        batch.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            let mut served = Vec::new();
            for _ in 0..10 {
                served.push(served_by(&client, proxy, "k").await);
            }
            served
        }));
    }
    for task in batch {
        let served = within("a batch after the kill", DEADLINE, task)
            .await
            .expect("a request after the kill failed");
        assert!(served.iter().all(|s| s == "b" || s == "c"), "{served:?}");
    }
    assert!(b.requests() > 0 && c.requests() > 0);
}

// === validation ===

#[tokio::test]
async fn the_router_refuses_a_health_check_whose_timeout_is_not_below_its_interval() {
    let _trace = trace_init();
    for timeout_ms in [100, 250] {
        refused_naming(
            json!({
                "clusters": {
                    "a": {
                        "endpoints": ["127.0.0.1:1"],
                        "health_check": {
                            "http_path": "/healthz",
                            "interval_ms": 100,
                            "timeout_ms": timeout_ms,
                        },
                    },
                },
                "routes": { "k": { "cluster": "a" } },
            }),
            r#"$.clusters["a"].health_check.timeout_ms"#,
            &["interval_ms"],
        )
        .await;
    }
}

#[tokio::test]
async fn the_router_refuses_a_fallback_naming_an_unknown_cluster() {
    let _trace = trace_init();
    refused_naming(
        route_k_rules(&["a", "b"], &json!({ "fallback": "nope" })),
        r#"$.routes["k"].fallback"#,
        &["nope"],
    )
    .await;
    refused_naming(
        route_k_rules(&["a", "b"], &json!({ "fallback": ["b", "nope"] })),
        r#"$.routes["k"].fallback[1]"#,
        &["nope"],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_a_fallback_chain_that_repeats_the_primary() {
    let _trace = trace_init();
    refused_naming(
        route_k_rules(&["a", "b"], &json!({ "fallback": ["b", "a"] })),
        r#"$.routes["k"].fallback[1]"#,
        &[],
    )
    .await;
}
