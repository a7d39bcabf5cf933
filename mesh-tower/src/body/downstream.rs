//! The caller's request body as an edge listener reads it: when it is malformed (an
//! invalid chunked encoding), the request is the caller's fault, not the upstream's. [`DownstreamBody`] records that in a
//! [`DownstreamFault`] the listener keeps, so that the answer is Envoy's `400` flagged
//! `DPE` rather than a `503` blamed on the upstream whose request broke with it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// Whether a request's body from its caller was malformed (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct DownstreamFault(Arc<AtomicBool>);

impl DownstreamFault {
    /// True once reading the body has failed for a reason other than the caller leaving.
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pin_project_lite::pin_project! {
    /// A caller's request body that records a read failure in its [`DownstreamFault`].
    #[derive(Debug)]
    pub struct DownstreamBody<B> {
        #[pin]
        inner: B,
        fault: DownstreamFault,
    }
}

impl<B> DownstreamBody<B> {
    /// Wraps `inner`; the returned [`DownstreamFault`] tells whether reading it failed.
    pub fn new(inner: B) -> (Self, DownstreamFault) {
        let fault = DownstreamFault::default();
        (
            DownstreamBody {
                inner,
                fault: fault.clone(),
            },
            fault,
        )
    }
}

impl<B> Body for DownstreamBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                // A caller that went away mid-body is no protocol error (Envoy: `DC`).
                let gone = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_incomplete_message);
                if !gone {
                    this.fault.0.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Err(e)))
            }
            other => other.map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that sends `ab`, then fails as a malformed chunk would.
    struct Broken(u8);

    impl Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0 += 1;
            Poll::Ready(Some(match self.0 {
                1 => Ok(Frame::data(Bytes::from_static(b"ab"))),
                _ => Err(std::io::Error::other("invalid chunk size line")),
            }))
        }
    }

    #[tokio::test]
    async fn a_failed_read_is_recorded_and_passed_on() {
        let (body, fault) = DownstreamBody::new(Broken(0));
        assert!(!fault.happened());
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("invalid chunk size"), "{err}");
        assert!(fault.happened());
        let (body, fault) =
            DownstreamBody::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        assert!(!fault.happened());
    }
}
