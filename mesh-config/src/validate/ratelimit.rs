//! LocalRateLimitPolicy: a rate is one of per second, per minute and per hour; rates and
//! bursts are positive; `identity` and every override
//! allow no more than `total` (a caller could never use the difference, as Linkerd
//! rules); an override lists callers, each a `ServiceAccount` with a name, none of them
//! twice; a policy that limits nothing is worth a warning.

use std::collections::BTreeMap;

use super::Ctx;
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn local_rate_limit_policy(
    ctx: &mut Ctx<'_>,
    spec: &FieldPath,
    namespace: &str,
    p: &LocalRateLimitPolicy,
) {
    if let Some(sel) = &p.workload_selector {
        let sp = spec.key("workloadSelector");
        ctx.labels(&sp.key("labels"), &sel.labels);
        if sel.labels.is_empty() {
            ctx.warn(
                Code::InvalidValue,
                &sp,
                "workload selector specified without labels: the policy applies to every workload of the namespace",
            );
        }
    }
    if let Some(t) = &p.total {
        rate(ctx, &spec.key("total"), t);
    }
    if let Some(i) = &p.identity {
        rate(ctx, &spec.key("identity"), i);
    }
    let total = p.total.filter(|t| t.per_hour() > 0);
    if let (Some(i), Some(total)) = (&p.identity, total)
        && i.per_hour() > total.per_hour()
    {
        ctx.report(
            Code::InvalidValue,
            &spec.key("identity"),
            format!(
                "the identity rate ({}) cannot be greater than the total rate ({})",
                show(i),
                show(&total)
            ),
        );
    }
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, o) in p.overrides.iter().enumerate() {
        let op = spec.key("overrides").index(i);
        let os = o.spec();
        rate(ctx, &op, &os);
        if let Some(total) = total
            && os.per_hour() > total.per_hour()
        {
            ctx.report(
                Code::InvalidValue,
                &op,
                format!(
                    "an override's rate ({}) cannot be greater than the total rate ({})",
                    show(&os),
                    show(&total)
                ),
            );
        }
        if o.client_refs.is_empty() {
            ctx.report(
                Code::MissingField,
                &op.key("clientRefs"),
                "an override needs `clientRefs`: the callers it limits",
            );
        }
        for (j, c) in o.client_refs.iter().enumerate() {
            let cp = op.key("clientRefs").index(j);
            if !c.group.is_empty() && c.group != "core" {
                ctx.report(
                    Code::InvalidValue,
                    &cp.key("group"),
                    format!(
                        "`{}`: a ServiceAccount is in the core group (leave `group` out)",
                        c.group
                    ),
                );
            }
            if c.kind != "ServiceAccount" {
                let msg = if c.kind.is_empty() {
                    "kind is required: `ServiceAccount`".to_string()
                } else {
                    format!(
                        "kind `{}` is not supported: only `ServiceAccount` callers can be named",
                        c.kind
                    )
                };
                let code = if c.kind.is_empty() {
                    Code::MissingField
                } else {
                    Code::InvalidValue
                };
                ctx.report(code, &cp.key("kind"), msg);
            }
            if c.name.is_empty() {
                ctx.report(Code::MissingField, &cp.key("name"), "name is required");
            } else if let Err(e) = host::check_dns1123_subdomain(&c.name) {
                ctx.report(
                    Code::InvalidName,
                    &cp.key("name"),
                    format!("invalid service account name: {e}"),
                );
            }
            let ns = c.namespace.as_deref().unwrap_or(namespace);
            if let Err(e) = host::check_dns1123_label(ns) {
                ctx.report(
                    Code::InvalidName,
                    &cp.key("namespace"),
                    format!("invalid namespace: {e}"),
                );
            }
            let key = (ns.to_string(), c.name.clone());
            if let Some(first) = seen.get(&key) {
                ctx.report(
                    Code::DuplicateEntry,
                    &cp,
                    format!(
                        "service account {}/{} is already listed by overrides[{first}]: a caller has one override",
                        key.0, key.1
                    ),
                );
            } else {
                seen.insert(key, i);
            }
        }
    }
    if p.total.is_none() && p.identity.is_none() && p.overrides.is_empty() {
        ctx.warn(
            Code::InvalidValue,
            spec,
            "the policy sets no limit: add `total`, `identity` or `overrides`",
        );
    }
}

/// A rate as written (`20/s`, `4/min`, `100/h`).
fn show(r: &RateLimitSpec) -> String {
    match r.rate() {
        Some((n, unit)) => match unit.as_secs() {
            1 => format!("{n}/s"),
            60 => format!("{n}/min"),
            _ => format!("{n}/h"),
        },
        None => "none".into(),
    }
}

fn rate(ctx: &mut Ctx<'_>, path: &FieldPath, r: &RateLimitSpec) {
    match r.rates_set() {
        0 => ctx.report(
            Code::MissingField,
            path,
            "a rate needs one of `requestsPerSecond`, `requestsPerMinute` or `requestsPerHour`",
        ),
        1 => {}
        _ => ctx.report(
            Code::ExclusiveFields,
            path,
            "only one of `requestsPerSecond`, `requestsPerMinute` and `requestsPerHour` may be set",
        ),
    }
    for (field, v) in [
        ("requestsPerSecond", r.requests_per_second),
        ("requestsPerMinute", r.requests_per_minute),
        ("requestsPerHour", r.requests_per_hour),
    ] {
        if v == Some(0) {
            ctx.report(
                Code::InvalidValue,
                &path.key(field),
                format!("{field} must be greater than 0"),
            );
        }
    }
    if r.burst == Some(0) {
        ctx.report(
            Code::InvalidValue,
            &path.key("burst"),
            "burst must be greater than 0 (leave it out to use the rate's count)",
        );
    }
}
