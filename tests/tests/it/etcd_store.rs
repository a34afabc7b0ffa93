//! Lightbulb's etcd store (`--store etcd://HOST:PORT`): several real `lightbulb` replicas on
//! one real `etcd`, writes through any replica reaching every replica's engine and
//! `RoutingConfig.Watch` streams, compare-and-swap across replicas, and restarts.
//!
//! Needs the `etcd` binary (Debian `etcd-server`; `scripts/test.sh` installs it): without it
//! these tests fail rather than skip.

use std::collections::BTreeSet;

use integration_tests::etcd::EtcdProcess;
use integration_tests::lightbulb::{LightbulbProcess, next_message};
use integration_tests::{DEADLINE, DeadPort, trace_init, wait_until, within};
use serde_json::{Value, json};

use crate::config_store::{OBJECTIVE, TOKEN, assert_status, get_json, put_config, resolve, rules};
use tempfile::TempDir;

/// One etcd and the token file the replicas share.
struct Cluster {
    etcd: EtcdProcess,
    dir: TempDir,
}

impl Cluster {
    async fn new() -> Self {
        let etcd = EtcdProcess::start().await;
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("tokens"), format!("alice:{TOKEN}\n"))
            .expect("write the token file");
        Self { etcd, dir }
    }

    /// Starts a replica on the etcd store (seeded with `rules("ranker-v1")` when empty).
    async fn replica(&self) -> LightbulbProcess {
        self.replica_with_args(&[]).await
    }

    /// [`Cluster::replica`] with extra flags.
    async fn replica_with_args(&self, extra: &[&str]) -> LightbulbProcess {
        let store = self.etcd.store_url();
        let tokens = self.dir.path().join("tokens").display().to_string();
        let mut args = vec![
            "--store",
            &store,
            "--etcd-prefix",
            "/test/lightbulb",
            "--api-token-file",
            &tokens,
        ];
        args.extend_from_slice(extra);
        LightbulbProcess::start_with_args(&rules("ranker-v1"), &args).await
    }
}

async fn version(lightbulb: &LightbulbProcess) -> u64 {
    get_json(lightbulb, "/v1/config").await["version"]
        .as_u64()
        .expect("a version")
}

/// Waits until `lightbulb` serves `version` both from its config API and its engine.
async fn wait_for_version(lightbulb: &LightbulbProcess, want: u64) {
    wait_until(
        &format!("the replica serves version {want}"),
        DEADLINE,
        || async {
            version(lightbulb).await == want
                && resolve(lightbulb).await["ruleSetVersion"] == json!(want)
        },
    )
    .await;
}

