//! A configuration kept in a key-value store (etcd): one key per resource,
//! `<prefix>/<group>/<Kind>/<namespace>/<name>`, whose value is the resource's YAML as a
//! document of its own.
//!
//! Reading turns every key into a source named `etcd:<key>`, so diagnostics name the key
//! (and the line in its value). A key must name the resource it holds: a value whose kind,
//! namespace or name differ from its key's, or that holds several resources, is an error
//! (the key is the resource's identity, as a Kubernetes object's path is in etcd).
//!
//! Applying and deleting are planned in memory as for a directory ([`super::ConfigDir`]):
//! the configuration the store would hold is checked whole before anything is written,
//! and the plan says which keys to put and delete. Writing is the caller's (the mesh's etcd
//! client), as one transaction guarded by the revision the plan was made at
//! ([`KvStore::revision`]): two plans made at one revision cannot both be written, so
//! nobody writes a configuration nobody checked.
//!
//! Workloads that register themselves write their WorkloadEntry under
//! `<prefix>/registry/<namespace>/<name>` (under a lease: it goes when they do) and a
//! claim `<prefix>/claims/<namespace>/<name>` (without one). The configuration a store
//! holds is its resources plus the registered WorkloadEntries; a static WorkloadEntry of
//! the same namespace and name as a claim is left out, registered or not: once a workload
//! registers itself, its endpoint exists exactly while it is registered (as Istio's
//! auto-registration takes over a WorkloadEntry of its name and deletes it when its
//! workload disconnects). Deleting the claim gives the static entry back. `meshctl`
//! writes neither; its guard key lives under `<prefix>/meshctl/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::text::resource_text;
use super::{Change, Listed, Outcome, StoreError, documents};
use crate::diag::{Code, Diagnostic, Location};
use crate::load::ConfigSet;
use crate::model::{Kind, ResourceKey};
use crate::snapshot::Checked;
use crate::source::{SourceFile, Span};

/// The prefix a mesh keeps its configuration under unless told otherwise.
pub const DEFAULT_PREFIX: &str = "/mesh";

/// The part of the prefix workloads register themselves under.
pub const REGISTRY: &str = "registry";

/// The part of the prefix registered workloads claim their names under.
pub const CLAIMS: &str = "claims";

/// The part of the prefix writers bump in every write (see the module documentation).
pub const GUARD: &str = "meshctl/generation";

/// The name a key's value gets as a source: `etcd:<key>`.
pub fn source_name(key: &str) -> String {
    format!("etcd:{key}")
}

/// `prefix` without trailing slashes (`/mesh/` → `/mesh`); `/` stays `` (keys then start
/// with `/<group>`).
pub fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}

