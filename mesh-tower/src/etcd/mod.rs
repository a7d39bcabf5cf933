//! A small etcd v3 client: the calls a mesh needs to keep its configuration and its
//! endpoints in etcd — ranges read at one revision, transactions guarded by revisions,
//! watches from a revision, and leases kept alive.
//!
//! etcd speaks gRPC over HTTP/2. The client sends etcd's own messages ([`proto`]) through
//! tonic's codec over hyper-util's client, as the OTLP exporter does, so building the mesh
//! needs no `protoc`. A URL list (`http://a:2379,http://b:2379`) names the members of a
//! cluster: a call that cannot reach one member tries the next. Watches and lease
//! keep-alives are gRPC streams; HTTP/2 pings notice a member that went away silently.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_tower::etcd::EtcdError> {
//! use mesh_tower::etcd::Etcd;
//! let etcd = Etcd::new("http://127.0.0.1:2379")?;
//! etcd.put(b"/mesh/a", b"1", 0).await?;
//! let listing = etcd.range_prefix(b"/mesh/").await?;
//! assert_eq!(listing.kvs[0].value, b"1");
//! let mut watch = etcd.watch(b"/mesh/", listing.revision + 1).await?;
//! let changes = watch.next().await?;
//! # Ok(()) }
//! ```

pub mod proto;
pub mod registration;
pub mod store;

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::mpsc;

use proto::{
    DeleteRangeRequest, DeleteRangeResponse, Event, KeyValue, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchRequestUnion,
    WatchResponse,
};

/// How long a unary call may take before it fails ([`Etcd::with_timeout`] changes it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys per page when a prefix is read: etcd answers a page in one message, and a page
/// of a thousand resources stays far below any message size limit.
const PAGE: i64 = 1000;

/// The largest message the client accepts (a page of large resources).
const MAX_MESSAGE: usize = 64 << 20;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The URL list is not usable.
    #[error(
        "`{url}` is not an etcd URL: {reason} (expected http://HOST:PORT, comma-separated for several members)"
    )]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No member could be reached.
    #[error("etcd at {endpoints} is unreachable: {message}")]
    Unavailable {
        /// The members tried.
        endpoints: String,
        /// The last connection error.
        message: String,
    },
    /// A member answered with an error status.
    #[error("etcd at {endpoint}: {message} (gRPC status {code})")]
    Status {
        /// The member.
        endpoint: String,
        /// The gRPC status code.
        code: i32,
        /// etcd's message.
        message: String,
    },
    /// No answer within the call's timeout.
    #[error("etcd at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        /// The member.
        endpoint: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A write was sent but not answered (the connection broke, or etcd timed out
    /// committing it): it may or may not have been applied.
    #[error(
        "etcd at {endpoint} did not confirm the write ({message}): it may or may not have been applied"
    )]
    Unconfirmed {
        /// The member.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// The revision asked for was compacted: read everything again.
    #[error("etcd compacted the revisions before {compact_revision}")]
    Compacted {
        /// The oldest revision still kept.
        compact_revision: i64,
    },
    /// etcd ended a watch or a lease's keep-alive stream.
    #[error("etcd ended the {what}: {reason}")]
    Ended {
        /// Which stream.
        what: &'static str,
        /// Why, as far as etcd said.
        reason: String,
    },
    /// The lease is gone (expired or revoked): keys under it were deleted.
    #[error("lease {id:x} expired")]
    LeaseExpired {
        /// The lease.
        id: i64,
    },
}

impl EtcdError {
    /// True when the call could not reach etcd at all (worth retrying later), as opposed
    /// to an answer from etcd.
    pub fn is_unavailable(&self) -> bool {
        let transient = [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::ResourceExhausted,
            tonic::Code::Aborted,
        ];
        matches!(
            self,
            EtcdError::Unavailable { .. }
                | EtcdError::Timeout { .. }
                | EtcdError::Ended { .. }
                | EtcdError::Unconfirmed { .. }
        ) || matches!(self, EtcdError::Status { code, .. } if transient.iter().any(|c| *c as i32 == *code))
    }
}

/// A prefix's keys, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The store's revision the keys were read at.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// An etcd cluster. Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Uri>,
    /// The URL list as given, for messages.
    names: String,
    client: Client<HttpConnector, tonic::body::Body>,
    /// The member calls go to first (the last one that answered).
    current: AtomicUsize,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.names)
            .finish_non_exhaustive()
    }
}

