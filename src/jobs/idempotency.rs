//! `Idempotency-Key` on `POST /finetune`: a submission retried with the same key (after a timeout
//! or a dropped connection) gets the job the first one created instead of a second job. The key is
//! the caller's (a token's name; everyone's without tokens), remembered for
//! `jobs.idempotency_ttl_s` in the registry (`idempotency/{digest}.json`, created create-only, so
//! two replicas racing on one key create one job). The record holds a fingerprint of the
//! submission (spec and dataset): the same key with another submission is refused
//! (`idempotency_key_reused`), and while the first request is still being handled a second one
//! is told to retry (`idempotency_in_progress`).
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::foundation::hash::sha256_hex;
use crate::jobs::retention::{before, cutoff};
use crate::registry::Registry;

/// Longest key accepted (as Stripe's).
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The request that reserved the key.
    token: String,
    /// sha256 of the submission (spec and dataset).
    fingerprint: String,
    /// The job it created, once created.
    job: Option<String>,
    created_at: String,
}

/// What a key says about a submission.
pub enum Reserved {
    /// New: the caller creates the job, then `complete`s (or `release`s) the reservation.
    New(Reservation),
    /// Seen before: the job the first submission created.
    Replay(String),
}

/// A key reserved by this request.
pub struct Reservation {
    digest: String,
    record: Record,
}

/// Checks a key as sent: 1 to 255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID, say)"
        )));
    }
    Ok(())
}

/// The fingerprint of a submission: its spec (as JSON) and what names its dataset.
pub fn fingerprint(spec: &impl Serialize, dataset: &str) -> String {
    let mut bytes = serde_json::to_vec(spec).expect("spec serializes");
    bytes.push(0);
    bytes.extend_from_slice(dataset.as_bytes());
    sha256_hex(&bytes)
}

fn digest(owner: Option<&str>, key: &str) -> String {
    sha256_hex(format!("petal-idempotency\0{}\0{key}", owner.unwrap_or("")).as_bytes())
}

fn expired(record: &Record, ttl_s: u64) -> bool {
    before(&record.created_at, &cutoff(ttl_s))
}

/// Reserves `key` of `owner` for a submission with `fingerprint`, or says which job it created.
pub async fn reserve(
    registry: &Registry,
    owner: Option<&str>,
    key: &str,
    fingerprint: &str,
    ttl_s: u64,
) -> Result<Reserved> {
    check_key(key)?;
    let digest = digest(owner, key);
    let mine = Record {
        token: uuid::Uuid::new_v4().to_string(),
        fingerprint: fingerprint.to_string(),
        job: None,
        created_at: crate::foundation::clock::now_rfc3339(),
    };
    for _ in 0..3 {
        if registry.create_idempotency_record(&digest, &mine).await? {
            // Read back: on a store whose create-only write is not atomic, the last writer wins.
            let stored: Option<Record> = registry.idempotency_record(&digest).await?;
            if stored.as_ref().is_some_and(|r| r.token == mine.token) {
                return Ok(Reserved::New(Reservation { digest, record: mine }));
            }
        }
        let Some(theirs) = registry.idempotency_record::<Record>(&digest).await? else { continue };
        if expired(&theirs, ttl_s) {
            registry.remove_idempotency_record(&digest, false).await?;
            continue;
        }
        if theirs.fingerprint != fingerprint {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "Idempotency-Key {key:?} was used on {} for another submission (spec or dataset)",
                    theirs.created_at
                ),
            ));
        }
        return match theirs.job {
            Some(job) => Ok(Reserved::Replay(job)),
            None => Err(Error::new(
                ErrorCode::IdempotencyInProgress,
                format!("a submission with Idempotency-Key {key:?} is being handled; retry shortly"),
            )
            .with_header("retry-after", "2")),
        };
    }
    Err(Error::new(ErrorCode::IdempotencyInProgress, format!("Idempotency-Key {key:?} is contended; retry shortly"))
        .with_header("retry-after", "2"))
}

impl Reservation {
    /// The submission created `job`: retries get it from now on.
    pub async fn complete(mut self, registry: &Registry, job: &str) -> Result<()> {
        self.record.job = Some(job.to_string());
        registry.put_idempotency_record(&self.digest, &self.record).await
    }

    /// The submission failed: the key is free again.
    pub async fn release(self, registry: &Registry) {
        if let Err(e) = registry.remove_idempotency_record(&self.digest, false).await {
            tracing::warn!(error = %e, "cannot free an Idempotency-Key; it expires with jobs.idempotency_ttl_s");
        }
    }
}

/// Removes the records older than `ttl_s` (unless `dry_run`); returns their keys.
pub async fn expire(registry: &Registry, ttl_s: u64, dry_run: bool) -> Result<Vec<String>> {
    let cutoff = cutoff(ttl_s);
    let mut removed = Vec::new();
    for (digest, modified) in registry.idempotency_records().await? {
        if before(&modified, &cutoff) {
            removed.push(registry.remove_idempotency_record(&digest, dry_run).await?);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_scoped_by_caller() {
        assert!(check_key("0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10").is_ok());
        assert!(check_key("").is_err() && check_key("a b").is_err() && check_key("é").is_err());
        assert!(check_key(&"k".repeat(256)).is_err());
        assert_ne!(digest(Some("a"), "k"), digest(Some("b"), "k"));
        assert_ne!(digest(None, "k"), digest(Some(""), "k\0"));
        assert_ne!(fingerprint(&1, "sha256:a"), fingerprint(&1, "sha256:b"));
    }
}
