//! The configuration of Envoy's rate-limit service (`envoyproxy/ratelimit`), read the way
//! the service reads it.
//!
//! Global rate limits are not an Istio resource: Istio's task deploys Envoy's rate-limit
//! service with a `config.yaml` of domains and nested descriptors, shipped in a ConfigMap
//! (`ratelimit-config`). The mesh enforces the same limits itself (on Redis, without the
//! extra service hop), so it reads the same file — bare, or as the ConfigMap that wraps it
//! under `data.<file>.yaml` — and applies the service's rules: every descriptor has a key,
//! a key and value appear once per level, a limit has a unit unless it is `unlimited`,
//! `replaces` names another limit, `share_threshold` needs a wildcard, a domain is defined
//! once. The service refuses a file with a key it does not know; so does this reader, with
//! a diagnostic at the line and field path, and a suggestion for a misplaced or misspelt
//! key. A configuration embedded in a ConfigMap as a literal block (`|`) is reported at its
//! own lines in the ConfigMap's file.
//!
//! ```
//! use mesh_config::rls::{RateLimitUnit, RlsConfig};
//!
//! let parsed = RlsConfig::parse_str("ratelimit-config.yaml", r#"
//! apiVersion: v1
//! kind: ConfigMap
//! metadata: {name: ratelimit-config}
//! data:
//!   config.yaml: |
//!     domain: ratelimit
//!     descriptors:
//!       - key: PATH
//!         value: "/productpage"
//!         rate_limit:
//!           unit: minute
//!           requests_per_unit: 1
//!       - key: PATH
//!         rate_limit:
//!           unit: minute
//!           requests_per_unit: 100
//! "#);
//! let config = parsed.config.unwrap();
//! let domain = config.domain("ratelimit").unwrap();
//! let limit = domain.descriptors[0].rate_limit.as_ref().unwrap();
//! assert_eq!(limit.unit, Some(RateLimitUnit::Minute));
//! assert_eq!(limit.requests_per_unit, 1);
//!
//! let bad = RlsConfig::parse_str("config.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n");
//! let error = &bad.diagnostics[0];
//! assert_eq!(error.code.as_str(), "MESH0006");
//! assert_eq!(error.line(), Some(4));
//! assert_eq!(error.path.as_ref().unwrap().to_string(), "descriptors[0].rate_limit.unit");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::de::suggest;
use crate::diag::{Code, Diagnostic, Location, ResourceRef, Severity};
use crate::load::{LoadError, yaml_files};
use crate::path::FieldPath;
use crate::source::{SourceFile, Span};
use crate::yaml::{Entry, Node, Value, YamlErrorKind, parse_stream};

/// The unit of a limit's fixed window (Envoy's `RateLimitResponse.RateLimit.Unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateLimitUnit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3600 seconds.
    Hour,
    /// 86400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days, as the service counts a month.
    Month,
    /// 365 days, as the service counts a year.
    Year,
}

impl RateLimitUnit {
    /// Every unit, shortest first.
    pub const ALL: [RateLimitUnit; 7] = [
        RateLimitUnit::Second,
        RateLimitUnit::Minute,
        RateLimitUnit::Hour,
        RateLimitUnit::Day,
        RateLimitUnit::Week,
        RateLimitUnit::Month,
        RateLimitUnit::Year,
    ];

    /// The window length in seconds (the service's `UnitToDivider`).
    pub const fn seconds(self) -> u64 {
        match self {
            RateLimitUnit::Second => 1,
            RateLimitUnit::Minute => 60,
            RateLimitUnit::Hour => 60 * 60,
            RateLimitUnit::Day => 60 * 60 * 24,
            RateLimitUnit::Week => 60 * 60 * 24 * 7,
            RateLimitUnit::Month => 60 * 60 * 24 * 30,
            RateLimitUnit::Year => 60 * 60 * 24 * 365,
        }
    }

    /// The name as the configuration writes it (`second`, `minute`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            RateLimitUnit::Second => "second",
            RateLimitUnit::Minute => "minute",
            RateLimitUnit::Hour => "hour",
            RateLimitUnit::Day => "day",
            RateLimitUnit::Week => "week",
            RateLimitUnit::Month => "month",
            RateLimitUnit::Year => "year",
        }
    }

    /// Reads a unit as the service does: the enum name, in any case.
    pub fn parse(s: &str) -> Option<RateLimitUnit> {
        RateLimitUnit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for RateLimitUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole configuration: one or more domains (one per file, as the service loads them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlsConfig {
    /// The domains, in the order they were read. Names are unique.
    pub domains: Vec<RlsDomain>,
}

/// One domain: a container of descriptors with a globally unique name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlsDomain {
    /// The domain's name (`domain:`), never empty.
    pub name: String,
    /// The top-level descriptors.
    pub descriptors: Vec<RlsDescriptor>,
}

/// One entry of a descriptor list, possibly with a limit and nested descriptors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlsDescriptor {
    /// The key, never empty.
    pub key: String,
    /// The value to match; `None` matches any value of the key (the default at its level).
    /// A value containing `*` is a wildcard, each `*` matching any run of characters.
    pub value: Option<String>,
    /// The limit applied when a request's descriptor ends at this entry.
    pub rate_limit: Option<RlsRateLimit>,
    /// Over the limit, the request is still admitted (and counted).
    pub shadow_mode: bool,
    /// The limit is a quota: the request is refused only when every quota is exhausted.
    pub quota_mode: bool,
    /// Metrics per descriptor value (parsed, not enforced: the mesh counts checks as a
    /// whole).
    pub detailed_metric: bool,
    /// Metrics with the request's value (parsed, not enforced).
    pub value_to_metric: bool,
    /// Every value matching this wildcard shares one counter.
    pub share_threshold: bool,
    /// The nested descriptors.
    pub descriptors: Vec<RlsDescriptor>,
}

impl RlsDescriptor {
    /// The key the service indexes this entry by: `key`, or `key_value` with a value.
    pub fn composite_key(&self) -> String {
        match &self.value {
            Some(v) => format!("{}_{}", self.key, v),
            None => self.key.clone(),
        }
    }
}

/// A `rate_limit` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlsRateLimit {
    /// The window; `None` only when `unlimited`.
    pub unit: Option<RateLimitUnit>,
    /// Requests admitted per window (0 refuses every request).
    pub requests_per_unit: u32,
    /// No limit: answered without counting.
    pub unlimited: bool,
    /// A name other limits may replace.
    pub name: Option<String>,
    /// Names of limits this one replaces when both apply to a request.
    pub replaces: Vec<String>,
}

