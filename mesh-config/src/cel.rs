//! The Common Expression Language (CEL) of Istio's Telemetry API, evaluated as Envoy
//! evaluates it.
//!
//! Access log filters (`accessLogging[].filter.expression`) and metric tag values are CEL
//! expressions over Envoy's request attributes, such as `response.code >= 400`. Istio only
//! parses them; Envoy compiles them once per configuration with its own runtime options and
//! evaluates them per request, where an evaluation error (a missing attribute or header, a
//! type mismatch) is not reported: the filter just does not match. This module does the
//! same in three steps:
//!
//! - one lexer and parser that builds a syntax tree; [`check`] is the syntax check that
//!   validation runs, with the lexical and expression grammar of the CEL specification;
//! - a planner, [`Filter::compile`], that resolves attribute paths, functions, header names
//!   and constant regular expressions once per configuration, and rejects what Envoy's
//!   runtime would not build: unknown functions, comprehension macros (`exists`, `all`,
//!   ...), message construction and, with Envoy's default [`Options`], `string()`;
//! - an evaluator over a request's [`Attributes`] that allocates nothing on the common
//!   paths and whose work is bounded by the size of the expression: CEL without
//!   comprehensions has no loops, and nesting is limited to CEL's 250 levels.
//!
//! The semantics are the CEL specification's as cel-cpp (Envoy's runtime) implements it:
//! heterogeneous equality (`1 == 1u`, `1 == 1.0` and `2 in [2.0]` hold; values of unrelated
//! types are unequal rather than an error), ordering across `int`, `uint` and `double` by
//! value, checked integer arithmetic (overflow and division by zero are errors), and the
//! commutative error absorption of `&&` and `||` (`error && false` is `false`,
//! `error || true` is `true`).
//!
//! ```
//! use mesh_config::cel::{AttributeMap, Filter, Value};
//!
//! let filter = Filter::compile("response.code >= 400 || request.headers['x-debug'] == 'true'").unwrap();
//! let ok = AttributeMap::new().with("response.code", 200i64);
//! assert!(!filter.matches(&ok));
//! assert!(filter.matches(&ok.clone().with_request_header("X-Debug", "true")));
//! assert!(filter.matches(&AttributeMap::new().with("response.code", Value::Int(503))));
//! // No `response.code` at all: an evaluation error, so the entry is not logged.
//! assert!(!Filter::compile("response.code >= 400").unwrap().matches(&AttributeMap::new()));
//! ```

use std::borrow::Cow;

use crate::calendar::{civil_from_days, days_from_civil};
use std::cmp::Ordering;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// cel-go's default recursion limit: nesting deeper than this is rejected.
pub const MAX_DEPTH: usize = 250;
/// cel-go's default expression size limit, in characters.
pub const MAX_CHARS: usize = 100_000;

// ---------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------

/// Checks the syntax of `src`: `Ok` when it is a syntactically valid CEL expression, else
/// what is wrong and where (1-based column). This is Istio's validation: functions and
/// attributes are not resolved (see [`Filter::compile`] for that).
pub fn check(src: &str) -> Result<(), String> {
    parse(src).map(|_| ())
}

/// Which optional parts of CEL's standard library the runtime offers. Envoy's runtime
/// turns them off ("security-oriented defaults" of its CEL evaluator), which
/// [`Options::ENVOY`], the default, reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `string(x)`. Off in Envoy: an expression that calls it does not compile.
    pub string_conversion: bool,
    /// `+` on strings and on bytes. Off in Envoy: `'a' + 'b'` is an evaluation error.
    pub string_concat: bool,
    /// `+` on lists. Off in Envoy: `[1] + [2]` is an evaluation error.
    pub list_concat: bool,
}

impl Options {
    /// Envoy's runtime options, used by access log filters and Istio's metric tags.
    pub const ENVOY: Options = Options {
        string_conversion: false,
        string_concat: false,
        list_concat: false,
    };
    /// CEL's whole standard library (without comprehensions).
    pub const STANDARD: Options = Options {
        string_conversion: true,
        string_concat: true,
        list_concat: true,
    };
}

impl Default for Options {
    fn default() -> Self {
        Options::ENVOY
    }
}

/// A compiled filter: compiled once per configuration, evaluated per request.
#[derive(Debug, Clone)]
pub struct Filter {
    source: String,
    root: Node,
    options: Options,
}

impl Filter {
    /// Compiles `expression` with Envoy's runtime [`Options`]. The error says what is
    /// wrong and at which column: a syntax error, an unknown function or one called with
    /// the wrong number of arguments, an invalid constant regular expression, or a part of
    /// CEL that Envoy's runtime does not offer (comprehensions, message construction,
    /// `string()`). Envoy rejects a configuration whose filter does not compile.
    pub fn compile(expression: &str) -> Result<Filter, String> {
        Filter::compile_with(expression, Options::ENVOY)
    }

    /// Compiles `expression` with the given runtime options.
    pub fn compile_with(expression: &str, options: Options) -> Result<Filter, String> {
        let expr = parse(expression)?;
        let root = Planner {
            src: expression,
            options,
        }
        .plan(&expr)?;
        Ok(Filter {
            source: expression.to_string(),
            root,
            options,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.source
    }

    /// Envoy's semantics: true only when the expression evaluates to boolean true; an
    /// evaluation error (missing attribute, type mismatch, missing map key) or a
    /// non-boolean result is false (the entry is not logged).
    pub fn matches(&self, attrs: &dyn Attributes) -> bool {
        let ctx = Ctx {
            attrs,
            options: self.options,
        };
        matches!(ctx.eval(&self.root), Ok(Val::Bool(true)))
    }

    /// The value of the expression for a request, or why it has none. Header maps and
    /// attribute namespaces (`request.headers`, `request`) cannot be returned as values.
    pub fn evaluate<'a>(&'a self, attrs: &'a dyn Attributes) -> Result<Value<'a>, EvalError> {
        let ctx = Ctx {
            attrs,
            options: self.options,
        };
        ctx.eval(&self.root)?.into_value()
    }
}

/// Why an expression has no value for a request (Envoy logs nothing in that case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(Cow<'static, str>);

impl EvalError {
    fn new(msg: impl Into<Cow<'static, str>>) -> Self {
        EvalError(msg.into())
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// What a request offers to expressions: Envoy's attribute vocabulary.
///
/// Attributes are named by their dotted path. The mesh provides Envoy's, with Envoy's
/// types (from Envoy's attribute documentation and its `expr/context.cc`):
///
/// | path | type |
/// | --- | --- |
/// | `request.path`, `request.url_path`, `request.host`, `request.scheme`, `request.method`, `request.referer`, `request.useragent`, `request.id`, `request.protocol`, `request.query` | string |
/// | `request.time` | timestamp |
/// | `request.duration` | duration |
/// | `request.size`, `request.total_size`, `request.headers_bytes` | int |
/// | `response.code`, `response.grpc_status`, `response.flags`, `response.size`, `response.total_size`, `response.headers_bytes` | int |
/// | `response.code_details` | string |
/// | `response.backend_latency` | duration |
/// | `source.address`, `destination.address`, `upstream.address` | string (`ip:port`) |
/// | `source.port`, `destination.port`, `upstream.port` | int |
/// | `connection.mtls` | bool |
/// | `connection.requested_server_name`, `connection.tls_version` | string |
/// | `connection.id` | uint |
/// | `xds.cluster_name`, `xds.route_name` | string |
///
/// `request.headers`, `response.headers` and `response.trailers` are maps keyed by
/// lower-case header name, read through [`Attributes::request_header`] and its siblings
/// (values of repeated headers comma-joined, as Envoy does). Other roots (`metadata`,
/// `filter_state`, ...) are read through [`Attributes::attribute`] too, as maps or lists.
pub trait Attributes {
    /// The attribute at `path` (`"response.code"`, `"request.url_path"`, ...); None when
    /// the request has no such attribute.
    fn attribute(&self, path: &str) -> Option<Value<'_>>;
    /// A request header by lower-case name (for `request.headers['x']`).
    fn request_header(&self, name: &str) -> Option<&str>;
    /// A response header by lower-case name (for `response.headers['x']`).
    fn response_header(&self, name: &str) -> Option<&str>;
    /// A response trailer by lower-case name (for `response.trailers['grpc-status']`).
    fn response_trailer(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// A CEL value, as attributes provide it and [`Filter::evaluate`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int`: 64-bit signed.
    Int(i64),
    /// `uint`: 64-bit unsigned.
    Uint(u64),
    /// `double`.
    Double(f64),
    /// `string`.
    String(Cow<'a, str>),
    /// `bytes`.
    Bytes(Cow<'a, [u8]>),
    /// `google.protobuf.Duration` (non-negative here; CEL's may be negative, which
    /// [`Filter::evaluate`] reports as an error).
    Duration(Duration),
    /// `google.protobuf.Timestamp`.
    Timestamp(SystemTime),
    /// `list`.
    List(Vec<Value<'a>>),
    /// `map`, as its entries (keys are `int`, `uint`, `bool` or `string`).
    Map(Vec<(Value<'a>, Value<'a>)>),
}

impl Value<'_> {
    /// The same value borrowing from `self` (strings and bytes are not copied).
    pub fn borrowed(&self) -> Value<'_> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Uint(u) => Value::Uint(*u),
            Value::Double(d) => Value::Double(*d),
            Value::String(s) => Value::String(Cow::Borrowed(s)),
            Value::Bytes(b) => Value::Bytes(Cow::Borrowed(b)),
            Value::Duration(d) => Value::Duration(*d),
            Value::Timestamp(t) => Value::Timestamp(*t),
            Value::List(l) => Value::List(l.iter().map(Value::borrowed).collect()),
            Value::Map(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.borrowed(), v.borrowed()))
                    .collect(),
            ),
        }
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value<'_> {
    fn from(v: u64) -> Self {
        Value::Uint(v)
    }
}
impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::String(Cow::Borrowed(v))
    }
}
impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::String(Cow::Owned(v))
    }
}
impl From<Duration> for Value<'_> {
    fn from(v: Duration) -> Self {
        Value::Duration(v)
    }
}
impl From<SystemTime> for Value<'_> {
    fn from(v: SystemTime) -> Self {
        Value::Timestamp(v)
    }
}

/// A request's attributes held in memory: for tests, examples and callers that collect
/// attributes up front. Header names are matched case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct AttributeMap {
    attributes: Vec<(String, Value<'static>)>,
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    response_trailers: Vec<(String, String)>,
}

impl AttributeMap {
    /// No attributes, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the attribute at `path` (replacing an earlier value).
    pub fn with(mut self, path: &str, value: impl Into<Value<'static>>) -> Self {
        let value = value.into();
        match self.attributes.iter_mut().find(|(p, _)| p == path) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((path.to_string(), value)),
        }
        self
    }

    /// Adds a request header (a repeated name is comma-joined, as Envoy does).
    pub fn with_request_header(mut self, name: &str, value: &str) -> Self {
        add_header(&mut self.request_headers, name, value);
        self
    }

    /// Adds a response header.
    pub fn with_response_header(mut self, name: &str, value: &str) -> Self {
        add_header(&mut self.response_headers, name, value);
        self
    }

    /// Adds a response trailer.
    pub fn with_response_trailer(mut self, name: &str, value: &str) -> Self {
        add_header(&mut self.response_trailers, name, value);
        self
    }
}

fn add_header(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    let name = name.to_ascii_lowercase();
    match headers.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => {
            v.push(',');
            v.push_str(value);
        }
        None => headers.push((name, value.to_string())),
    }
}

fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Attributes for AttributeMap {
    fn attribute(&self, path: &str) -> Option<Value<'_>> {
        self.attributes
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.borrowed())
    }
    fn request_header(&self, name: &str) -> Option<&str> {
        find_header(&self.request_headers, name)
    }
    fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response_headers, name)
    }
    fn response_trailer(&self, name: &str) -> Option<&str> {
        find_header(&self.response_trailers, name)
    }
}

// ---------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------

const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Literal,
    Op(&'static str),
    In,
}

#[derive(Debug, Clone, Copy)]
struct Tok<'s> {
    kind: Kind,
    text: &'s str,
    at: usize,
}

fn column(src: &str, at: usize) -> usize {
    src.get(..at).map_or(at, |s| s.chars().count()) + 1
}

fn too_deep() -> String {
    format!("the expression is nested more than {MAX_DEPTH} levels deep")
}

