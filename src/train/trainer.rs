//! The two-phase fine-tuning recipe (docs/reference_experiment.md) for one backbone, and for several (the best
//! validation accuracy wins).
//!
//! Phase 1 trains the new head only (every other parameter frozen; batch norm still in training
//! mode, as in the reference). Phase 2 starts from the best checkpoint so far and trains every
//! layer with per-layer learning rates (`recipe::lr_groups`). After every epoch the validation
//! set is evaluated (eval transform, eval mode); the best checkpoint by validation accuracy is kept
//! across both phases. Batches are prepared by worker threads (decode when not cached, augment,
//! normalise), each batch from its own seeded generator, and libtorch's generator (dropout,
//! stochastic depth) is reseeded before every batch, so a run is repeatable whatever the thread
//! timing — and can stop anywhere and go on from a training checkpoint (`checkpoint`): one is
//! saved after every epoch, and where the run is when asked to stop for a shutdown.
//! Cancellation is checked between steps.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::{Dataset, Sample};
use crate::error::{Error, ErrorCode, Result};
use crate::train::arch::{Arch, Op};
use crate::train::checkpoint::{self, BestSoFar, CheckpointStore, EpochSums, Position, Slot};
use crate::train::loader::{batch_slices, load_batches, mix};
use crate::train::model::Model;
use crate::train::optim::{Adam, LossScaler};
use crate::train::precision::Precision;
use crate::train::recipe::{self, EarlyStop, Recipe};
use crate::train::tensor_cache;

/// Progress, as it happens.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One optimiser step done.
    Step {
        backbone: Arch,
        phase: u8,
        /// Epoch within the phase, 1-based.
        epoch: usize,
        epochs: usize,
        step: usize,
        steps: usize,
        loss: f64,
        images_per_s: f64,
        /// Whole run (every backbone), 0..1.
        progress: f64,
        eta_s: f64,
    },
    /// An epoch and its evaluation done.
    Epoch(EpochMetrics),
    /// A training checkpoint was saved.
    Checkpoint(CheckpointSaved),
    /// The run looked for a checkpoint to go on from.
    Resumed(Resumed),
}

/// A saved training checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointSaved {
    pub backbone: Arch,
    /// What runs next from it (phase 3: the backbone is trained).
    pub next: Position,
    /// Optimiser steps taken in the phase it was saved in.
    pub optimizer_steps: u64,
    pub bytes: u64,
    /// Where it was written: `last`, and `best` when its epoch is the best so far.
    pub slots: Vec<Slot>,
    /// Saved because the run was asked to stop (a shutdown), not at an epoch's end.
    pub on_stop: bool,
}

/// Where a run went on from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resumed {
    pub backbone: Arch,
    /// The checkpoint it resumed from; `None`: none could be used, it starts from the beginning.
    pub from: Option<Slot>,
    /// What it runs next (phase 3: the backbone was already trained).
    pub next: Option<Position>,
    /// Optimiser steps taken in that phase before the checkpoint.
    pub optimizer_steps: u64,
    /// Checkpoints found and not used, and why (damaged: sha256 mismatch; of another run).
    pub discarded: Vec<String>,
    /// The epochs measured before the checkpoint.
    pub epochs: Vec<EpochMetrics>,
}

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochMetrics {
    pub backbone: Arch,
    pub phase: u8,
    /// Epoch within the phase, 1-based.
    pub epoch: usize,
    /// The head's (phase 1) or the top group's (phase 2) learning rate during the epoch.
    pub lr: f64,
    /// Mean loss and accuracy over the epoch's training batches (augmented, training mode).
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the whole train set with the eval transform, when `eval_train` is on.
    pub eval_train_loss: Option<f64>,
    pub eval_train_accuracy: Option<f64>,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Training images per second (the epoch's training part).
    pub images_per_s: f64,
    /// Seconds for the epoch, evaluation included.
    pub seconds: f64,
    /// This epoch gave the best validation accuracy so far.
    pub best: bool,
}

/// One backbone's result.
pub struct Trained {
    pub backbone: Arch,
    pub model: Model,
    pub best_val_accuracy: f64,
    /// (phase, epoch) of the best checkpoint.
    pub best_epoch: (u8, usize),
    pub epochs: Vec<EpochMetrics>,
    /// How each phase that ran ended.
    pub phases: Vec<PhaseEnd>,
    pub precision: Precision,
    pub seconds: f64,
}

/// How a phase ended: after its planned epochs, or early (and why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseEnd {
    pub phase: u8,
    /// Epochs run.
    pub epochs: usize,
    /// Epochs the recipe planned.
    pub planned: usize,
    /// `completed`, or why it stopped early (`early stopping: …`).
    pub stopped: String,
}

/// Where a run is: the device, cancellation, progress reporting, checkpoints.
pub struct Context<'a> {
    pub device: Device,
    pub cancel: &'a AtomicBool,
    pub on_event: &'a mut dyn FnMut(&Event),
    /// Steps of the whole run, for progress and ETA (set by `finetune`).
    pub total_images: f64,
    pub done_images: f64,
    pub started: Instant,
    /// Where training checkpoints are kept and looked for; `None`: nowhere (a run starts from
    /// the beginning and keeps nothing).
    pub checkpoints: Option<&'a mut dyn CheckpointStore>,
    /// Set when the run is to save where it is and stop: its worker shuts down.
    pub preempt: Option<&'a AtomicBool>,
}

