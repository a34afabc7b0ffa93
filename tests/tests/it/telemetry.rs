//! Telemetry seen from outside: the per-route latency histograms (time upstream, the
//! router's own overhead), the request and response byte counters, the per-cluster in-flight
//! gauge and the gRPC status counter on the admin `/metrics`, and the JSON access log
//! (`--access-log --log-format json`): one line per answer, proxied or the router's own,
//! written once the response body has ended.
//!
//! Every count here is exact: each test starts its own router, so the only traffic it sees
//! is the test's. Metric values are awaited (the router may count the end of a body after
//! the client has read it); access-log lines are awaited in the router's captured output (the
//! log goes through a non-blocking writer). Durations are only checked to be present or
//! positive, never compared with a clock.

use std::net::SocketAddr;

use http::Method;
use hyper::body::Incoming;
use integration_tests::client::{self, Body};
use integration_tests::fake_grpc::pb::CountRequest;
use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_model::sse_chunk;
use integration_tests::{
    Collected, DEADLINE, FakeGrpc, FakeModel, HttpClient, Listening, RouterProcess, trace_init,
    wait_until, within,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::{
    CLIENT_VERSIONS, TENANT, assert_status, echo_client, expect_end, expect_router_error, fetch,
    keyed, keyed_call, keyed_get, post_pattern, read_exactly, say, seen, simple_rules,
    wait_for_metric_exactly,
};

/// Time from sending a request upstream to its response headers, by route and cluster.
const UPSTREAM_DURATION: &str = "router_upstream_duration_seconds";

/// Time from receiving a request to sending it upstream, by route and cluster.
const OVERHEAD_DURATION: &str = "router_overhead_duration_seconds";

/// Response body bytes sent to clients, by route and cluster.
const RESPONSE_BYTES: &str = "router_response_bytes_total";

/// Request body bytes read from clients, by route (the body is read before, and across, the
/// clusters a request may try).
const REQUEST_BYTES: &str = "router_request_bytes_total";

/// Requests in flight, by cluster.
const CLUSTER_ACTIVE: &str = "router_cluster_active_requests";

/// gRPC answers, by route, cluster and `grpc_status` (the code as a number).
const GRPC_RESPONSES: &str = "router_grpc_responses_total";

/// The router flags that turn the JSON access log on.
const ACCESS_LOG_ARGS: [&str; 3] = ["--access-log", "--log-format", "json"];

/// The request-id header the router forwards (and sets when the client sent none).
const REQUEST_ID: &str = "x-request-id";

/// A refill rate so slow that no token comes back during a test.
const NO_REFILL: f64 = 0.001;

/// The labels `route` and `cluster` of the per-route series.
fn route_cluster<'a>(route: &'a str, cluster: &'a str) -> [(&'a str, &'a str); 2] {
    [("route", route), ("cluster", cluster)]
}

/// `name` with the suffix of one of a histogram's series (`_count`, `_sum`).
fn series(name: &str, suffix: &str) -> String {
    format!("{name}{suffix}")
}

/// Starts `GET /sse?chunks=1` with `key` and returns its body once the response head
/// arrived: the request is then in flight until the fake is released and the body read to
/// its end.
async fn hold_sse(client: &HttpClient, proxy: SocketAddr, key: &str) -> Incoming {
    hold_sse_with(client, keyed_get(proxy, "/sse?chunks=1", key)).await
}

/// [`hold_sse`] for a prepared request.
async fn hold_sse_with(client: &HttpClient, req: http::Request<Body>) -> Incoming {
    let resp = within("an SSE head", DEADLINE, client.send(req))
        .await
        .expect("an SSE request through the router");
    assert_eq!(resp.status(), 200, "an SSE request is answered by the fake");
    resp.into_body()
}

/// Releases the one SSE request `fake` holds and reads `body` to its end.
async fn release_held(fake: &Listening, mut body: Incoming) {
    fake.release_sse(1);
    read_exactly(&mut body, sse_chunk(0).as_bytes(), "the released SSE chunk").await;
    expect_end(body, "the end of the SSE stream").await;
}