fn lex(src: &str) -> Result<Vec<Tok<'_>>, String> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    let err = |at: usize, what: String| format!("{what} at column {}", column(src, at));
    while i < b.len() {
        let c = b[i];
        let start = i;
        let next = b.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if next == Some(b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                let is_prefix =
                    matches!(word.to_ascii_lowercase().as_str(), "r" | "b" | "rb" | "br");
                if is_prefix && matches!(b.get(i), Some(b'"' | b'\'')) {
                    let raw = word.contains(['r', 'R']);
                    i = string_end(src, i, raw).map_err(|e| err(start, e))?;
                    toks.push(Tok {
                        kind: Kind::Literal,
                        text: &src[start..i],
                        at: start,
                    });
                    continue;
                }
                let kind = match word {
                    "true" | "false" | "null" => Kind::Literal,
                    "in" => Kind::In,
                    w if RESERVED.contains(&w) => {
                        return Err(err(start, format!("`{w}` is a reserved word")));
                    }
                    _ => Kind::Ident,
                };
                toks.push(Tok {
                    kind,
                    text: word,
                    at: start,
                });
                continue;
            }
            b'0'..=b'9' => i = number_end(b, i),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => i = number_end(b, i),
            b'"' | b'\'' => i = string_end(src, i, false).map_err(|e| err(start, e))?,
            _ => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op = ["==", "!=", "<=", ">=", "&&", "||"]
                    .into_iter()
                    .find(|o| *o == two);
                let op = match op {
                    Some(o) => o,
                    None => {
                        let one = [
                            "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",", "[", "]",
                            "(", ")", "{", "}",
                        ]
                        .into_iter()
                        .find(|o| o.as_bytes()[0] == c);
                        match one {
                            Some(o) => o,
                            None => {
                                let ch = src[i..].chars().next().unwrap_or('?');
                                let hint = match ch {
                                    '=' => " (use `==` to compare)",
                                    '&' => " (use `&&`)",
                                    '|' => " (use `||`)",
                                    _ => "",
                                };
                                return Err(err(i, format!("unexpected `{ch}`{hint}")));
                            }
                        }
                    }
                };
                i += op.len();
                toks.push(Tok {
                    kind: Kind::Op(op),
                    text: op,
                    at: start,
                });
                continue;
            }
        }
        toks.push(Tok {
            kind: Kind::Literal,
            text: &src[start..i],
            at: start,
        });
    }
    Ok(toks)
}

/// The end of the number starting at `i`: decimal or hexadecimal integers (with an
/// optional `u`), and floating point numbers with a fraction, an exponent or both.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |mut i: usize, hex: bool| {
        while i < b.len() && (b[i].is_ascii_digit() || (hex && b[i].is_ascii_hexdigit())) {
            i += 1;
        }
        i
    };
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        let end = digits(i + 2, true);
        if end > i + 2 {
            i = end;
            if matches!(b.get(i), Some(b'u' | b'U')) {
                i += 1;
            }
            return i;
        }
    }
    i = digits(i, false);
    let mut float = false;
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits(i + 1, false);
        float = true;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(j, false);
            float = true;
        }
    }
    if !float && matches!(b.get(i), Some(b'u' | b'U')) {
        i += 1;
    }
    i
}

