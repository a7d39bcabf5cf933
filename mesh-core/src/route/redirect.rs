//! What a rule answers without forwarding: a redirect (its `Location` built as Envoy
//! builds it) or a direct response; and [`split_authority`], which reads `host[:port]`
//! for them and for routing.

use mesh_config::model::{HttpRedirect, RedirectPortSelection};

use crate::matcher::{RequestHead, StrMatcher};

/// A compiled redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Status (301 by default).
    pub status: u16,
    /// Replacement path.
    pub uri: Option<String>,
    /// Replacement of the prefix the uri match matched (`prefixRewrite`).
    pub prefix_rewrite: Option<String>,
    /// Replacement host.
    pub authority: Option<String>,
    /// Replacement port, or keep the request's.
    pub port: Option<RedirectPort>,
    /// Replacement scheme.
    pub scheme: Option<String>,
}

/// The port of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    /// This port.
    Port(u16),
    /// The request's port.
    FromRequest,
}

impl Redirect {
    pub(super) fn compile(r: &HttpRedirect) -> Self {
        let port = match (r.port, r.derive_port) {
            // Port 0 is no port redirect, as in Envoy.
            (Some(p), _) if p != 0 => u16::try_from(p).ok().map(RedirectPort::Port),
            (_, Some(RedirectPortSelection::FromRequestPort)) => Some(RedirectPort::FromRequest),
            _ => None,
        };
        // An empty string is unset (proto3), and code 0 is the default 301, as Istio
        // reads them.
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Redirect {
            status: r
                .redirect_code
                .filter(|c| *c != 0)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
            uri: text(&r.uri),
            prefix_rewrite: text(&r.prefix_rewrite),
            authority: text(&r.authority),
            port,
            scheme: text(&r.scheme),
        }
    }

