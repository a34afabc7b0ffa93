//! Retries with a replay buffer, the retry budget, per-try timeouts and sticky splits
//! (DESIGN §6 and §11), seen from outside: what the client gets, what each fake received
//! (whole bodies compared by SHA-256), and the router's metrics.
//!
//! The failures are made by the fakes on demand: `reset_after_read` (reads the whole body,
//! then breaks the exchange before response headers), `fail_next` (the next requests get a
//! status), a [`BlackHole`] (accepts and never answers) for per-try timeouts, and
//! `fail_next_unavailable` on the gRPC fake. Nothing waits for a backoff or a timeout to pass:
//! every test waits for an observable outcome (an answer, a request reaching a fake, a
//! metric), with a deadline that only turns a hang into a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Version};
use http_body_util::BodyExt as _;
use integration_tests::client;
use integration_tests::fake_grpc::UNAVAILABLE_MESSAGE;
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::{
    BlackHole, Collected, DEADLINE, FakeGrpc, FakeModel, HttpClient, Listening, RouterProcess,
    pattern, trace_init, wait_until, within,
};
use models_config::allocation;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::{
    CLIENT_VERSIONS, addresses, assert_status, echo_client, expect_router_error, fakes, fetch, get,
    keyed, keyed_get, post_pattern, refused_naming, route_k_rules, route_reason_labels, say,
    served_by, wait_for_metric_exactly,
};

const MIB: u64 = 1024 * 1024;

/// The header the sticky splits here hash.
const SUBJECT: &str = "x-subject-id";

/// How many bodies each fake has reset after reading, in the order of `fakes`.
fn resets_per_fake(fakes: &[Listening]) -> Vec<usize> {
    fakes.iter().map(|f| f.reset_bodies().len()).collect()
}

/// Arms every fake to reset its next `n` requests to `/reset-after-read`.
fn arm_resets(fakes: &[Listening], n: usize) {
    for fake in fakes {
        fake.reset_after_read(n);
    }
}

fn cluster_labels(cluster: &str) -> [(&str, &str); 1] {
    [("cluster", cluster)]
}

// === resets and the replay buffer ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_reads_a_whole_8_mib_body_then_resets_is_retried_on_the_other_endpoint_with_the_same_bytes()
 {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let retry = json!({ "attempts": 3, "on": ["reset"], "replay_buffer_bytes": 16 * MIB });
    let router = RouterProcess::start(&json!({
        "clusters": {
            "h1": { "endpoints": addresses(&f), "lb_policy": "round_robin", "protocol": "http1" },
            "h2": { "endpoints": addresses(&f), "lb_policy": "round_robin", "protocol": "http2" },
        },
        "routes": {
            "h1": { "cluster": "h1", "retry": retry },
            "h2": { "cluster": "h2", "retry": retry },
        },
    }))
    .await;
    let len = 8 * MIB;
    let sha = pattern::sha256_hex(len);

    for (key, version) in [("h1", Version::HTTP_11), ("h2", Version::HTTP_2)] {
        // Both endpoints reset once. The first try resets wherever it lands; the retry goes
        // to the other endpoint, which resets too; the third try (back on the first one, now
        // disarmed) succeeds. A retry on the same endpoint would have succeeded at once and
        // left the other endpoint's reset unused, so one reset per endpoint shows the retry
        // moved.
        arm_resets(&f, 1);
        let resets_before = resets_per_fake(&f);
        let answered_before: usize = f.iter().map(|x| x.sha256_bodies().len()).sum();
        let resp = post_pattern(
            &HttpClient::for_version(version),
            router.proxy_addr,
            "/reset-after-read",
            key,
            len,
        )
        .await;
        assert_status(&resp, 200);
        let json = resp.json();
        assert_eq!(json["bytes"], len, "{key}");
        assert_eq!(
            json["sha256"], sha,
            "{key}: the successful try got exactly the bytes the client sent"
        );
        for (fake, before) in f.iter().zip(&resets_before) {
            let resets = fake.reset_bodies();
            assert_eq!(
                resets.len(),
                before + 1,
                "{key}: {} reset exactly once: {resets:?}",
                fake.name()
            );
            assert_eq!(
                resets.last(),
                Some(&(len, sha.clone())),
                "{key}: {} read the whole 8 MiB body before it reset",
                fake.name()
            );
            assert_eq!(fake.resets_remaining(), 0, "{key}");
        }
        let answered: usize = f.iter().map(|x| x.sha256_bodies().len()).sum();
        assert_eq!(answered, answered_before + 1, "{key}: one try succeeded");
    }
    for cluster in ["h1", "h2"] {
        router
            .wait_for_metric("router_retries_total", &cluster_labels(cluster), |v| {
                v >= 2.0
            })
            .await;
    }
}

