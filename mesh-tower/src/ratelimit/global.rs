//! Global rate limiting on Redis, with the semantics of Envoy's rate-limit service.
//!
//! Istio's global rate limits are enforced by Envoy's `ratelimit` filter asking Envoy's
//! rate-limit service (`envoyproxy/ratelimit`), which counts in Redis. The mesh asks Redis
//! itself, saving the extra hop, and decides exactly as the service does:
//!
//! - each request descriptor (a list of key/value entries) is matched through the
//!   configuration's nested descriptors: at each level `key_value` first, then a wildcard
//!   value (`*` matches any run of characters), then the key alone; the limit applies only
//!   when the request's descriptor ends at the entry that has it (same depth);
//! - `unlimited` limits are answered without counting, a limit named in another matched
//!   limit's `replaces` is dropped, `shadow_mode` admits but counts, `quota_mode` refuses
//!   only when every quota is exhausted;
//! - fixed windows: the counter is the service's key, `{prefix}{domain}_{key}_{value}_..._
//!   {window start}`, incremented with `INCRBY` and given an `EXPIRE` in one pipelined round
//!   trip for all descriptors; a descriptor is over its limit when the count after the
//!   increment exceeds `requests_per_unit`, and the request is over the limit when any
//!   descriptor is. The keys are the service's own, so mesh processes and Envoy proxies
//!   using the service can share one Redis and one set of counters;
//! - the local over-limit cache (the service's `LOCAL_CACHE_SIZE_IN_BYTES`): a key found
//!   over its limit is answered locally until its window ends, without a round trip.
//!
//! Redis unreachable or slow gives [`Verdict::Error`] within the configured timeout; the
//! caller fails open (Envoy's default) or closed. The connection is re-established in the
//! background with exponential backoff; between attempts checks fail at once instead of
//! each waiting for the timeout (the reason the limiter keeps its own `redis`
//! multiplexed connection rather than the crate's `ConnectionManager`, whose commands all
//! wait for a reconnection in progress). Errors and reconnects are counted
//! ([`GlobalStats`]) and logged at most once per [`LOG_INTERVAL`].
//!
//! Per check: one `Arc` clone of the configuration, the cache keys written into a reused
//! thread-local buffer (no allocation when the local cache answers), and the pipeline
//! and its reply when Redis is asked. No lock is held across an await.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_config::rls::RlsConfig;
//! use mesh_tower::ratelimit::global::{Descriptor, GlobalRateLimiter, RedisSettings, Verdict};
//!
//! let config = RlsConfig::parse_str("config.yaml", "
//! domain: ratelimit
//! descriptors:
//!   - key: PATH
//!     value: /productpage
//!     rate_limit: {unit: minute, requests_per_unit: 1}
//! ").config.expect("valid");
//! let limiter = GlobalRateLimiter::new(config, RedisSettings::new("redis://127.0.0.1:6379"))?;
//! let path = [Descriptor::new([("PATH", "/productpage")])];
//! match limiter.should_rate_limit("ratelimit", &path, 1).await {
//!     Verdict::Ok { .. } => { /* admit */ }
//!     Verdict::OverLimit { .. } => { /* 429 */ }
//!     Verdict::Error(e) => { /* fail open (Envoy's default) or closed */ eprintln!("{e}") }
//! }
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use foldhash::{HashMap, HashMapExt};
use mesh_config::rls::{RlsConfig, RlsDescriptor};
use redis::aio::MultiplexedConnection;
use smallvec::SmallVec;
use tokio::sync::Notify;

pub use mesh_config::rls::RateLimitUnit;

/// The shortest time between two log lines about Redis errors; the errors in between are
/// counted and reported with the next line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Consecutive timeouts after which the connection is considered dead and replaced (a
/// half-open TCP connection never answers nor fails).
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// Bytes a local cache entry costs besides its key (freecache's entry header and value).
const CACHE_ENTRY_OVERHEAD: u64 = 32;

/// One request descriptor: Envoy's `RateLimitDescriptor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The entries, in order (what the route's `rate_limits` actions produced).
    pub entries: Vec<(String, String)>,
    /// Hits to add for this descriptor instead of the request's (0 checks without
    /// counting).
    pub hits_addend: Option<u64>,
    /// A limit carried by the descriptor itself, used instead of the configuration's
    /// (Envoy's descriptor `limit` override).
    pub limit: Option<LimitOverride>,
}

impl Descriptor {
    /// A descriptor of `entries`.
    pub fn new<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Descriptor {
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            hits_addend: None,
            limit: None,
        }
    }

    /// Sets the descriptor's own hits addend.
    pub fn with_hits_addend(mut self, hits: u64) -> Self {
        self.hits_addend = Some(hits);
        self
    }

    /// Sets the descriptor's own limit.
    pub fn with_limit(mut self, limit: LimitOverride) -> Self {
        self.limit = Some(limit);
        self
    }
}

impl From<Vec<(String, String)>> for Descriptor {
    /// The entries mesh-core's rate limit actions build.
    fn from(entries: Vec<(String, String)>) -> Self {
        Descriptor {
            entries,
            hits_addend: None,
            limit: None,
        }
    }
}

/// A limit a descriptor carries (Envoy's `RateLimitDescriptor.RateLimitOverride`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    /// Requests per window.
    pub requests_per_unit: u32,
    /// The window.
    pub unit: RateLimitUnit,
}

/// Where the current time comes from (Unix seconds); replaceable for tests.
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl TimeSource for SystemClock {
    fn unix_now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// How the limiter reaches Redis and the service settings it follows.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (the service's `REDIS_URL`).
    pub url: String,
    /// The longest a check waits for Redis, connection included (Envoy's filter
    /// `timeout`, 20 ms by default).
    pub timeout: Duration,
    /// The longest one connection attempt takes.
    pub connect_timeout: Duration,
    /// The first wait between reconnection attempts, doubled up to `reconnect_max_backoff`.
    pub reconnect_min_backoff: Duration,
    /// The longest wait between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Size of the local cache of keys over their limit, in bytes; 0 disables it (the
    /// service's `LOCAL_CACHE_SIZE_IN_BYTES`, 0 by default).
    pub local_cache_size_bytes: u64,
    /// The share of a limit above which hits count as near the limit (the service's
    /// `NEAR_LIMIT_RATIO`, 0.8).
    pub near_limit_ratio: f32,
    /// Prepended to every key (the service's `CACHE_KEY_PREFIX`).
    pub cache_key_prefix: String,
    /// Keys expire after their window plus a random jitter up to this (the service's
    /// `EXPIRATION_JITTER_MAX_SECONDS`, 300 s), so that they do not all expire at once.
    pub expiration_jitter_max: Duration,
    /// Every over-limit answer is turned into OK, and counted (the service's
    /// `SHADOW_MODE`).
    pub global_shadow_mode: bool,
    /// The clock windows are computed from.
    pub time_source: Arc<dyn TimeSource>,
}

impl RedisSettings {
    /// The service's defaults and Envoy's filter timeout, for Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            timeout: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(1),
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(1),
            local_cache_size_bytes: 0,
            near_limit_ratio: 0.8,
            cache_key_prefix: String::new(),
            expiration_jitter_max: Duration::from_secs(300),
            global_shadow_mode: false,
            time_source: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min_backoff", &self.reconnect_min_backoff)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("local_cache_size_bytes", &self.local_cache_size_bytes)
            .field("near_limit_ratio", &self.near_limit_ratio)
            .field("cache_key_prefix", &self.cache_key_prefix)
            .field("expiration_jitter_max", &self.expiration_jitter_max)
            .field("global_shadow_mode", &self.global_shadow_mode)
            .field("time_source", &self.time_source)
            .finish()
    }
}

