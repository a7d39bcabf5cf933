use std::sync::Arc;

use tower::Layer;

use super::Mirror;
use crate::Workload;
use crate::balance::Balance;
use crate::upstream::UpstreamService;

/// Sends copies of requests to the rule's mirrors (see the module documentation).
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    dispatch: Balance<UpstreamService>,
    workload: Arc<Workload>,
}

impl MirrorLayer {
    /// Copies are sent through `dispatch`, as `workload`.
    pub fn new(dispatch: Balance<UpstreamService>, workload: Arc<Workload>) -> Self {
        MirrorLayer { dispatch, workload }
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            dispatch: self.dispatch.clone(),
            workload: self.workload.clone(),
        }
    }
}
