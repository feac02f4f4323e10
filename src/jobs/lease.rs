//! What API replicas and `petal worker`s share in the registry to run jobs with nothing else
//! between them:
//!
//! - `queue/{job}`: the job waits for (or is held by) a worker. An API replica writes it before
//!   the job record (workers skip a marker without a record; a `petal serve` recovering its own
//!   jobs at start skips every record with a marker); the worker that ends the job removes it.
//! - `leases/{job}/{attempt:06}.claim.json`: attempt `n` of the job belongs to the worker that
//!   created this object. Creation is conditional (`If-None-Match: *` on S3, an exclusive create
//!   on a folder), so of two workers claiming the same attempt one wins; the winner reads the
//!   claim back, because some S3-compatible servers check and write in two steps.
//! - `leases/{job}/{attempt:06}.beat.json`: the holder's heartbeat, rewritten every
//!   `jobs.heartbeat_s` with a growing `seq`. Another worker takes the job over (claims attempt
//!   `n + 1`) once it has watched the beat not change for `jobs.lease_ttl_s` by its own clock —
//!   no two machines' clocks are compared — or at once when the holder released it.
//! - `leases/{job}/cancel.json`: somebody asked to cancel; the holder sees it at its next beat.
//!
//! A taken-over job restarts from the beginning (the earlier attempt's epochs are dropped): a run
//! is short next to the time a lease takes to expire, and a restart needs no checkpoint format
//! shared between machines. A holder that finds a newer claim has lost the job: it stops
//! training and writes nothing more but its own attempt's last beat (`lost`, with when it really
//! stopped); before publishing it checks that its claim is still the newest. A holder none of
//! whose beats got through for `lease_ttl_s − heartbeat_s` stops too. After `jobs.max_attempts`
//! attempts that stopped without ending the job (released ones not counted), the next worker
//! fails it.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::registry::{store_error, Registry};

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

fn queue_path(job: &str) -> ObjPath {
    ObjPath::from(format!("queue/{job}"))
}

fn claim_path(job: &str, attempt: u32) -> ObjPath {
    ObjPath::from(format!("leases/{job}/{attempt:06}.claim.json"))
}

fn beat_path(job: &str, attempt: u32) -> ObjPath {
    ObjPath::from(format!("leases/{job}/{attempt:06}.beat.json"))
}

fn cancel_path(job: &str) -> ObjPath {
    ObjPath::from(format!("leases/{job}/cancel.json"))
}

