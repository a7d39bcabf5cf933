//! Table tests of every source, operation and `when` field.

use super::*;

#[test]
fn source_fields() {
    let yaml = [
        ap(
            "foo",
            "principals",
            "  rules:\n  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep, \"cluster.local/ns/qa/*\", \"*/sa/admin\"]}}]\n    to: [{operation: {paths: [/principals]}}]",
        ),
        ap(
            "foo",
            "any-principal",
            "  rules:\n  - from: [{source: {principals: [\"*\"]}}]\n    to: [{operation: {paths: [/authenticated]}}]",
        ),
        ap(
            "foo",
            "namespaces",
            "  rules:\n  - from: [{source: {namespaces: [bar, \"te*\"], notNamespaces: [temp]}}]\n    to: [{operation: {paths: [/namespaces]}}]",
        ),
        ap(
            "foo",
            "not-principals",
            "  rules:\n  - from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/sleep]}}]\n    to: [{operation: {paths: [/not-sleep]}}]",
        ),
        ap(
            "foo",
            "ip-blocks",
            "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/16], notIpBlocks: [10.0.9.0/24]}}]\n    to: [{operation: {paths: [/ips]}}]",
        ),
        ap(
            "foo",
            "remote-ip-blocks",
            "  rules:\n  - from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]\n    to: [{operation: {paths: [/remote]}}]",
        ),
        ap(
            "foo",
            "request-principals",
            "  rules:\n  - from: [{source: {requestPrincipals: [\"testing@secure.istio.io/testing@secure.istio.io\", \"*/admin\", \"https://acme/*\"]}}]\n    to: [{operation: {paths: [/jwt]}}]",
        ),
        ap(
            "foo",
            "any-request-principal",
            "  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n    to: [{operation: {paths: [/any-jwt]}}]",
        ),
        ap(
            "foo",
            "no-request-principal",
            "  rules:\n  - from: [{source: {notRequestPrincipals: [\"*\"]}}]\n    to: [{operation: {paths: [/anonymous]}}]",
        ),
        ap(
            "foo",
            "service-accounts",
            "  rules:\n  - from: [{source: {serviceAccounts: [sleep, bar/client]}}]\n    to: [{operation: {paths: [/sa]}}]",
        ),
        ap(
            "foo",
            "trust-domains",
            "  rules:\n  - from: [{source: {trustDomains: [cluster.local]}}]\n    to: [{operation: {paths: [/td]}}]",
        ),
        ap(
            "foo",
            "not-trust-domains",
            "  rules:\n  - from: [{source: {notTrustDomains: [\"other.*\"]}}]\n    to: [{operation: {paths: [/not-td]}}]",
        ),
    ]
    .concat();
    let p = |path: &'static str| Req { path, ..req() };
    run(
        &yaml,
        vec![
            (
                "exact principal",
                p("/principals"),
                true,
                Some("principals"),
            ),
            (
                "prefix principal",
                Req {
                    peer: Some("spiffe://cluster.local/ns/qa/sa/x"),
                    ..p("/principals")
                },
                true,
                Some("principals"),
            ),
            (
                "suffix principal",
                Req {
                    peer: Some("spiffe://any.td/ns/x/sa/admin"),
                    ..p("/principals")
                },
                true,
                Some("principals"),
            ),
            (
                "another principal",
                Req {
                    peer: Some(BAR),
                    ..p("/principals")
                },
                false,
                None,
            ),
            (
                "plaintext has no principal",
                Req {
                    peer: None,
                    ..p("/principals")
                },
                false,
                None,
            ),
            (
                "* needs an authenticated peer",
                p("/authenticated"),
                true,
                Some("any-principal"),
            ),
            (
                "* refuses plaintext",
                Req {
                    peer: None,
                    ..p("/authenticated")
                },
                false,
                None,
            ),
            (
                "namespace bar",
                Req {
                    peer: Some(BAR),
                    ..p("/namespaces")
                },
                true,
                Some("namespaces"),
            ),
            (
                "namespace glob te*",
                Req {
                    peer: Some("spiffe://cluster.local/ns/test/sa/a"),
                    ..p("/namespaces")
                },
                true,
                Some("namespaces"),
            ),
            (
                "notNamespaces wins over the glob",
                Req {
                    peer: Some("spiffe://cluster.local/ns/temp/sa/a"),
                    ..p("/namespaces")
                },
                false,
                None,
            ),
            ("namespace foo is not listed", p("/namespaces"), false, None),
            ("notPrincipals excludes sleep", p("/not-sleep"), false, None),
            (
                "notPrincipals lets bar in",
                Req {
                    peer: Some(BAR),
                    ..p("/not-sleep")
                },
                true,
                Some("not-principals"),
            ),
            (
                "notPrincipals lets plaintext in",
                Req {
                    peer: None,
                    ..p("/not-sleep")
                },
                true,
                Some("not-principals"),
            ),
            ("ipBlocks contains", p("/ips"), true, Some("ip-blocks")),
            (
                "notIpBlocks excludes",
                Req {
                    source_ip: "10.0.9.7",
                    ..p("/ips")
                },
                false,
                None,
            ),
            (
                "ipBlocks outside",
                Req {
                    source_ip: "10.1.0.1",
                    ..p("/ips")
                },
                false,
                None,
            ),
            (
                "remoteIpBlocks read the original client",
                Req {
                    remote_ip: Some("192.0.2.9"),
                    ..p("/remote")
                },
                true,
                Some("remote-ip-blocks"),
            ),
            (
                "remoteIpBlocks default to the peer",
                p("/remote"),
                false,
                None,
            ),
            (
                "exact request principal",
                Req {
                    jwt: Some(("testing@secure.istio.io", "testing@secure.istio.io")),
                    ..p("/jwt")
                },
                true,
                Some("request-principals"),
            ),
            (
                "*/admin: any issuer, subject admin",
                Req {
                    jwt: Some(("https://idp", "admin")),
                    ..p("/jwt")
                },
                true,
                Some("request-principals"),
            ),
            (
                "https://acme/*: issuer https://acme, any subject",
                Req {
                    jwt: Some(("https://acme", "alice")),
                    ..p("/jwt")
                },
                true,
                Some("request-principals"),
            ),
            (
                "issuer https://acme/x is not https://acme",
                Req {
                    jwt: Some(("https://acme/x", "alice")),
                    ..p("/jwt")
                },
                false,
                None,
            ),
            ("no token, no request principal", p("/jwt"), false, None),
            (
                "requestPrincipals * needs a token",
                Req {
                    jwt: Some(("a", "b")),
                    ..p("/any-jwt")
                },
                true,
                Some("any-request-principal"),
            ),
            (
                "requestPrincipals * without a token",
                p("/any-jwt"),
                false,
                None,
            ),
            (
                "notRequestPrincipals * admits anonymous",
                p("/anonymous"),
                true,
                Some("no-request-principal"),
            ),
            (
                "notRequestPrincipals * refuses a token",
                Req {
                    jwt: Some(("a", "b")),
                    ..p("/anonymous")
                },
                false,
                None,
            ),
            (
                "short service account in the policy's namespace",
                p("/sa"),
                true,
                Some("service-accounts"),
            ),
            (
                "ns/sa service account",
                Req {
                    peer: Some(BAR),
                    ..p("/sa")
                },
                true,
                Some("service-accounts"),
            ),
            (
                "sleep in another namespace is another account",
                Req {
                    peer: Some("spiffe://cluster.local/ns/bar/sa/sleep"),
                    ..p("/sa")
                },
                false,
                None,
            ),
            (
                "trust domain cluster.local",
                p("/td"),
                true,
                Some("trust-domains"),
            ),
            (
                "another trust domain",
                Req {
                    peer: Some(OTHER_TD),
                    ..p("/td")
                },
                false,
                None,
            ),
            (
                "notTrustDomains glob",
                Req {
                    peer: Some(OTHER_TD),
                    ..p("/not-td")
                },
                false,
                None,
            ),
            (
                "notTrustDomains lets cluster.local in",
                p("/not-td"),
                true,
                Some("not-trust-domains"),
            ),
        ],
    );
}

