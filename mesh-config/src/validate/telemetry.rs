//! Telemetry, Istio's webhook and CRD rules: one of `selector`, `targetRef` and
//! `targetRefs`, target references to a Service, ServiceEntry, Gateway or GatewayClass of
//! the Telemetry's own namespace; provider names not empty; tracing with a sampling
//! percentage in 0-100 and custom tags each one of a non-empty literal, environment
//! variable, header or formatter; metrics with a reporting interval of at least 1 ms,
//! overrides matching one of a standard or a custom metric, tag overrides that UPSERT a
//! value or REMOVE without one; access log filters that are CEL expressions.
//!
//! [`analyze`] holds Istio's analyzers of Telemetries across resources: several
//! Telemetries without a selector in one namespace (IST0160), several selecting one
//! workload (IST0159), a selector that selects no known workload (IST0127), access
//! logging without a provider (IST0157).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Ctx;
use crate::analyze::Input;
use crate::diag::{Code, Diagnostic, ResourceRef};
use crate::model::telemetry::{
    AccessLogging, CustomTag, Metrics, MetricsOverrides, ProviderRef, TagOperation, Tracing,
};
use crate::model::*;
use crate::path::{FieldPath, Segment};
use crate::registry::selects;
use crate::yaml::{Node, Value};

/// Target reference kinds Istio accepts (canonical group, kind).
const TARGET_KINDS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// The CRD's limit on `targetRefs`.
const MAX_TARGET_REFS: usize = 16;

