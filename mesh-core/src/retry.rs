//! Retries, compiled: Envoy's `x-envoy-retry-on` conditions as Istio configures them.
//!
//! Istio's `retry.ConvertPolicy`: a route without `retries` gets the mesh's default
//! (`defaultHttpRetryPolicy`; Istio's: 2 attempts on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503
//! retriable). A `retries` block starts from Istio's hard-coded default conditions (not
//! the mesh's) and its `retryOn`, when set, replaces both the conditions and the status
//! codes: numbers in it are the retriable status codes, so `retriable-status-codes` alone
//! retries no status. Backoff is Envoy's jittered
//! exponential: retry *k* waits a uniformly random time below `base × (2^k − 1)`, capped at
//! ten times the base (25 ms by default).
//!
//! ```
//! use mesh_core::retry::{Attempt, Retries};
//! use mesh_config::model::HttpRetry;
//!
//! let p = Retries::compile(Some(&HttpRetry { attempts: 3, retry_on: Some("5xx".into()), ..Default::default() }), &HttpRetry::default());
//! assert_eq!(p.attempts, 3);
//! assert!(p.should_retry(&Attempt::Status(503, None)));
//! assert!(!p.should_retry(&Attempt::Status(404, None)));
//! ```

use std::time::Duration;

use mesh_config::model::{DEFAULT_RETRY_ON, HttpRetry};
use rand_core::Rng;

use crate::balance::below;

/// Envoy's default base backoff interval.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Retry conditions, as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

macro_rules! conditions {
    ($($name:ident = $bit:expr, $text:literal;)*) => {
        impl RetryOn {
            $(
                #[doc = concat!("`", $text, "`")]
                pub const $name: RetryOn = RetryOn(1 << $bit);
            )*

            fn from_name(name: &str) -> Option<RetryOn> {
                match name {
                    $($text => Some(RetryOn::$name),)*
                    _ => None,
                }
            }

            /// The condition names, comma-separated, in a fixed order.
            pub fn names(self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $(if self.contains(RetryOn::$name) { out.push($text); })*
                out
            }
        }
    };
}

conditions! {
    FIVE_XX = 0, "5xx";
    GATEWAY_ERROR = 1, "gateway-error";
    RESET = 2, "reset";
    RESET_BEFORE_REQUEST = 3, "reset-before-request";
    CONNECT_FAILURE = 4, "connect-failure";
    ENVOY_RATELIMITED = 5, "envoy-ratelimited";
    RETRIABLE_4XX = 6, "retriable-4xx";
    REFUSED_STREAM = 7, "refused-stream";
    RETRIABLE_STATUS_CODES = 8, "retriable-status-codes";
    RETRIABLE_HEADERS = 9, "retriable-headers";
    HTTP3_POST_CONNECT_FAILURE = 10, "http3-post-connect-failure";
    GRPC_CANCELLED = 11, "cancelled";
    GRPC_DEADLINE_EXCEEDED = 12, "deadline-exceeded";
    GRPC_INTERNAL = 13, "internal";
    GRPC_RESOURCE_EXHAUSTED = 14, "resource-exhausted";
    GRPC_UNAVAILABLE = 15, "unavailable";
}

impl RetryOn {
    /// True when every condition of `other` is set.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets.
    pub fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    /// True when nothing is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A response arrived: its status and its `grpc-status` header, if any.
    Status(u16, Option<u32>),
    /// The connection could not be made.
    ConnectFailure,
    /// The stream was reset (or the connection lost) before response headers.
    Reset,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// A route's retries, compiled (Istio's `HTTPRetry`, Envoy's retry policy).
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Retries after the first attempt (0 = none).
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub retry_on: RetryOn,
    /// Status codes retried with `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Base backoff interval.
    pub backoff_base: Duration,
    /// Avoid endpoints already tried (Istio's default: true).
    pub ignore_previous_hosts: bool,
}

