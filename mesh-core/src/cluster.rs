//! Clusters: a destination (host, subset, port) resolved to endpoints and traffic settings.
//!
//! A cluster is what Envoy calls the set of upstream endpoints a route sends to. The
//! DestinationRule's `trafficPolicy` is merged the way Istio merges it: a subset's
//! components (loadBalancer, connectionPool, outlierDetection, tls) override the host's;
//! `portLevelSettings` for the cluster's port replace all four components, without
//! inheriting (fields they leave out take the defaults), first at the host level, then at
//! the subset level.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use mesh_config::model::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, RETRY_BUDGET_ANNOTATION, RequestRetryBudget,
    RetryBudget, SimpleLb, Subset, TrafficPolicy,
};
use mesh_config::registry::{Service, ServicePort};

use crate::balance::{Balancer, DEFAULT_MAGLEV_TABLE, LbAlgorithm, Loads, Pick};

/// Annotation on a DestinationRule that selects a load balancer Istio's API does not
/// have: `mesh.rs/load-balancer: PEAK_EWMA` (Linkerd's peak-EWMA power of two choices).
pub const LB_ANNOTATION: &str = "mesh.rs/load-balancer";

/// Identifies a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// Fully qualified host.
    pub host: Arc<str>,
    /// Subset, if any.
    pub subset: Option<Arc<str>>,
    /// Service port.
    pub port: u16,
    /// The DestinationRule (`namespace/name`) whose `trafficPolicy` and subset shaped the
    /// cluster.
    pub rule: Option<Arc<str>>,
}

impl fmt::Display for ClusterKey {
    /// Envoy's cluster name: `outbound|port|subset|host`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outbound|{}|{}|{}",
            self.port,
            self.subset.as_deref().unwrap_or(""),
            self.host
        )
    }
}

/// One endpoint of a cluster: a concrete address to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or host name.
    pub address: Arc<str>,
    /// Port on the endpoint.
    pub port: u16,
    /// `address:port`.
    pub id: Arc<str>,
    /// Weight.
    pub weight: u32,
    /// The workload's identity (`spiffe://...`).
    pub identity: Arc<str>,
    /// Labels.
    pub labels: Arc<mesh_config::model::Labels>,
    /// True when auto mTLS speaks mutual TLS to it: it is a workload of the mesh (from
    /// a WorkloadEntry, or labelled `security.istio.io/tlsMode: istio`; not labelled
    /// `disabled`) and its PeerAuthentication does not DISABLE mutual TLS on its port.
    pub mtls: bool,
    /// What Istio's metrics call it (`destination_workload`, `destination_app`, ...).
    pub peer: Arc<crate::telemetry::PeerLabels>,
}

/// What every cluster of a service makes of one of its endpoints, whatever the port,
/// subset or DestinationRule: computed once per endpoint and shared by the clusters.
#[derive(Debug, Clone)]
pub struct EndpointFacts {
    address: Arc<str>,
    identity: Arc<str>,
    labels: Arc<mesh_config::model::Labels>,
    peer: Arc<crate::telemetry::PeerLabels>,
}

impl EndpointFacts {
    /// The facts of endpoint `e` in `trust_domain`.
    pub fn of(e: &mesh_config::registry::Endpoint, trust_domain: &str) -> Self {
        EndpointFacts {
            address: e.address.as_str().into(),
            identity: e.spiffe_id(trust_domain).into(),
            labels: Arc::new(e.labels.clone()),
            peer: Arc::new(crate::telemetry::PeerLabels::of_endpoint(e, trust_domain)),
        }
    }

    /// The facts of every endpoint of `service`, in order.
    pub fn of_service(service: &Service, trust_domain: &str) -> Vec<Self> {
        service
            .endpoints
            .iter()
            .map(|e| EndpointFacts::of(e, trust_domain))
            .collect()
    }

    /// What metrics call the endpoint's workload.
    pub fn peer(&self) -> &Arc<crate::telemetry::PeerLabels> {
        &self.peer
    }
}

