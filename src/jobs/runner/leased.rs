//! The runner's side of the registry's shared queue (`jobs::lease`): what an API replica does
//! for jobs that workers run (cancel, follow), and what a `petal worker` does (claim, heartbeat,
//! release at shutdown).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::{JobEvent, Runner};
use crate::error::{ErrorCode, Result};
use crate::jobs::{Job, JobError, JobResult, JobState, Progress, Stage};
use crate::publish::{best_key, RunHyperparameters};
use crate::registry::alias::Promotion;
use crate::registry::jobs::{Beat, Claim, Leases};
use crate::registry::Registry;

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
            at: crate::foundation::clock::now_rfc3339_millis(),
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
                    job.end(JobState::Canceled, Stage::Canceled, Some(canceled_before_start()));
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
        if !self.still_holds(rt, registry, id, lease) {
            return true;
        }
        if stopped && self.shared.stopping.load(Ordering::SeqCst) && !lease.cancel_requested.load(Ordering::SeqCst) {
            self.release(rt, registry, id, &lease.claim);
            return true;
        }
        false
    }

    /// The fence before each write that ends an attempt: `false` — with only this attempt's
    /// last beat written, and the job out of this process — when the lease was lost (a newer
    /// claim exists, or the heartbeat gave up). A store that cannot answer counts as held: the
    /// write that follows fails too, and is retried behind this fence.
    pub(super) fn still_holds(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
        lease: &Lease,
    ) -> bool {
        if !lease.lost.load(Ordering::SeqCst) && rt.block_on(registry.holds(&lease.claim)).unwrap_or(true) {
            return true;
        }
        lease.lost.store(true, Ordering::SeqCst);
        tracing::warn!(job = id, attempt = lease.claim.attempt, "lost the job's lease: it stopped here");
        rt.block_on(lost_beat(registry, &lease.claim));
        self.finish_live(id);
        false
    }

    /// `Worker`, shutting down: the job goes back to the queue and its lease is released, so
    /// another worker restarts it now instead of after the lease would expire.
    fn release(&self, rt: &tokio::runtime::Runtime, registry: &Registry, id: &str, claim: &Claim) {
        let job = self.update(id, |j| {
            j.state = JobState::Queued;
            j.started_at = None;
            j.progress = Progress { stage: Stage::Queued, ..Default::default() };
            j.warnings.push(format!(
                "attempt {} on worker {} stopped when that worker shut down; the next attempt goes on from the \
                 job's last checkpoint",
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
    /// record (progress and epochs) to the registry. Training never outlives its heartbeat: when
    /// no beat got through for `jobs.lease_ttl_s` less one period (others may soon take the job
    /// over), or this thread ends any other way, the run stops and counts as lost.
    pub(super) fn heartbeat(&self, lease: &Lease, cancel: &AtomicBool, stopped: mpsc::Receiver<()>) {
        struct StopRun<'a> {
            lease: &'a Lease,
            cancel: &'a AtomicBool,
            armed: bool,
        }
        impl Drop for StopRun<'_> {
            fn drop(&mut self) {
                if self.armed {
                    self.lease.lost.store(true, Ordering::SeqCst);
                    self.cancel.store(true, Ordering::SeqCst);
                }
            }
        }
        let mut guard = StopRun { lease, cancel, armed: true };
        let Some((rt, registry)) = self.thread_client("the heartbeat") else { return };
        let claim = &lease.claim;
        let period = Duration::from_secs_f64(self.config.jobs.heartbeat_s);
        let give_up = Duration::from_secs_f64(self.config.jobs.lease_ttl_s) - period;
        let mut last_ok = Instant::now();
        let mut seq = 0;
        loop {
            seq += 1;
            // A slow store is waited for as long as the lease can still be trusted.
            let wait = give_up.saturating_sub(last_ok.elapsed()).max(period);
            match rt.block_on(async { tokio::time::timeout(wait, self.beat(&registry, lease, cancel, seq)).await }) {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(job = %claim.job, attempt = claim.attempt, "another worker claimed this job: stopping it");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(job = %claim.job, error = %e, "cannot heartbeat"),
                Err(_) => tracing::warn!(job = %claim.job, waited_s = wait.as_secs_f64(), "a heartbeat timed out"),
            }
            if last_ok.elapsed() >= give_up {
                tracing::error!(
                    job = %claim.job,
                    silent_s = last_ok.elapsed().as_secs_f64(),
                    "no heartbeat reached the registry for too long: another worker may take this job over, so it stops here"
                );
                return;
            }
            match stopped.recv_timeout(period) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => {
                    guard.armed = false;
                    return;
                }
            }
        }
    }

    /// One heartbeat: `false` when a newer claim exists. Also notices a cancel request and
    /// writes the live record.
    async fn beat(&self, registry: &Registry, lease: &Lease, cancel: &AtomicBool, seq: u64) -> Result<bool> {
        let claim = &lease.claim;
        if !registry.holds(claim).await? {
            return Ok(false);
        }
        if registry.cancel_requested(&claim.job).await? && !lease.cancel_requested.swap(true, Ordering::SeqCst) {
            tracing::info!(job = %claim.job, "cancel requested: stopping at the next step");
            cancel.store(true, Ordering::SeqCst);
        }
        let snapshot = self.shared.live.lock().unwrap().get(&claim.job).map(|l| l.job.clone());
        if let Some(job) = snapshot {
            // Progress only: a missed write does not put the lease in doubt.
            if let Err(e) = registry.put_job(&job).await {
                tracing::warn!(job = %claim.job, error = %e, "cannot write the job's progress");
            }
        }
        registry.put_beat(&Beat::of(claim, seq)).await?;
        Ok(true)
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
                    self.run(&rt, &registry, &id, super::Ownership::Leased(lease));
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
        let queued = registry.queued().await?;
        self.shared.watch.retain(&queued);
        for id in queued {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            if self.shared.live.lock().unwrap().contains_key(&id) {
                continue;
            }
            // One job the store fails on does not keep this worker from the others. A claim won
            // before the failure is left without a beat: it expires like a dead holder's, which
            // retries the job after `jobs.lease_ttl_s`.
            match self.try_take(registry, &id).await {
                Ok(Some(taken)) => return Ok(Some(taken)),
                Ok(None) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot take this job now; trying the others"),
            }
        }
        Ok(None)
    }

    /// Claims `id` when it is free (unclaimed, or its lease expired or released): the record,
    /// set up for the new attempt, and the lease. `None` when it is not free, or was ended here
    /// (found canceled or already published).
    async fn try_take(&self, registry: &Registry, id: &str) -> Result<Option<(Job, Arc<Lease>)>> {
        let ttl = Duration::from_secs_f64(self.config.jobs.lease_ttl_s);
        let job = match registry.job(id).await {
            Ok(j) => j,
            // Queued before its record was written, or a record this version cannot read.
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::IntegrityError) => return Ok(None),
            Err(e) => return Err(e),
        };
        if job.state.is_terminal() {
            registry.dequeue(id).await?;
            self.shared.watch.forget(id);
            return Ok(None);
        }
        let leases = registry.leases(id).await?;
        if leases.latest().is_some() && !self.shared.watch.expired(id, &leases, ttl) {
            return Ok(None);
        }
        let attempt = leases.latest().map_or(1, |c| c.attempt + 1);
        let Some(claim) = registry.try_claim(id, attempt, &self.name).await? else { return Ok(None) };
        self.shared.watch.forget(id);
        tracing::info!(job = %id, attempt, "claimed");
        // Read again now that it is ours: the previous holder may have ended it just before.
        let mut job = registry.job(id).await?;
        if job.state.is_terminal() {
            end_lease(registry, &claim).await;
            return Ok(None);
        }
        if let Some(previous) = leases.latest() {
            let how = if leases.beat.as_ref().is_some_and(|b| b.attempt == previous.attempt && b.released) {
                "was released when its worker shut down"
            } else {
                "stopped heartbeating (its lease expired)"
            };
            tracing::warn!(job = %id, previous = previous.attempt, worker = %previous.worker, "{how}: taking the job over");
            job.warnings.push(format!(
                "attempt {} on worker {} {how}; attempt {} on worker {} took the job over, going on from its last \
                 checkpoint",
                previous.attempt, previous.worker, attempt, self.name
            ));
        }
        job.attempt = attempt;
        job.worker = Some(self.name.clone());
        if self.ends_before_running(registry, &mut job, &leases).await? {
            registry.put_job(&job).await?;
            end_lease(registry, &claim).await;
            return Ok(None);
        }
        let lease = Lease { claim, lost: AtomicBool::new(false), cancel_requested: AtomicBool::new(false) };
        Ok(Some((job, Arc::new(lease))))
    }

    /// Whether the job, just claimed for a new attempt, ends here instead of running (the end is
    /// set in `job`; the caller records it): an earlier attempt already published it, too many
    /// attempts stopped without ending it, or a cancel was asked.
    async fn ends_before_running(&self, registry: &Registry, job: &mut Job, leases: &Leases) -> Result<bool> {
        if leases.latest().is_some() {
            if let Some(result) = self.already_published(registry, job).await? {
                // The previous holder published, then died before recording the end.
                tracing::info!(job = %job.id, version = result.version, "already published by an earlier attempt");
                job.warnings.push(format!(
                    "version {} was published by the earlier attempt; this one recorded the end",
                    result.version
                ));
                job.end(JobState::Succeeded, Stage::Done, None);
                job.progress.percent = 100.0;
                job.result = Some(result);
                return Ok(true);
            }
        }
        // Attempts that stopped without ending the job, their workers' shutdowns not counted.
        let broken = (job.attempt - 1).saturating_sub(leases.released);
        if broken >= self.config.jobs.max_attempts {
            let error = JobError {
                code: ErrorCode::JobInterrupted.as_str().into(),
                message: format!(
                    "{broken} attempts stopped without ending (their workers died or lost their leases; \
                     jobs.max_attempts = {}): not run again. Submit the spec again once the cause is fixed",
                    self.config.jobs.max_attempts
                ),
            };
            tracing::error!(job = %job.id, attempts = broken, "{}", error.message);
            job.end(JobState::Failed, Stage::Interrupted, Some(error));
            return Ok(true);
        }
        if leases.cancel_requested || registry.cancel_requested(&job.id).await? {
            job.end(JobState::Canceled, Stage::Canceled, Some(canceled_before_start()));
            return Ok(true);
        }
        Ok(false)
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
            let Some(run) = RunHyperparameters::of(p).filter(|r| r.job_id.as_deref() == Some(job.id.as_str())) else {
                continue;
            };
            let best = |key: &str| p.metrics.best.get(key).copied().unwrap_or(f64::NAN);
            let winner = run.winner;
            let names = &run.backbones;
            let backbones = names.iter().map(|n| (n.clone(), best(&best_key(n, names.len())))).collect();
            if let Some(alias) = &job.spec.promote {
                // Moved once already (then perhaps on to a newer version): never moved back.
                let history = registry.history(model, alias).await?;
                if !history.iter().any(|e| e.version == version) {
                    let promotion = Promotion {
                        version,
                        if_match: Some(history.last().map_or(0, |e| e.seq)),
                        by: format!("job {}", job.id),
                        reason: format!("published by job {} (recorded by a later attempt)", job.id),
                        acknowledge_terms: job.spec.acknowledge_terms,
                    };
                    registry.promote(model, alias, &promotion, self.config.registry.usage).await?;
                }
            }
            return Ok(Some(JobResult {
                model: model.to_string(),
                version,
                winner,
                best_val_accuracy: best("val_top1"),
                backbones,
                promoted: job.spec.promote.clone(),
            }));
        }
        Ok(None)
    }

    /// Shutting down: claims nothing more and asks every running job to save a checkpoint at its
    /// next step and go back to the queue (a `petal worker`'s to another worker; a `petal
    /// serve`'s to its next start); returns once every worker thread has, or after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for l in self.shared.live.lock().unwrap().values() {
            // Stages that save nothing (reading the dataset) stop too; publishing finishes.
            l.cancel.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_all();
        let deadline = Instant::now() + timeout;
        while self.shared.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last beat of an attempt that lost its lease (`at`: when its run really stopped). Written
