//! Compiled HTTP rules and what a matched rule does.
//!
//! Each VirtualService `http` rule compiles once into a [`Rule`]: its match blocks, its
//! action (weighted route, redirect, direct response) and its policies (timeout, retries,
//! fault, mirrors, rewrite, header operations, CORS). Per request only the matching and
//! a weighted draw remain.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use mesh_config::host::qualify;
use mesh_config::model::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpRedirect, HttpRetry, HttpRoute,
    RedirectPortSelection,
};
use rand_core::Rng;
use regex::Regex;

use crate::balance::WeightedIndex;
use crate::fault::{FaultPolicy, Fraction};
use crate::matcher::{Caller, MatchBlock, MatchError, RequestHead, StrMatcher};
use crate::mesh::Pass;
use crate::retry::RetryPolicy;

/// Where a rule was written: `file:line`, and which VirtualService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOrigin {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: Arc<str>,
    /// Index of the rule in `spec.http`.
    pub index: usize,
    /// `file:line` of the rule.
    pub location: Arc<str>,
    /// The rule's name, if any.
    pub name: Option<Arc<str>>,
}

/// Header operations, compiled (names lower-cased and validated once).
///
/// As Istio's `TranslateHeadersOperations` does, a `set` or `add` of `host` or
/// `:authority` is not a header operation but an authority rewrite: its value goes to
/// [`HeaderOps::authority`] (a `set` wins over an `add`), never into `set`/`add`, and a
/// `remove` of `host` or `:authority` is ignored. [`HeaderOps::apply`] does not touch the
/// authority; whoever forwards the request applies `authority` (to the URI's authority and
/// the `host` header). Istio's validation rejects these names in response operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderOps {
    /// Overwrite.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove.
    pub remove: Vec<HeaderName>,
    /// New authority, from a `set` or `add` of `host` or `:authority`.
    pub authority: Option<HeaderValue>,
}

/// True for the header names Istio treats as the authority (`host`, `:authority`).
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

impl HeaderOps {
    fn compile(ops: Option<&HeaderOperations>) -> Self {
        let Some(ops) = ops else {
            return HeaderOps::default();
        };
        let pair = |(k, v): (&String, &String)| {
            if is_authority(k) {
                return None;
            }
            Some((
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        let authority = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter(|(k, _)| is_authority(k))
                .find_map(|(_, v)| HeaderValue::from_str(v).ok())
        };
        HeaderOps {
            set: ops.set.iter().filter_map(pair).collect(),
            add: ops.add.iter().filter_map(pair).collect(),
            remove: ops
                .remove
                .iter()
                .filter(|k| !is_authority(k))
                .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            authority: authority(&ops.set).or_else(|| authority(&ops.add)),
        }
    }

    /// True when there is nothing to do (no header operation and no authority rewrite).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.authority.is_none()
    }

    /// Applies the header operations: remove, then set, then add. The authority rewrite
    /// ([`HeaderOps::authority`]) is left to the caller.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        Self::apply_merged(&[self], headers);
    }

    /// Applies several operation lists as one, the way Envoy evaluates one header
    /// parser: every removal first, then the sets and adds of each list in order. Istio
    /// merges a single destination's operations into its rule's this way.
    pub fn apply_merged(all: &[&HeaderOps], headers: &mut http::HeaderMap) {
        for ops in all {
            for k in &ops.remove {
                headers.remove(k);
            }
        }
        for ops in all {
            for (k, v) in &ops.set {
                headers.insert(k.clone(), v.clone());
            }
            for (k, v) in &ops.add {
                headers.append(k.clone(), v.clone());
            }
        }
    }
}

/// Request and response header operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderPolicy {
    /// On the request.
    pub request: HeaderOps,
    /// On the response.
    pub response: HeaderOps,
}

impl HeaderPolicy {
    fn compile(h: Option<&Headers>) -> Self {
        HeaderPolicy {
            request: HeaderOps::compile(h.and_then(|h| h.request.as_ref())),
            response: HeaderOps::compile(h.and_then(|h| h.response.as_ref())),
        }
    }
}