/// The label Istio puts on workloads whose proxy accepts mutual TLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// How the connections of a cluster are secured: its DestinationRule's `tls`, or Istio's
/// auto mTLS when it sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Auto mTLS: mutual TLS with the mesh's certificates to endpoints that accept it
    /// ([`Endpoint::mtls`]), plaintext to the others.
    Auto {
        /// The SNI to send: Istio's `outbound_.PORT_.SUBSET_.HOST`.
        sni: Arc<str>,
    },
    /// Plaintext (`mode: DISABLE`, or no `tls` with auto mTLS turned off).
    Disable,
    /// `ISTIO_MUTUAL`: mutual TLS with the mesh's certificates to every endpoint.
    IstioMutual {
        /// The SNI to send (Istio's `outbound_.PORT_.SUBSET_.HOST` unless `sni` is set).
        sni: Arc<str>,
        /// The identities the server may prove (`subjectAltNames`); empty: the picked
        /// endpoint's own.
        subject_alt_names: Arc<[Arc<str>]>,
    },
    /// `SIMPLE` or `MUTUAL`: TLS origination with the DestinationRule's files. One value
    /// per cluster and configuration: the runtime builds its TLS configuration once per
    /// value.
    Origination(Arc<Origination>),
}

/// TLS origination (`SIMPLE` or `MUTUAL`) as Istio configures Envoy for it, its files
/// resolved (a relative path is taken from the directory of the DestinationRule's YAML
/// file, as the ingress gateway's certificates are). Empty strings are unset, as Istio
/// reads them.
///
/// * The server's chain is verified against `ca_certificates`, or the system's roots
///   when it is unset (Istio's `system` root), unless `insecure_skip_verify`.
/// * SNI: `sni`, else the host of the request's authority (Envoy's `auto_sni`; none for
///   an IP address).
/// * The server's certificate must name one of `subject_alt_names` (a DNS, URI or IP
///   name); when they are empty and `sni` is unset, the host of the request's authority
///   (Envoy's `auto_san_validation`). With `sni` set and no `subjectAltNames`, only the
///   chain is verified, as in Istio.
/// * `MUTUAL` presents `client_certificate` and `private_key`.
///
/// `credentialName` (a Kubernetes secret) and `caCrl` are not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Origination {
    /// `MUTUAL`: a client certificate is presented.
    pub mutual: bool,
    /// CA certificates (PEM) that verify the server; `None`: the system's roots.
    pub ca_certificates: Option<PathBuf>,
    /// The client certificate chain (PEM), for `MUTUAL`.
    pub client_certificate: Option<PathBuf>,
    /// The client's private key (PEM), for `MUTUAL`.
    pub private_key: Option<PathBuf>,
    /// The SNI to send; `None`: the host of the request's authority.
    pub sni: Option<Arc<str>>,
    /// The names the server's certificate must have one of.
    pub subject_alt_names: Arc<[Arc<str>]>,
    /// The server's certificate is not verified.
    pub insecure_skip_verify: bool,
}

impl Origination {
    /// `SIMPLE` with the system's roots, the SNI and the name verified taken from the
    /// request's authority: what a request the application sends as `https://` gets
    /// when its destination configures no TLS.
    pub fn simple() -> Self {
        Origination::default()
    }

    /// `settings` (SIMPLE or MUTUAL) with their paths resolved against `base`, the
    /// directory of the DestinationRule's file (`None`: as written).
    pub fn of(settings: &ClientTlsSettings, base: Option<&Path>) -> Self {
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        let file = |v: &Option<String>| set(v).map(|p| resolve(base, p));
        Origination {
            mutual: settings.mode == Some(ClientTlsMode::Mutual),
            ca_certificates: file(&settings.ca_certificates),
            client_certificate: file(&settings.client_certificate),
            private_key: file(&settings.private_key),
            sni: set(&settings.sni).map(Arc::from),
            subject_alt_names: settings
                .subject_alt_names
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| Arc::from(s.as_str()))
                .collect(),
            insecure_skip_verify: settings.insecure_skip_verify == Some(true),
        }
    }

    /// True when the server's certificate is verified against the host of the request's
    /// authority (Envoy's `auto_san_validation`, which Istio sets when neither `sni` nor
    /// `subjectAltNames` is, and verification is not skipped).
    pub fn auto_san_validation(&self) -> bool {
        self.sni.is_none() && self.subject_alt_names.is_empty() && !self.insecure_skip_verify
    }
}

/// `path` as written in a file of directory `base`: a relative path is taken from it.
fn resolve(base: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match base {
        Some(dir) if !p.is_absolute() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// What the security of a cluster's connections depends on besides its DestinationRule.
#[derive(Debug, Clone, Copy)]
pub struct TlsContext<'a> {
    /// The mesh's trust domain.
    pub trust_domain: &'a str,
    /// The mesh's root namespace.
    pub root_namespace: &'a str,
    /// `enableAutoMtls`.
    pub auto_mtls: bool,
    /// Every PeerAuthentication (auto mTLS follows the server's).
    pub peer_authentications: &'a [Arc<crate::peer_auth::CompiledPeerAuthentication>],
}

/// What consistent hashing hashes on.
#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    /// A request header.
    Header(HeaderName),
    /// A cookie; when the request has none, one is generated with this path and lifetime
    /// if a ttl is set (Envoy's `HashPolicy.Cookie`).
    Cookie {
        /// Cookie name.
        name: String,
        /// Cookie path.
        path: Option<String>,
        /// Lifetime of a generated cookie: `None` never generates one; `Some(0)`
        /// generates a session cookie (no `Max-Age`, as Envoy does for `ttl: 0s`); any
        /// other value generates one with that `Max-Age`.
        ttl: Option<Duration>,
    },
    /// The caller's IP address.
    SourceIp,
    /// A query parameter.
    QueryParam(String),
}

