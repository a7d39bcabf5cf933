//! Request bodies: streamed at once, kept for replay when retries or mirrors need them.
//!
//! A request is routed and sent as soon as its headers are known: its body streams to
//! the upstream frame by frame, so client-streaming and bidirectional gRPC calls, long
//! uploads and `Channel` bodies work as they do over a plain hyper client. Retries and
//! mirrors need to send the body more than once, so on routes that have them the body
//! becomes a *replay* body: every frame forwarded is also kept (large frames by
//! reference, small ones copied so they do not pin a connection's read buffer) up to a
//! bound ([`DEFAULT_BUFFER_LIMIT`], counting 64 bytes of bookkeeping per frame), and each
//! further attempt or mirror reads the kept frames and then the rest of the stream. A
//! body that outgrows the bound is sent once, intact, and never retried — Envoy's rule
//! for its retry buffer.
//!
//! The current attempt pulls the caller's body. When a retry replaces an attempt, the old
//! attempt's copy fails ([`BodyError::Abandoned`]), so its connection resets that request
//! as Envoy does, and it can no longer take frames from the next attempt. A mirror's copy
//! follows the attempt (it never takes the body away from it) and pulls by itself only
//! once no attempt is left. The end of the body is its last frame, its trailers, or as
//! many bytes as its exact size says — whichever comes first — and [`ReqBody::end_signal`]
//! reports it (the route timeout starts there, as Envoy's does).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::BoxError;
use crate::telemetry::messages::{Counting, GrpcMessagesBody, Messages};

/// Request bodies up to this size can be retried or mirrored.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

type Stream = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + 'static>>;

/// Why a request body could not be (re)sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Another attempt read past the replay bound, so this copy cannot be completed.
    #[error("request body is larger than the replay buffer ({0} bytes)")]
    Overflow(usize),
    /// The caller's body failed; every copy fails with it.
    #[error("request body failed: {0}")]
    Source(Arc<str>),
    /// The attempt this copy belonged to was abandoned for a retry.
    #[error("request attempt abandoned for a retry")]
    Abandoned,
}

/// A request body inside the mesh: in memory, streaming once, or streaming with replay.
pub struct ReqBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    Stream { body: Stream, limit: usize },
    Replay(Replay),
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
            Inner::Replay(r) => write!(f, "ReqBody::Replay(#{})", r.id),
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

    /// A streaming body; if a retry or mirror needs it, up to `limit` bytes of it are
    /// kept for replay (see [`make_replayable`](Self::make_replayable)).
    pub fn streaming<B>(body: B, limit: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return ReqBody::empty();
        }
        ReqBody {
            inner: Inner::Stream {
                body: Box::pin(body.map_err(Into::into)),
                limit,
            },
        }
    }

    /// Turns a streaming body into a replay body, so that [`try_clone`](Self::try_clone)
    /// succeeds while the body stays within its bound. In-memory and replay bodies are
    /// left as they are.
    pub fn make_replayable(&mut self) {
        if !matches!(self.inner, Inner::Stream { .. }) {
            return;
        }
        let Inner::Stream { body, limit } = std::mem::replace(&mut self.inner, Inner::Full(None))
        else {
            return;
        };
        self.inner = Inner::Replay(Replay::new(body, limit));
    }

    /// A copy that sends the same bytes, when the body is in memory or a replay body
    /// still within its bound.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Full(b) => Some(ReqBody {
                inner: Inner::Full(b.clone()),
            }),
            Inner::Stream { .. } => None,
            Inner::Replay(r) => r.fork(false).map(|r| ReqBody {
                inner: Inner::Replay(r),
            }),
        }
    }

    /// A copy for a mirror: like [`try_clone`](Self::try_clone), but while an attempt of
    /// the request is alive the copy only reads what that attempt has pulled from the
    /// caller, so a mirror never takes the body away from the request it copies. When no
    /// attempt is left (the upstream answered without reading the body, say), the copy
    /// reads the caller's body itself, as Envoy keeps streaming to a shadow.
    pub(crate) fn try_clone_follower(&self) -> Option<Self> {
        match &self.inner {
            Inner::Replay(r) => r.fork(true).map(|r| ReqBody {
                inner: Inner::Replay(r),
            }),
            _ => self.try_clone(),
        }
    }

    /// Abandons the copies sent so far (the attempts a retry replaces): each fails with
    /// [`BodyError::Abandoned`] the next time it is read, so the connection sending it
    /// resets that request — as Envoy resets the upstream request it retries — and it
    /// stops pulling the caller's body. Copies made afterwards, and mirrors, are not
    /// affected.
    pub fn abandon_copies(&self) {
        if let Inner::Replay(r) = &self.inner {
            r.abandon();
        }
    }

    /// True when the body can (still) be sent again.
    pub fn is_replayable(&self) -> bool {
        match &self.inner {
            Inner::Full(_) => true,
            Inner::Stream { .. } => false,
            Inner::Replay(r) => !r.lock().overflowed(),
        }
    }

    /// A signal that turns `true` when the caller's body has been received completely
    /// (or failed, or was dropped: the receiver then reports the sender gone). `None`
    /// when the body is already complete. Envoy starts the route timeout there.
    pub fn end_signal(&mut self) -> Option<watch::Receiver<bool>> {
        match &mut self.inner {
            Inner::Full(_) => None,
            Inner::Stream { body, .. } => {
                let (tx, rx) = watch::channel(false);
                let inner = std::mem::replace(
                    body,
                    Box::pin(http_body_util::Empty::new().map_err(|never| match never {})),
                );
                *body = Box::pin(SignalOnEnd::new(inner, tx));
                Some(rx)
            }
            Inner::Replay(r) => {
                let mut st = r.lock();
                if st.ended {
                    return None;
                }
                let source = st.source.take()?;
                let (tx, rx) = watch::channel(false);
                st.source = Some(Box::pin(SignalOnEnd::new(source, tx)));
                Some(rx)
            }
        }
    }
}

