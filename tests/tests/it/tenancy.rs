//! Tenants with limits, traffic provenance and attribution (DESIGN §6 and §11), seen from
//! outside: which requests a route admits, where synthetic traffic lands, what the limits
//! refuse, the `x-served-by` header, the refusal metrics and the rule-set validation.
//!
//! Rate limits here refill at 0.001 requests per second (one token every 1000 s), so no
//! token comes back while a test runs and the counts are exact whatever the machine's load.
//! Concurrency limits are held with the fake's gated `/sse` and released by the test; after a
//! release the tests wait for the room to be observable (a request admitted again) rather
//! than assuming when the router has counted the end of a body.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Version;
use hyper::body::Incoming;
use integration_tests::client;
use integration_tests::fake_grpc::pb::SayRequest;
use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_model::{SERVER_HEADER, sse_chunk};
use integration_tests::{
    Collected, DEADLINE, DeadPort, FakeGrpc, FakeModel, HttpClient, Listening, RouterProcess,
    trace_init, wait_until, within,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::{
    CLIENT_VERSIONS, TENANT, assert_trailers_only, echo_client, expect_end, expect_router_error,
    fetch, get_request, grpc_call, keyed_call, read_exactly, refused_naming, route_k_rules,
    wait_for_cluster, wait_for_metric_exactly, with_fields,
};

/// The header naming a request's traffic class.
const TRAFFIC_CLASS: &str = "x-traffic-class";

/// The attribution header of the router's answers.
const SERVED_BY: &str = "x-served-by";

/// Requests of declared tenants.
const TENANT_REQUESTS: &str = "router_tenant_requests_total";

/// Requests of a tenant refused, by `reason`.
const TENANT_REFUSED: &str = "router_tenant_refused_total";

/// A refill rate so slow that no token comes back during a test.
const NO_REFILL: f64 = 0.001;

/// The labels of [`TENANT_REFUSED`].
fn refused_labels<'a>(tenant: &'a str, reason: &'a str) -> [(&'a str, &'a str); 2] {
    [("tenant", tenant), ("reason", reason)]
}

/// `GET /` with `key` and the `headers` added, read to the end.
async fn get_with(
    client: &HttpClient,
    proxy: SocketAddr,
    key: &str,
    headers: &[(&str, &str)],
) -> Collected {
    fetch(client, get_request(proxy, "/", Some(key), headers)).await
}

/// `GET /` with `key` as `tenant` (no tenant header when `None`), read to the end.
async fn get_as(
    client: &HttpClient,
    proxy: SocketAddr,
    key: &str,
    tenant: Option<&str>,
) -> Collected {
    match tenant {
        Some(tenant) => get_with(client, proxy, key, &[(TENANT, tenant)]).await,
        None => get_with(client, proxy, key, &[]).await,
    }
}

/// Asserts `resp` is 200 from the fake named `fake`; `what` names the request.
#[track_caller]
fn assert_served_by_fake(resp: &Collected, fake: &str, what: &str) {
    assert_eq!(
        resp.status,
        200,
        "{what}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header(SERVER_HEADER).as_deref(),
        Some(fake),
        "{what}: answered by the fake {fake}"
    );
}

/// The `retry-after` of `resp`, checked to be whole seconds, at least 1.
#[track_caller]
fn retry_after_secs(resp: &Collected, what: &str) -> u64 {
    let value = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no retry-after header in {:?}", resp.headers));
    let secs: u64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: retry-after {value:?} is not whole seconds"));
    assert!(secs >= 1, "{what}: retry-after {secs} is below 1 second");
    secs
}

/// Asserts `resp` is the router's 429 `rate_limited` for route `key`, with a `retry-after`.
#[track_caller]
fn assert_rate_limited(resp: &Collected, key: &str, what: &str) {
    let error = expect_router_error(resp, 429, "rate_limited");
    assert_eq!(error["routing_key"], key, "{what}");
    retry_after_secs(resp, what);
}

/// Asserts `resp` is the router's 403 `tenant_not_allowed` for route `key`.
#[track_caller]
fn assert_not_allowed(resp: &Collected, key: &str, what: &str) {
    let error = expect_router_error(resp, 403, "tenant_not_allowed");
    assert_eq!(error["routing_key"], key, "{what}");
}

