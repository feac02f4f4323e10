//! A fine-tuning job without the server: resolve each backbone's starting weights, run the recipe
//! for each, pick the best validation accuracy, and write what a run produces — per backbone a
//! checkpoint (safetensors, with the class list and eval transform in its metadata), the
//! per-epoch metrics (JSON) and the loss/accuracy curves (PNG); and a summary naming the winner.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::dataset::Dataset;
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::files::write_atomically;
use crate::foundation::hash::sha256_hex;
use crate::records::dataset::DatasetSummary;
use crate::records::licence::Licence;
use crate::train::arch::Arch;
use crate::train::catalog::Catalog;
use crate::train::checkpoint::CheckpointStore;
use crate::train::plot;
use crate::train::precision::Precision;
use crate::train::recipe::Recipe;
use crate::train::trainer::{self, Context, EpochMetrics, Event, PhaseEnd, Trained};
use crate::train::weights::{self, store::WeightStore};

/// Where a backbone's starting weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BaseWeightsInfo {
    pub file_name: String,
    pub sha256: String,
    /// The catalog entry, when the file is a known one.
    pub catalog: Option<String>,
    pub licences: Vec<Licence>,
}

/// Resolves `spec` for `arch`: `scratch` (random init), a file path, a catalog name
/// (`IMAGENET1K_V1`, `MobileNet_V2_Weights.IMAGENET1K_V1`) looked up in the cache, or — when
/// `None` — the catalog default if cached, else any cached file for the architecture.
pub fn resolve_weights(arch: Arch, spec: Option<&str>, store: &WeightStore) -> Result<StartingWeights> {
    let catalog = Catalog::embedded();
    let path = match spec {
        Some("scratch") => return Ok(None),
        Some(s) if Path::new(s).is_file() => PathBuf::from(s),
        Some(name) => {
            let entry = catalog.find(arch, Some(name))?;
            store.cached_or_seeded(&entry.file_name).map(|c| c.path).ok_or_else(|| not_cached(entry, store))?
        }
        None => {
            let entry = catalog.find(arch, None)?;
            let default = store.cached_or_seeded(&entry.file_name);
            default.or_else(|| store.any_for(arch)).map(|c| c.path).ok_or_else(|| not_cached(entry, store))?
        }
    };
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::new(ErrorCode::UnknownWeights, format!("cannot read {}: {e}", path.display())))?;
    let sha256 = sha256_hex(&bytes);
    let entry = catalog.by_sha256(&sha256).or_else(|| {
        path.file_name().and_then(|f| catalog.by_file_name(&f.to_string_lossy())).filter(|e| e.arch == arch)
    });
    let info = BaseWeightsInfo {
        file_name: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256,
        catalog: entry.map(|e| e.weights.clone()),
        licences: entry.map(|e| e.licences.clone()).unwrap_or_default(),
    };
    Ok(Some((path, info)))
}

/// The weights of `entry` are in neither the cache nor the seed folder: the error names the
/// commands that put them there.
fn not_cached(entry: &crate::train::catalog::CatalogEntry, store: &WeightStore) -> Error {
    let (arch, file) = (entry.arch, &entry.file_name);
    let short = entry.weights.rsplit('.').next().unwrap_or(&entry.weights);
    Error::new(
        ErrorCode::UnknownWeights,
        format!(
            "{} ({file}) is not in the weights cache {}: `petal weights fetch {arch} --weights {short}` downloads \
             it, `petal weights import PATH/{file}` imports a copy on disk (`make run` and `make test` put \
             MobileNetV2's in tools/weights, which is imported when needed); or name other weights, or scratch",
            entry.weights,
            store.dir().display()
        ),
    )
}

/// One backbone's result as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackboneResult {
    pub backbone: Arch,
    pub base_weights: Option<BaseWeightsInfo>,
    pub best_val_accuracy: f64,
    pub best_phase: u8,
    pub best_epoch: usize,
    pub seconds: f64,
    pub epochs: Vec<EpochMetrics>,
    /// How each phase ended: completed, or stopped early and why.
    #[serde(default)]
    pub phases: Vec<PhaseEnd>,
    /// The number format it trained in: `float32`, or mixed precision (`float16` with loss
    /// scaling on CUDA, `bfloat16` on the CPU); absent in runs recorded before petal said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Files written for it, relative to the output folder.
    pub checkpoint: String,
    pub metrics: String,
    pub curves: String,
}

