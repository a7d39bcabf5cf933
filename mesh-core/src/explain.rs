//! Explaining a routing decision without a network, like Envoy's router check tool.
//!
//! [`explain`] runs the same routing the runtime runs — [`WorkloadView::route`] for
//! workload traffic, [`WorkloadView::route_at_gateway`] for a request arriving through a
//! gateway — and describes its result as plain data: the VirtualService and rule (with `file:line`), the full
//! weighted set of destinations of the matched rule (hosts qualified, ports resolved
//! from the caller's namespace, as the runtime resolves them), and the rule's timeout,
//! retries, fault, redirect or direct response.

use mesh_config::registry::Service;
use rand_core::Rng;

use crate::fault::AbortWith;
use crate::gateway::Chain;
use crate::matcher::RequestHead;
use crate::mesh::{Outcome, RouteError};
use crate::route::{Action, Rule};
use crate::workload::WorkloadView;

/// One destination of the matched rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedDestination {
    /// Fully qualified host.
    pub host: String,
    /// Subset, if any.
    pub subset: Option<String>,
    /// Port the request goes to (the destination's, the service's only port, or the
    /// request's).
    pub port: u16,
    /// Share of the rule's traffic, in percent of the written weights (100 for a single
    /// destination).
    pub weight: u32,
}

/// Retries in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedRetries {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Per-try timeout in milliseconds.
    pub per_try_timeout_ms: Option<u64>,
    /// Conditions (names and status codes).
    pub retry_on: Vec<String>,
}

/// Fault injection in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedFault {
    /// Delay in milliseconds.
    pub delay_ms: Option<u64>,
    /// Share of requests delayed, in percent.
    pub delay_percent: Option<f64>,
    /// Status of an abort (HTTP status, or gRPC status for gRPC aborts).
    pub abort_status: Option<u32>,
    /// Share of requests aborted, in percent.
    pub abort_percent: Option<f64>,
}

/// What the mesh does with a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The host the authority resolved to; at a gateway, the domain of the virtual host
    /// that answered.
    pub host: String,
    /// At a gateway: the Gateway (`namespace/name`) whose server the matched rule was
    /// reached through.
    pub gateway: Option<String>,
    /// `namespace/name` of the VirtualService, if one applied.
    pub virtual_service: Option<String>,
    /// `file:line` of the matched rule, if any.
    pub rule: Option<String>,
    /// The rule's index in `spec.http`, if any.
    pub rule_index: Option<usize>,
    /// Destinations (empty for redirects and direct responses).
    pub destinations: Vec<ExplainedDestination>,
    /// Route timeout in milliseconds (None: disabled).
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retries: ExplainedRetries,
    /// Fault injection.
    pub fault: Option<ExplainedFault>,
    /// Redirect: status and location.
    pub redirect: Option<(u16, String)>,
    /// Direct response: status and body.
    pub direct_response: Option<(u16, String)>,
    /// Why the request cannot be routed, if it cannot.
    pub error: Option<String>,
}

/// How a request reaches the workload whose routing is explained.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// An outbound request of the workload (workload traffic).
    Mesh,
    /// A request arriving at the workload as a gateway.
    Gateway {
        /// The TLS filter chain of its connection, or `None` in plaintext.
        chain: Option<&'a Chain>,
        /// The authority as the client sent it (`require_tls` redirects to it).
        authority: &'a str,
    },
}

