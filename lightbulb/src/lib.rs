//! Lightbulb: answers "which model serves this request?" out of the payload path.
//!
//! A client sends a small request context (objective, tenant, subject id, attributes,
//! explicit experiment allocations, traffic class) and gets back the routing key to put in
//! the router's `x-routing-key` header, plus the [`ObjectiveConfig`] it passes to the model.
//!
//! # Resolution flow
//!
//! ```text
//! rule set (models-config) ──validate──▶ Engine::new ──compile──▶ Engine (one version, immutable)
//!
//! RequestContext ──▶ Engine::resolve
//!                      1. look the objective up             (empty → InvalidArgument,
//!                                                              unknown → NotFound)
//!                      2. check explicit allocations of the
//!                         experiments its rules use          (unknown cell → InvalidArgument)
//!                      3. try the rules in order; first match wins:
//!                           tenants ∧ traffic class ∧ attributes ∧ experiment cell
//!                           (cell = explicit allocation, else hash(salt, subject))
//!                         its model, or its split's model   (hash(objective, subject))
//!                      4. no rule matched → the objective's default model
//!                   ──▶ Resolution { routing key, ObjectiveConfig, shadows, TTL, version }
//! ```
//!
//! [`Engine::cache_key`] names exactly the inputs step 1–4 read for a context, so a cache in
//! front of the engine keys on them and nothing else.
//!
//! # Modules
//!
//! - [`resolve`]: [`RequestContext`], [`Engine`], [`Resolution`], [`CacheKey`] — the pure rule
//!   engine.
//! - [`allocation`]: the documented, stable hash that places subjects in experiment cells
//!   and split shares.
//! - [`objective`]: the answer's domain types ([`ObjectiveConfig`], [`ShadowTarget`]).
//! - [`error`]: [`ResolveError`], its classes and its one mapping to a gRPC status.
//! - [`grpc`]: the `lightbulb.v1` services (from the `routing-proto` crate), proto ↔ domain
//!   conversion only: [`ResolverService`] over an `ArcSwap<Engine>`, and
//!   [`RoutingConfigService`], which streams the clusters and routes of every accepted rule
//!   set from a `tokio::sync::watch` channel.
//!
//! The service around them:
//!
//! - [`cache`]: the moka cache in front of the engine, keyed on [`Engine::cache_key`].
//! - [`reload`]: follows the rule-set file; a valid new rule set swaps the engine, clears the
//!   cache and is published to `RoutingConfig.Watch`; an invalid one changes nothing.
//! - [`store`] (`--store DIR`): the versioned rule store, one file per accepted version,
//!   written atomically; it replaces the file watcher. [`etcd`] (`--store etcd://…`): the
//!   same in etcd, shared by several replicas, each following every change by a watch.
//! - [`api`]: the config API over the store (`/v1/config` and the granular endpoints); every
//!   accepted change goes through [`reload::Reloader::apply`]. [`auth`]: its bearer tokens.
//! - [`server`]: the tonic server (lightbulb services, `grpc.health.v1`, reflection).
//! - [`xds`]: the Aggregated Discovery Service (state of the world and delta) on the gRPC
//!   port, so Envoy fleets follow the same rule set: [`xds::mapping`] makes the Envoy
//!   resources of each rule set, [`xds::ads`] serves them.
//! - [`http`]: `POST /v1/resolve`, `/metrics`, `/healthz`, `/readyz`.
//! - [`tls`] (`--tls-cert`, `--tls-key`): TLS on both ports, the certificate re-read when its
//!   files change, plaintext on the same ports unless `--tls-only`.
//! - [`config`], [`metrics`], [`signal`], [`telemetry`]: flags, metric names, SIGTERM/SIGINT,
//!   logs.
//!
//! [`Lightbulb::bind`] loads the rule set and binds both ports; [`Lightbulb::run`] serves
//! until its shutdown future completes, then drains (see [`Lightbulb::run`]).
#![warn(missing_docs, unreachable_pub)]

pub use models_config::allocation;
pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod etcd;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod objective;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod store;
pub mod tls;
pub mod xds;

