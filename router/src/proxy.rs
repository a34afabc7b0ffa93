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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::CONNECTION;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use models_config::spec::Protocol;
use service_runtime::otlp::{self, AttrValue, SpanEnd, SpanName, SpanStart, Tracer};
use tokio::sync::oneshot;

use crate::body::replay::Replayer;
use crate::body::{BodyMeter, Finish, RequestBody, Source, Upload, UpstreamBody};
use crate::error::ProxyError;
use crate::framing::Activity;
use crate::headers;
use crate::headers::{OwnHeaders, SavedHeaders, TrafficClass};
use crate::host::InFlight;
use crate::metrics::{self, ActiveRequest, PairHandles};
use crate::outlier::Outcome;
use crate::retry::{RetryPermit, RetryPolicy};
use crate::route::{Cluster, Route, RouteTarget};
use crate::state::Shared;
use crate::tenant::{Refusal, Tenant, TenantPermit};
use crate::timer;
use crate::upgrade;
use crate::upstream::{SendError, Transport};

/// The body of every response the router sends: the upstream's, streamed (its guard holding
/// the endpoint's and the tenant's in-flight counts, and counting it when it ends), or the
/// router's own small error body.
pub type ProxyBody = Either<UpstreamBody<ResponseGuard>, Full<Bytes>>;

/// An upstream answer on its way to the client: its head (the body not read), the
/// endpoint's in-flight count, and how long the upstream took to answer.
type Upstream = (Response<Incoming>, InFlight, Duration);

/// What a proxied response holds until its body ends: the in-flight counts, its metric
/// handles (bytes, gRPC status), and its access-log line and span, completed once the bytes
/// are known.
#[derive(Debug)]
pub struct ResponseGuard {
    // The tenant's place is given back first: once the endpoint shows the request ended,
    // so has the tenant.
    _tenant: Option<TenantPermit>,
    in_flight: InFlight,
    metrics: Arc<PairHandles>,
    grpc: bool,
    log: Option<Box<AccessLine>>,
}

/// The access-log line and the span of one proxied answer, completed when its body ends.
#[derive(Debug)]
struct AccessLine {
    /// Whether a line is written (`--access-log`); the span may be recorded without one.
    write: bool,
    span: Option<RequestSpan>,
    client: SocketAddr,
    route: Arc<str>,
    cluster: Arc<str>,
    tenant: Option<Arc<str>>,
    class: TrafficClass,
    status: u16,
    grpc_status: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    bytes_in: Option<Arc<AtomicU64>>,
    start: Instant,
    upstream: Duration,
}

impl Finish for ResponseGuard {
    fn finish(&mut self, bytes: u64, trailers: Option<&HeaderMap>) {
        self.metrics.response_bytes(bytes);
        let trailer_status = trailers.and_then(|t| t.get(headers::GRPC_STATUS));
        if self.grpc
            && let Some(code) = trailer_status.and_then(headers::grpc_code)
        {
            self.metrics.grpc(code);
        }
        let Some(mut line) = self.log.take() else {
            return;
        };
        let grpc_status = trailer_status.or(line.grpc_status.as_ref());
        let text = |v: Option<&HeaderValue>| {
            v.and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let endpoint = &self.in_flight.host().address;
        if line.write {
            tracing::info!(
                target: "access",
                client = %line.client,
                request_id = %text(line.request_id.as_ref()),
                route = %line.route,
                cluster = %line.cluster,
                endpoint = %endpoint,
                tenant = line.tenant.as_deref().unwrap_or(""),
                traffic_class = line.class.as_str(),
                status = line.status,
                grpc_status = %text(grpc_status),
                bytes_in = line.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed)),
                bytes_out = bytes,
                duration_us = line.start.elapsed().as_micros() as u64,
                upstream_us = line.upstream.as_micros() as u64,
            );
        }
        if let Some(span) = line.span.take() {
            span.finish(SpanFacts {
                route: Some(&line.route),
                cluster: Some(&line.cluster),
                endpoint: Some(endpoint),
                tenant: line.tenant.as_ref(),
                class: line.class,
                status: line.status,
                grpc_status: grpc_status.and_then(headers::grpc_code),
                error_code: None,
                bytes_out: Some(bytes),
            });
        }
    }
}

/// The span of a sampled request (with `--otlp-endpoint`), from its arrival.
#[derive(Debug)]
struct RequestSpan {
    tracer: Arc<Tracer>,
    start: SpanStart,
    method: Method,
    trace_state: Option<HeaderValue>,
}

/// What a request's span says about it once answered.
struct SpanFacts<'a> {
    route: Option<&'a Arc<str>>,
    cluster: Option<&'a Arc<str>>,
    endpoint: Option<&'a Arc<str>>,
    tenant: Option<&'a Arc<str>>,
    class: TrafficClass,
    status: u16,
    grpc_status: Option<u8>,
    /// The router's own error code, for its own answers.
    error_code: Option<&'static str>,
    bytes_out: Option<u64>,
}

impl SpanFacts<'_> {
    /// The router's own answer `err` (to a gRPC request, when `grpc`), before anything of
    /// the route is known.
    fn own_answer(err: ProxyError, grpc: bool, class: TrafficClass, status: StatusCode) -> Self {
        SpanFacts {
            route: None,
            cluster: None,
            endpoint: None,
            tenant: None,
            class,
            status: status.as_u16(),
            grpc_status: grpc.then(|| err.grpc_status()),
            error_code: Some(err.as_label()),
            bytes_out: None,
        }
    }
}

