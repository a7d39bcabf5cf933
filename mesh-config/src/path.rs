//! Field paths such as `spec.http[0].route[1].weight`.
//!
//! A diagnostic names the field it is about the way `kubectl` and `istioctl` do, and the
//! same path finds the field's line and column in the YAML tree it came from.

use std::fmt;
use std::str::FromStr;

use crate::source::Span;
use crate::yaml::{Node, Value};

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key (a field name, or a key of a user map such as `labels`).
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from a resource's root to one of its fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path (the resource itself).
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path followed by mapping key `key`.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(key.into()));
        FieldPath(v)
    }

    /// This path followed by sequence index `index`.
    pub fn index(&self, index: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(index));
        FieldPath(v)
    }

    /// Appends a segment in place.
    pub fn push(&mut self, seg: Segment) {
        self.0.push(seg);
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The path with indices left out, as used to describe a field of every element
    /// (`spec.http[].route[].weight`).
    pub fn generic(&self) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(_) => out.push_str("[]"),
            }
        }
        out
    }

    /// Finds where the field was written in `root`, the resource's YAML node.
    ///
    /// A field that holds a mapping or a sequence is located at its key, a scalar at its
    /// value, an element at the element. When the path leaves the tree (a missing field),
    /// the deepest node that exists is returned, so a "missing field" diagnostic points at
    /// the mapping that should have had it. The boolean tells whether the whole path was
    /// found.
    pub fn locate(&self, root: &Node) -> (Span, bool) {
        self.locate_impl(root, false)
    }

    /// Like [`FieldPath::locate`], but a path ending in a mapping key is located at the
    /// key even when its value is a scalar: for problems with the key itself (a label
    /// key, a header name).
    pub fn locate_key(&self, root: &Node) -> (Span, bool) {
        self.locate_impl(root, true)
    }

    fn locate_impl(&self, root: &Node, key: bool) -> (Span, bool) {
        let last = self.0.len().saturating_sub(1);
        let mut node = root;
        let mut span = root.span;
        for (i, seg) in self.0.iter().enumerate() {
            match (seg, &node.value) {
                (Segment::Key(k), Value::Map(entries)) => {
                    let Some(e) = entries.iter().find(|e| &e.key == k) else {
                        return (span, false);
                    };
                    span = match e.value.value {
                        _ if key && i == last => e.key_span,
                        Value::Map(_) | Value::Seq(_) | Value::Null => e.key_span,
                        _ => e.value.span,
                    };
                    node = &e.value;
                }
                (Segment::Index(i), Value::Seq(items)) => {
                    let Some(n) = items.get(*i) else {
                        return (span, false);
                    };
                    span = n.span;
                    node = n;
                }
                _ => return (span, false),
            }
        }
        (span, true)
    }
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{k:?}]")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Error for a path string that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path `{0}`")]
pub struct PathParseError(pub String);

impl FromStr for FieldPath {
    type Err = PathParseError;

    /// Reads the form [`Display`](fmt::Display) writes: `a.b[0]["x.y"].c`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PathParseError(s.to_string());
        let mut out = FieldPath::root();
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                if let Some(r) = r.strip_prefix('"') {
                    let mut key = String::new();
                    let mut chars = r.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, c)) => key.push(c),
                                None => return Err(err()),
                            },
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => key.push(c),
                        }
                    }
                    let end = end.ok_or_else(err)?;
                    rest = r[end + 1..].strip_prefix(']').ok_or_else(err)?;
                    out.push(Segment::Key(key));
                } else {
                    let close = r.find(']').ok_or_else(err)?;
                    let n = r[..close].parse().map_err(|_| err())?;
                    out.push(Segment::Index(n));
                    rest = &r[close + 1..];
                }
            } else {
                let r = rest.strip_prefix('.').unwrap_or(rest);
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(err());
                }
                out.push(Segment::Key(r[..end].to_string()));
                rest = &r[end..];
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = FieldPath::root()
            .key("spec")
            .key("http")
            .index(0)
            .key("route")
            .index(1)
            .key("weight");
        assert_eq!(p.to_string(), "spec.http[0].route[1].weight");
        assert_eq!(p.generic(), "spec.http[].route[].weight");
        assert_eq!("spec.http[0].route[1].weight".parse::<FieldPath>(), Ok(p));
        let q = FieldPath::root()
            .key("metadata")
            .key("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(q.to_string(), "metadata.labels[\"app.kubernetes.io/name\"]");
        assert_eq!(q.to_string().parse::<FieldPath>(), Ok(q));
        assert!("a[x]".parse::<FieldPath>().is_err());
        assert!("a..b".parse::<FieldPath>().is_err());
    }
}
