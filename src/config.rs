//! The one typed configuration of petal, layered (later layers win):
//! built-in defaults < TOML file (`--config FILE` or `PETAL_CONFIG`) < environment
//! (`PETAL__SECTION__KEY`, e.g. `PETAL__SERVER__PORT=9000`) < command-line flags.
//! It is validated once at start; every message names the offending key and where it came from.
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Prefix of the environment variables that configure petal; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "PETAL__";
/// Environment variable naming the TOML file, when `--config` is not given.
pub const ENV_CONFIG_FILE: &str = "PETAL_CONFIG";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub onnxruntime: OnnxRuntimeConfig,
    pub weights: WeightsConfig,
    pub inference: InferenceConfig,
    pub jobs: JobsConfig,
    pub auth: AuthConfig,
}

/// Fine-tuning jobs (`POST /finetune`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs trained at once by this process. One per device: libtorch's generator and CPU thread
    /// pool are per process, so two jobs on one device slow each other and lose bit-for-bit
    /// repeatability.
    pub workers: usize,
    /// Where uploads are staged and jobs keep their working files (removed when done).
    pub work_dir: PathBuf,
    /// Largest dataset archive `POST /finetune` accepts.
    pub max_upload_bytes: u64,
    /// S3 buckets a job spec's `dataset.uri` may read from, with the registry's S3 endpoint and
    /// credentials. Empty: none (a spec cannot make petal read buckets it was not told about).
    pub dataset_buckets: Vec<String>,
    /// `petal worker`: seconds without a heartbeat after which another worker takes a job over.
    pub lease_ttl_s: f64,
    /// `petal worker`: seconds between heartbeats of a running job (also how often its record,
    /// progress included, reaches the registry, and how soon a cancel request is seen).
    pub heartbeat_s: f64,
    /// `petal worker`: milliseconds between looks at the registry's queue when idle; also how
    /// often an API replica re-reads a job it streams events of.
    pub poll_ms: u64,
    /// `petal worker`: the name written into claims and job records. Empty: `HOST-PID`.
    pub worker_name: String,
    /// `petal worker`: attempts a job gets. When that many ended without the job ending (their
    /// workers died, or lost their leases), the next worker fails it with `job_interrupted`
    /// instead of running it again: a job that kills its workers does not go round forever.
    pub max_attempts: u32,
    /// Limits on each image of a dataset, checked from its header before it is decoded, at the
    /// upload's check and again in training (`jobs.decode.max_pixels`, `.max_side`,
    /// `.max_aspect_ratio`).
    pub decode: DecodeLimits,
    /// Most classes a dataset may have.
    pub max_classes: usize,
    /// Jobs one caller (a token's holder; everyone together without tokens) may have queued or
    /// running at once; beyond that `POST /finetune` answers 429.
    pub max_active_per_caller: usize,
    /// How long finished jobs and unused datasets are kept (`petal registry gc`, and a periodic
    /// task of the server).
    pub retention: RetentionConfig,
    /// `POST /finetune` requests reading an upload or checking a dataset at once; more get 429
    /// with Retry-After before their body is read.
    pub max_concurrent_uploads: usize,
    /// Bytes of uploads staged on disk at once (each admitted by its Content-Length, or
    /// `max_upload_bytes` when it sends none), before its body is read.
    pub max_staged_bytes: u64,
    /// Datasets checked at once (each decodes its images on every core).
    pub max_concurrent_checks: usize,
    /// Uncompressed bytes of a dataset's files one check reads (a check streams them, holding a
    /// few images at a time: this bounds its time and disk reads); a larger dataset is refused with
    /// 413.
    pub max_check_bytes: u64,
    /// Largest training checkpoint a job keeps in the registry (`checkpoints/{job}/…`, two per
    /// backbone: the last and the best), estimated from the backbone before training; a backbone
    /// whose checkpoints would be larger trains without (the job says so in its warnings). 0: no
    /// checkpoints — a job that is taken over or restarted starts from the beginning.
    pub checkpoint_max_bytes: u64,
    /// Seconds a `POST /finetune` Idempotency-Key is remembered: a retry with the same key within
    /// that time gets the job the first request created (then `petal registry gc` and the
    /// server's retention task remove the record).
    pub idempotency_ttl_s: u64,
    /// Bytes of freed tensors (of 256 KiB and more) training keeps to reuse in the next step
    /// instead of returning them to the kernel and faulting them in again. Never more held plus
    /// in use than 1.5× what the run itself had in use at once; everything is freed when the
    /// run ends.
    /// 0: off (libtorch's default allocator behaviour).
    pub tensor_cache_bytes: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            work_dir: PathBuf::from("var/work"),
            max_upload_bytes: 4 << 30,
            dataset_buckets: Vec::new(),
            lease_ttl_s: 60.0,
            heartbeat_s: 10.0,
            poll_ms: 2000,
            worker_name: String::new(),
            max_attempts: 3,
            decode: DecodeLimits::default(),
            max_classes: DEFAULT_MAX_CLASSES,
            max_active_per_caller: 16,
            retention: Default::default(),
            max_concurrent_uploads: 4,
            max_staged_bytes: 16 << 30,
            max_concurrent_checks: 1,
            max_check_bytes: 16 << 30,
            checkpoint_max_bytes: 1 << 30,
            idempotency_ttl_s: 86_400,
            tensor_cache_bytes: 8 << 30,
        }
    }
}

