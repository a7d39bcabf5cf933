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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::diag::{Code, Diagnostic};
use crate::load::{ConfigSet, LoadError, MAX_FILE_SIZE, yaml_files};
use crate::model::{AnyResource, Kind, ResourceKey};
use crate::snapshot::Checked;
use crate::source::SourceFile;
use crate::yaml::{Node, Value, parse_stream};

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

// ---------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------

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

/// True when `line` (its line break included or not) is the document marker `marker`
/// (`---` or `...`) at column 0, alone or followed by a blank.
fn is_marker(line: &str, marker: &str) -> bool {
    line.starts_with(marker)
        && matches!(
            line.as_bytes().get(marker.len()),
            None | Some(b' ' | b'\t' | b'\r' | b'\n')
        )
}

/// A line is content unless it is blank, a comment or a directive.
fn is_content_line(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty() || t.starts_with('#') || line.starts_with('%'))
}

/// The lines of `text[range]` as byte ranges, line breaks included.
fn line_ranges(text: &str, range: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = range.start;
    let end = range.end.min(text.len());
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let stop = text
            .get(pos..end)
            .and_then(|s| s.find('\n'))
            .map_or(end, |i| pos + i + 1);
        let r = pos..stop;
        pos = stop;
        Some(r)
    })
}

struct Open {
    start: usize,
    marker: Option<Range<usize>>,
    line: u32,
}

/// Splits `text` into its YAML documents, textually, and finds the resources of each by
/// parsing it on its own.
///
/// A line starting with `---` or `...` at column 0, alone or followed by a blank (then a
/// comment or content), is a document marker, as in YAML: such a line cannot occur inside
/// a document. Carriage returns before line feeds are allowed. A text may start with a
/// byte-order mark only if the caller strips it first.
pub fn documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut open = Open {
        start: 0,
        marker: None,
        line: 1,
    };
    let mut line_no: u32 = 1;
    for r in line_ranges(text, 0..text.len()) {
        let line = text.get(r.clone()).unwrap_or("");
        if is_marker(line, "---") {
            if r.start > open.start {
                docs.push(close(text, &open, r.start, None));
            }
            open = Open {
                start: r.start,
                marker: Some(r.clone()),
                line: line_no,
            };
        } else if is_marker(line, "...") {
            docs.push(close(text, &open, r.start, Some(r.clone())));
            open = Open {
                start: r.end,
                marker: None,
                line: line_no.saturating_add(1),
            };
        }
        line_no = line_no.saturating_add(1);
    }
    if text.len() > open.start {
        docs.push(close(text, &open, text.len(), None));
    }
    docs
}

/// Closes the open document at `body_end` (where its `...` line or the next document
/// starts).
fn close(text: &str, open: &Open, body_end: usize, end_marker: Option<Range<usize>>) -> Document {
    let body_start = open.marker.as_ref().map_or(open.start, |m| m.end);
    let mut inline = false;
    let mut content_start = body_start;
    if let Some(m) = &open.marker {
        let rest = text.get(m.start + 3..m.end).unwrap_or("");
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let t = trimmed.trim_end();
        if !t.is_empty() && !t.starts_with('#') {
            inline = true;
            content_start = m.end - trimmed.len();
        }
    }
    // The content ends with its last line that is not blank.
    let mut content_end = if inline {
        open.marker.as_ref().map_or(content_start, |m| m.end)
    } else {
        content_start
    };
    let mut has_content = inline;
    for r in line_ranges(text, body_start..body_end) {
        let line = text.get(r.clone()).unwrap_or("");
        if !line.trim().is_empty() {
            content_end = r.end;
        }
        has_content |= is_content_line(line);
    }
    let range = open.start..end_marker.as_ref().map_or(body_end, |m| m.end);
    let mut doc = Document {
        range,
        start_marker: open.marker.clone(),
        content: content_start..content_end,
        end_marker,
        line: open.line,
        inline,
        has_content,
        resources: Vec::new(),
        yaml_errors: false,
    };
    if has_content {
        identify(text, &mut doc);
    }
    doc
}

