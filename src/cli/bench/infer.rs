//! `petal bench infer`: on one ONNX file, onnxruntime's Python `session.run` (the reference),
//! petal's engine in process and petal over HTTP — `/classify`, and the Open Inference Protocol's
//! `/v2/…/infer` with the encoded image (BYTES) and with the preprocessed tensor (FP32), both as
//! binary tensor data the way tritonclient sends them — measured in the same run and printed side
//! by side with their ratios.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::bench::python_reference;
use crate::config::OnnxRuntimeConfig;
use crate::config::{EngineConfig, ProviderMode};
use crate::error::{Error, Result};
use crate::foundation::files;
use crate::infer::engine::ModelHandle;
use crate::infer::runtime::OrtRuntime;

const PY_BENCH: &str = include_str!("../../../scripts/bench_ort.py");

pub struct InferBench {
    pub onnx: PathBuf,
    pub image: PathBuf,
    pub python: PathBuf,
    pub seconds: f64,
    pub clients: Vec<usize>,
    pub max_batch: usize,
    /// The engine's provider; the Python reference runs on the provider the engine resolved.
    pub provider: ProviderMode,
    pub ort: OnnxRuntimeConfig,
}

/// Latency and throughput of one way of running the model.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Measured {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Images/s by number of concurrent clients.
    pub throughput: Vec<(usize, f64)>,
}

#[derive(Debug, Serialize)]
pub struct InferReport {
    pub python_session_run: Measured,
    /// Engine on a preprocessed input, batching off / on.
    pub engine_off: Measured,
    pub engine_on: Measured,
    /// Engine including decode + eval transform of the image, batching off (what HTTP does).
    pub engine_with_preprocess: Measured,
    pub http_off: Measured,
    pub http_on: Measured,
    /// `/v2/models/bench/infer`, batching off, on the same server as `http_off`.
    pub v2_bytes_off: Measured,
    pub v2_fp32_off: Measured,
    pub provider: String,
}

/// One way of asking the server for the image's class.
#[derive(Clone, Copy)]
enum HttpPath {
    /// `POST /classify?top_k=1`, the image as the body.
    Classify,
    /// `POST /v2/models/bench/infer`, the image as a BYTES input (binary), top 1 by the
    /// classification extension.
    V2Bytes,
    /// The same with the preprocessed tensor as an FP32 input (binary).
    V2Fp32,
}

