//! A request's measurements on their way to [`Metrics`] and the access log: started when
//! the request arrives, completed by its response's head (status, flags) and body (bytes,
//! a gRPC status in trailers), recorded once when the body ends — or when it is dropped
//! before its end, flagged `DC` (the caller went away), as Envoy records a downstream
//! reset.
//!
//! A gRPC request's messages are counted on the way (see [`messages`](super::messages)):
//! the response's by the meter, the request's by its body; both reach their series as
//! soon as the request's two ends are known.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Frame;
use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};

use super::messages::{Counting, Messages, RequestMessages};
use super::metrics::{Labels, Metrics, Reporter, Sample, Security};
use super::spans::{Ending, Span};
use crate::flags::ResponseFlags;

/// The size of headers as Envoy approximates it: names and values.
pub(crate) fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

/// The size of a request or response head and its declared body.
pub(crate) fn declared_bytes(headers: &HeaderMap, body_hint: Option<u64>) -> u64 {
    header_bytes(headers) + declared_body(headers, body_hint)
}

/// The `grpc-status` of headers or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get(super::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The two ends of a request and how it is reported.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    pub(crate) reporter: Reporter,
    pub(crate) source: Arc<PeerLabels>,
    pub(crate) source_principal: bool,
    pub(crate) destination: Arc<PeerLabels>,
    pub(crate) destination_principal: bool,
    pub(crate) service: Arc<ServiceLabels>,
    pub(crate) security: Security,
    /// The metrics' shape; `None`: the side reports no metrics.
    pub(crate) profile: Option<Arc<MetricProfile>>,
}

impl Ends {
    /// The labels of a request between these ends with the outcome given, when the
    /// side reports metrics.
    fn labels(
        &self,
        grpc: bool,
        code: u16,
        grpc_status: Option<u16>,
        flags: ResponseFlags,
    ) -> Option<Labels<'_>> {
        Some(Labels {
            reporter: self.reporter,
            source: &self.source,
            source_principal: self.source_principal,
            destination: &self.destination,
            destination_principal: self.destination_principal,
            service: &self.service,
            grpc,
            code,
            grpc_status,
            flags,
            security: self.security,
            profile: self.profile.as_ref()?,
        })
    }

    /// `messages` go to the series of these ends from now on.
    fn attach(&self, metrics: &Metrics, messages: &Messages) {
        if messages.is_known() {
            messages.end();
            return;
        }
        if let Some(labels) = self.labels(true, 0, None, ResponseFlags::NONE) {
            messages.known(|| metrics.message_series(&labels));
        }
    }
}

/// What the access log needs beyond the metrics.
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub(crate) request: super::access_log::Request,
    pub(crate) sink: super::access_log::AccessLogSink,
    /// The upstream host that answered, when known.
    pub(crate) upstream_host: Option<Arc<str>>,
    /// True when the upstream (or the application) answered, not the mesh.
    pub(crate) via_upstream: bool,
    /// The request body's declared size.
    pub(crate) body_received: u64,
    /// The response's headers, when a filter may read them.
    pub(crate) response_headers: Option<HeaderMap>,
}

/// One request's measurements (see the module documentation).
#[derive(Debug)]
pub(crate) struct Meter {
    metrics: Arc<Metrics>,
    ends: Ends,
    log: Option<Box<LogEntry>>,
    grpc: bool,
    start: Instant,
    request_bytes: u64,
    response_bytes: u64,
    response_body_bytes: u64,
    code: u16,
    grpc_status: Option<u16>,
    flags: ResponseFlags,
    recorded: bool,
    /// The request's span, when sampled, and the cluster it went to.
    span: Option<(Box<Span>, Option<Arc<str>>)>,
    /// A gRPC request's message counts: the response's are counted here.
    messages: Option<Counting>,
}

