//! The text of one resource as a document of its own (a Kubernetes `List` item cut out
//! and de-indented, or as JSON when it cannot be), and the text that replaces a document:
//! line feeds only, and the comment block that led the old document kept when the new
//! text has none (someone who edits the directory by hand expects their comments to
//! stay).

use super::locate::{is_content_line, is_marker, line_ranges};
use super::{Document, Found};
use crate::source::SourceFile;
use crate::yaml::{Node, Value, parse_stream};

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
pub(super) fn keep_comments(existing: &str, incoming: &str) -> String {
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
pub(super) fn normalize(text: &str) -> String {
    let mut t = text.replace("\r\n", "\n");
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t
}

/// The text of resource `found` of document `doc` of `text`, as a document of its own.
pub(super) fn resource_text(text: &str, doc: &Document, found: &Found) -> Option<String> {
    match found.list_item {
        None => Some(normalize(doc.content_text(text))),
        Some(i) => list_item_text(doc.full_text(text), i).map(|t| normalize(&t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
