//! `POST /classify`: one image in the body, the top-k classes out.
use std::time::Instant;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::error::{Error, ErrorBody, ErrorCode, Result};
use crate::infer::engine::Prediction;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ClassifyQuery {
    /// A loaded model's name (default: the first of `inference.models`).
    pub model: Option<String>,
    /// How many classes to return, 1–100 (default 5).
    pub top_k: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    /// Reading the body.
    pub receive_ms: f64,
    /// Decoding and the eval transform.
    pub preprocess_ms: f64,
    /// Waiting in the batch queue and running the model.
    pub infer_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model": "flowers102", "version": 1, "provider": "CPUExecutionProvider",
    "predictions": [{"index": 72, "name": "water lily", "probability": 0.981}],
    "timings": {"receive_ms": 0.1, "preprocess_ms": 6.2, "infer_ms": 9.8, "total_ms": 16.3}}))]
pub struct ClassifyResponse {
    pub model: String,
    pub version: u64,
    /// The execution provider that ran the model.
    pub provider: String,
    pub predictions: Vec<Prediction>,
    pub timings: Timings,
}

const IMAGE_TYPES: [&str; 3] = ["image/jpeg", "image/png", "image/webp"];

#[utoipa::path(
    post,
    path = "/classify",
    tag = "inference",
    operation_id = "classify",
    summary = "Classify one image",
    description = "The body is the image itself (`image/jpeg`, `image/png` or `image/webp`). Grayscale, CMYK and \
                   alpha are handled; the image is resized and cropped with the model's own eval transform.",
    params(ClassifyQuery),
    request_body(content = Vec<u8>, description = "The image bytes.", content_type = "image/jpeg"),
    responses(
        (status = 200, description = "The most probable classes.", body = ClassifyResponse),
        (status = 400, description = "Bad query parameters.", body = ErrorBody,
         example = json!({"error": {"code": "invalid_request", "message": "top_k must be between 1 and 100"}})),
        (status = 404, description = "No loaded model has this name.", body = ErrorBody,
         example = json!({"error": {"code": "not_found", "message": "model nope is not loaded; loaded: flowers102"}})),
        (status = 409, description = "No model is configured to serve.", body = ErrorBody,
         example = json!({"error": {"code": "nothing_serving", "message": "no model is being served"}})),
        (status = 413, description = "The body or the image is too large.", body = ErrorBody,
         example = json!({"error": {"code": "payload_too_large", "message": "the body exceeds 20971520 bytes"}})),
        (status = 415, description = "Not a JPEG, PNG or WebP body.", body = ErrorBody,
         example = json!({"error": {"code": "unsupported_media_type", "message": "send image/jpeg, image/png or image/webp"}})),
        (status = 422, description = "The image cannot be decoded.", body = ErrorBody,
         example = json!({"error": {"code": "undecodable_image", "message": "cannot decode the image"}})),
        (status = 429, description = "The inference queue is full; see Retry-After.", body = ErrorBody,
         example = json!({"error": {"code": "queue_full", "message": "the inference queue is full"}})),
        (status = 503, description = "Models are still loading.", body = ErrorBody,
         example = json!({"error": {"code": "not_ready", "message": "models are still loading"}}))
    )
)]
#[post("/classify")]
pub async fn classify(
    req: HttpRequest,
    query: web::Query<ClassifyQuery>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let start = Instant::now();
    let top_k = query.top_k.unwrap_or(5);
    if !(1..=100).contains(&top_k) {
        return Err(Error::invalid_request("top_k must be between 1 and 100"));
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !IMAGE_TYPES.contains(&mime.as_str()) {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type {content_type:?} is not accepted; send image/jpeg, image/png or image/webp"),
        ));
    }
    let handle = state.serving.get(query.model.as_deref())?;
    let limit = state.config.inference.max_body_bytes;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::invalid_request(format!("reading the body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Error::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    let received = start.elapsed();
    let h = handle.clone();
    let input = web::block(move || h.preprocess(&bytes)).await.map_err(|e| Error::internal(e.to_string()))??;
    let preprocessed = start.elapsed();
    let logits = handle.infer(input, 1).await?.remove(0);
    let done = start.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Ok(HttpResponse::Ok().json(ClassifyResponse {
        model: handle.info.name.clone(),
        version: handle.info.version,
        provider: handle.info.provider.to_string(),
        predictions: handle.top_k(&logits, top_k),
        timings: Timings {
            receive_ms: ms(received),
            preprocess_ms: ms(preprocessed - received),
            infer_ms: ms(done - preprocessed),
            total_ms: ms(done),
        },
    }))
}
