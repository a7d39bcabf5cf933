use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::super::{ResponseFuture, Route, Routed};
use crate::{BoxError, ResBody};

/// Applies the rule's CORS policy (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct CorsLayer;

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner }
    }
}

/// See [`CorsLayer`].
#[derive(Clone, Debug)]
pub struct Cors<S> {
    inner: S,
}

fn set(h: &mut HeaderMap, name: http::HeaderName, v: Option<&HeaderValue>) {
    if let Some(v) = v {
        h.insert(name, v.clone());
    }
}

impl<S> Service<Routed> for Cors<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<CorsFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        let policy = routed.route.cors();
        let origin = routed.request.headers().get(ORIGIN);
        let (Some(cors), Some(origin)) = (policy, origin) else {
            return ResponseFuture::inner(CorsFuture::plain(self.inner.call(routed)));
        };
        let origin = origin.clone();
        let allowed = cors.allows(origin.to_str().unwrap_or(""));
        let preflight = routed.request.method() == Method::OPTIONS
            && routed
                .request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && (allowed || cors.ignore_unmatched_preflights) {
            let mut resp = Response::new(ResBody::empty());
            *resp.status_mut() = StatusCode::OK;
            if allowed {
                let h = resp.headers_mut();
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                set(h, ACCESS_CONTROL_ALLOW_METHODS, cors.methods.as_ref());
                set(h, ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.as_ref());
                set(h, ACCESS_CONTROL_MAX_AGE, cors.max_age.as_ref());
                if cors.credentials {
                    h.insert(
                        ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            return ResponseFuture::ready(resp);
        }
        if !allowed {
            return ResponseFuture::inner(CorsFuture::plain(self.inner.call(routed)));
        }
        let route = routed.route.clone();
        ResponseFuture::inner(CorsFuture {
            fut: self.inner.call(routed),
            allowed: Some((origin, route)),
        })
    }
}

pin_project! {
    /// The response future of [`Cors`]: the response to an allowed origin gets its
    /// `Access-Control-*` headers.
    pub struct CorsFuture<F> {
        #[pin]
        fut: F,
        allowed: Option<(HeaderValue, Route)>,
    }
}

impl<F> CorsFuture<F> {
    fn plain(fut: F) -> Self {
        CorsFuture { fut, allowed: None }
    }
}

impl<F> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.fut.poll(cx))?;
        if let Some((origin, route)) = this.allowed.take()
            && let Some(cors) = route.cors()
        {
            let h = resp.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            set(
                h,
                ACCESS_CONTROL_EXPOSE_HEADERS,
                cors.expose_headers.as_ref(),
            );
            if cors.credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
        Poll::Ready(Ok(resp))
    }
}
