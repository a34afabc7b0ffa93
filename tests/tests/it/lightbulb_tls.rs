//! Lightbulb with `--tls-cert FILE --tls-key FILE`: gRPC and HTTP over TLS (ALPN `h2` on
//! gRPC, `h2` and `http/1.1` on HTTP) with plaintext on the same ports unless `--tls-only`;
//! a client that does not trust the certificate fails its handshake and nobody else
//! notices; a replaced certificate is presented to new handshakes while open connections
//! keep working; a router follows a TLS Lightbulb with `--control-plane https://…
//! --control-plane-ca FILE`, and refuses to start on an `https://` URL without a CA.
//!
//! And the secrets: no bearer token, right or wrong, ever shows in Lightbulb's output or in
//! an answer; a token file that others may read is accepted with a warning naming it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Version, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use integration_tests::client::{self, Collected};
use integration_tests::lightbulb::{LightbulbProcess, TlsConnector, next_message};
use integration_tests::pki::{CertFiles, Pki};
use integration_tests::process::{ServiceProcess, write_text_atomically};
use integration_tests::router::router_bin;
use integration_tests::{DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, trace_init};
use integration_tests::{wait_until, within};
use routing_proto::lightbulb::v1 as pb;
use routing_proto::lightbulb::v1::resolver_client::ResolverClient;
use routing_proto::lightbulb::v1::routing_config_client::RoutingConfigClient;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config_store::{OBJECTIVE, rules};

const ALPN_H2: [&[u8]; 1] = [b"h2"];
const ALPN_H2_HTTP1: [&[u8]; 2] = [b"h2", b"http/1.1"];
const ALPN_HTTP1: [&[u8]; 1] = [b"http/1.1"];

/// A TLS connection to `addr` as a client of `localhost`.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a valid server name");
    within(
        "a TLS handshake",
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// The leaf certificate the server presented on `tls`.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
        .into_owned()
}

/// The certificate in a PEM file.
fn leaf(files: &CertFiles) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).expect("a PEM certificate")
}

/// Sends `req` on a new TLS connection to `addr` (HTTP/2 or HTTP/1.1, whichever ALPN
/// agreed on) and reads the answer to the end.
async fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    req: Request<client::Body>,
) -> (Version, Collected) {
    let tls = handshake(addr, config).await.expect("a TLS handshake");
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("an h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .expect("an answer");
    let version = resp.version();
    (version, client::collect(resp).await.expect("a whole body"))
}

/// A request for `https://localhost:PORT{path}`.
fn tls_request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", addr.port()))
}

