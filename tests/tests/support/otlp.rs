//! A small OTLP receiver for tests: one loopback port serving OTLP/gRPC
//! (`TraceService/Export`, `MetricsService/Export`, HTTP/2) and OTLP/HTTP
//! (`POST /v1/traces`, `POST /v1/metrics`, protobuf bodies) — a collector's two
//! receivers — keeping what it receives, flattened, for assertions.
//!
//! ```ignore
//! let receiver = OtlpReceiver::start().await;
//! // point an exporter at receiver.endpoint() (gRPC) or receiver.traces_url() (HTTP)
//! let spans = receiver.wait_for_spans(5, Duration::from_secs(10)).await;
//! ```

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// The gRPC method receiving spans.
pub const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The gRPC method receiving metrics.
pub const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// How an export arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

/// How the receiver answers exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Keeps them and answers success.
    Accept,
    /// Refuses them: HTTP 503 with a `google.rpc.Status`, gRPC `UNAVAILABLE`.
    Refuse,
    /// Never answers.
    Hang,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Anything else, debug-formatted.
    Other(String),
}

impl AttrValue {
    fn of(v: Option<&AnyValue>) -> AttrValue {
        match v.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
            Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
            Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
            other => AttrValue::Other(format!("{other:?}")),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as text (strings as they are).
    pub fn text(&self) -> String {
        match self {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Other(o) => o.clone(),
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> Vec<(String, AttrValue)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), AttrValue::of(kv.value.as_ref())))
        .collect()
}

fn text_attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    attrs(kvs).into_iter().map(|(k, v)| (k, v.text())).collect()
}

fn resource_attrs(r: Option<&Resource>) -> Vec<(String, String)> {
    r.map(|r| text_attrs(&r.attributes)).unwrap_or_default()
}

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Its resource's attributes, as text.
    pub resource: Vec<(String, String)>,
    /// Its instrumentation scope's name.
    pub scope: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent: Option<[u8; 8]>,
    pub trace_state: String,
    pub attrs: Vec<(String, AttrValue)>,
    pub status: SpanStatus,
    pub status_message: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// The export it came in.
    pub export: usize,
    pub transport: Transport,
}

impl ReceivedSpan {
    /// Attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// String attribute `key`.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }

    /// Resource attribute `key`.
    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The trace id in hex, as W3C `traceparent` writes it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What kind of metric a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A sum (`cumulative`: its temporality is cumulative).
    Sum {
        monotonic: bool,
        cumulative: bool,
    },
    Gauge,
    /// An explicit-bucket histogram.
    Histogram {
        cumulative: bool,
    },
    Other,
}

/// A data point's value.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    Int(i64),
    Double(f64),
    Histogram {
        count: u64,
        sum: Option<f64>,
        bucket_counts: Vec<u64>,
        bounds: Vec<f64>,
    },
    None,
}

/// One data point as received, with its metric's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    pub resource: Vec<(String, String)>,
    pub scope: String,
    pub metric: String,
    pub unit: String,
    pub kind: MetricKind,
    /// Its attributes, as text, in order.
    pub attrs: Vec<(String, String)>,
    pub start_unix_nanos: u64,
    pub time_unix_nanos: u64,
    pub value: PointValue,
    /// The export it came in.
    pub export: usize,
    pub transport: Transport,
}

