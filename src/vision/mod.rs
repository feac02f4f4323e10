//! Images in, tensors out: decoding with limits, and the one eval transform that training and
//! serving share — torchvision's `Resize(shorter side) → CenterCrop → ToTensor → Normalize` on PIL
//! images, reproduced: PIL's antialiased resampling (horizontal pass, then vertical, each rounded
//! to 8 bits), Python's round-half-even for the crop offset.
use image::{DynamicImage, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// Limits on what `decode` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 40_000_000, max_side: 20_000 }
    }
}

/// Decodes JPEG, PNG or WebP into 8-bit RGB. Grayscale is replicated, CMYK converted, alpha
/// dropped (as PIL's `convert("RGB")` does), 16-bit reduced to 8. The size is checked from the
/// header before any pixel is decoded.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
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
    if format == Some(image::ImageFormat::Jpeg) {
        match decode_jpeg_like_pil(bytes) {
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
/// pure-Rust decoder, once libjpeg has read it through to see that it is whole.
fn decode_jpeg_like_pil(bytes: &[u8]) -> Jpeg {
    JPEG_ENDED_EARLY.set(false);
    let whole = |img| if JPEG_ENDED_EARLY.get() { Jpeg::Truncated } else { img };
    // libjpeg reports errors by unwinding out of the decoder.
    std::panic::catch_unwind(|| -> Option<Jpeg> {
        let d = mozjpeg::Decompress::with_err(libjpeg_errors()).from_mem(bytes).ok()?;
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

/// Per output index: first input index and integer weights (PIL's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(input: u32, output: u32, filter: Interpolation) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(input) / f64::from(output);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..output)
        .map(|x| {
            let center = (f64::from(x) + 0.5) * scale;
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

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize((w, h), filter)` for RGB: horizontal pass, then vertical, 8-bit rounding.
pub fn resize(img: &RgbImage, w: u32, h: u32, filter: Interpolation) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let src = img.as_raw();
    let horizontal = if w != iw {
        let coeffs = coefficients(iw, w, filter);
        let mut out = vec![0u8; (w * ih * 3) as usize];
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kv) in k.iter().enumerate() {
                        acc += i64::from(row[(xmin + i) * 3 + c]) * i64::from(kv);
                    }
                    out[(y * w as usize + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        src.clone()
    };
    let vertical = if h != ih {
        let coeffs = coefficients(ih, h, filter);
        let stride = w as usize * 3;
        let mut out = vec![0u8; (w * h * 3) as usize];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for xc in 0..stride {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &kv) in k.iter().enumerate() {
                    acc += i64::from(horizontal[(ymin + i) * stride + xc]) * i64::from(kv);
                }
                out[y * stride + xc] = clip8(acc);
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(w, h, vertical).expect("sizes match")
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

impl EvalTransform {
    /// Resizes so the shorter side is `resize` (torchvision: the longer is truncated, not rounded).
    pub fn resize_shorter(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = if w <= h {
            (self.resize, (f64::from(self.resize) * f64::from(h) / f64::from(w)) as u32)
        } else {
            ((f64::from(self.resize) * f64::from(w) / f64::from(h)) as u32, self.resize)
        };
        if (nw, nh) == (w, h) {
            img.clone()
        } else {
            resize(img, nw, nh, self.interpolation)
        }
    }

    /// The centre `crop`×`crop` square (torchvision pads with zeros when the image is smaller).
    pub fn center_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let c = self.crop;
        let top = round_half_even((f64::from(h) - f64::from(c)) / 2.0);
        let left = round_half_even((f64::from(w) - f64::from(c)) / 2.0);
        RgbImage::from_fn(c, c, |x, y| {
            let sx = i64::from(x) + left;
            let sy = i64::from(y) + top;
            if sx >= 0 && sy >= 0 && sx < i64::from(w) && sy < i64::from(h) {
                *img.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        })
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
        self.normalize_into(&self.center_crop(&self.resize_shorter(img)), &mut out);
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
        let mut c = mozjpeg::Compress::new(color_space);
        c.set_size(w, h);
        let mut c = c.start_compress(Vec::new()).unwrap();
        c.write_scanlines(&pixels).unwrap();
        c.finish().unwrap()
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
