//! The rule engine: a validated rule set compiled into an [`Engine`], and
//! [`Engine::resolve`], which turns a [`RequestContext`] into a [`Resolution`].
//!
//! Pure domain logic: no I/O, no clock, no gRPC types. Resolution is a function of the
//! engine (one rule-set version) and the request alone.
//!
//! # Rules
//!
//! An objective's rules are tried in order and the first that matches selects the model; when
//! none matches, the objective's default model is selected. A rule matches when every part of
//! its `when` holds:
//!
//! - `tenants`: the request has a tenant and it is in the list;
//! - `traffic_class`: the request's class is this one;
//! - `attributes`: for each listed attribute the request carries it, with one of the listed
//!   values (a missing attribute does not match);
//! - `experiment` + `cell`: the subject is in that cell. The cell is the request's explicit
//!   allocation for the experiment when it has one, otherwise the subject id hashed with the
//!   experiment's salt ([`crate::allocation`]). Without either, the rule **does not match**:
//!   a request without a subject id is in no cell.
//!
//! A rule with a `split` picks one of its models by hashing the subject id with the
//! objective name, so a subject keeps its model while the weights stay the same. A request
//! without a subject id cannot be placed, so a split rule **does not match** it either, and
//! evaluation moves on to the next rule (finally the default). Hence every request for a
//! known objective resolves to some model, and no error of class
//! [`ErrorCode::FailedPrecondition`](crate::error::ErrorCode::FailedPrecondition) arises.
//!
//! An empty tenant or subject id (`Some("")`) counts as absent, as the empty proto3 string
//! does.
//!
//! # Caching
//!
//! [`Engine::cache_key`] returns exactly the inputs that resolving a context of that
//! objective can read. Two contexts with equal keys resolve identically (same answer or same
//! error), so a cache keyed on [`CacheKey`] never serves a wrong answer, and contexts that
//! differ only in what the rules ignore share one entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use models_config::ValidRuleSet;
use models_config::allocation::Layout;
use models_config::spec::{
    ExperimentSpec, MatchSpec, ModelSpec, ObjectiveSpec, RuleSet, RuleSpec, TrafficClass,
};

use crate::error::ResolveError;
use crate::objective::{ExperimentCell, ObjectiveConfig, ShadowTarget};

/// The context of one request: everything an objective's rules may read.
///
/// Built by the gRPC and HTTP layers from their requests. `Default` is an empty context
/// (live traffic, nothing else set), handy for building one field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The objective to resolve. Required: empty is
    /// [`ResolveError::EmptyObjective`].
    pub objective: String,
    /// The calling tenant; `None` or empty: no tenant.
    pub tenant: Option<String>,
    /// Stable id that experiment allocation and splits are sticky on; `None` or empty: no
    /// subject.
    pub subject_id: Option<String>,
    /// Request attributes (country, device, surface, ...).
    pub attributes: HashMap<String, String>,
    /// Experiment id → cell, overriding the hashed allocation of that experiment.
    pub experiment_allocations: HashMap<String, String>,
    /// Live or synthetic traffic. Default live.
    pub traffic_class: TrafficClass,
}

/// The answer for one [`RequestContext`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The routing key of the selected model, for the `x-routing-key` header.
    pub routing_key: Arc<str>,
    /// The selected model and what the client passes to it.
    pub config: ObjectiveConfig,
    /// The objective's shadow targets (possibly none).
    pub shadows: Arc<[ShadowTarget]>,
    /// How long a client may reuse this answer for the same context; zero: do not cache.
    pub cache_ttl: Duration,
    /// Version of the rule set the engine was built from.
    pub rule_set_version: u64,
    /// Index of the rule that selected the model in the objective's `rules`, or `None` when
    /// the default model was selected. For debugging and metrics.
    pub matched_rule: Option<usize>,
}

