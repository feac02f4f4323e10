//! The catalog of known pretrained weights (`registry/catalog/weights.json`, generated from
//! torchvision's metadata by `scripts/gen_catalog.py`): where each file comes from, how to check
//! it, what it scores on ImageNet, its eval transform, and the licences it carries.
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::records::licence::Licence;
use crate::train::arch::Arch;
use crate::vision::EvalTransform;

const CATALOG_JSON: &str = include_str!("../../registry/catalog/weights.json");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    pub generated_from: String,
    pub classes: i64,
    pub weights: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogEntry {
    pub arch: Arch,
    /// torchvision's name, e.g. `ResNet50_Weights.IMAGENET1K_V2`.
    pub weights: String,
    /// torchvision's `DEFAULT` for this architecture.
    pub default: bool,
    /// Canonical download URL.
    pub url: String,
    pub file_name: String,
    /// Full sha256 where the file was verified byte for byte; torchvision publishes only a prefix.
    pub sha256: Option<String>,
    pub sha256_prefix: String,
    pub size_bytes: Option<u64>,
    pub file_size_mb: f64,
    pub num_params: i64,
    pub imagenet_top1: f64,
    pub imagenet_top5: f64,
    pub gflops: Option<f64>,
    pub recipe: Option<String>,
    pub eval_transform: EvalTransform,
    /// Other places the same bytes are known to be (e.g. a PyPI package).
    pub mirrors: Vec<String>,
    pub licences: Vec<Licence>,
}

/// How a file's bytes were checked against the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// The full sha256 matched.
    Sha256,
    /// The sha256 prefix torchvision publishes matched (what `torch.hub` checks).
    Sha256Prefix,
    /// The file is not in the catalog: nothing to check against.
    Unknown,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn embedded() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| serde_json::from_str(CATALOG_JSON).expect("registry/catalog/weights.json is valid"))
    }

    /// The entry for `arch`: the named weights, else torchvision's default.
    pub fn find(&self, arch: Arch, weights: Option<&str>) -> Result<&CatalogEntry> {
        let mut candidates = self.weights.iter().filter(|e| e.arch == arch);
        let found = match weights {
            Some(w) => candidates.find(|e| e.weights == w || e.weights.rsplit('.').next() == Some(w)),
            None => candidates.find(|e| e.default),
        };
        found.ok_or_else(|| {
            let known: Vec<&str> = self.weights.iter().filter(|e| e.arch == arch).map(|e| e.weights.as_str()).collect();
            Error::new(
                ErrorCode::UnknownWeights,
                format!(
                    "no weights {:?} for {arch} in the catalog; known: {}",
                    weights.unwrap_or("default"),
                    known.join(", ")
                ),
            )
        })
    }

    pub fn by_file_name(&self, name: &str) -> Option<&CatalogEntry> {
        self.weights.iter().find(|e| e.file_name == name)
    }

    /// The entry whose bytes have this sha256 (full hash, else the published prefix).
    pub fn by_sha256(&self, sha256: &str) -> Option<&CatalogEntry> {
        self.weights
            .iter()
            .find(|e| e.sha256.as_deref() == Some(sha256))
            .or_else(|| self.weights.iter().find(|e| e.sha256.is_none() && sha256.starts_with(&e.sha256_prefix)))
    }
}

impl CatalogEntry {
    /// Checks a file's sha256 (hex) against this entry.
    pub fn verify(&self, sha256: &str) -> Result<Verification> {
        let (ok, how) = match &self.sha256 {
            Some(full) => (full == sha256, Verification::Sha256),
            None => (sha256.starts_with(&self.sha256_prefix), Verification::Sha256Prefix),
        };
        if ok {
            Ok(how)
        } else {
            Err(Error::new(
                ErrorCode::WeightsChecksum,
                format!(
                    "{} has sha256 {sha256}, but the catalog expects {} for {}: refusing it",
                    self.file_name,
                    self.sha256.clone().unwrap_or_else(|| format!("{}…", self.sha256_prefix)),
                    self.weights
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_a_default_that_matches_its_description() {
        let c = Catalog::embedded();
        for arch in Arch::ALL {
            let e = c.find(arch, None).unwrap();
            assert!(e.default);
            assert_eq!(e.num_params, arch.network(1000).num_params(), "{arch}");
            assert!(e.url.ends_with(&e.file_name));
            assert!(e.licences.iter().any(|l| !l.commercial_use), "ImageNet terms recorded for {arch}");
            assert!(e.licences.iter().any(|l| l.spdx.as_deref() == Some("BSD-3-Clause")));
            assert!(e.imagenet_top1 > 60.0 && e.imagenet_top5 > e.imagenet_top1);
        }
        let r50 = c.find(Arch::Resnet50, None).unwrap();
        assert_eq!(r50.weights, "ResNet50_Weights.IMAGENET1K_V2");
        assert_eq!(r50.eval_transform.resize, 232);
        assert_eq!(c.find(Arch::Resnet50, Some("IMAGENET1K_V1")).unwrap().file_name, "resnet50-0676ba61.pth");
        assert_eq!(c.find(Arch::Vgg16, Some("nope")).unwrap_err().code, ErrorCode::UnknownWeights);
    }

    #[test]
    fn verification_uses_the_full_hash_or_the_published_prefix() {
        let c = Catalog::embedded();
        let mb = c.by_file_name("mobilenet_v2-b0353104.pth").unwrap();
        let real = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";
        assert_eq!(mb.verify(real).unwrap(), Verification::Sha256);
        // Same prefix, different bytes: the full hash catches it.
        let forged = "b03531040000000000000000000000000000000000000000000000000000000";
        assert_eq!(mb.verify(forged).unwrap_err().code, ErrorCode::WeightsChecksum);
        assert_eq!(c.by_sha256(real).unwrap().weights, "MobileNet_V2_Weights.IMAGENET1K_V1");
        // resnet18's full digest is known (recorded by public projects): a prefix match is not enough.
        let r18 = c.by_file_name("resnet18-f37072fd.pth").unwrap();
        assert_eq!(r18.verify("f37072fdabc").unwrap_err().code, ErrorCode::WeightsChecksum);
        let full = "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec";
        assert_eq!(r18.verify(full).unwrap(), Verification::Sha256);
        // The two V2 files with no published full digest are checked by prefix (and pinned at download).
        let r152 = c.by_file_name("resnet152-f82ba261.pth").unwrap();
        assert_eq!(r152.verify("f82ba261abc").unwrap(), Verification::Sha256Prefix);
        assert!(r152.verify("00000000").is_err());
        let full_digests = c.weights.iter().filter(|e| e.sha256.is_some()).count();
        assert_eq!(full_digests, c.weights.len() - 2, "every file but two is checked by its full sha256");
        for e in &c.weights {
            if let Some(full) = &e.sha256 {
                assert!(full.len() == 64 && full.starts_with(&e.sha256_prefix), "{}", e.file_name);
            }
        }
    }
}
