//! Rate limit configuration: EnvoyFilter (Istio's "Enabling Rate Limits using Envoy"
//! shapes, read into typed Envoy configuration) and `LocalRateLimitPolicy`. Istio's task
//! files load without a diagnostic; every mistake is reported with its code, line and
//! field path; what the mesh reads without enforcing is `MESH0120` at its line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use mesh_config::model::envoy_filter::{Interpreted, PatchContext, interpret};
use mesh_config::model::envoy_ratelimit::{
    AppendAction, Denominator, HeaderMatchSpec, RateLimitAction, StringPattern, TokenBucket,
    XRateLimitHeaders, parse_proto_duration,
};
use mesh_config::model::{AnyResource, Kind};
use mesh_config::{ConfigSet, Severity};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/ratelimit"
    ))
    .join(name);
    std::fs::read_to_string(p).unwrap()
}

/// Every diagnostic of `yaml`: (code, line, path, severity).
fn diags(yaml: &str) -> Vec<(String, u32, String, Severity)> {
    let mut set = ConfigSet::new();
    set.add_str("t.yaml", yaml);
    set.check()
        .diagnostics
        .iter()
        // Istio's warning on relative patches in an EnvoyFilter without a priority (as in
        // Istio's own rate-limit task) is the conformance test's (istio_conformance.rs).
        .filter(|d| d.code.as_str() != "IST0151")
        .map(|d| {
            (
                d.code.as_str().to_string(),
                d.line().unwrap_or(0),
                d.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                d.severity,
            )
        })
        .collect()
}

