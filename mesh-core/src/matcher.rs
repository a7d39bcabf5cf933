//! Request matching with Istio's (Envoy's) semantics, compiled once per configuration.
//!
//! A VirtualService `match` block is a conjunction of conditions; the blocks of one rule
//! are a disjunction; a rule without blocks matches everything. String matches are exact,
//! prefix or RE2 regex — a regex must match the *whole* value, as Envoy's `safe_regex`
//! does. The uri is the path without its query string. Header names are case-insensitive
//! (they are lower-cased here, once); several values of one header are joined with `,`
//! before matching, as Envoy does. Istio turns only an empty match (`{}`) and the literal
//! `regex: "*"` into a presence check (`canBeConvertedToPresentMatch`); `prefix: ""` stays
//! a prefix match and `regex: ".*"` a regex, so that a rewrite knows what was matched.
//!
//! In `withoutHeaders`, a condition that is not a presence check sees a missing header as
//! the empty string (Istio sets Envoy's `treat_missing_header_as_empty` there): so
//! `withoutHeaders: {x: {regex: ".*"}}` does *not* match a request without `x`. A query
//! parameter condition looks at the parameter's first value only (Envoy's
//! `getFirstValue`). A block that names `gateways` ignores its `sourceLabels` and
//! `sourceNamespace` (Istio's `sourceMatchHTTP`).
//!
//! ```
//! use mesh_config::model::StringMatch;
//! use mesh_core::matcher::StrMatcher;
//!
//! let m = StrMatcher::compile(&StringMatch { regex: Some("/api/v[0-9]+".into()), ..Default::default() }, false).unwrap();
//! assert!(m.matches("/api/v1"));
//! assert!(!m.matches("/api/v1/extra")); // full match, not search
//! ```

use http::{HeaderMap, HeaderName};
use mesh_config::model::{HttpMatchRequest, Labels, StringMatch};
use regex::Regex;

/// Why a match could not be compiled (validation normally catches these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// A regular expression that does not compile.
    #[error("invalid regular expression `{0}`: {1}")]
    Regex(String, String),
    /// A header name that is not valid.
    #[error("invalid header name `{0}`")]
    HeaderName(String),
}

/// A compiled string match.
#[derive(Debug, Clone)]
pub enum StrMatcher {
    /// Equal.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// Equal, ignoring ASCII case (the pattern is stored lower-cased).
    ExactIgnoreCase(Box<str>),
    /// Starts with, ignoring ASCII case (the pattern is stored lower-cased).
    PrefixIgnoreCase(Box<str>),
    /// The whole value matches the regex (compiled anchored, with RE2's classes), kept
    /// with the pattern as configured (what Istio names a regex route's operation by).
    Regex(Regex, Box<str>),
    /// Any value (presence).
    Any,
}

