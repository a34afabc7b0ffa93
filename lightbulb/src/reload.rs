//! Following the rule-set file: polled, re-read when it changes, applied whole or not at all.
//!
//! The file is polled through [`models_config::follow::FileFollower`], which notices an
//! atomic rename-into-place too and yields nothing when the content did not change.
//!
//! Applying a rule set ([`Reloader::apply`]), in order:
//!
//! 1. parse and validate it (models-config), then compile an [`Engine`]: any failure is
//!    logged with every problem, counted as `lightbulb_config_reloads_total{result="error"}`,
//!    and the running rules stay;
//! 2. swap the engine in (`ArcSwap::store`): calls that start from now on use it;
//! 3. drop every cached resolution;
//! 4. publish the rule set on the watch channel behind `RoutingConfig.Watch`, so every
//!    connected router gets the new snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use models_config::ValidRuleSet;
use models_config::follow::FileFollower;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::ResolveCache;
use crate::resolve::Engine;

/// Everything a new rule set replaces: the engine, the cache, the published rule set.
///
/// Owned by the file watcher; dropping it closes the watch channel, which ends every
/// `RoutingConfig.Watch` stream (that is how shutdown ends them).
#[derive(Debug)]
pub struct Reloader {
    engine: Arc<ArcSwap<Engine>>,
    cache: Arc<ResolveCache>,
    rules: watch::Sender<ValidRuleSet>,
}

// === impl Reloader ===

impl Reloader {
    /// A reloader over the running engine, its cache, and the sender of the rule sets.
    pub fn new(
        engine: Arc<ArcSwap<Engine>>,
        cache: Arc<ResolveCache>,
        rules: watch::Sender<ValidRuleSet>,
    ) -> Self {
        Self {
            engine,
            cache,
            rules,
        }
    }

    /// Compiles `rules` (validated once, when parsed or loaded) and puts them in force (see
    /// the module docs), returning the version.
    pub fn apply(&self, rules: ValidRuleSet) -> u64 {
        let engine = Engine::new(&rules);
        let version = engine.version();
        self.engine.store(Arc::new(engine));
        self.cache.invalidate_all();
        self.rules.send_replace(rules);
        crate::metrics::record_version(version);
        version
    }

    /// The version of the rule set in force.
    pub fn version(&self) -> u64 {
        self.rules.borrow().version
    }

    /// Like [`Reloader::apply`], but only when `rules` is newer than the rule set in force;
    /// returns `None` (and changes nothing) otherwise. A versioned store's versions only move
    /// forward, so with several paths to the same version (the API write and the store's
    /// watch) each version is put in force once, and never replaced by an older one.
    pub fn apply_if_newer(&self, rules: ValidRuleSet) -> Option<u64> {
        if rules.version <= self.version() {
            return None;
        }
        Some(self.apply(rules))
    }
}

/// Watches `path` every `interval` until `shutdown`, applying each new content through
/// `reloader`. An invalid file is logged with every problem and the current rules are kept.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    reloader: Reloader,
    shutdown: CancellationToken,
) {
    let mut follower = FileFollower::new(path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match follower.check() {
            Ok(Some(content)) => {
                reload_bytes(&reloader, follower.path(), &content);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %follower.path().display(), error = %e, "cannot read the rule-set file; keeping the current rules");
            }
        }
    }
}

/// Parses, validates and applies `content` read from `path`, logging and counting the
/// outcome. Returns whether the new rules are in force.
pub fn reload_bytes(reloader: &Reloader, path: &Path, content: &[u8]) -> bool {
    let issues = match models_config::parse_slice(content) {
        Ok(rules) => {
            let version = reloader.apply(rules);
            crate::metrics::record_reload(true);
            tracing::info!(path = %path.display(), version, "rule set reloaded");
            return true;
        }
        Err(e) => e.issues(),
    };
    for issue in &issues {
        tracing::error!(path = %path.display(), at = %issue.path, "rule set rejected: {}", issue.message);
    }
    tracing::error!(path = %path.display(), problems = issues.len(), "rule set rejected; keeping the current rules");
    crate::metrics::record_reload(false);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(default: &str) -> serde_json::Value {
        serde_json::json!({
            "clusters": { "c": { "endpoints": ["127.0.0.1:9001"] } },
            "routes": { "a": { "cluster": "c" }, "b": { "cluster": "c" } },
            "models": {
                "a": { "routing_key": "a" },
                "b": { "routing_key": "b" }
            },
            "objectives": { "O": { "default": default } }
        })
    }

    fn reloader() -> (
        Reloader,
        Arc<ArcSwap<Engine>>,
        watch::Receiver<ValidRuleSet>,
    ) {
        let first = models_config::parse(&rules("a").to_string()).unwrap();
        let engine = Arc::new(ArcSwap::from_pointee(Engine::new(&first)));
        let (tx, rx) = watch::channel(first);
        let cache = Arc::new(ResolveCache::new(10, Duration::from_secs(60)));
        (Reloader::new(Arc::clone(&engine), cache, tx), engine, rx)
    }

    fn answer(engine: &ArcSwap<Engine>) -> String {
        let ctx = crate::RequestContext {
            objective: "O".to_owned(),
            ..Default::default()
        };
        engine.load().resolve(&ctx).unwrap().routing_key.to_string()
    }

    #[test]
    fn a_valid_file_swaps_the_engine_and_publishes_the_rules() {
        let (reloader, engine, mut rx) = reloader();
        let mut next = rules("b");
        next["version"] = 7.into();
        assert!(reload_bytes(
            &reloader,
            Path::new("r.json"),
            next.to_string().as_bytes()
        ));
        assert_eq!(answer(&engine), "b");
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().version, 7);
    }

    #[test]
    fn only_a_newer_version_is_applied_if_newer() {
        let (reloader, engine, rx) = reloader();
        let next = models_config::parse(&rules("b").to_string())
            .unwrap()
            .with_version(3);
        assert_eq!(reloader.apply_if_newer(next.clone()), Some(3));
        assert_eq!(reloader.apply_if_newer(next.clone()), None);
        let older = models_config::parse(&rules("a").to_string())
            .unwrap()
            .with_version(2);
        assert_eq!(reloader.apply_if_newer(older), None);
        assert_eq!(answer(&engine), "b");
        assert_eq!(rx.borrow().version, 3);
    }

    #[test]
    fn an_invalid_file_keeps_the_running_rules() {
        let (reloader, engine, rx) = reloader();
        let mut bad = rules("b");
        bad["objectives"]["O"]["default"] = "missing".into();
        assert!(!reload_bytes(
            &reloader,
            Path::new("r.json"),
            bad.to_string().as_bytes()
        ));
        assert!(!reload_bytes(&reloader, Path::new("r.json"), b"{ not json"));
        assert_eq!(answer(&engine), "a");
        assert!(!rx.has_changed().unwrap());
    }
}
