//! Conformance with Istio's own validation test data:
//!
//! - every document of Istio's CRD test files (`tests/istio/crds/`, copied unchanged; see
//!   the NOTICE there) gets Istio's verdict: accepted from a `*-valid.yaml` file, rejected
//!   from a `*-invalid.yaml` one;
//! - every case of the tables of Istio's validation tests (`validation_test.go` and its
//!   neighbours), converted to YAML (`tests/istio/validation/`, the part tables wrapped
//!   into whole resources, each case headed by its Go test and case name and
//!   `# istio: valid | warning | invalid`), gets Istio's webhook verdict:
//!   rejected when invalid, accepted when valid, accepted with a warning of its own (not a
//!   "parsed, not enforced" note) when Istio warns. Only per-resource checks count here:
//!   the cross-resource analysis (`IST` codes) is not Istio's webhook;
//! - every case of Istio's analyzer table (`analyzers_test.go`, extracted to
//!   `tests/istio/analysis/cases.yaml` with its test data) that needs no Kubernetes object
//!   and whose analyzer the mesh implements gives Istio's messages: the analyzer's codes,
//!   on the same resources, as many times;
//!
//! unless a case is listed in [`DEVIATIONS`] with the reason the mesh differs today. And:
//!
//! - every field path of Istio's current schemas for the kinds the mesh reads
//!   (`tests/istio/schemas/`, from Istio's `crd-all.gen.yaml`) is a field the mesh knows;
//! - every file of Istio's `samples/` with Istio resources (`tests/istio/samples/`) gets no
//!   error but for registry hosts nothing declares.
//!
//! The list is a ratchet: a listed case that comes to agree with Istio fails the test until
//! it is taken off the list, so the list only shrinks, and says exactly where the mesh
//! stands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use mesh_config::{ConfigSet, Diagnostic, Severity};

/// Cases where the mesh does not give Istio's verdict yet: `(file, document index from 0,
/// why)`.
const DEVIATIONS: &[(&str, usize, &str)] = &[
    (
        "authorizationpolicy.yaml",
        29,
        "`from: []`: Istio's Go test builds a non-nil empty list, which YAML cannot tell from a missing `from` once decoded (Kubernetes' JSON decoding leaves both unset too); the mesh reads both as unset",
    ),
    (
        "authorizationpolicy.yaml",
        32,
        "`to: []`: as `from: []`, an empty list and a missing one are the same thing once YAML is decoded",
    ),
    (
        "requestauthentication.yaml",
        7,
        "a JWT rule without an `issuer` (Istio accepts one with a `jwksUri`: Envoy then takes a token of any issuer the keys verify): the mesh picks a token's rule by its issuer, so it still requires `issuer` rather than accept a rule it would never apply",
    ),
    (
        "envoyfilter.yaml",
        16,
        "a patch value of the wrong type for Envoy's configuration (`name: false` for a Cluster): Istio decodes every patch value into Envoy's protobuf type for `applyTo`; the mesh has no Envoy protos, types only the filter it runs (local rate limiting) and reports every other patch as not enforced (MESH0120)",
    ),
    (
        "cases.yaml",
        68,
        "IST0134 with Istio's mesh configuration setting `defaultConfig.proxyMetadata` ISTIO_META_DNS_CAPTURE and ISTIO_META_DNS_AUTO_ALLOCATE (the sidecar's DNS proxy allocates addresses): the mesh has no DNS proxy and its MeshConfig no proxy metadata, so it warns as Istio does without them",
    ),
    (
        "cases.yaml",
        103,
        "IST0134 for a ServiceEntry whose `status.addresses` Istio's controller filled in (auto-allocation): the mesh reads no `status`, which only a cluster's controller writes, so it warns as for any ServiceEntry without addresses",
    ),
];

/// Kinds in Istio's test data the mesh does not read (ignored with a warning, so never
/// rejected): their documents are not cases.
const UNREAD_KINDS: &[&str] = &["ProxyConfig", "WasmPlugin", "WorkloadGroup"];

/// One document of a test file.
struct Case {
    index: usize,
    /// Istio's expected error (`_err`, or `# error:`), for an invalid case.
    expected_error: Option<String>,
    /// The case's name (`# case:`), for the converted tables.
    name: Option<String>,
    /// Istio's verdict (`# istio:`), for the converted tables.
    verdict: Option<String>,
    /// The document without Istio's `_err` key.
    text: String,
    kind: String,
}