pub(super) fn telemetry(ctx: &mut Ctx<'_>, spec: &FieldPath, t: &Telemetry) {
    let set = [
        t.selector.is_some(),
        t.target_ref.is_some(),
        !t.target_refs.is_empty(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if set > 1 {
        let field = if t.selector.is_some() {
            "selector"
        } else {
            "targetRef"
        };
        ctx.report(
            Code::ExclusiveFields,
            &spec.key(field),
            "only one of `selector`, `targetRef` and `targetRefs` can be set",
        );
    }
    ctx.selector(&spec.key("selector"), &t.selector);
    if let Some(r) = &t.target_ref {
        target_ref(ctx, &spec.key("targetRef"), r);
    }
    for (i, r) in t.target_refs.iter().enumerate() {
        target_ref(ctx, &spec.key("targetRefs").index(i), r);
    }
    if t.target_refs.len() > MAX_TARGET_REFS {
        ctx.report(
            Code::InvalidValue,
            &spec.key("targetRefs"),
            format!(
                "{} target references: at most {MAX_TARGET_REFS} are allowed",
                t.target_refs.len()
            ),
        );
    }
    if t.tracing.len() > 1 {
        ctx.warn(
            Code::InvalidValue,
            &spec.key("tracing").index(1),
            "multiple tracing entries are not supported by Istio: write one (they are merged in order, later fields winning)",
        );
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        tracing(ctx, &spec.key("tracing").index(i), tr);
    }
    for (i, m) in t.metrics.iter().enumerate() {
        metrics(ctx, &spec.key("metrics").index(i), m);
    }
    for (i, l) in t.access_logging.iter().enumerate() {
        access_logging(ctx, &spec.key("accessLogging").index(i), l);
    }
}

/// Istio's `validatePolicyTargetReference` and the CRD's rules.
fn target_ref(ctx: &mut Ctx<'_>, path: &FieldPath, r: &PolicyTargetReference) {
    if r.name.is_empty() {
        ctx.report(
            Code::MissingField,
            &path.key("name"),
            "a target reference needs a `name`",
        );
    }
    if !r.namespace.is_empty() {
        ctx.report(
            Code::InvalidValue,
            &path.key("namespace"),
            format!(
                "`namespace: {}`: cross namespace referencing is not supported (leave `namespace` out: the Telemetry's own namespace is used)",
                r.namespace
            ),
        );
    }
    if r.kind.is_empty() {
        ctx.report(
            Code::MissingField,
            &path.key("kind"),
            "a target reference needs a `kind`: Service, ServiceEntry, Gateway or GatewayClass",
        );
        return;
    }
    let group = if r.group.is_empty() {
        "core"
    } else {
        r.group.as_str()
    };
    if !TARGET_KINDS.contains(&(group, r.kind.as_str())) {
        ctx.report(
            Code::InvalidValue,
            &path.key("kind"),
            format!(
                "a target reference must be to a Service (core group), a ServiceEntry (networking.istio.io), a Gateway or a GatewayClass (gateway.networking.k8s.io), not `{}/{}`",
                r.group, r.kind
            ),
        );
    }
}

fn providers(ctx: &mut Ctx<'_>, path: &FieldPath, list: &[ProviderRef]) {
    for (i, p) in list.iter().enumerate() {
        if p.name.is_empty() {
            ctx.report(
                Code::MissingField,
                &path.index(i).key("name"),
                "a provider needs a `name` (e.g. `prometheus`, `envoy`, `otel`)",
            );
        }
    }
}

fn tracing(ctx: &mut Ctx<'_>, path: &FieldPath, t: &Tracing) {
    providers(ctx, &path.key("providers"), &t.providers);
    if t.providers.len() > 1 {
        ctx.warn(
            Code::InvalidValue,
            &path.key("providers").index(1),
            format!(
                "multiple tracing providers are not supported: only the first, `{}`, is used",
                t.providers[0].name
            ),
        );
    }
    if let Some(p) = t.random_sampling_percentage {
        ctx.percent(&path.key("randomSamplingPercentage"), p);
    }
    let Some(tags) = &t.custom_tags else { return };
    let tags_path = path.key("customTags");
    for (name, tag) in tags {
        let p = tags_path.key(name.as_str());
        if name.is_empty() {
            ctx.report_key(
                Code::InvalidValue,
                &p,
                "a custom tag's name may not be empty",
            );
        }
        if written_null(ctx, &p) {
            ctx.report(
                Code::MissingField,
                &p,
                format!("custom tag `{name}` may not be null: set one of `literal`, `environment`, `header` or `formatter`"),
            );
            continue;
        }
        custom_tag(ctx, &p, name, tag);
    }
}

fn custom_tag(ctx: &mut Ctx<'_>, p: &FieldPath, name: &str, tag: &CustomTag) {
    match tag.set_count() {
        0 => ctx.warn(
            Code::InvalidValue,
            p,
            format!("custom tag `{name}` sets none of `literal`, `environment`, `header` and `formatter`: it adds nothing to spans"),
        ),
        1 => {}
        _ => ctx.report(
            Code::ExclusiveFields,
            p,
            "only one of `literal`, `environment`, `header` and `formatter` may be set",
        ),
    }
    if let Some(l) = &tag.literal {
        ctx.required_str(
            &p.key("literal").key("value"),
            &l.value,
            "a literal tag's `value`",
        );
    }
    if let Some(e) = &tag.environment {
        ctx.required_str(
            &p.key("environment").key("name"),
            &e.name,
            "an environment tag's `name`",
        );
    }
    if let Some(h) = &tag.header {
        let hp = p.key("header").key("name");
        if ctx.required_str(&hp, &h.name, "a header tag's `name`") {
            ctx.header_name(&hp, &h.name, false);
        }
    }
    if let Some(f) = &tag.formatter {
        ctx.required_str(
            &p.key("formatter").key("value"),
            &f.value,
            "a formatter tag's `value`",
        );
    }
}

fn metrics(ctx: &mut Ctx<'_>, path: &FieldPath, m: &Metrics) {
    providers(ctx, &path.key("providers"), &m.providers);
    for (i, p) in m.providers.iter().enumerate() {
        if !p.name.is_empty() && p.name != "prometheus" {
            ctx.warn(
                Code::NotEnforced,
                &path.key("providers").index(i).key("name"),
                format!("metrics provider `{}`: the mesh reports to `prometheus` only (its `/stats/prometheus`); this provider gets nothing", p.name),
            );
        }
    }
    if m.reporting_interval.is_some() {
        ctx.warn(
            Code::NotEnforced,
            &path.key("reportingInterval"),
            "`reportingInterval`: Prometheus pulls the metrics when it scrapes; there is no interval to set",
        );
    }
    if let Some(d) = m.reporting_interval
        && d.get() < std::time::Duration::from_millis(1)
    {
        ctx.report(
            Code::InvalidDuration,
            &path.key("reportingInterval"),
            format!("reporting interval `{d}` must be at least 1ms"),
        );
    }
    for (i, o) in m.overrides.iter().enumerate() {
        metrics_override(ctx, &path.key("overrides").index(i), o);
    }
}

fn metrics_override(ctx: &mut Ctx<'_>, path: &FieldPath, o: &MetricsOverrides) {
    if let Some(m) = &o.match_ {
        let mp = path.key("match");
        if m.metric.is_some() && m.custom_metric.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &mp.key("customMetric"),
                "`metric` and `customMetric` cannot both be set",
            );
        }
        if m.custom_metric.as_deref() == Some("") {
            ctx.report(
                Code::MissingField,
                &mp.key("customMetric"),
                "`customMetric` may not be empty: name a metric, or use `metric` for a standard one",
            );
        }
    }
    let tags_path = path.key("tagOverrides");
    for (name, to) in &o.tag_overrides {
        let p = tags_path.key(name.as_str());
        if name.is_empty() {
            ctx.warn(
                Code::InvalidValue,
                &p,
                "a tag override's name may not be empty",
            );
        }
        let value = to.value.as_deref();
        match to.operation() {
            TagOperation::Upsert if value.is_none_or(str::is_empty) => {
                let op = if to.operation.is_none() {
                    "UPSERT (the default operation)"
                } else {
                    "UPSERT"
                };
                ctx.report(
                    Code::MissingField,
                    &p.key("value"),
                    format!("tag override `{name}`: `value` must be set when operation is {op}: an expression such as `request.host` (or use `operation: REMOVE`)"),
                );
            }
            TagOperation::Upsert => {
                if let Some(v) = value {
                    if let Err(e) = cel::check(v) {
                        ctx.warn(
                            Code::InvalidValue,
                            &p.key("value"),
                            format!("tag override `{name}`: `{v}` is not a valid CEL expression ({e}): the tag would get no value"),
                        );
                    } else if crate::model::telemetry::string_literal(v).is_none() {
                        ctx.warn(
                            Code::NotEnforced,
                            &p.key("value"),
                            format!("tag override `{name}`: the mesh evaluates string literals only (`'value'`); `{v}` is not evaluated and the tag's value is `unknown`"),
                        );
                    }
                }
            }
            TagOperation::Remove if to.value.is_some() => ctx.report(
                Code::ExclusiveFields,
                &p.key("value"),
                format!("tag override `{name}`: `value` must not be set when operation is REMOVE"),
            ),
            TagOperation::Remove => {}
        }
    }
}