/// `Say("hi")` with `key`, as `tenant` when given, within the deadline.
async fn say_as(
    client: &mut EchoClient<Channel>,
    key: &str,
    tenant: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut request = keyed_call(
        SayRequest {
            message: "hi".into(),
        },
        key,
    );
    if let Some(tenant) = tenant {
        request
            .metadata_mut()
            .insert(TENANT, tenant.parse().expect("a valid tenant"));
    }
    within(
        &format!("Say with key {key} as {tenant:?}"),
        DEADLINE,
        client.say(request),
    )
    .await
    .map(|reply| reply.into_inner().server)
}

/// Starts `GET /sse?chunks=1` with `key` as `tenant` and returns its body once the response
/// head arrived: the request is then in flight until the fake is released and the body read
/// to its end.
async fn hold_sse(client: &HttpClient, proxy: SocketAddr, key: &str, tenant: &str) -> Incoming {
    let req = get_request(proxy, "/sse?chunks=1", Some(key), &[(TENANT, tenant)]);
    let resp = within("an SSE head", DEADLINE, client.send(req))
        .await
        .expect("an SSE request through the router");
    assert_eq!(resp.status(), 200, "an SSE request is answered by the fake");
    resp.into_body()
}

/// [`hold_sse`], retried while the router still answers 503 `overloaded` (the tenant's room
/// comes back once the router has counted the end of earlier bodies).
///
/// # Panics
///
/// On any other answer, or at the deadline.
async fn hold_sse_when_room(
    client: &HttpClient,
    proxy: SocketAddr,
    key: &str,
    tenant: &str,
) -> Incoming {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    // Polls an observable condition; the deadline only turns a hang into a failure.
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        poll.tick().await;
        let req = get_request(proxy, "/sse?chunks=1", Some(key), &[(TENANT, tenant)]);
        let resp = within("an SSE head", DEADLINE, client.send(req))
            .await
            .expect("an SSE request through the router");
        if resp.status() == 200 {
            return resp.into_body();
        }
        let refused = within("a refusal", DEADLINE, client::collect(resp))
            .await
            .expect("read a refusal");
        expect_router_error(&refused, 503, "overloaded");
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {DEADLINE:?} waiting for tenant {tenant} to have room again"
        );
    }
}

/// Releases the SSE requests `fake` holds and reads each of `held` to its end.
async fn release_held(fake: &Listening, held: Vec<Incoming>) {
    fake.release_sse(held.len());
    for mut body in held {
        read_exactly(&mut body, sse_chunk(0).as_bytes(), "the released SSE chunk").await;
        expect_end(body, "the end of the SSE stream").await;
    }
}

/// The config generation in force, per `GET /config`.
async fn generation(router: &RouterProcess) -> u64 {
    router.admin_json("/config").await["generation"]
        .as_u64()
        .expect("GET /config reports a generation")
}

/// A rule set with one cluster `c` (`endpoint`), route `k` to it and the `tenants` block.
fn tenant_rules(endpoint: &str, tenants: &Value) -> Value {
    json!({
        "clusters": { "c": { "endpoints": [endpoint] } },
        "routes": { "k": { "cluster": "c" } },
        "tenants": tenants,
    })
}

/// Route `k` to cluster `live` (`endpoint`) allowing only `search` and `homepage`; `batch`
/// is declared too, but not allowed on `k`. No tenant has limits.
fn allow_list_rules(endpoint: &str) -> Value {
    json!({
        "clusters": { "live": { "endpoints": [endpoint] } },
        "routes": { "k": { "cluster": "live", "tenants": ["search", "homepage"] } },
        "tenants": { "search": {}, "homepage": {}, "batch": {} },
    })
}

// === allowed tenants ===

