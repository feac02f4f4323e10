//! The benchmark commands run end to end and report every column they promise (the numbers
//! themselves are for BENCHMARKS.md, never asserted here).
use crate::common;

use crate::common::{petal, python, tools};

fn json_of(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn bench_batch_measures_petal_python_ort_and_torch_at_each_batch_size() {
    let r = json_of(
        petal().args(["bench", "batch", "--arch", "mobilenet_v2", "--batches", "1,3", "--seconds", "0.2"]).args([
            "--provider",
            "cpu",
            "--python",
            python().to_str().unwrap(),
        ]),
    );
    assert_eq!(r["arch"], "mobilenet_v2");
    assert_eq!(r["provider"], "CPUExecutionProvider");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|row| row["batch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3]);
    for row in rows {
        positive(&row["petal"], "petal");
        positive(&row["python_ort"], "python_ort");
        positive(&row["torch_on_device"], "torch_on_device");
        // On the CPU the input is where torch runs: no host-transfer column.
        assert!(row["torch_host"].is_null(), "{row}");
    }
    let about = r["reference"]["about"].as_str().unwrap();
    assert!(about.contains("onnxruntime") && about.contains("on CPUExecutionProvider"), "{about}");
    assert!(about.contains("torchvision") && about.contains("on cpu"), "{about}");
}

#[test]
fn bench_batch_refuses_what_it_cannot_measure() {
    let refused = |args: &[&str], code: &str| {
        let out = petal().args(["bench", "batch", "--seconds", "0.1"]).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(code), "{args:?}: {stderr}");
    };
    refused(&["--arch", "mobilenet_v2", "--batches", "0"], "invalid_request");
    refused(&["--arch", "alexnet"], "unknown backbone \"alexnet\"");
    // Neither a model file nor an architecture.
    refused(&[], "--onnx");
    // CUDA asked for where this onnxruntime has none: refused, not run on the CPU instead.
    let doctor = json_of(petal().arg("doctor"));
    let cuda = doctor["onnxruntime"]["providers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "CUDAExecutionProvider" && p["loads"] == true));
    if !cuda {
        refused(&["--arch", "mobilenet_v2", "--provider", "cuda"], "provider_unavailable");
    }
}

#[test]
fn bench_infer_measures_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("mb.onnx");
    common::export_real_mobilenet(&["--out".as_ref(), onnx.as_os_str()]);
    let r = json_of(
        petal()
            .args(["bench", "infer", "--onnx"])
            .arg(&onnx)
            .arg("--image")
            .arg(tools().join("testdata/chelsea.png"))
            .args(["--seconds", "0.2", "--clients", "1,2", "--max-batch", "2", "--provider", "cpu", "--python"])
            .arg(python()),
    );
    assert_eq!(r["provider"], "CPUExecutionProvider");
    let columns = ["python_session_run", "engine_off", "engine_on", "engine_with_preprocess", "http_off", "http_on"];
    for column in columns.into_iter().chain(["v2_bytes_off", "v2_fp32_off"]) {
        let m = &r[column];
        let p50 = positive(&m["p50_ms"], &format!("{column}.p50_ms"));
        assert!(positive(&m["p99_ms"], &format!("{column}.p99_ms")) >= p50, "{column}: {m}");
        let clients: Vec<u64> = m["throughput"].as_array().unwrap().iter().map(|t| t[0].as_u64().unwrap()).collect();
        assert_eq!(clients, vec![1, 2], "{column}");
        for t in m["throughput"].as_array().unwrap() {
            positive(&t[1], &format!("{column} images/s"));
        }
    }
}

/// `petal bench train` measures every row against the reference stack, for each run, with the
/// bare step's parts on both sides and how petal's tensor cache served its steps.
#[test]
fn bench_train_measures_every_row_for_each_run() {
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 6, 48, 3);
    let v = json_of(
        petal()
            .args(["bench", "train", "--data"])
            .arg(dir.path())
            .args(["--batch", "2", "--images", "6", "--pipeline-images", "6", "--steps", "1", "--warmup", "1"])
            .args(["--runs", "2", "--workers", "1", "--device", "cpu"])
            .env("PETAL_PYTHON", python()),
    );
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        for key in ["petal_pipeline_one_core", "petal_pipeline_all_threads", "petal_bare_step", "petal_end_to_end"] {
            positive(&r[key], key);
        }
        for key in ["pipeline_one_core", "pipeline_loader", "bare_step", "end_to_end"] {
            positive(&r["reference"][key], key);
        }
        for i in 0..3 {
            positive(&r["petal_step_parts"][i], "a part of petal's step");
            positive(&r["reference"]["step_parts"][i], "a part of the reference's step");
        }
        // The steps after the first reuse the tensors the one before freed.
        let cache = &r["petal_tensor_cache"];
        assert!(cache[0].as_u64().unwrap() > 0 && cache[3].as_u64().unwrap() > 0, "tensor cache: {cache}");
    }
}

#[test]
fn bench_preprocess_measures_each_step_of_both_stacks_for_each_image() {
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flowers102/rose/image_01147.jpg");
    let png = tools().join("testdata/chelsea.png");
    let r = json_of(
        petal().args(["bench", "preprocess", "--seconds", "0.05", "--python", python().to_str().unwrap()]).args([
            "--image".as_ref(),
            photo.as_os_str(),
            "--image".as_ref(),
            png.as_os_str(),
        ]),
    );
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r}");
    assert_eq!((rows[1]["width"].as_u64(), rows[1]["height"].as_u64()), (Some(451), Some(300)));
    for row in rows {
        for stack in ["petal", "petal_served", "reference"] {
            for step in ["decode_ms", "resize_crop_ms", "normalise_ms", "total_ms"] {
                positive(&row[stack][step], &format!("{stack}.{step}"));
            }
        }
    }
    assert!(r["reference_versions"].as_str().unwrap().contains("Pillow"), "{r}");
}
