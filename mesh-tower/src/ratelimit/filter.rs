//! Envoy's global rate limit filter (`envoy.filters.http.ratelimit`) on a request, as
//! the inbound layer and the gateway run it: the descriptors each global filter of the
//! workload makes of the request (mesh-core's
//! [`GlobalRateLimit::descriptors`](mesh_core::ratelimit::GlobalRateLimit::descriptors)),
//! then one check per filter that made any against the runtime's limiter
//! ([`MeshRuntime::set_rate_limit_service`]).
//!
//! The answers are Envoy's: over the limit, the filter's `rate_limited_status` (`429`)
//! with an empty body, `x-envoy-ratelimited: true` (unless disabled), its
//! `response_headers_to_add` and the response flag `RL`; a gRPC caller gets
//! `grpc-status` UNAVAILABLE (RESOURCE_EXHAUSTED when configured). The limiter failing
//! (Redis down or slow past the filter's `timeout`, or no limiter set) lets the request
//! through — Envoy's default — or, with `failure_mode_deny`, answers `status_on_error`
//! (`500`) with the flag `RLSE`. With `enable_x_ratelimit_headers: DRAFT_VERSION_03`
//! the response carries `x-ratelimit-limit`, `-remaining` and `-reset` as Envoy writes
//! them for the service's answer.
//!
//! Like Istio's task, which inserts the filter just before the router, the check runs
//! after authentication and authorization (a refused request does not count) and only
//! for requests that are forwarded: a redirect or a direct response has no route entry,
//! and Envoy's filter skips it.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use mesh_core::WorkloadView;
use mesh_core::ratelimit::GlobalRateLimit;
use smallvec::SmallVec;

use super::global::{Descriptor, DescriptorStatus, GlobalError, Verdict};
use super::local::{RequestInfo, local_reply, with_descriptor_request};
use crate::MeshRuntime;
use crate::flags::ResponseFlags;

static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");

/// The global rate limit checks one request needs: for each filter of the workload that
/// made descriptors of it, those descriptors.
pub(crate) struct GlobalChecks {
    view: Arc<WorkloadView>,
    checks: SmallVec<[(usize, Vec<Descriptor>); 1]>,
    grpc: bool,
}

impl GlobalChecks {
    /// The checks `req` on `info`'s route needs under `view`'s global filters; `None`
    /// when no filter made a descriptor (the limiter is not asked).
    pub(crate) fn plan<B>(
        view: &Arc<WorkloadView>,
        info: &RequestInfo<'_>,
        req: &Request<B>,
    ) -> Option<Self> {
        let limits = view.rate_limits();
        let globals = limits.global();
        if globals.is_empty() {
            return None;
        }
        let checks: SmallVec<[(usize, Vec<Descriptor>); 1]> =
            with_descriptor_request(limits, info, req, |desc| {
                globals
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| {
                        let made = g.descriptors(&info.route, desc);
                        (!made.is_empty())
                            .then(|| (i, made.into_iter().map(Descriptor::from).collect()))
                    })
                    .collect()
            });
        if checks.is_empty() {
            return None;
        }
        Some(GlobalChecks {
            view: view.clone(),
            checks,
            grpc: crate::inbound::is_grpc(req.headers()),
        })
    }

    /// Asks `runtime`'s limiter, filter after filter: `Ok` with the `x-ratelimit-*`
    /// headers for the response (when a filter asks for them), `Err` with the refusal.
    pub(crate) async fn run(self, runtime: &MeshRuntime) -> Result<QuotaHeaders, Response<Bytes>> {
        let limiter = runtime.rate_limit_service();
        if limiter.is_none() && runtime.first_missing_rate_limit_service() {
            tracing::warn!(
                "a global rate limit filter applies to a request but no rate limit service is set (MeshRuntime::set_rate_limit_service): treated as a failed service"
            );
        }
        let globals = self.view.rate_limits().global();
        let mut headers = QuotaHeaders::default();
        for (i, descriptors) in &self.checks {
            let Some(g) = globals.get(*i) else { continue };
            let verdict = match &limiter {
                Some(l) => {
                    l.should_rate_limit_within(&g.domain, descriptors, 0, g.timeout)
                        .await
                }
                None => Verdict::Error(GlobalError::Unavailable),
            };
            match verdict {
                Verdict::Ok { statuses } => {
                    if g.x_ratelimit_headers {
                        headers = QuotaHeaders::of(&statuses);
                    }
                }
                Verdict::OverLimit { statuses } => {
                    tracing::debug!(key = %g.key, domain = %g.domain, "request_rate_limited");
                    return Err(over_limit(g, &statuses, self.grpc));
                }
                Verdict::Error(e) => {
                    if g.failure_mode_deny {
                        tracing::debug!(key = %g.key, error = %e, "rate_limiter_error: refused (failure_mode_deny)");
                        return Err(local_reply(
                            self.grpc,
                            g.status_on_error,
                            false,
                            "",
                            ResponseFlags::RATE_LIMIT_SERVICE_ERROR,
                        ));
                    }
                    tracing::trace!(key = %g.key, error = %e, "rate_limiter_error: allowed (failure mode)");
                }
            }
        }
        Ok(headers)
    }
}

