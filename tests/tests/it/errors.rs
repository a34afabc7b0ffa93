//! The router's own errors: status, JSON body and code for HTTP clients; a trailers-only
//! response with `grpc-status` for gRPC clients; never a hang or a reset.

use http::{Method, header};
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::{Collected, DeadPort, FakeModel, HttpClient, RouterProcess, trace_init};
use serde_json::json;

use crate::support::{CLIENT_VERSIONS, expect_router_error, fetch, get};

/// Fakes and a router with routes: `ok` (answers), `dead` (both endpoints refuse),
/// `slow-route` (route `timeout_ms` 300), `slow-cluster` (cluster `request_timeout_ms` 300).
struct Setup {
    router: RouterProcess,
    _fake: integration_tests::Listening,
    _dead: (DeadPort, DeadPort),
}

async fn setup() -> Setup {
    let fake = FakeModel::new().name("ok").start().await;
    let dead = (DeadPort::new(), DeadPort::new());
    let router = RouterProcess::start(&json!({
        "clusters": {
            "ok": { "endpoints": [fake.endpoint()], "protocol": "auto" },
            "slow": { "endpoints": [fake.endpoint()], "protocol": "auto", "request_timeout_ms": 300 },
            "dead": {
                "endpoints": [dead.0.addr().to_string(), dead.1.addr().to_string()],
                "protocol": "auto",
            },
        },
        "routes": {
            "ok": { "cluster": "ok" },
            "dead": { "cluster": "dead" },
            "slow-route": { "cluster": "ok", "timeout_ms": 300 },
            "slow-cluster": { "cluster": "slow" },
        },
    }))
    .await;
    Setup {
        router,
        _fake: fake,
        _dead: dead,
    }
}

#[tokio::test]
async fn a_request_without_a_routing_key_gets_400_missing_routing_key() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = client.get(s.router.proxy_addr, "/", None).await;
        expect_router_error(&resp, 400, "missing_routing_key");
    }
}

#[tokio::test]
async fn unknown_routing_key_returns_404() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get(&client, s.router.proxy_addr, "/", "no-such-key").await;
        let error = expect_router_error(&resp, 404, "unknown_routing_key");
        assert_eq!(error["routing_key"], "no-such-key");
    }
}

#[tokio::test]
async fn a_cluster_whose_endpoints_all_refuse_returns_502_upstream_connect_failed() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get(&client, s.router.proxy_addr, "/", "dead").await;
        let error = expect_router_error(&resp, 502, "upstream_connect_failed");
        assert_eq!(error["routing_key"], "dead");
    }
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504_after_the_route_timeout() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get(&client, s.router.proxy_addr, "/hang", "slow-route").await;
        let error = expect_router_error(&resp, 504, "upstream_timeout");
        assert_eq!(error["routing_key"], "slow-route");
    }
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504_after_the_cluster_request_timeout() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get(&client, s.router.proxy_addr, "/hang", "slow-cluster").await;
        expect_router_error(&resp, 504, "upstream_timeout");
    }
}

#[tokio::test]
async fn the_client_connection_survives_router_errors() {
    let _trace = trace_init();
    let s = setup().await;
    for version in CLIENT_VERSIONS {
        // One pooled connection: errors must not close it or leave it unusable.
        let client = HttpClient::for_version(version);
        for key in [None, Some("no-such-key"), Some("dead"), Some("ok")] {
            let resp = client.get(s.router.proxy_addr, "/", key).await;
            if key == Some("ok") {
                assert_eq!(resp.status, 200);
                assert_eq!(resp.text(), "ok");
            }
        }
    }
}

/// A gRPC request (h2c, `content-type: application/grpc`) to `path` with `key`.
async fn grpc_call(router: &RouterProcess, path: &str, key: Option<&str>) -> Collected {
    let mut req = client::request(Method::POST, router.proxy_addr, path)
        .header(header::CONTENT_TYPE, "application/grpc+proto")
        .header(header::TE, "trailers");
    if let Some(key) = key {
        req = req.header(ROUTING_KEY, key);
    }
    // One empty length-prefixed message.
    let req = req.body(client::full(vec![0u8; 5])).unwrap();
    fetch(&HttpClient::h2c(), req).await
}

