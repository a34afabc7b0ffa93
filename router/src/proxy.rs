//! The per-request path, a fixed list of phases:
//!
//! 1. **route**: read the routing key from its header, as bytes, and look the route up in the
//!    current table snapshot (the guard is dropped at once); rewrite the head (hop-by-hop
//!    headers out, `x-forwarded-for` and `x-request-id` in);
//! 2. **pick**: the target cluster (a weighted split, if the route has one);
//! 3. for the target, then each cluster of the route's fallback chain while the one before
//!    had no eligible endpoint, was overloaded or could not be connected to:
//!    - **admission**: the cluster's circuit breaker ([`crate::route::Breaker`]), when it has
//!      one;
//!    - **pick**: an eligible endpoint ([`crate::route::Cluster::pick`]: health and
//!      ejection, when configured);
//!    - **forward**: on a pooled connection; a connect failure goes once to another
//!      endpoint; the answer feeds outlier detection ([`crate::outlier`]), when configured;
//! 4. **respond**: hand the upstream response back with its body untouched (it streams
//!    frame by frame, trailers included), or answer with the router's own error.
//!
//! Each feature costs one `Option` (or mask) check when it is not configured. The route
//! timeout covers the whole of phase 3 and starts once the request body has been read.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use models_config::spec::Protocol;

use crate::body::{RequestBody, UpstreamBody};
use crate::error::ProxyError;
use crate::headers;
use crate::host::InFlight;
use crate::metrics::{self, ActiveRequest};
use crate::outlier::Outcome;
use crate::route::{Breaker, Route, RouteTarget};
use crate::state::Shared;
use crate::upstream::SendError;

/// The body of every response the router sends: the upstream's, streamed (holding its
/// endpoint's in-flight count), or the router's own small error body.
pub type ProxyBody = Either<UpstreamBody<InFlight>, Full<Bytes>>;

/// An upstream response on its way to the client.
type Upstream = Response<UpstreamBody<InFlight>>;

/// The hyper service for one downstream connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// The client address as an `x-forwarded-for` value, formatted once per connection.
    forwarded_for: HeaderValue,
}