async fn resolve(channel: tonic::transport::Channel) -> pb::ResolveResponse {
    ResolverClient::new(channel)
        .resolve(pb::ResolveRequest {
            objective: OBJECTIVE.to_owned(),
            subject_id: "user-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect("a resolution")
        .into_inner()
}

/// A temp dir for a store and a token file.
fn store_dir(token: &str, mode: u32) -> (tempfile::TempDir, String, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{token}\n")).expect("write the token file");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let store = dir.path().join("store").display().to_string();
    let tokens = tokens.display().to_string();
    (dir, store, tokens)
}

#[tokio::test]
async fn grpc_clients_trusting_the_ca_resolve_over_tls_and_plaintext_still_works() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let lightbulb = LightbulbProcess::start_tls(&rules("ranker-v1"), &pki.server("lb"), &[]).await;

    let connector = TlsConnector::new(pki.client_config(&ALPN_H2, None));
    let answer = resolve(lightbulb.tls_channel(connector.clone()).await).await;
    assert_eq!(answer.routing_key, "ranker-v1");
    assert_eq!(connector.connections(), 1);

    // The same port still speaks h2c, as before TLS.
    let answer = resolve(lightbulb.channel().await).await;
    assert_eq!(answer.routing_key, "ranker-v1");
    let tls = handshake(lightbulb.grpc_addr, pki.client_config(&ALPN_H2_HTTP1, None))
        .await
        .expect("a TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "gRPC is h2 only"
    );
}

#[tokio::test]
async fn the_http_api_answers_over_tls_with_h2_and_http1() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let (_dir, store, tokens) = store_dir("tls-api-token", 0o600);
    let lightbulb = LightbulbProcess::start_tls(
        &rules("ranker-v1"),
        &pki.server("lb"),
        &["--store", &store, "--api-token-file", &tokens],
    )
    .await;

    for (alpn, expected) in [
        (&ALPN_H2_HTTP1[..], Version::HTTP_2),
        (&ALPN_HTTP1[..], Version::HTTP_11),
    ] {
        let config = pki.client_config(alpn, None);
        let req = tls_request(Method::GET, lightbulb.http_addr, "/v1/config")
            .body(client::empty())
            .expect("a request");
        let (version, resp) = https(lightbulb.http_addr, config.clone(), req).await;
        assert_eq!(version, expected);
        assert_eq!(resp.status, 200, "GET /v1/config over TLS: {}", resp.text());
        assert_eq!(resp.header("etag").as_deref(), Some("\"1\""));
        assert_eq!(resp.json()["objectives"][OBJECTIVE]["default"], "ranker-v1");

        let req = tls_request(Method::POST, lightbulb.http_addr, "/v1/resolve")
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(json!({ "objective": OBJECTIVE }).to_string()))
            .expect("a request");
        let (_, resp) = https(lightbulb.http_addr, config, req).await;
        assert_eq!(
            resp.status,
            200,
            "POST /v1/resolve over TLS: {}",
            resp.text()
        );
        assert_eq!(resp.json()["routingKey"], "ranker-v1");
    }

    // A change over TLS, with the token.
    let next = rules("ranker-v2");
    let req = tls_request(Method::PUT, lightbulb.http_addr, "/v1/config")
        .header(header::AUTHORIZATION, "Bearer tls-api-token")
        .header(header::IF_MATCH, "\"1\"")
        .header(header::CONTENT_TYPE, "application/json")
        .body(client::full(next.to_string()))
        .expect("a request");
    let (_, resp) = https(
        lightbulb.http_addr,
        pki.client_config(&ALPN_HTTP1, None),
        req,
    )
    .await;
    assert_eq!(resp.status, 200, "PUT /v1/config over TLS: {}", resp.text());
    // And plaintext HTTP on the same port sees it.
    assert_eq!(lightbulb.http_get("/healthz").await.status, 200);
    assert_eq!(lightbulb.http_get("/v1/config").await.json()["version"], 2);
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_its_handshake_and_lightbulb_keeps_serving() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let stranger = Pki::new("stranger");
    let lightbulb = LightbulbProcess::start_tls(&rules("ranker-v1"), &pki.server("lb"), &[]).await;

    for addr in [lightbulb.grpc_addr, lightbulb.http_addr] {
        let refused = handshake(addr, stranger.client_config(&ALPN_H2_HTTP1, None)).await;
        let error = refused
            .expect_err("a certificate from an untrusted CA")
            .to_string();
        assert!(error.contains("certificate"), "{error}");
    }
    let refused = lightbulb
        .try_tls_channel(TlsConnector::new(stranger.client_config(&ALPN_H2, None)))
        .await;
    assert!(
        refused.is_err(),
        "a tonic client trusting another CA connected"
    );

    // Everyone else is served, over TLS and in plaintext.
    let connector = TlsConnector::new(pki.client_config(&ALPN_H2, None));
    let answer = resolve(lightbulb.tls_channel(connector).await).await;
    assert_eq!(answer.routing_key, "ranker-v1");
    let req = tls_request(Method::GET, lightbulb.http_addr, "/healthz")
        .body(client::empty())
        .expect("a request");
    let (_, resp) = https(
        lightbulb.http_addr,
        pki.client_config(&ALPN_H2_HTTP1, None),
        req,
    )
    .await;
    assert_eq!(resp.status, 200);
    // The refusals were counted, per port.
    for port in ["grpc", "http"] {
        lightbulb
            .wait_for_metric(
                "lightbulb_tls_handshake_failures_total",
                &[("port", port)],
                |n| n >= 1.0,
            )
            .await;
    }
}

/// Replaces `dst` with `src`'s bytes atomically (temp file, then rename).
fn replace_file(src: &Path, dst: &Path) {
    let text = std::fs::read_to_string(src).expect("read the new file");
    write_text_atomically(dst, &text);
}

