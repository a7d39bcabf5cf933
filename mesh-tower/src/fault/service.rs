use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use mesh_core::policy::AbortWith;
use tower::Service;

use crate::body::full;
use crate::route::Routed;
use crate::{MeshFailure, MeshService, ReqBody};

/// See [`FaultLayer`](super::FaultLayer).
#[derive(Clone, Debug)]
pub struct Fault<S> {
    pub(super) inner: S,
}

impl<S: MeshService> Service<Request<ReqBody>> for Fault<S> {
    crate::mesh_service_types!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let decision = req
            .extensions()
            .get::<Arc<Routed>>()
            .and_then(|r| r.rule().and_then(|rule| rule.fault.as_ref()))
            .map(|f| f.decide(&mut rand::rng()))
            .unwrap_or_default();
        let mut inner = crate::take(&mut self.inner);
        if decision.delay.is_none() && decision.abort.is_none() {
            return Box::pin(inner.call(req));
        }
        Box::pin(async move {
            if let Some(d) = decision.delay {
                tokio::time::sleep(d).await;
            }
            match decision.abort {
                Some(AbortWith::Http(status)) => {
                    Ok(MeshFailure::FaultAbort(status).into_response())
                }
                Some(AbortWith::Grpc(code)) => {
                    let mut resp = Response::new(full(""));
                    *resp.status_mut() = StatusCode::OK;
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    h.insert("grpc-status", HeaderValue::from(code));
                    h.insert(
                        "grpc-message",
                        HeaderValue::from_static("fault filter abort"),
                    );
                    Ok(resp)
                }
                None => inner.call(req).await,
            }
        })
    }
}
