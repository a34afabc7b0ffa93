//! The client against a real Lightbulb: `lightbulb::grpc::ResolverService` served by tonic on
//! `127.0.0.1:0`, with an interceptor counting the RPCs it receives, stopped through its
//! shutdown oneshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::join_all;
use lightbulb::grpc::ResolverService;
use lightbulb::resolve::Engine;
use lightbulb_client::proto::resolver_server::ResolverServer;
use lightbulb_client::{
    Client, ClientError, ObjectiveConfig, RequestContext, Source, proto, stamp, stamp_grpc,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

/// `Ranking` is cached for a minute, `NoCache` not at all.
const RULES: &str = r#"{
  "version": 7,
  "clusters": {
    "ranker-v1": { "endpoints": ["127.0.0.1:9001"] },
    "ranker-v2": { "endpoints": ["127.0.0.1:9003"] }
  },
  "routes": {
    "ranker-v1": { "cluster": "ranker-v1" },
    "ranker-v2": { "cluster": "ranker-v2" }
  },
  "models": {
    "ranker-v1": { "routing_key": "ranker-v1", "version": "1" },
    "ranker-v2": { "routing_key": "ranker-v2", "version": "2" }
  },
  "objectives": {
    "Ranking": {
      "rules": [ { "when": { "attributes": { "country": ["CA"] } }, "model": "ranker-v2" } ],
      "default": "ranker-v1",
      "cache_ttl_ms": 60000
    },
    "NoCache": { "default": "ranker-v1", "cache_ttl_ms": 0 }
  }
}"#;

const RANKING_TTL: Duration = Duration::from_secs(60);

/// A Lightbulb resolver on `127.0.0.1:0` that counts the RPCs it receives.
struct Lightbulb {
    uri: String,
    rpcs: Arc<AtomicUsize>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Lightbulb {
    /// Binds before spawning, so the port accepts connections when this returns.
    async fn start() -> anyhow::Result<Self> {
        let rules = models_config::parse(RULES).context("test rule set")?;
        let engine = Engine::new(&rules);
        let service = ResolverService::new(Arc::new(ArcSwap::from_pointee(engine)));
        let rpcs = Arc::new(AtomicUsize::new(0));
        let counter = rpcs.clone();
        let server = ResolverServer::with_interceptor(service, move |request| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(request)
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("http://{}", listener.local_addr()?);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            uri,
            rpcs,
            shutdown,
            task,
        })
    }

    fn rpcs(&self) -> usize {
        self.rpcs.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until it no longer listens.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("server did not stop within 10 s")??
            .context("server failed")?;
        Ok(())
    }
}

/// An address nothing listens on: bound, then released.
async fn refused_uri() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(format!("http://{}", listener.local_addr()?))
}

/// A client builder for `uri` with budgets generous enough for a loaded CI machine; the
/// tests about deadlines set their own.
fn builder(uri: &str) -> lightbulb_client::Builder {
    Client::builder([uri])
        .deadline(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
}

fn ranking_ca() -> RequestContext {
    RequestContext::new("Ranking")
        .with_subject("user-1")
        .with_attribute("country", "CA")
}

fn default_config(objective: &str, model: &str) -> ObjectiveConfig {
    ObjectiveConfig {
        objective: objective.into(),
        model_id: model.into(),
        ..ObjectiveConfig::default()
    }
}

#[tokio::test]
async fn fresh_resolve_returns_lightbulbs_answer() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;

    let resolved = client.resolve(&ranking_ca()).await?;

    assert_eq!(resolved.source(), Source::Fresh);
    assert_eq!(resolved.routing_key(), "ranker-v2");
    assert_eq!(resolved.config().model_id, "ranker-v2");
    assert_eq!(resolved.config().model_version, "2");
    assert_eq!(resolved.config().objective, "Ranking");
    assert_eq!(resolved.rule_set_version(), 7);
    assert!(resolved.shadows().is_empty());
    assert_eq!(lightbulb.rpcs(), 1);
    lightbulb.stop().await
}

#[tokio::test]
async fn second_resolve_is_a_cache_hit_without_an_rpc() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;

    let first = client.resolve(&ranking_ca()).await?;
    let second = client.resolve(&ranking_ca()).await?;
    // The same context as a proto request, attributes in a HashMap: the same entry.
    let as_proto = proto::ResolveRequest::from(&ranking_ca());
    let third = client.clone().resolve(&as_proto).await?;

    assert_eq!(first.source(), Source::Fresh);
    assert_eq!(second.source(), Source::Cached);
    assert_eq!(third.source(), Source::Cached);
    assert_eq!(second.routing_key(), "ranker-v2");
    assert_eq!(lightbulb.rpcs(), 1, "hits make no RPC");
    let stats = client.stats();
    assert_eq!((stats.hits, stats.misses, stats.rpcs), (2, 1, 1));

    // Another context is another entry.
    let other = client.resolve(&RequestContext::new("Ranking")).await?;
    assert_eq!(other.source(), Source::Fresh);
    assert_eq!(other.routing_key(), "ranker-v1");
    assert_eq!(lightbulb.rpcs(), 2);
    lightbulb.stop().await
}