impl Retries {
    /// No retries.
    pub fn none() -> Self {
        Retries {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            retriable_status_codes: Vec::new(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            ignore_previous_hosts: true,
        }
    }

    /// The retries of a route: its `retries`, or `default` (the mesh's
    /// `defaultHttpRetryPolicy`) when it has none, as Istio's `ConvertPolicy` does:
    ///
    /// - a `retries` block starts from Istio's hard-coded default conditions
    ///   ([`DEFAULT_RETRY_ON`] with 503 retriable), whatever the mesh's default says;
    /// - a `retryOn`, when set, replaces both the conditions and the retriable status
    ///   codes with what it names (`retriable-status-codes` alone retries no status);
    /// - without `retries`, the mesh's default applies; when it names
    ///   `retriable-status-codes` without codes, 503 is retriable (Istio's default).
    pub fn compile(retries: Option<&HttpRetry>, default: &HttpRetry) -> Self {
        let retry_on_text = |r: &HttpRetry| {
            r.retry_on
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        };
        let (r, (retry_on, codes)) = match retries {
            Some(r) => (
                r,
                match retry_on_text(r) {
                    Some(text) => parse_retry_on(&text),
                    None => istio_default_retry_on(),
                },
            ),
            None => (
                default,
                match retry_on_text(default) {
                    Some(text) => {
                        let (on, mut codes) = parse_retry_on(&text);
                        if on.contains(RetryOn::RETRIABLE_STATUS_CODES) && codes.is_empty() {
                            codes.push(503);
                        }
                        (on, codes)
                    }
                    None => istio_default_retry_on(),
                },
            ),
        };
        Retries {
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            per_try_timeout: r.per_try_timeout.map(|d| d.get()).filter(|d| !d.is_zero()),
            retry_on,
            retriable_status_codes: codes,
            backoff_base: r
                .backoff
                .map(|d| d.get())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_BACKOFF_BASE),
            ignore_previous_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
        }
    }

    /// True when some condition looks at the `grpc-status` of a response (so that it must
    /// be read).
    pub fn reads_grpc_status(&self) -> bool {
        let on = self.retry_on;
        [
            RetryOn::GRPC_CANCELLED,
            RetryOn::GRPC_DEADLINE_EXCEEDED,
            RetryOn::GRPC_RESOURCE_EXHAUSTED,
            RetryOn::GRPC_INTERNAL,
            RetryOn::GRPC_UNAVAILABLE,
        ]
        .iter()
        .any(|c| on.contains(*c))
    }

    /// True when an attempt that ended like `a` may be retried.
    pub fn should_retry(&self, a: &Attempt) -> bool {
        let on = self.retry_on;
        match *a {
            Attempt::ConnectFailure => {
                on.contains(RetryOn::CONNECT_FAILURE)
                    || on.contains(RetryOn::FIVE_XX)
                    || on.contains(RetryOn::GATEWAY_ERROR)
                    || on.contains(RetryOn::RESET)
                    || on.contains(RetryOn::RESET_BEFORE_REQUEST)
            }
            // Envoy's wouldRetryFromReset: any reset under 5xx, gateway-error and reset;
            // a refused stream also under refused-stream.
            Attempt::Reset => {
                on.contains(RetryOn::FIVE_XX)
                    || on.contains(RetryOn::GATEWAY_ERROR)
                    || on.contains(RetryOn::RESET)
            }
            Attempt::RefusedStream => {
                on.contains(RetryOn::FIVE_XX)
                    || on.contains(RetryOn::GATEWAY_ERROR)
                    || on.contains(RetryOn::RESET)
                    || on.contains(RetryOn::REFUSED_STREAM)
            }
            Attempt::PerTryTimeout => {
                on.contains(RetryOn::FIVE_XX)
                    || on.contains(RetryOn::GATEWAY_ERROR)
                    || on.contains(RetryOn::RESET)
            }
            Attempt::Status(status, grpc) => {
                (on.contains(RetryOn::FIVE_XX) && (500..=599).contains(&status))
                    || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                    || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
                    || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                        && self.retriable_status_codes.contains(&status))
                    || grpc.is_some_and(|g| grpc_retriable(on, g))
            }
        }
    }

    /// The wait before retry number `retry` (1 for the first retry): uniformly random
    /// below `base × (2^retry − 1)`, capped at ten times the base.
    pub fn backoff(&self, retry: u32, rng: &mut dyn Rng) -> Duration {
        let base = self.backoff_base.as_nanos().min(u128::from(u64::MAX)) as u64;
        let max = base.saturating_mul(10);
        let mult = (1u64 << retry.clamp(1, 32)) - 1;
        let ceiling = base.saturating_mul(mult).min(max);
        Duration::from_nanos(below(rng.next_u64(), ceiling.max(1)))
    }
}

/// Istio's hard-coded default conditions (`DefaultPolicy()`): [`DEFAULT_RETRY_ON`], 503.
fn istio_default_retry_on() -> (RetryOn, Vec<u16>) {
    let (on, _) = parse_retry_on(DEFAULT_RETRY_ON);
    (on, vec![503])
}

