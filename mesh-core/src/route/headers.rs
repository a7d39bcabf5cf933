//! Header operations of a rule and of its destinations (`headers.request`,
//! `headers.response`), compiled once: names lower-cased and validated, `host` and
//! `:authority` turned into an authority rewrite as Istio does.

use http::{HeaderName, HeaderValue};
use mesh_config::model::{HeaderOperations, Headers};

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
pub struct RuleHeaders {
    /// On the request.
    pub request: HeaderOps,
    /// On the response.
    pub response: HeaderOps,
}

impl RuleHeaders {
    pub(super) fn compile(h: Option<&Headers>) -> Self {
        RuleHeaders {
            request: HeaderOps::compile(h.and_then(|h| h.request.as_ref())),
            response: HeaderOps::compile(h.and_then(|h| h.response.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

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
