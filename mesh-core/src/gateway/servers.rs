//! The servers of every Gateway, compiled once per snapshot: ports, hosts, TLS settings,
//! and the servers an in-process gateway cannot serve (with the reason, for the runtime to
//! report).
//!
//! Order (Istio merges the servers of a port in this order): the Gateway's name, then its
//! namespace (Istio sorts conflicting Gateways by creation time, then name, then
//! namespace; files carry no creation time), then the server's index.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host;
use mesh_config::model::{Labels, Origin, ServerTlsMode, ServerTlsSettings, TlsProtocol};

/// One server of one Gateway, as messages name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerRef {
    /// The Gateway, `namespace/name`.
    pub gateway: Arc<str>,
    /// Index of the server in `spec.servers`.
    pub index: usize,
    /// The server's `name`, when it has one.
    pub name: Option<Arc<str>>,
    /// The server's port number.
    pub port: u32,
}

impl fmt::Display for ServerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Gateway {}, server servers[{}]",
            self.gateway, self.index
        )?;
        if let Some(name) = &self.name {
            write!(f, " `{name}`")?;
        }
        write!(f, " (port {})", self.port)
    }
}

/// The TLS protocol versions a server accepts (rustls speaks TLS 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersions {
    /// TLS 1.2 and 1.3.
    Any,
    /// TLS 1.2 only (`maxProtocolVersion: TLSV1_2`).
    Tls12,
    /// TLS 1.3 only (`minProtocolVersion: TLSV1_3`).
    Tls13,
}

/// Everything that makes up the TLS configuration of a terminating server: servers with
/// equal settings share one TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Client certificates required and verified (`MUTUAL`).
    pub mutual: bool,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA certificates that verify clients (PEM), for `MUTUAL`.
    pub ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM), for `MUTUAL`.
    pub crl: Option<PathBuf>,
    /// Protocol versions.
    pub versions: TlsVersions,
}

/// One `hosts` entry of a server: `[namespace/]host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Namespace whose VirtualServices may bind to it; `None` for any (`*/` or none).
    namespace: Option<Box<str>>,
    /// Host, lower case: `*`, `*.suffix` or a name.
    host: Box<str>,
}

/// Specificity of an exact host match (above any wildcard).
const EXACT: usize = usize::MAX;

impl HostPattern {
    /// Parses `raw` written in a Gateway of namespace `gateway_ns` (`./host` is that
    /// namespace).
    pub fn parse(raw: &str, gateway_ns: &str) -> Self {
        let (ns, name) = host::split_namespaced(raw);
        let namespace = match ns {
            "*" => None,
            "." => Some(gateway_ns.into()),
            ns => Some(ns.into()),
        };
        HostPattern {
            namespace,
            host: name.to_ascii_lowercase().into(),
        }
    }

    /// How specifically the pattern matches `name` (lower case): an exact name above
    /// any wildcard, a longer wildcard above a shorter one, `*` last; `None` when it does
    /// not match. An empty `name` (a TLS client that sent no SNI) matches `*` only.
    pub fn score(&self, name: &str) -> Option<usize> {
        if &*self.host == "*" {
            Some(0)
        } else if host::is_wildcard(&self.host) {
            host::matches(&self.host, name).then_some(self.host.len())
        } else {
            (*self.host == *name).then_some(EXACT)
        }
    }

    /// True when VirtualServices of `namespace` may bind to this host (Istio's
    /// `NamesForNamespace`).
    pub fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// The host, lower case, without its namespace.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// One server of a Gateway that an in-process gateway can serve.
#[derive(Debug, Clone)]
pub struct Server {
    /// Which server it is.
    pub at: ServerRef,
    /// Its hosts.
    pub hosts: Vec<HostPattern>,
    /// `tls.httpsRedirect` on a plaintext server.
    pub https_redirect: bool,
    /// TLS termination settings; `None` for plaintext.
    pub tls: Option<Arc<TlsSettings>>,
}

impl Server {
    /// The Gateway, `namespace/name`.
    pub fn gateway(&self) -> &Arc<str> {
        &self.at.gateway
    }

