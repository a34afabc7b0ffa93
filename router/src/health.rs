//! Active health checks (DESIGN §11 `health_check`): one prober per endpoint address, not
//! one per worker, running on the control runtime.
//!
//! A prober sends `GET http_path` (over h2c for `http2` clusters, HTTP/1.1 otherwise) or a
//! `grpc.health.v1.Health/Check` for `grpc_service`, every `interval_ms` plus a random 0 to
//! 10 %, each within `timeout_ms`, on a connection it keeps between probes. An endpoint
//! starts `unknown` and eligible; `unhealthy_threshold` failures in a row make it
//! `unhealthy` (its [`UNHEALTHY`] flag set: the balancers skip it), `healthy_threshold`
//! passes in a row make it `healthy` again. Each transition is logged with what the probe
//! saw.
//!
//! Probers belong to the host, not to a table: a table swap that keeps the address and the
//! check keeps the prober and its state; a changed check restarts the prober (the state
//! stays); a host no table checks any more stops being probed and becomes `unknown`.
//!
//! A probe reaches the endpoint the way requests do: over TLS with the pool's settings
//! when its cluster has `tls` (ALPN `h2` for `http2` clusters and gRPC checks, both for
//! `auto`, `http/1.1` otherwise), on a connection of its own that is opened again when the
//! endpoint's TLS trust changes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use models_config::spec::HealthCheckSpec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::host::{
    HealthDetail, HealthState, HealthStatus, Host, LastCheck, ProbeHandle, ProbeKey, UNHEALTHY,
};
use crate::metrics;
use crate::outlier::unix_ms;
use crate::rng;
use crate::upstream::tls::{Alpn, TlsIo, UpstreamTls};
use crate::upstream::{self, Pool};

/// Largest health-check response body read before the connection is dropped.
const MAX_PROBE_BODY: usize = 64 * 1024;
/// The `user-agent` of HTTP probes.
const USER_AGENT: &str = "router-health-check";

/// Hands new probers to the control runtime, which runs them ([`run_probers`]).
#[derive(Debug, Clone)]
pub struct ProbeSpawner {
    tx: mpsc::UnboundedSender<Prober>,
}

/// The receiving end of a [`ProbeSpawner`].
#[derive(Debug)]
pub struct ProbeReceiver {
    rx: mpsc::UnboundedReceiver<Prober>,
}

/// One endpoint's prober, before it runs.
#[derive(Debug)]
pub struct Prober {
    host: Weak<Host>,
    key: ProbeKey,
    /// The cluster that configured the check (metric label, logs).
    cluster: Arc<str>,
    stop: CancellationToken,
}

/// A probe connection kept between probes.
enum Conn {
    None,
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
    Grpc(HealthClient<tonic::transport::Channel>),
}

// === impl ProbeSpawner ===

impl ProbeSpawner {
    /// A spawner and the receiver the control runtime drains. Probers sent before the
    /// receiver runs wait in the channel; with the receiver dropped they never run.
    pub fn new() -> (Self, ProbeReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ProbeSpawner { tx }, ProbeReceiver { rx })
    }

    /// Makes sure `host` is probed with `spec` over h2c (`h2`) or HTTP/1.1, by one prober:
    /// keeps a running prober with the same check, restarts it when the check changed.
    pub fn ensure(&self, host: &Arc<Host>, spec: &HealthCheckSpec, h2: bool, cluster: &Arc<str>) {
        let key = ProbeKey {
            spec: spec.clone(),
            h2: h2 || spec.grpc_service.is_some(),
        };
        let mut detail = lock(&host.health);
        if detail.probe.as_ref().is_some_and(|p| p.key == key) {
            return;
        }
        let stop = CancellationToken::new();
        // Replacing the handle stops the previous prober.
        detail.probe = Some(ProbeHandle {
            key: key.clone(),
            stop: stop.clone(),
        });
        let prober = Prober {
            host: Arc::downgrade(host),
            key,
            cluster: Arc::clone(cluster),
            stop,
        };
        if self.tx.send(prober).is_err() {
            tracing::debug!(endpoint = %host.address, "no control runtime to run a prober");
        }
    }
}

/// Stops probing `host` (no table checks it any more): it becomes `unknown` and eligible.
pub fn stop(host: &Host) {
    let mut detail = lock(&host.health);
    if detail.probe.take().is_some() {
        detail.status = HealthStatus::Unknown;
        detail.successes = 0;
        detail.failures = 0;
        host.clear_flag(UNHEALTHY);
    }
}

