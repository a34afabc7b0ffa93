//! JWT identity at the edge (DESIGN §12, with the tenants of §11), seen from outside: with
//! `--jwt-jwks FILE --jwt-issuer ISS --jwt-audience AUD` every proxied request needs a valid
//! `Authorization: Bearer` token (RS256, ES256 or EdDSA, chosen by `kid`); anything else is
//! 401 `unauthenticated` with `www-authenticate: Bearer` (gRPC: trailers-only status 16)
//! and never reaches an upstream; `--jwt-claim-header CLAIM=HEADER` replaces HEADER with the
//! token's claim, so a client cannot forge its tenant or user; the JWKS file is re-read
//! when it changes; a bad JWKS or missing flags refuse the start.
//!
//! Keys are generated at run time with `openssl` ([`integration_tests::jwt`]); none is kept
//! in the repository.

use std::net::SocketAddr;

use integration_tests::fake_grpc::pb::SayRequest;
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::jwt::{
    self, JwksFile, KeyKind, SigningKey, hs256_token, tamper_signature, unix_now, unsigned_token,
    with_claims,
};
use integration_tests::{
    Collected, DEADLINE, FakeGrpc, FakeModel, HttpClient, Listening, RouterProcess, trace_init,
    wait_until, within,
};
use serde_json::{Value, json};

use crate::support::{
    CLIENT_VERSIONS, TENANT, assert_trailers_only, echo_client, expect_router_error, fetch,
    get_request, grpc_call, keyed_call, route_k_rules, say, seen,
};

/// The issuer every token must name (`--jwt-issuer`).
const ISSUER: &str = "https://issuer.test";

/// The audience every token must contain (`--jwt-audience`).
const AUDIENCE: &str = "inference-router";

/// The request header carrying the token.
const AUTHORIZATION: &str = "authorization";

/// The header the tests map the `sub` claim to.
const USER: &str = "x-forwarded-user";

/// The header the tests map the numeric `uid` claim to.
const USER_ID: &str = "x-user-id";

/// The router flags validating tokens against `jwks` for [`ISSUER`] and [`AUDIENCE`],
/// followed by `extra`.
fn jwt_args<'a>(jwks: &'a JwksFile, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--jwt-jwks",
        jwks.arg(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ];
    args.extend_from_slice(extra);
    args
}

/// Route `k` to cluster `c`, whose only endpoint is `fake`.
fn rules(fake: &Listening) -> Value {
    json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": { "cluster": "c" } },
    })
}

/// A router on [`rules`] validating tokens against `jwks`, with `extra` flags.
async fn jwt_router(fake: &Listening, jwks: &JwksFile, extra: &[&str]) -> RouterProcess {
    RouterProcess::start_with_args(&rules(fake), &jwt_args(jwks, extra)).await
}

/// The claims of a token the router accepts.
fn valid_claims() -> Value {
    jwt::claims(ISSUER, AUDIENCE)
}

/// `Bearer TOKEN`.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET /` with `key` and `authorization` (no such header when `None`), read to the end.
async fn get_authorized(
    client: &HttpClient,
    proxy: SocketAddr,
    key: Option<&str>,
    authorization: Option<&str>,
) -> Collected {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| (AUTHORIZATION, a))
        .into_iter()
        .collect();
    fetch(client, get_request(proxy, "/", key, &headers)).await
}

/// `GET /` with key `k` and `Authorization: Bearer token`, read to the end.
async fn get_with_token(client: &HttpClient, proxy: SocketAddr, token: &str) -> Collected {
    get_authorized(client, proxy, Some("k"), Some(&bearer(token))).await
}

