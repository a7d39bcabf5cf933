//! The response future most layers share: the inner service's future, or an answer the
//! layer gave itself (a redirect, a preflight, an injected abort, a mesh failure).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::{BoxError, ResBody};

pin_project! {
    /// The inner service's response future, or the layer's own answer.
    #[project = ResponseFutureStateProj]
    enum ResponseFutureState<F> {
        /// Forwarded to the inner service.
        Inner {
            #[pin]
            fut: F,
        },
        /// Answered by the layer.
        Ready {
            resp: Option<Response<ResBody>>,
        },
    }
}

pin_project! {
    /// The inner service's response future, or the layer's own answer.
    pub struct ResponseFuture<F> {
        #[pin]
        state: ResponseFutureState<F>,
    }
}

impl<F> From<ResponseFutureState<F>> for ResponseFuture<F> {
    fn from(state: ResponseFutureState<F>) -> Self {
        ResponseFuture { state }
    }
}

impl<F> ResponseFuture<F> {
    /// The inner service's future.
    pub fn inner(fut: F) -> Self {
        ResponseFuture::from(ResponseFutureState::Inner { fut })
    }

    /// An answer of the layer.
    pub fn ready(resp: Response<ResBody>) -> Self {
        ResponseFuture::from(ResponseFutureState::Ready { resp: Some(resp) })
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ResponseFutureStateProj::Inner { fut } => fut.poll(cx),
            ResponseFutureStateProj::Ready { resp } => Poll::Ready(
                resp.take()
                    .ok_or_else(|| BoxError::from("response future polled after completion")),
            ),
        }
    }
}
