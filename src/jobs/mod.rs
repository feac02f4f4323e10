//! Fine-tuning jobs: what a client asks for (`JobSpec`), what petal records about it (`Job`,
//! kept in the registry at `jobs/{id}.json`, so that every job shows its true state after a
//! restart), and the runner that trains them one at a time per device (`runner`).
//!
//! States: `queued → running → succeeded | failed | canceled`. A running job saves a training
//! checkpoint to the registry after every epoch, and where it stands when petal shuts down
//! (`train::checkpoint`). A job that was running when petal stopped is queued again at the next
//! start and goes on from its last checkpoint (`Job::resumes` records it); after
//! `jobs.max_attempts` such stops it is failed with `job_interrupted` instead. Queued jobs are
//! queued again.
pub mod idempotency;
pub mod lease;
pub mod retention;
pub mod runner;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dataset::{IngestOptions, OnBadImage, OxfordSplit};
use crate::error::{Error, ErrorCode, Result};
use crate::records::names::{AliasName, ModelName};
use crate::registry::Registry;
use crate::train::arch::Arch;
use crate::train::checkpoint::{Position, Slot};
use crate::train::device::DeviceChoice;
use crate::train::recipe::Recipe;
use crate::train::trainer::{CheckpointSaved, EpochMetrics};

/// A fine-tuning job as a client asks for it. Everything but `model` has a default: the reference
/// recipe on MobileNetV2 from its ImageNet weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "flowers", "backbones": ["mobilenet_v2"], "epochs1": 16, "epochs2": 8,
    "batch_size": 16, "seed": 0, "device": "auto", "promote": "production",
    "dataset": {"name": "Oxford Flowers 102", "terms": "research use only"}}))]
pub struct JobSpec {
    /// The model the winner is published as (a new version of it).
    pub model: ModelName,
    /// Backbones to train; the best validation accuracy wins. Absent or empty: `mobilenet_v2`.
    #[serde(default = "default_backbones", deserialize_with = "backbones_or_default")]
    #[schema(max_items = 8, default = json!(["mobilenet_v2"]))]
    pub backbones: Vec<Arch>,
    /// Starting weights per backbone name: a catalog name (`IMAGENET1K_V1`) or `scratch`.
    /// Default: each backbone's catalog default, which must be in the weights cache.
    #[serde(default)]
    #[schema(default = json!({}))]
    pub weights: BTreeMap<String, String>,
    /// The whole recipe; the fields below override parts of it.
    #[serde(default)]
    pub recipe: Option<Recipe>,
    /// Epochs of phase 1 (head only) and phase 2 (every layer).
    #[schema(minimum = 1, maximum = 1000)]
    pub epochs1: Option<usize>,
    #[schema(minimum = 0, maximum = 1000)]
    pub epochs2: Option<usize>,
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: Option<usize>,
    /// Phase 1's learning rate (the head).
    #[schema(exclusive_minimum = 0.0, maximum = 10.0)]
    pub lr1: Option<f64>,
    /// Phase 2's learning rate of the top group (the head); lower groups decay from it.
    #[schema(exclusive_minimum = 0.0, maximum = 10.0)]
    pub lr2: Option<f64>,
    /// Augmentation of phase 2 (and of phase 1 unless `cached_features`).
    #[serde(default)]
    pub augment: Option<crate::train::recipe::Augment>,
    /// Phase 1 on features computed once (the CPU shortcut: no augmentation in phase 1).
    #[serde(default)]
    #[schema(default = false)]
    pub cached_features: bool,
    pub seed: Option<u64>,
    /// `auto` (CUDA when present), `cpu` or `cuda`.
    #[serde(default)]
    #[schema(default = "auto")]
    pub device: DeviceChoice,
    #[serde(default)]
    pub split: SplitSpec,
    /// Leave undecodable images out with a warning instead of refusing the dataset.
    #[serde(default)]
    #[schema(default = false)]
    pub skip_bad_images: bool,
    #[serde(default)]
    pub dataset: DatasetSpec,
    /// Move this alias to the published version when the job succeeds (e.g. `production`).
    pub promote: Option<AliasName>,
    /// Acknowledge the lineage's non-commercial terms, for `promote` under a commercial policy.
    #[serde(default)]
    #[schema(default = false)]
    pub acknowledge_terms: bool,
}

fn default_backbones() -> Vec<Arch> {
    vec![Arch::MobilenetV2]
}

/// An empty list means the default, as leaving it out does: some generated clients send every
/// list they have, empty or not.
fn backbones_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Arch>, D::Error> {
    let list = Vec::<Arch>::deserialize(d)?;
    Ok(if list.is_empty() { default_backbones() } else { list })
}

