//! `petal bench batch`: images/s at fixed batch sizes — one request of B images at a time through
//! petal's engine on the provider it resolves (CUDA when it loads) — next to, in the same run,
//! onnxruntime's Python `session.run` on the same file and provider (when that Python has the
//! provider) and PyTorch eager on the same architecture (torchvision, fp32, eval).
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::bench::infer::throughput;
use crate::cli::bench::python_reference;
use crate::config::OnnxRuntimeConfig;
use crate::config::{EngineConfig, ProviderMode};
use crate::error::{Error, Result};
use crate::export::onnx::{export, ExportOptions};
use crate::foundation::files;
use crate::infer::engine::ModelHandle;
use crate::infer::runtime::OrtRuntime;
use crate::train::arch::Arch;
use crate::train::model::Model;

const PY_BENCH: &str = include_str!("../../../scripts/bench_batch.py");

/// What model to measure: an exported file, or an architecture exported here with random weights
/// (the speed does not depend on the weights).
pub enum BatchModel {
    Onnx(PathBuf),
    Arch(Arch),
}

pub struct BatchBench {
    pub model: BatchModel,
    pub batches: Vec<usize>,
    pub seconds: f64,
    pub provider: ProviderMode,
    pub python: PathBuf,
    pub ort: OnnxRuntimeConfig,
}

/// Images/s at one batch size; `None` where that way of running was not available.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub batch: usize,
    /// petal's engine, host tensors in and out, two clients so that copying the next request's
    /// input overlaps the current run (as concurrent HTTP requests do); `max_batch` is the batch
    /// size, so every session call runs exactly one request.
    pub petal: f64,
    /// onnxruntime's Python `session.run` on the same file and provider, host tensors in and out.
    pub python_ort: Option<f64>,
    /// PyTorch eager, input already on the device (the reference GPU measurements' setting).
    pub torch_on_device: Option<f64>,
    /// PyTorch eager, input copied from the host and logits back each batch (as ort does).
    pub torch_host: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub arch: String,
    pub provider: String,
    pub rows: Vec<BatchRow>,
    /// What the Python side used (versions, provider, device) and why a column is empty.
    pub reference: serde_json::Value,
}

/// The random-weight model for `arch`: 1000 classes at the catalog's usual 224×224.
fn export_random(arch: Arch) -> Result<Vec<u8>> {
    let model = Model::new(arch.network(1000), tch::Device::Cpu);
    let options = ExportOptions {
        image_size: 224,
        class_names: (0..1000).map(|i| format!("class_{i}")).collect(),
        transform: serde_json::to_value(crate::vision::EvalTransform::default()).expect("serializes"),
        ..Default::default()
    };
    export(&model, &options)
}

pub fn batch(b: &BatchBench) -> Result<BatchReport> {
    if b.batches.is_empty() || b.batches.contains(&0) {
        return Err(Error::invalid_request("--batches needs one or more sizes above 0"));
    }
    let dir = files::temp_dir()?;
    let (onnx, onnx_path) = match &b.model {
        BatchModel::Onnx(path) => (files::read(path)?, path.clone()),
        BatchModel::Arch(arch) => {
            let bytes = export_random(*arch)?;
            let path = dir.path().join("model.onnx");
            files::write(&path, &bytes)?;
            (bytes, path)
        }
    };
    let rt = OrtRuntime::init(&b.ort)?;
    // max_batch = the batch size, so that two requests of B images never merge into one call.
    let load = |max_batch| {
        let config = EngineConfig { provider: b.provider, max_batch, ..Default::default() };
        ModelHandle::load(&rt, &onnx, "bench", 1, &config)
    };
    // What the model is and which provider the engine resolves; then the references, alone.
    let info = load(1)?.info.clone();
    let per_image = 3 * info.image_size * info.image_size;

    let args = serde_json::json!({
        "onnx": onnx_path,
        "arch": info.arch,
        "classes": info.class_names.len(),
        "size": info.image_size,
        "batches": b.batches,
        "seconds": b.seconds,
        "provider": info.provider,
    });
    let reference = python_reference(&b.python, dir.path(), "bench_batch.py", PY_BENCH, [args.to_string()])?;
    let column = |name: &str, batch: usize| reference["rows"][batch.to_string()][name].as_f64();

    let mut rows = Vec::new();
    for &batch in &b.batches {
        let handle = load(batch)?;
        // The same values as scripts/bench_batch.py's reference (with random weights a CPU run's
        // speed can depend on them).
        let input: Vec<f32> = (0..batch * per_image).map(|i| (i % 251) as f32 / 251.0 - 0.5).collect();
        for _ in 0..2 {
            handle.infer_blocking(input.clone(), batch)?;
        }
        let calls = throughput(b.seconds, 2, || {
            let (h, input) = (handle.clone(), input.clone());
            move || h.infer_blocking(input.clone(), batch).map(|_| ())
        })?;
        rows.push(BatchRow {
            batch,
            petal: calls * batch as f64,
            python_ort: column("python_ort", batch),
            torch_on_device: column("torch_on_device", batch),
            torch_host: column("torch_host", batch),
        });
    }
    Ok(BatchReport { arch: info.arch.clone(), provider: info.provider.to_string(), rows, reference })
}

impl BatchReport {
    pub fn to_text(&self) -> String {
        let cell = |v: Option<f64>| v.map(|v| format!("{v:>14.1}")).unwrap_or_else(|| format!("{:>14}", "—"));
        let ratio =
            |a: f64, b: Option<f64>| b.map(|b| format!("{:>10.2}", a / b)).unwrap_or_else(|| format!("{:>10}", "—"));
        let mut s = format!(
            "{} on {}, images/s (one request of `batch` images at a time)\n{:>6}{:>14}{:>14}{:>14}{:>14}{:>10}{:>10}\n",
            self.arch, self.provider, "batch", "petal", "python ort", "torch on dev", "torch host", "/ort", "/torch"
        );
        for r in &self.rows {
            s += &format!(
                "{:>6}{}{}{}{}{}{}\n",
                r.batch,
                cell(Some(r.petal)),
                cell(r.python_ort),
                cell(r.torch_on_device),
                cell(r.torch_host),
                ratio(r.petal, r.python_ort),
                ratio(r.petal, r.torch_on_device),
            );
        }
        s += &format!("reference: {}\n", self.reference["about"]);
        for note in self.reference["notes"].as_array().into_iter().flatten() {
            s += &format!("note: {}\n", note.as_str().unwrap_or_default());
        }
        s
    }
}
