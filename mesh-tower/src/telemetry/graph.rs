//! A live mesh graph in the spirit of Kiali's versioned-app graph: workloads per app and
//! version and the services in front of them as nodes, the traffic between them as
//! edges with its request rate, error ratio and p99 latency over the last minute, and
//! whether it travelled over mutual TLS — computed from the process's own
//! [`Metrics`], so it needs no Prometheus and no Kiali.
//!
//! **Numbers.** [`MeshGraph`] keeps a short history of [`Reading`]s (one stored per
//! [`GraphOptions::interval`], taken only when someone asks for the graph: nothing runs
//! while nobody watches, and the history never holds more than a window's worth). A
//! graph compares the reading taken now with the oldest one at most
//! [`GraphOptions::window`] old — or the newest older one when the history is shorter —
//! exactly as Prometheus' `rate` and `histogram_quantile` would over that span:
//!
//! - *rate*: requests per second;
//! - *error ratio*: Kiali's definition for edges: for HTTP, the requests answered 4xx or
//!   5xx or not answered at all (`response_code="0"`), over all requests; for gRPC, a
//!   `grpc_response_status` other than `0` (HTTP's rule when the status is missing);
//! - *p99*: `histogram_quantile(0.99, …)` of the duration histogram's increase;
//! - *mTLS*: the share of the requests the destination reported with
//!   `connection_security_policy="mutual_tls"` (the source cannot tell; it reports
//!   `unknown`); Kiali's lock is shown when the share is above zero.
//!
//! **One count per request.** Both sides report every hop (`reporter="source"` and
//! `reporter="destination"`). The graph takes the destination's series of a hop, which
//! knows the connection's security, and a source's series only for what no destination
//! reports: hops whose server does not report at all (`destination_workload="unknown"`,
//! a host outside the mesh, a workload without the mesh's inbound layer), and requests
//! that ended at the caller before reaching a server — response flags `UH`, `UF`, `UO`,
//! `NR`, `NC`, `FI`, `RL`, `UAEX`, `RLSE`. (Kiali queries the source reporter and reads
//! mTLS from the destination's; both give one count per request.)
//!
//! **Nodes and edges**, as Kiali's versioned-app graph with service nodes draws them: a
//! request from workload A to service S served by workload B is the edges A → S → B,
//! where A and B are `app` + `version` nodes (three for reviews v1, v2 and v3), or
//! workload nodes for workloads without an `app` label; an unknown caller is the
//! `unknown` node, a request no service took goes to it; `PassthroughCluster` is a
//! service node like the others. Edges stay, idle, once they have carried a request.
//! Each node has a layer (longest path from the callers nobody calls) and a rank within
//! it, for a left-to-right drawing.
//!
//! The admin page ([`MeshGraph::PAGE`]) draws the graph as inline SVG and polls its JSON.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_tower::telemetry::Metrics;
//! use mesh_tower::telemetry::graph::MeshGraph;
//!
//! let graph = MeshGraph::new(Arc::new(Metrics::new()));
//! let now = graph.current();
//! assert!(now.nodes.is_empty() && now.edges.is_empty());
//! let json = serde_json::to_value(&now).unwrap_or_default();
//! assert!(json["windowSeconds"].is_number());
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::telemetry::UNKNOWN;
use serde::Serialize;

use super::metrics::{HistogramReading, Metrics, SeriesReading};

/// Istio's default gateway deployments (`istio-system/istio-ingressgateway`,
/// `istio-system/istio-egressgateway`).
pub const DEFAULT_GATEWAYS: [(&str, &str); 2] = [
    ("istio-system", "istio-ingressgateway"),
    ("istio-system", "istio-egressgateway"),
];

/// The response flags of a request that ended at the caller, before any server saw it:
/// no destination reports it.
const ENDED_AT_CALLER: [&str; 9] = ["UH", "UF", "UO", "NR", "NC", "FI", "RL", "UAEX", "RLSE"];

/// How a graph is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOptions {
    /// The span rates, error ratios and latencies are computed over (one minute).
    pub window: Duration,
    /// How often a reading is kept for later graphs (every five seconds).
    pub interval: Duration,
    /// The gateway workloads, as `(namespace, workload)`: their nodes are marked as
    /// gateways (Istio's default ones: [`DEFAULT_GATEWAYS`]).
    pub gateways: Vec<(String, String)>,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            window: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            gateways: DEFAULT_GATEWAYS
                .iter()
                .map(|(ns, w)| (ns.to_string(), w.to_string()))
                .collect(),
        }
    }
}

/// The labels of a series the graph uses (Istio's, before any Telemetry tag override).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HopLabels {
    /// `reporter="destination"` (else `source`).
    pub destination_reported: bool,
    /// `source_workload`.
    pub source_workload: String,
    /// `source_workload_namespace`.
    pub source_namespace: String,
    /// `source_app`.
    pub source_app: String,
    /// `source_version`.
    pub source_version: String,
    /// `destination_workload`.
    pub destination_workload: String,
    /// `destination_workload_namespace`.
    pub destination_namespace: String,
    /// `destination_app`.
    pub destination_app: String,
    /// `destination_version`.
    pub destination_version: String,
    /// `destination_service` (the host).
    pub service: String,
    /// `destination_service_name`.
    pub service_name: String,
    /// `destination_service_namespace`.
    pub service_namespace: String,
    /// `request_protocol="grpc"`.
    pub grpc: bool,
    /// `response_code` (`0`: no response).
    pub response_code: u16,
    /// `grpc_response_status`, when set.
    pub grpc_status: Option<u16>,
    /// `response_flags` (`-` for none).
    pub response_flags: String,
    /// `connection_security_policy="mutual_tls"`.
    pub mutual_tls: bool,
}