    /// The `Location` for a request, as Envoy builds it (`newUri`, `processRequestHost`):
    ///
    /// - scheme: the redirect's, else the request's;
    /// - host: the redirect's `authority` when set (the request's port is then dropped);
    ///   else the request's `host[:port]`, whose port is dropped when a port redirect is
    ///   set, or when the scheme changes and the port is the default one of the request's
    ///   scheme (`:80` for http, `:443` for https);
    /// - port: a port redirect is appended as written (`derivePort: FROM_REQUEST_PORT` is
    ///   the port the request was addressed to, as Istio compiles it);
    /// - path: the redirect's `uri` (with the request's query string unless it has one);
    ///   else the request's path with what `matched_uri` (the uri matcher of the match
    ///   block that matched) matched replaced by `prefixRewrite`, as a rewrite's `uri`
    ///   replaces it; else the request's path; then the request's query.
    pub fn location(&self, head: &RequestHead<'_>, matched_uri: Option<&StrMatcher>) -> String {
        use std::fmt::Write as _;
        let scheme = self.scheme.as_deref().unwrap_or(head.scheme);
        let new_port = match self.port {
            Some(RedirectPort::Port(p)) => Some(p),
            Some(RedirectPort::FromRequest) => Some(head.port),
            None => None,
        };
        let host = match &self.authority {
            Some(a) => a.as_str(),
            None => {
                let (host, port) = split_authority(head.authority);
                let strip = port.is_some()
                    && (new_port.is_some()
                        || (scheme != head.scheme
                            && match head.scheme {
                                "http" => port == Some(80),
                                "https" => port == Some(443),
                                _ => false,
                            }));
                if strip { host } else { head.authority }
            }
        };
        let rewritten;
        let path = match (&self.uri, &self.prefix_rewrite) {
            (Some(uri), _) => uri.as_str(),
            (None, Some(to)) => {
                rewritten = super::rewrite::replace_matched_prefix(to, head.path, matched_uri);
                rewritten.as_str()
            }
            (None, None) => head.path,
        };
        let mut out = String::with_capacity(
            scheme.len() + host.len() + path.len() + head.query.map_or(0, str::len) + 16,
        );
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(host);
        if let Some(p) = new_port {
            let _ = write!(out, ":{p}");
        }
        if !path.starts_with('/') {
            out.push('/');
        }
        out.push_str(path);
        // A new path with a query string replaces the request's.
        if !(self.uri.is_some() && path.contains('?'))
            && let Some(q) = head.query
        {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `host[:port]` → (host, port).
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    // The common case, `host:digits`, without searching the string twice.
    let b = authority.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if (1..=5).contains(&digits) && b.len() > digits {
        let colon = b.len() - digits - 1;
        if b[colon] == b':' && b.first() != Some(&b'[') && !b[..colon].contains(&b':') {
            let port = b[colon + 1..]
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            if let Ok(port) = u16::try_from(port) {
                return (&authority[..colon], Some(port));
            }
        }
    }
    split_authority_slow(authority)
}

/// [`split_authority`] for every other shape (IPv6, no port, a port that is not a
/// `u16`).
fn split_authority_slow(authority: &str) -> (&str, Option<u16>) {
    if authority.starts_with('[') {
        // [v6]:port
        if let Some(end) = authority.find(']') {
            let port = authority[end + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse().ok());
            return (&authority[..=end], port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// A compiled direct response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: bytes_like::Body,
}

/// A tiny owned body type, so that mesh-core needs no bytes crate.
pub mod bytes_like {
    /// A shared, immutable body.
    pub type Body = std::sync::Arc<[u8]>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn head<'a>(
        h: &'a HeaderMap,
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
    ) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            scheme: "http",
            authority,
            path,
            query,
            headers: h,
            port: 9080,
        }
    }

    #[test]
    fn redirects_follow_envoys_process_request_host() {
        let h = HeaderMap::new();
        let r = |uri: Option<&str>, authority: Option<&str>, port, scheme: Option<&str>| Redirect {
            status: 301,
            uri: uri.map(Into::into),
            prefix_rewrite: None,
            authority: authority.map(Into::into),
            port,
            scheme: scheme.map(Into::into),
        };
        let at = |scheme: &'static str, authority: &'static str, port: u16| RequestHead {
            scheme,
            port,
            ..head(&h, authority, "/old", Some("q=1"))
        };
        use RedirectPort::{FromRequest, Port};
        // (redirect, request (scheme, authority, port), Location)
        let table = [
            // the request's host:port is kept
            (
                r(Some("/new"), None, None, None),
                at("http", "reviews:9080", 9080),
                "http://reviews:9080/new?q=1",
            ),
            (
                r(Some("/n?x=2"), None, None, None),
                at("http", "reviews:9080", 9080),
                "http://reviews:9080/n?x=2",
            ),
            (
                r(Some("relative"), None, None, None),
                at("http", "reviews", 80),
                "http://reviews/relative?q=1",
            ),
            // a new scheme keeps a port that is not the old scheme's default
            (
                r(None, None, None, Some("https")),
                at("http", "reviews:9080", 9080),
                "https://reviews:9080/old?q=1",
            ),
            // ... and drops the old scheme's default port
            (
                r(None, None, None, Some("https")),
                at("http", "reviews:80", 80),
                "https://reviews/old?q=1",
            ),
            (
                r(None, None, None, Some("http")),
                at("https", "reviews:443", 443),
                "http://reviews/old?q=1",
            ),
            // 443 is not http's default: kept
            (
                r(None, None, None, Some("https")),
                at("http", "reviews:443", 443),
                "https://reviews:443/old?q=1",
            ),
            // the same scheme keeps even a default port
            (
                r(None, None, None, Some("http")),
                at("http", "reviews:80", 80),
                "http://reviews:80/old?q=1",
            ),
            (
                r(None, None, None, Some("https")),
                at("http", "reviews", 80),
                "https://reviews/old?q=1",
            ),
            // a port redirect replaces the request's port, written as given
            (
                r(None, None, Some(Port(8443)), Some("https")),
                at("http", "reviews:9080", 9080),
                "https://reviews:8443/old?q=1",
            ),
            (
                r(None, None, Some(Port(443)), Some("https")),
                at("http", "reviews:9080", 9080),
                "https://reviews:443/old?q=1",
            ),
            (
                r(None, None, Some(FromRequest), None),
                at("http", "reviews", 80),
                "http://reviews:80/old?q=1",
            ),
            // a new authority replaces host and port
            (
                r(None, Some("example.com"), None, None),
                at("http", "reviews:9080", 9080),
                "http://example.com/old?q=1",
            ),
            (
                r(None, Some("a.b"), Some(FromRequest), None),
                at("http", "reviews:9080", 9080),
                "http://a.b:9080/old?q=1",
            ),
            (
                r(None, Some("a.b"), None, Some("https")),
                at("http", "reviews:9080", 9080),
                "https://a.b/old?q=1",
            ),
            // IPv6
            (
                r(None, None, None, Some("https")),
                at("http", "[::1]:80", 80),
                "https://[::1]/old?q=1",
            ),
            (
                r(None, None, None, Some("https")),
                at("http", "[::1]:9080", 9080),
                "https://[::1]:9080/old?q=1",
            ),
        ];
        for (redirect, req, want) in table {
            assert_eq!(
                redirect.location(&req, None),
                want,
                "{redirect:?} on {}://{}",
                req.scheme,
                req.authority
            );
        }
        assert_eq!(split_authority("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_authority("reviews"), ("reviews", None));
    }

    /// `prefixRewrite` replaces what the rule's uri match matched, as a rewrite's `uri`
    /// does (Envoy's redirect `prefix_rewrite`), and keeps the query string.
    #[test]
    fn prefix_rewrite_redirects_replace_what_the_uri_match_matched() {
        let h = HeaderMap::new();
        let redirect = |to: &str| Redirect {
            status: 302,
            uri: None,
            prefix_rewrite: Some(to.into()),
            authority: None,
            port: None,
            scheme: None,
        };
        let prefix = |p: &str| StrMatcher::Prefix(p.into());
        let exact = StrMatcher::Exact("/old/page".into());
        // (prefixRewrite, matched uri, request path and query, Location)
        let table = [
            (
                "/new/",
                Some(prefix("/old/")),
                ("/old/page", Some("q=1")),
                "http://reviews:9080/new/page?q=1",
            ),
            (
                "/new",
                Some(prefix("/old")),
                ("/old/page", None),
                "http://reviews:9080/new/page",
            ),
            (
                "/v2",
                Some(prefix("")),
                ("/a", None),
                "http://reviews:9080/v2/a",
            ),
            // an exact match: the whole path
            (
                "/moved",
                Some(exact),
                ("/old/page", Some("q=1")),
                "http://reviews:9080/moved?q=1",
            ),
            // no uri match: the implied `/` prefix
            (
                "/api/",
                None,
                ("/users", None),
                "http://reviews:9080/api/users",
            ),
        ];
        for (to, matched, (path, query), want) in table {
            let req = head(&h, "reviews:9080", path, query);
            assert_eq!(
                redirect(to).location(&req, matched.as_ref()),
                want,
                "{to} after {matched:?}"
            );
        }
    }

    /// An empty string is an unset field and code 0 the default, as Istio reads them.
    #[test]
    fn empty_redirect_fields_are_unset() {
        let h = HeaderMap::new();
        let r = Redirect::compile(&HttpRedirect {
            uri: Some(String::new()),
            prefix_rewrite: Some(String::new()),
            authority: Some(String::new()),
            scheme: Some("https".into()),
            redirect_code: Some(0),
            ..HttpRedirect::default()
        });
        assert_eq!(r.status, 301);
        let req = head(&h, "reviews:9080", "/old/page", Some("q=1"));
        let matched = StrMatcher::Prefix("/old/".into());
        assert_eq!(
            r.location(&req, Some(&matched)),
            "https://reviews:9080/old/page?q=1"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5a17),
            failure_persistence: None,
            cases: 2000,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The fast path agrees with the general one on any authority-like string.
        #[test]
        fn split_authority_agrees_with_the_general_path(a in "[a-z0-9:\\[\\]+.]{0,12}") {
            proptest::prop_assert_eq!(split_authority(&a), split_authority_slow(&a));
        }
    }

    #[test]
    fn split_authority_cases() {
        let table: [(&str, (&str, Option<u16>)); 13] = [
            ("reviews:9080", ("reviews", Some(9080))),
            ("reviews", ("reviews", None)),
            ("a.b:0", ("a.b", Some(0))),
            ("a:65535", ("a", Some(65535))),
            ("a:65536", ("a:65536", None)),
            ("a:", ("a:", None)),
            (":80", ("", Some(80))),
            ("::1", ("::1", None)),
            ("[::1]:80", ("[::1]", Some(80))),
            ("[::1]", ("[::1]", None)),
            ("a:+80", ("a", Some(80))),
            ("a:0080", ("a", Some(80))),
            ("1.2.3.4:9", ("1.2.3.4", Some(9))),
        ];
        for (a, want) in table {
            assert_eq!(split_authority(a), want, "{a}");
            assert_eq!(split_authority_slow(a), want, "{a} (general path)");
        }
    }
}