impl RequestSpan {
    /// Starts the span of a request, when it is sampled.
    #[inline]
    fn start(tracer: Option<&Arc<Tracer>>, req: &Request<Incoming>) -> Option<Self> {
        let tracer = tracer?;
        let start = tracer.start(
            req.headers()
                .get(otlp::TRACEPARENT)
                .map(HeaderValue::as_bytes),
        )?;
        Some(RequestSpan {
            tracer: Arc::clone(tracer),
            start,
            method: req.method().clone(),
            trace_state: req.headers().get(otlp::TRACESTATE).cloned(),
        })
    }

    #[cold]
    fn finish(self, facts: SpanFacts<'_>) {
        let route = match facts.route {
            Some(route) => AttrValue::Shared(Arc::clone(route)),
            None => AttrValue::Static(metrics::UNKNOWN_ROUTE),
        };
        let method = method_value(&self.method);
        let name = SpanName::Joined(method.clone(), route.clone());
        let mut attributes = Vec::with_capacity(10);
        attributes.extend([
            ("http.request.method", method),
            ("route", route),
            ("traffic_class", AttrValue::Static(facts.class.as_str())),
            (
                "http.response.status_code",
                AttrValue::Int(i64::from(facts.status)),
            ),
        ]);
        if let Some(cluster) = facts.cluster {
            attributes.push(("cluster", AttrValue::Shared(Arc::clone(cluster))));
        }
        if let Some(endpoint) = facts.endpoint {
            attributes.push(("endpoint", AttrValue::Shared(Arc::clone(endpoint))));
        }
        if let Some(tenant) = facts.tenant {
            attributes.push(("tenant", AttrValue::Shared(Arc::clone(tenant))));
        }
        if let Some(code) = facts.grpc_status {
            attributes.push(("rpc.grpc.status_code", AttrValue::Int(i64::from(code))));
        }
        if let Some(code) = facts.error_code {
            attributes.push(("error.type", AttrValue::Static(code)));
        }
        if let Some(bytes) = facts.bytes_out {
            attributes.push(("http.response.body.size", AttrValue::Int(bytes as i64)));
        }
        // A server span is an error for a 5xx, or for a gRPC status that means the server
        // failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
        let error = if let Some(code) = facts.error_code.filter(|_| facts.status >= 500) {
            Some(code.to_owned())
        } else if facts.status >= 500 {
            Some(format!("HTTP {}", facts.status))
        } else {
            facts
                .grpc_status
                .filter(|c| matches!(c, 2 | 4 | 12 | 13 | 14 | 15))
                .map(|c| format!("gRPC status {c}"))
        };
        let trace_state = self
            .trace_state
            .and_then(|v| v.to_str().ok().map(str::to_owned));
        self.tracer.finish(
            self.start,
            SpanEnd {
                name,
                attributes,
                error,
                trace_state,
            },
        );
    }
}

/// A request method as a span value: the standard ones without an allocation.
fn method_value(method: &Method) -> AttrValue {
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match known.iter().position(|m| m == method) {
        Some(i) => AttrValue::Static(NAMES[i]),
        None => AttrValue::Owned(method.to_string()),
    }
}

/// The hyper service for one downstream connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// The client address as an `x-forwarded-for` value, formatted once per connection.
    forwarded_for: HeaderValue,
    /// The connection's activity, for its idle timeout (`None`: no timeout).
    activity: Option<Arc<Activity>>,
}

impl Proxy {
    /// A service for a connection from `remote`, counting its requests in `activity`.
    pub fn new(shared: Arc<Shared>, remote: SocketAddr, activity: Option<Arc<Activity>>) -> Self {
        let forwarded_for = headers::forwarded_for_value(remote.ip());
        Proxy {
            shared,
            remote,
            forwarded_for,
            activity,
        }
    }
}

/// A request waiting for its answer, counted on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(handle(self.clone(), req))
    }
}

