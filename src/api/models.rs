//! The model registry over HTTP: models, versions (manifest with provenance and licences), model
//! cards, ONNX downloads, and aliases — promotion with `If-Match` and the audit history.
use std::collections::BTreeMap;

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_DISPOSITION, ETAG, IF_MATCH};
use actix_web::{get, put, web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::AppState;
use crate::error::{Error, ErrorBody, ErrorCode, Result};
use crate::records::names::{AliasName, ModelName};
use crate::registry::alias::{AliasEntry, Promotion};
use crate::registry::manifest::Manifest;
use crate::registry::Registry;

/// One model at a glance.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "flowers102", "versions": [1], "latest": 1, "aliases": {"production": 1}}))]
pub struct ModelSummary {
    pub name: String,
    pub versions: Vec<u64>,
    pub latest: Option<u64>,
    /// Alias → the version it points at.
    pub aliases: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"models": [{"name": "flowers102", "versions": [1], "latest": 1, "aliases": {"production": 1}}]}))]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// A version in a model's listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: u64,
    pub created_at: String,
    /// Best metrics (e.g. `val_top1`).
    pub metrics: BTreeMap<String, f64>,
    /// The components whose terms forbid commercial use.
    pub non_commercial: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "flowers102", "latest": 1, "aliases": {"production": 1},
    "versions": [{"version": 1, "created_at": "2026-11-28T03:10:00Z", "metrics": {"val_top1": 0.9534},
                  "non_commercial": ["base weights MobileNet_V2_Weights.IMAGENET1K_V1 (weights)"]}]}))]
pub struct ModelDetail {
    pub name: String,
    pub latest: Option<u64>,
    pub aliases: BTreeMap<String, u64>,
    pub versions: Vec<VersionSummary>,
}

async fn summary(r: &Registry, name: &str) -> Result<ModelSummary> {
    let versions = r.versions(name).await?;
    let mut aliases = BTreeMap::new();
    for a in r.aliases(name).await? {
        if let Some(e) = r.current(name, &a).await? {
            aliases.insert(a, e.version);
        }
    }
    Ok(ModelSummary { name: name.to_string(), latest: versions.last().copied(), versions, aliases })
}

#[utoipa::path(
    get, path = "/models", tag = "models", operation_id = "list_models", summary = "Every model",
    responses(
        (status = 200, description = "Models with their versions and aliases.", body = ModelList),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models")]
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse> {
    let r = state.registry()?;
    let mut models = Vec::new();
    for name in r.models().await? {
        models.push(summary(&r, &name).await?);
    }
    Ok(HttpResponse::Ok().json(ModelList { models }))
}

#[utoipa::path(
    get, path = "/models/{name}", tag = "models", operation_id = "get_model", summary = "A model's versions and aliases",
    params(("name" = ModelName, Path, description = "The model name.")),
    responses(
        (status = 200, description = "The model.", body = ModelDetail),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, description = "No such model.", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "model nope has no versions"}})),
        (status = 422, response = crate::api::responses::InvalidName),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}")]
pub async fn get_model(name: web::Path<ModelName>, state: web::Data<AppState>) -> Result<HttpResponse> {
    let r = state.registry()?;
    let s = summary(&r, &name).await?;
    if s.versions.is_empty() {
        return Err(Error::new(ErrorCode::NotFound, format!("model {name} has no versions")));
    }
    let mut versions = Vec::new();
    for &v in &s.versions {
        let m = r.manifest(&name, v).await?;
        versions.push(VersionSummary {
            version: v,
            created_at: m.created_at.clone(),
            metrics: m.provenance.metrics.best.clone(),
            non_commercial: m.non_commercial().into_iter().map(|x| x.component).collect(),
        });
    }
    Ok(HttpResponse::Ok().json(ModelDetail { name: s.name, latest: s.latest, aliases: s.aliases, versions }))
}

