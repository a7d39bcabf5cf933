//! Compiled HTTP rules and what a matched rule does.
//!
//! Each VirtualService `http` rule compiles once into a [`Rule`]: its match blocks, its
//! action (weighted route, redirect, direct response) and its settings (timeout, retries,
//! fault, mirrors, rewrite, header operations, CORS). Per request only the matching and
//! a weighted draw remain.
//!
//! The parts of a rule live in submodules, all re-exported here: header operations
//! ([`HeaderOps`], [`RuleHeaders`]), redirects and direct responses ([`Redirect`],
//! [`DirectResponse`], [`split_authority`]), rewrites ([`Rewrite`]) and CORS ([`Cors`]).

use std::sync::Arc;
use std::time::Duration;

use mesh_config::host::qualify;
use mesh_config::model::{Destination, Headers, HttpRetry, HttpRoute};
use rand_core::Rng;

use crate::balance::WeightedIndex;
use crate::fault::{FaultInjection, Fraction};
use crate::matcher::{Caller, MatchBlock, MatchError, RequestHead};
use crate::mesh::Pass;
use crate::retry::Retries;

mod cors;
mod headers;
mod redirect;
mod rewrite;

pub use cors::Cors;
pub use headers::{HeaderOps, RuleHeaders};
pub use redirect::{DirectResponse, Redirect, RedirectPort, bytes_like, split_authority};
pub use rewrite::{PathRewrite, Rewrite};

/// Where a rule was written: which VirtualService, and its `file:line`.
#[derive(Debug, Clone)]
pub struct RuleOrigin {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: Arc<str>,
    /// Index of the rule in `spec.http`.
    pub index: usize,
    /// The rule's name, if any.
    pub name: Option<Arc<str>>,
    /// Where the VirtualService was written. The rule's line is looked up when asked
    /// (`meshctl explain`, the admin page): compiling needs no YAML tree, so a
    /// configuration's trees can be dropped before it is compiled.
    written: mesh_config::model::Origin,
}

impl RuleOrigin {
    /// Rule `index` of the VirtualService `virtual_service` (`namespace/name`) written at
    /// `written`.
    pub fn new(
        virtual_service: Arc<str>,
        index: usize,
        name: Option<Arc<str>>,
        written: &mesh_config::model::Origin,
    ) -> Self {
        RuleOrigin {
            virtual_service,
            index,
            name,
            written: written.clone(),
        }
    }

    /// `file:line` of the rule.
    pub fn location(&self) -> String {
        let path = mesh_config::FieldPath::root()
            .key("spec")
            .key("http")
            .index(self.index);
        let loc = self.written.locate(&path);
        format!("{}:{}", loc.source.name(), loc.span.start.line)
    }
}

/// Two origins are the same rule of the same VirtualService written at the same place
/// (the same source, document and resource position: the rule's own line is not compared,
/// as it is not known without the tree).
impl PartialEq for RuleOrigin {
    fn eq(&self, other: &Self) -> bool {
        self.virtual_service == other.virtual_service
            && self.index == other.index
            && self.name == other.name
            && self.written.source.name() == other.written.source.name()
            && self.written.document_index == other.written.document_index
            && self.written.span() == other.written.span()
    }
}

impl Eq for RuleOrigin {}

/// A destination of a rule, with its host qualified.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Fully qualified host.
    pub host: Arc<str>,
    /// Subset.
    pub subset: Option<Arc<str>>,
    /// Port, when the rule names one.
    pub port: Option<u16>,
    /// Weight, as written (None when unset).
    pub weight: Option<u32>,
    /// Header operations of this destination.
    pub headers: RuleHeaders,
}

impl Target {
    fn compile(d: &Destination, ns: &str, weight: Option<i32>, headers: Option<&Headers>) -> Self {
        Target {
            host: qualify(&d.host, ns).into(),
            subset: d.subset.as_deref().map(Into::into),
            port: d.port.and_then(|p| u16::try_from(p.number).ok()),
            weight: weight.and_then(|w| u32::try_from(w).ok()),
            headers: RuleHeaders::compile(headers),
        }
    }
}

/// Weighted destinations.
#[derive(Debug, Clone)]
pub struct Split {
    /// The destinations, in order.
    pub targets: Vec<Target>,
    index: Option<WeightedIndex>,
}

impl Split {
    fn new(targets: Vec<Target>) -> Self {
        // One destination takes all traffic whatever its weight; several share it by
        // weight, a weight of 0 taking none.
        let index = if targets.len() > 1 {
            let w: Vec<u32> = targets.iter().map(|t| t.weight.unwrap_or(0)).collect();
            WeightedIndex::new(&w)
        } else {
            None
        };
        Split { targets, index }
    }

    /// Draws a destination (and its index).
    #[inline]
    pub fn pick(&self, rng: &mut dyn Rng) -> Option<(usize, &Target)> {
        let i = match &self.index {
            Some(index) => index.pick(rng.next_u64()),
            None => 0,
        };
        self.targets.get(i).map(|t| (i, t))
    }
}