/// Whether `host` has a running prober.
pub fn is_probed(host: &Host) -> bool {
    lock(&host.health).probe.is_some()
}

/// Runs every prober handed to `probes` until `shutdown`.
pub async fn run_probers(mut probes: ProbeReceiver, shutdown: CancellationToken) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            prober = probes.rx.recv() => match prober {
                Some(prober) => { running.spawn(prober.run()); }
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    running.shutdown().await;
}

// === impl HealthState ===

impl HealthState {
    /// The status and the latest probe.
    pub fn snapshot(&self) -> (HealthStatus, Option<LastCheck>) {
        let detail = self.detail.lock().unwrap_or_else(|e| e.into_inner());
        (detail.status, detail.last.clone())
    }
}

impl HealthStatus {
    /// The word used by `GET /clusters`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

// === impl Prober ===

impl Prober {
    async fn run(self) {
        let spec = &self.key.spec;
        let interval = Duration::from_millis(spec.interval_ms);
        let timeout = Duration::from_millis(spec.timeout_ms());
        let mut conn = Conn::None;
        let mut tls_epoch = None;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let Some(host) = self.host.upgrade() else {
                return;
            };
            // A connection verified with other TLS trust is not used again.
            let epoch = host.pool.tls_epoch();
            if tls_epoch.replace(epoch).is_some_and(|seen| seen != epoch) {
                conn = Conn::None;
            }
            let started = Instant::now();
            let result =
                match tokio::time::timeout(timeout, probe(&mut conn, &host, &self.key)).await {
                    Ok(result) => result,
                    Err(_) => {
                        // A stuck exchange leaves the connection in an unknown state.
                        conn = Conn::None;
                        Err(format!("no answer within {} ms", timeout.as_millis()))
                    }
                };
            if result.is_err() {
                conn = match conn {
                    // A gRPC channel reconnects by itself.
                    Conn::Grpc(client) => Conn::Grpc(client),
                    _ => Conn::None,
                };
            }
            record(&host, &self.cluster, spec, result, started.elapsed());
            drop(host);
            let jitter = rng::below(interval.as_millis() as usize / 10 + 1) as u64;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(interval + Duration::from_millis(jitter)) => {}
            }
        }
    }
}

/// Applies one probe result to `host`'s state, flipping its flag past a threshold.
fn record(
    host: &Host,
    cluster: &Arc<str>,
    spec: &HealthCheckSpec,
    result: Result<String, String>,
    duration: Duration,
) {
    let ok = result.is_ok();
    metrics::record_health_check(cluster, &host.address, duration, ok);
    let mut detail = lock(&host.health);
    let seen = match result {
        Ok(seen) | Err(seen) => seen,
    };
    if ok {
        detail.failures = 0;
        detail.successes = detail.successes.saturating_add(1);
        match detail.status {
            HealthStatus::Unknown => detail.status = HealthStatus::Healthy,
            HealthStatus::Unhealthy if detail.successes >= spec.healthy_threshold => {
                detail.status = HealthStatus::Healthy;
                host.clear_flag(UNHEALTHY);
                tracing::info!(cluster = %cluster, endpoint = %host.address, probe = %seen, "endpoint healthy again");
            }
            _ => {}
        }
    } else {
        detail.successes = 0;
        detail.failures = detail.failures.saturating_add(1);
        if detail.status != HealthStatus::Unhealthy && detail.failures >= spec.unhealthy_threshold {
            detail.status = HealthStatus::Unhealthy;
            host.set_flag(UNHEALTHY);
            tracing::warn!(
                cluster = %cluster,
                endpoint = %host.address,
                probe = %seen,
                failures = detail.failures,
                "endpoint unhealthy: no new requests until it passes its health check"
            );
        }
    }
    detail.last = Some(LastCheck {
        ok,
        detail: seen,
        at_unix_ms: unix_ms(),
        duration,
    });
}

/// One probe: `Ok` with what was seen when healthy, `Err` with what was seen otherwise.
async fn probe(conn: &mut Conn, host: &Arc<Host>, key: &ProbeKey) -> Result<String, String> {
    match &key.spec.grpc_service {
        Some(service) => probe_grpc(conn, host, service).await,
        None => probe_http(conn, host, key).await,
    }
}

