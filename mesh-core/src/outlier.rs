//! Outlier detection: Envoy's passive health checking, from a DestinationRule's
//! `outlierDetection` as Istio translates it.
//!
//! Every attempt's outcome updates its endpoint's counters of consecutive failures
//! ([`HostCounters`], lock-free). When one reaches its threshold the endpoint is detected
//! as an outlier, and [`Ejections`] decides as Envoy's detector does: it is ejected unless
//! that would make more than `maxEjectionPercent` of the cluster's endpoints ejected. An
//! ejected endpoint takes no traffic for `baseEjectionTime` × the number of times it was
//! ejected in a row (at most `max(300 s, baseEjectionTime)`, Envoy's `max_ejection_time`)
//! and returns at the first interval sweep after that; each later sweep it spends healthy
//! lowers that multiplier by one. While the share of healthy endpoints is below
//! `minHealthPercent` the cluster is in panic and its balancer ignores ejections (Envoy's
//! panic threshold, which Istio sets from it).
//!
//! What counts, as Envoy's router reports it (`Outcome`):
//!
//! | attempt | default | `splitExternalLocalOriginErrors` |
//! |---|---|---|
//! | a response | its status (a gRPC response's `grpc-status` mapped to HTTP) | the status; the connection succeeded |
//! | connect failure, reset | a 503 | a local-origin failure |
//! | per-try or route timeout | a 504 | a local-origin failure |
//!
//! A 5xx counts towards `consecutive5xxErrors`; a 502, 503 or 504 also towards
//! `consecutiveGatewayErrors` (another 5xx resets that count); anything else resets both.
//! With `outlierDetectionHttpErrorCodes`, exactly the listed statuses are errors (a
//! 500 to the detector) and every other status a success (Envoy's failure matcher).
//!
//! Pure: time is passed in as a [`Duration`] since any fixed epoch; nothing here sleeps,
//! spawns or locks.
//!
//! ```
//! use std::time::Duration;
//! use mesh_config::model::OutlierDetection;
//! use mesh_core::outlier::{Ejections, HostCounters, OutlierSettings, Outcome, Verdict};
//!
//! let s = OutlierSettings::of(&OutlierDetection {
//!     consecutive_5xx_errors: Some(2),
//!     max_ejection_percent: Some(100),
//!     base_ejection_time: Some(Duration::from_secs(30).into()),
//!     ..Default::default()
//! });
//! let hosts = [HostCounters::default(), HostCounters::default()];
//! let mut ejections = Ejections::new(2, Duration::ZERO);
//! let at = Duration::from_secs(1);
//! assert!(hosts[0].record(&s, Outcome::Response(503)).is_empty());
//! for kind in hosts[0].record(&s, Outcome::Response(500)) {
//!     let verdict = ejections.on_detected(&s, 0, at, &mut |_| {});
//!     assert_eq!(verdict, Verdict::Ejected { until: Duration::from_secs(31) });
//!     hosts[0].reset(kind);
//! }
//! assert!(ejections.is_ejected(0));
//! // Back at the first 10 s sweep after 31 s.
//! ejections.tick(&s, Duration::from_secs(39), &mut |_| {});
//! assert!(ejections.is_ejected(0));
//! ejections.tick(&s, Duration::from_secs(40), &mut |i| hosts[i].reset_all());
//! assert!(!ejections.is_ejected(0));
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mesh_config::model::OutlierDetection;

/// Envoy's default `consecutive_5xx` (Istio keeps it when `consecutive5xxErrors` is unset).
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy's default `consecutive_local_origin_failure`.
pub const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN: u32 = 5;
/// Envoy's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time` (at least `base_ejection_time`).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent` (Istio keeps it unless a positive value is set).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's default healthy panic threshold, used only when `minHealthPercent` is
/// negative (invalid: validation reports it).
const ENVOY_PANIC_THRESHOLD: u32 = 50;
/// The shortest interval between sweeps.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A cluster's outlier detection, compiled once per configuration from its merged
/// `outlierDetection` (see [`OutlierSettings::of`]). A threshold of 0 disables its kind of
/// detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive 5xx (and, unless split, local-origin failures) before an ejection.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504 and, unless split, local-origin
    /// failures) before an ejection.
    pub consecutive_gateway: u32,
    /// Consecutive local-origin failures before an ejection (only when split).
    pub consecutive_local_origin: u32,
    /// Local-origin failures are counted apart from responses.
    pub split_local_origin: bool,
    /// Time between sweeps (un-ejections and the decay of the ejection multiplier).
    pub interval: Duration,
    /// Ejection time of a first ejection.
    pub base_ejection_time: Duration,
    /// Longest ejection time.
    pub max_ejection_time: Duration,
    /// Most endpoints, in percent of the cluster's, ejected at once.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints (percent), ejections are ignored; 0 never.
    pub panic_threshold: u32,
    /// The statuses that are errors instead of 5xx (`outlierDetectionHttpErrorCodes`);
    /// empty: 5xx.
    pub error_codes: Box<[u16]>,
}

impl Default for OutlierSettings {
    /// An empty `outlierDetection: {}`: Envoy's defaults as Istio leaves them.
    fn default() -> Self {
        OutlierSettings::of(&OutlierDetection::default())
    }
}

