//! The configuration under a prefix in etcd, watched from the revision it was read at.
//!
//! The source keeps the prefix's keys in memory ([`KvStore`]) and applies each watch
//! event to them, so a change costs one event, not a read of everything. A compacted
//! revision (the watch fell too far behind) reads everything again, consistently at one
//! revision. When etcd goes away the mesh keeps serving on the configuration in force;
//! the source reconnects with backoff and resumes watching from the last revision it saw
//! (reading everything again only if that revision was compacted meanwhile).
//!
//! With a cache file, every configuration that was accepted is written there
//! (atomically); a process that starts while etcd is down starts from it, says so in the
//! log, and reads etcd as soon as it answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_config::ConfigSet;
use mesh_config::store::kv::{KeyRole, KvStore, classify, normalize_prefix};

use super::{ConfigSource, SourceError};
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
    /// The keys as last read and watched.
    store: Option<KvStore>,
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
            .map_or_else(ConfigSet::new, KvStore::declared_set)
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

    /// The configuration of the keys as they are now: parsed on a blocking thread (a
    /// large configuration takes seconds to parse, which must not hold a worker of the
    /// runtime that serves requests).
    async fn deliver(&mut self) -> ConfigSet {
        let Some(store) = &self.store else {
            return ConfigSet::new();
        };
        self.delivered = store.revision();
        let store = store.clone();
        let local = self.local.entries();
        tokio::task::spawn_blocking(move || store.config_set_with(&local))
            .await
            .unwrap_or_default()
    }

    /// Reads everything, once.
    async fn read_all(&mut self) -> Result<(), EtcdError> {
        let store = store::read(&self.etcd, &self.prefix).await?;
        self.store = Some(store);
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
        let Some(store) = self.store.as_mut() else {
            return false;
        };
        if events.is_empty() {
            store.set_revision(revision.max(store.revision()));
            return false;
        }
        let mut changed = false;
        let mut last = store.revision();
        for event in events {
            let Some(kv) = event.kv else { continue };
            last = last.max(kv.mod_revision);
            let key = String::from_utf8_lossy(&kv.key);
            let config = matches!(
                classify(store.prefix(), &key),
                KeyRole::Resource(_) | KeyRole::Registration { .. } | KeyRole::Claim { .. }
            );
            match event.r#type {
                EVENT_PUT => store.insert(&kv.key, &kv.value, kv.mod_revision),
                EVENT_DELETE => {
                    store.remove(&kv.key);
                }
                _ => continue,
            }
            changed |= config;
        }
        store.set_revision(last);
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
        let (path, store, prefix) = (path.clone(), store.clone(), self.prefix.clone());
        // Serialized and written on a blocking thread (a large configuration takes a
        // while); a failure is logged, and the next accepted configuration tries again.
        let write = move || {
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
            if let Err(e) = write_atomically(&path, value.to_string().as_bytes()) {
                tracing::warn!(
                    cache = %path.display(),
                    error = %e,
                    "cannot cache the configuration from etcd"
                );
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
                Ok(()) => return Ok(self.deliver().await),
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
                        self.store = Some(cached);
                        self.reread = true;
                        return Ok(self.deliver().await);
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

    async fn next(&mut self) -> Result<ConfigSet, SourceError> {
        let local = self.local.clone();
        let from_etcd = tokio::select! {
            delivered = self.next_from_etcd() => Some(delivered),
            () = local.changed() => None,
        };
        match from_etcd {
            Some(delivered) => delivered,
            // A workload of this process registered or deregistered.
            None => Ok(self.deliver().await),
        }
    }

    fn accepted(&mut self) {
        self.write_cache();
    }
}

impl EtcdSource {
    /// The next configuration from etcd (see [`ConfigSource::next`]).
    async fn next_from_etcd(&mut self) -> Result<ConfigSet, SourceError> {
        loop {
            if self.reread || self.store.is_none() {
                match self.read_all().await {
                    Ok(()) => {
                        tracing::info!(etcd = %self.etcd.endpoints(), "configuration read from etcd");
                        return Ok(self.deliver().await);
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
                        return Ok(self.deliver().await);
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