#[test]
fn operation_fields() {
    let yaml = [
        ap(
            "foo",
            "hosts",
            "  rules: [{to: [{operation: {hosts: [httpbin.foo, \"*.example.com\", \"api.*\"], paths: [/hosts]}}]}]",
        ),
        ap(
            "foo",
            "not-hosts",
            "  rules: [{to: [{operation: {notHosts: [\"*.internal\"], paths: [/not-hosts]}}]}]",
        ),
        ap(
            "foo",
            "methods",
            "  rules: [{to: [{operation: {methods: [GET, HEAD], notPaths: [\"/private*\"]}}]}]",
        ),
        ap(
            "foo",
            "ports",
            "  rules: [{to: [{operation: {ports: [\"9000\"], methods: [POST]}}]}]",
        ),
        ap(
            "foo",
            "not-ports",
            "  rules: [{to: [{operation: {notPorts: [\"9000\"], methods: [PUT]}}]}]",
        ),
        ap(
            "foo",
            "paths",
            "  rules: [{to: [{operation: {methods: [DELETE], paths: [/exact, \"/prefix/*\", \"*/suffix\", \"/tmpl/{*}/x\", \"/deep/{**}\"]}}]}]",
        ),
        ap(
            "foo",
            "not-methods",
            "  rules: [{to: [{operation: {notMethods: [GET, HEAD, POST, PUT, DELETE], paths: [/nm]}}]}]",
        ),
    ]
    .concat();
    let p = |path: &'static str| Req { path, ..req() };
    let del = |path: &'static str| Req {
        method: "DELETE",
        path,
        ..req()
    };
    run(
        &yaml,
        vec![
            // GET requests are allowed by `methods` unless the path is private; the cases
            // below use /hosts etc. with other methods to reach the other policies.
            ("GET on a public path", p("/get"), true, Some("methods")),
            ("GET on a private path", p("/private/x"), false, None),
            (
                "host exact, case-insensitive",
                Req {
                    method: "OPTIONS",
                    host: "HTTPBIN.foo",
                    ..p("/hosts")
                },
                true,
                Some("hosts"),
            ),
            (
                "host with a port is another host",
                Req {
                    method: "OPTIONS",
                    host: "httpbin.foo:8000",
                    ..p("/hosts")
                },
                false,
                None,
            ),
            (
                "host suffix",
                Req {
                    method: "OPTIONS",
                    host: "www.example.com",
                    ..p("/hosts")
                },
                true,
                Some("hosts"),
            ),
            (
                "host prefix",
                Req {
                    method: "OPTIONS",
                    host: "api.acme",
                    ..p("/hosts")
                },
                true,
                Some("hosts"),
            ),
            (
                "notHosts excludes",
                Req {
                    method: "OPTIONS",
                    host: "db.internal",
                    ..p("/not-hosts")
                },
                false,
                None,
            ),
            (
                "notHosts admits",
                Req {
                    method: "OPTIONS",
                    host: "db.external",
                    ..p("/not-hosts")
                },
                true,
                Some("not-hosts"),
            ),
            (
                "method HEAD",
                Req {
                    method: "HEAD",
                    ..p("/x")
                },
                true,
                Some("methods"),
            ),
            (
                "methods are case-sensitive",
                Req {
                    method: "get",
                    ..p("/nm")
                },
                true,
                Some("not-methods"),
            ),
            (
                "port 9000 POST",
                Req {
                    method: "POST",
                    port: 9000,
                    ..p("/x")
                },
                true,
                Some("ports"),
            ),
            (
                "port 8000 POST",
                Req {
                    method: "POST",
                    ..p("/x")
                },
                false,
                None,
            ),
            (
                "notPorts PUT on 8000",
                Req {
                    method: "PUT",
                    ..p("/x")
                },
                true,
                Some("not-ports"),
            ),
            (
                "notPorts PUT on 9000",
                Req {
                    method: "PUT",
                    port: 9000,
                    ..p("/x")
                },
                false,
                None,
            ),
            ("path exact", del("/exact"), true, Some("paths")),
            ("path exact, not a prefix", del("/exact/more"), false, None),
            ("path prefix", del("/prefix/a/b"), true, Some("paths")),
            ("path suffix", del("/a/b/suffix"), true, Some("paths")),
            (
                "template one segment",
                del("/tmpl/abc/x"),
                true,
                Some("paths"),
            ),
            ("template one segment only", del("/tmpl/a/b/x"), false, None),
            (
                "template any segments",
                del("/deep/a/b/c"),
                true,
                Some("paths"),
            ),
            ("paths are case-sensitive", del("/EXACT"), false, None),
            (
                "notMethods admits PATCH",
                Req {
                    method: "PATCH",
                    ..p("/nm")
                },
                true,
                Some("not-methods"),
            ),
            (
                "notMethods refuses DELETE",
                Req {
                    method: "DELETE",
                    ..p("/nm")
                },
                false,
                None,
            ),
        ],
    );
}