#[utoipa::path(
    get, path = "/models/{name}/versions/{version}", tag = "models", operation_id = "get_version",
    summary = "A version's manifest: artifacts, provenance, metrics, licences",
    params(("name" = ModelName, Path, description = "The model name."), ("version" = u64, Path, description = "The version number."), IfNoneMatch),
    responses(
        (status = 200, description = "The manifest.", body = Manifest),
        (status = 304, description = "Not modified: the If-None-Match ETag is this resource's (a version never changes)."),
        (status = 400, description = "The version is not a number.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_request", "message": "invalid path parameter: can not parse \"x\" to a u64"}})),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, response = crate::api::responses::VersionNotFound),
        (status = 422, response = crate::api::responses::InvalidName),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}/versions/{version}")]
pub async fn get_version(
    req: HttpRequest,
    path: web::Path<(ModelName, u64)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (name, v) = (path.0.as_str(), path.1);
    let body = serde_json::to_vec(&state.registry()?.manifest(name, v).await?).expect("a manifest serializes");
    let etag = crate::foundation::hash::sha256_hex(&body);
    immutable(&req, &etag, async { Ok(HttpResponse::Ok().content_type("application/json").body(body)) }).await
}

#[utoipa::path(
    get, path = "/models/{name}/versions/{version}/card", tag = "models", operation_id = "get_card",
    summary = "A version's model card (Markdown)",
    params(("name" = ModelName, Path, description = "The model name."), ("version" = u64, Path, description = "The version number."), IfNoneMatch),
    responses(
        (status = 200, description = "The card.", content_type = "text/markdown", body = String,
         example = "# flowers102 — version 1\n\n**Use:** non-commercial only, …"),
        (status = 304, description = "Not modified: the If-None-Match ETag is this resource's (a version never changes)."),
        (status = 400, response = crate::api::responses::BadVersion),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, response = crate::api::responses::VersionNotFound),
        (status = 422, response = crate::api::responses::InvalidName),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}/versions/{version}/card")]
pub async fn get_card(
    req: HttpRequest,
    path: web::Path<(ModelName, u64)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (name, v) = (path.0.as_str(), path.1);
    let card = state.registry()?.manifest(name, v).await?.card();
    let etag = crate::foundation::hash::sha256_hex(card.as_bytes());
    immutable(&req, &etag, async { Ok(HttpResponse::Ok().content_type("text/markdown; charset=utf-8").body(card)) })
        .await
}

#[utoipa::path(
    get, path = "/models/{name}/versions/{version}/onnx", tag = "models", operation_id = "download_onnx",
    summary = "Download a version's ONNX model",
    description = "The bytes are checked against the manifest's sha256 and size before they are sent; the ETag is the sha256.",
    params(("name" = ModelName, Path, description = "The model name."), ("version" = u64, Path, description = "The version number."), IfNoneMatch),
    responses(
        (status = 200, description = "The ONNX model.", content_type = "application/octet-stream", body = crate::api::Binary,
         headers(("ETag" = String, description = "The sha256 of the file, quoted."))),
        (status = 304, description = "Not modified: the If-None-Match ETag is this resource's (a version never changes)."),
        (status = 400, response = crate::api::responses::BadVersion),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, description = "No such model, version or ONNX artifact.", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "flowers102 version 9: not found"}})),
        (status = 422, response = crate::api::responses::InvalidName),
        (status = 500, description = "The stored file differs from its manifest.", body = ErrorBody,
         example = json!({"error": {"code": "integrity_error", "message": "flowers102 version 1 artifact model.onnx has sha256 …, the manifest says …"}})),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}/versions/{version}/onnx")]
pub async fn download_onnx(
    req: HttpRequest,
    path: web::Path<(ModelName, u64)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (name, v) = (path.0.as_str(), path.1);
    let r = state.registry()?;
    let m = r.manifest(name, v).await?;
    let sha = m.artifact("model.onnx").map(|a| a.sha256.clone()).unwrap_or_default();
    // A client that has the file gets 304 without the file being read.
    immutable(&req, &sha, async {
        let bytes = r.read_artifact(&m, "model.onnx").await?;
        Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((CONTENT_DISPOSITION, format!("attachment; filename=\"{name}-{v}.onnx\"")))
            .body(bytes))
    })
    .await
}