/// The whole job's summary (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub winner: Arch,
    pub best_val_accuracy: f64,
    pub results: Vec<BackboneResult>,
    pub dataset: DatasetSummary,
    pub recipe: Recipe,
    pub device: String,
    pub seconds: f64,
    pub petal_version: String,
    /// When the run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The machine it ran on (`train::device::hardware`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub hardware: Option<serde_json::Value>,
    /// The command that ran it, when it came from the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// A backbone's starting weights: a file and what it is, or `None` for a random start.
pub type StartingWeights = Option<(PathBuf, BaseWeightsInfo)>;

/// One fine-tuning run: the dataset, the backbones with their starting weights, the recipe, the
/// device, where the outputs go, and the command line that started it (for provenance).
pub struct FinetuneRun<'a> {
    pub dataset: &'a Dataset,
    pub backbones: &'a [(Arch, StartingWeights)],
    pub recipe: &'a Recipe,
    pub device: Device,
    pub out: &'a Path,
    pub command: Option<&'a str>,
}

/// What steers a run from outside: cancellation, a stop for a shutdown (a checkpoint is saved
/// first), and where training checkpoints are kept and looked for.
pub struct Steering<'a> {
    pub cancel: &'a AtomicBool,
    pub preempt: Option<&'a AtomicBool>,
    pub checkpoints: Option<&'a mut dyn CheckpointStore>,
}

impl<'a> Steering<'a> {
    /// Cancellation only: no checkpoints.
    pub fn cancel(cancel: &'a AtomicBool) -> Self {
        Steering { cancel, preempt: None, checkpoints: None }
    }
}

/// Runs the recipe for each backbone and writes the outputs under `run.out`, stopping when
/// `steering.cancel` is set; each backbone goes on from its checkpoint when `steering` has one
/// of this run; `on_event` hears every step, epoch and checkpoint.
pub fn finetune<'a>(run: &FinetuneRun, steering: Steering<'a>, on_event: &'a mut dyn FnMut(&Event)) -> Result<Summary> {
    let FinetuneRun { dataset, backbones, recipe, device, out, command } = *run;
    if backbones.is_empty() {
        return Err(Error::invalid_request("name at least one backbone"));
    }
    crate::foundation::files::create_dir_all(out)?;
    let started = std::time::Instant::now();
    let started_at = crate::foundation::clock::now_rfc3339();
    let mut ctx = Context::new(device, steering.cancel, on_event);
    ctx.checkpoints = steering.checkpoints;
    ctx.preempt = steering.preempt;
    ctx.total_images = trainer::planned_images(dataset, recipe) * backbones.len() as f64;
    let mut results = Vec::new();
    for (arch, base) in backbones {
        let tensors = match base {
            Some((path, _)) => Some(weights::read_file(path)?),
            None => None,
        };
        let trained = trainer::train(*arch, tensors.as_deref(), dataset, recipe, &mut ctx)?;
        results.push(write_backbone(out, &trained, base.as_ref().map(|b| b.1.clone()), dataset, recipe)?);
    }
    let best = results
        .iter()
        .max_by(|a, b| a.best_val_accuracy.total_cmp(&b.best_val_accuracy))
        .expect("at least one backbone");
    let summary = Summary {
        winner: best.backbone,
        best_val_accuracy: best.best_val_accuracy,
        dataset: dataset.summary(),
        recipe: recipe.clone(),
        device: format!("{device:?}"),
        seconds: started.elapsed().as_secs_f64(),
        petal_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: Some(started_at),
        hardware: Some(crate::train::device::hardware(device)),
        command: command.map(str::to_owned),
        results,
    };
    write_atomically(&out.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("serializes"))?;
    Ok(summary)
}

/// The summary a run wrote in `run_dir/summary.json`.
pub fn read_summary(run_dir: &Path) -> Result<Summary> {
    let path = run_dir.join("summary.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::invalid_request(format!("{} is not a fine-tuning run: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid_request(format!("{}: {e}", path.display())))
}

/// Metadata keys of a petal checkpoint.
pub const META_ARCH: &str = "petal.arch";
pub const META_CLASS_NAMES: &str = "petal.class_names";
pub const META_EVAL_TRANSFORM: &str = "petal.eval_transform";
pub const META_DATASET_DIGEST: &str = "petal.dataset_digest";

