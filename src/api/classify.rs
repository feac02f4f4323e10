//! `POST /classify`: one image or several — raw body, multipart parts or JSON base64 — the top-k
//! classes out, from the served model or any version of any model in the registry.
use std::time::Instant;

use actix_web::{post, web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::connection::client_gone;
use crate::api::AppState;
use crate::error::{Error, ErrorBody, ErrorCode, Result};
use crate::infer::engine::{ModelHandle, Prediction};
use crate::records::names::{AliasName, ModelName};
use crate::registry::ModelRef;
use crate::telemetry::metrics::{self, Outcome};

/// Most images in one request.
pub const MAX_IMAGES: usize = crate::config::MAX_IMAGES_PER_REQUEST;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ClassifyQuery {
    /// A model's name (default: the first of `inference.models`). Served models answer at once;
    /// any other model in the registry is loaded on demand.
    pub model: Option<ModelName>,
    /// A version of the model (default: the served one).
    #[param(minimum = 1, maximum = 9223372036854775807_i64)]
    pub version: Option<u64>,
    /// An alias of the model, resolved now (e.g. `staging`).
    pub alias: Option<AliasName>,
    /// How many classes to return, 1–100 (default 5).
    #[param(minimum = 1, maximum = 100, default = 5)]
    pub top_k: Option<usize>,
}

impl ClassifyQuery {
    /// Checks the query's values and how they combine; returns `top_k`.
    pub fn check(&self) -> Result<usize> {
        let top_k = self.top_k.unwrap_or(5);
        if !(1..=100).contains(&top_k) {
            return Err(Error::invalid_request("top_k must be between 1 and 100"));
        }
        if self.version.is_some_and(|v| v == 0 || v > i64::MAX as u64) {
            return Err(Error::invalid_request("version must be between 1 and 9223372036854775807"));
        }
        if self.version.is_some() && self.alias.is_some() {
            return Err(Error::new(ErrorCode::InvalidArguments, "give version or alias, not both"));
        }
        Ok(top_k)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    /// Reading the body.
    pub receive_ms: f64,
    /// Decoding and the eval transform of every image.
    pub preprocess_ms: f64,
    /// Waiting in the batch queue and running the model.
    pub infer_ms: f64,
    pub total_ms: f64,
}

/// One image's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageResult {
    /// The image's position in the request, from 0.
    pub index: usize,
    pub predictions: Vec<Prediction>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model": "flowers102", "version": 1, "provider": "CPUExecutionProvider",
    "predictions": [{"index": 53, "name": "sunflower", "probability": 0.998}],
    "results": [{"index": 0, "predictions": [{"index": 53, "name": "sunflower", "probability": 0.998}]}],
    "timings": {"receive_ms": 0.1, "preprocess_ms": 6.2, "infer_ms": 9.8, "total_ms": 16.3}}))]
pub struct ClassifyResponse {
    pub model: String,
    pub version: u64,
    /// The execution provider that ran the model.
    pub provider: String,
    /// The first image's classes (all a single-image client needs).
    pub predictions: Vec<Prediction>,
    /// Every image's classes, in request order.
    pub results: Vec<ImageResult>,
    pub timings: Timings,
}

/// `application/json`: images as base64 (a `data:` URI prefix is allowed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"images": ["iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="]}))]
pub struct ClassifyJson {
    /// The images, base64-encoded (standard alphabet, padded).
    #[schema(min_items = 1, max_items = 64, value_type = Vec<String>, format = Byte)]
    pub images: Vec<String>,
}

/// `multipart/form-data`: one or more `image` parts.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ClassifyForm {
    /// An image (JPEG, PNG or WebP); repeat the part for several.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

const RAW_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "application/octet-stream"];