#[tokio::test]
async fn a_route_with_tenants_serves_them_and_refuses_other_tenants_and_requests_without_one() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&allow_list_rules(&fake.endpoint())).await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for tenant in ["search", "homepage"] {
            let resp = get_as(&client, proxy, "k", Some(tenant)).await;
            assert_served_by_fake(&resp, "live", &format!("{version:?} as {tenant}"));
        }
        let served = fake.requests();
        for tenant in [Some("batch"), Some("stranger"), None] {
            let resp = get_as(&client, proxy, "k", tenant).await;
            assert_not_allowed(&resp, "k", &format!("{version:?} as {tenant:?}"));
        }
        assert_eq!(
            fake.requests(),
            served,
            "{version:?}: a refused tenant's request never reaches the upstream"
        );
    }
    assert_eq!(fake.requests(), 4, "only the allowed tenants were served");

    for (tenant, what) in [
        ("batch", "a declared tenant the route does not list"),
        ("other", "an undeclared tenant"),
        ("none", "a request without a tenant"),
    ] {
        wait_for_metric_exactly(
            &router,
            TENANT_REFUSED,
            &refused_labels(tenant, "not_allowed"),
            2.0,
            &format!("{what} was refused once per client version"),
        )
        .await;
    }
    for tenant in ["search", "homepage"] {
        wait_for_metric_exactly(
            &router,
            TENANT_REQUESTS,
            &[("tenant", tenant)],
            2.0,
            "one request per client version",
        )
        .await;
    }
    let text = router.metrics_text().await;
    assert!(
        !text.contains("stranger"),
        "an undeclared tenant never becomes a label value (unbounded cardinality)"
    );
}

#[tokio::test]
async fn a_grpc_call_from_a_tenant_the_route_does_not_allow_gets_a_trailers_only_permission_denied()
{
    let _trace = trace_init();
    let upstream = FakeGrpc::new().name("echo").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
        "routes": { "echo": { "cluster": "grpc", "tenants": ["search"] } },
        "tenants": { "search": {}, "batch": {} },
    }))
    .await;
    let mut client = echo_client(&router).await;

    let served = say_as(&mut client, "echo", Some("search"))
        .await
        .unwrap_or_else(|status| panic!("Say as an allowed tenant: {status:?}"));
    assert_eq!(served, "echo");
    for tenant in [Some("batch"), Some("stranger"), None] {
        let status = say_as(&mut client, "echo", tenant)
            .await
            .expect_err("a tenant the route does not allow is refused");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "as {tenant:?}: {status:?}"
        );
    }

    let refused = grpc_call(&router, "echo", &[(TENANT, "batch")]).await;
    assert_trailers_only(&refused, "7", "a declared tenant the route does not list");
    let refused = grpc_call(&router, "echo", &[]).await;
    assert_trailers_only(&refused, "7", "a call without a tenant");
    assert_eq!(
        upstream.requests(),
        1,
        "only the allowed tenant's call reached the upstream"
    );

    // The connection is still fine after the refusals.
    let served = say_as(&mut client, "echo", Some("search")).await;
    assert_eq!(served.ok().as_deref(), Some("echo"));
}

#[tokio::test]
async fn the_tenant_header_flag_renames_the_header_and_x_tenant_id_is_then_ignored() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start_with_args(
        &allow_list_rules(&fake.endpoint()),
        &["--tenant-header", "x-team"],
    )
    .await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get_with(&client, proxy, "k", &[("x-team", "search")]).await;
        assert_served_by_fake(&resp, "live", &format!("{version:?}: x-team: search"));

        let served = fake.requests();
        let resp = get_with(&client, proxy, "k", &[(TENANT, "search")]).await;
        assert_not_allowed(
            &resp,
            "k",
            &format!("{version:?}: x-tenant-id alone names no tenant"),
        );
        let resp = get_with(
            &client,
            proxy,
            "k",
            &[("x-team", "stranger"), (TENANT, "search")],
        )
        .await;
        assert_not_allowed(
            &resp,
            "k",
            &format!("{version:?}: x-team decides, not x-tenant-id"),
        );
        assert_eq!(
            fake.requests(),
            served,
            "{version:?}: nothing refused went upstream"
        );
    }
    wait_for_metric_exactly(
        &router,
        TENANT_REFUSED,
        &refused_labels("none", "not_allowed"),
        2.0,
        "the requests carrying only x-tenant-id have no tenant",
    )
    .await;
}

// === rate limits ===

