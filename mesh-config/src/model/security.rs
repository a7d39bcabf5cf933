//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication (`security.istio.io`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{PolicyTargetReference, WorkloadSelector};
use crate::duration::Duration;

/// Mutual TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh).
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Plaintext and mTLS.
    Permissive,
    /// mTLS only.
    Strict,
}

/// Mutual TLS settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    /// Mode.
    pub mode: Option<MtlsMode>,
}

/// The spec of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Workloads it applies to (all of the namespace when absent).
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS mode.
    pub mtls: Option<MutualTls>,
    /// Per-port modes (requires a selector).
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// Authorization actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit matching requests.
    Audit,
    /// Delegate to an external authorizer.
    Custom,
}

/// The spec of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Workloads it applies to.
    pub selector: Option<WorkloadSelector>,
    /// Gateway API resource it attaches to.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API resources it attaches to.
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules; a request matches the policy when it matches any rule.
    pub rules: Vec<Rule>,
    /// What to do with matching requests.
    pub action: Option<AuthorizationAction>,
    /// External authorizer for CUSTOM.
    pub provider: Option<ExtensionProvider>,
}

/// An external authorization provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// Provider name from the mesh configuration.
    pub name: String,
}

/// One authorization rule: all of from, to and when must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Sources (any).
    pub from: Vec<RuleFrom>,
    /// Operations (any).
    pub to: Vec<RuleTo>,
    /// Conditions (all).
    pub when: Vec<Condition>,
}

/// Wrapper of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source.
    pub source: Source,
}

/// Wrapper of an operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation.
    pub operation: Operation,
}

/// Who sends the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`<trust domain>/ns/<ns>/sa/<sa>`).
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    pub not_principals: Vec<String>,
    /// JWT principals (`iss/sub`).
    pub request_principals: Vec<String>,
    /// JWT principals that must not match.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    pub namespaces: Vec<String>,
    /// Peer namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// Peer IP blocks.
    pub ip_blocks: Vec<String>,
    /// Peer IP blocks that must not match.
    pub not_ip_blocks: Vec<String>,
    /// Original client IP blocks.
    pub remote_ip_blocks: Vec<String>,
    /// Original client IP blocks that must not match.
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts (`ns/sa` or `sa`).
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    pub not_service_accounts: Vec<String>,
    /// Peer trust domains.
    pub trust_domains: Vec<String>,
    /// Peer trust domains that must not match.
    pub not_trust_domains: Vec<String>,
}

/// What the request does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Hosts.
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    pub not_hosts: Vec<String>,
    /// Ports.
    pub ports: Vec<String>,
    /// Ports that must not match.
    pub not_ports: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Methods that must not match.
    pub not_methods: Vec<String>,
    /// Paths.
    pub paths: Vec<String>,
    /// Paths that must not match.
    pub not_paths: Vec<String>,
}

/// An extra condition (`request.headers[x]`, `source.ip`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute.
    pub key: String,
    /// Accepted values.
    pub values: Vec<String>,
    /// Values that must not match.
    pub not_values: Vec<String>,
}

/// The spec of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// Workloads it applies to.
    pub selector: Option<WorkloadSelector>,
    /// Gateway API resource it attaches to.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API resources it attaches to.
    pub target_refs: Vec<PolicyTargetReference>,
    /// JWT rules.
    pub jwt_rules: Vec<JwtRule>,
}

/// How to validate one issuer's JWTs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// Issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// URL of the JWKS (also read as `jwks_uri`, a spelling Istio's schema accepts).
    #[serde(alias = "jwks_uri")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS.
    pub jwks: Option<String>,
    /// Headers to read the token from.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to read the token from.
    pub from_params: Vec<String>,
    /// Header to put the payload in.
    pub output_payload_to_header: Option<String>,
    /// Cookies to read the token from.
    pub from_cookies: Vec<String>,
    /// Forward the original token.
    pub forward_original_token: bool,
    /// Claims copied to headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout of the JWKS fetch.
    pub timeout: Option<Duration>,
    /// Claims whose string value is a space-separated list, besides `scope` and
    /// `permission`.
    pub space_delimited_claims: Vec<String>,
    /// Whether the token must be present (`OPTIONAL` or `REQUIRED`). Istio's control plane
    /// does not act on it yet; neither does the mesh (a "not enforced" warning).
    pub presence: Option<JwtPresence>,
}

/// Whether a JWT must be present in the request (`JWTRule.presence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JwtPresence {
    /// A request without the token passes this rule.
    Optional,
    /// A request without the token is refused.
    Required,
}

/// A header holding a JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (`Bearer `).
    pub prefix: Option<String>,
}

/// A claim copied to a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name.
    pub claim: String,
}

/// The annotation that puts an AuthorizationPolicy in dry-run: evaluated and reported,
/// not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// A boolean as Go's `strconv.ParseBool` reads it (how Istio reads `istio.io/dry-run`):
/// `1`, `t`, `T`, `TRUE`, `true`, `True` and their false forms; `None` for anything else.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
