use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use tower::Service;

use crate::route::Routed;
use crate::{MeshService, ReqBody};

/// See [`HeadersLayer`](super::HeadersLayer).
#[derive(Clone, Debug)]
pub struct HeadersService<S> {
    pub(super) inner: S,
}

impl<S: MeshService> Service<Request<ReqBody>> for HeadersService<S> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let Some(routed) = req.extensions().get::<Routed>().cloned() else {
            return Box::pin(inner.call(req));
        };
        let Some(rule) = routed.rule() else {
            return Box::pin(inner.call(req));
        };
        // Path and authority rewrites.
        if let Some(rw) = &rule.rewrite {
            let uri_matcher = routed.block().and_then(|b| b.uri_matcher());
            if let Some(new) = rw.path(req.uri().path(), req.uri().query(), uri_matcher)
                && let Ok(pq) = PathAndQuery::try_from(new.as_str())
            {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::from_str(a)
            {
                req.headers_mut().insert(HOST, v);
            }
        }
        let target = routed.target();
        if let Some(t) = target {
            t.headers.request.apply(req.headers_mut());
        }
        rule.headers.request.apply(req.headers_mut());
        let needs_response = !rule.headers.response.is_empty()
            || target.is_some_and(|t| !t.headers.response.is_empty());
        if !needs_response {
            return Box::pin(inner.call(req));
        }
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if let Some(rule) = routed.rule() {
                if let Some(t) = routed.target() {
                    t.headers.response.apply(resp.headers_mut());
                }
                rule.headers.response.apply(resp.headers_mut());
            }
            Ok(resp)
        })
    }
}
