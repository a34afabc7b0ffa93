//! The [`Client`] and its [`Builder`]: the cache, the last-known-good map, the static
//! defaults, and the RPC with retries, backoff and failover between endpoints.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::header::HeaderName;
use moka::Expiry;
use moka::sync::Cache;
use routing_proto::lightbulb::v1 as pb;
use routing_proto::lightbulb::v1::resolver_client::ResolverClient;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::context::AsContext;
use crate::error::{BuildError, ClientError, is_retryable};
use crate::header::RoutingHeader;
use crate::key::{self, BuildFingerprintHasher, ContextKey};
use crate::resolved::{Answer, ObjectiveConfig, Resolved, ShadowTarget, Source};
use crate::stats::{Counters, Stats};

/// Default [`Builder::cache_capacity`].
pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;
/// Default [`Builder::last_known_good_capacity`].
pub const DEFAULT_LAST_KNOWN_GOOD_CAPACITY: u64 = 10_000;
/// Default [`Builder::max_ttl`].
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
/// Default [`Builder::deadline`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);
/// Default [`Builder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default [`Builder::attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default base delay of [`Builder::backoff`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(20);
/// Default maximum delay of [`Builder::backoff`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Configures and builds a [`Client`]; from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    cache_capacity: u64,
    last_known_good_capacity: u64,
    max_ttl: Duration,
    deadline: Duration,
    connect_timeout: Duration,
    attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    routing_header: RoutingHeader,
    static_defaults: Vec<(String, String, ObjectiveConfig)>,
    tls_ca_file: Option<PathBuf>,
}

/// A Lightbulb client: resolves request contexts with a local cache, falls back to the last
/// known good answer (then to a static default) when Lightbulb is unreachable.
///
/// Cheap to clone (one reference count); clones share the connections, the cache and the
/// counters, so make one per process and hand clones around.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// One lazily connected channel per endpoint, in the order given.
    endpoints: Box<[(Box<str>, ResolverClient<Channel>)]>,
    /// Index of the endpoint the next RPC goes to; moves on after a retryable failure, so
    /// that every client sticks to a working replica.
    preferred: AtomicUsize,
    /// Fresh answers by context fingerprint; each expires after its own TTL.
    fresh: Cache<u64, Arc<Entry>, BuildFingerprintHasher>,
    /// The latest answer for every context, by fingerprint; never expires, evicted only by
    /// size.
    last_good: Cache<u64, Arc<Entry>, BuildFingerprintHasher>,
    /// The RPC in flight for each context that missed, so that concurrent misses of one
    /// context share it. An entry lives from the first miss until its first caller gets
    /// the outcome (the cache is filled by then) or goes away.
    inflight: Mutex<HashMap<u64, (Arc<ContextKey>, Flight)>>,
    /// Static default answers by objective.
    static_defaults: HashMap<Box<str>, Arc<Answer>>,
    max_ttl: Duration,
    deadline: Duration,
    attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    routing_header: RoutingHeader,
    stats: Counters,
}

/// A cached answer with the context it answers.
#[derive(Debug)]
struct Entry {
    key: Arc<ContextKey>,
    answer: Arc<Answer>,
    /// The TTL Lightbulb gave, capped by `max_ttl`; what moka expires the entry after.
    ttl: Duration,
    /// When the entry stops being served, on tokio's clock: checked on every hit, so that a
    /// paused clock in tests (and the exact TTL in production) is honoured even before
    /// moka, which keeps its own clock, evicts the entry.
    expires_at: Instant,
}

/// Expires each fresh entry after the TTL it came with.
struct TtlExpiry;

impl Expiry<u64, Arc<Entry>> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &u64,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &u64,
        entry: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// One miss's RPC and cache fill, shared by every caller that misses the same context
/// meanwhile. Polled by whichever of them polls first, so it runs on as long as one of them
/// waits.
type Flight = Shared<BoxFuture<'static, Result<Arc<Answer>, Failed>>>;