impl HopLabels {
    /// The labels of `series` (`None` when it lacks Istio's `reporter`).
    pub fn of(series: &SeriesReading) -> Option<HopLabels> {
        let l = |name: &str| series.label(name).unwrap_or(UNKNOWN).to_string();
        let destination_reported = match series.label("reporter")? {
            "destination" => true,
            "source" => false,
            _ => return None,
        };
        Some(HopLabels {
            destination_reported,
            source_workload: l("source_workload"),
            source_namespace: l("source_workload_namespace"),
            source_app: l("source_app"),
            source_version: l("source_version"),
            destination_workload: l("destination_workload"),
            destination_namespace: l("destination_workload_namespace"),
            destination_app: l("destination_app"),
            destination_version: l("destination_version"),
            service: l("destination_service"),
            service_name: l("destination_service_name"),
            service_namespace: l("destination_service_namespace"),
            grpc: series.label("request_protocol") == Some("grpc"),
            response_code: series
                .label("response_code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            grpc_status: series
                .label("grpc_response_status")
                .and_then(|c| c.parse().ok()),
            response_flags: series.label("response_flags").unwrap_or("-").to_string(),
            mutual_tls: series.label("connection_security_policy") == Some("mutual_tls"),
        })
    }

    /// Whether the request failed (see the module documentation).
    fn is_error(&self) -> bool {
        let http_error = self.response_code == 0 || self.response_code >= 400;
        match (self.grpc, self.grpc_status) {
            (true, Some(status)) => status != 0,
            _ => http_error,
        }
    }

    /// Whether the request ended at the caller, before any server saw it.
    fn ended_at_caller(&self) -> bool {
        self.response_flags
            .split(',')
            .any(|f| ENDED_AT_CALLER.contains(&f.trim()))
    }

    /// The hop as the destination's reporter would name it (its two ends and service).
    fn hop(&self) -> HopEnds<'_> {
        (
            &self.source_workload,
            &self.source_namespace,
            &self.service,
            &self.service_name,
            &self.destination_workload,
            &self.destination_namespace,
        )
    }
}

/// The two ends of a hop and its service, to match a source's series with the
/// destination's.
type HopEnds<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

/// One series (or several with the same [`HopLabels`], added up) at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// Its labels.
    pub labels: HopLabels,
    /// `istio_requests_total`.
    pub requests: u64,
    /// `istio_request_duration_milliseconds`.
    pub duration_ms: HistogramReading,
}

/// Every series at one moment, in the order of their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When, from any fixed origin (the [`MeshGraph`]'s creation).
    pub at: Duration,
    /// The series, one per distinct [`HopLabels`].
    pub hops: Vec<Hop>,
}

impl Reading {
    /// The reading of `series` (from [`Metrics::read`]) taken at `at`.
    pub fn new(at: Duration, series: &[SeriesReading]) -> Self {
        Reading::of_hops(
            at,
            series.iter().filter_map(|s| {
                Some(Hop {
                    labels: HopLabels::of(s)?,
                    requests: s.requests,
                    duration_ms: s.duration_ms.clone(),
                })
            }),
        )
    }

    /// A reading of `hops`, those with the same labels added up.
    pub fn of_hops(at: Duration, hops: impl IntoIterator<Item = Hop>) -> Self {
        let mut by_labels: BTreeMap<HopLabels, Hop> = BTreeMap::new();
        for hop in hops {
            match by_labels.get_mut(&hop.labels) {
                Some(h) => {
                    h.requests = h.requests.saturating_add(hop.requests);
                    add_histogram(&mut h.duration_ms, &hop.duration_ms);
                }
                None => {
                    by_labels.insert(hop.labels.clone(), hop);
                }
            }
        }
        Reading {
            at,
            hops: by_labels.into_values().collect(),
        }
    }

    fn get(&self, labels: &HopLabels) -> Option<&Hop> {
        self.hops
            .binary_search_by(|h| h.labels.cmp(labels))
            .ok()
            .and_then(|i| self.hops.get(i))
    }
}

fn add_histogram(total: &mut HistogramReading, h: &HistogramReading) {
    for (t, c) in total.counts.iter_mut().zip(&h.counts) {
        *t = t.saturating_add(*c);
    }
    total.sum += h.sum;
}

/// What a node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// The workloads of one `app` and `version` in one namespace.
    App,
    /// A workload without an `app` label.
    Workload,
    /// A service (`destination_service`), in front of the workloads that serve it.
    Service,
    /// A caller or destination the metrics cannot name.
    Unknown,
}

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Its identity: `app/NAMESPACE/APP-VERSION` (`app/NAMESPACE/APP` without a version),
    /// `workload/NAMESPACE/WORKLOAD`, `service/NAMESPACE/NAME` or `unknown`.
    pub id: String,
    /// What it stands for.
    pub kind: NodeKind,
    /// Its namespace (`unknown` when none).
    pub namespace: String,
    /// What to call it: the app, workload or service name.
    pub name: String,
    /// The app's version (app nodes with a known version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The service's host (service nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The workloads it stands for (app and workload nodes).
    pub workloads: Vec<String>,
    /// A gateway's node ([`GraphOptions::gateways`]).
    pub gateway: bool,
    /// Its column, left to right: the longest path to it from a node nobody calls.
    pub layer: usize,
    /// Its position within its layer, top to bottom.
    pub rank: usize,
}

/// An edge of the graph, with its numbers over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// The caller's node, or the service's.
    pub source: String,
    /// The service's node, or the workload's that served it.
    pub target: String,
    /// `grpc` when every request on it was gRPC, else `http`.
    pub protocol: &'static str,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// The failed requests' share (0 to 1), `None` without requests in the window.
    pub error_ratio: Option<f64>,
    /// The 99th percentile of the requests' durations, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Some of its traffic is mutual TLS (Kiali's lock).
    pub mtls: bool,
    /// The share of mutual TLS among what the destination reported (0 to 100): over the
    /// window, or over all time for an idle edge; `None` when no destination reported.
    pub mtls_percent: Option<f64>,
}

/// The graph: nodes and edges with their numbers over `window_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// The span the numbers are over, in seconds (0 before two readings exist).
    pub window_seconds: f64,
    /// The nodes, in the order of their ids.
    pub nodes: Vec<Node>,
    /// The edges, in the order of their ends.
    pub edges: Vec<Edge>,
}

/// The increase of a counter from `earlier` to `later` (a reset starts over from zero,
/// as Prometheus' `rate` assumes).
fn increase(later: u64, earlier: u64) -> u64 {
    if later >= earlier {
        later - earlier
    } else {
        later
    }
}

fn histogram_increase(
    later: &HistogramReading,
    earlier: Option<&HistogramReading>,
) -> HistogramReading {
    match earlier {
        Some(e) if later.count() >= e.count() => later.since(e),
        _ => later.clone(),
    }
}

#[derive(Default)]
struct EdgeSum {
    requests: u64,
    errors: u64,
    duration: Option<HistogramReading>,
    grpc_only: bool,
    http_seen: bool,
    /// Destination-reported requests in the window, and those over mutual TLS.
    reported: (u64, u64),
    /// The same, over all time.
    reported_ever: (u64, u64),
}

impl EdgeSum {
    fn add(&mut self, hop: &Hop, requests: u64, duration: &HistogramReading) {
        self.requests += requests;
        if hop.labels.is_error() {
            self.errors += requests;
        }
        match &mut self.duration {
            Some(d) => add_histogram(d, duration),
            None => self.duration = Some(duration.clone()),
        }
        if hop.labels.grpc {
            self.grpc_only = !self.http_seen;
        } else {
            self.http_seen = true;
            self.grpc_only = false;
        }
        if hop.labels.destination_reported {
            let tls = |n: u64| if hop.labels.mutual_tls { n } else { 0 };
            self.reported.0 += requests;
            self.reported.1 += tls(requests);
            self.reported_ever.0 += hop.requests;
            self.reported_ever.1 += tls(hop.requests);
        }
    }
}

