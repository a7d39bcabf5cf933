//! Local rate limiting: Envoy's local rate limit filter and `LocalRateLimitPolicy`,
//! enforced in-process.
//!
//! # The token bucket
//!
//! Envoy's local rate limit filter refills its buckets continuously since Envoy 1.31
//! (`AtomicTokenBucketImpl`; the timer-based bucket that added `tokens_per_fill` at each
//! `fill_interval` tick was removed): a bucket holds at most `max_tokens` tokens, starts
//! full, and gains `tokens_per_fill` tokens per `fill_interval`, spread evenly over the
//! interval. [`TokenBucket`] keeps exactly that, as GCRA does: its whole state is one
//! `AtomicU64`, the time at which the bucket is full again (Envoy keeps the time at which
//! it was empty, a `double`). Taking a token moves that time forward by the cost of one
//! token; a check is one load and, when a token is taken, one compare-and-swap — no lock,
//! no allocation. Time is counted in integer units of `1/scale` nanoseconds, where
//! `scale = tokens_per_fill / gcd(fill_interval, tokens_per_fill)`, so that a token costs
//! a whole number of units and refills are exact (`1s / 3` is not rounded to
//! 333 333 333 ns). Over any run of checks up to time `t` (nanoseconds from the bucket's
//! making), at most `max_tokens + floor(t × tokens_per_fill / fill_interval)` are
//! admitted, and exactly that many when requests keep coming (often enough that the
//! bucket never sits full: time spent full is lost, in Envoy too). A configuration whose scale would exceed
//! 16 (a `tokens_per_fill` sharing no factor with the interval, above 16) takes the cost
//! rounded up to a sixteenth of a nanosecond instead: never more than the rate, at worst
//! one token a few nanoseconds late.
//!
//! `governor` implements the same GCRA, but counts its replenish period in whole
//! nanoseconds (a rounded rate), has no bucket that refuses everything (`max_tokens: 0`),
//! and gives neither the tokens left nor the time to the next one in the form the
//! `x-ratelimit-*` headers need; the bucket is also the state kept across reloads, so it
//! is our own.
//!
//! # State across reloads
//!
//! The buckets of a compiled configuration are attached to it on its first request
//! ([`StateSlot`](mesh_core::ratelimit::StateSlot)) from the runtime's table
//! ([`LocalRateLimiters`]), keyed by the configuration's stable key (the workload, the
//! resource, where in it) and its buckets' parameters: a reload that leaves a limit
//! unchanged keeps its buckets, a changed limit starts full. Entries no configuration
//! holds are dropped once their buckets are full again (a full bucket and a new one are
//! the same).
//!
//! # Per request
//!
//! The inbound layer and the gateway run a workload's local filters in order — EnvoyFilter-inserted filters,
//! then LocalRateLimitPolicies — before authentication and authorization, as Istio's
//! task places Envoy's filter first in the inbound chain. For each: the configuration in
//! force for the route, `filter_enabled` (a random draw only below 100 %), the matched
//! descriptors (built only when the configuration has some) consumed smallest fill rate
//! first, then the default bucket when nothing matched or with
//! `always_consume_default_token_bucket`. A limited request is refused with Envoy's local
//! reply (`429`, body `local_rate_limited`, the configured response headers, response
//! flag `RL`) when `filter_enforced` draws it, and otherwise
//! let through with `request_headers_to_add_when_not_enforced`, and counted
//! ([`LocalCounters`]). With `DRAFT_VERSION_03`, `x-ratelimit-limit`, `-remaining` and
//! `-reset` are set on the response, from the bucket at decision time.
//!
//! A `LocalRateLimitPolicy` takes a token from the caller's bucket (its override's,
//! shared by the override's service accounts, else its identity's: one per SPIFFE ID,
//! one shared by every caller without a verified identity — plaintext callers, and every
//! caller of a gateway), then from `total`; a caller refused by its own bucket takes no
//! token of `total`. Identity buckets are made on a caller's first request; past
//! [`MAX_IDENTITY_BUCKETS`] callers of one workload, those full again are forgotten, and
//! callers beyond share one bucket.
//!
//! ```
//! use std::time::Duration;
//! use mesh_config::model::envoy_ratelimit::TokenBucket as Spec;
//! use mesh_tower::ratelimit::local::TokenBucket;
//!
//! // Istio's task: 4 tokens, 4 more every 60 s (one every 15 s).
//! let b = TokenBucket::new(&Spec { max_tokens: 4, tokens_per_fill: 4, fill_interval: Duration::from_secs(60) });
//! let s = 1_000_000_000;
//! let admitted = (0..10).filter(|_| b.try_acquire(0).allowed).count();
//! assert_eq!(admitted, 4);
//! assert!(!b.try_acquire(15 * s - 1).allowed);
//! assert!(b.try_acquire(15 * s).allowed);
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use mesh_core::RequestHead;
use mesh_core::ratelimit::{
    BucketSpec, CallerLimit, DescriptorRequest, EnvoyLocalFilter, LocalConfig, LocalConfigInstance,
    LocalFilter, PolicyLimit, RateLimits, RouteContext, UNAUTHENTICATED,
};

