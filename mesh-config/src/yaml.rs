//! A YAML document tree that remembers where every node was written.
//!
//! serde alone loses positions, and diagnostics need them: `spec.http[0].route[1].weight`
//! must turn into `file:line:column`. We drive `yaml-rust2`'s event parser (maintained,
//! pure Rust, positions on every event) and build our own small tree of [`Node`]s, each
//! with its [`Span`]. Scalars are resolved with the YAML 1.2 core schema, the way
//! modern Kubernetes tooling reads them: `80` is an integer, `"80"` a string.
//!
//! The builder is defensive because configuration may come from anywhere: nesting depth
//! and alias expansion are bounded (no stack overflow, no "billion laughs"), duplicate keys
//! and unsupported tags are reported, and nothing here panics on any input.
//!
//! The depth bound holds for the tree as built, aliases expanded: every anchor remembers
//! the height of its subtree, and an alias that would take the tree deeper than
//! [`MAX_DEPTH`] is refused. Everything that walks a [`Node`] recursively (including its
//! `Clone` and `Drop`) can rely on it. Reading is linear in the size of the text, even
//! when it is all on one line (`jq -c` output) or a mapping has a great many keys.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::source::{Pos, SourceFile, Span};

/// Deepest nesting accepted. Istio resources nest about a dozen levels.
pub const MAX_DEPTH: usize = 128;
/// Most nodes a single stream may expand to, aliases included.
pub const MAX_NODES: usize = 1_000_000;
/// Widest span given to a node, in characters. Spans stay on their first line and only
/// point at the text, so a long scalar or a one-line document is not measured to its end.
const MAX_SPAN_CHARS: usize = 120;

/// One YAML node and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's value.
    pub value: Value,
    /// Where the node starts (for collections, its first line).
    pub span: Span,
}

/// A resolved YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating point number (also integers too large for 64 bits).
    Float(f64),
    /// A string (quoted, block, or plain text that is no other type).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<Entry>),
}

/// One key/value pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key as written (keys are always read as text, as Kubernetes does).
    pub key: String,
    /// Where the key was written.
    pub key_span: Span,
    /// The value.
    pub value: Node,
}

impl Value {
    /// A short name of the value's type, for messages ("a string", "a mapping", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a floating point number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The value of mapping key `key`, if this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The entry of mapping key `key`, if this node is a mapping that has it.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The string value, if this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// True for `null` (including an empty value).
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// What went wrong while reading YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    /// The text is not YAML.
    Syntax,
    /// A mapping has the same key twice.
    DuplicateKey,
    /// A mapping key that is itself a mapping or a sequence.
    ComplexKey,
    /// A tag other than YAML's core ones (`!!str`, `!!int`, ...).
    Tag,
    /// Nesting deeper than [`MAX_DEPTH`] or expansion beyond [`MAX_NODES`].
    Limit,
}

/// A problem found while reading YAML, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// The kind of problem.
    pub kind: YamlErrorKind,
    /// What went wrong, in words.
    pub message: String,
    /// Where.
    pub span: Span,
    /// A second place the message refers to (the first definition of a duplicate key).
    pub related: Option<Span>,
    /// Index of the document (0-based) the problem is in.
    pub document: usize,
}

/// The documents of one YAML stream, and the problems found in it.
#[derive(Debug, Default)]
pub struct Stream {
    /// The documents that could be read, with their index in the stream. Empty documents
    /// (a trailing `---`, say) are left out.
    pub documents: Vec<(usize, Node)>,
    /// The problems. A syntax error ends the stream: documents after it are not read.
    pub errors: Vec<YamlError>,
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<Entry>,
        /// Index in `entries` of every key, for duplicates and merge keys in O(1).
        keys: HashMap<String, usize>,
        pending_key: Option<(String, Span)>,
        merges: Vec<Node>,
    },
}

/// A node with an anchor, and what an alias to it adds to the tree.
struct Anchored {
    node: Node,
    /// Nodes in the subtree (see [`measure`]).
    size: usize,
    /// Collection levels in the subtree (see [`measure`]).
    height: usize,
}