fn grpc_retriable(on: RetryOn, code: u32) -> bool {
    match code {
        1 => on.contains(RetryOn::GRPC_CANCELLED),
        4 => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
        8 => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
        13 => on.contains(RetryOn::GRPC_INTERNAL),
        14 => on.contains(RetryOn::GRPC_UNAVAILABLE),
        _ => false,
    }
}

/// Reads `retryOn`: condition names and status codes (a code implies
/// `retriable-status-codes`). Unknown names are ignored (validation reports them).
pub fn parse_retry_on(text: &str) -> (RetryOn, Vec<u16>) {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Ok(code) = item.parse::<u16>() {
            if !codes.contains(&code) {
                codes.push(code);
            }
            on = on.union(RetryOn::RETRIABLE_STATUS_CODES);
        } else if let Some(c) = RetryOn::from_name(item) {
            on = on.union(c);
        }
    }
    (on, codes)
}
#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::duration::Duration as CfgDuration;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn default_retry() -> HttpRetry {
        HttpRetry {
            attempts: 2,
            retry_on: Some(DEFAULT_RETRY_ON.into()),
            ..HttpRetry::default()
        }
    }

    #[test]
    fn istio_default_policy() {
        let p = Retries::compile(None, &default_retry());
        assert_eq!(p.attempts, 2);
        assert_eq!(p.retriable_status_codes, [503]);
        assert_eq!(
            p.retry_on.names(),
            [
                "connect-failure",
                "refused-stream",
                "retriable-status-codes",
                "cancelled",
                "unavailable"
            ]
        );
        // table: (attempt outcome, retried?)
        let table = [
            (Attempt::ConnectFailure, true),
            (Attempt::RefusedStream, true),
            (Attempt::Status(503, None), true),
            (Attempt::Status(502, None), false),
            (Attempt::Status(500, None), false),
            (Attempt::Status(200, Some(14)), true),
            (Attempt::Status(200, Some(1)), true),
            (Attempt::Status(200, Some(13)), false),
            (Attempt::Reset, false),
            (Attempt::PerTryTimeout, false),
        ];
        // the mesh's default without codes gets Istio's 503 too
        let mesh_default = HttpRetry {
            attempts: 1,
            retry_on: Some("retriable-status-codes".into()),
            ..HttpRetry::default()
        };
        let p2 = Retries::compile(None, &mesh_default);
        assert_eq!((p2.attempts, &*p2.retriable_status_codes), (1, &[503][..]));
        for (a, want) in table {
            assert_eq!(p.should_retry(&a), want, "{a:?}");
        }
    }

    #[test]
    fn conditions_table() {
        // (retryOn, outcome, retried?)
        let table: &[(&str, Attempt, bool)] = &[
            ("5xx", Attempt::Status(500, None), true),
            ("5xx", Attempt::Status(503, None), true),
            ("5xx", Attempt::Status(404, None), false),
            ("5xx", Attempt::Reset, true),
            ("5xx", Attempt::ConnectFailure, true),
            ("5xx", Attempt::PerTryTimeout, true),
            ("gateway-error", Attempt::Status(500, None), false),
            ("gateway-error", Attempt::Status(502, None), true),
            ("gateway-error", Attempt::Status(504, None), true),
            ("gateway-error", Attempt::PerTryTimeout, true),
            ("reset", Attempt::Reset, true),
            ("reset", Attempt::Status(503, None), false),
            ("reset", Attempt::PerTryTimeout, true),
            ("connect-failure", Attempt::ConnectFailure, true),
            ("connect-failure", Attempt::Reset, false),
            ("connect-failure", Attempt::RefusedStream, false),
            ("retriable-4xx", Attempt::Status(409, None), true),
            ("retriable-4xx", Attempt::Status(404, None), false),
            ("refused-stream", Attempt::RefusedStream, true),
            ("refused-stream", Attempt::Reset, false),
            // Envoy's wouldRetryFromReset: resets under 5xx, gateway-error and reset,
            // refused streams under those and refused-stream
            ("gateway-error", Attempt::Reset, true),
            ("gateway-error", Attempt::RefusedStream, true),
            ("5xx", Attempt::RefusedStream, true),
            ("reset", Attempt::RefusedStream, true),
            ("reset-before-request", Attempt::Reset, false),
            ("retriable-status-codes", Attempt::Reset, false),
            // retryOn replaces the default codes: no code named, none retried
            ("retriable-status-codes", Attempt::Status(503, None), false),
            (
                "retriable-status-codes,502",
                Attempt::Status(503, None),
                false,
            ),
            (
                "retriable-status-codes,502",
                Attempt::Status(502, None),
                true,
            ),
            ("connect-failure", Attempt::Status(503, None), false),
            (
                "retriable-status-codes,418",
                Attempt::Status(418, None),
                true,
            ),
            ("418", Attempt::Status(418, None), true),
            ("418", Attempt::Status(503, None), false),
            ("deadline-exceeded", Attempt::Status(200, Some(4)), true),
            ("internal", Attempt::Status(200, Some(13)), true),
            ("resource-exhausted", Attempt::Status(200, Some(8)), true),
            ("unavailable", Attempt::Status(200, Some(14)), true),
            ("unavailable", Attempt::Status(200, Some(13)), false),
        ];
        for (on, a, want) in table {
            let r = HttpRetry {
                attempts: 3,
                retry_on: Some((*on).into()),
                ..HttpRetry::default()
            };
            let p = Retries::compile(Some(&r), &default_retry());
            assert_eq!(p.should_retry(a), *want, "retryOn={on} {a:?}");
        }
    }

    /// Istio's ConvertPolicy: a `retries` block starts from Istio's hard-coded default,
    /// not the mesh's; `retryOn` replaces both conditions and codes.
    #[test]
    fn route_retries_start_from_istios_default() {
        let custom_mesh_default = HttpRetry {
            attempts: 5,
            retry_on: Some("5xx,418".into()),
            ..HttpRetry::default()
        };
        let istio = Retries::compile(None, &default_retry());
        let retries = |attempts, on: Option<&str>| HttpRetry {
            attempts,
            retry_on: on.map(Into::into),
            ..HttpRetry::default()
        };
        // (retries, mesh default, attempts, conditions, codes)
        type Case = (Option<HttpRetry>, HttpRetry, u32, RetryOn, Vec<u16>);
        let table: Vec<Case> = vec![
            // no retries: the mesh's default
            (None, default_retry(), 2, istio.retry_on, vec![503]),
            (
                None,
                custom_mesh_default.clone(),
                5,
                RetryOn::FIVE_XX.union(RetryOn::RETRIABLE_STATUS_CODES),
                vec![418],
            ),
            // retries without retryOn: Istio's conditions and 503, whatever the mesh says
            (
                Some(retries(3, None)),
                custom_mesh_default.clone(),
                3,
                istio.retry_on,
                vec![503],
            ),
            (
                Some(retries(0, None)),
                default_retry(),
                0,
                istio.retry_on,
                vec![503],
            ),
            (
                Some(retries(3, Some(" "))),
                custom_mesh_default.clone(),
                3,
                istio.retry_on,
                vec![503],
            ),
            // retryOn replaces conditions and codes
            (
                Some(retries(3, Some("retriable-status-codes"))),
                default_retry(),
                3,
                RetryOn::RETRIABLE_STATUS_CODES,
                vec![],
            ),
            (
                Some(retries(3, Some("gateway-error"))),
                custom_mesh_default,
                3,
                RetryOn::GATEWAY_ERROR,
                vec![],
            ),
            (
                Some(retries(1, Some("502,504"))),
                default_retry(),
                1,
                RetryOn::RETRIABLE_STATUS_CODES,
                vec![502, 504],
            ),
        ];
        for (r, mesh, attempts, on, codes) in table {
            let p = Retries::compile(r.as_ref(), &mesh);
            assert_eq!(
                (p.attempts, p.retry_on, &p.retriable_status_codes),
                (attempts, on, &codes),
                "retries {r:?} mesh {mesh:?}"
            );
        }
        let r = HttpRetry {
            attempts: 3,
            per_try_timeout: Some(CfgDuration(Duration::from_millis(200))),
            retry_on: Some("gateway-error".into()),
            ..HttpRetry::default()
        };
        let p = Retries::compile(Some(&r), &default_retry());
        assert_eq!(
            (p.attempts, p.per_try_timeout),
            (3, Some(Duration::from_millis(200)))
        );
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = Retries::compile(None, &default_retry());
        let mut rng = StdRng::seed_from_u64(11);
        for (retry, ceiling_ms) in [(1, 25), (2, 75), (3, 175), (4, 250), (10, 250)] {
            let mut max = Duration::ZERO;
            for _ in 0..2000 {
                let b = p.backoff(retry, &mut rng);
                assert!(
                    b < Duration::from_millis(ceiling_ms),
                    "retry {retry}: {b:?}"
                );
                max = max.max(b);
            }
            // jitter covers the range: the largest of 2000 draws is near the ceiling
            assert!(
                max > Duration::from_millis(ceiling_ms * 9 / 10),
                "retry {retry}: {max:?}"
            );
        }
    }
}