impl OutlierSettings {
    /// As Istio's `applyOutlierDetection` configures Envoy's detector:
    ///
    /// * `consecutive5xxErrors`: the value (0 disables); unset keeps Envoy's 5.
    /// * `consecutiveGatewayErrors`: the value; unset or 0, disabled (Envoy does not
    ///   enforce it by default).
    /// * `splitExternalLocalOriginErrors` with `consecutiveLocalOriginFailures`: the value
    ///   when positive, else Envoy's 5. Without the split the count is ignored.
    /// * `interval` (10 s) and `baseEjectionTime` (30 s); the longest ejection is
    ///   `max(300 s, baseEjectionTime)` and ejections have no jitter.
    /// * `maxEjectionPercent`: the value when positive (at most 100), else Envoy's 10.
    /// * `minHealthPercent` is the panic threshold, 0 (never in panic) unless set.
    /// * `consecutiveErrors` (deprecated) is ignored, as Istio ignores it.
    pub fn of(od: &OutlierDetection) -> Self {
        let split = od.split_external_local_origin_errors == Some(true);
        let base = od
            .base_ejection_time
            .map_or(DEFAULT_BASE_EJECTION_TIME, |d| d.get());
        OutlierSettings {
            consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: od.consecutive_gateway_errors.unwrap_or(0),
            consecutive_local_origin: if split {
                od.consecutive_local_origin_failures
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_CONSECUTIVE_LOCAL_ORIGIN)
            } else {
                0
            },
            split_local_origin: split,
            interval: od
                .interval
                .map_or(DEFAULT_INTERVAL, |d| d.get())
                .max(MIN_INTERVAL),
            base_ejection_time: base,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME.max(base),
            max_ejection_percent: od
                .max_ejection_percent
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0)
                .map_or(DEFAULT_MAX_EJECTION_PERCENT, |p| p.min(100)),
            panic_threshold: match od.min_health_percent {
                None => 0,
                Some(p) => u32::try_from(p).map_or(ENVOY_PANIC_THRESHOLD, |p| p.min(100)),
            },
            error_codes: od
                .outlier_detection_http_error_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
        }
    }

    /// How long an endpoint ejected with multiplier `backoff` stays out.
    pub fn ejection_time(&self, backoff: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(backoff)
            .min(self.max_ejection_time)
    }

    /// The status the detector counts for a response with `status`: the status itself,
    /// or with error codes configured 500 for one of them and 200 for any other.
    fn counted(&self, status: u16) -> u16 {
        if self.error_codes.is_empty() {
            status
        } else if self.error_codes.contains(&status) {
            500
        } else {
            200
        }
    }
}

/// How an attempt ended, as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status (for a gRPC response with `grpc-status` in
    /// its headers, that status mapped by [`grpc_to_http`]).
    Response(u16),
    /// Connecting failed, or the connection was reset or broke before the response
    /// (Envoy's `LOCAL_ORIGIN_CONNECT_FAILED`).
    ConnectFailed,
    /// The attempt timed out (Envoy's `LOCAL_ORIGIN_TIMEOUT`).
    Timeout,
}

/// A kind of consecutive-failure detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectionType {
    /// `consecutive5xxErrors` (Envoy's `CONSECUTIVE_5XX`).
    Consecutive5xx,
    /// `consecutiveGatewayErrors` (Envoy's `CONSECUTIVE_GATEWAY_FAILURE`).
    ConsecutiveGatewayFailure,
    /// `consecutiveLocalOriginFailures` (Envoy's `CONSECUTIVE_LOCAL_ORIGIN_FAILURE`).
    ConsecutiveLocalOriginFailure,
}

impl EjectionType {
    /// Envoy's name of the detection type.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "consecutive_5xx",
            EjectionType::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionType::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        }
    }
}

/// The detections one outcome completed (a response may complete both the gateway and
/// the 5xx count); iterated in Envoy's order: gateway, 5xx, local origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detections(u8);

impl Detections {
    const GATEWAY: u8 = 1;
    const FIVE_XX: u8 = 2;
    const LOCAL: u8 = 4;

    /// True when the outcome completed no detection (the common case).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Iterator for Detections {
    type Item = EjectionType;

    fn next(&mut self) -> Option<EjectionType> {
        for (bit, kind) in [
            (Self::GATEWAY, EjectionType::ConsecutiveGatewayFailure),
            (Self::FIVE_XX, EjectionType::Consecutive5xx),
            (Self::LOCAL, EjectionType::ConsecutiveLocalOriginFailure),
        ] {
            if self.0 & bit != 0 {
                self.0 &= !bit;
                return Some(kind);
            }
        }
        None
    }
}

/// One endpoint's consecutive-failure counts and request counters: lock-free, updated by
/// every attempt to it. Concurrent outcomes are counted in the order their atomic updates
/// land, as Envoy's worker threads count them.
#[derive(Debug, Default)]
pub struct HostCounters {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local_origin: AtomicU32,
    successes: AtomicU64,
    errors: AtomicU64,
}

