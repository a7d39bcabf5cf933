//! Istio's Telemetry API: Istio's own valid and invalid examples, every rule of its
//! validation with the code, line and field path of the diagnostic, its analyzers, the
//! `MESH0120` warnings of the settings the runtime does not apply yet, and the merge of
//! the mesh-wide, namespace-wide and workload Telemetries into one workload's
//! configuration, table by table after Istio's own tests (`pilot/pkg/model`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use mesh_config::model::telemetry::scope::{
    AccessLoggingConfig, DefaultProviders, EffectiveTelemetry, MetricsConfig, TagChange,
    TracingSpec, applicable,
};
use mesh_config::model::telemetry::{IstioMetric, TagOperation, WorkloadMode};
use mesh_config::model::{AnyResource, Kind, Labels, Resource, Telemetry};
use mesh_config::{Checked, Code, ConfigSet, Severity};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/telemetry"
    ))
    .join(name);
    std::fs::read_to_string(p).unwrap()
}

fn check(docs: &str) -> Checked {
    let mut set = ConfigSet::new();
    set.add_str("t.yaml", docs);
    set.check()
}

/// A diagnostic as the tables write it: code, line, field path, `E`rror or `W`arning.
type Found = (String, u32, String, char);

fn found(c: &Checked) -> Vec<Found> {
    c.diagnostics
        .iter()
        .map(|d| {
            (
                d.code.as_str().to_string(),
                d.line().unwrap_or(0),
                d.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                match d.severity {
                    Severity::Error => 'E',
                    Severity::Warning => 'W',
                    Severity::Info => 'I',
                },
            )
        })
        .collect()
}

/// Every diagnostic but the `MESH0120` ones.
/// The (line, path, severity) of the diagnostics of `found` with `code`.
fn with_code(found: &[Found], code: &str) -> Vec<(u32, String, char)> {
    found
        .iter()
        .filter(|(c, ..)| c == code)
        .map(|(_, line, path, sev)| (*line, path.clone(), *sev))
        .collect()
}

fn problems(c: &Checked) -> Vec<Found> {
    found(c)
        .into_iter()
        .filter(|(code, ..)| code != "MESH0120")
        .collect()
}

