//! Who may change the rules: bearer tokens from `--api-token-file` and
//! `LIGHTBULB_API_TOKEN`, compared in constant time ([`Token::matches`], `subtle`).
//!
//! A token never reaches a log line, an error or a `Debug` output: only its name does. A
//! token file that others than its owner may read is accepted with a warning naming the
//! file and its mode.

use std::fmt;
use std::path::Path;

use service_runtime::secret::Token;

/// The tokens allowed to change the rules, each with a name used in logs and history.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(String, Token)>,
}

/// Why the token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("token file {path}, line {line}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: &'static str,
    },
}

// === impl Tokens ===

impl Tokens {
    /// Reads `name:token` lines (blank lines and `#` comments skipped), or a single bare
    /// token, named `default`. A file that others than its owner may read is accepted, with
    /// a warning naming it (`chmod 600` it).
    ///
    /// # Errors
    ///
    /// When the file cannot be read, or a line has an empty name or token.
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if let Some(mode) = service_runtime::secret::loose_mode(path) {
            tracing::warn!(
                file = %path.display(),
                mode = format_args!("{mode:04o}"),
                "token file is readable by others than its owner; chmod 600 it"
            );
        }
        Self::parse(&text).map_err(|(line, message)| TokenError::Malformed {
            path: path.display().to_string(),
            line,
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut tokens = Tokens::default();
        if let [(_, only)] = lines.as_slice()
            && !only.contains(':')
        {
            tokens.add("default", only);
            return Ok(tokens);
        }
        for (n, line) in lines {
            let Some((name, token)) = line.split_once(':') else {
                return Err((n, "expected `name:token`"));
            };
            let (name, token) = (name.trim(), token.trim());
            if name.is_empty() || token.is_empty() {
                return Err((n, "empty name or token"));
            }
            tokens.add(name, token);
        }
        Ok(tokens)
    }

    /// Adds a token (surrounding whitespace removed); an empty one is ignored.
    pub fn add(&mut self, name: &str, token: &str) {
        if let Some(token) = Token::new(token) {
            self.tokens.push((name.to_owned(), token));
        }
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The name of the token `presented` is. Every token is compared, each in constant time
    /// (time that depends only on the lengths), so the answer's timing does not tell which
    /// token, or how much of one, matched.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.tokens {
            if token.matches(presented) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

impl fmt::Debug for Tokens {
    /// The names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tokens_and_a_bare_token_are_read() {
        let tokens = Tokens::parse("# admins\nalice:s3cret\n\nbob: other \n").unwrap();
        assert_eq!(tokens.check(b"s3cret"), Some("alice"));
        assert_eq!(tokens.check(b"other"), Some("bob"));
        assert_eq!(tokens.check(b"s3cre"), None);
        assert_eq!(tokens.check(b""), None);
        let bare = Tokens::parse("justatoken\n").unwrap();
        assert_eq!(bare.check(b"justatoken"), Some("default"));
        assert_eq!(format!("{bare:?}"), r#"["default"]"#);
    }

    #[test]
    fn whole_tokens_match_and_never_print() {
        let tokens = Tokens::parse("alice:s3cret\n").unwrap();
        assert_eq!(tokens.check(b"s3cret"), Some("alice"));
        assert_eq!(tokens.check(b"s3cret "), None);
        assert_eq!(tokens.check(b"s3cretx"), None);
        assert!(!format!("{tokens:?}").contains("s3cret"));
        let mut empty = Tokens::default();
        empty.add("env", "  ");
        assert!(empty.is_empty(), "a blank token is ignored");
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_may_read_is_accepted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice:s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(service_runtime::secret::loose_mode(&path), None);
        assert!(Tokens::read_file(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(service_runtime::secret::loose_mode(&path), Some(0o644));
        let tokens = Tokens::read_file(&path).unwrap();
        assert_eq!(tokens.check(b"s3cret"), Some("alice"));
    }

    #[test]
    fn errors_name_the_file_and_line_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice:s3cret\nbob-s3cret\n").unwrap();
        let error = Tokens::read_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("tokens") && error.contains("line 2"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(Tokens::parse("a:b\nnocolon\n").unwrap_err().0, 2);
        assert!(Tokens::parse(":token").is_err());
        assert!(Tokens::parse("name:").is_err());
        assert!(Tokens::parse("").unwrap().is_empty());
    }
}
