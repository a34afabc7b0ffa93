//! The HTTP API, on its own port: `POST /v1/resolve` (a JSON mirror of `Resolver.Resolve`,
//! for curl users), `GET /metrics` (Prometheus), `GET /healthz` (the process is up) and
//! `GET /readyz` (serving; 503 while draining). With `--store`, the config API
//! ([`crate::api`]) is merged into the same server.
//!
//! `POST /v1/resolve` takes and returns the proto3 JSON names of `ResolveRequest` and
//! `ResolveResponse` (`subjectId`; the proto field names such as `subject_id` are accepted
//! too), and answers through the same code as the gRPC call: the same cache, the same
//! metrics, the same errors. An error is `{"error": {"code", "message"}}` with the gRPC
//! code's name and the HTTP status of its class: `INVALID_ARGUMENT` 400, `NOT_FOUND` 404,
//! `FAILED_PRECONDITION` 412. `uint64` fields are JSON numbers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use routing_proto::lightbulb::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cache::ResolveCache;
use crate::error::ErrorCode;
use crate::resolve::Engine;

/// Largest `POST /v1/resolve` body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the HTTP handlers need.
#[derive(Debug, Clone)]
pub struct Http {
    /// The engine of the current rule set.
    pub engine: Arc<ArcSwap<Engine>>,
    /// The resolution cache shared with the gRPC service.
    pub cache: Arc<ResolveCache>,
    /// Renders the Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// Set while serving; cleared when draining starts.
    pub ready: Arc<AtomicBool>,
}

/// A `ResolveRequest` in proto3 JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResolveBody {
    #[serde(default)]
    objective: String,
    #[serde(default)]
    tenant: String,
    #[serde(default, alias = "subject_id")]
    subject_id: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default, alias = "experiment_allocations")]
    experiment_allocations: HashMap<String, String>,
    /// `"live"`, `"synthetic"`, the enum's proto names, or its number.
    #[serde(default, alias = "traffic_class")]
    traffic_class: Option<Value>,
}

/// The HTTP routes.
pub fn router(http: Http) -> Router {
    Router::new()
        .route("/v1/resolve", post(resolve))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(http)
}

async fn resolve(State(http): State<Http>, body: Bytes) -> Response {
    let body: ResolveBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error(
                ErrorCode::InvalidArgument,
                &format!("invalid request body: {e}"),
            );
        }
    };
    let traffic_class = match traffic_class(body.traffic_class.as_ref()) {
        Ok(class) => class,
        Err(message) => return error(ErrorCode::InvalidArgument, &message),
    };
    let request = pb::ResolveRequest {
        objective: body.objective,
        tenant: body.tenant,
        subject_id: body.subject_id,
        attributes: body.attributes,
        experiment_allocations: body.experiment_allocations,
        traffic_class,
    };
    let engine = http.engine.load();
    match crate::grpc::resolve_one(&engine, &http.cache, request) {
        Ok(response) => Json(response_json(&response)).into_response(),
        Err(e) => error(e.code(), &e.to_string()),
    }
}

/// The traffic class as the proto enum's number.
fn traffic_class(value: Option<&Value>) -> Result<i32, String> {
    let class = match value {
        None | Some(Value::Null) => pb::TrafficClass::Unspecified,
        Some(Value::String(name)) => match name.to_ascii_lowercase().as_str() {
            "" | "unspecified" | "traffic_class_unspecified" => pb::TrafficClass::Unspecified,
            "live" | "traffic_class_live" => pb::TrafficClass::Live,
            "synthetic" | "traffic_class_synthetic" => pb::TrafficClass::Synthetic,
            _ => return Err(format!("unknown traffic class {name:?}")),
        },
        // A number goes through as is: an unknown one fails as it does over gRPC.
        Some(Value::Number(n)) => {
            return n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| format!("unknown traffic class {n}"));
        }
        Some(other) => return Err(format!("unknown traffic class {other}")),
    };
    Ok(class as i32)
}

fn response_json(r: &pb::ResolveResponse) -> Value {
    let config = r.objective_config.clone().unwrap_or_default();
    json!({
        "routingKey": r.routing_key,
        "objectiveConfig": {
            "objective": config.objective,
            "modelId": config.model_id,
            "modelVersion": config.model_version,
            "experimentId": config.experiment_id,
            "experimentCell": config.experiment_cell,
            "inputType": config.input_type,
            "parameters": config.parameters,
            "metadata": config.metadata,
        },
        "shadows": r.shadows.iter().map(|s| json!({
            "modelId": s.model_id,
            "routingKey": s.routing_key,
            "samplePercent": s.sample_percent,
        })).collect::<Vec<_>>(),
        "cacheTtlMs": r.cache_ttl_ms,
        "ruleSetVersion": r.rule_set_version,
    })
}

fn error(code: ErrorCode, message: &str) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "error": { "code": code.as_str(), "message": message } })),
    )
        .into_response()
}

async fn metrics(State(http): State<Http>) -> Response {
    crate::metrics::record_cache_entries(http.cache.entry_count());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        http.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(http): State<Http>) -> Response {
    let version = http.engine.load().version();
    if http.ready.load(Ordering::Relaxed) {
        Json(json!({ "ready": true, "version": version })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "version": version })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_classes_are_read_by_name_or_number() {
        assert_eq!(traffic_class(None), Ok(0));
        assert_eq!(traffic_class(Some(&json!("live"))), Ok(1));
        assert_eq!(
            traffic_class(Some(&json!("TRAFFIC_CLASS_SYNTHETIC"))),
            Ok(2)
        );
        assert_eq!(traffic_class(Some(&json!(2))), Ok(2));
        assert!(traffic_class(Some(&json!("bulk"))).is_err());
        assert!(traffic_class(Some(&json!(true))).is_err());
    }

    #[test]
    fn request_bodies_take_proto_json_and_field_names() {
        let camel: ResolveBody =
            serde_json::from_value(json!({ "objective": "O", "subjectId": "s" })).unwrap();
        let snake: ResolveBody =
            serde_json::from_value(json!({ "objective": "O", "subject_id": "s" })).unwrap();
        assert_eq!(camel.subject_id, "s");
        assert_eq!(snake.subject_id, "s");
        assert!(serde_json::from_value::<ResolveBody>(json!({ "objectiv": "O" })).is_err());
    }
}