/// The end of the string literal whose quote is at `i`.
fn string_end(src: &str, mut i: usize, raw: bool) -> Result<usize, String> {
    let b = src.as_bytes();
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    i += if triple { 3 } else { 1 };
    loop {
        let Some(&c) = b.get(i) else {
            return Err("unterminated string".into());
        };
        if triple {
            if c == q && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
                return Ok(i + 3);
            }
        } else if c == q {
            return Ok(i + 1);
        } else if c == b'\n' || c == b'\r' {
            return Err("unterminated string (use triple quotes for several lines)".into());
        }
        if c == b'\\' && !raw {
            i = escape_end(b, i)?;
        } else {
            i += src[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
}

/// The end of the escape sequence whose backslash is at `i`.
fn escape_end(b: &[u8], i: usize) -> Result<usize, String> {
    let hex = |from: usize, n: usize| {
        (from..from + n).all(|j| b.get(j).is_some_and(u8::is_ascii_hexdigit))
    };
    match b.get(i + 1) {
        Some(
            b'\\' | b'\'' | b'"' | b'`' | b'?' | b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v',
        ) => Ok(i + 2),
        Some(b'x' | b'X') if hex(i + 2, 2) => Ok(i + 4),
        Some(b'u') if hex(i + 2, 4) => Ok(i + 6),
        Some(b'U') if hex(i + 2, 8) => Ok(i + 10),
        Some(b'0'..=b'3')
            if b.get(i + 2).is_some_and(|c| (b'0'..=b'7').contains(c))
                && b.get(i + 3).is_some_and(|c| (b'0'..=b'7').contains(c)) =>
        {
            Ok(i + 4)
        }
        _ => Err("invalid escape sequence in string".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Literals
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
}

/// The value of a numeric literal, negated when `negative` (so that
/// `-9223372036854775808` is an `int`).
fn number_lit(text: &str, negative: bool) -> Result<Lit, String> {
    let (body, unsigned) = match text.strip_suffix(['u', 'U']) {
        Some(b) => (b, true),
        None => (text, false),
    };
    let hex = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X"));
    let is_float = hex.is_none() && body.contains(['.', 'e', 'E']);
    if is_float {
        let d: f64 = body
            .parse()
            .map_err(|_| format!("invalid double literal `{text}`"))?;
        if !d.is_finite() {
            return Err(format!("double literal `{text}` is out of range"));
        }
        return Ok(Lit::Double(if negative { -d } else { d }));
    }
    let magnitude = match hex {
        Some(h) => u64::from_str_radix(h, 16),
        None => body.parse::<u64>(),
    }
    .map_err(|_| format!("integer literal `{text}` is out of range"))?;
    if unsigned {
        return Ok(Lit::Uint(magnitude));
    }
    let signed = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    signed
        .map(Lit::Int)
        .ok_or_else(|| format!("integer literal `{text}` is out of range"))
}

/// The value of a string or bytes literal token (prefix, quotes and all).
fn string_lit(text: &str) -> Result<Lit, String> {
    let quote = text.find(['"', '\'']).unwrap_or(0);
    let prefix = &text[..quote];
    let raw = prefix.contains(['r', 'R']);
    let bytes = prefix.contains(['b', 'B']);
    let rest = &text[quote..];
    let q = rest.as_bytes().first().copied().unwrap_or(b'"');
    let triple =
        rest.len() >= 6 && rest.as_bytes().get(1) == Some(&q) && rest.as_bytes().get(2) == Some(&q);
    let n = if triple { 3 } else { 1 };
    let body = rest
        .get(n..rest.len().saturating_sub(n))
        .ok_or("unterminated string")?;
    let normalized;
    let body = if triple && body.contains('\r') {
        normalized = body.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        body
    };
    let out = if raw {
        body.as_bytes().to_vec()
    } else {
        unescape(body, bytes)?
    };
    if bytes {
        Ok(Lit::Bytes(out))
    } else {
        String::from_utf8(out)
            .map(Lit::Str)
            .map_err(|_| "invalid UTF-8 in string".to_string())
    }
}

/// Decodes CEL's escapes: in strings `\x`, octal, `\u` and `\U` are code points; in bytes
/// `\x` and octal are bytes and `\u`/`\U` are not allowed.
fn unescape(body: &str, bytes: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.char_indices();
    let bad = || "invalid escape sequence in string".to_string();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let (_, e) = chars.next().ok_or_else(bad)?;
        let simple = match e {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' | '\'' | '"' | '`' | '?' => Some(e as u8),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let (digits, radix) = match e {
            'x' | 'X' => (2, 16),
            'u' if !bytes => (4, 16),
            'U' if !bytes => (8, 16),
            '0'..='3' => (2, 8),
            'u' | 'U' => return Err("unicode escape in a bytes literal".into()),
            _ => return Err(bad()),
        };
        let mut v: u32 = if radix == 8 {
            u32::from(e) - u32::from('0')
        } else {
            0
        };
        for _ in 0..digits {
            let (_, d) = chars.next().ok_or_else(bad)?;
            v = v * radix + d.to_digit(radix).ok_or_else(bad)?;
        }
        let code_point = matches!(e, 'u' | 'U') || !bytes;
        if code_point {
            let ch = char::from_u32(v).ok_or_else(|| "invalid unicode code point".to_string())?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        } else {
            out.push(u8::try_from(v).map_err(|_| bad())?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Syntax tree and parser
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    fn name(self) -> &'static str {
        match self {
            BinOp::Eq => "_==_",
            BinOp::Ne => "_!=_",
            BinOp::Lt => "_<_",
            BinOp::Le => "_<=_",
            BinOp::Gt => "_>_",
            BinOp::Ge => "_>=_",
            BinOp::In => "@in",
            BinOp::Add => "_+_",
            BinOp::Sub => "_-_",
            BinOp::Mul => "_*_",
            BinOp::Div => "_/_",
            BinOp::Rem => "_%_",
        }
    }
}

/// A syntax tree node, boxed so that the parser's recursive frames stay small.
type Expr = Box<ExprNode>;

#[derive(Debug, Clone)]
struct ExprNode {
    kind: ExprKind,
    /// Byte offset in the source, for messages.
    at: usize,
    /// The depth of the tree below and including this node.
    depth: usize,
}

#[derive(Debug, Clone)]
enum ExprKind {
    Lit(Lit),
    Ident(String),
    Select(Expr, String),
    /// `has(operand.field)`.
    Has(Expr, String),
    Index(Expr, Expr),
    Call {
        target: Option<Expr>,
        name: String,
        args: Vec<Expr>,
    },
    Not(Expr),
    Neg(Expr),
    Binary(BinOp, Expr, Expr),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cond(Expr, Expr, Expr),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    Struct(String, Vec<(String, Expr)>),
}

impl ExprKind {
    fn child_depth(&self) -> usize {
        let max = |xs: &[Expr]| xs.iter().map(|e| e.depth).max().unwrap_or(0);
        match self {
            ExprKind::Lit(_) | ExprKind::Ident(_) => 0,
            ExprKind::Select(e, _) | ExprKind::Has(e, _) | ExprKind::Not(e) | ExprKind::Neg(e) => {
                e.depth
            }
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => a.depth.max(b.depth),
            ExprKind::Call { target, args, .. } => {
                max(args).max(target.as_ref().map_or(0, |t| t.depth))
            }
            ExprKind::And(xs) | ExprKind::Or(xs) | ExprKind::List(xs) => max(xs),
            ExprKind::Cond(a, b, c) => a.depth.max(b.depth).max(c.depth),
            ExprKind::Map(kv) => kv
                .iter()
                .map(|(k, v)| k.depth.max(v.depth))
                .max()
                .unwrap_or(0),
            ExprKind::Struct(_, fs) => fs.iter().map(|(_, v)| v.depth).max().unwrap_or(0),
        }
    }
}

/// Where the qualified name `e` (`a.b.c`) starts.
fn first_offset(e: &ExprNode) -> usize {
    let mut e = e;
    while let ExprKind::Select(operand, _) = &e.kind {
        e = operand;
    }
    e.at
}

fn parse(src: &str) -> Result<Expr, String> {
    if src.chars().count() > MAX_CHARS {
        return Err(format!(
            "the expression is longer than {MAX_CHARS} characters"
        ));
    }
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err("the expression is empty".into());
    }
    let mut p = Parser {
        src,
        toks: &toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    match p.toks.get(p.pos) {
        None => Ok(e),
        Some(t) => Err(p.unexpected(t)),
    }
}

#[derive(Debug, Clone, Copy)]
enum BinOrLogic {
    Bin(BinOp),
    /// `||` when true, `&&` when false.
    Logic(bool),
}

const COMPREHENSIONS: &[&str] = &["all", "exists", "exists_one", "filter", "map"];

struct Parser<'s, 't> {
    src: &'s str,
    toks: &'t [Tok<'s>],
    pos: usize,
    depth: usize,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<Kind> {
        self.toks.get(self.pos).map(|t| t.kind)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.src.len(), |t| t.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Kind::Op(o)) if o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self, t: &Tok<'_>) -> String {
        format!(
            "unexpected `{}` at column {}",
            t.text,
            column(self.src, t.at)
        )
    }

    fn fail(&self, expected: &str) -> String {
        match self.toks.get(self.pos) {
            Some(t) => format!("{}: expected {expected}", self.unexpected(t)),
            None => format!("unexpected end of expression: expected {expected}"),
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(self.fail(&format!("`{op}`")))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.toks.get(self.pos) {
            Some(t) if t.kind == Kind::Ident => {
                self.pos += 1;
                Ok(t.text.to_string())
            }
            _ => Err(self.fail("a name")),
        }
    }

    fn node(&self, kind: ExprKind, at: usize) -> Result<Expr, String> {
        let depth = kind.child_depth() + 1;
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(Box::new(ExprNode { kind, at, depth }))
    }

    fn at_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Kind::Op(o)) if o == op)
    }

    // The functions from `expr` to `primary` recurse once per nesting level, so they keep
    // their own stack frames small and leave the rest to helpers: the deepest expression
    // accepted must parse on a small thread stack, in debug builds too.

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(too_deep());
        }
        let cond = self.binary(0)?;
        let e = if self.at_op("?") {
            self.ternary(cond)?
        } else {
            cond
        };
        self.depth -= 1;
        Ok(e)
    }

    #[inline(never)]
    fn ternary(&mut self, cond: Expr) -> Result<Expr, String> {
        let at = self.at();
        self.pos += 1;
        let a = self.binary(0)?;
        self.expect(":")?;
        let b = self.expr()?;
        self.node(ExprKind::Cond(cond, a, b), at)
    }

    /// The binary operator at the cursor and its precedence: `||`, `&&`, relations,
    /// `+ -`, `* / %` from loosest to tightest.
    fn binary_op(&self) -> Option<(BinOrLogic, u8)> {
        use BinOrLogic::{Bin, Logic};
        Some(match self.peek()? {
            Kind::In => (Bin(BinOp::In), 2),
            Kind::Op(o) => match o {
                "||" => (Logic(true), 0),
                "&&" => (Logic(false), 1),
                "<" => (Bin(BinOp::Lt), 2),
                "<=" => (Bin(BinOp::Le), 2),
                ">" => (Bin(BinOp::Gt), 2),
                ">=" => (Bin(BinOp::Ge), 2),
                "==" => (Bin(BinOp::Eq), 2),
                "!=" => (Bin(BinOp::Ne), 2),
                "+" => (Bin(BinOp::Add), 3),
                "-" => (Bin(BinOp::Sub), 3),
                "*" => (Bin(BinOp::Mul), 4),
                "/" => (Bin(BinOp::Div), 4),
                "%" => (Bin(BinOp::Rem), 4),
                _ => return None,
            },
            _ => return None,
        })
    }

    /// Binary operators by precedence climbing, all left-associative.
    fn binary(&mut self, min: u8) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some((op, prec)) = self.binary_op() {
            if prec < min {
                break;
            }
            let at = self.at();
            self.pos += 1;
            let right = self.binary(prec + 1)?;
            left = self.combine(op, left, right, at)?;
        }
        Ok(left)
    }

    /// `left op right`; chains of `||` and of `&&` become one flat node (CEL's parser
    /// balances them), so that long disjunctions do not nest.
    #[inline(never)]
    fn combine(&self, op: BinOrLogic, left: Expr, right: Expr, at: usize) -> Result<Expr, String> {
        let or = match op {
            BinOrLogic::Bin(op) => {
                return self.node(ExprKind::Binary(op, left, right), at);
            }
            BinOrLogic::Logic(or) => or,
        };
        let depth = left.depth.max(right.depth + 1);
        let ExprNode {
            kind,
            at: left_at,
            depth: left_depth,
        } = *left;
        match kind {
            ExprKind::Or(mut terms) if or => {
                terms.push(right);
                Ok(Box::new(ExprNode {
                    kind: ExprKind::Or(terms),
                    at: left_at,
                    depth,
                }))
            }
            ExprKind::And(mut terms) if !or => {
                terms.push(right);
                Ok(Box::new(ExprNode {
                    kind: ExprKind::And(terms),
                    at: left_at,
                    depth,
                }))
            }
            kind => {
                let first = Box::new(ExprNode {
                    kind,
                    at: left_at,
                    depth: left_depth,
                });
                let terms = vec![first, right];
                self.node(
                    if or {
                        ExprKind::Or(terms)
                    } else {
                        ExprKind::And(terms)
                    },
                    at,
                )
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let at = self.at();
        let (op, odd) = self.prefix();
        if op == "-"
            && odd
            && let Some(lit) = self.negative_number()?
        {
            return Ok(lit);
        }
        let m = self.member()?;
        self.apply_prefix(op, odd, m, at)
    }

    /// A run of `!` or of `-`: which, and whether its length is odd (an even number
    /// cancels out, as in CEL's parser).
    #[inline(never)]
    fn prefix(&mut self) -> (&'static str, bool) {
        for op in ["!", "-"] {
            if self.eat(op) {
                let mut odd = true;
                while self.eat(op) {
                    odd = !odd;
                }
                return (op, odd);
            }
        }
        ("", false)
    }

    #[inline(never)]
    fn apply_prefix(&self, op: &str, odd: bool, e: Expr, at: usize) -> Result<Expr, String> {
        match (op, odd) {
            ("!", true) => self.node(ExprKind::Not(e), at),
            ("-", true) => self.node(ExprKind::Neg(e), at),
            _ => Ok(e),
        }
    }

    /// A negative `int` or `double` literal (`-9223372036854775808` is an `int`).
    #[inline(never)]
    fn negative_number(&mut self) -> Result<Option<Expr>, String> {
        let Some(t) = self.toks.get(self.pos) else {
            return Ok(None);
        };
        let numeric = t.kind == Kind::Literal
            && t.text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && !t.text.ends_with(['u', 'U']);
        let continued = matches!(
            self.toks.get(self.pos + 1).map(|n| n.kind),
            Some(Kind::Op(".") | Kind::Op("["))
        );
        if !numeric || continued {
            return Ok(None);
        }
        self.pos += 1;
        let lit = number_lit(t.text, true)
            .map_err(|e| format!("{e} at column {}", column(self.src, t.at)))?;
        self.node(ExprKind::Lit(lit), t.at).map(Some)
    }

    fn member(&mut self) -> Result<Expr, String> {
        // `qualified` is the dotted name while the expression is one (`a.b.c`), which a
        // message construction `{field: value}` may follow.
        let (mut e, mut qualified) = self.primary()?;
        loop {
            if self.at_op(".") {
                (e, qualified) = self.select(e, qualified)?;
            } else if self.at_op("[") {
                e = self.index(e)?;
                qualified = None;
            } else if qualified.is_some() && self.at_op("{") {
                e = self.construct(qualified.take(), e)?;
            } else {
                return Ok(e);
            }
        }
    }

    /// `.name` or `.name(args)` after `e`.
    #[inline(never)]
    fn select(
        &mut self,
        e: Expr,
        qualified: Option<String>,
    ) -> Result<(Expr, Option<String>), String> {
        let at = self.at();
        self.pos += 1;
        let name = self.ident()?;
        if self.at_op("(") {
            let args = self.args()?;
            return Ok((self.call(Some(e), name, args, at)?, None));
        }
        let qualified = qualified.map(|q| format!("{q}.{name}"));
        Ok((self.node(ExprKind::Select(e, name), at)?, qualified))
    }

    /// `[index]` after `e`.
    #[inline(never)]
    fn index(&mut self, e: Expr) -> Result<Expr, String> {
        let at = self.at();
        self.pos += 1;
        let i = self.expr()?;
        self.expect("]")?;
        self.node(ExprKind::Index(e, i), at)
    }

    /// A message construction `name{field: value}`.
    #[inline(never)]
    fn construct(&mut self, name: Option<String>, e: Expr) -> Result<Expr, String> {
        // The construction is reported where its type name starts.
        let at = first_offset(&e);
        let fields = self.fields()?;
        self.node(ExprKind::Struct(name.unwrap_or_default(), fields), at)
    }

    /// A primary expression, with its name when it is one (not a call).
    fn primary(&mut self) -> Result<(Expr, Option<String>), String> {
        match self.peek() {
            Some(Kind::Op("(")) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(")")?;
                Ok((e, None))
            }
            Some(Kind::Op("[")) => self.list(),
            Some(Kind::Op("{")) => self.map(),
            Some(Kind::Literal) => self.literal(),
            Some(Kind::Op(".") | Kind::Ident) => self.name(),
            _ => Err(self.fail("a value, a name or `(`")),
        }
    }

    /// A name or a global call, with an optional leading `.`.
    #[inline(never)]
    fn name(&mut self) -> Result<(Expr, Option<String>), String> {
        let at = self.at();
        self.eat(".");
        let name = self.ident()?;
        if self.at_op("(") {
            let args = self.args()?;
            return Ok((self.call(None, name, args, at)?, None));
        }
        let e = self.node(ExprKind::Ident(name.clone()), at)?;
        Ok((e, Some(name)))
    }

    #[inline(never)]
    fn literal(&mut self) -> Result<(Expr, Option<String>), String> {
        let Some(t) = self.toks.get(self.pos).copied() else {
            return Err(self.fail("a value"));
        };
        self.pos += 1;
        let lit = match t.text {
            "true" => Ok(Lit::Bool(true)),
            "false" => Ok(Lit::Bool(false)),
            "null" => Ok(Lit::Null),
            s if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') => number_lit(s, false),
            s => string_lit(s),
        }
        .map_err(|e| format!("{e} at column {}", column(self.src, t.at)))?;
        Ok((self.node(ExprKind::Lit(lit), t.at)?, None))
    }

    /// A call, with CEL's parse-time macro checks: `has(a.b)` becomes a presence test,
    /// and a comprehension's variable must be a simple name.
    #[inline(never)]
    fn call(
        &self,
        target: Option<Expr>,
        name: String,
        mut args: Vec<Expr>,
        at: usize,
    ) -> Result<Expr, String> {
        let col = column(self.src, at);
        if target.is_none() && name == "has" && args.len() == 1 {
            return match args.pop().map(|a| a.kind) {
                Some(ExprKind::Select(operand, field)) => {
                    self.node(ExprKind::Has(operand, field), at)
                }
                _ => Err(format!(
                    "invalid argument to has() macro at column {col}: expected a field selection such as `has(request.headers.x)`"
                )),
            };
        }
        let comprehension = COMPREHENSIONS.contains(&name.as_str())
            && (args.len() == 2 || (name == "map" && args.len() == 3));
        if target.is_some()
            && comprehension
            && !matches!(args.first().map(|a| &a.kind), Some(ExprKind::Ident(_)))
        {
            return Err(format!(
                "the first argument of `{name}` at column {col} must be a simple name"
            ));
        }
        self.node(ExprKind::Call { target, name, args }, at)
    }

    /// Call arguments: `(a, b)`.
    #[inline(never)]
    fn args(&mut self) -> Result<Vec<Expr>, String> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        args.push(self.expr()?);
        while self.eat(",") {
            args.push(self.expr()?);
        }
        self.expect(")")?;
        Ok(args)
    }

    /// A list literal `[a, b,]`.
    #[inline(never)]
    fn list(&mut self) -> Result<(Expr, Option<String>), String> {
        let at = self.at();
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.eat("]") {
                break;
            }
            items.push(self.expr()?);
            if !self.eat(",") {
                self.expect("]")?;
                break;
            }
        }
        Ok((self.node(ExprKind::List(items), at)?, None))
    }

    /// A map literal `{k: v,}`.
    #[inline(never)]
    fn map(&mut self) -> Result<(Expr, Option<String>), String> {
        let at = self.at();
        self.pos += 1;
        let mut entries = Vec::new();
        loop {
            if self.eat("}") {
                break;
            }
            let k = self.expr()?;
            self.expect(":")?;
            let v = self.expr()?;
            entries.push((k, v));
            if !self.eat(",") {
                self.expect("}")?;
                break;
            }
        }
        Ok((self.node(ExprKind::Map(entries), at)?, None))
    }

    /// Message fields `{name: value, ...}`.
    #[inline(never)]
    fn fields(&mut self) -> Result<Vec<(String, Expr)>, String> {
        self.expect("{")?;
        let mut fields = Vec::new();
        loop {
            if self.eat("}") {
                return Ok(fields);
            }
            let name = self.ident()?;
            self.expect(":")?;
            fields.push((name, self.expr()?));
            if !self.eat(",") {
                self.expect("}")?;
                return Ok(fields);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Planner: the syntax tree resolved against Envoy's vocabulary and functions
// ---------------------------------------------------------------------------------------

/// A constant value of a compiled expression.
#[derive(Debug, Clone)]
enum Const {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    List(Box<[Const]>),
    Map(Box<[(Const, Const)]>),
}

impl Const {
    fn val(&self) -> Val<'_> {
        match self {
            Const::Null => Val::Null,
            Const::Bool(b) => Val::Bool(*b),
            Const::Int(i) => Val::Int(*i),
            Const::Uint(u) => Val::Uint(*u),
            Const::Double(d) => Val::Double(*d),
            Const::Str(s) => Val::Str(Cow::Borrowed(s)),
            Const::Bytes(b) => Val::Bytes(Cow::Borrowed(b)),
            Const::List(l) => Val::List(List::Const(l)),
            Const::Map(m) => Val::Map(Map::Const(m)),
        }
    }
}

/// The attribute namespaces of Envoy's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Request,
    Response,
    Source,
    Destination,
    Connection,
    Upstream,
    Xds,
    Metadata,
    FilterState,
    UpstreamFilterState,
}

impl Root {
    const ALL: [Root; 10] = [
        Root::Request,
        Root::Response,
        Root::Source,
        Root::Destination,
        Root::Connection,
        Root::Upstream,
        Root::Xds,
        Root::Metadata,
        Root::FilterState,
        Root::UpstreamFilterState,
    ];

    fn name(self) -> &'static str {
        match self {
            Root::Request => "request",
            Root::Response => "response",
            Root::Source => "source",
            Root::Destination => "destination",
            Root::Connection => "connection",
            Root::Upstream => "upstream",
            Root::Xds => "xds",
            Root::Metadata => "metadata",
            Root::FilterState => "filter_state",
            Root::UpstreamFilterState => "upstream_filter_state",
        }
    }

    fn find(name: &str) -> Option<Root> {
        Root::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The header map at `root.field`, if it is one.
    fn headers(self, field: &str) -> Option<Hdr> {
        match (self, field) {
            (Root::Request, "headers") => Some(Hdr::Request),
            (Root::Response, "headers") => Some(Hdr::Response),
            (Root::Response, "trailers") => Some(Hdr::Trailers),
            _ => None,
        }
    }
}

/// A header map: request headers, response headers or response trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hdr {
    Request,
    Response,
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimePart {
    FullYear,
    Month,
    DayOfYear,
    DayOfMonth,
    Date,
    DayOfWeek,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

/// A function, with the argument counts of its global form (`f(x)`) and of its receiver
/// form (`x.f()`), `None` when it has no such form.
type Forms = (Func, Option<&'static [usize]>, Option<&'static [usize]>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Size,
    StartsWith,
    EndsWith,
    Contains,
    Matches,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Dyn,
    Duration,
    Timestamp,
    Time(TimePart),
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::Size => "size",
            Func::StartsWith => "startsWith",
            Func::EndsWith => "endsWith",
            Func::Contains => "contains",
            Func::Matches => "matches",
            Func::Int => "int",
            Func::Uint => "uint",
            Func::Double => "double",
            Func::String => "string",
            Func::Bytes => "bytes",
            Func::Dyn => "dyn",
            Func::Duration => "duration",
            Func::Timestamp => "timestamp",
            Func::Time(p) => match p {
                TimePart::FullYear => "getFullYear",
                TimePart::Month => "getMonth",
                TimePart::DayOfYear => "getDayOfYear",
                TimePart::DayOfMonth => "getDayOfMonth",
                TimePart::Date => "getDate",
                TimePart::DayOfWeek => "getDayOfWeek",
                TimePart::Hours => "getHours",
                TimePart::Minutes => "getMinutes",
                TimePart::Seconds => "getSeconds",
                TimePart::Milliseconds => "getMilliseconds",
            },
        }
    }

    /// The function called `name`, with its forms.
    fn find(name: &str) -> Option<Forms> {
        const ONE: &[usize] = &[1];
        const TWO: &[usize] = &[2];
        const NONE: &[usize] = &[0];
        const TZ: &[usize] = &[0, 1];
        let time = |p| Some((Func::Time(p), None, Some(TZ)));
        match name {
            "size" => Some((Func::Size, Some(ONE), Some(NONE))),
            "startsWith" => Some((Func::StartsWith, Some(TWO), Some(ONE))),
            "endsWith" => Some((Func::EndsWith, Some(TWO), Some(ONE))),
            "contains" => Some((Func::Contains, Some(TWO), Some(ONE))),
            "matches" => Some((Func::Matches, Some(TWO), Some(ONE))),
            "int" => Some((Func::Int, Some(ONE), None)),
            "uint" => Some((Func::Uint, Some(ONE), None)),
            "double" => Some((Func::Double, Some(ONE), None)),
            "string" => Some((Func::String, Some(ONE), None)),
            "bytes" => Some((Func::Bytes, Some(ONE), None)),
            "dyn" => Some((Func::Dyn, Some(ONE), None)),
            "duration" => Some((Func::Duration, Some(ONE), None)),
            "timestamp" => Some((Func::Timestamp, Some(ONE), None)),
            "getFullYear" => time(TimePart::FullYear),
            "getMonth" => time(TimePart::Month),
            "getDayOfYear" => time(TimePart::DayOfYear),
            "getDayOfMonth" => time(TimePart::DayOfMonth),
            "getDate" => time(TimePart::Date),
            "getDayOfWeek" => time(TimePart::DayOfWeek),
            "getHours" => time(TimePart::Hours),
            "getMinutes" => time(TimePart::Minutes),
            "getSeconds" => time(TimePart::Seconds),
            "getMilliseconds" => time(TimePart::Milliseconds),
            _ => None,
        }
    }
}

