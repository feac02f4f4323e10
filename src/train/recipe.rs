//! The fine-tuning recipe as data: the reference experiment's numbers are the defaults, every one
//! configurable. Also the per-layer learning rates of phase 2, computed from a network's layer
//! groups.
//!
//! Phase 2 learning rates (the reference experiment's, docs/reference_experiment.md):
//! - VGG: `classifier` at `top_lr`; module `features.i` of the `n` modules of `features` at
//!   `top_lr + (bottom_lr - top_lr) / n * (n - i)` (linear decay towards the input; n = 44 for
//!   vgg16_bn, 31 for vgg16).
//! - ResNet: `fc`, `layer4`, `layer3`, `layer2`, `layer1`, `bn1`, `conv1`: the first at `top_lr`,
//!   each next one `factor` (3) times smaller.
//! - MobileNetV2 and EfficientNet-B0, by analogy with VGG (their `features` is a sequence of
//!   blocks, as VGG's is of layers): `classifier` at `top_lr`, block `features.i` of `n` (19 and 9)
//!   on the same linear decay towards `bottom_lr`.
//! - Any parameter outside these groups: `rest_lr` (1e-8).
use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};

use crate::train::arch::{Arch, Network};
use crate::vision::EvalTransform;

/// Phase 1: only the new head trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Phase1 {
    pub epochs: usize,
    pub lr: f64,
    /// StepLR: the learning rate is multiplied by `gamma` every `step_size` epochs.
    pub step_size: usize,
    pub gamma: f64,
    /// CPU shortcut: compute the backbone's features once (eval transform, no augmentation) and
    /// train the head on them. Not the reference (which augments and runs batch norm in training
    /// mode); recorded in the provenance when used.
    pub cached_features: bool,
    /// Stop the phase early when validation stops improving (off in the reference).
    pub early_stopping: Option<EarlyStopping>,
    /// A cosine schedule with linear warm-up instead of StepLR (off in the reference).
    pub cosine: Option<Cosine>,
}

impl Default for Phase1 {
    fn default() -> Self {
        Self {
            epochs: 16,
            lr: 1e-3,
            step_size: 6,
            gamma: 0.3,
            cached_features: false,
            early_stopping: None,
            cosine: None,
        }
    }
}

impl Phase1 {
    /// The learning rate's factor in 0-based `epoch`.
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        lr_factor(self.cosine.as_ref(), (self.step_size, self.gamma), epoch, self.epochs)
    }
}

/// Cosine annealing to 0 after a linear warm-up, per epoch: PyTorch's
/// `SequentialLR([LinearLR(start_factor, 1.0, total_iters=warmup_epochs),
/// CosineAnnealingLR(T_max=epochs - warmup_epochs)], milestones=[warmup_epochs])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cosine {
    #[serde(default)]
    pub warmup_epochs: usize,
    /// The factor of the first warm-up epoch, in (0, 1].
    #[serde(default = "default_start_factor")]
    pub start_factor: f64,
}

fn default_start_factor() -> f64 {
    0.1
}

/// The learning rate's factor in 0-based `epoch` of `epochs`: StepLR (`step_size`, `gamma`), or
/// the cosine schedule.
pub fn lr_factor(cosine: Option<&Cosine>, (step_size, gamma): (usize, f64), epoch: usize, epochs: usize) -> f64 {
    let Some(c) = cosine else { return step_lr(1.0, epoch, step_size, gamma) };
    let w = c.warmup_epochs;
    if epoch < w {
        return c.start_factor + (1.0 - c.start_factor) * epoch as f64 / w as f64;
    }
    let span = epochs.saturating_sub(w).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * (epoch - w) as f64 / span).cos())
}

/// What early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Validation loss: lower is better.
    ValLoss,
    /// Validation top-1 accuracy: higher is better.
    ValAccuracy,
}

/// Stops a phase once `monitor` has not improved on its best by more than `min_delta` for
/// `patience` epochs in a row (Keras' and Lightning's rule). The best checkpoint is kept as ever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    /// Epochs without improvement before the phase stops, at least 1.
    #[schema(minimum = 1)]
    pub patience: usize,
    /// How much better than the best so far counts as an improvement (loss or accuracy units).
    #[serde(default)]
    #[schema(minimum = 0.0)]
    pub min_delta: f64,
}

