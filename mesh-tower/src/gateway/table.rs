//! The servers of the Gateways that select the gateway workload, compiled once per
//! snapshot: which server answers a host on a port, and with which TLS settings.
//!
//! Compiling walks every Gateway once; a request then looks at the few servers of its
//! port. Order of servers (ties between equally specific host matches): the Gateway's
//! name, then its namespace (Istio sorts conflicting Gateways by creation time, then
//! name, then namespace; files carry no creation time), then the server's index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host;
use mesh_config::model::{Gateway, Origin, Resource, ServerTlsMode, TlsProtocol};

use super::error::ServerRef;
use crate::Workload;

/// The TLS protocol versions a server accepts (rustls speaks TLS 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Versions {
    /// TLS 1.2 and 1.3.
    Any,
    /// TLS 1.2 only (`maxProtocolVersion: TLSV1_2`).
    Tls12,
    /// TLS 1.3 only (`minProtocolVersion: TLSV1_3`).
    Tls13,
}

/// Everything that makes up the TLS configuration of a terminating server: servers with
/// equal keys share one rustls configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsKey {
    /// Client certificates required and verified (`MUTUAL`).
    pub(crate) mutual: bool,
    /// Server certificate chain (PEM).
    pub(crate) cert: PathBuf,
    /// Server private key (PEM).
    pub(crate) key: PathBuf,
    /// CA certificates that verify clients (PEM), for `MUTUAL`.
    pub(crate) ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM), for `MUTUAL`.
    pub(crate) crl: Option<PathBuf>,
    /// Protocol versions.
    pub(crate) versions: Versions,
    /// ALPN protocols offered.
    pub(crate) alpn: Vec<String>,
}

/// One `hosts` entry of a server: `[namespace/]host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPattern {
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
    pub(crate) fn parse(raw: &str, gateway_ns: &str) -> Self {
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
    pub(crate) fn score(&self, name: &str) -> Option<usize> {
        if &*self.host == "*" {
            Some(0)
        } else if host::is_wildcard(&self.host) {
            host::matches(&self.host, name).then_some(self.host.len())
        } else {
            (*self.host == *name).then_some(EXACT)
        }
    }

    /// True when VirtualServices of `namespace` may bind to this host.
    fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// One server of a selected Gateway that the gateway can serve.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    /// Which server it is, for messages.
    pub(crate) at: ServerRef,
    /// The Gateway, `namespace/name` (the request's `GatewaySource`).
    pub(crate) gateway: Arc<str>,
    /// Its hosts.
    pub(crate) hosts: Vec<HostPattern>,
    /// `tls.httpsRedirect` on a plaintext server.
    pub(crate) https_redirect: bool,
    /// TLS termination settings; `None` for plaintext.
    pub(crate) tls: Option<Arc<TlsKey>>,
}

impl Server {
    /// The best score of its hosts for `name`.
    fn score(&self, name: &str) -> Option<usize> {
        self.hosts.iter().filter_map(|h| h.score(name)).max()
    }

    /// True when a VirtualService of `namespace` may serve `name` through this server:
    /// one of the hosts that match `name` admits the namespace.
    pub(crate) fn admits(&self, namespace: &str, name: &str) -> bool {
        self.hosts
            .iter()
            .any(|h| h.score(name).is_some() && h.admits(namespace))
    }
}

