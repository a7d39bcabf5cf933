//! `mesh_config::store`: editing a configuration directory like `kubectl apply/delete`.
//!
//! Fixed inputs in temporary directories; every edit is checked byte for byte, and a
//! property test (fixed seed) checks that random sequences of applies and deletes always
//! leave a directory that loads to exactly the expected resources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{DR_A, key, read, se, snapshot, src, write};
use mesh_config::ConfigSet;
use mesh_config::model::{Kind, ResourceKey};
use mesh_config::store::{ConfigDir, Outcome, StoreError, documents};
use proptest::prelude::*;

#[test]
fn split_documents_preamble_markers_and_end_markers() {
    let text = "\
# preamble, comments only
# second line

--- # the first service
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one}

...
# between documents
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: Gateway
  metadata: {name: g, namespace: edge}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}";
    let docs = documents(text);
    assert_eq!(docs.len(), 6);
    let contents: Vec<&str> = docs.iter().map(|d| d.content_text(text)).collect();
    assert_eq!(contents[0], "# preamble, comments only\n# second line\n");
    assert!(!docs[0].has_content);
    assert!(docs[0].resources.is_empty());
    assert_eq!(docs[0].start_marker, None);

    assert_eq!(docs[1].line, 4);
    assert_eq!(
        docs[1].start_marker.as_ref().map(|m| &text[m.clone()]),
        Some("--- # the first service\n")
    );
    assert!(!docs[1].inline);
    assert_eq!(
        contents[1],
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: one}\n"
    );
    assert_eq!(
        docs[1].end_marker.as_ref().map(|m| &text[m.clone()]),
        Some("...\n")
    );
    assert_eq!(docs[1].resources.len(), 1);
    assert_eq!(
        docs[1].resources[0].key,
        key(Kind::ServiceEntry, "default", "one")
    );
    assert_eq!(docs[1].resources[0].line, 5);

    // After `...`: a comment-only stretch before the next `---`.
    assert_eq!(contents[2], "# between documents\n");
    assert!(!docs[2].has_content);

    // A List: one resource per item, with the item's line.
    assert_eq!(docs[3].resources.len(), 1);
    assert_eq!(docs[3].resources[0].key, key(Kind::Gateway, "edge", "g"));
    assert_eq!(docs[3].resources[0].list_item, Some(0));
    assert_eq!(docs[3].resources[0].line, 15);

    // An empty document, then another kind (no resource), without a final line feed.
    assert!(!docs[4].has_content);
    assert!(docs[5].has_content);
    assert!(docs[5].resources.is_empty());
    assert!(contents[5].ends_with("metadata: {name: d}"));

    // The documents cover the text exactly, in order.
    let mut pos = 0;
    for d in &docs {
        assert_eq!(d.range.start, pos);
        pos = d.range.end;
    }
    assert_eq!(pos, text.len());
}

#[test]
fn split_documents_crlf_and_inline_content() {
    let text = "a: 1\r\n\r\n---\r\nkind: Gateway\r\napiVersion: networking.istio.io/v1\r\nmetadata: {name: x}\r\n\r\n--- {apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: y}}\r\n";
    let docs = documents(text);
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].content_text(text), "a: 1\r\n");
    assert_eq!(
        docs[1].content_text(text),
        "kind: Gateway\r\napiVersion: networking.istio.io/v1\r\nmetadata: {name: x}\r\n"
    );
    assert_eq!(docs[1].resources[0].key, key(Kind::Gateway, "default", "x"));
    assert_eq!(docs[1].resources[0].line, 4);
    assert!(docs[2].inline);
    assert_eq!(
        docs[2].content_text(text),
        "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: y}}\r\n"
    );
    assert_eq!(docs[2].resources[0].key.name, "y");
    assert_eq!(docs[2].resources[0].line, 8);
    // Without an apiVersion, a document names no resource: its group is unknown.
    assert!(
        documents("kind: Gateway\nmetadata: {name: x}\n")[0]
            .resources
            .is_empty()
    );
    // `----` and ` ---` are not markers.
    assert_eq!(documents("a: |\n  x\n ---\n----: 1\n").len(), 1);
}

