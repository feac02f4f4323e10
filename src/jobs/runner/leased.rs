//! The runner's side of the registry's shared queue (`jobs::lease`): what an API replica does
//! for jobs that workers run (cancel, follow), and what a `petal worker` does (claim, heartbeat,
//! release at shutdown).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::{JobEvent, Runner};
use crate::error::{Error, ErrorCode, Result};
use crate::jobs::lease::{Beat, Claim};
use crate::jobs::{Job, JobError, JobResult, JobState, Progress};
use crate::registry::alias::Promotion;
use crate::registry::Registry;
use crate::train::arch::Arch;

/// A worker's hold on one attempt of a job.
pub(super) struct Lease {
    pub(super) claim: Claim,
    /// A newer claim exists: the job is another worker's now.
    pub(super) lost: AtomicBool,
    /// Somebody asked to cancel (seen by the heartbeat).
    pub(super) cancel_requested: AtomicBool,
}

impl Beat {
    fn of(claim: &Claim, seq: u64) -> Beat {
        Beat {
            job: claim.job.clone(),
            attempt: claim.attempt,
            worker: claim.worker.clone(),
            seq,
            at: crate::clock::now_rfc3339_millis(),
            released: false,
            ended: false,
            lost: false,
        }
    }
}

fn canceled_before_start() -> JobError {
    JobError {
        code: ErrorCode::TrainingCanceled.as_str().into(),
        message: "canceled before a worker started it".into(),
    }
}

impl Runner {
    /// Cancels a job of the shared queue: asks its holder (who stops at its next heartbeat), or,
    /// when no worker holds it, claims it and ends it here.
    pub(super) async fn cancel_shared(&self, job: Job) -> Result<Job> {
        let id = job.id.clone();
        self.registry.request_cancel(&id, &self.name).await?;
        let leases = self.registry.leases(&id).await?;
        let free = match leases.latest() {
            None => true,
            Some(c) => leases.beat.as_ref().is_some_and(|b| b.attempt == c.attempt && b.released),
        };
        if free {
            let attempt = leases.latest().map_or(1, |c| c.attempt + 1);
            if let Some(claim) = self.registry.try_claim(&id, attempt, &format!("{} (cancel)", self.name)).await? {
                let mut job = self.registry.job(&id).await?;
                if !job.state.is_terminal() {
                    job.end(JobState::Canceled, "canceled", Some(canceled_before_start()));
                    job.attempt = claim.attempt;
                    self.registry.put_job(&job).await?;
                }
                end_lease(&self.registry, &claim).await;
                return Ok(job);
            }
        }
        // A worker holds it: it cancels at its next heartbeat.
        self.registry.job(&id).await
    }

    /// After the run of `id` under `lease` returned: `true` when the caller is done with it —
    /// the lease was lost (another worker holds the job: only this attempt's last beat is
    /// written, to record when its run really ended) or the run stopped for a shutdown (the job
    /// is released to another worker).
    pub(super) fn after_run(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
        lease: &Lease,
        stopped: bool,
    ) -> bool {
        let holds = rt.block_on(registry.holds(&lease.claim)).unwrap_or(true);
        if lease.lost.load(Ordering::SeqCst) || !holds {
            tracing::warn!(
                job = id,
                attempt = lease.claim.attempt,
                "lost the job's lease to another worker: it stopped here"
            );
            let beat = Beat { seq: u64::MAX, lost: true, ..Beat::of(&lease.claim, 0) };
            let _ = rt.block_on(registry.put_beat(&beat));
            self.finish_live(id);
            return true;
        }
        if stopped && self.shared.stopping.load(Ordering::SeqCst) && !lease.cancel_requested.load(Ordering::SeqCst) {
            self.release(rt, registry, id, &lease.claim);
            return true;
        }
        false
    }