/// A destination of a rule, with its host qualified.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Fully qualified host.
    pub host: Arc<str>,
    /// Subset.
    pub subset: Option<Arc<str>>,
    /// Port, when the rule names one.
    pub port: Option<u16>,
    /// Weight, as written (None when unset).
    pub weight: Option<u32>,
    /// Header operations of this destination.
    pub headers: HeaderPolicy,
}

impl Target {
    fn compile(d: &Destination, ns: &str, weight: Option<i32>, headers: Option<&Headers>) -> Self {
        Target {
            host: qualify(&d.host, ns).into(),
            subset: d.subset.as_deref().map(Into::into),
            port: d.port.and_then(|p| u16::try_from(p.number).ok()),
            weight: weight.and_then(|w| u32::try_from(w).ok()),
            headers: HeaderPolicy::compile(headers),
        }
    }
}

/// Weighted destinations.
#[derive(Debug, Clone)]
pub struct Split {
    /// The destinations, in order.
    pub targets: Vec<Target>,
    index: Option<WeightedIndex>,
}

impl Split {
    fn new(targets: Vec<Target>) -> Self {
        // One destination takes all traffic whatever its weight; several share it by
        // weight, a weight of 0 taking none.
        let index = if targets.len() > 1 {
            let w: Vec<u32> = targets.iter().map(|t| t.weight.unwrap_or(0)).collect();
            WeightedIndex::new(&w)
        } else {
            None
        };
        Split { targets, index }
    }

    /// Draws a destination (and its index).
    #[inline]
    pub fn pick(&self, rng: &mut dyn Rng) -> Option<(usize, &Target)> {
        let i = match &self.index {
            Some(index) => index.pick(rng.next_u64()),
            None => 0,
        };
        self.targets.get(i).map(|t| (i, t))
    }
}

/// A compiled redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Status (301 by default).
    pub status: u16,
    /// Replacement path.
    pub uri: Option<String>,
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
    fn compile(r: &HttpRedirect) -> Self {
        let port = match (r.port, r.derive_port) {
            // Port 0 is no port redirect, as in Envoy.
            (Some(p), _) if p != 0 => u16::try_from(p).ok().map(RedirectPort::Port),
            (_, Some(RedirectPortSelection::FromRequestPort)) => Some(RedirectPort::FromRequest),
            _ => None,
        };
        Redirect {
            status: r
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
            uri: r.uri.clone(),
            authority: r.authority.clone(),
            port,
            scheme: r.scheme.clone(),
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
    /// - path: the redirect's `uri` (with the request's query string unless it has one),
    ///   else the request's path and query.
    pub fn location(&self, head: &RequestHead<'_>) -> String {
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
        let path = self.uri.as_deref().unwrap_or(head.path);
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
    /// The new path (with the query string) for a request whose uri matched
    /// `matched_uri` (the uri matcher of the block that matched, if any).
    pub fn path(
        &self,
        path: &str,
        query: Option<&str>,
        matched_uri: Option<&StrMatcher>,
    ) -> Option<String> {
        let new = match self.path.as_ref()? {
            PathRewrite::Prefix(to) => match matched_uri {
                Some(StrMatcher::Prefix(p) | StrMatcher::PrefixIgnoreCase(p)) => {
                    format!("{to}{}", path.get(p.len()..).unwrap_or(""))
                }
                // Envoy's prefix rewrite after a path or safe_regex match replaces it all.
                Some(
                    StrMatcher::Exact(_) | StrMatcher::ExactIgnoreCase(_) | StrMatcher::Regex(_),
                ) => to.clone(),
                // No uri match: Envoy's prefix rewrite of the implied "/" prefix.
                Some(StrMatcher::Any) | None => {
                    format!("{to}{}", path.strip_prefix('/').unwrap_or(path))
                }
            },
            PathRewrite::Regex(re, with) => re.replace_all(path, with.as_str()).into_owned(),
        };
        Some(match query {
            Some(q) => format!("{new}?{q}"),
            None => new,
        })
    }
}

/// A mirror destination and its share.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// Where copies go.
    pub target: Target,
    /// Share of requests copied.
    pub share: Fraction,
}

/// A compiled CORS policy; its header values are ready to be sent.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins.
    pub origins: Vec<StrMatcher>,
    /// `Access-Control-Allow-Methods`.
    pub methods: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Option<HeaderValue>,
    /// `Access-Control-Max-Age` (seconds).
    pub max_age: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// Answer unmatched preflights without forwarding them.
    pub ignore_unmatched_preflights: bool,
}

