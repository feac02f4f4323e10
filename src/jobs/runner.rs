//! Runs fine-tuning jobs, in one of three roles:
//! - `All` (`petal serve`, the embedded default): a bounded pool of worker threads
//!   (`jobs.workers`, default one — one job per device: libtorch's generator and CPU thread pool
//!   are per process), fed by an in-process FIFO queue;
//! - `Api` (`petal serve --role api`): records jobs and puts them in the registry's shared queue,
//!   never trains; any replica answers for any job from the registry;
//! - `Worker` (`petal worker`): trains jobs of the shared queue, each under a lease (`lease`).
//!
//! A job's record is kept live in memory by the process that runs it, for status and server-sent
//! events, and written to the registry at every state change, every finished epoch (`All`) or
//! every heartbeat (`Worker`).
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use super::lease::LeaseWatch;
use super::{Job, JobError, JobResult, JobState, Progress, Stage};
use crate::config::{Config, Role};
use crate::error::{Error, ErrorCode, Result};
use crate::registry::Registry;
use crate::train::finetune::{FinetuneRun, StartingWeights, Steering};
use crate::train::trainer::{CheckpointSaved, EpochMetrics, Event, Resumed};

mod checkpoints;
mod leased;
mod ownership;
use leased::follow;
use ownership::Ownership;

/// What `GET /jobs/{id}/events` streams.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum JobEvent {
    /// The whole record: sent first, and at every state change.
    State(Box<Job>),
    /// Where training is (at most a few per second).
    Progress(Progress),
    /// A finished epoch.
    Epoch(EpochMetrics),
    /// A training checkpoint was saved.
    Checkpoint(CheckpointSaved),
    /// A run went on from a checkpoint (or found none usable).
    Resumed(Resumed),
}

impl JobEvent {
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::State(_) => "state",
            JobEvent::Progress(_) => "progress",
            JobEvent::Epoch(_) => "epoch",
            JobEvent::Checkpoint(_) => "checkpoint",
            JobEvent::Resumed(_) => "resumed",
        }
    }

    pub fn data_json(&self) -> String {
        match self {
            JobEvent::State(j) => serde_json::to_string(j),
            JobEvent::Progress(p) => serde_json::to_string(p),
            JobEvent::Epoch(e) => serde_json::to_string(e),
            JobEvent::Checkpoint(c) => serde_json::to_string(c),
            JobEvent::Resumed(r) => serde_json::to_string(r),
        }
        .expect("events serialize")
    }
}

struct Live {
    job: Job,
    cancel: Arc<AtomicBool>,
    events: broadcast::Sender<JobEvent>,
}

struct Shared {
    live: Mutex<HashMap<String, Live>>,
    queue: Mutex<VecDeque<String>>,
    wake: Condvar,
    /// Beats of other workers' leases, as this process has watched them.
    watch: LeaseWatch,
    /// `Worker`: shutting down — claim nothing more, release what runs.
    stopping: AtomicBool,
    /// `Worker`: threads still claiming or holding a job.
    threads: AtomicUsize,
}

/// The job runner of one process.
#[derive(Clone)]
pub struct Runner {
    registry: Registry,
    config: Arc<Config>,
    shared: Arc<Shared>,
    role: Role,
    /// The name this process gives in claims and job records.
    name: String,
}

