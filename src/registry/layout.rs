//! Every key of the registry, in one place: nothing else in petal builds a key or parses one.
//!
//! Layout (every key below the configured root folder or bucket prefix; a test in `tests/api.rs`
//! runs whole jobs and checks that each key they leave fits a line here, and that the lines a job
//! run must write are all met):
//! ```text
//! models/{model}/uploads/{upload_id}/{file}        artifact bytes, written first
//! models/{model}/versions/{version:08}.json        the manifest, written last with a conditional
//!                                                  create: a version exists iff its manifest does
//! models/{model}/aliases/{alias}/{seq:012}.json    alias moves, one create-only object each: the
//!                                                  highest seq is the alias's current target; all
//!                                                  of them are its audit history
//! datasets/{sha256}/archive                        an uploaded dataset archive, by its sha256
//! datasets/{sha256}/dataset.json                   what it is (written after the archive: a
//!                                                  dataset exists iff its record does)
//! jobs/{job}.json                                  a fine-tuning job's record (spec, state, progress)
//! queue/{job}                                      a job waiting for a worker (shared queue)
//! leases/{job}/{attempt:06}.claim.json             a worker's create-only claim of one attempt
//! leases/{job}/{attempt:06}.beat.json              that attempt's heartbeat (or release)
//! leases/{job}/cancel.json                         a request to cancel the job
//! checkpoints/{job}/{backbone}/{slot}.ckpt         a running job's training checkpoint of one
//!                                                  backbone (slot: last, best), replaced whole
//! idempotency/{digest}.json                        a `POST /finetune` Idempotency-Key (digest of
//!                                                  caller and key) and the job it created
//! .probe/{uuid}                                    the start-up write check, removed at once
//! ```
use object_store::path::Path as ObjPath;

pub(super) const MODELS: &str = "models";
pub(super) const DATASETS: &str = "datasets";
pub(super) const JOBS: &str = "jobs";
pub(super) const QUEUE: &str = "queue";
pub(super) const LEASES: &str = "leases";
pub(super) const CHECKPOINTS: &str = "checkpoints";
pub(super) const IDEMPOTENCY: &str = "idempotency";

pub(super) fn probe(id: &str) -> ObjPath {
    ObjPath::from(format!(".probe/{id}"))
}

pub(super) fn models() -> ObjPath {
    ObjPath::from(MODELS)
}

pub(super) fn uploads(model: &str) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/uploads"))
}

/// An artifact's key, as its manifest records it.
pub(super) fn upload(model: &str, upload_id: &str, file: &str) -> String {
    format!("{MODELS}/{model}/uploads/{upload_id}/{file}")
}

/// The upload id of a key under `uploads(model)`.
pub(super) fn upload_id_of(key: &ObjPath) -> Option<String> {
    key.parts().nth(3).map(|p| p.as_ref().to_string())
}

pub(super) fn versions(model: &str) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/versions"))
}

pub(super) fn version(model: &str, version: u64) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/versions/{version:08}.json"))
}

/// The version number of a key under `versions(model)`.
pub(super) fn version_of(key: &ObjPath) -> Option<u64> {
    key.filename()?.strip_suffix(".json")?.parse().ok()
}

pub(super) fn aliases(model: &str) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/aliases"))
}

pub(super) fn alias(model: &str, alias: &str) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/aliases/{alias}"))
}

pub(super) fn alias_move(model: &str, alias: &str, seq: u64) -> ObjPath {
    ObjPath::from(format!("{MODELS}/{model}/aliases/{alias}/{seq:012}.json"))
}

pub(super) fn datasets() -> ObjPath {
    ObjPath::from(DATASETS)
}

pub(super) fn dataset_archive(sha256: &str) -> ObjPath {
    ObjPath::from(format!("{DATASETS}/{sha256}/archive"))
}

pub(super) fn dataset_record(sha256: &str) -> ObjPath {
    ObjPath::from(format!("{DATASETS}/{sha256}/dataset.json"))
}

/// The dataset (its sha256) a key under `datasets()` belongs to.
pub(super) fn dataset_of(key: &ObjPath) -> Option<String> {
    key.parts().nth(1).map(|p| p.as_ref().to_string())
}

pub(super) fn is_dataset_record(key: &ObjPath) -> bool {
    key.filename() == Some("dataset.json")
}

pub(super) fn jobs() -> ObjPath {
    ObjPath::from(JOBS)
}

