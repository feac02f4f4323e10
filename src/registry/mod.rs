//! The model registry on `object_store`: a local folder (the embedded default), any
//! S3-compatible store, or memory (tests).
//!
//! Every key the registry uses is built in `layout`, which documents the whole layout; only this
//! module touches the object store.
//! Versions are immutable and numbered per model. A crash mid-publish leaves only an unreferenced
//! upload folder, which `gc` removes. Every artifact read is checked against the manifest's sha256
//! and size.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::{RegistryBackend, RegistryConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::hash::sha256_hex;
use crate::records::names::{self, ModelName};

pub mod alias;
pub mod datasets;
pub mod jobs;
mod layout;
pub mod manifest;
pub mod remote;

pub use alias::{AliasEntry, Promotion};
pub use manifest::{Artifact, Manifest, Provenance};

/// A registry on one object store.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// Job records read before (`jobs::JobCache`).
    job_cache: jobs::JobCache,
}

/// One artifact to publish.
pub struct NewArtifact {
    pub name: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl NewArtifact {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        let name = name.into();
        let media_type = media_type_for(&name).to_string();
        Self { name, bytes, media_type }
    }
}

fn media_type_for(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("onnx") => "application/onnx",
        Some("json") => "application/json",
        Some("md") => "text/markdown",
        Some("png") => "image/png",
        Some("safetensors") => "application/vnd.safetensors",
        _ => "application/octet-stream",
    }
}

/// Maps a storage failure to petal's errors.
pub(crate) fn store_error(what: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::new(ErrorCode::NotFound, format!("{what}: not found")),
        other => Error::new(ErrorCode::RegistryUnavailable, format!("{what}: {other}")),
    }
}

/// An S3 client for `bucket` with the registry's endpoint, region, credentials and retries.
fn s3_builder(s3: &crate::config::S3Config, bucket: &str) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&s3.region)
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_allow_http(s3.allow_http)
        .with_retry(object_store::RetryConfig {
            max_retries: s3.max_retries,
            retry_timeout: Duration::from_secs(s3.retry_timeout_s),
            ..Default::default()
        });
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    builder
}

/// Downloads `s3://bucket/key` (with the registry's S3 endpoint and credentials) to `to`, in
/// parts; refuses objects over `limit` bytes. Returns the sha256 and size.
pub async fn fetch_s3_object(
    s3: &crate::config::S3Config,
    bucket: &str,
    key: &str,
    to: &std::path::Path,
    limit: u64,
) -> Result<(String, u64)> {
    let what = format!("s3://{bucket}/{key}");
    let store = s3_builder(s3, bucket).build().map_err(|e| Error::invalid_request(format!("{what}: {e}")))?;
    let got = store.get(&ObjPath::from(key)).await.map_err(|e| store_error(&what, e))?;
    if got.meta.size > limit {
        return Err(Error::new(
            ErrorCode::DatasetTooLarge,
            format!("{what} has {} bytes; the limit is {limit} (jobs.max_upload_bytes)", got.meta.size),
        ));
    }
    download(got, to, limit, &what).await
}

/// Streams an object to the file `to` as it arrives, counting its sha256 and size; refuses more
/// than `limit` bytes.
pub(crate) async fn download(
    got: object_store::GetResult,
    to: &std::path::Path,
    limit: u64,
    what: &str,
) -> Result<(String, u64)> {
    let file = std::fs::File::create(to).map_err(|e| Error::io("creating", to, e))?;
    let too_large = || Error::new(ErrorCode::DatasetTooLarge, format!("{what} exceeds {limit} bytes"));
    crate::foundation::streams::to_file(got.into_stream(), &file, limit, too_large, |e| store_error(what, e)).await
}

impl Registry {
    /// Every object under `prefix` (`what` names the listing in an error).
    pub(crate) async fn list_all(&self, prefix: &ObjPath, what: &str) -> Result<Vec<object_store::ObjectMeta>> {
        self.store.list(Some(prefix)).try_collect().await.map_err(|e| store_error(what, e))
    }

