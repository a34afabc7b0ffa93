//! The etcd store (`--store etcd://HOST:PORT[,HOST:PORT...]`), shared by every Lightbulb
//! replica pointed at the same etcd cluster and prefix.
//!
//! # Layout
//!
//! Under `--etcd-prefix` (default `/lightbulb`):
//!
//! - `{prefix}/versions/{version:020}`: one version, the same JSON document the directory
//!   store writes to `v{version:020}.json`;
//! - `{prefix}/current`: the current version number, in decimal.
//!
//! # Writes
//!
//! A put is one etcd transaction: if `{prefix}/current` still holds the expected version,
//! put `{prefix}/versions/{expected + 1}` and set `{prefix}/current` to it; otherwise read
//! `{prefix}/current` back and report a conflict (409 in the API). So two replicas writing at
//! once never both succeed on the same version, and no accepted change is lost. After a
//! successful put, versions beyond `--history` are deleted (one range delete, best effort:
//! a failure is logged and the next put deletes them).
//!
//! An empty prefix is seeded from `--config` as version 1 in a transaction guarded by
//! `{prefix}/current` being absent, so replicas starting together seed it once.
//!
//! # Propagation
//!
//! [`EtcdStore::follow`] watches `{prefix}/current` from the revision read at startup. Each
//! change loads that version and hands it to a callback (the config API, which puts it in
//! force through [`Reloader::apply_if_newer`](crate::reload::Reloader::apply_if_newer):
//! versions only move forward, so the replica that wrote a version and its own watch can both
//! apply it, in either order). When the watch fails (etcd restarted, connection lost, the
//! start revision compacted), it is re-established with backoff after re-reading the current
//! version, so a change made meanwhile is not missed.
//!
//! # Threads
//!
//! The etcd client runs on a small runtime of its own, on a dedicated thread, so the
//! synchronous [`Store`] methods can wait for it from anywhere (from an async handler through
//! `block_in_place`), and dropping the store never drops a runtime inside another one.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use models_config::ValidRuleSet;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Snapshot, Store, StoreError, VersionInfo};

