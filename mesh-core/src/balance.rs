//! Load balancers: which endpoint of a destination takes the next request.
//!
//! The algorithms DestinationRule offers, with Envoy's semantics: `ROUND_ROBIN`
//! (weighted, smooth), `RANDOM` (weighted), `LEAST_REQUEST` (Istio's default: power of two
//! choices on outstanding requests), consistent hashing over a ring hash (Ketama:
//! xxHash64 of `address_k`, at least `minimumRingSize` entries) or Maglev
//! (a `tableSize` lookup table), and Linkerd's peak-EWMA power of two choices as an
//! option. Consistent hashes use xxHash64 with a fixed seed, so every process agrees on
//! where a key goes, and adding or removing one of N endpoints moves about 1/N of keys.
//!
//! Balancers hold only what the algorithm needs (a counter, a ring, a table); the load of
//! each endpoint lives in an [`EndpointLoad`] that the runtime keeps across
//! configurations, and is read through [`Loads`].
//! Randomness and time are passed in.
//!
//! ```
//! use mesh_core::balance::{Balancer, Idle, LbAlgorithm, Pick};
//! use rand::SeedableRng;
//!
//! let ids = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
//! let lb = Balancer::new(&LbAlgorithm::RoundRobin, &ids, &[1, 1, 1]);

//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let picks: Vec<_> = (0..6).map(|_| lb.pick(&Idle, &mut Pick::new(&mut rng)).unwrap()).collect();
//! assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use rand_core::Rng;
use xxhash_rust::xxh64::xxh64;

/// Envoy's default and largest ring sizes.
const DEFAULT_MIN_RING: u64 = 1024;
const MAX_RING: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_TABLE: u64 = 65537;
/// Longest precomputed weighted round-robin schedule.
const MAX_SCHEDULE: u64 = 1 << 16;

/// The load balancing algorithm of a destination.
#[derive(Debug, Clone, PartialEq)]
pub enum LbAlgorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on outstanding requests (Istio's default).
    LeastRequest,
    /// Power of two choices on peak-EWMA latency × (outstanding + 1) (Linkerd's).
    PeakEwma {
        /// Decay time of the moving average, in nanoseconds.
        decay_ns: u64,
        /// Latency assumed for an endpoint without measurements, in nanoseconds.
        default_rtt_ns: u64,
    },
    /// Consistent hashing on a ring.
    RingHash {
        /// Minimum number of entries on the ring.
        minimum_ring_size: u64,
    },
    /// Consistent hashing with a Maglev table.
    Maglev {
        /// Table size (a prime).
        table_size: u64,
    },
    /// Forward to the address the caller asked for (no balancing).
    Passthrough,
}

impl LbAlgorithm {
    /// Linkerd's defaults: 10 s decay, 30 ms default latency.
    pub fn peak_ewma() -> Self {
        LbAlgorithm::PeakEwma {
            decay_ns: 10_000_000_000,
            default_rtt_ns: 30_000_000,
        }
    }

    /// Ring hash with `minimum_ring_size` entries at least (Envoy's default 1024 when
    /// unset or 0; at most Envoy's maximum ring size, 8M).
    pub fn ring_hash(minimum_ring_size: Option<u64>) -> Self {
        LbAlgorithm::RingHash {
            minimum_ring_size: minimum_ring_size
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MIN_RING)
                .min(MAX_RING),
        }
    }

    /// True for the consistent hashing algorithms.
    pub fn is_hash(&self) -> bool {
        matches!(
            self,
            LbAlgorithm::RingHash { .. } | LbAlgorithm::Maglev { .. }
        )
    }
}

