use std::task::{Context, Poll};

use http::{HeaderValue, Response, StatusCode, header};
use mesh_core::fault::AbortWith;
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::super::{ResponseFuture, Routed};
use crate::flags::ResponseFlags;
use crate::{BoxError, BoxFuture, MeshFailure, ResBody};

/// Injects the rule's faults (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLayer;

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner }
    }
}

/// See [`FaultLayer`].
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
}

/// The answer to an aborted request.
fn abort(with: AbortWith) -> Response<ResBody> {
    match with {
        AbortWith::Http(status) => MeshFailure::FaultAbort(status).into_response(),
        AbortWith::Grpc(code) => {
            let mut resp = Response::new(ResBody::empty());
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
            resp
        }
    }
}

impl<S> Service<Routed> for Fault<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<FaultFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        let decision = routed
            .route
            .fault()
            .map(|f| f.decide(&mut rand::rng()))
            .unwrap_or_default();
        match (decision.delay, decision.abort) {
            (None, None) => ResponseFuture::inner(FaultFuture::from(FaultFutureState::Now {
                fut: self.inner.call(routed),
            })),
            (None, Some(with)) => ResponseFuture::ready(abort(with)),
            (Some(delay), abort_with) => {
                // The inner service is called after the delay: take the ready one.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::inner(FaultFuture::from(FaultFutureState::Delayed {
                    fut: Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = match abort_with {
                            Some(with) => abort(with),
                            None => inner.oneshot(routed).await?,
                        };
                        // Envoy's `DI`: the request was delayed by fault injection.
                        ResponseFlags::record(&mut resp, ResponseFlags::DELAY_INJECTED);
                        Ok(resp)
                    }),
                }))
            }
        }
    }
}

pin_project! {
    /// The response future of [`Fault`]: the inner service's at once, or after a delay.
    #[project = FaultFutureStateProj]
    enum FaultFutureState<F> {
        /// Not delayed.
        Now {
            #[pin]
            fut: F,
        },
        /// Delayed (boxed: the rare case).
        Delayed {
            fut: BoxFuture<Result<Response<ResBody>, BoxError>>,
        },
    }
}

pin_project! {
    /// The response future of [`Fault`]: the inner service's at once, or after a delay.
    pub struct FaultFuture<F> {
        #[pin]
        state: FaultFutureState<F>,
    }
}

impl<F> From<FaultFutureState<F>> for FaultFuture<F> {
    fn from(state: FaultFutureState<F>) -> Self {
        FaultFuture { state }
    }
}

impl<F> std::future::Future for FaultFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FaultFutureStateProj::Now { fut } => fut.poll(cx),
            FaultFutureStateProj::Delayed { fut } => fut.as_mut().poll(cx),
        }
    }
}
