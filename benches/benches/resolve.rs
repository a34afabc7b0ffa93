//! Lightbulb's resolution: rule evaluation on a rule set of 1,000 objectives (cache miss),
//! the server's resolution cache (hit), and building the cache key alone.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use lightbulb::cache::ResolveCache;
use lightbulb::resolve::{Engine, RequestContext};

fn context(objective: usize, subject: usize) -> RequestContext {
    RequestContext {
        objective: format!("objective-{objective}"),
        tenant: Some("tenant-a".to_owned()),
        subject_id: Some(format!("member-{subject}")),
        attributes: HashMap::from([
            (
                "country".to_owned(),
                if subject.is_multiple_of(2) {
                    "CA"
                } else {
                    "US"
                }
                .to_owned(),
            ),
            ("device".to_owned(), "tv".to_owned()),
            ("surface".to_owned(), "home".to_owned()),
        ]),
        ..RequestContext::default()
    }
}

fn resolve(c: &mut Criterion) {
    let json = benches::objectives_rule_set_json(1_000).to_string();
    let rules = models_config::parse(&json).expect("the fixture is valid");
    let engine = Arc::new(Engine::new(&rules));
    let contexts: Vec<RequestContext> = (0..4096).map(|i| context((i * 7) % 1_000, i)).collect();

    let mut i = 0;
    c.bench_function("resolve/engine_miss_1000_objectives", |b| {
        b.iter(|| {
            i = (i + 1) % contexts.len();
            black_box(engine.resolve(&contexts[i]).expect("resolves"))
        })
    });
    c.bench_function("resolve/cache_key_1000_objectives", |b| {
        b.iter(|| {
            i = (i + 1) % contexts.len();
            black_box(engine.cache_key(&contexts[i]).expect("a key"))
        })
    });

    let cache = ResolveCache::new(100_000, Duration::from_secs(600));
    for ctx in &contexts {
        cache.get_or_resolve(&engine, ctx).expect("resolves");
    }
    c.bench_function("resolve/server_cache_hit", |b| {
        b.iter(|| {
            i = (i + 1) % contexts.len();
            black_box(
                cache
                    .get_or_resolve(&engine, &contexts[i])
                    .expect("resolves"),
            )
        })
    });
}

criterion_group!(benches, resolve);
criterion_main!(benches);