/// Serves one request end to end. Never fails: every error becomes a response (the `Result`
/// is the service's). It is the boxed service future itself, with no `async` block around
/// it: a wrapper would move this large future once more when it first awaits it.
pub async fn handle(
    conn: Proxy,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let conn = &conn;
    let _busy = conn.activity.as_ref().map(Busy::enter);
    let shared: &Shared = &conn.shared;
    let remote = conn.remote;
    let start = Instant::now();
    let _active = ActiveRequest::start();
    // The routing key, traffic class, tenant header, `Content-Type` and `Host`, found in one
    // pass (found again after an identity writes its claims over some of them).
    let first = OwnHeaders::find(
        req.headers(),
        &shared.settings.routing_header,
        &shared.settings.tenant_header,
    );
    let grpc = first.is_grpc();
    let mut span = RequestSpan::start(shared.settings.tracer.as_ref(), &req);

    // 0: framing. HTTP/1.1 heads were checked below hyper (see `framing`); here what
    // needs the parsed head: an absolute-form target naming another host than `Host`,
    // and an HTTP/2 header count past the limit.
    if let Some(err) = headers::head_problem(&req, shared.settings.max_request_headers) {
        let version = shared.table.load().served_by_version.clone();
        return unrouted(conn, err, None, &req, (grpc, start, span), version.as_ref());
    }

    // 0: identity, before anything reads the request: the token verified, its claims
    // written over the headers they map to (and the router's headers found again).
    let own = match &shared.settings.identity {
        None => first,
        Some(identity) => {
            match identity.authenticate(req.headers()) {
                Ok(verified) => identity.apply(&verified, req.headers_mut()),
                Err(why) => {
                    tracing::debug!(client = %remote, reason = why, "request refused: unauthenticated");
                    let version = shared.table.load().served_by_version.clone();
                    let key = first.routing_key.map(HeaderValue::as_bytes);
                    return unrouted(
                        conn,
                        ProxyError::Unauthenticated,
                        key,
                        &req,
                        (grpc, start, span),
                        version.as_ref(),
                    );
                }
            }
            OwnHeaders::find(
                req.headers(),
                &shared.settings.routing_header,
                &shared.settings.tenant_header,
            )
        }
    };
    let has_host = own.host;
    let class = TrafficClass::from_value(own.traffic_class);

    // 1: route, then 2: admission of the tenant (allowed on the route, within its limits),
    // with the tenant header read once. The snapshot guard lives only inside this block.
    let (route, tenant, admitted) = {
        let table = shared.table.load();
        let version = table.served_by_version.as_ref();
        let Some(key) = own.routing_key else {
            return unrouted(
                conn,
                ProxyError::MissingRoutingKey,
                None,
                &req,
                (grpc, start, span),
                version,
            );
        };
        let key = key.as_bytes();
        if class.is_none() {
            return unrouted(
                conn,
                ProxyError::InvalidTrafficClass,
                Some(key),
                &req,
                (grpc, start, span),
                version,
            );
        }
        match table.route(key) {
            Some(route) => {
                // Only a table with tenants, or a route that lists some, reads the header.
                let given = if table.has_tenants() || !route.tenants.is_empty() {
                    own.tenant.map(HeaderValue::as_bytes)
                } else {
                    None
                };
                let tenant = given.and_then(|t| table.tenant(t)).cloned();
                let admitted = admit_tenant(route, tenant.as_deref(), given, start);
                (Arc::clone(route), tenant, admitted)
            }
            None => {
                return unrouted(
                    conn,
                    ProxyError::UnknownRoutingKey,
                    Some(key),
                    &req,
                    (grpc, start, span),
                    version,
                );
            }
        }
    };
    let class = class.unwrap_or(TrafficClass::Live);
    let downstream_version = req.version();
    let mut bytes_in = None;
    let mut upgrade = None;
    let (served_by, result, body_complete, tenant_permit, mirrored, request_id) = match admitted {
        Err(err) => {
            let complete = req.body().is_end_stream();
            (&route.targets[0], Err(err), complete, None, None, None)
        }
        Ok(_) if req.method() == Method::CONNECT => {
            let complete = req.body().is_end_stream();
            let err = ProxyError::UpgradeNotSupported;
            (&route.targets[0], Err(err), complete, None, None, None)
        }
        Ok(_)
            if route
                .max_body
                .is_some_and(|limit| req.body().size_hint().lower() > limit) =>
        {
            // A declared length past the route's limit: refused with nothing read or sent.
            let err = ProxyError::RequestBodyTooLarge;
            (&route.targets[0], Err(err), false, None, None, None)
        }
        Ok(tenant_permit) => 'forward: {
            let (mut parts, mut body) = req.into_parts();
            // An HTTP/1.1 chunked body: its first chunk is read before anything goes
            // upstream, so that a malformed one is refused with nothing forwarded, and it
            // must come within the header-read timeout, like the head before it.
            let first = if parts.version < Version::HTTP_2
                && !body.is_end_stream()
                && body.size_hint().exact().is_none()
            {
                let read = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                // The worker's request timer, like the route timeout's (see `timer`).
                let read = match shared.settings.header_read_timeout {
                    Some(limit) => tokio::select! {
                        biased;
                        read = read => Ok(read),
                        () = timer::sleep(limit) => Err(()),
                    },
                    None => Ok(read.await),
                };
                match read {
                    Ok(Some(Ok(frame))) => Some(frame),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(client = %remote, error = %e, "request body refused");
                        let err = ProxyError::MalformedRequest;
                        break 'forward (&route.targets[0], Err(err), false, None, None, None);
                    }
                    Err(_) => {
                        tracing::debug!(client = %remote, "request body's first chunk not sent in time");
                        let err = ProxyError::RequestTimeout;
                        break 'forward (&route.targets[0], Err(err), false, None, None, None);
                    }
                }
            } else {
                None
            };
            let has_body = first.is_some() || !body.is_end_stream();
            let asked = headers::strip_hop_by_hop(&mut parts.headers, true);
            if asked.is_some() {
                upgrade = upgrade::requested(
                    parts.version,
                    &mut parts.headers,
                    &mut parts.extensions,
                    asked,
                );
            }
            headers::append_forwarded_for(&mut parts.headers, &conn.forwarded_for);
            headers::ensure_request_id(&mut parts.headers);
            let request_id = if shared.settings.access_log || span.is_some() {
                parts.headers.get(headers::X_REQUEST_ID).cloned()
            } else {
                None
            };
            if let Some(span) = &span {
                // The upstream's spans are children of this one.
                parts
                    .headers
                    .insert(otlp::TRACEPARENT, span.start.traceparent());
            }
            if shared.settings.access_log && has_body {
                bytes_in = Some(Arc::new(AtomicU64::new(0)));
            }

            // 3: pick the target cluster (synthetic traffic only ever to the route's
            // synthetic cluster, when it has one); start the mirror's copy.
            let (target, fallbacks) = match &route.synthetic {
                Some(synthetic) if class.is_synthetic() => (synthetic, &[][..]),
                _ => (route.pick_target(&parts.headers), &route.fallbacks[..]),
            };
            let mut mirrored = match &route.mirror {
                // A tunnel is not copied: the mirror would get an upgrade it cannot finish.
                Some(mirror)
                    if upgrade.is_none()
                        && mirror.sampled(&parts.headers, route.sticky_header.as_ref()) =>
                {
                    mirror.start(
                        &parts.method,
                        &parts.uri,
                        parts.version,
                        &parts.headers,
                        body.size_hint(),
                        has_body,
                    )
                }
                _ => None,
            };
            let tee = mirrored.as_mut().and_then(|m| m.tee.take());
            // Kept here and lent to `forward`: moved into it, it would be copied once more.
            let (mut out, upload_done) =
                Outgoing::new(&route, parts, (body, first), tee, bytes_in.clone());

            // 4: admission, pick and forward on each cluster, along the fallback chain. The
            // route timeout covers connect attempts, fallbacks and the wait for response
            // headers, and starts once the request body has been read: a client still
            // uploading is not a slow model server.
            let mut deadline = pin!(async {
                if let Some(done) = upload_done {
                    match done.await {
                        Ok(Upload::Failed) => return Deadline::ClientBodyFailed,
                        Ok(Upload::TooLarge) => return Deadline::BodyTooLarge,
                        Ok(Upload::Complete) | Err(_) => {}
                    }
                    // From the end of the upload.
                    timer::sleep(route.timeout).await;
                } else {
                    // No body: from the request's arrival (no clock read).
                    timer::sleep_until(start + route.timeout).await;
                }
                Deadline::Elapsed
            });
            let arrival = Arrival {
                version: downstream_version,
                grpc,
                upgrade: upgrade.is_some(),
                has_host,
                start,
            };
            // Sent to `target`, then along the route's fallback chain while a cluster could
            // not take it, all within `deadline`. Awaited here rather than in a function of
            // its own: each level of `async fn` copies the upstream's response once more on
            // its way out.
            let sent = send_to_cluster(&route, target, &mut out, arrival, deadline.as_mut()).await;
            let (served_by, result, complete) = match sent {
                Ok(resp) => (target, Ok(resp), true),
                Err(Failure::Answered(err)) => (target, Err(err), out.is_complete()),
                Err(Failure::Skipped(why)) if route.fallbacks.is_empty() => {
                    (target, Err(why), out.is_complete())
                }
                // Boxed: the fallback chain is the cold path, and the common future stays
                // small.
                Err(Failure::Skipped(why)) => {
                    Box::pin(fall_back(
                        &route, target, fallbacks, &mut out, why, arrival, deadline,
                    ))
                    .await
                }
            };
            (
                served_by,
                result,
                complete,
                tenant_permit,
                mirrored,
                request_id,
            )
        }
    };

    // 5: respond.
    let mut own_error = None;
    let response = match result {
        Ok((mut resp, in_flight, upstream)) => {
            let upgraded_to = headers::strip_hop_by_hop(resp.headers_mut(), false);
            let pair = served_by.metrics.handles();
            // Only a gRPC request's answer has a meaningful `grpc-status`.
            let trailers_only = grpc
                .then(|| resp.headers().get(headers::GRPC_STATUS).cloned())
                .flatten();
            if let Some(code) = trailers_only.as_ref().and_then(headers::grpc_code) {
                pair.grpc(code);
            }
            let span = span.take();
            let log = (shared.settings.access_log || span.is_some()).then(|| {
                Box::new(AccessLine {
                    write: shared.settings.access_log,
                    span,
                    bytes_in,
                    client: remote,
                    route: Arc::clone(&route.key),
                    cluster: Arc::clone(&served_by.cluster.name),
                    tenant: tenant.as_ref().map(|t| Arc::clone(&t.name)),
                    class,
                    status: resp.status().as_u16(),
                    grpc_status: trailers_only,
                    request_id,
                    start,
                    upstream,
                })
            });
            let guard = ResponseGuard {
                _tenant: tenant_permit,
                in_flight,
                metrics: Arc::clone(pair),
                // Trailers-only answers were counted above.
                grpc: grpc && !resp.headers().contains_key(headers::GRPC_STATUS),
                log,
            };
            match upgrade {
                Some(upgrade) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    // The tunnel holds the guard (in-flight counts, log line) until it closes.
                    upgrade::start(upgrade, &mut resp, upgraded_to, move |carried| {
                        let mut guard = guard;
                        guard.finish(carried.to_client, None);
                    });
                    resp.map(|_| Either::Right(Full::default()))
                }
                _ => resp.map(|body| Either::Left(UpstreamBody::new(body, guard))),
            }
        }
        Err(err) => {
            own_error = Some(err);
            tracing::debug!(route = %route.key, cluster = %served_by.cluster.name, error = %err, code = err.as_label(), "request failed");
            let mut resp = err.into_response(Some(route.key.as_bytes()), grpc);
            // A malformed or cut-off body ends its connection: what follows cannot be trusted.
            let complete = body_complete && !err.ends_connection();
            close_if_body_unread(&mut resp, downstream_version, complete);
            if let Some(value) = &served_by.cluster.served_by_cluster {
                resp.headers_mut().insert(headers::SERVED_BY, value.clone());
            }
            resp.map(Either::Right)
        }
    };
    if let Some(mirrored) = mirrored {
        let _ = mirrored.status.send(response.status());
    }
    let elapsed = start.elapsed();
    served_by
        .metrics
        .record(response.status(), elapsed, class, tenant.as_deref());
    // Proxied answers are logged when their body ends (see `ResponseGuard`).
    if shared.settings.access_log && own_error.is_some() {
        tracing::info!(
            target: "access",
            client = %remote,
            route = %route.key,
            cluster = %served_by.cluster.name,
            tenant = tenant.as_ref().map_or("", |t| &*t.name),
            traffic_class = class.as_str(),
            status = response.status().as_u16(),
            code = own_error.map_or("", ProxyError::as_label),
            duration_us = elapsed.as_micros() as u64,
        );
    }
    // A proxied answer's span went into its body guard; this one is the router's own.
    if let (Some(span), Some(err)) = (span, own_error) {
        let facts = SpanFacts::own_answer(err, grpc, class, response.status());
        span.finish(SpanFacts {
            route: Some(&route.key),
            cluster: Some(&served_by.cluster.name),
            tenant: tenant.as_ref().map(|t| &t.name),
            ..facts
        });
    }
    Ok(response)
}

