//! Route lookup on the hot path: header bytes → route → target → endpoint pick, on tables of
//! 4 and 100,000 keys.

use std::hint::black_box;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use router::health::ProbeSpawner;
use router::host::HostRegistry;
use router::route::RouteTable;

fn table(keys: usize) -> ArcSwap<RouteTable> {
    let json = benches::rule_set_json(keys, 20_000).to_string();
    let rules = models_config::parse(&json).expect("the fixture is valid");
    let hosts = HostRegistry::new(1);
    let (probes, _receiver) = ProbeSpawner::new();
    ArcSwap::from_pointee(RouteTable::build(
        rules,
        None,
        &hosts,
        &probes,
        1,
        String::new(),
        true,
    ))
}

fn lookup(c: &mut Criterion) {
    for keys in [4usize, 100_000] {
        let table = table(keys);
        let probes: Vec<HeaderValue> = (0..1024)
            .map(|i| HeaderValue::from_str(&format!("key-{}", (i * 7919) % keys)).unwrap())
            .collect();
        let headers = HeaderMap::new();
        let mut i = 0;
        c.bench_function(&format!("route_lookup/{keys}_routes"), |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                let snapshot = table.load();
                let route = snapshot.route(probes[i].as_bytes()).expect("present");
                let target = route.pick_target(&headers);
                black_box(target.cluster.pick(&headers, None))
            })
        });
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
