//! The HTTP API: one file per resource, no ML code here. `configure` mounts every route;
//! `ApiDoc` is the OpenAPI contract (served at `/openapi.json`, committed as `openapi/openapi.json`).
use std::time::Instant;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::error::{Error, ErrorBody, ErrorCode, ErrorDetail};

pub mod auth;
pub mod classify;
pub mod connection;
pub mod console;
pub mod generators;
pub mod health;
pub mod jobs;
pub mod meta;
pub mod models;
pub mod observe;
pub mod oip;
pub mod openapi30;

/// The request's Content-Type as sent (for messages) and its media type: lowercase, without
/// parameters (`multipart/form-data; boundary=…` → `multipart/form-data`).
pub fn media_type(req: &HttpRequest) -> (&str, String) {
    let sent = req.headers().get(actix_web::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    (sent, sent.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The body size a request declares (`Content-Length`), if it declares one.
pub fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a whole request body, refusing more than `limit` bytes (413).
pub async fn read_body(payload: web::Payload, limit: usize) -> Result<Vec<u8>, Error> {
    crate::foundation::streams::collect(
        payload,
        limit,
        || Error::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes")),
        |e| Error::invalid_request(format!("reading the body: {e}")),
    )
    .await
}

/// A request that could not be read because a typed value in it was refused as it was read is
/// answered with that refusal's code, wherever the value was (path, query, JSON body): a model or
/// alias name that breaks the naming rule `invalid_name`, a device that is none of the choices
/// `invalid_arguments`.
fn with_typed_value_code(e: Error) -> Error {
    let device = format!("device: {}", crate::train::device::DeviceChoice::EXPECTED);
    if e.message.contains(crate::records::names::INVALID_NAME) {
        Error::new(ErrorCode::InvalidName, e.message)
    } else if e.message.contains(&device) {
        Error::new(ErrorCode::InvalidArguments, e.message)
    } else {
        e
    }
}

/// Whether the request's `If-None-Match` names `etag` (unquoted) or is `*`: then the answer is 304.
pub fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(actix_web::http::header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag
        })
}

/// Parses a JSON body. JSON Schema counts `5.0` as an integer, and so does petal: numbers with no
/// fractional part are read as integers wherever the type is an integer.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    /// Reads whole floats as integers; true when one is too large to be read so.
    fn integral(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    *v = serde_json::Value::from(f as i64);
                }
                f.fract() == 0.0 && f.abs() >= 9.0e15
            }
            serde_json::Value::Array(items) => items.iter_mut().map(integral).fold(false, |a, b| a | b),
            serde_json::Value::Object(map) => map.values_mut().map(integral).fold(false, |a, b| a | b),
            _ => false,
        }
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::new(ErrorCode::InvalidJson, format!("{what}: {e}")))?;
    let huge = integral(&mut value);
    serde_json::from_value(value).map_err(|e| {
        // A whole number JSON Schema allows but no integer field can hold: out of range, not malformed.
        let code = if huge { ErrorCode::InvalidArguments } else { ErrorCode::InvalidJson };
        with_typed_value_code(Error::new(code, format!("{what}: {e}")))
    })
}

/// Error responses many operations share (`components/responses`).
pub mod responses {
    use crate::error::ErrorBody;

