//! Who owns a running job, and what that changes: a job of this process (`petal serve`) or one a
//! `petal worker` holds under a lease in the registry. The run itself (`Runner::run`) is the same
//! for both; every difference is a method here.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::leased::{self, Lease};
use super::Runner;
use crate::error::{Error, ErrorCode, Result};
use crate::jobs::Job;
use crate::registry::Registry;

pub(super) enum Ownership {
    /// This process's own job (`All`).
    Local,
    /// A job of the shared queue, held under `Lease` (`Worker`).
    Leased(Arc<Lease>),
}

/// The heartbeat thread of a leased run; stops when dropped through `stop`.
pub(super) struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Heartbeat {
    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

impl Ownership {
    /// The worker that runs it, recorded in the job.
    pub(super) fn worker(&self) -> Option<String> {
        match self {
            Ownership::Local => None,
            Ownership::Leased(l) => Some(l.claim.worker.clone()),
        }
    }

    /// The lease a run holds, if any.
    pub(super) fn lease(&self) -> Option<Arc<Lease>> {
        match self {
            Ownership::Local => None,
            Ownership::Leased(l) => Some(l.clone()),
        }
    }

    /// Records the attempt and the worker in a job that starts.
    pub(super) fn stamp(&self, job: &mut Job) {
        if let Ownership::Leased(l) = self {
            job.attempt = l.claim.attempt;
            job.worker = Some(l.claim.worker.clone());
        }
    }

    /// Starts beating for a leased run: the heartbeat runs beside training and is stopped before
    /// the end is written.
    pub(super) fn start_heartbeat(&self, runner: &Runner, id: &str, cancel: &Arc<AtomicBool>) -> Option<Heartbeat> {
        let Ownership::Leased(lease) = self else { return None };
        let (stop, stopped) = mpsc::channel::<()>();
        let (r, l, c) = (runner.clone(), lease.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name(format!("heartbeat-{id}"))
            .spawn(move || r.heartbeat(&l, &c, stopped))
            .expect("a heartbeat thread");
        Some(Heartbeat { stop, thread })
    }

    /// Whether the run writes the record at each epoch itself; under a lease the heartbeat
    /// writes it (one writer at a time).
    pub(super) fn records_epochs(&self) -> bool {
        matches!(self, Ownership::Local)
    }

    /// The last fence before a model version appears: a leased run's claim must still be the
    /// newest.
    pub(super) fn fence_before_publishing(&self, rt: &tokio::runtime::Runtime, registry: &Registry) -> Result<()> {
        if let Ownership::Leased(l) = self {
            if !rt.block_on(registry.holds(&l.claim))? {
                l.lost.store(true, Ordering::SeqCst);
                return Err(Error::new(ErrorCode::TrainingCanceled, "another worker took this job over"));
            }
        }
        Ok(())
    }

    /// After the run returned: `true` when the caller is done with the job (a leased one was
    /// lost, or released for a shutdown; see `Runner::after_run`).
    pub(super) fn settled_elsewhere(
        &self,
        runner: &Runner,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
        stopped: bool,
    ) -> bool {
        match self {
            Ownership::Local => false,
            Ownership::Leased(l) => runner.after_run(rt, registry, id, l, stopped),
        }
    }

    /// The fence before a retried write of the job's end: `false` when a leased job was lost.
    pub(super) fn may_write_end(
        &self,
        runner: &Runner,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
    ) -> bool {
        match self {
            Ownership::Local => true,
            Ownership::Leased(l) => runner.still_holds(rt, registry, id, l),
        }
    }

    /// After the end was recorded: a leased attempt writes its last beat (`ended`).
    pub(super) fn ended(&self, rt: &tokio::runtime::Runtime, registry: &Registry) {
        if let Ownership::Leased(l) = self {
            rt.block_on(leased::end_lease(registry, &l.claim));
        }
    }
}
