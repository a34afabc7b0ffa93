//! The ADS protocol state machine alone: subscriptions, nonces, ACK and NACK, the order of
//! types, and delta's per-resource versions. Resources are opaque here, so each is a few
//! bytes naming its content.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::*;

const CDS: &str = CLUSTER_TYPE;
const EDS: &str = ENDPOINT_TYPE;
const RDS: &str = ROUTE_TYPE;

fn any(type_url: &str, content: &str) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: content.as_bytes().to_vec(),
    }
}

/// Generation `generation` of rule-set version `version`: clusters and their endpoints
/// named in `clusters` (`name=content`), and the route configuration with `routes`.
fn published(generation: u64, version: u64, clusters: &[(&str, &str)], routes: &str) -> Published {
    let by_name = |type_url: &str| -> BTreeMap<String, Any> {
        clusters
            .iter()
            .map(|(name, content)| ((*name).to_owned(), any(type_url, content)))
            .collect()
    };
    Published {
        generation,
        resources: Resources {
            version,
            clusters: by_name(CDS),
            endpoints: by_name(EDS),
            routes: BTreeMap::from([("lightbulb".to_owned(), any(RDS, routes))]),
            unmapped: Vec::new(),
        },
    }
}

fn request(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "envoy-1".to_owned(),
            ..Node::default()
        }),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    }
}

fn nack(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected on purpose".to_owned(),
            ..RpcStatus::default()
        }),
        ..request(type_url, names, nonce)
    }
}

