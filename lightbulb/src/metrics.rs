//! Metric names, their descriptions, and the recording helpers.
//!
//! Labels come from the rule set, never straight from a request: a resolve for an objective
//! the rule set does not have is counted under `objective="unknown"`, so a client sending
//! random objectives cannot grow the number of series.

use std::sync::Arc;
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ResolveError;
use crate::resolve::{Engine, Resolution};

/// Resolves answered, by objective, model and outcome (`ok` or the error's label).
pub const RESOLVES_TOTAL: &str = "lightbulb_resolves_total";
/// Time to answer one resolve (cache lookup and, on a miss, rule evaluation).
pub const RESOLVE_DURATION_SECONDS: &str = "lightbulb_resolve_duration_seconds";
/// Resolves answered from the cache.
pub const CACHE_HITS_TOTAL: &str = "lightbulb_cache_hits_total";
/// Resolves that evaluated the rules (and filled the cache).
pub const CACHE_MISSES_TOTAL: &str = "lightbulb_cache_misses_total";
/// Resolutions held in the cache (refreshed on every scrape).
pub const CACHE_ENTRIES: &str = "lightbulb_cache_entries";
/// Version of the rule set in use.
pub const CONFIG_VERSION: &str = "lightbulb_config_version";
/// Rule-set reload attempts by result (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "lightbulb_config_reloads_total";
/// Connections closed because their TLS handshake failed or timed out, by port (`grpc`,
/// `http`).
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "lightbulb_tls_handshake_failures_total";
/// xDS streams open, by protocol (`sotw`, `delta`).
pub const XDS_CLIENTS: &str = "lightbulb_xds_clients";
/// xDS responses sent, by resource type (`cds`, `eds`, `rds`).
pub const XDS_PUSHES_TOTAL: &str = "lightbulb_xds_pushes_total";
/// xDS responses Envoy accepted, by resource type.
pub const XDS_ACKS_TOTAL: &str = "lightbulb_xds_acks_total";
/// xDS responses Envoy rejected, by resource type and node id.
pub const XDS_NACKS_TOTAL: &str = "lightbulb_xds_nacks_total";

/// Label of a resolve whose objective the rule set does not have (or that named none).
pub const UNKNOWN_OBJECTIVE: &str = "unknown";
/// Label of the model of a failed resolve.
pub const NO_MODEL: &str = "none";
/// Outcome label of a successful resolve.
pub const OK: &str = "ok";

/// Histogram buckets for resolve durations, in seconds (resolves take microseconds).
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.05,
];

/// Installs the Prometheus recorder as the process-wide metrics recorder and describes every
/// metric. Call once, before [`crate::Lightbulb::bind`].
///
/// # Errors
///
/// When a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RESOLVE_DURATION_SECONDS.to_string()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Describes every metric once, at startup.
pub fn describe() {
    metrics::describe_counter!(
        RESOLVES_TOTAL,
        "Resolves answered, by objective, model and outcome"
    );
    metrics::describe_histogram!(
        RESOLVE_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer one resolve, cache lookup included"
    );
    metrics::describe_counter!(CACHE_HITS_TOTAL, "Resolves answered from the cache");
    metrics::describe_counter!(
        CACHE_MISSES_TOTAL,
        "Resolves that evaluated the rules and filled the cache"
    );
    metrics::describe_gauge!(CACHE_ENTRIES, "Resolutions held in the cache");
    metrics::describe_gauge!(CONFIG_VERSION, "Version of the rule set in use");
    metrics::describe_counter!(CONFIG_RELOADS_TOTAL, "Rule-set reload attempts by result");
    metrics::describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "Connections closed because their TLS handshake failed or timed out, by port"
    );
    metrics::describe_gauge!(XDS_CLIENTS, "xDS streams open, by protocol");
    metrics::describe_counter!(XDS_PUSHES_TOTAL, "xDS responses sent, by resource type");
    metrics::describe_counter!(
        XDS_ACKS_TOTAL,
        "xDS responses Envoy accepted, by resource type"
    );
    metrics::describe_counter!(
        XDS_NACKS_TOTAL,
        "xDS responses Envoy rejected, by resource type and node id"
    );
}

/// Records one answered resolve. `objective` is what the request named; it becomes a label
/// only when `engine` has that objective.
pub fn record_resolve(
    engine: &Engine,
    objective: &str,
    outcome: Result<&Resolution, &ResolveError>,
    elapsed: Duration,
) {
    let (objective, model, outcome): (SharedString, SharedString, &'static str) = match outcome {
        Ok(resolution) => (
            SharedString::from(Arc::clone(&resolution.config.objective)),
            SharedString::from(Arc::clone(&resolution.config.model_id)),
            OK,
        ),
        Err(err) => (
            objective_label(engine, objective),
            SharedString::const_str(NO_MODEL),
            err.as_label(),
        ),
    };
    metrics::counter!(
        RESOLVES_TOTAL,
        "objective" => objective,
        "model" => model,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(RESOLVE_DURATION_SECONDS).record(elapsed.as_secs_f64());
}

fn objective_label(engine: &Engine, objective: &str) -> SharedString {
    if !objective.is_empty() && engine.has_objective(objective) {
        SharedString::from(objective.to_owned())
    } else {
        SharedString::const_str(UNKNOWN_OBJECTIVE)
    }
}

/// Records the outcome of a rule-set reload.
pub fn record_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// Publishes the version of the rule set now in use.
pub fn record_version(version: u64) {
    // Versions are far below 2^53, where f64 stops being exact.
    metrics::gauge!(CONFIG_VERSION).set(version as f64);
}

/// Publishes the number of cached resolutions; called before a scrape.
pub fn record_cache_entries(entries: u64) {
    metrics::gauge!(CACHE_ENTRIES).set(entries as f64);
}

/// Counts a connection closed because its TLS handshake failed.
pub fn record_tls_handshake_failure(port: crate::tls::Port) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "port" => port.as_label()).increment(1);
}
