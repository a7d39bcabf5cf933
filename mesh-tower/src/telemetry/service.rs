use http::Request;
use tower::Service;
use tracing::Instrument;

use crate::route::Routed;
use crate::{MeshFailure, MeshService, ReqBody};

/// See [`TelemetryLayer`](super::TelemetryLayer).
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    pub(super) inner: S,
}

impl<S: MeshService> Service<Request<ReqBody>> for Telemetry<S> {
    crate::mesh_service_types!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let span = tracing::info_span!(
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
        );
        let fut = {
            let _entered = span.enter();
            crate::take(&mut self.inner).call(req)
        };
        let record = span.clone();
        Box::pin(
            async move {
                let result = fut.await;
                if let Ok(resp) = &result {
                    record.record("status", resp.status().as_u16());
                    if let Some(f) = resp.extensions().get::<MeshFailure>() {
                        record.record("failure", tracing::field::display(f));
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Records the destination of a routed request on the current span.
pub(crate) fn record_destination(r: &Routed) {
    let span = tracing::Span::current();
    match &r.upstream {
        mesh_core::Upstream::Cluster(c) => {
            span.record("destination", &*c.key.host);
            if let Some(s) = &c.key.subset {
                span.record("subset", &**s);
            }
        }
        mesh_core::Upstream::Passthrough { host, .. } => {
            span.record("destination", &**host);
        }
        mesh_core::Upstream::Missing { host, subset } => {
            span.record("destination", &**host);
            if let Some(s) = subset {
                span.record("subset", &**s);
            }
        }
    }
}
