//! ONNX export of every architecture: onnxruntime (from Rust and from Python) against libtorch
//! on the same weights, and onnx.checker's full check.
use crate::common;

use ndarray::{Array4, ArrayD};
use ort::value::TensorRef;
use petal::config::OnnxRuntimeConfig;
use petal::export::onnx::{export, ExportOptions};
use petal::infer::runtime::OrtRuntime;
use petal::train::arch::{Arch, Op};
use petal::train::model::Model;
use tch::{Device, Kind, Tensor};

const INPUTS: i64 = 100;
const CHUNK: i64 = 25;

/// A model with random weights shaped like trained ones: each residual branch ends in a batch norm
/// with a small gain (U(0, 0.25); trained ResNets have small residual gains, which is why
/// torchvision offers `zero_init_residual`), and every batch-norm statistic is that of real
/// activations (one training-mode pass with momentum 1 on random images). Without this, random
/// deep ResNets are chaotic and amplify float rounding far beyond what trained weights do.
fn random_model(arch: Arch, classes: i64) -> Model {
    fn prepare(ops: &mut [Op], residual_gains: &mut Vec<String>) {
        for op in ops {
            match op {
                Op::BatchNorm { momentum, .. } => *momentum = 1.0,
                Op::Residual { body, shortcut, .. } => {
                    if let Some(Op::BatchNorm { name, .. }) =
                        body.iter().rev().find(|o| matches!(o, Op::BatchNorm { .. }))
                    {
                        residual_gains.push(format!("{name}.weight"));
                    }
                    prepare(body, residual_gains);
                    prepare(shortcut, residual_gains);
                }
                _ => {}
            }
        }
    }
    tch::manual_seed(arch as i64);
    let mut network = arch.network(classes).with_dropout(0.0);
    let mut gains = Vec::new();
    prepare(&mut network.body, &mut gains);
    let model = Model::new(network, Device::Cpu);
    let vars = model.vs.variables();
    let _ = tch::no_grad(|| {
        for name in &gains {
            let mut w = vars[name].shallow_clone();
            w.copy_(&(Tensor::rand(w.size(), (Kind::Float, Device::Cpu)) * 0.25));
        }
        model.forward(&Tensor::randn([8, 3, 224, 224], (Kind::Float, Device::Cpu)), true)
    });
    model
}

fn to_array(t: &Tensor) -> Array4<f32> {
    let size: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    Array4::from_shape_vec((size[0], size[1], size[2], size[3]), data).unwrap()
}

fn parity(arch: Arch) {
    let classes = 37;
    let model = random_model(arch, classes);
    let names: Vec<String> = (0..classes).map(|i| format!("class {i}")).collect();
    let options = ExportOptions {
        image_size: 224,
        class_names: names.clone(),
        transform: serde_json::json!({"resize": 256, "crop": 224}),
        provenance_digest: Some("sha256:test".into()),
        model_name: Some("parity".into()),
        fp16_weights: false,
    };
    let bytes = export(&model, &options).unwrap();
    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).unwrap();
    let mut session = rt.cpu_session(&bytes).unwrap();

    tch::manual_seed(1);
    let mut worst = 0f64;
    let mut first_chunk = None;
    for _ in 0..INPUTS / CHUNK {
        let x = Tensor::randn([CHUNK, 3, 224, 224], (Kind::Float, Device::Cpu));
        let want = tch::no_grad(|| model.forward(&x, false));
        let xa = to_array(&x);
        let out = session.run(ort::inputs![TensorRef::from_array_view(&xa).unwrap()]).unwrap();
        let got: ArrayD<f32> = out["logits"].try_extract_array::<f32>().unwrap().to_owned();
        assert_eq!(got.shape(), &[CHUNK as usize, classes as usize]);
        let got_t = Tensor::from_slice(got.as_slice().unwrap()).reshape([CHUNK, classes]);
        let diff = (&got_t - &want).abs().max().double_value(&[]);
        worst = worst.max(diff);
        assert!(got_t.argmax(1, false).equal(&want.argmax(1, false)), "{arch}: top-1 differs");
        if first_chunk.is_none() {
            first_chunk = Some((x, got_t));
        }
    }
    let scale = first_chunk.as_ref().unwrap().1.abs().max().double_value(&[]);
    assert!(worst <= 1e-4, "{arch}: max abs logit difference {worst} over {INPUTS} inputs (max |logit| {scale})");
    eprintln!("{arch}: max abs logit difference {worst:e} over {INPUTS} inputs (max |logit| {scale:.2})");

    // onnx.checker (full) and onnxruntime in Python on the same file and input.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.onnx");
    std::fs::write(&file, &bytes).unwrap();
    let (x, rust_out) = first_chunk.unwrap();
    let input = dir.path().join("input.safetensors");
    Tensor::write_safetensors(&[("input", &x)], &input).unwrap();
    let output = dir.path().join("output.safetensors");
    let info =
        common::oracle("onnx_check.py", &[file.to_str().unwrap(), input.to_str().unwrap(), output.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_str(info.trim()).unwrap();
    assert_eq!(info["opset"], 17);
    assert_eq!(info["input_shape"], serde_json::json!(["batch", 3, 224, 224]));
    assert_eq!(info["metadata"]["petal.arch"], arch.name());
    assert_eq!(info["metadata"]["petal.provenance_digest"], "sha256:test");
    let meta_names: Vec<String> =
        serde_json::from_str(info["metadata"]["petal.class_names"].as_str().unwrap()).unwrap();
    assert_eq!(meta_names, names);
    let py = petal::train::weights::read_file(&output).unwrap().remove(0).1;
    let diff = (py - rust_out).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "{arch}: onnxruntime in Python differs from Rust by {diff}");
}

macro_rules! export_tests {
    ($($name:ident => $arch:expr,)*) => { $( #[test] fn $name() { let _turn = common::one_at_a_time(); parity($arch) } )* };
}

export_tests! {
    export_resnet18 => Arch::Resnet18,
    export_resnet34 => Arch::Resnet34,
    export_resnet50 => Arch::Resnet50,
    export_resnet101 => Arch::Resnet101,
    export_resnet152 => Arch::Resnet152,
    export_vgg16 => Arch::Vgg16,
    export_vgg16_bn => Arch::Vgg16Bn,
    export_mobilenet_v2 => Arch::MobilenetV2,
    export_efficientnet_b0 => Arch::EfficientnetB0,
}

#[test]
fn class_names_must_fit_the_head() {
    let _turn = common::one_at_a_time();
    let model = random_model(Arch::Resnet18, 3);
    let e = export(&model, &ExportOptions { image_size: 224, class_names: vec!["a".into()], ..Default::default() })
        .unwrap_err();
    assert_eq!(e.code, petal::ErrorCode::ExportFailed);
    let e = export(
        &Model::new(Arch::Vgg16.network(2), Device::Cpu),
        &ExportOptions { image_size: 100, ..Default::default() },
    )
    .unwrap_err();
    assert!(e.message.contains("adaptive pooling"), "{}", e.message);
}
