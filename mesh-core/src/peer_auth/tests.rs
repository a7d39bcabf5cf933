//! Table-driven: each case is a set of PeerAuthentications, a workload, and the modes
//! Istio's `ComposePeerAuthentication` gives it, with the policy that decided each.

use mesh_config::model::security::{MtlsMode as Written, MutualTls};

use super::*;
use crate::CompiledMesh;
use crate::workload::{Role, Workload, WorkloadView};

use MtlsMode::{Disable, Permissive, Strict};

const ROOT: &str = "istio-system";
const HTTPBIN: &[(&str, &str)] = &[("app", "httpbin"), ("version", "v1")];

const STRICT: &str = "{mtls: {mode: STRICT}}";
const PERMISSIVE: &str = "{mtls: {mode: PERMISSIVE}}";
const DISABLE: &str = "{mtls: {mode: DISABLE}}";
const UNSET: &str = "{mtls: {mode: UNSET}}";

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `"<scope> <ns>/<name>"`, with `[<port>]` when a `portLevelMtls` entry decided.
fn describe(s: Option<&ModeSource>) -> Option<String> {
    s.map(|s| {
        let port = s.port.map(|p| format!("[{p}]")).unwrap_or_default();
        format!("{} {}{port}", s.scope, s.policy)
    })
}

struct Case {
    name: &'static str,
    /// `rootNamespace` of a MeshConfig, when not the default.
    root: Option<&'static str>,
    /// (namespace, name, spec).
    policies: &'static [(&'static str, &'static str, &'static str)],
    /// Per-port modes added to the named policy after validation (which rejects them
    /// without a selector), to check that composition ignores them too.
    inject: &'static [(&'static str, u32, Written)],
    ns: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// The mode of ports without a port-level mode, and what decided it.
    default: (MtlsMode, Option<&'static str>),
    /// (port, mode, what decided it).
    ports: &'static [(u16, MtlsMode, Option<&'static str>)],
}

const fn case(name: &'static str) -> Case {
    Case {
        name,
        root: None,
        policies: &[],
        inject: &[],
        ns: "foo",
        labels: HTTPBIN,
        default: (Permissive, None),
        ports: &[],
    }
}

