//! The server-side resolution cache: moka in front of [`Engine::resolve`].
//!
//! # Keys
//!
//! An entry is keyed on the engine that computed it and on [`Engine::cache_key`] of the
//! context — exactly the inputs rule evaluation reads, so contexts that differ only in what
//! the rules ignore share one entry, and contexts that differ in anything the rules read
//! never do. [`CacheKey`] already carries the rule-set version; the engine identity is
//! there too because a hand-written file may keep version `0` across edits, and a resolve
//! racing a reload must not file an old answer under the new rules. The key holds the
//! engine's `Arc`, so an engine's address cannot be reused while an entry names it.
//!
//! A new rule set also drops every entry at once ([`ResolveCache::invalidate_all`]), so old
//! engines are freed soon after a swap rather than when their entries expire.
//!
//! # Misses
//!
//! Concurrent misses for one key are coalesced (`try_get_with`): one caller evaluates the
//! rules, the others wait for its answer. Errors are not cached.
//!
//! # Cost
//!
//! Building a key clones the strings the rules read (attributes, tenant, subject id) and
//! hashes them; evaluating the rules of a small objective costs about as much. The cache
//! pays off for objectives with many rules or large value lists, and it keeps the answer
//! `Arc`-shared so a hit allocates nothing beyond the key. `--cache-capacity 0` turns it off
//! for rule sets where it does not (see benches/ for the measurements).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;

use crate::error::ResolveError;
use crate::metrics::{CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, record_resolve};
use crate::resolve::{CacheKey, Engine, RequestContext, Resolution};

/// Resolutions by (engine, [`CacheKey`]), with a size bound and a TTL; or nothing, when
/// disabled.
#[derive(Debug)]
pub struct ResolveCache {
    entries: Option<moka::sync::Cache<Key, Arc<Resolution>>>,
    hits: Counter,
    misses: Counter,
}

/// An entry's key: which engine, which inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    engine: EngineId,
    inputs: CacheKey,
}

/// An engine compared and hashed by identity.
#[derive(Debug, Clone)]
struct EngineId(Arc<Engine>);

// === impl ResolveCache ===

impl ResolveCache {
    /// A cache of at most `capacity` resolutions, each kept for `ttl`. A zero capacity or
    /// TTL gives a [disabled](ResolveCache::disabled) cache.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let entries = (capacity > 0 && !ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        Self {
            entries,
            hits: metrics::counter!(CACHE_HITS_TOTAL),
            misses: metrics::counter!(CACHE_MISSES_TOTAL),
        }
    }

    /// A cache that holds nothing: every resolve evaluates the rules (and counts as a miss).
    pub fn disabled() -> Self {
        Self::new(0, Duration::ZERO)
    }

    /// Whether entries are kept at all.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The answer for `ctx` under `engine`: from the cache, or by evaluating the rules and
    /// filling the cache.
    ///
    /// # Errors
    ///
    /// As [`Engine::resolve`].
    pub fn get_or_resolve(
        &self,
        engine: &Arc<Engine>,
        ctx: &RequestContext,
    ) -> Result<Arc<Resolution>, ResolveError> {
        let Some(entries) = &self.entries else {
            self.misses.increment(1);
            return engine.resolve(ctx).map(Arc::new);
        };
        let key = Key {
            engine: EngineId(Arc::clone(engine)),
            inputs: engine.cache_key(ctx)?,
        };
        let mut missed = false;
        let answer = entries
            .try_get_with(key, || {
                missed = true;
                engine.resolve(ctx).map(Arc::new)
            })
            .map_err(|err| ResolveError::clone(&err));
        if missed {
            self.misses.increment(1);
        } else {
            self.hits.increment(1);
        }
        answer
    }

    /// [`ResolveCache::get_or_resolve`], timed and counted in `lightbulb_resolves_total` and
    /// `lightbulb_resolve_duration_seconds`. The gRPC and HTTP APIs both answer through this.
    ///
    /// # Errors
    ///
    /// As [`Engine::resolve`].
    pub fn resolve(
        &self,
        engine: &Arc<Engine>,
        ctx: &RequestContext,
    ) -> Result<Arc<Resolution>, ResolveError> {
        let started = Instant::now();
        let answer = self.get_or_resolve(engine, ctx);
        record_resolve(engine, &ctx.objective, answer.as_deref(), started.elapsed());
        answer
    }

    /// Drops every entry; called when a new rule set is swapped in.
    pub fn invalidate_all(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }

    /// Entries held, approximately (moka applies writes lazily).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }
}