/// True when `gateway` selects `workload`: every label of its selector is one of the
/// workload's (an empty selector selects every gateway workload). The Gateway's
/// namespace does not matter, as in Istio without `PILOT_SCOPE_GATEWAY_TO_NAMESPACE`.
fn selects(gateway: &Gateway, workload: &Workload) -> bool {
    gateway
        .selector
        .iter()
        .all(|(k, v)| workload.labels.get(k) == Some(v))
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

/// The servers of the Gateways of `snapshot` that select `workload` and that the
/// in-process gateway can serve, in the order described in the module documentation.
/// Servers it cannot serve are reported with a warning and left out.
pub(crate) fn servers(snapshot: &Snapshot, workload: &Workload) -> Vec<Server> {
    let mut gateways: Vec<&Arc<Resource<Gateway>>> = snapshot
        .gateways()
        .iter()
        .filter(|g| selects(&g.spec, workload))
        .collect();
    gateways.sort_by(|a, b| (a.name(), a.namespace()).cmp(&(b.name(), b.namespace())));
    let mut out = Vec::new();
    for gw in gateways {
        let id: Arc<str> = format!("{}/{}", gw.namespace(), gw.name()).into();
        for (index, s) in gw.spec.servers.iter().enumerate() {
            let Some(port) = &s.port else {
                tracing::warn!(gateway = %id, index, "gateway server without a port: skipped");
                continue;
            };
            let at = ServerRef {
                gateway: id.clone(),
                index,
                name: s.name.as_deref().map(Into::into),
                port: port.number,
            };
            let protocol = port.protocol.to_ascii_uppercase();
            let tls = match protocol.as_str() {
                "HTTP" | "HTTP2" | "GRPC" => None,
                "HTTPS" => match s.tls.as_ref().map(|t| (t, t.mode.unwrap_or_default())) {
                    Some((t, mode @ (ServerTlsMode::Simple | ServerTlsMode::Mutual))) => {
                        match tls_key(&at, &gw.origin, t, mode == ServerTlsMode::Mutual) {
                            Some(k) => Some(Arc::new(k)),
                            None => continue,
                        }
                    }
                    Some((_, mode)) => {
                        tracing::warn!(
                            server = %at,
                            "TLS mode {mode:?} is not supported by the in-process gateway \
                             (it terminates TLS: SIMPLE or MUTUAL): server skipped"
                        );
                        continue;
                    }
                    None => {
                        tracing::warn!(server = %at, "HTTPS server without `tls`: skipped");
                        continue;
                    }
                },
                other => {
                    tracing::warn!(
                        server = %at,
                        "protocol {other} is not supported by the in-process gateway \
                         (HTTP, HTTP2, GRPC and HTTPS only): server skipped"
                    );
                    continue;
                }
            };
            let https_redirect = tls.is_none() && s.tls.as_ref().is_some_and(|t| t.https_redirect);
            out.push(Server {
                at,
                gateway: id.clone(),
                hosts: s
                    .hosts
                    .iter()
                    .map(|h| HostPattern::parse(h, gw.namespace()))
                    .collect(),
                https_redirect,
                tls,
            });
        }
    }
    out
}

/// The TLS settings of a terminating server, or `None` (with a warning) when they use
/// what the in-process gateway does not support.
fn tls_key(
    at: &ServerRef,
    origin: &Origin,
    t: &mesh_config::model::ServerTlsSettings,
    mutual: bool,
) -> Option<TlsKey> {
    let skip = |why: &str| {
        tracing::warn!(server = %at, "{why}: server skipped");
        None
    };
    let (Some(cert), Some(key)) = (&t.server_certificate, &t.private_key) else {
        if t.credential_name.is_some() || !t.credential_names.is_empty() {
            return skip(
                "`credentialName` (a Kubernetes secret) is not supported in-process; \
                 use `serverCertificate` and `privateKey` files",
            );
        }
        if !t.tls_certificates.is_empty() {
            return skip(
                "`tlsCertificates` is not supported in-process; \
                 use `serverCertificate` and `privateKey` files",
            );
        }
        return skip("TLS termination needs `serverCertificate` and `privateKey`");
    };
    let ca = match (&t.ca_certificates, mutual) {
        (Some(ca), true) => Some(resolve(origin, ca)),
        (None, true) => {
            return skip(
                "MUTUAL TLS needs a `caCertificates` file (`caCertCredentialName`, a \
                 Kubernetes secret, is not supported in-process)",
            );
        }
        (_, false) => None,
    };
    if mutual {
        // Fail closed: a client the configuration refuses must never be let in.
        if !t.subject_alt_names.is_empty() {
            return skip("`subjectAltNames` (client certificate names) is not enforced in-process");
        }
        if !t.verify_certificate_spki.is_empty() || !t.verify_certificate_hash.is_empty() {
            return skip("client certificate pinning is not enforced in-process");
        }
        if t.insecure_skip_verify == Some(true) {
            return skip("`insecureSkipVerify` is not supported in-process");
        }
    }
    let min = t.min_protocol_version.unwrap_or_default();
    let max = t.max_protocol_version.unwrap_or_default();
    let versions = if min == TlsProtocol::TlsV1_3 {
        Versions::Tls13
    } else if matches!(
        max,
        TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1 | TlsProtocol::TlsV1_2
    ) {
        Versions::Tls12
    } else {
        Versions::Any
    };
    Some(TlsKey {
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
        alpn: t.alpn_protocols.clone(),
    })
}

/// The servers of one snapshot, by port.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// The version of the snapshot it was compiled from.
    pub(crate) version: u64,
    ports: HashMap<u32, Vec<Server>>,
}