// === access-log helpers ===

/// The JSON access-log lines (target `access`) the router has printed so far (on stdout or
/// stderr; lines that are not JSON, or are still being written, are skipped).
fn access_lines(router: &RouterProcess) -> Vec<Value> {
    router
        .output()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

/// Field `name` of an access-log line as text: from the `fields` object of
/// tracing-subscriber's JSON formatter, or from the top level when the events are flattened.
/// Strings are taken as they are, numbers and booleans in their JSON text; `None` when the
/// line has no such field.
fn field(line: &Value, name: &str) -> Option<String> {
    let value = line
        .get("fields")
        .and_then(|fields| fields.get(name))
        .or_else(|| line.get(name))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Whether `line` has every `(field, value)` of `want` (compared as text, see [`field`]).
fn line_matches(line: &Value, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(name, value)| field(line, name).as_deref() == Some(*value))
}

/// The access-log lines that have every `(field, value)` of `want`.
fn lines_matching(router: &RouterProcess, want: &[(&str, &str)]) -> Vec<Value> {
    access_lines(router)
        .into_iter()
        .filter(|line| line_matches(line, want))
        .collect()
}

/// Waits until the router has printed an access-log line with every `(field, value)` of
/// `want`, checks it printed exactly one, and returns it (`what` names the answer).
///
/// # Panics
///
/// At the deadline, or when more than one line matches.
async fn access_line(router: &RouterProcess, want: &[(&str, &str)], what: &str) -> Value {
    wait_until(
        &format!("the access log has a line for {what} with {want:?}"),
        DEADLINE,
        || std::future::ready(!lines_matching(router, want).is_empty()),
    )
    .await;
    let mut found = lines_matching(router, want);
    assert_eq!(
        found.len(),
        1,
        "{what}: one access-log line per answer, got {found:#?}"
    );
    found.remove(0)
}

/// Asserts `line` has field `name` equal to `expected` (as text); `what` names the answer.
#[track_caller]
fn assert_field(line: &Value, name: &str, expected: &str, what: &str) {
    assert_eq!(
        field(line, name).as_deref(),
        Some(expected),
        "{what}: field {name} of the access-log line {line}"
    );
}

/// Asserts `line` has field `name` holding a whole number, and returns it.
#[track_caller]
fn number_field(line: &Value, name: &str, what: &str) -> u64 {
    let text = field(line, name)
        .unwrap_or_else(|| panic!("{what}: no field {name} in the access-log line {line}"));
    text.parse()
        .unwrap_or_else(|_| panic!("{what}: field {name} = {text:?} is not a whole number: {line}"))
}

/// Asserts `line` has the fields every line of a proxied answer carries, with the values of
/// `want`; `duration_us` and `upstream_us` only need to be whole numbers, `client` a
/// loopback address.
#[track_caller]
fn assert_proxied_line(line: &Value, want: &[(&str, &str)], what: &str) {
    for (name, value) in want {
        assert_field(line, name, value, what);
    }
    let client = field(line, "client")
        .unwrap_or_else(|| panic!("{what}: no field client in the access-log line {line}"));
    assert!(
        client.starts_with("127.0.0.1"),
        "{what}: client {client:?} is the test's loopback address: {line}"
    );
    number_field(line, "duration_us", what);
    number_field(line, "upstream_us", what);
}

/// `Count(n, fail_after)` with routing key `key`, read to its end: the replies' `i`, and the
/// final status (`Ok` when the stream ended with OK trailers).
async fn count_all(
    client: &mut EchoClient<Channel>,
    key: &str,
    n: u32,
    fail_after: u32,
) -> (Vec<u32>, Result<(), tonic::Status>) {
    let request = keyed_call(CountRequest { n, fail_after }, key);
    let mut stream = within("Count", DEADLINE, client.count(request))
        .await
        .unwrap_or_else(|status| panic!("Count({n}, {fail_after}) was refused: {status:?}"))
        .into_inner();
    let mut got = Vec::new();
    // Bounded: the fake sends at most `n` replies, then a status.
    for _ in 0..=n {
        match within("a streamed reply", DEADLINE, stream.message()).await {
            Ok(Some(reply)) => got.push(reply.i),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
    panic!("Count({n}, {fail_after}) sent more than {n} replies: {got:?}");
}

// === latency histograms ===

#[tokio::test]
async fn the_upstream_and_overhead_histograms_count_every_proxied_request() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&simple_rules(&[
        ("a", vec![a.endpoint()]),
        ("b", vec![b.endpoint()]),
    ]))
    .await;
    let clients = CLIENT_VERSIONS.map(HttpClient::for_version);

    let sent = [("a", 3usize), ("b", 2usize)];
    for (key, n) in sent {
        for i in 0..n {
            let client = &clients[i % clients.len()];
            let resp = fetch(client, keyed_get(router.proxy_addr, "/", key)).await;
            assert_status(&resp, 200);
        }
    }
    // The router's own answer is not proxied: no time upstream, no overhead before sending.
    let unknown = fetch(
        &clients[0],
        keyed_get(router.proxy_addr, "/", "no-such-route"),
    )
    .await;
    expect_router_error(&unknown, 404, "unknown_routing_key");

    for (key, n) in sent {
        for name in [UPSTREAM_DURATION, OVERHEAD_DURATION] {
            wait_for_metric_exactly(
                &router,
                &series(name, "_count"),
                &route_cluster(key, key),
                n as f64,
                &format!("one sample per request proxied on route {key}"),
            )
            .await;
        }
        let overhead = router
            .metric(&series(OVERHEAD_DURATION, "_sum"), &route_cluster(key, key))
            .await;
        assert!(
            overhead > 0.0,
            "the router's own time on route {key} adds up to more than nothing: {overhead}"
        );
        let upstream = router
            .metric(&series(UPSTREAM_DURATION, "_sum"), &route_cluster(key, key))
            .await;
        assert!(
            upstream > 0.0,
            "the time upstream on route {key} adds up to more than nothing: {upstream}"
        );
    }
    let text = router.metrics_text().await;
    assert!(
        text.contains(&series(UPSTREAM_DURATION, "_bucket"))
            && text.contains(&series(OVERHEAD_DURATION, "_bucket")),
        "both durations are histograms:\n{}",
        text.lines()
            .filter(|l| l.contains("_duration_seconds"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let proxied: usize = sent.iter().map(|(_, n)| n).sum();
    for name in [UPSTREAM_DURATION, OVERHEAD_DURATION] {
        assert_eq!(
            integration_tests::router::metric_value(&text, &series(name, "_count"), &[]),
            Some(proxied as f64),
            "{name}: only proxied requests are counted, over all labels"
        );
    }
}

// === byte counters ===

#[tokio::test]
async fn request_and_response_bytes_are_counted_exactly_for_fixed_size_bodies() {
    const DOWNLOAD: u64 = 100_000;
    const UPLOAD: u64 = 5_000;
    const TIMES: usize = 3;

    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "dl": { "cluster": "c" }, "up": { "cluster": "c" } },
    }))
    .await;
    let clients = CLIENT_VERSIONS.map(HttpClient::for_version);

    for i in 0..TIMES {
        let client = &clients[i % clients.len()];
        let path = format!("/download?bytes={DOWNLOAD}");
        let resp = fetch(client, keyed_get(router.proxy_addr, &path, "dl")).await;
        assert_status(&resp, 200);
        assert_eq!(
            resp.body.len() as u64,
            DOWNLOAD,
            "download {i} arrived whole"
        );
    }
    let mut answered = 0u64;
    for i in 0..TIMES {
        let client = &clients[i % clients.len()];
        let resp = post_pattern(client, router.proxy_addr, "/sha256", "up", UPLOAD).await;
        assert_status(&resp, 200);
        assert_eq!(
            resp.json()["bytes"],
            UPLOAD,
            "upload {i} reached the fake whole"
        );
        answered += resp.body.len() as u64;
    }

    wait_for_metric_exactly(
        &router,
        RESPONSE_BYTES,
        &route_cluster("dl", "c"),
        (TIMES as u64 * DOWNLOAD) as f64,
        "every byte of the downloads, and nothing else",
    )
    .await;
    wait_for_metric_exactly(
        &router,
        REQUEST_BYTES,
        &[("route", "up")],
        (TIMES as u64 * UPLOAD) as f64,
        "every byte of the uploads, and nothing else",
    )
    .await;
    wait_for_metric_exactly(
        &router,
        RESPONSE_BYTES,
        &route_cluster("up", "c"),
        answered as f64,
        "the JSON answers to the uploads, byte for byte",
    )
    .await;
    assert_eq!(
        router.metric(REQUEST_BYTES, &[("route", "dl")]).await,
        0.0,
        "a GET has no request body"
    );
}

