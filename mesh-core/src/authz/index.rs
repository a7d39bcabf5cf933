//! Policies indexed by what they require, so that a decision among many policies
//! evaluates only the few that could apply.
//!
//! Most policies name their callers by exact `principals` (Istio's "who may call") or
//! `namespaces`, or the paths they cover by exact or prefix `paths`. A policy every rule
//! of which requires one of a set of exact principals can only match a request from one
//! of them, and is filed under each; failing that, likewise under exact namespaces (Istio
//! matches `.*/ns/NAME/.*`, so a request is looked up under every `NAME` that follows a
//! `/ns/` in its identity); failing that, under exact or prefix paths (exact paths in a
//! map, prefixes in a byte trie walked along the request's normalized path). Every other policy is a candidate
//! for every request. A decision evaluates the candidates in configuration order, so the
//! first policy that matches is the one a linear scan would find (the property test in
//! `tests/authz_equivalence.rs` checks the decisions).

use std::sync::Arc;

use foldhash::HashMap;

use super::pattern::{PathPattern, StrPattern};
use super::{Attr, AuthzRequest, Check, Ctx, Policy, Value};

/// Policies of one action, in configuration order, with their index.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicySet {
    policies: Vec<Arc<Policy>>,
    by_principal: HashMap<Box<str>, Vec<u32>>,
    by_namespace: HashMap<Box<str>, Vec<u32>>,
    by_exact_path: HashMap<Box<str>, Vec<u32>>,
    by_path_prefix: Trie,
    /// Policies that may match any request.
    always: Vec<u32>,
}

/// What a policy can be filed under.
enum Key {
    Principals(Vec<String>),
    Namespaces(Vec<String>),
    Paths(Vec<PathKey>),
    /// It matches no request (no rules left): never a candidate.
    Never,
    Any,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PathKey {
    Exact(String),
    Prefix(String),
}

impl PolicySet {
    /// Adds `p` (after every policy added before).
    pub(crate) fn push(&mut self, p: Arc<Policy>) {
        let i = u32::try_from(self.policies.len()).unwrap_or(u32::MAX);
        match key(&p) {
            Key::Principals(keys) => {
                for k in keys {
                    self.by_principal.entry(k.into()).or_default().push(i);
                }
            }
            Key::Namespaces(keys) => {
                for k in keys {
                    self.by_namespace.entry(k.into()).or_default().push(i);
                }
            }
            Key::Paths(keys) => {
                for k in keys {
                    match k {
                        PathKey::Exact(s) => {
                            self.by_exact_path.entry(s.into()).or_default().push(i)
                        }
                        PathKey::Prefix(s) => self.by_path_prefix.insert(&s, i),
                    }
                }
            }
            Key::Never => {}
            Key::Any => self.always.push(i),
        }
        self.policies.push(p);
    }

    /// Number of policies.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when it holds no policy.
    pub(crate) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The first policy (in configuration order) with a rule matching `req`, and that
    /// rule's index.
    pub(crate) fn first_match(&self, req: &AuthzRequest<'_>) -> Option<(&Policy, usize)> {
        if self.policies.is_empty() {
            return None;
        }
        let cx = Ctx::new(req);
        let principal = req
            .peer
            .and_then(|id| id.strip_prefix("spiffe://"))
            .and_then(|p| self.by_principal.get(p))
            .map_or(&[][..], Vec::as_slice);
        let exact = self
            .by_exact_path
            .get(&*cx.path)
            .map_or(&[][..], Vec::as_slice);
        let mut candidates: Vec<u32> = Vec::new();
        self.by_path_prefix.prefixes_of(&cx.path, &mut candidates);
        if !self.by_namespace.is_empty()
            && let Some(id) = req.peer
        {
            for ns in namespaces_in(id) {
                if let Some(ids) = self.by_namespace.get(ns) {
                    candidates.extend_from_slice(ids);
                }
            }
        }
        let lists: [&[u32]; 3] = [principal, exact, &self.always];
        if candidates.is_empty() && lists.iter().filter(|l| !l.is_empty()).count() <= 1 {
            // One sorted list: no merge needed.
            let list = lists.into_iter().find(|l| !l.is_empty()).unwrap_or(&[]);
            self.first_in(list.iter().copied(), &cx)
        } else {
            for l in lists {
                candidates.extend_from_slice(l);
            }
            candidates.sort_unstable();
            candidates.dedup();
            self.first_in(candidates.iter().copied(), &cx)
        }
    }