/// How to split a dataset that brings no split of its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Share of each class held out for validation (default 0.2).
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub val_fraction: Option<f64>,
    /// Oxford Flowers 102: `reference` (train on tstid) or `papers`.
    pub oxford_split: Option<OxfordSplit>,
}

/// Which dataset, and under which terms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The dataset's name for provenance and model cards.
    #[serde(default)]
    pub name: String,
    /// The terms it may be used under, recorded verbatim (without a structured licence they count
    /// as not allowing commercial use).
    pub terms: Option<String>,
    /// A dataset already in the registry (the sha256 of its archive), instead of an upload.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: Option<String>,
    /// An archive in an S3 bucket (`s3://bucket/key`, read with the registry's S3 endpoint and
    /// credentials), instead of an upload.
    #[schema(pattern = "^s3://[^/]+/.*[^/]$")]
    pub uri: Option<String>,
}

impl JobSpec {
    /// Checks everything that can be checked before the dataset is looked at.
    pub fn validate(&self) -> Result<()> {
        let unique: std::collections::BTreeSet<_> = self.backbones.iter().collect();
        if self.backbones.is_empty() || self.backbones.len() > 8 || unique.len() != self.backbones.len() {
            return Err(Error::new(ErrorCode::InvalidArguments, "backbones: 1 to 8 different backbones"));
        }
        for (key, name) in &self.weights {
            let arch: Arch = key.parse()?;
            if !self.backbones.contains(&arch) {
                return Err(Error::new(
                    ErrorCode::InvalidArguments,
                    format!("weights: {key} is not among the backbones"),
                ));
            }
            // A catalog name or `scratch`, never a path on the server.
            if name != "scratch" {
                crate::train::catalog::Catalog::embedded().find(arch, Some(name))?;
            }
        }
        self.recipe().validate()?;
        if let Some(f) = self.split.val_fraction {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::new(ErrorCode::InvalidArguments, "split.val_fraction must be in (0, 1)"));
            }
        }
        if let Some(sha) = &self.dataset.sha256 {
            crate::registry::datasets::check_sha256(sha)?;
        }
        if self.dataset.sha256.is_some() && self.dataset.uri.is_some() {
            return Err(Error::new(ErrorCode::InvalidArguments, "dataset: give sha256 or uri, not both"));
        }
        if let Some(uri) = &self.dataset.uri {
            parse_s3_uri(uri)?;
        }
        Ok(())
    }

    /// The recipe as run: `recipe` (or the reference) with the overrides applied.
    pub fn recipe(&self) -> Recipe {
        self.recipe.clone().unwrap_or_default().with(&crate::train::recipe::Overrides {
            epochs1: self.epochs1,
            epochs2: self.epochs2,
            batch_size: self.batch_size,
            lr1: self.lr1,
            lr2: self.lr2,
            seed: self.seed,
            augment: self.augment.clone(),
            cached_features: self.cached_features,
            ..Default::default()
        })
    }

    /// How the dataset is read and split, under the server's limits (`jobs.*`).
    pub fn ingest_options(&self, limits: &crate::config::JobsConfig) -> IngestOptions {
        let defaults = IngestOptions::default();
        IngestOptions {
            decode: limits.decode,
            max_classes: limits.max_classes,
            seed: self.recipe().seed,
            val_fraction: self.split.val_fraction.unwrap_or(defaults.val_fraction),
            oxford_split: self.split.oxford_split.unwrap_or(defaults.oxford_split),
            on_bad_image: if self.skip_bad_images { OnBadImage::Skip } else { defaults.on_bad_image },
            ..defaults
        }
    }
}

/// Where a submitted job's dataset comes from, decided once from what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// The request's `dataset` part, staged with its sha256 and size.
    Upload { sha256: String, size: u64 },
    /// A dataset already in the registry (`dataset.sha256`).
    Stored { sha256: String },
    /// An archive in an allowed S3 bucket (`dataset.uri`).
    S3 { bucket: String, key: String },
}