impl<'a> Context<'a> {
    pub fn new(device: Device, cancel: &'a AtomicBool, on_event: &'a mut dyn FnMut(&Event)) -> Context<'a> {
        Context {
            device,
            cancel,
            on_event,
            total_images: 0.0,
            done_images: 0.0,
            started: Instant::now(),
            checkpoints: None,
            preempt: None,
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.preempted() {
            Err(Error::new(ErrorCode::TrainingCanceled, "training stopped for a shutdown"))
        } else if self.cancel.load(Ordering::Relaxed) {
            Err(Error::new(ErrorCode::TrainingCanceled, "training was canceled"))
        } else {
            Ok(())
        }
    }

    fn preempted(&self) -> bool {
        self.preempt.is_some_and(|p| p.load(Ordering::Relaxed))
    }
}

/// Images (training + evaluation) one backbone's recipe processes, for progress and ETA.
pub fn planned_images(dataset: &Dataset, recipe: &Recipe) -> f64 {
    let (t, v) = (dataset.train.len() as f64, dataset.val.len() as f64);
    let per_epoch_eval = v + if recipe.eval_train { t } else { 0.0 };
    // Cached features: one forward pass over both sets; the epochs on features are negligible.
    let p1 = if recipe.phase1.cached_features { t + v } else { recipe.phase1.epochs as f64 * (t + per_epoch_eval) };
    p1 + recipe.phase2.epochs as f64 * (t + per_epoch_eval)
}

/// Runs the recipe for one backbone, from `weights` (torchvision names; the head is replaced) or
/// from scratch when `None` — or goes on from the newest usable checkpoint of the same run in
/// `ctx.checkpoints`.
pub fn train(
    arch: Arch,
    weights: Option<&[(String, Tensor)]>,
    dataset: &Dataset,
    recipe: &Recipe,
    ctx: &mut Context,
) -> Result<Trained> {
    if recipe.batch_size == 0 {
        return Err(Error::invalid_request("batch_size must be at least 1"));
    }
    let started = Instant::now();
    // Freed tensors kept for the next step instead of faulted in again (bounded; freed at the end).
    let _cache = tensor_cache::session();
    let device = ctx.device;
    let cuda = device.is_cuda();
    if cuda {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(recipe.seed as i64);
    let num_classes = dataset.classes.len() as i64;
    let mut model = Model::new(arch.network(num_classes), device);
    if let Some(w) = weights {
        model.load_state_dict(w, true)?;
    }
    let channels_last = recipe.channels_last.unwrap_or(true);
    if channels_last {
        to_channels_last(&model);
    }
    let class_weights = (recipe.imbalance == recipe::Imbalance::WeightedLoss).then(|| {
        let w: Vec<f32> = recipe::class_weights(&dataset.class_counts()).into_iter().map(|w| w as f32).collect();
        Tensor::from_slice(&w).to_device(device)
    });
    let fingerprint = ctx
        .checkpoints
        .as_ref()
        .filter(|store| checkpoint::estimate_bytes(arch, num_classes) <= store.max_bytes())
        .map(|_| checkpoint::fingerprint(arch, weights, &dataset.digest, &dataset.class_names, recipe));
    let mut run = Run {
        recipe,
        dataset,
        step: StepOptions {
            precision: Precision::choose(recipe.mixed_precision, device, arch),
            channels_last,
            class_weights,
            label_smoothing: recipe.label_smoothing,
        },
        scaler: LossScaler::new(device),
        epochs: Vec::new(),
        best: None,
        phases: Vec::new(),
        fingerprint,
        resume: None,
        images_at_start: ctx.done_images,
        seconds_before: 0.0,
        started,
    };
    let start = run.resume_from_checkpoint(&mut model, ctx)?;
    if start < Position::DONE {
        if start.phase <= 1 {
            run.phase1(&mut model, ctx)?;
        }
        if recipe.phase2.epochs > 0 {
            // Phase 2 starts from the best model so far, also when it resumes at its start.
            if start.phase <= 1 || start == (Position { phase: 2, epoch: 0, step: 0 }) {
                if let Some(best) = &run.best {
                    model.load_state_dict(&best.state, false)?;
                }
            }
            run.phase2(&mut model, ctx)?;
        }
    }
    let best = run.best.take().ok_or_else(|| Error::invalid_request("the recipe has no epoch to run"))?;
    model.load_state_dict(&best.state, false)?;
    run.best = Some(Best { state: Vec::new(), ..best });
    if start < Position::DONE {
        run.save(&model, None, Position::DONE, (None, None), false, ctx);
    }
    let best = run.best.take().expect("kept");
    let seconds = run.seconds();
    Ok(Trained {
        backbone: arch,
        model,
        best_val_accuracy: best.val_accuracy,
        best_epoch: best.at,
        epochs: run.epochs,
        phases: run.phases,
        precision: run.step.precision,
        seconds,
    })
}

/// The best checkpoint so far.
struct Best {
    val_accuracy: f64,
    /// (phase, epoch)
    at: (u8, usize),
    /// The model's state, on the CPU; empty when it is the model's own (the run's end).
    state: Vec<(String, Tensor)>,
}

/// What one epoch measured, for `Run::finish_epoch`.
struct EpochResult {
    /// (phase, epoch within it, 1-based)
    at: (u8, usize),
    lr: f64,
    /// Training loss, accuracy and images/s, as the epoch went.
    train: (f64, f64, f64),
    /// Loss and accuracy over the whole train set, eval transform (`eval_train`).
    train_eval: Option<(f64, f64)>,
    /// Validation loss and accuracy.
    val: (f64, f64),
    started: Instant,
}

/// Where a resumed run goes on, with what the phase of `next` needs.
struct ResumePoint {
    next: Position,
    partial: Option<EpochSums>,
    early_stop: Option<EarlyStop>,
    optim: std::collections::HashMap<String, Tensor>,
}

/// An epoch in progress: the batch next to run and the sums so far.
struct EpochProgress {
    step: usize,
    sums: EpochSums,
}

struct Run<'a> {
    recipe: &'a Recipe,
    dataset: &'a Dataset,
    step: StepOptions,
    scaler: LossScaler,
    epochs: Vec<EpochMetrics>,
    best: Option<Best>,
    phases: Vec<PhaseEnd>,
    /// The run's identity when it keeps checkpoints (`checkpoint::fingerprint`).
    fingerprint: Option<String>,
    resume: Option<ResumePoint>,
    /// `ctx.done_images` when this backbone started.
    images_at_start: f64,
    /// Seconds earlier attempts trained this backbone.
    seconds_before: f64,
    started: Instant,
}

