//! Shared helpers of the integration tests: the real `petal` binary, real servers on loopback,
//! the project venv's Python as a test oracle.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

pub mod hostile;

pub fn petal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_petal")
}

/// A `petal` command with a clean environment: no inherited PETAL__* or PETAL_CONFIG.
pub fn petal() -> Command {
    let mut cmd = Command::new(petal_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PETAL__") || key == "PETAL_CONFIG" || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The files set-up fetched from registry packages (`tools/`): real weights and photos.
pub fn tools() -> PathBuf {
    std::env::var_os("PETAL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tools"))
}

/// torchvision's real MobileNetV2 ImageNet weights (legacy `.pth`).
pub fn real_mobilenet() -> PathBuf {
    tools().join("weights/mobilenet_v2-b0353104.pth")
}

/// `petal export` of the real MobileNetV2 with extra arguments; panics with stderr on failure.
pub fn export_real_mobilenet(args: &[&std::ffi::OsStr]) {
    let out = petal()
        .args(["export", "--arch", "mobilenet_v2", "--weights"])
        .arg(real_mobilenet())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "petal export failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The venv's Python (set by scripts/env.sh), the test oracle.
pub fn python() -> PathBuf {
    let p = std::env::var_os("PETAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(p.exists(), "no Python oracle at {}: run the tests with `make test`", p.display());
    p
}

/// Runs a Python oracle script from tests/oracles with arguments; panics with its stderr on failure.
pub fn oracle(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles").join(script);
    let out = Command::new(python()).arg(path).args(args).output().expect("run python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A `petal serve` process on a free loopback port with its own registry folder.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(|_| {})
    }

    /// Starts the server after `customize` has adjusted the command (env, flags). Unless
    /// `customize` removes these variables, the server starts empty: no seeding from the
    /// repository's `registry/` and no model to serve (`bundled()` undoes both).
    pub fn start_with(customize: impl FnOnce(&mut Command)) -> Server {
        Self::spawn(&["serve", "--port", "0", "--workers", "2"], customize)
    }

    /// Starts `petal ARGS` (a server: `serve …` or `worker …` on port 0) like `start_with`.
    pub fn spawn(args: &[&str], customize: impl FnOnce(&mut Command)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = petal();
        cmd.args(["--log-format", "json"])
            .args(args)
            .env("PETAL__REGISTRY__PATH", dir.path().join("registry"))
            .env("PETAL__REGISTRY__SEED", "")
            .env("PETAL__INFERENCE__MODELS", "[]")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn petal serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                        let _ = tx.send(addr.to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("server did not log its address:\n{}", logs.lock().unwrap().join("\n"))
        });
        Server { child, base: format!("http://{addr}"), logs, dir }
    }

    /// Undoes `start_with`'s emptiness: the embedded default, seeded with the bundled model and
    /// serving it.
    pub fn bundled(cmd: &mut Command) {
        cmd.env_remove("PETAL__REGISTRY__SEED").env_remove("PETAL__INFERENCE__MODELS");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits until `/readyz` answers `want` (200 or 503 once checks ran).
    pub fn wait_ready(&self, want: u16) -> serde_json::Value {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send() {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().expect("readyz json");
                let started = body["checks"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == "startup" && c["ok"] == true));
                if started && status == want {
                    return body;
                }
                assert!(Instant::now() < deadline, "readyz never answered {want}: {status} {body}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends a signal and waits for the process to exit; returns its exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill").success();
        assert!(ok, "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after {signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server (s3s-fs, installed by set-up) on loopback, serving `root`; bucket
/// `petal` exists.
pub struct S3Server {
    child: Option<Child>,
    pub root: PathBuf,
    pub port: u16,
}

pub const S3_ACCESS_KEY: &str = "petal-test";
pub const S3_SECRET_KEY: &str = "petal-test-secret";

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::create_dir_all(root.join("petal")).unwrap();
        let mut s = S3Server { child: None, root: root.to_path_buf(), port };
        s.restart();
        s
    }

    fn binary() -> PathBuf {
        let p = std::env::var_os("PETAL_S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bin/s3s-fs"));
        assert!(p.exists(), "no s3s-fs at {}: run the tests with `make test`", p.display());
        p
    }

    /// (Re)starts the server on the same port and root.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(Self::binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry config for this server, under `prefix`.
    pub fn registry_config(&self, prefix: &str) -> petal::config::RegistryConfig {
        petal::config::RegistryConfig {
            backend: petal::config::RegistryBackend::S3,
            s3: petal::config::S3Config {
                endpoint: Some(self.endpoint()),
                bucket: Some("petal".into()),
                prefix: prefix.into(),
                access_key_id: Some(S3_ACCESS_KEY.into()),
                secret_access_key: Some(S3_SECRET_KEY.into()),
                allow_http: true,
                max_retries: 0,
                retry_timeout_s: 2,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Environment variables that point `petal` at this server.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("PETAL__REGISTRY__BACKEND", "s3".to_string()),
            ("PETAL__REGISTRY__S3__ENDPOINT", self.endpoint()),
            ("PETAL__REGISTRY__S3__BUCKET", "petal".into()),
            ("PETAL__REGISTRY__S3__PREFIX", prefix.into()),
            ("PETAL__REGISTRY__S3__ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("PETAL__REGISTRY__S3__SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("PETAL__REGISTRY__S3__ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three classes of drawn shapes on noisy backgrounds: a red disc, a green square, a blue bar.
pub fn shapes_dataset(dir: &Path, per_class: usize, size: u32, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (k, class) in ["disc", "square", "bar"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let (cx, cy) = (rng.gen_range(size / 3..2 * size / 3) as i32, rng.gen_range(size / 3..2 * size / 3) as i32);
            let r = rng.gen_range(size / 6..size / 4) as i32;
            let mut img = RgbImage::from_fn(size, size, |_, _| {
                let g = rng.gen_range(90..150u8);
                Rgb([g, g, g])
            });
            for (x, y, p) in img.enumerate_pixels_mut() {
                let (dx, dy) = (x as i32 - cx, y as i32 - cy);
                let inside = match k {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => dx.abs() <= r && dy.abs() <= r,
                    _ => dx.abs() <= r / 3 && dy.abs() <= r + r / 2,
                };
                if inside {
                    *p = [Rgb([220, 30, 30]), Rgb([30, 200, 40]), Rgb([40, 60, 230])][k];
                }
            }
            img.save(dir.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
}

/// Zips `dir` as an upload would arrive: every file under one top-level folder `top/`.
pub fn zip_dir(dir: &Path, top: &str, out: &Path) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
        zip.start_file(format!("{top}/{rel}"), zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&std::fs::read(&f).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

// --- jobs over HTTP, shared by the API and worker tests ---

/// A weights cache holding the real MobileNetV2 ImageNet weights.
pub fn weights_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("weights");
    let out = petal().args(["weights", "import"]).arg(real_mobilenet()).arg("--cache").arg(&cache).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cache
}

/// A short recipe on 64-px shapes: learns them in seconds.
pub fn shapes_spec(model: &str, epochs1: usize) -> serde_json::Value {
    let mut recipe = serde_json::to_value(petal::train::recipe::Recipe::default()).unwrap();
    recipe["eval_transform"]["resize"] = serde_json::json!(72);
    recipe["eval_transform"]["crop"] = serde_json::json!(64);
    serde_json::json!({"model": model, "recipe": recipe, "epochs1": epochs1, "epochs2": 1, "batch_size": 8, "device": "cpu",
           "dataset": {"name": "shapes", "terms": "generated by the test; any use"}})
}

pub fn shapes_zip(dir: &Path) -> PathBuf {
    let data = dir.join("shapes");
    shapes_dataset(&data, 16, 72, 3);
    let zip = dir.join("shapes.zip");
    zip_dir(&data, "shapes", &zip);
    zip
}

pub fn submit(
    client: &reqwest::blocking::Client,
    server: &Server,
    spec: &serde_json::Value,
    zip: Option<&Path>,
) -> reqwest::blocking::Response {
    use reqwest::blocking::multipart;
    let mut form = multipart::Form::new()
        .part("spec", multipart::Part::text(spec.to_string()).mime_str("application/json").unwrap());
    if let Some(zip) = zip {
        form = form.part("dataset", multipart::Part::file(zip).unwrap());
    }
    client.post(server.url("/finetune")).multipart(form).send().unwrap()
}

pub fn wait_for(
    client: &reqwest::blocking::Client,
    server: &Server,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let job: serde_json::Value = client.get(server.url(&format!("/jobs/{id}"))).send().unwrap().json().unwrap();
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never got there: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `GET /jobs/{id}/events` to its end: (event, data) pairs.
pub fn follow(client: &reqwest::blocking::Client, base: &str, id: &str) -> Vec<(String, serde_json::Value)> {
    let r = client.get(format!("{base}/jobs/{id}/events")).timeout(Duration::from_secs(300)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut events = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    events
}

// --- the server process's memory, for the hostile-input tests ---

impl Server {
    /// The server process's resident memory, in bytes, from `/proc/{pid}/status`: (VmRSS now,
    /// VmHWM — its peak since start or since `reset_peak_memory`).
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc/PID/status");
        let kib = |key: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
            line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().expect("a number of kB") * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// Resets the process's peak (VmHWM) to its current RSS by writing `5` to
    /// `/proc/{pid}/clear_refs` (Linux ≥ 4.0); false where that is not allowed.
    pub fn reset_peak_memory(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").is_ok()
    }
}

/// The registry layout documented in `src/registry/layout.rs` (its ```text block), as key
/// patterns: `models/{model}/versions/{version:08}.json`, …
pub fn documented_layout() -> Vec<String> {
    let source = include_str!("../../src/registry/layout.rs");
    let block = source.split("//! ```text\n").nth(1).expect("layout.rs documents the layout").split("//! ```").next();
    block
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//! ")?.split_whitespace().next().map(str::to_string))
        .filter(|p| p.contains('/'))
        .collect()
}

/// Whether `key` fits `pattern`, where each `{…}` stands for one or more characters other than `/`.
pub fn key_fits(pattern: &str, key: &str) -> bool {
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), key.split('/').collect());
    p.len() == k.len()
        && p.iter().zip(&k).all(|(p, k)| {
            // Literal pieces between the placeholders, in order.
            let pieces: Vec<&str> = p.split('{').map(|s| s.split_once('}').map_or(s, |(_, rest)| rest)).collect();
            if pieces.len() == 1 {
                return p == k;
            }
            let mut rest = match k.strip_prefix(pieces[0]) {
                Some(r) => r,
                None => return false,
            };
            for (i, piece) in pieces.iter().enumerate().skip(1) {
                let last = i == pieces.len() - 1;
                let found = if last {
                    rest.len().checked_sub(piece.len()).filter(|&at| at > 0 && rest[at..] == **piece)
                } else {
                    rest.get(1..).and_then(|r| r.find(piece)).map(|at| at + 1)
                };
                match found {
                    Some(at) => rest = &rest[at + piece.len()..],
                    None => return false,
                }
            }
            rest.is_empty()
        })
}

/// Every key under a local registry folder fits a documented pattern, and each of `required` (a
/// documented pattern) is met by some key. Returns the keys.
pub fn assert_layout(root: &Path, required: &[&str]) -> Vec<String> {
    let layout = documented_layout();
    for r in required {
        assert!(layout.iter().any(|p| p == r), "{r} is not in the documented layout {layout:?}");
    }
    let mut keys = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                keys.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    keys.sort();
    for k in &keys {
        assert!(layout.iter().any(|p| key_fits(p, k)), "key {k} fits no documented pattern of {layout:?}");
    }
    for r in required {
        assert!(keys.iter().any(|k| key_fits(r, k)), "no key fits {r}: {keys:?}");
    }
    keys
}

/// A turn among the tests of one binary that drive libtorch in the test process: libtorch's
/// thread pool takes every core (two such tests at once oversubscribe a small machine) and its
/// random seed is global. Held until dropped.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks a `petal eval --json` report against its own per-image answers, recomputed here by
/// hand: top-1, per-class precision, recall, F1 and support, macro F1, the expected calibration
/// error (15 equal-width bins), the confusions and their examples, the most confidently wrong.
pub fn check_eval_report(report: &serde_json::Value) {
    use std::collections::BTreeMap;
    let preds = report["predictions"].as_array().expect("per-image answers");
    assert_eq!(preds.len() as u64, report["images"].as_u64().unwrap());
    let get = |p: &serde_json::Value, k: &str| p[k].as_str().unwrap().to_string();
    let right = preds.iter().filter(|p| p["actual"] == p["predicted"]).count();
    assert_eq!(report["top1_correct"].as_u64().unwrap() as usize, right);
    // Per class: support, true positives, predicted.
    let mut support: BTreeMap<String, f64> = BTreeMap::new();
    let mut hits: BTreeMap<String, f64> = BTreeMap::new();
    let mut predicted: BTreeMap<String, f64> = BTreeMap::new();
    for p in preds {
        *support.entry(get(p, "actual")).or_default() += 1.0;
        *predicted.entry(get(p, "predicted")).or_default() += 1.0;
        if p["actual"] == p["predicted"] {
            *hits.entry(get(p, "actual")).or_default() += 1.0;
        }
    }
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-9, "{what}: report {a}, by hand {b}");
    let per_class = report["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), support.len());
    let mut f1_sum = 0.0;
    for c in per_class {
        let class = get(c, "class");
        let (n, tp, pr) = (support[&class], hits.get(&class).copied().unwrap_or(0.0), predicted.get(&class).copied());
        let recall = tp / n;
        let precision = pr.map_or(0.0, |pr| tp / pr);
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        assert_eq!(c["images"].as_f64().unwrap(), n, "{class}");
        close(c["recall"].as_f64().unwrap(), recall, &format!("{class} recall"));
        close(c["precision"].as_f64().unwrap(), precision, &format!("{class} precision"));
        close(c["f1"].as_f64().unwrap(), f1, &format!("{class} f1"));
        f1_sum += f1;
    }
    close(report["macro_f1"].as_f64().unwrap(), f1_sum / per_class.len() as f64, "macro F1");
    // ECE: bin b holds confidences in (b/15, (b+1)/15].
    let mut bins = vec![(0.0f64, 0.0f64, 0.0f64); 15];
    for p in preds {
        let conf = p["confidence"].as_f64().unwrap();
        let b = ((conf * 15.0).ceil() as usize).clamp(1, 15) - 1;
        bins[b].0 += 1.0;
        bins[b].1 += conf;
        bins[b].2 += f64::from(u8::from(p["actual"] == p["predicted"]));
    }
    let n = preds.len() as f64;
    let ece: f64 = bins.iter().filter(|b| b.0 > 0.0).map(|b| (b.2 / b.0 - b.1 / b.0).abs() * b.0 / n).sum();
    close(report["ece"].as_f64().unwrap(), ece, "ECE");
    // Confusions: counts and examples from the answers.
    for c in report["confusions"].as_array().unwrap() {
        let pair = |p: &serde_json::Value| p["actual"] == c["actual"] && p["predicted"] == c["predicted"];
        assert_eq!(c["count"].as_u64().unwrap() as usize, preds.iter().filter(|p| pair(p)).count(), "{c}");
        for e in c["examples"].as_array().unwrap() {
            assert!(preds.iter().any(|p| pair(p) && p["image"] == *e), "{e} is not an example of {c}");
        }
    }
    // The most confidently wrong: wrong, most confident first, none more confident left out.
    let wrong = report["confidently_wrong"].as_array().unwrap();
    assert_eq!(wrong.len(), (preds.len() - right).min(20));
    let confs: Vec<f64> = wrong.iter().map(|p| p["confidence"].as_f64().unwrap()).collect();
    assert!(confs.windows(2).all(|w| w[0] >= w[1]), "{confs:?}");
    assert!(wrong.iter().all(|p| p["actual"] != p["predicted"]));
    let floor = confs.last().copied().unwrap_or(f64::INFINITY);
    let above =
        preds.iter().filter(|p| p["actual"] != p["predicted"] && p["confidence"].as_f64().unwrap() > floor).count();
    assert!(above <= wrong.len());
}

/// Files under `dir`, in every folder below it (0 when it does not exist): a store on a folder
/// may leave empty folders where it removed objects.
pub fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}
