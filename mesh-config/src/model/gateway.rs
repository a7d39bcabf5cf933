//! Gateway (`networking.istio.io`): listeners at the edge of the mesh.

use serde::Deserialize;

use super::common::Labels;

/// The spec of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    /// Listeners.
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads that serve it.
    pub selector: Labels,
}

/// One listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    /// Port, protocol and name.
    pub port: Option<ServerPort>,
    /// Address to bind.
    pub bind: Option<String>,
    /// Hosts served, optionally `namespace/host`.
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint.
    pub default_endpoint: Option<String>,
    /// Server name.
    pub name: Option<String>,
}

/// A gateway port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerPort {
    /// Port number.
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS.
    pub protocol: String,
    /// Port name.
    pub name: String,
    /// Deprecated: target port on the gateway workload.
    pub target_port: Option<u32>,
}

/// TLS modes of a gateway server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward TLS by SNI without terminating it.
    #[default]
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require client certificates.
    Mutual,
    /// SNI passthrough without a VirtualService.
    AutoPassthrough,
    /// Mutual TLS with mesh identities.
    IstioMutual,
    /// Client certificates requested, not required.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsProtocol {
    /// Implementation default.
    #[default]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// TLS settings of a gateway server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    /// Redirect plaintext HTTP to HTTPS.
    pub https_redirect: bool,
    /// TLS mode.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate (PEM file).
    pub server_certificate: Option<String>,
    /// Server key (PEM file).
    pub private_key: Option<String>,
    /// CA certificates to verify clients (PEM file).
    pub ca_certificates: Option<String>,
    /// Certificate revocation list (PEM file).
    pub ca_crl: Option<String>,
    /// Name of a secret holding the certificates.
    pub credential_name: Option<String>,
    /// Name of a secret or config map holding the CA certificates.
    pub ca_cert_credential_name: Option<String>,
    /// Several secrets (RSA and ECDSA).
    pub credential_names: Vec<String>,
    /// Several certificate/key pairs.
    pub tls_certificates: Vec<TlsCertificate>,
    /// Accepted client subject alternative names.
    pub subject_alt_names: Vec<String>,
    /// Accepted client certificate SPKI hashes.
    pub verify_certificate_spki: Vec<String>,
    /// Accepted client certificate hashes.
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites.
    pub cipher_suites: Vec<String>,
    /// Skip client certificate verification.
    pub insecure_skip_verify: Option<bool>,
    /// ECDH curves.
    pub ecdh_curves: Vec<String>,
}

/// A certificate/key pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsCertificate {
    /// Certificate (PEM file).
    pub server_certificate: Option<String>,
    /// Key (PEM file).
    pub private_key: Option<String>,
    /// CA certificates (PEM file).
    pub ca_certificates: Option<String>,
}