pub(super) fn job(id: &str) -> ObjPath {
    ObjPath::from(format!("{JOBS}/{id}.json"))
}

/// Job ids are UUIDs; keys that hold anything else are not petal's.
fn job_id(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s).is_ok().then(|| s.to_string())
}

/// The job a key under `jobs()` is the record of.
pub(super) fn job_of(key: &ObjPath) -> Option<String> {
    job_id(key.filename()?.strip_suffix(".json")?)
}

pub(super) fn queue() -> ObjPath {
    ObjPath::from(QUEUE)
}

pub(super) fn queue_marker(job: &str) -> ObjPath {
    ObjPath::from(format!("{QUEUE}/{job}"))
}

pub(super) fn leases() -> ObjPath {
    ObjPath::from(LEASES)
}

pub(super) fn job_leases(job: &str) -> ObjPath {
    ObjPath::from(format!("{LEASES}/{job}"))
}

pub(super) fn claim(job: &str, attempt: u32) -> ObjPath {
    ObjPath::from(format!("{LEASES}/{job}/{attempt:06}.claim.json"))
}

pub(super) fn beat(job: &str, attempt: u32) -> ObjPath {
    ObjPath::from(format!("{LEASES}/{job}/{attempt:06}.beat.json"))
}

pub(super) fn cancel(job: &str) -> ObjPath {
    ObjPath::from(format!("{LEASES}/{job}/cancel.json"))
}

pub(super) fn checkpoints() -> ObjPath {
    ObjPath::from(CHECKPOINTS)
}

pub(super) fn job_checkpoints(job: &str) -> ObjPath {
    ObjPath::from(format!("{CHECKPOINTS}/{job}"))
}

pub(super) fn checkpoint(job: &str, backbone: &str, slot: &str) -> ObjPath {
    ObjPath::from(format!("{CHECKPOINTS}/{job}/{backbone}/{slot}.ckpt"))
}

pub(super) fn idempotency_keys() -> ObjPath {
    ObjPath::from(IDEMPOTENCY)
}

pub(super) fn idempotency_key(digest: &str) -> ObjPath {
    ObjPath::from(format!("{IDEMPOTENCY}/{digest}.json"))
}

/// What a key under `job_leases(job)` is.
pub(super) enum LeaseKey {
    Claim(u32),
    Beat,
    Cancel,
}

pub(super) fn lease_key(key: &ObjPath) -> Option<LeaseKey> {
    let f = key.filename()?;
    if f == "cancel.json" {
        return Some(LeaseKey::Cancel);
    }
    if let Some(n) = f.strip_suffix(".claim.json") {
        return n.parse().ok().map(LeaseKey::Claim);
    }
    f.strip_suffix(".beat.json")?.parse::<u32>().ok().map(|_| LeaseKey::Beat)
}

/// The job a key under `queue()`, `leases()` or `checkpoints()` belongs to (its second part), if
/// a job id.
pub(super) fn job_in(key: &ObjPath) -> Option<String> {
    job_id(key.parts().nth(1)?.as_ref())
}

/// The last part of a listed prefix (a model or alias name).
pub(super) fn name_of(prefix: &ObjPath) -> Option<String> {
    prefix.filename().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let id = "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10";
        assert_eq!(job_of(&job(id)).as_deref(), Some(id));
        assert_eq!(job_of(&ObjPath::from("jobs/not-a-uuid.json")), None);
        assert_eq!(job_in(&queue_marker(id)).as_deref(), Some(id));
        assert_eq!(job_in(&claim(id, 3)).as_deref(), Some(id));
        assert_eq!(job_in(&checkpoint(id, "mobilenet_v2", "last")).as_deref(), Some(id));
        assert!(matches!(lease_key(&claim(id, 3)), Some(LeaseKey::Claim(3))));
        assert!(matches!(lease_key(&beat(id, 4)), Some(LeaseKey::Beat)));
        assert!(matches!(lease_key(&cancel(id)), Some(LeaseKey::Cancel)));
        assert_eq!(version_of(&version("m", 12)), Some(12));
        assert_eq!(upload_id_of(&ObjPath::from(upload("m", "u1", "model.onnx"))).as_deref(), Some("u1"));
        assert_eq!(dataset_of(&dataset_archive("ab")).as_deref(), Some("ab"));
        assert!(is_dataset_record(&dataset_record("ab")));
    }
}
