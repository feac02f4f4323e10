//! Several processes on one S3 bucket with nothing else between them: an API replica
//! (`petal serve --role api`) queues jobs, two `petal worker`s claim them under leases. One
//! worker is killed (SIGKILL) in the middle of a job: once its lease expires the other worker
//! restarts that job and finishes it. Every job succeeds exactly once, and the registry's lease
//! records show that no job ever ran on two workers at once. A worker stopped with SIGTERM
//! releases its job, which another worker restarts without waiting for the lease to expire. A job
//! taken over goes on from its last training checkpoint and ends with the same weights as a run
//! never stopped.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{follow, shapes_spec, shapes_zip, submit, wait_for, weights_cache, S3Server, Server};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const PREFIX: &str = "cluster";

/// Environment shared by every process of the cluster: the bucket, the weights, short leases
/// (`ttl_s`).
fn cluster_env(s3: &S3Server, cache: &Path, ttl_s: &str) -> Vec<(String, String)> {
    let mut env = s3.env(PREFIX);
    env.extend(
        [
            ("PETAL__WEIGHTS__CACHE", cache.to_str().unwrap()),
            ("PETAL__JOBS__LEASE_TTL_S", ttl_s),
            ("PETAL__JOBS__HEARTBEAT_S", "0.3"),
            ("PETAL__JOBS__POLL_MS", "100"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env
}

/// A job of a few seconds: three quick epochs of the head, three of the whole network.
fn small_job() -> Value {
    let mut spec = shapes_spec("shapes", 3);
    spec["epochs2"] = json!(3);
    spec
}

/// An API replica on a fresh s3s-fs bucket, with leases of `ttl_s`; workers are started by the
/// test. Fields drop in order: the API first, the folders last.
struct Cluster {
    api: Server,
    client: Client,
    s3: S3Server,
    env: Vec<(String, String)>,
    /// The bucket's folder on disk, where the tests read the registry's records.
    bucket: PathBuf,
    dir: tempfile::TempDir,
    /// Held for the cluster's life: one cluster trains at a time.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Each cluster's workers train on every core with libtorch's thread pool; several clusters at
/// once oversubscribe a small machine so far (measured on a 2-core one: a 25 s test took over
/// 240 s beside four others) that lease and job deadlines say nothing any more. The tests of this
/// file therefore take turns.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    fn new(ttl_s: &str, extra_env: &[(&str, &str)], api_args: &[&str]) -> Cluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let s3 = S3Server::start(&dir.path().join("s3"));
        let bucket = s3.root.join("petal").join(PREFIX);
        let mut env = cluster_env(&s3, &weights_cache(dir.path()), ttl_s);
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let args: Vec<&str> = ["serve", "--role", "api", "--port", "0"].iter().chain(api_args).copied().collect();
        let api = start(&args, &env, "api", dir.path());
        Cluster { api, client: Client::new(), s3, env, bucket, dir, _turn: turn }
    }

    fn worker(&self, name: &str) -> Server {
        start(&["worker", "--port", "0"], &self.env, name, self.dir.path())
    }

    /// Submits `spec` with the generated shapes dataset uploaded: the new job's id.
    fn submit_with_upload(&self, spec: &Value) -> String {
        let job: Value = submit(&self.client, &self.api, spec, Some(&shapes_zip(self.dir.path()))).json().unwrap();
        job["id"].as_str().unwrap_or_else(|| panic!("{job}")).to_string()
    }
}

fn start(args: &[&str], env: &[(String, String)], name: &str, dir: &Path) -> Server {
    let env = env.to_vec();
    let (name, work) = (name.to_string(), dir.join(format!("work-{name}")));
    let server = Server::spawn(args, move |cmd: &mut Command| {
        cmd.envs(env).env("PETAL__JOBS__WORKER_NAME", &name).env("PETAL__JOBS__WORK_DIR", &work);
    });
    server.wait_ready(200);
    server
}

/// Waits (up to 30 s) for the worker that ended `job` to take it out of the queue: that comes
/// just after the job's end is recorded.
fn assert_dequeued(bucket: &Path, job: &str) {
    let marker = bucket.join("queue").join(job);
    let deadline = Instant::now() + Duration::from_secs(30);
    while marker.exists() {
        assert!(Instant::now() < deadline, "job {job} is still queued");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes the claim of attempt `n` of `job` by a worker that is gone.
fn ghost_claim(bucket: &Path, job: &str, n: u32) {
    let dir = bucket.join("leases").join(job);
    std::fs::create_dir_all(&dir).unwrap();
    let claim = json!({"job": job, "attempt": n, "worker": format!("ghost{n}"),
                       "claimed_at": "2026-01-01T00:00:00.000Z", "token": format!("token-{n}")});
    std::fs::write(dir.join(format!("{n:06}.claim.json")), claim.to_string()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The lease records of `job` in the bucket's folder: claims by attempt, beats by attempt.
fn lease_records(bucket: &Path, job: &str) -> (BTreeMap<u64, Value>, BTreeMap<u64, Value>) {
    let (mut claims, mut beats) = (BTreeMap::new(), BTreeMap::new());
    let dir = bucket.join("leases").join(job);
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".claim.json") {
            claims.insert(n.parse().unwrap(), read_json(&dir.join(&name)));
        } else if let Some(n) = name.strip_suffix(".beat.json") {
            beats.insert(n.parse().unwrap(), read_json(&dir.join(&name)));
        }
    }
    (claims, beats)
}

/// From the registry's records alone: attempts 1..n of `job`, each claimed by one worker, and
/// each attempt's last heartbeat before the next attempt was claimed.
fn assert_never_twice_at_once(bucket: &Path, job: &Value) {
    let id = job["id"].as_str().unwrap();
    let (claims, beats) = lease_records(bucket, id);
    let attempts: Vec<u64> = claims.keys().copied().collect();
    assert_eq!(attempts, (1..=attempts.len() as u64).collect::<Vec<_>>(), "job {id}: attempts {attempts:?}");
    assert_eq!(job["attempt"].as_u64(), attempts.last().copied(), "job {id}: the record names the last attempt");
    assert_eq!(job["worker"], claims[attempts.last().unwrap()]["worker"], "job {id}");
    for (n, claim) in &claims {
        assert_eq!(claim["attempt"].as_u64(), Some(*n));
        let Some(next) = claims.get(&(n + 1)) else { continue };
        let last_beat = beats.get(n).unwrap_or_else(|| panic!("job {id}: attempt {n} never beat"));
        let (beat_at, next_at) = (last_beat["at"].as_str().unwrap(), next["claimed_at"].as_str().unwrap());
        assert!(
            beat_at < next_at,
            "job {id}: attempt {n} on {} beat at {beat_at}, after attempt {} on {} was claimed at {next_at}",
            claim["worker"],
            n + 1,
            next["worker"]
        );
        assert!(claim["claimed_at"].as_str().unwrap() < next_at);
    }
}

#[test]
fn workers_share_an_s3_queue_and_take_over_a_killed_workers_job() {
    let c = Cluster::new("3", &[], &["--workers", "2"]);
    let (api, client, bucket) = (&c.api, &c.client, &c.bucket);
    let mut w1 = c.worker("w1");
    let w2 = c.worker("w2");

    // A worker serves its health, nothing else.
    let r = client.get(w1.url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let readyz: Value = r.json().unwrap();
    assert!(readyz.to_string().contains("polling the shared queue"), "{readyz}");
    let r = client.post(w1.url("/finetune")).send().unwrap();
    assert_eq!(r.status(), 404);
    // The container health check: `petal probe URL` exits 0 on 2xx only.
    let probe = |url: &str| common::petal().args(["probe", url, "--timeout", "5"]).status().unwrap().success();
    assert!(probe(&w1.url("/healthz")));
    assert!(!probe(&w1.url("/finetune")), "a 404 is not healthy");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(!probe(&format!("http://{closed}/healthz")), "nothing listening is not healthy");

    // Six jobs: the first uploads the dataset, the others name it by sha256.
    let zip = shapes_zip(c.dir.path());
    let first: Value = submit(client, api, &small_job(), Some(&zip)).json().unwrap();
    assert_eq!(first["state"], "queued", "{first}");
    let sha = first["dataset"]["sha256"].as_str().unwrap().to_string();
    let mut ids = vec![first["id"].as_str().unwrap().to_string()];
    for _ in 1..6 {
        let mut spec = small_job();
        spec["dataset"]["sha256"] = json!(sha);
        let r = submit(client, api, &spec, None);
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string());
    }
    // A seventh, canceled through the API replica while it waits: no worker ever runs it.
    let mut spec = small_job();
    spec["dataset"]["sha256"] = json!(sha);
    let extra: Value = submit(client, api, &spec, None).json().unwrap();
    let extra_id = extra["id"].as_str().unwrap().to_string();
    let r = client.post(api.url(&format!("/jobs/{extra_id}/cancel"))).send().unwrap();
    assert_eq!(r.status(), 202);
    let canceled: Value = r.json().unwrap();
    assert_eq!(canceled["state"], "canceled", "{canceled}");

    // The last job is followed through the API replica, which reads it from the registry.
    let follower = {
        let (client, base, id) = (client.clone(), api.base.clone(), ids[5].clone());
        std::thread::spawn(move || follow(&client, &base, &id))
    };

    // SIGKILL w1 in the middle of a job: running, an epoch done.
    let deadline = Instant::now() + Duration::from_secs(240);
    let killed = 'found: loop {
        for id in &ids {
            let job: Value = client.get(api.url(&format!("/jobs/{id}"))).send().unwrap().json().unwrap();
            // Training (not publishing), an epoch done, some still to go.
            let training = job["state"] == "running" && job["progress"]["stage"] == "training";
            let epochs = job["epochs"].as_array().map_or(0, Vec::len);
            if job["worker"] == "w1" && training && (1..5).contains(&epochs) {
                break 'found id.clone();
            }
        }
        assert!(Instant::now() < deadline, "w1 never ran a job");
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = w1.signal_and_wait("KILL");
    assert!(!status.success());

    let mut finals = Vec::new();
    for id in &ids {
        let job = wait_for(client, api, id, |j| {
            j["state"].as_str().is_some_and(|s| ["succeeded", "failed", "canceled"].contains(&s))
        });
        assert_eq!(job["state"], "succeeded", "{job}");
        finals.push(job);
    }
    let taken_over = finals.iter().find(|j| j["id"] == killed.as_str()).unwrap();
    assert_eq!(taken_over["worker"], "w2", "{taken_over}");
    assert_eq!(taken_over["attempt"], 2, "{taken_over}");
    let warnings = taken_over["warnings"].to_string();
    assert!(warnings.contains("attempt 1 on worker w1 stopped heartbeating"), "{warnings}");
    // Each epoch once, over both attempts: attempt 2 went on from attempt 1's last checkpoint.
    assert_eq!(taken_over["epochs"].as_array().unwrap().len(), 6, "{taken_over}");

    // Exactly once: six versions, one per job, and nothing left in the queue.
    let versions_dir = bucket.join("models/shapes/versions");
    let mut published = BTreeSet::new();
    for e in std::fs::read_dir(&versions_dir).unwrap() {
        let manifest = read_json(&e.unwrap().path());
        let command = manifest["provenance"]["command"].as_str().unwrap_or_default();
        let job = command.split_once("the spec of job ").map(|(_, rest)| rest[..36].to_string());
        assert!(published.insert(job.unwrap_or_else(|| panic!("{manifest}"))), "published twice: {manifest}");
    }
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(published, expected);
    for (id, job) in ids.iter().zip(&finals) {
        assert_eq!(job["result"]["model"], "shapes");
        assert_dequeued(bucket, id);
        assert_never_twice_at_once(bucket, job);
    }
    // Canceled through the API replica while a worker runs it: the worker sees the request at its
    // next heartbeat, stops, and publishes nothing.
    let mut spec = shapes_spec("shapes", 1);
    spec["dataset"]["sha256"] = json!(sha);
    spec["epochs2"] = json!(30);
    let long: Value = submit(client, api, &spec, None).json().unwrap();
    let long_id = long["id"].as_str().unwrap();
    wait_for(client, api, long_id, |j| {
        j["state"] == "running" && j["epochs"].as_array().is_some_and(|e| !e.is_empty())
    });
    let r = client.post(api.url(&format!("/jobs/{long_id}/cancel"))).send().unwrap();
    assert_eq!(r.status(), 202);
    let stopped = wait_for(client, api, long_id, |j| j["state"] != "running");
    assert_eq!(stopped["state"], "canceled", "{stopped}");
    assert_eq!(stopped["error"]["code"], "training_canceled", "{stopped}");
    assert_eq!(std::fs::read_dir(&versions_dir).unwrap().count(), 6, "a canceled job publishes nothing");
    assert_never_twice_at_once(bucket, &stopped);

    let canceled: Value = client.get(api.url(&format!("/jobs/{extra_id}"))).send().unwrap().json().unwrap();
    assert_eq!(canceled["state"], "canceled");
    assert!(lease_records(bucket, &extra_id).0.values().all(|c| c["worker"].as_str().unwrap().ends_with("(cancel)")));

    // What the API replica streamed of a job run elsewhere: states through to the end.
    let events = follower.join().unwrap();
    let states: Vec<&str> =
        events.iter().filter(|(e, _)| e == "state").filter_map(|(_, d)| d["state"].as_str()).collect();
    assert_eq!(states.last(), Some(&"succeeded"), "{events:?}");
    assert!(events.iter().any(|(e, _)| e == "epoch"), "{events:?}");
    // Every process read the S3 secret from its environment; none wrote it to its log.
    for server in [api, &w1, &w2] {
        assert!(!server.log_text().contains(common::S3_SECRET_KEY), "the S3 secret key reached a log");
    }
    drop(w2);
}

/// A version's trained weights (its `checkpoint.safetensors` artifact), tensor by tensor, as
/// bytes (the file's own bytes also hold metadata in no fixed order).
fn trained_weights(bucket: &Path, model: &str, version: u64) -> Vec<(String, Vec<u8>)> {
    let manifest = read_json(&bucket.join(format!("models/{model}/versions/{version:08}.json")));
    let artifacts = manifest["artifacts"].as_array().unwrap();
    let a = artifacts.iter().find(|a| a["name"] == "checkpoint.safetensors").unwrap_or_else(|| panic!("{manifest}"));
    let bytes = std::fs::read(bucket.join(a["path"].as_str().unwrap())).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = petal::train::weights::read_bytes(&bytes)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let t = t.contiguous();
            let mut b = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut b, t.numel());
            (name, b)
        })
        .collect();
    tensors.sort();
    assert!(tensors.len() > 100, "{} tensors", tensors.len());
    tensors
}

/// Waits (up to 240 s) until `job`'s record says `ready`; returns the record.
fn wait_until(c: &Cluster, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let j: Value = c.client.get(c.api.url(&format!("/jobs/{id}"))).send().unwrap().json().unwrap();
        if j["state"] == "running" && ready(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never got there: {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resume across machines: the same job three times — once uninterrupted; once with its worker
/// killed (SIGKILL) in phase 2, taken over by another worker that goes on from the last epoch's
/// checkpoint; once with its worker stopped (SIGTERM) in the middle of a phase-2 epoch, which
/// saves a checkpoint where it stands and releases the job. All three publish the very same
/// weights; the job records say where each run went on from and after how many optimiser steps;
/// the checkpoints are gone once the jobs end.
#[test]
fn a_job_whose_worker_is_killed_or_stopped_goes_on_from_its_checkpoint_with_the_same_weights() {
    let c = Cluster::new("2", &[], &[]);
    let (api, client, bucket) = (&c.api, &c.client, &c.bucket);
    let mut spec = shapes_spec("resumed", 2);
    spec["epochs2"] = json!(4);
    let mut w1 = c.worker("w1");
    let reference = c.submit_with_upload(&spec);
    let done = wait_for(client, api, &reference, |j| j["state"] == "succeeded" || j["state"] == "failed");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["resumes"].is_null(), "{done}");
    assert_eq!(done["checkpoint"]["next"]["phase"], 3, "the last checkpoint is the trained backbone's: {done}");
    assert_dequeued(bucket, &reference);
    assert_eq!(
        common::files_under(&bucket.join("checkpoints").join(&reference)),
        0,
        "an ended job's checkpoints are removed"
    );
    let steps = done["progress"]["steps"].as_u64().unwrap();
    let sha = done["dataset"]["sha256"].as_str().unwrap().to_string();
    spec["dataset"]["sha256"] = json!(sha);

    // SIGKILL during phase 2's second epoch: w2 goes on from the end of its first. Its events,
    // followed through the API replica, say so.
    let killed = submit(client, api, &spec, None).json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let follower = {
        let (client, base, id) = (client.clone(), api.base.clone(), killed.clone());
        std::thread::spawn(move || follow(&client, &base, &id))
    };
    // Killed once the checkpoint of phase 2's first epoch is saved.
    wait_until(&c, &killed, |j| j["checkpoint"]["next"]["phase"] == 2 && j["checkpoint"]["next"]["epoch"] == 1);
    assert!(bucket.join("checkpoints").join(&killed).join("mobilenet_v2/last.ckpt").is_file());
    assert!(!w1.signal_and_wait("KILL").success());
    let _w2 = c.worker("w2");
    let done = wait_for(client, api, &killed, |j| j["state"] == "succeeded" || j["state"] == "failed");
    assert_eq!((done["state"].as_str(), done["attempt"].as_u64()), (Some("succeeded"), Some(2)), "{done}");
    let r = &done["resumes"][0];
    assert_eq!((r["attempt"].as_u64(), r["from"].as_str()), (Some(2), Some("last")), "{done}");
    let (epoch, step) = (r["next"]["epoch"].as_u64().unwrap(), r["next"]["step"].as_u64().unwrap());
    assert_eq!((r["next"]["phase"].as_u64(), step), (Some(2), 0), "an epoch's end: {r}");
    assert!(epoch >= 1, "{r}");
    assert_eq!(r["optimizer_steps"].as_u64(), Some(epoch * steps), "{r}");
    assert_eq!(r["epochs_restored"].as_u64(), Some(2 + epoch), "{r}");
    assert_eq!(done["epochs"].as_array().unwrap().len(), 6, "each epoch once: {done}");
    assert!(done["warnings"].to_string().contains("going on from its last checkpoint"), "{done}");
    let events = follower.join().unwrap();
    let resumed: Vec<&Value> = events.iter().filter(|(e, _)| e == "resumed").map(|(_, d)| d).collect();
    assert_eq!(resumed.len(), 1, "{events:?}");
    assert_eq!((&resumed[0]["from"], &resumed[0]["next"]), (&r["from"], &r["next"]), "{events:?}");
    assert!(events.iter().any(|(e, d)| e == "checkpoint" && d["next"]["phase"] == 2), "{events:?}");
    let epochs: Vec<(u64, u64)> = events
        .iter()
        .filter(|(e, _)| e == "epoch")
        .map(|(_, d)| (d["phase"].as_u64().unwrap(), d["epoch"].as_u64().unwrap()))
        .collect();
    let distinct: BTreeSet<(u64, u64)> = epochs.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "{epochs:?}");
    // At most the epoch in progress when w1 died is run (and sent) again; the restored ones are not.
    assert!(epochs.len() <= 7, "epochs sent again after the takeover: {epochs:?}");

    // SIGTERM in the middle of a phase-2 epoch: w2 saves where it stands and releases the job.
    let stopped = submit(client, api, &spec, None).json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let mut w2 = _w2;
    wait_until(&c, &stopped, |j| j["progress"]["phase"] == 2 && j["progress"]["step"].as_u64() >= Some(2));
    let status = w2.signal_and_wait("TERM");
    assert!(status.success(), "{status}\n{}", w2.log_text());
    let released: Value = client.get(api.url(&format!("/jobs/{stopped}"))).send().unwrap().json().unwrap();
    assert_eq!(released["state"], "queued", "{released}");
    let saved = &released["checkpoint"];
    assert_eq!(saved["on_stop"], true, "saved when it was stopped: {released}");
    let _w3 = c.worker("w3");
    let done = wait_for(client, api, &stopped, |j| j["state"] == "succeeded" || j["state"] == "failed");
    assert_eq!((done["state"].as_str(), done["attempt"].as_u64()), (Some("succeeded"), Some(2)), "{done}");
    let r = &done["resumes"][0];
    let (epoch, step) = (r["next"]["epoch"].as_u64().unwrap(), r["next"]["step"].as_u64().unwrap());
    assert_eq!(r["next"], saved["next"], "it went on where it was stopped: {r}");
    assert_eq!(r["next"]["phase"].as_u64(), Some(2), "{r}");
    assert_eq!(r["optimizer_steps"].as_u64(), Some(epoch * steps + step), "{r}");
    assert_eq!(r["optimizer_steps"], saved["optimizer_steps"], "{r}");
    assert_eq!(done["epochs"].as_array().unwrap().len(), 6, "each epoch once: {done}");

    // The same weights, bit for bit, three times.
    let want = trained_weights(bucket, "resumed", 1);
    assert!(trained_weights(bucket, "resumed", 2) == want, "killed and resumed: other weights");
    assert!(trained_weights(bucket, "resumed", 3) == want, "stopped and resumed: other weights");
    for id in [&killed, &stopped] {
        assert_dequeued(bucket, id);
        assert_eq!(common::files_under(&bucket.join("checkpoints").join(id)), 0, "{id}: checkpoints removed");
    }
}

#[test]
fn a_live_lease_is_left_alone_and_a_released_one_is_taken_at_once() {
    let c = Cluster::new("4", &[], &[]);
    let (api, client, bucket) = (&c.api, &c.client, &c.bucket);
    let mut w1 = c.worker("w1");
    // Phase 2 (the whole network) is the slow part: 30 epochs outlast the watching below.
    let mut spec = shapes_spec("shapes", 1);
    spec["epochs2"] = json!(30);
    let id = c.submit_with_upload(&spec);
    wait_for(client, api, &id, |j| j["state"] == "running" && j["epochs"].as_array().is_some_and(|e| !e.is_empty()));

    // w2 watches w1's lease, beating, for longer than the lease's TTL: it must not take it.
    let _w2 = c.worker("w2");
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(6) {
        let j: Value = client.get(api.url(&format!("/jobs/{id}"))).send().unwrap().json().unwrap();
        assert_eq!(
            (j["state"].as_str(), j["worker"].as_str(), j["attempt"].as_u64()),
            (Some("running"), Some("w1"), Some(1)),
            "{j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: w1 stops at its next step, puts the job back and releases the lease; w2 restarts it.
    let status = w1.signal_and_wait("TERM");
    assert!(status.success(), "a worker stopped with SIGTERM exits 0: {status}\n{}", w1.log_text());
    let (_, beats) = lease_records(bucket, &id);
    assert_eq!(beats[&1]["released"], true, "{beats:?}");
    let done = wait_for(client, api, &id, |j| j["state"] == "succeeded" || j["state"] == "failed");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["attempt"].as_u64(), done["worker"].as_str()), (Some(2), Some("w2")));
    let warnings = done["warnings"].to_string();
    assert!(warnings.contains("attempt 1 on worker w1 was released when its worker shut down"), "{warnings}");
    assert_never_twice_at_once(bucket, &done);
}

/// A worker that published a version and died before recording the job's end: the worker that
/// takes the job over finds that version (by its job id), records the end and moves the alias the
/// spec asked for, instead of training and publishing again.
#[test]
fn a_version_published_before_the_holder_died_is_not_published_twice() {
    let c = Cluster::new("1", &[], &[]);
    let (api, client, bucket) = (&c.api, &c.client, &c.bucket);
    let mut spec = shapes_spec("shapes", 1);
    spec["promote"] = json!("production");
    let id = c.submit_with_upload(&spec);

    // The dead holder: its claim of attempt 1, and the version it published.
    ghost_claim(bucket, &id, 1);
    let provenance = json!({"hyperparameters": {"job_id": id, "winner": "mobilenet_v2", "backbones": ["mobilenet_v2"]},
                            "metrics": {"best": {"val_top1": 0.75}}, "code": {"petal_version": "0.1.0"}});
    let (onnx, prov) = (c.dir.path().join("model.onnx"), c.dir.path().join("provenance.json"));
    std::fs::write(&onnx, b"an ONNX file the ghost exported").unwrap();
    std::fs::write(&prov, provenance.to_string()).unwrap();
    let out = common::petal()
        .args(["registry", "publish", "shapes"])
        .arg(&onnx)
        .arg("--provenance")
        .arg(&prov)
        .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let _w = c.worker("w1");
    let done = wait_for(client, api, &id, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["attempt"].as_u64(), done["worker"].as_str()), (Some(2), Some("w1")), "{done}");
    assert_eq!(done["result"]["version"], 1, "{done}");
    assert_eq!(done["result"]["best_val_accuracy"], 0.75, "{done}");
    assert_eq!(done["result"]["promoted"], "production", "{done}");
    assert!(done["warnings"].to_string().contains("published by the earlier attempt"), "{done}");
    assert!(done["epochs"].as_array().unwrap().is_empty(), "nothing was trained again: {done}");
    assert_eq!(std::fs::read_dir(bucket.join("models/shapes/versions")).unwrap().count(), 1);
    let model: Value = client.get(api.url("/models/shapes")).send().unwrap().json().unwrap();
    assert!(model.to_string().contains("production"), "{model}");
    assert_dequeued(bucket, &id);
}

/// A job whose attempts all died (here: three claims by workers that never beat): the next worker
/// fails it with `job_interrupted` instead of running it a fourth time. An attempt its worker
/// released at shutdown does not count.
#[test]
fn a_job_that_keeps_losing_its_workers_is_failed_not_retried_forever() {
    let c = Cluster::new("1", &[("PETAL__JOBS__MAX_ATTEMPTS", "2")], &[]);
    let (api, client, bucket) = (&c.api, &c.client, &c.bucket);
    let id = c.submit_with_upload(&small_job());
    // Attempt 1 died; attempt 2 was released by a worker shutting down; attempt 3 died.
    for n in 1..=3 {
        ghost_claim(bucket, &id, n);
    }
    let released = json!({"job": id, "attempt": 2, "worker": "ghost2", "seq": 7,
                          "at": "2026-01-01T00:00:01.000Z", "released": true});
    std::fs::write(bucket.join("leases").join(&id).join("000002.beat.json"), released.to_string()).unwrap();

    let _w = c.worker("w1");
    let done = wait_for(client, api, &id, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "job_interrupted", "{done}");
    assert!(done["error"]["message"].as_str().unwrap().starts_with("2 attempts stopped"), "{done}");
    assert_eq!(done["attempt"], 4, "{done}");
    assert!(done["epochs"].as_array().unwrap().is_empty(), "{done}");
    assert!(!bucket.join("models/shapes").exists(), "nothing published");
    assert_dequeued(bucket, &id);
}

/// The store goes away while a worker trains: with no heartbeat reaching it for about the lease's
/// TTL, the worker stops training (another worker may take the job over by then), and once the
/// store is back the job is taken over — here by the same worker — and finishes, one attempt
/// after the other.
#[test]
fn a_worker_that_cannot_heartbeat_stops_training() {
    let mut c = Cluster::new("3", &[], &[]);
    let w1 = c.worker("w1");
    let mut spec = shapes_spec("shapes", 1);
    spec["epochs2"] = json!(30);
    let id = c.submit_with_upload(&spec);
    wait_for(&c.client, &c.api, &id, |j| {
        j["state"] == "running" && j["epochs"].as_array().is_some_and(|e| !e.is_empty())
    });

    c.s3.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w1.log_text().contains("lost the job's lease") {
        assert!(Instant::now() < deadline, "w1 went on training without heartbeats:\n{}", w1.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(w1.log_text().contains("no heartbeat reached the registry for too long"), "{}", w1.log_text());
    c.s3.restart();

    let done = wait_for(&c.client, &c.api, &id, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["attempt"].as_u64(), done["worker"].as_str()), (Some(2), Some("w1")), "{done}");
    assert_eq!(done["epochs"].as_array().unwrap().len(), 31, "each epoch once, over both attempts: {done}");
    assert_never_twice_at_once(&c.bucket, &done);
    assert_eq!(std::fs::read_dir(c.bucket.join("models/shapes/versions")).unwrap().count(), 1);
}
