//! Where a process's configuration comes from: a watched directory ([`DirSource`]) or a
//! prefix in etcd ([`EtcdSource`]), behind one trait.
//!
//! A source delivers whole configurations ([`ConfigSet`]s, loaded but not checked): the
//! first with [`ConfigSource::load`], then one per change with [`ConfigSource::next`].
//! Whoever drives it checks each one and swaps it in, or rejects it and keeps the last
//! good one (Envoy's NACK), then tells the source with [`ConfigSource::accepted`] — the
//! etcd source caches what was accepted on disk, to start from when etcd is down.
//! [`drive`] is that loop for a [`MeshRuntime`](crate::MeshRuntime).
//!
//! Workloads registering and going away change nothing but WorkloadEntries: a source
//! that can tell delivers such a change as [`Delivery::Workloads`] — only the entries
//! that changed, each checked on its own — relative to the configuration it delivered
//! last and was told is accepted. It is applied to the configuration in force without
//! checking and compiling the whole again
//! ([`MeshRuntime::update_workloads`](crate::MeshRuntime::update_workloads)): at 100 000
//! endpoints, milliseconds instead of seconds.
//!
//! Sources deal with their own failures: a directory that cannot be read is an update
//! rejected with its error; etcd going away is retried with backoff while the mesh keeps
//! serving on the configuration in force. Nothing on the request path waits on a source.

mod dir;
mod etcd;

pub use dir::DirSource;
pub use etcd::EtcdSource;

use std::future::Future;

use mesh_config::diag::Diagnostic;
use mesh_config::{ConfigSet, Snapshot};

/// Why a source could not deliver a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory could not be read.
    #[error(transparent)]
    Load(#[from] mesh_config::LoadError),
    /// The directory could not be watched.
    #[error("cannot watch {dir}: {reason}")]
    Watch {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// etcd could not be read, and there is no cached configuration to start from.
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
}

/// What a source delivers for one change (see the module documentation).
#[derive(Debug)]
pub enum Delivery {
    /// The whole configuration after the change, loaded but not checked.
    Config(ConfigSet),
    /// Only WorkloadEntries changed since the configuration delivered last, which was
    /// accepted: the entries that changed, each checked on its own.
    Workloads(WorkloadChanges),
}

/// WorkloadEntries that changed (see [`Delivery::Workloads`]).
#[derive(Debug, Default)]
pub struct WorkloadChanges {
    /// The entries that appeared, changed or went away.
    pub changes: Vec<mesh_config::registry::WorkloadChange>,
    /// Warnings: registrations left out because they are not valid WorkloadEntries of
    /// their names.
    pub diagnostics: Vec<Diagnostic>,
}

/// A source of whole configurations (see the module documentation).
pub trait ConfigSource: Send {
    /// What the source is, for messages: `directory examples/bookinfo/config`,
    /// `etcd at http://127.0.0.1:2379 under /mesh`.
    fn describe(&self) -> String;

    /// The configuration as it is now. The etcd source waits (retrying with backoff)
    /// until etcd answers, unless it has a cached configuration to start from.
    fn load(&mut self) -> impl Future<Output = Result<ConfigSet, SourceError>> + Send;

    /// Waits for the next change and returns the whole configuration after it, or only
    /// the WorkloadEntries that changed. An error is an update that could not be read
    /// (reject it; the source goes on).
    fn next(&mut self) -> impl Future<Output = Result<Delivery, SourceError>> + Send;

    /// The configuration last delivered was checked and is in force.
    fn accepted(&mut self) {}
}

/// What became of one configuration a source delivered.
#[derive(Debug, Clone)]
pub enum Offered {
    /// It is in force.
    Applied(Snapshot),
    /// It was rejected: its diagnostics (errors and warnings), or the error reading it.
    Rejected {
        /// The diagnostics.
        diagnostics: Vec<Diagnostic>,
        /// The error reading the source, when that was the problem.
        error: Option<String>,
    },
}

/// Checks what a source delivered and swaps it into `runtime` when it has no error;
/// changed WorkloadEntries are applied to the configuration in force.
pub fn offer(runtime: &crate::MeshRuntime, delivered: Result<Delivery, SourceError>) -> Offered {
    match delivered {
        Err(e) => Offered::Rejected {
            diagnostics: Vec::new(),
            error: Some(e.to_string()),
        },
        Ok(Delivery::Workloads(w)) => {
            for d in &w.diagnostics {
                tracing::warn!("{}", d.short());
            }
            if w.changes.is_empty() {
                // Only warnings: the configuration in force stays.
                return Offered::Applied(runtime.snapshot());
            }
            match runtime.update_workloads(&w.changes) {
                Ok(snapshot) => Offered::Applied(snapshot),
                // Not accepted: the source delivers the whole configuration next, whose
                // check reports the problem as it does.
                Err(e) => Offered::Rejected {
                    diagnostics: w.diagnostics,
                    error: Some(e),
                },
            }
        }
        Ok(Delivery::Config(set)) => {
            // What the configuration in force computed from the very same resources is
            // reused (the etcd source keeps the resources of unchanged keys).
            let checked = set.check_after(&runtime.snapshot());
            match checked.snapshot {
                Some(snapshot) => {
                    runtime.update(&snapshot);
                    Offered::Applied(snapshot)
                }
                None => Offered::Rejected {
                    diagnostics: checked.diagnostics,
                    error: None,
                },
            }
        }
    }
}

/// Applies every change of `source` to `runtime` until `stop` completes, calling
/// `observe` with each outcome (to log it, or show it on an admin page).
pub async fn drive<S: ConfigSource>(
    mut source: S,
    runtime: crate::MeshRuntime,
    stop: impl Future<Output = ()>,
    mut observe: impl FnMut(&Offered) + Send,
) {
    tokio::pin!(stop);
    loop {
        let delivered = tokio::select! {
            d = source.next() => d,
            _ = &mut stop => return,
        };
        // Checking and compiling a large configuration takes a while: off the runtime's
        // worker threads, so requests keep being served meanwhile.
        let rt = runtime.clone();
        let offered = tokio::task::spawn_blocking(move || offer(&rt, delivered))
            .await
            .unwrap_or_else(|e| Offered::Rejected {
                diagnostics: Vec::new(),
                error: Some(format!("the configuration check failed: {e}")),
            });
        if matches!(offered, Offered::Applied(_)) {
            source.accepted();
        }
        observe(&offered);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// A whole configuration offered again with the very same ServiceEntries and
    /// WorkloadEntries reuses the registry in force (`ConfigSet::check_after`); a new
    /// load of the same text builds it anew, to the same services.
    #[test]
    fn an_offered_configuration_reuses_the_registry_of_the_same_entries() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bookinfo/config");
        let set = mesh_config::ConfigSet::load(&[dir]).unwrap();
        let runtime = crate::MeshRuntime::from_snapshot(&set.check().snapshot.unwrap());
        let first = runtime.snapshot().registry().services()[0].clone();
        let Offered::Applied(again) = offer(&runtime, Ok(Delivery::Config(set.clone()))) else {
            panic!("rejected");
        };
        assert!(std::sync::Arc::ptr_eq(
            &again.registry().services()[0],
            &first
        ));
        let reloaded = mesh_config::ConfigSet::load(&[dir]).unwrap();
        let Offered::Applied(fresh) = offer(&runtime, Ok(Delivery::Config(reloaded))) else {
            panic!("rejected");
        };
        assert!(!std::sync::Arc::ptr_eq(
            &fresh.registry().services()[0],
            &first
        ));
        assert_eq!(fresh.registry(), again.registry());
    }
}
