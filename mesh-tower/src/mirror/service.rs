use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::route::Routed;
use crate::{MeshService, ReqBody, Workload};

/// See [`MirrorLayer`](super::MirrorLayer).
#[derive(Clone, Debug)]
pub struct Mirror<S, D> {
    pub(super) inner: S,
    pub(super) dispatch: D,
    pub(super) workload: Arc<Workload>,
    pub(super) slots: Arc<Semaphore>,
}

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

impl<S: MeshService, D: MeshService> Service<Request<ReqBody>> for Mirror<S, D> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let Some(routed) = req.extensions().get::<Arc<Routed>>().cloned() else {
            return Box::pin(inner.call(req));
        };
        let Some(rule) = routed.rule() else {
            return Box::pin(inner.call(req));
        };
        if rule.mirrors.is_empty() {
            return Box::pin(inner.call(req));
        }
        let timeout = rule.timeout.unwrap_or(MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT);
        let mut rng = rand::rng();
        for m in &rule.mirrors {
            if !m.share.draw(&mut rng) {
                continue;
            }
            // A full pool of copies in flight: this one is dropped rather than queued.
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(mirror = %m.target.host, "mirror dropped: too many copies in flight");
                continue;
            };
            req.body_mut().make_replayable();
            let Some(body) = req.body().try_clone_follower() else {
                break;
            };
            let t = &m.target;
            let Ok(upstream) = routed.mesh.upstream(
                &t.host,
                t.subset.as_deref(),
                t.port.unwrap_or(0),
                routed.port,
                &self.workload.namespace,
            ) else {
                continue;
            };
            let authority = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(routed.authority.to_str().unwrap_or(""));
            let Ok(shadow) = HeaderValue::from_str(&shadow_authority(authority)) else {
                continue;
            };
            let mut copy = Request::new(body);
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            copy.headers_mut().insert(HOST, shadow.clone());
            let mut r = Routed::clone(&routed);
            r.upstream = upstream;
            r.authority = shadow;
            copy.extensions_mut().insert(Arc::new(r));
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
        Box::pin(inner.call(req))
    }
}
