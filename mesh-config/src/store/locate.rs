//! Locating the documents of a text and the resources they hold, as `kubectl` identifies
//! them. Documents are found textually (a `---` or `...` line at column 0 ends a YAML
//! document, whatever surrounds it), so that every byte of a file belongs to one document
//! and a document can be replaced or removed without touching the others; each is then
//! parsed on its own, so a broken document does not hide the resources of the others.
//! A resource is keyed by API group, kind, namespace and name (see [`Found`]).

use std::ops::Range;
use std::sync::Arc;

use super::{DEFAULT_NAMESPACE, Document, Found, NoMatch, SourceKeys};
use crate::diag::{Code, Diagnostic};
use crate::load::ConfigSet;
use crate::model::{Kind, ResourceKey};
use crate::source::SourceFile;
use crate::yaml::{Node, Value, parse_stream};

/// True when `line` (its line break included or not) is the document marker `marker`
/// (`---` or `...`) at column 0, alone or followed by a blank.
pub(super) fn is_marker(line: &str, marker: &str) -> bool {
    line.starts_with(marker)
        && matches!(
            line.as_bytes().get(marker.len()),
            None | Some(b' ' | b'\t' | b'\r' | b'\n')
        )
}

/// A line is content unless it is blank, a comment or a directive.
pub(super) fn is_content_line(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty() || t.starts_with('#') || line.starts_with('%'))
}

/// The lines of `text[range]` as byte ranges, line breaks included.
pub(super) fn line_ranges(
    text: &str,
    range: Range<usize>,
) -> impl Iterator<Item = Range<usize>> + '_ {
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
}
