//! Retention: what the registry keeps of finished work, and for how long. Without it job records,
//! lease records, queue markers and uploaded datasets would grow forever. `petal registry gc`
//! and a periodic task of `petal serve` (`jobs.retention.*`) remove:
//!
//! - records of jobs that ended (succeeded, failed, canceled) longer ago than `finished_jobs_s`,
//!   with their lease records;
//! - lease records, queue markers and training checkpoints of jobs that ended, or have no record
//!   (older than `grace_s`: a marker is written just before its record);
//! - `POST /finetune` Idempotency-Keys older than `jobs.idempotency_ttl_s`;
//! - uploaded datasets that no model version was trained on (no manifest names their content
//!   digest) and no unfinished job uses, uploaded longer ago than `unreferenced_datasets_s`.
//!
//! Nothing a manifest references is ever removed: model versions and their artifacts are the
//! registry's own `gc` (orphaned uploads only).
use std::collections::BTreeSet;

use serde::Serialize;

pub use crate::config::RetentionConfig;
use crate::error::Result;
use crate::registry::Registry;

/// What one pass removed (object paths), or would remove in a dry run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Removed {
    pub jobs: Vec<String>,
    pub leases: Vec<String>,
    pub queue: Vec<String>,
    pub checkpoints: Vec<String>,
    pub idempotency_keys: Vec<String>,
    pub datasets: Vec<String>,
}

impl Removed {
    pub fn total(&self) -> usize {
        self.jobs.len()
            + self.leases.len()
            + self.queue.len()
            + self.checkpoints.len()
            + self.idempotency_keys.len()
            + self.datasets.len()
    }
}

/// `seconds` before now, as the records write times (RFC 3339, seconds).
pub(crate) fn cutoff(seconds: u64) -> String {
    crate::foundation::clock::rfc3339_at(crate::foundation::clock::unix_now() - seconds as i64)
}

/// Whether RFC 3339 time `t` (with or without milliseconds) is before `cutoff`.
pub(crate) fn before(t: &str, cutoff: &str) -> bool {
    t.get(..19).unwrap_or(t) < cutoff.get(..19).unwrap_or(cutoff)
}

impl Registry {
    /// Applies `policy` once, and forgets Idempotency-Keys older than `idempotency_ttl_s`. Safe to
    /// run from several processes at once (each removal is of something that will never be
    /// needed again, and a missing object is not an error).
    pub async fn expire(&self, policy: &RetentionConfig, idempotency_ttl_s: u64, dry_run: bool) -> Result<Removed> {
        let mut removed = Removed {
            idempotency_keys: crate::jobs::idempotency::expire(self, idempotency_ttl_s, dry_run).await?,
            ..Removed::default()
        };
        let grace = cutoff(policy.grace_s);
        let jobs = self.jobs().await?;
        let ids: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let finished: BTreeSet<&str> = jobs.iter().filter(|j| j.state.is_terminal()).map(|j| j.id.as_str()).collect();
        // Job records (and their leases) past retention.
        let mut expired = BTreeSet::new();
        if policy.finished_jobs_s > 0 {
            let limit = cutoff(policy.finished_jobs_s.max(policy.grace_s));
            for j in jobs.iter().filter(|j| j.state.is_terminal()) {
                let at = j.finished_at.as_deref().unwrap_or(&j.created_at);
                if before(at, &limit) {
                    expired.insert(j.id.clone());
                }
            }
        }
        // Lease records (`leases/{job}/…`), queue markers (`queue/{job}`) and checkpoints
        // (`checkpoints/{job}/…`) of ended, expired or unknown jobs.
        let areas = self.job_area_objects().await?;
        for (objects, out) in [
            (areas.leases, &mut removed.leases),
            (areas.queue, &mut removed.queue),
            (areas.checkpoints, &mut removed.checkpoints),
        ] {
            for object in objects {
                let orphan = !ids.contains(object.job.as_str()) && before(&object.modified, &grace);
                if finished.contains(object.job.as_str()) || orphan {
                    self.remove_job_object(&object, dry_run).await?;
                    out.push(object.key());
                }
            }
        }
        for id in &expired {
            removed.jobs.push(self.remove_job_record(id, dry_run).await?);
        }
        // Datasets no version was trained on and no unfinished job uses.
        if policy.unreferenced_datasets_s > 0 {
            let limit = cutoff(policy.unreferenced_datasets_s.max(policy.grace_s));
            let mut trained_on = BTreeSet::new();
            for model in self.models().await? {
                for v in self.versions(&model).await? {
                    if let Some(d) = self.manifest(&model, v).await?.provenance.dataset {
                        trained_on.insert(d.digest);
                    }
                }
            }
            let in_use: BTreeSet<&str> =
                jobs.iter().filter(|j| !j.state.is_terminal()).map(|j| j.dataset.sha256.as_str()).collect();
            for sha in self.dataset_ids().await? {
                let Ok(record) = self.dataset(&sha).await else { continue };
                if trained_on.contains(&record.summary.digest)
                    || in_use.contains(sha.as_str())
                    || !before(&record.uploaded_at, &limit)
                {
                    continue;
                }
                removed.datasets.extend(self.remove_dataset(&sha, dry_run).await?);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_compare_with_and_without_milliseconds() {
        assert!(super::before("2026-01-01T00:00:00.500Z", "2026-01-01T00:00:01Z"));
        assert!(!super::before("2026-01-01T00:00:01Z", "2026-01-01T00:00:01Z"));
        assert!(super::before("2025-12-31T23:59:59Z", "2026-01-01T00:00:00.000Z"));
    }
}
