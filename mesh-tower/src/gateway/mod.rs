//! The ingress gateway: Istio `Gateway` resources served in-process.
//!
//! In Istio an ingress gateway is an Envoy deployment whose listeners come from the
//! Gateways that select it and whose routes come from the VirtualServices bound to those
//! Gateways. Here it is a set of listeners in your process for a gateway workload: they
//! accept connections, terminate TLS and sanitize headers as an edge proxy does; the
//! routing decision — which virtual host, which VirtualService rule, which destination —
//! is mesh-core's ([`mesh_core::gateway::GatewayRoutes`], the code `meshctl route
//! --gateway` runs too), made on the gateway workload's view of the configuration in
//! force; the request then goes through the workload's outbound layers (CORS, faults,
//! headers, mirrors, timeout, retries, balancing).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::collections::BTreeMap;
//! use mesh_config::ConfigSet;
//! use mesh_tower::gateway::IngressGateway;
//! use mesh_tower::{MeshRuntime, Workload};
//!
//! let snapshot = ConfigSet::load(&["examples/bookinfo/config"])?.check().snapshot.ok_or("invalid")?;
//! let runtime = MeshRuntime::from_snapshot(&snapshot);
//! let workload = Workload::new("istio-ingressgateway", "istio-system")
//!     .labels([("istio", "ingressgateway")]);
//! // Gateway server port 80 listens on 127.0.0.1:8080 (80 is privileged).
//! let ports = BTreeMap::from([(80, "127.0.0.1:8080".parse()?)]);
//! let gateway = IngressGateway::bind(&runtime, workload, &ports)?;
//! tokio::spawn(gateway.serve(std::future::pending::<()>()));
//! // A new configuration: one update, for the routes and the Gateways alike.
//! # let new_snapshot = snapshot.clone();
//! runtime.update(&new_snapshot);
//! # Ok(()) }
//! ```
//!
//! What it does, per request (as Istio configures Envoy for a gateway):
//!
//! * **Virtual hosts and routes** are built as Istio's `buildGatewayHTTPRouteConfig`
//!   builds them and chosen as Envoy chooses them (see [`mesh_core::gateway`]). On a TLS
//!   port each server (filter chain) has virtual hosts of its own, and the requests of a
//!   connection are answered by the server its SNI chose only.
//! * **Host.** The authority (the URI's for an absolute-form or HTTP/2 request, else
//!   `Host`; port removed, lower case) picks the virtual host. None → 404 with an empty
//!   body. A virtual host of a plaintext server with `tls.httpsRedirect` answers 301 to
//!   `https://` + the authority as received (port included) + the path, as Envoy's
//!   `require_tls` does.
//! * **Rules** see the request as `http://host[:server port]/path` (the port of the
//!   Gateway server, not the local one, so that VirtualService `port` matches see the
//!   Gateway's); no match → 404. One request is decided and forwarded with one
//!   configuration.
//! * **Headers** (Envoy with `use_remote_address: true` and
//!   `forward_client_cert_details: SANITIZE_SET`): the upstream gets the authority the
//!   gateway matched on as `Host`; hop-by-hop headers (`Connection` and the headers it
//!   names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE` but
//!   `trailers`) are removed in both directions; every `x-envoy-*` header of the client
//!   is removed and `x-envoy-external-address` set to the peer address, which is also
//!   appended to `x-forwarded-for`; `x-forwarded-proto` is `http` or `https` as the
//!   connection is; a client's `x-forwarded-client-cert` is removed, and on `MUTUAL`
//!   connections set from the verified client certificate (`By`, `Hash`, `Cert`,
//!   `Subject`, `URI`, `DNS`, Envoy's format and Istio's choice of fields).
//! * **Upgrades.** HTTP/1.1 WebSocket upgrades are proxied: when the upstream answers
//!   `101`, the client's and the upstream's connections are bridged. `Upgrade: h2c` is
//!   dropped (the request goes on as HTTP/1.1); other upgrade protocols and `CONNECT`
//!   are refused with 403, as by an Envoy configured for WebSocket only.
//!
//! TLS: servers with `tls.mode` `SIMPLE` or `MUTUAL` terminate TLS with rustls, with the
//! certificate, key, CA (and `caCrl`) PEM files they name, relative paths taken from the
//! directory of the Gateway's YAML file. Several servers on one port are chosen by SNI
//! with the host rules of servers (an exact host before a wildcard, a longer wildcard
//! before a shorter one, `*` last, the first server in order among equals; a client
//! without SNI gets a server with a `*` host, or no handshake). `MUTUAL` requires a
//! client certificate signed by the CA. A connection keeps its server (filter chain)
//! across updates while that server keeps its TLS settings; once it is gone or changed,
//! the connection's requests get 404.
//!
//! Live configuration: the Gateways' servers and hosts, the VirtualServices bound to
//! them and their rules all follow [`MeshRuntime::update`](crate::MeshRuntime::update),
//! which compiles the gateway workload's virtual hosts with everything else, before the
//! swap. Listeners and certificates are fixed when the gateway binds: a new or changed
//! port, or changed TLS settings, need a new gateway (a restart); such servers are
//! reported with a warning at each update until then.
//!
//! Not supported in-process (each such server is skipped with a `tracing` warning):
//! `credentialName` and other Kubernetes secrets, TLS modes `PASSTHROUGH`,
//! `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL` and `OPTIONAL_MUTUAL`, `tlsCertificates`, the TCP,
//! TLS and MONGO protocols, and — on `MUTUAL` servers, rather than let in clients they
//! should refuse — `subjectAltNames`, certificate pinning and `insecureSkipVerify`.
//! Also: VirtualService `scheme` matches see `http` on TLS ports; WebSocket over HTTP/2
//! (extended CONNECT) is not supported.
//!
//! Every request gets a new `x-request-id` at the gateway (Envoy's edge treats each
//! request as external and does not keep the client's).

