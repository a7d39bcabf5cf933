//! VirtualService (`networking.istio.io`): how requests to a host are routed.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{Headers, Labels, Percent, PortSelector, StringMatch};
use crate::duration::Duration;

/// The spec of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    /// Hosts the rules apply to (short names are qualified with the resource's namespace).
    pub hosts: Vec<String>,
    /// Gateways (and `mesh`) the rules apply to; `mesh` when empty.
    pub gateways: Vec<String>,
    /// HTTP rules, in order: the first match wins.
    pub http: Vec<HttpRoute>,
    /// TLS (SNI) rules.
    pub tls: Vec<TlsRoute>,
    /// TCP rules.
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this VirtualService is visible to.
    pub export_to: Vec<String>,
}

/// One HTTP rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name of the rule, for logs.
    pub name: Option<String>,
    /// Conditions; the rule applies when any block matches. No block matches everything.
    #[serde(rename = "match")]
    pub match_: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of routing.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of routing.
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand routing over to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Timeout of the whole request, retries included.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination.
    pub mirror: Option<Destination>,
    /// Mirror traffic to several destinations.
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage of mirrored requests.
    #[serde(alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    /// Percentage of requests mirrored.
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation.
    pub headers: Option<Headers>,
}

/// One match block: all its conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name of the match, appended to the rule's name.
    pub name: Option<String>,
    /// The path (without the query string).
    pub uri: Option<StringMatch>,
    /// The URI scheme.
    pub scheme: Option<StringMatch>,
    /// The HTTP method.
    pub method: Option<StringMatch>,
    /// The authority (Host header).
    pub authority: Option<StringMatch>,
    /// Header conditions (names are case-insensitive; `{}` checks presence).
    pub headers: BTreeMap<String, StringMatch>,
    /// The port the request was addressed to.
    pub port: Option<u32>,
    /// Labels the calling workload must have.
    pub source_labels: Labels,
    /// Gateways this match applies to.
    pub gateways: Vec<String>,
    /// Query parameter conditions.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match the uri case-insensitively.
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
    /// Statistics prefix.
    pub stat_prefix: Option<String>,
}

/// A weighted destination of an HTTP rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where the request goes.
    pub destination: Destination,
    /// Share of the traffic, in percent.
    pub weight: Option<i32>,
    /// Header manipulation for this destination.
    pub headers: Option<Headers>,
}

/// A service (and optionally a subset and port) requests go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// The service's host name.
    pub host: String,
    /// A subset defined by a DestinationRule for the host.
    pub subset: Option<String>,
    /// The port, needed when the service has several.
    pub port: Option<PortSelector>,
}

/// Which port a redirect keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// The scheme's default port.
    #[default]
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// An HTTP redirect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRedirect {
    /// Replacement path.
    pub uri: Option<String>,
    /// Replacement authority.
    pub authority: Option<String>,
    /// Replacement port.
    pub port: Option<u32>,
    /// How to choose the port.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replacement scheme.
    pub scheme: Option<String>,
    /// Status code (301 by default).
    pub redirect_code: Option<u32>,
    /// Replacement of the prefix the rule's uri match matched (Envoy's redirect
    /// `prefix_rewrite`); exclusive with `uri`.
    pub prefix_rewrite: Option<String>,
}

/// A response answered without any upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// Body of a direct response: text or base64 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// Delegation to another VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace (the delegating one's by default).
    pub namespace: Option<String>,
}

/// Path and authority rewriting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replaces the matched prefix (or the whole path for exact/regex matches).
    pub uri: Option<String>,
    /// Replaces the authority.
    pub authority: Option<String>,
    /// Regex replacement of the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex rewrite: `match` (RE2) replaced by `rewrite` (`\1` groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexRewrite {
    /// The expression.
    #[serde(rename = "match")]
    pub match_: String,
    /// The replacement.
    pub rewrite: String,
}

/// Retry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// Number of retries (not counting the first attempt).
    pub attempts: i32,
    /// Timeout per attempt.
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated Envoy retry conditions and status codes.
    pub retry_on: Option<String>,
    /// Retry to other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval of the exponential backoff.
    pub backoff: Option<Duration>,
}

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Abort with an error.
    pub abort: Option<FaultAbort>,
}

/// Injected delay.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// The delay.
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (not implemented by Istio either).
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer share of requests delayed.
    pub percent: Option<i32>,
}

/// Injected abort.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// HTTP status to answer.
    pub http_status: Option<i32>,
    /// gRPC status to answer (`UNAVAILABLE`, ...).
    pub grpc_status: Option<String>,
    /// HTTP/2 error to reset the stream with.
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
    /// Deprecated integer share of requests aborted (Bookinfo's samples use it).
    pub percent: Option<i32>,
}

/// One mirror destination.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests copied.
    pub percentage: Option<Percent>,
}

/// What to do with preflight requests that match no CORS origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Istio's default (forward).
    #[default]
    UnmatchedPreflightPolicyUnspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

/// CORS policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated exact origins.
    pub allow_origin: Vec<String>,
    /// Allowed origins.
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Headers the browser may read.
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached.
    pub max_age: Option<Duration>,
    /// Allow credentials.
    pub allow_credentials: Option<bool>,
    /// Preflights that match no origin.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// A TLS (SNI) rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRoute {
    /// Conditions.
    #[serde(rename = "match")]
    pub match_: Vec<TlsMatchAttributes>,
    /// Destinations.
    pub route: Vec<RouteDestination>,
}

/// TLS match conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    /// SNI names.
    pub sni_hosts: Vec<String>,
    /// Destination subnets.
    pub destination_subnets: Vec<String>,
    /// Port.
    pub port: Option<u32>,
    /// Labels of the caller.
    pub source_labels: Labels,
    /// Gateways.
    pub gateways: Vec<String>,
    /// Namespace of the caller.
    pub source_namespace: Option<String>,
}

/// A TCP rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    /// Conditions.
    #[serde(rename = "match")]
    pub match_: Vec<L4MatchAttributes>,
    /// Destinations.
    pub route: Vec<RouteDestination>,
}

/// L4 match conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Destination subnets.
    pub destination_subnets: Vec<String>,
    /// Port.
    pub port: Option<u32>,
    /// Source subnet.
    pub source_subnet: Option<String>,
    /// Labels of the caller.
    pub source_labels: Labels,
    /// Gateways.
    pub gateways: Vec<String>,
    /// Namespace of the caller.
    pub source_namespace: Option<String>,
}

/// A weighted destination of a TLS or TCP rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where the connection goes.
    pub destination: Destination,
    /// Share, in percent.
    pub weight: Option<i32>,
}
