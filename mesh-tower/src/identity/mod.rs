//! Workload identities: Istio's SPIFFE IDs, the certificates that prove them, and the
//! rustls configurations made from them.
//!
//! A workload proves who it is with an X.509 certificate whose URI name is its SPIFFE ID,
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, issued by a CA both
//! sides trust. The certificates come from an [`Identities`] source: the in-process
//! [`CertificateAuthority`] (short-lived certificates, renewed at half their lifetime, as
//! Istio's agent does) or a directory of files ([`IdentityFiles`], the way SPIRE or
//! cert-manager deliver them), reloaded when they change.
//!
//! A [`WorkloadIdentity`] holds the material in force and the rustls configurations made
//! from it, swapped atomically when it is renewed: handshakes read the new one, and a
//! connection made earlier keeps the certificate it was made with, so renewal never
//! fails a request. The trust bundle may hold several roots (a CA being rotated).

mod ca;
mod files;
mod verify;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use ca::{CertificateAuthority, DEFAULT_WORKLOAD_LIFETIME};
pub use files::{CERT_CHAIN, IdentityFiles, KEY, ROOT_CERT};
pub(crate) use verify::peer_spiffe_id;

use crate::transport::x509;

/// Why an identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A SPIFFE ID that is not Istio's `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    #[error(
        "`{0}` is not a SPIFFE ID of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    SpiffeId(String),
    /// The CA could not issue a certificate.
    #[error("the certificate authority could not issue a certificate: {0}")]
    Issue(String),
    /// A file of a directory source could not be read or is not the PEM it should be.
    #[error(transparent)]
    File(#[from] crate::transport::tls::TlsFileError),
    /// The certificate has no SPIFFE ID among its URI names.
    #[error("the certificate in {0} has no spiffe:// URI name")]
    NoSpiffeId(String),
    /// rustls refused the material (a key that does not match the certificate, a root
    /// that cannot be used).
    #[error("invalid identity material: {0}")]
    Material(String),
}

/// An Istio SPIFFE ID: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offsets of `/ns/` and `/sa/` in `uri`.
    ns_at: u16,
    sa_at: u16,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// The identity of service account `sa` of namespace `ns` in `trust_domain`.
    pub fn new(trust_domain: &str, ns: &str, sa: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("{SCHEME}{trust_domain}/ns/{ns}/sa/{sa}"))
    }

    /// Parses `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` (each part
    /// non-empty, without `/`).
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::SpiffeId(uri.to_string());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(bad());
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() || uri.len() > usize::from(u16::MAX) {
            return Err(bad());
        }
        let ns_at = SCHEME.len() + td.len();
        let sa_at = ns_at + "/ns/".len() + ns.len();
        Ok(SpiffeId {
            uri: uri.into(),
            ns_at: u16::try_from(ns_at).map_err(|_| bad())?,
            sa_at: u16::try_from(sa_at).map_err(|_| bad())?,
        })
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The principal as AuthorizationPolicy writes it: the URI without `spiffe://`
    /// (`cluster.local/ns/default/sa/bookinfo-reviews`).
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..usize::from(self.ns_at)]
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[usize::from(self.ns_at) + "/ns/".len()..usize::from(self.sa_at)]
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.uri[usize::from(self.sa_at) + "/sa/".len()..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

/// The verified identity of the peer of a mutual TLS connection: a request extension set
/// by [`Mesh::serve`](crate::Mesh::serve) (absent on plaintext connections). Cheap to
/// clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    id: SpiffeId,
    sni: Option<Arc<str>>,
}

impl PeerIdentity {
    pub(crate) fn new(id: SpiffeId, sni: Option<Arc<str>>) -> Self {
        PeerIdentity { id, sni }
    }

    /// The peer's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// Its principal, as AuthorizationPolicy writes it
    /// (`cluster.local/ns/default/sa/bookinfo-productpage`).
    pub fn principal(&self) -> &str {
        self.id.principal()
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        self.id.namespace()
    }

    /// Its trust domain.
    pub fn trust_domain(&self) -> &str {
        self.id.trust_domain()
    }

    /// Its service account.
    pub fn service_account(&self) -> &str {
        self.id.service_account()
    }

    /// The server name the peer asked for in its handshake, if any.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
}

/// A workload's certificate, key and trust bundle, and the rustls configurations made
/// from them.
pub struct Certified {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    not_before: SystemTime,
    not_after: SystemTime,
    server: Arc<ServerConfig>,
    client_h1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
}

impl fmt::Debug for Certified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certified")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Certified {
    /// The material of `chain` (the workload's certificate first), `key` and the trust
    /// bundle `roots`. The identity is the first `spiffe://` URI name of the certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &[CertificateDer<'static>],
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Material(format!("{origin}: no certificate")))?;
        let id = x509::uri_sans(leaf)
            .iter()
            .find_map(|u| SpiffeId::parse(u).ok())
            .ok_or_else(|| IdentityError::NoSpiffeId(origin.to_string()))?;
        let (not_before, not_after) = x509::validity(leaf).ok_or_else(|| {
            IdentityError::Material(format!("{origin}: unreadable validity period"))
        })?;
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(|e| {
                IdentityError::Material(format!("{origin}: not a usable root certificate: {e}"))
            })?;
        }
        let roots = Arc::new(store);
        let (server, client_h1, client_h2) = verify::configs(&chain, key, &roots)?;
        Ok(Certified {
            id,
            chain,
            roots,
            not_before,
            not_after,
            server,
            client_h1,
            client_h2,
        })
    }

    /// The SPIFFE ID the certificate proves.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate chain, the workload's certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Start of the certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Number of roots in the trust bundle.
    pub fn roots(&self) -> usize {
        self.roots.len()
    }

    /// The server configuration of mutual TLS: the workload's certificate, a client
    /// certificate required and verified against the trust bundle, ALPN `h2` and
    /// `http/1.1`, TLS 1.2 and 1.3.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    /// The client configuration of mutual TLS for HTTP/1.1 (`http2`: HTTP/2): the
    /// workload's certificate, the server's chain verified against the trust bundle (its
    /// SPIFFE ID is checked by the caller, against the endpoint's).
    pub fn client_config(&self, http2: bool) -> &Arc<ClientConfig> {
        if http2 {
            &self.client_h2
        } else {
            &self.client_h1
        }
    }

    /// When it should be renewed: half way through its validity, as Istio's agent does.
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }
}

