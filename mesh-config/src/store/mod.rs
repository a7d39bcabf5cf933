//! Editing a configuration directory the way `kubectl apply` and `kubectl delete` edit a
//! cluster.
//!
//! A running mesh watches a directory of Istio YAML files and reloads it. People keep
//! those files under version control, with comments and several documents per file, so
//! edits here are textual and surgical: the document that holds a resource is replaced in
//! place and every other byte of its file stays as it was; a new resource gets a file of
//! its own (`<kind>-<namespace>-<name>.yaml`); a deleted resource takes its document with
//! it, and its file when nothing else is left.
//!
//! Resources are identified as `kubectl` identifies them: by API group, kind, namespace
//! and name. A Gateway API `gateway.networking.k8s.io/v1` `Gateway` is not the Istio
//! `networking.istio.io` `Gateway` of the same name: applying or deleting one never
//! touches the other (see [`Found`] and [`source_keys`]).
//!
//! Nothing is written blindly. A [`Plan`] computes every edit in memory first;
//! [`Plan::check`] checks the configuration the directory would hold, as Istio's
//! validating webhook would, with the applied resources located in the files the user
//! gave; [`Plan::write`] then writes every file to a temporary file first and renames
//! them over the old ones only once all are written, so that a process watching the
//! directory never reads half a file, and a failure leaves the directory as it was (as
//! far as the filesystem allows). A replaced document keeps the comments above it when
//! the incoming text has none.
//!
//! Documents are found textually (a `---` or `...` line at column 0 ends a YAML
//! document, whatever surrounds it) and each is parsed on its own to learn which
//! resources it holds, so a broken document in one file does not hide the others.
//!
//! The code is laid out by concern: `locate` finds the documents of a text and the
//! resources each holds (and what a source names, for a delete); `text` gives a
//! resource's text as a document of its own and keeps the comments of a replaced
//! document; `dir` reads a directory within the loader's limits; `list` lists what loads
//! (`meshctl get`); `edit` plans an apply or a delete in memory; `write` writes a plan
//! atomically. This file holds the public types.
//!
//! ```
//! use mesh_config::source::SourceFile;
//! use mesh_config::store::{ConfigDir, Outcome};
//!
//! let dir = tempfile::tempdir()?;
//! let incoming = SourceFile::new("gw.yaml", "\
//! apiVersion: networking.istio.io/v1
//! kind: Gateway
//! metadata: {name: edge}
//! spec:
//!   selector: {istio: ingressgateway}
//!   servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
//! ");
//! let plan = ConfigDir::open(dir.path())?.plan_apply(&[incoming.clone()])?;
//! assert!(!plan.check().has_errors());
//! plan.write()?;
//! assert_eq!(plan.changes()[0].outcome, Outcome::Created);
//! assert_eq!(plan.changes()[0].to_string(), "gateway.networking.istio.io/edge created");
//! assert!(dir.path().join("gateway-default-edge.yaml").is_file());
//!
//! // The same text again changes nothing.
//! let plan = ConfigDir::open(dir.path())?.plan_apply(&[incoming])?;
//! assert_eq!(plan.changes()[0].outcome, Outcome::Unchanged);
//! assert!(plan.file_changes().is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dir;
mod edit;
pub mod kv;
mod list;
mod locate;
mod text;
mod write;

pub use dir::read_source;
pub use locate::{documents, resource_keys, source_keys};

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::Diagnostic;
use crate::load::{ConfigSet, LoadError};
use crate::model::{AnyResource, Kind, ResourceKey};
use crate::snapshot::Checked;
use crate::source::SourceFile;

use dir::DirFile;

/// The namespace of a resource that names none (as the loader and Kubernetes do).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A problem editing a configuration directory (not a problem with the configuration,
/// which [`Plan::check`] reports as diagnostics).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The configuration path is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A file could not be written, renamed or removed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The resource is an item of a Kubernetes `List`: its text cannot be replaced or
    /// removed without rewriting the List.
    #[error(
        "{key} is an item of the List at {path}:{line}; a List item cannot be edited in place: \
         move it to a document of its own (or edit the file by hand)"
    )]
    ListItem {
        /// The resource.
        key: ResourceKey,
        /// The file that holds the List.
        path: PathBuf,
        /// The line of the item.
        line: u32,
    },
    /// An incoming `List` item whose text cannot be taken out of the List on its own.
    #[error("cannot take {key} out of the List at {name}:{line}")]
    Unextractable {
        /// The resource.
        key: ResourceKey,
        /// The name of the incoming source.
        name: String,
        /// The line of the item.
        line: u32,
    },
    /// A write failed midway, and some of the files already changed could not be put
    /// back as they were: they hold the plan's text.
    #[error(
        "cannot write {path}: {source}; these files could not be restored and hold the new text: {}",
        display_paths(.unrestored)
    )]
    Unrestored {
        /// The file whose write failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// The files not restored.
        unrestored: Vec<PathBuf>,
    },
    /// A file changed between the plan and the write.
    #[error("{path} changed since it was read; nothing was written, run the command again")]
    Conflict {
        /// The path.
        path: PathBuf,
    },
}

