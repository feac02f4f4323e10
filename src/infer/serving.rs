//! The models a server is serving, by name; versions loaded on demand (one load per version, a
//! bounded number at once); and the server-wide budgets `/classify` admits requests by.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use crate::config::InferenceConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::budget::{Budget, Share};
use crate::infer::engine::ModelHandle;

/// Requests for a version being loaded queue on its gate.
type Gate = Arc<tokio::sync::Mutex<()>>;

pub struct Serving {
    configured: usize,
    loaded: RwLock<Vec<ModelHandle>>,
    /// Versions loaded on demand (a request naming a version or alias not served), most recently
    /// used last, at most `max_on_demand` of them.
    on_demand: std::sync::Mutex<Vec<ModelHandle>>,
    max_on_demand: usize,
    /// One gate per version being loaded on demand: requests for it wait for that one load.
    loading: std::sync::Mutex<HashMap<(String, u64), Gate>>,
    load_slots: Semaphore,
    /// Bytes of request bodies being read or held, server-wide.
    body_bytes: Budget,
    /// Pixels being decoded, server-wide.
    decoding_pixels: Budget,
}

impl Serving {
    pub fn new(config: &InferenceConfig) -> Self {
        Self {
            configured: config.models.len(),
            loaded: RwLock::new(Vec::new()),
            on_demand: Default::default(),
            max_on_demand: config.max_on_demand,
            loading: Default::default(),
            load_slots: Semaphore::new(config.max_concurrent_loads.max(1)),
            body_bytes: Budget::new(config.max_inflight_body_bytes, 1024),
            decoding_pixels: Budget::new(config.max_decoding_pixels, 1024),
        }
    }

    /// Admits a request body of `bytes` (its Content-Length, or the body limit) before it is read,
    /// or refuses it with 429 while other bodies hold the budget; released when dropped.
    pub fn admit_body(&self, bytes: u64) -> Result<Share> {
        self.body_bytes.try_take(bytes).ok_or_else(|| {
            Error::new(
                ErrorCode::QueueFull,
                "the server is reading as many request bodies as inference.max_inflight_body_bytes allows; retry \
                 shortly",
            )
            .with_header("retry-after", "1")
        })
    }

    /// Waits until `pixels` may be decoded (within `inference.max_decoding_pixels`); released when
    /// dropped. `None` once `gone()` says the client went away.
    pub async fn decoding(&self, pixels: u64, gone: impl Fn() -> bool) -> Option<Share> {
        self.decoding_pixels.take_unless(pixels, gone).await
    }

    /// A served or on-demand handle of exactly this version.
    pub fn version(&self, name: &str, version: u64) -> Option<ModelHandle> {
        let hit = |h: &ModelHandle| h.info.name == name && h.info.version == version;
        if let Some(h) = self.loaded.read().expect("serving lock").iter().find(|h| hit(h)) {
            return Some(h.clone());
        }
        let mut extra = self.on_demand.lock().expect("serving lock");
        let i = extra.iter().position(hit)?;
        let h = extra.remove(i);
        extra.push(h.clone());
        Some(h)
    }

    /// The version, loaded on demand by `load` if it is not loaded: once however many requests
    /// ask at the same time (they wait for the one load), at most `max_concurrent_loads` versions
    /// at once (503 with Retry-After beyond), and kept among the `max_on_demand` most recently used.
    pub async fn load_on_demand<F, Fut>(&self, name: &str, version: u64, load: F) -> Result<ModelHandle>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ModelHandle>>,
    {
        if let Some(h) = self.version(name, version) {
            return Ok(h);
        }
        let key = (name.to_string(), version);
        let gate = self.loading.lock().expect("serving lock").entry(key.clone()).or_default().clone();
        let _turn = gate.lock().await;
        if let Some(h) = self.version(name, version) {
            return Ok(h);
        }
        let slot = self.load_slots.try_acquire().map_err(|_| {
            Error::new(
                ErrorCode::NotReady,
                format!("other model versions are being loaded (inference.max_concurrent_loads); retry {name} version {version} shortly"),
            )
            .with_header("retry-after", "2")
        });
        let loaded = match slot {
            Ok(_slot) => load().await,
            Err(e) => Err(e),
        };
        if let Ok(h) = &loaded {
            self.keep(h.clone());
        }
        let mut loading = self.loading.lock().expect("serving lock");
        if loading.get(&key).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            loading.remove(&key);
        }
        loaded
    }

    /// Keeps an on-demand handle, dropping the least recently used beyond `max_on_demand`
    /// (requests holding a dropped handle finish on it).
    pub fn keep(&self, handle: ModelHandle) {
        let mut extra = self.on_demand.lock().expect("serving lock");
        extra.retain(|h| !(h.info.name == handle.info.name && h.info.version == handle.info.version));
        extra.push(handle);
        while extra.len() > self.max_on_demand {
            extra.remove(0);
        }
    }

    /// Adds a loaded model, replacing one of the same name (in-flight requests keep the old one).
    pub fn put(&self, handle: ModelHandle) {
        let mut loaded = self.loaded.write().expect("serving lock");
        match loaded.iter_mut().find(|h| h.info.name == handle.info.name) {
            Some(old) => *old = handle,
            None => loaded.push(handle),
        }
    }

    /// The named model, or the first configured one.
    pub fn get(&self, name: Option<&str>) -> Result<ModelHandle> {
        let loaded = self.loaded.read().expect("serving lock");
        if self.configured == 0 {
            return Err(Error::new(ErrorCode::NothingServing, "no model is being served: set inference.models"));
        }
        match name {
            None => loaded.first().cloned().ok_or_else(|| Error::new(ErrorCode::NotReady, "models are still loading")),
            Some(n) => loaded.iter().find(|h| h.info.name == n).cloned().ok_or_else(|| {
                let names: Vec<&str> = loaded.iter().map(|h| h.info.name.as_str()).collect();
                if loaded.len() < self.configured {
                    Error::new(
                        ErrorCode::NotReady,
                        format!("model {n} is not loaded (yet); loaded: {}", names.join(", ")),
                    )
                } else {
                    Error::new(ErrorCode::NotFound, format!("model {n} is not loaded; loaded: {}", names.join(", ")))
                }
            }),
        }
    }

    pub fn loaded(&self) -> Vec<ModelHandle> {
        self.loaded.read().expect("serving lock").clone()
    }
}
