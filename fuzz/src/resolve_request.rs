//! `resolve_request`: Lightbulb's resolve requests as they arrive, against the engine of
//! `models-config/examples/full.json`. The first byte picks the decoder (its value modulo
//! 3), the rest is the message:
//!
//! - `0`: a protobuf `lightbulb.v1.ResolveRequest`, answered by `Resolver.Resolve`
//!   ([`lightbulb::ResolverService`], through its cache);
//! - `1`: a protobuf `ResolveBatchRequest`, answered by `Resolver.ResolveBatch`;
//! - `2`: a JSON body of `POST /v1/resolve` ([`lightbulb::http::router`]).
//!
//! Properties, beside "never panics":
//! - a decoded message encodes and decodes to itself;
//! - the service (cache included) answers exactly what the engine answers for the same
//!   context, error status included;
//! - the cache is sound: every variant of the context with the same [`lightbulb::CacheKey`]
//!   resolves to the same answer or error (what the cache serves in its place);
//! - a batch answers every request in order, each as a single call would;
//! - the HTTP answer is JSON, and a 200 carries the routing key the engine picks.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use futures_util::FutureExt as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use lightbulb::http::Http;
use lightbulb::{Engine, RequestContext, ResolveCache, ResolverService};
use models_config::spec::TrafficClass;
use prost::Message as _;
use routing_proto::lightbulb::v1 as pb;
use routing_proto::lightbulb::v1::resolver_server::Resolver as _;
use tower::ServiceExt as _;

/// The rule set the engine is built from.
const RULES: &str = include_str!("../../models-config/examples/full.json");

struct Fixture {
    engine: Arc<ArcSwap<Engine>>,
    service: ResolverService,
    http: Http,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rules = models_config::parse(RULES).expect("the example rule set is valid");
        let engine = Arc::new(ArcSwap::from_pointee(Engine::new(&rules)));
        // A cache kept across inputs: an answer cached for one input is served to a later
        // input with the same key, and must be the engine's answer for that one too.
        let cache = Arc::new(ResolveCache::new(4096, Duration::from_secs(3600)));
        let service = ResolverService::new(Arc::clone(&engine)).with_cache(Arc::clone(&cache));
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let http = Http {
            engine: Arc::clone(&engine),
            cache,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime starts");
        Fixture {
            engine,
            service,
            http,
            runtime,
        }
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => single(message),
        1 => batch(message),
        _ => json(message),
    }
}

fn single(message: &[u8]) {
    let Ok(request) = pb::ResolveRequest::decode(message) else {
        return;
    };
    round_trips(&request);
    let fixture = fixture();
    let answer = fixture
        .service
        .resolve(tonic::Request::new(request.clone()))
        .now_or_never()
        .expect("Resolve does not wait on anything")
        .map(tonic::Response::into_inner);
    let expected = engine_answer(&fixture.engine.load_full(), request);
    assert_eq!(
        outcome(&answer),
        expected,
        "the service answers as the engine does"
    );
}

fn batch(message: &[u8]) {
    let Ok(request) = pb::ResolveBatchRequest::decode(message) else {
        return;
    };
    round_trips(&request);
    let fixture = fixture();
    let requests = request.requests.clone();
    let answer = fixture
        .service
        .resolve_batch(tonic::Request::new(request))
        .now_or_never()
        .expect("ResolveBatch does not wait on anything");
    let results = match answer {
        Ok(response) => response.into_inner().results,
        Err(status) => {
            assert!(
                requests.len() > lightbulb::grpc::MAX_BATCH,
                "only an oversized batch is refused whole: {status:?}"
            );
            return;
        }
    };
    assert_eq!(results.len(), requests.len(), "one result per request");
    let engine = fixture.engine.load_full();
    for (result, request) in results.into_iter().zip(requests) {
        let got = match result.outcome.expect("every result has an outcome") {
            pb::resolve_result::Outcome::Response(response) => Ok(response),
            pb::resolve_result::Outcome::Error(failure) => Err((failure.code, failure.message)),
        };
        assert_eq!(
            got,
            engine_answer(&engine, request),
            "each as a single call"
        );
    }
}

