//! TLS origination: the client side of a DestinationRule's `SIMPLE` and `MUTUAL` TLS, and
//! of the requests an application sends as `https://`, as Istio configures Envoy for it
//! (see [`Origination`] for what is verified and which name is sent).
//!
//! The rustls configurations of one [`Origination`] value are built once, on the first
//! connection that needs them, and kept while the value lives: a cluster has one value
//! per configuration, so certificate files are read once per cluster and configuration
//! (again after an update, which picks up rotated files), never per request. A value
//! whose files cannot be read or parsed keeps its error the same way: every connection
//! to that cluster fails with it (a 503 connect failure, never a plaintext request), and
//! the error is logged once, at warn level, when it is first met.
//!
//! The system's roots (for settings without `caCertificates`) are those of
//! `rustls-native-certs` (the platform's store, or `SSL_CERT_FILE`/`SSL_CERT_DIR`),
//! loaded once per process.
//!
//! The HTTP/1.1 configuration offers ALPN `http/1.1`, the HTTP/2 one `h2` (the codec the
//! cluster speaks is chosen before the connection is made, as Envoy's is). TLS 1.2 and
//! 1.3.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use mesh_core::cluster::Origination;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::tls::{TlsFileError, pem_error, read, read_all};
use super::x509;

/// The versions originated (Envoy's client defaults: TLS 1.2 to 1.3).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The client configurations of one [`Origination`]: for HTTP/1.1 and for HTTP/2.
#[derive(Debug)]
pub struct OriginationTls {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
}