/// Where early stopping stands within one phase (kept in training checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlyStop {
    rule: EarlyStopping,
    best: Option<(f64, usize)>,
    waited: usize,
}

impl EarlyStop {
    pub fn new(rule: &EarlyStopping) -> Self {
        Self { rule: rule.clone(), best: None, waited: 0 }
    }

    /// Takes epoch `epoch`'s validation loss and accuracy; `Some(reason)` when the phase stops
    /// after it.
    pub fn update(&mut self, epoch: usize, val_loss: f64, val_accuracy: f64) -> Option<String> {
        let (value, better) = match self.rule.monitor {
            Monitor::ValLoss => (val_loss, self.best.is_none_or(|(b, _)| val_loss < b - self.rule.min_delta)),
            Monitor::ValAccuracy => {
                (val_accuracy, self.best.is_none_or(|(b, _)| val_accuracy > b + self.rule.min_delta))
            }
        };
        if better {
            self.best = Some((value, epoch));
            self.waited = 0;
            return None;
        }
        self.waited += 1;
        let (best, at) = self.best.expect("a best after the first epoch");
        (self.waited >= self.rule.patience).then(|| {
            format!(
                "early stopping: {} did not improve on {best:.4} (epoch {at}) by more than {} for {} epochs",
                serde_json::to_value(self.rule.monitor).expect("serializes").as_str().unwrap_or("?"),
                self.rule.min_delta,
                self.rule.patience
            )
        })
    }
}

/// How phase 2's learning rates decay from the head towards the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decay {
    /// Over the modules of `features`: `top + (bottom - top) / n * (n - i)`.
    Linear { bottom_lr: f64 },
    /// Over the top-level groups, output to input: each `factor` times smaller than the previous.
    Geometric { factor: f64 },
}

/// Phase 2: every layer trains, with per-layer learning rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Phase2 {
    pub epochs: usize,
    pub top_lr: f64,
    /// `None`: the architecture's default (linear to 1e-7 for VGG, MobileNetV2, EfficientNet;
    /// geometric ÷3 for ResNets).
    pub decay: Option<Decay>,
    pub rest_lr: f64,
    pub step_size: usize,
    pub gamma: f64,
    /// Stop the phase early when validation stops improving (off in the reference).
    pub early_stopping: Option<EarlyStopping>,
    /// A cosine schedule with linear warm-up instead of StepLR (off in the reference).
    pub cosine: Option<Cosine>,
}

impl Default for Phase2 {
    fn default() -> Self {
        Self {
            epochs: 8,
            top_lr: 1e-4,
            decay: None,
            rest_lr: 1e-8,
            step_size: 2,
            gamma: 0.7,
            early_stopping: None,
            cosine: None,
        }
    }
}

impl Phase2 {
    /// The learning rates' factor in 0-based `epoch`.
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        lr_factor(self.cosine.as_ref(), (self.step_size, self.gamma), epoch, self.epochs)
    }
}

/// Train-time augmentation, torchvision's semantics (`train::augment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// ColorJitter: factors drawn from `[1 - x, 1 + x]`.
    pub brightness: f64,
    pub contrast: f64,
    /// RandomAffine: rotation in `[-degrees, degrees]`, x-shear in `[-shear, shear]` (degrees).
    pub degrees: f64,
    pub shear: f64,
    /// torchvision's `RandomResizedCrop(crop, scale, ratio)` first, instead of the eval
    /// transform's resize and centre crop (off in the reference).
    pub random_resized_crop: Option<RandomResizedCrop>,
}

impl Default for Augment {
    fn default() -> Self {
        Self { hflip: 0.5, brightness: 0.3, contrast: 0.3, degrees: 30.0, shear: 20.0, random_resized_crop: None }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self { hflip: 0.0, brightness: 0.0, contrast: 0.0, degrees: 0.0, shear: 0.0, random_resized_crop: None }
    }
}

/// The area share and aspect-ratio range a random resized crop draws from (torchvision's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RandomResizedCrop {
    /// Share of the image's area, [low, high] within (0, 1].
    #[schema(min_items = 2, max_items = 2)]
    pub scale: [f64; 2],
    /// Width over height, [low, high], drawn log-uniformly.
    #[schema(min_items = 2, max_items = 2)]
    pub ratio: [f64; 2],
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        Self { scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0] }
    }
}

