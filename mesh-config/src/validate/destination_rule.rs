//! DestinationRule checks, Istio's webhook rules: the host, subsets (valid names defined
//! once, valid labels) and every traffic policy (the rule's, a subset's, a port's): load
//! balancer settings (one hash key, a prime Maglev table no larger than Envoy's), connection
//! pool limits, outlier detection, and client TLS (MUTUAL needs a certificate and a key
//! unless a credential name provides them; `insecureSkipVerify` excludes a CA). The parts
//! of `tls` the mesh does not enforce (the secrets and the CRL SIMPLE and MUTUAL
//! origination would read) are warned about here, since whether they are used depends on
//! the mode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Ctx, written};
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn destination_rule(ctx: &mut Ctx<'_>, spec: &FieldPath, dr: &DestinationRule) {
    if ctx.required_str(&spec.key("host"), &dr.host, "`host`") {
        ctx.host(&spec.key("host"), &dr.host);
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(ctx, &spec.key("trafficPolicy"), tp);
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = spec.key("subsets").index(i);
        if ctx.required_str(&p.key("name"), &s.name, "subset `name`") {
            if let Err(e) = host::check_dns_label(&s.name) {
                ctx.report(
                    Code::InvalidValue,
                    &p.key("name"),
                    format!("invalid subset name: {e}"),
                );
            }
            if let Some(first) = names.insert(&s.name, i) {
                ctx.report(
                    Code::DuplicateSubset,
                    &p.key("name"),
                    format!(
                        "subset `{}` is defined twice (first as subsets[{first}])",
                        s.name
                    ),
                );
            }
        }
        ctx.labels(&p.key("labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(ctx, &p.key("trafficPolicy"), tp);
        }
    }
    ctx.export_to(&spec.key("exportTo"), &dr.export_to, false);
    ctx.selector(&spec.key("workloadSelector"), &dr.workload_selector);
    // Istio: a DestinationRule for some workloads applies in its own namespace only.
    if dr.workload_selector.is_some() && !dr.export_to.is_empty() {
        let own = ctx.reference.namespace.clone();
        let is_own = |e: &String| e == "." || *e == own;
        if !dr.export_to.iter().any(is_own) {
            ctx.report(
                Code::InvalidValue,
                &spec.key("exportTo"),
                "a DestinationRule with a `workloadSelector` cannot be exported beyond its own namespace",
            );
        } else if dr.export_to.iter().any(|e| !is_own(e)) {
            ctx.report(
                Code::InvalidValue,
                &spec.key("exportTo"),
                "a DestinationRule with a `workloadSelector` can only be exported to its own namespace",
            );
        }
    }
}

/// The `mesh.rs/retry-budget` annotation, when present, must read as a retry budget.
pub(super) fn retry_budget_annotation(ctx: &mut Ctx<'_>, meta_path: &FieldPath, meta: &ObjectMeta) {
    if let Some(v) = meta.annotations.get(RETRY_BUDGET_ANNOTATION)
        && let Err(e) = RequestRetryBudget::parse(v)
    {
        ctx.report(
            Code::InvalidValue,
            &meta_path.key("annotations").key(RETRY_BUDGET_ANNOTATION),
            format!("invalid retry budget: {e}"),
        );
    }
}

fn traffic_policy(ctx: &mut Ctx<'_>, path: &FieldPath, tp: &TrafficPolicy) {
    if *tp == TrafficPolicy::default() {
        ctx.report(
            Code::InvalidValue,
            path,
            "`trafficPolicy` needs at least one field (remove it or set one)",
        );
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("proxyProtocol"),
            "`tunnel` and `proxyProtocol` cannot both be set",
        );
    }
    if let Some(t) = &tp.tunnel {
        tunnel(ctx, &path.key("tunnel"), t);
    }
    policy_parts(
        ctx,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeMap::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = path.key("portLevelSettings").index(i);
        match pl.port {
            None => ctx.report(
                Code::MissingField,
                &p.key("port"),
                "port-level settings need a `port`",
            ),
            Some(port) => {
                // Istio: a port's policy must set something.
                if pl.load_balancer.is_none()
                    && pl.connection_pool.is_none()
                    && pl.outlier_detection.is_none()
                    && pl.tls.is_none()
                {
                    ctx.report(
                        Code::InvalidValue,
                        &p,
                        "a port-level policy needs at least one of `loadBalancer`, `connectionPool`, `outlierDetection` and `tls`",
                    );
                }
                ctx.port(&p.key("port").key("number"), port.number);
                if let Some(first) = ports.insert(port.number, i) {
                    ctx.report(
                        Code::DuplicateEntry,
                        &p.key("port").key("number"),
                        format!(
                            "port {} has settings twice (first in portLevelSettings[{first}])",
                            port.number
                        ),
                    );
                }
            }
        }
        policy_parts(
            ctx,
            &p,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(pc) = rb.percent
    {
        ctx.percent(&path.key("retryBudget").key("percent"), pc);
    }
}

fn policy_parts(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(ctx, &path.key("loadBalancer"), lb, od.is_some());
    }
    if let Some(pool) = pool {
        connection_pool(ctx, &path.key("connectionPool"), pool);
    }
    if let Some(od) = od {
        outlier_detection(ctx, &path.key("outlierDetection"), od);
    }
    if let Some(tls) = tls {
        client_tls(ctx, &path.key("tls"), tls);
    }
}

/// Istio's `validateTunnelSettings`.
fn tunnel(ctx: &mut Ctx<'_>, path: &FieldPath, t: &TunnelSettings) {
    if let Some(p) = &t.protocol
        && !p.is_empty()
        && p != "CONNECT"
        && p != "POST"
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("protocol"),
            format!("tunnel `protocol` `{p}` must be `CONNECT` or `POST`"),
        );
    }
    if host::check_fqdn(&t.target_host).is_err() && t.target_host.parse::<IpAddr>().is_err() {
        ctx.report(
            Code::InvalidValue,
            &path.key("targetHost"),
            format!(
                "tunnel `targetHost` `{}` must be a fully qualified domain name or an IP address",
                t.target_host
            ),
        );
    }
    ctx.port(&path.key("targetPort"), t.target_port);
}