impl JobsConfig {
    /// `worker_name`, or `HOST-PID`.
    pub fn worker_name(&self) -> String {
        if !self.worker_name.trim().is_empty() {
            return self.worker_name.trim().to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".into());
        format!("{host}-{}", std::process::id())
    }
}

/// The default of `jobs.max_classes` (ImageNet-21k has 21,841).
pub const DEFAULT_MAX_CLASSES: usize = 25_000;

/// Most images in one `POST /classify` request.
pub const MAX_IMAGES_PER_REQUEST: usize = 64;

/// How long finished work is kept (`jobs.retention`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds a finished job's record is kept after it ended; 0 keeps them forever.
    pub finished_jobs_s: u64,
    /// Seconds an uploaded dataset no model version was trained on is kept; 0 keeps them forever.
    pub unreferenced_datasets_s: u64,
    /// Records younger than this are never removed (a publish or submission may be in progress).
    pub grace_s: u64,
    /// How often `petal serve` (roles `all` and `api`) applies the policy; 0 never (then only
    /// `petal registry gc` does).
    pub interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { finished_jobs_s: 30 * 86_400, unreferenced_datasets_s: 30 * 86_400, grace_s: 3600, interval_s: 3600 }
    }
}

/// Bearer tokens and what each may do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// With none, the API is open and `petal serve` binds to loopback only.
    pub tokens: Vec<ApiToken>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it (logs name the holder, never the token).
    pub name: String,
    #[serde(skip_serializing)]
    pub token: String,
    pub scopes: Vec<Scope>,
}

/// Never prints the token.
impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /classify`, and reading models.
    Classify,
    /// Fine-tuning jobs: submit, follow, cancel.
    Train,
    /// Moving aliases; implies every other scope.
    Admin,
}

/// The model bundled in the repository's `registry/` (seeded into the embedded registry at
/// start) and served by default: 102 classes of flowers.
pub const BUNDLED_MODEL: &str = "flowers102@production";

/// What `petal serve` serves, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Models loaded at start (`name`, `name:version` or `name@alias`); the first is the default
    /// of `POST /classify`. Each must load and warm up before the server is ready.
    pub models: Vec<String>,
    /// Provider, batching and decode limits (`inference.engine.*`).
    pub engine: EngineConfig,
    /// Largest request body of `POST /classify`.
    pub max_body_bytes: usize,
    /// How often the registry is checked for an alias (or a latest version) that moved; the new
    /// version is loaded and warmed up, then swapped in while requests in flight finish on the
    /// old one. 0 disables.
    pub reload_poll_ms: u64,
    /// Bytes of `POST /classify` bodies read at once, server-wide: a request is admitted by its
    /// `Content-Length` (or `max_body_bytes` when it sends none) before its body is read, else
    /// refused with 429.
    pub max_inflight_body_bytes: u64,
    /// Pixels decoded at once, server-wide: each image waits for its pixel count (from its
    /// header) before it is decoded, so decoding memory stays bounded however many requests are
    /// admitted. At least `engine.decode.max_pixels`.
    pub max_decoding_pixels: u64,
    /// Versions loaded on demand (a request naming a version or alias that is not served) kept
    /// loaded at once, least recently used dropped first.
    pub max_on_demand: usize,
    /// On-demand loads at once; a request for another version while they run gets 503 with
    /// Retry-After. Requests for a version being loaded wait for that one load.
    pub max_concurrent_loads: usize,
    /// Largest ONNX file loaded on demand (checked from its manifest before it is read).
    pub max_model_bytes: u64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            models: vec![BUNDLED_MODEL.to_string()],
            engine: Default::default(),
            max_body_bytes: 20 << 20,
            reload_poll_ms: 10_000,
            max_inflight_body_bytes: 256 << 20,
            max_decoding_pixels: 80_000_000,
            max_on_demand: 4,
            max_concurrent_loads: 1,
            max_model_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind. The default serves loopback only.
    pub host: String,
    /// TCP port; 0 picks a free one (the chosen address is logged).
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_timeout_s: u64,
    /// Without tokens (`auth.tokens` empty) the API answers only requests whose `Host` is a
    /// loopback name or address (`localhost`, `127.0.0.1`, `[::1]`) or one of these names: a web
    /// page reaching petal through DNS rebinding is refused.
    pub allowed_hosts: Vec<String>,
    /// Without tokens, browser requests from another origin (a web page the user opened) are
    /// refused (`Origin`, `Sec-Fetch-Site`), except from these origins (`http://host:port`).
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            shutdown_timeout_s: 30,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `petal=debug,actix_web=info`, … (`RUST_LOG` wins when set).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info,ort=warn".into(), format: LogFormat::Auto }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// A local folder (`registry.path`): the embedded default.
    #[default]
    Local,
    /// An S3-compatible bucket (`registry.s3.*`).
    S3,
    /// In memory, gone at exit (tests).
    Memory,
}