// === in-flight gauge ===

#[tokio::test]
async fn the_per_cluster_in_flight_gauge_shows_a_held_request_and_drops_after() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&simple_rules(&[
        ("a", vec![a.endpoint()]),
        ("b", vec![b.endpoint()]),
    ]))
    .await;
    let client = HttpClient::http1();
    let active = |cluster: &'static str| [("cluster", cluster)];

    let held_a = hold_sse(&client, router.proxy_addr, "a").await;
    router
        .wait_for_metric(CLUSTER_ACTIVE, &active("a"), |v| v == 1.0)
        .await;
    assert_eq!(
        router.metric(CLUSTER_ACTIVE, &active("b")).await,
        0.0,
        "nothing is in flight on cluster b"
    );

    let h2 = HttpClient::h2c();
    let held_b = hold_sse(&h2, router.proxy_addr, "b").await;
    router
        .wait_for_metric(CLUSTER_ACTIVE, &active("b"), |v| v == 1.0)
        .await;
    assert_eq!(
        router.metric(CLUSTER_ACTIVE, &active("a")).await,
        1.0,
        "cluster a still holds its request"
    );

    release_held(&a, held_a).await;
    router
        .wait_for_metric(CLUSTER_ACTIVE, &active("a"), |v| v == 0.0)
        .await;
    assert_eq!(
        router.metric(CLUSTER_ACTIVE, &active("b")).await,
        1.0,
        "the end of a request on cluster a leaves cluster b's in flight"
    );

    release_held(&b, held_b).await;
    router
        .wait_for_metric(CLUSTER_ACTIVE, &active("b"), |v| v == 0.0)
        .await;
    assert_eq!(router.metric(CLUSTER_ACTIVE, &active("a")).await, 0.0);
}

