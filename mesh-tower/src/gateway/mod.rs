//! The ingress gateway: Istio `Gateway` resources served in-process.
//!
//! In Istio an ingress gateway is an Envoy deployment whose listeners come from the
//! Gateways that select it and whose routes come from the VirtualServices bound to those
//! Gateways. Here it is a set of listeners in your process in front of the gateway
//! workload's own [`Mesh::client`](crate::Mesh::client): the gateway only decides which
//! Gateway server answers (ports, hosts, TLS); routing, splitting, retries and the rest
//! are the outbound stack's, with the request marked by a [`GatewaySource`] so that only
//! VirtualServices bound to that Gateway (`gateways:`) apply.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::collections::BTreeMap;
//! use mesh_config::ConfigSet;
//! use mesh_tower::gateway::IngressGateway;
//! use mesh_tower::{MeshConfig, Workload};
//!
//! let snapshot = ConfigSet::load(&["examples/bookinfo/config"])?.check().snapshot.ok_or("invalid")?;
//! let config = MeshConfig::from_snapshot(&snapshot);
//! let workload = Workload::new("istio-ingressgateway", "istio-system")
//!     .labels([("istio", "ingressgateway")]);
//! // Gateway server port 80 listens on 127.0.0.1:8080 (80 is privileged).
//! let ports = BTreeMap::from([(80, "127.0.0.1:8080".parse()?)]);
//! let gateway = IngressGateway::bind(config.clone(), &snapshot, workload, &ports)?;
//! tokio::spawn(gateway.clone().serve(std::future::pending::<()>()));
//! // On a new configuration: routes, then the Gateways' hosts.
//! # let new_snapshot = snapshot.clone();
//! config.update(&new_snapshot);
//! gateway.update(&new_snapshot);
//! # Ok(()) }
//! ```
//!
//! What it does, per request (as Istio configures Envoy for a gateway):
//!
//! * **Virtual hosts.** The VirtualServices bound to the Gateways of a port make its
//!   virtual hosts, as Istio's `buildGatewayHTTPRouteConfig` builds them: for each
//!   server of the port in order (Gateways by name, then namespace — Istio orders them
//!   by creation time, then name, then namespace; files have no creation time — then
//!   the servers of each), each VirtualService bound to its Gateway (visible to the
//!   gateway workload's namespace; private, then exported by name, then public, then in
//!   load order) gives one virtual host per name of `VirtualService hosts ∩ server
//!   hosts` (only the server hosts whose `namespace/` admits the VirtualService's
//!   namespace); a name already there gets the routes appended. On a TLS port each
//!   server (filter chain) has virtual hosts of its own, and the requests of a
//!   connection are answered by the server its SNI chose only.
//! * **Host.** The authority (the URI's for an absolute-form or HTTP/2 request, else
//!   `Host`; port removed, lower case) picks a virtual host as Envoy does: an exact
//!   name, else the longest `*.suffix`, else `*`. None → 404 with an empty body. A
//!   virtual host of a plaintext server with `tls.httpsRedirect` answers 301 to
//!   `https://` + the authority as received (port included) + the path, as Envoy's
//!   `require_tls` does.
//! * **Routes.** The route layer then tries the virtual host's routes in order, each
//!   VirtualService's rules seeing the request as arriving through its server's
//!   Gateway, catch-all routes (no condition but a `/` prefix) last as Istio sorts
//!   them; no match → 404. The request goes to the mesh client as
//!   `http://host[:server port]/path` (the port of the Gateway server, not the local
//!   one, so that VirtualService `port` matches see the Gateway's), with the
//!   configuration the gateway chose the virtual host with: one request never sees two
//!   configurations.
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
//! across [`IngressGateway::update`]s while that server keeps its TLS settings; once
//! it is gone or changed, the connection's requests get 404.
//!
//! Live configuration: which VirtualServices answer, with which rules, follows
//! [`MeshConfig::update`] (the virtual hosts are rebuilt for the new configuration on
//! its first request). Which servers answer which hosts, and which VirtualServices are
//! bound to them, follow [`IngressGateway::update`], which the caller invokes with the
//! same snapshot after `MeshConfig::update`. Listeners and certificates are fixed when
//! the gateway binds: a new or changed port, or changed TLS settings, need a new
//! gateway (a restart); such servers are skipped with a warning until then.
//!
//! Not supported in-process (each such server is skipped with a `tracing` warning):
//! `credentialName` and other Kubernetes secrets, TLS modes `PASSTHROUGH`,
//! `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL` and `OPTIONAL_MUTUAL`, `tlsCertificates`, the TCP,
//! TLS and MONGO protocols, and — on `MUTUAL` servers, rather than let in clients they
//! should refuse — `subjectAltNames`, certificate pinning and `insecureSkipVerify`.
//! Also: VirtualService `scheme` matches see `http` on TLS ports; of several
//! VirtualServices bound to one Gateway that claim exactly the same hosts, only the
//! first (mesh-core's choice) contributes routes, where Istio appends them all;
//! WebSocket over HTTP/2 (extended CONNECT) is not supported; `x-request-id` is not
//! generated.

