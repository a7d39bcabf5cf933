//! Answers that depend on the caller's namespace, computed once per configuration.
//!
//! Which VirtualService, service and DestinationRule a caller gets depends on its
//! namespace, but only namespaces that configuration names (those of the resources and
//! those their `exportTo` lists) can see anything differently: every other namespace sees
//! what any unnamed namespace sees. [`ByNamespace`] holds one answer per named namespace
//! and one for all the others, so that a request looks its namespace up instead of
//! ranking resources.

use foldhash::{HashMap, HashMapExt};

/// One answer per namespace the configuration names, and one for every other namespace.
#[derive(Debug, Default)]
pub(crate) struct ByNamespace<T> {
    /// A few namespaces: scanned.
    few: Box<[(Box<str>, T)]>,
    /// Many namespaces: hashed.
    many: HashMap<Box<str>, T>,
    other: T,
}

/// Above this many namespaces, answers are hashed rather than scanned.
const MAX_SCANNED: usize = 8;

impl<T> ByNamespace<T> {
    /// Computes `answer(ns)` for each of `names` and for a namespace none of them is.
    pub(crate) fn build(names: &[&str], answer: impl Fn(&str) -> T) -> Self {
        let mut other_ns = String::from("\0");
        while names.contains(&other_ns.as_str()) {
            other_ns.push('\0');
        }
        let other = answer(&other_ns);
        let listed = names.iter().map(|n| (Box::from(*n), answer(n)));
        if names.len() > MAX_SCANNED {
            ByNamespace {
                few: Box::default(),
                many: listed.collect(),
                other,
            }
        } else {
            ByNamespace {
                few: listed.collect(),
                many: HashMap::new(),
                other,
            }
        }
    }

    /// The answer for callers in `from`.
    pub(crate) fn get(&self, from: &str) -> &T {
        if self.many.is_empty() {
            match self.few.iter().find(|(ns, _)| &**ns == from) {
                Some((_, v)) => v,
                None => &self.other,
            }
        } else {
            self.many.get(from).unwrap_or(&self.other)
        }
    }
}

/// Adds `n` to `names` unless it is an `exportTo` wildcard (`*`, `.`, `~`) or already
/// there.
pub(crate) fn add_name<'a>(n: &'a str, names: &mut Vec<&'a str>) {
    if !matches!(n, "*" | "." | "~") && !names.contains(&n) {
        names.push(n);
    }
}
