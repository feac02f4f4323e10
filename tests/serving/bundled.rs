//! The bundled flower model: committed in `registry/`, seeded into the embedded registry and
//! served by default, with its provenance, model card and integrity check; it classifies real
//! Flowers 102 photos it never trained on (tests/fixtures) through the HTTP API and `petal eval`.

use std::path::{Path, PathBuf};

use crate::common::{self, petal, Server};

const MODEL: &str = "flowers102@production";

/// (photo, true class name) for every fixture.
fn fixtures() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flowers102");
    let mut out = Vec::new();
    for class in std::fs::read_dir(&root).unwrap() {
        let class = class.unwrap().path();
        let name = class.file_name().unwrap().to_string_lossy().into_owned();
        for photo in std::fs::read_dir(&class).unwrap() {
            out.push((photo.unwrap().path(), name.clone()));
        }
    }
    out.sort();
    assert!(out.len() >= 5, "expected a handful of fixtures, found {}", out.len());
    out
}

fn repo_registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("registry")
}

fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run petal");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_bundled_model_is_small_intact_and_documented() {
    let total: u64 = walk(&repo_registry().join("models")).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(total < 20 << 20, "the bundled registry holds {total} bytes; the limit is 20 MB");

    let verified = run_ok(petal().args(["registry", "verify", MODEL, "--registry"]).arg(repo_registry()));
    assert!(verified.contains("flowers102"), "{verified}");

    let manifest: serde_json::Value =
        serde_json::from_str(&run_ok(petal().args(["registry", "show", MODEL, "--registry"]).arg(repo_registry())))
            .unwrap();
    let p = &manifest["provenance"];
    assert_eq!(p["base_weights"]["arch"], "mobilenet_v2");
    assert_eq!(p["base_weights"]["catalog"], "MobileNet_V2_Weights.IMAGENET1K_V1");
    let licences = p["base_weights"]["licences"].as_array().unwrap();
    assert!(licences.iter().any(|l| l["commercial_use"] == false), "{licences:?}");
    assert_eq!(p["dataset"]["name"], "Oxford Flowers 102");
    assert_eq!(p["dataset"]["class_names"].as_array().unwrap().len(), 102);
    assert_eq!(p["dataset"]["counts"]["train"], 6149);
    assert_eq!(p["dataset"]["counts"]["val"], 2040);
    assert!(p["dataset"]["terms"].as_str().unwrap().contains("research"), "{}", p["dataset"]);
    assert!(p["metrics"]["best"]["val_top1"].as_f64().unwrap() >= 0.95, "{}", p["metrics"]["best"]);
    assert_eq!(p["metrics"]["per_epoch"].as_array().unwrap().len(), 24);
    assert!(p["command"].as_str().unwrap().contains("petal finetune"), "{}", p["command"]);
    assert!(p["hardware"]["logical_cores"].as_u64().is_some(), "{}", p["hardware"]);
    assert!(p["recipe"]["phase2"]["epochs"].as_u64() == Some(8), "{}", p["recipe"]);
    let artifacts: Vec<&str> =
        manifest["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(artifacts.contains(&"model.onnx"), "{artifacts:?}");
    assert!(!artifacts.contains(&"checkpoint.safetensors"), "serving needs no training checkpoint: {artifacts:?}");

    let card = run_ok(petal().args(["registry", "show", MODEL, "--card", "--registry"]).arg(repo_registry()));
    for needle in ["# flowers102", "Oxford Flowers 102", "Non-commercial use only", "## Reproduce", "val_top1"] {
        assert!(card.contains(needle), "the card lacks {needle:?}:\n{card}");
    }
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/flowers102_model_card.md")).unwrap();
    assert_eq!(committed, card, "docs/flowers102_model_card.md differs from the manifest's card: regenerate it");
}

#[test]
fn the_default_server_classifies_flower_photos_over_http() {
    let server = Server::start_with(Server::bundled);
    let ready = server.wait_ready(200);
    assert!(ready.to_string().contains("flowers102 version 2 on CPUExecutionProvider"), "{ready}");
    let client = reqwest::blocking::Client::new();
    for (photo, class) in fixtures() {
        let r = client
            .post(server.url("/classify?top_k=3"))
            .header("content-type", "image/jpeg")
            .body(std::fs::read(&photo).unwrap())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["model"], "flowers102");
        assert_eq!(v["predictions"][0]["name"], class.as_str(), "{}: {v}", photo.display());
        assert!(v["predictions"][0]["probability"].as_f64().unwrap() > 0.3, "{}: {v}", photo.display());
    }
    // Seeded once: the embedded registry now holds the bundled version, verified.
    let seeded = server.dir.path().join("registry/models/flowers102/versions/00000001.json");
    assert!(seeded.exists());
}

