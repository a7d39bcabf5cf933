//! A workload registering itself in etcd, as Istio's WorkloadGroup auto-registration
//! does: its WorkloadEntry (where it listens, its labels and service account) written
//! under `<prefix>/registry/<namespace>/<name>` with a lease the process keeps alive, and
//! a claim on its name (see [`mesh_config::store::kv`]). Every other process watching
//! the prefix sees the endpoint appear; a clean shutdown deletes it ([`Registration::
//! deregister`]); a crash lets it expire after the lease's TTL.
//!
//! Registering never blocks the workload: it runs in the background, retrying with
//! backoff while etcd is away, and when the lease was lost meanwhile (etcd down longer
//! than the TTL) it grants a new one and writes the entry again.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use mesh_config::store::kv::{CLAIMS, REGISTRY, normalize_prefix};

use super::proto::{
    CMP_EQUAL, Compare, CompareWith, DeleteRangeRequest, Op, PutRequest, RequestOp, TARGET_LEASE,
    TxnRequest,
};
use super::{Etcd, EtcdError};

/// The lease's time to live unless told otherwise: how long the endpoint of a process
/// that died stays in the mesh.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The registrations of the workloads of this process, as the process knows them: its
/// etcd source adds them to the configuration it delivers until etcd has them (a process
/// started while etcd is away still reaches its own workloads).
#[derive(Debug, Clone, Default)]
pub struct LocalRegistrations {
    inner: std::sync::Arc<LocalInner>,
}

#[derive(Debug, Default)]
struct LocalInner {
    entries: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    changed: tokio::sync::Notify,
}

impl LocalRegistrations {
    /// No registration yet.
    pub fn new() -> Self {
        LocalRegistrations::default()
    }

    /// The registrations: (key, WorkloadEntry).
    pub fn entries(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Waits until a registration is added or removed.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, key: &str, entry: Option<&str>) {
        match entry {
            Some(e) => self.lock().insert(key.to_string(), e.to_string()),
            None => self.lock().remove(key),
        };
        self.inner.changed.notify_one();
    }
}

/// A workload's registration, kept alive in the background (see the module
/// documentation). Dropping it stops the keep-alives (the entry then expires).
#[derive(Debug)]
pub struct Registration {
    key: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    registered: watch::Receiver<bool>,
}

impl Registration {
    /// Registers `entry` (a WorkloadEntry, as YAML or JSON) of `namespace`/`name` under
    /// `prefix`, with a lease of `ttl`, and keeps it registered until
    /// [`Registration::deregister`]. `local`, when given, learns of it at once.
    pub fn start(
        etcd: Etcd,
        prefix: &str,
        namespace: &str,
        name: &str,
        entry: String,
        ttl: Duration,
        local: Option<LocalRegistrations>,
    ) -> Registration {
        let prefix = normalize_prefix(prefix);
        let key = format!("{prefix}/{REGISTRY}/{namespace}/{name}");
        let claim = format!("{prefix}/{CLAIMS}/{namespace}/{name}");
        let (stop, stopped) = watch::channel(false);
        let (registered_tx, registered) = watch::channel(false);
        if let Some(local) = &local {
            local.set(&key, Some(&entry));
        }
        let task = tokio::spawn(keep_registered(
            etcd.clone(),
            key.clone(),
            claim,
            entry,
            ttl,
            stopped,
            registered_tx,
        ));
        Registration {
            key,
            stop,
            task: Some(task),
            registered,
        }
    }