#[test]
fn when_conditions() {
    let yaml = [
        ap(
            "foo",
            "header",
            "  rules:\n  - to: [{operation: {paths: [/header]}}]\n    when: [{key: \"request.headers[X-Token]\", values: [secret, \"pre*\"], notValues: [prefix-banned]}]",
        ),
        ap(
            "foo",
            "header-present",
            "  rules:\n  - to: [{operation: {paths: [/present]}}]\n    when: [{key: \"request.headers[x-flag]\", values: [\"*\"]}]",
        ),
        ap(
            "foo",
            "source-ns",
            "  rules:\n  - to: [{operation: {paths: [/when-ns]}}]\n    when: [{key: source.namespace, values: [bar]}]",
        ),
        ap(
            "foo",
            "source-principal",
            "  rules:\n  - to: [{operation: {paths: [/when-principal]}}]\n    when: [{key: source.principal, notValues: [cluster.local/ns/foo/sa/sleep]}]",
        ),
        ap(
            "foo",
            "ips",
            "  rules:\n  - to: [{operation: {paths: [/when-ip]}}]\n    when: [{key: source.ip, values: [10.0.0.0/8]}, {key: destination.ip, values: [10.0.1.1]}, {key: remote.ip, notValues: [10.0.0.6]}]",
        ),
        ap(
            "foo",
            "port-sni",
            "  rules:\n  - to: [{operation: {paths: [/when-port]}}]\n    when: [{key: destination.port, values: [\"8000\"]}, {key: connection.sni, values: [\"*.foo.svc.cluster.local\"]}]",
        ),
        ap(
            "foo",
            "claims",
            "  rules:\n  - to: [{operation: {paths: [/claims]}}]\n    when:\n    - {key: \"request.auth.claims[groups]\", values: [group1]}\n    - {key: \"request.auth.claims[nested][role]\", values: [\"adm*\"]}\n    - {key: request.auth.audiences, values: [bookinfo]}\n    - {key: request.auth.presenter, values: [\"*\"]}\n    - {key: request.auth.principal, values: [\"issuer/*\"]}",
        ),
    ]
    .concat();
    let p = |path: &'static str| Req { path, ..req() };
    let with_claims = Req {
        jwt: Some(("issuer", "alice")),
        claims: &[],
        ..p("/claims")
    };
    run(
        &yaml,
        vec![
            (
                "header exact",
                Req {
                    headers: &[("x-token", "secret")],
                    ..p("/header")
                },
                true,
                Some("header"),
            ),
            (
                "header prefix",
                Req {
                    headers: &[("x-token", "preview")],
                    ..p("/header")
                },
                true,
                Some("header"),
            ),
            (
                "header notValues",
                Req {
                    headers: &[("x-token", "prefix-banned")],
                    ..p("/header")
                },
                false,
                None,
            ),
            ("header absent", p("/header"), false, None),
            (
                "header present with an empty value",
                Req {
                    headers: &[("x-flag", "")],
                    ..p("/present")
                },
                true,
                Some("header-present"),
            ),
            (
                "source.namespace bar",
                Req {
                    peer: Some(BAR),
                    ..p("/when-ns")
                },
                true,
                Some("source-ns"),
            ),
            ("source.namespace foo", p("/when-ns"), false, None),
            (
                "source.principal notValues",
                p("/when-principal"),
                false,
                None,
            ),
            (
                "source.principal notValues admits bar",
                Req {
                    peer: Some(BAR),
                    ..p("/when-principal")
                },
                true,
                Some("source-principal"),
            ),
            ("ip conditions all hold", p("/when-ip"), true, Some("ips")),
            (
                "remote.ip notValues",
                Req {
                    remote_ip: Some("10.0.0.6"),
                    ..p("/when-ip")
                },
                false,
                None,
            ),
            (
                "destination.ip differs",
                Req {
                    destination_ip: "10.0.1.2",
                    ..p("/when-ip")
                },
                false,
                None,
            ),
            (
                "port and SNI",
                Req {
                    sni: Some("outbound_.8000_._.httpbin.foo.svc.cluster.local"),
                    ..p("/when-port")
                },
                true,
                Some("port-sni"),
            ),
            ("SNI absent in plaintext", p("/when-port"), false, None),
            ("claims without a token", p("/claims"), false, None),
            (
                "a token without the claims",
                with_claims.clone(),
                false,
                None,
            ),
        ],
    );
    // Claims need owned values: checked separately.
    let all = policies(&yaml);
    let claims = [
        ("groups", Claim::List(vec![s("group0"), s("group1")])),
        (
            "nested",
            Claim::Object([("role".to_string(), s("admin"))].into()),
        ),
        ("aud", s("bookinfo")),
        ("azp", s("frontend")),
    ];
    let leaked: &'static [(&'static str, Claim)] = Box::leak(Box::new(claims));
    let ok = Req {
        claims: leaked,
        ..with_claims.clone()
    };
    assert_eq!(
        decide_with(&all, &ok),
        (true, Some("claims".into())),
        "claims all match"
    );
    let wrong_issuer = Req {
        jwt: Some(("other", "alice")),
        ..ok.clone()
    };
    assert_eq!(decide_with(&all, &wrong_issuer), (false, None), "issuer/*");
    let missing_group: &'static [(&'static str, Claim)] = Box::leak(Box::new([
        ("groups", s("group0")),
        ("aud", s("bookinfo")),
        ("azp", s("x")),
    ]));
    let no_group = Req {
        claims: missing_group,
        ..ok
    };
    assert_eq!(
        decide_with(&all, &no_group),
        (false, None),
        "groups lacks group1"
    );
}
