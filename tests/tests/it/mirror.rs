//! Mirroring (DESIGN §6 and §11), seen from outside: the shadow cluster gets the same
//! method, path, headers and body bytes as the primary, marked `x-traffic-class: shadow`; its
//! answer is discarded; a dead mirror, or one that accepts and never reads ([`BlackHole`]),
//! never delays or fails the primary, and never makes the router hold the body in memory.
//!
//! Mirror copies travel on their own after the primary is answered, so the tests wait for
//! what the mirror fake received (`requests()`, `sha256_bodies()`) or for the mirror metrics,
//! never for time to pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use integration_tests::client::{self, Body};
use integration_tests::fake_model::SERVER_HEADER;
use integration_tests::{
    BlackHole, BoxError, DEADLINE, DeadPort, FakeModel, HttpClient, Listening, RouterProcess,
    pattern, trace_init, wait_until, within,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::support::{
    CLIENT_VERSIONS, assert_status, fetch, get, keyed, post_pattern, refused_naming, route_k_rules,
    route_reason_labels, served_by, with_fields,
};

const MIB: u64 = 1024 * 1024;

/// The header that makes mirror sampling deterministic in these tests.
const SUBJECT: &str = "x-subject-id";

/// Longest a mirror copy may wait for a [`BlackHole`] here: far longer than any test, so
/// no copy ends by a timeout while a test counts them.
const NEVER_MS: u64 = 3_600_000;

/// A rule set with cluster `primary` (the `primary` fake) and cluster `shadow` (at
/// `shadow`, answering within [`NEVER_MS`]), and route `key` to `primary` mirrored to
/// `shadow` with the fields of `mirror` (and the route fields of `route`) added.
fn mirrored(primary: &Listening, shadow: &str, mirror: Value, route: Value) -> Value {
    let m = with_fields(json!({ "cluster": "shadow" }), &mirror);
    let k = with_fields(
        json!({ "cluster": "primary", "timeout_ms": NEVER_MS, "mirror": m }),
        &route,
    );
    json!({
        "clusters": {
            "primary": { "endpoints": [primary.endpoint()] },
            "shadow": { "endpoints": [shadow], "request_timeout_ms": NEVER_MS },
        },
        "routes": { "k": k },
    })
}

fn route_labels(route: &str) -> [(&str, &str); 1] {
    [("route", route)]
}

/// The labels of `router_mirror_status_match_total` for `route` and whether the mirror's
/// status matched the primary's.
fn status_match_labels(route: &str, matched: bool) -> [(&str, &str); 2] {
    [
        ("route", route),
        ("match", if matched { "true" } else { "false" }),
    ]
}

/// The fakes `primary` and `shadow`, and a router on [`mirrored`] between them with the
/// fields of `mirror` and `route` added.
async fn primary_and_shadow(mirror: Value, route: Value) -> (Listening, Listening, RouterProcess) {
    let primary = FakeModel::new().name("primary").start().await;
    let shadow = FakeModel::new().name("shadow").start().await;
    let router = RouterProcess::start(&mirrored(&primary, &shadow.endpoint(), mirror, route)).await;
    (primary, shadow, router)
}

/// `GET /` with key `k` and `x-subject-id: subject`, expecting 200.
async fn get_as_subject(client: &HttpClient, proxy: SocketAddr, key: &str, subject: &str) {
    let req = keyed(Method::GET, proxy, "/", key)
        .header(SUBJECT, subject)
        .body(client::empty())
        .unwrap();
    assert_status(&fetch(client, req).await, 200);
}

/// The first `len` bytes of the pattern as a streamed body, hashed as it is produced: the
/// returned hasher holds the SHA-256 of what was sent once the body ended.
fn hashed_pattern_body(len: u64) -> (Body, Arc<Mutex<Sha256>>) {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let sink = hasher.clone();
    let frames = futures_util::stream::unfold(0u64, move |offset| {
        let sink = sink.clone();
        async move {
            if offset >= len {
                return None;
            }
            let n = (len - offset).min(pattern::CHUNK as u64) as usize;
            let data: Bytes = pattern::bytes_at(offset, n);
            sink.lock().unwrap().update(&data);
            Some((Ok::<_, BoxError>(Frame::data(data)), offset + n as u64))
        }
    });
    (StreamBody::new(frames).boxed(), hasher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_the_same_request_and_body_bytes_marked_shadow_and_its_answer_is_discarded()
{
    let _trace = trace_init();
    // A queue large enough that no copy of these bodies can be abandoned, however the two
    // fakes' reading speeds compare.
    let (primary, shadow, router) =
        primary_and_shadow(json!({ "max_buffer_bytes": 64 * MIB }), json!({})).await;
    let len = 8 * MIB + 3;
    let sha = pattern::sha256_hex(len);

    for (i, version) in CLIENT_VERSIONS.into_iter().enumerate() {
        let path = format!("/sha256?round={i}");
        let req = keyed(Method::POST, router.proxy_addr, &path, "k")
            .header("x-custom", format!("value-{i}"))
            .body(client::pattern_body(len))
            .unwrap();
        let resp = within(
            "a mirrored upload",
            4 * DEADLINE,
            HttpClient::for_version(version).fetch(req),
        )
        .await;
        assert_status(&resp, 200);
        let json = resp.json();
        assert_eq!(
            json["server"], "primary",
            "{version:?}: the primary's answer"
        );
        assert_eq!(json["sha256"], sha, "{version:?}");
        assert_eq!(json["bytes"], len, "{version:?}");

        wait_until("the mirror read the whole copy", DEADLINE, || {
            std::future::ready(shadow.sha256_bodies().len() == i + 1)
        })
        .await;
        assert_eq!(
            shadow.sha256_bodies()[i],
            primary.sha256_bodies()[i],
            "{version:?}: the mirror got the primary's body bytes"
        );
        assert_eq!(shadow.sha256_bodies()[i], (len, sha.clone()), "{version:?}");
        let copy = shadow.last_request().expect("the mirror got a request");
        let original = primary.last_request().expect("the primary got a request");
        assert_eq!(copy.method, Method::POST, "{version:?}");
        assert_eq!(
            copy.uri.path_and_query().map(|pq| pq.as_str()),
            Some(path.as_str()),
            "{version:?}"
        );
        assert_eq!(
            copy.headers.get("x-custom"),
            original.headers.get("x-custom"),
            "{version:?}: the client's headers are copied"
        );
        assert_eq!(
            copy.headers
                .get("x-traffic-class")
                .map(|v| v.to_str().unwrap()),
            Some("shadow"),
            "{version:?}"
        );
        assert_ne!(
            original
                .headers
                .get("x-traffic-class")
                .map(|v| v.to_str().unwrap()),
            Some("shadow"),
            "{version:?}: the primary's request is not marked shadow"
        );
    }
    assert_eq!(primary.requests(), 2);
    assert_eq!(shadow.requests(), 2);
    router
        .wait_for_metric("router_mirror_requests_total", &route_labels("k"), |v| {
            v >= 2.0
        })
        .await;
    router
        .wait_for_metric(
            "router_mirror_status_match_total",
            &status_match_labels("k", true),
            |v| v >= 2.0,
        )
        .await;
}

#[tokio::test]
async fn a_mirror_answering_another_status_is_counted_as_a_mismatch_and_never_reaches_the_client() {
    let _trace = trace_init();
    let (_primary, shadow, router) = primary_and_shadow(json!({}), json!({})).await;
    shadow.fail_with(Some(500));
    let client = HttpClient::http1();

    for _ in 0..5 {
        assert_eq!(served_by(&client, router.proxy_addr, "k").await, "primary");
    }
    wait_until("the mirror got its copies", DEADLINE, || {
        std::future::ready(shadow.requests() == 5)
    })
    .await;
    router
        .wait_for_metric(
            "router_mirror_status_match_total",
            &status_match_labels("k", false),
            |v| v >= 5.0,
        )
        .await;
    assert_eq!(
        router
            .metric(
                "router_mirror_status_match_total",
                &status_match_labels("k", true)
            )
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_dead_mirror_never_fails_the_primary() {
    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let dead = DeadPort::new();
    let router = RouterProcess::start(&mirrored(
        &primary,
        &dead.addr().to_string(),
        json!({}),
        json!({}),
    ))
    .await;

    for version in CLIENT_VERSIONS {
        let client = HttpClient::for_version(version);
        for i in 0..25 {
            let resp = post_pattern(&client, router.proxy_addr, "/sha256", "k", 64 * 1024).await;
            assert_status(&resp, 200);
            assert_eq!(
                resp.header(SERVER_HEADER).as_deref(),
                Some("primary"),
                "{version:?} request {i}"
            );
            assert_eq!(resp.json()["sha256"], pattern::sha256_hex(64 * 1024));
        }
    }
    assert_eq!(primary.requests(), 50);
    router
        .wait_for_metric("router_mirror_failed_total", &route_labels("k"), |v| {
            v >= 1.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_never_reads_never_delays_the_primary_and_its_copies_are_dropped() {
    /// Concurrent requests in each batch: more than `max_in_flight`.
    const CONCURRENT: usize = 10;
    /// Bodies far over the mirror's 1 MiB queue. Loopback socket buffers can take a few MiB
    /// of a copy the mirror never reads, so a body only a little over the queue could fit
    /// in them; 16 MiB cannot.
    const LARGE: u64 = 16 * MIB;

    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let hole = BlackHole::start().await;
    let router = RouterProcess::start(&mirrored(
        &primary,
        &hole.endpoint(),
        json!({ "max_in_flight": 2, "max_buffer_bytes": MIB }),
        json!({}),
    ))
    .await;
    let proxy = router.proxy_addr;

    // Large bodies at once. A copy that got a place in flight queues what the mirror does
    // not read and is abandoned past 1 MiB (the primary has read all of it), so at least the
    // first one is dropped as `buffer_full`.
    let mut batch = JoinSet::new();
    for n in 0..CONCURRENT {
        batch.spawn(async move {
            let version = CLIENT_VERSIONS[n % 2];
            post_pattern(
                &HttpClient::for_version(version),
                proxy,
                "/sha256",
                "k",
                LARGE,
            )
            .await
        });
    }
    let sha = pattern::sha256_hex(LARGE);
    while let Some(done) = within("the large uploads", 8 * DEADLINE, batch.join_next()).await {
        let resp = done.expect("an upload task failed");
        assert_status(&resp, 200);
        assert_eq!(resp.json()["sha256"], sha);
    }
    router
        .wait_for_metric(
            "router_mirror_dropped_total",
            &route_reason_labels("k", "buffer_full"),
            |v| v >= 1.0,
        )
        .await;
    wait_until("the mirror got connections", DEADLINE, || {
        std::future::ready(hole.accepted() >= 1)
    })
    .await;

    // Bodiless requests at once: the copies that get the 2 places in flight never end (the
    // mirror never answers), so at least the other 8 are dropped as `max_in_flight`.
    let mut batch = JoinSet::new();
    for n in 0..CONCURRENT {
        batch.spawn(async move {
            let version = CLIENT_VERSIONS[n % 2];
            get(&HttpClient::for_version(version), proxy, "/", "k").await
        });
    }
    while let Some(done) = within("the small requests", DEADLINE, batch.join_next()).await {
        let resp = done.expect("a request task failed");
        assert_status(&resp, 200);
        assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("primary"));
    }
    router
        .wait_for_metric(
            "router_mirror_dropped_total",
            &route_reason_labels("k", "max_in_flight"),
            |v| v >= (CONCURRENT - 2) as f64,
        )
        .await;
    assert_eq!(primary.requests(), 2 * CONCURRENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_mirrored_to_a_mirror_that_never_reads_keeps_router_memory_growth_under_16_mib()
 {
    const GIB: u64 = 1024 * MIB;
    const GROWTH_LIMIT: u64 = 16 * MIB;
    /// A bound on the memory samples (one per 50 ms), far above what the upload takes.
    const MAX_SAMPLES: usize = 200_000;

    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let hole = BlackHole::start().await;
    let router =
        RouterProcess::start(&mirrored(&primary, &hole.endpoint(), json!({}), json!({}))).await;
    let client = HttpClient::http1();

    // A first mirrored upload sets up the connections, buffers and allocator arenas a
    // steady stream uses, so the baseline is taken with them in place.
    let warm_up = post_pattern(&client, router.proxy_addr, "/sha256", "k", 32 * MIB).await;
    assert_status(&warm_up, 200);
    let baseline = router.rss_bytes();

    let pid = router.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut peak = 0;
            // Polls the router's memory while the upload runs; not a synchronisation.
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for _ in 0..MAX_SAMPLES {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                peak = peak.max(integration_tests::router::rss_bytes(pid));
            }
            peak
        }
    });

    let (body, sent) = hashed_pattern_body(GIB);
    let req = keyed(Method::POST, router.proxy_addr, "/sha256", "k")
        .body(body)
        .unwrap();
    let resp = within("a 1 GiB upload", 20 * DEADLINE, client.fetch(req)).await;
    stop.store(true, Ordering::SeqCst);
    let after = router.rss_bytes();
    let peak = within("the memory sampler", DEADLINE, sampler)
        .await
        .expect("the memory sampler failed")
        .max(after);

    assert_status(&resp, 200);
    let json = resp.json();
    assert_eq!(json["bytes"], GIB);
    let sent = pattern::hex(&sent.lock().unwrap().clone().finalize());
    assert_eq!(
        json["sha256"], sent,
        "the primary got the 1 GiB byte for byte"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < GROWTH_LIMIT,
        "router RSS grew by {} KiB (baseline {} KiB, peak {} KiB, after {} KiB) mirroring 1 GiB to a mirror that never reads",
        growth / 1024,
        baseline / 1024,
        peak / 1024,
        after / 1024
    );
    router
        .wait_for_metric(
            "router_mirror_dropped_total",
            &route_reason_labels("k", "buffer_full"),
            |v| v >= 1.0,
        )
        .await;
}

#[tokio::test]
async fn sticky_mirror_sampling_mirrors_each_subject_always_or_never() {
    const SUBJECTS: usize = 40;
    let _trace = trace_init();
    let (primary, shadow, router) = primary_and_shadow(
        json!({ "sample_percent": 50 }),
        json!({ "sticky_header": SUBJECT }),
    )
    .await;
    let client = HttpClient::http1();

    for i in 0..SUBJECTS {
        for _ in 0..3 {
            get_as_subject(&client, router.proxy_addr, "k", &format!("subject-{i}")).await;
        }
    }
    assert_eq!(primary.requests(), 3 * SUBJECTS);

    // Copies travel on their own: wait until the mirror got every copy the router counts and
    // each subject's copies are all there or none is.
    let per_subject = || {
        let mut counts = BTreeMap::<String, usize>::new();
        for subject in shadow.seen_header_values(SUBJECT) {
            *counts.entry(subject).or_default() += 1;
        }
        counts
    };
    wait_until(
        "the mirror got every counted copy, all or none per subject",
        DEADLINE,
        || async {
            let counted = router
                .metric("router_mirror_requests_total", &route_labels("k"))
                .await;
            counted > 0.0
                && shadow.requests() as f64 == counted
                && per_subject().values().all(|&n| n == 3)
        },
    )
    .await;
    let per_subject = per_subject();
    // 40 fair draws: all on one side has probability 2^-39.
    assert!(
        !per_subject.is_empty() && per_subject.len() < SUBJECTS,
        "about half the subjects are mirrored, got {} of {SUBJECTS}: {per_subject:?}",
        per_subject.len()
    );
    let classes = shadow.seen_header_values("x-traffic-class");
    assert_eq!(classes.len(), shadow.requests(), "every copy is marked");
    assert!(classes.iter().all(|c| c == "shadow"), "{classes:?}");
}

#[tokio::test]
async fn sample_percent_0_mirrors_nothing() {
    let _trace = trace_init();
    let primary = FakeModel::new().name("primary").start().await;
    let shadow = FakeModel::new().name("shadow").start().await;
    let mut rules = mirrored(
        &primary,
        &shadow.endpoint(),
        json!({ "sample_percent": 0 }),
        json!({}),
    );
    // A second route mirroring everything to the same shadow: its copy, sent last, shows
    // the mirror path is live.
    rules["routes"]["all"] = json!({ "cluster": "primary", "mirror": { "cluster": "shadow" } });
    let router = RouterProcess::start(&rules).await;
    let client = HttpClient::http1();

    for i in 0..20 {
        get_as_subject(&client, router.proxy_addr, "k", &format!("subject-{i}")).await;
    }
    get_as_subject(&client, router.proxy_addr, "all", "sentinel").await;
    wait_until("the sentinel's copy reached the mirror", DEADLINE, || {
        std::future::ready(shadow.requests() >= 1)
    })
    .await;
    assert_eq!(shadow.seen_header_values(SUBJECT), ["sentinel"]);
    assert_eq!(
        router
            .metric("router_mirror_requests_total", &route_labels("k"))
            .await,
        0.0
    );
    assert_eq!(primary.requests(), 21);
}

// === validation ===

/// A rule set with clusters `a`, `b` and `shadow`, and route `k` to `a` with `route`'s
/// fields added.
fn route_rules(route: Value) -> Value {
    route_k_rules(&["a", "b", "shadow"], &route)
}

#[tokio::test]
async fn the_router_refuses_a_mirror_cluster_that_does_not_exist() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "mirror": { "cluster": "nope" } })),
        r#"$.routes["k"].mirror.cluster"#,
        &["nope"],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_a_mirror_to_a_cluster_the_route_itself_sends_to() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "mirror": { "cluster": "a" } })),
        r#"$.routes["k"].mirror.cluster"#,
        &[],
    )
    .await;
    refused_naming(
        route_rules(json!({ "split": { "a": 50, "b": 50 }, "mirror": { "cluster": "b" } })),
        r#"$.routes["k"].mirror.cluster"#,
        &[],
    )
    .await;
}

#[tokio::test]
async fn the_router_refuses_a_mirror_sample_percent_over_100() {
    let _trace = trace_init();
    refused_naming(
        route_rules(json!({ "mirror": { "cluster": "shadow", "sample_percent": 100.5 } })),
        r#"$.routes["k"].mirror.sample_percent"#,
        &[],
    )
    .await;
}

#[tokio::test]
async fn a_mirror_with_a_fractional_sample_percent_and_a_sticky_header_without_a_split_is_accepted()
{
    let _trace = trace_init();
    let router = RouterProcess::start(&route_rules(json!({
        "sticky_header": SUBJECT,
        "mirror": { "cluster": "shadow", "sample_percent": 0.5 },
    })))
    .await;
    let config = router.admin_json("/config").await;
    assert!(config["generation"].is_u64(), "{config}");
}
