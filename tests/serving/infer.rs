//! The inference engine on the real MobileNetV2 ImageNet weights: export → registry → ort, the
//! same answers from Python's onnxruntime, batching, a full queue, provider choice.
use crate::common;

use std::path::Path;
use std::sync::Arc;

use petal::config::OnnxRuntimeConfig;
use petal::config::{EngineConfig, ProviderMode};
use petal::infer::engine::ModelHandle;
use petal::infer::runtime::OrtRuntime;
use petal::ErrorCode;
use tch::Tensor;

/// The real ImageNet MobileNetV2 exported by `petal export` into `dir/model.onnx`.
fn exported(dir: &Path) -> Vec<u8> {
    let out = dir.join("model.onnx");
    common::export_real_mobilenet(&["--out".as_ref(), out.as_os_str()]);
    std::fs::read(out).unwrap()
}

#[test]
fn export_publish_classify_real_photos() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry");
    common::export_real_mobilenet(&[
        "--publish".as_ref(),
        "imagenet-mbv2".as_ref(),
        "--registry".as_ref(),
        reg.as_os_str(),
    ]);
    assert!(reg.join("models/imagenet-mbv2/versions/00000001.json").exists());

    let out = common::petal()
        .args(["classify", "--json", "--top-k", "3", "--model", "imagenet-mbv2:1", "--registry"])
        .arg(&reg)
        .arg(common::tools().join("testdata/chelsea.png"))
        .arg(common::tools().join("testdata/coffee.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["provider"], "CPUExecutionProvider");
    let cat = &v["results"][0]["predictions"][0];
    assert!(["Egyptian cat", "tabby", "tiger cat"].contains(&cat["name"].as_str().unwrap()), "{v}");
    assert_eq!(v["results"][1]["predictions"][0]["name"], "espresso", "{v}");

    // The manifest records the base weights and their terms.
    let out = common::petal().args(["registry", "show", "imagenet-mbv2", "--registry"]).arg(&reg).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["provenance"]["base_weights"]["catalog"], "MobileNet_V2_Weights.IMAGENET1K_V1");
    assert_eq!(m["provenance"]["base_weights"]["licences"][1]["commercial_use"], false);
}

#[test]
fn python_onnxruntime_agrees_with_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = exported(dir.path());
    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let handle =
        ModelHandle::load(&rt, &bytes, "m", 1, &EngineConfig { provider: ProviderMode::Cpu, ..Default::default() })
            .unwrap();
    assert_eq!(handle.info.provider, "CPUExecutionProvider");
    assert_eq!(handle.info.class_names.len(), 1000);
    let input = handle.preprocess(&std::fs::read(common::tools().join("testdata/chelsea.png")).unwrap()).unwrap();
    let ours = handle.infer_blocking(input.clone(), 1).unwrap().remove(0);

    let x = Tensor::from_slice(&input).reshape([1, 3, 224, 224]);
    let inp = dir.path().join("in.safetensors");
    let outp = dir.path().join("out.safetensors");
    Tensor::write_safetensors(&[("input", &x)], &inp).unwrap();
    common::oracle(
        "onnx_check.py",
        &[dir.path().join("model.onnx").to_str().unwrap(), inp.to_str().unwrap(), outp.to_str().unwrap()],
    );
    let theirs = petal::train::weights::read_file(&outp).unwrap().remove(0).1;
    let diff = (Tensor::from_slice(&ours).reshape([1, 1000]) - theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "engine vs python onnxruntime: {diff}");
}

