use std::sync::Arc;

use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::Service;

use crate::body::Deadline;
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
            .get::<Arc<Routed>>()
            .and_then(|r| r.rule().and_then(|rule| rule.timeout));
        let fut = crate::take(&mut self.inner).call(req);
        let Some(t) = timeout else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + t;
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(Ok(resp)) if !resp.body().is_end_stream() => Ok(resp.map(|inner| {
                    Deadline {
                        inner,
                        sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    }
                    .boxed()
                })),
                Ok(r) => r,
                Err(_) => Ok(MeshFailure::Timeout.into_response()),
            }
        })
    }
}
