use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::route::Routed;
use crate::{BoxError, BoxFuture, MeshFailure, MeshService, ReqBody, ResBody};

/// See [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    pub(super) inner: S,
}

impl<S: MeshService> Service<Request<ReqBody>> for Timeout<S> {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

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