impl ReceivedPoint {
    /// Attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One export request as received.
#[derive(Debug, Clone)]
pub struct ReceivedExport {
    pub transport: Transport,
    /// The HTTP path (the gRPC method's, for gRPC).
    pub path: String,
    pub headers: HeaderMap,
    /// Spans or data points in it.
    pub items: usize,
}

#[derive(Default)]
struct Collected {
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
    exports: Vec<ReceivedExport>,
}

struct State {
    collected: Mutex<Collected>,
    behavior: Mutex<Behavior>,
    changed: Notify,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral loopback port, accepting every export.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            collected: Mutex::new(Collected::default()),
            behavior: Mutex::new(Behavior::Accept),
            changed: Notify::new(),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections die with the accept loop.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        OtlpReceiver { addr, state, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its origin, `http://127.0.0.1:port`: the gRPC endpoint, and the base
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`) of the HTTP ones.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OTLP/HTTP URL of spans.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint())
    }

    /// The OTLP/HTTP URL of metrics.
    pub fn metrics_url(&self) -> String {
        format!("{}/v1/metrics", self.endpoint())
    }

    /// Changes how it answers from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    /// Every span received so far, in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.collected.lock().unwrap().spans.clone()
    }

    /// Every data point received so far, in order of arrival.
    pub fn metrics(&self) -> Vec<ReceivedPoint> {
        self.state.collected.lock().unwrap().points.clone()
    }

    /// The points of metric `name` in the latest export that had it.
    pub fn latest_points(&self, name: &str) -> Vec<ReceivedPoint> {
        let points = self.metrics();
        let Some(last) = points
            .iter()
            .filter(|p| p.metric == name)
            .map(|p| p.export)
            .max()
        else {
            return Vec::new();
        };
        points
            .into_iter()
            .filter(|p| p.metric == name && p.export == last)
            .collect()
    }

    /// Every export request received so far (refused ones included).
    pub fn exports(&self) -> Vec<ReceivedExport> {
        self.state.collected.lock().unwrap().exports.clone()
    }

    /// Waits until `cond` holds for what was received, at most `timeout`; what was
    /// received then, or `None` when it did not happen.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Collected) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = cond(&self.state.collected.lock().unwrap()) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Waits (at most `timeout`) until at least `n` spans have arrived; all of them.
    /// Panics, naming what did arrive, when they do not.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let got = self
            .wait_until(timeout, |c| (c.spans.len() >= n).then(|| c.spans.clone()))
            .await;
        got.unwrap_or_else(|| {
            let names: Vec<String> = self
                .spans()
                .iter()
                .map(|s| format!("{} ({:?})", s.name, s.kind))
                .collect();
            panic!(
                "{} span(s) expected within {timeout:?}, {} received: {names:?}",
                n,
                names.len()
            )
        })
    }

    /// Waits (at most `timeout`) until metric `name` has arrived; the points of its
    /// latest export. Panics when it does not.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> Vec<ReceivedPoint> {
        let arrived = self
            .wait_until(timeout, |c| {
                c.points.iter().any(|p| p.metric == name).then_some(())
            })
            .await;
        if arrived.is_none() {
            let mut names: Vec<String> = self.metrics().into_iter().map(|p| p.metric).collect();
            names.dedup();
            panic!("metric {name} expected within {timeout:?}; received: {names:?}");
        }
        self.latest_points(name)
    }
}

/// The largest body accepted.
const MAX_BODY: usize = 16 << 20;

type Body = tonic::body::Body;

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Full::new(body.into())));
    *resp.status_mut() = status;
    resp
}

/// What one export holds, flattened.
trait Export: Message + Default + Send + 'static {
    type Answer: Message + Default + Send + 'static;
    /// Adds its items to `c`; how many. `Err`: it is malformed.
    fn collect(self, c: &mut Collected, transport: Transport) -> Result<usize, String>;
}

impl Export for ExportTraceServiceRequest {
    type Answer = ExportTraceServiceResponse;

    fn collect(self, c: &mut Collected, transport: Transport) -> Result<usize, String> {
        let export = c.exports.len();
        let mut spans = Vec::new();
        for rs in &self.resource_spans {
            let resource = resource_attrs(rs.resource.as_ref());
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for s in &ss.spans {
                    let trace_id: [u8; 16] = s.trace_id.as_slice().try_into().map_err(|_| {
                        format!("span {}: a trace id of {} bytes", s.name, s.trace_id.len())
                    })?;
                    let span_id: [u8; 8] = s.span_id.as_slice().try_into().map_err(|_| {
                        format!("span {}: a span id of {} bytes", s.name, s.span_id.len())
                    })?;
                    let parent = match s.parent_span_id.len() {
                        0 => None,
                        _ => Some(s.parent_span_id.as_slice().try_into().map_err(|_| {
                            format!(
                                "span {}: a parent id of {} bytes",
                                s.name,
                                s.parent_span_id.len()
                            )
                        })?),
                    };
                    let status = s.status.clone().unwrap_or_default();
                    spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        name: s.name.clone(),
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        trace_id,
                        span_id,
                        parent,
                        trace_state: s.trace_state.clone(),
                        attrs: attrs(&s.attributes),
                        status: SpanStatus::try_from(status.code).unwrap_or(SpanStatus::Unset),
                        status_message: status.message,
                        start_unix_nanos: s.start_time_unix_nano,
                        end_unix_nanos: s.end_time_unix_nano,
                        export,
                        transport,
                    });
                }
            }
        }
        let n = spans.len();
        c.spans.extend(spans);
        Ok(n)
    }
}

impl Export for ExportMetricsServiceRequest {
    type Answer = ExportMetricsServiceResponse;

    fn collect(self, c: &mut Collected, transport: Transport) -> Result<usize, String> {
        use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
        let export = c.exports.len();
        let cumulative = |t: i32| t == AggregationTemporality::Cumulative as i32;
        let mut points = Vec::new();
        for rm in self.resource_metrics {
            let resource = resource_attrs(rm.resource.as_ref());
            for sm in rm.scope_metrics {
                let scope = sm
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for m in sm.metrics {
                    let point = |kind, kvs: &[KeyValue], start, time, value| ReceivedPoint {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        attrs: text_attrs(kvs),
                        start_unix_nanos: start,
                        time_unix_nanos: time,
                        value,
                        export,
                        transport,
                    };
                    let number = |v: &Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsInt(i)) => PointValue::Int(*i),
                        Some(number_data_point::Value::AsDouble(d)) => PointValue::Double(*d),
                        None => PointValue::None,
                    };
                    match &m.data {
                        Some(metric::Data::Sum(s)) => {
                            let kind = MetricKind::Sum {
                                monotonic: s.is_monotonic,
                                cumulative: cumulative(s.aggregation_temporality),
                            };
                            for p in &s.data_points {
                                points.push(point(
                                    kind,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    number(&p.value),
                                ));
                            }
                        }
                        Some(metric::Data::Gauge(g)) => {
                            for p in &g.data_points {
                                points.push(point(
                                    MetricKind::Gauge,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    number(&p.value),
                                ));
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            let kind = MetricKind::Histogram {
                                cumulative: cumulative(h.aggregation_temporality),
                            };
                            for p in &h.data_points {
                                points.push(point(
                                    kind,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    PointValue::Histogram {
                                        count: p.count,
                                        sum: p.sum,
                                        bucket_counts: p.bucket_counts.clone(),
                                        bounds: p.explicit_bounds.clone(),
                                    },
                                ));
                            }
                        }
                        _ => points.push(point(MetricKind::Other, &[], 0, 0, PointValue::None)),
                    }
                }
            }
        }
        let n = points.len();
        c.points.extend(points);
        Ok(n)
    }
}

/// Keeps `export` (or not, as the receiver behaves): the status to answer.
async fn receive<E: Export>(
    state: &State,
    export: E,
    transport: Transport,
    path: &str,
    headers: HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let behavior = *state.behavior.lock().unwrap();
    let result = {
        let mut c = state.collected.lock().unwrap();
        let result = match behavior {
            Behavior::Accept => export.collect(&mut c, transport),
            Behavior::Refuse | Behavior::Hang => Ok(0),
        };
        c.exports.push(ReceivedExport {
            transport,
            path: path.to_string(),
            headers,
            items: *result.as_ref().unwrap_or(&0),
        });
        result
    };
    state.changed.notify_waiters();
    match (behavior, result) {
        (Behavior::Hang, _) => std::future::pending().await,
        (Behavior::Refuse, _) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the receiver refuses exports".into(),
        )),
        (Behavior::Accept, Err(e)) => Err((StatusCode::BAD_REQUEST, e)),
        (Behavior::Accept, Ok(_)) => Ok(()),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let post = req.method() == Method::POST;
    match path.as_str() {
        "/v1/traces" if post => http_export::<ExportTraceServiceRequest>(state, req).await,
        "/v1/metrics" if post => http_export::<ExportMetricsServiceRequest>(state, req).await,
        TRACE_EXPORT => grpc_export::<ExportTraceServiceRequest>(state, req).await,
        METRICS_EXPORT => grpc_export::<ExportMetricsServiceRequest>(state, req).await,
        _ => plain(StatusCode::NOT_FOUND, format!("no OTLP receiver at {path}")),
    }
}

/// `google.rpc.Status`, as OTLP/HTTP error bodies carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

async fn http_export<E: Export>(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_none_or(|v| v != "application/x-protobuf")
    {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/x-protobuf",
        );
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let export = match E::decode(body) {
        Ok(e) => e,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("not OTLP protobuf: {e}")),
    };
    match receive(&state, export, Transport::Http, &path, parts.headers).await {
        Ok(()) => {
            let mut resp = plain(StatusCode::OK, E::Answer::default().encode_to_vec());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            resp
        }
        Err((status, message)) => {
            let body = RpcStatus { code: 14, message }.encode_to_vec();
            plain(status, body)
        }
    }
}

async fn grpc_export<E: Export>(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<E::Answer, E>::default());
    grpc.unary(
        tower::service_fn(move |r: tonic::Request<E>| {
            let state = state.clone();
            let path = path.clone();
            let headers = headers.clone();
            async move {
                match receive(&state, r.into_inner(), Transport::Grpc, &path, headers).await {
                    Ok(()) => Ok(tonic::Response::new(E::Answer::default())),
                    Err((StatusCode::BAD_REQUEST, m)) => Err(tonic::Status::invalid_argument(m)),
                    Err((_, m)) => Err(tonic::Status::unavailable(m)),
                }
            }
        }),
        req,
    )
    .await
}