/// The tenant checks of the admission phase: the route allows the request's tenant, and
/// the tenant (when declared with limits) is within them.
#[inline]
fn admit_tenant(
    route: &Route,
    tenant: Option<&Tenant>,
    given: Option<&[u8]>,
    arrived: Instant,
) -> Result<Option<TenantPermit>, ProxyError> {
    // `allows` is true at once for a route without `tenants`.
    if !route.allows(tenant) {
        let label = match (tenant, given) {
            (Some(t), _) => &*t.name,
            (None, Some(_)) => "other",
            (None, None) => "none",
        };
        metrics::tenant_refused(label, "not_allowed").increment(1);
        return Err(ProxyError::TenantNotAllowed);
    }
    match tenant {
        None => Ok(None),
        Some(tenant) => tenant.admit(arrived).map_err(|refusal| match refusal {
            Refusal::RateLimited(seconds) => ProxyError::RateLimited(seconds),
            Refusal::Overloaded => ProxyError::TenantOverloaded,
        }),
    }
}

/// The router's own answer to a request that reached no route (no or unknown key, bad
/// traffic class, no valid token), counted and access-logged like every answer.
#[cold]
fn unrouted(
    conn: &Proxy,
    err: ProxyError,
    key: Option<&[u8]>,
    req: &Request<Incoming>,
    (grpc, start, span): (bool, Instant, Option<RequestSpan>),
    served_by: Option<&HeaderValue>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut resp = err.into_response(key, grpc);
    // A malformed request ends its connection: what follows it cannot be trusted.
    let complete = req.body().is_end_stream() && !err.ends_connection();
    close_if_body_unread(&mut resp, req.version(), complete);
    if let Some(value) = served_by {
        resp.headers_mut().insert(headers::SERVED_BY, value.clone());
    }
    // Cold: the class is read again rather than carried through every early return.
    let class = TrafficClass::of(req.headers()).unwrap_or(TrafficClass::Live);
    let elapsed = start.elapsed();
    metrics::record_unrouted(resp.status(), elapsed, class);
    if conn.shared.settings.access_log {
        tracing::info!(
            target: "access",
            client = %conn.remote,
            route = metrics::UNKNOWN_ROUTE,
            routing_key = %String::from_utf8_lossy(key.unwrap_or_default()),
            traffic_class = class.as_str(),
            status = resp.status().as_u16(),
            code = err.as_label(),
            duration_us = elapsed.as_micros() as u64,
        );
    }
    if let Some(span) = span {
        span.finish(SpanFacts::own_answer(err, grpc, class, resp.status()));
    }
    Ok(resp.map(Either::Right))
}

