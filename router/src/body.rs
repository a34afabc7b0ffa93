//! The body wrappers of the request path. They pass frames through untouched (the same
//! `Bytes`, no copy); they only watch for the end of the stream, and, when a route asks for
//! it, keep the chunks for a retry ([`replay`]) or hand the same chunks to a mirror
//! ([`tee`]), both bounded. This module depends on nothing else of the router.

pub mod replay;
pub mod tee;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// The error type of request bodies (the client's, or one the router ends on purpose).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the client's upload ended, as [`Source`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Read whole.
    Complete,
    /// The client's body failed (a malformed chunk, the client gone).
    Failed,
    /// The body grew past the route's `max_request_body_bytes`; the router cut it off.
    TooLarge,
}

/// The error a body cut off at the route's limit ends with upstream.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route's max_request_body_bytes ({0})")]
pub struct TooLarge(pub u64);

/// A request body on its way upstream: the client's (read once, or replayed for a retry),
/// none, or a mirror's copy of the primary's chunks.
#[derive(Debug)]
pub struct RequestBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// No body (most GETs): nothing to read, nothing allocated.
    Empty,
    /// The client's body, read once.
    Direct(Source),
    /// One attempt of a replayable body.
    Replay(replay::Attempt),
    /// A mirror's copy.
    Mirror(tee::Receiver),
}

/// The client's body as the router reads it: the end of the upload is reported (the route
/// timeout starts there, as a client still uploading is not a slow model server), and
/// every frame is also handed to the mirror, when there is one.
#[derive(Debug)]
pub struct Source {
    incoming: Incoming,
    /// A frame read before forwarding started (the first chunk of an HTTP/1.1 chunked
    /// body, read so that a malformed one is refused with nothing sent), handed on first.
    /// Boxed: it is rare, and a frame inline would add its size to every request's future.
    first: Option<Box<Frame<Bytes>>>,
    /// Told how the body ended.
    ended: Option<oneshot::Sender<Upload>>,
    tee: Option<tee::Sender>,
    done: bool,
    /// Bytes read so far, and where they are counted.
    read: u64,
    meter: Option<BodyMeter>,
    /// The route's `max_request_body_bytes` (`u64::MAX` without one: a plain `u64` keeps
    /// the request future small).
    limit: u64,
}

/// Where the byte count of a client's body goes: the route's counter, once the body ends,
/// and, when an access-log line will be written, a tally that line reads.
#[derive(Debug)]
pub struct BodyMeter {
    /// The route's request-bytes counter.
    pub counter: metrics::Counter,
    /// Bytes read so far, kept up to date frame by frame.
    pub tally: Option<Arc<AtomicU64>>,
}

impl Source {
    /// Wraps the client's body (`first`: a frame already read from it, handed on first),
    /// cutting it off past `limit` bytes; the receiver is told how it ended (and nothing
    /// when the body is dropped).
    pub fn new(
        incoming: Incoming,
        first: Option<Frame<Bytes>>,
        tee: Option<tee::Sender>,
        meter: Option<BodyMeter>,
        limit: Option<u64>,
    ) -> (Self, oneshot::Receiver<Upload>) {
        let (tx, rx) = oneshot::channel();
        let source = Source {
            incoming,
            first: first.map(Box::new),
            ended: Some(tx),
            tee,
            done: false,
            read: 0,
            meter,
            limit: limit.unwrap_or(u64::MAX),
        };
        (source, rx)
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.done || (self.first.is_none() && self.incoming.is_end_stream())
    }

    /// The client's size hint.
    pub fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = match self.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(*frame))),
            None => Pin::new(&mut self.incoming).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    if self.read > self.limit {
                        // Counted, never buffered: the chunk past the limit is not sent.
                        self.read -= data.len() as u64;
                        self.finish(Upload::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
                    }
                    if let Some(tally) = self.meter.as_ref().and_then(|m| m.tally.as_ref()) {
                        tally.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                if let Some(tee) = &mut self.tee {
                    tee.push(frame);
                }
                if self.incoming.is_end_stream() {
                    self.finish(Upload::Complete);
                }
            }
            Poll::Ready(None) => self.finish(Upload::Complete),
            Poll::Ready(Some(Err(_))) => self.finish(Upload::Failed),
            Poll::Pending => {}
        }
        polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn finish(&mut self, end: Upload) {
        let complete = end == Upload::Complete;
        self.done = true;
        if let Some(meter) = self.meter.take() {
            meter.counter.increment(self.read);
        }
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(end);
        }
        if let Some(tee) = self.tee.take() {
            if complete {
                tee.finish();
            } else {
                tee.abort();
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            meter.counter.increment(self.read);
        }
    }
}