/// Istio's `ValidateLocalityLbSetting` and `ValidateZoneAwareLbSetting`: failover between
/// regions needs outlier detection (warned), names different regions, without `/` or
/// `*`.
fn failover(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    failover: &[LocalityFailover],
    failover_priority: &[String],
    outlier_detection: bool,
) {
    if (!failover.is_empty() || !failover_priority.is_empty()) && !outlier_detection {
        ctx.warn(
            Code::InvalidValue,
            path,
            "failover needs an `outlierDetection` policy: without it no endpoint is ever unhealthy, so traffic never fails over",
        );
    }
    for (i, f) in failover.iter().enumerate() {
        let p = path.key("failover").index(i);
        if f.from == f.to {
            ctx.report(
                Code::InvalidValue,
                &p.key("to"),
                format!("failover from region `{}` to itself", f.from),
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            ctx.report(
                Code::InvalidValue,
                &p,
                "failover names regions only (no `/zone`)",
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            ctx.report(
                Code::InvalidValue,
                &p,
                "failover regions cannot contain the `*` wildcard",
            );
        }
    }
}

/// Istio's `ValidateLocalityLbSetting`.
fn locality_lb(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    l: &LocalityLbSetting,
    outlier_detection: bool,
) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("failover"),
            "`distribute` and `failover` cannot both be set",
        );
        return;
    }
    if !l.failover.is_empty()
        && let Some(i) = l
            .failover_priority
            .iter()
            .position(|p| TOPOLOGY_LOCALITY_LABELS.contains(&p.as_str()))
    {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("failoverPriority").index(i),
            format!(
                "`failover` and the topology label `{}` in `failoverPriority` cannot both be set",
                l.failover_priority[i]
            ),
        );
        return;
    }
    let mut from = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let p = path.key("distribute").index(i);
        from.push(d.from.as_str());
        if let Some((loc, w)) = d.to.iter().find(|(_, w)| !(1..=100).contains(*w)) {
            ctx.report(
                Code::InvalidValue,
                &p.key("to").key(loc.as_str()),
                format!("locality weight {w} must be between 1 and 100"),
            );
            return;
        }
        let total: u32 = d.to.values().sum();
        if total != 100 {
            ctx.report(
                Code::InvalidValue,
                &p.key("to"),
                format!("the locality weights add up to {total}, not 100"),
            );
            return;
        }
        if let Err(e) = localities(d.to.keys().map(String::as_str)) {
            ctx.report(Code::InvalidValue, &p.key("to"), e);
        }
    }
    if let Err(e) = localities(from.into_iter()) {
        ctx.report(Code::InvalidValue, &path.key("distribute"), e);
    }
    failover(
        ctx,
        path,
        &l.failover,
        &l.failover_priority,
        outlier_detection,
    );
}

