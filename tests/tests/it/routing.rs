//! Routing by `x-routing-key`: the right cluster, the path untouched, the upstream protocol
//! per cluster, weighted splits and the fallback cluster.

use http::{Method, Version};
use integration_tests::{DeadPort, FakeModel, HttpClient, Listening, RouterProcess, trace_init};
use serde_json::json;

use crate::support::{CLIENT_VERSIONS, fetch, get, keyed, served_by, simple_rules, spread};

#[tokio::test]
async fn requests_are_routed_to_the_cluster_of_their_routing_key() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&simple_rules(&[
        ("a", vec![a.endpoint()]),
        ("b", vec![b.endpoint()]),
    ]))
    .await;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for _ in 0..3 {
            assert_eq!(served_by(&client, router.proxy_addr, "a").await, "a");
            assert_eq!(served_by(&client, router.proxy_addr, "b").await, "b");
        }
    }
    assert_eq!((a.requests(), b.requests()), (6, 6));
}

#[tokio::test]
async fn path_and_query_are_forwarded_unchanged() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start(&simple_rules(&[("a", vec![a.endpoint()])])).await;
    let path = "/headers?model=ranker&x=1%202&flag&empty=";

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let req = keyed(method.clone(), router.proxy_addr, path, "a")
                .body(integration_tests::client::empty())
                .unwrap();
            let seen = fetch(&client, req).await.json();
            assert_eq!(seen["path"], path, "{version:?} {method}");
            assert_eq!(seen["method"], method.as_str(), "{version:?}");
        }
    }
}

/// Which HTTP version the upstream saw for each (cluster protocol, client version).
#[tokio::test]
async fn each_cluster_is_spoken_to_in_its_configured_protocol() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let endpoints = vec![fake.endpoint()];
    let router = RouterProcess::start(&json!({
        "clusters": {
            "h1": { "endpoints": endpoints, "protocol": "http1" },
            "h2": { "endpoints": endpoints, "protocol": "http2" },
            "auto": { "endpoints": endpoints, "protocol": "auto" },
            "default": { "endpoints": endpoints },
        },
        "routes": {
            "h1": { "cluster": "h1" },
            "h2": { "cluster": "h2" },
            "auto": { "cluster": "auto" },
            "default": { "cluster": "default" },
        },
    }))
    .await;

    for client_version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(client_version);
        for (key, expected) in [
            ("h1", Version::HTTP_11),
            ("h2", Version::HTTP_2),
            ("auto", client_version),
            ("default", Version::HTTP_11),
        ] {
            let seen = get(&client, router.proxy_addr, "/headers", key)
                .await
                .json();
            assert_eq!(
                seen["version"],
                format!("{expected:?}"),
                "cluster {key:?} with a {client_version:?} client"
            );
        }
    }
}

/// Fakes named `a` and `b` behind a router whose route `canary` splits between clusters `a`
/// and `b` with the weights `weight_a` and `weight_b`.
async fn split_router(weight_a: u32, weight_b: u32) -> (Listening, Listening, RouterProcess) {
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "a": { "endpoints": [a.endpoint()] },
            "b": { "endpoints": [b.endpoint()] },
        },
        "routes": {
            "canary": { "cluster": "a", "split": { "a": weight_a, "b": weight_b } },
        },
    }))
    .await;
    (a, b, router)
}

#[tokio::test]
async fn a_split_route_sends_traffic_to_every_cluster_of_the_split() {
    let _trace = trace_init();
    let (_a, _b, router) = split_router(50, 50).await;

    let counts = spread(&HttpClient::http1(), router.proxy_addr, "canary", 200).await;
    // Binomial(200, 0.5): fewer than 40 on either side has a probability below 1e-17.
    assert!(
        counts.get("a").copied().unwrap_or(0) >= 40 && counts.get("b").copied().unwrap_or(0) >= 40,
        "a 50/50 split reaches both clusters: {counts:?}"
    );
}

