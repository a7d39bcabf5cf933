use std::sync::Arc;

use tower::Layer;

use super::Mirror;
use crate::Workload;

/// Sends copies of requests to the rule's mirrors (see the module documentation).
#[derive(Clone, Debug)]
pub struct MirrorLayer<D> {
    dispatch: D,
    workload: Arc<Workload>,
}

impl<D> MirrorLayer<D> {
    /// Copies are sent through `dispatch` (the balancer in front of the connection
    /// pools), as `workload`.
    pub fn new(dispatch: D, workload: Arc<Workload>) -> Self {
        MirrorLayer { dispatch, workload }
    }
}

impl<S, D: Clone> Layer<S> for MirrorLayer<D> {
    type Service = Mirror<S, D>;

    fn layer(&self, inner: S) -> Mirror<S, D> {
        Mirror {
            inner,
            dispatch: self.dispatch.clone(),
            workload: self.workload.clone(),
        }
    }
}
