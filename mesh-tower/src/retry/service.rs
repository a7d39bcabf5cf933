use std::sync::Arc;

use http::{Request, Response};
use mesh_core::policy::Attempt;
use tower::{Service, ServiceExt};

use crate::balance::Attempts;
use crate::route::Routed;
use crate::{MeshFailure, MeshService, ReqBody, ResBody, ResetReason};

/// See [`RetryLayer`](super::RetryLayer).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    pub(super) inner: S,
}

/// A copy of a request for one more attempt, when its body can be replayed.
fn copy(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = req.body().try_clone()?;
    let mut r = Request::new(body);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    Some(r)
}

/// How an attempt ended, for the retry policy.
fn outcome(resp: &Response<ResBody>) -> Option<Attempt> {
    match resp.extensions().get::<MeshFailure>() {
        // No endpoint, or no cluster at all: retrying cannot help (Envoy does not retry
        // them either).
        Some(MeshFailure::NoHealthyUpstream | MeshFailure::ClusterNotFound) => None,
        Some(MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure)) => {
            Some(Attempt::ConnectFailure)
        }
        Some(MeshFailure::ConnectOrReset(ResetReason::RefusedStream)) => {
            Some(Attempt::RefusedStream)
        }
        Some(MeshFailure::ConnectOrReset(ResetReason::ConnectionTermination)) => {
            Some(Attempt::Reset)
        }
        _ => {
            let grpc = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Some(Attempt::Status(resp.status().as_u16(), grpc))
        }
    }
}

impl<S: MeshService> Service<Request<ReqBody>> for Retry<S> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let Some(routed) = req.extensions().get::<Arc<Routed>>().cloned() else {
            return Box::pin(inner.call(req));
        };
        let policy = routed.retry_policy();
        if policy.attempts == 0 {
            return Box::pin(inner.call(req));
        }
        // Keep the body's frames as they are sent, so that another attempt can send
        // them again (up to the replay bound).
        req.body_mut().make_replayable();
        req.extensions_mut().insert(Attempts::default());
        let span = tracing::Span::current();
        Box::pin(async move {
            let policy = routed.retry_policy();
            let mut retry = 0u32;
            let mut last: Option<Response<ResBody>> = None;
            loop {
                // Each attempt reads its own copy of the body; the request itself keeps
                // the original, from which the next copy is made.
                let this = match copy(&req) {
                    Some(c) => c,
                    // The body outgrew the replay bound during the backoff (a mirror
                    // read on): no further attempt can send it.
                    None if retry > 0 => {
                        return Ok(last.unwrap_or_else(|| MeshFailure::Timeout.into_response()));
                    }
                    None => std::mem::replace(&mut req, Request::new(ReqBody::empty())),
                };
                let attempt = inner.clone().oneshot(this);
                let result = match policy.per_try_timeout {
                    Some(t) => match tokio::time::timeout(t, attempt).await {
                        Ok(r) => r.map(Some),
                        Err(_) => Ok(None),
                    },
                    None => attempt.await.map(Some),
                };
                span.record("attempts", retry + 1);
                let resp = result?;
                let ended = match &resp {
                    Some(r) => outcome(r),
                    None => Some(Attempt::PerTryTimeout),
                };
                // A body that outgrew the replay bound is sent once: never retried,
                // never corrupted.
                let again = retry < policy.attempts
                    && ended.is_some_and(|a| policy.should_retry(&a))
                    && req.body().is_replayable();
                if !again {
                    return Ok(resp.unwrap_or_else(|| MeshFailure::Timeout.into_response()));
                }
                // Envoy resets the upstream request it retries: the attempt's copy of
                // the body fails, so its connection stops sending (and pulling) it.
                req.body().abandon_copies();
                last = resp;
                retry += 1;
                let wait = policy.backoff(retry, &mut rand::rng());
                tokio::time::sleep(wait).await;
            }
        })
    }
}
