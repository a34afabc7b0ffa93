//! Following the rule-set file: polled, re-read when it changes, applied whole or not at all.
//!
//! Polling (a `stat` per interval) works on every filesystem, including the atomic
//! rename-into-place that config managers and Kubernetes ConfigMaps use. A change is
//! detected by modification time, size and inode, then confirmed by content, so touching the
//! file without changing it applies nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::state::Shared;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Watches `path` every `interval` until `shutdown`, applying each new content to `shared`.
/// An invalid file is logged with every problem and the current table is kept.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut last_stamp = stamp(&path);
    let mut last_content = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let content = match tokio::fs::read(&path).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read config file; keeping the current routes");
                continue;
            }
        };
        if last_content.as_deref() == Some(&content[..]) {
            continue;
        }
        last_content = Some(content.clone());
        reload_bytes(&shared, &path, &content);
    }
}

/// Parses, validates and applies `content` read from `path`, logging the outcome.
pub fn reload_bytes(shared: &Shared, path: &Path, content: &[u8]) {
    match models_config::parse_slice(content) {
        Ok(rule_set) => {
            if let Err(e) = shared.apply(rule_set) {
                tracing::error!(path = %path.display(), "config rejected; keeping the current routes: {e}");
            }
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