/// only while the attempt's claim is still this worker's: on a store whose conditional create is
/// not atomic, two workers may both have written a claim of the same attempt, and the loser must
/// not overwrite the winner's beat.
async fn lost_beat(registry: &Registry, claim: &Claim) {
    if registry.claim_of(&claim.job, claim.attempt).await.ok().flatten().is_some_and(|c| c.token == claim.token) {
        let beat = Beat { seq: u64::MAX, lost: true, ..Beat::of(claim, 0) };
        if let Err(e) = registry.put_beat(&beat).await {
            tracing::warn!(job = %claim.job, error = %e, "cannot write the last heartbeat");
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
/// a `state` event at each change of state, an `epoch` event per new epoch, `checkpoint` when a
/// newer one is recorded, `resumed` per new entry of `resumes`, `progress` when it moves. Stops
/// when the job ends or nobody listens.
pub(super) async fn follow(registry: Registry, mut last: Job, tx: broadcast::Sender<JobEvent>, period: Duration) {
    // The epochs the subscriber has (from the first state event, then epoch events).
    let mut sent = last.epochs.clone();
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
        // Epochs already sent: those the record starts with. An attempt that takes the job over
        // clears them and brings back its checkpoint's (the same ones: not sent again); one that
        // starts over sends its own.
        let known = sent.iter().zip(&job.epochs).take_while(|(a, b)| a == b).count();
        for r in job.resumes.iter().skip(last.resumes.len()) {
            let resumed = crate::train::trainer::Resumed {
                backbone: r.backbone,
                from: r.from,
                next: r.next,
                optimizer_steps: r.optimizer_steps,
                discarded: r.discarded.clone(),
                // The record keeps the restored epochs in `epochs`, sent as epoch events.
                epochs: Vec::new(),
            };
            let _ = tx.send(JobEvent::Resumed(resumed));
        }
        if job.epochs.len() > known {
            for e in &job.epochs[known..] {
                let _ = tx.send(JobEvent::Epoch(e.clone()));
            }
            sent = job.epochs.clone();
        }
        if let Some(c) = job.checkpoint.as_ref().filter(|c| last.checkpoint.as_ref() != Some(*c)) {
            let _ = tx.send(JobEvent::Checkpoint(c.clone()));
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
