//! The local cache of pretrained weights: files are checked against the catalog, proven to load
//! into their architecture, then written atomically with a provenance record beside them.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, ErrorCode, Result};
use crate::foundation::files::write_atomically;
use crate::records::licence::Licence;
use crate::train::arch::Arch;
use crate::train::catalog::{Catalog, CatalogEntry, Verification};
use crate::train::model::Model;
use crate::train::weights;

/// What is known about a cached weight file (`<file>.json` beside it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedWeights {
    pub path: PathBuf,
    pub file_name: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub arch: Option<Arch>,
    /// The catalog entry (`ResNet50_Weights.IMAGENET1K_V2`) when the file is a known one.
    pub catalog: Option<String>,
    pub verification: Verification,
    /// Where the bytes came from: a URL or the imported file's path.
    pub source: String,
    pub tensors: usize,
    pub licences: Vec<Licence>,
    pub stored_at: String,
}

pub struct WeightStore {
    dir: PathBuf,
    /// Weight files imported into the cache when first needed (`weights.seed`).
    seed: Option<PathBuf>,
}

impl WeightStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), seed: None }
    }

    /// The cache of `weights.cache`, seeded from `weights.seed`.
    pub fn from_config(config: &crate::config::WeightsConfig) -> Self {
        let seed = Some(config.seed.clone()).filter(|s| !s.as_os_str().is_empty());
        Self { dir: config.cache.clone(), seed }
    }

    /// A cached file by name, else the seed folder's file of that name, imported now.
    pub fn cached_or_seeded(&self, file_name: &str) -> Option<CachedWeights> {
        self.cached(file_name).or_else(|| {
            let path = self.seed.as_ref()?.join(file_name);
            path.is_file().then(|| self.import_seed(&path)).flatten()
        })
    }

    /// Any file for `arch`: a cached one, else one of the seed folder that the catalog says is
    /// for `arch`, imported now.
    pub fn any_for(&self, arch: Arch) -> Option<CachedWeights> {
        if let Some(c) = self.list().into_iter().find(|c| c.arch == Some(arch)) {
            return Some(c);
        }
        let catalog = Catalog::embedded();
        let mut seeds: Vec<PathBuf> =
            std::fs::read_dir(self.seed.as_ref()?).ok()?.flatten().map(|e| e.path()).collect();
        seeds.sort();
        seeds.into_iter().find_map(|p| {
            let name = p.file_name()?.to_str()?;
            (catalog.by_file_name(name)?.arch == arch).then(|| self.import_seed(&p)).flatten()
        })
    }

    /// Imports a seed file (one at a time in this process); a file that fails the checks is left
    /// out with a warning.
    fn import_seed(&self, path: &Path) -> Option<CachedWeights> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let name = path.file_name()?.to_str()?;
        if let Some(c) = self.cached(name) {
            return Some(c);
        }
        match self.import(path, None) {
            Ok(c) => {
                tracing::info!(file = %path.display(), cache = %self.dir.display(), "imported seed weights");
                Some(c)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "seed weights left out");
                None
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports a local weight file. A file the catalog knows (by name or by hash) must match its
    /// checksum; `arch` is taken from the catalog when not given. The file must load into the
    /// architecture (every key, every shape) before it is stored.
    pub fn import(&self, file: &Path, arch: Option<Arch>) -> Result<CachedWeights> {
        let bytes = std::fs::read(file)
            .map_err(|e| Error::new(ErrorCode::WeightsCorrupt, format!("cannot read {}: {e}", file.display())))?;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("weights.pth").to_string();
        self.store(&bytes, &name, arch, None, &file.display().to_string())
    }

    /// Downloads the catalog entry (from `mirror` when given), verifies and stores it. A file
    /// already cached with the right checksum is not downloaded again.
    pub async fn fetch(&self, entry: &CatalogEntry, mirror: Option<&str>) -> Result<CachedWeights> {
        if let Some(cached) = self.cached(&entry.file_name) {
            if entry.verify(&cached.sha256).is_ok() {
                return Ok(cached);
            }
        }
        let url = match mirror {
            Some(m) => format!("{}/{}", m.trim_end_matches('/'), entry.file_name),
            None => entry.url.clone(),
        };
        let bytes = crate::registry::remote::fetch_url(&url).await?;
        self.store(&bytes, &entry.file_name, Some(entry.arch), Some(entry), &url)
    }

    /// The record of a cached file, if present and intact on disk.
    pub fn cached(&self, file_name: &str) -> Option<CachedWeights> {
        let record: CachedWeights =
            serde_json::from_slice(&std::fs::read(self.dir.join(format!("{file_name}.json"))).ok()?).ok()?;
        let size = std::fs::metadata(&record.path).ok()?.len();
        (size == record.size_bytes).then_some(record)
    }

    /// Every cached file, by name.
    pub fn list(&self) -> Vec<CachedWeights> {
        let mut out: Vec<CachedWeights> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| self.cached(n)))
            .collect();
        out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        out
    }

    fn store(
        &self,
        bytes: &[u8],
        name: &str,
        arch: Option<Arch>,
        expected: Option<&CatalogEntry>,
        source: &str,
    ) -> Result<CachedWeights> {
        let sha256 = crate::foundation::hash::sha256_hex(bytes);
        let catalog = Catalog::embedded();
        let entry = expected.or_else(|| catalog.by_file_name(name)).or_else(|| catalog.by_sha256(&sha256));
        let verification = match entry {
            Some(e) => e.verify(&sha256)?,
            None => Verification::Unknown,
        };
        if let (Some(e), Some(a)) = (entry, arch) {
            if e.arch != a {
                return Err(Error::new(
                    ErrorCode::WeightsMismatch,
                    format!("{name} is {} in the catalog, not {a}", e.weights),
                ));
            }
        }
        let arch = arch.or(entry.map(|e| e.arch));
        let tensors = weights::read_bytes(bytes).map_err(|e| Error::new(e.code, format!("{name}: {}", e.message)))?;
        if let Some(arch) = arch {
            // Classes from the file's own head, so any head size is accepted as long as the rest fits.
            let mut model =
                Model::new(arch.network(weights::head_classes(arch, &tensors).unwrap_or(1000)), Device::Cpu);
            model.load_state_dict(&tensors, false)?;
        }
        let file_name = entry.map(|e| e.file_name.clone()).unwrap_or_else(|| sanitize(name));
        crate::foundation::files::create_dir_all(&self.dir)?;
        let path = self.dir.join(&file_name);
        write_atomically(&path, bytes)?;
        let record = CachedWeights {
            path: std::path::absolute(&path).unwrap_or(path),
            file_name: file_name.clone(),
            sha256,
            size_bytes: bytes.len() as u64,
            arch,
            catalog: entry.map(|e| e.weights.clone()),
            verification,
            source: source.to_string(),
            tensors: tensors.len(),
            licences: entry.map(|e| e.licences.clone()).unwrap_or_default(),
            stored_at: crate::foundation::clock::now_rfc3339(),
        };
        write_atomically(
            &self.dir.join(format!("{file_name}.json")),
            &serde_json::to_vec_pretty(&record).expect("record serializes"),
        )?;
        Ok(record)
    }
}

fn sanitize(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    clean.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("../a b.pth"), "_a_b.pth");
    }
}