/// An HTTP/1.1 answer sent before the request body was read whole ends the connection:
/// the unread rest would otherwise be taken for the next request.
fn close_if_body_unread<B>(resp: &mut Response<B>, version: Version, body_complete: bool) {
    if !body_complete && version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// What the forwarding phases need to know of the downstream request: its HTTP version (for
/// `auto` clusters), whether it is gRPC (only a gRPC answer's `grpc-status` is read), whether
/// it asks for an upgrade (sent on a connection of its own), and when it arrived (for the
/// overhead histogram).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    version: Version,
    grpc: bool,
    upgrade: bool,
    /// The request has a `Host` header.
    has_host: bool,
    start: Instant,
}

/// What forwarding came to: the target that answered (or was tried last, for metrics), the
/// answer, and whether the request body had been read whole.
type Forwarded<'r> = (&'r RouteTarget, Result<Upstream, ProxyError>, bool);

/// The request as its attempts see it.
enum Outgoing {
    /// Sent at most once: the request itself, handed back when a connection could not be
    /// opened (nothing was sent).
    Once(Option<Request<RequestBody>>),
    /// The route retries: the head each attempt sends and the body each replays.
    Replay {
        /// The client's head, until the first attempt takes it whole.
        first: Option<http::request::Parts>,
        /// The head as the first attempt took it, for the retries.
        saved: Option<SavedHead>,
        /// The headers of the next retry, rebuilt from `saved` before it picks its endpoint
        /// (`None` until then).
        retry_headers: Option<HeaderMap>,
        /// `None`: there is no body, so every attempt sends none.
        replayer: Option<Replayer>,
    },
}

/// What a retry sends again of the request's head.
#[derive(Debug)]
struct SavedHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: SavedHeaders,
}

