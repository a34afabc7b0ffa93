use std::time::Duration;

use super::*;
use crate::state::ProxySettings;

fn rule_set_json(version: u64, key: &str) -> String {
    serde_json::json!({
        "version": version,
        "clusters": { "a": { "endpoints": ["127.0.0.1:9001"] } },
        "routes": { key: { "cluster": "a" } },
    })
    .to_string()
}

fn snapshot(version: u64, rule_set_json: String) -> pb::RoutingSnapshot {
    pb::RoutingSnapshot {
        version,
        rule_set_json,
    }
}

fn unconfigured() -> Shared {
    Shared::unconfigured(ProxySettings::with_workers(1))
}

#[test]
fn an_unconfigured_router_has_an_empty_table_and_no_source() {
    let shared = unconfigured();
    assert!(!shared.is_configured());
    assert_eq!(shared.source(), ConfigSource::None);
    assert_eq!(shared.table.load().len(), 0);
}

#[test]
fn a_valid_snapshot_is_applied_then_recognised_as_unchanged() {
    let shared = unconfigured();
    let first = snapshot(3, rule_set_json(3, "ranker"));
    match apply_snapshot(&shared, &first).unwrap() {
        Applied::Changed(table) => assert_eq!(table.version, 3),
        Applied::Unchanged => panic!("the first snapshot must change the table"),
    }
    assert!(shared.is_configured());
    assert_eq!(shared.source(), ConfigSource::ControlPlane);
    let generation = shared.table.load().generation;
    assert!(matches!(
        apply_snapshot(&shared, &first).unwrap(),
        Applied::Unchanged
    ));
    assert_eq!(shared.table.load().generation, generation);
    assert!(matches!(
        apply_snapshot(&shared, &snapshot(4, rule_set_json(4, "other"))).unwrap(),
        Applied::Changed(_)
    ));
    assert_eq!(shared.table.load().version, 4);
}

#[test]
fn an_invalid_snapshot_is_never_applied() {
    let shared = unconfigured();
    apply_snapshot(&shared, &snapshot(1, rule_set_json(1, "ranker"))).unwrap();
    let before = shared.table.load_full();

    let not_json = apply_snapshot(&shared, &snapshot(2, "{ not json".to_string()));
    assert!(
        matches!(not_json, Err(SnapshotError::Parse(_))),
        "{not_json:?}"
    );

    let unknown_field = apply_snapshot(&shared, &snapshot(2, r#"{"version":2,"bogus":1}"#.into()));
    assert!(
        matches!(unknown_field, Err(SnapshotError::Parse(_))),
        "{unknown_field:?}"
    );

    let dangling = serde_json::json!({
        "version": 2,
        "clusters": { "a": { "endpoints": ["127.0.0.1:9001"] } },
        "routes": { "k": { "cluster": "missing" } },
    })
    .to_string();
    // Parsing validates too: every problem is in the error.
    let invalid = apply_snapshot(&shared, &snapshot(2, dangling));
    match &invalid {
        Err(SnapshotError::Parse(e)) => assert!(
            e.issues().iter().any(|i| i.message.contains("missing")),
            "{invalid:?}"
        ),
        other => panic!("expected a validation error, got {other:?}"),
    }

    let mismatch = apply_snapshot(&shared, &snapshot(9, rule_set_json(2, "ranker")));
    assert!(
        matches!(
            mismatch,
            Err(SnapshotError::VersionMismatch {
                snapshot: 9,
                rule_set: 2
            })
        ),
        "{mismatch:?}"
    );

    let empty = apply_snapshot(&shared, &snapshot(2, r#"{"version":2}"#.into()));
    assert!(
        matches!(empty, Err(SnapshotError::Empty { .. })),
        "{empty:?}"
    );

    let after = shared.table.load_full();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the table in force was replaced"
    );
    assert_eq!(after.version, 1);
}

#[test]
fn a_rejected_first_snapshot_leaves_the_router_unconfigured() {
    let shared = unconfigured();
    assert!(apply_snapshot(&shared, &snapshot(1, "[]".to_string())).is_err());
    assert!(!shared.is_configured());
    assert_eq!(shared.source(), ConfigSource::None);
}

#[test]
fn a_persisted_snapshot_is_loaded_back_and_no_temp_file_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("state");
    assert!(load_snapshot(&nested).is_none());
    persist(&nested, &rule_set_json(5, "ranker")).unwrap();
    persist(&nested, &rule_set_json(6, "ranker")).unwrap();
    let loaded = load_snapshot(&nested).expect("the snapshot");
    assert_eq!(loaded.version, 6);
    let names: Vec<_> = std::fs::read_dir(&nested)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [SNAPSHOT_FILE]);
}

#[test]
fn a_corrupt_snapshot_on_disk_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SNAPSHOT_FILE), "{ half a fi").unwrap();
    assert!(load_snapshot(dir.path()).is_none());
}