struct Builder<'a> {
    file: &'a SourceFile,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    nodes: usize,
    document: usize,
    errors: Vec<YamlError>,
}

/// Reads every document of `file`.
pub fn parse_stream(file: &SourceFile) -> Stream {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        document: 0,
        errors: Vec::new(),
    };
    let mut stream = Stream::default();
    let mut parser = Parser::new_from_str(file.text());
    let mut root: Option<Node> = None;
    let mut in_document = false;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => {
                let pos = builder.pos(e.marker());
                builder.syntax_error(e.info(), pos);
                break;
            }
        };
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart => {
                in_document = true;
                root = None;
                builder.anchors.clear();
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take()
                    && !node.is_null()
                {
                    stream.documents.push((builder.document, node));
                }
                builder.stack.clear();
                builder.document += 1;
                in_document = false;
            }
            other => {
                if !in_document {
                    continue;
                }
                match builder.event(other, mark) {
                    Ok(Some(node)) => root = Some(node),
                    Ok(None) => {}
                    Err(()) => break,
                }
            }
        }
    }
    stream.errors = builder.errors;
    stream
}

impl Builder<'_> {
    fn pos(&self, mark: &Marker) -> Pos {
        // `Marker::index` counts characters, not bytes (whatever its documentation says).
        self.file
            .pos_of_marker(mark.index(), mark.line(), mark.col())
    }

    fn error(&mut self, kind: YamlErrorKind, message: String, span: Span) {
        self.errors.push(YamlError {
            kind,
            message,
            span,
            related: None,
            document: self.document,
        });
    }

    fn unsupported_tag(&mut self, tag: &Tag, span: Span) {
        self.error(
            YamlErrorKind::Tag,
            format!(
                "unsupported tag `{}{}`: only YAML's core tags are accepted",
                tag.handle, tag.suffix
            ),
            span,
        );
    }

    /// Reports a syntax error. When a flow collection (`[` or `{`) opened on an earlier
    /// line is still open, the likely mistake is that it was never closed: the error
    /// points at the opening bracket and names where the parser gave up.
    fn syntax_error(&mut self, info: &str, at: Pos) {
        let open = self.stack.iter().rev().find_map(|f| {
            let span = match f {
                Frame::Seq { span, .. } | Frame::Map { span, .. } => *span,
            };
            let c = self.file.text().get(span.start.offset..)?.chars().next()?;
            (matches!(c, '[' | '{') && span.start.line < at.line).then_some((span, c))
        });
        match open {
            Some((span, c)) => {
                let close = if c == '[' { ']' } else { '}' };
                self.errors.push(YamlError {
                    kind: YamlErrorKind::Syntax,
                    message: format!(
                        "`{c}` is never closed with `{close}` (the parser stopped at line {}, column {}: {info})",
                        at.line, at.column
                    ),
                    span: self.span_chars(span.start, 1),
                    related: Some(Span::point(at)),
                    document: self.document,
                });
            }
            None => self.error(YamlErrorKind::Syntax, info.to_string(), Span::point(at)),
        }
    }

    /// A span from `start` covering `chars` characters (at least one, at most
    /// [`MAX_SPAN_CHARS`]), kept on the start's line.
    fn span_chars(&self, start: Pos, chars: usize) -> Span {
        let end = self.file.advance(start, chars.clamp(1, MAX_SPAN_CHARS));
        Span { start, end }
    }

    /// A span from `start` to the end of its line (trailing blanks left out, at most
    /// [`MAX_SPAN_CHARS`] characters), for collections.
    fn span_line(&self, start: Pos) -> Span {
        let end = self.file.advance(start, MAX_SPAN_CHARS);
        let text = self.file.text().get(start.offset..end.offset).unwrap_or("");
        self.span_chars(start, text.trim_end().chars().count())
    }

    fn count(&mut self, n: usize, at: Span) -> Result<(), ()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.error(
                YamlErrorKind::Limit,
                format!("the document expands to more than {MAX_NODES} nodes (aliases included)"),
                at,
            );
            return Err(());
        }
        Ok(())
    }

    fn event(&mut self, event: Event, mark: Marker) -> Result<Option<Node>, ()> {
        let start = self.pos(&mark);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                // Only the characters a span may cover are counted.
                let chars = text.chars().take(MAX_SPAN_CHARS).count();
                let span = match style {
                    TScalarStyle::Plain => self.span_chars(start, chars),
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                        self.span_chars(start, chars + 2)
                    }
                    _ => self.span_chars(start, 1),
                };
                self.count(1, span)?;
                // A key is read as text, whatever it looks like.
                if let Some(Frame::Map {
                    pending_key: pending @ None,
                    ..
                }) = self.stack.last_mut()
                {
                    *pending = Some((text, span));
                    return Ok(None);
                }
                let value = match self.resolve(text, style, tag.as_ref(), span) {
                    Some(v) => v,
                    None => Value::Null,
                };
                let node = Node { value, span };
                if anchor > 0 {
                    let anchored = Anchored {
                        node: node.clone(),
                        size: 1,
                        height: 0,
                    };
                    self.anchors.insert(anchor, anchored);
                }
                Ok(self.push_value(node))
            }
            Event::Alias(id) => {
                let Some(&Anchored { size, height, .. }) = self.anchors.get(&id) else {
                    self.error(
                        YamlErrorKind::Syntax,
                        "alias refers to an unknown anchor".into(),
                        Span::point(start),
                    );
                    return Err(());
                };
                let span = self.span_chars(start, 1);
                self.count(size, span)?;
                let is_key = matches!(
                    self.stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                // A value alias expands its whole subtree here: the textual nesting alone
                // does not bound the depth of the tree. (A key must be a string.)
                if !is_key && self.stack.len() + height > MAX_DEPTH {
                    self.error(
                        YamlErrorKind::Limit,
                        format!(
                            "nesting deeper than {MAX_DEPTH} levels once the alias is expanded \
                             ({} levels here, {height} in the anchored node)",
                            self.stack.len()
                        ),
                        span,
                    );
                    return Err(());
                }
                let Some(value) = self.anchors.get(&id).map(|a| a.node.value.clone()) else {
                    return Err(());
                };
                if let Some(Frame::Map {
                    pending_key: pending @ None,
                    ..
                }) = self.stack.last_mut()
                {
                    match value {
                        Value::Str(s) => *pending = Some((s, span)),
                        _ => {
                            self.error(
                                YamlErrorKind::ComplexKey,
                                "a mapping key must be text, not a collection".into(),
                                span,
                            );
                            return Err(());
                        }
                    }
                    return Ok(None);
                }
                Ok(self.push_value(Node { value, span }))
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(start, anchor, tag.as_ref(), false)?;
                Ok(None)
            }
            Event::MappingStart(anchor, tag) => {
                self.open(start, anchor, tag.as_ref(), true)?;
                Ok(None)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Err(());
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        span,
                        anchor,
                        items,
                    } => (
                        Node {
                            value: Value::Seq(items),
                            span,
                        },
                        anchor,
                    ),
                    Frame::Map {
                        mut span,
                        anchor,
                        mut entries,
                        mut keys,
                        merges,
                        ..
                    } => {
                        // Block mappings are reported after their first key: start at the key.
                        if let Some(first) = entries.first()
                            && first.key_span.start.offset < span.start.offset
                        {
                            span = self.span_line(first.key_span.start);
                        }
                        merge_keys(&mut entries, &mut keys, merges);
                        let node = Node {
                            value: Value::Map(entries),
                            span,
                        };
                        let in_seq = matches!(self.stack.last(), Some(Frame::Seq { .. }));
                        match self.go_yaml_scalar(&node).filter(|_| in_seq && anchor == 0) {
                            Some(scalar) => (scalar, anchor),
                            None => (node, anchor),
                        }
                    }
                };
                if anchor > 0 {
                    let (size, height) = measure(&node);
                    let anchored = Anchored {
                        node: node.clone(),
                        size,
                        height,
                    };
                    self.anchors.insert(anchor, anchored);
                }
                Ok(self.push_value(node))
            }
            _ => Ok(None),
        }
    }

    /// What Kubernetes' YAML reader (go-yaml) makes of a plain `a:b:` written right before
    /// `,` or `]` in a flow sequence, as in `addresses: [1.2.3.4, 2001:db8::]`: one string,
    /// `2001:db8::` (go-yaml ends a plain scalar only at a `:` followed by a space). YAML
    /// 1.2 reads that `:` as a value indicator, giving the one-pair mapping
    /// `{"2001:db8:": null}`. Istio's configuration is written for go-yaml, so `node`, such
    /// a mapping, is read as go-yaml reads it; `None` for any other node.
    fn go_yaml_scalar(&self, node: &Node) -> Option<Node> {
        let Value::Map(entries) = &node.value else {
            return None;
        };
        let [entry] = entries.as_slice() else {
            return None;
        };
        let text = self.file.text().as_bytes();
        let key = entry.key_span;
        let implicit = text.get(node.span.start.offset) != Some(&b'{');
        let plain = !matches!(text.get(key.start.offset), Some(b'"' | b'\''));
        let colon_then_indicator = text.get(key.end.offset) == Some(&b':')
            && matches!(text.get(key.end.offset + 1), Some(b',' | b']' | b'}'));
        let key_whole = key.end.offset - key.start.offset == entry.key.len();
        if !(implicit
            && plain
            && colon_then_indicator
            && key_whole
            && entry.value.value == Value::Null)
        {
            return None;
        }
        let end = self.span_chars(key.start, entry.key.chars().count() + 1);
        Some(Node {
            value: Value::Str(format!("{}:", entry.key)),
            span: end,
        })
    }

    fn open(&mut self, start: Pos, anchor: usize, tag: Option<&Tag>, map: bool) -> Result<(), ()> {
        let span = self.span_line(start);
        if let Some(tag) = tag {
            let want = if map { "map" } else { "seq" };
            if tag.handle != "tag:yaml.org,2002:" || tag.suffix != want {
                self.unsupported_tag(tag, span);
            }
        }
        if let Some(Frame::Map {
            pending_key: None, ..
        }) = self.stack.last()
        {
            self.error(
                YamlErrorKind::ComplexKey,
                "a mapping key must be text, not a collection".into(),
                span,
            );
            return Err(());
        }
        if self.stack.len() >= MAX_DEPTH {
            self.error(
                YamlErrorKind::Limit,
                format!("nesting deeper than {MAX_DEPTH} levels"),
                span,
            );
            return Err(());
        }
        self.count(1, span)?;
        self.stack.push(if map {
            Frame::Map {
                span,
                anchor,
                entries: Vec::new(),
                keys: HashMap::new(),
                pending_key: None,
                merges: Vec::new(),
            }
        } else {
            Frame::Seq {
                span,
                anchor,
                items: Vec::new(),
            }
        });
        Ok(())
    }

    fn push_value(&mut self, node: Node) -> Option<Node> {
        match self.stack.last_mut() {
            None => Some(node),
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                None
            }
            Some(Frame::Map {
                entries,
                keys,
                pending_key,
                merges,
                ..
            }) => {
                let (key, key_span) = pending_key.take()?;
                if key == "<<" && matches!(node.value, Value::Map(_) | Value::Seq(_)) {
                    merges.push(node);
                    return None;
                }
                if let Some(first) = keys.get(&key).and_then(|&i| entries.get(i)) {
                    let related = Some(first.key_span);
                    self.errors.push(YamlError {
                        kind: YamlErrorKind::DuplicateKey,
                        message: format!("duplicate key `{key}` in a mapping"),
                        span: key_span,
                        related,
                        document: self.document,
                    });
                    return None;
                }
                keys.insert(key.clone(), entries.len());
                entries.push(Entry {
                    key,
                    key_span,
                    value: node,
                });
                None
            }
        }
    }

    fn resolve(
        &mut self,
        text: String,
        style: TScalarStyle,
        tag: Option<&Tag>,
        span: Span,
    ) -> Option<Value> {
        if let Some(tag) = tag {
            let core = tag.handle == "tag:yaml.org,2002:";
            let suffix = tag.suffix.as_str();
            if core && (suffix == "str" || suffix == "binary") {
                return Some(Value::Str(text));
            }
            if core && matches!(suffix, "int" | "float" | "bool" | "null") {
                let v = resolve_plain(&text);
                let ok = matches!(
                    (suffix, &v),
                    ("int", Value::Int(_))
                        | ("float", Value::Float(_) | Value::Int(_))
                        | ("bool", Value::Bool(_))
                        | ("null", Value::Null)
                );
                if !ok {
                    self.error(
                        YamlErrorKind::Tag,
                        format!("`{text}` is not a valid !!{suffix}"),
                        span,
                    );
                }
                return Some(match (suffix, v) {
                    ("float", Value::Int(i)) => Value::Float(i as f64),
                    (_, v) => v,
                });
            }
            self.unsupported_tag(tag, span);
            return None;
        }
        Some(match style {
            TScalarStyle::Plain => resolve_plain(&text),
            _ => Value::Str(text),
        })
    }
}

