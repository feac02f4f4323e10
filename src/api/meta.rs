//! Metrics and the API's own description.
use crate::api::AppState;
use actix_web::{get, web, HttpResponse};

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition (version 0.0.4): requests by method, route template and status, \
                   request latency histograms, readiness and build info; per model: inference requests by version, \
                   API and outcome, queue, preprocessing and compute time, batch sizes, queue depth, requests in \
                   flight, model loads; fine-tuning jobs by state and the training images per second.",
    responses((status = 200, description = "Metrics in Prometheus text format.", content_type = "text/plain",
               body = String, example = "petal_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 3\n"))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(runner) = state.runner.get() {
        runner.update_metrics().await;
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render())
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    description = "The OpenAPI 3.1 description of this API, the contract client SDKs are generated from. \
                   A browsable copy is at `/docs/`.",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json",
               body = Object, example = json!({"openapi": "3.1.0", "info": {"title": "petal"}})))
)]
#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    HttpResponse::Ok().json(DOCUMENT.get_or_init(crate::api::document))
}
