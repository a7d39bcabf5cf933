//! A workload's listener: each connection is plaintext or mutual TLS as the workload's
//! PeerAuthentication says for the port it arrived at, decided when it is accepted with
//! the configuration in force (a change applies to new connections).
//!
//! - STRICT: mutual TLS only; a plaintext connection is closed.
//! - PERMISSIVE (Istio's default): both on one port. The first byte tells them apart,
//!   as Envoy's TLS inspector does: a TLS record starts with 0x16 (handshake), which no
//!   HTTP/1.1 method and not HTTP/2's preface starts with.
//! - DISABLE: plaintext only.
//!
//! Mutual TLS requires the client's certificate, verifies it against the trust bundle
//! and its SPIFFE ID's trust domain against the mesh's (and its aliases); the verified
//! identity becomes each request's [`PeerIdentity`]. A workload without an identity (its
//! runtime has no [`Identities`](crate::identity::Identities)) cannot speak TLS: it
//! serves plaintext under PERMISSIVE and refuses everything under STRICT. Every refusal
//! is logged at debug level with its reason.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::peer_auth::MtlsMode;
use tokio::net::TcpStream;
use tower::Service;

use crate::identity::{PeerIdentity, WorkloadIdentity, peer_spiffe_id};
use crate::transport::accept::{
    Admission, ConnectionInfo, WithConnection, accept_each, connection_limits, serve_connection,
};
use crate::transport::tls::HANDSHAKE_TIMEOUT;
use crate::{BoxError, Mesh};

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `app` for `mesh`'s workload on `listener` until `shutdown` completes (see the
/// module documentation).
pub(crate) async fn serve<S, B>(
    mesh: Mesh,
    listener: tokio::net::TcpListener,
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
    let admission = Admission::process(&connection_limits());
    accept_each(
        listener,
        admission,
        shutdown,
        move |stream, peer, builder, control| {
            let app = app.clone();
            let mesh = mesh.clone();
            async move {
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection without a local address");
                        return;
                    }
                };
                let Some(view) = mesh.view() else {
                    return;
                };
                let mode = view.peer_authn().mode(local.port());
                let identity = mesh.identity();
                match admit(stream, peer, local, mode, identity, &view).await {
                    Some(Admitted::Plain(stream, info)) => {
                        let app = PlaintextGuard {
                            inner: app,
                            mesh,
                            port: local.port(),
                        };
                        serve_connection(stream, WithConnection::new(app, info), builder, control)
                            .await;
                    }
                    Some(Admitted::Tls(stream, info)) => {
                        serve_connection(*stream, WithConnection::new(app, info), builder, control)
                            .await;
                    }
                    None => {}
                }
            }
        },
    )
    .await
}

/// A connection the workload's PeerAuthentication lets in.
enum Admitted {
    Plain(TcpStream, ConnectionInfo),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        ConnectionInfo,
    ),
}

/// Decides what `stream` is and whether `mode` lets it in; completes the handshake of a
/// TLS one.
async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mode: MtlsMode,
    identity: Option<&Arc<WorkloadIdentity>>,
    view: &mesh_core::WorkloadView,
) -> Option<Admitted> {
    let plain = |stream| {
        Some(Admitted::Plain(
            stream,
            ConnectionInfo {
                peer,
                local: Some(local),
                identity: None,
            },
        ))
    };
    if mode == MtlsMode::Disable {
        return plain(stream);
    }
    let tls = match first_byte(&stream).await {
        Ok(Some(b)) => b == TLS_HANDSHAKE,
        Ok(None) => return None,
        Err(reason) => {
            tracing::debug!(%peer, %local, reason, "connection closed before it said anything");
            return None;
        }
    };
    if !tls {
        if mode == MtlsMode::Strict {
            tracing::debug!(%peer, %local, "plaintext connection refused: PeerAuthentication is STRICT on this port");
            return None;
        }
        return plain(stream);
    }
    let Some(identity) = identity else {
        tracing::debug!(%peer, %local, "TLS connection refused: the workload has no identity to answer with");
        return None;
    };
    let config = identity.current().server_config().clone();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, %local, error = %e, "mutual TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, %local, "mutual TLS handshake timed out");
            return None;
        }
    };
    let (_, conn) = stream.get_ref();
    let Some(id) = peer_spiffe_id(conn.peer_certificates()) else {
        tracing::debug!(%peer, %local, "mutual TLS refused: the client certificate has no SPIFFE ID");
        return None;
    };
    let settings = view.mesh().settings();
    let trusted = id.trust_domain() == settings.trust_domain
        || settings
            .trust_domain_aliases
            .iter()
            .any(|a| a == id.trust_domain());
    if !trusted {
        tracing::debug!(%peer, %local, client = %id, trust_domain = %settings.trust_domain, "mutual TLS refused: the client's trust domain is not the mesh's");
        return None;
    }
    let sni = conn.server_name().map(Arc::from);
    let info = ConnectionInfo {
        peer,
        local: Some(local),
        identity: Some(PeerIdentity::new(id, sni)),
    };
    Some(Admitted::Tls(Box::new(stream), info))
}

/// The first byte the client sends, without taking it (`None`: it closed first), within
/// the handshake timeout.
async fn first_byte(stream: &TcpStream) -> Result<Option<u8>, &'static str> {
    let mut buf = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut buf)).await {
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) => Ok(Some(buf[0])),
        Ok(Err(_)) => Err("read error"),
        Err(_) => Err("nothing received within the handshake timeout"),
    }
}

/// The application behind a plaintext connection admitted when its port took plaintext:
/// once the port's PeerAuthentication turns STRICT, the connection's next request is
/// refused and the connection closed (Envoy drains the connections of a filter chain
/// that went away), so that a connection opened under PERMISSIVE cannot outlive it.
#[derive(Clone)]
struct PlaintextGuard<S> {
    inner: S,
    mesh: Mesh,
    port: u16,
}

impl<S, B> Service<Request<B>> for PlaintextGuard<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let strict = self
            .mesh
            .view()
            .is_some_and(|v| v.peer_authn().mode(self.port) == MtlsMode::Strict);
        if strict {
            tracing::debug!(
                port = self.port,
                "plaintext connection closed: PeerAuthentication turned STRICT on this port"
            );
            return GuardFuture::Refused;
        }
        GuardFuture::Inner {
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`PlaintextGuard`].
    #[project = GuardProj]
    enum GuardFuture<F> {
        Inner {
            #[pin]
            fut: F,
        },
        Refused,
    }
}

impl<F, T, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Inner { fut } => fut.poll(cx).map_err(Into::into),
            GuardProj::Refused => Poll::Ready(Err(
                "plaintext refused: PeerAuthentication is STRICT on this port".into(),
            )),
        }
    }
}