/// Adam's constants (PyTorch's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdamSpec {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW: `x ← x − lr·weight_decay·x` apart from the gradient) instead
    /// of Adam's L2 term added to the gradient.
    pub decoupled_weight_decay: bool,
}

impl Default for AdamSpec {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled_weight_decay: false }
    }
}

/// The whole recipe for one backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub batch_size: usize,
    pub phase1: Phase1,
    pub phase2: Phase2,
    pub augment: Augment,
    pub adam: AdamSpec,
    pub eval_transform: EvalTransform,
    /// Also measure loss and accuracy on the whole train set (eval transform) after each epoch,
    /// as the reference does.
    pub eval_train: bool,
    /// Seeds weight init of the head, shuffling and augmentation.
    pub seed: u64,
    /// Mixed precision: float16 autocast with dynamic loss scaling on CUDA, bfloat16 autocast on
    /// the CPU (float32 weights and optimiser either way). `None` = on with CUDA, and on the CPU
    /// for backbones without grouped convolutions where the CPU has AMX-BF16 (the ResNets train
    /// 2× faster there, EfficientNet-B0 slower: BENCHMARKS.md).
    pub mixed_precision: Option<bool>,
    /// channels_last memory format (NHWC strides for inputs and convolution weights); `None` = on,
    /// on the CPU too: oneDNN's NHWC convolutions made a training step 15–25 % faster for
    /// MobileNetV2, ResNet18 and ResNet50 there, in petal and in PyTorch alike (BENCHMARKS.md).
    pub channels_last: Option<bool>,
    /// Threads preparing batches (decode when not cached, augment, normalise); 0 = all cores.
    pub loader_threads: usize,
    /// What to do about classes of very different sizes (nothing in the reference).
    pub imbalance: Imbalance,
    /// Label smoothing of the training loss, in [0, 1) (PyTorch's `label_smoothing`: the target
    /// is `(1 − ε)·one-hot + ε / classes`); 0 in the reference.
    pub label_smoothing: f64,
}

/// Counter-measures for class imbalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Imbalance {
    /// Every image once per epoch, shuffled; plain cross-entropy.
    #[default]
    None,
    /// Cross-entropy weighted per class by `images / (classes × images of the class)`
    /// (scikit-learn's `balanced`; PyTorch's weighted mean).
    WeightedLoss,
    /// Each epoch draws as many images as the train set has, with replacement, every class
    /// equally likely (PyTorch's `WeightedRandomSampler` with weights `1 / images of the class`).
    BalancedSampler,
}

/// Per-class loss weights for `Imbalance::WeightedLoss`: `total / (classes × count)`.
pub fn class_weights(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    counts.iter().map(|&c| if c == 0 { 0.0 } else { total as f64 / (counts.len() * c) as f64 }).collect()
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            batch_size: 16,
            phase1: Phase1::default(),
            phase2: Phase2::default(),
            augment: Augment::default(),
            adam: AdamSpec::default(),
            eval_transform: EvalTransform::default(),
            eval_train: false,
            seed: 0,
            mixed_precision: None,
            channels_last: None,
            loader_threads: 0,
            imbalance: Imbalance::None,
            label_smoothing: 0.0,
        }
    }
}

/// One learning-rate group of phase 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrGroup {
    pub name: String,
    pub lr: f64,
    pub params: Vec<String>,
}

/// Number of modules in `features` (parameterless ones included, as `nn.Sequential` counts them).
fn feature_modules(arch: Arch) -> Option<usize> {
    match arch {
        Arch::Vgg16Bn => Some(44),
        Arch::Vgg16 => Some(31),
        Arch::MobilenetV2 => Some(19),
        Arch::EfficientnetB0 => Some(9),
        _ => None,
    }
}

/// The architecture's default decay.
pub fn default_decay(arch: Arch) -> Decay {
    match feature_modules(arch) {
        Some(_) => Decay::Linear { bottom_lr: 1e-7 },
        None => Decay::Geometric { factor: 3.0 },
    }
}

