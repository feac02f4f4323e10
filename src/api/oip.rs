//! The Open Inference Protocol (KServe v2) over REST, for the clients, dashboards and load tools
//! of Triton, KServe, Seldon MLServer and OpenVINO Model Server (`tritonclient` works unchanged):
//! server and model metadata, health, readiness, and inference on petal's models.
//!
//! A model's one input is given either as the preprocessed tensor (`input`, `FP32 [N,3,S,S]`, the
//! ONNX model's own input) or as encoded images (`BYTES [N]`, JPEG/PNG/WebP; named `image`, or
//! `input` as OpenVINO Model Server takes them), which get the model's eval transform as
//! `/classify` gives them. Outputs: `logits` and `probabilities` (`FP32 [N,C]`), each also as the
//! classification extension (`parameters: {"classification": k}` → `BYTES [N,k]`
//! `"score:index:label"`, as Triton answers). Tensors travel as JSON or, with the binary tensor
//! data extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`), as raw
//! little-endian bytes after the JSON header — tritonclient's default. A model is named `name`, or
//! `name@alias` (resolved now); a version path picks one. Errors answer `{"error": "…"}` (with
//! petal's `code` beside it) and petal's statuses; 429 with Retry-After when a model's queue is full.
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::classify::{counted, pick, preprocess, ClassifyQuery, MAX_IMAGES};
use crate::api::AppState;
use crate::error::{Error, ErrorCode, Result};
use crate::infer::engine::{softmax, ModelHandle};
use crate::records::model_io::{INPUT_NAME, OUTPUT_NAME};
use crate::records::names::{AliasName, ModelName};

/// The header that says how long the JSON part of a binary-extension body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The input name for encoded images (the model's own input name takes them too).
pub const IMAGE_INPUT: &str = "image";
/// The softmax of the logits.
pub const PROBABILITIES: &str = "probabilities";

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "petal", "version": "0.1.0", "extensions": ["binary_tensor_data", "classification"]}))]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A tensor a model takes or gives.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1: any size.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{model}[/versions/{version}]`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "flowers102", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}, {"name": "image", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 102]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 102]}]}))]
pub struct ModelMetadata {
    pub name: String,
    /// Every version of the model in the registry.
    pub versions: Vec<String>,
    pub platform: String,
    /// Alternatives: a request gives one of them.
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// An input of an inference request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    /// `FP32` (the preprocessed tensor) or `BYTES` (encoded images).
    pub datatype: String,
    /// `binary_data_size`: the input's bytes follow the JSON header (binary extension).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Row-major, flat or nested; for `BYTES`, base64 strings.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// An output an inference request asks for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    /// `logits` or `probabilities`.
    pub name: String,
    /// `binary_data` (bool): answer it as raw bytes; `classification` (k): its top k as
    /// `"score:index:label"` strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// `POST /v2/models/{model}[/versions/{version}]/infer` (the JSON part).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="]}],
    "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}))]
pub struct InferenceRequest {
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output` (bool): every output as raw bytes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Exactly one: the model's input.
    pub inputs: Vec<RequestInput>,
    /// Default: every output.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// An output of an inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// `binary_data_size` when the data follows the JSON header.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Row-major, flat.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// The answer to an inference request (the JSON part).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model_name": "flowers102", "model_version": "1", "id": "r1",
    "outputs": [{"name": "probabilities", "shape": [1, 2], "datatype": "BYTES", "data": ["0.9812:73:rose", "0.0104:80:bougainvillea"]}]}))]
pub struct InferenceResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

/// The protocol's error body (petal's stable `code` beside it).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "model nope has no versions", "code": "not_found"}))]
pub struct OipError {
    pub error: String,
    pub code: String,
}

/// The errors of every route that needs a token.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum AccessErrors {
    #[response(status = 401, description = "No valid bearer token.")]
    Unauthorized(OipError),
    #[response(status = 403, description = "The token lacks the classify scope.")]
    Forbidden(OipError),
}

