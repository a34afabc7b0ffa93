//! Trace export over OTLP/gRPC (`--otlp-endpoint`), seen from an in-process receiver: one
//! SERVER span per request the router answers, in the caller's W3C trace, with the route,
//! cluster, endpoint, tenant and status attributes; the `traceparent` the upstream receives
//! naming the router's span; parent-based sampling (`--otlp-sampling-ratio`); a collector
//! that is down never failing requests; refused flags; and Lightbulb's span per `Resolve` /
//! `ResolveBatch` in the trace of the gRPC `traceparent` metadata.
//!
//! Each test starts its own receiver and router (or Lightbulb), so the spans received are
//! the test's alone and counts are exact. Spans are awaited in the receiver (the export is
//! batched and asynchronous). That a request produced *no* span is shown without waiting for
//! time to pass: the request goes first, then a recorded one; once the recorded one's span
//! has arrived, the process's exported-span counter is awaited until it equals the spans
//! received, and the earlier request's trace is checked to be absent.

use http::Method;
use integration_tests::client;
use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_grpc::pb::{CountRequest, SayReply, SayRequest};
use integration_tests::lightbulb::LightbulbProcess;
use integration_tests::otlp::{ReceivedSpan, SERVICE_VERSION, STATUS_ERROR, TraceParent};
use integration_tests::{
    Collected, DEADLINE, DeadPort, FakeGrpc, FakeModel, HttpClient, OtlpReceiver, RouterProcess,
    trace_init, within,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use routing_proto::lightbulb::v1 as pb;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::config_store::{self, OBJECTIVE};
use crate::support::{
    CLIENT_VERSIONS, TENANT, assert_status, echo_client, expect_router_error, fetch, get_request,
    keyed_call, seen, simple_rules, wait_for_metric_exactly,
};

/// The W3C trace-context headers (and gRPC metadata keys).
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Spans the router exported, by `result` (`ok`, `error`).
const ROUTER_EXPORTED: &str = "router_otlp_spans_exported_total";

/// Spans the router dropped (queue full).
const ROUTER_DROPPED: &str = "router_otlp_spans_dropped_total";

/// Spans Lightbulb exported, by `result`.
const LIGHTBULB_EXPORTED: &str = "lightbulb_otlp_spans_exported_total";

/// The `result` label of successful exports.
const OK: [(&str, &str); 1] = [("result", "ok")];

/// A `tracestate` a caller sends; the router passes it on untouched.
const CALLER_STATE: &str = "vendor1=opaque-value,vendor2=k:v";

/// A trace id (32 hex digits) distinct for each `n`.
fn trace_id(n: u8) -> String {
    format!("4bf92f3577b34da6a3ce929d0e0e47{n:02x}")
}

/// A caller's span id (16 hex digits) distinct for each `n`.
fn caller_span_id(n: u8) -> String {
    format!("00f067aa0ba902{n:02x}")
}

/// The caller's `traceparent` of trace `n` with `flags` (`01` sampled, `00` not).
fn caller_traceparent(n: u8, flags: &str) -> String {
    format!("00-{}-{}-{flags}", trace_id(n), caller_span_id(n))
}

/// One cluster `c` of `endpoint` and route `k` to it (route and cluster named apart, so the
/// span attributes show which is which).
fn k_to_c(endpoint: &str) -> Value {
    json!({
        "clusters": { "c": { "endpoints": [endpoint] } },
        "routes": { "k": { "cluster": "c" } },
    })
}

/// A router on `rule_set` exporting to `receiver`, with `extra` arguments appended.
async fn traced_router(rule_set: &Value, receiver: &OtlpReceiver, extra: &[&str]) -> RouterProcess {
    let url = receiver.url();
    let mut args = vec!["--otlp-endpoint", url.as_str()];
    args.extend_from_slice(extra);
    RouterProcess::start_with_args(rule_set, &args).await
}

/// `GET /headers` with `key` and `headers` through the router, expecting 200; returns the
/// answer and the fake's JSON report of the headers it received.
async fn get_headers(
    client: &HttpClient,
    router: &RouterProcess,
    key: &str,
    headers: &[(&str, &str)],
) -> (Collected, Value) {
    let resp = fetch(
        client,
        get_request(router.proxy_addr, "/headers", Some(key), headers),
    )
    .await;
    assert_status(&resp, 200);
    let json = resp.json();
    (resp, json)
}

/// The one `traceparent` the upstream received, parsed (`what` names the request).
#[track_caller]
fn upstream_traceparent(headers_json: &Value, what: &str) -> TraceParent {
    let values = seen(headers_json, TRACEPARENT);
    assert_eq!(
        values.len(),
        1,
        "{what}: the upstream receives one traceparent: {values:?}"
    );
    TraceParent::parse(&values[0]).unwrap_or_else(|| {
        panic!(
            "{what}: the upstream's traceparent {:?} is not a valid W3C traceparent",
            values[0]
        )
    })
}

/// Asserts string attribute `key` of `span` is `expected`.
#[track_caller]
fn assert_str(span: &ReceivedSpan, key: &str, expected: &str, what: &str) {
    assert_eq!(
        span.str_attribute(key),
        Some(expected),
        "{what}: string attribute {key:?} of {span}"
    );
}

/// Asserts integer attribute `key` of `span` is `expected`.
#[track_caller]
fn assert_int(span: &ReceivedSpan, key: &str, expected: i64, what: &str) {
    assert_eq!(
        span.int_attribute(key),
        Some(expected),
        "{what}: integer attribute {key:?} of {span}"
    );
}

/// Asserts `span` has no attribute `key`.
#[track_caller]
fn assert_no_attr(span: &ReceivedSpan, key: &str, what: &str) {
    assert!(
        span.attribute(key).is_none(),
        "{what}: no attribute {key:?} expected on {span}"
    );
}

/// Asserts `span` is a SERVER span of the resource `service` (with a `service.version`).
#[track_caller]
fn assert_server_span_of(span: &ReceivedSpan, service: &str, what: &str) {
    assert_eq!(
        span.kind(),
        SpanKind::Server,
        "{what}: the span kind of {span}"
    );
    assert_eq!(
        span.service_name(),
        Some(service),
        "{what}: resource service.name of {span}"
    );
    assert!(
        span.resource_str(SERVICE_VERSION)
            .is_some_and(|v| !v.is_empty()),
        "{what}: the resource names a service.version: {:?}",
        span.resource
    );
    assert_eq!(
        span.span_id().len(),
        16,
        "{what}: an 8-byte span id: {span}"
    );
    assert_ne!(
        span.span_id(),
        "0".repeat(16),
        "{what}: a valid span id: {span}"
    );
}

/// Waits until `router` counts as exported exactly the spans `receiver` has received (and
/// at least `at_least`), so no further span of the requests sent so far is on its way; then
/// returns them.
async fn settled_router_spans(
    router: &RouterProcess,
    receiver: &OtlpReceiver,
    at_least: usize,
) -> Vec<ReceivedSpan> {
    receiver
        .wait_for_spans("the spans awaited before settling", at_least, |_| true)
        .await;
    let spans = receiver.spans();
    wait_for_metric_exactly(
        router,
        ROUTER_EXPORTED,
        &OK,
        spans.len() as f64,
        &format!(
            "the router exported exactly the spans received:\n{}",
            receiver.describe()
        ),
    )
    .await;
    receiver.spans()
}

// === the span of a proxied request ===

#[tokio::test]
async fn a_callers_traced_request_gets_one_server_span_in_its_trace_and_the_upstream_a_traceparent_naming_it()
 {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let fake = FakeModel::new().name("live").start().await;
    let router = traced_router(&k_to_c(&fake.endpoint()), &receiver, &[]).await;

    for (n, version) in (1u8..).zip(CLIENT_VERSIONS) {
        let what = format!("{version:?}");
        let caller = caller_traceparent(n, "01");
        let client = HttpClient::for_version(version);
        let (resp, headers) = get_headers(
            &client,
            &router,
            "k",
            &[(TRACEPARENT, &caller), (TRACESTATE, CALLER_STATE)],
        )
        .await;

        let span = receiver.wait_for_trace(&trace_id(n)).await;
        assert_server_span_of(&span, "router", &what);
        assert_eq!(span.name(), "GET k", "{what}: {span}");
        assert_eq!(
            span.parent_span_id(),
            caller_span_id(n),
            "{what}: the caller's span is the parent: {span}"
        );
        assert_ne!(
            span.span_id(),
            caller_span_id(n),
            "{what}: the router's span is a new span: {span}"
        );
        assert_eq!(
            span.trace_state(),
            CALLER_STATE,
            "{what}: the caller's tracestate is the span's trace_state"
        );
        assert_str(&span, "route", "k", &what);
        assert_str(&span, "cluster", "c", &what);
        assert_str(&span, "endpoint", &fake.endpoint(), &what);
        assert_str(&span, "http.request.method", "GET", &what);
        assert_str(&span, "traffic_class", "live", &what);
        assert_int(&span, "http.response.status_code", 200, &what);
        assert_int(
            &span,
            "http.response.body.size",
            resp.body.len() as i64,
            &what,
        );
        assert_no_attr(&span, "error.type", &what);
        assert_no_attr(&span, "tenant", &what);
        assert_no_attr(&span, "rpc.grpc.status_code", &what);
        assert_ne!(span.status_code(), STATUS_ERROR, "{what}: {span}");

        let sent = upstream_traceparent(&headers, &what);
        assert_eq!(
            sent,
            TraceParent {
                trace_id: trace_id(n),
                parent_id: span.span_id(),
                flags: "01".to_owned(),
            },
            "{what}: the upstream's traceparent continues the trace from the router's span"
        );
        assert_eq!(
            seen(&headers, TRACESTATE),
            vec![CALLER_STATE.to_owned()],
            "{what}: the tracestate reaches the upstream untouched"
        );
    }

    let spans = settled_router_spans(&router, &receiver, CLIENT_VERSIONS.len()).await;
    for n in 1..=2 {
        assert_eq!(
            receiver.spans_in_trace(&trace_id(n)).len(),
            1,
            "one span per request in trace {n}:\n{}",
            receiver.describe()
        );
    }
    assert_eq!(
        spans.len(),
        2,
        "one span per request:\n{}",
        receiver.describe()
    );
    assert_eq!(router.metric(ROUTER_DROPPED, &[]).await, 0.0);
}

#[tokio::test]
async fn a_request_without_a_valid_traceparent_starts_a_new_trace_that_the_upstreams_traceparent_names()
 {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let fake = FakeModel::new().name("live").start().await;
    let router = traced_router(&k_to_c(&fake.endpoint()), &receiver, &[]).await;
    let client = HttpClient::http1();
    let zero_trace = format!("00-{}-{}-01", "0".repeat(32), caller_span_id(1));

    let mut traces = Vec::new();
    for (headers, what) in [
        (vec![], "no traceparent"),
        (
            vec![(TRACEPARENT, "not-a-traceparent")],
            "a malformed traceparent",
        ),
        (
            vec![(TRACEPARENT, zero_trace.as_str())],
            "an all-zero trace id",
        ),
    ] {
        let (_, seen_headers) = get_headers(&client, &router, "k", &headers).await;
        let sent = upstream_traceparent(&seen_headers, what);
        assert_eq!(sent.flags, "01", "{what}: the new trace is sampled");
        assert_ne!(sent.trace_id, "0".repeat(32), "{what}: a valid trace id");

        let span = receiver.wait_for_trace(&sent.trace_id).await;
        assert_server_span_of(&span, "router", what);
        assert_eq!(span.name(), "GET k", "{what}: {span}");
        assert_eq!(
            span.parent_span_id(),
            "",
            "{what}: the router's span is the root of the new trace: {span}"
        );
        assert_eq!(
            sent.parent_id,
            span.span_id(),
            "{what}: the upstream's traceparent names the router's span"
        );
        assert_eq!(span.trace_state(), "", "{what}: no tracestate was sent");
        assert_str(&span, "route", "k", what);
        assert_int(&span, "http.response.status_code", 200, what);
        traces.push(sent.trace_id);
    }
    let mut distinct = traces.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "each request starts its own trace: {traces:?}"
    );

    let spans = settled_router_spans(&router, &receiver, 3).await;
    assert_eq!(
        spans.len(),
        3,
        "one span per request:\n{}",
        receiver.describe()
    );
}