/// `a, b, c`.
fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One YAML document of a text, found textually, with the resources it holds.
///
/// Ranges are byte ranges of the text given to [`documents`]. A file is the
/// concatenation of its documents' `range`s: text that belongs to no resource (a
/// comment-only preamble, an empty document between two `---`) is a document without
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The whole document: its `---` line, its text, trailing blank lines, its `...` line.
    pub range: Range<usize>,
    /// The `---` line that starts the document, line break included.
    pub start_marker: Option<Range<usize>>,
    /// The document's own text: what follows its `---` line (or follows `---` on that
    /// line, when content does), up to its `...` line or the next document, trailing blank
    /// lines left out. Comments written before the content are part of it.
    pub content: Range<usize>,
    /// The `...` line that ends the document, line break included.
    pub end_marker: Option<Range<usize>>,
    /// Line (1-based) where `range` starts.
    pub line: u32,
    /// True when content follows `---` on the marker line (`--- {kind: ...}`).
    pub inline: bool,
    /// True when the content has something besides comments, directives and blank lines.
    pub has_content: bool,
    /// The resources found in the document: one, or one per item of a Kubernetes `List`,
    /// or none (another kind, another API group, no name, not YAML).
    pub resources: Vec<Found>,
    /// True when the document is not clean YAML (a syntax error, a duplicate key, an
    /// unsupported tag): its resources, if any were found, are not to be trusted.
    pub yaml_errors: bool,
}

/// A resource found in a [`Document`].
///
/// A resource is identified as `kubectl` identifies it: by API group as well as kind,
/// namespace and name. Only a document whose `apiVersion` is in the group of one of the
/// mesh's kinds holds a resource: a Gateway API `gateway.networking.k8s.io/v1` `Gateway`
/// is not the Istio `networking.istio.io` `Gateway` of the same name, and is not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Kind, namespace (`default` when absent) and name.
    pub key: ResourceKey,
    /// Line (1-based, in the whole text) where the resource starts.
    pub line: u32,
    /// Index of the item, when the resource is an item of a Kubernetes `List`.
    pub list_item: Option<usize>,
    /// True when the mesh reads the kind under the document's `apiVersion`
    /// ([`Kind::accepts`]). False for another version of the kind's group
    /// (`networking.istio.io/v2`): the same resource as far as identity goes (an apply
    /// replaces such a document, a delete removes it), but one that does not load, so an
    /// incoming document of that version is neither applied nor deleted.
    pub served: bool,
}

impl Document {
    /// The document's own text (see [`Document::content`]).
    pub fn content_text<'a>(&self, text: &'a str) -> &'a str {
        text.get(self.content.clone()).unwrap_or("")
    }

    /// The text of the whole document (its markers included).
    pub fn full_text<'a>(&self, text: &'a str) -> &'a str {
        text.get(self.range.clone()).unwrap_or("")
    }
}

/// A resource of a source that the mesh does not read: a kind it does not know, or one
/// of its kinds under an `apiVersion` it does not serve (a Gateway API
/// `gateway.networking.k8s.io/v1` `Gateway`, say). Displayed as `kubectl` reports a
/// resource type the cluster does not have:
/// `no matches for kind "Gateway" in version "gateway.networking.k8s.io/v1"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// The `kind`, as written.
    pub kind: String,
    /// The `apiVersion`, as written.
    pub api_version: String,
    /// The `metadata.name` (empty when the document has none).
    pub name: String,
    /// Line (1-based) where the resource starts.
    pub line: u32,
    /// The mesh's kind of that name, when the mesh reads the kind under other
    /// `apiVersion`s (an error: the loader refuses such a document); `None` for a kind
    /// the mesh does not read at all (a `Deployment`: the loader ignores it with a
    /// warning).
    pub mesh_kind: Option<Kind>,
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no matches for kind {:?} in version {:?}",
            self.kind, self.api_version
        )
    }
}

