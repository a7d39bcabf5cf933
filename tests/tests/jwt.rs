//! RequestAuthentication end to end: Istio's "JWT authentication" task redone on a
//! workload served by `Mesh::serve` with its inbound policies, with Istio's own sample
//! keys and tokens (tests/fixtures/jwt, see its NOTICE), the JWKS fetched over the mesh
//! from a server on 127.0.0.1 — and what Envoy does around it: the reasons of its `401`s,
//! a fetch failure that never opens the door, token locations, header outputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_config::ConfigSet;
use mesh_core::authz::{Claim, RequestAuth};
use mesh_tests::checked;
use mesh_tower::{MeshRuntime, Workload};
use tokio::net::TcpListener;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt")).join(name);
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

const ISSUER: &str = "testing@secure.istio.io";

/// A token signed with Istio's sample key (`kid` of its JWKS) with `claims`.
fn sign(claims: serde_json::Value) -> String {
    let jwks: serde_json::Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("key.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A server of Istio's JWKS on 127.0.0.1, counting its requests.
async fn jwks_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let jwks = fixture("jwks.json");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (jwks, counter) = (jwks.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, hits)
}

/// httpbin's stand-in: answers with the request principal, the claims authorization
/// saw, and the headers the application received.
async fn httpbin(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = req.extensions().get::<RequestAuth>();
    let groups = match auth.and_then(|a| a.claims.get("groups")) {
        Some(Claim::List(l)) => l.len(),
        _ => 0,
    };
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "principal={} groups={groups} authorization={} x-jwt-sub={} x-payload={}",
        auth.map_or("-".to_string(), |a| format!("{}/{}", a.issuer, a.subject)),
        if header("authorization") == "-" {
            "absent"
        } else {
            "present"
        },
        header("x-jwt-sub"),
        if header("x-payload") == "-" {
            "absent"
        } else {
            "present"
        },
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

struct Httpbin {
    runtime: MeshRuntime,
    port: u16,
}

fn config(port: u16, extra: &str) -> mesh_config::Snapshot {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: foo}}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: foo}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: httpbin}}
  serviceAccount: httpbin
{extra}"#
    );
    let mut set = ConfigSet::new();
    set.add_str("mesh.yaml", &yaml);
    checked(&set)
}

impl Httpbin {
    async fn start(extra: &str) -> Httpbin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = MeshRuntime::from_snapshot(&config(port, extra));
        let mesh = runtime.workload(
            Workload::new("httpbin", "foo")
                .labels([("app", "httpbin")])
                .service_account("httpbin"),
        );
        let app = tower::ServiceBuilder::new()
            .layer(mesh.inbound())
            .service(tower::service_fn(httpbin));
        tokio::spawn(async move { mesh.serve(listener, app).await });
        Httpbin { runtime, port }
    }

    fn update(&self, extra: &str) {
        self.runtime.update(&config(self.port, extra));
    }

    /// GET `path` from outside the mesh with `headers`: status and body.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut headers = headers.to_vec();
        headers.push(("host", "httpbin.foo:8000"));
        mesh_tests::plaintext(([127, 0, 0, 1], self.port).into(), "GET", path, &headers)
            .await
            .unwrap()
    }
}

fn request_authentication(jwks_port: u16, extra_rule: &str) -> String {
    format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    jwksUri: "http://127.0.0.1:{jwks_port}/jwks.json"
{extra_rule}"#
    )
}

const REQUIRE_JWT: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
"#;

const REQUIRE_GROUP1: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
    when: [{key: "request.auth.claims[groups]", values: ["group1"]}]