/// `GET /headers` with `key`, `Authorization: Bearer token` and the `headers` added,
/// expecting 200; returns what the fake saw.
async fn headers_seen(
    client: &HttpClient,
    proxy: SocketAddr,
    key: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Value {
    let authorization = bearer(token);
    let mut all = vec![(AUTHORIZATION, authorization.as_str())];
    all.extend_from_slice(headers);
    let resp = fetch(client, get_request(proxy, "/headers", Some(key), &all)).await;
    assert_eq!(
        resp.status,
        200,
        "GET /headers with key {key}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

/// Asserts `resp` is 200 from the fake named `live`; `what` names the request.
#[track_caller]
fn assert_served(resp: &Collected, what: &str) {
    assert_eq!(
        resp.status,
        200,
        "{what}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header(SERVER_HEADER).as_deref(),
        Some("live"),
        "{what}: answered by the fake"
    );
}

/// What keeps `resp` from being the router's 401 `unauthenticated` (a JSON error with a
/// message) with a `Bearer` challenge; `None` when it is one.
fn unauthenticated_mismatch(resp: &Collected) -> Option<String> {
    let body = String::from_utf8_lossy(&resp.body);
    if resp.status != 401 {
        return Some(format!("status {} (body {body:?}), not 401", resp.status));
    }
    let content_type = resp.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Some(format!("content-type {content_type:?}, not JSON"));
    }
    let Ok(json) = serde_json::from_slice::<Value>(&resp.body) else {
        return Some(format!("a body that is not JSON: {body:?}"));
    };
    if json["error"]["code"] != "unauthenticated" {
        return Some(format!("error {json}, not code unauthenticated"));
    }
    if json["error"]["message"].as_str().is_none_or(str::is_empty) {
        return Some(format!("error {json} without a message"));
    }
    match resp.header("www-authenticate") {
        Some(challenge) if challenge.starts_with("Bearer") => None,
        Some(challenge) => Some(format!(
            "www-authenticate {challenge:?}, not a Bearer challenge"
        )),
        None => Some(format!("no www-authenticate header in {:?}", resp.headers)),
    }
}

/// Asserts `resp` is the router's 401 `unauthenticated` with a `Bearer` challenge; `what`
/// names the request.
#[track_caller]
fn assert_unauthenticated(resp: &Collected, what: &str) {
    if let Some(mismatch) = unauthenticated_mismatch(resp) {
        panic!("{what}: expected 401 unauthenticated, got {mismatch}");
    }
}

/// Asserts the fake's `/headers` answer `got` shows exactly one value of `name`, `expected`.
#[track_caller]
fn assert_one_value(got: &Value, name: &str, expected: &str, what: &str) {
    assert_eq!(
        seen(got, name),
        vec![expected.to_owned()],
        "{what}: the upstream saw exactly the token's {name}; headers {}",
        got["headers"]
    );
}

/// Asserts the fake's `/headers` answer `got` shows no `name` header.
#[track_caller]
fn assert_absent(got: &Value, name: &str, what: &str) {
    assert!(
        seen(got, name).is_empty(),
        "{what}: the client's {name} is removed when the token has no such claim; headers {}",
        got["headers"]
    );
}

// === valid tokens ===

#[tokio::test]
async fn tokens_signed_by_the_rsa_ecdsa_and_ed25519_keys_of_the_jwks_are_accepted() {
    let _trace = trace_init();
    let keys = [
        SigningKey::generate(KeyKind::Rs256, "rsa-1"),
        SigningKey::generate(KeyKind::Es256, "ec-1"),
        SigningKey::generate(KeyKind::EdDsa, "ed-1"),
        // A second RSA key, after the others: a token without a kid must be tried against
        // every RSA key, not only the first.
        SigningKey::generate(KeyKind::Rs256, "rsa-2"),
    ];
    let jwks = JwksFile::new(&keys.iter().collect::<Vec<_>>());
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;
    let proxy = router.proxy_addr;

    let mut served = 0;
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for key in &keys {
            let what = format!("{version:?} {:?} token of key {}", key.kind(), key.kid());
            let resp = get_with_token(&client, proxy, &key.sign(&valid_claims())).await;
            assert_served(&resp, &format!("{what}, named by its kid"));
            let resp = get_with_token(&client, proxy, &key.sign_without_kid(&valid_claims())).await;
            assert_served(&resp, &format!("{what}, without a kid"));
            served += 2;
        }
    }
    assert_eq!(
        fake.requests(),
        served,
        "every accepted request went upstream"
    );
}

#[tokio::test]
async fn a_token_whose_audience_list_contains_the_audience_and_whose_nbf_has_passed_is_accepted() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Es256, "ec-1");
    let jwks = JwksFile::new(&[&key]);
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;

    let now = unix_now();
    for (what, extra) in [
        (
            "an audience list",
            json!({ "aud": ["other-service", AUDIENCE] }),
        ),
        ("an nbf in the past", json!({ "nbf": now - 60 })),
        ("an nbf of now", json!({ "nbf": now })),
    ] {
        let token = key.sign(&with_claims(valid_claims(), &extra));
        let resp = get_with_token(&HttpClient::http1(), router.proxy_addr, &token).await;
        assert_served(&resp, what);
    }
}

// === identity headers from claims ===