impl Outgoing {
    /// The request of a route: replayable when the route retries. The receiver resolves
    /// when the client's body has been read whole (`None`: there is none). Inlined: built
    /// where the caller keeps it, not copied there.
    #[inline]
    fn new(
        route: &Route,
        parts: http::request::Parts,
        (body, first): (Incoming, Option<Frame<Bytes>>),
        tee: Option<crate::body::tee::Sender>,
        tally: Option<Arc<AtomicU64>>,
    ) -> (Self, Option<oneshot::Receiver<Upload>>) {
        let empty = first.is_none() && body.is_end_stream();
        let meter = |route: &Route| BodyMeter {
            counter: route.request_meter(),
            tally,
        };
        match &route.retry {
            None => {
                let meter = (!empty).then(|| meter(route));
                let (body, done) = RequestBody::new(body, first, tee, meter, route.max_body);
                (Outgoing::Once(Some(Request::from_parts(parts, body))), done)
            }
            Some(policy) => {
                let (replayer, done) = if empty {
                    if let Some(tee) = tee {
                        tee.finish();
                    }
                    (None, None)
                } else {
                    let meter = Some(meter(route));
                    let (source, done) = Source::new(body, first, tee, meter, route.max_body);
                    (Some(Replayer::new(source, policy.replay_cap)), Some(done))
                };
                let out = Outgoing::Replay {
                    first: Some(parts),
                    saved: None,
                    retry_headers: None,
                    replayer,
                };
                (out, done)
            }
        }
    }

    /// The headers (for the balancer's hash policies).
    fn headers(&self) -> &HeaderMap {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        match self {
            Outgoing::Once(Some(req)) => req.headers(),
            Outgoing::Once(None) => EMPTY.get_or_init(HeaderMap::new),
            Outgoing::Replay {
                first: Some(parts), ..
            } => &parts.headers,
            Outgoing::Replay {
                retry_headers: Some(headers),
                ..
            } => headers,
            Outgoing::Replay { .. } => EMPTY.get_or_init(HeaderMap::new),
        }
    }

    /// The request of the next attempt; `None` once it cannot be sent again (it was sent,
    /// or its body outgrew the replay buffer).
    fn take(&mut self) -> Option<Request<RequestBody>> {
        match self {
            Outgoing::Once(req) => req.take(),
            Outgoing::Replay {
                first,
                saved,
                retry_headers,
                replayer,
            } => {
                let body = match replayer {
                    Some(replayer) => RequestBody::replay(replayer.attempt()?),
                    None => RequestBody::empty(),
                };
                // The first attempt sends the client's head itself, keeping a copy.
                if let Some(parts) = first.take() {
                    *saved = Some(SavedHead {
                        method: parts.method.clone(),
                        uri: parts.uri.clone(),
                        version: parts.version,
                        headers: SavedHeaders::save(&parts.headers),
                    });
                    return Some(Request::from_parts(parts, body));
                }
                let head = saved.as_ref()?;
                let headers = match retry_headers.take() {
                    Some(headers) => headers,
                    None => head.headers.restore()?,
                };
                let mut req = Request::new(body);
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.version_mut() = head.version;
                *req.headers_mut() = headers;
                Some(req)
            }
        }
    }

    /// Before a retry picks its endpoint: the headers the first attempt took, back (the
    /// balancer's hash policies read them). Nothing to do before the first attempt.
    fn restore_headers(&mut self) {
        if let Outgoing::Replay {
            retry_headers,
            saved: Some(saved),
            ..
        } = self
            && retry_headers.is_none()
        {
            *retry_headers = saved.headers.restore();
        }
    }

    /// Takes back a request nothing of which was sent.
    fn give_back(&mut self, req: Request<RequestBody>) {
        if let Outgoing::Once(slot) = self {
            *slot = Some(req);
        }
    }

    /// Whether another attempt can be made (for a replayable body: still within its cap).
    fn can_resend(&self) -> bool {
        match self {
            Outgoing::Once(req) => req.is_some(),
            Outgoing::Replay { replayer, .. } => replayer.as_ref().is_none_or(Replayer::can_replay),
        }
    }

    /// Whether the client's body has been read whole.
    fn is_complete(&self) -> bool {
        match self {
            Outgoing::Once(Some(req)) => req.body().is_complete(),
            Outgoing::Once(None) => false,
            Outgoing::Replay { replayer, .. } => {
                replayer.as_ref().is_none_or(Replayer::source_done)
            }
        }
    }
}

/// Tries each fallback cluster in turn (never the one just tried). When none takes the
/// request, the answer is why the last one could not.
async fn fall_back<'r, D: Future<Output = Deadline>>(
    route: &'r Route,
    first: &'r RouteTarget,
    fallbacks: &'r [RouteTarget],
    out: &mut Outgoing,
    mut why: ProxyError,
    arrival: Arrival,
    mut deadline: Pin<&mut D>,
) -> Forwarded<'r> {
    let mut last = first;
    for fallback in fallbacks {
        if Arc::ptr_eq(&fallback.cluster, &first.cluster) {
            continue;
        }
        fallback.metrics.fell_back();
        last = fallback;
        match send_to_cluster(route, fallback, out, arrival, deadline.as_mut()).await {
            Ok(resp) => return (fallback, Ok(resp), true),
            Err(Failure::Answered(err)) => return (fallback, Err(err), out.is_complete()),
            Err(Failure::Skipped(next_why)) => why = next_why,
        }
    }
    (last, Err(why), out.is_complete())
}

/// Why the route deadline future ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The route timeout passed after the upload ended.
    Elapsed,
    /// The client's body failed (malformed chunk, or the client went away).
    ClientBodyFailed,
    /// The client's body grew past the route's `max_request_body_bytes`.
    BodyTooLarge,
}