    #[derive(utoipa::ToResponse)]
    #[response(description = "No valid bearer token (`WWW-Authenticate: Bearer`).",
               example = json!({"error": {"code": "unauthorized", "message": "send Authorization: Bearer <token>"}}))]
    pub struct Unauthorized(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The token lacks the `train` scope; or, without tokens, the request is not from a local client (`origin_not_allowed`).",
               example = json!({"error": {"code": "forbidden", "message": "this endpoint needs the train scope"}}))]
    pub struct ForbiddenTrain(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The token lacks the `classify` or `train` scope; or, without tokens, the request is not from a local client (`origin_not_allowed`).",
               example = json!({"error": {"code": "forbidden", "message": "this endpoint needs the classify or train scope"}}))]
    pub struct ForbiddenRead(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The job runner is not ready.",
               example = json!({"error": {"code": "not_ready", "message": "the job runner is starting (see GET /readyz)"}}))]
    pub struct RunnerNotReady(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "No such job.",
               example = json!({"error": {"code": "not_found", "message": "no job 0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10"}}))]
    pub struct JobNotFound(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "A model or alias name is not a valid name.",
               example = json!({"error": {"code": "invalid_name", "message": "model name \"Bad Name\" is invalid"}}))]
    pub struct InvalidName(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The version is not a number.",
               example = json!({"error": {"code": "invalid_request", "message": "invalid path parameter: can not parse \"x\" to a u64"}}))]
    pub struct BadVersion(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "No such model or version.",
               example = json!({"error": {"code": "not_found", "message": "flowers102 version 9: not found"}}))]
    pub struct VersionNotFound(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The `spec` part is missing, a part is unknown, or a JSON body is malformed (`invalid_json`).",
               example = json!({"error": {"code": "invalid_json", "message": "the job spec: expected value at line 1 column 1"}}))]
    pub struct BadSubmission(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The token lacks the `train` scope, the licence terms were not acknowledged, or (without tokens) the request is not from a local client (`origin_not_allowed`).",
               example = json!({"error": {"code": "forbidden", "message": "this endpoint needs the train scope"}}))]
    pub struct ForbiddenSubmission(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The named dataset, weights or backbone is unknown.",
               example = json!({"error": {"code": "not_found", "message": "no dataset 9f… in the registry"}}))]
    pub struct SubmissionNotFound(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "A submission with the same Idempotency-Key is being handled (`idempotency_in_progress`); see Retry-After.",
               example = json!({"error": {"code": "idempotency_in_progress", "message": "a submission with Idempotency-Key \"k1\" is being handled; retry shortly"}}))]
    pub struct IdempotencyInProgress(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The archive exceeds `jobs.max_upload_bytes` or a dataset limit.",
               example = json!({"error": {"code": "dataset_too_large", "message": "the upload exceeds 4294967296 bytes (jobs.max_upload_bytes)"}}))]
    pub struct DatasetTooLarge(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The `spec` part is no job spec (`invalid_spec`), the spec asks for something impossible (`invalid_arguments`, `invalid_name`), the dataset fails validation (every problem listed), or the Idempotency-Key was used for another submission (`idempotency_key_reused`).",
               example = json!({"error": {"code": "dataset_invalid", "message": "the dataset has 2 problem(s): class \"tulip\" has no validation image; b/x.jpg: cannot decode the image"}}))]
    pub struct InvalidSubmission(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "Too many uploads or dataset checks in flight (`queue_full`), or the caller has too many jobs queued or running (`too_many_jobs`); see Retry-After.",
               example = json!({"error": {"code": "too_many_jobs", "message": "ci has 16 jobs queued or running; the limit is 16 (jobs.max_active_per_caller): wait for one to end, or cancel one"}}))]
    pub struct SubmissionsFull(#[allow(dead_code)] ErrorBody);

    #[derive(utoipa::ToResponse)]
    #[response(description = "The registry cannot be reached.",
               example = json!({"error": {"code": "registry_unavailable", "message": "reading a manifest: connection refused"}}))]
    pub struct RegistryUnavailable(#[allow(dead_code)] ErrorBody);
}

/// Raw bytes in a request or response body (an image, an ONNX file).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary, example = "(binary)")]
#[allow(dead_code)]
pub struct Binary(Vec<u8>);

/// State shared by every worker.
pub struct AppState {
    pub config: Config,
    pub metrics: observe::Metrics,
    pub readiness: health::Readiness,
    pub serving: crate::infer::serving::Serving,
    /// What `POST /finetune` may hold at once.
    pub uploads: jobs::Uploads,
    pub started: Instant,
    /// What this process does (`petal serve [--role api]`, `petal worker`).
    pub role: crate::config::Role,
    /// The job runner, once the registry is up.
    pub runner: std::sync::OnceLock<crate::jobs::runner::Runner>,
    /// The registry client, opened on first use and shared (one connection pool).
    registry: std::sync::OnceLock<crate::registry::Registry>,
    routes: RouteTable,
}

