//! The models a server is serving, by name.
use std::sync::RwLock;

use crate::error::{Error, ErrorCode, Result};
use crate::infer::engine::ModelHandle;

#[derive(Default)]
pub struct Serving {
    configured: usize,
    loaded: RwLock<Vec<ModelHandle>>,
    /// Versions loaded on demand (a request naming a version or alias not served), most recently
    /// used last, at most `ON_DEMAND` of them.
    on_demand: std::sync::Mutex<Vec<ModelHandle>>,
}

/// How many on-demand versions stay loaded.
pub const ON_DEMAND: usize = 4;

impl Serving {
    pub fn new(configured: usize) -> Self {
        Self { configured, loaded: RwLock::new(Vec::new()), on_demand: Default::default() }
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

    /// Keeps an on-demand handle, dropping the least recently used beyond `ON_DEMAND`
    /// (requests holding a dropped handle finish on it).
    pub fn keep(&self, handle: ModelHandle) {
        let mut extra = self.on_demand.lock().expect("serving lock");
        extra.retain(|h| !(h.info.name == handle.info.name && h.info.version == handle.info.version));
        extra.push(handle);
        while extra.len() > ON_DEMAND {
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
