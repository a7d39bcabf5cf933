//! gRPC message counts (`istio_request_messages_total`, `istio_response_messages_total`):
//! how many messages each side of a gRPC request sent, counted as the bodies stream.
//!
//! A gRPC body is a sequence of messages, each a 5-byte prefix (a compressed flag and a
//! big-endian length) and that many bytes; HTTP/2 frames split prefixes and messages
//! anywhere. [`MessageCounter`] follows the framing with two numbers — bytes left of the
//! current message, prefix bytes seen — and counts a message when its first byte
//! arrives, as Envoy's gRPC frame inspector (which Istio's stats filter reads) does.
//!
//! As Istio's proxies do, the counts are reported while a stream is open, not only when
//! it ends: a request's counts reach its series (Istio's first 20 labels — the outcome
//! is not known yet) as soon as its two ends are known, which is the request's arrival on
//! the server's side and the response's head on the caller's (the endpoint that answered
//! names the destination). Messages counted before that wait in [`Messages`], shared by
//! the request's two bodies. A request that sends no message either way creates no
//! series; one that does reports both counts, a zero included (Envoy emits both once
//! its gRPC filter has seen a message).
//!
//! Only gRPC requests are counted, and only when a metric profile reports a message
//! count: other requests carry nothing more. The caller's side counts the request body it
//! streams to the upstream and the response it returns; the server's side counts the
//! response it returns, and the request body when the application takes it through
//! [`GrpcMessagesLayer`] (the request body type the application sees changes, so it is
//! a layer of its own: hyper's `Incoming`, which `mesh.serve` gives, cannot be wrapped
//! in place).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::metrics::MessageSeries;

/// Counts the gRPC messages of a byte stream fed in pieces (see the module
/// documentation). Never fails: bytes past a malformed prefix are read as the framing
/// says, as Envoy's inspector reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MessageCounter {
    /// Bytes of the current message still to come, after its prefix.
    remaining: u32,
    /// Bytes of the current message's prefix seen (0: the next byte starts a message).
    prefix: u8,
    /// The length being read from the prefix.
    length: u32,
}

/// The length of a gRPC message's prefix.
const PREFIX: u8 = 5;

impl MessageCounter {
    /// Reads `data`, the next bytes of the stream: how many messages start in it.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        loop {
            if self.remaining > 0 {
                let skip = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                // `skip` ≤ `remaining`, a u32.
                self.remaining -= u32::try_from(skip).unwrap_or(self.remaining);
                data = data.get(skip..).unwrap_or_default();
            }
            let Some((&byte, rest)) = data.split_first() else {
                return started;
            };
            data = rest;
            if self.prefix == 0 {
                // The compressed flag: a message starts.
                started += 1;
            } else {
                self.length = self.length << 8 | u32::from(byte);
            }
            self.prefix += 1;
            if self.prefix == PREFIX {
                self.prefix = 0;
                self.remaining = std::mem::take(&mut self.length);
            }
        }
    }
}

/// A gRPC request's message counts, shared by its request body and its response (see
/// the module documentation): added to the series once it is known, kept until then.
#[derive(Debug, Default)]
pub(crate) struct Messages {
    /// Request and response messages counted before the series was known (or while it
    /// was being set).
    pending: [AtomicU64; 2],
    series: OnceLock<Arc<MessageSeries>>,
}