/// What a source names, for `kubectl delete -f`: see [`source_keys`].
#[derive(Debug, Clone, Default)]
pub struct SourceKeys {
    /// The keys of the resources the mesh reads, in order (a document under an
    /// `apiVersion` the mesh does not serve is not one of them).
    pub keys: Vec<ResourceKey>,
    /// The resources the mesh does not read, in order.
    pub no_matches: Vec<NoMatch>,
    /// The YAML errors of the source (only those: what the spec says does not matter to
    /// find keys).
    pub yaml_errors: Vec<Diagnostic>,
}

/// Sorts listed resources as `kubectl get` lists them: by namespace, name and kind.
fn sort_listed(items: &mut [Listed]) {
    items.sort_by(|a, b| {
        (a.resource.namespace(), a.resource.name(), a.resource.kind()).cmp(&(
            b.resource.namespace(),
            b.resource.name(),
            b.resource.kind(),
        ))
    });
}

/// `virtualservice.networking.istio.io`: a kind as `kubectl` names it in its output.
pub fn qualified_kind(kind: Kind) -> String {
    format!("{}.{}", kind.as_str().to_ascii_lowercase(), kind.group())
}

/// A configuration directory, read: every `*.yaml` / `*.yml` file under it (as
/// [`ConfigSet::load`] reads it), split into documents.
///
/// Reading is a snapshot: plans are computed against it, and [`Plan::write`] refuses to
/// overwrite a file that changed since.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
    files: Vec<DirFile>,
}

/// A resource listed by [`ConfigDir::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// The resource, typed.
    pub resource: AnyResource,
    /// The file it is in.
    pub path: PathBuf,
    /// The line (1-based) where it starts.
    pub line: u32,
    /// Its text as a document of its own (a `List` item de-indented), ending with a
    /// line feed.
    pub text: String,
}

/// What a plan does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new file holds it.
    Created,
    /// Its document was replaced.
    Configured,
    /// Its document already had this text.
    Unchanged,
    /// Its document was removed.
    Deleted,
    /// There was nothing to delete.
    NotFound,
}

impl Outcome {
    /// The word `kubectl` prints (`created`, `configured`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
            Outcome::NotFound => "not found",
        }
    }
}

/// One resource of a plan and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The resource.
    pub key: ResourceKey,
    /// What happens to it.
    pub outcome: Outcome,
    /// The file that holds (or held) it; `None` when not found.
    pub path: Option<PathBuf>,
}

impl fmt::Display for Change {
    /// `virtualservice.networking.istio.io/reviews configured`, as `kubectl` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            qualified_kind(self.key.kind),
            self.key.name,
            self.outcome.as_str()
        )
    }
}

/// A file a plan writes or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The file.
    pub path: PathBuf,
    /// Its content when the plan was made; `None` for a new file.
    pub before: Option<String>,
    /// Its new content; `None` when the file is removed.
    pub after: Option<String>,
}

/// The edits of an apply or a delete, computed in memory (see the module documentation).
#[derive(Debug, Clone)]
pub struct Plan {
    root: PathBuf,
    changes: Vec<Change>,
    files: Vec<FileChange>,
    /// The configuration as the check sees it: the directory's files with the documents
    /// the plan replaces or removes blanked (lines kept, so that other positions do not
    /// move), then the applied sources under their own names (documents applied again
    /// later blanked).
    view: Vec<Arc<SourceFile>>,
}

impl Plan {
    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What happens to each resource, in the order given.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The files written or removed (none when everything is unchanged).
    pub fn file_changes(&self) -> &[FileChange] {
        &self.files
    }

    /// The configuration the directory would hold, loaded: the directory's files without
    /// the documents the plan replaces or removes, plus the applied sources under their
    /// own names (so that diagnostics point at what the user wrote).
    pub fn config_set(&self) -> ConfigSet {
        let mut set = ConfigSet::new();
        for s in &self.view {
            set.add_source(s.clone());
        }
        set
    }

    /// Checks the configuration the directory would hold (see [`Plan::config_set`]).
    /// Write only when it has no error, as Istio's validating webhook would.
    pub fn check(&self) -> Checked {
        self.config_set().check()
    }
}
