//! The versioned rule set shared by the router and Lightbulb: its types, its validation and
//! its JSON Schema.
//!
//! A rule set reaches a consumer in two steps, and nothing acts on it before both pass:
//!
//! 1. **Parse** ([`parse`], [`parse_slice`], [`load`]): the JSON is deserialized into
//!    [`spec::RuleSet`]. Unknown fields, wrong types, missing required fields and repeated
//!    keys in any object fail here, as [`ConfigError::Parse`] with the JSON path, line and
//!    column of the first such mistake.
//! 2. **Validate** ([`validate()`]): names are well-formed, every reference resolves (route →
//!    cluster, model → route, rule → model, rule → experiment and cell), weights and
//!    percentages sum to 100, addresses, headers and limits are sane. Validation is total:
//!    it reports **every** problem as an [`Issue`] (a JSON path plus a message), in
//!    [`ConfigError::Invalid`]. A rule set that passes may still carry warnings (an
//!    unreachable rule, say); [`validate()`] returns them, the parse functions drop them.
//!
//! A caller that holds a running rule set keeps it when either step fails: both are pure and
//! never touch anything but their input.
//!
//! The checked-in `schema/models-config.schema.json` is [`json_schema()`]'s output, for
//! editors and for tools outside Rust; `examples/` holds rule sets that pass both steps.
//!
//! ```
//! let rules = models_config::parse(r#"{
//!     "clusters": { "ranker-v1": { "endpoints": ["127.0.0.1:19001"] } },
//!     "routes": { "ranker-v1": { "cluster": "ranker-v9" } }
//! }"#);
//! let err = rules.expect_err("the route names a cluster that does not exist");
//! assert_eq!(
//!     err.issues()[0].to_string(),
//!     r#"$.routes["ranker-v1"].cluster: unknown cluster "ranker-v9""#,
//! );
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod allocation;
mod error;
pub mod follow;
pub mod spec;
pub mod unique_map;
mod valid;
mod validate;

use std::fmt::Write as _;
use std::path::Path;

pub use error::{ConfigError, Issue, ValidationErrors};
pub use valid::{ValidCluster, ValidEndpoint, ValidRoute, ValidRuleSet, ValidTls};
pub use validate::validate;

use spec::RuleSet;

/// Parses a rule set from JSON text and validates it.
///
/// The result carries the warnings ([`ValidRuleSet::warnings`]) and the parsed forms
/// consumers build from, so nothing downstream validates or parses it again.
///
/// # Errors
///
/// [`ConfigError::Parse`] when the text is not a rule set, [`ConfigError::Invalid`] with
/// every problem when it is one that fails validation.
pub fn parse(json: &str) -> Result<ValidRuleSet, ConfigError> {
    parse_slice(json.as_bytes())
}

/// Parses a rule set from JSON bytes (UTF-8) and validates it, as [`parse`] does.
///
/// # Errors
///
/// As for [`parse`].
pub fn parse_slice(json: &[u8]) -> Result<ValidRuleSet, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let rules: RuleSet = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = render_path(err.path());
        ConfigError::Parse {
            message: describe_json_error(err.inner(), &path),
        }
    })?;
    // Trailing characters after the document.
    deserializer.end().map_err(|err| ConfigError::Parse {
        message: describe_json_error(&err, "$"),
    })?;
    Ok(ValidRuleSet::new(rules)?)
}

/// Reads a rule set file, parses and validates it, as [`parse`] does.
///
/// # Errors
///
/// [`ConfigError::Io`] when the file cannot be read; otherwise as for [`parse`].
pub fn load(path: &Path) -> Result<ValidRuleSet, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_slice(&bytes)
}

/// The JSON Schema (draft 2020-12) of a rule set, generated from [`spec::RuleSet`].
///
/// It describes the shape only (fields, types, defaults); the cross-references and limits are
/// [`validate()`]'s. The same document is checked in as `schema/models-config.schema.json`.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(RuleSet).to_value()
}

/// Fields of the spec whose value is a map keyed by names: the segment after one of them is
/// a key, written `["name"]`, rather than a field, written `.field`.
const MAP_FIELDS: &[&str] = &[
    "clusters",
    "routes",
    "models",
    "experiments",
    "objectives",
    "split",
    "cells",
    "attributes",
    "parameters",
    "metadata",
    "tenants",
];

/// Writes serde_path_to_error's path in the syntax of [`Issue::path`].
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let mut out = String::from("$");
    let mut next_is_key = false;
    for segment in path {
        let is_key = std::mem::take(&mut next_is_key);
        // Writing to a String cannot fail.
        let _ = match segment {
            Segment::Seq { index } => write!(out, "[{index}]"),
            Segment::Map { key } if is_key => {
                let quoted =
                    serde_json::to_string(key).expect("serializing a str to JSON cannot fail");
                write!(out, "[{quoted}]")
            }
            Segment::Map { key } => {
                next_is_key = MAP_FIELDS.contains(&key.as_str());
                write!(out, ".{key}")
            }
            Segment::Enum { variant } => write!(out, ".{variant}"),
            // A map entry whose key was not read yet (the error is in the key or between
            // entries): the map itself is the location.
            Segment::Unknown => Ok(()),
        };
    }
    out
}

/// serde_json's message, with the path put before its line and column:
/// `<message> at <path>, line L column C`.
fn describe_json_error(err: &serde_json::Error, path: &str) -> String {
    let text = err.to_string();
    if err.line() == 0 {
        return if path == "$" {
            text
        } else {
            format!("{text} at {path}")
        };
    }
    let position = format!("line {} column {}", err.line(), err.column());
    let bare = text
        .strip_suffix(&format!(" at {position}"))
        .unwrap_or(&text);
    if path == "$" {
        format!("{bare} at {position}")
    } else {
        format!("{bare} at {path}, {position}")
    }
}
