//! Benchmarks, each against its reference measured in the same run: `infer` (onnxruntime's
//! Python `session.run`), `preprocess` (PIL + torchvision's eval transform), `batch` (the same
//! and PyTorch eager, at fixed batch sizes) and `train` (the reference experiment's torchvision +
//! DataLoader stack).
pub mod batch;
pub mod infer;
pub mod preprocess;
pub mod train;

pub use infer::{infer, InferBench, InferReport};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::invocation::print_json;
use crate::config::{Config, ProviderMode};
use crate::error::{Error, Result};
use crate::train::arch::Arch;
use crate::train::device::DeviceChoice;
use crate::train::precision::Precision;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The reference training stack (torchvision + DataLoader) and petal on the same images.
    Train {
        /// Dataset folder (ImageFolder or Oxford Flowers 102).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: Arch,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Training images end to end (two epochs; the second is reported).
        #[arg(long, default_value_t = 256)]
        images: usize,
        /// Images for the input-pipeline measurements.
        #[arg(long, default_value_t = 300)]
        pipeline_images: usize,
        /// Bare-step measurement: steps after warm-up.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Whole measurements (reference and petal each time): the table shows medians and the
        /// ratios' spread.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// DataLoader workers and petal loader threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        #[arg(long, value_enum, default_value_t)]
        device: DeviceChoice,
        /// Mixed precision, for both stacks: float16 autocast with loss scaling on CUDA, bfloat16
        /// autocast on the CPU (default: petal's choice for the backbone and device).
        #[arg(long)]
        mixed: Option<bool>,
        /// The reference's mixed precision when it should differ from petal's (e.g. `false`: the
        /// reference notebook's float32 against petal's default).
        #[arg(long)]
        reference_mixed: Option<bool>,
        /// channels_last memory format, for both stacks (default: on, petal's default).
        #[arg(long)]
        channels_last: Option<bool>,
        /// The Python with torch and torchvision.
        #[arg(long, env = "PETAL_PYTHON", default_value = "python3")]
        python: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Python onnxruntime session.run vs petal's engine in process vs petal over HTTP.
    Infer {
        /// A model exported by `petal export`.
        #[arg(long, value_name = "FILE")]
        onnx: PathBuf,
        /// The image every request sends.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrent clients for the throughput rows.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
        /// Batch size with batching on.
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
        #[command(flatten)]
        engine: EngineBenchArgs,
    },
    /// Decode, resize and normalise per image on one thread: petal vs PIL + torchvision.
    Preprocess {
        /// Images to measure (JPEG, PNG or WebP).
        #[arg(long = "image", value_name = "FILE", required = true)]
        images: Vec<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// The Python with torch, torchvision and Pillow.
        #[arg(long, env = "PETAL_PYTHON", default_value = ".venv/bin/python")]
        python: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Images/s at fixed batch sizes: petal's engine vs Python onnxruntime and PyTorch eager.
    Batch {
        /// A model exported by `petal export` …
        #[arg(long, value_name = "FILE", conflicts_with = "arch", required_unless_present = "arch")]
        onnx: Option<PathBuf>,
        /// … or an architecture, exported here with random weights (1000 classes, 224×224).
        #[arg(long)]
        arch: Option<Arch>,
        /// Batch sizes, each measured as one request of that many images at a time.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
        batches: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[command(flatten)]
        engine: EngineBenchArgs,
    },
}

/// What the inference benchmarks share.
#[derive(clap::Args)]
pub struct EngineBenchArgs {
    /// Execution provider of petal's engine: auto, cuda or cpu; the references run on the one the
    /// engine resolved.
    #[arg(long, value_enum, default_value_t)]
    provider: ProviderMode,
    /// The Python for the references (onnxruntime; for `bench batch` also torch and torchvision).
    #[arg(long, env = "PETAL_PYTHON", default_value = ".venv/bin/python")]
    python: PathBuf,
    #[arg(long)]
    json: bool,
}

/// A report as JSON, or as its text.
fn show(report: &impl serde::Serialize, json: bool, text: String) {
    if json {
        print_json(report);
    } else {
        print!("{text}");
    }
}

pub(super) fn run(config: &Config, args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Infer { onnx, image, seconds, clients, max_batch, engine } => {
            let b = InferBench {
                onnx,
                image,
                python: engine.python,
                seconds,
                clients,
                max_batch,
                provider: engine.provider,
                ort: config.onnxruntime.clone(),
            };
            let r = infer(&b)?;
            show(&r, engine.json, r.to_text());
        }
        BenchCommand::Preprocess { images, seconds, python, json } => {
            let r = preprocess::preprocess(&images, seconds, &python)?;
            show(&r, json, r.to_text());
        }
        BenchCommand::Batch { onnx, arch, batches, seconds, engine } => {
            let model = match (onnx, arch) {
                (Some(path), _) => batch::BatchModel::Onnx(path),
                (None, Some(arch)) => batch::BatchModel::Arch(arch),
                (None, None) => unreachable!("clap requires --onnx or --arch"),
            };
            let b = batch::BatchBench {
                model,
                batches,
                seconds,
                provider: engine.provider,
                python: engine.python,
                ort: config.onnxruntime.clone(),
            };
            let r = batch::batch(&b)?;
            show(&r, engine.json, r.to_text());
        }
        BenchCommand::Train {
            data,
            backbone,
            batch,
            images,
            pipeline_images,
            steps,
            warmup,
            runs,
            workers,
            device,
            mixed,
            reference_mixed,
            channels_last,
            python,
            json,
        } => {
            let device = crate::train::device::select(device)?;
            let b = train::TrainBench {
                data,
                arch: backbone,
                batch,
                images,
                pipeline_images,
                python,
                device,
                workers,
                steps,
                warmup,
                precision: Precision::choose(mixed, device, backbone),
                reference_precision: Precision::choose(reference_mixed.or(mixed), device, backbone),
                channels_last: channels_last.unwrap_or(true),
                runs,
            };
            let r = train::train(&b)?;
            show(&r, json, r.to_text());
        }
    }
    Ok(())
}

/// Runs a Python reference (`source`, compiled in, written to `dir/name`) with `args` and reads the
/// one JSON object it prints.
pub(crate) fn python_reference(
    python: &Path,
    dir: &Path,
    name: &str,
    source: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Result<serde_json::Value> {
    let script = dir.join(name);
    crate::foundation::files::write(&script, source.as_bytes())?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| Error::io("running", python, e))?;
    if !out.status.success() {
        return Err(Error::internal(format!("the Python reference failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::internal(format!("the Python reference's output: {e}")))
}