const CASES: &[Case] = &[
    Case {
        ports: &[(8080, Permissive, None)],
        ..case("no policy: PERMISSIVE")
    },
    Case {
        policies: &[(ROOT, "default", STRICT)],
        default: (Strict, Some("mesh istio-system/default")),
        ports: &[(8080, Strict, Some("mesh istio-system/default"))],
        ..case("mesh STRICT")
    },
    Case {
        policies: &[(ROOT, "default", DISABLE)],
        default: (Disable, Some("mesh istio-system/default")),
        ..case("mesh DISABLE")
    },
    Case {
        policies: &[(ROOT, "default", PERMISSIVE)],
        default: (Permissive, Some("mesh istio-system/default")),
        ..case("mesh PERMISSIVE")
    },
    Case {
        policies: &[(ROOT, "default", UNSET)],
        default: (Permissive, None),
        ..case("mesh UNSET: Istio's default")
    },
    Case {
        policies: &[(ROOT, "default", "{}")],
        default: (Permissive, None),
        ..case("mesh without mtls: Istio's default")
    },
    Case {
        policies: &[(
            ROOT,
            "default",
            "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}",
        )],
        default: (Strict, Some("mesh istio-system/default")),
        ..case("empty matchLabels in the root namespace: mesh-wide")
    },
    Case {
        policies: &[(ROOT, "default", STRICT), ("foo", "default", PERMISSIVE)],
        default: (Permissive, Some("namespace foo/default")),
        ..case("namespace overrides mesh")
    },
    Case {
        policies: &[("foo", "default", DISABLE), (ROOT, "default", STRICT)],
        default: (Disable, Some("namespace foo/default")),
        ..case("namespace DISABLE overrides mesh STRICT, whatever the order")
    },
    Case {
        policies: &[(ROOT, "default", STRICT), ("foo", "default", UNSET)],
        default: (Strict, Some("mesh istio-system/default")),
        ..case("namespace UNSET inherits mesh")
    },
    Case {
        policies: &[("foo", "default", "{}")],
        default: (Permissive, None),
        ..case("namespace without mtls and no mesh policy: Istio's default")
    },
    Case {
        policies: &[("foo", "default", STRICT)],
        default: (Strict, Some("namespace foo/default")),
        ..case("namespace without mesh")
    },
    Case {
        policies: &[("bar", "default", STRICT), (ROOT, "default", DISABLE)],
        default: (Disable, Some("mesh istio-system/default")),
        ..case("namespace policy of another namespace does not apply")
    },
    Case {
        policies: &[(
            "foo",
            "all",
            "{selector: {matchLabels: {}}, mtls: {mode: DISABLE}}",
        )],
        default: (Disable, Some("namespace foo/all")),
        ..case("empty matchLabels: namespace-wide")
    },
    Case {
        policies: &[
            ("foo", "default", DISABLE),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}",
            ),
        ],
        default: (Strict, Some("workload foo/httpbin")),
        ..case("workload overrides namespace")
    },
    Case {
        policies: &[
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: PERMISSIVE}}",
            ),
            (ROOT, "default", STRICT),
        ],
        default: (Permissive, Some("workload foo/httpbin")),
        ..case("workload overrides mesh")
    },
    Case {
        policies: &[
            ("foo", "default", STRICT),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: UNSET}}",
            ),
        ],
        default: (Strict, Some("namespace foo/default")),
        ..case("workload UNSET inherits namespace")
    },
    Case {
        policies: &[
            (ROOT, "default", DISABLE),
            ("foo", "default", UNSET),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}}",
            ),
        ],
        default: (Disable, Some("mesh istio-system/default")),
        ..case("workload without mtls and namespace UNSET inherit mesh")
    },
    Case {
        policies: &[
            ("foo", "default", STRICT),
            (
                "foo",
                "other",
                "{selector: {matchLabels: {app: other}}, mtls: {mode: DISABLE}}",
            ),
        ],
        default: (Strict, Some("namespace foo/default")),
        ..case("selector not matching")
    },
    Case {
        policies: &[
            ("foo", "default", STRICT),
            (
                "foo",
                "v2",
                "{selector: {matchLabels: {app: httpbin, version: v2}}, mtls: {mode: DISABLE}}",
            ),
        ],
        default: (Strict, Some("namespace foo/default")),
        ..case("selector needs every label")
    },
    Case {
        policies: &[(
            "foo",
            "v1",
            "{selector: {matchLabels: {version: v1}}, mtls: {mode: DISABLE}}",
        )],
        default: (Disable, Some("workload foo/v1")),
        ..case("selector matching a subset of the labels")
    },
    Case {
        policies: &[(
            "foo",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}",
        )],
        labels: &[],
        default: (Permissive, None),
        ..case("workload without labels is not selected")
    },
    Case {
        policies: &[(
            "bar",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}",
        )],
        default: (Permissive, None),
        ..case("workload policy of another namespace does not apply")
    },
    Case {
        policies: &[(
            ROOT,
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}",
        )],
        default: (Permissive, None),
        ..case("root-namespace policy with a selector: ignored in other namespaces")
    },
    Case {
        policies: &[
            (ROOT, "default", DISABLE),
            (
                ROOT,
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}",
            ),
        ],
        ns: ROOT,
        default: (Disable, Some("mesh istio-system/default")),
        ports: &[(8080, Disable, Some("mesh istio-system/default"))],
        ..case("root-namespace policy with a selector: ignored in the root namespace too")
    },
    Case {
        policies: &[(ROOT, "default", STRICT), ("foo", "default", DISABLE)],
        ns: ROOT,
        default: (Strict, Some("mesh istio-system/default")),
        ..case("mesh policy applies to root-namespace workloads")
    },
    Case {
        policies: &[(ROOT, "a", DISABLE), (ROOT, "b", STRICT)],
        ns: ROOT,
        default: (Disable, Some("mesh istio-system/a")),
        ..case("root-namespace workload: its namespace policy is the mesh's, the first")
    },
    Case {
        policies: &[(ROOT, "b", STRICT), (ROOT, "a", DISABLE)],
        default: (Strict, Some("mesh istio-system/b")),
        ..case("two mesh policies: the first loaded")
    },
    Case {
        policies: &[("foo", "b", STRICT), ("foo", "a", DISABLE)],
        default: (Strict, Some("namespace foo/b")),
        ..case("two namespace policies: the first loaded, not the first by name")
    },
    Case {
        policies: &[("foo", "a", DISABLE), ("foo", "b", STRICT)],
        default: (Disable, Some("namespace foo/a")),
        ..case("two namespace policies, the other order")
    },
    Case {
        policies: &[
            (ROOT, "default", DISABLE),
            ("foo", "a", UNSET),
            ("foo", "b", STRICT),
        ],
        default: (Disable, Some("mesh istio-system/default")),
        ..case("the first namespace policy wins even when UNSET: it inherits")
    },
    Case {
        policies: &[
            (
                "foo",
                "w1",
                "{selector: {matchLabels: {app: other}}, mtls: {mode: DISABLE}}",
            ),
            (
                "foo",
                "w2",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}",
            ),
            (
                "foo",
                "w3",
                "{selector: {matchLabels: {version: v1}}, mtls: {mode: PERMISSIVE}}",
            ),
        ],
        default: (Strict, Some("workload foo/w2")),
        ..case("two matching workload policies: the first that matches")
    },
    Case {
        policies: &[
            ("foo", "default", STRICT),
            ("foo", "w1", "{selector: {matchLabels: {app: httpbin}}}"),
            (
                "foo",
                "w2",
                "{selector: {matchLabels: {version: v1}}, mtls: {mode: DISABLE}, portLevelMtls: {8080: {mode: DISABLE}}}",
            ),
        ],
        default: (Strict, Some("namespace foo/default")),
        ports: &[(8080, Strict, Some("namespace foo/default"))],
        ..case("the first workload policy wins even without mtls; the second's ports ignored")
    },
    Case {
        policies: &[(
            "foo",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: PERMISSIVE}}}",
        )],
        default: (Strict, Some("workload foo/httpbin")),
        ports: &[
            (8080, Disable, Some("workload foo/httpbin[8080]")),
            (9090, Permissive, Some("workload foo/httpbin[9090]")),
            (7070, Strict, Some("workload foo/httpbin")),
        ],
        ..case("port-level modes override the workload's")
    },
    Case {
        policies: &[
            ("foo", "default", DISABLE),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {8080: {mode: UNSET}, 9090: {}, 7070: {mode: STRICT}}}",
            ),
        ],
        default: (Disable, Some("namespace foo/default")),
        ports: &[
            (8080, Disable, Some("namespace foo/default")),
            (9090, Disable, Some("namespace foo/default")),
            (7070, Strict, Some("workload foo/httpbin[7070]")),
        ],
        ..case("port-level UNSET inherits the namespace's mode through the workload")
    },
    Case {
        policies: &[
            (ROOT, "default", STRICT),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: UNSET}}}",
            ),
        ],
        default: (Permissive, Some("workload foo/httpbin")),
        ports: &[(8080, Permissive, Some("workload foo/httpbin"))],
        ..case("port-level UNSET inherits the workload's mode")
    },
    Case {
        policies: &[(
            "foo",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {8080: {mode: UNSET}}}",
        )],
        default: (Permissive, None),
        ports: &[(8080, Permissive, None)],
        ..case("port-level UNSET with nothing above: Istio's default")
    },
    Case {
        policies: &[
            (ROOT, "default", STRICT),
            (
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}",
            ),
        ],
        default: (Strict, Some("mesh istio-system/default")),
        ports: &[
            (8080, Permissive, Some("workload foo/httpbin[8080]")),
            (9090, Strict, Some("mesh istio-system/default")),
        ],
        ..case("workload policy with only portLevelMtls: other ports inherit")
    },
    Case {
        policies: &[(
            "foo",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}, portLevelMtls: {8443: {mode: STRICT}}}",
        )],
        default: (Disable, Some("workload foo/httpbin")),
        ports: &[
            (8443, Strict, Some("workload foo/httpbin[8443]")),
            (8080, Disable, Some("workload foo/httpbin")),
        ],
        ..case("STRICT port on a DISABLE workload")
    },
    Case {
        policies: &[
            ("foo", "default", STRICT),
            (
                "foo",
                "other",
                "{selector: {matchLabels: {app: other}}, portLevelMtls: {8080: {mode: DISABLE}}}",
            ),
        ],
        default: (Strict, Some("namespace foo/default")),
        ports: &[(8080, Strict, Some("namespace foo/default"))],
        ..case("port-level modes of a policy that does not select the workload")
    },
    Case {
        policies: &[("foo", "default", STRICT)],
        inject: &[("default", 8080, Written::Disable)],
        default: (Strict, Some("namespace foo/default")),
        ports: &[(8080, Strict, Some("namespace foo/default"))],
        ..case("port-level modes of a namespace policy are ignored")
    },
    Case {
        policies: &[(ROOT, "default", PERMISSIVE)],
        inject: &[("default", 8080, Written::Strict)],
        default: (Permissive, Some("mesh istio-system/default")),
        ports: &[(8080, Permissive, Some("mesh istio-system/default"))],
        ..case("port-level modes of a mesh policy are ignored")
    },
    Case {
        policies: &[(
            "foo",
            "all",
            "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}",
        )],
        inject: &[("all", 8080, Written::Disable)],
        default: (Strict, Some("namespace foo/all")),
        ports: &[(8080, Strict, Some("namespace foo/all"))],
        ..case("port-level modes with empty matchLabels are ignored")
    },
    Case {
        root: Some("mesh-root"),
        policies: &[("mesh-root", "default", STRICT), (ROOT, "default", DISABLE)],
        default: (Strict, Some("mesh mesh-root/default")),
        ..case("another root namespace: its policies are the mesh's")
    },
    Case {
        root: Some("mesh-root"),
        policies: &[("mesh-root", "default", STRICT), (ROOT, "default", DISABLE)],
        ns: ROOT,
        default: (Disable, Some("namespace istio-system/default")),
        ..case("another root namespace: istio-system is a namespace like others")
    },
];