impl AppState {
    pub fn new(config: Config, role: crate::config::Role) -> Self {
        Self {
            role,
            metrics: observe::Metrics::new(),
            readiness: health::Readiness::starting(),
            serving: crate::infer::serving::Serving::new(&config.inference),
            uploads: jobs::Uploads::new(&config.jobs),
            started: Instant::now(),
            runner: std::sync::OnceLock::new(),
            registry: std::sync::OnceLock::new(),
            routes: RouteTable::from_openapi(&ApiDoc::openapi()),
            config,
        }
    }

    /// The configured registry, opened once.
    pub fn registry(&self) -> Result<crate::registry::Registry, Error> {
        if let Some(r) = self.registry.get() {
            return Ok(r.clone());
        }
        let opened = crate::registry::Registry::open(&self.config.registry)?;
        Ok(self.registry.get_or_init(|| opened).clone())
    }

    /// The job runner, or 503 while it starts.
    pub fn runner(&self) -> Result<&crate::jobs::runner::Runner, Error> {
        self.runner.get().ok_or_else(|| Error::new(ErrorCode::NotReady, "the job runner is starting (see GET /readyz)"))
    }
}

/// Every route of the API, declared once: `configure` mounts these handlers and `ApiDoc` documents
/// them (their `#[utoipa::path]` says each one's method, path and scope; `auth::required` is held
/// to those scopes by a test below).
macro_rules! api {
    ($($module:ident::$handler:ident),* $(,)?) => {
        /// Mounts every handler of the API.
        fn mount_routes(cfg: &mut web::ServiceConfig) {
            $(cfg.service($module::$handler);)*
        }

        #[derive(OpenApi)]
        #[openapi(
            info(
                title = "petal",
                description = "Turns a labelled image dataset into a served image classifier by transfer learning.\n\n\
                               Every error answers `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable `code` \
                               (RFC 9457 problem details, schema `Problem`, when `Accept` asks for `application/problem+json`); \
                               every response carries an `x-request-id` header.",
                license(name = "Apache-2.0", identifier = "Apache-2.0"),
            ),
            paths($($module::$handler),*),
            components(schemas(
                ErrorBody, ErrorDetail, ErrorCode, crate::error::Problem, health::Liveness, health::ReadinessReport, health::Check,
                classify::ClassifyResponse, classify::ClassifyJson, classify::Timings, crate::infer::engine::Prediction,
                crate::jobs::runner::JobEvent, Binary
            ), responses(
                responses::Unauthorized, responses::ForbiddenTrain, responses::ForbiddenRead, responses::RunnerNotReady,
                responses::JobNotFound, responses::InvalidName, responses::RegistryUnavailable, responses::BadVersion,
                responses::VersionNotFound, responses::BadSubmission, responses::ForbiddenSubmission,
                responses::SubmissionNotFound, responses::IdempotencyInProgress, responses::DatasetTooLarge,
                responses::InvalidSubmission, responses::SubmissionsFull
            )),
            servers((url = "http://localhost:8080", description = "`make run`: the embedded default, on loopback")),
            modifiers(&BearerAuth, &ClosedVariants, &OpenRoutes),
            tags(
                (name = "inference", description = "Classifying images with the served models."),
                (name = "training", description = "Fine-tuning jobs: upload a dataset, follow the job, get a published model."),
                (name = "models", description = "The model registry: versions, provenance, cards, ONNX files, aliases."),
                (name = "console", description = "The web console: a page for people, built on this API only."),
                (name = "operations", description = "Probes, metrics and the API description."),
                (name = "open-inference-protocol", description = "The Open Inference Protocol (KServe v2) REST API, as Triton, KServe, Seldon MLServer and OpenVINO Model Server speak it: `tritonclient` and the other clients of the field work unchanged. Errors answer `{\"error\": \"…\", \"code\"}`.")
            )
        )]
        pub struct ApiDoc;
    };
}