/// The errors of the routes of one model or version (besides `AccessErrors`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ModelErrors {
    #[response(status = 404, description = "No such model, version or alias.")]
    NotFound(OipError),
    #[response(status = 422, description = "A name breaks the naming rule, or names an alias and a version.")]
    InvalidName(OipError),
}

/// A version in the path that is not a number.
#[derive(utoipa::IntoResponses)]
#[response(status = 400, description = "The version is not a number.")]
#[allow(dead_code)]
struct BadVersion(OipError);

/// The errors of inference (besides those of every model route).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum InferErrors {
    #[response(
        status = 400,
        description = "A malformed request (JSON, shapes, datatypes, sizes, parameters), or a version that is not a number."
    )]
    Malformed(OipError),
    #[response(status = 413, description = "The body or an image is too large, or too many images.")]
    TooLarge(OipError),
    #[response(status = 422, description = "An image cannot be decoded, or a name breaks the naming rule.")]
    Undecodable(OipError),
    #[response(status = 429, description = "The model's queue is full; see Retry-After.")]
    QueueFull(OipError),
    #[response(status = 503, description = "Models are still loading.")]
    NotReady(OipError),
}

/// The body of an inference request.
const INFER_BODY: &str = "The request in JSON. With the binary tensor data extension, the same JSON is followed by \
                          the tensors' bytes, its length in `Inference-Header-Content-Length` (any Content-Type).";

/// Whether a path is one of the protocol's (its errors take the protocol's shape).
pub fn is_oip_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The protocol's error body for `e`.
pub fn error_body(e: &Error, request_id: Option<&str>) -> Value {
    let mut body = serde_json::json!({"error": e.message, "code": e.code.as_str()});
    if let Some(id) = request_id {
        body["request_id"] = Value::from(id);
    }
    body
}

#[utoipa::path(
    get,
    path = "/v2",
    tag = "open-inference-protocol",
    operation_id = "oip_server_metadata",
    summary = "Server metadata (Open Inference Protocol)",
    responses(
        (status = 200, description = "The server and the protocol extensions it supports.", body = ServerMetadata),
        AccessErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[get("/v2")]
pub async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(ServerMetadata {
        name: "petal".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "classification".into()],
    })
}

#[utoipa::path(
    get,
    path = "/v2/health/live",
    tag = "open-inference-protocol",
    operation_id = "oip_server_live",
    summary = "Liveness (Open Inference Protocol)",
    responses((status = 200, description = "The process serves HTTP."))
)]
#[get("/v2/health/live")]
pub async fn server_live() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[utoipa::path(
    get,
    path = "/v2/health/ready",
    tag = "open-inference-protocol",
    operation_id = "oip_server_ready",
    summary = "Readiness (Open Inference Protocol)",
    description = "200 when every check of `/readyz` passes, else 503.",
    responses(
        (status = 200, description = "Ready."),
        (status = 503, description = "Not ready (see `/readyz`).", body = OipError)
    )
)]
#[get("/v2/health/ready")]
pub async fn server_ready(state: web::Data<AppState>) -> Result<HttpResponse> {
    let report = state.readiness.report();
    if report.ready {
        Ok(HttpResponse::Ok().finish())
    } else {
        Err(Error::new(ErrorCode::NotReady, format!("not ready: {}", report.reasons.join("; "))))
    }
}

/// A model as the protocol's path names it: `name` or `name@alias`, and an optional version.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    model: String,
    version: Option<String>,
}

impl ModelPath {
    /// The `/classify` query that picks the same model version.
    fn query(&self) -> Result<ClassifyQuery> {
        let named = self.model.replace("%40", "@");
        let (name, alias) = match named.split_once('@') {
            Some((n, a)) => (n, Some(AliasName::new(a)?)),
            None => (named.as_str(), None),
        };
        let version = match self.version.as_deref() {
            None | Some("") => None,
            Some(v) => {
                Some(v.parse::<u64>().ok().filter(|&v| v >= 1 && v <= i64::MAX as u64).ok_or_else(|| {
                    Error::invalid_request(format!("version {v:?} is not a version number (1, 2, …)"))
                })?)
            }
        };
        let query = ClassifyQuery { model: Some(ModelName::new(name)?), version, alias, top_k: None };
        query.check()?;
        Ok(query)
    }
}