#[tokio::test]
async fn concurrent_misses_of_one_context_share_one_rpc() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;
    let ctx = ranking_ca();

    let results = join_all((0..20).map(|_| client.resolve(&ctx))).await;

    for result in results {
        let resolved = result?;
        assert_eq!(resolved.source(), Source::Fresh);
        assert_eq!(resolved.routing_key(), "ranker-v2");
    }
    assert_eq!(lightbulb.rpcs(), 1);
    let stats = client.stats();
    assert_eq!((stats.misses, stats.coalesced, stats.rpcs), (20, 19, 1));
    assert_eq!(client.resolve(&ctx).await?.source(), Source::Cached);
    lightbulb.stop().await
}

#[tokio::test]
async fn a_cancelled_miss_leaves_nothing_behind() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;
    let ctx = ranking_ca();

    // Polled once (the RPC starts), then dropped.
    assert!(client.resolve(&ctx).now_or_never().is_none());
    let resolved = client.resolve(&ctx).await?;

    assert_eq!(resolved.source(), Source::Fresh);
    assert_eq!(
        client.stats().coalesced,
        0,
        "the dropped flight was not joined"
    );
    lightbulb.stop().await
}

#[tokio::test]
async fn expired_ttl_refetches() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;
    assert_eq!(client.resolve(&ranking_ca()).await?.source(), Source::Fresh);

    // Jump tokio's clock (no I/O happens while it is paused).
    tokio::time::pause();
    tokio::time::advance(RANKING_TTL - Duration::from_secs(1)).await;
    tokio::time::resume();
    assert_eq!(
        client.resolve(&ranking_ca()).await?.source(),
        Source::Cached
    );
    assert_eq!(lightbulb.rpcs(), 1);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    let refetched = client.resolve(&ranking_ca()).await?;
    assert_eq!(refetched.source(), Source::Fresh);
    assert_eq!(lightbulb.rpcs(), 2);
    assert_eq!(
        client.resolve(&ranking_ca()).await?.source(),
        Source::Cached
    );
    lightbulb.stop().await
}

#[tokio::test]
async fn max_ttl_caps_the_servers_ttl() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri)
        .max_ttl(Duration::from_secs(5))
        .build()?;
    client.resolve(&ranking_ca()).await?;

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    tokio::time::resume();
    assert_eq!(client.resolve(&ranking_ca()).await?.source(), Source::Fresh);
    assert_eq!(lightbulb.rpcs(), 2);
    lightbulb.stop().await
}

#[tokio::test]
async fn zero_ttl_answers_are_not_cached() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri).build()?;
    let ctx = RequestContext::new("NoCache");

    assert_eq!(client.resolve(&ctx).await?.source(), Source::Fresh);
    assert_eq!(client.resolve(&ctx).await?.source(), Source::Fresh);
    assert!(client.cached(&ctx).is_none());
    assert_eq!(lightbulb.rpcs(), 2);
    lightbulb.stop().await
}