/// The documents of `text`, split at `---` lines, with Istio's test keys taken out.
fn cases(text: &str) -> Vec<Case> {
    let mut docs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(Vec::new());
        } else {
            docs.last_mut().unwrap().push(line);
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.iter()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .enumerate()
        .map(|(index, lines)| {
            let header = |prefix: &str| {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|e| e.trim().trim_matches('\'').to_string())
            };
            let expected_error = header("_err:").or_else(|| header("# error:"));
            let name = header("# case:");
            let verdict = header("# istio:");
            let kind = lines
                .iter()
                .find_map(|l| l.strip_prefix("kind:"))
                .map(|k| k.trim().to_string())
                .unwrap_or_default();
            let text = lines
                .iter()
                .filter(|l| !l.starts_with("_err:"))
                .copied()
                .collect::<Vec<_>>()
                .join("\n");
            Case {
                index,
                expected_error,
                name,
                verdict,
                text,
                kind,
            }
        })
        .collect()
}

/// What Istio says of a case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Valid,
    Warning,
    Invalid,
}

/// What the mesh says of `text`: with `analysis`, any error rejects; without, only the
/// per-resource checks' errors (not the cross-resource `IST` codes).
fn mesh_verdict(name: &str, text: &str, analysis: bool) -> (Verdict, Vec<Diagnostic>) {
    let mut set = ConfigSet::new();
    set.add_str(name, text);
    let checked = set.check();
    // Istio's webhook also warns of what analysis finds in one resource (unreachable
    // rules and matches, deprecated forms): warnings of every code count.
    let counts = |d: &&Diagnostic| analysis || !d.code.as_str().starts_with("IST");
    let rejected = checked
        .diagnostics
        .iter()
        .filter(counts)
        .any(|d| d.is_error());
    // Without analysis, a warning of the cross-resource analysis does not count either,
    // but for the per-resource ones Istio's webhook also gives: deprecated forms,
    // unreachable rules and ineffective matches.
    let per_resource = |d: &&Diagnostic| {
        analysis
            || !d.code.as_str().starts_with("IST")
            || matches!(d.code.as_str(), "IST0002" | "IST0130" | "IST0131")
    };
    let warned = checked
        .diagnostics
        .iter()
        .filter(per_resource)
        .any(|d| match d.severity {
            Severity::Warning => d.code.as_str() != "MESH0120",
            // Istio's webhook warns of unreachable rules and ineffective matches, which
            // `istioctl analyze` reports as information.
            Severity::Info => matches!(d.code.as_str(), "IST0130" | "IST0131"),
            _ => false,
        });
    let verdict = match (rejected, warned) {
        (true, _) => Verdict::Invalid,
        (false, true) => Verdict::Warning,
        (false, false) => Verdict::Valid,
    };
    (verdict, checked.diagnostics)
}

/// Runs every case of the `*.yaml` files of `dir` against the deviations, and fails with
/// every disagreement not listed and every listed case that agrees.
fn conform(dir: &str, expected: impl Fn(&str, &Case) -> Verdict, analysis: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut disagreements = Vec::new();
    let mut now_agreeing = Vec::new();
    let (mut total, mut agreeing) = (0, 0);
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        for case in cases(&text) {
            if UNREAD_KINDS.contains(&case.kind.as_str()) {
                continue;
            }
            total += 1;
            let want = expected(&file, &case);
            let (got, diagnostics) =
                mesh_verdict(&format!("{file}#{}", case.index), &case.text, analysis);
            // Istio's warning is met by a warning; the mesh may warn where Istio does not
            // (its own notes), which is no disagreement.
            let agrees = match want {
                Verdict::Warning => got == Verdict::Warning,
                Verdict::Valid => got != Verdict::Invalid,
                Verdict::Invalid => got == Verdict::Invalid,
            };
            let listed = DEVIATIONS
                .iter()
                .any(|(f, i, _)| *f == file && *i == case.index);
            let label = format!(
                "{file} #{}{}",
                case.index,
                case.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            match (agrees, listed) {
                (true, false) => agreeing += 1,
                (true, true) => now_agreeing.push(label),
                (false, true) => {}
                (false, false) => {
                    let notes: Vec<String> = diagnostics
                        .iter()
                        .map(|d| format!("      {}", d.short()))
                        .collect();
                    disagreements.push(format!(
                        "{label} {}: Istio {want:?}{}, the mesh {got:?}\n{}",
                        case.kind,
                        case.expected_error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default(),
                        notes.join("\n"),
                    ));
                }
            }
        }
    }
    assert!(total > 0, "no cases under {}", dir.display());
    assert!(
        disagreements.is_empty() && now_agreeing.is_empty(),
        "{agreeing} of {total} cases under {} agree with Istio.\n\
         Disagreements not listed as deviations:\n{}\n\
         Listed deviations that now agree (take them off the list):\n{}",
        dir.display(),
        disagreements.join("\n"),
        now_agreeing.join("\n"),
    );
}

