//! The one error type of petal, and the one table that maps each kind of error to its stable
//! code string, HTTP status and a short description for the docs.
//!
//! Clients match on `error.code`; it never changes once published. Messages are for people and
//! may improve over time. Every error body has the shape
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $status:literal, $doc:literal),)*) => {
        /// Stable error codes. The single table below is the only place that says which code has
        /// which HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable string clients match on.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> StatusCode {
                let status: u16 = match self { $(ErrorCode::$variant => $status,)* };
                StatusCode::from_u16(status).expect("valid status in the error table")
            }

            /// What the code means, for documentation.
            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

error_codes! {
    InvalidRequest        => ("invalid_request", 400, "The request is malformed: a query, path or header value could not be parsed."),
    InvalidJson           => ("invalid_json", 400, "The JSON body could not be parsed or does not match the schema."),
    InvalidSpec           => ("invalid_spec", 422, "The multipart `spec` part (JSON text) is not JSON or does not describe a job (schema `JobSpec`)."),
    RouteNotFound         => ("route_not_found", 404, "No endpoint exists at this path."),
    MethodNotAllowed      => ("method_not_allowed", 405, "The endpoint exists but does not accept this HTTP method."),
    PayloadTooLarge       => ("payload_too_large", 413, "The request body is larger than the configured limit."),
    UnsupportedMediaType  => ("unsupported_media_type", 415, "The request's Content-Type is not accepted by this endpoint."),
    UnknownArchitecture   => ("unknown_architecture", 404, "The backbone architecture is not one petal supports."),
    UnknownWeights        => ("unknown_weights", 404, "No catalog entry has these weights."),
    WeightsUnsafe         => ("weights_unsafe", 422, "The weight file's pickle would run code or build objects other than tensors and dicts; it was refused, nothing was executed."),
    WeightsCorrupt        => ("weights_corrupt", 422, "The weight file is truncated or malformed."),
    WeightsMismatch       => ("weights_mismatch", 422, "The weights do not fit the architecture: missing or unexpected keys, or shape mismatches (all listed)."),
    WeightsChecksum       => ("weights_checksum", 422, "The weight file's sha256 differs from the catalog's."),
    DownloadFailed        => ("download_failed", 502, "Downloading from an upstream URL failed."),
    NotFound              => ("not_found", 404, "The model, version, alias or artifact does not exist."),
    InvalidName           => ("invalid_name", 422, "A model, alias or artifact name is not allowed."),
    AliasPreconditionFailed => ("alias_precondition_failed", 412, "The alias moved since it was read (If-Match did not match its current seq)."),
    AliasConflict         => ("alias_conflict", 409, "Another promotion of the same alias won the race; read it again and retry."),
    LicenceNotAcknowledged => ("licence_not_acknowledged", 403, "Under a commercial usage policy, the model's non-commercial terms must be acknowledged to promote it."),
    IntegrityError        => ("integrity_error", 500, "Stored bytes differ from their manifest (sha256 or size): tampered or truncated."),
    RegistryUnavailable   => ("registry_unavailable", 503, "The registry's object store cannot be reached or refused the operation."),
    DatasetArchiveInvalid => ("dataset_archive_invalid", 422, "The dataset archive is empty, truncated, or not a zip or tar(.gz) file."),
    DatasetUnsafePath     => ("dataset_unsafe_path", 422, "The dataset contains a path that escapes its folder ('..', absolute) or a link; it was refused."),
    DatasetTooLarge       => ("dataset_too_large", 413, "The dataset exceeds a limit: archive size, file count, one file's or all files' uncompressed bytes."),
    DatasetLayout         => ("dataset_layout", 422, "The dataset's layout is not recognised (ImageFolder, train/ + val/, or Oxford Flowers 102) or its label files are malformed."),
    DatasetInvalid        => ("dataset_invalid", 422, "The dataset fails validation: fewer than 2 classes, a class missing from train or validation, bad images (every problem is listed)."),
    InvalidArguments      => ("invalid_arguments", 422, "The request is well-formed but asks for something impossible: a value out of range, weights not among the backbones, no dataset or two, a version and an alias at once."),
    JobFinished           => ("job_finished", 409, "The job has already succeeded, failed or been canceled (or another process runs it); it cannot be canceled."),
    JobInterrupted        => ("job_interrupted", 500, "petal (or its workers) stopped while the job was running, jobs.max_attempts times: it is not run again; submit the spec again (found in a job's `error`, never as an HTTP answer)."),
    Unauthorized          => ("unauthorized", 401, "No bearer token, or one petal does not know (WWW-Authenticate: Bearer)."),
    Forbidden             => ("forbidden", 403, "The token is valid but lacks the scope this endpoint needs."),
    OriginNotAllowed      => ("origin_not_allowed", 403, "Without tokens petal answers only local clients: the request's Host is not a loopback name or one of server.allowed_hosts, or it comes from another origin's web page (Origin, Sec-Fetch-Site) not in server.allowed_origins."),
    TrainingCanceled      => ("training_canceled", 409, "The training run was canceled."),
    TrainingFailed        => ("training_failed", 500, "Training failed (the loss became NaN or infinite, or the device failed)."),
    DeviceUnavailable     => ("device_unavailable", 503, "The requested training device (CUDA) is not available on this host."),
    UndecodableImage      => ("undecodable_image", 422, "The image could not be decoded (corrupt, truncated, or not an image)."),
    ImageTooLarge         => ("image_too_large", 413, "The image exceeds a configured limit on its pixels, its width or height, or its aspect ratio (longer over shorter side)."),
    NothingServing        => ("nothing_serving", 409, "No model is configured to serve (inference.models is empty)."),
    QueueFull             => ("queue_full", 429, "A queue or budget is full (inference, request bodies, uploads, dataset checks); retry after the Retry-After delay."),
    TooManyJobs           => ("too_many_jobs", 429, "The caller has jobs.max_active_per_caller jobs queued or running; wait for one to end or cancel one."),
    IdempotencyKeyReused  => ("idempotency_key_reused", 422, "The Idempotency-Key was used before with another request (another spec or dataset); use a new key."),
    IdempotencyInProgress => ("idempotency_in_progress", 409, "A request with the same Idempotency-Key is being handled; retry after it (see Retry-After)."),
    ModelInvalid          => ("model_invalid", 422, "The ONNX model lacks what petal needs (its metadata: class names, transform, input size)."),
    ProviderUnavailable   => ("provider_unavailable", 503, "The requested execution provider (CUDA) cannot be used on this host."),
    ExportFailed          => ("export_failed", 422, "The model cannot be exported to ONNX as asked."),
    NotReady              => ("not_ready", 503, "The service is starting or a dependency is unavailable; see GET /readyz."),
    NativeLibraryMissing  => ("native_library_missing", 503, "A native library (libtorch, onnxruntime) could not be loaded."),
    InvalidConfig         => ("invalid_config", 500, "The configuration is invalid (reported at start, never served)."),
    Internal              => ("internal", 500, "An unexpected server-side failure; the request id locates it in the logs."),
}