#[tokio::test]
async fn server_stopped_midway_serves_the_last_known_good_answer() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri)
        .deadline(Duration::from_secs(5))
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .build()?;
    // Not cached (TTL 0), so the next resolve must ask Lightbulb again.
    let ctx = RequestContext::new("NoCache").with_subject("user-9");
    let fresh = client.resolve(&ctx).await?;
    assert_eq!(fresh.source(), Source::Fresh);

    lightbulb.stop().await?;
    let fallback = client.resolve(&ctx).await?;

    assert_eq!(fallback.source(), Source::LastKnownGood);
    assert_eq!(fallback.routing_key(), fresh.routing_key());
    assert_eq!(fallback.config(), fresh.config());
    assert_eq!(fallback.rule_set_version(), 7);
    let stats = client.stats();
    assert_eq!(stats.last_known_good, 1);
    assert_eq!(stats.errors, 0);
    assert!(stats.rpcs >= 2, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn unseen_context_while_down_gets_the_static_default_or_an_error() -> anyhow::Result<()> {
    let client = Client::builder([refused_uri().await?])
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .static_default(
            "Ranking",
            "ranker-v1",
            default_config("Ranking", "ranker-v1"),
        )
        .build()?;

    let resolved = client.resolve(&ranking_ca()).await?;
    assert_eq!(resolved.source(), Source::StaticDefault);
    assert_eq!(resolved.routing_key(), "ranker-v1");
    assert_eq!(resolved.config().model_id, "ranker-v1");
    assert_eq!(resolved.rule_set_version(), 0);

    let err = client
        .resolve(&RequestContext::new("Unconfigured"))
        .await
        .expect_err("no fallback for this objective");
    assert!(
        matches!(err, ClientError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(err.objective(), "Unconfigured");
    assert!(err.to_string().contains("\"Unconfigured\""), "{err}");

    let stats = client.stats();
    assert_eq!((stats.static_defaults, stats.errors), (1, 1));
    assert_eq!((stats.rpcs, stats.retries), (6, 4));
    Ok(())
}

#[tokio::test]
async fn not_found_is_returned_not_masked_by_fallbacks() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri)
        .static_default(
            "Missing",
            "ranker-v1",
            default_config("Missing", "ranker-v1"),
        )
        .build()?;

    let err = client
        .resolve(&RequestContext::new("Missing"))
        .await
        .expect_err("unknown objective");

    assert!(matches!(err, ClientError::Rejected { .. }), "{err:?}");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(err.objective(), "Missing");
    assert_eq!(lightbulb.rpcs(), 1, "a rejection is not retried");
    assert_eq!(client.stats().static_defaults, 0);
    assert_eq!(client.stats().errors, 1);

    // An empty objective is INVALID_ARGUMENT, also passed through.
    let err = client
        .resolve(&RequestContext::new(""))
        .await
        .expect_err("empty objective");
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    lightbulb.stop().await
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_stop_at_the_deadline() -> anyhow::Result<()> {
    let deadline = Duration::from_secs(1);
    let max_wait = Duration::from_millis(400);
    let client = Client::builder([refused_uri().await?])
        .deadline(deadline)
        .attempts(1_000)
        .backoff(Duration::from_millis(50), max_wait)
        .build()?;

    let start = tokio::time::Instant::now();
    let err = client
        .resolve(&RequestContext::new("Ranking"))
        .await
        .expect_err("nothing listens");
    let elapsed = start.elapsed();

    let ClientError::Unavailable { attempts, .. } = err else {
        panic!("expected unavailable, got {err:?}");
    };
    assert!(elapsed <= deadline, "took {elapsed:?}");
    // It gave up only because the next wait would have passed the deadline.
    assert!(elapsed >= deadline - max_wait, "took {elapsed:?}");
    assert!((2..1_000).contains(&attempts), "{attempts} attempts");
    let stats = client.stats();
    assert_eq!(stats.rpcs, u64::from(attempts));
    assert_eq!(stats.retries, u64::from(attempts) - 1);
    Ok(())
}

#[tokio::test]
async fn fails_over_to_a_live_endpoint() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = Client::builder([refused_uri().await?, lightbulb.uri.clone()])
        .deadline(Duration::from_secs(5))
        .max_ttl(Duration::ZERO)
        .build()?;

    for _ in 0..4 {
        let resolved = client.resolve(&ranking_ca()).await?;
        assert_eq!(resolved.source(), Source::Fresh);
    }
    assert_eq!(lightbulb.rpcs(), 4);
    // At most the first call tried the dead endpoint; after it, the client sticks to the
    // live one.
    assert!(client.stats().retries <= 1, "{:?}", client.stats());
    lightbulb.stop().await
}

#[tokio::test]
async fn resolved_routing_key_is_stamped_on_http_and_grpc_requests() -> anyhow::Result<()> {
    let lightbulb = Lightbulb::start().await?;
    let client = builder(&lightbulb.uri)
        .routing_header(http::HeaderName::from_static("x-model-route"))
        .build()?;
    let resolved = client.resolve(&ranking_ca()).await?;

    let mut request = http::Request::post("http://router/v1/infer").body(())?;
    stamp(&resolved, &mut request);
    assert_eq!(request.headers()["x-routing-key"], "ranker-v2");

    client.stamp(&resolved, &mut request);
    assert_eq!(request.headers()["x-model-route"], "ranker-v2");

    let mut grpc = tonic::Request::new(());
    stamp_grpc(&resolved, &mut grpc);
    assert_eq!(
        grpc.metadata().get("x-routing-key").context("metadata")?,
        "ranker-v2"
    );
    lightbulb.stop().await
}