#[tokio::test]
async fn a_write_through_one_replica_reaches_the_other() {
    let _trace = trace_init();
    let cluster = Cluster::new().await;
    let (a, b) = tokio::join!(cluster.replica(), cluster.replica());
    assert_eq!(version(&a).await, 1);
    assert_eq!(version(&b).await, 1);
    let history = get_json(&b, "/v1/config/history").await;
    assert_eq!(
        history["versions"].as_array().map(Vec::len),
        Some(1),
        "two replicas starting together seed once: {history}"
    );

    let ok = put_config(&a, 1, &rules("ranker-v2")).await;
    assert_status(&ok, 200, "PUT through A");
    assert_eq!(ok.json()["version"], 2);
    // Whatever B has seen so far, version 1 is stale for it too.
    assert_status(
        &put_config(&b, 1, &rules("ranker-v1")).await,
        409,
        "a stale PUT through B",
    );

    wait_for_version(&b, 2).await;
    let config = get_json(&b, "/v1/config").await;
    assert_eq!(config["objectives"][OBJECTIVE]["default"], "ranker-v2");
    assert_eq!(resolve(&b).await["routingKey"], "ranker-v2");
    assert_eq!(resolve(&a).await["routingKey"], "ranker-v2");
    for replica in [&a, &b] {
        let history = get_json(replica, "/v1/config/history").await;
        assert_eq!(history["current"], 2, "{history}");
        let versions: Vec<_> = history["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["version"].as_u64())
            .collect();
        assert_eq!(versions, [Some(2), Some(1)]);
    }
}

/// Makes `writes` changes through `lightbulb`, each reading the current version, changing
/// one marker (`{name}-{i}`), and writing it back with If-Match, reading again on 409.
/// Returns the acknowledged versions with their markers.
async fn writer(name: &str, lightbulb: &LightbulbProcess, writes: usize) -> Vec<(u64, String)> {
    const ATTEMPTS: usize = 500;
    let mut acked = Vec::new();
    for i in 0..writes {
        let marker = format!("{name}-{i}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts <= ATTEMPTS, "{marker}: still conflicting");
            let mut next = get_json(lightbulb, "/v1/config").await;
            let read = next["version"].as_u64().expect("a version");
            next.as_object_mut().expect("an object").remove("version");
            next["models"]["ranker-v1"]["version"] = json!(marker);
            let resp = put_config(lightbulb, read, &next).await;
            match resp.status.as_u16() {
                200 => {
                    let version = resp.json()["version"].as_u64().expect("a version");
                    acked.push((version, marker));
                    break;
                }
                409 => {}
                _ => panic!("{marker}: unexpected answer: {}", resp.text()),
            }
        }
    }
    acked
}

#[tokio::test]
async fn concurrent_writers_through_both_replicas_lose_no_update() {
    const WRITES: usize = 20;
    let _trace = trace_init();
    let cluster = Cluster::new().await;
    let (a, b) = tokio::join!(cluster.replica(), cluster.replica());

    let (from_a, from_b) = within("the concurrent writers", DEADLINE * 4, async {
        tokio::join!(writer("a", &a, WRITES), writer("b", &b, WRITES))
    })
    .await;
    let acked: Vec<_> = from_a.into_iter().chain(from_b).collect();
    assert_eq!(acked.len(), 2 * WRITES);
    let versions: BTreeSet<u64> = acked.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.len(),
        acked.len(),
        "two writes acknowledged the same version"
    );
    let last = 1 + u64::try_from(acked.len()).expect("a small count");
    assert_eq!(
        versions,
        (2..=last).collect(),
        "versions are dense after the seed"
    );

    wait_for_version(&a, last).await;
    wait_for_version(&b, last).await;
    let history = get_json(&b, "/v1/config/history").await;
    assert_eq!(history["current"], last);
    let kept: BTreeSet<u64> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert!(
        kept.is_superset(&versions),
        "every acknowledged version is kept: {kept:?}"
    );
    // Each acknowledged version holds what its writer wrote.
    for (version, marker) in &acked {
        let stored = get_json(&a, &format!("/v1/config/versions/{version}")).await;
        assert_eq!(
            stored["models"]["ranker-v1"]["version"],
            json!(marker),
            "version {version}"
        );
    }
}

#[tokio::test]
async fn a_routing_config_watch_on_one_replica_sees_a_write_through_the_other() {
    let _trace = trace_init();
    let cluster = Cluster::new().await;
    let (a, b) = tokio::join!(cluster.replica(), cluster.replica());
    let mut stream = b.watch_snapshots().await;
    let first = next_message("the first snapshot", &mut stream).await;
    assert_eq!(first.version, 1);

    let mut next = rules("ranker-v2");
    next["clusters"]["ranker-v3"] = json!({ "endpoints": ["127.0.0.1:9003"] });
    assert_status(&put_config(&a, 1, &next).await, 200, "PUT through A");
    let second = next_message("the snapshot after the change", &mut stream).await;
    assert_eq!(second.version, 2);
    let routing: Value = serde_json::from_str(&second.rule_set_json).expect("JSON");
    assert!(routing["clusters"]["ranker-v3"].is_object(), "{routing}");
}

