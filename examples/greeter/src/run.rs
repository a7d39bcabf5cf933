//! Starting the greeter: its versions, as the configuration's WorkloadEntries say, in one
//! process with one mesh runtime.
//!
//! The workloads are the WorkloadEntries labelled `app: greeter`; each gets its own
//! `Mesh` (labels, service account, a certificate from the in-process CA), serves a
//! [`GreeterService`] of its `version` label behind its inbound policies, and listens on
//! the address its WorkloadEntry gives (port `grpc`). Callers are other workloads of the
//! same runtime ([`Running::client`]). Tests pass pre-bound listeners (ephemeral ports):
//! the configuration is then read with those WorkloadEntries' ports rewritten.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::model::AnyResource;
use mesh_config::{ConfigSet, Snapshot};
use mesh_tower::identity::{CertificateAuthority, Identities};
use mesh_tower::{Mesh, MeshClient, MeshRuntime, Workload};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::GreeterClient;
use crate::server::GreeterServer;
use crate::service::GreeterService;

/// The label that picks the greeter's WorkloadEntries.
pub const APP: &str = "greeter";
/// The name of the WorkloadEntries' port.
pub const PORT_NAME: &str = "grpc";

/// How to start the greeter.
#[derive(Debug)]
pub struct Options {
    /// The configuration directory (Istio YAML).
    pub config_dir: PathBuf,
    /// Listeners already bound for some workloads (by WorkloadEntry name): their
    /// WorkloadEntries' `grpc` port is rewritten to the listener's. The others bind the
    /// address their WorkloadEntry gives.
    pub listeners: HashMap<String, std::net::TcpListener>,
    /// The lifetime of the workload certificates (Istio's default, 24 h; renewed at half
    /// of it).
    pub cert_lifetime: std::time::Duration,
}

impl Options {
    /// The defaults for `config_dir`.
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Options {
            config_dir: config_dir.into(),
            listeners: HashMap::new(),
            cert_lifetime: mesh_tower::identity::DEFAULT_WORKLOAD_LIFETIME,
        }
    }
}