    /// `Worker`, shutting down: the job goes back to the queue and its lease is released, so
    /// another worker restarts it now instead of after the lease would expire.
    fn release(&self, rt: &tokio::runtime::Runtime, registry: &Registry, id: &str, claim: &Claim) {
        let job = self.update(id, |j| {
            j.state = JobState::Queued;
            j.started_at = None;
            j.progress = Progress { stage: "queued".into(), ..Default::default() };
            j.epochs.clear();
            j.warnings.push(format!(
                "attempt {} on worker {} stopped when that worker shut down; the job restarts from the beginning",
                claim.attempt, claim.worker
            ));
        });
        let released = Beat { seq: u64::MAX, released: true, ..Beat::of(claim, 0) };
        match rt.block_on(async { registry.put_job(&job).await.and(registry.put_beat(&released).await) }) {
            Ok(()) => tracing::info!(job = id, attempt = claim.attempt, "released the job for another worker"),
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot release the job: another worker takes it over when its lease expires")
            }
        }
        self.finish_live(id);
    }

    /// Beats every `jobs.heartbeat_s` until `stopped` says the run ended: proves the lease is still
    /// this worker's (else stops training: `lost`), notices cancel requests, and writes the live
    /// record (progress and epochs) to the registry.
    pub(super) fn heartbeat(&self, lease: &Lease, cancel: &AtomicBool, stopped: mpsc::Receiver<()>) {
        let Some((rt, registry)) = self.thread_client("the heartbeat") else { return };
        let claim = &lease.claim;
        let period = Duration::from_secs_f64(self.config.jobs.heartbeat_s);
        let mut seq = 0;
        loop {
            match rt.block_on(registry.holds(claim)) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job = %claim.job, attempt = claim.attempt, "another worker claimed this job: stopping it");
                    lease.lost.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                    return;
                }
                // The store may be back before the lease expires; if not, the claim check above
                // stops this run once it is.
                Err(e) => tracing::warn!(job = %claim.job, error = %e, "cannot check the lease"),
            }
            if rt.block_on(registry.cancel_requested(&claim.job)).unwrap_or(false)
                && !lease.cancel_requested.swap(true, Ordering::SeqCst)
            {
                tracing::info!(job = %claim.job, "cancel requested: stopping at the next step");
                cancel.store(true, Ordering::SeqCst);
            }
            let snapshot = self.shared.live.lock().unwrap().get(&claim.job).map(|l| l.job.clone());
            if let Some(job) = snapshot {
                if let Err(e) = rt.block_on(registry.put_job(&job)) {
                    tracing::warn!(job = %claim.job, error = %e, "cannot write the job's progress");
                }
            }
            seq += 1;
            if let Err(e) = rt.block_on(registry.put_beat(&Beat::of(claim, seq))) {
                tracing::warn!(job = %claim.job, error = %e, "cannot write a heartbeat");
            }
            match stopped.recv_timeout(period) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// `Worker`: claims jobs of the shared queue and runs them until shutdown.
    pub(super) fn work_leased(&self) {
        let Some((rt, registry)) = self.thread_client("a job worker") else { return };
        let poll = Duration::from_millis(self.config.jobs.poll_ms);
        while !self.shared.stopping.load(Ordering::SeqCst) {
            match rt.block_on(self.claim_next(&registry)) {
                Ok(Some((job, lease))) => {
                    let id = job.id.clone();
                    self.insert_live(job);
                    self.run(&rt, &registry, &id, Some(lease));
                }
                Ok(None) => {
                    let q = self.shared.queue.lock().unwrap();
                    let _ = self.shared.wake.wait_timeout(q, poll);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the job queue");
                    std::thread::sleep(poll);
                }
            }
        }
    }

    /// The oldest job of the shared queue this worker could claim: unclaimed, or its lease
    /// expired or released. The returned record is set up for the new attempt.
    async fn claim_next(&self, registry: &Registry) -> Result<Option<(Job, Arc<Lease>)>> {
        let ttl = Duration::from_secs_f64(self.config.jobs.lease_ttl_s);
        for id in registry.queued().await? {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            if self.shared.live.lock().unwrap().contains_key(&id) {
                continue;
            }
            let job = match registry.job(&id).await {
                Ok(j) => j,
                // Queued before its record was written, or a record this version cannot read.
                Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::IntegrityError) => continue,
                Err(e) => return Err(e),
            };
            if job.state.is_terminal() {
                registry.dequeue(&id).await?;
                self.shared.watch.forget(&id);
                continue;
            }
            let leases = registry.leases(&id).await?;
            if leases.latest().is_some() && !self.shared.watch.expired(&id, &leases, ttl) {
                continue;
            }
            let attempt = leases.latest().map_or(1, |c| c.attempt + 1);
            let Some(claim) = registry.try_claim(&id, attempt, &self.name).await? else { continue };
            self.shared.watch.forget(&id);
            tracing::info!(job = %id, attempt, "claimed");
            // Read again now that it is ours: the previous holder may have ended it just before.
            let mut job = registry.job(&id).await?;
            if job.state.is_terminal() {
                end_lease(registry, &claim).await;
                continue;
            }
            if let Some(previous) = leases.latest() {
                let how = if leases.beat.as_ref().is_some_and(|b| b.attempt == previous.attempt && b.released) {
                    "was released when its worker shut down"
                } else {
                    "stopped heartbeating (its lease expired)"
                };
                tracing::warn!(job = %id, previous = previous.attempt, worker = %previous.worker, "{how}: taking the job over");
                job.epochs.clear();
                job.warnings.push(format!(
                    "attempt {} on worker {} {how}; attempt {} on worker {} restarted the job from the beginning",
                    previous.attempt, previous.worker, attempt, self.name
                ));
            }
            job.attempt = attempt;
            job.worker = Some(self.name.clone());
            if leases.latest().is_some() {
                if let Some(result) = self.already_published(registry, &job).await? {
                    // The previous holder published, then died before recording the end.
                    tracing::info!(job = %id, version = result.version, "already published by an earlier attempt");
                    job.warnings.push(format!(
                        "version {} was published by the earlier attempt; this one recorded the end",
                        result.version
                    ));
                    job.end(JobState::Succeeded, "done", None);
                    job.progress.percent = 100.0;
                    job.result = Some(result);
                    registry.put_job(&job).await?;
                    end_lease(registry, &claim).await;
                    continue;
                }
            }
            if leases.cancel_requested || registry.cancel_requested(&id).await? {
                job.end(JobState::Canceled, "canceled", Some(canceled_before_start()));
                registry.put_job(&job).await?;
                end_lease(registry, &claim).await;
                continue;
            }
            let lease = Lease { claim, lost: AtomicBool::new(false), cancel_requested: AtomicBool::new(false) };
            return Ok(Some((job, Arc::new(lease))));
        }
        Ok(None)
    }

    /// The version an earlier attempt of `job` published (its manifest's
    /// `hyperparameters.job_id`), with the alias the spec asked for moved to it.
    async fn already_published(&self, registry: &Registry, job: &Job) -> Result<Option<JobResult>> {
        let model = &job.spec.model;
        let versions = match registry.versions(model).await {
            Ok(v) => v,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for version in versions.into_iter().rev() {
            let manifest = registry.manifest(model, version).await?;
            let p = &manifest.provenance;
            if p.hyperparameters["job_id"].as_str() != Some(job.id.as_str()) {
                continue;
            }
            let best = |key: &str| p.metrics.best.get(key).copied().unwrap_or(f64::NAN);
            let winner: Arch = serde_json::from_value(p.hyperparameters["winner"].clone())
                .map_err(|e| Error::new(ErrorCode::IntegrityError, format!("{model} version {version}: {e}")))?;
            let names: Vec<String> = serde_json::from_value(p.hyperparameters["backbones"].clone()).unwrap_or_default();
            let backbones = names
                .iter()
                .map(|n| {
                    let key = if names.len() > 1 { format!("val_top1.{n}") } else { "val_top1".into() };
                    (n.clone(), best(&key))
                })
                .collect();
            if let Some(alias) = &job.spec.promote {
                if registry.current(model, alias).await?.is_none_or(|e| e.version != version) {
                    let promotion = Promotion {
                        version,
                        if_match: None,
                        by: format!("job {}", job.id),
                        reason: format!("published by job {} (recorded by a later attempt)", job.id),
                        acknowledge_terms: job.spec.acknowledge_terms,
                    };
                    registry.promote(model, alias, &promotion, self.config.registry.usage).await?;
                }
            }
            return Ok(Some(JobResult {
                model: model.clone(),
                version,
                winner,
                best_val_accuracy: best("val_top1"),
                backbones,
                promoted: job.spec.promote.clone(),
            }));
        }
        Ok(None)
    }

    /// `Worker`: claims nothing more and asks every running job to stop at its next step and go
    /// back to the queue; returns once every worker thread has, or after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for l in self.shared.live.lock().unwrap().values() {
            l.cancel.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_all();
        let deadline = Instant::now() + timeout;
        while self.shared.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last beat of an ended attempt, and the job out of the queue.
pub(super) async fn end_lease(registry: &Registry, claim: &Claim) {
    let beat = Beat { seq: u64::MAX, ended: true, ..Beat::of(claim, 0) };
    if let Err(e) = registry.put_beat(&beat).await {
        tracing::warn!(job = %claim.job, error = %e, "cannot write the last heartbeat");
    }
    if let Err(e) = registry.dequeue(&claim.job).await {
        tracing::warn!(job = %claim.job, error = %e, "cannot take the job out of the queue; workers will");
    }
}

/// Streams the changes of a job another process runs, read from the registry every `period`:
/// a `state` event at each change of state, an `epoch` event per new epoch, `progress` when it
/// moves. Stops when the job ends or nobody listens.
pub(super) async fn follow(registry: Registry, mut last: Job, tx: broadcast::Sender<JobEvent>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        if tx.receiver_count() == 0 {
            return;
        }
        let job = match registry.job(&last.id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job = %last.id, error = %e, "cannot re-read a followed job");
                continue;
            }
        };
        // A restarted attempt starts its epochs again.
        let known = if job.attempt == last.attempt { last.epochs.len() } else { 0 };
        for e in job.epochs.iter().skip(known) {
            let _ = tx.send(JobEvent::Epoch(e.clone()));
        }
        if job.state != last.state || job.attempt != last.attempt || job.progress.stage != last.progress.stage {
            let _ = tx.send(JobEvent::State(Box::new(job.clone())));
        } else if job.progress != last.progress {
            let _ = tx.send(JobEvent::Progress(job.progress.clone()));
        }
        if job.state.is_terminal() {
            return;
        }
        last = job;
    }
}
