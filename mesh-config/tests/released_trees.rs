//! A configuration's YAML trees dropped once it is compiled ([`Trees::release`],
//! [`Snapshot::release_trees`]): every position a diagnostic could name is the same
//! afterwards, read from the text again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_config::ConfigSet;
use mesh_config::FieldPath;
use mesh_config::model::{AnyResource, Origin};
use mesh_config::yaml::{Node, Value};

/// Every path of `node`'s tree (relative to it), and a few that are not written.
fn paths(node: &Node, at: FieldPath, out: &mut Vec<FieldPath>) {
    out.push(at.clone());
    match &node.value {
        Value::Map(entries) => {
            out.push(at.clone().key("notWritten"));
            for e in entries {
                paths(&e.value, at.clone().key(e.key.as_str()), out);
            }
        }
        Value::Seq(items) => {
            out.push(at.clone().index(items.len() + 3));
            for (i, item) in items.iter().enumerate() {
                paths(item, at.clone().index(i), out);
            }
        }
        _ => {}
    }
}

/// What a diagnostic can ask of an origin, for every path of its resource.
fn positions(origin: &Origin) -> Vec<String> {
    let mut all = Vec::new();
    origin.with_node(|node| paths(node, FieldPath::root(), &mut all));
    let mut out = vec![format!("{:?}", origin.location())];
    for p in &all {
        out.push(format!(
            "{p} {:?} {:?} {}",
            origin.locate(p),
            origin.locate_key(p),
            origin.has(p)
        ));
    }
    out
}

/// Bookinfo's configuration, with the corpus of valid files (each a configuration of its
/// own: together they define some resources twice) when `corpus`.
fn set(corpus: bool) -> ConfigSet {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut dirs = vec![format!("{root}/examples/bookinfo/config")];
    if corpus {
        dirs.push(format!("{root}/mesh-config/tests/valid"));
    }
    let mut set = ConfigSet::load(&dirs).unwrap();
    // Several documents in one file, a `List` among them: one parse gives all their trees.
    set.add_str(
        "several.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: one}\nspec:\n  hosts: [one.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n  metadata: {name: two, labels: {app: two}}\n  spec: {address: 10.0.0.2}\n- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n  metadata: {name: three}\n  spec:\n    address: 10.0.0.3\n    ports: {http: 8080}\n",
    );
    assert!(set.resources().len() >= 20, "{}", set.resources().len());
    set
}

#[test]
fn every_position_is_the_same_once_the_trees_are_released() {
    let set = set(true);
    let before: Vec<Vec<String>> = set
        .resources()
        .iter()
        .map(|r| positions(r.origin()))
        .collect();
    for r in set.resources() {
        // Released once per source, whichever of its resources asks.
        r.origin().trees.release();
        assert!(!r.origin().trees.is_kept());
    }
    for (r, before) in set.resources().iter().zip(&before) {
        assert!(!r.origin().trees.is_kept(), "{}", r.key());
        assert_eq!(positions(r.origin()), *before, "{}", r.key());
        // Read again, the trees are kept until released anew.
        assert!(r.origin().trees.is_kept());
        assert!(r.origin().trees.release());
        assert!(!r.origin().trees.release());
    }
}

#[test]
fn a_snapshot_releases_the_trees_of_every_resource() {
    let set = set(false);
    let checked = set.check();
    let snapshot = checked
        .snapshot
        .clone()
        .unwrap_or_else(|| panic!("{}", checked.summary()));
    assert!(
        snapshot
            .resources()
            .iter()
            .all(|r| r.origin().trees.is_kept())
    );
    let diagnostics: Vec<String> = set.check().diagnostics.iter().map(|d| d.short()).collect();
    snapshot.release_trees();
    assert!(
        snapshot
            .resources()
            .iter()
            .all(|r| !r.origin().trees.is_kept()),
        "every resource, WorkloadEntries included"
    );
    assert!(
        snapshot
            .resources()
            .iter()
            .any(|r| matches!(r, AnyResource::WorkloadEntry(_)))
    );
    // A check of the same resources again reads their sources again, to the same result.
    let again: Vec<String> = set.check().diagnostics.iter().map(|d| d.short()).collect();
    assert_eq!(again, diagnostics);
    assert!(
        !diagnostics.is_empty(),
        "the corpus has warnings to compare"
    );
}
