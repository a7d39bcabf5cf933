//! Checks of the values that several resources share (the types of [`crate::model::common`]
//! and the like): string matches and their RE2 regular expressions, durations (Istio's
//! floor: at least 1 ms, in whole milliseconds), percentages (0-100), ports (1-65535),
//! host names, `exportTo` lists, workload selectors and policy target references. Istio
//! checks each of these the same way wherever it appears, so each is one method of `Ctx`,
//! used by every kind.

use std::collections::HashSet;

use super::Ctx;
use crate::diag::Code;
use crate::duration::Duration;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

/// Where a string match is written: Istio checks each place a little differently.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum MatchField {
    /// A request match's `uri`.
    Uri,
    /// A request match's `scheme`, `method` or `authority`.
    Field,
    /// A request match's `headers` entry.
    Header,
    /// A request match's `withoutHeaders` entry.
    WithoutHeader,
    /// A request match's `queryParams` entry.
    QueryParam,
}

impl Ctx<'_> {
    pub(super) fn regex(&mut self, path: &FieldPath, re: &str) {
        if let Err(e) = crate::re2::compile(re) {
            self.report(
                Code::InvalidRegex,
                path,
                format!("`{re}` is not a valid RE2 regular expression: {e}"),
            );
        }
    }

    /// Istio's `validateStringMatch` for a match of `field`: at most one of `exact`,
    /// `prefix` and `regex` (none is a presence match); no empty prefix but for a
    /// uri (Envoy's path prefix may be empty, its string matchers' may not); no empty
    /// regex; `regex: "*"` is a presence match in `withoutHeaders` only.
    pub(super) fn string_match(&mut self, path: &FieldPath, m: &StringMatch, field: MatchField) {
        if let Some(p) = &m.prefix
            && p.is_empty()
            && field != MatchField::Uri
        {
            self.report(
                Code::InvalidStringMatch,
                &path.key("prefix"),
                "an empty `prefix` matches everything: use a presence match (`{}`) or remove it",
            );
        }
        if let Some(re) = &m.regex {
            if re.is_empty() {
                self.report(
                    Code::InvalidStringMatch,
                    &path.key("regex"),
                    "an empty `regex` is not a match",
                );
            } else if re.len() > 1024 {
                self.report(
                    Code::InvalidRegex,
                    &path.key("regex"),
                    format!(
                        "a regex of {} characters is too large: at most 1024",
                        re.len()
                    ),
                );
            }
        }
        // None set is a presence match (for a uri, any path), as in Istio.
        if m.set_count() > 1 {
            self.report(
                Code::InvalidStringMatch,
                path,
                "only one of `exact`, `prefix` and `regex` may be set",
            );
        }
        if let Some(re) = &m.regex
            && !re.is_empty()
            && re.len() <= 1024
            && !(field == MatchField::WithoutHeader && re == "*")
        {
            self.regex(&path.key("regex"), re);
        }
    }

    /// Istio's floor for durations: at least 1 ms, in whole milliseconds.
    pub(super) fn duration_ms(&mut self, path: &FieldPath, d: Option<Duration>) {
        let Some(d) = d else { return };
        let nanos = d.get().as_nanos();
        if nanos < 1_000_000 {
            self.report(
                Code::InvalidDuration,
                path,
                format!("duration `{d}` must be at least 1ms"),
            );
        } else if nanos % 1_000_000 != 0 {
            self.report(
                Code::InvalidDuration,
                path,
                format!("duration `{d}` must be a whole number of milliseconds"),
            );
        }
    }

    pub(super) fn percent(&mut self, path: &FieldPath, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.report(
                Code::PercentageRange,
                path,
                format!("percentage {value} is outside 0-100"),
            );
        }
    }

    pub(super) fn port(&mut self, path: &FieldPath, n: u32) {
        if n == 0 || n > 65535 {
            self.report(
                Code::InvalidPort,
                path,
                format!("port {n} is outside 1-65535"),
            );
        }
    }

    pub(super) fn host(&mut self, path: &FieldPath, h: &str) {
        // Istio's `ValidateWildcardDomain` also takes a partial wildcard first label
        // (`*-api.example.com`); Gateways refuse those themselves.
        // ... and refuses an all-digit top-level label (an IP address is no host name).
        let tld = h.rsplit('.').next().unwrap_or(h);
        if h.contains('.') && !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
            self.report(
                Code::InvalidHost,
                path,
                format!("invalid host: `{h}`: the top-level label `{tld}` cannot be all digits (an IP address is not a host name here)"),
            );
        } else if let Err(e) = host::check_wildcard_domain(h)
            && host::check_partial_wildcard(h).is_err()
        {
            self.report(Code::InvalidHost, path, format!("invalid host: {e}"));
        }
    }

    /// Checks `exportTo`; `none_ok` where `~` is allowed (ServiceEntry only).
    pub(super) fn export_to(&mut self, path: &FieldPath, list: &[String], none_ok: bool) {
        let mut seen = HashSet::new();
        let own = self.reference.namespace.clone();
        for (i, ns) in list.iter().enumerate() {
            let p = path.index(i);
            // `.` is the resource's own namespace: `[., <own namespace>]` names it twice.
            let key = if ns == "." { own.as_str() } else { ns.as_str() };
            if !seen.insert(key) {
                let message = if key == ns {
                    format!("`{ns}` appears twice in exportTo")
                } else {
                    format!("`.` and `{own}` both name this resource's own namespace in exportTo")
                };
                self.report(Code::DuplicateEntry, &p, message);
            }
            match ns.as_str() {
                "." | "*" => continue,
                "~" if none_ok => continue,
                "~" => {
                    self.report(
                        Code::InvalidValue,
                        &p,
                        "`~` (export to no namespace) is only allowed for ServiceEntries",
                    );
                    continue;
                }
                _ => {}
            }
            if let Err(e) = host::check_dns_label(ns) {
                self.report(
                    Code::InvalidValue,
                    &p,
                    format!("exportTo entries are `.`, `*`, `~` or a namespace name: {e}"),
                );
            }
        }
        if list.len() > 1 && list.iter().any(|n| n == "~") {
            self.report(
                Code::ExclusiveFields,
                path,
                "`~` (export to no namespace) cannot be combined with other entries",
            );
        }
        if list.len() > 1 && list.iter().any(|n| n == "*") {
            self.report(
                Code::ExclusiveFields,
                path,
                "`*` (export to every namespace) cannot be combined with other entries",
            );
        }
    }

    /// Istio's `validateWorkloadSelector`: valid labels (no empty key, no `*`), and a
    /// warning for a selector without labels.
    pub(super) fn selector(&mut self, path: &FieldPath, s: &Option<WorkloadSelector>) {
        if let Some(s) = s {
            self.labels(&path.key("matchLabels"), &s.match_labels);
            if s.match_labels.is_empty() {
                self.warn(
                    Code::InvalidValue,
                    path,
                    "workload selector specified without labels: it selects every workload",
                );
            }
        }
    }
}