use crate::flags::ResponseFlags;
use crate::identity::PeerIdentity;
use crate::transport::accept::PeerAddr;

/// Envoy's body of a locally rate limited request.
pub const LOCAL_RATE_LIMITED: &str = "local_rate_limited";

/// Scales above this are approximated (see the module documentation).
const MAX_SCALE: u64 = 16;

/// Nanoseconds on the mesh's monotonic clock (since the first call in the process).
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A lock-free token bucket with Envoy's continuous refill (see the module
/// documentation). Times are nanoseconds on one clock, passed in.
#[derive(Debug)]
pub struct TokenBucket {
    /// When the bucket is full again, in units of `1/scale` ns.
    tat: AtomicU64,
    /// Units per token.
    cost: u64,
    /// Units of a full bucket (`max_tokens × cost`).
    capacity: u64,
    /// Units per nanosecond.
    scale: u64,
    max_tokens: u32,
}

/// The outcome of [`TokenBucket::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// A token was taken.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Nanoseconds until a token is available (0 when one is).
    pub next_token_nanos: u64,
}

impl TokenBucket {
    /// A full bucket of `spec`.
    pub fn new(spec: &BucketSpec) -> Self {
        let interval = u64::try_from(spec.fill_interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let per_fill = u64::from(spec.tokens_per_fill.max(1));
        let g = gcd(interval, per_fill);
        let (mut scale, mut cost) = (per_fill / g, interval / g);
        if scale > MAX_SCALE {
            scale = MAX_SCALE;
            let exact = u128::from(interval) * u128::from(MAX_SCALE);
            cost = u64::try_from(exact.div_ceil(u128::from(per_fill)))
                .unwrap_or(u64::MAX)
                .max(1);
        }
        let capacity = u64::try_from(u128::from(spec.max_tokens) * u128::from(cost))
            .unwrap_or(u64::MAX)
            .min(u64::MAX / 2);
        TokenBucket {
            tat: AtomicU64::new(0),
            cost,
            capacity,
            scale,
            max_tokens: spec.max_tokens,
        }
    }

    /// The most tokens it holds.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    fn units(&self, now: u64) -> u64 {
        now.saturating_mul(self.scale)
    }

    fn outcome(&self, allowed: bool, tat: u64, now: u64) -> Acquired {
        let debt = tat.saturating_sub(now).min(self.capacity);
        let available = self.capacity - debt;
        let remaining = available / self.cost;
        let next_token_nanos = if remaining >= 1 || self.max_tokens == 0 {
            0
        } else {
            (self.cost - available).div_ceil(self.scale)
        };
        Acquired {
            allowed,
            remaining,
            next_token_nanos,
        }
    }

