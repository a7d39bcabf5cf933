//! The in-process certificate authority: a root (made here, or an existing CA's
//! certificate and key), workload certificates with the SPIFFE ID as their only name,
//! both TLS usages, and a short lifetime (Istio's default: 24 hours).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Certified, IdentityError, SpiffeId};
use crate::transport::x509;

/// Istio's default workload certificate lifetime (`DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Lifetime of a root made here: ten years, as Istio's self-signed root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An in-process certificate authority (see the module documentation).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    /// Roots trusted besides this CA's own (a previous root while a rotation is under
    /// way).
    extra_roots: Mutex<Vec<CertificateDer<'static>>>,
    lifetime: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn issue_error(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Issue(e.to_string())
}

impl CertificateAuthority {
    /// A new self-signed root for `trust_domain` (its key made now, never written
    /// anywhere), issuing workload certificates of [`DEFAULT_WORKLOAD_LIFETIME`].
    pub fn new(trust_domain: &str) -> Result<Self, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh-rs root CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.self_signed(&key).map_err(issue_error)?;
        Ok(CertificateAuthority {
            root: cert.der().clone(),
            issuer: Issuer::new(params, key),
            extra_roots: Mutex::new(Vec::new()),
            lifetime: DEFAULT_WORKLOAD_LIFETIME,
        })
    }

    /// The CA of an existing root: its certificate and private key, as PEM (what
    /// [`CertificateAuthority::root_pem`] and [`CertificateAuthority::root_key_pem`]
    /// wrote), issuing workload certificates of [`DEFAULT_WORKLOAD_LIFETIME`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| IdentityError::Material(format!("the root's private key: {e}")))?;
        let root = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| IdentityError::Material(format!("the root certificate: {e}")))?;
        // The key must be the certificate's: a certificate carries its public key as it
        // is, so the key's public bytes are found in it or the two belong to different
        // roots (whose certificates would then verify against neither).
        let public = key.public_key_raw();
        if public.is_empty() || !root.windows(public.len()).any(|w| w == public) {
            return Err(IdentityError::Material(
                "the root's private key does not belong to the root certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&root, key)
            .map_err(|e| IdentityError::Material(format!("the root certificate: {e}")))?;
        Ok(CertificateAuthority {
            issuer,
            root,
            extra_roots: Mutex::new(Vec::new()),
            lifetime: DEFAULT_WORKLOAD_LIFETIME,
        })
    }

    /// Its root's private key as PEM (PKCS #8): to keep where only the one who issues
    /// certificates can read it.
    pub fn root_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Workload certificates of `lifetime` instead.
    pub fn with_workload_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The lifetime of the workload certificates it issues.
    pub fn workload_lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Also trusts `root` (a CA being retired or introduced): certificates issued from
    /// then on carry it in their trust bundle.
    pub fn trust(&self, root: CertificateDer<'static>) {
        self.extra_roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(root);
    }

    /// Its own root certificate.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The trust bundle it hands out: its root and the others it was told to trust.
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        let mut roots = vec![self.root.clone()];
        roots.extend(
            self.extra_roots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        roots
    }

    /// A certificate for `id`, valid from now for the workload lifetime.
    pub fn issue(&self, id: &SpiffeId) -> Result<Certified, IdentityError> {
        let now = SystemTime::now();
        self.issue_valid(id, now, now + self.lifetime)
    }

    /// A certificate for `id` valid from `not_before` to `not_after` (an expired or
    /// not yet valid one, for a test).
    pub fn issue_valid(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certified, IdentityError> {
        let (chain, key) = self.issue_der(id, not_before, not_after)?;
        Certified::new(chain, key, &self.trust_bundle(), "the in-process CA")
    }

    /// A certificate for `id` valid from `not_before` to `not_after` as the PEM text of
    /// `cert-chain.pem` and `key.pem` (see [`IdentityFiles`](super::IdentityFiles)).
    pub fn issue_pem(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String), IdentityError> {
        let (chain, key) = self.issue_der(id, not_before, not_after)?;
        let chain = chain.iter().map(|c| x509::pem(c)).collect();
        Ok((chain, x509::pem_section("PRIVATE KEY", key.secret_der())))
    }

    /// Its root certificate as PEM (`root-cert.pem`).
    pub fn root_pem(&self) -> String {
        x509::pem(&self.root)
    }

    /// The DER certificate chain and key of a certificate for `id`.
    pub fn issue_der(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(issue_error)?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial()));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }
}

/// A random positive 128-bit serial number.
fn serial() -> [u8; 16] {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    bytes
}