impl Run<'_> {
    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Loads the newest usable checkpoint of this run, if any, into `model` and `self`, and says
    /// so (`Event::Resumed`); returns where the run goes on (the beginning when there is none).
    fn resume_from_checkpoint(&mut self, model: &mut Model, ctx: &mut Context) -> Result<Position> {
        let beginning = Position { phase: 1, epoch: 0, step: 0 };
        let (Some(fingerprint), Some(store)) = (&self.fingerprint, ctx.checkpoints.as_deref_mut()) else {
            return Ok(beginning);
        };
        let backbone = model.network.arch;
        let (found, discarded) = checkpoint::find(store, backbone, fingerprint);
        let Some(found) = found else {
            if !discarded.is_empty() {
                let none =
                    Resumed { backbone, from: None, next: None, optimizer_steps: 0, discarded, epochs: Vec::new() };
                (ctx.on_event)(&Event::Resumed(none));
            }
            return Ok(beginning);
        };
        let (c, state) = (&found.checkpoint, &found.checkpoint.state);
        model.load_state_dict(&c.group("model"), false)?;
        let best = state.best.as_ref().ok_or_else(|| Error::new(ErrorCode::IntegrityError, "no best epoch"))?;
        let best_state = if best.stored { c.group("best") } else { snapshot(model) };
        self.best = Some(Best { val_accuracy: best.val_accuracy, at: best.at, state: best_state });
        self.epochs = state.epochs.clone();
        self.phases = state.phases.clone();
        self.scaler.load_state_tensors(&c.group_map("scaler"));
        self.seconds_before = state.seconds;
        ctx.done_images += state.images_done;
        self.resume = Some(ResumePoint {
            next: state.next,
            partial: state.partial,
            early_stop: state.early_stop.clone(),
            optim: c.group_map("optim"),
        });
        let resumed = Resumed {
            backbone,
            from: Some(found.slot),
            next: Some(state.next),
            optimizer_steps: state.optimizer_steps,
            discarded: found.discarded.clone(),
            epochs: state.epochs.clone(),
        };
        (ctx.on_event)(&Event::Resumed(resumed));
        Ok(state.next)
    }

    /// The resume point when it is inside `phase` (past its start): the optimiser's state, early
    /// stopping's, and where the phase goes on.
    fn resume_in(&mut self, phase: u8, adam: &mut Adam) -> Result<Option<ResumePoint>> {
        let Some(r) = self.resume.take_if(|r| r.next.phase == phase) else { return Ok(None) };
        if r.next.epoch == 0 && r.next.step == 0 {
            return Ok(None);
        }
        adam.load_state_tensors(&r.optim)?;
        Ok(Some(r))
    }

    fn phase1(&mut self, model: &mut Model, ctx: &mut Context) -> Result<()> {
        let spec = &self.recipe.phase1;
        let head = format!("{}.", model.network.head_name);
        let mut head_params = Vec::new();
        for (name, t) in model.trainable() {
            let is_head = name.starts_with(&head);
            let _ = t.set_requires_grad(is_head);
            if is_head {
                head_params.push(t);
            }
        }
        let mut adam = Adam::new(self.recipe.adam.clone(), vec![("head".into(), spec.lr, head_params)]);
        let resume = self.resume_in(1, &mut adam)?;
        let cached = if spec.cached_features { Some(self.cache_features(model, ctx)?) } else { None };
        self.run_phase(1, model, &mut adam, cached.as_ref(), resume, ctx)
    }

    fn phase2(&mut self, model: &mut Model, ctx: &mut Context) -> Result<()> {
        let spec = &self.recipe.phase2;
        let vars = model.vs.variables();
        let groups: Vec<(String, f64, Vec<Tensor>)> = recipe::lr_groups(&model.network, spec)
            .into_iter()
            .map(|g| {
                let params = g
                    .params
                    .iter()
                    .map(|p| {
                        let t = vars[p].shallow_clone();
                        let _ = t.set_requires_grad(true);
                        t
                    })
                    .collect();
                (g.name, g.lr, params)
            })
            .collect();
        let mut adam = Adam::new(self.recipe.adam.clone(), groups);
        let resume = self.resume_in(2, &mut adam)?;
        self.run_phase(2, model, &mut adam, None, resume, ctx)
    }

    /// The epochs of `phase` (from `resume` on, when it resumes), each followed by evaluation, a
    /// checkpoint and early stopping's verdict.
    fn run_phase(
        &mut self,
        phase: u8,
        model: &mut Model,
        adam: &mut Adam,
        cached: Option<&Cached>,
        resume: Option<ResumePoint>,
        ctx: &mut Context,
    ) -> Result<()> {
        let (epochs, rule) = match phase {
            1 => (self.recipe.phase1.epochs, &self.recipe.phase1.early_stopping),
            _ => (self.recipe.phase2.epochs, &self.recipe.phase2.early_stopping),
        };
        let mut stop = rule.as_ref().map(EarlyStop::new);
        let (mut first, mut progress) = (0, EpochProgress { step: 0, sums: EpochSums::default() });
        if let Some(r) = resume {
            (first, stop) = (r.next.epoch, r.early_stop);
            progress = EpochProgress { step: r.next.step, sums: r.partial.unwrap_or_default() };
        }
        for epoch in first..epochs {
            let factor = match phase {
                1 => self.recipe.phase1.lr_factor(epoch),
                _ => self.recipe.phase2.lr_factor(epoch),
            };
            adam.scale_lr(factor);
            let t0 = Instant::now();
            let mut p = std::mem::replace(&mut progress, EpochProgress { step: 0, sums: EpochSums::default() });
            let at = (phase, epoch, epochs);
            let trained = match cached {
                Some(c) => self.train_epoch_cached(model, c, adam, at, &mut p, ctx),
                None => self.train_epoch(model, adam, at, &mut p, ctx),
            };
            // Evaluation, once the epoch's batches are done.
            let measured = trained.and_then(|()| {
                let val = match cached {
                    Some(c) => head_eval(model, &c.val, &c.val_labels, self.recipe.batch_size),
                    None => self.evaluate(model, &self.dataset.val, ctx)?,
                };
                let train_eval = match (cached, self.recipe.eval_train) {
                    (Some(c), true) => Some(head_eval(model, &c.train, &c.train_labels, self.recipe.batch_size)),
                    (None, true) => Some(self.evaluate(model, &self.dataset.train, ctx)?),
                    _ => None,
                };
                Ok((val, train_eval))
            });
            let (val, train_eval) = match measured {
                Ok(m) => m,
                Err(e) => {
                    let here = Position { phase, epoch, step: p.step };
                    return Err(self.stopped(e, model, adam, (here, p.sums), stop.as_ref(), ctx));
                }
            };
            let lr = match phase {
                1 => adam.groups[0].lr,
                _ => adam.groups.iter().map(|g| g.base_lr).fold(0.0, f64::max) * factor,
            };
            let s = &p.sums;
            let seen = s.seen.max(1) as f64;
            let train = (s.loss_sum / seen, s.correct as f64 / seen, s.seen as f64 / s.seconds.max(1e-9));
            let result = EpochResult { at: (phase, epoch + 1), lr, train, train_eval, val, started: t0 };
            let best = self.finish_epoch(model, ctx, result);
            let why = stop.as_mut().and_then(|s| s.update(epoch + 1, val.0, val.1));
            let ended = why.is_some() || epoch + 1 == epochs;
            if ended {
                let stopped = why.unwrap_or_else(|| "completed".into());
                self.phases.push(PhaseEnd { phase, epochs: epoch + 1, planned: epochs, stopped });
            }
            let next = if ended {
                Position { phase: phase + 1, epoch: 0, step: 0 }
            } else {
                Position { phase, epoch: epoch + 1, step: 0 }
            };
            self.save(model, Some(adam), next, (None, stop.as_ref().filter(|_| !ended)), best, ctx);
            if ended {
                return Ok(());
            }
            ctx.check_cancel()?;
        }
        if first >= epochs && !self.phases.iter().any(|p| p.phase == phase) {
            self.phases.push(PhaseEnd { phase, epochs, planned: epochs, stopped: "completed".into() });
        }
        Ok(())
    }

    /// The run stopped with `e` at `here`: when it was asked to stop for a shutdown, it saves a
    /// checkpoint there first (the error says so).
    fn stopped(
        &mut self,
        e: Error,
        model: &Model,
        adam: &Adam,
        (here, sums): (Position, EpochSums),
        stop: Option<&EarlyStop>,
        ctx: &mut Context,
    ) -> Error {
        if !ctx.preempted() || self.fingerprint.is_none() {
            return e;
        }
        let partial = (here.step > 0).then_some(sums);
        match self.save(model, Some(adam), here, (partial, stop), false, ctx) {
            Some(saved) => Error::new(
                e.code,
                format!(
                    "{}; saved a checkpoint at phase {} epoch {} step {} ({} optimiser steps) to go on from",
                    e.message,
                    here.phase,
                    here.epoch + 1,
                    here.step,
                    saved.optimizer_steps
                ),
            ),
            None => e,
        }
    }

    /// Saves a checkpoint of the run as it is, to go on at `next`: to the `last` slot, and to
    /// `best` too when `best`. A checkpoint that cannot be written is logged and training goes on
    /// (it then resumes from an earlier one, or from the beginning).
    fn save(
        &mut self,
        model: &Model,
        adam: Option<&Adam>,
        next: Position,
        (partial, early_stop): (Option<EpochSums>, Option<&EarlyStop>),
        best: bool,
        ctx: &mut Context,
    ) -> Option<CheckpointSaved> {
        let (Some(fingerprint), Some(store)) = (&self.fingerprint, ctx.checkpoints.as_deref_mut()) else {
            return None;
        };
        let backbone = model.network.arch;
        let stored_best = self.best.as_ref().filter(|b| !b.state.is_empty() && !best);
        let mut tensors: Vec<(String, Tensor)> =
            model.state_dict().into_iter().map(|(k, t)| (format!("model/{k}"), t)).collect();
        if let Some(b) = stored_best {
            tensors.extend(b.state.iter().map(|(k, t)| (format!("best/{k}"), t.shallow_clone())));
        }
        // The optimiser's state matters only inside the phase it belongs to: at a phase's start
        // the next phase begins with a new one.
        let adam = adam.filter(|_| next.epoch > 0 || next.step > 0);
        let optimizer_steps = adam.map_or(0, Adam::steps_taken);
        if let Some(adam) = adam {
            tensors.extend(adam.state_tensors().into_iter().map(|(k, t)| (format!("optim/{k}"), t)));
        }
        tensors.extend(self.scaler.state_tensors().into_iter().map(|(k, t)| (format!("scaler/{k}"), t)));
        let state = checkpoint::State {
            format: checkpoint::FORMAT,
            fingerprint: fingerprint.clone(),
            backbone,
            next,
            partial,
            epochs: self.epochs.clone(),
            phases: self.phases.clone(),
            best: self.best.as_ref().map(|b| BestSoFar {
                val_accuracy: b.val_accuracy,
                at: b.at,
                stored: stored_best.is_some(),
            }),
            early_stop: early_stop.cloned(),
            optimizer_steps,
            images_done: ctx.done_images - self.images_at_start,
            seconds: self.seconds_before + self.started.elapsed().as_secs_f64(),
            saved_at: crate::foundation::clock::now_rfc3339(),
        };
        let written = checkpoint::encode(&state, &tensors).and_then(|bytes| {
            let mut slots = vec![Slot::Last];
            store.put(backbone, Slot::Last, &bytes)?;
            if best {
                store.put(backbone, Slot::Best, &bytes)?;
                slots.push(Slot::Best);
            }
            Ok((bytes.len() as u64, slots))
        });
        match written {
            Ok((bytes, slots)) => {
                let on_stop = next.step > 0 || ctx.preempted();
                let saved = CheckpointSaved { backbone, next, optimizer_steps, bytes, slots, on_stop };
                (ctx.on_event)(&Event::Checkpoint(saved.clone()));
                Some(saved)
            }
            Err(e) => {
                tracing::warn!(backbone = backbone.name(), error = %e, "cannot save a training checkpoint");
                None
            }
        }
    }

    /// Keeps the model when this epoch is the best so far, and reports the epoch; returns
    /// whether it is the best.
    fn finish_epoch(&mut self, model: &Model, ctx: &mut Context, r: EpochResult) -> bool {
        let best = self.best.as_ref().is_none_or(|b| r.val.1 > b.val_accuracy);
        if best {
            self.best = Some(Best { val_accuracy: r.val.1, at: r.at, state: snapshot(model) });
        }
        let m = EpochMetrics {
            backbone: model.network.arch,
            phase: r.at.0,
            epoch: r.at.1,
            lr: r.lr,
            train_loss: r.train.0,
            train_accuracy: r.train.1,
            eval_train_loss: r.train_eval.map(|t| t.0),
            eval_train_accuracy: r.train_eval.map(|t| t.1),
            val_loss: r.val.0,
            val_accuracy: r.val.1,
            images_per_s: r.train.2,
            seconds: r.started.elapsed().as_secs_f64(),
            best,
        };
        (ctx.on_event)(&Event::Epoch(m.clone()));
        self.epochs.push(m);
        best
    }

    /// The training images of one epoch, in order: every image once, shuffled; or, with a balanced
    /// sampler, as many draws with replacement, each class equally likely. Seeded by (run seed,
    /// phase, epoch).
    fn epoch_order(&self, phase: u8, epoch: usize) -> Vec<usize> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(self.recipe.seed, phase, epoch, u64::MAX));
        let samples = &self.dataset.train;
        if self.recipe.imbalance != recipe::Imbalance::BalancedSampler {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            order.shuffle(&mut rng);
            return order;
        }
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.dataset.classes.len()];
        for (i, s) in samples.iter().enumerate() {
            by_class[s.label].push(i);
        }
        by_class.retain(|members| !members.is_empty());
        balanced_draws(&by_class, samples.len(), &mut rng)
    }

    /// One epoch over shuffled, augmented training batches, from batch `p.step` on; `p` follows
    /// the batches done, also when the epoch stops part-way.
    fn train_epoch(
        &mut self,
        model: &mut Model,
        adam: &mut Adam,
        (phase, epoch, epochs): (u8, usize, usize),
        p: &mut EpochProgress,
        ctx: &mut Context,
    ) -> Result<()> {
        let samples = &self.dataset.train;
        let order = self.epoch_order(phase, epoch);
        let steps = batch_slices(&order, self.recipe.batch_size, true).len();
        let seeds = (self.recipe.seed, phase, epoch);
        let t0 = Instant::now();
        let (how, scaler) = (&self.step, &mut self.scaler);
        // Sums stay on the device; reading them syncs, so on CUDA progress is read every few steps.
        let report_every = if ctx.device.is_cuda() { 20 } else { 1 };
        let mut loss_sum = Tensor::full([], p.sums.loss_sum, (Kind::Double, ctx.device));
        let mut correct = Tensor::full([], p.sums.correct as f64, (Kind::Int64, ctx.device));
        let (seen_before, seconds_before, first) = (p.sums.seen, p.sums.seconds, p.step);
        let mut seen = seen_before;
        let mut last_loss = f64::NAN;
        let mut step_done = first;
        let result = load_batches(self.recipe, samples, (&order, first), Some(seeds), ctx.device, |step, x, y| {
            ctx.check_cancel()?;
            reseed_libtorch(seeds, step);
            let (loss, ok) = train_step(model, (&x, &y), adam, scaler, how, None)?;
            let n = y.size()[0] as usize;
            loss_sum += loss.to_kind(Kind::Double) * n as f64;
            correct += ok;
            seen += n;
            step_done = step + 1;
            ctx.done_images += n as f64;
            if step % report_every == 0 || step + 1 == steps {
                last_loss = loss.double_value(&[]);
                if !last_loss.is_finite() {
                    return Err(Error::new(ErrorCode::TrainingFailed, format!("the loss became {last_loss}")));
                }
            }
            let ips = (seen - seen_before) as f64 / t0.elapsed().as_secs_f64();
            emit_step(ctx, model.network.arch, (phase, epoch + 1, epochs), (step + 1, steps), last_loss, ips);
            Ok(())
        });
        *p = EpochProgress {
            step: step_done,
            sums: EpochSums {
                loss_sum: loss_sum.double_value(&[]),
                correct: correct.int64_value(&[]),
                seen,
                seconds: seconds_before + t0.elapsed().as_secs_f64(),
            },
        };
        result
    }

    /// Phase 1 on cached features: the head alone, on shuffled batches of features (with the
    /// body's final dropout, if any, applied in training mode as the full model would), from
    /// batch `p.step` on.
    fn train_epoch_cached(
        &mut self,
        model: &mut Model,
        c: &Cached,
        adam: &mut Adam,
        (phase, epoch, epochs): (u8, usize, usize),
        p: &mut EpochProgress,
        ctx: &mut Context,
    ) -> Result<()> {
        let n = c.train.size()[0];
        let order: Vec<i64> = self.epoch_order(phase, epoch).into_iter().map(|i| i as i64).collect();
        let order = Tensor::from_slice(&order).to_device(c.train.device());
        let bs = self.recipe.batch_size as i64;
        let steps = (n + bs - 1) / bs;
        let dropout = trailing_dropout(&model.network.body);
        let (t0, seconds_before) = (Instant::now(), p.sums.seconds);
        let seeds = (self.recipe.seed, phase, epoch);
        for s in p.step as i64..steps {
            ctx.check_cancel()?;
            reseed_libtorch(seeds, s as usize);
            let idx = order.narrow(0, s * bs, bs.min(n - s * bs));
            let (x, y) = (c.train.index_select(0, &idx), c.train_labels.index_select(0, &idx));
            adam.zero_grad();
            let x = if dropout > 0.0 { x.dropout(dropout, true) } else { x };
            let logits = model.classify(&x, true);
            let loss = cross_entropy(&logits, &y, self.step.class_weights.as_ref(), self.step.label_smoothing);
            loss.backward();
            adam.step(None)?;
            let lv = loss.double_value(&[]);
            let k = y.size()[0];
            p.sums.loss_sum += lv * k as f64;
            p.sums.correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            p.sums.seen += k as usize;
            p.sums.seconds = seconds_before + t0.elapsed().as_secs_f64();
            p.step = s as usize + 1;
            let ips = ((s + 1) * bs).min(n) as f64 / t0.elapsed().as_secs_f64();
            emit_step(ctx, model.network.arch, (phase, epoch + 1, epochs), (s as usize + 1, steps as usize), lv, ips);
        }
        Ok(())
    }

    /// Mean loss and accuracy in eval mode with the eval transform.
    fn evaluate(&self, model: &Model, samples: &[Sample], ctx: &mut Context) -> Result<(f64, f64)> {
        let order: Vec<usize> = (0..samples.len()).collect();
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        let (precision, channels_last) = (self.step.precision, self.step.channels_last);
        tch::no_grad(|| {
            load_batches(self.recipe, samples, (&order, 0), None, ctx.device, |_, x, y| {
                ctx.check_cancel()?;
                let x = if channels_last { nhwc(&x) } else { x };
                let logits = precision.autocast(|| model.forward(&x, false)).to_kind(Kind::Float);
                loss_sum +=
                    logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
                correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
                ctx.done_images += y.size()[0] as f64;
                Ok(())
            })
        })?;
        let n = samples.len().max(1) as f64;
        Ok((loss_sum / n, correct as f64 / n))
    }

    /// The body's output for every train and validation image (eval transform, eval mode).
    fn cache_features(&self, model: &Model, ctx: &mut Context) -> Result<Cached> {
        let mut run = |samples: &[Sample]| -> Result<(Tensor, Tensor)> {
            let order: Vec<usize> = (0..samples.len()).collect();
            let (mut feats, mut labels) = (Vec::new(), Vec::new());
            tch::no_grad(|| {
                load_batches(self.recipe, samples, (&order, 0), None, ctx.device, |s, x, y| {
                    ctx.check_cancel()?;
                    let x = if self.step.channels_last { nhwc(&x) } else { x };
                    feats.push(self.step.precision.autocast(|| model.features(&x, false)).to_kind(Kind::Float));
                    labels.push(y);
                    ctx.done_images += x.size()[0] as f64;
                    emit_step(
                        ctx,
                        model.network.arch,
                        (1, 0, 0),
                        (s + 1, order.len().div_ceil(self.recipe.batch_size)),
                        0.0,
                        0.0,
                    );
                    Ok(())
                })
            })?;
            Ok((Tensor::cat(&feats, 0), Tensor::cat(&labels, 0)))
        };
        let (train, train_labels) = run(&self.dataset.train)?;
        let (val, val_labels) = run(&self.dataset.val)?;
        Ok(Cached { train, train_labels, val, val_labels })
    }
}