#[tokio::test]
async fn when_every_try_resets_the_client_gets_502_upstream_error_after_exactly_the_attempts_asked_for()
 {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": addresses(&f), "lb_policy": "round_robin" } },
        "routes": { "twice": { "cluster": "c", "retry": { "attempts": 2, "on": ["reset"] } } },
    }))
    .await;
    let len = MIB;

    arm_resets(&f, 1);
    let resp = post_pattern(
        &HttpClient::http1(),
        router.proxy_addr,
        "/reset-after-read",
        "twice",
        len,
    )
    .await;
    let error = expect_router_error(&resp, 502, "upstream_error");
    assert_eq!(error["routing_key"], "twice");
    // Two tries, one on each endpoint: `attempts` counts the first try.
    assert_eq!(resets_per_fake(&f), [1, 1]);
    for fake in &f {
        assert_eq!(fake.reset_bodies()[0], (len, pattern::sha256_hex(len)));
        assert!(fake.sha256_bodies().is_empty(), "no try succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_cap_streams_on_and_its_reset_is_answered_502_not_retried() {
    const ROUTE: &str = "big-upload";
    /// How a log line may write the 1 MiB cap.
    const CAP_TEXTS: [&str; 3] = ["1048576", "1 MiB", "1MiB"];

    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": addresses(&f), "lb_policy": "round_robin" } },
        "routes": {
            ROUTE: {
                "cluster": "c",
                "retry": { "attempts": 3, "on": ["reset"], "replay_buffer_bytes": MIB },
            },
        },
    }))
    .await;
    let client = HttpClient::http1();

    // Under the cap the same route retries (both endpoints reset once, the third try wins).
    let small = MIB / 2;
    arm_resets(&f, 1);
    let resp = post_pattern(
        &client,
        router.proxy_addr,
        "/reset-after-read",
        ROUTE,
        small,
    )
    .await;
    assert_status(&resp, 200);
    assert_eq!(resp.json()["sha256"], pattern::sha256_hex(small));
    assert_eq!(resets_per_fake(&f), [1, 1]);

    // Over the cap: both endpoints would reset once more, so a retry would still fail on the
    // other endpoint and a third try would succeed: only "not retried" gives exactly one
    // reset and a 502.
    let len = 8 * MIB;
    arm_resets(&f, 1);
    let resp = post_pattern(&client, router.proxy_addr, "/reset-after-read", ROUTE, len).await;
    let error = expect_router_error(&resp, 502, "upstream_error");
    assert_eq!(error["routing_key"], ROUTE);
    let resets: Vec<(u64, String)> = f.iter().flat_map(|x| x.reset_bodies()).collect();
    assert_eq!(resets.len(), 3, "one try only past the cap: {resets:?}");
    assert_eq!(
        resets.iter().filter(|r| r.0 == len).count(),
        1,
        "{resets:?}"
    );
    assert!(
        resets.contains(&(len, pattern::sha256_hex(len))),
        "past the cap the body streamed on, whole, to the upstream: {resets:?}"
    );

    wait_for_metric_exactly(
        &router,
        "router_retries_abandoned_total",
        &route_reason_labels(ROUTE, "body_over_replay_cap"),
        1.0,
        "only the body over the cap was abandoned",
    )
    .await;
    wait_until(
        "a log line names the route and the replay cap",
        DEADLINE,
        || {
            let output = router.output();
            std::future::ready(
                output.lines().any(|line| {
                    line.contains(ROUTE) && CAP_TEXTS.iter().any(|cap| line.contains(cap))
                }),
            )
        },
    )
    .await;
}

// === retriable statuses ===

/// One exchange of [`a_retriable_status_is_retried_and_the_last_answer_is_passed_on_as_is`].
struct StatusRound {
    key: &'static str,
    fail_next: usize,
    status: u16,
    client_gets: u16,
    tries: usize,
}