impl Registry {
    /// Puts a job in the shared queue.
    pub async fn enqueue(&self, job: &str) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({"job": job, "at": crate::foundation::clock::now_rfc3339()}))
            .expect("queue entry serializes");
        self.store().put(&queue_path(job), body.into()).await.map_err(|e| store_error("queueing a job", e))?;
        Ok(())
    }

    /// Takes a job out of the shared queue (ended, or found ended).
    pub async fn dequeue(&self, job: &str) -> Result<()> {
        match self.store().delete(&queue_path(job)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("removing a job from the queue", e)),
        }
    }

    /// The shared queue, oldest first.
    pub async fn queued(&self) -> Result<Vec<String>> {
        let mut listed: Vec<_> = self
            .store()
            .list(Some(&ObjPath::from("queue")))
            .try_collect()
            .await
            .map_err(|e| store_error("listing the job queue", e))?;
        listed.sort_by(|a, b| a.last_modified.cmp(&b.last_modified).then_with(|| a.location.cmp(&b.location)));
        Ok(listed
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|id| super::check_job_id(id).is_ok())
            .collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &ObjPath) -> Result<Option<T>> {
        let bytes = match self.store().get(path).await {
            Ok(r) => r.bytes().await.map_err(|e| store_error("reading a lease record", e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error("reading a lease record", e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::new(ErrorCode::IntegrityError, format!("{path}: unreadable lease record: {e}")))
    }

    async fn exists(&self, path: &ObjPath) -> Result<bool> {
        match self.store().head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("reading a lease record", e)),
        }
    }

    /// A job's claims, its newest attempt's beat and whether a cancel was asked.
    pub async fn leases(&self, job: &str) -> Result<Leases> {
        let listed: Vec<_> = self
            .store()
            .list(Some(&ObjPath::from(format!("leases/{job}"))))
            .try_collect()
            .await
            .map_err(|e| store_error("listing a job's leases", e))?;
        let mut attempts = Vec::new();
        let mut cancel_requested = false;
        for m in &listed {
            match m.location.filename() {
                Some("cancel.json") => cancel_requested = true,
                Some(f) => {
                    if let Some(n) = f.strip_suffix(".claim.json").and_then(|n| n.parse::<u32>().ok()) {
                        attempts.push(n);
                    }
                }
                None => {}
            }
        }
        attempts.sort_unstable();
        let mut claims = Vec::new();
        for n in attempts {
            if let Some(c) = self.get_json::<Claim>(&claim_path(job, n)).await? {
                claims.push(c);
            }
        }
        let (mut beat, mut released) = (None, 0);
        for c in &claims {
            beat = self.get_json::<Beat>(&beat_path(job, c.attempt)).await?;
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
        let path = claim_path(job, attempt);
        match self.store().put_opts(&path, body.into(), PutOptions::from(PutMode::Create)).await {
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
        self.get_json(&claim_path(job, attempt)).await
    }

    /// Whether `claim` is still the job's claim of its attempt and no newer attempt exists.
    pub async fn holds(&self, claim: &Claim) -> Result<bool> {
        let stored = self.claim_of(&claim.job, claim.attempt).await?;
        if stored.is_none_or(|s| s.token != claim.token) {
            return Ok(false);
        }
        Ok(!self.exists(&claim_path(&claim.job, claim.attempt + 1)).await?)
    }

    pub async fn put_beat(&self, beat: &Beat) -> Result<()> {
        let body = serde_json::to_vec_pretty(beat).expect("beat serializes");
        self.store()
            .put(&beat_path(&beat.job, beat.attempt), body.into())
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
        self.store().put(&cancel_path(job), body.into()).await.map_err(|e| store_error("asking to cancel a job", e))?;
        Ok(())
    }

    pub async fn cancel_requested(&self, job: &str) -> Result<bool> {
        self.exists(&cancel_path(job)).await
    }
}

/// What a worker process has seen of other workers' beats, to tell a live lease from a dead one
/// by its own clock alone.
#[derive(Default)]
pub struct LeaseWatch {
    seen: Mutex<HashMap<String, (String, Instant)>>,
}

impl LeaseWatch {
    /// Whether the newest attempt of `job` may be taken over: released, or its beat (or claim,
    /// before the first beat) unchanged for `ttl` of watching.
    pub fn expired(&self, job: &str, leases: &Leases, ttl: Duration) -> bool {
        let Some(claim) = leases.latest() else { return true };
        let beat = leases.beat.as_ref().filter(|b| b.attempt == claim.attempt);
        if beat.is_some_and(|b| b.released) {
            return true;
        }
        let key = format!("{}/{}/{}", claim.attempt, claim.token, beat.map_or(0, |b| b.seq));
        let mut seen = self.seen.lock().unwrap();
        match seen.get(job) {
            Some((k, since)) if *k == key => since.elapsed() >= ttl,
            _ => {
                seen.insert(job.to_string(), (key, Instant::now()));
                false
            }
        }
    }

    /// Forgets every job but those of `queued` (the others left the queue).
    pub fn retain(&self, queued: &[String]) {
        self.seen.lock().unwrap().retain(|job, _| queued.contains(job));
    }

    /// Forgets a job (ended, or claimed by this process).
    pub fn forget(&self, job: &str) {
        self.seen.lock().unwrap().remove(job);
    }
}