impl StrMatcher {
    /// Compiles an Istio `StringMatch`. `ignore_case` applies to exact and prefix only, as
    /// Istio's `ignoreUriCase` does. Only an empty match and the literal regex `*` compile
    /// to [`StrMatcher::Any`] (Istio's `canBeConvertedToPresentMatch`): `prefix: ""` stays
    /// `Prefix("")` and `regex: ".*"` a regex.
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, MatchError> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) if ignore_case => {
                StrMatcher::ExactIgnoreCase(e.to_ascii_lowercase().into())
            }
            (Some(e), _, _) => StrMatcher::Exact(e.as_str().into()),
            (None, Some(p), _) if ignore_case => {
                StrMatcher::PrefixIgnoreCase(p.to_ascii_lowercase().into())
            }
            (None, Some(p), _) => StrMatcher::Prefix(p.as_str().into()),
            (None, None, Some(r)) if r == "*" => StrMatcher::Any,
            (None, None, Some(r)) => StrMatcher::Regex(full_match(r)?, r.as_str().into()),
            (None, None, None) => StrMatcher::Any,
        })
    }

    /// True when `value` matches.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatcher::Exact(e) => value == &**e,
            StrMatcher::Prefix(p) => value.starts_with(&**p),
            StrMatcher::ExactIgnoreCase(e) => value.eq_ignore_ascii_case(e),
            StrMatcher::PrefixIgnoreCase(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StrMatcher::Regex(r, _) => r.is_match(value),
            StrMatcher::Any => true,
        }
    }

    /// True when `head`, `sep` and `tail` joined match, without joining them unless the
    /// matcher is a regex (`:path` with its query string). `sep` is ASCII.
    pub(crate) fn matches_joined(&self, head: &str, sep: u8, tail: &str) -> bool {
        let (h, t) = (head.as_bytes(), tail.as_bytes());
        let exact = |e: &[u8], eq: fn(&[u8], &[u8]) -> bool| {
            e.len() == h.len() + 1 + t.len()
                && eq(&e[..h.len()], h)
                && e[h.len()] == sep
                && eq(&e[h.len() + 1..], t)
        };
        let prefix = |p: &[u8], eq: fn(&[u8], &[u8]) -> bool| {
            if p.len() <= h.len() {
                eq(&h[..p.len()], p)
            } else {
                let rest = &p[h.len() + 1..];
                eq(&p[..h.len()], h)
                    && p[h.len()] == sep
                    && t.len() >= rest.len()
                    && eq(&t[..rest.len()], rest)
            }
        };
        let same: fn(&[u8], &[u8]) -> bool = |a, b| a == b;
        let same_ic: fn(&[u8], &[u8]) -> bool = |a, b| a.eq_ignore_ascii_case(b);
        match self {
            StrMatcher::Exact(e) => exact(e.as_bytes(), same),
            StrMatcher::ExactIgnoreCase(e) => exact(e.as_bytes(), same_ic),
            StrMatcher::Prefix(p) => prefix(p.as_bytes(), same),
            StrMatcher::PrefixIgnoreCase(p) => prefix(p.as_bytes(), same_ic),
            StrMatcher::Regex(r, _) => {
                let mut joined = String::with_capacity(head.len() + 1 + tail.len());
                joined.push_str(head);
                joined.push(char::from(sep));
                joined.push_str(tail);
                r.is_match(&joined)
            }
            StrMatcher::Any => true,
        }
    }

    /// True for the presence-only matcher.
    pub fn is_any(&self) -> bool {
        matches!(self, StrMatcher::Any)
    }
}

/// Compiles `re` (RE2 syntax and classes) so that it must match the whole input.
pub fn full_match(re: &str) -> Result<Regex, MatchError> {
    mesh_config::re2::compile_full(re).map_err(|e| MatchError::Regex(re.to_string(), e))
}

/// What a header condition looks at.
#[derive(Debug, Clone)]
enum HeaderTarget {
    /// A header.
    Header(HeaderName),
    /// `:authority`.
    Authority,
    /// `:method`.
    Method,
    /// `:path` (with the query string).
    Path,
    /// `:scheme`.
    Scheme,
    /// A JWT claim (`@request.auth.claims.*`): without JWT authentication, a request
    /// never has one.
    Claim,
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    target: HeaderTarget,
    value: StrMatcher,
    /// `withoutHeaders`: the condition holds when the match fails.
    invert: bool,
}

