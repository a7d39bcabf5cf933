//! Host names the way Istio reads them.
//!
//! A short name (no dot) in a VirtualService or DestinationRule is qualified with the
//! resource's namespace and the cluster domain: `reviews` written in `default` means
//! `reviews.default.svc.cluster.local`. Names with a dot are taken as written (Istio does
//! not expand `reviews.default`). Wildcards (`*.example.com`, `*`) match any number of
//! labels in place of the `*`, as Istio's host matching does. Hosts are compared in lower
//! case.

/// The DNS suffix of services: `svc.cluster.local`.
pub const SERVICE_DOMAIN: &str = "svc.cluster.local";

/// Qualifies `host`, written in a resource of `namespace`. IP addresses, `*` and names
/// with a dot are taken as written.
pub fn qualify(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host
    } else {
        format!("{host}.{namespace}.{SERVICE_DOMAIN}")
    }
}

/// A gateway a VirtualService names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayRef {
    /// `mesh`: workload-to-workload traffic.
    Mesh,
    /// A Gateway resource.
    Named {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Written in the deprecated `name.namespace[.svc.cluster.local]` form.
        legacy: bool,
    },
}

impl GatewayRef {
    /// Resolves a reference written in a VirtualService of `namespace` the way Istio
    /// does: `mesh`; `ns/name`; the legacy `name.ns` (with or without
    /// `.svc.cluster.local`); else `name` in the VirtualService's namespace.
    pub fn parse(reference: &str, namespace: &str) -> GatewayRef {
        if reference == "mesh" {
            return GatewayRef::Mesh;
        }
        if let Some((ns, name)) = reference.split_once('/') {
            return GatewayRef::Named {
                namespace: ns.to_string(),
                name: name.to_string(),
                legacy: false,
            };
        }
        // Istio's `resolveGatewayName`: a name with a dot is `name.namespace[.anything]`
        // (as `name.namespace.svc.cluster.local`).
        match reference.split_once('.') {
            Some((name, rest)) => GatewayRef::Named {
                namespace: rest.split_once('.').map_or(rest, |(ns, _)| ns).to_string(),
                name: name.to_string(),
                legacy: true,
            },
            None => GatewayRef::Named {
                namespace: namespace.to_string(),
                name: reference.to_string(),
                legacy: false,
            },
        }
    }

    /// The canonical form: `mesh` or `namespace/name`.
    pub fn canonical(&self) -> String {
        match self {
            GatewayRef::Mesh => "mesh".into(),
            GatewayRef::Named {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
        }
    }
}

/// True for `*` and `*.suffix` hosts.
pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// True when `pattern` (possibly a wildcard) matches the concrete or wildcard `host`.
///
/// `*.example.com` matches `a.example.com`, `a.b.example.com` and `*.a.example.com`,
/// not `example.com`. `*` matches everything.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Case-insensitive suffix test, without allocating.
    let ends_with = |h: &str, suffix: &str| {
        h.len() >= suffix.len()
            && h.is_char_boundary(h.len() - suffix.len())
            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    match pattern.strip_prefix('*') {
        Some(suffix) => match host.strip_prefix('*') {
            // wildcard against wildcard: the host's set must be inside the pattern's
            Some(hsuffix) => ends_with(hsuffix, suffix),
            None => host.len() > suffix.len() && ends_with(host, suffix),
        },
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// True when the two hosts (either may be a wildcard) have a name in common.
pub fn overlaps(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

/// Splits a gateway server host `namespace/host` into its parts (`*` namespace when none).
pub fn split_namespaced(host: &str) -> (&str, &str) {
    match host.split_once('/') {
        Some((ns, h)) => (ns, h),
        None => ("*", host),
    }
}

/// Checks a DNS name that may start with a `*.` wildcard label (or be `*`).
pub fn check_wildcard_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host == "*" {
        return Ok(());
    }
    let rest = match host.strip_prefix("*.") {
        Some(r) => r,
        None if host.starts_with('*') => {
            return Err(format!(
                "`{host}`: a wildcard must be the whole first label (`*.example.com`)"
            ));
        }
        None => host,
    };
    if rest.len() > 253 {
        return Err(format!("`{host}` is longer than 253 characters"));
    }
    for label in rest.trim_end_matches('.').split('.') {
        check_dns_label(label).map_err(|e| format!("`{host}`: {e}"))?;
    }
    Ok(())
}

/// Checks a host whose first label is a partial wildcard, as Istio's
/// `IsWildcardDNS1123Label` allows it: `*` followed by a DNS label, or `*-` followed by
/// one (`*x.example.com`, `*-api.example.com`). `Ok` for those only.
pub fn check_partial_wildcard(host: &str) -> Result<(), String> {
    if host.len() > 255 {
        return Err(format!("`{host}` is longer than 255 characters"));
    }
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    // The limit of 63 counts the `*`, as Istio's label check does.
    if first.len() > 63 {
        return Err(format!("label `{first}` is longer than 63 characters"));
    }
    let label = first
        .strip_prefix("*-")
        .or_else(|| first.strip_prefix('*'))
        .filter(|l| !l.is_empty())
        .ok_or_else(|| format!("`{host}` has no partial wildcard"))?;
    check_dns_label(label).map_err(|e| format!("`{host}`: {e}"))?;
    if host.contains('.') {
        for l in rest.split('.') {
            check_dns_label(l).map_err(|e| format!("`{host}`: {e}"))?;
        }
    }
    Ok(())
}

/// Checks one DNS label: 1-63 characters, letters, digits and `-`, no `-` at either end.
pub fn check_dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label `{label}` is longer than 63 characters"));
    }
    if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "label `{label}` may contain only letters, digits and `-`"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label `{label}` must not start or end with `-`"));
    }
    Ok(())
}