impl Meter {
    /// A request that arrived at `start`, of `request_bytes`, with its response's head.
    pub(crate) fn new<B>(
        metrics: Arc<Metrics>,
        ends: Ends,
        log: Option<Box<LogEntry>>,
        grpc: bool,
        start: Instant,
        request_bytes: u64,
        resp: &Response<B>,
    ) -> Self {
        let grpc_status = if grpc {
            grpc_status(resp.headers())
        } else {
            None
        };
        let mut log = log;
        if let Some(l) = &mut log
            && l.request.filter.is_some()
        {
            l.response_headers = Some(resp.headers().clone());
        }
        Meter {
            metrics,
            ends,
            log,
            grpc,
            start,
            request_bytes,
            response_bytes: header_bytes(resp.headers()),
            response_body_bytes: 0,
            code: resp.status().as_u16(),
            grpc_status,
            flags: ResponseFlags::of(resp),
            recorded: false,
            span: None,
            messages: None,
        }
    }

    /// Counts the response's gRPC messages into the request's `messages`, which go to
    /// their series from now on (the request's ends are known).
    fn count_messages(&mut self, messages: Option<Arc<Messages>>) {
        if let Some(m) = messages {
            self.ends.attach(&self.metrics, &m);
            self.messages = Some(Counting::response(m));
        }
    }

    /// Counts a frame of the response body.
    pub(crate) fn frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.response_bytes += data.len() as u64;
            self.response_body_bytes += data.len() as u64;
            if let Some(m) = &mut self.messages {
                m.data(data);
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.response_bytes += header_bytes(trailers);
            if self.grpc
                && let Some(s) = grpc_status(trailers)
            {
                self.grpc_status = Some(s);
            }
        }
    }

    /// The response ended: records it.
    pub(crate) fn end(&mut self) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let duration = self.start.elapsed();
        if let Some(m) = &self.messages {
            m.messages().end();
        }
        let e = &self.ends;
        if let Some(labels) = e.labels(self.grpc, self.code, self.grpc_status, self.flags) {
            self.metrics.record(
                &labels,
                Sample {
                    duration,
                    request_bytes: self.request_bytes,
                    response_bytes: self.response_bytes,
                },
            );
        }
        if let Some((span, cluster)) = self.span.take() {
            span.finish(&Ending {
                code: self.code,
                flags: self.flags,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                grpc_status: self.grpc_status,
                upstream_cluster: cluster.as_deref(),
                upstream_host: self.log.as_ref().and_then(|l| l.upstream_host.as_deref()),
            });
        }
        if let Some(log) = &self.log {
            let outcome = super::access_log::Outcome {
                code: self.code,
                flags: self.flags,
                via_upstream: log.via_upstream,
                bytes_received: log.body_received,
                bytes_sent: self.response_body_bytes,
                duration,
                upstream_host: log.upstream_host.as_deref(),
                grpc_status: self.grpc_status,
                response_headers: log.response_headers.as_ref(),
                response_header_bytes: self.response_bytes - self.response_body_bytes,
            };
            if super::access_log::admitted(&log.request, &outcome) {
                log.sink
                    .write(&super::access_log::entry(&log.request, &outcome));
            }
        }
    }
}

impl Drop for Meter {
    /// Dropped before its body ended: the caller went away (`DC`).
    fn drop(&mut self) {
        if !self.recorded {
            self.flags |= ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
            self.end();
        }
    }
}

/// Labels nothing is known of, shared.
pub(crate) fn unknown_peer() -> &'static Arc<PeerLabels> {
    static UNKNOWN: std::sync::OnceLock<Arc<PeerLabels>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::new(PeerLabels::unknown()))
}

/// A service nothing is known of, shared.
pub(crate) fn unknown_service() -> &'static Arc<ServiceLabels> {
    static UNKNOWN: std::sync::OnceLock<Arc<ServiceLabels>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::new(ServiceLabels::unknown()))
}

/// Where a caller's request went, as far as its route says.
#[derive(Debug)]
pub(crate) enum Target {
    /// A cluster: its service, and the endpoint the answer names.
    Cluster(Arc<mesh_core::cluster::Cluster>),
    /// A service without endpoints to name (a host outside the registry, a missing
    /// cluster, no route).
    Service(Arc<ServiceLabels>),
}

/// What the caller's side knows of a request before its answer (`reporter="source"`).
#[derive(Debug)]
pub(crate) struct Outbound {
    metrics: Arc<Metrics>,
    profile: Option<Arc<MetricProfile>>,
    log: Option<Box<LogEntry>>,
    source: Arc<PeerLabels>,
    /// `None` until routed (then an unknown service).
    target: Option<Target>,
    start: Instant,
    request_bytes: u64,
    grpc: bool,
    span: Option<Box<Span>>,
    cluster: Option<Arc<str>>,
    /// A gRPC request's message counts, when they are reported.
    messages: Option<Arc<Messages>>,
    /// The span is named by a route of a cluster (then sent to the next hop).
    named: bool,
}

