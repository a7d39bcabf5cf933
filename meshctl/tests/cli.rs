//! `meshctl validate` end to end: the real binary, its output and its exit status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{meshctl, repo};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const BASE: &str = "examples/bookinfo/config";

fn samples() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["networking", "security"] {
        let d = repo().join("examples/bookinfo/istio").join(dir);
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(format!(
                    "examples/bookinfo/istio/{dir}/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn bookinfo_config_is_valid_with_warnings() {
    let o = meshctl(&["validate", BASE]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("0 error(s)"), "{out}");
    // Istio's destination-rule-all.yaml defines subsets Bookinfo never runs.
    assert_eq!(out.matches("warning[IST0173]").count(), 4, "{out}");
}

#[test]
fn every_bookinfo_sample_validates_on_the_bookinfo_registry() {
    let all = samples();
    assert!(all.len() >= 24);
    let mut args = vec![
        "validate",
        "--config",
        BASE,
        "--config",
        "meshctl/tests/fixtures",
    ];
    args.extend(all.iter().map(String::as_str));
    let o = meshctl(&args);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    // The warnings are printed: the unreachable rule and the deprecated integer percent.
    assert!(
        out.contains("warning[IST0130]: VirtualService rule #1 not used"),
        "{out}"
    );
    assert!(
        out.contains("fault-injection-details-v1.yaml:18:5"),
        "{out}"
    );
    assert!(out.contains("warning[IST0002]"), "{out}");
}

#[test]
fn certmanager_sample_needs_its_service() {
    let f = "examples/bookinfo/istio/networking/certmanager-gateway.yaml";
    let o = meshctl(&["validate", "--config", BASE, f]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("error[IST0101]: Referenced host not found: \"cert-manager-resolver\""),
        "{out}"
    );
    assert!(out.contains("certmanager-gateway.yaml:33:15"), "{out}");
    let o = meshctl(&[
        "validate",
        "--config",
        BASE,
        "--config",
        "meshctl/tests/fixtures",
        f,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn json_output_has_every_field() {
    let f = "examples/bookinfo/istio/networking/fault-injection-details-v1.yaml";
    let o = meshctl(&["validate", "--output", "json", "--config", BASE, f]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    let d = arr.iter().find(|d| d["code"] == "IST0130").unwrap();
    assert_eq!(d["severity"], "warning");
    assert_eq!(d["line"], 18);
    assert!(d["line"].is_u64());
    assert_eq!(d["column"], 5);
    assert_eq!(d["kind"], "VirtualService");
    assert_eq!(d["namespace"], "default");
    assert_eq!(d["name"], "details");
    assert_eq!(d["path"], "spec.http[1]");
    assert!(
        d["file"]
            .as_str()
            .unwrap()
            .ends_with("fault-injection-details-v1.yaml")
    );
    assert!(d["message"].as_str().unwrap().contains("not used"));
}

#[test]
fn invalid_corpus_exits_1_for_each_file() {
    let dir = repo().join("mesh-config/tests/invalid");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        n += 1;
        let o = meshctl(&["validate", "--output", "json", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}: {}", p.display(), stdout(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v.as_array()
                .unwrap()
                .iter()
                .any(|d| d["severity"] == "error"),
            "{}",
            p.display()
        );
    }
    assert!(n >= 40, "the invalid corpus has {n} files");
}

/// A FIFO among the configuration files is refused, named, with what it is (reading it
/// would block `meshctl validate` forever).
#[cfg(unix)]
#[test]
fn a_fifo_in_the_configuration_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.yaml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for arg in [dir.path(), fifo.as_path()] {
        let o = meshctl(&["validate", arg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("pipe.yaml") && err.contains("is a FIFO, not a regular file"),
            "{err}"
        );
    }
}

#[test]
fn usage_and_io_errors_exit_2() {
    assert_eq!(
        meshctl(&["validate", "no/such/file.yaml"]).status.code(),
        Some(2)
    );
    assert_eq!(meshctl(&["validate"]).status.code(), Some(2));
    assert_eq!(meshctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        meshctl(&["validate", "--output", "xml", BASE])
            .status
            .code(),
        Some(2)
    );
}

fn route_json(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["route", "--output", "json", "--config", BASE];
    all.extend_from_slice(args);
    let o = meshctl(&all);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), v)
}

const SAMPLES: &str = "examples/bookinfo/istio/networking";

#[test]
fn route_explains_weighted_splits() {
    let cfg = format!("{SAMPLES}/virtual-service-reviews-90-10.yaml");
    let (code, v) = route_json(&["--config", &cfg, "http://reviews:9080/reviews/0"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["virtual_service"], "default/reviews");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .ends_with("virtual-service-reviews-90-10.yaml:9"),
        "{v}"
    );
    let d = v["destinations"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["host"], "reviews.default.svc.cluster.local");
    assert_eq!(
        (d[0]["subset"].as_str(), d[0]["weight"].as_u64()),
        (Some("v1"), Some(90))
    );
    assert_eq!(
        (d[1]["subset"].as_str(), d[1]["weight"].as_u64()),
        (Some("v2"), Some(10))
    );
    assert_eq!(d[1]["port"], 9080);
    assert_eq!(v["timeout_ms"], serde_json::Value::Null);
    assert_eq!(v["retries"]["attempts"], 2, "Istio's default retry policy");
    assert_eq!(v["fault"], serde_json::Value::Null);
}

#[test]
fn route_explains_header_matches_and_faults() {
    let cfg = format!("{SAMPLES}/virtual-service-ratings-test-abort.yaml");
    let (code, v) = route_json(&[
        "--config",
        &cfg,
        "-H",
        "end-user: jason",
        "http://ratings:9080/ratings/0",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(v["rule_index"], 0);
    assert_eq!(v["fault"]["abort_status"], 500);
    assert_eq!(v["fault"]["abort_percent"], 100.0);
    let (_, v) = route_json(&["--config", &cfg, "http://ratings:9080/ratings/0"]);
    assert_eq!(v["rule_index"], 1);
    assert_eq!(v["fault"], serde_json::Value::Null);
    assert_eq!(v["destinations"][0]["subset"], "v1");
}

#[test]
fn route_without_virtual_service_and_through_the_gateway() {
    let (code, v) = route_json(&["http://details:9080/details/0"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["virtual_service"], serde_json::Value::Null);
    assert_eq!(v["rule"], serde_json::Value::Null);
    assert_eq!(
        v["destinations"][0]["host"],
        "details.default.svc.cluster.local"
    );
    assert_eq!(v["destinations"][0]["weight"], 100);
    let (code, v) = route_json(&[
        "--gateway",
        "default/bookinfo-gateway",
        "http://bookinfo.example.com/productpage",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["virtual_service"], "default/bookinfo");
    assert_eq!(
        v["destinations"][0]["host"],
        "productpage.default.svc.cluster.local"
    );
    let (code, v) = route_json(&[
        "--gateway",
        "default/bookinfo-gateway",
        "http://bookinfo.example.com/admin",
    ]);
    assert_eq!(code, Some(1));
    assert!(v["error"].as_str().unwrap().contains("404"), "{v}");
}

#[test]
fn route_human_output() {
    let cfg = format!("{SAMPLES}/virtual-service-reviews-test-v2.yaml");
    let o = meshctl(&[
        "route",
        "--config",
        BASE,
        "--config",
        &cfg,
        "-H",
        "end-user: jason",
        "http://reviews:9080/",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("VirtualService default/reviews, rule #0"),
        "{out}"
    );
    assert!(
        out.contains("destination: reviews.default.svc.cluster.local:9080 subset v2 (weight 100)"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// meshctl apply / delete / get on a copy of the Bookinfo configuration directory.
// ---------------------------------------------------------------------------------------

/// A temporary copy of the Bookinfo configuration (its YAML files).
fn bookinfo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(repo().join(BASE)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Every file of a directory with its content.
fn files(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

fn meshctl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn apply_creates_configures_and_leaves_unchanged() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let v90 = format!("{SAMPLES}/virtual-service-reviews-90-10.yaml");
    let o = meshctl(&["apply", "-f", &v90, "--config", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "virtualservice.networking.istio.io/reviews created\n"
    );
    let created = dir.path().join("virtualservice-default-reviews.yaml");
    assert_eq!(
        std::fs::read_to_string(&created).unwrap(),
        std::fs::read_to_string(repo().join(&v90)).unwrap()
    );

    let o = meshctl(&["apply", "-f", &v90, "--config", d]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "virtualservice.networking.istio.io/reviews unchanged\n"
    );

    let test_v2 = format!("{SAMPLES}/virtual-service-reviews-test-v2.yaml");
    let o = meshctl(&["apply", "-f", &test_v2, "--config", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "virtualservice.networking.istio.io/reviews configured\n"
    );
    assert_eq!(
        std::fs::read_to_string(&created).unwrap(),
        std::fs::read_to_string(repo().join(&test_v2)).unwrap()
    );

    // Several resources, from standard input, one of them in a multi-document file of
    // the directory: replaced in place, the other documents of the file kept.
    let before = std::fs::read_to_string(dir.path().join("bookinfo-gateway.yaml")).unwrap();
    let gateway = before.split("---\n").next().unwrap();
    let edited = gateway.replace("number: 80", "number: 8080");
    let o = meshctl_stdin(
        &["apply", "-f", "-", "--config", d],
        &format!(
            "{edited}---\n{}",
            std::fs::read_to_string(repo().join(&test_v2)).unwrap()
        ),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "gateway.networking.istio.io/bookinfo-gateway configured\nvirtualservice.networking.istio.io/reviews unchanged\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bookinfo-gateway.yaml")).unwrap(),
        before.replacen("number: 80", "number: 8080", 1)
    );
}

#[test]
fn invalid_apply_exits_1_names_the_file_and_writes_nothing() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let before = files(dir.path());
    let bad = dir.path().join("..").join(format!(
        "{}-bad.yaml",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v9}\n",
    )
    .unwrap();
    let o = meshctl(&["apply", "-f", bad.to_str().unwrap(), "--config", d]);
    let _ = std::fs::remove_file(&bad);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error[IST0101]"), "{err}");
    assert!(err.contains("-bad.yaml:9:44"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(stdout(&o), "");
    assert_eq!(files(dir.path()), before);

    // A file that is not even YAML: the same.
    let o = meshctl_stdin(
        &["apply", "-f", "-", "--config", d],
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x\n",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error[MESH0001]"), "{err}");
    assert!(err.contains("<stdin>:3:"), "{err}");
    assert_eq!(files(dir.path()), before);
}

#[test]
fn apply_refuses_to_edit_a_list_item() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: g}\n  spec: {selector: {app: a}}\n";
    std::fs::write(dir.path().join("list.yaml"), list).unwrap();
    let o = meshctl_stdin(
        &["apply", "-f", "-", "--config", d],
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selector: {app: b}}\n",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("list.yaml:4"), "{err}");
    assert!(err.contains("List item"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("list.yaml")).unwrap(),
        list
    );
}

#[test]
fn delete_removes_documents_and_files() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let v90 = format!("{SAMPLES}/virtual-service-reviews-90-10.yaml");
    assert_eq!(
        meshctl(&["apply", "-f", &v90, "--config", d]).status.code(),
        Some(0)
    );
    let o = meshctl(&["delete", "-f", &v90, "--config", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "virtualservice.networking.istio.io/reviews deleted\n"
    );
    assert!(
        !dir.path()
            .join("virtualservice-default-reviews.yaml")
            .exists()
    );
    assert_eq!(
        files(dir.path()),
        files(bookinfo_copy().path()),
        "back to the original"
    );

    // One document of a multi-document file: the rest of the file stays.
    let o = meshctl(&[
        "delete",
        "-f",
        &format!("{SAMPLES}/destination-rule-reviews.yaml"),
        "--config",
        d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io/reviews deleted\n"
    );
    let all = std::fs::read_to_string(dir.path().join("destination-rule-all.yaml")).unwrap();
    assert!(!all.contains("host: reviews"), "{all}");
    assert_eq!(all.matches("kind: DestinationRule").count(), 3);
}

#[test]
fn delete_not_found_exits_1_and_deletes_the_others() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    // destination-rule-all.yaml names four rules; the directory has them all but
    // `reviews`, deleted first.
    let reviews = format!("{SAMPLES}/destination-rule-reviews.yaml");
    assert_eq!(
        meshctl(&["delete", "-f", &reviews, "--config", d])
            .status
            .code(),
        Some(0)
    );
    let o = meshctl(&[
        "delete",
        "-f",
        &format!("{SAMPLES}/destination-rule-all.yaml"),
        "--config",
        d,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io/productpage deleted\ndestinationrule.networking.istio.io/ratings deleted\ndestinationrule.networking.istio.io/details deleted\n"
    );
    assert!(
        stderr(&o).contains(&format!(
            "Error: destinationrule.networking.istio.io \"reviews\" not found in {d}"
        )),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("destination-rule-all.yaml").exists());
}

#[test]
fn delete_warns_of_dangling_references_but_deletes() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let all_v1 = format!("{SAMPLES}/virtual-service-all-v1.yaml");
    let o = meshctl(&["apply", "-f", &all_v1, "--config", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 4);
    let o = meshctl(&[
        "delete",
        "-f",
        &format!("{SAMPLES}/destination-rule-reviews.yaml"),
        "--config",
        d,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("warning[IST0101]"), "{err}");
    assert!(err.contains("virtualservice-default-reviews.yaml"), "{err}");
    assert!(!err.contains("error["), "{err}");
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io/reviews deleted\n"
    );
}

#[test]
fn get_prints_tables_like_kubectl() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let o = meshctl(&["get", "virtualservices", "--config", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOSTS", "GATEWAYS", "SOURCE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..3], ["bookinfo", "*", "bookinfo-gateway"]);
    assert!(row[3].ends_with("bookinfo-gateway.yaml:18"), "{out}");
    // Columns line up.
    assert_eq!(lines[0].find("HOSTS"), lines[1].find('*'));

    // A DestinationRule in another namespace: shown with -A or -n only.
    std::fs::write(
        dir.path().join("prod.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: prod}\nspec: {host: reviews.default.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}\n",
    )
    .unwrap();
    let o = meshctl(&["get", "DR", "--config", d]);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(!out.contains("prod.yaml"), "{out}");
    let o = meshctl(&["get", "dr", "-A", "--config", d]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "HOST", "SUBSETS", "SOURCE"]);
    let prod: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("prod"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &prod[..4],
        ["prod", "reviews", "reviews.default.svc.cluster.local", "v1"]
    );
    assert!(prod[4].ends_with("prod.yaml:1"), "{out}");
    let o = meshctl(&[
        "get",
        "destinationrule",
        "reviews",
        "-n",
        "prod",
        "--config",
        d,
    ]);
    assert_eq!(stdout(&o).lines().count(), 2);

    let o = meshctl(&["get", "gw", "--config", d]);
    let out = stdout(&o);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        ["bookinfo-gateway", "80/HTTP", "istio=ingressgateway"]
    );
    let o = meshctl(&["get", "se", "reviews", "--config", d]);
    let out = stdout(&o);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..4],
        [
            "reviews",
            "reviews.default.svc.cluster.local",
            "MESH_INTERNAL",
            "STATIC"
        ]
    );
    let o = meshctl(&["get", "we", "reviews-v2", "--config", d]);
    let out = stdout(&o);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        ["reviews-v2", "127.0.0.1", "app=reviews,version=v2"]
    );
}

#[test]
fn get_yaml_json_and_nothing_found() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let o = meshctl(&["get", "gw", "bookinfo-gateway", "-o", "yaml", "--config", d]);
    assert_eq!(o.status.code(), Some(0));
    let original = std::fs::read_to_string(dir.path().join("bookinfo-gateway.yaml")).unwrap();
    // The document as written, comments included.
    assert_eq!(stdout(&o), original.split("---\n").next().unwrap());

    let o = meshctl(&["get", "dr", "-o", "yaml", "--config", d]);
    let out = stdout(&o);
    assert_eq!(out.matches("kind: DestinationRule").count(), 4);
    assert_eq!(out.matches("---\n").count(), 3);
    let mut check = mesh_config::ConfigSet::new();
    check.add_str("out.yaml", &out);
    assert_eq!(check.resources().len(), 4);

    let o = meshctl(&["get", "vs", "-o", "json", "-A", "--config", d]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["kind"], "VirtualService");
    assert_eq!(v[0]["namespace"], "default");
    assert_eq!(v[0]["name"], "bookinfo");
    assert_eq!(v[0]["line"], 18);
    assert!(
        v[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("bookinfo-gateway.yaml")
    );

    let o = meshctl(&["get", "pa", "--config", d]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "No resources found in default namespace.\n");
    let o = meshctl(&["get", "vs", "-n", "prod", "--config", d]);
    assert_eq!(stderr(&o), "No resources found in prod namespace.\n");
    let o = meshctl(&["get", "vs", "nope", "--config", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"nope\" not found"), "{}", stderr(&o));
}

#[test]
fn get_unknown_kind_exits_2_listing_the_kinds() {
    let o = meshctl(&["get", "pods", "--config", BASE]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unknown kind \"pods\""), "{err}");
    for k in ["virtualservice", "vs", "serviceentries", "ap", "meshconfig"] {
        assert!(err.contains(k), "{k}: {err}");
    }
    assert_eq!(
        meshctl(&["get", "vs", "--config", "no/such/dir"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        meshctl(&["apply", "--config", BASE]).status.code(),
        Some(2),
        "-f is required"
    );
}

/// Istio's samples/bookinfo/gateway-api/bookinfo-gateway.yaml (abridged): a Kubernetes
/// Gateway API `Gateway` named like the Istio Gateway of the Bookinfo configuration.
const GATEWAY_API: &str =
    include_str!("../../mesh-config/tests/fixtures/gateway-api-bookinfo-gateway.yaml");

/// `kubectl delete -f` of a Gateway API `Gateway` never deletes
/// `gateways.networking.istio.io/bookinfo-gateway`: the configuration has no type for it
/// (`no matches for kind`, exit 1), and the other resources of the input are deleted.
#[test]
fn delete_of_a_gateway_api_gateway_reports_no_matches_and_deletes_the_rest() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let gateway = std::fs::read_to_string(dir.path().join("bookinfo-gateway.yaml")).unwrap();
    let reviews =
        std::fs::read_to_string(repo().join(SAMPLES).join("destination-rule-reviews.yaml"))
            .unwrap();
    let o = meshctl_stdin(
        &["delete", "-f", "-", "--config", d],
        &format!("{GATEWAY_API}---\n{reviews}"),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io/reviews deleted\n"
    );
    assert!(
        err.contains(
            "error: no matches for kind \"Gateway\" in version \"gateway.networking.k8s.io/v1\""
        ),
        "{err}"
    );
    assert!(err.contains("<stdin>:1"), "{err}");
    assert!(
        err.contains(
            "warning: HTTPRoute (gateway.networking.k8s.io/v1) \"bookinfo\" at <stdin>:13"
        ),
        "{err}"
    );
    assert!(!err.contains("IST0101"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bookinfo-gateway.yaml")).unwrap(),
        gateway
    );

    // Nothing but the Gateway API resources: nothing deleted, the same error.
    let before = files(dir.path());
    let o = meshctl_stdin(&["delete", "-f", "-", "--config", d], GATEWAY_API);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(stdout(&o), "");
    assert!(err.contains("no matches for kind \"Gateway\""), "{err}");
    assert!(!err.contains("no objects passed"), "{err}");
    assert_eq!(files(dir.path()), before);
}

/// `meshctl apply` of a Gateway API `Gateway` is refused (the mesh does not serve that
/// apiVersion) and nothing is reported `configured` or written.
#[test]
fn apply_of_a_gateway_api_gateway_is_refused() {
    let dir = bookinfo_copy();
    let d = dir.path().to_str().unwrap();
    let before = files(dir.path());
    let o = meshctl_stdin(&["apply", "-f", "-", "--config", d], GATEWAY_API);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(stdout(&o), "");
    assert!(
        err.contains("not served under apiVersion `gateway.networking.k8s.io/v1`"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!err.contains("configured"), "{err}");
    assert_eq!(files(dir.path()), before);
}