impl ReqBody {
    /// Counts the caller's gRPC messages into `messages` as the body is read from the
    /// caller: once, however many attempts or mirrors send it (Envoy counts what its
    /// downstream sends).
    pub(crate) fn count_messages(&mut self, messages: Arc<Messages>) {
        match &mut self.inner {
            Inner::Full(b) => {
                if let Some(b) = b {
                    Counting::request(messages).data(b);
                }
            }
            Inner::Stream { body, .. } => {
                let inner = std::mem::replace(
                    body,
                    Box::pin(http_body_util::Empty::new().map_err(|never| match never {})),
                );
                *body = Box::pin(GrpcMessagesBody::new(inner, Some(messages)));
            }
            Inner::Replay(r) => {
                let mut st = r.lock();
                if let Some(source) = st.source.take() {
                    st.source = Some(Box::pin(GrpcMessagesBody::new(source, Some(messages))));
                }
            }
        }
    }
}

/// A body that reports when it has been received completely: its end, its trailers
/// (the last frame), as many bytes as its exact size says, or an error.
struct SignalOnEnd {
    inner: Stream,
    tx: watch::Sender<bool>,
    remaining: Option<u64>,
}

impl SignalOnEnd {
    fn new(inner: Stream, tx: watch::Sender<bool>) -> Self {
        let remaining = inner.size_hint().exact();
        SignalOnEnd {
            inner,
            tx,
            remaining,
        }
    }
}

impl Body for SignalOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        let done = match &polled {
            Poll::Pending => false,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(r), Some(d)) = (this.remaining.as_mut(), frame.data_ref()) {
                    *r = r.saturating_sub(d.len() as u64);
                }
                frame.is_trailers() || this.remaining == Some(0) || this.inner.is_end_stream()
            }
        };
        if done {
            this.tx.send_replace(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            Inner::Stream { body, .. } => body.as_mut().poll_frame(cx),
            Inner::Replay(r) => r.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Stream { body, .. } => body.is_end_stream(),
            Inner::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream { body, .. } => body.size_hint(),
            Inner::Replay(r) => r.hint,
        }
    }
}

/// Frames smaller than this are copied when kept, so that a small slice does not pin a
/// large read buffer of the connection it came from.
const COPY_BELOW: usize = 4096;

