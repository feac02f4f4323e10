//! The registry's records of fine-tuning jobs: job records, the shared queue, workers' leases
//! (claims, heartbeats, cancel requests; the protocol is described in `jobs::lease`), and the
//! listing and removal of them that retention needs. The job record's type belongs to `jobs`:
//! records are stored and read here for any serde type, so storage knows no job semantics.
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::layout::{self, LeaseKey};
use super::{store_error, Registry};
use crate::error::{Error, ErrorCode, Result};

/// Job records read before, by id, with the listing's ETag, size and modification time they were
/// read at: a listing re-reads only records that changed.
pub(crate) type JobCache = Arc<Mutex<HashMap<String, (String, Arc<dyn Any + Send + Sync>)>>>;

/// The objects of the job areas (`queue/`, `leases/`, `checkpoints/`), for retention.
pub struct JobAreas {
    pub queue: Vec<JobObject>,
    pub leases: Vec<JobObject>,
    pub checkpoints: Vec<JobObject>,
}

/// An object of the queue, lease or checkpoint areas, for retention.
pub struct JobObject {
    /// The job it belongs to.
    pub job: String,
    /// When it was last written (RFC 3339).
    pub modified: String,
    key: ObjPath,
}

impl JobObject {
    /// Its key, for reports.
    pub fn key(&self) -> String {
        self.key.to_string()
    }
}

impl Registry {
    /// Writes (or replaces) job `id`'s record.
    pub async fn put_job_record<T: Serialize>(&self, id: &str, record: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).expect("job serializes");
        self.store.put(&layout::job(id), bytes.into()).await.map_err(|e| store_error("writing a job record", e))?;
        Ok(())
    }

    /// Job `id`'s record, `None` when there is none.
    pub async fn job_record<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.get_json(&layout::job(id), "job record").await
    }

    /// Every job record, in listing order; an unreadable one is left out with a warning.
    pub async fn job_records<T: DeserializeOwned + Clone + Send + Sync + 'static>(&self) -> Result<Vec<T>> {
        let listed: Vec<_> = self.list_all(&layout::jobs(), "listing jobs").await?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for meta in listed {
            let Some(id) = layout::job_of(&meta.location) else { continue };
            seen.insert(id.clone());
            // Unchanged since it was last read (same ETag, size and modification time): cached.
            let modified = format!("{:?} {} {:?}", meta.e_tag, meta.size, meta.last_modified.timestamp_nanos_opt());
            let cached = self
                .job_cache
                .lock()
                .expect("job cache")
                .get(&id)
                .filter(|c| c.0 == modified)
                .and_then(|c| c.1.clone().downcast::<T>().ok());
            if let Some(j) = cached {
                out.push((*j).clone());
                continue;
            }
            match self.job_record::<T>(&id).await {
                Ok(Some(j)) => {
                    self.job_cache.lock().expect("job cache").insert(id, (modified, Arc::new(j.clone())));
                    out.push(j)
                }
                Ok(None) => {}
                Err(e) if e.code == ErrorCode::IntegrityError => {
                    tracing::warn!(job = id, error = %e, "an unreadable job record is left out")
                }
                Err(e) => return Err(e),
            }
        }
        self.job_cache.lock().expect("job cache").retain(|id, _| seen.contains(id));
        Ok(out)
    }

    /// The objects of the shared queue, of every job's leases, and of every job's checkpoints.
    pub async fn job_area_objects(&self) -> Result<JobAreas> {
        Ok(JobAreas {
            queue: self.job_objects(layout::queue()).await?,
            leases: self.job_objects(layout::leases()).await?,
            checkpoints: self.job_objects(layout::checkpoints()).await?,
        })
    }

    /// Creates the Idempotency-Key record `digest` unless one exists: `true` when this call
    /// created it (a store whose create-only write is not atomic is read back by the caller).
    pub async fn create_idempotency_record<T: Serialize>(&self, digest: &str, record: &T) -> Result<bool> {
        let body = serde_json::to_vec_pretty(record).expect("record serializes");
        match self
            .store
            .put_opts(&layout::idempotency_key(digest), body.into(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(store_error("recording an Idempotency-Key", e)),
        }
    }

    /// Replaces the Idempotency-Key record `digest`.
    pub async fn put_idempotency_record<T: Serialize>(&self, digest: &str, record: &T) -> Result<()> {
        let body = serde_json::to_vec_pretty(record).expect("record serializes");
        self.store
            .put(&layout::idempotency_key(digest), body.into())
            .await
            .map(|_| ())
            .map_err(|e| store_error("recording an Idempotency-Key", e))
    }

    /// The Idempotency-Key record `digest`, `None` when there is none.
    pub async fn idempotency_record<T: DeserializeOwned>(&self, digest: &str) -> Result<Option<T>> {
        self.get_json(&layout::idempotency_key(digest), "Idempotency-Key record").await
    }

    /// Removes the Idempotency-Key record `digest` (unless `dry_run`); returns its key.
    pub async fn remove_idempotency_record(&self, digest: &str, dry_run: bool) -> Result<String> {
        let key = layout::idempotency_key(digest);
        self.remove(&key, dry_run).await?;
        Ok(key.to_string())
    }

    /// Every Idempotency-Key record: its digest and when it was written (RFC 3339).
    pub async fn idempotency_records(&self) -> Result<Vec<(String, String)>> {
        let listed: Vec<_> = self.list_all(&layout::idempotency_keys(), "listing Idempotency-Keys").await?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let digest = m.location.filename()?.strip_suffix(".json")?.to_string();
                Some((digest, m.last_modified.to_rfc3339()))
            })
            .collect())
    }

    /// Writes job `job`'s training checkpoint `slot` of `backbone`, replacing the one there at
    /// once (readers see the old bytes or the new, never a part).
    pub async fn put_checkpoint(&self, job: &str, backbone: &str, slot: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_large(&layout::checkpoint(job, backbone, slot), bytes)
            .await
            .map_err(|e| store_error("writing a training checkpoint", e))
    }

    /// Job `job`'s training checkpoint `slot` of `backbone`, `None` when there is none.
    pub async fn checkpoint(&self, job: &str, backbone: &str, slot: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&layout::checkpoint(job, backbone, slot)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_error("reading a training checkpoint", e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("reading a training checkpoint", e)),
        }
    }

    /// Removes every training checkpoint of job `job`; returns their keys.
    pub async fn remove_checkpoints(&self, job: &str) -> Result<Vec<String>> {
        let prefix = layout::job_checkpoints(job);
        let listed: Vec<_> = self.list_all(&prefix, &format!("listing {prefix}/")).await?;
        let mut keys = Vec::new();
        for m in listed {
            self.remove(&m.location, false).await?;
            keys.push(m.location.to_string());
        }
        Ok(keys)
    }

    /// The objects under `prefix` that belong to a job.
    async fn job_objects(&self, prefix: ObjPath) -> Result<Vec<JobObject>> {
        let listed: Vec<_> = self.list_all(&prefix, &format!("listing {prefix}/")).await?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let job = layout::job_in(&m.location)?;
                Some(JobObject { job, modified: m.last_modified.to_rfc3339(), key: m.location })
            })
            .collect())
    }

    /// Removes a queue, lease or checkpoint object (unless `dry_run`); a missing one is not an error.
    pub async fn remove_job_object(&self, object: &JobObject, dry_run: bool) -> Result<()> {
        self.remove(&object.key, dry_run).await
    }

    /// Removes job `id`'s record (unless `dry_run`); returns its key.
    pub async fn remove_job_record(&self, id: &str, dry_run: bool) -> Result<String> {
        let key = layout::job(id);
        self.remove(&key, dry_run).await?;
        Ok(key.to_string())
    }

    /// Removes a stored dataset (unless `dry_run`): its record first, since a dataset without one
    /// does not exist, then its archive. Returns their keys.
    pub async fn remove_dataset(&self, sha256: &str, dry_run: bool) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for key in [layout::dataset_record(sha256), layout::dataset_archive(sha256)] {
            self.remove(&key, dry_run).await?;
            keys.push(key.to_string());
        }
        Ok(keys)
    }

    /// The sha256 of every dataset with an object in the registry (with or without a record).
    pub async fn dataset_ids(&self) -> Result<std::collections::BTreeSet<String>> {
        let listed: Vec<_> = self.list_all(&layout::datasets(), "listing datasets/").await?;
        Ok(listed.iter().filter_map(|m| layout::dataset_of(&m.location)).collect())
    }

    async fn remove(&self, key: &ObjPath, dry_run: bool) -> Result<()> {
        if dry_run {
            return Ok(());
        }
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("removing an expired record", e)),
        }
    }
}

