//! The fence of a batch of a leased folder (see `store/leases.rs`): its commit renews the lease in
//! the batch's own transaction before anything else, and commits nothing when the lease is lost.

use super::Batch;
use crate::store::Result;
use crate::store::leases::{FencedWrite, Lease, check_fence};

impl Batch {
    /// Fences the batch by `lease`: its commit renews the lease in the batch's own transaction
    /// first, and commits nothing (`StoreError::LeaseLost`) when the lease is not this worker's
    /// any more. The renewal's row lock holds off a takeover until the commit is done.
    pub fn fence(&mut self, lease: &Lease) {
        self.fence = Some(lease.clone());
    }

    /// The fence's renewal, run first at commit (see [`Batch::fence`]).
    pub(super) async fn check_fence(&mut self) -> Result<()> {
        let Some(lease) = self.fence.take() else {
            return Ok(());
        };
        let backend = self.backend;
        check_fence(self.connection(), backend, &lease, FencedWrite::Batch).await
    }
}
