use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tower::Service;

use crate::body::full;
use crate::route::Routed;
use crate::{MeshService, ReqBody};

/// See [`CorsLayer`](super::CorsLayer).
#[derive(Clone, Debug)]
pub struct Cors<S> {
    pub(super) inner: S,
}

fn set(h: &mut HeaderMap, name: http::HeaderName, v: Option<&str>) {
    if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(name, v);
    }
}

impl<S: MeshService> Service<Request<ReqBody>> for Cors<S> {
    crate::mesh_service_types!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let origin = req.headers().get(ORIGIN).cloned();
        let routed = req.extensions().get::<Arc<Routed>>().cloned();
        let Some((origin, routed)) = origin.zip(routed) else {
            return Box::pin(inner.call(req));
        };
        let Some(cors) = routed.rule().and_then(|r| r.cors.as_ref()) else {
            return Box::pin(inner.call(req));
        };
        let origin_str = origin.to_str().unwrap_or("");
        let allowed = cors.allows(origin_str);
        let preflight = req.method() == Method::OPTIONS
            && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && (allowed || cors.ignore_unmatched_preflights) {
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::OK;
            if allowed {
                let h = resp.headers_mut();
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                set(h, ACCESS_CONTROL_ALLOW_METHODS, cors.methods.as_deref());
                set(
                    h,
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    cors.allow_headers.as_deref(),
                );
                set(
                    h,
                    ACCESS_CONTROL_MAX_AGE,
                    cors.max_age.map(|s| s.to_string()).as_deref(),
                );
                if cors.credentials {
                    h.insert(
                        ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            return Box::pin(async move { Ok(resp) });
        }
        if !allowed {
            return Box::pin(inner.call(req));
        }
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if let Some(cors) = routed.rule().and_then(|r| r.cors.as_ref()) {
                let h = resp.headers_mut();
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                set(
                    h,
                    ACCESS_CONTROL_EXPOSE_HEADERS,
                    cors.expose_headers.as_deref(),
                );
                if cors.credentials {
                    h.insert(
                        ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            Ok(resp)
        })
    }
}