fn show(c: &Checked) -> String {
    c.diagnostics
        .iter()
        .map(|d| {
            format!(
                "  {} [{}]",
                d.short(),
                d.path.as_ref().map(|p| p.to_string()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Telemetry `t` of namespace `default` whose spec is `body` (already indented by two
/// spaces): the body starts on line 5.
fn tel(body: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: default}}\nspec:\n{body}"
    )
}

/// A Telemetry document `name` in namespace `ns`.
fn doc(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
    )
}

/// The Telemetries of `docs`, in load order, whatever the analysis says.
fn telemetries(docs: &str) -> Vec<Arc<Resource<Telemetry>>> {
    let mut set = ConfigSet::new();
    set.add_str("t.yaml", docs);
    assert!(
        !set.diagnostics().iter().any(|d| d.is_error()),
        "{:?}",
        set.diagnostics()
    );
    set.resources()
        .iter()
        .filter_map(|r| match r {
            AnyResource::Telemetry(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn effective(docs: &str, ns: &str, l: &[(&str, &str)], d: &DefaultProviders) -> EffectiveTelemetry {
    EffectiveTelemetry::resolve(&telemetries(docs), "istio-system", ns, &labels(l), d)
}

// ---------------------------------------------------------------------------------------
// Istio's examples

#[test]
fn istio_valid_examples_load_without_errors() {
    for name in [
        "dataset-v1.yaml",
        "dataset-v1alpha1.yaml",
        "sample-otel-tracing.yaml",
        "sample-loki.yaml",
        "accesslog-filter.yaml",
        "accesslog-mode-client.yaml",
        "analyzer-disable-provider.yaml",
    ] {
        let c = check(&fixture(name));
        assert!(c.snapshot.is_some(), "{name}:\n{}", show(&c));
        assert_eq!(problems(&c), vec![], "{name}:\n{}", show(&c));
    }
    // Istio's webhook examples are one resource at a time: each loads alone...
    let text = fixture("crds-valid.yaml");
    for d in text.split("\n---\n") {
        let c = check(d);
        assert_eq!(problems(&c), vec![], "{d}\n{}", show(&c));
    }
    // ... and together they are three namespace-wide Telemetries of one namespace.
    let c = check(&text);
    let ist0160: Vec<_> = with_code(&problems(&c), "IST0160");
    assert_eq!(
        ist0160,
        vec![
            (5, "spec.selector".to_string(), 'E'),
            (55, "spec.selector".to_string(), 'E'),
            (67, "spec.selector".to_string(), 'E'),
        ],
        "{}",
        show(&c)
    );
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.code == Code::MultipleTelemetriesWithoutWorkloadSelectors)
        .unwrap();
    assert_eq!(
        d.message,
        "The Telemetries [full tag-remove tag-upsert] in namespace \"default\" have no workload selector, which can lead to undefined behavior."
    );
    assert_eq!(
        d.help.as_deref(),
        Some(
            "only `full`, the first loaded, applies; merge them into one, or give the others a selector"
        )
    );
}

#[test]
fn istio_full_example_reads_every_field() {
    let ts = telemetries(&fixture("crds-valid.yaml"));
    assert_eq!(ts.len(), 3);
    let full = &ts[0].spec;
    assert_eq!(ts[0].api_version, "telemetry.istio.io/v1alpha1");
    let m = &full.metrics[0];
    assert_eq!(m.providers[0].name, "prometheus");
    assert_eq!(m.reporting_interval.unwrap().as_millis(), 5000);
    let o = &m.overrides[0];
    assert_eq!(
        o.match_.as_ref().unwrap().custom_metric.as_deref(),
        Some("foo")
    );
    assert_eq!(o.disabled, Some(false));
    assert_eq!(
        o.tag_overrides["request_method"].value.as_deref(),
        Some("request.method")
    );
    assert_eq!(
        o.tag_overrides["request_host"].operation(),
        TagOperation::Upsert
    );
    let o = &m.overrides[1];
    assert_eq!(
        o.match_.as_ref().unwrap().metric,
        Some(IstioMetric::GrpcRequestMessages)
    );
    assert_eq!(o.disabled, Some(true));
    let l = &full.access_logging[0];
    assert_eq!(l.disabled, Some(false));
    assert_eq!(l.filter.as_ref().unwrap().expression, "true");
    assert_eq!(l.mode(), WorkloadMode::Client);
    assert_eq!(l.providers[0].name, "stdout");
    let t = &full.tracing[0];
    assert_eq!(t.providers[0].name, "otlp");
    assert_eq!(t.mode(), WorkloadMode::ClientAndServer);
    assert_eq!(t.random_sampling_percentage, Some(54.54));
    assert_eq!(t.use_request_id_for_trace_sampling, Some(true));
    assert_eq!(t.disable_span_reporting, Some(false));
    let tags = t.custom_tags.as_ref().unwrap();
    let env = tags["env"].environment.as_ref().unwrap();
    assert_eq!(
        (env.name.as_str(), env.default_value.as_deref()),
        ("NAME", Some("default"))
    );
    let header = tags["header"].header.as_ref().unwrap();
    assert_eq!(
        (header.name.as_str(), header.default_value.as_deref()),
        ("x-name", Some("default name"))
    );
    assert_eq!(
        tags["literal"].literal.as_ref().unwrap().value,
        "default literal"
    );
    assert_eq!(
        ts[2].spec.metrics[0].overrides[0].tag_overrides["foo"].operation(),
        TagOperation::Remove
    );
}

#[test]
fn istio_invalid_examples_are_rejected_at_their_line() {
    let c = check(&fixture("crds-invalid.yaml"));
    assert!(c.snapshot.is_none());
    let errors: Vec<Found> = problems(&c)
        .into_iter()
        .filter(|(.., sev)| *sev == 'E')
        .filter(|(code, ..)| code != "IST0160")
        .collect();
    let e = |code: &str, line: u32, path: &str| (code.to_string(), line, path.to_string(), 'E');
    assert_eq!(
        errors,
        vec![
            e("MESH0005", 9, "spec.metrics[0].providers[0].name"),
            e(
                "MESH0005",
                20,
                "spec.metrics[0].overrides[0].match.customMetric"
            ),
            e(
                "MESH0005",
                31,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value"
            ),
            e(
                "MESH0107",
                45,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value"
            ),
        ],
        "{}",
        show(&c)
    );
    let messages: Vec<&str> = c
        .diagnostics
        .iter()
        .filter(|d| d.is_error() && d.code != Code::MultipleTelemetriesWithoutWorkloadSelectors)
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        messages,
        vec![
            "a provider needs a `name` (e.g. `prometheus`, `envoy`, `otel`)",
            "`customMetric` may not be empty: name a metric, or use `metric` for a standard one",
            "tag override `foo`: `value` must be set when operation is UPSERT: an expression such as `request.host` (or use `operation: REMOVE`)",
            "tag override `foo`: `value` must not be set when operation is REMOVE",
        ]
    );
    for d in c.diagnostics.iter().filter(|d| d.is_error()) {
        assert_eq!(d.file(), Some("t.yaml"));
        assert_eq!(d.resource.as_ref().unwrap().kind, "Telemetry");
    }
}

// ---------------------------------------------------------------------------------------
// Validation, rule by rule

#[test]
fn validation_rules() {
    type Row = (
        &'static str,
        &'static str,
        &'static [(&'static str, u32, &'static str, char)],
    );
    let rows: &[Row] = &[
        (
            "sampling 0 and 100 are fine",
            "  tracing:\n  - randomSamplingPercentage: 0\n  - randomSamplingPercentage: 100\n",
            &[("MESH0112", 7, "spec.tracing[1]", 'W')],
        ),
        (
            "sampling above 100",
            "  tracing:\n  - randomSamplingPercentage: 100.5\n",
            &[(
                "MESH0104",
                6,
                "spec.tracing[0].randomSamplingPercentage",
                'E',
            )],
        ),
        (
            "sampling below 0",
            "  tracing:\n  - randomSamplingPercentage: -0.1\n",
            &[(
                "MESH0104",
                6,
                "spec.tracing[0].randomSamplingPercentage",
                'E',
            )],
        ),
        (
            "sampling not a number",
            "  tracing:\n  - randomSamplingPercentage: .nan\n",
            &[(
                "MESH0104",
                6,
                "spec.tracing[0].randomSamplingPercentage",
                'E',
            )],
        ),
        (
            "sampling of the wrong type",
            "  tracing:\n  - randomSamplingPercentage: ten\n",
            &[(
                "MESH0003",
                6,
                "spec.tracing[0].randomSamplingPercentage",
                'E',
            )],
        ),
        (
            "two tracing providers",
            "  tracing:\n  - providers: [{name: otel}, {name: zipkin}]\n",
            &[("MESH0112", 6, "spec.tracing[0].providers[1]", 'W')],
        ),
        (
            "an empty provider name",
            "  accessLogging:\n  - providers: [{name: \"\"}]\n",
            &[(
                "MESH0005",
                6,
                "spec.accessLogging[0].providers[0].name",
                'E',
            )],
        ),
        (
            "a provider without a name",
            "  metrics:\n  - providers: [{}]\n",
            &[("MESH0005", 6, "spec.metrics[0].providers[0].name", 'E')],
        ),
        (
            "a literal tag without a value",
            "  tracing:\n  - customTags:\n      team:\n        literal: {}\n",
            &[(
                "MESH0005",
                8,
                "spec.tracing[0].customTags.team.literal.value",
                'E',
            )],
        ),
        (
            "an environment tag without a name",
            "  tracing:\n  - customTags:\n      pod:\n        environment: {defaultValue: x}\n",
            &[(
                "MESH0005",
                8,
                "spec.tracing[0].customTags.pod.environment.name",
                'E',
            )],
        ),
        (
            "a header tag with an invalid name",
            "  tracing:\n  - customTags:\n      user:\n        header: {name: \"x user\"}\n",
            &[(
                "MESH0112",
                8,
                "spec.tracing[0].customTags.user.header.name",
                'E',
            )],
        ),
        (
            "a formatter tag without a value",
            "  tracing:\n  - customTags:\n      path:\n        formatter: {value: \"\"}\n",
            &[(
                "MESH0005",
                8,
                "spec.tracing[0].customTags.path.formatter.value",
                'E',
            )],
        ),
        (
            "a tag of two kinds",
            "  tracing:\n  - customTags:\n      team:\n        literal: {value: a}\n        header: {name: x-team}\n",
            &[("MESH0107", 7, "spec.tracing[0].customTags.team", 'E')],
        ),
        (
            "a null tag",
            "  tracing:\n  - customTags:\n      team:\n",
            &[("MESH0005", 7, "spec.tracing[0].customTags.team", 'E')],
        ),
        (
            "a tag of no kind",
            "  tracing:\n  - customTags:\n      team: {}\n",
            &[("MESH0112", 7, "spec.tracing[0].customTags.team", 'W')],
        ),
        (
            "an unknown tag kind",
            "  tracing:\n  - customTags:\n      team: {constant: {value: a}}\n",
            &[(
                "MESH0004",
                7,
                "spec.tracing[0].customTags.team.constant",
                'E',
            )],
        ),
        (
            "upsert without a value",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {operation: UPSERT}\n",
            &[(
                "MESH0005",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'E',
            )],
        ),
        (
            "upsert with an empty value",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {operation: UPSERT, value: \"\"}\n",
            &[(
                "MESH0005",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'E',
            )],
        ),
        (
            "no operation and no value (UPSERT by default)",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {}\n",
            &[(
                "MESH0005",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'E',
            )],
        ),
        (
            "no operation, a value",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {value: request.host}\n",
            &[],
        ),
        (
            "remove with a value",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {operation: REMOVE, value: x}\n",
            &[(
                "MESH0107",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'E',
            )],
        ),
        (
            "remove with an empty value",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {operation: REMOVE, value: \"\"}\n",
            &[(
                "MESH0107",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'E',
            )],
        ),
        (
            "an unknown operation",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {operation: DELETE}\n",
            &[(
                "MESH0006",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.operation",
                'E',
            )],
        ),
        (
            "a value that is not CEL",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        foo: {value: \"request.host ==\"}\n",
            &[(
                "MESH0112",
                8,
                "spec.metrics[0].overrides[0].tagOverrides.foo.value",
                'W',
            )],
        ),
        (
            "an empty tag name",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        \"\": {value: request.host}\n",
            &[(
                "MESH0112",
                8,
                "spec.metrics[0].overrides[0].tagOverrides[\"\"]",
                'W',
            )],
        ),
        (
            "metric and customMetric",
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, customMetric: foo}\n",
            &[(
                "MESH0107",
                7,
                "spec.metrics[0].overrides[0].match.customMetric",
                'E',
            )],
        ),
        (
            "an unknown metric",
            "  metrics:\n  - overrides:\n    - match: {metric: REQUESTS}\n",
            &[(
                "MESH0006",
                7,
                "spec.metrics[0].overrides[0].match.metric",
                'E',
            )],
        ),
        (
            "an unknown mode",
            "  accessLogging:\n  - match: {mode: BOTH}\n    providers: [{name: envoy}]\n",
            &[("MESH0006", 6, "spec.accessLogging[0].match.mode", 'E')],
        ),
        (
            "a reporting interval below 1ms",
            "  metrics:\n  - reportingInterval: 500us\n",
            &[("MESH0103", 6, "spec.metrics[0].reportingInterval", 'E')],
        ),
        (
            "a reporting interval of 0",
            "  metrics:\n  - reportingInterval: 0s\n",
            &[("MESH0103", 6, "spec.metrics[0].reportingInterval", 'E')],
        ),
        (
            "a reporting interval of 1.5ms",
            "  metrics:\n  - reportingInterval: 1.5ms\n",
            &[],
        ),
        (
            "a reporting interval without a unit",
            "  metrics:\n  - reportingInterval: 10\n",
            &[("MESH0103", 6, "spec.metrics[0].reportingInterval", 'E')],
        ),
        (
            "a filter that is not CEL",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"response.code = 400\"}\n",
            &[(
                "MESH0112",
                7,
                "spec.accessLogging[0].filter.expression",
                'E',
            )],
        ),
        (
            "an empty filter",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {}\n",
            &[(
                "MESH0112",
                7,
                "spec.accessLogging[0].filter.expression",
                'E',
            )],
        ),
        (
            "a typo in a field",
            "  tracing:\n  - randomSamplingPercentag: 10\n",
            &[(
                "MESH0004",
                6,
                "spec.tracing[0].randomSamplingPercentag",
                'E',
            )],
        ),
        (
            "selector and targetRef",
            "  selector: {matchLabels: {app: reviews}}\n  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
            &[("MESH0107", 5, "spec.selector", 'E')],
        ),
        (
            "targetRef and targetRefs",
            "  targetRef: {kind: Service, name: a}\n  targetRefs: [{kind: Service, name: b}]\n",
            &[("MESH0107", 5, "spec.targetRef", 'E')],
        ),
        (
            "a targetRef across namespaces",
            "  targetRef: {kind: Service, name: a, namespace: other}\n",
            &[("MESH0112", 5, "spec.targetRef.namespace", 'E')],
        ),
        (
            "a targetRef to a Deployment",
            "  targetRefs:\n  - {kind: Deployment, group: apps, name: a}\n",
            &[("MESH0112", 6, "spec.targetRefs[0].kind", 'E')],
        ),
        (
            "a targetRef to a Gateway of the core group",
            "  targetRefs:\n  - {kind: Gateway, name: a}\n",
            &[("MESH0112", 6, "spec.targetRefs[0].kind", 'E')],
        ),
        (
            "a targetRef without a name",
            "  targetRefs:\n  - {kind: ServiceEntry, group: networking.istio.io}\n",
            &[("MESH0005", 6, "spec.targetRefs[0].name", 'E')],
        ),
        (
            "a targetRef without a kind",
            "  targetRef: {name: a}\n",
            &[("MESH0005", 5, "spec.targetRef.kind", 'E')],
        ),
        (
            "a selector without labels",
            "  selector: {}\n",
            &[("MESH0112", 5, "spec.selector", 'W')],
        ),
        (
            "a selector with an invalid label",
            "  selector: {matchLabels: {app: \"re*\"}}\n",
            &[
                ("IST0127", 5, "spec.selector.matchLabels", 'W'),
                ("MESH0108", 5, "spec.selector.matchLabels.app", 'E'),
            ],
        ),
        (
            "access logging without providers",
            "  accessLogging:\n  - filter: {expression: \"response.code >= 400\"}\n",
            &[("IST0157", 6, "spec.accessLogging[0]", 'W')],
        ),
        (
            "access logging disabled without providers",
            "  accessLogging:\n  - disabled: true\n",
            &[],
        ),
    ];
    for (name, body, expected) in rows {
        let c = check(&tel(body));
        let expected: Vec<Found> = expected
            .iter()
            .map(|(code, line, path, sev)| (code.to_string(), *line, path.to_string(), *sev))
            .collect();
        assert_eq!(problems(&c), expected, "{name}:\n{}", show(&c));
        assert_eq!(c.snapshot.is_some(), !c.has_errors(), "{name}");
    }
}

#[test]
fn api_versions_and_kind_names() {
    for v in ["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"] {
        let c = check(&format!(
            "apiVersion: {v}\nkind: Telemetry\nmetadata: {{name: t}}\nspec: {{}}\n"
        ));
        assert_eq!(found(&c), vec![], "{v}");
        assert_eq!(c.snapshot.unwrap().telemetries().len(), 1);
    }
    let c = check("apiVersion: telemetry.istio.io/v1beta1\nkind: Telemetry\nmetadata: {name: t}\n");
    assert_eq!(
        found(&c),
        vec![("MESH0007".to_string(), 1, "apiVersion".to_string(), 'E')]
    );
    assert!(
        c.diagnostics[0]
            .message
            .contains("`telemetry.istio.io/v1alpha1`, `telemetry.istio.io/v1`")
    );
    let c = check("apiVersion: telemetry.istio.io/v1\nkind: Telemetri\nmetadata: {name: t}\n");
    assert_eq!(
        found(&c),
        vec![("MESH0013".to_string(), 2, "kind".to_string(), 'E')]
    );
    assert_eq!(
        c.diagnostics[0].help.as_deref(),
        Some("did you mean `Telemetry`?")
    );
    assert_eq!(Kind::from_cli_name("telemetries"), Some(Kind::Telemetry));
    assert_eq!(Kind::from_cli_name("Telemetry"), Some(Kind::Telemetry));
    assert_eq!(Kind::Telemetry.group(), "telemetry.istio.io");
}

#[test]
fn unknown_fields_name_the_field_and_suggest_one() {
    let c = check(&tel("  accessLoging:\n  - providers: [{name: envoy}]\n"));
    let d = &c.diagnostics[0];
    assert_eq!((d.code, d.line()), (Code::UnknownField, Some(5)));
    assert!(
        d.message.contains("did you mean `accessLogging`"),
        "{}",
        d.message
    );
}

// ---------------------------------------------------------------------------------------
// Parsed, not enforced

#[test]
fn behaviour_changing_fields_are_reported_as_not_enforced() {
    // Tracing is applied, but for span tags taken from access log formatters.
    let c = check(&tel(
        "  selector: {matchLabels: {app: reviews}}\n  tracing:\n  - randomSamplingPercentage: 10\n    customTags:\n      a: {literal: {value: x}}\n      b: {formatter: {value: '%REQ(x-user)%'}}\n  metrics:\n  - providers: [{name: prometheus}]\n  accessLogging:\n  - providers: [{name: envoy}]\n",
    ));
    let ne: Vec<(u32, String, char)> = with_code(&found(&c), "MESH0120");
    assert_eq!(
        ne,
        vec![(
            10,
            "spec.tracing[0].customTags.b.formatter".to_string(),
            'W'
        )],
        "{}",
        show(&c)
    );
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.code == Code::NotEnforced)
        .unwrap();
    assert_eq!(
        d.message,
        "`spec.tracing[0].customTags.b.formatter` is parsed but not enforced: span tags from access log formatters are not applied"
    );
    // Metrics are applied for the Prometheus provider, with literal tag values; other
    // providers, other expressions and a reporting interval are not.
    let c = check(&tel(
        "  metrics:\n  - providers: [{name: prometheus}, {name: stackdriver}]\n    reportingInterval: 10s\n    overrides:\n    - tagOverrides:\n        a: {value: \"'x'\"}\n        b: {value: request.host}\n        c: {operation: REMOVE}\n",
    ));
    assert_eq!(
        with_code(&found(&c), "MESH0120"),
        vec![
            (6, "spec.metrics[0].providers[1].name".to_string(), 'W'),
            (7, "spec.metrics[0].reportingInterval".to_string(), 'W'),
            (
                11,
                "spec.metrics[0].overrides[0].tagOverrides.b.value".to_string(),
                'W'
            ),
        ],
        "{}",
        show(&c)
    );
    // Access logs are written for the `envoy` provider, filtered; other providers get
    // nothing.
    let c = check(&tel(
        "  accessLogging:\n  - providers: [{name: envoy}, {name: otel}]\n    filter: {expression: response.code >= 400}\n",
    ));
    assert_eq!(
        with_code(&found(&c), "MESH0120"),
        vec![(
            6,
            "spec.accessLogging[0].providers[1].name".to_string(),
            'W'
        ),],
        "{}",
        show(&c)
    );
    // A filter Envoy would not build (a comprehension) is a warning: nothing is logged.
    let c = check(&tel(
        "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"[1].exists(x, x > 0)\"}\n",
    ));
    assert_eq!(
        found(&c),
        vec![(
            "MESH0112".to_string(),
            7,
            "spec.accessLogging[0].filter.expression".to_string(),
            'W'
        )],
        "{}",
        show(&c)
    );
    // A selector alone changes nothing: no warning.
    let c = check(&tel("  selector: {matchLabels: {app: reviews}}\n"));
    assert!(
        !c.diagnostics.iter().any(|d| d.code == Code::NotEnforced),
        "{}",
        show(&c)
    );
    // Gateway API attachment is not implemented.
    let c = check(&tel(
        "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
    ));
    assert_eq!(
        found(&c),
        vec![(
            "MESH0120".to_string(),
            5,
            "spec.targetRefs".to_string(),
            'W'
        )]
    );
}

// ---------------------------------------------------------------------------------------
// Analyzers

#[test]
fn analyzer_multiple_telemetries_without_selector() {
    let c = check(&fixture("analyzer-default-selector.yaml"));
    let ist: Vec<(String, String)> = c
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::MultipleTelemetriesWithoutWorkloadSelectors)
        .map(|d| {
            let r = d.resource.as_ref().unwrap();
            (format!("{}/{}", r.namespace, r.name), d.message.clone())
        })
        .collect();
    let msg = "The Telemetries [has-conflict-1 has-conflict-2] in namespace \"ns2\" have no workload selector, which can lead to undefined behavior.";
    assert_eq!(
        ist,
        vec![
            ("ns2/has-conflict-1".to_string(), msg.to_string()),
            ("ns2/has-conflict-2".to_string(), msg.to_string()),
        ]
    );
    assert!(c.snapshot.is_none());
    // `selector: {}` selects the whole namespace, as no selector does: it conflicts too.
    let c = check(&(doc("ns", "a", "  tracing: [{}]\n") + &doc("ns", "b", "  selector: {}\n")));
    assert_eq!(
        c.diagnostics
            .iter()
            .filter(|d| d.code == Code::MultipleTelemetriesWithoutWorkloadSelectors)
            .count(),
        2
    );
    // Target references are not namespace-wide: no conflict.
    let c = check(
        &(doc("ns", "a", "  tracing: [{}]\n")
            + &doc(
                "ns",
                "b",
                "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
            )),
    );
    assert!(!c.has_errors(), "{}", show(&c));
}

#[test]
fn analyzer_selectors_against_known_workloads() {
    let c = check(&fixture("analyzer-selector.yaml"));
    let mut by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for d in &c.diagnostics {
        if let Some(r) = &d.resource
            && r.kind == "Telemetry"
            && d.code != Code::NotEnforced
        {
            by.entry(format!("{}/{}", r.namespace, r.name))
                .or_default()
                .push(d.code.as_str());
            assert_eq!(
                d.path.as_ref().unwrap().to_string(),
                "spec.selector.matchLabels"
            );
        }
    }
    let expected: BTreeMap<String, Vec<&str>> = [
        ("default/maps-to-nonexistent", vec!["IST0127"]),
        ("other/maps-to-different-ns", vec!["IST0127"]),
        ("default/dupe-1", vec!["IST0159"]),
        ("default/dupe-2", vec!["IST0159"]),
        ("default/overlap-1", vec!["IST0159"]),
        ("default/overlap-2", vec!["IST0159"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by, expected, "{}", show(&c));
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.code == Code::ConflictingTelemetryWorkloadSelectors)
        .unwrap();
    assert_eq!(
        d.message,
        "The Telemetries [dupe-1 dupe-2] in namespace \"default\" select the same workload \"reviews\", which can lead to undefined behavior."
    );
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.code == Code::NoMatchingWorkloadsFound)
        .unwrap();
    assert_eq!(
        d.message,
        "No matching workloads for this resource with the following labels: app=bogus"
    );
    assert_eq!(d.severity, Severity::Warning);
}

#[test]
fn analyzer_access_logging_without_provider() {
    let c = check(&fixture("analyzer-invalid-provider.yaml"));
    let ist: Vec<Found> = found(&c)
        .into_iter()
        .filter(|(code, ..)| code == "IST0157")
        .collect();
    assert_eq!(
        ist,
        vec![(
            "IST0157".to_string(),
            10,
            "spec.accessLogging[1]".to_string(),
            'W'
        )]
    );
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.code == Code::InvalidTelemetryProvider)
        .unwrap();
    assert_eq!(
        d.message,
        "The Telemetry mesh-default in namespace \"istio-system\" with empty providers will be ignored."
    );
    assert!(c.snapshot.is_some());
}

// ---------------------------------------------------------------------------------------
// Scope: which Telemetries apply

#[test]
fn scope_table() {
    let ns_wide = "  tracing: [{}]\n";
    let gw_ref =
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]\n";
    type Row = (
        &'static str,
        String,
        &'static str,
        &'static [(&'static str, &'static str)],
        (
            Option<&'static str>,
            Option<&'static str>,
            &'static [&'static str],
        ),
    );
    let rows: Vec<Row> = vec![
        (
            "nothing",
            String::new(),
            "default",
            &[("app", "reviews")],
            (None, None, &[]),
        ),
        (
            "mesh-wide applies everywhere",
            doc("istio-system", "mesh", ns_wide),
            "bookinfo",
            &[("app", "reviews")],
            (Some("mesh"), None, &[]),
        ),
        (
            "mesh-wide and namespace",
            doc("istio-system", "mesh", ns_wide) + &doc("bookinfo", "ns", ns_wide),
            "bookinfo",
            &[],
            (Some("mesh"), Some("ns"), &[]),
        ),
        (
            "another namespace's is not applied",
            doc("other", "ns", ns_wide),
            "bookinfo",
            &[],
            (None, None, &[]),
        ),
        (
            "a root-namespace workload has no namespace level",
            doc("istio-system", "mesh", ns_wide),
            "istio-system",
            &[],
            (Some("mesh"), None, &[]),
        ),
        (
            "the first namespace-wide wins",
            doc("bookinfo", "b", ns_wide) + &doc("bookinfo", "a", ns_wide),
            "bookinfo",
            &[],
            (None, Some("b"), &[]),
        ),
        (
            "selector {} is namespace-wide",
            doc("bookinfo", "a", "  selector: {}\n"),
            "bookinfo",
            &[],
            (None, Some("a"), &[]),
        ),
        (
            "selected workload",
            doc("bookinfo", "ns", ns_wide)
                + &doc(
                    "bookinfo",
                    "r",
                    "  selector: {matchLabels: {app: reviews}}\n",
                ),
            "bookinfo",
            &[("app", "reviews"), ("version", "v1")],
            (None, Some("ns"), &["r"]),
        ),
        (
            "selector needs every label",
            doc(
                "bookinfo",
                "r",
                "  selector: {matchLabels: {app: reviews, version: v2}}\n",
            ),
            "bookinfo",
            &[("app", "reviews"), ("version", "v1")],
            (None, None, &[]),
        ),
        (
            "every selecting Telemetry, in load order",
            doc(
                "bookinfo",
                "z",
                "  selector: {matchLabels: {app: reviews}}\n",
            ) + &doc(
                "bookinfo",
                "a",
                "  selector: {matchLabels: {version: v1}}\n",
            ),
            "bookinfo",
            &[("app", "reviews"), ("version", "v1")],
            (None, None, &["z", "a"]),
        ),
        (
            "a selector of another namespace",
            doc("other", "r", "  selector: {matchLabels: {app: reviews}}\n"),
            "bookinfo",
            &[("app", "reviews")],
            (None, None, &[]),
        ),
        (
            "a root-namespace selector does not reach other namespaces",
            doc(
                "istio-system",
                "r",
                "  selector: {matchLabels: {app: reviews}}\n",
            ),
            "bookinfo",
            &[("app", "reviews")],
            (None, None, &[]),
        ),
        (
            "a root-namespace selector selects root-namespace workloads",
            doc(
                "istio-system",
                "r",
                "  selector: {matchLabels: {app: reviews}}\n",
            ),
            "istio-system",
            &[("app", "reviews")],
            (None, None, &["r"]),
        ),
        (
            "targetRefs ignore sidecars",
            doc("bookinfo", "g", gw_ref),
            "bookinfo",
            &[("app", "ingress")],
            (None, None, &[]),
        ),
        (
            "targetRefs select their gateway",
            doc("bookinfo", "g", gw_ref),
            "bookinfo",
            &[("gateway.networking.k8s.io/gateway-name", "ingress")],
            (None, None, &["g"]),
        ),
        (
            "targetRefs to another gateway",
            doc("bookinfo", "g", gw_ref),
            "bookinfo",
            &[("gateway.networking.k8s.io/gateway-name", "egress")],
            (None, None, &[]),
        ),
        (
            "gateways are selected by selectors too",
            doc(
                "bookinfo",
                "s",
                "  selector: {matchLabels: {istio: ingress}}\n",
            ),
            "bookinfo",
            &[
                ("gateway.networking.k8s.io/gateway-name", "x"),
                ("istio", "ingress"),
            ],
            (None, None, &["s"]),
        ),
    ];
    for (name, docs, ns, l, (root, own, workload)) in rows {
        let ts = telemetries(&docs);
        let a = applicable(&ts, "istio-system", ns, &labels(l));
        assert_eq!(a.root.map(|t| t.name()), root, "{name}: root");
        assert_eq!(a.namespace.map(|t| t.name()), own, "{name}: namespace");
        let w: Vec<&str> = a.workload.iter().map(|t| t.name()).collect();
        assert_eq!(w, workload, "{name}: workload");
        let order: Vec<&str> = a.iter().map(|t| t.name()).collect();
        let expected: Vec<&str> = root
            .into_iter()
            .chain(own)
            .chain(workload.iter().copied())
            .collect();
        assert_eq!(order, expected, "{name}: order");
        assert_eq!(a.is_empty(), expected.is_empty(), "{name}");
    }
}

#[test]
fn the_root_namespace_comes_from_the_mesh_config() {
    let docs = "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: mesh-root}\nspec: {rootNamespace: mesh-root}\n".to_string()
        + &doc("mesh-root", "mesh", "  tracing: [{randomSamplingPercentage: 5}]\n")
        + &doc("istio-system", "not-root", "  tracing: [{randomSamplingPercentage: 50}]\n");
    let snapshot = check(&docs).snapshot.unwrap();
    assert_eq!(snapshot.telemetries().len(), 2);
    let e = EffectiveTelemetry::resolve(
        snapshot.telemetries(),
        &snapshot.mesh().root_namespace,
        "bookinfo",
        &labels(&[("app", "reviews")]),
        &DefaultProviders::default(),
    );
    let t = e.tracing.unwrap();
    assert_eq!(t.client.random_sampling_percentage, Some(5.0));
}

// ---------------------------------------------------------------------------------------
// Merge: tracing

/// One side of tracing: provider, disabled, sampling, tag names, use request id, Istio
/// tags, context propagation disabled.
type Side = (
    Option<&'static str>,
    bool,
    Option<f64>,
    &'static [&'static str],
    bool,
    bool,
    bool,
);