/// What this deployment uses models for; decides whether non-commercial terms block promotion.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    #[default]
    Research,
    Commercial,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub backend: RegistryBackend,
    /// The local registry folder (backend `local`).
    pub path: PathBuf,
    /// A folder in the registry layout whose versions and aliases are copied in at start when
    /// missing (the repository's `registry/`, holding the bundled model); empty to disable.
    pub seed: PathBuf,
    /// `research` or `commercial`: under `commercial`, promoting a model whose lineage carries
    /// non-commercial terms needs an explicit acknowledgement.
    pub usage: Usage,
    pub s3: S3Config,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            backend: RegistryBackend::Local,
            path: PathBuf::from("var/registry"),
            seed: PathBuf::from("registry"),
            usage: Usage::Research,
            s3: S3Config::default(),
        }
    }
}

impl RegistryConfig {
    /// Where the registry is, for people: `file:///abs/path`, `memory://`, or
    /// `s3://bucket/prefix at endpoint`.
    pub fn location(&self) -> String {
        match self.backend {
            RegistryBackend::Local => {
                format!("file://{}", std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone()).display())
            }
            RegistryBackend::Memory => "memory://".into(),
            RegistryBackend::S3 => format!(
                "s3://{}/{}{}",
                self.s3.bucket.as_deref().unwrap_or("?"),
                self.s3.prefix.trim_matches('/'),
                self.s3.endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default()
            ),
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000` for MinIO or s3s-fs; unset for AWS.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub prefix: String,
    pub region: String,
    /// Credentials; when unset, the usual AWS_* environment variables are used.
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Allow plain http endpoints (private networks, tests).
    pub allow_http: bool,
    pub max_retries: usize,
    pub retry_timeout_s: u64,
}

/// Never prints the secret key.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout_s", &self.retry_timeout_s)
            .finish()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: None,
            prefix: String::new(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            max_retries: 3,
            retry_timeout_s: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsConfig {
    /// Where fetched and imported pretrained weights are kept.
    pub cache: PathBuf,
    /// A folder of weight files imported into the cache (checked and proven to load) the first
    /// time a job needs them: `scripts/setup.sh` downloads MobileNetV2's ImageNet weights into
    /// `tools/weights`, so the default job trains on a fresh clone with no further step. Empty:
    /// none.
    pub seed: PathBuf,
    /// A base URL to download catalog files from instead of their canonical URLs
    /// (`{mirror}/{file_name}`), e.g. an internal mirror.
    pub mirror: Option<String>,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        Self { cache: PathBuf::from("var/weights"), seed: PathBuf::from("tools/weights"), mirror: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`; when unset, `ORT_DYLIB_PATH` is used.
    pub library: Option<PathBuf>,
    /// Threads inside one operator. 0: one per CPU this process may use where that is fewer than
    /// the machine's (a container's CPU quota or an affinity mask, which onnxruntime does not see),
    /// else onnxruntime's choice (one per physical core).
    pub intra_threads: usize,
    /// Whether onnxruntime's intra-op threads spin while they wait for work (onnxruntime's own
    /// default, and petal's). On a node of its own, spinning answered 40 % more images/s here;
    /// where other processes share the cores, turn it off: the spinners then steal their time,
    /// and off gave 1.8x the images/s and half the p99 (BENCHMARKS.md).
    pub spinning: bool,
}

impl Default for OnnxRuntimeConfig {
    fn default() -> Self {
        Self { library: None, intra_threads: 0, spinning: true }
    }
}

impl OnnxRuntimeConfig {
    /// The library to load: the configured path, else `ORT_DYLIB_PATH`.
    pub fn library_path(&self) -> Option<PathBuf> {
        self.library.clone().or_else(|| std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from))
    }
}

