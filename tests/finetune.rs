//! The fine-tuning engine on generated data (CPU, no ../shared): it learns, phase 1 freezes what it
//! should, runs repeat, checkpoints round-trip, cancellation stops it, the CLI writes its outputs,
//! and the Oxford Flowers 102 layout is read from .mat files written by scipy.
mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use image::{Rgb, RgbImage};
use petal::dataset::{self, Dataset, IngestOptions};
use petal::train::arch::Arch;
use petal::train::recipe::Recipe;
use petal::train::trainer::{self, Context, Event};
use petal::vision::EvalTransform;
use tch::{Device, Tensor};

/// libtorch's random generator (head initialisation, dropout) and its CPU thread pool are one per
/// process: tests that run libtorch in this binary take turns, so each run is repeatable.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    common::one_at_a_time()
}

fn small_recipe() -> Recipe {
    let mut r = Recipe {
        eval_transform: EvalTransform { resize: 72, crop: 64, ..Default::default() },
        batch_size: 8,
        loader_threads: 2,
        ..Default::default()
    };
    r.phase1.epochs = 4;
    r.phase2.epochs = 1;
    r
}

/// `small_recipe` on 32-px crops of 40-px images (the library-level tests).
fn tiny_recipe() -> Recipe {
    Recipe { eval_transform: EvalTransform { resize: 40, crop: 32, ..Default::default() }, ..small_recipe() }
}

fn load(dir: &Path, recipe: &Recipe) -> Dataset {
    dataset::load(dir, &IngestOptions::default(), &recipe.eval_transform).unwrap()
}

fn mobilenet() -> Vec<(String, Tensor)> {
    petal::train::weights::read_file(&common::real_mobilenet()).unwrap()
}

fn params_of(model: &petal::train::model::Model) -> Vec<(String, Tensor)> {
    model.trainable().into_iter().map(|(n, t)| (n, t.copy())).collect()
}

#[test]
fn phase_one_freezes_everything_but_the_head_and_runs_repeat() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 6, 40, 1);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 2;
    recipe.phase2.epochs = 0;
    let data = load(dir.path(), &recipe);
    let weights = mobilenet();
    let before = {
        let mut m = petal::train::model::Model::new(Arch::MobilenetV2.network(3), Device::Cpu);
        m.load_state_dict(&weights, true).unwrap();
        params_of(&m)
    };
    let cancel = AtomicBool::new(false);
    let run = |recipe: &Recipe| {
        let mut events = 0;
        let mut on_event = |_: &Event| events += 1;
        let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
        let t = trainer::train(Arch::MobilenetV2, Some(&weights), &data, recipe, &mut ctx).unwrap();
        (t, events)
    };
    let (a, events) = run(&recipe);
    assert!(events > 2, "progress events were sent");
    let after = params_of(&a.model);
    let mut head_changed = false;
    for ((name, b), (_, x)) in before.iter().zip(&after) {
        let same = b.equal(x);
        if name.starts_with("classifier.1.") {
            head_changed |= !same;
        } else {
            assert!(same, "{name} changed in phase 1");
        }
    }
    assert!(head_changed, "the head trained");
    let (b, _) = run(&recipe);
    assert_eq!(a.epochs.len(), 2);
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!((x.train_loss, x.val_loss, x.val_accuracy), (y.train_loss, y.val_loss, y.val_accuracy));
    }
    for ((n, x), (_, y)) in after.iter().zip(&params_of(&b.model)) {
        assert!(x.equal(y), "{n} differs between two runs with the same seed");
    }
}