/// The result of reading configuration: the configuration when there is no error, and
/// every diagnostic (warnings too).
#[derive(Debug, Clone, Default)]
pub struct RlsParsed {
    /// The configuration, when nothing is an error.
    pub config: Option<RlsConfig>,
    /// What was found, in reading order.
    pub diagnostics: Vec<Diagnostic>,
}

impl RlsParsed {
    /// True when a diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

impl RlsConfig {
    /// The domain named `name`.
    pub fn domain(&self, name: &str) -> Option<&RlsDomain> {
        self.domains.iter().find(|d| d.name == name)
    }

    /// Reads `text` as if it were a file called `name`.
    pub fn parse_str(name: &str, text: &str) -> RlsParsed {
        RlsConfig::parse_sources([SourceFile::new(name, text)])
    }

    /// Reads a file, or every `*.yaml` / `*.yml` file under a directory (in name order, as
    /// the service reads its runtime directory).
    pub fn read_path(path: &Path) -> Result<RlsParsed, LoadError> {
        let mut sources = Vec::new();
        for file in yaml_files(path)? {
            sources.push(crate::store::read_source(&file)?);
        }
        Ok(RlsConfig::parse_sources(sources))
    }

    /// Reads several sources into one configuration; a domain may be defined once.
    pub fn parse_sources(sources: impl IntoIterator<Item = Arc<SourceFile>>) -> RlsParsed {
        let mut reader = Reader::default();
        for source in sources {
            reader.source(&source);
        }
        let errors = reader.diagnostics.iter().any(Diagnostic::is_error);
        RlsParsed {
            config: (!errors).then_some(RlsConfig {
                domains: reader.domains,
            }),
            diagnostics: reader.diagnostics,
        }
    }
}

const ROOT_KEYS: &[&str] = &["domain", "descriptors"];
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];
const RATE_LIMIT_KEYS: &[&str] = &["unit", "requests_per_unit", "unlimited", "name", "replaces"];
const REPLACES_KEYS: &[&str] = &["name"];

/// What the unit field expects, for messages.
const UNITS: &str = "second, minute, hour, day, week, month or year";

#[derive(Default)]
struct Reader {
    domains: Vec<RlsDomain>,
    /// Where each domain was defined, for duplicates.
    domain_at: HashMap<String, Location>,
    diagnostics: Vec<Diagnostic>,
}

/// One document being read: its source, and the resource it is (a ConfigMap).
struct Doc<'a> {
    source: &'a Arc<SourceFile>,
    resource: Option<&'a ResourceRef>,
}

impl Doc<'_> {
    fn at(&self, span: Span) -> Location {
        Location {
            source: self.source.clone(),
            span,
        }
    }
}

impl Reader {
    fn source(&mut self, source: &Arc<SourceFile>) {
        let stream = parse_stream(source);
        self.yaml_errors(source, &stream.errors);
        let broken: Vec<usize> = stream
            .errors
            .iter()
            .filter(|e| e.kind != YamlErrorKind::Syntax)
            .map(|e| e.document)
            .collect();
        for (index, node) in &stream.documents {
            // A document with duplicate keys or bad tags was reported; it is not trusted.
            if broken.contains(index) {
                continue;
            }
            self.document(source, node);
        }
    }

    fn yaml_errors(&mut self, source: &Arc<SourceFile>, errors: &[crate::yaml::YamlError]) {
        for e in errors {
            self.diagnostics.push(crate::load::yaml_error(source, e));
        }
    }

    fn push(&mut self, doc: &Doc<'_>, code: Code, message: String, path: FieldPath, span: Span) {
        let mut d = Diagnostic::new(code, message).at(doc.at(span)).path(path);
        if let Some(r) = doc.resource {
            d = d.resource(r.clone());
        }
        self.diagnostics.push(d);
    }

    /// One top-level document: a ConfigMap, a `List` of them (`kubectl get -o yaml`), or
    /// the configuration itself.
    fn document(&mut self, source: &Arc<SourceFile>, node: &Node) {
        self.item(source, node, FieldPath::root());
    }