/// A version's artifact `file` as `req` asks for it: 304 when the client has it (not read), else
/// `answer(bytes)` of the bytes checked against the manifest; `not_found` naming what the version
/// lacks when it has none.
async fn artifact(
    req: &HttpRequest,
    state: &AppState,
    path: &(ModelName, u64),
    (file, what): (&str, &str),
    answer: impl FnOnce(Vec<u8>) -> Result<HttpResponse>,
) -> Result<HttpResponse> {
    let (name, v) = (path.0.as_str(), path.1);
    let r = state.registry()?;
    let m = r.manifest(name, v).await?;
    let Some(a) = m.artifact(file) else {
        return Err(Error::new(ErrorCode::NotFound, format!("{name} version {v} has no {what} ({file})")));
    };
    let sha = a.sha256.clone();
    immutable(req, &sha, async { answer(r.read_artifact(&m, file).await?) }).await
}

/// Which evaluation of a version.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EvaluationQuery {
    /// `val` (the default): the validation images; `test`: the dataset's `test/` folder, when it had one.
    #[param(pattern = "^(val|test)$")]
    pub split: Option<String>,
}

#[utoipa::path(
    get, path = "/models/{name}/versions/{version}/evaluation", tag = "models", operation_id = "get_evaluation",
    summary = "A version's evaluation report",
    description = "Computed when the version was published, on the validation images of its dataset, through the serving path (as `petal eval --json`): top-1, top-5, macro F1, expected calibration error, per-class precision/recall/F1/support, the confusion matrix, the most frequent confusions with example images, the most confidently wrong answers, and every image's answer.",
    params(("name" = ModelName, Path, description = "The model name."), ("version" = u64, Path, description = "The version number."), EvaluationQuery, IfNoneMatch),
    responses(
        (status = 200, description = "The report.", body = crate::infer::eval::EvalReport),
        (status = 304, description = "Not modified: the If-None-Match ETag is this resource's (a version never changes)."),
        (status = 400, response = crate::api::responses::BadVersion),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, description = "No such model or version, or the version has no evaluation (published from files).", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "flowers102 version 1 has no evaluation report (evaluation.json)"}})),
        (status = 422, response = crate::api::responses::InvalidName),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}/versions/{version}/evaluation")]
pub async fn get_evaluation(
    req: HttpRequest,
    path: web::Path<(ModelName, u64)>,
    query: web::Query<EvaluationQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (file, what) = match query.split.as_deref() {
        None | Some("val") => ("evaluation.json", "evaluation report"),
        Some("test") => ("evaluation-test.json", "test-split evaluation (its dataset has no test/ folder)"),
        Some(other) => return Err(Error::invalid_request(format!("split: val or test, not {other:?}"))),
    };
    let version = path.1;
    artifact(&req, &state, &path, (file, what), |bytes| {
        let mut report: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(ErrorCode::IntegrityError, format!("evaluation.json is unreadable: {e}")))?;
        // Evaluated before the version existed: the version is the one asked for.
        report["version"] = version.into();
        Ok(HttpResponse::Ok().json(report))
    })
    .await
}

/// A route serving one of a version's pictures (PNG artifacts): its path, operation and text are
/// the macro's arguments, its behaviour the same for every picture.
macro_rules! picture_route {
    ($handler:ident, $path:literal, $operation:literal, $file:literal, $summary:literal, $description:literal) => {
        #[utoipa::path(
            get, path = $path, tag = "models", operation_id = $operation, summary = $summary, description = $description,
            params(("name" = ModelName, Path, description = "The model name."), ("version" = u64, Path, description = "The version number."), IfNoneMatch),
            responses(
                (status = 200, description = "The picture (ETag: its sha256; Cache-Control: a year, immutable).", content_type = "image/png", body = crate::api::Binary),
                (status = 304, description = "Not modified: the If-None-Match ETag is this picture's."),
                (status = 400, response = crate::api::responses::BadVersion),
                (status = 401, response = crate::api::responses::Unauthorized),
                (status = 403, response = crate::api::responses::ForbiddenRead),
                (status = 404, description = "No such model or version, or the version has no such picture (versions published from files have none).", body = ErrorBody,
                 example = json!({"error": {"code": "not_found", "message": "flowers102 version 1 has no picture (confusion.png)"}})),
                (status = 422, response = crate::api::responses::InvalidName),
                (status = 503, response = crate::api::responses::RegistryUnavailable)
            ),
            security(("bearer" = ["classify", "train"]))
        )]
        #[get($path)]
        pub async fn $handler(
            req: HttpRequest,
            path: web::Path<(ModelName, u64)>,
            state: web::Data<AppState>,
        ) -> Result<HttpResponse> {
            picture(&req, &state, &path, $file).await
        }
    };
}