/// Why a flight produced no answer; cloned to every caller of the flight, each of which
/// turns it into its own [`ClientError`] or fallback.
#[derive(Debug, Clone)]
enum Failed {
    /// A non-retryable status: returned to the caller as is.
    Rejected { code: Code, message: String },
    /// Every attempt failed with a retryable status, or the deadline came first.
    Exhausted {
        attempts: u32,
        code: Code,
        message: String,
    },
    /// The answer was unusable.
    Invalid(&'static str),
}

/// Removes a flight from the in-flight map when its caller is done with it, whether it got
/// the outcome or was dropped (cancelled).
struct Landing<'a> {
    inflight: &'a Mutex<HashMap<u64, (Arc<ContextKey>, Flight)>>,
    fingerprint: u64,
    flight: Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        // Only our own flight: a colliding context may have registered another one.
        if inflight
            .get(&self.fingerprint)
            .is_some_and(|(_, flight)| flight.ptr_eq(&self.flight))
        {
            inflight.remove(&self.fingerprint);
        }
    }
}

impl Failed {
    fn exhausted(attempts: u32, last: &Status) -> Self {
        Failed::Exhausted {
            attempts,
            code: last.code(),
            message: last.message().to_owned(),
        }
    }
}

// === impl Builder ===

impl Builder {
    /// Maximum number of fresh answers cached (one per distinct context). Default
    /// [`DEFAULT_CACHE_CAPACITY`] (10,000); 0 disables the cache.
    #[must_use]
    pub fn cache_capacity(mut self, entries: u64) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Maximum number of last-known-good answers kept (one per distinct context; they never
    /// expire, the least useful are evicted past this size). Default
    /// [`DEFAULT_LAST_KNOWN_GOOD_CAPACITY`] (10,000); 0 disables the fallback to last known
    /// good answers.
    #[must_use]
    pub fn last_known_good_capacity(mut self, entries: u64) -> Self {
        self.last_known_good_capacity = entries;
        self
    }

    /// Upper bound on how long an answer is cached: the TTL Lightbulb returns, capped at
    /// this. Default [`DEFAULT_MAX_TTL`] (5 minutes). `Duration::ZERO` disables the cache.
    #[must_use]
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// Time budget of one resolution that misses the cache, retries and backoff included;
    /// each attempt's gRPC timeout is what is left of it. When it runs out, the fallbacks
    /// apply. Default [`DEFAULT_DEADLINE`] (500 ms).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Timeout of establishing a connection to one endpoint. Default
    /// [`DEFAULT_CONNECT_TIMEOUT`] (250 ms).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Maximum RPC attempts per resolution (first try included), made while the deadline
    /// allows. Default [`DEFAULT_ATTEMPTS`] (3); 0 is taken as 1.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Exponential backoff between attempts: the n-th wait (n from 0) is
    /// `min(max, base * 2^n)` with equal jitter (uniform in its upper half). A retry that goes
    /// to an endpoint not yet tried in this resolution does not wait. A wait that would end
    /// past the deadline is not started: the resolution gives up (and falls back) at once.
    /// Default [`DEFAULT_BACKOFF_BASE`] (20 ms) and [`DEFAULT_BACKOFF_MAX`] (200 ms).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The header [`Client::routing_header`] stamps. Default `x-routing-key`.
    #[must_use]
    pub fn routing_header(mut self, name: HeaderName) -> Self {
        self.routing_header = RoutingHeader::new(name);
        self
    }

    /// The answer for `objective` when Lightbulb is unavailable and has never answered the
    /// context (no last known good answer): `routing_key` and `config`, with no shadows and
    /// rule-set version 0. Default: none, so such a resolution fails. A later call for the
    /// same objective replaces the earlier one.
    ///
    /// A static default never hides an answer Lightbulb gives, and never a rejection
    /// (`NOT_FOUND` for an unknown objective, `INVALID_ARGUMENT`): it is only for outages.
    #[must_use]
    pub fn static_default(
        mut self,
        objective: impl Into<String>,
        routing_key: impl Into<String>,
        config: ObjectiveConfig,
    ) -> Self {
        self.static_defaults
            .push((objective.into(), routing_key.into(), config));
        self
    }

    /// The CA file (PEM) that the certificates of `https://` endpoints must chain to; read
    /// once, by [`Builder::build`]. Default: none, and an `https://` endpoint is then a build
    /// error (there is no fallback to plaintext nor to the system's roots). `http://`
    /// endpoints ignore it.
    #[must_use]
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Builds the client. Connections are made lazily, on the first cache miss, so this
    /// succeeds while Lightbulb is down (resolutions then use the static defaults).
    ///
    /// # Errors
    ///
    /// [`BuildError`] when no endpoint is given, an endpoint is not a valid URI, an
    /// `https://` endpoint has no usable CA file, a static default's routing key is not a
    /// valid header value, or the deadline is zero.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime: each endpoint's channel spawns its connection
    /// task on the current runtime.
    pub fn build(self) -> Result<Client, BuildError> {
        if self.endpoints.is_empty() {
            return Err(BuildError::NoEndpoints);
        }
        if self.deadline.is_zero() {
            return Err(BuildError::ZeroDeadline(self.deadline));
        }
        let ca = match &self.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| BuildError::CaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for uri in self.endpoints {
            let endpoint = match Endpoint::from_shared(uri.clone()) {
                Ok(endpoint) => endpoint,
                Err(source) => {
                    return Err(BuildError::InvalidEndpoint {
                        endpoint: uri,
                        source,
                    });
                }
            };
            let endpoint = if endpoint.uri().scheme_str() == Some("https") {
                let Some(ca) = &ca else {
                    return Err(BuildError::HttpsWithoutCa { endpoint: uri });
                };
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                match endpoint.tls_config(tls) {
                    Ok(endpoint) => endpoint,
                    Err(source) => {
                        return Err(BuildError::Tls {
                            endpoint: uri,
                            source,
                        });
                    }
                }
            } else {
                endpoint
            };
            let channel = endpoint
                .connect_timeout(self.connect_timeout)
                .timeout(self.deadline)
                .tcp_nodelay(true)
                .connect_lazy();
            endpoints.push((uri.into_boxed_str(), ResolverClient::new(channel)));
        }
        let mut static_defaults = HashMap::new();
        for (objective, routing_key, config) in self.static_defaults {
            let answer =
                Answer::new(routing_key.clone(), config, Box::new([]), 0).map_err(|_| {
                    BuildError::InvalidStaticDefault {
                        objective: objective.clone(),
                        routing_key,
                    }
                })?;
            static_defaults.insert(objective.into_boxed_str(), Arc::new(answer));
        }
        let fresh = Cache::builder()
            .max_capacity(self.cache_capacity)
            .expire_after(TtlExpiry)
            .build_with_hasher(BuildFingerprintHasher::default());
        let last_good = Cache::builder()
            .max_capacity(self.last_known_good_capacity)
            .build_with_hasher(BuildFingerprintHasher::default());
        // A random first endpoint spreads a fleet of clients over the replicas.
        let preferred = AtomicUsize::new(fastrand::usize(..endpoints.len()));
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: endpoints.into_boxed_slice(),
                preferred,
                fresh,
                last_good,
                inflight: Mutex::new(HashMap::new()),
                static_defaults,
                max_ttl: self.max_ttl,
                deadline: self.deadline,
                attempts: self.attempts,
                backoff_base: self.backoff_base,
                backoff_max: self.backoff_max,
                routing_header: self.routing_header,
                stats: Counters::default(),
            }),
        })
    }
}

