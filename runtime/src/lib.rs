//! Process plumbing shared by the platform's binaries (the router and Lightbulb), which must
//! not depend on each other: the shutdown signal, the log setup, the worker count, a fast
//! per-thread random generator, OTLP span export, bearer tokens and TLS.
#![warn(missing_docs)]

pub mod otlp;
pub mod rng;
pub mod secret;
pub mod signal;
pub mod telemetry;
pub mod tls;

use std::num::NonZeroUsize;

/// Worker threads to run: the `--workers` flag, or one per available core (1 when the
/// machine cannot tell).
pub fn worker_count(flag: Option<NonZeroUsize>) -> usize {
    flag.or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_the_default_is_at_least_one() {
        assert_eq!(worker_count(NonZeroUsize::new(3)), 3);
        assert!(worker_count(None) >= 1);
    }
}
