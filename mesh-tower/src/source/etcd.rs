//! The configuration under a prefix in etcd, watched from the revision it was read at.
//!
//! The source keeps the prefix's keys in memory ([`KvStore`]) and applies each watch
//! event to them, so a change costs one event, not a read of everything. A compacted
//! revision (the watch fell too far behind) reads everything again, consistently at one
//! revision. When etcd goes away the mesh keeps serving on the configuration in force;
//! the source reconnects with backoff and resumes watching from the last revision it saw
//! (reading everything again only if that revision was compacted meanwhile).
//!
//! A change of registrations, claims or static WorkloadEntries only is delivered as the
//! WorkloadEntries it changed ([`Delivery::Workloads`]): each name the change touched is
//! compared before and after ([`KvStore::effective`]), and only those that differ are
//! loaded (each checked on its own). Anything else, or a configuration in force that is
//! not the one last delivered, delivers the whole configuration.
//!
//! With a cache file, every configuration that was accepted is written there
//! (atomically); a process that starts while etcd is down starts from it, says so in the
//! log, and reads etcd as soon as it answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mesh_config::ConfigSet;
use mesh_config::store::kv::{Effective, KeyRole, KvStore, classify, normalize_prefix};

use super::{ConfigSource, Delivery, SourceError, WorkloadChanges};
use crate::etcd::proto::{EVENT_DELETE, EVENT_PUT};
use crate::etcd::registration::LocalRegistrations;
use crate::etcd::{Etcd, EtcdError, Watch, store};

/// The first wait after a failure; doubled after each failure in a row.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The configuration under a prefix in etcd (see the module documentation).
pub struct EtcdSource {
    etcd: Etcd,
    prefix: String,
    cache: Option<PathBuf>,
    /// The keys as last read and watched (shared with a cache write or a parse under
    /// way; copied on write).
    store: Option<Arc<KvStore>>,
    watch: Option<Watch>,
    /// Everything must be read again (first read, compaction, started from the cache).
    reread: bool,
    /// The revision of the configuration last delivered, and of the one cached.
    delivered: i64,
    cached: i64,
    backoff: Duration,
    /// The process's own registrations.
    local: LocalRegistrations,
    /// When a failure was last logged as a warning (at most one every 30 s).
    last_warning: Option<std::time::Instant>,
    /// The WorkloadEntry names changed since the last delivery, with what each was then;
    /// `None` when anything else changed (the whole configuration is delivered).
    pending: Option<BTreeMap<(String, String), Effective>>,
    /// The configuration delivered last was accepted: changes can be delivered relative
    /// to it.
    in_force: bool,
    /// The process's own registrations as of the last delivery.
    last_local: Vec<(String, String)>,
    /// A cache write is under way.
    writing: Arc<AtomicBool>,
    /// The keys to write to the cache next.
    unwritten: Arc<Mutex<Option<Arc<KvStore>>>>,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("etcd", &self.etcd)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSource {
    /// The configuration under `prefix` (`/mesh`) in `etcd`.
    pub fn new(etcd: Etcd, prefix: &str) -> Self {
        EtcdSource {
            etcd,
            prefix: normalize_prefix(prefix),
            cache: None,
            store: None,
            watch: None,
            reread: true,
            delivered: 0,
            cached: 0,
            backoff: BACKOFF_START,
            local: LocalRegistrations::new(),
            last_warning: None,
            pending: None,
            in_force: false,
            last_local: Vec::new(),
            writing: Arc::new(AtomicBool::new(false)),
            unwritten: Arc::new(Mutex::new(None)),
        }
    }

    /// Logs a failure to reach etcd: a warning for the first in a row and every 30 s
    /// after (the configuration in force goes stale meanwhile), else at debug level.
    fn failing(&mut self, e: &EtcdError, what: &str) {
        let now = std::time::Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
        {
            tracing::warn!(etcd = %self.etcd.endpoints(), error = %e, "{what}");
            self.last_warning = Some(now);
        } else {
            tracing::debug!(error = %e, "{what}");
        }
    }

    /// The registrations of this process's workloads: pass it to
    /// [`Registration::start`](crate::etcd::registration::Registration::start), and
    /// the source delivers them even before (or while) etcd cannot.
    pub fn local_registrations(&self) -> LocalRegistrations {
        self.local.clone()
    }

    /// The configuration as declared (static WorkloadEntries included whether claimed
    /// or not, registrations left out): what a process reads to know how to run the
    /// workloads it is asked to run. Empty before [`ConfigSource::load`].
    pub fn declared(&self) -> ConfigSet {
        self.store
            .as_ref()
            .map_or_else(ConfigSet::new, |s| s.declared_set())
    }

    /// Caches every accepted configuration in `path`, and starts from it when etcd is
    /// down at start.
    pub fn with_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache = Some(path.into());
        self
    }

