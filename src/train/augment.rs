//! Train-time augmentation with torchvision's semantics on PIL images, pixel for pixel:
//! `RandomHorizontalFlip` → `ColorJitter(brightness, contrast)` (the two in random order, as its
//! `randperm` does) → `RandomAffine(degrees, shear)` (nearest neighbour, black fill, centre
//! `(w/2, h/2)`), then the shared eval transform (`vision::EvalTransform`).
//!
//! PIL's arithmetic is reproduced: `ImageEnhance` blends with a single-precision factor and
//! truncates; the contrast's grey level is the rounded mean of the `L` conversion
//! (`(19595 R + 38470 G + 7471 B + 2^15) >> 16`); the affine transform samples pixel centres
//! `(x + ½, y + ½)` in 16.16 fixed point (doubles for huge images), as `ImagingTransformAffine`.
//!
//! Jitter is a per-value lookup table (both operations map each channel value independently,
//! given the image's mean), and when the image already has the eval resize's size, only the
//! centre crop's pixels are sampled: the same result as the full pipeline at a fraction of the work.
use image::RgbImage;
use rand::Rng;

use crate::train::recipe::{Augment, RandomResizedCrop};
use crate::vision::EvalTransform;

/// One draw of the random parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub flip: bool,
    /// Brightness factor, if jittered.
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    /// Whether contrast is applied before brightness.
    pub contrast_first: bool,
    /// Rotation, degrees (counter-clockwise, torchvision's sign).
    pub angle: f64,
    /// Shear along x, degrees.
    pub shear_x: f64,
}

impl Params {
    /// The identity.
    pub fn none() -> Self {
        Params { flip: false, brightness: None, contrast: None, contrast_first: false, angle: 0.0, shear_x: 0.0 }
    }

    /// Draws as torchvision's transforms do (same distributions; a different generator).
    pub fn draw(spec: &Augment, rng: &mut impl Rng) -> Self {
        let flip = spec.hflip > 0.0 && rng.gen::<f64>() < spec.hflip;
        // torch draws float32 factors and angles; so do we (then widened, as Python does).
        let factor = |rng: &mut dyn rand::RngCore, x: f64| {
            let lo = (1.0 - x).max(0.0) as f32;
            (x > 0.0).then(|| f64::from(lo + rng.gen::<f32>() * ((1.0 + x) as f32 - lo)))
        };
        let contrast_first = rng.gen::<bool>();
        let brightness = factor(rng, spec.brightness);
        let contrast = factor(rng, spec.contrast);
        let uniform = |rng: &mut dyn rand::RngCore, r: f64| {
            if r > 0.0 {
                f64::from(-(r as f32) + rng.gen::<f32>() * 2.0 * r as f32)
            } else {
                0.0
            }
        };
        let angle = uniform(rng, spec.degrees);
        let shear_x = uniform(rng, spec.shear);
        Params { flip, brightness, contrast, contrast_first, angle, shear_x }
    }
}