"#;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn istios_jwt_authentication_task() {
    let (jwks_port, _) = jwks_server().await;
    let httpbin = Httpbin::start(&request_authentication(jwks_port, "")).await;
    let demo = fixture("demo.jwt");
    let groups = fixture("groups-scope.jwt");

    // An invalid token is refused; no token passes authentication.
    let (status, body) = httpbin
        .get("/headers", &[("authorization", "Bearer invalidToken")])
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )
    );
    let (status, body) = httpbin.get("/headers", &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("principal=- "), "{body}");

    // A valid token: its principal and claims reach authorization and the application,
    // and the token itself is not forwarded (forwardOriginalToken is false).
    let (status, body) = httpbin
        .get("/headers", &[("authorization", &bearer(&demo))])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("principal=testing@secure.istio.io/testing@secure.istio.io groups=0 authorization=absent"),
        "{body}"
    );

    // require-jwt: a request without a token is now denied.
    httpbin.update(&format!(
        "{}{REQUIRE_JWT}",
        request_authentication(jwks_port, "")
    ));
    assert_eq!(
        httpbin.get("/headers", &[]).await,
        (403, "RBAC: access denied".into())
    );
    assert_eq!(
        httpbin
            .get("/headers", &[("authorization", &bearer(&demo))])
            .await
            .0,
        200
    );

    // request.auth.claims[groups]: only the token of group1 passes.
    httpbin.update(&format!(
        "{}{REQUIRE_GROUP1}",
        request_authentication(jwks_port, "")
    ));
    assert_eq!(
        httpbin
            .get("/headers", &[("authorization", &bearer(&demo))])
            .await,
        (403, "RBAC: access denied".into())
    );
    let (status, body) = httpbin
        .get("/headers", &[("authorization", &bearer(&groups))])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("groups=2"), "{body}");
}