/// A mirror destination and its share.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// Where copies go.
    pub target: Target,
    /// Share of requests copied.
    pub share: Fraction,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to weighted destinations.
    Route(Split),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct(DirectResponse),
}

/// A compiled HTTP rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was written.
    pub origin: RuleOrigin,
    /// Match blocks (any); empty matches everything.
    pub matches: Vec<MatchBlock>,
    /// For a rule inlined from a delegate VirtualService: the root rule's blocks (any
    /// must match too).
    pub parent_matches: Vec<MatchBlock>,
    /// What it does.
    pub action: Action,
    /// Whole-request timeout (None: disabled, Istio's default).
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Retries,
    /// Fault injection.
    pub fault: Option<FaultInjection>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// Rewrite.
    pub rewrite: Option<Rewrite>,
    /// Header operations.
    pub headers: RuleHeaders,
    /// CORS.
    pub cors: Option<Cors>,
}

impl Rule {
    /// Compiles rule `index` of a VirtualService in namespace `ns`.
    pub fn compile(
        r: &HttpRoute,
        ns: &str,
        origin: RuleOrigin,
        default_retry: &HttpRetry,
    ) -> Result<Self, MatchError> {
        let matches = r
            .match_
            .iter()
            .map(|m| MatchBlock::compile(m, ns))
            .collect::<Result<Vec<_>, _>>()?;
        let action = if let Some(rd) = &r.redirect {
            Action::Redirect(Redirect::compile(rd))
        } else if let Some(dr) = &r.direct_response {
            let body: Vec<u8> = match &dr.body {
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), _) => s.clone().into_bytes(),
                    (None, Some(b64)) => decode_base64(b64),
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            Action::Direct(DirectResponse {
                status: u16::try_from(dr.status).unwrap_or(500),
                body: body.into(),
            })
        } else {
            Action::Route(Split::new(
                r.route
                    .iter()
                    .map(|d| Target::compile(&d.destination, ns, d.weight, d.headers.as_ref()))
                    .collect(),
            ))
        };
        let mirror_share = match (r.mirror_percentage, r.mirror_percent) {
            (Some(p), _) => Fraction::from_percent(p.value),
            (None, Some(p)) => Fraction::from_percent(f64::from(p)),
            (None, None) => Fraction::ALL,
        };
        let mut mirrors: Vec<Mirror> = r
            .mirror
            .iter()
            .map(|d| Mirror {
                target: Target::compile(d, ns, None, None),
                share: mirror_share,
            })
            .collect();
        mirrors.extend(r.mirrors.iter().map(|m| {
            Mirror {
                target: Target::compile(&m.destination, ns, None, None),
                share: m
                    .percentage
                    .map_or(Fraction::ALL, |p| Fraction::from_percent(p.value)),
            }
        }));
        let rewrite = r.rewrite.as_ref().map(Rewrite::compile).transpose()?;
        Ok(Rule {
            origin,
            matches,
            parent_matches: Vec::new(),
            action,
            timeout: r.timeout.map(|d| d.get()).filter(|d| !d.is_zero()),
            retry: Retries::compile(r.retries.as_ref(), default_retry),
            fault: r.fault.as_ref().map(FaultInjection::compile),
            mirrors,
            rewrite,
            headers: RuleHeaders::compile(r.headers.as_ref()),
            cors: r.cors_policy.as_ref().map(Cors::compile).transpose()?,
        })
    }

    /// The block that matches the request and its index, if the rule applies
    /// (`Some(None)` for a rule without blocks). `gateways` are the VirtualService's.
    pub fn matching_block(
        &self,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        gateways: &[Box<str>],
    ) -> Option<Option<(usize, &MatchBlock)>> {
        self.matching_block_in(head, caller, gateways, Pass::All)
    }

    /// [`Rule::matching_block`] among the blocks `pass` considers: a block is catch-all
    /// when [`MatchBlock::is_catch_all`] says so and a rule without blocks is catch-all;
    /// a rule inlined from a delegate whose root rule has conditions never is (Istio
    /// merges the root's conditions into it), one whose root rule has none is judged by
    /// its own blocks.
    pub(crate) fn matching_block_in(
        &self,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        gateways: &[Box<str>],
        pass: Pass,
    ) -> Option<Option<(usize, &MatchBlock)>> {
        let delegated = !self.parent_matches.is_empty();
        let considered = |catch_all: bool| match pass {
            Pass::All => true,
            Pass::Specific => !catch_all,
            Pass::CatchAll => catch_all,
        };
        if delegated
            && !self
                .parent_matches
                .iter()
                .any(|b| b.matches(head, caller, gateways))
        {
            return None;
        }
        if self.matches.is_empty() {
            return (considered(!delegated)
                && crate::matcher::gateway_applies(gateways, caller.gateway))
            .then_some(None);
        }
        self.matches
            .iter()
            .enumerate()
            .find(|(_, b)| {
                considered(!delegated && b.is_catch_all()) && b.matches(head, caller, gateways)
            })
            .map(Some)
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = val(c) else { break };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
    }
}