struct Cached {
    train: Tensor,
    train_labels: Tensor,
    val: Tensor,
    val_labels: Tensor,
}

fn head_eval(model: &Model, x: &Tensor, y: &Tensor, bs: usize) -> (f64, f64) {
    tch::no_grad(|| {
        let n = x.size()[0];
        let (mut loss, mut correct) = (0.0, 0i64);
        let bs = bs.max(1) as i64 * 16;
        let mut s = 0;
        while s < n {
            let k = bs.min(n - s);
            let logits = model.classify(&x.narrow(0, s, k), false);
            let yy = y.narrow(0, s, k);
            loss += logits.cross_entropy_loss::<Tensor>(&yy, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
            correct += logits.argmax(-1, false).eq_tensor(&yy).sum(Kind::Int64).int64_value(&[]);
            s += k;
        }
        (loss / n.max(1) as f64, correct as f64 / n.max(1) as f64)
    })
}

fn trailing_dropout(body: &[Op]) -> f64 {
    match body.last() {
        Some(Op::Dropout { p }) => *p,
        _ => 0.0,
    }
}

fn emit_step(
    ctx: &mut Context,
    backbone: Arch,
    (phase, epoch, epochs): (u8, usize, usize),
    (step, steps): (usize, usize),
    loss: f64,
    ips: f64,
) {
    let elapsed = ctx.started.elapsed().as_secs_f64();
    let progress = if ctx.total_images > 0.0 { (ctx.done_images / ctx.total_images).min(1.0) } else { 0.0 };
    let eta_s = if progress > 0.0 { elapsed / progress * (1.0 - progress) } else { f64::NAN };
    (ctx.on_event)(&Event::Step {
        backbone,
        phase,
        epoch,
        epochs,
        step,
        steps,
        loss,
        images_per_s: ips,
        progress,
        eta_s,
    });
}

/// `n` draws with replacement: a class uniformly, then one of its members uniformly — each image's
/// chance is `1 / (classes × images of its class)`, as with PyTorch's `WeightedRandomSampler`
/// weighted by `1 / images of the class`.
fn balanced_draws(by_class: &[Vec<usize>], n: usize, rng: &mut impl rand::Rng) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let members = &by_class[rng.gen_range(0..by_class.len())];
            members[rng.gen_range(0..members.len())]
        })
        .collect()
}