    /// The etcd client it reads with (workloads register through the same connections).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The revision of the configuration last delivered (0 before the first).
    pub fn revision(&self) -> i64 {
        self.delivered
    }

    async fn wait_after_failure(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// The whole configuration of the keys as they are now: parsed on a blocking thread
    /// (a large configuration takes seconds to parse, which must not hold a worker of
    /// the runtime that serves requests).
    async fn deliver_all(&mut self) -> ConfigSet {
        let Some(store) = &self.store else {
            return ConfigSet::new();
        };
        self.delivered = store.revision();
        self.pending = Some(BTreeMap::new());
        self.in_force = false;
        let store = store.clone();
        let local = self.local.entries();
        self.last_local = local.clone();
        tokio::task::spawn_blocking(move || store.config_set_with(&local))
            .await
            .unwrap_or_default()
    }

    /// What changed since the last delivery: only the WorkloadEntries when nothing else
    /// changed and the last delivery is in force, else the whole configuration; `None`
    /// when nothing did.
    async fn deliver(&mut self) -> Option<Delivery> {
        let local = self.local.entries();
        // The process's own registrations that changed since the last delivery, whatever
        // woke the source (their notification may come after).
        let moved: Vec<String> = local
            .iter()
            .filter(|e| !self.last_local.contains(e))
            .chain(self.last_local.iter().filter(|e| !local.contains(e)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            self.touch(&key);
        }
        let changes = match (&self.store, &self.pending) {
            (Some(store), Some(pending)) if self.in_force => {
                // Many entries at once (leases expiring together) are parsed and checked
                // off the runtime's worker threads.
                if pending.len() > 64 {
                    let (store, pending, local) = (store.clone(), pending.clone(), local.clone());
                    tokio::task::spawn_blocking(move || workload_changes(&store, &pending, &local))
                        .await
                        .ok()
                        .flatten()
                } else {
                    workload_changes(store, pending, &local)
                }
            }
            _ => None,
        };
        if let (Some(w), Some(store)) = (changes, &self.store) {
            let revision = store.revision();
            self.pending = Some(BTreeMap::new());
            self.last_local = local;
            if w.changes.is_empty() && w.diagnostics.is_empty() {
                return None;
            }
            self.delivered = revision;
            self.in_force = false;
            return Some(Delivery::Workloads(w));
        }
        Some(Delivery::Config(self.deliver_all().await))
    }

    /// Notes what the WorkloadEntry named by `key` is before a change of `key`; any
    /// other configuration key means the whole configuration is delivered.
    fn touch(&mut self, key: &str) {
        let (Some(store), Some(pending)) = (&self.store, self.pending.as_mut()) else {
            return;
        };
        match store.workload_name(key) {
            Some((ns, name)) => {
                if !pending.contains_key(&(ns.clone(), name.clone())) {
                    let before = store.effective(&ns, &name, &self.last_local);
                    pending.insert((ns, name), before);
                }
            }
            None => self.pending = None,
        }
    }

    /// Reads everything, once.
    async fn read_all(&mut self) -> Result<(), EtcdError> {
        let store = store::read(&self.etcd, &self.prefix).await?;
        self.store = Some(Arc::new(store));
        self.pending = None;
        self.watch = None;
        self.reread = false;
        self.backoff = BACKOFF_START;
        Ok(())
    }

    /// Applies the watch's batches that are already received, without waiting for more.
    async fn take_ready(&mut self) {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                return;
            };
            // Polled once: a batch already there, else nothing (the stream keeps what
            // it was reading; `next` is cancel-safe).
            match tokio::time::timeout(Duration::ZERO, watch.next()).await {
                Ok(Ok(batch)) => {
                    self.apply(batch.events, batch.revision);
                }
                // The watch ended: the next call watches again from the revision the
                // keys are at (or reads everything again after a compaction).
                Ok(Err(e)) => {
                    self.reread |= matches!(e, EtcdError::Compacted { .. });
                    self.watch = None;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Applies a watch's events to the keys; whether configuration keys changed.
    /// `revision` is the header's: for a progress notification (no events), every change
    /// up to it was sent; a batch of events goes up to its last event only (a watch still
    /// catching up answers with the store's current revision in its header).
    fn apply(&mut self, events: Vec<crate::etcd::proto::Event>, revision: i64) -> bool {
        let Some(store) = self.store.as_mut().map(Arc::make_mut) else {
            return false;
        };
        if events.is_empty() {
            store.set_revision(revision.max(store.revision()));
            return false;
        }
        let mut changed = false;
        let mut last = store.revision();
        let prefix = store.prefix().to_string();
        for event in events {
            let Some(kv) = event.kv else { continue };
            last = last.max(kv.mod_revision);
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let config = matches!(
                classify(&prefix, &key),
                KeyRole::Resource(_) | KeyRole::Registration { .. } | KeyRole::Claim { .. }
            );
            if config {
                self.touch(&key);
            }
            let Some(store) = self.store.as_mut().map(Arc::make_mut) else {
                return false;
            };
            match event.r#type {
                EVENT_PUT => store.insert(&kv.key, &kv.value, kv.mod_revision),
                EVENT_DELETE => {
                    store.remove(&kv.key);
                }
                _ => continue,
            }
            changed |= config;
        }
        if let Some(store) = self.store.as_mut().map(Arc::make_mut) {
            store.set_revision(last);
        }
        changed
    }

    fn read_cache(&self) -> Option<KvStore> {
        let path = self.cache.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        if value["prefix"].as_str() != Some(self.prefix.as_str()) {
            return None;
        }
        let mut store = KvStore::new(&self.prefix, value["revision"].as_i64()?);
        for entry in value["keys"].as_array()? {
            store.insert(
                entry["key"].as_str()?.as_bytes(),
                entry["value"].as_str()?.as_bytes(),
                entry["modRevision"].as_i64()?,
            );
        }
        Some(store)
    }

    fn write_cache(&mut self) {
        let (Some(path), Some(store)) = (&self.cache, &self.store) else {
            return;
        };
        if self.cached == store.revision() {
            return;
        }
        self.cached = store.revision();
        // The latest accepted keys wait in `unwritten`; one blocking thread at a time
        // writes whatever is latest until nothing waits (registrations may come faster
        // than a large configuration is written; the last state is always written).
        // The keys are shared, not copied: the next watch event copies them only if the
        // writer still holds them.
        let slot = self.unwritten.clone();
        *lock(&slot) = Some(store.clone());
        if self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let writing = self.writing.clone();
        let (path, prefix) = (path.clone(), self.prefix.clone());
        let write = move || {
            loop {
                let Some(store) = lock(&slot).take() else {
                    writing.store(false, Ordering::Release);
                    // Keys put in after the take and before the flag was cleared are
                    // written too, by this thread unless another took over.
                    if lock(&slot).is_none() || writing.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                };
                write_cache_file(&path, &prefix, &store);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

/// Locks `m`, whoever panicked holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serializes `store`'s keys as the cache file and writes it atomically; a failure is
/// logged (the next accepted configuration tries again).
fn write_cache_file(path: &Path, prefix: &str, store: &KvStore) {
    let keys: Vec<serde_json::Value> = store
        .all_keys()
        .into_iter()
        .map(|(key, value, mod_revision)| {
            serde_json::json!({"key": key, "value": value, "modRevision": mod_revision})
        })
        .collect();
    let value = serde_json::json!({
        "prefix": prefix,
        "revision": store.revision(),
        "keys": keys,
    });
    if let Err(e) = write_atomically(path, value.to_string().as_bytes()) {
        tracing::warn!(
            cache = %path.display(),
            error = %e,
            "cannot cache the configuration from etcd"
        );
    }
}

/// The WorkloadEntries that differ from what `pending` says they were, each loaded and
/// checked on its own; `None` when only checking the whole configuration can tell.
fn workload_changes(
    store: &KvStore,
    pending: &BTreeMap<(String, String), Effective>,
    local: &[(String, String)],
) -> Option<WorkloadChanges> {
    let mut out = WorkloadChanges::default();
    for ((ns, name), before) in pending {
        let now = store.effective(ns, name, local);
        if now == *before {
            continue;
        }
        let (change, warning) = store.workload_change(ns, name, &now)?;
        // A registration that is not valid where there was nothing: only its warning.
        if change.entry.is_some() || *before != Effective::Absent {
            out.changes.push(change);
        }
        out.diagnostics.extend(warning);
    }
    Some(out)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl ConfigSource for EtcdSource {
    fn describe(&self) -> String {
        format!("etcd at {} under {}", self.etcd.endpoints(), self.prefix)
    }

    async fn load(&mut self) -> Result<ConfigSet, SourceError> {
        let mut warned = false;
        loop {
            match self.read_all().await {
                Ok(()) => return Ok(self.deliver_all().await),
                Err(e) if e.is_unavailable() => {
                    if let Some(cached) = self.read_cache() {
                        tracing::warn!(
                            etcd = %self.etcd.endpoints(),
                            cache = %self.cache.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                            revision = cached.revision(),
                            error = %e,
                            "etcd is unreachable: starting from the last good configuration cached on disk; etcd will be read as soon as it answers"
                        );
                        self.cached = cached.revision();
                        self.store = Some(Arc::new(cached));
                        self.reread = true;
                        return Ok(self.deliver_all().await);
                    }
                    if !warned {
                        tracing::warn!(
                            etcd = %self.etcd.endpoints(),
                            error = %e,
                            "etcd is unreachable and no configuration is cached: waiting for etcd"
                        );
                        warned = true;
                    }
                    self.wait_after_failure().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn next(&mut self) -> Result<Delivery, SourceError> {
        loop {
            let local = self.local.clone();
            let from_etcd = tokio::select! {
                delivered = self.next_from_etcd() => Some(delivered),
                () = local.changed() => None,
            };
            match from_etcd {
                Some(delivered) => return delivered,
                // A workload of this process registered or deregistered.
                None => {
                    if let Some(d) = self.deliver().await {
                        return Ok(d);
                    }
                }
            }
        }
    }

    fn accepted(&mut self) {
        self.in_force = true;
        self.write_cache();
    }
}

impl EtcdSource {
    /// The next configuration from etcd (see [`ConfigSource::next`]).
    async fn next_from_etcd(&mut self) -> Result<Delivery, SourceError> {
        loop {
            if self.reread || self.store.is_none() {
                match self.read_all().await {
                    Ok(()) => {
                        tracing::info!(etcd = %self.etcd.endpoints(), "configuration read from etcd");
                        return Ok(Delivery::Config(self.deliver_all().await));
                    }
                    Err(e) => {
                        self.failing(&e, "cannot read the configuration from etcd; retrying");
                        self.wait_after_failure().await;
                        continue;
                    }
                }
            }
            let from = self.store.as_ref().map_or(0, |s| s.revision() + 1);
            if self.watch.is_none() {
                match self
                    .etcd
                    .watch(format!("{}/", self.prefix).as_bytes(), from)
                    .await
                {
                    Ok(w) => self.watch = Some(w),
                    Err(EtcdError::Compacted { .. }) => {
                        self.reread = true;
                        continue;
                    }
                    Err(e) => {
                        self.failing(&e, "cannot watch the configuration in etcd; retrying");
                        self.wait_after_failure().await;
                        continue;
                    }
                }
            }
            let Some(watch) = self.watch.as_mut() else {
                continue;
            };
            match watch.next().await {
                Ok(batch) => {
                    self.backoff = BACKOFF_START;
                    self.last_warning = None;
                    if self.apply(batch.events, batch.revision) {
                        // Changes already waiting are taken too: a process that fell
                        // behind (a large configuration takes a while to check and
                        // compile) goes to the latest state at once, not through every
                        // state in between.
                        self.take_ready().await;
                        if let Some(d) = self.deliver().await {
                            return Ok(d);
                        }
                    }
                }
                Err(EtcdError::Compacted { .. }) => {
                    tracing::warn!(
                        revision = from,
                        "etcd compacted the revisions the watch needed: reading the configuration again"
                    );
                    self.reread = true;
                }
                Err(e) => {
                    tracing::warn!(etcd = %self.etcd.endpoints(), error = %e, "lost the etcd watch; serving the configuration in force, reconnecting");
                    self.watch = None;
                    self.wait_after_failure().await;
                }
            }
        }
    }
}