#[tokio::test]
async fn a_burst_past_a_tenants_rate_admits_exactly_the_burst_and_answers_429_with_retry_after() {
    const SENT: usize = 20;
    const BURST: usize = 5;

    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&tenant_rules(
        &fake.endpoint(),
        &json!({ "batch": { "requests_per_second": NO_REFILL, "burst": BURST } }),
    ))
    .await;
    let proxy = router.proxy_addr;
    let clients = CLIENT_VERSIONS.map(HttpClient::for_version);

    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..SENT {
        let client = &clients[i % clients.len()];
        let resp = get_as(client, proxy, "k", Some("batch")).await;
        let what = format!("request {i} ({:?})", client.version());
        if resp.status == 200 {
            assert_served_by_fake(&resp, "live", &what);
            admitted += 1;
        } else {
            assert_rate_limited(&resp, "k", &what);
            limited += 1;
        }
    }
    assert_eq!(admitted, BURST, "exactly the burst is admitted");
    assert_eq!(limited, SENT - BURST);
    assert_eq!(
        fake.requests(),
        BURST,
        "a rate-limited request never goes upstream"
    );

    // The limit is the tenant's: others on the same route are not affected.
    for tenant in [Some("stranger"), None] {
        let resp = get_as(&clients[0], proxy, "k", tenant).await;
        assert_served_by_fake(&resp, "live", &format!("as {tenant:?}"));
    }

    wait_for_metric_exactly(
        &router,
        TENANT_REFUSED,
        &refused_labels("batch", "rate_limited"),
        (SENT - BURST) as f64,
        "every 429 is counted",
    )
    .await;
    wait_for_metric_exactly(
        &router,
        TENANT_REQUESTS,
        &[("tenant", "batch")],
        SENT as f64,
        "every request of the declared tenant is counted, admitted or not",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_burst_is_exact_across_the_routers_workers() {
    /// Concurrent clients, each with its own connection.
    const CLIENTS: usize = 8;
    /// Requests per client.
    const PER_CLIENT: usize = 5;
    const BURST: usize = 10;

    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&tenant_rules(
        &fake.endpoint(),
        &json!({ "batch": { "requests_per_second": NO_REFILL, "burst": BURST } }),
    ))
    .await;
    let proxy = router.proxy_addr;

    // Every client connects and starts at once, so the requests race across both workers.
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let start = start.clone();
        let version = if n % 2 == 0 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            start.wait().await;
            let mut statuses = Vec::new();
            for i in 0..PER_CLIENT {
                let resp = get_as(&client, proxy, "k", Some("batch")).await;
                let what = format!("client {n} ({version:?}) request {i}");
                if resp.status != 200 {
                    assert_rate_limited(&resp, "k", &what);
                }
                statuses.push(resp.status.as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(
            within("a client's requests", DEADLINE, task)
                .await
                .expect("a client task panicked"),
        );
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted, BURST,
        "exactly the burst is admitted across the workers: {statuses:?}"
    );
    assert_eq!(statuses.len() - admitted, CLIENTS * PER_CLIENT - BURST);
    assert_eq!(fake.requests(), BURST);
    wait_for_metric_exactly(
        &router,
        TENANT_REFUSED,
        &refused_labels("batch", "rate_limited"),
        (CLIENTS * PER_CLIENT - BURST) as f64,
        "every 429 is counted once",
    )
    .await;
}

// === concurrency limits ===

#[tokio::test]
async fn a_tenant_at_its_concurrency_limit_gets_503_overloaded_until_a_request_ends() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&tenant_rules(
        &fake.endpoint(),
        &json!({ "homepage": { "max_concurrent": 2 }, "search": {} }),
    ))
    .await;
    let proxy = router.proxy_addr;
    let holder = HttpClient::http1();

    let held = vec![
        hold_sse(&holder, proxy, "k", "homepage").await,
        hold_sse(&holder, proxy, "k", "homepage").await,
    ];
    assert_eq!(
        fake.sse_started(),
        2,
        "the tenant is served while it has room"
    );

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let resp = get_as(&client, proxy, "k", Some("homepage")).await;
        let error = expect_router_error(&resp, 503, "overloaded");
        assert_eq!(error["routing_key"], "k", "{version:?}");
        retry_after_secs(&resp, &format!("{version:?}: an overloaded tenant"));
    }
    assert_eq!(
        fake.requests(),
        2,
        "a refused request never reaches the upstream"
    );
    for tenant in [Some("search"), Some("stranger"), None] {
        let resp = get_as(&HttpClient::http1(), proxy, "k", tenant).await;
        assert_served_by_fake(
            &resp,
            "live",
            &format!("the limit is homepage's, as {tenant:?}"),
        );
    }
    wait_for_metric_exactly(
        &router,
        TENANT_REFUSED,
        &refused_labels("homepage", "max_concurrent"),
        2.0,
        "one refusal per client version",
    )
    .await;

    release_held(&fake, held).await;
    wait_for_cluster(&router, "c", "idle", |c| c["active_requests"] == 0).await;
    // Both slots are free again: two can be held at once, and the third is refused again.
    let held = vec![
        hold_sse_when_room(&holder, proxy, "k", "homepage").await,
        hold_sse_when_room(&holder, proxy, "k", "homepage").await,
    ];
    let resp = get_as(&HttpClient::http1(), proxy, "k", Some("homepage")).await;
    expect_router_error(&resp, 503, "overloaded");
    release_held(&fake, held).await;
}