#[test]
fn every_deviation_names_a_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio");
    for (file, index, why) in DEVIATIONS {
        assert!(!why.is_empty(), "{file} #{index}: no reason given");
        let n = if *file == "cases.yaml" {
            analyzer_cases().len()
        } else {
            let path = ["crds", "validation"]
                .iter()
                .map(|d| root.join(d).join(file))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("deviation {file}: no such file"));
            cases(&std::fs::read_to_string(path).unwrap()).len()
        };
        assert!(
            *index < n,
            "deviation {file} #{index}: the file has {n} cases"
        );
    }
}

#[test]
fn istios_converted_validation_tables_get_istios_verdicts() {
    conform(
        "tests/istio/validation",
        |file, case| match case.verdict.as_deref() {
            Some("valid") => Verdict::Valid,
            Some("warning") => Verdict::Warning,
            Some("invalid") => Verdict::Invalid,
            other => panic!("{file} #{}: `# istio:` is {other:?}", case.index),
        },
        false,
    );
}

#[test]
fn istios_crd_test_data_gets_istios_verdicts() {
    conform(
        "tests/istio/crds",
        |file, _| {
            if file.ends_with("-valid.yaml") {
                Verdict::Valid
            } else {
                assert!(
                    file.ends_with("-invalid.yaml"),
                    "{file}: neither -valid nor -invalid"
                );
                Verdict::Invalid
            }
        },
        true,
    );
}

/// Istio's analyzers the mesh implements, each with the messages of the mesh that stand
/// for its own: `(code, how the message starts)` ("" for any message of the code). Several
/// Istio analyzers emit IST0101 (a referenced resource not found); the mesh's message
/// names what was not found, which tells them apart. An analyzer's other codes, which the
/// mesh does not emit, are not compared (they are listed in the README).
const ANALYZERS: &[(&str, &[(&str, &str)])] = &[
    (
        "virtualservice.GatewayAnalyzer",
        &[
            ("IST0101", "Referenced gateway not found"),
            ("IST0132", ""),
            ("IST0165", ""),
        ],
    ),
    (
        "virtualservice.DestinationRuleAnalyzer",
        &[
            (
                "IST0101",
                "Referenced host+subset in destinationrule not found",
            ),
            (
                "IST0101",
                "Referenced mirror+subset in destinationrule not found",
            ),
        ],
    ),
    (
        "virtualservice.DestinationHostAnalyzer",
        &[
            ("IST0101", "Referenced host not found"),
            ("IST0101", "Referenced host:port not found"),
            ("IST0112", ""),
        ],
    ),
    (
        "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        &[("IST0109", "")],
    ),
    (
        "schema.ValidationAnalyzer",
        &[("IST0130", ""), ("IST0131", "")],
    ),
    (
        "destinationrule.CaCertificateAnalyzer",
        &[("IST0128", ""), ("IST0129", "")],
    ),
    (
        "destinationrule.PodNotSelectedAnalyzer",
        &[("IST0173", ""), ("IST0174", "")],
    ),
    ("telemetry.ProviderAnalyzer", &[("IST0157", "")]),
    ("telemetry.DefaultSelectorAnalyzer", &[("IST0160", "")]),
    ("telemetry.SelectorAnalyzer", &[("IST0159", "")]),
    ("deprecation.FieldAnalyzer", &[("IST0002", "")]),
    ("serviceentry.ProtocolAddressesAnalyzer", &[("IST0134", "")]),
    ("gateway.ConflictingGatewayAnalyzer", &[("IST0145", "")]),
    (
        "envoyfilter.EnvoyPatchAnalyzer",
        &[
            ("IST0151", ""),
            ("IST0152", ""),
            ("IST0153", ""),
            ("IST0154", ""),
            ("IST0155", ""),
        ],
    ),
    (
        "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
        &[("IST0177", "")],
    ),
];