// === impl Client ===

impl Client {
    /// A builder for a client of the Lightbulb replicas at `endpoints` (`http://host:port`,
    /// or `https://host:port` with [`Builder::tls_ca_file`]; one or more), with every setting
    /// at its default.
    ///
    /// Each client starts on a random endpoint and stays on it until an RPC fails with a
    /// retryable status; the retry then goes to the next endpoint in order (failover).
    pub fn builder<I, S>(endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            last_known_good_capacity: DEFAULT_LAST_KNOWN_GOOD_CAPACITY,
            max_ttl: DEFAULT_MAX_TTL,
            deadline: DEFAULT_DEADLINE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            routing_header: RoutingHeader::default(),
            static_defaults: Vec::new(),
            tls_ca_file: None,
        }
    }

    /// Resolves a request context: which routing key and model serve it.
    ///
    /// In order:
    /// 1. a fresh cached answer for exactly this context → [`Source::Cached`], no RPC;
    /// 2. otherwise `Resolver.Resolve` on Lightbulb, retried with backoff on retryable
    ///    failures (see [`is_retryable`](crate::is_retryable)) within the deadline →
    ///    [`Source::Fresh`], cached for the TTL Lightbulb returned (capped by
    ///    [`Builder::max_ttl`]) and kept as the last known good answer. Concurrent misses of
    ///    the same context share one RPC and its outcome;
    /// 3. if Lightbulb stayed unavailable: the last known good answer for this context →
    ///    [`Source::LastKnownGood`];
    /// 4. else the objective's static default → [`Source::StaticDefault`].
    ///
    /// # Errors
    ///
    /// - [`ClientError::Rejected`] when Lightbulb answers with a non-retryable status, e.g.
    ///   `NOT_FOUND` for an unknown objective or `INVALID_ARGUMENT`. Deliberately never
    ///   replaced by a fallback: that is a configuration or caller error, and serving stale
    ///   data would hide it.
    /// - [`ClientError::Unavailable`] when Lightbulb stayed unavailable and there is no
    ///   fallback for the context.
    /// - [`ClientError::InvalidResponse`] when Lightbulb's answer is unusable.
    pub async fn resolve<C: AsContext + ?Sized>(&self, ctx: &C) -> Result<Resolved, ClientError> {
        let fingerprint = key::fingerprint(ctx);
        if let Some(resolved) = self.lookup(fingerprint, ctx) {
            return Ok(resolved);
        }
        let inner = &*self.inner;
        Counters::incr(&inner.stats.misses);
        let landing = Landing {
            inflight: &inner.inflight,
            fingerprint,
            flight: self.join_or_start(fingerprint, ctx),
        };
        let outcome = landing.flight.clone().await;
        drop(landing);
        let objective = || ctx.objective().to_owned();
        let err = match outcome {
            Ok(answer) => return Ok(Resolved::new(answer, Source::Fresh)),
            Err(Failed::Exhausted {
                attempts,
                code,
                message,
            }) => return self.fall_back(fingerprint, ctx, attempts, code, message),
            Err(Failed::Rejected { code, message }) => ClientError::Rejected {
                objective: objective(),
                code,
                message,
            },
            Err(Failed::Invalid(reason)) => ClientError::InvalidResponse {
                objective: objective(),
                reason,
            },
        };
        Counters::incr(&inner.stats.errors);
        Err(err)
    }

    /// The cached answer for `ctx` if there is a fresh one, without any RPC: the first step
    /// of [`resolve`](Client::resolve), for callers that must not wait. Allocates nothing.
    ///
    /// A returned answer counts as a hit in [`stats`](Client::stats); `None` is not counted.
    pub fn cached<C: AsContext + ?Sized>(&self, ctx: &C) -> Option<Resolved> {
        self.lookup(key::fingerprint(ctx), ctx)
    }

    /// The client's counters since it was built (shared by its clones).
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The routing header this client was configured with ([`Builder::routing_header`]),
    /// to stamp requests with.
    pub fn routing_header(&self) -> &RoutingHeader {
        &self.inner.routing_header
    }

    /// Sets the configured routing header on `request` to the answer's routing key;
    /// shorthand for `client.routing_header().stamp(resolved, request)`.
    pub fn stamp<B>(&self, resolved: &Resolved, request: &mut http::Request<B>) {
        self.inner.routing_header.stamp(resolved, request);
    }

    /// Drops every fresh cached answer, so the next resolution of each context asks
    /// Lightbulb. Last known good answers are kept.
    pub fn invalidate_cache(&self) {
        self.inner.fresh.invalidate_all();
    }

    // The hit path: one fixed-seed hash of the context, one cache probe, one comparison
    // with the stored context, one clock read. No allocation.
    fn lookup<C: AsContext + ?Sized>(&self, fingerprint: u64, ctx: &C) -> Option<Resolved> {
        let inner = &*self.inner;
        let entry = inner.fresh.get(&fingerprint)?;
        if Instant::now() < entry.expires_at && entry.key.matches(ctx) {
            Counters::incr(&inner.stats.hits);
            return Some(Resolved::new(entry.answer.clone(), Source::Cached));
        }
        None
    }

    /// The flight in progress for `ctx`, or a new one registered for later misses to join.
    fn join_or_start<C: AsContext + ?Sized>(&self, fingerprint: u64, ctx: &C) -> Flight {
        let inner = &*self.inner;
        let mut inflight = inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken = match inflight.get(&fingerprint) {
            Some((key, flight)) if key.matches(ctx) => {
                Counters::incr(&inner.stats.coalesced);
                return flight.clone();
            }
            Some(_) => true,
            None => false,
        };
        let key = Arc::new(ContextKey::of(ctx));
        let request = ctx.to_request();
        let client = self.clone();
        let flight_key = key.clone();
        let flight = async move {
            let response = client.fetch(request).await?;
            client.store(fingerprint, flight_key, response)
        }
        .boxed()
        .shared();
        // A different context with the same fingerprint in flight (a 64-bit collision): go
        // alone rather than replace or join it.
        if !taken {
            inflight.insert(fingerprint, (key, flight.clone()));
        }
        flight
    }

    /// Caches a fresh answer and keeps it as the last known good one.
    fn store(
        &self,
        fingerprint: u64,
        key: Arc<ContextKey>,
        response: pb::ResolveResponse,
    ) -> Result<Arc<Answer>, Failed> {
        let inner = &*self.inner;
        let config = response
            .objective_config
            .ok_or(Failed::Invalid("no objective config"))?;
        let shadows: Box<[ShadowTarget]> = response
            .shadows
            .into_iter()
            .map(ShadowTarget::from)
            .collect();
        let answer = Answer::new(
            response.routing_key,
            ObjectiveConfig::from(config),
            shadows,
            response.rule_set_version,
        )
        .map_err(|_| Failed::Invalid("routing key is not a valid header value"))?;
        let answer = Arc::new(answer);
        let ttl = Duration::from_millis(response.cache_ttl_ms).min(inner.max_ttl);
        let entry = Arc::new(Entry {
            key,
            answer: answer.clone(),
            ttl,
            expires_at: Instant::now() + ttl,
        });
        // A zero TTL means "do not cache"; the answer is still the best one to serve if
        // Lightbulb goes away, so it becomes the last known good either way.
        if !ttl.is_zero() {
            inner.fresh.insert(fingerprint, entry.clone());
        }
        inner.last_good.insert(fingerprint, entry);
        Ok(answer)
    }

    fn fall_back<C: AsContext + ?Sized>(
        &self,
        fingerprint: u64,
        ctx: &C,
        attempts: u32,
        code: Code,
        message: String,
    ) -> Result<Resolved, ClientError> {
        let inner = &*self.inner;
        if let Some(entry) = inner.last_good.get(&fingerprint)
            && entry.key.matches(ctx)
        {
            Counters::incr(&inner.stats.last_known_good);
            tracing::debug!(
                objective = ctx.objective(),
                attempts,
                ?code,
                %message,
                "lightbulb unavailable, serving the last known good answer"
            );
            return Ok(Resolved::new(entry.answer.clone(), Source::LastKnownGood));
        }
        if let Some(answer) = inner.static_defaults.get(ctx.objective()) {
            Counters::incr(&inner.stats.static_defaults);
            tracing::debug!(
                objective = ctx.objective(),
                attempts,
                ?code,
                %message,
                "lightbulb unavailable, serving the static default"
            );
            return Ok(Resolved::new(answer.clone(), Source::StaticDefault));
        }
        Counters::incr(&inner.stats.errors);
        Err(ClientError::Unavailable {
            objective: ctx.objective().to_owned(),
            attempts,
            code,
            message,
        })
    }

    /// `Resolver.Resolve` with retries: up to `attempts` tries within the deadline, each on
    /// the preferred endpoint, which moves on after each retryable failure.
    async fn fetch(&self, request: pb::ResolveRequest) -> Result<pb::ResolveResponse, Failed> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.deadline;
        let endpoints = inner.endpoints.len();
        let mut backoffs = 0u32;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let index = inner.preferred.load(Ordering::Relaxed) % endpoints;
            let mut client = inner.endpoints[index].1.clone();
            let mut grpc_request = tonic::Request::new(request.clone());
            // Tells Lightbulb the budget too (`grpc-timeout`), so it can give up in time.
            grpc_request.set_timeout(remaining);
            Counters::incr(&inner.stats.rpcs);
            let last = match tokio::time::timeout(remaining, client.resolve(grpc_request)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if !is_retryable(status.code()) => {
                    return Err(Failed::Rejected {
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => Status::new(
                    Code::DeadlineExceeded,
                    format!("no answer within {:?}", inner.deadline),
                ),
            };
            tracing::debug!(
                endpoint = &*inner.endpoints[index].0,
                attempt,
                error = %last,
                "lightbulb resolve attempt failed"
            );
            // Fail over: whoever sees the failure first moves every caller to the next
            // endpoint; a concurrent caller that already moved it wins.
            let _ = inner.preferred.compare_exchange(
                index,
                (index + 1) % endpoints,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if attempt >= inner.attempts {
                return Err(Failed::exhausted(attempt, &last));
            }
            // The first retries go to endpoints not yet tried in this call, at once; after
            // that, wait.
            if attempt >= endpoints as u32 {
                let wait = self.backoff(backoffs);
                backoffs += 1;
                if Instant::now() + wait >= deadline {
                    return Err(Failed::exhausted(attempt, &last));
                }
                tokio::time::sleep(wait).await;
            } else if Instant::now() >= deadline {
                return Err(Failed::exhausted(attempt, &last));
            }
            Counters::incr(&inner.stats.retries);
        }
    }

    /// The `n`-th backoff wait (from 0): `min(max, base * 2^n)`, jittered uniformly over
    /// its upper half so that clients that failed together do not retry together.
    fn backoff(&self, n: u32) -> Duration {
        let inner = &*self.inner;
        let exp = inner
            .backoff_base
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(inner.backoff_max);
        let half = exp / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=jitter_nanos))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let endpoints: Vec<&str> = inner.endpoints.iter().map(|(uri, _)| &**uri).collect();
        f.debug_struct("Client")
            .field("endpoints", &endpoints)
            .field("cached_entries", &inner.fresh.entry_count())
            .field("last_known_good_entries", &inner.last_good.entry_count())
            .field("static_defaults", &inner.static_defaults.len())
            .field("max_ttl", &inner.max_ttl)
            .field("deadline", &inner.deadline)
            .field("attempts", &inner.attempts)
            .field("routing_header", inner.routing_header.name())
            .field("stats", &inner.stats.snapshot())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestContext;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_max_with_jitter_in_the_upper_half() {
        let client = Client::builder(["http://127.0.0.1:1"])
            .backoff(ms(10), ms(80))
            .build()
            .expect("valid config");
        for (n, full) in [(0, 10), (1, 20), (2, 40), (3, 80), (4, 80), (40, 80)] {
            for _ in 0..50 {
                let wait = client.backoff(n);
                assert!(
                    wait >= ms(full) / 2 && wait <= ms(full),
                    "wait {n}: {wait:?}, full {full} ms"
                );
            }
        }
    }

    #[tokio::test]
    async fn invalid_configs_are_build_errors() {
        let no_endpoints = Client::builder(Vec::<String>::new()).build();
        assert!(matches!(no_endpoints, Err(BuildError::NoEndpoints)));

        let bad_uri = Client::builder(["not a uri"]).build();
        assert!(matches!(bad_uri, Err(BuildError::InvalidEndpoint { .. })));

        let bad_default = Client::builder(["http://127.0.0.1:1"])
            .static_default("Ranking", "has space", ObjectiveConfig::default())
            .build();
        let err = bad_default.expect_err("invalid routing key");
        assert!(err.to_string().contains("\"Ranking\""), "{err}");

        let zero = Client::builder(["http://127.0.0.1:1"])
            .deadline(Duration::ZERO)
            .build();
        assert!(matches!(zero, Err(BuildError::ZeroDeadline(_))));
    }

    #[tokio::test]
    async fn an_https_endpoint_needs_a_readable_ca_file() {
        let no_ca = Client::builder(["http://127.0.0.1:1", "https://127.0.0.1:2"]).build();
        let err = no_ca.expect_err("https without a CA");
        assert!(matches!(err, BuildError::HttpsWithoutCa { .. }), "{err:?}");
        assert!(err.to_string().contains("https://127.0.0.1:2"), "{err}");

        let missing = Client::builder(["https://127.0.0.1:2"])
            .tls_ca_file("/nonexistent/ca.pem")
            .build();
        let err = missing.expect_err("an unreadable CA file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

        let plain = Client::builder(["http://127.0.0.1:1"]).build();
        assert!(plain.is_ok());
    }

    #[tokio::test]
    async fn cached_misses_without_counting_or_connecting() {
        let client = Client::builder(["http://127.0.0.1:1"])
            .build()
            .expect("valid config");
        assert!(client.cached(&RequestContext::new("Ranking")).is_none());
        assert_eq!(client.stats(), Stats::default());
        assert!(format!("{client:?}").contains("127.0.0.1:1"));
    }
}
