//! Cache keys: a 64-bit fingerprint of the full request context for the lookup, and the
//! full context ([`ContextKey`]) stored in the entry to confirm a hit.
//!
//! The fingerprint is computed in place from an [`AsContext`] with a fixed-seed hasher, so a
//! lookup allocates nothing. Attributes and allocations are combined order-independently
//! (a wrapping sum of per-entry hashes), so a `HashMap` in any iteration order and a sorted
//! `BTreeMap` with the same content give the same fingerprint. Two different contexts with
//! the same fingerprint are told apart by [`ContextKey::matches`]: a colliding lookup is a
//! miss, never a wrong answer.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use foldhash::fast::FixedState;

use crate::context::AsContext;

/// Seeds of the fingerprint hashers: arbitrary, fixed so a fingerprint is stable for the
/// life of the process (and across processes, which nothing relies on).
const SEED: u64 = 0x6c69_6768_7462_756c; // "lightbul"
const PAIR_SEED: u64 = 0x7061_6972_7365_6564; // "pairseed"

/// Domain tags so that an attribute and an allocation with the same name and value do not
/// cancel out or swap places unnoticed.
const ATTRIBUTE_TAG: u8 = 1;
const ALLOCATION_TAG: u8 = 2;

/// The 64-bit fingerprint of a context.
pub(crate) fn fingerprint<C: AsContext + ?Sized>(ctx: &C) -> u64 {
    let mut h = FixedState::with_seed(SEED).build_hasher();
    ctx.objective().hash(&mut h);
    ctx.tenant().hash(&mut h);
    ctx.subject_id().hash(&mut h);
    h.write_i32(ctx.traffic_class_value());
    h.write_usize(ctx.attribute_count());
    h.write_u64(pairs_hash(ATTRIBUTE_TAG, ctx.attributes()));
    h.write_usize(ctx.allocation_count());
    h.write_u64(pairs_hash(ALLOCATION_TAG, ctx.allocations()));
    h.finish()
}

/// Order-independent hash of name/value pairs.
fn pairs_hash<'a>(tag: u8, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let state = FixedState::with_seed(PAIR_SEED);
    pairs.fold(0u64, |acc, (name, value)| {
        let mut h = state.build_hasher();
        h.write_u8(tag);
        name.hash(&mut h);
        value.hash(&mut h);
        acc.wrapping_add(h.finish())
    })
}

/// The full request context of a cache entry, normalised (empty = none, unspecified traffic
/// class = live, pairs sorted by name), to confirm that a fingerprint match is the same
/// context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContextKey {
    objective: Box<str>,
    tenant: Box<str>,
    subject_id: Box<str>,
    traffic_class: i32,
    attributes: Box<[(Box<str>, Box<str>)]>,
    allocations: Box<[(Box<str>, Box<str>)]>,
}

impl ContextKey {
    /// Copies the context (on a miss, after a successful fetch).
    pub(crate) fn of<C: AsContext + ?Sized>(ctx: &C) -> Self {
        Self {
            objective: ctx.objective().into(),
            tenant: ctx.tenant().into(),
            subject_id: ctx.subject_id().into(),
            traffic_class: ctx.traffic_class_value(),
            attributes: sorted(ctx.attributes()),
            allocations: sorted(ctx.allocations()),
        }
    }

    /// Whether `ctx` is exactly the context this key was made from. Allocates nothing: one
    /// map lookup per attribute and allocation.
    pub(crate) fn matches<C: AsContext + ?Sized>(&self, ctx: &C) -> bool {
        *self.objective == *ctx.objective()
            && *self.tenant == *ctx.tenant()
            && *self.subject_id == *ctx.subject_id()
            && self.traffic_class == ctx.traffic_class_value()
            && self.attributes.len() == ctx.attribute_count()
            && self.allocations.len() == ctx.allocation_count()
            && self
                .attributes
                .iter()
                .all(|(name, value)| ctx.attribute(name) == Some(&**value))
            && self
                .allocations
                .iter()
                .all(|(name, value)| ctx.allocation(name) == Some(&**value))
    }
}

fn sorted<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Box<[(Box<str>, Box<str>)]> {
    let mut pairs: Vec<(Box<str>, Box<str>)> = pairs.map(|(k, v)| (k.into(), v.into())).collect();
    pairs.sort_unstable();
    pairs.into_boxed_slice()
}

/// A hasher for keys that already are well-mixed 64-bit fingerprints: passes them through,
/// so the cache does not hash them a second time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FingerprintHasher(u64);

/// The `BuildHasher` of the caches, keyed by fingerprint.
pub(crate) type BuildFingerprintHasher = BuildHasherDefault<FingerprintHasher>;

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this hasher (through `write_u64`); mix anything
        // else in anyway rather than ignoring it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use routing_proto::lightbulb::v1 as pb;

    use super::*;
    use crate::context::{RequestContext, TrafficClass};

    fn domain() -> RequestContext {
        RequestContext::new("Ranking")
            .with_tenant("t1")
            .with_subject("user-1")
            .with_attribute("country", "CA")
            .with_attribute("device", "tv")
            .with_allocation("exp", "treatment")
    }

    fn proto() -> pb::ResolveRequest {
        pb::ResolveRequest {
            objective: "Ranking".into(),
            tenant: "t1".into(),
            subject_id: "user-1".into(),
            attributes: HashMap::from([
                ("device".into(), "tv".into()),
                ("country".into(), "CA".into()),
            ]),
            experiment_allocations: HashMap::from([("exp".into(), "treatment".into())]),
            traffic_class: pb::TrafficClass::Unspecified as i32,
        }
    }

    #[test]
    fn domain_and_proto_forms_of_one_context_share_a_key() {
        assert_eq!(fingerprint(&domain()), fingerprint(&proto()));
        assert!(ContextKey::of(&domain()).matches(&proto()));
        assert!(ContextKey::of(&proto()).matches(&domain()));
        assert_eq!(ContextKey::of(&domain()), ContextKey::of(&proto()));
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = domain();
        let variants = [
            RequestContext {
                objective: "Other".into(),
                ..base.clone()
            },
            RequestContext {
                tenant: None,
                ..base.clone()
            },
            RequestContext {
                subject_id: Some("user-2".into()),
                ..base.clone()
            },
            base.clone().with_traffic_class(TrafficClass::Synthetic),
            base.clone().with_attribute("country", "US"),
            base.clone().with_attribute("surface", "home"),
            base.clone().with_allocation("exp", "control"),
            base.clone().with_allocation("exp2", "a"),
        ];
        let key = ContextKey::of(&base);
        for variant in &variants {
            assert_ne!(fingerprint(&base), fingerprint(variant), "{variant:?}");
            assert!(!key.matches(variant), "{variant:?}");
        }
    }

    #[test]
    fn an_attribute_is_not_an_allocation() {
        let a = RequestContext::new("o").with_attribute("x", "y");
        let b = RequestContext::new("o").with_allocation("x", "y");
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert!(!ContextKey::of(&a).matches(&b));
    }

    #[test]
    fn empty_tenant_is_no_tenant() {
        let a = RequestContext::new("o");
        let b = RequestContext::new("o").with_tenant("");
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(ContextKey::of(&a).matches(&b));
    }

    #[test]
    fn fingerprint_hasher_passes_u64_through() {
        let mut h = FingerprintHasher::default();
        42u64.hash(&mut h);
        assert_eq!(h.finish(), 42);
    }
}
