use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response};
use mesh_core::retry::{Attempt, Retries};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service, ServiceExt};

use mesh_core::Upstream;
use tower::retry::budget::Budget;

use super::super::{Route, Routed};
use crate::state::{ClusterState, give_back, take_below};
use crate::{BoxError, BoxFuture, MeshFailure, ResBody, ResetReason, ResponseFlags};

/// Retries requests as their route's `retries` say (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

/// See [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

/// A copy of a request for one more attempt, when its body can be replayed.
fn copy(routed: &Routed) -> Option<Routed> {
    let req = &routed.request;
    let body = req.body().try_clone()?;
    let mut r = Request::new(body);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    Some(Routed::new(r, routed.route.clone()))
}

/// gRPC's status header.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// How an attempt ended, for `retries` (`None`: retrying cannot help). The `grpc-status`
/// header is read only when `retries` has gRPC conditions.
fn outcome(resp: &Response<ResBody>, retries: &Retries) -> Option<Attempt> {
    match resp.extensions().get::<MeshFailure>() {
        // No endpoint, or no cluster at all: retrying cannot help (Envoy does not retry
        // them either); nor is a request a circuit breaker turned away retried, nor one
        // whose own body failed.
        Some(
            MeshFailure::NoHealthyUpstream
            | MeshFailure::ClusterNotFound
            | MeshFailure::ConnectOrReset(ResetReason::Overflow | ResetReason::LocalReset),
        ) => None,
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
            let grpc = if retries.reads_grpc_status() {
                resp.headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            } else {
                None
            };
            Some(Attempt::Status(resp.status().as_u16(), grpc))
        }
    }
}

/// True when `retries` calls for another attempt after one that ended with `resp` (`None`:
/// its per-try timeout expired).
fn should_retry(retries: &Retries, resp: Option<&Response<ResBody>>) -> bool {
    let ended = match resp {
        Some(r) => outcome(r, retries),
        None => Some(Attempt::PerTryTimeout),
    };
    ended.is_some_and(|a| retries.should_retry(&a))
}

impl<S> Service<Routed> for Retry<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = RetryFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> Self::Future {
        // Each request the route sends is a deposit in its cluster's retry budget.
        if let Upstream::Cluster(c) = routed.route.upstream()
            && c.limits.request_budget.is_some()
            && let Some(b) = routed
                .route
                .cluster_state()
                .and_then(|s| s.request_budget())
        {
            b.budget.deposit();
        }
        if routed.route.retries().attempts == 0 {
            return RetryFuture::from(RetryFutureState::Once {
                fut: self.inner.call(routed),
            });
        }
        // Keep the body's frames as they are sent, so that another attempt can send them
        // again (up to the replay bound). Each attempt reads its own copy; the request
        // itself keeps the original, from which the next copy is made.
        routed.request.body_mut().make_replayable();
        let retries = routed.route.retries();
        if retries.per_try_timeout.is_some() && retries.ignore_previous_hosts {
            // An attempt its per-try timeout cuts answers nothing: the balancer says where
            // it went here instead, for the next attempt to avoid it.
            routed.route.picked = Some(Arc::new(AtomicU32::new(u32::MAX)));
        }
        let Some(first) = copy(&routed) else {
            return RetryFuture::from(RetryFutureState::Once {
                fut: self.inner.call(routed),
            });
        };
        let per_try = routed
            .route
            .retries()
            .per_try_timeout
            .map(|t| Box::pin(tokio::time::sleep(t)));
        let later = self.inner.clone();
        RetryFuture::from(RetryFutureState::First {
            fut: self.inner.call(first),
            per_try,
            rest: Some((later, routed)),
        })
    }
}

pin_project! {
    /// The response future of [`Retry`]: the first attempt without a box; later ones (the
    /// rare case) in a boxed loop.
    #[project = RetryFutureStateProj]
    enum RetryFutureState<S, F> {
        /// A request that is never retried.
        Once {
            #[pin]
            fut: F,
        },
        /// The first attempt, with what further attempts need.
        First {
            #[pin]
            fut: F,
            per_try: Option<Pin<Box<Sleep>>>,
            rest: Option<(S, Routed)>,
        },
        /// Further attempts.
        Retrying {
            fut: BoxFuture<Result<Response<ResBody>, BoxError>>,
        },
    }
}

pin_project! {
    /// The response future of [`Retry`]: the first attempt without a box; later ones (the rare case) in a boxed loop.
    pub struct RetryFuture<S, F> {
        #[pin]
        state: RetryFutureState<S, F>,
    }
}

impl<S, F> From<RetryFutureState<S, F>> for RetryFuture<S, F> {
    fn from(state: RetryFutureState<S, F>) -> Self {
        RetryFuture { state }
    }
}