/// A compiled expression.
#[derive(Debug, Clone)]
enum Node {
    Const(Const),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An attribute by its full dotted path.
    Attr(Box<str>),
    /// A bare namespace (`request`), indexed dynamically.
    Root(Root),
    Headers(Hdr),
    /// One header by its lower-case name.
    Header(Hdr, Box<str>),
    HasAttr(Box<str>),
    HasHeader(Hdr, Box<str>),
    /// A name that is not in Envoy's activation: an error when evaluated.
    Unbound(Box<str>),
    Select(Box<Node>, Box<str>),
    Has(Box<Node>, Box<str>),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    /// A function call; a receiver is the first argument.
    Call(Func, Vec<Node>),
    /// `matches` with a constant pattern, compiled once.
    Match(Box<Node>, regex::Regex),
}

struct Planner<'s> {
    src: &'s str,
    options: Options,
}

impl Planner<'_> {
    fn err(&self, at: usize, what: impl fmt::Display) -> String {
        format!("{what} at column {}", column(self.src, at))
    }

    // `plan` recurses once per level of the tree: it dispatches to helpers so that its
    // own stack frame stays small.
    fn plan(&self, e: &ExprNode) -> Result<Node, String> {
        match &e.kind {
            ExprKind::Lit(l) => Ok(Node::Const(constant(l))),
            ExprKind::Ident(name) => Ok(match Root::find(name) {
                Some(r) => Node::Root(r),
                None => Node::Unbound(name.as_str().into()),
            }),
            ExprKind::Select(operand, field) => self.select(operand, field),
            ExprKind::Has(operand, field) => self.has(operand, field),
            ExprKind::Index(operand, index) => self.index(operand, index),
            ExprKind::Call { target, name, args } => self.call(target.as_deref(), name, args, e.at),
            ExprKind::Not(x) => self.unary(x, false),
            ExprKind::Neg(x) => self.unary(x, true),
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b),
            ExprKind::And(xs) => self.all(xs).map(Node::And),
            ExprKind::Or(xs) => self.all(xs).map(Node::Or),
            ExprKind::Cond(c, a, b) => self.cond(c, a, b),
            ExprKind::List(xs) => self.list(xs),
            ExprKind::Map(kv) => self.map(kv),
            ExprKind::Struct(name, _) => Err(self.err(
                e.at,
                format_args!("message construction `{name}{{...}}` is not supported"),
            )),
        }
    }

    #[inline(never)]
    fn select(&self, operand: &ExprNode, field: &str) -> Result<Node, String> {
        if let ExprKind::Ident(name) = &operand.kind
            && let Some(root) = Root::find(name)
        {
            return Ok(attribute(root, field));
        }
        Ok(match self.plan(operand)? {
            Node::Headers(h) => Node::Header(h, field.to_ascii_lowercase().into()),
            n => Node::Select(Box::new(n), field.into()),
        })
    }

    #[inline(never)]
    fn has(&self, operand: &ExprNode, field: &str) -> Result<Node, String> {
        if let ExprKind::Ident(name) = &operand.kind
            && let Some(root) = Root::find(name)
        {
            return Ok(match root.headers(field) {
                Some(_) => Node::Const(Const::Bool(true)),
                None => Node::HasAttr(format!("{name}.{field}").into()),
            });
        }
        Ok(match self.plan(operand)? {
            Node::Headers(h) => Node::HasHeader(h, field.to_ascii_lowercase().into()),
            n => Node::Has(Box::new(n), field.into()),
        })
    }

    #[inline(never)]
    fn index(&self, operand: &ExprNode, index: &ExprNode) -> Result<Node, String> {
        let n = self.plan(operand)?;
        let i = self.plan(index)?;
        Ok(match (n, i) {
            (Node::Root(r), Node::Const(Const::Str(key))) => attribute(r, &key),
            (Node::Headers(h), Node::Const(Const::Str(key))) => {
                Node::Header(h, key.to_ascii_lowercase().into())
            }
            (n, i) => Node::Index(Box::new(n), Box::new(i)),
        })
    }

    #[inline(never)]
    fn unary(&self, x: &ExprNode, negate: bool) -> Result<Node, String> {
        let n = self.plan(x)?;
        Ok(match (n, negate) {
            (Node::Const(Const::Double(d)), true) => Node::Const(Const::Double(-d)),
            (n, true) => Node::Neg(Box::new(n)),
            (n, false) => Node::Not(Box::new(n)),
        })
    }

    #[inline(never)]
    fn binary(&self, op: BinOp, a: &ExprNode, b: &ExprNode) -> Result<Node, String> {
        let a = self.plan(a)?;
        let b = self.plan(b)?;
        Ok(Node::Binary(op, Box::new(a), Box::new(b)))
    }

    #[inline(never)]
    fn cond(&self, c: &ExprNode, a: &ExprNode, b: &ExprNode) -> Result<Node, String> {
        let c = self.plan(c)?;
        let a = self.plan(a)?;
        let b = self.plan(b)?;
        Ok(Node::Cond(Box::new(c), Box::new(a), Box::new(b)))
    }

    #[inline(never)]
    fn all(&self, xs: &[Expr]) -> Result<Vec<Node>, String> {
        xs.iter().map(|x| self.plan(x)).collect()
    }

    #[inline(never)]
    fn list(&self, xs: &[Expr]) -> Result<Node, String> {
        let items = self.all(xs)?;
        if !items.iter().all(|n| matches!(n, Node::Const(_))) {
            return Ok(Node::List(items));
        }
        let consts = items
            .into_iter()
            .filter_map(|n| match n {
                Node::Const(c) => Some(c),
                _ => None,
            })
            .collect();
        Ok(Node::Const(Const::List(consts)))
    }

    #[inline(never)]
    fn map(&self, kv: &[(Expr, Expr)]) -> Result<Node, String> {
        let entries: Vec<(Node, Node)> = kv
            .iter()
            .map(|(k, v)| Ok((self.plan(k)?, self.plan(v)?)))
            .collect::<Result<_, String>>()?;
        Ok(const_map(&entries).map_or(Node::Map(entries), |m| Node::Const(Const::Map(m))))
    }

    #[inline(never)]
    fn call(
        &self,
        target: Option<&ExprNode>,
        name: &str,
        args: &[Expr],
        at: usize,
    ) -> Result<Node, String> {
        if target.is_some() && COMPREHENSIONS.contains(&name) {
            return Err(self.err(
                at,
                format_args!("`{name}` is a comprehension, which Envoy's CEL runtime disables"),
            ));
        }
        let Some((func, global, receiver)) = Func::find(name) else {
            return Err(self.err(at, format_args!("unknown function `{name}`")));
        };
        let arities = if target.is_some() { receiver } else { global };
        let Some(arities) = arities else {
            let how = if target.is_some() {
                format!("`{name}` is not a method: call it as `{name}(x)`")
            } else {
                format!("`{name}` is a method: call it as `x.{name}(...)`")
            };
            return Err(self.err(at, how));
        };
        if !arities.contains(&args.len()) {
            let n = arities.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            return Err(self.err(
                at,
                format_args!(
                    "`{name}` takes {} argument(s), not {}",
                    n.join(" or "),
                    args.len()
                ),
            ));
        }
        if func == Func::String && !self.options.string_conversion {
            return Err(self.err(
                at,
                "`string()` is disabled in Envoy's CEL runtime (no string conversion)",
            ));
        }
        let mut nodes = Vec::with_capacity(args.len() + 1);
        if let Some(t) = target {
            nodes.push(self.plan(t)?);
        }
        for a in args {
            nodes.push(self.plan(a)?);
        }
        if func == Func::Matches
            && nodes.len() == 2
            && matches!(nodes.last(), Some(Node::Const(Const::Str(_))))
            && let Some(Node::Const(Const::Str(pattern))) = nodes.pop()
        {
            let re = crate::re2::compile(&pattern).map_err(|e| {
                self.err(
                    at,
                    format_args!("invalid regular expression `{pattern}`: {e}"),
                )
            })?;
            let subject = nodes.pop().unwrap_or(Node::Const(Const::Null));
            return Ok(Node::Match(Box::new(subject), re));
        }
        Ok(Node::Call(func, nodes))
    }
}