/// Applies YAML merge keys (`<<: *base`): entries written in the mapping win, then the
/// first merged mapping that has a key. `keys` indexes `entries` by key and is kept so.
fn merge_keys(entries: &mut Vec<Entry>, keys: &mut HashMap<String, usize>, merges: Vec<Node>) {
    for source in merges {
        let maps: Vec<Node> = match source.value {
            Value::Seq(items) => items,
            other => vec![Node {
                value: other,
                span: source.span,
            }],
        };
        for map in maps {
            if let Value::Map(extra) = map.value {
                for e in extra {
                    if !keys.contains_key(&e.key) {
                        keys.insert(e.key.clone(), entries.len());
                        entries.push(e);
                    }
                }
            }
        }
    }
}

/// The number of nodes in a tree (keys included) and its height: the number of collection
/// levels on its longest branch, 0 for a scalar. The depth of every tree is bounded by
/// [`MAX_DEPTH`], so the recursion is too.
fn measure(node: &Node) -> (usize, usize) {
    let (mut size, mut height) = (1usize, 0);
    let mut child = |node: &Node, key: usize| {
        let (s, h) = measure(node);
        size = size.saturating_add(s + key);
        height = height.max(h);
    };
    match &node.value {
        Value::Seq(items) => items.iter().for_each(|n| child(n, 0)),
        Value::Map(entries) => entries.iter().for_each(|e| child(&e.value, 1)),
        _ => return (1, 0),
    }
    (size, height + 1)
}