impl<S> Future for RetryFuture<S, S::Future>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (result, rest) = match self.as_mut().project().state.project() {
            RetryFutureStateProj::Once { fut } => return fut.poll(cx),
            RetryFutureStateProj::Retrying { fut } => return fut.as_mut().poll(cx),
            RetryFutureStateProj::First { fut, per_try, rest } => {
                let result = match fut.poll(cx) {
                    Poll::Ready(r) => r.map(Some),
                    Poll::Pending => {
                        let expired = per_try
                            .as_mut()
                            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                        if !expired {
                            return Poll::Pending;
                        }
                        Ok(None)
                    }
                };
                (result, rest.take())
            }
        };
        let Some((inner, routed)) = rest else {
            return Poll::Ready(Err("retry future polled after completion".into()));
        };
        let resp = match result {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let retries = routed.route.retries();
        if retries.attempts == 0
            || !should_retry(retries, resp.as_ref())
            || !routed.request.body().is_replayable()
        {
            if let Some(span) = super::super::telemetry::current() {
                span.record("attempts", 1);
            }
            return Poll::Ready(Ok(finish(resp)));
        }
        let fut = Box::pin(retry_more(inner, routed, resp));
        self.as_mut()
            .project()
            .state
            .set(RetryFutureState::Retrying { fut });
        self.poll(cx)
    }
}

/// The answer of the last attempt (`None`: its per-try timeout expired, Envoy's 504).
fn finish(resp: Option<Response<ResBody>>) -> Response<ResBody> {
    match resp {
        Some(r) => r,
        None => MeshFailure::Timeout.into_response(),
    }
}

/// `resp`, flagged `URX`.
fn exceeded(mut resp: Response<ResBody>) -> Response<ResBody> {
    ResponseFlags::record(&mut resp, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    resp
}

/// A retry counted among its cluster's retries in flight, from its backoff to its end.
struct RetryInFlight(Option<Arc<ClusterState>>);

impl RetryInFlight {
    /// Admits one more retry to the route's cluster, or refuses it (counted as a retry
    /// overflow): Linkerd's budget (`mesh.rs/retry-budget`) must have a token; Envoy's
    /// retry budget (`retryBudget`) allows its share of the requests in flight, else
    /// `maxRetries` caps the retries in flight.
    fn admit(route: &Route) -> Result<Self, ()> {
        let (Upstream::Cluster(c), Some(state)) = (route.upstream(), route.cluster_state()) else {
            return Ok(RetryInFlight(None));
        };
        let b = &state.breakers;
        let refuse = || {
            b.retry_overflow.fetch_add(1, Ordering::Relaxed);
            Err(())
        };
        if let Some(budget) = state.request_budget()
            && !budget.budget.withdraw()
        {
            return refuse();
        }
        let max = match c.limits.retry_budget {
            Some(rb) => Some(rb.allowed(b.requests().saturating_add(b.pending()))),
            None => c.limits.max_retries,
        };
        if max.is_none() {
            return Ok(RetryInFlight(None));
        }
        if !take_below(&b.retries, max) {
            return refuse();
        }
        Ok(RetryInFlight(Some(state.clone())))
    }
}

impl Drop for RetryInFlight {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            give_back(&s.breakers.retries);
        }
    }
}

/// The attempts after a first one that is retried (`last`: its response, `None` when
/// its per-try timeout expired).
async fn retry_more<S>(
    inner: S,
    mut routed: Routed,
    mut last: Option<Response<ResBody>>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut retry = 1u32;
    let span = super::super::telemetry::current();
    loop {
        // Envoy resets the upstream request it retries: the attempt's copy of the body
        // fails, so its connection stops sending (and pulling) it.
        routed.request.body().abandon_copies();
        // The endpoint the last attempt went to: its response says so, or (cut by its
        // per-try timeout) the balancer left it in `picked`.
        let picked = routed
            .route
            .picked
            .as_ref()
            .map(|p| p.swap(u32::MAX, Ordering::Relaxed))
            .filter(|i| *i != u32::MAX);
        let tagged = last.as_ref().and_then(|r| r.body().endpoint);
        if let Some(i) = tagged.or(picked) {
            routed.route.tried.push(i);
        }
        // The cluster's retry limits: `maxRetries` retries in flight, Envoy's retry budget
        // (`retryBudget`) or Linkerd's (`mesh.rs/retry-budget`). Past them, the last
        // answer stands, flagged `URX` as Envoy's retry overflow is.
        let Ok(_retrying) = RetryInFlight::admit(&routed.route) else {
            return Ok(exceeded(finish(last)));
        };
        let retries = routed.route.retries();
        let wait = retries.backoff(retry, &mut rand::rng());
        let per_try_timeout = retries.per_try_timeout;
        tokio::time::sleep(wait).await;
        // The body outgrew the replay bound during the backoff (a mirror read on): no
        // further attempt can send it.
        let Some(this) = copy(&routed) else {
            return Ok(finish(last));
        };
        let attempt = inner.clone().oneshot(this);
        let result = match per_try_timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            },
            None => attempt.await.map(Some),
        };
        if let Some(span) = &span {
            span.record("attempts", retry + 1);
        }
        let resp = result?;
        let retries = routed.route.retries();
        let wanted = should_retry(retries, resp.as_ref());
        if wanted && retry >= retries.attempts {
            // Envoy's `URX`: the retry limit was reached on an answer worth retrying.
            return Ok(exceeded(finish(resp)));
        }
        if !wanted || !routed.request.body().is_replayable() {
            return Ok(finish(resp));
        }
        last = resp;
        retry += 1;
    }
}
