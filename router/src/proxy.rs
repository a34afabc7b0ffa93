//! The per-request path, top to bottom:
//!
//! 1. read the routing key from its header, as bytes;
//! 2. look the route up in the current table snapshot (the guard is dropped at once);
//! 3. pick the target cluster (a weighted split, if the route has one) and an endpoint;
//! 4. rewrite the head: hop-by-hop headers out, `x-forwarded-for` and `x-request-id` in,
//!    URI in the form the upstream protocol wants;
//! 5. forward on a pooled connection; a connect failure goes once to another endpoint, then
//!    to the route's fallback cluster;
//! 6. hand the upstream response back with its body untouched (it streams frame by frame,
//!    trailers included), or answer with the router's own error.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use models_config::spec::Protocol;

use crate::error::ProxyError;
use crate::headers;
use crate::metrics::{self, ActiveRequest};
use crate::route::{Endpoint, Route, RouteTarget};
use crate::state::Shared;
use crate::upstream::SendError;

/// The body of every response the router sends: the upstream's, streamed, or the router's
/// own small error body.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// The hyper service for one downstream connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    remote: SocketAddr,
}

impl Proxy {
    /// A service for a connection from `remote`.
    pub fn new(shared: Arc<Shared>, remote: SocketAddr) -> Self {
        Proxy { shared, remote }
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let remote = self.remote;
        Box::pin(async move { Ok(handle(&shared, remote, req).await) })
    }
}

/// Serves one request end to end. Never fails: every error becomes a response.
pub async fn handle(
    shared: &Shared,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let _active = ActiveRequest::start();
    let grpc = headers::is_grpc(req.headers());

    // 1–2: key and route. The snapshot guard lives only inside this block.
    let route: Arc<Route> = {
        let Some(key) = req.headers().get(&shared.routing_header) else {
            return unrouted(ProxyError::MissingRoutingKey, None, grpc, start);
        };
        let table = shared.table.load();
        match table.route(key.as_bytes()) {
            Some(route) => Arc::clone(route),
            None => {
                return unrouted(
                    ProxyError::UnknownRoutingKey,
                    Some(key.as_bytes()),
                    grpc,
                    start,
                );
            }
        }
    };

    // 3–4: target and head rewrite.
    let downstream_version = req.version();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::append_forwarded_for(&mut parts.headers, remote.ip());
    headers::ensure_request_id(&mut parts.headers);
    let req = Request::from_parts(parts, body);
    let target = route.pick_target();

    // 5: forward, bounded by the route timeout (connect attempts and fallback included).
    let outcome = tokio::time::timeout(
        route.timeout,
        forward(&route, target, req, downstream_version),
    )
    .await;
    let (served_by, result) = match outcome {
        Ok((served_by, result)) => (served_by, result),
        Err(_elapsed) => (target, Err(ProxyError::UpstreamTimeout)),
    };

    // 6: respond.
    let response = match result {
        Ok(mut resp) => {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
            resp.map(Either::Left)
        }
        Err(err) => {
            tracing::debug!(route = %route.key, cluster = %served_by.cluster.name, error = %err, code = err.as_label(), "request failed");
            err.into_response(Some(route.key.as_bytes()), grpc)
                .map(Either::Right)
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
    grpc: bool,
    start: Instant,
) -> Response<ProxyBody> {
    let resp: Response<ProxyBody> = err.into_response(key, grpc).map(Either::Right);
    metrics::record_unrouted(resp.status(), start.elapsed());
    resp
}

/// Sends the request to `target`, then to the route's fallback when no endpoint of the
/// target could be connected to. Returns the target that answered (for metrics).
async fn forward<'r>(
    route: &'r Route,
    target: &'r RouteTarget,
    req: Request<Incoming>,
    downstream_version: Version,
) -> (&'r RouteTarget, Result<Response<UpstreamBody>, ProxyError>) {
    let req = match send_to_cluster(target, req, downstream_version).await {
        Ok(resp) => return (target, Ok(resp)),
        Err(Failure::Answered(err)) => return (target, Err(err)),
        Err(Failure::Unreachable(req)) => req,
    };
    match &route.fallback {
        Some(fallback) => {
            fallback.metrics.fell_back();
            match send_to_cluster(fallback, *req, downstream_version).await {
                Ok(resp) => (fallback, Ok(resp)),
                Err(Failure::Answered(err)) => (fallback, Err(err)),
                Err(Failure::Unreachable(_)) => (fallback, Err(ProxyError::UpstreamConnect)),
            }
        }
        None => (target, Err(ProxyError::UpstreamConnect)),
    }
}

enum Failure {
    /// Nothing was sent anywhere; the request can still go elsewhere.
    Unreachable(Box<Request<Incoming>>),
    /// The request was consumed; this is the answer.
    Answered(ProxyError),
}

/// Up to two connection attempts on two different endpoints of a cluster.
async fn send_to_cluster(
    target: &RouteTarget,
    req: Request<Incoming>,
    downstream_version: Version,
) -> Result<Response<UpstreamBody>, Failure> {
    let cluster = &target.cluster;
    let n = cluster.endpoints.len();
    let mut req = req;
    let mut exclude = None;
    let attempts = if n > 1 { 2 } else { 1 };
    for attempt in 0..attempts {
        let i = cluster.balancer.pick(n, req.headers(), exclude, |i| {
            cluster.endpoints[i].active_requests()
        });
        let endpoint = &cluster.endpoints[i];
        let guard = InFlight::start(endpoint);
        let use_h2 = match cluster.protocol {
            Protocol::Http1 => false,
            Protocol::Http2 => true,
            Protocol::Auto => downstream_version == Version::HTTP_2,
        };
        prepare_uri(&mut req, &endpoint.authority, use_h2);
        let sent = if use_h2 {
            endpoint.pool.send_http2(req, cluster.connect_timeout).await
        } else {
            endpoint.pool.send_http1(req, cluster.connect_timeout).await
        };
        match sent {
            Ok(resp) => {
                return Ok(resp.map(|inner| UpstreamBody {
                    inner,
                    _in_flight: guard,
                }));
            }
            Err(SendError::Exchange(e)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream exchange failed");
                return Err(Failure::Answered(ProxyError::UpstreamProtocol));
            }
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "connect failed");
                target.metrics.connect_failed();
                req = *back;
                exclude = Some(i);
                if attempt + 1 < attempts {
                    target.metrics.retried();
                }
            }
        }
    }
    Err(Failure::Unreachable(Box::new(req)))
}

/// Puts the URI (and `Host`) in the form the upstream protocol wants: origin-form plus a
/// `Host` header for HTTP/1.1, absolute-form (`:scheme` and `:authority`) for HTTP/2. The
/// client's own authority is kept when it sent one; every part is a cheap `Bytes` clone.
fn prepare_uri(req: &mut Request<Incoming>, endpoint: &http::uri::Authority, h2: bool) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let client_authority = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
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

/// Counts a request against its endpoint (least request, `GET /clusters`) until the
/// response body ends or is dropped.
#[derive(Debug)]
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn start(endpoint: &Arc<Endpoint>) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(endpoint))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body passed through frame by frame, holding the endpoint's
    /// in-flight count until it ends.
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        _in_flight: InFlight,
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