#[test]
fn batching_gives_the_same_answers_and_a_full_queue_says_429() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = exported(dir.path());
    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let photos: Vec<Vec<u8>> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|p| std::fs::read(common::tools().join("testdata").join(p)).unwrap())
        .collect();

    let single = ModelHandle::load(&rt, &bytes, "m", 1, &EngineConfig { max_batch: 1, ..Default::default() }).unwrap();
    let inputs: Vec<Vec<f32>> = photos.iter().map(|p| single.preprocess(p).unwrap()).collect();
    let alone: Vec<Vec<f32>> = inputs.iter().map(|i| single.infer_blocking(i.clone(), 1).unwrap().remove(0)).collect();

    let batched = Arc::new(
        ModelHandle::load(&rt, &bytes, "m", 1, &EngineConfig { max_batch: 8, max_delay_ms: 20, ..Default::default() })
            .unwrap(),
    );
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let h = batched.clone();
            let input = inputs[i % 2].clone();
            std::thread::spawn(move || (i % 2, h.infer_blocking(input, 1).unwrap().remove(0)))
        })
        .collect();
    for t in threads {
        let (which, logits) = t.join().unwrap();
        let d = logits.iter().zip(&alone[which]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-4, "batched logits differ by {d}");
    }
    // Two images in one request come back in order.
    let mut two = inputs[0].clone();
    two.extend_from_slice(&inputs[1]);
    let both = batched.infer_blocking(two, 2).unwrap();
    assert_eq!(batched.top_k(&both[1], 1)[0].name, "espresso");

    // A queue of one: a flood gets some 429s with Retry-After, and every other request an answer.
    let tiny = Arc::new(
        ModelHandle::load(&rt, &bytes, "m", 1, &EngineConfig { max_batch: 1, queue_capacity: 1, ..Default::default() })
            .unwrap(),
    );
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let h = tiny.clone();
            let input = inputs[0].clone();
            std::thread::spawn(move || h.infer_blocking(input, 1))
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in threads {
        match t.join().unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::QueueFull);
                assert!(e.headers.iter().any(|(k, v)| *k == "retry-after" && v == "1"));
                full += 1;
            }
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, full {full}");
    // Admission (what /classify asks before decoding): at most queue_capacity requests at once,
    // each place given back when its Admission is dropped.
    let first = tiny.admit(1).unwrap();
    let refused = tiny.admit(1).err().expect("a second request admitted into a queue of one");
    assert_eq!(refused.code, ErrorCode::QueueFull);
    assert!(refused.headers.iter().any(|(k, v)| *k == "retry-after" && v == "1"));
    drop(first);
    let again = tiny.admit(1).unwrap();
    drop(again);
    tiny.admit(1).unwrap();
    // And by images: a request alone is always admitted; with others in, only what fits.
    let by_images = ModelHandle::load(
        &rt,
        &bytes,
        "m",
        1,
        &EngineConfig { max_batch: 1, queue_capacity: 8, max_admitted_images: 64, ..Default::default() },
    )
    .unwrap();
    let big = by_images.admit(64).unwrap();
    assert_eq!(by_images.admit(1).err().map(|e| e.code), Some(ErrorCode::QueueFull));
    drop(big);
    let (a, b) = (by_images.admit(40).unwrap(), by_images.admit(24).unwrap());
    assert!(by_images.admit(1).is_err());
    drop((a, b));
    by_images.admit(64).unwrap();
}

#[test]
fn providers_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = exported(dir.path());
    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let auto = ModelHandle::load(&rt, &bytes, "m", 1, &EngineConfig::default()).unwrap();
    if !tch::Cuda::is_available() {
        assert_eq!(auto.info.provider, "CPUExecutionProvider");
        let e = ModelHandle::load(
            &rt,
            &bytes,
            "m",
            1,
            &EngineConfig { provider: ProviderMode::Cuda, ..Default::default() },
        )
        .err()
        .unwrap();
        assert_eq!(e.code, ErrorCode::ProviderUnavailable);
    }
    assert_eq!(auto.preprocess(b"\xff\xd8\xff\xe0 truncated jpeg").unwrap_err().code, ErrorCode::UndecodableImage);
    let e = ModelHandle::load(&rt, b"not onnx", "m", 1, &EngineConfig::default()).err().unwrap();
    assert_eq!(e.code, ErrorCode::ModelInvalid);
}

