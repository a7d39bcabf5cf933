//! A request's measurements on their way to [`Metrics`]: started when the request
//! arrives, completed by its response's head (status, flags) and body (bytes, a gRPC
//! status in trailers), recorded once when the body ends — or when it is dropped before
//! its end, flagged `DC` (the caller went away), as Envoy records a downstream reset.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Frame;
use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};

use super::metrics::{Labels, Metrics, Reporter, Sample, Security};
use crate::flags::ResponseFlags;

/// The size of headers as Envoy approximates it: names and values.
pub(crate) fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

/// The size of a request or response head and its declared body.
pub(crate) fn declared_bytes(headers: &HeaderMap, body_hint: Option<u64>) -> u64 {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    header_bytes(headers) + declared.or(body_hint).unwrap_or(0)
}

/// The `grpc-status` of headers or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The two ends of a request and how it is reported.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    pub(crate) reporter: Reporter,
    pub(crate) source: Arc<PeerLabels>,
    pub(crate) source_principal: bool,
    pub(crate) destination: Arc<PeerLabels>,
    pub(crate) destination_principal: bool,
    pub(crate) service: Arc<ServiceLabels>,
    pub(crate) security: Security,
    pub(crate) profile: Arc<MetricProfile>,
}

/// One request's measurements (see the module documentation).
#[derive(Debug)]
pub(crate) struct Meter {
    metrics: Arc<Metrics>,
    ends: Ends,
    grpc: bool,
    start: Instant,
    request_bytes: u64,
    response_bytes: u64,
    code: u16,
    grpc_status: Option<u16>,
    flags: ResponseFlags,
    recorded: bool,
}

impl Meter {
    /// A request that arrived at `start`, of `request_bytes`, with its response's head.
    pub(crate) fn new<B>(
        metrics: Arc<Metrics>,
        ends: Ends,
        grpc: bool,
        start: Instant,
        request_bytes: u64,
        resp: &Response<B>,
    ) -> Self {
        let grpc_status = if grpc {
            grpc_status(resp.headers())
        } else {
            None
        };
        Meter {
            metrics,
            ends,
            grpc,
            start,
            request_bytes,
            response_bytes: header_bytes(resp.headers()),
            code: resp.status().as_u16(),
            grpc_status,
            flags: ResponseFlags::of(resp),
            recorded: false,
        }
    }

    /// Counts a frame of the response body.
    pub(crate) fn frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.response_bytes += data.len() as u64;
        } else if let Some(trailers) = frame.trailers_ref() {
            self.response_bytes += header_bytes(trailers);
            if self.grpc
                && let Some(s) = grpc_status(trailers)
            {
                self.grpc_status = Some(s);
            }
        }
    }

    /// The response ended: records it.
    pub(crate) fn end(&mut self) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let e = &self.ends;
        let labels = Labels {
            reporter: e.reporter,
            source: &e.source,
            source_principal: e.source_principal,
            destination: &e.destination,
            destination_principal: e.destination_principal,
            service: &e.service,
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: self.flags,
            security: e.security,
            profile: &e.profile,
        };
        self.metrics.record(
            &labels,
            Sample {
                duration: self.start.elapsed(),
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
            },
        );
    }
}

impl Drop for Meter {
    /// Dropped before its body ended: the caller went away (`DC`).
    fn drop(&mut self) {
        if !self.recorded {
            self.flags |= ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
            self.end();
        }
    }
}

/// Labels nothing is known of, shared.
pub(crate) fn unknown_peer() -> &'static Arc<PeerLabels> {
    static UNKNOWN: std::sync::OnceLock<Arc<PeerLabels>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::new(PeerLabels::unknown()))
}

/// A service nothing is known of, shared.
pub(crate) fn unknown_service() -> &'static Arc<ServiceLabels> {
    static UNKNOWN: std::sync::OnceLock<Arc<ServiceLabels>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::new(ServiceLabels::unknown()))
}

/// Where a caller's request went, as far as its route says.
#[derive(Debug)]
pub(crate) enum Target {
    /// A cluster: its service, and the endpoint the answer names.
    Cluster(Arc<mesh_core::cluster::Cluster>),
    /// A service without endpoints to name (a host outside the registry, a missing
    /// cluster, no route).
    Service(Arc<ServiceLabels>),
}

/// What the caller's side knows of a request before its answer (`reporter="source"`).
#[derive(Debug)]
pub(crate) struct Outbound {
    metrics: Arc<Metrics>,
    profile: Arc<MetricProfile>,
    source: Arc<PeerLabels>,
    target: Target,
    start: Instant,
    request_bytes: u64,
    grpc: bool,
}

impl Outbound {
    /// A request of the workload `telemetry` describes, on its way to `target`; `None`
    /// when the workload reports nothing of the requests it sends.
    pub(crate) fn start<B: http_body::Body>(
        metrics: &Arc<Metrics>,
        telemetry: &mesh_core::telemetry::WorkloadTelemetry,
        target: Target,
        req: &http::Request<B>,
    ) -> Option<Self> {
        Some(Outbound {
            profile: telemetry.client_metrics.clone()?,
            metrics: metrics.clone(),
            source: telemetry.me.clone(),
            target,
            start: Instant::now(),
            request_bytes: declared_bytes(req.headers(), req.body().size_hint().exact()),
            grpc: crate::inbound::is_grpc(req.headers()),
        })
    }