#[tokio::test]
async fn a_replaced_certificate_is_presented_to_new_handshakes_and_open_connections_keep_working() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let (first, second) = (pki.server("lb-first"), pki.server("lb-second"));
    // The files Lightbulb reads, replaced in place below.
    let dir = tempfile::tempdir().expect("a temp dir");
    let current = CertFiles {
        cert: dir.path().join("current.pem"),
        key: dir.path().join("current.key"),
    };
    replace_file(&first.cert, &current.cert);
    replace_file(&first.key, &current.key);
    let lightbulb = LightbulbProcess::start_tls(&rules("ranker-v1"), &current, &[]).await;

    let config = pki.client_config(&ALPN_H2_HTTP1, None);
    let before = handshake(lightbulb.grpc_addr, config.clone())
        .await
        .expect("a handshake");
    assert_eq!(presented(&before), leaf(&first));
    let connector = TlsConnector::new(pki.client_config(&ALPN_H2, None));
    let open = lightbulb.tls_channel(connector.clone()).await;
    assert_eq!(resolve(open.clone()).await.routing_key, "ranker-v1");

    replace_file(&second.cert, &current.cert);
    replace_file(&second.key, &current.key);

    let replaced = leaf(&second);
    for addr in [lightbulb.grpc_addr, lightbulb.http_addr] {
        wait_until(
            &format!("a new handshake on {addr} presents the replaced certificate"),
            DEADLINE,
            || {
                let (config, replaced) = (config.clone(), &replaced);
                async move {
                    match handshake(addr, config).await {
                        Ok(tls) => presented(&tls) == *replaced,
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    // The connection opened before the swap still works, and is the same connection.
    assert_eq!(resolve(open).await.routing_key, "ranker-v1");
    assert_eq!(connector.connections(), 1, "the channel had to reconnect");
    assert!(
        lightbulb.output().contains("TLS certificate reloaded"),
        "{}",
        lightbulb.output()
    );
}

#[tokio::test]
async fn tls_only_refuses_plaintext_on_both_ports() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let lightbulb =
        LightbulbProcess::start_tls(&rules("ranker-v1"), &pki.server("lb"), &["--tls-only"]).await;

    let plain = tonic::transport::Endpoint::from_shared(lightbulb.grpc_url())
        .expect("a valid URI")
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => ResolverClient::new(channel)
            .resolve(pb::ResolveRequest {
                objective: OBJECTIVE.to_owned(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a plaintext gRPC call was answered despite --tls-only"
    );
    let plain = HttpClient::http1()
        .send(
            client::request(Method::GET, lightbulb.http_addr, "/healthz")
                .body(client::empty())
                .expect("a request"),
        )
        .await;
    assert!(
        plain.is_err(),
        "a plaintext HTTP request was answered despite --tls-only"
    );

    let connector = TlsConnector::new(pki.client_config(&ALPN_H2, None));
    assert_eq!(
        resolve(lightbulb.tls_channel(connector).await)
            .await
            .routing_key,
        "ranker-v1"
    );
}

#[tokio::test]
async fn sigterm_ends_the_watch_streams_over_tls_and_exits_0() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let mut lightbulb =
        LightbulbProcess::start_tls(&rules("ranker-v1"), &pki.server("lb"), &[]).await;
    let connector = TlsConnector::new(pki.client_config(&ALPN_H2, None));
    let mut stream = RoutingConfigClient::new(lightbulb.tls_channel(connector).await)
        .watch(pb::WatchRequest {
            node_id: "tls-router".to_owned(),
        })
        .await
        .expect("a Watch stream")
        .into_inner();
    let first = next_message("the first snapshot over TLS", &mut stream).await;
    assert!(first.rule_set_json.contains("ranker-v1"), "{first:?}");

    lightbulb.sigterm();
    let ended = within("the Watch stream ends", DEADLINE, stream.message()).await;
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    assert!(
        lightbulb.wait_for_exit(DEADLINE).await.success(),
        "{}",
        lightbulb.output()
    );
}

#[tokio::test]
async fn tls_flags_go_together_and_unusable_files_are_named() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let files = pki.server("lb");
    let text = serde_json::to_string(&rules("ranker-v1")).expect("JSON");
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let missing = pki.dir().join("missing.pem").display().to_string();
    let other_key = pki.server("other").key.display().to_string();
    for (args, named) in [
        (vec!["--tls-cert", cert.as_str()], "--tls-key"),
        (vec!["--tls-key", key.as_str()], "--tls-cert"),
        (vec!["--tls-only"], "--tls-cert"),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            "missing.pem",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "other.key",
        ),
    ] {
        let failed = LightbulbProcess::start_expecting_failure_with_args(&text, &args).await;
        assert_eq!(failed.status.code(), Some(64), "{args:?}: {failed:?}");
        assert!(failed.stderr.contains(named), "{args:?}: {}", failed.stderr);
    }
}

/// Clusters `a` and `b`, route `k` to `key_cluster`.
fn routing_rules(version: u64, key_cluster: &str, a: &Listening, b: &Listening) -> Value {
    json!({
        "version": version,
        "clusters": {
            "a": { "endpoints": [a.endpoint()] },
            "b": { "endpoints": [b.endpoint()] },
        },
        "routes": { "k": { "cluster": key_cluster } },
    })
}

async fn wait_served_by(router: &RouterProcess, key: &str, name: &str) {
    let client = HttpClient::http1();
    wait_until(
        &format!("key {key} is served by {name}"),
        DEADLINE,
        || async {
            let resp = client.get(router.proxy_addr, "/", Some(key)).await;
            resp.status == 200 && resp.text() == name
        },
    )
    .await;
}

#[tokio::test]
async fn a_router_follows_a_tls_lightbulb_with_its_ca() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let lightbulb = LightbulbProcess::start_tls(
        &routing_rules(1, "a", &a, &b),
        &pki.server("lb"),
        &["--tls-only"],
    )
    .await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let ca = pki.ca_file.display().to_string();
    let router = RouterProcess::start_following(
        &[lightbulb.grpc_tls_url()],
        snapshots.path(),
        &["--control-plane-ca", &ca],
    )
    .await;

    wait_served_by(&router, "k", "a").await;
    lightbulb.rewrite_config(&routing_rules(2, "b", &a, &b));
    wait_served_by(&router, "k", "b").await;
    assert_eq!(
        router.admin_json("/readyz").await["control_plane_connected"],
        true
    );
}

#[tokio::test]
async fn a_router_trusting_another_ca_does_not_follow_and_says_why() {
    let _trace = trace_init();
    let pki = Pki::new("lb");
    let stranger = Pki::new("stranger");
    let a = FakeModel::new().name("a").start().await;
    let lightbulb =
        LightbulbProcess::start_tls(&routing_rules(1, "a", &a, &a), &pki.server("lb"), &[]).await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let ca = stranger.ca_file.display().to_string();
    let router = RouterProcess::start_following(
        &[lightbulb.grpc_tls_url()],
        snapshots.path(),
        &["--control-plane-ca", &ca],
    )
    .await;
    wait_until("the router logs the refused certificate", DEADLINE, || {
        std::future::ready(router.output().contains("cannot connect"))
    })
    .await;
    assert!(
        router.output().contains("certificate"),
        "{}",
        router.output()
    );
    assert_eq!(router.admin_get("/readyz").await.status, 503);
}

#[tokio::test]
async fn a_router_given_an_https_control_plane_without_a_ca_exits_64_naming_the_flag() {
    let _trace = trace_init();
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let mut cmd = Command::new(router_bin());
    cmd.args(["--control-plane", "https://127.0.0.1:1", "--snapshot-dir"])
        .arg(snapshots.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (process, mut lines) = ServiceProcess::spawn("router", "the router", cmd);
    let failed = process
        .wait_for_failed_start(&mut lines, |line| line.contains("router listening"))
        .await;
    assert_eq!(failed.status.code(), Some(64), "{failed:?}");
    assert!(
        failed.stderr.contains("--control-plane-ca"),
        "{}",
        failed.stderr
    );
}

/// Everything a secrets test saw: the answers' bodies and headers.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn add(&mut self, what: &str, resp: &Collected) {
        let mut text = format!("{what}: {} {:?} ", resp.status, resp.headers);
        text.push_str(&String::from_utf8_lossy(&resp.body));
        self.0.push(text);
    }

    fn assert_free_of(&self, secrets: &[&str]) {
        for text in &self.0 {
            for secret in secrets {
                assert!(!text.contains(secret), "a token in an answer: {text}");
            }
        }
    }
}

