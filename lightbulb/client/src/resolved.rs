//! The answer of a resolution: [`Resolved`] (what the caller gets), its [`Source`], and the
//! domain types it carries ([`ObjectiveConfig`], [`ShadowTarget`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;
use routing_proto::lightbulb::v1 as pb;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// Where a [`Resolved`] answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Lightbulb answered this call.
    Fresh,
    /// From the local cache, within the TTL Lightbulb gave; no RPC was made.
    Cached,
    /// Lightbulb could not be reached (or kept failing) within the deadline; this is the
    /// last answer it gave for the same context, however old.
    LastKnownGood,
    /// Lightbulb could not be reached and it never answered this context; this is the
    /// static default configured for the objective
    /// ([`Builder::static_default`](crate::Builder::static_default)).
    StaticDefault,
}

impl Source {
    /// A short lowercase name (`"fresh"`, `"cached"`, `"last_known_good"`,
    /// `"static_default"`), e.g. for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fresh => "fresh",
            Source::Cached => "cached",
            Source::LastKnownGood => "last_known_good",
            Source::StaticDefault => "static_default",
        }
    }

    /// Whether the answer is a fallback (last known good or static default), i.e. Lightbulb
    /// was not reachable for this call.
    pub fn is_fallback(self) -> bool {
        matches!(self, Source::LastKnownGood | Source::StaticDefault)
    }
}

/// The selected model of an objective and everything the caller passes to it (in its own
/// request body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectiveConfig {
    /// The objective that was resolved.
    pub objective: String,
    /// Id of the selected model.
    pub model_id: String,
    /// Version of the selected model; empty when the rule set gives none.
    pub model_version: String,
    /// The experiment (and cell) whose condition selected the model, if any.
    pub experiment: Option<ExperimentCell>,
    /// The input type the model expects, e.g. `triton_v2` or `openai_chat`; may be empty.
    pub input_type: String,
    /// Parameters to pass to the model.
    pub parameters: BTreeMap<String, String>,
    /// Free-form metadata of the model.
    pub metadata: BTreeMap<String, String>,
}

/// An experiment and the cell the subject is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExperimentCell {
    /// The experiment id.
    pub experiment: String,
    /// The cell.
    pub cell: String,
}

/// A model that should receive a sampled shadow copy of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowTarget {
    /// Id of the shadow model.
    pub model_id: String,
    /// Its routing key.
    pub routing_key: String,
    /// Share of requests to mirror, in percent (0 to 100).
    pub sample_percent: f64,
}

impl From<pb::ObjectiveConfig> for ObjectiveConfig {
    fn from(c: pb::ObjectiveConfig) -> Self {
        let experiment = if c.experiment_id.is_empty() {
            None
        } else {
            Some(ExperimentCell {
                experiment: c.experiment_id,
                cell: c.experiment_cell,
            })
        };
        Self {
            objective: c.objective,
            model_id: c.model_id,
            model_version: c.model_version,
            experiment,
            input_type: c.input_type,
            parameters: c.parameters.into_iter().collect(),
            metadata: c.metadata.into_iter().collect(),
        }
    }
}

impl From<pb::ShadowTarget> for ShadowTarget {
    fn from(s: pb::ShadowTarget) -> Self {
        Self {
            model_id: s.model_id,
            routing_key: s.routing_key,
            sample_percent: s.sample_percent,
        }
    }
}

/// One answer, shared by the cache, the last-known-good map and every [`Resolved`] handed
/// out for it. The header and metadata values are built once, when the answer arrives, so
/// stamping a request copies no string.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) routing_key: Box<str>,
    pub(crate) header_value: HeaderValue,
    pub(crate) metadata_value: AsciiMetadataValue,
    pub(crate) config: ObjectiveConfig,
    pub(crate) shadows: Box<[ShadowTarget]>,
    pub(crate) rule_set_version: u64,
}

/// A routing key that cannot be sent as a header value.
#[derive(Debug)]
pub(crate) struct InvalidRoutingKey;

impl Answer {
    pub(crate) fn new(
        routing_key: String,
        config: ObjectiveConfig,
        shadows: Box<[ShadowTarget]>,
        rule_set_version: u64,
    ) -> Result<Self, InvalidRoutingKey> {
        // Visible ASCII only: what both an HTTP header value and gRPC ASCII metadata accept,
        // and what models-config allows in a routing key.
        if routing_key.is_empty() || !routing_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidRoutingKey);
        }
        let header_value = HeaderValue::from_str(&routing_key).map_err(|_| InvalidRoutingKey)?;
        let metadata_value =
            MetadataValue::try_from(routing_key.as_str()).map_err(|_| InvalidRoutingKey)?;
        Ok(Self {
            routing_key: routing_key.into_boxed_str(),
            header_value,
            metadata_value,
            config,
            shadows,
            rule_set_version,
        })
    }
}

/// The answer of [`Client::resolve`](crate::Client::resolve): the routing key to send in
/// `x-routing-key`, the [`ObjectiveConfig`] to pass to the model, the shadow targets, the
/// rule-set version, and where the answer came from.
///
/// Cheap to clone (one reference count); answers for the same context share their data.
#[derive(Debug, Clone)]
pub struct Resolved {
    answer: Arc<Answer>,
    source: Source,
}

impl Resolved {
    pub(crate) fn new(answer: Arc<Answer>, source: Source) -> Self {
        Self { answer, source }
    }

    /// The routing key of the selected model, for the router's `x-routing-key` header.
    pub fn routing_key(&self) -> &str {
        &self.answer.routing_key
    }

    /// The routing key as a prebuilt header value (cloning it copies no bytes).
    pub fn routing_key_header(&self) -> &HeaderValue {
        &self.answer.header_value
    }

    /// The routing key as prebuilt gRPC metadata.
    pub fn routing_key_metadata(&self) -> &AsciiMetadataValue {
        &self.answer.metadata_value
    }

    /// The selected model and what to pass to it.
    pub fn config(&self) -> &ObjectiveConfig {
        &self.answer.config
    }

    /// Models that should receive a sampled shadow copy (possibly none).
    pub fn shadows(&self) -> &[ShadowTarget] {
        &self.answer.shadows
    }

    /// Version of the rule set that produced the answer; `0` for a
    /// [`Source::StaticDefault`].
    pub fn rule_set_version(&self) -> u64 {
        self.answer.rule_set_version
    }

    /// Where the answer came from.
    pub fn source(&self) -> Source {
        self.source
    }
}
