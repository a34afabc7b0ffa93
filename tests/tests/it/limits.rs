//! Connection and request limits at the edge (DESIGN §12), each behind a flag with a
//! documented default: the request head size (`--max-request-head-bytes` → 431), the
//! header count (`--max-request-headers` → 431; over HTTP/2 with the JSON code
//! `request_headers_too_large`), the header-read timeout (slowloris: the connection is
//! closed), the idle keep-alive timeout (a connection waiting on its upstream is not idle),
//! `--max-connections` (past it new connections are closed at once and counted), and for
//! HTTP/2 the announced `SETTINGS_MAX_CONCURRENT_STREAMS` and the rapid-reset guard
//! (GOAWAY `ENHANCE_YOUR_CALM`), checked with frames encoded by hand.
//!
//! No test measures time: each waits for an observable event (a response, the end of a
//! connection, a frame, a metric) with a deadline that only turns a hang into a failure.

use http::Method;
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::raw::{H2Frame, RawConn, RawResponse, h2};
use integration_tests::router::StartOptions;
use integration_tests::wait_until;
use integration_tests::{DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, trace_init};
use serde_json::{Value, json};

use crate::support::{expect_router_error, fetch};

/// The counter of connections closed at once past `--max-connections`.
const CONNECTIONS_REFUSED: &str = "router_connections_refused_total";

/// Route `k` to cluster `c`, whose only endpoint is `fake`; `route` fields added.
fn rules(fake: &Listening, route: &Value) -> Value {
    let mut k = json!({ "cluster": "c" });
    if let (Some(k), Some(extra)) = (k.as_object_mut(), route.as_object()) {
        k.extend(extra.clone());
    }
    json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": k },
    })
}

/// A fake and a router on [`rules`] with `args`.
async fn router_with(args: &[&str]) -> (RouterProcess, Listening) {
    let fake = FakeModel::new().name("m").start().await;
    let router = RouterProcess::start_with_args(&rules(&fake, &json!({})), args).await;
    (router, fake)
}

/// `GET path HTTP/1.1` with `Host: a`, `x-routing-key: k` and `fields` (each line with its
/// CRLF).
fn get(path: &str, fields: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\n{fields}\r\n").into_bytes()
}

/// `count` header lines `x-filler-N: v`.
fn filler_fields(count: usize) -> String {
    (0..count).map(|i| format!("x-filler-{i}: v\r\n")).collect()
}

/// One header line `x-big: aaaa..` of `len` value bytes.
fn big_field(len: usize) -> String {
    format!("x-big: {}\r\n", "a".repeat(len))
}

/// Sends `bytes` on a new connection (writing while reading: the router may answer before
/// it has read them all) and returns the answer.
async fn answer(router: &RouterProcess, bytes: &[u8], what: &str) -> RawResponse {
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send_while_reading(bytes, what).await
}

#[track_caller]
fn assert_status(resp: &RawResponse, status: u16, what: &str) {
    assert_eq!(
        resp.status,
        status,
        "{what}: {:?} {:?}",
        resp.headers,
        resp.text()
    );
}

// === head size and header count ===

#[tokio::test]
async fn a_head_past_max_request_head_bytes_is_431() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--max-request-head-bytes", "16384"]).await;
    let resp = answer(&router, &get("/", &big_field(20 * 1024)), "a 20 KiB header").await;
    assert_status(&resp, 431, "a 20 KiB header past a 16 KiB limit");
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");

    let resp = answer(&router, &get("/", &big_field(4 * 1024)), "a 4 KiB header").await;
    assert_status(&resp, 200, "a 4 KiB header within a 16 KiB limit");
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn the_default_head_limit_refuses_a_200_kib_header() {
    let _trace = trace_init();
    let (router, fake) = router_with(&[]).await;
    let resp = answer(
        &router,
        &get("/", &big_field(200 * 1024)),
        "a 200 KiB header",
    )
    .await;
    assert_status(&resp, 431, "a 200 KiB header with the default limit");
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");

    // Under the default 64 KiB.
    let resp = answer(&router, &get("/", &big_field(32 * 1024)), "a 32 KiB header").await;
    assert_status(&resp, 200, "a 32 KiB header with the default limit");
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn max_request_head_bytes_below_its_minimum_refuses_the_start() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let failed = RouterProcess::start_expecting_failure_with_args(
        &rules(&fake, &json!({})),
        &["--max-request-head-bytes", "4096"],
    )
    .await;
    assert!(!failed.status.success(), "exit status {}", failed.status);
    assert!(
        failed.stderr.contains("--max-request-head-bytes"),
        "stderr names the flag:\n{}",
        failed.stderr
    );
}

