//! The per-route request body limit (`max_request_body_bytes`, DESIGN §12 limits): a body
//! past it is answered `413 request_body_too_large` (gRPC `RESOURCE_EXHAUSTED`), counted
//! as it streams and never buffered. A `Content-Length` past the limit is refused before
//! anything reaches the upstream; a chunked or HTTP/2 body without a length is cut off where
//! it passes the limit. An HTTP/1.1 connection answered that way is closed with a lingering
//! close: the client can finish writing its body and reads the answer, not a reset.
//!
//! No test measures time: each waits for an observable event with a deadline that only
//! turns a hang into a failure.

use bytes::Bytes;
use http::Method;
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::raw::{Closed, RawConn};
use integration_tests::{FakeModel, HttpClient, Listening, RouterProcess, trace_init};
use serde_json::{Value, json};

use crate::support::expect_router_error;

/// The limit of every route here.
const LIMIT: usize = 1000;

/// Routes `k` (no retry) and `r` (with a retry policy, so the body goes through the replay
/// buffer) to the fake, both limited to [`LIMIT`] bytes; `open` has no limit.
fn rules(fake: &Listening) -> Value {
    json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": {
            "k": { "cluster": "c", "max_request_body_bytes": LIMIT },
            "r": {
                "cluster": "c",
                "max_request_body_bytes": LIMIT,
                "retry": { "attempts": 2, "on": ["reset", "503"] }
            },
            "open": { "cluster": "c" }
        },
    })
}

async fn router_and_fake() -> (RouterProcess, Listening) {
    let fake = FakeModel::new().name("m").start().await;
    let router = RouterProcess::start(&rules(&fake)).await;
    (router, fake)
}

