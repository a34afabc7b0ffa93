//! The `lightbulb.v1` gRPC services: proto ↔ domain conversion, nothing else.
//!
//! - [`ResolverService`] (`Resolver`): `ResolveRequest` → [`RequestContext`] (`TryFrom`,
//!   rejecting an unknown traffic class) → the current [`Engine`] (one `ArcSwap` load) →
//!   the [`ResolveCache`], which answers or asks the engine → [`Resolution`] →
//!   `ResolveResponse`. Errors become statuses only through
//!   `From<ResolveError> for Status` in [`crate::error`].
//! - [`RoutingConfigService`] (`RoutingConfig`): follows a `tokio::sync::watch` channel of
//!   accepted rule sets and streams each as a [`routing_snapshot`].

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::Stream;
use models_config::ValidRuleSet;
use models_config::spec::{RuleSet, TrafficClass};
use routing_proto::lightbulb::v1 as pb;
use service_runtime::otlp::{self, AttrValue, SpanEnd, SpanName, SpanStart, Tracer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::cache::ResolveCache;
use crate::error::ResolveError;
use crate::objective::ShadowTarget;
use crate::resolve::{Engine, RequestContext, Resolution};

/// Most requests one `ResolveBatch` call may carry.
pub const MAX_BATCH: usize = 1_000;

/// The `Resolver` service over a swappable [`Engine`].
///
/// Cheap to clone; every clone reads the same engine. Each call loads the engine once, so
/// the whole call, batch included, sees one rule-set version even while a reload swaps in
/// the next.
#[derive(Debug, Clone)]
pub struct ResolverService {
    /// The engine of the current rule-set version; replaced whole on reload.
    engine: Arc<ArcSwap<Engine>>,
    /// Answers already computed; disabled unless [`ResolverService::with_cache`] set one.
    cache: Arc<ResolveCache>,
    /// Records one span per sampled call, with `--otlp-endpoint`.
    tracer: Option<Arc<Tracer>>,
}

// === impl ResolverService ===

impl ResolverService {
    /// A service answering from whatever engine `engine` holds at the time of each call.
    /// Every call evaluates the rules; see [`ResolverService::with_cache`].
    pub fn new(engine: Arc<ArcSwap<Engine>>) -> Self {
        Self {
            engine,
            cache: Arc::new(ResolveCache::disabled()),
            tracer: None,
        }
    }

    /// Records a span for every sampled `Resolve` and `ResolveBatch` call through `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Starts the span of a call, when it is sampled.
    fn span<T>(&self, request: &Request<T>) -> Option<(&Tracer, SpanStart, Option<String>)> {
        let tracer = self.tracer.as_deref()?;
        let metadata = request.metadata();
        let parent = metadata.get(otlp::TRACEPARENT).map(|v| v.as_bytes());
        let start = tracer.start(parent)?;
        let state = metadata
            .get(otlp::TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Some((tracer, start, state))
    }

    /// Answers through `cache` (shared with whoever invalidates it on reload).
    pub fn with_cache(mut self, cache: Arc<ResolveCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The tonic server for this service, to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> pb::resolver_server::ResolverServer<Self> {
        pb::resolver_server::ResolverServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::resolver_server::Resolver for ResolverService {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let span = self.span(&request);
        let request = request.into_inner();
        let asked = span
            .is_some()
            .then(|| (request.objective.clone(), request.tenant.clone()));
        let engine = self.engine.load();
        let result = resolve_one(&engine, &self.cache, request);
        if let (Some((tracer, start, trace_state)), Some((objective, tenant))) = (span, asked) {
            let mut attributes = Vec::with_capacity(8);
            attributes.push(("objective", AttrValue::Owned(objective)));
            if !tenant.is_empty() {
                attributes.push(("tenant", AttrValue::Owned(tenant)));
            }
            attributes.push(("rule_set_version", AttrValue::Int(engine.version() as i64)));
            let (code, error) = match &result {
                Ok(response) => {
                    attributes.push((
                        "routing_key",
                        AttrValue::Owned(response.routing_key.clone()),
                    ));
                    (tonic::Code::Ok, None)
                }
                Err(err) => {
                    let code = err.code().grpc();
                    // Only a server fault makes a server span an error; a bad request is not.
                    let fault = matches!(code, tonic::Code::Internal | tonic::Code::Unavailable);
                    (code, fault.then(|| err.to_string()))
                }
            };
            finish_span(
                tracer,
                start,
                trace_state,
                "lightbulb.v1.Resolver/Resolve",
                attributes,
                code,
                error,
            );
        }
        Ok(Response::new(result?))
    }

    async fn resolve_batch(
        &self,
        request: Request<pb::ResolveBatchRequest>,
    ) -> Result<Response<pb::ResolveBatchResponse>, Status> {
        let span = self.span(&request);
        let requests = request.into_inner().requests;
        let size = requests.len();
        let answered = self.resolve_all(requests);
        if let Some((tracer, start, trace_state)) = span {
            let attributes = vec![("batch_size", AttrValue::Int(size as i64))];
            let code = answered
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
            finish_span(
                tracer,
                start,
                trace_state,
                "lightbulb.v1.Resolver/ResolveBatch",
                attributes,
                code,
                None,
            );
        }
        let results = answered?;
        Ok(Response::new(pb::ResolveBatchResponse { results }))
    }
}

impl ResolverService {
    /// The answers to one batch, in order; a batch over [`MAX_BATCH`] is refused whole.
    fn resolve_all(
        &self,
        requests: Vec<pb::ResolveRequest>,
    ) -> Result<Vec<pb::ResolveResult>, Status> {
        if requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch of {} requests, at most {MAX_BATCH} are allowed",
                requests.len()
            )));
        }
        let engine = self.engine.load();
        let results = requests
            .into_iter()
            .map(|request| {
                let outcome = match resolve_one(&engine, &self.cache, request) {
                    Ok(response) => pb::resolve_result::Outcome::Response(response),
                    Err(err) => pb::resolve_result::Outcome::Error(pb::ResolveFailure {
                        code: err.code().grpc() as i32,
                        message: err.to_string(),
                    }),
                };
                pb::ResolveResult {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(results)
    }
}

/// Ends the span of the `Resolver` call `name` (`lightbulb.v1.Resolver/METHOD`): the RPC
/// attributes and status code added to the call's own `attributes`.
fn finish_span(
    tracer: &Tracer,
    start: SpanStart,
    trace_state: Option<String>,
    name: &'static str,
    mut attributes: Vec<(&'static str, AttrValue)>,
    code: tonic::Code,
    error: Option<String>,
) {
    let method = name.rsplit_once('/').map_or(name, |(_, method)| method);
    attributes.extend([
        ("rpc.system", AttrValue::Static("grpc")),
        ("rpc.service", AttrValue::Static("lightbulb.v1.Resolver")),
        ("rpc.method", AttrValue::Static(method)),
        ("rpc.grpc.status_code", AttrValue::Int(code as i64)),
    ]);
    tracer.finish(
        start,
        SpanEnd {
            name: SpanName::Static(name),
            attributes,
            error,
            trace_state,
        },
    );
}

/// One request: converted, answered through the cache, counted in the metrics. The HTTP
/// mirror (`POST /v1/resolve`) answers through this too.
pub(crate) fn resolve_one(
    engine: &Arc<Engine>,
    cache: &ResolveCache,
    request: pb::ResolveRequest,
) -> Result<pb::ResolveResponse, ResolveError> {
    if pb::TrafficClass::try_from(request.traffic_class).is_err() {
        let err = ResolveError::UnknownTrafficClass {
            value: request.traffic_class,
        };
        crate::metrics::record_resolve(
            engine,
            &request.objective,
            Err(&err),
            std::time::Duration::ZERO,
        );
        return Err(err);
    }
    let ctx = RequestContext::try_from(request)?;
    cache
        .resolve(engine, &ctx)
        .map(|answer| pb::ResolveResponse::from(&*answer))
}

/// Empty proto3 strings mean "not set".
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::ResolveRequest> for RequestContext {
    type Error = ResolveError;

    /// Moves the request's strings into a context (no copies). `TRAFFIC_CLASS_UNSPECIFIED`
    /// is live traffic.
    fn try_from(request: pb::ResolveRequest) -> Result<Self, Self::Error> {
        let traffic_class = match pb::TrafficClass::try_from(request.traffic_class) {
            Ok(pb::TrafficClass::Unspecified | pb::TrafficClass::Live) => TrafficClass::Live,
            Ok(pb::TrafficClass::Synthetic) => TrafficClass::Synthetic,
            Err(_) => {
                return Err(ResolveError::UnknownTrafficClass {
                    value: request.traffic_class,
                });
            }
        };
        Ok(Self {
            objective: request.objective,
            tenant: non_empty(request.tenant),
            subject_id: non_empty(request.subject_id),
            attributes: request.attributes,
            experiment_allocations: request.experiment_allocations,
            traffic_class,
        })
    }
}

impl From<Resolution> for pb::ResolveResponse {
    fn from(r: Resolution) -> Self {
        Self::from(&r)
    }
}

impl From<&Resolution> for pb::ResolveResponse {
    fn from(r: &Resolution) -> Self {
        let config = &r.config;
        let (experiment_id, experiment_cell) = match &config.experiment {
            Some(e) => (e.experiment.to_string(), e.cell.to_string()),
            None => (String::new(), String::new()),
        };
        Self {
            routing_key: r.routing_key.to_string(),
            objective_config: Some(pb::ObjectiveConfig {
                objective: config.objective.to_string(),
                model_id: config.model_id.to_string(),
                model_version: config.model_version.to_string(),
                experiment_id,
                experiment_cell,
                input_type: config.input_type.to_string(),
                parameters: map(&config.parameters),
                metadata: map(&config.metadata),
            }),
            shadows: r.shadows.iter().map(pb::ShadowTarget::from).collect(),
            // A TTL is at most a day (validated), far below u64::MAX milliseconds.
            cache_ttl_ms: u64::try_from(r.cache_ttl.as_millis()).unwrap_or(u64::MAX),
            rule_set_version: r.rule_set_version,
        }
    }
}

impl From<&ShadowTarget> for pb::ShadowTarget {
    fn from(shadow: &ShadowTarget) -> Self {
        Self {
            model_id: shadow.model_id.to_string(),
            routing_key: shadow.routing_key.to_string(),
            sample_percent: shadow.sample_percent,
        }
    }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The `RoutingConfig` service: streams the routing part of every accepted rule set.
///
/// Each `Watch` call gets the current rule set at once, then the newest one after every
/// change. A watcher that falls behind skips straight to the latest version, which is all a
/// router needs since every snapshot is complete. The stream ends when the publishing side
/// (the `watch::Sender`) is dropped, i.e. on shutdown.
#[derive(Debug, Clone)]
pub struct RoutingConfigService {
    /// Accepted rule sets; the store's publisher holds the sender.
    rules: watch::Receiver<ValidRuleSet>,
}

/// The stream a `Watch` call returns.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::RoutingSnapshot, Status>> + Send>>;

// === impl RoutingConfigService ===

impl RoutingConfigService {
    /// A service streaming the rule sets published on `rules`.
    pub fn new(rules: watch::Receiver<ValidRuleSet>) -> Self {
        Self { rules }
    }

    /// The tonic server for this service, to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> pb::routing_config_server::RoutingConfigServer<Self> {
        pb::routing_config_server::RoutingConfigServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::routing_config_server::RoutingConfig for RoutingConfigService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        tracing::info!(node_id = %request.get_ref().node_id, peer = ?peer, "routing config watch opened");
        let mut rules = self.rules.clone();
        // The current value counts as unseen, so the first poll sends it without waiting.
        rules.mark_changed();
        let stream = futures_util::stream::unfold(rules, |mut rules| async move {
            // Err: the sender is gone, so the server is shutting down; end the stream.
            rules.changed().await.ok()?;
            let snapshot = routing_snapshot(&rules.borrow_and_update());
            Some((snapshot, rules))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The routing part of `rules` as a `RoutingSnapshot`: its version, and `rule_set_json`
/// holding a rule set with the same version, clusters, routes and tenants (what routers
/// act on), and nothing else, in the
/// models-config format that `router --config` reads.
///
/// # Errors
///
/// `INTERNAL` if the rule set cannot be written as JSON, which serde_json only does for
/// non-string map keys or a failing `Serialize`, neither of which a rule set has.
pub fn routing_snapshot(rules: &RuleSet) -> Result<pb::RoutingSnapshot, Status> {
    let routing = RuleSet {
        version: rules.version,
        clusters: rules.clusters.clone(),
        routes: rules.routes.clone(),
        tenants: rules.tenants.clone(),
        ..RuleSet::default()
    };
    let rule_set_json = serde_json::to_string(&routing)
        .map_err(|err| Status::internal(format!("cannot write the routing snapshot: {err}")))?;
    Ok(pb::RoutingSnapshot {
        version: rules.version,
        rule_set_json,
    })
}

#[cfg(test)]
mod tests;
