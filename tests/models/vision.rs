//! petal's decoding and eval transform against torchvision's on real photos.
use crate::common;

use std::path::PathBuf;

use petal::config::DecodeLimits;
use petal::vision::{decode, EvalTransform};
use tch::Tensor;

fn photos() -> PathBuf {
    common::tools().join("testdata")
}

#[test]
fn eval_transform_matches_torchvision_on_real_photos() {
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let listed = common::oracle(
        "eval_transform.py",
        &[
            dir.path().to_str().unwrap(),
            photos().join("chelsea.png").to_str().unwrap(),
            photos().join("coffee.png").to_str().unwrap(),
        ],
    );
    let expected: std::collections::HashMap<String, Tensor> =
        petal::train::weights::read_file(&dir.path().join("expected.safetensors")).unwrap().into_iter().collect();
    let t = EvalTransform::default();
    for name in listed.lines() {
        let img = decode(&std::fs::read(dir.path().join(name)).unwrap(), &DecodeLimits::default()).unwrap();
        let ours = Tensor::from_slice(&t.apply(&img)).reshape([3, 224, 224]);
        let diff = (&ours - &expected[name]).abs();
        let mean = diff.mean(tch::Kind::Float).double_value(&[]);
        let max = diff.max().double_value(&[]);
        eprintln!("{name}: mean abs error {mean:.6}, max {max:.6} (normalised units; 1/255 = {:.6})", 1.0 / 255.0);
        // RGB and grayscale decode as PIL does; CMYK goes through another decoder.
        let bound = if name.contains("cmyk") { 0.05 } else { 1.0 / 255.0 };
        assert!(mean <= bound, "{name}: mean abs error {mean} > {bound}");
        if !name.contains("cmyk") {
            // Same decoder, same resampling arithmetic: identical to torchvision's.
            assert!(max <= 1e-6, "{name}: max abs error {max}");
        }
    }
}
