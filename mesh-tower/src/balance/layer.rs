use std::sync::Arc;

use tower::Layer;

use super::Balance;
use crate::Workload;

/// Picks the endpoint of each attempt (see the module documentation).
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    workload: Arc<Workload>,
}

impl BalanceLayer {
    /// Balances the requests of `workload`.
    pub fn new(workload: Arc<Workload>) -> Self {
        BalanceLayer { workload }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            workload: self.workload.clone(),
        }
    }
}
