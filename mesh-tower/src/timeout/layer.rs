use tower::Layer;

use super::Timeout;

/// Bounds each request by its route's timeout (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}