impl HeaderMatcher {
    fn compile(name: &str, m: &StringMatch, invert: bool) -> Result<Self, MatchError> {
        let lower = name.to_ascii_lowercase();
        let target = match lower.as_str() {
            ":authority" | ":host" => HeaderTarget::Authority,
            ":method" => HeaderTarget::Method,
            ":path" => HeaderTarget::Path,
            ":scheme" => HeaderTarget::Scheme,
            n if n.starts_with("@request.auth.claims.") => HeaderTarget::Claim,
            n => HeaderTarget::Header(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| MatchError::HeaderName(name.to_string()))?,
            ),
        };
        Ok(HeaderMatcher {
            target,
            value: StrMatcher::compile(m, false)?,
            invert,
        })
    }

    /// True when the condition holds for the request.
    pub fn matches_request(&self, req: &RequestHead<'_>) -> bool {
        let hit = match &self.target {
            HeaderTarget::Header(_) => return self.matches(req.headers),
            HeaderTarget::Authority => self.value.matches(req.authority),
            HeaderTarget::Method => self.value.matches(req.method),
            HeaderTarget::Scheme => self.value.matches(req.scheme),
            HeaderTarget::Path => match req.query {
                None => self.value.matches(req.path),
                Some(q) => self.value.matches_joined(req.path, b'?', q),
            },
            HeaderTarget::Claim => false,
        };
        hit != self.invert
    }

    /// True when the condition holds for `headers` (pseudo-headers and claims never
    /// appear in a header map; see [`HeaderMatcher::matches_request`]).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let HeaderTarget::Header(name) = &self.target else {
            return self.invert;
        };
        let mut values = headers.get_all(name).iter();
        let hit = match values.next() {
            // Istio sets `treat_missing_header_as_empty` on inverted value matchers.
            None => self.invert && !self.value.is_any() && self.value.matches(""),
            Some(first) => {
                if self.value.is_any() {
                    true
                } else if let Some(second) = values.next() {
                    // Several values: Envoy matches their comma-joined concatenation.
                    let mut joined = String::new();
                    for v in [first, second].into_iter().chain(values) {
                        if !joined.is_empty() {
                            joined.push(',');
                        }
                        joined.push_str(v.to_str().unwrap_or(""));
                    }
                    self.value.matches(&joined)
                } else {
                    first.to_str().is_ok_and(|v| self.value.matches(v))
                }
            }
        };
        hit != self.invert
    }
}

/// A query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    name: Box<str>,
    value: StrMatcher,
}

impl QueryMatcher {
    /// True when the query string has the parameter and its first value matches (Envoy
    /// looks at the first value only: `?v=1&v=2` does not match `exact: "2"`).
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        q.split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| *k == &*self.name)
            .is_some_and(|(_, v)| self.value.matches(v))
    }
}

/// Who is calling: the workload the request comes from and how it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Namespace of the calling workload.
    pub namespace: &'a str,
    /// Labels of the calling workload.
    pub labels: &'a Labels,
    /// The gateway the request arrived through (`namespace/name`), or `None` for
    /// workload-to-workload traffic (Istio's `mesh` gateway). Matching reads it; which
    /// VirtualServices apply is decided before: workload traffic is routed with
    /// [`CompiledMesh::route`](crate::CompiledMesh::route) (`None` here), traffic through
    /// a gateway with [`GatewayRoutes`](crate::gateway::GatewayRoutes), which sets it.
    pub gateway: Option<&'a str>,
}

/// The parts of a request that matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a str,
    /// Scheme (`http`, `https`).
    pub scheme: &'a str,
    /// Authority as sent (`reviews:9080`).
    pub authority: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Port the request is addressed to.
    pub port: u16,
}

impl<'a> RequestHead<'a> {
    /// Reads the head of an `http::Request`, with `default_port` when the URI has none.
    pub fn from_request<B>(req: &'a http::Request<B>, default_port: u16) -> Self {
        let uri = req.uri();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        RequestHead {
            method: req.method().as_str(),
            scheme: uri.scheme_str().unwrap_or("http"),
            authority,
            path: if uri.path().is_empty() {
                "/"
            } else {
                uri.path()
            },
            query: uri.query(),
            headers: req.headers(),
            port: crate::route::split_authority(authority)
                .1
                .unwrap_or(default_port),
        }
    }
}