/// Istio's analyzers that have cases needing no Kubernetes object in the test files, yet
/// which the mesh does not implement: `(analyzer, why)`.
const ANALYZERS_NOT_IMPLEMENTED: &[(&str, &str)] = &[
    (
        "gateway.IngressGatewayPortAnalyzer",
        "reads Pods and Services (the files-only cases rely on the ingress Pod and Service Istio's analysis adds by default); the mesh's gateway workloads and listeners are declared in code, not in configuration",
    ),
    (
        "virtualservice.JWTClaimRouteAnalyzer",
        "reads the Pods a Gateway selects (the files-only case relies on Istio's default ingress Pod) to look for RequestAuthentications selecting them",
    ),
    (
        "telemetry.LightstepAnalyzer",
        "reads the providers of Istio's mesh configuration (`extensionProviders`), which the mesh's MeshConfig does not have: its Telemetry providers are built in",
    ),
];

/// One case of Istio's analyzer table (`tests/istio/analysis/cases.yaml`).
struct AnalyzerCase {
    name: String,
    analyzer: String,
    files: Vec<String>,
    /// Needs Kubernetes objects or mesh networks, or is skipped by Istio itself: out of
    /// scope. (A case with Istio's mesh configuration file runs without it: the mesh's
    /// MeshConfig has none of the fields those files set.)
    out_of_scope: bool,
    expected: Vec<(String, String)>,
}

fn analyzer_cases() -> Vec<AnalyzerCase> {
    use mesh_config::yaml::{Node, Value};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/analysis/cases.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file = mesh_config::source::SourceFile::new("cases.yaml", text);
    let stream = mesh_config::yaml::parse_stream(&file);
    assert!(stream.errors.is_empty(), "{:?}", stream.errors);
    let Value::Seq(items) = &stream.documents[0].1.value else {
        panic!("cases.yaml is not a list");
    };
    let text_of = |n: &Node, k: &str| n.get(k).and_then(Node::as_str).map(str::to_string);
    let list = |n: &Node, k: &str| -> Vec<String> {
        match n.get(k).map(|v| &v.value) {
            Some(Value::Seq(v)) => v
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let flag = |n: &Node, k: &str| matches!(n.get(k).map(|v| &v.value), Some(Value::Bool(true)));
    items
        .iter()
        .map(|c| {
            let expected = match c.get("expected").map(|v| &v.value) {
                Some(Value::Seq(v)) => v
                    .iter()
                    .map(|e| (text_of(e, "code").unwrap(), text_of(e, "resource").unwrap()))
                    .collect(),
                _ => Vec::new(),
            };
            AnalyzerCase {
                name: text_of(c, "name").unwrap(),
                analyzer: text_of(c, "analyzer").unwrap(),
                files: list(c, "files"),
                out_of_scope: flag(c, "kubernetes")
                    || flag(c, "skipAll")
                    || c.get("meshNetworks").is_some(),
                expected,
            }
        })
        .collect()
}

/// Every case of Istio's analyzer table that needs no Kubernetes object and whose
/// analyzer the mesh implements gives Istio's messages: the same codes on the same
/// resources, as many times (only the analyzer's own codes are compared).
#[test]
fn istios_analyzer_cases_get_istios_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/analysis/testdata");
    let cases = analyzer_cases();
    let (mut run, mut agreeing) = (0, 0);
    let mut disagreements = Vec::new();
    let mut now_agreeing = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if case.out_of_scope {
            continue;
        }
        let Some((_, messages)) = ANALYZERS.iter().find(|(a, _)| *a == case.analyzer) else {
            assert!(
                ANALYZERS_NOT_IMPLEMENTED
                    .iter()
                    .any(|(a, _)| *a == case.analyzer),
                "cases.yaml #{index} ({}): analyzer {} is neither implemented nor listed in ANALYZERS_NOT_IMPLEMENTED",
                case.name,
                case.analyzer
            );
            continue;
        };
        run += 1;
        let mut set = ConfigSet::new();
        for f in &case.files {
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {f}: {e}", case.name));
            set.add_str(f, &text);
        }
        let checked = set.check();
        let mut got: Vec<(String, String)> = checked
            .diagnostics
            .iter()
            .filter(|d| {
                messages
                    .iter()
                    .any(|(code, start)| d.code.as_str() == *code && d.message.starts_with(start))
            })
            .filter_map(|d| {
                let r = d.resource.as_ref()?;
                Some((
                    d.code.as_str().to_string(),
                    r.to_string(),
                    d.message.clone(),
                ))
            })
            // Istio's analysis reports a message once however many places raise it (its
            // `SortedDedupedCopy`); the mesh names each place.
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|(code, r, _)| (code, r))
            .collect();
        // Istio names a resource without a namespace by kind and name alone.
        let mut expected: Vec<(String, String)> = case
            .expected
            .iter()
            .filter(|(code, _)| messages.iter().any(|(c, _)| c == code))
            .map(|(code, r)| {
                let full = match r.split_once(' ') {
                    Some((kind, name)) if !name.contains('/') => {
                        format!("{kind} default/{name}")
                    }
                    _ => r.clone(),
                };
                (code.clone(), full)
            })
            .collect();
        got.sort();
        expected.sort();
        let agrees = got == expected;
        let listed = DEVIATIONS
            .iter()
            .any(|(f, i, _)| *f == "cases.yaml" && *i == index);
        match (agrees, listed) {
            (true, false) => agreeing += 1,
            (true, true) => now_agreeing.push(format!("cases.yaml #{index} ({})", case.name)),
            (false, true) => {}
            (false, false) => disagreements.push(format!(
                "cases.yaml #{index} ({}, files {:?}):\n      Istio: {expected:?}\n      mesh:  {got:?}",
                case.name, case.files
            )),
        }
    }
    assert!(run > 0, "no analyzer case ran");
    assert!(
        disagreements.is_empty() && now_agreeing.is_empty(),
        "{agreeing} of {run} analyzer cases agree with Istio.\n\
         Disagreements not listed as deviations:\n{}\n\
         Listed deviations that now agree (take them off the list):\n{}",
        disagreements.join("\n"),
        now_agreeing.join("\n"),
    );
}

