//! The versioned rule store: every accepted change is a new version, kept on disk.
//!
//! [`Store`] is what the config API needs from a store (the current version, a
//! compare-and-swap put, the history, one old version), so an etcd store can take the place
//! of [`DirStore`], the embedded one.
//!
//! # The directory store
//!
//! `DIR/v{version:020}.json` holds one version: `{"version", "written_at_unix_ms", "who",
//! "rules"}`. A write goes to a temp file in `DIR` (`.tmp-v….json`), is fsynced, renamed into
//! place and the directory fsynced, so after a crash a version file is either complete or
//! absent; a version is acknowledged only after all of that. Then versions beyond the
//! history bound are deleted, oldest first.
//!
//! The directory is locked (`DIR/.lock`, an exclusive advisory lock held while the store is
//! open), so a second process on it refuses to start. On open, leftover temp files are deleted, every version file is read, and the highest one
//! that parses and validates is current (a file that does not is skipped with a warning).
//! Writes are serialised by one mutex and compare the expected current version first.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use models_config::ValidRuleSet;
use models_config::spec::RuleSet;
use serde::{Deserialize, Serialize};

/// Prefix of the temp files a write goes through.
const TEMP_PREFIX: &str = ".tmp-";
/// The file locked (exclusively, for the life of the store) so two processes never share a
/// directory.
const LOCK_FILE: &str = ".lock";

/// When and by whom a version was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version (also the rule set's `version`).
    pub version: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub written_at_unix_ms: u64,
    /// Who stored it: the API token's name, `anonymous` without auth, `seed` for the first.
    pub who: String,
}

/// One stored version: its metadata and its rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When and by whom.
    pub info: VersionInfo,
    /// The rule set (validated when it was accepted or read back), whose `version` is
    /// `info.version`.
    pub rules: ValidRuleSet,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The expected version is not the current one.
    #[error("version {expected} is not the current version {current}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// What is current.
        current: u64,
    },
    /// The store could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored version could not be read back.
    #[error("stored version {version} is unreadable: {message}")]
    Corrupt {
        /// The version.
        version: u64,
        /// What is wrong with it.
        message: String,
    },
    /// Another process has the directory open.
    #[error("{} is in use by another process", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The etcd store could not be reached, or answered something unexpected.
    #[error("etcd: {what}: {message}")]
    Etcd {
        /// What was being done.
        what: &'static str,
        /// The cause.
        message: String,
    },
    /// The store is empty and there is nothing to seed it with.
    #[error("the store is empty")]
    Empty,
}

/// What the config API needs from a versioned rule store.
pub trait Store: Send + Sync + fmt::Debug {
    /// The current version.
    fn current(&self) -> Snapshot;

    /// Stores `rules` as a new version (assigned by the store, and written into the rule
    /// set's `version`) if `expected` is still the current version, and returns it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when another version is current; I/O errors, after which
    /// nothing changed.
    fn put(&self, expected: u64, rules: ValidRuleSet, who: &str) -> Result<Snapshot, StoreError>;

    /// The versions kept, newest first.
    fn history(&self) -> Vec<VersionInfo>;

    /// One kept version, `None` when it is not (or no longer) kept.
    ///
    /// # Errors
    ///
    /// When it is kept but cannot be read.
    fn get(&self, version: u64) -> Result<Option<Snapshot>, StoreError>;
}

/// The on-disk form of one version (also the value of an etcd version key).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    version: u64,
    written_at_unix_ms: u64,
    who: String,
    rules: RuleSet,
}

/// The embedded store: a directory of version files (see the module docs).
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    history: usize,
    state: Mutex<State>,
    /// Holds the exclusive lock on `DIR/.lock` (released when dropped, or by the kernel when
    /// the process dies).
    _lock: File,
}

#[derive(Debug)]
struct State {
    current: Snapshot,
    /// Every readable version kept, by version.
    kept: BTreeMap<u64, VersionInfo>,
    /// Higher than every version file seen, readable or not.
    next: u64,
}

// === impl DirStore ===