impl Proxy {
    /// A service for a connection from `remote`.
    pub fn new(shared: Arc<Shared>, remote: SocketAddr) -> Self {
        let forwarded_for = headers::forwarded_for_value(remote.ip());
        Proxy {
            shared,
            remote,
            forwarded_for,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let conn = self.clone();
        Box::pin(async move { Ok(handle(&conn, req).await) })
    }
}

/// Serves one request end to end. Never fails: every error becomes a response.
pub async fn handle(conn: &Proxy, req: Request<Incoming>) -> Response<ProxyBody> {
    let shared: &Shared = &conn.shared;
    let remote = conn.remote;
    let start = Instant::now();
    let _active = ActiveRequest::start();
    let grpc = headers::is_grpc(req.headers());

    // 1: route. The snapshot guard lives only inside this block.
    let route: Arc<Route> = {
        let Some(key) = req.headers().get(&shared.routing_header) else {
            return unrouted(ProxyError::MissingRoutingKey, None, &req, grpc, start);
        };
        let table = shared.table.load();
        match table.route(key.as_bytes()) {
            Some(route) => Arc::clone(route),
            None => {
                let key = Some(key.as_bytes());
                return unrouted(ProxyError::UnknownRoutingKey, key, &req, grpc, start);
            }
        }
    };
    let downstream_version = req.version();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::append_forwarded_for(&mut parts.headers, &conn.forwarded_for);
    headers::ensure_request_id(&mut parts.headers);
    let (body, upload_done) = RequestBody::new(body);
    let req = Request::from_parts(parts, body);

    // 2: pick the target cluster.
    let target = route.pick_target();

    // 3: admission, pick and forward, along the fallback chain. The route timeout covers
    // connect attempts, fallbacks and the wait for response headers, and starts once the
    // request body has been read: a client still uploading is not a slow model server.
    let deadline = pin!(async {
        if let Some(done) = upload_done {
            let _ = done.await;
        }
        tokio::time::sleep(route.timeout).await;
    });
    let (served_by, result, body_complete) =
        forward(&route, target, req, downstream_version, deadline).await;

    // 4: respond.
    let response = match result {
        Ok(mut resp) => {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
            resp.map(Either::Left)
        }
        Err(err) => {
            tracing::debug!(route = %route.key, cluster = %served_by.cluster.name, error = %err, code = err.as_label(), "request failed");
            let mut resp = err.into_response(Some(route.key.as_bytes()), grpc);
            close_if_body_unread(&mut resp, downstream_version, body_complete);
            resp.map(Either::Right)
        }
    };
    let elapsed = start.elapsed();
    served_by.metrics.record(response.status(), elapsed);
    if shared.access_log {
        tracing::info!(
            target: "access",
            client = %remote,
            route = %route.key,
            cluster = %served_by.cluster.name,
            status = response.status().as_u16(),
            duration_us = elapsed.as_micros() as u64,
        );
    }
    response
}

fn unrouted(
    err: ProxyError,
    key: Option<&[u8]>,
    req: &Request<Incoming>,
    grpc: bool,
    start: Instant,
) -> Response<ProxyBody> {
    let mut resp = err.into_response(key, grpc);
    close_if_body_unread(&mut resp, req.version(), req.body().is_end_stream());
    metrics::record_unrouted(resp.status(), start.elapsed());
    resp.map(Either::Right)
}

/// An HTTP/1.1 answer sent before the request body was read whole ends the connection:
/// the unread rest would otherwise be taken for the next request.
fn close_if_body_unread<B>(resp: &mut Response<B>, version: Version, body_complete: bool) {
    if !body_complete && version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// What forwarding came to: the target that answered (or was tried last, for metrics), the
/// answer, and whether the request body had been read whole.
type Forwarded<'r> = (&'r RouteTarget, Result<Upstream, ProxyError>, bool);

/// Sends the request to `target`, then along the route's fallback chain while a cluster
/// could not take it, all within `deadline`.
async fn forward<'r, D: Future<Output = ()>>(
    route: &'r Route,
    target: &'r RouteTarget,
    req: Request<RequestBody>,
    downstream_version: Version,
    mut deadline: Pin<&mut D>,
) -> Forwarded<'r> {
    match send_to_cluster(target, req, downstream_version, deadline.as_mut()).await {
        Ok(resp) => (target, Ok(resp), true),
        Err(Failure::Answered(err)) => (target, Err(err), false),
        Err(Failure::Skipped(why, req)) if route.fallbacks.is_empty() => {
            let complete = req.body().is_complete();
            (target, Err(why), complete)
        }
        // Boxed: the fallback chain is the cold path, and the common future stays small.
        Err(Failure::Skipped(why, req)) => {
            Box::pin(fall_back(
                route,
                target,
                *req,
                why,
                downstream_version,
                deadline,
            ))
            .await
        }
    }
}

/// Tries each fallback cluster in turn (never the one just tried). When none takes the
/// request, the answer is why the last one could not.
async fn fall_back<'r, D: Future<Output = ()>>(
    route: &'r Route,
    first: &'r RouteTarget,
    mut req: Request<RequestBody>,
    mut why: ProxyError,
    downstream_version: Version,
    mut deadline: Pin<&mut D>,
) -> Forwarded<'r> {
    let mut last = first;
    for fallback in route.fallbacks.iter() {
        if Arc::ptr_eq(&fallback.cluster, &first.cluster) {
            continue;
        }
        fallback.metrics.fell_back();
        last = fallback;
        match send_to_cluster(fallback, req, downstream_version, deadline.as_mut()).await {
            Ok(resp) => return (fallback, Ok(resp), true),
            Err(Failure::Answered(err)) => return (fallback, Err(err), false),
            Err(Failure::Skipped(next_why, back)) => {
                why = next_why;
                req = *back;
            }
        }
    }
    let complete = req.body().is_complete();
    (last, Err(why), complete)
}

enum Failure {
    /// The cluster could not take the request (no eligible endpoint, overloaded, or no
    /// endpoint accepted a connection); nothing was sent, and the request can go on.
    Skipped(ProxyError, Box<Request<RequestBody>>),
    /// The request was consumed; this is the answer.
    Answered(ProxyError),
}

