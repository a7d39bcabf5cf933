//! External authorization: the providers of CUSTOM AuthorizationPolicies, registered by
//! the application as tower services under the names the policies give
//! (`provider.name`), as Istio's `extensionProviders` name an ext_authz service.
//!
//! A provider is asked, as Envoy's ext_authz HTTP filter asks its service, with the
//! request's head — method, URI, headers, and the extensions the mesh set (the peer's
//! [`PeerIdentity`](crate::identity::PeerIdentity), its addresses, the JWT's claims) —
//! and without the body. It allows (adding headers to the request, Envoy's
//! `headersToUpstreamOnAllow`) or denies with its own response (to a gRPC caller, as a
//! `grpc-status`). A provider that fails, or does not answer within 600 s (Istio's
//! default timeout), denies: Envoy's default (`failOpen: false`) is `403`.

use bytes::Bytes;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::BoxError;

/// What a provider is asked: the request's head (see the module documentation).
pub type CheckRequest = Request<()>;

/// A provider's answer.
#[derive(Debug, Clone)]
pub enum CheckResponse {
    /// The request may proceed (DENY and ALLOW policies still apply), with these
    /// headers set on it.
    Allow(HeaderMap),
    /// The request is refused with this response.
    Deny(Response<Bytes>),
}

/// A registered provider.
pub type AuthzProvider = BoxCloneSyncService<CheckRequest, CheckResponse, BoxError>;

/// Asks `provider` about `req` for `policy`; applies its headers when it allows.
pub(crate) async fn ask<B>(
    provider: AuthzProvider,
    policy: &str,
    req: &mut Request<B>,
) -> Result<(), Response<Bytes>> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    let ext = req.extensions();
    let out = head.extensions_mut();
    if let Some(v) = ext.get::<crate::identity::PeerIdentity>() {
        out.insert(v.clone());
    }
    if let Some(v) = ext.get::<super::PeerAddr>() {
        out.insert(*v);
    }
    if let Some(v) = ext.get::<super::LocalAddr>() {
        out.insert(*v);
    }
    if let Some(v) = ext.get::<mesh_core::authz::RequestAuth>() {
        out.insert(v.clone());
    }
    let grpc = super::is_grpc(req.headers());
    match tokio::time::timeout(PROVIDER_TIMEOUT, provider.oneshot(head))
        .await
        .unwrap_or_else(|_| Err("the provider did not answer within 600 s".into()))
    {
        Ok(CheckResponse::Allow(headers)) => {
            for (name, value) in &headers {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            Ok(())
        }
        Ok(CheckResponse::Deny(resp)) => {
            tracing::debug!(%policy, status = %resp.status(), "denied by the CUSTOM provider");
            Err(external_denial(grpc, resp))
        }
        Err(e) => {
            tracing::warn!(%policy, error = %e, "the CUSTOM provider failed; request denied");
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() = StatusCode::FORBIDDEN;
            Err(external_denial(grpc, resp))
        }
    }
}

/// A refusal of the provider's (a denial, or its failure: Envoy's ext_authz fails
/// closed), as the caller gets it, flagged `UAEX` as Envoy flags both.
fn external_denial(grpc: bool, resp: Response<Bytes>) -> Response<Bytes> {
    let mut resp = if grpc { to_grpc(resp) } else { resp };
    crate::flags::ResponseFlags::record(
        &mut resp,
        crate::flags::ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
    );
    resp
}

/// Envoy's ext_authz timeout as Istio configures it by default.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(600);

/// A denial as a gRPC caller gets it from Envoy: trailers-only, the HTTP status mapped to
/// `grpc-status`, the body as `grpc-message`; the provider's headers kept.
fn to_grpc(resp: Response<Bytes>) -> Response<Bytes> {
    let (mut parts, body) = resp.into_parts();
    let code = crate::error::grpc_status(parts.status);
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(text) = std::str::from_utf8(&body)
        && !text.is_empty()
        && let Ok(v) = HeaderValue::from_str(text)
    {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, Bytes::new())
}
