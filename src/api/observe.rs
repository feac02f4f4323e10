//! The middleware every request passes: a request id (taken from a well-formed `x-request-id`
//! header, else generated) in the logs, the response header and error bodies; Prometheus metrics
//! by route template and status; one access-log line per request.
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tracing::Instrument;

use crate::api::AppState;
use crate::error::Error;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the request being served, stored in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Prometheus metrics of the HTTP server.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub ready: IntGauge,
    models: prometheus::IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("petal_http_requests_total", "HTTP requests answered, by method, route template and status"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("petal_http_request_duration_seconds", "Time to answer an HTTP request").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let ready = IntGauge::new("petal_ready", "1 when GET /readyz answers 200").expect("valid metric");
        let models = prometheus::IntGaugeVec::new(
            Opts::new("petal_model_loaded", "1 for each model being served, with its version and execution provider"),
            &["model", "version", "provider"],
        )
        .expect("valid metric");
        let build = IntGauge::with_opts(
            Opts::new("petal_build_info", "petal's version and commit")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("commit", env!("PETAL_GIT_COMMIT")),
        )
        .expect("valid metric");
        build.set(1);
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(ready.clone()),
            Box::new(models.clone()),
            Box::new(build),
        ]
        .into_iter()
        .chain(crate::telemetry::metrics::global().collectors())
        {
            registry.register(collector).expect("metric registered once");
        }
        Self { registry, requests, latency, ready, models }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[method, route, &status_label(status)]).inc();
        self.latency.with_label_values(&[method, route]).observe(seconds);
    }

    /// Records that a model version is served on an execution provider.
    pub fn model_loaded(&self, model: &str, version: u64, provider: &str) {
        self.models.with_label_values(&[model, &version.to_string(), provider]).set(1);
    }

    /// Records that a model version is no longer served.
    pub fn model_unloaded(&self, model: &str, version: u64, provider: &str) {
        let _ = self.models.remove_label_values(&[model, &version.to_string(), provider]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// The method as a metric label: one of the standard methods, else `other` (a client must not be
/// able to add label sets: every label of petal's metrics comes from a closed set).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|k| *k == method.as_str()).unwrap_or("other")
}

/// The status as a metric label: petal answers only statuses of its own error table and a few
/// successes, but a status outside 100–599 is counted as `other` all the same.
fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    match status {
        100..=599 => status.to_string().into(),
        _ => "other".into(),
    }
}

fn well_formed_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    ok.then(|| s.to_string())
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let start = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(well_formed_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = method_label(req.method());
    let path = req.path().to_string();
    let wants_problem = req
        .headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/problem+json"));
    let span = tracing::info_span!("request", request_id = %request_id);

    let res = next.call(req).instrument(span.clone()).await?;

    // Our errors are re-rendered with the request id in the body: the Open Inference Protocol's
    // routes in that protocol's shape, RFC 9457 problem details for a client that asks for them,
    // else petal's own.
    let mut problem = false;
    let body = res.response().error().and_then(|e| e.as_error::<Error>()).map(|e| {
        if crate::api::oip::is_oip_path(&path) {
            serde_json::to_vec(&crate::api::oip::error_body(e, Some(&request_id)))
        } else if wants_problem {
            problem = true;
            serde_json::to_vec(&e.problem(Some(&request_id)))
        } else {
            serde_json::to_vec(&e.body(Some(&request_id)))
        }
        .expect("error body serializes")
    });
    let mut res = res.map_into_boxed_body();
    if let Some(body) = body {
        res = res.map_body(|_, _| BoxBody::new(body));
    }
    if problem {
        res.headers_mut()
            .insert(actix_web::http::header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    }
    res.headers_mut().insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        HeaderValue::from_str(&request_id).expect("request ids are header-safe"),
    );

    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_string());
    let status = res.status().as_u16();
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(state) = state {
        state.metrics.observe(method, &route, status, elapsed);
    }
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            path = %path,
            route = %route,
            status,
            duration_ms = elapsed * 1000.0,
            "request"
        )
    });
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert_eq!(well_formed_request_id(&HeaderValue::from_static("abc-123")).as_deref(), Some("abc-123"));
        assert_eq!(well_formed_request_id(&HeaderValue::from_static("")), None);
        assert_eq!(well_formed_request_id(&HeaderValue::from_static("a b")), None);
        let long = "a".repeat(129);
        assert_eq!(well_formed_request_id(&HeaderValue::from_str(&long).unwrap()), None);
    }

    #[test]
    fn metrics_render_counts() {
        let m = Metrics::new();
        m.observe("GET", "/healthz", 200, 0.002);
        m.observe("GET", "/healthz", 200, 0.003);
        let text = m.render();
        assert!(text.contains(r#"petal_http_requests_total{method="GET",route="/healthz",status="200"} 2"#), "{text}");
        assert!(text.contains("petal_http_request_duration_seconds_bucket"), "{text}");
    }
}