/// petal's error: a stable code plus a human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Extra response headers (`Allow` on 405, `Retry-After` on 429, …).
    pub headers: Vec<(&'static str, String)>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), headers: Vec::new() }
    }

    /// Adds a response header sent with this error.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfig, message)
    }

    pub fn native_library(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NativeLibraryMissing, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// A failed file operation, naming the action and the file: `reading /x/y.pth: No such file
    /// or directory`. A missing file is `not_found`; any other failure is `internal`.
    pub fn io(action: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        let code = if e.kind() == std::io::ErrorKind::NotFound { ErrorCode::NotFound } else { ErrorCode::Internal };
        Self::new(code, format!("{action} {}: {e}", path.display()))
    }

    /// The JSON body for this error, tagged with the request id when one is known.
    pub fn body(&self, request_id: Option<&str>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                request_id: request_id.map(str::to_owned),
            },
        }
    }
}

/// An error as RFC 9457 problem details (`application/problem+json`), for clients that ask for
/// them in `Accept`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "urn:petal:error:route_not_found", "title": "No endpoint at this path.", "status": 404,
    "detail": "no endpoint at GET /nope", "code": "route_not_found", "request_id": "6f1c2b1e-8a0e-4c55-9d8e-2f7f0b7f5a11"}))]
pub struct Problem {
    /// `urn:petal:error:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the code means (the error table's line).
    pub title: String,
    pub status: u16,
    /// This occurrence.
    pub detail: String,
    /// The stable code, as in petal's own error body.
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Error {
    /// The error as RFC 9457 problem details.
    pub fn problem(&self, request_id: Option<&str>) -> Problem {
        Problem {
            kind: format!("urn:petal:error:{}", self.code.as_str()),
            title: self.code.description().to_string(),
            status: self.code.status().as_u16(),
            detail: self.message.clone(),
            code: self.code,
            request_id: request_id.map(str::to_owned),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "route_not_found", "message": "no endpoint at GET /nope", "request_id": "6f1c2b1e-8a0e-4c55-9d8e-2f7f0b7f5a11"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The request id (also in the `x-request-id` response header and the logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    /// The request-id middleware (`api::observe`) re-renders this body with the request id.
    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        for (name, value) in &self.headers {
            response.insert_header((*name, value.as_str()));
        }
        response.json(self.body(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_match_serde() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(s));
            assert!(code.status().is_client_error() || code.status().is_server_error());
            assert!(!code.description().is_empty());
        }
    }

    #[test]
    fn error_body_shape() {
        let e = Error::new(ErrorCode::PayloadTooLarge, "too big");
        assert_eq!(e.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        let v = serde_json::to_value(e.body(Some("abc"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "payload_too_large", "message": "too big", "request_id": "abc"}})
        );
    }
}