/// The topology labels of a locality (region, zone, subzone).
const TOPOLOGY_LOCALITY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Istio's `validateLocalities`: `region[/zone[/subzone]]`, no empty part, at most one
/// `*` and only at the end, and no locality covered by an earlier one.
fn localities<'a>(list: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks "all of them".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for loc in list {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality `{loc}`: at most one `*` wildcard, and only at the end"
            ));
        }
        let overlap = || Err(format!("locality `{loc}` overlaps one given before"));
        if seen.contains_key("*") {
            return overlap();
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality `{loc}` has an empty region, zone or subzone"
            ));
        }
        match parts[..] {
            [region] => {
                if seen.contains_key(region) {
                    return overlap();
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return overlap();
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return overlap();
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || !subzones.insert(subzone) {
                    return overlap();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn load_balancer(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    lb: &LoadBalancerSettings,
    outlier_detection: bool,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("consistentHash"),
            "`simple` and `consistentHash` cannot both be set",
        );
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        ctx.deprecated(
            &path.key("simple"),
            "`LEAST_CONN` is deprecated: use `LEAST_REQUEST`",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = path.key("consistentHash");
        let keys = [
            ("httpHeaderName", ch.http_header_name.is_some()),
            ("httpCookie", ch.http_cookie.is_some()),
            ("useSourceIp", ch.use_source_ip == Some(true)),
            (
                "httpQueryParameterName",
                ch.http_query_parameter_name.is_some(),
            ),
        ];
        let set: Vec<&str> = keys.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        match set.as_slice() {
            [] => ctx.report(
                Code::MissingField,
                &p,
                "consistent hashing needs one of `httpHeaderName`, `httpCookie`, `useSourceIp` or `httpQueryParameterName`",
            ),
            [_] => {}
            [a, b, ..] => ctx.report(
                Code::ExclusiveFields,
                &p.key(*b),
                format!("`{a}` and `{b}` cannot both be set"),
            ),
        }
        if let Some(h) = &ch.http_header_name {
            ctx.header_name(&p.key("httpHeaderName"), h, false);
        }
        if let Some(c) = &ch.http_cookie {
            let cp = p.key("httpCookie");
            ctx.required_str(&cp.key("name"), &c.name, "cookie `name`");
            let mut names = BTreeSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let ap = cp.key("attributes").index(i).key("name");
                if a.name.is_empty() {
                    ctx.report(Code::MissingField, &ap, "a cookie attribute needs a `name`");
                } else if !names.insert(a.name.as_str()) {
                    ctx.report(
                        Code::DuplicateEntry,
                        &ap,
                        format!("cookie attribute `{}` is set twice", a.name),
                    );
                }
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &p.key("maglev"),
                "`ringHash` and `maglev` cannot both be set",
            );
        }
        if ch.minimum_ring_size.is_some() {
            ctx.deprecated(
                &p.key("minimumRingSize"),
                "`minimumRingSize` is deprecated: use `ringHash.minimumRingSize`",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                ctx.report(
                    Code::ExclusiveFields,
                    &p.key("minimumRingSize"),
                    "`minimumRingSize` cannot be used with `ringHash` or `maglev`",
                );
            }
        }
        if let Some(m) = ch.maglev {
            match m.table_size.unwrap_or(0) {
                0 => ctx.report(
                    Code::MissingField,
                    &p.key("maglev").key("tableSize"),
                    "maglev needs a `tableSize` (a prime number, e.g. 65537)",
                ),
                size if size >= MAX_MAGLEV_TABLE || !is_prime(size) => ctx.report(
                    Code::InvalidValue,
                    &p.key("maglev").key("tableSize"),
                    format!("maglev `tableSize` {size} must be a prime number below {MAX_MAGLEV_TABLE} (e.g. 65537)"),
                ),
                _ => {}
            }
        }
    }
    if let Some(w) = &lb.warmup {
        if w.duration.is_none() {
            ctx.report(
                Code::MissingField,
                &path.key("warmup").key("duration"),
                "`warmup` needs a `duration`",
            );
        }
        if lb.warmup_duration_secs.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("warmup"),
                "`warmupDurationSecs` and `warmup` cannot both be set",
            );
        }
        // Istio's schema (at least 0) and webhook (at most 100; aggression above 0).
        if let Some(m) = w.minimum_percent
            && !(0.0..=100.0).contains(&m)
        {
            ctx.report(
                Code::PercentageRange,
                &path.key("warmup").key("minimumPercent"),
                format!("`minimumPercent` {m} must be between 0 and 100"),
            );
        }
        if let Some(a) = w.aggression
            && (a.is_nan() || a <= 0.0)
        {
            ctx.report(
                Code::InvalidValue,
                &path.key("warmup").key("aggression"),
                format!("`aggression` {a} must be greater than 0"),
            );
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("zoneAwareLbSetting"),
            "`localityLbSetting` and `zoneAwareLbSetting` cannot both be set",
        );
    }
    if lb.backend_utilization.is_some() && (lb.simple.is_some() || lb.consistent_hash.is_some()) {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("backendUtilization"),
            "`backendUtilization` cannot be combined with `simple` or `consistentHash`",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(ctx, &path.key("localityLbSetting"), l, outlier_detection);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        let zp = path.key("zoneAwareLbSetting");
        for (i, label) in z.failover_priority.iter().enumerate() {
            if TOPOLOGY_LOCALITY_LABELS.contains(&label.as_str()) {
                ctx.report(
                    Code::InvalidValue,
                    &zp.key("failoverPriority").index(i),
                    format!("zone-aware load balancing orders regions, zones and subzones itself: `{label}` cannot be a `failoverPriority` label"),
                );
            }
        }
        failover(
            ctx,
            &zp,
            &z.failover,
            &z.failover_priority,
            outlier_detection,
        );
    }
}