#[tokio::test]
async fn grpc_calls_past_a_tenants_limits_get_resource_exhausted_and_unavailable() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let upstream = FakeGrpc::new().name("echo").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "c": { "endpoints": [fake.endpoint()] },
            "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" },
        },
        "routes": { "k": { "cluster": "c" }, "echo": { "cluster": "grpc" } },
        "tenants": {
            "batch": { "requests_per_second": NO_REFILL, "burst": 1 },
            "homepage": { "max_concurrent": 1 },
        },
    }))
    .await;
    let mut client = echo_client(&router).await;

    assert_eq!(
        say_as(&mut client, "echo", Some("batch"))
            .await
            .ok()
            .as_deref(),
        Some("echo"),
        "the burst admits one call"
    );
    let status = say_as(&mut client, "echo", Some("batch"))
        .await
        .expect_err("past the burst");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let refused = grpc_call(&router, "echo", &[(TENANT, "batch")]).await;
    assert_trailers_only(&refused, "8", "a rate-limited call");

    // The concurrency limit counts the tenant's requests on every route.
    let held = hold_sse(&HttpClient::http1(), router.proxy_addr, "k", "homepage").await;
    let status = say_as(&mut client, "echo", Some("homepage"))
        .await
        .expect_err("past max_concurrent");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let refused = grpc_call(&router, "echo", &[(TENANT, "homepage")]).await;
    assert_trailers_only(&refused, "14", "an overloaded tenant's call");
    assert_eq!(
        upstream.requests(),
        1,
        "refused calls never reach the upstream"
    );

    release_held(&fake, vec![held]).await;
    wait_until("the homepage tenant has room again", DEADLINE, || {
        let mut client = client.clone();
        async move {
            match say_as(&mut client, "echo", Some("homepage")).await {
                Ok(server) => server == "echo",
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    false
                }
            }
        }
    })
    .await;
}

// === limits across a reload ===

/// Route `k` to cluster `c` (`endpoint`) with tenant `batch` limited to a burst of 3; with
/// `other`, also cluster `x` and route `unrelated` to it.
fn reload_rules(version: u64, endpoint: &str, other: Option<&str>) -> Value {
    let mut rules = tenant_rules(
        endpoint,
        &json!({ "batch": { "requests_per_second": NO_REFILL, "burst": 3 } }),
    );
    rules["version"] = json!(version);
    if let Some(other) = other {
        rules["clusters"]["x"] = json!({ "endpoints": [other] });
        rules["routes"]["unrelated"] = json!({ "cluster": "x" });
    }
    rules
}

#[tokio::test]
async fn a_reload_that_keeps_a_tenant_keeps_its_exhausted_bucket() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let other = FakeModel::new().name("other").start().await;
    let router = RouterProcess::start(&reload_rules(1, &fake.endpoint(), None)).await;
    let proxy = router.proxy_addr;
    let client = HttpClient::http1();

    for i in 0..3 {
        let resp = get_as(&client, proxy, "k", Some("batch")).await;
        assert_served_by_fake(&resp, "live", &format!("request {i} within the burst"));
    }
    let resp = get_as(&client, proxy, "k", Some("batch")).await;
    assert_rate_limited(&resp, "k", "the request past the burst");

    let old = generation(&router).await;
    router.rewrite_config(&reload_rules(2, &fake.endpoint(), Some(&other.endpoint())));
    router.wait_for_generation(old + 1).await;
    let resp = get_as(&client, proxy, "unrelated", None).await;
    assert_served_by_fake(&resp, "other", "the new route is in force");

    let resp = get_as(&client, proxy, "k", Some("batch")).await;
    assert_rate_limited(&resp, "k", "after the reload the bucket is still empty");
    let resp = get_as(&client, proxy, "unrelated", Some("batch")).await;
    assert_rate_limited(
        &resp,
        "unrelated",
        "the tenant's limit holds on every route",
    );
    assert_eq!(fake.requests(), 3, "only the burst went upstream");
    assert_eq!(
        other.requests(),
        1,
        "only the untenanted request went to the new route"
    );
}

