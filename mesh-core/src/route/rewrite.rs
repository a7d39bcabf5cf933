//! A rule's `rewrite`: the path (Envoy's `prefix_rewrite` of what the uri match matched,
//! or a regex substitution) and the authority.

use http::HeaderValue;
use mesh_config::model::HttpRewrite;
use regex::Regex;

use crate::matcher::{MatchError, StrMatcher};

/// How to rewrite the path.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `rewrite.uri`, Envoy's `prefix_rewrite`: replace what the uri match matched — the
    /// prefix of a prefix match (`prefix: ""` prepends to the whole path), the whole path
    /// after an exact or regex match, and the implied `/` prefix when the block has no
    /// uri match (or a presence-only one).
    Prefix(String),
    /// Replace every match of the regex (`\1` groups become `$1`).
    Regex(Regex, String),
}

/// A compiled rewrite.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Path rewrite.
    pub path: Option<PathRewrite>,
    /// New authority, ready to be the `Host` header.
    pub authority: Option<HeaderValue>,
}

impl Rewrite {
    /// Compiles a rule's `rewrite`.
    pub(super) fn compile(rw: &HttpRewrite) -> Result<Self, MatchError> {
        let path = match (&rw.uri, &rw.uri_regex_rewrite) {
            (Some(u), _) => Some(PathRewrite::Prefix(u.clone())),
            (None, Some(rr)) => Some(PathRewrite::Regex(
                mesh_config::re2::compile(&rr.match_)
                    .map_err(|e| MatchError::Regex(rr.match_.clone(), e))?,
                envoy_substitution(&rr.rewrite),
            )),
            (None, None) => None,
        };
        Ok(Rewrite {
            path,
            authority: rw
                .authority
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok()),
        })
    }

    /// The new path (with the query string) for a request whose uri matched
    /// `matched_uri` (the uri matcher of the block that matched, if any).
    pub fn path(
        &self,
        path: &str,
        query: Option<&str>,
        matched_uri: Option<&StrMatcher>,
    ) -> Option<String> {
        let new = match self.path.as_ref()? {
            PathRewrite::Prefix(to) => replace_matched_prefix(to, path, matched_uri),
            PathRewrite::Regex(re, with) => re.replace_all(path, with.as_str()).into_owned(),
        };
        Some(match query {
            Some(q) => format!("{new}?{q}"),
            None => new,
        })
    }
}

/// Envoy's `prefix_rewrite` (of a route's rewrite or of a redirect): `path` with what the
/// uri match `matched_uri` matched replaced by `to` — the prefix of a prefix match, the
/// whole path after an exact or regex match, and the implied `/` prefix when the block
/// has no uri match (or a presence-only one).
pub(crate) fn replace_matched_prefix(
    to: &str,
    path: &str,
    matched_uri: Option<&StrMatcher>,
) -> String {
    match matched_uri {
        Some(StrMatcher::Prefix(p) | StrMatcher::PrefixIgnoreCase(p)) => {
            format!("{to}{}", path.get(p.len()..).unwrap_or(""))
        }
        Some(StrMatcher::Exact(_) | StrMatcher::ExactIgnoreCase(_) | StrMatcher::Regex(..)) => {
            to.to_string()
        }
        Some(StrMatcher::Any) | None => format!("{to}{}", path.strip_prefix('/').unwrap_or(path)),
    }
}

/// RE2/Istio `\1` groups → the regex crate's `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        let (path, query) = ("/api/v1/reviews/0", Some("a=1"));
        let prefix = Rewrite {
            path: Some(PathRewrite::Prefix("/v2/".into())),
            authority: None,
        };
        let p = StrMatcher::Prefix("/api/v1/".into());
        assert_eq!(
            prefix.path(path, query, Some(&p)).unwrap(),
            "/v2/reviews/0?a=1"
        );
        let e = StrMatcher::Exact("/api/v1/reviews/0".into());
        assert_eq!(prefix.path(path, None, Some(&e)).unwrap(), "/v2/");
        assert_eq!(prefix.path("/x", None, None).unwrap(), "/v2/x");
        let re = Rewrite {
            path: Some(PathRewrite::Regex(
                Regex::new("^/api/v1/(.*)$").unwrap(),
                envoy_substitution("/\\1"),
            )),
            authority: None,
        };
        assert_eq!(re.path(path, None, None).unwrap(), "/reviews/0");
        assert_eq!(envoy_substitution("/a/\\1/\\12$x"), "/a/${1}/${12}$$x");
    }

    /// `rewrite.uri` replaces what the uri match matched, as Envoy's `prefix_rewrite`.
    #[test]
    fn prefix_rewrite_replaces_what_was_matched() {
        use mesh_config::model::StringMatch;
        let m = |exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>| {
            StrMatcher::compile(
                &StringMatch {
                    exact: exact.map(Into::into),
                    prefix: prefix.map(Into::into),
                    regex: regex.map(Into::into),
                },
                false,
            )
            .unwrap()
        };
        let to = |uri: &str| Rewrite {
            path: Some(PathRewrite::Prefix(uri.into())),
            authority: None,
        };
        // (uri match (None: no uri match), rewrite.uri, path, new path)
        let table: Vec<(Option<StrMatcher>, &str, &str, &str)> = vec![
            // a regex match: the whole path is replaced
            (
                Some(m(None, None, Some("/api/.*"))),
                "/v2",
                "/api/items",
                "/v2",
            ),
            (Some(m(None, None, Some(".*"))), "/v2", "/x/y", "/v2"),
            // prefix "": prepended to the whole path
            (Some(m(None, Some(""), None)), "/v2", "/x", "/v2/x"),
            // a prefix: replaced
            (
                Some(m(None, Some("/api"), None)),
                "/v2",
                "/api/items",
                "/v2/items",
            ),
            // exact: the whole path
            (Some(m(Some("/api"), None, None)), "/v2", "/api", "/v2"),
            // no uri match (or a presence-only one): the implied "/" prefix
            (None, "/v2/", "/x", "/v2/x"),
            (Some(m(None, None, None)), "/v2/", "/x", "/v2/x"),
            (Some(m(None, None, Some("*"))), "/v2/", "/x", "/v2/x"),
        ];
        for (matcher, uri, path, want) in table {
            assert_eq!(
                to(uri).path(path, None, matcher.as_ref()).unwrap(),
                want,
                "{matcher:?} {uri} on {path}"
            );
        }
    }
}
