//! The answer's domain types: the [`ObjectiveConfig`] a client passes to the selected model,
//! and the [`ShadowTarget`]s that receive sampled copies.
//!
//! Every string is an `Arc<str>` taken from the compiled rule set, and the maps are shared
//! `Arc`s, so building an answer copies no text.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The selected model of an objective and everything the client passes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveConfig {
    /// The objective that was resolved.
    pub objective: Arc<str>,
    /// Id of the selected model.
    pub model_id: Arc<str>,
    /// Version of the selected model (empty when the rule set gives none).
    pub model_version: Arc<str>,
    /// The experiment cell that took part in the match: set when the matching rule has an
    /// experiment condition, `None` for rules without one and for the default model.
    pub experiment: Option<ExperimentCell>,
    /// The input type the model expects, e.g. `triton_v2` (empty when the rule set gives
    /// none).
    pub input_type: Arc<str>,
    /// Parameters the client passes to the model.
    pub parameters: Arc<BTreeMap<String, String>>,
    /// Free-form metadata of the model.
    pub metadata: Arc<BTreeMap<String, String>>,
}

/// An experiment and the cell the subject is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentCell {
    /// The experiment id.
    pub experiment: Arc<str>,
    /// The cell (explicitly allocated by the request, or hashed from the subject id).
    pub cell: Arc<str>,
}

/// A model that receives a sampled copy of an objective's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowTarget {
    /// Id of the shadow model.
    pub model_id: Arc<str>,
    /// Its routing key.
    pub routing_key: Arc<str>,
    /// Share of requests mirrored to it, in percent, 0 to 100.
    pub sample_percent: f64,
}