/// Why the greeter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration could not be read.
    #[error("{0}")]
    Load(#[from] mesh_config::load::LoadError),
    /// The configuration has errors (the rendered diagnostics).
    #[error("the configuration in {dir} has errors; nothing started\n{diagnostics}")]
    Invalid {
        /// The directory.
        dir: String,
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
    /// The in-process CA could not be made.
    #[error("certificate authority: {0}")]
    Identity(#[from] mesh_tower::identity::IdentityError),
}

/// One greeter workload found in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The WorkloadEntry's name (`greeter-v1`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `version` label.
    pub version: String,
    /// Its service account.
    pub service_account: String,
    /// Where it listens.
    pub addr: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
}

/// The greeter workloads of `snapshot`: WorkloadEntries labelled `app: greeter`,
/// listening on their `grpc` port, by name.
pub fn workloads(snapshot: &Snapshot) -> Result<Vec<WorkloadSpec>, StartError> {
    let mut out = Vec::new();
    for r in snapshot.resources() {
        let AnyResource::WorkloadEntry(we) = r else {
            continue;
        };
        if we.spec.labels.get("app").map(String::as_str) != Some(APP) {
            continue;
        }
        let name = we.meta.name.clone();
        let port = we
            .spec
            .ports
            .get(PORT_NAME)
            .copied()
            .ok_or_else(|| StartError::Workload {
                name: name.clone(),
                reason: format!("has no `{PORT_NAME}` port in `ports`"),
            })?;
        let address = &we.spec.address;
        out.push(WorkloadSpec {
            name,
            namespace: r.namespace().to_string(),
            version: we.spec.labels.get("version").cloned().unwrap_or_default(),
            service_account: we
                .spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            addr: if address.contains(':') {
                format!("[{address}]:{port}")
            } else {
                format!("{address}:{port}")
            },
            labels: we.spec.labels.clone(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Loads and checks the YAML files of `dir`, with the `grpc` port of the WorkloadEntries
/// named in `ports` rewritten (see [`with_ports`]).
pub fn load(dir: &Path, ports: &HashMap<String, u16>) -> Result<Snapshot, StartError> {
    let mut set = ConfigSet::new();
    for path in mesh_config::load::yaml_files(dir)? {
        let text =
            std::fs::read_to_string(&path).map_err(|source| mesh_config::load::LoadError::Io {
                path: path.clone(),
                source,
            })?;
        set.add_str(&path.display().to_string(), &with_ports(&text, ports));
    }
    let checked = set.check();
    let diagnostics = mesh_config::diag::render(
        &checked.diagnostics,
        mesh_config::diag::RenderOptions::default(),
    );
    match checked.snapshot {
        Some(s) => {
            if !diagnostics.is_empty() {
                tracing::warn!("{diagnostics}");
            }
            Ok(s)
        }
        None => Err(StartError::Invalid {
            dir: dir.display().to_string(),
            diagnostics,
        }),
    }
}

/// Rewrites, in each YAML document of `yaml` that is a WorkloadEntry named in `ports`,
/// the line `grpc: N` (block style, under `spec.ports`) to the port given.
pub fn with_ports(yaml: &str, ports: &HashMap<String, u16>) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut document: Vec<&str> = Vec::new();
    let flush = |document: &mut Vec<&str>, out: &mut String| {
        let is_entry = document
            .iter()
            .any(|l| l.trim_end() == "kind: WorkloadEntry");
        let port = document
            .iter()
            .filter(|l| l.starts_with("  name:"))
            .find_map(|l| ports.get(l.trim_start().trim_start_matches("name:").trim()));
        for line in document.drain(..) {
            let t = line.trim_start();
            match port {
                Some(port) if is_entry && t.starts_with("grpc:") => {
                    let indent = &line[..line.len() - t.len()];
                    out.push_str(&format!("{indent}{PORT_NAME}: {port}\n"));
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    };
    for line in yaml.lines() {
        if line.starts_with("---") {
            flush(&mut document, &mut out);
        }
        document.push(line);
    }
    flush(&mut document, &mut out);
    out
}

/// One greeter workload, running.
#[derive(Debug)]
pub struct RunningWorkload {
    /// What the registry says of it.
    pub spec: WorkloadSpec,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its application.
    pub greeter: Arc<GreeterService>,
}

/// The greeter, running.
#[derive(Debug)]
pub struct Running {
    /// The mesh runtime of the process.
    pub runtime: MeshRuntime,
    /// The greeter's workloads.
    pub workloads: Vec<RunningWorkload>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The greeter of version `version` (`v1`), if one runs.
    pub fn greeter(&self, version: &str) -> Option<&Arc<GreeterService>> {
        self.workloads
            .iter()
            .find(|w| w.spec.version == version)
            .map(|w| &w.greeter)
    }

    /// The handle of a calling workload of namespace `default` whose service account (and
    /// name, and `app` label) is `service_account`; its identity comes from the same CA.
    pub fn workload(&self, service_account: &str) -> Mesh {
        self.runtime.workload(
            Workload::new(service_account, "default")
                .labels([("app", service_account)])
                .service_account(service_account),
        )
    }

    /// A greeter client calling as [`workload`](Self::workload)`(service_account)`.
    pub fn client(&self, service_account: &str) -> GreeterClient<MeshClient> {
        GreeterClient::over_mesh(&self.workload(service_account))
    }

    /// Stops accepting, lets calls in progress finish, and returns.
    pub async fn shutdown(self) {
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

/// Starts the greeter's workloads; returns once they all listen.
pub async fn start(mut opts: Options) -> Result<Running, StartError> {
    let mut ports = HashMap::new();
    for (name, l) in &opts.listeners {
        let port = l
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: "(pre-bound)".into(),
                what: name.clone(),
                source,
            })?
            .port();
        ports.insert(name.clone(), port);
    }
    let snapshot = load(&opts.config_dir, &ports)?;
    let runtime = MeshRuntime::from_snapshot(&snapshot);
    // Every workload of the runtime (the greeters and their callers) gets its SPIFFE
    // identity from this CA: the greeters prove `greeter`, a caller its own account.
    let ca = CertificateAuthority::new(&snapshot.mesh().trust_domain)?
        .with_workload_lifetime(opts.cert_lifetime);
    runtime.set_identities(Identities::Ca(Arc::new(ca)));

    let (shutdown, _) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut running = Vec::new();
    for spec in workloads(&snapshot)? {
        let listener = bind(&mut opts.listeners, &spec.name, &spec.addr)?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: spec.addr.clone(),
            what: spec.name.clone(),
            source,
        })?;
        let mesh = runtime.workload(
            Workload::new(spec.name.clone(), spec.namespace.clone())
                .labels(spec.labels.clone())
                .service_account(spec.service_account.clone()),
        );
        let greeter = Arc::new(GreeterService::new(spec.version.clone()));
        // The transport (mutual TLS, HTTP/2) is the mesh's; the workload's
        // AuthorizationPolicies come before the gRPC service, whose request messages
        // are counted on their way (`istio_request_messages_total`).
        let app = tower::ServiceBuilder::new()
            .layer(mesh.inbound())
            .layer(mesh_tower::inbound::GrpcMessagesLayer)
            .service(GreeterServer::from_arc(greeter.clone()));
        let mut stop = shutdown.subscribe();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let name = spec.name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = mesh.serve_with_shutdown(listener, app, stopped).await {
                tracing::error!(workload = %name, error = %e, "greeter server failed");
            }
        }));
        running.push(RunningWorkload {
            spec,
            addr,
            greeter,
        });
    }
    if running.is_empty() {
        return Err(StartError::Workload {
            name: APP.into(),
            reason: format!(
                "no WorkloadEntry labelled app: {APP} in {}",
                opts.config_dir.display()
            ),
        });
    }
    Ok(Running {
        runtime,
        workloads: running,
        shutdown,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_ports_rewrites_only_the_named_workload_entries() {
        let yaml = "\
kind: ServiceEntry
metadata:
  name: greeter-v1
spec:
  ports:
  - {number: 50051, name: grpc, protocol: GRPC}
---
kind: WorkloadEntry
metadata:
  name: greeter-v1
spec:
  ports:
    grpc: 50061
---
kind: WorkloadEntry
metadata:
  name: greeter-v2
spec:
  ports:
    grpc: 50062
";
        let ports = HashMap::from([("greeter-v1".to_string(), 4242)]);
        let out = with_ports(yaml, &ports);
        assert!(out.contains("    grpc: 4242\n"), "{out}");
        assert!(out.contains("    grpc: 50062\n"), "{out}");
        assert!(out.contains("name: grpc, protocol: GRPC"), "{out}");
        assert_eq!(out.lines().count(), yaml.lines().count());
    }
}