#[test]
fn fp16_weights_halve_the_file_and_keep_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let full = exported(dir.path());
    let half_path = dir.path().join("half.onnx");
    common::export_real_mobilenet(&["--fp16".as_ref(), "--out".as_ref(), half_path.as_os_str()]);
    let half = std::fs::read(&half_path).unwrap();
    assert!(half.len() * 100 < full.len() * 52, "{} vs {} bytes", half.len(), full.len());

    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let a = ModelHandle::load(&rt, &full, "full", 1, &EngineConfig::default()).unwrap();
    let b = ModelHandle::load(&rt, &half, "half", 1, &EngineConfig::default()).unwrap();
    let mut worst = 0f32;
    for photo in ["chelsea.png", "coffee.png"] {
        let x = a.preprocess(&std::fs::read(common::tools().join("testdata").join(photo)).unwrap()).unwrap();
        let la = a.infer_blocking(x.clone(), 1).unwrap().remove(0);
        let lb = b.infer_blocking(x, 1).unwrap().remove(0);
        worst = worst.max(la.iter().zip(&lb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max));
        let top = |l: &[f32]| a.top_k(l, 5).into_iter().map(|p| p.index).collect::<Vec<_>>();
        assert_eq!(top(&la)[0], top(&lb)[0], "{photo}: fp16 weights changed the top-1");
    }
    eprintln!("fp16 weights: {} → {} bytes, max abs logit change {worst}", full.len(), half.len());
    assert!(worst < 0.1, "max abs logit change {worst}");
}

/// A large JPEG is shrunk while it is decoded (`jpeg_reducing_gap`) and still classified as at
/// full size: the bundled flower model on the fixture photos enlarged to about 2,000 × 1,500, with
/// the default gap and with the gap off (full-size decode, as the reference pipeline).
#[test]
fn large_jpegs_shrunk_while_decoded_get_the_full_size_answer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("registry/models/flowers102/versions/00000002.json")).unwrap())
            .unwrap();
    let onnx = std::fs::read(root.join("registry").join(version["artifacts"][0]["path"].as_str().unwrap())).unwrap();
    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let config = |gap| EngineConfig { provider: ProviderMode::Cpu, jpeg_reducing_gap: gap, ..Default::default() };
    let (served, full) = (
        ModelHandle::load(&rt, &onnx, "flowers", 2, &config(2.0)).unwrap(),
        ModelHandle::load(&rt, &onnx, "flowers", 2, &config(0.0)).unwrap(),
    );
    let photos: Vec<_> = walk(&root.join("tests/fixtures/flowers102"));
    assert!(photos.len() >= 8, "{photos:?}");
    for photo in photos {
        let small = image::open(&photo).unwrap().to_rgb8();
        let (w, h) = (small.width() * 6, small.height() * 6);
        let large = image::imageops::resize(&small, w, h, image::imageops::FilterType::CatmullRom);
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(w as usize, h as usize);
        c.set_quality(92.0);
        let mut c = c.start_compress(Vec::new()).unwrap();
        c.write_scanlines(large.as_raw()).unwrap();
        let jpeg = c.finish().unwrap();
        let (a, b) = (served.preprocess(&jpeg).unwrap(), full.preprocess(&jpeg).unwrap());
        assert_ne!(a, b, "{photo:?}: the default decode shrinks a {w}×{h} JPEG");
        let (pa, pb) = (
            served.top_k(&served.infer_blocking(a, 1).unwrap()[0], 1),
            full.top_k(&full.infer_blocking(b, 1).unwrap()[0], 1),
        );
        assert_eq!(pa[0].name, pb[0].name, "{photo:?}");
        assert!((pa[0].probability - pb[0].probability).abs() < 0.05, "{photo:?}: {pa:?} vs {pb:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "jpg") {
            out.push(p);
        }
    }
    out.sort();
    out
}