picture_route!(
    get_curves,
    "/models/{name}/versions/{version}/curves.png",
    "get_curves",
    "curves.png",
    "A version's training curves (PNG)",
    "The winner's loss and accuracy per epoch, train and validation, the phase boundary marked."
);
picture_route!(
    get_confusion,
    "/models/{name}/versions/{version}/confusion.png",
    "get_confusion",
    "confusion.png",
    "A version's confusion matrix as a heat map (PNG)",
    "From the version's evaluation: rows the true class, columns the predicted one, in the model's class order; the darker a cell, the larger its share of the row."
);

/// A picture artifact as `image/png`, its sha256 the ETag.
async fn picture(req: &HttpRequest, state: &AppState, path: &(ModelName, u64), file: &str) -> Result<HttpResponse> {
    artifact(req, state, path, (file, "picture"), |bytes| Ok(HttpResponse::Ok().content_type("image/png").body(bytes)))
        .await
}

/// `If-None-Match` on a version's resources: a version never changes, so an ETag once sent stays
/// true.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfNoneMatch {
    /// ETags of earlier answers (quoted, comma-separated), or `*`: 304 Not Modified when one is this
    /// resource's.
    #[serde(rename = "If-None-Match")]
    #[param(required = false, max_length = 4096)]
    if_none_match: String,
}

/// How long a client may keep a version's resources: a version never changes.
const IMMUTABLE: &str = "private, max-age=31536000, immutable";

/// The answer for a version's resource with sha256 `etag`: 304 when the client has it, else the
/// body `make` builds — both with the ETag and a year-long Cache-Control.
async fn immutable<F>(req: &HttpRequest, etag: &str, make: F) -> Result<HttpResponse>
where
    F: std::future::Future<Output = Result<HttpResponse>>,
{
    let mut response =
        if crate::api::not_modified(req, etag) { HttpResponse::NotModified().finish() } else { make.await? };
    let headers = response.headers_mut();
    headers.insert(ETAG, HeaderValue::from_str(&format!("\"{etag}\"")).expect("a sha256 is header-safe"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    Ok(response)
}

/// The precondition of a promotion.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct PromoteHeaders {
    /// The alias's current seq (its ETag); `0` if the alias must not exist yet.
    #[serde(rename = "If-Match")]
    #[param(required = false, pattern = "^(W/)?\"?[0-9]{1,19}\"?$")]
    if_match: String,
}

/// Where an alias should point.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": 2, "reason": "beats version 1 on the held-out set", "acknowledge_terms": false}))]
pub struct PromoteRequest {
    pub version: u64,
    #[serde(default)]
    pub reason: String,
    /// Accept the lineage's non-commercial terms (needed under `registry.usage = commercial`).
    #[serde(default)]
    pub acknowledge_terms: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"entries": [{"model": "flowers102", "alias": "production", "seq": 1, "from": null, "version": 1,
    "at": "2026-11-28T03:20:00Z", "by": "ops", "reason": "first", "promotion_id": "5d0c…"}]}))]
pub struct AliasHistory {
    pub entries: Vec<AliasEntry>,
}

