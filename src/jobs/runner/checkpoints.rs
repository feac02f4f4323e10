//! A job's training checkpoints in the registry (`checkpoints/{job}/{backbone}/{slot}.ckpt`), where
//! any worker, on any machine, finds them when it takes the job over.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::leased::Lease;
use crate::error::{Error, ErrorCode, Result};
use crate::registry::Registry;
use crate::train::arch::Arch;
use crate::train::checkpoint::{CheckpointStore, Slot};

/// The checkpoints of job `job`, read and written from the training thread (`rt` is its runtime).
pub(super) struct RegistryCheckpoints<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub registry: &'a Registry,
    pub job: &'a str,
    pub max_bytes: u64,
    /// A leased run stops writing once its lease is lost: the job is another worker's then.
    pub lease: Option<Arc<Lease>>,
}

impl CheckpointStore for RegistryCheckpoints<'_> {
    fn get(&mut self, backbone: Arch, slot: Slot) -> Result<Option<Vec<u8>>> {
        self.rt.block_on(self.registry.checkpoint(self.job, backbone.name(), slot.name()))
    }

    fn put(&mut self, backbone: Arch, slot: Slot, bytes: &[u8]) -> Result<()> {
        if self.lease.as_ref().is_some_and(|l| l.lost.load(Ordering::SeqCst)) {
            return Err(Error::new(
                ErrorCode::TrainingCanceled,
                "the job's lease was lost: its checkpoints are not ours",
            ));
        }
        if bytes.len() as u64 > self.max_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("a checkpoint of {} bytes is over jobs.checkpoint_max_bytes ({})", bytes.len(), self.max_bytes),
            ));
        }
        self.rt.block_on(self.registry.put_checkpoint(self.job, backbone.name(), slot.name(), bytes.to_vec()))
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}