#[tokio::test]
async fn a_retriable_status_is_retried_and_the_last_answer_is_passed_on_as_is() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("s").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "one": { "endpoints": [fake.endpoint()] } },
        "routes": {
            "on-503": { "cluster": "one", "retry": { "attempts": 2, "on": ["503"] } },
            "on-5xx": { "cluster": "one", "retry": { "attempts": 3, "on": ["5xx"] } },
            "on-reset": { "cluster": "one", "retry": { "attempts": 3, "on": ["reset"] } },
        },
    }))
    .await;
    let client = HttpClient::http1();
    let len = MIB + 7;
    let rounds = [
        // A 503, then the retry (the same endpoint: the only one) gets the body again.
        StatusRound {
            key: "on-503",
            fail_next: 1,
            status: 503,
            client_gets: 200,
            tries: 2,
        },
        // 503 is not listed: the upstream's answer is passed on.
        StatusRound {
            key: "on-reset",
            fail_next: 1,
            status: 503,
            client_gets: 503,
            tries: 1,
        },
        // Another 5xx than the one listed.
        StatusRound {
            key: "on-503",
            fail_next: 1,
            status: 500,
            client_gets: 500,
            tries: 1,
        },
        // A class.
        StatusRound {
            key: "on-5xx",
            fail_next: 1,
            status: 500,
            client_gets: 200,
            tries: 2,
        },
        // The attempts run out: the last upstream answer, as is.
        StatusRound {
            key: "on-5xx",
            fail_next: 5,
            status: 503,
            client_gets: 503,
            tries: 3,
        },
    ];
    let mut retries = 0;
    for round in rounds {
        let StatusRound {
            key,
            fail_next,
            status,
            client_gets,
            tries,
        } = round;
        let what = format!("{key} with {fail_next} × {status}");
        let before = fake.requests();
        fake.fail_next(fail_next, status);
        let resp = post_pattern(&client, router.proxy_addr, "/sha256", key, len).await;
        assert_eq!(
            resp.status,
            client_gets,
            "{what}: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
        if client_gets == 200 {
            assert_eq!(resp.json()["sha256"], pattern::sha256_hex(len), "{what}");
        } else {
            assert_eq!(
                resp.header(SERVER_HEADER).as_deref(),
                Some("s"),
                "{what}: the upstream's own answer, not an error of the router"
            );
            assert_eq!(resp.text(), "s", "{what}");
        }
        assert_eq!(fake.requests(), before + tries, "{what}: tries");
        retries += tries - 1;
        fake.fail_next(0, 200);
    }
    wait_for_metric_exactly(
        &router,
        "router_retries_total",
        &cluster_labels("one"),
        retries as f64,
        "one count per retry",
    )
    .await;
}

#[tokio::test]
async fn a_retry_sends_the_same_headers_as_the_first_try_duplicates_and_order_included() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("s").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "one": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": { "cluster": "one", "retry": { "attempts": 2, "on": ["503"] } } },
    }))
    .await;
    for (i, version) in CLIENT_VERSIONS.into_iter().enumerate() {
        let before = fake.requests();
        fake.fail_next(1, 503);
        let req = keyed(Method::GET, router.proxy_addr, "/headers", "k")
            .header("x-multi", "first")
            .header("x-multi", "second")
            .header("x-request-id", format!("retry-head-{i}"))
            .header("authorization", "Bearer not-checked-here")
            .body(client::empty())
            .expect("a valid request");
        let resp = fetch(&HttpClient::for_version(version), req).await;
        assert_status(&resp, 200);
        assert_eq!(fake.requests(), before + 2, "{version:?}: one retry");
        let retried = fake.last_headers();
        let values = |name: &str| -> Vec<&[u8]> {
            retried.get_all(name).iter().map(|v| v.as_bytes()).collect()
        };
        assert_eq!(
            values("x-multi"),
            [&b"first"[..], b"second"],
            "{version:?}: both values, in order, on the retry"
        );
        assert_eq!(values("authorization"), [&b"Bearer not-checked-here"[..]]);
        assert_eq!(values("x-routing-key"), [&b"k"[..]]);
        let ids = fake.seen_header_values("x-request-id");
        assert_eq!(
            ids[ids.len() - 2..],
            [format!("retry-head-{i}"), format!("retry-head-{i}")],
            "{version:?}: the first try and the retry carry the same request id"
        );
    }
}