#[utoipa::path(
    put, path = "/models/{name}/aliases/{alias}", tag = "models", operation_id = "promote",
    summary = "Move an alias to a version (promote)",
    description = "Compare-and-swap: send `If-Match` with the alias's current seq (its ETag; `0` when the alias must not \
                   exist yet) to move it only if nobody else did in between. Every move is kept in the alias's history. \
                   Servers following the alias swap in the new version without failing requests.",
    params(("name" = ModelName, Path, description = "The model name."), ("alias" = AliasName, Path, description = "The alias, e.g. production."),
           PromoteHeaders),
    request_body(content = PromoteRequest, description = "The version and why."),
    responses(
        (status = 200, description = "Moved; the ETag is the new seq.", body = AliasEntry,
         headers(("ETag" = String, description = "The alias's new seq, quoted."))),
        (status = 400, description = "The body or If-Match is malformed.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_json", "message": "missing field `version`"}})),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, description = "The token lacks the admin scope, the licence terms were not acknowledged, or (without tokens) the request is not from a local client (`origin_not_allowed`).", body = ErrorBody,
         example = json!({"error": {"code": "licence_not_acknowledged", "message": "this deployment's use is commercial, and flowers102 version 1 carries non-commercial terms"}})),
        (status = 404, response = crate::api::responses::VersionNotFound),
        (status = 409, description = "A concurrent promotion won.", body = ErrorBody,
         example = json!({"error": {"code": "alias_conflict", "message": "another promotion of flowers102@production won the race"}})),
        (status = 412, description = "The alias moved since it was read.", body = ErrorBody,
         example = json!({"error": {"code": "alias_precondition_failed", "message": "flowers102@production is at seq 3, not 2"}})),
        (status = 415, description = "The body is not JSON.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "Content type error"}})),
        (status = 422, description = "The model or alias name is invalid.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_name", "message": "alias name \"Prod!\" is invalid"}})),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["admin"]))
)]
#[put("/models/{name}/aliases/{alias}")]
pub async fn promote(
    req: HttpRequest,
    path: web::Path<(ModelName, AliasName)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (name, alias) = (&path.0, &path.1);
    if crate::api::media_type(&req).1 != "application/json" {
        return Err(Error::new(ErrorCode::UnsupportedMediaType, "send the promotion as application/json"));
    }
    let body: PromoteRequest = crate::api::parse_json(&body, "the promotion")?;
    let if_match = match req.headers().get(IF_MATCH) {
        None => None,
        Some(v) => {
            let s = v.to_str().unwrap_or("").trim().trim_start_matches("W/").trim_matches('"');
            Some(s.parse::<u64>().map_err(|_| {
                Error::invalid_request(format!("If-Match must be the alias's seq (a number), not {s:?}"))
            })?)
        }
    };
    let by = req.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_else(|| "anonymous".into());
    let p = Promotion {
        version: body.version,
        if_match,
        by,
        reason: body.reason.clone(),
        acknowledge_terms: body.acknowledge_terms,
    };
    let entry = state.registry()?.promote(name, alias, &p, state.config.registry.usage).await?;
    Ok(HttpResponse::Ok().insert_header((ETAG, format!("\"{}\"", entry.seq))).json(entry))
}

#[utoipa::path(
    get, path = "/models/{name}/aliases/{alias}/history", tag = "models", operation_id = "alias_history",
    summary = "Every move of an alias, oldest first",
    params(("name" = ModelName, Path, description = "The model name."), ("alias" = AliasName, Path, description = "The alias.")),
    responses(
        (status = 200, description = "The history; the ETag is the current seq.", body = AliasHistory),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, response = crate::api::responses::ForbiddenRead),
        (status = 404, description = "The alias was never set.", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "flowers102 has no alias staging"}})),
        (status = 422, description = "The model or alias name is invalid.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_name", "message": "alias name \"Prod!\" is invalid"}})),
        (status = 503, response = crate::api::responses::RegistryUnavailable)
    ),
    security(("bearer" = ["classify", "train"]))
)]
#[get("/models/{name}/aliases/{alias}/history")]
pub async fn alias_history(
    path: web::Path<(ModelName, AliasName)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (name, alias) = (path.0.as_str(), path.1.as_str());
    let entries = state.registry()?.history(name, alias).await?;
    let Some(last) = entries.last() else {
        return Err(Error::new(ErrorCode::NotFound, format!("{name} has no alias {alias}")));
    };
    Ok(HttpResponse::Ok().insert_header((ETAG, format!("\"{}\"", last.seq))).json(AliasHistory { entries }))
}
