//! Counters of what the client did, read with [`Client::stats`](crate::Client::stats).
//!
//! Plain relaxed atomics: the library forces no metrics recorder on its users; export
//! [`Stats`] to whatever system the service uses.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a client's counters, all monotonic since the client was built (shared by
/// all its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Resolutions answered from the local cache, without an RPC.
    pub hits: u64,
    /// Resolutions that went to Lightbulb (the cache had no live entry).
    pub misses: u64,
    /// Misses that did not make their own RPC but waited for the one already in flight for
    /// the same context (included in `misses`).
    pub coalesced: u64,
    /// RPC attempts made (a miss makes one, plus one per retry).
    pub rpcs: u64,
    /// Retries after a retryable failure (attempts beyond the first).
    pub retries: u64,
    /// Misses answered with the last known good answer because Lightbulb was unavailable.
    pub last_known_good: u64,
    /// Misses answered with the objective's static default because Lightbulb was
    /// unavailable and never answered the context.
    pub static_defaults: u64,
    /// Resolutions that returned an error.
    pub errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) rpcs: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) last_known_good: AtomicU64,
    pub(crate) static_defaults: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Counters {
    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            coalesced: get(&self.coalesced),
            rpcs: get(&self.rpcs),
            retries: get(&self.retries),
            last_known_good: get(&self.last_known_good),
            static_defaults: get(&self.static_defaults),
            errors: get(&self.errors),
        }
    }
}
