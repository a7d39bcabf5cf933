//! The value forms of AuthorizationPolicy fields, as Istio turns them into Envoy
//! matchers: `*` (present, non-empty), `*suffix`, `prefix*`, exact; IP blocks; and the
//! `{*}` / `{**}` path templates.

use std::net::IpAddr;

/// A string pattern in Istio's `*` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrPattern {
    /// `*`: any non-empty value.
    Present,
    /// `*suffix`.
    Suffix(String),
    /// `prefix*`.
    Prefix(String),
    /// An exact value.
    Exact(String),
}

impl StrPattern {
    /// Parses `v`; `ignore_case` lowercases it (the value is lowercased when matched).
    pub(crate) fn parse(v: &str, ignore_case: bool) -> Self {
        let norm = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        if v == "*" {
            StrPattern::Present
        } else if let Some(s) = v.strip_prefix('*') {
            StrPattern::Suffix(norm(s))
        } else if let Some(p) = v.strip_suffix('*') {
            StrPattern::Prefix(norm(p))
        } else {
            StrPattern::Exact(norm(v))
        }
    }

    /// True when `value` matches (already lowercased for a case-insensitive pattern).
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            StrPattern::Present => !value.is_empty(),
            StrPattern::Suffix(s) => value.ends_with(s.as_str()),
            StrPattern::Prefix(p) => value.starts_with(p.as_str()),
            StrPattern::Exact(e) => value == e,
        }
    }

    /// True when `value` matches, ignoring ASCII case (the pattern was parsed with
    /// `ignore_case`), without lowercasing `value`.
    pub(crate) fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StrPattern::Present => !value.is_empty(),
            StrPattern::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrPattern::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrPattern::Exact(e) => value.eq_ignore_ascii_case(e),
        }
    }
}

/// A regular expression compared by its source (Istio generates some matchers as
/// regular expressions; these are matched as written).
#[derive(Debug, Clone)]
pub(crate) struct Re(pub(crate) regex::Regex);

impl PartialEq for Re {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Re {}

impl Re {
    /// Compiles `re` (anchored by the caller).
    pub(crate) fn new(re: &str) -> Result<Self, String> {
        regex::Regex::new(re).map(Re).map_err(|e| e.to_string())
    }
}

/// An IP address or CIDR block (`10.1.2.3`, `10.1.0.0/16`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `v`, or says what is wrong with it.
    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        let (a, p) = match v.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (v, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{v:?} has an invalid prefix length"))?,
        };
        Ok(IpBlock { addr, prefix })
    }

    /// True when `ip` is in the block.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                prefix_eq(&a.octets(), &b.octets(), u32::from(self.prefix))
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                prefix_eq(&a.octets(), &b.octets(), u32::from(self.prefix))
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// A path pattern: Istio's `*` forms, or a template with `{*}` (one segment) and `{**}`
/// (zero or more characters, `/` included), matched as Envoy's `uri_template` matches
/// it: `{*}` is `[pchar]+`, `{**}` is `[pchar/]*`, the rest literal.
#[derive(Debug, Clone)]
pub(crate) enum PathPattern {
    /// `*`, `*suffix`, `prefix*` or exact.
    Plain(StrPattern),
    /// The template, as an anchored regular expression.
    Template(regex::Regex),
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathPattern::Plain(a), PathPattern::Plain(b)) => a == b,
            (PathPattern::Template(a), PathPattern::Template(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for PathPattern {}

/// RFC 3986 `pchar` without percent-encoded octets' structure (Envoy accepts `%`).
const PCHAR: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@=";

impl PathPattern {
    /// Parses `v`, or says why a template is invalid (Istio's rules: no operator after
    /// `{**}`, no other `{`, `}` or `*`).
    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        if !v.contains("{*}") && !v.contains("{**}") {
            return Ok(PathPattern::Plain(StrPattern::parse(v, false)));
        }
        if !v.starts_with('/') {
            return Err(format!("path template {v:?} must start with '/'"));
        }
        let mut re = String::from("^");
        let mut any_seen = false;
        for (i, seg) in v.split('/').enumerate() {
            if i > 0 {
                re.push('/');
            }
            match seg {
                "{*}" | "{**}" if any_seen => {
                    return Err(format!(
                        "path template {v:?}: {{**}} must be the last operator"
                    ));
                }
                "{*}" => re.push_str(&format!("[{PCHAR}]+")),
                "{**}" => {
                    any_seen = true;
                    re.push_str(&format!("[{PCHAR}/]*"));
                }
                lit if lit.contains('{') || lit.contains('}') || lit.contains('*') => {
                    return Err(format!(
                        "path template {v:?}: {lit:?} must be {{*}}, {{**}} or a literal segment"
                    ));
                }
                lit => re.push_str(&regex::escape(lit)),
            }
        }
        re.push('$');
        regex::Regex::new(&re)
            .map(PathPattern::Template)
            .map_err(|e| format!("path template {v:?}: {e}"))
    }

    /// True when `path` (normalized, without its query) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(re) => re.is_match(path),
        }
    }
}