#[test]
fn replace_in_place_preserves_neighbours_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let head = "# Bookinfo services\n# keep me\n\n";
    let second = "--- # b, with a comment\n# about b\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b, labels: {v: \"1\"}}\nspec:\n  hosts: [b.example.com]   # odd   spacing\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n\n\n";
    let third = "---\n# c\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: c}\nspec: {host: b.example.com}\n";
    let original = format!("{head}{}\n{second}{third}", se("a", None, "1"));
    write(dir.path(), "services.yaml", &original);
    write(dir.path(), "other.yaml", DR_A);

    let new_a = se("a", None, "2");
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("new.yaml", &new_a)])
        .unwrap();
    assert_eq!(plan.changes().len(), 1);
    assert_eq!(plan.changes()[0].outcome, Outcome::Configured);
    assert_eq!(
        plan.changes()[0].to_string(),
        "serviceentry.networking.istio.io/a configured"
    );
    assert!(!plan.check().has_errors(), "{:?}", plan.check().diagnostics);
    assert_eq!(plan.file_changes().len(), 1);
    plan.write().unwrap();
    // The preamble is part of the first document's text (there is no `---` before it):
    // the incoming text has no comment of its own, so the comment block stays; the blank
    // line after the document and the neighbours stay too.
    assert_eq!(
        read(dir.path(), "services.yaml"),
        format!("{head}{new_a}\n{second}{third}")
    );
    assert_eq!(read(dir.path(), "other.yaml"), DR_A);

    // Replace the middle document: its `---` line (and comment) stay, and so does every
    // other byte, trailing blank lines included.
    let new_b = se("b", Some("default"), "9");
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("b.yaml", &new_b)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Configured);
    plan.write().unwrap();
    // Its comment (`# about b`) stays too.
    assert_eq!(
        read(dir.path(), "services.yaml"),
        format!("{head}{new_a}\n--- # b, with a comment\n# about b\n{new_b}\n\n{third}")
    );
    let set = ConfigSet::load(&[dir.path()]).unwrap();
    assert_eq!(set.resources().len(), 4);
    assert!(!set.check().has_errors());
}

#[test]
fn replace_keeps_crlf_bom_and_fixes_inline_documents() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = "\u{feff}# windows\r\n---\r\nkind: Gateway\r\napiVersion: networking.istio.io/v1\r\nmetadata: {name: g}\r\n--- {apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: h}}\r\n";
    write(dir.path(), "gw.yaml", crlf);
    let g = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selector: {app: x}}\n";
    let h = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: h}\nspec: {selector: {app: y}}\n";
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", &format!("{g}---\n{h}"))])
        .unwrap();
    let outcomes: Vec<Outcome> = plan.changes().iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, [Outcome::Configured, Outcome::Configured]);
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "gw.yaml"),
        format!(
            "\u{feff}# windows\r\n---\r\n{}---\r\n{}",
            g.replace('\n', "\r\n"),
            h.replace('\n', "\r\n")
        )
    );
    // The same text with line feeds only is unchanged.
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", g)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Unchanged);
}

#[test]
fn create_new_file_named_after_the_resource() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "other.yaml", DR_A);
    let text = "# reviews\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\n  namespace: prod\nspec:\n  hosts: [reviews.prod.svc.cluster.local]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: DNS\n\n\n";
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", text)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Created);
    assert_eq!(
        plan.changes()[0].path.as_deref(),
        Some(dir.path().join("serviceentry-prod-reviews.yaml").as_path())
    );
    assert!(!plan.check().has_errors());
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "serviceentry-prod-reviews.yaml"),
        text.trim_end().to_string() + "\n"
    );
    assert_eq!(read(dir.path(), "other.yaml"), DR_A);
    // No temporary file is left behind.
    let names: Vec<String> = snapshot(dir.path()).into_keys().collect();
    assert_eq!(names, ["other.yaml", "serviceentry-prod-reviews.yaml"]);

    // A file of that name that holds something else: the next free name.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "destinationrule-default-a.yaml", "# not mine\n");
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", DR_A)])
        .unwrap();
    plan.write().unwrap();
    assert_eq!(read(dir.path(), "destinationrule-default-a-2.yaml"), DR_A);
    assert_eq!(
        read(dir.path(), "destinationrule-default-a.yaml"),
        "# not mine\n"
    );
}