#[tokio::test]
async fn a_grpc_unavailable_trailers_only_answer_is_retried_when_listed() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().name("g").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "grpc": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
        "routes": {
            "retried": { "cluster": "grpc", "retry": { "on": ["unavailable"] } },
            "not-retried": { "cluster": "grpc", "retry": { "on": ["reset", "resource_exhausted"] } },
        },
    }))
    .await;
    let mut client = echo_client(&router).await;

    upstream.fail_next_unavailable(1);
    let reply = say(&mut client, "Say through the router", "retried", "hello")
        .await
        .unwrap_or_else(|status| panic!("Say with one UNAVAILABLE retried: {status:?}"));
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str()),
        ("hello", "g")
    );
    assert_eq!(upstream.requests(), 2, "the first call and its retry");

    upstream.fail_next_unavailable(1);
    let status = say(
        &mut client,
        "Say through the router",
        "not-retried",
        "hello",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        UNAVAILABLE_MESSAGE,
        "the upstream's own status, not the router's"
    );
    assert_eq!(upstream.requests(), 3, "UNAVAILABLE is not listed: one try");
    router
        .wait_for_metric("router_retries_total", &cluster_labels("grpc"), |v| {
            v >= 1.0
        })
        .await;
}

#[tokio::test]
async fn a_response_whose_headers_reached_the_client_is_never_retried() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": addresses(&f), "lb_policy": "round_robin" } },
        "routes": { "k": { "cluster": "c", "retry": { "attempts": 3, "on": ["reset", "5xx"] } } },
    }))
    .await;
    let total = || f.iter().map(Listening::requests).sum::<usize>();

    for version in CLIENT_VERSIONS {
        let before = total();
        // 200 and 64 KiB of body, then the upstream breaks the body.
        let req = keyed_get(router.proxy_addr, "/truncate?bytes=65536", "k");
        let resp = within(
            "the response head",
            DEADLINE,
            HttpClient::for_version(version).send(req),
        )
        .await
        .expect("the head reaches the client");
        assert_eq!(resp.status(), 200, "{version:?}");
        // Read until the body ends or breaks; either way the exchange is over for the client.
        let _outcome = within("the broken body", DEADLINE, resp.into_body().collect()).await;
        assert_eq!(
            total(),
            before + 1,
            "{version:?}: the failure after the response headers was not retried"
        );
    }
    assert_eq!(
        router
            .metric("router_retries_total", &cluster_labels("c"))
            .await,
        0.0
    );
}

// === the retry budget ===

/// A router with route `k` to cluster `c` of `endpoints`, retrying 503s (`attempts` tries)
/// under a 20 % budget, with a route timeout far longer than any test so requests held by
/// `/hang` stay in flight.
async fn budget_router(endpoints: Value, lb_policy: &str, attempts: u32) -> RouterProcess {
    RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": endpoints, "lb_policy": lb_policy } },
        "routes": {
            "k": {
                "cluster": "c",
                "timeout_ms": 3_600_000,
                "retry": { "attempts": attempts, "on": ["503"], "budget_percent": BUDGET_PERCENT },
            },
        },
    }))
    .await
}

/// The budget of [`budget_router`], in percent.
const BUDGET_PERCENT: usize = 20;

/// What became of a request whose first try was answered 503.
enum Probe {
    /// The retry reached the fake, which holds it (`/hang` never answers).
    Retried,
    /// The client got the answer: the retry was refused.
    Refused(Box<Collected>),
}

/// Arms `fake` to answer its next request 503, sends `GET /hang` with key `k` (the request
/// task lives in `held`), and returns once the retry reached the fake or the client got the
/// answer.
async fn probe(
    client: &HttpClient,
    proxy: SocketAddr,
    fake: &Listening,
    held: &mut JoinSet<()>,
) -> Probe {
    let before = fake.requests();
    fake.fail_next(1, 503);
    let (tx, mut answered) = tokio::sync::oneshot::channel();
    let req = keyed_get(proxy, "/hang", "k");
    let client = client.clone();
    held.spawn(async move {
        let _ = tx.send(client.fetch(req).await);
    });
    // Polls an observable condition; the deadline only turns a hang into a failure.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    within("the retry to arrive or the answer", DEADLINE, async {
        loop {
            tokio::select! {
                answer = &mut answered => {
                    return Probe::Refused(Box::new(
                        answer.expect("the probe request failed (see its panic)"),
                    ));
                }
                _ = poll.tick() => {
                    if fake.requests() >= before + 2 {
                        return Probe::Retried;
                    }
                }
            }
        }
    })
    .await
}

