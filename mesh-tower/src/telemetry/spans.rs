//! Traces: a client span for each request a workload sends (and the gateway forwards), a
//! server span for each request a workload serves, named and tagged as Envoy names and
//! tags Istio's, exported over OTLP when the runtime has a span exporter.
//!
//! The trace context travels on the wire in W3C `traceparent`/`tracestate` and B3 (single
//! and multi-header), as [`mesh_core::trace`] reads and writes them, next to the
//! `x-request-id` whose hash decides sampling as Envoy's does. Beyond Istio, the
//! application does not copy headers: while `mesh.inbound()` polls a handler, the request
//! it serves (its server span and request ID) is the task's *current* request, and a
//! request the handler sends through `mesh.client()` without trace headers of its own
//! continues it. A handler that spawns a task of its own takes the context with it through
//! the headers (or [`current`] and `scope`), as with OpenTelemetry's context.
//!
//! Unsampled requests cost the context headers and no span: nothing is allocated for a
//! span unless it is sampled and reported.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use mesh_core::telemetry::{PeerLabels, SpanTagValue, TraceSettings};
use mesh_core::trace::{
    self, Extracted, Format, RemoteSpan, Sampling, SamplingInput, SpanContext, SpanId, tag,
};

use super::otlp::{AttributeValue, Resource, SpanExporter, SpanKind, SpanRecord};
use crate::flags::ResponseFlags;

/// The request a handler is serving, as the requests it sends continue it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// The server span of the request (when tracing is on).
    pub span: Option<SpanContext>,
    /// Its `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// Its trace context arrived in B3, which the requests it sends then carry too.
    pub b3: bool,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// The request the running handler serves, when it runs under `mesh.inbound()`.
pub fn current() -> Option<Current> {
    CURRENT.try_with(Current::clone).ok()
}

/// Runs `f` with `current` as the task's current request.
pub(crate) fn in_scope<R>(current: &Current, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(current.clone(), f)
}

/// `fut` with `current` as its current request, for futures polled elsewhere.
pub(crate) fn scoped<F: std::future::Future>(
    current: Current,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(current, fut)
}

/// A sampled span, on its way to the exporter when its request ends.
#[derive(Debug)]
pub(crate) struct Span {
    exporter: Arc<SpanExporter>,
    context: SpanContext,
    parent: Option<SpanId>,
    kind: SpanKind,
    name: String,
    start: SystemTime,
    attributes: Vec<(&'static str, AttributeValue)>,
    resource: Arc<Resource>,
}

/// How a request ended, for its span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ending<'a> {
    pub(crate) code: u16,
    pub(crate) flags: ResponseFlags,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) upstream_cluster: Option<&'a str>,
    pub(crate) upstream_host: Option<&'a str>,
}

impl Span {
    /// Names the span (Envoy's operation: the route's, known once the request is routed).
    pub(crate) fn name(&mut self, name: String) {
        self.name = name;
    }

    /// Sends the span's operation to the next hop (`x-envoy-decorator-operation`), so that
    /// the server's span takes the same name, as Envoy's router does.
    pub(crate) fn decorate(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            headers.insert(trace::header::X_ENVOY_DECORATOR_OPERATION.clone(), v);
        }
    }

    /// The request ended: the span goes to the exporter.
    pub(crate) fn finish(self, end: &Ending<'_>) {
        let mut attributes = self.attributes;
        attributes.push((
            tag::HTTP_STATUS_CODE,
            AttributeValue::Str(end.code.to_string()),
        ));
        attributes.push((
            tag::RESPONSE_FLAGS,
            AttributeValue::Str(end.flags.to_string()),
        ));
        attributes.push((
            tag::REQUEST_SIZE,
            AttributeValue::Str(end.request_bytes.to_string()),
        ));
        attributes.push((
            tag::RESPONSE_SIZE,
            AttributeValue::Str(end.response_bytes.to_string()),
        ));
        if let Some(s) = end.grpc_status {
            attributes.push((tag::GRPC_STATUS_CODE, AttributeValue::Str(s.to_string())));
        }
        if let Some(c) = end.upstream_cluster {
            attributes.push((tag::UPSTREAM_CLUSTER, AttributeValue::Str(c.to_string())));
            attributes.push((
                tag::UPSTREAM_CLUSTER_NAME,
                AttributeValue::Str(c.to_string()),
            ));
        }
        if let Some(h) = end.upstream_host {
            attributes.push((tag::UPSTREAM_ADDRESS, AttributeValue::Str(h.to_string())));
        }
        // Envoy marks a span failed on a 5xx (or no response), and on a gRPC error.
        let error = end.code >= 500 || end.code == 0;
        if error {
            attributes.push((tag::ERROR, AttributeValue::Static(tag::ERROR_TRUE)));
        }
        self.exporter.submit(SpanRecord {
            trace_id: self.context.trace_id.to_bytes(),
            span_id: self.context.span_id.to_bytes(),
            parent_span_id: self.parent.map(SpanId::to_bytes),
            trace_state: self
                .context
                .tracestate
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            name: self.name,
            kind: self.kind,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
            resource: self.resource,
        });
    }
}

