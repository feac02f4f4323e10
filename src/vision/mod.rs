//! Images in, tensors out: decoding with limits, and the one eval transform that training and
//! serving share — torchvision's `Resize(shorter side) → CenterCrop → ToTensor → Normalize` on PIL
//! images, reproduced: PIL's antialiased resampling (horizontal pass, then vertical, each rounded
//! to 8 bits), Python's round-half-even for the crop offset.
use image::{DynamicImage, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::config::DecodeLimits;
use crate::error::{Error, ErrorCode, Result};

/// Decodes JPEG, PNG or WebP into 8-bit RGB. Grayscale is replicated, CMYK converted, alpha
/// dropped (as PIL's `convert("RGB")` does), 16-bit reduced to 8. The size is checked from the
/// header before any pixel is decoded.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    decode_reduced(bytes, limits, 0)
}

/// `decode`, except that a JPEG large enough is shrunk by
/// libjpeg-turbo while it is decoded — in the DCT domain, by 1/2, 1/4 or 1/8, the most that keeps
/// the shorter side at least `min_shorter` (what Pillow's `draft` does). 0 never shrinks. The
/// pixels then differ a little from a full-size decode's; the work falls with the area.
pub fn decode_reduced(bytes: &[u8], limits: &DecodeLimits, min_shorter: u32) -> Result<RgbImage> {
    let undecodable =
        |e: &dyn std::fmt::Display| Error::new(ErrorCode::UndecodableImage, format!("cannot decode the image: {e}"));
    let (format, (w, h)) = header(bytes, limits)?;
    if format == Some(image::ImageFormat::Jpeg) {
        match decode_jpeg_like_pil(bytes, jpeg_scale(w.min(h), min_shorter)) {
            Jpeg::Rgb(img) => return Ok(img),
            Jpeg::Truncated => return Err(undecodable(&"the JPEG data ends before the image does (truncated)")),
            Jpeg::Elsewhere => {}
        }
    }
    let mut reader =
        ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| undecodable(&e))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(l);
    let img = reader.decode().map_err(|e| undecodable(&e))?;
    Ok(to_rgb8(img))
}

/// An image's width and height, read from its header and checked against `limits`; nothing is
/// decoded. What decoding it will cost is known from these before it is paid.
pub fn probe(bytes: &[u8], limits: &DecodeLimits) -> Result<(u32, u32)> {
    header(bytes, limits).map(|(_, size)| size)
}

fn header(bytes: &[u8], limits: &DecodeLimits) -> Result<(Option<image::ImageFormat>, (u32, u32))> {
    let undecodable =
        |e: &dyn std::fmt::Display| Error::new(ErrorCode::UndecodableImage, format!("cannot decode the image: {e}"));
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| undecodable(&e))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        Some(other) => {
            return Err(Error::new(
                ErrorCode::UnsupportedMediaType,
                format!("{other:?} images are not accepted; send JPEG, PNG or WebP"),
            ))
        }
        None => return Err(undecodable(&"not a JPEG, PNG or WebP file")),
    }
    let format = reader.format();
    let (w, h) = reader.into_dimensions().map_err(|e| undecodable(&e))?;
    check_size(w, h, limits)?;
    Ok((format, (w, h)))
}

/// The numerator (over 8) libjpeg-turbo scales a JPEG of shorter side `shorter` by: the smallest of
/// 1, 2 and 4 that keeps it at least `min_shorter` (libjpeg rounds sizes up), else 8 (full size).
fn jpeg_scale(shorter: u32, min_shorter: u32) -> u8 {
    if min_shorter == 0 {
        return 8;
    }
    [1u8, 2, 4]
        .into_iter()
        .find(|&n| (u64::from(shorter) * u64::from(n)).div_ceil(8) >= u64::from(min_shorter))
        .unwrap_or(8)
}