#[tokio::test]
async fn more_header_fields_than_max_request_headers_is_431_over_http1() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--max-request-headers", "10"]).await;
    // Host and x-routing-key count: 2 + 12 fields.
    let resp = answer(&router, &get("/", &filler_fields(12)), "14 header fields").await;
    assert_status(&resp, 431, "14 header fields past a limit of 10");
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");

    let resp = answer(&router, &get("/", &filler_fields(5)), "7 header fields").await;
    assert_status(&resp, 200, "7 header fields within a limit of 10");
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn more_header_fields_than_max_request_headers_is_431_over_http2() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--max-request-headers", "10"]).await;
    let h2c = HttpClient::h2c();
    let request = |fields: usize| {
        let mut builder =
            client::request(Method::GET, router.proxy_addr, "/").header(ROUTING_KEY, "k");
        for i in 0..fields {
            builder = builder.header(format!("x-filler-{i}"), "v");
        }
        builder.body(client::empty()).expect("a valid request")
    };
    let resp = fetch(&h2c, request(12)).await;
    expect_router_error(&resp, 431, "request_headers_too_large");
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");

    let resp = fetch(&h2c, request(5)).await;
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(fake.requests(), 1);
}

// === timeouts ===

#[tokio::test]
async fn a_head_not_finished_within_the_header_read_timeout_is_closed() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--header-read-timeout-ms", "300"]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    // A slowloris client: part of a head, then nothing.
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\nx-slow: ")
        .await;
    let (closed, bytes) = conn
        .wait_for_close("the router to close a connection with an unfinished head")
        .await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        bytes.is_empty() || text.starts_with("HTTP/1.1 4"),
        "only an error answer may come before the close ({closed:?}): {text:?}"
    );
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_chunked_body_whose_first_chunk_never_comes_is_answered_408_and_closed() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--header-read-timeout-ms", "300"]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    // The whole head of a chunked upload, then not a byte of its body: the first chunk is
    // read before anything goes upstream, and is waited for no longer than the head.
    conn.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    let resp = conn
        .response("the router's answer to a body that never starts")
        .await;
    assert_status(&resp, 408, "a chunked body that never starts");
    let text = String::from_utf8_lossy(&resp.body);
    assert!(text.contains("request_timeout"), "{text}");
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "the body is unread"
    );
    conn.wait_for_close("the router to close the connection after its 408")
        .await;
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_by_the_header_read_timeout() {
    let _trace = trace_init();
    let (router, _fake) = router_with(&["--header-read-timeout-ms", "300"]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    // The start of the h2c preface keeps the server guessing which protocol this is.
    conn.send(&h2::PREFACE[..10]).await;
    let (closed, bytes) = conn
        .wait_for_close("the router to close a connection with an unfinished preface")
        .await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        bytes.is_empty() || text.starts_with("HTTP/1.1 4"),
        "only an error answer may come before the close ({closed:?}): {text:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let _trace = trace_init();
    let (router, fake) = router_with(&["--idle-timeout-ms", "300"]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send(&get("/", "")).await;
    let resp = conn.response("the answer on a keep-alive connection").await;
    assert_status(&resp, 200, "a request before going idle");
    assert_ne!(
        resp.header("connection"),
        Some("close"),
        "the connection is kept alive at first"
    );
    conn.expect_closed("the router to close an idle connection")
        .await;
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn a_request_waiting_on_its_upstream_is_not_cut_by_the_idle_timeout() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    // The route timeout is several idle timeouts long: the client gets the router's 504
    // only if its connection survived the wait.
    let router = RouterProcess::start_with_args(
        &rules(&fake, &json!({ "timeout_ms": 2000 })),
        &["--idle-timeout-ms", "300"],
    )
    .await;

    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send(&get("/hang", "")).await;
    let resp = conn
        .response("the answer to a request the upstream never answers")
        .await;
    assert_status(
        &resp,
        504,
        "HTTP/1.1: a request waiting on a hanging upstream",
    );
    conn.expect_closed("the router to close the connection once idle")
        .await;

    let h2c = HttpClient::h2c();
    let req = client::request(Method::GET, router.proxy_addr, "/hang")
        .header(ROUTING_KEY, "k")
        .body(client::empty())
        .expect("a valid request");
    let resp = fetch(&h2c, req).await;
    expect_router_error(&resp, 504, "upstream_timeout");
    assert_eq!(fake.requests(), 2);
}

// === connections ===

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    let router = RouterProcess::start_with_options(
        &rules(&fake, &json!({})),
        &StartOptions {
            workers: Some(1),
            args: &["--max-connections", "2"],
            ..StartOptions::default()
        },
    )
    .await;

    // Two connections, each served and kept open.
    let mut open = Vec::new();
    for i in 0..2 {
        let mut conn = RawConn::connect(router.proxy_addr).await;
        conn.send(&get("/", "")).await;
        let resp = conn
            .response(&format!("the answer on connection {i}"))
            .await;
        assert_status(&resp, 200, &format!("connection {i}"));
        open.push(conn);
    }

    // The third is accepted and closed at once, without a word.
    let mut third = RawConn::connect(router.proxy_addr).await;
    third
        .expect_closed("the router to close a connection past the limit")
        .await;
    router
        .wait_for_metric(CONNECTIONS_REFUSED, &[], |v| v >= 1.0)
        .await;
    assert_eq!(fake.requests(), 2, "the refused connection sent nothing");

    // Once one of the two closes, a new connection is served (the router sees the close
    // asynchronously, so a connection or two may still be refused meanwhile).
    drop(open.remove(0));
    wait_until("a new connection is served", DEADLINE, || async {
        let mut conn = RawConn::connect(router.proxy_addr).await;
        if conn.try_send(&get("/", "")).await.is_err() {
            return false;
        }
        matches!(conn.read_response().await, Ok(Some(resp)) if resp.status == 200)
    })
    .await;

    // The connection that stayed open is still served.
    let kept = &mut open[0];
    kept.send(&get("/", "")).await;
    let resp = kept.response("the answer on the kept connection").await;
    assert_status(&resp, 200, "the connection kept open");
}

// === HTTP/2 ===

/// Sends the h2c preface and an empty SETTINGS frame, and returns the server's first
/// SETTINGS frame (not an acknowledgement).
async fn h2_handshake(conn: &mut RawConn) -> H2Frame {
    let mut hello = h2::PREFACE.to_vec();
    hello.extend_from_slice(&h2::settings(&[]));
    conn.send(&hello).await;
    let (settings, seen) = conn
        .h2_frame_where("the server's SETTINGS frame", |f| {
            f.kind == h2::SETTINGS && f.flags & h2::ACK == 0
        })
        .await;
    settings.unwrap_or_else(|| {
        panic!(
            "the connection ended before a SETTINGS frame; frames: {}",
            h2::describe(&seen)
        )
    })
}

#[tokio::test]
async fn the_http2_settings_announce_max_concurrent_streams() {
    let _trace = trace_init();
    let (router, _fake) = router_with(&["--http2-max-concurrent-streams", "7"]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    let settings = h2_handshake(&mut conn).await;
    let values = h2::settings_of(&settings);
    assert!(
        values.contains(&(h2::MAX_CONCURRENT_STREAMS, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 7 in {values:?}"
    );
}

#[tokio::test]
async fn a_rapid_reset_flood_ends_the_connection_with_enhance_your_calm() {
    let _trace = trace_init();
    let (router, fake) = router_with(&[]).await;
    let mut conn = RawConn::connect(router.proxy_addr).await;
    let _settings = h2_handshake(&mut conn).await;

    // 200 streams, each opened and cancelled at once, in one write.
    let authority = router.proxy_addr.to_string();
    let block = h2::get_block(&authority, &[(ROUTING_KEY, "k")]);
    let mut flood = h2::settings_ack();
    for i in 0..200u32 {
        let stream = 2 * i + 1;
        flood.extend_from_slice(&h2::headers(stream, &block));
        flood.extend_from_slice(&h2::rst_stream(stream, h2::CANCEL));
    }
    // The server may end the connection before it has read the whole flood.
    let _ = conn.try_send(&flood).await;
    let (goaway, seen) = conn
        .h2_frame_where("a GOAWAY after the reset flood", |f| f.kind == h2::GOAWAY)
        .await;
    let goaway = goaway.unwrap_or_else(|| {
        panic!(
            "the connection ended without a GOAWAY; frames seen: {}",
            h2::describe(&seen)
        )
    });
    assert_eq!(
        h2::goaway_error(&goaway),
        Some(h2::ENHANCE_YOUR_CALM),
        "GOAWAY error code; frames seen before it: {} then {}",
        h2::describe(&seen),
        h2::describe(std::slice::from_ref(&goaway))
    );
    // Within the deadline: the flood's connection does not linger.
    let _ = conn
        .wait_for_close("the connection to end after the GOAWAY")
        .await;

    // Other clients are still served.
    let before = fake.requests();
    let req = client::request(Method::GET, router.proxy_addr, "/")
        .header(ROUTING_KEY, "k")
        .body(client::empty())
        .expect("a valid request");
    let resp = fetch(&HttpClient::h2c(), req).await;
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert!(fake.requests() > before);
}