async fn handle_for(state: &web::Data<AppState>, path: &ModelPath) -> Result<ModelHandle> {
    pick(state, &path.query()?).await
}

/// Model metadata.
async fn model_metadata(state: web::Data<AppState>, path: ModelPath) -> Result<HttpResponse> {
    let h = handle_for(&state, &path).await?;
    let versions = match state.registry() {
        Ok(r) => r.versions(&h.info.name).await.unwrap_or_else(|_| vec![h.info.version]),
        Err(_) => vec![h.info.version],
    };
    let (s, c) = (h.info.image_size as i64, h.info.class_names.len() as i64);
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    };
    Ok(HttpResponse::Ok().json(ModelMetadata {
        name: h.info.name.clone(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: "onnxruntime_onnx".into(),
        inputs: vec![tensor(INPUT_NAME, "FP32", vec![-1, 3, s, s]), tensor(IMAGE_INPUT, "BYTES", vec![-1])],
        outputs: vec![tensor(OUTPUT_NAME, "FP32", vec![-1, c]), tensor(PROBABILITIES, "FP32", vec![-1, c])],
    }))
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}",
    tag = "open-inference-protocol",
    operation_id = "oip_model_metadata",
    summary = "Model metadata (Open Inference Protocol)",
    params(("model" = String, Path, description = "A model's name, or `name@alias`.")),
    responses(
        (status = 200, description = "The model's inputs (alternatives) and outputs.", body = ModelMetadata),
        AccessErrors,
        ModelErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[get("/v2/models/{model}")]
pub async fn get_model_metadata(state: web::Data<AppState>, model: web::Path<String>) -> Result<HttpResponse> {
    model_metadata(state, ModelPath { model: model.into_inner(), version: None }).await
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}",
    tag = "open-inference-protocol",
    operation_id = "oip_model_version_metadata",
    summary = "Model version metadata (Open Inference Protocol)",
    params(("model" = String, Path, description = "A model's name."), ("version" = u64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "A version number.")),
    responses(
        (status = 200, description = "The version's inputs (alternatives) and outputs.", body = ModelMetadata),
        BadVersion,
        AccessErrors,
        ModelErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[get("/v2/models/{model}/versions/{version}")]
pub async fn get_model_version_metadata(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (model, version) = path.into_inner();
    model_metadata(state, ModelPath { model, version: Some(version) }).await
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/ready",
    tag = "open-inference-protocol",
    operation_id = "oip_model_ready",
    summary = "Model readiness (Open Inference Protocol)",
    description = "200 once the model is loaded; a model of the registry that is not served is loaded now.",
    params(("model" = String, Path, description = "A model's name, or `name@alias`.")),
    responses(
        (status = 200, description = "Loaded and ready."),
        AccessErrors,
        ModelErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[get("/v2/models/{model}/ready")]
pub async fn model_ready(state: web::Data<AppState>, model: web::Path<String>) -> Result<HttpResponse> {
    handle_for(&state, &ModelPath { model: model.into_inner(), version: None }).await?;
    Ok(HttpResponse::Ok().finish())
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/ready",
    tag = "open-inference-protocol",
    operation_id = "oip_model_version_ready",
    summary = "Model version readiness (Open Inference Protocol)",
    params(("model" = String, Path, description = "A model's name."), ("version" = u64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "A version number.")),
    responses(
        (status = 200, description = "Loaded and ready."),
        BadVersion,
        AccessErrors,
        ModelErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[get("/v2/models/{model}/versions/{version}/ready")]
pub async fn model_version_ready(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (model, version) = path.into_inner();
    handle_for(&state, &ModelPath { model, version: Some(version) }).await?;
    Ok(HttpResponse::Ok().finish())
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/infer",
    tag = "open-inference-protocol",
    operation_id = "oip_infer",
    summary = "Inference (Open Inference Protocol)",
    description = "One input: `input` `FP32 [N,3,S,S]` (the preprocessed tensor) or `image` `BYTES [N]` (encoded \
                   images; base64 strings in JSON), N ≤ 64. Outputs `logits` and `probabilities` `FP32 [N,C]`, or their \
                   top k with `parameters: {\"classification\": k}`. With the binary tensor data extension the body is \
                   the JSON header (its length in `Inference-Header-Content-Length`) followed by the inputs' bytes, \
                   and outputs asked with `binary_data` follow the answer's JSON header the same way.",
    params(("model" = String, Path, description = "A model's name, or `name@alias`.")),
    request_body(description = INFER_BODY, content((InferenceRequest = "application/json"))),
    responses(
        (status = 200, description = "The outputs (JSON; or JSON header and binary tensors, with `Inference-Header-Content-Length`).", body = InferenceResponse),
        AccessErrors,
        (status = 404, description = "No such model, version or alias.", body = OipError),
        InferErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[post("/v2/models/{model}/infer")]
pub async fn infer(
    req: HttpRequest,
    state: web::Data<AppState>,
    model: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse> {
    run_inference(req, state, ModelPath { model: model.into_inner(), version: None }, body).await
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/versions/{version}/infer",
    tag = "open-inference-protocol",
    operation_id = "oip_infer_version",
    summary = "Inference on a version (Open Inference Protocol)",
    description = "As `POST /v2/models/{model}/infer`, on one version of the model.",
    params(("model" = String, Path, description = "A model's name."), ("version" = u64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "A version number.")),
    request_body(description = INFER_BODY, content((InferenceRequest = "application/json"))),
    responses(
        (status = 200, description = "The outputs (as `POST /v2/models/{model}/infer` answers them).", body = InferenceResponse),
        AccessErrors,
        (status = 404, description = "No such model, version or alias.", body = OipError),
        InferErrors
    ),
    security(("bearer" = ["classify"]))
)]
#[post("/v2/models/{model}/versions/{version}/infer")]
pub async fn infer_version(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let (model, version) = path.into_inner();
    run_inference(req, state, ModelPath { model, version: Some(version) }, body).await
}

/// What a request gives the model.
enum Given {
    /// Preprocessed, `n` images.
    Tensor(Vec<f32>, usize),
    /// Encoded images.
    Images(Vec<Vec<u8>>),
}

/// An output to answer, and how.
struct Wanted {
    name: String,
    binary: bool,
    classification: Option<usize>,
}

async fn run_inference(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: ModelPath,
    body: web::Payload,
) -> Result<HttpResponse> {
    let query = path.query()?;
    let limit = state.config.inference.max_body_bytes;
    let declared = crate::api::content_length(&req).unwrap_or(limit as u64);
    if declared > limit as u64 {
        return Err(Error::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes")));
    }
    let body_permit = state.serving.admit_body(declared)?;
    let bytes = crate::api::read_body(body, limit).await?;
    let (request, binary) = split_body(&req, &bytes)?;
    let handle = pick(&state, &query).await?;
    counted(&handle, "v2", async {
        let given = read_input(&request, binary, &handle)?;
        let wanted = wanted_outputs(&request, handle.info.class_names.len())?;
        let n = match &given {
            Given::Tensor(_, n) => *n,
            Given::Images(images) => images.len(),
        };
        let _admission = handle.admit(n)?;
        let input = match given {
            Given::Tensor(x, _) => x,
            Given::Images(images) => preprocess(&req, &state, &handle, images).await?,
        };
        drop(body_permit);
        let logits = handle.infer(input, n).await?;
        Ok(respond(&handle, request.id.clone(), &wanted, &logits))
    })
    .await
}

/// The JSON request and the binary part after it (binary tensor data extension).
fn split_body<'a>(req: &HttpRequest, bytes: &'a [u8]) -> Result<(InferenceRequest, &'a [u8])> {
    let header_len = match req.headers().get(HEADER_LENGTH) {
        None => bytes.len(),
        Some(v) => {
            v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n <= bytes.len()).ok_or_else(
                || {
                    Error::invalid_request(format!(
                        "Inference-Header-Content-Length must be a number of bytes ≤ the body's {}",
                        bytes.len()
                    ))
                },
            )?
        }
    };
    let request: InferenceRequest = crate::api::parse_json(&bytes[..header_len], "the inference request")?;
    Ok((request, &bytes[header_len..]))
}

fn param<'a>(params: &'a Option<serde_json::Map<String, Value>>, key: &str) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(key))
}

/// The one input: a preprocessed tensor or encoded images, from JSON or the binary part.
fn read_input(request: &InferenceRequest, binary: &[u8], handle: &ModelHandle) -> Result<Given> {
    let s = handle.info.image_size;
    let [input] = request.inputs.as_slice() else {
        return Err(Error::invalid_request(format!(
            "give exactly one input: `{INPUT_NAME}` FP32 [N,3,{s},{s}] or `{IMAGE_INPUT}` BYTES [N] (got {})",
            request.inputs.len()
        )));
    };
    if input.name != INPUT_NAME && input.name != IMAGE_INPUT {
        return Err(Error::invalid_request(format!(
            "unknown input {:?}: the inputs are `{INPUT_NAME}` (FP32 [N,3,{s},{s}] or BYTES [N]) and `{IMAGE_INPUT}` (BYTES [N])",
            input.name
        )));
    }
    let raw = match param(&input.parameters, "binary_data_size") {
        None => None,
        Some(v) => {
            let size = v.as_u64().ok_or_else(|| Error::invalid_request("binary_data_size must be a whole number"))?;
            if size as usize != binary.len() {
                return Err(Error::invalid_request(format!(
                    "input {:?} declares {size} bytes of binary data; {} follow the JSON header",
                    input.name,
                    binary.len()
                )));
            }
            Some(binary)
        }
    };
    if raw.is_none() && !binary.is_empty() {
        return Err(Error::invalid_request("bytes follow the JSON header but no input declares binary_data_size"));
    }
    let count = |shape: &[i64]| -> Option<usize> {
        let n = *shape.first()?;
        (1..=MAX_IMAGES as i64).contains(&n).then_some(n as usize)
    };
    match input.datatype.as_str() {
        "FP32" if input.name == INPUT_NAME => {
            let n = count(&input.shape).filter(|_| input.shape[1..] == [3, s as i64, s as i64]).ok_or_else(|| {
                Error::invalid_request(format!(
                    "input `{INPUT_NAME}` must have shape [N,3,{s},{s}] with 1 ≤ N ≤ {MAX_IMAGES} (got {:?})",
                    input.shape
                ))
            })?;
            let want = n * 3 * s * s;
            let values = match raw {
                Some(b) => {
                    if b.len() != want * 4 {
                        return Err(Error::invalid_request(format!(
                            "input `{INPUT_NAME}` {:?} takes {} bytes of FP32; {} were sent",
                            input.shape,
                            want * 4,
                            b.len()
                        )));
                    }
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                None => json_floats(input.data.as_ref(), want)?,
            };
            if values.iter().any(|v: &f32| !v.is_finite()) {
                return Err(Error::invalid_request(format!("input `{INPUT_NAME}` holds a value that is not finite")));
            }
            Ok(Given::Tensor(values, n))
        }
        "BYTES" => {
            let n =
                count(&input.shape).filter(|_| input.shape.len() == 1 || input.shape[1..] == [1]).ok_or_else(|| {
                    Error::invalid_request(format!(
                        "encoded images must have shape [N] (or [N,1]) with 1 ≤ N ≤ {MAX_IMAGES} (got {:?})",
                        input.shape
                    ))
                })?;
            let images = match raw {
                Some(b) => split_bytes(b)?,
                None => json_images(input.data.as_ref())?,
            };
            if images.len() != n {
                return Err(Error::invalid_request(format!(
                    "input {:?} has shape {:?} but holds {} images",
                    input.name,
                    input.shape,
                    images.len()
                )));
            }
            Ok(Given::Images(images))
        }
        other => Err(Error::invalid_request(format!(
            "input {:?} of datatype {other:?}: `{INPUT_NAME}` takes FP32 or BYTES, `{IMAGE_INPUT}` BYTES",
            input.name
        ))),
    }
}

/// JSON numbers, flat or nested, exactly `want` of them.
fn json_floats(data: Option<&Value>, want: usize) -> Result<Vec<f32>> {
    fn walk(v: &Value, out: &mut Vec<f32>, want: usize) -> Result<()> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out, want)),
            Value::Number(x) if out.len() < want => {
                out.push(x.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            Value::Number(_) => {
                Err(Error::invalid_request(format!("the input holds more than the {want} values its shape says")))
            }
            other => Err(Error::invalid_request(format!("an FP32 input holds numbers, not {other}"))),
        }
    }
    let data = data.ok_or_else(|| Error::invalid_request("the input has neither data nor binary_data_size"))?;
    let mut out = Vec::with_capacity(want.min(1 << 24));
    walk(data, &mut out, want)?;
    if out.len() != want {
        return Err(Error::invalid_request(format!("the input holds {} values; its shape says {want}", out.len())));
    }
    Ok(out)
}

/// Encoded images from JSON: base64 strings (a `data:` URI prefix allowed), flat or nested.
fn json_images(data: Option<&Value>) -> Result<Vec<Vec<u8>>> {
    let data = data.ok_or_else(|| Error::invalid_request("the input has neither data nor binary_data_size"))?;
    let mut strings = Vec::new();
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) -> Result<()> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::String(s) if out.len() < MAX_IMAGES => {
                out.push(s);
                Ok(())
            }
            Value::String(_) => Err(Error::new(ErrorCode::PayloadTooLarge, format!("more than {MAX_IMAGES} images"))),
            other => Err(Error::invalid_request(format!("a BYTES input holds base64 strings, not {other}"))),
        }
    }
    walk(data, &mut strings)?;
    strings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let b64 = match s.split_once(";base64,") {
                Some((prefix, rest)) if prefix.starts_with("data:") => rest,
                _ => s,
            };
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| Error::invalid_request(format!("image {i}: not base64: {e}")))
        })
        .collect()
}