    /// The key of the registered WorkloadEntry.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until the entry is written (at most `within`); whether it is.
    pub async fn registered(&self, within: Duration) -> bool {
        let mut rx = self.registered.clone();
        tokio::time::timeout(within, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Deletes the registration (the lease is revoked: every other process sees the
    /// endpoint go) and stops keeping it alive. Errors are logged: the lease expires
    /// anyway. This process keeps reaching its own workload (it is still draining until
    /// it stops).
    pub async fn deregister(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The longest lease the mesh asks for: a day.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Grants a lease, writes the entry and the claim, keeps the lease alive — checking at
/// each renewal that the entry is still there (one another instance of the name wrote
/// since is left to it) — and, when the lease is lost, grants a new one. On stop,
/// revokes the lease.
async fn keep_registered(
    etcd: Etcd,
    key: String,
    claim: String,
    entry: String,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
    registered: watch::Sender<bool>,
) {
    let ttl = ttl.clamp(Duration::from_secs(1), MAX_TTL);
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    let mut lease: Option<i64> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut stopping = stop.clone();
        let (backoff_now, warned_now) = (&mut backoff, &mut warned);
        let attempt = async {
            let (backoff, warned) = (backoff_now, warned_now);
            // A lease still alive (etcd restarted, a stream broke) is kept: granting a
            // new one would rewrite the entry in every process.
            let (id, granted) = match lease {
                Some(id) => (id, ttl.as_secs() as i64),
                None => {
                    let (id, granted) = etcd.grant(ttl).await?;
                    lease = Some(id);
                    (id, granted)
                }
            };
            let renew_every =
                (Duration::from_secs(granted.max(1) as u64) / 3).max(Duration::from_millis(300));
            // The checks between two renewals are bounded too: a slow read must not
            // push the next renewal past the lease's TTL.
            let quick = etcd.with_timeout(renew_every);
            // A kept lease whose entry is still there is not written again (that would
            // make every process check and compile for nothing).
            let (_, kv) = quick.get(key.as_bytes()).await?;
            if kv.is_none_or(|kv| kv.lease != id) {
                put_entry(&quick, &key, &claim, &entry, id).await?;
            }
            let _ = registered.send(true);
            *backoff = Duration::from_millis(100);
            *warned = false;
            tracing::debug!(%key, lease = id, "workload registered");
            let mut keep = etcd.keep_alive(id).await?;
            loop {
                // A renewal not answered within a third of the TTL is a lost stream:
                // waiting longer would let the lease expire unnoticed.
                tokio::time::timeout(renew_every, keep.renew())
                    .await
                    .map_err(|_| EtcdError::Ended {
                        what: "lease keep-alive",
                        reason: format!("no answer within {renew_every:?}"),
                    })??;
                // The entry deleted behind the lease's back (by hand, or by another
                // instance of the workload that stopped): written again.
                let (_, kv) = quick.get(key.as_bytes()).await?;
                if kv.is_none() {
                    put_entry(&quick, &key, &claim, &entry, id).await?;
                }
                tokio::select! {
                    _ = tokio::time::sleep(renew_every) => {}
                    _ = stopping.changed() => return Ok::<(), EtcdError>(()),
                }
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => Ok(()),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                if matches!(e, EtcdError::LeaseExpired { .. }) {
                    lease = None;
                }
                let _ = registered.send(false);
                // Warned once per loss, not at every retry while etcd is away.
                if !warned {
                    tracing::warn!(%key, error = %e, "workload registration lost; registering again");
                    warned = true;
                } else {
                    tracing::debug!(%key, error = %e, "registering again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    // Deregister: revoking the lease deletes the entry at once. Should that fail (the
    // lease expired meanwhile), the entry is deleted only if it is still this lease's:
    // another instance may have registered the name since.
    if let Some(id) = lease {
        match etcd.revoke(id).await {
            Ok(()) => tracing::debug!(%key, "workload deregistered"),
            Err(e) => {
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CMP_EQUAL,
                        target: TARGET_LEASE,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(CompareWith::Lease(id)),
                        range_end: Vec::new(),
                    }],
                    success: vec![RequestOp {
                        request: Some(Op::DeleteRange(DeleteRangeRequest {
                            key: key.as_bytes().to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: Vec::new(),
                };
                let _ = etcd.txn(txn).await;
                tracing::warn!(%key, error = %e, "cannot revoke the registration's lease; it expires by itself");
            }
        }
    }
    let _ = registered.send(false);
}

/// Writes the entry under `lease` and the claim, together: a claim alone would hide a
/// static entry of the name before the registration replaces it.
async fn put_entry(
    etcd: &Etcd,
    key: &str,
    claim: &str,
    entry: &str,
    lease: i64,
) -> Result<(), EtcdError> {
    let put = |k: &str, v: &str, lease: i64| RequestOp {
        request: Some(Op::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            lease,
            prev_kv: false,
        })),
    };
    etcd.txn(TxnRequest {
        compare: Vec::new(),
        success: vec![put(key, entry, lease), put(claim, key, 0)],
        failure: Vec::new(),
    })
    .await?;
    Ok(())
}