#[test]
fn unchanged_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("---\n{}\n---\n{DR_A}", se("a", None, "1"));
    write(dir.path(), "all.yaml", &file);
    // The same document, with CRLF and without the trailing blank line.
    let again = se("a", None, "1").replace('\n', "\r\n");
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("a.yaml", &again), src("dr.yaml", DR_A)])
        .unwrap();
    let outcomes: Vec<Outcome> = plan.changes().iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, [Outcome::Unchanged, Outcome::Unchanged]);
    assert!(plan.file_changes().is_empty());
    assert_eq!(
        plan.changes()[1].to_string(),
        "destinationrule.networking.istio.io/a unchanged"
    );
    plan.write().unwrap();
    assert_eq!(read(dir.path(), "all.yaml"), file);
}

#[test]
fn delete_removes_documents_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!("# header\n---\n{}---\n{DR_A}", se("a", None, "1"));
    write(dir.path(), "two.yaml", &two);
    write(dir.path(), "b.yaml", &se("b", None, "1"));
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&[
            key(Kind::DestinationRule, "default", "a"),
            key(Kind::ServiceEntry, "default", "b"),
            key(Kind::Gateway, "default", "nope"),
        ])
        .unwrap();
    let shown: Vec<String> = plan.changes().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        shown,
        [
            "destinationrule.networking.istio.io/a deleted",
            "serviceentry.networking.istio.io/b deleted",
            "gateway.networking.istio.io/nope not found",
        ]
    );
    assert_eq!(plan.changes()[2].outcome, Outcome::NotFound);
    assert!(!plan.check().has_errors());
    plan.write().unwrap();
    // The last document of b.yaml went: so did the file.
    assert!(!dir.path().join("b.yaml").exists());
    assert_eq!(
        read(dir.path(), "two.yaml"),
        format!("# header\n---\n{}", se("a", None, "1"))
    );
    // Deleting the last resource of a file that keeps only its comments removes it.
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&[key(Kind::ServiceEntry, "default", "a")])
        .unwrap();
    plan.write().unwrap();
    assert!(snapshot(dir.path()).is_empty());
}

#[test]
fn delete_keeps_other_kinds_and_warns_of_dangling_references() {
    let dir = tempfile::tempdir().unwrap();
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {host: a.example.com, subset: v1}\n";
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec:\n  host: a.example.com\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n";
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\n{vs}---\n{dr}---\n{deployment}", se("a", None, "1")),
    );
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&[key(Kind::DestinationRule, "default", "a")])
        .unwrap();
    let checked = plan.check();
    let e = checked.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!(e.code.as_str(), "IST0101");
    // The position is the one in the file as it is now.
    assert_eq!(e.line(), Some(16));
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "a.yaml"),
        format!("{}---\n{vs}---\n{deployment}", se("a", None, "1"))
    );
}

#[test]
fn list_items_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n  metadata: {name: a}\n  spec: {host: a.example.com}\n";
    write(dir.path(), "list.yaml", list);
    let d = ConfigDir::open(dir.path()).unwrap();
    let err = d.plan_apply(&[src("in.yaml", DR_A)]).unwrap_err();
    assert!(
        matches!(&err, StoreError::ListItem { line: 4, path, .. } if path.ends_with("list.yaml")),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("list.yaml:4"), "{msg}");
    assert!(msg.contains("DestinationRule default/a"), "{msg}");
    let err = d
        .plan_delete(&[key(Kind::DestinationRule, "default", "a")])
        .unwrap_err();
    assert!(matches!(err, StoreError::ListItem { line: 4, .. }));
    assert_eq!(read(dir.path(), "list.yaml"), list);

    // An incoming List is applied item by item, each to a file of its own.
    let dir = tempfile::tempdir().unwrap();
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("list.yaml", list)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Created);
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "destinationrule-default-a.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a.example.com}\n"
    );
}