/// Values given as command-line flags; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub workers: Option<usize>,
    pub registry_path: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub weights_cache: Option<PathBuf>,
    pub weights_mirror: Option<String>,
}

impl Overrides {
    fn to_value(&self) -> serde_json::Value {
        let mut root = serde_json::Map::new();
        let mut set = |section: &str, key: &str, value: serde_json::Value| {
            root.entry(section)
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .expect("sections are objects")
                .insert(key.into(), value);
        };
        if let Some(v) = &self.host {
            set("server", "host", v.clone().into());
        }
        if let Some(v) = self.port {
            set("server", "port", v.into());
        }
        if let Some(v) = self.workers {
            set("server", "workers", v.into());
        }
        if let Some(v) = &self.registry_path {
            set("registry", "path", v.to_string_lossy().into_owned().into());
        }
        if let Some(v) = &self.log_level {
            set("log", "level", v.clone().into());
        }
        if let Some(v) = self.log_format {
            set("log", "format", serde_json::to_value(v).expect("enum serializes"));
        }
        if let Some(v) = &self.weights_cache {
            set("weights", "cache", v.to_string_lossy().into_owned().into());
        }
        if let Some(v) = &self.weights_mirror {
            set("weights", "mirror", v.clone().into());
        }
        serde_json::Value::Object(root)
    }
}

