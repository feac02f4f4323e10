//! Fine-tuning over HTTP: `POST /finetune` (an uploaded archive, or a dataset already in the
//! registry or in S3, plus a job spec), `POST /finetune/check` (the same, checked and not queued),
//! `POST /jobs` (a JSON spec naming a dataset already stored), and the jobs they create — list,
//! status, cancel and server-sent events.
//!
//! Each operation is documented with one body type and one success type, which every client
//! generator can express; the server also takes the older forms of `POST /finetune` (a JSON spec,
//! `?dry_run=true`).
use std::time::Duration;

use actix_web::http::header::LOCATION;
use actix_web::{get, post, web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::error::{Error, ErrorBody, ErrorCode, Result};
use crate::jobs::{idempotency, DatasetSource, Job, JobDataset, JobSpec, JobState, Submitter};
use crate::registry::datasets::StoredDataset;

/// Largest `spec` part or JSON body.
const MAX_SPEC_BYTES: usize = 256 << 10;

/// The multipart form of `POST /finetune` and `POST /finetune/check`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FinetuneForm {
    /// The job spec as JSON text (schema `JobSpec`), e.g. `{"model": "flowers"}`. A text part, so
    /// that every generated client sends it as written (its content type is not read).
    #[schema(value_type = String, content_media_type = "application/json",
             example = json!("{\"model\": \"flowers\", \"epochs1\": 4, \"epochs2\": 2}"))]
    spec: JobSpec,
    /// The dataset archive: zip, tar or tar.gz of an ImageFolder (`class/image`), `train/` +
    /// `val/` folders, or Oxford Flowers 102 as distributed.
    #[schema(value_type = Option<String>, format = Binary)]
    dataset: Option<Vec<u8>>,
}

/// `?dry_run=true` on `POST /finetune`: the older spelling of `POST /finetune/check`, still taken
/// (not in the document, whose operations each have one success type).
#[derive(Debug, Deserialize)]
pub struct FinetuneQuery {
    pub dry_run: Option<bool>,
}

/// What a dry run found.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "size": 168873216,
    "dataset": {"digest": "e878390adb05ac1a…", "layout": "oxford102", "split": "Oxford Flowers 102 setid.mat, the reference's",
                "classes": ["1", "2"], "class_names": ["pink primrose", "hard-leaved pocket orchid"],
                "train_images": 6149, "val_images": 2040, "warnings": 0},
    "recipe": {"batch_size": 16}}))]
pub struct FinetuneCheck {
    /// sha256 of the archive (the dataset's id once stored).
    pub sha256: String,
    pub size: u64,
    pub dataset: crate::records::dataset::DatasetSummary,
    /// The recipe the job would run.
    pub recipe: crate::train::recipe::Recipe,
}

/// The `Idempotency-Key` header of the operations that queue a job.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyHeader {
    /// Makes a retry safe: a submission with a key this caller used in the last
    /// `jobs.idempotency_ttl_s` (24 h) answers the job the first one created (with
    /// `Idempotent-Replayed: true`) instead of queueing another; the same key with another spec or
    /// dataset is refused (422 `idempotency_key_reused`). 1–255 visible ASCII characters.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$")]
    key: Option<String>,
}

/// A queued job, as the operations that queue one answer it.
#[derive(utoipa::IntoResponses)]
#[response(status = 202, description = "Queued; follow it at the Location.",
           headers(("Location" = String, description = "`/jobs/{id}`"),
                   ("Idempotent-Replayed" = String, description = "`true` when an earlier submission with the same Idempotency-Key created the job")))]
#[allow(dead_code)]
struct Queued(Job);

