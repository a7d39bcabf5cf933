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
