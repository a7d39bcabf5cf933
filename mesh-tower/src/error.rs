//! Mesh failures: answered to the caller the way Envoy answers them, and available as a
//! typed error in the response's extensions.
//!
//! ```
//! use mesh_tower::MeshFailure;
//!
//! let resp = MeshFailure::NoHealthyUpstream.into_response();
//! assert_eq!(resp.status(), 503);
//! assert_eq!(resp.extensions().get::<MeshFailure>(), Some(&MeshFailure::NoHealthyUpstream));
//! ```

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ResBody, full};
use crate::flags::ResponseFlags;

/// Why the connection to an upstream failed, in Envoy's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The TCP (or TLS) connection could not be made.
    ConnectionFailure,
    /// The connection was closed or reset before response headers.
    ConnectionTermination,
    /// The upstream refused the HTTP/2 stream.
    RefusedStream,
    /// A circuit breaker of the cluster was open (response flag `UO`).
    Overflow,
    /// The mesh reset the upstream request itself: the caller's request body failed
    /// while it was being sent (response flag `LR`).
    LocalReset,
}

impl ResetReason {
    /// Envoy's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::ConnectionFailure => "connection failure",
            ResetReason::ConnectionTermination => "connection termination",
            ResetReason::RefusedStream => "remote refused stream reset",
            ResetReason::Overflow => "overflow",
            ResetReason::LocalReset => "local reset",
        }
    }
}

/// A failure the mesh answers for the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshFailure {
    /// The destination has no endpoint (503 `no healthy upstream`).
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The route's timeout (or the last per-try timeout) expired (504).
    #[error("upstream request timeout")]
    Timeout,
    /// Connecting failed or the connection broke before response headers (503).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: {}", .0.as_str())]
    ConnectOrReset(ResetReason),
    /// A VirtualService exists for the host but none of its rules matched (404).
    #[error("route not found")]
    NoRoute,
    /// The host is not in the registry and outbound traffic is REGISTRY_ONLY (502).
    #[error("host not in the registry (REGISTRY_ONLY)")]
    RegistryOnly,
    /// The request has no authority to route on (400).
    #[error("request without authority")]
    NoAuthority,
    /// An injected fault aborted the request with this HTTP status.
    #[error("fault filter abort")]
    FaultAbort(u16),
    /// The upstream sent something that is not HTTP (502).
    #[error("upstream protocol error")]
    Protocol,
    /// The route's destination names a subset no DestinationRule defines, or a port the
    /// service lacks (503 with an empty body: Envoy's "cluster not found", flag `NC`).
    #[error("cluster not found")]
    ClusterNotFound,
}

/// Envoy's mapping of an HTTP status to a gRPC status (`httpToGrpcStatus`): 400 →
/// INTERNAL, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 404 → UNIMPLEMENTED, 429,
/// 502, 503 and 504 → UNAVAILABLE, anything else → UNKNOWN.
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

impl MeshFailure {
    /// The status Envoy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            MeshFailure::NoHealthyUpstream
            | MeshFailure::ConnectOrReset(_)
            | MeshFailure::ClusterNotFound => StatusCode::SERVICE_UNAVAILABLE,
            MeshFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            MeshFailure::NoRoute => StatusCode::NOT_FOUND,
            MeshFailure::RegistryOnly | MeshFailure::Protocol => StatusCode::BAD_GATEWAY,
            MeshFailure::NoAuthority => StatusCode::BAD_REQUEST,
            MeshFailure::FaultAbort(s) => {
                StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The body Envoy answers with (empty for 404, 502 and cluster not found, as Envoy's
    /// are).
    pub fn body(&self) -> String {
        match self {
            MeshFailure::NoRoute | MeshFailure::RegistryOnly | MeshFailure::ClusterNotFound => {
                String::new()
            }
            other => other.to_string(),
        }
    }

    /// The answer to a gRPC request, as Envoy's local replies answer one: HTTP 200,
    /// trailers-only, the status mapped to `grpc-status` ([`grpc_status`]) and the text
    /// as `grpc-message`; `self` in its extensions.
    pub fn into_grpc_response(self) -> Response<ResBody> {
        let mut resp = Response::new(ResBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(grpc_status(self.status())));
        let message = match self.body() {
            m if m.is_empty() => self.to_string(),
            m => m,
        };
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        resp.extensions_mut()
            .insert(ResponseFlags::of_failure(&self));
        resp.extensions_mut().insert(self);
        resp
    }

    /// The response: status, `text/plain` body, and `self` in its extensions.
    pub fn into_response(self) -> Response<ResBody> {
        let body = self.body();
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status();
        if !resp.body_is_empty() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        resp.extensions_mut()
            .insert(ResponseFlags::of_failure(&self));
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The client was asked for a URI scheme the mesh does not originate: anything but
/// `http` and `https`. (An `https://` request is sent over TLS: the TLS origination its
/// destination's DestinationRule configures, mutual TLS within the mesh, or else `SIMPLE`
/// TLS verified with the system's roots against the host it names — never in cleartext.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the mesh client does not originate `{scheme}` requests (only `http` and `https`); the request was not sent"
)]
pub struct UnsupportedScheme {
    /// The scheme asked for.
    pub scheme: String,
}

trait BodyIsEmpty {
    fn body_is_empty(&self) -> bool;
}

impl BodyIsEmpty for Response<ResBody> {
    fn body_is_empty(&self) -> bool {
        http_body::Body::is_end_stream(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn envoy_statuses_and_bodies() {
        let table = [
            (MeshFailure::NoHealthyUpstream, 503, "no healthy upstream"),
            (MeshFailure::Timeout, 504, "upstream request timeout"),
            (
                MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure),
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            (MeshFailure::NoRoute, 404, ""),
            (MeshFailure::ClusterNotFound, 503, ""),
            (MeshFailure::RegistryOnly, 502, ""),
            (MeshFailure::FaultAbort(555), 555, "fault filter abort"),
        ];
        for (f, status, body) in table {
            let r = f.clone().into_response();
            assert_eq!(r.status().as_u16(), status, "{f:?}");
            assert_eq!(r.extensions().get::<MeshFailure>(), Some(&f));
            let b = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(b, body.as_bytes(), "{f:?}");
        }
    }
}