mod error;
mod headers;
mod service;
mod xfcc;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mesh_core::Workload;
use mesh_core::gateway::{Chain, GatewayRoutes, TlsSettings};

pub use error::{GatewayError, ServerRef};

/// What the ingress gateway takes from a client, beyond the listeners' bounds
/// (`transport::accept`). Set it with [`set_ingress_limits`] before the gateway is
/// bound; a gateway reads it when it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressLimits {
    /// The largest request body forwarded, in bytes: 64 MiB by default; 0 for no bound.
    /// A request announcing a larger `Content-Length` is answered `413` before anything
    /// is forwarded; a body that grows past it on the way (chunked, HTTP/2) is cut
    /// there and answered `413` unless the upstream answered already.
    pub max_request_body: u64,
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits {
            max_request_body: 64 << 20,
        }
    }
}

static INGRESS_LIMITS: std::sync::RwLock<Option<IngressLimits>> = std::sync::RwLock::new(None);

/// Sets what the gateways bound from now on take from a client.
pub fn set_ingress_limits(limits: IngressLimits) {
    *INGRESS_LIMITS.write().unwrap_or_else(|e| e.into_inner()) = Some(limits);
}

/// What gateways are bound with ([`IngressLimits::default`] unless set).
pub fn ingress_limits() -> IngressLimits {
    let set = *INGRESS_LIMITS.read().unwrap_or_else(|e| e.into_inner());
    set.unwrap_or_default()
}

use crate::outbound::Forward;
use crate::transport::tls::{ServerTls, server_config};
use crate::{Mesh, MeshRuntime};
use service::{GatewayService, TlsConn};

/// State shared by the listeners of a gateway.
pub(crate) struct Shared {
    /// The gateway workload.
    mesh: Mesh,
    /// Its layers below the route stage.
    forward: Forward,
    /// TLS configurations loaded at start.
    tls: HashMap<TlsSettings, ServerTls>,
    /// Port → TLS, for every listener.
    listening: HashMap<u32, bool>,
    /// Port → the address its listener is bound to.
    addrs: Vec<(u32, SocketAddr)>,
    /// How long a request body may stop arriving (`ListenerTimeouts`), as at start.
    body_idle: Option<std::time::Duration>,
    /// The largest request body forwarded ([`IngressLimits`]), as at start.
    max_request_body: Option<u64>,
}

