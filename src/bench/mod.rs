//! Benchmarks, each against its reference measured in the same run: `infer` (onnxruntime's
//! Python `session.run`), `batch` (the same and PyTorch eager, at fixed batch sizes) and `train`
//! (the notebook's torchvision + DataLoader stack).
pub mod batch;
pub mod infer;
pub mod train;

pub use infer::{infer, InferBench, InferReport};

use std::ffi::OsStr;
use std::path::Path;

use crate::error::{Error, Result};

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
    std::fs::write(&script, source)?;
    let out = std::process::Command::new(python).arg(&script).args(args).output()?;
    if !out.status.success() {
        return Err(Error::internal(format!("the Python reference failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::internal(format!("the Python reference's output: {e}")))
}