/// A compiled match block: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    uri: Option<StrMatcher>,
    scheme: Option<StrMatcher>,
    method: Option<StrMatcher>,
    authority: Option<StrMatcher>,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    port: Option<u16>,
    source_labels: Labels,
    source_namespace: Option<Box<str>>,
    /// Gateways this block applies to (`mesh` for workload traffic); empty = the rule's.
    gateways: Vec<Box<str>>,
    /// Istio translates the block into a catch-all Envoy route (see
    /// [`MatchBlock::is_catch_all`]).
    catch_all: bool,
}

/// A condition rules can be indexed by (see [`MatchBlock::index_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexKey {
    /// A header with exactly this value.
    Header(HeaderName, Box<str>),
    /// Exactly this path.
    Path(Box<str>),
    /// A path whose first segment is exactly this (`/api/v1` → `api`).
    Segment(Box<str>),
}

/// The first segment of a path (`/api/v1` → `api`). For a prefix, only when the prefix
/// contains the whole segment (`/api/` or `/api/v1`, not `/api` nor `/ap`).
pub fn first_segment(path: &str, prefix: bool) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    match rest.find('/') {
        Some(end) => Some(&rest[..end]),
        None if prefix => None,
        None => Some(rest),
    }
}

/// Header names Istio ignores in `headers` (they are matched by their own fields).
const PSEUDO_HEADERS: [&str; 4] = ["uri", "scheme", "method", "authority"];

impl MatchBlock {
    /// The `uri` condition, if any (span names are made of it; prefix rewrites and
    /// redirects replace what it matched).
    pub fn uri(&self) -> Option<&StrMatcher> {
        self.uri.as_ref()
    }

    /// Compiles one Istio `HTTPMatchRequest`. `namespace` is the VirtualService's, used to
    /// qualify gateway names.
    pub fn compile(m: &HttpMatchRequest, namespace: &str) -> Result<Self, MatchError> {
        let s = |x: &Option<StringMatch>, ic: bool| -> Result<Option<StrMatcher>, MatchError> {
            x.as_ref().map(|m| StrMatcher::compile(m, ic)).transpose()
        };
        let mut headers = Vec::new();
        for (name, sm) in &m.headers {
            if PSEUDO_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            headers.push(HeaderMatcher::compile(name, sm, false)?);
        }
        for (name, sm) in &m.without_headers {
            headers.push(HeaderMatcher::compile(name, sm, true)?);
        }
        let mut query = Vec::new();
        for (name, sm) in &m.query_params {
            query.push(QueryMatcher {
                name: name.as_str().into(),
                value: StrMatcher::compile(sm, false)?,
            });
        }
        Ok(MatchBlock {
            uri: s(&m.uri, m.ignore_uri_case)?,
            scheme: s(&m.scheme, false)?,
            method: s(&m.method, false)?,
            authority: s(&m.authority, false)?,
            headers,
            query,
            port: m.port.and_then(|p| u16::try_from(p).ok()),
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.as_deref().map(Into::into),
            gateways: m
                .gateways
                .iter()
                .map(|g| qualify_gateway(g, namespace).into())
                .collect(),
            catch_all: is_catch_all(m),
        })
    }

    /// True when Istio translates the block into a catch-all Envoy route: prefix `/` (or no
    /// uri condition) and no scheme, method, authority, header or query condition (`port`,
    /// `gateways` and the source conditions are decided when routes are built, not in the
    /// route's match). At a gateway, Istio's `SortVHostRoutes` moves those after every
    /// other route of the virtual host.
    pub fn is_catch_all(&self) -> bool {
        self.catch_all
    }

    /// A condition the block cannot match without, usable to index rules: an exact
    /// header value, an exact path, or a path prefix that covers a whole first segment.
    pub fn index_key(&self) -> Option<IndexKey> {
        for h in &self.headers {
            if let (HeaderTarget::Header(name), StrMatcher::Exact(v), false) =
                (&h.target, &h.value, h.invert)
            {
                return Some(IndexKey::Header(name.clone(), v.clone()));
            }
        }
        match &self.uri {
            Some(StrMatcher::Exact(p)) => Some(IndexKey::Path(p.clone())),
            Some(StrMatcher::Prefix(p)) => {
                first_segment(p, true).map(|seg| IndexKey::Segment(seg.into()))
            }
            _ => None,
        }
    }

