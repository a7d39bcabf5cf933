//! JWT authentication, as Envoy's `jwt_authn` filter does it for Istio's
//! RequestAuthentication.
//!
//! Tokens are looked for where the workload's rules say (by default the
//! `Authorization: Bearer` header and the `access_token` query parameter). A request
//! without a token passes, without a request principal: whether it may proceed is
//! AuthorizationPolicy's to say. A token that is present must be valid — issued by a
//! configured issuer, signed by one of its keys, within its times (60 s of clock skew),
//! for one of the rule's audiences — or the request is refused with `401` and Envoy's
//! reason (`Jwt verification fails`, `Jwt is expired`, ...). A valid token's claims
//! become the request's [`RequestAuth`] extension, which authorization reads.
//!
//! Keys come inline (`jwks`), from `jwksUri`, or from the issuer's OpenID discovery
//! document; remote ones are fetched through the workload's own mesh client (its routes,
//! retries and TLS origination apply) and cached for 20 minutes as istiod refreshes them.
//! A fetch that fails never opens the door: before any succeeded, tokens of that issuer
//! are refused (a fetch retried at most once a second); when a refresh fails, the keys
//! fetched before stay in use for up to 40 minutes. Headers the rules write
//! (`outputPayloadToHeader`, `outputClaimToHeaders`) are removed from every request
//! first, so that a client cannot forge them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::COOKIE;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use mesh_core::authn::{JwksSource, JwtRule, RequestAuthn, TokenLocation};
use mesh_core::authz::{Claim, RequestAuth};
use serde_json::Value;
use tower::ServiceExt;

use crate::Mesh;

/// How long fetched keys are used before they are fetched again.
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How long a failed fetch is remembered before another is tried.
const RETRY_FAILED: Duration = Duration::from_secs(1);
/// Envoy's allowed clock skew.
const CLOCK_SKEW_SECS: u64 = 60;

/// Envoy's reasons, the bodies of its `401` answers.
pub(crate) mod reason {
    /// A token that is not three base64url segments.
    pub(crate) const BAD_FORMAT: &str =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    /// A token whose issuer no rule names.
    pub(crate) const UNKNOWN_ISSUER: &str = "Jwt issuer is not configured";
    /// A signature no key verifies (or a key that does not fit the algorithm).
    pub(crate) const VERIFICATION_FAILS: &str = "Jwt verification fails";
    /// `exp` passed.
    pub(crate) const EXPIRED: &str = "Jwt is expired";
    /// `nbf` not reached.
    pub(crate) const NOT_YET_VALID: &str = "Jwt not yet valid";
    /// `aud` names none of the rule's audiences.
    pub(crate) const AUDIENCE: &str = "Audiences in Jwt are not allowed";
    /// The issuer's keys could not be fetched.
    pub(crate) const JWKS_FETCH: &str = "Jwks remote fetch is failed";
    /// The keys are not a JWKS.
    pub(crate) const JWKS_PARSE: &str = "Jwks doesn't have valid keys";
    /// No key of the JWKS has the token's `kid` (or fits its `alg`).
    pub(crate) const NO_KEY: &str = "Jwks doesn't have key to match kid or alg from Jwt";
}

/// Keys by source, for the whole process.
#[derive(Debug, Default)]
pub(crate) struct JwksCache {
    entries: Mutex<HashMap<JwksSource, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    keys: Result<Arc<JwkSet>, &'static str>,
    at: Instant,
}

impl JwksCache {
    /// The keys of `rule`, fetched through `mesh` when they are not cached (or stale).
    async fn keys(&self, mesh: &Mesh, rule: &JwtRule) -> Result<Arc<JwkSet>, &'static str> {
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rule.jwks)
            .cloned();
        if let Some(e) = &cached {
            let fresh = match &e.keys {
                Ok(_) => matches!(rule.jwks, JwksSource::Inline(_)) || e.at.elapsed() < REFRESH,
                Err(_) => e.at.elapsed() < RETRY_FAILED,
            };
            if fresh {
                return e.keys.clone();
            }
        }
        let keys = match &rule.jwks {
            JwksSource::Inline(text) => parse(text.as_bytes()),
            JwksSource::Uri(uri) => fetch_jwks(mesh, uri, rule.timeout).await,
            JwksSource::Discovery(issuer) => discover(mesh, issuer, rule.timeout).await,
        };
        // Keys fetched before keep serving while a refresh fails.
        let keys = match (keys, cached) {
            (Err(e), Some(Entry { keys: Ok(old), at })) if at.elapsed() < 2 * REFRESH => {
                tracing::warn!(source = ?rule.jwks, error = e, "JWKS refresh failed; the keys fetched before stay in use");
                Ok(old)
            }
            (k, _) => k,
        };
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                rule.jwks.clone(),
                Entry {
                    keys: keys.clone(),
                    at: Instant::now(),
                },
            );
        keys
    }
}

