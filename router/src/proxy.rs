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
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use models_config::spec::Protocol;

use crate::body::{InFlight, RequestBody, UpstreamBody};
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::{self, ActiveRequest};
use crate::route::{Route, RouteTarget};
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

    // 1–2: key and route. The snapshot guard lives only inside this block.
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

    // 3–4: target and head rewrite.
    let downstream_version = req.version();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::append_forwarded_for(&mut parts.headers, &conn.forwarded_for);
    headers::ensure_request_id(&mut parts.headers);
    let (body, upload_done) = RequestBody::new(body);
    let req = Request::from_parts(parts, body);
    let target = route.pick_target();

    // 5: forward. The route timeout covers connect attempts, fallback and the wait for
    // response headers, and starts once the request body has been read: a client still
    // uploading is not a slow model server.
    let deadline = async {
        if let Some(done) = upload_done {
            let _ = done.await;
        }
        tokio::time::sleep(route.timeout).await;
    };
    let (served_by, result, body_complete) = tokio::select! {
        biased;
        forwarded = forward(&route, target, req, downstream_version) => forwarded,
        () = deadline => (target, Err(ProxyError::UpstreamTimeout), false),
    };

    // 6: respond.
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

/// Sends the request to `target`, then to the route's fallback when no endpoint of the
/// target could be connected to. Returns the target that answered (for metrics) and whether
/// the request body had been read whole.
async fn forward<'r>(
    route: &'r Route,
    target: &'r RouteTarget,
    req: Request<RequestBody>,
    downstream_version: Version,
) -> (
    &'r RouteTarget,
    Result<Response<UpstreamBody>, ProxyError>,
    bool,
) {
    let req = match send_to_cluster(target, req, downstream_version).await {
        Ok(resp) => return (target, Ok(resp), true),
        Err(Failure::Answered(err)) => return (target, Err(err), false),
        Err(Failure::Unreachable(req)) => req,
    };
    match &route.fallback {
        Some(fallback) => {
            fallback.metrics.fell_back();
            // Boxed: the fallback is the cold path, and the common future stays small.
            match Box::pin(send_to_cluster(fallback, *req, downstream_version)).await {
                Ok(resp) => (fallback, Ok(resp), true),
                Err(Failure::Answered(err)) => (fallback, Err(err), false),
                Err(Failure::Unreachable(req)) => (
                    fallback,
                    Err(ProxyError::UpstreamConnect),
                    req.body().is_complete(),
                ),
            }
        }
        None => (
            target,
            Err(ProxyError::UpstreamConnect),
            req.body().is_complete(),
        ),
    }
}

enum Failure {
    /// Nothing was sent anywhere; the request can still go elsewhere.
    Unreachable(Box<Request<RequestBody>>),
    /// The request was consumed; this is the answer.
    Answered(ProxyError),
}

/// Up to two connection attempts on two different endpoints of a cluster.
async fn send_to_cluster(
    target: &RouteTarget,
    req: Request<RequestBody>,
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
        let in_flight = InFlight::start(endpoint);
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
            Ok(resp) => return Ok(resp.map(|inner| UpstreamBody::new(inner, in_flight))),
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