/// What keeping one frame costs besides its bytes (its handle in the list and the
/// handle's allocation), counted toward the bound so that a body of tiny frames cannot
/// hold many times the bound in memory.
const FRAME_OVERHEAD: usize = 64;

/// One reader of a replayed body. Readers share the caller's body: the current attempt
/// pulls the next frame from it, keeps a reference to it (or a copy, for small frames)
/// and wakes the others.
struct Replay {
    shared: Arc<Shared>,
    /// Its identity among the readers of the body.
    id: u64,
    /// The attempt generation it belongs to (readers of an older generation are
    /// abandoned).
    generation: u64,
    /// A mirror's reader: it pulls from the caller only when no attempt is alive.
    follower: bool,
    /// How many kept frames it has read.
    pos: usize,
    /// Whether it has sent the trailers.
    trailers_sent: bool,
    /// The whole body's size hint (each reader sends the whole body).
    hint: SizeHint,
}

struct Shared {
    state: Mutex<State>,
    limit: usize,
}

struct State {
    /// The caller's body, until it ends or fails.
    source: Option<Stream>,
    /// The data frames read so far (dropped on overflow).
    chunks: Vec<Bytes>,
    /// Their accounted size: bytes plus [`FRAME_OVERHEAD`] per frame.
    size: usize,
    /// Bytes still expected when the body's size is known.
    remaining: Option<u64>,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// On overflow, the reader that went past the bound: it alone may go on.
    owner: Option<u64>,
    error: Option<Arc<str>>,
    /// Readers waiting for the next frame.
    waiters: Vec<Waker>,
    /// The reader whose waker the source holds.
    poller: Option<u64>,
    next_id: u64,
    /// The current attempt generation.
    generation: u64,
    /// Live readers of the current generation that are not followers.
    live: usize,
}

impl State {
    fn overflowed(&self) -> bool {
        self.owner.is_some()
    }

    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiters.push(cx.waker().clone());
        }
    }

    /// The caller's body is complete: no more frames will come.
    fn end(&mut self) {
        self.ended = true;
        self.source = None;
        self.wake_all();
    }
}

