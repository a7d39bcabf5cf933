//! Checks of the values that several resources share (the types of [`crate::model::common`]
//! and the like): string matches and their RE2 regular expressions, durations (Istio's
//! floor: at least 1 ms, in whole milliseconds), percentages (0-100), ports (1-65535),
//! host names, `exportTo` lists and workload selectors. Istio checks each of these the
//! same way wherever it appears, so each is one method of `Ctx`, used by every kind.

use std::collections::HashSet;

use super::Ctx;
use crate::diag::Code;
use crate::duration::Duration;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

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

    pub(super) fn string_match(&mut self, path: &FieldPath, m: &StringMatch, presence_ok: bool) {
        match m.set_count() {
            0 if presence_ok => {}
            0 => self.report(
                Code::InvalidStringMatch,
                path,
                "a string match needs one of `exact`, `prefix` or `regex`",
            ),
            1 => {}
            _ => self.report(
                Code::InvalidStringMatch,
                path,
                "only one of `exact`, `prefix` and `regex` may be set",
            ),
        }
        if let Some(re) = &m.regex {
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
        if let Err(e) = host::check_wildcard_domain(h) {
            self.report(Code::InvalidHost, path, format!("invalid host: {e}"));
        }
    }

    /// Checks `exportTo`; `none_ok` where `~` is allowed (ServiceEntry only).
    pub(super) fn export_to(&mut self, path: &FieldPath, list: &[String], none_ok: bool) {
        let mut seen = HashSet::new();
        for (i, ns) in list.iter().enumerate() {
            let p = path.index(i);
            if !seen.insert(ns.as_str()) {
                self.report(
                    Code::DuplicateEntry,
                    &p,
                    format!("`{ns}` appears twice in exportTo"),
                );
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
            if let Err(e) = host::check_dns1123_label(ns) {
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
