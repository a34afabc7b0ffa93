//! Upstream TLS and mTLS per cluster (DESIGN §11 `tls`, §12), through the real router:
//! ALPN per protocol (`http1`, `http2`, `auto`), server names, client certificates, the 502
//! `upstream_tls_failed` of a certificate problem and its log line, rule sets whose files
//! cannot be loaded, health checks over TLS, and pools that follow a changed `tls` block.
//!
//! Certificates come from [`Pki`] (a CA made at run time); the upstream is
//! [`TlsUpstream`], which answers with what it saw of the connection.

use std::path::Path;

use http::Version;
use integration_tests::pki::Pki;
use integration_tests::tls_upstream::{TlsListening, TlsUpstream};
use integration_tests::{DEADLINE, HttpClient, RouterProcess, trace_init, wait_until, within};
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{CLIENT_VERSIONS, expect_router_error, get, keyed_call, wait_for_endpoint};

/// A rule set with route `k` to cluster `secure`: `endpoints` over `protocol`, with `tls`
/// (and the fields of `extra`).
fn tls_rules(endpoints: &[String], protocol: &str, tls: Value, extra: &Value) -> Value {
    let mut cluster = json!({ "endpoints": endpoints, "protocol": protocol, "tls": tls });
    if let (Some(c), Some(e)) = (cluster.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({
        "clusters": { "secure": cluster },
        "routes": { "k": { "cluster": "secure" } },
    })
}

/// `{"ca_file": ...}` of `pki`.
fn trusting(pki: &Pki) -> Value {
    json!({ "ca_file": path(&pki.ca_file) })
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_owned()
}

/// `GET /seen` with key `k` from a `version` client: 200 and what the upstream saw.
async fn seen(router: &RouterProcess, version: Version) -> Value {
    let resp = get(
        &HttpClient::for_version(version),
        router.proxy_addr,
        "/seen",
        "k",
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "{version:?} client: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

/// Every answer of `router` for key `k` is 502 `upstream_tls_failed`, for both client
/// versions.
async fn expect_tls_failed(router: &RouterProcess) {
    for version in CLIENT_VERSIONS {
        let resp = get(
            &HttpClient::for_version(version),
            router.proxy_addr,
            "/seen",
            "k",
        )
        .await;
        expect_router_error(&resp, 502, "upstream_tls_failed");
    }
}

/// Waits until the router's log has the warn line about cluster `secure` with one of
/// `reasons` in it.
async fn expect_logged(router: &RouterProcess, reasons: &[&str]) {
    wait_until(
        &format!("the router logs the TLS failure of cluster secure ({reasons:?})"),
        DEADLINE,
        || async {
            without_colours(&router.output()).lines().any(|line| {
                line.contains("upstream TLS failed")
                    && line.contains("cluster=secure")
                    && reasons.iter().any(|reason| line.contains(reason))
            })
        },
    )
    .await;
}

/// `text` without the ANSI colour sequences (`ESC [ ... m`) of the router's log.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for end in chars.by_ref() {
                if end == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn upstream(pki: &Pki) -> TlsListening {
    TlsUpstream::new(&pki.server("model")).start().await
}

#[tokio::test]
async fn http1_over_tls_offers_http1_and_checks_an_ip_endpoint_by_its_ip() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let router = RouterProcess::start(&tls_rules(
        &[model.endpoint()],
        "http1",
        trusting(&pki),
        &json!({}),
    ))
    .await;
    for version in CLIENT_VERSIONS {
        for _ in 0..3 {
            let seen = seen(&router, version).await;
            assert_eq!(seen["alpn"], "http/1.1", "{seen}");
            assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
            // The server name is the endpoint's IP address: checked, and never sent as SNI.
            assert_eq!(seen["sni"], Value::Null, "{seen}");
            assert_eq!(seen["client_cn"], Value::Null, "{seen}");
        }
    }
    assert_eq!(model.requests(), 6);
    assert!(
        model.handshakes() < 6,
        "pooled TLS connections are reused: {} handshakes",
        model.handshakes()
    );
}

#[tokio::test]
async fn http2_over_tls_negotiates_h2_and_sends_the_server_name() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let tls = json!({ "ca_file": path(&pki.ca_file), "server_name": "localhost" });
    let router =
        RouterProcess::start(&tls_rules(&[model.endpoint()], "http2", tls, &json!({}))).await;
    for version in CLIENT_VERSIONS {
        let seen = seen(&router, version).await;
        assert_eq!(seen["alpn"], "h2", "{seen}");
        assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
        assert_eq!(seen["sni"], "localhost", "{seen}");
    }
}

#[tokio::test]
async fn grpc_over_tls_reaches_the_endpoint_and_its_grpc_health_check_passes() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let grpc = TlsUpstream::new(&pki.server("grpc"))
        .alpn(&["h2"])
        .start_grpc_health()
        .await;
    let extra =
        json!({ "health_check": { "grpc_service": "", "interval_ms": 100, "timeout_ms": 90 } });
    let router = RouterProcess::start(&tls_rules(
        &[grpc.endpoint()],
        "http2",
        trusting(&pki),
        &extra,
    ))
    .await;
    wait_for_endpoint(&router, "secure", &grpc.endpoint(), "healthy", |e| {
        e["health"] == "healthy"
    })
    .await;
    let channel = within(
        "connecting a tonic client to the router",
        DEADLINE,
        tonic::transport::Endpoint::from_shared(router.proxy_url(""))
            .expect("a valid URL")
            .connect(),
    )
    .await
    .expect("connect to the router over h2c");
    let mut client = HealthClient::new(channel);
    let answer = within(
        "a gRPC health check through the router",
        DEADLINE,
        client.check(keyed_call(
            HealthCheckRequest {
                service: String::new(),
            },
            "k",
        )),
    )
    .await
    .expect("the TLS gRPC upstream answers through the router");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn auto_over_tls_speaks_the_version_the_endpoint_picks() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let h2_only = TlsUpstream::new(&pki.server("h2"))
        .alpn(&["h2"])
        .start()
        .await;
    let h1_only = TlsUpstream::new(&pki.server("h1"))
        .alpn(&["http/1.1"])
        .start()
        .await;
    let rules =
        |model: &TlsListening| tls_rules(&[model.endpoint()], "auto", trusting(&pki), &json!({}));
    let to_h2 = RouterProcess::start(&rules(&h2_only)).await;
    let to_h1 = RouterProcess::start(&rules(&h1_only)).await;
    for version in CLIENT_VERSIONS {
        // Twice: the first opens the connection, the second goes over the pooled one.
        for _ in 0..2 {
            let at_h2 = seen(&to_h2, version).await;
            assert_eq!(
                (&at_h2["alpn"], &at_h2["version"]),
                (&json!("h2"), &json!("HTTP/2.0")),
                "{version:?} client: {at_h2}"
            );
            let at_h1 = seen(&to_h1, version).await;
            assert_eq!(
                (&at_h1["alpn"], &at_h1["version"]),
                (&json!("http/1.1"), &json!("HTTP/1.1")),
                "{version:?} client: {at_h1}"
            );
        }
    }
}