#[test]
fn cancellation_stops_between_steps() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 6, 40, 2);
    let recipe = tiny_recipe();
    let data = load(dir.path(), &recipe);
    let cancel = AtomicBool::new(false);
    let mut steps = 0;
    let mut on_event = |e: &Event| {
        if let Event::Step { .. } = e {
            steps += 1;
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
    let err = trainer::train(Arch::MobilenetV2, None, &data, &recipe, &mut ctx).err().expect("canceled");
    assert_eq!(err.code, petal::ErrorCode::TrainingCanceled);
    assert_eq!(steps, 1, "stopped right after the first step");
}

/// The CLI on a zip of generated shapes: ≥ 90 % validation accuracy in seconds, and every output.
#[test]
fn finetune_cli_learns_generated_shapes_and_writes_its_outputs() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    common::shapes_dataset(&data, 16, 72, 3);
    // As an upload would arrive: a zip with a top-level folder.
    let zip_path = dir.path().join("shapes.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    for class in ["disc", "square", "bar"] {
        for e in std::fs::read_dir(data.join(class)).unwrap() {
            let e = e.unwrap();
            zip.start_file(
                format!("shapes/{class}/{}", e.file_name().to_string_lossy()),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            zip.write_all(&std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
    zip.finish().unwrap();
    let out = dir.path().join("run");
    let started = std::time::Instant::now();
    let output = common::petal()
        .args(["finetune", "--data", zip_path.to_str().unwrap(), "--backbone", "mobilenet_v2"])
        .args(["--weights", common::real_mobilenet().to_str().unwrap()])
        .args(["--resize", "72", "--crop", "64", "--epochs1", "5", "--epochs2", "1", "--batch-size", "8"])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    eprintln!("{stderr}\nfine-tuning took {:.1} s", started.elapsed().as_secs_f64());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let acc = summary["best_val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "validation accuracy {acc}");
    assert_eq!(summary["winner"], "mobilenet_v2");
    assert_eq!(summary["dataset"]["classes"], serde_json::json!(["bar", "disc", "square"]));
    let epochs = summary["results"][0]["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 6);
    assert_eq!(epochs.iter().filter(|e| e["phase"] == 2).count(), 1);
    for f in ["summary.json", "mobilenet_v2/metrics.json", "mobilenet_v2/curves.png", "mobilenet_v2/class_names.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let png = image::open(out.join("mobilenet_v2/curves.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1200, 480));

    // The checkpoint round-trips: loaded into a fresh model it gives the same logits, and carries
    // what export needs in its metadata.
    let ckpt = std::fs::read(out.join("mobilenet_v2/checkpoint.safetensors")).unwrap();
    let meta = petal::train::finetune::checkpoint_metadata(&ckpt).unwrap();
    assert_eq!(meta["petal.arch"], "mobilenet_v2");
    assert_eq!(meta["petal.class_names"], r#"["bar","disc","square"]"#);
    let tensors = petal::train::weights::read_bytes(&ckpt).unwrap();
    let mut model = petal::train::model::Model::new(Arch::MobilenetV2.network(3), Device::Cpu);
    model.load_state_dict(&tensors, false).unwrap();
    let again = petal::train::finetune::checkpoint_bytes(&model.state_dict(), meta.clone()).unwrap();
    let back = petal::train::weights::read_bytes(&again).unwrap();
    assert_eq!(back.len(), tensors.len());
    for ((n, a), (_, b)) in tensors.iter().zip(&back) {
        assert!(a.equal(b), "{n}");
    }
    // And it classifies the validation images as well as training measured.
    let recipe = small_recipe();
    let ds = load(&data, &recipe);
    let correct = ds
        .val
        .iter()
        .filter(|s| {
            let img = s.rgb(&recipe.eval_transform, &Default::default()).unwrap();
            let x = Tensor::from_slice(&recipe.eval_transform.apply(&img)).view([1, 3, 64, 64]);
            let y = tch::no_grad(|| model.forward(&x, false)).argmax(-1, false).int64_value(&[0]);
            y == s.label as i64
        })
        .count();
    assert!(correct as f64 / ds.val.len() as f64 >= 0.9, "{correct} of {}", ds.val.len());

    // Exported to ONNX (class names and transform from the checkpoint), served by ort: the same answers.
    let onnx = dir.path().join("shapes.onnx");
    let ckpt_path = out.join("mobilenet_v2/checkpoint.safetensors");
    let status = common::petal()
        .args(["export", "--arch", "mobilenet_v2", "--weights", ckpt_path.to_str().unwrap()])
        .args(["--out", onnx.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let images: Vec<String> = ds.val.iter().map(|s| data.join(&s.path).display().to_string()).collect();
    let output = common::petal()
        .args(["classify", "--onnx", onnx.to_str().unwrap(), "--json", "--top-k", "1"])
        .args(&images)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let served = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ds.val)
        .filter(|(r, s)| r["predictions"][0]["name"] == ds.class_names[s.label])
        .count();
    assert_eq!(served, correct, "ONNX through ort agrees with libtorch");

    // Published with its provenance and promoted; `petal eval` through the serving path measures
    // what training measured on the same (stratified, seeded) validation split.
    let registry = dir.path().join("registry");
    let output = common::petal()
        .args(["publish", "--run", out.to_str().unwrap(), "--model", "shapes", "--alias", "production"])
        .args(["--dataset-name", "shapes", "--dataset-terms", "generated by the test; any use", "--by", "ci"])
        .args([
            "--with-checkpoint",
            "--eval-data",
            zip_path.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("shapes@production -> version 1"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.join("models/shapes/versions/00000001.json")).unwrap()).unwrap();
    let p = &manifest["provenance"];
    assert!(p["command"].as_str().unwrap().starts_with("petal finetune --data "), "{}", p["command"]);
    assert_eq!(p["metrics"]["best"]["val_top1"].as_f64().unwrap(), acc);
    assert_eq!(p["metrics"]["per_epoch"].as_array().unwrap().len(), 6);
    assert_eq!(p["dataset"]["digest"], summary["dataset"]["digest"]);
    assert_eq!(p["dataset"]["terms"], "generated by the test; any use");
    assert_eq!(p["base_weights"]["catalog"], "MobileNet_V2_Weights.IMAGENET1K_V1");
    assert!(p["hardware"]["logical_cores"].as_u64().unwrap() >= 1);
    let names: Vec<&str> =
        manifest["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["model.onnx", "evaluation.json", "confusion.png", "curves.png", "checkpoint.safetensors"]);
    let published: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.join(manifest["artifacts"][1]["path"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    common::check_eval_report(&published);
    assert_eq!(published["top1_correct"], correct, "evaluated on the run's validation split");
    assert_eq!(p["metrics"]["best"]["eval_top1"], published["top1"]);
    let output = common::petal()
        .args(["eval", "--model", "shapes@production", "--split", "val", "--json"])
        .args(["--data", zip_path.to_str().unwrap(), "--registry", registry.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["images"], ds.val.len());
    assert_eq!(report["top1_correct"], correct);
    assert!((report["top1"].as_f64().unwrap() - acc).abs() < 1e-9, "eval {} vs training {acc}", report["top1"]);
    common::check_eval_report(&report);
}

#[test]
fn finetune_cli_reports_bad_datasets_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    common::shapes_dataset(&one, 4, 32, 4);
    std::fs::remove_dir_all(one.join("disc")).unwrap();
    std::fs::remove_dir_all(one.join("square")).unwrap();
    let evil = dir.path().join("evil.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
    zip.start_file("../../escape.png", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(b"x").unwrap();
    zip.finish().unwrap();
    let empty = dir.path().join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    for (data, code) in [(&one, "dataset_invalid"), (&evil, "dataset_unsafe_path"), (&empty, "dataset_archive_invalid")]
    {
        let output = common::petal()
            .args(["finetune", "--data", data.to_str().unwrap(), "--weights", "scratch", "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(&format!("[{code}]")), "{}: {stderr}", data.display());
    }
    assert!(!dir.path().join("out").exists(), "nothing written for a refused dataset");
}

/// The official layout, with .mat files written by scipy (compressed and not).
#[test]
fn oxford_flowers_layout_from_scipy_mat_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flowers102");
    std::fs::create_dir_all(root.join("jpg")).unwrap();
    // 12 images, 3 classes; setid: trnid, valid, tstid.
    let labels = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3];
    for (i, l) in labels.iter().enumerate() {
        let img = RgbImage::from_pixel(30, 20, Rgb([(*l * 70) as u8, 10, i as u8]));
        img.save(root.join(format!("jpg/image_{:05}.jpg", i + 1))).unwrap();
    }
    std::fs::write(root.join("class_names.txt"), "pink primrose\nhard-leaved pocket orchid\ncanterbury bells\n")
        .unwrap();
    let script = format!(
        "import scipy.io, numpy as np\n\
         scipy.io.savemat('{r}/imagelabels.mat', {{'labels': np.array([{l}], dtype=np.uint8).astype(float)[None, :]}}, do_compression=True)\n\
         scipy.io.savemat('{r}/setid.mat', {{'trnid': np.array([[1, 2, 3]], float), 'valid': np.array([[4, 5, 6]], float), 'tstid': np.array([[7, 8, 9, 10, 11, 12]], float)}})\n",
        r = root.display(),
        l = labels.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
    );
    let status = std::process::Command::new(common::python()).args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let eval = EvalTransform::default();
    let d = dataset::load(dir.path(), &IngestOptions::default(), &eval).unwrap();
    assert_eq!(d.layout, petal::records::dataset::Layout::Oxford102);
    assert_eq!(d.classes, ["1", "2", "3"]);
    assert_eq!(d.class_names[1], "hard-leaved pocket orchid");
    let ids = |s: &[dataset::Sample]| s.iter().map(|s| s.path.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&d.train), (7..=12).map(|i| format!("jpg/image_{i:05}.jpg")).collect::<Vec<_>>());
    assert_eq!(ids(&d.val), (1..=6).map(|i| format!("jpg/image_{i:05}.jpg")).collect::<Vec<_>>());
    assert!(d.train.iter().all(|s| s.label == (labels[s.path[10..15].parse::<usize>().unwrap() - 1] - 1) as usize));
    let papers = IngestOptions { oxford_split: dataset::OxfordSplit::Papers, ..Default::default() };
    let p = dataset::load(&root, &papers, &eval).unwrap();
    assert_eq!((p.train.len(), p.val.len()), (6, 6));
    assert_eq!(ids(&p.train)[0], "jpg/image_00001.jpg");
    // A labelled image that is missing is reported.
    std::fs::remove_file(root.join("jpg/image_00003.jpg")).unwrap();
    let err = dataset::load(&root, &IngestOptions::default(), &eval).unwrap_err();
    assert!(err.message.contains("image_00003.jpg is labelled in imagelabels.mat but missing"), "{}", err.message);
}

/// The real dataset, when this machine has it (benchmarks and the bundled model use it; CI does not).
#[test]
fn real_oxford_flowers_when_present() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/flowers102");
    if !root.join("setid.mat").is_file() {
        eprintln!("skipped: no {}", root.display());
        return;
    }
    let d = dataset::load(&root, &IngestOptions::default(), &EvalTransform::default()).unwrap();
    assert_eq!((d.classes.len(), d.train.len(), d.val.len()), (102, 6149, 2040));
    assert_eq!(d.class_names[0], "pink primrose");
}

/// Several backbones: each runs the recipe, the best validation accuracy wins, each gets its outputs.
#[test]
fn several_backbones_compete() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 5, 40, 6);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 1;
    recipe.phase2.epochs = 1;
    let data = load(dir.path(), &recipe);
    let out = dir.path().join("out");
    let cancel = AtomicBool::new(false);
    let mut epochs = Vec::new();
    let mut on_event = |e: &Event| {
        if let Event::Epoch(m) = e {
            epochs.push((m.backbone, m.phase));
        }
    };
    let backbones = [(Arch::Resnet18, None), (Arch::MobilenetV2, None)];
    let summary = petal::train::finetune::finetune(
        &petal::train::finetune::FinetuneRun {
            dataset: &data,
            backbones: &backbones,
            recipe: &recipe,
            device: Device::Cpu,
            out: &out,
            command: None,
        },
        petal::train::finetune::Steering::cancel(&cancel),
        &mut on_event,
    )
    .unwrap();
    assert_eq!(epochs, [(Arch::Resnet18, 1), (Arch::Resnet18, 2), (Arch::MobilenetV2, 1), (Arch::MobilenetV2, 2)]);
    assert_eq!(summary.results.len(), 2);
    let best = summary.results.iter().map(|r| r.best_val_accuracy).fold(0.0, f64::max);
    assert_eq!(summary.best_val_accuracy, best);
    assert!(summary.results.iter().any(|r| r.backbone == summary.winner && r.best_val_accuracy == best));
    for arch in ["resnet18", "mobilenet_v2"] {
        assert!(out.join(arch).join("checkpoint.safetensors").is_file(), "{arch}");
    }
}

/// The CUDA layout path (channels_last strides for inputs and convolution weights), run on the CPU:
/// the same training as with contiguous tensors, up to float rounding.
#[test]
fn channels_last_trains_like_contiguous() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 4, 40, 7);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 1;
    recipe.phase2.epochs = 1;
    let data = load(dir.path(), &recipe);
    let cancel = AtomicBool::new(false);
    let weights = mobilenet();
    let run = |channels_last: bool| {
        let mut r = recipe.clone();
        r.channels_last = Some(channels_last);
        let mut quiet = |_: &Event| {};
        let mut ctx = Context::new(Device::Cpu, &cancel, &mut quiet);
        trainer::train(Arch::MobilenetV2, Some(&weights), &data, &r, &mut ctx).unwrap()
    };
    let (a, b) = (run(false), run(true));
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-3 * x.train_loss.abs().max(1.0), "{x:?} vs {y:?}");
        assert!((x.val_loss - y.val_loss).abs() < 1e-3 * x.val_loss.abs().max(1.0), "{x:?} vs {y:?}");
    }
}

/// Early stopping stops a phase when its rule says so and not otherwise, and the run records how
/// each phase ended: no validation loss improves by 10, so phase 1 stops after the first epoch and
/// `patience` more; phase 2, without a rule, runs its epochs.
#[test]
fn early_stopping_ends_a_phase_when_its_rule_says_and_records_why() {
    use petal::train::recipe::{EarlyStopping, Monitor};
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 5, 40, 3);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 6;
    recipe.phase1.early_stopping = Some(EarlyStopping { monitor: Monitor::ValLoss, patience: 2, min_delta: 10.0 });
    recipe.phase2.epochs = 2;
    recipe.validate().unwrap();
    let data = load(dir.path(), &recipe);
    let cancel = AtomicBool::new(false);
    let mut on_event = |_: &Event| {};
    let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
    let t = trainer::train(Arch::MobilenetV2, None, &data, &recipe, &mut ctx).unwrap();
    let phases: Vec<(u8, usize)> = t.epochs.iter().map(|e| (e.phase, e.epoch)).collect();
    assert_eq!(phases, [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]);
    assert_eq!((t.phases[0].phase, t.phases[0].epochs, t.phases[0].planned), (1, 3, 6));
    assert!(t.phases[0].stopped.starts_with("early stopping: val_loss did not improve"), "{:?}", t.phases[0]);
    assert_eq!((t.phases[1].epochs, t.phases[1].stopped.as_str()), (2, "completed"));

    // A rule that always sees improvement (accuracy never has to beat a margin) never stops.
    recipe.phase1.epochs = 3;
    recipe.phase1.early_stopping = Some(EarlyStopping { monitor: Monitor::ValAccuracy, patience: 3, min_delta: 0.0 });
    recipe.phase2.epochs = 0;
    let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
    let t = trainer::train(Arch::MobilenetV2, None, &data, &recipe, &mut ctx).unwrap();
    assert_eq!((t.epochs.len(), t.phases[0].stopped.as_str()), (3, "completed"));

    // Out-of-range rules are refused.
    recipe.phase2.early_stopping = Some(EarlyStopping { monitor: Monitor::ValLoss, patience: 0, min_delta: 0.0 });
    assert_eq!(recipe.validate().unwrap_err().code, petal::ErrorCode::InvalidArguments);
}

/// An imbalanced dataset: its summary says how imbalanced, and both counter-measures train (the
/// weighted loss gives another loss than the plain one on the same images and seed).
#[test]
fn class_imbalance_is_reported_and_countered() {
    use petal::train::recipe::Imbalance;
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 10, 40, 5);
    for i in 4..10 {
        std::fs::remove_file(dir.path().join("bar").join(format!("{i}.png"))).unwrap();
    }
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 1;
    recipe.phase2.epochs = 0;
    let data = load(dir.path(), &recipe);
    let summary = data.summary();
    assert_eq!(summary.class_counts.iter().sum::<usize>(), summary.train_images);
    let (lo, hi) = (*summary.class_counts.iter().min().unwrap(), *summary.class_counts.iter().max().unwrap());
    assert!(lo < hi, "{:?}", summary.class_counts);
    assert_eq!(summary.imbalance, hi as f64 / lo as f64);

    let cancel = AtomicBool::new(false);
    let mut losses = Vec::new();
    for imbalance in [Imbalance::None, Imbalance::WeightedLoss, Imbalance::BalancedSampler] {
        recipe.imbalance = imbalance;
        let mut on_event = |_: &Event| {};
        let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
        let t = trainer::train(Arch::MobilenetV2, None, &data, &recipe, &mut ctx).unwrap();
        let loss = t.epochs[0].train_loss;
        assert!(loss.is_finite(), "{imbalance:?}");
        losses.push(loss);
    }
    assert_ne!(losses[0], losses[1], "the weighted loss is another loss");
    assert_ne!(losses[0], losses[2], "the balanced sampler draws other batches");
}

/// The recipe options beyond the reference train together (random resized crops, label smoothing,
/// AdamW, cosine with warm-up), repeatably.
#[test]
fn modern_recipe_options_train_and_repeat() {
    use petal::train::recipe::{Cosine, RandomResizedCrop};
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 5, 40, 8);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 2;
    recipe.phase2.epochs = 2;
    recipe.augment.random_resized_crop = Some(RandomResizedCrop::default());
    recipe.label_smoothing = 0.1;
    recipe.adam.weight_decay = 0.05;
    recipe.adam.decoupled_weight_decay = true;
    recipe.phase2.cosine = Some(Cosine { warmup_epochs: 1, start_factor: 0.1 });
    recipe.validate().unwrap();
    let data = load(dir.path(), &recipe);
    let cancel = AtomicBool::new(false);
    let run = || {
        let mut on_event = |_: &Event| {};
        let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
        trainer::train(Arch::MobilenetV2, None, &data, &recipe, &mut ctx).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.epochs.len(), 4);
    assert!(a.epochs.iter().all(|e| e.train_loss.is_finite() && e.val_loss.is_finite()));
    // Phase 2's learning rate follows the warm-up: 0.1 × top_lr, then top_lr.
    assert!((a.epochs[2].lr - 0.1 * recipe.phase2.top_lr).abs() < 1e-12, "{}", a.epochs[2].lr);
    assert!((a.epochs[3].lr - recipe.phase2.top_lr).abs() < 1e-12, "{}", a.epochs[3].lr);
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!((x.train_loss, x.val_loss), (y.train_loss, y.val_loss), "the same seed, the same run");
    }
}

/// Resume, on the CPU: a run stopped for a shutdown in the middle of a phase-2 epoch (a checkpoint
/// saved where it stood), or killed (nothing saved then: the last epoch's checkpoint), or whose
/// last checkpoint was then damaged (the best one is used), goes on and ends with the very weights
/// and metrics of a run never stopped — dropout, augmentation, shuffling and the optimiser's
/// state included. A checkpoint of another recipe is not used.
#[test]
fn a_stopped_run_resumes_from_its_checkpoint_bit_for_bit() {
    use petal::train::checkpoint::{MemoryStore, Position, Slot};
    use petal::train::trainer::Resumed;
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    common::shapes_dataset(dir.path(), 6, 40, 11);
    let mut recipe = tiny_recipe();
    recipe.phase1.epochs = 2;
    recipe.phase2.epochs = 3;
    recipe.phase2.step_size = 1;
    recipe.label_smoothing = 0.1;
    recipe.batch_size = 4;
    let data = load(dir.path(), &recipe);
    let weights = mobilenet();
    let steps_per_epoch = data.train.len().div_ceil(recipe.batch_size);
    assert!(steps_per_epoch >= 3, "{steps_per_epoch} steps per epoch");

    // `stop_at`: (phase, epoch 1-based, step 1-based, preempt) — set the flag when that step is done.
    let run = |store: &mut MemoryStore, recipe: &Recipe, stop_at: Option<(u8, usize, usize, bool)>| {
        let (cancel, preempt) = (AtomicBool::new(false), AtomicBool::new(false));
        let mut resumed: Vec<Resumed> = Vec::new();
        let mut saved = Vec::new();
        let mut on_event = |e: &Event| match e {
            Event::Step { phase, epoch, step, .. } => {
                if let Some((p, ep, st, pre)) = stop_at {
                    if (*phase, *epoch, *step) == (p, ep, st) {
                        (if pre { &preempt } else { &cancel }).store(true, Ordering::SeqCst);
                    }
                }
            }
            Event::Resumed(r) => resumed.push(r.clone()),
            Event::Checkpoint(c) => saved.push(c.clone()),
            Event::Epoch(_) => {}
        };
        let mut ctx = Context::new(Device::Cpu, &cancel, &mut on_event);
        ctx.checkpoints = Some(store);
        ctx.preempt = Some(&preempt);
        let result = trainer::train(Arch::MobilenetV2, Some(&weights), &data, recipe, &mut ctx);
        (result, resumed, saved)
    };
    let same = |a: &trainer::Trained, b: &trainer::Trained| {
        let key = |t: &trainer::Trained| {
            t.epochs
                .iter()
                .map(|e| (e.phase, e.epoch, e.lr, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.best))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(a), key(b), "metrics");
        assert_eq!((a.best_epoch, a.best_val_accuracy, &a.phases), (b.best_epoch, b.best_val_accuracy, &b.phases));
        for ((n, x), (_, y)) in a.model.state_dict().iter().zip(b.model.state_dict().iter()) {
            assert!(x.equal(y), "{n} differs");
        }
    };

    let mut plain_store = MemoryStore::default();
    let (plain, resumed, saved) = run(&mut plain_store, &recipe, None);
    let plain = plain.unwrap();
    assert!(resumed.is_empty());
    // A checkpoint after every epoch, and one when the backbone is trained.
    assert_eq!(saved.len(), 2 + 3 + 1, "{saved:?}");
    assert_eq!(saved.last().unwrap().next, Position { phase: 3, epoch: 0, step: 0 });

    // Stopped for a shutdown after step 2 of phase 2's second epoch: saved there, then resumed.
    let mut store = MemoryStore::default();
    let (stopped, _, saved) = run(&mut store, &recipe, Some((2, 2, 2, true)));
    let e = stopped.err().expect("stopped");
    assert!(e.message.contains("saved a checkpoint at phase 2 epoch 2 step 2"), "{}", e.message);
    let on_stop = saved.last().unwrap();
    assert!(on_stop.on_stop);
    assert_eq!(on_stop.next, Position { phase: 2, epoch: 1, step: 2 });
    assert_eq!(on_stop.optimizer_steps as usize, steps_per_epoch + 2);
    let (again, resumed, _) = run(&mut store, &recipe, None);
    assert_eq!(resumed.len(), 1);
    let r = &resumed[0];
    assert_eq!((r.from, r.next), (Some(Slot::Last), Some(Position { phase: 2, epoch: 1, step: 2 })));
    assert_eq!(r.optimizer_steps as usize, steps_per_epoch + 2);
    assert_eq!(r.epochs.len(), 3, "two epochs of phase 1, one of phase 2");
    same(&plain, &again.unwrap());

    // Killed during phase 2's third epoch (nothing saved then): the end of its second epoch.
    let mut store = MemoryStore::default();
    let (killed, _, _) = run(&mut store, &recipe, Some((2, 3, 1, false)));
    assert_eq!(killed.err().unwrap().code, petal::error::ErrorCode::TrainingCanceled);
    let kept = store.objects.clone();
    let (again, resumed, _) = run(&mut store, &recipe, None);
    assert_eq!(resumed[0].next, Some(Position { phase: 2, epoch: 2, step: 0 }));
    assert_eq!(resumed[0].optimizer_steps as usize, 2 * steps_per_epoch);
    same(&plain, &again.unwrap());

    // The same, with the last checkpoint truncated: the sha256 check refuses it, the best one
    // (an earlier epoch) is used, and the result is still the same.
    store.objects = kept;
    let last = store.objects.get_mut(&(Arch::MobilenetV2, Slot::Last)).unwrap();
    last.truncate(last.len() - 100);
    let (again, resumed, _) = run(&mut store, &recipe, None);
    let r = &resumed[0];
    assert_eq!(r.from, Some(Slot::Best));
    assert!(r.next.unwrap() < Position { phase: 2, epoch: 2, step: 0 }, "{r:?}");
    assert!(r.discarded.iter().any(|d| d.starts_with("last checkpoint: sha256 mismatch")), "{:?}", r.discarded);
    same(&plain, &again.unwrap());

    // Phase 1 on cached features (recomputed on resume), with early stopping's state carried:
    // killed in phase 1's third epoch, the same result.
    let mut cached = recipe.clone();
    cached.phase1.cached_features = true;
    cached.phase1.epochs = 4;
    cached.phase2.early_stopping = Some(petal::train::recipe::EarlyStopping {
        monitor: petal::train::recipe::Monitor::ValLoss,
        patience: 2,
        min_delta: 0.0,
    });
    let (plain_cached, _, _) = run(&mut MemoryStore::default(), &cached, None);
    let plain_cached = plain_cached.unwrap();
    let mut store = MemoryStore::default();
    let (killed, _, _) = run(&mut store, &cached, Some((1, 3, 2, false)));
    assert!(killed.is_err());
    let (again, resumed, _) = run(&mut store, &cached, None);
    assert_eq!(resumed[0].next, Some(Position { phase: 1, epoch: 2, step: 0 }));
    same(&plain_cached, &again.unwrap());
    let mut store = MemoryStore::default();
    let (stopped, _, _) = run(&mut store, &cached, Some((2, 2, 1, true)));
    assert!(stopped.is_err());
    let (again, resumed, _) = run(&mut store, &cached, None);
    assert_eq!(resumed[0].next, Some(Position { phase: 2, epoch: 1, step: 1 }));
    same(&plain_cached, &again.unwrap());

    // A finished run's checkpoint gives its result without training; another recipe's is not used.
    let (done, resumed, saved) = run(&mut plain_store, &recipe, None);
    assert_eq!(resumed[0].next, Some(Position::DONE));
    assert!(saved.is_empty(), "nothing trained, nothing saved");
    same(&plain, &done.unwrap());
    let mut other = recipe.clone();
    other.phase2.epochs = 1;
    let (_, resumed, _) = run(&mut plain_store, &other, None);
    assert_eq!(resumed[0].from, None);
    assert!(resumed[0].discarded.iter().all(|d| d.contains("of another run")), "{:?}", resumed[0].discarded);
}

/// `petal finetune --checkpoints DIR`: the same command run again goes on from DIR (here: finds
/// the backbone trained and gives the same result without training); another recipe does not use
/// DIR's checkpoints and says why.
#[test]
fn finetune_cli_goes_on_from_its_checkpoints_folder() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    common::shapes_dataset(&data, 6, 40, 5);
    let checkpoints = dir.path().join("checkpoints");
    let run = |epochs2: &str| {
        let output = common::petal()
            .args(["finetune", "--data", data.to_str().unwrap(), "--backbone", "mobilenet_v2"])
            .args(["--weights", common::real_mobilenet().to_str().unwrap()])
            .args(["--resize", "40", "--crop", "32", "--epochs1", "2", "--epochs2", epochs2, "--batch-size", "4"])
            .args(["--out", dir.path().join("out").to_str().unwrap(), "--json"])
            .args(["--checkpoints", checkpoints.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        (serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap(), stderr)
    };
    let (first, _) = run("1");
    assert!(checkpoints.join("mobilenet_v2/last.ckpt").is_file());
    assert!(checkpoints.join("mobilenet_v2/best.ckpt").is_file());
    let (again, stderr) = run("1");
    assert!(stderr.contains("mobilenet_v2: already trained (its last checkpoint)"), "{stderr}");
    let accuracies = |s: &serde_json::Value| {
        s["results"][0]["epochs"].as_array().unwrap().iter().map(|e| e["val_accuracy"].as_f64()).collect::<Vec<_>>()
    };
    assert_eq!(accuracies(&first), accuracies(&again));
    assert_eq!(first["best_val_accuracy"], again["best_val_accuracy"]);
    let (_, stderr) = run("2");
    assert!(stderr.contains("no usable checkpoint, starting from the beginning"), "{stderr}");
    assert!(stderr.contains("of another run"), "{stderr}");
}
