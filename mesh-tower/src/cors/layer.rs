use tower::Layer;

use super::Cors;

/// Applies the route's CORS policy (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct CorsLayer;

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner }
    }
}
