//! Who may change the rules: bearer tokens from `--api-token-file` and
//! `LIGHTBULB_API_TOKEN`, compared in constant time.

use std::fmt;
use std::path::Path;

/// The tokens allowed to change the rules, each with a name used in logs and history.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(String, Vec<u8>)>,
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
    /// token, named `default`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, or a line has an empty name or token.
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?;
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

    /// Adds a token.
    pub fn add(&mut self, name: &str, token: &str) {
        self.tokens
            .push((name.to_owned(), token.as_bytes().to_vec()));
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The name of the token `presented` is, comparing it with every token in constant time
    /// (for tokens of one length).
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.tokens {
            if constant_time_eq(token, presented) && found.is_none() {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn malformed_lines_are_refused() {
        assert_eq!(Tokens::parse("a:b\nnocolon\n").unwrap_err().0, 2);
        assert!(Tokens::parse(":token").is_err());
        assert!(Tokens::parse("name:").is_err());
        assert!(Tokens::parse("").unwrap().is_empty());
    }
}
