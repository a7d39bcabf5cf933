//! Response bodies: the upstream's body as it came, plus what must last as long as the
//! response does.
//!
//! A [`ResBody`] holds the upstream's body without boxing it again (hyper's `Incoming`,
//! or bytes the mesh answers with itself), and two optional passengers: the endpoint's
//! in-flight count, released when the body ends (the least-request balancers count a
//! request until its response is done, not only until its headers), and the route
//! timeout's deadline (Envoy's covers the whole response), at which the body fails with
//! [`BodyTimeout`].

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::BoxError;
use crate::state::InFlight;
use crate::telemetry::meter::Meter;
use crate::transport::pool::Attached;

/// The route timeout expired while the response body was being received; the response
/// is cut, as Envoy resets the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream request timeout (response body)")]
pub struct BodyTimeout;

/// A response body of the mesh (see the module documentation).
pub struct ResBody {
    kind: Kind,
    /// Released when the body ends or is dropped.
    in_flight: Option<InFlight>,
    /// The request's place among its cluster's requests in flight (its circuit
    /// breaker), released when the body ends or is dropped.
    active: Option<Attached>,
    /// The route timeout.
    deadline: Option<tokio::time::Instant>,
    /// The timer for `deadline`, armed the first time the body has to wait (most
    /// responses are complete before anyone waits, and never pay for a timer).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The index of the endpoint (in its cluster) that answered, for the retry layer to
    /// avoid it on the next attempt.
    pub(crate) endpoint: Option<u32>,
    /// True when the answer came over the mesh's mutual TLS (for the metrics'
    /// principals).
    pub(crate) mtls: bool,
    /// The request's metrics, recorded when the body ends.
    meter: Option<Box<Meter>>,
}

enum Kind {
    Bytes(Option<Bytes>),
    Incoming(hyper::body::Incoming),
    Boxed(BoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for ResBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Bytes(b) => format!("Bytes({})", b.as_ref().map_or(0, Bytes::len)),
            Kind::Incoming(_) => "Incoming".into(),
            Kind::Boxed(_) => "Boxed".into(),
        };
        f.debug_struct("ResBody")
            .field("kind", &kind)
            .field("deadline", &self.deadline.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ResBody {
    fn default() -> Self {
        ResBody::empty()
    }
}

/// A response body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResBody {
    ResBody::full(bytes)
}

impl ResBody {
    fn of(kind: Kind) -> Self {
        ResBody {
            kind,
            in_flight: None,
            active: None,
            deadline: None,
            timer: None,
            endpoint: None,
            mtls: false,
            meter: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResBody::of(Kind::Bytes(None))
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b: Bytes = bytes.into();
        ResBody::of(Kind::Bytes((!b.is_empty()).then_some(b)))
    }

    /// A body received by hyper.
    pub fn incoming(body: hyper::body::Incoming) -> Self {
        ResBody::of(Kind::Incoming(body))
    }

    /// Any other body (boxed).
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        ResBody::of(Kind::Boxed(body.map_err(Into::into).boxed()))
    }

    /// Holds `in_flight` until the body ends.
    pub(crate) fn hold(&mut self, in_flight: InFlight) {
        if !self.is_end_stream() {
            self.in_flight = Some(in_flight);
        }
    }

    /// Records `meter` when the body ends (at once when it already has).
    pub(crate) fn meter(&mut self, mut meter: Meter) {
        if self.is_end_stream() {
            meter.end();
        } else {
            self.meter = Some(Box::new(meter));
        }
    }

    /// Holds `active` until the body ends.
    pub(crate) fn hold_attached(&mut self, active: Attached) {
        if !self.is_end_stream() {
            self.active = Some(active);
        }
    }

    /// Fails the body with [`BodyTimeout`] at `deadline` (an earlier deadline already set
    /// stays).
    pub(crate) fn cut_at(&mut self, deadline: tokio::time::Instant) {
        if self.is_end_stream() {
            return;
        }
        match self.deadline {
            Some(d) if d <= deadline => {}
            _ => {
                self.deadline = Some(deadline);
                if let Some(timer) = &mut self.timer {
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.in_flight = None;
                this.active = None;
                this.deadline = None;
                this.timer = None;
                if let Some(mut m) = this.meter.take() {
                    m.end();
                }
                polled
            }
            Poll::Ready(Some(Ok(ref frame))) => {
                if let Some(m) = &mut this.meter {
                    m.frame(frame);
                }
                if this.meter.is_some()
                    && this.is_end_stream()
                    && let Some(mut m) = this.meter.take()
                {
                    m.end();
                }
                polled
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.in_flight = None;
                this.active = None;
                this.deadline = None;
                this.timer = None;
                this.kind = Kind::Bytes(None);
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Bytes(b) => b.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

impl From<Bytes> for ResBody {
    fn from(b: Bytes) -> Self {
        ResBody::full(b)
    }
}

impl From<Full<Bytes>> for ResBody {
    fn from(b: Full<Bytes>) -> Self {
        ResBody::new(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_deadline_cuts_a_body_that_does_not_end() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut body = ResBody::new(body);
        body.cut_at(tokio::time::Instant::now() + Duration::from_millis(50));
        assert!(tx.send_data(Bytes::from_static(b"a")).await.is_ok());
        let first = body.frame().await;
        assert!(matches!(first, Some(Ok(f)) if f.data_ref().is_some()));
        let started = std::time::Instant::now();
        let err = body.frame().await;
        assert!(started.elapsed() < Duration::from_secs(1));
        let err = err.and_then(Result::err).map(|e| e.is::<BodyTimeout>());
        assert_eq!(err, Some(true));
        drop(tx);
    }

    #[tokio::test]
    async fn an_earlier_deadline_moves_an_armed_timer() {
        let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut body = ResBody::new(body);
        body.cut_at(tokio::time::Instant::now() + Duration::from_secs(3600));
        // The body waits once: the timer is armed for the late deadline.
        let waited = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(waited.is_err());
        body.cut_at(tokio::time::Instant::now() + Duration::from_millis(30));
        // A later deadline does not push the earlier one back.
        body.cut_at(tokio::time::Instant::now() + Duration::from_secs(7200));
        let cut = tokio::time::timeout(Duration::from_secs(2), body.frame()).await;
        let err = cut.ok().flatten().and_then(Result::err);
        assert_eq!(err.map(|e| e.is::<BodyTimeout>()), Some(true));
        drop(tx);
    }

    #[tokio::test]
    async fn bytes_bodies_end_and_ignore_deadlines() {
        let mut body = ResBody::full("hello");
        body.cut_at(tokio::time::Instant::now());
        let all = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(all.ok().as_deref(), Some(&b"hello"[..]));
        assert!(ResBody::empty().is_end_stream());
    }
}