/// The traffic settings of a cluster: its DestinationRule's `trafficPolicy`, merged (see
/// the module documentation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficSettings {
    /// Load balancer settings (None: Istio's default, LEAST_REQUEST).
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS.
    pub tls: Option<ClientTlsSettings>,
    /// Istio's retry budget (Envoy's: a share of the active requests).
    pub retry_budget: Option<RetryBudget>,
}

impl TrafficSettings {
    /// Merges Istio's way (see the module documentation).
    pub fn merge(dr: Option<&DestinationRule>, subset: Option<&Subset>, port: u16) -> Self {
        let mut p = TrafficSettings::default();
        if let Some(top) = dr.and_then(|d| d.traffic_policy.as_ref()) {
            p.apply(top, port);
        }
        if let Some(sub) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            p.apply(sub, port);
        }
        p
    }

    fn apply(&mut self, tp: &TrafficPolicy, port: u16) {
        if tp.load_balancer.is_some() {
            self.load_balancer.clone_from(&tp.load_balancer);
        }
        if tp.connection_pool.is_some() {
            self.connection_pool.clone_from(&tp.connection_pool);
        }
        if tp.outlier_detection.is_some() {
            self.outlier_detection.clone_from(&tp.outlier_detection);
        }
        if tp.tls.is_some() {
            self.tls.clone_from(&tp.tls);
        }
        if tp.retry_budget.is_some() {
            self.retry_budget.clone_from(&tp.retry_budget);
        }
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|p| p.number == u32::from(port)))
        {
            self.load_balancer.clone_from(&pl.load_balancer);
            self.connection_pool.clone_from(&pl.connection_pool);
            self.outlier_detection.clone_from(&pl.outlier_detection);
            self.tls.clone_from(&pl.tls);
        }
    }

    /// The balancing algorithm, and what consistent hashing hashes on.
    pub fn lb(&self, peak_ewma: bool) -> (LbAlgorithm, Option<HashOn>) {
        let Some(lb) = &self.load_balancer else {
            return (
                if peak_ewma {
                    LbAlgorithm::peak_ewma()
                } else {
                    LbAlgorithm::LeastRequest
                },
                None,
            );
        };
        if let Some(ch) = &lb.consistent_hash {
            let hash = if let Some(h) = &ch.http_header_name {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .ok()
                    .map(HashOn::Header)
            } else if let Some(c) = &ch.http_cookie {
                Some(HashOn::Cookie {
                    name: c.name.clone(),
                    path: c.path.clone(),
                    ttl: c.ttl.map(|d| d.get()),
                })
            } else if ch.use_source_ip == Some(true) {
                Some(HashOn::SourceIp)
            } else {
                ch.http_query_parameter_name.clone().map(HashOn::QueryParam)
            };
            let algorithm = match (&ch.maglev, &ch.ring_hash) {
                (Some(m), _) => LbAlgorithm::Maglev {
                    table_size: m
                        .table_size
                        .filter(|t| *t > 1)
                        .unwrap_or(DEFAULT_MAGLEV_TABLE),
                },
                (None, Some(r)) => LbAlgorithm::ring_hash(r.minimum_ring_size),
                (None, None) => LbAlgorithm::ring_hash(ch.minimum_ring_size),
            };
            return (algorithm, hash);
        }
        let algorithm = match lb.simple.unwrap_or_default() {
            SimpleLb::RoundRobin => LbAlgorithm::RoundRobin,
            SimpleLb::Random => LbAlgorithm::Random,
            SimpleLb::Passthrough => LbAlgorithm::Passthrough,
            SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {
                if peak_ewma {
                    LbAlgorithm::peak_ewma()
                } else {
                    LbAlgorithm::LeastRequest
                }
            }
        };
        (algorithm, None)
    }

    /// The circuit breakers and connection settings of the cluster, as Istio's
    /// `applyConnectionPool` configures Envoy's.
    pub fn limits(&self) -> ConnectionLimits {
        let pool = self.connection_pool.as_ref();
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        // Istio sets a threshold only for a positive value: 0 (or unset) keeps Envoy's
        // default, which Istio raises to "no limit".
        let positive = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
        let idle_timeout = http
            .and_then(|h| h.idle_timeout)
            .or_else(|| tcp.and_then(|t| t.idle_timeout))
            .map(|d| d.get());
        ConnectionLimits {
            max_connections: positive(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_retries: positive(http.and_then(|h| h.max_retries)),
            max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
            max_concurrent_streams: positive(http.and_then(|h| h.max_concurrent_streams)),
            connect_timeout: self.connect_timeout(),
            idle_timeout,
            max_connection_duration: tcp
                .and_then(|t| t.max_connection_duration)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            retry_budget: self.retry_budget.as_ref().map(|b| RetryBudgetLimit {
                percent: b.percent.unwrap_or(20.0).clamp(0.0, 100.0),
                min_retry_concurrency: b.min_retry_concurrency.filter(|c| *c > 0).unwrap_or(3),
            }),
            request_budget: None,
        }
    }

    /// The connect timeout (Istio's default: 10 s).
    pub fn connect_timeout(&self) -> Duration {
        self.connection_pool
            .as_ref()
            .and_then(|p| p.tcp.as_ref())
            .and_then(|t| t.connect_timeout)
            .map(|d| d.get())
            .unwrap_or(Duration::from_secs(10))
    }
}

