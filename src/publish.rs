//! Publishing a fine-tuning run: the winner exported to ONNX and published as a new version of a
//! model with its full provenance — base weights and their licences, the dataset and its terms,
//! the recipe, every epoch's metrics, the machine, the timings and the command that reproduces it —
//! then, when asked, promoted to an alias.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Usage;
use crate::error::{Error, Result};
use crate::export::onnx::{export_weights, WeightsExport};
use crate::records::dataset::Layout;
use crate::records::names::{AliasName, ModelName};
use crate::registry::alias::Promotion;
use crate::registry::manifest::{BaseWeights, DatasetRecord, Manifest, Metrics};
use crate::registry::{NewArtifact, Provenance, Registry};
use crate::train::arch::Arch;
use crate::train::finetune::{BackboneResult, Summary};

/// What to publish a run as.
#[derive(Debug, Clone)]
pub struct PublishRun {
    pub model: ModelName,
    /// Move this alias to the new version.
    pub alias: Option<AliasName>,
    /// Who publishes (alias history).
    pub by: String,
    /// The dataset's name and the terms it may be used under, as the uploader gave them.
    pub dataset_name: String,
    pub dataset_terms: Option<String>,
    /// Store the ONNX weights as float16.
    pub fp16: bool,
    /// Also store the winner's training checkpoint (safetensors) as an artifact.
    pub with_checkpoint: bool,
    /// The command that reproduces the run, when the run's summary does not record it.
    pub command: Option<String>,
    /// The machine the run used, when the run's summary does not record it.
    pub hardware: Option<serde_json::Value>,
    /// Acknowledge non-commercial terms when promoting under a commercial policy.
    pub acknowledge_terms: bool,
    /// The job that ran it (`hyperparameters.job_id`): how a worker that takes a job over finds
    /// a version its previous holder published before it could record the job's end.
    pub job: Option<String>,
}

/// The exported model's evaluation reports on `e.set` and `e.test`, through the serving path
/// (`petal eval`'s), with one session.
fn evaluations(
    onnx: &[u8],
    model: &ModelName,
    e: &EvaluateOn,
) -> Result<(crate::infer::eval::EvalReport, Option<crate::infer::eval::EvalReport>)> {
    let runtime = crate::infer::runtime::OrtRuntime::init(e.onnxruntime)?;
    let handle = crate::infer::engine::ModelHandle::load(&runtime, onnx, model, 0, e.engine)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let on = |set| crate::infer::eval::evaluate(&handle, set, handle.info.max_batch, threads);
    Ok((on(e.set)?, e.test.map(on).transpose()?))
}

/// Adds a report's summary to a version's metrics, as `{prefix}_top1`, `_top5`, `_macro_f1`, `_ece`.
fn record_summary(best: &mut BTreeMap<String, f64>, prefix: &str, r: &crate::infer::eval::EvalReport) {
    for (name, value) in [("top1", r.top1), ("top5", r.top5), ("macro_f1", r.macro_f1), ("ece", r.ece)] {
        best.insert(format!("{prefix}_{name}"), value);
    }
}

/// What a published fine-tuning run records as its provenance's `hyperparameters`, and how a
/// later reader (a worker taking a job over) reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHyperparameters {
    pub backbones: Vec<String>,
    pub winner: Arch,
    // What a reader that takes a job over needs is above; the rest may be missing from records
    // other tools or versions wrote.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub dataset_layout: Option<Layout>,
    #[serde(default)]
    pub dataset_split: String,
    #[serde(default)]
    pub image_size: i64,
    #[serde(default)]
    pub fp16_weights: bool,
    #[serde(default)]
    pub trained_by_petal: String,
    #[serde(default)]
    pub started_at: Option<String>,
    /// How each of the winner's phases ended (completed, or stopped early and why).
    #[serde(default)]
    pub phases: Vec<crate::train::trainer::PhaseEnd>,
    /// The job that ran it: how a worker that takes a job over finds a version its previous
    /// holder published before it could record the job's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl RunHyperparameters {
    /// A version's run record, when it was published from a fine-tuning run.
    pub fn of(provenance: &Provenance) -> Option<RunHyperparameters> {
        serde_json::from_value(provenance.hyperparameters.clone()).ok()
    }
}