impl Messages {
    /// A request's counts, its series not known yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Messages::default())
    }

    /// Counts `request` and `response` more messages.
    pub(crate) fn add(&self, request: u64, response: u64) {
        match self.series.get() {
            Some(series) => {
                series.add(request, response);
                // Counted while the series was being set: not lost, only late.
                if self.pending[0].load(Relaxed) | self.pending[1].load(Relaxed) != 0 {
                    self.flush(series);
                }
            }
            None => {
                if request != 0 {
                    self.pending[0].fetch_add(request, Relaxed);
                }
                if response != 0 {
                    self.pending[1].fetch_add(response, Relaxed);
                }
            }
        }
    }

    /// The request's ends are known: its counts go to the series `series` gives (asked
    /// once), those counted so far at once.
    pub(crate) fn known(&self, series: impl FnOnce() -> Arc<MessageSeries>) {
        let series = self.series.get_or_init(series);
        self.flush(series);
    }

    /// True once its series is known.
    pub(crate) fn is_known(&self) -> bool {
        self.series.get().is_some()
    }

    /// The request ended: what is still pending goes to the series, if known.
    pub(crate) fn end(&self) {
        if let Some(series) = self.series.get() {
            self.flush(series);
        }
    }

    fn flush(&self, series: &MessageSeries) {
        let request = self.pending[0].swap(0, Relaxed);
        let response = self.pending[1].swap(0, Relaxed);
        series.add(request, response);
    }
}

/// One body's side of a request's counts: its framing state and the shared counts.
#[derive(Debug)]
pub(crate) struct Counting {
    counter: MessageCounter,
    messages: Arc<Messages>,
    /// The response's messages (else the request's).
    response: bool,
}

impl Counting {
    /// Counts a request body's messages into `messages`.
    pub(crate) fn request(messages: Arc<Messages>) -> Self {
        Counting {
            counter: MessageCounter::default(),
            messages,
            response: false,
        }
    }

    /// Counts a response body's messages into `messages`.
    pub(crate) fn response(messages: Arc<Messages>) -> Self {
        Counting {
            counter: MessageCounter::default(),
            messages,
            response: true,
        }
    }

    /// Reads the next bytes of the body.
    pub(crate) fn data(&mut self, data: &[u8]) {
        let n = self.counter.feed(data);
        if n != 0 {
            if self.response {
                self.messages.add(0, n);
            } else {
                self.messages.add(n, 0);
            }
        }
    }

    /// The shared counts.
    pub(crate) fn messages(&self) -> &Arc<Messages> {
        &self.messages
    }
}

/// What the inbound layer leaves in a gRPC request's extensions for
/// [`GrpcMessagesLayer`]: the request's counts.
#[derive(Debug, Clone)]
pub(crate) struct RequestMessages(pub(crate) Arc<Messages>);

pin_project_lite::pin_project! {
    /// A request body whose gRPC messages are counted, for the request's
    /// `istio_request_messages_total`; the bytes pass unchanged. A body of a request
    /// the mesh does not count is only passed through.
    pub struct GrpcMessagesBody<B> {
        #[pin]
        inner: B,
        counting: Option<Counting>,
    }
}

impl<B> GrpcMessagesBody<B> {
    /// `inner`, counted into `messages` when given.
    pub(crate) fn new(inner: B, messages: Option<Arc<Messages>>) -> Self {
        GrpcMessagesBody {
            inner,
            counting: messages.map(Counting::request),
        }
    }

