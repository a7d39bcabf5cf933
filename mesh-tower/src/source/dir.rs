//! A directory of Istio YAML, watched: every change to a YAML file (or a file or
//! directory appearing, going away or renamed, as a Kubernetes ConfigMap's symlink swap
//! does) reloads the whole directory once the burst of events of one save settles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_config::ConfigSet;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{ConfigSource, Delivery, SourceError};

/// How long to wait for a burst of file events to settle before reloading.
const SETTLE: Duration = Duration::from_millis(100);

/// A watched configuration directory (see the module documentation).
pub struct DirSource {
    dir: PathBuf,
    watch: bool,
    events: Option<mpsc::UnboundedReceiver<()>>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for DirSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSource")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DirSource {
    /// The directory `dir`, watched from the first [`ConfigSource::load`] on.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            dir: dir.into(),
            watch: true,
            events: None,
            watcher: None,
        }
    }

    /// The directory, read once: [`ConfigSource::next`] never returns.
    pub fn unwatched(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            watch: false,
            ..DirSource::new(dir)
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn start_watching(&mut self) -> Result<(), SourceError> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let event = match res {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "configuration watcher error; reloading");
                    let _ = tx.send(());
                    return;
                }
            };
            if event.kind.is_access() {
                return;
            }
            // A YAML file changed; or a file or directory appeared, went away or was
            // renamed; or the watcher lost track (no paths, rescan).
            let structural = matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Remove(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let yaml = event
                .paths
                .iter()
                .any(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
            if structural || yaml || event.paths.is_empty() || event.need_rescan() {
                let _ = tx.send(());
            }
        })
        .map_err(|e| self.watch_error(e))?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|e| self.watch_error(e))?;
        self.events = Some(events);
        self.watcher = Some(watcher);
        Ok(())
    }

    fn watch_error(&self, e: notify::Error) -> SourceError {
        SourceError::Watch {
            dir: self.dir.display().to_string(),
            reason: e.to_string(),
        }
    }

    async fn read(&self) -> Result<ConfigSet, SourceError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || ConfigSet::load(&[&dir]))
            .await
            .map_err(|e| SourceError::Watch {
                dir: self.dir.display().to_string(),
                reason: format!("reading failed: {e}"),
            })?
            .map_err(SourceError::from)
    }
}

impl ConfigSource for DirSource {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn load(&mut self) -> Result<ConfigSet, SourceError> {
        // A directory that cannot be read says why as the loader says it, before the
        // watcher would (with a less helpful message).
        if !self.dir.is_dir() {
            return self.read().await;
        }
        // Watching starts before the first read: a change made while it is read is seen
        // (at worst, read twice).
        if self.watch && self.watcher.is_none() {
            self.start_watching()?;
        }
        self.read().await
    }

    async fn next(&mut self) -> Result<Delivery, SourceError> {
        let Some(events) = self.events.as_mut() else {
            return std::future::pending().await;
        };
        if events.recv().await.is_none() {
            return std::future::pending().await;
        }
        // Let the burst of events of one save settle, then reload once.
        tokio::time::sleep(SETTLE).await;
        while events.try_recv().is_ok() {}
        self.read().await.map(Delivery::Config)
    }
}
