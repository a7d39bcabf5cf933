//! Envoy's rate limit configuration, as the patches of an EnvoyFilter write it.
//!
//! Typed forms of the Envoy messages Istio's "Enabling Rate Limits using Envoy" task puts
//! in `patch.value`: the local rate limit filter (`LocalRateLimit`, with its token
//! buckets, runtime fractions, headers and descriptors), the global rate limit filter
//! (`RateLimit`, with its rate limit service), and a route's or virtual host's
//! `rate_limits` (the actions that build descriptors). They are read from the patch's
//! JSON by [`EnvoyRead`], which follows the protobuf JSON mapping Envoy uses: field names
//! in `snake_case` or `lowerCamelCase`, `null` as absent, enums by name, 32-bit integers
//! as numbers or numeric strings, durations as seconds with an `s` suffix (`0.2s`), and a
//! `typed_config` either of the message's own `@type` or a `TypedStruct` wrapping it.
//!
//! Reading never fails on valid Envoy configuration: a field the mesh does not act on
//! (a runtime key, a statistics prefix, a feature Envoy has and the mesh has not) is
//! kept out of the typed form and reported as parsed but not enforced, at its field path.
//! A value Envoy itself would reject (a negative or missing token count, a zero or too
//! short fill interval, an unknown denominator) is an error at its path.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::envoy_filter::{ApplyTo, Finding, FindingKind};
use crate::diag::Code;
use crate::path::FieldPath;

/// `type.googleapis.com/` type URLs of the messages read here.
pub mod type_url {
    /// The local rate limit filter's configuration.
    pub const LOCAL_RATE_LIMIT: &str =
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
    /// The global rate limit filter's configuration.
    pub const RATE_LIMIT: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
    /// The global rate limit filter's per-route configuration.
    pub const RATE_LIMIT_PER_ROUTE: &str =
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
    /// `udpa.type.v1.TypedStruct` (what Istio's task writes).
    pub const UDPA_TYPED_STRUCT: &str = "udpa.type.v1.TypedStruct";
    /// `xds.type.v3.TypedStruct`.
    pub const XDS_TYPED_STRUCT: &str = "xds.type.v3.TypedStruct";
}

/// Envoy's shortest local rate limit fill interval.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Envoy's `type.v3.TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    /// The most tokens the bucket holds, and how many it starts with (0: every request is
    /// limited).
    pub max_tokens: u32,
    /// Tokens added per `fill_interval` (1 when not given).
    pub tokens_per_fill: u32,
    /// The interval `tokens_per_fill` tokens are added over, in whole milliseconds.
    pub fill_interval: Duration,
}

/// The denominator of a `FractionalPercent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denominator {
    /// 100.
    Hundred,
    /// 10 000.
    TenThousand,
    /// 1 000 000.
    Million,
}

impl Denominator {
    /// Its value.
    pub fn value(self) -> u32 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

/// Envoy's `type.v3.FractionalPercent`: `numerator / denominator` (above 1: always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FractionalPercent {
    /// Numerator.
    pub numerator: u32,
    /// Denominator.
    pub denominator: Denominator,
}

impl FractionalPercent {
    /// 100 %.
    pub const ALL: FractionalPercent = FractionalPercent {
        numerator: 100,
        denominator: Denominator::Hundred,
    };

    /// The fraction in millionths, at most 1 000 000.
    pub fn per_million(self) -> u32 {
        let scale = 1_000_000 / self.denominator.value();
        self.numerator.saturating_mul(scale).min(1_000_000)
    }
}

/// How a header is added (Envoy's `HeaderValueOption`, `append` / `append_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppendAction {
    /// Add a value, keeping those there (`append: true`, Envoy's default).
    AppendIfExistsOrAdd,
    /// Add only when the header is absent.
    AddIfAbsent,
    /// Replace the values, or add (`append: false`).
    OverwriteIfExistsOrAdd,
    /// Replace the values only when the header is there.
    OverwriteIfExists,
}

/// A header to add.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValueOption {
    /// Name (lower case).
    pub key: String,
    /// Value.
    pub value: String,
    /// How.
    pub append: AppendAction,
}

/// A local rate limit descriptor and its token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalDescriptor {
    /// `(key, value)` entries, in order.
    pub entries: Vec<(String, String)>,
    /// Its bucket.
    pub token_bucket: TokenBucket,
}

/// Whether the `x-ratelimit-*` headers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XRateLimitHeaders {
    /// No.
    #[default]
    Off,
    /// `x-ratelimit-limit`, `-remaining` and `-reset`, as draft 03 of the IETF
    /// RateLimit header fields defines them.
    DraftVersion03,
}

/// Which of a virtual host's rate limits a route's requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VhRateLimits {
    /// The virtual host's, when the route has none (Envoy's default).
    #[default]
    Override,
    /// The route's and the virtual host's.
    Include,
    /// The route's only.
    Ignore,
}

/// A runtime fraction: the share of requests a filter is enabled or enforced for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuntimeFraction {
    /// The fraction (the mesh has no runtime: the default is the value).
    pub default_value: FractionalPercent,
    /// The runtime key (kept for reference).
    pub runtime_key: String,
}

/// Envoy's `LocalRateLimit` (the local rate limit filter, and its per-route form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LocalRateLimit {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// The status of a limited request (429 when absent or below 400).
    pub status: Option<u16>,
    /// The default bucket; without one, only descriptors limit.
    pub token_bucket: Option<TokenBucket>,
    /// The share of requests checked; without it, none (the filter is off).
    pub filter_enabled: Option<RuntimeFraction>,
    /// The share of limited requests refused; without it, none (counted only).
    pub filter_enforced: Option<RuntimeFraction>,
    /// Headers added to a limited request that is let through (not enforced).
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// Headers added to the refusal.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Descriptors with their own buckets.
    pub descriptors: Vec<LocalDescriptor>,
    /// The stage of the route rate limits it reads (0-10).
    pub stage: u32,
    /// `x-ratelimit-*` headers.
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
    /// Which virtual host rate limits apply.
    pub vh_rate_limits: VhRateLimits,
    /// Whether a request matching a descriptor also takes a token of the default bucket
    /// (Envoy's default: yes).
    pub always_consume_default_token_bucket: bool,
    /// gRPC callers get RESOURCE_EXHAUSTED rather than UNAVAILABLE.
    pub rate_limited_as_resource_exhausted: bool,
    /// Descriptors built by the filter itself (instead of the route's `rate_limits`).
    pub rate_limits: Vec<RateLimit>,
}

/// Envoy's `RateLimit` HTTP filter configuration (the global rate limit filter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GlobalRateLimitFilter {
    /// The rate limit domain.
    pub domain: String,
    /// The stage of the route rate limits it reads (0-10).
    pub stage: u32,
    /// `internal`, `external` or `both` (the default).
    pub request_type: String,
    /// How long to wait for the limiter (Envoy's default: 20 ms).
    pub timeout: Duration,
    /// Refuse requests when the limiter fails (the default lets them through).
    pub failure_mode_deny: bool,
    /// gRPC callers get RESOURCE_EXHAUSTED rather than UNAVAILABLE.
    pub rate_limited_as_resource_exhausted: bool,
    /// `x-ratelimit-*` headers.
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
    /// No `x-envoy-ratelimited` header on refusals.
    pub disable_x_envoy_ratelimited_header: bool,
    /// The status of a limited request (429 when absent).
    pub rate_limited_status: Option<u16>,
    /// The status when the limiter fails and `failure_mode_deny` is set (500 when
    /// absent).
    pub status_on_error: Option<u16>,
    /// The cluster of the rate limit service as written (the mesh talks to the limiter
    /// directly).
    pub service_cluster: String,
    /// Headers added to a refusal.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Descriptors built by the filter itself (instead of the route's `rate_limits`).
    pub rate_limits: Vec<RateLimit>,
}