#[tokio::test]
async fn no_token_appears_in_the_logs_or_in_an_answer() {
    let _trace = trace_init();
    const RIGHT: &str = "right-token-7f3a9c1e5b";
    const WRONG: &str = "wrong-token-0d2e4f6a8c";
    let pki = Pki::new("lb");
    let (_dir, store, tokens) = store_dir(RIGHT, 0o600);
    let cert = pki.server("lb");
    let (cert_file, key_file) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let mut lightbulb = LightbulbProcess::start_with_env(
        &rules("ranker-v1"),
        &[
            "--store",
            &store,
            "--api-token-file",
            &tokens,
            "--tls-cert",
            &cert_file,
            "--tls-key",
            &key_file,
        ],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let mut seen = Seen::default();
    let put = |path: &str, authorization: &str, if_match: &str, body: String| {
        client::request(Method::PUT, lightbulb.http_addr, path)
            .header(header::AUTHORIZATION, authorization)
            .header(header::IF_MATCH, if_match)
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(body))
            .expect("a request")
    };
    let next = rules("ranker-v2");

    let wrong = lightbulb
        .http_send(put(
            "/v1/config",
            &format!("Bearer {WRONG}"),
            "\"1\"",
            next.to_string(),
        ))
        .await;
    assert_eq!(wrong.status, 401);
    seen.add("wrong token", &wrong);
    let scheme = lightbulb
        .http_send(put(
            "/v1/config",
            &format!("Basic {RIGHT}"),
            "\"1\"",
            next.to_string(),
        ))
        .await;
    assert_eq!(scheme.status, 401);
    seen.add("right token, wrong scheme", &scheme);
    let half = &RIGHT[..RIGHT.len() - 1];
    let prefix = lightbulb
        .http_send(put(
            "/v1/routes/x",
            &format!("Bearer {half}"),
            "*",
            "{}".to_owned(),
        ))
        .await;
    assert_eq!(prefix.status, 401);
    seen.add("a prefix of the token", &prefix);
    let bad_body = lightbulb
        .http_send(put(
            "/v1/config",
            &format!("Bearer {RIGHT}"),
            "\"1\"",
            "{\"clusters\": ".to_owned(),
        ))
        .await;
    assert_eq!(bad_body.status, 400);
    seen.add("right token, broken body", &bad_body);
    let right = lightbulb
        .http_send(put(
            "/v1/config",
            &format!("Bearer {RIGHT}"),
            "\"1\"",
            next.to_string(),
        ))
        .await;
    assert_eq!(right.status, 200, "{}", right.text());
    seen.add("right token", &right);

    // Over TLS (h2), both tokens.
    for token in [WRONG, RIGHT] {
        let req = tls_request(Method::PUT, lightbulb.http_addr, "/v1/config")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::IF_MATCH, "\"1\"")
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(Bytes::from(next.to_string())))
            .expect("a request");
        let (_, resp) = https(
            lightbulb.http_addr,
            pki.client_config(&ALPN_H2_HTTP1, None),
            req,
        )
        .await;
        assert!(matches!(resp.status.as_u16(), 401 | 409), "{}", resp.text());
        seen.add("over TLS", &resp);
    }
    // gRPC calls carrying a token in their metadata.
    for token in [WRONG, RIGHT] {
        let mut request = tonic::Request::new(pb::ResolveRequest {
            objective: OBJECTIVE.to_owned(),
            ..Default::default()
        });
        let value = format!("Bearer {token}").parse().expect("a metadata value");
        request.metadata_mut().insert("authorization", value);
        let answer = lightbulb.resolver().await.resolve(request).await;
        assert!(answer.is_ok(), "{answer:?}");
    }

    lightbulb.sigterm();
    assert!(lightbulb.wait_for_exit(DEADLINE).await.success());
    let output = lightbulb.output();
    assert!(
        output.contains("rule set changed"),
        "the change is logged: {output}"
    );
    for secret in [RIGHT, WRONG] {
        assert!(
            !output.contains(secret),
            "a token in Lightbulb's output:\n{output}"
        );
    }
    seen.assert_free_of(&[RIGHT, WRONG]);
}