// === gRPC statuses ===

#[tokio::test]
async fn grpc_statuses_from_a_trailers_only_error_and_from_an_ok_calls_trailers_are_counted_by_code()
 {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().name("echo-1").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
        "routes": { "echo": { "cluster": "grpc" } },
    }))
    .await;
    let mut client = echo_client(&router).await;

    // OK in the trailers after the reply: two unary calls and a stream.
    for i in 0..2 {
        let reply = say(&mut client, "Say", "echo", &format!("hello {i}"))
            .await
            .unwrap_or_else(|status| panic!("Say {i}: {status:?}"));
        assert_eq!(reply.server, "echo-1");
    }
    let (got, end) = count_all(&mut client, "echo", 3, 0).await;
    assert_eq!(got, vec![0, 1, 2]);
    end.unwrap_or_else(|status| panic!("Count(3) ends with OK trailers: {status:?}"));

    // Trailers-only errors: PERMISSION_DENIED (7) and UNAVAILABLE (14).
    let denied = say(&mut client, "Say(fail)", "echo", "fail")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    upstream.fail_next_unavailable(1);
    let unavailable = say(&mut client, "Say while unavailable", "echo", "x")
        .await
        .unwrap_err();
    assert_eq!(
        unavailable.code(),
        tonic::Code::Unavailable,
        "{unavailable:?}"
    );

    // ABORTED (10) in real trailers, after streamed replies.
    let (got, end) = count_all(&mut client, "echo", 5, 2).await;
    assert_eq!(got, vec![0, 1]);
    let aborted = end.expect_err("Count(5, fail_after 2) ends with ABORTED");
    assert_eq!(aborted.code(), tonic::Code::Aborted, "{aborted:?}");
    assert_eq!(upstream.requests(), 6, "every call went upstream once");

    for (code, n, what) in [
        ("0", 3.0, "two OK unary calls and an OK stream"),
        ("7", 1.0, "a trailers-only PERMISSION_DENIED"),
        ("14", 1.0, "a trailers-only UNAVAILABLE"),
        ("10", 1.0, "an ABORTED in trailers after replies"),
    ] {
        wait_for_metric_exactly(
            &router,
            GRPC_RESPONSES,
            &[
                ("route", "echo"),
                ("cluster", "grpc"),
                ("grpc_status", code),
            ],
            n,
            what,
        )
        .await;
    }
    let total = router.metric(GRPC_RESPONSES, &[]).await;
    assert_eq!(total, 6.0, "one count per gRPC answer");
}