/// Envoy's default timeout of a rate limit service call.
pub const DEFAULT_RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(20);

/// A route's or virtual host's `rate_limits` entry: actions building one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RateLimit {
    /// The filter stage it is for (0-10).
    pub stage: u32,
    /// A runtime key disabling it (set: the local filter skips the entry).
    pub disable_key: String,
    /// The actions, in order: each adds one entry to the descriptor.
    pub actions: Vec<RateLimitAction>,
}

/// One action of a rate limit entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateLimitAction {
    /// `("source_cluster", <the workload's service cluster>)`.
    SourceCluster,
    /// `("destination_cluster", <the route's cluster>)`.
    DestinationCluster,
    /// `(descriptor_key, <the header's value>)`; a missing header drops the descriptor,
    /// or only this entry with `skip_if_absent`.
    RequestHeaders {
        /// The header (lower case; `:path`, `:method`, `:authority`, `:scheme` too).
        header_name: String,
        /// The key.
        descriptor_key: String,
        /// Skip the entry rather than the descriptor when the header is missing.
        skip_if_absent: bool,
    },
    /// `("remote_address", <the client's address>)`.
    RemoteAddress,
    /// `(descriptor_key, descriptor_value)` (key `generic_key` when not given).
    GenericKey {
        /// The key.
        descriptor_key: String,
        /// The value.
        descriptor_value: String,
    },
    /// `(descriptor_key, descriptor_value)` when the headers match (or do not, with
    /// `expect_match: false`); else no descriptor (key `header_match` when not given).
    HeaderValueMatch {
        /// The key.
        descriptor_key: String,
        /// The value.
        descriptor_value: String,
        /// Whether the headers must match (true) or must not (false).
        expect_match: bool,
        /// The header matchers, all of which must match.
        headers: Vec<HeaderMatcher>,
    },
}

/// Envoy's `config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderMatcher {
    /// The header (lower case; pseudo-headers too).
    pub name: String,
    /// How its value is matched.
    pub spec: HeaderMatchSpec,
    /// Invert the result.
    pub invert_match: bool,
    /// A missing header is matched as the empty string.
    pub treat_missing_header_as_empty: bool,
}

/// How a header value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderMatchSpec {
    /// Presence (`true`) or absence (`false`).
    Present(bool),
    /// A string match.
    String(StringMatcher),
    /// An integer in `[start, end)`.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
}

/// Envoy's `type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringMatcher {
    /// The pattern.
    pub pattern: StringPattern,
    /// ASCII case-insensitive (not for regexes).
    pub ignore_case: bool,
}

/// A string pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringPattern {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// The whole value matches this RE2 regular expression.
    Regex(String),
}

/// A virtual host's or route's rate limit settings (see [`read_route_settings`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSettings {
    /// The local rate limit filter's per-route configuration.
    pub local: Option<LocalRateLimit>,
    /// `rate_limits`.
    pub rate_limits: Vec<RateLimit>,
}

// ---------------------------------------------------------------------------------------
// Reading

/// Reads Envoy messages from JSON, collecting [`Finding`]s (see the module documentation).
#[derive(Debug)]
pub struct EnvoyRead<'a> {
    findings: &'a mut Vec<Finding>,
}

impl<'a> EnvoyRead<'a> {
    /// A reader adding its findings to `findings`.
    pub fn new(findings: &'a mut Vec<Finding>) -> Self {
        EnvoyRead { findings }
    }

    /// Reports a value that cannot be used.
    pub fn invalid(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.error(Code::InvalidValue, path, message);
    }

    /// Reports a required field that is missing.
    fn missing(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.error(Code::MissingField, path, message);
    }

    /// Reports a value of the wrong type.
    fn mistyped(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.error(Code::TypeMismatch, path, message);
    }

    /// Reports an error with `code`.
    pub fn error(&mut self, code: Code, path: &FieldPath, message: impl Into<String>) {
        self.findings.push(Finding {
            path: path.clone(),
            kind: FindingKind::Invalid,
            code,
            message: message.into(),
        });
    }

    /// Reports a field read but not acted on.
    pub fn not_enforced(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.findings.push(Finding {
            path: path.clone(),
            kind: FindingKind::NotEnforced,
            code: Code::NotEnforced,
            message: message.into(),
        });
    }

    fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.kind == FindingKind::Invalid)
            .count()
    }

    /// The mapping `v` is, or an error (`null` is an empty mapping).
    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &FieldPath,
        message: &'static str,
    ) -> Option<Obj<'v>> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match v {
            Value::Object(map) => Some(Obj::new(map, path.clone(), message)),
            Value::Null => Some(Obj::new(EMPTY.get_or_init(Map::new), path.clone(), message)),
            other => {
                self.mistyped(
                    path,
                    format!("expected a mapping ({message}), found {}", json_type(other)),
                );
                None
            }
        }
    }

    fn u32(&mut self, v: &Value, path: &FieldPath) -> Option<u32> {
        let n = match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(i)
                } else {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e18)
                        .map(|f| f as i64)
                }
            }
            // The protobuf JSON mapping accepts numbers as strings.
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n < 0 => {
                self.invalid(path, format!("must not be negative, found {n}"));
                None
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.invalid(path, format!("{n} is too large (at most {})", u32::MAX));
                    None
                }
            },
            None => {
                self.mistyped(
                    path,
                    format!("expected a non-negative integer, found {}", shown(v)),
                );
                None
            }
        }
    }

    fn i64(&mut self, v: &Value, path: &FieldPath) -> Option<i64> {
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if n.is_none() {
            self.mistyped(path, format!("expected an integer, found {}", shown(v)));
        }
        n
    }

    fn bool(&mut self, v: &Value, path: &FieldPath) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.mistyped(
                    path,
                    format!("expected true or false, found {}", shown(other)),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.mistyped(path, format!("expected a string, found {}", shown(other)));
                None
            }
        }
    }

    /// A `google.protobuf.Duration` in its JSON form: seconds with an `s` suffix.
    fn duration(&mut self, v: &Value, path: &FieldPath) -> Option<Duration> {
        let Value::String(s) = v else {
            self.error(
                Code::InvalidDuration,
                path,
                format!(
                    "expected a duration in seconds such as `60s` or `0.2s`, found {}",
                    shown(v)
                ),
            );
            return None;
        };
        match parse_proto_duration(s) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(Code::InvalidDuration, path, msg);
                None
            }
        }
    }

    /// An enum value by name (or number, as the protobuf JSON mapping allows).
    fn enumeration<T: Copy>(
        &mut self,
        v: &Value,
        path: &FieldPath,
        values: &[(&str, T)],
    ) -> Option<T> {
        let found = match v {
            Value::String(s) => values.iter().find(|(n, _)| *n == s).map(|(_, t)| *t),
            Value::Number(n) => n
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| values.get(i))
                .map(|(_, t)| *t),
            _ => None,
        };
        if found.is_none() {
            let names: Vec<String> = values.iter().map(|(n, _)| format!("`{n}`")).collect();
            self.error(
                Code::InvalidEnum,
                path,
                format!(
                    "unknown value {}: expected one of {}",
                    shown(v),
                    names.join(", ")
                ),
            );
        }
        found
    }

    fn list<'v>(&mut self, v: &'v Value, path: &FieldPath) -> &'v [Value] {
        match v {
            Value::Array(items) => items,
            Value::Null => &[],
            other => {
                self.mistyped(
                    path,
                    format!("expected a sequence, found {}", json_type(other)),
                );
                &[]
            }
        }
    }
}

