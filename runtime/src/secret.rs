//! Secrets: bearer tokens read from files and compared in constant time.
//!
//! A token is never logged, never put in an error and never shown by `Debug`: [`Token`]
//! prints as `Token(<redacted>)`.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// A bearer token.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token file was not usable. The token itself is never part of it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("token file {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
}

// === impl Token ===

impl Token {
    /// A token from its text (leading and trailing whitespace removed); `None` when empty.
    #[must_use]
    pub fn new(text: &str) -> Option<Self> {
        let trimmed = text.trim();
        (!trimmed.is_empty()).then(|| Self(trimmed.as_bytes().into()))
    }

    /// Reads a token file. A file that others than its owner can read is accepted with a
    /// warning naming the file and its mode.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is empty.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        if let Some(mode) = loose_mode(path) {
            tracing::warn!(
                file = %shown,
                mode = format_args!("{mode:04o}"),
                "token file is readable by others than its owner; chmod 600 it"
            );
        }
        Self::new(&text).ok_or(TokenFileError::Empty { path: shown })
    }

    /// Whether `presented` is this token, in time that depends only on the lengths.
    #[must_use]
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    #[must_use]
    pub fn matches_bearer(&self, authorization: Option<&[u8]>) -> bool {
        bearer(authorization).is_some_and(|t| self.matches(t))
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
#[must_use]
pub fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let value = authorization?;
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// The permission bits of `path` when its group or others may read it (a secret file
/// should be readable by its owner only).
#[cfg(unix)]
#[must_use]
pub fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

/// Always `None` where permission bits do not exist.
#[cfg(not(unix))]
#[must_use]
pub fn loose_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_never_print() {
        let token = Token::new(" s3cret\n").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret2"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(Token::new("  \n").is_none());
    }

    #[test]
    fn bearer_headers_are_read_case_insensitively() {
        let token = Token::new("abc").unwrap();
        assert!(token.matches_bearer(Some(b"Bearer abc")));
        assert!(token.matches_bearer(Some(b"bearer abc")));
        assert!(!token.matches_bearer(Some(b"Basic abc")));
        assert!(!token.matches_bearer(Some(b"Bearer")));
        assert!(!token.matches_bearer(None));
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_files_pass_and_loose_ones_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(loose_mode(&path), None);
        assert!(Token::from_file(&path).unwrap().matches(b"abc"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&path), Some(0o644));
        assert!(Token::from_file(&path).unwrap().matches(b"abc"));
        let error = Token::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