/// Target reference kinds Istio accepts (canonical group, kind).
const TARGET_KINDS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// The CRDs' limit on `targetRefs`.
const MAX_TARGET_REFS: usize = 16;

impl Ctx<'_> {
    /// What a policy applies to (AuthorizationPolicy, RequestAuthentication, Telemetry),
    /// as Istio's `validateOneOfSelectorType`, `validateWorkloadSelector` and
    /// `validatePolicyTargetReference(s)` check it: one of `selector`, `targetRef` and
    /// `targetRefs`; references to a Service, ServiceEntry, Gateway or GatewayClass of the
    /// policy's own namespace, at most 16.
    pub(super) fn policy_targets(
        &mut self,
        spec: &FieldPath,
        selector: &Option<WorkloadSelector>,
        target_ref: &Option<PolicyTargetReference>,
        target_refs: &[PolicyTargetReference],
    ) {
        let set = [
            selector.is_some(),
            target_ref.is_some(),
            !target_refs.is_empty(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if set > 1 {
            let field = if selector.is_some() {
                "selector"
            } else {
                "targetRef"
            };
            self.report(
                Code::ExclusiveFields,
                &spec.key(field),
                "only one of `selector`, `targetRef` and `targetRefs` can be set",
            );
        }
        self.selector(&spec.key("selector"), selector);
        if let Some(r) = target_ref {
            self.target_ref(&spec.key("targetRef"), r);
        }
        for (i, r) in target_refs.iter().enumerate() {
            self.target_ref(&spec.key("targetRefs").index(i), r);
        }
        if target_refs.len() > MAX_TARGET_REFS {
            self.report(
                Code::InvalidValue,
                &spec.key("targetRefs"),
                format!(
                    "{} target references: at most {MAX_TARGET_REFS} are allowed",
                    target_refs.len()
                ),
            );
        }
    }

    /// One target reference (Istio's `validatePolicyTargetReference` and the CRD's rules).
    fn target_ref(&mut self, path: &FieldPath, r: &PolicyTargetReference) {
        if r.name.is_empty() {
            self.report(
                Code::MissingField,
                &path.key("name"),
                "a target reference needs a `name`",
            );
        }
        if !r.namespace.is_empty() {
            self.report(
                Code::InvalidValue,
                &path.key("namespace"),
                format!(
                    "`namespace: {}`: cross namespace referencing is not supported (leave `namespace` out: the policy's own namespace is used)",
                    r.namespace
                ),
            );
        }
        if r.kind.is_empty() {
            self.report(
                Code::MissingField,
                &path.key("kind"),
                "a target reference needs a `kind`: Service, ServiceEntry, Gateway or GatewayClass",
            );
            return;
        }
        let group = if r.group.is_empty() {
            "core"
        } else {
            r.group.as_str()
        };
        if !TARGET_KINDS.contains(&(group, r.kind.as_str())) {
            self.report(
                Code::InvalidValue,
                &path.key("kind"),
                format!(
                    "a target reference must be to a Service (core group), a ServiceEntry (networking.istio.io), a Gateway or a GatewayClass (gateway.networking.k8s.io), not `{}/{}`",
                    r.group, r.kind
                ),
            );
        }
    }
}