/// A cluster's circuit breakers and connection settings (see
/// [`TrafficSettings::limits`]): `None` is no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// `tcp.maxConnections`: connections to all the cluster's endpoints.
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    pub max_requests: Option<u32>,
    /// `http.maxRetries`: retries in flight to the cluster.
    pub max_retries: Option<u32>,
    /// `http.maxRequestsPerConnection`: requests a connection carries before it closes.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxConcurrentStreams`: streams one HTTP/2 connection carries at once.
    pub max_concurrent_streams: Option<u32>,
    /// `tcp.connectTimeout` (10 s by default).
    pub connect_timeout: Duration,
    /// `http.idleTimeout`, else `tcp.idleTimeout`: how long a connection stays idle.
    pub idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`: how long a connection lives.
    pub max_connection_duration: Option<Duration>,
    /// `retryBudget`: Envoy's retry budget, replacing `maxRetries`.
    pub retry_budget: Option<RetryBudgetLimit>,
    /// The `mesh.rs/retry-budget` annotation: Linkerd's budget of retries per request.
    pub request_budget: Option<RequestRetryBudget>,
}

impl ConnectionLimits {
    /// True when anything differs from Istio's defaults (no limit, a 10 s connect
    /// timeout): the transport then reads the settings.
    pub fn configured(&self) -> bool {
        self.has_breakers()
            || self.retry_budget.is_some()
            || self.max_requests_per_connection.is_some()
            || self.max_concurrent_streams.is_some()
            || self.idle_timeout.is_some()
            || self.max_connection_duration.is_some()
            || self.connect_timeout != Duration::from_secs(10)
    }

    /// True when a circuit breaker counts requests, connections or retries.
    pub fn has_breakers(&self) -> bool {
        self.max_connections.is_some()
            || self.max_pending_requests.is_some()
            || self.max_requests.is_some()
    }
}

/// Envoy's retry budget (Istio's `trafficPolicy.retryBudget`): retries in flight may be
/// `percent` of the requests in flight (active and pending), and at least
/// `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetLimit {
    /// Share of the requests in flight, 0–100 (Istio's default 20).
    pub percent: f64,
    /// Retries always allowed (Istio's default 3).
    pub min_retry_concurrency: u32,
}

impl RetryBudgetLimit {
    /// How many retries may be in flight with `requests` requests in flight.
    pub fn allowed(&self, requests: u32) -> u32 {
        let share = (f64::from(requests) * self.percent / 100.0) as u32;
        share.max(self.min_retry_concurrency)
    }
}

/// The DestinationRule that shapes a cluster: the rule, whether its annotation asks for
/// peak-EWMA balancing, and its `namespace/name`.
pub type RuleUse<'a> = (
    &'a Arc<mesh_config::model::Resource<DestinationRule>>,
    bool,
    Arc<str>,
);

/// The HTTP version to speak to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (h2c, or over TLS).
    Http2,
    /// The version the caller spoke.
    FromClient,
}

