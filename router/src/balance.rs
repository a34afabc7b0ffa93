//! Endpoint selection within a cluster.
//!
//! A [`Balancer`] is built once per cluster when a route table is built, holding whatever the
//! policy precomputes (a weighted schedule, a hash ring, a Maglev table). Picking is then
//! lock-free and allocation-free: an atomic counter, a random draw, or a binary search.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName};
use models_config::spec::LbPolicy;

use crate::rng;

/// Virtual nodes per unit of weight on a hash ring.
const RING_NODES_PER_WEIGHT: u32 = 128;
/// Size of a Maglev lookup table: a prime well above any sane endpoint count × 100.
const MAGLEV_TABLE_SIZE: usize = 65_537;

/// Picks an endpoint index of a cluster for each request.
#[derive(Debug)]
pub enum Balancer {
    /// Each endpoint in turn.
    RoundRobin {
        /// The next position; wraps.
        next: AtomicUsize,
    },
    /// Endpoints in proportion to their weight, interleaved (smooth weighted round robin,
    /// precomputed as a schedule of endpoint indices).
    WeightedRoundRobin {
        /// One full cycle of picks.
        schedule: Box<[u32]>,
        /// The next position in the schedule; wraps.
        next: AtomicUsize,
    },
    /// Uniformly at random.
    Random,
    /// The less loaded of two distinct endpoints drawn at random.
    LeastRequest,
    /// Consistent hashing on a ring of virtual nodes.
    RingHash {
        /// The header whose value is hashed.
        header: HeaderName,
        /// `(point, endpoint index)` sorted by point.
        ring: Box<[(u64, u32)]>,
    },
    /// Maglev consistent hashing.
    Maglev {
        /// The header whose value is hashed.
        header: HeaderName,
        /// Lookup table of endpoint indices, 65,537 entries (a prime).
        table: Box<[u32]>,
    },
}

impl Balancer {
    /// Builds the balancer of a cluster from its policy and its endpoints' addresses and
    /// weights (same order as the cluster's endpoint list).
    ///
    /// `hash_header` is required by `ring_hash` and `maglev` (validation guarantees it);
    /// without it they degrade to random.
    pub fn new(
        policy: LbPolicy,
        endpoints: &[(&str, u32)],
        hash_header: Option<HeaderName>,
    ) -> Self {
        match (policy, hash_header) {
            (LbPolicy::RoundRobin, _) => Balancer::RoundRobin {
                next: AtomicUsize::new(0),
            },
            (LbPolicy::WeightedRoundRobin, _) => Balancer::WeightedRoundRobin {
                schedule: smooth_weighted_schedule(endpoints),
                next: AtomicUsize::new(0),
            },
            (LbPolicy::Random, _) => Balancer::Random,
            (LbPolicy::LeastRequest, _) => Balancer::LeastRequest,
            (LbPolicy::RingHash, Some(header)) => Balancer::RingHash {
                header,
                ring: build_ring(endpoints),
            },
            (LbPolicy::Maglev, Some(header)) => Balancer::Maglev {
                header,
                table: build_maglev(endpoints),
            },
            (LbPolicy::RingHash | LbPolicy::Maglev, None) => Balancer::Random,
        }
    }

    /// Picks one of `n` endpoints (`n` > 0) for a request with `headers`.
    ///
    /// `load(i)` is endpoint `i`'s number of requests in flight (used by least request).
    /// `exclude` names an endpoint that just failed to connect: the pick avoids it whenever
    /// another endpoint exists.
    pub fn pick(
        &self,
        n: usize,
        headers: &HeaderMap,
        exclude: Option<usize>,
        load: impl Fn(usize) -> usize,
    ) -> usize {
        debug_assert!(n > 0);
        if n == 1 {
            return 0;
        }
        let picked = match self {
            Balancer::RoundRobin { next } => next.fetch_add(1, Ordering::Relaxed) % n,
            Balancer::WeightedRoundRobin { schedule, next } => {
                schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()] as usize
            }
            Balancer::Random => rng::below(n),
            Balancer::LeastRequest => {
                let a = rng::below(n);
                // A second, distinct draw: offset by 1..n.
                let b = (a + 1 + rng::below(n - 1)) % n;
                let b = if Some(b) == exclude { a } else { b };
                let a = if Some(a) == exclude { b } else { a };
                if load(b) < load(a) { b } else { a }
            }
            Balancer::RingHash { header, ring } => match headers.get(header) {
                Some(value) => ring_lookup(ring, stable_hash(value.as_bytes())),
                None => rng::below(n),
            },
            Balancer::Maglev { header, table } => match headers.get(header) {
                Some(value) => {
                    table[(stable_hash(value.as_bytes()) % table.len() as u64) as usize] as usize
                }
                None => rng::below(n),
            },
        };
        match exclude {
            // The next endpoint keeps hash policies deterministic for a given key.
            Some(bad) if bad == picked => (picked + 1) % n,
            _ => picked,
        }
    }
}