// === access log ===

#[tokio::test]
async fn an_access_log_line_per_proxied_answer_carries_its_fields_and_the_upstreams_request_id() {
    const DOWNLOAD: u64 = 100_000;

    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start_with_args(
        &json!({
            "clusters": { "c": { "endpoints": [fake.endpoint()] } },
            "routes": { "k": { "cluster": "c" } },
            "tenants": { "search": {} },
        }),
        &ACCESS_LOG_ARGS,
    )
    .await;
    let endpoint = fake.endpoint();

    // A download over HTTP/1.1 with the client's own request id, which is kept.
    let req = keyed(
        Method::GET,
        router.proxy_addr,
        &format!("/download?bytes={DOWNLOAD}"),
        "k",
    )
    .header(REQUEST_ID, "telemetry-download-1")
    .body(client::empty())
    .expect("a valid request");
    let resp = fetch(&HttpClient::http1(), req).await;
    assert_status(&resp, 200);
    assert_eq!(resp.body.len() as u64, DOWNLOAD);
    let upstream_saw = fake
        .last_request()
        .expect("the download reached the fake")
        .headers
        .get(REQUEST_ID)
        .map(|v| v.to_str().expect("a text request id").to_owned());
    assert_eq!(
        upstream_saw.as_deref(),
        Some("telemetry-download-1"),
        "a client-sent request id is forwarded as it is"
    );
    let line = access_line(
        &router,
        &[("request_id", "telemetry-download-1")],
        "the download",
    )
    .await;
    assert_proxied_line(
        &line,
        &[
            ("route", "k"),
            ("cluster", "c"),
            ("endpoint", &endpoint),
            ("tenant", ""),
            ("traffic_class", "live"),
            ("status", "200"),
            ("grpc_status", ""),
            ("bytes_out", &DOWNLOAD.to_string()),
        ],
        "the download",
    );

    // Over h2c, as a tenant, without a request id: the router makes one, and logs the one
    // the upstream saw.
    let req = keyed(Method::GET, router.proxy_addr, "/headers", "k")
        .header(TENANT, "search")
        .body(client::empty())
        .expect("a valid request");
    let resp = fetch(&HttpClient::h2c(), req).await;
    assert_status(&resp, 200);
    let ids = seen(&resp.json(), REQUEST_ID);
    assert_eq!(ids.len(), 1, "the router sets one request id: {ids:?}");
    let generated = &ids[0];
    assert!(!generated.is_empty(), "a generated request id is not empty");
    let line = access_line(
        &router,
        &[("request_id", generated)],
        "the /headers request",
    )
    .await;
    assert_proxied_line(
        &line,
        &[
            ("route", "k"),
            ("cluster", "c"),
            ("endpoint", &endpoint),
            ("tenant", "search"),
            ("traffic_class", "live"),
            ("status", "200"),
            ("grpc_status", ""),
            ("bytes_out", &resp.body.len().to_string()),
        ],
        "the /headers request",
    );

    // A held stream is logged once its body has ended, with the bytes it sent.
    let req = keyed(Method::GET, router.proxy_addr, "/sse?chunks=1", "k")
        .header(REQUEST_ID, "telemetry-sse-1")
        .body(client::empty())
        .expect("a valid request");
    let held = hold_sse_with(&HttpClient::http1(), req).await;
    assert!(
        lines_matching(&router, &[("request_id", "telemetry-sse-1")]).is_empty(),
        "no access-log line before the body of the held stream has ended"
    );
    release_held(&fake, held).await;
    let line = access_line(&router, &[("request_id", "telemetry-sse-1")], "the stream").await;
    assert_proxied_line(
        &line,
        &[
            ("route", "k"),
            ("cluster", "c"),
            ("status", "200"),
            ("bytes_out", &sse_chunk(0).len().to_string()),
        ],
        "the stream",
    );

    assert_eq!(
        access_lines(&router).len(),
        3,
        "one line per answer: {:#?}",
        access_lines(&router)
    );
}