#[tokio::test]
async fn mapped_claims_replace_client_sent_identity_headers_and_authorization_passes_unchanged() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let jwks = JwksFile::new(&[&key]);
    let fake = FakeModel::new().name("live").start().await;
    let rule_set = json!({
        "clusters": {
            "h1": { "endpoints": [fake.endpoint()], "protocol": "http1" },
            "h2": { "endpoints": [fake.endpoint()], "protocol": "http2" },
        },
        "routes": {
            "h1": { "cluster": "h1" },
            "h2": { "cluster": "h2" },
        },
    });
    let mapping = [
        "--jwt-claim-header",
        "sub=x-forwarded-user",
        "--jwt-claim-header",
        "tenant=x-tenant-id",
        "--jwt-claim-header",
        "uid=x-user-id",
    ];
    let router = RouterProcess::start_with_args(&rule_set, &jwt_args(&jwks, &mapping)).await;
    let proxy = router.proxy_addr;

    let full = key.sign(&with_claims(
        valid_claims(),
        &json!({ "sub": "alice", "tenant": "search", "uid": 42 }),
    ));
    let sub_only = key.sign(&with_claims(valid_claims(), &json!({ "sub": "bob" })));
    let forged = [
        (TENANT, "forged"),
        (USER, "mallory"),
        (USER, "eve"),
        (USER_ID, "7"),
    ];
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for upstream in ["h1", "h2"] {
            let what = format!("{version:?} client, {upstream} upstream");
            let got = headers_seen(&client, proxy, upstream, &full, &forged).await;
            assert_one_value(&got, USER, "alice", &what);
            assert_one_value(&got, TENANT, "search", &what);
            assert_one_value(&got, USER_ID, "42", &format!("{what} (a number claim)"));
            assert_one_value(&got, AUTHORIZATION, &bearer(&full), &what);

            let got = headers_seen(&client, proxy, upstream, &sub_only, &forged).await;
            assert_one_value(&got, USER, "bob", &what);
            assert_absent(&got, TENANT, &what);
            assert_absent(&got, USER_ID, &what);
        }
    }
}

#[tokio::test]
async fn the_tenant_comes_from_the_token_not_from_a_client_sent_header() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::EdDsa, "ed-1");
    let jwks = JwksFile::new(&[&key]);
    let fake = FakeModel::new().name("live").start().await;
    let rule_set = json!({
        "clusters": { "live": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": { "cluster": "live", "tenants": ["search"] } },
        "tenants": { "search": {} },
    });
    let router = RouterProcess::start_with_args(
        &rule_set,
        &jwt_args(&jwks, &["--jwt-claim-header", "tenant=x-tenant-id"]),
    )
    .await;
    let proxy = router.proxy_addr;

    let as_tenant = |tenant: &str| {
        key.sign(&with_claims(
            valid_claims(),
            &json!({ "sub": "alice", "tenant": tenant }),
        ))
    };
    let search = as_tenant("search");
    let other = as_tenant("other");
    let no_tenant = key.sign(&with_claims(valid_claims(), &json!({ "sub": "alice" })));

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let served_before = fake.requests();
        let send = |token: &str, claimed: &str| {
            let authorization = bearer(token);
            let req = get_request(
                proxy,
                "/",
                Some("k"),
                &[(AUTHORIZATION, &authorization), (TENANT, claimed)],
            );
            fetch(&client, req)
        };

        let resp = send(&search, "other").await;
        assert_served(
            &resp,
            &format!("{version:?}: a search token with a client-sent x-tenant-id: other"),
        );
        for (token, claimed, what) in [
            (&other, "search", "a token of tenant other claiming search"),
            (
                &no_tenant,
                "search",
                "a token without a tenant claiming search",
            ),
        ] {
            let resp = send(token, claimed).await;
            assert_eq!(resp.status, 403, "{version:?}: {what}: {resp:?}");
            let error = expect_router_error(&resp, 403, "tenant_not_allowed");
            assert_eq!(error["routing_key"], "k", "{version:?}: {what}");
        }
        assert_eq!(
            fake.requests(),
            served_before + 1,
            "{version:?}: only the search token's request went upstream"
        );
    }
}

// === refused tokens ===