/// Phase 2's per-layer learning rates, input to output (every trainable parameter in exactly one group).
pub fn lr_groups(network: &Network, phase2: &Phase2) -> Vec<LrGroup> {
    let decay = phase2.decay.unwrap_or_else(|| default_decay(network.arch));
    let top = phase2.top_lr;
    let groups = network.groups();
    let mut out = Vec::new();
    match decay {
        Decay::Linear { bottom_lr } => {
            // Any other network: its top-level groups count as the modules.
            let n = feature_modules(network.arch).unwrap_or(groups.len()) as f64;
            for (k, g) in groups.into_iter().enumerate() {
                let lr = match g.name.strip_prefix("features.").and_then(|i| i.parse::<f64>().ok()) {
                    Some(i) => top + (bottom_lr - top) / n * (n - i),
                    None if g.name == "classifier" => top,
                    None if feature_modules(network.arch).is_none() => top + (bottom_lr - top) / n * (n - k as f64),
                    None => phase2.rest_lr,
                };
                out.push(LrGroup { name: g.name, lr, params: g.params });
            }
        }
        Decay::Geometric { factor } => {
            // Output to input: the head's group first.
            let order = ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"];
            for g in groups {
                let lr = match order.iter().position(|n| *n == g.name) {
                    Some(depth) => top / factor.powi(depth as i32),
                    None => phase2.rest_lr,
                };
                out.push(LrGroup { name: g.name, lr, params: g.params });
            }
        }
    }
    out
}

/// StepLR: `lr × gamma^(epoch / step_size)` for 0-based `epoch`.
pub fn step_lr(base: f64, epoch: usize, step_size: usize, gamma: f64) -> f64 {
    base * gamma.powi((epoch / step_size.max(1)) as i32)
}

/// The knobs people turn most, over a whole recipe (`petal finetune` flags, a job spec's fields);
/// `None` and `false` leave the recipe as it is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Epochs of phase 1 (the head only).
    #[arg(long)]
    pub epochs1: Option<usize>,
    /// Epochs of phase 2 (every layer).
    #[arg(long)]
    pub epochs2: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Phase 1's learning rate (the head).
    #[arg(long)]
    pub lr1: Option<f64>,
    /// Phase 2's learning rate of the top group; lower groups decay from it.
    #[arg(long)]
    pub lr2: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(skip)]
    pub augment: Option<Augment>,
    /// Eval transform sizes (default 256 / 224).
    #[arg(long)]
    pub resize: Option<u32>,
    #[arg(long)]
    pub crop: Option<u32>,
    /// Phase 1 on features computed once (CPU shortcut: no augmentation in phase 1).
    #[arg(long)]
    pub cached_features: bool,
    /// Also evaluate the whole train set after every epoch, as the reference does.
    #[arg(long)]
    pub eval_train: bool,
    /// Counter class imbalance: a class-weighted loss or a balanced sampler.
    #[arg(long, value_enum)]
    pub imbalance: Option<Imbalance>,
    /// Label smoothing of the training loss, in [0, 1).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
}