async fn probe_http(conn: &mut Conn, host: &Host, key: &ProbeKey) -> Result<String, String> {
    let path = key.spec.http_path.as_deref().unwrap_or("/");
    let mut req = Request::get(path)
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid probe request: {e}"))?;
    let reusable = match conn {
        Conn::H1(c) => !c.is_closed(),
        Conn::H2(c) => !c.is_closed(),
        _ => false,
    };
    if !reusable {
        *conn = connect(host, key.h2).await?;
    }
    let resp = match conn {
        Conn::H1(sender) => {
            req.headers_mut().insert(
                header::HOST,
                http::HeaderValue::from_str(host.authority.as_str())
                    .map_err(|e| format!("invalid host header: {e}"))?,
            );
            sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            sender.send_request(req).await
        }
        Conn::H2(sender) => {
            let scheme = if host.pool.tls().is_some() {
                "https"
            } else {
                "http"
            };
            *req.uri_mut() = Uri::builder()
                .scheme(scheme)
                .authority(host.authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| format!("invalid probe URI: {e}"))?;
            *req.version_mut() = Version::HTTP_2;
            sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            sender.send_request(req).await
        }
        _ => unreachable!("connect returns an HTTP connection for an HTTP check"),
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    // Read the (small) body to the end so the connection can carry the next probe.
    let mut body = resp.into_body();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            read += data.len();
            if read > MAX_PROBE_BODY {
                *conn = Conn::None;
                break;
            }
        }
    }
    if status_ok(&key.spec, status) {
        Ok(status.as_str().to_owned())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

fn status_ok(spec: &HealthCheckSpec, status: StatusCode) -> bool {
    if spec.expected_statuses.is_empty() {
        status.is_success()
    } else {
        spec.expected_statuses.contains(&status.as_u16())
    }
}

async fn probe_grpc(conn: &mut Conn, host: &Arc<Host>, service: &str) -> Result<String, String> {
    if !matches!(conn, Conn::Grpc(_)) {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", host.authority))
                .map_err(|e| format!("invalid endpoint: {e}"))?;
        let channel = match host.pool.tls() {
            None => endpoint.connect_lazy(),
            // The channel dials through the pool's TLS (read at each dial), offering h2.
            Some(_) => endpoint.connect_with_connector_lazy(TlsConnect {
                host: Arc::downgrade(host),
            }),
        };
        *conn = Conn::Grpc(HealthClient::new(channel));
    }
    let Conn::Grpc(client) = conn else {
        unreachable!("set just above");
    };
    let answer = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("grpc {:?}: {}", status.code(), status.message()))?;
    let status = answer.into_inner().status();
    if status == ServingStatus::Serving {
        Ok(status.as_str_name().to_owned())
    } else {
        Err(format!("status {}", status.as_str_name()))
    }
}

/// Opens a probe connection to `host`, over TLS when its pool has TLS (for an `auto`
/// cluster, in the version the endpoint picks).
async fn connect(host: &Host, h2: bool) -> Result<Conn, String> {
    let stream = upstream::connect_tcp(&host.address, host.pool.socket())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match host.pool.tls() {
        None => handshake(TokioIo::new(stream), h2).await,
        Some(tls) => {
            let alpn = probe_alpn(&tls, h2);
            let established = tls
                .handshake(stream, alpn)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let h2 = established.h2.unwrap_or(h2);
            handshake(TokioIo::new(established.io), h2).await
        }
    }
}

/// What a probe offers by ALPN: its own version, or both for an `auto` cluster.
fn probe_alpn(tls: &UpstreamTls, h2: bool) -> Alpn {
    if h2 {
        Alpn::Http2
    } else if tls.is_auto() {
        Alpn::Either
    } else {
        Alpn::Http1
    }
}

/// The HTTP handshake of a probe connection, its driver spawned.
async fn handshake<T>(io: T, h2: bool) -> Result<Conn, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Conn::H2(sender))
    } else {
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Conn::H1(sender))
    }
}

/// The gRPC probe's connector to a TLS endpoint: TCP, then the handshake with the pool's
/// settings in force at that moment (ALPN `h2`).
#[derive(Debug, Clone)]
struct TlsConnect {
    host: Weak<Host>,
}

/// What a [`TlsConnect`] dial yields.
type TlsDial = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsIo>>> + Send>>;

impl tonic::codegen::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsIo>;
    type Error = io::Error;
    type Future = TlsDial;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let host = self.host.clone();
        Box::pin(async move {
            let host = host
                .upgrade()
                .ok_or_else(|| io::Error::other("the endpoint is no longer configured"))?;
            let (address, socket, tls) = dial_parts(&host.address, &host.pool)?;
            drop(host);
            let stream = upstream::connect_tcp(&address, socket).await?;
            let established = tls.handshake(stream, Alpn::Http2).await?;
            Ok(TokioIo::new(established.io))
        })
    }
}

