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

pub(super) fn telemetry(ctx: &mut Ctx<'_>, spec: &FieldPath, t: &Telemetry) {
    ctx.policy_targets(spec, &t.selector, &t.target_ref, &t.target_refs);
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
                    if let Err(e) = crate::cel::check(v) {
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
    for (i, p) in l.providers.iter().enumerate() {
        if !p.name.is_empty() && p.name != "envoy" {
            ctx.warn(
                Code::NotEnforced,
                &path.key("providers").index(i).key("name"),
                format!("access log provider `{}`: the mesh writes Istio's `envoy` provider's entries only (to its access log sink); this provider gets nothing", p.name),
            );
        }
    }
    if let Some(f) = &l.filter {
        if let Err(e) = crate::cel::check(&f.expression) {
            ctx.report(
                Code::InvalidValue,
                &path.key("filter").key("expression"),
                format!(
                    "the filter must be a valid CEL expression (e.g. `response.code >= 400`): {e}"
                ),
            );
        } else if let Err(e) = crate::cel::Filter::compile(&f.expression) {
            ctx.warn(
                Code::InvalidValue,
                &path.key("filter").key("expression"),
                format!("Envoy would not build this filter ({e}): nothing is logged for it"),
            );
        }
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
    ctx.origin
        .with_node(|node| node_at(node, path).is_some_and(Node::is_null))
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
        .filter(|t| t.spec.selector_labels().is_some())
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