api!(
    console::console,
    console::console_asset,
    classify::classify,
    jobs::finetune,
    jobs::check_finetune,
    jobs::create_job,
    jobs::list_jobs,
    jobs::get_job,
    jobs::cancel_job,
    jobs::job_events,
    models::list_models,
    models::get_model,
    models::get_version,
    models::get_card,
    models::download_onnx,
    models::get_evaluation,
    models::get_curves,
    models::get_confusion,
    models::promote,
    models::alias_history,
    health::healthz,
    health::readyz,
    meta::metrics,
    meta::openapi,
    oip::server_metadata,
    oip::server_live,
    oip::server_ready,
    oip::get_model_metadata,
    oip::get_model_version_metadata,
    oip::model_ready,
    oip::model_version_ready,
    oip::infer,
    oip::infer_version,
);

/// The OpenAPI document petal publishes (`GET /openapi.json`, `petal openapi`): what the handlers
/// declare, shaped for client generators (`generators`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    generators::shape(&mut doc);
    doc
}

/// utoipa leaves the variants of tagged enums open; petal refuses unknown fields in them
/// (`deny_unknown_fields`), and says so.
struct ClosedVariants;

impl utoipa::Modify for ClosedVariants {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let Some(components) = openapi.components.as_mut() else { return };
        for name in ["Decay"] {
            if let Some(RefOr::T(Schema::OneOf(one))) = components.schemas.get_mut(name) {
                for item in &mut one.items {
                    if let RefOr::T(Schema::Object(obj)) = item {
                        obj.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                    }
                }
            }
        }
    }
}

/// Routes that need no token say so (`security: []`) instead of saying nothing, which generators
/// and linters read as "whatever the document's default is".
struct OpenRoutes;

impl utoipa::Modify for OpenRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
            {
                if op.security.is_none() {
                    op.security = Some(Vec::new());
                }
            }
        }
    }
}

/// The `bearer` security scheme: tokens from `auth.tokens`, each with scopes.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `auth.tokens`. Scopes: `classify` (POST /classify, reading models), `train` \
                         (jobs, reading models), `admin` (everything, and moving aliases). With no token configured \
                         the API is open and bound to loopback only.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Mounts every route, the Swagger UI and petal's handlers for malformed requests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().error_handler(|err, _| {
        let code = match &err {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => ErrorCode::PayloadTooLarge,
            actix_web::error::JsonPayloadError::ContentType => ErrorCode::UnsupportedMediaType,
            _ => ErrorCode::InvalidJson,
        };
        Error::new(code, err.to_string()).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        with_typed_value_code(Error::invalid_request(format!("invalid query string: {err}"))).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _| {
        with_typed_value_code(Error::invalid_request(format!("invalid path parameter: {err}"))).into()
    }))
    .configure(mount_routes)
    .service(web::redirect("/docs", "/docs/"))
    .service(SwaggerUi::new("/docs/{_:.*}").config(utoipa_swagger_ui::Config::new(["/openapi.json"])))
    .default_service(web::to(unmatched));
}

/// What `petal worker` serves: its health and metrics, nothing else.
pub fn configure_worker(cfg: &mut web::ServiceConfig) {
    cfg.service(health::healthz).service(health::readyz).service(meta::metrics).default_service(web::to(
        |req: HttpRequest| async move {
            Err::<HttpResponse, _>(Error::new(
                ErrorCode::RouteNotFound,
                format!(
                    "no endpoint at {} {}: a petal worker serves only /healthz, /readyz and /metrics",
                    req.method(),
                    req.path()
                ),
            ))
        },
    ));
}

/// 405 with `Allow` when the path exists under another method, else 404.
async fn unmatched(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let allowed = state.routes.methods_for(req.path());
    if allowed.is_empty() {
        Err(Error::new(ErrorCode::RouteNotFound, format!("no endpoint at {} {}", req.method(), req.path())))
    } else {
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        Err(Error::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {}; allowed: {allow}", req.method(), req.path()),
        )
        .with_header("allow", allow))
    }
}

/// The documented paths and their methods, for telling 404 from 405.
struct RouteTable {
    routes: Vec<(Vec<Segment>, Vec<Method>)>,
}

enum Segment {
    Literal(String),
    Param,
}