/// The key of a backbone's best validation accuracy in `metrics.best`: `val_top1` for a run of
/// one backbone, `val_top1.{backbone}` for each of several.
pub fn best_key(backbone: &str, backbones: usize) -> String {
    if backbones > 1 {
        format!("val_top1.{backbone}")
    } else {
        "val_top1".into()
    }
}

/// What a version is evaluated on before it is published: labelled images (kept encoded) run
/// through the serving path with these onnxruntime and engine settings.
pub struct EvaluateOn<'a> {
    pub set: &'a crate::dataset::EvalSet,
    /// The dataset's `test/` images, when it has some: reported apart (`evaluation-test.json`).
    pub test: Option<&'a crate::dataset::EvalSet>,
    pub onnxruntime: &'a crate::config::OnnxRuntimeConfig,
    pub engine: &'a crate::config::EngineConfig,
}

/// A version ready to publish: its artifacts and provenance, and the promotion's reason.
pub struct PreparedVersion {
    artifacts: Vec<NewArtifact>,
    provenance: Provenance,
    reason: String,
}

/// Reads `run_dir/summary.json` (written by `train::finetune::finetune`) and exports its winner:
/// the ONNX model, its evaluation report (`evaluation.json`, `confusion.png`) when `evaluate`
/// gives images, the winner's training curves (`curves.png`), the checkpoint when asked. Runs the
/// evaluation (blocking): call it outside an async context.
pub fn prepare_run(run_dir: &Path, opts: &PublishRun, evaluate: Option<EvaluateOn<'_>>) -> Result<PreparedVersion> {
    let summary = crate::train::finetune::read_summary(run_dir)?;
    let winner = summary.results.iter().find(|r| r.backbone == summary.winner).ok_or_else(|| {
        Error::invalid_request(format!("{}: the winner has no result", run_dir.join("summary.json").display()))
    })?;
    let checkpoint = crate::foundation::files::read(&run_dir.join(&winner.checkpoint))?;
    let request = WeightsExport { model_name: Some(opts.model.to_string()), fp16: opts.fp16, ..Default::default() };
    let exported = export_weights(winner.backbone, &checkpoint, request)?;
    let mut provenance = provenance(&summary, winner, opts, exported.image_size);
    let reports = evaluate.as_ref().map(|e| evaluations(&exported.onnx, &opts.model, e)).transpose()?;
    let (report, test) = reports.map_or((None, None), |(r, t)| (Some(r), t));
    let mut artifacts = vec![NewArtifact::new("model.onnx", exported.onnx)];
    if let Some(r) = &report {
        record_summary(&mut provenance.metrics.best, "eval", r);
        artifacts.push(NewArtifact::new("evaluation.json", serde_json::to_vec_pretty(r).expect("serializes")));
        let title = format!("{} - {}", opts.model, r.split);
        let heat_map = crate::train::plot::confusion_png(&title, &r.confusion_matrix);
        artifacts.push(NewArtifact::new("confusion.png", heat_map));
    }
    if let Some(r) = &test {
        record_summary(&mut provenance.metrics.best, "test", r);
        artifacts.push(NewArtifact::new("evaluation-test.json", serde_json::to_vec_pretty(r).expect("serializes")));
    }
    if let Ok(curves) = std::fs::read(run_dir.join(&winner.curves)) {
        artifacts.push(NewArtifact::new("curves.png", curves));
    }
    if opts.with_checkpoint {
        artifacts.push(NewArtifact::new("checkpoint.safetensors", checkpoint));
    }
    let reason = format!(
        "published from a fine-tuning run: {} at {:.2} % validation top-1",
        winner.backbone,
        winner.best_val_accuracy * 100.0
    );
    Ok(PreparedVersion { artifacts, provenance, reason })
}

