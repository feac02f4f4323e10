//! Every endpoint of the real server, over real HTTP on loopback.
use crate::common;

use crate::common::Server;
use reqwest::blocking::Client;
use reqwest::StatusCode;

fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn endpoints_answer_and_metrics_count_them() {
    let server = Server::start();
    let ready = server.wait_ready(200);
    assert_eq!(ready["ready"], true);
    let names: Vec<&str> = ready["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in ["startup", "onnxruntime", "registry"] {
        assert!(names.contains(&want), "{ready}");
    }
    let client = Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // Liveness, with a generated and with a given request id.
    let r = client.get(server.url("/healthz")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let r = client.get(server.url("/healthz")).header("x-request-id", "test-req-42").send().unwrap();
    assert_eq!(r.headers()["x-request-id"], "test-req-42");
    let r = client.get(server.url("/healthz")).header("x-request-id", "bad id with spaces").send().unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");

    // 404 and 405 with stable codes, the request id in body and header, Allow on 405.
    let r = client.get(server.url("/no/such/thing")).header("x-request-id", "rid-404").send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
    assert_eq!(body["error"]["request_id"], "rid-404");
    assert!(body["error"]["message"].as_str().unwrap().contains("/no/such/thing"));
    // RFC 9457 problem details for a client that asks for them.
    let r = client
        .get(server.url("/no/such/thing"))
        .header("accept", "application/problem+json, application/json;q=0.5")
        .header("x-request-id", "rid-problem")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = r.json().unwrap();
    assert_eq!(problem["type"], "urn:petal:error:route_not_found", "{problem}");
    assert_eq!((problem["status"].as_u64(), problem["code"].as_str()), (Some(404), Some("route_not_found")));
    assert_eq!(problem["request_id"], "rid-problem");
    assert!(problem["detail"].as_str().unwrap().contains("/no/such/thing") && problem["title"].is_string());
    let r = client.post(server.url("/healthz")).send().unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(body["error"]["request_id"], rid.as_str());

    // The spec, served and valid.
    let r = client.get(server.url("/openapi.json")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let spec = r.text().unwrap();
    let file = server.dir.path().join("served-openapi.json");
    std::fs::write(&file, &spec).unwrap();
    let out = std::process::Command::new(common::python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the served spec:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Swagger UI, vendored, pointing at our spec.
    let r = client.get(server.url("/docs")).send().unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/docs/");
    let r = client.get(server.url("/docs/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().unwrap().to_lowercase().contains("swagger"));
    let r = client.get(server.url("/docs/swagger-initializer.js")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().unwrap().contains("/openapi.json"));

    // Metrics count exactly this test's requests.
    let text = client.get(server.url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(
        metric_value(&text, r#"petal_http_requests_total{method="GET",route="/healthz",status="200"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"petal_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"petal_http_requests_total{method="POST",route="/healthz",status="405"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"petal_http_requests_total{method="GET",route="/openapi.json",status="200"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"petal_http_request_duration_seconds_count{method="GET",route="/healthz"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, "petal_ready "), 1.0, "{text}");
    assert!(text.contains("petal_build_info{"), "{text}");

    // Access logs are structured and carry the request id.
    let logs = server.log_text();
    let line = logs.lines().find(|l| l.contains("test-req-42")).expect("an access log line with the request id");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "/healthz");
}

#[test]
fn not_ready_says_which_native_library_is_missing() {
    let server = Server::start_with(|cmd| {
        cmd.env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1");
    });
    let report = server.wait_ready(503);
    assert_eq!(report["ready"], false);
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("onnxruntime") && reasons.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{report}");
    let client = Client::new();
    assert_eq!(client.get(server.url("/healthz")).send().unwrap().status(), StatusCode::OK);
    let text = client.get(server.url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(metric_value(&text, "petal_ready "), 0.0, "{text}");
    assert!(!server.log_text().contains("panicked"));
}

#[test]
fn not_ready_when_the_registry_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let registry = blocker.join("registry");
    let server = Server::start_with(|cmd| {
        cmd.arg("--registry").arg(&registry);
    });
    let report = server.wait_ready(503);
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("registry") && reasons.contains("a-file"), "{report}");
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start();
        server.wait_ready(200);
        let status = server.signal_and_wait(signal);
        assert!(status.success(), "exit after SIG{signal}: {status:?}\n{}", server.log_text());
        let logs = server.log_text();
        assert!(logs.contains(&format!("\"signal\":\"SIG{signal}\"")), "{logs}");
        assert!(logs.contains("\"message\":\"stopped\""), "{logs}");
    }
}

#[test]
fn readiness_follows_an_s3_registry() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::S3Server::start(dir.path());
    let server = Server::start_with(|cmd| {
        cmd.envs(s3.env("ready"));
    });
    let report = server.wait_ready(200);
    assert!(report.to_string().contains(&format!("s3://petal/ready at {}", s3.endpoint())), "{report}");

    // A wrong secret: the server says so instead of pretending to be ready.
    let server = Server::start_with(|cmd| {
        cmd.envs(s3.env("ready")).env("PETAL__REGISTRY__S3__SECRET_ACCESS_KEY", "wrong");
        cmd.env("PETAL__REGISTRY__S3__MAX_RETRIES", "0");
    });
    let report = server.wait_ready(503);
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("registry") && reasons.contains("probe"), "{report}");
}

#[test]
fn classify_over_http_with_the_real_imagenet_model() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    common::export_real_mobilenet(&[
        "--publish".as_ref(),
        "imagenet-mbv2".as_ref(),
        "--registry".as_ref(),
        registry.as_os_str(),
    ]);
    let config = dir.path().join("petal.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\npath = {:?}\n[inference]\nmodels = [\"imagenet-mbv2\"]\nmax_body_bytes = 300000\n",
            registry.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start_with(|cmd| {
        cmd.env_remove("PETAL__REGISTRY__PATH").env_remove("PETAL__INFERENCE__MODELS").env("PETAL_CONFIG", &config);
    });
    let ready = server.wait_ready(200);
    assert!(ready.to_string().contains("imagenet-mbv2 version 1 on CPUExecutionProvider"), "{ready}");

    let client = Client::new();
    let chelsea = std::fs::read(common::tools().join("testdata/chelsea.png")).unwrap();
    let r = client
        .post(server.url("/classify?top_k=3"))
        .header("content-type", "image/png")
        .body(chelsea.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["model"], "imagenet-mbv2");
    assert_eq!(v["version"], 1);
    assert_eq!(v["provider"], "CPUExecutionProvider");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
    assert!(["Egyptian cat", "tabby", "tiger cat"].contains(&v["predictions"][0]["name"].as_str().unwrap()), "{v}");
    assert!(v["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    let code = |r: reqwest::blocking::Response| -> (u16, String) {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().unwrap();
        (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
    };
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        client.post(server.url(path)).header("content-type", ct).body(body).send().unwrap()
    };
    assert_eq!(code(post("/classify", "text/plain", b"hi".to_vec())), (415, "unsupported_media_type".into()));
    assert_eq!(
        code(post("/classify", "image/jpeg", b"\xff\xd8\xff garbage".to_vec())),
        (422, "undecodable_image".into())
    );
    assert_eq!(code(post("/classify?model=nope", "image/png", chelsea.clone())), (404, "not_found".into()));
    assert_eq!(code(post("/classify?top_k=0", "image/png", chelsea.clone())), (400, "invalid_request".into()));
    assert_eq!(code(post("/classify?top_k=x", "image/png", chelsea.clone())), (400, "invalid_request".into()));
    let coffee = std::fs::read(common::tools().join("testdata/coffee.png")).unwrap();
    assert!(coffee.len() > 300_000);
    assert_eq!(code(post("/classify", "image/png", coffee)), (413, "payload_too_large".into()));

    let text = client.get(server.url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(
        metric_value(&text, r#"petal_model_loaded{model="imagenet-mbv2",provider="CPUExecutionProvider",version="1"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, r#"petal_http_requests_total{method="POST",route="/classify",status="200"}"#), 1.0);
}

#[test]
fn classify_without_models_is_a_conflict() {
    let server = Server::start();
    server.wait_ready(200);
    let r = Client::new()
        .post(server.url("/classify"))
        .header("content-type", "image/png")
        .body(vec![1, 2, 3])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "nothing_serving");
}

#[test]
fn moving_the_alias_swaps_the_served_version_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let names = dir.path().join("names.txt");
    std::fs::write(&names, (0..1000).map(|i| format!("renamed {i}\n")).collect::<String>()).unwrap();
    let publish = ["--publish".as_ref(), "m".as_ref(), "--registry".as_ref(), registry.as_os_str()];
    common::export_real_mobilenet(&publish);
    common::export_real_mobilenet(&[&publish[..], &["--class-names".as_ref(), names.as_os_str()]].concat());
    let promote = |v: &str| {
        let out = common::petal()
            .args(["registry", "--registry"])
            .arg(&registry)
            .args(["promote", "m", v, "--alias", "production"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    promote("1");
    let config = dir.path().join("petal.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\npath = {:?}\n[inference]\nmodels = [\"m@production\"]\nreload_poll_ms = 200\n",
            registry.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start_with(|cmd| {
        cmd.env_remove("PETAL__REGISTRY__PATH").env_remove("PETAL__INFERENCE__MODELS").env("PETAL_CONFIG", &config);
    });
    server.wait_ready(200);
    let chelsea = std::fs::read(common::tools().join("testdata/chelsea.png")).unwrap();
    let url = server.url("/classify?top_k=1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, chelsea, stop) = (url.clone(), chelsea.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = Client::new();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.post(&url).header("content-type", "image/png").body(chelsea.clone()).send().unwrap();
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().unwrap();
                seen.push((status, v["version"].as_u64().unwrap_or(0), v["predictions"][0]["name"].to_string()));
            }
            seen
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    promote("2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v: serde_json::Value = Client::new()
            .post(&url)
            .header("content-type", "image/png")
            .body(chelsea.clone())
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["version"] == 2 {
            assert!(v["predictions"][0]["name"].as_str().unwrap().starts_with("renamed "), "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the alias move was never picked up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.join().unwrap();
    assert!(seen.iter().all(|(status, _, _)| *status == 200), "a request failed during the swap");
    let versions: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "versions go 1 then 2, never back: {versions:?}");
    assert_eq!(versions.first(), Some(&1));
    assert_eq!(versions.last(), Some(&2));
    let text = Client::new().get(server.url("/metrics")).send().unwrap().text().unwrap();
    assert!(text.contains(r#"petal_model_loaded{model="m",provider="CPUExecutionProvider",version="2"} 1"#), "{text}");
    // Only the model gauge: petal_inference_requests_total also carries version="1", and its count
    // (10, 11, ... requests to version 1) would match a bare `version="1"} 1`.
    assert!(!text.lines().any(|l| l.starts_with("petal_model_loaded{") && l.contains(r#"version="1""#)), "{text}");
    assert!(server.wait_ready(200).to_string().contains("m version 2 on"));
}