fn interpreted(yaml: &str) -> Vec<Interpreted> {
    let mut set = ConfigSet::new();
    set.add_str("t.yaml", yaml);
    set.resources()
        .iter()
        .filter_map(|r| match r {
            AnyResource::EnvoyFilter(ef) => Some(interpret(ef).patches),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn istio_task_files_load_without_a_diagnostic() {
    for f in [
        "local-ratelimit.yaml",
        "local-ratelimit-per-route.yaml",
        "global-ratelimit.yaml",
        "global-ratelimit-api.yaml",
        "local-ratelimit-descriptors.yaml",
    ] {
        assert_eq!(diags(&fixture(f)), vec![], "{f}");
    }
}

#[test]
fn the_task_local_limit_reads_as_envoy_configures_it() {
    let p = interpreted(&fixture("local-ratelimit.yaml"));
    let [Interpreted::LocalRateLimitFilter { at, config }] = p.as_slice() else {
        panic!("{p:?}");
    };
    assert_eq!(at.context, PatchContext::SidecarInbound);
    assert_eq!(at.port, 0);
    assert_eq!(
        config.token_bucket,
        Some(TokenBucket {
            max_tokens: 4,
            tokens_per_fill: 4,
            fill_interval: Duration::from_secs(60),
        })
    );
    let enabled = config.filter_enabled.as_ref().unwrap();
    assert_eq!(enabled.default_value.per_million(), 1_000_000);
    assert_eq!(enabled.runtime_key, "local_rate_limit_enabled");
    assert_eq!(
        config
            .filter_enforced
            .as_ref()
            .unwrap()
            .default_value
            .denominator,
        Denominator::Hundred
    );
    assert_eq!(config.response_headers_to_add.len(), 1);
    let h = &config.response_headers_to_add[0];
    assert_eq!(
        (h.key.as_str(), h.value.as_str(), h.append),
        (
            "x-local-rate-limit",
            "true",
            AppendAction::OverwriteIfExistsOrAdd
        )
    );
    assert!(
        config.always_consume_default_token_bucket,
        "Envoy's default"
    );
    assert_eq!(config.status, None);
}

#[test]
fn the_descriptor_sample_reads_its_actions_and_descriptors() {
    let p = interpreted(&fixture("local-ratelimit-descriptors.yaml"));
    let Interpreted::RouteSettings {
        at,
        local,
        rate_limits,
    } = &p[1]
    else {
        panic!("{p:?}");
    };
    let vhost = at.route_configuration.vhost.as_ref().unwrap();
    assert_eq!(vhost.name, "inbound|http|8000");
    let local = local.as_ref().unwrap();
    assert_eq!(
        local.enable_x_ratelimit_headers,
        XRateLimitHeaders::DraftVersion03
    );
    assert_eq!(local.descriptors.len(), 1);
    assert_eq!(
        local.descriptors[0].entries,
        vec![("header_match".to_string(), "productpage".to_string())]
    );
    assert_eq!(local.descriptors[0].token_bucket.max_tokens, 10);
    assert_eq!(rate_limits.len(), 2);
    assert_eq!(rate_limits[0].actions, vec![RateLimitAction::RemoteAddress]);
    let RateLimitAction::HeaderValueMatch {
        descriptor_key,
        descriptor_value,
        expect_match,
        headers,
    } = &rate_limits[1].actions[0]
    else {
        panic!("{rate_limits:?}");
    };
    assert_eq!(
        (
            descriptor_key.as_str(),
            descriptor_value.as_str(),
            *expect_match
        ),
        ("header_match", "productpage", true)
    );
    let HeaderMatchSpec::String(m) = &headers[0].spec else {
        panic!("{headers:?}");
    };
    assert_eq!(m.pattern, StringPattern::Prefix("/productpage".into()));
    assert!(m.ignore_case);
}

#[test]
fn the_task_global_filter_reads_its_domain_failure_mode_and_timeout() {
    let p = interpreted(&fixture("global-ratelimit.yaml"));
    let Interpreted::GlobalRateLimitFilter { at, config } = &p[0] else {
        panic!("{p:?}");
    };
    assert_eq!(at.context, PatchContext::Gateway);
    assert_eq!(config.domain, "ratelimit");
    assert!(config.failure_mode_deny);
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(
        config.service_cluster,
        "outbound|8081||ratelimit.default.svc.cluster.local"
    );
    let Interpreted::RouteSettings { rate_limits, .. } = &p[1] else {
        panic!("{p:?}");
    };
    assert_eq!(
        rate_limits[0].actions,
        vec![RateLimitAction::RequestHeaders {
            header_name: ":path".into(),
            descriptor_key: "PATH".into(),
            skip_if_absent: false,
        }]
    );
}

/// An EnvoyFilter of one HTTP_FILTER patch adding the local rate limit filter with
/// `config` (the LocalRateLimit's fields, indented by 10) at line 15.
fn local_filter(config: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: limit, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: SIDECAR_INBOUND}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: limit
{config}"#
    )
}

const VALUE: &str = "spec.configPatches[0].patch.value.typed_config";

#[test]
fn malformed_local_rate_limits_are_errors_at_their_field() {
    let table: Vec<(&str, &str, u32, String)> = vec![
        (
            "          token_bucket: {max_tokens: -1, fill_interval: 1s}\n",
            "MESH0112",
            16,
            format!("{VALUE}.token_bucket.max_tokens"),
        ),
        (
            "          token_bucket: {max_tokens: 4, tokens_per_fill: 0, fill_interval: 1s}\n",
            "MESH0112",
            16,
            format!("{VALUE}.token_bucket.tokens_per_fill"),
        ),
        (
            "          token_bucket:\n            max_tokens: 4\n",
            "MESH0005",
            16,
            format!("{VALUE}.token_bucket"),
        ),
        (
            "          token_bucket: {max_tokens: 4, fill_interval: 0s}\n",
            "MESH0112",
            16,
            format!("{VALUE}.token_bucket.fill_interval"),
        ),
        (
            "          token_bucket: {max_tokens: 4, fill_interval: 0.01s}\n",
            "MESH0112",
            16,
            format!("{VALUE}.token_bucket.fill_interval"),
        ),
        (
            "          token_bucket: {max_tokens: 4, fill_interval: 200ms}\n",
            "MESH0103",
            16,
            format!("{VALUE}.token_bucket.fill_interval"),
        ),
        (
            "          token_bucket: {max_tokens: four, fill_interval: 1s}\n",
            "MESH0003",
            16,
            format!("{VALUE}.token_bucket.max_tokens"),
        ),
        (
            "          filter_enabled:\n            default_value: {numerator: 100, denominator: THOUSAND}\n",
            "MESH0006",
            17,
            format!("{VALUE}.filter_enabled.default_value.denominator"),
        ),
        (
            "          filter_enforced:\n            runtime_key: x\n",
            "MESH0005",
            16,
            format!("{VALUE}.filter_enforced"),
        ),
        (
            "          descriptors:\n          - entries: [{key: a, value: b}]\n",
            "MESH0005",
            17,
            format!("{VALUE}.descriptors[0]"),
        ),
        (
            "          descriptors:\n          - entries: [{key: a, value: b}]\n            token_bucket: {max_tokens: 1, fill_interval: 1s}\n          - entries: [{key: a, value: b}]\n            token_bucket: {max_tokens: 2, fill_interval: 1s}\n",
            "MESH0112",
            19,
            format!("{VALUE}.descriptors[1]"),
        ),
        (
            "          status: {code: 42}\n",
            "MESH0112",
            16,
            format!("{VALUE}.status.code"),
        ),
        (
            "          enable_x_ratelimit_headers: DRAFT_VERSION_04\n",
            "MESH0006",
            16,
            format!("{VALUE}.enable_x_ratelimit_headers"),
        ),
        (
            "          response_headers_to_add:\n          - append: false\n            append_action: ADD_IF_ABSENT\n            header: {key: x-a, value: b}\n",
            "MESH0112",
            17,
            format!("{VALUE}.response_headers_to_add[0].append"),
        ),
        (
            "          rate_limits:\n          - actions:\n            - request_headers: {descriptor_key: PATH}\n",
            "MESH0005",
            18,
            format!("{VALUE}.rate_limits[0].actions[0].request_headers"),
        ),
        (
            "          rate_limits:\n          - actions:\n            - header_value_match:\n                descriptor_value: api\n                headers: [{name: ':path', safe_regex_match: {regex: '(['}}]\n",
            "MESH0102",
            20,
            format!(
                "{VALUE}.rate_limits[0].actions[0].header_value_match.headers[0].safe_regex_match.regex"
            ),
        ),
        (
            "          rate_limits:\n          - actions:\n            - bogus_action: {}\n",
            "MESH0112",
            18,
            format!("{VALUE}.rate_limits[0].actions[0].bogus_action"),
        ),
    ];
    for (config, code, line, path) in table {
        let ds = diags(&local_filter(config));
        let errors: Vec<_> = ds.iter().filter(|d| d.3 == Severity::Error).collect();
        assert_eq!(
            errors,
            vec![&(code.to_string(), line, path.clone(), Severity::Error)],
            "{config}\n{ds:?}"
        );
    }
}

#[test]
fn fields_read_but_not_enforced_are_mesh0120_at_their_line() {
    let table: Vec<(&str, u32, String)> = vec![
        (
            "          local_rate_limit_per_downstream_connection: true\n",
            16,
            format!("{VALUE}.local_rate_limit_per_downstream_connection"),
        ),
        (
            "          local_cluster_rate_limit: {}\n",
            16,
            format!("{VALUE}.local_cluster_rate_limit"),
        ),
        // A typo is a field the mesh does not know: reported, not silently dropped.
        (
            "          token_bucket: {max_tokens: 1, fill_interval: 1s}\n          filter_enabeld: {}\n",
            17,
            format!("{VALUE}.filter_enabeld"),
        ),
        (
            "          rate_limits:\n          - actions:\n            - masked_remote_address: {}\n",
            18,
            format!("{VALUE}.rate_limits[0].actions[0].masked_remote_address"),
        ),
        (
            "          response_headers_to_add:\n          - header: {key: x-a, value: '%START_TIME%'}\n",
            17,
            format!("{VALUE}.response_headers_to_add[0].header.value"),
        ),
    ];
    for (config, line, path) in table {
        let ds = diags(&local_filter(config));
        assert_eq!(
            ds,
            vec![(
                "MESH0120".to_string(),
                line,
                path.clone(),
                Severity::Warning
            )],
            "{config}"
        );
    }
}

/// An EnvoyFilter with one patch (`patch`, the list item's fields indented by 4).
fn one_patch(patch: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: p, namespace: istio-system}}\nspec:\n  configPatches:\n  - {}\n",
        patch.trim_start()
    )
}

