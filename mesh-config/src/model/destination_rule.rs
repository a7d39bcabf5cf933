//! DestinationRule (`networking.istio.io`): policies for traffic to a host, after routing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{Labels, PortSelector, WorkloadSelector};
use crate::duration::Duration;

/// The spec of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    /// The host the rule applies to.
    pub host: String,
    /// Policies for the whole host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets (versions) of the host.
    pub subsets: Vec<Subset>,
    /// Namespaces this rule is visible to.
    pub export_to: Vec<String>,
    /// Workloads (callers) the rule applies to.
    pub workload_selector: Option<WorkloadSelector>,
}

/// A named subset of a host's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Subset name, referenced by VirtualService destinations.
    pub name: String,
    /// Labels an endpoint must have to belong to the subset.
    pub labels: Labels,
    /// Policies overriding the host-level ones.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing, connection pool, outlier detection and TLS policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits (circuit breaking).
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the upstream.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel settings.
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol to the upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    pub retry_budget: Option<RetryBudget>,
}

/// Per-port traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS.
    pub tls: Option<ClientTlsSettings>,
}

/// Simple load balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default (LEAST_REQUEST).
    #[default]
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Uniformly random.
    Random,
    /// Forward to the address the caller asked for.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Power of two choices on outstanding requests.
    LeastRequest,
}

/// Load balancer settings: one of `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Weighted round robin from endpoints' reported utilization (ORCA).
    pub backend_utilization: Option<BackendUtilizationLb>,
    /// Locality-aware load balancing.
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware load balancing.
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Slow start window for new endpoints.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start settings.
    pub warmup: Option<WarmupConfiguration>,
}

/// Consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// Hash on a header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie (generated when absent).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash.
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<MagLev>,
    /// Deprecated ring size (use `ringHash.minimumRingSize`).
    pub minimum_ring_size: Option<u64>,
}

/// A cookie to hash on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    pub ttl: Option<Duration>,
    /// Extra cookie attributes.
    pub attributes: Vec<CookieAttribute>,
}

/// One cookie attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CookieAttribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// Weighted round robin driven by endpoints' utilization reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendUtilizationLb {
    /// Time before new weights are used.
    pub weight_stabilization_period: Option<Duration>,
    /// Time after which a weight expires.
    pub weight_expiration_period: Option<Duration>,
    /// Period of weight updates.
    pub weight_update_period: Option<Duration>,
    /// Penalty for errors, in percent.
    pub error_utilization_penalty_percent: Option<u32>,
    /// Metrics used as utilization.
    pub metric_names_for_computing_utilization: Vec<String>,
}

/// Zone-aware load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneAwareLbSetting {
    /// Enable it.
    pub enabled: Option<bool>,
    /// Failover between regions.
    pub failover: Vec<LocalityFailover>,
    /// Failover priority labels.
    pub failover_priority: Vec<String>,
    /// Smallest cluster size it applies to.
    pub min_cluster_size: Option<u32>,
}

/// Ring hash settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring.
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MagLev {
    /// Lookup table size (a prime).
    pub table_size: Option<u64>,
}

/// Locality-aware load balancing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// Weighted distribution between localities.
    pub distribute: Vec<LocalityDistribute>,
    /// Failover between regions.
    pub failover: Vec<LocalityFailover>,
    /// Failover priority labels.
    pub failover_priority: Vec<String>,
    /// Enable locality load balancing.
    pub enabled: Option<bool>,
}

/// Traffic distribution from one locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityDistribute {
    /// Origin locality.
    pub from: String,
    /// Destination localities and their weights.
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityFailover {
    /// Origin region.
    pub from: String,
    /// Failover region.
    pub to: String,
}

/// Slow start.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WarmupConfiguration {
    /// Warmup window.
    pub duration: Option<Duration>,
    /// Minimum share of traffic at the start.
    pub minimum_percent: Option<f64>,
    /// Aggression of the ramp.
    pub aggression: Option<f64>,
}

/// Connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// TCP connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    /// Maximum connections per destination host.
    pub max_connections: Option<i32>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of a connection.
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<Duration>,
    /// Interval between probes.
    pub interval: Option<Duration>,
}

/// Whether HTTP/1.1 connections are upgraded to HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    #[default]
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

/// HTTP connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Maximum queued requests.
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests.
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection.
    pub max_requests_per_connection: Option<i32>,
    /// Maximum concurrent retries.
    pub max_retries: Option<i32>,
    /// Idle timeout.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the caller's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 keepalive pings.
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// HTTP/2 keepalive pings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionKeepalive {
    /// Interval between pings.
    pub interval: Option<Duration>,
    /// Time to wait for a ping's answer.
    pub timeout: Option<Duration>,
}

/// Outlier detection (ejection of failing endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: consecutive errors (use consecutive5xxErrors / consecutiveGatewayErrors).
    pub consecutive_errors: Option<i32>,
    /// Separate local origin failures from upstream ones.
    pub split_external_local_origin_errors: Option<bool>,
    /// Consecutive locally originated failures before ejection.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive gateway errors (502, 503, 504) before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx errors before ejection.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Interval between ejection sweeps.
    pub interval: Option<Duration>,
    /// Minimum ejection duration.
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected.
    pub max_ejection_percent: Option<i32>,
    /// Panic threshold: below this share of healthy endpoints, ejection stops.
    pub min_health_percent: Option<i32>,
    /// Status codes counted as errors (instead of 5xx).
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// TLS modes to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS, server verified.
    Simple,
    /// Mutual TLS with the given certificates.
    Mutual,
    /// Mutual TLS with mesh identities.
    IstioMutual,
}