/// The errors every submission may meet (`POST /finetune`, `/finetune/check`, `/jobs`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SubmissionErrors {
    #[response(status = 400)]
    Bad(#[ref_response] crate::api::responses::BadSubmission),
    #[response(status = 401)]
    Unauthorized(#[ref_response] crate::api::responses::Unauthorized),
    #[response(status = 403)]
    Forbidden(#[ref_response] crate::api::responses::ForbiddenSubmission),
    #[response(status = 404)]
    NotFound(#[ref_response] crate::api::responses::SubmissionNotFound),
    #[response(status = 413)]
    TooLarge(#[ref_response] crate::api::responses::DatasetTooLarge),
    #[response(status = 422)]
    Invalid(#[ref_response] crate::api::responses::InvalidSubmission),
    #[response(status = 429)]
    Full(#[ref_response] crate::api::responses::SubmissionsFull),
    #[response(status = 503)]
    NotReady(#[ref_response] crate::api::responses::RunnerNotReady),
}

#[utoipa::path(
    post,
    path = "/finetune",
    tag = "training",
    operation_id = "finetune",
    summary = "Start a fine-tuning job on an uploaded dataset",
    description = "Multipart: a `spec` part (the job spec as JSON text) and a `dataset` part (the archive, streamed to \
                   disk and into the registry's dataset area in parts, never held whole in memory). Without a \
                   `dataset` part the spec names a dataset already in the registry (`dataset.sha256`) or in S3 \
                   (`dataset.uri`) — as `POST /jobs` does with a JSON body. The dataset is read and checked before the \
                   job is queued; every problem is listed in the 422. On success the winner is exported to ONNX and \
                   published as a new version of `spec.model`, promoted only when `spec.promote` names an alias. \
                   (Also taken, for older clients: a JSON spec as the body, and `?dry_run=true` for \
                   `POST /finetune/check`.)",
    params(IdempotencyHeader),
    request_body(description = "The job spec and its dataset.", content((FinetuneForm = "multipart/form-data"))),
    responses(
        Queued,
        SubmissionErrors,
        (status = 409, response = crate::api::responses::IdempotencyInProgress),
        (status = 415, description = "Not multipart/form-data.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "send multipart/form-data or application/json"}}))
    ),
    security(("bearer" = ["train"]))
)]
#[post("/finetune")]
pub async fn finetune(
    req: HttpRequest,
    query: web::Query<FinetuneQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let mode = if query.dry_run == Some(true) { Mode::Check } else { Mode::Queue };
    submit(req, payload, state, mode, Bodies::FormOrJson).await
}

#[utoipa::path(
    post,
    path = "/finetune/check",
    tag = "training",
    operation_id = "check_finetune",
    summary = "Check a fine-tuning submission without queueing it",
    description = "The same form as `POST /finetune` (a JSON spec is taken too): the spec and the dataset get every \
                   check a submission gets, and the answer is what petal read — the archive's sha256 and size, the \
                   dataset's layout, classes and images, the recipe the job would run. Nothing is stored and no job is \
                   queued.",
    request_body(description = "The job spec and its dataset.", content((FinetuneForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "The spec and the dataset pass every check.", body = FinetuneCheck),
        SubmissionErrors,
        (status = 415, description = "Neither multipart/form-data nor application/json.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "send multipart/form-data or application/json"}}))
    ),
    security(("bearer" = ["train"]))
)]
#[post("/finetune/check")]
pub async fn check_finetune(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    submit(req, payload, state, Mode::Check, Bodies::FormOrJson).await
}

#[utoipa::path(
    post,
    path = "/jobs",
    tag = "training",
    operation_id = "create_job",
    summary = "Start a fine-tuning job on a stored dataset",
    description = "A JSON job spec naming a dataset already in the registry (`dataset.sha256`, e.g. one an earlier job \
                   uploaded) or in S3 (`dataset.uri`, a bucket of `jobs.dataset_buckets`). Checked as `POST /finetune` \
                   checks, then queued.",
    params(IdempotencyHeader),
    request_body(description = "The job spec.", content((JobSpec = "application/json"))),
    responses(
        Queued,
        SubmissionErrors,
        (status = 409, response = crate::api::responses::IdempotencyInProgress),
        (status = 415, description = "Not application/json.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "send application/json"}}))
    ),
    security(("bearer" = ["train"]))
)]
#[post("/jobs")]
pub async fn create_job(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse> {
    submit(req, payload, state, Mode::Queue, Bodies::Json).await
}

/// What a submission asks for: a job, or only the checks.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Queue,
    Check,
}

/// The bodies an operation takes.
#[derive(Clone, Copy)]
enum Bodies {
    FormOrJson,
    Json,
}

/// A submission, whichever operation it came through.
async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    mode: Mode,
    bodies: Bodies,
) -> Result<HttpResponse> {
    let runner = state.runner()?;
    let caller = req.extensions().get::<crate::api::auth::Caller>().cloned();
    let owner = caller.as_ref().filter(|c| c.scopes.is_some()).map(|c| c.name.clone());
    if matches!(bodies, Bodies::Json) && crate::api::media_type(&req).1 != "application/json" {
        return Err(Error::new(ErrorCode::UnsupportedMediaType, "send application/json"));
    }
    // Admitted before a byte of the body is read or staged: a place among the uploads in flight,
    // its declared bytes on disk, and room among the caller's active jobs.
    let _admitted = state.uploads.admit(&req, &state.config.jobs)?;
    let dry_run = mode == Mode::Check;
    // A retried submission (same Idempotency-Key) gets its job whatever the limits say now: it is
    // checked once the submission is read.
    let key = idempotency_key(&req)?.filter(|_| !dry_run);
    if !dry_run && key.is_none() {
        runner.check_room_for(owner.as_deref()).await?;
    }
    crate::foundation::files::create_dir_all(&runner.work_dir())?;
    let staged = tempfile::Builder::new()
        .prefix(&crate::jobs::runner::staging_prefix("upload"))
        .tempfile_in(runner.work_dir())
        .map_err(|e| Error::io("creating a staging file in", &runner.work_dir(), e))?;
    let limit = state.config.jobs.max_upload_bytes;
    let (spec, upload) = read_submission(&req, payload, staged.as_file(), limit).await?;
    spec.validate()?;
    let source = DatasetSource::of(upload, &spec.dataset)?;
    let by = Submitter { may_promote: caller.is_some_and(|c| c.may(crate::config::Scope::Admin)) };
    spec.check_submission(&source, &by, &state.config)?;
    let registry = runner.registry();
    let reservation = match &key {
        None => None,
        Some(key) => {
            let print = idempotency::fingerprint(&spec, &source.identity());
            let ttl = state.config.jobs.idempotency_ttl_s;
            match idempotency::reserve(registry, owner.as_deref(), key, &print, ttl).await? {
                idempotency::Reserved::Replay(id) => {
                    let job = runner.get(&id).await?;
                    return Ok(HttpResponse::Accepted()
                        .insert_header((LOCATION, format!("/jobs/{}", job.id)))
                        .insert_header(("idempotent-replayed", "true"))
                        .json(job));
                }
                idempotency::Reserved::New(r) => Some(r),
            }
        }
    };
    let submitted = async {
        if reservation.is_some() {
            runner.check_room_for(owner.as_deref()).await?;
        }
        submit_checked(&state, runner, (spec, source), staged.path(), limit, owner, dry_run).await
    }
    .await;
    match (reservation, &submitted) {
        (Some(r), Ok(Submitted::Queued(job))) => {
            if let Err(e) = r.complete(registry, &job.id).await {
                tracing::warn!(job = %job.id, error = %e, "cannot record the job under its Idempotency-Key");
            }
        }
        (Some(r), _) => r.release(registry).await,
        (None, _) => {}
    }
    Ok(match submitted? {
        Submitted::Checked(check) => HttpResponse::Ok().json(*check),
        Submitted::Queued(job) => {
            HttpResponse::Accepted().insert_header((LOCATION, format!("/jobs/{}", job.id))).json(job)
        }
    })
}

/// What a submission came to: a dry run's findings, or a queued job.
enum Submitted {
    Checked(Box<FinetuneCheck>),
    Queued(Box<Job>),
}

/// The request's `Idempotency-Key`, checked.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>> {
    let Some(v) = req.headers().get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().map_err(|_| Error::invalid_request("Idempotency-Key must be visible ASCII"))?.to_string();
    idempotency::check_key(&key)?;
    Ok(Some(key))
}

/// The rest of a submission once its spec is read and checked: the dataset checked and stored (or
/// found stored), the job queued — or, for a dry run, what the checks found.
async fn submit_checked(
    state: &web::Data<AppState>,
    runner: &crate::jobs::runner::Runner,
    (spec, source): (JobSpec, DatasetSource),
    staged: &std::path::Path,
    limit: u64,
    owner: Option<String>,
    dry_run: bool,
) -> Result<Submitted> {
    weights_are_cached(state, &spec).await?;
    let registry = runner.registry();
    // The archive to check is in the staging file (uploaded, or fetched from S3 now), or the
    // dataset is already stored.
    let archive = match source {
        DatasetSource::Upload { sha256, size } => Archive::Staged { sha256, size },
        DatasetSource::S3 { bucket, key } => {
            let s3 = &state.config.registry.s3;
            let (sha256, size) = crate::registry::fetch_s3_object(s3, &bucket, &key, staged, limit).await?;
            Archive::Staged { sha256, size }
        }
        DatasetSource::Stored { sha256 } => Archive::Stored { sha256 },
    };
    if dry_run {
        let (sha256, size, dataset) = match archive {
            Archive::Staged { sha256, size } => (sha256, size, check(state, &spec, staged).await?),
            Archive::Stored { sha256 } => {
                let d = registry.dataset(&sha256).await?;
                (d.sha256, d.size, d.summary)
            }
        };
        return Ok(Submitted::Checked(Box::new(FinetuneCheck { sha256, size, dataset, recipe: spec.recipe() })));
    }
    let dataset = match archive {
        Archive::Staged { sha256, size } => check_and_store(state, &spec, staged, (sha256, size)).await?,
        Archive::Stored { sha256 } => registry.dataset(&sha256).await?,
    };
    let name = if spec.dataset.name.is_empty() { dataset.name.clone() } else { spec.dataset.name.clone() };
    let job = Job::queued(spec, JobDataset { sha256: dataset.sha256.clone(), name }, owner);
    Ok(Submitted::Queued(Box::new(runner.submit(job).await?)))
}

/// The job spec and, for a multipart request, its archive (staged into `file`, with its sha256
/// and size), by the request's media type.
async fn read_submission(
    req: &HttpRequest,
    payload: web::Payload,
    file: &std::fs::File,
    limit: u64,
) -> Result<(JobSpec, Option<(String, u64)>)> {
    let (content_type, mime) = crate::api::media_type(req);
    match mime.as_str() {
        "multipart/form-data" => read_form(req.headers(), payload, file, limit).await,
        "application/json" => Ok((parse_spec(&crate::api::read_body(payload, MAX_SPEC_BYTES).await?)?, None)),
        _ => Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type {content_type:?} is not accepted; send multipart/form-data or application/json"),
        )),
    }
}

/// Every backbone's starting weights are in the weights cache (a job never downloads them).
async fn weights_are_cached(state: &AppState, spec: &JobSpec) -> Result<()> {
    let store = crate::train::weights::store::WeightStore::from_config(&state.config.weights);
    let wanted: Vec<_> = spec.backbones.iter().map(|&a| (a, spec.weights.get(a.name()).cloned())).collect();
    web::block(move || {
        for (arch, w) in wanted {
            crate::train::finetune::resolve_weights(arch, w.as_deref(), &store)?;
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
}

/// A job's dataset archive: in the staging file, with its sha256 and size, or already stored.
enum Archive {
    Staged { sha256: String, size: u64 },
    Stored { sha256: String },
}

/// Reads the dataset at `path` as training will (every problem → 4xx), then stores it.
async fn check_and_store(
    state: &AppState,
    spec: &JobSpec,
    path: &std::path::Path,
    (sha256, size): (String, u64),
) -> Result<StoredDataset> {
    let registry = state.runner()?.registry();
    if let Ok(existing) = registry.dataset(&sha256).await {
        return Ok(existing);
    }
    let summary = check(state, spec, path).await?;
    let record = StoredDataset {
        name: if spec.dataset.name.is_empty() {
            format!("dataset-{}", &sha256[..12])
        } else {
            spec.dataset.name.clone()
        },
        sha256,
        size,
        terms: spec.dataset.terms.clone(),
        summary,
        uploaded_at: crate::foundation::clock::now_rfc3339(),
    };
    registry.put_dataset(path, &record).await?;
    Ok(record)
}

/// Reads the dataset at `path` as training will; every problem is a 4xx. At most
/// `jobs.max_concurrent_checks` at once (else 429), each holding at most `jobs.max_check_bytes`
/// of files and one decoded image per thread.
async fn check(
    state: &AppState,
    spec: &JobSpec,
    path: &std::path::Path,
) -> Result<crate::records::dataset::DatasetSummary> {
    let jobs = &state.config.jobs;
    let _checking = state.uploads.checks.try_acquire().map_err(|_| {
        Error::new(
            ErrorCode::QueueFull,
            format!(
                "{} dataset check(s) are running (jobs.max_concurrent_checks); retry shortly",
                jobs.max_concurrent_checks
            ),
        )
        .with_header("retry-after", "5")
    })?;
    let mut opts = spec.ingest_options(jobs);
    opts.check_only = true;
    opts.limits.max_total_bytes = opts.limits.max_total_bytes.min(jobs.max_check_bytes);
    let eval = spec.recipe().eval_transform;
    let owned = path.to_path_buf();
    web::block(move || crate::dataset::load(&owned, &opts, &eval).map(|d| d.summary()))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
}

/// What `POST /finetune` may hold at once, server-wide: uploads in flight, their bytes staged on
/// disk, dataset checks.
pub struct Uploads {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    staged: crate::foundation::budget::Budget,
    checks: tokio::sync::Semaphore,
}

/// An upload's place and staged bytes, given back when dropped.
pub struct UploadAdmission {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _staged: crate::foundation::budget::Share,
}

const KIB: u64 = 1024;

impl Uploads {
    pub fn new(jobs: &crate::config::JobsConfig) -> Self {
        Self {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max_concurrent_uploads.max(1))),
            staged: crate::foundation::budget::Budget::new(jobs.max_staged_bytes, KIB),
            checks: tokio::sync::Semaphore::new(jobs.max_concurrent_checks.max(1)),
        }
    }

    /// Admits a request by its declared size (`Content-Length`, else `max_upload_bytes`), or
    /// refuses it with 413 (over the upload limit) or 429 (the budgets are taken).
    fn admit(&self, req: &HttpRequest, jobs: &crate::config::JobsConfig) -> Result<UploadAdmission> {
        let declared = crate::api::content_length(req);
        if declared.is_some_and(|n| n > jobs.max_upload_bytes.saturating_add(MAX_SPEC_BYTES as u64 + 64 * KIB)) {
            return Err(Error::new(
                ErrorCode::DatasetTooLarge,
                format!("the upload exceeds {} bytes (jobs.max_upload_bytes)", jobs.max_upload_bytes),
            ));
        }
        let busy = |what: &str| {
            Error::new(ErrorCode::QueueFull, format!("{what}; retry shortly")).with_header("retry-after", "5")
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            busy(&format!("{} uploads are in flight (jobs.max_concurrent_uploads)", jobs.max_concurrent_uploads))
        })?;
        let bytes = declared.unwrap_or(jobs.max_upload_bytes).min(jobs.max_staged_bytes);
        let staged = self
            .staged
            .try_take(bytes)
            .ok_or_else(|| busy("the uploads in flight hold jobs.max_staged_bytes of staging space"))?;
        Ok(UploadAdmission { _slot: slot, _staged: staged })
    }
}

/// A job spec from JSON, checked.
pub fn parse_spec(bytes: &[u8]) -> Result<JobSpec> {
    crate::api::parse_json(bytes, "the job spec")
}

/// The `spec` and `dataset` parts; the archive goes to `file` (sha256 and size counted as it
/// arrives, refused past `limit`).
/// Public for the fuzz targets (`fuzz/`).
pub async fn read_form<S>(
    headers: &actix_web::http::header::HeaderMap,
    payload: S,
    file: &std::fs::File,
    limit: u64,
) -> Result<(JobSpec, Option<(String, u64)>)>
where
    S: futures_util::Stream<Item = std::result::Result<actix_web::web::Bytes, actix_web::error::PayloadError>>
        + 'static,
{
    let multipart_error = |e: actix_multipart::MultipartError| Error::invalid_request(format!("multipart: {e}"));
    let mut form = actix_multipart::Multipart::new(headers, payload);
    let mut spec = None;
    let mut upload = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "spec" => {
                let too_large =
                    || Error::new(ErrorCode::PayloadTooLarge, format!("the spec part exceeds {MAX_SPEC_BYTES} bytes"));
                // The part is a string in the document, so any text is well-formed: one that is no
                // job spec is unprocessable (422), where a JSON body that does not parse is malformed.
                let text =
                    crate::foundation::streams::collect(&mut field, MAX_SPEC_BYTES, too_large, multipart_error).await?;
                spec = Some(parse_spec(&text).map_err(|e| match e.code {
                    ErrorCode::InvalidJson => Error::new(ErrorCode::InvalidSpec, e.message),
                    _ => e,
                })?);
            }
            "dataset" => {
                if upload.is_some() {
                    return Err(Error::invalid_request("send one `dataset` part"));
                }
                let too_large = || {
                    Error::new(
                        ErrorCode::DatasetTooLarge,
                        format!("the upload exceeds {limit} bytes (jobs.max_upload_bytes)"),
                    )
                };
                upload = Some(
                    crate::foundation::streams::to_file(&mut field, file, limit, too_large, multipart_error).await?,
                );
            }
            other => return Err(Error::invalid_request(format!("unknown part {other:?}: send `spec` and `dataset`"))),
        }
    }
    let spec = spec.ok_or_else(|| Error::invalid_request("the `spec` part (the job spec as JSON) is missing"))?;
    Ok((spec, upload))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct JobsQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The next page: the jobs after this one (a previous page's `next`).
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"jobs": [{"id": "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10", "state": "succeeded",
    "spec": {"model": "flowers", "backbones": ["mobilenet_v2"], "device": "auto"},
    "dataset": {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "name": "flowers"},
    "created_at": "2026-11-28T10:00:00Z", "progress": {"stage": "done", "percent": 100.0}, "epochs": [],
    "result": {"model": "flowers", "version": 2, "winner": "mobilenet_v2", "best_val_accuracy": 0.9544,
               "backbones": {"mobilenet_v2": 0.9544}, "promoted": null}}]}))]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// When more jobs follow: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[utoipa::path(
    get,
    path = "/jobs",
    tag = "training",
    operation_id = "list_jobs",
    summary = "List jobs",
    params(JobsQuery),
    responses(
        (status = 200, description = "Jobs, newest first.", body = JobList),
        (status = 400, description = "Bad query parameters.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_request", "message": "invalid query string: unknown variant `done`"}})),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenTrain),
        (status = 404, description = "`after` names no job (it may have expired).", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "after: no job 0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10 (it may have expired); list from the start"}})),
        (status = 503, response = crate::api::responses::RunnerNotReady)
    ),
    security(("bearer" = ["train"]))
)]
#[get("/jobs")]
pub async fn list_jobs(query: web::Query<JobsQuery>, state: web::Data<AppState>) -> Result<HttpResponse> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::invalid_request("limit must be between 1 and 1000"));
    }
    if let Some(after) = &query.after {
        crate::jobs::check_job_id(after).map_err(|_| Error::invalid_request("after: not a job id"))?;
    }
    let mut jobs = state.runner()?.list().await?;
    jobs.reverse();
    let start = match &query.after {
        Some(after) => jobs.iter().position(|j| &j.id == after).map(|i| i + 1).ok_or_else(|| {
            Error::new(ErrorCode::NotFound, format!("after: no job {after} (it may have expired); list from the start"))
        })?,
        None => 0,
    };
    let mut page: Vec<Job> =
        jobs.into_iter().skip(start).filter(|j| query.state.is_none_or(|s| j.state == s)).take(limit + 1).collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|j| j.id.clone()).unwrap_or_default()
    });
    Ok(HttpResponse::Ok().json(JobList { jobs: page, next }))
}