impl Deadline {
    /// The answer, counting a timeout against the endpoint tried.
    fn answer(self, target: &RouteTarget, endpoint: usize) -> ProxyError {
        if self == Deadline::Elapsed {
            observe(target, endpoint, Outcome::GatewayFailure);
        }
        self.timeout_or_client()
    }

    fn timeout_or_client(self) -> ProxyError {
        match self {
            Deadline::Elapsed => ProxyError::UpstreamTimeout,
            Deadline::ClientBodyFailed => ProxyError::MalformedRequest,
            Deadline::BodyTooLarge => ProxyError::RequestBodyTooLarge,
        }
    }
}

enum Failure {
    /// The cluster could not take the request (no eligible endpoint, overloaded, or no
    /// endpoint accepted a connection); nothing was sent, and the request can go on.
    Skipped(ProxyError),
    /// The request was consumed; this is the answer.
    Answered(ProxyError),
}

/// How one try ended, when it did not end with an answer to pass on.
enum TryFailed {
    /// Nothing was sent: `UpstreamConnect`, or `UpstreamTlsFailed` for a failed handshake.
    Connect(ProxyError),
    /// The exchange broke before response headers: `UpstreamProtocol`, or
    /// `UpstreamTlsFailed` when a TLS 1.3 endpoint refused the client certificate then.
    Reset(ProxyError),
    Timeout,
}

/// Admission, pick and forward on one cluster: tries on eligible endpoints, a failed one
/// avoided by the next, up to the route's retry policy (without one, a connect failure
/// still moves once to another endpoint).
async fn send_to_cluster<D: Future<Output = Deadline>>(
    route: &Route,
    target: &RouteTarget,
    out: &mut Outgoing,
    arrival: Arrival,
    mut deadline: Pin<&mut D>,
) -> Result<Upstream, Failure> {
    let cluster = &*target.cluster;
    let mut permit = match &cluster.breaker {
        None => None,
        Some(breaker) => match breaker.admit(&cluster.state) {
            Some(permit) => Some(permit),
            None => return Err(Failure::Skipped(ProxyError::Overloaded)),
        },
    };
    let use_h2 = match cluster.protocol {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Auto => arrival.version == Version::HTTP_2,
    };
    if use_h2 && arrival.upgrade {
        // An h2c-only cluster cannot take an HTTP/1.1 upgrade; the next cluster may.
        return Err(Failure::Skipped(ProxyError::UpgradeNotSupported));
    }
    let start = arrival.start;
    let policy = route.retry.as_ref();
    let mut exclude = None;
    let mut why = ProxyError::NoHealthyUpstream;
    let mut tries: u32 = 0;
    let mut free_connect_retry = true;
    let mut retry_permit = None;
    // A policy retry prefers another endpoint but may go back to the one that failed when
    // it is the only eligible one; the free connect retry only ever moves on.
    let mut same_allowed = false;
    loop {
        out.restore_headers();
        let picked = cluster.pick(out.headers(), exclude).or_else(|| {
            if same_allowed {
                cluster.pick(out.headers(), None)
            } else {
                None
            }
        });
        let Some(i) = picked else {
            return Err(Failure::Skipped(why));
        };
        let Some(mut req) = out.take() else {
            // Only a replayable body outgrown its buffer gets here (checked before a retry).
            return Err(Failure::Answered(ProxyError::UpstreamProtocol));
        };
        tries += 1;
        let host = &cluster.endpoints[i];
        let in_flight = InFlight::start(host, permit.take());
        headers::prepare_uri(
            &mut req,
            &host.authority,
            use_h2,
            cluster.tls,
            arrival.has_host,
        );
        let pending = cluster
            .breaker
            .as_ref()
            .map(|b| b.pending_limit(&cluster.state));
        let timeout = cluster.connect_timeout;
        let sent_at = Instant::now();
        if tries == 1 {
            target.metrics.handles().overhead(sent_at - start);
        }
        let transport = if arrival.upgrade {
            Transport::Upgrade
        } else if use_h2 {
            Transport::Http2
        } else {
            Transport::Http1
        };
        // Pinned where they are built: `select!` then polls them in place instead of moving
        // them into its own state.
        let send = pin!(host.pool.send(req, transport, timeout, pending));
        let per_try = pin!(async {
            match policy.and_then(|p| p.per_try_timeout) {
                Some(limit) => timer::sleep_until(sent_at + limit).await,
                None => std::future::pending().await,
            }
        });
        let sent = tokio::select! {
            biased;
            sent = send => Some(sent),
            why = &mut deadline => return Err(Failure::Answered(why.answer(target, i))),
            () = per_try => None,
        };
        drop(retry_permit.take());
        let failed = match sent {
            Some(Ok(resp)) => {
                let upstream = sent_at.elapsed();
                target.metrics.handles().upstream(upstream);
                if cluster.outlier.is_some() {
                    observe(target, i, outcome_of(&resp, arrival.grpc));
                }
                let retriable =
                    policy.is_some_and(|p| tries < p.attempts && p.retries_response(&resp));
                if !retriable {
                    return Ok(attributed(cluster, i, resp, in_flight, upstream));
                }
                match retry_allowed(route, cluster, out) {
                    Some(admitted) => {
                        tracing::debug!(route = %route.key, cluster = %cluster.name, endpoint = %host.address, status = resp.status().as_u16(), "retrying a retriable answer");
                        retry_permit = Some(admitted);
                        permit = in_flight.release();
                        exclude = Some(i);
                        same_allowed = true;
                        drop(resp);
                        backoff(target, policy, tries, deadline.as_mut()).await?;
                        continue;
                    }
                    None => return Ok(attributed(cluster, i, resp, in_flight, upstream)),
                }
            }
            Some(Err(SendError::Exchange(e))) => {
                // The client's body failing fails the exchange too: then it is the client's.
                if let Some(why) = deadline.as_mut().now_or_never() {
                    return Err(Failure::Answered(why.answer(target, i)));
                }
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, error = %e, "upstream exchange failed");
                TryFailed::Reset(ProxyError::UpstreamProtocol)
            }
            Some(Err(SendError::Connect(e, back))) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, error = %e, "connect failed");
                target.metrics.connect_failed();
                out.give_back(*back);
                TryFailed::Connect(ProxyError::UpstreamConnect)
            }
            // Logged at warn by the pool (cluster, endpoint, rustls's reason); counted and
            // retried like a connect failure.
            Some(Err(SendError::Tls(e, back))) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, error = %e, "upstream TLS failed");
                target.metrics.connect_failed();
                match back {
                    Some(back) => {
                        out.give_back(*back);
                        TryFailed::Connect(ProxyError::UpstreamTlsFailed)
                    }
                    None => TryFailed::Reset(ProxyError::UpstreamTlsFailed),
                }
            }
            Some(Err(SendError::Overloaded(back))) => {
                if let Some(breaker) = &cluster.breaker {
                    breaker.refused_pending();
                }
                out.give_back(*back);
                return Err(Failure::Skipped(ProxyError::Overloaded));
            }
            None => {
                tracing::debug!(cluster = %cluster.name, endpoint = %host.address, "per-try timeout");
                TryFailed::Timeout
            }
        };
        observe(target, i, Outcome::GatewayFailure);
        permit = in_flight.release();
        exclude = Some(i);
        let (policy_retries, answer) = match failed {
            TryFailed::Connect(err) => {
                why = err;
                // Nothing was sent: one more endpoint is always tried.
                out.restore_headers();
                if std::mem::take(&mut free_connect_retry)
                    && out.can_resend()
                    && cluster.pick(out.headers(), exclude).is_some()
                {
                    target.metrics.retried();
                    tries -= 1;
                    same_allowed = false;
                    continue;
                }
                (
                    policy.is_some_and(|p| p.connect_failure),
                    Failure::Skipped(err),
                )
            }
            TryFailed::Reset(err) => (policy.is_some_and(|p| p.reset), Failure::Answered(err)),
            TryFailed::Timeout => (
                policy.is_some_and(|p| p.timeout),
                Failure::Answered(ProxyError::UpstreamTimeout),
            ),
        };
        if !policy_retries || policy.is_none_or(|p| tries >= p.attempts) {
            return Err(answer);
        }
        match retry_allowed(route, cluster, out) {
            Some(admitted) => retry_permit = Some(admitted),
            None => return Err(answer),
        }
        same_allowed = true;
        backoff(target, policy, tries, deadline.as_mut()).await?;
    }
}

