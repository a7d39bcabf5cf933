use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Response};
use mesh_core::route::{Action, HeaderOps, Rule, RuleHeaders, Target};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::super::{Route, Routed};
use crate::{BoxError, ResBody};

/// Applies the rule's rewrites and header operations (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadersLayer;

impl<S> Layer<S> for HeadersLayer {
    type Service = Headers<S>;

    fn layer(&self, inner: S) -> Headers<S> {
        Headers { inner }
    }
}

/// See [`HeadersLayer`].
#[derive(Clone, Debug)]
pub struct Headers<S> {
    inner: S,
}

/// True when the rule routes to a single destination (whose operations Istio merges
/// into the rule's).
fn single(rule: &Rule) -> bool {
    matches!(&rule.action, Action::Route(split) if split.targets.len() == 1)
}

/// The operations of the rule and of the destination drawn, in Istio's order (see the
/// module documentation).
fn apply_ops(
    rule: &Rule,
    target: Option<&Target>,
    pick: impl Fn(&RuleHeaders) -> &HeaderOps,
    headers: &mut HeaderMap,
) {
    match target.map(|t| pick(&t.headers)) {
        Some(t) if single(rule) => HeaderOps::apply_merged(&[pick(&rule.headers), t], headers),
        Some(t) => {
            t.apply(headers);
            pick(&rule.headers).apply(headers);
        }
        None => pick(&rule.headers).apply(headers),
    }
}

/// The authority the header operations set (`host`/`:authority` in `set` or `add`), the
/// later list winning as in [`apply_ops`].
fn authority<'r>(rule: &'r Rule, target: Option<&'r Target>) -> Option<&'r HeaderValue> {
    let of_target = target.and_then(|t| t.headers.request.authority.as_ref());
    let own = rule.headers.request.authority.as_ref();
    if single(rule) {
        of_target.or(own)
    } else {
        own.or(of_target)
    }
}

impl<S> Service<Routed> for Headers<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = HeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> Self::Future {
        let parts = &mut *routed;
        let Some(rule) = parts.route.rule() else {
            return HeadersFuture::plain(self.inner.call(routed));
        };
        let target = parts.route.target();
        let req = &mut parts.request;
        if let Some(rw) = &rule.rewrite {
            let uri_matcher = parts.route.block().and_then(|b| b.uri());
            if let Some(new) = rw.path(req.uri().path(), req.uri().query(), uri_matcher)
                && let Ok(pq) = PathAndQuery::try_from(new.as_str())
            {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            if let Some(a) = &rw.authority {
                req.headers_mut().insert(HOST, a.clone());
            }
        }
        apply_ops(rule, target, |h| &h.request, req.headers_mut());
        if let Some(a) = authority(rule, target) {
            req.headers_mut().insert(HOST, a.clone());
        }
        let response_ops = !rule.headers.response.is_empty()
            || target.is_some_and(|t| !t.headers.response.is_empty());
        let route = response_ops.then(|| parts.route.clone());
        HeadersFuture {
            fut: self.inner.call(routed),
            route,
        }
    }
}

pin_project! {
    /// The response future of [`Headers`]: the response operations, when there are any.
    pub struct HeadersFuture<F> {
        #[pin]
        fut: F,
        route: Option<Route>,
    }
}

impl<F> HeadersFuture<F> {
    fn plain(fut: F) -> Self {
        HeadersFuture { fut, route: None }
    }
}

impl<F> Future for HeadersFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.fut.poll(cx))?;
        if let Some(route) = this.route.take()
            && let Some(rule) = route.rule()
        {
            apply_ops(rule, route.target(), |h| &h.response, resp.headers_mut());
        }
        Poll::Ready(Ok(resp))
    }
}