    /// Takes a token at `now` (in units): `Ok` with the new state, or `Err` with the
    /// state that has no token.
    fn take(&self, now: u64) -> Result<u64, u64> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        if self.max_tokens == 0 {
            return Err(tat);
        }
        loop {
            let new_tat = tat.max(now).saturating_add(self.cost);
            if new_tat - now > self.capacity {
                return Err(tat);
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(new_tat),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes a token at time `now` (nanoseconds), if there is one: true when taken.
    pub fn acquire(&self, now: u64) -> bool {
        self.take(self.units(now)).is_ok()
    }

    /// [`acquire`](Self::acquire), with the tokens left and the time to the next one.
    pub fn try_acquire(&self, now: u64) -> Acquired {
        let now = self.units(now);
        match self.take(now) {
            Ok(tat) => self.outcome(true, tat, now),
            Err(tat) => self.outcome(false, tat, now),
        }
    }

    /// The bucket as it is at `now`, without taking a token.
    pub fn peek(&self, now: u64) -> Acquired {
        let now = self.units(now);
        self.outcome(false, self.tat.load(Ordering::Relaxed), now)
    }

    /// True when the bucket is full at `now` (the same as a new bucket).
    pub fn is_full(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= self.units(now)
    }
}

/// Counters of a local rate limit configuration, as Envoy's `http_local_rate_limit`
/// statistics count (`enabled`, the requests checked, is `ok + rate_limited`: one
/// increment per request).
#[derive(Debug, Default)]
pub struct LocalCounters {
    /// Requests admitted.
    pub ok: AtomicU64,
    /// Requests over the limit (refused or not).
    pub rate_limited: AtomicU64,
    /// Requests over the limit that were refused (`filter_enforced`).
    pub enforced: AtomicU64,
}

/// A snapshot of [`LocalCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Requests checked.
    pub enabled: u64,
    /// Requests admitted.
    pub ok: u64,
    /// Requests over the limit.
    pub rate_limited: u64,
    /// Requests refused.
    pub enforced: u64,
}

impl LocalCounters {
    fn snapshot(&self) -> CounterSnapshot {
        let ok = self.ok.load(Ordering::Relaxed);
        let rate_limited = self.rate_limited.load(Ordering::Relaxed);
        CounterSnapshot {
            enabled: ok + rate_limited,
            ok,
            rate_limited,
            enforced: self.enforced.load(Ordering::Relaxed),
        }
    }
}

/// The buckets of one Envoy local rate limit configuration of one workload.
#[derive(Debug)]
pub struct ConfigBuckets {
    default: Option<TokenBucket>,
    descriptors: Vec<TokenBucket>,
    counters: LocalCounters,
}

/// What a configuration decided of a request.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    allowed: bool,
    /// The bucket the `x-ratelimit-*` headers describe.
    context: Option<(u32, Acquired)>,
}

impl ConfigBuckets {
    fn new(config: &LocalConfig) -> Self {
        ConfigBuckets {
            default: config.token_bucket.as_ref().map(TokenBucket::new),
            descriptors: config
                .descriptors
                .iter()
                .map(|d| TokenBucket::new(&d.bucket))
                .collect(),
            counters: LocalCounters::default(),
        }
    }

    fn is_full(&self, now: u64) -> bool {
        self.default.as_ref().is_none_or(|b| b.is_full(now))
            && self.descriptors.iter().all(|b| b.is_full(now))
    }