/// Envoy's answer to a request over a global limit.
fn over_limit(g: &GlobalRateLimit, statuses: &[DescriptorStatus], grpc: bool) -> Response<Bytes> {
    let mut resp = local_reply(
        grpc,
        g.rate_limited_status,
        g.rate_limited_as_resource_exhausted,
        "",
        ResponseFlags::RATE_LIMITED,
    );
    let h = resp.headers_mut();
    if !g.disable_x_envoy_ratelimited_header {
        h.insert(
            X_ENVOY_RATELIMITED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    for add in &g.response_headers {
        add.apply(h);
    }
    if g.x_ratelimit_headers {
        QuotaHeaders::of(statuses).apply(h);
    }
    resp
}

/// The `x-ratelimit-*` headers of a global check (Envoy's `DRAFT_VERSION_03` for the
/// service's answer): from the descriptor with the fewest requests remaining, the limit
/// followed by every applied limit's quota policy (`10, 10;w=60, 1000;w=3600;name="x"`),
/// the requests remaining and the seconds until its window ends. Empty when no limit
/// applied or none was asked for.
#[derive(Debug, Default)]
pub(crate) struct QuotaHeaders(Option<(HeaderValue, u32, u64)>);

impl QuotaHeaders {
    fn of(statuses: &[DescriptorStatus]) -> Self {
        let mut policy = String::new();
        let mut min: Option<&DescriptorStatus> = None;
        for s in statuses {
            let Some(limit) = &s.current_limit else {
                continue;
            };
            if min.is_none_or(|m| s.limit_remaining < m.limit_remaining) {
                min = Some(s);
            }
            let _ = write!(
                policy,
                ", {};w={}",
                limit.requests_per_unit,
                limit.unit.seconds()
            );
            if let Some(name) = limit.name.as_deref().filter(|n| !n.is_empty()) {
                let _ = write!(policy, ";name=\"{name}\"");
            }
        }
        let Some((m, limit)) = min.and_then(|m| Some((m, m.current_limit.as_ref()?))) else {
            return QuotaHeaders(None);
        };
        let value = format!("{}{policy}", limit.requests_per_unit);
        QuotaHeaders(HeaderValue::from_str(&value).ok().map(|v| {
            (
                v,
                m.limit_remaining,
                m.duration_until_reset.map_or(0, |d| d.as_secs()),
            )
        }))
    }

    /// Sets the headers on `headers` (none when empty).
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        if let Some((limit, remaining, reset)) = &self.0 {
            headers.insert(LIMIT.clone(), limit.clone());
            headers.insert(REMAINING.clone(), HeaderValue::from(*remaining));
            headers.insert(RESET.clone(), HeaderValue::from(*reset));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::global::{CurrentLimit, RateLimitUnit, StatusCode};

    fn status(
        code: StatusCode,
        rpu: u32,
        unit: RateLimitUnit,
        name: Option<&str>,
        remaining: u32,
        reset: u64,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: Some(CurrentLimit {
                requests_per_unit: rpu,
                unit,
                name: name.map(Arc::from),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration::from_secs(reset)),
        }
    }

    fn headers(statuses: &[DescriptorStatus]) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        QuotaHeaders::of(statuses).apply(&mut h);
        let mut out: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn quota_headers_follow_envoy_draft_03() {
        use RateLimitUnit::{Hour, Minute};
        let unlimited = DescriptorStatus {
            code: StatusCode::Ok,
            current_limit: None,
            limit_remaining: u32::MAX,
            duration_until_reset: None,
        };
        type Case = (Vec<DescriptorStatus>, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![], vec![]),
            (vec![unlimited.clone()], vec![]),
            (
                vec![status(StatusCode::Ok, 10, Minute, None, 7, 52)],
                vec![
                    ("x-ratelimit-limit", "10, 10;w=60"),
                    ("x-ratelimit-remaining", "7"),
                    ("x-ratelimit-reset", "52"),
                ],
            ),
            // The fewest remaining decides; every applied limit is listed, in order,
            // named when the configuration names it.
            (
                vec![
                    status(StatusCode::Ok, 1000, Hour, Some("hourly"), 900, 3000),
                    unlimited,
                    status(StatusCode::OverLimit, 1, Minute, None, 0, 12),
                ],
                vec![
                    (
                        "x-ratelimit-limit",
                        "1, 1000;w=3600;name=\"hourly\", 1;w=60",
                    ),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "12"),
                ],
            ),
        ];
        for (statuses, want) in cases {
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(headers(&statuses), want, "{statuses:?}");
        }
    }
}