    /// The ends of the request, once `endpoint` (its index in the cluster) answered,
    /// over the mesh's mutual TLS or not.
    fn ends(&self, endpoint: Option<u32>, mtls: bool) -> Ends {
        let (destination, service) = match &self.target {
            Target::Cluster(c) => (
                endpoint
                    .and_then(|i| c.endpoints.get(i as usize))
                    .map_or_else(|| unknown_peer().clone(), |e| e.peer.clone()),
                c.service_labels.clone(),
            ),
            Target::Service(s) => (unknown_peer().clone(), s.clone()),
        };
        Ends {
            reporter: Reporter::Source,
            source: self.source.clone(),
            source_principal: mtls,
            destination,
            destination_principal: mtls,
            service,
            security: Security::Unknown,
            profile: self.profile.clone(),
        }
    }

    /// The answer arrived: its body records the request when it ends.
    pub(crate) fn answered(self, resp: &mut Response<crate::ResBody>) {
        let ends = self.ends(resp.body().endpoint, resp.body().mtls);
        let meter = Meter::new(
            self.metrics,
            ends,
            self.grpc,
            self.start,
            self.request_bytes,
            resp,
        );
        resp.body_mut().meter(meter);
    }

    /// Its target, once routed.
    pub(crate) fn retarget(&mut self, target: Target) {
        self.target = target;
    }

    /// `resp`, metered (see [`answered`](Self::answered)).
    pub(crate) fn answer(self, mut resp: Response<crate::ResBody>) -> Response<crate::ResBody> {
        self.answered(&mut resp);
        resp
    }

    /// The caller gave up before the answer: recorded with no response (`0`) and `DC`.
    pub(crate) fn abandoned(self) {
        let ends = self.ends(None, false);
        let mut meter = Meter {
            metrics: self.metrics,
            ends,
            grpc: self.grpc,
            start: self.start,
            request_bytes: self.request_bytes,
            response_bytes: 0,
            code: 0,
            grpc_status: None,
            flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            recorded: false,
        };
        meter.end();
    }
}

pin_project_lite::pin_project! {
    /// A caller's response future that meters the request (see [`Outbound`]).
    pub struct Metered<F> {
        #[pin]
        fut: F,
        meter: Option<Outbound>,
    }

    impl<F> PinnedDrop for Metered<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(m) = this.project().meter.take() {
                m.abandoned();
            }
        }
    }
}

impl<F> Metered<F> {
    pub(crate) fn new(fut: F, meter: Option<Outbound>) -> Self {
        Metered { fut, meter }
    }
}

impl<F, E> std::future::Future for Metered<F>
where
    F: std::future::Future<Output = Result<Response<crate::ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.fut.poll(cx));
        if let Some(m) = this.meter.take() {
            match &mut out {
                Ok(resp) => m.answered(resp),
                // An error is no answer (the caller's client maps it).
                Err(_) => m.abandoned(),
            }
        }
        std::task::Poll::Ready(out)
    }
}

/// What the server's side knows of a request on its arrival (`reporter="destination"`).
#[derive(Debug)]
pub(crate) struct Arrival {
    metrics: Arc<Metrics>,
    ends: Ends,
    start: Instant,
    request_bytes: u64,
    grpc: bool,
}

impl Arrival {
    /// A request arriving at `mesh`'s workload; `None` when it has no view of the
    /// configuration.
    pub(crate) fn of<B>(mesh: &crate::Mesh, req: &http::Request<B>) -> Option<Arrival> {
        let generation = mesh.runtime().generation();
        let view = generation.view(mesh.slot())?;
        let telemetry = view.telemetry();
        let profile = telemetry.server_metrics.clone()?;
        let identity = req
            .extensions()
            .get::<crate::identity::PeerIdentity>()
            .map(|i| i.spiffe_id().as_str());
        let source = caller(&generation, req.headers(), identity);
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let service = telemetry
            .service_for(authority)
            .unwrap_or_else(|| unknown_service())
            .clone();
        Some(Arrival {
            metrics: mesh.runtime().metrics().clone(),
            ends: Ends {
                reporter: Reporter::Destination,
                source,
                source_principal: identity.is_some(),
                destination: telemetry.me.clone(),
                destination_principal: identity.is_some(),
                service,
                security: if identity.is_some() {
                    Security::MutualTls
                } else {
                    Security::None
                },
                profile,
            },
            start: Instant::now(),
            request_bytes: declared_bytes(req.headers(), None),
            grpc: crate::inbound::is_grpc(req.headers()),
        })
    }

    /// The meter of the request answered `resp`.
    pub(crate) fn meter<B>(self, resp: &Response<B>) -> Meter {
        Meter::new(
            self.metrics,
            self.ends,
            self.grpc,
            self.start,
            self.request_bytes,
            resp,
        )
    }
}

/// The caller a server names in its metrics: the workload its baggage names, when the
/// configuration (or the process) has it and — over mutual TLS, whose verified
/// `identity` is given — when that workload's principal is the connection's; a caller
/// known only by its identity is `unknown` but for its principal.
fn caller(
    generation: &crate::runtime::Generation,
    headers: &HeaderMap,
    identity: Option<&str>,
) -> Arc<PeerLabels> {
    let named = headers
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(mesh_core::telemetry::baggage_peer)
        .next_back()
        .and_then(|(name, namespace)| {
            generation.mesh.peers().get(name, namespace).or_else(|| {
                generation.views.iter().find_map(|v| {
                    let w = v.workload();
                    (w.name == name && w.namespace == namespace).then(|| &v.telemetry().me)
                })
            })
        });
    match (named, identity) {
        (Some(p), None) => p.clone(),
        (Some(p), Some(id)) if &*p.principal == id => p.clone(),
        (_, Some(id)) => Arc::new(PeerLabels::unknown_with_principal(id)),
        (None, None) => unknown_peer().clone(),
    }
}