/// The resource of a workload's spans: `service.name` as Istio's proxies report it
/// (`{canonical service}.{namespace}`), with its namespace and workload.
fn resource(me: &PeerLabels) -> Arc<Resource> {
    Arc::new(Resource::new([
        (
            "service.name",
            format!("{}.{}", me.canonical_service, me.namespace),
        ),
        ("k8s.namespace.name", me.namespace.to_string()),
        ("k8s.deployment.name", me.workload.to_string()),
        ("service.version", me.canonical_revision.to_string()),
    ]))
}

/// What a request's headers, or else the current request, say of its trace.
fn incoming(headers: &HeaderMap, current: Option<&Current>) -> Option<Extracted> {
    trace::extract(headers).or_else(|| {
        let span = current?.span.as_ref()?;
        Some(Extracted {
            format: Format::TraceContext,
            remote: Some(RemoteSpan {
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: None,
            }),
            sampling: match (span.debug, span.sampled) {
                (true, _) => Sampling::Debug,
                (false, true) => Sampling::Accept,
                (false, false) => Sampling::Deny,
            },
            tracestate: span.tracestate.clone(),
        })
    })
}

/// Whether a context read from the wire came in B3.
fn in_b3(e: Option<&Extracted>) -> bool {
    e.is_some_and(|e| matches!(e.format, Format::B3Single | Format::B3Multi))
}

/// Starts the span of a request on one side: decides sampling, writes the context the next
/// hop continues (when `settings` propagate: W3C, and B3 too when the context came in B3)
/// and, when sampled and reported, the span to finish. Also says whether B3 is spoken.
/// `None` when tracing is off (no exporter).
fn start<B>(
    runtime: &crate::MeshRuntime,
    settings: &TraceSettings,
    me: &PeerLabels,
    kind: SpanKind,
    current: Option<&Current>,
    req: &mut http::Request<B>,
) -> Option<(SpanContext, Option<Box<Span>>, bool)> {
    let exporter = runtime.span_exporter()?;
    let extracted = incoming(req.headers(), current);
    let b3 = match &extracted {
        Some(e) if e.format != Format::TraceContext || current.is_none() => in_b3(Some(e)),
        // Continuing the current request: in the formats it arrived in.
        _ => current.is_some_and(|c| c.b3),
    };
    let decision = settings.sampler.decide(&SamplingInput::from_headers(
        req.headers(),
        extracted.as_ref(),
    ));
    if let Some(marked) = req
        .headers()
        .get(super::X_REQUEST_ID)
        .and_then(|id| decision.request_id(id.as_bytes()))
    {
        req.headers_mut().insert(super::X_REQUEST_ID, marked);
    }
    let (context, parent) =
        trace::with_thread_ids(|ids| SpanContext::start(extracted.as_ref(), &decision, ids));
    if settings.propagate {
        trace::inject_formats(&context, parent, b3, req.headers_mut());
    }
    let span = (context.sampled && settings.report).then(|| {
        Box::new(Span {
            exporter,
            parent,
            kind,
            // Until the route (or the served service) names it.
            name: match kind {
                SpanKind::Client => {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .or_else(|| req.uri().host())
                        .unwrap_or("");
                    format!("{} {host}", trace::EGRESS_OPERATION)
                }
                SpanKind::Server => trace::INGRESS_OPERATION.to_string(),
            },
            start: SystemTime::now(),
            attributes: attributes(settings, me, req),
            resource: resource(me),
            context: context.clone(),
        })
    });
    Some((context, span, b3))
}

/// The tags known when a request starts: Envoy's request tags, Istio's and the
/// Telemetry API's custom tags.
fn attributes<B>(
    settings: &TraceSettings,
    me: &PeerLabels,
    req: &http::Request<B>,
) -> Vec<(&'static str, AttributeValue)> {
    let h = req.headers();
    let text = |name: http::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let authority = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let protocol = match req.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut a = Vec::with_capacity(24 + settings.custom_tags.len());
    a.push((tag::COMPONENT, AttributeValue::Static(tag::COMPONENT_PROXY)));
    a.push((
        tag::HTTP_URL,
        AttributeValue::Str(format!("{scheme}://{authority}{path}")),
    ));
    a.push((
        tag::HTTP_METHOD,
        AttributeValue::Str(req.method().as_str().to_string()),
    ));
    a.push((tag::HTTP_PROTOCOL, AttributeValue::Static(protocol)));
    a.push((
        tag::USER_AGENT,
        AttributeValue::Str(text(http::header::USER_AGENT)),
    ));
    a.push((
        tag::GUID_X_REQUEST_ID,
        AttributeValue::Str(text(super::X_REQUEST_ID)),
    ));
    a.push((tag::DOWNSTREAM_CLUSTER, AttributeValue::Static("-")));
    if let Some(peer) = req.extensions().get::<crate::inbound::PeerAddr>() {
        a.push((
            tag::PEER_ADDRESS,
            AttributeValue::Str(peer.0.ip().to_string()),
        ));
    }
    if settings.istio_tags {
        a.push((
            tag::ISTIO_CANONICAL_SERVICE,
            AttributeValue::Str(me.canonical_service.to_string()),
        ));
        a.push((
            tag::ISTIO_CANONICAL_REVISION,
            AttributeValue::Str(me.canonical_revision.to_string()),
        ));
        a.push((
            tag::ISTIO_NAMESPACE,
            AttributeValue::Str(me.namespace.to_string()),
        ));
        a.push((tag::ISTIO_MESH_ID, AttributeValue::Static("cluster.local")));
        a.push((
            tag::ISTIO_CLUSTER_ID,
            AttributeValue::Str(me.cluster.to_string()),
        ));
    }
    for (name, value) in &settings.custom_tags {
        let v = match value {
            SpanTagValue::Fixed(v) => Some(v.to_string()),
            SpanTagValue::Header { name, default } => h
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| default.as_deref().map(str::to_string)),
        };
        if let Some(v) = v {
            a.push((custom_tag_name(name), AttributeValue::Str(v)));
        }
    }
    a
}