/// Adds one to `counter` and says whether it now equals `threshold` (0: never).
fn bump(counter: &AtomicU32, threshold: u32) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    threshold != 0 && n == threshold
}

/// Sets `counter` to 0 (without a write when it is already).
fn clear(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

impl HostCounters {
    /// Counts an attempt's `outcome` and returns the detections it completed: a count
    /// that reaches its threshold exactly (Envoy's `==`, so a count left above it while
    /// the endpoint is ejected does not detect again until it is reset).
    pub fn record(&self, s: &OutlierSettings, outcome: Outcome) -> Detections {
        let mut d = Detections::default();
        match outcome {
            Outcome::Response(status) => {
                if status >= 500 {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.successes.fetch_add(1, Ordering::Relaxed);
                }
                if s.split_local_origin {
                    // The connection succeeded.
                    clear(&self.consecutive_local_origin);
                }
                self.http_status(s, s.counted(status), &mut d);
            }
            Outcome::ConnectFailed | Outcome::Timeout => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if s.split_local_origin {
                    if bump(&self.consecutive_local_origin, s.consecutive_local_origin) {
                        d.0 |= Detections::LOCAL;
                    }
                } else {
                    let status = if outcome == Outcome::Timeout {
                        504
                    } else {
                        503
                    };
                    self.http_status(s, status, &mut d);
                }
            }
        }
        d
    }

    /// Envoy's `putHttpResponseCode`.
    fn http_status(&self, s: &OutlierSettings, status: u16, d: &mut Detections) {
        if (500..600).contains(&status) {
            if matches!(status, 502..=504) {
                if bump(&self.consecutive_gateway, s.consecutive_gateway) {
                    d.0 |= Detections::GATEWAY;
                }
            } else {
                clear(&self.consecutive_gateway);
            }
            if bump(&self.consecutive_5xx, s.consecutive_5xx) {
                d.0 |= Detections::FIVE_XX;
            }
        } else {
            clear(&self.consecutive_5xx);
            clear(&self.consecutive_gateway);
        }
    }

    /// Resets the count of `kind` (after it detected: Envoy resets it whether or not the
    /// endpoint was ejected, unless it already was).
    pub fn reset(&self, kind: EjectionType) {
        clear(match kind {
            EjectionType::Consecutive5xx => &self.consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => &self.consecutive_gateway,
            EjectionType::ConsecutiveLocalOriginFailure => &self.consecutive_local_origin,
        });
    }

    /// Resets every count (when the endpoint returns from an ejection).
    pub fn reset_all(&self) {
        clear(&self.consecutive_5xx);
        clear(&self.consecutive_gateway);
        clear(&self.consecutive_local_origin);
    }

    /// The consecutive count of `kind`.
    pub fn consecutive(&self, kind: EjectionType) -> u32 {
        match kind {
            EjectionType::Consecutive5xx => &self.consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => &self.consecutive_gateway,
            EjectionType::ConsecutiveLocalOriginFailure => &self.consecutive_local_origin,
        }
        .load(Ordering::Relaxed)
    }

    /// Attempts answered with a status below 500.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Attempts answered with a 5xx, or that failed to connect, were reset or timed out.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Envoy's `grpcToHttpStatus`: the HTTP status a `grpc-status` counts as.
pub fn grpc_to_http(grpc_status: u32) -> u16 {
    match grpc_status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS and anything else.
        _ => 500,
    }
}

/// What the detector keeps of one endpoint between sweeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostEjection {
    /// When it was ejected, while it is.
    pub ejected_at: Option<Duration>,
    /// When it last returned from an ejection.
    pub last_unejection: Option<Duration>,
    /// How many times it was ejected (Envoy's `num_ejections`).
    pub ejections: u32,
    /// The ejection time multiplier (Envoy's `ejectTimeBackoff`).
    pub backoff: u32,
}

/// What became of a detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint is ejected, at least until this time (it returns at the first sweep
    /// from then on).
    Ejected {
        /// The end of its ejection time.
        until: Duration,
    },
    /// It already was (a late outcome of a request sent before): nothing changes, and
    /// the count is not reset.
    AlreadyEjected,
    /// Ejecting it would exceed `maxEjectionPercent` (Envoy's `ejections_overflow`).
    Overflow,
    /// No such endpoint.
    Unknown,
}

/// The detector's decisions for one cluster: which endpoints are ejected and until when,
/// as Envoy's `DetectorImpl` makes them. Not thread-safe: the runtime keeps it behind a
/// lock taken only on detections and sweeps, never by an ordinary request.
///
/// Sweeps (Envoy's interval timer) run at `start + k × interval`; [`tick`](Self::tick)
/// runs every sweep due by the time it is given, however many, in constant time per
/// endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejections {
    hosts: Vec<HostEjection>,
    active: u32,
    /// The time of the last sweep run (or of the start).
    last_tick: Duration,
    /// Ejections made (Envoy's `ejections_enforced_total`).
    enforced: u64,
    /// Detections not enforced because of `maxEjectionPercent`.
    overflow: u64,
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

fn from_nanos(n: u128) -> Duration {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (n % 1_000_000_000) as u32)
}

