use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::Upstream;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::super::Route;
use crate::flags::ResponseFlags;
use crate::{BoxError, MeshFailure, ReqBody, ResBody};

/// Wraps each request in a `mesh.request` span (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetryLayer;

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry { inner }
    }
}

/// See [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
}

impl<S> Service<Request<ReqBody>> for Telemetry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let span = span_of(&req);
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        TelemetryFuture::new(fut, span)
    }
}

/// The `mesh.request` span of a request.
pub(crate) fn span_of<B>(req: &Request<B>) -> tracing::Span {
    tracing::info_span!(
        "mesh.request",
        method = %req.method(),
        authority = req.uri().authority().map(|a| a.as_str()).unwrap_or(""),
        path = req.uri().path(),
        route = tracing::field::Empty,
        destination = tracing::field::Empty,
        subset = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        attempts = tracing::field::Empty,
        status = tracing::field::Empty,
        failure = tracing::field::Empty,
        response_flags = tracing::field::Empty,
    )
}

pin_project! {
    /// The response future of [`Telemetry`]: polled inside the span, which records the
    /// status and the response flags — `DC` (Envoy's downstream connection
    /// termination) when the caller gave up on the request before its answer.
    pub struct TelemetryFuture<F> {
        #[pin]
        fut: F,
        span: tracing::Span,
        answered: bool,
    }

    impl<F> PinnedDrop for TelemetryFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.answered && !this.span.is_disabled() {
                this.span.record(
                    "response_flags",
                    tracing::field::display(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
                );
            }
        }
    }
}

impl<F> TelemetryFuture<F> {
    /// `fut`, polled within `span`.
    pub(crate) fn new(fut: F, span: tracing::Span) -> Self {
        TelemetryFuture {
            fut,
            span,
            answered: false,
        }
    }
}

impl<F> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.fut.poll(cx));
        *this.answered = true;
        if !this.span.is_disabled()
            && let Ok(resp) = &result
        {
            this.span.record("status", resp.status().as_u16());
            if let Some(f) = resp.extensions().get::<MeshFailure>() {
                this.span.record("failure", tracing::field::display(f));
            }
            let flags = ResponseFlags::of(resp);
            if !flags.is_empty() {
                this.span
                    .record("response_flags", tracing::field::display(flags));
            }
        }
        Poll::Ready(result)
    }
}

/// The current span, when it records anything: `None` when no subscriber wants any
/// level (checked first: one atomic load), so that a request pays nothing for a span
/// nobody reads.
pub(crate) fn current() -> Option<tracing::Span> {
    if tracing::level_filters::LevelFilter::current() == tracing::level_filters::LevelFilter::OFF {
        return None;
    }
    let span = tracing::Span::current();
    (!span.is_disabled()).then_some(span)
}

/// Records the route and destination of a routed request on the current span.
pub(crate) fn record_route(r: &Route) {
    let Some(span) = current() else {
        return;
    };
    match r.rule() {
        Some(rule) => span.record(
            "route",
            tracing::field::display(format_args!(
                "{}#{}",
                rule.origin.virtual_service, rule.origin.index
            )),
        ),
        None => span.record("route", "default"),
    };
    match r.upstream() {
        Upstream::Cluster(c) => {
            span.record("destination", &*c.key.host);
            if let Some(s) = &c.key.subset {
                span.record("subset", &**s);
            }
        }
        Upstream::Passthrough { host, .. } => {
            span.record("destination", &*host);
        }
        Upstream::Missing { host, subset } => {
            span.record("destination", &*host);
            if let Some(s) = subset {
                span.record("subset", &*s);
            }
        }
    }
}