impl Cors {
    fn compile(c: &CorsPolicy) -> Result<Self, MatchError> {
        let mut origins = Vec::new();
        for o in &c.allow_origin {
            origins.push(StrMatcher::Exact(o.as_str().into()));
        }
        for o in &c.allow_origins {
            origins.push(StrMatcher::compile(o, false)?);
        }
        let join = |v: &[String]| {
            (!v.is_empty())
                .then(|| HeaderValue::from_str(&v.join(",")).ok())
                .flatten()
        };
        Ok(Cors {
            origins,
            methods: join(&c.allow_methods),
            allow_headers: join(&c.allow_headers),
            expose_headers: join(&c.expose_headers),
            max_age: c.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
            credentials: c.allow_credentials == Some(true),
            ignore_unmatched_preflights: c.unmatched_preflights
                == Some(mesh_config::model::UnmatchedPreflights::Ignore),
        })
    }

    /// True when `origin` is allowed (`*` allows any).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| match m {
            StrMatcher::Exact(e) if &**e == "*" => true,
            m => m.matches(origin),
        })
    }
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to weighted destinations.
    Route(Split),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct(DirectResponse),
}

/// A compiled HTTP rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was written.
    pub origin: RuleOrigin,
    /// Match blocks (any); empty matches everything.
    pub matches: Vec<MatchBlock>,
    /// For a rule inlined from a delegate VirtualService: the root rule's blocks (any
    /// must match too).
    pub parent_matches: Vec<MatchBlock>,
    /// What it does.
    pub action: Action,
    /// Whole-request timeout (None: disabled, Istio's default).
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Fault injection.
    pub fault: Option<FaultPolicy>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// Rewrite.
    pub rewrite: Option<Rewrite>,
    /// Header operations.
    pub headers: HeaderPolicy,
    /// CORS.
    pub cors: Option<Cors>,
}

