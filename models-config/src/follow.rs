//! Following a rule-set file: a cheap check for a new content, for consumers that poll.
//!
//! Polling (a `stat` per check) works on every filesystem, including the atomic
//! rename-into-place that config managers and Kubernetes ConfigMaps use. A change is noticed
//! by modification time, size and inode, then confirmed by content, so touching the file
//! without changing it yields nothing. The router and Lightbulb both drive one of these from
//! a timer and apply what it yields.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a `stat` says about the file; equal stamps mean "unchanged", without a read.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Remembers the last content seen of one file and reports when it changes.
#[derive(Debug)]
pub struct FileFollower {
    path: PathBuf,
    stamp: Option<Stamp>,
    content: Option<Vec<u8>>,
}

impl FileFollower {
    /// Starts following `path`, taking its current content as already seen.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileFollower {
            stamp: stamp(&path),
            content: std::fs::read(&path).ok(),
            path,
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once: `Ok(Some(content))` when its content differs from the last one
    /// seen (which it then becomes), `Ok(None)` when it does not.
    ///
    /// # Errors
    ///
    /// When the file changed but cannot be read; the next check tries again.
    pub fn check(&mut self) -> io::Result<Option<Vec<u8>>> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return Ok(None);
        }
        let content = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                // Forget the stamp so the next check reads again.
                self.stamp = None;
                return Err(e);
            }
        };
        self.stamp = now;
        if self.content.as_deref() == Some(&content[..]) {
            return Ok(None);
        }
        self.content = Some(content.clone());
        Ok(Some(content))
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_new_content_once_and_ignores_a_rewrite_of_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("follow-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.json");
        std::fs::write(&path, b"one").unwrap();
        let mut follower = FileFollower::new(&path);
        assert_eq!(
            follower.check().unwrap(),
            None,
            "the first content counts as seen"
        );

        // A rename into place, as config managers do, with a new content.
        let tmp = dir.join("rules.json.tmp");
        std::fs::write(&tmp, b"two, longer").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            follower.check().unwrap().as_deref(),
            Some(&b"two, longer"[..])
        );
        assert_eq!(follower.check().unwrap(), None);

        // The same bytes again (a new inode): nothing to apply.
        std::fs::write(&tmp, b"two, longer").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(follower.check().unwrap(), None);

        std::fs::remove_file(&path).unwrap();
        assert!(follower.check().is_err(), "a vanished file is an error");
        std::fs::write(&path, b"three").unwrap();
        assert_eq!(follower.check().unwrap().as_deref(), Some(&b"three"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
