//! The Open Inference Protocol (KServe v2) on the bundled flower model: tritonclient from PyPI,
//! unchanged, drives it (tests/oracles/tritonclient_story.py), and malformed requests get the
//! protocol's error body with petal's codes.
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{self, Server};

fn photos() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flowers102");
    let mut out = Vec::new();
    for class in std::fs::read_dir(&root).unwrap() {
        for photo in std::fs::read_dir(class.unwrap().path()).unwrap() {
            out.push(photo.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn tritonclient_drives_the_served_model_over_the_open_inference_protocol() {
    let server = Server::start_with(Server::bundled);
    server.wait_ready(200);
    let host = server.base.trim_start_matches("http://").to_string();
    // The served version's (the newest, production's) ONNX file, for onnxruntime in the oracle.
    let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("registry");
    let newest =
        std::fs::read_dir(registry.join("models/flowers102/versions")).unwrap().map(|e| e.unwrap().path()).max();
    let manifest: Value = serde_json::from_slice(&std::fs::read(newest.unwrap()).unwrap()).unwrap();
    let artifacts = manifest["artifacts"].as_array().unwrap();
    let onnx_artifact = artifacts.iter().find(|a| a["name"] == "model.onnx").unwrap();
    let onnx = registry.join(onnx_artifact["path"].as_str().unwrap());
    let out = Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/tritonclient_story.py"))
        .args([host.as_str(), "flowers102"])
        .arg(&onnx)
        .args(photos())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the tritonclient story failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_protocol_answers_names_aliases_versions_and_bad_requests_its_way() {
    let server = Server::start_with(Server::bundled);
    server.wait_ready(200);
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| client.get(server.url(path)).send().unwrap();
    assert_eq!(get("/v2/health/live").status(), 200);
    assert_eq!(get("/v2/health/ready").status(), 200);
    let server_meta: Value = get("/v2").json().unwrap();
    assert_eq!(server_meta["name"], "petal");
    for path in
        ["/v2/models/flowers102@production", "/v2/models/flowers102%40production", "/v2/models/flowers102/versions/1"]
    {
        let r = get(path);
        assert_eq!(r.status(), 200, "{path}");
        let meta: Value = r.json().unwrap();
        assert_eq!(
            (meta["name"].as_str(), meta["versions"][0].as_str()),
            (Some("flowers102"), Some("1")),
            "{path}: {meta}"
        );
    }
    assert_eq!(get("/v2/models/flowers102/versions/1/ready").status(), 200);
    let photo = std::fs::read(&photos()[0]).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &photo);

    // JSON in, JSON out, on a named version.
    let request = json!({"id": "r1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                         "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]});
    let r = client.post(server.url("/v2/models/flowers102/versions/1/infer")).json(&request).send().unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().unwrap();
    assert_eq!((answer["id"].as_str(), answer["model_version"].as_str()), (Some("r1"), Some("1")), "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([1, 2]), "{answer}");
    let top = answer["outputs"][0]["data"][0].as_str().unwrap();
    assert_eq!(top.split(':').count(), 3, "{top}");

    // Bad requests: the protocol's `{"error": …}`, petal's code and status.
    let post = |body: Vec<u8>, header: Option<&str>| {
        let mut r = client.post(server.url("/v2/models/flowers102/infer")).body(body);
        if let Some(h) = header {
            r = r.header("inference-header-content-length", h);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap();
        assert!(v["error"].is_string(), "{v}");
        (status, v["code"].as_str().unwrap().to_string())
    };
    let bytes = |v: Value| v.to_string().into_bytes();
    assert_eq!(post(b"{".to_vec(), None), (400, "invalid_json".into()));
    assert_eq!(post(bytes(json!({"inputs": []})), None), (400, "invalid_request".into()));
    let fp32 = |shape: Value, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]});
    assert_eq!(post(bytes(fp32(json!([1, 3, 2, 2]), json!([0.0]))), None).0, 400, "a shape the model does not take");
    assert_eq!(post(bytes(fp32(json!([65, 3, 224, 224]), json!([]))), None).0, 400, "more than 64 images");
    assert_eq!(post(bytes(fp32(json!([1, 3, 224, 224]), json!([1.0, 2.0]))), None).0, 400, "too few values");
    let int8 = json!({"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]});
    assert_eq!(post(bytes(int8), None).0, 400);
    let undecodable = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]});
    assert_eq!(post(bytes(undecodable), None), (422, "undecodable_image".into()));
    // Binary extension: a header length past the body, a size that is not what follows, an
    // element length past the end.
    let header = bytes(
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}),
    );
    let n = header.len().to_string();
    assert_eq!(post(header.clone(), Some("999999")).0, 400);
    let mut short = header.clone();
    short.extend_from_slice(&[1, 2, 3]);
    assert_eq!(post(short, Some(&n)).0, 400);
    let mut lying = header;
    lying.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    assert_eq!(post(lying, Some(&n)).0, 400);
    let r = get("/v2/models/nope");
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().unwrap()["error"].is_string());
    assert_eq!(get("/v2/models/Bad%20Name").status(), 422);
    assert_eq!(get("/v2/models/flowers102/versions/x").status(), 400);
    let r = client.post(server.url("/classify")).header("content-type", "image/jpeg").body(photo).send().unwrap();
    assert_eq!(r.status(), 200);

    // Per-model metrics: what reached the model, by API and outcome; nothing labelled by a name a
    // client made up.
    let text = get("/metrics").text().unwrap();
    let value = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{")) || (labels.is_empty() && l.starts_with(&format!("{name} ")))
            })
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let model = r#"model="flowers102""#;
    let v2_ok = [model, r#"version="1""#, r#"api="v2""#, r#"outcome="ok""#];
    assert!(value("petal_inference_requests_total", &v2_ok) >= 1.0);
    let v2_bad = [model, r#"api="v2""#, r#"outcome="client_error""#];
    assert!(value("petal_inference_requests_total", &v2_bad) >= 4.0, "shape, count, datatype, image errors");
    assert_eq!(value("petal_inference_requests_total", &[model, r#"api="classify""#, r#"outcome="ok""#]), 1.0);
    assert!(value("petal_inference_batch_size_count", &[model]) >= 2.0);
    assert!(value("petal_inference_compute_seconds_count", &[model]) >= 2.0);
    assert!(value("petal_inference_queue_seconds_count", &[model]) >= 2.0);
    assert!(value("petal_inference_preprocess_seconds_count", &[model]) >= 2.0);
    assert_eq!(value("petal_inference_queue_depth", &[model]), 0.0);
    assert_eq!(value("petal_inference_in_flight", &[model]), 0.0);
    assert!(value("petal_model_loads_total", &[r#"outcome="ok""#]) >= 1.0);
    assert!(value("petal_model_load_seconds_count", &[]) >= 1.0);
    assert!(!text.contains(r#"model="nope""#) && !text.contains("Bad Name"), "a made-up name became a label");
}