#[tokio::test]
async fn mtls_presents_the_client_certificate() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let client = pki.client("router-client");
    let model = TlsUpstream::new(&pki.server("model"))
        .require_client_cert(&pki.ca_file)
        .start()
        .await;
    let tls = json!({
        "ca_file": path(&pki.ca_file),
        "cert_file": path(&client.cert),
        "key_file": path(&client.key),
    });
    for protocol in ["http1", "http2"] {
        let router = RouterProcess::start(&tls_rules(
            &[model.endpoint()],
            protocol,
            tls.clone(),
            &json!({}),
        ))
        .await;
        for version in CLIENT_VERSIONS {
            let seen = seen(&router, version).await;
            assert_eq!(seen["client_cn"], "router-client", "{protocol}: {seen}");
        }
    }
    assert_eq!(model.handshake_failures(), Vec::<String>::new());
}

#[tokio::test]
async fn an_endpoint_requiring_a_client_certificate_refuses_the_router_without_one() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = TlsUpstream::new(&pki.server("model"))
        .require_client_cert(&pki.ca_file)
        .start()
        .await;
    for protocol in ["http1", "http2"] {
        let router = RouterProcess::start(&tls_rules(
            &[model.endpoint()],
            protocol,
            trusting(&pki),
            &json!({}),
        ))
        .await;
        expect_tls_failed(&router).await;
        // The refusal's alert, or (when the endpoint's reset overtakes it) the request for
        // a certificate the router had none to answer.
        expect_logged(
            &router,
            &["CertificateRequired", "asked for a client certificate"],
        )
        .await;
    }
    assert_eq!(model.requests(), 0, "nothing reached the endpoint");
    let failures = model.handshake_failures();
    assert!(
        !failures.is_empty() && failures.iter().all(|f| f.contains("certificate")),
        "the endpoint refused for want of a certificate: {failures:?}"
    );
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_502_upstream_tls_failed_and_logged() {
    let _trace = trace_init();
    let trusted = Pki::new("trusted");
    let other = Pki::new("other");
    let model = upstream(&other).await;
    for protocol in ["http1", "http2", "auto"] {
        let router = RouterProcess::start(&tls_rules(
            &[model.endpoint()],
            protocol,
            trusting(&trusted),
            &json!({}),
        ))
        .await;
        expect_tls_failed(&router).await;
        expect_logged(&router, &["UnknownIssuer"]).await;
    }
    assert_eq!(model.requests(), 0);
}