/// Istio's bound on Maglev tables (exclusive).
const MAX_MAGLEV_TABLE: u64 = 5_000_011;

pub(super) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

fn connection_pool(ctx: &mut Ctx<'_>, path: &FieldPath, pool: &ConnectionPoolSettings) {
    // Istio's webhook and the CRD's `minProperties: 1`.
    if pool.tcp.is_none() && pool.http.is_none() {
        ctx.report(
            Code::InvalidValue,
            path,
            "`connectionPool` needs at least one of `tcp` and `http` (remove it or set one)",
        );
    }
    if let Some(tcp) = &pool.tcp {
        let p = path.key("tcp");
        non_negative(ctx, &p.key("maxConnections"), tcp.max_connections);
        ctx.duration_ms(&p.key("connectTimeout"), tcp.connect_timeout);
        ctx.duration_ms(&p.key("maxConnectionDuration"), tcp.max_connection_duration);
        // `0s` turns the idle timeout off (Istio skips its check).
        if tcp.idle_timeout.is_some_and(|d| d.get().as_millis() != 0) {
            ctx.duration_ms(&p.key("idleTimeout"), tcp.idle_timeout);
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            let kp = p.key("tcpKeepalive");
            ctx.duration_ms(&kp.key("time"), ka.time);
            ctx.duration_ms(&kp.key("interval"), ka.interval);
        }
    }
    if let Some(http) = &pool.http {
        let p = path.key("http");
        for (name, v) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            non_negative(ctx, &p.key(name), v);
        }
        ctx.duration_ms(&p.key("idleTimeout"), http.idle_timeout);
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            ctx.report(
                Code::ExclusiveFields,
                &p.key("useClientProtocol"),
                "`useClientProtocol: true` contradicts `h2UpgradePolicy: UPGRADE`",
            );
        }
        if let Some(ka) = &http.http2_keep_alive {
            let kp = p.key("http2KeepAlive");
            for (name, d) in [("interval", ka.interval), ("timeout", ka.timeout)] {
                if d.is_none() {
                    ctx.report(
                        Code::MissingField,
                        &kp.key(name),
                        format!("`http2KeepAlive` needs an `{name}`"),
                    );
                }
                ctx.duration_ms(&kp.key(name), d);
            }
        }
    }
}