impl Codec {
    /// As Istio configures Envoy's cluster: HTTP/2 for `HTTP2`/`GRPC`/`GRPC-WEB` ports and
    /// for `HTTP` ports whose traffic settings say `h2UpgradePolicy: UPGRADE`; HTTP/1.1 for
    /// other `HTTP` ports; the caller's version when they say `useClientProtocol`, and
    /// for ports of other protocols.
    pub fn of(port_protocol: &str, traffic: &TrafficSettings) -> Codec {
        let http = traffic
            .connection_pool
            .as_ref()
            .and_then(|p| p.http.as_ref());
        if http.and_then(|h| h.use_client_protocol) == Some(true) {
            return Codec::FromClient;
        }
        let is = |p: &str| port_protocol.eq_ignore_ascii_case(p);
        if is("HTTP2") || is("GRPC") || is("GRPC-WEB") {
            Codec::Http2
        } else if is("HTTP") {
            if http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade) {
                Codec::Http2
            } else {
                Codec::Http1
            }
        } else {
            Codec::FromClient
        }
    }
}

/// A cluster: endpoints, balancer and traffic settings.
#[derive(Debug)]
pub struct Cluster {
    /// Its index among the clusters of its compiled mesh
    /// ([`CompiledMesh::clusters`](crate::CompiledMesh::clusters)): the runtime keeps
    /// per-cluster state in a table indexed by it.
    pub id: u32,
    /// Its key.
    pub key: ClusterKey,
    /// Its Envoy name (`outbound|9080|v1|reviews.default.svc.cluster.local`), the key
    /// written once.
    pub name: Arc<str>,
    /// The service.
    pub service: Arc<Service>,
    /// What Istio's metrics call the service (`destination_service`, ...).
    pub service_labels: Arc<crate::telemetry::ServiceLabels>,
    /// The DestinationRule whose `trafficPolicy` and subset shaped it.
    pub rule: Option<Arc<mesh_config::model::Resource<DestinationRule>>>,
    /// The service port.
    pub port: ServicePort,
    /// Endpoints.
    pub endpoints: Arc<[Endpoint]>,
    /// Merged traffic settings.
    pub traffic: TrafficSettings,
    /// The algorithm.
    pub lb: LbAlgorithm,
    /// Consistent hashing key.
    pub hash_on: Option<HashOn>,
    /// Balancer over `endpoints`.
    pub balancer: Balancer,
    /// The HTTP version to speak to the endpoints.
    pub codec: Codec,
    /// How its connections are secured.
    pub tls: UpstreamTls,
    /// Its circuit breakers and connection settings.
    pub limits: ConnectionLimits,
    /// Its outlier detection, when its traffic settings have an `outlierDetection`.
    pub outlier: Option<crate::outlier::OutlierSettings>,
}

/// The security of a cluster's connections from its merged `tls` settings, written in a
/// file of directory `base`.
fn upstream_tls(
    tls: Option<&ClientTlsSettings>,
    auto_mtls: bool,
    service: &Service,
    subset: Option<&str>,
    port: u32,
    base: Option<&Path>,
) -> UpstreamTls {
    // Istio's SNI of the cluster, sent under ISTIO_MUTUAL and auto mTLS.
    let cluster_sni = || -> Arc<str> {
        format!(
            "outbound_.{port}_.{}_.{}",
            subset.unwrap_or(""),
            service.host
        )
        .into()
    };
    let Some(tls) = tls else {
        return if auto_mtls {
            UpstreamTls::Auto { sni: cluster_sni() }
        } else {
            UpstreamTls::Disable
        };
    };
    match tls.mode.unwrap_or_default() {
        ClientTlsMode::Disable => UpstreamTls::Disable,
        ClientTlsMode::IstioMutual => UpstreamTls::IstioMutual {
            sni: tls.sni.as_deref().map_or_else(cluster_sni, Arc::from),
            subject_alt_names: tls
                .subject_alt_names
                .iter()
                .map(|s| Arc::from(s.as_str()))
                .collect(),
        },
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            UpstreamTls::Origination(Arc::new(Origination::of(tls, base)))
        }
    }
}

