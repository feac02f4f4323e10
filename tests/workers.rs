//! Several processes on one S3 bucket with nothing else between them: an API replica
//! (`petal serve --role api`) queues jobs, two `petal worker`s claim them under leases. One
//! worker is killed (SIGKILL) in the middle of a job: once its lease expires the other worker
//! restarts that job and finishes it. Every job succeeds exactly once, and the registry's lease
//! records show that no job ever ran on two workers at once. A worker stopped with SIGTERM
//! releases its job, which another worker restarts without waiting for the lease to expire.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{follow, shapes_spec, shapes_zip, submit, wait_for, weights_cache, S3Server, Server};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const PREFIX: &str = "cluster";

/// Environment shared by every process of the cluster: the bucket, the weights, short leases.
fn cluster_env(s3: &S3Server, cache: &Path) -> Vec<(String, String)> {
    let mut env = s3.env(PREFIX);
    env.extend(
        [
            ("PETAL__WEIGHTS__CACHE", cache.to_str().unwrap()),
            ("PETAL__JOBS__LEASE_TTL_S", "3"),
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

fn start(args: &[&str], env: &[(String, String)], name: &str, dir: &Path) -> Server {
    let env = env.to_vec();
    let (name, work) = (name.to_string(), dir.join(format!("work-{name}")));
    let server = Server::spawn(args, move |cmd: &mut Command| {
        cmd.envs(env).env("PETAL__JOBS__WORKER_NAME", &name).env("PETAL__JOBS__WORK_DIR", &work);
    });
    server.wait_ready(200);
    server
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
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let bucket = s3.root.join("petal").join(PREFIX);
    let env = cluster_env(&s3, &weights_cache(dir.path()));
    let api = start(&["serve", "--role", "api", "--port", "0", "--workers", "2"], &env, "api", dir.path());
    let mut w1 = start(&["worker", "--port", "0"], &env, "w1", dir.path());
    let w2 = start(&["worker", "--port", "0"], &env, "w2", dir.path());
    let client = Client::new();

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
    let zip = shapes_zip(dir.path());
    let first: Value = submit(&client, &api, &small_job(), Some(&zip)).json().unwrap();
    assert_eq!(first["state"], "queued", "{first}");
    let sha = first["dataset"]["sha256"].as_str().unwrap().to_string();
    let mut ids = vec![first["id"].as_str().unwrap().to_string()];
    for _ in 1..6 {
        let mut spec = small_job();
        spec["dataset"]["sha256"] = json!(sha);
        let r = submit(&client, &api, &spec, None);
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string());
    }
    // A seventh, canceled through the API replica while it waits: no worker ever runs it.
    let mut spec = small_job();
    spec["dataset"]["sha256"] = json!(sha);
    let extra: Value = submit(&client, &api, &spec, None).json().unwrap();
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
            // Training (not publishing), an epoch done.
            let training = job["state"] == "running" && job["progress"]["stage"] == "training";
            if job["worker"] == "w1" && training && job["epochs"].as_array().is_some_and(|e| !e.is_empty()) {
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
        let job = wait_for(&client, &api, id, |j| {
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
    // The restarted attempt trained every epoch again: 3 + 3, none left from attempt 1.
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
        assert!(!bucket.join("queue").join(id).exists(), "job {id} is still queued");
        assert_never_twice_at_once(&bucket, job);
    }
    // Canceled through the API replica while a worker runs it: the worker sees the request at its
    // next heartbeat, stops, and publishes nothing.
    let mut spec = shapes_spec("shapes", 1);
    spec["dataset"]["sha256"] = json!(sha);
    spec["epochs2"] = json!(30);
    let long: Value = submit(&client, &api, &spec, None).json().unwrap();
    let long_id = long["id"].as_str().unwrap();
    wait_for(&client, &api, long_id, |j| {
        j["state"] == "running" && j["epochs"].as_array().is_some_and(|e| !e.is_empty())
    });
    let r = client.post(api.url(&format!("/jobs/{long_id}/cancel"))).send().unwrap();
    assert_eq!(r.status(), 202);
    let stopped = wait_for(&client, &api, long_id, |j| j["state"] != "running");
    assert_eq!(stopped["state"], "canceled", "{stopped}");
    assert_eq!(stopped["error"]["code"], "training_canceled", "{stopped}");
    assert_eq!(std::fs::read_dir(&versions_dir).unwrap().count(), 6, "a canceled job publishes nothing");
    assert_never_twice_at_once(&bucket, &stopped);

    let canceled: Value = client.get(api.url(&format!("/jobs/{extra_id}"))).send().unwrap().json().unwrap();
    assert_eq!(canceled["state"], "canceled");
    assert!(lease_records(&bucket, &extra_id).0.values().all(|c| c["worker"].as_str().unwrap().ends_with("(cancel)")));

    // What the API replica streamed of a job run elsewhere: states through to the end.
    let events = follower.join().unwrap();
    let states: Vec<&str> =
        events.iter().filter(|(e, _)| e == "state").filter_map(|(_, d)| d["state"].as_str()).collect();
    assert_eq!(states.last(), Some(&"succeeded"), "{events:?}");
    assert!(events.iter().any(|(e, _)| e == "epoch"), "{events:?}");
    drop(w2);
}

#[test]
fn a_live_lease_is_left_alone_and_a_released_one_is_taken_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let bucket = s3.root.join("petal").join(PREFIX);
    let mut env = cluster_env(&s3, &weights_cache(dir.path()));
    env.retain(|(k, _)| k != "PETAL__JOBS__LEASE_TTL_S");
    env.push(("PETAL__JOBS__LEASE_TTL_S".into(), "2".into()));
    let api = start(&["serve", "--role", "api", "--port", "0"], &env, "api", dir.path());
    let mut w1 = start(&["worker", "--port", "0"], &env, "w1", dir.path());
    let client = Client::new();
    // Phase 2 (the whole network) is the slow part: 30 epochs outlast the watching below.
    let mut spec = shapes_spec("shapes", 1);
    spec["epochs2"] = json!(30);
    let job: Value = submit(&client, &api, &spec, Some(&shapes_zip(dir.path()))).json().unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    wait_for(&client, &api, &id, |j| j["state"] == "running" && j["epochs"].as_array().is_some_and(|e| !e.is_empty()));

    // w2 watches w1's lease, beating, for longer than the lease's TTL: it must not take it.
    let _w2 = start(&["worker", "--port", "0"], &env, "w2", dir.path());
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
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
    let (_, beats) = lease_records(&bucket, &id);
    assert_eq!(beats[&1]["released"], true, "{beats:?}");
    let done = wait_for(&client, &api, &id, |j| j["state"] == "succeeded" || j["state"] == "failed");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["attempt"].as_u64(), done["worker"].as_str()), (Some(2), Some("w2")));
    let warnings = done["warnings"].to_string();
    assert!(warnings.contains("attempt 1 on worker w1 was released when its worker shut down"), "{warnings}");
    assert_never_twice_at_once(&bucket, &done);
}

/// A worker that published a version and died before recording the job's end: the worker that
/// takes the job over finds that version (by its job id), records the end and moves the alias the
/// spec asked for, instead of training and publishing again.
#[test]
fn a_version_published_before_the_holder_died_is_not_published_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let bucket = s3.root.join("petal").join(PREFIX);
    let mut env = cluster_env(&s3, &weights_cache(dir.path()));
    env.retain(|(k, _)| k != "PETAL__JOBS__LEASE_TTL_S");
    env.push(("PETAL__JOBS__LEASE_TTL_S".into(), "1".into()));
    let api = start(&["serve", "--role", "api", "--port", "0"], &env, "api", dir.path());
    let client = Client::new();
    let mut spec = shapes_spec("shapes", 1);
    spec["promote"] = json!("production");
    let job: Value = submit(&client, &api, &spec, Some(&shapes_zip(dir.path()))).json().unwrap();
    let id = job["id"].as_str().unwrap().to_string();

    // The dead holder: its claim of attempt 1, and the version it published.
    let claim = json!({"job": id, "attempt": 1, "worker": "ghost", "claimed_at": "2026-01-01T00:00:00.000Z",
                       "token": "5d0c3b1e-0000-4000-8000-000000000000"});
    std::fs::create_dir_all(bucket.join("leases").join(&id)).unwrap();
    std::fs::write(bucket.join("leases").join(&id).join("000001.claim.json"), claim.to_string()).unwrap();
    let provenance = json!({"hyperparameters": {"job_id": id, "winner": "mobilenet_v2", "backbones": ["mobilenet_v2"]},
                            "metrics": {"best": {"val_top1": 0.75}}, "code": {"petal_version": "0.1.0"}});
    let (onnx, prov) = (dir.path().join("model.onnx"), dir.path().join("provenance.json"));
    std::fs::write(&onnx, b"an ONNX file the ghost exported").unwrap();
    std::fs::write(&prov, provenance.to_string()).unwrap();
    let out = common::petal()
        .args(["registry", "publish", "shapes"])
        .arg(&onnx)
        .arg("--provenance")
        .arg(&prov)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let _w = start(&["worker", "--port", "0"], &env, "w1", dir.path());
    let done = wait_for(&client, &api, &id, |j| j["state"] != "queued" && j["state"] != "running");
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
    assert!(!bucket.join("queue").join(&id).exists());
}