/// The load of one endpoint: its outstanding requests and its peak-EWMA latency estimate.
///
/// It is state, not configuration: the runtime keeps one per endpoint (by address and
/// port) across configurations, so that a reload does not make the least-request
/// balancers forget which endpoint is busy. Lock-free: concurrent observations may lose
/// one another's update, which a moving average tolerates.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    outstanding: AtomicU32,
    /// Estimated latency in nanoseconds (`f64` bits); 0 = no measurement yet.
    rtt_ns: AtomicU64,
    /// When it was last updated (caller's clock, nanoseconds).
    at_ns: AtomicU64,
}

impl EndpointLoad {
    /// An idle endpoint without latency measurements.
    pub fn new() -> Self {
        EndpointLoad::default()
    }

    /// Outstanding requests.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Marks a request as started: the caller calls [`finish`](Self::finish) once for it
    /// (the runtime holds a guard that does, for as long as the response lasts).
    pub fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a request started with [`begin`](Self::begin).
    pub fn finish(&self) {
        // Never below zero, whatever a caller does.
        let _ = self
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Records a response latency (peak-EWMA) at time `now_ns`: a slower response is
    /// believed at once, a faster one decays the estimate towards it over `decay_ns`.
    pub fn observe(&self, rtt_ns: u64, now_ns: u64, decay_ns: u64) {
        let rtt = rtt_ns as f64;
        let current = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let next = if current == 0.0 || rtt > current {
            rtt
        } else {
            let elapsed = now_ns.saturating_sub(self.at_ns.load(Ordering::Relaxed)) as f64;
            let w = (-elapsed / decay_ns.max(1) as f64).exp();
            current * w + rtt * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.at_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The latency estimate in nanoseconds, `default_ns` before any measurement.
    pub fn latency_ns(&self, default_ns: u64) -> f64 {
        let v = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        if v == 0.0 { default_ns as f64 } else { v }
    }
}

/// The loads of the endpoints a balancer chooses among, by endpoint index: what the
/// least-request and peak-EWMA balancers read. An endpoint without a load reads as idle.
pub trait Loads {
    /// The load of endpoint `i`.
    fn load(&self, i: usize) -> Option<&EndpointLoad>;
}

/// Something that has an endpoint's load (the runtime's endpoint state, or the load
/// itself).
pub trait HasLoad {
    /// The load.
    fn endpoint_load(&self) -> &EndpointLoad;
}

impl HasLoad for EndpointLoad {
    fn endpoint_load(&self) -> &EndpointLoad {
        self
    }
}

impl<T: HasLoad + ?Sized> HasLoad for std::sync::Arc<T> {
    fn endpoint_load(&self) -> &EndpointLoad {
        (**self).endpoint_load()
    }
}

impl<T: HasLoad> Loads for [T] {
    fn load(&self, i: usize) -> Option<&EndpointLoad> {
        self.get(i).map(HasLoad::endpoint_load)
    }
}

/// No load information: every endpoint reads as idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle;

impl Loads for Idle {
    fn load(&self, _: usize) -> Option<&EndpointLoad> {
        None
    }
}

fn outstanding(loads: &(impl Loads + ?Sized), i: usize) -> u32 {
    loads.load(i).map_or(0, EndpointLoad::outstanding)
}

/// What a pick may use: randomness and, for consistent hashing, the request's hash key.
pub struct Pick<'r> {
    rng: &'r mut dyn Rng,
    /// Hash of the request's key (header, cookie, source IP or query parameter).
    pub hash: Option<u64>,
}

impl<'r> Pick<'r> {
    /// A pick with randomness only.
    pub fn new(rng: &'r mut dyn Rng) -> Self {
        Pick { rng, hash: None }
    }

    /// A pick for consistent hashing on `key`.
    pub fn with_key(rng: &'r mut dyn Rng, key: &[u8]) -> Self {
        Pick {
            rng,
            hash: Some(hash_key(key)),
        }
    }
}

/// The hash consistent hashing uses for a request key (xxHash64, seed 0).
pub fn hash_key(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Maps a uniform 64-bit value onto `0..n` without modulo bias (Lemire).
#[inline]
pub fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Picks an index with probability proportional to its weight.
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    cumulative: Box<[u64]>,
}

impl WeightedIndex {
    /// Builds from weights; zero weights are never picked. `None` when all are zero.
    pub fn new(weights: &[u32]) -> Option<Self> {
        let mut total = 0u64;
        let cumulative: Box<[u64]> = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        (total > 0).then_some(WeightedIndex { cumulative })
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Index for a uniform 64-bit random value.
    #[inline]
    pub fn pick(&self, random: u64) -> usize {
        let x = below(random, self.total());
        self.cumulative.partition_point(|c| *c <= x)
    }
}

/// A balancer for one set of endpoints.
#[derive(Debug)]
pub enum Balancer {
    /// Round robin over a precomputed smooth weighted schedule.
    RoundRobin {
        /// Endpoint indices in order.
        schedule: Box<[u32]>,
        /// Next position.
        next: AtomicUsize,
    },
    /// Weighted random.
    Random(WeightedIndex),
    /// Power of two choices on outstanding requests.
    LeastRequest(WeightedIndex),
    /// Power of two choices on peak-EWMA cost.
    PeakEwma {
        /// Weighted choice of candidates.
        index: WeightedIndex,
        /// Default latency in nanoseconds.
        default_rtt_ns: u64,
    },
    /// A sorted ring of (hash, endpoint).
    Ring(Box<[(u64, u32)]>),
    /// A Maglev lookup table.
    Maglev(Box<[u32]>),
    /// No endpoints (or all with weight 0).
    Empty,
}

impl Balancer {
    /// Builds the balancer for endpoints identified by `ids` (`address:port`, used by
    /// consistent hashing) with `weights`.
    pub fn new<S: AsRef<str>>(algorithm: &LbAlgorithm, ids: &[S], weights: &[u32]) -> Self {
        let weights: Vec<u32> = (0..ids.len())
            .map(|i| weights.get(i).copied().unwrap_or(1))
            .collect();
        let Some(index) = WeightedIndex::new(&weights) else {
            return Balancer::Empty;
        };
        match algorithm {
            LbAlgorithm::RoundRobin | LbAlgorithm::Passthrough => Balancer::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(0),
            },
            LbAlgorithm::Random => Balancer::Random(index),
            LbAlgorithm::LeastRequest => Balancer::LeastRequest(index),
            LbAlgorithm::PeakEwma { default_rtt_ns, .. } => Balancer::PeakEwma {
                index,
                default_rtt_ns: *default_rtt_ns,
            },
            LbAlgorithm::RingHash { minimum_ring_size } => {
                Balancer::Ring(build_ring(ids, &weights, *minimum_ring_size))
            }
            LbAlgorithm::Maglev { table_size } => {
                Balancer::Maglev(build_maglev(ids, &weights, *table_size))
            }
        }
    }

    /// Picks an endpoint index; `None` without endpoints.
    pub fn pick(&self, loads: &(impl Loads + ?Sized), p: &mut Pick<'_>) -> Option<usize> {
        match self {
            Balancer::Empty => None,
            Balancer::RoundRobin { schedule, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                schedule.get(n % schedule.len()).map(|i| *i as usize)
            }
            Balancer::Random(index) => Some(index.pick(p.rng.next_u64())),
            Balancer::LeastRequest(index) => {
                let a = index.pick(p.rng.next_u64());
                let b = index.pick(p.rng.next_u64());
                Some(if outstanding(loads, b) < outstanding(loads, a) {
                    b
                } else {
                    a
                })
            }
            Balancer::PeakEwma {
                index,
                default_rtt_ns,
            } => {
                let a = index.pick(p.rng.next_u64());
                let b = index.pick(p.rng.next_u64());
                let cost = |i: usize| {
                    let latency = loads
                        .load(i)
                        .map_or(*default_rtt_ns as f64, |l| l.latency_ns(*default_rtt_ns));
                    latency * f64::from(outstanding(loads, i) + 1)
                };
                Some(if cost(b) < cost(a) { b } else { a })
            }
            Balancer::Ring(ring) => {
                let h = match p.hash {
                    Some(h) => h,
                    None => p.rng.next_u64(),
                };
                let at = ring.partition_point(|(rh, _)| *rh < h);
                let (_, i) = ring.get(at).or_else(|| ring.first())?;
                Some(*i as usize)
            }
            Balancer::Maglev(table) => {
                let h = match p.hash {
                    Some(h) => h,
                    None => p.rng.next_u64(),
                };
                let slot = p_mod(h, table.len() as u64);
                table.get(slot as usize).map(|i| *i as usize)
            }
        }
    }
}

fn p_mod(h: u64, n: u64) -> u64 {
    if n == 0 { 0 } else { h % n }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The order smooth weighted round robin (nginx's) visits endpoints in, for weights
/// reduced by their gcd (and scaled down when their sum is very large).
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let g = weights
        .iter()
        .filter(|w| **w > 0)
        .fold(0u64, |g, w| gcd(g, u64::from(*w)));
    let mut w: Vec<u64> = weights.iter().map(|x| u64::from(*x) / g.max(1)).collect();
    let mut total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total as f64 / MAX_SCHEDULE as f64;
        for x in &mut w {
            if *x > 0 {
                *x = ((*x as f64 / scale).round() as u64).max(1);
            }
        }
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

/// The ring: endpoint `id` with weight `w` owns `ceil(min_ring × w / w_min)` entries
/// `xxh64("id_k")`, k = 0, 1, ... (the lightest endpoint alone fills `min_ring`).
///
/// Unlike Envoy, which spreads a fixed ring over all endpoints, an endpoint's entries
/// depend only on its own weight: adding or removing an endpoint moves only the keys of
/// its own entries (about 1/N of keys), never reshuffles the others'. The ring is capped
/// at 8M entries (Envoy's maximum) by scaling every count down alike.
fn build_ring<S: AsRef<str>>(ids: &[S], weights: &[u32], min_ring: u64) -> Box<[(u64, u32)]> {
    let counts = ring_counts(weights, min_ring);
    let total: u64 = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
    let mut ring = Vec::with_capacity(total.min(MAX_RING) as usize + ids.len());
    let mut key = String::new();
    for (i, (id, n)) in ids.iter().zip(counts.iter().copied()).enumerate() {
        for k in 0..n {
            key.clear();
            key.push_str(id.as_ref());
            key.push('_');
            key.push_str(&k.to_string());
            ring.push((xxh64(key.as_bytes(), 0), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// The number of ring entries of each endpoint (see [`build_ring`]): at most about
/// 8M in total, whatever `min_ring` and the weights (0 for a weight of 0, else at
/// least 1).
fn ring_counts(weights: &[u32], min_ring: u64) -> Vec<u64> {
    // Clamped first, so that `min_ring × w` (at most 2^23 × 2^32) cannot overflow.
    let min_ring = min_ring.clamp(1, MAX_RING);
    let w_min = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .min()
        .unwrap_or(1);
    let counts: Vec<u64> = weights
        .iter()
        .map(|w| {
            min_ring
                .saturating_mul(u64::from(*w))
                .div_ceil(u64::from(w_min))
        })
        .collect();
    let total: u64 = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
    let scale = if total > MAX_RING {
        MAX_RING as f64 / total as f64
    } else {
        1.0
    };
    weights
        .iter()
        .zip(counts)
        .map(|(w, c)| {
            if *w == 0 {
                0
            } else {
                ((c as f64 * scale).ceil() as u64).max(1)
            }
        })
        .collect()
}

/// Maglev table (Envoy's weighted variant): each endpoint walks its permutation
/// `(offset + skip × j) mod M`, taking turns in proportion to its weight.
fn build_maglev<S: AsRef<str>>(ids: &[S], weights: &[u32], table_size: u64) -> Box<[u32]> {
    let m = if table_size < 2 {
        DEFAULT_MAGLEV_TABLE
    } else {
        table_size
    };
    let mut table = vec![u32::MAX; m as usize];
    let max_w = weights.iter().copied().max().unwrap_or(1).max(1);
    struct Entry {
        offset: u64,
        skip: u64,
        next: u64,
        weight: f64,
        target: f64,
    }
    let mut entries: Vec<(usize, Entry)> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| weights[*i] > 0)
        .map(|(i, id)| {
            let b = id.as_ref().as_bytes();
            (
                i,
                Entry {
                    offset: xxh64(b, 0) % m,
                    skip: xxh64(b, 1) % (m - 1) + 1,
                    next: 0,
                    weight: f64::from(weights[i]) / f64::from(max_w),
                    target: 0.0,
                },
            )
        })
        .collect();
    if entries.is_empty() {
        return Box::new([]);
    }
    let mut filled = 0u64;
    let mut iteration = 1.0f64;
    while filled < m {
        for (i, e) in entries.iter_mut() {
            if filled >= m {
                break;
            }
            if iteration * e.weight < e.target {
                continue;
            }
            e.target += 1.0;
            let mut c = (e.offset + e.skip * e.next) % m;
            while table[c as usize] != u32::MAX {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % m;
            }
            table[c as usize] = *i as u32;
            e.next += 1;
            filled += 1;
        }
        iteration += 1.0;
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    fn loads(n: usize) -> Vec<EndpointLoad> {
        (0..n).map(|_| EndpointLoad::new()).collect()
    }

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
            .collect()
    }

    fn counts(
        lb: &Balancer,
        load: &[EndpointLoad],
        n: usize,
        picks: usize,
        seed: u64,
    ) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[lb.pick(load, &mut Pick::new(&mut rng)).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact() {
        let lb = Balancer::new(&LbAlgorithm::RoundRobin, &ids(3), &[1, 1, 1]);
        let load = loads(3);
        assert_eq!(counts(&lb, &load, 3, 3000, 1), [1000, 1000, 1000]);
        // weighted: exactly 5:1:1 per 7 picks, interleaved (smooth)
        let lb = Balancer::new(&LbAlgorithm::RoundRobin, &ids(3), &[5, 1, 1]);
        let Balancer::RoundRobin { schedule, .. } = &lb else {
            panic!()
        };
        assert_eq!(&**schedule, &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&lb, &load, 3, 7000, 1), [5000, 1000, 1000]);
    }

    #[test]
    fn random_is_uniform_within_3_percent() {
        let n = 4;
        let lb = Balancer::new(&LbAlgorithm::Random, &ids(n), &[1; 4]);
        let load = loads(n);
        let picks = 20_000;
        for c in counts(&lb, &load, n, picks, 42) {
            let share = c as f64 / picks as f64;
            assert!((share - 0.25).abs() < 0.03, "{share}");
        }
    }

    #[test]
    fn weighted_index_honours_weights_and_skips_zero() {
        let w = WeightedIndex::new(&[90, 0, 10]).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let mut c = [0usize; 3];
        for _ in 0..20_000 {
            c[w.pick(rng.next_u64())] += 1;
        }
        assert_eq!(c[1], 0);
        let share = c[0] as f64 / 20_000.0;
        assert!((share - 0.9).abs() < 0.02, "{share}");
        assert!(WeightedIndex::new(&[0, 0]).is_none());
        assert_eq!(WeightedIndex::new(&[0, 5]).unwrap().pick(u64::MAX), 1);
        assert_eq!(WeightedIndex::new(&[3, 5]).unwrap().pick(0), 0);
    }

    #[test]
    fn least_request_favours_the_less_loaded() {
        let lb = Balancer::new(&LbAlgorithm::LeastRequest, &ids(2), &[1, 1]);
        let load = loads(2);
        for _ in 0..10 {
            load[0].begin();
        }
        let c = counts(&lb, &load, 2, 10_000, 9);
        // P2C picks the idle endpoint unless both draws hit the busy one (p = 1/4).
        let busy_share = c[0] as f64 / 10_000.0;
        assert!((busy_share - 0.25).abs() < 0.02, "{busy_share}");
        for _ in 0..10 {
            load[0].finish();
        }
        assert_eq!(load[0].outstanding(), 0);
        load[0].finish();
        assert_eq!(load[0].outstanding(), 0, "never below zero");
    }

    #[test]
    fn peak_ewma_avoids_the_slow_endpoint() {
        let algorithm = LbAlgorithm::peak_ewma();
        let lb = Balancer::new(&algorithm, &ids(2), &[1, 1]);
        let load = loads(2);
        let decay = 10_000_000_000;
        load[0].observe(200_000_000, 1, decay); // 200 ms
        load[1].observe(5_000_000, 1, decay); // 5 ms
        let c = counts(&lb, &load, 2, 10_000, 5);
        assert!(c[1] > c[0] * 2, "{c:?}");
        // a peak is believed at once; recovery decays over time
        load[1].observe(400_000_000, 2, decay);
        assert!(load[1].latency_ns(0) >= 400_000_000.0);
        load[1].observe(1_000_000, 20_000_000_000, decay);
        assert!(load[1].latency_ns(0) < 100_000_000.0);
    }

    fn owners(lb: &Balancer, ids: &[String], keys: usize) -> Vec<String> {
        let load = loads(ids.len());
        let mut rng = StdRng::seed_from_u64(0);
        (0..keys)
            .map(|k| {
                let key = format!("user-{k}");
                let i = lb
                    .pick(
                        load.as_slice(),
                        &mut Pick::with_key(&mut rng, key.as_bytes()),
                    )
                    .unwrap();
                ids[i].clone()
            })
            .collect()
    }

    fn moved_share(algorithm: &LbAlgorithm, n: usize) -> (f64, f64) {
        let keys = 20_000;
        let before_ids = ids(n);
        let before = owners(
            &Balancer::new(algorithm, &before_ids, &vec![1; n]),
            &before_ids,
            keys,
        );
        let added_ids = ids(n + 1);
        let added = owners(
            &Balancer::new(algorithm, &added_ids, &vec![1; n + 1]),
            &added_ids,
            keys,
        );
        let removed_ids: Vec<String> = before_ids[1..].to_vec();
        let removed = owners(
            &Balancer::new(algorithm, &removed_ids, &vec![1; n - 1]),
            &removed_ids,
            keys,
        );
        let share = |a: &[String], b: &[String]| {
            a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / keys as f64
        };
        (share(&before, &added), share(&before, &removed))
    }

    #[test]
    fn ring_hash_moves_about_one_nth_of_keys() {
        for n in [5, 10] {
            let (added, removed) = moved_share(&LbAlgorithm::ring_hash(None), n);
            let ideal_add = 1.0 / (n + 1) as f64;
            let ideal_rm = 1.0 / n as f64;
            // Tolerance: the ring's variance at 1024 entries; well under "rehash everything".
            assert!(
                added < ideal_add * 1.6,
                "n={n} added {added} ideal {ideal_add}"
            );
            assert!(
                removed < ideal_rm * 1.6,
                "n={n} removed {removed} ideal {ideal_rm}"
            );
        }
    }

    #[test]
    fn maglev_moves_about_one_nth_of_keys() {
        for n in [5, 10] {
            let (added, removed) = moved_share(&LbAlgorithm::Maglev { table_size: 65537 }, n);
            let ideal_add = 1.0 / (n + 1) as f64;
            let ideal_rm = 1.0 / n as f64;
            assert!(
                added < ideal_add * 1.6,
                "n={n} added {added} ideal {ideal_add}"
            );
            assert!(
                removed < ideal_rm * 1.6,
                "n={n} removed {removed} ideal {ideal_rm}"
            );
        }
    }

    #[test]
    fn consistent_hashes_are_stable_and_balanced() {
        for algorithm in [
            LbAlgorithm::ring_hash(Some(1024)),
            LbAlgorithm::Maglev { table_size: 65537 },
        ] {
            let n = 4;
            let a = owners(&Balancer::new(&algorithm, &ids(n), &[1; 4]), &ids(n), 8000);
            let b = owners(&Balancer::new(&algorithm, &ids(n), &[1; 4]), &ids(n), 8000);
            assert_eq!(a, b, "same key, same endpoint, every time");
            for id in ids(n) {
                let share = a.iter().filter(|x| **x == id).count() as f64 / 8000.0;
                assert!((share - 0.25).abs() < 0.08, "{algorithm:?} {id} {share}");
            }
        }
        // A known key lands on a known endpoint in every process (fixed-seed xxHash64).
        assert_eq!(hash_key(b"jason"), xxh64(b"jason", 0));
    }

    #[test]
    fn weights_shape_consistent_hashing() {
        let idv = ids(2);
        for algorithm in [
            LbAlgorithm::ring_hash(None),
            LbAlgorithm::Maglev { table_size: 65537 },
        ] {
            let o = owners(&Balancer::new(&algorithm, &idv, &[3, 1]), &idv, 8000);
            let share = o.iter().filter(|x| **x == idv[0]).count() as f64 / 8000.0;
            assert!((share - 0.75).abs() < 0.08, "{algorithm:?} {share}");
        }
    }

    /// `minimumRingSize` is clamped before it is multiplied: no overflow, no panic, and
    /// the ring stays within Envoy's 8M maximum, whatever the value.
    #[test]
    fn huge_minimum_ring_sizes_are_clamped() {
        assert_eq!(
            LbAlgorithm::ring_hash(Some(u64::MAX)),
            LbAlgorithm::RingHash {
                minimum_ring_size: MAX_RING
            }
        );
        assert_eq!(
            LbAlgorithm::ring_hash(Some(0)),
            LbAlgorithm::RingHash {
                minimum_ring_size: DEFAULT_MIN_RING
            }
        );
        // (weights, minimum ring size)
        let table: &[(&[u32], u64)] = &[
            (&[u32::MAX, 1], u64::MAX),
            (&[u32::MAX, u32::MAX, 1], 1 << 40),
            (&[1, 1], u64::MAX),
            (&[u32::MAX, 0], MAX_RING),
            (&[3, 1], 0),
        ];
        for (weights, min_ring) in table {
            let counts = ring_counts(weights, *min_ring);
            let total: u64 = counts.iter().sum();
            assert!(
                total <= MAX_RING + weights.len() as u64,
                "{weights:?} {min_ring}: {total}"
            );
            for (w, c) in weights.iter().zip(&counts) {
                assert_eq!(*c == 0, *w == 0, "{weights:?} {min_ring}: {counts:?}");
            }
        }
        assert_eq!(ring_counts(&[3, 1], 1024), [3072, 1024]);
    }

    #[test]
    fn empty_sets_pick_nothing() {
        let load = loads(0);
        let mut rng = StdRng::seed_from_u64(0);
        for algorithm in [
            LbAlgorithm::RoundRobin,
            LbAlgorithm::Random,
            LbAlgorithm::LeastRequest,
            LbAlgorithm::ring_hash(None),
        ] {
            let lb = Balancer::new(&algorithm, &Vec::<String>::new(), &[]);
            assert!(lb.pick(load.as_slice(), &mut Pick::new(&mut rng)).is_none());
            let zero = Balancer::new(&algorithm, &ids(2), &[0, 0]);
            assert!(
                zero.pick(load.as_slice(), &mut Pick::new(&mut rng))
                    .is_none()
            );
        }
    }
}