/// The key of resource `key` under `prefix`.
pub fn key_path(prefix: &str, key: &ResourceKey) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        normalize_prefix(prefix),
        key.kind.group(),
        key.kind.as_str(),
        key.namespace,
        key.name
    )
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRole {
    /// A resource of the configuration.
    Resource(ResourceKey),
    /// A workload's registration (`<prefix>/registry/<namespace>/<name>`).
    Registration {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A registered workload's claim on its name (`<prefix>/claims/<namespace>/<name>`).
    Claim {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A writers' key (the guard).
    Internal,
    /// Anything else: not the mesh's (reported, ignored).
    Foreign,
}

/// What `key` (a full key, under `prefix`) is.
pub fn classify(prefix: &str, key: &str) -> KeyRole {
    let prefix = normalize_prefix(prefix);
    let Some(rest) = key.strip_prefix(&prefix).and_then(|r| r.strip_prefix('/')) else {
        return KeyRole::Foreign;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [REGISTRY, ns, name] if !ns.is_empty() && !name.is_empty() => KeyRole::Registration {
            namespace: (*ns).to_string(),
            name: (*name).to_string(),
        },
        [CLAIMS, ns, name] if !ns.is_empty() && !name.is_empty() => KeyRole::Claim {
            namespace: (*ns).to_string(),
            name: (*name).to_string(),
        },
        ["meshctl", ..] => KeyRole::Internal,
        [group, kind, ns, name] if !ns.is_empty() && !name.is_empty() => {
            match Kind::from_name(kind).filter(|k| k.group() == *group) {
                Some(kind) => KeyRole::Resource(ResourceKey {
                    kind,
                    namespace: (*ns).to_string(),
                    name: (*name).to_string(),
                }),
                None => KeyRole::Foreign,
            }
        }
        _ => KeyRole::Foreign,
    }
}

/// What a WorkloadEntry name is in the configuration a store holds (see
/// [`KvStore::effective`]): compared before and after a change to tell whether the
/// entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effective {
    /// No entry of that name.
    Absent,
    /// A registration, `key` holding `text`.
    Registered {
        /// The registration's key.
        key: String,
        /// Its value.
        text: String,
    },
    /// A static WorkloadEntry (not claimed), `key` holding `text`.
    Static {
        /// The resource's key.
        key: String,
        /// Its value.
        text: String,
    },
    /// A registration and an unclaimed static entry: the registration replaces the
    /// static entry unless it is not a valid WorkloadEntry of its name.
    Both {
        /// The registration's key.
        key: String,
        /// Its value.
        text: String,
        /// The static entry's key.
        declared_key: String,
        /// Its value.
        declared: String,
    },
    /// A static entry whose value is not text: only checking the whole configuration
    /// tells.
    Unclear,
}

/// The value `text` of `key`, loaded as a source `etcd:<key>`, when it is exactly one
/// WorkloadEntry `namespace/name` that loads and checks on its own without error; else
/// the source, for a diagnostic.
fn load_one(
    key: &str,
    text: &str,
    namespace: &str,
    name: &str,
) -> Result<ConfigSet, Arc<SourceFile>> {
    let source = SourceFile::new(source_name(key), text);
    let mut one = ConfigSet::new();
    one.add_source(source.clone());
    // Checked on its own too (an address or a label Istio would refuse).
    let fits = one.resources().len() == 1
        && one.resources().iter().all(|r| {
            r.kind() == Kind::WorkloadEntry && r.namespace() == namespace && r.name() == name
        })
        && !one.diagnostics().iter().any(Diagnostic::is_error)
        && !one.check().has_errors();
    if fits { Ok(one) } else { Err(source) }
}

/// The WorkloadEntry `key` holds (see [`load_one`]).
fn load_workload(
    key: &str,
    text: &str,
    namespace: &str,
    name: &str,
) -> Result<Arc<crate::model::Resource<crate::model::WorkloadEntry>>, Arc<SourceFile>> {
    let one = load_one(key, text, namespace, name)?;
    match one.resources().first() {
        Some(crate::model::AnyResource::WorkloadEntry(we)) => Ok(we.clone()),
        _ => Err(SourceFile::new(source_name(key), text)),
    }
}

/// The warning for a registration that is not a valid WorkloadEntry of its name.
fn not_a_registration(
    key: &str,
    namespace: &str,
    name: &str,
    source: Arc<SourceFile>,
) -> Diagnostic {
    Diagnostic::new(
        Code::KeyMismatch,
        format!("the registration {key} is not a WorkloadEntry {namespace}/{name}; ignored"),
    )
    .severity(crate::diag::Severity::Warning)
    .at(Location {
        source,
        span: Span::default(),
    })
}

/// One key of the store, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value (YAML); `None` when it is not UTF-8.
    pub value: Option<String>,
    /// The revision that last changed the key.
    pub mod_revision: i64,
}

/// The configuration keys of a store under one prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct KvStore {
    prefix: String,
    revision: i64,
    /// Resource keys, by key.
    entries: BTreeMap<String, (ResourceKey, KvEntry)>,
    /// Keys under the prefix that are not the mesh's.
    foreign: BTreeSet<String>,
    /// Registered WorkloadEntries, by key: (namespace, name, value).
    registrations: BTreeMap<String, (String, String, Option<String>)>,
    /// Claimed WorkloadEntry names, by key: (namespace, name).
    claims: BTreeMap<String, (String, String)>,
    /// What each key's value loaded as when last viewed; shared by the store's copies.
    decoded: Arc<Decoded>,
}

/// What each key's value loaded as, by key: the value, and what it adds to a
/// configuration (its resource, or the diagnostic that leaves it out). A store's next
/// revision mostly holds the same values: viewing it decodes only the keys that changed,
/// and their resources — the same ones — keep what validating them found
/// ([`Origin::validated`](crate::model::Origin::validated)).
#[derive(Debug, Default)]
struct Decoded(std::sync::Mutex<HashMap<String, (String, ConfigSet)>>);

/// One view's use of [`Decoded`]: what it decoded anew. Views running at once (copies of
/// a store share the cache) each find what the others left.
struct Reuse<'a> {
    decoded: &'a Decoded,
    fresh: HashMap<String, (String, ConfigSet)>,
}

