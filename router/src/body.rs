//! The two body wrappers of the request path. Both pass frames through untouched (the same
//! `Bytes`, no copy, no buffering); they only watch for the end of the stream. This module
//! depends on nothing else of the router.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

pin_project_lite::pin_project! {
    /// A downstream request body on its way upstream. When it has a body at all, it reports
    /// the end of the upload, so the route timeout can start there (as a client that is
    /// still uploading is not a slow model server).
    #[derive(Debug)]
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        ended: Option<oneshot::Sender<()>>,
    }
}

impl RequestBody {
    /// Wraps `inner`. For a body that is already complete (no body, as for most GETs) the
    /// second value is `None` and nothing is allocated; otherwise it resolves when the last
    /// frame has been read (or the body is dropped).
    pub fn new(inner: Incoming) -> (Self, Option<oneshot::Receiver<()>>) {
        if inner.is_end_stream() {
            return (RequestBody { inner, ended: None }, None);
        }
        let (tx, rx) = oneshot::channel();
        (
            RequestBody {
                inner,
                ended: Some(tx),
            },
            Some(rx),
        )
    }

    /// Whether the whole body has been read (or there was none).
    pub fn is_complete(&self) -> bool {
        self.ended.is_none() || self.inner.is_end_stream()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if finished && let Some(tx) = this.ended.take() {
            let _ = tx.send(());
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

pin_project_lite::pin_project! {
    /// An upstream response body passed through frame by frame, holding `guard` (the
    /// endpoint's in-flight count) until it ends or is dropped.
    #[derive(Debug)]
    pub struct UpstreamBody<G> {
        #[pin]
        inner: Incoming,
        guard: G,
    }
}

impl<G> UpstreamBody<G> {
    /// Wraps a response body, keeping `guard` alive as long as the body.
    pub fn new(inner: Incoming, guard: G) -> Self {
        UpstreamBody { inner, guard }
    }
}

impl<G> Body for UpstreamBody<G> {
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