/// One workload's identity: the material in force, renewed in the background while the
/// identity is alive (see the module documentation). Cheap to share.
pub struct WorkloadIdentity {
    current: ArcSwap<Certified>,
    /// The task that renews it (stopped when the identity is dropped).
    renewal: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Times it was renewed.
    renewals: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl Drop for WorkloadIdentity {
    fn drop(&mut self) {
        if let Some(task) = self
            .renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl WorkloadIdentity {
    /// An identity holding `material`, renewed by nobody (see [`Identities`] for the
    /// renewed kinds).
    pub fn fixed(material: Certified) -> Arc<Self> {
        Arc::new(WorkloadIdentity {
            current: ArcSwap::from_pointee(material),
            renewal: std::sync::Mutex::new(None),
            renewals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Certified> {
        self.current.load_full()
    }

    /// The SPIFFE ID of the material in force.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.current.load().id.clone()
    }

    /// How many times the material was renewed since the identity was made.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Swaps `material` in: new handshakes use it.
    pub fn replace(&self, material: Certified) {
        self.current.store(Arc::new(material));
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_renewal(&self, task: tokio::task::AbortHandle) {
        *self.renewal.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

/// Where the workloads of a process get their certificates.
#[derive(Clone, Debug)]
pub enum Identities {
    /// Issued by an in-process CA, renewed at half their lifetime.
    Ca(Arc<CertificateAuthority>),
    /// Read from a directory (`cert-chain.pem`, `key.pem`, `root-cert.pem`), reloaded
    /// when the files change: one identity for every workload of the process, as a pod
    /// has one.
    Files(Arc<IdentityFiles>),
    /// Read from a directory per workload identity, `<dir>/<namespace>/<service
    /// account>/` (each as [`Identities::Files`] reads one), for a process running
    /// workloads of several service accounts (`meshctl ca issue` writes them).
    Tree(Arc<IdentityTree>),
}

/// The identity directories of [`Identities::Tree`], opened as workloads ask for them.
#[derive(Debug)]
pub struct IdentityTree {
    dir: std::path::PathBuf,
    opened: Mutex<std::collections::HashMap<SpiffeId, Arc<IdentityFiles>>>,
}

impl IdentityTree {
    /// The tree under `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Arc<Self> {
        Arc::new(IdentityTree {
            dir: dir.into(),
            opened: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The directory of `id`'s files: `<dir>/<namespace>/<service account>`.
    pub fn dir_of(&self, id: &SpiffeId) -> std::path::PathBuf {
        self.dir.join(id.namespace()).join(id.service_account())
    }

    fn identity(&self, id: &SpiffeId) -> Result<Arc<WorkloadIdentity>, IdentityError> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let files = match opened.get(id) {
            Some(f) => f.clone(),
            None => {
                let files = IdentityFiles::open(self.dir_of(id))?;
                opened.insert(id.clone(), files.clone());
                files
            }
        };
        drop(opened);
        Identities::Files(files).identity(id)
    }
}

impl Identities {
    /// The identity of the workload `id`: issued now (and renewed in the background,
    /// when a tokio runtime is running) or read from the files.
    pub fn identity(&self, id: &SpiffeId) -> Result<Arc<WorkloadIdentity>, IdentityError> {
        match self {
            Identities::Ca(ca) => {
                let identity = WorkloadIdentity::fixed(ca.issue(id)?);
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let task = handle.spawn(renew_from_ca(
                        Arc::downgrade(&identity),
                        ca.clone(),
                        id.clone(),
                    ));
                    identity.set_renewal(task.abort_handle());
                }
                Ok(identity)
            }
            Identities::Tree(tree) => tree.identity(id),
            Identities::Files(files) => {
                let identity = files.identity();
                if identity.spiffe_id() != *id {
                    tracing::warn!(
                        expected = %id,
                        found = %identity.spiffe_id(),
                        dir = %files.dir().display(),
                        "the certificate's identity is not the workload's"
                    );
                }
                Ok(identity)
            }
        }
    }
}

/// Renews the identity from `ca` at half of each certificate's lifetime, for as long as
/// the identity lives. A failure is retried after a second (the old certificate stays in
/// force meanwhile).
async fn renew_from_ca(
    identity: std::sync::Weak<WorkloadIdentity>,
    ca: Arc<CertificateAuthority>,
    id: SpiffeId,
) {
    loop {
        let Some(at) = identity.upgrade().map(|i| i.current().renew_at()) else {
            return;
        };
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let Some(identity) = identity.upgrade() else {
            return;
        };
        match ca.issue(&id) {
            Ok(material) => {
                tracing::debug!(%id, not_after = ?material.not_after(), "workload certificate renewed");
                identity.replace(material);
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "workload certificate renewal failed");
                drop(identity);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