impl<'a> Reuse<'a> {
    fn new(decoded: &'a Decoded) -> Self {
        Reuse {
            decoded,
            fresh: HashMap::new(),
        }
    }

    /// What `value` of `key` adds to a configuration: as decoded before if the value is
    /// the same, else by `decode`.
    fn get(&mut self, key: &str, value: &str, decode: impl FnOnce() -> ConfigSet) -> ConfigSet {
        let cached = self
            .decoded
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|(v, _)| v == value)
            .map(|(_, one)| one.clone());
        cached.unwrap_or_else(|| {
            let one = decode();
            self.fresh
                .insert(key.to_string(), (value.to_string(), one.clone()));
            one
        })
    }

    /// Keeps what was decoded anew, and lets go of the keys `store` no longer has.
    fn put(self, store: &KvStore) {
        let mut cache = self.decoded.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.extend(self.fresh);
        cache.retain(|k, _| store.entries.contains_key(k) || store.registrations.contains_key(k));
    }
}

impl KvStore {
    /// An empty store under `prefix`, read at `revision`; add the keys read with
    /// [`KvStore::insert`].
    pub fn new(prefix: &str, revision: i64) -> Self {
        KvStore {
            prefix: normalize_prefix(prefix),
            revision,
            entries: BTreeMap::new(),
            foreign: BTreeSet::new(),
            registrations: BTreeMap::new(),
            claims: BTreeMap::new(),
            decoded: Arc::default(),
        }
    }

    /// Adds a key read from the store; registrations and writers' keys are skipped.
    pub fn insert(&mut self, key: &[u8], value: &[u8], mod_revision: i64) {
        let Ok(key) = std::str::from_utf8(key) else {
            self.foreign
                .insert(String::from_utf8_lossy(key).into_owned());
            return;
        };
        match classify(&self.prefix, key) {
            KeyRole::Resource(rk) => {
                let entry = KvEntry {
                    value: String::from_utf8(value.to_vec()).ok(),
                    mod_revision,
                };
                self.entries.insert(key.to_string(), (rk, entry));
            }
            KeyRole::Foreign => {
                self.foreign.insert(key.to_string());
            }
            KeyRole::Registration { namespace, name } => {
                let value = String::from_utf8(value.to_vec()).ok();
                self.registrations
                    .insert(key.to_string(), (namespace, name, value));
            }
            KeyRole::Claim { namespace, name } => {
                self.claims.insert(key.to_string(), (namespace, name));
            }
            KeyRole::Internal => {}
        }
    }