#[utoipa::path(
    post,
    path = "/classify",
    tag = "inference",
    operation_id = "classify",
    summary = "Classify images",
    description = "`multipart/form-data` with one or more `image` parts (JPEG, PNG or WebP) — at most 64 images. \
                   The same endpoint also takes one image as the whole body (`image/jpeg`, `image/png`, `image/webp` \
                   or `application/octet-stream`: `curl --data-binary @photo.jpg`) and JSON with base64 images \
                   (schema `ClassifyJson`); the document names the form only, as generated clients take one body \
                   type. Grayscale, CMYK and alpha are handled; each image is resized and cropped with the model's \
                   own eval transform. Pick the model with `model`, and a version with `version` or `alias`.",
    params(ClassifyQuery),
    request_body(description = "The image(s).", content((ClassifyForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "The most probable classes of every image.", body = ClassifyResponse),
        (status = 400, description = "Malformed query parameters, base64 or form.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_request", "message": "top_k must be between 1 and 100"}})),
        (status = 401, response = crate::api::responses::Unauthorized),
        (status = 403, description = "The token lacks the classify scope; or, without tokens, the request is not from a local client (`origin_not_allowed`).", body = ErrorBody,
         example = json!({"error": {"code": "forbidden", "message": "this endpoint needs the classify scope"}})),
        (status = 404, description = "No such model, version or alias.", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "model nope has no versions"}})),
        (status = 409, description = "No model is configured to serve and none was named.", body = ErrorBody,
         example = json!({"error": {"code": "nothing_serving", "message": "no model is being served"}})),
        (status = 413, description = "The body or an image is too large, or too many images.", body = ErrorBody,
         example = json!({"error": {"code": "payload_too_large", "message": "the body exceeds 20971520 bytes"}})),
        (status = 415, description = "Not an image, multipart or JSON body.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "send image/jpeg, image/png, image/webp, application/octet-stream, multipart/form-data or application/json"}})),
        (status = 422, description = "An image cannot be decoded, a name is invalid, or version and alias are both given.", body = ErrorBody,
         example = json!({"error": {"code": "undecodable_image", "message": "image 0: cannot decode the image"}})),
        (status = 429, description = "The model's queue (by requests and images) or the server's budget of request bodies is full; see Retry-After.", body = ErrorBody,
         example = json!({"error": {"code": "queue_full", "message": "the inference queue is full"}})),
        (status = 503, description = "Models are still loading.", body = ErrorBody,
         example = json!({"error": {"code": "not_ready", "message": "models are still loading"}}))
    ),
    security(("bearer" = ["classify"]))
)]
#[post("/classify")]
pub async fn classify(
    req: HttpRequest,
    query: web::Query<ClassifyQuery>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let start = Instant::now();
    let top_k = query.check()?;
    let limit = state.config.inference.max_body_bytes;
    // Admitted by what its body will hold before a byte of it is read.
    let declared = crate::api::content_length(&req).unwrap_or(limit as u64);
    if declared > limit as u64 {
        return Err(Error::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes")));
    }
    let body_permit = state.serving.admit_body(declared)?;
    let images = read_images(&req, body, limit).await?;
    let handle = pick(&state, &query).await?;
    let answer = counted(&handle, "classify", async {
        // Refused before decoding when the model is full (by images, what the request costs): an
        // overloaded server spends nothing more.
        let n = images.len();
        let _admission = handle.admit(n)?;
        let received = start.elapsed();
        let input = preprocess(&req, &state, &handle, images).await?;
        drop(body_permit);
        let preprocessed = start.elapsed();
        let logits = handle.infer(input, n).await?;
        Ok((logits, received, preprocessed, start.elapsed()))
    });
    let (logits, received, preprocessed, done) = answer.await?;
    let results: Vec<ImageResult> = logits
        .iter()
        .enumerate()
        .map(|(index, l)| ImageResult { index, predictions: handle.top_k(l, top_k) })
        .collect();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Ok(HttpResponse::Ok().json(ClassifyResponse {
        model: handle.info.name.clone(),
        version: handle.info.version,
        provider: handle.info.provider.to_string(),
        predictions: results[0].predictions.clone(),
        results,
        timings: Timings {
            receive_ms: ms(received),
            preprocess_ms: ms(preprocessed - received),
            infer_ms: ms(done - preprocessed),
            total_ms: ms(done),
        },
    }))
}

/// The images of a request, by its media type: one raw image, a form's parts or a JSON list;
/// at least one and at most `MAX_IMAGES`.
async fn read_images(req: &HttpRequest, body: web::Payload, limit: usize) -> Result<Vec<Vec<u8>>> {
    let (content_type, mime) = crate::api::media_type(req);
    let images: Vec<Vec<u8>> = match mime.as_str() {
        m if RAW_TYPES.contains(&m) => vec![crate::api::read_body(body, limit).await?],
        "multipart/form-data" => read_form(req.headers(), body, limit).await?,
        "application/json" => from_json(&crate::api::read_body(body, limit).await?)?,
        _ => {
            return Err(Error::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "Content-Type {content_type:?} is not accepted; send image/jpeg, image/png, image/webp, \
                     application/octet-stream, multipart/form-data or application/json"
                ),
            ))
        }
    };
    if images.is_empty() {
        return Err(Error::invalid_request("the request holds no image"));
    }
    if images.len() > MAX_IMAGES {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!("{} images in one request; the limit is {MAX_IMAGES}", images.len()),
        ));
    }
    Ok(images)
}