impl Ejections {
    /// `hosts` endpoints, none ejected, the first sweep one interval after `now`.
    pub fn new(hosts: usize, now: Duration) -> Self {
        Ejections {
            hosts: vec![HostEjection::default(); hosts],
            active: 0,
            last_tick: now,
            enforced: 0,
            overflow: 0,
        }
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True without endpoints.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Endpoints ejected now (Envoy's `ejections_active`).
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Ejections made so far (Envoy's `ejections_enforced_total`).
    pub fn enforced(&self) -> u64 {
        self.enforced
    }

    /// Detections not enforced because of `maxEjectionPercent` (Envoy's
    /// `ejections_overflow`).
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// True when endpoint `i` is ejected.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.hosts.get(i).is_some_and(|h| h.ejected_at.is_some())
    }

    /// What is known of endpoint `i`.
    pub fn host(&self, i: usize) -> Option<&HostEjection> {
        self.hosts.get(i)
    }

    /// The time of the next sweep.
    pub fn next_tick(&self, s: &OutlierSettings) -> Duration {
        self.last_tick.saturating_add(s.interval)
    }

    /// When ejected endpoint `i` returns: the first sweep at or after the end of its
    /// ejection time (`None` when it is not ejected).
    pub fn returns_at(&self, s: &OutlierSettings, i: usize) -> Option<Duration> {
        let h = self.hosts.get(i)?;
        let end = h.ejected_at?.saturating_add(s.ejection_time(h.backoff));
        Some(self.first_tick_at_or_after(s, end))
    }

    /// The first sweep at or after `t` (sweeps after the last one run).
    fn first_tick_at_or_after(&self, s: &OutlierSettings, t: Duration) -> Duration {
        let first = nanos(self.last_tick) + nanos(s.interval);
        let t = nanos(t);
        if t <= first {
            return from_nanos(first);
        }
        let step = nanos(s.interval);
        from_nanos(first + (t - first).div_ceil(step) * step)
    }

    /// True when the cluster is in panic: its share of endpoints not ejected is below
    /// the panic threshold (`minHealthPercent`), and its balancer uses every endpoint.
    pub fn in_panic(&self, s: &OutlierSettings) -> bool {
        let total = self.hosts.len() as u64;
        let healthy = total - u64::from(self.active);
        u64::from(s.panic_threshold) * total > 100 * healthy
    }

    /// Endpoint `i` was detected as an outlier at `now` (a count of its
    /// [`HostCounters`] reached its threshold). First runs the sweeps due by `now`
    /// (`on_return` is called for each endpoint they bring back); then ejects it as
    /// Envoy's `ejectHost` does: only if, ejected, the cluster's ejected share stays within
    /// `maxEjectionPercent`. The caller resets the detected count unless the verdict is
    /// [`Verdict::AlreadyEjected`].
    pub fn on_detected(
        &mut self,
        s: &OutlierSettings,
        i: usize,
        now: Duration,
        on_return: &mut impl FnMut(usize),
    ) -> Verdict {
        self.tick(s, now, on_return);
        let total = self.hosts.len() as u64;
        let active = self.active;
        let Some(h) = self.hosts.get_mut(i) else {
            return Verdict::Unknown;
        };
        if h.ejected_at.is_some() {
            return Verdict::AlreadyEjected;
        }
        if 100 * (u64::from(active) + 1) > u64::from(s.max_ejection_percent) * total {
            self.overflow += 1;
            return Verdict::Overflow;
        }
        // A clock read before the last sweep is taken as the sweep's time.
        let now = now.max(self.last_tick);
        h.ejected_at = Some(now);
        h.ejections = h.ejections.saturating_add(1);
        // Envoy raises the multiplier while the ejection time is below its maximum.
        if u128::from(h.backoff) * nanos(s.base_ejection_time)
            < nanos(s.max_ejection_time) + nanos(s.base_ejection_time)
        {
            h.backoff = h.backoff.saturating_add(1);
        }
        let until = now.saturating_add(s.ejection_time(h.backoff));
        self.active += 1;
        self.enforced += 1;
        Verdict::Ejected { until }
    }

    /// Runs every sweep due by `now` (Envoy's `onIntervalTimer`), calling `on_return` for
    /// each endpoint brought back (its counts are to be reset): an ejected endpoint
    /// returns at the first sweep at or after the end of its ejection time; at each sweep
    /// at least an interval after its return, an endpoint's multiplier drops by one.
    /// Returns true when an endpoint returned.
    pub fn tick(
        &mut self,
        s: &OutlierSettings,
        now: Duration,
        on_return: &mut impl FnMut(usize),
    ) -> bool {
        let step = nanos(s.interval);
        let first = nanos(self.last_tick) + step;
        let now_n = nanos(now);
        if now_n < first {
            return false;
        }
        // The sweeps run: first, first + step, ..., last.
        let last = first + (now_n - first) / step * step;
        // Sweeps in [from, last], from on the grid.
        let sweeps_from = |from: u128| -> u128 {
            if from > last {
                return 0;
            }
            let from = if from <= first {
                first
            } else {
                first + (from - first).div_ceil(step) * step
            };
            if from > last {
                0
            } else {
                (last - from) / step + 1
            }
        };
        let mut returned = false;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if let Some(at) = h.ejected_at {
                let end = nanos(at) + nanos(s.ejection_time(h.backoff));
                if end > last {
                    continue;
                }
                // Back at the first sweep at or after the end of its time.
                let back = if end <= first {
                    first
                } else {
                    first + (end - first).div_ceil(step) * step
                };
                h.ejected_at = None;
                h.last_unejection = Some(from_nanos(back));
                self.active = self.active.saturating_sub(1);
                returned = true;
                on_return(i);
            }
            if let Some(back) = h.last_unejection {
                // The sweeps at least an interval after its return, since the last run.
                let decay = sweeps_from(nanos(back) + step);
                let decay = u32::try_from(decay).unwrap_or(u32::MAX);
                h.backoff = h.backoff.saturating_sub(decay);
            }
        }
        self.last_tick = from_nanos(last);
        returned
    }

    /// The same decisions for a new set of endpoints: endpoint `i` of the new set is
    /// endpoint `old(i)` of this one, or a new endpoint (`None`). An endpoint that left
    /// forgets what it was (Envoy keeps state per host object: one that comes back starts
    /// afresh).
    pub fn remap(&self, hosts: usize, old: impl Fn(usize) -> Option<usize>) -> Self {
        let hosts: Vec<HostEjection> = (0..hosts)
            .map(|i| {
                old(i)
                    .and_then(|o| self.hosts.get(o).copied())
                    .unwrap_or_default()
            })
            .collect();
        let active = hosts.iter().filter(|h| h.ejected_at.is_some()).count();
        Ejections {
            active: u32::try_from(active).unwrap_or(u32::MAX),
            hosts,
            last_tick: self.last_tick,
            enforced: self.enforced,
            overflow: self.overflow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::duration::Duration as YamlDuration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn yd(n: u64) -> Option<YamlDuration> {
        Some(ms(n).into())
    }

    /// Settings with `interval` 100 ms and `baseEjectionTime` 500 ms.
    fn fast(od: OutlierDetection) -> OutlierSettings {
        OutlierSettings::of(&OutlierDetection {
            interval: yd(100),
            base_ejection_time: yd(500),
            ..od
        })
    }

    #[test]
    fn istio_translation() {
        let d = OutlierSettings::default();
        assert_eq!(
            (
                d.consecutive_5xx,
                d.consecutive_gateway,
                d.consecutive_local_origin,
                d.split_local_origin
            ),
            (5, 0, 0, false)
        );
        assert_eq!(
            (d.interval, d.base_ejection_time, d.max_ejection_time),
            (
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(300)
            )
        );
        assert_eq!((d.max_ejection_percent, d.panic_threshold), (10, 0));
        // (written, 5xx, gateway, local origin, max %, panic threshold)
        let table: [(OutlierDetection, u32, u32, u32, u32, u32); 9] = [
            (
                OutlierDetection {
                    consecutive_gateway_errors: Some(3),
                    ..Default::default()
                },
                5,
                3,
                0,
                10,
                0,
            ),
            (
                OutlierDetection {
                    consecutive_5xx_errors: Some(0),
                    consecutive_gateway_errors: Some(3),
                    ..Default::default()
                },
                0,
                3,
                0,
                10,
                0,
            ),
            (
                OutlierDetection {
                    consecutive_gateway_errors: Some(0),
                    ..Default::default()
                },
                5,
                0,
                0,
                10,
                0,
            ),
            // The count without the split is ignored (Istio's validation says so).
            (
                OutlierDetection {
                    consecutive_local_origin_failures: Some(2),
                    ..Default::default()
                },
                5,
                0,
                0,
                10,
                0,
            ),
            (
                OutlierDetection {
                    split_external_local_origin_errors: Some(true),
                    ..Default::default()
                },
                5,
                0,
                5,
                10,
                0,
            ),
            (
                OutlierDetection {
                    split_external_local_origin_errors: Some(true),
                    consecutive_local_origin_failures: Some(2),
                    ..Default::default()
                },
                5,
                0,
                2,
                10,
                0,
            ),
            // maxEjectionPercent 0 keeps Envoy's 10 (Istio sets only positive values).
            (
                OutlierDetection {
                    max_ejection_percent: Some(0),
                    min_health_percent: Some(50),
                    ..Default::default()
                },
                5,
                0,
                0,
                10,
                50,
            ),
            (
                OutlierDetection {
                    max_ejection_percent: Some(100),
                    consecutive_errors: Some(1),
                    ..Default::default()
                },
                5,
                0,
                0,
                100,
                0,
            ),
            (
                OutlierDetection {
                    max_ejection_percent: Some(250),
                    min_health_percent: Some(-1),
                    ..Default::default()
                },
                5,
                0,
                0,
                100,
                50,
            ),
        ];
        for (od, c5, gw, local, max, panic) in table {
            let s = OutlierSettings::of(&od);
            assert_eq!(
                (
                    s.consecutive_5xx,
                    s.consecutive_gateway,
                    s.consecutive_local_origin,
                    s.max_ejection_percent,
                    s.panic_threshold
                ),
                (c5, gw, local, max, panic),
                "{od:?}"
            );
        }
        // The longest ejection is at least the base.
        let long = OutlierSettings::of(&OutlierDetection {
            base_ejection_time: Some(Duration::from_secs(600).into()),
            ..Default::default()
        });
        assert_eq!(long.max_ejection_time, Duration::from_secs(600));
        assert_eq!(long.ejection_time(3), Duration::from_secs(600));
        assert_eq!(d.ejection_time(0), Duration::ZERO);
        assert_eq!(d.ejection_time(4), Duration::from_secs(120));
        assert_eq!(d.ejection_time(11), Duration::from_secs(300));
    }

    /// Feeds `outcomes` to one endpoint and returns, after each, the detections made.
    fn run(s: &OutlierSettings, outcomes: &[Outcome]) -> Vec<Vec<EjectionType>> {
        let h = HostCounters::default();
        outcomes
            .iter()
            .map(|o| {
                let d: Vec<_> = h.record(s, *o).collect();
                for kind in &d {
                    h.reset(*kind);
                }
                d
            })
            .collect()
    }

    #[test]
    fn what_counts_towards_each_detection() {
        use EjectionType::*;
        use Outcome::*;
        let c5 = Consecutive5xx;
        let gw = ConsecutiveGatewayFailure;
        let lo = ConsecutiveLocalOriginFailure;
        let three = |od: OutlierDetection| OutlierSettings::of(&od);
        let five_xx = three(OutlierDetection {
            consecutive_5xx_errors: Some(3),
            ..Default::default()
        });
        let gateway = three(OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(2),
            ..Default::default()
        });
        let both = three(OutlierDetection {
            consecutive_5xx_errors: Some(2),
            consecutive_gateway_errors: Some(2),
            ..Default::default()
        });
        let split = three(OutlierDetection {
            consecutive_5xx_errors: Some(2),
            split_external_local_origin_errors: Some(true),
            consecutive_local_origin_failures: Some(2),
            ..Default::default()
        });
        let codes = three(OutlierDetection {
            consecutive_5xx_errors: Some(2),
            consecutive_gateway_errors: Some(1),
            outlier_detection_http_error_codes: vec![429],
            ..Default::default()
        });
        let none: Vec<EjectionType> = vec![];
        // (settings, outcomes, detections after each)
        type Case<'a> = (&'a OutlierSettings, Vec<Outcome>, Vec<Vec<EjectionType>>);
        let table: Vec<Case<'_>> = vec![
            (
                &five_xx,
                vec![Response(500), Response(503), Response(502)],
                vec![none.clone(), none.clone(), vec![c5]],
            ),
            // A success in between starts the count again.
            (
                &five_xx,
                vec![Response(500), Response(503), Response(200), Response(500)],
                vec![none.clone(), none.clone(), none.clone(), none.clone()],
            ),
            // 4xx are successes to the detector.
            (
                &five_xx,
                vec![Response(500), Response(404), Response(500), Response(500)],
                vec![none.clone(), none.clone(), none.clone(), none.clone()],
            ),
            // Unsplit, connect failures and timeouts are 503 and 504.
            (
                &five_xx,
                vec![ConnectFailed, Timeout, Response(501)],
                vec![none.clone(), none.clone(), vec![c5]],
            ),
            (
                &gateway,
                vec![Response(503), Response(504)],
                vec![none.clone(), vec![gw]],
            ),
            // Another 5xx resets the gateway count.
            (
                &gateway,
                vec![Response(503), Response(500), Response(502)],
                vec![none.clone(), none.clone(), none.clone()],
            ),
            (
                &gateway,
                vec![ConnectFailed, Timeout],
                vec![none.clone(), vec![gw]],
            ),
            // One response can complete both, gateway first.
            (
                &both,
                vec![Response(502), Response(503)],
                vec![none.clone(), vec![gw, c5]],
            ),
            // Split: local-origin failures count apart, and a response resets them.
            (
                &split,
                vec![ConnectFailed, Response(500), Timeout, Response(500)],
                vec![none.clone(), none.clone(), none.clone(), vec![c5]],
            ),
            (
                &split,
                vec![ConnectFailed, Timeout, Response(500)],
                vec![none.clone(), vec![lo], none.clone()],
            ),
            // Error codes: only they are errors (a 500 to the detector, not a gateway
            // error); other statuses, 5xx included, are successes.
            (
                &codes,
                vec![Response(429), Response(503), Response(429), Response(429)],
                vec![none.clone(), none.clone(), none.clone(), vec![c5]],
            ),
            (&codes, vec![ConnectFailed], vec![vec![gw]]),
        ];
        for (s, outcomes, want) in table {
            assert_eq!(run(s, &outcomes), want, "{outcomes:?} with {s:?}");
        }
    }

