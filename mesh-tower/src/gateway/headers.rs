//! Header hygiene at the edge, as Envoy does it on an Istio gateway
//! (`use_remote_address: true`, `forward_client_cert_details: SANITIZE_SET`, no trusted
//! hops): hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded in either direction,
//! and the headers a proxy vouches for are set by the gateway, never taken from the
//! client.

use std::net::IpAddr;

use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The tokens of every `Connection` header, lower case.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What a request asks for with `Connection: upgrade` and `Upgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// No upgrade.
    None,
    /// `h2c`: Envoy's HTTP/1 codec drops it; the request goes on as plain HTTP/1.1.
    H2c,
    /// `websocket`: proxied (Istio enables the `websocket` upgrade type on gateways).
    WebSocket,
    /// Any other protocol: Envoy refuses upgrade types it is not configured for.
    Other,
}

/// The upgrade `headers` ask for (HTTP/1.1 only: HTTP/2 has no `Upgrade`).
pub(crate) fn upgrade_of(headers: &HeaderMap) -> Upgrade {
    let Some(upgrade) = headers.get(UPGRADE).and_then(|v| v.to_str().ok()) else {
        return Upgrade::None;
    };
    if !connection_tokens(headers).iter().any(|t| t == "upgrade") {
        return Upgrade::None;
    }
    let protocols: Vec<String> = upgrade
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    match protocols.as_slice() {
        [] => Upgrade::None,
        [p] if p == "websocket" => Upgrade::WebSocket,
        ps if ps.iter().all(|p| p == "h2c") => Upgrade::H2c,
        _ => Upgrade::Other,
    }
}

/// True when a response accepts an upgrade (`101` with `Connection: upgrade` and
/// `Upgrade`).
pub(crate) fn is_upgrade_response(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::SWITCHING_PROTOCOLS
        && headers.contains_key(UPGRADE)
        && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and the headers it
/// names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE`
/// except its `trailers` (which gRPC needs end to end). With `keep_upgrade` (an upgrade
/// being proxied) `Upgrade` stays and `Connection` becomes `upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let tokens = connection_tokens(headers);
    for t in &tokens {
        // Never through `Connection`: TE has its own rule, and an upgrade keeps its
        // `Upgrade`.
        if t == "te" || (keep_upgrade && t == "upgrade") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
            headers.remove(name);
        }
    }
    headers.remove(CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
        headers.remove(HTTP2_SETTINGS);
    }
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(TE);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Sets the headers an edge proxy vouches for, as Envoy does for a request from an
/// external client: every `x-envoy-*` header of the client is removed and
/// `x-envoy-external-address` set to the peer; the peer's address is appended to
/// `x-forwarded-for`; `x-forwarded-proto` is the scheme of the connection; the client's
/// `x-forwarded-client-cert` is removed, and on a mutual TLS connection replaced by
/// `xfcc` (the verified client certificate).
pub(crate) fn sanitize_request(
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
    tls: bool,
    xfcc: Option<&HeaderValue>,
) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
    if let Some(ip) = peer {
        let ip = ip.to_canonical().to_string();
        let mut xff = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        if !xff.is_empty() {
            xff.push(',');
        }
        xff.push_str(&ip);
        headers.remove(X_FORWARDED_FOR);
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    headers.remove(X_FORWARDED_CLIENT_CERT);
    if let Some(v) = xfcc {
        headers.insert(X_FORWARDED_CLIENT_CERT, v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("te", "gzip, trailers;q=1"),
            ("x-secret", "s"),
            ("x-kept", "k"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), vec!["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert_eq!(upgrade_of(&h), Upgrade::WebSocket);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), vec!["connection", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        let h = map(&[
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_of(&h), Upgrade::H2c);
        let h = map(&[("connection", "upgrade"), ("upgrade", "foo/2")]);
        assert_eq!(upgrade_of(&h), Upgrade::Other);
        let h = map(&[("upgrade", "websocket")]);
        assert_eq!(upgrade_of(&h), Upgrade::None);
    }

    #[test]
    fn trust_headers_are_set_by_the_gateway() {
        let mut h = map(&[
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-internal", "true"),
            ("x-envoy-external-address", "10.0.0.1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-client-cert", "URI=spiffe://evil"),
        ]);
        sanitize_request(&mut h, Some("192.0.2.1".parse().unwrap()), false, None);
        assert_eq!(
            names(&h),
            vec![
                "x-envoy-external-address",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,5.6.7.8,192.0.2.1");
        assert_eq!(h["x-envoy-external-address"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = map(&[("x-forwarded-client-cert", "URI=spiffe://evil")]);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        sanitize_request(
            &mut h,
            Some(mapped),
            true,
            Some(&HeaderValue::from_static("Hash=ab;URI=")),
        );
        assert_eq!(h["x-forwarded-client-cert"], "Hash=ab;URI=");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