/// Why a limiter cannot be built from its configuration and settings.
#[derive(Debug, thiserror::Error)]
pub enum GlobalConfigError {
    /// The Redis URL cannot be read.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// A domain is defined twice.
    #[error("domain `{0}` is defined twice")]
    DuplicateDomain(String),
    /// A domain without a name.
    #[error("a domain has an empty name")]
    EmptyDomain,
    /// A descriptor without a key.
    #[error("a descriptor of domain `{0}` has an empty key")]
    EmptyKey(String),
    /// Two descriptors with one composite key at one level.
    #[error("duplicate descriptor `{key}` in domain `{domain}`")]
    DuplicateDescriptor {
        /// The domain.
        domain: String,
        /// The composite key (`key` or `key_value`).
        key: String,
    },
    /// A limit without a unit that is not unlimited.
    #[error("the limit of `{key}` in domain `{domain}` has no unit")]
    MissingUnit {
        /// The domain.
        domain: String,
        /// The composite key.
        key: String,
    },
}

/// Why a check could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// There is no connection to Redis (it is being re-established).
    #[error("Redis is unreachable (reconnecting)")]
    Unavailable,
    /// Redis answered with an error, or the connection failed.
    #[error("Redis error: {0}")]
    Redis(#[source] redis::RedisError),
}

/// The outcome of one descriptor (Envoy's `RateLimitResponse.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// Within the limit (or no limit, or shadow mode).
    Ok,
    /// Over the limit.
    OverLimit,
}

/// The limit that applied to a descriptor (Envoy's `RateLimitResponse.RateLimit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLimit {
    /// Requests per window.
    pub requests_per_unit: u32,
    /// The window.
    pub unit: RateLimitUnit,
    /// The limit's name, when the configuration gives one.
    pub name: Option<Arc<str>>,
}

/// One descriptor's answer (Envoy's `RateLimitResponse.DescriptorStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// Within or over the limit.
    pub code: StatusCode,
    /// The limit that applied; `None` when no limit matched or the limit is unlimited.
    pub current_limit: Option<CurrentLimit>,
    /// Requests left in the window (0 over the limit, `u32::MAX` when unlimited).
    pub limit_remaining: u32,
    /// Time until the window ends, when a limit applied.
    pub duration_until_reset: Option<Duration>,
}

/// The descriptors' answers, in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statuses {
    items: SmallVec<[DescriptorStatus; 2]>,
    header: Option<usize>,
}

impl Statuses {
    /// The status the service reports in its `x-ratelimit-*` headers: the descriptor over
    /// its limit (not a quota), or else the one with the fewest requests remaining.
    pub fn header_status(&self) -> Option<&DescriptorStatus> {
        self.header.and_then(|i| self.items.get(i))
    }
}

impl Deref for Statuses {
    type Target = [DescriptorStatus];

    fn deref(&self) -> &[DescriptorStatus] {
        &self.items
    }
}

/// The answer to a check.
#[derive(Debug)]
pub enum Verdict {
    /// Admit the request.
    Ok {
        /// Per descriptor.
        statuses: Statuses,
    },
    /// Refuse it (`429`).
    OverLimit {
        /// Per descriptor.
        statuses: Statuses,
    },
    /// Redis could not answer: the caller fails open or closed.
    Error(GlobalError),
}

impl Verdict {
    /// True for [`Verdict::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok { .. })
    }

    /// True for [`Verdict::OverLimit`].
    pub fn is_over_limit(&self) -> bool {
        matches!(self, Verdict::OverLimit { .. })
    }

    /// True for [`Verdict::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Verdict::Error(_))
    }

    /// The descriptors' answers (none for an error).
    pub fn statuses(&self) -> &[DescriptorStatus] {
        match self {
            Verdict::Ok { statuses } | Verdict::OverLimit { statuses } => statuses,
            Verdict::Error(_) => &[],
        }
    }
}

/// The limiter's counters since it was built. Hit counters count hits (usually one per
/// request and descriptor), as the service's per-limit statistics do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Checks asked.
    pub checks: u64,
    /// Hits on descriptors that had a limit.
    pub total_hits: u64,
    /// Hits over a limit (shadow mode and local cache answers included).
    pub over_limit: u64,
    /// Hits over a limit answered by the local cache, without Redis.
    pub cache_hits: u64,
    /// Hits above the near-limit ratio but within the limit.
    pub near_limit: u64,
    /// Hits within the limit.
    pub within_limit: u64,
    /// Hits over a limit admitted by shadow mode (plus checks admitted by the global
    /// shadow mode).
    pub shadow_over_limit: u64,
    /// Checks that got no answer from Redis.
    pub redis_errors: u64,
    /// Connections re-established after one was lost or could not be made.
    pub reconnects: u64,
}

