//! Load balancing within a cluster, one test per policy, with bounds loose enough that a
//! correct implementation fails with negligible probability; and a dead endpoint costs no
//! request.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::{DeadPort, FakeModel, HttpClient, RouterProcess, trace_init};
use serde_json::json;

use crate::support::{
    CLIENT_VERSIONS, addresses, fakes, fetch, one_cluster_router, served_by, spread,
};

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_alternates_between_two_endpoints_whatever_the_connection() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let router = one_cluster_router(addresses(&f), "round_robin", &json!({})).await;

    // Sequential requests over three clients (a fresh HTTP/1.1 connection each time, a pooled
    // HTTP/1.1 connection and an h2c connection): the order is the cluster's, not a
    // connection's.
    let clients = [
        HttpClient::http1_no_reuse(),
        HttpClient::http1(),
        HttpClient::h2c(),
    ];
    let mut order = Vec::new();
    for i in 0..30 {
        order.push(served_by(&clients[i % 3], router.proxy_addr, "k").await);
    }
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {order:?}");
    }
    assert_eq!((f[0].requests(), f[1].requests()), (15, 15));
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let _trace = trace_init();
    let f = fakes(&["light", "heavy"]).await;
    let endpoints = vec![
        json!({ "address": f[0].endpoint(), "weight": 1 }),
        json!({ "address": f[1].endpoint(), "weight": 3 }),
    ];
    let router = one_cluster_router(endpoints, "weighted_round_robin", &json!({})).await;

    let counts = spread(&HttpClient::http1(), router.proxy_addr, "k", 400).await;
    // Exactly 100:300 for a smooth weighted round robin; allow a little slack.
    let heavy = count(&counts, "heavy");
    assert!((280..=320).contains(&heavy), "1:3 weights: {counts:?}");
    assert_eq!(count(&counts, "light") + heavy, 400);
}

#[tokio::test]
async fn random_spreads_requests_over_every_endpoint() {
    let _trace = trace_init();
    let f = fakes(&["a", "b", "c"]).await;
    let router = one_cluster_router(addresses(&f), "random", &json!({})).await;

    let counts = spread(&HttpClient::http1(), router.proxy_addr, "k", 300).await;
    // Binomial(300, 1/3): mean 100, sd 8.2; 50 is six sd below.
    for name in ["a", "b", "c"] {
        assert!(
            count(&counts, name) >= 50,
            "uniform over 3 endpoints: {counts:?}"
        );
    }
}

#[tokio::test]
async fn least_request_spreads_sequential_requests_over_every_endpoint() {
    let _trace = trace_init();
    let f = fakes(&["a", "b", "c"]).await;
    let router = one_cluster_router(addresses(&f), "least_request", &json!({})).await;

    // With every endpoint idle, the two choices are a random pair and the pick among equals is
    // random too: every endpoint gets a fair share (a pick of "the first of the pair" would
    // starve one of the three).
    let counts = spread(&HttpClient::http1(), router.proxy_addr, "k", 300).await;
    for name in ["a", "b", "c"] {
        assert!(
            count(&counts, name) >= 50,
            "spread over 3 endpoints: {counts:?}"
        );
    }
}

/// Sends `GET /` with `x-session-id: value`; returns the fake that answered.
async fn served_for_session(client: &HttpClient, router: &RouterProcess, value: &str) -> String {
    let req = client::request(Method::GET, router.proxy_addr, "/")
        .header(ROUTING_KEY, "k")
        .header("x-session-id", value)
        .body(client::empty())
        .unwrap();
    let resp = fetch(client, req).await;
    assert_eq!(resp.status, 200);
    resp.header(SERVER_HEADER).expect("a fake answered")
}