/// Sends `held_first_tries` requests that `fake` holds (first tries, in flight until the
/// end), then `probes` requests one after the other whose first try is answered 503 and whose
/// retry, when admitted, is held too. Returns `(retried, refused)` and checks that every
/// refused request got the fake's 503 and that the metrics count both.
async fn run_budget_probes(held_first_tries: usize, probes: usize) -> (usize, usize) {
    let fake = FakeModel::new().name("u").start().await;
    let router = budget_router(json!([fake.endpoint()]), "round_robin", 2).await;
    let client = HttpClient::http1();
    let mut held = JoinSet::new();
    for _ in 0..held_first_tries {
        let req = keyed_get(router.proxy_addr, "/hang", "k");
        let client = client.clone();
        held.spawn(async move {
            let _ = client.send(req).await;
        });
    }
    wait_until("the held first tries reach the fake", DEADLINE, || {
        std::future::ready(fake.requests() == held_first_tries)
    })
    .await;

    let (mut retried, mut refused) = (0, 0);
    for i in 0..probes {
        match probe(&client, router.proxy_addr, &fake, &mut held).await {
            Probe::Retried => retried += 1,
            Probe::Refused(resp) => {
                assert_eq!(resp.status, 503, "probe {i}");
                assert_eq!(
                    resp.header(SERVER_HEADER).as_deref(),
                    Some("u"),
                    "probe {i}: a refused retry passes the upstream's 503 on"
                );
                refused += 1;
            }
        }
    }
    wait_for_metric_exactly(
        &router,
        "router_retries_abandoned_total",
        &route_reason_labels("k", "budget_exhausted"),
        refused as f64,
        "one count per refused retry",
    )
    .await;
    wait_for_metric_exactly(
        &router,
        "router_retries_total",
        &cluster_labels("c"),
        retried as f64,
        "one count per admitted retry",
    )
    .await;
    (retried, refused)
}

#[tokio::test]
async fn three_retries_are_always_allowed_and_no_more_while_few_requests_are_in_flight() {
    const PROBES: usize = 10;
    let _trace = trace_init();
    // Nothing else is in flight: when a probe's retry is decided, the requests in flight are
    // the retried probes before it (their retries are held) and the probe itself, at most
    // 3 + 1 (8 if every attempt were counted apart from its request), whose 20 % is below
    // 3. So exactly the 3 that are always allowed get through.
    let (retried, refused) = run_budget_probes(0, PROBES).await;
    assert_eq!(retried, 3);
    assert_eq!(refused, PROBES - 3);
}

