//! An OTLP/gRPC trace receiver: tonic serving `opentelemetry.proto.collector.trace.v1.TraceService`
//! on `127.0.0.1:0` (or a given address, [`OtlpReceiver::start_on`]) with
//! `serve_with_incoming_shutdown`, standing in for a collector.
//!
//! Every span of every `Export` call is kept, in arrival order, together with the resource
//! attributes of its `ResourceSpans` (`service.name`, `service.version`) and the name of its
//! instrumentation scope ([`ReceivedSpan`]). A test reads a snapshot ([`OtlpReceiver::spans`])
//! or waits until the spans it expects have arrived ([`OtlpReceiver::wait_for_spans`],
//! [`OtlpReceiver::wait_for_span`]): the wait is woken by each export and bounded by
//! [`DEADLINE`], which only turns a hang into a failure listing the spans received.
//!
//! Ids are compared as lower-case hex, as they are written in a W3C `traceparent`
//! (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, see [`TraceParent`]).
//!
//! Dropping the [`OtlpReceiver`] stops the server.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::DEADLINE;

/// The resource attribute naming the service that exported a span.
pub const SERVICE_NAME: &str = "service.name";

/// The resource attribute carrying the version of the service that exported a span.
pub const SERVICE_VERSION: &str = "service.version";

/// `Status.code` of a span that failed (`STATUS_CODE_ERROR`).
pub const STATUS_ERROR: i32 = 2;

/// A running OTLP/gRPC trace receiver. Dropping it stops the server.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// One span as the receiver got it, with what its `ResourceSpans` and `ScopeSpans` said.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span as exported.
    pub span: Span,
    /// The attributes of the span's resource (`service.name`, ..).
    pub resource: Vec<KeyValue>,
    /// The name of the span's instrumentation scope (empty when none was sent).
    pub scope: String,
}

/// A parsed W3C `traceparent` value (`00-<trace id>-<parent id>-<flags>`), ids in lower-case
/// hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits: the span id of the caller's span.
    pub parent_id: String,
    /// 2 hex digits; `01` is "sampled".
    pub flags: String,
}

/// What the service and the waiters share.
#[derive(Debug)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// `Export` calls received so far.
    exports: AtomicUsize,
    /// The number of spans received, bumped after each export so waiters look again.
    received: watch::Sender<usize>,
}

/// `TraceService` recording into a [`State`].
#[derive(Debug)]
struct Collector {
    state: Arc<State>,
}

