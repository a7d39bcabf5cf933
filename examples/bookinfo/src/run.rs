//! Starting Bookinfo: the workloads of the registry, the ingress gateway, the admin
//! endpoint and the configuration watcher, in one process.
//!
//! The workloads are the configuration's WorkloadEntries whose `app` label names a
//! Bookinfo service; each gets its own `Mesh` (its labels and service account) and
//! listens on the address its WorkloadEntry gives, so the registry is the only place that
//! knows where anything runs. Tests pass pre-bound listeners instead (ephemeral ports) and
//! a time scale that shortens the services' own timeouts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::model::AnyResource;
use mesh_config::{ConfigSet, Snapshot};
use mesh_tower::etcd::registration::Registration;
use mesh_tower::gateway::IngressGateway;
use mesh_tower::identity::{CertificateAuthority, Identities, IdentityTree};
use mesh_tower::source::{ConfigSource, Delivery, DirSource, EtcdSource, SourceError};
use mesh_tower::{MeshRuntime, Workload};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::live::Live;
use crate::services::{self, Caller, ReviewsVersion};

/// Where Bookinfo's configuration is kept in etcd (instead of a directory).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The members' URLs (`http://127.0.0.1:2379`, comma-separated).
    pub url: String,
    /// The key prefix (`/mesh`).
    pub prefix: String,
    /// Where the last good configuration is cached, to start from when etcd is down.
    pub cache: Option<PathBuf>,
    /// Each workload registers itself with a lease of this TTL: how long the endpoint of
    /// a process that died stays in the mesh.
    pub lease_ttl: std::time::Duration,
    /// How long a clean shutdown waits, between deregistering and closing the
    /// listeners, for the other processes to stop sending new requests.
    pub deregister_grace: std::time::Duration,
}

impl EtcdConfig {
    /// `url` under `prefix`, with the default lease TTL and no cache.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        EtcdConfig {
            url: url.into(),
            prefix: prefix.into(),
            cache: None,
            lease_ttl: mesh_tower::etcd::registration::DEFAULT_TTL,
            deregister_grace: std::time::Duration::from_secs(1),
        }
    }
}

/// How to start Bookinfo.
#[derive(Debug)]
pub struct Options {
    /// The configuration directory (Istio YAML), watched for changes (unless `etcd` is
    /// set).
    pub config_dir: PathBuf,
    /// The configuration in etcd instead of `config_dir`.
    pub etcd: Option<EtcdConfig>,
    /// Where the gateway's port 80 listens.
    pub ingress: SocketAddr,
    /// Run the ingress gateway (a process of workloads only runs none).
    pub gateway: bool,
    /// The workloads to run, by WorkloadEntry name (`reviews-v2`) or WorkloadGroup name
    /// (an instance of the group at `instance_address`); empty: all six.
    pub only: Vec<String>,
    /// The address an instance of a WorkloadGroup listens on and registers (its port is
    /// the template's `http` port, or a free one when that is 0).
    pub instance_address: std::net::IpAddr,
    /// Run no workload at all (the gateway alone).
    pub none: bool,
    /// Where the admin endpoint listens (`/healthz`, `/config_dump`).
    pub admin: SocketAddr,
    /// Multiplies the services' own timeouts (1.0 for the demo; tests use 0.1).
    pub time_scale: f64,
    /// Listeners already bound for some workloads (by WorkloadEntry name); the others
    /// bind the address their WorkloadEntry gives.
    pub listeners: HashMap<String, std::net::TcpListener>,
    /// Watch the configuration directory and apply changes.
    pub watch: bool,
    /// Read the workloads' certificates from `<certs>/<namespace>/<service account>/`
    /// (`meshctl ca issue` writes them) instead of issuing them from an in-process CA:
    /// what processes that run apart need, to share one root.
    pub certs: Option<PathBuf>,
    /// The lifetime of the workload certificates the in-process CA issues (Istio's
    /// default, 24 h, for the demo; renewed at half of it).
    pub cert_lifetime: std::time::Duration,
    /// Where access log entries go (`None`: standard output). Which requests are
    /// logged is the configuration's choice (`config/telemetry.yaml`).
    pub access_log: Option<mesh_tower::telemetry::AccessLogSink>,
    /// Where spans and metrics are exported over OTLP (`None`: nowhere); the binary reads
    /// it from the standard `OTEL_EXPORTER_OTLP_*` variables.
    pub otlp: Option<mesh_tower::telemetry::otlp::OtlpEnv>,
}