#[test]
fn other_patches_are_parsed_and_reported_not_enforced() {
    let table: Vec<(&str, &str, u32, &str, Severity)> = vec![
        // Outbound traffic.
        (
            "applyTo: HTTP_FILTER\n    match: {context: SIDECAR_OUTBOUND}\n    patch:\n      operation: INSERT_BEFORE\n      value: {name: envoy.filters.http.local_ratelimit}\n",
            "MESH0120",
            6,
            "spec.configPatches[0]",
            Severity::Warning,
        ),
        // Another filter.
        (
            "applyTo: HTTP_FILTER\n    patch:\n      operation: ADD\n      value:\n        name: envoy.filters.http.lua\n        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}\n",
            "MESH0120",
            6,
            "spec.configPatches[0]",
            Severity::Warning,
        ),
        // A cluster, as the task's old global example adds one.
        (
            "applyTo: CLUSTER\n    match:\n      cluster: {service: ratelimit.default.svc.cluster.local}\n    patch:\n      operation: ADD\n      value: {name: rate_limit_cluster, type: STRICT_DNS}\n",
            "MESH0120",
            6,
            "spec.configPatches[0]",
            Severity::Warning,
        ),
        // Istio's webhook rules.
        (
            "patch:\n      operation: ADD\n      value: {name: x}\n",
            "MESH0005",
            6,
            "spec.configPatches[0].applyTo",
            Severity::Error,
        ),
        (
            "applyTo: HTTP_FILTER\n    patch: {operation: INSERT_FIRST}\n",
            "MESH0005",
            7,
            "spec.configPatches[0].patch.value",
            Severity::Error,
        ),
        (
            "applyTo: CLUSTER\n    match:\n      listener: {portNumber: 80}\n    patch: {operation: REMOVE}\n",
            "MESH0112",
            7,
            "spec.configPatches[0].match",
            Severity::Error,
        ),
        (
            "applyTo: HTTP_FILTER\n    match:\n      listener:\n        filterChain:\n          filter:\n            name: envoy.filters.network.tcp_proxy\n            subFilter: {name: envoy.filters.http.router}\n    patch: {operation: REMOVE}\n",
            "MESH0112",
            12,
            "spec.configPatches[0].match.listener.filterChain.filter.subFilter",
            Severity::Error,
        ),
        (
            "applyTo: HTTP_FILTER\n    match:\n      proxy: {proxyVersion: '^1\\.(2'}\n    patch: {operation: REMOVE}\n",
            "MESH0102",
            8,
            "spec.configPatches[0].match.proxy.proxyVersion",
            Severity::Error,
        ),
    ];
    for (patch, code, line, path, sev) in table {
        let ds = diags(&one_patch(patch));
        assert!(
            ds.contains(&(code.to_string(), line, path.to_string(), sev)),
            "{patch}\n{ds:?}"
        );
        if sev == Severity::Warning {
            assert!(ds.iter().all(|d| d.3 == Severity::Warning), "{ds:?}");
        }
    }
}

