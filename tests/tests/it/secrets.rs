//! Secrets at the edge (DESIGN §12): the admin API's bearer token (`--admin-token-file`,
//! compared in constant time) and the credentials clients send.
//!
//! - On a non-loopback `--admin` the token guards every endpoint but `/healthz` and
//!   `/readyz`, and the router refuses to start without a token file (exit 64, naming
//!   `--admin-token-file`); on loopback only `PUT /config` needs it.
//! - A token file others can read is accepted with a warning that names the file, never the
//!   token.
//! - Nothing secret is ever written out: with `RUST_LOG=debug` and the access log on, the
//!   admin token, a wrong one, a client's bearer credential and a JWT the router refuses
//!   appear neither in the router's output nor in any answer the router itself makes (a
//!   client's `Authorization` is forwarded upstream, which is fine; it is never logged).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use http::{Method, header};
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::jwt::{self, JwksFile, KeyKind, SigningKey, tamper_signature, with_claims};
use integration_tests::raw::RawConn;
use integration_tests::router::StartOptions;
use integration_tests::{
    Collected, DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, trace_init, wait_until,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{expect_router_error, fetch};

/// The admin token the tests configure.
const TOKEN: &str = "adm-7f3c9e1a5b2d4f60-secret";

/// A token that is not [`TOKEN`] (same length, so only the bytes differ).
const WRONG_TOKEN: &str = "adm-0a1b2c3d4e5f6789-wrongx";

/// A client's own bearer credential, forwarded upstream but never logged.
const CLIENT_BEARER: &str = "cli-4d8e2b6f0a9c1e37-bearer";

/// The admin endpoints the token guards on a non-loopback address.
const GUARDED: [&str; 3] = ["/metrics", "/config", "/clusters"];

/// The probes that never need it.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// Route `k` to cluster `c`, whose only endpoint is `fake`.
fn rules(fake: &Listening) -> Value {
    json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": { "cluster": "c" } },
    })
}

/// A temp dir holding the token file `admin-token` with [`TOKEN`] and a newline, with the
/// permission bits `mode`.
fn token_file(mode: u32) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write the token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("set the token file's mode");
    (dir, path)
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `Bearer TOKEN`.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `method path` on the admin API with `Authorization: Bearer token` when given (a `PUT`
/// carries `body` as JSON), read to the end.
async fn admin(
    router: &RouterProcess,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Collected {
    let mut builder = client::request(method, router.admin_addr, path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, bearer(token));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            client::full(json.to_string())
        }
        None => client::empty(),
    };
    fetch(
        &HttpClient::http1(),
        builder.body(body).expect("a valid request"),
    )
    .await
}

/// Asserts `resp` is the admin API's 401: `www-authenticate: Bearer`, code `unauthorized`.
#[track_caller]
fn assert_unauthorized(resp: &Collected, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {:?}", resp.text());
    assert_eq!(
        resp.header("www-authenticate").as_deref(),
        Some("Bearer"),
        "{what}"
    );
    assert_eq!(resp.json()["error"]["code"], "unauthorized", "{what}");
}

#[track_caller]
fn assert_ok(resp: &Collected, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {:?}", resp.text());
}

/// The router's output without the terminal colour codes of its log lines
/// (`ESC [ .. m`), so that a field reads `status=401`.
fn plain_output(router: &RouterProcess) -> String {
    let output = router.output();
    let mut plain = String::with_capacity(output.len());
    let mut rest = output.as_str();
    while let Some(at) = rest.find("\x1b[") {
        plain.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = match after.find('m') {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    plain.push_str(rest);
    plain
}

/// Asserts none of `secrets` appears in `text` (`where_` names it).
#[track_caller]
fn assert_hidden(text: &str, secrets: &[&str], where_: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{where_} shows the secret {secret:?}:\n{text}"
        );
    }
}

/// Asserts none of `secrets` appears in the router's output, as printed or without colour
/// codes.
#[track_caller]
fn assert_hidden_in_output(router: &RouterProcess, secrets: &[&str]) {
    assert_hidden(&router.output(), secrets, "the router's output");
    assert_hidden(&plain_output(router), secrets, "the router's output");
}