fn non_negative(ctx: &mut Ctx<'_>, path: &FieldPath, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        ctx.report(Code::InvalidValue, path, format!("{v} is negative"));
    }
}

fn outlier_detection(ctx: &mut Ctx<'_>, path: &FieldPath, od: &OutlierDetection) {
    if od.consecutive_errors.is_some() {
        ctx.deprecated(
            &path.key("consecutiveErrors"),
            "`consecutiveErrors` is deprecated: use `consecutive5xxErrors` or `consecutiveGatewayErrors`",
        );
    }
    non_negative(ctx, &path.key("consecutiveErrors"), od.consecutive_errors);
    if od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
        && od.split_external_local_origin_errors != Some(true)
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    ctx.duration_ms(&path.key("interval"), od.interval);
    ctx.duration_ms(&path.key("baseEjectionTime"), od.base_ejection_time);
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v {
            ctx.percent(&path.key(name), f64::from(v));
        }
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            ctx.report(
                Code::HttpStatusRange,
                &path.key("outlierDetectionHttpErrorCodes").index(i),
                format!("HTTP status {code} is outside 100-599"),
            );
        }
    }
}

/// Istio's `ValidateTLS`, and what the mesh does with each mode.
///
/// Istio's rules: with `insecureSkipVerify`, SIMPLE takes no `caCertificates`,
/// `credentialName` or `subjectAltNames`, MUTUAL no `caCertificates` or `subjectAltNames`;
/// with SIMPLE or MUTUAL a `credentialName` replaces the files (and the CRL), and MUTUAL
/// needs a client certificate and key unless a credential name provides them; a
/// `configmap://` credential names a config map of the rule's own namespace. A field is
/// empty when Istio reads it as unset (`""`).
///
/// The mesh enforces every mode: DISABLE, ISTIO_MUTUAL (the mesh's certificates; `sni`
/// and `subjectAltNames` honoured; the files, secrets and CRL it ignores, as Istio does,
/// are warned about) and SIMPLE and MUTUAL (TLS origination with the certificate files,
/// the system's roots without `caCertificates`, `sni`, `subjectAltNames` and
/// `insecureSkipVerify`). The secrets and the CRL SIMPLE and MUTUAL would use are not
/// read: a `MESH0120` warning.
fn client_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    let credential = written(&tls.credential_name);
    if let Some(name) = &tls.credential_name
        && let Some(rest) = name.strip_prefix(CONFIGMAP_PREFIX)
    {
        configmap_credential(ctx, &path.key("credentialName"), name, rest);
    }
    if tls.insecure_skip_verify == Some(true) {
        let clash = match mode {
            ClientTlsMode::Simple => {
                (written(&tls.ca_certificates) || credential || !tls.subject_alt_names.is_empty())
                    .then_some("`caCertificates`, `credentialName` or `subjectAltNames`")
            }
            ClientTlsMode::Mutual => (written(&tls.ca_certificates)
                || !tls.subject_alt_names.is_empty())
            .then_some("`caCertificates` or `subjectAltNames`"),
            _ => None,
        };
        if let Some(fields) = clash {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("insecureSkipVerify"),
                format!(
                    "`insecureSkipVerify: true` cannot be combined with {fields} in {} mode",
                    mode_name(mode)
                ),
            );
        }
    }
    match mode {
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            if credential {
                if written(&tls.client_certificate)
                    || written(&tls.private_key)
                    || written(&tls.ca_certificates)
                    || written(&tls.ca_crl)
                {
                    ctx.report(
                        Code::ExclusiveFields,
                        &path.key("credentialName"),
                        "`credentialName` cannot be combined with `clientCertificate`, `privateKey`, `caCertificates` or `caCrl`",
                    );
                }
            } else if mode == ClientTlsMode::Mutual {
                if !written(&tls.client_certificate) {
                    ctx.report(
                        Code::MissingField,
                        &path.key("clientCertificate"),
                        "MUTUAL TLS needs `clientCertificate` (or `credentialName`)",
                    );
                }
                if !written(&tls.private_key) {
                    ctx.report(
                        Code::MissingField,
                        &path.key("privateKey"),
                        "MUTUAL TLS needs `privateKey` (or `credentialName`)",
                    );
                }
            }
            for (field, value, why) in [
                ("credentialName", &tls.credential_name, SECRETS_NOT_READ),
                (
                    "caCrl",
                    &tls.ca_crl,
                    "certificate revocation lists are not implemented",
                ),
            ] {
                if value.is_some() {
                    let p = path.key(field);
                    ctx.warn(
                        Code::NotEnforced,
                        &p,
                        format!("`{p}` is parsed but not enforced: {why}"),
                    );
                }
            }
        }
        ClientTlsMode::IstioMutual => {
            for (field, written) in [
                ("clientCertificate", tls.client_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("credentialName", tls.credential_name.is_some()),
                ("caCrl", tls.ca_crl.is_some()),
            ] {
                if written {
                    ctx.warn(
                        Code::InvalidValue,
                        &path.key(field),
                        format!("`{field}` is ignored with ISTIO_MUTUAL, as in Istio: the mesh's workload certificates and root certificate are used (only `sni` and `subjectAltNames` apply)"),
                    );
                }
            }
            if tls.insecure_skip_verify == Some(true) {
                // Istio keeps it (the server is then not verified); the mesh always
                // verifies the server's SPIFFE identity under ISTIO_MUTUAL.
                ctx.warn(
                    Code::InvalidValue,
                    &path.key("insecureSkipVerify"),
                    "`insecureSkipVerify` is ignored with ISTIO_MUTUAL here (Istio would skip verifying the server): the mesh always verifies the server's identity".to_string(),
                );
            }
        }
        ClientTlsMode::Disable => {}
    }
}