#[tokio::test]
async fn invalid_tokens_get_envoys_reasons() {
    let (jwks_port, _) = jwks_server().await;
    let httpbin = Httpbin::start(&request_authentication(
        jwks_port,
        "    audiences: [httpbin.foo]\n",
    ))
    .await;
    let t = now();
    let cases = [
        (
            "expired",
            sign(
                serde_json::json!({"iss": ISSUER, "sub": "a", "aud": "httpbin.foo", "exp": t - 3600}),
            ),
            "Jwt is expired",
        ),
        (
            "not yet valid",
            sign(
                serde_json::json!({"iss": ISSUER, "sub": "a", "aud": "httpbin.foo", "nbf": t + 3600}),
            ),
            "Jwt not yet valid",
        ),
        (
            "another audience",
            sign(serde_json::json!({"iss": ISSUER, "sub": "a", "aud": "other"})),
            "Audiences in Jwt are not allowed",
        ),
        (
            "unknown issuer",
            sign(serde_json::json!({"iss": "someone-else", "sub": "a", "aud": "httpbin.foo"})),
            "Jwt issuer is not configured",
        ),
        (
            "forged signature",
            {
                let good =
                    sign(serde_json::json!({"iss": ISSUER, "sub": "a", "aud": "httpbin.foo"}));
                let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
                // Same header and signature, another payload.
                let forged =
                    sign(serde_json::json!({"iss": ISSUER, "sub": "admin", "aud": "httpbin.foo"}));
                parts[1] = forged.split('.').nth(1).unwrap().to_string();
                parts.join(".")
            },
            "Jwt verification fails",
        ),
    ];
    for (case, token, reason) in cases {
        let (status, body) = httpbin
            .get("/", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!((status, body.as_str()), (401, reason), "{case}");
    }
    // Within the clock skew (60 s), an expired token is still accepted, as by Envoy.
    let token = sign(
        serde_json::json!({"iss": ISSUER, "sub": "a", "aud": ["x", "httpbin.foo"], "exp": t - 10}),
    );
    assert_eq!(
        httpbin
            .get("/", &[("authorization", &bearer(&token))])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_failed_jwks_fetch_never_opens_the_door() {
    // Nothing listens on the JWKS port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let httpbin = Httpbin::start(&request_authentication(port, "")).await;
    let (status, body) = httpbin
        .get("/", &[("authorization", &bearer(&fixture("demo.jwt")))])
        .await;
    assert_eq!(
        (status, body.as_str()),
        (401, "Jwks remote fetch is failed")
    );
    // Without a token the request is authorization's to decide (here: no policy).
    assert_eq!(httpbin.get("/", &[]).await.0, 200);
}

#[tokio::test]
async fn the_jwks_is_fetched_once_and_cached() {
    let (jwks_port, hits) = jwks_server().await;
    let httpbin = Httpbin::start(&request_authentication(jwks_port, "")).await;
    let demo = fixture("demo.jwt");
    for _ in 0..5 {
        assert_eq!(
            httpbin
                .get("/", &[("authorization", &bearer(&demo))])
                .await
                .0,
            200
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn token_locations_and_outputs() {
    let (jwks_port, _) = jwks_server().await;
    let rule = "    fromHeaders: [{name: x-jwt-assertion}]\n    fromParams: [my_token]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-payload\n    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]\n";
    let httpbin = Httpbin::start(&request_authentication(jwks_port, rule)).await;
    let demo = fixture("demo.jwt");
    let principal = "principal=testing@secure.istio.io/testing@secure.istio.io";
    for (path, headers) in [
        ("/".to_string(), vec![("x-jwt-assertion", demo.clone())]),
        (format!("/?my_token={demo}"), vec![]),
        (
            "/".to_string(),
            vec![("cookie", format!("a=b; session={demo}"))],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = httpbin.get(&path, &headers).await;
        assert_eq!(status, 200, "{path} {body}");
        assert!(body.starts_with(principal), "{path}: {body}");
        assert!(body.contains("x-jwt-sub=testing@secure.istio.io"), "{body}");
        assert!(body.contains("x-payload=present"), "{body}");
    }
    // The default location is not one of this rule's: a token there is not looked at.
    let (status, body) = httpbin.get("/", &[("authorization", &bearer(&demo))]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("principal=- "), "{body}");
}

#[tokio::test]
async fn claim_headers_cannot_be_forged_by_the_client() {
    let (jwks_port, _) = jwks_server().await;
    let rule = "    outputPayloadToHeader: x-payload\n    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}, {header: x-jwt-missing, claim: nope}]\n";
    let httpbin = Httpbin::start(&request_authentication(jwks_port, rule)).await;
    // Without a token, what the client wrote under those names is removed.
    let (status, body) = httpbin
        .get("/", &[("x-jwt-sub", "admin"), ("x-payload", "forged")])
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("x-jwt-sub=- x-payload=absent"), "{body}");
    // With a token, the claim's value replaces the client's.
    let (_, body) = httpbin
        .get(
            "/",
            &[
                ("authorization", &bearer(&fixture("demo.jwt"))),
                ("x-jwt-sub", "admin"),
            ],
        )
        .await;
    assert!(body.contains("x-jwt-sub=testing@secure.istio.io"), "{body}");
}

#[tokio::test]
async fn a_token_whose_kid_is_not_in_the_jwks_is_refused() {
    let (jwks_port, _) = jwks_server().await;
    let httpbin = Httpbin::start(&request_authentication(jwks_port, "")).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("not-a-key-of-the-jwks".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("key.pem").as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": ISSUER, "sub": "a"}),
        &key,
    )
    .unwrap();
    assert_eq!(
        httpbin
            .get("/", &[("authorization", &bearer(&token))])
            .await,
        (
            401,
            "Jwks doesn't have key to match kid or alg from Jwt".into()
        )
    );
    // HS256 "signed" with the public key's bytes: an RSA key never verifies an HMAC.
    let jwks: serde_json::Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": ISSUER, "sub": "admin"}),
        &jsonwebtoken::EncodingKey::from_secret(jwks["keys"][0]["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        httpbin
            .get("/", &[("authorization", &bearer(&token))])
            .await
            .0,
        401
    );
}