    fn item(&mut self, source: &Arc<SourceFile>, node: &Node, base: FieldPath) {
        let kind = node.get("kind");
        let doc = Doc {
            source,
            resource: None,
        };
        let Some(kind) = kind else {
            self.config(&doc, node, base);
            return;
        };
        if matches!(kind.as_str(), Some("List" | "ConfigMapList")) {
            match node.get("items").map(|n| &n.value) {
                Some(Value::Seq(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.item(source, item, base.key("items").index(i));
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => self.push(
                    &doc,
                    Code::TypeMismatch,
                    format!("a List's `items` must be a list, not {}", other.type_name()),
                    base.key("items"),
                    node.span,
                ),
            }
            return;
        }
        if kind.as_str() != Some("ConfigMap") {
            let found = match &kind.value {
                Value::Str(s) => format!("kind `{s}`"),
                other => format!("a `kind` that is {}", other.type_name()),
            };
            self.push(
                &doc,
                Code::NotAResource,
                format!(
                    "expected the rate-limit service's configuration (`domain`, `descriptors`) \
                     or a ConfigMap holding it under `data`, found {found}"
                ),
                base.key("kind"),
                kind.span,
            );
            return;
        }
        self.config_map(source, node, &base);
    }

    /// A ConfigMap: every `data` entry is a configuration file, as the service reads the
    /// directory the ConfigMap is mounted at.
    fn config_map(&mut self, source: &Arc<SourceFile>, node: &Node, base: &FieldPath) {
        let meta = node.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_string();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Node::as_str)
            .unwrap_or("default")
            .to_string();
        let resource = ResourceRef {
            kind: "ConfigMap".into(),
            namespace,
            name,
        };
        let doc = Doc {
            source,
            resource: Some(&resource),
        };
        if let Some(api) = node.get("apiVersion")
            && api.as_str() != Some("v1")
        {
            self.push(
                &doc,
                Code::UnsupportedApiVersion,
                "a ConfigMap's apiVersion is `v1`".into(),
                base.key("apiVersion"),
                api.span,
            );
        }
        let data_path = base.key("data");
        let entries = match node.entry("data").map(|e| (&e.value.value, e)) {
            Some((Value::Map(entries), _)) if !entries.is_empty() => entries,
            Some((Value::Map(_) | Value::Null, e)) => {
                self.push(
                    &doc,
                    Code::MissingField,
                    "the ConfigMap has no data: expected `data.<file>.yaml` holding the \
                     rate-limit service's configuration"
                        .into(),
                    data_path,
                    e.key_span,
                );
                return;
            }
            Some((other, e)) => {
                self.push(
                    &doc,
                    Code::TypeMismatch,
                    format!(
                        "`data` must be a mapping of file names to their text, not {}",
                        other.type_name()
                    ),
                    data_path,
                    e.key_span,
                );
                return;
            }
            None => {
                self.push(
                    &doc,
                    Code::MissingField,
                    "the ConfigMap has no `data`: expected `data.<file>.yaml` holding the \
                     rate-limit service's configuration"
                        .into(),
                    data_path,
                    node.span,
                );
                return;
            }
        };
        for entry in entries {
            let path = data_path.key(entry.key.clone());
            let Some(text) = entry.value.as_str() else {
                self.push(
                    &doc,
                    Code::TypeMismatch,
                    format!(
                        "`data.{}` must be the text of a configuration file, not {}",
                        entry.key,
                        entry.value.value.type_name()
                    ),
                    path,
                    entry.value.span,
                );
                continue;
            };
            let inner = embedded_source(source, entry, text);
            let stream = parse_stream(&inner);
            self.yaml_errors(&inner, &stream.errors);
            if !stream.errors.is_empty() {
                continue;
            }
            let inner_doc = Doc {
                source: &inner,
                resource: Some(&resource),
            };
            let mut any = false;
            for (_, node) in &stream.documents {
                any = true;
                self.config(&inner_doc, node, path.clone());
            }
            if !any {
                self.push(
                    &doc,
                    Code::MissingField,
                    format!(
                        "`data.{}` is empty: expected `domain` and `descriptors`",
                        entry.key
                    ),
                    path,
                    entry.value.span,
                );
            }
        }
    }

    /// The configuration's root: `domain` and `descriptors`.
    fn config(&mut self, doc: &Doc<'_>, node: &Node, path: FieldPath) {
        let Value::Map(entries) = &node.value else {
            self.push(
                doc,
                Code::TypeMismatch,
                format!(
                    "expected a mapping with `domain` and `descriptors`, found {}",
                    node.value.type_name()
                ),
                path,
                node.span,
            );
            return;
        };
        let errors_before = self.error_count();
        let mut domain: Option<(String, Span)> = None;
        let mut descriptors = Vec::new();
        for e in entries {
            let p = path.key(e.key.clone());
            match e.key.as_str() {
                "domain" => {
                    if let Some(s) = self.string(doc, &e.value, &p) {
                        domain = Some((s, e.value.span));
                    }
                }
                "descriptors" => descriptors = self.descriptor_list(doc, e, &p),
                _ => self.unknown(doc, e, &p, ROOT_KEYS, "the configuration's root"),
            }
        }
        let Some((name, span)) = domain.filter(|(n, _)| !n.is_empty()) else {
            let span = node.entry("domain").map_or(node.span, |e| e.key_span);
            self.push(
                doc,
                Code::MissingField,
                "a configuration needs a non-empty `domain`".into(),
                path.key("domain"),
                span,
            );
            return;
        };
        if let Some(first) = self.domain_at.get(&name) {
            let first = first.clone();
            let mut d = Diagnostic::new(
                Code::DuplicateEntry,
                format!(
                    "domain `{name}` is defined twice (first at {}); a domain is defined once",
                    first.display()
                ),
            )
            .at(doc.at(span))
            .path(path.key("domain"))
            .related(first, "first defined here");
            if let Some(r) = doc.resource {
                d = d.resource(r.clone());
            }
            self.diagnostics.push(d);
            return;
        }
        self.domain_at.insert(name.clone(), doc.at(span));
        if self.error_count() == errors_before {
            self.domains.push(RlsDomain { name, descriptors });
        }
    }

    fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// A `descriptors` list; keys (`key` or `key_value`) are unique in it.
    fn descriptor_list(
        &mut self,
        doc: &Doc<'_>,
        e: &Entry,
        path: &FieldPath,
    ) -> Vec<RlsDescriptor> {
        let items = match &e.value.value {
            Value::Seq(items) => items,
            Value::Null => return Vec::new(),
            other => {
                self.push(
                    doc,
                    Code::TypeMismatch,
                    format!("`descriptors` must be a list, not {}", other.type_name()),
                    path.clone(),
                    e.key_span,
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut seen: HashMap<String, Span> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let Some(d) = self.descriptor(doc, item, &p) else {
                continue;
            };
            let composite = d.composite_key();
            if let Some(first) = seen.get(&composite) {
                let what = match &d.value {
                    Some(v) => format!("key `{}` with value `{v}`", d.key),
                    None => format!("key `{}` without a value", d.key),
                };
                let mut diag = Diagnostic::new(
                    Code::DuplicateEntry,
                    format!(
                        "{what} appears twice in one descriptor list (composite key \
                         `{composite}`); the service refuses duplicates"
                    ),
                )
                .at(doc.at(item.span))
                .path(p)
                .related(doc.at(*first), "first defined here");
                if let Some(r) = doc.resource {
                    diag = diag.resource(r.clone());
                }
                self.diagnostics.push(diag);
                continue;
            }
            seen.insert(composite, item.span);
            out.push(d);
        }
        out
    }

    fn descriptor(
        &mut self,
        doc: &Doc<'_>,
        node: &Node,
        path: &FieldPath,
    ) -> Option<RlsDescriptor> {
        let Value::Map(entries) = &node.value else {
            self.push(
                doc,
                Code::TypeMismatch,
                format!(
                    "a descriptor must be a mapping (`key`, `value`, `rate_limit`, ...), not {}",
                    node.value.type_name()
                ),
                path.clone(),
                node.span,
            );
            return None;
        };
        let mut d = RlsDescriptor::default();
        let mut ok = true;
        for e in entries {
            let p = path.key(e.key.clone());
            match e.key.as_str() {
                "key" => match self.string(doc, &e.value, &p) {
                    Some(k) => d.key = k,
                    None => ok = false,
                },
                "value" => match self.string(doc, &e.value, &p) {
                    Some(v) => d.value = Some(v).filter(|v| !v.is_empty()),
                    None => ok = false,
                },
                "rate_limit" => match &e.value.value {
                    Value::Null => {}
                    _ => match self.rate_limit(doc, e, &p) {
                        Some(r) => d.rate_limit = Some(r),
                        None => ok = false,
                    },
                },
                "descriptors" => d.descriptors = self.descriptor_list(doc, e, &p),
                "shadow_mode" => d.shadow_mode = self.boolean(doc, &e.value, &p),
                "quota_mode" => d.quota_mode = self.boolean(doc, &e.value, &p),
                "detailed_metric" => {
                    d.detailed_metric = self.boolean(doc, &e.value, &p);
                    if d.detailed_metric {
                        self.not_enforced(doc, e, &p, "metrics per descriptor value");
                    }
                }
                "value_to_metric" => {
                    d.value_to_metric = self.boolean(doc, &e.value, &p);
                    if d.value_to_metric {
                        self.not_enforced(doc, e, &p, "metrics per descriptor value");
                    }
                }
                "share_threshold" => d.share_threshold = self.boolean(doc, &e.value, &p),
                "metadata" => match &e.value.value {
                    Value::Null => {}
                    Value::Map(m) if m.is_empty() => {}
                    Value::Map(_) => {
                        self.not_enforced(doc, e, &p, "the service's response dynamic metadata");
                    }
                    other => {
                        self.push(
                            doc,
                            Code::TypeMismatch,
                            format!("`metadata` must be a mapping, not {}", other.type_name()),
                            p,
                            e.value.span,
                        );
                        ok = false;
                    }
                },
                _ => {
                    self.unknown(doc, e, &p, DESCRIPTOR_KEYS, "a descriptor");
                    ok = false;
                }
            }
        }
        if d.key.is_empty() {
            let span = node.entry("key").map_or(node.span, |e| e.value.span);
            self.push(
                doc,
                Code::MissingField,
                "a descriptor needs a non-empty `key`".into(),
                path.key("key"),
                span,
            );
            return None;
        }
        if d.share_threshold && !d.composite_key().contains('*') {
            let span = node
                .entry("share_threshold")
                .map_or(node.span, |e| e.key_span);
            self.push(
                doc,
                Code::InvalidValue,
                format!(
                    "`share_threshold` applies to wildcard values (containing `*`); key `{}` \
                     has none",
                    d.composite_key()
                ),
                path.key("share_threshold"),
                span,
            );
            ok = false;
        }
        if let Some(r) = &d.rate_limit
            && let Some(name) = &r.name
            && r.replaces.iter().any(|n| n == name)
        {
            let span = node
                .get("rate_limit")
                .and_then(|r| r.entry("replaces"))
                .map_or(node.span, |e| e.key_span);
            self.push(
                doc,
                Code::InvalidValue,
                format!("limit `{name}` cannot replace itself"),
                path.key("rate_limit").key("replaces"),
                span,
            );
            ok = false;
        }
        ok.then_some(d)
    }

    fn rate_limit(&mut self, doc: &Doc<'_>, e: &Entry, path: &FieldPath) -> Option<RlsRateLimit> {
        let Value::Map(entries) = &e.value.value else {
            self.push(
                doc,
                Code::TypeMismatch,
                format!(
                    "`rate_limit` must be a mapping (`unit`, `requests_per_unit`), not {}",
                    e.value.value.type_name()
                ),
                path.clone(),
                e.value.span,
            );
            return None;
        };
        let mut r = RlsRateLimit::default();
        let mut ok = true;
        let mut unit: Option<(Option<RateLimitUnit>, &Entry)> = None;
        let mut per_unit: Option<&Entry> = None;
        for f in entries {
            let p = path.key(f.key.clone());
            match f.key.as_str() {
                "unit" => {
                    if f.value.is_null() {
                        continue;
                    }
                    match self.string(doc, &f.value, &p) {
                        Some(s) => {
                            let parsed = RateLimitUnit::parse(&s);
                            if parsed.is_none() {
                                self.push(
                                    doc,
                                    Code::InvalidEnum,
                                    format!("unknown unit `{s}`: expected {UNITS}"),
                                    p,
                                    f.value.span,
                                );
                                ok = false;
                            }
                            unit = Some((parsed, f));
                        }
                        None => ok = false,
                    }
                }
                "requests_per_unit" => {
                    if f.value.is_null() {
                        continue;
                    }
                    per_unit = Some(f);
                    match &f.value.value {
                        Value::Int(n) => match u32::try_from(*n) {
                            Ok(n) => r.requests_per_unit = n,
                            Err(_) => {
                                self.push(
                                    doc,
                                    Code::InvalidValue,
                                    format!(
                                        "`requests_per_unit` is {n}: expected 0 to {}",
                                        u32::MAX
                                    ),
                                    p,
                                    f.value.span,
                                );
                                ok = false;
                            }
                        },
                        other => {
                            self.push(
                                doc,
                                Code::TypeMismatch,
                                format!(
                                    "`requests_per_unit` must be a whole number, not {}",
                                    other.type_name()
                                ),
                                p,
                                f.value.span,
                            );
                            ok = false;
                        }
                    }
                }
                "unlimited" => r.unlimited = self.boolean(doc, &f.value, &p),
                "name" => match self.string(doc, &f.value, &p) {
                    Some(n) => r.name = Some(n).filter(|n| !n.is_empty()),
                    None => ok = false,
                },
                "replaces" => match self.replaces(doc, f, &p) {
                    Some(list) => r.replaces = list,
                    None => ok = false,
                },
                _ => {
                    self.unknown(doc, f, &p, RATE_LIMIT_KEYS, "a rate_limit");
                    ok = false;
                }
            }
        }
        r.unit = unit.and_then(|(u, _)| u);
        if r.unlimited {
            if let Some((Some(_), f)) = unit {
                self.push(
                    doc,
                    Code::ExclusiveFields,
                    "`unit` cannot be set on an unlimited limit (`unlimited: true`)".into(),
                    path.key("unit"),
                    f.value.span,
                );
                ok = false;
            }
            if let Some(f) = per_unit {
                let mut d = Diagnostic::new(
                    Code::ExclusiveFields,
                    "`requests_per_unit` has no effect on an unlimited limit".to_string(),
                )
                .severity(Severity::Warning)
                .at(doc.at(f.value.span))
                .path(path.key("requests_per_unit"));
                if let Some(res) = doc.resource {
                    d = d.resource(res.clone());
                }
                self.diagnostics.push(d);
            }
        } else {
            if unit.is_none() {
                self.push(
                    doc,
                    Code::MissingField,
                    format!("a limit needs a `unit` ({UNITS}), or `unlimited: true`"),
                    path.key("unit"),
                    e.key_span,
                );
                ok = false;
            }
            if per_unit.is_none() {
                let mut d = Diagnostic::new(
                    Code::MissingField,
                    "a limit needs `requests_per_unit`".to_string(),
                )
                .at(doc.at(e.key_span))
                .path(path.key("requests_per_unit"))
                .help("write `requests_per_unit: 0` to refuse every request");
                if let Some(res) = doc.resource {
                    d = d.resource(res.clone());
                }
                self.diagnostics.push(d);
                ok = false;
            }
        }
        ok.then_some(r)
    }

    fn replaces(&mut self, doc: &Doc<'_>, e: &Entry, path: &FieldPath) -> Option<Vec<String>> {
        let items = match &e.value.value {
            Value::Seq(items) => items,
            Value::Null => return Some(Vec::new()),
            other => {
                self.push(
                    doc,
                    Code::TypeMismatch,
                    format!(
                        "`replaces` must be a list of `{{name: ...}}`, not {}",
                        other.type_name()
                    ),
                    path.clone(),
                    e.key_span,
                );
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let Value::Map(entries) = &item.value else {
                self.push(
                    doc,
                    Code::TypeMismatch,
                    format!(
                        "an entry of `replaces` must be a mapping `{{name: ...}}`, not {}",
                        item.value.type_name()
                    ),
                    p,
                    item.span,
                );
                ok = false;
                continue;
            };
            let mut name = String::new();
            for f in entries {
                let fp = p.key(f.key.clone());
                match f.key.as_str() {
                    "name" => match self.string(doc, &f.value, &fp) {
                        Some(n) => name = n,
                        None => ok = false,
                    },
                    _ => {
                        self.unknown(doc, f, &fp, REPLACES_KEYS, "an entry of replaces");
                        ok = false;
                    }
                }
            }
            if name.is_empty() {
                self.push(
                    doc,
                    Code::MissingField,
                    "an entry of `replaces` needs a non-empty `name`".into(),
                    p.key("name"),
                    item.span,
                );
                ok = false;
                continue;
            }
            out.push(name);
        }
        ok.then_some(out)
    }

    /// A text field. Like the service's YAML library, a number or boolean written
    /// unquoted is read as the text it was written as; `null` is the empty string.
    fn string(&mut self, doc: &Doc<'_>, node: &Node, path: &FieldPath) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Null => Some(String::new()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(
                doc.source
                    .text()
                    .get(node.span.start.offset..node.span.end.offset)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .unwrap_or_else(|| match &node.value {
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    }),
            ),
            other => {
                self.push(
                    doc,
                    Code::TypeMismatch,
                    format!("expected text, found {}", other.type_name()),
                    path.clone(),
                    node.span,
                );
                None
            }
        }
    }

    /// A boolean; the service's YAML 1.1 spellings (`yes`, `on`, ...) are accepted.
    fn boolean(&mut self, doc: &Doc<'_>, node: &Node, path: &FieldPath) -> bool {
        match &node.value {
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::Str(s) => match yaml11_bool(s) {
                Some(b) => b,
                None => {
                    self.push(
                        doc,
                        Code::TypeMismatch,
                        format!("expected `true` or `false`, found `{s}`"),
                        path.clone(),
                        node.span,
                    );
                    false
                }
            },
            other => {
                self.push(
                    doc,
                    Code::TypeMismatch,
                    format!("expected `true` or `false`, found {}", other.type_name()),
                    path.clone(),
                    node.span,
                );
                false
            }
        }
    }

    fn unknown(&mut self, doc: &Doc<'_>, e: &Entry, path: &FieldPath, keys: &[&str], what: &str) {
        let expected = keys
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut d = Diagnostic::new(
            Code::UnknownField,
            format!(
                "unknown key `{}` in {what}: the service refuses keys it does not know \
                 (expected {expected})",
                e.key
            ),
        )
        .at(doc.at(e.key_span))
        .path(path.clone());
        let home = [
            ("the configuration's root", ROOT_KEYS),
            ("a descriptor", DESCRIPTOR_KEYS),
            ("a rate_limit block", RATE_LIMIT_KEYS),
        ]
        .into_iter()
        .find(|(_, ks)| ks.contains(&e.key.as_str()));
        if let Some((place, _)) = home {
            d = d.help(format!("`{}` belongs in {place}", e.key));
        } else if let Some(s) = suggest(&e.key, keys) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        if let Some(r) = doc.resource {
            d = d.resource(r.clone());
        }
        self.diagnostics.push(d);
    }

    fn not_enforced(&mut self, doc: &Doc<'_>, e: &Entry, path: &FieldPath, what: &str) {
        let mut d = Diagnostic::new(
            Code::NotEnforced,
            format!(
                "`{}` is accepted, but the mesh does not produce {what}: it counts global \
                 checks as a whole",
                e.key
            ),
        )
        .at(doc.at(e.key_span))
        .path(path.clone());
        if let Some(r) = doc.resource {
            d = d.resource(r.clone());
        }
        self.diagnostics.push(d);
    }
}

/// YAML 1.1's booleans, as the service's YAML library reads them.
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            Some(false)
        }
        _ => None,
    }
}