fn json(body: &[u8]) {
    let fixture = fixture();
    let request = Request::post("/v1/resolve")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a fixed request head is valid");
    let app = lightbulb::http::router(fixture.http.clone());
    let (status, body) = fixture.runtime.block_on(async {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a response body in memory is read")
            .to_bytes();
        (status, body)
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&body) else {
        // axum's own rejection of a body it cannot take (too large) is plain text.
        assert!(
            status.is_client_error(),
            "an answer that is not JSON: {status}"
        );
        return;
    };
    if status == StatusCode::OK {
        assert!(
            answer["routingKey"].is_string(),
            "a 200 names the routing key: {answer}"
        );
    } else {
        assert!(
            answer["error"]["code"].is_string(),
            "an error names its code: {answer}"
        );
    }
}

/// Encoding what was decoded and decoding it again gives the same message.
fn round_trips<M: prost::Message + Default + PartialEq>(message: &M) {
    let bytes = message.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("an encoded message decodes");
    assert!(back == *message, "a message survives encode + decode");
}

/// Outcomes compared as a client sees them: the response, or the status code and message.
type Outcome = Result<pb::ResolveResponse, (i32, String)>;

fn outcome(answer: &Result<pb::ResolveResponse, tonic::Status>) -> Outcome {
    match answer {
        Ok(response) => Ok(response.clone()),
        Err(status) => Err((status.code() as i32, status.message().to_owned())),
    }
}

/// What the engine alone answers for `request` (no cache), after checking that every
/// variant of its context with the same cache key resolves the same way.
fn engine_answer(engine: &Arc<Engine>, request: pb::ResolveRequest) -> Outcome {
    let ctx = match RequestContext::try_from(request) {
        Ok(ctx) => ctx,
        Err(err) => {
            let status = tonic::Status::from(err);
            return Err((status.code() as i32, status.message().to_owned()));
        }
    };
    let resolved = engine.resolve(&ctx);
    if let Ok(key) = engine.cache_key(&ctx) {
        for variant in variants(&ctx) {
            if engine.cache_key(&variant).as_ref() == Ok(&key) {
                assert_eq!(
                    engine.resolve(&variant),
                    resolved,
                    "contexts with one cache key resolve alike:\n{ctx:?}\n{variant:?}"
                );
            }
        }
    } else {
        assert!(resolved.is_err(), "a context without a key has no answer");
    }
    match resolved {
        Ok(resolution) => Ok(pb::ResolveResponse::from(&resolution)),
        Err(err) => {
            let status = tonic::Status::from(err);
            Err((status.code() as i32, status.message().to_owned()))
        }
    }
}

/// Contexts that differ from `ctx` in one input each: the ones the objective does not read
/// share its cache key.
fn variants(ctx: &RequestContext) -> Vec<RequestContext> {
    let mut out = Vec::new();
    let with = |f: &dyn Fn(&mut RequestContext)| {
        let mut v = ctx.clone();
        f(&mut v);
        v
    };
    out.push(with(&|v| v.tenant = None));
    out.push(with(&|v| v.tenant = Some("kids".to_owned())));
    out.push(with(&|v| v.tenant = Some("payments".to_owned())));
    out.push(with(&|v| v.subject_id = None));
    out.push(with(&|v| v.subject_id = Some("subject-7".to_owned())));
    out.push(with(&|v| {
        v.traffic_class = match v.traffic_class {
            TrafficClass::Live => TrafficClass::Synthetic,
            _ => TrafficClass::Live,
        }
    }));
    out.push(with(&|v| v.attributes.clear()));
    out.push(with(&|v| v.experiment_allocations.clear()));
    for name in ctx.attributes.keys().take(4) {
        out.push(with(&|v| {
            v.attributes.remove(name);
        }));
        out.push(with(&|v| {
            v.attributes.insert(name.clone(), "other".to_owned());
        }));
    }
    for name in ctx.experiment_allocations.keys().take(4) {
        out.push(with(&|v| {
            v.experiment_allocations.remove(name);
        }));
    }
    out
}