#[test]
fn an_apply_that_introduces_an_error_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &se("a", None, "1"));
    write(dir.path(), "dr.yaml", DR_A);
    let before = snapshot(dir.path());
    // A VirtualService to a subset no DestinationRule defines.
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {host: a.example.com, subset: v9}\n";
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("bad.yaml", bad)])
        .unwrap();
    let checked = plan.check();
    assert!(checked.has_errors());
    let e = checked.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!(e.code.as_str(), "IST0101");
    // Located in the file the user applied, not in the directory.
    assert_eq!(e.file(), Some("bad.yaml"));
    assert_eq!(e.line(), Some(8));
    assert_eq!(snapshot(dir.path()), before);

    // An incoming document that does not load is an error too.
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("typo.yaml", &DR_A.replace("host:", "hots:"))])
        .unwrap();
    let checked = plan.check();
    let e = checked.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!((e.file(), e.line()), (Some("typo.yaml"), Some(6)));
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_resource_applied_twice_is_checked_once() {
    let dir = tempfile::tempdir().unwrap();
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[
            src("one.yaml", &se("a", None, "1")),
            src("two.yaml", &se("a", None, "2")),
        ])
        .unwrap();
    let outcomes: Vec<Outcome> = plan.changes().iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, [Outcome::Created, Outcome::Configured]);
    let checked = plan.check();
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "serviceentry-default-a.yaml"),
        se("a", None, "2")
    );
}

#[test]
fn write_refuses_a_file_changed_since_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &se("a", None, "1"));
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", &se("a", None, "2"))])
        .unwrap();
    write(dir.path(), "a.yaml", "# edited by hand\n");
    let err = plan.write().unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(read(dir.path(), "a.yaml"), "# edited by hand\n");
}

#[test]
fn list_gives_each_resource_with_its_file_line_and_text() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "x.yaml",
        &format!(
            "# top\n---\n{}---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n    metadata: {{name: b, namespace: prod}}\n    spec: {{host: b.example.com}}\n",
            se("a", None, "1")
        ),
    );
    let d = ConfigDir::open(dir.path()).unwrap();
    let all = d.list(None, None);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].resource.name(), "a");
    assert_eq!(all[0].line, 3);
    assert_eq!(all[0].text, se("a", None, "1"));
    assert_eq!(all[1].resource.namespace(), "prod");
    assert_eq!(all[1].line, 14);
    assert_eq!(
        all[1].text,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: prod}\nspec: {host: b.example.com}\n"
    );
    assert!(all[1].path.ends_with("x.yaml"));
    assert_eq!(
        d.list(Some(Kind::DestinationRule), Some("default")).len(),
        0
    );
    assert_eq!(d.list(Some(Kind::ServiceEntry), Some("default")).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Property: random applies and deletes always leave the expected set of resources.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Apply {
        kind: usize,
        name: usize,
        version: u8,
        style: u8,
    },
    Delete {
        kind: usize,
        name: usize,
    },
}

const KINDS: [Kind; 3] = [
    Kind::ServiceEntry,
    Kind::DestinationRule,
    Kind::PeerAuthentication,
];
const NAMES: [&str; 3] = ["a", "b", "c"];