mod error;
mod headers;
mod service;
mod table;
mod tls;
mod vhost;
mod xfcc;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use mesh_config::Snapshot;

pub use error::{GatewayError, ServerRef};

use crate::{MeshClient, MeshConfig, Workload};
use service::GatewayService;
use table::{Table, TlsKey};
use tls::Loaded;
pub(crate) use vhost::GatewayRoute;
use vhost::{Chain, Routes};

/// The Gateway (`namespace/name`) a request arrived through, as a request extension.
///
/// The ingress gateway sets it (the Gateway of the first server whose VirtualServices
/// answer the request's host) together with the virtual host it chose, which the route
/// layer routes with. Set alone, the route layer passes it to mesh-core, so that only
/// VirtualServices bound to that Gateway apply and hosts are matched as the client wrote
/// them. Without it a request is workload traffic (Istio's `mesh` gateway).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewaySource(pub Arc<str>);

/// State shared by the listeners of a gateway and its clones.
pub(crate) struct Shared {
    config: MeshConfig,
    workload: Workload,
    client: MeshClient,
    /// The servers of the current snapshot.
    table: ArcSwap<Table>,
    /// The virtual hosts of `table` with the VirtualServices of a configuration of
    /// `config` (rebuilt when either changes).
    routes: ArcSwap<Routes>,
    /// Held while `routes` is rebuilt.
    compiling: Mutex<()>,
    /// TLS configurations loaded at start.
    tls: HashMap<TlsKey, Loaded>,
    /// Port → TLS, for every listener.
    listening: HashMap<u32, bool>,
    /// Port → the address its listener is bound to.
    addrs: Vec<(u32, SocketAddr)>,
}

impl Shared {
    /// The filter chain and TLS configuration a client asking for `sni` on `port` gets.
    pub(crate) fn tls_for(&self, port: u32, sni: Option<&str>) -> Option<(Chain, Loaded)> {
        let table = self.table.load();
        let chain = Chain::of(table.find_sni(port, sni)?)?;
        let loaded = self.tls.get(&*chain.tls)?.clone();
        Some((chain, loaded))
    }

    /// The virtual hosts of the current servers with the current configuration's
    /// VirtualServices, rebuilt when either has changed since they were built.
    pub(crate) fn routes(&self) -> Arc<Routes> {
        let fresh = |r: &Routes, table: &Arc<Table>, mesh: &Arc<mesh_core::CompiledMesh>| {
            Arc::ptr_eq(&r.table, table) && Arc::ptr_eq(&r.mesh, mesh)
        };
        let routes = self.routes.load_full();
        if fresh(&routes, &self.table.load(), &self.config.current()) {
            return routes;
        }
        let _compiling = self
            .compiling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (table, mesh) = (self.table.load_full(), self.config.current());
        let routes = self.routes.load_full();
        if fresh(&routes, &table, &mesh) {
            return routes;
        }
        let routes = Arc::new(Routes::compile(table, mesh, &self.workload));
        self.routes.store(routes.clone());
        routes
    }
}

/// An ingress gateway: listeners for the servers of the Gateways that select a gateway
/// workload, in front of that workload's mesh client (see the module documentation).
///
/// Clones share the gateway: keep one to [`update`](Self::update) it while another
/// [`serve`](Self::serve)s.
#[derive(Clone)]
pub struct IngressGateway {
    shared: Arc<Shared>,
    /// Bound at start, taken by the first `serve`.
    listeners: Arc<Mutex<Vec<(u32, std::net::TcpListener, bool)>>>,
}