#[tokio::test]
async fn a_declared_tenant_is_a_span_attribute_and_an_undeclared_one_is_not() {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let fake = FakeModel::new().name("live").start().await;
    let mut rules = k_to_c(&fake.endpoint());
    rules["tenants"] = json!({ "search": {} });
    let router = traced_router(&rules, &receiver, &[]).await;
    let client = HttpClient::h2c();

    let cases: [(u8, Option<&str>, Option<&str>, &str); 3] = [
        (1, Some("search"), Some("search"), "a declared tenant"),
        (2, Some("stranger"), None, "an undeclared tenant"),
        (3, None, None, "no tenant header"),
    ];
    for (n, header, _, what) in cases {
        let caller = caller_traceparent(n, "01");
        let mut headers = vec![(TRACEPARENT, caller.as_str())];
        if let Some(tenant) = header {
            headers.push((TENANT, tenant));
        }
        let resp = fetch(
            &client,
            get_request(router.proxy_addr, "/", Some("k"), &headers),
        )
        .await;
        assert_eq!(resp.status, 200, "{what}: {resp:?}");
    }
    for (n, _, attribute, what) in cases {
        let span = receiver.wait_for_trace(&trace_id(n)).await;
        assert_eq!(span.name(), "GET k", "{what}: {span}");
        match attribute {
            Some(tenant) => assert_str(&span, "tenant", tenant, what),
            None => assert_no_attr(&span, "tenant", what),
        }
    }
}

