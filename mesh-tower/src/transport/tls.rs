//! TLS material and configuration: certificates, keys, CAs and CRLs read from PEM files,
//! turned into rustls server configurations (and client ones, by
//! [`origination`](super::origination)), and the server side of a handshake (the
//! client's SNI chooses the configuration, within a time bound).
//!
//! A handshake that fails (a client without a certificate on a MUTUAL server, an SNI no
//! configuration serves, a port scanner) is logged at debug level and closes that
//! connection only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::gateway::{TlsSettings, TlsVersions};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::x509;

/// Why TLS files could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {field} `{}`: {source}", path.display())]
    Read {
        /// The field that names it (`serverCertificate`, `clientCertificate`,
        /// `privateKey`, `caCertificates`).
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The error of the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CA file is not the PEM it should be.
    #[error("{field} `{}`: {message}", path.display())]
    Pem {
        /// The field that names it.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The certificates and key were read but rustls refused them (a key that does not
    /// match the certificate, an unsupported key type, CA certificates that cannot
    /// verify clients).
    #[error("invalid TLS settings: {message}")]
    Config {
        /// rustls' explanation.
        message: String,
    },
}

/// A server's TLS configuration, loaded.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// The URI names of the server certificate (`By=` of `x-forwarded-client-cert`).
    pub local_uris: Arc<[String]>,
}

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the files of `settings` and builds the rustls configuration.
pub fn server_config(settings: &TlsSettings) -> Result<ServerTls, TlsFileError> {
    let config_err = |e: &dyn std::fmt::Display| TlsFileError::Config {
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> =
        read_all("serverCertificate", &settings.cert, "CERTIFICATE")?;
    let local_uris: Arc<[String]> = certs
        .first()
        .map(|c| x509::uri_sans(c))
        .unwrap_or_default()
        .into();
    let private_key = {
        let bytes = read("privateKey", &settings.key)?;
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| pem_error("privateKey", &settings.key, e, "PRIVATE KEY"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.versions {
        TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12 => &[&rustls::version::TLS12],
        TlsVersions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| config_err(&e))?;
    let builder = match (&settings.ca, settings.mutual) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> = read_all("caCertificates", ca, "CERTIFICATE")?;
            for c in cas {
                roots.add(c).map_err(|e| TlsFileError::Pem {
                    field: "caCertificates",
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &settings.crl {
                let crls: Vec<CertificateRevocationListDer<'static>> =
                    read_all("caCrl", crl, "X509 CRL")?;
                verifier = verifier.with_crls(crls);
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| config_err(&e))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, private_key)
        .map_err(|e| config_err(&e))?;
    // What Istio's gateways offer to every client: HTTP/2, then HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        local_uris,
    })
}

pub(crate) fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// Every PEM section of type `T` (`label` for messages) in the file; at least one.
pub(crate) fn read_all<T: PemObject>(
    field: &'static str,
    path: &Path,
    label: &str,
) -> Result<Vec<T>, TlsFileError> {
    let bytes = read(field, path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| pem_error(field, path, e, label))?;
    if items.is_empty() {
        return Err(pem_error(field, path, pem::Error::NoItemsFound, label));
    }
    Ok(items)
}

pub(crate) fn pem_error(
    field: &'static str,
    path: &Path,
    e: pem::Error,
    label: &str,
) -> TlsFileError {
    let message = match e {
        pem::Error::NoItemsFound => format!("no PEM `{label}` section found"),
        other => format!("invalid PEM: {other}"),
    };
    TlsFileError::Pem {
        field,
        path: path.to_path_buf(),
        message,
    }
}

/// The server side of a TLS handshake on `stream`: `choose` gets the SNI the client sent
/// (lower case) and answers the configuration to complete it with, and a value to keep
/// with the connection; `None` refuses the client. The handshake must complete within
/// [`HANDSHAKE_TIMEOUT`]; a failure is logged at debug level and closes the connection.
pub async fn handshake<T>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    choose: impl FnOnce(Option<&str>) -> Option<(Arc<ServerConfig>, T)>,
) -> Option<(TlsStream<TcpStream>, T)> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let start = match tokio::time::timeout_at(
        deadline,
        LazyConfigAcceptor::new(Acceptor::default(), stream),
    )
    .await
    {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let Some((config, value)) = choose(sni.as_deref()) else {
        tracing::debug!(%peer, sni, "TLS handshake refused: no configuration for this SNI");
        return None;
    };
    match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(s)) => Some((s, value)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, sni, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, sni, "TLS handshake timed out");
            None
        }
    }
}
