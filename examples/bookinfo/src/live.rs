//! Live configuration: the source (a directory or etcd) is watched, a valid change is
//! swapped in, an invalid one is rejected with its diagnostics while the last good
//! configuration stays in force — and the admin endpoint shows which is which.
//!
//! Routing reads the configuration through an `ArcSwap`, so a swap never drops or
//! blocks a request: requests in flight finish on the configuration they started with.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mesh_config::Snapshot;
use mesh_config::diag::{Diagnostic, RenderOptions, render};
use mesh_tower::MeshRuntime;
use mesh_tower::source::Offered;
use mesh_tower::telemetry::graph::MeshGraph;
use serde_json::{Value, json};

use crate::services::Json;

/// A rejected update.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// When.
    pub at: SystemTime,
    /// Its diagnostics (errors and warnings).
    pub diagnostics: Vec<Diagnostic>,
    /// A failure to read the directory, when that was the problem.
    pub error: Option<String>,
}

struct State_ {
    current: Snapshot,
    applied_at: SystemTime,
    rejected: Option<Rejected>,
}

/// The configuration of the running demo.
pub struct Live {
    /// Where the configuration comes from (`directory ...`, `etcd at ...`).
    source: String,
    runtime: MeshRuntime,
    state: RwLock<State_>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("source", &self.source)
            .finish()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new configuration is in force (its snapshot version).
    Applied(u64),
    /// It was rejected; the previous one stays.
    Rejected,
}

impl Live {
    /// The live configuration from `source` (its description), starting from `snapshot`.
    pub fn new(source: impl Into<String>, runtime: MeshRuntime, snapshot: Snapshot) -> Self {
        Live {
            source: source.into(),
            runtime,
            state: RwLock::new(State_ {
                current: snapshot,
                applied_at: SystemTime::now(),
                rejected: None,
            }),
        }
    }

    /// Where the configuration comes from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The runtime the demo's workloads and gateway run on.
    pub fn runtime(&self) -> &MeshRuntime {
        &self.runtime
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Snapshot {
        self.read(|s| s.current.clone())
    }

    /// The last rejected update, if any.
    pub fn rejected(&self) -> Option<Rejected> {
        self.read(|s| s.rejected.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&State_) -> T) -> T {
        let guard = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    fn write(&self, f: impl FnOnce(&mut State_)) {
        let mut guard = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard);
    }

    /// Records what became of an update (applied by the source's driver, or rejected),
    /// and says so on standard error.
    pub fn record(&self, offered: &Offered) -> Reloaded {
        match offered {
            Offered::Applied(snapshot) => {
                // (Not the resources' count: after an endpoint change they are listed
                // only when asked for, and that is proportional to the whole mesh.)
                eprintln!(
                    "bookinfo: configuration applied (version {})",
                    snapshot.version()
                );
                let version = snapshot.version();
                let snapshot = snapshot.clone();
                self.write(|s| {
                    s.current = snapshot;
                    s.applied_at = SystemTime::now();
                });
                Reloaded::Applied(version)
            }
            Offered::Rejected { diagnostics, error } => {
                match error {
                    Some(e) => eprintln!("bookinfo: configuration update rejected: {e}"),
                    None => {
                        eprint!("{}", render(diagnostics, RenderOptions::default()));
                        eprintln!(
                            "bookinfo: configuration update rejected; the previous configuration stays in force"
                        );
                    }
                }
                let rejected = Rejected {
                    at: SystemTime::now(),
                    diagnostics: diagnostics.clone(),
                    error: error.clone(),
                };
                self.write(|s| s.rejected = Some(rejected));
                Reloaded::Rejected
            }
        }
    }

    /// `/certs`: each workload's identity: its SPIFFE ID, the validity of the certificate in force,
    /// and how many times it was renewed.
    pub fn certs(&self) -> Value {
        let now = SystemTime::now();
        let workloads: Vec<Value> = self
            .runtime
            .workloads()
            .iter()
            .map(|(w, id)| {
                let cert = id.as_ref().map(|id| {
                    let c = id.current();
                    json!({
                        "spiffeId": c.spiffe_id().as_str(),
                        "notBefore": mesh_config::calendar::rfc3339(c.not_before()),
                        "notAfter": mesh_config::calendar::rfc3339(c.not_after()),
                        "expiresInSeconds": c.not_after().duration_since(now).map_or(0, |d| d.as_secs()),
                        "roots": c.roots(),
                        "renewals": id.renewals(),
                    })
                });
                json!({
                    "workload": w.name,
                    "namespace": w.namespace,
                    "serviceAccount": w.service_account,
                    "certificate": cert,
                })
            })
            .collect();
        json!({ "workloads": workloads })
    }

    /// `/config_dump`: the resources in force and the last rejected update.
    pub fn dump(&self) -> Value {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.read(|s| {
            let resources: Vec<Value> = s
                .current
                .resources()
                .iter()
                .map(|r| {
                    let loc = r.origin().location();
                    json!({
                        "kind": r.kind().as_str(),
                        "apiVersion": r.api_version(),
                        "namespace": r.namespace(),
                        "name": r.name(),
                        "file": loc.source.name(),
                        "line": loc.span.start.line,
                    })
                })
                .collect();
            json!({
                "source": self.source,
                "version": s.current.version(),
                "appliedAt": secs(s.applied_at),
                "resources": resources,
                "lastRejected": s.rejected.as_ref().map(|r| json!({
                    "at": secs(r.at),
                    "error": r.error,
                    "diagnostics": r.diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
                })),
            })
        })
    }
}

/// The admin endpoint: `/healthz`, `/config_dump`, `/certs`, `/clusters`,
/// `/stats/prometheus` and the mesh graph (`/graph`, its data at `/graph/data`). It
/// answers only requests addressed to loopback or to `bound`, its own address (see
/// [`admin_host_allowed`]).
pub fn admin(live: Arc<Live>, bound: SocketAddr) -> Router {
    let graph = Arc::new(MeshGraph::new(live.runtime.metrics().clone()));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/stats/prometheus", get(prometheus))
        .route("/graph", get(graph_page))
        .route("/graph/data", get(move || graph_data(graph.clone())))
        .route("/config_dump", get(config_dump))
        .route("/certs", get(certs))
        .route("/clusters", get(clusters))
        .with_state(live)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| {
                    req.headers()
                        .get(axum::http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                });
                // The address the request arrived at (the listener may be bound to
                // 0.0.0.0): its own address too.
                let local = req
                    .extensions()
                    .get::<mesh_tower::transport::accept::LocalAddr>()
                    .map_or(bound, |l| l.0);
                let host = host.unwrap_or_default();
                if admin_host_allowed(&host, bound) || admin_host_allowed(&host, local) {
                    next.run(req).await
                } else {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        format!("the admin endpoint answers only requests addressed to loopback or to {local}, not to `{host}`\n"),
                    )
                        .into_response()
                }
            },
        ))
}