/// The model's input for `images`. Every image's size is read from its header first: a request
/// with one image over the limits costs no decoding at all. Then one image at a time, each within
/// the server-wide decoding budget. When its socket says the client has gone (actix keeps running
/// the handler), the request stops here: its places are given back and no further image is
/// decoded.
pub(crate) async fn preprocess(
    req: &HttpRequest,
    state: &AppState,
    handle: &ModelHandle,
    images: Vec<Vec<u8>>,
) -> Result<Vec<f32>> {
    let started = Instant::now();
    let n = images.len();
    let sizes = images
        .iter()
        .enumerate()
        .map(|(i, bytes)| handle.probe(bytes).map_err(|e| Error::new(e.code, format!("image {i}: {}", e.message))))
        .collect::<Result<Vec<_>>>()?;
    let mut input = Vec::with_capacity(n * 3 * handle.info.image_size * handle.info.image_size);
    for (i, (bytes, (w, h))) in images.into_iter().zip(sizes).enumerate() {
        let decoding = state.serving.decoding(u64::from(w) * u64::from(h), || client_gone(req)).await;
        if decoding.is_none() || client_gone(req) {
            return Err(gone(i, n));
        }
        let model = handle.clone();
        let x = web::block(move || model.preprocess(&bytes))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| Error::new(e.code, format!("image {i}: {}", e.message)))?;
        input.extend(x);
    }
    metrics::global()
        .preprocess_seconds
        .with_label_values(&[&handle.info.name])
        .observe(started.elapsed().as_secs_f64());
    Ok(input)
}

/// Runs the rest of a request that reached `handle`, counting its outcome by model and version
/// (`petal_inference_requests_total`).
pub(crate) async fn counted<T>(
    handle: &ModelHandle,
    api: &'static str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let result = work.await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::of_status(e.code.status().as_u16()),
    };
    metrics::global().request(&handle.info.name, handle.info.version, api, outcome);
    result
}

/// A client that went away mid-request: answered (to nobody) and logged, its work stopped.
fn gone(done: usize, n: usize) -> Error {
    tracing::info!(decoded = done, images = n, "the client went away: stopped decoding its images");
    Error::invalid_request("the client closed the connection")
}

/// The model version a request asks for: the served one, or one loaded on demand.
pub(crate) async fn pick(state: &web::Data<AppState>, q: &ClassifyQuery) -> Result<ModelHandle> {
    let served = state.serving.get(q.model.as_deref());
    let name = match (&q.model, &served) {
        (Some(m), _) => m.to_string(),
        (None, Ok(h)) => h.info.name.clone(),
        (None, Err(_)) => return served,
    };
    let wanted = match (q.version, &q.alias) {
        (Some(v), _) => Some(v),
        (None, Some(a)) => {
            let r = ModelRef::Alias(name.clone(), a.to_string());
            Some(state.registry()?.resolve(&r).await?)
        }
        (None, None) => None,
    };
    match (wanted, served) {
        (None, Ok(h)) => Ok(h),
        (None, Err(e)) if e.code != ErrorCode::NotFound && e.code != ErrorCode::NothingServing => Err(e),
        (wanted, _) => {
            let version = match wanted {
                Some(v) => v,
                None => state.registry()?.resolve(&ModelRef::Latest(name.clone())).await?,
            };
            let registry = state.registry()?;
            state
                .serving
                .load_on_demand(&name, version, || async {
                    let h = crate::infer::load::load_version(&state.config, &registry, &name, version).await?;
                    tracing::info!(model = %name, version, "loaded on demand");
                    Ok(h)
                })
                .await
        }
    }
}

/// The `image` parts of a `multipart/form-data` body (its boundary in `headers`), at most `limit`
/// bytes together. Public for the fuzz targets (`fuzz/`).
pub async fn read_form<S>(headers: &actix_web::http::header::HeaderMap, body: S, limit: usize) -> Result<Vec<Vec<u8>>>
where
    S: futures_util::Stream<Item = std::result::Result<actix_web::web::Bytes, actix_web::error::PayloadError>>
        + 'static,
{
    let bad = |e: actix_multipart::MultipartError| Error::invalid_request(format!("multipart: {e}"));
    let mut form = actix_multipart::Multipart::new(headers, body);
    let mut images = Vec::new();
    let mut total = 0usize;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(bad)?;
        if field.name() != Some("image") {
            return Err(Error::invalid_request(format!(
                "unknown part {:?}: send the images as `image` parts",
                field.name().unwrap_or("")
            )));
        }
        let too_large = || Error::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes"));
        let bytes = crate::foundation::streams::collect(&mut field, limit - total, too_large, bad).await?;
        total += bytes.len();
        images.push(bytes);
        if images.len() > MAX_IMAGES {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("more than {MAX_IMAGES} images in one request"),
            ));
        }
    }
    Ok(images)
}

/// The images of a JSON body (`{"images": [base64 or data URL, …]}`).
pub fn from_json(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let body: ClassifyJson =
        serde_json::from_slice(bytes).map_err(|e| Error::new(ErrorCode::InvalidJson, format!("the body: {e}")))?;
    body.images
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let data = match s.split_once(";base64,") {
                Some((prefix, data)) if prefix.starts_with("data:") => data,
                _ => s.as_str(),
            };
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| Error::invalid_request(format!("image {i}: not base64: {e}")))
        })
        .collect()
}