// === traffic class ===

/// Route `k` to cluster `live` with synthetic traffic to cluster `synthetic`; route
/// `k-dead` to `live` with synthetic traffic to `dead-synthetic`, whose only endpoint is
/// `dead`.
fn synthetic_rules(live: &Listening, synthetic: &Listening, dead: &DeadPort) -> Value {
    json!({
        "clusters": {
            "live": { "endpoints": [live.endpoint()] },
            "synthetic": { "endpoints": [synthetic.endpoint()] },
            "dead-synthetic": { "endpoints": [dead.addr().to_string()] },
        },
        "routes": {
            "k": { "cluster": "live", "synthetic_cluster": "synthetic" },
            "k-dead": { "cluster": "live", "synthetic_cluster": "dead-synthetic" },
        },
    })
}

/// The headers of a request of traffic class `class` (none when `None`).
fn class_headers(class: Option<&str>) -> Vec<(&str, &str)> {
    class.map(|c| (TRAFFIC_CLASS, c)).into_iter().collect()
}

#[tokio::test]
async fn synthetic_and_replay_traffic_go_only_to_the_synthetic_cluster_even_when_it_is_down() {
    const EACH: usize = 2;

    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let synthetic = FakeModel::new().name("synthetic").start().await;
    let dead = DeadPort::new();
    let router = RouterProcess::start(&synthetic_rules(&live, &synthetic, &dead)).await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for (class, fake) in [
            (Some("synthetic"), "synthetic"),
            (Some("replay"), "synthetic"),
            (Some("live"), "live"),
            (Some("shadow"), "live"),
            (None, "live"),
        ] {
            for i in 0..EACH {
                let resp = get_with(&client, proxy, "k", &class_headers(class)).await;
                assert_served_by_fake(&resp, fake, &format!("{version:?} {class:?} request {i}"));
            }
        }
    }
    let versions = CLIENT_VERSIONS.len();
    assert_eq!(
        synthetic.requests(),
        2 * EACH * versions,
        "synthetic and replay"
    );
    assert_eq!(
        live.requests(),
        3 * EACH * versions,
        "live, shadow and no class"
    );

    let live_before = live.requests();
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for class in ["synthetic", "replay"] {
            let resp = get_with(&client, proxy, "k-dead", &[(TRAFFIC_CLASS, class)]).await;
            assert!(
                resp.status == 502 || resp.status == 503,
                "{version:?} {class}: the router's error, not the live cluster: {resp:?}"
            );
            let code = if resp.status == 502 {
                "upstream_connect_failed"
            } else {
                "no_healthy_upstream"
            };
            let error = expect_router_error(&resp, resp.status.as_u16(), code);
            assert_eq!(error["routing_key"], "k-dead", "{version:?} {class}");
        }
    }
    assert_eq!(
        live.requests(),
        live_before,
        "no synthetic request fell back to the live cluster"
    );
    let resp = get_with(&HttpClient::http1(), proxy, "k-dead", &[]).await;
    assert_served_by_fake(
        &resp,
        "live",
        "live traffic of k-dead goes to its live cluster",
    );
}