    /// Removes a key (a deletion seen by a watch); whether it was a resource key.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let key = String::from_utf8_lossy(key);
        self.foreign.remove(key.as_ref());
        self.registrations.remove(key.as_ref());
        self.claims.remove(key.as_ref());
        self.entries.remove(key.as_ref()).is_some()
    }

    /// Sets the revision the store is now read at (after a watch's events).
    pub fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    /// The prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The revision the keys were read at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many resource keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without resource keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key of resource `key`.
    pub fn key_of(&self, key: &ResourceKey) -> String {
        key_path(&self.prefix, key)
    }

    /// The keys under the prefix that are neither resources nor the mesh's own.
    pub fn foreign_keys(&self) -> impl Iterator<Item = &str> {
        self.foreign.iter().map(String::as_str)
    }

    /// Every key the store keeps — resources, registrations and claims — with its value
    /// (empty for a claim) and the revision that last changed it (0 for registrations and
    /// claims, which are not guarded): what a cache of the store must hold.
    pub fn all_keys(&self) -> Vec<(String, String, i64)> {
        let mut out: Vec<(String, String, i64)> = self
            .entries
            .iter()
            .filter_map(|(k, (_, e))| e.value.clone().map(|v| (k.clone(), v, e.mod_revision)))
            .collect();
        out.extend(
            self.registrations
                .iter()
                .filter_map(|(k, (_, _, v))| v.clone().map(|v| (k.clone(), v, 0))),
        );
        out.extend(self.claims.keys().map(|k| (k.clone(), String::new(), 0)));
        out
    }

    /// The store's resource keys and values, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ResourceKey, &KvEntry)> {
        self.entries.iter().map(|(k, (rk, e))| (k.as_str(), rk, e))
    }

    /// The configuration as declared: the resources, static WorkloadEntries included
    /// whether claimed or not, without registrations (what a process reads to know how
    /// to run a workload it is asked to run).
    pub fn declared_set(&self) -> ConfigSet {
        let mut set = ConfigSet::new();
        for (key, (_, entry)) in &self.entries {
            let Some(value) = &entry.value else { continue };
            set.add_source(SourceFile::new(source_name(key), value.as_str()));
        }
        set
    }

    /// The configuration the store holds with `local` registrations (key, WorkloadEntry)
    /// added where the store has none of their key yet: the process's own workloads,
    /// which it knows are up before etcd says so (or while etcd is away).
    pub fn config_set_with(&self, local: &[(String, String)]) -> ConfigSet {
        let missing: Vec<&(String, String)> = local
            .iter()
            .filter(|(k, _)| !self.registrations.contains_key(k))
            .collect();
        if missing.is_empty() {
            return self.config_set();
        }
        let mut with = self.clone();
        for (k, v) in missing {
            with.insert(k.as_bytes(), v.as_bytes(), 0);
        }
        with.config_set()
    }

    /// How many workloads are registered.
    pub fn registered(&self) -> usize {
        self.registrations.len()
    }

    /// The configuration the store holds, loaded (see [`KvStore::check`]): its resources
    /// (static WorkloadEntries of claimed names left out) and the registered
    /// WorkloadEntries.
    pub fn config_set(&self) -> ConfigSet {
        self.view(|_| true)
    }

    /// True when a static WorkloadEntry `rk` gives way to registrations.
    fn claimed(&self, rk: &ResourceKey) -> bool {
        rk.kind == Kind::WorkloadEntry
            && self
                .claims
                .contains_key(&self.workload_key(CLAIMS, &rk.namespace, &rk.name))
    }

    /// `<prefix>/<part>/<namespace>/<name>`: a registration's or a claim's key.
    fn workload_key(&self, part: &str, namespace: &str, name: &str) -> String {
        format!("{}/{part}/{namespace}/{name}", self.prefix)
    }

    /// The WorkloadEntry name (namespace, name) a change of `key` may change the
    /// entry of: a registration's, a claim's, a static WorkloadEntry's. `None` for any
    /// other key.
    pub fn workload_name(&self, key: &str) -> Option<(String, String)> {
        match classify(&self.prefix, key) {
            KeyRole::Registration { namespace, name } | KeyRole::Claim { namespace, name } => {
                Some((namespace, name))
            }
            KeyRole::Resource(rk) if rk.kind == Kind::WorkloadEntry => {
                Some((rk.namespace, rk.name))
            }
            _ => None,
        }
    }

    /// What the WorkloadEntry `name` of `namespace` is in the configuration the store
    /// holds with `local` registrations (see [`KvStore::config_set_with`]).
    pub fn effective(&self, namespace: &str, name: &str, local: &[(String, String)]) -> Effective {
        let reg_key = self.workload_key(REGISTRY, namespace, name);
        let registered = match self.registrations.get(&reg_key) {
            Some((_, _, value)) => Some(value.clone().unwrap_or_default()),
            None => local
                .iter()
                .find(|(k, _)| *k == reg_key)
                .map(|(_, v)| v.clone()),
        };
        let rk = ResourceKey {
            kind: Kind::WorkloadEntry,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let static_key = self.key_of(&rk);
        let declared = self
            .entries
            .get(&static_key)
            .filter(|_| !self.claimed(&rk))
            .map(|(_, e)| e.value.clone());
        match (registered, declared) {
            (None, None) => Effective::Absent,
            (Some(text), None) => Effective::Registered { key: reg_key, text },
            (None, Some(Some(text))) => Effective::Static {
                key: static_key,
                text,
            },
            (Some(text), Some(Some(declared))) => Effective::Both {
                key: reg_key,
                text,
                declared_key: static_key,
                declared,
            },
            (_, Some(None)) => Effective::Unclear,
        }
    }

    /// The change that makes the WorkloadEntry `name` of `namespace` what `now` says,
    /// loaded and checked as the whole configuration would load and check it: a
    /// registration replaces a static entry of its name, and one that is not a valid
    /// WorkloadEntry of its name is left out with a warning (as [`KvStore::config_set`]
    /// does). `None` when only checking the whole configuration can tell (a static entry
    /// that does not load cleanly).
    pub fn workload_change(
        &self,
        namespace: &str,
        name: &str,
        now: &Effective,
    ) -> Option<(crate::registry::WorkloadChange, Option<Diagnostic>)> {
        let change = |entry| crate::registry::WorkloadChange {
            namespace: namespace.to_string(),
            name: name.to_string(),
            entry,
        };
        match now {
            Effective::Absent => Some((change(None), None)),
            Effective::Unclear => None,
            Effective::Static { key, text } => {
                let entry = load_workload(key, text, namespace, name).ok()?;
                Some((change(Some(entry)), None))
            }
            Effective::Registered { key, text } => {
                match load_workload(key, text, namespace, name) {
                    Ok(entry) => Some((change(Some(entry)), None)),
                    Err(source) => Some((
                        change(None),
                        Some(not_a_registration(key, namespace, name, source)),
                    )),
                }
            }
            Effective::Both {
                key,
                text,
                declared_key,
                declared,
            } => {
                // The static entry is loaded (and its errors reject the whole) even when
                // the registration replaces it.
                let static_entry = load_workload(declared_key, declared, namespace, name).ok()?;
                match load_workload(key, text, namespace, name) {
                    Ok(entry) => Some((change(Some(entry)), None)),
                    Err(source) => Some((
                        change(Some(static_entry)),
                        Some(not_a_registration(key, namespace, name, source)),
                    )),
                }
            }
        }
    }

    /// Adds the registered WorkloadEntries to `set`. A registration that is not one
    /// WorkloadEntry of its key's namespace and name is left out with a warning: a
    /// workload's bad registration must not stop the configuration of every other.
    fn add_registrations(&self, set: &mut ConfigSet, reuse: &mut Reuse<'_>) {
        for (key, (ns, name, value)) in &self.registrations {
            let text = value.as_deref().unwrap_or("");
            set.apply(
                reuse.get(key, text, || match load_one(key, text, ns, name) {
                    Ok(one) => one,
                    Err(source) => {
                        let mut left_out = ConfigSet::new();
                        left_out.push_diagnostic(not_a_registration(key, ns, name, source));
                        left_out
                    }
                }),
            );
        }
    }

    /// The configuration of the keys `keep` accepts, each value loaded as a source
    /// `etcd:<key>`, with an error for each value that does not hold exactly the resource
    /// its key names.
    fn view(&self, keep: impl Fn(&ResourceKey) -> bool) -> ConfigSet {
        let mut set = ConfigSet::new();
        let mut reuse = Reuse::new(&self.decoded);
        for (key, (rk, entry)) in &self.entries {
            if !keep(rk) || self.claimed(rk) {
                continue;
            }
            let Some(value) = &entry.value else {
                let source = SourceFile::new(source_name(key), "");
                set.push_diagnostic(
                    Diagnostic::new(
                        Code::KeyMismatch,
                        format!("the value of {key} is not UTF-8 text"),
                    )
                    .at(Location {
                        source,
                        span: Span::default(),
                    })
                    .help("a configuration key holds one resource as YAML"),
                );
                continue;
            };
            set.apply(reuse.get(key, value, || self.load_key(key, rk, value)));
        }
        self.add_registrations(&mut set, &mut reuse);
        reuse.put(self);
        set
    }

    /// What `value` of `key` (which names `rk`) adds to the configuration: its resource,
    /// or an error when it does not hold exactly that resource.
    fn load_key(&self, key: &str, rk: &ResourceKey, value: &str) -> ConfigSet {
        let source = SourceFile::new(source_name(key), value);
        let mut one = ConfigSet::new();
        one.add_source(source.clone());
        let holds: Vec<ResourceKey> = one.resources().iter().map(|r| r.key()).collect();
        let fits = holds.len() == 1 && holds[0] == *rk;
        if fits || one.diagnostics().iter().any(Diagnostic::is_error) {
            return one;
        }
        let what = match holds.as_slice() {
            [] => "no resource".to_string(),
            [one] => one.to_string(),
            many => format!("{} resources", many.len()),
        };
        let location = one.resources().first().map_or(
            Location {
                source: source.clone(),
                span: Span::default(),
            },
            |r| r.origin().location(),
        );
        let mut mismatch = ConfigSet::new();
        mismatch.push_diagnostic(
            Diagnostic::new(
                Code::KeyMismatch,
                format!("{key} names {rk} but holds {what}"),
            )
            .at(location)
            .help(format!(
                "a key holds the one resource it names: <prefix>/<group>/<Kind>/<namespace>/<name> (`meshctl apply --etcd` writes {})",
                self.key_of(rk)
            )),
        );
        mismatch
    }

    /// Checks the configuration the store holds.
    pub fn check(&self) -> Checked {
        self.config_set().check()
    }

    /// The resources of kind `kind` (all when `None`) in namespace `namespace` (all when
    /// `None`) that load, sorted by namespace, name and kind; `path` is the key.
    pub fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> Vec<Listed> {
        let mut out: Vec<Listed> = self
            .config_set()
            .resources()
            .iter()
            .filter(|r| {
                kind.is_none_or(|k| k == r.kind()) && namespace.is_none_or(|n| n == r.namespace())
            })
            .map(|r| {
                // The key and text it was read from (a registration's, for a registered
                // WorkloadEntry).
                let source = &r.origin().source;
                let key = source
                    .name()
                    .strip_prefix("etcd:")
                    .map_or_else(|| self.key_of(&r.key()), str::to_string);
                let text = source.text().to_string();
                Listed {
                    resource: r.clone(),
                    path: PathBuf::from(key),
                    line: r.origin().location().span.start.line,
                    text,
                }
            })
            .collect();
        super::sort_listed(&mut out);
        out
    }

    /// Plans `kubectl apply` of every resource of `incoming` (a later one with the same
    /// key wins): each is put at its key. Nothing is written: see [`KvPlan`].
    pub fn plan_apply(&self, incoming: &[Arc<SourceFile>]) -> Result<KvPlan, StoreError> {
        let mut puts: BTreeMap<String, String> = BTreeMap::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut at: HashMap<ResourceKey, usize> = HashMap::new();
        for source in incoming {
            for doc in documents(source.text()) {
                for found in doc.resources.iter().filter(|f| f.served) {
                    let text = resource_text(source.text(), &doc, found).ok_or_else(|| {
                        StoreError::Unextractable {
                            key: found.key.clone(),
                            name: source.name().to_string(),
                            line: found.line,
                        }
                    })?;
                    let key = self.key_of(&found.key);
                    let outcome = match self.entries.get(&key) {
                        None => Outcome::Created,
                        Some((_, e)) if e.value.as_deref() == Some(text.as_str()) => {
                            Outcome::Unchanged
                        }
                        Some(_) => Outcome::Configured,
                    };
                    let change = Change {
                        key: found.key.clone(),
                        outcome,
                        path: Some(PathBuf::from(&key)),
                    };
                    match at.get(&found.key) {
                        Some(&i) => changes[i] = change,
                        None => {
                            at.insert(found.key.clone(), changes.len());
                            changes.push(change);
                        }
                    }
                    if outcome == Outcome::Unchanged {
                        puts.remove(&key);
                    } else {
                        puts.insert(key, text);
                    }
                }
            }
        }
        // The check sees the store without the applied keys, then what was applied,
        // under the names the user gave it (diagnostics point at their files).
        let mut view = self.view(|rk| !at.contains_key(rk));
        let mut applied = ConfigSet::new();
        for source in incoming {
            applied.add_source(source.clone());
        }
        view.apply(applied);
        Ok(KvPlan {
            revision: self.revision,
            prefix: self.prefix.clone(),
            changes,
            puts: puts.into_iter().collect(),
            deletes: Vec::new(),
            view,
        })
    }

    /// Plans `kubectl delete` of `keys`; a key the store does not hold is
    /// [`Outcome::NotFound`].
    pub fn plan_delete(&self, keys: &[ResourceKey]) -> KvPlan {
        let mut changes = Vec::new();
        let mut deletes = Vec::new();
        for rk in keys {
            let key = self.key_of(rk);
            if self.entries.contains_key(&key) {
                if !deletes.contains(&key) {
                    deletes.push(key.clone());
                }
                changes.push(Change {
                    key: rk.clone(),
                    outcome: Outcome::Deleted,
                    path: Some(PathBuf::from(key)),
                });
            } else {
                changes.push(Change {
                    key: rk.clone(),
                    outcome: Outcome::NotFound,
                    path: None,
                });
            }
        }
        let view = self.view(|rk| !keys.contains(rk));
        KvPlan {
            revision: self.revision,
            prefix: self.prefix.clone(),
            changes,
            puts: Vec::new(),
            deletes,
            view,
        }
    }
}