#[tokio::test]
async fn every_invalid_token_gets_401_unauthenticated_with_a_bearer_challenge_and_never_reaches_the_upstream()
 {
    let _trace = trace_init();
    let rsa = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let ec = SigningKey::generate(KeyKind::Es256, "ec-1");
    let ed = SigningKey::generate(KeyKind::EdDsa, "ed-1");
    let jwks = JwksFile::new(&[&rsa, &ec, &ed]);
    // Same kind and kid as a trusted key, but not in the JWKS.
    let impostor = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let stranger = SigningKey::generate(KeyKind::EdDsa, "stranger");
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;
    let proxy = router.proxy_addr;

    let now = unix_now();
    let valid = valid_claims();
    let claims = |extra: Value| with_claims(valid.clone(), &extra);
    let mut cases: Vec<(String, Option<String>)> = vec![
        ("no Authorization header".into(), None),
        ("Bearer without a token".into(), Some("Bearer".into())),
        ("Bearer and a space".into(), Some("Bearer ".into())),
        ("garbage".into(), Some(bearer("not-a-jwt"))),
        ("three garbage parts".into(), Some(bearer("abc.def.ghi"))),
        (
            "another scheme".into(),
            Some("Basic dXNlcjpwYXNzd29yZA==".into()),
        ),
        (
            "a valid token without the Bearer scheme".into(),
            Some(rsa.sign(&valid)),
        ),
        (
            "an expired token (exp 5 s ago)".into(),
            Some(bearer(&rsa.sign(&claims(json!({ "exp": now - 5 }))))),
        ),
        (
            "a token without exp".into(),
            Some(bearer(&rsa.sign(&claims(json!({ "exp": null }))))),
        ),
        (
            "a token not yet valid (nbf in an hour)".into(),
            Some(bearer(&ec.sign(&claims(json!({ "nbf": now + 3600 }))))),
        ),
        (
            "a token of a key not in the JWKS with a trusted key's kid".into(),
            Some(bearer(&impostor.sign(&valid))),
        ),
        (
            "a token of a key not in the JWKS without a kid".into(),
            Some(bearer(&impostor.sign_without_kid(&valid))),
        ),
        (
            "a token of a key not in the JWKS with an unknown kid".into(),
            Some(bearer(&stranger.sign(&valid))),
        ),
        (
            "an ES256 token naming the kid of the RSA key".into(),
            Some(bearer(&ec.sign_with_header(
                &{
                    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                    header.kid = Some(rsa.kid().to_owned());
                    header
                },
                &valid,
            ))),
        ),
        (
            "a wrong issuer".into(),
            Some(bearer(
                &ed.sign(&claims(json!({ "iss": "https://evil.test" }))),
            )),
        ),
        (
            "no issuer".into(),
            Some(bearer(&ed.sign(&claims(json!({ "iss": null }))))),
        ),
        (
            "a wrong audience".into(),
            Some(bearer(
                &rsa.sign(&claims(json!({ "aud": "other-service" }))),
            )),
        ),
        (
            "an audience list without the audience".into(),
            Some(bearer(&rsa.sign(&claims(json!({ "aud": ["a", "b"] }))))),
        ),
        (
            "no audience".into(),
            Some(bearer(&rsa.sign(&claims(json!({ "aud": null }))))),
        ),
        ("alg none".into(), Some(bearer(&unsigned_token(&valid)))),
        (
            "HS256".into(),
            Some(bearer(&hs256_token(b"some shared secret", None, &valid))),
        ),
        (
            "HS256 naming the RSA key's kid".into(),
            Some(bearer(&hs256_token(
                b"some shared secret",
                Some(rsa.kid()),
                &valid,
            ))),
        ),
    ];
    for key in [&rsa, &ec, &ed] {
        cases.push((
            format!("a {:?} token with one signature byte changed", key.kind()),
            Some(bearer(&tamper_signature(&key.sign(&valid)))),
        ));
    }

    // Every case is tried before failing, so one run shows every wrong answer.
    let mut wrong = Vec::new();
    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for (what, authorization) in &cases {
            let resp = get_authorized(&client, proxy, Some("k"), authorization.as_deref()).await;
            if let Some(mismatch) = unauthenticated_mismatch(&resp) {
                wrong.push(format!("{version:?}: {what}: {mismatch}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "expected 401 unauthenticated with a Bearer challenge for every case, got:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        fake.requests(),
        0,
        "no refused request reached the upstream"
    );

    // The same router serves a valid token: the refusals above are the tokens' fault.
    let resp = get_with_token(&HttpClient::http1(), proxy, &rsa.sign(&valid)).await;
    assert_served(&resp, "a valid token after the refusals");
}

#[tokio::test]
async fn a_token_accepted_before_its_exp_is_refused_once_its_exp_has_passed() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Es256, "ec-1");
    let jwks = JwksFile::new(&[&key]);
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;
    let client = HttpClient::http1();

    let exp = unix_now() + 3;
    let token = key.sign(&with_claims(valid_claims(), &json!({ "exp": exp })));
    let first = get_with_token(&client, router.proxy_addr, &token).await;
    // On a machine so loaded that the token expired on its way, there is nothing to check.
    if unix_now() < exp {
        assert_served(&first, "the token before its exp");
    }
    // Waits on the clock, not on the router: the same token, now past its exp (with no
    // leeway), must be refused even though the router accepted it before.
    wait_until("the token's exp has passed", DEADLINE, || async {
        unix_now() > exp
    })
    .await;
    for version in CLIENT_VERSIONS {
        let resp =
            get_with_token(&HttpClient::for_version(version), router.proxy_addr, &token).await;
        assert_unauthenticated(&resp, &format!("{version:?}: the same token after its exp"));
    }
}

#[tokio::test]
async fn an_unauthenticated_request_is_refused_before_its_routing_key_is_looked_at() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let jwks = JwksFile::new(&[&key]);
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;
    let proxy = router.proxy_addr;
    let token = bearer(&key.sign(&valid_claims()));

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for (key, what) in [
            (None, "no routing key"),
            (Some("no-such-key"), "an unknown key"),
        ] {
            let resp = get_authorized(&client, proxy, key, None).await;
            assert_unauthenticated(&resp, &format!("{version:?}: {what} without a token"));
        }
        let resp = get_authorized(&client, proxy, None, Some(&token)).await;
        expect_router_error(&resp, 400, "missing_routing_key");
        let resp = get_authorized(&client, proxy, Some("no-such-key"), Some(&token)).await;
        expect_router_error(&resp, 404, "unknown_routing_key");
    }
    assert_eq!(fake.requests(), 0, "nothing reached the upstream");
    // The admin API is not behind the token check.
    router.admin_json("/config").await;
}