/// Attempt `attempt` of `job` belongs to `worker`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub job: String,
    pub attempt: u32,
    pub worker: String,
    pub claimed_at: String,
    /// Unique to this claim: how its writer recognises it when reading it back.
    pub token: String,
}

/// The holder of an attempt is alive (or has let go).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Beat {
    pub job: String,
    pub attempt: u32,
    pub worker: String,
    /// Grows by one at every beat.
    pub seq: u64,
    pub at: String,
    /// The holder stopped (shutting down) and left the job for another worker to restart now.
    #[serde(default)]
    pub released: bool,
    /// The holder ended the job (its record is terminal).
    #[serde(default)]
    pub ended: bool,
    /// The holder found a newer claim and stopped: `at` is when its run really ended, so the
    /// records show whether two attempts ever overlapped.
    #[serde(default)]
    pub lost: bool,
}

/// A job's lease records.
#[derive(Debug, Clone, Default)]
pub struct Leases {
    /// Every claim, oldest attempt first.
    pub claims: Vec<Claim>,
    /// The newest attempt's beat, if it beat yet.
    pub beat: Option<Beat>,
    /// Attempts their workers released (shut down): they do not count against
    /// `jobs.max_attempts`.
    pub released: u32,
    pub cancel_requested: bool,
}

impl Leases {
    pub fn latest(&self) -> Option<&Claim> {
        self.claims.last()
    }
}