/// The writes of an apply or a delete on a [`KvStore`], computed in memory.
#[derive(Debug, Clone)]
pub struct KvPlan {
    revision: i64,
    prefix: String,
    changes: Vec<Change>,
    puts: Vec<(String, String)>,
    deletes: Vec<String>,
    view: ConfigSet,
}

impl KvPlan {
    /// The revision the store was read at: write only if nothing under the prefix changed
    /// since.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The guard key every write puts (see the module documentation).
    pub fn guard_key(&self) -> String {
        format!("{}/{GUARD}", self.prefix)
    }

    /// What happens to each resource, in the order given.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The keys to put, with their values.
    pub fn puts(&self) -> &[(String, String)] {
        &self.puts
    }

    /// The keys to delete.
    pub fn deletes(&self) -> &[String] {
        &self.deletes
    }

    /// The configuration the store would hold, loaded.
    pub fn config_set(&self) -> &ConfigSet {
        &self.view
    }

    /// Checks the configuration the store would hold.
    pub fn check(&self) -> Checked {
        self.view.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(name: &str, host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [{host}]\n  http:\n  - directResponse: {{status: 204}}\n"
        )
    }

    #[test]
    fn keys_name_their_resources() {
        let key = ResourceKey {
            kind: Kind::VirtualService,
            namespace: "default".into(),
            name: "reviews".into(),
        };
        let path = key_path("/mesh/", &key);
        assert_eq!(
            path,
            "/mesh/networking.istio.io/VirtualService/default/reviews"
        );
        assert_eq!(classify("/mesh", &path), KeyRole::Resource(key));
        let table = [
            (
                "/mesh/registry/default/reviews-v2",
                KeyRole::Registration {
                    namespace: "default".into(),
                    name: "reviews-v2".into(),
                },
            ),
            ("/mesh/meshctl/generation", KeyRole::Internal),
            (
                "/mesh/security.istio.io/VirtualService/default/x",
                KeyRole::Foreign,
            ),
            (
                "/mesh/networking.istio.io/virtualservice/default/x",
                KeyRole::Foreign,
            ),
            (
                "/mesh/networking.istio.io/VirtualService/default",
                KeyRole::Foreign,
            ),
            (
                "/meshes/networking.istio.io/VirtualService/default/x",
                KeyRole::Foreign,
            ),
            (
                "/mesh/networking.istio.io/VirtualService//x",
                KeyRole::Foreign,
            ),
        ];
        for (k, want) in table {
            assert_eq!(classify("/mesh", k), want, "{k}");
        }
    }