/// The node of one end of a hop.
fn peer_node(
    workload: &str,
    namespace: &str,
    app: &str,
    version: &str,
    options: &GraphOptions,
) -> Node {
    let gateway = options
        .gateways
        .iter()
        .any(|(ns, w)| ns == namespace && w == workload);
    let (id, kind, name, version) = if workload == UNKNOWN {
        (UNKNOWN.to_string(), NodeKind::Unknown, UNKNOWN, None)
    } else if app != UNKNOWN {
        if version == UNKNOWN {
            (format!("app/{namespace}/{app}"), NodeKind::App, app, None)
        } else {
            (
                format!("app/{namespace}/{app}-{version}"),
                NodeKind::App,
                app,
                Some(version.to_string()),
            )
        }
    } else {
        (
            format!("workload/{namespace}/{workload}"),
            NodeKind::Workload,
            workload,
            None,
        )
    };
    let unknown = kind == NodeKind::Unknown;
    Node {
        id,
        kind,
        namespace: if unknown { UNKNOWN } else { namespace }.to_string(),
        name: name.to_string(),
        version,
        host: None,
        workloads: if unknown {
            Vec::new()
        } else {
            vec![workload.to_string()]
        },
        gateway,
        layer: 0,
        rank: 0,
    }
}

/// The service node of a hop, if it names a service.
fn service_node(l: &HopLabels) -> Option<Node> {
    if l.service_name == UNKNOWN || l.service_name.is_empty() {
        return None;
    }
    let ns = &l.service_namespace;
    Some(Node {
        id: format!("service/{ns}/{}", l.service_name),
        kind: NodeKind::Service,
        namespace: ns.clone(),
        name: l.service_name.clone(),
        version: None,
        host: (l.service != UNKNOWN).then(|| l.service.clone()),
        workloads: Vec::new(),
        gateway: false,
        layer: 0,
        rank: 0,
    })
}

fn merge_node(nodes: &mut BTreeMap<String, Node>, node: Node) -> String {
    let id = node.id.clone();
    match nodes.get_mut(&id) {
        Some(n) => {
            for w in node.workloads {
                if !n.workloads.contains(&w) {
                    n.workloads.push(w);
                    n.workloads.sort();
                }
            }
            n.gateway |= node.gateway;
        }
        None => {
            nodes.insert(id.clone(), node);
        }
    }
    id
}

/// The graph of the traffic from `earlier` to `later` (see the module documentation).
pub fn graph(earlier: &Reading, later: &Reading, options: &GraphOptions) -> Graph {
    let seconds = later.at.saturating_sub(earlier.at).as_secs_f64();
    // The hops some destination reports.
    let reported: HashSet<HopEnds<'_>> = later
        .hops
        .iter()
        .filter(|h| h.labels.destination_reported)
        .map(|h| h.labels.hop())
        .collect();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), EdgeSum> = BTreeMap::new();
    for hop in &later.hops {
        let l = &hop.labels;
        if hop.requests == 0 {
            continue;
        }
        let counted = l.destination_reported || !reported.contains(&l.hop()) || l.ended_at_caller();
        if !counted {
            continue;
        }
        let before = earlier.get(l);
        let requests = increase(hop.requests, before.map_or(0, |b| b.requests));
        let duration = histogram_increase(&hop.duration_ms, before.map(|b| &b.duration_ms));
        let source = merge_node(
            &mut nodes,
            peer_node(
                &l.source_workload,
                &l.source_namespace,
                &l.source_app,
                &l.source_version,
                options,
            ),
        );
        let service = service_node(l).map(|s| merge_node(&mut nodes, s));
        let destination = (l.destination_workload != UNKNOWN || service.is_none()).then(|| {
            merge_node(
                &mut nodes,
                peer_node(
                    &l.destination_workload,
                    &l.destination_namespace,
                    &l.destination_app,
                    &l.destination_version,
                    options,
                ),
            )
        });
        let mut add = |from: &str, to: &str| {
            edges
                .entry((from.to_string(), to.to_string()))
                .or_default()
                .add(hop, requests, &duration);
        };
        match (&service, &destination) {
            (Some(s), Some(d)) => {
                add(&source, s);
                add(s, d);
            }
            (Some(s), None) => add(&source, s),
            (None, Some(d)) => add(&source, d),
            (None, None) => {}
        }
    }
    let edges: Vec<Edge> = edges
        .into_iter()
        .map(|((source, target), e)| {
            let rate = if seconds > 0.0 {
                e.requests as f64 / seconds
            } else {
                0.0
            };
            let (total, tls) = if e.reported.0 > 0 {
                e.reported
            } else {
                e.reported_ever
            };
            let mtls_percent = (total > 0).then(|| tls as f64 * 100.0 / total as f64);
            Edge {
                source,
                target,
                protocol: if e.grpc_only { "grpc" } else { "http" },
                requests: e.requests,
                rate,
                error_ratio: (e.requests > 0).then(|| e.errors as f64 / e.requests as f64),
                p99_ms: e.duration.as_ref().and_then(|d| d.quantile(0.99)),
                mtls: mtls_percent.is_some_and(|p| p > 0.0),
                mtls_percent,
            }
        })
        .collect();
    let mut nodes: Vec<Node> = nodes.into_values().collect();
    layout(&mut nodes, &edges);
    Graph {
        window_seconds: seconds,
        nodes,
        edges,
    }
}