/// How training steps run: mixed precision, channels_last, per-class loss weights.
struct StepOptions {
    precision: Precision,
    channels_last: bool,
    class_weights: Option<Tensor>,
    label_smoothing: f64,
}

/// The training loss: mean cross-entropy, weighted per class when `weights` are given (PyTorch's
/// weighted mean: `Σ w_y·l / Σ w_y`), with `label_smoothing` (PyTorch's).
fn cross_entropy(logits: &Tensor, y: &Tensor, weights: Option<&Tensor>, label_smoothing: f64) -> Tensor {
    logits.cross_entropy_loss(y, weights, tch::Reduction::Mean, -100, label_smoothing)
}

/// One optimiser step on a batch (training mode, in `how.precision`).
/// Returns the loss (a detached scalar, float32) and the number of correct predictions, both on
/// the device: nothing here waits for the device unless loss scaling must check for overflow.
fn train_step(
    model: &Model,
    (x, y): (&Tensor, &Tensor),
    adam: &mut Adam,
    scaler: &mut LossScaler,
    how: &StepOptions,
    mut times: Option<&mut StepTimes>,
) -> Result<(Tensor, Tensor)> {
    let mut mark = |part: usize| {
        if let Some(t) = times.as_deref_mut() {
            t.mark(part, x.device())
        }
    };
    mark(usize::MAX);
    let x = if how.channels_last { nhwc(x) } else { x.shallow_clone() };
    adam.zero_grad();
    let logits = how.precision.autocast(|| model.forward(&x, true)).to_kind(Kind::Float);
    let loss = cross_entropy(&logits, y, how.class_weights.as_ref(), how.label_smoothing);
    mark(0);
    if how.precision.scales_loss() {
        scaler.backward(&loss);
        mark(1);
        scaler.step(adam)?;
    } else {
        loss.backward();
        mark(1);
        adam.step(None)?;
    }
    mark(2);
    let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
    Ok((loss.detach(), correct))
}

