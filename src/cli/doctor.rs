//! `petal doctor`: what this installation really has — versions, devices, execution providers,
//! registry — with a clear message for whatever is missing.
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, RegistryBackend};
use crate::infer::runtime::{OrtRuntime, ProviderStatus};
use crate::train::device::{torch_info, TorchInfo};

#[derive(Debug, Serialize)]
pub struct Report {
    pub petal: PetalInfo,
    pub libtorch: TorchInfo,
    pub onnxruntime: OrtInfo,
    pub registry: RegistryInfo,
    /// Everything that needs attention; empty when all is well.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PetalInfo {
    pub version: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub git_commit: &'static str,
}

impl PetalInfo {
    pub fn current() -> Self {
        PetalInfo { version: env!("CARGO_PKG_VERSION"), git_commit: env!("PETAL_GIT_COMMIT") }
    }
}

#[derive(Debug, Serialize)]
pub struct OrtInfo {
    pub loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub providers: Vec<ProviderStatus>,
    /// Threads per operator (0: onnxruntime's choice), and whether they spin between runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intra_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spinning: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct RegistryInfo {
    pub backend: &'static str,
    pub location: String,
    pub exists: bool,
}

pub fn report(config: &Config) -> Report {
    let mut problems = Vec::new();
    let libtorch = torch_info();
    if !libtorch.version.starts_with("2.11.0") {
        problems.push(format!("libtorch {} is loaded; petal is built for 2.11.0", libtorch.version));
    }
    if libtorch.cuda_available && !libtorch.cudnn_available {
        problems.push("CUDA is available to libtorch but cuDNN is not".into());
    }
    let onnxruntime = match OrtRuntime::init(&config.onnxruntime) {
        Ok(rt) => {
            let providers = rt.probe_providers();
            if libtorch.cuda_available && !providers.iter().any(|p| p.name == "CUDAExecutionProvider" && p.loads) {
                problems.push(
                    "a GPU is present but onnxruntime's CUDA execution provider does not load: inference runs on CPU \
                     (install onnxruntime-gpu==1.31.1 for its CUDA provider)"
                        .into(),
                );
            }
            OrtInfo {
                loaded: true,
                version: Some(rt.version.clone()),
                library: Some(rt.library.display().to_string()),
                error: None,
                providers,
                intra_threads: Some(rt.intra_threads),
                spinning: Some(rt.spinning),
            }
        }
        Err(e) => {
            problems.push(e.message.clone());
            OrtInfo {
                loaded: false,
                version: None,
                library: config.onnxruntime.library_path().map(|p| p.display().to_string()),
                error: Some(e.message),
                providers: Vec::new(),
                intra_threads: None,
                spinning: None,
            }
        }
    };
    let registry = RegistryInfo {
        backend: match config.registry.backend {
            RegistryBackend::Local => "local",
            RegistryBackend::S3 => "s3",
            RegistryBackend::Memory => "memory",
        },
        location: config.registry.location(),
        exists: config.registry.backend != RegistryBackend::Local || config.registry.path.is_dir(),
    };
    Report { petal: PetalInfo::current(), libtorch, onnxruntime, registry, problems }
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let t = &self.libtorch;
        let mut s = String::new();
        let commit =
            if self.petal.git_commit.is_empty() { String::new() } else { format!(" ({})", self.petal.git_commit) };
        s += &format!("petal        {}{commit}\n", self.petal.version);
        s += &format!(
            "libtorch     {} (built against {}) at {}\n",
            t.version,
            t.build_version,
            t.library_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "?".into())
        );
        s += &format!(
            "  cuda       {} ({} device(s); libtorch_cuda linked: {})\n",
            yes(t.cuda_available),
            t.cuda_device_count,
            yes(t.cuda_library_loaded)
        );
        s += &format!(
            "  cudnn      {}{}\n",
            yes(t.cudnn_available),
            t.cudnn_version.map(|v| format!(" (version {v})")).unwrap_or_default()
        );
        s += &format!("  cpu threads {}\n", t.cpu_threads);
        s += &format!("  cpu amx-bf16 {} (CPU training of dense backbones in bfloat16)\n", yes(t.cpu_amx_bf16));
        let o = &self.onnxruntime;
        match (&o.version, &o.error) {
            (Some(v), _) => s += &format!("onnxruntime  {v} at {}\n", o.library.as_deref().unwrap_or("?")),
            (None, Some(e)) => s += &format!("onnxruntime  NOT LOADED: {e}\n"),
            (None, None) => s += "onnxruntime  NOT LOADED\n",
        }
        if let (Some(n), Some(spin)) = (o.intra_threads, o.spinning) {
            let n = if n == 0 { "onnxruntime's choice".to_string() } else { n.to_string() };
            s += &format!("  intra-op threads {n}, spinning {}\n", if spin { "on" } else { "off" });
        }
        for p in &o.providers {
            s += &format!(
                "  {:<22} {}{}\n",
                p.name,
                if p.loads { "loads" } else { "unavailable" },
                p.detail.as_ref().map(|d| format!(" — {d}")).unwrap_or_default()
            );
        }
        s += &format!(
            "registry     {} {}{}\n",
            self.registry.backend,
            self.registry.location,
            if self.registry.exists { "" } else { " (not created yet)" }
        );
        if self.problems.is_empty() {
            s += "status       ok\n";
        } else {
            for p in &self.problems {
                s += &format!("problem      {p}\n");
            }
        }
        s
    }
}

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the report; exit code 1 when something needs attention.
pub(super) fn run(config: &Config, args: &DoctorArgs) -> ExitCode {
    let report = report(config);
    if args.json {
        super::invocation::print_json(&report);
    } else {
        print!("{}", report.to_text());
    }
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
