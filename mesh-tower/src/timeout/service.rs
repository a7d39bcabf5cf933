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

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let timeout = req
            .extensions()
            .get::<Arc<Routed>>()
            .and_then(|r| r.rule().and_then(|rule| rule.timeout));
        let Some(t) = timeout else {
            return Box::pin(crate::take(&mut self.inner).call(req));
        };
        // Envoy's route timeout starts once the whole request has been received.
        let body_end = req.body_mut().end_signal();
        let fut = crate::take(&mut self.inner).call(req);
        Box::pin(async move {
            tokio::pin!(fut);
            if let Some(mut end) = body_end {
                tokio::select! {
                    // An answer before the request body ended (an early response):
                    // the timeout runs from now for the response body.
                    r = &mut fut => {
                        return r.map(|resp| cut_at(resp, tokio::time::Instant::now() + t));
                    }
                    // Ended, failed or dropped: the timer starts.
                    _ = end.wait_for(|ended| *ended) => {}
                }
            }
            let deadline = tokio::time::Instant::now() + t;
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(r) => r.map(|resp| cut_at(resp, deadline)),
                Err(_) => Ok(MeshFailure::Timeout.into_response()),
            }
        })
    }
}

/// The response, its body failing with `BodyTimeout` at `deadline`.
fn cut_at(
    resp: http::Response<crate::ResBody>,
    deadline: tokio::time::Instant,
) -> http::Response<crate::ResBody> {
    if resp.body().is_end_stream() {
        return resp;
    }
    resp.map(|inner| {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
        .boxed()
    })
}