/// What libjpeg-turbo made of a JPEG.
enum Jpeg {
    Rgb(RgbImage),
    /// The data ends before the image does (even if only its end-of-image marker is missing).
    /// libjpeg warns and makes up the rest (grey); PIL refuses such a file ("image file is
    /// truncated"), and so does petal.
    Truncated,
    /// Not converted to RGB here (CMYK), or not readable: the pure-Rust decoder decides.
    Elsewhere,
}

thread_local! {
    /// Set by `libjpeg_message` when libjpeg ran out of data (and made up an end of image).
    static JPEG_ENDED_EARLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// libjpeg's messages: its warning that the data ended early is noted; the others are ignored.
unsafe extern "C-unwind" fn libjpeg_message(cinfo: &mut mozjpeg_sys::jpeg_common_struct, level: std::ffi::c_int) {
    // SAFETY: libjpeg calls this through `cinfo.err`, which points at the live error manager.
    if level < 0 && unsafe { (*cinfo.err).msg_code } == mozjpeg_sys::JWRN_JPEG_EOF {
        JPEG_ENDED_EARLY.set(true);
    }
}

/// libjpeg's fatal errors: it must not return from here, so unwind out of the decoder.
unsafe extern "C-unwind" fn libjpeg_error(_cinfo: &mut mozjpeg_sys::jpeg_common_struct) {
    std::panic::resume_unwind(Box::new("libjpeg error"));
}

fn libjpeg_errors() -> mozjpeg_sys::jpeg_error_mgr {
    // SAFETY: a zeroed manager is plain data, and jpeg_std_error sets every field of it.
    let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(libjpeg_error);
    err.emit_message = Some(libjpeg_message);
    err
}

/// YCbCr and grayscale JPEGs through libjpeg-turbo's decoder (islow IDCT, fancy upsampling: its
/// defaults and PIL's), so pixels are the ones the reference pipeline sees. CMYK is left to the
/// pure-Rust decoder, once libjpeg has read it through to see that it is whole. `scale`: the
/// output's size in eighths of the image's (8: full size).
fn decode_jpeg_like_pil(bytes: &[u8], scale: u8) -> Jpeg {
    JPEG_ENDED_EARLY.set(false);
    let whole = |img| if JPEG_ENDED_EARLY.get() { Jpeg::Truncated } else { img };
    // libjpeg reports errors by unwinding out of the decoder.
    std::panic::catch_unwind(|| -> Option<Jpeg> {
        let mut d = mozjpeg::Decompress::with_err(libjpeg_errors()).from_mem(bytes).ok()?;
        if !matches!(
            d.color_space(),
            mozjpeg::ColorSpace::JCS_YCbCr | mozjpeg::ColorSpace::JCS_GRAYSCALE | mozjpeg::ColorSpace::JCS_RGB
        ) {
            let (mozjpeg::Format::CMYK(mut started)
            | mozjpeg::Format::RGB(mut started)
            | mozjpeg::Format::Gray(mut started)) = d.image().ok()?;
            started.read_scanlines::<u8>().ok()?;
            started.finish().ok()?;
            return Some(whole(Jpeg::Elsewhere));
        }
        if scale != 8 {
            d.scale(scale);
        }
        let mut started = d.rgb().ok()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines::<u8>().ok()?;
        started.finish().ok()?;
        Some(whole(Jpeg::Rgb(RgbImage::from_raw(w, h, pixels)?)))
    })
    .ok()
    .flatten()
    .unwrap_or(Jpeg::Elsewhere)
}

/// Checks an image's size against `limits` (from its header, before any pixel is decoded).
fn check_size(w: u32, h: u32, limits: &DecodeLimits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::new(ErrorCode::UndecodableImage, "the image is empty"));
    }
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(Error::new(
            ErrorCode::ImageTooLarge,
            format!("the image is {w}×{h}; the limit is {} pixels and {} per side", limits.max_pixels, limits.max_side),
        ));
    }
    let (long, short) = (w.max(h), w.min(h));
    if limits.max_aspect_ratio > 0 && u64::from(long) > u64::from(short) * u64::from(limits.max_aspect_ratio) {
        return Err(Error::new(
            ErrorCode::ImageTooLarge,
            format!(
                "the image is {w}×{h}, an aspect ratio of {:.0}:1; the limit is {}:1",
                f64::from(long) / f64::from(short),
                limits.max_aspect_ratio
            ),
        ));
    }
    Ok(())
}

fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(i) => i,
        other => other.to_rgb8(),
    }
}

/// Resampling filters, as PIL defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    #[default]
    Bilinear,
    Bicubic,
}

impl Interpolation {
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For the output indices `outputs` of a resize from `input` to `output` samples: first input
/// index and integer weights of each (PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`). Only
/// the outputs asked for are computed: the cost is that of the kept part, not of the whole resize.
fn coefficients(
    input: u32,
    output: u64,
    filter: Interpolation,
    outputs: std::ops::Range<u64>,
) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(input) / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    outputs
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(i64::from(input)) as usize;
            let mut w: Vec<f64> =
                (xmin..xmax).map(|i| filter.weight((i as f64 - center + 0.5) / filterscale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let k = w
                .iter()
                .map(|v| {
                    let scaled = v * f64::from(1u32 << PRECISION_BITS);
                    (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// What every sum starts from: a half, for rounding.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize((w, h), filter)` for RGB: horizontal pass, then vertical, 8-bit rounding.
pub fn resize(img: &RgbImage, w: u32, h: u32, filter: Interpolation) -> RgbImage {
    resize_region(img, (u64::from(w), u64::from(h)), Region { x: 0, y: 0, w, h }, filter)
}

/// A rectangle of an image: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u64,
    pub y: u64,
    pub w: u32,
    pub h: u32,
}

/// The `region` of `resize(img, size.0, size.1, filter)`, computed without the rest: the same
/// pixels (each output pixel of PIL's two passes depends only on its own coefficients), at a cost
/// bounded by the region and the source, never by the resized size — a 20,000 × 1 strip resized
/// to a shorter side of 256 is 5 gigapixels, its centre crop 50,176. `region` must lie inside.
pub fn resize_region(img: &RgbImage, size: (u64, u64), region: Region, filter: Interpolation) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let (w, h) = size;
    assert!(region.x + u64::from(region.w) <= w && region.y + u64::from(region.h) <= h, "region inside the resize");
    let src = img.as_raw();
    let (rw, rh) = (region.w as usize, region.h as usize);
    let xs = region.x..region.x + u64::from(region.w);
    let ys = region.y..region.y + u64::from(region.h);
    // Vertical coefficients first: they say which source rows the horizontal pass must produce.
    let vertical = (h != u64::from(ih)).then(|| coefficients(ih, h, filter, ys.clone()));
    let rows: std::ops::Range<usize> = match &vertical {
        Some(c) => {
            let first = c.iter().map(|(min, _)| *min).min().unwrap_or(0);
            let end = c.iter().map(|(min, k)| min + k.len()).max().unwrap_or(first);
            first..end.max(first)
        }
        None => ys.start as usize..ys.end as usize,
    };
    // Horizontal pass over the needed rows, for the region's columns only. Sums in 32 bits as
    // PIL's are (`int ss0`): the same pixels, and loops the compiler can vectorise.
    let stride = rw * 3;
    let mut horizontal = vec![0u8; rows.len() * stride];
    if w != u64::from(iw) {
        let coeffs = coefficients(iw, w, filter, xs.clone());
        for (r, y) in rows.clone().enumerate() {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            let out = &mut horizontal[r * stride..(r + 1) * stride];
            for ((xmin, k), px) in coeffs.iter().zip(out.chunks_exact_mut(3)) {
                let taps = &row[xmin * 3..(xmin + k.len()) * 3];
                let mut acc = [ROUNDING; 3];
                for (p, &kv) in taps.chunks_exact(3).zip(k) {
                    acc[0] += i32::from(p[0]) * kv;
                    acc[1] += i32::from(p[1]) * kv;
                    acc[2] += i32::from(p[2]) * kv;
                }
                px[0] = clip8(acc[0]);
                px[1] = clip8(acc[1]);
                px[2] = clip8(acc[2]);
            }
        }
    } else {
        for (r, y) in rows.clone().enumerate() {
            let start = (y * iw as usize + xs.start as usize) * 3;
            horizontal[r * stride..(r + 1) * stride].copy_from_slice(&src[start..start + stride]);
        }
    }
    // Vertical pass: a whole output row at a time, each tap a multiply-add over a row.
    let out = match vertical {
        Some(coeffs) => {
            let mut out = vec![0u8; rh * stride];
            let mut acc = vec![0i32; stride];
            for ((ymin, k), dst) in coeffs.iter().zip(out.chunks_exact_mut(stride)) {
                acc.fill(ROUNDING);
                let first = ymin - rows.start;
                for (i, &kv) in k.iter().enumerate() {
                    let src = &horizontal[(first + i) * stride..(first + i + 1) * stride];
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a += i32::from(v) * kv;
                    }
                }
                for (d, &a) in dst.iter_mut().zip(&acc) {
                    *d = clip8(a);
                }
            }
            out
        }
        None => horizontal,
    };
    RgbImage::from_raw(region.w, region.h, out).expect("sizes match")
}

/// Python's `round()`: halves go to the even neighbour.
pub fn round_half_even(x: f64) -> i64 {
    let floor = x.floor();
    let diff = x - floor;
    let f = floor as i64;
    if diff > 0.5 || (diff == 0.5 && f % 2 != 0) {
        f + 1
    } else {
        f
    }
}

/// torchvision's eval transform for one set of weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalTransform {
    /// Shorter side after resizing.
    #[schema(minimum = 16, maximum = 1024)]
    pub resize: u32,
    /// Square centre crop.
    #[schema(minimum = 16, maximum = 1024)]
    pub crop: u32,
    #[serde(default)]
    pub interpolation: Interpolation,
    #[schema(value_type = Vec<f32>, min_items = 3, max_items = 3)]
    pub mean: [f32; 3],
    #[schema(value_type = Vec<f32>, min_items = 3, max_items = 3)]
    pub std: [f32; 3],
}

impl Default for EvalTransform {
    /// ImageNet's: resize 256, crop 224, bilinear, ImageNet mean and std.
    fn default() -> Self {
        Self {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Largest `resize` and `crop` an eval transform may have (a model's metadata or a job's recipe).
pub const MAX_TRANSFORM_SIDE: u32 = 1024;

impl EvalTransform {
    /// Checks what a model's metadata or a job's recipe may ask for: crop in 16–1024,
    /// crop ≤ resize ≤ 1024, finite mean, positive std.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(16..=MAX_TRANSFORM_SIDE).contains(&self.crop) || !(self.crop..=MAX_TRANSFORM_SIDE).contains(&self.resize) {
            return Err(format!(
                "eval_transform: crop in 16–{MAX_TRANSFORM_SIDE} and crop ≤ resize ≤ {MAX_TRANSFORM_SIDE} (got \
                 resize {}, crop {})",
                self.resize, self.crop
            ));
        }
        if !(self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err("eval_transform: mean must be finite and std positive".into());
        }
        Ok(())
    }

    /// The size `resize_shorter` gives a `w`×`h` image (torchvision: the longer side is truncated,
    /// not rounded), in 64 bits: it may be far larger than the image.
    pub fn resized_size(&self, w: u32, h: u32) -> (u64, u64) {
        let r = u64::from(self.resize);
        if w <= h {
            (r, (f64::from(self.resize) * f64::from(h) / f64::from(w)) as u64)
        } else {
            ((f64::from(self.resize) * f64::from(w) / f64::from(h)) as u64, r)
        }
    }

    /// The shorter side a JPEG may be shrunk to while it is decoded for this transform, with
    /// `reducing_gap` (`inference.engine.jpeg_reducing_gap`) times the resize kept: the
    /// `min_shorter` of `decode_reduced`; 0 (never shrink) when the gap is 0.
    pub fn min_decoded_shorter(&self, reducing_gap: f64) -> u32 {
        (f64::from(self.resize) * reducing_gap).ceil() as u32
    }

    /// Resizes so the shorter side is `resize`. Its cost is that of the resized image: use it
    /// only where that is bounded (shrinking); `resize_crop` computes just the centre crop.
    pub fn resize_shorter(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = self.resized_size(w, h);
        if (nw, nh) == (u64::from(w), u64::from(h)) {
            img.clone()
        } else {
            let whole = Region { x: 0, y: 0, w: nw as u32, h: nh as u32 };
            resize_region(img, (nw, nh), whole, self.interpolation)
        }
    }

    /// The centre `crop`×`crop` square (torchvision pads with zeros when the image is smaller).
    pub fn center_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        self.crop_of(u64::from(w), u64::from(h), |x, y, rw, rh| {
            image::imageops::crop_imm(img, x as u32, y as u32, rw, rh).to_image()
        })
    }

    /// `center_crop(resize_shorter(img))`, computing only the pixels the crop keeps: its cost is
    /// bounded by the crop and the source image, whatever the image's shape.
    pub fn resize_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = self.resized_size(w, h);
        if (nw, nh) == (u64::from(w), u64::from(h)) {
            return self.center_crop(img);
        }
        self.crop_of(nw, nh, |x, y, rw, rh| {
            resize_region(img, (nw, nh), Region { x, y, w: rw, h: rh }, self.interpolation)
        })
    }

    /// The centre crop of a `w`×`h` image whose kept rectangle (left, top, width, height, inside
    /// the image) `part` produces; zeros around it where the image is smaller than the crop.
    fn crop_of(&self, w: u64, h: u64, part: impl FnOnce(u64, u64, u32, u32) -> RgbImage) -> RgbImage {
        let c = i64::from(self.crop);
        let (wi, hi) = (w as i64, h as i64);
        let top = round_half_even((h as f64 - c as f64) / 2.0);
        let left = round_half_even((w as f64 - c as f64) / 2.0);
        let (x0, x1) = (left.max(0), (left + c).min(wi));
        let (y0, y1) = (top.max(0), (top + c).min(hi));
        if x1 <= x0 || y1 <= y0 {
            return RgbImage::new(self.crop, self.crop);
        }
        let kept = part(x0 as u64, y0 as u64, (x1 - x0) as u32, (y1 - y0) as u32);
        if kept.dimensions() == (self.crop, self.crop) {
            return kept;
        }
        let mut out = RgbImage::new(self.crop, self.crop);
        image::imageops::replace(&mut out, &kept, x0 - left, y0 - top);
        out
    }

    /// 8-bit RGB → normalised CHW floats, appended to `out`.
    pub fn normalize_into(&self, img: &RgbImage, out: &mut Vec<f32>) {
        let plane = (img.width() * img.height()) as usize;
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        let raw = img.as_raw();
        for c in 0..3 {
            let scale = 1.0 / (255.0 * self.std[c]);
            let shift = self.mean[c] / self.std[c];
            let dst = &mut out[start + c * plane..start + (c + 1) * plane];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = f32::from(raw[i * 3 + c]) * scale - shift;
            }
        }
    }