fn resource_text(kind: Kind, name: &str, version: u8, style: u8) -> String {
    let spec = match kind {
        Kind::ServiceEntry => format!(
            "spec:\n  hosts: [{name}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        ),
        Kind::DestinationRule => format!("spec:\n  host: {name}.example.com\n"),
        _ => "spec:\n  mtls: {mode: STRICT}\n".to_string(),
    };
    let api = if kind == Kind::PeerAuthentication {
        "security.istio.io/v1"
    } else {
        "networking.istio.io/v1"
    };
    let body = format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  labels: {{version: \"{version}\"}}\n{spec}"
    );
    match style {
        0 => body,
        1 => format!("# {kind} {name}\n{body}"),
        2 => format!("---\n{body}\n\n"),
        _ => format!("--- # {name}\n{}...\n", body.replace('\n', "\r\n")),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3usize, 0..3u8, 0..4u8)
            .prop_map(|(kind, name, version, style)| Op::Apply { kind, name, version, style }),
        1 => (0..3usize, 0..3usize).prop_map(|(kind, name)| Op::Delete { kind, name }),
    ]
}

/// The comment lines a document's text starts with.
fn comment_block(text: &str) -> String {
    text.split_inclusive('\n')
        .take_while(|l| l.starts_with('#'))
        .collect()
}

/// What the directory must hold: key → version label.
fn loaded(dir: &Path) -> BTreeMap<ResourceKey, String> {
    let set = ConfigSet::load(&[dir]).unwrap();
    let checked = set.check();
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    set.resources()
        .iter()
        .map(|r| {
            (
                r.key(),
                r.meta().labels.get("version").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

const SEED_FILE: &str = "\
# Seed: hand-written, with neighbours that must survive.
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: a
  labels: {version: \"0\"}
spec:
  hosts: [a.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

proptest! {
    // A fixed seed: the same cases on every run and every machine.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7374_6f72),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_applies_and_deletes_load_to_the_expected_keys(ops in prop::collection::vec(op(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "seed.yaml", SEED_FILE);
        let mut expected: BTreeMap<ResourceKey, String> = BTreeMap::new();
        expected.insert(key(Kind::ServiceEntry, "default", "a"), "0".into());
        let mut last_text: BTreeMap<ResourceKey, String> = BTreeMap::new();
        // The seed's document is the plain style of version 0.
        last_text.insert(key(Kind::ServiceEntry, "default", "a"), resource_text(Kind::ServiceEntry, "a", 0, 0));
        for op in ops {
            let d = ConfigDir::open(dir.path()).unwrap();
            match op {
                Op::Apply { kind, name, version, style } => {
                    let (kind, name) = (KINDS[kind], NAMES[name]);
                    let k = key(kind, "default", name);
                    let text = resource_text(kind, name, version, style);
                    let plan = d.plan_apply(&[src("in.yaml", &text)]).unwrap();
                    let checked = plan.check();
                    prop_assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
                    let normalized = mesh_config::store::documents(&text)
                        .iter()
                        .find(|doc| doc.has_content)
                        .map(|doc| doc.content_text(&text).replace("\r\n", "\n"))
                        .unwrap();
                    // A replaced document keeps its leading comments when the incoming
                    // text has none.
                    let effective = match last_text.get(&k) {
                        Some(old) if !normalized.starts_with('#') => {
                            format!("{}{normalized}", comment_block(old))
                        }
                        _ => normalized,
                    };
                    let want = if !expected.contains_key(&k) {
                        Outcome::Created
                    } else if last_text.get(&k) == Some(&effective) {
                        Outcome::Unchanged
                    } else {
                        Outcome::Configured
                    };
                    prop_assert_eq!(plan.changes()[0].outcome, want);
                    plan.write().unwrap();
                    expected.insert(k.clone(), version.to_string());
                    last_text.insert(k, effective);
                }
                Op::Delete { kind, name } => {
                    let k = key(KINDS[kind], "default", NAMES[name]);
                    let plan = d.plan_delete(std::slice::from_ref(&k)).unwrap();
                    let want = if expected.remove(&k).is_some() {
                        Outcome::Deleted
                    } else {
                        Outcome::NotFound
                    };
                    last_text.remove(&k);
                    prop_assert_eq!(plan.changes()[0].outcome, want);
                    plan.write().unwrap();
                }
            }
            prop_assert_eq!(loaded(dir.path()), expected.clone());
            // The Deployment next to the seed resource is never lost, whatever happens
            // to its neighbour.
            let seed = read(dir.path(), "seed.yaml");
            prop_assert!(seed.starts_with("# Seed: hand-written, with neighbours that must survive.\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\n"), "{}", seed);
            // No temporary file is ever left.
            prop_assert!(snapshot(dir.path()).keys().all(|n| n.ends_with(".yaml")));
        }
    }
}

const SOUP: &[&str] = &[
    "---\n",
    "---\n",
    "--- # marker with a comment\n",
    "---\r\n",
    "...\n",
    "# a comment\n",
    "\n",
    "  \r\n",
    "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selector: {app: x}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n",
    "apiVersion: networking.istio.io/v1\r\nkind: Gateway\r\nmetadata: {name: h, namespace: edge}\r\nspec: {selector: {app: x}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\r\n",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: g}\n",
    "--- {apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: g}}\n",
    "x: |\n  ---not a marker\n",
    "key: [unclosed\n",
    "apiVersion: networking.istio.io/v1\nkind: Gateway",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x736f_7570),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever a file holds, its documents tile it, and an apply into it either fails
    /// cleanly or leaves a file where the applied resource loads.
    #[test]
    fn any_file_splits_and_takes_an_apply(parts in prop::collection::vec(0..SOUP.len(), 0..12)) {
        let text: String = parts.iter().map(|&i| SOUP[i]).collect();
        let docs = documents(&text);
        let mut pos = 0;
        for d in &docs {
            prop_assert_eq!(d.range.start, pos);
            prop_assert!(d.content.start >= d.range.start && d.content.end <= d.range.end);
            prop_assert!(d.content.start <= d.content.end);
            pos = d.range.end;
        }
        prop_assert_eq!(pos, text.len());

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "soup.yaml", &text);
        let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, labels: {applied: \"yes\"}}\nspec: {selector: {app: y}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n";
        let Ok(plan) = ConfigDir::open(dir.path()).unwrap().plan_apply(&[src("g.yaml", gateway)]) else {
            return Ok(());
        };
        if plan.check().has_errors() {
            return Ok(());
        }
        plan.write().unwrap();
        let set = ConfigSet::load(&[dir.path()]).unwrap();
        let g = set.get(&key(Kind::Gateway, "default", "g")).unwrap();
        prop_assert_eq!(g.meta().labels.get("applied").map(String::as_str), Some("yes"));
        prop_assert!(!set.check().has_errors());
    }
}

// ---------------------------------------------------------------------------------------
// Writes and comments.
// ---------------------------------------------------------------------------------------

/// A write that fails before anything is renamed (here: a temporary file whose name is
/// too long for the filesystem, next to a file name that is not) leaves the directory
/// as it was, without temporary files, even when other files of the plan were staged.
#[test]
fn a_write_that_fails_leaves_the_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", DR_A);
    let before = snapshot(dir.path());
    // `serviceentry-default-<name>.yaml`: 246 bytes, a legal file name; its temporary
    // file's name is longer than 255 bytes.
    let long = [
        "x".repeat(54),
        "y".repeat(54),
        "z".repeat(54),
        "w".repeat(57),
    ]
    .join(".");
    assert_eq!(long.len(), 222);
    let incoming = format!(
        "{}---\n{}",
        DR_A.replace("a.example.com", "b.example.com"),
        se(&long, None, "1")
    );
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", &incoming)])
        .unwrap();
    let outcomes: Vec<Outcome> = plan.changes().iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, [Outcome::Configured, Outcome::Created]);
    assert_eq!(
        plan.file_changes()[1]
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .len(),
        248
    );
    let err = plan.write().unwrap_err();
    assert!(matches!(err, StoreError::Write { .. }), "{err:?}");
    assert_eq!(snapshot(dir.path()), before);
}

/// A replaced document keeps the comments above it when the incoming text has none (as
/// someone editing the file by hand expects), and applying the same text again is
/// `unchanged`; an incoming text with comments of its own replaces them.
#[test]
fn a_replaced_document_keeps_its_comments_unless_the_new_text_has_some() {
    let dir = tempfile::tempdir().unwrap();
    let b = "--- # b\n# Owned by team B.\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {host: b.example.com}\n";
    write(
        dir.path(),
        "rules.yaml",
        &format!("# Rules.\n# Owned by team A.\n\n{DR_A}{b}"),
    );
    let new_a = DR_A.replace("a.example.com", "a2.example.com");
    let new_b = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {host: b2.example.com}\n";
    let apply = |text: &str| {
        let plan = ConfigDir::open(dir.path())
            .unwrap()
            .plan_apply(&[src("in.yaml", text)])
            .unwrap();
        plan.write().unwrap();
        plan.changes().iter().map(|c| c.outcome).collect::<Vec<_>>()
    };
    assert_eq!(
        apply(&format!("{new_a}---\n{new_b}")),
        [Outcome::Configured, Outcome::Configured]
    );
    assert_eq!(
        read(dir.path(), "rules.yaml"),
        format!("# Rules.\n# Owned by team A.\n\n{new_a}--- # b\n# Owned by team B.\n{new_b}")
    );
    // Kept comments are not a change.
    assert_eq!(
        apply(&format!("{new_a}---\n{new_b}")),
        [Outcome::Unchanged, Outcome::Unchanged]
    );
    // Comments of its own replace them.
    assert_eq!(
        apply(&format!("# New owner.\n{new_a}")),
        [Outcome::Configured]
    );
    assert!(
        read(dir.path(), "rules.yaml").starts_with(&format!("# New owner.\n{new_a}--- # b\n")),
        "{}",
        read(dir.path(), "rules.yaml")
    );

    // In a file with CRLF line breaks, the comments keep theirs.
    write(
        dir.path(),
        "rules.yaml",
        &format!("# Kept.\r\n{}", DR_A.replace('\n', "\r\n")),
    );
    assert_eq!(apply(&new_a), [Outcome::Configured]);
    assert_eq!(
        read(dir.path(), "rules.yaml"),
        format!("# Kept.\r\n{}", new_a.replace('\n', "\r\n"))
    );
}
