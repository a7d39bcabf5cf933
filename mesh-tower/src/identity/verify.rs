//! The rustls configurations of mutual TLS between workloads, and how peers are verified.
//!
//! Both sides verify the peer's chain against the trust bundle (validity period, usage,
//! signatures). Workload certificates name a SPIFFE ID and no DNS name, so the client
//! does not check the server's name the web way: after the handshake, before a byte of
//! a request is sent, the caller compares the server's SPIFFE ID with the identities of
//! the endpoint it picked (a stolen endpoint address cannot impersonate a service). The
//! server reads the client's SPIFFE ID the same way and checks its trust domain.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{IdentityError, SpiffeId};
use crate::transport::x509;

/// The versions of mutual TLS between workloads (Istio's minimum is TLS 1.2).
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn material_error(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Material(e.to_string())
}

/// A server configuration, and client configurations for HTTP/1.1 and HTTP/2.
pub(super) type Configs = (Arc<ServerConfig>, Arc<ClientConfig>, Arc<ClientConfig>);

/// The server configuration and the HTTP/1.1 and HTTP/2 client configurations of a
/// workload's certificate `chain` and `key`, trusting `roots`.
pub(super) fn configs(
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    roots: &Arc<RootCertStore>,
) -> Result<Configs, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(material_error)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(material_error)?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(material_error)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let verifier = Arc::new(crate::transport::origination::Verifier::chain_only(
        roots.clone(),
        provider.signature_verification_algorithms,
    ));
    let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, IdentityError> {
        let mut c = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(material_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .map_err(material_error)?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok((Arc::new(server), client(b"http/1.1")?, client(b"h2")?))
}

/// The SPIFFE ID of a verified peer: the first `spiffe://` URI name of its certificate.
pub(crate) fn peer_spiffe_id(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    x509::uri_sans(leaf)
        .iter()
        .find_map(|u| SpiffeId::parse(u).ok())
}
