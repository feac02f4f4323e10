//! The real native stack: libtorch through tch, onnxruntime through ort.
use crate::common;

use ndarray::Array2;
use ort::value::TensorRef;
use petal::config::OnnxRuntimeConfig;
use petal::infer::runtime::OrtRuntime;
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// A conv forward and backward on CPU, checked against the analytic gradient: for
/// out = conv(x, W) + b, d(sum out)/dW[o,c,i,j] = sum over n,y,x of x[n,c,y+i,x+j] and
/// d(sum out)/db[o] = N*H_out*W_out.
#[test]
fn tch_conv_forward_backward_on_cpu() {
    let _turn = common::one_at_a_time();
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = nn::conv2d(vs.root() / "conv", 3, 5, 3, Default::default());
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let out = conv.forward(&x);
    assert_eq!(out.size(), vec![2, 5, 6, 6]);

    // The forward pass equals an explicit unfold-and-multiply.
    let patches = x.im2col([3, 3], [1, 1], [0, 0], [1, 1]); // [2, 27, 36]
    let manual = conv.ws.reshape([5, 27]).matmul(&patches) + conv.bs.as_ref().unwrap().reshape([1, 5, 1]);
    let diff = (out.reshape([2, 5, 36]) - &manual).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "forward differs by {diff}");

    out.sum(Kind::Float).backward();
    let grad_w = conv.ws.grad();
    let expected_w = patches
        .sum_dim_intlist([0, 2].as_slice(), false, Kind::Float)
        .reshape([1, 3, 3, 3])
        .expand([5, 3, 3, 3], false);
    let diff = (&grad_w - expected_w).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "weight gradient differs by {diff}");
    let grad_b = conv.bs.as_ref().unwrap().grad();
    let diff = (grad_b - 72.0).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "bias gradient differs by {diff}");
}

/// An ONNX model made by the test (with the onnx package, checked by onnx.checker) runs in
/// onnxruntime through ort and gives relu(x W^T + b).
#[test]
fn ort_runs_a_small_onnx_model() {
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    common::oracle("tiny_onnx.py", &[model.to_str().unwrap()]);

    let rt = OrtRuntime::init(&OnnxRuntimeConfig::default()).expect("onnxruntime loads (ORT_DYLIB_PATH)");
    assert_eq!(rt.version, "1.31.1");
    let mut session = rt.cpu_session(&std::fs::read(&model).unwrap()).unwrap();

    let x = Array2::from_shape_fn((5, 4), |(i, j)| (i as f32) * 0.3 - (j as f32) * 0.7 + 0.2);
    let outputs = session.run(ort::inputs![TensorRef::from_array_view(&x).unwrap()]).unwrap();
    let y = outputs["y"].try_extract_array::<f32>().unwrap();
    assert_eq!(y.shape(), &[5, 3]);
    let b = [0.1f32, -0.2, 0.3];
    for i in 0..5 {
        for o in 0..3 {
            let z: f32 = (0..4).map(|j| x[[i, j]] * ((o * 4 + j) as f32 * 0.1 - 0.5)).sum::<f32>() + b[o];
            let want = z.max(0.0);
            assert!((y[[i, o]] - want).abs() < 1e-5, "y[{i},{o}] = {} want {want}", y[[i, o]]);
        }
    }

    let providers = rt.probe_providers();
    let cpu = providers.iter().find(|p| p.name == "CPUExecutionProvider").unwrap();
    assert!(cpu.loads, "{providers:?}");
}
