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
//! A taken-over job goes on from its last training checkpoint in the registry
//! (`checkpoints/{job}/…`, written after every epoch and, at a SIGTERM, where the run stands); the
//! epochs before it come back with it. A holder that finds a newer claim has lost the job: it stops
//! training and writes nothing more but its own attempt's last beat (`lost`, with when it really
//! stopped); before publishing it checks that its claim is still the newest. A holder none of
//! whose beats got through for `lease_ttl_s − heartbeat_s` stops too. After `jobs.max_attempts`
//! attempts that stopped without ending the job (released ones not counted), the next worker
//! fails it.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::registry::jobs::Leases;

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