impl DatasetSource {
    /// What names the dataset, for an Idempotency-Key's fingerprint: its sha256 (uploaded or
    /// stored: the same bytes are the same dataset), or its S3 URI.
    pub fn identity(&self) -> String {
        match self {
            DatasetSource::Upload { sha256, .. } | DatasetSource::Stored { sha256 } => format!("sha256:{sha256}"),
            DatasetSource::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }

    /// The one source among an upload (its sha256 and size), `dataset.sha256` and `dataset.uri`.
    pub fn of(upload: Option<(String, u64)>, spec: &DatasetSpec) -> Result<DatasetSource> {
        match (upload, &spec.sha256, &spec.uri) {
            (Some((sha256, size)), None, None) => Ok(DatasetSource::Upload { sha256, size }),
            (None, Some(sha256), None) => Ok(DatasetSource::Stored { sha256: sha256.clone() }),
            (None, None, Some(uri)) => {
                let (bucket, key) = parse_s3_uri(uri)?;
                Ok(DatasetSource::S3 { bucket, key })
            }
            (None, None, None) => Err(Error::new(
                ErrorCode::InvalidArguments,
                "send the dataset archive as the `dataset` part, or name one with dataset.sha256 or dataset.uri",
            )),
            _ => Err(Error::new(
                ErrorCode::InvalidArguments,
                "give one dataset: an uploaded `dataset` part, dataset.sha256 or dataset.uri",
            )),
        }
    }
}

/// Who submits a job, as far as the submission policy cares.
pub struct Submitter {
    /// Holds the admin scope (or no tokens are configured).
    pub may_promote: bool,
}

impl JobSpec {
    /// The deployment's submission policy, checked after `validate`: moving an alias needs the
    /// admin scope; S3 datasets come only from `jobs.dataset_buckets`; under a commercial usage
    /// policy, promoting needs the lineage's non-commercial terms acknowledged.
    pub fn check_submission(
        &self,
        source: &DatasetSource,
        by: &Submitter,
        config: &crate::config::Config,
    ) -> Result<()> {
        if self.promote.is_some() && !by.may_promote {
            return Err(Error::new(ErrorCode::Forbidden, "`promote` moves an alias, which needs the admin scope"));
        }
        if let DatasetSource::S3 { bucket, .. } = source {
            if !config.jobs.dataset_buckets.contains(bucket) {
                return Err(Error::new(
                    ErrorCode::InvalidArguments,
                    format!("bucket {bucket:?} is not in jobs.dataset_buckets, the buckets datasets may be read from"),
                ));
            }
        }
        if config.registry.usage == crate::config::Usage::Commercial
            && self.promote.is_some()
            && !self.acknowledge_terms
        {
            return Err(Error::new(
                ErrorCode::LicenceNotAcknowledged,
                "this deployment's use is commercial and the ImageNet weights are for non-commercial research: set \
                 acknowledge_terms to promote the result",
            ));
        }
        Ok(())
    }
}

/// `s3://bucket/key` → (bucket, key).
pub fn parse_s3_uri(uri: &str) -> Result<(String, String)> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| Error::new(ErrorCode::InvalidArguments, format!("dataset.uri: {uri:?} is not an s3:// URI")))?;
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(Error::new(ErrorCode::InvalidArguments, format!("dataset.uri: {uri:?} is not s3://bucket/key"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

/// What a job is doing, or how it ended (the wire names are those of earlier records).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, ToSchema)]
pub enum Stage {
    #[default]
    #[serde(rename = "queued")]
    Queued,
    #[serde(rename = "reading the dataset")]
    ReadingDataset,
    #[serde(rename = "training")]
    Training,
    #[serde(rename = "publishing")]
    Publishing,
    #[serde(rename = "done")]
    Done,
    #[serde(rename = "canceled")]
    Canceled,
    #[serde(rename = "failed")]
    Failed,
    /// Its process or worker stopped while running it.
    #[serde(rename = "interrupted")]
    Interrupted,
    /// A stage this version does not know (a record written by another version).
    #[serde(rename = "unknown", other)]
    Unknown,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).expect("a stage serializes");
        f.write_str(v.as_str().expect("a stage is a string"))
    }
}

/// Where a running job is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct Progress {
    /// What it is doing: `queued`, `reading the dataset`, `training`, `publishing`, `done`; how it
    /// ended: `canceled`, `failed`, `interrupted`.
    pub stage: Stage,
    pub backbone: Option<Arch>,
    pub phase: Option<u8>,
    pub epoch: Option<usize>,
    pub epochs: Option<usize>,
    pub step: Option<usize>,
    pub steps: Option<usize>,
    /// 0–100 over every backbone's planned training images.
    pub percent: f64,
    pub eta_s: Option<f64>,
    pub images_per_s: Option<f64>,
}

/// What a successful job produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobResult {
    pub model: String,
    pub version: u64,
    pub winner: Arch,
    pub best_val_accuracy: f64,
    /// Best validation accuracy of every backbone tried.
    pub backbones: BTreeMap<String, f64>,
    /// The alias moved to this version, when the spec asked.
    pub promoted: Option<AliasName>,
}