impl Table {
    /// Groups `servers` by port, keeping those the gateway can serve now: their port has
    /// a listener of their kind (plaintext or TLS: `listeners` maps port → TLS) and, for
    /// TLS, their settings were loaded at start (`loaded`). The others are reported.
    pub(crate) fn build(
        version: u64,
        servers: Vec<Server>,
        listeners: &HashMap<u32, bool>,
        loaded: &dyn Fn(&TlsKey) -> bool,
    ) -> Table {
        let mut ports: HashMap<u32, Vec<Server>> = HashMap::new();
        for s in servers {
            match listeners.get(&s.at.port) {
                None => tracing::warn!(
                    server = %s.at,
                    "no listener for port {} (it is not in the port map, or was added after \
                     the gateway started: listeners are fixed at start): server skipped",
                    s.at.port
                ),
                Some(&tls) if tls != s.tls.is_some() => tracing::warn!(
                    server = %s.at,
                    "port {} already serves {}: a port is either plaintext or TLS, server skipped",
                    s.at.port,
                    if tls { "TLS" } else { "plaintext" }
                ),
                Some(_) if s.tls.as_deref().is_some_and(|k| !loaded(k)) => tracing::warn!(
                    server = %s.at,
                    "its TLS settings changed after the gateway started (certificates are \
                     loaded at start; restart to use them): server skipped"
                ),
                Some(_) => ports.entry(s.at.port).or_default().push(s),
            }
        }
        Table { version, ports }
    }

    /// The server of `port` that answers requests for `name` (lower case, no port) on a
    /// connection with TLS settings `tls` (`None` for plaintext): the most specific host
    /// match, the first in order among equals.
    pub(crate) fn find(&self, port: u32, name: &str, tls: Option<&TlsKey>) -> Option<&Server> {
        best(
            self.ports
                .get(&port)?
                .iter()
                .filter(|s| s.tls.as_deref() == tls),
            name,
        )
    }

    /// The TLS server of `port` a client asking for `sni` (lower case) gets. Without
    /// SNI only a server with a `*` host matches, as in Envoy, whose filter chains for
    /// named hosts require SNI.
    pub(crate) fn find_sni(&self, port: u32, sni: Option<&str>) -> Option<&Server> {
        best(
            self.ports.get(&port)?.iter().filter(|s| s.tls.is_some()),
            sni.unwrap_or(""),
        )
    }
}

fn best<'a>(servers: impl Iterator<Item = &'a Server>, name: &str) -> Option<&'a Server> {
    let mut found: Option<(usize, &Server)> = None;
    for s in servers {
        if let Some(score) = s.score(name)
            && found.is_none_or(|(b, _)| score > b)
        {
            found = Some((score, s));
        }
    }
    found.map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(gateway: &str, hosts: &[&str]) -> Server {
        Server {
            at: ServerRef {
                gateway: gateway.into(),
                index: 0,
                name: None,
                port: 80,
            },
            gateway: gateway.into(),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h, "gw-ns"))
                .collect(),
            https_redirect: false,
            tls: None,
        }
    }

    fn table(servers: Vec<Server>) -> Table {
        Table::build(1, servers, &HashMap::from([(80, false)]), &|_| true)
    }

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
        assert_eq!(&*p("./a.example.com").host, "a.example.com");
    }

    #[test]
    fn the_most_specific_server_wins_then_the_first() {
        let t = table(vec![
            server("ns/all", &["*"]),
            server("ns/wild", &["*.example.com"]),
            server("ns/deeper", &["*.b.example.com"]),
            server("ns/exact", &["a.example.com"]),
            server("ns/exact-too", &["a.example.com"]),
        ]);
        let at = |h: &str| t.find(80, h, None).map(|s| &*s.gateway);
        assert_eq!(at("a.example.com"), Some("ns/exact"));
        assert_eq!(at("x.b.example.com"), Some("ns/deeper"));
        assert_eq!(at("c.example.com"), Some("ns/wild"));
        assert_eq!(at("other.org"), Some("ns/all"));
        assert_eq!(t.find(81, "other.org", None).map(|s| &*s.gateway), None);
    }

    #[test]
    fn namespaced_hosts_admit_only_their_namespace() {
        let s = server("ns/gw", &["ns1/a.example.com", "./b.example.com", "*.org"]);
        assert!(s.admits("ns1", "a.example.com"));
        assert!(!s.admits("ns2", "a.example.com"));
        assert!(s.admits("gw-ns", "b.example.com"));
        assert!(!s.admits("ns1", "b.example.com"));
        assert!(s.admits("any", "x.org"));
    }

    #[test]
    fn servers_without_a_listener_of_their_kind_are_left_out() {
        let mut tls = server("ns/tls", &["*"]);
        tls.tls = Some(Arc::new(TlsKey {
            mutual: false,
            cert: "c".into(),
            key: "k".into(),
            ca: None,
            crl: None,
            versions: Versions::Any,
            alpn: vec![],
        }));
        let mut other_port = server("ns/other", &["*"]);
        other_port.at.port = 8080;
        let t = table(vec![tls, other_port]);
        assert!(t.find(80, "x", None).is_none());
        assert!(t.find_sni(80, Some("x")).is_none());
        assert!(t.find(8080, "x", None).is_none());
    }
}