/// The JSON type of a value, for messages.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// A value as a message shows it.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        other => json_type(other).to_string(),
    }
}

/// Parses a protobuf JSON duration: `[digits][.digits]s`, at most nine fraction digits.
pub fn parse_proto_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not an Envoy duration: write seconds with an `s` suffix, such as `60s` or `0.2s`"
        )
    };
    if s.starts_with('-') {
        return Err(format!("`{s}`: durations must not be negative"));
    }
    let body = s.strip_suffix('s').ok_or_else(bad)?;
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let secs: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    // protobuf's Duration holds at most 315 576 000 000 seconds (10 000 years).
    if secs > 315_576_000_000 {
        return Err(format!("`{s}` is too large"));
    }
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(Duration::new(secs, nanos))
}

/// Converts `snake_case` to `lowerCamelCase` (the protobuf JSON name).
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A mapping being read: the fields taken so far, to report the others.
struct Obj<'v> {
    map: &'v Map<String, Value>,
    path: FieldPath,
    message: &'static str,
    used: BTreeSet<&'v str>,
}

impl<'v> Obj<'v> {
    fn new(map: &'v Map<String, Value>, path: FieldPath, message: &'static str) -> Self {
        Obj {
            map,
            path,
            message,
            used: BTreeSet::new(),
        }
    }

    /// Field `snake` (or its `lowerCamelCase` name), with its path; `null` is absent.
    fn take(&mut self, snake: &str) -> Option<(&'v Value, FieldPath)> {
        let camel = camel(snake);
        for name in [snake, camel.as_str()] {
            if let Some((k, v)) = self.map.get_key_value(name) {
                self.used.insert(k.as_str());
                if v.is_null() {
                    return None;
                }
                return Some((v, self.path.key(k.as_str())));
            }
        }
        None
    }

    /// Reports the fields `skip` lists as not enforced (with their reason), and every
    /// field not taken as unknown.
    fn finish(self, r: &mut EnvoyRead<'_>, skip: &[(&str, &str)]) {
        for (k, v) in self.map {
            if self.used.contains(k.as_str()) || v.is_null() {
                continue;
            }
            let path = self.path.key(k.as_str());
            if let Some((_, why)) = skip
                .iter()
                .find(|(name, _)| *name == k || camel(name) == *k)
            {
                r.not_enforced(&path, format!("`{k}`: {why}"));
            } else {
                r.not_enforced(
                    &path,
                    format!(
                        "`{k}` of {}: the mesh does not act on it; it is ignored",
                        self.message
                    ),
                );
            }
        }
    }
}

const STATS_NOTE: &str = "Envoy's statistics are not kept";

/// The message a `typed_config` (or a `typed_per_filter_config` entry) holds, unwrapping
/// a `TypedStruct`: its type URL (without `type.googleapis.com/`), its fields, and their
/// path. `None` when it is not a mapping with a type (reported).
fn typed<'v>(
    r: &mut EnvoyRead<'_>,
    v: &'v Value,
    path: &FieldPath,
) -> Option<(String, &'v Value, FieldPath)> {
    let mut obj = r.object(v, path, "a typed configuration with `@type`")?;
    let Some((t, tp)) = obj.take("@type") else {
        r.missing(
            path,
            "`@type` is required: the type URL of the configuration",
        );
        return None;
    };
    let t = r.string(t, &tp)?;
    let short = t
        .rsplit_once('/')
        .map_or(t.as_str(), |(_, s)| s)
        .to_string();
    if short == type_url::UDPA_TYPED_STRUCT || short == type_url::XDS_TYPED_STRUCT {
        let (u, up) = match obj.take("type_url") {
            Some(x) => x,
            None => {
                r.missing(
                    path,
                    "a TypedStruct needs `type_url`: the type of its `value`",
                );
                return None;
            }
        };
        let u = r.string(u, &up)?;
        let inner = u
            .rsplit_once('/')
            .map_or(u.as_str(), |(_, s)| s)
            .to_string();
        let (value, vp) = match obj.take("value") {
            Some(x) => x,
            None => (&Value::Null, path.key("value")),
        };
        obj.finish(r, &[]);
        return Some((inner, value, vp));
    }
    // The message's own fields sit next to `@type`.
    Some((short, v, path.clone()))
}

/// The fields of a typed message that is not a TypedStruct (its `@type` is not a field).
fn message<'v>(
    r: &mut EnvoyRead<'_>,
    v: &'v Value,
    path: &FieldPath,
    what: &'static str,
) -> Option<Obj<'v>> {
    let mut obj = r.object(v, path, what)?;
    let _ = obj.take("@type");
    Some(obj)
}

/// Reads the value of an HTTP_FILTER patch adding the local rate limit filter.
pub fn read_local_filter(
    r: &mut EnvoyRead<'_>,
    value: &Value,
    path: &FieldPath,
) -> Option<LocalRateLimit> {
    read_filter(
        r,
        value,
        path,
        type_url::LOCAL_RATE_LIMIT,
        "local rate limit filter",
        |r, inner, ip| read_local(r, inner, ip, false),
    )
}