/// The end of the range of keys that start with `prefix` (etcd's `range_end`): the prefix
/// with its last byte below 0xff incremented; `\0` (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            if let Some(b) = end.last_mut() {
                *b = last + 1;
            }
            return end;
        }
        end.pop();
    }
    vec![0]
}

impl Etcd {
    /// A client of the members in `urls` (`http://host:port`, comma-separated). Nothing
    /// is connected yet.
    pub fn new(urls: &str) -> Result<Self, EtcdError> {
        let mut endpoints = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let bad = |reason: &str| EtcdError::Url {
                url: url.to_string(),
                reason: reason.to_string(),
            };
            let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    return Err(bad("TLS to etcd is not supported yet: use http://"));
                }
                _ => return Err(bad("no http:// scheme")),
            }
            if uri.authority().is_none() {
                return Err(bad("no host"));
            }
            if uri.path() != "/" && !uri.path().is_empty() {
                return Err(bad("a path is not expected"));
            }
            endpoints.push(uri);
        }
        if endpoints.is_empty() {
            return Err(EtcdError::Url {
                url: urls.to_string(),
                reason: "no URL".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_only(true)
            // A member that went away without closing its connections (a crashed host)
            // is noticed within seconds, for watches and keep-alives too.
            // (etcd refuses pings more often than every 5 s, and on connections without
            // a stream.)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .http2_keep_alive_while_idle(false)
            .build(connector);
        Ok(Etcd {
            inner: Arc::new(Inner {
                endpoints,
                names: urls.to_string(),
                client,
                current: AtomicUsize::new(0),
                timeout: DEFAULT_TIMEOUT,
            }),
        })
    }

    /// The same members with another timeout for unary calls.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Etcd {
            inner: Arc::new(Inner {
                endpoints: self.inner.endpoints.clone(),
                names: self.inner.names.clone(),
                client: self.inner.client.clone(),
                current: AtomicUsize::new(self.inner.current.load(Ordering::Relaxed)),
                timeout,
            }),
        }
    }

    /// The URL list, as given.
    pub fn endpoints(&self) -> &str {
        &self.inner.names
    }

    fn grpc(&self, origin: &Uri) -> tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>> {
        tonic::client::Grpc::with_origin(self.inner.client.clone(), origin.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The members in the order to try them: the one that answered last first.
    fn order(&self) -> impl Iterator<Item = (usize, &Uri)> {
        let n = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let idx = (first + i) % n;
            (idx, &self.inner.endpoints[idx])
        })
    }

    /// A read (or a call whose repetition does no harm): tried on every member in turn.
    async fn unary<Req, Resp>(&self, path: &'static str, message: Req) -> Result<Resp, EtcdError>
    where
        Req: Message + Clone + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        self.call(path, message, true).await
    }

    /// A write: tried on the next member only when it was never sent; sent and not
    /// answered, it is [`EtcdError::Unconfirmed`] (a transaction applied twice would
    /// fail its own compares, a lease granted twice would leak).
    async fn write<Req, Resp>(&self, path: &'static str, message: Req) -> Result<Resp, EtcdError>
    where
        Req: Message + Clone + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        self.call(path, message, false).await
    }

    async fn call<Req, Resp>(
        &self,
        path: &'static str,
        message: Req,
        idempotent: bool,
    ) -> Result<Resp, EtcdError>
    where
        Req: Message + Clone + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let timeout = self.inner.timeout;
        let mut last = String::new();
        let n = self.inner.endpoints.len();
        for (idx, origin) in self.order() {
            let call = async {
                let mut grpc = self.grpc(origin);
                grpc.ready()
                    .await
                    .map_err(|e| Failure::Transport(chain(&e)))?;
                let mut request = tonic::Request::new(message.clone());
                request.set_timeout(timeout);
                let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
                grpc.unary(request, PathAndQuery::from_static(path), codec)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(Failure::from_status)
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(resp)) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Ok(Err(Failure::Transport(message))) => last = message,
                Ok(Err(Failure::Sent(message))) if !idempotent => {
                    return Err(EtcdError::Unconfirmed {
                        endpoint: origin.to_string(),
                        message,
                    });
                }
                Ok(Err(Failure::Sent(message))) => last = message,
                Ok(Err(Failure::Status(status))) => return Err(self.status(origin, &status)),
                Err(_) => {
                    // A member that hangs: the next call starts with the next one.
                    self.inner.current.store((idx + 1) % n, Ordering::Relaxed);
                    if !idempotent {
                        return Err(EtcdError::Unconfirmed {
                            endpoint: origin.to_string(),
                            message: format!("no answer within {timeout:?}"),
                        });
                    }
                    if n == 1 {
                        return Err(EtcdError::Timeout {
                            endpoint: origin.to_string(),
                            timeout,
                        });
                    }
                    last = format!("{origin}: no answer within {timeout:?}");
                }
            }
        }
        Err(EtcdError::Unavailable {
            endpoints: self.inner.names.clone(),
            message: last,
        })
    }

    fn status(&self, origin: &Uri, status: &tonic::Status) -> EtcdError {
        let message = status.message().to_string();
        if message.contains("required revision has been compacted") {
            return EtcdError::Compacted {
                compact_revision: 0,
            };
        }
        // A put or keep-alive on a lease that expired.
        if message.contains("requested lease not found") {
            return EtcdError::LeaseExpired { id: 0 };
        }
        EtcdError::Status {
            endpoint: origin.to_string(),
            code: status.code() as i32,
            message,
        }
    }

    /// Every key under `prefix`, read at one revision (page by page, each page at the
    /// revision of the first), in key order. A compaction past that revision between two
    /// pages starts the read again (a few times at most).
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Listing, EtcdError> {
        let mut tries = 0;
        loop {
            match self.range_pages(prefix).await {
                Err(EtcdError::Compacted { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    async fn range_pages(&self, prefix: &[u8]) -> Result<Listing, EtcdError> {
        let end = prefix_end(prefix);
        let mut listing = Listing::default();
        let mut key = prefix.to_vec();
        loop {
            let resp: RangeResponse = self
                .unary(
                    "/etcdserverpb.KV/Range",
                    RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        limit: PAGE,
                        revision: listing.revision,
                        ..Default::default()
                    },
                )
                .await?;
            if listing.revision == 0 {
                listing.revision = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = resp.more;
            if let Some(last) = resp.kvs.last() {
                key = last.key.clone();
                key.push(0);
            }
            let empty = resp.kvs.is_empty();
            listing.kvs.extend(resp.kvs);
            if !more || empty {
                return Ok(listing);
            }
        }
    }

    /// The key `key` and the store's revision.
    pub async fn get(&self, key: &[u8]) -> Result<(i64, Option<KeyValue>), EtcdError> {
        let resp: RangeResponse = self
            .unary(
                "/etcdserverpb.KV/Range",
                RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        Ok((revision, resp.kvs.into_iter().next()))
    }

    /// Writes `value` at `key`, attached to `lease` (0: none); the store's new revision.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let resp: PutResponse = self
            .write(
                "/etcdserverpb.KV/Put",
                PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease,
                    prev_kv: false,
                },
            )
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Deletes `key`; how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let resp: DeleteRangeResponse = self
            .write(
                "/etcdserverpb.KV/DeleteRange",
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.deleted)
    }

    /// Deletes every key under `prefix`; how many were deleted.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let resp: DeleteRangeResponse = self
            .write(
                "/etcdserverpb.KV/DeleteRange",
                DeleteRangeRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    prev_kv: false,
                },
            )
            .await?;
        Ok(resp.deleted)
    }

    /// One transaction: its compares, then its success or its failure operations.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.write("/etcdserverpb.KV/Txn", txn).await
    }

    /// Compacts the store's history up to `revision`: watches from older revisions fail
    /// with [`EtcdError::Compacted`] from then on (etcd's operators do this; the mesh
    /// never does, but must survive it).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let _: proto::CompactionResponse = self
            .unary(
                "/etcdserverpb.KV/Compact",
                proto::CompactionRequest {
                    revision,
                    physical: true,
                },
            )
            .await?;
        Ok(())
    }

    /// Grants a lease of `ttl` (whole seconds, at least one); its id and the TTL etcd
    /// granted.
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, i64), EtcdError> {
        let resp: LeaseGrantResponse = self
            .write(
                "/etcdserverpb.Lease/LeaseGrant",
                LeaseGrantRequest {
                    ttl: ttl.as_secs().max(1) as i64,
                    id: 0,
                },
            )
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Status {
                endpoint: self.inner.names.clone(),
                code: tonic::Code::Unknown as i32,
                message: resp.error,
            });
        }
        Ok((resp.id, resp.ttl))
    }

    /// Revokes lease `id`: every key attached to it is deleted at once.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: LeaseRevokeResponse = self
            .unary("/etcdserverpb.Lease/LeaseRevoke", LeaseRevokeRequest { id })
            .await?;
        Ok(())
    }

    /// Opens a bidirectional stream on the first member that accepts it, with `first`
    /// already sent.
    async fn stream<Req, Resp>(
        &self,
        path: &'static str,
        first: Req,
    ) -> Result<(mpsc::Sender<Req>, tonic::Streaming<Resp>), EtcdError>
    where
        Req: Message + Clone + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let mut last = String::new();
        for (idx, origin) in self.order() {
            let (tx, rx) = mpsc::channel(16);
            // Sent before the call: etcd answers (and so sends its headers) only once it
            // has a request.
            let _ = tx.try_send(first.clone());
            let call = async {
                let mut grpc = self.grpc(origin);
                grpc.ready()
                    .await
                    .map_err(|e| Failure::Transport(chain(&e)))?;
                let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
                let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut request = tonic::Request::new(requests);
                // Only from a member with a leader: a member cut off from the majority
                // would keep the stream open on a revision that no longer moves.
                request.metadata_mut().insert(
                    "hasleader",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                grpc.streaming(request, PathAndQuery::from_static(path), codec)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(Failure::from_status)
            };
            match tokio::time::timeout(self.inner.timeout, call).await {
                Ok(Ok(stream)) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    return Ok((tx, stream));
                }
                Ok(Err(Failure::Transport(message) | Failure::Sent(message))) => last = message,
                Ok(Err(Failure::Status(status))) => return Err(self.status(origin, &status)),
                Err(_) => {
                    // A member that hangs: opening a stream again is harmless, on the
                    // next member, which later calls start with too.
                    let n = self.inner.endpoints.len();
                    self.inner.current.store((idx + 1) % n, Ordering::Relaxed);
                    last = format!("{origin}: no answer within {:?}", self.inner.timeout);
                }
            }
        }
        Err(EtcdError::Unavailable {
            endpoints: self.inner.names.clone(),
            message: last,
        })
    }

    /// Watches every key under `prefix` from `start_revision` (0: from now on). When that
    /// revision was compacted, the watch's first [`Watch::next`] fails with
    /// [`EtcdError::Compacted`] (etcd creates the watch, then cancels it).
    pub async fn watch(&self, prefix: &[u8], start_revision: i64) -> Result<Watch, EtcdError> {
        let create = WatchRequest {
            request_union: Some(WatchRequestUnion::Create(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
                progress_notify: true,
                ..Default::default()
            })),
        };
        let (tx, mut stream) = self.stream("/etcdserverpb.Watch/Watch", create).await?;
        // The first answer says whether the watch was created.
        let first = tokio::time::timeout(self.inner.timeout, stream.message())
            .await
            .map_err(|_| {
                // The member took the stream but does not answer: the next attempt
                // goes to the next one.
                let n = self.inner.endpoints.len();
                let at = self.inner.current.load(Ordering::Relaxed);
                self.inner.current.store((at + 1) % n, Ordering::Relaxed);
                EtcdError::Timeout {
                    endpoint: self.inner.names.clone(),
                    timeout: self.inner.timeout,
                }
            })?
            .map_err(|s| stream_error("watch", &s))?
            .ok_or_else(|| EtcdError::Ended {
                what: "watch",
                reason: "the stream closed before the watch was created".into(),
            })?;
        let mut watch = Watch {
            tx,
            stream,
            id: first.watch_id,
            pending: None,
        };
        watch.check(&first)?;
        if !first.events.is_empty() {
            watch.pending = Some(first);
        }
        Ok(watch)
    }

    /// Starts keeping lease `id` alive: see [`KeepAlive`].
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive, EtcdError> {
        let (tx, stream) = self
            .stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                LeaseKeepAliveRequest { id },
            )
            .await?;
        Ok(KeepAlive {
            id,
            tx,
            stream,
            first: true,
        })
    }
}