/// Asserts none of `secrets` appears in the head or body of any of `answers`.
#[track_caller]
fn assert_hidden_in_answers(answers: &[(String, Collected)], secrets: &[&str]) {
    for (what, resp) in answers {
        let head = format!("{:?}", resp.headers);
        assert_hidden(&head, secrets, &format!("the head of the answer to {what}"));
        assert_hidden(
            &resp.text(),
            secrets,
            &format!("the body of the answer to {what}"),
        );
    }
}

#[tokio::test]
async fn a_non_loopback_admin_needs_the_token_everywhere_but_the_probes() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    let (_dir, token) = token_file(0o600);
    let router = RouterProcess::start_with_options(
        &rules(&fake),
        &StartOptions {
            admin: Some("0.0.0.0:0"),
            args: &["--admin-token-file", arg(&token)],
            ..StartOptions::default()
        },
    )
    .await;
    assert!(
        router.admin_addr.ip().is_loopback(),
        "reached through 127.0.0.1"
    );

    for path in PROBES {
        let resp = admin(&router, Method::GET, path, None, None).await;
        assert_ok(&resp, &format!("GET {path} without a token"));
    }
    for path in GUARDED {
        let resp = admin(&router, Method::GET, path, None, None).await;
        assert_unauthorized(&resp, &format!("GET {path} without a token"));
        let resp = admin(&router, Method::GET, path, Some(WRONG_TOKEN), None).await;
        assert_unauthorized(&resp, &format!("GET {path} with a wrong token"));
        let resp = admin(
            &router,
            Method::GET,
            path,
            Some(&TOKEN[..TOKEN.len() - 1]),
            None,
        )
        .await;
        assert_unauthorized(&resp, &format!("GET {path} with a prefix of the token"));
        let resp = admin(&router, Method::GET, path, Some(TOKEN), None).await;
        assert_ok(&resp, &format!("GET {path} with the token"));
    }
    let put = rules(&fake);
    let resp = admin(&router, Method::PUT, "/config", None, Some(&put)).await;
    assert_unauthorized(&resp, "PUT /config without a token");
    let resp = admin(
        &router,
        Method::PUT,
        "/config",
        Some(WRONG_TOKEN),
        Some(&put),
    )
    .await;
    assert_unauthorized(&resp, "PUT /config with a wrong token");
    let resp = admin(&router, Method::PUT, "/config", Some(TOKEN), Some(&put)).await;
    assert_ok(&resp, "PUT /config with the token");

    let output = router.output();
    assert!(
        !output.contains("readable by others"),
        "no warning for an owner-only token file:\n{output}"
    );
}

#[tokio::test]
async fn a_non_loopback_admin_without_a_token_file_refuses_to_start() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let failed = RouterProcess::start_with_options_expecting_failure(
        &rules(&fake),
        &StartOptions {
            admin: Some("0.0.0.0:0"),
            ..StartOptions::default()
        },
    )
    .await;
    assert_eq!(
        failed.status.code(),
        Some(64),
        "exit status {}; stderr:\n{}",
        failed.status,
        failed.stderr
    );
    assert!(
        failed.stderr.contains("--admin-token-file"),
        "the refusal names --admin-token-file:\n{}",
        failed.stderr
    );
}

#[tokio::test]
async fn a_loopback_admin_with_a_token_guards_only_put_config() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    let (_dir, token) = token_file(0o600);
    let router =
        RouterProcess::start_with_args(&rules(&fake), &["--admin-token-file", arg(&token)]).await;

    for path in PROBES.into_iter().chain(GUARDED) {
        let resp = admin(&router, Method::GET, path, None, None).await;
        assert_ok(&resp, &format!("GET {path} without a token on loopback"));
    }
    let put = rules(&fake);
    let resp = admin(&router, Method::PUT, "/config", None, Some(&put)).await;
    assert_unauthorized(&resp, "PUT /config without a token");
    let resp = admin(
        &router,
        Method::PUT,
        "/config",
        Some(WRONG_TOKEN),
        Some(&put),
    )
    .await;
    assert_unauthorized(&resp, "PUT /config with a wrong token");
    let resp = admin(&router, Method::PUT, "/config", Some(TOKEN), Some(&put)).await;
    assert_ok(&resp, "PUT /config with the token");
}