    /// True when every condition holds. `rule_gateways` are the VirtualService's gateways
    /// (qualified), used when the block names none.
    pub fn matches(
        &self,
        req: &RequestHead<'_>,
        caller: &Caller<'_>,
        rule_gateways: &[Box<str>],
    ) -> bool {
        let gateways = if self.gateways.is_empty() {
            rule_gateways
        } else {
            &self.gateways
        };
        if !gateway_applies(gateways, caller.gateway) {
            return false;
        }
        // Istio's sourceMatchHTTP: a block naming gateways ignores its source conditions.
        let source_ok = !self.gateways.is_empty()
            || (self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| ns == caller.namespace)
                && self
                    .source_labels
                    .iter()
                    .all(|(k, v)| caller.labels.get(k) == Some(v)));
        let opt = |m: &Option<StrMatcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        opt(&self.uri, req.path)
            && opt(&self.method, req.method)
            && opt(&self.scheme, req.scheme)
            && opt(&self.authority, req.authority)
            && self.port.is_none_or(|p| p == req.port)
            && source_ok
            && self.headers.iter().all(|h| h.matches_request(req))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

/// See [`MatchBlock::is_catch_all`].
fn is_catch_all(m: &HttpMatchRequest) -> bool {
    let uri_all = m
        .uri
        .as_ref()
        .is_none_or(|u| u.prefix.as_deref() == Some("/") && u.exact.is_none() && u.regex.is_none());
    uri_all
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
}

/// A gateway reference in its canonical form: `mesh` or `namespace/name` (the legacy
/// `name.namespace` form resolved as Istio resolves it).
pub fn qualify_gateway(name: &str, namespace: &str) -> String {
    mesh_config::host::GatewayRef::parse(name, namespace).canonical()
}

/// True when a request arriving through `gateway` (None = mesh) is covered by `gateways`
/// (empty = mesh only).
pub fn gateway_applies(gateways: &[Box<str>], gateway: Option<&str>) -> bool {
    match gateway {
        None => gateways.is_empty() || gateways.iter().any(|g| &**g == "mesh"),
        Some(gw) => gateways.iter().any(|g| &**g == gw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    #[test]
    fn string_matches_table() {
        // (match, ignore case, value, expected)
        let table: &[(StringMatch, bool, &str, bool)] = &[
            (
                sm(Some("/productpage"), None, None),
                false,
                "/productpage",
                true,
            ),
            (
                sm(Some("/productpage"), None, None),
                false,
                "/productpage/",
                false,
            ),
            (
                sm(Some("/productpage"), None, None),
                false,
                "/ProductPage",
                false,
            ),
            (
                sm(Some("/productpage"), None, None),
                true,
                "/ProductPage",
                true,
            ),
            (sm(None, Some("/"), None), false, "/anything", true),
            (sm(None, Some("/static"), None), false, "/static/css", true),
            (sm(None, Some("/static"), None), false, "/staticfoo", true),
            (sm(None, Some("/static"), None), false, "/Static", false),
            (sm(None, Some("/static"), None), true, "/STATIC/x", true),
            (sm(None, Some("/static"), None), true, "/st", false),
            (
                sm(None, None, Some("/api/v[0-9]+")),
                false,
                "/api/v12",
                true,
            ),
            (
                sm(None, None, Some("/api/v[0-9]+")),
                false,
                "/api/v12/x",
                false,
            ),
            (sm(None, None, Some("v[0-9]")), false, "/api/v1", false),
            (sm(None, None, Some("a|b")), false, "b", true),
            (sm(None, None, Some("a|b")), false, "ab", false),
            (sm(None, None, Some("(?i)jason")), false, "JASON", true),
            // regex is not affected by ignoreUriCase
            (sm(None, None, Some("/abc")), true, "/ABC", false),
            (sm(None, Some(""), None), false, "", true),
            (sm(None, None, Some(".*")), false, "x", true),
            (sm(Some(""), None, None), false, "", true),
            (sm(Some(""), None, None), false, "x", false),
        ];
        for (m, ic, v, want) in table {
            let c = StrMatcher::compile(m, *ic).unwrap();
            assert_eq!(c.matches(v), *want, "{m:?} ic={ic} on {v:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_matches_table() {
        let jason = sm(Some("jason"), None, None);
        let present = StringMatch::default();
        // (header name in config, match, invert, request headers, expected)
        type Case<'a> = (
            &'a str,
            &'a StringMatch,
            bool,
            &'a [(&'a str, &'a str)],
            bool,
        );
        let table: &[Case<'_>] = &[
            ("end-user", &jason, false, &[("end-user", "jason")], true),
            ("End-User", &jason, false, &[("end-user", "jason")], true),
            ("end-user", &jason, false, &[("END-USER", "jason")], true),
            ("end-user", &jason, false, &[("end-user", "Jason")], false),
            ("end-user", &jason, false, &[], false),
            ("end-user", &present, false, &[("end-user", "")], true),
            ("end-user", &present, false, &[], false),
            ("end-user", &present, true, &[], true),
            ("end-user", &present, true, &[("end-user", "x")], false),
            ("end-user", &jason, true, &[("end-user", "jason")], false),
            ("end-user", &jason, true, &[("end-user", "bob")], true),
            ("end-user", &jason, true, &[], true),
            // several values are joined with ','
            (
                "x",
                &sm(Some("a,b"), None, None),
                false,
                &[("x", "a"), ("x", "b")],
                true,
            ),
            (
                "x",
                &sm(Some("a"), None, None),
                false,
                &[("x", "a"), ("x", "b")],
                false,
            ),
            ("x", &sm(None, Some(""), None), false, &[("x", "v")], true),
        ];
        for (name, m, invert, hs, want) in table {
            let c = HeaderMatcher::compile(name, m, *invert).unwrap();
            assert_eq!(
                c.matches(&headers(hs)),
                *want,
                "{name} {m:?} invert={invert} on {hs:?}"
            );
        }
    }

    /// Only `{}` and the literal regex `*` are presence checks (Istio's
    /// canBeConvertedToPresentMatch); `prefix: ""` and `regex: ".*"` keep their kind.
    #[test]
    fn only_empty_and_star_are_presence_checks() {
        // (match, ignore case, is_any, debug form starts with)
        let table = [
            (StringMatch::default(), false, true, "Any"),
            (sm(None, None, Some("*")), false, true, "Any"),
            (sm(None, Some(""), None), false, false, "Prefix(\"\")"),
            (
                sm(None, Some(""), None),
                true,
                false,
                "PrefixIgnoreCase(\"\")",
            ),
            (sm(None, None, Some(".*")), false, false, "Regex("),
            (sm(Some(""), None, None), false, false, "Exact(\"\")"),
        ];
        for (m, ic, any, kind) in table {
            let c = StrMatcher::compile(&m, ic).unwrap();
            assert_eq!(c.is_any(), any, "{m:?}");
            assert!(format!("{c:?}").starts_with(kind), "{m:?}: {c:?}");
        }
    }

    /// In `withoutHeaders`, a missing header is the empty string for every matcher but
    /// a presence check (Istio's treat_missing_header_as_empty); `headers` are unchanged.
    #[test]
    fn without_headers_on_a_missing_header() {
        let present = StringMatch::default();
        // (match, invert, request has x?, expected)
        let table = [
            (sm(None, None, Some(".*")), true, false, false),
            (sm(None, Some(""), None), true, false, false),
            (sm(Some(""), None, None), true, false, false),
            (sm(Some("jason"), None, None), true, false, true),
            (sm(None, Some("a"), None), true, false, true),
            (sm(None, None, Some("a.*")), true, false, true),
            (present.clone(), true, false, true),
            (present.clone(), true, true, false),
            (sm(None, None, Some(".*")), true, true, false),
            (sm(Some("jason"), None, None), true, true, true),
            // not inverted: a missing header never matches
            (sm(None, None, Some(".*")), false, false, false),
            (sm(None, Some(""), None), false, false, false),
            (sm(Some(""), None, None), false, false, false),
            (present.clone(), false, false, false),
            (sm(None, Some(""), None), false, true, true),
        ];
        for (m, invert, has, want) in table {
            let c = HeaderMatcher::compile("x", &m, invert).unwrap();
            let h = if has {
                headers(&[("x", "v")])
            } else {
                HeaderMap::new()
            };
            assert_eq!(c.matches(&h), want, "{m:?} invert={invert} has={has}");
        }
    }

    #[test]
    fn path_header_matches_without_joining() {
        let hm = HeaderMap::new();
        let req = |path: &'static str, query: Option<&'static str>| RequestHead {
            method: "GET",
            scheme: "http",
            authority: "a",
            path,
            query,
            headers: &hm,
            port: 80,
        };
        // (match, ignore case, path, query, expected)
        let table = [
            (
                sm(Some("/a?b=1"), None, None),
                false,
                "/a",
                Some("b=1"),
                true,
            ),
            (
                sm(Some("/a?b=1"), None, None),
                false,
                "/a",
                Some("b=12"),
                false,
            ),
            (
                sm(Some("/a?b=1"), None, None),
                false,
                "/a?",
                Some("b=1"),
                false,
            ),
            (sm(Some("/a"), None, None), false, "/a", Some("b=1"), false),
            (sm(Some("/a"), None, None), false, "/a", None, true),
            (sm(None, Some("/a?b"), None), false, "/a", Some("b=1"), true),
            (
                sm(None, Some("/a?b"), None),
                false,
                "/a",
                Some("c=1"),
                false,
            ),
            (sm(None, Some("/a"), None), false, "/a/x", Some("c=1"), true),
            (sm(None, Some("/a?"), None), false, "/a", Some(""), true),
            (
                sm(None, Some("/a/x?c"), None),
                false,
                "/a",
                Some("c"),
                false,
            ),
            (
                sm(None, None, Some("/a\\?b=[0-9]")),
                false,
                "/a",
                Some("b=1"),
                true,
            ),
            (
                sm(None, None, Some("/a\\?b=[0-9]")),
                false,
                "/a",
                Some("b=x"),
                false,
            ),
        ];
        for (m, ic, path, query, want) in table {
            let c = HeaderMatcher {
                target: HeaderTarget::Path,
                value: StrMatcher::compile(&m, ic).unwrap(),
                invert: false,
            };
            assert_eq!(
                c.matches_request(&req(path, query)),
                want,
                "{m:?} on {path} {query:?}"
            );
        }
        let ic = StrMatcher::compile(&sm(None, Some("/A?B"), None), true).unwrap();
        assert!(ic.matches_joined("/a", b'?', "b=1"));
        let ic = StrMatcher::compile(&sm(Some("/A?B=1"), None, None), true).unwrap();
        assert!(ic.matches_joined("/a", b'?', "b=1"));
        assert!(!ic.matches_joined("/a", b'?', "b=2"));
    }

    /// Envoy matches a query parameter's first value only.
    #[test]
    fn query_params_first_value() {
        let q = |m: StringMatch| QueryMatcher {
            name: "v".into(),
            value: StrMatcher::compile(&m, false).unwrap(),
        };
        // (match, query, expected)
        let table = [
            (sm(Some("2"), None, None), "v=1&v=2", false),
            (sm(Some("1"), None, None), "v=1&v=2", true),
            (sm(Some("2"), None, None), "a=2&v=2&v=1", true),
            (sm(None, Some(""), None), "v=1&v=2", true),
            (StringMatch::default(), "x=1&v", true),
            (sm(Some(""), None, None), "v&v=1", true),
            (sm(Some("1"), None, None), "v&v=1", false),
        ];
        for (m, query, want) in table {
            assert_eq!(q(m.clone()).matches(Some(query)), want, "{m:?} {query}");
        }
    }

    /// A block naming gateways ignores sourceLabels and sourceNamespace (Istio's
    /// sourceMatchHTTP); a block without gateways requires them.
    #[test]
    fn gateways_in_a_block_ignore_source_conditions() {
        let hm = HeaderMap::new();
        let req = RequestHead {
            method: "GET",
            scheme: "http",
            authority: "a",
            path: "/",
            query: None,
            headers: &hm,
            port: 80,
        };
        let block = |gateways: &[&str]| {
            MatchBlock::compile(
                &HttpMatchRequest {
                    source_labels: [("app".to_string(), "productpage".to_string())].into(),
                    source_namespace: Some("prod".into()),
                    gateways: gateways.iter().map(|g| g.to_string()).collect(),
                    ..HttpMatchRequest::default()
                },
                "default",
            )
            .unwrap()
        };
        let pp: Labels = [("app".to_string(), "productpage".to_string())].into();
        let other = Labels::new();
        let src = |ns, labels, gateway| Caller {
            namespace: ns,
            labels,
            gateway,
        };
        let gw = Some("default/gw");
        // (block gateways, source, expected)
        let table = [
            (&["gw"][..], src("istio-system", &other, gw), true),
            (&["gw"][..], src("prod", &pp, gw), true),
            (&["gw"][..], src("prod", &pp, None), false),
            (&["gw", "mesh"][..], src("default", &other, None), true),
            (&[][..], src("prod", &pp, None), true),
            (&[][..], src("default", &pp, None), false),
            (&[][..], src("prod", &other, None), false),
        ];
        for (gws, s, want) in table {
            assert_eq!(
                block(gws).matches(&req, &s, &[]),
                want,
                "{gws:?} {} {:?}",
                s.namespace,
                s.gateway
            );
        }
    }

    #[test]
    fn query_params() {
        let q = QueryMatcher {
            name: "v".into(),
            value: StrMatcher::compile(&sm(Some("2"), None, None), false).unwrap(),
        };
        assert!(q.matches(Some("a=1&v=2")));
        assert!(!q.matches(Some("a=1&v=22")));
        assert!(!q.matches(None));
        let p = QueryMatcher {
            name: "debug".into(),
            value: StrMatcher::Any,
        };
        assert!(p.matches(Some("debug")));
        assert!(p.matches(Some("x=1&debug=")));
        assert!(!p.matches(Some("debugx=1")));
    }

    #[test]
    fn gateways() {
        let mesh: Vec<Box<str>> = vec![];
        let gw: Vec<Box<str>> = vec!["default/bookinfo-gateway".into()];
        let both: Vec<Box<str>> = vec!["default/bookinfo-gateway".into(), "mesh".into()];
        assert!(gateway_applies(&mesh, None));
        assert!(!gateway_applies(&mesh, Some("default/bookinfo-gateway")));
        assert!(!gateway_applies(&gw, None));
        assert!(gateway_applies(&gw, Some("default/bookinfo-gateway")));
        assert!(gateway_applies(&both, None));
        assert_eq!(
            qualify_gateway("bookinfo-gateway", "default"),
            "default/bookinfo-gateway"
        );
        assert_eq!(
            qualify_gateway("istio-system/gw", "default"),
            "istio-system/gw"
        );
    }
}