/// Checks a Kubernetes DNS-1123 label (lower case): names of subsets, namespaces.
pub fn check_dns1123_label(name: &str) -> Result<(), String> {
    check_dns_label(name)?;
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("`{name}` must be lower case"));
    }
    Ok(())
}

/// Istio's `ValidateFQDN`: 1-255 characters of DNS labels (Istio's label check takes
/// either case), a top-level
/// label that is not all digits, and an optional trailing `.`.
pub fn check_fqdn(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the domain name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!("`{name}` is longer than 255 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    let last = labels.len() - 1;
    if labels[last].parse::<u64>().is_ok() {
        return Err(format!(
            "`{name}`: the top-level label `{}` cannot be all digits",
            labels[last]
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == last && label.is_empty() {
            break;
        }
        check_dns_label(label).map_err(|e| format!("`{name}`: {e}"))?;
    }
    Ok(())
}

/// Checks a Kubernetes DNS-1123 subdomain (lower case): resource names.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("`{name}` is longer than 253 characters"));
    }
    for label in name.split('.') {
        check_dns1123_label(label).map_err(|e| format!("`{name}`: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualification() {
        assert_eq!(
            qualify("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(qualify("Reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("reviews.default", "prod"), "reviews.default");
        assert_eq!(qualify("*", "prod"), "*");
        assert_eq!(qualify("*.example.com", "prod"), "*.example.com");
    }

    #[test]
    fn wildcard_matching() {
        let table = [
            ("*", "anything.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "aexample.com", false),
            ("*.example.com", "*.a.example.com", true),
            ("*.a.example.com", "*.example.com", false),
            ("a.example.com", "A.Example.com", true),
            ("a.example.com", "b.example.com", false),
        ];
        for (p, h, want) in table {
            assert_eq!(matches(p, h), want, "{p} vs {h}");
        }
        assert!(overlaps("*.a.example.com", "*.example.com"));
    }

    #[test]
    fn gateway_references() {
        let table = [
            ("mesh", "default", "mesh", false),
            (
                "bookinfo-gateway",
                "default",
                "default/bookinfo-gateway",
                false,
            ),
            ("istio-system/gw", "default", "istio-system/gw", false),
            ("gw.istio-system", "default", "istio-system/gw", true),
            (
                "gw.istio-system.svc.cluster.local",
                "default",
                "istio-system/gw",
                true,
            ),
        ];
        for (r, ns, want, legacy) in table {
            let g = GatewayRef::parse(r, ns);
            assert_eq!(g.canonical(), want, "{r}");
            assert_eq!(
                matches!(g, GatewayRef::Named { legacy: true, .. }),
                legacy,
                "{r}"
            );
        }
        assert_eq!(qualify("::1", "default"), "::1");
        assert_eq!(qualify("10.0.0.1", "default"), "10.0.0.1");
    }

    #[test]
    fn domain_checks() {
        assert!(check_wildcard_domain("*.example.com").is_ok());
        assert!(check_wildcard_domain("reviews").is_ok());
        assert!(check_wildcard_domain("a*.example.com").is_err());
        assert!(check_wildcard_domain("bad_host.com").is_err());
        assert!(check_wildcard_domain("-a.com").is_err());
        assert!(check_dns1123_label("v1").is_ok());
        assert!(check_dns1123_label("V1").is_err());
        assert!(check_dns1123_subdomain("bookinfo-gateway").is_ok());
        assert!(check_dns1123_subdomain("a..b").is_err());
    }
}
