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
//! the headers (or [`current`] and [`scope`]), as with OpenTelemetry's context.
//!
//! Unsampled requests cost the context headers and no span: nothing is allocated for a
//! span unless it is sampled and reported.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use mesh_core::telemetry::{PeerLabels, SpanTagValue, TraceSettings};
use mesh_core::trace::{
    self, Extracted, Format, RemoteSpan, Sampling, SpanContext, SpanId, TraceHeaders, tag,
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

/// `fut` with `current` as its current request: how a handler carries the request it
/// serves into a task it spawns (`tokio::spawn(scope(current().unwrap_or_default(), fut))`),
/// and how `mesh.inbound()` runs the application's future (moved in, not cloned per poll).
pub fn scope<F: std::future::Future>(
    current: Current,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Current, F> {
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
        // Envoy marks a span failed on a 5xx, or when no response was sent.
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

/// What the current request says of the trace a request it sends continues.
fn continued(current: Option<&Current>) -> Option<Extracted> {
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
}

/// Whether a hop writes B3 as well as W3C: when the request's own headers carry B3 (a B3
/// caller, or an earlier hop that wrote both), or — continuing the current request — when
/// that request's did.
fn speaks_b3(found: &TraceHeaders<'_>, from_headers: bool, current: Option<&Current>) -> bool {
    if from_headers {
        found.has_b3()
    } else {
        current.is_some_and(|c| c.b3)
    }
}

/// The longest `http.url` path Envoy tags (its `max_path_tag_length` default), and the
/// longest other string tag taken from a request.
const MAX_PATH_TAG: usize = 256;
const MAX_REQUEST_TAG: usize = 1024;

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A request's trace context as a side started it.
struct Started {
    /// The side's span context, which the next hop continues.
    context: SpanContext,
    /// The span, when sampled and reported.
    span: Option<Box<Span>>,
    /// Whether the hop speaks B3.
    b3: bool,
    /// The `x-request-id` sampling marked, when it did.
    marked: Option<HeaderValue>,
}

/// Starts the span of a request on one side: decides sampling, writes the context the next
/// hop continues (when `settings` propagate: W3C, and B3 too when the context came in B3)
/// and, when sampled and reported, the span to finish. `None` when tracing is off (no
/// exporter).
#[allow(clippy::too_many_arguments)]
fn start<B>(
    runtime: &crate::MeshRuntime,
    settings: &TraceSettings,
    me: &PeerLabels,
    kind: SpanKind,
    current: Option<&Current>,
    edge: bool,
    req: &mut http::Request<B>,
) -> Option<Started> {
    if !runtime.tracing() {
        return None;
    }
    // One pass over the headers finds every trace header (a dozen names).
    let found = TraceHeaders::scan(req.headers());
    let wire = found.extract();
    let b3 = speaks_b3(&found, wire.is_some(), current);
    let extracted = wire.or_else(|| continued(current));
    let mut input = found.sampling_input(extracted.as_ref());
    // An outside client cannot force tracing: Envoy drops its `x-envoy-*` headers at the
    // edge first (`x-client-trace-id` stays, as Envoy's client sampling allows).
    input.force_trace &= !edge;
    let decision = settings.sampler.decide(&input);
    let marked = found
        .request_id()
        .and_then(|id| decision.request_id(id.as_bytes()));
    let carried = found.carried();
    if let Some(marked) = &marked {
        trace::replace_header(
            req.headers_mut(),
            &super::X_REQUEST_ID,
            marked.clone(),
            carried.request_ids,
        );
    }
    let (context, parent) =
        trace::with_thread_ids(|ids| SpanContext::start(extracted.as_ref(), &decision, ids));
    if settings.propagate {
        trace::inject_over(&context, parent, b3, carried, req.headers_mut());
    }
    let exporter = (context.sampled && settings.report)
        .then(|| runtime.span_exporter().as_ref().map(Arc::clone))
        .flatten();
    let span = exporter.map(|exporter| {
        Box::new(Span {
            exporter,
            parent,
            kind,
            // Until the route (or the served service) names it.
            name: match kind {
                SpanKind::Client => {
                    format!("{} {}", trace::EGRESS_OPERATION, super::authority(req))
                }
                SpanKind::Server => trace::INGRESS_OPERATION.to_string(),
            },
            start: SystemTime::now(),
            attributes: attributes(settings, me, req),
            resource: resource(me),
            context: context.clone(),
        })
    });
    Some(Started {
        context,
        span,
        b3,
        marked,
    })
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
        let v = h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        truncated(v, MAX_REQUEST_TAG).to_string()
    };
    let authority = super::authority(req);
    let path = truncated(
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        MAX_PATH_TAG,
    );
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
                .map(|v| truncated(v, MAX_REQUEST_TAG).to_string())
                .or_else(|| default.as_deref().map(str::to_string)),
        };
        if let Some(v) = v {
            a.push((*name, AttributeValue::Str(v)));
        }
    }
    a
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
    super::access_log::ensure_request_id(
        req.headers_mut(),
        current.as_ref().and_then(|c| c.request_id.as_ref()),
    );
    start(
        runtime,
        &telemetry.client_trace,
        &telemetry.me,
        SpanKind::Client,
        current.as_ref(),
        edge,
        req,
    )
    .and_then(|s| s.span)
}