impl Replay {
    fn new(body: Stream, limit: usize) -> Self {
        let hint = body.size_hint();
        Replay {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    source: Some(body),
                    chunks: Vec::new(),
                    size: 0,
                    remaining: hint.exact(),
                    trailers: None,
                    ended: false,
                    owner: None,
                    error: None,
                    waiters: Vec::new(),
                    poller: None,
                    next_id: 1,
                    generation: 0,
                    live: 1,
                }),
                limit,
            }),
            id: 0,
            generation: 0,
            follower: false,
            pos: 0,
            trailers_sent: false,
            hint,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader panicking while holding the lock leaves consistent state behind
        // (every update is a single assignment), so a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new reader from the start of the body, unless the body outgrew the bound.
    fn fork(&self, follower: bool) -> Option<Replay> {
        let mut st = self.lock();
        if st.overflowed() {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        if !follower {
            st.live += 1;
        }
        Some(Replay {
            shared: self.shared.clone(),
            id,
            generation: st.generation,
            follower,
            pos: 0,
            trailers_sent: false,
            hint: self.hint,
        })
    }

    /// Makes every existing attempt reader stale (see [`ReqBody::abandon_copies`]).
    fn abandon(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.live = 0;
        // Followers may now pull by themselves; stale readers fail when polled.
        st.wake_all();
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = self.shared.clone();
        let mut st = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(e) = &st.error {
            return Poll::Ready(Some(Err(Box::new(BodyError::Source(e.clone())))));
        }
        let owner = match st.owner {
            Some(o) if o != self.id => {
                return Poll::Ready(Some(Err(Box::new(BodyError::Overflow(shared.limit)))));
            }
            Some(_) => true,
            None => false,
        };
        if !self.follower && self.generation != st.generation {
            return Poll::Ready(Some(Err(Box::new(BodyError::Abandoned))));
        }
        if !owner && self.pos < st.chunks.len() {
            let chunk = st.chunks[self.pos].clone();
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if st.ended {
            if !self.trailers_sent
                && let Some(t) = &st.trailers
            {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        if self.follower && st.live > 0 {
            // An attempt is alive: it pulls, this copy follows.
            st.wait(cx);
            return Poll::Pending;
        }
        // This reader is ahead: pull the next frame from the caller's body.
        let Some(source) = st.source.as_mut() else {
            return Poll::Ready(None);
        };
        match source.as_mut().poll_frame(cx) {
            Poll::Pending => {
                st.poller = Some(self.id);
                st.wait(cx);
                Poll::Pending
            }
            Poll::Ready(None) => {
                st.end();
                if !self.trailers_sent
                    && let Some(t) = &st.trailers
                {
                    self.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.error = Some(e.to_string().into());
                st.source = None;
                st.wake_all();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if let Some(r) = st.remaining.as_mut() {
                            *r = r.saturating_sub(data.len() as u64);
                        }
                        if !owner {
                            st.size += data.len() + FRAME_OVERHEAD;
                            if st.size > shared.limit {
                                // Past the bound: stop keeping frames; this reader goes
                                // on alone, the others fail.
                                st.owner = Some(self.id);
                                st.chunks = Vec::new();
                            } else {
                                let kept = if data.len() < COPY_BELOW {
                                    Bytes::copy_from_slice(&data)
                                } else {
                                    data.clone()
                                };
                                st.chunks.push(kept);
                                self.pos += 1;
                            }
                        }
                        // As many bytes as the body's size says: it is complete (an
                        // HTTP/1.1 connection stops reading a body there).
                        if st.remaining == Some(0) {
                            st.end();
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        // Trailers are the last frame of a body.
                        if let Some(t) = frame.trailers_ref() {
                            st.trailers = Some(t.clone());
                            self.trailers_sent = true;
                            st.end();
                        }
                        frame
                    }
                };
                st.wake_all();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.lock();
        if !self.follower && self.generation != st.generation {
            return false;
        }
        st.owner.is_none_or(|o| o == self.id)
            && st.ended
            && (st.owner.is_some() || self.pos >= st.chunks.len())
            && (self.trailers_sent || st.trailers.is_none())
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let mut st = self.lock();
        let current = !self.follower && self.generation == st.generation;
        if current {
            st.live = st.live.saturating_sub(1);
        }
        if current || st.poller == Some(self.id) {
            // An attempt went away, or the source holds this reader's waker: let the
            // others (a follower, now alone, or another attempt) go on.
            if st.poller == Some(self.id) {
                st.poller = None;
            }
            st.wake_all();
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

    fn want(n: usize, size: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| vec![b'a' + (i % 26) as u8; size])
            .collect()
    }

    #[tokio::test]
    async fn streaming_bodies_are_not_replayable_until_asked() {
        let mut body = ReqBody::streaming(chunks(3, 10), 64 * 1024);
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        body.make_replayable();
        assert!(body.is_replayable());
        let copy = body.try_clone().unwrap();
        let a = body.collect().await.unwrap().to_bytes();
        let b = copy.collect().await.unwrap().to_bytes();
        assert_eq!(a, b);
        assert_eq!(&a[..], &want(3, 10)[..]);
    }

    #[tokio::test]
    async fn a_copy_made_after_the_first_read_still_gets_everything() {
        let mut body = ReqBody::streaming(chunks(4, 10), 64 * 1024);
        body.make_replayable();
        let mut first = body.try_clone().unwrap();
        let head = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(head.len(), 10);
        let second = body.try_clone().unwrap();
        let rest = first.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), 30);
        let all = second.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &want(4, 10)[..]);
    }

    #[tokio::test]
    async fn past_the_bound_the_leader_goes_on_and_copies_fail() {
        let mut body = ReqBody::streaming(chunks(10, 10), 25);
        body.make_replayable();
        let leader = body.try_clone().unwrap();
        let all = leader.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &want(10, 10)[..], "the leader's body is intact");
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        let err = body.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<BodyError>(),
            Some(&BodyError::Overflow(25))
        );
    }

    #[tokio::test]
    async fn readers_in_step_both_see_every_frame() {
        let (mut tx, rx) = Channel::<Bytes, BoxError>::new(1);
        let mut body = ReqBody::streaming(rx, 64 * 1024);
        body.make_replayable();
        let a = body.try_clone().unwrap();
        let b = body.try_clone().unwrap();
        drop(body);
        let ra = tokio::spawn(async move { a.collect().await.map(|c| c.to_bytes()) });
        let rb = tokio::spawn(async move { b.collect().await.map(|c| c.to_bytes()) });
        for i in 0..5u8 {
            tx.send_data(Bytes::from(vec![i; 3])).await.unwrap();
            tokio::task::yield_now().await;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send_trailers(trailers).await.unwrap();
        drop(tx);
        let a = ra.await.unwrap().unwrap();
        let b = rb.await.unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 15);
    }

    #[tokio::test]
    async fn a_follower_never_pulls_and_never_takes_over() {
        let mut body = ReqBody::streaming(chunks(10, 10), 25);
        body.make_replayable();
        let mut follower = body.try_clone_follower().unwrap();
        // Alone, the follower waits: it does not pull from the caller's body.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), follower.frame()).await;
        assert!(waited.is_err());
        let leader = body.try_clone().unwrap();
        let all = leader.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &want(10, 10)[..], "the original is intact");
        let err = follower.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<BodyError>(),
            Some(&BodyError::Overflow(25))
        );
    }

    #[tokio::test]
    async fn a_follower_alone_reads_the_body_itself() {
        let mut body = ReqBody::streaming(chunks(3, 10), 64 * 1024);
        body.make_replayable();
        let follower = body.try_clone_follower().unwrap();
        // The request's own copy goes away unread (the upstream answered early).
        drop(body);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), follower.collect())
            .await
            .expect("the follower is not left waiting")
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], &want(3, 10)[..]);
    }

    #[tokio::test]
    async fn abandoned_copies_fail_and_the_next_gets_everything() {
        let mut body = ReqBody::streaming(chunks(4, 10), 64 * 1024);
        body.make_replayable();
        let mut first = body.try_clone().unwrap();
        assert_eq!(
            first
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len(),
            10
        );
        body.abandon_copies();
        let err = first.frame().await.unwrap().unwrap_err();
        assert_eq!(err.downcast_ref::<BodyError>(), Some(&BodyError::Abandoned));
        assert!(body.is_replayable());
        let second = body.try_clone().unwrap();
        let all = second.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &want(4, 10)[..]);
    }

    #[tokio::test]
    async fn tiny_frames_count_their_overhead_toward_the_bound() {
        let limit = 64 * 1024;
        // 500 one-byte frames: 500 bytes, about 32 KiB with their overhead: kept.
        let mut body = ReqBody::streaming(chunks(500, 1), limit);
        body.make_replayable();
        let copy = body.try_clone().unwrap();
        assert_eq!(copy.collect().await.unwrap().to_bytes().len(), 500);
        assert!(body.is_replayable());
        // 2,000 one-byte frames: only 2,000 bytes, but past the bound once their
        // overhead is counted: sent once, intact, and not kept.
        let mut body = ReqBody::streaming(chunks(2000, 1), limit);
        body.make_replayable();
        let copy = body.try_clone().unwrap();
        assert_eq!(copy.collect().await.unwrap().to_bytes().len(), 2000);
        assert!(!body.is_replayable());
    }

    #[tokio::test]
    async fn the_end_signal_fires_at_the_end_of_the_body() {
        let (mut tx, rx) = Channel::<Bytes, BoxError>::new(4);
        let mut body = ReqBody::streaming(rx, 64 * 1024);
        let mut ended = body.end_signal().unwrap();
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
        tx.send_data(Bytes::from_static(b"a")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!*ended.borrow(), "not yet");
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), ended.wait_for(|e| *e))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), Bytes::from_static(b"a"));
        assert!(
            ReqBody::full("x").end_signal().is_none(),
            "in memory: complete"
        );
    }

    #[tokio::test]
    async fn trailers_reach_every_copy() {
        let (mut tx, rx) = Channel::<Bytes, BoxError>::new(4);
        tx.try_send(Frame::data(Bytes::from_static(b"x"))).unwrap();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.try_send(Frame::trailers(t)).unwrap();
        drop(tx);
        let mut body = ReqBody::streaming(rx, 64 * 1024);
        body.make_replayable();
        let copy = body.try_clone().unwrap();
        for b in [body, copy] {
            let c = b.collect().await.unwrap();
            assert_eq!(
                c.trailers().and_then(|t| t.get("grpc-status")),
                Some(&http::HeaderValue::from_static("0"))
            );
            assert_eq!(c.to_bytes(), Bytes::from_static(b"x"));
        }
    }

    #[tokio::test]
    async fn a_failing_source_fails_every_copy() {
        let (mut tx, rx) = Channel::<Bytes, BoxError>::new(4);
        tx.try_send(Frame::data(Bytes::from_static(b"x"))).unwrap();
        tx.abort("client went away".into());
        let mut body = ReqBody::streaming(rx, 64 * 1024);
        body.make_replayable();
        let copy = body.try_clone().unwrap();
        assert!(body.collect().await.is_err());
        let err = copy.collect().await.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<BodyError>(), Some(BodyError::Source(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_reader_dropped_while_waiting_hands_the_source_on() {
        let (mut tx, rx) = Channel::<Bytes, BoxError>::new(1);
        let mut body = ReqBody::streaming(rx, 64 * 1024);
        body.make_replayable();
        let mut a = body.try_clone().unwrap();
        let b = body.try_clone().unwrap();
        // `b` waits first; then `a` polls the source (which now holds only `a`'s
        // waker) and goes away, like an abandoned attempt.
        let rb = tokio::spawn(async move { b.collect().await.map(|c| c.to_bytes()) });
        tokio::task::yield_now().await;
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), a.frame()).await;
        assert!(waited.is_err());
        drop(a);
        tx.send_data(Bytes::from_static(b"late")).await.unwrap();
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rb)
            .await
            .expect("the remaining reader is woken")
            .unwrap()
            .unwrap();
        assert_eq!(got, Bytes::from_static(b"late"));
    }

    #[tokio::test]
    async fn grpc_messages_are_counted_once_however_many_copies_send_them() {
        use crate::telemetry::MessageSeries;
        use crate::telemetry::messages::Messages;
        // Three messages (a 5-byte prefix, 5 bytes each) in pieces of 3, then 10 bytes:
        // most pieces hold the end of one message and the start of the next.
        let stream: Vec<u8> = [0, 0, 0, 0, 5, 1, 2, 3, 4, 5].repeat(3);
        let (mut tx, source) = Channel::<Bytes, BoxError>::new(8);
        let (head, rest) = stream.split_at(3);
        for piece in std::iter::once(head).chain(rest.chunks(10)) {
            assert!(
                tx.try_send(Frame::data(Bytes::copy_from_slice(piece)))
                    .is_ok()
            );
        }
        drop(tx);
        let counted = |body: &mut ReqBody| {
            let messages = Messages::new();
            body.count_messages(messages.clone());
            let series = Arc::new(MessageSeries::default());
            messages.known(|| series.clone());
            series
        };

        // Sent by an attempt, a retry and a mirror: counted as the caller sent it.
        let mut body = ReqBody::streaming(source, 64 * 1024);
        let series = counted(&mut body);
        body.make_replayable();
        let retry = body.try_clone().unwrap();
        let mirror = body.try_clone_follower().unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(retry.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(mirror.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(series.counts(), (3, 0));

        // Made replayable first: the same.
        let (mut tx, source) = Channel::<Bytes, BoxError>::new(8);
        assert!(
            tx.try_send(Frame::data(Bytes::from(stream.clone())))
                .is_ok()
        );
        drop(tx);
        let mut body = ReqBody::streaming(source, 64 * 1024);
        body.make_replayable();
        let series = counted(&mut body);
        let retry = body.try_clone().unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(retry.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(series.counts(), (3, 0));

        // A body in memory is counted at once.
        let series = counted(&mut ReqBody::full(Bytes::from(stream)));
        assert_eq!(series.counts(), (3, 0));
    }
}