/// The inputs that resolving one context reads, and nothing else: the key for caching
/// resolutions (see the module docs).
///
/// Which fields are filled depends only on the objective's rules (and, for the subject id,
/// on which of its experiments the request allocates explicitly), so keys of one objective
/// compare field by field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The rule-set version, so that keys of different versions never collide.
    version: u64,
    /// The objective, as named in the rule set.
    objective: Arc<str>,
    /// The tenant, when some rule lists tenants.
    tenant: Option<String>,
    /// The traffic class, when some rule has a `traffic_class` condition.
    traffic_class: Option<TrafficClass>,
    /// The request's value of every attribute some rule reads, in the objective's order.
    attributes: Box<[Option<String>]>,
    /// The explicit allocation of every experiment some rule uses, in the objective's order.
    allocations: Box<[Option<String>]>,
    /// The subject id, when a split rule exists or an experiment used by some rule is not
    /// allocated explicitly.
    subject_id: Option<String>,
}

/// A rule set compiled for resolution: objectives by name, rules in order with sorted value
/// lists, experiments and splits laid out over allocation buckets, answers' strings shared.
///
/// Built once per accepted rule-set version (off the request path), then shared read-only,
/// e.g. behind an `ArcSwap`. [`Engine::resolve`] allocates nothing beyond the small answer
/// it returns.
#[derive(Debug)]
pub struct Engine {
    version: u64,
    objectives: HashMap<Arc<str>, Objective>,
    /// Every experiment of the rule set; rules refer to them by index.
    experiments: Box<[Experiment]>,
}

/// One objective, compiled.
#[derive(Debug)]
struct Objective {
    name: Arc<str>,
    rules: Box<[Rule]>,
    default: Arc<Target>,
    shadows: Arc<[ShadowTarget]>,
    cache_ttl: Duration,
    /// Whether some rule lists tenants.
    reads_tenant: bool,
    /// Whether some rule has a traffic-class condition.
    reads_traffic_class: bool,
    /// Attribute names some rule reads, sorted, without repeats.
    attributes: Box<[Arc<str>]>,
    /// Indexes (into [`Engine::experiments`]) of the experiments some rule uses, sorted,
    /// without repeats.
    experiments: Box<[usize]>,
    /// Whether some rule selects a split.
    has_split: bool,
}

/// A list of accepted values, sorted for binary search, without repeats.
type Values = Box<[Box<str>]>;

/// One rule, compiled.
#[derive(Debug)]
struct Rule {
    tenants: Values,
    traffic_class: Option<TrafficClass>,
    /// `(attribute name, accepted values)`.
    attributes: Box<[(Arc<str>, Values)]>,
    /// `(experiment index, cell index)`.
    experiment: Option<(usize, usize)>,
    selection: Selection,
}

/// What a matching rule selects.
#[derive(Debug)]
enum Selection {
    Model(Arc<Target>),
    Split(Layout<Arc<Target>>),
}

/// A model as an answer needs it, built once per model.
#[derive(Debug)]
struct Target {
    model_id: Arc<str>,
    routing_key: Arc<str>,
    version: Arc<str>,
    input_type: Arc<str>,
    parameters: Arc<BTreeMap<String, String>>,
    metadata: Arc<BTreeMap<String, String>>,
}

/// One experiment, compiled.
#[derive(Debug)]
struct Experiment {
    id: Arc<str>,
    salt: Box<str>,
    /// Cell names, sorted (the order of the layout).
    cells: Box<[Arc<str>]>,
    /// Buckets → index into `cells`.
    layout: Layout<usize>,
}

// === impl RequestContext ===

impl RequestContext {
    /// The tenant, with an empty one counted as absent.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref().filter(|t| !t.is_empty())
    }

    /// The subject id, with an empty one counted as absent.
    pub fn subject_id(&self) -> Option<&str> {
        self.subject_id.as_deref().filter(|s| !s.is_empty())
    }
}

// === impl Engine ===

impl Engine {
    /// Compiles a validated rule set (it was validated once, when it was parsed or loaded).
    ///
    /// Runs when a rule-set version is accepted (startup, reload, store watch), never per
    /// request.
    pub fn new(rules: &ValidRuleSet) -> Self {
        Self::compile(rules)
    }

