//! The process-wide ONNX Runtime: loads `libonnxruntime` dynamically (so a missing library is an
//! error we can explain, not a loader abort) and finds out which execution providers really load.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::ep::{ExecutionProvider, CPU, CUDA};
use ort::session::Session;
use serde::Serialize;

use crate::config::OnnxRuntimeConfig;
use crate::error::{Error, Result};

/// A loaded ONNX Runtime environment.
pub struct OrtRuntime {
    pub library: PathBuf,
    pub version: String,
    pub intra_threads: usize,
    /// onnxruntime's intra-op threads spin between runs (`onnxruntime.spinning`).
    pub spinning: bool,
    environment: Environment,
}

/// Whether one execution provider is compiled into the loaded library and really registers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProviderStatus {
    pub name: &'static str,
    /// The loaded onnxruntime build includes this provider.
    pub compiled_in: bool,
    /// A session could register it (its libraries and devices were found).
    pub loads: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// ort keeps one library per process: the first successful load wins, and so must we.
static RUNTIME: Mutex<Option<Arc<OrtRuntime>>> = Mutex::new(None);

impl OrtRuntime {
    /// Loads onnxruntime from `config` (or `ORT_DYLIB_PATH`), once per process.
    pub fn init(config: &OnnxRuntimeConfig) -> Result<Arc<OrtRuntime>> {
        let mut slot = RUNTIME.lock().expect("runtime lock");
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let library = config.library_path().ok_or_else(|| {
            Error::native_library(
                "onnxruntime library not configured: set onnxruntime.library (PETAL__ONNXRUNTIME__LIBRARY) \
                 or ORT_DYLIB_PATH to libonnxruntime.so (make run/test set it to the venv's copy)",
            )
        })?;
        check_file(&library)?;
        let builder = ort::init_from(&library)
            .map_err(|e| Error::native_library(format!("cannot load onnxruntime from {}: {e}", library.display())))?;
        let environment = builder
            .with_name("petal")
            .build()
            .map_err(|e| Error::native_library(format!("onnxruntime environment: {e}")))?;
        let version = version_from_info(ort::info())
            .or_else(|| version_from_file_name(&library))
            .unwrap_or_else(|| "unknown".into());
        let rt = Arc::new(OrtRuntime {
            library,
            version,
            intra_threads: intra_threads(config.intra_threads, allowed_cpus(), online_cpus()),
            spinning: config.spinning,
            environment,
        });
        *slot = Some(rt.clone());
        Ok(rt)
    }

    /// A session builder on this environment with petal's thread settings.
    pub fn session_builder(&self) -> Result<ort::session::builder::SessionBuilder> {
        let builder = Session::builder(&self.environment)
            .map_err(ort_error)?
            .with_intra_op_spinning(self.spinning)
            .map_err(|e| ort_error(e.into()))?;
        if self.intra_threads > 0 {
            builder.with_intra_threads(self.intra_threads).map_err(|e| ort_error(e.into()))
        } else {
            Ok(builder)
        }
    }

    /// Loads an ONNX model on the CPU execution provider.
    pub fn cpu_session(&self, model: &[u8]) -> Result<Session> {
        self.session_builder()?
            // ort registers the CPU provider with onnxruntime's arena allocator off unless asked;
            // without it every run allocates its activations afresh, which cost batched runs half
            // their throughput here (BENCHMARKS.md). onnxruntime's own default is on.
            .with_execution_providers([CPU::default().with_arena_allocator(true).build().error_on_failure()])
            .map_err(|e| ort_error(e.into()))?
            .commit_from_memory(model)
            .map_err(ort_error)
    }

    /// Tries each provider petal can use; CPU always works once the library is loaded.
    pub fn probe_providers(&self) -> Vec<ProviderStatus> {
        vec![
            self.probe("CPUExecutionProvider", CPU::is_available(), || CPU::default().build()),
            self.probe("CUDAExecutionProvider", CUDA::is_available(), || CUDA::default().build()),
        ]
    }