#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "training",
    operation_id = "get_job",
    summary = "A job's state, progress and metrics",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenTrain),
        (status = 404, response = crate::api::responses::JobNotFound),
        (status = 503, response = crate::api::responses::RunnerNotReady)
    ),
    security(("bearer" = ["train"]))
)]
#[get("/jobs/{id}")]
pub async fn get_job(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.runner()?.get(&id).await?))
}

#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "training",
    operation_id = "cancel_job",
    summary = "Cancel a job",
    description = "A queued job is canceled at once; a running one stops at its next training step (follow its state: \
                   it becomes `canceled`).",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    responses(
        (status = 202, description = "Canceled, or asked to stop.", body = Job),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenTrain),
        (status = 404, response = crate::api::responses::JobNotFound),
        (status = 409, description = "The job has already finished.", body = ErrorBody,
         example = json!({"error": {"code": "job_finished", "message": "job 0b6f… has already succeeded and cannot be canceled"}})),
        (status = 503, response = crate::api::responses::RunnerNotReady)
    ),
    security(("bearer" = ["train"]))
)]
#[post("/jobs/{id}/cancel")]
pub async fn cancel_job(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(state.runner()?.cancel(&id).await?))
}

#[utoipa::path(
    get,
    path = "/jobs/{id}/events",
    tag = "training",
    operation_id = "job_events",
    summary = "Follow a job (server-sent events)",
    description = "`text/event-stream`: first an `event: state` with the whole job, then `progress` (a few per \
                   second while training), `epoch` (each finished epoch's metrics) and `state` (each change of \
                   state) until the job ends; the stream closes after the final `state`. A comment line is sent every \
                   15 s to keep proxies from closing the connection.",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream", body = String,
         example = "event: state\ndata: {\"id\":\"0b6f…\",\"state\":\"running\",…}\n\nevent: progress\ndata: {\"stage\":\"training\",\"phase\":1,\"epoch\":2,\"percent\":12.5,…}\n\n"),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenTrain),
        (status = 404, response = crate::api::responses::JobNotFound),
        (status = 503, response = crate::api::responses::RunnerNotReady)
    ),
    security(("bearer" = ["train"]))
)]
#[get("/jobs/{id}/events")]
pub async fn job_events(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    use crate::jobs::runner::JobEvent;
    let (job, rx) = state.runner()?.subscribe(&id).await?;
    let frame = |e: &JobEvent| web::Bytes::from(format!("event: {}\ndata: {}\n\n", e.name(), e.data_json()));
    let first = frame(&JobEvent::State(Box::new(job)));
    let rest = futures_util::stream::unfold(rx, move |rx| async move {
        let mut rx = rx?;
        loop {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Err(_) => return Some((web::Bytes::from_static(b": keep-alive\n\n"), Some(rx))),
                Ok(Ok(e)) => {
                    let end = matches!(&e, JobEvent::State(j) if j.state.is_terminal());
                    return Some((frame(&e), (!end).then_some(rx)));
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            }
        }
    });
    let stream = futures_util::stream::once(async move { first }).chain(rest).map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}
