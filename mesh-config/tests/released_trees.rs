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
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: one}\nspec:\n  hosts: [one.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n  metadata: {name: two, labels: {app: two}}\n  spec: {address: 10.0.0.2}\n- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n  metadata: {name: three}\n  spec:\n    address: 10.0.0.3\n    ports: {http: 8080}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: four}\nspec:\n  template: {ports: {http: 9080}}\n  probe: {httpGet: {path: /ready, port: 9080}}\n",
    );
    if corpus {
        // A document with a duplicate key (read, not trusted), empty documents, a good
        // one, then a syntax error that ends the stream.
        set.add_str(
            "broken.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: dup}\nspec:\n  hosts: [dup.example.com]\n  hosts: [again.example.com]\n---\n---\n\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: after-broken}\nspec:\n  hosts: [after.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\nkind: [unclosed\n",
        );
        assert!(
            set.resources()
                .iter()
                .any(|r| r.name() == "after-broken" && r.origin().document_index == 3),
            "the resource after the broken document is read"
        );
    }
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
        assert!(r.origin().trees.rereads() >= 1);
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
}

/// Resources checked for the first time with their trees released (validation then reads
/// their sources again) get what resources checked with them get.
#[test]
fn a_check_reads_released_sources_again() {
    let diagnostics = |set: &ConfigSet| -> Vec<String> {
        set.check().diagnostics.iter().map(|d| d.short()).collect()
    };
    let kept = set(false);
    let released = set(false);
    for r in released.resources() {
        r.origin().trees.release();
    }
    let expected = diagnostics(&kept);
    assert_eq!(diagnostics(&released), expected);
    assert!(
        expected.iter().any(|d| d.contains("MESH0120")),
        "the configuration has a warning that reads the tree: {expected:?}"
    );
}
