//! Span export over OTLP (gRPC): one span per request, a child of the caller's W3C trace.
//!
//! The request path only decides whether a request is sampled ([`Tracer::start`]), and at its
//! end hands a compact record of the span (shared strings, no protobuf) to a bounded queue
//! ([`Tracer::finish`]); it never waits and never blocks. A task on a runtime of the binary's
//! choosing turns the records into OTLP spans and exports them in batches: one `Export` call
//! per [`MAX_BATCH`] spans, or per [`LINGER`] for the spans that came in meanwhile. A queue
//! that is full (a collector that is down or slow) drops the new span and counts it: tracing
//! never slows requests down.
//!
//! Sampling is parent-based: a request whose caller marked its trace sampled (`traceparent`
//! flags `01`) is always recorded; any other is recorded at `--otlp-sampling-ratio`, decided
//! on the trace id, so every service seeing the same trace decides the same way.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use tokio::sync::{mpsc, oneshot};

use crate::rng;

/// The W3C trace-context request header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace-state request header, passed on untouched.
pub const TRACESTATE: &str = "tracestate";

/// Spans waiting for the exporter; past this, new spans are dropped (and counted).
const QUEUE: usize = 8192;
/// Most spans in one `Export` call.
pub const MAX_BATCH: usize = 512;
/// How long the exporter waits for a batch to fill before sending what it has.
pub const LINGER: Duration = Duration::from_millis(500);
/// How long one `Export` call may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP flags, the same on every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// OTLP/gRPC collector to export one span per request to, e.g. `http://127.0.0.1:4317`
    /// (an OpenTelemetry Collector, Jaeger, Tempo). Off when not set.
    #[arg(long = "otlp-endpoint", value_name = "URL")]
    pub endpoint: Option<String>,

    /// With --otlp-endpoint: the share of traces recorded, 0.0 to 1.0, for requests whose
    /// caller did not mark its trace sampled (those are always recorded).
    #[arg(
        long = "otlp-sampling-ratio",
        visible_alias = "otlp-sample-ratio",
        value_name = "RATIO",
        default_value_t = 1.0
    )]
    pub sampling_ratio: f64,
}

/// A bad OTLP flag.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `--otlp-endpoint` is not an `http://` URL with a host.
    #[error(
        "--otlp-endpoint {0:?}: expected an http:// URL of an OTLP/gRPC collector, e.g. http://127.0.0.1:4317"
    )]
    Endpoint(String),
    /// `--otlp-sampling-ratio` is outside 0.0 to 1.0.
    #[error("--otlp-sampling-ratio {0}: expected a number from 0.0 to 1.0")]
    Ratio(f64),
}