/// The source a ConfigMap's embedded file is read from.
///
/// A literal block (`config.yaml: |`) is read in place: a text with the outer file's name,
/// blank up to the block and then the block's lines as written, so that every position in
/// it is the position in the ConfigMap's file (YAML allows a document indented as a
/// whole). Anything else (a quoted string, a folded block) is read as a text of its own,
/// named after the file and the data key.
fn embedded_source(outer: &Arc<SourceFile>, entry: &Entry, value: &str) -> Arc<SourceFile> {
    match literal_block(outer.text(), entry.value.span.start.offset, value) {
        Some(text) => SourceFile::new(outer.name(), text),
        None => SourceFile::new(format!("{} (data.{})", outer.name(), entry.key), value),
    }
}

/// The outer text blanked except for the literal block whose scalar starts at byte `start`
/// (the parser places it at the block's first content character), when the block's lines,
/// de-indented, are exactly `value`.
fn literal_block(text: &str, start: usize, value: &str) -> Option<String> {
    let line_start = text.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
    if !text.get(line_start..start)?.bytes().all(|b| b == b' ') {
        return None;
    }
    // The header line: the last non-blank line before, ending in `|` (`|-`, `|+`: the
    // chomping only changes trailing line breaks; an indentation indicator is not read
    // in place).
    let before = text.get(..line_start)?;
    let header = before
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())?
        .trim_end();
    let header = header
        .split_once(" #")
        .map_or(header, |(h, _)| h)
        .trim_end();
    if !(header.ends_with('|') || header.ends_with("|-") || header.ends_with("|+")) {
        return None;
    }
    let header_end = before.trim_end_matches([' ', '\n', '\r']).len();
    let body_start = header_end + text.get(header_end..)?.find('\n')? + 1;
    let mut indent: Option<usize> = None;
    let mut end = body_start;
    let mut last_content_end = body_start;
    for line in text.get(body_start..)?.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let content = bare.trim_start_matches(' ');
        let spaces = bare.len() - content.len();
        if !content.is_empty() {
            match indent {
                None => indent = Some(spaces),
                Some(i) if spaces < i => break,
                Some(_) => {}
            }
            last_content_end = end + line.len();
        } else if indent.is_some_and(|i| spaces > i) {
            // Spaces beyond the indentation are content of the block.
            last_content_end = end + line.len();
        }
        end += line.len();
    }
    let indent = indent?;
    let block = text.get(body_start..last_content_end)?;
    let mut unindented = String::with_capacity(block.len());
    for line in block.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let inner = bare.get(indent..).unwrap_or("");
        // A document marker would be one only once de-indented.
        if inner.starts_with("---") || inner.starts_with("...") || inner.starts_with('\t') {
            return None;
        }
        unindented.push_str(inner);
        unindented.push('\n');
    }
    if unindented.trim_end_matches('\n') != value.trim_end_matches('\n') {
        return None;
    }
    let lines_before = text.get(..body_start)?.matches('\n').count();
    let mut out = "\n".repeat(lines_before);
    out.push_str(block);
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn parse(text: &str) -> RlsParsed {
        RlsConfig::parse_str("config.yaml", text)
    }

    fn errors(text: &str) -> Vec<(String, Option<u32>, String)> {
        parse(text)
            .diagnostics
            .iter()
            .map(|d| {
                (
                    d.code.as_str().to_string(),
                    d.line(),
                    d.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }

    const ISTIO_TASK: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: ratelimit-config
data:
  config.yaml: |
    domain: ratelimit
    descriptors:
      - key: PATH
        value: "/productpage"
        rate_limit:
          unit: minute
          requests_per_unit: 1
      - key: PATH
        rate_limit:
          unit: minute
          requests_per_unit: 100
"#;

    #[test]
    fn istio_task_config_map() {
        let p = RlsConfig::parse_str("cm.yaml", ISTIO_TASK);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        let c = p.config.unwrap();
        assert_eq!(c.domains.len(), 1);
        let d = &c.domains[0];
        assert_eq!(d.name, "ratelimit");
        assert_eq!(d.descriptors.len(), 2);
        assert_eq!(d.descriptors[0].key, "PATH");
        assert_eq!(d.descriptors[0].value.as_deref(), Some("/productpage"));
        assert_eq!(
            d.descriptors[0].rate_limit,
            Some(RlsRateLimit {
                unit: Some(RateLimitUnit::Minute),
                requests_per_unit: 1,
                ..Default::default()
            })
        );
        assert_eq!(d.descriptors[1].value, None);
        assert_eq!(
            d.descriptors[1]
                .rate_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            100
        );
    }

    #[test]
    fn config_map_errors_point_at_the_config_map_lines() {
        let text = ISTIO_TASK.replace(
            "unit: minute\n          requests_per_unit: 100",
            "unit: minnute\n          requests_per_unit: 100",
        );
        let p = RlsConfig::parse_str("cm.yaml", &text);
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        let d = &p.diagnostics[0];
        assert_eq!(d.code, Code::InvalidEnum);
        assert_eq!(d.file(), Some("cm.yaml"));
        assert_eq!(d.line(), Some(16));
        assert_eq!(d.column(), Some(17));
        assert_eq!(
            d.path.as_ref().unwrap().to_string(),
            r#"data["config.yaml"].descriptors[1].rate_limit.unit"#
        );
        assert_eq!(
            d.resource.as_ref().unwrap().to_string(),
            "ConfigMap default/ratelimit-config"
        );
        assert!(p.config.is_none());
        // The rendering quotes the ConfigMap's own line.
        let rendered = crate::diag::render(&p.diagnostics, Default::default());
        assert!(rendered.contains("unit: minnute"), "{rendered}");
    }

    #[test]
    fn lists_of_config_maps() {
        let indented: String = ISTIO_TASK.lines().map(|l| format!("  {l}\n")).collect();
        let text = format!("apiVersion: v1\nkind: List\nitems:\n-{}", &indented[1..]);
        let p = RlsConfig::parse_str("list.yaml", &text);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        assert_eq!(p.config.unwrap().domains[0].descriptors.len(), 2);
        let bad = text.replace("requests_per_unit: 100", "requests_per_unit: -100");
        let p = RlsConfig::parse_str("list.yaml", &bad);
        let d = &p.diagnostics[0];
        assert_eq!(d.line(), Some(20));
        assert_eq!(
            d.path.as_ref().unwrap().to_string(),
            r#"items[0].data["config.yaml"].descriptors[1].rate_limit.requests_per_unit"#
        );
    }

    #[test]
    fn quoted_config_map_data_is_read_as_its_own_text() {
        let text = "kind: ConfigMap\nmetadata: {name: rl}\ndata:\n  a.yaml: \"domain: d\\ndescriptors: [{key: k, rate_limit: {unit: hour, requests_per_unit: -1}}]\\n\"\n";
        let p = RlsConfig::parse_str("cm.yaml", text);
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        let d = &p.diagnostics[0];
        assert_eq!(d.code, Code::InvalidValue);
        assert_eq!(d.file(), Some("cm.yaml (data.a.yaml)"));
        assert_eq!(d.line(), Some(2));
        assert_eq!(
            d.path.as_ref().unwrap().to_string(),
            r#"data["a.yaml"].descriptors[0].rate_limit.requests_per_unit"#
        );
    }

    #[test]
    fn every_field() {
        let p = parse(
            r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: SECOND, requests_per_unit: 10, name: per_ip}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: Second, requests_per_unit: 0}
  - key: ldap
    rate_limit: {unlimited: true}
  - key: status
    value: 200
    shadow_mode: yes
    quota_mode: true
    rate_limit:
      unit: week
      requests_per_unit: 4294967295
      replaces: [{name: per_ip}]
  - key: files
    value: files/*
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: year, requests_per_unit: 3}
"#,
        );
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        let c = p.config.unwrap();
        let ds = &c.domain("edge").unwrap().descriptors;
        assert_eq!(ds.len(), 5);
        assert_eq!(
            ds[0].rate_limit.as_ref().unwrap().name.as_deref(),
            Some("per_ip")
        );
        assert_eq!(ds[1].value.as_deref(), Some("50.0.0.5"));
        assert_eq!(ds[1].rate_limit.as_ref().unwrap().requests_per_unit, 0);
        assert_eq!(
            ds[1].rate_limit.as_ref().unwrap().unit,
            Some(RateLimitUnit::Second)
        );
        let ldap = ds[2].rate_limit.as_ref().unwrap();
        assert!(ldap.unlimited);
        assert_eq!(ldap.unit, None);
        assert_eq!(ds[3].value.as_deref(), Some("200"));
        assert!(ds[3].shadow_mode && ds[3].quota_mode);
        let r = ds[3].rate_limit.as_ref().unwrap();
        assert_eq!(r.requests_per_unit, u32::MAX);
        assert_eq!(r.unit, Some(RateLimitUnit::Week));
        assert_eq!(r.replaces, vec!["per_ip".to_string()]);
        assert!(ds[4].share_threshold);
        assert_eq!(
            ds[4].descriptors[0].rate_limit.as_ref().unwrap().unit,
            Some(RateLimitUnit::Year)
        );
    }

    #[test]
    fn diagnostics_table() {
        // (text, [(code, line, path)])
        type Expected = &'static [(&'static str, u32, &'static str)];
        let cases: &[(&str, Expected)] = &[
            ("descriptors: []\n", &[("MESH0005", 1, "domain")]),
            ("domain: ''\n", &[("MESH0005", 1, "domain")]),
            ("domain: d\ndomian: x\n", &[("MESH0004", 2, "domian")]),
            ("domain: d\nunit: second\n", &[("MESH0004", 2, "unit")]),
            (
                "domain: d\ndescriptors: {key: a}\n",
                &[("MESH0003", 2, "descriptors")],
            ),
            (
                "domain: d\ndescriptors:\n  - value: v\n",
                &[("MESH0005", 3, "descriptors[0].key")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {requests_per_unit: 1}\n",
                &[("MESH0005", 4, "descriptors[0].rate_limit.unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n",
                &[("MESH0005", 4, "descriptors[0].rate_limit.requests_per_unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: unknown, requests_per_unit: 1}\n",
                &[("MESH0006", 4, "descriptors[0].rate_limit.unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1.5}\n",
                &[("MESH0003", 4, "descriptors[0].rate_limit.requests_per_unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: \"5\"}\n",
                &[("MESH0003", 4, "descriptors[0].rate_limit.requests_per_unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 4294967296}\n",
                &[("MESH0112", 4, "descriptors[0].rate_limit.requests_per_unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n",
                &[("MESH0107", 4, "descriptors[0].rate_limit.unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, requests_per_unit: 3}\n",
                &[("MESH0107", 4, "descriptors[0].rate_limit.requests_per_unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, name: n, replaces: [{name: n}]}\n",
                &[("MESH0112", 4, "descriptors[0].rate_limit.replaces")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: ''}]}\n",
                &[("MESH0005", 4, "descriptors[0].rate_limit.replaces[0].name")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{nam: x}]}\n",
                &[
                    ("MESH0004", 4, "descriptors[0].rate_limit.replaces[0].nam"),
                    ("MESH0005", 4, "descriptors[0].rate_limit.replaces[0].name"),
                ],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n",
                &[("MESH0112", 4, "descriptors[0].share_threshold")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n",
                &[("MESH0003", 4, "descriptors[0].shadow_mode")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    unit: second\n",
                &[("MESH0004", 4, "descriptors[0].unit")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    detailed_metric: true\n",
                &[("MESH0120", 4, "descriptors[0].detailed_metric")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    metadata: {team: x}\n",
                &[("MESH0120", 4, "descriptors[0].metadata")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    value: v\n  - key: a\n    value: v\n",
                &[("MESH0113", 5, "descriptors[1]")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n  - key: a\n",
                &[("MESH0113", 4, "descriptors[1]")],
            ),
            // `a` with value `b` and the key `a_b` are one composite key to the service.
            (
                "domain: d\ndescriptors:\n  - key: a\n    value: b\n  - key: a_b\n",
                &[("MESH0113", 5, "descriptors[1]")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: x\n    descriptors:\n      - key: a\n      - key: a\n",
                &[("MESH0113", 6, "descriptors[0].descriptors[1]")],
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n  - 3\n",
                &[("MESH0003", 4, "descriptors[1]")],
            ),
            ("domain: d\ndomain: e\n", &[("MESH0002", 2, "")]),
            ("domain: [d\n", &[("MESH0001", 1, "")]),
            ("kind: Deployment\n", &[("MESH0009", 1, "kind")]),
            (
                "kind: ConfigMap\nmetadata: {name: x}\n",
                &[("MESH0005", 1, "data")],
            ),
            (
                "kind: ConfigMap\ndata:\n  a.yaml: 3\n",
                &[("MESH0003", 3, "data[\"a.yaml\"]")],
            ),
            ("- a\n", &[("MESH0003", 1, "")]),
        ];
        for (text, want) in cases {
            let got = errors(text);
            let want: Vec<(String, Option<u32>, String)> = want
                .iter()
                .map(|(c, l, p)| (c.to_string(), Some(*l), p.to_string()))
                .collect();
            assert_eq!(got, want, "for:\n{text}");
            let parsed = parse(text);
            assert_eq!(
                parsed.config.is_some(),
                !parsed.has_errors(),
                "for:\n{text}"
            );
        }
    }

    #[test]
    fn unknown_keys_get_help() {
        let p = parse("domain: d\ndescriptors:\n  - key: a\n    rate_limt: {unit: second}\n");
        assert_eq!(
            p.diagnostics[0].help.as_deref(),
            Some("did you mean `rate_limit`?")
        );
        let p = parse("domain: d\ndescriptors:\n  - key: a\n    requests_per_unit: 3\n");
        assert_eq!(
            p.diagnostics[0].help.as_deref(),
            Some("`requests_per_unit` belongs in a rate_limit block")
        );
    }

    #[test]
    fn duplicate_domains_across_files() {
        let p = RlsConfig::parse_sources([
            SourceFile::new("a.yaml", "domain: d\n"),
            SourceFile::new("b.yaml", "domain: e\n"),
            SourceFile::new("c.yaml", "\n\ndomain: d\n"),
        ]);
        assert_eq!(p.diagnostics.len(), 1);
        let d = &p.diagnostics[0];
        assert_eq!(d.code, Code::DuplicateEntry);
        assert_eq!((d.file(), d.line()), (Some("c.yaml"), Some(3)));
        assert_eq!(d.related[0].location.source.name(), "a.yaml");
        assert!(p.config.is_none());
    }

    #[test]
    fn several_domains_and_scalars_as_text() {
        let p = parse(
            "domain: a\ndescriptors: [{key: 1, value: 0x1F}]\n---\ndomain: b\ndescriptors: [{key: k, value: true, rate_limit: ~}]\n",
        );
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        let c = p.config.unwrap();
        assert_eq!(c.domains.len(), 2);
        let a = &c.domain("a").unwrap().descriptors[0];
        assert_eq!((a.key.as_str(), a.value.as_deref()), ("1", Some("0x1F")));
        let b = &c.domain("b").unwrap().descriptors[0];
        assert_eq!(b.value.as_deref(), Some("true"));
        assert_eq!(b.rate_limit, None);
    }

    #[test]
    fn empty_value_is_no_value() {
        let p = parse("domain: a\ndescriptors: [{key: k, value: ''}, {key: j, value: }]\n");
        let c = p.config.unwrap();
        assert_eq!(c.domains[0].descriptors[0].value, None);
        assert_eq!(c.domains[0].descriptors[1].value, None);
    }

    #[test]
    fn units() {
        for u in RateLimitUnit::ALL {
            assert_eq!(RateLimitUnit::parse(&u.as_str().to_uppercase()), Some(u));
        }
        assert_eq!(RateLimitUnit::parse("unknown"), None);
        assert_eq!(RateLimitUnit::Day.seconds(), 86_400);
        assert_eq!(RateLimitUnit::Month.seconds(), 2_592_000);
    }

    #[test]
    fn literal_block_mapping() {
        let text = "data:\n  c.yaml: |\n    a: 1\n\n      b: 2\n  other: x\n";
        let start = text.find("a: 1").unwrap();
        let inner = literal_block(text, start, "a: 1\n\n  b: 2\n").unwrap();
        assert_eq!(inner, "\n\n    a: 1\n\n      b: 2\n");
        // A block whose lines do not give the value back is not used in place.
        assert_eq!(literal_block(text, start, "a: 2\n"), None);
        // Folded blocks are not line for line.
        let folded = "data:\n  c.yaml: >\n    a: 1\n";
        assert_eq!(
            literal_block(folded, folded.find("a: 1").unwrap(), "a: 1\n"),
            None
        );
        // Blank lines before the content, a comment after the indicator.
        let text = "data:\n  c.yaml: |-  # the file\n\n    a: 1\n";
        let inner = literal_block(text, text.find("a: 1").unwrap(), "\na: 1").unwrap();
        assert_eq!(inner, "\n\n\n    a: 1\n");
    }

    mod props {
        use proptest::prelude::*;

        use super::super::RlsConfig;

        const WORDS: &[&str] = &[
            "domain",
            "descriptors",
            "key",
            "value",
            "rate_limit",
            "unit",
            "requests_per_unit",
            "unlimited",
            "name",
            "replaces",
            "shadow_mode",
            "quota_mode",
            "detailed_metric",
            "value_to_metric",
            "share_threshold",
            "metadata",
            "kind",
            "ConfigMap",
            "data",
            "config.yaml",
            "second",
            "minute",
            "hour",
            "day",
            "1",
            "-1",
            "0",
            "true",
            "no",
            "a*",
            "*",
            "",
            "~",
            "[",
            "{",
            "|",
        ];

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(WORDS).prop_map(str::to_string),
                "[a-z_*0-9]{0,6}",
                any::<i64>().prop_map(|n| n.to_string()),
            ]
        }

        fn yaml(depth: u32) -> BoxedStrategy<String> {
            let leaf = scalar().boxed();
            leaf.prop_recursive(depth, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec((prop::sample::select(WORDS), inner.clone()), 0..5)
                        .prop_map(|kv| {
                            let body: Vec<String> =
                                kv.into_iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
                            format!("{{{}}}", body.join(", "))
                        }),
                    prop::collection::vec(inner, 0..5)
                        .prop_map(|items| format!("[{}]", items.join(", "))),
                ]
            })
            .boxed()
        }

        fn check(text: &str) {
            let p = RlsConfig::parse_str("prop.yaml", text);
            let _ = mesh_config_render(&p.diagnostics);
            assert_eq!(p.config.is_some(), !p.has_errors());
        }

        fn mesh_config_render(d: &[crate::diag::Diagnostic]) -> String {
            crate::diag::render(d, Default::default()) + &crate::diag::render_json(d)
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 512,
                rng_seed: proptest::test_runner::RngSeed::Fixed(0x726c_7301),
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_yaml_never_panics(doc in yaml(5)) {
                check(&doc);
                // The same text as a ConfigMap's literal block and as a quoted string.
                let block: String = doc.lines().map(|l| format!("    {l}\n")).collect();
                check(&format!("kind: ConfigMap\ndata:\n  c.yaml: |\n{block}"));
                check(&format!("kind: ConfigMap\ndata:\n  c.yaml: {doc:?}\n"));
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let text = String::from_utf8_lossy(&bytes);
                check(&text);
                let block: String = text.lines().map(|l| format!("    {l}\n")).collect();
                check(&format!("kind: ConfigMap\ndata:\n  c.yaml: |\n{block}"));
            }

            #[test]
            fn block_configs_parse_like_bare_ones(
                entries in prop::collection::vec(
                    (prop::sample::select(&["a", "b", "c"][..]),
                     prop::option::of(prop::sample::select(&["x", "y*", "1"][..])),
                     prop::sample::select(&["second", "minute", "bogus"][..]),
                     0u32..5),
                    0..5),
            ) {
                let mut bare = String::from("domain: d\ndescriptors:\n");
                for (k, v, unit, n) in &entries {
                    bare.push_str(&format!("  - key: {k}\n"));
                    if let Some(v) = v {
                        bare.push_str(&format!("    value: \"{v}\"\n"));
                    }
                    bare.push_str(&format!("    rate_limit: {{unit: {unit}, requests_per_unit: {n}}}\n"));
                }
                let direct = RlsConfig::parse_str("c.yaml", &bare);
                let block: String = bare.lines().map(|l| format!("    {l}\n")).collect();
                let wrapped = RlsConfig::parse_str("c.yaml", &format!("kind: ConfigMap\ndata:\n  c.yaml: |\n{block}"));
                prop_assert_eq!(&direct.config, &wrapped.config);
                let lines = |p: &super::super::RlsParsed| p.diagnostics.iter()
                    .map(|d| (d.code, d.line().map(|l| l as usize), d.column().map(|c| c as usize)))
                    .collect::<Vec<_>>();
                // Same problems, three lines further down and four columns further right.
                let shifted: Vec<_> = lines(&direct).into_iter()
                    .map(|(c, l, col)| (c, l.map(|l| l + 3), col.map(|c| c + 4)))
                    .collect();
                prop_assert_eq!(shifted, lines(&wrapped));
            }
        }
    }
}
