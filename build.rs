//! Links petal against the libtorch of the torch wheel so that one binary runs anywhere the
//! same torch is installed (docs/native_stack.md):
//! 1. embeds an rpath to torch's `lib/` folder, so no LD_LIBRARY_PATH is needed on the build host;
//! 2. force-links `libtorch_cuda.so` when it exists, because `--as-needed` would otherwise drop it
//!    and `tch::Cuda::is_available()` would be false even on a GPU host (tch-rs #907, #980);
//! 3. records the libtorch version and git commit for `petal doctor` and provenance records;
//! 4. compiles csrc/: optim.cpp (fused Adam and AMP kernels, which tch does not bind),
//!    tensor_cache.cpp (the caching CPU allocator training uses) and cpu_autocast.cpp (bf16
//!    autocast on the CPU, which tch's `autocast` leaves off).
use std::path::PathBuf;
use std::process::Command;

fn torch_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python".into());
    let out =
        Command::new(python).args(["-c", "import torch, os; print(os.path.dirname(torch.__file__))"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The C++ ABI libtorch was built with, as torch reports it.
fn cxx11_abi() -> Option<u8> {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python".into());
    let out =
        Command::new(python).args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new().compile_fds(fds).expect("ONNX protobuf bindings");

    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-changed=build.rs");

    let dir = torch_dir().expect(
        "cannot find libtorch: run inside `make` (scripts/env.sh), or set LIBTORCH to a libtorch 2.11.0 folder",
    );
    let lib = dir.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-ltorch_cuda,--as-needed", lib.display());
    }
    let version = std::fs::read_to_string(dir.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PETAL_LIBTORCH_BUILD_VERSION={version}");

    // The C++ shims (csrc/), compiled against the same libtorch's headers with its C++ ABI.
    println!("cargo:rerun-if-changed=csrc/optim.cpp");
    println!("cargo:rerun-if-changed=csrc/tensor_cache.cpp");
    println!("cargo:rerun-if-changed=csrc/cpu_autocast.cpp");
    let abi = cxx11_abi().unwrap_or(1);
    cc::Build::new()
        .cpp(true)
        .file("csrc/optim.cpp")
        .file("csrc/tensor_cache.cpp")
        .file("csrc/cpu_autocast.cpp")
        .include(dir.join("include"))
        .include(dir.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("petal_csrc");

    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=PETAL_GIT_COMMIT={commit}");
    for watched in [".git/HEAD", ".git/logs/HEAD"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
}