pub use service_runtime::{signal, telemetry};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use models_config::ValidRuleSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store as _;

pub use cache::ResolveCache;
pub use config::Config;
pub use error::{ErrorCode, ResolveError};
pub use grpc::{ResolverService, RoutingConfigService};
pub use objective::{ExperimentCell, ObjectiveConfig, ShadowTarget};
pub use resolve::{CacheKey, Engine, RequestContext, Resolution};

/// Why Lightbulb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The rule-set file is missing, unreadable or invalid.
    #[error("config file {path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Every problem found.
        #[source]
        source: models_config::ConfigError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server could not be built.
    #[error(transparent)]
    Grpc(#[from] server::BuildError),
    /// A flag is wrong or flags contradict each other.
    #[error("{0}")]
    Usage(String),
    /// The rule store could not be opened.
    #[error("rule store {dir}: {source}")]
    Store {
        /// The store's directory.
        dir: String,
        /// The cause.
        #[source]
        source: store::StoreError,
    },
    /// The TLS certificate or key (`--tls-cert`, `--tls-key`) is unusable.
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] service_runtime::tls::TlsError),
    /// The runtime could not be created, or a socket could not be registered with it.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Lightbulb with its sockets bound and its first rule set compiled, ready to [`run`].
///
/// Binding is separate from running so callers (and tests) can learn the addresses when
/// they asked for port 0.
///
/// [`run`]: Lightbulb::run
#[derive(Debug)]
pub struct Lightbulb {
    config: Config,
    engine: Arc<ArcSwap<Engine>>,
    cache: Arc<ResolveCache>,
    rules: watch::Sender<ValidRuleSet>,
    grpc: tonic::transport::server::Router,
    health: server::Health,
    grpc_listener: std::net::TcpListener,
    http_listener: std::net::TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    metrics: PrometheusHandle,
    runtime: tokio::runtime::Runtime,
    /// With `--store`: the store and who may change it.
    store: Option<(Arc<dyn store::Store>, api::Auth)>,
    /// With an etcd `--store`: the same store, followed by a watch.
    etcd: Option<Arc<etcd::EtcdStore>>,
    /// With `--tls-cert`: the certificate and the server configurations of both ports.
    tls: Option<tls::Tls>,
}

impl Lightbulb {
    /// Loads, validates and compiles the rule set, builds the servers and binds the gRPC and
    /// HTTP sockets.
    ///
    /// # Errors
    ///
    /// An invalid rule set (every problem listed), an address in use, or no runtime.
    pub fn bind(config: Config, metrics: PrometheusHandle) -> Result<Self, StartError> {
        let config_error = |source| StartError::Config {
            path: config.config.display().to_string(),
            source,
        };
        let auth = api_auth(&config)?;
        let tls = load_tls(&config)?;
        let (rules, store, etcd) = match &config.store {
            None => (
                models_config::load(&config.config).map_err(config_error)?,
                None,
                None,
            ),
            Some(dir) => {
                let (store, etcd) = open_store(&config, dir)?;
                let rules = store.current().rules;
                (rules, Some(store), etcd)
            }
        };
        let store = store.zip(auth);
        let engine = Engine::new(&rules);
        crate::metrics::record_version(engine.version());
        let engine = Arc::new(ArcSwap::from_pointee(engine));
        let cache = Arc::new(ResolveCache::new(config.cache_capacity, config.cache_ttl()));
        let (rules, rules_rx) = watch::channel(rules);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_count())
            .thread_name("lightbulb")
            .enable_all()
            .build()?;
        let tracer =
            service_runtime::otlp::Tracer::spawn(&config.otlp, "lightbulb", runtime.handle())
                .map_err(|e| StartError::Usage(e.to_string()))?;
        let resolver = ResolverService::new(Arc::clone(&engine))
            .with_cache(Arc::clone(&cache))
            .with_tracer(tracer);
        let ads_rules = rules_rx.clone();
        let routing = RoutingConfigService::new(rules_rx);
        let (grpc, health) = runtime.block_on(async {
            // The xDS mapper task runs on this runtime.
            let ads = xds::AdsService::new(ads_rules);
            server::build(resolver, routing, ads).await
        })?;

