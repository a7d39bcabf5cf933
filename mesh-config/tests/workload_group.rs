//! WorkloadGroup: Istio's validation rule by rule (a template is required, the
//! metadata's labels are valid, a probe has non-negative numbers and exactly one valid
//! method; as in Istio, the template is not checked as a WorkloadEntry), and the
//! WorkloadEntry an instance registers from it, as Istio's auto-registration makes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_config::model::AnyResource;
use mesh_config::registry::{AUTO_REGISTRATION_GROUP, instance_entry, instance_name};
use mesh_config::{Checked, Code, ConfigSet, Severity};

fn check(spec: &str) -> Checked {
    let mut set = ConfigSet::new();
    set.add_str(
        "wg.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n{spec}"
        ),
    );
    set.check()
}

/// (spec, code and path of the error expected, or None for a valid group).
const CASES: &[(&str, Option<(Code, &str)>)] = &[
    (
        "  metadata: {labels: {app: reviews}}\n  template: {ports: {http: 9080}, serviceAccount: bookinfo-reviews}\n",
        None,
    ),
    (
        "  template: {ports: {http: 9080}}\n  probe: {periodSeconds: 4, httpGet: {path: /ready, port: 9080, scheme: HTTPS, httpHeaders: [{name: x-probe, value: '1'}]}}\n",
        None,
    ),
    ("  template: {}\n  probe: {tcpSocket: {port: 9080}}\n", None),
    (
        "  template: {}\n  probe: {exec: {command: [cat, /tmp/ready]}}\n",
        None,
    ),
    (
        "  metadata: {labels: {app: reviews}}\n",
        Some((Code::MissingField, "spec.template")),
    ),
    (
        "  metadata: {labels: {'-bad': x}}\n  template: {}\n",
        Some((Code::InvalidLabel, "spec.metadata.labels.-bad")),
    ),
    // As in Istio, the template is not checked as a WorkloadEntry.
    ("  template: {ports: {http: 0}, labels: {'-x': y}}\n", None),
    (
        "  template: {}\n  probe: {httpGet: {port: 80, httpHeaders: [{name: x_probe}]}}\n",
        Some((Code::InvalidValue, "spec.probe.httpGet.httpHeaders[0].name")),
    ),
    (
        "  template: {}\n  probe: {periodSeconds: -1, tcpSocket: {port: 80}}\n",
        Some((Code::InvalidValue, "spec.probe.periodSeconds")),
    ),
    (
        "  template: {}\n  probe: {failureThreshold: -3, tcpSocket: {port: 80}}\n",
        Some((Code::InvalidValue, "spec.probe.failureThreshold")),
    ),
    (
        "  template: {}\n  probe: {periodSeconds: 4}\n",
        Some((Code::MissingField, "spec.probe")),
    ),
    (
        "  template: {}\n  probe: {tcpSocket: {port: 80}, exec: {command: ['true']}}\n",
        Some((Code::InvalidValue, "spec.probe")),
    ),
    (
        "  template: {}\n  probe: {httpGet: {port: 80, scheme: FTP}}\n",
        Some((Code::InvalidValue, "spec.probe.httpGet.scheme")),
    ),
    (
        "  template: {}\n  probe: {httpGet: {port: 0}}\n",
        Some((Code::InvalidPort, "spec.probe.httpGet.port")),
    ),
    (
        "  template: {}\n  probe: {exec: {command: []}}\n",
        Some((Code::MissingField, "spec.probe.exec.command")),
    ),
];

#[test]
fn validation_table() {
    for (spec, want) in CASES {
        let checked = check(spec);
        let errors: Vec<(Code, String)> = checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                (
                    d.code,
                    d.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        match want {
            None => assert!(errors.is_empty(), "{spec}: {}", checked.summary()),
            Some((code, path)) => assert!(
                errors.iter().any(|(c, p)| c == code && p == path),
                "{spec}: wanted {code:?} at {path}, got {}",
                checked.summary()
            ),
        }
    }
}

#[test]
fn a_probe_is_said_not_to_be_run() {
    let checked = check("  template: {}\n  probe: {tcpSocket: {port: 80}}\n");
    assert!(!checked.has_errors(), "{}", checked.summary());
    assert!(
        checked
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Warning && d.message.contains("probes are not run")),
        "{}",
        checked.summary()
    );
}

#[test]
fn instance_names_are_istios() {
    assert_eq!(
        instance_name("reviews", "10.0.0.7", None),
        "reviews-10.0.0.7"
    );
    assert_eq!(
        instance_name("reviews", "10.0.0.7", Some("vpc-1")),
        "reviews-10.0.0.7-vpc-1"
    );
    assert_eq!(instance_name("reviews", "fd00::7", None), "reviews-fd00--7");
    let long = "g".repeat(300);
    let name = instance_name(&long, "10.0.0.7", None);
    assert_eq!(name.len(), 253);
    assert!(name.ends_with("g-10.0.0.7"));
}

#[test]
fn an_instance_registers_the_template_at_its_address() {
    let checked = check(
        "  metadata:\n    labels: {app: reviews, version: v2}\n    annotations: {team: books}\n  template:\n    ports: {http: 9080}\n    labels: {version: v1, tier: back}\n    network: net-1\n    serviceAccount: bookinfo-reviews\n    locality: eu/west\n    weight: 3\n",
    );
    let snapshot = checked.snapshot.expect("a valid group");
    let group = &snapshot.workload_groups()[0];
    let (name, yaml) = instance_entry(group, "127.0.0.5", None).unwrap();
    assert_eq!(name, "reviews-127.0.0.5");
    let mut set = ConfigSet::new();
    set.add_str("instance.yaml", &yaml);
    let checked = set.check();
    assert!(!checked.has_errors(), "{}", checked.summary());
    let [AnyResource::WorkloadEntry(we)] = set.resources() else {
        panic!("not one WorkloadEntry: {yaml}");
    };
    assert_eq!(
        (we.namespace(), we.name()),
        ("bookinfo", "reviews-127.0.0.5")
    );
    assert_eq!(we.spec.address, "127.0.0.5");
    assert_eq!(we.spec.ports.get("http"), Some(&9080));
    // The group's metadata labels over the template's.
    let labels: Vec<(&str, &str)> = we
        .spec
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("app", "reviews"), ("tier", "back"), ("version", "v2")]
    );
    assert_eq!(we.spec.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(we.spec.locality.as_deref(), Some("eu/west"));
    assert_eq!(we.spec.weight, Some(3));
    assert_eq!(
        we.meta
            .annotations
            .get(AUTO_REGISTRATION_GROUP)
            .map(String::as_str),
        Some("reviews")
    );
    assert_eq!(
        we.meta.annotations.get("team").map(String::as_str),
        Some("books")
    );
    // The template's network is the entry's, not a suffix of its name (Istio's suffix
    // is the proxy's own network).
    assert_eq!(we.spec.network.as_deref(), Some("net-1"));

    // The ports the instance really listens on, when given.
    let ports = [("http".to_string(), 40123u32)].into_iter().collect();
    let (_, yaml) = instance_entry(group, "127.0.0.5", Some(&ports)).unwrap();
    let mut set = ConfigSet::new();
    set.add_str("instance.yaml", &yaml);
    let [AnyResource::WorkloadEntry(we)] = set.resources() else {
        panic!("not one WorkloadEntry");
    };
    assert_eq!(we.spec.ports.get("http"), Some(&40123));
}
