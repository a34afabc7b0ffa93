//! Deterministic allocation of subjects to experiment cells and split shares.
//!
//! Every consumer that must agree with Lightbulb on a subject's cell (a client library in
//! another language, an offline analysis job) can reproduce it from this description alone:
//!
//! 1. `h = fmix64(fnv1a64(salt ++ 0x00 ++ subject_id))`, where `++` concatenates UTF-8 bytes,
//!    `fnv1a64` is 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime
//!    `0x100000001b3`) and `fmix64` is MurmurHash3's 64-bit finaliser. The `0x00` separator
//!    keeps `("ab", "c")` and `("a", "bc")` apart; FNV-1a alone mixes its last bytes poorly
//!    into the low bits, which the finaliser fixes.
//! 2. `bucket = h % 10_000`: a position in basis points, so every bucket covers 0.01 %.
//! 3. The entries (cells of an experiment, models of a split) are laid out in ascending
//!    byte order of their names, each covering `percent × 100` buckets; the subject gets the
//!    entry whose range holds its bucket.
//!
//! For an experiment the salt is its `salt` (default: the experiment id); for a rule's split
//! it is the objective name, so every split of one objective puts a subject at the same
//! position; for a route's sticky `split` in the router it is the routing key. Lightbulb and
//! the router both use this module, so they agree. Renaming, adding or removing an entry, or changing a percentage moves subjects;
//! changing nothing keeps every subject where it was, on every machine and every version.
//!
//! `lightbulb/tests/fixtures/allocation_vectors.json` pins the function: a change to it fails
//! the tests.

/// Buckets a subject can fall in: basis points of 100 %.
pub const BUCKETS: u32 = 10_000;

/// Buckets per percentage point.
const BUCKETS_PER_PERCENT: u32 = BUCKETS / 100;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Entries laid out over the buckets: each entry owns the buckets below its upper bound and
/// at or above the previous entry's.
///
/// Built once per experiment or split when a rule set is compiled; [`Layout::pick`] then
/// costs one hash and a scan of a handful of bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout<T> {
    /// `(exclusive upper bound in buckets, entry)`, ascending; the last bound is
    /// [`BUCKETS`].
    entries: Box<[(u32, T)]>,
}

/// The allocation hash of `subject` under `salt` (step 1 of the module docs).
pub fn hash(salt: &str, subject: &str) -> u64 {
    hash_bytes(salt, subject.as_bytes())
}

/// [`hash`] of a subject given as bytes (a header value, which need not be UTF-8; for a
/// UTF-8 subject both agree).
pub fn hash_bytes(salt: &str, subject: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &byte in salt.as_bytes().iter().chain(&[0u8]).chain(subject) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// The bucket, `0..BUCKETS`, of `subject` under `salt` (step 2 of the module docs).
pub fn bucket(salt: &str, subject: &str) -> u32 {
    // The remainder is below 10_000, so it fits.
    (hash(salt, subject) % u64::from(BUCKETS)) as u32
}

/// [`bucket`] of a subject given as bytes.
pub fn bucket_bytes(salt: &str, subject: &[u8]) -> u32 {
    (hash_bytes(salt, subject) % u64::from(BUCKETS)) as u32
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

// === impl Layout ===

impl<T> Layout<T> {
    /// Lays out `(percent, entry)` pairs in the order given (callers pass them sorted by
    /// name, as a `BTreeMap` iterates).
    ///
    /// Returns `None` unless the percentages are positive and sum to exactly 100, which
    /// validation guarantees for every experiment and split of an accepted rule set.
    pub fn new(weighted: impl IntoIterator<Item = (u32, T)>) -> Option<Self> {
        let mut bound: u32 = 0;
        let mut entries = Vec::new();
        for (percent, entry) in weighted {
            if percent == 0 {
                return None;
            }
            bound = bound.checked_add(percent.checked_mul(BUCKETS_PER_PERCENT)?)?;
            entries.push((bound, entry));
        }
        (bound == BUCKETS).then(|| Self {
            entries: entries.into_boxed_slice(),
        })
    }

    /// The entry owning `bucket` (`0..BUCKETS`).
    ///
    /// # Panics
    ///
    /// Never for a bucket below [`BUCKETS`]: the last bound is `BUCKETS`. A larger bucket is
    /// a caller bug and panics.
    pub fn entry(&self, bucket: u32) -> &T {
        let (_, entry) = self
            .entries
            .iter()
            .find(|(upper, _)| bucket < *upper)
            .expect("the last bound is BUCKETS, above every bucket");
        entry
    }

    /// The entry `subject` falls in under `salt`.
    pub fn pick(&self, salt: &str, subject: &str) -> &T {
        self.entry(bucket(salt, subject))
    }

    /// The entries, in layout order.
    pub fn entries(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, entry)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_finaliser_match_reference_values() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the reference test vector); here it is the
        // state after the salt "a" alone, before the separator.
        let mut h = FNV_OFFSET_BASIS;
        h ^= u64::from(b'a');
        h = h.wrapping_mul(FNV_PRIME);
        assert_eq!(h, 0xaf63_dc4c_8601_ec8c);
        // fmix64 maps 0 to 0 and is a bijection, so distinct inputs stay distinct.
        assert_eq!(fmix64(0), 0);
        assert_ne!(fmix64(1), fmix64(2));
    }

    #[test]
    fn separator_keeps_salt_and_subject_apart() {
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
        assert_ne!(hash("", "x"), hash("x", ""));
    }

    #[test]
    fn layout_needs_percentages_summing_to_100() {
        assert!(Layout::new([(50, "a"), (50, "b")]).is_some());
        assert!(Layout::new([(100, "a")]).is_some());
        assert!(Layout::new([(50, "a"), (40, "b")]).is_none());
        assert!(Layout::new([(0, "a"), (100, "b")]).is_none());
        assert!(Layout::new([(u32::MAX, "a")]).is_none());
        assert!(Layout::new(Vec::<(u32, &str)>::new()).is_none());
    }

    #[test]
    fn layout_boundaries_are_exclusive_upper_bounds() {
        let layout = Layout::new([(10, "a"), (85, "b"), (5, "c")]).unwrap();
        assert_eq!(*layout.entry(0), "a");
        assert_eq!(*layout.entry(999), "a");
        assert_eq!(*layout.entry(1_000), "b");
        assert_eq!(*layout.entry(9_499), "b");
        assert_eq!(*layout.entry(9_500), "c");
        assert_eq!(*layout.entry(BUCKETS - 1), "c");
        assert_eq!(
            layout.entries().copied().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn buckets_are_in_range_and_spread() {
        let mut seen = [0u32; 10];
        for i in 0..10_000 {
            let b = bucket("salt", &format!("user-{i}"));
            assert!(b < BUCKETS);
            seen[(b / 1_000) as usize] += 1;
        }
        // 1,000 expected per decile, sd ≈ 30: 6 sd of slack.
        for (decile, &n) in seen.iter().enumerate() {
            assert!((820..=1_180).contains(&n), "decile {decile}: {n}");
        }
    }
}