/// What one step of a watch brought.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// The store's revision after these events.
    pub revision: i64,
    /// The changes, in order (empty for a progress notification).
    pub events: Vec<Event>,
}

/// A watch on a prefix (see [`Etcd::watch`]). Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watch {
    tx: mpsc::Sender<WatchRequest>,
    stream: tonic::Streaming<WatchResponse>,
    id: i64,
    /// Events that came with the creation answer.
    pending: Option<WatchResponse>,
}

impl Watch {
    fn check(&self, resp: &WatchResponse) -> Result<(), EtcdError> {
        if resp.compact_revision > 0 {
            return Err(EtcdError::Compacted {
                compact_revision: resp.compact_revision,
            });
        }
        if resp.canceled {
            return Err(EtcdError::Ended {
                what: "watch",
                reason: if resp.cancel_reason.is_empty() {
                    "canceled".into()
                } else {
                    resp.cancel_reason.clone()
                },
            });
        }
        Ok(())
    }

    /// The next batch of changes (or a progress notification, with no events). An error
    /// ends the watch: read again and watch from the revision read. Cancel-safe: a call
    /// dropped before it returns loses nothing (the stream keeps what it was reading).
    pub async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            let resp = match self.pending.take() {
                Some(r) => r,
                None => self
                    .stream
                    .message()
                    .await
                    .map_err(|s| stream_error("watch", &s))?
                    .ok_or_else(|| EtcdError::Ended {
                        what: "watch",
                        reason: "the stream closed".into(),
                    })?,
            };
            self.check(&resp)?;
            if resp.created {
                continue;
            }
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            return Ok(WatchBatch {
                revision,
                events: resp.events,
            });
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.tx.try_send(WatchRequest {
            request_union: Some(WatchRequestUnion::Cancel(WatchCancelRequest {
                watch_id: self.id,
            })),
        });
    }
}