impl RouteTable {
    fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let segments = path
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| if s.starts_with('{') { Segment::Param } else { Segment::Literal(s.to_string()) })
                    .collect();
                let mut methods = Vec::new();
                for (method, op) in [
                    (Method::GET, &item.get),
                    (Method::PUT, &item.put),
                    (Method::POST, &item.post),
                    (Method::DELETE, &item.delete),
                    (Method::PATCH, &item.patch),
                ] {
                    if op.is_some() {
                        methods.push(method);
                    }
                }
                (segments, methods)
            })
            .collect();
        Self { routes }
    }

    fn methods_for(&self, path: &str) -> Vec<Method> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.routes
            .iter()
            .filter(|(segments, _)| {
                segments.len() == parts.len()
                    && segments.iter().zip(&parts).all(|(s, p)| match s {
                        Segment::Param => !p.is_empty(),
                        Segment::Literal(l) => l == p,
                    })
            })
            .flat_map(|(_, methods)| methods.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_tells_404_from_405() {
        let table = RouteTable::from_openapi(&ApiDoc::openapi());
        assert_eq!(table.methods_for("/healthz"), vec![Method::GET]);
        assert!(table.methods_for("/nope").is_empty());
        assert!(table.methods_for("/healthz/extra").is_empty());
    }

    #[test]
    fn every_operation_documents_every_response() {
        let doc = ApiDoc::openapi();
        assert!(doc.info.license.is_some());
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.put, &item.post, &item.delete, &item.patch].into_iter().flatten() {
                assert!(op.operation_id.is_some(), "{path} lacks an operation id");
                assert!(!op.responses.responses.is_empty(), "{path} documents no response");
            }
        }
    }

    /// Every `$ref` of the document names a component it defines (a generator would fail on one
    /// that does not).
    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let mut missing = Vec::new();
        for (i, _) in text.match_indices("\"$ref\":\"#/components/") {
            let rest = &text[i + "\"$ref\":\"#/components/".len()..];
            let target = &rest[..rest.find('"').unwrap()];
            let (kind, name) = target.split_once('/').unwrap();
            if doc["components"][kind].get(name).is_none() {
                missing.push(target.to_string());
            }
        }
        assert!(missing.is_empty(), "unresolved references: {missing:?}");
    }

    #[test]
    fn every_response_has_an_example() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    for (media_type, media) in response["content"].as_object().into_iter().flatten() {
                        let referenced = media["schema"]["$ref"]
                            .as_str()
                            .and_then(|r| r.rsplit('/').next())
                            .map(|name| &schemas[name]);
                        let has = media.get("example").is_some()
                            || media.get("examples").is_some()
                            || referenced.is_some_and(|s| s.get("example").is_some() || s.get("examples").is_some());
                        if !has {
                            missing.push(format!("{method} {path} {status} {media_type}"));
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "responses without an example: {missing:#?}");
    }
}

#[cfg(test)]
mod route_tests {
    use std::collections::BTreeSet;

    use actix_web::http::Method;

    use crate::config::Scope;

    /// The scopes `auth::required` asks of each documented operation are those its OpenAPI
    /// operation declares (`admin` holds every scope), and the open ones declare none.
    #[test]
    fn the_scope_table_agrees_with_the_documented_routes() {
        let doc = super::document();
        let mut checked = 0;
        for (template, item) in doc["paths"].as_object().unwrap() {
            let path = template
                .replace("{name}", "m")
                .replace("{model}", "m")
                .replace("{version}", "1")
                .replace("{alias}", "a")
                .replace("{id}", "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10")
                .replace("{asset}", "app.js");
            assert!(!path.contains('{'), "a path parameter of {template} has no sample value");
            for (method, op) in item.as_object().unwrap() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let documented: Option<BTreeSet<String>> =
                    op["security"].as_array().filter(|r| !r.is_empty()).map(|reqs| {
                        reqs.iter()
                            .flat_map(|r| {
                                r["bearer"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string())
                            })
                            .collect()
                    });
                let required: Option<BTreeSet<String>> = super::auth::required(&method, &path).map(|scopes| {
                    scopes
                        .iter()
                        .filter(|s| **s != Scope::Admin || scopes.len() == 1)
                        .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_string())
                        .collect()
                });
                assert_eq!(required, documented, "{method} {template}");
                checked += 1;
            }
        }
        assert!(checked >= 19, "{checked} operations");
    }
}
