//! Types shared by several Istio resources.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Labels: `key: value` pairs.
pub type Labels = BTreeMap<String, String>;

/// Istio's `StringMatch`: exactly one of `exact`, `prefix` or `regex` (RE2, full match).
///
/// In header and query parameter matches an empty `StringMatch` (`{}`) checks presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    /// Exact string match.
    pub exact: Option<String>,
    /// Prefix match.
    pub prefix: Option<String>,
    /// RE2 regular expression, matched against the whole value.
    pub regex: Option<String>,
}

impl StringMatch {
    /// How many of `exact`, `prefix` and `regex` are set.
    pub fn set_count(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }

    /// True when nothing is set (a presence match, where allowed).
    pub fn is_empty(&self) -> bool {
        self.set_count() == 0
    }
}

/// Istio's `Percent`: a double from 0 to 100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Percent {
    /// The percentage, 0.0 to 100.0.
    pub value: f64,
}

/// A port of a destination, by number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number.
    pub number: u32,
}

/// Selects workloads by labels (`selector.matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all have.
    pub match_labels: Labels,
}

/// Selects workloads by labels (`workloadSelector.labels`, in ServiceEntry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels a workload must all have.
    pub labels: Labels,
}

/// Header manipulation for requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    /// Operations on the request.
    pub request: Option<HeaderOperations>,
    /// Operations on the response.
    pub response: Option<HeaderOperations>,
}

/// Set, add and remove headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Overwrite these headers.
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

/// A reference to a Kubernetes Gateway API resource a policy attaches to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}
