//! `mesh_config::store`: resources are identified by their API group as well as their
//! kind, namespace and name — an Istio `Gateway` and a Gateway API `Gateway` of the same
//! name are two resources, and an edit of one never touches the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{key, read, snapshot, src, write};
use mesh_config::model::Kind;
use mesh_config::store::{self, ConfigDir, Outcome};

#[test]
fn mesh_config_is_named_by_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec: {trustDomain: example.org}\n";
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("mesh.yaml", mesh)])
        .unwrap();
    assert!(!plan.check().has_errors(), "{:?}", plan.check().diagnostics);
    assert_eq!(
        plan.changes()[0].to_string(),
        "meshconfig.mesh.rs/mesh created"
    );
    plan.write().unwrap();
    assert_eq!(read(dir.path(), "meshconfig-istio-system-mesh.yaml"), mesh);
}

const ISTIO_GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
";

/// Istio's samples/bookinfo/gateway-api/bookinfo-gateway.yaml (abridged): a Kubernetes
/// Gateway API `Gateway` with the same name as the Istio Gateway.
const GATEWAY_API: &str = include_str!("fixtures/gateway-api-bookinfo-gateway.yaml");

/// `kubectl delete -f gateway-api/bookinfo-gateway.yaml` never touches
/// `gateways.networking.istio.io`: the file names no resource of the mesh, and says which
/// resources it names that the mesh has no type for.
#[test]
fn deleting_a_gateway_api_gateway_leaves_the_istio_gateway_alone() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gateway.yaml", ISTIO_GATEWAY);
    let source = src("gateway-api.yaml", GATEWAY_API);
    let (keys, errors) = store::resource_keys(&source);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(keys.is_empty(), "{keys:?}");
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&keys)
        .unwrap();
    plan.write().unwrap();
    assert_eq!(read(dir.path(), "gateway.yaml"), ISTIO_GATEWAY);

    let found = store::source_keys(&source);
    assert!(found.keys.is_empty());
    assert!(found.yaml_errors.is_empty());
    let no_matches: Vec<(String, &str, &str, u32, Option<Kind>)> = found
        .no_matches
        .iter()
        .map(|n| {
            (
                n.to_string(),
                n.kind.as_str(),
                n.name.as_str(),
                n.line,
                n.mesh_kind,
            )
        })
        .collect();
    assert_eq!(
        no_matches,
        [
            (
                "no matches for kind \"Gateway\" in version \"gateway.networking.k8s.io/v1\""
                    .to_string(),
                "Gateway",
                "bookinfo-gateway",
                1,
                Some(Kind::Gateway)
            ),
            (
                "no matches for kind \"HTTPRoute\" in version \"gateway.networking.k8s.io/v1\""
                    .to_string(),
                "HTTPRoute",
                "bookinfo",
                13,
                None
            ),
        ]
    );

    // The other way round: deleting the Istio Gateway leaves a Gateway API one alone.
    write(dir.path(), "gateway-api.yaml", GATEWAY_API);
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&[key(Kind::Gateway, "default", "bookinfo-gateway")])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Deleted);
    plan.write().unwrap();
    assert_eq!(
        snapshot(dir.path()).into_keys().collect::<Vec<_>>(),
        ["gateway-api.yaml"]
    );
    assert_eq!(read(dir.path(), "gateway-api.yaml"), GATEWAY_API);
}

/// On apply, the Gateway API document is not the mesh's: nothing is planned for it (not
/// `configured` over the Istio Gateway), and the check refuses it.
#[test]
fn applying_a_gateway_api_gateway_does_not_plan_to_replace_the_istio_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gateway.yaml", ISTIO_GATEWAY);
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("gateway-api.yaml", GATEWAY_API)])
        .unwrap();
    assert!(plan.changes().is_empty(), "{:?}", plan.changes());
    assert!(plan.file_changes().is_empty());
    let checked = plan.check();
    assert!(
        checked.diagnostics.iter().any(|d| d.is_error()
            && d.message
                .contains("not served under apiVersion `gateway.networking.k8s.io/v1`")),
        "{:?}",
        checked.diagnostics
    );

    // An Istio Gateway applied next to a Gateway API one of the same name is another
    // resource: it gets a file of its own.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gateway-api.yaml", GATEWAY_API);
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("gateway.yaml", ISTIO_GATEWAY)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Created);
    assert!(
        plan.file_changes()
            .iter()
            .all(|f| f.path.ends_with("gateway-default-bookinfo-gateway.yaml"))
    );
}

/// Identity is the API group, not the version: a document of the kind's group under a
/// version the mesh does not serve (a typo) is the same resource, so an apply repairs it
/// in place and a delete removes it; but such a document, incoming, is neither applied
/// nor deleted (`no matches for kind`).
#[test]
fn another_version_of_the_group_is_the_same_resource_but_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let typo = ISTIO_GATEWAY.replace("networking.istio.io/v1", "networking.istio.io/v2");
    write(dir.path(), "gateway.yaml", &format!("# edge\n{typo}"));
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("in.yaml", ISTIO_GATEWAY)])
        .unwrap();
    assert_eq!(plan.changes()[0].outcome, Outcome::Configured);
    assert!(!plan.check().has_errors(), "{:?}", plan.check().diagnostics);
    plan.write().unwrap();
    assert_eq!(
        read(dir.path(), "gateway.yaml"),
        format!("# edge\n{ISTIO_GATEWAY}")
    );

    // Incoming, the typo is applied nowhere and deletes nothing.
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_apply(&[src("typo.yaml", &typo)])
        .unwrap();
    assert!(plan.changes().is_empty(), "{:?}", plan.changes());
    assert!(plan.check().has_errors());
    let found = store::source_keys(&src("typo.yaml", &typo));
    assert!(found.keys.is_empty());
    assert_eq!(found.no_matches.len(), 1);
    assert_eq!(found.no_matches[0].mesh_kind, Some(Kind::Gateway));
    assert_eq!(
        found.no_matches[0].to_string(),
        "no matches for kind \"Gateway\" in version \"networking.istio.io/v2\""
    );

    // A delete of the resource removes the typo'd document as well.
    write(dir.path(), "typo.yaml", &typo.replace("8080", "9090"));
    let plan = ConfigDir::open(dir.path())
        .unwrap()
        .plan_delete(&[key(Kind::Gateway, "default", "bookinfo-gateway")])
        .unwrap();
    plan.write().unwrap();
    assert!(snapshot(dir.path()).is_empty());
}