/// The body and headers of an Open Inference Protocol request with one binary input.
fn v2_request(name: &str, datatype: &str, shape: &[usize], data: Vec<u8>) -> (Vec<u8>, usize) {
    let header = serde_json::json!({
        "inputs": [{"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]
    })
    .to_string()
    .into_bytes();
    let n = header.len();
    let mut body = header;
    body.extend_from_slice(&data);
    (body, n)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `f` in a loop for `seconds` (one client) and returns latency percentiles.
fn latency(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    for _ in 0..5 {
        f()?;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 50.0), percentile(&samples, 99.0)))
}

/// `clients` threads each calling `make()`'s closure for `seconds`; images/s.
pub(crate) fn throughput<F>(seconds: f64, clients: usize, make: impl Fn() -> F) -> Result<f64>
where
    F: FnMut() -> Result<()> + Send + 'static,
{
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut f = make();
            std::thread::spawn(move || -> Result<u64> {
                let mut n = 0;
                while Instant::now() < stop {
                    f()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| Error::internal("a bench client panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn measure_engine(
    b: &InferBench,
    handle: &ModelHandle,
    input: &[f32],
    image: Option<&Arc<Vec<u8>>>,
) -> Result<Measured> {
    let run = |h: ModelHandle, input: Vec<f32>, image: Option<Arc<Vec<u8>>>| {
        move || -> Result<()> {
            let x = match &image {
                Some(bytes) => h.preprocess(bytes)?,
                None => input.clone(),
            };
            h.infer_blocking(x, 1).map(|_| ())
        }
    };
    let (p50, p99) = latency(b.seconds, run(handle.clone(), input.to_vec(), image.cloned()))?;
    let mut tp = Vec::new();
    for &c in &b.clients {
        tp.push((c, throughput(b.seconds, c, || run(handle.clone(), input.to_vec(), image.cloned()))?));
    }
    Ok(Measured { p50_ms: p50, p99_ms: p99, throughput: tp })
}

/// Starts `petal serve` (this binary) on a free loopback port serving the model.
struct ServeProcess {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(onnx: &Path, max_batch: usize) -> Result<ServeProcess> {
    let dir = files::temp_dir()?;
    let registry = dir.path().join("registry");
    let exe = std::env::current_exe().map_err(|e| Error::internal(format!("finding this executable: {e}")))?;
    // The server serves a version's `model.onnx`.
    let model = dir.path().join("model.onnx");
    files::copy(onnx, &model)?;
    let status = Command::new(&exe)
        .args(["registry", "--registry"])
        .arg(&registry)
        .args(["publish", "bench"])
        .arg(&model)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| Error::io("running", &exe, e))?;
    if !status.success() {
        return Err(Error::internal("publishing the bench model failed"));
    }
    let config = dir.path().join("petal.toml");
    files::write(
        &config,
        format!(
            "[registry]\npath = {:?}\nseed = \"\"\n[log]\nlevel = \"warn,petal=info\"\nformat = \"json\"\n\
             [inference]\nmodels = [\"bench\"]\n[inference.engine]\nmax_batch = {max_batch}\n",
            registry.display().to_string()
        )
        .as_bytes(),
    )?;
    let mut child = Command::new(&exe)
        .args(["--config"])
        .arg(&config)
        .args(["serve", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("starting", &exe, e))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(a) = v.get("addr").and_then(|a| a.as_str()) {
                    let _ = tx.send(a.to_string());
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| Error::internal("petal serve did not start"))?;
    let base = format!("http://{addr}");
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get(format!("{base}/readyz")).send().map_err(|e| Error::internal(e.to_string()))?;
        if r.status().is_success() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::internal(format!("petal serve never became ready: {}", r.text().unwrap_or_default())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ServeProcess { child, base, _dir: dir })
}

/// Latency and throughput of `paths` on one server with batches of at most `max_batch`.
fn measure_http(
    b: &InferBench,
    max_batch: usize,
    (image, input): (&Arc<Vec<u8>>, &[f32]),
    content_type: &'static str,
    paths: &[HttpPath],
) -> Result<Vec<Measured>> {
    let server = serve(&b.onnx, max_batch)?;
    let size = ((input.len() / 3) as f64).sqrt() as usize;
    let mut out = Vec::new();
    for &path in paths {
        let (url, body, header_len, content_type) = match path {
            HttpPath::Classify => (format!("{}/classify?top_k=1", server.base), image.to_vec(), None, content_type),
            HttpPath::V2Bytes => {
                let mut data = (image.len() as u32).to_le_bytes().to_vec();
                data.extend_from_slice(image);
                let (body, n) = v2_request("image", "BYTES", &[1], data);
                (format!("{}/v2/models/bench/infer", server.base), body, Some(n), "application/octet-stream")
            }
            HttpPath::V2Fp32 => {
                let data = input.iter().flat_map(|v| v.to_le_bytes()).collect();
                let (body, n) = v2_request("input", "FP32", &[1, 3, size, size], data);
                (format!("{}/v2/models/bench/infer", server.base), body, Some(n), "application/octet-stream")
            }
        };
        let body = Arc::new(body);
        let make = || {
            let client = reqwest::blocking::Client::new();
            let (url, body) = (url.clone(), body.clone());
            move || -> Result<()> {
                let mut r = client.post(&url).header("content-type", content_type).body(body.as_ref().clone());
                if let Some(n) = header_len {
                    r = r.header("inference-header-content-length", n.to_string());
                }
                let r = r.send().map_err(|e| Error::internal(e.to_string()))?;
                if !r.status().is_success() {
                    return Err(Error::internal(format!("HTTP {}", r.status())));
                }
                r.bytes().map_err(|e| Error::internal(e.to_string()))?;
                Ok(())
            }
        };
        let (p50, p99) = latency(b.seconds, make())?;
        let mut tp = Vec::new();
        for &c in &b.clients {
            tp.push((c, throughput(b.seconds, c, make)?));
        }
        out.push(Measured { p50_ms: p50, p99_ms: p99, throughput: tp });
    }
    Ok(out)
}

pub fn infer(b: &InferBench) -> Result<InferReport> {
    let onnx = files::read(&b.onnx)?;
    let image = Arc::new(files::read(&b.image)?);
    let content_type = match b.image.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    };
    let rt = OrtRuntime::init(&b.ort)?;
    let config = |max_batch| EngineConfig { provider: b.provider, max_batch, ..Default::default() };
    let off = ModelHandle::load(&rt, &onnx, "bench", 1, &config(1))?;
    let input = off.preprocess(&image)?;

    // The reference, on the very same preprocessed input.
    let dir = files::temp_dir()?;
    let size = off.info.image_size as i64;
    let x = tch::Tensor::from_slice(&input).reshape([1, 3, size, size]);
    let input_file = dir.path().join("input.safetensors");
    tch::Tensor::write_safetensors(&[("input", &x)], &input_file).map_err(|e| Error::internal(e.to_string()))?;
    let args = [
        b.onnx.clone().into_os_string(),
        input_file.into_os_string(),
        b.seconds.to_string().into(),
        off.info.provider.into(),
    ]
    .into_iter()
    .chain(b.clients.iter().map(|c| c.to_string().into()));
    let py = python_reference(&b.python, dir.path(), "bench_ort.py", PY_BENCH, args)?;
    let python_session_run = Measured {
        p50_ms: py["p50_ms"].as_f64().unwrap_or(f64::NAN),
        p99_ms: py["p99_ms"].as_f64().unwrap_or(f64::NAN),
        throughput: b
            .clients
            .iter()
            .map(|c| (*c, py["throughput"][c.to_string()].as_f64().unwrap_or(f64::NAN)))
            .collect(),
    };

    let engine_off = measure_engine(b, &off, &input, None)?;
    let engine_with_preprocess = measure_engine(b, &off, &input, Some(&image))?;
    drop(off);
    let on = ModelHandle::load(&rt, &onnx, "bench", 1, &config(b.max_batch))?;
    let provider = on.info.provider.to_string();
    let engine_on = measure_engine(b, &on, &input, None)?;
    drop(on);
    let all = [HttpPath::Classify, HttpPath::V2Bytes, HttpPath::V2Fp32];
    let mut off = measure_http(b, 1, (&image, &input), content_type, &all)?.into_iter();
    let (http_off, v2_bytes_off, v2_fp32_off) =
        (off.next().expect("three"), off.next().expect("three"), off.next().expect("three"));
    let http_on = measure_http(b, b.max_batch, (&image, &input), content_type, &[HttpPath::Classify])?.remove(0);
    Ok(InferReport {
        python_session_run,
        engine_off,
        engine_on,
        engine_with_preprocess,
        http_off,
        http_on,
        v2_bytes_off,
        v2_fp32_off,
        provider,
    })
}

impl InferReport {
    pub fn to_text(&self) -> String {
        let cols: [(&str, &Measured); 8] = [
            ("python run", &self.python_session_run),
            ("engine off", &self.engine_off),
            ("engine on", &self.engine_on),
            ("eng+decode", &self.engine_with_preprocess),
            ("http off", &self.http_off),
            ("http on", &self.http_on),
            ("v2 bytes", &self.v2_bytes_off),
            ("v2 fp32", &self.v2_fp32_off),
        ];
        let mut s = format!("{:<22}", format!("provider {}", self.provider));
        for (name, _) in &cols {
            s += &format!("{name:>12}");
        }
        s += "\n";
        let row = |label: &str, f: &dyn Fn(&Measured) -> f64| {
            let mut r = format!("{label:<22}");
            for (_, m) in &cols {
                r += &format!("{:>12.2}", f(m));
            }
            r + "\n"
        };
        s += &row("batch-1 p50 ms", &|m| m.p50_ms);
        s += &row("batch-1 p99 ms", &|m| m.p99_ms);
        for (i, (c, _)) in self.engine_on.throughput.iter().enumerate() {
            s += &row(&format!("{c} clients images/s"), &|m| m.throughput.get(i).map(|t| t.1).unwrap_or(f64::NAN));
        }
        let last = |m: &Measured| m.throughput.last().map(|t| t.1).unwrap_or(f64::NAN);
        let clients = self.engine_on.throughput.last().map(|t| t.0).unwrap_or(0);
        s += "\nratios\n";
        s += &format!(
            "  engine p50 / python session.run p50          {:.3}  (target ≤ 1.05)\n",
            self.engine_off.p50_ms / self.python_session_run.p50_ms
        );
        s += &format!(
            "  http p50 / engine (with decode) p50          {:.3}  (target ≤ 1.3)\n",
            self.http_off.p50_ms / self.engine_with_preprocess.p50_ms
        );
        s += &format!(
            "  batching on / off at {clients} clients, engine      {:.3}  (target ≥ 1.5)\n",
            last(&self.engine_on) / last(&self.engine_off)
        );
        s += &format!(
            "  batching on / off at {clients} clients, http        {:.3}\n",
            last(&self.http_on) / last(&self.http_off)
        );
        s += &format!(
            "  v2 BYTES p50 / classify p50                  {:.3}  (target ≤ 1.1)\n",
            self.v2_bytes_off.p50_ms / self.http_off.p50_ms
        );
        for (i, (c, _)) in self.http_off.throughput.iter().enumerate() {
            let at = |m: &Measured| m.throughput.get(i).map(|t| t.1).unwrap_or(f64::NAN);
            s += &format!(
                "  v2 BYTES / classify images/s, {c:>2} clients    {:.3}  (target ≥ 0.9)\n",
                at(&self.v2_bytes_off) / at(&self.http_off)
            );
        }
        s += &format!(
            "  v2 FP32 (preprocessed) / classify p50        {:.3}  (no decode on the server)\n",
            self.v2_fp32_off.p50_ms / self.http_off.p50_ms
        );
        s
    }
}