impl std::fmt::Debug for IngressGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressGateway")
            .field("workload", &self.shared.workload.name)
            .field("version", &self.version())
            .field("addrs", &self.shared.addrs)
            .finish()
    }
}

impl IngressGateway {
    /// Loads the certificates and binds one listener per server port of the Gateways of
    /// `snapshot` that select `workload` (by labels, in any namespace), at the address
    /// `ports` maps the port to (port 0 picks a free one: see
    /// [`local_addrs`](Self::local_addrs)). Servers on unmapped ports and servers the
    /// in-process gateway does not support are skipped with a warning. On one port
    /// servers are all plaintext or all TLS, as the first server says.
    ///
    /// Requests go through `config.workload(workload).client()`.
    ///
    /// # Errors
    ///
    /// A listener that cannot be bound, a certificate, key or CA file that cannot be read
    /// or parsed, or TLS settings rustls refuses; each names the Gateway, the server and
    /// the file.
    pub fn bind(
        config: MeshConfig,
        snapshot: &Snapshot,
        workload: Workload,
        ports: &BTreeMap<u32, SocketAddr>,
    ) -> Result<IngressGateway, GatewayError> {
        let servers = table::servers(snapshot, &workload);
        // The kind of each port: the first server's.
        let mut kinds: BTreeMap<u32, bool> = BTreeMap::new();
        for s in &servers {
            kinds.entry(s.at.port).or_insert(s.tls.is_some());
        }
        for port in ports.keys().filter(|p| !kinds.contains_key(p)) {
            tracing::debug!(
                port,
                "no Gateway server on this mapped port: not listened on"
            );
        }
        let mut tls = HashMap::new();
        for s in &servers {
            if let Some(key) = &s.tls
                && ports.contains_key(&s.at.port)
                && kinds.get(&s.at.port) == Some(&true)
                && !tls.contains_key(&**key)
            {
                let loaded = tls::load(&s.at, key)?;
                tls.insert((**key).clone(), loaded);
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
        let table = Arc::new(Table::compile(snapshot, servers, &listening, &|k| {
            tls.contains_key(k)
        }));
        let routes = Routes::compile(table.clone(), config.current(), &workload);
        let client = config.workload(workload.clone()).client();
        Ok(IngressGateway {
            shared: Arc::new(Shared {
                config,
                workload,
                client,
                table: ArcSwap::new(table),
                routes: ArcSwap::from_pointee(routes),
                compiling: Mutex::new(()),
                tls,
                listening,
                addrs,
            }),
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

    /// Compiles the Gateways of `snapshot` that select the gateway workload, and the
    /// VirtualServices bound to them, and swaps them in: requests that start afterwards
    /// are answered by their virtual hosts. Call it after [`MeshConfig::update`] with
    /// the same snapshot (the VirtualServices' rules are that configuration's). Servers
    /// on ports without a listener, or with TLS settings other than those loaded at
    /// start, are skipped with a warning: listeners and certificates are fixed at start.
    /// A snapshot already in place is not compiled again.
    pub fn update(&self, snapshot: &Snapshot) {
        if self.shared.table.load().version == snapshot.version() {
            return;
        }
        let servers = table::servers(snapshot, &self.shared.workload);
        let table = Table::compile(snapshot, servers, &self.shared.listening, &|k| {
            self.shared.tls.contains_key(k)
        });
        self.shared.table.store(Arc::new(table));
        // Build the virtual hosts now rather than on the first request.
        self.shared.routes();
    }

    /// The version of the snapshot whose Gateways are in place.
    pub fn version(&self) -> u64 {
        self.shared.table.load().version
    }

    /// Serves every listener until `shutdown` completes, then lets the connections in
    /// progress finish their requests. Plaintext ports use [`crate::server::serve`];
    /// TLS ports the same over rustls. Dropping the future stops the listeners.
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
                tasks.spawn(tls::serve_tls(listener, shared, port, until));
            } else {
                let app = GatewayService::new(shared, port, None);
                tasks.spawn(crate::server::serve(listener, app, until));
            }
        }
        shutdown.await;
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
