//! petal's train augmentation against torchvision's, pixel for pixel, on real photos and noise.
use crate::common;

use petal::config::DecodeLimits;
use petal::train::augment::{apply, Crop, Params};
use petal::train::recipe::{Augment, RandomResizedCrop};
use petal::vision::{decode, EvalTransform};
use rand::{Rng, SeedableRng};

#[test]
fn augmentation_matches_torchvision_pixel_for_pixel() {
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let eval = EvalTransform::default();
    let photos = common::tools().join("testdata");
    let mut images = Vec::new();
    for name in ["chelsea.png", "coffee.png"] {
        let img = decode(&std::fs::read(photos.join(name)).unwrap(), &DecodeLimits::default()).unwrap();
        // As training keeps them: shorter side at the eval resize.
        images.push((name.to_string(), eval.resize_shorter(&img)));
        images.push((format!("full_{name}"), img));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let noise = image::RgbImage::from_fn(97, 61, |_, _| image::Rgb([rng.gen(), rng.gen(), rng.gen()]));
    images.push(("noise.png".into(), noise));
    for (name, img) in &images {
        img.save(dir.path().join(name)).unwrap();
    }
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    let spec = Augment::default();
    for i in 0..40 {
        let (name, img) = &images[i % images.len()];
        let mut p = Params::draw(&spec, &mut rng);
        if i % 7 == 0 {
            p.brightness = Some(1.3); // clipping
        }
        if i % 11 == 0 {
            p.angle = 0.0;
            p.shear_x = 0.0;
        }
        // Every third case first takes a random resized crop, as torchvision's RandomResizedCrop.
        let crop = (i % 3 == 0).then(|| Crop::draw(&RandomResizedCrop::default(), img.dimensions(), &mut rng));
        let size = 64 + (i as u32 % 5) * 40;
        cases.push(serde_json::json!({
            "image": name, "flip": p.flip, "brightness": p.brightness, "contrast": p.contrast,
            "contrast_first": p.contrast_first, "angle": p.angle, "shear_x": p.shear_x,
            "rrc": crop.map(|c| [c.top, c.left, c.height, c.width, size]),
        }));
        expected.push(match crop {
            Some(c) => apply(&c.resize(img, size), &p),
            None => apply(img, &p),
        });
    }
    std::fs::write(dir.path().join("cases.json"), serde_json::to_vec(&cases).unwrap()).unwrap();
    let n: usize = common::oracle("augment.py", &[dir.path().to_str().unwrap()]).trim().parse().unwrap();
    assert_eq!(n, cases.len());
    for (i, ours) in expected.iter().enumerate() {
        let theirs = image::open(dir.path().join(format!("out_{i}.png"))).unwrap().to_rgb8();
        let differ = ours.pixels().zip(theirs.pixels()).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "case {i} {}: {differ} of {} pixels differ", cases[i], ours.len() / 3);
    }
}

/// Random resized crops stay inside the image, within the asked area share and aspect ratio (up to
/// rounding), and fall back to the ratio-clamped centre crop when ten tries fail.
#[test]
fn random_resized_crops_follow_torchvisions_rules() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let spec = RandomResizedCrop::default();
    for (w, h) in [(256u32, 341u32), (400, 256), (97, 61)] {
        for _ in 0..500 {
            let c = Crop::draw(&spec, (w, h), &mut rng);
            assert!(c.width > 0 && c.height > 0 && c.left + c.width <= w && c.top + c.height <= h, "{c:?}");
            let share = f64::from(c.width * c.height) / f64::from(w * h);
            assert!((0.06..=1.0).contains(&share), "{c:?}: {share}");
        }
    }
    // Only a share of 1 with a ratio the image cannot have: every try fails, the fallback clamps.
    let strict = RandomResizedCrop { scale: [1.0, 1.0], ratio: [2.0, 2.0] };
    let c = Crop::draw(&strict, (100, 100), &mut rng);
    assert_eq!((c.top, c.left, c.height, c.width), (25, 0, 50, 100));
}
