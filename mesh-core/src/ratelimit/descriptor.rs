//! Rate limit descriptors: the `(key, value)` entries a route's `rate_limits` actions
//! build from a request, as Envoy's `RateLimitPolicyEntryImpl::populateDescriptors`
//! builds them.
//!
//! A rate limit entry makes one descriptor: its actions run in order, each adding one
//! entry; an action that cannot produce its entry (a missing header, headers that do not
//! match, a client without an IP address) drops the whole descriptor — except
//! `request_headers` with `skip_if_absent`, which only skips its entry. A descriptor
//! without entries is not made.

use std::net::IpAddr;

use http::HeaderName;
use mesh_config::model::envoy_ratelimit::{
    HeaderMatchSpec, HeaderMatcher as HeaderMatcherConfig, RateLimit, RateLimitAction,
    StringMatcher as StringMatcherConfig, StringPattern,
};
use regex::Regex;

use crate::matcher::RequestHead;

/// One descriptor: its entries, in order.
pub type Descriptor = Vec<(String, String)>;

/// What the actions read of a request.
#[derive(Debug, Clone, Copy)]
pub struct DescriptorRequest<'a> {
    /// The request's head (`:path` is its path with the query string).
    pub head: &'a RequestHead<'a>,
    /// The client's address (`remote_address`).
    pub remote_address: Option<IpAddr>,
    /// The cluster the route sends to, Envoy's name (`destination_cluster`).
    pub destination_cluster: Option<&'a str>,
    /// The workload's service cluster, `<app>.<namespace>` (`source_cluster`).
    pub source_cluster: &'a str,
}

/// Where a header's value is read from.
#[derive(Debug, Clone)]
enum Source {
    Path,
    Method,
    Authority,
    Scheme,
    Header(HeaderName),
    /// A name that is not a valid header name: never present.
    Never,
}

impl Source {
    fn of(name: &str) -> Self {
        match name {
            ":path" => Source::Path,
            ":method" => Source::Method,
            // Envoy keeps `Host` as `:authority`.
            ":authority" | "host" => Source::Authority,
            ":scheme" => Source::Scheme,
            n => HeaderName::from_bytes(n.as_bytes()).map_or(Source::Never, Source::Header),
        }
    }

    /// The value, several values of a header joined with `,` (Envoy's
    /// `getAllOfHeaderAsString`); `None` when absent.
    fn value(&self, head: &RequestHead<'_>) -> Option<String> {
        match self {
            Source::Path => Some(match head.query {
                Some(q) => format!("{}?{q}", head.path),
                None => head.path.to_string(),
            }),
            Source::Method => Some(head.method.to_string()),
            Source::Authority => Some(head.authority.to_string()),
            Source::Scheme => Some(head.scheme.to_string()),
            Source::Header(name) => {
                let mut values = head.headers.get_all(name).iter();
                let first = values.next()?;
                let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
                for v in values {
                    out.push(',');
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(out)
            }
            Source::Never => None,
        }
    }

    /// The first value (Envoy's `request_headers` action reads the first).
    fn first_value(&self, head: &RequestHead<'_>) -> Option<String> {
        match self {
            Source::Header(name) => head
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            other => other.value(head),
        }
    }
}

/// A compiled string pattern.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    Regex(Regex),
}

/// Envoy's `StringMatcher`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct StringMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

