//! What the route stage hands down: the request and its route, typed.
//!
//! A [`Route`] is the decision the route stage (or the ingress gateway) made for one
//! request, kept as indices into the configuration it was made with, which the route
//! holds alive: every layer below reads its parameters — timeout, retries, fault,
//! mirrors, rewrites, header operations, CORS, the cluster and its endpoints — from it
//! without looking anything up again, and a configuration swapped in meanwhile does not
//! affect the request.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use http::Request;
use mesh_config::model::Resolution;
use mesh_core::balance::LbAlgorithm;
use mesh_core::cluster::Cluster;
use mesh_core::fault::FaultInjection;
use mesh_core::matcher::MatchBlock;
use mesh_core::mesh::VirtualServiceRules;
use mesh_core::retry::Retries;
use mesh_core::route::{Cors, Mirror, Rule, Target};
use mesh_core::{CompiledMesh, Decision, Outcome, Upstream, WorkloadView};

use crate::ReqBody;
use crate::runtime::Generation;
use crate::state::{ClusterState, EndpointState};

/// A request and its route: what the layers below the route stage take. One allocation
/// per request, so that each layer passes a pointer instead of moving a few hundred bytes
/// (it reads as the [`RoutedParts`] it holds).
#[derive(Debug)]
pub struct Routed(Box<RoutedParts>);

/// The parts of a [`Routed`] request.
#[derive(Debug)]
pub struct RoutedParts {
    /// The request.
    pub request: Request<ReqBody>,
    /// Where it goes and how.
    pub route: Route,
}

impl Routed {
    /// `request` with its `route`.
    pub fn new(request: Request<ReqBody>, route: Route) -> Self {
        Routed(Box::new(RoutedParts { request, route }))
    }

    /// The request and its route.
    pub fn into_parts(self) -> RoutedParts {
        *self.0
    }
}

impl std::ops::Deref for Routed {
    type Target = RoutedParts;

    fn deref(&self) -> &RoutedParts {
        &self.0
    }
}

impl std::ops::DerefMut for Routed {
    fn deref_mut(&mut self) -> &mut RoutedParts {
        &mut self.0
    }
}

/// The matched rule, by position.
#[derive(Debug, Clone, Copy)]
struct RuleAt {
    virtual_service: u32,
    rule: u32,
    block: Option<u32>,
    target: Option<u32>,
}

/// Where a routed request goes.
#[derive(Debug, Clone)]
enum Dest {
    Cluster(u32),
    /// A cluster whose endpoint is the address the caller asked for (PASSTHROUGH
    /// balancing, resolution NONE: Envoy's original destination), as it was routed,
    /// before any rewrite.
    OriginalDst {
        cluster: u32,
        host: Arc<str>,
        port: u16,
    },
    Passthrough {
        host: Arc<str>,
        port: u16,
    },
    Missing {
        host: Arc<str>,
        subset: Option<Arc<str>>,
    },
}

/// Endpoints tried by earlier attempts of a request, which the balancer avoids when the
/// route's retries ask for it (Istio's `retryIgnorePreviousHosts`). Inline: the last
/// [`Tried::MAX`] are remembered.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tried {
    ids: [u32; Tried::MAX],
    len: u8,
    next: u8,
}

impl Tried {
    /// How many endpoints are remembered.
    pub(crate) const MAX: usize = 8;

    pub(crate) fn push(&mut self, i: u32) {
        if let Some(slot) = self.ids.get_mut(usize::from(self.next)) {
            *slot = i;
        }
        self.next = (self.next + 1) % Self::MAX as u8;
        self.len = (self.len + 1).min(Self::MAX as u8);
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.ids[..usize::from(self.len)].contains(&i)
    }
}