#[test]
fn envoy_filter_is_served_as_v1alpha3_only_and_its_selector_is_exclusive() {
    let ds = diags(
        "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: x}\nspec: {}\n",
    );
    assert_eq!(
        ds,
        vec![(
            "MESH0007".to_string(),
            1,
            "apiVersion".to_string(),
            Severity::Error
        )]
    );
    let ds = diags(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: x}\nspec:\n  workloadSelector: {labels: {app: a}}\n  targetRefs: [{kind: Gateway, name: gw}]\n  configPatches: [{applyTo: HTTP_FILTER, patch: {operation: REMOVE}}]\n",
    );
    assert!(
        ds.contains(&(
            "MESH0107".to_string(),
            6,
            "spec.targetRefs".to_string(),
            Severity::Error
        )),
        "{ds:?}"
    );
    assert_eq!(Kind::from_cli_name("envoyfilters"), Some(Kind::EnvoyFilter));
    assert_eq!(
        Kind::EnvoyFilter.api_versions(),
        vec!["networking.istio.io/v1alpha3".to_string()]
    );
}

#[test]
fn deprecated_filter_names_are_warned_about() {
    let ds = diags(&one_patch(
        "applyTo: HTTP_FILTER\n    match:\n      context: GATEWAY\n      listener:\n        filterChain:\n          filter:\n            name: envoy.http_connection_manager\n            subFilter: {name: envoy.router}\n    patch: {operation: REMOVE}\n",
    ));
    let deprecated: Vec<_> = ds
        .iter()
        .filter(|d| d.0 == "IST0002")
        .map(|d| (d.1, d.2.as_str()))
        .collect();
    assert_eq!(
        deprecated,
        vec![
            (
                12,
                "spec.configPatches[0].match.listener.filterChain.filter.name"
            ),
            (
                13,
                "spec.configPatches[0].match.listener.filterChain.filter.subFilter.name"
            ),
        ]
    );
}