fn side(
    s: &TracingSpec,
) -> (
    Option<String>,
    bool,
    Option<f64>,
    Vec<String>,
    bool,
    bool,
    bool,
) {
    (
        s.provider.clone(),
        s.disabled,
        s.random_sampling_percentage,
        s.custom_tags.keys().cloned().collect(),
        s.use_request_id_for_trace_sampling,
        s.enable_istio_tags,
        s.disable_context_propagation,
    )
}

fn want(
    s: Side,
) -> (
    Option<String>,
    bool,
    Option<f64>,
    Vec<String>,
    bool,
    bool,
    bool,
) {
    (
        s.0.map(str::to_string),
        s.1,
        s.2,
        s.3.iter().map(|t| t.to_string()).collect(),
        s.4,
        s.5,
        s.6,
    )
}

#[test]
fn tracing_merge_table() {
    let envoy = "  tracing: [{providers: [{name: envoy}]}]\n";
    let stackdriver = "  tracing: [{providers: [{name: stackdriver}]}]\n";
    let disabled = "  tracing: [{disableSpanReporting: true}]\n";
    let overrides_a = "  tracing:\n  - randomSamplingPercentage: 50\n    customTags: {foo: {literal: {value: a}}, bar: {literal: {value: b}}}\n    useRequestIdForTraceSampling: false\n    enableIstioTags: false\n";
    let overrides_b = "  tracing:\n  - randomSamplingPercentage: 80\n    customTags: {foo: {literal: {value: a}}, baz: {header: {name: x-baz}}}\n    useRequestIdForTraceSampling: true\n    enableIstioTags: true\n";
    let on = |p: &'static str| -> Side { (Some(p), false, None, &[], true, true, false) };
    type Row = (
        &'static str,
        String,
        &'static [&'static str],
        Option<(Side, Side)>,
    );
    let rows: Vec<Row> = vec![
        ("empty", String::new(), &[], None),
        (
            "default provider only",
            String::new(),
            &["envoy"],
            Some((on("envoy"), on("envoy"))),
        ),
        (
            "provider only",
            doc("istio-system", "default", envoy),
            &[],
            Some((on("envoy"), on("envoy"))),
        ),
        (
            "override default",
            doc("istio-system", "default", envoy),
            &["stackdriver"],
            Some((on("envoy"), on("envoy"))),
        ),
        (
            "override namespace",
            doc("istio-system", "default", envoy) + &doc("default", "default", stackdriver),
            &[],
            Some((on("stackdriver"), on("stackdriver"))),
        ),
        (
            "empty config inherits",
            doc("istio-system", "default", envoy) + &doc("default", "default", "  tracing: [{}]\n"),
            &[],
            Some((on("envoy"), on("envoy"))),
        ),
        (
            "disable config",
            doc("istio-system", "default", envoy) + &doc("default", "default", disabled),
            &[],
            Some((
                (Some("envoy"), true, None, &[], true, true, false),
                (Some("envoy"), true, None, &[], true, true, false),
            )),
        ),
        (
            "disable default",
            doc("default", "default", disabled),
            &["envoy"],
            Some((
                (Some("envoy"), true, None, &[], true, true, false),
                (Some("envoy"), true, None, &[], true, true, false),
            )),
        ),
        (
            "no provider anywhere",
            doc(
                "default",
                "default",
                "  tracing: [{randomSamplingPercentage: 10}]\n",
            ),
            &[],
            Some((
                (None, true, Some(10.0), &[], true, true, false),
                (None, true, Some(10.0), &[], true, true, false),
            )),
        ),
        (
            "overrides",
            doc("istio-system", "default", overrides_a),
            &["envoy"],
            Some((
                (
                    Some("envoy"),
                    false,
                    Some(50.0),
                    &["bar", "foo"],
                    false,
                    false,
                    false,
                ),
                (
                    Some("envoy"),
                    false,
                    Some(50.0),
                    &["bar", "foo"],
                    false,
                    false,
                    false,
                ),
            )),
        ),
        (
            "multi overrides",
            doc("istio-system", "default", overrides_a) + &doc("default", "default", overrides_b),
            &["envoy"],
            Some((
                (
                    Some("envoy"),
                    false,
                    Some(80.0),
                    &["baz", "foo"],
                    true,
                    true,
                    false,
                ),
                (
                    Some("envoy"),
                    false,
                    Some(80.0),
                    &["baz", "foo"],
                    true,
                    true,
                    false,
                ),
            )),
        ),
        (
            "custom tags are replaced, not merged, and {} clears them",
            doc("istio-system", "default", overrides_a)
                + &doc("default", "default", "  tracing: [{customTags: {}}]\n"),
            &["envoy"],
            Some((
                (Some("envoy"), false, Some(50.0), &[], false, false, false),
                (Some("envoy"), false, Some(50.0), &[], false, false, false),
            )),
        ),
        (
            "client-only override",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  tracing:\n  - match: {mode: CLIENT}\n    providers: [{name: stackdriver}]\n    randomSamplingPercentage: 99.9\n",
                ),
            &["envoy"],
            Some((
                (
                    Some("stackdriver"),
                    false,
                    Some(99.9),
                    &[],
                    true,
                    true,
                    false,
                ),
                on("envoy"),
            )),
        ),
        (
            "server-only override",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  tracing:\n  - match: {mode: SERVER}\n    disableSpanReporting: true\n",
                ),
            &["envoy"],
            Some((
                on("envoy"),
                (Some("envoy"), true, None, &[], true, true, false),
            )),
        ),
        (
            "disable context propagation",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  tracing: [{disableContextPropagation: true}]\n",
                ),
            &[],
            Some((
                (Some("envoy"), false, None, &[], true, true, true),
                (Some("envoy"), false, None, &[], true, true, true),
            )),
        ),
        (
            "sampling: the workload's beats the namespace's beats the mesh's",
            doc(
                "istio-system",
                "mesh",
                "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 1}]\n",
            ) + &doc(
                "default",
                "ns",
                "  tracing: [{randomSamplingPercentage: 0}]\n",
            ) + &doc(
                "default",
                "reviews",
                "  selector: {matchLabels: {app: test}}\n  tracing: [{randomSamplingPercentage: 100}]\n",
            ),
            &[],
            Some((
                (Some("otel"), false, Some(100.0), &[], true, true, false),
                (Some("otel"), false, Some(100.0), &[], true, true, false),
            )),
        ),
        (
            "a workload not selected keeps the namespace's",
            doc(
                "istio-system",
                "mesh",
                "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 1}]\n",
            ) + &doc(
                "default",
                "ns",
                "  tracing: [{randomSamplingPercentage: 0}]\n",
            ) + &doc(
                "default",
                "ratings",
                "  selector: {matchLabels: {app: ratings}}\n  tracing: [{randomSamplingPercentage: 100}]\n",
            ),
            &[],
            Some((
                (Some("otel"), false, Some(0.0), &[], true, true, false),
                (Some("otel"), false, Some(0.0), &[], true, true, false),
            )),
        ),
    ];
    for (name, docs, defaults, expected) in rows {
        let d = DefaultProviders {
            tracing: defaults.iter().map(|s| s.to_string()).collect(),
            ..DefaultProviders::default()
        };
        let got = effective(&docs, "default", &[("app", "test")], &d).tracing;
        match (got, expected) {
            (None, None) => {}
            (Some(t), Some((c, s))) => {
                assert_eq!(side(&t.client), want(c), "{name}: client");
                assert_eq!(side(&t.server), want(s), "{name}: server");
                assert_eq!(side(t.side(WorkloadMode::Server)), want(s), "{name}");
            }
            (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Merge: metrics

/// Metrics as lines: `provider` alone when nothing is overridden, else one line per side
/// with overrides (`METRIC[ off][ tag=value][ -tag]`, `;`-separated) or `off`, and the
/// reporting interval.
fn metric_lines(m: &BTreeMap<String, MetricsConfig>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, cfg) in m {
        let mut lines = Vec::new();
        if let Some(i) = cfg.reporting_interval {
            lines.push(format!("{p} interval {}ms", i.as_millis()));
        }
        for (side, c) in [("client", &cfg.client), ("server", &cfg.server)] {
            if c.disabled {
                lines.push(format!("{p} {side} off"));
            } else if !c.overrides.is_empty() {
                let ovs: Vec<String> = c
                    .overrides
                    .iter()
                    .map(|o| {
                        let mut s = o.name.clone();
                        if o.disabled {
                            s.push_str(" off");
                        }
                        for (t, ch) in &o.tags {
                            match ch {
                                TagChange::Upsert(v) => s.push_str(&format!(" {t}={v}")),
                                TagChange::Remove => s.push_str(&format!(" -{t}")),
                            }
                        }
                        s
                    })
                    .collect();
                lines.push(format!("{p} {side}: {}", ovs.join("; ")));
            }
        }
        if lines.is_empty() {
            lines.push(p.clone());
        }
        out.extend(lines);
    }
    out
}

#[test]
fn metrics_merge_table() {
    let disabled_all = "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{match: {metric: ALL_METRICS}, disabled: true}]\n";
    let overrides = "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides: {remove: {operation: REMOVE}, add: {operation: UPSERT, value: bar}}\n";
    let all = "GRPC_REQUEST_MESSAGES; GRPC_RESPONSE_MESSAGES; REQUEST_COUNT; REQUEST_DURATION; REQUEST_SIZE; RESPONSE_SIZE; TCP_CLOSED_CONNECTIONS; TCP_OPENED_CONNECTIONS; TCP_RECEIVED_BYTES; TCP_SENT_BYTES";
    let all_tagged = "GRPC_REQUEST_MESSAGES add=bar -remove; GRPC_RESPONSE_MESSAGES add=bar -remove; REQUEST_COUNT add=add-override -remove; REQUEST_DURATION add=bar -remove; REQUEST_SIZE add=bar -remove; RESPONSE_SIZE add=bar -remove; TCP_CLOSED_CONNECTIONS add=bar -remove; TCP_OPENED_CONNECTIONS add=bar -remove; TCP_RECEIVED_BYTES add=bar -remove; TCP_SENT_BYTES add=bar -remove";
    type Row = (&'static str, String, DefaultProviders, Vec<String>);
    let none = DefaultProviders::default;
    let rows: Vec<Row> = vec![
        ("empty", String::new(), none(), vec![]),
        (
            "Istio's installation: prometheus",
            String::new(),
            DefaultProviders::installed(),
            vec!["prometheus".into()],
        ),
        (
            "default prometheus",
            doc(
                "istio-system",
                "default",
                "  metrics: [{providers: [{name: prometheus}]}]\n",
            ),
            none(),
            vec!["prometheus".into()],
        ),
        (
            "disabled prometheus",
            doc("istio-system", "default", disabled_all),
            none(),
            vec![
                "prometheus client off".into(),
                "prometheus server off".into(),
            ],
        ),
        (
            "disabled, implicitly all metrics",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{disabled: true}]\n",
            ),
            none(),
            vec![
                "prometheus client off".into(),
                "prometheus server off".into(),
            ],
        ),
        (
            "disabled then empty",
            doc("istio-system", "default", disabled_all)
                + &doc(
                    "default",
                    "default",
                    "  metrics: [{providers: [{name: prometheus}]}]\n",
                ),
            none(),
            vec![
                "prometheus client off".into(),
                "prometheus server off".into(),
            ],
        ),
        (
            "disabled then re-enabled",
            doc("istio-system", "default", disabled_all)
                + &doc(
                    "default",
                    "default",
                    "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{match: {metric: ALL_METRICS}}]\n",
                ),
            none(),
            vec![
                format!("prometheus client: {all}"),
                format!("prometheus server: {all}"),
            ],
        ),
        (
            "disabled then overrides",
            doc("istio-system", "default", disabled_all) + &doc("default", "default", overrides),
            none(),
            vec![
                "prometheus client: REQUEST_COUNT add=bar -remove".into(),
                "prometheus server: REQUEST_COUNT add=bar -remove".into(),
            ],
        ),
        (
            "overrides all metrics, then one",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - tagOverrides: {remove: {operation: REMOVE}, add: {value: bar}}\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides: {add: {value: add-override}}\n",
            ),
            none(),
            vec![
                format!("prometheus client: {all_tagged}"),
                format!("prometheus server: {all_tagged}"),
            ],
        ),
        (
            "client side disabled only",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{match: {metric: ALL_METRICS, mode: CLIENT}, disabled: true}]\n",
            ),
            none(),
            vec!["prometheus client off".into()],
        ),
        (
            "server side override only",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{match: {metric: REQUEST_DURATION, mode: SERVER}, disabled: true}]\n",
            ),
            none(),
            vec!["prometheus server: REQUEST_DURATION off".into()],
        ),
        (
            "a later level's providers replace the earlier ones",
            doc("istio-system", "default", overrides)
                + &doc(
                    "default",
                    "default",
                    "  metrics: [{providers: [{name: otel}]}]\n",
                ),
            none(),
            vec!["otel".into()],
        ),
        (
            "entries without providers inherit the default",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - overrides: [{match: {customMetric: my_metric}, disabled: true}]\n",
            ),
            DefaultProviders::installed(),
            vec![
                "prometheus client: my_metric off".into(),
                "prometheus server: my_metric off".into(),
            ],
        ),
        (
            "no provider at all",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]\n",
            ),
            none(),
            vec![],
        ),
        (
            "tag overrides accumulate, later ones win",
            doc(
                "istio-system",
                "default",
                "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {a: {value: one}, b: {value: two}}}]\n",
            ) + &doc(
                "default",
                "default",
                "  metrics:\n  - overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {a: {value: three}, c: {operation: REMOVE}}}]\n",
            ) + &doc(
                "default",
                "reviews",
                "  selector: {matchLabels: {app: test}}\n  metrics:\n  - overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]\n",
            ),
            none(),
            vec!["prometheus server: REQUEST_COUNT off a=three b=two -c".into()],
        ),
        (
            "reporting interval: the latest",
            doc(
                "istio-system",
                "default",
                "  metrics: [{providers: [{name: prometheus}], reportingInterval: 10s}]\n",
            ) + &doc(
                "default",
                "default",
                "  metrics: [{reportingInterval: 5s}]\n",
            ),
            none(),
            vec!["prometheus interval 5000ms".into()],
        ),
    ];
    for (name, docs, defaults, expected) in rows {
        let got = effective(&docs, "default", &[("app", "test")], &defaults).metrics;
        assert_eq!(metric_lines(&got), expected, "{name}");
    }
    // The override of one metric, looked up by name, and its Prometheus name.
    let e = effective(
        &doc("istio-system", "default", overrides),
        "default",
        &[],
        &DefaultProviders::default(),
    );
    let o = e.metrics["prometheus"]
        .side(WorkloadMode::Server)
        .override_for("REQUEST_COUNT")
        .unwrap();
    assert_eq!(o.istio_metric(), Some(IstioMetric::RequestCount));
    assert_eq!(
        o.istio_metric().and_then(IstioMetric::prometheus_name),
        Some("requests_total")
    );
    assert_eq!(o.tags["remove"], TagChange::Remove);
    assert!(
        e.metrics["prometheus"]
            .client
            .override_for("REQUEST_DURATION")
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------
// Merge: access logging

/// Access logging as lines: `side provider[ off][ filter=...]`, or `none`.
fn log_lines(a: &Option<AccessLoggingConfig>) -> Vec<String> {
    let Some(a) = a else {
        return vec!["none".into()];
    };
    let mut out = Vec::new();
    for (side, m) in [("client", &a.client), ("server", &a.server)] {
        for (p, s) in m {
            let mut line = format!("{side} {p}");
            if s.disabled {
                line.push_str(" off");
            }
            if let Some(f) = &s.filter {
                line.push_str(&format!(" filter={}", f.expression));
            }
            out.push(line);
        }
    }
    out
}

#[test]
fn access_logging_merge_table() {
    let envoy = "  accessLogging: [{providers: [{name: envoy}]}]\n";
    let both = |p: &str| vec![format!("client {p}"), format!("server {p}")];
    type Row = (
        &'static str,
        String,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        Vec<String>,
    );
    let rows: Vec<Row> = vec![
        (
            "empty",
            String::new(),
            &[],
            &[("app", "test")],
            vec!["none".into()],
        ),
        (
            "default provider",
            String::new(),
            &["envoy"],
            &[("app", "test")],
            both("envoy"),
        ),
        (
            "mesh-wide envoy",
            doc("istio-system", "default", envoy),
            &[],
            &[("app", "test")],
            both("envoy"),
        ),
        (
            "client only",
            doc(
                "istio-system",
                "default",
                "  accessLogging: [{match: {mode: CLIENT}, providers: [{name: envoy}]}]\n",
            ),
            &[],
            &[("app", "test")],
            vec!["client envoy".into()],
        ),
        (
            "server only",
            doc(
                "istio-system",
                "default",
                "  accessLogging: [{match: {mode: SERVER}, providers: [{name: envoy}]}]\n",
            ),
            &[],
            &[("app", "test")],
            vec!["server envoy".into()],
        ),
        (
            "client disabled by the namespace",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  accessLogging: [{match: {mode: CLIENT}, providers: [{name: envoy}], disabled: true}]\n",
                ),
            &[],
            &[("app", "test")],
            vec!["client envoy off".into(), "server envoy".into()],
        ),
        (
            "disabled without providers inherits the provider",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  accessLogging: [{disabled: true}]\n",
                ),
            &[],
            &[("app", "test")],
            vec!["client envoy off".into(), "server envoy off".into()],
        ),
        (
            "an empty entry inherits",
            doc("istio-system", "default", envoy)
                + &doc("default", "default", "  accessLogging: [{}]\n"),
            &[],
            &[("app", "test")],
            both("envoy"),
        ),
        (
            "a namespace's provider replaces the mesh's",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "default",
                    "  accessLogging: [{providers: [{name: otel}]}]\n",
                ),
            &[],
            &[("app", "test")],
            both("otel"),
        ),
        (
            "two providers in one Telemetry",
            doc(
                "istio-system",
                "default",
                "  accessLogging:\n  - providers: [{name: envoy}]\n  - providers: [{name: envoy-json}]\n",
            ),
            &[],
            &[("app", "test")],
            vec![
                "client envoy".into(),
                "client envoy-json".into(),
                "server envoy".into(),
                "server envoy-json".into(),
            ],
        ),
        (
            "one of two disabled",
            doc(
                "istio-system",
                "default",
                "  accessLogging:\n  - providers: [{name: envoy}]\n  - providers: [{name: envoy-json}]\n    disabled: true\n",
            ),
            &[],
            &[("app", "test")],
            vec![
                "client envoy".into(),
                "client envoy-json off".into(),
                "server envoy".into(),
                "server envoy-json off".into(),
            ],
        ),
        (
            "the most specific filter",
            doc(
                "istio-system",
                "default",
                "  accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]\n",
            ) + &doc(
                "default",
                "default",
                "  accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 500'}}]\n",
            ),
            &[],
            &[("app", "test")],
            both("envoy filter=response.code >= 500"),
        ),
        (
            "a filter without a provider is not used",
            doc(
                "istio-system",
                "default",
                "  accessLogging:\n  - providers: [{name: envoy}]\n  - filter: {expression: 'response.code >= 400'}\n",
            ),
            &[],
            &[("app", "test")],
            both("envoy"),
        ),
        (
            "access logs off for one workload",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "reviews",
                    "  selector: {matchLabels: {app: reviews}}\n  accessLogging: [{disabled: true}]\n",
                ),
            &[],
            &[("app", "reviews")],
            vec!["client envoy off".into(), "server envoy off".into()],
        ),
        (
            "... and on for the others",
            doc("istio-system", "default", envoy)
                + &doc(
                    "default",
                    "reviews",
                    "  selector: {matchLabels: {app: reviews}}\n  accessLogging: [{disabled: true}]\n",
                ),
            &[],
            &[("app", "ratings")],
            both("envoy"),
        ),
    ];
    for (name, docs, defaults, l, expected) in rows {
        let d = DefaultProviders {
            access_logging: defaults.iter().map(|s| s.to_string()).collect(),
            ..DefaultProviders::default()
        };
        let got = effective(&docs, "default", l, &d).access_logging;
        assert_eq!(log_lines(&got), expected, "{name}");
    }
    let e = effective(
        &(doc("istio-system", "default", envoy)),
        "default",
        &[],
        &DefaultProviders::default(),
    );
    let a = e.access_logging.unwrap();
    assert!(a.logs(WorkloadMode::Server, "envoy"));
    assert!(!a.logs(WorkloadMode::Server, "otel"));
}

