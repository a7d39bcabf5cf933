//! Bare mutual TLS, the floor of the `bare-tls` path: rustls configurations made the
//! way the mesh makes its own (`mesh-tower/src/identity/verify.rs`) — the ring provider,
//! TLS 1.3 and 1.2, the server requiring a client certificate verified by rustls's
//! `WebPkiClientVerifier`, the client verifying the server's chain against the trust
//! anchor with `verify_server_cert_signed_by_trust_anchor` (SPIFFE certificates name no
//! DNS name), ALPN `h2`, `http/1.1` offered by the server and `http/1.1` by the client —
//! and a tokio-rustls connector for hyper-util's legacy pooled client, the client of the
//! `bare` path. Nothing here touches the mesh's API: the certificates come in as DER.

use std::future::Future;
use std::io::IoSlice;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Result, anyhow};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::Service;

/// The versions the mesh speaks between workloads.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A certificate chain (the leaf first), its key, and the root both sides trust.
pub(crate) struct Material {
    /// The chain, the leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub(crate) key: PrivateKeyDer<'static>,
    /// The trust anchor.
    pub(crate) root: CertificateDer<'static>,
}

fn roots(root: &CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    store.add(root.clone())?;
    Ok(Arc::new(store))
}

/// The server side: `material`'s certificate, a client certificate required and
/// verified against its root, ALPN `h2` and `http/1.1` (the server only speaks
/// HTTP/1.1, which is what the client offers).
pub(crate) fn server_config(material: &Material) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients =
        WebPkiClientVerifier::builder_with_provider(roots(&material.root)?, provider.clone())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(clients)
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: `material`'s certificate as the client's, the server's chain
/// verified against its root, ALPN `http/1.1`.
pub(crate) fn client_config(material: &Material) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ChainVerifier {
        roots: roots(&material.root)?,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies the server's chain against the trust anchor and nothing else (as the mesh's
/// verifier does; the mesh then compares the server's SPIFFE ID with the endpoint's, once
/// per connection).
#[derive(Debug)]
struct ChainVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connector for hyper-util's legacy client: TCP by its `HttpConnector` (`TCP_NODELAY`,
/// as the `bare` path's), then a TLS handshake with the client configuration. An IP
/// address as host sends no SNI, as the mesh's client does.
#[derive(Clone)]
pub(crate) struct TlsHttpConnector {
    tcp: HttpConnector,
    tls: TlsConnector,
}

impl TlsHttpConnector {
    /// A connector handshaking with `config`.
    pub(crate) fn new(config: Arc<ClientConfig>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        TlsHttpConnector {
            tcp,
            tls: TlsConnector::from(config),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for TlsHttpConnector {
    type Response = TokioIo<TlsConn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TlsConn>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let name = match uri.host().map(|h| h.trim_matches(['[', ']'])) {
            Some(h) => match h.parse::<IpAddr>() {
                Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
                Err(_) => ServerName::try_from(h.to_string()).map_err(|e| anyhow!(e)),
            },
            None => Err(anyhow!("{uri} has no host")),
        };
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = name.map_err(BoxError::from)?;
            let tcp = tcp.await?.into_inner();
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(TlsConn(stream)))
        })
    }
}

/// A client TLS stream that hyper-util's legacy client can pool.
pub(crate) struct TlsConn(TlsStream<TcpStream>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