    /// The best score of its hosts for `name`.
    pub(crate) fn score(&self, name: &str) -> Option<usize> {
        self.hosts.iter().filter_map(|h| h.score(name)).max()
    }
}

/// A server an in-process gateway cannot serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedServer {
    /// Which server it is.
    pub at: ServerRef,
    /// Why it is skipped.
    pub reason: String,
}

/// One Gateway, compiled.
#[derive(Debug)]
pub(crate) struct CompiledGateway {
    /// Labels of the gateway workloads that serve it.
    selector: Labels,
    /// The servers that can be served, in order.
    pub(crate) servers: Vec<Server>,
    /// The others.
    pub(crate) skipped: Vec<SkippedServer>,
}

impl CompiledGateway {
    /// True when the Gateway selects a workload with `labels`: every label of its
    /// selector is one of the workload's (an empty selector selects every workload). The
    /// Gateway's namespace does not matter, as in Istio without
    /// `PILOT_SCOPE_GATEWAY_TO_NAMESPACE`.
    pub(crate) fn selects(&self, labels: &Labels) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Compiles every Gateway of `snapshot`, in the order described in the module
/// documentation.
pub(crate) fn compile(snapshot: &Snapshot) -> Vec<CompiledGateway> {
    let mut gateways: Vec<_> = snapshot.gateways().iter().collect();
    gateways.sort_by(|a, b| (a.name(), a.namespace()).cmp(&(b.name(), b.namespace())));
    let mut out = Vec::with_capacity(gateways.len());
    for gw in gateways {
        let id: Arc<str> = format!("{}/{}", gw.namespace(), gw.name()).into();
        let mut compiled = CompiledGateway {
            selector: gw.spec.selector.clone(),
            servers: Vec::new(),
            skipped: Vec::new(),
        };
        for (index, s) in gw.spec.servers.iter().enumerate() {
            let at = ServerRef {
                gateway: id.clone(),
                index,
                name: s.name.as_deref().map(Into::into),
                port: s.port.as_ref().map_or(0, |p| p.number),
            };
            let skip = |reason: String| SkippedServer {
                at: at.clone(),
                reason,
            };
            let Some(port) = &s.port else {
                compiled
                    .skipped
                    .push(skip("a server without a port".into()));
                continue;
            };
            let tls = match port.protocol.to_ascii_uppercase().as_str() {
                "HTTP" | "HTTP2" | "GRPC" => None,
                "HTTPS" => match s.tls.as_ref().map(|t| (t, t.mode.unwrap_or_default())) {
                    Some((t, mode @ (ServerTlsMode::Simple | ServerTlsMode::Mutual))) => {
                        match tls_settings(&gw.origin, t, mode == ServerTlsMode::Mutual) {
                            Ok(k) => Some(Arc::new(k)),
                            Err(reason) => {
                                compiled.skipped.push(skip(reason));
                                continue;
                            }
                        }
                    }
                    Some((_, mode)) => {
                        compiled.skipped.push(skip(format!(
                            "TLS mode {mode:?} is not supported by the in-process gateway \
                             (it terminates TLS: SIMPLE or MUTUAL)"
                        )));
                        continue;
                    }
                    None => {
                        compiled
                            .skipped
                            .push(skip("an HTTPS server without `tls`".into()));
                        continue;
                    }
                },
                other => {
                    compiled.skipped.push(skip(format!(
                        "protocol {other} is not supported by the in-process gateway \
                         (HTTP, HTTP2, GRPC and HTTPS only)"
                    )));
                    continue;
                }
            };
            let https_redirect = tls.is_none() && s.tls.as_ref().is_some_and(|t| t.https_redirect);
            compiled.servers.push(Server {
                at,
                hosts: s
                    .hosts
                    .iter()
                    .map(|h| HostPattern::parse(h, gw.namespace()))
                    .collect(),
                https_redirect,
                tls,
            });
        }
        out.push(compiled);
    }
    out
}

/// `path` as written in the Gateway of `origin`: a relative path is taken from the
/// directory of the YAML file that defined it.
fn resolve(origin: &Origin, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match Path::new(origin.source.name()).parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

/// The TLS settings of a terminating server, or why the in-process gateway cannot serve
/// them.
fn tls_settings(
    origin: &Origin,
    t: &ServerTlsSettings,
    mutual: bool,
) -> Result<TlsSettings, String> {
    let (Some(cert), Some(key)) = (&t.server_certificate, &t.private_key) else {
        if t.credential_name.is_some() || !t.credential_names.is_empty() {
            return Err(
                "`credentialName` (a Kubernetes secret) is not supported in-process; \
                 use `serverCertificate` and `privateKey` files"
                    .into(),
            );
        }
        if !t.tls_certificates.is_empty() {
            return Err("`tlsCertificates` is not supported in-process; \
                 use `serverCertificate` and `privateKey` files"
                .into());
        }
        return Err("TLS termination needs `serverCertificate` and `privateKey`".into());
    };
    let ca = match (&t.ca_certificates, mutual) {
        (Some(ca), true) => Some(resolve(origin, ca)),
        (None, true) => {
            return Err(
                "MUTUAL TLS needs a `caCertificates` file (`caCertCredentialName`, a \
                 Kubernetes secret, is not supported in-process)"
                    .into(),
            );
        }
        (_, false) => None,
    };
    if mutual {
        // Fail closed: a client the configuration refuses must never be let in.
        if !t.subject_alt_names.is_empty() {
            return Err(
                "`subjectAltNames` (client certificate names) is not enforced in-process".into(),
            );
        }
        if !t.verify_certificate_spki.is_empty() || !t.verify_certificate_hash.is_empty() {
            return Err("client certificate pinning is not enforced in-process".into());
        }
        if t.insecure_skip_verify == Some(true) {
            return Err("`insecureSkipVerify` is not supported in-process".into());
        }
    }
    let min = t.min_protocol_version.unwrap_or_default();
    let max = t.max_protocol_version.unwrap_or_default();
    let versions = if min == TlsProtocol::TlsV1_3 {
        TlsVersions::Tls13
    } else if matches!(
        max,
        TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1 | TlsProtocol::TlsV1_2
    ) {
        TlsVersions::Tls12
    } else {
        TlsVersions::Any
    };
    Ok(TlsSettings {
        mutual,
        cert: resolve(origin, cert),
        key: resolve(origin, key),
        ca,
        crl: if mutual {
            t.ca_crl.as_deref().map(|c| resolve(origin, c))
        } else {
            None
        },
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_score_exact_over_wildcards_over_star() {
        let p = |h: &str| HostPattern::parse(h, "gw-ns");
        assert_eq!(p("a.example.com").score("a.example.com"), Some(EXACT));
        assert_eq!(p("A.Example.com").score("a.example.com"), Some(EXACT));
        assert_eq!(p("a.example.com").score("b.example.com"), None);
        assert_eq!(p("*.example.com").score("a.b.example.com"), Some(13));
        assert_eq!(p("*.example.com").score("example.com"), None);
        assert_eq!(p("*").score("anything"), Some(0));
        assert_eq!(p("*").score(""), Some(0));
        assert_eq!(p("*.example.com").score(""), None);
        assert_eq!(p("ns1/a.example.com").namespace.as_deref(), Some("ns1"));
        assert_eq!(p("./a.example.com").namespace.as_deref(), Some("gw-ns"));
        assert_eq!(p("*/a.example.com").namespace, None);
        assert_eq!(p("./a.example.com").host(), "a.example.com");
    }

    #[test]
    fn namespaced_hosts_admit_only_their_namespace() {
        let p = |h: &str| HostPattern::parse(h, "gw-ns");
        assert!(p("ns1/a.example.com").admits("ns1"));
        assert!(!p("ns1/a.example.com").admits("ns2"));
        assert!(p("./b.example.com").admits("gw-ns"));
        assert!(!p("./b.example.com").admits("ns1"));
        assert!(p("*.org").admits("any"));
        assert!(p("*/x.org").admits("any"));
    }

    #[test]
    fn server_refs_name_gateway_index_name_and_port() {
        let at = ServerRef {
            gateway: "ns/gw".into(),
            index: 2,
            name: Some("https".into()),
            port: 443,
        };
        assert_eq!(
            at.to_string(),
            "Gateway ns/gw, server servers[2] `https` (port 443)"
        );
    }
}
