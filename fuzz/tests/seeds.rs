//! The binary seeds of `resolve_request` (protobuf messages) are made here, from the
//! messages written out below, so that they can be read and changed as code. The test fails
//! when a checked-in seed is not its message (compared decoded: prost writes map entries in
//! hash order, so the bytes vary from run to run); `FUZZ_WRITE_SEEDS=1 cargo test --test
//! seeds` (re)writes them.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use prost::Message as _;
use routing_proto::lightbulb::v1 as pb;

fn request(
    objective: &str,
    tenant: &str,
    subject: &str,
    attributes: &[(&str, &str)],
    allocations: &[(&str, &str)],
    traffic_class: pb::TrafficClass,
) -> pb::ResolveRequest {
    let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    pb::ResolveRequest {
        objective: objective.to_owned(),
        tenant: tenant.to_owned(),
        subject_id: subject.to_owned(),
        attributes: map(attributes),
        experiment_allocations: map(allocations),
        traffic_class: traffic_class as i32,
    }
}

/// Mode byte (see `fuzz::resolve_request`) + message.
fn seed(mode: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut out = vec![mode];
    message.encode(&mut out).expect("a Vec grows");
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use pb::TrafficClass::{Live, Synthetic, Unspecified};
    let ranking = request(
        "ContinueWatchingRanking",
        "kids",
        "subject-1",
        &[("device", "tv"), ("country", "US"), ("surface", "home")],
        &[],
        Live,
    );
    let treatment = request(
        "ContinueWatchingRanking",
        "",
        "subject-2",
        &[],
        &[("exp-ranker", "treatment")],
        Unspecified,
    );
    let synthetic = request("ContinueWatchingRanking", "", "", &[], &[], Synthetic);
    let fraud = request("FraudScoring", "payments", "card-99", &[], &[], Live);
    let chat = request(
        "SupportChat",
        "",
        "user-5",
        &[("plan", "enterprise")],
        &[("exp-llm-size", "holdout")],
        Live,
    );
    let unknown_cell = request(
        "SupportChat",
        "",
        "",
        &[],
        &[("exp-llm-size", "huge")],
        Live,
    );
    let unknown = request("NoSuchObjective", "", "", &[], &[], Live);
    let mut bad_class = request("FraudScoring", "", "", &[], &[], Live);
    bad_class.traffic_class = 7;
    let batch = pb::ResolveBatchRequest {
        requests: vec![
            ranking.clone(),
            fraud.clone(),
            unknown.clone(),
            chat.clone(),
            bad_class.clone(),
        ],
    };
    vec![
        ("single-ranking.bin", seed(0, &ranking)),
        ("single-experiment-treatment.bin", seed(0, &treatment)),
        ("single-synthetic.bin", seed(0, &synthetic)),
        ("single-fraud-tenant.bin", seed(0, &fraud)),
        ("single-chat.bin", seed(0, &chat)),
        ("single-unknown-cell.bin", seed(0, &unknown_cell)),
        ("single-unknown-objective.bin", seed(0, &unknown)),
        ("single-bad-traffic-class.bin", seed(0, &bad_class)),
        ("single-empty.bin", vec![0]),
        ("batch.bin", seed(1, &batch)),
        (
            "json-ranking.json",
            [
                &b"\x02"[..],
                br#"{"objective":"ContinueWatchingRanking","tenant":"kids","subjectId":"subject-1","attributes":{"device":"tv","country":"US","surface":"home"},"trafficClass":"live"}"#,
            ]
            .concat(),
        ),
        (
            "json-snake-case.json",
            [
                &b"\x02"[..],
                br#"{"objective":"SupportChat","subject_id":"user-5","experiment_allocations":{"exp-llm-size":"large"},"traffic_class":2}"#,
            ]
            .concat(),
        ),
        (
            "json-bad-class.json",
            [&b"\x02"[..], br#"{"objective":"FraudScoring","trafficClass":"bulk"}"#].concat(),
        ),
    ]
}

#[test]
fn resolve_request_seeds_are_the_messages_written_here() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/resolve_request");
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if write {
            fs::create_dir_all(&dir).expect("the corpus directory can be made");
            fs::write(&path, &bytes).expect("a seed can be written");
            continue;
        }
        let checked_in = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (FUZZ_WRITE_SEEDS=1 writes it)", path.display()));
        assert!(
            same(&checked_in, &bytes),
            "{} is stale (FUZZ_WRITE_SEEDS=1 rewrites it)",
            path.display()
        );
    }
}

/// Whether two seeds are the same input: same mode byte and the same message.
fn same(a: &[u8], b: &[u8]) -> bool {
    match (a.split_first(), b.split_first()) {
        (Some((0, a)), Some((0, b))) => {
            pb::ResolveRequest::decode(a).ok() == pb::ResolveRequest::decode(b).ok()
        }
        (Some((1, a)), Some((1, b))) => {
            pb::ResolveBatchRequest::decode(a).ok() == pb::ResolveBatchRequest::decode(b).ok()
        }
        _ => a == b,
    }
}