/// A lease's keep-alive stream (see [`Etcd::keep_alive`]): call [`KeepAlive::renew`]
/// about every third of the TTL.
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    stream: tonic::Streaming<LeaseKeepAliveResponse>,
    /// The request sent with the stream's opening is not answered yet.
    first: bool,
}

impl KeepAlive {
    /// The lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Renews the lease once; its new TTL in seconds. [`EtcdError::LeaseExpired`] when
    /// the lease is gone.
    pub async fn renew(&mut self) -> Result<i64, EtcdError> {
        // The first request went with the stream's opening.
        if !std::mem::take(&mut self.first) {
            self.tx
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| EtcdError::Ended {
                    what: "lease keep-alive",
                    reason: "the stream closed".into(),
                })?;
        }
        let resp = self
            .stream
            .message()
            .await
            .map_err(|s| stream_error("lease keep-alive", &s))?
            .ok_or_else(|| EtcdError::Ended {
                what: "lease keep-alive",
                reason: "the stream closed".into(),
            })?;
        if resp.ttl <= 0 {
            return Err(EtcdError::LeaseExpired { id: self.id });
        }
        Ok(resp.ttl)
    }
}

enum Failure {
    /// The request never left (no connection).
    Transport(String),
    /// The request may have been sent, and nothing was answered.
    Sent(String),
    /// etcd answered with an error.
    Status(tonic::Status),
}