    /// Envoy's `LocalRateLimiterImpl::requestAllowed`: the matched descriptors' buckets
    /// in order (a refusal stops there; tokens already taken stay taken), then the default
    /// bucket when nothing matched or `always_consume`; no default bucket admits.
    /// With `detail`, the result describes a bucket for the `x-ratelimit-*` headers.
    fn request_allowed(
        &self,
        matched: &[usize],
        always_consume: bool,
        now: u64,
        detail: bool,
    ) -> Allowed {
        let acquire = |b: &TokenBucket| {
            if detail {
                b.try_acquire(now)
            } else {
                Acquired {
                    allowed: b.acquire(now),
                    remaining: 0,
                    next_token_nanos: 0,
                }
            }
        };
        let mut first: Option<(u32, Acquired)> = None;
        for &i in matched {
            let Some(b) = self.descriptors.get(i) else {
                continue;
            };
            let a = acquire(b);
            if !a.allowed {
                return Allowed {
                    allowed: false,
                    context: Some((b.max_tokens(), a)),
                };
            }
            first.get_or_insert((b.max_tokens(), a));
        }
        if matched.is_empty() || always_consume {
            let Some(d) = &self.default else {
                return Allowed {
                    allowed: true,
                    context: first,
                };
            };
            let a = acquire(d);
            if !a.allowed {
                return Allowed {
                    allowed: false,
                    context: Some((d.max_tokens(), a)),
                };
            }
            return Allowed {
                allowed: true,
                context: first.or(Some((d.max_tokens(), a))),
            };
        }
        Allowed {
            allowed: true,
            context: first,
        }
    }

    /// Its counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

/// Most identities with a bucket of their own per policy; beyond, callers share one.
pub const MAX_IDENTITY_BUCKETS: usize = 4096;

/// The buckets of one `LocalRateLimitPolicy` of one workload.
#[derive(Debug)]
pub struct PolicyBuckets {
    total: Option<TokenBucket>,
    identity: Option<BucketSpec>,
    identities: ArcSwap<HashMap<Box<str>, Arc<TokenBucket>>>,
    /// Shared by the identities beyond [`MAX_IDENTITY_BUCKETS`].
    overflow: Option<TokenBucket>,
    overrides: Vec<TokenBucket>,
    counters: LocalCounters,
}

impl PolicyBuckets {
    fn new(p: &PolicyLimit) -> Self {
        PolicyBuckets {
            total: p.total.as_ref().map(TokenBucket::new),
            identity: p.identity,
            identities: ArcSwap::from_pointee(HashMap::new()),
            overflow: p.identity.as_ref().map(TokenBucket::new),
            overrides: p.overrides.iter().map(TokenBucket::new).collect(),
            counters: LocalCounters::default(),
        }
    }

    fn is_full(&self, now: u64) -> bool {
        self.total.as_ref().is_none_or(|b| b.is_full(now))
            && self.overrides.iter().all(|b| b.is_full(now))
            && self.overflow.as_ref().is_none_or(|b| b.is_full(now))
            && self.identities.load().values().all(|b| b.is_full(now))
    }

    /// Takes a token from the caller identity `id`'s bucket, made on its first request.
    fn acquire_identity(&self, spec: &BucketSpec, id: &str, now: u64) -> bool {
        if let Some(b) = self.identities.load().get(id) {
            return b.acquire(now);
        }
        let mut bucket: Option<Arc<TokenBucket>> = None;
        self.identities.rcu(|map| {
            let mut map = HashMap::clone(map);
            if let Some(b) = map.get(id) {
                bucket = Some(b.clone());
                return map;
            }
            if map.len() >= MAX_IDENTITY_BUCKETS {
                // A full bucket is a new one: forget those first.
                map.retain(|_, b| !b.is_full(now));
            }
            if map.len() < MAX_IDENTITY_BUCKETS {
                let b = Arc::new(TokenBucket::new(spec));
                map.insert(id.into(), b.clone());
                bucket = Some(b);
            } else {
                bucket = None;
            }
            map
        });
        match (bucket, &self.overflow) {
            (Some(b), _) => b.acquire(now),
            (None, Some(o)) => o.acquire(now),
            (None, None) => true,
        }
    }