/// True when a document's root is a Kubernetes `List` (the loader's rule).
fn is_list(node: &Node) -> bool {
    let kind = node.get("kind").and_then(Node::as_str);
    kind == Some("List") || kind.is_some_and(|k| k.ends_with("List") && node.get("items").is_some())
}

/// The `kind`, `apiVersion` and `metadata.name` of a node, as far as they are strings.
fn identity(node: &Node) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        node.get("kind").and_then(Node::as_str),
        node.get("apiVersion").and_then(Node::as_str),
        node.get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Node::as_str),
    )
}

/// The API group of an `apiVersion` (empty for the core group, `v1`).
fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// The key of a resource node, from its `kind`, `apiVersion` and `metadata` alone (the
/// spec does not matter), with the loader's default namespace, and whether the mesh
/// reads the kind under that `apiVersion`.
///
/// `None` unless the kind is one of the mesh's and the `apiVersion` is in its API group:
/// resources are identified by group, kind, namespace and name, as `kubectl` identifies
/// them (a `gateway.networking.k8s.io` `Gateway` is another resource than a
/// `networking.istio.io` `Gateway` of the same name).
fn key_of(node: &Node) -> Option<(ResourceKey, bool)> {
    let (kind, api_version, name) = identity(node);
    let kind = Kind::from_name(kind?)?;
    let api_version = api_version?;
    if group_of(api_version) != kind.group() {
        return None;
    }
    let name = name?;
    if name.is_empty() {
        return None;
    }
    let namespace = node
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    let key = ResourceKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    Some((key, kind.accepts(api_version)))
}

/// Parses the document on its own and calls `visit` with each resource node (the root,
/// or every item of a Kubernetes `List`), its line (1-based, in the whole text) and its
/// item index. Returns true when the document is not clean YAML.
fn visit_nodes(
    text: &str,
    doc: &Document,
    mut visit: impl FnMut(&Node, u32, Option<usize>),
) -> bool {
    let source = SourceFile::new("", doc.full_text(text));
    let stream = parse_stream(&source);
    let line = |n: &Node| doc.line.saturating_add(n.span.start.line.saturating_sub(1));
    for (_, node) in &stream.documents {
        if is_list(node) {
            if let Some(Value::Seq(items)) = node.get("items").map(|n| &n.value) {
                for (i, item) in items.iter().enumerate() {
                    visit(item, line(item), Some(i));
                }
            }
        } else {
            visit(node, line(node), None);
        }
    }
    !stream.errors.is_empty()
}

