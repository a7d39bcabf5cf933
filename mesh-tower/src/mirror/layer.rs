use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::Layer;

use super::Mirror;
use crate::Workload;

/// Sends copies of requests to the rule's mirrors (see the module documentation).
#[derive(Clone, Debug)]
pub struct MirrorLayer<D> {
    dispatch: D,
    workload: Arc<Workload>,
    slots: Arc<Semaphore>,
}

/// How many copies may be in flight at once by default; beyond it copies are dropped.
pub const DEFAULT_MAX_MIRRORS_IN_FLIGHT: usize = 1024;

impl<D> MirrorLayer<D> {
    /// Copies are sent through `dispatch` (the balancer in front of the connection
    /// pools), as `workload`.
    pub fn new(dispatch: D, workload: Arc<Workload>) -> Self {
        Self::with_slots(
            dispatch,
            workload,
            Arc::new(Semaphore::new(DEFAULT_MAX_MIRRORS_IN_FLIGHT)),
        )
    }

    /// Copies are sent through `dispatch`, as `workload`, while `slots` has a permit
    /// for them (a semaphore shared by the clients of a process bounds them all).
    pub fn with_slots(dispatch: D, workload: Arc<Workload>, slots: Arc<Semaphore>) -> Self {
        MirrorLayer {
            dispatch,
            workload,
            slots,
        }
    }
}

impl<S, D: Clone> Layer<S> for MirrorLayer<D> {
    type Service = Mirror<S, D>;

    fn layer(&self, inner: S) -> Mirror<S, D> {
        Mirror {
            inner,
            dispatch: self.dispatch.clone(),
            workload: self.workload.clone(),
            slots: self.slots.clone(),
        }
    }
}