#[tokio::test]
async fn a_declared_tenants_requests_carry_its_label_and_an_upload_logs_its_bytes_in() {
    const UPLOAD: u64 = 5_000;

    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start_with_args(
        &json!({
            "clusters": { "c": { "endpoints": [fake.endpoint()] } },
            "routes": { "up": { "cluster": "c" } },
            "tenants": { "search": {} },
        }),
        &ACCESS_LOG_ARGS,
    )
    .await;
    let upload = |tenant: Option<&str>, id: &str| {
        let mut req =
            keyed(Method::POST, router.proxy_addr, "/sha256", "up").header(REQUEST_ID, id);
        if let Some(tenant) = tenant {
            req = req.header(TENANT, tenant);
        }
        req.body(client::pattern_body(UPLOAD))
            .expect("a valid request")
    };
    for (i, client) in CLIENT_VERSIONS
        .map(HttpClient::for_version)
        .iter()
        .enumerate()
    {
        let resp = fetch(client, upload(Some("search"), &format!("bytes-in-{i}"))).await;
        assert_status(&resp, 200);
        assert_eq!(
            resp.json()["bytes"],
            UPLOAD,
            "upload {i} reached the fake whole"
        );
    }
    // Without a tenant, and with one the rule set does not declare.
    for (tenant, id) in [(None, "bytes-in-none"), (Some("other"), "bytes-in-other")] {
        let resp = fetch(&HttpClient::http1(), upload(tenant, id)).await;
        assert_status(&resp, 200);
    }
    let tenant_uploads = CLIENT_VERSIONS.len() as f64;

    for i in 0..CLIENT_VERSIONS.len() {
        let line = access_line(
            &router,
            &[("request_id", &format!("bytes-in-{i}"))],
            "an upload",
        )
        .await;
        assert_proxied_line(
            &line,
            &[
                ("tenant", "search"),
                ("bytes_in", &UPLOAD.to_string()),
                ("status", "200"),
            ],
            "an upload",
        );
    }
    let line = access_line(
        &router,
        &[("request_id", "bytes-in-none")],
        "the upload without a tenant",
    )
    .await;
    assert_field(
        &line,
        "bytes_in",
        &UPLOAD.to_string(),
        "the upload without a tenant",
    );

    let labels = [
        ("route", "up"),
        ("cluster", "c"),
        ("status", "200"),
        ("traffic_class", "live"),
    ];
    router
        .wait_for_metric("router_requests_total", &labels, |v| {
            v == tenant_uploads + 2.0
        })
        .await;
    let mut with_tenant = labels.to_vec();
    with_tenant.push(("tenant", "search"));
    assert_eq!(
        router.metric("router_requests_total", &with_tenant).await,
        tenant_uploads,
        "the declared tenant's requests, and only those, carry its label"
    );
    let mut undeclared = labels.to_vec();
    undeclared.push(("tenant", "other"));
    assert_eq!(
        router.metric("router_requests_total", &undeclared).await,
        0.0,
        "an undeclared tenant is no label value (clients cannot mint series)"
    );
}

