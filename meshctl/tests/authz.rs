//! `meshctl authz` end to end: the real binary on Bookinfo with Istio's "Authorization
//! for HTTP traffic" policies, step by step, each decision checked field by field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::meshctl;

const BASE: &str = "examples/bookinfo/config";
const SECURITY: &str = "examples/bookinfo/istio/security";
const PRODUCTPAGE: &str = "cluster.local/ns/default/sa/bookinfo-productpage";
const REVIEWS: &str = "cluster.local/ns/default/sa/bookinfo-reviews";

/// The decision for a request to `workload` from `principal` (plaintext when `None`)
/// under the Bookinfo configuration plus `policies` (files under istio/security).
fn decide(
    policies: &[&str],
    workload: &str,
    principal: Option<&str>,
    method: &str,
    url: &str,
) -> serde_json::Value {
    let mut args = vec!["authz", "--config", BASE];
    let files: Vec<String> = policies.iter().map(|p| format!("{SECURITY}/{p}")).collect();
    for f in &files {
        args.extend(["--config", f.as_str()]);
    }
    args.extend(["--workload", workload, "-X", method, "-o", "json", url]);
    if let Some(p) = principal {
        args.extend(["--principal", p]);
    }
    let out = meshctl(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn summary(v: &serde_json::Value) -> (String, Option<String>, Option<String>) {
    (
        v["decision"].as_str().unwrap().to_string(),
        v["policy"].as_str().map(String::from),
        v["action"].as_str().map(String::from),
    )
}

fn expect(
    decision: &str,
    policy: Option<&str>,
    action: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        decision.into(),
        policy.map(String::from),
        action.map(String::from),
    )
}

#[test]
fn istios_http_authorization_task_step_by_step() {
    const NOTHING: &str = "authorization-allow-nothing.yaml";
    const VIEWERS: &str = "authorization-bookinfo-viewers.yaml";
    let page = "http://productpage:9080/productpage";
    let details = "http://details:9080/details/0";
    let reviews = "http://reviews:9080/reviews/0";
    let ratings = "http://ratings:9080/ratings/0";

    // Before any policy: everything is allowed, by no policy.
    let v = decide(&[], "default/productpage-v1", None, "GET", page);
    assert_eq!(summary(&v), expect("ALLOW", None, None));
    assert!(v["file"].is_null() && v["line"].is_null());

    // allow-nothing: every workload of `default` denies, no policy matched.
    for (wl, url) in [
        ("default/productpage-v1", page),
        ("default/details-v1", details),
        ("default/reviews-v2", reviews),
        ("default/ratings-v1", ratings),
    ] {
        let v = decide(&[NOTHING], wl, Some(PRODUCTPAGE), "GET", url);
        assert_eq!(summary(&v), expect("DENY", None, None), "{wl}");
    }

    // productpage-viewer: GET to productpage from anyone, plaintext included.
    let v = decide(
        &[NOTHING, VIEWERS],
        "default/productpage-v1",
        None,
        "GET",
        page,
    );
    assert_eq!(
        summary(&v),
        expect("ALLOW", Some("default/productpage-viewer"), Some("ALLOW"))
    );
    assert_eq!(v["rule"], 0);
    assert_eq!(
        v["file"],
        "examples/bookinfo/istio/security/authorization-bookinfo-viewers.yaml"
    );
    // Rule #0 of productpage-viewer (`- to:`) is on line 12 of Istio's file.
    assert_eq!(v["line"], 12);
    let v = decide(
        &[NOTHING, VIEWERS],
        "default/productpage-v1",
        None,
        "POST",
        page,
    );
    assert_eq!(summary(&v), expect("DENY", None, None));

    // details-viewer and reviews-viewer: only productpage's identity.
    for (wl, url, policy) in [
        ("default/details-v1", details, "default/details-viewer"),
        ("default/reviews-v3", reviews, "default/reviews-viewer"),
    ] {
        let v = decide(&[NOTHING, VIEWERS], wl, Some(PRODUCTPAGE), "GET", url);
        assert_eq!(
            summary(&v),
            expect("ALLOW", Some(policy), Some("ALLOW")),
            "{wl}"
        );
        let v = decide(&[NOTHING, VIEWERS], wl, Some(REVIEWS), "GET", url);
        assert_eq!(summary(&v), expect("DENY", None, None), "{wl} from reviews");
        let v = decide(&[NOTHING, VIEWERS], wl, None, "GET", url);
        assert_eq!(summary(&v), expect("DENY", None, None), "{wl} in plaintext");
    }

    // ratings-viewer: only reviews' identity.
    let v = decide(
        &[NOTHING, VIEWERS],
        "default/ratings-v1",
        Some(REVIEWS),
        "GET",
        ratings,
    );
    assert_eq!(
        summary(&v),
        expect("ALLOW", Some("default/ratings-viewer"), Some("ALLOW"))
    );
    let v = decide(
        &[NOTHING, VIEWERS],
        "default/ratings-v1",
        Some(PRODUCTPAGE),
        "GET",
        ratings,
    );
    assert_eq!(summary(&v), expect("DENY", None, None));
}

#[test]
fn a_deny_policy_decides_before_allow() {
    const DENY: &str = "authorization-deny-post.yaml";
    const VIEWERS: &str = "authorization-bookinfo-viewers.yaml";
    let ratings = "http://ratings:9080/ratings/0";
    let v = decide(
        &[VIEWERS, DENY],
        "default/ratings-v1",
        Some(REVIEWS),
        "POST",
        ratings,
    );
    assert_eq!(
        summary(&v),
        expect("DENY", Some("default/deny-writes"), Some("DENY"))
    );
    assert_eq!(v["line"], 12);
    // notPaths: /health is not a write the policy denies; the viewers do not allow POST.
    let v = decide(
        &[VIEWERS, DENY],
        "default/ratings-v1",
        Some(REVIEWS),
        "POST",
        "http://ratings:9080/health",
    );
    assert_eq!(summary(&v), expect("DENY", None, None));
    // Without the viewers, nothing else applies: the health POST is allowed.
    let v = decide(
        &[DENY],
        "default/ratings-v1",
        None,
        "POST",
        "http://ratings:9080/health",
    );
    assert_eq!(summary(&v), expect("ALLOW", None, None));
    // DENY-writes selects ratings only.
    let v = decide(
        &[DENY],
        "default/reviews-v1",
        None,
        "POST",
        "http://reviews:9080/x",
    );
    assert_eq!(summary(&v), expect("ALLOW", None, None));
}

#[test]
fn errors_and_human_output() {
    let out = meshctl(&[
        "authz",
        "--config",
        BASE,
        "--workload",
        "default/nope",
        "http://a/",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no WorkloadEntry default/nope"));
    let out = meshctl(&["authz", "--config", BASE, "--workload", "nope", "http://a/"]);
    assert_eq!(out.status.code(), Some(2));
    let out = meshctl(&[
        "authz",
        "--config",
        BASE,
        "--config",
        "examples/bookinfo/istio/security/authorization-deny-post.yaml",
        "--workload",
        "default/ratings-v1",
        "-X",
        "DELETE",
        "http://ratings:9080/ratings/0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision:  DENY"), "{text}");
    assert!(
        text.contains("policy:    default/deny-writes (DENY), rule #0 at examples/bookinfo/istio/security/authorization-deny-post.yaml:12"),
        "{text}"
    );
}
