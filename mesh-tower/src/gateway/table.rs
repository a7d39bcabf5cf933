//! The servers of the Gateways that select the gateway workload, and the VirtualServices
//! bound to them, compiled once per snapshot: which servers listen on a port, with which
//! TLS settings, and which VirtualServices may answer there.
//!
//! Compiling walks every Gateway once; the virtual hosts of a port are then built from
//! these servers per configuration (see `vhost`). Order of servers (Istio merges the
//! servers of a port in this order): the Gateway's name, then its namespace (Istio sorts
//! conflicting Gateways by creation time, then name, then namespace; files carry no
//! creation time), then the server's index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host;
use mesh_config::model::{
    Gateway, HttpMatchRequest, HttpRoute, Origin, Resource, ServerTlsMode, TlsProtocol,
};
use mesh_core::matcher::qualify_gateway;

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

    /// True when VirtualServices of `namespace` may bind to this host (Istio's
    /// `NamesForNamespace`).
    pub(crate) fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// The host, lower case, without its namespace.
    pub(crate) fn host(&self) -> &str {
        &self.host
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
}

/// A VirtualService bound to one of the Gateways of the table, as the snapshot wrote it:
/// what the virtual hosts of a port are built from (its rules are the compiled mesh's).
#[derive(Debug, Clone)]
pub(crate) struct BoundVs {
    /// `namespace/name`, as mesh-core names its virtual host.
    pub(crate) name: Arc<str>,
    /// Its namespace.
    pub(crate) namespace: Box<str>,
    /// Its hosts, qualified as Istio resolves short names, lower case.
    pub(crate) hosts: Vec<Box<str>>,
    /// The Gateways it is bound to (`namespace/name`).
    pub(crate) gateways: Vec<Box<str>>,
    /// Per HTTP rule (by index in `http`), per match block: true for a block that Envoy
    /// sees as a catch-all route (Istio moves those to the end of the virtual host). A rule
    /// without blocks has one entry.
    pub(crate) catch_all: Arc<[Box<[bool]>]>,
}

/// True when Istio translates the match block into a catch-all Envoy route (prefix `/`
/// and no header or query condition; `port`, `gateways` and the source conditions are
/// decided when routes are built, not in the route's match): `SortVHostRoutes` moves
/// those after every other route of the virtual host.
fn is_catch_all(m: &HttpMatchRequest) -> bool {
    let uri_all = m
        .uri
        .as_ref()
        .is_none_or(|u| u.prefix.as_deref() == Some("/") && u.exact.is_none() && u.regex.is_none());
    uri_all
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
}

/// The catch-all flags of one rule (see [`BoundVs::catch_all`]). Rules that inline a
/// delegate are never catch-all here (their conditions merge with the root's).
fn catch_all_flags(r: &HttpRoute) -> Box<[bool]> {
    if r.delegate.is_some() {
        return Box::new([false]);
    }
    if r.match_.is_empty() {
        return Box::new([true]);
    }
    r.match_.iter().map(is_catch_all).collect()
}

/// The VirtualServices of `snapshot` bound to one of `gateways` (`namespace/name`), in
/// load order.
pub(crate) fn bound_virtual_services(snapshot: &Snapshot, gateways: &[Arc<str>]) -> Vec<BoundVs> {
    let mut out = Vec::new();
    for vs in snapshot.virtual_services() {
        let ns = vs.namespace();
        let bound: Vec<Box<str>> = vs
            .spec
            .gateways
            .iter()
            .map(|g| qualify_gateway(g, ns).into_boxed_str())
            .filter(|g| gateways.iter().any(|x| **x == **g))
            .collect();
        if bound.is_empty() || vs.spec.hosts.is_empty() {
            continue;
        }
        out.push(BoundVs {
            name: format!("{ns}/{}", vs.name()).into(),
            namespace: ns.into(),
            hosts: vs
                .spec
                .hosts
                .iter()
                .map(|h| host::qualify(h, ns).into_boxed_str())
                .collect(),
            gateways: bound,
            catch_all: vs.spec.http.iter().map(catch_all_flags).collect(),
        });
    }
    out
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

/// The servers of one snapshot, by port, and the VirtualServices bound to their
/// Gateways.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// The version of the snapshot it was compiled from.
    pub(crate) version: u64,
    ports: HashMap<u32, Vec<Server>>,
    /// The VirtualServices bound to the Gateways of these servers, in load order.
    pub(crate) virtual_services: Vec<BoundVs>,
}