    /// Its counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

/// One entry of the runtime's table.
#[derive(Debug, Clone)]
enum Entry {
    Config(Arc<ConfigBuckets>, Vec<Option<BucketSpec>>),
    Policy(Arc<PolicyBuckets>, Vec<Option<BucketSpec>>),
}

impl Entry {
    fn idle(&self, now: u64) -> bool {
        match self {
            Entry::Config(b, _) => Arc::strong_count(b) == 1 && b.is_full(now),
            Entry::Policy(b, _) => Arc::strong_count(b) == 1 && b.is_full(now),
        }
    }
}

/// The runtime's local rate limit buckets, by stable key (see the module
/// documentation). Looked up once per configuration and key, on its first request.
#[derive(Debug, Default)]
pub struct LocalRateLimiters {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
}

impl LocalRateLimiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep(map: &mut HashMap<Arc<str>, Entry>, now: u64) {
        map.retain(|_, e| !e.idle(now));
    }

    /// The buckets of configuration `instance`: those it had before the last reload if
    /// its buckets are the same, else new full ones.
    pub fn config_buckets(&self, instance: &LocalConfigInstance) -> Arc<ConfigBuckets> {
        let c = &instance.config;
        let fingerprint: Vec<Option<BucketSpec>> = std::iter::once(c.token_bucket)
            .chain(c.descriptors.iter().map(|d| Some(d.bucket)))
            .collect();
        let mut map = self.lock();
        if let Some(Entry::Config(b, f)) = map.get(&instance.key)
            && *f == fingerprint
        {
            return b.clone();
        }
        Self::sweep(&mut map, now_nanos());
        let b = Arc::new(ConfigBuckets::new(c));
        map.insert(instance.key.clone(), Entry::Config(b.clone(), fingerprint));
        b
    }

    /// The buckets of policy `p` (see [`config_buckets`](Self::config_buckets)).
    pub fn policy_buckets(&self, p: &PolicyLimit) -> Arc<PolicyBuckets> {
        let fingerprint: Vec<Option<BucketSpec>> = [p.total, p.identity]
            .into_iter()
            .chain(p.overrides.iter().map(|o| Some(*o)))
            .collect();
        let mut map = self.lock();
        if let Some(Entry::Policy(b, f)) = map.get(&p.key)
            && *f == fingerprint
        {
            return b.clone();
        }
        Self::sweep(&mut map, now_nanos());
        let b = Arc::new(PolicyBuckets::new(p));
        map.insert(p.key.clone(), Entry::Policy(b.clone(), fingerprint));
        b
    }

