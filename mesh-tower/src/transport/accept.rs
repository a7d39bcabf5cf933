//! Serving: an application (any tower service — axum, tonic, a hyper `service_fn`) on a
//! listener, HTTP/1.1 and HTTP/2, with graceful shutdown.
//!
//! This is the inbound side of a workload. Plaintext today; mutual TLS (decided by
//! PeerAuthentication) and the inbound policies (authorization, rate limits) are the next
//! pieces to wrap around it.
//!
//! Each request carries the address of the peer of its connection as a [`PeerAddr`]
//! extension. HTTP/1.1 upgrades (`101 Switching Protocols`) are served: the application
//! takes the upgraded connection with `hyper::upgrade::on`.
//!
//! ```no_run
//! # type App = tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible>;
//! # async fn demo(app: App) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
//! mesh_tower::server::serve(listener, app, std::future::pending::<()>()).await
//! # }
//! ```

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
/// set by [`serve`] (and by the ingress gateway's listeners).
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
        async move {
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(app),
            );
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    })
    .await
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
