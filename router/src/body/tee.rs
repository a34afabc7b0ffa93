//! The mirror's copy of a request body: the primary's chunks (the same `Bytes`, no copy)
//! handed over a byte-bounded queue that never pushes back.
//!
//! The primary never waits for the mirror: [`Sender::push`] only queues. When the mirror
//! reads slower than the primary and more than the queue's bound is waiting, the copy is
//! abandoned (the queue emptied, the mirror's body ended with an error, the drop counted):
//! a slow mirror never holds more of the primary's body than that bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use metrics::Counter;

use super::BoxError;

/// The primary's end of the queue.
#[derive(Debug)]
pub struct Sender {
    queue: Arc<Mutex<Queue>>,
    /// Counts a copy abandoned because the queue was full.
    overflow: Counter,
}

/// The mirror's end of the queue: its request body.
#[derive(Debug)]
pub struct Receiver {
    queue: Arc<Mutex<Queue>>,
    hint: SizeHint,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Frame<Bytes>>,
    queued: u64,
    max: u64,
    state: End,
    waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Finished,
    Abandoned,
}

/// Why a mirror's body ended early.
#[derive(Debug, thiserror::Error)]
#[error("mirror copy abandoned: the mirror fell behind, or the primary's body ended early")]
struct Abandoned;

/// A queue holding at most `max` bytes; `hint` is the primary body's size hint (so the
/// mirror request announces the same length). `overflow` counts abandoned copies.
pub fn channel(max: u64, hint: SizeHint, overflow: Counter) -> (Sender, Receiver) {
    let queue = Arc::new(Mutex::new(Queue {
        frames: VecDeque::new(),
        queued: 0,
        max,
        state: End::Open,
        waker: None,
    }));
    (
        Sender {
            queue: Arc::clone(&queue),
            overflow,
        },
        Receiver { queue, hint },
    )
}

impl Sender {
    /// Queues a copy of `frame` (a refcount bump for data), or abandons the copy when the
    /// queue would hold more than its bound.
    pub fn push(&mut self, frame: &Frame<Bytes>) {
        let mut q = lock(&self.queue);
        if q.state != End::Open {
            return;
        }
        let copy = if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if q.queued + len > q.max {
                q.state = End::Abandoned;
                q.frames.clear();
                q.queued = 0;
                self.overflow.increment(1);
                wake(&mut q);
                return;
            }
            q.queued += len;
            Frame::data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Frame::trailers(trailers.clone())
        } else {
            return;
        };
        q.frames.push_back(copy);
        wake(&mut q);
    }

    /// The primary's body has been read whole: the mirror's ends after what is queued.
    pub fn finish(self) {
        self.end(End::Finished);
    }

    /// The primary's body failed: the mirror's ends with an error.
    pub fn abort(self) {
        self.end(End::Abandoned);
    }

    fn end(&self, end: End) {
        let mut q = lock(&self.queue);
        if q.state == End::Open {
            q.state = end;
        }
        wake(&mut q);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // Dropped before finishing: the primary's body was not read whole.
        self.end(End::Abandoned);
    }
}

impl Receiver {
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut q = lock(&self.queue);
        if q.state == End::Abandoned {
            return Poll::Ready(Some(Err(Box::new(Abandoned))));
        }
        if let Some(frame) = q.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                q.queued -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match q.state {
            End::Finished => Poll::Ready(None),
            _ => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        let q = lock(&self.queue);
        q.state == End::Finished && q.frames.is_empty()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn wake(q: &mut Queue) {
    if let Some(waker) = q.waker.take() {
        waker.wake();
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::RequestBody;
    use http_body::Body as _;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn the_mirror_gets_the_same_chunks_and_ends_after_them() {
        let (mut tx, rx) = channel(10, SizeHint::with_exact(6), Counter::noop());
        let chunk = Bytes::from_static(b"abc");
        tx.push(&Frame::data(chunk.clone()));
        tx.push(&Frame::data(Bytes::from_static(b"def")));
        tx.finish();
        let body = RequestBody::mirror(rx);
        assert_eq!(body.size_hint().exact(), Some(6));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_full_queue_abandons_the_copy_and_never_blocks_the_sender() {
        let (mut tx, rx) = channel(4, SizeHint::default(), Counter::noop());
        tx.push(&Frame::data(Bytes::from_static(b"abc")));
        tx.push(&Frame::data(Bytes::from_static(b"def")));
        // Later pushes are ignored, not queued.
        tx.push(&Frame::data(Bytes::from_static(b"g")));
        assert_eq!(lock(&tx.queue).queued, 0);
        assert!(RequestBody::mirror(rx).collect().await.is_err());
    }

    #[tokio::test]
    async fn a_sender_dropped_early_ends_the_copy_with_an_error() {
        let (mut tx, rx) = channel(100, SizeHint::default(), Counter::noop());
        tx.push(&Frame::data(Bytes::from_static(b"abc")));
        drop(tx);
        assert!(RequestBody::mirror(rx).collect().await.is_err());
    }
}
