//! Reloading the watched rule-set file: a valid change is applied under load without failing
//! a request; an invalid file is rejected (counted, old table kept); a router never starts on
//! an invalid file and says why, listing every problem.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Version;
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, RouterProcess, trace_init, wait_until, within,
};
use serde_json::{Value, json};

use crate::support::{get, served_by};

fn rules(key_cluster: &str, a: &str, b: &str, version: u64) -> Value {
    json!({
        "version": version,
        "clusters": {
            "a": { "endpoints": [a] },
            "b": { "endpoints": [b] },
        },
        "routes": {
            "k": { "cluster": key_cluster },
            "other": { "cluster": "a" },
        },
    })
}

/// A rule set with three independent problems, each naming a distinct route or cluster so a
/// report can be checked for all of them.
pub fn rules_with_three_problems(endpoint: &str) -> Value {
    json!({
        "clusters": {
            "a": { "endpoints": [endpoint] },
            "cluster-without-endpoints": { "endpoints": [] },
            "ring-without-header": { "endpoints": [endpoint], "lb_policy": "ring_hash" },
        },
        "routes": {
            "k": { "cluster": "a" },
            "route-to-missing-cluster": { "cluster": "no-such-cluster" },
        },
    })
}

/// The names that [`rules_with_three_problems`] puts in its problems.
pub const PROBLEM_NAMES: [&str; 3] = [
    "cluster-without-endpoints",
    "ring-without-header",
    "route-to-missing-cluster",
];

#[tokio::test]
async fn rewriting_the_config_file_under_load_fails_no_request() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &b.endpoint(), 1)).await;
    let proxy = router.proxy_addr;

    let sent = Arc::new(AtomicUsize::new(0));
    let rewritten = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2, Version::HTTP_11] {
        let sent = sent.clone();
        let rewritten = rewritten.clone();
        loops.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            let mut seen_b_after_rewrite = 0;
            let mut switched = false;
            // Bounded: the loop must see the new cluster long before this many requests.
            for i in 0..20_000 {
                let was_rewritten = rewritten.load(Ordering::SeqCst);
                let resp = client.get(proxy, "/", Some("k")).await;
                sent.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    resp.status,
                    200,
                    "{version:?} request {i} failed during the reload: {:?}",
                    String::from_utf8_lossy(&resp.body)
                );
                match resp.text().as_str() {
                    "a" => assert!(
                        !switched,
                        "{version:?} request {i}: the old cluster answered after the new one did"
                    ),
                    "b" => {
                        assert!(was_rewritten, "b answered before the file was rewritten");
                        switched = true;
                        seen_b_after_rewrite += 1;
                        if seen_b_after_rewrite == 50 {
                            return i + 1;
                        }
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            panic!("{version:?}: the new cluster never answered within 20000 requests");
        }));
    }

    wait_until("the clients have sent 100 requests", DEADLINE, || {
        std::future::ready(sent.load(Ordering::SeqCst) >= 100)
    })
    .await;
    rewritten.store(true, Ordering::SeqCst);
    router.rewrite_config(&rules("b", &a.endpoint(), &b.endpoint(), 2));

    for l in loops {
        let requests = within("a client loop to finish", 4 * DEADLINE, l)
            .await
            .expect("a client loop panicked");
        assert!(requests > 50);
    }
    assert!(
        a.requests() >= 100 / 3,
        "the old cluster served before the reload"
    );
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "ok")], |v| {
            v >= 1.0
        })
        .await;
    let error_reloads = router
        .metric("router_config_reloads_total", &[("result", "error")])
        .await;
    assert_eq!(
        error_reloads, 0.0,
        "an atomic rewrite never reads a half file"
    );
    let config = router.admin_json("/config").await;
    assert_eq!(config["version"], 2);
    assert_eq!(config["rule_set"]["routes"]["k"]["cluster"], "b");
}