// === the router's own answers and failed answers ===

#[tokio::test]
async fn the_routers_own_answers_get_a_span_named_unknown_with_their_error_code() {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let fake = FakeModel::new().name("live").start().await;
    let router = traced_router(&k_to_c(&fake.endpoint()), &receiver, &[]).await;
    let client = HttpClient::http1();

    let unknown = caller_traceparent(1, "01");
    expect_unknown_key(&client, &router, &[(TRACEPARENT, &unknown)]).await;
    let missing = caller_traceparent(2, "01");
    let req = client::request(Method::POST, router.proxy_addr, "/")
        .header(TRACEPARENT, &missing)
        .body(client::empty())
        .expect("a valid request");
    let resp = fetch(&client, req).await;
    expect_router_error(&resp, 400, "missing_routing_key");
    assert_eq!(fake.requests(), 0, "neither request went upstream");

    for (n, name, method, status, code) in [
        (1, "GET unknown", "GET", 404, "unknown_routing_key"),
        (2, "POST unknown", "POST", 400, "missing_routing_key"),
    ] {
        let span = receiver.wait_for_trace(&trace_id(n)).await;
        let what = format!("the router's {status} {code}");
        assert_server_span_of(&span, "router", &what);
        assert_eq!(span.name(), name, "{what}: {span}");
        assert_eq!(span.parent_span_id(), caller_span_id(n), "{what}: {span}");
        assert_str(&span, "http.request.method", method, &what);
        assert_int(&span, "http.response.status_code", status, &what);
        assert_str(&span, "error.type", code, &what);
        assert_no_attr(&span, "cluster", &what);
        assert_no_attr(&span, "endpoint", &what);
        assert_ne!(
            span.status_code(),
            STATUS_ERROR,
            "{what}: a 4xx is not a span error: {span}"
        );
    }
}

