//! TLS termination for gateway servers: certificates read from PEM files at start, one
//! rustls configuration per distinct set of TLS settings, chosen per connection by the
//! SNI the client sent, and the accept loop that serves HTTP over the TLS streams.
//!
//! A handshake that fails (a client without a certificate on a MUTUAL server, an SNI no
//! server serves, a port scanner) is logged at debug level and closes that connection
//! only. Requests on a connection are answered by the server (filter chain) its SNI
//! chose; on a MUTUAL connection they carry the client certificate in
//! `x-forwarded-client-cert`.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

use super::error::{GatewayError, ServerRef};
use super::service::{GatewayService, TlsConn};
use super::table::{TlsKey, Versions};
use super::{Shared, xfcc};
use crate::server::WithPeer;

/// The TLS configuration of one set of TLS settings, loaded at start.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The rustls configuration.
    pub(crate) config: Arc<ServerConfig>,
    /// The URI names of the server certificate (`By=` of `x-forwarded-client-cert`).
    pub(crate) local_uris: Arc<[String]>,
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the files of `key` and builds the rustls configuration of `server`.
pub(crate) fn load(server: &ServerRef, key: &TlsKey) -> Result<Loaded, GatewayError> {
    let tls_err = |e: &dyn std::fmt::Display| GatewayError::Tls {
        server: server.clone(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> =
        read_all(server, "serverCertificate", &key.cert, "CERTIFICATE")?;
    let local_uris: Arc<[String]> = certs
        .first()
        .map(|c| xfcc::uri_sans(c))
        .unwrap_or_default()
        .into();
    let private_key = {
        let bytes = read(server, "privateKey", &key.key)?;
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| pem_error(server, "privateKey", &key.key, e, "PRIVATE KEY"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match key.versions {
        Versions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| tls_err(&e))?;
    let builder = match (&key.ca, key.mutual) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> =
                read_all(server, "caCertificates", ca, "CERTIFICATE")?;
            for c in cas {
                roots.add(c).map_err(|e| GatewayError::Pem {
                    server: server.clone(),
                    field: "caCertificates",
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &key.crl {
                let crls: Vec<CertificateRevocationListDer<'static>> =
                    read_all(server, "caCrl", crl, "X509 CRL")?;
                verifier = verifier.with_crls(crls);
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_err(&e))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, private_key)
        .map_err(|e| tls_err(&e))?;
    config.alpn_protocols = if key.alpn.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        key.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
    };
    Ok(Loaded {
        config: Arc::new(config),
        local_uris,
    })
}

fn read(server: &ServerRef, field: &'static str, path: &Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|source| GatewayError::ReadFile {
        server: server.clone(),
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// Every PEM section of type `T` (`label` for messages) in the file; at least one.
fn read_all<T: PemObject>(
    server: &ServerRef,
    field: &'static str,
    path: &Path,
    label: &str,
) -> Result<Vec<T>, GatewayError> {
    let bytes = read(server, field, path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| pem_error(server, field, path, e, label))?;
    if items.is_empty() {
        return Err(pem_error(
            server,
            field,
            path,
            pem::Error::NoItemsFound,
            label,
        ));
    }
    Ok(items)
}

fn pem_error(
    server: &ServerRef,
    field: &'static str,
    path: &Path,
    e: pem::Error,
    label: &str,
) -> GatewayError {
    let message = match e {
        pem::Error::NoItemsFound => format!("no PEM `{label}` section found"),
        other => format!("invalid PEM: {other}"),
    };
    GatewayError::Pem {
        server: server.clone(),
        field,
        path: path.to_path_buf(),
        message,
    }
}

/// Serves the TLS servers of gateway port `port` on `listener` until `shutdown`
/// completes, then lets the connections in progress finish their requests.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    shared: Arc<Shared>,
    port: u32,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::server::accept_each(listener, shutdown, move |stream, peer, builder, watcher| {
        let shared = shared.clone();
        async move {
            let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
            let start = match tokio::time::timeout_at(
                deadline,
                LazyConfigAcceptor::new(Acceptor::default(), stream),
            )
            .await
            {
                Ok(Ok(start)) => start,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, port, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, port, "TLS handshake timed out");
                    return;
                }
            };
            let sni = start
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            let Some((chain, loaded)) = shared.tls_for(port, sni.as_deref()) else {
                tracing::debug!(%peer, port, sni, "TLS handshake refused: no server for this SNI");
                return;
            };
            let stream =
                match tokio::time::timeout_at(deadline, start.into_stream(loaded.config.clone()))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, port, sni, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, port, sni, "TLS handshake timed out");
                        return;
                    }
                };
            // MUTUAL: the verified client certificate, for `x-forwarded-client-cert`.
            let xfcc = if chain.tls.mutual {
                let peer_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                let v = peer_cert.and_then(|c| xfcc::value(c, &loaded.local_uris));
                if v.is_none() {
                    tracing::debug!(%peer, port, "no x-forwarded-client-cert for this client");
                }
                v
            } else {
                None
            };
            let conn_info = Arc::new(TlsConn { chain, xfcc });
            let svc = WithPeer::new(GatewayService::new(shared, port, Some(conn_info)), peer);
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(svc),
            );
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    })
    .await
}