impl OriginationTls {
    /// Reads the files `settings` name and builds the configurations.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or is not the PEM it should be, `MUTUAL` without a
    /// client certificate and key, no system root certificates when they are needed, or
    /// settings rustls refuses.
    pub fn new(settings: &Origination) -> Result<Self, TlsFileError> {
        let config_err = |e: &dyn std::fmt::Display| TlsFileError::Config {
            message: e.to_string(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = if settings.insecure_skip_verify {
            None
        } else {
            Some(match &settings.ca_certificates {
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    let cas: Vec<CertificateDer<'static>> =
                        read_all("caCertificates", path, "CERTIFICATE")?;
                    for c in cas {
                        roots.add(c).map_err(|e| TlsFileError::Pem {
                            field: "caCertificates",
                            path: path.clone(),
                            message: format!("not a usable CA certificate: {e}"),
                        })?;
                    }
                    Arc::new(roots)
                }
                None => system_roots()?,
            })
        };
        let verifier = Arc::new(Verifier {
            roots,
            subject_alt_names: settings.subject_alt_names.clone(),
            auto_san_validation: settings.auto_san_validation(),
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(|e| config_err(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = if settings.mutual {
            let (Some(cert), Some(key)) = (&settings.client_certificate, &settings.private_key)
            else {
                return Err(TlsFileError::Config {
                    message: "MUTUAL TLS origination needs `clientCertificate` and `privateKey` \
                              files (`credentialName` secrets are not read)"
                        .into(),
                });
            };
            let chain: Vec<CertificateDer<'static>> =
                read_all("clientCertificate", cert, "CERTIFICATE")?;
            let bytes = read("privateKey", key)?;
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| pem_error("privateKey", key, e, "PRIVATE KEY"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_err(&e))?
        } else {
            builder.with_no_client_auth()
        };
        let with_alpn = |alpn: &[u8]| {
            let mut c = config.clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(c)
        };
        Ok(OriginationTls {
            http1: with_alpn(b"http/1.1"),
            http2: with_alpn(b"h2"),
        })
    }

    /// The configuration of connections speaking HTTP/2 (`http2`) or HTTP/1.1.
    pub fn client_config(&self, http2: bool) -> &Arc<ClientConfig> {
        if http2 { &self.http2 } else { &self.http1 }
    }
}

/// The configurations of `settings`, or why they could not be built: built on first use
/// and kept while `settings` lives (see the module documentation).
pub(crate) type Built = Result<Arc<OriginationTls>, Arc<TlsFileError>>;

/// The configurations built, by the allocation of the settings they were built from. A
/// `Weak` keeps its allocation (so its address is not reused) but not the settings: an
/// entry whose settings are gone is dropped at the next insertion.
static BUILT: Mutex<Vec<(Weak<Origination>, Built)>> = Mutex::new(Vec::new());

fn find(all: &[(Weak<Origination>, Built)], settings: &Arc<Origination>) -> Option<Built> {
    all.iter()
        .find(|(k, _)| std::ptr::eq(k.as_ptr(), Arc::as_ptr(settings)))
        .map(|(_, b)| b.clone())
}

/// The configurations of `settings`, if they were built.
pub(crate) fn cached(settings: &Arc<Origination>) -> Option<Built> {
    find(&BUILT.lock().unwrap_or_else(|p| p.into_inner()), settings)
}

/// The configurations of `settings` (see [`Built`]), first needed to connect to
/// `endpoint`: built now if they were not (files are read: call it off the async
/// workers).
#[cfg(test)]
pub(crate) fn built(settings: &Arc<Origination>, endpoint: &str) -> Built {
    if let Some(b) = cached(settings) {
        return b;
    }
    store(settings, endpoint, OriginationTls::new(settings))
}

/// Keeps `fresh`, the configurations just built from `settings` (without the lock: a
/// concurrent first use may have built them too, and the first one stored wins), and
/// logs why they could not be built, once.
pub(crate) fn store(
    settings: &Arc<Origination>,
    endpoint: &str,
    fresh: Result<OriginationTls, TlsFileError>,
) -> Built {
    let mut all = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = find(&all, settings) {
        return b;
    }
    let built = fresh.map(Arc::new).map_err(|e| {
        tracing::warn!(
            %endpoint,
            error = %e,
            "TLS origination cannot be configured: connections with these settings fail"
        );
        Arc::new(e)
    });
    all.retain(|(k, _)| k.strong_count() > 0);
    all.push((Arc::downgrade(settings), built.clone()));
    built
}

/// What an `https://` request to a destination that configures no TLS gets:
/// [`Origination::simple`], one value for the process.
pub(crate) fn simple() -> &'static Arc<Origination> {
    static SIMPLE: LazyLock<Arc<Origination>> = LazyLock::new(|| Arc::new(Origination::simple()));
    &SIMPLE
}

/// The system's root certificates, loaded once per process.
fn system_roots() -> Result<Arc<RootCertStore>, TlsFileError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, errors = ?found.errors, "system root certificates loaded");
        if roots.is_empty() {
            let why = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if why.is_empty() {
                "none found".to_string()
            } else {
                why
            });
        }
        Ok(Arc::new(roots))
    });
    roots.clone().map_err(|why| TlsFileError::Config {
        message: format!("no system root certificates to verify the server with ({why})"),
    })
}

/// The name a connection sends as SNI and verifies (with auto SAN validation): `host`
/// (an authority's host, an IPv6 address in brackets or not). `None` when it is
/// neither a DNS name nor an IP address.
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_ascii_lowercase()).ok()
}