// === impl EngineId ===

impl PartialEq for EngineId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for EngineId {}

impl Hash for EngineId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(default: &str) -> Arc<Engine> {
        let rules = models_config::parse(
            &serde_json::json!({
                "clusters": { "c": { "endpoints": ["127.0.0.1:9001"] } },
                "routes": { "a": { "cluster": "c" }, "b": { "cluster": "c" } },
                "models": {
                    "a": { "routing_key": "a", "version": "1" },
                    "b": { "routing_key": "b", "version": "1" }
                },
                "objectives": {
                    "O": {
                        "rules": [
                            { "when": { "attributes": { "country": ["CA"] } }, "model": "b" }
                        ],
                        "default": default
                    }
                }
            })
            .to_string(),
        )
        .expect("a valid rule set");
        Arc::new(Engine::new(&rules))
    }

    fn ctx(country: &str, subject: &str) -> RequestContext {
        RequestContext {
            objective: "O".to_owned(),
            subject_id: Some(subject.to_owned()),
            attributes: [("country".to_owned(), country.to_owned())].into(),
            ..RequestContext::default()
        }
    }

    #[test]
    fn equal_keys_share_an_entry_and_unread_inputs_do_not_split_it() {
        let cache = ResolveCache::new(100, Duration::from_secs(60));
        let e = engine("a");
        let first = cache.get_or_resolve(&e, &ctx("US", "s1")).unwrap();
        // The subject id is not read by these rules, so this is the same entry.
        let second = cache.get_or_resolve(&e, &ctx("US", "s2")).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other = cache.get_or_resolve(&e, &ctx("CA", "s1")).unwrap();
        assert_eq!(&*other.routing_key, "b");
        assert_eq!(cache.entry_count(), 2);
    }

    #[test]
    fn a_new_engine_with_the_same_version_never_sees_old_answers() {
        let cache = ResolveCache::new(100, Duration::from_secs(60));
        let old = engine("a");
        let new = engine("b");
        assert_eq!(old.version(), new.version());
        assert_eq!(
            &*cache
                .get_or_resolve(&old, &ctx("US", "s"))
                .unwrap()
                .routing_key,
            "a"
        );
        // No invalidation on purpose: the engine identity alone keeps the answers apart.
        assert_eq!(
            &*cache
                .get_or_resolve(&new, &ctx("US", "s"))
                .unwrap()
                .routing_key,
            "b"
        );
        cache.invalidate_all();
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn errors_are_returned_and_not_cached() {
        let cache = ResolveCache::new(100, Duration::from_secs(60));
        let e = engine("a");
        let unknown = RequestContext {
            objective: "Nope".to_owned(),
            ..RequestContext::default()
        };
        assert!(matches!(
            cache.get_or_resolve(&e, &unknown),
            Err(ResolveError::UnknownObjective { .. })
        ));
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn a_disabled_cache_still_resolves() {
        let cache = ResolveCache::disabled();
        assert!(!cache.is_enabled());
        let e = engine("a");
        assert_eq!(
            &*cache
                .get_or_resolve(&e, &ctx("CA", "s"))
                .unwrap()
                .routing_key,
            "b"
        );
        assert_eq!(cache.entry_count(), 0);
    }
}
