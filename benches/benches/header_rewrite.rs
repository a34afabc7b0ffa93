//! The per-request head rewrite: hop-by-hop stripping, `x-forwarded-for`, `x-request-id`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use router::headers;

fn typical() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "models.internal:8080"),
        ("user-agent", "ranker-client/1.4"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
        ("content-length", "1532"),
        ("x-routing-key", "ranker-v2"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn rewrite(c: &mut Criterion) {
    let client: IpAddr = "10.1.2.3".parse().unwrap();
    // Formatted once per connection by the router.
    let client = headers::forwarded_for_value(client);
    c.bench_function("header_rewrite/typical_h1_request", |b| {
        b.iter_batched_ref(
            typical,
            |h| {
                headers::strip_hop_by_hop(h, true);
                headers::append_forwarded_for(h, &client);
                headers::ensure_request_id(h);
                black_box(h.len())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("header_rewrite/with_connection_header", |b| {
        b.iter_batched_ref(
            || {
                let mut h = typical();
                h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
                h.insert("x-hop", HeaderValue::from_static("1"));
                h
            },
            |h| {
                headers::strip_hop_by_hop(h, true);
                black_box(h.len())
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
