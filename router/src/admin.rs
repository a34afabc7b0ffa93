//! The admin API, on its own port: health, readiness, metrics, the config in use, a config
//! push for standalone mode, and the clusters with their endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use service_runtime::secret::Token;

use crate::host::{EJECTED, HealthStatus, UNHEALTHY};
use crate::route::Cluster;
use crate::state::{ConfigSource, Shared};

/// Largest rule set `PUT /config` accepts (a 100,000-route set is about 10 MiB).
const MAX_CONFIG_BYTES: usize = 256 * 1024 * 1024;

/// What the admin handlers need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The router's shared state.
    pub shared: Arc<Shared>,
    /// Renders the Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// When set, `PUT /config` requires `Authorization: Bearer <token>`.
    pub token: Option<Arc<Token>>,
    /// Every endpoint but `/healthz` and `/readyz` requires the token (the admin API
    /// listens on a non-loopback address).
    pub token_everywhere: bool,
}

/// The admin routes.
pub fn router(admin: Admin) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/config", get(get_config).put(put_config))
        .route("/clusters", get(clusters))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_CONFIG_BYTES))
        .with_state(admin)
}

/// Refuses a call without the bearer token where one is needed: `PUT /config` whenever a
/// token is set, and everything behind this layer when `token_everywhere`. The token is
/// compared in constant time and never echoed.
async fn require_token(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    if let Some(token) = &admin.token
        && (admin.token_everywhere || req.method() == Method::PUT)
        && !token.matches_bearer(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
            None,
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    next.run(req).await
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let shared = &admin.shared;
    let table = shared.table.load();
    let ready = shared.ready.load(Ordering::Relaxed) && shared.is_configured();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "version": table.version,
        "generation": table.generation,
        "source": shared.source().as_str(),
        "control_plane_connected": shared.control_plane_connected(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    crate::metrics::refresh_gauges();
    let table = admin.shared.table.load_full();
    for cluster in table.clusters() {
        let active = cluster.endpoints.iter().map(|h| h.active_requests()).sum();
        crate::metrics::record_cluster_active(&cluster.name, active);
        if cluster.eligibility_mask == 0 {
            continue;
        }
        for host in cluster.endpoints.iter() {
            crate::metrics::record_endpoint(
                &cluster.name,
                &host.address,
                !host.has_flag(UNHEALTHY),
                host.has_flag(EJECTED),
            );
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
        .into_response()
}

async fn get_config(State(admin): State<Admin>) -> Response {
    let table = admin.shared.table.load_full();
    let mut resp = Json(json!({
        "version": table.version,
        "generation": table.generation,
        "sha256": table.sha256,
        "routes": table.len(),
        "rule_set": &*table.rule_set,
    }))
    .into_response();
    if let Ok(etag) = format!("\"{}\"", table.version).parse() {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

async fn put_config(State(admin): State<Admin>, body: Bytes) -> Response {
    let rule_set = match models_config::parse_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(e.issues()),
    };
    let table = match admin.shared.try_apply(rule_set, ConfigSource::File) {
        Ok(table) => table,
        Err(e) => return invalid(e.issues()),
    };
    Json(json!({ "version": table.version, "generation": table.generation, "routes": table.len() }))
        .into_response()
}

fn invalid(problems: Vec<models_config::Issue>) -> Response {
    let message = format!(
        "rule set rejected with {} problem(s); the current routes are kept",
        problems.len()
    );
    error(
        StatusCode::BAD_REQUEST,
        "invalid_config",
        &message,
        Some(problems),
    )
}

fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    problems: Option<Vec<models_config::Issue>>,
) -> Response {
    let mut body = json!({ "error": { "code": code, "message": message } });
    if let Some(p) = problems {
        body["error"]["problems"] = json!(p);
    }
    (status, Json(body)).into_response()
}

async fn clusters(State(admin): State<Admin>) -> Response {
    let table = admin.shared.table.load_full();
    let clusters: Vec<_> = table.clusters().map(|c| cluster_json(c)).collect();
    Json(json!({ "version": table.version, "generation": table.generation, "clusters": clusters }))
        .into_response()
}

/// A cluster and its endpoints with their state, as `GET /clusters` shows them.
fn cluster_json(c: &Cluster) -> serde_json::Value {
    let endpoints: Vec<_> = c
        .endpoints
        .iter()
        .zip(c.weights.iter())
        .enumerate()
        .map(|(i, (host, weight))| {
            let (health, last) = if c.health_check.is_some() {
                host.health.snapshot()
            } else {
                (HealthStatus::Unknown, None)
            };
            let ejected_until = host
                .outlier
                .ejected_until_ms()
                .filter(|_| c.outlier.is_some());
            json!({
                "address": &*host.address,
                "weight": weight,
                "active_requests": host.active_requests(),
                "open_connections": host.pool.open_connections(),
                "health": health.as_str(),
                "last_check": last.map(|l| json!({
                    "ok": l.ok,
                    "detail": l.detail,
                    "at_unix_ms": l.at_unix_ms,
                    "duration_ms": l.duration.as_secs_f64() * 1000.0,
                })),
                "ejected": ejected_until.is_some(),
                "ejected_until_unix_ms": ejected_until,
                "times_ejected": host.outlier.times_ejected(),
                "eligible": c.is_eligible(i),
            })
        })
        .collect();
    // The cluster's own counts are kept by its breaker; without one, the endpoints' sum.
    let (in_flight, pending) = if c.breaker.is_some() {
        (
            Some(c.state.in_flight.load(Ordering::Relaxed)),
            Some(c.state.pending.load(Ordering::Relaxed)),
        )
    } else {
        (None, None)
    };
    json!({
        "name": &*c.name,
        "protocol": c.protocol,
        "lb_policy": c.lb_policy,
        "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
        "request_timeout_ms": c.request_timeout.as_millis() as u64,
        "health_check": c.health_check,
        "outlier_detection": c.outlier.as_ref().map(|o| &o.spec),
        "circuit_breaker": c.breaker.as_ref().map(|b| &b.spec),
        "active_requests": in_flight.unwrap_or_else(|| c.endpoints.iter().map(|h| h.active_requests()).sum()),
        "pending_requests": pending.unwrap_or(0),
        "retries_in_flight": c.state.retries.load(Ordering::Relaxed),
        "endpoints": endpoints,
    })
}