/// The elements of a binary BYTES tensor: each a 4-byte little-endian length and its bytes.
fn split_bytes(mut b: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if out.len() == MAX_IMAGES {
            return Err(Error::new(ErrorCode::PayloadTooLarge, format!("more than {MAX_IMAGES} images")));
        }
        let Some((len, rest)) = b.split_first_chunk::<4>() else {
            return Err(Error::invalid_request("a BYTES element's 4-byte length is cut short"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(Error::invalid_request(format!("a BYTES element says {len} bytes; {} are left", rest.len())));
        }
        out.push(rest[..len].to_vec());
        b = &rest[len..];
    }
    Ok(out)
}

/// The outputs asked for: each by name, binary or JSON, with the classification extension.
fn wanted_outputs(request: &InferenceRequest, classes: usize) -> Result<Vec<Wanted>> {
    let all_binary = match param(&request.parameters, "binary_data_output") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| Error::invalid_request("binary_data_output must be true or false"))?,
    };
    let Some(outputs) = &request.outputs else {
        return Ok([OUTPUT_NAME, PROBABILITIES]
            .map(|name| Wanted { name: name.into(), binary: all_binary, classification: None })
            .into());
    };
    if outputs.is_empty() || outputs.len() > 8 {
        return Err(Error::invalid_request("ask for 1 to 8 outputs, or leave `outputs` out for all"));
    }
    outputs
        .iter()
        .map(|o| {
            if o.name != OUTPUT_NAME && o.name != PROBABILITIES {
                return Err(Error::invalid_request(format!(
                    "unknown output {:?}: the outputs are `{OUTPUT_NAME}` and `{PROBABILITIES}`",
                    o.name
                )));
            }
            let binary = match param(&o.parameters, "binary_data") {
                None => all_binary,
                Some(v) => v.as_bool().ok_or_else(|| Error::invalid_request("binary_data must be true or false"))?,
            };
            let classification = match param(&o.parameters, "classification") {
                None => None,
                Some(v) => Some(v.as_u64().filter(|&k| k >= 1 && k as usize <= classes).ok_or_else(|| {
                    Error::invalid_request(format!("classification must be a whole number from 1 to {classes}"))
                })? as usize),
            };
            Ok(Wanted { name: o.name.clone(), binary, classification })
        })
        .collect()
}

