use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::super::Routed;
use crate::{BoxError, ResBody};

/// How many copies may be in flight at once by default; beyond it copies are dropped.
pub const DEFAULT_MAX_MIRRORS_IN_FLIGHT: usize = 1024;

/// How long a copy may take when its route has no timeout (Envoy bounds shadows by the
/// route timeout; without one, this bound keeps a hung mirror from holding a task and a
/// connection forever).
pub const MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Envoy's shadow authority: `-shadow` appended to the host, before any port.
pub fn shadow_authority(authority: &str) -> String {
    let (host, port) = mesh_core::route::split_authority(authority);
    match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{host}-shadow"),
    }
}

/// Sends copies of requests to the rule's mirrors (see the module documentation).
#[derive(Clone, Debug)]
pub struct MirrorLayer<D> {
    dispatch: D,
    slots: Arc<Semaphore>,
}

impl<D> MirrorLayer<D> {
    /// Copies are sent through `dispatch`, at most [`DEFAULT_MAX_MIRRORS_IN_FLIGHT`] at
    /// once.
    pub fn new(dispatch: D) -> Self {
        Self::with_slots(
            dispatch,
            Arc::new(Semaphore::new(DEFAULT_MAX_MIRRORS_IN_FLIGHT)),
        )
    }

    /// Copies are sent through `dispatch` while `slots` has a permit for them (a
    /// semaphore shared by the clients of a process bounds them all).
    pub fn with_slots(dispatch: D, slots: Arc<Semaphore>) -> Self {
        MirrorLayer { dispatch, slots }
    }
}

impl<S, D: Clone> Layer<S> for MirrorLayer<D> {
    type Service = Mirror<S, D>;

    fn layer(&self, inner: S) -> Mirror<S, D> {
        Mirror {
            inner,
            dispatch: self.dispatch.clone(),
            slots: self.slots.clone(),
        }
    }
}

/// See [`MirrorLayer`].
#[derive(Clone, Debug)]
pub struct Mirror<S, D> {
    inner: S,
    dispatch: D,
    slots: Arc<Semaphore>,
}

impl<S, D> Service<Routed> for Mirror<S, D>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError>,
    D: Service<Routed, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    D::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> S::Future {
        if routed.route.mirrors().is_empty() {
            return self.inner.call(routed);
        }
        let parts = &mut *routed;
        let mirrors = parts.route.mirrors();
        let timeout = parts
            .route
            .timeout()
            .unwrap_or(MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT);
        let mut rng = rand::rng();
        let mut copies = Vec::new();
        for m in mirrors {
            if !m.share.draw(&mut rng) {
                continue;
            }
            // A full pool of copies in flight: this one is dropped rather than queued.
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(mirror = %m.target.host, "mirror dropped: too many copies in flight");
                continue;
            };
            let req = &mut parts.request;
            req.body_mut().make_replayable();
            let Some(body) = req.body().try_clone_follower() else {
                break;
            };
            let t = &m.target;
            let Ok(upstream) = parts.route.mesh().upstream(
                &t.host,
                t.subset.as_deref(),
                t.port.unwrap_or(0),
                parts.route.port(),
                parts.route.namespace(),
            ) else {
                continue;
            };
            let authority = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("");
            let Ok(shadow) = HeaderValue::from_str(&shadow_authority(authority)) else {
                continue;
            };
            let mut copy = Request::new(body);
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            copy.headers_mut().insert(HOST, shadow);
            let route = parts.route.to(&upstream);
            copies.push((Routed::new(copy, route), permit));
        }
        for (copy, permit) in copies {
            let dispatch = self.dispatch.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // Fire and forget: the copy's response is read to its end (so its
                // connection can be reused) and dropped, all within the timeout.
                let _ = tokio::time::timeout(timeout, async move {
                    if let Ok(resp) = dispatch.oneshot(copy).await {
                        let _ = resp.into_body().collect().await;
                    }
                })
                .await;
            });
        }
        self.inner.call(routed)
    }
}