#[tokio::test]
async fn retries_in_flight_stay_under_the_budget_percent_of_the_requests_in_flight() {
    const HELD: usize = 50;
    const PROBES: usize = 30;
    let _trace = trace_init();
    let (retried, refused) = run_budget_probes(HELD, PROBES).await;
    // With `r` retries in flight (admitted retries are held and never end), the requests in
    // flight number N, HELD <= N <= HELD + r + 1 (+ r + 1 more if attempts were counted apart
    // from requests).
    // - While r < 20 % of HELD, every retry is within budget: at least that many pass.
    // - A retry is admitted only if r < 20 % of N (taken as r <= 20 % of N, to leave room for
    //   rounding), with N at its largest: the admitted count is the number of such r.
    let at_least = HELD * BUDGET_PERCENT / 100;
    let at_most = (0..PROBES)
        .take_while(|r| r * 100 <= BUDGET_PERCENT * (HELD + 2 * r + 2))
        .count();
    assert!(
        (at_least..=at_most).contains(&retried),
        "{retried} retries admitted with {HELD} requests held in flight, expected {at_least}..={at_most}"
    );
    assert_eq!(refused, PROBES - retried);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_with_every_first_try_failing_the_budget_caps_the_retries() {
    /// Concurrent client loops, each with one request in flight at a time.
    const CLIENTS: usize = 30;
    /// A bound on each loop, far above what the test needs.
    const ROUNDS: usize = 200;

    let _trace = trace_init();
    // `a` answers every request 503 and gets 9 first tries in 10; `b` holds every request it
    // gets (`/hang`). A 503 from `a` is retried on the other endpoint, `b`, where the retry
    // is held for the rest of the test, as is a first try that lands on `b`. Each client
    // loops until one of its requests is held (or its rounds run out). So every retry ever
    // admitted is still in flight at the end, and the total is bounded by the budget at its
    // largest, whatever the timing: max(3, 20 % of the requests in flight), with at most
    // CLIENTS requests in flight (2 × CLIENTS if attempts were counted apart from requests),
    // plus one for rounding. Without a budget every one of `a`'s 503s would be retried.
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    a.fail_next(usize::MAX, 503);
    let router = budget_router(
        json!([
            { "address": a.endpoint(), "weight": 9 },
            { "address": b.endpoint(), "weight": 1 },
        ]),
        "weighted_round_robin",
        3,
    )
    .await;
    let proxy = router.proxy_addr;

    let sent = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (sent, finished, answers) = (sent.clone(), finished.clone(), answers.clone());
        clients.spawn(async move {
            let client = HttpClient::http1();
            for _ in 0..ROUNDS {
                let req = keyed_get(proxy, "/hang", "k");
                sent.fetch_add(1, Ordering::SeqCst);
                let resp = client.fetch(req).await;
                answers
                    .lock()
                    .unwrap()
                    .push((resp.status.as_u16(), resp.header(SERVER_HEADER)));
            }
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Each request `b` got is one client held for good.
    wait_until("every client is held by b or done", DEADLINE, || {
        std::future::ready(b.requests() + finished.load(Ordering::SeqCst) == CLIENTS)
    })
    .await;

    let sent = sent.load(Ordering::SeqCst);
    let (to_a, to_b) = (a.requests(), b.requests());
    let answers = answers.lock().unwrap().clone();
    assert!(
        answers
            .iter()
            .all(|(status, server)| *status == 503 && server.as_deref() == Some("a")),
        "every answer is a's 503: {answers:?}"
    );
    // `a` gets first tries only (a retry goes to the other endpoint); `b` gets the other
    // first tries and every retry.
    let retries = (to_a + to_b).checked_sub(sent).unwrap_or_else(|| {
        panic!("{sent} requests sent, but a got {to_a} and b {to_b}: fewer tries than requests")
    });
    let refused = answers.len();
    assert_eq!(
        retries + refused,
        to_a,
        "each of a's 503s was either retried or passed on"
    );
    let bound = 3.max(2 * CLIENTS * BUDGET_PERCENT / 100) + 1;
    assert!(
        retries <= bound,
        "{retries} retries of {to_a} failed first tries; the budget allows at most {bound}"
    );
    assert!(
        retries >= 3.min(to_a),
        "the first 3 retries are always allowed: {retries} of {to_a}"
    );
    assert!(refused > 0, "the budget refused none of {to_a} retries");
    wait_for_metric_exactly(
        &router,
        "router_retries_abandoned_total",
        &route_reason_labels("k", "budget_exhausted"),
        refused as f64,
        "one count per refused retry",
    )
    .await;
    drop(clients);
}

// === per-try timeouts ===

#[tokio::test]
async fn a_try_without_response_headers_within_the_per_try_timeout_is_retried_on_the_other_endpoint()
 {
    let _trace = trace_init();
    let hole = BlackHole::start().await;
    let ok = FakeModel::new().name("ok").start().await;
    let (hole_1, hole_2) = (BlackHole::start().await, BlackHole::start().await);
    let retry = json!({ "attempts": 2, "on": ["timeout"], "per_try_timeout_ms": 200 });
    let router = RouterProcess::start(&json!({
        "clusters": {
            "c": { "endpoints": [hole.endpoint(), ok.endpoint()], "lb_policy": "round_robin" },
            "holes": { "endpoints": [hole_1.endpoint(), hole_2.endpoint()], "lb_policy": "round_robin" },
        },
        "routes": {
            "k": { "cluster": "c", "timeout_ms": 20_000, "retry": retry },
            "holes": { "cluster": "holes", "timeout_ms": 20_000, "retry": retry },
        },
    }))
    .await;
    let client = HttpClient::http1();

    for i in 0..10 {
        assert_eq!(
            served_by(&client, router.proxy_addr, "k").await,
            "ok",
            "request {i}"
        );
    }
    assert_eq!(ok.requests(), 10, "each request was served once");
    // Round robin sends every other first try to the black hole.
    wait_until("first tries reached the black hole", DEADLINE, || {
        std::future::ready(hole.accepted() >= 1)
    })
    .await;
    router
        .wait_for_metric("router_retries_total", &cluster_labels("c"), |v| v >= 1.0)
        .await;

    // When every try times out, the attempts run out: the router's 504, after one try on
    // each endpoint.
    let resp = get(&client, router.proxy_addr, "/", "holes").await;
    let error = expect_router_error(&resp, 504, "upstream_timeout");
    assert_eq!(error["routing_key"], "holes");
    wait_until("both black holes got a try", DEADLINE, || {
        std::future::ready(hole_1.accepted() >= 1 && hole_2.accepted() >= 1)
    })
    .await;
}

#[tokio::test]
async fn a_timed_out_try_is_answered_504_and_not_retried_when_timeout_is_not_listed() {
    let _trace = trace_init();
    let hole = BlackHole::start().await;
    let silent = BlackHole::start().await;
    let ok = FakeModel::new().name("ok").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "c": { "endpoints": [hole.endpoint(), ok.endpoint()], "lb_policy": "round_robin" },
            "silent": { "endpoints": [silent.endpoint()] },
        },
        "routes": {
            "k": {
                "cluster": "c",
                "timeout_ms": 20_000,
                "retry": { "attempts": 3, "on": ["connect_failure", "reset", "5xx"], "per_try_timeout_ms": 200 },
            },
            "route-timeout": {
                "cluster": "silent",
                "timeout_ms": 300,
                "retry": { "attempts": 3, "on": ["connect_failure", "reset"] },
            },
        },
    }))
    .await;
    let client = HttpClient::http1();

    let mut answered = BTreeMap::<u16, usize>::new();
    for _ in 0..6 {
        let resp = get(&client, router.proxy_addr, "/", "k").await;
        if resp.status == 504 {
            let error = expect_router_error(&resp, 504, "upstream_timeout");
            assert_eq!(error["routing_key"], "k");
        } else {
            assert_status(&resp, 200);
        }
        *answered.entry(resp.status.as_u16()).or_default() += 1;
    }
    // Round robin sends every other first try to the black hole.
    assert!(
        answered.get(&504).is_some_and(|&n| n > 0),
        "tries on the black hole time out: {answered:?}"
    );
    assert_eq!(
        ok.requests(),
        answered.get(&200).copied().unwrap_or(0),
        "no timed-out try was retried on the answering endpoint: {answered:?}"
    );

    // Without a per-try timeout, the route timeout ends a silent upstream's try.
    let resp = get(&client, router.proxy_addr, "/", "route-timeout").await;
    let error = expect_router_error(&resp, 504, "upstream_timeout");
    assert_eq!(error["routing_key"], "route-timeout");
}

