//! Choosing an endpoint, apart from calling it. Pure functions over the
//! current endpoint states; the caller supplies the randomness and the
//! round-robin counter so that tests can pin them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crds::LoadBalancerPolicy;

/// Live state of one upstream endpoint, shared by every snapshot that
/// names the same address (so health survives config reloads).
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port`.
    pub address: std::sync::Arc<str>,
    /// Requests in flight.
    pub in_flight: AtomicU32,
    /// Failures in a row.
    pub consecutive_failures: AtomicU32,
    /// Ejections in a row (the back-off doubles with each).
    pub ejections: AtomicU32,
    /// Until when (ms since the proxy's start) the endpoint is ejected.
    pub ejected_until_ms: AtomicU64,
}

impl EndpointState {
    /// A new, healthy endpoint.
    pub fn new(address: &str) -> Self {
        EndpointState {
            address: std::sync::Arc::from(address),
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the endpoint may take traffic at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// Picks a weighted group: `roll` is uniform in `0..total weight`.
pub fn pick_weighted(weights: &[u32], roll: u64) -> Option<usize> {
    let mut roll = roll;
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if roll < w {
            return Some(i);
        }
        roll -= w;
    }
    None
}

/// Inputs of one pick.
#[derive(Debug, Clone, Copy)]
pub struct PickInput {
    /// The policy.
    pub policy: LoadBalancerPolicy,
    /// A counter that increases by one per request (round robin).
    pub counter: u64,
    /// A random number (Random and LeastRequest).
    pub random: u64,
    /// The hash of the hashed header (ConsistentHash), if present.
    pub hash: Option<u64>,
    /// Now, ms since the proxy's start (for ejections).
    pub now_ms: u64,
}

/// Picks an available endpoint, skipping ejected ones and those in `tried`
/// (indices already attempted by earlier tries of the same request).
pub fn pick(endpoints: &[std::sync::Arc<EndpointState>], input: PickInput, tried: &[usize]) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let usable = |i: usize| endpoints[i].is_available(input.now_ms) && !tried.contains(&i);
    let start = match input.policy {
        LoadBalancerPolicy::RoundRobin => (input.counter % n as u64) as usize,
        LoadBalancerPolicy::Random => (input.random % n as u64) as usize,
        LoadBalancerPolicy::ConsistentHash => match input.hash {
            // Jump consistent hash: few keys move when endpoints change.
            Some(h) => jump_hash(h, n),
            None => (input.random % n as u64) as usize,
        },
        LoadBalancerPolicy::LeastRequest => {
            // Power of two choices: the less loaded of two random endpoints.
            let a = (input.random % n as u64) as usize;
            let b = ((input.random >> 32) % n as u64) as usize;
            let load = |i: usize| endpoints[i].in_flight.load(Ordering::Relaxed);
            match (usable(a), usable(b)) {
                (true, true) => {
                    if load(b) < load(a) {
                        b
                    } else {
                        a
                    }
                }
                (false, true) => b,
                _ => a,
            }
        }
    };
    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
}

/// Jump consistent hash (Lamping and Veach, 2014).
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// A `BuildHasher` for maps whose keys come from the config (hosts, paths,
/// upstream addresses): FNV-1a is much cheaper than SipHash on short keys,
/// and nobody outside can insert keys, so hash flooding is not a concern.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fnv;

/// The hasher of [`Fnv`].
#[derive(Debug)]
pub struct FnvHasher(u64);

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;

    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf29ce484222325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a, for hashing header values.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n).map(|i| Arc::new(EndpointState::new(&format!("10.0.0.{i}:80")))).collect()
    }

    fn input(policy: LoadBalancerPolicy) -> PickInput {
        PickInput { policy, counter: 0, random: 0, hash: None, now_ms: 1_000 }
    }

    #[test]
    fn round_robin_cycles_and_skips_ejected() {
        let eps = endpoints(3);
        let picks: Vec<_> = (0..6)
            .map(|c| pick(&eps, PickInput { counter: c, ..input(LoadBalancerPolicy::RoundRobin) }, &[]))
            .collect();
        assert_eq!(picks, [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]);
        eps[1].ejected_until_ms.store(2_000, Ordering::Relaxed);
        assert_eq!(pick(&eps, PickInput { counter: 1, ..input(LoadBalancerPolicy::RoundRobin) }, &[]), Some(2));
        assert_eq!(
            pick(&eps, PickInput { counter: 1, now_ms: 2_000, ..input(LoadBalancerPolicy::RoundRobin) }, &[]),
            Some(1)
        );
    }

    #[test]
    fn tried_endpoints_are_skipped_and_all_ejected_gives_none() {
        let eps = endpoints(2);
        assert_eq!(pick(&eps, input(LoadBalancerPolicy::RoundRobin), &[0]), Some(1));
        for e in &eps {
            e.ejected_until_ms.store(u64::MAX, Ordering::Relaxed);
        }
        assert_eq!(pick(&eps, input(LoadBalancerPolicy::RoundRobin), &[]), None);
        assert_eq!(pick(&[], input(LoadBalancerPolicy::Random), &[]), None);
    }

    #[test]
    fn least_request_prefers_the_idle_one() {
        let eps = endpoints(2);
        eps[0].in_flight.store(10, Ordering::Relaxed);
        let random = 1u64 << 32; // a = 0, b = 1
        assert_eq!(pick(&eps, PickInput { random, ..input(LoadBalancerPolicy::LeastRequest) }, &[]), Some(1));
    }

    #[test]
    fn consistent_hash_is_stable() {
        let eps = endpoints(5);
        let h = fnv1a(b"user-42");
        let first = pick(&eps, PickInput { hash: Some(h), ..input(LoadBalancerPolicy::ConsistentHash) }, &[]);
        for _ in 0..10 {
            assert_eq!(
                pick(&eps, PickInput { hash: Some(h), ..input(LoadBalancerPolicy::ConsistentHash) }, &[]),
                first
            );
        }
        // Most keys keep their endpoint when a sixth endpoint is added.
        let moved = (0..1000u64).filter(|k| jump_hash(*k * 7919, 5) != jump_hash(*k * 7919, 6)).count();
        assert!(moved < 300, "{moved} of 1000 keys moved");
    }

    #[test]
    fn weights_split_traffic() {
        assert_eq!(pick_weighted(&[90, 10], 0), Some(0));
        assert_eq!(pick_weighted(&[90, 10], 89), Some(0));
        assert_eq!(pick_weighted(&[90, 10], 90), Some(1));
        assert_eq!(pick_weighted(&[0, 5], 0), Some(1));
        assert_eq!(pick_weighted(&[0, 0], 0), None);
    }
}
