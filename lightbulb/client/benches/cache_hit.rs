//! The client's cache-hit path (DESIGN §8: under 1 µs): a context resolved once against a
//! real Lightbulb on `127.0.0.1:0`, then looked up again and again.
//!
//! - `cache_hit/cached_context`: `Client::cached` with a `RequestContext` (tenant, subject,
//!   three attributes, one allocation).
//! - `cache_hit/cached_proto`: the same context as a proto `ResolveRequest`.
//! - `cache_hit/resolve_context`: the full async `Client::resolve`, polled once (a hit
//!   completes on its first poll).
//!
//! `cargo bench -p lightbulb-client --bench cache_hit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use lightbulb::grpc::ResolverService;
use lightbulb::resolve::Engine;
use lightbulb_client::{Client, RequestContext, Source, proto};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const RULES: &str = r#"{
  "version": 1,
  "clusters": { "ranker-v1": { "endpoints": ["127.0.0.1:9001"] } },
  "routes": { "ranker-v1": { "cluster": "ranker-v1" } },
  "models": { "ranker-v1": { "routing_key": "ranker-v1", "version": "1" } },
  "objectives": { "ContinueWatchingRanking": { "default": "ranker-v1", "cache_ttl_ms": 3600000 } }
}"#;

fn context() -> RequestContext {
    RequestContext::new("ContinueWatchingRanking")
        .with_tenant("streaming")
        .with_subject("user-0123456789")
        .with_attribute("country", "CA")
        .with_attribute("device", "tv")
        .with_attribute("surface", "home")
        .with_allocation("exp-ranker", "treatment")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let client = runtime.block_on(async {
        let rules = models_config::parse(RULES).expect("bench rule set");
        let engine = Engine::new(&rules);
        let service = ResolverService::new(Arc::new(ArcSwap::from_pointee(engine)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let client = Client::builder([uri]).build().expect("client");
        let fresh = client.resolve(&context()).await.expect("first resolve");
        assert_eq!(fresh.source(), Source::Fresh);
        client
    });

    let ctx = context();
    let request = proto::ResolveRequest::from(&ctx);
    assert_eq!(
        client.cached(&ctx).map(|r| r.source()),
        Some(Source::Cached)
    );
    assert!(client.cached(&request).is_some());

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("cached_context", |b| {
        b.iter(|| black_box(client.cached(black_box(&ctx))))
    });
    group.bench_function("cached_proto", |b| {
        b.iter(|| black_box(client.cached(black_box(&request))))
    });
    group.bench_function("resolve_context", |b| {
        b.iter(|| black_box(client.resolve(black_box(&ctx)).now_or_never()))
    });
    group.finish();
    assert_eq!(client.stats().misses, 1, "every benched call was a hit");
}

criterion_group!(benches, bench);
criterion_main!(benches);
