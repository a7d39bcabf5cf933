//! The backend every path ends at: one HTTP/1.1 hyper server in this process on an
//! ephemeral port of 127.0.0.1. It answers `GET /reviews/0` with `200` and a fixed 32-byte
//! body, anything else with `404` (so a misrouted request shows up as an error), and
//! counts the connections it accepts so the benchmark can report connection churn.

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
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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

impl Backend {
    /// Binds 127.0.0.1:0 and starts serving.
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the backend on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let tasks = vec![tokio::spawn(accept_loop(listener, accepted.clone()))];
        Ok(Backend {
            port,
            accepted,
            tasks,
        })
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, accepted: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let resp = if req.method() == Method::GET && req.uri().path() == PATH {
                    Response::new(Full::new(Bytes::from_static(BODY)))
                } else {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                Ok::<_, Infallible>(resp)
            });
            // A connection error (a client going away) ends only that connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