    /// The whole transform: `[3, crop, crop]` floats.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = Vec::with_capacity((3 * self.crop * self.crop) as usize);
        self.normalize_into(&self.resize_crop(img), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        for (x, want) in
            [(0.5, 0), (1.5, 2), (2.5, 2), (58.5, 58), (59.5, 60), (16.0, 16), (-0.5, 0), (3.2, 3), (3.7, 4)]
        {
            assert_eq!(round_half_even(x), want, "round({x})");
        }
    }

    #[test]
    fn resize_keeps_flat_colour_and_sizes() {
        let img = RgbImage::from_pixel(500, 375, image::Rgb([10, 200, 77]));
        let t = EvalTransform::default();
        let r = t.resize_shorter(&img);
        assert_eq!(r.dimensions(), (341, 256));
        assert!(r.pixels().all(|p| p.0 == [10, 200, 77]));
        let c = t.center_crop(&r);
        assert_eq!(c.dimensions(), (224, 224));
        let v = t.apply(&img);
        assert_eq!(v.len(), 3 * 224 * 224);
        assert!((v[0] - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-6);
    }

    fn noise(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, ((y * 31) ^ x) as u8]))
    }

    #[test]
    fn resize_crop_equals_the_whole_resize_then_the_crop() {
        for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
            for (resize, crop) in [(48, 40), (40, 40), (32, 48)] {
                let t = EvalTransform { resize, crop, interpolation, ..Default::default() };
                for (w, h) in [(48, 48), (64, 48), (48, 71), (30, 40), (200, 9), (7, 150), (40, 40), (300, 290)] {
                    let img = noise(w, h);
                    let whole = t.center_crop(&t.resize_shorter(&img));
                    assert_eq!(t.resize_crop(&img), whole, "{w}×{h} resize {resize} crop {crop} {interpolation:?}");
                }
            }
        }
    }

    #[test]
    fn a_thin_strip_costs_its_crop_not_its_resize() {
        // Resized to a shorter side of 256 this is 5,120,000 × 256 pixels (3.9 GB); only the
        // 224 × 224 crop is computed.
        let img = RgbImage::from_pixel(20_000, 1, image::Rgb([9, 99, 199]));
        let t = EvalTransform::default();
        let start = std::time::Instant::now();
        let v = t.apply(&img);
        assert_eq!(v.len(), 3 * 224 * 224);
        assert!((v[0] - (9.0 / 255.0 - 0.485) / 0.229).abs() < 1e-6);
        assert_eq!(t.resized_size(20_000, 1), (5_120_000, 256));
        // A huge resize is computed in 64 bits (it overflowed u32 sizes).
        let big = EvalTransform { resize: 1024, crop: 1024, ..Default::default() };
        assert_eq!(big.resized_size(20_000, 1), (20_480_000, 1024));
        assert_eq!(big.resize_crop(&img).dimensions(), (1024, 1024));
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn aspect_ratio_is_limited() {
        let limits = DecodeLimits::default();
        assert_eq!(check_size(20_000, 1, &limits).unwrap_err().code, ErrorCode::ImageTooLarge);
        assert_eq!(check_size(1, 3_000, &limits).unwrap_err().code, ErrorCode::ImageTooLarge);
        check_size(3_200, 100, &limits).unwrap();
        check_size(20_000, 1, &DecodeLimits { max_aspect_ratio: 0, ..limits }).unwrap();
        assert!(EvalTransform { resize: 5000, ..Default::default() }.check().is_err());
        EvalTransform::default().check().unwrap();
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let e = check_size(100_000, 100_000, &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ImageTooLarge);
        assert_eq!(decode(b"GIF89a....", &DecodeLimits::default()).unwrap_err().code, ErrorCode::UnsupportedMediaType);
        assert_eq!(decode(b"hello", &DecodeLimits::default()).unwrap_err().code, ErrorCode::UndecodableImage);
    }

    fn jpeg(color_space: mozjpeg::ColorSpace, components: usize) -> Vec<u8> {
        let (w, h) = (64, 48);
        let pixels: Vec<u8> = (0..w * h * components).map(|i| ((i * 7) ^ (i / 97)) as u8).collect();
        encode(color_space, (w, h), &pixels, None)
    }

    /// `pixels` (`w`×`h`, the colour space's components each) as a JPEG, at libjpeg's default
    /// quality unless one is given.
    fn encode(
        color_space: mozjpeg::ColorSpace,
        (w, h): (usize, usize),
        pixels: &[u8],
        quality: Option<f32>,
    ) -> Vec<u8> {
        let mut c = mozjpeg::Compress::new(color_space);
        c.set_size(w, h);
        if let Some(q) = quality {
            c.set_quality(q);
        }
        let mut c = c.start_compress(Vec::new()).unwrap();
        c.write_scanlines(pixels).unwrap();
        c.finish().unwrap()
    }

    #[test]
    fn large_jpegs_shrink_while_decoded_no_further_than_asked() {
        assert_eq!(jpeg_scale(3000, 0), 8, "0: never");
        assert_eq!(jpeg_scale(3000, 512), 2, "3000/4 = 750 ≥ 512, 3000/8 = 375 is not");
        assert_eq!(jpeg_scale(4096, 512), 1);
        assert_eq!(jpeg_scale(1023, 512), 4, "libjpeg rounds up: 1023/2 → 512");
        assert_eq!(jpeg_scale(1024, 512), 4);
        assert_eq!(jpeg_scale(300, 512), 8, "never enlarged");
        let limits = DecodeLimits::default();
        let whole = jpeg(mozjpeg::ColorSpace::JCS_RGB, 3);
        for (min, size) in [(0, (64, 48)), (6, (8, 6)), (12, (16, 12)), (13, (32, 24)), (25, (64, 48))] {
            assert_eq!(decode_reduced(&whole, &limits, min).unwrap().dimensions(), size, "at least {min}");
            // Shrunk or not, a truncated file is refused.
            let cut = decode_reduced(&whole[..whole.len() - 2], &limits, min).unwrap_err();
            assert_eq!(cut.code, ErrorCode::UndecodableImage, "at least {min}: {}", cut.message);
        }
        // A smooth picture looks the same shrunk by the decoder or after it.
        let (w, h) = (512u32, 384u32);
        let smooth: Vec<u8> =
            (0..w * h).flat_map(|i| [(i % w / 2) as u8, (i / w / 2) as u8, ((i % w + i / w) / 4) as u8]).collect();
        let file = encode(mozjpeg::ColorSpace::JCS_RGB, (w as usize, h as usize), &smooth, Some(95.0));
        let t = EvalTransform { resize: 96, crop: 96, ..EvalTransform::default() };
        assert_eq!(t.min_decoded_shorter(2.0), 192);
        assert_eq!(t.min_decoded_shorter(0.0), 0, "gap 0: never shrunk");
        let reduced = decode_reduced(&file, &limits, t.min_decoded_shorter(2.0)).unwrap();
        assert_eq!(reduced.dimensions(), (256, 192));
        let (a, b) = (t.apply(&reduced), t.apply(&decode(&file, &limits).unwrap()));
        let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        assert!(mean < 0.02, "mean abs difference {mean} (normalised units)");
    }

    #[test]
    fn truncated_jpegs_are_undecodable_whole_ones_decode() {
        use mozjpeg::ColorSpace::{JCS_CMYK, JCS_GRAYSCALE, JCS_RGB};
        let limits = DecodeLimits::default();
        for (space, components) in [(JCS_RGB, 3), (JCS_GRAYSCALE, 1), (JCS_CMYK, 4)] {
            let whole = jpeg(space, components);
            assert_eq!(decode(&whole, &limits).unwrap().dimensions(), (64, 48), "{space:?}");
            // As PIL has it, a file that lacks only its end-of-image marker is truncated too.
            for cut in [whole.len() / 2, whole.len() - 40, whole.len() - 2] {
                let e = decode(&whole[..cut], &limits).unwrap_err();
                assert_eq!(e.code, ErrorCode::UndecodableImage, "{space:?} cut at {cut}: {}", e.message);
            }
        }
    }
}