/// Admission, pick and forward on one cluster: up to two connection attempts on two
/// different eligible endpoints.
async fn send_to_cluster<D: Future<Output = ()>>(
    target: &RouteTarget,
    req: Request<RequestBody>,
    downstream_version: Version,
    mut deadline: Pin<&mut D>,
) -> Result<Upstream, Failure> {
    let cluster = &*target.cluster;
    let mut permit = match &cluster.breaker {
        None => None,
        Some(breaker) => match breaker.admit() {
            Some(permit) => Some(permit),
            None => return Err(Failure::Skipped(ProxyError::Overloaded, Box::new(req))),
        },
    };
    let use_h2 = match cluster.protocol {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Auto => downstream_version == Version::HTTP_2,
    };
    let mut req = req;
    let mut exclude = None;
    let mut why = ProxyError::NoHealthyUpstream;
    for attempt in 0..2 {
        let Some(i) = cluster.pick(req.headers(), exclude) else {
            break;
        };
        if attempt > 0 {
            target.metrics.retried();
        }
        let host = &cluster.endpoints[i];
        let in_flight = InFlight::start(host, permit.take());
        prepare_uri(&mut req, &host.authority, use_h2);
        let pending = cluster.breaker.as_ref().map(Breaker::pending_limit);
        let timeout = cluster.connect_timeout;
        let send = async move {
            if use_h2 {
                host.pool.send_http2(req, timeout, pending).await
            } else {
                host.pool.send_http1(req, timeout, pending).await
            }
        };
        let sent = tokio::select! {
            biased;
            sent = send => sent,
            () = &mut deadline => {
                observe(target, i, Outcome::GatewayFailure);
                return Err(Failure::Answered(ProxyError::UpstreamTimeout));
            }
        };
        match sent {
            Ok(resp) => {
                if cluster.outlier.is_some() {
                    observe(target, i, outcome_of(&resp));
                }
                return Ok(resp.map(|inner| UpstreamBody::new(inner, in_flight)));
            }
            Err(SendError::Exchange(e)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, error = %e, "upstream exchange failed");
                observe(target, i, Outcome::GatewayFailure);
                return Err(Failure::Answered(ProxyError::UpstreamProtocol));
            }
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, error = %e, "connect failed");
                target.metrics.connect_failed();
                observe(target, i, Outcome::GatewayFailure);
                req = *back;
                exclude = Some(i);
                why = ProxyError::UpstreamConnect;
                permit = in_flight.release();
            }
            Err(SendError::Overloaded(back)) => {
                if let Some(breaker) = &cluster.breaker {
                    breaker.refused_pending();
                }
                return Err(Failure::Skipped(ProxyError::Overloaded, back));
            }
        }
    }
    Err(Failure::Skipped(why, Box::new(req)))
}

/// Feeds outlier detection, when the cluster has it.
#[inline]
fn observe(target: &RouteTarget, endpoint: usize, outcome: Outcome) {
    let cluster = &*target.cluster;
    if let Some(outlier) = &cluster.outlier {
        outlier.observe(
            &cluster.name,
            &cluster.endpoints,
            &cluster.endpoints[endpoint],
            outcome,
        );
    }
}

/// A 5xx, or a gRPC trailers-only `UNAVAILABLE` (14) or `INTERNAL` (13), is a server error.
fn outcome_of(resp: &Response<Incoming>) -> Outcome {
    if resp.status().is_server_error() {
        return Outcome::ServerError;
    }
    match resp.headers().get(headers::GRPC_STATUS) {
        Some(code) if code == "14" || code == "13" => Outcome::ServerError,
        _ => Outcome::Success,
    }
}

/// Puts the URI (and `Host`) in the form the upstream protocol wants: origin-form plus a
/// `Host` header for HTTP/1.1, absolute-form (`:scheme` and `:authority`) for HTTP/2. The
/// client's own authority is kept when it sent one; every part is a cheap `Bytes` clone.
fn prepare_uri(req: &mut Request<RequestBody>, endpoint: &Authority, h2: bool) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let client_authority = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    if h2 {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(client_authority.unwrap_or_else(|| endpoint.clone()));
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).expect("scheme, authority and path form a valid URI");
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        if !req.headers().contains_key(HOST) {
            let authority = client_authority.unwrap_or_else(|| endpoint.clone());
            let value = HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value");
            req.headers_mut().insert(HOST, value);
        }
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
    }
}