#[tokio::test]
async fn a_token_file_others_can_read_is_accepted_with_a_warning_naming_it() {
    let _trace = trace_init();
    const TOKEN: &str = "loose-token-5e7c9a";
    let (_dir, store, tokens) = store_dir(TOKEN, 0o644);
    let lightbulb = LightbulbProcess::start_with_args(
        &rules("ranker-v1"),
        &["--store", &store, "--api-token-file", &tokens],
    )
    .await;
    wait_until("the warning about the token file", DEADLINE, || {
        std::future::ready(
            lightbulb
                .output()
                .contains("token file is readable by others"),
        )
    })
    .await;
    let output = lightbulb.output();
    let warning = output
        .lines()
        .find(|line| line.contains("token file is readable by others"))
        .expect("the warning line");
    assert!(
        warning.contains(&tokens) && warning.contains("0644"),
        "{warning}"
    );
    assert!(!output.contains(TOKEN), "{output}");

    // The file's token is accepted.
    let next = rules("ranker-v2");
    let req = client::request(Method::PUT, lightbulb.http_addr, "/v1/config")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::IF_MATCH, "\"1\"")
        .header(header::CONTENT_TYPE, "application/json")
        .body(client::full(next.to_string()))
        .expect("a request");
    let resp = lightbulb.http_send(req).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}