    /// Compiles a rule set that passed validation, so every reference resolves and every
    /// weight map sums to 100.
    fn compile(rules: &RuleSet) -> Self {
        let targets: HashMap<&str, Arc<Target>> = rules
            .models
            .iter()
            .map(|(id, model)| (id.as_str(), Arc::new(Target::new(id, model))))
            .collect();
        let target = |id: &str| {
            Arc::clone(
                targets
                    .get(id)
                    .expect("validated: every model reference names a model"),
            )
        };

        let experiments: Box<[Experiment]> = rules
            .experiments
            .iter()
            .map(|(id, spec)| Experiment::new(id, spec))
            .collect();
        let experiment_index: HashMap<&str, usize> = rules
            .experiments
            .keys()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();

        let objectives = rules
            .objectives
            .iter()
            .map(|(name, spec)| {
                let objective =
                    Objective::new(name, spec, &target, &experiment_index, &experiments);
                (Arc::clone(&objective.name), objective)
            })
            .collect();

        Self {
            version: rules.version,
            objectives,
            experiments,
        }
    }

    /// The version of the rule set this engine was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the rule set has an objective by this name.
    pub fn has_objective(&self, name: &str) -> bool {
        self.objectives.contains_key(name)
    }

    /// The names of the objectives, in no particular order.
    pub fn objectives(&self) -> impl Iterator<Item = &str> {
        self.objectives.keys().map(|name| &**name)
    }

    /// Resolves a request context: the first matching rule of its objective selects the
    /// model, or the objective's default when none matches (see the module docs).
    ///
    /// # Errors
    ///
    /// - [`ResolveError::EmptyObjective`] when the context names no objective;
    /// - [`ResolveError::UnknownObjective`] when the rule set has no such objective;
    /// - [`ResolveError::UnknownCell`] when an explicit allocation for an experiment that a
    ///   rule of the objective uses names a cell the experiment does not have (checked
    ///   before any rule is evaluated, whichever rule would have matched).
    pub fn resolve(&self, ctx: &RequestContext) -> Result<Resolution, ResolveError> {
        let objective = self.objective(&ctx.objective)?;
        for &e in &objective.experiments {
            self.explicit_cell(e, ctx)?;
        }
        for (i, rule) in objective.rules.iter().enumerate() {
            if let Some((target, experiment)) = self.evaluate(objective, rule, ctx) {
                return Ok(objective.answer(target, experiment, Some(i), self.version));
            }
        }
        Ok(objective.answer(&objective.default, None, None, self.version))
    }

    /// The inputs [`Engine::resolve`] reads for this context: its cache key.
    ///
    /// Contexts with equal keys resolve identically. Cheap enough for every request: a
    /// lookup of the objective and a clone of the strings it keys on.
    ///
    /// # Errors
    ///
    /// [`ResolveError::EmptyObjective`] and [`ResolveError::UnknownObjective`], as
    /// [`Engine::resolve`] returns them; such contexts have no key.
    pub fn cache_key(&self, ctx: &RequestContext) -> Result<CacheKey, ResolveError> {
        let objective = self.objective(&ctx.objective)?;
        let allocations: Box<[Option<String>]> = objective
            .experiments
            .iter()
            .map(|&e| {
                ctx.experiment_allocations
                    .get(&*self.experiments[e].id)
                    .cloned()
            })
            .collect();
        let needs_subject = objective.has_split || allocations.iter().any(Option::is_none);
        Ok(CacheKey {
            version: self.version,
            objective: Arc::clone(&objective.name),
            tenant: objective
                .reads_tenant
                .then(|| ctx.tenant().map(str::to_owned))
                .flatten(),
            traffic_class: objective.reads_traffic_class.then_some(ctx.traffic_class),
            attributes: objective
                .attributes
                .iter()
                .map(|name| ctx.attributes.get(&**name).cloned())
                .collect(),
            allocations,
            subject_id: needs_subject
                .then(|| ctx.subject_id().map(str::to_owned))
                .flatten(),
        })
    }

