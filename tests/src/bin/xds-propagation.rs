//! How long a change accepted by Lightbulb's config API takes to be served by Envoys that
//! follow Lightbulb over xDS: `benches/xds.sh` runs it for 1 and 10 Envoys, small and
//! 10,000-route rule sets, state of the world against delta.
//!
//! `xds-propagation --envoys N --routes N [--delta] [--rounds R]` starts two fake model
//! servers, Lightbulb on a directory store with the config API, and N Envoys from
//! `deploy/envoy/bootstrap.yaml`. Each round moves route `probe` to the other cluster with
//! `PUT /v1/config` and measures, for every Envoy, the time from the `200` of the `PUT` to
//! the first answer from the new cluster (each Envoy polled back to back over one keep-alive
//! connection). One router following the same Lightbulb over `RoutingConfig.Watch` is
//! measured alike, for comparison. It prints one line per round and a summary: the median
//! over rounds of the slowest Envoy, of the median Envoy, and of the router, in ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, header};
use integration_tests::client::{self, HttpClient};
use integration_tests::envoy::{EnvoyOptions, EnvoyProcess};
use integration_tests::lightbulb::LightbulbProcess;
use integration_tests::{FakeModel, Listening, RouterProcess};
use serde_json::{Value, json};

/// The config API token of the run.
const TOKEN: &str = "bench-token";
/// Longest a round may take before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
struct Args {
    /// Envoys following Lightbulb.
    #[arg(long, default_value_t = 1)]
    envoys: usize,
    /// Routes in the rule set besides `probe`.
    #[arg(long, default_value_t = 10)]
    routes: usize,
    /// Incremental xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// Changes measured.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

/// `routes` routes on cluster `a`, and `probe` on `probe_cluster`.
fn rules(routes: usize, probe_cluster: &str, a: &Listening, b: &Listening) -> Value {
    let mut table: serde_json::Map<String, Value> = (0..routes)
        .map(|i| (format!("route-{i:05}"), json!({ "cluster": "a" })))
        .collect();
    table.insert("probe".to_owned(), json!({ "cluster": probe_cluster }));
    json!({
        "clusters": {
            "a": { "endpoints": [a.endpoint()] },
            "b": { "endpoints": [b.endpoint()] },
        },
        "routes": table,
    })
}

/// Polls `probe` through `envoy` until `want` answers; the time from `since`.
async fn served_after(envoy: SocketAddr, want: &str, since: Instant) -> Duration {
    let http = HttpClient::http1();
    loop {
        let resp = http.get(envoy, "/", Some("probe")).await;
        if resp.status == 200 && resp.text() == want {
            return since.elapsed();
        }
        assert!(since.elapsed() < ROUND_LIMIT, "{envoy} never served {want}");
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("tokens"), format!("bench:{TOKEN}\n")).expect("tokens");
    let store = dir.path().join("store").display().to_string();
    let tokens = dir.path().join("tokens").display().to_string();
    let lightbulb = LightbulbProcess::start_with_args(
        &rules(args.routes, "a", &a, &b),
        &["--store", &store, "--api-token-file", &tokens],
    )
    .await;
    let mut envoys = Vec::new();
    for i in 0..args.envoys {
        let mut options = EnvoyOptions::new(lightbulb.grpc_addr);
        options.node_id = format!("bench-envoy-{i}");
        if args.delta {
            options = options.delta();
        }
        envoys.push(EnvoyProcess::start(&options).await);
    }
    let listeners: Vec<SocketAddr> = envoys.iter().map(|e| e.listener).collect();
    // One router follows the same Lightbulb over `RoutingConfig.Watch`, measured alike.
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[lightbulb.grpc_url()], snapshots.path(), &[]).await;
    for &proxy in listeners.iter().chain([&router.proxy_addr]) {
        served_after(proxy, "a", Instant::now()).await;
    }

    let flavour = if args.delta { "delta" } else { "sotw" };
    let mut slowest = Vec::new();
    let mut medians = Vec::new();
    let mut router_times = Vec::new();
    for round in 0..args.rounds {
        let target = if round % 2 == 0 { "b" } else { "a" };
        let next = rules(args.routes, target, &a, &b);
        let req = client::request(Method::PUT, lightbulb.http_addr, "/v1/config")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::IF_MATCH, format!("\"{}\"", round + 1))
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(next.to_string()))
            .expect("a valid request");
        let resp = lightbulb.http_send(req).await;
        assert_eq!(resp.status, 200, "PUT: {}", resp.text());
        let accepted = Instant::now();
        let (times, router_time) = tokio::join!(
            futures_util::future::join_all(
                listeners
                    .iter()
                    .map(|&envoy| served_after(envoy, target, accepted)),
            ),
            served_after(router.proxy_addr, target, accepted)
        );
        let router_ms = router_time.as_secs_f64() * 1e3;
        router_times.push(router_ms);
        let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        let max = ms.iter().copied().fold(0.0, f64::max);
        let mid = median(&mut ms);
        println!(
            "{flavour} envoys={} routes={} round={round}: median {mid:.1} ms, slowest {max:.1} ms, router {router_ms:.1} ms",
            args.envoys, args.routes
        );
        slowest.push(max);
        medians.push(mid);
    }
    println!(
        "summary {flavour} envoys={} routes={}: PUT accepted -> served, median over {} rounds: median Envoy {:.1} ms, slowest Envoy {:.1} ms, the router (Watch) {:.1} ms",
        args.envoys,
        args.routes,
        args.rounds,
        median(&mut medians),
        median(&mut slowest),
        median(&mut router_times)
    );
}
