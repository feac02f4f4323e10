//! The two-phase fine-tuning recipe (docs/reference_experiment.md) for one backbone, and for several (the best
//! validation accuracy wins).
//!
//! Phase 1 trains the new head only (every other parameter frozen; batch norm still in training
//! mode, as in the reference). Phase 2 starts from the best checkpoint so far and trains every
//! layer with per-layer learning rates (`recipe::lr_groups`). After every epoch the validation
//! set is evaluated (eval transform, eval mode); the best checkpoint by validation accuracy is kept
//! across both phases. Batches are prepared by worker threads (decode when not cached, augment,
//! normalise), each batch from its own seeded generator, so a run is repeatable whatever the
//! thread timing. Cancellation is checked between steps.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::{Dataset, Sample};
use crate::error::{Error, ErrorCode, Result};
use crate::train::arch::{Arch, Op};
use crate::train::loader::{batch_slices, load_batches, mix};
use crate::train::model::Model;
use crate::train::optim::{Adam, LossScaler};
use crate::train::recipe::{self, Recipe};

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

/// Where a run is: the device, cancellation, progress reporting.
pub struct Context<'a> {
    pub device: Device,
    pub cancel: &'a AtomicBool,
    pub on_event: &'a mut dyn FnMut(&Event),
    /// Steps of the whole run, for progress and ETA (set by `finetune`).
    pub total_images: f64,
    pub done_images: f64,
    pub started: Instant,
}