/// The keys of a JWKS document: each key this crate can use (one it cannot, of an
/// unsupported type or curve, is skipped, as Envoy skips it); none is an error.
fn parse(bytes: &[u8]) -> Result<Arc<JwkSet>, &'static str> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| reason::JWKS_PARSE)?;
    let keys: Vec<jsonwebtoken::jwk::Jwk> = doc["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| serde_json::from_value(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(reason::JWKS_PARSE);
    }
    Ok(Arc::new(JwkSet { keys }))
}

/// GETs `uri` through the workload's mesh client within `timeout`: the body of a 200.
async fn get(mesh: &Mesh, uri: &str, timeout: Duration) -> Result<Bytes, String> {
    let req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = mesh
            .client()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn fetch_jwks(
    mesh: &Mesh,
    uri: &str,
    timeout: Duration,
) -> Result<Arc<JwkSet>, &'static str> {
    match get(mesh, uri, timeout).await {
        Ok(body) => parse(&body),
        Err(e) => {
            tracing::warn!(uri, error = %e, "JWKS fetch failed");
            Err(reason::JWKS_FETCH)
        }
    }
}

/// The keys named by the issuer's OpenID discovery document.
async fn discover(
    mesh: &Mesh,
    issuer: &str,
    timeout: Duration,
) -> Result<Arc<JwkSet>, &'static str> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = match get(mesh, &url, timeout).await {
        Ok(body) => serde_json::from_slice::<Value>(&body).ok(),
        Err(e) => {
            tracing::warn!(url, error = %e, "OpenID discovery failed");
            None
        }
    };
    match doc.as_ref().and_then(|d| d["jwks_uri"].as_str()) {
        Some(uri) => fetch_jwks(mesh, uri, timeout).await,
        None => Err(reason::JWKS_FETCH),
    }
}

/// A token found in a request, and where.
struct Found {
    token: String,
    location: TokenLocation,
}

/// The tokens of `req` at the locations of `authn`'s rules (each token once).
fn tokens<B>(authn: &RequestAuthn, req: &Request<B>) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    let mut push = |token: &str, location: &TokenLocation| {
        if !token.is_empty()
            && !found
                .iter()
                .any(|f| f.token == token && f.location == *location)
        {
            found.push(Found {
                token: token.to_string(),
                location: location.clone(),
            });
        }
    };
    for rule in authn.rules() {
        for location in &rule.locations {
            match location {
                TokenLocation::Header { name, prefix } => {
                    for v in req.headers().get_all(name) {
                        let Ok(v) = v.to_str() else { continue };
                        let token = if prefix.is_empty() {
                            Some(v.trim())
                        } else if v.len() >= prefix.len()
                            && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                        {
                            Some(v[prefix.len()..].trim())
                        } else {
                            None
                        };
                        if let Some(t) = token {
                            push(t, location);
                        }
                    }
                }
                TokenLocation::Param(param) => {
                    let query = req.uri().query().unwrap_or("");
                    for pair in query.split('&') {
                        if let Some((k, v)) = pair.split_once('=')
                            && k == param
                        {
                            push(v, location);
                        }
                    }
                }
                TokenLocation::Cookie(cookie) => {
                    for v in req.headers().get_all(COOKIE) {
                        let Ok(v) = v.to_str() else { continue };
                        for c in v.split(';') {
                            if let Some((k, val)) = c.trim().split_once('=')
                                && k == cookie
                            {
                                push(val, location);
                            }
                        }
                    }
                }
            }
        }
    }
    found
}

/// The unverified claims of `token` (to find its rule by `iss`).
fn unverified_claims(token: &str) -> Result<Value, &'static str> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reason::BAD_FORMAT);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| reason::BAD_FORMAT)?;
    serde_json::from_slice(&bytes).map_err(|_| reason::BAD_FORMAT)
}

