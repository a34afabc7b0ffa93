//! Following the rule-set file: polled, re-read when it changes, applied whole or not at all.
//!
//! The file is polled through [`models_config::follow::FileFollower`], which notices an
//! atomic rename-into-place too and yields nothing when the content did not change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use models_config::follow::FileFollower;
use tokio_util::sync::CancellationToken;

use crate::state::{ConfigSource, Shared};

/// Watches `path` every `interval` until `shutdown`, applying each new content to `shared`.
/// An invalid file is logged with every problem and the current table is kept.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    follow_file(path, "config file", interval, shutdown, |path, content| {
        reload_bytes(&shared, path, content);
    })
    .await;
}

/// Polls the file `path` (a `what`, for the logs) every `interval` until `shutdown` and hands
/// each new content to `on_change`; the content at the start counts as seen. The one loop
/// behind the rule-set file and the JWKS file.
pub async fn follow_file(
    path: PathBuf,
    what: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    mut on_change: impl FnMut(&Path, &[u8]),
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
            Ok(Some(content)) => on_change(follower.path(), &content),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %follower.path().display(), error = %e, "cannot read the {what}; keeping what is in force");
            }
        }
    }
}

/// Parses, validates and applies `content` read from `path`, logging the outcome.
pub fn reload_bytes(shared: &Shared, path: &Path, content: &[u8]) {
    match models_config::parse_slice(content) {
        Ok(rule_set) => {
            shared.apply(rule_set, ConfigSource::File);
        }
        Err(e) => {
            crate::metrics::record_reload(false);
            for issue in e.issues() {
                tracing::error!(path = %path.display(), at = %issue.path, "config rejected: {}", issue.message);
            }
            tracing::error!(path = %path.display(), "config rejected; keeping the current routes");
        }
    }
}