#[tokio::test]
async fn a_token_file_readable_by_others_is_accepted_with_a_warning_naming_it() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    let (_dir, token) = token_file(0o644);
    let router =
        RouterProcess::start_with_args(&rules(&fake), &["--admin-token-file", arg(&token)]).await;
    let put = rules(&fake);
    let resp = admin(&router, Method::PUT, "/config", Some(TOKEN), Some(&put)).await;
    assert_ok(&resp, "PUT /config with the token of a 0644 file");

    let path = arg(&token).to_owned();
    wait_until("the router warns about the token file", DEADLINE, || {
        let output = plain_output(&router);
        std::future::ready(output.contains("readable by others") && output.contains(&path))
    })
    .await;
    let output = plain_output(&router);
    let warning = output
        .lines()
        .find(|line| line.contains("readable by others"))
        .expect("the warning line");
    assert!(
        warning.contains(&path),
        "the warning names the file: {warning}"
    );
    assert_hidden_in_output(&router, &[TOKEN]);
}

#[tokio::test]
async fn tokens_and_bearer_credentials_never_appear_in_logs_or_router_answers() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("m").start().await;
    let (_dir, token) = token_file(0o600);
    let router = RouterProcess::start_with_options(
        &rules(&fake),
        &StartOptions {
            admin: Some("0.0.0.0:0"),
            env: &[("RUST_LOG", "debug")],
            args: &["--admin-token-file", arg(&token), "--access-log"],
            ..StartOptions::default()
        },
    )
    .await;
    let secrets = [TOKEN, WRONG_TOKEN, CLIENT_BEARER];
    let mut answers = Vec::new();

    for path in GUARDED {
        for token in [WRONG_TOKEN, TOKEN] {
            let resp = admin(&router, Method::GET, path, Some(token), None).await;
            answers.push((format!("GET {path}"), resp));
        }
    }
    let put = rules(&fake);
    for token in [WRONG_TOKEN, TOKEN] {
        let resp = admin(&router, Method::PUT, "/config", Some(token), Some(&put)).await;
        answers.push(("PUT /config".to_owned(), resp));
    }
    // The admin token sent to the proxy port is just a client credential there.
    for (what, key, credential) in [
        ("a proxied request", "k", CLIENT_BEARER),
        ("a request with an unknown key", "nope", CLIENT_BEARER),
        ("a proxied request carrying the admin token", "k", TOKEN),
    ] {
        let req = client::request(Method::GET, router.proxy_addr, "/")
            .header(ROUTING_KEY, key)
            .header(header::AUTHORIZATION, bearer(credential))
            .body(client::empty())
            .expect("a valid request");
        answers.push((what.to_owned(), fetch(&HttpClient::http1(), req).await));
    }
    // Malformed requests carrying the credential, which the router logs at debug level.
    let credential = format!("Authorization: {}\r\n", bearer(CLIENT_BEARER));
    for (what, bytes) in [
        (
            "a bad chunk",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\n{credential}\
                 Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
            ),
        ),
        (
            "a bare LF",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{credential}x-routing-key: k\n\r\n"),
        ),
    ] {
        let mut conn = RawConn::connect(router.proxy_addr).await;
        conn.send(bytes.as_bytes()).await;
        let resp = conn.response(&format!("the answer to {what}")).await;
        assert_eq!(resp.status, 400, "{what}: {:?}", resp.text());
        assert_hidden(&resp.text(), &secrets, &format!("the answer to {what}"));
        conn.expect_closed(&format!("the connection closed after {what}"))
            .await;
    }
    assert_eq!(answers[answers.len() - 3].1.status, 200);
    assert_eq!(answers[answers.len() - 2].1.status, 404);
    assert_eq!(
        fake.last_headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Some(bearer(TOKEN).as_str()),
        "a client's Authorization is forwarded upstream"
    );

    // The access log is written after each answer: wait for the lines of the last ones.
    wait_until(
        "the router logs the proxied requests at debug level",
        DEADLINE,
        || {
            let output = plain_output(&router);
            std::future::ready(
                output.contains("DEBUG")
                    && output.contains("request body refused")
                    && output.contains("status=400")
                    && output.contains("status=404")
                    && output.matches("status=200").count() >= 2,
            )
        },
    )
    .await;
    assert_hidden_in_output(&router, &secrets);
    let admin_answers: Vec<_> = answers
        .iter()
        .take(GUARDED.len() * 2 + 2)
        .cloned()
        .collect();
    assert_hidden_in_answers(&admin_answers, &secrets);
    // Of the proxied answers, only the unknown key's is the router's own.
    assert_hidden_in_answers(&answers[answers.len() - 2..answers.len() - 1], &secrets);
}