#[tokio::test]
async fn a_split_route_follows_its_weights() {
    let _trace = trace_init();
    let (_a, _b, router) = split_router(90, 10).await;

    let counts = spread(&HttpClient::http1(), router.proxy_addr, "canary", 400).await;
    let b_share = counts.get("b").copied().unwrap_or(0);
    // Binomial(400, 0.1): mean 40, sd 6; [10, 80] is more than 5 sd either side.
    assert!(
        (10..=80).contains(&b_share),
        "a 90/10 split sends about 10% to b: {counts:?}"
    );
}

#[tokio::test]
async fn the_fallback_cluster_serves_when_every_primary_endpoint_refuses() {
    let _trace = trace_init();
    let dead1 = DeadPort::new();
    let dead2 = DeadPort::new();
    let backup = FakeModel::new().name("backup").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "primary": { "endpoints": [dead1.addr().to_string(), dead2.addr().to_string()] },
            "backup": { "endpoints": [backup.endpoint()] },
        },
        "routes": {
            "k": { "cluster": "primary", "fallback": "backup" },
        },
    }))
    .await;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for _ in 0..5 {
            assert_eq!(served_by(&client, router.proxy_addr, "k").await, "backup");
        }
    }
    assert_eq!(backup.requests(), 10);
}

#[tokio::test]
async fn the_fallback_cluster_is_not_used_while_the_primary_answers() {
    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let backup = FakeModel::new().name("backup").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "primary": { "endpoints": [primary.endpoint()] },
            "backup": { "endpoints": [backup.endpoint()] },
        },
        "routes": {
            "k": { "cluster": "primary", "fallback": "backup" },
        },
    }))
    .await;

    let client = HttpClient::http1();
    for _ in 0..5 {
        assert_eq!(served_by(&client, router.proxy_addr, "k").await, "primary");
    }
    assert_eq!(backup.requests(), 0);
}

#[tokio::test]
async fn upstream_statuses_and_bodies_are_passed_through_unchanged() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start(&simple_rules(&[("a", vec![a.endpoint()])])).await;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for code in [201u16, 404, 418, 500] {
            let resp = get(&client, router.proxy_addr, &format!("/status/{code}"), "a").await;
            assert_eq!(resp.status, code, "{version:?}");
            assert_eq!(resp.text(), "a", "the upstream's body, not the router's");
        }
    }
}

#[tokio::test]
async fn a_hundred_concurrent_requests_all_succeed_on_both_protocols() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "h1": { "endpoints": [fake.endpoint()], "protocol": "http1" },
            "h2": { "endpoints": [fake.endpoint()], "protocol": "http2" },
        },
        "routes": { "h1": { "cluster": "h1" }, "h2": { "cluster": "h2" } },
    }))
    .await;

    for client_version in CLIENT_VERSIONS {
        // One client: HTTP/1.1 opens a connection per concurrent request, h2c multiplexes
        // all of them on one connection.
        let client = HttpClient::for_version(client_version);
        for key in ["h1", "h2"] {
            let mut tasks = Vec::new();
            for i in 0..100 {
                let client = client.clone();
                let proxy = router.proxy_addr;
                tasks.push(tokio::spawn(async move {
                    let body = format!("request {i} via {key}");
                    let req = keyed(Method::POST, proxy, "/echo", key)
                        .body(integration_tests::client::full(body.clone()))
                        .unwrap();
                    let resp = fetch(&client, req).await;
                    assert_eq!(resp.status, 200, "{client_version:?} {key} request {i}");
                    assert_eq!(resp.text(), body);
                }));
            }
            for task in tasks {
                task.await.expect("a concurrent request failed");
            }
        }
    }
    assert_eq!(fake.requests(), 400);
}

#[tokio::test]
async fn upstream_connection_close_never_fails_the_next_request() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("f").start().await;
    let router = RouterProcess::start(&simple_rules(&[("f", vec![fake.endpoint()])])).await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for i in 0..50 {
            let resp = get(&client, router.proxy_addr, "/close", "f").await;
            assert_eq!(
                resp.status,
                200,
                "{version:?} request {i}: {:?}",
                resp.text()
            );
            assert_eq!(resp.text(), "f");
        }
    }
    assert!(
        fake.connections() >= 100,
        "the upstream closed after every answer"
    );
}