impl Registry {
    /// Puts a job in the shared queue.
    pub async fn enqueue(&self, job: &str) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({"job": job, "at": crate::foundation::clock::now_rfc3339()}))
            .expect("queue entry serializes");
        self.store.put(&layout::queue_marker(job), body.into()).await.map_err(|e| store_error("queueing a job", e))?;
        Ok(())
    }

    /// Takes a job out of the shared queue (ended, or found ended).
    pub async fn dequeue(&self, job: &str) -> Result<()> {
        match self.store.delete(&layout::queue_marker(job)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("removing a job from the queue", e)),
        }
    }

    /// The shared queue, oldest first.
    pub async fn queued(&self) -> Result<Vec<String>> {
        let mut listed: Vec<_> = self.list_all(&layout::queue(), "listing the job queue").await?;
        listed.sort_by(|a, b| a.last_modified.cmp(&b.last_modified).then_with(|| a.location.cmp(&b.location)));
        Ok(listed.into_iter().filter_map(|m| layout::job_in(&m.location)).collect())
    }

    /// The JSON record at `path` (a `what`), `None` when there is none; an unreadable one is an
    /// integrity error.
    async fn get_json<T: DeserializeOwned>(&self, path: &ObjPath, what: &str) -> Result<Option<T>> {
        let bytes = match self.store.get(path).await {
            Ok(r) => r.bytes().await.map_err(|e| store_error(&format!("reading a {what}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(&format!("reading a {what}"), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::new(ErrorCode::IntegrityError, format!("{path}: unreadable {what}: {e}")))
    }

    async fn exists(&self, path: &ObjPath) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("reading a lease record", e)),
        }
    }

    /// A job's claims, its newest attempt's beat and whether a cancel was asked.
    pub async fn leases(&self, job: &str) -> Result<Leases> {
        let listed: Vec<_> = self.list_all(&layout::job_leases(job), "listing a job's leases").await?;
        let mut attempts = Vec::new();
        let mut cancel_requested = false;
        for m in &listed {
            match layout::lease_key(&m.location) {
                Some(LeaseKey::Cancel) => cancel_requested = true,
                Some(LeaseKey::Claim(n)) => attempts.push(n),
                Some(LeaseKey::Beat) | None => {}
            }
        }
        attempts.sort_unstable();
        let mut claims = Vec::new();
        for n in attempts {
            if let Some(c) = self.get_json::<Claim>(&layout::claim(job, n), "lease record").await? {
                claims.push(c);
            }
        }
        let (mut beat, mut released) = (None, 0);
        for c in &claims {
            beat = self.get_json::<Beat>(&layout::beat(job, c.attempt), "lease record").await?;
            released += u32::from(beat.as_ref().is_some_and(|b| b.released));
        }
        Ok(Leases { claims, beat, released, cancel_requested })
    }

    /// Tries to claim `attempt` of `job` for `worker`: `Some(claim)` when this call won it.
    pub async fn try_claim(&self, job: &str, attempt: u32, worker: &str) -> Result<Option<Claim>> {
        let claim = Claim {
            job: job.to_string(),
            attempt,
            worker: worker.to_string(),
            claimed_at: crate::foundation::clock::now_rfc3339_millis(),
            token: uuid::Uuid::new_v4().to_string(),
        };
        let body = serde_json::to_vec_pretty(&claim).expect("claim serializes");
        let path = layout::claim(job, attempt);
        match self.store.put_opts(&path, body.into(), PutOptions::from(PutMode::Create)).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                return Ok(None)
            }
            Err(e) => return Err(store_error("claiming a job", e)),
        }
        Ok(self.holds(&claim).await?.then_some(claim))
    }

    /// The stored claim of `attempt` of `job`.
    pub async fn claim_of(&self, job: &str, attempt: u32) -> Result<Option<Claim>> {
        self.get_json(&layout::claim(job, attempt), "lease record").await
    }

    /// Whether `claim` is still the job's claim of its attempt and no newer attempt exists.
    pub async fn holds(&self, claim: &Claim) -> Result<bool> {
        let stored = self.claim_of(&claim.job, claim.attempt).await?;
        if stored.is_none_or(|s| s.token != claim.token) {
            return Ok(false);
        }
        Ok(!self.exists(&layout::claim(&claim.job, claim.attempt + 1)).await?)
    }

    pub async fn put_beat(&self, beat: &Beat) -> Result<()> {
        let body = serde_json::to_vec_pretty(beat).expect("beat serializes");
        self.store
            .put(&layout::beat(&beat.job, beat.attempt), body.into())
            .await
            .map_err(|e| store_error("writing a heartbeat", e))?;
        Ok(())
    }

    /// Asks whoever holds `job` to cancel it.
    pub async fn request_cancel(&self, job: &str, by: &str) -> Result<()> {
        let body = serde_json::to_vec(
            &serde_json::json!({"job": job, "by": by, "at": crate::foundation::clock::now_rfc3339()}),
        )
        .expect("cancel request serializes");
        self.store
            .put(&layout::cancel(job), body.into())
            .await
            .map_err(|e| store_error("asking to cancel a job", e))?;
        Ok(())
    }

    pub async fn cancel_requested(&self, job: &str) -> Result<bool> {
        self.exists(&layout::cancel(job)).await
    }
}