/// One step from a schema node to a child: a named field, the item of a list, or the
/// value of a map (whose keys the user chooses).
#[derive(Clone)]
enum Step {
    Field(String),
    Item,
    MapValue,
}

/// A JSON value (which is YAML) for `path`, ending in `leaf`.
fn nested(path: &[Step], leaf: &str) -> String {
    match path.split_first() {
        None => leaf.to_string(),
        Some((Step::Field(f), rest)) => format!("{{{f:?}: {}}}", nested(rest, leaf)),
        Some((Step::Item, rest)) => format!("[{}]", nested(rest, leaf)),
        Some((Step::MapValue, rest)) => format!("{{\"8080\": {}}}", nested(rest, leaf)),
    }
}

/// A value of the type a schema node asks for (its first enum value, if it has some).
fn sample_value(schema: &mesh_config::yaml::Node) -> String {
    use mesh_config::yaml::Value;
    if let Some(Value::Seq(values)) = schema.get("enum").map(|e| &e.value)
        && let Some(first) = values.first()
    {
        return match &first.value {
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => "null".into(),
        };
    }
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("string") => "\"x\"".into(),
        Some("integer") | Some("number") => "1".into(),
        Some("boolean") => "true".into(),
        Some("array") => "[]".into(),
        _ => "{}".into(),
    }
}

/// What a walk of a schema found.
#[derive(Default)]
struct SchemaWalk {
    /// A `spec` setting one field (every field path, each with a value of its type).
    fields: Vec<String>,
    /// For each object with named fields: its path (`spec.http[].fault`), a `spec`
    /// setting an unknown field in it, and the names of its fields.
    objects: Vec<(String, String, BTreeSet<String>)>,
}