/// `(type, version, nonce, resource contents)` of each response.
fn sotw(out: &[DiscoveryResponse]) -> Vec<(&str, &str, &str, Vec<String>)> {
    out.iter()
        .map(|r| {
            let contents = r
                .resources
                .iter()
                .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                .collect();
            (
                r.type_url.as_str(),
                r.version_info.as_str(),
                r.nonce.as_str(),
                contents,
            )
        })
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn sotw_sends_clusters_then_endpoints_then_routes_each_once_answered() {
    let v1 = published(1, 7, &[("a", "a1"), ("b", "b1")], "r1");
    let mut s = Session::default();
    let out = s.sotw_request(request(CDS, &[], ""), &v1);
    assert_eq!(sotw(&out), [(CDS, "7", "1", strings(&["a1", "b1"]))]);
    // Endpoints go at once; routes wait for the clusters and endpoints to be answered.
    let out = s.sotw_request(request(EDS, &["a"], ""), &v1);
    assert_eq!(sotw(&out), [(EDS, "7", "2", strings(&["a1"]))]);
    assert!(
        s.sotw_request(request(RDS, &["lightbulb"], ""), &v1)
            .is_empty()
    );
    assert!(s.sotw_request(request(CDS, &[], "1"), &v1).is_empty());
    let out = s.sotw_request(request(EDS, &["a"], "2"), &v1);
    assert_eq!(sotw(&out), [(RDS, "7", "3", strings(&["r1"]))]);
    // Every answer in, nothing more to send.
    assert!(
        s.sotw_request(request(RDS, &["lightbulb"], "3"), &v1)
            .is_empty()
    );
    assert_eq!(s.node.as_deref(), Some("envoy-1"));
}

#[test]
fn sotw_pushes_each_change_in_order() {
    let v1 = published(1, 7, &[("a", "a1")], "r1");
    let mut s = Session::default();
    s.sotw_request(request(CDS, &[], ""), &v1);
    s.sotw_request(request(CDS, &[], "1"), &v1);
    s.sotw_request(request(EDS, &["a"], ""), &v1);
    s.sotw_request(request(EDS, &["a"], "2"), &v1);
    s.sotw_request(request(RDS, &["lightbulb"], ""), &v1);
    s.sotw_request(request(RDS, &["lightbulb"], "3"), &v1);

    let v2 = published(2, 8, &[("a", "a2"), ("c", "c2")], "r2");
    assert_eq!(
        sotw(&s.sotw_flush(&v2)),
        [
            (CDS, "8", "4", strings(&["a2", "c2"])),
            (EDS, "8", "5", strings(&["a2"])),
        ]
    );
    // Envoy asks for the new cluster's endpoints (answering the last ones).
    let out = s.sotw_request(request(EDS, &["a", "c"], "5"), &v2);
    assert_eq!(sotw(&out), [(EDS, "8", "6", strings(&["a2", "c2"]))]);
    // The routes wait for both answers.
    assert!(
        s.sotw_request(request(EDS, &["a", "c"], "6"), &v2)
            .is_empty()
    );
    let out = s.sotw_request(request(CDS, &[], "4"), &v2);
    assert_eq!(sotw(&out), [(RDS, "8", "7", strings(&["r2"]))]);
}

#[test]
fn sotw_a_nack_is_not_answered_with_the_same_version_and_a_stale_nonce_is_ignored() {
    let v1 = published(1, 7, &[("a", "a1")], "r1");
    let mut s = Session::default();
    s.sotw_request(request(CDS, &[], ""), &v1);
    assert!(s.sotw_request(nack(CDS, &[], "1"), &v1).is_empty());
    // The NACK answered the clusters: the routes are not held back by it.
    let out = s.sotw_request(request(RDS, &["lightbulb"], ""), &v1);
    assert_eq!(sotw(&out), [(RDS, "7", "2", strings(&["r1"]))]);
    // The next change is sent.
    let v2 = published(2, 8, &[("a", "a2")], "r2");
    assert_eq!(
        sotw(&s.sotw_flush(&v2)),
        [(CDS, "8", "3", strings(&["a2"]))]
    );
    // An answer to an older response is stale, even with other names.
    assert!(s.sotw_request(request(CDS, &["x"], "1"), &v2).is_empty());
}

#[test]
fn sotw_a_changed_subscription_is_answered_at_once() {
    let v1 = published(1, 7, &[("a", "a1"), ("b", "b1")], "r1");
    let mut s = Session::default();
    s.sotw_request(request(CDS, &[], ""), &v1);
    s.sotw_request(request(CDS, &[], "1"), &v1);
    let out = s.sotw_request(request(EDS, &["a"], ""), &v1);
    assert_eq!(sotw(&out), [(EDS, "7", "2", strings(&["a1"]))]);
    let out = s.sotw_request(request(EDS, &["a", "b"], "2"), &v1);
    assert_eq!(sotw(&out), [(EDS, "7", "3", strings(&["a1", "b1"]))]);
    // The same names again, answering: nothing.
    assert!(
        s.sotw_request(request(EDS, &["a", "b"], "3"), &v1)
            .is_empty()
    );
    // A type this server does not serve is ignored.
    let listeners = "type.googleapis.com/envoy.config.listener.v3.Listener";
    assert!(s.sotw_request(request(listeners, &[], ""), &v1).is_empty());
}

// === delta ===

fn delta(
    type_url: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: "envoy-2".to_owned(),
            ..Node::default()
        }),
        type_url: type_url.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.to_owned(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// `(type, system version, nonce, names sent, names removed)` of one delta response.
type DeltaSummary<'a> = (&'a str, &'a str, &'a str, Vec<String>, Vec<String>);

/// The [`DeltaSummary`] of each response.
fn deltas(out: &[DeltaDiscoveryResponse]) -> Vec<DeltaSummary<'_>> {
    out.iter()
        .map(|r| {
            let names = r.resources.iter().map(|x| x.name.clone()).collect();
            (
                r.type_url.as_str(),
                r.system_version_info.as_str(),
                r.nonce.as_str(),
                names,
                r.removed_resources.clone(),
            )
        })
        .collect()
}

