use tower::Layer;

use super::Fault;

/// Injects the route's faults (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLayer;

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner }
    }
}