#[tokio::test]
async fn a_grpc_call_without_a_valid_token_gets_trailers_only_unauthenticated() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Es256, "ec-1");
    let jwks = JwksFile::new(&[&key]);
    let upstream = FakeGrpc::new().start().await;
    let rule_set = json!({
        "clusters": { "echo": { "endpoints": [upstream.endpoint()], "protocol": "http2" } },
        "routes": { "echo": { "cluster": "echo" } },
    });
    let router = RouterProcess::start_with_args(&rule_set, &jwt_args(&jwks, &[])).await;

    let expired = bearer(&key.sign(&with_claims(
        valid_claims(),
        &json!({ "exp": unix_now() - 5 }),
    )));
    let refused = grpc_call(&router, "echo", &[]).await;
    assert_trailers_only(&refused, "16", "a gRPC call without a token");
    let refused = grpc_call(&router, "echo", &[(AUTHORIZATION, &expired)]).await;
    assert_trailers_only(&refused, "16", "a gRPC call with an expired token");

    let mut client = echo_client(&router).await;
    let status = say(&mut client, "Say without a token", "echo", "hi")
        .await
        .expect_err("a call without a token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        upstream.requests(),
        0,
        "no refused call reached the upstream"
    );

    let mut call = keyed_call(
        SayRequest {
            message: "hi".into(),
        },
        "echo",
    );
    let authorization = bearer(&key.sign(&valid_claims()));
    call.metadata_mut().insert(
        AUTHORIZATION,
        authorization.parse().expect("a valid metadata value"),
    );
    let reply = within("Say with a valid token", DEADLINE, client.say(call))
        .await
        .expect("a call with a valid token is served")
        .into_inner();
    assert_eq!(reply.message, "hi", "{reply:?}");
    assert_eq!(
        upstream.requests(),
        1,
        "the authenticated call reached the upstream"
    );
}

// === JWKS rotation ===

