//! An index over a VirtualService's rules, so that a decision does not test every rule.
//!
//! First match wins, so rules are tried in order; but most rules carry a condition that
//! rules them out cheaply — an exact header value, an exact path, a path prefix covering
//! a first segment. The index maps each such key to the rules whose every match block
//! has one; the rules left (with a block that has no such key, or no match at all) are
//! always candidates. A request's candidates are the always-candidates plus the rules
//! under the keys it has, visited in rule order (a k-way merge of sorted lists, without
//! allocating); each is then matched fully. The answer is the one a linear scan gives.

use foldhash::{HashMap, HashMapExt};

use http::HeaderName;

use crate::matcher::{IndexKey, RequestHead, first_segment};
use crate::route::Rule;

/// The index of one virtual host's rules.
#[derive(Debug, Default)]
pub struct RuleIndex {
    /// Rules that must always be tried.
    always: Box<[u32]>,
    headers: HashMap<HeaderName, HashMap<Box<str>, Box<[u32]>>>,
    paths: HashMap<Box<str>, Box<[u32]>>,
    segments: HashMap<Box<str>, Box<[u32]>>,
}

/// The sorted lists a request's candidates come from.
struct Lists<'a> {
    lists: [&'a [u32]; MAX_LISTS],
    n: usize,
    overflow: bool,
}

impl<'a> Lists<'a> {
    fn push(&mut self, l: &'a [u32]) {
        if l.is_empty() {
            return;
        }
        if self.n == MAX_LISTS {
            self.overflow = true;
            return;
        }
        self.lists[self.n] = l;
        self.n += 1;
    }
}

/// At most this many sorted lists are merged without allocating; more fall back to a
/// linear scan (only with very many distinct indexed header names).
const MAX_LISTS: usize = 8;

impl RuleIndex {
    /// Indexes `rules`.
    pub fn new(rules: &[Rule]) -> Self {
        let mut always = Vec::new();
        let mut headers: HashMap<HeaderName, HashMap<Box<str>, Vec<u32>>> = HashMap::new();
        let mut paths: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut segments: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            let keys: Option<Vec<IndexKey>> =
                if r.matches.is_empty() || !r.parent_matches.is_empty() {
                    None
                } else {
                    r.matches.iter().map(|b| b.index_key()).collect()
                };
            let Some(mut keys) = keys else {
                always.push(i);
                continue;
            };
            keys.sort_by_key(|k| format!("{k:?}"));
            keys.dedup();
            for k in keys {
                match k {
                    IndexKey::Header(name, value) => headers
                        .entry(name)
                        .or_default()
                        .entry(value)
                        .or_default()
                        .push(i),
                    IndexKey::Path(p) => paths.entry(p).or_default().push(i),
                    IndexKey::Segment(s) => segments.entry(s).or_default().push(i),
                }
            }
        }
        let boxed = |m: HashMap<Box<str>, Vec<u32>>| -> HashMap<Box<str>, Box<[u32]>> {
            m.into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect()
        };
        RuleIndex {
            always: always.into_boxed_slice(),
            headers: headers.into_iter().map(|(k, v)| (k, boxed(v))).collect(),
            paths: boxed(paths),
            segments: boxed(segments),
        }
    }

    /// Calls `f` with the candidate rules of `head`, in rule order, until it returns
    /// `true`.
    pub fn for_candidates(
        &self,
        head: &RequestHead<'_>,
        rules_len: usize,
        mut f: impl FnMut(usize) -> bool,
    ) {
        let mut lists = Lists {
            lists: [&[]; MAX_LISTS],
            n: 0,
            overflow: false,
        };
        lists.push(&self.always);
        if let Some(l) = self.paths.get(head.path) {
            lists.push(l);
        }
        if let Some(seg) = first_segment(head.path, false)
            && let Some(l) = self.segments.get(seg)
        {
            lists.push(l);
        }
        for (name, values) in &self.headers {
            let mut all = head.headers.get_all(name).iter();
            let Some(first) = all.next() else { continue };
            let hit = match all.next() {
                // One value: it is what an exact match compares.
                None => first.to_str().ok().and_then(|v| values.get(v)),
                // Several: Envoy matches their comma-joined concatenation.
                Some(second) => {
                    let mut joined = String::new();
                    for v in [first, second].into_iter().chain(all) {
                        if !joined.is_empty() {
                            joined.push(',');
                        }
                        joined.push_str(v.to_str().unwrap_or(""));
                    }
                    values.get(joined.as_str())
                }
            };
            if let Some(l) = hit {
                lists.push(l);
            }
        }
        if lists.overflow {
            // Too many lists to merge in place: try every rule.
            for i in 0..rules_len {
                if f(i) {
                    return;
                }
            }
            return;
        }
        // k-way merge of sorted lists, skipping duplicates.
        let Lists { lists, n, .. } = lists;
        let mut pos = [0usize; MAX_LISTS];
        let mut last: Option<u32> = None;
        loop {
            let mut best: Option<(usize, u32)> = None;
            for k in 0..n {
                if let Some(&v) = lists[k].get(pos[k])
                    && best.is_none_or(|(_, b)| v < b)
                {
                    best = Some((k, v));
                }
            }
            let Some((k, v)) = best else { return };
            pos[k] += 1;
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            if f(v as usize) {
                return;
            }
        }
    }
}