fn constant(l: &Lit) -> Const {
    match l {
        Lit::Null => Const::Null,
        Lit::Bool(b) => Const::Bool(*b),
        Lit::Int(i) => Const::Int(*i),
        Lit::Uint(u) => Const::Uint(*u),
        Lit::Double(d) => Const::Double(*d),
        Lit::Str(s) => Const::Str(s.as_str().into()),
        Lit::Bytes(b) => Const::Bytes(b.as_slice().into()),
    }
}

/// The compiled form of `root.field`: a header map or an attribute.
fn attribute(root: Root, field: &str) -> Node {
    match root.headers(field) {
        Some(h) => Node::Headers(h),
        None => Node::Attr(format!("{}.{field}", root.name()).into()),
    }
}

/// A map literal whose keys and values are all constants, with valid distinct keys.
fn const_map(entries: &[(Node, Node)]) -> Option<Box<[(Const, Const)]>> {
    let mut out: Vec<(Const, Const)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let (Node::Const(k), Node::Const(v)) = (k, v) else {
            return None;
        };
        if !valid_key(&k.val()) || out.iter().any(|(o, _)| key_eq(&o.val(), &k.val())) {
            return None;
        }
        out.push((k.clone(), v.clone()));
    }
    Some(out.into())
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

const NANOS: i128 = 1_000_000_000;
/// The largest duration CEL (protobuf's `Duration`) represents, in nanoseconds.
const MAX_DURATION: i128 = 315_576_000_000 * NANOS + 999_999_999;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z, CEL's timestamp range.
const MIN_TIMESTAMP: i128 = -62_135_596_800 * NANOS;
const MAX_TIMESTAMP: i128 = 253_402_300_799 * NANOS + 999_999_999;

/// A value during evaluation: borrowed from the compiled expression or the request
/// wherever it can be.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    /// Nanoseconds.
    Duration(i128),
    /// Nanoseconds since the Unix epoch.
    Timestamp(i128),
    List(List<'a>),
    Map(Map<'a>),
    /// A header map: looked up by name, never listed.
    Headers(Hdr),
    /// An attribute namespace (`request`): looked up by name, never listed.
    Root(Root),
}

#[derive(Debug, Clone)]
enum List<'a> {
    Const(&'a [Const]),
    Vals(Rc<[Val<'a>]>),
}

impl<'a> List<'a> {
    fn len(&self) -> usize {
        match self {
            List::Const(c) => c.len(),
            List::Vals(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> Option<Val<'a>> {
        match self {
            List::Const(c) => c.get(i).map(Const::val),
            List::Vals(v) => v.get(i).cloned(),
        }
    }
}

#[derive(Debug, Clone)]
enum Map<'a> {
    Const(&'a [(Const, Const)]),
    Vals(Rc<[(Val<'a>, Val<'a>)]>),
}

impl<'a> Map<'a> {
    fn len(&self) -> usize {
        match self {
            Map::Const(c) => c.len(),
            Map::Vals(v) => v.len(),
        }
    }

    fn entry(&self, i: usize) -> Option<(Val<'a>, Val<'a>)> {
        match self {
            Map::Const(c) => c.get(i).map(|(k, v)| (k.val(), v.val())),
            Map::Vals(v) => v.get(i).cloned(),
        }
    }

    fn get(&self, key: &Val<'_>) -> Option<Val<'a>> {
        match self {
            Map::Const(c) => c
                .iter()
                .find(|(k, _)| key_eq(&k.val(), key))
                .map(|(_, v)| v.val()),
            Map::Vals(v) => v
                .iter()
                .find(|(k, _)| key_eq(k, key))
                .map(|(_, v)| v.clone()),
        }
    }
}

fn type_name(v: &Val<'_>) -> &'static str {
    match v {
        Val::Null => "null_type",
        Val::Bool(_) => "bool",
        Val::Int(_) => "int",
        Val::Uint(_) => "uint",
        Val::Double(_) => "double",
        Val::Str(_) => "string",
        Val::Bytes(_) => "bytes",
        Val::Duration(_) => "google.protobuf.Duration",
        Val::Timestamp(_) => "google.protobuf.Timestamp",
        Val::List(_) => "list",
        Val::Map(_) | Val::Headers(_) | Val::Root(_) => "map",
    }
}

fn no_overload(function: &str, args: &[&Val<'_>]) -> EvalError {
    let types: Vec<&str> = args.iter().map(|a| type_name(a)).collect();
    EvalError::new(format!(
        "no matching overload for `{function}` applied to ({})",
        types.join(", ")
    ))
}

fn unbound(name: &str) -> EvalError {
    EvalError::new(format!("undeclared reference to `{name}`"))
}

fn no_key() -> EvalError {
    EvalError::new("no such key")
}

fn overflow() -> EvalError {
    EvalError::new("integer overflow")
}

fn valid_key(v: &Val<'_>) -> bool {
    matches!(v, Val::Int(_) | Val::Uint(_) | Val::Bool(_) | Val::Str(_))
}

/// Map key equality: numeric keys compare by value (`{1: x}[1u]` finds `x`).
fn key_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        _ => num_cmp(a, b) == Some(Some(Ordering::Equal)),
    }
}

fn cmp_int_uint(i: i64, u: u64) -> Ordering {
    match u64::try_from(i) {
        Ok(i) => i.cmp(&u),
        Err(_) => Ordering::Less,
    }
}

/// 2^63 and 2^64 as doubles.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

fn cmp_int_double(i: i64, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    if d >= TWO_63 {
        return Some(Ordering::Less);
    }
    if d < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let t = d.trunc();
    // `t` is an integer in [-2^63, 2^63): exact as an i64.
    let ti = t as i64;
    Some(i.cmp(&ti).then_with(|| 0.0f64.total_cmp(&(d - t))))
}

fn cmp_uint_double(u: u64, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    if d >= TWO_64 {
        return Some(Ordering::Less);
    }
    if d < 0.0 {
        return Some(Ordering::Greater);
    }
    let t = d.trunc();
    let tu = t as u64;
    Some(u.cmp(&tu).then_with(|| 0.0f64.total_cmp(&(d - t))))
}

/// Numeric ordering across `int`, `uint` and `double` by value; `None` when either side is
/// not a number, `Some(None)` when unordered (NaN).
fn num_cmp(a: &Val<'_>, b: &Val<'_>) -> Option<Option<Ordering>> {
    Some(match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Uint(x), Val::Uint(y)) => Some(x.cmp(y)),
        (Val::Double(x), Val::Double(y)) => x.partial_cmp(y),
        (Val::Int(x), Val::Uint(y)) => Some(cmp_int_uint(*x, *y)),
        (Val::Uint(x), Val::Int(y)) => Some(cmp_int_uint(*y, *x).reverse()),
        (Val::Int(x), Val::Double(y)) => cmp_int_double(*x, *y),
        (Val::Double(x), Val::Int(y)) => cmp_int_double(*y, *x).map(Ordering::reverse),
        (Val::Uint(x), Val::Double(y)) => cmp_uint_double(*x, *y),
        (Val::Double(x), Val::Uint(y)) => cmp_uint_double(*y, *x).map(Ordering::reverse),
        _ => return None,
    })
}

/// CEL's heterogeneous equality: numbers by value, values of different types unequal.
fn equals(a: &Val<'_>, b: &Val<'_>) -> Result<bool, EvalError> {
    if let Some(o) = num_cmp(a, b) {
        return Ok(o == Some(Ordering::Equal));
    }
    Ok(match (a, b) {
        (Val::Headers(_) | Val::Root(_), _) | (_, Val::Headers(_) | Val::Root(_)) => {
            return Err(no_overload("_==_", &[a, b]));
        }
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bytes(x), Val::Bytes(y)) => x == y,
        (Val::Duration(x), Val::Duration(y)) | (Val::Timestamp(x), Val::Timestamp(y)) => x == y,
        (Val::List(x), Val::List(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for i in 0..x.len() {
                if let (Some(p), Some(q)) = (x.get(i), y.get(i))
                    && !equals(&p, &q)?
                {
                    return Ok(false);
                }
            }
            true
        }
        (Val::Map(x), Val::Map(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for i in 0..x.len() {
                let Some((k, v)) = x.entry(i) else {
                    return Ok(false);
                };
                match y.get(&k) {
                    Some(w) if equals(&v, &w)? => {}
                    _ => return Ok(false),
                }
            }
            true
        }
        _ => false,
    })
}

/// Ordering for `< <= > >=`: `None` when the types have no ordering.
fn compare(a: &Val<'_>, b: &Val<'_>) -> Option<Option<Ordering>> {
    if let Some(o) = num_cmp(a, b) {
        return Some(o);
    }
    Some(match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bytes(x), Val::Bytes(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Duration(x), Val::Duration(y)) | (Val::Timestamp(x), Val::Timestamp(y)) => {
            Some(x.cmp(y))
        }
        _ => return None,
    })
}

fn duration(n: i128) -> Result<Val<'static>, EvalError> {
    if (-MAX_DURATION..=MAX_DURATION).contains(&n) {
        Ok(Val::Duration(n))
    } else {
        Err(EvalError::new("duration out of range"))
    }
}

fn timestamp(n: i128) -> Result<Val<'static>, EvalError> {
    if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&n) {
        Ok(Val::Timestamp(n))
    } else {
        Err(EvalError::new("timestamp out of range"))
    }
}

fn str_val(s: &str) -> Val<'_> {
    Val::Str(Cow::Borrowed(s))
}

fn from_value(v: Value<'_>) -> Val<'_> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Int(i) => Val::Int(i),
        Value::Uint(u) => Val::Uint(u),
        Value::Double(d) => Val::Double(d),
        Value::String(s) => Val::Str(s),
        Value::Bytes(b) => Val::Bytes(b),
        Value::Duration(d) => Val::Duration(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)),
        Value::Timestamp(t) => Val::Timestamp(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
            Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
        }),
        Value::List(l) => Val::List(List::Vals(l.into_iter().map(from_value).collect())),
        Value::Map(m) => Val::Map(Map::Vals(
            m.into_iter()
                .map(|(k, v)| (from_value(k), from_value(v)))
                .collect(),
        )),
    }
}

impl<'a> Val<'a> {
    fn into_value(self) -> Result<Value<'a>, EvalError> {
        let split = |n: i128| {
            let secs = u64::try_from(n / NANOS).unwrap_or(u64::MAX);
            // In [0, 1e9): fits.
            let nanos = u32::try_from(n % NANOS).unwrap_or(0);
            Duration::new(secs, nanos)
        };
        Ok(match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Int(i),
            Val::Uint(u) => Value::Uint(u),
            Val::Double(d) => Value::Double(d),
            Val::Str(s) => Value::String(s),
            Val::Bytes(b) => Value::Bytes(b),
            Val::Duration(n) if n < 0 => {
                return Err(EvalError::new("a negative duration has no value here"));
            }
            Val::Duration(n) => Value::Duration(split(n)),
            Val::Timestamp(n) => {
                let t = if n >= 0 {
                    UNIX_EPOCH.checked_add(split(n))
                } else {
                    UNIX_EPOCH.checked_sub(split(-n))
                };
                Value::Timestamp(t.ok_or_else(|| EvalError::new("timestamp out of range"))?)
            }
            Val::List(l) => Value::List(
                (0..l.len())
                    .filter_map(|i| l.get(i))
                    .map(Val::into_value)
                    .collect::<Result<_, _>>()?,
            ),
            Val::Map(m) => Value::Map(
                (0..m.len())
                    .filter_map(|i| m.entry(i))
                    .map(|(k, v)| Ok((k.into_value()?, v.into_value()?)))
                    .collect::<Result<_, EvalError>>()?,
            ),
            Val::Headers(_) | Val::Root(_) => {
                return Err(EvalError::new(
                    "a header map or attribute namespace cannot be listed",
                ));
            }
        })
    }
}