        let bind = |addr: SocketAddr| {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Bind { addr, source })?;
            listener.set_nonblocking(true)?;
            let local = listener.local_addr()?;
            Ok::<_, StartError>((listener, local))
        };
        let (grpc_listener, grpc_addr) = bind(config.grpc)?;
        let (http_listener, http_addr) = bind(config.http)?;
        Ok(Lightbulb {
            config,
            engine,
            cache,
            rules,
            grpc,
            health,
            grpc_listener,
            http_listener,
            grpc_addr,
            http_addr,
            metrics,
            runtime,
            store,
            etcd,
            tls,
        })
    }

    /// Enters the runtime where [`Lightbulb::run`]'s shutdown future is polled: signal
    /// handlers for it must be installed inside this context.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address the HTTP server listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` completes, then drains and returns. Blocks the calling thread.
    ///
    /// Shutdown, in order: health `NOT_SERVING` and `/readyz` 503; both servers stop
    /// accepting; `Health.Watch` streams end after sending `NOT_SERVING`; the file watcher
    /// stops (with `--store`: the config API refuses further changes with 503), which ends
    /// every `RoutingConfig.Watch` stream; calls in flight finish, up to
    /// `--drain-timeout-ms`, after which the rest are cut off. The process then exits 0.
    ///
    /// `on_serving` runs once both servers accept calls and health reports `SERVING` (the
    /// moment to announce Lightbulb): a health check made after it never sees the start-up
    /// gap.
    ///
    /// # Errors
    ///
    /// When a listener cannot be registered with the runtime, or (with `--tls-cert`) the
    /// certificate watcher thread cannot be started.
    pub fn run(
        self,
        shutdown: impl Future<Output = ()>,
        on_serving: impl FnOnce(),
    ) -> Result<(), StartError> {
        let Lightbulb {
            config,
            engine,
            cache,
            rules,
            grpc,
            health,
            grpc_listener,
            http_listener,
            metrics,
            runtime,
            store,
            etcd,
            tls,
            ..
        } = self;
        runtime.block_on(async move {
            let stop = CancellationToken::new();
            let ready = Arc::new(AtomicBool::new(false));
            let grpc_listener = tokio::net::TcpListener::from_std(grpc_listener)?;
            let http_listener = tokio::net::TcpListener::from_std(http_listener)?;

            let reloader = reload::Reloader::new(Arc::clone(&engine), Arc::clone(&cache), rules);
            // With a store, the config API changes the rules; otherwise the file does.
            let (watcher, config_api) = match store {
                Some((store, auth)) => {
                    let config_api = Arc::new(api::ConfigApi::new(
                        store,
                        reloader,
                        auth,
                        config.max_body_bytes,
                    ));
                    // A shared store: follow what every replica writes.
                    if let Some(etcd) = &etcd {
                        let config_api = Arc::clone(&config_api);
                        etcd.follow(stop.clone(), move |snapshot| config_api.follow(&snapshot));
                    }
                    (None, Some(config_api))
                }
                None => {
                    let watcher = tokio::spawn(reload::watch_file(
                        config.config.clone(),
                        config.watch_interval(),
                        reloader,
                        stop.clone(),
                    ));
                    (Some(watcher), None)
                }
            };
            let upkeep = tokio::spawn(upkeep(metrics.clone(), stop.clone()));
            let mut http_app = http::router(http::Http {
                engine,
                cache,
                metrics,
                ready: Arc::clone(&ready),
            });
            if let Some(config_api) = &config_api {
                http_app = http_app.merge(api::router(Arc::clone(config_api)));
            }
            let mut servers = tokio::task::JoinSet::new();
            match &tls {
                None => {
                    spawn_http(&mut servers, http_listener, http_app, stop.clone());
                    let stop = stop.clone();
                    servers.spawn(async move {
                        let served =
                            server::serve(grpc, grpc_listener, stop.cancelled_owned()).await;
                        if let Err(e) = served {
                            tracing::error!(error = %e, "gRPC server failed");
                        }
                    });
                }
                Some(tls) => {
                    tls.watch()?;
                    let http_incoming = tls.accept(http_listener, tls::Port::Http, stop.clone())?;
                    spawn_http(&mut servers, http_incoming, http_app, stop.clone());
                    let grpc_incoming = tls.accept(grpc_listener, tls::Port::Grpc, stop.clone())?;
                    let stop = stop.clone();
                    servers.spawn(async move {
                        let served =
                            server::serve_incoming(grpc, grpc_incoming, stop.cancelled_owned())
                                .await;
                        if let Err(e) = served {
                            tracing::error!(error = %e, "gRPC server failed");
                        }
                    });
                }
            }
            health.serving().await;
            ready.store(true, Ordering::Relaxed);
            tracing::info!("serving");
            on_serving();

            shutdown.await;
            tracing::info!("shutting down: not serving, no new connections, draining");
            ready.store(false, Ordering::Relaxed);
            health.not_serving().await;
            stop.cancel();
            health.close().await;
            if let Some(watcher) = watcher {
                let _ = watcher.await;
            }
            if let Some(config_api) = &config_api {
                config_api.close();
            }
            let _ = upkeep.await;
            let drain = config.drain_timeout();
            let drained = tokio::time::timeout(drain, async {
                while servers.join_next().await.is_some() {}
            })
            .await;
            match drained {
                Ok(()) => tracing::info!("stopped"),
                Err(_) => {
                    tracing::warn!(
                        drain_timeout_ms = config.drain_timeout_ms,
                        "drain deadline passed; cutting off the calls still in flight"
                    );
                    servers.shutdown().await;
                }
            }
            Ok(())
        })
    }
}