/// A LocalRateLimitPolicy with `spec` (indented by 2) from line 5.
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: mesh.rs/v1alpha1\nkind: LocalRateLimitPolicy\nmetadata: {{name: productpage, namespace: default}}\nspec:\n{spec}"
    )
}

#[test]
fn local_rate_limit_policies_are_validated() {
    assert_eq!(
        diags(&policy(
            "  workloadSelector: {labels: {app: productpage}}\n  total: {requestsPerSecond: 100, burst: 200}\n  identity: {requestsPerSecond: 20}\n  overrides:\n  - requestsPerSecond: 50\n    clientRefs: [{kind: ServiceAccount, namespace: default, name: bookinfo-reviews}]\n"
        )),
        vec![]
    );
    let table: Vec<(&str, &str, u32, &str, Severity)> = vec![
        (
            "  total: {requestsPerSecond: 0}\n",
            "MESH0112",
            5,
            "spec.total.requestsPerSecond",
            Severity::Error,
        ),
        (
            "  total: {requestsPerSecond: -3}\n",
            "MESH0003",
            5,
            "spec.total.requestsPerSecond",
            Severity::Error,
        ),
        (
            "  total: {requestsPerSecond: 3, requestsPerMinute: 4}\n",
            "MESH0107",
            5,
            "spec.total",
            Severity::Error,
        ),
        (
            "  total: {burst: 3}\n",
            "MESH0005",
            5,
            "spec.total",
            Severity::Error,
        ),
        (
            "  total: {requestsPerMinute: 4, burst: 0}\n",
            "MESH0112",
            5,
            "spec.total.burst",
            Severity::Error,
        ),
        (
            "  total: {requestsPerMinute: 60}\n  identity: {requestsPerSecond: 2}\n",
            "MESH0112",
            6,
            "spec.identity",
            Severity::Error,
        ),
        (
            "  total: {requestsPerSecond: 10}\n  overrides:\n  - requestsPerSecond: 20\n    clientRefs: [{kind: ServiceAccount, name: a}]\n",
            "MESH0112",
            7,
            "spec.overrides[0]",
            Severity::Error,
        ),
        (
            "  overrides:\n  - requestsPerSecond: 2\n",
            "MESH0005",
            6,
            "spec.overrides[0].clientRefs",
            Severity::Error,
        ),
        (
            "  overrides:\n  - requestsPerSecond: 2\n    clientRefs: [{kind: Pod, name: a}]\n",
            "MESH0112",
            7,
            "spec.overrides[0].clientRefs[0].kind",
            Severity::Error,
        ),
        (
            "  overrides:\n  - requestsPerSecond: 2\n    clientRefs: [{kind: ServiceAccount, name: a}]\n  - requestsPerSecond: 3\n    clientRefs:\n    - {kind: ServiceAccount, namespace: default, name: a}\n",
            "MESH0113",
            10,
            "spec.overrides[1].clientRefs[0]",
            Severity::Error,
        ),
        (
            "  identity: {requestsPerSecond: 2, brust: 3}\n",
            "MESH0004",
            5,
            "spec.identity.brust",
            Severity::Error,
        ),
        (
            "  workloadSelector: {labels: {app: productpage}}\n",
            "MESH0112",
            4,
            "spec",
            Severity::Warning,
        ),
    ];
    for (spec, code, line, path, sev) in table {
        let ds = diags(&policy(spec));
        assert_eq!(
            ds,
            vec![(code.to_string(), line, path.to_string(), sev)],
            "{spec}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(9), ..ProptestConfig::default() })]

    /// Envoy durations: every `<secs>.<frac>s` reads back exactly; anything else is an
    /// error, never a panic.
    #[test]
    fn envoy_durations_read_back(secs in 0u64..1_000_000, nanos in 0u32..1_000_000_000, junk in ".{0,12}") {
        let text = format!("{secs}.{nanos:09}s");
        prop_assert_eq!(parse_proto_duration(&text), Ok(Duration::new(secs, nanos)));
        let _ = parse_proto_duration(&junk);
    }

    /// Any value in a token bucket is read or reported, never a panic; valid ones read
    /// back.
    #[test]
    fn token_buckets_are_read_or_reported(max in any::<i64>(), per_fill in any::<i64>(), ms in 0u64..10_000_000) {
        let yaml = local_filter(&format!(
            "          token_bucket: {{max_tokens: {max}, tokens_per_fill: {per_fill}, fill_interval: {}.{:03}s}}\n          filter_enabled: {{default_value: {{numerator: 100}}}}\n",
            ms / 1000,
            ms % 1000
        ));
        let errors = diags(&yaml).into_iter().filter(|d| d.3 == Severity::Error).count();
        let valid = (0..=i64::from(u32::MAX)).contains(&max)
            && (1..=i64::from(u32::MAX)).contains(&per_fill)
            && ms > 0
            && (ms >= 50 || max == 0);
        prop_assert_eq!(errors == 0, valid, "{}", yaml);
        if valid {
            let p = interpreted(&yaml);
            let Interpreted::LocalRateLimitFilter { config, .. } = &p[0] else { panic!() };
            prop_assert_eq!(config.token_bucket, Some(TokenBucket {
                max_tokens: u32::try_from(max).unwrap(),
                tokens_per_fill: u32::try_from(per_fill).unwrap(),
                fill_interval: Duration::from_millis(ms),
            }));
        }
    }
}

/// Where a patch puts a rate limit filter in Istio's chain, against where the mesh runs
/// it: the local filter before authentication and authorization, the global one after
/// them (each where Istio's task inserts it). A patch placing either on the other side
/// is reported `MESH0120` at its operation; Istio's own placements are not.
#[test]
fn a_rate_limit_filter_placed_across_authorization_is_reported() {
    let global = "envoy.filters.http.ratelimit\n        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, domain: d, rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}}, transport_api_version: V3}}";
    let local = "envoy.filters.http.local_ratelimit\n        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: s}";
    // (filter, operation, sub-filter, reported)
    let table: Vec<(&str, &str, Option<&str>, bool)> = vec![
        (
            global,
            "INSERT_BEFORE",
            Some("envoy.filters.http.router"),
            false,
        ),
        (
            global,
            "INSERT_AFTER",
            Some("envoy.filters.http.rbac"),
            false,
        ),
        (global, "ADD", None, false),
        (global, "INSERT_FIRST", None, true),
        (global, "INSERT_BEFORE", None, true),
        (
            global,
            "INSERT_BEFORE",
            Some("envoy.filters.http.jwt_authn"),
            true,
        ),
        (local, "INSERT_BEFORE", None, false),
        (local, "INSERT_FIRST", None, false),
        (
            local,
            "INSERT_BEFORE",
            Some("envoy.filters.http.rbac"),
            false,
        ),
        (
            local,
            "INSERT_BEFORE",
            Some("envoy.filters.http.router"),
            true,
        ),
        (local, "INSERT_AFTER", Some("envoy.filters.http.rbac"), true),
        (local, "ADD", None, true),
    ];
    for (filter, operation, sub, reported) in table {
        // The operation's line: after the sub-filter's, when there is one.
        let line = 14 + u32::from(sub.is_some());
        let sub = sub.map_or(String::new(), |s| {
            format!("\n            subFilter: {{name: {s}}}")
        });
        let yaml = one_patch(&format!(
            "applyTo: HTTP_FILTER\n    match:\n      context: SIDECAR_INBOUND\n      listener:\n        filterChain:\n          filter:\n            name: envoy.filters.network.http_connection_manager{sub}\n    patch:\n      operation: {operation}\n      value:\n        name: {filter}\n"
        ));
        // Nothing else is reported: the filter itself reads cleanly.
        let found = diags(&yaml);
        let want = if reported {
            vec![(
                "MESH0120".to_string(),
                line,
                "spec.configPatches[0].patch.operation".to_string(),
                Severity::Warning,
            )]
        } else {
            vec![]
        };
        assert_eq!(found, want, "{operation} {sub} {filter}");
    }
}
