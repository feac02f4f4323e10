//! Faults under `petal serve` (one process, role `all`): the S3 store gone during an upload and
//! during a job's publish (checkpoint and ONNX), and the local registry's disk full at publish.
//! Each ends in a clear job state or answer, leaves no version or dataset half-written, and
//! petal works again once the fault is gone. (A process killed mid-job is in tests/api.rs, a
//! worker killed mid-job in tests/workers.rs.)
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{shapes_spec, shapes_zip, submit, wait_for, weights_cache, S3Server, Server};
use reqwest::blocking::Client;
use serde_json::Value;

fn serve(dir: &Path, env: Vec<(String, String)>) -> Server {
    let (cache, work) = (weights_cache(dir), dir.join("work"));
    let server = Server::spawn(&["serve", "--port", "0"], move |cmd: &mut Command| {
        cmd.envs(env).env("PETAL__WEIGHTS__CACHE", &cache).env("PETAL__JOBS__WORK_DIR", &work);
    });
    server.wait_ready(200);
    server
}

fn error_of(r: reqwest::blocking::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    (status, v["error"]["code"].as_str().unwrap_or("").into(), v["error"]["message"].as_str().unwrap_or("").into())
}

fn terminal(j: &Value) -> bool {
    ["succeeded", "failed", "canceled"].contains(&j["state"].as_str().unwrap_or(""))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Published versions: their manifests.
fn versions(registry: &Path, model: &str) -> Vec<PathBuf> {
    files_under(&registry.join("models").join(model).join("versions"))
}

/// The same job again, on the dataset stored before: it must succeed now.
fn recovers(client: &Client, server: &Server, sha: &str) -> Value {
    let mut spec = shapes_spec("shapes", 1);
    spec["dataset"]["sha256"] = serde_json::json!(sha);
    let r = submit(client, server, &spec, None);
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let done = wait_for(client, server, &id, terminal);
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

#[test]
fn the_s3_store_gone_during_an_upload_and_a_publish() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&dir.path().join("s3"));
    let bucket = s3.root.join("petal").join("faults");
    let server = serve(dir.path(), s3.env("faults"));
    let client = Client::new();
    let zip = shapes_zip(dir.path());

    // Upload while the store is down: 503 with a stable code; nothing stored; the server lives.
    s3.stop();
    let (status, code, message) = error_of(submit(&client, &server, &shapes_spec("shapes", 1), Some(&zip)));
    assert_eq!((status, code.as_str()), (503, "registry_unavailable"), "{message}");
    eprintln!("upload with the store down: {status} {code}: {message}");
    assert_eq!(client.get(server.url("/healthz")).send().unwrap().status(), 200);
    s3.restart();
    assert!(files_under(&bucket.join("datasets")).is_empty(), "{:?}", files_under(&bucket));
    assert!(files_under(&bucket.join("jobs")).is_empty(), "no job was recorded");

    // The store goes away while the job trains and stays away through its publish (checkpoint
    // and ONNX): the job fails with registry_unavailable, its end recorded once the store is back.
    let r = submit(&client, &server, &shapes_spec("shapes", 2), Some(&zip));
    assert_eq!(r.status(), 202);
    let job: Value = r.json().unwrap();
    let (id, sha) = (job["id"].as_str().unwrap().to_string(), job["dataset"]["sha256"].as_str().unwrap().to_string());
    wait_for(&client, &server, &id, |j| j["progress"]["stage"] == "training");
    s3.stop();
    let failed = wait_for(&client, &server, &id, terminal);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "registry_unavailable", "{failed}");
    eprintln!("publish with the store down: {}", failed["error"]["message"]);
    s3.restart();
    let record = bucket.join("jobs").join(format!("{id}.json"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stored: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        if stored["state"] == "failed" {
            assert_eq!(stored["error"]["code"], "registry_unavailable", "{stored}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job's end never reached the store: {stored}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(versions(&bucket, "shapes").is_empty(), "no version may appear: {:?}", versions(&bucket, "shapes"));

    // Back: the same job succeeds, as version 1, and the registry verifies.
    let done = recovers(&client, &server, &sha);
    assert_eq!(done["result"]["version"], 1, "{done}");
    let out = common::petal()
        .args(["registry", "verify", "shapes"])
        .envs(s3.env("faults").iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A tmpfs of `size` at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(ok.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn the_local_registrys_disk_full_at_publish() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    // Room for the dataset and the records, not for the model (about 9 MB).
    let Some(disk) = Tmpfs::mount(&registry, "2m") else {
        // Mounting needs root (CI and the development machines run as root); say so loudly.
        eprintln!("SKIPPED: cannot mount a tmpfs here, so the disk-full case was not run");
        return;
    };
    let env = vec![("PETAL__REGISTRY__PATH".to_string(), registry.to_str().unwrap().to_string())];
    let mut server = serve(dir.path(), env);
    let client = Client::new();
    let r = submit(&client, &server, &shapes_spec("shapes", 1), Some(&shapes_zip(dir.path())));
    assert_eq!(r.status(), 202);
    let job: Value = r.json().unwrap();
    let (id, sha) = (job["id"].as_str().unwrap().to_string(), job["dataset"]["sha256"].as_str().unwrap().to_string());
    let failed = wait_for(&client, &server, &id, terminal);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "registry_unavailable", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("No space left on device"), "{message}");
    eprintln!("publish on a full disk: {message}");
    assert!(versions(&registry, "shapes").is_empty(), "no version may appear: {:?}", versions(&registry, "shapes"));
    // Nothing half-written is left where a reader would take it for whole.
    for f in files_under(&registry) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains('#'), "a staging file was left behind: {}", f.display());
        if name.ends_with(".json") {
            let parsed: Result<Value, _> = serde_json::from_slice(&std::fs::read(&f).unwrap());
            assert!(parsed.is_ok(), "{} is not whole JSON", f.display());
        }
    }
    assert_eq!(client.get(server.url("/healthz")).send().unwrap().status(), 200);

    // Room again: the same job succeeds.
    disk.resize("64m");
    let done = recovers(&client, &server, &sha);
    assert_eq!(done["result"]["version"], 1, "{done}");
    server.signal_and_wait("TERM");
    drop(disk);
}
