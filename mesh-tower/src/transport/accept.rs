//! The accept loop every listener shares (the ingress gateway's ports, a workload's
//! inbound port): accept, hand each connection to a task of its own, serve HTTP/1.1 and
//! HTTP/2 on it (plaintext or over TLS) with upgrades, stop accepting on shutdown and let
//! the connections in progress finish their requests.
//!
//! Each request carries the address of the peer of its connection as a [`PeerAddr`]
//! extension.

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::BoxError;

/// The address of the peer of the connection a request arrived on: a request extension
/// set by every listener of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// A service that records the connection's [`PeerAddr`] in each request before calling
/// `inner`.
#[derive(Debug, Clone)]
pub(crate) struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> WithPeer<S> {
    /// `inner`, for the requests of a connection from `peer`.
    pub(crate) fn new(inner: S, peer: SocketAddr) -> Self {
        WithPeer { inner, peer }
    }
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(req)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the connections in
/// progress finish their requests. Each request carries its connection's [`PeerAddr`].
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    accept_each(listener, shutdown, move |stream, peer, builder, watcher| {
        let app = WithPeer::new(app.clone(), peer);
        serve_connection(stream, app, builder, watcher)
    })
    .await
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on one connection with `app`, until the
/// connection ends or the graceful shutdown `watcher` belongs to is done.
pub(crate) async fn serve_connection<IO, S, B>(
    io: IO,
    app: S,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections on `listener` until `shutdown` completes, running
/// `handle(stream, peer, builder, watcher)` in a task of its own for each (the handler
/// serves the connection through `watcher`, so that shutdown waits for it); then waits
/// for the connections in progress to finish their requests.
pub(crate) async fn accept_each<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut handle: F,
) -> std::io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, Builder<TokioExecutor>, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    // A transient accept error (too many open files, a reset before
                    // accept): keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, peer, builder.clone(), graceful.watcher()));
            }
            _ = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
    Ok(())
}
