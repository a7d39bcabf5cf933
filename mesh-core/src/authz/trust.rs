//! The mesh's trust domain and its aliases, as Istio applies them to authorization
//! policies (`pilot/pkg/security/trustdomain`): a principal in one of the mesh's trust
//! domains (or in `cluster.local`, Istio's name for "the local one") stands for the same
//! account in each of them, and a trust domain value for all of them.

/// The mesh's trust domain and its aliases (`trustDomain`, `trustDomainAliases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomains(Vec<String>);

impl Default for TrustDomains {
    fn default() -> Self {
        TrustDomains(vec![CLUSTER_LOCAL.to_string()])
    }
}

/// The trust domain Istio reads as "the local one, whatever its name".
const CLUSTER_LOCAL: &str = "cluster.local";

impl TrustDomains {
    /// The trust domain `domain` with `aliases`.
    pub fn new(domain: &str, aliases: &[String]) -> Self {
        let mut all = vec![domain.to_string()];
        all.extend(aliases.iter().cloned());
        TrustDomains(all)
    }

    /// Istio's `ReplaceTrustDomainAliases`: a principal `TD/ns/N/sa/S` whose trust
    /// domain is one of the mesh's (or `cluster.local`) stands for the same account in
    /// every trust domain of the mesh.
    pub(super) fn principals(&self, values: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            let parts: Vec<&str> = v.split('/').collect();
            let td = parts[0];
            let enforced = parts.len() == 5 && td != "*";
            if !enforced || !(td == CLUSTER_LOCAL || self.0.iter().any(|d| td_match(td, d))) {
                out.push(v.clone());
                continue;
            }
            let mut these: Vec<String> = Vec::new();
            for d in &self.0 {
                let replaced = if suffix_match(d, td) {
                    v.clone()
                } else {
                    format!("{d}/{}", parts[1..].join("/"))
                };
                if !these.contains(&replaced) {
                    these.push(replaced);
                }
            }
            out.extend(these);
        }
        out
    }

    /// Istio's `ExpandTrustDomainAliases`: a trust domain of the mesh stands for all of
    /// them.
    pub(super) fn trust_domains(&self, values: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in values {
            let expanded: &[String] = if self.0.contains(v) {
                &self.0
            } else {
                std::slice::from_ref(v)
            };
            for e in expanded {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
        }
        out
    }
}

/// Istio's `stringMatch` of one trust domain against one of the list.
fn td_match(a: &str, s: &str) -> bool {
    a == s
        || s == "*"
        || prefix_match(a, s)
        || prefix_match(s, a)
        || suffix_match(a, s)
        || suffix_match(s, a)
}

fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}

fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| a.ends_with(p))
}