/// Assigns each node its layer (the longest path to it from a node without callers,
/// bounded by the number of nodes when there are cycles) and its rank within the layer
/// (ordered by the mean rank of its callers, a few sweeps, ties by id).
fn layout(nodes: &mut [Node], edges: &[Edge]) {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let links: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|e| {
            Some((
                *index.get(e.source.as_str())?,
                *index.get(e.target.as_str())?,
            ))
        })
        .filter(|(s, t)| s != t)
        .collect();
    let n = nodes.len();
    let mut layer = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for &(s, t) in &links {
            if layer[t] < layer[s] + 1 && layer[s] + 1 < n {
                layer[t] = layer[s] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Ranks: first by id (the nodes come sorted), then by the callers' mean rank.
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, l) in layer.iter().enumerate() {
        if let Some(o) = order.get_mut(*l) {
            o.push(i);
        }
    }
    let mut rank = vec![0.0f64; n];
    let set_ranks = |order: &[Vec<usize>], rank: &mut [f64]| {
        for o in order {
            for (r, &i) in o.iter().enumerate() {
                rank[i] = r as f64;
            }
        }
    };
    set_ranks(&order, &mut rank);
    for _ in 0..4 {
        for l in 1..layers {
            let mut keyed: Vec<(f64, usize)> = order[l]
                .iter()
                .map(|&i| {
                    let callers: Vec<f64> = links
                        .iter()
                        .filter(|&&(s, t)| t == i && layer[s] < l)
                        .map(|&(s, _)| rank[s])
                        .collect();
                    let key = if callers.is_empty() {
                        rank[i]
                    } else {
                        callers.iter().sum::<f64>() / callers.len() as f64
                    };
                    (key, i)
                })
                .collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| nodes[a.1].id.cmp(&nodes[b.1].id))
            });
            order[l] = keyed.into_iter().map(|(_, i)| i).collect();
            set_ranks(&order[l..=l], &mut rank);
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        node.layer = layer[i];
        node.rank = rank[i] as usize;
    }
}

/// The readings kept for later graphs: one per interval, a window's worth.
#[derive(Debug, Default)]
struct History {
    readings: VecDeque<Arc<Reading>>,
}

impl History {
    /// Records `now` (kept when the last kept reading is an interval old) and returns the
    /// reading to compare it with: the oldest at most a window old, else the newest.
    fn observe(&mut self, now: &Arc<Reading>, options: &GraphOptions) -> Arc<Reading> {
        let age = |r: &Reading| now.at.saturating_sub(r.at);
        let baseline = self
            .readings
            .iter()
            .find(|r| age(r) <= options.window)
            .or_else(|| self.readings.back())
            .cloned()
            .unwrap_or_else(|| now.clone());
        if self
            .readings
            .back()
            .is_none_or(|r| age(r) >= options.interval)
        {
            self.readings.push_back(now.clone());
        }
        let keep = options.window.saturating_add(options.interval);
        while self.readings.len() > 1 && self.readings.front().is_some_and(|r| age(r) > keep) {
            self.readings.pop_front();
        }
        baseline
    }

    fn len(&self) -> usize {
        self.readings.len()
    }
}

/// The live graph of a process's [`Metrics`] (see the module documentation).
#[derive(Debug)]
pub struct MeshGraph {
    metrics: Arc<Metrics>,
    options: GraphOptions,
    started: Instant,
    history: Mutex<History>,
}

impl MeshGraph {
    /// The graph page: inline CSS, JavaScript and SVG, nothing fetched but the graph's
    /// JSON (`data` under the page's own path: serve it at `…/graph/data` next to the page
    /// at `…/graph`), every two seconds.
    pub const PAGE: &'static str = include_str!("graph.html");

    /// The graph of `metrics`, with the default options; its first reading is taken now.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MeshGraph::with_options(metrics, GraphOptions::default())
    }

    /// The graph of `metrics` computed as `options` say; its first reading is taken now.
    pub fn with_options(metrics: Arc<Metrics>, options: GraphOptions) -> Self {
        let graph = MeshGraph {
            metrics,
            options,
            started: Instant::now(),
            history: Mutex::new(History::default()),
        };
        let first = Arc::new(graph.read());
        graph.lock().observe(&first, &graph.options);
        graph
    }

    fn read(&self) -> Reading {
        Reading::new(self.started.elapsed(), &self.metrics.read())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The graph now, over the last window (or the time available if shorter).
    pub fn current(&self) -> Graph {
        let now = Arc::new(self.read());
        let baseline = self.lock().observe(&now, &self.options);
        graph(&baseline, &now, &self.options)
    }

    /// How many readings it keeps now (at most a window's worth, plus two).
    pub fn readings_kept(&self) -> usize {
        self.lock().len()
    }
}