/// A stable 64-bit hash (FNV-1a followed by the murmur3 finalizer), identical on every
/// replica and every build, so hash-based stickiness survives restarts and scale-out.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One cycle of smooth weighted round robin: each endpoint appears `weight / g` times (g =
/// the gcd of the weights), spread out rather than in runs.
fn smooth_weighted_schedule(endpoints: &[(&str, u32)]) -> Box<[u32]> {
    let g = endpoints.iter().fold(0, |g, &(_, w)| gcd(g, w.max(1)));
    let weights: Vec<i64> = endpoints
        .iter()
        .map(|&(_, w)| i64::from(w.max(1) / g))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

fn build_ring(endpoints: &[(&str, u32)]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::new();
    for (i, &(address, weight)) in endpoints.iter().enumerate() {
        let mut key = Vec::with_capacity(address.len() + 12);
        for vnode in 0..weight.max(1) * RING_NODES_PER_WEIGHT {
            key.clear();
            key.extend_from_slice(address.as_bytes());
            key.push(b'#');
            key.extend_from_slice(vnode.to_string().as_bytes());
            ring.push((stable_hash(&key), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

fn ring_lookup(ring: &[(u64, u32)], hash: u64) -> usize {
    let at = ring.partition_point(|&(point, _)| point < hash);
    ring[if at == ring.len() { 0 } else { at }].1 as usize
}

/// Maglev (Eisenbud et al., NSDI 2016) with weights: in each round, endpoint `i` claims
/// `weight_i` slots following its own permutation of the table.
fn build_maglev(endpoints: &[(&str, u32)]) -> Box<[u32]> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|&(address, _)| {
            let offset = stable_hash(address.as_bytes()) % m;
            let mut salted = address.as_bytes().to_vec();
            salted.extend_from_slice(b"#skip");
            let skip = stable_hash(&salted) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; endpoints.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (i, &(_, weight)) in endpoints.iter().enumerate() {
            for _ in 0..weight.max(1) {
                let (offset, skip) = perms[i];
                let mut slot = ((offset + next[i] * skip) % m) as usize;
                while table[slot] != u32::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m) as usize;
                }
                table[slot] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == MAGLEV_TABLE_SIZE {
                    break 'fill;
                }
            }
        }
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const ENDPOINTS: [(&str, u32); 3] =
        [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];

    fn counts(b: &Balancer, n: usize, rounds: usize, headers: &HeaderMap) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..rounds {
            c[b.pick(n, headers, None, |_| 0)] += 1;
        }
        c
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let b = Balancer::new(LbPolicy::RoundRobin, &ENDPOINTS, None);
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(3, &HeaderMap::new(), None, |_| 0))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let eps = [("a:1", 1), ("b:1", 3)];
        let b = Balancer::new(LbPolicy::WeightedRoundRobin, &eps, None);
        let picks: Vec<_> = (0..8)
            .map(|_| b.pick(2, &HeaderMap::new(), None, |_| 0))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 6);
        // Smooth: never three of the same in a row with weights 1:3.
        assert_eq!(&picks[..4], &[1, 0, 1, 1]);
    }

    #[test]
    fn weighted_schedule_reduces_by_gcd() {
        assert_eq!(
            smooth_weighted_schedule(&[("a:1", 200), ("b:1", 400)]).len(),
            3
        );
    }

    #[test]
    fn random_spreads_over_all_endpoints() {
        let b = Balancer::new(LbPolicy::Random, &ENDPOINTS, None);
        let c = counts(&b, 3, 30_000, &HeaderMap::new());
        assert!(c.iter().all(|&x| (9_000..11_000).contains(&x)), "{c:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let b = Balancer::new(LbPolicy::LeastRequest, &ENDPOINTS, None);
        let loads = [10, 0, 10];
        let mut c = [0; 3];
        for _ in 0..3_000 {
            c[b.pick(3, &HeaderMap::new(), None, |i| loads[i])] += 1;
        }
        // Endpoint 1 wins whenever drawn: in 2 of the 3 possible pairs.
        assert!(c[1] > 1_800, "{c:?}");
    }

    #[test]
    fn exclude_avoids_the_failed_endpoint() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::WeightedRoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let b = Balancer::new(policy, &ENDPOINTS, None);
            for _ in 0..300 {
                assert_ne!(
                    b.pick(3, &HeaderMap::new(), Some(1), |_| 0),
                    1,
                    "{policy:?}"
                );
            }
        }
        let h = HeaderName::from_static("x-session");
        let b = Balancer::new(LbPolicy::Maglev, &ENDPOINTS, Some(h.clone()));
        let mut headers = HeaderMap::new();
        headers.insert(h, HeaderValue::from_static("user-1"));
        let first = b.pick(3, &headers, None, |_| 0);
        assert_ne!(b.pick(3, &headers, Some(first), |_| 0), first);
    }

    fn sticky_and_spread(policy: LbPolicy) {
        let h = HeaderName::from_static("x-session");
        let b = Balancer::new(policy, &ENDPOINTS, Some(h.clone()));
        let mut c = [0; 3];
        for user in 0..3_000 {
            let mut headers = HeaderMap::new();
            headers.insert(
                h.clone(),
                HeaderValue::from_str(&format!("user-{user}")).unwrap(),
            );
            let first = b.pick(3, &headers, None, |_| 0);
            for _ in 0..3 {
                assert_eq!(b.pick(3, &headers, None, |_| 0), first);
            }
            c[first] += 1;
        }
        assert!(c.iter().all(|&x| x > 700), "{policy:?} {c:?}");
    }

    #[test]
    fn ring_hash_is_sticky_and_spreads() {
        sticky_and_spread(LbPolicy::RingHash);
    }

    #[test]
    fn maglev_is_sticky_and_spreads() {
        sticky_and_spread(LbPolicy::Maglev);
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_is_added() {
        let before = build_maglev(&ENDPOINTS);
        let mut more = ENDPOINTS.to_vec();
        more.push(("10.0.0.4:80", 1));
        let after = build_maglev(&more);
        let moved = before
            .iter()
            .zip(after.iter())
            .filter(|(a, b)| a != b)
            .count();
        // Ideal is 1/4 of the table; Maglev stays close to it.
        assert!(moved < MAGLEV_TABLE_SIZE * 35 / 100, "{moved}");
    }

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned so a change of the hash (and so of every sticky assignment) is noticed.
        assert_eq!(stable_hash(b""), 0xefd01f60ba992926);
        assert_eq!(stable_hash(b"user-1"), 0x41a2fca5c68401c5);
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
    }
}