fn snapshot_yaml(c: &Case) -> String {
    let mut yaml = String::new();
    if let Some(root) = c.root {
        yaml += &format!(
            "---\napiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: istio-system}}\nspec: {{rootNamespace: {root}}}\n"
        );
    }
    for (ns, name, spec) in c.policies {
        yaml += &pa(ns, name, spec);
    }
    yaml
}

#[test]
fn table() {
    assert!(CASES.len() >= 25);
    for c in CASES {
        let snapshot = crate::test_support::snapshot(&snapshot_yaml(c));
        let root = snapshot.mesh().root_namespace.clone();
        let policies: Vec<Arc<CompiledPeerAuthentication>> = snapshot
            .peer_authentications()
            .iter()
            .map(|r| {
                let mut r = (**r).clone();
                for (name, port, mode) in c.inject {
                    if r.name() == *name {
                        r.spec
                            .port_level_mtls
                            .insert(*port, MutualTls { mode: Some(*mode) });
                    }
                }
                Arc::new(CompiledPeerAuthentication::compile(&r))
            })
            .collect();
        let wl = labels(c.labels);
        let got = PeerAuthn::for_workload(&policies, &root, c.ns, &wl);
        let name = c.name;
        assert_eq!(got.default_mode(), c.default.0, "{name}: default mode");
        assert_eq!(
            describe(got.default_source()).as_deref(),
            c.default.1,
            "{name}: default source"
        );
        // A port no policy names has the default mode.
        assert_eq!(got.mode(1), c.default.0, "{name}: port 1");
        assert_eq!(
            server_mode(&policies, &root, c.ns, &wl, 1),
            c.default.0,
            "{name}: server_mode, port 1"
        );
        for &(port, mode, source) in c.ports {
            assert_eq!(got.mode(port), mode, "{name}: port {port}");
            assert_eq!(
                describe(got.source(port)).as_deref(),
                source,
                "{name}: source of port {port}"
            );
            assert_eq!(
                server_mode(&policies, &root, c.ns, &wl, port),
                mode,
                "{name}: server_mode, port {port}"
            );
        }
        if c.inject.is_empty() {
            // The compiled mesh answers the same, and a workload's view holds it.
            let mesh = Arc::new(CompiledMesh::compile(&snapshot));
            assert!(mesh.errors.is_empty(), "{name}: {:?}", mesh.errors);
            assert_eq!(mesh.peer_authentications().len(), c.policies.len());
            assert_eq!(mesh.peer_authn(c.ns, &wl), got, "{name}: mesh.peer_authn");
            for &(port, mode, _) in c.ports {
                assert_eq!(
                    mesh.server_mtls_mode(c.ns, &wl, port),
                    mode,
                    "{name}: mesh.server_mtls_mode({port})"
                );
            }
            let workload = Workload::new("httpbin", c.ns).labels(c.labels.iter().copied());
            let view = WorkloadView::compile(mesh, Arc::new(workload), Role::Sidecar);
            assert_eq!(view.peer_authn(), &got, "{name}: view");
        }
    }
}

