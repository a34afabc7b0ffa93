//! Mirroring (DESIGN §11 `mirror`): a sampled copy of a route's requests goes to a shadow
//! cluster as well, with `x-traffic-class: shadow`, its body the primary's own chunks handed
//! over a byte-bounded queue ([`crate::body::tee`]).
//!
//! The copy runs on its own task and is fire-and-forget: the primary never waits for it, and
//! its answer is discarded after its status is compared with the primary's
//! (`router_mirror_status_match_total`). At most `max_in_flight` copies of a route run at
//! once and each holds at most `max_buffer_bytes` of queued body; past either the copy is
//! dropped and counted, never the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, SizeHint};
use http_body_util::BodyExt as _;
use metrics::Counter;
use models_config::allocation;
use models_config::spec::{MirrorSpec, Protocol};
use tokio::sync::oneshot;

use crate::body::{RequestBody, tee};
use crate::headers;
use crate::host::InFlight;
use crate::metrics as router_metrics;
use crate::rng;
use crate::route::Cluster;
use crate::upstream::Transport;

use crate::headers::TRAFFIC_CLASS;

/// The traffic class mirrored requests carry.
const SHADOW: HeaderValue = HeaderValue::from_static("shadow");

/// Longest a mirror copy may take to be answered and read, whatever its cluster allows.
const MAX_MIRROR_TIME: Duration = Duration::from_secs(300);

/// A route's mirror, ready for the request path.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow cluster.
    pub cluster: Arc<Cluster>,
    /// Requests mirrored per 10,000.
    sample: u32,
    /// Salt of the deterministic sample (the routing key, suffixed).
    salt: Box<str>,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    max_buffer: u64,
    metrics: Arc<MirrorMetrics>,
    /// The configured block, for display.
    pub spec: MirrorSpec,
}

/// The mirror counters of one route.
#[derive(Debug)]
struct MirrorMetrics {
    mirrored: Counter,
    dropped_in_flight: Counter,
    dropped_buffer: Counter,
    failed: Counter,
    matched: Counter,
    diverged: Counter,
}

/// What the primary path keeps of a copy it started: the queue its body chunks go to, and
/// where its final status is reported for the comparison.
#[derive(Debug)]
pub struct Started {
    /// The primary body's end of the queue.
    pub tee: Option<tee::Sender>,
    /// Receives the primary's status.
    pub status: oneshot::Sender<StatusCode>,
}

/// Counts one mirror copy of a route in flight until dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Mirror {
    /// The mirror of route `key` from its validated block.
    pub fn new(key: &str, spec: &MirrorSpec, cluster: Arc<Cluster>) -> Self {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut l = vec![("route", key.to_owned())];
            if let Some((k, v)) = extra {
                l.push((k, v.to_owned()));
            }
            l
        };
        let metrics = MirrorMetrics {
            mirrored: metrics::counter!(router_metrics::MIRROR_REQUESTS_TOTAL, &labels(None)),
            dropped_in_flight: metrics::counter!(
                router_metrics::MIRROR_DROPPED_TOTAL,
                &labels(Some(("reason", "max_in_flight")))
            ),
            dropped_buffer: metrics::counter!(
                router_metrics::MIRROR_DROPPED_TOTAL,
                &labels(Some(("reason", "buffer_full")))
            ),
            failed: metrics::counter!(router_metrics::MIRROR_FAILED_TOTAL, &labels(None)),
            matched: metrics::counter!(
                router_metrics::MIRROR_STATUS_MATCH_TOTAL,
                &labels(Some(("match", "true")))
            ),
            diverged: metrics::counter!(
                router_metrics::MIRROR_STATUS_MATCH_TOTAL,
                &labels(Some(("match", "false")))
            ),
        };
        Mirror {
            cluster,
            sample: (spec.sample_percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            salt: format!("{key}/mirror").into_boxed_str(),
            max_in_flight: spec.max_in_flight as usize,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_buffer: spec.max_buffer_bytes,
            metrics: Arc::new(metrics),
            spec: spec.clone(),
        }
    }

    /// Whether this request is mirrored: deterministic on the sticky header's value when
    /// the route has one and the request carries it, a random draw otherwise.
    #[inline]
    pub fn sampled(&self, headers: &HeaderMap, sticky: Option<&HeaderName>) -> bool {
        if self.sample >= allocation::BUCKETS {
            return true;
        }
        if self.sample == 0 {
            return false;
        }
        let bucket = match sticky.and_then(|h| headers.get(h)) {
            Some(value) => allocation::bucket_bytes(&self.salt, value.as_bytes()),
            None => rng::below(allocation::BUCKETS as usize) as u32,
        };
        bucket < self.sample
    }

    /// Starts a copy of the request whose head is given, unless `max_in_flight` copies run
    /// already (then it is dropped and counted). `hint` is the primary body's size hint;
    /// `has_body` whether there is a body to copy at all.
    pub fn start(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        hint: SizeHint,
        has_body: bool,
    ) -> Option<Started> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(&self.in_flight));
        if before >= self.max_in_flight {
            self.metrics.dropped_in_flight.increment(1);
            return None;
        }
        self.metrics.mirrored.increment(1);
        let (tee, body) = if has_body {
            let (tx, rx) = tee::channel(self.max_buffer, hint, self.metrics.dropped_buffer.clone());
            (Some(tx), RequestBody::mirror(rx))
        } else {
            (None, RequestBody::empty())
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = version;
        *req.headers_mut() = headers.clone();
        req.headers_mut().insert(TRAFFIC_CLASS, SHADOW);
        let (status_tx, status_rx) = oneshot::channel();
        tokio::spawn(run(
            Arc::clone(&self.cluster),
            req,
            status_rx,
            Arc::clone(&self.metrics),
            slot,
        ));
        Some(Started {
            tee,
            status: status_tx,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends one copy, reads its answer to the end, and compares its status with the primary's.
async fn run(
    cluster: Arc<Cluster>,
    mut req: Request<RequestBody>,
    primary: oneshot::Receiver<StatusCode>,
    metrics: Arc<MirrorMetrics>,
    _slot: Slot,
) {
    let Some(i) = cluster.pick(req.headers(), None) else {
        metrics.failed.increment(1);
        return;
    };
    let host = &cluster.endpoints[i];
    let _in_flight = InFlight::start(host, None);
    let h2 = match cluster.protocol {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Auto => req.version() == Version::HTTP_2,
    };
    let has_host = req.headers().contains_key(http::header::HOST);
    headers::prepare_uri(&mut req, &host.authority, h2, cluster.tls, has_host);
    let limit = cluster.request_timeout.min(MAX_MIRROR_TIME);
    let exchange = async {
        let transport = if h2 {
            Transport::Http2
        } else {
            Transport::Http1
        };
        let resp = host
            .pool
            .send(req, transport, cluster.connect_timeout, None)
            .await
            .ok()?;
        let status = resp.status();
        let mut body = resp.into_body();
        while !body.is_end_stream() {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return None,
                None => break,
            }
        }
        Some(status)
    };
    let status = match tokio::time::timeout(limit, exchange).await {
        Ok(Some(status)) => status,
        _ => {
            tracing::debug!(cluster = %cluster.name, endpoint = %host.address, "mirror copy failed");
            metrics.failed.increment(1);
            return;
        }
    };
    if let Ok(Ok(primary)) = tokio::time::timeout(MAX_MIRROR_TIME, primary).await {
        if primary == status {
            metrics.matched.increment(1);
        } else {
            metrics.diverged.increment(1);
        }
    }
}
