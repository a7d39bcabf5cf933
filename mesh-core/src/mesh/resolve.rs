//! Kubernetes DNS search for the authority of a request, precomputed over the hosts the
//! mesh knows: `reviews` from a pod in `default` is `reviews.default.svc.cluster.local`
//! (`ndots: 5`, search path `<ns>.svc.cluster.local svc.cluster.local cluster.local`).
//! Known names resolve without allocating.

use foldhash::HashMap;
use std::sync::Arc;

use mesh_config::host::SERVICE_DOMAIN;

/// A namespace and the host `name.namespace.svc.cluster.local` in it.
type NamespacedHost = (Box<str>, Arc<str>);

/// Kubernetes DNS search, precomputed over the hosts the mesh knows.
#[derive(Debug, Default)]
pub(super) struct Resolver {
    /// Every known host.
    known: HashMap<Box<str>, Arc<str>>,
    /// `name` → (namespace, host) for hosts `name.namespace.svc.cluster.local`.
    in_namespace: HashMap<Box<str>, Vec<NamespacedHost>>,
    /// `name` → host for hosts `name.svc.cluster.local`.
    in_svc: HashMap<Box<str>, Arc<str>>,
    /// `name` → host for hosts `name.cluster.local`.
    in_cluster: HashMap<Box<str>, Arc<str>>,
    /// Some services have wildcard hosts: candidates must also be tried against them.
    wildcards: bool,
}

impl Resolver {
    pub(super) fn new(known: &[String], wildcards: bool) -> Self {
        let mut r = Resolver {
            wildcards,
            ..Resolver::default()
        };
        for h in known {
            let arc: Arc<str> = h.as_str().into();
            r.known.insert(h.as_str().into(), arc.clone());
            if let Some(rest) = h.strip_suffix(&format!(".{SERVICE_DOMAIN}")) {
                r.in_svc.entry(rest.into()).or_insert_with(|| arc.clone());
                if let Some((name, ns)) = rest.rsplit_once('.') {
                    r.in_namespace
                        .entry(name.into())
                        .or_default()
                        .push((ns.into(), arc.clone()));
                }
            }
            if let Some(rest) = h.strip_suffix(".cluster.local") {
                r.in_cluster
                    .entry(rest.into())
                    .or_insert_with(|| arc.clone());
            }
        }
        r
    }

    pub(super) fn resolve(
        &self,
        name: &str,
        namespace: &str,
        wildcard_known: impl Fn(&str) -> bool,
    ) -> Arc<str> {
        let lowered;
        let mut name = name.trim_end_matches('.');
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            name = &lowered;
        }
        if name.bytes().filter(|b| *b == b'.').count() < 5 {
            if let Some(h) = self
                .in_namespace
                .get(name)
                .and_then(|v| v.iter().find(|(ns, _)| &**ns == namespace))
            {
                return h.1.clone();
            }
            let known = |c: &str| wildcard_known(c).then(|| Arc::from(c));
            if self.wildcards
                && let Some(h) = joined(&[name, ".", namespace, ".", SERVICE_DOMAIN], known)
            {
                return h;
            }
            if let Some(h) = self.in_svc.get(name) {
                return h.clone();
            }
            if let Some(h) = self.in_cluster.get(name) {
                return h.clone();
            }
            if self.wildcards {
                for suffix in [SERVICE_DOMAIN, "cluster.local"] {
                    if let Some(h) = joined(&[name, ".", suffix], known) {
                        return h;
                    }
                }
            }
        }
        match self.known.get(name) {
            Some(h) => h.clone(),
            None => name.into(),
        }
    }
}

/// Calls `f` with `parts` joined, in a stack buffer (a heap one only for names longer
/// than any DNS name).
pub(super) fn joined<R>(parts: &[&str], f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 256];
    let mut n = 0;
    for p in parts {
        match buf.get_mut(n..n + p.len()) {
            Some(dst) => dst.copy_from_slice(p.as_bytes()),
            None => return f(&parts.concat()),
        }
        n += p.len();
    }
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) => f(s),
        Err(_) => f(&parts.concat()),
    }
}
