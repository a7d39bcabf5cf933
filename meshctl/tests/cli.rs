//! `meshctl validate` end to end: the real binary, its output and its exit status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

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