/// Walks `schema` (`properties`, list `items`, map `additionalProperties`).
fn walk_schema(schema: &mesh_config::yaml::Node, path: &mut Vec<Step>, out: &mut SchemaWalk) {
    use mesh_config::yaml::Value;
    if let Some(Value::Map(props)) = schema.get("properties").map(|p| &p.value) {
        let mut unknown = path.clone();
        unknown.push(Step::Field(UNKNOWN_FIELD.into()));
        let mut name = String::from("spec");
        for step in path.iter() {
            match step {
                Step::Field(f) => {
                    name.push('.');
                    name.push_str(f);
                }
                Step::Item => name.push_str("[]"),
                Step::MapValue => name.push_str("{}"),
            }
        }
        out.objects.push((
            name,
            nested(&unknown, "1"),
            props.iter().map(|e| e.key.clone()).collect(),
        ));
        for e in props {
            path.push(Step::Field(e.key.clone()));
            out.fields.push(nested(path, &sample_value(&e.value)));
            walk_schema(&e.value, path, out);
            path.pop();
        }
    }
    if let Some(items) = schema.get("items") {
        path.push(Step::Item);
        walk_schema(items, path, out);
        path.pop();
    }
    if let Some(values) = schema.get("additionalProperties")
        && matches!(values.value, Value::Map(_))
    {
        path.push(Step::MapValue);
        walk_schema(values, path, out);
        path.pop();
    }
}

/// A field name no schema has.
const UNKNOWN_FIELD: &str = "notAnIstioField";

/// One kind's schema (`tests/istio/schemas/`): its group, kind, served versions and walk.
struct KindSchema {
    group: String,
    kind: String,
    versions: Vec<String>,
    walk: SchemaWalk,
}

fn kind_schemas() -> Vec<KindSchema> {
    use mesh_config::yaml::Value;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/schemas");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "one schema per Istio kind the mesh reads");
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let file = mesh_config::source::SourceFile::new(path.to_string_lossy(), text);
            let stream = mesh_config::yaml::parse_stream(&file);
            assert!(stream.errors.is_empty(), "{:?}", stream.errors);
            let root = &stream.documents[0].1;
            let text_of = |k: &str| root.get(k).and_then(|n| n.as_str()).unwrap().to_string();
            let Value::Seq(versions) = &root.get("servedVersions").unwrap().value else {
                panic!("servedVersions");
            };
            let spec = root
                .get("openAPIV3Schema")
                .and_then(|s| s.get("properties"))
                .and_then(|p| p.get("spec"))
                .unwrap();
            let mut walk = SchemaWalk::default();
            walk_schema(spec, &mut Vec::new(), &mut walk);
            KindSchema {
                group: text_of("group"),
                kind: text_of("kind"),
                versions: versions
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
                walk,
            }
        })
        .collect()
}

/// The diagnostics of a resource of `schema`'s kind, at `version`, with this `spec`.
fn check_spec(schema: &KindSchema, version: &str, spec: &str) -> Vec<Diagnostic> {
    let doc = format!(
        "apiVersion: {}/{version}\nkind: {}\nmetadata: {{name: x, namespace: default}}\nspec: {spec}\n",
        schema.group, schema.kind
    );
    let mut set = ConfigSet::new();
    set.add_str("schema.yaml", &doc);
    set.check().diagnostics
}