/// PIL's `Image.blend(degenerate, image, alpha)` on one value (8-bit bands).
fn blend(degenerate: u8, value: u8, alpha: f32) -> u8 {
    let d = i32::from(degenerate);
    let t = d as f32 + alpha * (i32::from(value) - d) as f32;
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// PIL's RGB → L.
fn luma(p: [u8; 3]) -> u32 {
    (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16
}

/// The colour jitter as a lookup table on channel values (the contrast's grey level depends on
/// the image, after brightness when brightness goes first).
fn jitter_lut(img: &RgbImage, p: &Params) -> Option<[u8; 256]> {
    if p.brightness.is_none() && p.contrast.is_none() {
        return None;
    }
    let mut lut: [u8; 256] = std::array::from_fn(|v| v as u8);
    let brightness = |lut: &mut [u8; 256], f: f64| lut.iter_mut().for_each(|v| *v = blend(0, *v, f as f32));
    let contrast = |lut: &mut [u8; 256], f: f64| {
        // ImageStat over the L image: int(mean + 0.5).
        let mut sum = 0u64;
        for px in img.pixels() {
            sum += u64::from(luma([lut[px[0] as usize], lut[px[1] as usize], lut[px[2] as usize]]));
        }
        let n = u64::from(img.width()) * u64::from(img.height());
        let mean = (sum as f64 / n as f64 + 0.5) as u8;
        lut.iter_mut().for_each(|v| *v = blend(mean, *v, f as f32));
    };
    let steps: [(bool, Option<f64>); 2] = if p.contrast_first {
        [(false, p.contrast), (true, p.brightness)]
    } else {
        [(true, p.brightness), (false, p.contrast)]
    };
    for (is_brightness, f) in steps {
        match (is_brightness, f) {
            (true, Some(f)) => brightness(&mut lut, f),
            (false, Some(f)) => contrast(&mut lut, f),
            _ => {}
        }
    }
    Some(lut)
}

/// torchvision's `_get_inverse_affine_matrix(center, angle, (0, 0), 1.0, (shear_x, 0))`: output
/// pixel → input pixel.
fn inverse_matrix(w: u32, h: u32, p: &Params) -> [f64; 6] {
    let (cx, cy) = (f64::from(w) * 0.5, f64::from(h) * 0.5);
    let rot = p.angle.to_radians();
    let sx = p.shear_x.to_radians();
    let sy = 0.0f64.to_radians();
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0];
    m[2] += m[0] * (-cx) + m[1] * (-cy);
    m[5] += m[3] * (-cx) + m[4] * (-cy);
    m[2] += cx;
    m[5] += cy;
    m
}

/// PIL's nearest-neighbour affine transform (`ImagingTransformAffine`) over the output rectangle
/// `[0, x_end) × [0, y_end)` of an output of the input's size, calling `sample(x, y, source)` for
/// pixels with `x ≥ x_start`, `y ≥ y_start` (source `None` outside the input: the black fill).
/// Like PIL, it walks in 16.16 fixed point when the four corners map within ±32768, else in
/// doubles, adding the matrix's columns pixel by pixel.
fn affine_walk(
    w: u32,
    h: u32,
    m: &[f64; 6],
    (x_start, y_start, x_end, y_end): (u32, u32, u32, u32),
    mut sample: impl FnMut(u32, u32, Option<(u32, u32)>),
) {
    let (wi, hi) = (i64::from(w), i64::from(h));
    let mut emit = |x: u32, y: u32, xin: i64, yin: i64| {
        let inside = xin >= 0 && xin < wi && yin >= 0 && yin < hi;
        sample(x, y, inside.then_some((xin as u32, yin as u32)));
    };
    let fits =
        |x: f64, y: f64| (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0;
    let (wf, hf) = (f64::from(w), f64::from(h));
    if fits(0.0, 0.0) && fits(wf, hf) && fits(0.0, hf) && fits(wf, 0.0) {
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i32;
        let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
        let mut a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5);
        let mut a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5);
        for y in 0..y_end {
            if y >= y_start {
                let (mut xx, mut yy) = (a2, a5);
                for x in 0..x_end {
                    if x >= x_start {
                        emit(x, y, i64::from(xx >> 16), i64::from(yy >> 16));
                    }
                    xx = xx.wrapping_add(a0);
                    yy = yy.wrapping_add(a3);
                }
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return;
    }
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let mut xo = m[2] + m[1] * 0.5 + m[0] * 0.5;
    let mut yo = m[5] + m[4] * 0.5 + m[3] * 0.5;
    for y in 0..y_end {
        if y >= y_start {
            let (mut xx, mut yy) = (xo, yo);
            for x in 0..x_end {
                if x >= x_start {
                    emit(x, y, coord(xx), coord(yy));
                }
                xx += m[0];
                yy += m[3];
            }
        }
        xo += m[1];
        yo += m[4];
    }
}

/// The augmentation on the whole image, as torchvision returns it (before the eval transform).
pub fn apply(img: &RgbImage, p: &Params) -> RgbImage {
    let (w, h) = img.dimensions();
    let lut = jitter_lut(img, p);
    let src = |x: u32, y: u32| {
        let x = if p.flip { w - 1 - x } else { x };
        let px = img.get_pixel(x, y).0;
        match &lut {
            Some(l) => image::Rgb([l[px[0] as usize], l[px[1] as usize], l[px[2] as usize]]),
            None => image::Rgb(px),
        }
    };
    let mut out = RgbImage::new(w, h);
    if p.angle == 0.0 && p.shear_x == 0.0 {
        for (x, y, o) in out.enumerate_pixels_mut() {
            *o = src(x, y);
        }
        return out;
    }
    let m = inverse_matrix(w, h, p);
    affine_walk(w, h, &m, (0, 0, w, h), |x, y, s| {
        if let Some((sx, sy)) = s {
            out.put_pixel(x, y, src(sx, sy));
        }
    });
    out
}

/// Draws the augmentation of one training image and appends its normalised input to `out`: with
/// `random_resized_crop`, torchvision's `RandomResizedCrop(eval.crop)` first (in place of the eval
/// transform's resize and centre crop), then flip, jitter and affine on the crop.
pub fn train_sample(img: &RgbImage, spec: &Augment, eval: &EvalTransform, rng: &mut impl Rng, out: &mut Vec<f32>) {
    let p = Params::draw(spec, rng);
    match &spec.random_resized_crop {
        None => train_input(img, &p, eval, out),
        Some(rrc) => {
            let crop = Crop::draw(rrc, img.dimensions(), rng);
            eval.normalize_into(&apply(&crop.resize(img, eval.crop), &p), out);
        }
    }
}

/// A random resized crop's region: `top`, `left`, `height`, `width` in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

impl Crop {
    /// torchvision's `RandomResizedCrop.get_params`: ten tries at an area share in `scale` and a
    /// log-uniform aspect ratio in `ratio` (sides rounded half to even, as Python's `round`), else
    /// the centre crop with the ratio clamped.
    pub fn draw(spec: &RandomResizedCrop, (w, h): (u32, u32), rng: &mut impl Rng) -> Crop {
        let (wf, hf) = (f64::from(w), f64::from(h));
        let area = wf * hf;
        let (lo, hi) = (spec.ratio[0].ln(), spec.ratio[1].ln());
        for _ in 0..10 {
            let target = area * rng.gen_range(spec.scale[0]..=spec.scale[1]);
            let aspect = rng.gen_range(lo..=hi).exp();
            let cw = crate::vision::round_half_even((target * aspect).sqrt());
            let ch = crate::vision::round_half_even((target / aspect).sqrt());
            if 0 < cw && cw <= i64::from(w) && 0 < ch && ch <= i64::from(h) {
                let (cw, ch) = (cw as u32, ch as u32);
                let top = rng.gen_range(0..=h - ch);
                let left = rng.gen_range(0..=w - cw);
                return Crop { top, left, height: ch, width: cw };
            }
        }
        let in_ratio = wf / hf;
        let (cw, ch) = if in_ratio < spec.ratio[0] {
            (w, crate::vision::round_half_even(wf / spec.ratio[0]) as u32)
        } else if in_ratio > spec.ratio[1] {
            (crate::vision::round_half_even(hf * spec.ratio[1]) as u32, h)
        } else {
            (w, h)
        };
        Crop { top: (h - ch) / 2, left: (w - cw) / 2, height: ch, width: cw }
    }

    /// torchvision's `resized_crop` on a PIL image: the region, resized to `size`×`size` (bilinear).
    pub fn resize(&self, img: &RgbImage, size: u32) -> RgbImage {
        let region = image::imageops::crop_imm(img, self.left, self.top, self.width, self.height).to_image();
        crate::vision::resize(&region, size, size, crate::vision::Interpolation::Bilinear)
    }
}

/// Augmentation then the eval transform, appended to `out` as normalised CHW floats: equal to
/// `eval.apply(&apply(img, p))`. When `img` already has the eval resize's size, only the centre
/// crop is computed.
pub fn train_input(img: &RgbImage, p: &Params, eval: &EvalTransform, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    if w.min(h) != eval.resize || eval.crop > w.min(h) {
        eval.normalize_into(&eval.resize_crop(&apply(img, p)), out);
        return;
    }
    let c = eval.crop;
    let top = crate::vision::round_half_even((f64::from(h) - f64::from(c)) / 2.0) as u32;
    let left = crate::vision::round_half_even((f64::from(w) - f64::from(c)) / 2.0) as u32;
    let lut = jitter_lut(img, p).unwrap_or(std::array::from_fn(|v| v as u8));
    let plane = (c * c) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    // Normalisation of every value of each channel, through the jitter table.
    let table: [[f32; 256]; 3] = std::array::from_fn(|ch| {
        let scale = 1.0 / (255.0 * eval.std[ch]);
        let shift = eval.mean[ch] / eval.std[ch];
        std::array::from_fn(|v| f32::from(lut[v]) * scale - shift)
    });
    let black: [f32; 3] = std::array::from_fn(|ch| table_black(eval, ch));
    let raw = img.as_raw();
    let mut write = |x: u32, y: u32, s: Option<(u32, u32)>| {
        let i = ((y - top) * c + (x - left)) as usize;
        match s {
            Some((sx, sy)) => {
                let sx = if p.flip { w - 1 - sx } else { sx };
                let o = ((sy * w + sx) * 3) as usize;
                for ch in 0..3 {
                    dst[ch * plane + i] = table[ch][raw[o + ch] as usize];
                }
            }
            None => {
                for ch in 0..3 {
                    dst[ch * plane + i] = black[ch];
                }
            }
        }
    };
    if p.angle == 0.0 && p.shear_x == 0.0 {
        for y in top..top + c {
            for x in left..left + c {
                write(x, y, Some((x, y)));
            }
        }
    } else {
        affine_walk(w, h, &inverse_matrix(w, h, p), (left, top, left + c, top + c), write);
    }
}

/// The fill (black, after the jitter: the fill is added by the affine step, after jitter).
fn table_black(eval: &EvalTransform, ch: usize) -> f32 {
    -eval.mean[ch] / eval.std[ch]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, rng.gen(), (y * 3) as u8]))
    }

    #[test]
    fn the_cropped_path_equals_the_full_pipeline() {
        let eval = EvalTransform { resize: 48, crop: 40, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (k, (w, h)) in [(48, 48), (64, 48), (48, 71), (30, 40)].into_iter().enumerate() {
            let img = noise(w, h, k as u64);
            for _ in 0..20 {
                let p = Params::draw(&Augment::default(), &mut rng);
                let full = eval.apply(&apply(&img, &p));
                let mut fast = Vec::new();
                train_input(&img, &p, &eval, &mut fast);
                assert_eq!(full, fast, "{w}×{h} {p:?}");
            }
        }
    }

    #[test]
    fn identity_and_flip() {
        let img = noise(9, 5, 3);
        assert_eq!(apply(&img, &Params::none()), img);
        let flipped = apply(&img, &Params { flip: true, ..Params::none() });
        assert_eq!(flipped.get_pixel(0, 2), img.get_pixel(8, 2));
    }

    #[test]
    fn jitter_arithmetic_is_pils() {
        assert_eq!(blend(0, 200, 1.3), 255);
        assert_eq!(blend(0, 100, 0.7), 70);
        assert_eq!(blend(0, 101, 0.7), 70); // 70.7 truncated
        assert_eq!(blend(128, 0, 1.3), 0); // 128 - 166.4 clipped
        assert_eq!(luma([255, 255, 255]), 255);
        assert_eq!(luma([255, 0, 0]), 76);
    }
}