/// Where the bare steps' time went: forward (with the loss), backward, optimiser, in seconds
/// summed over the steps timed (the device synchronised at each mark).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    #[serde(skip)]
    last: Option<Instant>,
}

impl StepTimes {
    /// Ends part `part` (0 forward, 1 backward, 2 optimiser; `usize::MAX` starts a step).
    fn mark(&mut self, part: usize, device: Device) {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        let spent = self.last.map_or(0.0, |t| (now - t).as_secs_f64());
        match part {
            0 => self.forward += spent,
            1 => self.backward += spent,
            2 => self.optimizer += spent,
            _ => {}
        }
        self.last = Some(now);
    }
}

/// The bare training step (phase 2: every layer, one learning rate) on synthetic tensors already
/// on the device: images/s over `steps` after `warmup` steps (what the input pipeline must keep up
/// with), then where the time of as many more steps went.
#[allow(clippy::too_many_arguments)]
pub fn bare_step_rate(
    arch: Arch,
    classes: i64,
    batch: i64,
    size: i64,
    (warmup, steps): (usize, usize),
    device: Device,
    precision: Precision,
    channels_last: bool,
) -> Result<BareStep> {
    let _cache = tensor_cache::session();
    tch::manual_seed(0);
    let model = Model::new(arch.network(classes), device);
    if channels_last {
        to_channels_last(&model);
    }
    let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t)| t).collect();
    let mut adam = Adam::new(Default::default(), vec![("all".into(), 1e-4, params)]);
    let mut scaler = LossScaler::new(device);
    let x = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let y = Tensor::randint(classes, [batch], (Kind::Int64, device));
    let how = StepOptions { precision, channels_last, class_weights: None, label_smoothing: 0.0 };
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0)
        }
    };
    for _ in 0..warmup {
        let _ = train_step(&model, (&x, &y), &mut adam, &mut scaler, &how, None)?;
    }
    sync();
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = train_step(&model, (&x, &y), &mut adam, &mut scaler, &how, None)?;
    }
    sync();
    let rate = (steps as i64 * batch) as f64 / t0.elapsed().as_secs_f64();
    // The same steps again, timed part by part.
    let mut times = StepTimes::default();
    for _ in 0..steps {
        let _ = train_step(&model, (&x, &y), &mut adam, &mut scaler, &how, Some(&mut times))?;
    }
    let per_step = |s: f64| s / steps as f64;
    Ok(BareStep {
        images_per_s: rate,
        forward_s: per_step(times.forward),
        backward_s: per_step(times.backward),
        optimizer_s: per_step(times.optimizer),
    })
}