impl RequestBody {
    /// The client's body, read once (`first`: a frame already read from it), cut off past
    /// `limit` bytes. For a body that is already complete (no body, as for most GETs) the
    /// second value is `None` and nothing is allocated; otherwise it tells how the body
    /// ended (see [`Source::new`]).
    pub fn new(
        incoming: Incoming,
        first: Option<Frame<Bytes>>,
        tee: Option<tee::Sender>,
        meter: Option<BodyMeter>,
        limit: Option<u64>,
    ) -> (Self, Option<oneshot::Receiver<Upload>>) {
        if first.is_none() && incoming.is_end_stream() {
            if let Some(tee) = tee {
                tee.finish();
            }
            return (RequestBody { kind: Kind::Empty }, None);
        }
        let (source, done) = Source::new(incoming, first, tee, meter, limit);
        (
            RequestBody {
                kind: Kind::Direct(source),
            },
            Some(done),
        )
    }

    /// An empty body.
    pub fn empty() -> Self {
        RequestBody { kind: Kind::Empty }
    }

    /// One attempt of a replayable body.
    pub fn replay(attempt: replay::Attempt) -> Self {
        RequestBody {
            kind: Kind::Replay(attempt),
        }
    }

    /// A mirror's copy of the primary's body.
    pub fn mirror(receiver: tee::Receiver) -> Self {
        RequestBody {
            kind: Kind::Mirror(receiver),
        }
    }

    /// Whether the whole body has been read from the client (or there was none).
    pub fn is_complete(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Mirror(_) => true,
            Kind::Direct(source) => source.is_done(),
            Kind::Replay(attempt) => attempt.source_done(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Direct(source) => source.poll(cx),
            Kind::Replay(attempt) => attempt.poll(cx),
            Kind::Mirror(receiver) => receiver.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Direct(source) => source.is_done(),
            Kind::Replay(attempt) => attempt.is_end_stream(),
            Kind::Mirror(receiver) => receiver.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Direct(source) => source.size_hint(),
            Kind::Replay(attempt) => attempt.size_hint(),
            Kind::Mirror(receiver) => receiver.size_hint(),
        }
    }
}

/// What a response body tells its guard once, when it ends (or is dropped first): the body
/// bytes it carried and its trailers.
pub trait Finish {
    /// Called once, at the end of the body or when it is dropped before.
    fn finish(&mut self, bytes: u64, trailers: Option<&http::HeaderMap>);
}

/// An upstream response body passed through frame by frame, holding `guard` (the endpoint's
/// in-flight count and whatever else lives as long as the response) until it ends or is
/// dropped, and counting its bytes for the guard.
#[derive(Debug)]
pub struct UpstreamBody<G: Finish> {
    inner: Incoming,
    guard: G,
    bytes: u64,
    finished: bool,
}

impl<G: Finish> UpstreamBody<G> {
    /// Wraps a response body, keeping `guard` alive as long as the body.
    pub fn new(inner: Incoming, guard: G) -> Self {
        UpstreamBody {
            inner,
            guard,
            bytes: 0,
            finished: false,
        }
    }

    fn finish(&mut self, trailers: Option<&http::HeaderMap>) {
        if !std::mem::replace(&mut self.finished, true) {
            self.guard.finish(self.bytes, trailers);
        }
    }
}

impl<G: Finish> Drop for UpstreamBody<G> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl<G: Finish + Unpin> Body for UpstreamBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if this.inner.is_end_stream() {
                        this.finish(None);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.finish(Some(trailers));
                }
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
