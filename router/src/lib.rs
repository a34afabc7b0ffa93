//! The router: the data plane that maps the `x-routing-key` header to a model cluster and
//! forwards the request untouched, its body streamed in both directions.
//!
//! The request path ([`proxy`]), in order:
//!
//! 1. [`server`] accepts a connection on one of the per-core workers (HTTP/1.1 or h2c);
//! 2. [`proxy`] reads the routing key and takes a snapshot of the [`route::RouteTable`];
//! 3. the [`route::Route`] picks a target cluster (split), its [`balance::Balancer`] an
//!    endpoint;
//! 4. [`headers`] rewrites the head (hop-by-hop out, `x-forwarded-for`, `x-request-id`);
//! 5. [`upstream`] sends it on a pooled connection; connect failures retry once elsewhere,
//!    then go to the fallback cluster;
//! 6. the response streams back, or [`error`] answers with the router's own error.
//!
//! Control path: [`reload`] (file watch, `--config`), [`control_plane`] (Lightbulb's Watch
//! stream, `--control-plane`, with the last good snapshot kept on disk) and [`admin`]
//! (`PUT /config`) build a new table from a validated rule set and swap it in whole
//! ([`state::Shared::apply`]).

pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod control_plane;
pub mod error;
pub mod framing;
pub mod headers;
pub mod health;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod mirror;
pub mod outlier;
pub mod proxy;
pub mod reload;
pub mod retry;
use service_runtime::rng;
pub mod route;
pub mod server;
pub mod source;
pub mod state;
pub mod tenant;
pub mod timer;
pub mod upgrade;
pub mod upstream;

pub use service_runtime::{signal, telemetry};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderName;
use metrics_exporter_prometheus::PrometheusHandle;
use service_runtime::otlp::Tracer;
use service_runtime::secret::Token;
use service_runtime::tls::ReloadingCert;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use config::Source;
use state::{ConfigSource, Shared};