/// What a dial to a pool's endpoint needs, owned.
fn dial_parts(
    address: &Arc<str>,
    pool: &Pool,
) -> io::Result<(Arc<str>, Option<std::net::SocketAddr>, Arc<UpstreamTls>)> {
    let tls = pool
        .tls()
        .ok_or_else(|| io::Error::other("the endpoint has no TLS settings any more"))?;
    Ok((Arc::clone(address), pool.socket(), tls))
}

fn lock(state: &HealthState) -> std::sync::MutexGuard<'_, HealthDetail> {
    state.detail.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostRegistry;
    use models_config::ValidEndpoint;

    fn spec(json: &str) -> HealthCheckSpec {
        serde_json::from_str(json).unwrap()
    }

    fn host() -> (HostRegistry, Arc<Host>) {
        let registry = HostRegistry::new(1);
        let host = registry.host(&ValidEndpoint {
            address: Arc::from("127.0.0.1:1"),
            authority: "127.0.0.1:1".parse().unwrap(),
            socket: "127.0.0.1:1".parse().ok(),
            weight: 1,
        });
        (registry, host)
    }

    #[test]
    fn thresholds_decide_the_transitions() {
        let (_r, host) = host();
        let s = spec(r#"{"http_path": "/", "unhealthy_threshold": 2, "healthy_threshold": 2}"#);
        let c: Arc<str> = Arc::from("c");
        let fail = || Err("status 503".to_owned());
        let pass = || Ok("200".to_owned());
        record(&host, &c, &s, pass(), Duration::ZERO);
        assert_eq!(host.health.snapshot().0, HealthStatus::Healthy);
        record(&host, &c, &s, fail(), Duration::ZERO);
        assert!(
            host.eligible(UNHEALTHY),
            "one failure is below the threshold"
        );
        record(&host, &c, &s, fail(), Duration::ZERO);
        assert!(!host.eligible(UNHEALTHY));
        assert_eq!(host.health.snapshot().0, HealthStatus::Unhealthy);
        record(&host, &c, &s, pass(), Duration::ZERO);
        assert!(
            !host.eligible(UNHEALTHY),
            "one pass is below the healthy threshold"
        );
        record(&host, &c, &s, pass(), Duration::ZERO);
        assert!(host.eligible(UNHEALTHY));
        let (status, last) = host.health.snapshot();
        assert_eq!(status, HealthStatus::Healthy);
        assert_eq!(last.unwrap().detail, "200");
    }

    #[test]
    fn expected_statuses_replace_2xx() {
        let s = spec(r#"{"http_path": "/", "expected_statuses": [200, 429]}"#);
        assert!(status_ok(&s, StatusCode::TOO_MANY_REQUESTS));
        assert!(!status_ok(&s, StatusCode::NO_CONTENT));
        let s = spec(r#"{"http_path": "/"}"#);
        assert!(status_ok(&s, StatusCode::NO_CONTENT));
        assert!(!status_ok(&s, StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn a_changed_check_restarts_the_prober_and_stopping_resets_the_state() {
        let (_r, host) = host();
        let (spawner, mut receiver) = ProbeSpawner::new();
        let c: Arc<str> = Arc::from("c");
        let s = spec(r#"{"http_path": "/a"}"#);
        spawner.ensure(&host, &s, false, &c);
        spawner.ensure(&host, &s, false, &c);
        let first = receiver.rx.try_recv().expect("one prober");
        assert!(
            receiver.rx.try_recv().is_err(),
            "the same check keeps its prober"
        );
        spawner.ensure(&host, &spec(r#"{"http_path": "/b"}"#), false, &c);
        assert!(
            first.stop.is_cancelled(),
            "a changed check stops the old prober"
        );
        let second = receiver.rx.try_recv().expect("a new prober");
        record(&host, &c, &s, Err("x".into()), Duration::ZERO);
        record(&host, &c, &s, Err("x".into()), Duration::ZERO);
        assert!(!host.eligible(UNHEALTHY));
        stop(&host);
        assert!(second.stop.is_cancelled());
        assert!(host.eligible(UNHEALTHY));
        assert_eq!(host.health.snapshot().0, HealthStatus::Unknown);
    }
}