/// Which policies were selected, per level, including those that set no mode.
#[test]
fn selected_policies() {
    let yaml = [
        pa(ROOT, "default", UNSET),
        pa(ROOT, "ignored", "{selector: {matchLabels: {app: httpbin}}}"),
        pa("foo", "default", STRICT),
        pa("foo", "later", DISABLE),
        pa(
            "foo",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}}",
        ),
        pa("bar", "default", DISABLE),
    ]
    .concat();
    let mesh = CompiledMesh::compile(&crate::test_support::snapshot(&yaml));
    let got = mesh.peer_authn("foo", &labels(HTTPBIN));
    let selected: Vec<String> = got
        .policies()
        .iter()
        .map(|(scope, p)| format!("{scope} {p}"))
        .collect();
    assert_eq!(
        selected,
        [
            "mesh istio-system/default",
            "namespace foo/default",
            "workload foo/httpbin"
        ]
    );
    assert_eq!(got.default_mode(), Strict);
    assert!(got.ports().is_empty());
    let scopes: Vec<Option<Scope>> = mesh
        .peer_authentications()
        .iter()
        .map(|p| p.scope(ROOT))
        .collect();
    assert_eq!(
        scopes,
        [
            Some(Scope::Mesh),
            None,
            Some(Scope::Namespace),
            Some(Scope::Namespace),
            Some(Scope::Workload),
            Some(Scope::Namespace)
        ]
    );
    // No policy at all.
    let empty = PeerAuthn::default();
    assert_eq!(empty.mode(8080), Permissive);
    assert!(empty.source(8080).is_none() && empty.policies().is_empty());
}