/// The server side of a request a workload serves, whose `x-request-id` is `request_id`:
/// its span, and the current request its handler's requests continue.
pub(crate) fn server<B>(
    runtime: &crate::MeshRuntime,
    telemetry: Option<&mesh_core::telemetry::WorkloadTelemetry>,
    req: &mut http::Request<B>,
    request_id: HeaderValue,
) -> (Option<Box<Span>>, Current) {
    let started = telemetry.and_then(|t| {
        start(
            runtime,
            &t.server_trace,
            &t.me,
            SpanKind::Server,
            None,
            false,
            req,
        )
    });
    match started {
        Some(s) => (
            s.span,
            Current {
                span: Some(s.context),
                // Sampling may have marked it.
                request_id: Some(s.marked.unwrap_or(request_id)),
                b3: s.b3,
            },
        ),
        None => (
            None,
            Current {
                span: None,
                request_id: Some(request_id),
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
        StrMatcher::Regex(_, pattern) => Some(RoutePath::Regex(pattern)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_is_spoken_when_the_request_or_the_current_request_carries_it() {
        let mut w3c = HeaderMap::new();
        w3c.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut both = w3c.clone();
        both.insert(
            "x-b3-traceid",
            HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        let mut single = HeaderMap::new();
        single.insert("b3", HeaderValue::from_static("1"));
        let b3_current = Current {
            b3: true,
            ..Current::default()
        };
        let cases = [
            (&w3c, true, None, false),
            // A hop that wrote both formats: the next one keeps both.
            (&both, true, None, true),
            (&single, true, None, true),
            // No context in the headers: the current request's formats.
            (&HeaderMap::new(), false, Some(&b3_current), true),
            (&HeaderMap::new(), false, Some(&Current::default()), false),
            (&HeaderMap::new(), false, None, false),
            // The request's own headers win over the current request.
            (&w3c, true, Some(&b3_current), false),
        ];
        for (i, (headers, from_headers, current, want)) in cases.into_iter().enumerate() {
            let found = TraceHeaders::scan(headers);
            assert_eq!(speaks_b3(&found, from_headers, current), want, "case {i}");
        }
    }

    /// The operation of the route each request takes, as Istio's decorators name them.
    #[test]
    fn routes_are_named_by_their_match_as_configured() {
        let yaml = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{uri: {regex: '/api/\\w+/v[0-9]'}}]
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
  - match: [{uri: {prefix: /static}}]
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
  - route:
    - {destination: {host: reviews.default.svc.cluster.local}, weight: 50}
    - {destination: {host: reviews.default.svc.cluster.local}, weight: 50}
";
        let mut set = mesh_config::ConfigSet::new();
        set.add_str("routes.yaml", yaml);
        let report = set.check();
        let snapshot = report.snapshot.expect("valid configuration");
        let runtime = crate::MeshRuntime::from_snapshot(&snapshot);
        let mesh = runtime.workload(crate::Workload::new("productpage-v1", "default"));
        let generation = mesh.runtime().generation();
        let view = generation.view(mesh.slot()).expect("a view");
        let host = "reviews.default.svc.cluster.local";
        let cases = [
            // The regex as configured, not as compiled (anchored, RE2 classes rewritten).
            ("/api/books/v1", format!("{host}:9080/api/\\w+/v[0-9]")),
            ("/static/app.js", format!("{host}:9080/static*")),
            // Two destinations: the VirtualService's name and the port.
            ("/other", "reviews-route:9080/*".to_string()),
        ];
        for (path, want) in cases {
            let req = http::Request::get(format!("http://{host}:9080{path}"))
                .body(())
                .unwrap_or_default();
            let head = mesh_core::RequestHead::from_request(&req, 80);
            let decision = view.route(&head, &mut rand::rng()).expect("routed");
            let route = crate::outbound::Route::forward(
                generation.clone(),
                mesh.slot(),
                &decision,
                head.authority,
            )
            .expect("forwarded");
            assert_eq!(operation(&route), Some(want), "{path}");
        }
    }

    #[test]
    fn tags_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(truncated("abcdef", 3), "abc");
        // "é" is two bytes: never cut in the middle.
        assert_eq!(truncated("aé", 2), "a");
        let long = "/".repeat(1000);
        assert_eq!(truncated(&long, MAX_PATH_TAG).len(), 256);
    }
}