    /// The body inside.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> std::fmt::Debug for GrpcMessagesBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcMessagesBody")
            .field("counted", &self.counting.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for GrpcMessagesBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if let (Some(counting), Some(Ok(frame))) = (this.counting.as_mut(), &polled)
            && let Some(data) = frame.data_ref()
        {
            counting.data(data);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the request messages of the gRPC requests a workload serves
/// (`istio_request_messages_total` with `reporter="destination"`): placed inside
/// [`Mesh::inbound`](crate::Mesh::inbound), it gives the application each request with
/// its body in a [`GrpcMessagesBody`]. For applications that take any body type (tonic,
/// axum, a service generic over its body):
///
/// ```no_run
/// # async fn demo<S>(mesh: mesh_tower::Mesh, app: S) -> std::io::Result<()>
/// # where
/// #     S: tower::Service<
/// #             http::Request<mesh_tower::inbound::GrpcMessagesBody<hyper::body::Incoming>>,
/// #             Response = http::Response<http_body_util::Empty<bytes::Bytes>>,
/// #             Error = std::convert::Infallible,
/// #         > + Clone + Send + 'static,
/// #     S::Future: Send + 'static,
/// # {
/// use mesh_tower::inbound::GrpcMessagesLayer;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
/// let app = tower::ServiceBuilder::new()
///     .layer(mesh.inbound())
///     .layer(GrpcMessagesLayer)
///     .service(app);
/// mesh.serve(listener, app).await
/// # }
/// ```
///
/// Without it the server's side reports the messages of its responses only. Requests
/// that are not gRPC, or not counted, pass with their body only wrapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMessagesLayer;

impl<S> Layer<S> for GrpcMessagesLayer {
    type Service = GrpcMessages<S>;

    fn layer(&self, inner: S) -> GrpcMessages<S> {
        GrpcMessages { inner }
    }
}

/// See [`GrpcMessagesLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMessages<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for GrpcMessages<S>
where
    S: Service<Request<GrpcMessagesBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let (mut parts, body) = req.into_parts();
        let messages = parts.extensions.remove::<RequestMessages>().map(|m| m.0);
        self.inner.call(Request::from_parts(
            parts,
            GrpcMessagesBody::new(body, messages),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A gRPC stream of messages of `lengths`, each filled with its index.
    fn stream(lengths: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, len) in lengths.iter().enumerate() {
            out.push(u8::from(i % 2 == 1));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, *len as usize));
        }
        out
    }

    /// Feeds `bytes` cut at `cuts` (positions, any order): the messages counted per piece.
    fn fed(bytes: &[u8], cuts: &[usize]) -> Vec<u64> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut counter = MessageCounter::default();
        let mut start = 0;
        let mut out = Vec::new();
        for end in cuts.into_iter().chain([bytes.len()]) {
            out.push(counter.feed(&bytes[start..end]));
            start = end;
        }
        out
    }