async fn hash_policy_is_sticky_and_spreads(policy: &str) {
    let _trace = trace_init();
    let f = fakes(&["a", "b", "c"]).await;
    let router = one_cluster_router(
        addresses(&f),
        policy,
        &json!({ "hash_header": "x-session-id" }),
    )
    .await;

    // Sticky: the same value lands on the same endpoint, over either protocol.
    for session in 0..20 {
        let value = format!("session-{session}");
        let mut landed = BTreeSet::new();
        for version in CLIENT_VERSIONS {
            let client = HttpClient::for_version(version);
            for _ in 0..3 {
                landed.insert(served_for_session(&client, &router, &value).await);
            }
        }
        assert_eq!(
            landed.len(),
            1,
            "{policy}: {value} always lands on one endpoint: {landed:?}"
        );
    }

    // Spread: many values cover every endpoint with a fair share.
    let client = HttpClient::http1();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for session in 0..300 {
        let name = served_for_session(&client, &router, &format!("user-{session}")).await;
        *counts.entry(name).or_default() += 1;
    }
    for name in ["a", "b", "c"] {
        assert!(
            count(&counts, name) >= 30,
            "{policy}: 300 values spread over 3 endpoints: {counts:?}"
        );
    }
}

#[tokio::test]
async fn ring_hash_is_sticky_per_header_value_and_spreads_many_values() {
    hash_policy_is_sticky_and_spreads("ring_hash").await;
}

#[tokio::test]
async fn maglev_is_sticky_per_header_value_and_spreads_many_values() {
    hash_policy_is_sticky_and_spreads("maglev").await;
}

#[tokio::test]
async fn one_dead_endpoint_of_two_costs_no_request() {
    let _trace = trace_init();
    let alive = FakeModel::new().name("alive").start().await;
    let dead = DeadPort::new();
    for policy in ["round_robin", "random", "least_request"] {
        let router = one_cluster_router(
            vec![json!(alive.endpoint()), json!(dead.addr().to_string())],
            policy,
            &json!({}),
        )
        .await;
        for version in CLIENT_VERSIONS {
            let client = HttpClient::for_version(version);
            for _ in 0..20 {
                assert_eq!(
                    served_by(&client, router.proxy_addr, "k").await,
                    "alive",
                    "{policy}"
                );
            }
        }
    }
    assert_eq!(alive.requests(), 3 * 2 * 20);
}

#[tokio::test]
async fn a_hash_policy_with_a_dead_endpoint_costs_no_request() {
    let _trace = trace_init();
    let alive = FakeModel::new().name("alive").start().await;
    let dead = DeadPort::new();
    let router = one_cluster_router(
        vec![json!(alive.endpoint()), json!(dead.addr().to_string())],
        "ring_hash",
        &json!({ "hash_header": "x-session-id" }),
    )
    .await;
    let client = HttpClient::http1();
    for session in 0..40 {
        assert_eq!(
            served_for_session(&client, &router, &format!("user-{session}")).await,
            "alive"
        );
    }
}

#[tokio::test]
async fn least_request_sends_each_new_request_to_the_less_loaded_endpoint() {
    let _trace = trace_init();
    let f = fakes(&["a", "b"]).await;
    let router = one_cluster_router(addresses(&f), "least_request", &json!({})).await;

    // Held requests (SSE streams not yet released) stay active on their endpoint. With two
    // endpoints the two choices are both endpoints, so every new request goes to the one with
    // fewer in flight, and the load stays even.
    let client = HttpClient::h2c();
    let mut held = Vec::new();
    for i in 0..10 {
        let req = client::request(Method::GET, router.proxy_addr, "/sse?chunks=1")
            .header(ROUTING_KEY, "k")
            .body(client::empty())
            .unwrap();
        let resp =
            integration_tests::within("an SSE head", integration_tests::DEADLINE, client.send(req))
                .await
                .unwrap();
        held.push(resp);
        let (a, b) = (f[0].sse_started(), f[1].sse_started());
        assert!(
            a.abs_diff(b) <= 1,
            "after {} held requests the endpoints hold {a} and {b}",
            i + 1
        );
    }
    assert_eq!((f[0].sse_started(), f[1].sse_started()), (5, 5));
    for fake in &f {
        fake.release_sse(5);
    }
    for resp in held {
        let body = http_body_util::BodyExt::collect(resp.into_body());
        integration_tests::within("an SSE body", integration_tests::DEADLINE, body)
            .await
            .unwrap();
    }
}