fn write_backbone(
    out: &Path,
    t: &Trained,
    base_weights: Option<BaseWeightsInfo>,
    dataset: &Dataset,
    recipe: &Recipe,
) -> Result<BackboneResult> {
    let name = t.backbone.name();
    let dir = out.join(name);
    crate::foundation::files::create_dir_all(&dir)?;
    let meta = HashMap::from([
        (META_ARCH.to_string(), name.to_string()),
        (META_CLASS_NAMES.to_string(), serde_json::to_string(&dataset.class_names).expect("serializes")),
        (META_EVAL_TRANSFORM.to_string(), serde_json::to_string(&recipe.eval_transform).expect("serializes")),
        (META_DATASET_DIGEST.to_string(), dataset.digest.clone()),
        ("petal.best_val_accuracy".to_string(), t.best_val_accuracy.to_string()),
    ]);
    write_atomically(&dir.join("checkpoint.safetensors"), &checkpoint_bytes(&t.model.state_dict(), meta)?)?;
    write_atomically(&dir.join("class_names.json"), &serde_json::to_vec(&dataset.class_names).expect("serializes"))?;
    let result = BackboneResult {
        backbone: t.backbone,
        base_weights,
        best_val_accuracy: t.best_val_accuracy,
        best_phase: t.best_epoch.0,
        best_epoch: t.best_epoch.1,
        seconds: t.seconds,
        epochs: t.epochs.clone(),
        phases: t.phases.clone(),
        precision: Some(t.precision),
        checkpoint: format!("{name}/checkpoint.safetensors"),
        metrics: format!("{name}/metrics.json"),
        curves: format!("{name}/curves.png"),
    };
    write_atomically(&dir.join("metrics.json"), &serde_json::to_vec_pretty(&result).expect("serializes"))?;
    write_atomically(&dir.join("curves.png"), &curves_png(name, &t.epochs))?;
    Ok(result)
}

/// The reference notebook's figure (docs/reference_experiment.md): loss and accuracy per epoch,
/// train and validation.
pub fn curves_png(title: &str, epochs: &[EpochMetrics]) -> Vec<u8> {
    let col = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| epochs.iter().map(f).collect::<Vec<_>>();
    let train_loss = col(&|e| Some(e.train_loss));
    let val_loss = col(&|e| Some(e.val_loss));
    let eval_train_loss = col(&|e| e.eval_train_loss);
    let train_acc = col(&|e| Some(e.train_accuracy));
    let val_acc = col(&|e| Some(e.val_accuracy));
    let eval_train_acc = col(&|e| e.eval_train_accuracy);
    let has_eval_train = eval_train_acc.iter().any(Option::is_some);
    let mut loss = vec![plot::Series { label: "train (augmented)", values: &train_loss }];
    let mut accuracy = vec![plot::Series { label: "train (augmented)", values: &train_acc }];
    if has_eval_train {
        loss.push(plot::Series { label: "train (eval)", values: &eval_train_loss });
        accuracy.push(plot::Series { label: "train (eval)", values: &eval_train_acc });
    }
    loss.push(plot::Series { label: "validation", values: &val_loss });
    accuracy.push(plot::Series { label: "validation", values: &val_acc });
    let curves = plot::Curves { title, phase2_start: epochs.iter().position(|e| e.phase == 2), loss, accuracy };
    plot::png(&curves, 1200, 480)
}

/// A state dict as safetensors bytes (float32 and int64 tensors, as stored), with metadata.
pub fn checkpoint_bytes(state: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in state {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let (dtype, bytes) = match t.kind() {
            tch::Kind::Float => (safetensors::Dtype::F32, bytes_of::<f32>(&t)),
            tch::Kind::Int64 => (safetensors::Dtype::I64, bytes_of::<i64>(&t)),
            _ => (safetensors::Dtype::F32, bytes_of::<f32>(&t.to_kind(tch::Kind::Float))),
        };
        data.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, d, s, b)| {
            let v =
                safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| Error::internal(format!("{e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, &Some(metadata)).map_err(|e| Error::internal(format!("safetensors: {e}")))
}

fn bytes_of<T: tch::kind::Element + Copy>(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut v = vec![0u8; n * std::mem::size_of::<T>()];
    t.copy_data_u8(&mut v, n);
    v
}

/// Reads a checkpoint's metadata (arch, class names, eval transform, dataset digest).
pub fn checkpoint_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::new(ErrorCode::WeightsCorrupt, format!("safetensors: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