impl Config {
    /// Loads the layers in order and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(ENV_CONFIG_FILE).filter(|v| !v.is_empty()).map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            if !file.is_file() {
                return Err(Error::invalid_config(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment =
            figment.merge(Env::prefixed(ENV_PREFIX).split("__")).merge(Serialized::defaults(overrides.to_value()));
        let config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; each message names the key.
    ///
    /// Long on purpose: a flat list of independent checks, one per key, all reported at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.server.host.trim().is_empty() {
            problems.push("server.host: must not be empty".to_string());
        } else if format!("{}:{}", self.server.host, self.server.port).parse::<std::net::SocketAddr>().is_err()
            && !self.server.host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            problems.push(format!("server.host: {:?} is neither an IP address nor a host name", self.server.host));
        }
        if self.server.workers > 1024 {
            problems.push(format!("server.workers: {} is more than 1024", self.server.workers));
        }
        if self.server.shutdown_timeout_s > 3600 {
            problems.push(format!("server.shutdown_timeout_s: {} is more than 3600", self.server.shutdown_timeout_s));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {:?} is not a valid filter ({e})", self.log.level));
        }
        if self.registry.backend == RegistryBackend::Local && self.registry.path.as_os_str().is_empty() {
            problems.push("registry.path: must not be empty".to_string());
        }
        if self.registry.backend == RegistryBackend::S3 && self.registry.s3.bucket.as_deref().unwrap_or("").is_empty() {
            problems.push("registry.s3.bucket: required when registry.backend is \"s3\"".to_string());
        }
        if let Some(e) = &self.registry.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                problems.push(format!("registry.s3.endpoint: {e:?} is not an http(s) URL"));
            } else if e.starts_with("http://") && !self.registry.s3.allow_http {
                problems.push(format!("registry.s3.endpoint: {e:?} is plain http; set registry.s3.allow_http = true"));
            }
        }
        if self.weights.cache.as_os_str().is_empty() {
            problems.push("weights.cache: must not be empty".to_string());
        }
        if let Some(m) = &self.weights.mirror {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                problems.push(format!("weights.mirror: {m:?} is not an http(s) URL"));
            }
        }
        if !(1..=64).contains(&self.jobs.workers) {
            problems.push(format!("jobs.workers: {} is not between 1 and 64", self.jobs.workers));
        }
        let (ttl, beat) = (self.jobs.lease_ttl_s, self.jobs.heartbeat_s);
        if !(beat.is_finite() && (0.05..=3600.0).contains(&beat)) {
            problems.push(format!("jobs.heartbeat_s: {beat} is not between 0.05 and 3600"));
        } else if !(ttl.is_finite() && ttl >= 2.0 * beat && ttl <= 86_400.0) {
            problems.push(format!(
                "jobs.lease_ttl_s: {ttl} must be at least twice jobs.heartbeat_s ({beat}) and at most 86400"
            ));
        }
        if !(1..=100).contains(&self.jobs.max_attempts) {
            problems.push(format!("jobs.max_attempts: {} is not between 1 and 100", self.jobs.max_attempts));
        }
        if !(10..=3_600_000).contains(&self.jobs.poll_ms) {
            problems.push(format!("jobs.poll_ms: {} is not between 10 and 3600000", self.jobs.poll_ms));
        }
        if self.jobs.work_dir.as_os_str().is_empty() {
            problems.push("jobs.work_dir: must not be empty".to_string());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                problems.push(format!("auth.tokens[{i}] ({}): a token needs at least 16 characters", t.name));
            }
            if t.scopes.is_empty() {
                problems.push(format!("auth.tokens[{i}] ({}): give at least one scope", t.name));
            }
            if !names.insert(t.name.as_str()) {
                problems.push(format!("auth.tokens[{i}]: the name {:?} is used twice", t.name));
            }
        }
        let inf = &self.inference;
        if inf.max_inflight_body_bytes < inf.max_body_bytes as u64 {
            problems.push(format!(
                "inference.max_inflight_body_bytes: {} is less than inference.max_body_bytes ({})",
                inf.max_inflight_body_bytes, inf.max_body_bytes
            ));
        }
        if inf.max_decoding_pixels < inf.engine.decode.max_pixels {
            problems.push(format!(
                "inference.max_decoding_pixels: {} is less than inference.engine.decode.max_pixels ({})",
                inf.max_decoding_pixels, inf.engine.decode.max_pixels
            ));
        }
        let gap = inf.engine.jpeg_reducing_gap;
        if !(gap == 0.0 || (1.0..=64.0).contains(&gap)) {
            problems.push(format!("inference.engine.jpeg_reducing_gap: {gap} is neither 0 (off) nor between 1 and 64"));
        }
        if inf.max_concurrent_loads == 0 || inf.engine.max_admitted_images < MAX_IMAGES_PER_REQUEST {
            problems.push(format!(
                "inference.max_concurrent_loads must be at least 1 and inference.engine.max_admitted_images at least {}",
                MAX_IMAGES_PER_REQUEST
            ));
        }
        if self.jobs.max_staged_bytes < self.jobs.max_upload_bytes
            || self.jobs.max_concurrent_uploads == 0
            || self.jobs.max_concurrent_checks == 0
            || self.jobs.max_active_per_caller == 0
        {
            problems.push(
                "jobs: max_staged_bytes must be at least max_upload_bytes, and max_concurrent_uploads, \
                 max_concurrent_checks and max_active_per_caller at least 1"
                    .to_string(),
            );
        }
        if self.jobs.max_classes < 2 {
            problems.push("jobs.max_classes: a dataset needs at least 2 classes".to_string());
        }
        if self.onnxruntime.intra_threads > 1024 {
            problems.push(format!("onnxruntime.intra_threads: {} is more than 1024", self.onnxruntime.intra_threads));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_config(problems.join("; ")))
        }
    }
}

/// Turns figment's errors into one message naming every bad key and its source.
fn describe(errors: figment::Error) -> Error {
    let messages: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {}: {source})", m.name),
                    None if m.name.contains("environment") => {
                        format!(" (from environment variable {ENV_PREFIX}{})", e.path.join("__").to_uppercase())
                    }
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}: {}{source}", e.kind)
        })
        .collect();
    Error::invalid_config(messages.join("; "))
}