// === impl OtlpReceiver ===

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound.
    pub async fn start() -> OtlpReceiver {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and starts serving (e.g. a fixed port for a benchmark script).
    ///
    /// # Panics
    ///
    /// When `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> OtlpReceiver {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the OTLP receiver to {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("local address of the OTLP receiver");
        let state = Arc::new(State {
            spans: Mutex::new(Vec::new()),
            exports: AtomicUsize::new(0),
            received: watch::Sender::new(0),
        });
        let collector = Collector {
            state: state.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        OtlpReceiver {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The bound address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as given to `--otlp-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.state.spans).clone()
    }

    /// The spans received so far that satisfy `matches`, in arrival order.
    pub fn spans_matching(&self, matches: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        lock(&self.state.spans)
            .iter()
            .filter(|s| matches(s))
            .cloned()
            .collect()
    }

    /// The spans received so far whose trace id is `trace_id` (hex).
    pub fn spans_in_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans_matching(|s| s.trace_id() == trace_id)
    }

    /// `Export` calls received so far.
    pub fn export_calls(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` received spans satisfy `matches`, and returns all those that
    /// do; `what` describes them for the failure message.
    ///
    /// # Panics
    ///
    /// When [`DEADLINE`] passes first, listing every span received.
    pub async fn wait_for_spans(
        &self,
        what: &str,
        n: usize,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut received = self.state.received.subscribe();
        loop {
            // Marks the current count seen before looking, so an export landing between the
            // look and the wait wakes the wait.
            received.borrow_and_update();
            let found = self.spans_matching(&matches);
            if found.len() >= n {
                return found;
            }
            if tokio::time::timeout_at(give_up, received.changed())
                .await
                .is_err()
            {
                panic!(
                    "gave up after {DEADLINE:?} waiting for {n} span(s): {what}; {} matched; \
                     received ({} export calls):\n{}",
                    found.len(),
                    self.export_calls(),
                    describe(&self.spans())
                );
            }
        }
    }

    /// Waits until a received span satisfies `matches`, and returns the first that does.
    ///
    /// # Panics
    ///
    /// As [`OtlpReceiver::wait_for_spans`].
    pub async fn wait_for_span(
        &self,
        what: &str,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        self.wait_for_spans(what, 1, matches).await.remove(0)
    }

    /// Waits until a span of trace `trace_id` (hex) arrived, and returns the first.
    ///
    /// # Panics
    ///
    /// As [`OtlpReceiver::wait_for_spans`].
    pub async fn wait_for_trace(&self, trace_id: &str) -> ReceivedSpan {
        self.wait_for_span(&format!("a span of trace {trace_id}"), |s| {
            s.trace_id() == trace_id
        })
        .await
    }

    /// Every span received so far, one line each, for failure messages.
    pub fn describe(&self) -> String {
        describe(&self.spans())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === impl Collector ===

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.state.exports.fetch_add(1, Ordering::SeqCst);
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        span,
                        resource: resource.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
        let total = {
            let mut spans = lock(&self.state.spans);
            spans.extend(received);
            spans.len()
        };
        self.state.received.send_replace(total);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

// === impl ReceivedSpan ===

impl ReceivedSpan {
    /// The span's name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id in hex; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The span's `trace_state` (the caller's `tracestate`), as exported.
    pub fn trace_state(&self) -> &str {
        &self.span.trace_state
    }

    /// The span's kind (`SpanKind::Unspecified` for a value the proto does not know).
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// `Status.code` (0 unset, 1 ok, 2 error); 0 when the span has no status.
    pub fn status_code(&self) -> i32 {
        self.span.status.as_ref().map_or(0, |s| s.code)
    }

    /// The value of span attribute `key`, when the span has it.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        find(&self.span.attributes, key)
    }

    /// Span attribute `key` when it is a string.
    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        match self.attribute(key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// Span attribute `key` when it is an integer.
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        match self.attribute(key)? {
            Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// The keys of the span's attributes, in the order they were exported.
    pub fn attribute_keys(&self) -> Vec<&str> {
        self.span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect()
    }

    /// Resource attribute `key` when it is a string.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match find(&self.resource, key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// The resource's `service.name`.
    pub fn service_name(&self) -> Option<&str> {
        self.resource_str(SERVICE_NAME)
    }
}

impl fmt::Display for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} kind={} trace={} span={} parent={} status={} trace_state={:?} service={:?} {{",
            self.name(),
            self.span.kind,
            self.trace_id(),
            self.span_id(),
            self.parent_span_id(),
            self.status_code(),
            self.trace_state(),
            self.service_name(),
        )?;
        for (i, kv) in self.span.attributes.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => write!(f, "{sep}{}={s:?}", kv.key)?,
                Some(Value::IntValue(n)) => write!(f, "{sep}{}={n}", kv.key)?,
                Some(Value::BoolValue(b)) => write!(f, "{sep}{}={b}", kv.key)?,
                Some(Value::DoubleValue(d)) => write!(f, "{sep}{}={d}", kv.key)?,
                Some(other) => write!(f, "{sep}{}={other:?}", kv.key)?,
                None => write!(f, "{sep}{}=<none>", kv.key)?,
            }
        }
        f.write_str("}")
    }
}

// === impl TraceParent ===

impl TraceParent {
    /// Parses a version-`00` `traceparent`; `None` when `value` is not one (wrong shape,
    /// upper-case or non-hex digits).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let well_formed = parts.next().is_none()
            && version == "00"
            && lower_hex(trace_id, 32)
            && lower_hex(parent_id, 16)
            && lower_hex(flags, 2);
        well_formed.then(|| TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

// === helpers ===

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `spans`, one per line.
pub fn describe(spans: &[ReceivedSpan]) -> String {
    if spans.is_empty() {
        return "  (none)".to_owned();
    }
    spans
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the attribute `key` in `attributes`.
fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status as SpanStatus};

    use super::*;
    use crate::within;

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_owned())),
            }),
        }
    }

    fn int_kv(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(value)),
            }),
        }
    }

    fn export_of(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string_kv(SERVICE_NAME, service)],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "scope".to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    fn span(name: &str, trace: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![0xab; 8],
            parent_span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
            trace_state: "k=v".to_owned(),
            name: name.to_owned(),
            kind: SpanKind::Server as i32,
            attributes: vec![string_kv("route", "k"), int_kv("code", 200)],
            status: Some(SpanStatus {
                code: STATUS_ERROR,
                ..SpanStatus::default()
            }),
            ..Span::default()
        }
    }

    #[tokio::test]
    async fn the_otlp_receiver_keeps_exported_spans_with_their_resource_and_wakes_waiters() {
        let receiver = OtlpReceiver::start().await;
        let mut client = within(
            "connecting to the OTLP receiver",
            DEADLINE,
            TraceServiceClient::connect(receiver.url()),
        )
        .await
        .expect("connect to the OTLP receiver");

        let waiting = receiver.wait_for_spans("two spans named b", 2, |s| s.name() == "b");
        let exporting = async {
            client
                .export(export_of("svc", vec![span("a", 0x11), span("b", 0x22)]))
                .await
                .expect("first export");
            client
                .export(export_of("other", vec![span("b", 0x33)]))
                .await
                .expect("second export");
        };
        let (found, ()) = tokio::join!(waiting, exporting);

        assert_eq!(found.len(), 2);
        assert_eq!(receiver.spans().len(), 3);
        assert_eq!(receiver.export_calls(), 2);
        let first = &receiver.spans()[0];
        assert_eq!(first.name(), "a");
        assert_eq!(first.trace_id(), "11".repeat(16));
        assert_eq!(first.span_id(), "ab".repeat(8));
        assert_eq!(first.parent_span_id(), "0102030405060708");
        assert_eq!(first.trace_state(), "k=v");
        assert_eq!(first.kind(), SpanKind::Server);
        assert_eq!(first.status_code(), STATUS_ERROR);
        assert_eq!(first.str_attribute("route"), Some("k"));
        assert_eq!(first.int_attribute("code"), Some(200));
        assert_eq!(first.int_attribute("route"), None, "a string is not an int");
        assert_eq!(first.str_attribute("missing"), None);
        assert_eq!(first.service_name(), Some("svc"));
        assert_eq!(first.scope, "scope");
        assert_eq!(found[1].service_name(), Some("other"));
        assert_eq!(receiver.spans_in_trace(&"33".repeat(16)).len(), 1);
        let shown = receiver.describe();
        assert!(
            shown.contains("route=\"k\"") && shown.contains("code=200"),
            "{shown}"
        );
    }

    #[test]
    fn a_traceparent_is_parsed_only_when_well_formed() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a valid traceparent");
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id, "00f067aa0ba902b7");
        assert_eq!(tp.flags, "01");
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