#[tokio::test]
async fn an_upstream_5xx_is_a_span_error_and_an_upstream_4xx_is_not() {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let fake = FakeModel::new().name("live").start().await;
    let router = traced_router(&k_to_c(&fake.endpoint()), &receiver, &[]).await;
    let client = HttpClient::http1();

    for (n, path) in [(1u8, "/status/503"), (2, "/status/404")] {
        let caller = caller_traceparent(n, "01");
        let req = client::request(Method::POST, router.proxy_addr, path)
            .header(client::ROUTING_KEY, "k")
            .header(TRACEPARENT, &caller)
            .body(client::full("x"))
            .expect("a valid request");
        fetch(&client, req).await;
    }
    assert_eq!(fake.requests(), 2, "both requests went upstream once");

    let failed = receiver.wait_for_trace(&trace_id(1)).await;
    let what = "the upstream's 503";
    assert_eq!(failed.name(), "POST k", "{what}: {failed}");
    assert_str(&failed, "http.request.method", "POST", what);
    assert_int(&failed, "http.response.status_code", 503, what);
    assert_str(&failed, "endpoint", &fake.endpoint(), what);
    assert_eq!(
        failed.status_code(),
        STATUS_ERROR,
        "{what}: a 5xx answer is a span error: {failed}"
    );
    let refused = receiver.wait_for_trace(&trace_id(2)).await;
    let what = "the upstream's 404";
    assert_int(&refused, "http.response.status_code", 404, what);
    assert_ne!(
        refused.status_code(),
        STATUS_ERROR,
        "{what}: a 4xx answer is not a span error: {refused}"
    );
}