// ---------------------------------------------------------------------------------------
// Properties

/// The tag override rule: UPSERT (the default) needs a non-empty value, REMOVE takes
/// none.
fn tag_override_error(op: Option<&str>, value: Option<&str>) -> Option<&'static str> {
    match (op, value) {
        (Some("REMOVE"), Some(_)) => Some("MESH0107"),
        (Some("REMOVE"), None) => None,
        (_, None) | (_, Some("")) => Some("MESH0005"),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(10), ..ProptestConfig::default() })]

    #[test]
    fn sampling_percentage_is_checked_to_0_100(p in -1000.0f64..1000.0) {
        let c = check(&tel(&format!("  tracing:\n  - randomSamplingPercentage: {p:?}\n")));
        let expected = if (0.0..=100.0).contains(&p) {
            vec![]
        } else {
            vec![("MESH0104".to_string(), 6, "spec.tracing[0].randomSamplingPercentage".to_string(), 'E')]
        };
        prop_assert_eq!(problems(&c), expected);
        if (0.0..=100.0).contains(&p) {
            let ts = c.snapshot.unwrap();
            prop_assert_eq!(ts.telemetries()[0].spec.tracing[0].random_sampling_percentage, Some(p));
        }
    }

    #[test]
    fn tag_overrides_upsert_a_value_or_remove_without_one(
        op in prop::option::of(prop::sample::select(vec!["UPSERT", "REMOVE"])),
        value in prop::option::of(prop::sample::select(vec!["", "request.host", "'v1'", "upstream_peer.app"])),
        name in "[a-z_]{1,12}",
    ) {
        let mut fields = Vec::new();
        if let Some(op) = op {
            fields.push(format!("operation: {op}"));
        }
        if let Some(v) = value {
            fields.push(format!("value: {v:?}"));
        }
        let body = format!("  metrics:\n  - overrides:\n    - tagOverrides:\n        {name}: {{{}}}\n", fields.join(", "));
        let c = check(&tel(&body));
        let codes: Vec<String> = problems(&c).into_iter().map(|(code, line, ..)| { assert_eq!(line, 8); code }).collect();
        let expected: Vec<String> = tag_override_error(op, value).into_iter().map(str::to_string).collect();
        prop_assert_eq!(codes, expected);
        if tag_override_error(op, value).is_none() {
            let e = EffectiveTelemetry::resolve(c.snapshot.unwrap().telemetries(), "istio-system", "default", &Labels::new(), &DefaultProviders::installed());
            let o = &e.metrics["prometheus"].client.overrides[0];
            let change = &o.tags[&name];
            match op {
                Some("REMOVE") => prop_assert_eq!(change, &TagChange::Remove),
                _ => prop_assert_eq!(change, &TagChange::Upsert(value.unwrap_or_default().to_string())),
            }
        }
    }

    #[test]
    fn arbitrary_filters_never_panic_and_are_reported_at_their_line(expr in "\\PC{0,40}") {
        let quoted = serde_json::to_string(&expr).unwrap();
        let c = check(&tel(&format!("  accessLogging:\n  - providers: [{{name: envoy}}]\n    filter:\n      expression: {quoted}\n")));
        for (code, line, path, sev) in problems(&c) {
            prop_assert_eq!((code.as_str(), line, path.as_str(), sev), ("MESH0112", 8, "spec.accessLogging[0].filter.expression", 'E'));
        }
    }
}