impl Outbound {
    /// A request of the workload `telemetry` describes, not routed yet, with its span if
    /// sampled; `None` when the workload neither reports, logs nor traces the requests it
    /// sends.
    pub(crate) fn start<B: http_body::Body>(
        runtime: &crate::MeshRuntime,
        telemetry: &mesh_core::telemetry::WorkloadTelemetry,
        req: &http::Request<B>,
        span: Option<Box<Span>>,
    ) -> Option<Self> {
        let profile = telemetry.client_metrics.clone();
        let log = telemetry.client_log.as_ref().map(|settings| {
            let mut request = super::access_log::Request::of(settings, req);
            // A gateway's requests arrived on its listener.
            let ext = req.extensions();
            request.downstream_local = ext.get::<crate::inbound::LocalAddr>().map(|l| l.0);
            request.downstream_remote = ext.get::<crate::inbound::PeerAddr>().map(|p| p.0);
            Box::new(LogEntry {
                request,
                sink: runtime.access_log_sink(),
                upstream_host: None,
                via_upstream: false,
                body_received: declared_body(req.headers(), req.body().size_hint().exact()),
                response_headers: None,
            })
        });
        if profile.is_none() && log.is_none() && span.is_none() {
            return None;
        }
        let grpc = crate::inbound::is_grpc(req.headers());
        let messages =
            (grpc && profile.as_ref().is_some_and(|p| p.counts_messages())).then(Messages::new);
        Some(Outbound {
            span,
            cluster: None,
            messages,
            named: false,
            profile,
            log,
            metrics: runtime.metrics().clone(),
            source: telemetry.me.clone(),
            target: None,
            start: Instant::now(),
            request_bytes: declared_bytes(req.headers(), req.body().size_hint().exact()),
            grpc,
        })
    }

    /// Counts the gRPC messages of `body`, the request's body as the caller sends it,
    /// when the request's message counts are reported (else leaves it as it is).
    pub(crate) fn count_request(&self, body: &mut crate::ReqBody) {
        if let Some(m) = &self.messages {
            body.count_messages(m.clone());
        }
    }

    /// The request was routed: where it goes, and the route and cluster its entry names.
    pub(crate) fn routed(&mut self, route: &crate::outbound::Route) {
        self.target = Some(crate::outbound::route::target_of(route));
        if let Some(span) = &mut self.span {
            match route.upstream() {
                mesh_core::Upstream::Cluster(c) => {
                    if let Some(op) = super::spans::operation(route) {
                        span.name(op);
                        self.named = true;
                    }
                    self.cluster = Some(c.name.clone());
                }
                mesh_core::Upstream::Passthrough { .. } => {
                    self.cluster = Some(Arc::from("PassthroughCluster"));
                }
                mesh_core::Upstream::Missing { .. } => {}
            }
        }
        if let Some(log) = &mut self.log {
            log.request.route_name = Some(match route.rule() {
                Some(rule) => rule.origin.name.clone().unwrap_or_else(|| Arc::from("-")),
                None => Arc::from("default"),
            });
            log.request.cluster = match route.upstream() {
                mesh_core::Upstream::Cluster(c) => Some(c.name.clone()),
                mesh_core::Upstream::Passthrough { .. } => Some(Arc::from("PassthroughCluster")),
                mesh_core::Upstream::Missing { .. } => None,
            };
        }
    }

    /// Names the routed request's operation to the next hop, when it is traced.
    pub(crate) fn decorate(&self, headers: &mut HeaderMap) {
        // Istio's passthrough and missing routes have no decorator.
        if let Some(span) = self.span.as_ref().filter(|_| self.named) {
            span.decorate(headers);
        }
    }

