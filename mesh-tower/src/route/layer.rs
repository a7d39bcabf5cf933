use std::sync::Arc;

use tower::Layer;

use super::RouteService;
use crate::{MeshConfig, Workload};

/// Routes requests with the current configuration (see the module documentation).
#[derive(Clone, Debug)]
pub struct RouteLayer {
    config: MeshConfig,
    workload: Arc<Workload>,
}

impl RouteLayer {
    /// Routes the requests of `workload` with `config`.
    pub fn new(config: MeshConfig, workload: impl Into<Arc<Workload>>) -> Self {
        RouteLayer {
            config,
            workload: workload.into(),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            config: self.config.clone(),
            workload: self.workload.clone(),
        }
    }
}