// === gRPC ===

/// `request` with the caller's `traceparent` of trace `n` (sampled) as metadata.
fn traced<T>(mut request: tonic::Request<T>, n: u8) -> tonic::Request<T> {
    request.metadata_mut().insert(
        TRACEPARENT,
        caller_traceparent(n, "01")
            .parse()
            .expect("a valid metadata value"),
    );
    request
}

/// `Say(message)` with key `echo` in trace `n`.
async fn traced_say(
    client: &mut EchoClient<Channel>,
    n: u8,
    message: &str,
) -> Result<SayReply, tonic::Status> {
    let request = traced(
        keyed_call(
            SayRequest {
                message: message.into(),
            },
            "echo",
        ),
        n,
    );
    within("Say", DEADLINE, client.say(request))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_grpc_calls_span_carries_its_grpc_status_from_trailers_only_answers_and_from_trailers() {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let upstream = FakeGrpc::new().name("echo-1").start().await;
    let router = traced_router(
        &json!({
            "clusters": { "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
            "routes": { "echo": { "cluster": "grpc" } },
        }),
        &receiver,
        &[],
    )
    .await;
    let mut client = echo_client(&router).await;

    let reply = traced_say(&mut client, 1, "hello")
        .await
        .unwrap_or_else(|status| panic!("Say: {status:?}"));
    assert_eq!(reply.server, "echo-1");
    let denied = traced_say(&mut client, 2, "fail").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    upstream.fail_next_unavailable(1);
    let unavailable = traced_say(&mut client, 3, "x").await.unwrap_err();
    assert_eq!(
        unavailable.code(),
        tonic::Code::Unavailable,
        "{unavailable:?}"
    );

    // ABORTED in real trailers, after two streamed replies.
    let request = traced(
        keyed_call(
            CountRequest {
                n: 5,
                fail_after: 2,
            },
            "echo",
        ),
        4,
    );
    let mut stream = within("Count", DEADLINE, client.count(request))
        .await
        .expect("Count is accepted")
        .into_inner();
    let mut replies = 0;
    let end = loop {
        match within("a streamed reply", DEADLINE, stream.message()).await {
            Ok(Some(_)) if replies < 5 => replies += 1,
            Ok(other) => panic!("Count ends with ABORTED, got {other:?} after {replies}"),
            Err(status) => break status,
        }
    };
    assert_eq!(replies, 2);
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");

    for (n, code, error, what) in [
        (1, 0, false, "an OK call (status in trailers)"),
        (2, 7, false, "a trailers-only PERMISSION_DENIED"),
        (3, 14, true, "a trailers-only UNAVAILABLE"),
        (4, 10, false, "an ABORTED in trailers after replies"),
    ] {
        let span = receiver.wait_for_trace(&trace_id(n)).await;
        assert_server_span_of(&span, "router", what);
        assert_eq!(span.name(), "POST echo", "{what}: {span}");
        assert_eq!(span.parent_span_id(), caller_span_id(n), "{what}: {span}");
        assert_str(&span, "route", "echo", what);
        assert_str(&span, "cluster", "grpc", what);
        assert_str(&span, "endpoint", &upstream.endpoint(), what);
        assert_int(&span, "http.response.status_code", 200, what);
        assert_int(&span, "rpc.grpc.status_code", code, what);
        assert_eq!(
            span.status_code() == STATUS_ERROR,
            error,
            "{what}: is the span an error? {span}"
        );
    }
    let spans = settled_router_spans(&router, &receiver, 4).await;
    assert_eq!(
        spans.len(),
        4,
        "one span per call:\n{}",
        receiver.describe()
    );
}

// === sampling ===

#[tokio::test]
async fn with_sampling_ratio_zero_only_callers_sampled_traces_are_recorded_and_others_pass_untouched()
 {
    let _trace = trace_init();
    for flag in ["--otlp-sampling-ratio", "--otlp-sample-ratio"] {
        let receiver = OtlpReceiver::start().await;
        let fake = FakeModel::new().name("live").start().await;
        let router = traced_router(&k_to_c(&fake.endpoint()), &receiver, &[flag, "0"]).await;
        let client = HttpClient::http1();

        // Not sampled by the caller: passed on as it came, no span.
        let unsampled = caller_traceparent(1, "00");
        let (_, headers) = get_headers(
            &client,
            &router,
            "k",
            &[(TRACEPARENT, &unsampled), (TRACESTATE, CALLER_STATE)],
        )
        .await;
        assert_eq!(
            seen(&headers, TRACEPARENT),
            vec![unsampled.clone()],
            "{flag} 0: an unsampled traceparent reaches the upstream unchanged"
        );
        assert_eq!(seen(&headers, TRACESTATE), vec![CALLER_STATE.to_owned()]);

        // No trace context at all: none is added.
        let (_, headers) = get_headers(&client, &router, "k", &[]).await;
        assert_eq!(
            seen(&headers, TRACEPARENT),
            Vec::<String>::new(),
            "{flag} 0: an unrecorded request gets no traceparent"
        );

        // The router's own answer, unsampled.
        let unsampled_unknown = caller_traceparent(2, "00");
        expect_unknown_key(&client, &router, &[(TRACEPARENT, &unsampled_unknown)]).await;

        // Sampled by the caller: recorded whatever the ratio.
        let sampled = caller_traceparent(3, "01");
        let (_, headers) = get_headers(&client, &router, "k", &[(TRACEPARENT, &sampled)]).await;
        let span = receiver.wait_for_trace(&trace_id(3)).await;
        assert_eq!(span.name(), "GET k", "{flag} 0: {span}");
        assert_eq!(span.parent_span_id(), caller_span_id(3), "{flag} 0: {span}");
        assert_eq!(
            upstream_traceparent(&headers, flag),
            TraceParent {
                trace_id: trace_id(3),
                parent_id: span.span_id(),
                flags: "01".to_owned(),
            },
            "{flag} 0: a recorded request's upstream traceparent names the router's span"
        );

        let spans = settled_router_spans(&router, &receiver, 1).await;
        assert_eq!(
            spans.len(),
            1,
            "{flag} 0: only the sampled request was recorded:\n{}",
            receiver.describe()
        );
        for n in [1, 2] {
            assert!(
                receiver.spans_in_trace(&trace_id(n)).is_empty(),
                "{flag} 0: no span of unsampled trace {n}:\n{}",
                receiver.describe()
            );
        }
    }
}

// === a collector that is down ===

#[tokio::test]
async fn a_collector_that_is_down_never_fails_requests_and_failed_exports_are_counted() {
    let _trace = trace_init();
    let collector = DeadPort::new();
    let fake = FakeModel::new().name("live").start().await;
    let url = format!("http://{}", collector.addr());
    let router = RouterProcess::start_with_args(
        &simple_rules(&[("k", vec![fake.endpoint()])]),
        &["--otlp-endpoint", &url],
    )
    .await;
    let client = HttpClient::http1();

    for n in 1..=3 {
        let caller = caller_traceparent(n, "01");
        let resp = fetch(
            &client,
            get_request(router.proxy_addr, "/", Some("k"), &[(TRACEPARENT, &caller)]),
        )
        .await;
        assert_status(&resp, 200);
    }
    expect_unknown_key(&client, &router, &[]).await;

    router
        .wait_for_metric(ROUTER_EXPORTED, &[("result", "error")], |v| v > 0.0)
        .await;
    assert_eq!(
        router.metric(ROUTER_EXPORTED, &OK).await,
        0.0,
        "nothing can be exported to a closed port"
    );
    // Still answering after failed exports.
    let resp = fetch(&client, get_request(router.proxy_addr, "/", Some("k"), &[])).await;
    assert_status(&resp, 200);
    assert_eq!(fake.requests(), 4);
}

// === refused flags ===

/// The OTLP flag values each binary must refuse, with the flag the error must name. A valid
/// endpoint (a closed port; nothing is exported) goes with each bad ratio.
fn bad_otlp_flags(valid: &str) -> Vec<(Vec<String>, &'static str, &'static str)> {
    let endpoint = "--otlp-endpoint";
    let ratio = "--otlp-sampling-ratio";
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        (
            args(&[endpoint, "collector:4317"]),
            endpoint,
            "an endpoint without a scheme",
        ),
        (
            args(&[endpoint, "https://127.0.0.1:4317"]),
            endpoint,
            "an https endpoint",
        ),
        (
            args(&[endpoint, valid, ratio, "1.5"]),
            ratio,
            "a ratio above 1",
        ),
        (
            args(&[endpoint, valid, &format!("{ratio}=-0.5")]),
            ratio,
            "a negative ratio",
        ),
        (
            args(&[endpoint, valid, ratio, "half"]),
            ratio,
            "a ratio that is not a number",
        ),
    ]
}

#[tokio::test]
async fn the_router_refuses_to_start_with_a_bad_otlp_endpoint_or_sampling_ratio() {
    let _trace = trace_init();
    let closed = DeadPort::new();
    let valid = format!("http://{}", closed.addr());
    let rules = simple_rules(&[("k", vec!["127.0.0.1:1".to_owned()])]);
    for (args, flag, what) in bad_otlp_flags(&valid) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let failed = RouterProcess::start_expecting_failure_with_args(&rules, &args).await;
        assert!(
            !failed.status.success(),
            "{what}: exit status {}",
            failed.status
        );
        assert!(
            failed.stderr.contains(flag),
            "{what} ({args:?}): stderr names {flag}:\n{}",
            failed.stderr
        );
    }
}

