//! The process-wide requests-in-flight count, started and ended by every request on every
//! worker: one shared atomic against the router's striped counter, with 1 and 2 threads
//! counting at once (2 threads on 2 cores bounce one shared cache line between them).

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use router::metrics::ActiveRequest;

static SHARED: AtomicI64 = AtomicI64::new(0);

/// `iters` start/end pairs on each of `threads` threads at once; the slowest thread's time.
fn run(threads: usize, iters: u64, pair: fn()) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    pair();
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap()
}

fn shared_pair() {
    SHARED.fetch_add(1, Ordering::Relaxed);
    black_box(&SHARED);
    SHARED.fetch_sub(1, Ordering::Relaxed);
}

fn striped_pair() {
    let active = ActiveRequest::start();
    black_box(&active);
    drop(active);
}

fn in_flight(c: &mut Criterion) {
    for threads in [1, 2] {
        c.bench_function(&format!("in_flight/shared_atomic/{threads}_threads"), |b| {
            b.iter_custom(|iters| run(threads, iters, shared_pair));
        });
        c.bench_function(&format!("in_flight/striped/{threads}_threads"), |b| {
            b.iter_custom(|iters| run(threads, iters, striped_pair));
        });
    }
}

criterion_group!(benches, in_flight);
criterion_main!(benches);
