//! The metrics of the serving engine and the job runner, per model, in Prometheus form: one set per
//! process (`global`), recorded where the work happens and exposed by `GET /metrics` with the HTTP
//! server's own. Every label comes from a closed set or from a model that exists: a model is
//! labelled only once a request reached a loaded version of it, never by what a client asked for.
use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// What an inference request came to, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 4xx other than 429.
    ClientError,
    /// 429: the model's queue was full.
    Overloaded,
    /// A 5xx.
    ServerError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Ok,
            429 => Outcome::Overloaded,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::Overloaded => "overloaded",
            Outcome::ServerError => "server_error",
        }
    }
}

/// Every metric of the engine and the runner.
pub struct Metrics {
    pub requests: IntCounterVec,
    pub queue_seconds: HistogramVec,
    pub preprocess_seconds: HistogramVec,
    pub compute_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub load_seconds: Histogram,
    pub loads: IntCounterVec,
    pub jobs: IntGaugeVec,
    pub jobs_finished: IntCounterVec,
    pub job_images_per_second: prometheus::Gauge,
}

const SECONDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            requests: counter(
                "petal_inference_requests_total",
                "Inference requests that reached a model, by model, version, API (classify, v2) and outcome",
                &["model", "version", "api", "outcome"],
            ),
            queue_seconds: histogram(
                "petal_inference_queue_seconds",
                "Time a request waited in its model's batch queue",
                &SECONDS,
                &["model"],
            ),
            preprocess_seconds: histogram(
                "petal_inference_preprocess_seconds",
                "Time to decode and transform a request's images",
                &SECONDS,
                &["model"],
            ),
            compute_seconds: histogram(
                "petal_inference_compute_seconds",
                "Time of one model call (a batch)",
                &SECONDS,
                &["model"],
            ),
            batch_size: histogram(
                "petal_inference_batch_size",
                "Images per model call",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                &["model"],
            ),
            queue_depth: gauge(
                "petal_inference_queue_depth",
                "Requests waiting in a model's batch queue (the API's autoscaling signal)",
                &["model"],
            ),
            in_flight: gauge(
                "petal_inference_in_flight",
                "Requests a model has admitted and not yet answered",
                &["model"],
            ),
            load_seconds: Histogram::with_opts(
                HistogramOpts::new("petal_model_load_seconds", "Time to load and warm up a model version")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )
            .expect("valid metric"),
            loads: counter("petal_model_loads_total", "Model version loads, by outcome (ok, error)", &["outcome"]),
            jobs: gauge(
                "petal_jobs",
                "Fine-tuning jobs by state (queued, running), as this process sees them",
                &["state"],
            ),
            jobs_finished: counter(
                "petal_jobs_finished_total",
                "Fine-tuning jobs this process ended, by final state",
                &["state"],
            ),
            job_images_per_second: prometheus::Gauge::new(
                "petal_job_images_per_second",
                "Training images per second of the jobs this process runs",
            )
            .expect("valid metric"),
        }
    }

    /// Every collector, to register in a Prometheus registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.queue_seconds.clone()),
            Box::new(self.preprocess_seconds.clone()),
            Box::new(self.compute_seconds.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.load_seconds.clone()),
            Box::new(self.loads.clone()),
            Box::new(self.jobs.clone()),
            Box::new(self.jobs_finished.clone()),
            Box::new(self.job_images_per_second.clone()),
        ]
    }

    /// Counts a request that reached version `version` of `model` through `api`.
    pub fn request(&self, model: &str, version: u64, api: &'static str, outcome: Outcome) {
        self.requests.with_label_values(&[model, &version.to_string(), api, outcome.label()]).inc();
    }

    /// The queue depth gauge of `model`.
    pub fn depth(&self, model: &str) -> IntGauge {
        self.queue_depth.with_label_values(&[model])
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
