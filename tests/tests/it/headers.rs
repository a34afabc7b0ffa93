//! Header rewriting: hop-by-hop headers are dropped, `x-forwarded-for` gets the client IP
//! appended, `x-request-id` is generated when absent and kept when present, everything else
//! is forwarded as is.

use http::Method;
use integration_tests::{FakeModel, HttpClient, RouterProcess, client, trace_init};
use serde_json::Value;

use crate::support::{CLIENT_VERSIONS, assert_status, fetch, h1_h2_router, keyed, seen};

/// Asserts that the upstream behind `key` did not see header `name`.
fn assert_not_forwarded(got: &Value, name: &str, key: &str) {
    assert!(
        seen(got, name).is_empty(),
        "{name} reached the {key} upstream: {}",
        got["headers"]
    );
}

async fn forward(
    router: &RouterProcess,
    client: &HttpClient,
    key: &str,
    headers: &[(&str, &str)],
) -> Value {
    let mut req = keyed(Method::GET, router.proxy_addr, "/headers", key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = fetch(client, req.body(client::empty()).unwrap()).await;
    assert_status(&resp, 200);
    resp.json()
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    // Only HTTP/1.1 can carry connection-specific headers; HTTP/2 forbids them on the wire.
    let client = HttpClient::http1();
    for key in ["h1", "h2"] {
        let got = forward(
            &router,
            &client,
            key,
            &[
                ("connection", "keep-alive, x-named-in-connection"),
                ("x-named-in-connection", "must go"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("proxy-authenticate", "Basic"),
                ("te", "gzip"),
                ("x-keep-me", "kept"),
            ],
        )
        .await;
        for gone in [
            "connection",
            "x-named-in-connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "upgrade",
        ] {
            assert_not_forwarded(&got, gone, key);
        }
        // A GET without a body has no framing to carry over.
        assert_not_forwarded(&got, "transfer-encoding", key);
        assert_eq!(seen(&got, "x-keep-me"), ["kept"]);
    }
}

#[tokio::test]
async fn an_upgrade_header_is_not_forwarded() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let client = HttpClient::http1();
    for key in ["h1", "h2"] {
        let got = forward(
            &router,
            &client,
            key,
            &[("upgrade", "websocket"), ("x-keep-me", "kept")],
        )
        .await;
        assert_not_forwarded(&got, "upgrade", key);
        assert_eq!(seen(&got, "x-keep-me"), ["kept"]);
    }
}

#[tokio::test]
async fn te_trailers_is_forwarded() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for key in ["h1", "h2"] {
            let got = forward(&router, &client, key, &[("te", "trailers")]).await;
            assert_eq!(
                seen(&got, "te"),
                ["trailers"],
                "{version:?} client, {key} upstream: {}",
                got["headers"]
            );
        }
    }
}

#[tokio::test]
async fn x_forwarded_for_gets_the_client_ip_appended() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for key in ["h1", "h2"] {
            let fresh = forward(&router, &client, key, &[]).await;
            assert_eq!(
                seen(&fresh, "x-forwarded-for"),
                ["127.0.0.1"],
                "{version:?} {key}"
            );

            let chained = forward(&router, &client, key, &[("x-forwarded-for", "10.1.2.3")]).await;
            let values = seen(&chained, "x-forwarded-for");
            assert_eq!(values.len(), 1, "one comma-separated value: {values:?}");
            let hops: Vec<&str> = values[0].split(',').map(str::trim).collect();
            assert_eq!(hops, ["10.1.2.3", "127.0.0.1"], "{version:?} {key}");
        }
    }
}

#[tokio::test]
async fn x_request_id_is_generated_when_absent_and_kept_when_present() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let first = seen(&forward(&router, &client, "h1", &[]).await, "x-request-id");
        let second = seen(&forward(&router, &client, "h2", &[]).await, "x-request-id");
        assert_eq!(first.len(), 1, "an id is generated: {first:?}");
        assert_eq!(second.len(), 1, "an id is generated: {second:?}");
        assert!(!first[0].is_empty());
        assert_ne!(first, second, "each request gets its own id");

        let kept = forward(&router, &client, "h1", &[("x-request-id", "req-42")]).await;
        assert_eq!(seen(&kept, "x-request-id"), ["req-42"], "{version:?}");
    }
}

#[tokio::test]
async fn other_headers_are_forwarded_as_is() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for key in ["h1", "h2"] {
            let got = forward(
                &router,
                &client,
                key,
                &[
                    ("authorization", "Bearer secret-token"),
                    ("x-multi", "one"),
                    ("x-multi", "two"),
                    ("traceparent", traceparent),
                    ("x-tenant-id", "tenant-a"),
                    ("user-agent", "integration-tests/1"),
                ],
            )
            .await;
            let what = format!("{version:?} client, {key} upstream: {}", got["headers"]);
            assert_eq!(
                seen(&got, "authorization"),
                ["Bearer secret-token"],
                "{what}"
            );
            assert_eq!(seen(&got, "x-multi"), ["one", "two"], "{what}");
            assert_eq!(seen(&got, "traceparent"), [traceparent], "{what}");
            assert_eq!(seen(&got, "x-tenant-id"), ["tenant-a"], "{what}");
            assert_eq!(seen(&got, "user-agent"), ["integration-tests/1"], "{what}");
            assert_eq!(seen(&got, "x-routing-key"), [key], "{what}");
        }
    }
}

#[tokio::test]
async fn x_forwarded_for_keeps_every_hop_when_sent_as_several_lines() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let got = forward(
            &router,
            &client,
            "h1",
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
        )
        .await;
        // Several lines of a list header mean the same as one comma-joined line.
        let hops: Vec<String> = seen(&got, "x-forwarded-for")
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|h| h.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(hops, ["10.0.0.1", "10.0.0.2", "127.0.0.1"], "{version:?}");
    }
}