/// TLS to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate (PEM file).
    pub client_certificate: Option<String>,
    /// Client key (PEM file).
    pub private_key: Option<String>,
    /// CA certificates (PEM file).
    pub ca_certificates: Option<String>,
    /// Name of a secret holding the certificates.
    pub credential_name: Option<String>,
    /// Accepted subject alternative names.
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip server verification.
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list (PEM file).
    pub ca_crl: Option<String>,
}

/// Tunnel settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelSettings {
    /// `CONNECT` or `POST`.
    pub protocol: Option<String>,
    /// Tunnel target host.
    pub target_host: String,
    /// Tunnel target port.
    pub target_port: u32,
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum ProxyProtocolVersion {
    /// Version 1 (text).
    #[default]
    V1,
    /// Version 2 (binary).
    V2,
}

/// PROXY protocol to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// Version.
    pub version: Option<ProxyProtocolVersion>,
}

/// Retry budget: retries allowed as a share of active requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Share of active requests that may be retries.
    pub percent: Option<f64>,
    /// Retries always allowed.
    pub min_retry_concurrency: Option<u32>,
    /// Window over which requests are counted.
    pub budget_interval: Option<Duration>,
}

/// The annotation of a DestinationRule that gives its clusters Linkerd's retry budget:
/// `mesh.rs/retry-budget: "retryRatio=0.2,minRetriesPerSecond=10,ttl=10s"`.
pub const RETRY_BUDGET_ANNOTATION: &str = "mesh.rs/retry-budget";

/// Linkerd's retry budget: retries may add at most `retry_ratio` of the requests sent
/// over the last `ttl`, plus `min_retries_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRetryBudget {
    /// Retries per original request (Linkerd's default 0.2).
    pub retry_ratio: f32,
    /// Retries always allowed per second (Linkerd's default 10).
    pub min_retries_per_second: u32,
    /// The window requests are counted over, 1 to 60 s (Linkerd's default 10 s).
    pub ttl: std::time::Duration,
}

impl Default for RequestRetryBudget {
    fn default() -> Self {
        RequestRetryBudget {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: std::time::Duration::from_secs(10),
        }
    }
}

impl RequestRetryBudget {
    /// Reads the annotation's value: comma-separated `key=value` pairs among
    /// `retryRatio` (0 to 1000), `minRetriesPerSecond` and `ttl` (1 s to 60 s); a key
    /// left out keeps Linkerd's default.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut b = RequestRetryBudget::default();
        let mut seen = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("`{part}` is not `key=value`"));
            };
            let (k, v) = (k.trim(), v.trim());
            if seen.contains(&k) {
                return Err(format!("`{k}` is given twice"));
            }
            seen.push(k);
            match k {
                "retryRatio" => {
                    b.retry_ratio = v
                        .parse::<f32>()
                        .ok()
                        .filter(|r| r.is_finite() && (0.0..=1000.0).contains(r))
                        .ok_or_else(|| {
                            format!("retryRatio `{v}` is not a number from 0 to 1000")
                        })?;
                }
                "minRetriesPerSecond" => {
                    b.min_retries_per_second = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n < i32::MAX as u32)
                        .ok_or_else(|| {
                            format!(
                                "minRetriesPerSecond `{v}` is not an integer from 0 to 2147483646"
                            )
                        })?;
                }
                "ttl" => {
                    let d = crate::duration::parse_duration(v)
                        .map_err(|e| format!("ttl `{v}`: {e}"))?
                        .get();
                    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(60))
                        .contains(&d)
                    {
                        return Err(format!("ttl `{v}` is outside 1s to 60s"));
                    }
                    b.ttl = d;
                }
                other => {
                    return Err(format!(
                        "unknown key `{other}` (expected retryRatio, minRetriesPerSecond or ttl)"
                    ));
                }
            }
        }
        Ok(b)
    }
}

#[cfg(test)]
mod retry_budget_tests {
    use super::*;

    #[test]
    fn annotation_values() {
        let ok = [
            ("", RequestRetryBudget::default()),
            (
                "retryRatio=0.5, minRetriesPerSecond=2, ttl=5s",
                RequestRetryBudget {
                    retry_ratio: 0.5,
                    min_retries_per_second: 2,
                    ttl: std::time::Duration::from_secs(5),
                },
            ),
            (
                "minRetriesPerSecond=0",
                RequestRetryBudget {
                    min_retries_per_second: 0,
                    ..RequestRetryBudget::default()
                },
            ),
        ];
        for (text, want) in ok {
            assert_eq!(RequestRetryBudget::parse(text), Ok(want), "{text}");
        }
        let bad = [
            ("retryRatio", "not `key=value`"),
            ("retryRatio=-1", "from 0 to 1000"),
            ("retryRatio=x", "from 0 to 1000"),
            ("minRetriesPerSecond=1.5", "integer from 0"),
            ("minRetriesPerSecond=2147483647", "integer from 0"),
            ("ttl=90s", "outside 1s to 60s"),
            ("ttl=500ms", "outside 1s to 60s"),
            ("ratio=1", "unknown key `ratio`"),
            ("ttl=2s,ttl=3s", "given twice"),
        ];
        for (text, want) in bad {
            let err = RequestRetryBudget::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