/// Resolves a plain (unquoted) scalar with the YAML 1.2 core schema.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(v) = resolve_int(text) {
        return v;
    }
    if is_core_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// Resolves a core-schema integer (`[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`).
///
/// Integers that fit in an `i64` are [`Value::Int`]. Larger ones are still numbers, but
/// [`Value`] has no unsigned or big integer, so they become a [`Value::Float`], as in other
/// YAML readers, and lose precision: that includes integers that fit in a `u64` but not in
/// an `i64` (`18446744073709551557` reads as `1.8446744073709552e19` and is reported as a
/// floating point number where an integer is expected). Hexadecimal and octal integers
/// beyond an `i64` become infinity, since Rust's float parser does not read them.
fn resolve_int(text: &str) -> Option<Value> {
    let (radix, digits) = if let Some(d) = text.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = text.strip_prefix("0o") {
        (8, d)
    } else {
        (10, text)
    };
    let unsigned = if radix == 10 {
        digits.strip_prefix(['-', '+']).unwrap_or(digits)
    } else {
        digits
    };
    if unsigned.is_empty() || !unsigned.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    match i64::from_str_radix(digits.strip_prefix('+').unwrap_or(digits), radix) {
        Ok(i) => Some(Value::Int(i)),
        // Too large for an i64 (see above).
        Err(_) => Some(Value::Float(text.parse::<f64>().unwrap_or(f64::INFINITY))),
    }
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}
