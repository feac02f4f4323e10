//! The hostile-input harness: a server serving the bundled flower model, and one check per case
//! (status and stable error code, the server still up, nothing stored or left staged, peak memory
//! bounded), printed as a table row: case, status, code, time, peak RSS rise.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::{multipart, Client, Response};
use serde_json::{json, Value};

use super::{shapes_dataset, shapes_spec, weights_cache, Server};

pub const MIB: u64 = 1 << 20;

/// What any one request may add to the server's peak memory: about twice the largest file a
/// dataset may hold (`max_file_bytes`, 64 MiB), and far below what any bomb here expands to
/// (2 GiB or more).
pub const MAX_GROWTH: u64 = 128 * MIB;

/// The answer a case wants: status and error code (`""` for a success).
pub type Want = (u16, &'static str);

/// A server serving the bundled flower model, and what every case is checked against.
pub struct Hostile {
    pub server: Server,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub registry: PathBuf,
    pub work: PathBuf,
    /// `datasets/`, `jobs/` and `models/` of the registry after start: path → size.
    pub stored: BTreeMap<String, u64>,
    /// Whether VmHWM can be reset before each case (else growth is measured against the peak so far).
    pub peak_resets: bool,
    pub spec: Value,
}

/// What a case got back.
pub struct Answer {
    pub body: Value,
    pub elapsed: Duration,
}

impl Hostile {
    pub fn start() -> Hostile {
        Self::start_with_env(&[])
    }

    /// `start` with more environment variables (configuration) for the server.
    pub fn start_with_env(env: &[(&str, &str)]) -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let cache = weights_cache(dir.path());
        let (registry, work) = (dir.path().join("registry"), dir.path().join("work"));
        let (r, w) = (registry.clone(), work.clone());
        let server = Server::start_with(move |cmd| {
            Server::bundled(cmd);
            cmd.env("PETAL__WEIGHTS__CACHE", &cache).env("PETAL__JOBS__WORK_DIR", &w).env("PETAL__REGISTRY__PATH", &r);
            for (k, v) in env {
                cmd.env(k, v);
            }
        });
        server.wait_ready(200);
        let stored = stored(&registry);
        assert!(stored.keys().any(|k| k.starts_with("models/flowers102/")), "the bundled model is seeded: {stored:?}");
        let peak_resets = server.reset_peak_memory();
        let client = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        Hostile { server, client, dir, registry, work, stored, peak_resets, spec: shapes_spec("hostile", 1) }
    }

    /// Sends one hostile request; checks its status and error code (`""` for a success), that the
    /// server is still up, that nothing was stored or left staged, and that its memory stayed
    /// bounded.
    pub fn case(&self, name: &str, want: Want, send: impl FnOnce(&Hostile) -> Response) -> Answer {
        self.server.reset_peak_memory();
        let (rss, peak) = self.server.memory();
        let base = if self.peak_resets { rss } else { peak };
        let start = Instant::now();
        let response = send(self);
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let elapsed = start.elapsed();
        let growth = self.server.memory().1.saturating_sub(base);
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!(text));
        let code = body["error"]["code"].as_str().unwrap_or("");
        println!("{name:<48} {status} {code:<24} {:>6} ms  peak +{:>4} MiB", elapsed.as_millis(), growth / MIB);
        assert_eq!((status, code), want, "{name}: {body}");
        if status >= 400 {
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {body}");
        }
        let health = self.client.get(self.server.url("/healthz")).send();
        assert_eq!(health.map(|r| r.status().as_u16()).ok(), Some(200), "{name}: the server went down");
        assert_eq!(stored(&self.registry), self.stored, "{name}: the registry changed");
        assert!(!self.registry.join("datasets").exists() && !self.registry.join("jobs").exists(), "{name}");
        let staged: Vec<_> =
            std::fs::read_dir(&self.work).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(staged.is_empty(), "{name}: left in jobs.work_dir: {staged:?}");
        assert!(growth < MAX_GROWTH, "{name}: the server's peak memory grew by {} MiB", growth / MIB);
        Answer { body, elapsed }
    }

    /// `POST /finetune?dry_run=true` with this archive as the `dataset` part.
    pub fn dry_run(&self, archive: Vec<u8>, file_name: &str) -> Response {
        self.dry_run_with(&self.spec.to_string(), archive, file_name)
    }

    pub fn dry_run_with(&self, spec: &str, archive: Vec<u8>, file_name: &str) -> Response {
        let form = multipart::Form::new()
            .text("spec", spec.to_string())
            .part("dataset", multipart::Part::bytes(archive).file_name(file_name.to_string()));
        self.client.post(self.server.url("/finetune?dry_run=true")).multipart(form).send().unwrap()
    }

    pub fn post(&self, path: &str, body: Vec<u8>, content_type: Option<&str>) -> Response {
        self.post_request(path, body, content_type).send().unwrap()
    }

    /// A POST that must be answered within 30 s (a hang fails the case instead of the run).
    pub fn post_quickly(&self, path: &str, body: Vec<u8>, content_type: &str) -> Response {
        let request = self.post_request(path, body, Some(content_type)).timeout(Duration::from_secs(30));
        request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub fn post_request(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> reqwest::blocking::RequestBuilder {
        let request = self.client.post(self.server.url(path)).body(body);
        match content_type {
            Some(ct) => request.header("content-type", ct),
            None => request,
        }
    }
}

/// Every file under the registry's `datasets/`, `jobs/` and `models/`: relative path → size.
pub fn stored(registry: &Path) -> BTreeMap<String, u64> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, u64>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), e.metadata().unwrap().len());
            }
        }
    }
    let mut out = BTreeMap::new();
    for top in ["datasets", "jobs", "models"] {
        walk(&registry.join(top), registry, &mut out);
    }
    out
}

pub fn message(answer: &Answer) -> &str {
    answer.body["error"]["message"].as_str().unwrap_or("")
}

/// A zip of these files, deflated by the zip crate.
pub fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    zip_with(files, zip::CompressionMethod::Deflated)
}

pub fn zip_with(files: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in files {
        w.start_file(name.as_str(), options).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// An image as PNG bytes.
pub fn png_of(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A small, valid ImageFolder dataset (3 classes × 3 PNGs) as (path, bytes), under `data/`.
pub fn shapes_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let root = dir.join("shapes-files");
    shapes_dataset(&root, 3, 32, 7);
    let mut files = Vec::new();
    for class in ["bar", "disc", "square"] {
        for i in 0..3 {
            files.push((
                format!("data/{class}/{i}.png"),
                std::fs::read(root.join(class).join(format!("{i}.png"))).unwrap(),
            ));
        }
    }
    files
}
