use std::sync::Arc;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use mesh_core::route::{Action, HeaderOps, Rule};
use tower::Service;

use crate::route::Routed;
use crate::{MeshService, ReqBody};

/// See [`HeadersLayer`](super::HeadersLayer).
#[derive(Clone, Debug)]
pub struct HeadersService<S> {
    pub(super) inner: S,
}

/// The header operations of the rule and of the destination drawn, in the order Istio
/// has Envoy apply them: for a single destination Istio merges the destination's
/// operations after the rule's (the destination's win); for a weighted split the
/// destination's are the weighted cluster's, applied before the route's (the rule's win).
fn ordered<'r>(
    routed: &'r Routed,
    rule: &'r Rule,
    pick: impl Fn(&'r mesh_core::route::HeaderPolicy) -> &'r HeaderOps,
) -> [Option<&'r HeaderOps>; 2] {
    let target = routed.target().map(|t| pick(&t.headers));
    let single = matches!(&rule.action, Action::Route(split) if split.targets.len() == 1);
    if single {
        [Some(pick(&rule.headers)), target]
    } else {
        [target, Some(pick(&rule.headers))]
    }
}

impl<S: MeshService> Service<Request<ReqBody>> for HeadersService<S> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let Some(routed) = req.extensions().get::<Arc<Routed>>().cloned() else {
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
        for ops in ordered(&routed, rule, |h| &h.request).into_iter().flatten() {
            ops.apply(req.headers_mut());
            // `host`/`:authority` in `set`/`add` rewrite the authority, as Istio does.
            if let Some(a) = &ops.authority {
                req.headers_mut().insert(HOST, a.clone());
            }
        }
        let needs_response = ordered(&routed, rule, |h| &h.response)
            .into_iter()
            .flatten()
            .any(|ops| !ops.is_empty());
        if !needs_response {
            return Box::pin(inner.call(req));
        }
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if let Some(rule) = routed.rule() {
                for ops in ordered(&routed, rule, |h| &h.response)
                    .into_iter()
                    .flatten()
                {
                    ops.apply(resp.headers_mut());
                }
            }
            Ok(resp)
        })
    }
}
