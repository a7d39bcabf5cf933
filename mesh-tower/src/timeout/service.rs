use http::Request;
use tower::Service;

use crate::route::Routed;
use crate::{MeshFailure, MeshService, ReqBody};

/// See [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    pub(super) inner: S,
}

impl<S: MeshService> Service<Request<ReqBody>> for Timeout<S> {
    crate::mesh_service_types!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let timeout = req
            .extensions()
            .get::<Routed>()
            .and_then(|r| r.rule().and_then(|rule| rule.timeout));
        let fut = crate::take(&mut self.inner).call(req);
        match timeout {
            None => Box::pin(fut),
            Some(t) => Box::pin(async move {
                match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(MeshFailure::Timeout.into_response()),
                }
            }),
        }
    }
}