/// The upstream's answer with `x-served-by` (when on), its body holding the in-flight count.
#[inline]
fn attributed(
    cluster: &Cluster,
    endpoint: usize,
    mut resp: Response<Incoming>,
    in_flight: InFlight,
    upstream: Duration,
) -> Upstream {
    if let Some(values) = &cluster.served_by {
        resp.headers_mut()
            .insert(headers::SERVED_BY, values[endpoint].clone());
    }
    (resp, in_flight, upstream)
}

/// Whether one more try may be made: the body can still be replayed and the cluster's
/// retry budget has room. A refusal is counted and, for the replay cap, logged.
#[cold]
fn retry_allowed(route: &Route, cluster: &Cluster, out: &Outgoing) -> Option<RetryPermit> {
    let policy = route.retry.as_ref()?;
    if !out.can_resend() {
        metrics::record_retry_abandoned(&route.key, "body_over_replay_cap");
        tracing::warn!(
            route = %route.key,
            replay_buffer_bytes = policy.replay_cap,
            "retry abandoned: the request body outgrew the replay buffer (replay_buffer_bytes)"
        );
        return None;
    }
    let in_flight = cluster.endpoints.iter().map(|h| h.active_requests()).sum();
    let permit = policy.admit_retry(&cluster.state, in_flight);
    if permit.is_none() {
        metrics::record_retry_abandoned(&route.key, "budget_exhausted");
    }
    permit
}

/// Waits before retry number `tries`, within the route deadline.
async fn backoff<D: Future<Output = Deadline>>(
    target: &RouteTarget,
    policy: Option<&RetryPolicy>,
    tries: u32,
    deadline: Pin<&mut D>,
) -> Result<(), Failure> {
    target.metrics.retried();
    let wait = policy.map_or(Duration::ZERO, |p| p.backoff(tries));
    if wait.is_zero() {
        return Ok(());
    }
    tokio::select! {
        biased;
        () = tokio::time::sleep(wait) => Ok(()),
        why = deadline => Err(Failure::Answered(why.timeout_or_client())),
    }
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

/// A 5xx, or a gRPC trailers-only `UNAVAILABLE` (14) or `INTERNAL` (13) answering a gRPC
/// request, is a server error.
fn outcome_of(resp: &Response<Incoming>, grpc: bool) -> Outcome {
    if resp.status().is_server_error() {
        return Outcome::ServerError;
    }
    if !grpc {
        return Outcome::Success;
    }
    match resp.headers().get(headers::GRPC_STATUS) {
        Some(code) if code == "14" || code == "13" => Outcome::ServerError,
        _ => Outcome::Success,
    }
}
