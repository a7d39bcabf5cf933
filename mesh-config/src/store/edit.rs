//! Planning `kubectl apply` and `kubectl delete` in memory: each applied resource
//! replaces the document that holds its key (in place: every other byte of the file
//! stays) or gets a new file `<kind>-<namespace>-<name>.yaml`; a deleted resource takes
//! its documents with it, and its file when nothing else is left. The plan also keeps the
//! configuration as the check must see it: the replaced and removed documents blanked,
//! lines kept, so that diagnostics point at the right lines.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dir::{BOM, DirFile};
use super::locate::line_ranges;
use super::text::{keep_comments, normalize, resource_text};
use super::{Change, ConfigDir, Document, FileChange, Found, Outcome, Plan, StoreError, documents};
use crate::model::ResourceKey;
use crate::source::SourceFile;

impl ConfigDir {
    /// Plans `kubectl apply` of every resource in `incoming` (in order; a later one with
    /// the same key wins): each replaces the document that holds its key, or goes to a new
    /// file `<kind>-<namespace>-<name>.yaml` in the directory. Nothing is checked or
    /// written yet: see [`Plan::check`] and [`Plan::write`].
    ///
    /// Documents of `incoming` that hold no resource the mesh reads (another kind, one of
    /// its kinds under an `apiVersion` it does not serve, no name, not YAML) are left out;
    /// [`Plan::check`] reports them. Resources are matched by API group as well as kind,
    /// namespace and name (see [`Found`]): a Gateway API `Gateway` never replaces the
    /// Istio `Gateway` of the same name.
    ///
    /// A replaced document keeps its leading comment block when the incoming text has
    /// none (someone who edits the directory by hand expects their comments to stay);
    /// an incoming text with comments of its own replaces them.
    pub fn plan_apply(&self, incoming: &[Arc<SourceFile>]) -> Result<Plan, StoreError> {
        let mut edit = Edit::new(self);
        let mut changes = Vec::new();
        let split: Vec<Vec<Document>> = incoming.iter().map(|s| documents(s.text())).collect();
        // Where each key is applied last: earlier documents with that key are superseded.
        let mut last: HashMap<&ResourceKey, (usize, usize)> = HashMap::new();
        for (si, (source, docs)) in incoming.iter().zip(&split).enumerate() {
            for (di, doc) in docs.iter().enumerate() {
                // A document under an apiVersion the mesh does not serve is not applied:
                // the check reports it (and refuses the plan).
                for found in doc.resources.iter().filter(|f| f.served) {
                    let text = resource_text(source.text(), doc, found).ok_or_else(|| {
                        StoreError::Unextractable {
                            key: found.key.clone(),
                            name: source.name().to_string(),
                            line: found.line,
                        }
                    })?;
                    changes.push(edit.apply(&found.key, &text)?);
                    last.insert(&found.key, (si, di));
                }
            }
        }
        // The check sees each applied resource once, where it was applied last.
        let sources = incoming
            .iter()
            .zip(&split)
            .enumerate()
            .map(|(si, (source, docs))| {
                let superseded: Vec<&Document> = docs
                    .iter()
                    .enumerate()
                    .filter(|(di, d)| {
                        d.resources.len() == 1
                            && d.resources.iter().all(|f| {
                                f.served
                                    && f.list_item.is_none()
                                    && last.get(&f.key) != Some(&(si, *di))
                            })
                    })
                    .map(|(_, d)| d)
                    .collect();
                if superseded.is_empty() {
                    source.clone()
                } else {
                    SourceFile::new(source.name(), blank_documents(source.text(), &superseded))
                }
            })
            .collect();
        Ok(edit.finish(changes, sources))
    }

    /// Plans `kubectl delete` of the resources `keys`: every document that holds one
    /// goes, and a file left without documents is removed. A key the directory does not
    /// hold is [`Outcome::NotFound`].
    pub fn plan_delete(&self, keys: &[ResourceKey]) -> Result<Plan, StoreError> {
        let mut edit = Edit::new(self);
        let mut changes = Vec::new();
        for key in keys {
            changes.push(edit.delete(key)?);
        }
        Ok(edit.finish(changes, Vec::new()))
    }
}

/// The state of the directory while a plan is computed.
struct Edit<'a> {
    dir: &'a ConfigDir,
    /// Current state of every file touched or created; `None` text: removed.
    files: Vec<EditFile>,
    /// Original documents (file index in `dir.files`, document index) the check must not
    /// see.
    blanked: HashSet<(usize, usize)>,
}

