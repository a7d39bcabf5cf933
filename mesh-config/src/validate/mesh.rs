//! Checks of the mesh settings resource (Istio's MeshConfig): the trust domain, the root
//! namespace, the default HTTP retry policy (checked as a route's retries are) and the
//! default `exportTo` of each kind (`~`, no namespace, only for services).

use super::Ctx;
use super::http_route::retries;
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn mesh_config(ctx: &mut Ctx<'_>, spec: &FieldPath, mc: &MeshConfigSpec) {
    if let Some(td) = &mc.trust_domain
        && let Err(e) = host::check_wildcard_domain(td)
    {
        ctx.report(
            Code::InvalidValue,
            &spec.key("trustDomain"),
            format!("invalid trust domain: {e}"),
        );
    }
    if let Some(ns) = &mc.root_namespace
        && let Err(e) = host::check_dns1123_label(ns)
    {
        ctx.report(
            Code::InvalidName,
            &spec.key("rootNamespace"),
            format!("invalid namespace: {e}"),
        );
    }
    if let Some(f) = mc
        .access_log_file
        .as_deref()
        .filter(|f| !f.is_empty() && *f != "/dev/stdout")
    {
        ctx.warn(
            Code::NotEnforced,
            &spec.key("accessLogFile"),
            format!("access logs are written to the runtime's access log sink (standard output by default), not to `{f}`"),
        );
    }
    if mc
        .access_log_format
        .as_deref()
        .is_some_and(|f| !f.is_empty())
    {
        ctx.warn(
            Code::NotEnforced,
            &spec.key("accessLogFormat"),
            "custom access log formats are not applied: entries are written in Istio's default format (TEXT or JSON, `accessLogEncoding`)",
        );
    }
    if let Some(r) = &mc.default_http_retry_policy {
        retries(ctx, &spec.key("defaultHttpRetryPolicy"), r);
    }
    ctx.export_to(
        &spec.key("defaultServiceExportTo"),
        &mc.default_service_export_to,
        true,
    );
    ctx.export_to(
        &spec.key("defaultVirtualServiceExportTo"),
        &mc.default_virtual_service_export_to,
        false,
    );
    ctx.export_to(
        &spec.key("defaultDestinationRuleExportTo"),
        &mc.default_destination_rule_export_to,
        false,
    );
}