    /// The ends of the request, once `endpoint` (its index in the cluster) answered,
    /// over the mesh's mutual TLS or not: the caller's labels and profile moved in, not
    /// cloned (each clone is a count every request on every worker shares).
    fn ends(
        source: Arc<PeerLabels>,
        profile: Option<Arc<MetricProfile>>,
        target: Option<Target>,
        endpoint: Option<u32>,
        mtls: bool,
    ) -> Ends {
        let (destination, service) = match target {
            Some(Target::Cluster(c)) => (
                endpoint
                    .and_then(|i| c.endpoints.get(i as usize))
                    .map_or_else(|| unknown_peer().clone(), |e| e.peer.clone()),
                c.service_labels.clone(),
            ),
            Some(Target::Service(s)) => (unknown_peer().clone(), s),
            None => (unknown_peer().clone(), unknown_service().clone()),
        };
        Ends {
            reporter: Reporter::Source,
            source,
            source_principal: mtls,
            destination,
            destination_principal: mtls,
            service,
            security: Security::Unknown,
            profile,
        }
    }

    /// The answer arrived: its body records the request when it ends.
    pub(crate) fn answered(mut self, resp: &mut Response<crate::ResBody>) {
        let endpoint = resp.body().endpoint;
        if let Some(log) = &mut self.log {
            let answered_by = match (&self.target, endpoint) {
                (Some(Target::Cluster(c)), Some(i)) => {
                    c.endpoints.get(i as usize).map(|e| e.id.clone())
                }
                _ => None,
            };
            log.via_upstream =
                answered_by.is_some() && resp.extensions().get::<crate::MeshFailure>().is_none();
            log.upstream_host = answered_by;
        }
        let ends = Outbound::ends(
            self.source,
            self.profile,
            self.target,
            endpoint,
            resp.body().mtls,
        );
        let mut meter = Meter::new(
            self.metrics,
            ends,
            self.log,
            self.grpc,
            self.start,
            self.request_bytes,
            resp,
        );
        meter.span = self.span.map(|s| (s, self.cluster));
        meter.count_messages(self.messages);
        resp.body_mut().meter(meter);
    }

    /// `resp`, metered (see [`answered`](Self::answered)).
    pub(crate) fn answer(self, mut resp: Response<crate::ResBody>) -> Response<crate::ResBody> {
        self.answered(&mut resp);
        resp
    }

    /// The caller gave up before the answer: recorded with no response (`0`) and `DC`.
    pub(crate) fn abandoned(self) {
        let ends = Outbound::ends(self.source, self.profile, self.target, None, false);
        let mut meter = Meter {
            metrics: self.metrics,
            ends,
            log: self.log,
            grpc: self.grpc,
            start: self.start,
            request_bytes: self.request_bytes,
            response_bytes: 0,
            response_body_bytes: 0,
            code: 0,
            grpc_status: None,
            flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            recorded: false,
            span: self.span.map(|s| (s, self.cluster)),
            messages: None,
        };
        // Istio reports the messages sent with what is known of the ends.
        meter.count_messages(self.messages);
        meter.end();
    }
}

/// The size of a request body as its head declares it.
fn declared_body(headers: &HeaderMap, hint: Option<u64>) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(hint)
        .unwrap_or(0)
}

pin_project_lite::pin_project! {
    /// A caller's response future that meters the request (see [`Outbound`]).
    pub struct Metered<F> {
        #[pin]
        fut: F,
        meter: Option<Outbound>,
    }

    impl<F> PinnedDrop for Metered<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(m) = this.project().meter.take() {
                m.abandoned();
            }
        }
    }
}

impl<F> Metered<F> {
    pub(crate) fn new(fut: F, meter: Option<Outbound>) -> Self {
        Metered { fut, meter }
    }
}

impl<F, E> std::future::Future for Metered<F>
where
    F: std::future::Future<Output = Result<Response<crate::ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.fut.poll(cx));
        if let Some(m) = this.meter.take() {
            match &mut out {
                Ok(resp) => m.answered(resp),
                // An error is no answer (the caller's client maps it).
                Err(_) => m.abandoned(),
            }
        }
        std::task::Poll::Ready(out)
    }
}

/// What the server's side knows of a request on its arrival (`reporter="destination"`).
#[derive(Debug)]
pub(crate) struct Arrival {
    metrics: Arc<Metrics>,
    ends: Ends,
    log: Option<Box<LogEntry>>,
    start: Instant,
    request_bytes: u64,
    grpc: bool,
    /// Its span, when sampled, and the inbound cluster.
    span: PendingSpan,
    /// A gRPC request's message counts, when they are reported.
    messages: Option<Arc<Messages>>,
}