/// Reads an HTTP filter (`name`, `typed_config` of type `url`, read by `read`) of an
/// HTTP_FILTER patch adding the `what`.
fn read_filter<T>(
    r: &mut EnvoyRead<'_>,
    value: &Value,
    path: &FieldPath,
    url: &str,
    what: &str,
    read: impl FnOnce(&mut EnvoyRead<'_>, &Value, &FieldPath) -> Option<T>,
) -> Option<T> {
    let before = r.errors();
    let mut filter = r.object(value, path, "an HTTP filter")?;
    let _ = filter.take("name");
    let config = match filter.take("typed_config") {
        Some((tc, tp)) => {
            let (t, inner, ip) = typed(r, tc, &tp)?;
            if t != url {
                r.invalid(
                    &tp,
                    format!("the {what}'s typed_config must be `{url}`, found `{t}`"),
                );
                None
            } else {
                read(r, inner, &ip)
            }
        }
        None => {
            r.missing(
                path,
                format!("`typed_config` is required: Envoy finds the {what} by its type"),
            );
            None
        }
    };
    filter.finish(
        r,
        &[
            (
                "config_discovery",
                "filters from the extension config discovery service are not loaded",
            ),
            (
                "disabled",
                "filters disabled by default are not implemented",
            ),
            ("is_optional", "optional filters are not implemented"),
        ],
    );
    config.filter(|_| r.errors() == before)
}

/// Reads a `LocalRateLimit`; `per_route` requires its token bucket, as Envoy does.
fn read_local(
    r: &mut EnvoyRead<'_>,
    v: &Value,
    path: &FieldPath,
    per_route: bool,
) -> Option<LocalRateLimit> {
    let before = r.errors();
    let mut o = message(
        r,
        v,
        path,
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    )?;
    let mut c = LocalRateLimit {
        always_consume_default_token_bucket: true,
        ..LocalRateLimit::default()
    };
    match o.take("stat_prefix") {
        Some((s, sp)) => {
            if let Some(s) = r.string(s, &sp) {
                if s.is_empty() {
                    r.invalid(&sp, "stat_prefix must not be empty");
                }
                c.stat_prefix = s;
            }
        }
        None => r.missing(
            path,
            "`stat_prefix` is required (Envoy rejects the filter without it)",
        ),
    }
    if let Some((s, sp)) = o.take("status") {
        c.status = http_status(r, s, &sp);
    }
    if let Some((tb, tp)) = o.take("token_bucket") {
        c.token_bucket = token_bucket(r, tb, &tp, "token bucket");
    } else if per_route {
        r.missing(
            path,
            "`token_bucket` is required in a per-route configuration (Envoy: \"local rate limit token bucket must be set for per filter configs\")",
        );
    }
    if let Some((f, fp)) = o.take("filter_enabled") {
        c.filter_enabled = runtime_fraction(r, f, &fp);
    }
    if let Some((f, fp)) = o.take("filter_enforced") {
        c.filter_enforced = runtime_fraction(r, f, &fp);
    }
    if let Some((h, hp)) = o.take("request_headers_to_add_when_not_enforced") {
        c.request_headers_to_add_when_not_enforced = headers_to_add(r, h, &hp);
    }
    if let Some((h, hp)) = o.take("response_headers_to_add") {
        c.response_headers_to_add = headers_to_add(r, h, &hp);
        if c.response_headers_to_add.len() > 10 {
            r.invalid(&hp, "at most 10 response headers may be added");
        }
    }
    if let Some((d, dp)) = o.take("descriptors") {
        let mut seen: Vec<&Vec<(String, String)>> = Vec::new();
        let list = r.list(d, &dp);
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            if let Some(desc) = local_descriptor(r, item, &dp.index(i)) {
                out.push((i, desc));
            }
        }
        for (i, desc) in &out {
            if seen.contains(&&desc.entries) {
                r.invalid(
                    &dp.index(*i),
                    format!(
                        "duplicate descriptor {}: each descriptor may be given once",
                        show_entries(&desc.entries)
                    ),
                );
            }
            seen.push(&desc.entries);
        }
        c.descriptors = out.into_iter().map(|(_, d)| d).collect();
    }
    if let Some((s, sp)) = o.take("stage") {
        c.stage = stage(r, s, &sp).unwrap_or(0);
    }
    if let Some((b, bp)) = o.take("local_rate_limit_per_downstream_connection")
        && r.bool(b, &bp) == Some(true)
    {
        r.not_enforced(
            &bp,
            "per-connection buckets are not implemented: the buckets are shared by the workload's connections (Envoy's default)",
        );
    }
    if let Some((x, xp)) = o.take("enable_x_ratelimit_headers") {
        c.enable_x_ratelimit_headers = x_ratelimit(r, x, &xp).unwrap_or_default();
    }
    if let Some((x, xp)) = o.take("vh_rate_limits") {
        c.vh_rate_limits = r
            .enumeration(
                x,
                &xp,
                &[
                    ("OVERRIDE", VhRateLimits::Override),
                    ("INCLUDE", VhRateLimits::Include),
                    ("IGNORE", VhRateLimits::Ignore),
                ],
            )
            .unwrap_or_default();
    }
    if let Some((b, bp)) = o.take("always_consume_default_token_bucket") {
        c.always_consume_default_token_bucket = r.bool(b, &bp).unwrap_or(true);
    }
    if let Some((b, bp)) = o.take("rate_limited_as_resource_exhausted") {
        c.rate_limited_as_resource_exhausted = r.bool(b, &bp).unwrap_or(false);
    }
    if let Some((l, lp)) = o.take("rate_limits") {
        c.rate_limits = rate_limits(r, l, &lp);
    }
    o.finish(
        r,
        &[
            (
                "local_cluster_rate_limit",
                "sharing the bucket across the local cluster's instances is not implemented",
            ),
            (
                "max_dynamic_descriptors",
                "descriptors with wildcard values are not implemented",
            ),
        ],
    );
    (r.errors() == before).then_some(c)
}

fn show_entries(entries: &[(String, String)]) -> String {
    let parts: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("[{}]", parts.join(", "))
}

