//! RequestAuthentication: the JWT rules that apply to a workload, as Istio selects them.
//!
//! A RequestAuthentication in the workload's namespace or in the root namespace applies
//! when it has no selector or its selector matches the workload's labels (a root
//! namespace policy with a selector applies in every namespace, as for
//! AuthorizationPolicy); policies attached with `targetRef` are for gateways of the
//! Gateway API and are not selected here. The rules of every policy that applies are
//! merged: a token is checked by the rule of its issuer. Checking the tokens (keys,
//! signatures, times) is the runtime's; here is only what the configuration says.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use mesh_config::model::{Labels, RequestAuthentication, Resource};

/// Istio's default JWKS fetch timeout.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a rule's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// The JWKS itself, inline (`jwks`).
    Inline(Arc<str>),
    /// A URL to fetch it from (`jwksUri`).
    Uri(Arc<str>),
    /// Neither: OpenID discovery at `<issuer>/.well-known/openid-configuration`, as
    /// istiod does.
    Discovery(Arc<str>),
}

/// Where a token may be found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header, the token after `prefix`.
    Header {
        /// The header.
        name: HeaderName,
        /// What precedes the token (`Bearer `).
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// One issuer's rule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRule {
    /// The RequestAuthentication it comes from (`namespace/name`).
    pub policy: Arc<str>,
    /// `issuer`.
    pub issuer: String,
    /// `audiences` (empty: any).
    pub audiences: Vec<String>,
    /// The keys.
    pub jwks: JwksSource,
    /// Where tokens are looked for: the rule's, or Istio's defaults (the
    /// `Authorization: Bearer` header and the `access_token` query parameter).
    pub locations: Vec<TokenLocation>,
    /// `forwardOriginalToken`: keep the token's header (it is removed otherwise).
    pub forward_original_token: bool,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<HeaderName>,
    /// `outputClaimToHeaders`: (header, claim).
    pub output_claim_to_headers: Vec<(HeaderName, String)>,
    /// Claims whose string value is a space-separated list (`scope` and `permission`
    /// always, and the rule's `spaceDelimitedClaims`).
    pub space_delimited_claims: Vec<String>,
    /// `timeout` of the JWKS fetch.
    pub timeout: Duration,
}

/// A compiled RequestAuthentication.
#[derive(Debug, Clone)]
pub struct CompiledRequestAuthentication {
    namespace: String,
    selector: Option<Labels>,
    attached: bool,
    rules: Vec<Arc<JwtRule>>,
}

impl CompiledRequestAuthentication {
    /// Compiles `resource` (invalid header names were refused by validation; any left
    /// are skipped).
    pub fn compile(resource: &Resource<RequestAuthentication>) -> Self {
        let spec = &resource.spec;
        let policy: Arc<str> = format!("{}/{}", resource.namespace(), resource.name()).into();
        let rules = spec
            .jwt_rules
            .iter()
            .map(|r| {
                let mut locations: Vec<TokenLocation> = r
                    .from_headers
                    .iter()
                    .filter_map(|h| {
                        Some(TokenLocation::Header {
                            name: HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                            prefix: h.prefix.clone().unwrap_or_default(),
                        })
                    })
                    .collect();
                locations.extend(r.from_params.iter().cloned().map(TokenLocation::Param));
                locations.extend(r.from_cookies.iter().cloned().map(TokenLocation::Cookie));
                if r.from_headers.is_empty()
                    && r.from_params.is_empty()
                    && r.from_cookies.is_empty()
                {
                    locations = vec![
                        TokenLocation::Header {
                            name: http::header::AUTHORIZATION,
                            prefix: "Bearer ".into(),
                        },
                        TokenLocation::Param("access_token".into()),
                    ];
                }
                let jwks = match (&r.jwks, &r.jwks_uri) {
                    (Some(inline), _) => JwksSource::Inline(inline.as_str().into()),
                    (None, Some(uri)) => JwksSource::Uri(uri.as_str().into()),
                    (None, None) => JwksSource::Discovery(r.issuer.as_str().into()),
                };
                let mut space_delimited = vec!["scope".to_string(), "permission".to_string()];
                for c in &r.space_delimited_claims {
                    if !space_delimited.contains(c) {
                        space_delimited.push(c.clone());
                    }
                }
                Arc::new(JwtRule {
                    policy: policy.clone(),
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.clone(),
                    jwks,
                    locations,
                    forward_original_token: r.forward_original_token,
                    output_payload_to_header: r
                        .output_payload_to_header
                        .as_deref()
                        .and_then(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok()),
                    output_claim_to_headers: r
                        .output_claim_to_headers
                        .iter()
                        .filter_map(|c| {
                            Some((
                                HeaderName::try_from(c.header.to_ascii_lowercase()).ok()?,
                                c.claim.clone(),
                            ))
                        })
                        .collect(),
                    space_delimited_claims: space_delimited,
                    timeout: r.timeout.map_or(DEFAULT_JWKS_TIMEOUT, |d| d.0),
                })
            })
            .collect();
        CompiledRequestAuthentication {
            namespace: resource.namespace().to_string(),
            selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
            attached: spec.target_ref.is_some() || !spec.target_refs.is_empty(),
            rules,
        }
    }