    #[test]
    fn messages_count_when_their_first_byte_arrives() {
        // (message lengths, cut positions, messages starting in each piece)
        type Case<'a> = (&'a [u32], &'a [usize], &'a [u64]);
        let cases: &[Case<'_>] = &[
            (&[], &[], &[0]),
            (&[3], &[], &[1]),
            (&[0], &[], &[1]),
            (&[0, 0, 0], &[], &[3]),
            (&[2, 7, 1], &[], &[3]),
            // Cut right after a flag: the message counts in the first piece.
            (&[4], &[1], &[1, 0]),
            // Cut inside the length, then inside the message.
            (&[300], &[3, 100], &[1, 0, 0]),
            // The second message's prefix split across three pieces.
            (&[2, 5], &[7, 8, 10], &[1, 1, 0, 0]),
            // A piece of prefix bytes only, then the next starts a message of its own.
            (&[0, 1], &[5], &[1, 1]),
            // Empty pieces count nothing.
            (&[1], &[0, 0, 6, 6], &[0, 0, 1, 0, 0]),
            // A message of 2^24 + 1 bytes: its length's high byte matters.
            (&[1 << 24 | 1, 0], &[5, 5 + (1 << 24)], &[1, 0, 1]),
        ];
        for (lengths, cuts, want) in cases {
            let bytes = stream(lengths);
            assert_eq!(fed(&bytes, cuts), *want, "{lengths:?} cut at {cuts:?}");
        }
        // A stream cut short inside a message: the message counted, the counter waits
        // for its end.
        let mut c = MessageCounter::default();
        assert_eq!(c.feed(&[0, 0, 0, 0, 10, 1, 2]), 1);
        assert_eq!(c.remaining, 8);
        assert_eq!(c.feed(&[0; 8]), 0);
        assert_eq!(c, MessageCounter::default());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6772_7063), ..ProptestConfig::default() })]

        /// However a valid stream is split, every message is counted once.
        #[test]
        fn any_split_counts_every_message_once(
            lengths in proptest::collection::vec(prop_oneof![0u32..8, 0u32..600], 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let bytes = stream(&lengths);
            let counts = fed(&bytes, &cuts);
            prop_assert_eq!(counts.iter().sum::<u64>(), lengths.len() as u64);
            // Byte by byte too: each message counts at its first byte.
            let mut c = MessageCounter::default();
            let per_byte: u64 = bytes.iter().map(|b| c.feed(std::slice::from_ref(b))).sum();
            prop_assert_eq!(per_byte, lengths.len() as u64);
            prop_assert_eq!(c, MessageCounter::default());
        }
    }

    #[test]
    fn counts_wait_for_their_series_and_reach_it_once() {
        let metrics = crate::telemetry::Metrics::new();
        let series = metrics_series(&metrics);
        let messages = Messages::new();
        messages.add(2, 0);
        messages.add(0, 1);
        assert!(!messages.is_known());
        assert_eq!(series.counts(), (0, 0));
        messages.known(|| series.clone());
        assert_eq!(series.counts(), (2, 1));
        // Known: counts go straight to the series; `end` and a second `known` add nothing.
        messages.add(3, 4);
        messages.end();
        messages.known(unreachable_series);
        assert_eq!(series.counts(), (5, 5));
        // Counted while the series was being set: flushed by the next count or the end.
        messages.pending[0].fetch_add(7, Relaxed);
        messages.add(0, 1);
        assert_eq!(series.counts(), (12, 6));
        messages.pending[1].fetch_add(1, Relaxed);
        messages.end();
        assert_eq!(series.counts(), (12, 7));
    }

    #[test]
    fn the_layer_counts_a_request_body_only_when_the_inbound_layer_asked() {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = crate::telemetry::Metrics::new();
        let series = metrics_series(&metrics);
        let messages = Messages::new();
        messages.known(|| series.clone());
        let app = tower::service_fn(
            |req: Request<GrpcMessagesBody<http_body_util::Full<Bytes>>>| async move {
                let counted = req.body().counting.is_some();
                let bytes = req.into_body().collect().await.map(|c| c.to_bytes());
                Ok::<_, std::convert::Infallible>((counted, bytes.map(|b| b.len()).unwrap_or(0)))
            },
        );
        let mut svc = GrpcMessagesLayer.layer(app);
        let body = Bytes::from(stream(&[3, 0, 9]));
        let len = body.len();
        let mut counted = Request::new(http_body_util::Full::new(body.clone()));
        counted
            .extensions_mut()
            .insert(RequestMessages(messages.clone()));
        let plain = Request::new(http_body_util::Full::new(body));
        let (a, b) = rt.block_on(async {
            let a = svc.call(counted).await;
            let b = svc.call(plain).await;
            (a, b)
        });
        assert_eq!(a.ok(), Some((true, len)));
        assert_eq!(b.ok(), Some((false, len)));
        assert_eq!(series.counts(), (3, 0));
    }

    /// A series of `metrics` (any labels).
    fn metrics_series(metrics: &crate::telemetry::Metrics) -> Arc<MessageSeries> {
        let peer = Arc::new(mesh_core::telemetry::PeerLabels::unknown());
        let service = Arc::new(mesh_core::telemetry::ServiceLabels::unknown());
        let profile = Arc::new(mesh_core::telemetry::MetricProfile::standard());
        metrics.message_series(&crate::telemetry::Labels {
            reporter: crate::telemetry::Reporter::Source,
            source: &peer,
            source_principal: false,
            destination: &peer,
            destination_principal: false,
            service: &service,
            grpc: true,
            code: 200,
            grpc_status: Some(0),
            flags: crate::flags::ResponseFlags::NONE,
            security: crate::telemetry::Security::Unknown,
            profile: &profile,
        })
    }

    fn unreachable_series() -> Arc<MessageSeries> {
        panic!("the series is asked for once")
    }
}