#[tokio::test]
async fn a_restarted_replica_starts_from_the_current_version_in_etcd() {
    let _trace = trace_init();
    let cluster = Cluster::new().await;
    let (a, b) = tokio::join!(cluster.replica(), cluster.replica());
    assert_status(
        &put_config(&a, 1, &rules("ranker-v2")).await,
        200,
        "first PUT",
    );
    let mut b = b;
    b.sigterm();
    let status = b.wait_for_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", b.output());
    drop(b);
    let mut third = rules("ranker-v1");
    third["models"]["ranker-v1"]["version"] = json!("third");
    assert_status(&put_config(&a, 2, &third).await, 200, "second PUT");

    // B was down for version 3: a new B reads it from etcd, and ignores its own --config.
    let b = cluster.replica().await;
    assert_eq!(version(&b).await, 3);
    let config = get_json(&b, "/v1/config").await;
    assert_eq!(config["models"]["ranker-v1"]["version"], "third");
    assert_eq!(resolve(&b).await["ruleSetVersion"], 3);

    // And A restarted too.
    drop(a);
    let a = cluster.replica().await;
    assert_eq!(version(&a).await, 3);
    assert_eq!(resolve(&a).await["ruleSetVersion"], 3);
    // Both still follow each other.
    assert_status(
        &put_config(&b, 3, &rules("ranker-v2")).await,
        200,
        "PUT through B",
    );
    wait_for_version(&a, 4).await;
}

#[tokio::test]
async fn versions_beyond_the_history_bound_are_deleted() {
    let _trace = trace_init();
    let cluster = Cluster::new().await;
    let lightbulb = cluster.replica_with_args(&["--history", "3"]).await;
    for from in 1..=4 {
        let mut next = rules("ranker-v1");
        next["models"]["ranker-v1"]["version"] = json!(format!("w{from}"));
        assert_status(&put_config(&lightbulb, from, &next).await, 200, "PUT");
    }
    let history = get_json(&lightbulb, "/v1/config/history").await;
    let versions: Vec<_> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, [Some(5), Some(4), Some(3)]);
    let gone = lightbulb.http_get("/v1/config/versions/2").await;
    assert_status(&gone, 404, "a deleted version");
    let kept = get_json(&lightbulb, "/v1/config/versions/3").await;
    assert_eq!(kept["models"]["ranker-v1"]["version"], "w2");
}

#[tokio::test]
async fn replicas_follow_changes_again_after_etcd_restarts() {
    let _trace = trace_init();
    let mut cluster = Cluster::new().await;
    let (a, b) = tokio::join!(cluster.replica(), cluster.replica());
    // Both watches are up once a change has gone round.
    assert_status(
        &put_config(&a, 1, &rules("ranker-v2")).await,
        200,
        "PUT through A",
    );
    wait_for_version(&b, 2).await;

    cluster.etcd.restart().await;
    // A's client reconnects on its own; the first write may still meet the old connection.
    wait_until(
        "a PUT through A succeeds after the restart",
        DEADLINE,
        || async {
            let resp = put_config(&a, 2, &rules("ranker-v1")).await;
            match resp.status.as_u16() {
                200 => true,
                // An earlier attempt that failed for the client may have been committed.
                409 => resp.json()["error"]["current_version"] == 3,
                500 | 503 => false,
                _ => panic!("unexpected answer: {}", resp.text()),
            }
        },
    )
    .await;
    // B's watch failed with the restart; re-established, it brings version 3.
    wait_for_version(&b, 3).await;
    assert_eq!(resolve(&b).await["routingKey"], "ranker-v1");
    assert_status(
        &put_config(&b, 3, &rules("ranker-v2")).await,
        200,
        "PUT through B",
    );
    wait_for_version(&a, 4).await;
    assert_eq!(resolve(&a).await["routingKey"], "ranker-v2");
}

#[tokio::test]
async fn an_unreachable_etcd_store_refuses_to_start() {
    let _trace = trace_init();
    let dead = DeadPort::new();
    let store = format!("etcd://{}", dead.addr());
    let failed = LightbulbProcess::start_expecting_failure_with_args(
        &rules("ranker-v1").to_string(),
        &["--store", &store, "--insecure-no-auth"],
    )
    .await;
    assert_ne!(failed.status.code(), Some(0));
    assert!(failed.stderr.contains(&store), "{}", failed.stderr);
}