#[tokio::test]
async fn after_the_jwks_is_replaced_tokens_of_the_new_key_pass_and_those_of_the_removed_key_are_refused()
 {
    let _trace = trace_init();
    let a = SigningKey::generate(KeyKind::Rs256, "key-a");
    let b = SigningKey::generate(KeyKind::Rs256, "key-b");
    let jwks = JwksFile::new(&[&a]);
    let fake = FakeModel::new().name("live").start().await;
    let router = jwt_router(&fake, &jwks, &[]).await;
    let proxy = router.proxy_addr;
    let client = HttpClient::http1();
    let token_a = a.sign(&valid_claims());
    let token_b = b.sign(&valid_claims());

    assert_served(
        &get_with_token(&client, proxy, &token_a).await,
        "token A with key A trusted",
    );
    assert_unauthenticated(
        &get_with_token(&client, proxy, &token_b).await,
        "token B before key B is trusted",
    );

    jwks.rewrite(&[&b]);
    wait_until("a token of the new key B is accepted", DEADLINE, || async {
        let resp = get_with_token(&client, proxy, &token_b).await;
        if resp.status != 200 {
            assert_unauthenticated(&resp, "token B while the router still has key A");
        }
        resp.status == 200
    })
    .await;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        assert_served(
            &get_with_token(&client, proxy, &token_b).await,
            &format!("{version:?}: token B after the rotation"),
        );
        assert_unauthenticated(
            &get_with_token(&client, proxy, &token_a).await,
            &format!("{version:?}: token A once key A left the JWKS"),
        );
    }
}

// === without JWT ===

#[tokio::test]
async fn without_jwt_flags_requests_without_a_token_pass_and_identity_headers_are_forwarded_as_sent()
 {
    let _trace = trace_init();
    let fake = FakeModel::new().name("live").start().await;
    let router = RouterProcess::start(&rules(&fake)).await;
    let proxy = router.proxy_addr;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        let what = format!("{version:?}");
        assert_served(
            &get_authorized(&client, proxy, Some("k"), None).await,
            &what,
        );
        let got = headers_seen(&client, proxy, "k", "opaque", &[(TENANT, "t"), (USER, "u")]).await;
        assert_one_value(&got, TENANT, "t", &what);
        assert_one_value(&got, USER, "u", &what);
        assert_one_value(&got, AUTHORIZATION, "Bearer opaque", &what);
    }
}

// === refused starts ===

/// Starts a router on a valid rule set with `args`, expecting a refusal whose stderr names
/// `flag`; `what` names the case.
async fn refused_naming_flag(args: &[&str], flag: &str, what: &str) {
    let failed =
        RouterProcess::start_expecting_failure_with_args(&route_k_rules(&["a"], &json!({})), args)
            .await;
    assert!(
        !failed.status.success(),
        "{what}: exit status {}",
        failed.status
    );
    assert!(
        failed.stderr.contains(flag),
        "{what}: stderr names {flag}:\n{}",
        failed.stderr
    );
}

#[tokio::test]
async fn the_router_refuses_to_start_with_a_missing_or_invalid_jwks_or_without_issuer_or_audience()
{
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let good = JwksFile::new(&[&key]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let missing = dir.path().join("no-such-jwks.json");
    let missing = missing.to_str().expect("a UTF-8 temp dir path");
    let not_json = JwksFile::with_text("this is not JSON");
    let not_a_jwks = JwksFile::with_text(r#"{"keys": "nope"}"#);
    let bad_key =
        JwksFile::with_text(r#"{"keys": [{"kty": "RSA", "kid": "x", "n": "!!", "e": "AQAB"}]}"#);

    for (jwks, what) in [
        (missing, "a missing JWKS file"),
        (not_json.arg(), "a JWKS file that is not JSON"),
        (not_a_jwks.arg(), "a JSON file that is not a JWKS"),
        (bad_key.arg(), "a JWKS whose key is not valid"),
    ] {
        refused_naming_flag(
            &[
                "--jwt-jwks",
                jwks,
                "--jwt-issuer",
                ISSUER,
                "--jwt-audience",
                AUDIENCE,
            ],
            "--jwt-jwks",
            what,
        )
        .await;
    }
    refused_naming_flag(
        &["--jwt-jwks", good.arg(), "--jwt-audience", AUDIENCE],
        "--jwt-issuer",
        "--jwt-jwks without --jwt-issuer",
    )
    .await;
    refused_naming_flag(
        &["--jwt-jwks", good.arg(), "--jwt-issuer", ISSUER],
        "--jwt-audience",
        "--jwt-jwks without --jwt-audience",
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_to_start_with_a_claim_header_that_is_not_claim_equals_header() {
    let _trace = trace_init();
    let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
    let jwks = JwksFile::new(&[&key]);
    for (mapping, what) in [
        ("sub", "no ="),
        ("=x-forwarded-user", "no claim"),
        ("sub=", "no header"),
        ("sub=not a header", "an invalid header name"),
    ] {
        refused_naming_flag(
            &jwt_args(&jwks, &["--jwt-claim-header", mapping]),
            "--jwt-claim-header",
            what,
        )
        .await;
    }
}
