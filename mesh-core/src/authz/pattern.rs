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
/// (any number of segments, at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathPattern {
    /// `*`, `*suffix`, `prefix*` or exact.
    Plain(StrPattern),
    /// The template's segments.
    Template(Vec<Segment>),
}

/// A segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A literal segment.
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: the rest of the path, any number of segments.
    Any,
}

impl PathPattern {
    /// Parses `v`, or says why a template is invalid (Istio's rules: `{**}` only last,
    /// no other `{`/`}` use).
    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        if !v.contains("{*}") && !v.contains("{**}") {
            return Ok(PathPattern::Plain(StrPattern::parse(v, false)));
        }
        let Some(rest) = v.strip_prefix('/') else {
            return Err(format!("path template {v:?} must start with '/'"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Any,
                "{**}" => {
                    return Err(format!(
                        "path template {v:?}: {{**}} must be the last segment"
                    ));
                }
                lit if lit.contains('{') || lit.contains('}') || lit.contains('*') => {
                    return Err(format!(
                        "path template {v:?}: {lit:?} must be {{*}}, {{**}} or a literal segment"
                    ));
                }
                lit => Segment::Literal(lit.to_string()),
            };
            segments.push(seg);
        }
        Ok(PathPattern::Template(segments))
    }

    /// True when `path` (without its query) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segments {
                    match seg {
                        // Zero or more characters after the separator before it.
                        Segment::Any => return parts.next().is_some(),
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
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
            ("/foo/{*}/bar", "/foo/x/bar", true),
            ("/foo/{*}/bar", "/foo/x/baz", false),
            ("/{*}/{**}", "/a/b/c", true),
            ("/{*}/{**}", "/a", false),
            ("/api/*", "/api/v1", true),
            ("*/info", "/v1/info", true),
        ];
        for (pattern, path, want) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path), want, "{pattern} ~ {path}");
        }
        for bad in ["/foo/{**}/bar", "/foo/a{*}", "foo/{*}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