    /// True when it applies to a workload of `namespace` with `labels` (see the module
    /// documentation).
    pub fn applies_to(&self, root: &str, namespace: &str, labels: &Labels) -> bool {
        if self.attached || (self.namespace != root && self.namespace != namespace) {
            return false;
        }
        match &self.selector {
            None => true,
            Some(sel) => mesh_config::registry::selects(sel, labels),
        }
    }
}

/// The JWT rules of one workload (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct RequestAuthn {
    rules: Vec<Arc<JwtRule>>,
}

impl RequestAuthn {
    /// The rules of every policy of `all` that applies to a workload of `namespace` with
    /// `labels`, in load order.
    pub fn for_workload(
        all: &[Arc<CompiledRequestAuthentication>],
        root: &str,
        namespace: &str,
        labels: &Labels,
    ) -> Self {
        RequestAuthn {
            rules: all
                .iter()
                .filter(|p| p.applies_to(root, namespace, labels))
                .flat_map(|p| p.rules.iter().cloned())
                .collect(),
        }
    }

    /// True when no rule applies: requests are not looked at.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules.
    pub fn rules(&self) -> &[Arc<JwtRule>] {
        &self.rules
    }

    /// The rule of `issuer`, if one applies.
    pub fn rule_for(&self, issuer: &str) -> Option<&Arc<JwtRule>> {
        self.rules.iter().find(|r| r.issuer == issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Vec<Arc<CompiledRequestAuthentication>> {
        let mut set = mesh_config::ConfigSet::new();
        set.add_str("ra.yaml", yaml);
        let snapshot = set.check().snapshot.expect("valid");
        snapshot
            .request_authentications()
            .iter()
            .map(|r| Arc::new(CompiledRequestAuthentication::compile(r)))
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules: [{issuer: mesh-issuer, jwks: '{"keys": []}'}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {app: api}}
  jwtRules:
  - issuer: api-issuer
    jwksUri: https://issuer.example.com/jwks
    audiences: [api]
    fromHeaders: [{name: X-Jwt}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: X-Payload
    outputClaimToHeaders: [{header: X-Sub, claim: sub}]
    timeout: 2s
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: shop, namespace: shop}
spec:
  jwtRules: [{issuer: shop-issuer}]
"#;

    #[test]
    fn policies_are_selected_as_istio_selects_them() {
        let all = compile(POLICIES);
        // (namespace, labels, issuers of the rules that apply)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            ("default", &[], &["mesh-issuer"]),
            ("default", &[("app", "api")], &["mesh-issuer", "api-issuer"]),
            ("shop", &[], &["mesh-issuer", "shop-issuer"]),
            (
                "shop",
                &[("app", "api")],
                &["mesh-issuer", "api-issuer", "shop-issuer"],
            ),
            ("istio-system", &[], &["mesh-issuer"]),
        ];
        for (ns, l, want) in cases {
            let authn = RequestAuthn::for_workload(&all, "istio-system", ns, &labels(l));
            let got: Vec<&str> = authn.rules().iter().map(|r| r.issuer.as_str()).collect();
            assert_eq!(&got, want, "{ns} {l:?}");
        }
    }

    #[test]
    fn rules_carry_their_locations_outputs_and_defaults() {
        let all = compile(POLICIES);
        let authn =
            RequestAuthn::for_workload(&all, "istio-system", "shop", &labels(&[("app", "api")]));
        let mesh = authn.rule_for("mesh-issuer").expect("mesh rule");
        assert_eq!(
            mesh.locations,
            [
                TokenLocation::Header {
                    name: http::header::AUTHORIZATION,
                    prefix: "Bearer ".into()
                },
                TokenLocation::Param("access_token".into())
            ]
        );
        assert_eq!(mesh.jwks, JwksSource::Inline(r#"{"keys": []}"#.into()));
        assert_eq!(mesh.timeout, DEFAULT_JWKS_TIMEOUT);
        assert!(!mesh.forward_original_token);
        assert_eq!(&*mesh.policy, "istio-system/mesh");

        let api = authn.rule_for("api-issuer").expect("api rule");
        assert_eq!(
            api.locations,
            [
                TokenLocation::Header {
                    name: HeaderName::from_static("x-jwt"),
                    prefix: String::new()
                },
                TokenLocation::Param("token".into()),
                TokenLocation::Cookie("session".into()),
            ]
        );
        assert_eq!(
            api.jwks,
            JwksSource::Uri("https://issuer.example.com/jwks".into())
        );
        assert_eq!(api.audiences, ["api"]);
        assert!(api.forward_original_token);
        assert_eq!(
            api.output_payload_to_header,
            Some(HeaderName::from_static("x-payload"))
        );
        assert_eq!(
            api.output_claim_to_headers,
            [(HeaderName::from_static("x-sub"), "sub".to_string())]
        );
        assert_eq!(api.timeout, Duration::from_secs(2));
        assert_eq!(api.space_delimited_claims, ["scope", "permission"]);

        let shop = authn.rule_for("shop-issuer").expect("shop rule");
        assert_eq!(shop.jwks, JwksSource::Discovery("shop-issuer".into()));
        assert!(authn.rule_for("nobody").is_none());
    }
}