impl Runner {
    /// Starts the runner of `role`. `All` recovers the registry's jobs (queued ones are queued
    /// again; running ones too, to go on from their checkpoints — or are failed with
    /// `job_interrupted` when petal stopped under them `jobs.max_attempts` times); `All` and `Worker` start
    /// `config.jobs.workers` worker threads.
    pub async fn start(config: &Config, registry: Registry, role: Role) -> Result<Runner> {
        let runner = Runner {
            registry,
            config: Arc::new(config.clone()),
            shared: Arc::new(Shared {
                live: Mutex::new(HashMap::new()),
                queue: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
                watch: LeaseWatch::default(),
                stopping: AtomicBool::new(false),
                threads: AtomicUsize::new(0),
            }),
            role,
            name: config.jobs.worker_name(),
        };
        // Uploads and job folders a killed process left behind.
        if let Ok(entries) = std::fs::read_dir(&config.jobs.work_dir) {
            for e in entries.flatten() {
                if is_leftover(&e.file_name().to_string_lossy()) {
                    let _ = if e.path().is_dir() {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    };
                    tracing::info!(path = %e.path().display(), "removed a leftover of a previous run");
                }
            }
        }
        if role == Role::All {
            runner.recover().await?;
        }
        if role != Role::Api {
            for i in 0..config.jobs.workers.max(1) {
                let r = runner.clone();
                r.shared.threads.fetch_add(1, Ordering::SeqCst);
                std::thread::Builder::new()
                    .name(format!("job-worker-{i}"))
                    .spawn(move || {
                        // Counted out however the thread ends, a panic included.
                        struct Out(Arc<Shared>);
                        impl Drop for Out {
                            fn drop(&mut self) {
                                self.0.threads.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        let _out = Out(r.shared.clone());
                        match r.role {
                            Role::Worker => r.work_leased(),
                            _ => r.work(),
                        }
                    })
                    .map_err(|e| Error::internal(format!("cannot start a job worker: {e}")))?;
            }
        }
        runner.shared.wake.notify_all();
        Ok(runner)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The name this process writes into claims and job records.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `All` at start: what the previous run of this process left. Jobs of the shared queue
    /// belong to `petal worker`s and are left to them.
    async fn recover(&self) -> Result<()> {
        // Records first: an API replica writes a job's queue marker before its record, so every
        // shared job among these records has its marker in the listing that follows.
        let jobs = self.registry.jobs().await?;
        let shared: std::collections::HashSet<String> = self.registry.queued().await?.into_iter().collect();
        for mut job in jobs {
            if shared.contains(&job.id) || job.attempt > 0 {
                continue;
            }
            match job.state {
                JobState::Running => {
                    let at = match (job.progress.phase, job.progress.epoch) {
                        (Some(p), Some(e)) => format!(" at phase {p} epoch {e}"),
                        _ => format!(" while {}", job.progress.stage),
                    };
                    if job.restarts + 1 >= self.config.jobs.max_attempts {
                        let error = JobError {
                            code: ErrorCode::JobInterrupted.as_str().into(),
                            message: format!(
                                "petal stopped while this job was running{at}, {} times (jobs.max_attempts): it is \
                                 not run again; submit the spec again",
                                job.restarts + 1
                            ),
                        };
                        job.end(JobState::Failed, Stage::Interrupted, Some(error));
                        self.registry.put_job(&job).await?;
                        let _ = self.registry.remove_checkpoints(&job.id).await;
                        tracing::warn!(job = %job.id, "a job was running when petal stopped, too many times: marked failed (job_interrupted)");
                        continue;
                    }
                    job.restarts += 1;
                    job.state = JobState::Queued;
                    job.started_at = None;
                    job.progress = Progress { stage: Stage::Queued, ..Default::default() };
                    job.warnings.push(format!(
                        "petal stopped while this job was running{at}; it runs again and goes on from its last \
                         checkpoint"
                    ));
                    self.registry.put_job(&job).await?;
                    tracing::warn!(job = %job.id, "a job was running when petal stopped: queued again, to resume from its checkpoint");
                    self.insert_live(job.clone());
                    self.shared.queue.lock().unwrap().push_back(job.id.clone());
                }
                JobState::Queued => {
                    tracing::info!(job = %job.id, "queued again after a restart");
                    self.insert_live(job.clone());
                    self.shared.queue.lock().unwrap().push_back(job.id.clone());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn insert_live(&self, job: Job) {
        let (events, _) = broadcast::channel(256);
        let id = job.id.clone();
        // A job claimed while the worker began shutting down stops at once, and is released.
        let cancel = Arc::new(AtomicBool::new(self.shared.stopping.load(Ordering::SeqCst)));
        self.shared.live.lock().unwrap().insert(id, Live { job, cancel, events });
    }

    /// Records a new job and queues it.
    pub async fn submit(&self, job: Job) -> Result<Job> {
        if self.role != Role::All {
            // The marker first: a record without one would look like a `petal serve`'s own job.
            self.registry.enqueue(&job.id).await?;
            if let Err(e) = self.registry.put_job(&job).await {
                let _ = self.registry.dequeue(&job.id).await;
                return Err(e);
            }
            tracing::info!(job = %job.id, model = %job.spec.model, "job queued for the workers");
            return Ok(job);
        }
        self.registry.put_job(&job).await?;
        self.insert_live(job.clone());
        self.shared.queue.lock().unwrap().push_back(job.id.clone());
        self.shared.wake.notify_one();
        tracing::info!(job = %job.id, model = %job.spec.model, "job queued");
        Ok(job)
    }

    /// A job's current record: live when this process runs it, else from the registry.
    pub async fn get(&self, id: &str) -> Result<Job> {
        super::check_job_id(id)?;
        if let Some(l) = self.shared.live.lock().unwrap().get(id) {
            return Ok(l.job.clone());
        }
        self.registry.job(id).await
    }

    /// Every job, oldest first, live records replacing stored ones.
    pub async fn list(&self) -> Result<Vec<Job>> {
        let mut jobs = self.registry.jobs().await?;
        let live = self.shared.live.lock().unwrap();
        for j in &mut jobs {
            if let Some(l) = live.get(&j.id) {
                *j = l.job.clone();
            }
        }
        Ok(jobs)
    }

    /// The current record and a receiver of what follows, for server-sent events. A job another
    /// process runs is followed by re-reading its record every `jobs.poll_ms`.
    pub async fn subscribe(&self, id: &str) -> Result<(Job, Option<broadcast::Receiver<JobEvent>>)> {
        super::check_job_id(id)?;
        if let Some(l) = self.shared.live.lock().unwrap().get(id) {
            return Ok((l.job.clone(), (!l.job.state.is_terminal()).then(|| l.events.subscribe())));
        }
        let job = self.registry.job(id).await?;
        if job.state.is_terminal() {
            return Ok((job, None));
        }
        let (tx, rx) = broadcast::channel(256);
        tokio::spawn(follow(self.registry.clone(), job.clone(), tx, Duration::from_millis(self.config.jobs.poll_ms)));
        Ok((job, Some(rx)))
    }

    /// Cancels a queued job at once, or asks a running one to stop at its next step.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.get(id).await?;
        if job.state.is_terminal() {
            return Err(Error::new(
                ErrorCode::JobFinished,
                format!("job {id} has already {} and cannot be canceled", job.state.as_str()),
            ));
        }
        let was_queued = {
            let mut q = self.shared.queue.lock().unwrap();
            let before = q.len();
            q.retain(|j| j != id);
            q.len() != before
        };
        if was_queued {
            let mut canceled = job.clone();
            let why = JobError {
                code: ErrorCode::TrainingCanceled.as_str().into(),
                message: "canceled before it started".into(),
            };
            canceled.end(JobState::Canceled, Stage::Canceled, Some(why));
            if let Err(e) = self.registry.put_job(&canceled).await {
                // Not recorded: the job stays queued, where it was.
                self.shared.queue.lock().unwrap().push_back(id.to_string());
                self.shared.wake.notify_one();
                return Err(e);
            }
            let job = self.update(id, |j| *j = canceled);
            self.finish_live(id);
            return Ok(job);
        }
        if let Some(l) = self.shared.live.lock().unwrap().get(id) {
            if l.job.progress.stage == Stage::Publishing {
                return Err(Error::new(ErrorCode::JobFinished, format!("job {id} is publishing its result")));
            }
            l.cancel.store(true, Ordering::Relaxed);
            return Ok(l.job.clone());
        }
        self.cancel_shared(job).await
    }

    /// Applies `f` to the live record and tells subscribers (a state event).
    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Job {
        let mut live = self.shared.live.lock().unwrap();
        let l = live.get_mut(id).expect("a live job");
        f(&mut l.job);
        let _ = l.events.send(JobEvent::State(Box::new(l.job.clone())));
        l.job.clone()
    }

    fn send(&self, id: &str, event: JobEvent) {
        if let Some(l) = self.shared.live.lock().unwrap().get(id) {
            let _ = l.events.send(event);
        }
    }

    /// A finished job leaves memory; its record stays in the registry.
    fn finish_live(&self, id: &str) {
        self.shared.live.lock().unwrap().remove(id);
    }

    /// A runtime and a registry client of the calling thread's own. A connection pool shared with
    /// the HTTP runtimes would park connections on a runtime that only runs while this thread is
    /// inside `block_on`. `None` (logged) when the registry cannot be opened.
    fn thread_client(&self, who: &str) -> Option<(tokio::runtime::Runtime, Registry)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        match Registry::open(&self.config.registry) {
            Ok(r) => Some((rt, r)),
            Err(e) => {
                tracing::error!(error = %e, "{who} cannot open the registry; it stops");
                None
            }
        }
    }

    fn work(&self) {
        let Some((rt, registry)) = self.thread_client("a job worker") else { return };
        loop {
            let id = {
                let mut q = self.shared.queue.lock().unwrap();
                loop {
                    if self.shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(id) = q.pop_front() {
                        break id;
                    }
                    q = self.shared.wake.wait(q).unwrap();
                }
            };
            self.run(&rt, &registry, &id, Ownership::Local);
        }
    }

    /// Runs job `id` (already live), owned by this process or under a `petal worker`'s lease.
    fn run(&self, rt: &tokio::runtime::Runtime, registry: &Registry, id: &str, owner: Ownership) {
        let cancel = match self.shared.live.lock().unwrap().get(id) {
            Some(l) => l.cancel.clone(),
            None => return,
        };
        let job = self.update(id, |j| {
            j.state = JobState::Running;
            j.started_at = Some(crate::foundation::clock::now_rfc3339());
            j.progress = Progress { stage: Stage::ReadingDataset, ..Default::default() };
            // The epochs of an earlier run come back with its checkpoints (`Event::Resumed`).
            j.epochs.clear();
            owner.stamp(j);
        });
        if let Err(e) = rt.block_on(registry.put_job(&job)) {
            tracing::error!(job = id, error = %e, "cannot record that the job started");
        }
        let worker = owner.worker();
        tracing::info!(job = id, attempt = job.attempt, worker = worker.as_deref().unwrap_or(""), "job started");
        let heartbeat = owner.start_heartbeat(self, id, &cancel);
        // A panic inside libtorch (an allocation that fails, say) fails this job, not the worker.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.train_and_publish(rt, registry, &job, &cancel, &owner)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(Error::new(ErrorCode::TrainingFailed, format!("training stopped: {what}")))
        });
        if let Some(h) = heartbeat {
            h.stop();
        }
        // Fenced: nothing more is written for a job another worker holds now.
        let stopped = matches!(&outcome, Err(e) if e.code == ErrorCode::TrainingCanceled);
        if owner.settled_elsewhere(self, rt, registry, id, stopped) {
            return;
        }
        if stopped && self.shared.stopping.load(Ordering::SeqCst) && matches!(owner, Ownership::Local) {
            self.requeue_for_restart(rt, registry, id);
            return;
        }
        self.record_end(rt, registry, id, &owner, &outcome);
    }

    /// Writes how the run of `id` ended, retrying: the end must reach the registry, or the job
    /// would read `running` forever.
    fn record_end(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
        owner: &Ownership,
        outcome: &Result<JobResult>,
    ) {
        let job = self.update(id, |j| match outcome {
            Ok(r) => {
                j.end(JobState::Succeeded, Stage::Done, None);
                j.progress.percent = 100.0;
                j.progress.eta_s = Some(0.0);
                j.result = Some(r.clone());
            }
            Err(e) if e.code == ErrorCode::TrainingCanceled => {
                j.end(JobState::Canceled, Stage::Canceled, Some(e.into()))
            }
            Err(e) => j.end(JobState::Failed, Stage::Failed, Some(e.into())),
        });
        crate::telemetry::metrics::global().jobs_finished.with_label_values(&[job.state.as_str()]).inc();
        match outcome {
            Ok(r) => tracing::info!(job = id, model = %r.model, version = r.version, "job succeeded"),
            Err(e) => tracing::warn!(job = id, code = e.code.as_str(), error = %e, "job did not succeed"),
        }
        for attempt in 1..=5 {
            if attempt > 1 && !owner.may_write_end(self, rt, registry, id) {
                return;
            }
            match rt.block_on(registry.put_job(&job)) {
                Ok(()) => {
                    // An ended job is never resumed; retention removes what this leaves.
                    if let Err(e) = rt.block_on(registry.remove_checkpoints(id)) {
                        tracing::warn!(job = id, error = %e, "cannot remove the job's checkpoints; retention will");
                    }
                    owner.ended(rt, registry);
                    self.finish_live(id);
                    return;
                }
                Err(e) => {
                    tracing::error!(job = id, attempt, error = %e, "cannot record the job's end");
                    std::thread::sleep(Duration::from_secs(attempt));
                }
            }
        }
        // Still not recorded: the live (terminal) record keeps answering for it (`All`), or the
        // lease expires and another worker runs the job again (`Worker`).
    }

    fn train_and_publish(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        job: &Job,
        cancel: &AtomicBool,
        owner: &Ownership,
    ) -> Result<JobResult> {
        let canceled = || {
            if cancel.load(Ordering::Relaxed) {
                Err(Error::new(ErrorCode::TrainingCanceled, "canceled"))
            } else {
                Ok(())
            }
        };
        canceled()?;
        let work_dir = &self.config.jobs.work_dir;
        crate::foundation::files::create_dir_all(work_dir)?;
        let work = tempfile::Builder::new()
            .prefix(&staging_prefix("job"))
            .tempdir_in(work_dir)
            .map_err(|e| Error::io("creating a job folder in", work_dir, e))?;
        let run = self.prepare(rt, registry, job, work.path())?;
        let mut warnings = run.data.warnings.clone();
        warnings.extend(self.checkpoint_warnings(&run));
        self.update(&job.id, |j| {
            j.progress.stage = Stage::Training;
            j.warnings.extend(warnings);
        });
        let run_dir = work.path().join("run");
        let mut on_event = self.progress_recorder(rt, registry, &job.id, owner);
        let plan = FinetuneRun {
            dataset: &run.data,
            backbones: &run.backbones,
            recipe: &run.recipe,
            device: run.device,
            out: &run_dir,
            command: None,
        };
        let max_bytes = self.config.jobs.checkpoint_max_bytes;
        let mut store =
            checkpoints::RegistryCheckpoints { rt, registry, job: &job.id, max_bytes, lease: owner.lease() };
        let steering = Steering {
            cancel,
            preempt: Some(&self.shared.stopping),
            checkpoints: (max_bytes > 0).then_some(&mut store as &mut dyn crate::train::checkpoint::CheckpointStore),
        };
        let summary = crate::train::finetune::finetune(&plan, steering, &mut on_event)?;
        let has_test = run.data.test_images > 0;
        drop(run);
        canceled()?;
        owner.fence_before_publishing(rt, registry)?;
        self.update(&job.id, |j| j.progress.stage = Stage::Publishing);
        let manifest = self.publish(rt, registry, job, work.path(), has_test)?;
        Ok(JobResult {
            model: manifest.model,
            version: manifest.version,
            winner: summary.winner,
            best_val_accuracy: summary.best_val_accuracy,
            backbones: summary.results.iter().map(|r| (r.backbone.name().to_string(), r.best_val_accuracy)).collect(),
            promoted: job.spec.promote.clone(),
        })
    }

    /// What a run needs before it trains: the dataset (fetched into `work/dataset.archive` and read
    /// as the spec says), the recipe, the device and each backbone's starting weights.
    fn prepare(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        job: &Job,
        work: &std::path::Path,
    ) -> Result<Prepared> {
        let spec = &job.spec;
        let archive = work.join("dataset.archive");
        rt.block_on(registry.fetch_dataset(&job.dataset.sha256, &archive))?;
        let recipe = spec.recipe();
        // The archive stays until the end: the published version is evaluated on its validation
        // images, read again as the serving path reads them.
        let data = crate::dataset::load(&archive, &spec.ingest_options(&self.config.jobs), &recipe.eval_transform)?;
        let device = crate::train::device::select(spec.device)?;
        let store = crate::train::weights::store::WeightStore::from_config(&self.config.weights);
        let mut backbones = Vec::new();
        for &arch in &spec.backbones {
            let w = spec.weights.get(arch.name()).map(String::as_str);
            backbones.push((arch, crate::train::finetune::resolve_weights(arch, w, &store)?));
        }
        Ok(Prepared { data, recipe, device, backbones })
    }

    /// Backbones that train without checkpoints: theirs would be over `jobs.checkpoint_max_bytes`.
    fn checkpoint_warnings(&self, run: &Prepared) -> Vec<String> {
        let max = self.config.jobs.checkpoint_max_bytes;
        let classes = run.data.classes.len() as i64;
        run.backbones
            .iter()
            .map(|(arch, _)| (arch, crate::train::checkpoint::estimate_bytes(*arch, classes)))
            .filter(|&(_, bytes)| max > 0 && bytes > max)
            .map(|(arch, bytes)| {
                format!(
                    "{arch} trains without checkpoints: each would take about {bytes} bytes, over \
                     jobs.checkpoint_max_bytes ({max}); if this run is stopped it starts again from the beginning"
                )
            })
            .collect()
    }

    /// `petal serve` shutting down: the job stopped (after saving a checkpoint) and goes back to
    /// the queue, where the next start finds it and resumes it.
    fn requeue_for_restart(&self, rt: &tokio::runtime::Runtime, registry: &Registry, id: &str) {
        let job = self.update(id, |j| {
            j.state = JobState::Queued;
            j.started_at = None;
            j.progress = Progress { stage: Stage::Queued, ..Default::default() };
            j.warnings.push(
                "petal stopped while this job was running; it goes on from its last checkpoint when petal starts again"
                    .into(),
            );
        });
        if let Err(e) = rt.block_on(registry.put_job(&job)) {
            tracing::warn!(job = id, error = %e, "cannot record that the job is queued again; it is marked interrupted at the next start");
        }
        self.finish_live(id);
    }

    /// The trainer's events as the job's live progress and epochs, sent to followers and (when
    /// the run records its own epochs) written to the registry.
    fn progress_recorder<'a>(
        &'a self,
        rt: &'a tokio::runtime::Runtime,
        registry: &'a Registry,
        id: &'a str,
        owner: &'a Ownership,
    ) -> impl FnMut(&Event) + 'a {
        let mut last_progress = Instant::now() - Duration::from_secs(1);
        move |e: &Event| match e {
            Event::Step { backbone, phase, epoch, epochs, step, steps, images_per_s, progress, eta_s, .. } => {
                if last_progress.elapsed() < Duration::from_millis(250) && step != steps {
                    return;
                }
                last_progress = Instant::now();
                let p = Progress {
                    stage: Stage::Training,
                    backbone: Some(*backbone),
                    phase: Some(*phase),
                    epoch: Some(*epoch),
                    epochs: Some(*epochs),
                    step: Some(*step),
                    steps: Some(*steps),
                    percent: (progress * 100.0).clamp(0.0, 100.0),
                    eta_s: eta_s.is_finite().then_some(*eta_s),
                    images_per_s: Some(*images_per_s),
                };
                if let Some(l) = self.shared.live.lock().unwrap().get_mut(id) {
                    l.job.progress = p.clone();
                }
                self.send(id, JobEvent::Progress(p));
            }
            Event::Epoch(m) => {
                self.record(rt, registry, id, owner, |j| j.epochs.push(m.clone()));
                self.send(id, JobEvent::Epoch(m.clone()));
            }
            Event::Checkpoint(c) => {
                self.record(rt, registry, id, owner, |j| j.checkpoint = Some(c.clone()));
                self.send(id, JobEvent::Checkpoint(c.clone()));
            }
            Event::Resumed(r) => {
                tracing::info!(job = id, backbone = %r.backbone, from = ?r.from, next = ?r.next, discarded = ?r.discarded, "resuming");
                self.record(rt, registry, id, owner, |j| {
                    // The checkpoint's epochs replace whatever this backbone had.
                    j.epochs.retain(|e| e.backbone != r.backbone);
                    j.epochs.extend(r.epochs.iter().cloned());
                    j.resumes.push(crate::jobs::ResumeRecord {
                        attempt: j.attempt,
                        at: crate::foundation::clock::now_rfc3339(),
                        backbone: r.backbone,
                        from: r.from,
                        next: r.next,
                        optimizer_steps: r.optimizer_steps,
                        epochs_restored: r.epochs.len(),
                        discarded: r.discarded.clone(),
                    });
                });
                self.send(id, JobEvent::Resumed(r.clone()));
            }
        }
    }

    /// Applies `f` to the live record of `id`, and writes it to the registry when the run records
    /// its own changes (else the heartbeat does).
    fn record(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        id: &str,
        owner: &Ownership,
        f: impl FnOnce(&mut Job),
    ) {
        let snapshot = {
            let mut live = self.shared.live.lock().unwrap();
            live.get_mut(id).map(|l| {
                f(&mut l.job);
                l.job.clone()
            })
        };
        if let Some(j) = snapshot.filter(|_| owner.records_epochs()) {
            if let Err(e) = rt.block_on(registry.put_job(&j)) {
                tracing::warn!(job = %j.id, error = %e, "cannot record the job's progress");
            }
        }
    }

    /// Publishes the run's winner (under `work/run`) as a new version of the spec's model, with the
    /// dataset's recorded terms (the spec may only add to them), the job as its provenance, and its
    /// evaluation on the validation images of `work/dataset.archive` (and on its `test/` images when
    /// `has_test`).
    fn publish(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &Registry,
        job: &Job,
        work: &std::path::Path,
        has_test: bool,
    ) -> Result<crate::registry::Manifest> {
        let spec = &job.spec;
        let run_dir = work.join("run");
        let options = spec.ingest_options(&self.config.jobs);
        let (archive, transform) = (work.join("dataset.archive"), spec.recipe().eval_transform);
        let set = crate::dataset::load_eval(&archive, &options, &transform, crate::dataset::EvalSplit::Val)?;
        let test = has_test
            .then(|| crate::dataset::load_eval(&archive, &options, &transform, crate::dataset::EvalSplit::Test))
            .transpose()?;
        let evaluate = crate::publish::EvaluateOn {
            set: &set,
            test: test.as_ref(),
            onnxruntime: &self.config.onnxruntime,
            engine: &self.config.inference.engine,
        };
        let recorded = rt.block_on(registry.dataset(&job.dataset.sha256))?;
        let dataset_terms =
            crate::registry::datasets::combined_terms(recorded.terms.as_deref(), spec.dataset.terms.as_deref());
        let opts = crate::publish::PublishRun {
            model: spec.model.clone(),
            alias: spec.promote.clone(),
            by: format!("job {}", job.id),
            dataset_name: job.dataset.name.clone(),
            dataset_terms,
            fp16: false,
            with_checkpoint: true,
            command: Some(format!(
                "POST /finetune with the spec of job {} (registry jobs/{}.json) on dataset sha256 {}",
                job.id, job.id, job.dataset.sha256
            )),
            hardware: None,
            acknowledge_terms: spec.acknowledge_terms,
            job: Some(job.id.clone()),
        };
        let version = crate::publish::prepare_run(&run_dir, &opts, Some(evaluate))?;
        rt.block_on(crate::publish::publish_prepared(registry, version, &opts, self.config.registry.usage))
    }

    /// The submission policy's limit on active jobs: `owner` (a token's name; `None` without
    /// tokens) may have at most `jobs.max_active_per_caller` jobs queued or running.
    pub async fn check_room_for(&self, owner: Option<&str>) -> Result<()> {
        let max = self.config.jobs.max_active_per_caller;
        let active = self
            .list()
            .await?
            .iter()
            .filter(|j| j.owner.as_deref() == owner && matches!(j.state, JobState::Queued | JobState::Running))
            .count();
        if active < max {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::TooManyJobs,
            format!(
                "{} {active} jobs queued or running; the limit is {max} (jobs.max_active_per_caller): wait for one to \
                 end, or cancel one",
                owner.map_or("there are".to_string(), |o| format!("{o} has"))
            ),
        )
        .with_header("retry-after", "60"))
    }