    /// The counters of every configuration and policy with buckets, by key
    /// (`<workload>.<namespace>|<resource>|<where>`).
    pub fn counters(&self) -> Vec<(Arc<str>, CounterSnapshot)> {
        let map = self.lock();
        let mut out: Vec<(Arc<str>, CounterSnapshot)> = map
            .iter()
            .map(|(k, e)| {
                let c = match e {
                    Entry::Config(b, _) => b.counters(),
                    Entry::Policy(b, _) => b.counters(),
                };
                (k.clone(), c)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The number of entries (configurations and policies with buckets).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no configuration has buckets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `x-ratelimit-*` headers of a response (Envoy's `DRAFT_VERSION_03`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XRateLimit {
    /// `x-ratelimit-limit`: the bucket's size.
    pub limit: u32,
    /// `x-ratelimit-remaining`: whole tokens left.
    pub remaining: u64,
    /// `x-ratelimit-reset`: seconds until a token is available (Envoy's whole seconds,
    /// rounded down).
    pub reset: u64,
}

impl XRateLimit {
    fn of(limit: u32, a: &Acquired) -> Self {
        let ms = a.next_token_nanos.div_ceil(1_000_000);
        XRateLimit {
            limit,
            remaining: a.remaining,
            reset: ms / 1000,
        }
    }

    /// Sets the headers on `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        headers.insert(LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET.clone(), HeaderValue::from(self.reset));
    }
}

/// What the local rate limits decided of a request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// It may proceed; with the `x-ratelimit-*` headers its response gets.
    Pass(Option<XRateLimit>),
    /// It is refused with this response.
    Refuse(Response<Bytes>),
}

/// A uniform draw in `[0, 1 000 000)`, made only for a fraction below 100 %.
fn draw_below(per_million: u32) -> bool {
    if per_million >= 1_000_000 {
        return true;
    }
    if per_million == 0 {
        return false;
    }
    rand::random_range(0..1_000_000u32) < per_million
}

/// Envoy's local reply to a limited request: `status` with the body
/// `local_rate_limited` (and, unlike the global filter's, no `x-envoy-ratelimited`); to a
/// gRPC request, HTTP 200 with `grpc-status` UNAVAILABLE (14), or RESOURCE_EXHAUSTED (8)
/// when configured.
fn refusal(
    grpc: bool,
    status: StatusCode,
    resource_exhausted: bool,
    headers: &[mesh_core::ratelimit::HeaderAdd],
    x: Option<XRateLimit>,
) -> Response<Bytes> {
    let mut resp = local_reply(
        grpc,
        status,
        resource_exhausted,
        LOCAL_RATE_LIMITED,
        ResponseFlags::RATE_LIMITED,
    );
    let h = resp.headers_mut();
    for add in headers {
        add.apply(h);
    }
    if let Some(x) = x {
        x.apply(h);
    }
    resp
}

/// A rate limit filter's local reply: `status` with `body` (as `text/plain` when not
/// empty); to a gRPC request, HTTP 200 with the `grpc-status` Envoy maps `status` to
/// (RESOURCE_EXHAUSTED when `resource_exhausted`) and `body` as `grpc-message`. `flag`
/// is recorded.
pub(crate) fn local_reply(
    grpc: bool,
    status: StatusCode,
    resource_exhausted: bool,
    body: &'static str,
    flag: ResponseFlags,
) -> Response<Bytes> {
    let mut resp = if grpc {
        let code = if resource_exhausted {
            8
        } else {
            crate::error::grpc_status(status)
        };
        let mut resp = Response::new(Bytes::new());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code));
        if !body.is_empty() {
            h.insert("grpc-message", HeaderValue::from_static(body));
        }
        resp
    } else {
        let mut resp = Response::new(Bytes::from_static(body.as_bytes()));
        *resp.status_mut() = status;
        if !body.is_empty() {
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        resp
    };
    ResponseFlags::record(&mut resp, flag);
    resp
}

/// The cluster a request's route sends to (`destination_cluster` descriptors).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RouteCluster<'a> {
    /// Istio's inbound cluster of a port, `inbound|<port>||`.
    Inbound(u16),
    /// A cluster by its Envoy name.
    Named(&'a str),
    /// None (a redirect, a direct response).
    None,
}

/// What [`check`] reads of a request besides its headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestInfo<'a> {
    /// The route.
    pub(crate) route: RouteContext<'a>,
    /// The port the request is addressed to (for the request head).
    pub(crate) port: u16,
    /// The cluster the route sends to.
    pub(crate) cluster: RouteCluster<'a>,
}

/// Calls `f` with what rate limit actions read of `req` on `info`'s route.
pub(crate) fn with_descriptor_request<B, R>(
    limits: &RateLimits,
    info: &RequestInfo<'_>,
    req: &Request<B>,
    f: impl FnOnce(&DescriptorRequest<'_>) -> R,
) -> R {
    thread_local! {
        /// Istio's inbound cluster name, written per request without allocating.
        static INBOUND: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    let head = RequestHead::from_request(req, info.port);
    let with = |destination_cluster: Option<&str>| {
        f(&DescriptorRequest {
            head: &head,
            remote_address: req.extensions().get::<PeerAddr>().map(|p| p.0.ip()),
            destination_cluster,
            source_cluster: limits.source_cluster(),
        })
    };
    match info.cluster {
        RouteCluster::Inbound(port) => {
            // Taken out of the thread's slot while `f` runs, put back after.
            let mut name = INBOUND.with_borrow_mut(std::mem::take);
            name.clear();
            let _ = write!(name, "inbound|{port}||");
            let result = with(Some(&name));
            INBOUND.with_borrow_mut(|slot| *slot = name);
            result
        }
        RouteCluster::Named(name) => with(Some(name)),
        RouteCluster::None => with(None),
    }
}

/// Runs the local rate limit filters of `limits` on `req` (see the module
/// documentation). `limiters` is the runtime's table.
pub(crate) fn check<B>(
    limiters: &LocalRateLimiters,
    limits: &RateLimits,
    info: &RequestInfo<'_>,
    req: &mut Request<B>,
) -> Verdict {
    let mut x: Option<XRateLimit> = None;
    for filter in limits.local() {
        let verdict = match filter {
            LocalFilter::Envoy(f) => envoy_filter(limiters, limits, f, info, req, &mut x),
            LocalFilter::Policy(p) => policy(limiters, p, req),
        };
        if let Some(refusal) = verdict {
            return Verdict::Refuse(refusal);
        }
    }
    Verdict::Pass(x)
}

fn envoy_filter<B>(
    limiters: &LocalRateLimiters,
    limits: &RateLimits,
    f: &EnvoyLocalFilter,
    info: &RequestInfo<'_>,
    req: &mut Request<B>,
    x: &mut Option<XRateLimit>,
) -> Option<Response<Bytes>> {
    let instance = f.resolve(&info.route)?;
    let config = &instance.config;
    if !draw_below(config.enabled_per_million) {
        return None;
    }
    let buckets = instance
        .state
        .get_or_init(|| limiters.config_buckets(instance))?;
    let matched = if config.has_descriptors() {
        with_descriptor_request(limits, info, req, |desc| {
            f.matched_descriptors(config, &info.route, desc)
        })
    } else {
        Vec::new()
    };
    let now = now_nanos();
    let result = buckets.request_allowed(
        &matched,
        config.always_consume_default_token_bucket,
        now,
        config.x_ratelimit_headers,
    );
    let headers = if config.x_ratelimit_headers {
        result.context.map(|(limit, a)| XRateLimit::of(limit, &a))
    } else {
        None
    };
    if result.allowed {
        buckets.counters.ok.fetch_add(1, Ordering::Relaxed);
        if headers.is_some() {
            *x = headers;
        }
        return None;
    }
    buckets
        .counters
        .rate_limited
        .fetch_add(1, Ordering::Relaxed);
    if !draw_below(config.enforced_per_million) {
        for add in &config.request_headers_when_not_enforced {
            add.apply(req.headers_mut());
        }
        if headers.is_some() {
            *x = headers;
        }
        return None;
    }
    buckets.counters.enforced.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(key = %instance.key, "local_rate_limited");
    Some(refusal(
        crate::inbound::is_grpc(req.headers()),
        config.status,
        config.rate_limited_as_resource_exhausted,
        &config.response_headers,
        headers,
    ))
}

fn policy<B>(
    limiters: &LocalRateLimiters,
    p: &PolicyLimit,
    req: &Request<B>,
) -> Option<Response<Bytes>> {
    let buckets = p.state.get_or_init(|| limiters.policy_buckets(p))?;
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .map(|i| i.spiffe_id().as_str());
    let now = now_nanos();
    let caller_ok = match p.caller_limit(peer) {
        CallerLimit::Override(i) => buckets.overrides.get(i).is_none_or(|b| b.acquire(now)),
        CallerLimit::Identity => match &buckets.identity {
            Some(spec) => buckets.acquire_identity(spec, peer.unwrap_or(UNAUTHENTICATED), now),
            None => true,
        },
        CallerLimit::None => true,
    };
    let allowed = caller_ok && buckets.total.as_ref().is_none_or(|b| b.acquire(now));
    if allowed {
        buckets.counters.ok.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    buckets
        .counters
        .rate_limited
        .fetch_add(1, Ordering::Relaxed);
    buckets.counters.enforced.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(key = %p.key, caller = peer.unwrap_or("<unauthenticated>"), "local_rate_limited");
    Some(refusal(
        crate::inbound::is_grpc(req.headers()),
        StatusCode::TOO_MANY_REQUESTS,
        false,
        &[],
        None,
    ))
}

#[cfg(test)]
mod tests;
