//! Identities read from files, the way SPIRE, cert-manager's CSI driver or Istio's agent
//! deliver them: a directory holding `cert-chain.pem` (the workload's certificate first),
//! `key.pem` and `root-cert.pem` (the trust bundle, one root or several), the names Istio
//! uses. The directory is watched: when its files change they are read again and, if
//! they make a valid identity, swapped in; otherwise the identity in force stays and the
//! problem is logged (a half-written rotation is not an outage).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

use super::{Certified, IdentityError, WorkloadIdentity};
use crate::transport::tls::{TlsFileError, read, read_all};

/// The certificate chain's file name.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key's file name.
pub const KEY: &str = "key.pem";
/// The trust bundle's file name.
pub const ROOT_CERT: &str = "root-cert.pem";

/// How long a burst of file events is left to settle before the files are read.
const SETTLE: Duration = Duration::from_millis(100);

/// A directory of identity files, watched (see the module documentation).
pub struct IdentityFiles {
    dir: PathBuf,
    identity: Arc<WorkloadIdentity>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for IdentityFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFiles")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl IdentityFiles {
    /// Reads the identity in `dir` now, and (inside a tokio runtime) watches the
    /// directory to read it again when it changes.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Arc<Self>, IdentityError> {
        let dir = dir.into();
        let identity = WorkloadIdentity::fixed(load(&dir)?);
        let watcher = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(watch(&dir, &identity, &handle)?),
            Err(_) => None,
        };
        Ok(Arc::new(IdentityFiles {
            dir,
            identity,
            _watcher: watcher,
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity the files hold.
    pub fn identity(&self) -> Arc<WorkloadIdentity> {
        self.identity.clone()
    }

    /// Reads the files again now; on success the new material is in force.
    pub fn reload(&self) -> Result<(), IdentityError> {
        self.identity.replace(load(&self.dir)?);
        Ok(())
    }
}

/// Reads the identity of `dir`.
fn load(dir: &Path) -> Result<Certified, IdentityError> {
    let chain_path = dir.join(CERT_CHAIN);
    let key_path = dir.join(KEY);
    let chain: Vec<CertificateDer<'static>> = read_all(CERT_CHAIN, &chain_path, "CERTIFICATE")?;
    let key_pem = read(KEY, &key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsFileError::Pem {
        field: KEY,
        path: key_path.clone(),
        message: format!("no usable PRIVATE KEY section: {e}"),
    })?;
    let roots: Vec<CertificateDer<'static>> =
        read_all(ROOT_CERT, &dir.join(ROOT_CERT), "CERTIFICATE")?;
    Certified::new(chain, key, &roots, &chain_path.display().to_string())
}

/// Watches `dir` and swaps the files' material into `identity` when they change.
fn watch(
    dir: &Path,
    identity: &Arc<WorkloadIdentity>,
    handle: &tokio::runtime::Handle,
) -> Result<notify::RecommendedWatcher, IdentityError> {
    let (tx, mut events) = mpsc::unbounded_channel::<()>();
    let watch_error =
        |e: notify::Error| IdentityError::Material(format!("cannot watch {}: {e}", dir.display()));
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(|e| e.kind.is_access()) {
            return;
        }
        let _ = tx.send(());
    })
    .map_err(watch_error)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let weak = Arc::downgrade(identity);
    let dir = dir.to_path_buf();
    let task = handle.spawn(async move {
        while events.recv().await.is_some() {
            // Let a burst of writes (three files, a symlink swap) settle.
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}
            let Some(identity) = weak.upgrade() else {
                return;
            };
            let read = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || load(&dir)).await
            };
            let Ok(read) = read else {
                return;
            };
            match read {
                Ok(material) => {
                    tracing::info!(
                        dir = %dir.display(),
                        id = %material.spiffe_id(),
                        not_after = ?material.not_after(),
                        "workload certificate reloaded"
                    );
                    identity.replace(material);
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "workload certificate files changed but cannot be used; the previous ones stay in force"
                ),
            }
        }
    });
    identity.set_renewal(task.abort_handle());
    Ok(watcher)
}