impl Cluster {
    /// Builds the cluster for `service` port `port`, subset `subset` (its labels select
    /// the endpoints), with the DestinationRule that applies.
    pub fn build(
        id: u32,
        service: &Arc<Service>,
        port: &ServicePort,
        subset: Option<&Subset>,
        dr: Option<RuleUse<'_>>,
        ctx: &TlsContext<'_>,
        facts: &[EndpointFacts],
    ) -> Self {
        let traffic = TrafficSettings::merge(
            dr.as_ref().map(|(d, _, _)| &d.spec),
            subset,
            port.number as u16,
        );
        let peak_ewma = dr.as_ref().is_some_and(|(_, p, _)| *p);
        let (lb, hash_on) = traffic.lb(peak_ewma);
        let endpoints: Arc<[Endpoint]> = service
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| subset.is_none_or(|s| e.selected_by(&s.labels)))
            // An endpoint without an address (Istio reaches it through its network's
            // gateway) has nothing to connect to: validation warns about it.
            .filter(|(_, e)| !e.address.is_empty())
            .map(|(i, e)| {
                let p = u16::try_from(e.port_for(port)).unwrap_or(0);
                let in_mesh = match e.labels.get(TLS_MODE_LABEL).map(String::as_str) {
                    Some("istio") => true,
                    Some(_) => false,
                    None => e.workload.is_some(),
                };
                let mtls = in_mesh
                    && crate::peer_auth::server_mode(
                        ctx.peer_authentications,
                        ctx.root_namespace,
                        &e.namespace,
                        &e.labels,
                        p,
                    ) != crate::peer_auth::MtlsMode::Disable;
                let shared = match facts.get(i) {
                    Some(f) => f.clone(),
                    None => EndpointFacts::of(e, ctx.trust_domain),
                };
                Endpoint {
                    id: host_port(&e.address, p).into(),
                    address: shared.address,
                    port: p,
                    weight: e.weight,
                    identity: shared.identity,
                    labels: shared.labels,
                    mtls,
                    peer: shared.peer,
                }
            })
            .collect();
        let ids: Vec<&str> = endpoints.iter().map(|u| &*u.id).collect();
        let weights: Vec<u32> = endpoints.iter().map(|u| u.weight).collect();
        let tls = upstream_tls(
            traffic.tls.as_ref(),
            ctx.auto_mtls,
            service,
            subset.map(|s| s.name.as_str()),
            port.number,
            dr.as_ref()
                .and_then(|(d, _, _)| Path::new(d.origin.source.name()).parent()),
        );
        let mut limits = traffic.limits();
        limits.request_budget = dr
            .as_ref()
            .and_then(|(d, _, _)| d.meta.annotations.get(RETRY_BUDGET_ANNOTATION))
            .and_then(|v| RequestRetryBudget::parse(v).ok());
        let key = ClusterKey {
            host: service.host.as_str().into(),
            subset: subset.map(|s| s.name.as_str().into()),
            port: port.number as u16,
            rule: dr.as_ref().map(|(_, _, id)| id.clone()),
        };
        Cluster {
            id,
            tls,
            limits,
            name: key.to_string().into(),
            key,
            outlier: traffic
                .outlier_detection
                .as_ref()
                .map(crate::outlier::OutlierSettings::of),
            codec: Codec::of(&port.protocol, &traffic),
            service_labels: Arc::new(crate::telemetry::ServiceLabels::new(
                &service.host,
                &service.namespace,
            )),
            service: service.clone(),
            rule: dr.map(|(d, _, _)| d.clone()),
            port: port.clone(),
            balancer: Balancer::new(&lb, &ids, &weights),
            endpoints,
            traffic,
            lb,
            hash_on,
        }
    }

    /// Picks an endpoint, with the load of each endpoint (by index) as `loads` says;
    /// `None` when the cluster has none ("no healthy upstream").
    pub fn pick(
        &self,
        loads: &(impl Loads + ?Sized),
        p: &mut Pick<'_>,
    ) -> Option<(usize, &Endpoint)> {
        let i = self.balancer.pick(loads, p)?;
        self.endpoints.get(i).map(|u| (i, u))
    }
}