/// The path as Envoy's `normalize_path` (Istio's default BASE normalization) hands it to
/// authorization: the query and fragment cut off, `.` and `..` segments (also written
/// `%2e`) resolved per RFC 3986; slashes are not merged and `%2F` is kept.
pub(crate) fn normalize_path(target: &str) -> std::borrow::Cow<'_, str> {
    let bytes = target.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    let path = &target[..end];
    // Most paths have no `.` or `%` at all: nothing to resolve.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let has_dot_segment = path
        .split('/')
        .any(|s| s == "." || s == ".." || s.eq_ignore_ascii_case("%2e") || is_dotdot(s));
    if !has_dot_segment {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let dot = *seg == "." || seg.eq_ignore_ascii_case("%2e");
        let dotdot = *seg == ".." || is_dotdot(seg);
        if dot || dotdot {
            if dotdot && out.len() > 1 {
                out.pop();
            }
            // A trailing dot segment leaves the directory's slash.
            if i == last {
                out.push("");
            }
            continue;
        }
        out.push(seg);
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    std::borrow::Cow::Owned(joined)
}

fn is_dotdot(s: &str) -> bool {
    s == ".."
        || ["%2e.", ".%2e", "%2e%2e"]
            .iter()
            .any(|d| s.eq_ignore_ascii_case(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let cases = [
            ("*", "", false),
            ("*", "x", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "example.com", false),
            ("prefix.*", "prefix.a", true),
            ("prefix.*", "prefi", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                StrPattern::parse(pattern, false).matches(value),
                want,
                "{pattern} ~ {value}"
            );
            // Case-insensitive: the same on any case of the value.
            let upper = value.to_ascii_uppercase();
            assert_eq!(
                StrPattern::parse(pattern, true).matches_ignore_case(&upper),
                want,
                "{pattern} ~ {upper} (ignoring case)"
            );
        }
    }

    #[test]
    fn ip_blocks() {
        let cases = [
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("10.1.0.0/16", "10.1.255.1", true),
            ("10.1.0.0/16", "10.2.0.1", false),
            ("10.1.2.0/23", "10.1.3.9", true),
            ("10.1.2.0/23", "10.1.4.9", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("10.0.0.1", "::ffff:10.0.0.1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1", "127.0.0.1", false),
        ];
        for (block, ip, want) in cases {
            let b = IpBlock::parse(block).unwrap();
            assert_eq!(b.contains(ip.parse().unwrap()), want, "{block} ∋ {ip}");
        }
        for bad in ["10.1.2", "10.0.0.0/33", "::/129", "x", "10.0.0.0/"] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_templates() {
        let cases = [
            ("/foo/{*}", "/foo/bar", true),
            ("/foo/{*}", "/foo/bar/baz", false),
            ("/foo/{*}", "/foo/", false),
            ("/foo/{**}", "/foo/bar/baz", true),
            ("/foo/{**}", "/foo/", true),
            ("/foo/{**}", "/foo", false),
            ("/{**}/edit", "/a/b/edit", true),
            ("/{**}/edit", "//edit", true),
            ("/{**}/edit", "/edit", false),
            ("/api/{*}", "/api/a\"b", false),
            ("/foo/{*}/bar", "/foo/x/bar", true),
            ("/foo/{*}/bar", "/foo/x/baz", false),
            ("/{*}/{**}", "/a/b/c", true),
            ("/{*}/{**}", "/a", false),
            ("/foo/{**}/bar", "/foo/x/y/bar", true),
            ("/api/*", "/api/v1", true),
            ("*/info", "/v1/info", true),
        ];
        for (pattern, path, want) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path), want, "{pattern} ~ {path}");
        }
        for bad in ["/foo/{**}/{*}", "/foo/a{*}", "foo/{*}", "/a/{**}/{**}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize_path;

    #[test]
    fn dot_segments_are_resolved_as_envoy_does() {
        let cases = [
            ("/a/b", "/a/b"),
            ("/a/b?x=1", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E./admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../x", "/x"),
            ("/a//b", "/a//b"),
            ("/a%2Fb/..", "/"),
            ("/..a/b", "/..a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), want, "{input}");
        }
    }
}