/// Verifies a server as Envoy's default validator does with Istio's settings: its chain
/// against the roots, then its names (see [`Origination`]).
#[derive(Debug)]
pub(crate) struct Verifier {
    /// `None`: `insecureSkipVerify`.
    roots: Option<Arc<RootCertStore>>,
    subject_alt_names: Arc<[Arc<str>]>,
    auto_san_validation: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Verifier {
    /// A verifier of the chain alone, against `roots`: the server's name is the
    /// caller's to check (mesh mTLS checks the SPIFFE ID after the handshake).
    pub(crate) fn chain_only(
        roots: Arc<RootCertStore>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Verifier {
            roots: Some(roots),
            subject_alt_names: Arc::from([]),
            auto_san_validation: false,
            algorithms,
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if !self.subject_alt_names.is_empty() {
            if !names_one_of(end_entity, &cert, &self.subject_alt_names) {
                return Err(OtherError(Arc::new(NoExpectedName {
                    expected: self
                        .subject_alt_names
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    presented: presented_names(end_entity),
                }))
                .into());
            }
        } else if self.auto_san_validation {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
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

/// The server's certificate names none of the `subjectAltNames`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's certificate names none of the subjectAltNames [{}] (it names [{}])",
    expected.join(", "),
    presented.join(", ")
)]
struct NoExpectedName {
    expected: Vec<String>,
    presented: Vec<String>,
}

/// True when the certificate `der` has one of `names` as a DNS name (a wildcard name of
/// the certificate matching one label, as Envoy matches them), a URI or an IP address.
fn names_one_of(der: &[u8], cert: &ParsedCertificate<'_>, names: &[Arc<str>]) -> bool {
    let parsed = x509::parse(der);
    let dns = parsed
        .as_ref()
        .map(|c| c.names(x509::DNS))
        .unwrap_or_default();
    let uris = parsed
        .as_ref()
        .map(|c| c.names(x509::URI))
        .unwrap_or_default();
    names.iter().any(|name| match name.parse::<IpAddr>() {
        Ok(ip) => {
            rustls::client::verify_server_name(cert, &ServerName::IpAddress(ip.into())).is_ok()
        }
        Err(_) => {
            uris.iter().any(|u| **u == **name) || dns.iter().any(|d| dns_name_matches(d, name))
        }
    })
}

/// `presented` (a DNS name of a certificate, possibly `*.suffix`) matches `name`.
fn dns_name_matches(presented: &str, name: &str) -> bool {
    if presented.eq_ignore_ascii_case(name) {
        return true;
    }
    match presented.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => false,
    }
}

/// The DNS names and URIs of the certificate `der`, for messages.
fn presented_names(der: &[u8]) -> Vec<String> {
    x509::parse(der).map_or_else(Vec::new, |c| {
        let mut names: Vec<String> = c
            .names(x509::DNS)
            .into_iter()
            .map(|n| format!("DNS:{n}"))
            .collect();
        names.extend(c.names(x509::URI).into_iter().map(|n| format!("URI:{n}")));
        names
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_match_one_label() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("API.example.com", "api.EXAMPLE.com", true),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("api.example.com", "web.example.com", false),
        ];
        for (presented, name, want) in cases {
            assert_eq!(
                dns_name_matches(presented, name),
                want,
                "{presented} {name}"
            );
        }
    }

    #[test]
    fn server_names_of_hosts() {
        assert!(matches!(
            server_name("api.example.com"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(server_name("bad name").is_none());
    }

    #[test]
    fn configurations_are_built_once_per_settings_value() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Arc::new(Origination {
            ca_certificates: Some(dir.path().join("missing.pem")),
            ..Origination::default()
        });
        let first = built(&missing, "test").err().map(|e| e.to_string());
        let message = first.unwrap_or_default();
        assert!(message.contains("cannot read caCertificates"), "{message}");
        assert!(message.contains("missing.pem"), "{message}");
        // Kept: the same error, not read again.
        let (Err(a), Err(b)) = (built(&missing, "test"), built(&missing, "test")) else {
            panic!("built");
        };
        assert!(Arc::ptr_eq(&a, &b));
        // Another value (an update) is built again.
        let again = Arc::new((*missing).clone());
        let Err(c) = built(&again, "test") else {
            panic!("built");
        };
        assert!(!Arc::ptr_eq(&a, &c));

        let insecure = Arc::new(Origination {
            insecure_skip_verify: true,
            ..Origination::default()
        });
        let (Ok(a), Ok(b)) = (built(&insecure, "test"), built(&insecure, "test")) else {
            panic!("insecure settings need no file");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.client_config(true).alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(
            a.client_config(false).alpn_protocols,
            [b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn mutual_without_files_is_an_error() {
        let mutual = Origination {
            mutual: true,
            insecure_skip_verify: true,
            ..Origination::default()
        };
        let e = OriginationTls::new(&mutual).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("`clientCertificate` and `privateKey`")),
            "{e:?}"
        );
    }
}