/// Whether the admin endpoint answers a request whose `Host` (or `:authority`) is
/// `host`: a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`) or the address
/// it is bound to, with any port. Any other name is refused, so that a web page cannot
/// read `/config_dump` through DNS rebinding (a name of the attacker's resolving to
/// 127.0.0.1).
pub fn admin_host_allowed(host: &str, bound: SocketAddr) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((a, "")) => a,
            Some((a, rest)) if rest.strip_prefix(':').is_some_and(digits) => a,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && digits(port) => h,
            _ => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || (ip == bound.ip() && !ip.is_unspecified()),
        Err(_) => false,
    }
}

async fn config_dump(State(live): State<Arc<Live>>) -> Response {
    Json(live.dump()).into_response()
}

/// Istio's standard metrics of every workload and the gateway, in Prometheus' text
/// format, at the path Istio's proxies serve them on.
async fn prometheus(State(live): State<Arc<Live>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        live.runtime.metrics().prometheus_text(),
    )
        .into_response()
}

/// The live mesh graph: Kiali's versioned-app graph in spirit, drawn from the metrics.
async fn graph_page() -> Response {
    axum::response::Html(MeshGraph::PAGE).into_response()
}

/// The mesh graph's nodes and edges, with their numbers over the last minute.
async fn graph_data(graph: Arc<MeshGraph>) -> Response {
    Json(serde_json::to_value(graph.current()).unwrap_or_default()).into_response()
}

/// Each workload's identity and certificate, as Envoy's admin `/certs` shows them.
async fn certs(State(live): State<Arc<Live>>) -> Response {
    Json(live.certs()).into_response()
}

/// Every cluster's endpoints — requests in flight, connections, outlier detection — as
/// Envoy's admin `/clusters` shows them: text lines, or JSON with `?format=json`.
async fn clusters(State(live): State<Arc<Live>>, RawQuery(query): RawQuery) -> Response {
    let clusters = live.runtime.clusters();
    let json = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    if json {
        Json(clusters.json()).into_response()
    } else {
        clusters.text().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::admin_host_allowed;

    #[test]
    fn the_admin_endpoint_answers_loopback_and_its_own_address_only() {
        let local = "127.0.0.1:15000".parse().unwrap();
        let on_lan = "192.168.1.20:15000".parse().unwrap();
        let any = "0.0.0.0:15000".parse().unwrap();
        // (Host, bound address, answered?)
        let table = [
            ("localhost", local, true),
            ("localhost:15000", local, true),
            ("LocalHost.", local, true),
            ("127.0.0.1:15000", local, true),
            ("127.1.2.3", local, true),
            ("[::1]:15000", local, true),
            ("[::1]", local, true),
            ("192.168.1.20:15000", on_lan, true),
            ("192.168.1.20", local, false),
            ("0.0.0.0:15000", any, false),
            ("rebind.attacker.example", local, false),
            ("localhost.attacker.example", local, false),
            ("127.0.0.1.nip.io", local, false),
            ("", local, false),
            ("[::1]x", local, false),
            ("[::1]:", local, false),
            ("localhost:", local, false),
            ("localhost@evil.example", local, false),
        ];
        for (host, bound, want) in table {
            assert_eq!(admin_host_allowed(host, bound), want, "{host} at {bound}");
        }
    }
}