/// Serves the HTTP API on `listener` (plaintext, or [`tls::Incoming`]) until `stop`, then
/// lets the requests in flight finish.
fn spawn_http<L>(
    servers: &mut tokio::task::JoinSet<()>,
    listener: L,
    app: axum::Router,
    stop: CancellationToken,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    servers.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
}

/// The certificate of `--tls-cert` and `--tls-key`, loaded once; `None` without them.
///
/// # Errors
///
/// One flag without the other, `--tls-only` alone, or files that do not load.
fn load_tls(config: &Config) -> Result<Option<tls::Tls>, StartError> {
    let Some((cert, key)) = config.tls_files().map_err(StartError::Usage)? else {
        return Ok(None);
    };
    let tls = tls::Tls::load(cert, key, config.tls_only)?;
    tracing::info!(
        cert = %cert.display(),
        plaintext_too = !config.tls_only,
        "TLS on the gRPC and HTTP ports; the certificate is re-read when its files change"
    );
    Ok(Some(tls))
}

/// Who may use the config API: `None` without `--store`.
///
/// # Errors
///
/// With `--store`: an unreadable token file, `--insecure-no-auth` on a non-loopback
/// address, or neither tokens nor that flag.
fn api_auth(config: &Config) -> Result<Option<api::Auth>, StartError> {
    if config.store.is_none() {
        return Ok(None);
    }
    let mut tokens = match &config.api_token_file {
        Some(path) => {
            auth::Tokens::read_file(path).map_err(|e| StartError::Usage(e.to_string()))?
        }
        None => auth::Tokens::default(),
    };
    if let Some(token) = &config.api_token {
        tokens.add("env", token.expose());
    }
    if config.insecure_no_auth {
        if !config.http.ip().is_loopback() {
            return Err(StartError::Usage(format!(
                "--insecure-no-auth is only allowed when --http is a loopback address, not {}",
                config.http
            )));
        }
        if !tokens.is_empty() {
            tracing::warn!("--insecure-no-auth: the API tokens are ignored");
        }
        tracing::warn!(
            "--insecure-no-auth: anyone who can reach the HTTP port can change the rules"
        );
        return Ok(Some(api::Auth::Disabled));
    }
    if tokens.is_empty() {
        return Err(StartError::Usage(
            "--store enables the config API, which needs --api-token-file FILE or LIGHTBULB_API_TOKEN (or --insecure-no-auth on a loopback --http address)".to_owned(),
        ));
    }
    Ok(Some(api::Auth::Tokens(tokens)))
}