    fn objective(&self, name: &str) -> Result<&Objective, ResolveError> {
        if name.is_empty() {
            return Err(ResolveError::EmptyObjective);
        }
        self.objectives
            .get(name)
            .ok_or_else(|| ResolveError::UnknownObjective {
                objective: name.to_owned(),
            })
    }

    /// The cell index the context explicitly allocates for experiment `e`, if any.
    fn explicit_cell(&self, e: usize, ctx: &RequestContext) -> Result<Option<usize>, ResolveError> {
        let experiment = &self.experiments[e];
        let Some(cell) = ctx.experiment_allocations.get(&*experiment.id) else {
            return Ok(None);
        };
        experiment
            .cell_index(cell)
            .map(Some)
            .ok_or_else(|| ResolveError::UnknownCell {
                experiment: Arc::clone(&experiment.id),
                cell: cell.clone(),
            })
    }

    /// The cell index of the context's subject in experiment `e`: explicit, else hashed,
    /// else none (no subject).
    fn cell(&self, e: usize, ctx: &RequestContext) -> Option<usize> {
        // Explicit cells were checked before evaluation started.
        if let Ok(Some(cell)) = self.explicit_cell(e, ctx) {
            return Some(cell);
        }
        let experiment = &self.experiments[e];
        let subject = ctx.subject_id()?;
        Some(*experiment.layout.pick(&experiment.salt, subject))
    }

    /// The selection of `rule` when it matches `ctx`, with the experiment cell that took part.
    fn evaluate<'a>(
        &self,
        objective: &Objective,
        rule: &'a Rule,
        ctx: &RequestContext,
    ) -> Option<(&'a Arc<Target>, Option<ExperimentCell>)> {
        if !rule.tenants.is_empty() {
            let tenant = ctx.tenant()?;
            contains(&rule.tenants, tenant).then_some(())?;
        }
        if let Some(class) = rule.traffic_class
            && class != ctx.traffic_class
        {
            return None;
        }
        for (name, values) in &rule.attributes {
            let value = ctx.attributes.get(&**name)?;
            contains(values, value).then_some(())?;
        }
        let experiment = match rule.experiment {
            None => None,
            Some((e, wanted)) => {
                (self.cell(e, ctx)? == wanted).then_some(())?;
                let experiment = &self.experiments[e];
                Some(ExperimentCell {
                    experiment: Arc::clone(&experiment.id),
                    cell: Arc::clone(&experiment.cells[wanted]),
                })
            }
        };
        let target = match &rule.selection {
            Selection::Model(target) => target,
            Selection::Split(layout) => layout.pick(&objective.name, ctx.subject_id()?),
        };
        Some((target, experiment))
    }
}

/// Whether the sorted `list` holds `value`.
fn contains(list: &[Box<str>], value: &str) -> bool {
    list.binary_search_by(|item| (**item).cmp(value)).is_ok()
}

/// A sorted copy of `values`, without repeats.
fn sorted(values: &[String]) -> Values {
    let set: BTreeSet<&str> = values.iter().map(String::as_str).collect();
    set.into_iter().map(Box::from).collect()
}

// === impl Objective ===

impl Objective {
    fn new(
        name: &str,
        spec: &ObjectiveSpec,
        target: &impl Fn(&str) -> Arc<Target>,
        experiment_index: &HashMap<&str, usize>,
        experiments: &[Experiment],
    ) -> Self {
        let rules: Box<[Rule]> = spec
            .rules
            .iter()
            .map(|rule| Rule::new(rule, target, experiment_index, experiments))
            .collect();
        let attributes: BTreeSet<&Arc<str>> = rules
            .iter()
            .flat_map(|rule| rule.attributes.iter().map(|(name, _)| name))
            .collect();
        let used_experiments: BTreeSet<usize> = rules
            .iter()
            .filter_map(|rule| rule.experiment)
            .map(|(e, _)| e)
            .collect();
        let shadows = spec
            .shadow
            .iter()
            .map(|shadow| {
                let model = target(&shadow.model);
                ShadowTarget {
                    model_id: Arc::clone(&model.model_id),
                    routing_key: Arc::clone(&model.routing_key),
                    sample_percent: shadow.sample_percent,
                }
            })
            .collect();
        Self {
            name: Arc::from(name),
            reads_tenant: rules.iter().any(|rule| !rule.tenants.is_empty()),
            reads_traffic_class: rules.iter().any(|rule| rule.traffic_class.is_some()),
            attributes: attributes.into_iter().map(Arc::clone).collect(),
            experiments: used_experiments.into_iter().collect(),
            has_split: rules
                .iter()
                .any(|rule| matches!(rule.selection, Selection::Split(_))),
            rules,
            default: target(&spec.default),
            shadows,
            cache_ttl: Duration::from_millis(spec.cache_ttl_ms),
        }
    }