impl Recipe {
    /// Checks every value is in range: what the recipe may cost (batch × crop², epochs, loader
    /// threads) and what makes sense (positive rates, probabilities in [0, 1], a valid transform).
    /// Every entry point checks it: the CLI's `--recipe` file and flags, and job specs.
    pub fn validate(&self) -> Result<()> {
        let recipe = self;
        let positive = [
            ("epochs1", recipe.phase1.epochs as f64),
            ("batch_size", recipe.batch_size as f64),
            ("lr1", recipe.phase1.lr),
            ("lr2", recipe.phase2.top_lr),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::new(ErrorCode::InvalidArguments, format!("{name} must be positive")));
            }
        }
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let a = &recipe.augment;
        let checks = [
            ("phase1.step_size", recipe.phase1.step_size >= 1),
            ("phase2.step_size", recipe.phase2.step_size >= 1),
            ("phase1.gamma", finite_pos(recipe.phase1.gamma) && recipe.phase1.gamma <= 1.0),
            ("phase2.gamma", finite_pos(recipe.phase2.gamma) && recipe.phase2.gamma <= 1.0),
            ("phase2.rest_lr", recipe.phase2.rest_lr.is_finite() && recipe.phase2.rest_lr >= 0.0),
            ("adam.beta1", (0.0..1.0).contains(&recipe.adam.beta1)),
            ("adam.beta2", (0.0..1.0).contains(&recipe.adam.beta2)),
            ("adam.eps", finite_pos(recipe.adam.eps)),
            ("adam.weight_decay", recipe.adam.weight_decay.is_finite() && recipe.adam.weight_decay >= 0.0),
            ("augment.hflip", unit(a.hflip)),
            ("augment.brightness", unit(a.brightness)),
            ("augment.contrast", unit(a.contrast)),
            ("augment.degrees", (0.0..=180.0).contains(&a.degrees)),
            ("augment.shear", (0.0..=89.0).contains(&a.shear)),
            (
                "eval_transform.mean/std",
                recipe.eval_transform.mean.iter().all(|m| m.is_finite())
                    && recipe.eval_transform.std.iter().all(|s| s.is_finite() && *s > 0.0),
            ),
        ];
        if let Some((name, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(Error::new(ErrorCode::InvalidArguments, format!("recipe: {name} is out of range")));
        }
        let t = &recipe.eval_transform;
        t.check().map_err(|m| Error::new(ErrorCode::InvalidArguments, m))?;
        // One input batch stays under ~1 GB of float32.
        if recipe.batch_size as u64 * u64::from(t.crop).pow(2) > 256 * 512 * 512 {
            return Err(Error::new(ErrorCode::InvalidArguments, "batch_size × crop² is over 256 × 512²"));
        }
        if recipe.loader_threads > 64 {
            return Err(Error::new(ErrorCode::InvalidArguments, "loader_threads: at most 64"));
        }
        if recipe.phase1.epochs > 1000 || recipe.phase2.epochs > 1000 || recipe.batch_size > 4096 {
            return Err(Error::new(
                ErrorCode::InvalidArguments,
                "epochs (≤ 1000 per phase) or batch_size (≤ 4096) too large",
            ));
        }
        recipe.validate_options()
    }

    /// The checks of the options beyond the reference recipe.
    fn validate_options(&self) -> Result<()> {
        let recipe = self;
        for (name, rule) in [("phase1", &recipe.phase1.early_stopping), ("phase2", &recipe.phase2.early_stopping)] {
            if let Some(r) = rule {
                if r.patience == 0 || !(r.min_delta.is_finite() && r.min_delta >= 0.0) {
                    return Err(Error::new(
                        ErrorCode::InvalidArguments,
                        format!("recipe: {name}.early_stopping needs patience ≥ 1 and a finite min_delta ≥ 0"),
                    ));
                }
            }
        }
        if !(0.0..1.0).contains(&recipe.label_smoothing) {
            return Err(Error::new(ErrorCode::InvalidArguments, "recipe: label_smoothing must be in [0, 1)"));
        }
        for (name, cosine, epochs) in [
            ("phase1", &recipe.phase1.cosine, recipe.phase1.epochs),
            ("phase2", &recipe.phase2.cosine, recipe.phase2.epochs),
        ] {
            if let Some(c) = cosine {
                if !(c.start_factor > 0.0 && c.start_factor <= 1.0) || c.warmup_epochs > epochs {
                    return Err(Error::new(
                        ErrorCode::InvalidArguments,
                        format!("recipe: {name}.cosine needs start_factor in (0, 1] and warmup_epochs ≤ epochs"),
                    ));
                }
            }
        }
        if let Some(r) = &recipe.augment.random_resized_crop {
            let [s0, s1] = r.scale;
            let [r0, r1] = r.ratio;
            if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0 && r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
                return Err(Error::new(
                    ErrorCode::InvalidArguments,
                    "recipe: augment.random_resized_crop needs 0 < scale[0] ≤ scale[1] ≤ 1 and 0 < ratio[0] ≤ ratio[1]",
                ));
            }
        }
        Ok(())
    }

    /// This recipe with `o` applied.
    pub fn with(mut self, o: &Overrides) -> Recipe {
        let set = |slot: &mut usize, v: Option<usize>| v.into_iter().for_each(|v| *slot = v);
        set(&mut self.phase1.epochs, o.epochs1);
        set(&mut self.phase2.epochs, o.epochs2);
        set(&mut self.batch_size, o.batch_size);
        self.phase1.lr = o.lr1.unwrap_or(self.phase1.lr);
        self.phase2.top_lr = o.lr2.unwrap_or(self.phase2.top_lr);
        self.seed = o.seed.unwrap_or(self.seed);
        if let Some(a) = &o.augment {
            self.augment = a.clone();
        }
        self.eval_transform.resize = o.resize.unwrap_or(self.eval_transform.resize);
        self.eval_transform.crop = o.crop.unwrap_or(self.eval_transform.crop);
        self.phase1.cached_features |= o.cached_features;
        self.eval_train |= o.eval_train;
        self.imbalance = o.imbalance.unwrap_or(self.imbalance);
        self.label_smoothing = o.label_smoothing.unwrap_or(self.label_smoothing);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile values of every option beyond the reference are refused before a job costs anything.
    #[test]
    fn out_of_range_options_are_refused() {
        let refused = |change: &dyn Fn(&mut Recipe)| {
            let mut r = Recipe::default();
            change(&mut r);
            let e = r.validate().expect_err("refused");
            assert_eq!(e.code, ErrorCode::InvalidArguments, "{}", e.message);
        };
        refused(&|r| r.label_smoothing = 1.0);
        refused(&|r| r.label_smoothing = -0.1);
        refused(&|r| r.label_smoothing = f64::NAN);
        refused(&|r| r.phase2.cosine = Some(Cosine { warmup_epochs: 1, start_factor: 0.0 }));
        refused(&|r| r.phase2.cosine = Some(Cosine { warmup_epochs: 1, start_factor: 1.5 }));
        refused(&|r| r.phase1.cosine = Some(Cosine { warmup_epochs: 17, start_factor: 0.1 }));
        let rrc = |scale, ratio| Some(RandomResizedCrop { scale, ratio });
        refused(&|r| r.augment.random_resized_crop = rrc([0.0, 1.0], [0.75, 1.33]));
        refused(&|r| r.augment.random_resized_crop = rrc([0.5, 0.2], [0.75, 1.33]));
        refused(&|r| r.augment.random_resized_crop = rrc([0.08, 1.5], [0.75, 1.33]));
        refused(&|r| r.augment.random_resized_crop = rrc([0.08, 1.0], [0.0, 1.33]));
        refused(&|r| r.augment.random_resized_crop = rrc([0.08, 1.0], [1.33, f64::INFINITY]));
        let stop = |patience, min_delta| Some(EarlyStopping { monitor: Monitor::ValLoss, patience, min_delta });
        refused(&|r| r.phase1.early_stopping = stop(0, 0.0));
        refused(&|r| r.phase2.early_stopping = stop(2, -1.0));
        refused(&|r| r.phase2.early_stopping = stop(2, f64::NAN));
        refused(&|r| r.adam.weight_decay = -0.1);
    }

    #[test]
    fn early_stopping_waits_patience_epochs_without_improvement() {
        let rule = |monitor, patience, min_delta| EarlyStopping { monitor, patience, min_delta };
        // Loss: epoch 2 improves, 3 and 4 do not: stops after 4 with patience 2.
        let mut s = EarlyStop::new(&rule(Monitor::ValLoss, 2, 0.0));
        let stops: Vec<bool> =
            [1.0, 0.9, 0.95, 0.91, 0.5].iter().enumerate().map(|(i, &l)| s.update(i + 1, l, 0.0).is_some()).collect();
        assert_eq!(stops, [false, false, false, true, false]);
        // Improving every epoch never stops.
        let mut s = EarlyStop::new(&rule(Monitor::ValLoss, 1, 0.0));
        assert!((1..=10).all(|e| s.update(e, 1.0 / e as f64, 0.0).is_none()));
        // An improvement within min_delta does not count.
        let mut s = EarlyStop::new(&rule(Monitor::ValLoss, 1, 0.05));
        assert!(s.update(1, 1.0, 0.0).is_none());
        let why = s.update(2, 0.97, 0.0).expect("0.03 better is not better by more than 0.05");
        assert!(why.contains("val_loss did not improve on 1.0000 (epoch 1) by more than 0.05 for 1 epochs"), "{why}");
        // Accuracy: higher is better; the wait restarts at each improvement.
        let mut s = EarlyStop::new(&rule(Monitor::ValAccuracy, 2, 0.0));
        let accs = [0.5, 0.5, 0.6, 0.6, 0.6];
        let stops: Vec<bool> = accs.iter().enumerate().map(|(i, &a)| s.update(i + 1, 0.0, a).is_some()).collect();
        assert_eq!(stops, [false, false, false, false, true]);
    }

    #[test]
    fn overrides_touch_only_what_they_name() {
        let base = Recipe::default();
        assert_eq!(base.clone().with(&Overrides::default()), base);
        let r = base.clone().with(&Overrides {
            epochs1: Some(3),
            lr2: Some(5e-5),
            crop: Some(64),
            cached_features: true,
            ..Default::default()
        });
        assert_eq!((r.phase1.epochs, r.phase2.top_lr, r.eval_transform.crop), (3, 5e-5, 64));
        assert!(r.phase1.cached_features);
        assert_eq!((r.phase2.epochs, r.batch_size, r.seed), (base.phase2.epochs, base.batch_size, base.seed));
    }

    fn lrs(arch: Arch) -> Vec<(String, f64)> {
        lr_groups(&arch.network(102), &Phase2::default()).into_iter().map(|g| (g.name, g.lr)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 * b.abs().max(1e-12)
    }

    #[test]
    fn vgg16_bn_follows_the_reference_formula() {
        let groups = lrs(Arch::Vgg16Bn);
        // The 26 modules with parameters (13 convolutions, 13 batch norms), then the classifier.
        assert_eq!(groups.len(), 27);
        for (name, lr) in &groups {
            let want = match name.strip_prefix("features.") {
                // The reference notebook (docs/reference_experiment.md): 1e-4 + (1e-7 - 1e-4) / 44 * (44 - i).
                Some(i) => 1e-4 + (1e-7 - 1e-4) / 44.0 * (44.0 - i.parse::<f64>().unwrap()),
                None => {
                    assert_eq!(name, "classifier");
                    1e-4
                }
            };
            assert!(close(*lr, want), "{name}: {lr} vs {want}");
        }
        assert!((groups[0].1 - 1e-7).abs() < 1e-15, "the first convolution is at ~1e-7");
    }

    #[test]
    fn resnets_divide_by_three_per_stage() {
        for arch in [Arch::Resnet50, Arch::Resnet152, Arch::Resnet18] {
            let groups = lrs(arch);
            let want = [
                ("conv1", 1e-4 / 729.0),
                ("bn1", 1e-4 / 243.0),
                ("layer1", 1e-4 / 81.0),
                ("layer2", 1e-4 / 27.0),
                ("layer3", 1e-4 / 9.0),
                ("layer4", 1e-4 / 3.0),
                ("fc", 1e-4),
            ];
            assert_eq!(groups.len(), want.len());
            for ((name, lr), (wn, wl)) in groups.iter().zip(want) {
                assert_eq!(name, wn);
                assert!(close(*lr, wl), "{arch} {name}: {lr} vs {wl}");
            }
        }
    }

    #[test]
    fn every_parameter_is_in_exactly_one_group() {
        for arch in Arch::ALL {
            let network = arch.network(10);
            let mut grouped: Vec<String> =
                lr_groups(&network, &Phase2::default()).into_iter().flat_map(|g| g.params).collect();
            grouped.sort();
            let mut all: Vec<String> = network.params().into_iter().filter(|p| p.trainable).map(|p| p.name).collect();
            all.sort();
            assert_eq!(grouped, all, "{arch}");
            for g in lr_groups(&network, &Phase2::default()) {
                assert!(g.lr > 0.0 && g.lr <= 1e-4, "{arch} {}: {}", g.name, g.lr);
            }
        }
        let m = lrs(Arch::MobilenetV2);
        assert_eq!(m.len(), 20);
        assert!(close(m[18].1, 1e-4 + (1e-7 - 1e-4) / 19.0), "features.18");
        assert_eq!(m[19], ("classifier".to_string(), 1e-4));
    }

    #[test]
    fn step_lr() {
        assert_eq!(super::step_lr(1e-3, 5, 6, 0.3), 1e-3);
        assert!(close(super::step_lr(1e-3, 6, 6, 0.3), 3e-4));
        assert!(close(super::step_lr(1e-3, 15, 6, 0.3), 1e-3 * 0.09));
    }
}