    /// Sets the job gauges of `telemetry::metrics`: jobs queued and running (the registry's view,
    /// live records first), and the training images per second of the jobs this process runs.
    pub async fn update_metrics(&self) {
        let m = crate::telemetry::metrics::global();
        if let Ok(jobs) = self.list().await {
            for state in [JobState::Queued, JobState::Running] {
                let n = jobs.iter().filter(|j| j.state == state).count();
                m.jobs.with_label_values(&[state.as_str()]).set(n as i64);
            }
        }
        let rate: f64 = self
            .shared
            .live
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.job.state == JobState::Running)
            .filter_map(|l| l.job.progress.images_per_s)
            .sum();
        m.job_images_per_second.set(rate);
    }

    /// Where uploads are staged before they are checked and stored.
    pub fn work_dir(&self) -> PathBuf {
        self.config.jobs.work_dir.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// What a run trains on and with.
struct Prepared {
    data: crate::dataset::Dataset,
    recipe: crate::train::recipe::Recipe,
    device: tch::Device,
    backbones: Vec<(crate::train::arch::Arch, StartingWeights)>,
}

/// The name prefix of what this process stages under `jobs.work_dir` (`upload-…`, `job-…`): the
/// kind and the process id, so that a process starting later removes only what dead processes
/// left behind — several processes may share the folder.
pub fn staging_prefix(kind: &str) -> String {
    format!("{kind}-{}-", std::process::id())
}

/// Whether `name` under `jobs.work_dir` was staged by a process that is gone: one with this
/// process's id (an earlier run, in a container where every run is pid 1), or, where `/proc`
/// tells, one no longer running. Names without a process id come from older versions.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("upload-").or_else(|| name.strip_prefix("job-")) else { return false };
    match rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) if pid == std::process::id() => true,
        Some(pid) => {
            let proc = std::path::Path::new("/proc");
            proc.join("self").exists() && !proc.join(pid.to_string()).exists()
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_gone_processes_staged_is_a_leftover() {
        let mine = format!("{}x1y2", staging_prefix("job"));
        assert!(mine.starts_with("job-") && is_leftover(&mine));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let theirs = format!("upload-{}-abc", child.id());
        assert!(!is_leftover(&theirs), "a live process's upload is not a leftover");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_leftover(&theirs), "a dead process's upload is");
        assert!(is_leftover("job-Ab3xYz"), "older names are");
        assert!(!is_leftover("dataset.archive"));
        assert!(!is_leftover("jobs"));
    }
}