#[test]
fn eval_measures_the_bundled_model_through_the_serving_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flowers102");
    // A fresh embedded registry: `petal eval` seeds it with the bundled model as the server does.
    let out = run_ok(
        petal()
            .args(["eval", "--model", MODEL, "--json", "--data"])
            .arg(&data)
            .arg("--registry")
            .arg(dir.path().join("registry")),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = fixtures().len() as u64;
    assert_eq!(report["images"], n);
    assert_eq!(report["split"], "every image");
    assert_eq!(report["top1_correct"], n, "{}", report["confusions"]);
    assert_eq!(report["top5"], 1.0);
    assert_eq!(report["version"], 2);
    let matrix = report["confusion_matrix"].as_array().unwrap();
    assert_eq!(matrix.len(), 102);
    let total: u64 = matrix.iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(total, n);
    common::check_eval_report(&report);

    // Mislabelled photos (each filed under the next photo's class): every answer is wrong, most of
    // them confidently; the report's numbers still add up by hand.
    let mislabelled = dir.path().join("mislabelled");
    let photos = fixtures();
    for (i, (photo, _)) in photos.iter().enumerate() {
        let class = &photos[(i + 1) % photos.len()].1;
        std::fs::create_dir_all(mislabelled.join(class)).unwrap();
        std::fs::copy(photo, mislabelled.join(class).join(photo.file_name().unwrap())).unwrap();
    }
    let out = run_ok(
        petal()
            .args(["eval", "--model", MODEL, "--json", "--data"])
            .arg(&mislabelled)
            .arg("--registry")
            .arg(dir.path().join("registry")),
    );
    let wrong: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(wrong["top1"].as_f64().unwrap() < 0.5, "{}", wrong["top1"]);
    assert!(!wrong["confidently_wrong"].as_array().unwrap().is_empty());
    assert!(wrong["ece"].as_f64().unwrap() > 0.3, "{}", wrong["ece"]);
    common::check_eval_report(&wrong);

    // Classes the model does not know are refused by name.
    let odd = dir.path().join("odd");
    for (class, (photo, _)) in ["sunflower", "not a flower"].iter().zip(fixtures()) {
        std::fs::create_dir_all(odd.join(class)).unwrap();
        std::fs::copy(&photo, odd.join(class).join("a.jpg")).unwrap();
    }
    let failed = petal()
        .args(["eval", "--model", MODEL, "--data"])
        .arg(&odd)
        .arg("--registry")
        .arg(dir.path().join("registry"))
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("not a flower") && err.contains("[dataset_invalid]"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_flooded_queue_answers_429_and_a_missing_model_503_over_http() {
    // A queue of one image: concurrent requests beyond it are refused with 429 and Retry-After.
    let server = Server::start_with(|cmd| {
        Server::bundled(cmd);
        cmd.env("PETAL__INFERENCE__ENGINE__QUEUE_CAPACITY", "1").env("PETAL__INFERENCE__ENGINE__MAX_BATCH", "1");
    });
    server.wait_ready(200);
    let (photo, _) = fixtures().remove(0);
    let body = std::fs::read(photo).unwrap();
    let url = server.url("/classify");
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::new()
                    .post(url)
                    .header("content-type", "image/jpeg")
                    .body(body)
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let v: serde_json::Value = r.json().unwrap();
                (status, retry, v)
            })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in threads {
        match t.join().unwrap() {
            (200, _, _) => ok += 1,
            (429, retry, v) => {
                assert_eq!(v["error"]["code"], "queue_full");
                assert_eq!(retry.as_deref(), Some("1"));
                full += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, 429 {full}");

    // A configured model that cannot load: the server is not ready, and /classify says 503.
    let server = Server::start_with(|cmd| {
        cmd.env("PETAL__INFERENCE__MODELS", "[\"ghost@production\"]");
    });
    server.wait_ready(503);
    let r = reqwest::blocking::Client::new()
        .post(server.url("/classify"))
        .header("content-type", "image/jpeg")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "not_ready");
}