/// Parses the document on its own and records its resources.
fn identify(text: &str, doc: &mut Document) {
    let mut found = Vec::new();
    let yaml_errors = visit_nodes(text, doc, |node, line, list_item| {
        if let Some((key, served)) = key_of(node) {
            found.push(Found {
                key,
                line,
                list_item,
                served,
            });
        }
    });
    doc.yaml_errors = yaml_errors;
    doc.resources = found;
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

/// Every resource a source names, found as [`documents`] finds them: the keys of those
/// the mesh reads, the others ([`NoMatch`]: another kind, or a kind of the mesh under an
/// `apiVersion` it does not serve), and the YAML errors of the source.
///
/// This is what `kubectl delete -f FILE` needs: which resources FILE names, and which it
/// names that the mesh has no type for (`kubectl` reports those as
/// `no matches for kind ...` and deletes the others). A document without a `kind` or an
/// `apiVersion` names nothing.
pub fn source_keys(source: &Arc<SourceFile>) -> SourceKeys {
    let text = source.text();
    let mut out = SourceKeys::default();
    for doc in documents(text) {
        if !doc.has_content {
            continue;
        }
        visit_nodes(text, &doc, |node, line, _| {
            if let Some((key, true)) = key_of(node) {
                out.keys.push(key);
                return;
            }
            let (Some(kind), Some(api_version), name) = identity(node) else {
                return;
            };
            let mesh_kind = Kind::from_name(kind);
            if mesh_kind.is_some_and(|k| k.accepts(api_version)) {
                // The mesh's resource, without a name: it names nothing.
                return;
            }
            out.no_matches.push(NoMatch {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
                name: name.unwrap_or("").to_string(),
                line,
                mesh_kind,
            });
        });
    }
    out.yaml_errors = yaml_errors(source);
    out
}

/// The YAML errors of a source, as the loader reports them.
fn yaml_errors(source: &Arc<SourceFile>) -> Vec<Diagnostic> {
    let mut set = ConfigSet::new();
    set.add_source(source.clone());
    set.diagnostics()
        .iter()
        .filter(|d| {
            matches!(
                d.code,
                Code::YamlSyntax | Code::DuplicateKey | Code::YamlUnsupported
            )
        })
        .cloned()
        .collect()
}

/// The keys of the resources of a source the mesh reads (see [`source_keys`], which also
/// gives the resources it names that the mesh does not read), and the YAML errors of the
/// source (only those: what the spec says does not matter to find keys).
pub fn resource_keys(source: &Arc<SourceFile>) -> (Vec<ResourceKey>, Vec<Diagnostic>) {
    let keys = source_keys(source);
    (keys.keys, keys.yaml_errors)
}

/// A node as JSON (which is YAML too); `None` for a float JSON cannot hold.
fn to_json(node: &Node) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => J::Number(serde_json::Number::from_f64(*f)?),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|e| Some((e.key.clone(), to_json(&e.value)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// The text of item `index` of the `List` in `doc_text` (a whole document) as a document
/// of its own: the item's lines, de-indented, when they read back as the same value;
/// otherwise (a flow-style List, aliases to other items) the item as JSON.
fn list_item_text(doc_text: &str, index: usize) -> Option<String> {
    let source = SourceFile::new("", doc_text);
    let stream = parse_stream(&source);
    let (_, root) = stream.documents.first()?;
    let Some(Value::Seq(items)) = root.get("items").map(|n| &n.value) else {
        return None;
    };
    let item = items.get(index)?;
    let wanted = to_json(item);
    if let Some(text) = cut_item(source.text(), item.span.start.offset)
        && wanted.is_some()
    {
        let back = SourceFile::new("", text.as_str());
        let parsed = parse_stream(&back);
        if parsed.errors.is_empty()
            && parsed.documents.len() == 1
            && parsed.documents.first().and_then(|(_, n)| to_json(n)) == wanted
        {
            return Some(text);
        }
    }
    let json = serde_json::to_string_pretty(&wanted?).ok()?;
    Some(json + "\n")
}

/// The block-style item starting at byte `start`: its first line from `start`, then the
/// following lines indented at least as much (comments and blank lines too), de-indented.
fn cut_item(text: &str, start: usize) -> Option<String> {
    let line_start = text.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
    let prefix = text.get(line_start..start)?;
    if !prefix.chars().all(|c| c == ' ' || c == '-') {
        return None;
    }
    let indent = prefix.len();
    let mut lines: Vec<&str> = Vec::new();
    let mut ranges = line_ranges(text, start..text.len());
    lines.push(text.get(ranges.next()?)?);
    for r in ranges {
        let line = text.get(r)?;
        let body = line.trim_start_matches(' ');
        let spaces = line.len() - body.len();
        let blank_or_comment = body.trim().is_empty() || body.starts_with('#');
        if is_marker(line, "---") || is_marker(line, "...") {
            break;
        }
        if !blank_or_comment && spaces < indent {
            break;
        }
        lines.push(line.get(spaces.min(indent)..)?);
    }
    while lines
        .last()
        .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        lines.pop();
    }
    let mut out: String = lines.concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

/// The lines of `text` before its first content line (comments, blank lines), line
/// breaks included.
fn leading_block(text: &str) -> &str {
    let end = line_ranges(text, 0..text.len())
        .find(|r| is_content_line(text.get(r.clone()).unwrap_or("")))
        .map_or(text.len(), |r| r.start);
    text.get(..end).unwrap_or("")
}

/// True when some line of `text` is a comment.
fn has_comment(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with('#'))
}

/// The text that replaces the document `existing` with `incoming` (line feeds only):
/// `incoming`, after the comment block that leads `existing` when `incoming` has no
/// leading comment of its own.
fn keep_comments(existing: &str, incoming: &str) -> String {
    let old = leading_block(existing);
    let new = leading_block(incoming);
    if has_comment(new) || !has_comment(old) {
        return incoming.to_string();
    }
    format!(
        "{}{}",
        old.replace("\r\n", "\n"),
        incoming.get(new.len()..).unwrap_or(incoming)
    )
}

/// A document's text as written to a file: line feeds only, ending with one.
fn normalize(text: &str) -> String {
    let mut t = text.replace("\r\n", "\n");
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t
}

/// The text of resource `found` of document `doc` of `text`, as a document of its own.
fn resource_text(text: &str, doc: &Document, found: &Found) -> Option<String> {
    match found.list_item {
        None => Some(normalize(doc.content_text(text))),
        Some(i) => list_item_text(doc.full_text(text), i).map(|t| normalize(&t)),
    }
}

// ---------------------------------------------------------------------------------------
// The directory
// ---------------------------------------------------------------------------------------

/// `virtualservice.networking.istio.io`: a kind as `kubectl` names it in its output.
pub fn qualified_kind(kind: Kind) -> String {
    format!("{}.{}", kind.as_str().to_ascii_lowercase(), kind.group())
}

/// Reads a configuration file as the loader does (size limit, UTF-8), named by its path.
pub fn read_source(path: &Path) -> Result<Arc<SourceFile>, LoadError> {
    let text = read_text(path)?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_SIZE {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| LoadError::NotText {
        path: path.to_path_buf(),
    })
}

const BOM: &str = "\u{feff}";

/// One file of a [`ConfigDir`].
#[derive(Debug, Clone)]
struct DirFile {
    path: PathBuf,
    /// The name the loader gives the file (its path, displayed).
    name: String,
    /// The text, without its byte-order mark.
    text: String,
    /// The file starts with a byte-order mark (kept when the file is rewritten).
    bom: bool,
    docs: Vec<Document>,
}

impl DirFile {
    fn new(path: PathBuf, raw: String) -> Self {
        let (bom, text) = match raw.strip_prefix(BOM) {
            Some(rest) => (true, rest.to_string()),
            None => (false, raw),
        };
        let docs = documents(&text);
        DirFile {
            name: path.display().to_string(),
            path,
            text,
            bom,
            docs,
        }
    }

    fn raw(&self) -> String {
        if self.bom {
            format!("{BOM}{}", self.text)
        } else {
            self.text.clone()
        }
    }
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

impl ConfigDir {
    /// Reads the directory at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&root).map_err(|source| LoadError::Io {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory { path: root });
        }
        let mut files = Vec::new();
        for path in yaml_files(&root)? {
            let raw = read_text(&path)?;
            files.push(DirFile::new(path, raw));
        }
        Ok(ConfigDir { root, files })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files read, in the loader's order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// The documents of file `path` (its text without a byte-order mark is
    /// [`ConfigDir::text`]), or `None` when the directory has no such file.
    pub fn documents(&self, path: &Path) -> Option<&[Document]> {
        self.file(path).map(|f| f.docs.as_slice())
    }

    /// The text of file `path` as read (without a byte-order mark).
    pub fn text(&self, path: &Path) -> Option<&str> {
        self.file(path).map(|f| f.text.as_str())
    }

    fn file(&self, path: &Path) -> Option<&DirFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Where the resource `key` is written: its file and the resource found there (the
    /// first, if the directory defines it twice).
    pub fn find(&self, key: &ResourceKey) -> Option<(&Path, &Found)> {
        self.files.iter().find_map(|f| {
            f.docs
                .iter()
                .flat_map(|d| &d.resources)
                .find(|r| &r.key == key)
                .map(|r| (f.path.as_path(), r))
        })
    }

    /// The directory as the loader reads it.
    pub fn config_set(&self) -> ConfigSet {
        let mut set = ConfigSet::new();
        for f in &self.files {
            set.add_source(SourceFile::new(f.name.clone(), f.text.clone()));
        }
        set
    }

    /// Checks the directory as it is.
    pub fn check(&self) -> Checked {
        self.config_set().check()
    }

    /// The resources of kind `kind` (all kinds when `None`) in namespace `namespace` (all
    /// namespaces when `None`) that load, sorted by namespace, name and kind.
    pub fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> Vec<Listed> {
        let set = self.config_set();
        let by_name: HashMap<&str, &DirFile> =
            self.files.iter().map(|f| (f.name.as_str(), f)).collect();
        let mut out = Vec::new();
        for r in set.resources() {
            if kind.is_some_and(|k| k != r.kind())
                || namespace.is_some_and(|ns| ns != r.namespace())
            {
                continue;
            }
            let origin = r.origin();
            let Some(file) = by_name.get(origin.source.name()) else {
                continue;
            };
            let key = r.key();
            let line = origin.location().span.start.line;
            // The resource at that line (the key alone, should the lines disagree).
            let text_where = |same_line: bool| {
                file.docs.iter().find_map(|d| {
                    d.resources
                        .iter()
                        .find(|f| f.key == key && (!same_line || f.line == line))
                        .and_then(|f| resource_text(&file.text, d, f))
                })
            };
            let text = text_where(true)
                .or_else(|| text_where(false))
                .unwrap_or_default();
            out.push(Listed {
                resource: r.clone(),
                path: file.path.clone(),
                line,
                text,
            });
        }
        out.sort_by(|a, b| {
            (a.resource.namespace(), a.resource.name(), a.resource.kind()).cmp(&(
                b.resource.namespace(),
                b.resource.name(),
                b.resource.kind(),
            ))
        });
        out
    }

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

// ---------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------

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
    fn markers_need_a_blank_or_the_end_of_the_line() {
        assert!(is_marker("---", "---"));
        assert!(is_marker("--- # x\n", "---"));
        assert!(is_marker("---\r\n", "---"));
        assert!(!is_marker("----\n", "---"));
        assert!(!is_marker(" ---\n", "---"));
        assert!(is_marker("...\n", "..."));
        assert!(!is_marker("...x\n", "..."));
    }

    #[test]
    fn list_items_are_cut_out_and_de_indented() {
        let doc = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: networking.istio.io/v1\n    kind: Gateway # g\n    metadata:\n      name: g\n\n  - {apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: h}}\n";
        assert_eq!(
            list_item_text(doc, 0).as_deref(),
            Some("apiVersion: networking.istio.io/v1\nkind: Gateway # g\nmetadata:\n  name: g\n")
        );
        assert_eq!(
            list_item_text(doc, 1).as_deref(),
            Some("{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: h}}\n")
        );
        // A flow-style List: the item becomes JSON.
        let flow = "{\"kind\": \"List\", \"items\": [{\"kind\": \"Gateway\", \"metadata\": {\"name\": \"g\"}}, {\"kind\": \"Gateway\"}]}";
        let t = list_item_text(flow, 0).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        assert_eq!(v["metadata"]["name"], "g");
        assert_eq!(list_item_text(flow, 5), None);
    }

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

    #[test]
    fn blanking_keeps_lines_and_markers() {
        let text = "a: 1\n---\nb: 2\r\nc: 3\n...\nd: 4\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 3);
        let b = docs.get(1).into_iter().collect::<Vec<_>>();
        assert_eq!(blank_documents(text, &b), "a: 1\n---\n\r\n\n...\nd: 4\n");
    }
}
