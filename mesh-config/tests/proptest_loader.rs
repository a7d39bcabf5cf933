//! Property tests: the loader never panics, whatever it is given.
//!
//! Arbitrary bytes, arbitrary YAML built from Istio's own field names (so that the typed
//! model and the validators are reached, not only the YAML parser), and random edits of
//! the Bookinfo samples all end in `Ok` or in diagnostics, never in a panic. Round trips
//! of durations and field paths are checked on the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use mesh_config::duration::{Duration, parse_duration};
use mesh_config::{ConfigSet, FieldPath};
use proptest::prelude::*;

fn check_text(text: &str) {
    let mut set = ConfigSet::new();
    set.add_str("prop.yaml", text);
    let checked = set.check();
    // Every diagnostic can be rendered, both ways.
    let _ = mesh_config::diag::render(&checked.diagnostics, Default::default());
    let _ = mesh_config::diag::render_json(&checked.diagnostics);
    // A snapshot exists exactly when there is no error.
    assert_eq!(checked.snapshot.is_some(), !checked.has_errors());
}

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "hosts",
    "gateways",
    "http",
    "match",
    "uri",
    "exact",
    "prefix",
    "regex",
    "headers",
    "route",
    "destination",
    "host",
    "subset",
    "port",
    "number",
    "weight",
    "fault",
    "delay",
    "abort",
    "fixedDelay",
    "percent",
    "percentage",
    "value",
    "httpStatus",
    "retries",
    "attempts",
    "perTryTimeout",
    "retryOn",
    "timeout",
    "mirror",
    "mirrors",
    "redirect",
    "rewrite",
    "directResponse",
    "status",
    "body",
    "subsets",
    "labels",
    "trafficPolicy",
    "loadBalancer",
    "simple",
    "consistentHash",
    "tls",
    "mode",
    "servers",
    "protocol",
    "ports",
    "resolution",
    "endpoints",
    "address",
    "workloadSelector",
    "selector",
    "matchLabels",
    "rules",
    "from",
    "to",
    "source",
    "principals",
    "operation",
    "methods",
    "paths",
    "when",
    "key",
    "values",
    "action",
    "mtls",
    "portLevelMtls",
    "exportTo",
    "items",
    "corsPolicy",
    "queryParams",
];

const SCALARS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "ServiceEntry",
    "WorkloadEntry",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "List",
    "networking.istio.io/v1",
    "networking.istio.io/v1alpha3",
    "security.istio.io/v1",
    "v1",
    "reviews",
    "v1",
    "*",
    "7s",
    "100ms",
    "-1s",
    "1d",
    "0",
    "100",
    "101",
    "-5",
    "3.5",
    "true",
    "null",
    "~",
    "[a-",
    "(",
    "STATIC",
    "DNS",
    "ISTIO_MUTUAL",
    "ROUND_ROBIN",
    "5xx,reset",
    "GET",
    "/api",
    "\"\"",
    "127.0.0.1",
    "*.example.com",
    "555",
    "65536",
    "jason",
];

#[derive(Debug, Clone)]
enum Tree {
    Scalar(&'static str),
    Seq(Vec<Tree>),
    Map(Vec<(&'static str, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop::sample::select(SCALARS).prop_map(Tree::Scalar);
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::Seq),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(Tree::Map),
        ]
    })
}

/// Writes a tree as flow-style YAML (always syntactically valid, keys quoted).
fn render(t: &Tree, out: &mut String) {
    match t {
        Tree::Scalar(s) => {
            if s.starts_with('"') {
                out.push_str(s);
            } else {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
        }
        Tree::Seq(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(it, out);
            }
            out.push(']');
        }
        Tree::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
    }
}

/// A resource skeleton of a random kind with a random spec, so decoding reaches the model.
fn resource() -> impl Strategy<Value = String> {
    (
        prop::sample::select(
            &[
                ("networking.istio.io/v1", "VirtualService"),
                ("networking.istio.io/v1beta1", "DestinationRule"),
                ("networking.istio.io/v1alpha3", "Gateway"),
                ("networking.istio.io/v1", "ServiceEntry"),
                ("networking.istio.io/v1", "WorkloadEntry"),
                ("security.istio.io/v1", "AuthorizationPolicy"),
                ("security.istio.io/v1beta1", "PeerAuthentication"),
                ("security.istio.io/v1", "RequestAuthentication"),
            ][..],
        ),
        tree(),
    )
        .prop_map(|((api, kind), spec)| {
            let mut s = format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec: ");
            render(&spec, &mut s);
            s.push('\n');
            s
        })
}

fn samples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo/istio");
    mesh_config::load::yaml_files(&dir)
        .unwrap()
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

proptest! {
    // A fixed seed: the same cases on every run and every machine.
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d65_7368),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml_never_panics(t in tree()) {
        let mut s = String::new();
        render(&t, &mut s);
        check_text(&s);
    }

    #[test]
    fn arbitrary_resources_never_panic(docs in prop::collection::vec(resource(), 1..4)) {
        check_text(&docs.join("---\n"));
    }

    #[test]
    fn edited_samples_never_panic(
        which in 0usize..64,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..8),
    ) {
        let all = samples();
        let mut text: Vec<char> = all[which % all.len()].chars().collect();
        for (at, op, c) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            match op {
                0 => { text.remove(i); }
                1 => text.insert(i, c),
                2 => text[i] = c,
                _ => { text.insert(i, '\n'); text.insert(i, ' '); }
            }
        }
        check_text(&text.into_iter().collect::<String>());
    }

    #[test]
    fn durations_round_trip(ms in 0u64..10_000_000_000) {
        let d = Duration(std::time::Duration::from_millis(ms));
        prop_assert_eq!(parse_duration(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn field_paths_round_trip(segs in prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9_./\"\\\\-]{1,12}".prop_map(Err),
            (0usize..1000).prop_map(Ok),
        ],
        0..8,
    )) {
        let mut p = FieldPath::root();
        for s in segs {
            p = match s {
                Ok(i) => p.index(i),
                Err(k) => p.key(k),
            };
        }
        prop_assert_eq!(p.to_string().parse::<FieldPath>().unwrap(), p);
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_not_crashed() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    check_text(&deep);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let mut set = ConfigSet::new();
    set.add_str("bomb.yaml", bomb);
    let d = &set.diagnostics()[0];
    assert_eq!(d.code.as_str(), "MESH0011");
    assert!(d.message.contains("nodes"), "{}", d.message);
}