#[derive(Debug, Default)]
struct Counters {
    checks: AtomicU64,
    total_hits: AtomicU64,
    over_limit: AtomicU64,
    cache_hits: AtomicU64,
    near_limit: AtomicU64,
    within_limit: AtomicU64,
    shadow_over_limit: AtomicU64,
    redis_errors: AtomicU64,
    reconnects: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    fn snapshot(&self) -> GlobalStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GlobalStats {
            checks: get(&self.checks),
            total_hits: get(&self.total_hits),
            over_limit: get(&self.over_limit),
            cache_hits: get(&self.cache_hits),
            near_limit: get(&self.near_limit),
            within_limit: get(&self.within_limit),
            shadow_over_limit: get(&self.shadow_over_limit),
            redis_errors: get(&self.redis_errors),
            reconnects: get(&self.reconnects),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The configuration, compiled for matching.

#[derive(Debug, Clone)]
struct Limit {
    requests_per_unit: u32,
    unit: RateLimitUnit,
    unlimited: bool,
    shadow_mode: bool,
    quota_mode: bool,
    name: Option<Arc<str>>,
    replaces: Box<[Box<str>]>,
}

impl Limit {
    fn of_override(o: LimitOverride) -> Limit {
        Limit {
            requests_per_unit: o.requests_per_unit,
            unit: o.unit,
            unlimited: false,
            shadow_mode: false,
            quota_mode: false,
            name: None,
            replaces: Box::default(),
        }
    }
}

/// One descriptor list. Its maps use foldhash: they are built from configuration and only
/// probed with request data.
#[derive(Debug, Default)]
struct Level {
    /// By composite key: `key`, or `key_value`.
    children: HashMap<Box<str>, Entry>,
    /// Composite keys containing `*`, in configuration order.
    wildcards: Vec<Wildcard>,
}

#[derive(Debug)]
struct Wildcard {
    key: Box<str>,
    /// The key split at every `*`.
    parts: Box<[Box<str>]>,
}

#[derive(Debug)]
struct Entry {
    limit: Option<Limit>,
    share_threshold: bool,
    children: Level,
}

#[derive(Debug, Default)]
struct Compiled {
    domains: HashMap<Box<str>, Level>,
}

fn compile(config: &RlsConfig) -> Result<Compiled, GlobalConfigError> {
    let mut domains = HashMap::new();
    for d in &config.domains {
        if d.name.is_empty() {
            return Err(GlobalConfigError::EmptyDomain);
        }
        if domains.contains_key(d.name.as_str()) {
            return Err(GlobalConfigError::DuplicateDomain(d.name.clone()));
        }
        let level = compile_level(&d.name, &d.descriptors)?;
        domains.insert(d.name.clone().into_boxed_str(), level);
    }
    Ok(Compiled { domains })
}

fn compile_level(domain: &str, descriptors: &[RlsDescriptor]) -> Result<Level, GlobalConfigError> {
    let mut level = Level::default();
    for d in descriptors {
        if d.key.is_empty() {
            return Err(GlobalConfigError::EmptyKey(domain.to_string()));
        }
        let key = d.composite_key();
        if level.children.contains_key(key.as_str()) {
            return Err(GlobalConfigError::DuplicateDescriptor {
                domain: domain.to_string(),
                key,
            });
        }
        let limit = match &d.rate_limit {
            None => None,
            Some(r) => {
                let unit = match (r.unit, r.unlimited) {
                    (Some(u), _) => u,
                    (None, true) => RateLimitUnit::Second,
                    (None, false) => {
                        return Err(GlobalConfigError::MissingUnit {
                            domain: domain.to_string(),
                            key,
                        });
                    }
                };
                Some(Limit {
                    requests_per_unit: r.requests_per_unit,
                    unit,
                    unlimited: r.unlimited,
                    shadow_mode: d.shadow_mode,
                    quota_mode: d.quota_mode,
                    name: r.name.as_deref().filter(|n| !n.is_empty()).map(Arc::from),
                    replaces: r.replaces.iter().map(|n| n.as_str().into()).collect(),
                })
            }
        };
        if key.contains('*') {
            level.wildcards.push(Wildcard {
                key: key.as_str().into(),
                parts: key.split('*').map(Box::from).collect(),
            });
        }
        let children = compile_level(domain, &d.descriptors)?;
        level.children.insert(
            key.into_boxed_str(),
            Entry {
                limit,
                share_threshold: d.share_threshold,
                children,
            },
        );
    }
    Ok(level)
}

/// The service's `wildcardMatch`: `parts` is a pattern split at its `*`s; each `*`
/// matches any run of characters, in order.
fn wildcard_match(parts: &[Box<str>], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return **first == *value;
    }
    if !value.starts_with(&**first) || !value.ends_with(&**last) {
        return false;
    }
    let fixed: usize = parts.iter().map(|p| p.len()).sum();
    if value.len() < fixed {
        return false;
    }
    let Some(mut remaining) = value.get(first.len()..value.len() - last.len()) else {
        return false;
    };
    for part in parts.get(1..parts.len() - 1).unwrap_or_default() {
        match remaining.find(&**part) {
            Some(i) => remaining = remaining.get(i + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

/// Entries whose value the cache key replaces by a shared wildcard (`share_threshold`):
/// (entry index, the wildcard value).
type Shared<'a> = SmallVec<[(usize, &'a str); 1]>;

/// What the configuration says about one request descriptor (the service's `GetLimit`).
#[derive(Debug, Default)]
struct Found<'a> {
    limit: Option<&'a Limit>,
    shared: Shared<'a>,
}

fn find_limit<'a>(
    root: &'a Level,
    entries: &[(String, String)],
    scratch: &mut String,
) -> Found<'a> {
    let mut found = Found::default();
    let mut level = root;
    let last = entries.len().saturating_sub(1);
    for (i, (key, value)) in entries.iter().enumerate() {
        scratch.clear();
        scratch.push_str(key);
        scratch.push('_');
        scratch.push_str(value);
        let mut next = level.children.get(scratch.as_str());
        let mut wildcard: Option<&str> = None;
        if next.is_none()
            && let Some(w) = level
                .wildcards
                .iter()
                .find(|w| wildcard_match(&w.parts, scratch))
        {
            next = level.children.get(&w.key);
            wildcard = Some(&w.key);
        }
        if next.is_none() {
            next = level.children.get(key.as_str());
        }
        let Some(entry) = next else {
            break;
        };
        if let Some(pattern) = wildcard
            && entry.share_threshold
        {
            let value = pattern
                .strip_prefix(key.as_str())
                .and_then(|p| p.strip_prefix('_'))
                .unwrap_or(pattern);
            found.shared.push((i, value));
        }
        if i == last
            && let Some(limit) = &entry.limit
        {
            found.limit = Some(limit);
        }
        if entry.children.children.is_empty() {
            break;
        }
        level = &entry.children;
    }
    if found.limit.is_none() {
        found.shared.clear();
    }
    found
}

/// Writes the service's cache key: `{prefix}{domain}_{key}_{value}_..._{window start}`.
fn write_key(
    buf: &mut String,
    prefix: &str,
    domain: &str,
    entries: &[(String, String)],
    shared: &[(usize, &str)],
    window_start: u64,
) {
    use std::fmt::Write;
    buf.clear();
    buf.push_str(prefix);
    buf.push_str(domain);
    buf.push('_');
    for (i, (key, value)) in entries.iter().enumerate() {
        buf.push_str(key);
        buf.push('_');
        let value = shared
            .iter()
            .find(|(at, _)| *at == i)
            .map_or(value.as_str(), |(_, v)| v);
        buf.push_str(value);
        buf.push('_');
    }
    let _ = write!(buf, "{window_start}");
}

// ---------------------------------------------------------------------------------------
// One check, in three steps: plan (which limits, which keys, the local cache), Redis, and
// the answer. Planning and answering are pure, so tests can drive them without Redis.

#[derive(Debug)]
struct Slot<'a> {
    /// The limit to count against (`None`: no limit, unlimited, or replaced).
    limit: Option<Cow<'a, Limit>>,
    unlimited: bool,
    shared: Shared<'a>,
    hits: u64,
    window_start: u64,
    /// Answered over the limit by the local cache.
    cached: bool,
    /// Index of the count in Redis's reply.
    reply: Option<usize>,
}

type Slots<'a> = SmallVec<[Slot<'a>; 4]>;

/// The limits of a request's descriptors (the service's `constructLimitsToCheck`).
fn plan<'a>(
    config: &'a Compiled,
    domain: &str,
    descriptors: &[Descriptor],
    hits: u32,
    now: u64,
    scratch: &mut String,
) -> Slots<'a> {
    let root = config.domains.get(domain);
    let request_hits = u64::from(hits.max(1));
    let mut slots: Slots<'a> = descriptors
        .iter()
        .map(|d| {
            // An unknown domain has no limit, even for a descriptor carrying its own.
            let (limit, shared) = match (&d.limit, root) {
                (_, None) => (None, Shared::new()),
                (Some(o), Some(_)) => (Some(Cow::Owned(Limit::of_override(*o))), Shared::new()),
                (None, Some(root)) => {
                    let f = find_limit(root, &d.entries, scratch);
                    (f.limit.map(Cow::Borrowed), f.shared)
                }
            };
            let unit = limit.as_ref().map_or(1, |l| l.unit.seconds());
            Slot {
                unlimited: limit.as_ref().is_some_and(|l| l.unlimited),
                limit,
                shared,
                hits: d.hits_addend.unwrap_or(request_hits),
                window_start: now / unit * unit,
                cached: false,
                reply: None,
            }
        })
        .collect();
    // A named limit that another matched limit replaces is not counted; unlimited limits
    // replace too.
    for i in 0..slots.len() {
        let Some(name) = slots[i].limit.as_ref().and_then(|l| l.name.clone()) else {
            continue;
        };
        let replaced = slots
            .iter()
            .filter_map(|s| s.limit.as_ref())
            .any(|l| l.replaces.iter().any(|r| **r == *name));
        if replaced {
            slots[i].limit = None;
        }
    }
    for s in &mut slots {
        if s.unlimited {
            s.limit = None;
        }
    }
    slots
}