/// Why a Kubernetes secret name is not enforced.
const SECRETS_NOT_READ: &str =
    "Kubernetes secrets are not read (there is no cluster; use certificate files)";

/// Istio's prefix of a credential held by a config map (`configmap://namespace/name`).
const CONFIGMAP_PREFIX: &str = "configmap://";

fn mode_name(mode: ClientTlsMode) -> &'static str {
    match mode {
        ClientTlsMode::Disable => "DISABLE",
        ClientTlsMode::Simple => "SIMPLE",
        ClientTlsMode::Mutual => "MUTUAL",
        ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
    }
}

/// Istio's check of a `configmap://namespace/name` credential (`ParseResourceName`): a
/// namespace and a name, the namespace the rule's own.
fn configmap_credential(ctx: &mut Ctx<'_>, path: &FieldPath, name: &str, rest: &str) {
    let mut parts = rest.split('/');
    let (ns, cm) = (parts.next().unwrap_or(""), parts.next());
    let problem = match cm {
        None => Some("expected `configmap://<namespace>/<name>`".to_string()),
        Some(_) if ns.is_empty() => Some("the namespace is empty".to_string()),
        Some("") => Some("the name is empty".to_string()),
        Some(_) if ns != ctx.reference.namespace => Some(format!(
            "the namespace must be the rule's own, `{}`",
            ctx.reference.namespace
        )),
        Some(_) => None,
    };
    if let Some(p) = problem {
        ctx.report(
            Code::InvalidValue,
            path,
            format!("invalid `configmap://` credential `{name}`: {p}"),
        );
    }
}