#[tokio::test]
async fn an_access_log_line_of_a_grpc_call_carries_its_grpc_status() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().start().await;
    let router = RouterProcess::start_with_args(
        &json!({
            "clusters": { "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
            "routes": { "echo": { "cluster": "grpc" } },
        }),
        &ACCESS_LOG_ARGS,
    )
    .await;
    let mut client = echo_client(&router).await;

    say(&mut client, "Say", "echo", "hi")
        .await
        .unwrap_or_else(|status| panic!("Say: {status:?}"));
    let denied = say(&mut client, "Say(fail)", "echo", "fail")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    for (code, what) in [("0", "the OK call"), ("7", "the PERMISSION_DENIED call")] {
        let line = access_line(&router, &[("route", "echo"), ("grpc_status", code)], what).await;
        assert_proxied_line(
            &line,
            &[
                ("cluster", "grpc"),
                ("endpoint", &upstream.endpoint()),
                ("status", "200"),
            ],
            what,
        );
        let id = field(&line, "request_id").unwrap_or_default();
        assert!(!id.is_empty(), "{what}: a request id is logged: {line}");
    }
}

#[tokio::test]
async fn the_routers_own_400_404_403_and_429_answers_get_an_access_log_line_with_route_status_and_code()
 {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start_with_args(
        &json!({
            "clusters": { "c": { "endpoints": [fake.endpoint()] } },
            "routes": {
                "only-search": { "cluster": "c", "tenants": ["search"] },
                "open": { "cluster": "c" },
            },
            "tenants": {
                "search": {},
                "batch": { "requests_per_second": NO_REFILL, "burst": 1 },
            },
        }),
        &ACCESS_LOG_ARGS,
    )
    .await;
    let proxy = router.proxy_addr;
    let client = HttpClient::http1();
    let as_batch = |key: &str| {
        keyed(Method::GET, proxy, "/", key)
            .header(TENANT, "batch")
            .body(client::empty())
            .expect("a valid request")
    };

    let missing = fetch(
        &client,
        client::request(Method::GET, proxy, "/")
            .body(client::empty())
            .expect("a valid request"),
    )
    .await;
    expect_router_error(&missing, 400, "missing_routing_key");
    let unknown = fetch(&client, keyed_get(proxy, "/", "no-such-route")).await;
    expect_router_error(&unknown, 404, "unknown_routing_key");
    let not_allowed = fetch(&client, as_batch("only-search")).await;
    expect_router_error(&not_allowed, 403, "tenant_not_allowed");
    let admitted: Collected = fetch(&client, as_batch("open")).await;
    assert_status(&admitted, 200);
    let limited = fetch(&client, as_batch("open")).await;
    expect_router_error(&limited, 429, "rate_limited");
    assert_eq!(
        fake.requests(),
        1,
        "only the admitted request went upstream"
    );

    for (route, status, code) in [
        ("unknown", "400", "missing_routing_key"),
        ("unknown", "404", "unknown_routing_key"),
        ("only-search", "403", "tenant_not_allowed"),
        ("open", "429", "rate_limited"),
    ] {
        access_line(
            &router,
            &[("route", route), ("status", status), ("code", code)],
            &format!("the router's {status} {code}"),
        )
        .await;
    }
    let served = access_line(
        &router,
        &[("route", "open"), ("status", "200")],
        "the admitted request",
    )
    .await;
    assert_field(&served, "tenant", "batch", "the admitted request");
    assert_eq!(
        access_lines(&router).len(),
        5,
        "one line per answer: {:#?}",
        access_lines(&router)
    );
}
