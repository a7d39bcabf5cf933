//! The backend every path ends at: one HTTP/1.1 hyper server in this process on an
//! ephemeral port of 127.0.0.1. It answers `GET /reviews/0` with `200` and a fixed 32-byte
//! body, anything else with `404` (so a misrouted request shows up as an error), and
//! counts the connections it accepts so the benchmark can report connection churn.
//!
//! The same application ([`answer`]) is also served over mutual TLS: by a bare rustls
//! listener of the backend ([`Backend::serve_tls`], the `bare-tls` path's server: the
//! same accept loop and HTTP/1.1 server as the plaintext one, after a handshake), and by
//! `mesh.serve()` (the `mesh-mtls` path, see [`crate::paths`]). Both count their
//! connections in the backend's counter, so every path reports its new connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The response body: 32 bytes.
pub(crate) const BODY: &[u8; 32] = b"{\"id\":0,\"reviews\":\"benchmark!\"}\n";

/// The path the backend answers `200` to.
pub(crate) const PATH: &str = "/reviews/0";

/// A running backend; its accept loops stop when it is dropped.
pub(crate) struct Backend {
    /// The port on 127.0.0.1.
    pub(crate) port: u16,
    accepted: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A listener of the backend's application over TLS; it stops accepting when dropped.
pub(crate) struct TlsListener {
    /// The port on 127.0.0.1.
    pub(crate) port: u16,
    task: JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Binds 127.0.0.1:0 and starts serving.
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the backend on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let tasks = vec![tokio::spawn(accept_loop(listener, accepted.clone(), None))];
        Ok(Backend {
            port,
            accepted,
            tasks,
        })
    }

    /// Serves the same application over TLS with `config` on another ephemeral port of
    /// 127.0.0.1, counting its connections with the plaintext ones.
    pub(crate) async fn serve_tls(&self, config: Arc<rustls::ServerConfig>) -> Result<TlsListener> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the TLS backend on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let tls = Some(TlsAcceptor::from(config));
        let task = tokio::spawn(accept_loop(listener, self.accepted.clone(), tls));
        Ok(TlsListener { port, task })
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The counter of accepted connections, for a server of the application that is not
    /// the backend's own (`mesh.serve()`).
    pub(crate) fn connection_counter(&self) -> Arc<AtomicU64> {
        self.accepted.clone()
    }
}

/// The application: `200` and [`BODY`] to `GET` [`PATH`], `404` to anything else.
pub(crate) async fn answer<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = if req.method() == Method::GET && req.uri().path() == PATH {
        Response::new(Full::new(Bytes::from_static(BODY)))
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    Ok(resp)
}

async fn accept_loop(listener: TcpListener, accepted: Arc<AtomicU64>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        accepted.fetch_add(1, Ordering::Relaxed);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream).await,
                // A failed handshake ends only that connection (the client's request
                // fails, and the benchmark counts it).
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(stream).await;
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until it ends.
async fn serve_connection<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A connection error (a client going away) ends only that connection.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            TokioIo::new(io),
            service_fn(|req: Request<Incoming>| answer(req)),
        )
        .await;
}