fn access_logging(ctx: &mut Ctx<'_>, path: &FieldPath, l: &AccessLogging) {
    providers(ctx, &path.key("providers"), &l.providers);
    if let Some(f) = &l.filter
        && let Err(e) = cel::check(&f.expression)
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("filter").key("expression"),
            format!("the filter must be a valid CEL expression (e.g. `response.code >= 400`): {e}"),
        );
    }
}

/// The YAML node at `path` (relative to the resource), if written.
fn node_at<'n>(root: &'n Node, path: &FieldPath) -> Option<&'n Node> {
    let mut node = root;
    for seg in path.segments() {
        node = match (seg, &node.value) {
            (Segment::Key(k), _) => node.get(k)?,
            (Segment::Index(i), Value::Seq(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// True when `path` was written with a null value (`tag:` or `tag: null`).
fn written_null(ctx: &Ctx<'_>, path: &FieldPath) -> bool {
    node_at(ctx.origin.node(), path).is_some_and(Node::is_null)
}

fn diag(t: &Resource<Telemetry>, code: Code, path: FieldPath, msg: String) -> Diagnostic {
    Diagnostic::new(code, msg)
        .at(t.origin.locate(&path))
        .resource(ResourceRef {
            kind: Kind::Telemetry.as_str().to_string(),
            namespace: t.namespace().to_string(),
            name: t.name().to_string(),
        })
        .path(path)
}

/// Names as Istio's messages list them: sorted, `[a b]`.
fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    format!("[{}]", v.join(" "))
}

/// Istio's Telemetry analyzers (`pkg/config/analysis/analyzers/telemetry`), over what the
/// configuration knows of workloads: WorkloadEntries and ServiceEntry endpoints.
///
/// - IST0160: several namespace-wide Telemetries (no selector labels, no target
///   references) in one namespace; only the first loaded applies.
/// - IST0159: several Telemetries of a namespace select one known workload.
/// - IST0127 (Istio reports IST0101 against pods): a selector that selects no known
///   workload. Workloads declared only in code are not known here, so this is a warning.
/// - IST0157: an access logging entry, not disabled, without a provider, while the mesh
///   has no default access logging provider.
pub(crate) fn analyze(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    let spec = FieldPath::root().key("spec");
    let mut wide: BTreeMap<&str, Vec<&Arc<Resource<Telemetry>>>> = BTreeMap::new();
    for t in input.telemetries {
        if t.spec.is_namespace_wide() {
            wide.entry(t.namespace()).or_default().push(t);
        }
    }
    for (ns, list) in &wide {
        if list.len() < 2 {
            continue;
        }
        let names = name_list(list.iter().map(|t| t.name()));
        for t in list {
            out.push(
                diag(
                    t,
                    Code::MultipleTelemetriesWithoutWorkloadSelectors,
                    spec.key("selector"),
                    format!("The Telemetries {names} in namespace \"{ns}\" have no workload selector, which can lead to undefined behavior."),
                )
                .help(format!(
                    "only `{}`, the first loaded, applies; merge them into one, or give the others a selector",
                    list[0].name()
                )),
            );
        }
    }
    selectors(input, &spec, out);
    for t in input.telemetries {
        for (i, l) in t.spec.access_logging.iter().enumerate() {
            if l.disabled != Some(true) && l.providers.is_empty() {
                out.push(
                    diag(
                        t,
                        Code::InvalidTelemetryProvider,
                        spec.key("accessLogging").index(i),
                        format!("The Telemetry {} in namespace \"{}\" with empty providers will be ignored.", t.name(), t.namespace()),
                    )
                    .help("there is no default access logging provider: name one (`providers: [{name: envoy}]`); an entry without providers only turns its predecessor's providers on or off"),
                );
            }
        }
    }
}

/// IST0159 and IST0127: Telemetries with selector labels against the known workloads.
fn selectors(input: &Input<'_>, spec: &FieldPath, out: &mut Vec<Diagnostic>) {
    // Known workloads: (namespace, labels) -> a name to show.
    let mut workloads: BTreeMap<(&str, &Labels), String> = BTreeMap::new();
    for we in input.workload_entries {
        workloads
            .entry((we.namespace(), &we.spec.labels))
            .or_insert_with(|| we.name().to_string());
    }
    for s in input.registry.services() {
        for e in s.endpoints.iter() {
            workloads
                .entry((e.namespace.as_str(), &e.labels))
                .or_insert_with(|| e.address.clone());
        }
    }
    let selecting: Vec<&Arc<Resource<Telemetry>>> = input
        .telemetries
        .iter()
        .filter(|t| {
            t.spec.target_refs().is_empty()
                && t.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty())
        })
        .collect();
    let sel_path = spec.key("selector").key("matchLabels");
    let mut reported = BTreeSet::new();
    for t in &selecting {
        let labels = t.spec.selector.as_ref().map(|s| &s.match_labels);
        let Some(labels) = labels else { continue };
        let mine: Vec<(&(&str, &Labels), &String)> = workloads
            .iter()
            .filter(|((ns, l), _)| *ns == t.namespace() && selects(labels, l))
            .collect();
        if mine.is_empty() {
            out.push(diag(
                t,
                Code::NoMatchingWorkloadsFound,
                sel_path.clone(),
                format!(
                    "No matching workloads for this resource with the following labels: {}",
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ));
            continue;
        }
        for ((ns, wl), name) in mine {
            let all: Vec<&Arc<Resource<Telemetry>>> = selecting
                .iter()
                .copied()
                .filter(|o| {
                    o.namespace() == *ns
                        && o.spec
                            .selector
                            .as_ref()
                            .is_some_and(|s| selects(&s.match_labels, wl))
                })
                .collect();
            if all.len() > 1 && reported.insert((t.namespace(), t.name())) {
                let names = name_list(all.iter().map(|o| o.name()));
                out.push(diag(
                    t,
                    Code::ConflictingTelemetryWorkloadSelectors,
                    sel_path.clone(),
                    format!("The Telemetries {names} in namespace \"{ns}\" select the same workload \"{name}\", which can lead to undefined behavior."),
                ));
            }
        }
    }
}

/// A syntax check of CEL expressions (the Common Expression Language of access log
/// filters and metric tag values), as Istio's validation parses them: the lexical grammar
/// (identifiers, reserved words, numbers, strings with their escapes and `r`/`b`
/// prefixes, operators) and the expression grammar of the CEL specification, without
/// type checking. Nesting is limited to CEL's 250 levels, and expressions to its 100,000
/// characters.
pub(crate) mod cel {
    /// cel-go's default recursion limit.
    const MAX_DEPTH: usize = 250;
    /// cel-go's default expression size limit, in characters.
    const MAX_CHARS: usize = 100_000;

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

    /// Checks `src`: `Ok` when it is a syntactically valid CEL expression, else what is
    /// wrong and where (1-based column).
    pub(crate) fn check(src: &str) -> Result<(), String> {
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
        p.expr()?;
        match p.toks.get(p.pos) {
            None => Ok(()),
            Some(t) => Err(p.unexpected(t)),
        }
    }

    fn column(src: &str, at: usize) -> usize {
        src.get(..at).map_or(at, |s| s.chars().count()) + 1
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
                        i = string(src, i, raw).map_err(|e| err(start, e))?;
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
                b'0'..=b'9' => i = number(b, i),
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => i = number(b, i),
                b'"' | b'\'' => i = string(src, i, false).map_err(|e| err(start, e))?,
                _ => {
                    let two = src.get(i..i + 2).unwrap_or("");
                    let op = ["==", "!=", "<=", ">=", "&&", "||"]
                        .into_iter()
                        .find(|o| *o == two);
                    let op = match op {
                        Some(o) => o,
                        None => {
                            let one = [
                                "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",", "[",
                                "]", "(", ")", "{", "}",
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
    fn number(b: &[u8], mut i: usize) -> usize {
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
    fn string(src: &str, mut i: usize, raw: bool) -> Result<usize, String> {
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
                i = escape(b, i)?;
            } else {
                i += src[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }

    /// The end of the escape sequence whose backslash is at `i`.
    fn escape(b: &[u8], i: usize) -> Result<usize, String> {
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

        fn ident(&mut self) -> Result<(), String> {
            if self.peek() == Some(Kind::Ident) {
                self.pos += 1;
                Ok(())
            } else {
                Err(self.fail("a name"))
            }
        }

        fn expr(&mut self) -> Result<(), String> {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(format!(
                    "the expression is nested more than {MAX_DEPTH} levels deep"
                ));
            }
            self.binary(0)?;
            if self.eat("?") {
                self.binary(0)?;
                self.expect(":")?;
                self.expr()?;
            }
            self.depth -= 1;
            Ok(())
        }

        /// Binary operators by precedence: `||`, `&&`, relations, `+ -`, `* / %`.
        fn binary(&mut self, level: usize) -> Result<(), String> {
            const LEVELS: [&[&str]; 5] = [
                &["||"],
                &["&&"],
                &["<", "<=", ">", ">=", "==", "!=", "in"],
                &["+", "-"],
                &["*", "/", "%"],
            ];
            let Some(ops) = LEVELS.get(level) else {
                return self.unary();
            };
            self.binary(level + 1)?;
            loop {
                let found = match self.peek() {
                    Some(Kind::Op(o)) => ops.contains(&o),
                    Some(Kind::In) => ops.contains(&"in"),
                    _ => false,
                };
                if !found {
                    return Ok(());
                }
                self.pos += 1;
                self.binary(level + 1)?;
            }
        }

        fn unary(&mut self) -> Result<(), String> {
            if self.eat("!") {
                while self.eat("!") {}
            } else if self.eat("-") {
                while self.eat("-") {}
            }
            self.member()
        }

        fn member(&mut self) -> Result<(), String> {
            // `qualified` while the expression is a (possibly qualified) name, which a
            // message construction `{field: value}` may follow.
            let mut qualified = self.primary()?;
            loop {
                if self.eat(".") {
                    self.ident()?;
                    if self.peek() == Some(Kind::Op("(")) {
                        self.args()?;
                        qualified = false;
                    }
                } else if self.eat("[") {
                    self.expr()?;
                    self.expect("]")?;
                    qualified = false;
                } else if qualified && self.peek() == Some(Kind::Op("{")) {
                    self.fields()?;
                    qualified = false;
                } else {
                    return Ok(());
                }
            }
        }

        /// A primary expression; true when it is a name (not a call).
        fn primary(&mut self) -> Result<bool, String> {
            match self.peek() {
                Some(Kind::Op(".")) | Some(Kind::Ident) => {
                    self.eat(".");
                    self.ident()?;
                    if self.peek() == Some(Kind::Op("(")) {
                        self.args()?;
                        return Ok(false);
                    }
                    Ok(true)
                }
                Some(Kind::Op("(")) => {
                    self.pos += 1;
                    self.expr()?;
                    self.expect(")")?;
                    Ok(false)
                }
                Some(Kind::Op("[")) => {
                    self.pos += 1;
                    self.list("]", false)?;
                    Ok(false)
                }
                Some(Kind::Op("{")) => {
                    self.pos += 1;
                    self.list("}", true)?;
                    Ok(false)
                }
                Some(Kind::Literal) => {
                    self.pos += 1;
                    Ok(false)
                }
                _ => Err(self.fail("a value, a name or `(`")),
            }
        }

        /// Call arguments: `(a, b)`.
        fn args(&mut self) -> Result<(), String> {
            self.expect("(")?;
            if self.eat(")") {
                return Ok(());
            }
            self.expr()?;
            while self.eat(",") {
                self.expr()?;
            }
            self.expect(")")
        }

        /// A list `[a, b,]` or, with `pairs`, a map `{k: v,}`, after its opening bracket.
        fn list(&mut self, close: &str, pairs: bool) -> Result<(), String> {
            loop {
                if self.eat(close) {
                    return Ok(());
                }
                self.expr()?;
                if pairs {
                    self.expect(":")?;
                    self.expr()?;
                }
                if !self.eat(",") {
                    return self.expect(close);
                }
            }
        }

        /// Message fields `{name: value, ...}`.
        fn fields(&mut self) -> Result<(), String> {
            self.expect("{")?;
            loop {
                if self.eat("}") {
                    return Ok(());
                }
                self.ident()?;
                self.expect(":")?;
                self.expr()?;
                if !self.eat(",") {
                    return self.expect("}");
                }
            }
        }
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
                    (inner.clone(), ops, inner.clone())
                        .prop_map(|(a, o, b)| format!("{a} {o} {b}")),
                    inner.clone().prop_map(|a| format!("({a})")),
                    inner.clone().prop_map(|a| format!("!({a})")),
                    inner.clone().prop_map(|a| format!("-({a})")),
                    (inner.clone(), inner.clone(), inner.clone())
                        .prop_map(|(a, b, c)| format!("{a} ? ({b}) : {c}")),
                    prop::collection::vec(inner.clone(), 0..3)
                        .prop_map(|v| format!("[{}]", v.join(", "))),
                    (inner.clone(), inner.clone()).prop_map(|(k, v)| format!("{{{k}: {v},}}")),
                    (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("({a})[{i}]")),
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| format!("({a}).startsWith({b})")),
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
    }
}