#[tokio::test]
async fn a_server_name_the_certificate_is_not_valid_for_is_502_upstream_tls_failed() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let tls = json!({ "ca_file": path(&pki.ca_file), "server_name": "other.internal" });
    let router =
        RouterProcess::start(&tls_rules(&[model.endpoint()], "http1", tls, &json!({}))).await;
    expect_tls_failed(&router).await;
    expect_logged(&router, &["not valid for name \"other.internal\""]).await;
    assert_eq!(model.requests(), 0);
}

#[tokio::test]
async fn a_failed_handshake_moves_the_request_to_another_endpoint() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let other = Pki::new("other");
    let good = upstream(&pki).await;
    let bad = upstream(&other).await;
    let router = RouterProcess::start(&tls_rules(
        &[bad.endpoint(), good.endpoint()],
        "http1",
        trusting(&pki),
        &json!({}),
    ))
    .await;
    for _ in 0..4 {
        seen(&router, Version::HTTP_11).await;
    }
    assert_eq!(good.requests(), 4);
    assert!(
        !bad.handshake_failures().is_empty(),
        "round robin tried the untrusted endpoint"
    );
}

#[tokio::test]
async fn a_rule_set_whose_ca_file_is_missing_is_refused_at_startup() {
    let _trace = trace_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = path(&dir.path().join("missing-ca.pem"));
    let rules = tls_rules(
        &["127.0.0.1:1".to_owned()],
        "http1",
        json!({ "ca_file": missing }),
        &json!({}),
    );
    let failed = RouterProcess::start_expecting_failure(&rules).await;
    assert_eq!(failed.status.code(), Some(64), "stderr:\n{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains(r#"$.clusters["secure"].tls.ca_file"#)
            && failed.stderr.contains(&missing),
        "stderr names the cluster and the file:\n{}",
        failed.stderr
    );
}

#[tokio::test]
async fn a_reload_whose_ca_file_is_missing_keeps_the_table_in_force() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let good = tls_rules(&[model.endpoint()], "http1", trusting(&pki), &json!({}));
    let router = RouterProcess::start(&good).await;
    seen(&router, Version::HTTP_11).await;
    let missing = path(&pki.dir().join("missing-ca.pem"));
    let bad = tls_rules(
        &[model.endpoint()],
        "http1",
        json!({ "ca_file": missing }),
        &json!({ "request_timeout_ms": 5000 }),
    );
    router.rewrite_config(&bad);
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "error")], |v| {
            v >= 1.0
        })
        .await;
    assert!(
        router.output().contains(&missing),
        "the log names the file:\n{}",
        router.output()
    );
    let config = router.admin_json("/config").await;
    assert_eq!(config["generation"], 1, "{config}");
    seen(&router, Version::HTTP_11).await;
}