/// One request's route (see the module documentation). Cheap to clone: one reference
/// count.
#[derive(Debug, Clone)]
pub struct Route {
    generation: Arc<Generation>,
    slot: u32,
    rule: Option<RuleAt>,
    dest: Dest,
    port: u16,
    pub(crate) tried: Tried,
    /// Where the balancer records the endpoint an attempt went to, when the retries need
    /// to know it without a response (an attempt its per-try timeout cut).
    pub(crate) picked: Option<Arc<AtomicU32>>,
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl Route {
    /// The route of a request for `authority` (as routed) forwarded as `decision` says,
    /// made for the workload in `slot` with `generation`; `None` for decisions that
    /// answer rather than forward.
    pub(crate) fn forward(
        generation: Arc<Generation>,
        slot: u32,
        decision: &Decision<'_>,
        authority: &str,
    ) -> Option<Route> {
        let Outcome::Forward { target, upstream } = &decision.outcome else {
            return None;
        };
        let rule = match (decision.virtual_service, decision.rule) {
            (Some(vs), Some((ri, _))) => Some(RuleAt {
                virtual_service: vs.position,
                rule: index(ri),
                block: decision.block.map(|(b, _)| index(b)),
                target: target.map(|(t, _)| index(t)),
            }),
            _ => None,
        };
        let dest = match upstream {
            Upstream::Cluster(c)
                if c.lb == LbAlgorithm::Passthrough || c.service.resolution == Resolution::None =>
            {
                let (host, port) = mesh_core::route::split_authority(authority);
                Dest::OriginalDst {
                    cluster: c.id,
                    host: host.into(),
                    port: port.unwrap_or(decision.port),
                }
            }
            other => Dest::of(other),
        };
        Some(Route {
            dest,
            generation,
            slot,
            rule,
            port: decision.port,
            tried: Tried::default(),
            picked: None,
        })
    }

    /// The same route to another upstream (a mirror's).
    pub(crate) fn to(&self, upstream: &Upstream<'_>) -> Route {
        Route {
            dest: Dest::of(upstream),
            ..self.clone()
        }
    }

    /// The configuration the request was routed with.
    pub fn mesh(&self) -> &Arc<CompiledMesh> {
        &self.generation.mesh
    }

    /// The view of the workload that sends the request.
    pub fn view(&self) -> Option<&Arc<WorkloadView>> {
        self.generation.view(self.slot)
    }

    /// The namespace of the workload that sends the request.
    pub fn namespace(&self) -> &str {
        self.view().map_or("", |v| &v.workload().namespace)
    }

    /// The port the request was addressed to (at a gateway, the Gateway server's).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The VirtualService that applied, if any.
    pub fn virtual_service(&self) -> Option<&Arc<VirtualServiceRules>> {
        let at = self.rule?;
        self.mesh()
            .virtual_services()
            .get(at.virtual_service as usize)
    }

    /// The rule that matched, if any.
    pub fn rule(&self) -> Option<&Rule> {
        let at = self.rule?;
        self.virtual_service()?.rules.get(at.rule as usize)
    }

    /// The match block that matched, if any.
    pub fn block(&self) -> Option<&MatchBlock> {
        self.rule()?.matches.get(self.rule?.block? as usize)
    }

    /// The destination drawn from the rule's split, if any.
    pub fn target(&self) -> Option<&Target> {
        match &self.rule()?.action {
            mesh_core::route::Action::Route(split) => {
                split.targets.get(self.rule?.target? as usize)
            }
            _ => None,
        }
    }

    /// The route timeout (None: none, Istio's default).
    pub fn timeout(&self) -> Option<Duration> {
        self.rule().and_then(|r| r.timeout)
    }

    /// The retries: the rule's, else the mesh's default.
    pub fn retries(&self) -> &Retries {
        match self.rule() {
            Some(r) => &r.retry,
            None => self.mesh().default_retry(),
        }
    }

    /// The rule's fault injection, if any.
    pub fn fault(&self) -> Option<&FaultInjection> {
        self.rule()?.fault.as_ref()
    }

    /// The rule's CORS policy, if any.
    pub fn cors(&self) -> Option<&Cors> {
        self.rule()?.cors.as_ref()
    }

    /// The rule's mirrors.
    pub fn mirrors(&self) -> &[Mirror] {
        self.rule().map_or(&[], |r| &r.mirrors)
    }

    /// Where the request goes.
    pub fn upstream(&self) -> Upstream<'_> {
        match &self.dest {
            Dest::Cluster(id) | Dest::OriginalDst { cluster: id, .. } => {
                match self.mesh().clusters().get(*id as usize) {
                    Some(c) => Upstream::Cluster(c),
                    None => Upstream::Missing {
                        host: self
                            .view()
                            .map_or_else(|| Arc::from(""), |v| v.identity().clone()),
                        subset: None,
                    },
                }
            }
            Dest::Passthrough { host, port } => Upstream::Passthrough {
                host: host.clone(),
                port: *port,
            },
            Dest::Missing { host, subset } => Upstream::Missing {
                host: host.clone(),
                subset: subset.clone(),
            },
        }
    }

    /// The cluster the request goes to, if it goes to one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self.dest {
            Dest::Cluster(id) | Dest::OriginalDst { cluster: id, .. } => {
                self.mesh().clusters().get(id as usize)
            }
            _ => None,
        }
    }

    /// For a cluster whose endpoint is the address the caller asked for (PASSTHROUGH
    /// balancing, resolution NONE), that address as routed.
    pub(crate) fn original_dst(&self) -> Option<(&Arc<str>, u16)> {
        match &self.dest {
            Dest::OriginalDst { host, port, .. } => Some((host, *port)),
            _ => None,
        }
    }

    /// The state of the cluster's endpoints, by endpoint index.
    pub(crate) fn endpoints(&self) -> &[Arc<EndpointState>] {
        match self.dest {
            Dest::Cluster(id) => self
                .generation
                .endpoints
                .get(id as usize)
                .map_or(&[], |e| &e[..]),
            _ => &[],
        }
    }

    /// The state of the cluster the route goes to, when it is one of the registry's.
    pub(crate) fn cluster_state(&self) -> Option<&Arc<ClusterState>> {
        match self.dest {
            Dest::Cluster(id) | Dest::OriginalDst { cluster: id, .. } => {
                self.generation.clusters.get(id as usize)
            }
            _ => None,
        }
    }

    /// The state of the passthrough destination `id` (`host:port`).
    pub(crate) fn passthrough(&self, id: &str) -> Arc<EndpointState> {
        self.generation.states.passthrough(id)
    }
}

impl Dest {
    fn of(upstream: &Upstream<'_>) -> Dest {
        match upstream {
            Upstream::Cluster(c) => Dest::Cluster(c.id),
            Upstream::Passthrough { host, port } => Dest::Passthrough {
                host: host.clone(),
                port: *port,
            },
            Upstream::Missing { host, subset } => Dest::Missing {
                host: host.clone(),
                subset: subset.clone(),
            },
        }
    }
}
