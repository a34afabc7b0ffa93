//! The Rust client library of Lightbulb: asks "which model serves this request?", caches
//! the answer, and keeps answering when Lightbulb is down.
//!
//! A client service resolves its request context (objective, tenant, subject, attributes,
//! explicit experiment allocations, traffic class) to a routing key and an
//! [`ObjectiveConfig`], stamps the routing key on its request as `x-routing-key`, puts the
//! config in its own request body, and sends the request through the router:
//!
//! ```text
//! Client::resolve(ctx)
//!   1. fresh cache hit (same context, within the TTL Lightbulb gave)  → Source::Cached   (no RPC, < 1 µs)
//!   2. Resolver.Resolve on Lightbulb (concurrent misses of one context
//!      share one RPC), retries + backoff + failover between endpoints,
//!      all within the deadline                                         → Source::Fresh    (cached, kept as last known good)
//!         └ NOT_FOUND / INVALID_ARGUMENT / ... (a real answer)         → Err(ClientError::Rejected)
//!   3. Lightbulb unavailable: last known good answer for the context  → Source::LastKnownGood
//!   4. else the objective's static default                            → Source::StaticDefault
//!   5. else                                                           → Err(ClientError::Unavailable)
//! stamp(&resolved, &mut request)   // x-routing-key: <routing key>
//! ```
//!
//! Lightbulb is therefore never a single point of failure for a service that has resolved a
//! context before (or configured a static default): while it is unreachable, requests keep
//! flowing with the last answer it gave. Rejections are never masked: an unknown objective is
//! a configuration error that stale data would hide.
//!
//! # Usage
//!
//! ```no_run
//! use lightbulb_client::{Client, ObjectiveConfig, RequestContext, Source};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // One client per process; clones share the cache and the connections.
//! let client = Client::builder(["http://10.0.0.1:50051", "http://10.0.0.2:50051"])
//!     .deadline(std::time::Duration::from_millis(200))
//!     .static_default(
//!         "ContinueWatchingRanking",
//!         "ranker-v1",
//!         ObjectiveConfig {
//!             objective: "ContinueWatchingRanking".into(),
//!             model_id: "ranker-v1".into(),
//!             ..ObjectiveConfig::default()
//!         },
//!     )
//!     .build()?;
//!
//! let ctx = RequestContext::new("ContinueWatchingRanking")
//!     .with_subject("user-42")
//!     .with_attribute("country", "CA");
//! let resolved = client.resolve(&ctx).await?;
//! if resolved.source().is_fallback() {
//!     // Lightbulb is unreachable; the answer is the last known good or the static default.
//! }
//!
//! let mut request = http::Request::post("http://router:8080/v1/models/infer")
//!     .body(format!("{{\"model\":{:?}}}", resolved.config().model_id))?;
//! lightbulb_client::stamp(&resolved, &mut request);
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! - [`Client`] / [`Builder`]: the cache (moka, keyed on a fingerprint of the full context,
//!   each entry expiring after its own TTL), the last-known-good map (bounded, no expiry),
//!   static defaults, the RPC with retries.
//! - [`RequestContext`] / [`AsContext`]: what is resolved; the proto `ResolveRequest` works
//!   too, and hits the same cache entries.
//! - [`Resolved`], [`Source`], [`ObjectiveConfig`], [`ShadowTarget`]: the answer.
//! - [`stamp`], [`set_routing_header`], [`stamp_grpc`], [`RoutingHeader`]: the routing
//!   header on outgoing HTTP and gRPC requests.
//! - [`Stats`]: counters (hits, misses, RPCs, retries, fallbacks, errors), without any
//!   metrics recorder.
//! - [`ClientError`], [`BuildError`], [`is_retryable`]: errors and their classification.
#![warn(missing_docs, unreachable_pub)]

mod client;
mod context;
mod error;
mod header;
mod key;
mod resolved;
mod stats;

pub use client::{
    Builder, Client, DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX,
    DEFAULT_CACHE_CAPACITY, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE,
    DEFAULT_LAST_KNOWN_GOOD_CAPACITY, DEFAULT_MAX_TTL,
};
pub use context::{AsContext, RequestContext, TrafficClass};
pub use error::{BuildError, ClientError, is_retryable};
pub use header::{ROUTING_KEY, RoutingHeader, set_routing_header, stamp, stamp_grpc};
pub use resolved::{ExperimentCell, ObjectiveConfig, Resolved, ShadowTarget, Source};
pub use stats::Stats;

/// The generated proto types this crate speaks (`lightbulb.v1`), re-exported so callers can
/// pass a `ResolveRequest` without depending on `routing-proto` themselves.
pub use routing_proto::lightbulb::v1 as proto;