#[tokio::test]
async fn an_unknown_traffic_class_gets_400_invalid_traffic_class_and_nothing_goes_upstream() {
    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let synthetic = FakeModel::new().name("synthetic").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "live": { "endpoints": [live.endpoint()] },
            "synthetic": { "endpoints": [synthetic.endpoint()] },
        },
        "routes": {
            "k": { "cluster": "live", "synthetic_cluster": "synthetic" },
            "plain": { "cluster": "live" },
        },
    }))
    .await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for key in ["k", "plain"] {
            let resp = get_with(&client, proxy, key, &[(TRAFFIC_CLASS, "bogus")]).await;
            let error = expect_router_error(&resp, 400, "invalid_traffic_class");
            assert_eq!(error["routing_key"], key, "{version:?} route {key}");
        }
    }
    let refused = grpc_call(&router, "k", &[(TRAFFIC_CLASS, "bogus")]).await;
    assert_trailers_only(&refused, "3", "a gRPC call of an unknown class");
    assert_eq!(
        live.requests() + synthetic.requests(),
        0,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn the_request_metrics_carry_the_traffic_class() {
    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let synthetic = FakeModel::new().name("synthetic").start().await;
    let dead = DeadPort::new();
    let router = RouterProcess::start(&synthetic_rules(&live, &synthetic, &dead)).await;
    let client = HttpClient::http1();

    let sent = [
        (Some("synthetic"), 3),
        (Some("replay"), 1),
        (Some("shadow"), 1),
        (Some("live"), 1),
        (None, 2),
    ];
    for (class, n) in sent {
        for _ in 0..n {
            let resp = get_with(&client, router.proxy_addr, "k", &class_headers(class)).await;
            assert_eq!(resp.status, 200, "{class:?}: {resp:?}");
        }
    }

    for (class, cluster, expected) in [
        ("synthetic", "synthetic", 3.0),
        ("replay", "synthetic", 1.0),
        ("shadow", "live", 1.0),
        ("live", "live", 3.0),
    ] {
        wait_for_metric_exactly(
            &router,
            "router_requests_total",
            &[
                ("route", "k"),
                ("cluster", cluster),
                ("traffic_class", class),
            ],
            expected,
            &format!("{class} requests (no class header counts as live)"),
        )
        .await;
    }
    // The counts above have settled, so a missing sample is a real zero.
    assert_eq!(
        router
            .metric(
                "router_requests_total",
                &[
                    ("route", "k"),
                    ("cluster", "live"),
                    ("traffic_class", "synthetic"),
                ],
            )
            .await,
        0.0,
        "no synthetic request was served by the live cluster"
    );
}

// === attribution ===

/// Rule set `version` 7: route `k` to cluster `live` (`live`), route `dead` to cluster
/// `dead` (`dead`, refusing), route `only-search` to `live` allowing tenant `search` only.
fn attribution_rules(live: &Listening, dead: &DeadPort) -> Value {
    json!({
        "version": 7,
        "clusters": {
            "live": { "endpoints": [live.endpoint()] },
            "dead": { "endpoints": [dead.addr().to_string()] },
        },
        "routes": {
            "k": { "cluster": "live" },
            "dead": { "cluster": "dead" },
            "only-search": { "cluster": "live", "tenants": ["search"] },
        },
        "tenants": { "search": {} },
    })
}

#[tokio::test]
async fn answers_name_the_cluster_endpoint_and_rule_set_version_that_served_them() {
    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let dead = DeadPort::new();
    let router = RouterProcess::start(&attribution_rules(&live, &dead)).await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let ok = get_as(&client, proxy, "k", None).await;
        assert_served_by_fake(&ok, "live", &format!("{version:?}"));
        assert_eq!(
            ok.header(SERVED_BY),
            Some(format!(
                "cluster=live; endpoint={}; version=7",
                live.endpoint()
            )),
            "{version:?}: a proxied answer"
        );

        let unknown = get_as(&client, proxy, "no-such-key", None).await;
        expect_router_error(&unknown, 404, "unknown_routing_key");
        assert_eq!(
            unknown.header(SERVED_BY).as_deref(),
            Some("version=7"),
            "{version:?}: an unknown key has no cluster"
        );

        let down = get_as(&client, proxy, "dead", None).await;
        assert!(
            down.status == 502 || down.status == 503,
            "{version:?}: a dead cluster: {down:?}"
        );
        assert_eq!(
            down.header(SERVED_BY).as_deref(),
            Some("cluster=dead; version=7"),
            "{version:?}: a cluster with no reachable endpoint"
        );

        let refused = get_as(&client, proxy, "only-search", Some("stranger")).await;
        assert_not_allowed(&refused, "only-search", &format!("{version:?}"));
        assert_eq!(
            refused.header(SERVED_BY).as_deref(),
            Some("cluster=live; version=7"),
            "{version:?}: a refused tenant on a known route"
        );
    }
}