impl StringMatcher {
    fn compile(m: &StringMatcherConfig) -> Result<Self, String> {
        let lower = |s: &str| -> Box<str> {
            if m.ignore_case {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        };
        let pattern = match &m.pattern {
            StringPattern::Exact(s) => Pattern::Exact(lower(s)),
            StringPattern::Prefix(s) => Pattern::Prefix(lower(s)),
            StringPattern::Suffix(s) => Pattern::Suffix(lower(s)),
            StringPattern::Contains(s) => Pattern::Contains(lower(s)),
            StringPattern::Regex(re) => Pattern::Regex(
                Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("regex `{re}`: {e}"))?,
            ),
        };
        Ok(StringMatcher {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    fn matches(&self, value: &str) -> bool {
        let lowered;
        let v = if self.ignore_case && !matches!(self.pattern, Pattern::Regex(_)) {
            lowered = value.to_ascii_lowercase();
            lowered.as_str()
        } else {
            value
        };
        match &self.pattern {
            Pattern::Exact(s) => v == &**s,
            Pattern::Prefix(s) => v.starts_with(&**s),
            Pattern::Suffix(s) => v.ends_with(&**s),
            Pattern::Contains(s) => v.contains(&**s),
            Pattern::Regex(re) => re.is_match(v),
        }
    }
}

#[derive(Debug, Clone)]
enum Spec {
    Present(bool),
    String(StringMatcher),
    Range(i64, i64),
}

/// Envoy's `HeaderMatcher`, compiled.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    source: Source,
    spec: Spec,
    invert: bool,
    treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    /// Compiles a header matcher.
    pub fn compile(m: &HeaderMatcherConfig) -> Result<Self, String> {
        let spec = match &m.spec {
            HeaderMatchSpec::Present(p) => Spec::Present(*p),
            HeaderMatchSpec::String(s) => Spec::String(StringMatcher::compile(s)?),
            HeaderMatchSpec::Range { start, end } => Spec::Range(*start, *end),
        };
        Ok(HeaderMatcher {
            source: Source::of(&m.name),
            spec,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders`: a missing header matches only a presence
    /// check for absence (`present_match: false`, or `true` inverted), unless it is
    /// treated as the empty string; otherwise the value is matched and the result
    /// inverted with `invert_match`.
    pub fn matches(&self, head: &RequestHead<'_>) -> bool {
        let value = self.source.value(head);
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => String::new(),
            None => {
                let Spec::Present(present) = self.spec else {
                    return false;
                };
                return if self.invert { present } else { !present };
            }
        };
        let hit = match &self.spec {
            Spec::Present(p) => *p,
            Spec::String(s) => s.matches(&value),
            Spec::Range(start, end) => value
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| *start <= n && n < *end),
        };
        hit != self.invert
    }
}

#[derive(Debug, Clone)]
enum Action {
    SourceCluster,
    DestinationCluster,
    RequestHeaders {
        source: Source,
        key: Box<str>,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        key: Box<str>,
        value: Box<str>,
    },
    HeaderValueMatch {
        key: Box<str>,
        value: Box<str>,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
}

/// One `rate_limits` entry, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRateLimit {
    /// The filter stage it is for.
    pub stage: u32,
    /// Disabled by a runtime key (`disable_key`): the local filter skips it.
    pub has_disable_key: bool,
    actions: Vec<Action>,
}

impl CompiledRateLimit {
    /// Compiles a rate limit entry.
    pub fn compile(rl: &RateLimit) -> Result<Self, String> {
        let mut actions = Vec::with_capacity(rl.actions.len());
        for a in &rl.actions {
            actions.push(match a {
                RateLimitAction::SourceCluster => Action::SourceCluster,
                RateLimitAction::DestinationCluster => Action::DestinationCluster,
                RateLimitAction::RemoteAddress => Action::RemoteAddress,
                RateLimitAction::RequestHeaders {
                    header_name,
                    descriptor_key,
                    skip_if_absent,
                } => Action::RequestHeaders {
                    source: Source::of(header_name),
                    key: descriptor_key.as_str().into(),
                    skip_if_absent: *skip_if_absent,
                },
                RateLimitAction::GenericKey {
                    descriptor_key,
                    descriptor_value,
                } => Action::GenericKey {
                    key: descriptor_key.as_str().into(),
                    value: descriptor_value.as_str().into(),
                },
                RateLimitAction::HeaderValueMatch {
                    descriptor_key,
                    descriptor_value,
                    expect_match,
                    headers,
                } => Action::HeaderValueMatch {
                    key: descriptor_key.as_str().into(),
                    value: descriptor_value.as_str().into(),
                    expect_match: *expect_match,
                    headers: headers
                        .iter()
                        .map(HeaderMatcher::compile)
                        .collect::<Result<_, _>>()?,
                },
            });
        }
        Ok(CompiledRateLimit {
            stage: rl.stage,
            has_disable_key: !rl.disable_key.is_empty(),
            actions,
        })
    }

    /// The descriptor the actions build from `req`, if they build one (see the module
    /// documentation).
    pub fn descriptor(&self, req: &DescriptorRequest<'_>) -> Option<Descriptor> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a {
                Action::SourceCluster => {
                    entries.push(("source_cluster".to_string(), req.source_cluster.to_string()));
                }
                Action::DestinationCluster => {
                    let cluster = req.destination_cluster?;
                    entries.push(("destination_cluster".to_string(), cluster.to_string()));
                }
                Action::RequestHeaders {
                    source,
                    key,
                    skip_if_absent,
                } => match source.first_value(req.head) {
                    Some(v) => entries.push((key.to_string(), v)),
                    None if *skip_if_absent => {}
                    None => return None,
                },
                Action::RemoteAddress => {
                    let ip = req.remote_address?;
                    entries.push(("remote_address".to_string(), ip.to_canonical().to_string()));
                }
                Action::GenericKey { key, value } => {
                    entries.push((key.to_string(), value.to_string()));
                }
                Action::HeaderValueMatch {
                    key,
                    value,
                    expect_match,
                    headers,
                } => {
                    let all = headers.iter().all(|h| h.matches(req.head));
                    if all != *expect_match {
                        return None;
                    }
                    entries.push((key.to_string(), value.to_string()));
                }
            }
        }
        (!entries.is_empty()).then_some(entries)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use mesh_config::model::envoy_ratelimit::{HeaderMatchSpec, StringMatcher, StringPattern};

    use super::*;

    fn head<'a>(headers: &'a HeaderMap, path: &'a str, query: Option<&'a str>) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            scheme: "http",
            authority: "bookinfo.com",
            path,
            query,
            headers,
            port: 80,
        }
    }

    fn matcher(
        name: &str,
        spec: HeaderMatchSpec,
        invert: bool,
        missing_empty: bool,
    ) -> HeaderMatcher {
        HeaderMatcher::compile(&HeaderMatcherConfig {
            name: name.into(),
            spec,
            invert_match: invert,
            treat_missing_header_as_empty: missing_empty,
        })
        .unwrap()
    }

    fn string(pattern: StringPattern, ignore_case: bool) -> HeaderMatchSpec {
        HeaderMatchSpec::String(StringMatcher {
            pattern,
            ignore_case,
        })
    }

    #[test]
    fn header_matchers_follow_envoy() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "Jason".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        h.insert("x-num", "42".parse().unwrap());
        let with = head(&h, "/api/v1/products/7", Some("x=1"));
        // (name, spec, invert, treat missing as empty, expected)
        let table: Vec<(&str, HeaderMatchSpec, bool, bool, bool)> = vec![
            (
                "x-user",
                string(StringPattern::Exact("Jason".into()), false),
                false,
                false,
                true,
            ),
            (
                "x-user",
                string(StringPattern::Exact("jason".into()), false),
                false,
                false,
                false,
            ),
            (
                "x-user",
                string(StringPattern::Exact("jason".into()), true),
                false,
                false,
                true,
            ),
            (
                "x-user",
                string(StringPattern::Prefix("Ja".into()), false),
                false,
                false,
                true,
            ),
            (
                "x-user",
                string(StringPattern::Suffix("son".into()), false),
                false,
                false,
                true,
            ),
            (
                "x-user",
                string(StringPattern::Contains("aso".into()), false),
                false,
                false,
                true,
            ),
            (
                "x-user",
                string(StringPattern::Exact("Jason".into()), false),
                true,
                false,
                false,
            ),
            // several values: matched joined with `,`
            (
                "x-multi",
                string(StringPattern::Exact("a,b".into()), false),
                false,
                false,
                true,
            ),
            // a regex matches the whole value
            (
                ":path",
                string(
                    StringPattern::Regex("/api/v1/products/[1-9]{1,2}".into()),
                    false,
                ),
                false,
                false,
                false,
            ),
            (
                ":path",
                string(
                    StringPattern::Regex("/api/v1/products/[1-9]{1,2}\\?x=1".into()),
                    false,
                ),
                false,
                false,
                true,
            ),
            (
                ":method",
                string(StringPattern::Exact("GET".into()), false),
                false,
                false,
                true,
            ),
            (
                "host",
                string(StringPattern::Exact("bookinfo.com".into()), false),
                false,
                false,
                true,
            ),
            (
                "x-num",
                HeaderMatchSpec::Range { start: 40, end: 43 },
                false,
                false,
                true,
            ),
            (
                "x-num",
                HeaderMatchSpec::Range { start: 43, end: 50 },
                false,
                false,
                false,
            ),
            (
                "x-user",
                HeaderMatchSpec::Range { start: 0, end: 9 },
                false,
                false,
                false,
            ),
            ("x-user", HeaderMatchSpec::Present(true), false, false, true),
            ("x-user", HeaderMatchSpec::Present(true), true, false, false),
            (
                "x-user",
                HeaderMatchSpec::Present(false),
                false,
                false,
                false,
            ),
            // missing headers
            (
                "x-none",
                HeaderMatchSpec::Present(true),
                false,
                false,
                false,
            ),
            ("x-none", HeaderMatchSpec::Present(true), true, false, true),
            (
                "x-none",
                HeaderMatchSpec::Present(false),
                false,
                false,
                true,
            ),
            (
                "x-none",
                HeaderMatchSpec::Present(false),
                true,
                false,
                false,
            ),
            (
                "x-none",
                string(StringPattern::Exact("a".into()), false),
                false,
                false,
                false,
            ),
            (
                "x-none",
                string(StringPattern::Exact("a".into()), false),
                true,
                false,
                false,
            ),
            (
                "x-none",
                string(StringPattern::Exact("a".into()), false),
                true,
                true,
                true,
            ),
            (
                "x-none",
                string(StringPattern::Exact(String::new()), false),
                false,
                true,
                true,
            ),
        ];
        for (name, spec, invert, empty, want) in table {
            let m = matcher(name, spec.clone(), invert, empty);
            assert_eq!(
                m.matches(&with),
                want,
                "{name} {spec:?} invert={invert} missing-as-empty={empty}"
            );
        }
    }

    fn rl(actions: Vec<RateLimitAction>) -> CompiledRateLimit {
        CompiledRateLimit::compile(&RateLimit {
            stage: 0,
            disable_key: String::new(),
            actions,
        })
        .unwrap()
    }

    fn entries(pairs: &[(&str, &str)]) -> Descriptor {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn actions_build_envoy_descriptors() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "jason".parse().unwrap());
        let hd = head(&h, "/productpage", Some("u=normal"));
        let req = DescriptorRequest {
            head: &hd,
            remote_address: Some("::ffff:10.0.0.7".parse().unwrap()),
            destination_cluster: Some("outbound|9080||productpage.default.svc.cluster.local"),
            source_cluster: "istio-ingressgateway.istio-system",
        };
        let path = RateLimitAction::RequestHeaders {
            header_name: ":path".into(),
            descriptor_key: "PATH".into(),
            skip_if_absent: false,
        };
        let missing = |skip| RateLimitAction::RequestHeaders {
            header_name: "x-missing".into(),
            descriptor_key: "M".into(),
            skip_if_absent: skip,
        };
        let api = RateLimitAction::HeaderValueMatch {
            descriptor_key: "PATH".into(),
            descriptor_value: "api".into(),
            expect_match: true,
            headers: vec![HeaderMatcherConfig {
                name: ":path".into(),
                spec: string(StringPattern::Prefix("/api".into()), false),
                invert_match: false,
                treat_missing_header_as_empty: false,
            }],
        };
        let not_api = match &api {
            RateLimitAction::HeaderValueMatch {
                descriptor_key,
                descriptor_value,
                headers,
                ..
            } => RateLimitAction::HeaderValueMatch {
                descriptor_key: descriptor_key.clone(),
                descriptor_value: descriptor_value.clone(),
                expect_match: false,
                headers: headers.clone(),
            },
            _ => unreachable!(),
        };
        let table: Vec<(Vec<RateLimitAction>, Option<Descriptor>)> = vec![
            // Istio's task: the path, query string included (Envoy's `:path`)
            (
                vec![path.clone()],
                Some(entries(&[("PATH", "/productpage?u=normal")])),
            ),
            (
                vec![
                    RateLimitAction::GenericKey {
                        descriptor_key: "generic_key".into(),
                        descriptor_value: "test".into(),
                    },
                    path.clone(),
                ],
                Some(entries(&[
                    ("generic_key", "test"),
                    ("PATH", "/productpage?u=normal"),
                ])),
            ),
            (
                vec![RateLimitAction::RemoteAddress],
                Some(entries(&[("remote_address", "10.0.0.7")])),
            ),
            (
                vec![RateLimitAction::DestinationCluster],
                Some(entries(&[(
                    "destination_cluster",
                    "outbound|9080||productpage.default.svc.cluster.local",
                )])),
            ),
            (
                vec![RateLimitAction::SourceCluster],
                Some(entries(&[(
                    "source_cluster",
                    "istio-ingressgateway.istio-system",
                )])),
            ),
            // a missing header drops the descriptor, or only its entry with skip_if_absent
            (vec![path.clone(), missing(false)], None),
            (
                vec![path.clone(), missing(true)],
                Some(entries(&[("PATH", "/productpage?u=normal")])),
            ),
            (vec![missing(true)], None),
            // header_value_match: expect_match true / false
            (vec![api.clone()], None),
            (vec![not_api], Some(entries(&[("PATH", "api")]))),
            (
                vec![RateLimitAction::RequestHeaders {
                    header_name: "x-user".into(),
                    descriptor_key: "user".into(),
                    skip_if_absent: false,
                }],
                Some(entries(&[("user", "jason")])),
            ),
        ];
        for (actions, want) in table {
            let shown = format!("{actions:?}");
            assert_eq!(rl(actions).descriptor(&req), want, "{shown}");
        }
        // No client address, no cluster: no descriptor.
        let bare = DescriptorRequest {
            remote_address: None,
            destination_cluster: None,
            ..req
        };
        assert_eq!(
            rl(vec![RateLimitAction::RemoteAddress]).descriptor(&bare),
            None
        );
        assert_eq!(
            rl(vec![RateLimitAction::DestinationCluster]).descriptor(&bare),
            None
        );
        let api_path = head(&h, "/api/v1/products/3", None);
        let on_api = DescriptorRequest {
            head: &api_path,
            ..req
        };
        assert_eq!(
            rl(vec![api]).descriptor(&on_api),
            Some(entries(&[("PATH", "api")]))
        );
    }
}