impl Rule {
    /// Compiles rule `index` of a VirtualService in namespace `ns`.
    pub fn compile(
        r: &HttpRoute,
        ns: &str,
        origin: RuleOrigin,
        default_retry: &HttpRetry,
    ) -> Result<Self, MatchError> {
        let matches = r
            .match_
            .iter()
            .map(|m| MatchBlock::compile(m, ns))
            .collect::<Result<Vec<_>, _>>()?;
        let action = if let Some(rd) = &r.redirect {
            Action::Redirect(Redirect::compile(rd))
        } else if let Some(dr) = &r.direct_response {
            let body: Vec<u8> = match &dr.body {
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), _) => s.clone().into_bytes(),
                    (None, Some(b64)) => decode_base64(b64),
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            Action::Direct(DirectResponse {
                status: u16::try_from(dr.status).unwrap_or(500),
                body: body.into(),
            })
        } else {
            Action::Route(Split::new(
                r.route
                    .iter()
                    .map(|d| Target::compile(&d.destination, ns, d.weight, d.headers.as_ref()))
                    .collect(),
            ))
        };
        let mirror_share = match (r.mirror_percentage, r.mirror_percent) {
            (Some(p), _) => Fraction::from_percent(p.value),
            (None, Some(p)) => Fraction::from_percent(f64::from(p)),
            (None, None) => Fraction::ALL,
        };
        let mut mirrors: Vec<Mirror> = r
            .mirror
            .iter()
            .map(|d| Mirror {
                target: Target::compile(d, ns, None, None),
                share: mirror_share,
            })
            .collect();
        mirrors.extend(r.mirrors.iter().map(|m| {
            Mirror {
                target: Target::compile(&m.destination, ns, None, None),
                share: m
                    .percentage
                    .map_or(Fraction::ALL, |p| Fraction::from_percent(p.value)),
            }
        }));
        let rewrite = match &r.rewrite {
            Some(rw) => {
                let path = match (&rw.uri, &rw.uri_regex_rewrite) {
                    (Some(u), _) => Some(PathRewrite::Prefix(u.clone())),
                    (None, Some(rr)) => Some(PathRewrite::Regex(
                        mesh_config::re2::compile(&rr.match_)
                            .map_err(|e| MatchError::Regex(rr.match_.clone(), e))?,
                        envoy_substitution(&rr.rewrite),
                    )),
                    (None, None) => None,
                };
                Some(Rewrite {
                    path,
                    authority: rw
                        .authority
                        .as_deref()
                        .and_then(|a| HeaderValue::from_str(a).ok()),
                })
            }
            None => None,
        };
        Ok(Rule {
            origin,
            matches,
            parent_matches: Vec::new(),
            action,
            timeout: r.timeout.map(|d| d.get()).filter(|d| !d.is_zero()),
            retry: RetryPolicy::compile(r.retries.as_ref(), default_retry),
            fault: r.fault.as_ref().map(FaultPolicy::compile),
            mirrors,
            rewrite,
            headers: HeaderPolicy::compile(r.headers.as_ref()),
            cors: r.cors_policy.as_ref().map(Cors::compile).transpose()?,
        })
    }

    /// The block that matches the request and its index, if the rule applies
    /// (`Some(None)` for a rule without blocks). `gateways` are the VirtualService's.
    pub fn matching_block(
        &self,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        gateways: &[Box<str>],
    ) -> Option<Option<(usize, &MatchBlock)>> {
        self.matching_block_in(head, caller, gateways, Pass::All)
    }

    /// [`Rule::matching_block`] among the blocks `pass` considers: a block is catch-all
    /// when [`MatchBlock::is_catch_all`] says so and a rule without blocks is catch-all;
    /// a rule inlined from a delegate whose root rule has conditions never is (Istio
    /// merges the root's conditions into it), one whose root rule has none is judged by
    /// its own blocks.
    pub(crate) fn matching_block_in(
        &self,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        gateways: &[Box<str>],
        pass: Pass,
    ) -> Option<Option<(usize, &MatchBlock)>> {
        let delegated = !self.parent_matches.is_empty();
        let considered = |catch_all: bool| match pass {
            Pass::All => true,
            Pass::Specific => !catch_all,
            Pass::CatchAll => catch_all,
        };
        if delegated
            && !self
                .parent_matches
                .iter()
                .any(|b| b.matches(head, caller, gateways))
        {
            return None;
        }
        if self.matches.is_empty() {
            return (considered(!delegated)
                && crate::matcher::gateway_applies(gateways, caller.gateway))
            .then_some(None);
        }
        self.matches
            .iter()
            .enumerate()
            .find(|(_, b)| {
                considered(!delegated && b.is_catch_all()) && b.matches(head, caller, gateways)
            })
            .map(Some)
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

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = val(c) else { break };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
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
    fn rewrites() {
        let h = HeaderMap::new();
        let hd = head(&h, "reviews:9080", "/api/v1/reviews/0", Some("a=1"));
        let prefix = Rewrite {
            path: Some(PathRewrite::Prefix("/v2/".into())),
            authority: None,
        };
        let p = StrMatcher::Prefix("/api/v1/".into());
        assert_eq!(
            prefix.path(hd.path, hd.query, Some(&p)).unwrap(),
            "/v2/reviews/0?a=1"
        );
        let e = StrMatcher::Exact("/api/v1/reviews/0".into());
        assert_eq!(prefix.path(hd.path, None, Some(&e)).unwrap(), "/v2/");
        assert_eq!(prefix.path("/x", None, None).unwrap(), "/v2/x");
        let re = Rewrite {
            path: Some(PathRewrite::Regex(
                Regex::new("^/api/v1/(.*)$").unwrap(),
                envoy_substitution("/\\1"),
            )),
            authority: None,
        };
        assert_eq!(re.path(hd.path, None, None).unwrap(), "/reviews/0");
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

    #[test]
    fn redirects_follow_envoys_process_request_host() {
        let h = HeaderMap::new();
        let r = |uri: Option<&str>, authority: Option<&str>, port, scheme: Option<&str>| Redirect {
            status: 301,
            uri: uri.map(Into::into),
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
                redirect.location(&req),
                want,
                "{redirect:?} on {}://{}",
                req.scheme,
                req.authority
            );
        }
        assert_eq!(split_authority("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_authority("reviews"), ("reviews", None));
    }

    /// The reference: what `split_authority` computed before its fast path.
    fn split_reference(authority: &str) -> (&str, Option<u16>) {
        if authority.starts_with('[')
            && let Some(end) = authority.find(']')
        {
            let port = authority[end + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse().ok());
            return (&authority[..=end], port);
        }
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse() {
                Ok(p) => (h, Some(p)),
                Err(_) => (authority, None),
            },
            _ => (authority, None),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5a17),
            failure_persistence: None,
            cases: 2000,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The fast path agrees with the reference on any authority-like string.
        #[test]
        fn split_authority_agrees_with_the_reference(a in "[a-z0-9:\\[\\]+.]{0,12}") {
            proptest::prop_assert_eq!(split_authority(&a), split_reference(&a));
        }
    }

    #[test]
    fn split_authority_cases() {
        for a in [
            "reviews:9080",
            "reviews",
            "a.b:0",
            "a:65535",
            "a:65536",
            "a:",
            ":80",
            "::1",
            "[::1]:80",
            "[::1]",
            "a:+80",
            "a:0080",
            "1.2.3.4:9",
        ] {
            assert_eq!(split_authority(a), split_reference(a), "{a}");
        }
    }

    #[test]
    fn header_ops_apply_in_order() {
        let mut h = HeaderMap::new();
        h.insert("x-old", HeaderValue::from_static("1"));
        h.insert("x-set", HeaderValue::from_static("old"));
        let ops = HeaderOps::compile(Some(&HeaderOperations {
            set: [("X-Set".to_string(), "new".to_string())].into(),
            add: [("x-add".to_string(), "a".to_string())].into(),
            remove: vec!["x-old".into()],
        }));
        ops.apply(&mut h);
        assert_eq!(h.get("x-set").unwrap(), "new");
        assert_eq!(h.get("x-add").unwrap(), "a");
        assert!(h.get("x-old").is_none());
        assert_eq!(ops.authority, None);
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
    }

    /// `host` and `:authority` in `set`/`add` are an authority rewrite (Istio's
    /// TranslateHeadersOperations), `set` before `add`; removing them is ignored.
    #[test]
    fn host_and_authority_operations_rewrite_the_authority() {
        let ops = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| {
            let m = |l: &[(&str, &str)]| {
                l.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            HeaderOps::compile(Some(&HeaderOperations {
                set: m(set),
                add: m(add),
                remove: remove.iter().map(|r| r.to_string()).collect(),
            }))
        };
        // (operations, authority, header names left in set/add/remove)
        let table = [
            (
                ops(&[(":authority", "a.example")], &[], &[]),
                Some("a.example"),
                0,
            ),
            (
                ops(&[("Host", "h.example")], &[], &[]),
                Some("h.example"),
                0,
            ),
            (
                ops(&[], &[("host", "h.example")], &[]),
                Some("h.example"),
                0,
            ),
            (
                ops(&[], &[(":authority", "a.example")], &[]),
                Some("a.example"),
                0,
            ),
            (
                ops(&[("host", "set.example")], &[("host", "add.example")], &[]),
                Some("set.example"),
                0,
            ),
            (
                ops(&[("x", "1")], &[], &["host", ":authority", "x-y"]),
                None,
                2,
            ),
        ];
        for (o, authority, left) in table {
            assert_eq!(
                o.authority.as_ref().map(|v| v.to_str().unwrap()),
                authority,
                "{o:?}"
            );
            assert_eq!(o.set.len() + o.add.len() + o.remove.len(), left, "{o:?}");
            assert!(
                o.set
                    .iter()
                    .chain(&o.add)
                    .all(|(k, _)| k != http::header::HOST),
                "{o:?}"
            );
            assert!(!o.is_empty() || authority.is_none());
        }
        // apply leaves the authority alone
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("reviews"));
        ops(&[("host", "other")], &[], &["host"]).apply(&mut h);
        assert_eq!(h.get(http::header::HOST).unwrap(), "reviews");
    }
}