/// What a process does with jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Accepts and trains jobs in one process (`petal serve`, the embedded default).
    #[default]
    All,
    /// Accepts jobs into the registry's shared queue; trains none (`petal serve --role api`).
    Api,
    /// Trains jobs of the shared queue under leases; accepts none (`petal worker`, not a
    /// `--role` of `petal serve`).
    #[value(skip)]
    Worker,
}

/// Which execution provider to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderMode {
    /// CUDA when it loads, else CPU with a warning.
    #[default]
    Auto,
    Cuda,
    Cpu,
}

impl std::str::FromStr for ProviderMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ProviderMode::Auto),
            "cuda" => Ok(ProviderMode::Cuda),
            "cpu" => Ok(ProviderMode::Cpu),
            _ => Err(format!("unknown provider {s:?}: auto, cuda or cpu")),
        }
    }
}

/// How the inference engine serves each model (`inference.engine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub provider: ProviderMode,
    /// Images per session call; 1 turns batching off; 0 (the default) picks by provider: 32 on
    /// CUDA, 1 on CPU, where onnxruntime is already most efficient per image at batch 1 (measured
    /// in BENCHMARKS.md).
    pub max_batch: usize,
    /// How long the first request of a batch waits for company. 0: never wait — a batch is what
    /// queued while the previous one ran, so an idle server answers at once and a busy one batches.
    pub max_delay_ms: u64,
    /// Requests that may wait in the queue; beyond that requests are refused with 429. Through
    /// HTTP it bounds the requests admitted at once (decoding, waiting or running), checked
    /// before their images are decoded.
    pub queue_capacity: usize,
    /// Images admitted at once per model through HTTP (decoding, waiting or running): a request
    /// is admitted by what it costs, its number of images, checked before any is decoded. Each
    /// admitted image may hold one input tensor (3 × crop² floats) in the queue.
    pub max_admitted_images: usize,
    /// A JPEG much larger than the model's resize is shrunk while it is decoded (libjpeg-turbo's
    /// DCT-domain scaling by 1/2, 1/4 or 1/8) as long as its shorter side stays at least this many
    /// times the eval transform's `resize` — Pillow's `reducing_gap`, whose 2.0 it documents as
    /// indistinguishable from a full-size resize in most cases. A 12-megapixel photo decodes in a
    /// fraction of the time. 0 decodes every JPEG at full size, as the reference pipeline does.
    pub jpeg_reducing_gap: f64,
    pub decode: DecodeLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            provider: ProviderMode::Auto,
            max_batch: 0,
            max_delay_ms: 0,
            queue_capacity: 256,
            max_admitted_images: 512,
            jpeg_reducing_gap: 2.0,
            decode: DecodeLimits::default(),
        }
    }
}

/// Limits on what `decode` accepts. Together they bound what one image may cost: its decoded
/// pixels (`max_pixels` × 3 bytes and the decoder's own buffers) and, through the aspect ratio, how
/// far the eval resize may stretch it (the transforms themselves only compute the crop they keep).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Pixels (width × height) of one image.
    pub max_pixels: u64,
    /// Width or height of one image.
    pub max_side: u32,
    /// Longer side over shorter side; a 20,000 × 1 strip is no photo. 0 turns the check off.
    pub max_aspect_ratio: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 40_000_000, max_side: 20_000, max_aspect_ratio: 32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8080);
    }

    #[test]
    fn validation_names_each_bad_key() {
        let mut c = Config::default();
        c.server.workers = 5000;
        c.log.level = "info,=[".into();
        c.inference.engine.jpeg_reducing_gap = 0.5;
        let msg = c.validate().unwrap_err().message;
        assert!(msg.contains("server.workers"), "{msg}");
        assert!(msg.contains("inference.engine.jpeg_reducing_gap: 0.5"), "{msg}");
        assert!(msg.contains("log.level"), "{msg}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let mut c = Config::default();
        c.auth.tokens.push(ApiToken {
            name: "ci".into(),
            token: "s3cr3t-token-0123456789".into(),
            scopes: vec![Scope::Admin],
        });
        c.registry.s3.secret_access_key = Some("AWS-SECRET-abcdef".into());
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("s3cr3t-token") && !shown.contains("AWS-SECRET"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("\"ci\""), "{shown}");
    }

    #[test]
    fn flags_override_only_what_they_set() {
        let o = Overrides { port: Some(9), ..Default::default() };
        assert_eq!(o.to_value(), serde_json::json!({"server": {"port": 9}}));
    }
}