/// Checks `token` against `rule`'s keys, times and audiences: its claims.
async fn verify(
    mesh: &Mesh,
    rule: &JwtRule,
    token: &str,
) -> Result<serde_json::Map<String, Value>, &'static str> {
    let header = decode_header(token).map_err(|_| reason::BAD_FORMAT)?;
    let keys = mesh.runtime().jwks().keys(mesh, rule).await?;
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    // A key that names its algorithm is only used with that algorithm.
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|k| {
            k.common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{:?}", header.alg))
        })
        .collect();
    if candidates.is_empty() {
        return Err(reason::NO_KEY);
    }
    let mut outcome = Err(reason::VERIFICATION_FAILS);
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match decode::<serde_json::Map<String, Value>>(token, &key, &validation) {
            Ok(data) => {
                outcome = Ok(data.claims);
                break;
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => return Err(reason::EXPIRED),
                    ErrorKind::ImmatureSignature => return Err(reason::NOT_YET_VALID),
                    _ => {}
                }
            }
        }
    }
    let claims = outcome?;
    if !rule.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rule.audiences.iter().any(|r| r == a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| rule.audiences.iter().any(|r| r == a))
            }),
            _ => false,
        };
        if !ok {
            return Err(reason::AUDIENCE);
        }
    }
    Ok(claims)
}

/// A claim as authorization reads it (`space_delimited`: a string is a list of words).
fn claim(v: &Value, space_delimited: bool) -> Claim {
    match v {
        Value::String(s) if space_delimited => Claim::List(
            s.split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Claim::Str(w.to_string()))
                .collect(),
        ),
        Value::String(s) => Claim::Str(s.clone()),
        Value::Array(items) => Claim::List(items.iter().map(|i| claim(i, false)).collect()),
        Value::Object(m) => Claim::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), claim(v, false)))
                .collect(),
        ),
        _ => Claim::Other,
    }
}

/// Authenticates `req` with `authn`'s rules (see the module documentation): `Ok(None)`
/// without a token, `Ok(Some)` with a valid one (the request's headers changed as the
/// rule says), `Err(reason)` to refuse it with `401`.
pub(crate) async fn authenticate<B>(
    mesh: &Mesh,
    authn: &RequestAuthn,
    req: &mut Request<B>,
) -> Result<Option<RequestAuth>, &'static str> {
    // Headers the rules write are the mesh's to write: whatever the client sent under
    // those names goes, token or not (a client must not forge a claim header).
    for rule in authn.rules() {
        if let Some(h) = &rule.output_payload_to_header {
            req.headers_mut().remove(h);
        }
        for (h, _) in &rule.output_claim_to_headers {
            req.headers_mut().remove(h);
        }
    }
    let found = tokens(authn, req);
    let mut first: Option<RequestAuth> = None;
    let mut verified: Vec<String> = Vec::new();
    for Found { token, location } in found {
        if verified.contains(&token) {
            // The same token at another location: checked once.
            continue;
        }
        let unverified = unverified_claims(&token)?;
        let issuer = unverified["iss"].as_str().unwrap_or("");
        let Some(rule) = authn
            .rules()
            .iter()
            .find(|r| r.issuer == issuer && r.locations.contains(&location))
        else {
            return Err(reason::UNKNOWN_ISSUER);
        };
        let claims = verify(mesh, rule, &token).await.inspect_err(|e| {
            tracing::debug!(policy = %rule.policy, issuer, reason = e, "JWT refused");
        })?;
        verified.push(token.clone());
        let headers = req.headers_mut();
        if let (false, TokenLocation::Header { name, .. }) =
            (rule.forward_original_token, &location)
        {
            headers.remove(name);
        }
        if let Some(h) = &rule.output_payload_to_header
            && let Some(payload) = token.split('.').nth(1)
            && let Ok(v) = HeaderValue::from_str(payload)
        {
            headers.insert(h.clone(), v);
        }
        for (h, c) in &rule.output_claim_to_headers {
            let text = match claims.get(c) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
                _ => None,
            };
            if let Some(v) = text.and_then(|t| HeaderValue::from_str(&t).ok()) {
                headers.insert(h.clone(), v);
            }
        }
        if first.is_none() {
            let claims_map: BTreeMap<String, Claim> = claims
                .iter()
                .map(|(k, v)| {
                    let spaced = rule.space_delimited_claims.iter().any(|c| c == k);
                    (k.clone(), claim(v, spaced))
                })
                .collect();
            first = Some(RequestAuth {
                issuer: issuer.to_string(),
                subject: claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                claims: claims_map,
            });
        }
    }
    Ok(first)
}