/// How long one etcd call may take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait before re-establishing a failed watch.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The versioned rule store in etcd (see the module docs).
pub struct EtcdStore {
    client: Client,
    prefix: String,
    history: u64,
    /// The current version as last seen (by a put, a conflict or the watch).
    current: Arc<Mutex<Snapshot>>,
    /// The etcd revision at which `current` was read at startup: the watch starts after it.
    revision: i64,
    runtime: RuntimeThread,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("history", &self.history)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// The metadata of a stored version, without parsing its rules.
#[derive(Debug, Deserialize)]
struct Meta {
    version: u64,
    written_at_unix_ms: u64,
    who: String,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects to `endpoints` (`HOST:PORT` or `http://HOST:PORT`) and opens the store under
    /// `prefix`, keeping at most `history` versions. When the prefix holds no current
    /// version, `seed` (if given) is stored as version 1 by `seed`.
    ///
    /// # Errors
    ///
    /// When etcd cannot be reached, the current version cannot be read, or the prefix is
    /// empty and there is no seed ([`StoreError::Empty`]).
    pub fn open(
        endpoints: &[String],
        prefix: &str,
        history: usize,
        seed: Option<ValidRuleSet>,
    ) -> Result<Self, StoreError> {
        let runtime = RuntimeThread::start()?;
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let prefix = prefix.trim_end_matches('/').to_owned();
        let (client, current, revision) = runtime.wait({
            let prefix = prefix.clone();
            async move {
                let options = ConnectOptions::new()
                    .with_connect_timeout(CALL_TIMEOUT)
                    .with_timeout(CALL_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
                let client =
                    timed("cannot connect", Client::connect(endpoints, Some(options))).await?;
                let keys = Keys { prefix: &prefix };
                if let Some(rules) = seed {
                    let rules = rules.with_version(1);
                    let snapshot = Snapshot {
                        info: VersionInfo {
                            version: 1,
                            written_at_unix_ms: store::now_ms(),
                            who: "seed".to_owned(),
                        },
                        rules,
                    };
                    let txn = Txn::new()
                        .when([Compare::version(keys.current(), CompareOp::Equal, 0)])
                        .and_then([
                            TxnOp::put(keys.version(1), store::encode_version(&snapshot)?, None),
                            TxnOp::put(keys.current(), "1", None),
                        ]);
                    let seeded = timed("cannot seed", client.kv_client().txn(txn)).await?;
                    if seeded.succeeded() {
                        tracing::info!(prefix, "seeded an empty etcd store as version 1");
                    }
                }
                let (current, revision) = read_current(&client, &prefix).await?;
                Ok::<_, StoreError>((client, current, revision))
            }
        })??;
        Ok(EtcdStore {
            client,
            prefix,
            history: u64::try_from(history.max(1)).unwrap_or(u64::MAX),
            current: Arc::new(Mutex::new(current)),
            revision,
            runtime,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Follows `{prefix}/current` until `stop`, calling `on_change` with every version that
    /// becomes current (possibly more than once, and possibly with a version the caller
    /// already has: it must ignore versions that are not newer).
    pub fn follow(
        &self,
        stop: CancellationToken,
        on_change: impl Fn(Snapshot) + Send + Sync + 'static,
    ) {
        let follower = Follower {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            current: Arc::clone(&self.current),
            on_change: Box::new(on_change),
        };
        let start = self.revision + 1;
        self.runtime.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = follower.run(start) => {}
            }
        });
    }

    /// Remembers `snapshot` as current if it is newer than what is remembered.
    fn remember(&self, snapshot: &Snapshot) {
        remember(&self.current, snapshot);
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime.wait(fut)?
    }
}

impl Store for EtcdStore {
    fn current(&self) -> Snapshot {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn put(&self, expected: u64, rules: ValidRuleSet, who: &str) -> Result<Snapshot, StoreError> {
        let version = expected + 1;
        let rules = rules.with_version(version);
        let snapshot = Snapshot {
            info: VersionInfo {
                version,
                written_at_unix_ms: store::now_ms(),
                who: who.to_owned(),
            },
            rules,
        };
        let document = store::encode_version(&snapshot)?;
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let history = self.history;
        let outcome = self.call(async move {
            let keys = Keys { prefix: &prefix };
            let txn = Txn::new()
                .when([Compare::value(
                    keys.current(),
                    CompareOp::Equal,
                    expected.to_string(),
                )])
                .and_then([
                    TxnOp::put(keys.version(version), document, None),
                    TxnOp::put(keys.current(), version.to_string(), None),
                ])
                .or_else([TxnOp::get(keys.current(), None)]);
            let answer = timed("cannot write", client.kv_client().txn(txn)).await?;
            if !answer.succeeded() {
                let current = answer
                    .op_responses()
                    .into_iter()
                    .find_map(|op| match op {
                        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                        _ => None,
                    })
                    .map(|value| parse_current(&value))
                    .transpose()?
                    .unwrap_or(0);
                // Catch up now rather than when the watch delivers it, so the caller's
                // next read sees the version that won.
                let newer = load(&client, &prefix, current).await.ok().flatten();
                return Ok(Err((current, newer)));
            }
            // Keep versions (version - history, version]: delete every older key.
            if let Some(oldest_kept) = (version + 1).checked_sub(history).filter(|&v| v > 1) {
                let range = DeleteOptions::new().with_range(keys.version(oldest_kept));
                let deleted = timed(
                    "cannot delete old versions",
                    client.kv_client().delete(keys.versions(), Some(range)),
                )
                .await;
                if let Err(e) = deleted {
                    tracing::warn!(error = %e, "cannot delete old versions; the next write retries");
                }
            }
            Ok(Ok(()))
        })?;
        match outcome {
            Ok(()) => {
                self.remember(&snapshot);
                Ok(snapshot)
            }
            Err((current, newer)) => {
                if let Some(newer) = newer {
                    self.remember(&newer);
                }
                Err(StoreError::Conflict { expected, current })
            }
        }
    }

    fn history(&self) -> Vec<VersionInfo> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let listed = self.call(async move {
            let keys = Keys { prefix: &prefix };
            let options = GetOptions::new().with_prefix();
            let answer = timed(
                "cannot list versions",
                client.kv_client().get(keys.versions(), Some(options)),
            )
            .await?;
            let mut versions = Vec::new();
            for kv in answer.kvs() {
                match serde_json::from_slice::<Meta>(kv.value()) {
                    Ok(meta) => versions.push(VersionInfo {
                        version: meta.version,
                        written_at_unix_ms: meta.written_at_unix_ms,
                        who: meta.who,
                    }),
                    Err(e) => {
                        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping an unreadable version");
                    }
                }
            }
            Ok(versions)
        });
        match listed {
            Ok(mut versions) => {
                versions.sort_unstable_by_key(|v| std::cmp::Reverse(v.version));
                versions
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the versions in etcd; listing the current one only");
                vec![self.current().info]
            }
        }
    }