    /// Opens the configured backend.
    pub fn open(config: &RegistryConfig) -> Result<Registry> {
        match config.backend {
            RegistryBackend::Local => {
                std::fs::create_dir_all(&config.path).map_err(|e| {
                    Error::new(ErrorCode::RegistryUnavailable, format!("cannot create {}: {e}", config.path.display()))
                })?;
                let root = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| Error::new(ErrorCode::RegistryUnavailable, format!("{}: {e}", root.display())))?;
                Ok(Registry { store: Arc::new(store), location: config.location(), job_cache: Default::default() })
            }
            RegistryBackend::Memory => Ok(Registry {
                store: Arc::new(InMemory::new()),
                location: config.location(),
                job_cache: Default::default(),
            }),
            RegistryBackend::S3 => {
                let s3 = &config.s3;
                let bucket = s3.bucket.as_deref().filter(|b| !b.is_empty()).ok_or_else(|| {
                    Error::invalid_config("registry.s3.bucket is required when registry.backend = \"s3\"")
                })?;
                let builder = s3_builder(s3, bucket);
                let store = builder.build().map_err(|e| Error::invalid_config(format!("registry.s3: {e}")))?;
                let prefix = s3.prefix.trim_matches('/').to_string();
                let location = config.location();
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, prefix.as_str()))
                };
                Ok(Registry { store, location, job_cache: Default::default() })
            }
        }
    }

    /// Where the registry is, for people (`file:///…`, `s3://bucket/prefix at endpoint`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Proves the store is reachable and writable: writes and deletes a probe object.
    pub async fn check(&self) -> Result<()> {
        let probe = layout::probe(&uuid::Uuid::new_v4().to_string());
        self.store.put(&probe, PutPayload::from_static(b"ok")).await.map_err(|e| store_error("write probe", e))?;
        self.store.delete(&probe).await.map_err(|e| store_error("delete probe", e))?;
        Ok(())
    }

    fn version_path(model: &str, version: u64) -> ObjPath {
        layout::version(model, version)
    }

    /// Publishes a new version: uploads every artifact, then creates the manifest under the next
    /// free version number. `after_artifact` runs after each upload (progress; fault injection in
    /// tests).
    pub async fn publish(
        &self,
        model: &ModelName,
        artifacts: Vec<NewArtifact>,
        provenance: Provenance,
        mut after_artifact: impl FnMut(&str),
    ) -> Result<Manifest> {
        if artifacts.is_empty() {
            return Err(Error::invalid_request("a version needs at least one artifact"));
        }
        let mut names = BTreeSet::new();
        for a in &artifacts {
            if !names.insert(a.name.as_str()) || a.name.contains('/') || a.name.starts_with('.') || a.name.is_empty() {
                return Err(Error::invalid_request(format!("artifact name {:?} is invalid or repeated", a.name)));
            }
        }
        let upload_id = uuid::Uuid::new_v4().to_string();
        let mut records = Vec::new();
        for a in artifacts {
            let path = layout::upload(model, &upload_id, &a.name);
            let record = Artifact {
                name: a.name.clone(),
                path: path.clone(),
                sha256: sha256_hex(&a.bytes),
                size: a.bytes.len() as u64,
                media_type: a.media_type.clone(),
            };
            self.put_large(&ObjPath::from(path), a.bytes)
                .await
                .map_err(|e| store_error(&format!("uploading {}", a.name), e))?;
            after_artifact(&a.name);
            records.push(record);
        }
        let mut version = self.versions(model).await?.last().copied().unwrap_or(0) + 1;
        loop {
            let manifest = Manifest {
                format: manifest::MANIFEST_FORMAT,
                model: model.to_string(),
                version,
                created_at: crate::foundation::clock::now_rfc3339(),
                upload_id: upload_id.clone(),
                artifacts: records.clone(),
                provenance: provenance.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
            let put = self
                .store
                .put_opts(&Self::version_path(model, version), bytes.into(), PutOptions::from(PutMode::Create))
                .await;
            match put {
                Ok(_) => {
                    // A store whose conditional create is not atomic could let two publishers
                    // both "create" one version: read back and make sure it is ours.
                    let stored = self.manifest(model, version).await?;
                    if stored.upload_id == upload_id {
                        return Ok(stored);
                    }
                    version += 1;
                }
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    version += 1
                }
                Err(e) => return Err(store_error("writing the manifest", e)),
            }
        }
    }

    /// Writes one object; large ones go up in parts.
    async fn put_large(&self, path: &ObjPath, bytes: Vec<u8>) -> object_store::Result<()> {
        const PART: usize = 16 << 20;
        if bytes.len() <= PART {
            self.store.put(path, bytes.into()).await.map(|_| ())
        } else {
            let mut upload = self.store.put_multipart(path).await?;
            for chunk in bytes.chunks(PART) {
                if let Err(e) = upload.put_part(PutPayload::from(chunk.to_vec())).await {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            }
            upload.complete().await.map(|_| ())
        }
    }

    /// Every model with at least one version.
    pub async fn models(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&layout::models()))
            .await
            .map_err(|e| store_error("listing models", e))?;
        let mut out = Vec::new();
        for prefix in listed.common_prefixes {
            if let Some(name) = layout::name_of(&prefix) {
                if !self.versions(&name).await?.is_empty() {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The published versions of a model, ascending.
    pub async fn versions(&self, model: &str) -> Result<Vec<u64>> {
        names::check("model", model)?;
        let prefix = layout::versions(model);
        let metas: Vec<_> = self.list_all(&prefix, "listing versions").await?;
        let mut v: Vec<u64> = metas.iter().filter_map(|m| layout::version_of(&m.location)).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The manifest of a version.
    pub async fn manifest(&self, model: &str, version: u64) -> Result<Manifest> {
        names::check("model", model)?;
        let got = self.store.get(&Self::version_path(model, version)).await;
        let bytes = match got {
            Ok(r) => r.bytes().await.map_err(|e| store_error("reading the manifest", e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(ErrorCode::NotFound, format!("model {model} has no version {version}")))
            }
            Err(e) => return Err(store_error("reading the manifest", e)),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorCode::IntegrityError,
                format!("the manifest of {model} version {version} is unreadable: {e}"),
            )
        })?;
        if m.model != model || m.version != version {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                format!("the manifest at {model} version {version} describes {} version {}", m.model, m.version),
            ));
        }
        Ok(m)
    }

    /// An artifact's bytes, verified against the manifest (size and sha256).
    pub async fn read_artifact(&self, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
        let a = manifest.artifact(name).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("{} version {} has no artifact {name}", manifest.model, manifest.version),
            )
        })?;
        let what = format!("{} version {} artifact {name}", manifest.model, manifest.version);
        let bytes = match self.store.get(&ObjPath::from(a.path.as_str())).await {
            Ok(r) => r.bytes().await.map_err(|e| store_error(&what, e))?.to_vec(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(ErrorCode::IntegrityError, format!("{what} is missing from the store")))
            }
            Err(e) => return Err(store_error(&what, e)),
        };
        if bytes.len() as u64 != a.size {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                format!("{what} has {} bytes, the manifest says {}: truncated or replaced", bytes.len(), a.size),
            ));
        }
        let sha = sha256_hex(&bytes);
        if sha != a.sha256 {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                format!("{what} has sha256 {sha}, the manifest says {}: the bytes were modified", a.sha256),
            ));
        }
        Ok(bytes)
    }

    /// Verifies every artifact of a version; the error names the first bad one.
    pub async fn verify(&self, model: &str, version: u64) -> Result<Manifest> {
        let m = self.manifest(model, version).await?;
        for a in &m.artifacts {
            self.read_artifact(&m, &a.name).await?;
        }
        Ok(m)
    }

    /// Removes upload folders that no manifest references and that are older than `grace`
    /// (younger ones may belong to a publish in progress). Returns the removed object paths.
    pub async fn gc(&self, grace: Duration, dry_run: bool) -> Result<Vec<String>> {
        let now = crate::foundation::clock::unix_now();
        let mut removed = Vec::new();
        let listed = self
            .store
            .list_with_delimiter(Some(&layout::models()))
            .await
            .map_err(|e| store_error("listing models", e))?;
        for prefix in listed.common_prefixes {
            let Some(model) = layout::name_of(&prefix) else { continue };
            let model = model.as_str();
            let mut referenced = BTreeSet::new();
            for v in self.versions(model).await? {
                referenced.insert(self.manifest(model, v).await?.upload_id);
            }
            let uploads = layout::uploads(model);
            let metas: Vec<_> = self.list_all(&uploads, "listing uploads").await?;
            let mut by_upload: BTreeMap<String, Vec<object_store::ObjectMeta>> = BTreeMap::new();
            for m in metas {
                if let Some(id) = layout::upload_id_of(&m.location) {
                    by_upload.entry(id).or_default().push(m);
                }
            }
            for (id, objects) in by_upload {
                let newest = objects.iter().map(|m| m.last_modified.timestamp()).max().unwrap_or(0);
                if referenced.contains(&id) || now - newest < grace.as_secs() as i64 {
                    continue;
                }
                for o in objects {
                    if !dry_run {
                        self.store.delete(&o.location).await.map_err(|e| store_error("deleting an orphan", e))?;
                    }
                    removed.push(o.location.to_string());
                }
            }
        }
        Ok(removed)
    }

    /// Copies every version (and alias history) of `seed` that this registry lacks. Used to seed
    /// the embedded default registry from the repository's `registry/` folder.
    pub async fn seed_from(&self, seed: &Registry) -> Result<Vec<(String, u64)>> {
        let mut copied = Vec::new();
        for model in seed.models().await? {
            let mine: BTreeSet<u64> = self.versions(&model).await?.into_iter().collect();
            for v in seed.versions(&model).await? {
                if mine.contains(&v) {
                    continue;
                }
                let m = seed.verify(&model, v).await?;
                for a in &m.artifacts {
                    let bytes = seed.read_artifact(&m, &a.name).await?;
                    self.put_large(&ObjPath::from(a.path.as_str()), bytes)
                        .await
                        .map_err(|e| store_error("seeding", e))?;
                }
                let bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
                match self
                    .store
                    .put_opts(&Self::version_path(&model, v), bytes.into(), PutOptions::from(PutMode::Create))
                    .await
                {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(store_error("seeding a manifest", e)),
                }
                copied.push((model.clone(), v));
            }
            for alias in seed.aliases(&model).await? {
                if self.history(&model, &alias).await?.is_empty() {
                    for entry in seed.history(&model, &alias).await? {
                        self.put_alias_entry(&entry).await?;
                    }
                }
            }
        }
        Ok(copied)
    }
}