#[tokio::test]
async fn lightbulb_refuses_to_start_with_a_bad_otlp_endpoint_or_sampling_ratio() {
    let _trace = trace_init();
    let closed = DeadPort::new();
    let valid = format!("http://{}", closed.addr());
    let text = lightbulb_rules(1).to_string();
    for (args, flag, what) in bad_otlp_flags(&valid) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let failed = LightbulbProcess::start_expecting_failure_with_args(&text, &args).await;
        assert!(
            !failed.status.success(),
            "{what}: exit status {}",
            failed.status
        );
        assert!(
            failed.stderr.contains(flag),
            "{what} ({args:?}): stderr names {flag}:\n{}",
            failed.stderr
        );
    }
}

// === Lightbulb ===

/// The config-store tests' seed rule set (country CA → `ranker-v2`, else `ranker-v1`; the
/// clusters are never contacted) at `version`.
fn lightbulb_rules(version: u64) -> Value {
    let mut rules = config_store::rules("ranker-v1");
    rules["version"] = json!(version);
    rules
}

/// `GET /` with a key no route has, and `headers`: the router's own 404.
async fn expect_unknown_key(client: &HttpClient, router: &RouterProcess, headers: &[(&str, &str)]) {
    let req = get_request(router.proxy_addr, "/", Some("no-such-route"), headers);
    expect_router_error(&fetch(client, req).await, 404, "unknown_routing_key");
}