/// The bare step's rate, and the seconds per step of its parts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BareStep {
    pub images_per_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
}

/// The input pipeline alone: batches of `samples` prepared (augmentation, normalisation, decode
/// when not cached) by `recipe.loader_threads` threads, images/s.
pub fn pipeline_rate(recipe: &Recipe, samples: &[Sample]) -> Result<f64> {
    let order: Vec<usize> = (0..samples.len()).collect();
    let t0 = Instant::now();
    load_batches(recipe, samples, (&order, 0), Some((recipe.seed, 2, 0)), Device::Cpu, |_, _, _| Ok(()))?;
    Ok(samples.len() as f64 / t0.elapsed().as_secs_f64())
}

/// Reseeds libtorch's generator (dropout, stochastic depth) for batch `step` of (run seed, phase,
/// epoch): what a batch draws depends on where it is in the run, not on what ran before it in this
/// process — the condition for resuming a run bit for bit.
fn reseed_libtorch((seed, phase, epoch): (u64, u8, usize), step: usize) {
    tch::manual_seed((mix(seed ^ 0x5EED_1B70_2C4A_11D3, phase, epoch, step as u64) >> 1) as i64);
}

/// A deep copy of every variable, on the CPU.
fn snapshot(model: &Model) -> Vec<(String, Tensor)> {
    model.state_dict().into_iter().map(|(k, t)| (k, t.detach().to_device(Device::Cpu).copy())).collect()
}