#[tokio::test]
async fn an_invalid_config_file_is_rejected_and_the_old_table_kept() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &b.endpoint(), 1)).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    let before = router.admin_json("/config").await;

    // Semantically invalid: every problem is reported, nothing is applied.
    router.rewrite_config(&rules_with_three_problems(&b.endpoint()));
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "error")], |v| {
            v >= 1.0
        })
        .await;
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    assert_eq!(served_by(&client, router.proxy_addr, "other").await, "a");
    let after = router.admin_json("/config").await;
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["sha256"], before["sha256"]);
    // The counter may move before the log lines are written: wait for them.
    wait_until(
        "the rejected reload's log names every problem",
        DEADLINE,
        || {
            let output = router.output();
            std::future::ready(PROBLEM_NAMES.iter().all(|name| output.contains(name)))
        },
    )
    .await;

    // Not even JSON.
    router.rewrite_config_text("{ \"clusters\": ");
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "error")], |v| {
            v >= 2.0
        })
        .await;
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");

    // A valid file is picked up again afterwards.
    router.rewrite_config(&rules("b", &a.endpoint(), &b.endpoint(), 3));
    wait_until("the valid file is applied", DEADLINE, || async {
        get(&client, router.proxy_addr, "/", "k").await.text() == "b"
    })
    .await;
    let metric_version = router
        .wait_for_metric("router_config_version", &[], |v| v == 3.0)
        .await;
    assert_eq!(metric_version, 3.0);
}

#[tokio::test]
async fn the_router_refuses_to_start_on_an_invalid_config_file_and_lists_every_problem() {
    let _trace = trace_init();
    let failed =
        RouterProcess::start_expecting_failure(&rules_with_three_problems("127.0.0.1:1")).await;
    assert!(!failed.status.success(), "exit status {}", failed.status);
    for name in PROBLEM_NAMES {
        assert!(
            failed.stderr.contains(name),
            "stderr names every problem; {name:?} is missing:\n{}",
            failed.stderr
        );
    }
}

#[tokio::test]
async fn the_router_refuses_to_start_on_a_config_file_that_is_not_a_rule_set() {
    let _trace = trace_init();
    let failed = RouterProcess::start_expecting_failure(&json!("not a rule set")).await;
    assert!(!failed.status.success(), "exit status {}", failed.status);
    assert!(
        !failed.stderr.trim().is_empty(),
        "the reason is printed on stderr"
    );
}

/// `keys` routes `key-0` … all sent to `cluster`.
fn large_rules(keys: usize, cluster: &str, a: &str, b: &str, version: u64) -> Value {
    let routes: serde_json::Map<String, Value> = (0..keys)
        .map(|k| (format!("key-{k}"), json!({ "cluster": cluster })))
        .collect();
    json!({
        "version": version,
        "clusters": { "a": { "endpoints": [a] }, "b": { "endpoints": [b] } },
        "routes": routes,
    })
}

#[tokio::test]
async fn swapping_a_100000_route_table_under_load_fails_no_request() {
    const KEYS: usize = 100_000;
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router =
        RouterProcess::start(&large_rules(KEYS, "a", &a.endpoint(), &b.endpoint(), 1)).await;
    let proxy = router.proxy_addr;
    assert_eq!(router.admin_json("/config").await["routes"], KEYS);

    let sent = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for (n, version) in [Version::HTTP_11, Version::HTTP_2].into_iter().enumerate() {
        let sent = sent.clone();
        loops.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            let mut seen_b = 0;
            // Bounded: the new table is in force long before this many requests.
            for i in 0..50_000usize {
                let key = format!("key-{}", (i * 7_919 + n * 31) % KEYS);
                let resp = client.get(proxy, "/", Some(&key)).await;
                sent.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    resp.status,
                    200,
                    "{version:?} request {i} ({key}) failed during the swap: {:?}",
                    String::from_utf8_lossy(&resp.body)
                );
                if resp.text() == "b" {
                    seen_b += 1;
                    if seen_b == 50 {
                        return i + 1;
                    }
                }
            }
            panic!("{version:?}: the new table never answered within 50000 requests");
        }));
    }
    wait_until("the clients have sent 100 requests", DEADLINE, || {
        std::future::ready(sent.load(Ordering::SeqCst) >= 100)
    })
    .await;
    router.rewrite_config(&large_rules(KEYS, "b", &a.endpoint(), &b.endpoint(), 2));
    for l in loops {
        within("a client loop to finish", 4 * DEADLINE, l)
            .await
            .expect("a client loop panicked");
    }
    let config = router.admin_json("/config").await;
    assert_eq!(config["version"], 2);
    assert_eq!(config["routes"], KEYS);
}
