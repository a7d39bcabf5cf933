//! Writing a plan as atomically as the filesystem allows: nothing when a file changed
//! since it was read; every new text staged in a hidden temporary file next to its
//! target (which the loader skips) and synced before any is renamed over its file, so a
//! process watching the directory never reads half a file; and the files already
//! changed put back when a rename or a removal fails midway.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Plan, StoreError};

impl Plan {
    /// Writes the plan, as atomically as the filesystem allows.
    ///
    /// First every file is compared with what the plan read: if one changed meanwhile,
    /// nothing is written ([`StoreError::Conflict`]). Then the new text of every file is
    /// written to a temporary file next to it (hidden, which the loader skips) and synced;
    /// if one of those fails, the temporary files go and the directory is untouched. Only
    /// then is each temporary file renamed over its file (a symbolic link is followed: its
    /// target is replaced), so that a process watching the directory never reads half a
    /// file, and the files left empty are removed. Should a rename or a removal fail
    /// midway, the files already changed are put back as the plan read them (best effort:
    /// [`StoreError::Unrestored`] names those that could not be) and the error is
    /// returned.
    ///
    /// The plan does not check the configuration: call [`Plan::check`] first.
    pub fn write(&self) -> Result<(), StoreError> {
        self.check_unchanged()?;
        let steps = self.stage()?;
        self.commit(&steps, Step::run)
    }