/// Publishes a prepared version and, when `opts.alias` asks, moves the alias to it; returns the
/// new version's manifest.
pub async fn publish_prepared(
    registry: &Registry,
    version: PreparedVersion,
    opts: &PublishRun,
    usage: Usage,
) -> Result<Manifest> {
    let PreparedVersion { artifacts, provenance, reason } = version;
    let manifest = registry.publish(&opts.model, artifacts, provenance, |_| {}).await?;
    if let Some(alias) = &opts.alias {
        let promotion = Promotion {
            version: manifest.version,
            if_match: None,
            by: opts.by.clone(),
            reason,
            acknowledge_terms: opts.acknowledge_terms,
        };
        registry.promote(&opts.model, alias, &promotion, usage).await.map_err(|e| {
            Error::new(
                e.code,
                format!(
                    "{} version {} was published, but moving {alias} to it failed: {}",
                    manifest.model, manifest.version, e.message
                ),
            )
        })?;
    }
    Ok(manifest)
}

/// The provenance record of a run's winner.
pub fn provenance(summary: &Summary, winner: &BackboneResult, opts: &PublishRun, image_size: i64) -> Provenance {
    let base_weights = winner.base_weights.as_ref().map(|b| {
        let entry = crate::train::catalog::Catalog::embedded().by_sha256(&b.sha256);
        BaseWeights {
            catalog: b.catalog.clone(),
            arch: winner.backbone.name().into(),
            url: entry.map(|e| e.url.clone()),
            sha256: b.sha256.clone(),
            licences: b.licences.clone(),
        }
    });
    let d = &summary.dataset;
    let dataset = DatasetRecord {
        digest: d.digest.clone(),
        name: if opts.dataset_name.is_empty() { "unnamed".into() } else { opts.dataset_name.clone() },
        class_names: d.class_names.clone(),
        counts: BTreeMap::from([
            ("train".to_string(), d.train_images as u64),
            ("val".to_string(), d.val_images as u64),
        ]),
        terms: opts.dataset_terms.clone(),
        licences: Vec::new(),
    };
    let mut best = BTreeMap::from([
        ("val_top1".to_string(), winner.best_val_accuracy),
        ("best_phase".to_string(), f64::from(winner.best_phase)),
        ("best_epoch".to_string(), winner.best_epoch as f64),
    ]);
    if let Some(e) = winner.epochs.iter().find(|e| e.phase == winner.best_phase && e.epoch == winner.best_epoch) {
        best.insert("val_loss".into(), e.val_loss);
    }
    if summary.results.len() > 1 {
        for r in &summary.results {
            best.insert(best_key(r.backbone.name(), summary.results.len()), r.best_val_accuracy);
        }
    }
    let per_epoch = winner.epochs.iter().map(|e| serde_json::to_value(e).expect("serializes")).collect();
    let mut timings = BTreeMap::from([("run_s".to_string(), summary.seconds)]);
    for r in &summary.results {
        timings.insert(format!("{}_s", r.backbone.name()), r.seconds);
    }
    let hyperparameters = RunHyperparameters {
        backbones: summary.results.iter().map(|r| r.backbone.name().to_string()).collect(),
        winner: winner.backbone,
        device: summary.device.clone(),
        dataset_layout: Some(d.layout),
        dataset_split: d.split.clone(),
        image_size,
        fp16_weights: opts.fp16,
        trained_by_petal: summary.petal_version.clone(),
        started_at: summary.started_at.clone(),
        phases: winner.phases.clone(),
        job_id: opts.job.clone(),
    };
    Provenance {
        base_weights,
        dataset: Some(dataset),
        recipe: serde_json::to_value(&summary.recipe).expect("serializes"),
        hyperparameters: serde_json::to_value(&hyperparameters).expect("serializes"),
        metrics: Metrics { best, per_epoch },
        hardware: summary.hardware.clone().or_else(|| opts.hardware.clone()).unwrap_or(serde_json::Value::Null),
        timings,
        command: summary.command.clone().or_else(|| opts.command.clone()),
        ..Default::default()
    }
}