    fn probe(
        &self,
        name: &'static str,
        compiled_in: ort::Result<bool>,
        ep: impl Fn() -> ort::ep::ExecutionProviderDispatch,
    ) -> ProviderStatus {
        let compiled_in = match compiled_in {
            Ok(b) => b,
            Err(e) => return ProviderStatus { name, compiled_in: false, loads: false, detail: Some(e.to_string()) },
        };
        if !compiled_in {
            return ProviderStatus {
                name,
                compiled_in,
                loads: false,
                detail: Some(format!("not in this onnxruntime build ({})", self.library.display())),
            };
        }
        let registered = self
            .session_builder()
            .and_then(|b| b.with_execution_providers([ep().error_on_failure()]).map_err(|e| ort_error(e.into())));
        match registered {
            Ok(_) => ProviderStatus { name, compiled_in, loads: true, detail: None },
            Err(e) => ProviderStatus { name, compiled_in, loads: false, detail: Some(e.message) },
        }
    }
}

/// Threads for one session's operators: the configured number; else, where this process may use
/// fewer CPUs than the machine has online (a container's CPU quota, an affinity mask), that many —
/// onnxruntime would count the machine's cores, and a pod limited to 4 CPUs on a 64-core node
/// would run 64 threads; else 0, onnxruntime's own choice (one per physical core).
fn intra_threads(configured: usize, allowed: Option<usize>, online: Option<usize>) -> usize {
    match (configured, allowed, online) {
        (n, _, _) if n > 0 => n,
        (_, Some(a), Some(o)) if a < o => a,
        _ => 0,
    }
}

/// The CPUs this process may use: Rust's count honours cgroup quotas and the affinity mask.
fn allowed_cpus() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// The machine's online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-63` or `0-3,8-11`).
fn online_cpus() -> Option<usize> {
    parse_cpu_list(std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?.trim())
}

fn parse_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |total, part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (b >= a).then(|| total + b - a + 1)
    })
}

fn check_file(library: &Path) -> Result<()> {
    match std::fs::metadata(library) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::native_library(format!("onnxruntime library {} is not a file", library.display()))),
        Err(e) => Err(Error::native_library(format!(
            "onnxruntime library {} cannot be read: {e} (install onnxruntime==1.31.1 from PyPI and point \
             ORT_DYLIB_PATH or onnxruntime.library at onnxruntime/capi/libonnxruntime.so.1.31.1)",
            library.display()
        ))),
    }
}

fn ort_error(e: ort::Error) -> Error {
    Error::internal(format!("onnxruntime: {e}"))
}

/// `ORT Build Info: git-branch=rel-1.31.1, …` → `1.31.1`.
fn version_from_info(info: &str) -> Option<String> {
    let branch = info.split([',', ' ']).find_map(|part| part.trim().strip_prefix("git-branch=rel-"))?;
    Some(branch.to_string())
}

/// `libonnxruntime.so.1.31.1` → `1.31.1`.
fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let version = name.split_once(".so.")?.1;
    version.chars().all(|c| c.is_ascii_digit() || c == '.').then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed() {
        assert_eq!(
            version_from_info("ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release")
                .as_deref(),
            Some("1.31.1")
        );
        assert_eq!(version_from_info("nothing"), None);
        assert_eq!(version_from_file_name(Path::new("/x/libonnxruntime.so.1.31.1")).as_deref(), Some("1.31.1"));
        assert_eq!(version_from_file_name(Path::new("/x/libonnxruntime.so")), None);
    }

    #[test]
    fn operators_get_the_cpus_a_container_allows() {
        assert_eq!(parse_cpu_list("0-63"), Some(64));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(intra_threads(3, Some(4), Some(64)), 3, "configured wins");
        assert_eq!(intra_threads(0, Some(4), Some(64)), 4, "a quota of 4 CPUs on a 64-CPU node");
        assert_eq!(intra_threads(0, Some(64), Some(64)), 0, "the whole machine: onnxruntime's choice");
        assert_eq!(intra_threads(0, None, Some(64)), 0);
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let e = check_file(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::NativeLibraryMissing);
        assert!(e.message.contains("/nonexistent/libonnxruntime.so"), "{}", e.message);
    }
}