/// Explains how `view`'s workload routes `head`, arriving `via`.
pub fn explain(
    view: &WorkloadView,
    head: &RequestHead<'_>,
    via: Via<'_>,
    rng: &mut dyn Rng,
) -> Explanation {
    let mesh = view.mesh();
    let from = &view.workload().namespace;
    let retry = |p: &crate::retry::Retries| ExplainedRetries {
        attempts: p.attempts,
        per_try_timeout_ms: p.per_try_timeout.map(|d| d.as_millis() as u64),
        retry_on: p
            .retry_on
            .names()
            .into_iter()
            .map(String::from)
            .chain(p.retriable_status_codes.iter().map(|c| c.to_string()))
            .collect(),
    };
    let mut e = Explanation {
        host: String::new(),
        gateway: None,
        virtual_service: None,
        rule: None,
        rule_index: None,
        destinations: Vec::new(),
        timeout_ms: None,
        retries: retry(mesh.default_retry()),
        fault: None,
        redirect: None,
        direct_response: None,
        error: None,
    };
    let routed = match via {
        Via::Mesh => view.route(head, rng),
        Via::Gateway { chain, .. } => view.route_at_gateway(chain, head, rng),
    };
    let d = match routed {
        Ok(d) => d,
        Err(err) => {
            e.error = Some(match err {
                RouteError::NoRouteMatched => "no rule matched: 404 (route not found)".into(),
                RouteError::NoVirtualHost => {
                    "no virtual host of the gateway serves the host: 404".into()
                }
                other => other.to_string(),
            });
            return e;
        }
    };
    e.host = d.host.to_string();
    e.gateway = d.gateway.map(|g| g.to_string());
    e.virtual_service = d.virtual_service.map(|v| v.name.to_string());
    // The service is the one the runtime resolves, from the caller's namespace.
    let resolve_port = |host: &str, dest_port: Option<u16>| -> u16 {
        match mesh.service(host, from) {
            Some(svc) => port_of(svc, dest_port, head.port),
            None => dest_port.unwrap_or(head.port),
        }
    };
    match d.rule {
        None => {
            // The default route goes to the request's port, as the runtime's does.
            e.destinations.push(ExplainedDestination {
                host: d.host.to_string(),
                subset: None,
                port: resolve_port(&d.host, Some(d.port)),
                weight: 100,
            });
        }
        Some((i, rule)) => {
            e.rule = Some(rule.origin.location());
            e.rule_index = Some(i);
            describe_rule(&mut e, rule, &resolve_port);
            e.retries = retry(&rule.retry);
        }
    }
    match d.outcome {
        Outcome::Redirect(r) => {
            let matched_uri = d.block.and_then(|(_, b)| b.uri());
            e.redirect = Some((r.status, r.location(head, matched_uri)));
        }
        Outcome::Direct(dr) => {
            e.direct_response = Some((dr.status, String::from_utf8_lossy(&dr.body).into_owned()))
        }
        Outcome::RequireTls => {
            e.destinations.clear();
            let authority = match via {
                Via::Gateway { authority, .. } => authority,
                Via::Mesh => head.authority,
            };
            e.redirect = Some((
                301,
                crate::gateway::require_tls_location(authority, head.path, head.query),
            ));
        }
        Outcome::Forward { .. } => {}
    }
    e
}

fn port_of(svc: &Service, dest_port: Option<u16>, req_port: u16) -> u16 {
    match dest_port {
        Some(p) => p,
        None if svc.ports.len() == 1 => svc.ports[0].number as u16,
        None => req_port,
    }
}

fn describe_rule(
    e: &mut Explanation,
    rule: &Rule,
    resolve_port: &dyn Fn(&str, Option<u16>) -> u16,
) {
    e.timeout_ms = rule.timeout.map(|t| t.as_millis() as u64);
    if let Action::Route(split) = &rule.action {
        let single = split.targets.len() == 1;
        for t in &split.targets {
            e.destinations.push(ExplainedDestination {
                host: t.host.to_string(),
                subset: t.subset.as_deref().map(String::from),
                port: resolve_port(&t.host, t.port),
                weight: if single { 100 } else { t.weight.unwrap_or(0) },
            });
        }
    }
    if let Some(f) = &rule.fault {
        e.fault = Some(ExplainedFault {
            delay_ms: f.delay.map(|(d, _)| d.as_millis() as u64),
            delay_percent: f.delay.map(|(_, p)| p.percent()),
            abort_status: f.abort.map(|(a, _)| match a {
                AbortWith::Http(s) => u32::from(s),
                AbortWith::Grpc(c) => c,
            }),
            abort_percent: f.abort.map(|(_, p)| p.percent()),
        });
    }
}