#[tokio::test]
async fn a_push_whose_ca_file_is_missing_is_refused_and_the_table_stays() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let router = RouterProcess::start(&tls_rules(
        &[model.endpoint()],
        "http1",
        trusting(&pki),
        &json!({}),
    ))
    .await;
    let missing = path(&pki.dir().join("missing-ca.pem"));
    let bad = tls_rules(
        &[model.endpoint()],
        "http1",
        json!({ "ca_file": missing }),
        &json!({}),
    );
    let resp = router.admin_put_json("/config", &bad).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let problems = resp.json()["error"]["problems"].to_string();
    assert!(
        problems.contains(r#"$.clusters[\"secure\"].tls.ca_file"#) && problems.contains(&missing),
        "the problem names the cluster and the file: {problems}"
    );
    let config = router.admin_json("/config").await;
    assert_eq!(config["generation"], 1, "{config}");
    seen(&router, Version::HTTP_11).await;
}

#[tokio::test]
async fn a_health_checked_tls_cluster_is_probed_over_tls() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let check = json!({ "health_check": {
        "http_path": "/healthz", "interval_ms": 100, "timeout_ms": 90,
        "unhealthy_threshold": 1, "healthy_threshold": 1
    } });
    for protocol in ["http1", "http2", "auto"] {
        let router = RouterProcess::start(&tls_rules(
            &[model.endpoint()],
            protocol,
            trusting(&pki),
            &check,
        ))
        .await;
        wait_for_endpoint(&router, "secure", &model.endpoint(), "healthy", |e| {
            e["health"] == "healthy"
        })
        .await;
        seen(&router, Version::HTTP_11).await;
    }
    assert!(model.health_probes() > 0);
    // The probes read the answer: a failing one takes the endpoint out.
    model.set_health(503);
    let router = RouterProcess::start(&tls_rules(
        &[model.endpoint()],
        "http1",
        trusting(&pki),
        &check,
    ))
    .await;
    wait_for_endpoint(&router, "secure", &model.endpoint(), "unhealthy", |e| {
        e["health"] == "unhealthy"
    })
    .await;
}

#[tokio::test]
async fn a_changed_tls_block_replaces_pooled_connections_and_an_unchanged_one_keeps_them() {
    let _trace = trace_init();
    let pki = Pki::new("upstream");
    let model = upstream(&pki).await;
    let named = json!({ "ca_file": path(&pki.ca_file), "server_name": "localhost" });
    let router = RouterProcess::start(&tls_rules(
        &[model.endpoint()],
        "http1",
        named.clone(),
        &json!({}),
    ))
    .await;
    let client = HttpClient::http1();
    let fetch_seen = || async {
        let resp = get(&client, router.proxy_addr, "/seen", "k").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    };
    assert_eq!(fetch_seen().await["sni"], "localhost");
    let handshakes = model.handshakes();

    // Another field changes, the tls block does not: the pooled connection is used.
    router.rewrite_config(&tls_rules(
        &[model.endpoint()],
        "http1",
        named,
        &json!({ "request_timeout_ms": 5000 }),
    ));
    router.wait_for_generation(2).await;
    assert_eq!(fetch_seen().await["sni"], "localhost");
    assert_eq!(model.handshakes(), handshakes, "the connection was kept");

    // The server name changes: a new connection checks the new one (an IP: no SNI).
    router.rewrite_config(&tls_rules(
        &[model.endpoint()],
        "http1",
        trusting(&pki),
        &json!({}),
    ));
    router.wait_for_generation(3).await;
    assert_eq!(fetch_seen().await["sni"], Value::Null);
    assert!(model.handshakes() > handshakes);
}