/// `POST /sha256` with `Content-Length` and `len` body bytes on route `key`.
fn with_length(key: &str, len: usize) -> Vec<u8> {
    let mut out = format!(
        "POST /sha256 HTTP/1.1\r\nHost: a\r\nx-routing-key: {key}\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    out.resize(out.len() + len, b'x');
    out
}

/// A chunked `POST /sha256` on route `key` with `chunks` chunks of `size` bytes.
fn chunked(key: &str, chunks: usize, size: usize) -> Vec<u8> {
    let mut out = format!(
        "POST /sha256 HTTP/1.1\r\nHost: a\r\nx-routing-key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..chunks {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.resize(out.len() + size, b'y');
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Writes the whole of `request` (which must succeed: the router reads what it does not
/// forward), reads the `413`, and checks the connection then ends cleanly.
async fn expect_413_and_clean_close(router: &RouterProcess, request: &[u8], what: &str) {
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.try_send(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: the router must take the whole body: {e}"));
    let resp = conn.response(what).await;
    assert_eq!(
        resp.status,
        413,
        "{what}: {:?} {}",
        resp.headers,
        resp.text()
    );
    let body: Value = serde_json::from_slice(&resp.body).expect("a JSON error body");
    assert_eq!(body["error"]["code"], "request_body_too_large", "{what}");
    assert_eq!(resp.header("connection"), Some("close"), "{what}");
    match conn.wait_for_close(what).await {
        (Closed::Eof, rest) => assert!(rest.is_empty(), "{what}: bytes after the answer"),
        (Closed::Error(e), _) => panic!("{what}: the connection was reset, not closed: {e}"),
    }
}

#[tokio::test]
async fn a_content_length_past_the_limit_is_413_with_nothing_forwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    for key in ["k", "r"] {
        // Far larger than the socket buffers: the client can only finish writing because
        // the router reads and drops the rest after answering.
        let what = format!("route {key}: Content-Length 4 MiB over a {LIMIT}-byte limit");
        expect_413_and_clean_close(&router, &with_length(key, 4 << 20), &what).await;
        let what = format!("route {key}: Content-Length {} bytes", LIMIT + 1);
        expect_413_and_clean_close(&router, &with_length(key, LIMIT + 1), &what).await;
    }
    assert_eq!(
        fake.requests(),
        0,
        "a declared length past the limit is never forwarded"
    );
}

#[tokio::test]
async fn a_body_at_the_limit_passes_whole() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    for (key, request) in [
        ("k", with_length("k", LIMIT)),
        ("r", with_length("r", LIMIT)),
        ("k", chunked("k", 4, LIMIT / 4)),
        ("r", chunked("r", 4, LIMIT / 4)),
        // Without a limit, the same route table takes a larger body.
        ("open", with_length("open", 64 * LIMIT)),
    ] {
        let mut conn = RawConn::connect(router.proxy_addr).await;
        conn.send(&request).await;
        let resp = conn.response(key).await;
        assert_eq!(resp.status, 200, "route {key}: {}", resp.text());
        let body: Value = serde_json::from_slice(&resp.body).expect("the fake's JSON");
        let expected = if key == "open" { 64 * LIMIT } else { LIMIT };
        assert_eq!(
            body["bytes"], expected,
            "route {key}: the upstream read the body whole"
        );
    }
    assert_eq!(fake.requests(), 5);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_off_with_413() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    for key in ["k", "r"] {
        // The first chunks fit, then the total passes the limit.
        let what = format!("route {key}: chunked, 5 × 300 bytes over {LIMIT}");
        expect_413_and_clean_close(&router, &chunked(key, 5, 300), &what).await;
        // One chunk larger than the limit on its own.
        let what = format!("route {key}: chunked, one chunk of 64 KiB");
        expect_413_and_clean_close(&router, &chunked(key, 1, 64 << 10), &what).await;
        // Far more than the socket buffers hold, written whole.
        let what = format!("route {key}: chunked, 64 chunks of 64 KiB");
        expect_413_and_clean_close(&router, &chunked(key, 64, 64 << 10), &what).await;
    }
    assert!(
        fake.sha256_bodies()
            .iter()
            .all(|(bytes, _)| *bytes as usize <= LIMIT),
        "no upstream read more than the limit: {:?}",
        fake.sha256_bodies()
    );
    // The router kept serving.
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send(&with_length("k", 10)).await;
    assert_eq!(conn.response("a small body afterwards").await.status, 200);
}

#[tokio::test]
async fn an_http2_body_past_the_limit_is_413_with_or_without_a_length() {
    let _trace = trace_init();
    let (router, _fake) = router_and_fake().await;
    let h2 = HttpClient::h2c();
    for key in ["k", "r"] {
        // A declared length.
        let req = client::request(Method::POST, router.proxy_addr, "/sha256")
            .header(ROUTING_KEY, key)
            .body(client::full(vec![b'x'; LIMIT + 1]))
            .unwrap();
        let resp = h2.fetch(req).await;
        expect_router_error(&resp, 413, "request_body_too_large");

        // No length: DATA frames until the total passes the limit.
        let (tx, body) = client::channel_body(8);
        let req = client::request(Method::POST, router.proxy_addr, "/sha256")
            .header(ROUTING_KEY, key)
            .body(body)
            .unwrap();
        let feed = tokio::spawn(async move {
            for _ in 0..8 {
                if tx.send(Bytes::from(vec![b'z'; 300])).await.is_err() {
                    break;
                }
            }
        });
        let resp = h2.fetch(req).await;
        expect_router_error(&resp, 413, "request_body_too_large");
        feed.abort();
    }
    // The connection still serves a body within the limit.
    let req = client::request(Method::POST, router.proxy_addr, "/sha256")
        .header(ROUTING_KEY, "k")
        .body(client::full(vec![b'x'; LIMIT]))
        .unwrap();
    let resp = h2.fetch(req).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["bytes"], LIMIT);
}

#[tokio::test]
async fn a_grpc_body_past_the_limit_is_resource_exhausted() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let h2 = HttpClient::h2c();
    let req = client::request(Method::POST, router.proxy_addr, "/pkg.Svc/Method")
        .header(ROUTING_KEY, "k")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(client::full(vec![0u8; 4 * LIMIT]))
        .unwrap();
    let resp = h2.fetch(req).await;
    assert_eq!(resp.status, 200, "gRPC errors are trailers-only");
    assert_eq!(resp.header_or_trailer("grpc-status").as_deref(), Some("8"));
    let message = resp.header_or_trailer("grpc-message").unwrap_or_default();
    assert!(message.starts_with("request_body_too_large"), "{message}");
    assert_eq!(fake.requests(), 0);
}
