//! The command line: configuration layering and validation, `petal doctor`.
use crate::common;

use crate::common::petal;

fn effective_config(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.arg("config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn configuration_layers_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("petal.toml");
    std::fs::write(&file, "[server]\nport = 1111\nworkers = 3\n[log]\nlevel = \"debug\"\n").unwrap();

    let defaults = effective_config(&mut petal());
    assert_eq!(defaults["server"]["port"], 8080);
    assert_eq!(defaults["server"]["host"], "127.0.0.1");
    assert_eq!(defaults["log"]["level"], "info,ort=warn");

    let from_file = effective_config(petal().arg("--config").arg(&file));
    assert_eq!(from_file["server"]["port"], 1111);
    assert_eq!(from_file["server"]["workers"], 3);
    assert_eq!(from_file["log"]["level"], "debug");

    // PETAL_CONFIG names the file too.
    let via_env_file = effective_config(petal().env("PETAL_CONFIG", &file));
    assert_eq!(via_env_file["server"]["port"], 1111);

    // The environment beats the file, key by key.
    let env = effective_config(
        petal().arg("--config").arg(&file).env("PETAL__SERVER__PORT", "2222").env("PETAL__LOG__LEVEL", "warn"),
    );
    assert_eq!(env["server"]["port"], 2222);
    assert_eq!(env["server"]["workers"], 3);
    assert_eq!(env["log"]["level"], "warn");

    // Flags beat the environment.
    let flags = effective_config(
        petal().args(["--log-level", "error", "--config"]).arg(&file).env("PETAL__LOG__LEVEL", "warn"),
    );
    assert_eq!(flags["log"]["level"], "error");
}

#[test]
fn serve_flags_beat_the_environment() {
    // PETAL__SERVER__PORT would be rejected at bind time as a privileged, taken or odd port; the
    // flag wins, so the server binds a free port.
    let server = common::Server::start_with(|cmd| {
        cmd.env("PETAL__SERVER__PORT", "1");
    });
    assert!(!server.base.ends_with(":1"), "{}", server.base);
}

fn failing(cmd: &mut std::process::Command) -> String {
    let out = cmd.arg("config").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_configuration_is_rejected_naming_the_key() {
    let err = failing(petal().env("PETAL__SERVER__PORT", "not-a-port"));
    assert!(err.contains("server.port") && err.contains("PETAL__SERVER__PORT"), "{err}");

    let err = failing(petal().env("PETAL__SERVER__PORT", "70000"));
    assert!(err.contains("server.port"), "{err}");

    let err = failing(petal().env("PETAL__LOG__FORMAT", "xml"));
    assert!(err.contains("log.format") && err.contains("xml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[server]\nprot = 1\n").unwrap();
    let err = failing(petal().arg("--config").arg(&file));
    assert!(err.contains("prot") && err.contains("typo.toml"), "{err}");

    let err = failing(petal().env("PETAL__SERVER__WORKERS", "100000"));
    assert!(err.contains("server.workers"), "{err}");

    let err = failing(petal().arg("--config").arg(dir.path().join("missing.toml")));
    assert!(err.contains("missing.toml") && err.contains("does not exist"), "{err}");
}

#[test]
fn doctor_reports_the_real_stack() {
    let out = petal().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("petal        {}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("libtorch     2.11.0"), "{text}");
    assert!(text.contains("onnxruntime  1.31.1"), "{text}");
    assert!(text.lines().any(|l| l.contains("CPUExecutionProvider") && l.contains("loads")), "{text}");
    assert!(text.contains("CUDAExecutionProvider"), "{text}");
    assert!(text.contains("registry     local"), "{text}");
    assert!(text.contains("status       ok"), "{text}");

    let out = petal().args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["libtorch"]["version"].as_str().unwrap().starts_with("2.11.0"));
    assert_eq!(report["onnxruntime"]["version"], "1.31.1");
    assert_eq!(report["onnxruntime"]["loaded"], true);
    // Whatever this host has, the report agrees with libtorch itself.
    assert_eq!(report["libtorch"]["cuda_available"], tch::Cuda::is_available());
    assert_eq!(report["libtorch"]["cuda_library_loaded"], true, "build.rs force-links libtorch_cuda.so");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["onnxruntime"]["spinning"], true, "onnxruntime's default");
}

/// onnxruntime counts the machine's cores; petal gives its operators the CPUs the process may use
/// (here an affinity mask of one CPU, as a container's quota would allow fewer).
#[test]
fn onnxruntime_threads_follow_the_cpus_the_process_may_use() {
    let allowed = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let doctor = |cmd: &mut std::process::Command| -> serde_json::Value {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let petal_bin = common::petal_bin();
    let pinned = doctor(
        std::process::Command::new("taskset")
            .args(["-c", "0", petal_bin, "doctor", "--json"])
            .env_remove("PETAL__ONNXRUNTIME__INTRA_THREADS"),
    );
    if allowed > 1 {
        assert_eq!(pinned["onnxruntime"]["intra_threads"], 1, "{pinned}");
    }
    // Unrestricted: onnxruntime's choice (0), or this test's own quota where it runs under one.
    let whole = doctor(petal().args(["doctor", "--json"]))["onnxruntime"]["intra_threads"].as_u64();
    assert!(whole == Some(0) || whole == Some(allowed as u64), "{whole:?}");
    let set = doctor(
        petal()
            .args(["doctor", "--json"])
            .env("PETAL__ONNXRUNTIME__INTRA_THREADS", "3")
            .env("PETAL__ONNXRUNTIME__SPINNING", "false"),
    );
    assert_eq!(
        (set["onnxruntime"]["intra_threads"].as_u64(), set["onnxruntime"]["spinning"].as_bool()),
        (Some(3), Some(false))
    );
}

#[test]
fn doctor_explains_a_missing_onnxruntime() {
    let out = petal().args(["doctor"]).env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(text.contains("onnxruntime  NOT LOADED"), "{text}");
    assert!(text.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{text}");
    assert!(text.contains("problem"), "{text}");
    // libtorch is still reported.
    assert!(text.contains("libtorch     2.11.0"), "{text}");
}

/// A `--recipe` file is held to the same ranges as a job's recipe, before any dataset is read
/// (it was not: out-of-range values went on to training).
#[test]
fn finetune_refuses_an_out_of_range_recipe_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = serde_json::to_value(petal::train::recipe::Recipe::default()).unwrap();
    for (path, value, name) in [
        ("/batch_size", serde_json::json!(0), "batch_size"),
        ("/augment/hflip", serde_json::json!(1.5), "augment.hflip"),
        ("/phase1/epochs", serde_json::json!(100_000), "epochs"),
    ] {
        let original = recipe.pointer(path).unwrap().clone();
        *recipe.pointer_mut(path).unwrap() = value;
        let file = dir.path().join("recipe.json");
        std::fs::write(&file, recipe.to_string()).unwrap();
        let out = petal()
            .args(["finetune", "--data", "/no/such/dataset", "--device", "cpu", "--weights", "scratch", "--recipe"])
            .arg(&file)
            .env("PETAL__WEIGHTS__CACHE", dir.path().join("cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(err.contains("[invalid_arguments]") && err.contains(name), "{path}: {err}");
        *recipe.pointer_mut(path).unwrap() = original;
    }
}

/// A file a user names that cannot be read is named in the error, with what was being done.
#[test]
fn io_errors_name_the_file_and_the_action() {
    let out = petal().args(["export", "--arch", "resnet18", "--weights", "/no/such/weights.pth"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reading /no/such/weights.pth: No such file or directory") && err.contains("[not_found]"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = petal()
        .args(["finetune", "--data", "/no/such/dataset.zip", "--device", "cpu", "--weights", "scratch", "--recipe"])
        .arg(dir.path().join("missing.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("reading {}", dir.path().join("missing.json").display())), "{err}");
}