impl Table {
    /// Compiles `servers` (those of `snapshot`, see [`servers`] and [`Table::build`])
    /// with the VirtualServices of `snapshot` bound to their Gateways.
    pub(crate) fn compile(
        snapshot: &Snapshot,
        servers: Vec<Server>,
        listeners: &HashMap<u32, bool>,
        loaded: &dyn Fn(&TlsKey) -> bool,
    ) -> Table {
        let mut table = Table::build(snapshot.version(), servers, listeners, loaded);
        let mut gateways: Vec<Arc<str>> = table
            .ports
            .values()
            .flatten()
            .map(|s| s.gateway.clone())
            .collect();
        gateways.sort();
        gateways.dedup();
        table.virtual_services = bound_virtual_services(snapshot, &gateways);
        table
    }

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
        Table {
            version,
            ports,
            virtual_services: Vec::new(),
        }
    }

    /// The ports and their servers, in order.
    pub(crate) fn ports(&self) -> impl Iterator<Item = (u32, &[Server])> {
        self.ports.iter().map(|(p, s)| (*p, s.as_slice()))
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
        let servers = t.ports.get(&80).map(Vec::as_slice).unwrap_or_default();
        let at = |h: &str| best(servers.iter(), h).map(|s| &*s.gateway);
        assert_eq!(at("a.example.com"), Some("ns/exact"));
        assert_eq!(at("x.b.example.com"), Some("ns/deeper"));
        assert_eq!(at("c.example.com"), Some("ns/wild"));
        assert_eq!(at("other.org"), Some("ns/all"));
        assert!(!t.ports.contains_key(&81));
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
    fn catch_all_blocks_are_those_envoy_sees_as_prefix_slash_alone() {
        use mesh_config::model::StringMatch;
        let sm = |exact: Option<&str>, prefix: Option<&str>| StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: None,
        };
        let any = HttpMatchRequest::default;
        let with = |f: &dyn Fn(&mut HttpMatchRequest)| {
            let mut m = any();
            f(&mut m);
            m
        };
        assert!(is_catch_all(&any()));
        assert!(is_catch_all(&with(&|m| m.uri = Some(sm(None, Some("/"))))));
        assert!(is_catch_all(&with(&|m| m.port = Some(8080))));
        assert!(is_catch_all(&with(&|m| m.gateways = vec!["gw".into()])));
        assert!(is_catch_all(&with(&|m| {
            m.source_labels.insert("app".into(), "a".into());
        })));
        assert!(!is_catch_all(&with(
            &|m| m.uri = Some(sm(None, Some("/api")))
        )));
        assert!(!is_catch_all(&with(&|m| m.uri = Some(sm(Some("/"), None)))));
        assert!(!is_catch_all(&with(
            &|m| m.method = Some(sm(Some("GET"), None))
        )));
        assert!(!is_catch_all(&with(
            &|m| m.authority = Some(sm(Some("a"), None))
        )));
        assert!(!is_catch_all(&with(&|m| {
            m.headers.insert("x".into(), sm(Some("y"), None));
        })));
        assert!(!is_catch_all(&with(&|m| {
            m.query_params.insert("q".into(), sm(Some("y"), None));
        })));
        assert!(!is_catch_all(&with(&|m| {
            m.without_headers.insert("x".into(), StringMatch::default());
        })));
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
        assert!(t.ports.is_empty(), "{:?}", t.ports);
        assert!(t.find_sni(80, Some("x")).is_none());
    }
}