fn local_descriptor(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<LocalDescriptor> {
    let before = r.errors();
    let mut o = r.object(v, path, "a local rate limit descriptor")?;
    let mut entries = Vec::new();
    match o.take("entries") {
        Some((e, ep)) => {
            let list = r.list(e, &ep);
            if list.is_empty() {
                r.invalid(&ep, "a descriptor needs at least one entry");
            }
            for (i, item) in list.iter().enumerate() {
                let p = ep.index(i);
                let Some(mut eo) = r.object(item, &p, "a descriptor entry") else {
                    continue;
                };
                let key = eo.take("key").and_then(|(k, kp)| r.string(k, &kp));
                let value = eo.take("value").and_then(|(x, xp)| r.string(x, &xp));
                eo.finish(r, &[]);
                match (&key, &value) {
                    (Some(k), _) if k.is_empty() => r.invalid(&p.key("key"), "a descriptor entry's key must not be empty"),
                    (Some(_), Some(v)) if v.is_empty() => r.not_enforced(
                        &p.key("value"),
                        "an empty value (a wildcard, one bucket per value) is not implemented: the descriptor matches requests whose value is empty",
                    ),
                    (None, _) => r.missing(&p, "a descriptor entry needs `key`"),
                    _ => {}
                }
                if let Some(k) = key {
                    entries.push((k, value_or_empty(value)));
                }
            }
        }
        None => r.missing(path, "a descriptor needs `entries`"),
    }
    let bucket = match o.take("token_bucket") {
        Some((tb, tp)) => token_bucket(r, tb, &tp, "descriptor token bucket"),
        None => {
            r.missing(path, "a descriptor needs `token_bucket`");
            None
        }
    };
    o.finish(
        r,
        &[(
            "shadow_mode",
            "shadow mode is not implemented for local descriptors",
        )],
    );
    let bucket = bucket?;
    (r.errors() == before).then_some(LocalDescriptor {
        entries,
        token_bucket: bucket,
    })
}

fn value_or_empty(v: Option<String>) -> String {
    v.unwrap_or_default()
}

fn token_bucket(
    r: &mut EnvoyRead<'_>,
    v: &Value,
    path: &FieldPath,
    what: &str,
) -> Option<TokenBucket> {
    let before = r.errors();
    let mut o = r.object(v, path, "a token bucket")?;
    let max_tokens = match o.take("max_tokens") {
        Some((m, mp)) => r.u32(m, &mp),
        None => {
            // proto3: an absent max_tokens is 0, which Envoy reads as "always limit".
            Some(0)
        }
    };
    let tokens_per_fill = match o.take("tokens_per_fill") {
        Some((t, tp)) => {
            let n = r.u32(t, &tp);
            if n == Some(0) {
                r.invalid(
                    &tp,
                    format!("the {what}'s tokens_per_fill must be greater than 0"),
                );
            }
            n
        }
        None => Some(1),
    };
    let fill_interval = match o.take("fill_interval") {
        Some((f, fp)) => {
            let d = r.duration(f, &fp);
            match d {
                Some(d) if d.is_zero() => {
                    r.invalid(
                        &fp,
                        format!("the {what}'s fill_interval must be greater than 0"),
                    );
                    None
                }
                Some(d) => {
                    // Envoy reads the interval in whole milliseconds.
                    let ms =
                        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    if ms < MIN_FILL_INTERVAL && max_tokens != Some(0) {
                        r.invalid(
                            &fp,
                            format!("the {what}'s fill_interval is {}: Envoy requires at least 50ms (\"local rate limit token bucket fill timer must be >= 50ms\")", f.as_str().unwrap_or("")),
                        );
                    }
                    Some(ms)
                }
                None => None,
            }
        }
        None => {
            r.missing(path, format!("the {what} needs `fill_interval`"));
            None
        }
    };
    o.finish(r, &[]);
    let bucket = TokenBucket {
        max_tokens: max_tokens?,
        tokens_per_fill: tokens_per_fill?,
        fill_interval: fill_interval?,
    };
    (r.errors() == before).then_some(bucket)
}

fn runtime_fraction(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<RuntimeFraction> {
    let before = r.errors();
    let mut o = r.object(v, path, "a runtime fractional percent")?;
    let default_value = match o.take("default_value") {
        Some((d, dp)) => fractional_percent(r, d, &dp),
        None => {
            r.missing(path, "`default_value` is required");
            None
        }
    };
    let runtime_key = match o.take("runtime_key") {
        // Istio sets no runtime values: the default value is what Envoy uses too.
        Some((k, kp)) => r.string(k, &kp).unwrap_or_default(),
        None => String::new(),
    };
    o.finish(r, &[]);
    let default_value = default_value?;
    (r.errors() == before).then_some(RuntimeFraction {
        default_value,
        runtime_key,
    })
}

fn fractional_percent(
    r: &mut EnvoyRead<'_>,
    v: &Value,
    path: &FieldPath,
) -> Option<FractionalPercent> {
    let mut o = r.object(v, path, "a fractional percent")?;
    let numerator = match o.take("numerator") {
        Some((n, np)) => r.u32(n, &np),
        None => Some(0),
    };
    let denominator = match o.take("denominator") {
        Some((d, dp)) => r.enumeration(
            d,
            &dp,
            &[
                ("HUNDRED", Denominator::Hundred),
                ("TEN_THOUSAND", Denominator::TenThousand),
                ("MILLION", Denominator::Million),
            ],
        ),
        None => Some(Denominator::Hundred),
    };
    o.finish(r, &[]);
    Some(FractionalPercent {
        numerator: numerator?,
        denominator: denominator?,
    })
}

fn headers_to_add(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Vec<HeaderValueOption> {
    let mut out = Vec::new();
    for (i, item) in r.list(v, path).iter().enumerate() {
        let p = path.index(i);
        let Some(mut o) = r.object(item, &p, "a header value option") else {
            continue;
        };
        let header = match o.take("header") {
            Some((h, hp)) => {
                let Some(mut ho) = r.object(h, &hp, "a header") else {
                    continue;
                };
                let key = match ho.take("key") {
                    Some(x) => Some(x),
                    None => {
                        r.missing(&hp, "a header needs `key`");
                        None
                    }
                };
                let key = key.and_then(|(k, kp)| {
                    let k = r.string(k, &kp)?;
                    if !is_header_name(&k) {
                        r.invalid(&kp, format!("`{k}` is not a valid HTTP header name"));
                        return None;
                    }
                    Some(k.to_ascii_lowercase())
                });
                let value = ho.take("value").and_then(|(x, xp)| {
                    let s = r.string(x, &xp)?;
                    if s.contains('%') {
                        r.not_enforced(
                            &xp,
                            "Envoy's `%...%` command operators are not substituted: the value is sent as written",
                        );
                    }
                    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        r.invalid(&xp, "a header value must not contain CR, LF or NUL");
                        return None;
                    }
                    Some(s)
                });
                ho.finish(
                    r,
                    &[(
                        "raw_value",
                        "raw (binary) header values are not implemented",
                    )],
                );
                key.map(|k| (k, value.unwrap_or_default()))
            }
            None => {
                r.missing(&p, "a header value option needs `header`");
                None
            }
        };
        let append = o
            .take("append")
            .and_then(|(a, ap)| r.bool(a, &ap).map(|b| (b, ap)));
        let action = o.take("append_action").and_then(|(a, ap)| {
            r.enumeration(
                a,
                &ap,
                &[
                    ("APPEND_IF_EXISTS_OR_ADD", AppendAction::AppendIfExistsOrAdd),
                    ("ADD_IF_ABSENT", AppendAction::AddIfAbsent),
                    (
                        "OVERWRITE_IF_EXISTS_OR_ADD",
                        AppendAction::OverwriteIfExistsOrAdd,
                    ),
                    ("OVERWRITE_IF_EXISTS", AppendAction::OverwriteIfExists),
                ],
            )
        });
        if let (Some((_, ap)), Some(_)) = (&append, action) {
            r.invalid(ap, "`append` and `append_action` cannot both be set");
        }
        o.finish(
            r,
            &[("keep_empty_value", "empty header values are always kept")],
        );
        let append = match (append, action) {
            (_, Some(a)) => a,
            (Some((false, _)), None) => AppendAction::OverwriteIfExistsOrAdd,
            _ => AppendAction::AppendIfExistsOrAdd,
        };
        if let Some((key, value)) = header {
            out.push(HeaderValueOption { key, value, append });
        }
    }
    out
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_status(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<u16> {
    let mut o = r.object(v, path, "an HTTP status")?;
    let code = match o.take("code") {
        Some((c, cp)) => match c {
            Value::String(s) => match status_by_name(s) {
                Some(n) => Some(n),
                None => {
                    r.invalid(&cp, format!("`{s}` is not one of Envoy's status code names (use the number, e.g. 429)"));
                    None
                }
            },
            other => r.u32(other, &cp).and_then(|n| {
                if (100..=599).contains(&n) {
                    u16::try_from(n).ok()
                } else {
                    r.invalid(&cp, format!("{n} is not an HTTP status code (100-599)"));
                    None
                }
            }),
        },
        None => {
            r.missing(path, "an HTTP status needs `code`");
            None
        }
    };
    o.finish(r, &[]);
    code
}

/// Envoy's `type.v3.StatusCode` names.
fn status_by_name(name: &str) -> Option<u16> {
    const NAMES: &[(&str, u16)] = &[
        ("Continue", 100),
        ("OK", 200),
        ("Created", 201),
        ("Accepted", 202),
        ("NonAuthoritativeInformation", 203),
        ("NoContent", 204),
        ("ResetContent", 205),
        ("PartialContent", 206),
        ("MultiStatus", 207),
        ("AlreadyReported", 208),
        ("IMUsed", 226),
        ("MultipleChoices", 300),
        ("MovedPermanently", 301),
        ("Found", 302),
        ("SeeOther", 303),
        ("NotModified", 304),
        ("UseProxy", 305),
        ("TemporaryRedirect", 307),
        ("PermanentRedirect", 308),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("PaymentRequired", 402),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("NotAcceptable", 406),
        ("ProxyAuthenticationRequired", 407),
        ("RequestTimeout", 408),
        ("Conflict", 409),
        ("Gone", 410),
        ("LengthRequired", 411),
        ("PreconditionFailed", 412),
        ("PayloadTooLarge", 413),
        ("URITooLong", 414),
        ("UnsupportedMediaType", 415),
        ("RangeNotSatisfiable", 416),
        ("ExpectationFailed", 417),
        ("MisdirectedRequest", 421),
        ("UnprocessableEntity", 422),
        ("Locked", 423),
        ("FailedDependency", 424),
        ("UpgradeRequired", 426),
        ("PreconditionRequired", 428),
        ("TooManyRequests", 429),
        ("RequestHeaderFieldsTooLarge", 431),
        ("InternalServerError", 500),
        ("NotImplemented", 501),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
        ("HTTPVersionNotSupported", 505),
        ("VariantAlsoNegotiates", 506),
        ("InsufficientStorage", 507),
        ("LoopDetected", 508),
        ("NotExtended", 510),
        ("NetworkAuthenticationRequired", 511),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

fn stage(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<u32> {
    let s = r.u32(v, path)?;
    if s > 10 {
        r.invalid(path, format!("stage must be 0-10, found {s}"));
        return None;
    }
    Some(s)
}

fn x_ratelimit(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<XRateLimitHeaders> {
    r.enumeration(
        v,
        path,
        &[
            ("OFF", XRateLimitHeaders::Off),
            ("DRAFT_VERSION_03", XRateLimitHeaders::DraftVersion03),
        ],
    )
}

/// Reads a `rate_limits` list.
fn rate_limits(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Vec<RateLimit> {
    let mut out = Vec::new();
    for (i, item) in r.list(v, path).iter().enumerate() {
        if let Some(rl) = rate_limit(r, item, &path.index(i)) {
            out.push(rl);
        }
    }
    out
}

fn rate_limit(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<RateLimit> {
    let before = r.errors();
    let mut o = r.object(v, path, "a rate limit")?;
    let mut rl = RateLimit::default();
    let mut usable = true;
    if let Some((s, sp)) = o.take("stage") {
        rl.stage = stage(r, s, &sp).unwrap_or(0);
    }
    if let Some((k, kp)) = o.take("disable_key") {
        rl.disable_key = r.string(k, &kp).unwrap_or_default();
    }
    match o.take("actions") {
        Some((a, ap)) => {
            let list = r.list(a, &ap);
            if list.is_empty() {
                r.invalid(&ap, "a rate limit needs at least one action");
            }
            for (i, item) in list.iter().enumerate() {
                match action(r, item, &ap.index(i)) {
                    Some(Some(a)) => rl.actions.push(a),
                    Some(None) => usable = false,
                    None => {}
                }
            }
        }
        None => r.missing(path, "a rate limit needs `actions`"),
    }
    for (field, why) in [
        ("limit", "dynamic limit overrides are not implemented"),
        (
            "hits_addend",
            "hits addends are not implemented: each request counts one",
        ),
        (
            "apply_on_stream_done",
            "rate limiting on stream completion is not implemented",
        ),
    ] {
        if let Some((_, fp)) = o.take(field) {
            r.not_enforced(&fp, format!("`{field}`: {why}; the rate limit is ignored"));
            usable = false;
        }
    }
    o.finish(r, &[]);
    if r.errors() != before {
        return None;
    }
    usable.then_some(rl)
}

/// One action: `Some(Some(a))` read, `Some(None)` a valid action the mesh does not build
/// (its rate limit is dropped, reported), `None` invalid (reported).
fn action(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<Option<RateLimitAction>> {
    let before = r.errors();
    let mut o = r.object(v, path, "a rate limit action")?;
    let mut found: Vec<(String, Option<RateLimitAction>)> = Vec::new();
    if o.take("source_cluster").is_some() {
        found.push((
            "source_cluster".into(),
            Some(RateLimitAction::SourceCluster),
        ));
    }
    if o.take("destination_cluster").is_some() {
        found.push((
            "destination_cluster".into(),
            Some(RateLimitAction::DestinationCluster),
        ));
    }
    if o.take("remote_address").is_some() {
        found.push((
            "remote_address".into(),
            Some(RateLimitAction::RemoteAddress),
        ));
    }
    if let Some((rh, rp)) = o.take("request_headers") {
        let a = (|| {
            let mut ro = r.object(rh, &rp, "a request_headers action")?;
            let header_name = match ro.take("header_name") {
                Some((h, hp)) => {
                    let h = r.string(h, &hp)?;
                    let bare = h.strip_prefix(':').unwrap_or(&h);
                    if !is_header_name(bare) {
                        r.invalid(&hp, format!("`{h}` is not a valid HTTP header name"));
                        return None;
                    }
                    h.to_ascii_lowercase()
                }
                None => {
                    r.missing(&rp, "request_headers needs `header_name`");
                    return None;
                }
            };
            let descriptor_key = match ro.take("descriptor_key") {
                Some((k, kp)) => {
                    let k = r.string(k, &kp)?;
                    if k.is_empty() {
                        r.invalid(&kp, "descriptor_key must not be empty");
                        return None;
                    }
                    k
                }
                None => {
                    r.missing(&rp, "request_headers needs `descriptor_key`");
                    return None;
                }
            };
            let skip_if_absent = match ro.take("skip_if_absent") {
                Some((s, sp)) => r.bool(s, &sp)?,
                None => false,
            };
            ro.finish(r, &[]);
            Some(RateLimitAction::RequestHeaders {
                header_name,
                descriptor_key,
                skip_if_absent,
            })
        })();
        found.push(("request_headers".into(), a));
    }
    if let Some((g, gp)) = o.take("generic_key") {
        let a = (|| {
            let mut go = r.object(g, &gp, "a generic_key action")?;
            let (descriptor_key, descriptor_value) =
                descriptor_entry(r, &mut go, &gp, "generic_key")?;
            go.finish(r, &[]);
            Some(RateLimitAction::GenericKey {
                descriptor_key,
                descriptor_value,
            })
        })();
        found.push(("generic_key".into(), a));
    }
    if let Some((h, hp)) = o.take("header_value_match") {
        let a = (|| {
            let mut ho = r.object(h, &hp, "a header_value_match action")?;
            let (descriptor_key, descriptor_value) =
                descriptor_entry(r, &mut ho, &hp, "header_value_match")?;
            let expect_match = match ho.take("expect_match") {
                Some((e, ep)) => r.bool(e, &ep)?,
                None => true,
            };
            let headers = match ho.take("headers") {
                Some((l, lp)) => {
                    let list = r.list(l, &lp);
                    if list.is_empty() {
                        r.invalid(&lp, "header_value_match needs at least one header matcher");
                    }
                    let mut out = Vec::new();
                    for (i, item) in list.iter().enumerate() {
                        if let Some(m) = header_matcher(r, item, &lp.index(i)) {
                            out.push(m);
                        }
                    }
                    out
                }
                None => {
                    r.missing(&hp, "header_value_match needs `headers`");
                    return None;
                }
            };
            ho.finish(r, &[]);
            Some(RateLimitAction::HeaderValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                headers,
            })
        })();
        found.push(("header_value_match".into(), a));
    }
    for (name, _) in o.map.iter() {
        if o.used.contains(name.as_str()) {
            continue;
        }
        let known = [
            "dynamic_metadata",
            "metadata",
            "extension",
            "masked_remote_address",
            "query_parameter_value_match",
            "query_parameters",
        ];
        if known.iter().any(|k| *k == name || camel(k) == *name) {
            found.push((name.clone(), None));
        }
    }
    let unknown: Vec<(String, FieldPath)> = o
        .map
        .keys()
        .filter(|k| !o.used.contains(k.as_str()) && !found.iter().any(|(n, _)| n == *k))
        .map(|k| (k.clone(), o.path.key(k.as_str())))
        .collect();
    for (k, p) in unknown {
        r.invalid(&p, format!("`{k}` is not a rate limit action"));
    }
    if r.errors() != before {
        return None;
    }
    match found.len() {
        0 => {
            r.invalid(path, "a rate limit action needs one of `request_headers`, `remote_address`, `generic_key`, `header_value_match`, `destination_cluster`, `source_cluster`, ...");
            None
        }
        1 => {
            let (name, a) = found.remove(0);
            if a.is_none() {
                r.not_enforced(
                    &path.key(name.as_str()),
                    format!("the `{name}` action is not implemented: its rate limit builds no descriptor and is ignored"),
                );
            }
            Some(a)
        }
        _ => {
            r.invalid(path, "a rate limit action is exactly one of its kinds");
            None
        }
    }
}

/// The entry a `generic_key` or `header_value_match` action (`action`) adds: its
/// `descriptor_value`, required and not empty, and its `descriptor_key`, Envoy's default
/// for the action (`generic_key`, `header_match`) when absent or empty.
fn descriptor_entry(
    r: &mut EnvoyRead<'_>,
    o: &mut Obj<'_>,
    path: &FieldPath,
    action: &str,
) -> Option<(String, String)> {
    let value = match o.take("descriptor_value") {
        Some((x, xp)) => r.string(x, &xp)?,
        None => {
            r.missing(path, format!("{action} needs `descriptor_value`"));
            return None;
        }
    };
    if value.is_empty() {
        r.invalid(
            &path.key("descriptor_value"),
            "descriptor_value must not be empty",
        );
        return None;
    }
    let key = match o.take("descriptor_key") {
        Some((k, kp)) => r.string(k, &kp)?,
        None => String::new(),
    };
    let key = if !key.is_empty() {
        key
    } else if action == "generic_key" {
        "generic_key".into()
    } else {
        "header_match".into()
    };
    Some((key, value))
}

fn header_matcher(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<HeaderMatcher> {
    let before = r.errors();
    let mut o = r.object(v, path, "a header matcher")?;
    let name = match o.take("name") {
        Some((n, np)) => {
            let n = r.string(n, &np)?;
            let bare = n.strip_prefix(':').unwrap_or(&n);
            if !is_header_name(bare) {
                r.invalid(&np, format!("`{n}` is not a valid HTTP header name"));
            }
            n.to_ascii_lowercase()
        }
        None => {
            r.missing(path, "a header matcher needs `name`");
            String::new()
        }
    };
    let mut specs: Vec<HeaderMatchSpec> = Vec::new();
    let plain =
        |r: &mut EnvoyRead<'_>, o: &mut Obj<'_>, field: &str, make: fn(String) -> StringPattern| {
            o.take(field).and_then(|(x, xp)| r.string(x, &xp)).map(|s| {
                HeaderMatchSpec::String(StringMatcher {
                    pattern: make(s),
                    ignore_case: false,
                })
            })
        };
    if let Some(s) = plain(r, &mut o, "exact_match", StringPattern::Exact) {
        specs.push(s);
    }
    if let Some(s) = plain(r, &mut o, "prefix_match", StringPattern::Prefix) {
        specs.push(s);
    }
    if let Some(s) = plain(r, &mut o, "suffix_match", StringPattern::Suffix) {
        specs.push(s);
    }
    if let Some(s) = plain(r, &mut o, "contains_match", StringPattern::Contains) {
        specs.push(s);
    }
    if let Some((x, xp)) = o.take("safe_regex_match")
        && let Some(re) = regex_matcher(r, x, &xp)
    {
        specs.push(HeaderMatchSpec::String(StringMatcher {
            pattern: StringPattern::Regex(re),
            ignore_case: false,
        }));
    }
    if let Some((x, xp)) = o.take("present_match")
        && let Some(b) = r.bool(x, &xp)
    {
        specs.push(HeaderMatchSpec::Present(b));
    }
    if let Some((x, xp)) = o.take("range_match")
        && let Some(mut ro) = r.object(x, &xp, "a range")
    {
        let start = ro
            .take("start")
            .and_then(|(s, sp)| r.i64(s, &sp))
            .unwrap_or(0);
        let end = ro
            .take("end")
            .and_then(|(e, ep)| r.i64(e, &ep))
            .unwrap_or(0);
        ro.finish(r, &[]);
        if start >= end {
            r.invalid(
                &xp,
                format!("the range [{start}, {end}) is empty: start must be below end"),
            );
        }
        specs.push(HeaderMatchSpec::Range { start, end });
    }
    if let Some((x, xp)) = o.take("string_match")
        && let Some(m) = string_matcher(r, x, &xp)
    {
        specs.push(HeaderMatchSpec::String(m));
    }
    let invert_match = o
        .take("invert_match")
        .and_then(|(b, bp)| r.bool(b, &bp))
        .unwrap_or(false);
    let treat_missing_header_as_empty = o
        .take("treat_missing_header_as_empty")
        .and_then(|(b, bp)| r.bool(b, &bp))
        .unwrap_or(false);
    o.finish(r, &[]);
    let spec = match specs.len() {
        // Envoy: no specifier is a presence match.
        0 => HeaderMatchSpec::Present(true),
        1 => specs.remove(0),
        _ => {
            r.invalid(path, "a header matcher takes one kind of match");
            return None;
        }
    };
    (r.errors() == before).then_some(HeaderMatcher {
        name,
        spec,
        invert_match,
        treat_missing_header_as_empty,
    })
}

fn regex_matcher(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<String> {
    let mut o = r.object(v, path, "a regex matcher")?;
    let re = match o.take("regex") {
        Some((x, xp)) => {
            let re = r.string(x, &xp)?;
            if let Err(e) = crate::re2::compile(&re) {
                r.error(
                    Code::InvalidRegex,
                    &xp,
                    format!("`{re}` is not a valid RE2 regular expression: {e}"),
                );
                return None;
            }
            Some(re)
        }
        None => {
            r.missing(path, "a regex matcher needs `regex`");
            None
        }
    };
    let _ = o.take("google_re2");
    o.finish(r, &[]);
    re
}

fn string_matcher(r: &mut EnvoyRead<'_>, v: &Value, path: &FieldPath) -> Option<StringMatcher> {
    let mut o = r.object(v, path, "a string matcher")?;
    let mut patterns = Vec::new();
    for (field, make) in [
        ("exact", StringPattern::Exact as fn(String) -> StringPattern),
        ("prefix", StringPattern::Prefix),
        ("suffix", StringPattern::Suffix),
        ("contains", StringPattern::Contains),
    ] {
        if let Some((x, xp)) = o.take(field)
            && let Some(s) = r.string(x, &xp)
        {
            if s.is_empty() && field != "exact" {
                r.invalid(&xp, format!("`{field}` must not be empty"));
            }
            patterns.push(make(s));
        }
    }
    if let Some((x, xp)) = o.take("safe_regex")
        && let Some(re) = regex_matcher(r, x, &xp)
    {
        patterns.push(StringPattern::Regex(re));
    }
    let ignore_case = o
        .take("ignore_case")
        .and_then(|(b, bp)| r.bool(b, &bp))
        .unwrap_or(false);
    o.finish(r, &[]);
    match patterns.len() {
        1 => Some(StringMatcher {
            pattern: patterns.remove(0),
            ignore_case,
        }),
        0 => {
            r.invalid(path, "a string matcher needs one of `exact`, `prefix`, `suffix`, `contains` or `safe_regex`");
            None
        }
        _ => {
            r.invalid(path, "a string matcher takes one kind of match");
            None
        }
    }
}

/// Reads the value of an HTTP_FILTER patch adding the global rate limit filter.
pub fn read_global_filter(
    r: &mut EnvoyRead<'_>,
    value: &Value,
    path: &FieldPath,
) -> Option<GlobalRateLimitFilter> {
    read_filter(
        r,
        value,
        path,
        type_url::RATE_LIMIT,
        "rate limit filter",
        read_global,
    )
}

fn read_global(
    r: &mut EnvoyRead<'_>,
    v: &Value,
    path: &FieldPath,
) -> Option<GlobalRateLimitFilter> {
    let before = r.errors();
    let mut o = message(
        r,
        v,
        path,
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    )?;
    let mut c = GlobalRateLimitFilter {
        request_type: "both".into(),
        timeout: DEFAULT_RATE_LIMIT_TIMEOUT,
        ..GlobalRateLimitFilter::default()
    };
    match o.take("domain") {
        Some((d, dp)) => {
            c.domain = r.string(d, &dp).unwrap_or_default();
            if c.domain.is_empty() {
                r.invalid(&dp, "domain must not be empty");
            }
        }
        None => r.missing(
            path,
            "`domain` is required: the rate limit domain of the descriptors",
        ),
    }
    if let Some((s, sp)) = o.take("stage") {
        c.stage = stage(r, s, &sp).unwrap_or(0);
    }
    if let Some((t, tp)) = o.take("request_type")
        && let Some(t) = r.string(t, &tp)
    {
        if !matches!(t.as_str(), "internal" | "external" | "both" | "") {
            r.invalid(
                &tp,
                format!("request_type must be `internal`, `external` or `both`, found `{t}`"),
            );
        } else if t == "internal" || t == "external" {
            r.not_enforced(
                &tp,
                format!("request_type `{t}`: the mesh does not tell internal from external requests; every request is checked"),
            );
        }
        c.request_type = if t.is_empty() { "both".into() } else { t };
    }
    if let Some((t, tp)) = o.take("timeout")
        && let Some(d) = r.duration(t, &tp)
    {
        c.timeout = d;
    }
    if let Some((b, bp)) = o.take("failure_mode_deny") {
        c.failure_mode_deny = r.bool(b, &bp).unwrap_or(false);
    }
    if let Some((b, bp)) = o.take("rate_limited_as_resource_exhausted") {
        c.rate_limited_as_resource_exhausted = r.bool(b, &bp).unwrap_or(false);
    }
    match o.take("rate_limit_service") {
        Some((s, sp)) => {
            if let Some(mut so) = r.object(s, &sp, "a rate limit service configuration") {
                if let Some((g, gp)) = so.take("grpc_service")
                    && let Some(mut go) = r.object(g, &gp, "a gRPC service")
                {
                    if let Some((e, ep)) = go.take("envoy_grpc")
                        && let Some(mut eo) = r.object(e, &ep, "an Envoy gRPC service")
                    {
                        if let Some((n, np)) = eo.take("cluster_name") {
                            c.service_cluster = r.string(n, &np).unwrap_or_default();
                        }
                        let _ = eo.take("authority");
                        eo.finish(
                            r,
                            &[("retry_policy", "the mesh talks to the limiter directly")],
                        );
                    }
                    if let Some((t, tp)) = go.take("timeout")
                        && let Some(d) = r.duration(t, &tp)
                    {
                        c.timeout = d;
                    }
                    go.finish(
                        r,
                        &[
                            ("google_grpc", "the mesh talks to the limiter directly"),
                            ("initial_metadata", "the mesh talks to the limiter directly"),
                            ("retry_policy", "the mesh talks to the limiter directly"),
                        ],
                    );
                } else {
                    r.missing(&sp, "rate_limit_service needs `grpc_service`");
                }
                if let Some((t, tp)) = so.take("transport_api_version")
                    && let Some(t) = r.string(t, &tp)
                    && t != "V3"
                    && t != "AUTO"
                {
                    r.invalid(
                        &tp,
                        format!("transport_api_version `{t}`: Envoy speaks V3 only"),
                    );
                }
                so.finish(r, &[]);
            }
        }
        None => r.missing(path, "`rate_limit_service` is required"),
    }
    if let Some((x, xp)) = o.take("enable_x_ratelimit_headers") {
        c.enable_x_ratelimit_headers = x_ratelimit(r, x, &xp).unwrap_or_default();
    }
    if let Some((b, bp)) = o.take("disable_x_envoy_ratelimited_header") {
        c.disable_x_envoy_ratelimited_header = r.bool(b, &bp).unwrap_or(false);
    }
    if let Some((s, sp)) = o.take("rate_limited_status") {
        c.rate_limited_status = http_status(r, s, &sp);
        if let Some(code) = c.rate_limited_status
            && code < 400
        {
            r.invalid(
                &sp,
                format!("rate_limited_status must be 400 or above, found {code}"),
            );
        }
    }
    if let Some((s, sp)) = o.take("status_on_error") {
        c.status_on_error = http_status(r, s, &sp);
    }
    if let Some((h, hp)) = o.take("response_headers_to_add") {
        c.response_headers_to_add = headers_to_add(r, h, &hp);
    }
    if let Some((l, lp)) = o.take("rate_limits") {
        c.rate_limits = rate_limits(r, l, &lp);
    }
    o.finish(
        r,
        &[
            ("stat_prefix", STATS_NOTE),
            ("filter_enabled", "runtime fractions of the global filter are not implemented: every request is checked"),
            ("filter_enforced", "runtime fractions of the global filter are not implemented: every limited request is refused"),
            ("failure_mode_deny_percent", "partial failure modes are not implemented"),
            ("enable_x_ratelimit_headers_for_grpc", "not implemented"),
        ],
    );
    (r.errors() == before).then_some(c)
}

/// Reads the value of a VIRTUAL_HOST or HTTP_ROUTE MERGE patch: the local rate limit
/// filter's per-route configuration and the rate limits; other fields are reported as
/// not enforced.
pub fn read_route_settings(
    r: &mut EnvoyRead<'_>,
    apply_to: ApplyTo,
    value: &Value,
    path: &FieldPath,
) -> Option<RouteSettings> {
    let before = r.errors();
    let what = if apply_to == ApplyTo::VirtualHost {
        "a virtual host"
    } else {
        "a route"
    };
    let mut o = r.object(value, path, what)?;
    let mut s = RouteSettings::default();
    if let Some((t, tp)) = o.take("typed_per_filter_config")
        && let Some(mut to) = r.object(t, &tp, "per-filter configurations")
    {
        let names: Vec<String> = to.map.keys().cloned().collect();
        for name in names {
            let Some((cfg, cp)) = to.take(&name) else {
                continue;
            };
            if name == super::envoy_filter::LOCAL_RATELIMIT_FILTER {
                if let Some((t, inner, ip)) = typed(r, cfg, &cp) {
                    if t == type_url::LOCAL_RATE_LIMIT {
                        s.local = read_local(r, inner, &ip, true);
                    } else {
                        r.not_enforced(
                            &cp,
                            format!("a `{t}` per-route configuration of the local rate limit filter is not implemented"),
                        );
                    }
                }
            } else {
                r.not_enforced(
                    &cp,
                    format!("per-route configuration of `{name}`: the mesh applies per-route configurations of the local rate limit filter only"),
                );
            }
        }
    }
    if apply_to == ApplyTo::VirtualHost {
        if let Some((l, lp)) = o.take("rate_limits") {
            s.rate_limits = rate_limits(r, l, &lp);
        }
    } else if let Some((ra, rp)) = o.take("route")
        && let Some(mut ro) = r.object(ra, &rp, "a route action")
    {
        if let Some((l, lp)) = ro.take("rate_limits") {
            s.rate_limits = rate_limits(r, l, &lp);
        }
        if let Some((b, bp)) = ro.take("include_vh_rate_limits")
            && r.bool(b, &bp) == Some(true)
        {
            r.not_enforced(&bp, "include_vh_rate_limits is not implemented: use the filter's vh_rate_limits: INCLUDE");
        }
        ro.finish(r, &[]);
    }
    o.finish(r, &[]);
    (r.errors() == before).then_some(s)
}