    fn answer(
        &self,
        target: &Target,
        experiment: Option<ExperimentCell>,
        matched_rule: Option<usize>,
        version: u64,
    ) -> Resolution {
        Resolution {
            routing_key: Arc::clone(&target.routing_key),
            config: ObjectiveConfig {
                objective: Arc::clone(&self.name),
                model_id: Arc::clone(&target.model_id),
                model_version: Arc::clone(&target.version),
                experiment,
                input_type: Arc::clone(&target.input_type),
                parameters: Arc::clone(&target.parameters),
                metadata: Arc::clone(&target.metadata),
            },
            shadows: Arc::clone(&self.shadows),
            cache_ttl: self.cache_ttl,
            rule_set_version: version,
            matched_rule,
        }
    }
}

// === impl Rule ===

impl Rule {
    fn new(
        spec: &RuleSpec,
        target: &impl Fn(&str) -> Arc<Target>,
        experiment_index: &HashMap<&str, usize>,
        experiments: &[Experiment],
    ) -> Self {
        let MatchSpec {
            tenants,
            traffic_class,
            attributes,
            experiment,
            cell,
        } = &spec.when;
        let experiment = experiment.as_deref().map(|id| {
            let e = *experiment_index
                .get(id)
                .expect("validated: every rule experiment exists");
            let cell = cell
                .as_deref()
                .and_then(|cell| experiments[e].cell_index(cell))
                .expect("validated: an experiment condition names a cell of the experiment");
            (e, cell)
        });
        let selection = match (&spec.model, &spec.split) {
            (Some(model), _) => Selection::Model(target(model)),
            (None, Some(split)) => Selection::Split(
                Layout::new(split.iter().map(|(model, &w)| (w, target(model))))
                    .expect("validated: split weights are positive and sum to 100"),
            ),
            (None, None) => unreachable!("validated: a rule has a model or a split"),
        };
        Self {
            tenants: sorted(tenants),
            traffic_class: *traffic_class,
            attributes: attributes
                .iter()
                .map(|(name, values)| (Arc::from(name.as_str()), sorted(values)))
                .collect(),
            experiment,
            selection,
        }
    }
}

// === impl Target ===

impl Target {
    fn new(id: &str, spec: &ModelSpec) -> Self {
        Self {
            model_id: Arc::from(id),
            routing_key: Arc::from(spec.routing_key.as_str()),
            version: Arc::from(spec.version.as_str()),
            input_type: Arc::from(spec.input_type.as_str()),
            parameters: Arc::new(spec.parameters.clone()),
            metadata: Arc::new(spec.metadata.clone()),
        }
    }
}

// === impl Experiment ===

impl Experiment {
    fn new(id: &str, spec: &ExperimentSpec) -> Self {
        let cells: Box<[Arc<str>]> = spec.cells.keys().map(|c| Arc::from(c.as_str())).collect();
        let layout = Layout::new(spec.cells.values().copied().zip(0..))
            .expect("validated: cell percentages are positive and sum to 100");
        Self {
            id: Arc::from(id),
            salt: spec.salt.as_deref().unwrap_or(id).into(),
            cells,
            layout,
        }
    }

    fn cell_index(&self, cell: &str) -> Option<usize> {
        self.cells.binary_search_by(|c| (**c).cmp(cell)).ok()
    }
}

#[cfg(test)]
mod tests;