impl Registry {
    /// Seeds this registry from `config.seed` (the repository's `registry/` folder, holding the
    /// bundled model) when that folder holds versions or aliases this registry lacks; returns
    /// what was copied. Nothing happens when the seed is unset, has no models, or is this
    /// registry's own folder.
    pub async fn seed_from_config(&self, config: &RegistryConfig) -> Result<Vec<(String, u64)>> {
        let seed = &config.seed;
        if seed.as_os_str().is_empty() || !seed.join("models").is_dir() {
            return Ok(Vec::new());
        }
        let same = |a: &std::path::Path, b: &std::path::Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if config.backend == RegistryBackend::Local && same(seed, &config.path) {
            return Ok(Vec::new());
        }
        let seed_config = RegistryConfig { backend: RegistryBackend::Local, path: seed.clone(), ..Default::default() };
        self.seed_from(&Registry::open(&seed_config)?).await
    }
}

/// `name`, `name:3` or `name@alias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Latest(String),
    Version(String, u64),
    Alias(String, String),
}

impl std::str::FromStr for ModelRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let r = if let Some((m, a)) = s.split_once('@') {
            names::check("alias", a)?;
            ModelRef::Alias(m.into(), a.into())
        } else if let Some((m, v)) = s.split_once(':') {
            let v = v.parse().map_err(|_| Error::invalid_request(format!("{v:?} is not a version number")))?;
            ModelRef::Version(m.into(), v)
        } else {
            ModelRef::Latest(s.into())
        };
        names::check("model", r.model())?;
        Ok(r)
    }
}

impl ModelRef {
    pub fn model(&self) -> &str {
        match self {
            ModelRef::Latest(m) | ModelRef::Version(m, _) | ModelRef::Alias(m, _) => m,
        }
    }
}

impl Registry {
    /// The version a reference points at.
    pub async fn resolve(&self, r: &ModelRef) -> Result<u64> {
        match r {
            ModelRef::Version(_, v) => Ok(*v),
            ModelRef::Latest(m) => self
                .versions(m)
                .await?
                .last()
                .copied()
                .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("model {m} has no versions"))),
            ModelRef::Alias(m, a) => self
                .current(m, a)
                .await?
                .map(|e| e.version)
                .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("model {m} has no alias {a}"))),
        }
    }
}