    /// Fails with [`StoreError::Conflict`] when a file is no longer as the plan read it.
    fn check_unchanged(&self) -> Result<(), StoreError> {
        for f in &self.files {
            let now = match std::fs::read(&f.path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(StoreError::Write {
                        path: f.path.clone(),
                        source,
                    });
                }
            };
            if now.as_deref() != f.before.as_deref().map(str::as_bytes) {
                return Err(StoreError::Conflict {
                    path: f.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Writes every new text to its temporary file, synced: the steps of the write, the
    /// renames first, then the removals. On failure, the temporary files written go.
    fn stage(&self) -> Result<Vec<Step>, StoreError> {
        let mut steps = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let Some(after) = &f.after else {
                continue;
            };
            match stage_file(&f.path, after) {
                Ok(staged) => steps.push(Step {
                    file: i,
                    path: f.path.clone(),
                    staged: Some(staged),
                }),
                Err(source) => {
                    discard(&steps);
                    return Err(StoreError::Write {
                        path: f.path.clone(),
                        source,
                    });
                }
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.after.is_none() {
                steps.push(Step {
                    file: i,
                    path: f.path.clone(),
                    staged: None,
                });
            }
        }
        Ok(steps)
    }

    /// Runs the steps in order with `run`. When one fails, the temporary files not renamed
    /// yet go, and the files the steps before it changed are restored.
    fn commit(
        &self,
        steps: &[Step],
        mut run: impl FnMut(&Step) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        for (i, step) in steps.iter().enumerate() {
            if let Err(source) = run(step) {
                discard(steps.get(i..).unwrap_or_default());
                let unrestored = self.restore(steps.get(..i).unwrap_or_default());
                sync_dirs(steps);
                let path = step.path.clone();
                return Err(if unrestored.is_empty() {
                    StoreError::Write { path, source }
                } else {
                    StoreError::Unrestored {
                        path,
                        source,
                        unrestored,
                    }
                });
            }
        }
        sync_dirs(steps);
        Ok(())
    }

    /// Puts the files the steps `done` changed back as the plan read them, the last
    /// first (best effort); returns those that could not be.
    fn restore(&self, done: &[Step]) -> Vec<PathBuf> {
        let mut failed = Vec::new();
        for step in done.iter().rev() {
            let Some(file) = self.files.get(step.file) else {
                continue;
            };
            let target = step.staged.as_ref().map_or(&step.path, |s| &s.target);
            let restored = match &file.before {
                Some(before) => write_atomic(target, before),
                None => std::fs::remove_file(target),
            };
            if restored.is_err() {
                failed.push(step.path.clone());
            }
        }
        failed.reverse();
        failed
    }
}

/// One step of [`Plan::write`]: a staged file renamed over its target, or a file removed.
struct Step {
    /// The index of the file in the plan's files.
    file: usize,
    /// The file.
    path: PathBuf,
    /// The temporary file that replaces it; `None`: the file is removed.
    staged: Option<Staged>,
}

impl Step {
    fn run(&self) -> std::io::Result<()> {
        match &self.staged {
            Some(s) => std::fs::rename(&s.tmp, &s.target),
            None => std::fs::remove_file(&self.path),
        }
    }
}

/// A new text written to a temporary file next to its target, synced.
struct Staged {
    tmp: PathBuf,
    /// The file replaced: the path, or the target of its symbolic link.
    target: PathBuf,
}

/// Removes the temporary files of `steps` (best effort).
fn discard(steps: &[Step]) {
    for s in steps.iter().filter_map(|s| s.staged.as_ref()) {
        let _ = std::fs::remove_file(&s.tmp);
    }
}

/// The directory of a file (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes the renames and removals in the directories of `steps` durable (best effort:
/// not every platform opens directories).
fn sync_dirs(steps: &[Step]) {
    let dirs: HashSet<&Path> = steps
        .iter()
        .map(|s| dir_of(s.staged.as_ref().map_or(&s.path, |s| &s.target)))
        .collect();
    for dir in dirs {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `text` to a hidden temporary file in the directory of `path` (which the loader
/// skips), with the permissions of `path`, synced. A symbolic link is followed: the
/// target is its target.
fn stage_file(path: &Path, text: &str) -> std::io::Result<Staged> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir_of(&target).join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(&target) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Staged { tmp, target })
}

/// Writes `text` to `path` atomically: staged (see [`stage_file`]), then renamed over it.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let staged = stage_file(path, text)?;
    if let Err(e) = std::fs::rename(&staged.tmp, &staged.target) {
        let _ = std::fs::remove_file(&staged.tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir_of(&staged.target)) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, ResourceKey};
    use crate::source::SourceFile;
    use crate::store::{ConfigDir, DEFAULT_NAMESPACE};

    const GW: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: NAME}\nspec: {selector: {app: APP}}\n";

    fn gw(name: &str, app: &str) -> String {
        GW.replace("NAME", name).replace("APP", app)
    }

    fn snapshot(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Runs the plan's steps, failing the `n`th (0-based) with an I/O error.
    fn write_failing_at(plan: &Plan, n: usize) -> Result<(), StoreError> {
        plan.check_unchanged()?;
        let steps = plan.stage()?;
        let mut i = 0;
        plan.commit(&steps, |step| {
            i += 1;
            if i - 1 == n {
                Err(std::io::Error::other("injected"))
            } else {
                step.run()
            }
        })
    }

    #[test]
    fn a_rename_failing_midway_restores_the_files_already_renamed() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Write {
            path: PathBuf::new(),
            source,
        })?;
        let root = dir.path();
        for (file, text) in [
            ("a.yaml", format!("# a\n{}", gw("a", "1"))),
            ("b.yaml", gw("b", "1")),
            ("c.yaml", gw("c", "1")),
        ] {
            std::fs::write(root.join(file), text).map_err(|source| StoreError::Write {
                path: root.join(file),
                source,
            })?;
        }
        let before = snapshot(root);
        let incoming = SourceFile::new(
            "in.yaml",
            format!(
                "{}---\n{}---\n{}",
                gw("a", "2"),
                gw("b", "2"),
                gw("new", "2")
            ),
        );
        let dir_read = ConfigDir::open(root)?;
        // Three renames (a, b, the new file) and a removal (c): each step in turn fails.
        let mut plan = dir_read.plan_apply(&[incoming])?;
        let removal = dir_read.plan_delete(&[ResourceKey {
            kind: Kind::Gateway,
            namespace: DEFAULT_NAMESPACE.into(),
            name: "c".into(),
        }])?;
        plan.files.extend(removal.files);
        assert_eq!(plan.files.len(), 4);
        for n in 0..4 {
            let err = write_failing_at(&plan, n);
            assert!(
                matches!(&err, Err(StoreError::Write { source, .. }) if source.to_string() == "injected"),
                "{err:?}"
            );
            assert_eq!(snapshot(root), before, "step {n}");
        }
        // Without a failure, everything is written.
        plan.write()?;
        let after = snapshot(root);
        let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a.yaml", "b.yaml", "gateway-default-new.yaml"],
            "{after:?}"
        );
        assert_eq!(
            after.first().map(|(_, t)| t.as_str()),
            Some(format!("# a\n{}", gw("a", "2")).as_str())
        );
        Ok(())
    }
}