/// A server span not handed to a meter yet: should its request be dropped first (the
/// caller went away before the application answered), it ends with no response and
/// `DC`, so that the spans of the calls the handler made keep their parent.
#[derive(Debug)]
struct PendingSpan(Option<(Box<Span>, Option<Arc<str>>)>);

impl Drop for PendingSpan {
    fn drop(&mut self) {
        if let Some((span, cluster)) = self.0.take() {
            span.finish(&Ending {
                code: 0,
                flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                request_bytes: 0,
                response_bytes: 0,
                grpc_status: None,
                upstream_cluster: cluster.as_deref(),
                upstream_host: None,
            });
        }
    }
}

impl Arrival {
    /// A request arriving at `mesh`'s workload; `None` when the workload neither
    /// reports nor logs the requests it serves (or has no view of the configuration).
    ///
    /// Also starts its span (writing the context the application sees) and gives the
    /// request its handler serves, which the handler's own requests continue. `request_id`
    /// is the request's `x-request-id`, already ensured.
    pub(crate) fn of<B>(
        mesh: &crate::Mesh,
        req: &mut http::Request<B>,
        request_id: http::HeaderValue,
    ) -> (Option<Arrival>, super::spans::Current) {
        let generation = mesh.runtime().generation();
        let view = generation.view(mesh.slot());
        let (mut span, current) =
            super::spans::server(mesh.runtime(), view.map(|v| v.telemetry()), req, request_id);
        let Some(view) = view else {
            return (None, current);
        };
        let telemetry = view.telemetry();
        let profile = telemetry.server_metrics.clone();
        if profile.is_none() && telemetry.server_log.is_none() && span.is_none() {
            return (None, current);
        }
        // The caller's operation names the span; Envoy does not pass it to the
        // application.
        let decorator = match span {
            Some(_) => req
                .headers_mut()
                .remove(&mesh_core::trace::header::X_ENVOY_DECORATOR_OPERATION),
            None => None,
        };
        // A gRPC request's counts: the request's messages are counted by the body the
        // application reads, when it takes it through `GrpcMessagesLayer`.
        let grpc = crate::inbound::is_grpc(req.headers());
        let messages =
            (grpc && profile.as_ref().is_some_and(|p| p.counts_messages())).then(Messages::new);
        if let Some(m) = &messages {
            req.extensions_mut().insert(RequestMessages(m.clone()));
        }
        let req = &*req;
        let peer = req.extensions().get::<crate::identity::PeerIdentity>();
        let identity = peer.map(|i| i.spiffe_id().as_str());
        let source = caller(&generation, req.headers(), identity);
        let authority = super::authority(req);
        let service = telemetry
            .service_for(authority)
            .unwrap_or_else(|| unknown_service())
            .clone();
        let log = telemetry.server_log.as_ref().map(|settings| {
            let mut request = super::access_log::Request::of(settings, req);
            request.mtls = peer.is_some();
            let local = req
                .extensions()
                .get::<crate::inbound::LocalAddr>()
                .map(|l| l.0);
            request.downstream_local = local;
            request.downstream_remote = req
                .extensions()
                .get::<crate::inbound::PeerAddr>()
                .map(|p| p.0);
            request.server_name = peer.and_then(|p| p.sni()).map(Arc::from);
            request.route_name = Some(Arc::from("default"));
            request.cluster = local.map(|l| Arc::from(format!("inbound|{}||", l.port())));
            request.upstream_host = local.map(|l| Arc::from(l.to_string()));
            Box::new(LogEntry {
                request,
                sink: mesh.runtime().access_log_sink(),
                upstream_host: None,
                via_upstream: false,
                body_received: declared_body(req.headers(), None),
                response_headers: None,
            })
        });
        let local = req
            .extensions()
            .get::<crate::inbound::LocalAddr>()
            .map(|l| l.0);
        if let Some(span) = &mut span {
            // The caller's operation (Envoy's `x-envoy-decorator-operation`), else the
            // service's host with the port the request arrived on, else `ingress`.
            let own = match local {
                Some(l) if &*service.host != mesh_core::telemetry::UNKNOWN => Some(
                    mesh_core::trace::default_route_operation(&service.host, l.port()),
                ),
                _ => None,
            };
            let name = mesh_core::trace::span_name(
                mesh_core::trace::Direction::Inbound,
                own.as_deref(),
                decorator.as_ref(),
                authority,
            );
            span.name(name.into_owned());
        }
        let arrival = Arrival {
            span: PendingSpan(span.map(|s| {
                let cluster = local.map(|l| Arc::from(format!("inbound|{}||", l.port())));
                (s, cluster)
            })),
            metrics: mesh.runtime().metrics().clone(),
            ends: Ends {
                reporter: Reporter::Destination,
                source,
                source_principal: identity.is_some(),
                destination: telemetry.me.clone(),
                destination_principal: identity.is_some(),
                service,
                security: if identity.is_some() {
                    Security::MutualTls
                } else {
                    Security::None
                },
                profile,
            },
            log,
            start: Instant::now(),
            request_bytes: declared_bytes(req.headers(), None),
            grpc,
            messages,
        };
        // The server knows both ends on arrival: the counts go to their series at once.
        if let Some(m) = &arrival.messages {
            arrival.ends.attach(&arrival.metrics, m);
        }
        (Some(arrival), current)
    }