#[test]
fn delta_sends_only_what_changed_and_names_what_went() {
    let v1 = published(1, 7, &[("a", "a1"), ("b", "b1")], "r1");
    let mut s = Session::default();
    let out = s.delta_request(delta(CDS, &[], &[], ""), &v1);
    assert_eq!(
        deltas(&out),
        [(CDS, "7", "1", strings(&["a", "b"]), vec![])]
    );
    let version_of_a = out[0].resources[0].version.clone();
    assert_eq!(version_of_a, resource_version(&any(CDS, "a1")));
    s.delta_request(delta(CDS, &[], &[], "1"), &v1);
    let out = s.delta_request(delta(EDS, &["a", "b"], &[], ""), &v1);
    assert_eq!(
        deltas(&out),
        [(EDS, "7", "2", strings(&["a", "b"]), vec![])]
    );
    s.delta_request(delta(EDS, &[], &[], "2"), &v1);

    // `a` unchanged, `b` gone, `c` new.
    let v2 = published(2, 8, &[("a", "a1"), ("c", "c2")], "r2");
    let out = s.delta_flush(&v2);
    assert_eq!(
        deltas(&out),
        [
            (CDS, "8", "3", strings(&["c"]), strings(&["b"])),
            // The endpoints: `a` unchanged, `b` gone.
            (EDS, "8", "4", vec![], strings(&["b"])),
        ]
    );
    s.delta_request(delta(CDS, &[], &[], "3"), &v2);
    // Envoy's subscription follows (b dropped, c added).
    let out = s.delta_request(delta(EDS, &["c"], &["b"], "4"), &v2);
    assert_eq!(deltas(&out), [(EDS, "8", "5", strings(&["c"]), vec![])]);
}

#[test]
fn delta_an_unchanged_type_does_not_hold_back_the_next() {
    let v1 = published(1, 7, &[("a", "a1")], "r1");
    let mut s = Session::default();
    s.delta_request(delta(CDS, &[], &[], ""), &v1);
    s.delta_request(delta(CDS, &[], &[], "1"), &v1);
    let out = s.delta_request(delta(RDS, &["lightbulb"], &[], ""), &v1);
    assert_eq!(
        deltas(&out),
        [(RDS, "7", "2", strings(&["lightbulb"]), vec![])]
    );
    s.delta_request(delta(RDS, &[], &[], "2"), &v1);
    // Only the routes change: they go out at once.
    let v2 = published(2, 8, &[("a", "a1")], "r2");
    let out = s.delta_flush(&v2);
    assert_eq!(
        deltas(&out),
        [(RDS, "8", "3", strings(&["lightbulb"]), vec![])]
    );
}

#[test]
fn delta_honours_initial_versions_and_reports_a_missing_name_once() {
    let v1 = published(1, 7, &[("a", "a1"), ("b", "b1")], "r1");
    let mut s = Session::default();
    let mut first = delta(CDS, &[], &[], "");
    first.initial_resource_versions = [("a".to_owned(), resource_version(&any(CDS, "a1")))]
        .into_iter()
        .collect();
    let out = s.delta_request(first, &v1);
    assert_eq!(deltas(&out), [(CDS, "7", "1", strings(&["b"]), vec![])]);
    s.delta_request(delta(CDS, &[], &[], "1"), &v1);
    let out = s.delta_request(delta(EDS, &["a", "nope"], &[], ""), &v1);
    assert_eq!(
        deltas(&out),
        [(EDS, "7", "2", strings(&["a"]), strings(&["nope"]))]
    );
    s.delta_request(delta(EDS, &[], &[], "2"), &v1);
    // The same generation again: nothing to say, `nope` already reported.
    assert!(s.delta_flush(&v1).is_empty());
    // Unsubscribed and subscribed again: sent again, as Envoy dropped it.
    s.delta_request(delta(EDS, &[], &["a"], ""), &v1);
    let out = s.delta_request(delta(EDS, &["a"], &[], ""), &v1);
    assert_eq!(deltas(&out), [(EDS, "7", "3", strings(&["a"]), vec![])]);
}

#[test]
fn delta_a_nack_is_counted_and_the_stream_goes_on() {
    let v1 = published(1, 7, &[("a", "a1")], "r1");
    let mut s = Session::default();
    s.delta_request(delta(CDS, &[], &[], ""), &v1);
    let mut rejected = delta(CDS, &[], &[], "1");
    rejected.error_detail = Some(RpcStatus {
        code: 3,
        message: "no".to_owned(),
        ..RpcStatus::default()
    });
    assert!(s.delta_request(rejected, &v1).is_empty());
    assert!(s.types[0].settled(1), "a NACK answers the response");
    let v2 = published(2, 8, &[("a", "a2")], "r2");
    let out = s.delta_flush(&v2);
    assert_eq!(deltas(&out), [(CDS, "8", "2", strings(&["a"]), vec![])]);
}