impl Shared {
    /// The filter chain and TLS configuration a client asking for `sni` on `port` gets,
    /// among the servers whose TLS settings were loaded at start.
    pub(crate) fn tls_for(&self, port: u32, sni: Option<&str>) -> Option<(Chain, ServerTls)> {
        let view = self.mesh.view()?;
        let server = view
            .gateway()?
            .find_sni(port, sni, |t| self.tls.contains_key(t))?;
        let chain = Chain::of(server)?;
        let loaded = self.tls.get(&*chain.tls)?.clone();
        Some((chain, loaded))
    }

    /// Reports the servers of the gateway workload's Gateways it does not serve: those
    /// an in-process gateway cannot serve, those on ports without a listener of their
    /// kind, and TLS servers whose settings changed after start.
    fn report_unserved(&self) {
        let view = self.mesh.view();
        let Some(routes) = view.as_deref().and_then(|v| v.gateway()) else {
            tracing::warn!(
                workload = %self.mesh.workload().name,
                "ingress gateway: no Gateway selects the gateway workload"
            );
            return;
        };
        for s in routes.skipped() {
            tracing::warn!(server = %s.at, "{}: server skipped", s.reason);
        }
        for s in routes.servers() {
            match self.listening.get(&s.at.port) {
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
                Some(_) if s.tls.as_deref().is_some_and(|k| !self.tls.contains_key(k)) => {
                    tracing::warn!(
                        server = %s.at,
                        "its TLS settings changed after the gateway started (certificates are \
                         loaded at start; restart to use them): server skipped"
                    );
                }
                Some(_) => {}
            }
        }
    }
}

/// An ingress gateway: listeners for the servers of the Gateways that select a gateway
/// workload (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct IngressGateway {
    shared: Arc<Shared>,
    /// Bound at start, taken by the first `serve`.
    listeners: Arc<Mutex<Vec<(u32, std::net::TcpListener, bool)>>>,
}

impl std::fmt::Debug for IngressGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressGateway")
            .field("workload", &self.shared.mesh.workload().name)
            .field("addrs", &self.shared.addrs)
            .finish()
    }
}

impl IngressGateway {
    /// Registers `workload` with `runtime`, loads the certificates and binds one listener
    /// per server port of the Gateways that select it (by labels, in any namespace), at
    /// the address `ports` maps the port to (port 0 picks a free one: see
    /// [`local_addrs`](Self::local_addrs)). Servers on unmapped ports and servers the
    /// in-process gateway does not support are skipped with a warning. On one port
    /// servers are all plaintext or all TLS, as the first server says.
    ///
    /// # Errors
    ///
    /// A listener that cannot be bound, a certificate, key or CA file that cannot be read
    /// or parsed, or TLS settings rustls refuses; each names the Gateway, the server and
    /// the file.
    pub fn bind(
        runtime: &MeshRuntime,
        workload: Workload,
        ports: &BTreeMap<u32, SocketAddr>,
    ) -> Result<IngressGateway, GatewayError> {
        let mesh = runtime.register(workload, mesh_core::Role::Gateway);
        let view = mesh.view();
        let servers = view
            .as_deref()
            .and_then(|v| v.gateway())
            .map_or(&[][..], GatewayRoutes::servers);
        // The kind of each port: the first server's.
        let mut kinds: BTreeMap<u32, bool> = BTreeMap::new();
        for s in servers {
            kinds.entry(s.at.port).or_insert(s.tls.is_some());
        }
        for port in ports.keys().filter(|p| !kinds.contains_key(p)) {
            tracing::debug!(
                port,
                "no Gateway server on this mapped port: not listened on"
            );
        }
        let mut tls = HashMap::new();
        for s in servers {
            if let Some(settings) = &s.tls
                && ports.contains_key(&s.at.port)
                && kinds.get(&s.at.port) == Some(&true)
                && !tls.contains_key(&**settings)
            {
                let loaded = server_config(settings).map_err(|e| GatewayError::tls(&s.at, e))?;
                tls.insert((**settings).clone(), loaded);
            }
        }
        let mut listeners = Vec::new();
        let mut listening = HashMap::new();
        let mut addrs = Vec::new();
        for (&port, &is_tls) in &kinds {
            let Some(&addr) = ports.get(&port) else {
                continue;
            };
            let bind_err = |source| GatewayError::Bind { port, addr, source };
            let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            listener.set_nonblocking(true).map_err(bind_err)?;
            let local = listener.local_addr().map_err(bind_err)?;
            tracing::info!(port, %local, tls = is_tls, "ingress gateway listening");
            listeners.push((port, listener, is_tls));
            listening.insert(port, is_tls);
            addrs.push((port, local));
        }
        let shared = Shared {
            forward: crate::outbound::forward(&mesh, crate::transport::pool::Pools),
            mesh,
            tls,
            listening,
            addrs,
            body_idle: {
                let idle = crate::transport::accept::listener_timeouts().request_body_idle;
                (!idle.is_zero()).then_some(idle)
            },
            max_request_body: {
                let max = ingress_limits().max_request_body;
                (max != 0).then_some(max)
            },
        };
        shared.report_unserved();
        Ok(IngressGateway {
            shared: Arc::new(shared),
            listeners: Arc::new(Mutex::new(listeners)),
        })
    }