/// The store, and the same store again when it is etcd's.
type OpenedStore = (Arc<dyn store::Store>, Option<Arc<etcd::EtcdStore>>);

/// Opens the directory or etcd store, seeding an empty one from `--config`.
fn open_store(config: &Config, dir: &str) -> Result<OpenedStore, StartError> {
    if let Some(endpoints) = config.etcd_endpoints().map_err(StartError::Usage)? {
        return open_etcd(config, dir, &endpoints);
    }
    let path = std::path::Path::new(dir);
    let store_error = |source| StartError::Store {
        dir: dir.to_owned(),
        source,
    };
    // The seed is read only when the store is empty.
    let opened = store::DirStore::open(path, config.history.get(), None);
    let store = match opened {
        Ok(store) => store,
        Err(store::StoreError::Empty) => {
            let seed =
                models_config::load(&config.config).map_err(|source| StartError::Config {
                    path: config.config.display().to_string(),
                    source,
                })?;
            store::DirStore::open(path, config.history.get(), Some(seed)).map_err(store_error)?
        }
        Err(e) => return Err(store_error(e)),
    };
    let current = store.current();
    tracing::info!(
        dir,
        version = current.info.version,
        who = %current.info.who,
        "rule store opened"
    );
    Ok((Arc::new(store), None))
}

/// Opens the etcd store, seeding an empty prefix from `--config`.
fn open_etcd(config: &Config, url: &str, endpoints: &[String]) -> Result<OpenedStore, StartError> {
    let store_error = |source| StartError::Store {
        dir: url.to_owned(),
        source,
    };
    let prefix = &config.etcd_prefix;
    let history = config.history.get();
    // The seed is read only when the prefix is empty.
    let store = match etcd::EtcdStore::open(endpoints, prefix, history, None) {
        Ok(store) => store,
        Err(store::StoreError::Empty) => {
            let seed =
                models_config::load(&config.config).map_err(|source| StartError::Config {
                    path: config.config.display().to_string(),
                    source,
                })?;
            etcd::EtcdStore::open(endpoints, prefix, history, Some(seed)).map_err(store_error)?
        }
        Err(e) => return Err(store_error(e)),
    };
    let current = store.current();
    tracing::info!(
        store = url,
        prefix,
        version = current.info.version,
        who = %current.info.who,
        "rule store opened"
    );
    let store = Arc::new(store);
    Ok((Arc::clone(&store) as Arc<dyn store::Store>, Some(store)))
}

/// Prometheus histogram upkeep every few seconds, until `stop`.
async fn upkeep(metrics: PrometheusHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => metrics.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn auth(args: &[&str]) -> Result<Option<api::Auth>, StartError> {
        let mut all = vec!["lightbulb", "--config", "r.json"];
        all.extend_from_slice(args);
        api_auth(&Config::parse_from(all))
    }

    #[test]
    fn the_config_api_needs_tokens_or_loopback_without_auth() {
        assert!(matches!(auth(&[]), Ok(None)), "no store, no API");
        assert!(matches!(auth(&["--store", "d"]), Err(StartError::Usage(_))));
        assert!(matches!(
            auth(&["--store", "d", "--api-token", "t"]),
            Ok(Some(api::Auth::Tokens(_)))
        ));
        assert!(matches!(
            auth(&["--store", "d", "--insecure-no-auth"]),
            Ok(Some(api::Auth::Disabled))
        ));
        let err = auth(&[
            "--store",
            "d",
            "--insecure-no-auth",
            "--http",
            "0.0.0.0:8081",
        ]);
        assert!(
            matches!(&err, Err(StartError::Usage(m)) if m.contains("loopback")),
            "{err:?}"
        );
    }
}