#[tokio::test]
async fn a_rule_set_without_a_version_is_attributed_as_version_0() {
    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&tenant_rules(&live.endpoint(), &json!({}))).await;
    let client = HttpClient::http1();

    let ok = get_as(&client, router.proxy_addr, "k", None).await;
    assert_served_by_fake(&ok, "live", "a proxied answer");
    assert_eq!(
        ok.header(SERVED_BY),
        Some(format!(
            "cluster=c; endpoint={}; version=0",
            live.endpoint()
        ))
    );
    let unknown = get_as(&client, router.proxy_addr, "no-such-key", None).await;
    assert_eq!(unknown.header(SERVED_BY).as_deref(), Some("version=0"));
}

#[tokio::test]
async fn served_by_off_removes_the_attribution_header_from_every_answer() {
    let _trace = trace_init();
    let live = FakeModel::new().name("live").start().await;
    let dead = DeadPort::new();
    let router =
        RouterProcess::start_with_args(&attribution_rules(&live, &dead), &["--served-by", "off"])
            .await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let answers = [
            (
                "a proxied answer",
                get_as(&client, proxy, "k", None).await,
                200,
            ),
            (
                "an unknown key",
                get_as(&client, proxy, "no-such-key", None).await,
                404,
            ),
            (
                "a refused tenant",
                get_as(&client, proxy, "only-search", Some("stranger")).await,
                403,
            ),
        ];
        for (what, resp, status) in answers {
            assert_eq!(resp.status, status, "{version:?} {what}: {resp:?}");
            assert_eq!(
                resp.header(SERVED_BY),
                None,
                "{version:?} {what}: no attribution with --served-by off"
            );
        }
        let down = get_as(&client, proxy, "dead", None).await;
        assert!(
            down.status == 502 || down.status == 503,
            "{version:?}: {down:?}"
        );
        assert_eq!(down.header(SERVED_BY), None, "{version:?}: a dead cluster");
    }
}

// === validation ===

/// [`route_k_rules`] with the `tenants` block added.
fn rules_with_tenants(clusters: &[&str], route: &Value, tenants: &Value) -> Value {
    with_fields(
        route_k_rules(clusters, route),
        &json!({ "tenants": tenants }),
    )
}

#[tokio::test]
async fn the_router_refuses_a_route_tenant_that_is_not_declared() {
    let _trace = trace_init();
    refused_naming(
        rules_with_tenants(
            &["a"],
            &json!({ "tenants": ["search", "nope"] }),
            &json!({ "search": {} }),
        ),
        r#"$.routes["k"].tenants[1]"#,
        &["nope"],
    )
    .await;
    // Without a tenants block, no tenant is declared.
    refused_naming(
        route_k_rules(&["a"], &json!({ "tenants": ["search"] })),
        r#"$.routes["k"].tenants[0]"#,
        &["search"],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_a_synthetic_cluster_that_does_not_exist_or_is_the_routes_own() {
    let _trace = trace_init();
    refused_naming(
        route_k_rules(&["a", "b"], &json!({ "synthetic_cluster": "nope" })),
        r#"$.routes["k"].synthetic_cluster"#,
        &["nope"],
    )
    .await;
    refused_naming(
        route_k_rules(&["a", "b"], &json!({ "synthetic_cluster": "a" })),
        r#"$.routes["k"].synthetic_cluster"#,
        &[],
    )
    .await;
    refused_naming(
        route_k_rules(
            &["a", "b"],
            &json!({ "fallback": "b", "synthetic_cluster": "b" }),
        ),
        r#"$.routes["k"].synthetic_cluster"#,
        &[],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_tenant_limits_out_of_range() {
    let _trace = trace_init();
    for (limits, field) in [
        (json!({ "requests_per_second": 0 }), "requests_per_second"),
        (
            json!({ "requests_per_second": 20_000_000 }),
            "requests_per_second",
        ),
        (json!({ "requests_per_second": 10, "burst": 0 }), "burst"),
        (json!({ "max_concurrent": 0 }), "max_concurrent"),
    ] {
        refused_naming(
            rules_with_tenants(&["a"], &json!({}), &json!({ "t": limits })),
            &format!(r#"$.tenants["t"].{field}"#),
            &[],
        )
        .await;
    }
}