impl Failure {
    fn from_status(status: tonic::Status) -> Failure {
        // A status made of the connection's own error: nothing was answered; and if
        // that error is a failure to connect, nothing was sent either.
        match StdError::source(&status) {
            Some(_) if never_connected(&status) => Failure::Transport(chain(&status)),
            Some(_) => Failure::Sent(chain(&status)),
            // etcd's own "request timed out" / "leader changed": maybe applied.
            None if status.code() == tonic::Code::Unavailable => Failure::Sent(chain(&status)),
            None => Failure::Status(status),
        }
    }
}

/// True when `e`'s sources say the connection could not be made.
fn never_connected(e: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn stream_error(what: &'static str, status: &tonic::Status) -> EtcdError {
    if status
        .message()
        .contains("required revision has been compacted")
    {
        return EtcdError::Compacted {
            compact_revision: 0,
        };
    }
    EtcdError::Ended {
        what,
        reason: chain(status),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_past_its_last_incrementable_byte() {
        let table: &[(&[u8], &[u8])] = &[
            (b"/mesh/", b"/mesh0"),
            (b"a", b"b"),
            (b"a\xff", b"b"),
            (b"\xff\xff", b"\0"),
            (b"", b"\0"),
        ];
        for (prefix, end) in table {
            assert_eq!(prefix_end(prefix), end.to_vec(), "{prefix:?}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(Etcd::new("http://127.0.0.1:2379").is_ok());
        let two = Etcd::new("http://127.0.0.1:2379, http://127.0.0.1:22379").unwrap();
        assert_eq!(two.inner.endpoints.len(), 2);
        for bad in [
            "",
            "127.0.0.1:2379",
            "https://127.0.0.1:2379",
            "http://h:1/v3",
            "ftp://h",
        ] {
            let e = Etcd::new(bad).unwrap_err();
            assert!(matches!(e, EtcdError::Url { .. }), "{bad}: {e}");
        }
    }
}