impl Graph {
    /// The node with `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The edge from `source` to `target`.
    pub fn edge(&self, source: &str, target: &str) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| e.source == source && e.target == target)
    }

    /// Every edge as `(source, target)`.
    pub fn links(&self) -> BTreeSet<(&str, &str)> {
        self.edges
            .iter()
            .map(|e| (e.source.as_str(), e.target.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::BUCKETS;

    const REVIEWS: &str = "service/default/reviews";
    const RATINGS: &str = "service/default/ratings";
    const DETAILS: &str = "service/default/details";
    const PRODUCTPAGE: &str = "service/default/productpage";
    const GATEWAY: &str = "app/istio-system/istio-ingressgateway";

    /// The labels a Bookinfo-like workload reports: `reviews-v2` is app `reviews`,
    /// version `v2`; the gateway has no version; `unknown` is nothing.
    fn peer(workload: &str) -> (String, String, String, String) {
        match workload {
            UNKNOWN => (
                UNKNOWN.into(),
                UNKNOWN.into(),
                UNKNOWN.into(),
                UNKNOWN.into(),
            ),
            "istio-ingressgateway" => (
                workload.into(),
                "istio-system".into(),
                workload.into(),
                UNKNOWN.into(),
            ),
            w => match w.rsplit_once("-v") {
                Some((app, v)) => (w.into(), "default".into(), app.into(), format!("v{v}")),
                None => (w.into(), "default".into(), UNKNOWN.into(), UNKNOWN.into()),
            },
        }
    }

    /// The hop `from` → `service` → `to` as `reporter` labels it: 200, no flag, mutual
    /// TLS on the destination's side.
    fn labels(destination: bool, from: &str, service: &str, to: &str) -> HopLabels {
        let (sw, sns, sapp, sv) = peer(from);
        let (dw, dns, dapp, dv) = peer(to);
        let (host, name, ns) = match service {
            UNKNOWN => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
            "PassthroughCluster" => (UNKNOWN.into(), service.into(), UNKNOWN.into()),
            s if s.contains('.') => (s.to_string(), s.to_string(), "default".to_string()),
            s => (
                format!("{s}.default.svc.cluster.local"),
                s.to_string(),
                "default".to_string(),
            ),
        };
        HopLabels {
            destination_reported: destination,
            source_workload: sw,
            source_namespace: sns,
            source_app: sapp,
            source_version: sv,
            destination_workload: dw,
            destination_namespace: dns,
            destination_app: dapp,
            destination_version: dv,
            service: host,
            service_name: name,
            service_namespace: ns,
            grpc: false,
            response_code: 200,
            grpc_status: None,
            response_flags: "-".into(),
            mutual_tls: destination,
        }
    }

    fn histogram(observations: &[(f64, u64)]) -> HistogramReading {
        let mut h = HistogramReading {
            counts: [0; BUCKETS.len() + 1],
            sum: 0.0,
        };
        for (ms, n) in observations {
            let i = BUCKETS.partition_point(|b| b < ms);
            h.counts[i] += n;
            h.sum += ms * *n as f64;
        }
        h
    }

    /// `n` requests of `l`, each taking `ms`.
    fn hop(l: &HopLabels, n: u64, ms: f64) -> Hop {
        Hop {
            labels: l.clone(),
            requests: n,
            duration_ms: histogram(&[(ms, n)]),
        }
    }

    fn at(secs: u64, hops: Vec<Hop>) -> Reading {
        Reading::of_hops(Duration::from_secs(secs), hops)
    }

    fn empty(secs: u64) -> Reading {
        at(secs, Vec::new())
    }

    fn both(from: &str, service: &str, to: &str, n: u64, ms: f64) -> [Hop; 2] {
        [
            hop(&labels(false, from, service, to), n, ms),
            hop(&labels(true, from, service, to), n, ms),
        ]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_are_increases_over_the_span() {
        // (requests then, requests now, seconds between, rate)
        let cases = [
            (0, 120, 60, 2.0),
            (100, 220, 60, 2.0),
            (100, 100, 60, 0.0),
            (10, 25, 5, 3.0),
            // A registry that started over: its count is the increase.
            (500, 30, 10, 3.0),
        ];
        let l = labels(
            true,
            "istio-ingressgateway",
            "productpage",
            "productpage-v1",
        );
        for (then, now, secs, want) in cases {
            let earlier = at(0, vec![hop(&l, then, 3.0)]);
            let later = at(secs, vec![hop(&l, now, 3.0)]);
            let g = graph(&earlier, &later, &GraphOptions::default());
            assert!(close(g.window_seconds, secs as f64));
            for (s, t) in [
                (GATEWAY, PRODUCTPAGE),
                (PRODUCTPAGE, "app/default/productpage-v1"),
            ] {
                let e = g.edge(s, t).unwrap_or_else(|| panic!("{s} -> {t}: {g:#?}"));
                assert!(close(e.rate, want), "{then}->{now} in {secs}s: {}", e.rate);
            }
        }
        // A series new since the earlier reading counts whole.
        let later = at(30, vec![hop(&l, 60, 3.0)]);
        let g = graph(&empty(0), &later, &GraphOptions::default());
        assert_eq!(g.edges.len(), 2);
        assert!(
            g.edges
                .iter()
                .all(|e| close(e.rate, 2.0) && e.requests == 60)
        );
        // The same reading twice: no span, no rate.
        let g = graph(&later, &later, &GraphOptions::default());
        assert_eq!(g.window_seconds, 0.0);
        assert!(
            g.edges
                .iter()
                .all(|e| e.rate == 0.0 && e.error_ratio.is_none())
        );
    }

    #[test]
    fn errors_are_kialis_4xx_5xx_and_no_response() {
        // (protocol gRPC, response code, grpc status, an error)
        let cases = [
            (false, 200, None, false),
            (false, 204, None, false),
            (false, 302, None, false),
            (false, 404, None, true),
            (false, 429, None, true),
            (false, 503, None, true),
            (false, 0, None, true),
            (true, 200, Some(0), false),
            (true, 200, Some(14), true),
            (true, 200, Some(5), true),
            (true, 503, None, true),
            (true, 200, None, false),
        ];
        for (grpc, code, status, want) in cases {
            let mut l = labels(true, "productpage-v1", "reviews", "reviews-v1");
            l.grpc = grpc;
            l.response_code = code;
            l.grpc_status = status;
            assert_eq!(
                l.is_error(),
                want,
                "grpc={grpc} code={code} status={status:?}"
            );
            let g = graph(
                &empty(0),
                &at(10, vec![hop(&l, 4, 1.0)]),
                &GraphOptions::default(),
            );
            let e = g.edge(REVIEWS, "app/default/reviews-v1").unwrap();
            assert_eq!(e.error_ratio, Some(if want { 1.0 } else { 0.0 }));
            assert_eq!(e.protocol, if grpc { "grpc" } else { "http" });
        }
        // 90 answered 200, 5 answered 503, 5 answered 404: 10 %.
        let ok = labels(true, "productpage-v1", "reviews", "reviews-v1");
        let mut unavailable = ok.clone();
        unavailable.response_code = 503;
        let mut missing = ok.clone();
        missing.response_code = 404;
        let later = at(
            10,
            vec![
                hop(&ok, 90, 1.0),
                hop(&unavailable, 5, 1.0),
                hop(&missing, 5, 1.0),
            ],
        );
        let g = graph(&empty(0), &later, &GraphOptions::default());
        for (s, t) in [
            ("app/default/productpage-v1", REVIEWS),
            (REVIEWS, "app/default/reviews-v1"),
        ] {
            let e = g.edge(s, t).unwrap();
            assert_eq!(e.requests, 100);
            assert!(close(e.error_ratio.unwrap_or(f64::NAN), 0.1), "{e:?}");
        }
    }

    #[test]
    fn p99_comes_from_the_histograms_increase() {
        let l = labels(true, "reviews-v2", "ratings", "ratings-v1");
        // Then: 10,000 fast requests; since: 100 in (5, 10] ms. Over the window only
        // the slow ones count: p99 is 99 % of the way through their bucket.
        let then = Hop {
            labels: l.clone(),
            requests: 10_000,
            duration_ms: histogram(&[(0.3, 10_000)]),
        };
        let now = Hop {
            labels: l.clone(),
            requests: 10_100,
            duration_ms: histogram(&[(0.3, 10_000), (7.0, 100)]),
        };
        let g = graph(
            &at(0, vec![then]),
            &at(60, vec![now.clone()]),
            &GraphOptions::default(),
        );
        let e = g.edge(RATINGS, "app/default/ratings-v1").unwrap();
        assert!(close(e.p99_ms.unwrap_or(f64::NAN), 9.95), "{e:?}");
        // Over all time the fast ones dominate.
        let g = graph(&empty(0), &at(60, vec![now]), &GraphOptions::default());
        let e = g.edge(RATINGS, "app/default/ratings-v1").unwrap();
        let all = histogram(&[(0.3, 10_000), (7.0, 100)]).quantile(0.99);
        assert_eq!(e.p99_ms, all);
        assert!(e.p99_ms.unwrap_or(f64::NAN) < 0.5);
        // An edge with traffic split over several series: their histograms add up.
        let mut slow = l.clone();
        slow.response_code = 503;
        let later = at(
            10,
            vec![
                Hop {
                    labels: l.clone(),
                    requests: 50,
                    duration_ms: histogram(&[(0.3, 50)]),
                },
                Hop {
                    labels: slow,
                    requests: 50,
                    duration_ms: histogram(&[(700.0, 50)]),
                },
            ],
        );
        let g = graph(&empty(0), &later, &GraphOptions::default());
        let e = g.edge(RATINGS, "app/default/ratings-v1").unwrap();
        let want = histogram(&[(0.3, 50), (700.0, 50)]).quantile(0.99);
        assert_eq!(e.p99_ms, want);
        assert!(e.p99_ms.unwrap_or(0.0) > 500.0);
    }

    #[test]
    fn mtls_is_what_the_destination_reports() {
        // (mutual TLS requests, plaintext requests, both reported by the destination;
        // the lock, the share)
        let cases = [
            (10, 0, true, Some(100.0)),
            (5, 5, true, Some(50.0)),
            (0, 10, false, Some(0.0)),
        ];
        for (tls, plain, lock, share) in cases {
            let secure = labels(true, "productpage-v1", "details", "details-v1");
            let mut clear = secure.clone();
            clear.mutual_tls = false;
            let source = labels(false, "productpage-v1", "details", "details-v1");
            let later = at(
                10,
                vec![
                    hop(&secure, tls, 1.0),
                    hop(&clear, plain, 1.0),
                    hop(&source, tls + plain, 1.0),
                ],
            );
            let g = graph(&empty(0), &later, &GraphOptions::default());
            for (s, t) in [
                ("app/default/productpage-v1", DETAILS),
                (DETAILS, "app/default/details-v1"),
            ] {
                let e = g.edge(s, t).unwrap();
                assert_eq!((e.mtls, e.mtls_percent), (lock, share), "{tls}/{plain}");
                assert_eq!(e.requests, tls + plain);
            }
        }
        // Only the source reports (a host outside the mesh): it cannot tell.
        let out = labels(false, "productpage-v1", "api.example.com", UNKNOWN);
        let g = graph(
            &empty(0),
            &at(10, vec![hop(&out, 3, 1.0)]),
            &GraphOptions::default(),
        );
        let e = g
            .edge(
                "app/default/productpage-v1",
                "service/default/api.example.com",
            )
            .unwrap();
        assert_eq!((e.mtls, e.mtls_percent), (false, None));
        // An idle edge keeps the lock of its past traffic.
        let secure = labels(true, "productpage-v1", "details", "details-v1");
        let then = at(0, vec![hop(&secure, 10, 1.0)]);
        let now = at(60, vec![hop(&secure, 10, 1.0)]);
        let g = graph(&then, &now, &GraphOptions::default());
        let e = g.edge(DETAILS, "app/default/details-v1").unwrap();
        assert_eq!((e.requests, e.mtls, e.mtls_percent), (0, true, Some(100.0)));
    }

    #[test]
    fn each_request_counts_once() {
        let pp = "app/default/productpage-v1";
        // (series, requests on productpage -> reviews, errors on it,
        //  requests on reviews -> reviews-v2)
        let ok_v2 = labels(true, "productpage-v1", "reviews", "reviews-v2");
        let src_v2 = labels(false, "productpage-v1", "reviews", "reviews-v2");
        let mut refused = src_v2.clone();
        refused.response_code = 503;
        refused.response_flags = "UF,URX".into();
        let mut timed_out = src_v2.clone();
        timed_out.response_code = 504;
        timed_out.response_flags = "UT".into();
        let mut no_endpoint = labels(false, "productpage-v1", "reviews", UNKNOWN);
        no_endpoint.response_code = 503;
        no_endpoint.response_flags = "UH".into();
        let cases: Vec<(&str, Vec<Hop>, u64, u64, u64)> = vec![
            (
                "both sides report: the destination's count",
                vec![hop(&src_v2, 10, 1.0), hop(&ok_v2, 10, 1.0)],
                10,
                0,
                10,
            ),
            (
                "the source alone saw a connection failure",
                vec![
                    hop(&src_v2, 7, 1.0),
                    hop(&ok_v2, 7, 1.0),
                    hop(&refused, 3, 1.0),
                ],
                10,
                3,
                10,
            ),
            (
                "a source timeout: the destination reports what it served",
                vec![
                    hop(&src_v2, 7, 1.0),
                    hop(&ok_v2, 8, 1.0),
                    hop(&timed_out, 1, 1.0),
                ],
                8,
                0,
                8,
            ),
            (
                "no healthy endpoint: only the source can report, up to the service",
                vec![
                    hop(&src_v2, 4, 1.0),
                    hop(&ok_v2, 4, 1.0),
                    hop(&no_endpoint, 6, 1.0),
                ],
                10,
                6,
                4,
            ),
            (
                "a destination that does not report: the source's count",
                vec![hop(&src_v2, 5, 1.0)],
                5,
                0,
                5,
            ),
        ];
        for (what, hops, requests, errors, to_v2) in cases {
            let g = graph(&empty(0), &at(10, hops), &GraphOptions::default());
            let e = g
                .edge(pp, REVIEWS)
                .unwrap_or_else(|| panic!("{what}: {g:#?}"));
            assert_eq!(e.requests, requests, "{what}");
            let got_errors = (e.error_ratio.unwrap_or(0.0) * e.requests as f64).round() as u64;
            assert_eq!(got_errors, errors, "{what}");
            assert_eq!(
                g.edge(REVIEWS, "app/default/reviews-v2")
                    .map(|e| e.requests),
                Some(to_v2),
                "{what}"
            );
            assert!(g.node("unknown").is_none(), "{what}: {g:#?}");
        }
    }

    #[test]
    fn unknown_passthrough_and_unlabelled_nodes() {
        // The gateway could not route: no service, no workload.
        let mut no_route = labels(false, "istio-ingressgateway", UNKNOWN, UNKNOWN);
        no_route.response_code = 404;
        no_route.response_flags = "NR".into();
        // A host outside the registry, forwarded as it is.
        let passthrough = labels(false, "productpage-v1", "PassthroughCluster", UNKNOWN);
        // A caller the server cannot name.
        let anonymous = labels(true, UNKNOWN, "details", "details-v1");
        // A workload without an app label.
        let unlabelled = labels(true, "loadgen", "details", "details-v1");
        let later = at(
            10,
            vec![
                hop(&no_route, 1, 0.2),
                hop(&passthrough, 2, 5.0),
                hop(&anonymous, 3, 1.0),
                hop(&unlabelled, 4, 1.0),
            ],
        );
        let g = graph(&empty(0), &later, &GraphOptions::default());
        let links: BTreeSet<(&str, &str)> = [
            (GATEWAY, "unknown"),
            (
                "app/default/productpage-v1",
                "service/unknown/PassthroughCluster",
            ),
            ("unknown", DETAILS),
            ("workload/default/loadgen", DETAILS),
            (DETAILS, "app/default/details-v1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(g.links(), links);
        let kinds: Vec<(&str, NodeKind)> =
            g.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("app/default/details-v1", NodeKind::App),
                ("app/default/productpage-v1", NodeKind::App),
                (GATEWAY, NodeKind::App),
                (DETAILS, NodeKind::Service),
                ("service/unknown/PassthroughCluster", NodeKind::Service),
                ("unknown", NodeKind::Unknown),
                ("workload/default/loadgen", NodeKind::Workload),
            ]
        );
        let gateway = g.node(GATEWAY).unwrap();
        assert!(gateway.gateway);
        assert_eq!(
            (gateway.name.as_str(), gateway.version.as_deref()),
            ("istio-ingressgateway", None)
        );
        assert_eq!(
            g.node(DETAILS).and_then(|n| n.host.as_deref()),
            Some("details.default.svc.cluster.local")
        );
        assert_eq!(
            g.edge(GATEWAY, "unknown").and_then(|e| e.error_ratio),
            Some(1.0)
        );
        assert_eq!(
            g.edge(DETAILS, "app/default/details-v1")
                .map(|e| e.requests),
            Some(7)
        );
        // Gateways are what the options say.
        let options = GraphOptions {
            gateways: vec![("default".into(), "loadgen".into())],
            ..GraphOptions::default()
        };
        let g = graph(&empty(0), &later, &options);
        assert!(!g.node(GATEWAY).unwrap().gateway);
        assert!(g.node("workload/default/loadgen").unwrap().gateway);
    }

    /// Bookinfo's traffic: `pages` product pages, a third to each reviews version.
    fn bookinfo(secs: u64, pages: u64) -> Reading {
        let third = pages / 3;
        let mut hops = Vec::new();
        hops.extend(both(
            "istio-ingressgateway",
            "productpage",
            "productpage-v1",
            pages,
            20.0,
        ));
        hops.extend(both("productpage-v1", "details", "details-v1", pages, 2.0));
        for v in ["reviews-v1", "reviews-v2", "reviews-v3"] {
            hops.extend(both("productpage-v1", "reviews", v, third, 8.0));
        }
        for v in ["reviews-v2", "reviews-v3"] {
            hops.extend(both(v, "ratings", "ratings-v1", third, 1.0));
        }
        at(secs, hops)
    }

    #[test]
    fn bookinfo_is_kialis_versioned_app_graph() {
        let g = graph(
            &bookinfo(0, 30),
            &bookinfo(60, 150),
            &GraphOptions::default(),
        );
        let (pp, details, ratings) = (
            "app/default/productpage-v1",
            "app/default/details-v1",
            "app/default/ratings-v1",
        );
        let (r1, r2, r3) = (
            "app/default/reviews-v1",
            "app/default/reviews-v2",
            "app/default/reviews-v3",
        );
        let want: BTreeSet<(&str, &str)> = [
            (GATEWAY, PRODUCTPAGE),
            (PRODUCTPAGE, pp),
            (pp, DETAILS),
            (DETAILS, details),
            (pp, REVIEWS),
            (REVIEWS, r1),
            (REVIEWS, r2),
            (REVIEWS, r3),
            (r2, RATINGS),
            (r3, RATINGS),
            (RATINGS, ratings),
        ]
        .into_iter()
        .collect();
        assert_eq!(g.links(), want);
        // (edge, requests per second)
        let rates = [
            ((GATEWAY, PRODUCTPAGE), 2.0),
            ((pp, REVIEWS), 2.0),
            ((REVIEWS, r3), 40.0 / 60.0),
            ((r2, RATINGS), 40.0 / 60.0),
            ((RATINGS, ratings), 80.0 / 60.0),
        ];
        for ((s, t), want) in rates {
            let e = g.edge(s, t).unwrap();
            assert!(close(e.rate, want), "{s} -> {t}: {}", e.rate);
            assert_eq!((e.mtls, e.error_ratio), (true, Some(0.0)));
        }
        // Left to right: gateway, its service, productpage, the two services it calls,
        // their workloads, ratings' service, ratings.
        let layers: BTreeMap<&str, usize> =
            g.nodes.iter().map(|n| (n.id.as_str(), n.layer)).collect();
        let want: BTreeMap<&str, usize> = [
            (GATEWAY, 0),
            (PRODUCTPAGE, 1),
            (pp, 2),
            (DETAILS, 3),
            (REVIEWS, 3),
            (details, 4),
            (r1, 4),
            (r2, 4),
            (r3, 4),
            (RATINGS, 5),
            (ratings, 6),
        ]
        .into_iter()
        .collect();
        assert_eq!(layers, want);
        // Ranks are distinct within a layer; details' workload sits with its service.
        for layer in 0..7 {
            let mut ranks: Vec<usize> = g
                .nodes
                .iter()
                .filter(|n| n.layer == layer)
                .map(|n| n.rank)
                .collect();
            ranks.sort_unstable();
            assert_eq!(ranks, (0..ranks.len()).collect::<Vec<_>>(), "layer {layer}");
        }
        let rank = |id: &str| g.node(id).map(|n| n.rank);
        assert_eq!((rank(DETAILS), rank(REVIEWS)), (Some(0), Some(1)));
        assert_eq!(rank(details), Some(0));
        assert!(rank(r1) < rank(r2) && rank(r2) < rank(r3));
        // Versions are visible: three nodes for reviews, behind one service.
        let versions: Vec<_> = g
            .nodes
            .iter()
            .filter(|n| n.name == "reviews")
            .map(|n| (n.kind, n.version.as_deref()))
            .collect();
        assert_eq!(
            versions,
            [
                (NodeKind::App, Some("v1")),
                (NodeKind::App, Some("v2")),
                (NodeKind::App, Some("v3")),
                (NodeKind::Service, None),
            ]
        );
        // And the JSON the page reads.
        let json = serde_json::to_value(&g).unwrap_or_default();
        assert_eq!(json["windowSeconds"], 60.0);
        assert_eq!(json["nodes"][0]["kind"], "app");
        let edge = json["edges"]
            .as_array()
            .and_then(|es| {
                es.iter()
                    .find(|e| e["source"] == REVIEWS && e["target"] == r3)
            })
            .cloned()
            .unwrap_or_default();
        assert_eq!(edge["mtls"], true);
        assert_eq!(edge["mtlsPercent"], 100.0);
        assert_eq!(edge["errorRatio"], 0.0);
        assert_eq!(edge["requests"], 40);
        assert!(
            edge["p99Ms"].as_f64().is_some_and(|p| p > 5.0 && p <= 10.0),
            "{edge}"
        );
    }

    #[test]
    fn layers_stay_bounded_with_cycles() {
        // a -> b -> a, each through its service.
        let hops: Vec<Hop> = [
            both("a-v1", "b", "b-v1", 1, 1.0),
            both("b-v1", "a", "a-v1", 1, 1.0),
        ]
        .into_iter()
        .flatten()
        .collect();
        let g = graph(&empty(0), &at(1, hops), &GraphOptions::default());
        assert_eq!(g.nodes.len(), 4);
        assert!(g.nodes.iter().all(|n| n.layer < 4), "{g:#?}");
    }

    #[test]
    fn history_keeps_a_window_and_no_more() {
        let options = GraphOptions::default();
        let mut history = History::default();
        let mut observe = |secs: u64| {
            let now = Arc::new(empty(secs));
            history.observe(&now, &options).at.as_secs()
        };
        // (now, the baseline it gets)
        let cases = [
            (0, 0),
            (2, 0),
            (4, 0),
            (6, 0),
            (60, 0),
            (62, 6), // 0 is now too old; 6 was kept (an interval after 0)
            (64, 6),
            (70, 60),  // then 60, a long gap after 6
            (700, 70), // nothing for ten minutes: the newest reading there is
            (702, 700),
        ];
        for (now, want) in cases {
            assert_eq!(observe(now), want, "at {now}");
        }
        // Polled every two seconds for ten minutes: a window's worth is kept.
        let mut history = History::default();
        for t in (0..600).step_by(2) {
            let now = Arc::new(empty(t));
            let baseline = history.observe(&now, &options);
            let span = t - baseline.at.as_secs();
            assert!(
                span <= 60 && (t < 60 || span >= 55),
                "at {t}: over {span} s"
            );
            assert!(history.len() <= 14, "at {t}: {} readings", history.len());
        }
    }

    #[test]
    fn labels_come_from_the_series_values() {
        use mesh_core::telemetry::ISTIO_LABELS;
        let mut values: [String; 25] = Default::default();
        for (i, name) in ISTIO_LABELS.iter().enumerate() {
            values[i] = match *name {
                "reporter" => "destination".into(),
                "source_workload" => "reviews-v2".into(),
                "source_workload_namespace" => "default".into(),
                "source_app" => "reviews".into(),
                "source_version" => "v2".into(),
                "destination_workload" => "ratings-v1".into(),
                "destination_workload_namespace" => "default".into(),
                "destination_app" => "ratings".into(),
                "destination_version" => "v1".into(),
                "destination_service" => "ratings.default.svc.cluster.local".into(),
                "destination_service_name" => "ratings".into(),
                "destination_service_namespace" => "default".into(),
                "request_protocol" => "grpc".into(),
                "response_code" => "200".into(),
                "grpc_response_status" => "14".into(),
                "response_flags" => "UF,URX".into(),
                "connection_security_policy" => "mutual_tls".into(),
                _ => "x".into(),
            };
        }
        let series = SeriesReading {
            values,
            reported: [None, None, None, None],
            requests: 3,
            duration_ms: histogram(&[(1.0, 3)]),
            request_bytes: histogram(&[]),
            response_bytes: histogram(&[]),
        };
        let want = HopLabels {
            grpc: true,
            grpc_status: Some(14),
            response_flags: "UF,URX".into(),
            ..labels(true, "reviews-v2", "ratings", "ratings-v1")
        };
        assert_eq!(HopLabels::of(&series), Some(want.clone()));
        assert!(want.is_error() && want.ended_at_caller());
        let reading = Reading::new(Duration::from_secs(1), &[series.clone(), series.clone()]);
        assert_eq!(reading.hops.len(), 1);
        assert_eq!(reading.hops[0].requests, 6);
        assert_eq!(reading.hops[0].duration_ms.count(), 6);
        // Without a reporter it is not one of Istio's request series.
        let mut odd = series;
        odd.values[0] = "waypoint".into();
        assert_eq!(HopLabels::of(&odd), None);
    }

    #[test]
    fn mesh_graph_reads_the_registry() {
        use crate::telemetry::metrics::{Labels, Reporter, Sample, Security};
        use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};
        let metrics = Arc::new(Metrics::new());
        let graph = MeshGraph::new(metrics.clone());
        let peer = |name: &str, ns: &str, app: &str, version: &str| {
            let labels = [("app", app), ("version", version)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Arc::new(PeerLabels::new(
                Some(name),
                ns,
                &labels,
                "spiffe://cluster.local/x",
                "Kubernetes",
            ))
        };
        let gateway = peer(
            "istio-ingressgateway",
            "istio-system",
            "istio-ingressgateway",
            "",
        );
        let productpage = peer("productpage-v1", "default", "productpage", "v1");
        let service = Arc::new(ServiceLabels::new(
            "productpage.default.svc.cluster.local",
            "default",
        ));
        let profile = Arc::new(MetricProfile::default());
        for (reporter, security) in [
            (Reporter::Source, Security::Unknown),
            (Reporter::Destination, Security::MutualTls),
        ] {
            let labels = Labels {
                reporter,
                source: &gateway,
                source_principal: true,
                destination: &productpage,
                destination_principal: true,
                service: &service,
                grpc: false,
                code: 200,
                grpc_status: None,
                flags: crate::flags::ResponseFlags::NONE,
                security,
                profile: &profile,
            };
            for _ in 0..5 {
                metrics.record(
                    &labels,
                    Sample {
                        duration: Duration::from_millis(12),
                        ..Sample::default()
                    },
                );
            }
        }
        let g = graph.current();
        assert_eq!(
            g.links(),
            [
                (GATEWAY, PRODUCTPAGE),
                (PRODUCTPAGE, "app/default/productpage-v1")
            ]
            .into_iter()
            .collect()
        );
        for e in &g.edges {
            assert_eq!(
                (e.requests, e.mtls, e.error_ratio),
                (5, true, Some(0.0)),
                "{e:?}"
            );
            assert!(e.p99_ms.is_some_and(|p| p > 10.0 && p <= 25.0), "{e:?}");
        }
        assert!(g.node(GATEWAY).is_some_and(|n| n.gateway && n.layer == 0));
        assert!(graph.readings_kept() <= 2);
    }

    #[test]
    fn the_page_fetches_nothing_but_its_data() {
        let page = MeshGraph::PAGE;
        for outside in ["://", "<link", " src=", "@import", "url(http", "url(//"] {
            assert!(
                !page.contains(outside),
                "the page refers to something outside: {outside}"
            );
        }
        assert!(page.contains("\"/data\""), "the page polls its data");
        for hook in [
            "data-source",
            "data-target",
            "data-mtls",
            "data-rate",
            "data-app",
            "data-version",
        ] {
            assert!(page.contains(hook), "{hook}");
        }
    }
}