    #[test]
    fn a_count_left_above_its_threshold_does_not_detect_again() {
        let s = fast(OutlierDetection {
            consecutive_5xx_errors: Some(2),
            ..Default::default()
        });
        let h = HostCounters::default();
        let detected: Vec<bool> = (0..5)
            .map(|_| !h.record(&s, Outcome::Response(500)).is_empty())
            .collect();
        assert_eq!(detected, [false, true, false, false, false]);
        assert_eq!(h.consecutive(EjectionType::Consecutive5xx), 5);
        h.reset_all();
        assert_eq!(h.consecutive(EjectionType::Consecutive5xx), 0);
        assert_eq!((h.successes(), h.errors()), (0, 5));
        h.record(&s, Outcome::Response(204));
        assert_eq!((h.successes(), h.errors()), (1, 5));
    }

    #[test]
    fn grpc_statuses_map_as_envoy_maps_them() {
        let table = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (7, 403),
            (8, 429),
            (12, 501),
            (13, 500),
            (14, 503),
            (16, 401),
            (99, 500),
        ];
        for (grpc, http) in table {
            assert_eq!(grpc_to_http(grpc), http, "{grpc}");
        }
    }

    #[test]
    fn ejection_times_grow_with_each_ejection_and_decay_while_healthy() {
        let s = fast(OutlierDetection {
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let mut e = Ejections::new(1, Duration::ZERO);
        let mut back = Vec::new();
        // First ejection at 150 ms: 500 ms, back at the sweep of 700 ms.
        assert_eq!(
            e.on_detected(&s, 0, ms(150), &mut |i| back.push(i)),
            Verdict::Ejected { until: ms(650) }
        );
        assert_eq!(e.returns_at(&s, 0), Some(ms(700)));
        assert!(!e.tick(&s, ms(699), &mut |i| back.push(i)));
        assert!(e.is_ejected(0));
        assert!(e.tick(&s, ms(700), &mut |i| back.push(i)));
        assert_eq!(back, [0]);
        assert!(!e.is_ejected(0));
        // Ejected again at once: 2 × 500 ms.
        assert_eq!(
            e.on_detected(&s, 0, ms(750), &mut |_| {}),
            Verdict::Ejected { until: ms(1750) }
        );
        assert_eq!(e.host(0).map(|h| (h.ejections, h.backoff)), Some((2, 2)));
        assert_eq!(e.returns_at(&s, 0), Some(ms(1800)));
        // Back at 1800 ms; the multiplier drops at each sweep from 1900 ms on.
        e.tick(&s, ms(1850), &mut |_| {});
        assert_eq!(e.host(0).map(|h| h.backoff), Some(2));
        e.tick(&s, ms(1900), &mut |_| {});
        assert_eq!(e.host(0).map(|h| h.backoff), Some(1));
        e.tick(&s, ms(60_000), &mut |_| {});
        assert_eq!(e.host(0).map(|h| h.backoff), Some(0));
        assert_eq!(
            e.on_detected(&s, 0, ms(60_010), &mut |_| {}),
            Verdict::Ejected { until: ms(60_510) }
        );
        // Many sweeps at once give the same result as one by one.
        let mut one_by_one = e.clone();
        let mut t = 60_000;
        while t <= 90_000 {
            one_by_one.tick(&s, ms(t), &mut |_| {});
            t += 100;
        }
        e.tick(&s, ms(90_000), &mut |_| {});
        assert_eq!(e, one_by_one);
        assert_eq!(e.enforced(), 3);
    }

    #[test]
    fn the_multiplier_stops_at_the_longest_ejection() {
        let s = OutlierSettings::of(&OutlierDetection {
            base_ejection_time: Some(Duration::from_secs(100).into()),
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let mut e = Ejections::new(1, Duration::ZERO);
        let mut times = Vec::new();
        let mut now = Duration::ZERO;
        for _ in 0..6 {
            let Verdict::Ejected { until } = e.on_detected(&s, 0, now, &mut |_| {}) else {
                panic!("not ejected")
            };
            times.push((until - now).as_secs());
            now = e.returns_at(&s, 0).unwrap_or(now);
            e.tick(&s, now, &mut |_| {});
        }
        // 100, 200, 300 (the maximum), and the multiplier stays at 4 (400 < 300 + 100).
        assert_eq!(times, [100, 200, 300, 300, 300, 300]);
        assert_eq!(e.host(0).map(|h| h.backoff), Some(4));
    }

    #[test]
    fn max_ejection_percent_as_envoy_counts_it() {
        // (endpoints, max %, detections in a row, ejected)
        let table = [
            // Istio's default 10% never ejects in a cluster of fewer than 10 endpoints.
            (3, 10, 3, 0),
            (9, 10, 3, 0),
            (10, 10, 3, 1),
            (20, 10, 5, 2),
            // 1 of 3 is 33.3%.
            (3, 34, 3, 1),
            (3, 33, 3, 0),
            (3, 67, 3, 2),
            (3, 100, 3, 3),
            (1, 100, 1, 1),
            (2, 50, 2, 1),
        ];
        for (n, max, detections, want) in table {
            let s = fast(OutlierDetection {
                max_ejection_percent: Some(max),
                ..Default::default()
            });
            let mut e = Ejections::new(n, Duration::ZERO);
            for i in 0..detections {
                e.on_detected(&s, i, ms(10), &mut |_| {});
            }
            assert_eq!(e.active(), want, "{n} endpoints, {max}%");
            assert_eq!(
                e.overflow(),
                (detections - want as usize) as u64,
                "{n} endpoints, {max}%"
            );
        }
    }

    #[test]
    fn late_outcomes_of_an_ejected_endpoint_change_nothing() {
        let s = fast(OutlierDetection {
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let mut e = Ejections::new(2, Duration::ZERO);
        assert!(matches!(
            e.on_detected(&s, 1, ms(5), &mut |_| {}),
            Verdict::Ejected { .. }
        ));
        let before = e.clone();
        assert_eq!(
            e.on_detected(&s, 1, ms(6), &mut |_| {}),
            Verdict::AlreadyEjected
        );
        assert_eq!(e, before);
        assert_eq!(e.on_detected(&s, 7, ms(6), &mut |_| {}), Verdict::Unknown);
    }

    #[test]
    fn panic_below_the_healthy_threshold() {
        // (endpoints, ejected, minHealthPercent, in panic)
        let table = [
            (3, 1, 0, false),
            (3, 3, 0, false),
            (3, 1, 50, false),
            (3, 2, 50, true),
            (4, 2, 50, false),
            (4, 3, 50, true),
            (3, 1, 67, true),
            (3, 0, 100, false),
            (3, 1, 100, true),
        ];
        for (n, ejected, min, want) in table {
            let s = fast(OutlierDetection {
                max_ejection_percent: Some(100),
                min_health_percent: Some(min),
                ..Default::default()
            });
            let mut e = Ejections::new(n, Duration::ZERO);
            for i in 0..ejected {
                e.on_detected(&s, i, ms(1), &mut |_| {});
            }
            assert_eq!(e.in_panic(&s), want, "{ejected}/{n} ejected, {min}%");
        }
    }

    #[test]
    fn a_new_endpoint_set_keeps_the_endpoints_that_stay() {
        let s = fast(OutlierDetection {
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let mut e = Ejections::new(3, Duration::ZERO);
        e.on_detected(&s, 0, ms(1), &mut |_| {});
        e.on_detected(&s, 2, ms(1), &mut |_| {});
        // Endpoint 2 moves to index 0, endpoint 0 leaves, a new one comes.
        let next = e.remap(2, |i| [Some(2), None][i]);
        assert_eq!(next.active(), 1);
        assert!(next.is_ejected(0));
        assert!(!next.is_ejected(1));
        assert_eq!(next.host(0), e.host(2));
        assert_eq!(next.enforced(), 2);
    }

    /// A step of a random run: an endpoint detected, or time passing.
    #[derive(Debug, Clone)]
    enum Step {
        Detect(usize),
        Wait(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..8).prop_map(Step::Detect),
            (0u64..2_000).prop_map(Step::Wait),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x0de7),
            failure_persistence: None,
            cases: 500,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever happens: never more than maxEjectionPercent ejected; an ejected
        /// endpoint is out at least its ejection time and back at the first sweep after
        /// it; the active count matches the endpoints ejected.
        #[test]
        fn ejection_invariants(
            n in 1usize..8,
            max in 1i32..=100,
            min_health in 0i32..=100,
            interval in 1u64..300,
            base in 0u64..1_000,
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let s = OutlierSettings::of(&OutlierDetection {
                interval: yd(interval),
                base_ejection_time: yd(base),
                max_ejection_percent: Some(max),
                min_health_percent: Some(min_health),
                ..Default::default()
            });
            let mut e = Ejections::new(n, Duration::ZERO);
            let mut now = Duration::ZERO;
            for st in steps {
                let before = e.clone();
                match st {
                    Step::Wait(d) => {
                        now += ms(d);
                        let mut back = Vec::new();
                        e.tick(&s, now, &mut |i| back.push(i));
                        for i in 0..n {
                            let was = before.is_ejected(i);
                            let returns = before.returns_at(&s, i);
                            // Back exactly when its return sweep has come.
                            proptest::prop_assert_eq!(
                                back.contains(&i),
                                was && returns.is_some_and(|r| r <= now),
                                "endpoint {} at {:?}", i, now
                            );
                            if let (true, Some(r)) = (was, returns) {
                                let h = before.host(i).copied().unwrap_or_default();
                                let at = h.ejected_at.unwrap_or_default();
                                proptest::prop_assert!(r >= at + s.ejection_time(h.backoff));
                                proptest::prop_assert!(r < at + s.ejection_time(h.backoff) + s.interval);
                            }
                        }
                    }
                    Step::Detect(i) => {
                        let i = i % n;
                        let v = e.on_detected(&s, i, now, &mut |_| {});
                        if let Verdict::Ejected { until } = v {
                            proptest::prop_assert!(until >= now);
                            proptest::prop_assert!(e.is_ejected(i));
                        }
                    }
                }
                let active = (0..n).filter(|i| e.is_ejected(*i)).count() as u64;
                proptest::prop_assert_eq!(active, u64::from(e.active()));
                proptest::prop_assert!(100 * active <= (max.min(100) as u64) * n as u64);
                proptest::prop_assert_eq!(
                    e.in_panic(&s),
                    (min_health as u64) * (n as u64) > 100 * (n as u64 - active)
                );
            }
            // Left alone long enough, every endpoint comes back.
            let mut back = 0;
            e.tick(&s, now + s.max_ejection_time + s.interval, &mut |_| back += 1);
            proptest::prop_assert_eq!(e.active(), 0);
        }
    }
}