impl Context<'_> {
    pub fn new<'a>(device: Device, cancel: &'a AtomicBool, on_event: &'a mut dyn FnMut(&Event)) -> Context<'a> {
        Context { device, cancel, on_event, total_images: 0.0, done_images: 0.0, started: Instant::now() }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::new(ErrorCode::TrainingCanceled, "training was canceled"))
        } else {
            Ok(())
        }
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
/// from scratch when `None`.
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
    let channels_last = recipe.channels_last.unwrap_or(cuda);
    if channels_last {
        to_channels_last(&model);
    }
    let class_weights = (recipe.imbalance == recipe::Imbalance::WeightedLoss).then(|| {
        let w: Vec<f32> = recipe::class_weights(&dataset.class_counts()).into_iter().map(|w| w as f32).collect();
        Tensor::from_slice(&w).to_device(device)
    });
    let mut run = Run {
        recipe,
        dataset,
        step: StepOptions {
            mixed: recipe.mixed_precision.unwrap_or(cuda) && cuda,
            channels_last,
            class_weights,
            label_smoothing: recipe.label_smoothing,
        },
        scaler: LossScaler::new(device),
        epochs: Vec::new(),
        best: None,
        phases: Vec::new(),
    };
    run.phase1(&mut model, ctx)?;
    if recipe.phase2.epochs > 0 {
        if let Some(best) = &run.best {
            model.load_state_dict(&best.state, false)?;
        }
        run.phase2(&mut model, ctx)?;
    }
    let best = run.best.take().ok_or_else(|| Error::invalid_request("the recipe has no epoch to run"))?;
    model.load_state_dict(&best.state, false)?;
    Ok(Trained {
        backbone: arch,
        model,
        best_val_accuracy: best.val_accuracy,
        best_epoch: best.at,
        epochs: run.epochs,
        phases: run.phases,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The best checkpoint so far.
struct Best {
    val_accuracy: f64,
    /// (phase, epoch)
    at: (u8, usize),
    /// The model's state, on the CPU.
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

struct Run<'a> {
    recipe: &'a Recipe,
    dataset: &'a Dataset,
    step: StepOptions,
    scaler: LossScaler,
    epochs: Vec<EpochMetrics>,
    best: Option<Best>,
    phases: Vec<PhaseEnd>,
}

impl Run<'_> {
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
        let cached = if spec.cached_features { Some(self.cache_features(model, ctx)?) } else { None };
        let mut stop = spec.early_stopping.as_ref().map(recipe::EarlyStop::new);
        for epoch in 0..spec.epochs {
            adam.scale_lr(spec.lr_factor(epoch));
            let t0 = Instant::now();
            let (loss, acc, ips) = match &cached {
                Some(c) => self.train_epoch_cached(model, c, &mut adam, (1, epoch, spec.epochs), ctx)?,
                None => self.train_epoch(model, &mut adam, (1, epoch, spec.epochs), ctx)?,
            };
            let lr = adam.groups[0].lr;
            let (vl, va) = match &cached {
                Some(c) => head_eval(model, &c.val, &c.val_labels, self.recipe.batch_size),
                None => self.evaluate(model, &self.dataset.val, ctx)?,
            };
            let train_eval = match (&cached, self.recipe.eval_train) {
                (Some(c), true) => Some(head_eval(model, &c.train, &c.train_labels, self.recipe.batch_size)),
                (None, true) => Some(self.evaluate(model, &self.dataset.train, ctx)?),
                _ => None,
            };
            let at = (1, epoch + 1);
            let result = EpochResult { at, lr, train: (loss, acc, ips), train_eval, val: (vl, va), started: t0 };
            self.finish_epoch(model, ctx, result);
            if let Some(why) = stop.as_mut().and_then(|s| s.update(epoch + 1, vl, va)) {
                self.phases.push(PhaseEnd { phase: 1, epochs: epoch + 1, planned: spec.epochs, stopped: why });
                return Ok(());
            }
        }
        self.phases.push(PhaseEnd { phase: 1, epochs: spec.epochs, planned: spec.epochs, stopped: "completed".into() });
        Ok(())
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
        let top = groups.iter().map(|g| g.1).fold(0.0, f64::max);
        let mut adam = Adam::new(self.recipe.adam.clone(), groups);
        let mut stop = spec.early_stopping.as_ref().map(recipe::EarlyStop::new);
        for epoch in 0..spec.epochs {
            let factor = spec.lr_factor(epoch);
            adam.scale_lr(factor);
            let t0 = Instant::now();
            let (loss, acc, ips) = self.train_epoch(model, &mut adam, (2, epoch, spec.epochs), ctx)?;
            let (vl, va) = self.evaluate(model, &self.dataset.val, ctx)?;
            let train_eval =
                if self.recipe.eval_train { Some(self.evaluate(model, &self.dataset.train, ctx)?) } else { None };
            let (at, lr) = ((2, epoch + 1), top * factor);
            let result = EpochResult { at, lr, train: (loss, acc, ips), train_eval, val: (vl, va), started: t0 };
            self.finish_epoch(model, ctx, result);
            if let Some(why) = stop.as_mut().and_then(|s| s.update(epoch + 1, vl, va)) {
                self.phases.push(PhaseEnd { phase: 2, epochs: epoch + 1, planned: spec.epochs, stopped: why });
                return Ok(());
            }
        }
        self.phases.push(PhaseEnd { phase: 2, epochs: spec.epochs, planned: spec.epochs, stopped: "completed".into() });
        Ok(())
    }

    /// Keeps the model when this epoch is the best so far, and reports the epoch.
    fn finish_epoch(&mut self, model: &Model, ctx: &mut Context, r: EpochResult) {
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

    /// One epoch over shuffled, augmented training batches.
    fn train_epoch(
        &mut self,
        model: &mut Model,
        adam: &mut Adam,
        (phase, epoch, epochs): (u8, usize, usize),
        ctx: &mut Context,
    ) -> Result<(f64, f64, f64)> {
        let samples = &self.dataset.train;
        let order = self.epoch_order(phase, epoch);
        let steps = batch_slices(&order, self.recipe.batch_size, true).len();
        let seeds = (self.recipe.seed, phase, epoch);
        let t0 = Instant::now();
        let (how, scaler) = (&self.step, &mut self.scaler);
        // Sums stay on the device; reading them syncs, so on CUDA progress is read every few steps.
        let report_every = if ctx.device.is_cuda() { 20 } else { 1 };
        let (mut loss_sum, mut correct) =
            (Tensor::zeros([], (Kind::Double, ctx.device)), Tensor::zeros([], (Kind::Int64, ctx.device)));
        let mut seen = 0usize;
        let mut last_loss = f64::NAN;
        load_batches(self.recipe, samples, &order, Some(seeds), ctx.device, |step, x, y| {
            ctx.check_cancel()?;
            let (loss, ok) = train_step(model, (&x, &y), adam, scaler, how)?;
            let n = y.size()[0] as usize;
            loss_sum += loss.to_kind(Kind::Double) * n as f64;
            correct += ok;
            seen += n;
            ctx.done_images += n as f64;
            if step % report_every == 0 || step + 1 == steps {
                last_loss = loss.double_value(&[]);
                if !last_loss.is_finite() {
                    return Err(Error::new(ErrorCode::TrainingFailed, format!("the loss became {last_loss}")));
                }
            }
            let ips = seen as f64 / t0.elapsed().as_secs_f64();
            emit_step(ctx, model.network.arch, (phase, epoch + 1, epochs), (step + 1, steps), last_loss, ips);
            Ok(())
        })?;
        let seen_f = seen.max(1) as f64;
        Ok((
            loss_sum.double_value(&[]) / seen_f,
            correct.int64_value(&[]) as f64 / seen_f,
            seen_f / t0.elapsed().as_secs_f64(),
        ))
    }

    /// Phase 1 on cached features: the head alone, on shuffled batches of features (with the
    /// body's final dropout, if any, applied in training mode as the full model would).
    fn train_epoch_cached(
        &mut self,
        model: &mut Model,
        c: &Cached,
        adam: &mut Adam,
        (phase, epoch, epochs): (u8, usize, usize),
        ctx: &mut Context,
    ) -> Result<(f64, f64, f64)> {
        let n = c.train.size()[0];
        let order: Vec<i64> = self.epoch_order(phase, epoch).into_iter().map(|i| i as i64).collect();
        let order = Tensor::from_slice(&order).to_device(c.train.device());
        let bs = self.recipe.batch_size as i64;
        let steps = (n + bs - 1) / bs;
        let dropout = trailing_dropout(&model.network.body);
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        let t0 = Instant::now();
        for s in 0..steps {
            ctx.check_cancel()?;
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
            loss_sum += lv * k as f64;
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            let ips = ((s + 1) * bs).min(n) as f64 / t0.elapsed().as_secs_f64();
            emit_step(ctx, model.network.arch, (phase, epoch + 1, epochs), (s as usize + 1, steps as usize), lv, ips);
        }
        Ok((loss_sum / n as f64, correct as f64 / n as f64, n as f64 / t0.elapsed().as_secs_f64()))
    }

    /// Mean loss and accuracy in eval mode with the eval transform.
    fn evaluate(&self, model: &Model, samples: &[Sample], ctx: &mut Context) -> Result<(f64, f64)> {
        let order: Vec<usize> = (0..samples.len()).collect();
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        let (mixed, channels_last) = (self.step.mixed, self.step.channels_last);
        tch::no_grad(|| {
            load_batches(self.recipe, samples, &order, None, ctx.device, |_, x, y| {
                ctx.check_cancel()?;
                let x = if channels_last { nhwc(&x) } else { x };
                let logits = tch::autocast(mixed, || model.forward(&x, false)).to_kind(Kind::Float);
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
                load_batches(self.recipe, samples, &order, None, ctx.device, |s, x, y| {
                    ctx.check_cancel()?;
                    let x = if self.step.channels_last { nhwc(&x) } else { x };
                    feats.push(tch::autocast(self.step.mixed, || model.features(&x, false)).to_kind(Kind::Float));
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

/// How training steps run: fp16 autocast with loss scaling, channels_last, per-class loss weights.
struct StepOptions {
    mixed: bool,
    channels_last: bool,
    class_weights: Option<Tensor>,
    label_smoothing: f64,
}

/// The training loss: mean cross-entropy, weighted per class when `weights` are given (PyTorch's
/// weighted mean: `Σ w_y·l / Σ w_y`), with `label_smoothing` (PyTorch's).
fn cross_entropy(logits: &Tensor, y: &Tensor, weights: Option<&Tensor>, label_smoothing: f64) -> Tensor {
    logits.cross_entropy_loss(y, weights, tch::Reduction::Mean, -100, label_smoothing)
}

/// One optimiser step on a batch (training mode; fp16 autocast with loss scaling when `mixed`).
/// Returns the loss (a detached scalar, float32) and the number of correct predictions, both on
/// the device: nothing here waits for the device unless loss scaling must check for overflow.
fn train_step(
    model: &Model,
    (x, y): (&Tensor, &Tensor),
    adam: &mut Adam,
    scaler: &mut LossScaler,
    how: &StepOptions,
) -> Result<(Tensor, Tensor)> {
    let x = if how.channels_last { nhwc(x) } else { x.shallow_clone() };
    adam.zero_grad();
    let logits = tch::autocast(how.mixed, || model.forward(&x, true)).to_kind(Kind::Float);
    let loss = cross_entropy(&logits, y, how.class_weights.as_ref(), how.label_smoothing);
    if how.mixed {
        scaler.backward_and_step(&loss, adam)?;
    } else {
        loss.backward();
        adam.step(None)?;
    }
    let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
    Ok((loss.detach(), correct))
}

/// The bare training step (phase 2: every layer, one learning rate) on synthetic tensors already
/// on the device: images/s over `steps` after `warmup` steps. What the input pipeline must keep up with.
#[allow(clippy::too_many_arguments)]
pub fn bare_step_rate(
    arch: Arch,
    classes: i64,
    batch: i64,
    size: i64,
    (warmup, steps): (usize, usize),
    device: Device,
    mixed: bool,
    channels_last: bool,
) -> Result<f64> {
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
    let how = StepOptions { mixed, channels_last, class_weights: None, label_smoothing: 0.0 };
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0)
        }
    };
    for _ in 0..warmup {
        let _ = train_step(&model, (&x, &y), &mut adam, &mut scaler, &how)?;
    }
    sync();
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = train_step(&model, (&x, &y), &mut adam, &mut scaler, &how)?;
    }
    sync();
    Ok((steps as i64 * batch) as f64 / t0.elapsed().as_secs_f64())
}

/// The input pipeline alone: batches of `samples` prepared (augmentation, normalisation, decode
/// when not cached) by `recipe.loader_threads` threads, images/s.
pub fn pipeline_rate(recipe: &Recipe, samples: &[Sample]) -> Result<f64> {
    let order: Vec<usize> = (0..samples.len()).collect();
    let t0 = Instant::now();
    load_batches(recipe, samples, &order, Some((recipe.seed, 2, 0)), Device::Cpu, |_, _, _| Ok(()))?;
    Ok(samples.len() as f64 / t0.elapsed().as_secs_f64())
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
