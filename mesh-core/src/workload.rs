//! Workloads and their views of a compiled mesh.
//!
//! A process hosts one or more workloads (Bookinfo runs six): each is an instance of a
//! service with the identity and labels Istio gives a pod. What applies to one workload
//! — the VirtualServices its namespace sees, the Gateways that select it, the mutual TLS
//! modes its PeerAuthentications set, the AuthorizationPolicies that apply to it, its
//! rate limits, and (next) telemetry settings — is picked once per configuration into a
//! [`WorkloadView`], so that a request only looks its own host up.

use std::sync::Arc;

use mesh_config::model::Labels;
use rand_core::Rng;

use crate::authz::Authorizer;
use crate::gateway::{Chain, GatewayRoutes};
use crate::matcher::{Caller, RequestHead};
use crate::mesh::{CompiledMesh, Decision, RouteError, VisibleHosts};
use crate::peer_auth::PeerAuthn;

/// A workload: one instance of a service, with the identity and labels Istio gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Name (`reviews-v2`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels (`app`, `version`, ...): VirtualService `sourceLabels` and Gateway
    /// selectors match on them.
    pub labels: Labels,
    /// Service account: the workload's identity.
    pub service_account: String,
}

impl Workload {
    /// A workload `name` in `namespace`, without labels, with the `default` account.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Workload {
            name: name.into(),
            namespace: namespace.into(),
            labels: Labels::new(),
            service_account: "default".into(),
        }
    }

    /// Sets its labels.
    pub fn labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets its service account.
    pub fn service_account(mut self, sa: impl Into<String>) -> Self {
        self.service_account = sa.into();
        self
    }

    /// Its SPIFFE identity in `trust_domain`:
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// What a workload is to the mesh, as Istio distinguishes a sidecar from a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// An application workload: its outbound requests are routed (the `mesh` gateway).
    #[default]
    Sidecar,
    /// A gateway workload: it also serves the Gateways that select it.
    Gateway,
}

/// What one workload sees of one compiled mesh (see the module documentation).
#[derive(Debug)]
pub struct WorkloadView {
    mesh: Arc<CompiledMesh>,
    workload: Arc<Workload>,
    identity: Arc<str>,
    source_key: Box<[u8]>,
    hosts: Arc<VisibleHosts>,
    gateway: Option<GatewayRoutes>,
    authz: Authorizer,
    peer_authn: PeerAuthn,
    request_authn: crate::authn::RequestAuthn,
    rate_limits: crate::ratelimit::RateLimits,
    telemetry: crate::telemetry::WorkloadTelemetry,
}

impl WorkloadView {
    /// Picks what applies to `workload` in `mesh`; a gateway workload also gets the
    /// virtual hosts of the Gateways that select it.
    pub fn compile(mesh: Arc<CompiledMesh>, workload: Arc<Workload>, role: Role) -> Self {
        let hosts = mesh.visible_hosts(&workload.namespace).clone();
        let gateway = match role {
            Role::Gateway => GatewayRoutes::build(&mesh, &workload.namespace, &workload.labels),
            Role::Sidecar => None,
        };
        let identity = workload.spiffe_id(&mesh.settings().trust_domain).into();
        let source_key = format!("{}.{}", workload.name, workload.namespace)
            .into_bytes()
            .into_boxed_slice();
        let authz = Authorizer::for_workload(
            mesh.authorization_policies(),
            &mesh.settings().root_namespace,
            &workload.namespace,
            &workload.labels,
        );
        let peer_authn = mesh.peer_authn(&workload.namespace, &workload.labels);
        let request_authn = crate::authn::RequestAuthn::for_workload(
            mesh.request_authentications(),
            &mesh.settings().root_namespace,
            &workload.namespace,
            &workload.labels,
        );
        let rate_limits = crate::ratelimit::RateLimits::for_workload(
            mesh.rate_limit_sources(),
            mesh.registry(),
            &workload,
            role,
        );
        let telemetry = crate::telemetry::WorkloadTelemetry::of(&mesh, &workload);
        WorkloadView {
            telemetry,
            rate_limits,
            authz,
            peer_authn,
            request_authn,
            mesh,
            workload,
            identity,
            source_key,
            hosts,
            gateway,
        }
    }

    /// The compiled mesh it is a view of.
    pub fn mesh(&self) -> &Arc<CompiledMesh> {
        &self.mesh
    }

    /// The workload.
    pub fn workload(&self) -> &Arc<Workload> {
        &self.workload
    }

    /// Its SPIFFE identity in the mesh's trust domain.
    pub fn identity(&self) -> &Arc<str> {
        &self.identity
    }

    /// What `consistentHash.useSourceIp` hashes for the workload's requests: in-process
    /// there is no client address, so all requests of one workload share a key
    /// (`name.namespace`).
    pub fn source_key(&self) -> &[u8] {
        &self.source_key
    }

    /// The workload as the caller of its outbound requests.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            namespace: &self.workload.namespace,
            labels: &self.workload.labels,
            gateway: None,
        }
    }

    /// What its metrics say of it and the services it serves.
    pub fn telemetry(&self) -> &crate::telemetry::WorkloadTelemetry {
        &self.telemetry
    }

    /// The AuthorizationPolicies that apply to requests arriving at the workload.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authz
    }

    /// The JWT rules of the RequestAuthentications that select it.
    pub fn request_authn(&self) -> &crate::authn::RequestAuthn {
        &self.request_authn
    }

    /// The mutual TLS modes its server side enforces, per port (its PeerAuthentications,
    /// composed as Istio composes them).
    pub fn peer_authn(&self) -> &PeerAuthn {
        &self.peer_authn
    }

    /// The rate limits of requests arriving at it (its EnvoyFilters' rate limit filters
    /// and its LocalRateLimitPolicies).
    pub fn rate_limits(&self) -> &crate::ratelimit::RateLimits {
        &self.rate_limits
    }

    /// Its routes as a gateway workload, when it is one and Gateways select it.
    pub fn gateway(&self) -> Option<&GatewayRoutes> {
        self.gateway.as_ref()
    }

    /// Routes an outbound request of the workload (workload traffic, Istio's `mesh`
    /// gateway).
    pub fn route(
        &self,
        head: &RequestHead<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'_>, RouteError> {
        self.mesh.route_in(&self.hosts, head, &self.caller(), rng)
    }

    /// Routes a request that arrived at the workload as a gateway, on Gateway server port
    /// `head.port`, over the TLS filter chain `chain` or in plaintext (see
    /// [`GatewayRoutes::route`]). A workload no Gateway selects serves no virtual host.
    pub fn route_at_gateway(
        &self,
        chain: Option<&Chain>,
        head: &RequestHead<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'_>, RouteError> {
        let gateway = self.gateway.as_ref().ok_or(RouteError::NoVirtualHost)?;
        gateway.route(
            &self.mesh,
            chain,
            head,
            &self.workload.namespace,
            &self.workload.labels,
            rng,
        )
    }
}
