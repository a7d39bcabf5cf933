//! `MeshConfig` (`mesh.rs/v1alpha1`): the few mesh-wide settings the mesh needs.
//!
//! Istio keeps these in its `MeshConfig` (the `istio` ConfigMap); we read the same field
//! names from a resource of our own group, with Istio's defaults when it is absent.

use serde::Deserialize;

use super::virtual_service::HttpRetry;

/// What happens to requests for hosts the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Unknown hosts are forwarded as they are (Istio's default).
    #[default]
    AllowAny,
    /// Unknown hosts are refused.
    RegistryOnly,
}

/// Outbound traffic policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// Mode.
    pub mode: OutboundTrafficPolicyMode,
}

/// How access log entries are written (`accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// One line of text in Istio's default format.
    #[default]
    Text,
    /// One JSON object per line, with Istio's default keys.
    Json,
}

/// The spec of a `MeshConfig` resource, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// Trust domain of workload identities (`cluster.local`).
    pub trust_domain: Option<String>,
    /// Other trust domains treated as this one.
    pub trust_domain_aliases: Vec<String>,
    /// Namespace whose policies apply mesh-wide (`istio-system`).
    pub root_namespace: Option<String>,
    /// Policy for hosts the registry does not know (ALLOW_ANY).
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Retry policy of routes that set none.
    pub default_http_retry_policy: Option<HttpRetry>,
    /// Default `exportTo` of ServiceEntries.
    pub default_service_export_to: Vec<String>,
    /// Default `exportTo` of VirtualServices.
    pub default_virtual_service_export_to: Vec<String>,
    /// Default `exportTo` of DestinationRules.
    pub default_destination_rule_export_to: Vec<String>,
    /// Use mTLS automatically toward workloads that accept it.
    pub enable_auto_mtls: Option<bool>,
    /// Where every workload writes access logs (`/dev/stdout`); empty: none, unless
    /// the Telemetry API turns them on.
    pub access_log_file: Option<String>,
    /// The access logs' encoding (TEXT).
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// A custom access log format (not applied: Istio's default format is written).
    pub access_log_format: Option<String>,
}

/// Mesh-wide settings with Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// Trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Trust domain aliases.
    pub trust_domain_aliases: Vec<String>,
    /// Root namespace (`istio-system`).
    pub root_namespace: String,
    /// Outbound traffic policy (ALLOW_ANY).
    pub outbound_traffic_policy: OutboundTrafficPolicyMode,
    /// Retry policy of routes that set none: Istio's is 2 attempts on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` (503).
    pub default_http_retry_policy: HttpRetry,
    /// Default `exportTo` of ServiceEntries (`*`).
    pub default_service_export_to: Vec<String>,
    /// Default `exportTo` of VirtualServices (`*`).
    pub default_virtual_service_export_to: Vec<String>,
    /// Default `exportTo` of DestinationRules (`*`).
    pub default_destination_rule_export_to: Vec<String>,
    /// Automatic mTLS (true).
    pub enable_auto_mtls: bool,
    /// Where access logs go when no Telemetry configures them (empty: nowhere).
    pub access_log_file: String,
    /// The access logs' encoding.
    pub access_log_encoding: AccessLogEncoding,
}

/// Istio's default retry conditions.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: OutboundTrafficPolicyMode::AllowAny,
            default_http_retry_policy: HttpRetry {
                attempts: 2,
                retry_on: Some(DEFAULT_RETRY_ON.into()),
                ..HttpRetry::default()
            },
            default_service_export_to: vec!["*".into()],
            default_virtual_service_export_to: vec!["*".into()],
            default_destination_rule_export_to: vec!["*".into()],
            enable_auto_mtls: true,
            access_log_file: String::new(),
            access_log_encoding: AccessLogEncoding::Text,
        }
    }
}

impl MeshSettings {
    /// Settings from a `MeshConfig` spec: fields it sets, Istio's defaults for the rest.
    pub fn from_spec(spec: &MeshConfigSpec) -> Self {
        let d = MeshSettings::default();
        let or = |v: &Vec<String>, dflt: Vec<String>| if v.is_empty() { dflt } else { v.clone() };
        MeshSettings {
            trust_domain: spec.trust_domain.clone().unwrap_or(d.trust_domain),
            trust_domain_aliases: spec.trust_domain_aliases.clone(),
            root_namespace: spec.root_namespace.clone().unwrap_or(d.root_namespace),
            outbound_traffic_policy: spec
                .outbound_traffic_policy
                .map(|p| p.mode)
                .unwrap_or(d.outbound_traffic_policy),
            default_http_retry_policy: spec
                .default_http_retry_policy
                .clone()
                .unwrap_or(d.default_http_retry_policy),
            default_service_export_to: or(
                &spec.default_service_export_to,
                d.default_service_export_to,
            ),
            default_virtual_service_export_to: or(
                &spec.default_virtual_service_export_to,
                d.default_virtual_service_export_to,
            ),
            default_destination_rule_export_to: or(
                &spec.default_destination_rule_export_to,
                d.default_destination_rule_export_to,
            ),
            enable_auto_mtls: spec.enable_auto_mtls.unwrap_or(d.enable_auto_mtls),
            access_log_file: spec.access_log_file.clone().unwrap_or(d.access_log_file),
            access_log_encoding: spec.access_log_encoding.unwrap_or(d.access_log_encoding),
        }
    }
}