    /// A store's views reuse what its unchanged keys loaded as, and give what a store
    /// that never viewed the same keys gives; a changed or deleted key is read anew.
    #[test]
    fn views_decode_only_the_keys_that_changed() {
        let keys = [
            "/mesh/networking.istio.io/VirtualService/default/a",
            "/mesh/networking.istio.io/VirtualService/default/b",
            "/mesh/networking.istio.io/VirtualService/default/c",
            "/mesh/registry/default/w1",
            "/mesh/registry/default/w2",
        ];
        let values = |key: &str, v: u64| -> String {
            let name = key.rsplit('/').next().unwrap_or_default();
            if key.contains("/registry/") {
                return match v % 3 {
                    0 => format!(
                        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 10.0.0.{v}, labels: {{app: x}}}}\n"
                    ),
                    1 => format!(
                        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: other}}\nspec: {{address: 10.0.0.{v}}}\n"
                    ),
                    _ => "not: [yaml".to_string(),
                };
            }
            match v % 4 {
                0 | 1 => vs(name, &format!("h{v}")),
                2 => vs("someone-else", "x"),
                _ => format!("{}  timeout: -1s\n", vs(name, "y")),
            }
        };
        let fresh = |store: &KvStore| {
            let mut copy = KvStore::new("/mesh", store.revision);
            for (k, (_, e)) in &store.entries {
                copy.insert(
                    k.as_bytes(),
                    e.value.as_deref().unwrap_or("").as_bytes(),
                    e.mod_revision,
                );
            }
            for (k, (_, _, v)) in &store.registrations {
                copy.insert(k.as_bytes(), v.as_deref().unwrap_or("").as_bytes(), 0);
            }
            copy
        };
        let summary = |set: &ConfigSet| {
            let checked = set.check();
            (
                set.resources()
                    .iter()
                    .map(|r| (r.key().to_string(), r.origin().source.text().to_string()))
                    .collect::<Vec<_>>(),
                checked
                    .diagnostics
                    .iter()
                    .map(Diagnostic::short)
                    .collect::<Vec<_>>(),
            )
        };
        // A fixed sequence of puts and deletes (a linear congruential generator).
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut store = KvStore::new("/mesh", 1);
        let mut before = store.config_set();
        let mut reused = 0;
        for step in 0..200 {
            let key = keys[next(keys.len() as u64) as usize];
            if next(5) == 0 {
                store.remove(key.as_bytes());
            } else {
                store.insert(key.as_bytes(), values(key, next(8)).as_bytes(), step);
            }
            let set = store.config_set();
            assert_eq!(
                summary(&set),
                summary(&fresh(&store).config_set()),
                "step {step}"
            );
            // A resource whose key did not change is the one loaded before.
            for r in set.resources() {
                let was = before.get(&r.key());
                let same_text =
                    was.is_some_and(|w| w.origin().source.text() == r.origin().source.text());
                let same = was.is_some_and(|w| Arc::ptr_eq(&w.origin().trees, &r.origin().trees));
                assert_eq!(same, same_text, "step {step}: {}", r.key());
                reused += usize::from(same);
            }
            before = set;
        }
        assert!(reused > 300, "{reused}");
    }

    #[test]
    fn a_value_must_hold_the_resource_its_key_names() {
        let mut store = KvStore::new("/mesh", 7);
        store.insert(
            b"/mesh/networking.istio.io/VirtualService/default/reviews",
            vs("ratings", "ratings").as_bytes(),
            5,
        );
        store.insert(
            b"/mesh/networking.istio.io/VirtualService/default/details",
            vs("details", "details").as_bytes(),
            6,
        );
        store.insert(b"/mesh/elsewhere", b"x", 6);
        let set = store.config_set();
        assert_eq!(set.resources().len(), 1);
        let errors: Vec<_> = set.diagnostics().iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, Code::KeyMismatch);
        assert_eq!(
            errors[0].message,
            "/mesh/networking.istio.io/VirtualService/default/reviews names VirtualService default/reviews but holds VirtualService default/ratings"
        );
        assert_eq!(
            errors[0].location.as_ref().unwrap().source.name(),
            "etcd:/mesh/networking.istio.io/VirtualService/default/reviews"
        );
        assert_eq!(
            store.foreign_keys().collect::<Vec<_>>(),
            ["/mesh/elsewhere"]
        );
    }

    #[test]
    fn apply_and_delete_plan_puts_and_deletes_checked_whole() {
        let mut store = KvStore::new("/mesh", 9);
        store.insert(
            b"/mesh/networking.istio.io/VirtualService/default/details",
            vs("details", "details").as_bytes(),
            3,
        );
        let incoming = SourceFile::new(
            "new.yaml",
            format!(
                "{}---\n{}",
                vs("details", "details"),
                vs("reviews", "reviews")
            ),
        );
        let plan = store.plan_apply(&[incoming]).unwrap();
        assert_eq!(plan.revision(), 9);
        let outcomes: Vec<_> = plan.changes().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            outcomes,
            [
                "virtualservice.networking.istio.io/details unchanged",
                "virtualservice.networking.istio.io/reviews created"
            ]
        );
        assert_eq!(plan.puts().len(), 1);
        assert_eq!(
            plan.puts()[0].0,
            "/mesh/networking.istio.io/VirtualService/default/reviews"
        );
        assert_eq!(plan.puts()[0].1, vs("reviews", "reviews"));
        let checked = plan.check();
        assert!(
            !checked.has_errors(),
            "{:?}",
            checked
                .diagnostics
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
        );
        assert_eq!(plan.config_set().resources().len(), 2);
        assert_eq!(plan.guard_key(), "/mesh/meshctl/generation");

        // An invalid resource: the check names the user's file and line.
        let bad = SourceFile::new(
            "bad.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [x]\n  http:\n  - route:\n    - destination: {host: x}\n      weight: -1\n",
        );
        let checked = store.plan_apply(&[bad]).unwrap().check();
        let e = checked.diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert_eq!(e.location.as_ref().unwrap().source.name(), "bad.yaml");

        let details = ResourceKey {
            kind: Kind::VirtualService,
            namespace: "default".into(),
            name: "details".into(),
        };
        let missing = ResourceKey {
            name: "nope".into(),
            ..details.clone()
        };
        let plan = store.plan_delete(&[details, missing]);
        assert_eq!(
            plan.deletes(),
            ["/mesh/networking.istio.io/VirtualService/default/details"]
        );
        assert_eq!(plan.changes()[1].outcome, Outcome::NotFound);
        assert!(plan.config_set().resources().is_empty());
    }
}
