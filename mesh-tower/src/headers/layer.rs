use tower::Layer;

use super::HeadersService;

/// Rewrites paths and authorities and edits headers (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadersLayer;

impl<S> Layer<S> for HeadersLayer {
    type Service = HeadersService<S>;

    fn layer(&self, inner: S) -> HeadersService<S> {
        HeadersService { inner }
    }
}