#[test]
fn control_plane_urls_are_http_or_https() {
    assert!(check_url("http://127.0.0.1:50051").is_ok());
    assert!(check_url("http://lightbulb.svc:50051").is_ok());
    assert!(check_url("https://127.0.0.1:50051").is_ok());
    assert!(check_url("grpc://127.0.0.1:50051").is_err());
    assert!(check_url("127.0.0.1:50051").is_err());
    assert!(check_url("").is_err());
    assert!(is_https("https://a:1") && is_https("HTTPS://a:1"));
    assert!(!is_https("http://a:1"));
}

fn router_config(args: &[&str]) -> Config {
    use clap::Parser as _;
    let mut all = vec!["router"];
    all.extend_from_slice(args);
    Config::parse_from(all)
}

/// A certificate and its key, written as `NAME.pem` and `NAME.key` in `dir`.
fn write_pair(dir: &Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn an_https_control_plane_needs_a_ca_file_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_pair(dir.path(), "ca");
    let (cert, key) = write_pair(dir.path(), "client");
    let (_, other_key) = write_pair(dir.path(), "other");
    let check = |args: &[&str]| check_tls(&router_config(args));

    assert!(check(&["--control-plane", "http://127.0.0.1:1"]).is_ok());
    let error = check(&["--control-plane", "http://127.0.0.1:1,https://127.0.0.1:2"]).unwrap_err();
    assert!(error.contains("--control-plane-ca"), "{error}");
    assert!(error.contains("https://127.0.0.1:2"), "{error}");

    let https = [
        "--control-plane",
        "https://127.0.0.1:2",
        "--control-plane-ca",
    ];
    assert!(check(&[&https[..], &[ca.as_str()]].concat()).is_ok());
    let mtls = [
        &https[..],
        &[
            ca.as_str(),
            "--control-plane-cert",
            &cert,
            "--control-plane-key",
            &key,
        ],
    ]
    .concat();
    assert!(check(&mtls).is_ok());

    let missing = dir.path().join("missing.pem").display().to_string();
    let error = check(&[&https[..], &[missing.as_str()]].concat()).unwrap_err();
    assert!(error.contains("missing.pem"), "{error}");
    let mismatched = [
        &https[..],
        &[
            ca.as_str(),
            "--control-plane-cert",
            &cert,
            "--control-plane-key",
            &other_key,
        ],
    ]
    .concat();
    let error = check(&mismatched).unwrap_err();
    assert!(error.contains("client.pem"), "{error}");
    let error =
        check(&[&https[..], &[ca.as_str(), "--control-plane-cert", &cert]].concat()).unwrap_err();
    assert!(error.contains("--control-plane-key"), "{error}");
}

#[test]
fn the_tls_files_reach_the_settings() {
    let settings = Settings::from_config(&router_config(&[
        "--control-plane",
        "https://127.0.0.1:2",
        "--control-plane-ca",
        "ca.pem",
        "--control-plane-cert",
        "c.pem",
        "--control-plane-key",
        "k.pem",
    ]));
    assert_eq!(
        settings.tls,
        Some(TlsFiles {
            ca: "ca.pem".into(),
            identity: Some(("c.pem".into(), "k.pem".into())),
        })
    );
    let error = endpoint("https://127.0.0.1:2", &settings).unwrap_err();
    assert!(error.contains("ca.pem"), "{error}");
    let plain = Settings::from_config(&router_config(&["--control-plane", "http://127.0.0.1:2"]));
    assert_eq!(plain.tls, None);
    assert!(endpoint("http://127.0.0.1:2", &plain).is_ok());
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
    let ms = Duration::from_millis;
    let mut b = Backoff::new(ms(100), ms(1_000));
    let bounds = [
        (50, 100),
        (100, 200),
        (200, 400),
        (400, 800),
        (500, 1_000),
        (500, 1_000),
    ];
    for (lo, hi) in bounds {
        let d = b.next_delay();
        assert!(d >= ms(lo) && d <= ms(hi), "{d:?} not in [{lo}, {hi}] ms");
    }
    b.reset();
    let d = b.next_delay();
    assert!(d >= ms(50) && d <= ms(100), "{d:?} after reset");
}

#[test]
fn a_router_starts_from_its_snapshot_or_unconfigured() {
    let dir = tempfile::tempdir().unwrap();
    let empty = initial_state(dir.path(), ProxySettings::with_workers(1));
    assert!(!empty.is_configured());
    assert_eq!(empty.source(), ConfigSource::None);

    persist(dir.path(), &rule_set_json(8, "ranker")).unwrap();
    let from_disk = initial_state(dir.path(), ProxySettings::with_workers(1));
    assert!(from_disk.is_configured());
    assert_eq!(from_disk.source(), ConfigSource::Snapshot);
    assert_eq!(from_disk.table.load().version, 8);
}