/// A `Resolve` request for `objective`, as `tenant`, from country `country`.
fn resolve_request(objective: &str, tenant: &str, country: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        objective: objective.to_owned(),
        tenant: tenant.to_owned(),
        subject_id: "member-42".to_owned(),
        attributes: [("country".to_owned(), country.to_owned())].into(),
        ..pb::ResolveRequest::default()
    }
}

#[tokio::test]
async fn lightbulb_records_a_server_span_per_resolve_and_resolve_batch_in_the_callers_trace() {
    let _trace = trace_init();
    let receiver = OtlpReceiver::start().await;
    let url = receiver.url();
    let lightbulb =
        LightbulbProcess::start_with_args(&lightbulb_rules(7), &["--otlp-endpoint", &url]).await;
    let mut client = lightbulb.resolver().await;

    let answer = within(
        "Resolve",
        DEADLINE,
        client.resolve(traced(
            tonic::Request::new(resolve_request(OBJECTIVE, "search", "CA")),
            1,
        )),
    )
    .await
    .expect("Resolve succeeds")
    .into_inner();
    assert_eq!(answer.routing_key, "ranker-v2");

    let unknown = within(
        "Resolve of an unknown objective",
        DEADLINE,
        client.resolve(traced(
            tonic::Request::new(resolve_request("NoSuchObjective", "", "US")),
            2,
        )),
    )
    .await
    .expect_err("an unknown objective fails");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    let batch = within(
        "ResolveBatch",
        DEADLINE,
        client.resolve_batch(traced(
            tonic::Request::new(pb::ResolveBatchRequest {
                requests: vec![
                    resolve_request(OBJECTIVE, "", "CA"),
                    resolve_request(OBJECTIVE, "", "US"),
                    resolve_request("NoSuchObjective", "", "US"),
                ],
            }),
            3,
        )),
    )
    .await
    .expect("ResolveBatch succeeds")
    .into_inner();
    assert_eq!(batch.results.len(), 3);

    let span = receiver.wait_for_trace(&trace_id(1)).await;
    let what = "Resolve";
    assert_server_span_of(&span, "lightbulb", what);
    assert_eq!(
        span.name(),
        "lightbulb.v1.Resolver/Resolve",
        "{what}: {span}"
    );
    assert_eq!(
        span.parent_span_id(),
        caller_span_id(1),
        "{what}: the caller's span is the parent: {span}"
    );
    assert_str(&span, "rpc.system", "grpc", what);
    assert_str(&span, "rpc.service", "lightbulb.v1.Resolver", what);
    assert_str(&span, "rpc.method", "Resolve", what);
    assert_str(&span, "objective", OBJECTIVE, what);
    assert_str(&span, "tenant", "search", what);
    assert_str(&span, "routing_key", &answer.routing_key, what);
    assert_int(&span, "rule_set_version", 7, what);
    assert_int(&span, "rpc.grpc.status_code", 0, what);

    let failed = receiver.wait_for_trace(&trace_id(2)).await;
    let what = "Resolve of an unknown objective";
    assert_eq!(
        failed.name(),
        "lightbulb.v1.Resolver/Resolve",
        "{what}: {failed}"
    );
    assert_eq!(
        failed.parent_span_id(),
        caller_span_id(2),
        "{what}: {failed}"
    );
    assert_str(&failed, "objective", "NoSuchObjective", what);
    assert_int(
        &failed,
        "rpc.grpc.status_code",
        tonic::Code::NotFound as i64,
        what,
    );
    assert_no_attr(&failed, "routing_key", what);
    assert_no_attr(&failed, "tenant", what);

    let batched = receiver.wait_for_trace(&trace_id(3)).await;
    let what = "ResolveBatch";
    assert_server_span_of(&batched, "lightbulb", what);
    assert_eq!(
        batched.name(),
        "lightbulb.v1.Resolver/ResolveBatch",
        "{what}: {batched}"
    );
    assert_eq!(
        batched.parent_span_id(),
        caller_span_id(3),
        "{what}: {batched}"
    );
    assert_str(&batched, "rpc.system", "grpc", what);
    assert_str(&batched, "rpc.method", "ResolveBatch", what);
    assert_int(&batched, "batch_size", 3, what);
    assert_int(&batched, "rpc.grpc.status_code", 0, what);

    lightbulb
        .wait_for_metric(LIGHTBULB_EXPORTED, &OK, |v| v >= 3.0)
        .await;
    assert_eq!(
        lightbulb.metric(LIGHTBULB_EXPORTED, &OK).await,
        receiver.spans().len() as f64,
        "Lightbulb counts as exported the spans received:\n{}",
        receiver.describe()
    );
    for n in 1..=3 {
        assert_eq!(
            receiver.spans_in_trace(&trace_id(n)).len(),
            1,
            "one span per call in trace {n}:\n{}",
            receiver.describe()
        );
    }
}