/// The answer: JSON, or a JSON header and the binary outputs after it.
fn respond(handle: &ModelHandle, id: Option<String>, wanted: &[Wanted], logits: &[Vec<f32>]) -> HttpResponse {
    let n = logits.len();
    let classes = handle.info.class_names.len();
    let probabilities: Vec<Vec<f32>> = logits.iter().map(|l| softmax(l)).collect();
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for w in wanted {
        let values = if w.name == PROBABILITIES { &probabilities } else { logits };
        let (shape, datatype, raw, json): (Vec<i64>, &str, Vec<u8>, Value) = match w.classification {
            None => {
                let flat: Vec<f32> = values.iter().flatten().copied().collect();
                let raw = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
                (vec![n as i64, classes as i64], "FP32", raw, Value::from(flat))
            }
            Some(k) => {
                let strings: Vec<String> = values
                    .iter()
                    .flat_map(|row| {
                        let mut order: Vec<usize> = (0..row.len()).collect();
                        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                        order.into_iter().take(k).map(|i| format!("{}:{i}:{}", row[i], handle.info.class_names[i]))
                    })
                    .collect();
                let mut raw = Vec::new();
                for s in &strings {
                    raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    raw.extend_from_slice(s.as_bytes());
                }
                (vec![n as i64, k as i64], "BYTES", raw, Value::from(strings))
            }
        };
        let (parameters, data) = if w.binary {
            let mut p = serde_json::Map::new();
            p.insert("binary_data_size".into(), Value::from(raw.len()));
            tail.extend_from_slice(&raw);
            (Some(p), None)
        } else {
            (None, Some(json))
        };
        outputs.push(ResponseOutput { name: w.name.clone(), shape, datatype: datatype.into(), parameters, data });
    }
    let body = InferenceResponse {
        model_name: handle.info.name.clone(),
        model_version: handle.info.version.to_string(),
        id,
        outputs,
    };
    let json = serde_json::to_vec(&body).expect("the answer serializes");
    if tail.is_empty() && !wanted.iter().any(|w| w.binary) {
        return HttpResponse::Ok().content_type("application/json").body(json);
    }
    let header_len = json.len();
    let mut all = json;
    all.extend_from_slice(&tail);
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((HEADER_LENGTH, header_len.to_string()))
        .body(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bytes_elements_split_and_refuse_short_ones() {
        let mut b = Vec::new();
        for e in [&b"abc"[..], b"", b"z"] {
            b.extend_from_slice(&(e.len() as u32).to_le_bytes());
            b.extend_from_slice(e);
        }
        assert_eq!(split_bytes(&b).unwrap(), vec![b"abc".to_vec(), Vec::new(), b"z".to_vec()]);
        assert!(split_bytes(&b[..b.len() - 1]).is_err());
        assert!(split_bytes(&[1, 0]).is_err());
        let huge = [255u8, 255, 255, 255, 1];
        assert!(split_bytes(&huge).unwrap_err().message.contains("says 4294967295 bytes"));
    }

    #[test]
    fn json_floats_count_exactly() {
        let v = serde_json::json!([[1.0, 2.0], [3, 4.5]]);
        assert_eq!(json_floats(Some(&v), 4).unwrap(), vec![1.0, 2.0, 3.0, 4.5]);
        assert!(json_floats(Some(&v), 3).is_err());
        assert!(json_floats(Some(&v), 5).is_err());
        assert!(json_floats(Some(&serde_json::json!(["a"])), 1).is_err());
        assert!(json_floats(None, 1).is_err());
    }
}
