//! Content digests: every sha256 petal records (artifacts, datasets, weights) is this one.
use sha2::{Digest, Sha256};

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