impl DirStore {
    /// Opens (creating it if needed) the store in `dir`, keeping at most `history` versions.
    /// When it holds no readable version, `seed` (if given) is stored as version 1 by
    /// `seed`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read or written, or is empty and there is no seed.
    pub fn open(
        dir: &Path,
        history: usize,
        seed: Option<ValidRuleSet>,
    ) -> Result<Self, StoreError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { what, path, source }
        };
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
            // Make the new directory's entry durable too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io("cannot sync", parent))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("cannot open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", &lock_path)(e)),
        }
        let mut kept = BTreeMap::new();
        let mut highest = 0;
        let mut current: Option<Snapshot> = None;
        let mut versions = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("cannot list", dir))? {
            let entry = entry.map_err(io("cannot list", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                tracing::info!(file = %name, "deleting a leftover temp file");
                fs::remove_file(entry.path()).map_err(io("cannot delete", &entry.path()))?;
            } else if let Some(version) = parse_file_name(&name) {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        for &version in versions.iter().rev() {
            highest = highest.max(version);
            let path = dir.join(file_name(version));
            match read_version(&path, version) {
                Ok(snapshot) => {
                    kept.insert(version, snapshot.info.clone());
                    if current.is_none() {
                        current = Some(snapshot);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable version");
                }
            }
        }
        let current = match current {
            Some(current) => current,
            None => {
                let version = highest + 1;
                let rules = seed.ok_or(StoreError::Empty)?.with_version(version);
                let info = VersionInfo {
                    version,
                    written_at_unix_ms: now_ms(),
                    who: "seed".to_owned(),
                };
                let snapshot = Snapshot { info, rules };
                write_version(dir, &snapshot)?;
                kept.insert(version, snapshot.info.clone());
                highest = version;
                snapshot
            }
        };
        let store = DirStore {
            dir: dir.to_owned(),
            history: history.max(1),
            state: Mutex::new(State {
                current,
                kept,
                next: highest + 1,
            }),
            _lock: lock,
        };
        store.prune(&mut store.lock());
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the oldest versions beyond the bound. A failure is logged: the version was
    /// stored, and the next write tries again.
    fn prune(&self, state: &mut State) {
        while state.kept.len() > self.history {
            let Some((&oldest, _)) = state.kept.first_key_value() else {
                break;
            };
            let path = self.dir.join(file_name(oldest));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an old version");
                    return;
                }
            }
            state.kept.remove(&oldest);
        }
    }
}

impl Store for DirStore {
    fn current(&self) -> Snapshot {
        self.lock().current.clone()
    }

    fn put(&self, expected: u64, rules: ValidRuleSet, who: &str) -> Result<Snapshot, StoreError> {
        let mut state = self.lock();
        let current = state.current.info.version;
        if expected != current {
            return Err(StoreError::Conflict { expected, current });
        }
        let version = state.next;
        let rules = rules.with_version(version);
        let snapshot = Snapshot {
            info: VersionInfo {
                version,
                written_at_unix_ms: now_ms(),
                who: who.to_owned(),
            },
            rules,
        };
        write_version(&self.dir, &snapshot)?;
        state.next = version + 1;
        state.kept.insert(version, snapshot.info.clone());
        state.current = snapshot.clone();
        self.prune(&mut state);
        Ok(snapshot)
    }

    fn history(&self) -> Vec<VersionInfo> {
        self.lock().kept.values().rev().cloned().collect()
    }

    fn get(&self, version: u64) -> Result<Option<Snapshot>, StoreError> {
        {
            let state = self.lock();
            if state.current.info.version == version {
                return Ok(Some(state.current.clone()));
            }
            if !state.kept.contains_key(&version) {
                return Ok(None);
            }
        }
        let path = self.dir.join(file_name(version));
        match read_version(&path, version) {
            Ok(snapshot) => Ok(Some(snapshot)),
            // Pruned since the check.
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

// === helpers ===

/// `v{version:020}.json`.
fn file_name(version: u64) -> String {
    format!("v{version:020}.json")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads and checks one version file.
fn read_version(path: &Path, version: u64) -> Result<Snapshot, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io {
        what: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    decode_version(&bytes, version)
}

/// Parses and checks one stored version document (a version file, or an etcd version key's
/// value) that should hold `version`.
pub(crate) fn decode_version(bytes: &[u8], version: u64) -> Result<Snapshot, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt { version, message };
    let file: VersionFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != version || file.rules.version != version {
        return Err(corrupt(format!(
            "it says version {} (rules {})",
            file.version, file.rules.version
        )));
    }
    let rules = ValidRuleSet::new(file.rules).map_err(|errors| corrupt(errors.to_string()))?;
    Ok(Snapshot {
        info: VersionInfo {
            version,
            written_at_unix_ms: file.written_at_unix_ms,
            who: file.who,
        },
        rules,
    })
}

/// The stored document of one version.
pub(crate) fn encode_version(snapshot: &Snapshot) -> Result<Vec<u8>, StoreError> {
    let version = snapshot.info.version;
    let file = VersionFile {
        version,
        written_at_unix_ms: snapshot.info.written_at_unix_ms,
        who: snapshot.info.who.clone(),
        rules: RuleSet::clone(&snapshot.rules),
    };
    serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Corrupt {
        version,
        message: e.to_string(),
    })
}

/// Writes one version atomically: temp file, fsync, rename, fsync of the directory.
fn write_version(dir: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    let version = snapshot.info.version;
    let name = file_name(version);
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let path = dir.join(&name);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { what, path, source }
    };
    let bytes = encode_version(snapshot)?;
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("cannot rename into", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync", dir))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(model_version: &str) -> ValidRuleSet {
        models_config::parse(
            &serde_json::json!({
                "clusters": { "c": { "endpoints": ["127.0.0.1:9001"] } },
                "routes": { "r": { "cluster": "c" } },
                "models": { "m": { "routing_key": "r", "version": model_version } },
                "objectives": { "O": { "default": "m" } }
            })
            .to_string(),
        )
        .unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_empty_store_is_seeded_as_version_1_and_each_put_is_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), 10, Some(rules("a"))).unwrap();
        assert_eq!(store.current().info.version, 1);
        assert_eq!(store.current().rules.version, 1);
        assert_eq!(store.current().info.who, "seed");
        let two = store.put(1, rules("b"), "alice").unwrap();
        assert_eq!(two.info.version, 2);
        assert_eq!(two.rules.version, 2);
        assert_eq!(
            files(dir.path()),
            [LOCK_FILE.to_owned(), file_name(1), file_name(2)],
            "no temp file is left behind"
        );
        let read = read_version(&dir.path().join(file_name(2)), 2).unwrap();
        assert_eq!(read, two);
        assert_eq!(
            store.get(1).unwrap().unwrap().rules.models["m"].version,
            "a"
        );
        assert_eq!(store.get(9).unwrap(), None);
        let history: Vec<_> = store.history().iter().map(|v| v.version).collect();
        assert_eq!(history, [2, 1]);
    }

    #[test]
    fn a_stale_expected_version_is_a_conflict_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), 10, Some(rules("a"))).unwrap();
        store.put(1, rules("b"), "alice").unwrap();
        let err = store.put(1, rules("c"), "bob").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    current: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.current().rules.models["m"].version, "b");
        assert_eq!(files(dir.path()).len(), 3);
    }

    #[test]
    fn old_versions_beyond_the_bound_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), 3, Some(rules("0"))).unwrap();
        for i in 1..=5 {
            store.put(i, rules(&i.to_string()), "alice").unwrap();
        }
        assert_eq!(
            files(dir.path()),
            [
                LOCK_FILE.to_owned(),
                file_name(4),
                file_name(5),
                file_name(6)
            ]
        );
        assert_eq!(store.get(3).unwrap(), None);
        assert_eq!(
            store.get(4).unwrap().unwrap().rules.models["m"].version,
            "3"
        );
        assert_eq!(store.history().len(), 3);
    }

    #[test]
    fn reopening_picks_the_latest_version_and_ignores_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DirStore::open(dir.path(), 10, Some(rules("a"))).unwrap();
            store.put(1, rules("b"), "alice").unwrap();
            store.put(2, rules("c"), "alice").unwrap();
        }
        let store = DirStore::open(dir.path(), 10, Some(rules("seed"))).unwrap();
        let current = store.current();
        assert_eq!(current.info.version, 3);
        assert_eq!(current.info.who, "alice");
        assert_eq!(current.rules.models["m"].version, "c");
        assert_eq!(store.put(3, rules("d"), "bob").unwrap().info.version, 4);
    }

    #[test]
    fn temp_files_are_deleted_and_unreadable_versions_skipped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DirStore::open(dir.path(), 10, Some(rules("a"))).unwrap();
            store.put(1, rules("b"), "alice").unwrap();
        }
        fs::write(
            dir.path().join(format!("{TEMP_PREFIX}{}", file_name(3))),
            "{ half",
        )
        .unwrap();
        fs::write(dir.path().join(file_name(3)), "not json").unwrap();
        let store = DirStore::open(dir.path(), 10, None).unwrap();
        assert_eq!(store.current().info.version, 2);
        assert!(
            !files(dir.path()).iter().any(|f| f.starts_with(TEMP_PREFIX)),
            "{:?}",
            files(dir.path())
        );
        // The next version does not reuse the unreadable file's number.
        assert_eq!(store.put(2, rules("c"), "bob").unwrap().info.version, 4);
    }

    #[test]
    fn a_directory_in_use_does_not_open_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), 10, Some(rules("a"))).unwrap();
        assert!(matches!(
            DirStore::open(dir.path(), 10, None),
            Err(StoreError::Locked { .. })
        ));
        drop(store);
        assert_eq!(
            DirStore::open(dir.path(), 10, None)
                .unwrap()
                .current()
                .info
                .version,
            1
        );
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let store = DirStore::open(&nested, 10, Some(rules("a"))).unwrap();
        assert_eq!(store.dir(), nested);
        assert!(nested.join(file_name(1)).exists());
    }

    #[test]
    fn an_empty_store_without_a_seed_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            DirStore::open(dir.path(), 10, None),
            Err(StoreError::Empty)
        ));
    }

    #[test]
    fn only_version_file_names_are_versions() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("v42.json"), None);
        assert_eq!(parse_file_name(".tmp-v00000000000000000042.json"), None);
        assert_eq!(parse_file_name("v0000000000000000004x.json"), None);
    }
}
