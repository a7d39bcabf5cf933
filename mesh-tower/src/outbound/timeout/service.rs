use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::super::Routed;
use crate::{BoxError, BoxFuture, MeshFailure, ResBody};

/// Bounds requests by their route timeout (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

/// See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> Service<Routed> for Timeout<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> Self::Future {
        let Some(t) = routed.route.timeout() else {
            return TimeoutFuture::from(TimeoutFutureState::Plain {
                fut: self.inner.call(routed),
            });
        };
        // Envoy's route timeout starts once the whole request has been received.
        let Some(mut end) = routed.request.body_mut().end_signal() else {
            let deadline = Instant::now() + t;
            return TimeoutFuture::from(TimeoutFutureState::Timed {
                fut: self.inner.call(routed),
                sleep: tokio::time::sleep_until(deadline),
            });
        };
        let fut = self.inner.call(routed);
        TimeoutFuture::from(TimeoutFutureState::Streaming {
            fut: Box::pin(async move {
                tokio::pin!(fut);
                tokio::select! {
                    // An answer before the request body ended (an early response): the
                    // timeout runs from now for the response body.
                    r = &mut fut => {
                        return r.map(|mut resp| {
                            resp.body_mut().cut_at(Instant::now() + t);
                            resp
                        });
                    }
                    // Ended, failed or dropped: the timer starts.
                    _ = end.wait_for(|ended| *ended) => {}
                }
                let deadline = Instant::now() + t;
                match tokio::time::timeout_at(deadline, fut).await {
                    Ok(r) => r.map(|mut resp| {
                        resp.body_mut().cut_at(deadline);
                        resp
                    }),
                    Err(_) => Ok(MeshFailure::Timeout.into_response()),
                }
            }),
        })
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    #[project = TimeoutFutureStateProj]
    enum TimeoutFutureState<F> {
        /// No timeout.
        Plain {
            #[pin]
            fut: F,
        },
        /// The request was complete: the timer runs.
        Timed {
            #[pin]
            fut: F,
            #[pin]
            sleep: Sleep,
        },
        /// The request body is still streaming: the timer starts at its end (boxed).
        Streaming {
            fut: BoxFuture<Result<Response<ResBody>, BoxError>>,
        },
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        state: TimeoutFutureState<F>,
    }
}

impl<F> From<TimeoutFutureState<F>> for TimeoutFuture<F> {
    fn from(state: TimeoutFutureState<F>) -> Self {
        TimeoutFuture { state }
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            TimeoutFutureStateProj::Plain { fut } => fut.poll(cx),
            TimeoutFutureStateProj::Timed { fut, sleep } => {
                if let Poll::Ready(r) = fut.poll(cx) {
                    let deadline = sleep.deadline();
                    return Poll::Ready(r.map(|mut resp| {
                        resp.body_mut().cut_at(deadline);
                        resp
                    }));
                }
                match sleep.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Ok(MeshFailure::Timeout.into_response())),
                    Poll::Pending => Poll::Pending,
                }
            }
            TimeoutFutureStateProj::Streaming { fut } => fut.as_mut().poll(cx),
        }
    }
}
