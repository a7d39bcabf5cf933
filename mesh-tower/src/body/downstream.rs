//! The caller's request body as an edge listener reads it: when it is malformed (an
//! invalid chunked encoding), stops arriving for longer than the listener allows, or
//! grows past the listener's bound, the request is the caller's fault, not the
//! upstream's. [`DownstreamBody`] records which in a [`DownstreamFault`] the listener
//! keeps, so that the answer is Envoy's `400` flagged `DPE`, `408` flagged `SI` or
//! `413`, rather than a `503` blamed on the upstream whose request broke with it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// What went wrong with a request's body from its caller (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It was malformed.
    Malformed,
    /// It stopped arriving for longer than allowed.
    Stalled,
    /// It grew past the listener's bound.
    TooLarge,
}

/// Whether a request's body from its caller went wrong, and how (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct DownstreamFault(Arc<AtomicU8>);

impl DownstreamFault {
    /// What went wrong, if anything (a caller that went away is no fault of this kind).
    pub fn get(&self) -> Option<Fault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Fault::Malformed),
            2 => Some(Fault::Stalled),
            3 => Some(Fault::TooLarge),
            _ => None,
        }
    }

    fn set(&self, fault: Fault) {
        let v = match fault {
            Fault::Malformed => 1,
            Fault::Stalled => 2,
            Fault::TooLarge => 3,
        };
        self.0.store(v, Ordering::Release);
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving for {0:?}")]
pub struct BodyStalled(pub Duration);

/// The error a body past its bound ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

pin_project_lite::pin_project! {
    /// A caller's request body that records what went wrong with it in its
    /// [`DownstreamFault`], and ends it when it stops arriving for `idle` or grows past
    /// `max` bytes.
    #[derive(Debug)]
    pub struct DownstreamBody<B> {
        #[pin]
        inner: B,
        fault: DownstreamFault,
        idle: Option<Duration>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        max: Option<u64>,
        received: u64,
    }
}

impl<B> DownstreamBody<B> {
    /// Wraps `inner`, ended with [`BodyStalled`] when no frame of it arrives for `idle`;
    /// the returned [`DownstreamFault`] tells what went wrong.
    pub fn new(inner: B, idle: Option<Duration>) -> (Self, DownstreamFault) {
        let fault = DownstreamFault::default();
        (
            DownstreamBody {
                inner,
                fault: fault.clone(),
                idle,
                timer: None,
                max: None,
                received: 0,
            },
            fault,
        )
    }

    /// Ends the body with [`BodyTooLarge`] once more than `max` bytes of it arrived.
    pub fn with_max(mut self, max: Option<u64>) -> Self {
        self.max = max;
        self
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
                    this.fault.set(Fault::Malformed);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let Some(idle) = *this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.fault.set(Fault::Stalled);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                // Something arrived: the idle time starts again.
                *this.timer = None;
                if let (Some(max), Some(data)) = (*this.max, frame.data_ref()) {
                    *this.received = this.received.saturating_add(data.len() as u64);
                    if *this.received > max {
                        this.fault.set(Fault::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(max)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
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
        let (body, fault) = DownstreamBody::new(Broken(0), None);
        assert_eq!(fault.get(), None);
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("invalid chunk size"), "{err}");
        assert_eq!(fault.get(), Some(Fault::Malformed));
        let (body, fault) = DownstreamBody::new(
            http_body_util::Full::new(Bytes::from_static(b"ok")),
            Some(Duration::from_millis(10)),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(fault.get(), None);
    }

    /// A body that sends a frame every `every`, `left` times.
    struct Trickle {
        every: Duration,
        left: u32,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let every = self.every;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            std::task::ready!(timer.as_mut().poll(cx));
            self.timer = None;
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// The idle bound is between frames, not over the whole body: a body that keeps
    /// arriving is read whole however long it takes; one that stops is ended.
    #[tokio::test]
    async fn a_body_that_stops_arriving_is_ended_after_the_idle_bound() {
        let idle = Some(Duration::from_millis(500));
        let trickle = |ms| Trickle {
            every: Duration::from_millis(ms),
            left: 5,
            timer: None,
        };
        // 5 frames 100 ms apart: 500 ms in all, never 500 ms without a frame.
        let (body, fault) = DownstreamBody::new(trickle(100), idle);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "xxxxx");
        assert_eq!(fault.get(), None);
        let (body, fault) = DownstreamBody::new(trickle(2000), idle);
        let started = std::time::Instant::now();
        let err = body.collect().await.unwrap_err();
        assert!(err.downcast_ref::<BodyStalled>().is_some(), "{err}");
        assert_eq!(fault.get(), Some(Fault::Stalled));
        assert!(started.elapsed() < Duration::from_millis(1900));
    }

    /// A body is read up to its bound; one byte more ends it as the caller's fault.
    #[tokio::test]
    async fn a_body_past_its_bound_is_ended() {
        let trickle = || Trickle {
            every: Duration::from_millis(1),
            left: 5,
            timer: None,
        };
        let (body, fault) = DownstreamBody::new(trickle(), None);
        let body = body.with_max(Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "xxxxx");
        assert_eq!(fault.get(), None);
        let (body, fault) = DownstreamBody::new(trickle(), None);
        let err = body.with_max(Some(4)).collect().await.unwrap_err();
        assert!(err.downcast_ref::<BodyTooLarge>().is_some(), "{err}");
        assert_eq!(fault.get(), Some(Fault::TooLarge));
    }
}