/// NCHW tensor with NHWC strides (channels_last).
fn nhwc(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Converts every 4-d variable (convolution weights) to channels_last strides.
fn to_channels_last(model: &Model) {
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            if v.dim() == 4 {
                let d = nhwc(&v);
                v.set_data(&d);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balanced_sampler_draws_every_class_alike() {
        // 90 images of class 0, 10 of class 1.
        let by_class = vec![(0..90).collect::<Vec<usize>>(), (90..100).collect()];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let draws = balanced_draws(&by_class, 10_000, &mut rng);
        let minority = draws.iter().filter(|&&i| i >= 90).count() as f64 / draws.len() as f64;
        assert!((minority - 0.5).abs() < 0.02, "{minority}");
        // Within a class, every image alike.
        let mut seen = [0usize; 100];
        for &i in &draws {
            seen[i] += 1;
        }
        assert!(seen[90..].iter().all(|&c| (400..600).contains(&c)), "{:?}", &seen[90..]);
        assert!(seen[..90].iter().all(|&c| (25..90).contains(&c)), "{:?}", &seen[..90]);
        // The same seed, the same draws.
        let again = balanced_draws(&by_class, 10_000, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        assert_eq!(draws, again);
    }

    #[test]
    fn class_weights_are_scikit_learns_balanced_and_weight_the_mean() {
        let w = recipe::class_weights(&[10, 30]);
        assert!((w[0] - 2.0).abs() < 1e-12 && (w[1] - 2.0 / 3.0).abs() < 1e-12, "{w:?}");
        // Σ w_y·l / Σ w_y, by hand, for two samples of classes 0 and 1.
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let weights = Tensor::from_slice(&[2.0f32, 0.5]);
        let l0 = (1.0f64 + (-2.0f64).exp()).ln(); // -log softmax of class 0 in [2, 0]
        let l1 = (1.0f64 + (-1.0f64).exp()).ln(); // -log softmax of class 1 in [0, 1]
        let want = (2.0 * l0 + 0.5 * l1) / 2.5;
        let got = cross_entropy(&logits, &y, Some(&weights), 0.0).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let plain = cross_entropy(&logits, &y, None, 0.0).double_value(&[]);
        assert!((plain - (l0 + l1) / 2.0).abs() < 1e-6);
        // Label smoothing ε: −Σ q·log p with q = (1 − ε)·one-hot + ε / classes.
        let eps = 0.1;
        let logp = |z: [f64; 2], k: usize| z[k] - (z[0].exp() + z[1].exp()).ln();
        let smoothed = |z: [f64; 2], y: usize| {
            -(0..2).map(|k| ((if k == y { 1.0 - eps } else { 0.0 }) + eps / 2.0) * logp(z, k)).sum::<f64>()
        };
        let want = (smoothed([2.0, 0.0], 0) + smoothed([0.0, 1.0], 1)) / 2.0;
        let got = cross_entropy(&logits, &y, None, eps).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