/// A decision names the policy, its file and the line of the field that decided.
#[test]
fn sources_have_file_and_line() {
    let yaml = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  portLevelMtls:
    8080:
      mode: DISABLE
    9090:
      mode: UNSET
";
    let mesh = CompiledMesh::compile(&crate::test_support::snapshot(yaml));
    let got = mesh.peer_authn("foo", &labels(HTTPBIN));
    let at = |port: u16| {
        let s = got.source(port).expect("a source");
        (
            s.policy.to_string(),
            s.policy.file.to_string(),
            s.policy.line,
            s.line,
            s.port,
        )
    };
    assert_eq!(
        at(8080),
        ("foo/httpbin".into(), "test.yaml".into(), 10, 20, Some(8080))
    );
    assert_eq!(
        at(9090),
        (
            "istio-system/default".into(),
            "test.yaml".into(),
            1,
            7,
            None
        )
    );
    assert_eq!(at(1), at(9090));
    assert_eq!(
        got.source(8080).map(ToString::to_string).as_deref(),
        Some("foo/httpbin (test.yaml:20) portLevelMtls[8080]")
    );
    assert_eq!(
        got.source(1).map(ToString::to_string).as_deref(),
        Some("istio-system/default (test.yaml:7)")
    );
    assert_eq!(
        got.ports(),
        [
            PortMode {
                port: 8080,
                mode: Disable,
                source: got.source(8080).cloned(),
            },
            PortMode {
                port: 9090,
                mode: Strict,
                source: got.default_source().cloned(),
            },
        ]
    );
}

/// What composition ignores is reported.
#[test]
fn dropped_parts_are_reported() {
    let snapshot = crate::test_support::snapshot(&pa("foo", "default", STRICT));
    let mut r = (*snapshot.peer_authentications()[0]).clone();
    r.spec.port_level_mtls.insert(
        8080,
        MutualTls {
            mode: Some(Written::Disable),
        },
    );
    let p = CompiledPeerAuthentication::compile(&r);
    assert_eq!(p.dropped().len(), 1, "{:?}", p.dropped());
    assert!(p.dropped()[0].starts_with("portLevelMtls: ignored"));
    assert_eq!(p.mode(), Some(Strict));
    assert!(p.selector().is_none());

    r.spec.selector = Some(mesh_config::model::common::WorkloadSelector {
        match_labels: labels(&[("app", "httpbin")]),
    });
    r.spec.port_level_mtls.insert(
        70000,
        MutualTls {
            mode: Some(Written::Strict),
        },
    );
    let p = CompiledPeerAuthentication::compile(&r);
    assert_eq!(
        p.dropped(),
        ["portLevelMtls[70000]: ignored, not a port number"]
    );
    assert_eq!(p.scope(ROOT), Some(Scope::Workload));
    let got = PeerAuthn::for_workload(&[Arc::new(p)], ROOT, "foo", &labels(HTTPBIN));
    assert_eq!(got.ports().len(), 1);
    assert_eq!(got.mode(8080), Disable);
    // 70000 as u16 would be 4464: it must not be there.
    assert_eq!(got.mode(4464), Strict);
}

#[test]
fn modes() {
    let table = [
        (Strict, "STRICT", false, true, true),
        (Permissive, "PERMISSIVE", true, true, true),
        (Disable, "DISABLE", true, false, false),
    ];
    for (mode, name, plaintext, mtls, auto) in table {
        assert_eq!(mode.to_string(), name);
        assert_eq!(mode.accepts_plaintext(), plaintext, "{name}");
        assert_eq!(mode.accepts_mtls(), mtls, "{name}");
        assert_eq!(mode.auto_mtls(), auto, "{name}");
    }
    assert_eq!(MtlsMode::default(), Permissive);
}
