use tower::Layer;

use super::Telemetry;

/// Wraps each request in a span (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetryLayer;

impl TelemetryLayer {
    /// The layer.
    pub fn new() -> Self {
        TelemetryLayer
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry { inner }
    }
}