/// Why the router could not start.
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
    /// A flag has a value the router cannot use.
    #[error("{0}")]
    Flag(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A thread or runtime could not be created.
    #[error("cannot start workers: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A router with its sockets bound and its first route table built, ready to [`run`].
///
/// Binding is separate from running so callers (and tests) can learn the addresses when
/// they asked for port 0.
///
/// [`run`]: Router::run
#[derive(Debug)]
pub struct Router {
    config: Config,
    shared: Arc<Shared>,
    proxy_listeners: Vec<std::net::TcpListener>,
    admin_listener: std::net::TcpListener,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: PrometheusHandle,
    admin_token: Option<Arc<Token>>,
    /// The listener's certificate, when it serves TLS.
    tls_cert: Option<Arc<ReloadingCert>>,
    /// The `--tls-listen` sockets, one per worker.
    tls_listeners: Vec<std::net::TcpListener>,
    /// Runs the admin API, the config watcher and the shutdown signal.
    control: tokio::runtime::Runtime,
}

impl Router {
    /// Loads and validates the rule set, builds the first route table and binds the proxy and
    /// admin sockets.
    ///
    /// With `--control-plane`, the first table is the snapshot kept in `--snapshot-dir` (the
    /// router is ready at once), or, without a valid one, an empty table that is not ready
    /// until the first snapshot arrives.
    ///
    /// # Errors
    ///
    /// An invalid rule-set file (every problem listed), a bad flag (a control-plane URL that
    /// is not `http://HOST:PORT`, a snapshot dir that cannot be created), or an address in
    /// use.
    pub fn bind(config: Config, metrics: PrometheusHandle) -> Result<Self, StartError> {
        let routing_header = HeaderName::from_bytes(
            config.routing_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|_| {
            StartError::Flag(format!(
                "--routing-header: invalid header name {:?}",
                config.routing_header
            ))
        })?;
        let admin_token = match &config.admin_token_file {
            Some(path) => {
                Some(Arc::new(Token::from_file(path).map_err(|e| {
                    StartError::Flag(format!("--admin-token-file: {e}"))
                })?))
            }
            None if !config.admin.ip().is_loopback() => {
                return Err(StartError::Flag(format!(
                    "--admin {}: a non-loopback admin address needs --admin-token-file",
                    config.admin
                )));
            }
            None => None,
        };
        let tls_cert = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let reloading = ReloadingCert::load(cert, key)
                    .map_err(|e| StartError::Flag(format!("--tls-cert/--tls-key: {e}")))?;
                Some(reloading)
            }
            _ => None,
        };
        let tenant_header = HeaderName::from_bytes(
            config.tenant_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|_| {
            StartError::Flag(format!(
                "--tenant-header: invalid header name {:?}",
                config.tenant_header
            ))
        })?;
        let workers = config.worker_count();
        let identity = match &config.jwt_jwks {
            None => None,
            Some(jwks) => {
                let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience)
                else {
                    return Err(StartError::Flag(
                        "--jwt-jwks needs --jwt-issuer and --jwt-audience".to_string(),
                    ));
                };
                let verifier =
                    identity::Verifier::new(jwks, issuer, audience, &config.jwt_claim_header)
                        .map_err(|e| StartError::Flag(e.to_string()))?;
                Some(Arc::new(verifier))
            }
        };
        let control = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tracer = Tracer::spawn(&config.otlp, "router", control.handle())
            .map_err(|e| StartError::Flag(e.to_string()))?;
        let settings = state::ProxySettings {
            routing_header,
            tenant_header,
            access_log: config.access_log,
            attribution: config.served_by,
            identity,
            tracer,
            workers,
            max_request_headers: config.max_request_headers as usize,
            header_read_timeout: config.header_read_timeout(),
        };
        let shared = match config.source() {
            Source::File(path) => {
                let rule_set = models_config::load(path).map_err(|source| StartError::Config {
                    path: path.display().to_string(),
                    source,
                })?;
                Shared::try_new(rule_set, ConfigSource::File, settings).map_err(|source| {
                    StartError::Config {
                        path: path.display().to_string(),
                        source,
                    }
                })?
            }
            Source::ControlPlane(urls) => {
                if urls.is_empty() {
                    return Err(StartError::Flag(
                        "--control-plane: at least one URL is required".to_string(),
                    ));
                }
                for url in urls {
                    control_plane::check_url(url).map_err(StartError::Flag)?;
                }
                control_plane::check_tls(&config).map_err(StartError::Flag)?;
                std::fs::create_dir_all(&config.snapshot_dir).map_err(|e| {
                    StartError::Flag(format!(
                        "--snapshot-dir {}: {e}",
                        config.snapshot_dir.display()
                    ))
                })?;
                control_plane::initial_state(&config.snapshot_dir, settings)
            }
        };
        let shared = Arc::new(shared);
        let proxy_listeners =
            server::bind_reuseport(config.listen, workers).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let proxy_addr = proxy_listeners[0].local_addr()?;
        let tls_listeners = match config.tls_listen {
            Some(addr) => server::bind_reuseport(addr, workers)
                .map_err(|source| StartError::Bind { addr, source })?,
            None => Vec::new(),
        };
        let admin_listener =
            std::net::TcpListener::bind(config.admin).map_err(|source| StartError::Bind {
                addr: config.admin,
                source,
            })?;
        admin_listener.set_nonblocking(true)?;
        let admin_addr = admin_listener.local_addr()?;
        Ok(Router {
            config,
            shared,
            proxy_listeners,
            admin_listener,
            proxy_addr,
            admin_addr,
            metrics,
            admin_token,
            tls_cert,
            tls_listeners,
            control,
        })
    }

    /// Enters the control runtime, where [`Router::run`]'s shutdown future is polled: signal
    /// handlers for it must be installed inside this context.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.control.enter()
    }

    /// The address the proxy listens on.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The address the admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The `--tls-listen` address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listeners.first().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, drains in-flight requests up
    /// to the drain deadline, and returns. Blocks the calling thread, which runs the admin API
    /// and the config watcher; the proxy runs on its own worker threads.
    ///
    /// `on_serving` runs once the workers, the admin API and the config source are running
    /// (the moment to announce the router): a check of `/readyz` made after it sees the real
    /// readiness, never the start-up gap.
    ///
    /// # Errors
    ///
    /// When a worker thread or the control runtime cannot be started.
    pub fn run(
        self,
        shutdown: impl Future<Output = ()>,
        on_serving: impl FnOnce(),
    ) -> Result<(), StartError> {
        let Router {
            config,
            shared,
            proxy_listeners,
            admin_listener,
            metrics,
            admin_token,
            tls_cert,
            tls_listeners,
            control,
            ..
        } = self;
        let stop_proxy = CancellationToken::new();
        let options = server::ServeOptions {
            header_read_timeout: config.header_read_timeout(),
            drain_timeout: config.drain_timeout(),
            idle_timeout: (config.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.idle_timeout_ms)),
            max_head_bytes: config.max_request_head_bytes,
            max_headers: config.max_request_headers,
            http2_max_streams: config.http2_max_concurrent_streams,
            http2_max_pending_resets: config.http2_max_pending_resets,
            http2_max_error_resets: config.http2_max_error_resets,
        };
        let acceptor = match &tls_cert {
            Some(cert) => {
                cert.watch()?;
                let tls = service_runtime::tls::server_config(
                    Arc::clone(cert),
                    &service_runtime::tls::ALPN_H2_HTTP1,
                )
                .map_err(|e| StartError::Flag(e.to_string()))?;
                Some(tokio_rustls::TlsAcceptor::from(tls))
            }
            None => None,
        };
        let main_mode = match (&acceptor, config.tls_only) {
            (None, _) => server::Mode::Plain,
            (Some(_), false) => server::Mode::Sniff,
            (Some(_), true) => server::Mode::Tls,
        };
        let limit = server::ConnectionLimit::new(config.max_connections);
        let mut tls_listeners = tls_listeners.into_iter();
        let mut workers = Vec::with_capacity(proxy_listeners.len());
        for (index, listener) in proxy_listeners.into_iter().enumerate() {
            let listeners = server::WorkerListeners {
                main: listener,
                main_mode,
                tls: tls_listeners.next(),
                acceptor: acceptor.clone(),
            };
            workers.push(server::spawn_worker(
                index,
                listeners,
                Arc::clone(&shared),
                stop_proxy.clone(),
                options,
                Arc::clone(&limit),
            )?);
        }
        control.block_on(async move {
            let stop_control = CancellationToken::new();
            let watcher = match config.source() {
                Source::File(path) => tokio::spawn(reload::watch_file(
                    path.to_path_buf(),
                    config.watch_interval(),
                    Arc::clone(&shared),
                    stop_control.clone(),
                )),
                Source::ControlPlane(_) => {
                    let settings = control_plane::Settings::from_config(&config);
                    tokio::spawn(control_plane::follow(
                        settings,
                        Arc::clone(&shared),
                        stop_control.clone(),
                    ))
                }
            };
            let jwks_watcher = match (&config.jwt_jwks, &shared.settings.identity) {
                (Some(path), Some(verifier)) => {
                    let verifier = Arc::clone(verifier);
                    Some(tokio::spawn(reload::follow_file(
                        path.clone(),
                        "JWKS file",
                        config.watch_interval(),
                        stop_control.clone(),
                        move |path, content| verifier.reload(path, content),
                    )))
                }
                _ => None,
            };
            let probers = shared
                .take_probers()
                .map(|probes| tokio::spawn(health::run_probers(probes, stop_control.clone())));
            let upkeep = {
                let metrics = metrics.clone();
                let stop = stop_control.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => metrics.run_upkeep(),
                        }
                    }
                })
            };
            let admin_app = admin::router(admin::Admin {
                shared: Arc::clone(&shared),
                metrics,
                token: admin_token,
                token_everywhere: !config.admin.ip().is_loopback(),
            });
            let admin_server = match tokio::net::TcpListener::from_std(admin_listener) {
                Ok(listener) => {
                    let stop = stop_control.clone();
                    Some(tokio::spawn(async move {
                        let served = axum::serve(listener, admin_app)
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await;
                        if let Err(e) = served {
                            tracing::error!(error = %e, "admin server failed");
                        }
                    }))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot register admin listener");
                    None
                }
            };
            shared.ready.store(true, Ordering::Relaxed);
            on_serving();
            shutdown.await;
            tracing::info!("shutting down: not ready, no new connections, draining");
            shared.ready.store(false, Ordering::Relaxed);
            stop_proxy.cancel();
            let joined = tokio::task::spawn_blocking(move || {
                for w in workers {
                    let _ = w.join();
                }
            })
            .await;
            if joined.is_err() {
                tracing::error!("a worker thread panicked");
            }
            stop_control.cancel();
            let _ = watcher.await;
            let _ = upkeep.await;
            if let Some(probers) = probers {
                let _ = probers.await;
            }
            if let Some(jwks_watcher) = jwks_watcher {
                let _ = jwks_watcher.await;
            }
            if let Some(admin) = admin_server {
                let _ = admin.await;
            }
            if let Some(tracer) = &shared.settings.tracer {
                tracer.flush(Duration::from_secs(2)).await;
            }
            tracing::info!("stopped");
        });
        Ok(())
    }
}

/// Installs the Prometheus recorder as the process-wide metrics recorder and describes every
/// metric. Call once, before [`Router::bind`].
///
/// # Errors
///
/// When a recorder is already installed.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                metrics::REQUEST_DURATION_SECONDS.to_string(),
            ),
            metrics::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                metrics::HEALTH_CHECK_DURATION_SECONDS.to_string(),
            ),
            metrics::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                metrics::UPSTREAM_DURATION_SECONDS.to_string(),
            ),
            metrics::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                metrics::OVERHEAD_DURATION_SECONDS.to_string(),
            ),
            metrics::OVERHEAD_BUCKETS,
        )?
        .install_recorder()?;
    metrics::describe();
    Ok(handle)
}