    /// The meter of the request answered `resp` — by the application (`by_app`) or by
    /// the mesh.
    pub(crate) fn meter<B>(mut self, resp: &Response<B>, by_app: bool) -> Meter {
        if let Some(log) = &mut self.log {
            log.via_upstream = by_app;
        }
        let mut meter = Meter::new(
            self.metrics,
            self.ends,
            self.log,
            self.grpc,
            self.start,
            self.request_bytes,
            resp,
        );
        meter.span = self.span.0.take();
        meter.count_messages(self.messages.take());
        meter
    }
}

/// The caller a server names in its metrics: the workload its baggage names, when the
/// configuration (or the process) has it and — over mutual TLS, whose verified
/// `identity` is given — when that workload's principal is the connection's; a caller
/// known only by its identity is `unknown` but for its principal.
fn caller(
    generation: &crate::runtime::Generation,
    headers: &HeaderMap,
    identity: Option<&str>,
) -> Arc<PeerLabels> {
    let mut values = headers.get_all(super::BAGGAGE).iter();
    let first = values.next();
    // The common case: one baggage header, exactly as a workload of the configuration
    // sends it.
    let exact = match (first, values.next()) {
        (Some(v), None) => generation
            .views
            .iter()
            .map(|view| view.telemetry())
            .find(|t| t.baggage.as_bytes() == v.as_bytes())
            .map(|t| &t.me)
            .or_else(|| generation.mesh.peers().by_baggage(v.as_bytes())),
        _ => None,
    };
    let named = exact.or_else(|| {
        headers
            .get_all(super::BAGGAGE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(mesh_core::telemetry::baggage_peer)
            .next_back()
            .and_then(|(name, namespace)| {
                generation.mesh.peers().get(name, namespace).or_else(|| {
                    generation.views.iter().find_map(|v| {
                        let w = v.workload();
                        (w.name == name && w.namespace == namespace).then(|| &v.telemetry().me)
                    })
                })
            })
    });
    match (named, identity) {
        (Some(p), None) => p.clone(),
        (Some(p), Some(id)) if &*p.principal == id => p.clone(),
        (_, Some(id)) => Arc::new(PeerLabels::unknown_with_principal(id)),
        (None, None) => unknown_peer().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC stream of messages of `lengths` bytes.
    fn grpc(lengths: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for len in lengths {
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend(std::iter::repeat_n(7u8, *len as usize));
        }
        out
    }

    fn ends(reporter: Reporter, profile: Option<MetricProfile>) -> Ends {
        Ends {
            reporter,
            source: unknown_peer().clone(),
            source_principal: false,
            destination: unknown_peer().clone(),
            destination_principal: false,
            service: unknown_service().clone(),
            security: Security::Unknown,
            profile: profile.map(Arc::new),
        }
    }

    fn answer(grpc: bool) -> Response<()> {
        let mut resp = Response::new(());
        if grpc {
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
        }
        resp
    }

    fn data(bytes: &[u8]) -> Frame<Bytes> {
        Frame::data(Bytes::copy_from_slice(bytes))
    }

    /// The message counts of `metrics`' only series, if it reports one.
    fn counts(metrics: &Metrics) -> Option<(u64, u64)> {
        let readings = metrics.read_messages();
        assert!(readings.len() <= 1, "{readings:?}");
        readings
            .first()
            .map(|r| (r.request_messages, r.response_messages))
    }

    #[test]
    fn a_grpc_requests_messages_reach_its_series_while_it_streams() {
        let metrics = Arc::new(Metrics::new());
        let ends = ends(Reporter::Source, Some(MetricProfile::standard()));
        let messages = Messages::new();
        // The caller sends two messages before the answer: they wait for the ends.
        let mut request = Counting::request(messages.clone());
        let sent = grpc(&[3, 0]);
        request.data(&sent[..6]);
        request.data(&sent[6..]);
        assert_eq!(counts(&metrics), None);

        let mut meter = Meter::new(
            metrics.clone(),
            ends,
            None,
            true,
            Instant::now(),
            0,
            &answer(true),
        );
        meter.count_messages(Some(messages.clone()));
        assert_eq!(counts(&metrics), Some((2, 0)));
        // Three response messages, the first split across two frames; one more request
        // message while the response streams.
        let answered = grpc(&[10, 1, 2]);
        meter.frame(&data(&answered[..3]));
        meter.frame(&data(&answered[3..12]));
        assert_eq!(counts(&metrics), Some((2, 1)));
        request.data(&grpc(&[1]));
        meter.frame(&data(&answered[12..]));
        assert_eq!(counts(&metrics), Some((3, 3)));
        let mut trailers = HeaderMap::new();
        trailers.insert(
            super::super::GRPC_STATUS,
            http::HeaderValue::from_static("0"),
        );
        meter.frame(&Frame::trailers(trailers));
        meter.end();
        assert_eq!(counts(&metrics), Some((3, 3)));
        // The request itself is counted once, with its outcome.
        let reading = metrics.read();
        assert_eq!(reading.len(), 1);
        assert_eq!(reading[0].requests, 1);
        assert_eq!(reading[0].label("grpc_response_status"), Some("0"));
        assert_eq!(reading[0].label("request_protocol"), Some("grpc"));
    }

    #[test]
    fn only_a_grpc_request_that_sent_a_message_has_message_series() {
        // (reports messages, gRPC, request messages, response body)
        type Case<'a> = (bool, bool, &'a [u32], &'a [u32], Option<(u64, u64)>);
        let cases: &[Case<'_>] = &[
            // A trailers-only answer (a refusal) to a request that sent nothing.
            (true, true, &[], &[], None),
            // The request's message, no answer's: both counts, one of them zero.
            (true, true, &[4], &[], Some((1, 0))),
            (true, true, &[], &[0], Some((0, 1))),
            // Not gRPC: no counting at all, whatever the body looks like.
            (true, false, &[4], &[4], None),
            // The side reports no message count.
            (false, true, &[4], &[4], None),
        ];
        for (reports, is_grpc, sent, answered, want) in cases {
            let metrics = Arc::new(Metrics::new());
            let mut profile = MetricProfile::standard();
            for s in profile.shapes.iter_mut().skip(4) {
                s.enabled = *reports;
            }
            let ends = ends(Reporter::Destination, Some(profile));
            let counted = *is_grpc && ends.profile.as_ref().is_some_and(|p| p.counts_messages());
            let messages = counted.then(Messages::new);
            if let Some(m) = &messages {
                ends.attach(&metrics, m);
                Counting::request(m.clone()).data(&grpc(sent));
            }
            let mut meter = Meter::new(
                metrics.clone(),
                ends,
                None,
                *is_grpc,
                Instant::now(),
                0,
                &answer(*is_grpc),
            );
            meter.count_messages(messages);
            meter.frame(&data(&grpc(answered)));
            drop(meter);
            let case = format!("{reports} {is_grpc} {sent:?} {answered:?}");
            assert_eq!(counts(&metrics), *want, "{case}");
            assert_eq!(metrics.series_count(), 1, "{case}");
        }
    }
}
