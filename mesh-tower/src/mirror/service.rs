use std::sync::Arc;

use http::header::HOST;
use http::{HeaderValue, Request};
use tower::{Service, ServiceExt};

use crate::route::Routed;
use crate::{MeshService, ReqBody, Workload};

/// See [`MirrorLayer`](super::MirrorLayer).
#[derive(Clone, Debug)]
pub struct Mirror<S, D> {
    pub(super) inner: S,
    pub(super) dispatch: D,
    pub(super) workload: Arc<Workload>,
}

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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        if let Some(routed) = req.extensions().get::<Routed>()
            && let Some(rule) = routed.rule()
            && !rule.mirrors.is_empty()
        {
            let mut rng = rand::rng();
            for m in &rule.mirrors {
                if !m.share.draw(&mut rng) {
                    continue;
                }
                let Some(body) = req.body().try_clone() else {
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
                *copy.headers_mut() = req.headers().clone();
                copy.headers_mut().insert(HOST, shadow.clone());
                let mut r = routed.clone();
                r.upstream = upstream;
                r.authority = shadow;
                copy.extensions_mut().insert(r);
                let dispatch = self.dispatch.clone();
                tokio::spawn(async move {
                    // Fire and forget: the copy's response (or failure) is dropped.
                    let _ = dispatch.oneshot(copy).await;
                });
            }
        }
        Box::pin(inner.call(req))
    }
}