    /// The server ports listened on and the local addresses they are bound to.
    pub fn local_addrs(&self) -> Vec<(u32, SocketAddr)> {
        self.shared.addrs.clone()
    }

    /// The local address of server port `port`, if it is listened on.
    pub fn local_addr(&self, port: u32) -> Option<SocketAddr> {
        self.shared
            .addrs
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, a)| *a)
    }

    /// The version of the configuration in force.
    pub fn version(&self) -> u64 {
        self.shared.mesh.runtime().version()
    }

    /// Serves every listener until `shutdown` completes, then lets the connections in
    /// progress finish their requests. At each configuration update it reports the
    /// servers it does not serve. Dropping the future stops the listeners.
    ///
    /// The listeners are served once: on a second call (through a clone) this only
    /// waits for `shutdown`. A listener the tokio runtime refuses is logged as an error
    /// and not served.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let listeners = std::mem::take(
            &mut *self
                .listeners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if listeners.is_empty() && !self.shared.addrs.is_empty() {
            tracing::warn!("ingress gateway: its listeners are already being served");
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (port, listener, is_tls) in listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(port, error = %e, "ingress gateway: cannot serve this port");
                    continue;
                }
            };
            let mut stopped = stopped.clone();
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let shared = self.shared.clone();
            if is_tls {
                tasks.spawn(serve_tls(listener, shared, port, until));
            } else {
                let app = GatewayService::new(shared, port, None);
                tasks.spawn(crate::transport::accept::serve_edge(listener, app, until));
            }
        }
        // Report what an update leaves unserved, until shutdown.
        let shared = self.shared.clone();
        let mut versions = shared.mesh.runtime().subscribe();
        let reports = async move {
            while versions.changed().await.is_ok() {
                shared.report_unserved();
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = reports => {}
        }
        let _ = stop.send(true);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "ingress gateway listener failed"),
                Err(e) => tracing::error!(error = %e, "ingress gateway listener task failed"),
            }
        }
    }
}

/// Serves the TLS servers of gateway port `port` on `listener` until `shutdown`
/// completes, then lets the connections in progress finish their requests.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    port: u32,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use crate::transport::accept::{
        Admission, ConnectionInfo, WithConnection, accept_each, connection_limits, serve_connection,
    };
    let admission = Admission::edge(&connection_limits());
    accept_each(
        listener,
        admission,
        shutdown,
        move |stream, peer, builder, control| {
            let shared = shared.clone();
            async move {
                let chosen = crate::transport::tls::handshake(stream, peer, |sni| {
                    let (chain, loaded) = shared.tls_for(port, sni)?;
                    Some((loaded.config.clone(), (chain, loaded)))
                })
                .await;
                let Some((stream, (chain, loaded))) = chosen else {
                    return;
                };
                // MUTUAL: the verified client certificate, for `x-forwarded-client-cert`.
                let xfcc = if chain.tls.mutual {
                    let peer_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first());
                    let v = peer_cert.and_then(|c| xfcc::value(c, &loaded.local_uris));
                    if v.is_none() {
                        tracing::debug!(%peer, port, "no x-forwarded-client-cert for this client");
                    }
                    v
                } else {
                    None
                };
                let conn = Arc::new(TlsConn { chain, xfcc });
                let info = ConnectionInfo::plain(stream.get_ref().0, peer);
                let svc = WithConnection::new(GatewayService::new(shared, port, Some(conn)), info);
                serve_connection(stream, svc, builder, control).await;
            }
        },
    )
    .await
}