/// A parsed W3C `traceparent` (`00-<trace-id>-<parent-id>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub span_id: [u8; 8],
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` for anything the W3C spec says to ignore (a bad
    /// length, non-hex or upper-case digits, an all-zero id, version `ff`, or a version `00`
    /// value with anything after the flags).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the caller recorded its part of the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header value (version `00`).
    pub fn to_header(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// A recorded request's span, from its start; ended with [`Tracer::finish`].
#[derive(Debug)]
pub struct SpanStart {
    /// The trace this span belongs to: the caller's, or a new one.
    pub trace_id: [u8; 16],
    /// This span's id.
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    start_unix_nanos: u64,
    start: Instant,
}

impl SpanStart {
    /// The `traceparent` to send on, naming this span as the parent (sampled).
    pub fn traceparent(&self) -> HeaderValue {
        TraceParent {
            trace_id: self.trace_id,
            span_id: self.span_id,
            flags: 1,
        }
        .to_header()
    }
}

/// An attribute value of a span (or a part of its name), kept as cheap to make as the request
/// path allows and turned into text by the exporter.
#[derive(Debug, Clone)]
pub enum AttrValue {
    /// A string known at compile time.
    Static(&'static str),
    /// A shared string (a route key, a cluster name).
    Shared(Arc<str>),
    /// An owned string.
    Owned(String),
    /// An integer.
    Int(i64),
}

impl AttrValue {
    fn text(&self) -> String {
        match self {
            AttrValue::Static(s) => (*s).to_owned(),
            AttrValue::Shared(s) => s.to_string(),
            AttrValue::Owned(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
        }
    }
}

impl From<AttrValue> for any_value::Value {
    fn from(v: AttrValue) -> Self {
        match v {
            AttrValue::Owned(s) => any_value::Value::StringValue(s),
            AttrValue::Int(i) => any_value::Value::IntValue(i),
            other => any_value::Value::StringValue(other.text()),
        }
    }
}

/// A span's name: fixed, or two parts joined by a space (e.g. `POST` and a route key).
#[derive(Debug, Clone)]
pub enum SpanName {
    /// A name known at compile time, e.g. `lightbulb.v1.Resolver/Resolve`.
    Static(&'static str),
    /// `"<first> <second>"`.
    Joined(AttrValue, AttrValue),
}

impl SpanName {
    fn text(&self) -> String {
        match self {
            SpanName::Static(s) => (*s).to_owned(),
            SpanName::Joined(a, b) => format!("{} {}", a.text(), b.text()),
        }
    }
}

/// What is known of a span once its request has been answered.
#[derive(Debug)]
pub struct SpanEnd {
    /// The span name, e.g. `POST route-a` or `lightbulb.v1.Resolver/Resolve`.
    pub name: SpanName,
    /// Attributes, e.g. `("cluster", ...)`.
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// `Some(description)` when the request failed (the span's status is then ERROR).
    pub error: Option<String>,
    /// The caller's `tracestate`, kept on the span.
    pub trace_state: Option<String>,
}

enum Message {
    Span(Box<Finished>),
    Flush(oneshot::Sender<()>),
}

/// A span as the request path leaves it: converted to protobuf by the exporter.
struct Finished {
    start: SpanStart,
    end: SpanEnd,
    duration_nanos: u64,
}

impl Finished {
    fn into_span(self) -> Span {
        let Finished {
            start,
            end,
            duration_nanos,
        } = self;
        let status = end.error.map(|message| Status {
            message,
            code: status::StatusCode::Error as i32,
        });
        // The trace flags (sampled), and "the parent's remoteness is known" (bit 8), with
        // "the parent is remote" (bit 9) when there is a parent: the caller.
        let remote_parent = if start.parent_span_id.is_some() {
            0x200
        } else {
            0
        };
        Span {
            trace_id: start.trace_id.to_vec(),
            span_id: start.span_id.to_vec(),
            trace_state: end.trace_state.unwrap_or_default(),
            parent_span_id: start.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 1 | 0x100 | remote_parent,
            name: end.name.text(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start.start_unix_nanos,
            end_time_unix_nano: start.start_unix_nanos + duration_nanos,
            attributes: end
                .attributes
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_owned(),
                    value: Some(AnyValue {
                        value: Some(value.into()),
                    }),
                })
                .collect(),
            status,
            ..Default::default()
        }
    }
}

/// Decides which requests are recorded and queues their spans for export.
#[derive(Debug)]
pub struct Tracer {
    queue: mpsc::Sender<Message>,
    /// Trace ids whose low 64 bits are below this are sampled.
    threshold: u64,
    always: bool,
    dropped: Counter,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Span(_) => f.write_str("Span"),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Tracer {
    /// With `--otlp-endpoint`, starts the exporter task of binary `service` (the
    /// `service.name` of its spans) on `runtime` and returns the tracer; `None` without it.
    /// Metrics are named `<service>_otlp_spans_exported_total{result}` and
    /// `<service>_otlp_spans_dropped_total`.
    pub fn spawn(
        args: &OtlpArgs,
        service: &'static str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Option<Arc<Tracer>>, OtlpError> {
        let Some(url) = &args.endpoint else {
            return Ok(None);
        };
        let ratio = args.sampling_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(OtlpError::Ratio(ratio));
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .ok()
            .filter(|_| url.starts_with("http://"))
            .ok_or_else(|| OtlpError::Endpoint(url.clone()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXPORT_TIMEOUT);
        let (queue, rx) = mpsc::channel(QUEUE);
        let exported = |result: &'static str| metrics::counter!(format!("{service}_otlp_spans_exported_total"), "result" => result);
        let exporter = Exporter {
            rx,
            endpoint,
            resource: resource(service),
            ok: exported("ok"),
            failed: exported("error"),
            failing: false,
            url: url.clone(),
        };
        runtime.spawn(exporter.run());
        Ok(Some(Arc::new(Tracer {
            queue,
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            dropped: metrics::counter!(format!("{service}_otlp_spans_dropped_total")),
        })))
    }

    /// Whether to record a request with this `traceparent` value; when so, its span starts now.
    pub fn start(&self, traceparent: Option<&[u8]>) -> Option<SpanStart> {
        let parent = traceparent.and_then(TraceParent::parse);
        let trace_id = match &parent {
            Some(p) => p.trace_id,
            None => new_id(),
        };
        let sampled = self.always
            || parent.is_some_and(|p| p.sampled())
            || u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) < self.threshold;
        if !sampled {
            return None;
        }
        let mut span_id = rng::next_u64().to_be_bytes();
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        Some(SpanStart {
            trace_id,
            span_id,
            parent_span_id: parent.map(|p| p.span_id),
            start_unix_nanos: unix_nanos(),
            start: Instant::now(),
        })
    }

    /// Ends a span now and queues it for export (or drops it, counted, when the queue is
    /// full). Never waits.
    pub fn finish(&self, start: SpanStart, end: SpanEnd) {
        let duration_nanos = start.start.elapsed().as_nanos() as u64;
        let finished = Finished {
            start,
            end,
            duration_nanos,
        };
        if self
            .queue
            .try_send(Message::Span(Box::new(finished)))
            .is_err()
        {
            self.dropped.increment(1);
        }
    }

    /// Waits, at most `within`, until every span queued before this call has been exported
    /// (or its export failed). Called at shutdown.
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.queue.try_send(Message::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

/// A new, random, non-zero trace id.
fn new_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&rng::next_u64().to_be_bytes());
    id[8..].copy_from_slice(&rng::next_u64().to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn resource(service: &'static str) -> Resource {
    let attr = |key: &str, value: String| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    };
    Resource {
        attributes: vec![
            attr("service.name", service.to_owned()),
            attr("service.version", env!("CARGO_PKG_VERSION").to_owned()),
            attr("process.pid", std::process::id().to_string()),
        ],
        ..Default::default()
    }
}

/// The task that drains the queue into `Export` calls.
struct Exporter {
    rx: mpsc::Receiver<Message>,
    endpoint: tonic::transport::Endpoint,
    resource: Resource,
    ok: Counter,
    failed: Counter,
    /// Whether the last export failed (a failure is logged once, and the recovery once).
    failing: bool,
    url: String,
}

impl Exporter {
    /// Collects spans until a batch is full, [`LINGER`] has passed since its first span, or
    /// a flush is asked for; exports the batch; and again, until every sender is gone.
    async fn run(mut self) {
        let mut client = TraceServiceClient::new(self.endpoint.connect_lazy());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut waiters = Vec::new();
        let mut open = true;
        while open {
            let Some(first) = self.rx.recv().await else {
                break;
            };
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            let mut next = Some(first);
            loop {
                match next.take() {
                    Some(Message::Span(span)) => batch.push(span.into_span()),
                    Some(Message::Flush(waiter)) => {
                        waiters.push(waiter);
                        break;
                    }
                    None => {}
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                tokio::select! {
                    biased;
                    message = self.rx.recv() => match message {
                        Some(message) => next = Some(message),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = &mut linger => break,
                }
            }
            if !batch.is_empty() {
                self.export(&mut client, std::mem::take(&mut batch)).await;
                batch.reserve(MAX_BATCH);
            }
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    async fn export(
        &mut self,
        client: &mut TraceServiceClient<tonic::transport::Channel>,
        spans: Vec<Span>,
    ) {
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: env!("CARGO_PKG_NAME").to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match client.export(request).await {
            Ok(_) => {
                self.ok.increment(count);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(endpoint = %self.url, "OTLP export recovered");
                }
            }
            Err(status) => {
                self.failed.increment(count);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(endpoint = %self.url, error = %status.message(), code = ?status.code(), spans = count, "OTLP export failed; spans are dropped until the collector answers");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_prints_back() {
        let p = TraceParent::parse(VALID).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        assert!(p.sampled());
        assert_eq!(p.to_header().as_bytes(), VALID);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
        // A later version may append fields after a dash.
        assert!(
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    fn tracer(ratio: f64) -> (Tracer, mpsc::Receiver<Message>) {
        let (queue, rx) = mpsc::channel(4);
        let tracer = Tracer {
            queue,
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            dropped: Counter::noop(),
        };
        (tracer, rx)
    }

    #[test]
    fn a_span_is_a_child_of_the_callers_trace() {
        let (tracer, mut rx) = tracer(1.0);
        let start = tracer.start(Some(VALID)).unwrap();
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(start.trace_id, parent.trace_id);
        assert_eq!(start.parent_span_id, Some(parent.span_id));
        let sent_on = TraceParent::parse(start.traceparent().as_bytes()).unwrap();
        assert_eq!(sent_on.trace_id, parent.trace_id);
        assert_eq!(sent_on.span_id, start.span_id);
        assert!(sent_on.sampled());
        tracer.finish(
            start,
            SpanEnd {
                name: SpanName::Joined(AttrValue::Static("GET"), AttrValue::Shared("r".into())),
                attributes: vec![
                    ("cluster", AttrValue::Static("c")),
                    ("n", AttrValue::Int(3)),
                ],
                error: Some("upstream_timeout".into()),
                trace_state: Some("k=v".into()),
            },
        );
        let Ok(Message::Span(finished)) = rx.try_recv() else {
            panic!("no span queued")
        };
        let span = finished.into_span();
        assert_eq!(span.name, "GET r");
        assert_eq!(span.trace_id, parent.trace_id.to_vec());
        assert_eq!(span.parent_span_id, parent.span_id.to_vec());
        assert_eq!(span.trace_state, "k=v");
        assert_eq!(span.attributes.len(), 2);
        assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }

    #[test]
    fn sampling_follows_the_ratio_and_the_callers_flag() {
        let (none, _rx) = tracer(0.0);
        assert!(none.start(None).is_none());
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(none.start(Some(unsampled)).is_none());
        // The caller recorded its part: so does this service.
        assert!(none.start(Some(VALID)).is_some());

        let (half, _rx) = tracer(0.5);
        let kept = (0..10_000).filter(|_| half.start(None).is_some()).count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        // Decided on the trace id: the same trace is decided the same way every time.
        let first = half.start(Some(unsampled)).is_some();
        assert!((0..20).all(|_| half.start(Some(unsampled)).is_some() == first));
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (tracer, _rx) = tracer(1.0);
        for _ in 0..10 {
            let start = tracer.start(None).unwrap();
            tracer.finish(
                start,
                SpanEnd {
                    name: SpanName::Static("x"),
                    attributes: Vec::new(),
                    error: None,
                    trace_state: None,
                },
            );
        }
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let args = |endpoint: &str, ratio: f64| OtlpArgs {
            endpoint: Some(endpoint.to_owned()),
            sampling_ratio: ratio,
        };
        let err = Tracer::spawn(&args("collector:4317", 1.0), "t", rt.handle()).unwrap_err();
        assert!(err.to_string().contains("--otlp-endpoint"), "{err}");
        let err = Tracer::spawn(&args("http://127.0.0.1:4317", 1.5), "t", rt.handle()).unwrap_err();
        assert!(err.to_string().contains("--otlp-sampling-ratio"), "{err}");
        let none = OtlpArgs {
            endpoint: None,
            sampling_ratio: 1.0,
        };
        assert!(Tracer::spawn(&none, "t", rt.handle()).unwrap().is_none());
    }
}