/// `host:port`, with an IPv6 address in brackets (`[::1]:9080`), as URIs and socket
/// addresses write it.
pub fn host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(super::host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(super::host_port("::1", 9080), "[::1]:9080");
        assert_eq!(super::host_port("[::1]", 9080), "[::1]:9080");
        assert_eq!(super::host_port("reviews", 9080), "reviews:9080");
    }

    use super::*;
    use mesh_config::model::{PortSelector, PortTrafficPolicy};

    fn lb(simple: SimpleLb) -> Option<LoadBalancerSettings> {
        Some(LoadBalancerSettings {
            simple: Some(simple),
            ..LoadBalancerSettings::default()
        })
    }

    fn tls(mode: mesh_config::model::ClientTlsMode) -> Option<ClientTlsSettings> {
        Some(ClientTlsSettings {
            mode: Some(mode),
            ..ClientTlsSettings::default()
        })
    }

    #[test]
    fn istio_traffic_policy_merge() {
        use mesh_config::model::ClientTlsMode::*;
        let dr = DestinationRule {
            host: "reviews".into(),
            traffic_policy: Some(TrafficPolicy {
                load_balancer: lb(SimpleLb::Random),
                tls: tls(IstioMutual),
                port_level_settings: vec![PortTrafficPolicy {
                    port: Some(PortSelector { number: 9443 }),
                    load_balancer: lb(SimpleLb::RoundRobin),
                    ..PortTrafficPolicy::default()
                }],
                ..TrafficPolicy::default()
            }),
            ..DestinationRule::default()
        };
        let v2 = Subset {
            name: "v2".into(),
            traffic_policy: Some(TrafficPolicy {
                load_balancer: lb(SimpleLb::LeastRequest),
                ..TrafficPolicy::default()
            }),
            ..Subset::default()
        };
        let v3 = Subset {
            name: "v3".into(),
            ..Subset::default()
        };
        // (subset, port) -> (lb, tls)
        let table = [
            (None, 9080, Some(SimpleLb::Random), Some(IstioMutual)),
            // port-level settings replace every component: tls falls back to the default
            (None, 9443, Some(SimpleLb::RoundRobin), None),
            // the subset overrides the load balancer, keeps the host's tls
            (
                Some(&v2),
                9080,
                Some(SimpleLb::LeastRequest),
                Some(IstioMutual),
            ),
            // the subset's override wins over the host's port-level settings
            (Some(&v2), 9443, Some(SimpleLb::LeastRequest), None),
            (Some(&v3), 9080, Some(SimpleLb::Random), Some(IstioMutual)),
        ];
        for (subset, port, want_lb, want_tls) in table {
            let p = TrafficSettings::merge(Some(&dr), subset, port);
            assert_eq!(
                p.load_balancer.and_then(|l| l.simple),
                want_lb,
                "{:?} {port}",
                subset.map(|s| &s.name)
            );
            assert_eq!(
                p.tls.and_then(|t| t.mode),
                want_tls,
                "{:?} {port}",
                subset.map(|s| &s.name)
            );
        }
    }

    /// `ttl: 0s` generates a session cookie (`Some(0)`); no ttl generates none (`None`).
    #[test]
    fn cookie_ttl_zero_is_a_session_cookie() {
        use mesh_config::model::{ConsistentHashLb, HttpCookie};
        let traffic = |ttl: Option<Duration>| TrafficSettings {
            load_balancer: Some(LoadBalancerSettings {
                consistent_hash: Some(ConsistentHashLb {
                    http_cookie: Some(HttpCookie {
                        name: "user".into(),
                        ttl: ttl.map(mesh_config::duration::Duration),
                        ..HttpCookie::default()
                    }),
                    ..ConsistentHashLb::default()
                }),
                ..LoadBalancerSettings::default()
            }),
            ..TrafficSettings::default()
        };
        // (ttl written, ttl compiled)
        let table = [
            (None, None),
            (Some(Duration::ZERO), Some(Duration::ZERO)),
            (Some(Duration::from_secs(60)), Some(Duration::from_secs(60))),
        ];
        for (ttl, want) in table {
            match traffic(ttl).lb(false).1 {
                Some(HashOn::Cookie { ttl: got, .. }) => assert_eq!(got, want, "{ttl:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn origination_paths_resolve_against_the_rule_file() {
        use mesh_config::model::ClientTlsMode::*;
        let written = ClientTlsSettings {
            mode: Some(Mutual),
            ca_certificates: Some("certs/ca.pem".into()),
            client_certificate: Some("/etc/client.pem".into()),
            private_key: Some("key.pem".into()),
            sni: Some(String::new()),
            subject_alt_names: vec!["api.example.com".into()],
            ..ClientTlsSettings::default()
        };
        let o = Origination::of(&written, Some(Path::new("/config")));
        assert!(o.mutual);
        assert_eq!(
            o.ca_certificates.as_deref(),
            Some(Path::new("/config/certs/ca.pem"))
        );
        assert_eq!(
            o.client_certificate.as_deref(),
            Some(Path::new("/etc/client.pem"))
        );
        assert_eq!(o.private_key.as_deref(), Some(Path::new("/config/key.pem")));
        // An empty `sni` is unset: the request's host is sent.
        assert_eq!(o.sni, None);
        assert!(!o.auto_san_validation(), "subjectAltNames are verified");
        let simple = ClientTlsSettings {
            mode: Some(Simple),
            ..ClientTlsSettings::default()
        };
        let o = Origination::of(&simple, None);
        assert_eq!(o, Origination::simple());
        assert!(o.auto_san_validation());
        assert!(
            !Origination {
                sni: Some("api.example.com".into()),
                ..Origination::simple()
            }
            .auto_san_validation()
        );
    }

    #[test]
    fn connection_pool_limits_as_istio_sets_them() {
        use mesh_config::duration::parse_duration as d;
        use mesh_config::model::{HttpSettings, TcpSettings};
        let pool = |tcp: TcpSettings, http: HttpSettings| TrafficSettings {
            connection_pool: Some(ConnectionPoolSettings {
                tcp: Some(tcp),
                http: Some(http),
            }),
            ..TrafficSettings::default()
        };
        // Unset: no limit, Envoy's 10 s connect timeout, nothing for the transport.
        let none = TrafficSettings::default().limits();
        assert!(!none.configured() && !none.has_breakers());
        assert_eq!(none.connect_timeout, Duration::from_secs(10));
        // Istio's task.
        let task = pool(
            TcpSettings {
                max_connections: Some(1),
                ..TcpSettings::default()
            },
            HttpSettings {
                http1_max_pending_requests: Some(1),
                max_requests_per_connection: Some(1),
                ..HttpSettings::default()
            },
        )
        .limits();
        assert_eq!(task.max_connections, Some(1));
        assert_eq!(task.max_pending_requests, Some(1));
        assert_eq!(task.max_requests_per_connection, Some(1));
        assert_eq!(task.max_requests, None);
        assert!(task.has_breakers());
        // Zero (and negative) values leave Envoy's default: no limit; tcp.idleTimeout
        // stands in for http.idleTimeout; the connect timeout is taken.
        let zero = pool(
            TcpSettings {
                max_connections: Some(0),
                connect_timeout: Some(d("250ms").unwrap()),
                idle_timeout: Some(d("5s").unwrap()),
                ..TcpSettings::default()
            },
            HttpSettings {
                http2_max_requests: Some(0),
                max_retries: Some(-1),
                max_concurrent_streams: Some(0),
                ..HttpSettings::default()
            },
        )
        .limits();
        assert_eq!(zero.max_connections, None);
        assert_eq!(zero.max_requests, None);
        assert_eq!(zero.max_retries, None);
        assert_eq!(zero.max_concurrent_streams, None);
        assert_eq!(zero.connect_timeout, Duration::from_millis(250));
        assert_eq!(zero.idle_timeout, Some(Duration::from_secs(5)));
        assert!(zero.configured() && !zero.has_breakers());
        let both = pool(
            TcpSettings {
                idle_timeout: Some(d("5s").unwrap()),
                ..TcpSettings::default()
            },
            HttpSettings {
                idle_timeout: Some(d("1s").unwrap()),
                ..HttpSettings::default()
            },
        )
        .limits();
        assert_eq!(
            both.idle_timeout,
            Some(Duration::from_secs(1)),
            "http's first"
        );
    }

    #[test]
    fn envoy_retry_budget() {
        let with = |percent, min| TrafficSettings {
            retry_budget: Some(RetryBudget {
                percent,
                min_retry_concurrency: min,
                budget_interval: None,
            }),
            ..TrafficSettings::default()
        };
        // Istio's defaults: 20 %, at least 3.
        let b = with(None, None).limits().retry_budget.unwrap();
        assert_eq!((b.percent, b.min_retry_concurrency), (20.0, 3));
        for (requests, allowed) in [(0, 3), (10, 3), (15, 3), (20, 4), (100, 20)] {
            assert_eq!(b.allowed(requests), allowed, "{requests} requests");
        }
        let b = with(Some(50.0), Some(1)).limits().retry_budget.unwrap();
        for (requests, allowed) in [(0, 1), (1, 1), (4, 2), (9, 4)] {
            assert_eq!(b.allowed(requests), allowed, "{requests} requests");
        }
    }

    #[test]
    fn lb_defaults_and_options() {
        let none = TrafficSettings::default();
        assert_eq!(none.lb(false).0, LbAlgorithm::LeastRequest);
        assert_eq!(none.lb(true).0, LbAlgorithm::peak_ewma());
        let rr = TrafficSettings {
            load_balancer: lb(SimpleLb::RoundRobin),
            ..TrafficSettings::default()
        };
        assert_eq!(rr.lb(true).0, LbAlgorithm::RoundRobin);
        assert_eq!(none.connect_timeout(), Duration::from_secs(10));
        let key = ClusterKey {
            host: "reviews.default.svc.cluster.local".into(),
            subset: Some("v2".into()),
            port: 9080,
            rule: None,
        };
        assert_eq!(
            key.to_string(),
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        );
    }
}
