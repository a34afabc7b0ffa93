//! What goes wrong when a rule set is read: it cannot be read, it is not a rule set, or it is
//! one with problems.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// One problem (or, among the warnings [`validate`](crate::validate()) returns, one
/// suspicious spot) in a rule set.
///
/// Displayed as `path: message`, e.g.
/// `$.routes["ranker-v2"].fallback: unknown cluster "ranker-v9"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// JSONPath-like location of the offending value: `$` is the document, `.field` a field,
    /// `["name"]` a map key (JSON-quoted), `[0]` a list index.
    pub path: String,
    /// What is wrong: lowercase, no trailing period, naming the offending datum.
    pub message: String,
}

/// Every error-level [`Issue`] found in a rule set, in document order. Never empty when
/// returned by [`validate`](crate::validate()).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<Issue>);

/// Why a rule set could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read rule set {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The document is not JSON, or not shaped like a rule set (unknown field, wrong type,
    /// missing field, duplicate key).
    #[error("cannot parse rule set: {message}")]
    Parse {
        /// serde_json's message with the JSON path of the offending value (when not the
        /// document itself) and the line and column, e.g.
        /// ``unknown field `wieght`, expected `address` or `weight` at
        /// $.clusters["a"].endpoints[0].wieght, line 3 column 42``.
        message: String,
    },
    /// The document is a rule set, but validation found problems; all of them are listed.
    #[error("invalid rule set, {count}:\n{0}", count = count_problems(.0.0.len()))]
    Invalid(ValidationErrors),
}

// === impl Issue ===

impl Issue {
    /// An issue at `path` (see [`Issue::path`] for the syntax).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

// === impl ValidationErrors ===

impl ValidationErrors {
    /// The issues, in document order.
    pub fn issues(&self) -> &[Issue] {
        &self.0
    }
}

impl fmt::Display for ValidationErrors {
    /// One issue per line, without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

// === impl ConfigError ===

impl ConfigError {
    /// The problems as a list of issues, for APIs that report them uniformly: the validation
    /// issues for [`ConfigError::Invalid`], and a single issue at path `$` for a read or
    /// parse error.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            ConfigError::Invalid(errors) => errors.0.clone(),
            ConfigError::Parse { message } => vec![Issue::new("$", message.clone())],
            ConfigError::Io { .. } => vec![Issue::new("$", self.to_string())],
        }
    }
}

impl From<ValidationErrors> for ConfigError {
    fn from(errors: ValidationErrors) -> Self {
        ConfigError::Invalid(errors)
    }
}

fn count_problems(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}