/// The answer from the counts Redis returned (`counts[slot.reply]`, after the increment),
/// with the service's statistics; calls `over` with each slot that went over its limit in
/// Redis (for the local cache).
fn answer(
    slots: &[Slot<'_>],
    counts: &[u64],
    now: u64,
    settings: &RedisSettings,
    stats: &Counters,
    mut over: impl FnMut(usize),
) -> Verdict {
    let mut items: SmallVec<[DescriptorStatus; 2]> = SmallVec::with_capacity(slots.len());
    let mut header: Option<(usize, u32)> = None;
    let mut failed_limits = 0usize;
    let mut failed_quotas = 0usize;
    let mut quotas = 0usize;
    for (i, slot) in slots.iter().enumerate() {
        if slot.unlimited {
            items.push(DescriptorStatus {
                code: StatusCode::Ok,
                current_limit: None,
                limit_remaining: u32::MAX,
                duration_until_reset: None,
            });
            continue;
        }
        let Some(limit) = slot.limit.as_deref() else {
            items.push(DescriptorStatus {
                code: StatusCode::Ok,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: None,
            });
            continue;
        };
        let hits = slot.hits;
        let threshold = u64::from(limit.requests_per_unit);
        let (over_limit, remaining) = if slot.cached {
            add(&stats.over_limit, hits);
            add(&stats.cache_hits, hits);
            if limit.shadow_mode {
                add(&stats.shadow_over_limit, hits);
            }
            (true, 0)
        } else {
            let after = slot.reply.and_then(|r| counts.get(r)).copied().unwrap_or(0);
            let before = after.saturating_sub(hits);
            let near = (f64::from(limit.requests_per_unit as f32 * settings.near_limit_ratio))
                .floor() as u64;
            if after > threshold {
                if before >= threshold {
                    add(&stats.over_limit, hits);
                } else {
                    add(&stats.over_limit, after - threshold);
                    add(&stats.near_limit, threshold - near.max(before));
                }
                if limit.shadow_mode {
                    let shadowed = if before >= threshold {
                        hits
                    } else {
                        after - threshold
                    };
                    add(&stats.shadow_over_limit, shadowed);
                }
                over(i);
                (true, 0)
            } else {
                if after > near {
                    add(
                        &stats.near_limit,
                        if before >= near { hits } else { after - near },
                    );
                }
                add(&stats.within_limit, hits);
                (false, u32::try_from(threshold - after).unwrap_or(u32::MAX))
            }
        };
        let code = if over_limit && !limit.shadow_mode {
            StatusCode::OverLimit
        } else {
            StatusCode::Ok
        };
        let unit = limit.unit.seconds();
        items.push(DescriptorStatus {
            code,
            current_limit: Some(CurrentLimit {
                requests_per_unit: limit.requests_per_unit,
                unit: limit.unit,
                name: limit.name.clone(),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration::from_secs(unit - now % unit)),
        });
        if remaining < header.map_or(u32::MAX, |(_, r)| r) {
            header = Some((i, remaining));
        }
        if limit.quota_mode {
            quotas += 1;
            if code == StatusCode::OverLimit {
                failed_quotas += 1;
            }
        } else if code == StatusCode::OverLimit {
            failed_limits += 1;
            header = Some((i, 0));
        }
    }
    let statuses = Statuses {
        items,
        header: header.map(|(i, _)| i),
    };
    let over = failed_limits > 0 || (quotas > 0 && quotas == failed_quotas);
    if over && settings.global_shadow_mode {
        add(&stats.shadow_over_limit, 1);
        return Verdict::Ok { statuses };
    }
    if over {
        Verdict::OverLimit { statuses }
    } else {
        Verdict::Ok { statuses }
    }
}

// ---------------------------------------------------------------------------------------
// The local cache of keys over their limit.

#[derive(Clone)]
struct KeyWeight;

impl quick_cache::Weighter<String, u64> for KeyWeight {
    fn weight(&self, key: &String, _: &u64) -> u64 {
        key.len() as u64 + CACHE_ENTRY_OVERHEAD
    }
}

/// Keys over their limit, with the end of their window (Unix seconds), bounded in bytes.
struct OverLimitCache(quick_cache::sync::Cache<String, u64, KeyWeight>);

impl OverLimitCache {
    fn new(bytes: u64) -> Option<Self> {
        (bytes > 0).then(|| {
            let items = usize::try_from(bytes / 64).unwrap_or(usize::MAX).max(16);
            OverLimitCache(quick_cache::sync::Cache::with_weighter(
                items, bytes, KeyWeight,
            ))
        })
    }

    fn is_over(&self, key: &str, now: u64) -> bool {
        self.0.get(key).is_some_and(|window_end| now < window_end)
    }

    fn insert(&self, key: &str, window_end: u64) {
        self.0.insert(key.to_string(), window_end);
    }
}

// ---------------------------------------------------------------------------------------
// The connection to Redis.

const IDLE: u8 = 0;
const CONNECTING: u8 = 1;
const UP: u8 = 2;
const DOWN: u8 = 3;

/// Lets one log line through per [`LOG_INTERVAL`] and counts the others.
struct LogGate {
    origin: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    fn new() -> Self {
        LogGate {
            origin: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn pass(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

struct Inner {
    config: ArcSwap<Compiled>,
    settings: RedisSettings,
    client: redis::Client,
    connection_config: redis::AsyncConnectionConfig,
    conn: ArcSwapOption<MultiplexedConnection>,
    /// IDLE, CONNECTING, UP or DOWN (between attempts).
    state: AtomicU8,
    /// A reconnection task is running.
    reconnecting: AtomicBool,
    /// A connection was made once (later ones are reconnects).
    was_connected: AtomicBool,
    /// Signalled when a connection attempt ends.
    attempt_done: Notify,
    consecutive_timeouts: AtomicU32,
    cache: Option<OverLimitCache>,
    stats: Counters,
    error_log: LogGate,
    /// Where the URL's credentials are hidden, for logs.
    redacted_url: String,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalRateLimiter")
            .field("redis", &self.redacted_url)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `redis://user:password@host` → `redis://*****@host` (the service's
/// `MaskCredentialsInUrl`).
fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            let scheme = if url.starts_with("rediss://") {
                "rediss://"
            } else {
                "redis://"
            };
            format!("{scheme}*****@{host}")
        }
        _ => url.to_string(),
    }
}

impl Inner {
    /// Starts a reconnection task unless one runs.
    fn ensure_connecting(self: &Arc<Self>) {
        if self
            .reconnecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reconnecting.store(false, Ordering::Release);
            return;
        };
        self.state.store(CONNECTING, Ordering::Release);
        runtime.spawn(connect_loop(Arc::downgrade(self)));
    }

    /// Drops `used` if it is still the connection in force, and reconnects.
    fn invalidate(self: &Arc<Self>, used: &Arc<MultiplexedConnection>) {
        let prev = self.conn.compare_and_swap(used, None);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, used)) {
            self.state.store(DOWN, Ordering::Release);
            self.ensure_connecting();
        }
    }

    /// The connection, waiting (until `deadline`) only for an attempt in progress.
    async fn connection(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<MultiplexedConnection>> {
        if let Some(c) = self.conn.load_full() {
            return Some(c);
        }
        let notified = self.attempt_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = self.conn.load_full() {
            return Some(c);
        }
        self.ensure_connecting();
        if self.state.load(Ordering::Acquire) == DOWN {
            // Between attempts: answer at once rather than wait for the timeout.
            return None;
        }
        tokio::time::timeout_at(deadline, notified).await.ok()?;
        self.conn.load_full()
    }

    /// Runs `pipe` within `timeout`.
    async fn query(
        self: &Arc<Self>,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<Vec<i64>, GlobalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(conn) = self.connection(deadline).await else {
            return Err(GlobalError::Unavailable);
        };
        let mut c = (*conn).clone();
        match tokio::time::timeout_at(deadline, pipe.query_async::<Vec<i64>>(&mut c)).await {
            Ok(Ok(counts)) => {
                self.consecutive_timeouts.store(0, Ordering::Relaxed);
                Ok(counts)
            }
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.invalidate(&conn);
                }
                Err(GlobalError::Redis(e))
            }
            Err(_) => {
                let n = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_RECONNECT {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.invalidate(&conn);
                }
                Err(GlobalError::Timeout(timeout))
            }
        }
    }

    fn log_error(&self, e: &GlobalError) {
        if let Some(suppressed) = self.error_log.pass() {
            tracing::warn!(
                redis = %self.redacted_url,
                error = %e,
                suppressed,
                "global rate limit check failed (the caller fails open or closed)"
            );
        }
    }
}

/// Connects, retrying with exponential backoff until a connection is made or the limiter
/// is dropped.
async fn connect_loop(inner: Weak<Inner>) {
    let mut delay = None;
    loop {
        let Some(this) = inner.upgrade() else {
            return;
        };
        this.state.store(CONNECTING, Ordering::Release);
        let attempt = tokio::time::timeout(
            this.settings.connect_timeout,
            this.client
                .get_multiplexed_async_connection_with_config(&this.connection_config),
        )
        .await;
        let error = match attempt {
            Ok(Ok(conn)) => {
                this.conn.store(Some(Arc::new(conn)));
                this.consecutive_timeouts.store(0, Ordering::Relaxed);
                this.state.store(UP, Ordering::Release);
                if this.was_connected.swap(true, Ordering::AcqRel) {
                    this.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(redis = %this.redacted_url, "reconnected to Redis: global rate limits enforced again");
                } else {
                    tracing::debug!(redis = %this.redacted_url, "connected to Redis");
                }
                this.reconnecting.store(false, Ordering::Release);
                this.attempt_done.notify_waiters();
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", this.settings.connect_timeout),
        };
        this.state.store(DOWN, Ordering::Release);
        this.attempt_done.notify_waiters();
        let min = this.settings.reconnect_min_backoff;
        let max = this.settings.reconnect_max_backoff.max(min);
        let wait = delay.map_or(min, |d: Duration| (d * 2).min(max));
        delay = Some(wait);
        if let Some(suppressed) = this.error_log.pass() {
            tracing::warn!(
                redis = %this.redacted_url,
                error = %error,
                retry_in = ?wait,
                suppressed,
                "cannot connect to Redis: global rate limit checks fail until it is reachable"
            );
        }
        drop(this);
        tokio::time::sleep(wait).await;
    }
}

thread_local! {
    /// The buffer cache keys are written into.
    static KEY: RefCell<String> = RefCell::new(String::with_capacity(128));
}

/// Global rate limits counted in Redis (see the module documentation). Cloning is cheap:
/// clones share the configuration, the connection, the local cache and the counters.
#[derive(Clone, Debug)]
pub struct GlobalRateLimiter {
    inner: Arc<Inner>,
}

impl GlobalRateLimiter {
    /// A limiter for the domains of `config`, counting in the Redis of `settings`. The
    /// connection is made in the background (at once inside a tokio runtime, else at the
    /// first check).
    pub fn new(config: RlsConfig, settings: RedisSettings) -> Result<Self, GlobalConfigError> {
        let compiled = compile(&config)?;
        let client = redis::Client::open(settings.url.as_str()).map_err(GlobalConfigError::Url)?;
        let connection_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None);
        let inner = Arc::new(Inner {
            config: ArcSwap::from_pointee(compiled),
            cache: OverLimitCache::new(settings.local_cache_size_bytes),
            redacted_url: redact(&settings.url),
            settings,
            client,
            connection_config,
            conn: ArcSwapOption::empty(),
            state: AtomicU8::new(IDLE),
            reconnecting: AtomicBool::new(false),
            was_connected: AtomicBool::new(false),
            attempt_done: Notify::new(),
            consecutive_timeouts: AtomicU32::new(0),
            stats: Counters::default(),
            error_log: LogGate::new(),
        });
        inner.ensure_connecting();
        Ok(GlobalRateLimiter { inner })
    }

    /// Replaces the configuration; counters, connection and local cache are kept.
    pub fn set_config(&self, config: RlsConfig) -> Result<(), GlobalConfigError> {
        let compiled = compile(&config)?;
        self.inner.config.store(Arc::new(compiled));
        Ok(())
    }

    /// True when the configuration has `domain`.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.inner.config.load().domains.contains_key(domain)
    }

    /// True while a connection to Redis is established.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// Waits until a connection to Redis is established, at most `timeout`; true when it
    /// is.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.attempt_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_connected() {
                return true;
            }
            self.inner.ensure_connecting();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// The counters since the limiter was built.
    pub fn stats(&self) -> GlobalStats {
        self.inner.stats.snapshot()
    }

    /// Checks a request's descriptors against the limits of `domain`, counting `hits`
    /// (0 counts as 1, as the service reads a missing `hits_addend`), within the
    /// settings' timeout.
    pub async fn should_rate_limit(
        &self,
        domain: &str,
        descriptors: &[Descriptor],
        hits: u32,
    ) -> Verdict {
        self.should_rate_limit_within(domain, descriptors, hits, self.inner.settings.timeout)
            .await
    }

    /// [`should_rate_limit`](Self::should_rate_limit) within `timeout` (a filter's own
    /// `timeout`).
    pub async fn should_rate_limit_within(
        &self,
        domain: &str,
        descriptors: &[Descriptor],
        hits: u32,
        timeout: Duration,
    ) -> Verdict {
        let inner = &self.inner;
        let settings = &inner.settings;
        add(&inner.stats.checks, 1);
        let config = inner.config.load_full();
        let now = settings.time_source.unix_now();
        let mut pipe: Option<redis::Pipeline> = None;
        let slots = KEY.with_borrow_mut(|buf| {
            let mut slots = plan(&config, domain, descriptors, hits, now, buf);
            let mut replies = 0;
            for (slot, d) in slots.iter_mut().zip(descriptors) {
                let Some(limit) = slot.limit.as_deref() else {
                    continue;
                };
                add(&inner.stats.total_hits, slot.hits);
                write_key(
                    buf,
                    &settings.cache_key_prefix,
                    domain,
                    &d.entries,
                    &slot.shared,
                    slot.window_start,
                );
                if inner.cache.as_ref().is_some_and(|c| c.is_over(buf, now)) {
                    slot.cached = true;
                    continue;
                }
                let jitter = match settings.expiration_jitter_max.as_secs() {
                    0 => 0,
                    max => rand::random::<u64>() % max,
                };
                pipe.get_or_insert_with(|| redis::Pipeline::with_capacity(2 * descriptors.len()))
                    .cmd("INCRBY")
                    .arg(buf.as_bytes())
                    .arg(slot.hits)
                    .cmd("EXPIRE")
                    .arg(buf.as_bytes())
                    .arg(limit.unit.seconds() + jitter)
                    .ignore();
                slot.reply = Some(replies);
                replies += 1;
            }
            slots
        });
        let counts: Vec<u64> = match &pipe {
            None => Vec::new(),
            Some(pipe) => match inner.query(pipe, timeout).await {
                Ok(counts) => counts.into_iter().map(|c| c.max(0) as u64).collect(),
                Err(e) => {
                    add(&inner.stats.redis_errors, 1);
                    inner.log_error(&e);
                    return Verdict::Error(e);
                }
            },
        };
        answer(&slots, &counts, now, settings, &inner.stats, |i| {
            let (Some(cache), Some(slot), Some(d)) =
                (&inner.cache, slots.get(i), descriptors.get(i))
            else {
                return;
            };
            let Some(limit) = slot.limit.as_deref() else {
                return;
            };
            KEY.with_borrow_mut(|buf| {
                write_key(
                    buf,
                    &settings.cache_key_prefix,
                    domain,
                    &d.entries,
                    &slot.shared,
                    slot.window_start,
                );
                cache.insert(buf, slot.window_start + limit.unit.seconds());
            });
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn config(yaml: &str) -> Compiled {
        let parsed = RlsConfig::parse_str("config.yaml", yaml);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        compile(&parsed.config.unwrap()).unwrap()
    }

    fn entries(e: &[(&str, &str)]) -> Vec<(String, String)> {
        e.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The limit found for `e` in `domain`: (requests_per_unit, unit) or None.
    fn limit_of(c: &Compiled, domain: &str, e: &[(&str, &str)]) -> Option<(u32, RateLimitUnit)> {
        let mut s = String::new();
        let root = c.domains.get(domain)?;
        find_limit(root, &entries(e), &mut s)
            .limit
            .map(|l| (l.requests_per_unit, l.unit))
    }

    use RateLimitUnit::{Day, Hour, Minute, Second};

    #[test]
    fn matching_follows_the_service_readme() {
        let c = config(
            r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 400}
---
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
---
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
---
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit: {requests_per_unit: 300, unit: second}
  - key: nested
    value: value
    descriptors:
      - key: subkey
        rate_limit: {requests_per_unit: 301, unit: second}
---
domain: wild
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 21}
  - key: route
    value: /api/*/resource/*/action
    rate_limit: {unit: minute, requests_per_unit: 22}
  - key: path
    value: /api/exact/action
    rate_limit: {unit: hour, requests_per_unit: 23}
  - key: path
    rate_limit: {unit: hour, requests_per_unit: 24}
"#,
        );
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Option<(u32, RateLimitUnit)>,
        );
        let table: &[Case] = &[
            // Example 1: exact values; another value has no limit.
            ("mongo_cps", &[("database", "users")], Some((500, Second))),
            ("mongo_cps", &[("database", "default")], Some((400, Second))),
            ("mongo_cps", &[("database", "other")], None),
            // Example 2: nested; the key alone matches any value.
            (
                "messaging",
                &[("message_type", "marketing"), ("to_number", "2061111111")],
                Some((5, Day)),
            ),
            (
                "messaging",
                &[("to_number", "2061111111")],
                Some((100, Day)),
            ),
            (
                "messaging",
                &[("message_type", "other"), ("to_number", "1")],
                None,
            ),
            ("messaging", &[("message_type", "marketing")], None),
            // Example 3: key and value first, then the key alone.
            (
                "edge_proxy_per_ip",
                &[("remote_address", "50.0.0.1")],
                Some((10, Second)),
            ),
            (
                "edge_proxy_per_ip",
                &[("remote_address", "50.0.0.5")],
                Some((0, Second)),
            ),
            // Example 4: the request's depth must be the configuration's.
            (
                "example4",
                &[("key", "value"), ("subkey", "subvalue")],
                None,
            ),
            ("example4", &[("key", "value")], Some((300, Second))),
            (
                "example4",
                &[("nested", "value"), ("subkey", "subvalue")],
                Some((301, Second)),
            ),
            ("example4", &[("nested", "value")], None),
            (
                "example4",
                &[("nested", "value"), ("subkey", "x"), ("deeper", "y")],
                None,
            ),
            // Example 9: wildcards (trailing, middle, several); exact values first; the key
            // alone last.
            ("wild", &[("key1", "value")], Some((20, Minute))),
            ("wild", &[("key1", "valueXYZ")], Some((20, Minute))),
            ("wild", &[("key1", "valu")], None),
            ("wild", &[("path", "/api/123/action")], Some((21, Minute))),
            ("wild", &[("path", "/api/exact/action")], Some((23, Hour))),
            ("wild", &[("path", "/api/123/other")], Some((24, Hour))),
            (
                "wild",
                &[("route", "/api/v1/resource/9/action")],
                Some((22, Minute)),
            ),
            ("wild", &[("route", "/api/v1/resource/action")], None),
            // Unknown domain, empty descriptor.
            ("nowhere", &[("database", "users")], None),
            ("mongo_cps", &[], None),
        ];
        for (domain, e, want) in table {
            assert_eq!(limit_of(&c, domain, e), *want, "{domain} {e:?}");
        }
    }

    #[test]
    fn wildcards() {
        let p = |s: &str| s.split('*').map(Box::from).collect::<Vec<Box<str>>>();
        let cases = [
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "b", false),
            ("*", "", true),
            ("a*c", "ac", true),
            ("a*c", "abc", true),
            ("a*c", "abd", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("x", "x", true),
            ("é*é", "éé", true),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                wildcard_match(&p(pattern), value),
                want,
                "{pattern} {value}"
            );
        }
    }

    #[test]
    fn cache_keys_are_the_services() {
        let mut buf = String::new();
        write_key(
            &mut buf,
            "",
            "ratelimit",
            &entries(&[("PATH", "/productpage")]),
            &[],
            1_700_000_040,
        );
        assert_eq!(buf, "ratelimit_PATH_/productpage_1700000040");
        write_key(
            &mut buf,
            "p:",
            "d",
            &entries(&[("a", "1"), ("files", "files/x.pdf")]),
            &[(1, "files/*")],
            60,
        );
        assert_eq!(buf, "p:d_a_1_files_files/*_60");
    }

    fn slots_for<'a>(c: &'a Compiled, domain: &str, ds: &[Descriptor], now: u64) -> Slots<'a> {
        plan(c, domain, ds, 1, now, &mut String::new())
    }

    #[test]
    fn windows_start_at_multiples_of_the_unit() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: s, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: m, rate_limit: {unit: minute, requests_per_unit: 1}}\n  - {key: h, rate_limit: {unit: hour, requests_per_unit: 1}}\n",
        );
        let ds = [
            Descriptor::new([("s", "x")]),
            Descriptor::new([("m", "x")]),
            Descriptor::new([("h", "x")]),
        ];
        let s = slots_for(&c, "d", &ds, 7_385);
        let starts: Vec<u64> = s.iter().map(|s| s.window_start).collect();
        assert_eq!(starts, vec![7_385, 7_380, 7_200]);
    }

    #[test]
    fn share_threshold_shares_the_key() {
        let c = config(
            "domain: d\ndescriptors:\n  - key: files\n    value: files/*\n    share_threshold: true\n    descriptors:\n      - {key: user, rate_limit: {unit: hour, requests_per_unit: 10}}\n  - key: solo\n    value: s/*\n    rate_limit: {unit: hour, requests_per_unit: 10}\n",
        );
        let mut buf = String::new();
        let root = &c.domains["d"];
        let e = entries(&[("files", "files/a.pdf"), ("user", "u1")]);
        let f = find_limit(root, &e, &mut buf);
        assert_eq!(f.shared.as_slice(), &[(0, "files/*")]);
        write_key(&mut buf, "", "d", &e, &f.shared, 0);
        assert_eq!(buf, "d_files_files/*_user_u1_0");
        let e = entries(&[("solo", "s/a")]);
        let f = find_limit(root, &e, &mut buf);
        assert!(f.limit.is_some() && f.shared.is_empty());
    }

    #[test]
    fn unlimited_and_replaces() {
        // The service's README, example 7, plus an unlimited descriptor.
        let c = config(
            r#"
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 10
          unit: second
  - key: ldap
    rate_limit: {unlimited: true}
"#,
        );
        let one = Descriptor::new([("key_1", "value_1"), ("user", "bkthomps")]);
        let two = Descriptor::new([("key_2", "value_2"), ("user", "bkthomps")]);
        let ldap = Descriptor::new([("ldap", "x")]);
        let limits = |ds: &[Descriptor]| -> Vec<Option<u32>> {
            slots_for(&c, "example7", ds, 0)
                .iter()
                .map(|s| s.limit.as_ref().map(|l| l.requests_per_unit))
                .collect()
        };
        assert_eq!(limits(std::slice::from_ref(&one)), vec![Some(5)]);
        assert_eq!(limits(&[one.clone(), two.clone()]), vec![None, Some(10)]);
        assert_eq!(limits(&[two, ldap.clone()]), vec![Some(10), None]);
        let s = slots_for(&c, "example7", &[ldap], 0);
        assert!(s[0].unlimited);
    }

    fn settings() -> RedisSettings {
        RedisSettings::new("redis://127.0.0.1:1")
    }

    /// Runs `answer` with Redis replaced by `counts` (per slot with a reply, in order).
    fn verdict(
        slots: &mut Slots<'_>,
        counts: &[u64],
        settings: &RedisSettings,
        stats: &Counters,
    ) -> (Verdict, Vec<usize>) {
        let mut n = 0;
        for s in slots.iter_mut() {
            if s.limit.is_some() && !s.cached {
                s.reply = Some(n);
                n += 1;
            }
        }
        let mut over = Vec::new();
        let v = answer(slots, counts, 100, settings, stats, |i| over.push(i));
        (v, over)
    }

    #[test]
    fn over_the_limit_when_the_count_exceeds_it() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: minute, requests_per_unit: 10}}\n",
        );
        let ds = [Descriptor::new([("k", "v")])];
        let stats = Counters::default();
        // count after increment → (over?, remaining)
        for (count, over, remaining) in [
            (1, false, 9),
            (8, false, 2),
            (10, false, 0),
            (11, true, 0),
            (50, true, 0),
        ] {
            let mut s = slots_for(&c, "d", &ds, 100);
            let (v, cached) = verdict(&mut s, &[count], &settings(), &stats);
            assert_eq!(v.is_over_limit(), over, "count {count}");
            let st = &v.statuses()[0];
            assert_eq!(st.limit_remaining, remaining);
            assert_eq!(st.duration_until_reset, Some(Duration::from_secs(20)));
            assert_eq!(st.current_limit.as_ref().unwrap().requests_per_unit, 10);
            assert_eq!(cached, if over { vec![0] } else { vec![] });
        }
        let s = stats.snapshot();
        // One hit per check. Within: counts 1, 8 and 10; near the limit (above 8, ratio
        // 0.8): count 10; over: 11 and 50.
        assert_eq!(s.within_limit, 3);
        assert_eq!(s.over_limit, 2);
        assert_eq!(s.near_limit, 1);
    }

    #[test]
    fn service_statistics_with_hits_addends() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: minute, requests_per_unit: 10}}\n",
        );
        let stats = Counters::default();
        // 5 hits taking the count from 6 to 11: 1 over, 2 near (9, 10), within 0.
        let ds = [Descriptor::new([("k", "v")]).with_hits_addend(5)];
        let mut s = slots_for(&c, "d", &ds, 100);
        let (v, _) = verdict(&mut s, &[11], &settings(), &stats);
        assert!(v.is_over_limit());
        let snap = stats.snapshot();
        assert_eq!(
            (snap.over_limit, snap.near_limit, snap.within_limit),
            (1, 2, 0)
        );
        // 3 hits from 4 to 7: within 3, none near.
        let ds = [Descriptor::new([("k", "v")]).with_hits_addend(3)];
        let mut s = slots_for(&c, "d", &ds, 100);
        verdict(&mut s, &[7], &settings(), &stats);
        // 3 hits from 6 to 9: 1 near.
        verdict(&mut s, &[9], &settings(), &stats);
        let snap = stats.snapshot();
        assert_eq!(
            (snap.over_limit, snap.near_limit, snap.within_limit),
            (1, 3, 6)
        );
    }

    #[test]
    fn shadow_mode_admits_and_counts() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: k, shadow_mode: true, rate_limit: {unit: second, requests_per_unit: 1}}\n",
        );
        let ds = [Descriptor::new([("k", "v")])];
        let stats = Counters::default();
        let mut s = slots_for(&c, "d", &ds, 100);
        let (v, over) = verdict(&mut s, &[3], &settings(), &stats);
        assert!(v.is_ok());
        assert_eq!(v.statuses()[0].code, StatusCode::Ok);
        assert_eq!(over, vec![0]);
        let mut s = slots_for(&c, "d", &ds, 100);
        s[0].cached = true;
        let (v, _) = verdict(&mut s, &[], &settings(), &stats);
        assert!(v.is_ok());
        let snap = stats.snapshot();
        assert_eq!(
            (snap.over_limit, snap.shadow_over_limit, snap.cache_hits),
            (2, 2, 1)
        );
    }

    #[test]
    fn quotas_refuse_only_when_all_are_exhausted() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: q1, quota_mode: true, rate_limit: {unit: hour, requests_per_unit: 1}}\n  - {key: q2, quota_mode: true, rate_limit: {unit: hour, requests_per_unit: 1}}\n  - {key: l, rate_limit: {unit: hour, requests_per_unit: 1}}\n",
        );
        let stats = Counters::default();
        let q = [
            Descriptor::new([("q1", "x")]),
            Descriptor::new([("q2", "x")]),
        ];
        let mut s = slots_for(&c, "d", &q, 0);
        assert!(verdict(&mut s, &[2, 1], &settings(), &stats).0.is_ok());
        let mut s = slots_for(&c, "d", &q, 0);
        assert!(
            verdict(&mut s, &[2, 2], &settings(), &stats)
                .0
                .is_over_limit()
        );
        let ql = [
            Descriptor::new([("q1", "x")]),
            Descriptor::new([("l", "x")]),
        ];
        let mut s = slots_for(&c, "d", &ql, 0);
        assert!(
            verdict(&mut s, &[1, 2], &settings(), &stats)
                .0
                .is_over_limit()
        );
    }

    #[test]
    fn global_shadow_mode() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: 1}}\n",
        );
        let mut settings = settings();
        settings.global_shadow_mode = true;
        let stats = Counters::default();
        let mut s = slots_for(&c, "d", &[Descriptor::new([("k", "v")])], 0);
        let (v, _) = verdict(&mut s, &[2], &settings, &stats);
        assert!(v.is_ok());
        // The descriptor still says it is over its limit.
        assert_eq!(v.statuses()[0].code, StatusCode::OverLimit);
        assert_eq!(stats.snapshot().shadow_over_limit, 1);
    }

    #[test]
    fn header_status_is_the_closest_to_its_limit() {
        let c = config(
            "domain: d\ndescriptors:\n  - {key: a, rate_limit: {unit: minute, requests_per_unit: 10}}\n  - {key: b, rate_limit: {unit: minute, requests_per_unit: 5}}\n  - {key: u, rate_limit: {unlimited: true}}\n",
        );
        let ds = [
            Descriptor::new([("a", "x")]),
            Descriptor::new([("u", "x")]),
            Descriptor::new([("b", "x")]),
            Descriptor::new([("none", "x")]),
        ];
        let stats = Counters::default();
        let mut s = slots_for(&c, "d", &ds, 0);
        let (v, _) = verdict(&mut s, &[3, 2], &settings(), &stats);
        let Verdict::Ok { statuses } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(statuses.len(), 4);
        assert_eq!(statuses[1].limit_remaining, u32::MAX);
        assert_eq!(statuses[3].current_limit, None);
        let h = statuses.header_status().unwrap();
        assert_eq!(
            (
                h.limit_remaining,
                h.current_limit.as_ref().unwrap().requests_per_unit
            ),
            (3, 5)
        );
        let mut s = slots_for(&c, "d", &ds, 0);
        let (v, _) = verdict(&mut s, &[11, 2], &settings(), &stats);
        let Verdict::OverLimit { statuses } = &v else {
            panic!("{v:?}")
        };
        let h = statuses.header_status().unwrap();
        assert_eq!(
            (h.code, h.current_limit.as_ref().unwrap().requests_per_unit),
            (StatusCode::OverLimit, 10)
        );
    }

    #[test]
    fn limit_override_and_hits() {
        let c = config("domain: d\ndescriptors: []\n");
        let ds = [
            Descriptor::new([("k", "v")]).with_limit(LimitOverride {
                requests_per_unit: 7,
                unit: Hour,
            }),
            Descriptor::new([("k", "v")]).with_hits_addend(0),
        ];
        let s = plan(&c, "d", &ds, 0, 3_700, &mut String::new());
        assert_eq!(s[0].limit.as_ref().unwrap().requests_per_unit, 7);
        assert_eq!((s[0].hits, s[0].window_start), (1, 3_600));
        assert!(s[1].limit.is_none());
        assert_eq!(s[1].hits, 0);
        let s = plan(&c, "d", &ds, 4, 0, &mut String::new());
        assert_eq!(s[0].hits, 4);
        // The service looks the domain up first.
        let s = plan(&c, "unknown", &ds, 1, 0, &mut String::new());
        assert!(s[0].limit.is_none());
    }

    #[test]
    fn compile_rejects_what_the_service_rejects() {
        use mesh_config::rls::{RlsDomain, RlsRateLimit};
        let d = |name: &str, ds: Vec<RlsDescriptor>| RlsDomain {
            name: name.into(),
            descriptors: ds,
        };
        let k = |key: &str| RlsDescriptor {
            key: key.into(),
            ..Default::default()
        };
        let err = |c: RlsConfig| compile(&c).err().map(|e| e.to_string());
        assert_eq!(
            err(RlsConfig {
                domains: vec![d("a", vec![]), d("a", vec![])]
            }),
            Some("domain `a` is defined twice".into())
        );
        assert_eq!(
            err(RlsConfig {
                domains: vec![d("a", vec![k("x"), k("x")])]
            }),
            Some("duplicate descriptor `x` in domain `a`".into())
        );
        let mut no_unit = k("x");
        no_unit.rate_limit = Some(RlsRateLimit::default());
        assert_eq!(
            err(RlsConfig {
                domains: vec![d("a", vec![no_unit])]
            }),
            Some("the limit of `x` in domain `a` has no unit".into())
        );
        assert!(
            err(RlsConfig {
                domains: vec![d("", vec![])]
            })
            .is_some()
        );
        assert!(
            err(RlsConfig {
                domains: vec![d("a", vec![k("")])]
            })
            .is_some()
        );
    }

    #[test]
    fn local_cache_expires_with_the_window() {
        let cache = OverLimitCache::new(1024).unwrap();
        cache.insert("d_k_v_60", 120);
        assert!(cache.is_over("d_k_v_60", 60));
        assert!(cache.is_over("d_k_v_60", 119));
        assert!(!cache.is_over("d_k_v_60", 120));
        assert!(!cache.is_over("d_k_v_120", 100));
        assert!(OverLimitCache::new(0).is_none());
        // Bounded in bytes.
        for i in 0..1000 {
            cache.insert(&format!("key-{i}"), 1);
        }
        assert!(cache.0.weight() <= 1024);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://user:pw@host:6379/0"),
            "redis://*****@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let s = RedisSettings::new("redis://:secret@host");
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn log_gate_lets_one_line_through_per_interval() {
        let g = LogGate::new();
        assert_eq!(g.pass(), Some(0));
        assert_eq!(g.pass(), None);
        assert_eq!(g.pass(), None);
        g.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(g.pass(), Some(2));
    }

    #[tokio::test]
    async fn unreachable_redis_is_an_error_within_the_timeout() {
        // Port 1 on the loopback refuses connections.
        let parsed = RlsConfig::parse_str(
            "c.yaml",
            "domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]\n",
        );
        let mut s = settings();
        s.timeout = Duration::from_millis(200);
        let limiter = GlobalRateLimiter::new(parsed.config.unwrap(), s).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            let v = limiter
                .should_rate_limit("d", &[Descriptor::new([("k", "v")])], 1)
                .await;
            assert!(
                matches!(v, Verdict::Error(GlobalError::Unavailable)),
                "{v:?}"
            );
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        let stats = limiter.stats();
        assert_eq!(
            (stats.checks, stats.redis_errors, stats.reconnects),
            (5, 5, 0)
        );
        // A check without a limit needs no Redis.
        let v = limiter
            .should_rate_limit("d", &[Descriptor::new([("other", "v")])], 1)
            .await;
        assert!(v.is_ok());
        assert!(!limiter.is_connected());
    }
}