fn expect_grpc_status(resp: &Collected, code: u32, what: &str) {
    assert_eq!(resp.status, 200, "{what}: gRPC errors are HTTP 200");
    assert_eq!(
        resp.header_or_trailer("grpc-status").as_deref(),
        Some(code.to_string().as_str()),
        "{what}: grpc-status (headers {:?}, trailers {:?})",
        resp.headers,
        resp.trailers
    );
    assert!(
        resp.header_or_trailer("grpc-message")
            .is_some_and(|m| !m.is_empty()),
        "{what}: a grpc-message explains the error"
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc")),
        "{what}: content-type is application/grpc, got {:?}",
        resp.header("content-type")
    );
    assert!(
        resp.body.is_empty(),
        "{what}: a trailers-only response has no body"
    );
}

#[tokio::test]
async fn grpc_requests_get_router_errors_as_trailers_only_statuses() {
    let _trace = trace_init();
    let s = setup().await;
    let path = "/echo.v1.Echo/Say";
    expect_grpc_status(&grpc_call(&s.router, path, None).await, 3, "missing key");
    expect_grpc_status(
        &grpc_call(&s.router, path, Some("no-such-key")).await,
        5,
        "unknown key",
    );
    expect_grpc_status(
        &grpc_call(&s.router, path, Some("dead")).await,
        14,
        "connect failure",
    );
    expect_grpc_status(
        &grpc_call(&s.router, "/hang", Some("slow-route")).await,
        4,
        "upstream timeout",
    );
}

#[tokio::test]
async fn errors_are_counted_by_route_and_status_with_unknown_keys_labelled_unknown() {
    let _trace = trace_init();
    let s = setup().await;
    let client = HttpClient::http1();
    for _ in 0..3 {
        assert_eq!(
            get(&client, s.router.proxy_addr, "/", "no-such-key")
                .await
                .status,
            404
        );
    }
    assert_eq!(
        get(&client, s.router.proxy_addr, "/", "dead").await.status,
        502
    );

    s.router
        .wait_for_metric(
            "router_requests_total",
            &[("route", "unknown"), ("status", "404")],
            |v| v == 3.0,
        )
        .await;
    s.router
        .wait_for_metric(
            "router_requests_total",
            &[("route", "dead"), ("cluster", "dead"), ("status", "502")],
            |v| v == 1.0,
        )
        .await;
    let text = s.router.metrics_text().await;
    assert!(
        !text.contains("no-such-key"),
        "an unknown key never becomes a label value (unbounded cardinality)"
    );
}

/// Sends uploads that the router rejects without reading their body, each followed by a
/// request on the same pooled connection.
async fn error_answers_to_uploads_leave_the_connection_usable(client: HttpClient) {
    let s = setup().await;
    for i in 0..10 {
        let req = client::request(Method::POST, s.router.proxy_addr, "/sha256")
            .header(ROUTING_KEY, "no-such-key")
            .body(client::pattern_body(256 * 1024))
            .unwrap();
        let resp = fetch(&client, req).await;
        expect_router_error(&resp, 404, "unknown_routing_key");
        let ok = get(&client, s.router.proxy_addr, "/", "ok").await;
        assert_eq!(ok.status, 200, "round {i}");
    }
}

#[tokio::test]
async fn an_error_answer_to_an_http1_upload_leaves_the_connection_usable() {
    let _trace = trace_init();
    error_answers_to_uploads_leave_the_connection_usable(HttpClient::http1()).await;
}

#[tokio::test]
async fn an_error_answer_to_an_h2c_upload_leaves_the_connection_usable() {
    let _trace = trace_init();
    error_answers_to_uploads_leave_the_connection_usable(HttpClient::h2c()).await;
}