struct EditFile {
    path: PathBuf,
    /// Index in `dir.files`, `None` for a new file.
    original: Option<usize>,
    bom: bool,
    crlf: bool,
    text: Option<String>,
    docs: Vec<Document>,
}

impl<'a> Edit<'a> {
    fn new(dir: &'a ConfigDir) -> Self {
        let files = dir
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| EditFile {
                path: f.path.clone(),
                original: Some(i),
                bom: f.bom,
                crlf: f.text.contains("\r\n"),
                text: Some(f.text.clone()),
                docs: f.docs.clone(),
            })
            .collect();
        Edit {
            dir,
            files,
            blanked: HashSet::new(),
        }
    }

    /// Every place `key` is found now: (file, document, resource).
    fn locate(&self, key: &ResourceKey) -> Vec<(usize, usize, &Found)> {
        let mut out = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            for (di, d) in f.docs.iter().enumerate() {
                for r in &d.resources {
                    if &r.key == key {
                        out.push((fi, di, r));
                    }
                }
            }
        }
        out
    }

    /// Blanks the original documents that hold `key` (the first only, unless `all`).
    fn blank(&mut self, key: &ResourceKey, all: bool) {
        for (fi, f) in self.dir.files.iter().enumerate() {
            for (di, d) in f.docs.iter().enumerate() {
                if d.resources.iter().any(|r| &r.key == key) {
                    self.blanked.insert((fi, di));
                    if !all {
                        return;
                    }
                }
            }
        }
    }

    fn list_item_error(&self, fi: usize, found: &Found) -> StoreError {
        StoreError::ListItem {
            key: found.key.clone(),
            path: self
                .files
                .get(fi)
                .map(|f| f.path.clone())
                .unwrap_or_default(),
            line: found.line,
        }
    }

    fn apply(&mut self, key: &ResourceKey, text: &str) -> Result<Change, StoreError> {
        let first = self
            .locate(key)
            .first()
            .map(|(fi, di, r)| (*fi, *di, (*r).clone()));
        if let Some((fi, _, found)) = &first
            && found.list_item.is_some()
        {
            return Err(self.list_item_error(*fi, found));
        }
        let replaced = first.and_then(|(fi, di, _)| {
            let file = self.files.get(fi)?;
            let current = file.text.as_ref()?;
            let doc = file.docs.get(di)?;
            let existing = doc.content_text(current);
            let text = keep_comments(existing, text);
            if normalize(existing) == text {
                return Some((fi, None));
            }
            let nl = if file.crlf { "\r\n" } else { "\n" };
            let new = if file.crlf {
                text.replace('\n', "\r\n")
            } else {
                text
            };
            // Content on the `---` line itself: the new text goes below a bare `---`.
            let (head_end, head_extra) = match (&doc.start_marker, doc.inline) {
                (Some(m), true) => (m.start, format!("---{nl}")),
                _ => (doc.content.start, String::new()),
            };
            Some((
                fi,
                Some(format!(
                    "{}{head_extra}{new}{}",
                    current.get(..head_end)?,
                    current.get(doc.content.end..)?
                )),
            ))
        });
        let Some((fi, replaced)) = replaced else {
            let path = self.new_path(key);
            let docs = documents(text);
            self.files.push(EditFile {
                path: path.clone(),
                original: None,
                bom: false,
                crlf: false,
                text: Some(text.to_string()),
                docs,
            });
            return Ok(Change {
                key: key.clone(),
                outcome: Outcome::Created,
                path: Some(path),
            });
        };
        self.blank(key, false);
        let mut outcome = Outcome::Unchanged;
        let mut path = None;
        if let Some(file) = self.files.get_mut(fi) {
            path = Some(file.path.clone());
            if let Some(replaced) = replaced {
                file.docs = documents(&replaced);
                file.text = Some(replaced);
                outcome = Outcome::Configured;
            }
        }
        Ok(Change {
            key: key.clone(),
            outcome,
            path,
        })
    }

    fn delete(&mut self, key: &ResourceKey) -> Result<Change, StoreError> {
        let places: Vec<(usize, usize, Found)> = self
            .locate(key)
            .into_iter()
            .map(|(fi, di, r)| (fi, di, r.clone()))
            .collect();
        if let Some((fi, _, found)) = places.iter().find(|(_, _, r)| r.list_item.is_some()) {
            return Err(self.list_item_error(*fi, found));
        }
        let Some((first_file, _, _)) = places.first() else {
            return Ok(Change {
                key: key.clone(),
                outcome: Outcome::NotFound,
                path: None,
            });
        };
        let path = self.files.get(*first_file).map(|f| f.path.clone());
        self.blank(key, true);
        // Remove from the last document to the first, so that ranges stay valid.
        for (fi, di, _) in places.iter().rev() {
            let Some(file) = self.files.get_mut(*fi) else {
                continue;
            };
            let (Some(current), Some(doc)) = (file.text.as_ref(), file.docs.get(*di)) else {
                continue;
            };
            let removed = format!(
                "{}{}",
                current.get(..doc.range.start).unwrap_or(""),
                current.get(doc.range.end..).unwrap_or("")
            );
            file.text = Some(removed);
        }
        let touched: HashSet<usize> = places.iter().map(|(fi, _, _)| *fi).collect();
        for fi in touched {
            if let Some(file) = self.files.get_mut(fi) {
                let docs = file.text.as_deref().map(documents).unwrap_or_default();
                if docs.iter().any(|d| d.has_content) {
                    file.docs = docs;
                } else {
                    file.text = None;
                    file.docs = Vec::new();
                }
            }
        }
        Ok(Change {
            key: key.clone(),
            outcome: Outcome::Deleted,
            path,
        })
    }

    /// `<kind>-<namespace>-<name>.yaml` in the directory, or with `-2`, `-3`, ... when
    /// that file exists.
    fn new_path(&self, key: &ResourceKey) -> PathBuf {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        let stem = format!(
            "{}-{}-{}",
            key.kind.as_str().to_ascii_lowercase(),
            clean(&key.namespace),
            clean(&key.name)
        );
        let taken = |p: &Path| {
            // A removed file's name is not reused: its removal is written last.
            self.files.iter().any(|f| f.path == p) || p.exists()
        };
        let mut n = 1u32;
        loop {
            let name = if n == 1 {
                format!("{stem}.yaml")
            } else {
                format!("{stem}-{n}.yaml")
            };
            let path = self.dir.root.join(name);
            if !taken(&path) || n == u32::MAX {
                return path;
            }
            n += 1;
        }
    }

    fn finish(self, changes: Vec<Change>, incoming: Vec<Arc<SourceFile>>) -> Plan {
        let mut files = Vec::new();
        for f in &self.files {
            let before = f.original.and_then(|i| self.dir.files.get(i));
            let after = f.text.as_ref().map(|t| {
                if f.bom {
                    format!("{BOM}{t}")
                } else {
                    t.clone()
                }
            });
            let before_raw = before.map(DirFile::raw);
            if before_raw != after {
                files.push(FileChange {
                    path: f.path.clone(),
                    before: before_raw,
                    after,
                });
            }
        }
        let mut view: Vec<Arc<SourceFile>> = self
            .dir
            .files
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                let blanked: Vec<&Document> = f
                    .docs
                    .iter()
                    .enumerate()
                    .filter(|(di, _)| self.blanked.contains(&(fi, *di)))
                    .map(|(_, d)| d)
                    .collect();
                let text = if blanked.is_empty() {
                    f.text.clone()
                } else {
                    blank_documents(&f.text, &blanked)
                };
                SourceFile::new(f.name.clone(), text)
            })
            .collect();
        view.extend(incoming);
        Plan {
            root: self.dir.root.clone(),
            changes,
            files,
            view,
        }
    }
}

/// `text` with the documents `docs` emptied: markers kept, every other line reduced to
/// its line break, so that the positions in the rest of the file do not move.
fn blank_documents(text: &str, docs: &[&Document]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for d in docs {
        out.push_str(text.get(pos..d.range.start).unwrap_or(""));
        for r in line_ranges(text, d.range.clone()) {
            let line = text.get(r.clone()).unwrap_or("");
            let is_start = d.start_marker.as_ref().is_some_and(|m| m.start == r.start);
            let is_end = d.end_marker.as_ref().is_some_and(|m| m.start == r.start);
            if is_start {
                out.push_str("---");
            } else if is_end {
                out.push_str("...");
            }
            if line.ends_with("\r\n") {
                out.push_str("\r\n");
            } else if line.ends_with('\n') {
                out.push('\n');
            }
        }
        pos = d.range.end;
    }
    out.push_str(text.get(pos..).unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanking_keeps_lines_and_markers() {
        let text = "a: 1\n---\nb: 2\r\nc: 3\n...\nd: 4\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 3);
        let b = docs.get(1).into_iter().collect::<Vec<_>>();
        assert_eq!(blank_documents(text, &b), "a: 1\n---\n\r\n\n...\nd: 4\n");
    }
}
