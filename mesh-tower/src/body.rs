//! Request and response bodies inside the mesh.
//!
//! Retries and mirrors need to send a request body more than once, so the mesh reads a
//! request body into memory up to a bound ([`DEFAULT_BUFFER_LIMIT`]) before routing it.
//! A body within the bound is [replayable](ReqBody::try_clone); a longer one is sent once,
//! its buffered prefix followed by the rest of the stream — never retried, never
//! corrupted.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

use crate::BoxError;

/// Request bodies up to this size are buffered and can be retried or mirrored.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// Response bodies of the mesh.
pub type ResBody = BoxBody<Bytes, BoxError>;

/// A response body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

type Stream = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + 'static>>;

/// A request body inside the mesh: fully buffered (replayable) or streaming.
pub struct ReqBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Stream,
    },
}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Full(b) => write!(
                f,
                "ReqBody::Full({} bytes)",
                b.as_ref().map_or(0, Bytes::len)
            ),
            Inner::Stream { .. } => f.write_str("ReqBody::Stream"),
        }
    }
}

impl ReqBody {
    /// An empty body.
    pub fn empty() -> Self {
        ReqBody {
            inner: Inner::Full(None),
        }
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b: Bytes = bytes.into();
        ReqBody {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
        }
    }

    /// A copy, when the body is buffered (and so can be sent again).
    pub fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Full(b) => Some(ReqBody {
                inner: Inner::Full(b.clone()),
            }),
            Inner::Stream { .. } => None,
        }
    }

    /// True when the body can be sent more than once.
    pub fn is_replayable(&self) -> bool {
        matches!(self.inner, Inner::Full(_))
    }

    /// Reads `body` into memory up to `limit` bytes. A longer body keeps streaming
    /// after the part already read.
    pub async fn buffer<B>(body: B, limit: usize) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(ReqBody::empty());
        }
        let mut body: Stream = Box::pin(body.map_err(Into::into));
        let mut chunks = VecDeque::new();
        let mut size = 0usize;
        loop {
            if size > limit {
                return Ok(ReqBody {
                    inner: Inner::Stream {
                        prefix: chunks,
                        rest: body,
                    },
                });
            }
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        size += data.len();
                        chunks.push_back(data);
                    }
                    // Trailers of a buffered request are dropped (HTTP/1.1 requests
                    // rarely have them; gRPC requests never do).
                }
            }
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut v = Vec::with_capacity(size);
                for c in chunks {
                    v.extend_from_slice(&c);
                }
                Bytes::from(v)
            }
        };
        Ok(ReqBody::full(bytes))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream { prefix, rest } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                rest.as_mut().poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream { prefix, rest } => {
                let p: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::channel::Channel;

    /// A streaming body of `n` chunks of `size` bytes.
    fn chunks(n: usize, size: usize) -> Channel<Bytes, BoxError> {
        let (mut tx, body) = Channel::<Bytes, BoxError>::new(n.max(1));
        for i in 0..n {
            let chunk = Bytes::from(vec![b'a' + (i % 26) as u8; size]);
            assert!(tx.try_send(Frame::data(chunk)).is_ok());
        }
        drop(tx);
        body
    }

    #[tokio::test]
    async fn small_bodies_are_replayable_and_large_ones_stream_intact() {
        let small = ReqBody::buffer(chunks(3, 10), 64).await.unwrap();
        assert!(small.is_replayable());
        let copy = small.try_clone().unwrap();
        let a = small.collect().await.unwrap().to_bytes();
        let b = copy.collect().await.unwrap().to_bytes();
        assert_eq!(a, b);
        assert_eq!(a.len(), 30);

        let big = ReqBody::buffer(chunks(10, 10), 25).await.unwrap();
        assert!(!big.is_replayable());
        assert!(big.try_clone().is_none());
        let all = big.collect().await.unwrap().to_bytes();
        let want: Vec<u8> = (0..10).flat_map(|i| vec![b'a' + i as u8; 10]).collect();
        assert_eq!(&all[..], &want[..], "the prefix and the rest, in order");
    }
}