    fn first_in(
        &self,
        ids: impl Iterator<Item = u32>,
        cx: &Ctx<'_, '_>,
    ) -> Option<(&Policy, usize)> {
        for i in ids {
            let p = &self.policies[i as usize];
            if let Some(rule) = p.matching_rule_in(cx) {
                return Some((p, rule));
            }
        }
        None
    }
}

/// Byte trie of path prefixes, each node with the policies filed under the prefix that
/// ends there.
#[derive(Debug, Clone, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    ids: Vec<u32>,
}

impl Trie {
    fn insert(&mut self, prefix: &str, id: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in prefix.as_bytes() {
            let next = self.nodes[at]
                .children
                .iter()
                .find(|(c, _)| *c == b)
                .map(|(_, n)| *n);
            at = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at]
                        .children
                        .push((b, u32::try_from(n).unwrap_or(u32::MAX)));
                    n
                }
            };
        }
        self.nodes[at].ids.push(id);
    }

    /// Appends the policies filed under every prefix of `path`.
    fn prefixes_of(&self, path: &str, out: &mut Vec<u32>) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        out.extend_from_slice(&node.ids);
        for &b in path.as_bytes() {
            match node.children.iter().find(|(c, _)| *c == b) {
                Some((_, n)) => node = &self.nodes[*n as usize],
                None => return,
            }
            out.extend_from_slice(&node.ids);
        }
    }
}

/// The exact principals a source requires, if it requires one of them.
fn exact_principals(checks: &[Check]) -> Option<Vec<String>> {
    checks.iter().find_map(|c| {
        if c.attr != Attr::SourcePrincipal || c.values.is_empty() {
            return None;
        }
        c.values
            .iter()
            .map(|v| match v {
                Value::Str(StrPattern::Exact(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    })
}

/// Every `NAME` that follows a `/ns/` and precedes a `/` in `id`: the namespaces an
/// exact `namespaces` value (`.*/ns/NAME/.*`) can match.
fn namespaces_in(id: &str) -> impl Iterator<Item = &str> {
    id.match_indices("/ns/").filter_map(move |(i, _)| {
        let rest = &id[i + 4..];
        rest.find('/').map(|end| &rest[..end])
    })
}

/// The exact namespaces a source requires, if it requires one of them.
fn exact_namespaces(checks: &[Check]) -> Option<Vec<String>> {
    checks.iter().find_map(|c| {
        if c.attr != Attr::SourceNamespace || c.values.is_empty() {
            return None;
        }
        c.values
            .iter()
            .map(|v| match v {
                Value::Namespace(pattern) => pattern
                    .strip_prefix("/ns/")
                    .and_then(|p| p.strip_suffix('/'))
                    .map(String::from),
                _ => None,
            })
            .collect()
    })
}

/// The exact or prefix paths an operation requires, if it requires one of them.
fn path_keys(checks: &[Check]) -> Option<Vec<PathKey>> {
    checks.iter().find_map(|c| {
        if c.attr != Attr::Path || c.values.is_empty() {
            return None;
        }
        c.values
            .iter()
            .map(|v| match v {
                Value::Path(PathPattern::Plain(StrPattern::Exact(s))) => {
                    Some(PathKey::Exact(s.clone()))
                }
                Value::Path(PathPattern::Plain(StrPattern::Prefix(s))) => {
                    Some(PathKey::Prefix(s.clone()))
                }
                _ => None,
            })
            .collect()
    })
}

/// The key `p` is filed under (see the module documentation).
fn key(p: &Policy) -> Key {
    if p.rules.is_empty() {
        return Key::Never;
    }
    let sources = p.rules.iter().flat_map(|r| r.principals.iter());
    if let Some(keys) = sources
        .map(|s| exact_principals(s))
        .collect::<Option<Vec<_>>>()
    {
        let mut keys: Vec<String> = keys.into_iter().flatten().collect();
        keys.sort();
        keys.dedup();
        return Key::Principals(keys);
    }
    let sources = p.rules.iter().flat_map(|r| r.principals.iter());
    if let Some(keys) = sources
        .map(|s| exact_namespaces(s))
        .collect::<Option<Vec<_>>>()
    {
        let mut keys: Vec<String> = keys.into_iter().flatten().collect();
        keys.sort();
        keys.dedup();
        return Key::Namespaces(keys);
    }
    let operations = p.rules.iter().flat_map(|r| r.permissions.iter());
    if let Some(keys) = operations.map(|o| path_keys(o)).collect::<Option<Vec<_>>>() {
        let mut keys: Vec<PathKey> = keys.into_iter().flatten().collect();
        keys.sort();
        keys.dedup();
        return Key::Paths(keys);
    }
    Key::Any
}