// === sticky splits ===

/// The cluster of `split` that the allocation function gives `subject` under `route`:
/// the clusters laid out over the buckets in ascending byte order of their names, each
/// covering weight × 100 buckets.
fn expected_cluster(route: &str, split: &[(&'static str, u32)], subject: &str) -> &'static str {
    let mut layout = split.to_vec();
    layout.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let bucket = allocation::bucket(route, subject);
    let mut upper = 0;
    for (name, weight) in layout {
        upper += weight * 100;
        if bucket < upper {
            return name;
        }
    }
    panic!("the split {split:?} does not cover bucket {bucket}");
}

/// `GET /` with `key` and, when given, `x-subject-id: subject`; returns the fake that
/// answered.
async fn served_for(
    client: &HttpClient,
    proxy: SocketAddr,
    key: &str,
    subject: Option<&str>,
) -> String {
    let mut req = keyed(Method::GET, proxy, "/", key);
    if let Some(subject) = subject {
        req = req.header(SUBJECT, subject);
    }
    let resp = within(
        "a request with a subject",
        DEADLINE,
        client.fetch(req.body(client::empty()).unwrap()),
    )
    .await;
    assert_status(&resp, 200);
    resp.header(SERVER_HEADER)
        .expect("the answer of a fake model names it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_sends_every_subject_to_the_cluster_the_allocation_function_gives() {
    /// Subjects sent 3 times each, on both routes.
    const REPEATED: usize = 200;
    /// Subjects whose spread over the 50/50 split is counted.
    const SUBJECTS: usize = 10_000;
    /// Concurrent client loops for those.
    const LOOPS: usize = 8;
    const EVEN: [(&str, u32); 2] = [("a", 50), ("b", 50)];
    // Listed out of name order: the layout follows the names, not the JSON.
    const SKEWED: [(&str, u32); 2] = [("zeta", 90), ("alpha", 10)];

    let _trace = trace_init();
    let f = fakes(&["a", "b", "alpha", "zeta"]).await;
    let mut clusters = serde_json::Map::new();
    for fake in &f {
        clusters.insert(
            fake.name().to_owned(),
            json!({ "endpoints": [fake.endpoint()] }),
        );
    }
    let split = |weights: &[(&str, u32)]| -> Value {
        weights
            .iter()
            .map(|(name, weight)| ((*name).to_owned(), json!(weight)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let router = RouterProcess::start(&json!({
        "clusters": clusters,
        "routes": {
            "ranker": { "cluster": "a", "split": split(&EVEN), "sticky_header": SUBJECT },
            "skewed": { "cluster": "zeta", "split": split(&SKEWED), "sticky_header": SUBJECT },
        },
    }))
    .await;
    let proxy = router.proxy_addr;
    let client = HttpClient::http1();

    for (route, weights) in [("ranker", &EVEN), ("skewed", &SKEWED)] {
        for i in 0..REPEATED {
            let subject = format!("user-{i}");
            let expected = expected_cluster(route, weights, &subject);
            for n in 0..3 {
                assert_eq!(
                    served_for(&client, proxy, route, Some(&subject)).await,
                    expected,
                    "{route}: subject {subject}, send {n}"
                );
            }
        }
    }

    let mut loops = JoinSet::new();
    for l in 0..LOOPS {
        loops.spawn(async move {
            let client = HttpClient::http1();
            let mut to_a = 0usize;
            for i in (l..SUBJECTS).step_by(LOOPS) {
                let subject = format!("subject-{i}");
                let served = served_for(&client, proxy, "ranker", Some(&subject)).await;
                assert_eq!(
                    served,
                    expected_cluster("ranker", &EVEN, &subject),
                    "subject {subject}"
                );
                to_a += usize::from(served == "a");
            }
            to_a
        });
    }
    let mut to_a = 0;
    while let Some(done) = within("the subject loops", 10 * DEADLINE, loops.join_next()).await {
        to_a += done.expect("a subject loop failed");
    }
    // 10,000 fair coin flips: sd 50, so ±4 sd is ±200. Every subject was checked against
    // the allocation function above, so this only holds if the function spreads well.
    let half = SUBJECTS / 2;
    assert!(
        (half - 200..=half + 200).contains(&to_a),
        "{to_a} of {SUBJECTS} subjects on a, expected {half} ± 200"
    );

    // Without the header the draw is random: both clusters answer (all 100 on one side has
    // probability 2^-99).
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        *seen
            .entry(served_for(&client, proxy, "ranker", None).await)
            .or_default() += 1;
    }
    assert!(
        seen.get("a").is_some_and(|&n| n > 0) && seen.get("b").is_some_and(|&n| n > 0),
        "{seen:?}"
    );
}

// === validation ===

/// A rule set with clusters `a` and `b` and route `k` to `a` with the fields of `route`
/// added.
fn route_rules(route: Value) -> Value {
    route_k_rules(&["a", "b"], &route)
}

#[tokio::test]
async fn the_router_refuses_retry_attempts_outside_1_to_10() {
    let _trace = trace_init();
    for attempts in [0, 11] {
        refused_naming(
            route_rules(json!({ "retry": { "attempts": attempts } })),
            r#"$.routes["k"].retry.attempts"#,
            &["attempts"],
        )
        .await;
    }
}

#[tokio::test]
async fn the_router_refuses_a_replay_buffer_over_1_gib_and_accepts_1_gib() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "retry": { "replay_buffer_bytes": 1_073_741_825_u64 } })),
        r#"$.routes["k"].retry.replay_buffer_bytes"#,
        &["replay_buffer_bytes"],
    )
    .await;
    let router = RouterProcess::start(&route_rules(
        json!({ "retry": { "replay_buffer_bytes": 1_073_741_824_u64 } }),
    ))
    .await;
    let config = router.admin_json("/config").await;
    assert!(config["generation"].is_u64(), "{config}");
}

#[tokio::test]
async fn the_router_refuses_an_unknown_retry_condition() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "retry": { "on": ["reset", "sometimes"] } })),
        r#"$.routes["k"].retry.on"#,
        &["sometimes"],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_a_sticky_header_with_neither_a_split_nor_a_mirror_to_act_on() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "sticky_header": SUBJECT })),
        r#"$.routes["k"].sticky_header"#,
        &[],
    )
    .await;
}