#[tokio::test]
async fn jwts_never_appear_in_logs_or_router_answers() {
    let _trace = trace_init();
    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "inference-router";
    let fake = FakeModel::new().name("m").start().await;
    let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let impostor = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let jwks = JwksFile::new(&[&key]);
    let router = RouterProcess::start_with_options(
        &rules(&fake),
        &StartOptions {
            env: &[("RUST_LOG", "debug")],
            args: &[
                "--jwt-jwks",
                jwks.arg(),
                "--jwt-issuer",
                ISSUER,
                "--jwt-audience",
                AUDIENCE,
                "--access-log",
            ],
            ..StartOptions::default()
        },
    )
    .await;

    let now = jwt::unix_now();
    let valid = key.sign(&jwt::claims(ISSUER, AUDIENCE));
    let expired = key.sign(&with_claims(
        jwt::claims(ISSUER, AUDIENCE),
        &json!({ "iat": now - 7200, "exp": now - 3600 }),
    ));
    let tampered = tamper_signature(&valid);
    let wrong_key = impostor.sign(&jwt::claims(ISSUER, AUDIENCE));
    let refused = [
        ("an expired JWT", &expired),
        ("a JWT with a tampered signature", &tampered),
        ("a JWT signed by another key", &wrong_key),
    ];

    let mut answers = Vec::new();
    for (what, token) in refused {
        let req = client::request(Method::GET, router.proxy_addr, "/")
            .header(ROUTING_KEY, "k")
            .header(header::AUTHORIZATION, bearer(token))
            .body(client::empty())
            .expect("a valid request");
        let resp = fetch(&HttpClient::http1(), req).await;
        expect_router_error(&resp, 401, "unauthenticated");
        answers.push((what.to_owned(), resp));
    }
    assert_eq!(fake.requests(), 0, "no refused token reached the upstream");
    let req = client::request(Method::GET, router.proxy_addr, "/")
        .header(ROUTING_KEY, "k")
        .header(header::AUTHORIZATION, bearer(&valid))
        .body(client::empty())
        .expect("a valid request");
    let resp = fetch(&HttpClient::http1(), req).await;
    assert_ok(&resp, "a valid JWT");

    wait_until(
        "the router logs the refusals and the served request",
        DEADLINE,
        || {
            let output = plain_output(&router);
            std::future::ready(
                output.matches("status=401").count() >= refused.len()
                    && output.contains("status=200"),
            )
        },
    )
    .await;
    // The whole tokens and their signatures, the part that makes them credentials.
    let mut secrets: Vec<&str> = Vec::new();
    for token in [&valid, &expired, &tampered, &wrong_key] {
        secrets.push(token);
        secrets.push(token.rsplit('.').next().expect("a signature part"));
    }
    assert_hidden_in_output(&router, &secrets);
    assert_hidden_in_answers(&answers, &secrets);
}