/// A custom tag's name with the `'static` lifetime attributes take: interned (the names
/// come from configuration, so they are few).
fn custom_tag_name(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match set.get(name) {
        Some(n) => n,
        None => {
            let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
            set.insert(leaked);
            leaked
        }
    }
}

/// The client side of a request a workload sends (or the gateway forwards): its
/// `x-request-id` taken from the current request when it has none, then its span.
pub(crate) fn client<B>(
    runtime: &crate::MeshRuntime,
    telemetry: &mesh_core::telemetry::WorkloadTelemetry,
    req: &mut http::Request<B>,
    edge: bool,
) -> Option<Box<Span>> {
    let current = if edge { None } else { current() };
    if let Some(id) = current.as_ref().and_then(|c| c.request_id.as_ref())
        && let http::header::Entry::Vacant(slot) = req.headers_mut().entry(super::X_REQUEST_ID)
    {
        slot.insert(id.clone());
    }
    super::access_log::ensure_request_id(req.headers_mut());
    start(
        runtime,
        &telemetry.client_trace,
        &telemetry.me,
        SpanKind::Client,
        current.as_ref(),
        req,
    )
    .and_then(|(_, span, _)| span)
}

/// The server side of a request a workload serves: its span, and the current request its
/// handler's requests continue.
pub(crate) fn server<B>(
    runtime: &crate::MeshRuntime,
    telemetry: Option<&mesh_core::telemetry::WorkloadTelemetry>,
    req: &mut http::Request<B>,
) -> (Option<Box<Span>>, Current) {
    let request_id = req.headers().get(super::X_REQUEST_ID).cloned();
    let Some(telemetry) = telemetry else {
        return (
            None,
            Current {
                span: None,
                request_id,
                b3: false,
            },
        );
    };
    match start(
        runtime,
        &telemetry.server_trace,
        &telemetry.me,
        SpanKind::Server,
        None,
        req,
    ) {
        Some((context, span, b3)) => (
            span,
            Current {
                span: Some(context),
                // Sampling may have marked it.
                request_id: req.headers().get(super::X_REQUEST_ID).cloned(),
                b3,
            },
        ),
        None => (
            None,
            Current {
                span: None,
                request_id,
                b3: false,
            },
        ),
    }
}

/// Envoy's operation of a routed request, as Istio sets its route decorators: the
/// VirtualService route's (`{host}:{port}{path}` for one destination, the
/// VirtualService's name and port otherwise), `{host}:{port}/*` for a service's default
/// route, `None` for traffic to no cluster (named `egress {host}`).
pub(crate) fn operation(route: &crate::outbound::Route) -> Option<String> {
    use mesh_core::matcher::StrMatcher;
    use mesh_core::trace::RoutePath;
    let mesh_core::Upstream::Cluster(cluster) = route.upstream() else {
        return None;
    };
    let host = &*cluster.service_labels.host;
    let port = u16::try_from(cluster.port.number).unwrap_or(0);
    let Some(rule) = route.rule() else {
        return Some(trace::default_route_operation(host, port));
    };
    let path = route.block().and_then(|b| b.uri()).and_then(|m| match m {
        StrMatcher::Exact(p) | StrMatcher::ExactIgnoreCase(p) => Some(RoutePath::Exact(p)),
        StrMatcher::Prefix(p) | StrMatcher::PrefixIgnoreCase(p) => Some(RoutePath::Prefix(p)),
        StrMatcher::Regex(r) => Some(RoutePath::Regex(r.as_str())),
        StrMatcher::Any => None,
    });
    let single = match &rule.action {
        mesh_core::route::Action::Route(split) if split.targets.len() == 1 => Some((host, port)),
        _ => None,
    };
    // Istio names the VirtualService by its name alone.
    let vs = rule.origin.virtual_service.rsplit('/').next().unwrap_or("");
    Some(trace::route_operation(path, single, vs, route.port()))
}