struct Ctx<'a> {
    attrs: &'a dyn Attributes,
    options: Options,
}

type Res<'a> = Result<Val<'a>, EvalError>;

impl<'a> Ctx<'a> {
    // `eval` recurses once per level of the tree: it dispatches to helpers so that its
    // own stack frame stays small.
    fn eval(&self, n: &'a Node) -> Res<'a> {
        match n {
            Node::Const(c) => Ok(c.val()),
            Node::List(items) => self.list(items),
            Node::Map(entries) => self.map(entries),
            Node::Attr(path) => self.attr(path),
            Node::Root(r) => Ok(Val::Root(*r)),
            Node::Headers(h) => Ok(Val::Headers(*h)),
            Node::Header(h, name) => self.header(*h, name).map(str_val).ok_or_else(no_key),
            Node::HasAttr(path) => Ok(Val::Bool(self.has_attr(path))),
            Node::HasHeader(h, name) => Ok(Val::Bool(self.header(*h, name).is_some())),
            Node::Unbound(name) => Err(unbound(name)),
            Node::Select(e, field) => self.eval_select(e, field),
            Node::Has(e, field) => self.eval_has(e, field),
            Node::Index(e, i) => self.eval_index(e, i),
            Node::Not(e) => self.not(e),
            Node::Neg(e) => self.neg(e),
            Node::Binary(op, a, b) => self.eval_binary(*op, a, b),
            Node::And(xs) => self.logic(xs, false),
            Node::Or(xs) => self.logic(xs, true),
            Node::Cond(c, a, b) => self.cond(c, a, b),
            Node::Call(f, args) => self.call(*f, args),
            Node::Match(subject, re) => self.regex(subject, re),
        }
    }

    #[inline(never)]
    fn list(&self, items: &'a [Node]) -> Res<'a> {
        let vals = items
            .iter()
            .map(|i| self.eval(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Val::List(List::Vals(vals.into())))
    }

    #[inline(never)]
    fn map(&self, entries: &'a [(Node, Node)]) -> Res<'a> {
        let mut out: Vec<(Val<'a>, Val<'a>)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let k = self.eval(k)?;
            if !valid_key(&k) {
                return Err(EvalError::new(format!(
                    "unsupported map key type `{}`",
                    type_name(&k)
                )));
            }
            if out.iter().any(|(o, _)| key_eq(o, &k)) {
                return Err(EvalError::new("repeated key in map literal"));
            }
            let v = self.eval(v)?;
            out.push((k, v));
        }
        Ok(Val::Map(Map::Vals(out.into())))
    }

    fn has_attr(&self, path: &str) -> bool {
        self.attrs.attribute(path).is_some()
    }

    #[inline(never)]
    fn eval_select(&self, e: &'a Node, field: &str) -> Res<'a> {
        let v = self.eval(e)?;
        self.select(v, field)
    }

    #[inline(never)]
    fn eval_has(&self, e: &'a Node, field: &str) -> Res<'a> {
        let v = self.eval(e)?;
        self.has(v, field)
    }

    #[inline(never)]
    fn eval_index(&self, e: &'a Node, i: &'a Node) -> Res<'a> {
        let v = self.eval(e)?;
        let k = self.eval(i)?;
        self.index(v, k)
    }

    #[inline(never)]
    fn not(&self, e: &'a Node) -> Res<'a> {
        match self.eval(e)? {
            Val::Bool(b) => Ok(Val::Bool(!b)),
            v => Err(no_overload("!_", &[&v])),
        }
    }

    #[inline(never)]
    fn neg(&self, e: &'a Node) -> Res<'a> {
        match self.eval(e)? {
            Val::Int(i) => i.checked_neg().map(Val::Int).ok_or_else(overflow),
            Val::Double(d) => Ok(Val::Double(-d)),
            Val::Duration(d) => duration(-d),
            v => Err(no_overload("-_", &[&v])),
        }
    }

    #[inline(never)]
    fn eval_binary(&self, op: BinOp, a: &'a Node, b: &'a Node) -> Res<'a> {
        let a = self.eval(a)?;
        let b = self.eval(b)?;
        self.binary(op, a, b)
    }

    #[inline(never)]
    fn cond(&self, c: &'a Node, a: &'a Node, b: &'a Node) -> Res<'a> {
        match self.eval(c)? {
            Val::Bool(true) => self.eval(a),
            Val::Bool(false) => self.eval(b),
            v => Err(no_overload("_?_:_", &[&v])),
        }
    }

    #[inline(never)]
    fn regex(&self, subject: &'a Node, re: &regex::Regex) -> Res<'a> {
        match self.eval(subject)? {
            Val::Str(s) => Ok(Val::Bool(re.is_match(&s))),
            v => Err(no_overload("matches", &[&v, &Val::Str(Cow::Borrowed(""))])),
        }
    }

    /// `&&` (`absorbing` false) and `||` (`absorbing` true) with CEL's commutative error
    /// absorption: the absorbing value wins over errors on either side.
    #[inline(never)]
    fn logic(&self, terms: &'a [Node], absorbing: bool) -> Res<'a> {
        let mut error = None;
        for t in terms {
            match self.eval(t) {
                Ok(Val::Bool(b)) if b == absorbing => return Ok(Val::Bool(absorbing)),
                Ok(Val::Bool(_)) => {}
                Ok(v) => {
                    let op = if absorbing { "_||_" } else { "_&&_" };
                    error.get_or_insert_with(|| no_overload(op, &[&v]));
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(Val::Bool(!absorbing)),
        }
    }

    fn attr(&self, path: &str) -> Res<'a> {
        self.attrs
            .attribute(path)
            .map(from_value)
            .ok_or_else(|| EvalError::new("no such attribute"))
    }

    fn header(&self, h: Hdr, name: &str) -> Option<&'a str> {
        match h {
            Hdr::Request => self.attrs.request_header(name),
            Hdr::Response => self.attrs.response_header(name),
            Hdr::Trailers => self.attrs.response_trailer(name),
        }
    }

    /// A header by a name computed at run time (lower-cased like Envoy's lookups).
    fn lookup_header(&self, h: Hdr, name: &str) -> Option<&'a str> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.header(h, &name.to_ascii_lowercase())
        } else {
            self.header(h, name)
        }
    }

    fn root_field(&self, r: Root, field: &str) -> Res<'a> {
        match r.headers(field) {
            Some(h) => Ok(Val::Headers(h)),
            None => self.attr(&format!("{}.{field}", r.name())),
        }
    }

    fn select(&self, v: Val<'a>, field: &str) -> Res<'a> {
        match v {
            Val::Map(m) => m.get(&str_val(field)).ok_or_else(no_key),
            Val::Headers(h) => self.lookup_header(h, field).map(str_val).ok_or_else(no_key),
            Val::Root(r) => self.root_field(r, field),
            v => Err(EvalError::new(format!(
                "type `{}` has no field `{field}`",
                type_name(&v)
            ))),
        }
    }

    fn has(&self, v: Val<'a>, field: &str) -> Res<'a> {
        Ok(Val::Bool(match v {
            Val::Map(m) => m.get(&str_val(field)).is_some(),
            Val::Headers(h) => self.lookup_header(h, field).is_some(),
            Val::Root(r) => {
                r.headers(field).is_some()
                    || self
                        .attrs
                        .attribute(&format!("{}.{field}", r.name()))
                        .is_some()
            }
            v => {
                return Err(EvalError::new(format!(
                    "has() does not apply to type `{}`",
                    type_name(&v)
                )));
            }
        }))
    }

    fn index(&self, v: Val<'a>, k: Val<'a>) -> Res<'a> {
        match (v, k) {
            (Val::List(l), k) => {
                let i = match k {
                    Val::Int(i) => usize::try_from(i).ok(),
                    Val::Uint(u) => usize::try_from(u).ok(),
                    Val::Double(d) if d.fract() == 0.0 && (0.0..TWO_63).contains(&d) => {
                        usize::try_from(d as i64).ok()
                    }
                    Val::Double(_) => None,
                    k => return Err(no_overload("_[_]", &[&Val::List(l), &k])),
                };
                i.and_then(|i| l.get(i))
                    .ok_or_else(|| EvalError::new("index out of range"))
            }
            (Val::Map(m), k) => m.get(&k).ok_or_else(no_key),
            (Val::Headers(h), Val::Str(s)) => {
                self.lookup_header(h, &s).map(str_val).ok_or_else(no_key)
            }
            (Val::Root(r), Val::Str(s)) => self.root_field(r, &s),
            (v, k) => Err(no_overload("_[_]", &[&v, &k])),
        }
    }

    fn binary(&self, op: BinOp, a: Val<'a>, b: Val<'a>) -> Res<'a> {
        use Ordering::{Greater, Less};
        match op {
            BinOp::Eq => equals(&a, &b).map(Val::Bool),
            BinOp::Ne => equals(&a, &b).map(|e| Val::Bool(!e)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let o = compare(&a, &b).ok_or_else(|| no_overload(op.name(), &[&a, &b]))?;
                Ok(Val::Bool(o.is_some_and(|o| match op {
                    BinOp::Lt => o == Less,
                    BinOp::Le => o != Greater,
                    BinOp::Gt => o == Greater,
                    _ => o != Less,
                })))
            }
            BinOp::In => self.member_of(&a, b),
            BinOp::Add => self.add(a, b),
            BinOp::Sub => arith(op, a, b),
            BinOp::Mul | BinOp::Div | BinOp::Rem => arith(op, a, b),
        }
    }

    /// `x in container`.
    fn member_of(&self, x: &Val<'a>, c: Val<'a>) -> Res<'a> {
        Ok(Val::Bool(match c {
            Val::List(l) => {
                for i in 0..l.len() {
                    if let Some(e) = l.get(i)
                        && equals(x, &e)?
                    {
                        return Ok(Val::Bool(true));
                    }
                }
                false
            }
            Val::Map(m) => m.get(x).is_some(),
            Val::Headers(h) => match x {
                Val::Str(s) => self.lookup_header(h, s).is_some(),
                _ => false,
            },
            Val::Root(r) => match x {
                Val::Str(s) => self.root_field(r, s).is_ok(),
                _ => false,
            },
            c => return Err(no_overload("@in", &[x, &c])),
        }))
    }

    fn add(&self, a: Val<'a>, b: Val<'a>) -> Res<'a> {
        let o = self.options;
        match (a, b) {
            (Val::Str(x), Val::Str(y)) if o.string_concat => {
                let mut s = x.into_owned();
                s.push_str(&y);
                Ok(Val::Str(Cow::Owned(s)))
            }
            (Val::Bytes(x), Val::Bytes(y)) if o.string_concat => {
                let mut s = x.into_owned();
                s.extend_from_slice(&y);
                Ok(Val::Bytes(Cow::Owned(s)))
            }
            (Val::List(x), Val::List(y)) if o.list_concat => {
                let all: Vec<Val<'a>> = (0..x.len())
                    .filter_map(|i| x.get(i))
                    .chain((0..y.len()).filter_map(|i| y.get(i)))
                    .collect();
                Ok(Val::List(List::Vals(all.into())))
            }
            (a, b) => arith(BinOp::Add, a, b),
        }
    }

    #[inline(never)]
    fn call(&self, f: Func, args: &'a [Node]) -> Res<'a> {
        let mut nodes = args.iter();
        let a = match nodes.next() {
            Some(n) => self.eval(n)?,
            None => return Err(EvalError::new("missing argument")),
        };
        let b = match nodes.next() {
            Some(n) => Some(self.eval(n)?),
            None => None,
        };
        self.apply(f, a, b)
    }

    #[inline(never)]
    fn apply(&self, f: Func, a: Val<'a>, b: Option<Val<'a>>) -> Res<'a> {
        match (f, a, b) {
            (Func::Size, a, None) => size(&a),
            (Func::StartsWith, Val::Str(s), Some(Val::Str(t))) => Ok(Val::Bool(s.starts_with(&*t))),
            (Func::EndsWith, Val::Str(s), Some(Val::Str(t))) => Ok(Val::Bool(s.ends_with(&*t))),
            (Func::Contains, Val::Str(s), Some(Val::Str(t))) => Ok(Val::Bool(s.contains(&*t))),
            (Func::Matches, Val::Str(s), Some(Val::Str(p))) => {
                let re = crate::re2::compile(&p).map_err(|e| {
                    EvalError::new(format!("invalid regular expression `{p}`: {e}"))
                })?;
                Ok(Val::Bool(re.is_match(&s)))
            }
            (Func::Int, a, None) => to_int(a),
            (Func::Uint, a, None) => to_uint(a),
            (Func::Double, a, None) => to_double(a),
            (Func::String, a, None) => to_string(a),
            (Func::Bytes, Val::Bytes(b), None) => Ok(Val::Bytes(b)),
            (Func::Bytes, Val::Str(s), None) => Ok(Val::Bytes(match s {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            })),
            (Func::Dyn, a, None) => Ok(a),
            (Func::Duration, Val::Str(s), None) => parse_duration(&s).map(Val::Duration),
            (Func::Duration, d @ Val::Duration(_), None) => Ok(d),
            (Func::Timestamp, Val::Str(s), None) => parse_timestamp(&s).map(Val::Timestamp),
            (Func::Timestamp, Val::Int(secs), None) => timestamp(i128::from(secs) * NANOS),
            (Func::Timestamp, t @ Val::Timestamp(_), None) => Ok(t),
            (Func::Time(p), Val::Timestamp(t), tz) => {
                let offset = match tz {
                    None => 0,
                    Some(Val::Str(z)) => parse_zone(&z)?,
                    Some(z) => return Err(no_overload(f.name(), &[&Val::Timestamp(t), &z])),
                };
                Ok(Val::Int(timestamp_part(p, t, offset)))
            }
            (Func::Time(p), Val::Duration(d), None) => {
                let unit: i128 = match p {
                    TimePart::Hours => 3_600 * NANOS,
                    TimePart::Minutes => 60 * NANOS,
                    TimePart::Seconds => NANOS,
                    TimePart::Milliseconds => 1_000_000,
                    _ => return Err(no_overload(f.name(), &[&Val::Duration(d)])),
                };
                Ok(Val::Int(i64::try_from(d / unit).unwrap_or(0)))
            }
            (f, a, b) => {
                let mut args = vec![&a];
                args.extend(b.as_ref());
                Err(no_overload(f.name(), &args))
            }
        }
    }
}

fn arith<'a>(op: BinOp, a: Val<'a>, b: Val<'a>) -> Res<'a> {
    let div_zero = || EvalError::new("division by zero");
    let mod_zero = || EvalError::new("modulus by zero");
    match (op, &a, &b) {
        (BinOp::Add, Val::Int(x), Val::Int(y)) => {
            x.checked_add(*y).map(Val::Int).ok_or_else(overflow)
        }
        (BinOp::Sub, Val::Int(x), Val::Int(y)) => {
            x.checked_sub(*y).map(Val::Int).ok_or_else(overflow)
        }
        (BinOp::Mul, Val::Int(x), Val::Int(y)) => {
            x.checked_mul(*y).map(Val::Int).ok_or_else(overflow)
        }
        (BinOp::Div, Val::Int(_), Val::Int(0)) => Err(div_zero()),
        (BinOp::Div, Val::Int(x), Val::Int(y)) => {
            x.checked_div(*y).map(Val::Int).ok_or_else(overflow)
        }
        (BinOp::Rem, Val::Int(_), Val::Int(0)) => Err(mod_zero()),
        (BinOp::Rem, Val::Int(x), Val::Int(y)) => {
            x.checked_rem(*y).map(Val::Int).ok_or_else(overflow)
        }
        (BinOp::Add, Val::Uint(x), Val::Uint(y)) => {
            x.checked_add(*y).map(Val::Uint).ok_or_else(overflow)
        }
        (BinOp::Sub, Val::Uint(x), Val::Uint(y)) => {
            x.checked_sub(*y).map(Val::Uint).ok_or_else(overflow)
        }
        (BinOp::Mul, Val::Uint(x), Val::Uint(y)) => {
            x.checked_mul(*y).map(Val::Uint).ok_or_else(overflow)
        }
        (BinOp::Div, Val::Uint(_), Val::Uint(0)) => Err(div_zero()),
        (BinOp::Div, Val::Uint(x), Val::Uint(y)) => Ok(Val::Uint(x / y)),
        (BinOp::Rem, Val::Uint(_), Val::Uint(0)) => Err(mod_zero()),
        (BinOp::Rem, Val::Uint(x), Val::Uint(y)) => Ok(Val::Uint(x % y)),
        (BinOp::Add, Val::Double(x), Val::Double(y)) => Ok(Val::Double(x + y)),
        (BinOp::Sub, Val::Double(x), Val::Double(y)) => Ok(Val::Double(x - y)),
        (BinOp::Mul, Val::Double(x), Val::Double(y)) => Ok(Val::Double(x * y)),
        (BinOp::Div, Val::Double(x), Val::Double(y)) => Ok(Val::Double(x / y)),
        (BinOp::Add, Val::Duration(x), Val::Duration(y)) => duration(x + y),
        (BinOp::Sub, Val::Duration(x), Val::Duration(y)) => duration(x - y),
        (BinOp::Add, Val::Timestamp(t), Val::Duration(d))
        | (BinOp::Add, Val::Duration(d), Val::Timestamp(t)) => timestamp(t + d),
        (BinOp::Sub, Val::Timestamp(t), Val::Duration(d)) => timestamp(t - d),
        (BinOp::Sub, Val::Timestamp(x), Val::Timestamp(y)) => duration(x - y),
        _ => Err(no_overload(op.name(), &[&a, &b])),
    }
}

fn size<'a>(v: &Val<'a>) -> Res<'a> {
    let n = match v {
        Val::Str(s) => s.chars().count(),
        Val::Bytes(b) => b.len(),
        Val::List(l) => l.len(),
        Val::Map(m) => m.len(),
        v => return Err(no_overload("size", &[v])),
    };
    Ok(Val::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn to_int(v: Val<'_>) -> Res<'_> {
    match v {
        Val::Int(i) => Ok(Val::Int(i)),
        Val::Uint(u) => i64::try_from(u).map(Val::Int).map_err(|_| overflow()),
        // cel-go's range: strictly inside (-2^63, 2^63).
        Val::Double(d) if d.is_finite() && d > -TWO_63 && d < TWO_63 => Ok(Val::Int(d as i64)),
        Val::Double(_) => Err(overflow()),
        Val::Str(s) => s
            .parse()
            .map(Val::Int)
            .map_err(|_| EvalError::new(format!("cannot convert `{s}` to int"))),
        Val::Timestamp(t) => Ok(Val::Int(i64::try_from(t.div_euclid(NANOS)).unwrap_or(0))),
        v => Err(no_overload("int", &[&v])),
    }
}

fn to_uint(v: Val<'_>) -> Res<'_> {
    match v {
        Val::Uint(u) => Ok(Val::Uint(u)),
        Val::Int(i) => u64::try_from(i).map(Val::Uint).map_err(|_| overflow()),
        Val::Double(d) if (0.0..TWO_64).contains(&d) => Ok(Val::Uint(d as u64)),
        Val::Double(_) => Err(overflow()),
        Val::Str(s) => s
            .parse()
            .map(Val::Uint)
            .map_err(|_| EvalError::new(format!("cannot convert `{s}` to uint"))),
        v => Err(no_overload("uint", &[&v])),
    }
}

fn to_double(v: Val<'_>) -> Res<'_> {
    match v {
        Val::Double(d) => Ok(Val::Double(d)),
        Val::Int(i) => Ok(Val::Double(i as f64)),
        Val::Uint(u) => Ok(Val::Double(u as f64)),
        Val::Str(s) => s
            .parse()
            .map(Val::Double)
            .map_err(|_| EvalError::new(format!("cannot convert `{s}` to double"))),
        v => Err(no_overload("double", &[&v])),
    }
}

fn to_string(v: Val<'_>) -> Res<'_> {
    let s = match v {
        Val::Str(s) => return Ok(Val::Str(s)),
        Val::Int(i) => i.to_string(),
        Val::Uint(u) => u.to_string(),
        Val::Double(d) => format_double(d),
        Val::Bool(b) => b.to_string(),
        Val::Bytes(b) => match b {
            Cow::Borrowed(b) => {
                return std::str::from_utf8(b)
                    .map(|s| Val::Str(Cow::Borrowed(s)))
                    .map_err(|_| EvalError::new("invalid UTF-8 in bytes"));
            }
            Cow::Owned(b) => {
                String::from_utf8(b).map_err(|_| EvalError::new("invalid UTF-8 in bytes"))?
            }
        },
        Val::Duration(n) => format_duration(n),
        Val::Timestamp(n) => format_timestamp(n),
        v => return Err(no_overload("string", &[&v])),
    };
    Ok(Val::Str(Cow::Owned(s)))
}

/// A double as cel-go's `string()` writes it (Go's `%g`): shortest digits, with an
/// exponent below 1e-4 and from 1e6 on.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sci = format!("{d:e}");
    let exp: i32 = sci
        .rsplit_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if d != 0.0 && !(-4..6).contains(&exp) {
        let (mantissa, _) = sci.rsplit_once('e').unwrap_or((&sci, ""));
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{d}")
    }
}

fn format_duration(n: i128) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let n = n.abs();
    let (secs, nanos) = (n / NANOS, n % NANOS);
    if nanos == 0 {
        format!("{sign}{secs}s")
    } else {
        let frac = format!("{nanos:09}");
        format!("{sign}{secs}.{}s", frac.trim_end_matches('0'))
    }
}

fn format_timestamp(n: i128) -> String {
    let secs = i64::try_from(n.div_euclid(NANOS)).unwrap_or(0);
    let nanos = n.rem_euclid(NANOS);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

// ---------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------

fn timestamp_part(p: TimePart, t: i128, offset: i64) -> i64 {
    let secs = i64::try_from(t.div_euclid(NANOS)).unwrap_or(0) + offset;
    let nanos = i64::try_from(t.rem_euclid(NANOS)).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match p {
        TimePart::FullYear => y,
        TimePart::Month => m - 1,
        TimePart::DayOfYear => days - days_from_civil(y, 1, 1),
        TimePart::DayOfMonth => d - 1,
        TimePart::Date => d,
        // 1970-01-01 was a Thursday; Sunday is 0.
        TimePart::DayOfWeek => (days + 4).rem_euclid(7),
        TimePart::Hours => sod / 3600,
        TimePart::Minutes => sod % 3600 / 60,
        TimePart::Seconds => sod % 60,
        TimePart::Milliseconds => nanos / 1_000_000,
    }
}

/// A time zone argument: `UTC` or a fixed offset `+05:30` / `-08:00`, in seconds.
fn parse_zone(z: &str) -> Result<i64, EvalError> {
    if z == "UTC" || z == "Z" {
        return Ok(0);
    }
    let b = z.as_bytes();
    let sign = match b.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(EvalError::new(format!("unsupported time zone `{z}`"))),
    };
    match (b.len(), digits(b, 1, 2), b.get(3), digits(b, 4, 2)) {
        (6, Some(h), Some(b':'), Some(m)) if h < 24 && m < 60 => Ok(sign * (h * 3600 + m * 60)),
        _ => Err(EvalError::new(format!("unsupported time zone `{z}`"))),
    }
}

/// The decimal number in `b[from..from + n]`, all digits.
fn digits(b: &[u8], from: usize, n: usize) -> Option<i64> {
    let s = b.get(from..from + n)?;
    s.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// An RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `...T12:00:00.5+02:00`), in
/// nanoseconds since the epoch.
fn parse_timestamp(s: &str) -> Result<i128, EvalError> {
    let bad = || EvalError::new(format!("invalid timestamp `{s}`"));
    let b = s.as_bytes();
    let field = |from, n| digits(b, from, n).ok_or_else(bad);
    let sep = |at: usize, c: u8| {
        if b.get(at) == Some(&c) {
            Ok(())
        } else {
            Err(bad())
        }
    };
    let y = field(0, 4)?;
    sep(4, b'-')?;
    let mo = field(5, 2)?;
    sep(7, b'-')?;
    let d = field(8, 2)?;
    sep(10, b'T')?;
    let h = field(11, 2)?;
    sep(13, b':')?;
    let mi = field(14, 2)?;
    sep(16, b':')?;
    let sec = field(17, 2)?;
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start || end - start > 9 {
            return Err(bad());
        }
        let frac = digits(b, start, end - start).ok_or_else(bad)?;
        nanos = i128::from(frac) * 10i128.pow(u32::try_from(9 - (end - start)).unwrap_or(0));
        i = end;
    }
    let offset = match b.get(i) {
        Some(b'Z') if b.len() == i + 1 => 0,
        Some(b'+' | b'-') if b.len() == i + 6 => {
            let zone = s.get(i..).ok_or_else(bad)?;
            parse_zone(zone).map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d < 1 || d > month_days || h > 23 || mi > 59 || sec > 59 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    match timestamp(i128::from(secs) * NANOS + nanos)? {
        Val::Timestamp(t) => Ok(t),
        _ => Err(bad()),
    }
}

/// A duration as Go and absl write them (`1.5s`, `100ms`, `1h30m`, `-2us`), in
/// nanoseconds.
fn parse_duration(s: &str) -> Result<i128, EvalError> {
    let bad = || EvalError::new(format!("invalid duration `{s}`"));
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_end);
        rest = after;
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (frac_part, rest) = r.split_at(end);
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_end);
        rest = after;
        let unit: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS,
            "m" => 60 * NANOS,
            "h" => 3_600 * NANOS,
            _ => return Err(bad()),
        };
        if int_part.len() > 20 {
            return Err(EvalError::new("duration out of range"));
        }
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        // Digits past the 18th are below a nanosecond even for hours.
        let frac = &frac_part[..frac_part.len().min(18)];
        let frac_value: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let scale = 10i128.pow(u32::try_from(frac.len()).unwrap_or(0));
        total = whole
            .checked_mul(unit)
            .and_then(|w| w.checked_add(frac_value * unit / scale))
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| EvalError::new("duration out of range"))?;
    }
    Ok(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::check;

    #[test]
    fn valid_expressions() {
        for ok in [
            "true",
            "response.code >= 400",
            "response.code >= 400 || xds.cluster_name == 'BlackHoleCluster' || xds.cluster_name == 'PassthroughCluster'",
            "request.headers['x-user'] == \"alice\"",
            "has(request.headers.foo) && !has(response.trailers)",
            "request.url_path.startsWith('/api') ? 1 : 2",
            "size(request.host) > 0u && 1.5e3 > .5 && 0x1F == 31",
            "[1, 2, 3,].exists(x, x > 2)",
            "{'a': 1, 'b': 2}['a'] in [1]",
            "google.protobuf.Duration{seconds: 5}",
            "r'\\d+' == b\"\\x00\" // a comment",
            "'''multi\nline''' != \"\\u00e9\"",
            "-1 < --2 && !!true",
            "filter_state['wasm.upstream_peer']",
            "request.host",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn invalid_expressions() {
        for (bad, what) in [
            ("", "empty"),
            ("   // only a comment", "empty"),
            ("response.code = 400", "use `==`"),
            ("a & b", "use `&&`"),
            ("response.code >=", "unexpected end"),
            ("(a", "expected `)`"),
            ("a)", "unexpected `)`"),
            ("'unterminated", "unterminated string"),
            ("'a\nb'", "unterminated string"),
            ("'\\q'", "invalid escape"),
            ("if == 1", "reserved word"),
            ("a.", "expected a name"),
            ("1.", "expected a name"),
            ("a ? b", "expected `:`"),
            // The middle of a conditional is not itself a conditional (CEL's grammar).
            ("a ? b ? c : d : e", "expected `:`"),
            ("{'a' 1}", "expected `:`"),
            ("f(a,)", "expected a value"),
            ("!-a", "expected a value"),
            ("a b", "unexpected `b`"),
            ("é", "unexpected `é`"),
        ] {
            let e = check(bad).expect_err(bad);
            assert!(e.contains(what), "{bad}: {e}");
        }
        let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
        assert!(check(&deep).unwrap_err().contains("250 levels"));
        let ok = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(check(&ok), Ok(()));
    }

    /// A valid expression built from CEL's grammar.
    fn expression() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("request.host".to_string()),
            Just("response.code".to_string()),
            Just("xds.cluster_name".to_string()),
            Just("42".to_string()),
            Just("7u".to_string()),
            Just("2.5e-3".to_string()),
            Just("'it\\'s'".to_string()),
            Just("r\"\\d+\"".to_string()),
            Just("b'\\x00'".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
        ];
        leaf.prop_recursive(6, 48, 3, |inner| {
            let ops = prop::sample::select(vec![
                "||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%",
            ]);
            prop_oneof![
                (inner.clone(), ops, inner.clone()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
                inner.clone().prop_map(|a| format!("({a})")),
                inner.clone().prop_map(|a| format!("!({a})")),
                inner.clone().prop_map(|a| format!("-({a})")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(a, b, c)| format!("{a} ? ({b}) : {c}")),
                prop::collection::vec(inner.clone(), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                (inner.clone(), inner.clone()).prop_map(|(k, v)| format!("{{{k}: {v},}}")),
                (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("({a})[{i}]")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}).startsWith({b})")),
                inner.clone().prop_map(|a| format!("size({a})")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(7),
            ..ProptestConfig::default()
        })]

        #[test]
        fn generated_expressions_are_valid(e in expression()) {
            prop_assert_eq!(check(&e), Ok(()), "{}", e);
        }

        #[test]
        fn a_dangling_operator_is_an_error(e in expression(), op in prop::sample::select(vec!["&&", "+", "==", "?", "."])) {
            let bad = format!("{e} {op}");
            prop_assert!(check(&bad).is_err(), "{}", bad);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,64}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = check(&s);
            let _ = check(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn columns_are_reported() {
        assert_eq!(
            check("a == (b").unwrap_err(),
            "unexpected end of expression: expected `)`"
        );
        assert_eq!(check("a == b c").unwrap_err(), "unexpected `c` at column 8");
    }

    use super::{
        ExprKind, Lit, MAX_DEPTH, format_double, format_duration, format_timestamp, parse,
        parse_duration, parse_timestamp,
    };

    fn lit(src: &str) -> Result<Lit, String> {
        match parse(src)?.kind {
            ExprKind::Lit(l) => Ok(l),
            other => Err(format!("not a literal: {other:?}")),
        }
    }

    #[test]
    fn literals_are_decoded() {
        let table: &[(&str, Lit)] = &[
            ("'\\x41\\101\\u00e9\\U0001F600'", Lit::Str("AAé😀".into())),
            (
                "\"\\a\\b\\f\\n\\r\\t\\v\\\\\\'\\\"\\`\\?\"",
                Lit::Str("\x07\x08\x0c\n\r\t\x0b\\'\"`?".into()),
            ),
            ("r'\\d+\\n'", Lit::Str("\\d+\\n".into())),
            ("R\"\\x\"", Lit::Str("\\x".into())),
            ("'''a\r\nb'c'''", Lit::Str("a\nb'c".into())),
            ("b'\\xff\\377é'", Lit::Bytes(vec![0xff, 0xff, 0xc3, 0xa9])),
            ("rb'\\xff'", Lit::Bytes(b"\\xff".to_vec())),
            ("'\\xff'", Lit::Str("ÿ".into())),
            ("-9223372036854775808", Lit::Int(i64::MIN)),
            ("9223372036854775807", Lit::Int(i64::MAX)),
            ("18446744073709551615u", Lit::Uint(u64::MAX)),
            ("0x1F", Lit::Int(31)),
            ("-0x10", Lit::Int(-16)),
            ("0xFFu", Lit::Uint(255)),
            ("1.5e3", Lit::Double(1500.0)),
            (".5", Lit::Double(0.5)),
            ("-2.5", Lit::Double(-2.5)),
            ("1e-3", Lit::Double(0.001)),
        ];
        for (src, want) in table {
            assert_eq!(lit(src).as_ref(), Ok(want), "{src}");
        }
        for (bad, what) in [
            ("9223372036854775808", "out of range"),
            ("-9223372036854775809", "out of range"),
            ("18446744073709551616u", "out of range"),
            ("1e400", "out of range"),
            ("b'\\u00e9'", "unicode escape in a bytes literal"),
            ("'\\ud800'", "invalid unicode code point"),
            ("'\\U00110000'", "invalid unicode code point"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn logical_chains_are_flat_and_other_chains_bounded() {
        let ors = vec!["a"; 1000].join(" || ");
        assert!(check(&ors).is_ok());
        let ands = vec!["a"; 1000].join(" && ");
        assert!(check(&ands).is_ok());
        let sums = vec!["1"; 300].join(" + ");
        assert!(check(&sums).unwrap_err().contains("250 levels"));
        let selects = format!("a{}", ".b".repeat(300));
        assert!(check(&selects).unwrap_err().contains("250 levels"));
        let ok = vec!["1"; 200].join(" + ");
        assert!(check(&ok).is_ok());
        // Even runs of `!` and `-` cancel out, as in CEL's parser.
        assert!(matches!(
            parse("!!a").map(|e| e.kind),
            Ok(ExprKind::Ident(_))
        ));
        assert!(matches!(
            parse("!!!a").map(|e| e.kind),
            Ok(ExprKind::Not(_))
        ));
        assert!(check(&format!("{}a", "!".repeat(10_000))).is_ok());
    }

    #[test]
    fn macros_are_checked_when_parsed() {
        assert!(check("has(a.b)").is_ok());
        for bad in ["has(a)", "has(a[0])", "has(a.b())", "[1].exists(1, true)"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check("[1].exists(x, x > 0)").is_ok());
        assert!(check("[1].map(x, x > 0, x)").is_ok());
    }

    /// The stack one nesting level of parentheses takes while parsing, measured so that
    /// the deepest expression accepted fits in a small thread stack.
    #[test]
    fn the_deepest_expression_fits_in_a_small_stack() {
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        let nested = format!("{}1{}", "-(1 + ".repeat(120), ")".repeat(120));
        let handle = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || (check(&deep), check(&nested)))
            .unwrap();
        assert_eq!(handle.join().unwrap(), (Ok(()), Ok(())));
    }

    /// The deepest expressions compile and evaluate on a small thread stack too: the
    /// planner and the evaluator recurse once per level of the tree.
    #[test]
    fn the_deepest_trees_compile_and_evaluate_in_a_small_stack() {
        let n = MAX_DEPTH - 2;
        let exprs = [
            format!(
                "{}response.code{} == -400",
                "-(".repeat(n - 1),
                ")".repeat(n - 1)
            ),
            format!("{} == {}", vec!["1"; n - 1].join(" + "), n - 1),
            format!(
                "{}true{}",
                "(true ? ".repeat(n / 2),
                " : false)".repeat(n / 2)
            ),
            format!("{}'x'{} == 'x'", "[".repeat(n / 2), "][0]".repeat(n / 2)),
            format!("!has(request.headers{})", ".a".repeat(n - 2)),
            format!("{}1{} == 1", "int(".repeat(n - 1), ")".repeat(n - 1)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                let attrs = super::AttributeMap::new().with("response.code", 400i64);
                exprs
                    .iter()
                    .map(|e| super::Filter::compile(e).map(|f| f.matches(&attrs)))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        let results = handle.join().unwrap();
        assert_eq!(
            results,
            vec![Ok(true), Ok(true), Ok(true), Ok(true), Ok(false), Ok(true)]
        );
    }

    #[test]
    fn times_are_parsed_and_written() {
        let ns = 1_000_000_000i128;
        for (s, want) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2024-02-29T12:30:15.5Z", 1_709_209_815 * ns + 500_000_000),
            ("2024-02-29T14:30:15+02:00", 1_709_209_815 * ns),
            ("0001-01-01T00:00:00Z", -62_135_596_800 * ns),
            (
                "9999-12-31T23:59:59.999999999Z",
                253_402_300_799 * ns + 999_999_999,
            ),
        ] {
            assert_eq!(parse_timestamp(s), Ok(want), "{s}");
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567891Z",
            "0000-12-31T23:59:59Z",
            "",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
        for (s, want) in [
            ("0", 0),
            ("1s", ns),
            ("1.5s", 3 * ns / 2),
            ("100ms", ns / 10),
            ("1h30m", 5400 * ns),
            ("-2us", -2_000),
            ("3µs", 3_000),
            ("1.000000001s", ns + 1),
            (".5h", 1800 * ns),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "1",
            "s",
            "1x",
            "1.s.",
            "-",
            "400000000000s",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(3 * ns / 2), "1.5s");
        assert_eq!(format_duration(-ns), "-1s");
        assert_eq!(
            format_timestamp(1_709_209_815 * ns + 500_000_000),
            "2024-02-29T12:30:15.5Z"
        );
        assert_eq!(
            format_timestamp(-62_135_596_800 * ns),
            "0001-01-01T00:00:00Z"
        );
        for (d, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (1e6, "1e+06"),
            (123_456.0, "123456"),
            (1e21, "1e+21"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(format_double(d), want, "{d}");
        }
    }
}