    fn get(&self, version: u64) -> Result<Option<Snapshot>, StoreError> {
        {
            let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.info.version == version {
                return Ok(Some(current.clone()));
            }
        }
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        self.call(async move { load(&client, &prefix, version).await })
    }
}

/// What follows `{prefix}/current` (see [`EtcdStore::follow`]).
struct Follower {
    client: Client,
    prefix: String,
    current: Arc<Mutex<Snapshot>>,
    on_change: Box<dyn Fn(Snapshot) + Send + Sync>,
}

impl Follower {
    /// Watches from `start`, re-establishing the watch forever.
    async fn run(self, mut start: i64) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.watch(&mut start, &mut backoff).await {
                Ok(()) => tracing::warn!(
                    prefix = self.prefix,
                    "the etcd watch ended; re-establishing it"
                ),
                Err(e) => {
                    tracing::warn!(prefix = self.prefix, error = %e, "the etcd watch failed; re-establishing it")
                }
            }
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // Whatever happened while not watching: read the current version again.
                match read_current(&self.client, &self.prefix).await {
                    Ok((snapshot, revision)) => {
                        self.changed(snapshot);
                        start = revision + 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(prefix = self.prefix, error = %e, "cannot read the current version from etcd");
                    }
                }
            }
        }
    }

    /// One watch from `*start`, advancing it past every event handled, and resetting
    /// `backoff` once etcd answered. Returns when the stream ends or fails.
    async fn watch(&self, start: &mut i64, backoff: &mut Duration) -> Result<(), StoreError> {
        let keys = Keys {
            prefix: &self.prefix,
        };
        let options = WatchOptions::new().with_start_revision(*start);
        let mut stream = timed(
            "cannot watch",
            self.client
                .watch_client()
                .watch(keys.current(), Some(options)),
        )
        .await?;
        loop {
            let message = stream.message().await.map_err(|e| StoreError::Etcd {
                what: "watch",
                message: e.to_string(),
            })?;
            let Some(message) = message else {
                return Ok(());
            };
            *backoff = BACKOFF_MIN;
            if message.canceled() {
                return Err(StoreError::Etcd {
                    what: "watch",
                    message: format!(
                        "cancelled by etcd (compacted to revision {}): {}",
                        message.compact_revision(),
                        message.cancel_reason()
                    ),
                });
            }
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                *start = (*start).max(kv.mod_revision() + 1);
                if event.event_type() != EventType::Put {
                    tracing::warn!(
                        prefix = self.prefix,
                        "the current version key was deleted in etcd; keeping the running rules"
                    );
                    continue;
                }
                let version = match parse_current(kv.value()) {
                    Ok(version) => version,
                    Err(e) => {
                        tracing::error!(error = %e, "keeping the running rules");
                        continue;
                    }
                };
                match load(&self.client, &self.prefix, version).await {
                    Ok(Some(snapshot)) => self.changed(snapshot),
                    // Already superseded and pruned: a later event brings the newer one.
                    Ok(None) => {
                        tracing::debug!(version, "a version from the watch is no longer kept");
                    }
                    // Start over from the current version (after a backoff).
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn changed(&self, snapshot: Snapshot) {
        remember(&self.current, &snapshot);
        (self.on_change)(snapshot);
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The keys under a prefix.
#[derive(Debug, Clone, Copy)]
struct Keys<'a> {
    prefix: &'a str,
}

impl Keys<'_> {
    fn current(self) -> String {
        format!("{}/current", self.prefix)
    }

    fn versions(self) -> String {
        format!("{}/versions/", self.prefix)
    }

    fn version(self, version: u64) -> String {
        format!("{}/versions/{version:020}", self.prefix)
    }
}

fn remember(current: &Mutex<Snapshot>, snapshot: &Snapshot) {
    let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
    if snapshot.info.version > current.info.version {
        *current = snapshot.clone();
    }
}

fn parse_current(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| StoreError::Etcd {
            what: "the current version key",
            message: format!(
                "{:?} is not a version number",
                String::from_utf8_lossy(value)
            ),
        })
}

/// The current version and the etcd revision it was read at.
async fn read_current(client: &Client, prefix: &str) -> Result<(Snapshot, i64), StoreError> {
    let keys = Keys { prefix };
    let answer = timed("cannot read", client.kv_client().get(keys.current(), None)).await?;
    let revision = answer.header().map_or(0, |h| h.revision());
    let Some(kv) = answer.kvs().first() else {
        return Err(StoreError::Empty);
    };
    let version = parse_current(kv.value())?;
    let snapshot = load(client, prefix, version)
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            version,
            message: format!("{} is missing", keys.version(version)),
        })?;
    Ok((snapshot, revision))
}

