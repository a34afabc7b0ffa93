//! The replay buffer: a request body that can be sent again, for a retry.
//!
//! The chunks read from the client are kept, as the same reference-counted `Bytes` (no
//! copy), up to a cap. Each attempt is a new [`Attempt`] that first replays what was kept,
//! then goes on reading from the client, so a retry while the client is still uploading
//! sends exactly the bytes the client sent without asking it again. Past the cap the buffer
//! is released at once and the request streams on; no further attempt can be made then
//! ([`Replayer::attempt`] answers `None`).
//!
//! Only the newest attempt reads: an older one (still held by a connection that failed) is
//! superseded and ends with an error if it is polled again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::{BoxError, Source};

/// Makes the attempts of one replayable request body.
#[derive(Debug)]
pub struct Replayer {
    state: Arc<Mutex<State>>,
}

/// One attempt's view of a replayable body.
#[derive(Debug)]
pub struct Attempt {
    state: Arc<Mutex<State>>,
    generation: u64,
    /// Next kept chunk to replay.
    pos: usize,
    trailers_sent: bool,
}

#[derive(Debug)]
struct State {
    source: Option<Source>,
    chunks: Vec<Bytes>,
    kept: u64,
    cap: u64,
    /// The buffer was dropped (the body outgrew the cap): no further attempt.
    released: bool,
    trailers: Option<HeaderMap>,
    /// The client's body has been read whole.
    source_done: bool,
    /// The newest attempt's number; only it reads.
    generation: u64,
    hint: SizeHint,
}

/// Why an older attempt was stopped.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a newer attempt")]
struct Superseded;

impl Replayer {
    /// A replayable body over the client's `source`, keeping at most `cap` bytes.
    pub fn new(source: Source, cap: u64) -> Self {
        let (hint, source_done) = (source.size_hint(), source.is_done());
        Replayer {
            state: Arc::new(Mutex::new(State {
                source: Some(source),
                chunks: Vec::new(),
                kept: 0,
                cap,
                released: false,
                trailers: None,
                source_done,
                generation: 0,
                hint,
            })),
        }
    }

    /// The body of the next attempt, superseding every earlier one; `None` when the buffer
    /// was released (the body outgrew the cap after an attempt had started).
    pub fn attempt(&self) -> Option<Attempt> {
        let mut state = lock(&self.state);
        if state.released && state.generation > 0 {
            return None;
        }
        state.generation += 1;
        Some(Attempt {
            state: Arc::clone(&self.state),
            generation: state.generation,
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt can still be made.
    pub fn can_replay(&self) -> bool {
        !lock(&self.state).released
    }

    /// Whether the client's body has been read whole.
    pub fn source_done(&self) -> bool {
        lock(&self.state).source_done
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> u64 {
        lock(&self.state).cap
    }
}

impl Attempt {
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = lock(&self.state);
        if state.generation != self.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = state.chunks.get(self.pos) {
            let chunk = chunk.clone();
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.source_done {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        let State {
            source,
            chunks,
            kept,
            cap,
            released,
            trailers,
            source_done,
            ..
        } = &mut *state;
        let Some(src) = source.as_mut() else {
            *source_done = true;
            return Poll::Ready(None);
        };
        let polled = src.poll(cx);
        if src.is_done() {
            *source_done = true;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !*released {
                        let len = data.len() as u64;
                        if *kept + len > *cap {
                            // Past the cap: let go of every kept chunk at once.
                            *released = true;
                            *chunks = Vec::new();
                            *kept = 0;
                            self.pos = 0;
                        } else {
                            chunks.push(data.clone());
                            *kept += len;
                            self.pos = chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    if !*released {
                        *trailers = Some(t.clone());
                    }
                    self.trailers_sent = true;
                }
            }
            Poll::Ready(None) => *source_done = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    pub(super) fn is_end_stream(&self) -> bool {
        let state = lock(&self.state);
        state.generation == self.generation
            && state.source_done
            && self.pos >= state.chunks.len()
            && (self.trailers_sent || state.trailers.is_none())
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        lock(&self.state).hint
    }

    pub(super) fn source_done(&self) -> bool {
        lock(&self.state).source_done
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