/// Why a job failed or was canceled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl From<&Error> for JobError {
    fn from(e: &Error) -> Self {
        JobError { code: e.code.as_str().to_string(), message: e.message.clone() }
    }
}

/// A job as petal records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(example = json!({"id": "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10", "state": "running",
    "spec": {"model": "flowers", "backbones": ["mobilenet_v2"], "device": "auto"},
    "dataset": {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "name": "flowers"},
    "created_at": "2026-11-28T10:00:00Z", "started_at": "2026-11-28T10:00:01Z",
    "progress": {"stage": "training", "backbone": "mobilenet_v2", "phase": 2, "epoch": 3, "epochs": 8,
                 "step": 120, "steps": 385, "percent": 61.5, "eta_s": 840.0, "images_per_s": 21.3},
    "epochs": []}))]
pub struct Job {
    pub id: String,
    pub state: JobState,
    pub spec: JobSpec,
    pub dataset: JobDataset,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Which attempt runs (or ran) it: 1 for the first; more when a `petal worker` took the job
    /// over from one that stopped (the job then went on from its last checkpoint).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The `petal worker` that holds (or held) it; absent for jobs of a single-process server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default)]
    pub progress: Progress,
    /// Every finished epoch's metrics, every backbone.
    #[serde(default)]
    pub epochs: Vec<EpochMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Problems the dataset check let through (skipped images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Who submitted it: the token holder's name (absent without tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The newest training checkpoint saved (in the registry, `checkpoints/{job}/…`): what a
    /// run taken over or restarted goes on from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSaved>,
    /// Each time a run of it went on from a checkpoint (or found none usable), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<ResumeRecord>,
    /// `petal serve`: times the server restarted while the job ran (bounded by
    /// `jobs.max_attempts`, as a worker's attempts are).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

/// A run that went on from a checkpoint, as the job records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResumeRecord {
    /// The attempt that resumed (0: a `petal serve` job; see `restarts`).
    pub attempt: u32,
    pub at: String,
    pub backbone: Arch,
    /// The checkpoint used; absent when none could be (the backbone started from the beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Slot>,
    /// What ran next: phase, epoch (0-based) and batch (phase 3: the backbone was already trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Position>,
    /// Optimiser steps the phase had taken at the checkpoint.
    pub optimizer_steps: u64,
    /// Epochs measured before the checkpoint (kept in `epochs`).
    pub epochs_restored: usize,
    /// Checkpoints found and not used, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discarded: Vec<String>,
}

/// The dataset a job trains on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobDataset {
    /// sha256 of the archive in the registry's dataset area.
    pub sha256: String,
    pub name: String,
}

impl Job {
    /// Ends the job: its final state, the stage it reports, why (when it did not succeed).
    pub fn end(&mut self, state: JobState, stage: Stage, error: Option<JobError>) {
        debug_assert!(state.is_terminal());
        self.state = state;
        self.finished_at = Some(crate::foundation::clock::now_rfc3339());
        self.progress.stage = stage;
        self.error = error;
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Job ids are UUIDs.
pub fn check_job_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Error::new(ErrorCode::NotFound, format!("no job {id:?}: job ids are UUIDs")))
}

impl Job {
    /// A job just submitted: queued, on `dataset`, for `owner` (the caller's token name).
    pub fn queued(spec: JobSpec, dataset: JobDataset, owner: Option<String>) -> Job {
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            state: JobState::Queued,
            dataset,
            spec,
            created_at: crate::foundation::clock::now_rfc3339(),
            started_at: None,
            finished_at: None,
            attempt: 0,
            worker: None,
            progress: Progress { stage: Stage::Queued, ..Default::default() },
            epochs: Vec::new(),
            result: None,
            error: None,
            warnings: Vec::new(),
            owner,
            checkpoint: None,
            resumes: Vec::new(),
            restarts: 0,
        }
    }
}

/// Job records, stored by the registry (`registry::jobs`) as this module's `Job`.
impl Registry {
    pub async fn put_job(&self, job: &Job) -> Result<()> {
        self.put_job_record(&job.id, job).await
    }

    pub async fn job(&self, id: &str) -> Result<Job> {
        check_job_id(id)?;
        self.job_record(id).await?.ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    /// Every job record, oldest first.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = self.job_records().await?;
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_backbone_list_is_the_default_as_leaving_it_out_is() {
        let empty: JobSpec = serde_json::from_str(r#"{"model": "m", "backbones": []}"#).unwrap();
        let absent: JobSpec = serde_json::from_str(r#"{"model": "m"}"#).unwrap();
        assert_eq!(empty.backbones, vec![Arch::MobilenetV2]);
        assert_eq!(empty, absent);
    }
}
