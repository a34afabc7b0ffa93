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
//! The resolution cache, the gRPC server (health, reflection, shutdown), the config API and
//! store, and the binary build on these.
#![warn(missing_docs, unreachable_pub)]

pub mod allocation;
pub mod error;
pub mod grpc;
pub mod objective;
pub mod resolve;

pub use error::{ErrorCode, ResolveError};
pub use grpc::{ResolverService, RoutingConfigService};
pub use objective::{ExperimentCell, ObjectiveConfig, ShadowTarget};
pub use resolve::{CacheKey, Engine, RequestContext, Resolution};
