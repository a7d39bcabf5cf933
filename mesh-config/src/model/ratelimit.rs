//! `LocalRateLimitPolicy` (`mesh.rs/v1alpha1`): local rate limits of the workloads it
//! selects, written the way Istio writes its APIs.
//!
//! Istio configures rate limits only through EnvoyFilter; this resource says the same
//! thing for the common cases in a few lines, modelled on Linkerd's
//! `HTTPLocalRateLimitPolicy`: a limit for all requests arriving at a workload
//! (`total`), a limit for each caller identity (`identity`: every SPIFFE principal gets a
//! bucket of its own, so that one caller cannot starve the others), and limits for named
//! callers (`overrides`, replacing `identity` for the service accounts they list).
//!
//! ```yaml
//! apiVersion: mesh.rs/v1alpha1
//! kind: LocalRateLimitPolicy
//! metadata: {name: productpage, namespace: default}
//! spec:
//!   workloadSelector: {labels: {app: productpage}}   # absent: every workload of the namespace
//!   total: {requestsPerSecond: 100, burst: 200}       # burst defaults to the rate's count
//!   identity: {requestsPerSecond: 20}
//!   overrides:
//!   - requestsPerSecond: 50
//!     clientRefs: [{kind: ServiceAccount, namespace: default, name: bookinfo-reviews}]
//! ```
//!
//! A rate is `requestsPerSecond`, `requestsPerMinute` or `requestsPerHour` (one of
//! them): `total: {requestsPerMinute: 4}` is the limit of Istio's rate limit task. Each
//! limit is a token bucket as Envoy's local rate limit filter keeps it: it holds `burst`
//! tokens (full at first) and gains the rate's count of tokens per unit, continuously; a
//! request takes one token or is refused with `429 local_rate_limited`. Callers without a
//! verified identity (plaintext, under PERMISSIVE) share one identity bucket, the
//! "unauthenticated" caller's.

use std::time::Duration;

use serde::Deserialize;

use super::common::LabelSelector;

/// The spec of a `LocalRateLimitPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRateLimitPolicy {
    /// The workloads it applies to (every workload of its namespace when absent; of every
    /// namespace for a policy in the root namespace).
    pub workload_selector: Option<LabelSelector>,
    /// The limit of all requests arriving at a workload.
    pub total: Option<RateLimitSpec>,
    /// The limit of each caller identity.
    pub identity: Option<RateLimitSpec>,
    /// Limits of named callers, instead of `identity`.
    pub overrides: Vec<RateLimitOverride>,
}

/// A rate (one of per second, per minute, per hour), with a burst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Tokens added per second.
    pub requests_per_second: Option<u32>,
    /// Tokens added per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens added per hour.
    pub requests_per_hour: Option<u32>,
    /// Tokens the bucket holds (the rate's count when absent).
    pub burst: Option<u32>,
}

impl RateLimitSpec {
    /// The rate: a count of tokens and the time they are added over (the first set of
    /// per second, per minute and per hour; `None` when none is).
    pub fn rate(&self) -> Option<(u32, Duration)> {
        [
            (self.requests_per_second, 1),
            (self.requests_per_minute, 60),
            (self.requests_per_hour, 3600),
        ]
        .into_iter()
        .find_map(|(n, secs)| n.map(|n| (n, Duration::from_secs(secs))))
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.rate().map_or(0, |(n, _)| n))
    }

    /// Tokens per hour, to compare rates.
    pub fn per_hour(&self) -> u64 {
        self.rate()
            .map_or(0, |(n, unit)| u64::from(n) * 3600 / unit.as_secs().max(1))
    }

    /// How many of per second, per minute and per hour are set.
    pub fn rates_set(&self) -> usize {
        [
            self.requests_per_second,
            self.requests_per_minute,
            self.requests_per_hour,
        ]
        .iter()
        .filter(|r| r.is_some())
        .count()
    }
}

/// The limit of some named callers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitOverride {
    /// Tokens added per second.
    pub requests_per_second: Option<u32>,
    /// Tokens added per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens added per hour.
    pub requests_per_hour: Option<u32>,
    /// Tokens the bucket holds (the rate's count when absent).
    pub burst: Option<u32>,
    /// The callers, who share this limit.
    pub client_refs: Vec<ClientRef>,
}

impl RateLimitOverride {
    /// The override's rate.
    pub fn spec(&self) -> RateLimitSpec {
        RateLimitSpec {
            requests_per_second: self.requests_per_second,
            requests_per_minute: self.requests_per_minute,
            requests_per_hour: self.requests_per_hour,
            burst: self.burst,
        }
    }
}

/// A caller: a Kubernetes service account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientRef {
    /// API group (the core group: empty).
    pub group: String,
    /// `ServiceAccount`.
    pub kind: String,
    /// Namespace (the policy's when absent).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}
