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

/// The header operations of the rule and of the destination drawn, as Istio has Envoy
/// apply them. For a single destination Istio merges the destination's operations into
/// the rule's (one list: every removal first, then the rule's sets and adds, then the
/// destination's — the destination's win). For a weighted split the destination's are
/// the weighted cluster's own list, applied before the route's (the rule's win).
fn apply_ops<'r>(
    routed: &'r Routed,
    rule: &'r Rule,
    pick: impl Fn(&'r mesh_core::route::HeaderPolicy) -> &'r HeaderOps,
    headers: &mut http::HeaderMap,
) {
    let target = routed.target().map(|t| pick(&t.headers));
    let single = matches!(&rule.action, Action::Route(split) if split.targets.len() == 1);
    match target {
        Some(t) if single => HeaderOps::apply_merged(&[pick(&rule.headers), t], headers),
        Some(t) => {
            t.apply(headers);
            pick(&rule.headers).apply(headers);
        }
        None => pick(&rule.headers).apply(headers),
    }
}

/// The authority the header operations set (`host`/`:authority` in `set` or `add`), the
/// later list winning as in [`apply_ops`].
fn authority<'r>(routed: &'r Routed, rule: &'r Rule) -> Option<&'r HeaderValue> {
    let target = routed
        .target()
        .and_then(|t| t.headers.request.authority.as_ref());
    let own = rule.headers.request.authority.as_ref();
    let single = matches!(&rule.action, Action::Route(split) if split.targets.len() == 1);
    if single {
        target.or(own)
    } else {
        own.or(target)
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
        apply_ops(&routed, rule, |h| &h.request, req.headers_mut());
        // `host`/`:authority` in `set`/`add` rewrite the authority, as Istio does.
        if let Some(a) = authority(&routed, rule) {
            req.headers_mut().insert(HOST, a.clone());
        }
        let needs_response = !rule.headers.response.is_empty()
            || routed
                .target()
                .is_some_and(|t| !t.headers.response.is_empty());
        if !needs_response {
            return Box::pin(inner.call(req));
        }
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if let Some(rule) = routed.rule() {
                apply_ops(&routed, rule, |h| &h.response, resp.headers_mut());
            }
            Ok(resp)
        })
    }
}