/// One stored version, `None` when it is not kept.
async fn load(client: &Client, prefix: &str, version: u64) -> Result<Option<Snapshot>, StoreError> {
    let keys = Keys { prefix };
    let answer = timed(
        "cannot read",
        client.kv_client().get(keys.version(version), None),
    )
    .await?;
    answer
        .kvs()
        .first()
        .map(|kv| store::decode_version(kv.value(), version))
        .transpose()
}

/// Awaits an etcd call with [`CALL_TIMEOUT`], turning its failure into a [`StoreError`].
async fn timed<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(StoreError::Etcd {
            what,
            message: e.to_string(),
        }),
        Err(_) => Err(StoreError::Etcd {
            what,
            message: format!("no answer within {CALL_TIMEOUT:?}"),
        }),
    }
}

/// A current-thread runtime on a thread of its own, stopped when dropped.
#[derive(Debug)]
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RuntimeThread {
    fn start() -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                what: "cannot start its runtime",
                message: e.to_string(),
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("lightbulb-etcd".to_owned())
            .spawn(move || {
                // Ends when the sender is dropped (or sends).
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| StoreError::Etcd {
                what: "cannot start its thread",
                message: e.to_string(),
            })?;
        Ok(RuntimeThread {
            handle,
            _stop: stop,
        })
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        drop(self.handle.spawn(fut));
    }

    /// Runs `fut` on this runtime and blocks until it completes (inside a multi-threaded
    /// runtime, through `block_in_place`). Never call it from this runtime's own thread.
    fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let receive = move || rx.recv();
        let received = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(receive)
            }
            _ => receive(),
        };
        received.map_err(|_| StoreError::Etcd {
            what: "the etcd runtime",
            message: "stopped".to_owned(),
        })
    }
}
