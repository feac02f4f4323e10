//! What libtorch petal really runs on: the loaded library's version and folder, and whether CUDA
//! and cuDNN are usable (they are only when `libtorch_cuda.so` was force-linked, see build.rs).
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The libtorch version petal was built against.
pub const BUILD_LIBTORCH_VERSION: &str = env!("PETAL_LIBTORCH_BUILD_VERSION");

#[derive(Debug, Clone, Serialize)]
pub struct TorchInfo {
    /// Version of the libtorch actually loaded (from its `version.py`), else the build's.
    pub version: String,
    pub build_version: &'static str,
    /// Folder of the loaded `libtorch_cpu.so`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library_dir: Option<PathBuf>,
    /// `libtorch_cuda.so` is mapped into the process.
    pub cuda_library_loaded: bool,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cudnn_available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cudnn_version: Option<i64>,
    /// Threads libtorch uses for CPU work.
    pub cpu_threads: i32,
    /// The CPU has AMX-BF16 units this process may use: CPU training of dense backbones then
    /// defaults to bfloat16 mixed precision (`train::precision`).
    pub cpu_amx_bf16: bool,
}

/// Inspects the loaded libtorch. Cheap; safe on hosts without a GPU.
pub fn torch_info() -> TorchInfo {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let library_dir = mapped_library(&maps, "libtorch_cpu.so").and_then(|p| p.parent().map(Path::to_path_buf));
    let cuda_library_loaded = mapped_library(&maps, "libtorch_cuda.so").is_some();
    let version = library_dir
        .as_deref()
        .and_then(|lib| lib.parent())
        .and_then(|torch| std::fs::read_to_string(torch.join("version.py")).ok())
        .and_then(|text| parse_version_py(&text))
        .unwrap_or_else(|| BUILD_LIBTORCH_VERSION.to_string());
    let cuda_available = tch::Cuda::is_available();
    let cudnn_available = cuda_available && tch::Cuda::cudnn_is_available();
    TorchInfo {
        version,
        build_version: BUILD_LIBTORCH_VERSION,
        library_dir,
        cuda_library_loaded,
        cuda_available,
        cuda_device_count: if cuda_available { tch::Cuda::device_count() } else { 0 },
        cudnn_available,
        cudnn_version: cudnn_available.then(tch::utils::version_cudnn),
        cpu_threads: tch::get_num_threads(),
        cpu_amx_bf16: crate::train::precision::cpu_amx_bf16(),
    }
}

/// The machine, for provenance records: CPU model, logical cores, memory, the training device and
/// libtorch's view of CUDA.
pub fn hardware(device: tch::Device) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok());
    let info = torch_info();
    serde_json::json!({
        "cpu": cpu,
        "logical_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": mem_kib.map(|k| (k as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0),
        "device": format!("{device:?}"),
        "cuda_devices": info.cuda_device_count,
        "cudnn_version": info.cudnn_version,
        "libtorch": info.version,
        "torch_threads": info.cpu_threads,
        "cpu_amx_bf16": info.cpu_amx_bf16,
    })
}

/// Where to train: `auto` (CUDA when present), `cpu` or `cuda`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(crate::Error::new(
                crate::ErrorCode::InvalidArguments,
                format!("device: {}, not {other:?}", Self::EXPECTED),
            )),
        }
    }
}

impl DeviceChoice {
    /// The choices, as every refusal names them (`api::parse_json` answers a job spec with another
    /// device `invalid_arguments` by it).
    pub const EXPECTED: &'static str = "auto, cpu or cuda";
}

impl TryFrom<String> for DeviceChoice {
    type Error = crate::Error;
    fn try_from(s: String) -> crate::Result<Self> {
        s.parse()
    }
}

/// The device a choice means on this host; `cuda` without a usable CUDA device is an error.
pub fn select(choice: DeviceChoice) -> crate::Result<tch::Device> {
    use crate::error::{Error, ErrorCode};
    let cuda = tch::Cuda::is_available();
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Cuda if cuda => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Cuda => {
            Err(Error::new(ErrorCode::DeviceUnavailable, "device cuda: no CUDA device is usable here"))
        }
        DeviceChoice::Auto => Ok(if cuda { tch::Device::Cuda(0) } else { tch::Device::Cpu }),
    }
}

/// Finds the path of a shared library in the text of `/proc/self/maps`.
fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| Path::new(path).file_name().is_some_and(|f| f == name))
        .map(PathBuf::from)
}

fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("__version__ = ")).map(|v| v.trim().trim_matches(['\'', '"']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_and_version() {
        let maps = "7f00-7f01 r-xp 00000000 08:01 1 /a/torch/lib/libtorch_cpu.so\n7f02-7f03 r--p 0 0 0 [heap]\n";
        assert_eq!(mapped_library(maps, "libtorch_cpu.so"), Some(PathBuf::from("/a/torch/lib/libtorch_cpu.so")));
        assert_eq!(mapped_library(maps, "libtorch_cuda.so"), None);
        assert_eq!(parse_version_py("x = 1\n__version__ = '2.11.0+cu130'\n").as_deref(), Some("2.11.0+cu130"));
    }

    #[test]
    fn the_loaded_libtorch_is_the_pinned_one() {
        let info = torch_info();
        assert!(info.version.starts_with("2.11.0"), "{info:?}");
        assert!(info.library_dir.is_some(), "{info:?}");
        assert!(info.cpu_threads >= 1);
    }
}