impl Options {
    /// The demo's defaults for `config_dir`.
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Options {
            config_dir: config_dir.into(),
            etcd: None,
            certs: None,
            ingress: SocketAddr::from(([127, 0, 0, 1], 8080)),
            gateway: true,
            only: Vec::new(),
            instance_address: std::net::IpAddr::from([127, 0, 0, 1]),
            none: false,
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            time_scale: 1.0,
            listeners: HashMap::new(),
            watch: true,
            cert_lifetime: mesh_tower::identity::DEFAULT_WORKLOAD_LIFETIME,
            access_log: None,
            otlp: None,
        }
    }
}

/// Why Bookinfo could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration could not be read.
    #[error("{0}")]
    Load(#[from] mesh_config::load::LoadError),
    /// The configuration has errors (the rendered diagnostics).
    #[error("the configuration in {source_name} has errors; nothing started\n{diagnostics}")]
    Invalid {
        /// The source (`directory ...`, `etcd at ...`).
        source_name: String,
        /// The diagnostics, rendered.
        diagnostics: String,
    },
    /// A workload's WorkloadEntry is unusable.
    #[error("workload {name}: {reason}")]
    Workload {
        /// The WorkloadEntry.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An OTLP exporter could not start.
    #[error("OTLP export: {0}")]
    Otlp(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Which listener.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The ingress gateway could not start.
    #[error("ingress gateway: {0}")]
    Gateway(#[from] mesh_tower::gateway::GatewayError),
    /// The in-process CA could not be made.
    #[error("certificate authority: {0}")]
    Identity(#[from] mesh_tower::identity::IdentityError),
    /// The configuration source could not be read or watched.
    #[error("{0}")]
    Source(#[from] mesh_tower::source::SourceError),
}

/// One Bookinfo workload found in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The WorkloadEntry's name (`reviews-v2`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Service account.
    pub service_account: String,
    /// Where it listens.
    pub addr: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
    /// The WorkloadGroup it is an instance of (it registers the WorkloadEntry the
    /// group's template makes), if any.
    pub group: Option<String>,
}

/// The Bookinfo apps.
const APPS: &[&str] = &["productpage", "details", "reviews", "ratings"];

/// The Bookinfo workloads of `snapshot`: WorkloadEntries whose `app` label is one of the
/// four services, listening on their `http` port.
pub fn workloads(snapshot: &Snapshot) -> Result<Vec<WorkloadSpec>, StartError> {
    let mut out = Vec::new();
    for r in snapshot.resources() {
        let AnyResource::WorkloadEntry(we) = r else {
            continue;
        };
        let Some(app) = we.spec.labels.get("app") else {
            continue;
        };
        if !APPS.contains(&app.as_str()) {
            continue;
        }
        let name = we.meta.name.clone();
        let port = we
            .spec
            .ports
            .get("http")
            .copied()
            .ok_or_else(|| StartError::Workload {
                name: name.clone(),
                reason: "has no `http` port in `ports`".into(),
            })?;
        out.push(WorkloadSpec {
            name,
            namespace: r.namespace().to_string(),
            app: app.clone(),
            version: we.spec.labels.get("version").cloned().unwrap_or_default(),
            service_account: we
                .spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            addr: mesh_core::cluster::host_port(&we.spec.address, port),
            labels: we.spec.labels.clone(),
            group: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The Bookinfo workload an instance of WorkloadGroup `group` at `address` runs: named
/// as the instance registers itself (`<group>-<address>`), labelled with the template's
/// labels overlaid by the metadata's (their `app` must be a Bookinfo service), listening
/// on the template's `http` port (0: a free one).
pub fn group_instance(
    group: &mesh_config::model::Resource<mesh_config::model::WorkloadGroup>,
    address: std::net::IpAddr,
) -> Result<WorkloadSpec, StartError> {
    let unusable = |reason: &str| StartError::Workload {
        name: group.name().to_string(),
        reason: reason.to_string(),
    };
    let template = group
        .spec
        .template
        .as_ref()
        .ok_or_else(|| unusable("the WorkloadGroup has no template"))?;
    let mut labels = template.labels.clone();
    if let Some(meta) = &group.spec.metadata {
        labels.extend(meta.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let app = labels
        .get("app")
        .filter(|a| APPS.contains(&a.as_str()))
        .cloned()
        .ok_or_else(|| unusable("its `app` label is none of Bookinfo's services"))?;
    let port = template
        .ports
        .get("http")
        .copied()
        .ok_or_else(|| unusable("its template has no `http` port in `ports`"))?;
    let ip = address.to_string();
    Ok(WorkloadSpec {
        name: mesh_config::registry::instance_name(group.name(), &ip, None),
        namespace: group.namespace().to_string(),
        app,
        version: labels.get("version").cloned().unwrap_or_default(),
        service_account: template
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into()),
        addr: mesh_core::cluster::host_port(&ip, port),
        labels,
        group: Some(group.name().to_string()),
    })
}

/// Loads and checks `dir`.
pub fn load(dir: &Path) -> Result<Snapshot, StartError> {
    let set = ConfigSet::load(&[dir])?;
    checked(set, &format!("directory {}", dir.display()))
}

/// Checks a configuration `source_name` delivered: its snapshot, its warnings printed.
fn checked(set: ConfigSet, source_name: &str) -> Result<Snapshot, StartError> {
    let checked = set.check();
    match checked.snapshot {
        Some(s) => {
            let warnings = mesh_config::diag::render(
                &checked.diagnostics,
                mesh_config::diag::RenderOptions::default(),
            );
            if !warnings.is_empty() {
                eprint!("{warnings}");
            }
            Ok(s)
        }
        None => Err(StartError::Invalid {
            source_name: source_name.to_string(),
            diagnostics: mesh_config::diag::render(
                &checked.diagnostics,
                mesh_config::diag::RenderOptions::default(),
            ),
        }),
    }
}

/// Bookinfo, running.
pub struct Running {
    /// Where the ingress gateway's port 80 listens (`0.0.0.0:0` when the process runs no
    /// gateway).
    pub ingress: SocketAddr,
    /// Where the admin endpoint listens.
    pub admin: SocketAddr,
    /// The workloads and their addresses.
    pub workloads: Vec<(WorkloadSpec, SocketAddr)>,
    /// The live configuration.
    pub live: Arc<Live>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The workloads' registrations in etcd, and how long to wait after deregistering.
    registrations: Vec<Registration>,
    deregister_grace: std::time::Duration,
    /// Exports the metrics over OTLP while Bookinfo runs, when configured.
    _metrics_exporter: Option<mesh_tower::telemetry::otlp::MetricsExporter>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("ingress", &self.ingress)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The product page's URL.
    pub fn product_page(&self) -> String {
        format!("http://{}/productpage", self.ingress)
    }

    /// Stops accepting, lets requests in progress finish, and returns.
    pub async fn shutdown(self) {
        // Deregistered first: the other processes stop sending new requests here, then
        // the listeners drain what is in flight.
        if !self.registrations.is_empty() {
            // All at once, and bounded: with etcd away, the leases expire by themselves.
            // The process keeps reaching its own workloads while they drain.
            let mut all = tokio::task::JoinSet::new();
            for r in self.registrations {
                all.spawn(r.deregister());
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all.join_all()).await;
            tokio::time::sleep(self.deregister_grace).await;
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn bind(
    listeners: &mut HashMap<String, std::net::TcpListener>,
    name: &str,
    addr: &str,
) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        addr: addr.to_string(),
        what: name.to_string(),
        source,
    };
    let std = match listeners.remove(name) {
        Some(l) => l,
        None => std::net::TcpListener::bind(addr).map_err(err)?,
    };
    std.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std).map_err(err)
}

/// Copies the configuration files of `src` (not recursively) into `dest`, binding a
/// listener on an ephemeral 127.0.0.1 port for every Bookinfo WorkloadEntry and rewriting
/// its `http` port to match; returns the listeners, for [`Options::listeners`]. Used to
/// run several Bookinfos side by side (the end-to-end tests do).
pub fn copy_with_ephemeral_ports(
    src: &Path,
    dest: &Path,
) -> Result<HashMap<String, std::net::TcpListener>, StartError> {
    let snapshot = load(src)?;
    let mut listeners = HashMap::new();
    let mut ports = HashMap::new();
    for w in workloads(&snapshot)? {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| StartError::Bind {
            addr: "127.0.0.1:0".into(),
            what: w.name.clone(),
            source,
        })?;
        let port = l
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: "127.0.0.1:0".into(),
                what: w.name.clone(),
                source,
            })?
            .port();
        ports.insert(w.name.clone(), port);
        listeners.insert(w.name, l);
    }
    let io = |e: std::io::Error| {
        StartError::Load(mesh_config::load::LoadError::Io {
            path: dest.to_path_buf(),
            source: e,
        })
    };
    for entry in std::fs::read_dir(src).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        std::fs::write(dest.join(name), with_ports(&text, &ports)).map_err(io)?;
    }
    Ok(listeners)
}

/// Rewrites the `http:` port of each WorkloadEntry of `yaml` named in `ports` (a line
/// `http: N` under `ports:` in a document whose `metadata.name` is the workload).
fn with_ports(yaml: &str, ports: &HashMap<String, u16>) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut current: Option<&str> = None;
    for line in yaml.lines() {
        let t = line.trim_start();
        if line.starts_with("---") {
            current = None;
        }
        if line.starts_with("  name:")
            && let Some(name) = t.strip_prefix("name:")
        {
            current = ports.get_key_value(name.trim()).map(|(k, _)| k.as_str());
        }
        match (t.strip_prefix("http:"), current) {
            (Some(_), Some(name)) => {
                let indent = &line[..line.len() - t.len()];
                out.push_str(&format!("{indent}http: {}\n", ports[name]));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The gateway workload Istio's samples select (`istio: ingressgateway`).
pub fn gateway_workload() -> Workload {
    Workload::new("istio-ingressgateway", "istio-system")
        .labels([("istio", "ingressgateway"), ("app", "istio-ingressgateway")])
        .service_account("istio-ingressgateway-service-account")
}

/// The configuration source of `opts`: a directory or etcd.
enum Source {
    Dir(DirSource),
    Etcd(Box<EtcdSource>),
}

impl ConfigSource for Source {
    fn describe(&self) -> String {
        match self {
            Source::Dir(s) => s.describe(),
            Source::Etcd(s) => s.describe(),
        }
    }

    async fn load(&mut self) -> Result<ConfigSet, SourceError> {
        match self {
            Source::Dir(s) => s.load().await,
            Source::Etcd(s) => s.load().await,
        }
    }

    async fn next(&mut self) -> Result<Delivery, SourceError> {
        match self {
            Source::Dir(s) => s.next().await,
            Source::Etcd(s) => s.next().await,
        }
    }

    fn accepted(&mut self) {
        match self {
            Source::Dir(s) => s.accepted(),
            Source::Etcd(s) => s.accepted(),
        }
    }
}

impl Source {
    /// The configuration as declared, when it differs from what the source delivers
    /// (etcd: static WorkloadEntries a registration claimed are left out of the mesh,
    /// but still say how to run their workloads).
    fn declared(&self) -> Option<ConfigSet> {
        match self {
            Source::Dir(_) => None,
            Source::Etcd(s) => Some(s.declared()),
        }
    }

    fn etcd_client(&self) -> Option<mesh_tower::etcd::Etcd> {
        match self {
            Source::Dir(_) => None,
            Source::Etcd(s) => Some(s.etcd().clone()),
        }
    }

    fn local_registrations(&self) -> Option<mesh_tower::etcd::registration::LocalRegistrations> {
        match self {
            Source::Dir(_) => None,
            Source::Etcd(s) => Some(s.local_registrations()),
        }
    }

    fn of(opts: &Options) -> Result<Source, StartError> {
        Ok(match &opts.etcd {
            None if opts.watch => Source::Dir(DirSource::new(&opts.config_dir)),
            None => Source::Dir(DirSource::unwatched(&opts.config_dir)),
            Some(e) => {
                let etcd = mesh_tower::etcd::Etcd::new(&e.url)
                    .map_err(|e| StartError::Source(SourceError::Etcd(e)))?;
                let source = EtcdSource::new(etcd, &e.prefix);
                Source::Etcd(Box::new(match &e.cache {
                    Some(path) => source.with_cache(path),
                    None => source,
                }))
            }
        })
    }
}

/// Starts everything; returns once all listeners are bound.
pub async fn start(mut opts: Options) -> Result<Running, StartError> {
    let mut source = Source::of(&opts)?;
    let source_name = source.describe();
    let set = source.load().await?;
    let snapshot = checked(set, &source_name)?;
    // The first configuration is in force too: cached (etcd) like every later one.
    source.accepted();
    let runtime = MeshRuntime::from_snapshot(&snapshot);
    runtime.set_access_log_sink(opts.access_log.take());
    let metrics_exporter = match opts.otlp.take() {
        Some(otlp) => export(&runtime, otlp)?,
        None => None,
    };
    // Secure by default, as Istio: every workload (and the ingress gateway) gets its
    // SPIFFE identity from the in-process CA, and auto mTLS secures the traffic between
    // them; PERMISSIVE (the default) still serves plaintext from outside the mesh.
    match &opts.certs {
        Some(dir) => runtime.set_identities(Identities::Tree(IdentityTree::new(dir))),
        None => {
            let ca = CertificateAuthority::new(&snapshot.mesh().trust_domain)?
                .with_workload_lifetime(opts.cert_lifetime);
            runtime.set_identities(Identities::Ca(Arc::new(ca)));
        }
    }
    let (shutdown, _) = watch::channel(false);
    let stop = |tx: &watch::Sender<bool>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    let mut running = Vec::new();
    // The workloads as declared: in etcd, a static WorkloadEntry whose workload
    // registers itself is not in the mesh while it is not registered, but says how to run
    // it all the same.
    let declared = match source.declared().map(|set| set.check().snapshot) {
        Some(Some(declared)) => declared,
        _ => snapshot.clone(),
    };
    let local = source.local_registrations();
    let registrar = source.etcd_client();
    let mut all = workloads(&declared)?;
    // A name that is no WorkloadEntry's may be a WorkloadGroup's: an instance of it runs
    // (a WorkloadEntry of the same name wins).
    for name in &opts.only {
        if all
            .iter()
            .any(|w| &w.name == name || w.group.as_ref() == Some(name))
        {
            continue;
        }
        match declared.workload_groups().iter().find(|g| g.name() == name) {
            Some(group) => {
                if opts.etcd.is_none() {
                    return Err(StartError::Workload {
                        name: name.clone(),
                        reason: "an instance of a WorkloadGroup registers itself: it needs --etcd"
                            .into(),
                    });
                }
                all.push(group_instance(group, opts.instance_address)?);
            }
            None => {
                return Err(StartError::Workload {
                    name: name.clone(),
                    reason: format!(
                        "{source_name} has no Bookinfo WorkloadEntry or WorkloadGroup of that name (it has {})",
                        all.iter()
                            .map(|w| w.name.as_str())
                            .chain(declared.workload_groups().iter().map(|g| g.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    let chosen = all.into_iter().filter(|w| {
        !opts.none
            && (opts.only.is_empty()
                || opts.only.contains(&w.name)
                || w.group.as_ref().is_some_and(|g| opts.only.contains(g)))
    });
    for w in chosen {
        let listener = bind(&mut opts.listeners, &w.name, &w.addr)?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: w.addr.clone(),
            what: w.name.clone(),
            source,
        })?;
        let mesh = runtime.workload(
            Workload::new(w.name.clone(), w.namespace.clone())
                .labels(w.labels.clone())
                .service_account(w.service_account.clone()),
        );
        let caller = Caller {
            mesh: mesh.clone(),
            time_scale: opts.time_scale,
        };
        let app = match (w.app.as_str(), w.version.as_str()) {
            ("productpage", _) => services::productpage(caller),
            ("details", _) => services::details(),
            ("ratings", _) => services::ratings(),
            ("reviews", "v1") => services::reviews(caller, ReviewsVersion::V1, &w.name),
            ("reviews", "v2") => services::reviews(caller, ReviewsVersion::V2, &w.name),
            ("reviews", "v3") => services::reviews(caller, ReviewsVersion::V3, &w.name),
            (app, version) => {
                return Err(StartError::Workload {
                    name: w.name.clone(),
                    reason: format!("Bookinfo has no {app} {version}"),
                });
            }
        };
        let stopped = stop(&shutdown);
        // Transport per PeerAuthentication, then the workload's AuthorizationPolicies.
        let app = tower::ServiceBuilder::new()
            .layer(mesh.inbound())
            .service(app);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = mesh.serve_with_shutdown(listener, app, stopped).await {
                tracing::error!(error = %e, "workload server failed");
            }
        }));
        running.push((w, addr));
    }

    let mut ingress = SocketAddr::from(([0, 0, 0, 0], 0));
    if opts.gateway {
        let mut ports = BTreeMap::new();
        ports.insert(80u32, opts.ingress);
        let gateway = IngressGateway::bind(&runtime, gateway_workload(), &ports)?;
        ingress = gateway
            .local_addrs()
            .into_iter()
            .find(|(p, _)| *p == 80)
            .map(|(_, a)| a)
            .ok_or_else(|| StartError::Bind {
                addr: opts.ingress.to_string(),
                what: "the ingress gateway (no Gateway selecting istio=ingressgateway has a server on port 80)".into(),
                source: std::io::Error::other("no listener"),
            })?;
        let stopped = stop(&shutdown);
        tasks.push(tokio::spawn(async move {
            gateway.serve(stopped).await;
        }));
    }
    // Certificates read from files must be there for every workload: without one, a
    // workload could not speak mutual TLS to the others.
    if let Some(dir) = &opts.certs {
        for (w, identity) in runtime.workloads() {
            if identity.is_none() {
                return Err(StartError::Workload {
                    name: w.name.clone(),
                    reason: format!(
                        "no certificate under {}/{}/{} (write one with `meshctl ca issue --namespace {} --service-account {} --out ...`)",
                        dir.display(),
                        w.namespace,
                        w.service_account,
                        w.namespace,
                        w.service_account
                    ),
                });
            }
        }
    }

    let live = Arc::new(Live::new(source_name, runtime, snapshot));

    let admin_listener =
        TcpListener::bind(opts.admin)
            .await
            .map_err(|source| StartError::Bind {
                addr: opts.admin.to_string(),
                what: "the admin endpoint".into(),
                source,
            })?;
    let admin = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: opts.admin.to_string(),
            what: "the admin endpoint".into(),
            source,
        })?;
    let router = crate::live::admin(live.clone(), admin);
    let stopped = stop(&shutdown);
    tasks.push(tokio::spawn(async move {
        let _ = mesh_tower::inbound::serve_admin(admin_listener, router, stopped).await;
    }));

    if opts.watch {
        let stopped = stop(&shutdown);
        let observer = live.clone();
        let runtime = live.runtime().clone();
        tasks.push(tokio::spawn(mesh_tower::source::drive(
            source,
            runtime,
            stopped,
            move |offered| {
                observer.record(offered);
            },
        )));
    }

    // Registered last, once everything listens: a process that fails to start must not
    // be an endpoint of the mesh for a lease's time.
    let mut registrations = Vec::new();
    if let (Some(e), Some(etcd)) = (&opts.etcd, registrar) {
        for (w, addr) in &running {
            let (name, entry) = registration_entry(w, *addr, &declared);
            registrations.push(Registration::start(
                etcd.clone(),
                &e.prefix,
                &w.namespace,
                &name,
                entry,
                e.lease_ttl,
                local.clone(),
            ));
        }
    }
    Ok(Running {
        ingress,
        admin,
        workloads: running,
        live,
        shutdown,
        tasks,
        registrations,
        deregister_grace: opts
            .etcd
            .as_ref()
            .map_or(std::time::Duration::ZERO, |e| e.deregister_grace),
        _metrics_exporter: metrics_exporter,
    })
}

/// The WorkloadEntry a workload registers, its name and its text: an instance of a
/// WorkloadGroup, the one its template makes (Istio's auto-registration); else its
/// static entry's labels and service account; at the address and port it listens on.
fn registration_entry(
    w: &WorkloadSpec,
    local: SocketAddr,
    declared: &Snapshot,
) -> (String, String) {
    let ports: BTreeMap<String, u32> = [("http".to_string(), u32::from(local.port()))].into();
    if let Some(group) = w.group.as_ref().and_then(|g| {
        declared
            .workload_groups()
            .iter()
            .find(|r| r.name() == g && r.namespace() == w.namespace)
    }) && let Some(named) =
        mesh_config::registry::instance_entry(group, &local.ip().to_string(), Some(&ports))
    {
        return named;
    }
    let entry = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": w.name,
            "namespace": w.namespace,
        },
        "spec": {
            "address": local.ip().to_string(),
            "ports": { "http": local.port() },
            "labels": w.labels,
            "serviceAccount": w.service_account,
        },
    });
    (w.name.clone(), entry.to_string())
}

/// Starts the OTLP exporters `otlp` configures: spans through the runtime's span
/// exporter, the metrics registry through a periodic exporter (returned: it exports as
/// long as it is kept).
fn export(
    runtime: &MeshRuntime,
    otlp: mesh_tower::telemetry::otlp::OtlpEnv,
) -> Result<Option<mesh_tower::telemetry::otlp::MetricsExporter>, StartError> {
    use mesh_tower::telemetry::otlp::{MetricsExporter, Resource, SpanExporter};
    if let Some(traces) = otlp.traces {
        let spans =
            SpanExporter::start(traces, otlp.batch).map_err(|e| StartError::Otlp(e.to_string()))?;
        runtime.set_span_exporter(Some(spans));
    }
    otlp.metrics
        .map(|config| {
            let resource = Arc::new(Resource::new([("service.name", "bookinfo")]));
            MetricsExporter::start(
                runtime.metrics().clone(),
                resource,
                config,
                otlp.metric_reader,
            )
            .map_err(|e| StartError::Otlp(e.to_string()))
        })
        .transpose()
}