/// Every field of Istio's current API for the kinds the mesh reads (the CRD schemas of
/// Istio's `crd-all.gen.yaml`, `tests/istio/schemas/`) is a field the mesh knows: a
/// resource setting it alone may be refused for its value or for what it lacks, never
/// as an unknown field. Each kind is read under every version Istio serves.
#[test]
fn every_field_of_istios_schemas_is_a_known_field() {
    let (mut checked, mut unknown) = (0, Vec::new());
    for schema in kind_schemas() {
        assert!(
            schema.walk.fields.len() > 3,
            "{}: no fields found",
            schema.kind
        );
        for version in &schema.versions {
            for spec in &schema.walk.fields {
                checked += 1;
                for d in check_spec(&schema, version, spec) {
                    if d.code == mesh_config::Code::UnknownField {
                        unknown.push(format!(
                            "{} {version}: spec: {spec}\n    {}",
                            schema.kind, d.message
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 2000, "{checked} field documents");
    assert!(
        unknown.is_empty(),
        "{} of {checked} field documents have a field the mesh does not know:\n{}",
        unknown.len(),
        unknown.join("\n")
    );
}

/// Fields the mesh reads that Istio's current schemas do not have: `(kind, object, field,
/// why)`.
const EXTRA_FIELDS: &[(&str, &str, &str, &str)] = &[(
    "VirtualService",
    "spec.http[].fault.abort",
    "percent",
    "the integer share of an older Istio API, still written by the Bookinfo samples this project ships (`virtual-service-ratings-test-abort.yaml`): read with a deprecation warning (IST0002) rather than refuse a sample Istio once accepted",
)];

/// ... and the mesh knows no field Istio's schemas do not have: at every object of the
/// schemas, an unknown field is refused, and the fields the mesh names as expected there
/// are the schema's.
#[test]
fn the_mesh_reads_no_field_istios_schemas_lack() {
    let (mut objects, mut differences) = (0, Vec::new());
    let mut listed_seen = BTreeSet::new();
    for schema in kind_schemas() {
        let version = &schema.versions[0];
        for (object, spec, fields) in &schema.walk.objects {
            objects += 1;
            let diagnostics = check_spec(&schema, version, spec);
            let Some(d) = diagnostics
                .iter()
                .find(|d| d.code == mesh_config::Code::UnknownField)
            else {
                differences.push(format!(
                    "{}: spec: {spec}\n    accepted: {diagnostics:?}",
                    schema.kind
                ));
                continue;
            };
            let known: BTreeSet<String> = d
                .message
                .split_once("expected one of ")
                .map(|(_, list)| {
                    list.split(", ")
                        .map(|n| n.trim_matches('`').to_string())
                        .collect()
                })
                .unwrap_or_default();
            let extra: BTreeSet<String> = known
                .difference(fields)
                .filter(|f| {
                    let listed = EXTRA_FIELDS
                        .iter()
                        .position(|(k, o, x, _)| *k == schema.kind && o == object && x == f);
                    listed_seen.extend(listed);
                    listed.is_none()
                })
                .cloned()
                .collect();
            if extra.is_empty() && fields.is_subset(&known) {
                continue;
            }
            {
                differences.push(format!(
                    "{}: spec: {spec}\n    only the mesh: {:?}\n    only Istio: {:?}",
                    schema.kind,
                    extra,
                    fields.difference(&known).collect::<Vec<_>>(),
                ));
            }
        }
    }
    assert!(objects > 100, "{objects} objects");
    assert_eq!(
        listed_seen.len(),
        EXTRA_FIELDS.len(),
        "a field listed in EXTRA_FIELDS is no longer read: take it off the list"
    );
    assert!(
        differences.is_empty(),
        "{} of {objects} objects differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// What Istio's tasks apply before a sample file of a directory (`kubectl apply`, so a
/// later resource of the same kind, namespace and name replaces an earlier one): the
/// Bookinfo tasks start from its default destination rules, the TCP traffic shifting
/// task from all traffic to v1.
const SAMPLE_BASES: &[(&str, &str)] = &[
    (
        "bookinfo/networking",
        "bookinfo/networking/destination-rule-all.yaml",
    ),
    ("tcp-echo", "tcp-echo/tcp-echo-all-v1.yaml"),
];

/// Every file of Istio's `samples/` holding Istio resources (`tests/istio/samples/`,
/// copied unchanged), applied as Istio's tasks apply it ([`SAMPLE_BASES`]), gets no
/// error but for destination hosts nothing declares (a registry host: a Kubernetes
/// Service in Istio); its Kubernetes objects are skipped with a note.
#[test]
fn istios_samples_get_no_error_but_missing_registry_hosts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/samples");
    let files = mesh_config::load::yaml_files(&dir).unwrap();
    assert_eq!(files.len(), 37, "Istio's samples with Istio resources");
    let (mut documents, mut unexpected) = (0, Vec::new());
    for f in &files {
        let rel = f.strip_prefix(&dir).unwrap();
        let mut set = ConfigSet::new();
        if let Some((_, base)) = SAMPLE_BASES.iter().find(|(d, _)| rel.starts_with(d)) {
            set.apply(ConfigSet::load(&[dir.join(base)]).unwrap());
        }
        let file = ConfigSet::load(&[f]).unwrap();
        documents += file.resources().len();
        set.apply(file);
        let checked = set.check();
        for d in checked.diagnostics.iter().filter(|d| d.is_error()) {
            if !missing_registry_host(d) {
                unexpected.push(format!("{}: {d}", rel.display()));
            }
        }
    }
    assert_eq!(documents, 67, "Istio resources read");
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
}

/// IST0101 for a destination host nothing declares.
fn missing_registry_host(d: &Diagnostic) -> bool {
    d.code.as_str() == "IST0101" && d.message.starts_with("Referenced host not found")
}
