//! `petal bench preprocess`: what `/classify` does to an image before the model — decode, the
//! eval transform's resize and centre crop, normalisation — per image on one thread, next to PIL
//! and torchvision's `Resize → CenterCrop → ToTensor → Normalize` (the reference pipeline, and
//! what a Python model server runs) measured in the same run.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::cli::bench::python_reference;
use crate::config::{DecodeLimits, EngineConfig};
use crate::error::{Error, Result};
use crate::foundation::files;
use crate::vision::{decode_reduced, probe, EvalTransform};

const PY_BENCH: &str = include_str!("../../../scripts/bench_preprocess.py");

/// Milliseconds per call of each step, for one image.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Steps {
    pub decode_ms: f64,
    pub resize_crop_ms: f64,
    pub normalise_ms: f64,
    /// From the encoded bytes to the model's input.
    pub total_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ImageRow {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    /// Full-size decode (as the reference).
    pub petal: Steps,
    /// As the engine decodes it by default (`inference.engine.jpeg_reducing_gap`): a large JPEG
    /// shrunk while decoded. Equal to `petal` where nothing is shrunk.
    pub petal_served: Steps,
    pub reference: Steps,
}

#[derive(Debug, Serialize)]
pub struct PreprocessReport {
    pub rows: Vec<ImageRow>,
    pub reference_versions: String,
}

/// Milliseconds per call of `f`, called for about `seconds` after one call.
fn per_call_ms(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let (mut n, start) = (0u64, Instant::now());
    loop {
        f()?;
        n += 1;
        let took = start.elapsed().as_secs_f64();
        if took >= seconds {
            return Ok(took * 1000.0 / n as f64);
        }
    }
}

fn steps(seconds: f64, bytes: &[u8], limits: &DecodeLimits, t: &EvalTransform, min_shorter: u32) -> Result<Steps> {
    let img = decode_reduced(bytes, limits, min_shorter)?;
    let crop = t.resize_crop(&img);
    Ok(Steps {
        decode_ms: per_call_ms(seconds, || decode_reduced(bytes, limits, min_shorter).map(drop))?,
        resize_crop_ms: per_call_ms(seconds, || {
            std::hint::black_box(t.resize_crop(&img));
            Ok(())
        })?,
        normalise_ms: per_call_ms(seconds, || {
            let mut out = Vec::new();
            t.normalize_into(&crop, &mut out);
            std::hint::black_box(out);
            Ok(())
        })?,
        total_ms: per_call_ms(seconds, || {
            std::hint::black_box(t.apply(&decode_reduced(bytes, limits, min_shorter)?));
            Ok(())
        })?,
    })
}

pub fn preprocess(images: &[PathBuf], seconds: f64, python: &Path) -> Result<PreprocessReport> {
    let engine = EngineConfig::default();
    let t = EvalTransform::default();
    let served_min = t.min_decoded_shorter(engine.jpeg_reducing_gap);
    let dir = files::temp_dir()?;
    let args = std::iter::once(seconds.to_string().into()).chain(images.iter().map(|p| p.clone().into_os_string()));
    let py = python_reference(python, dir.path(), "bench_preprocess.py", PY_BENCH, args)?;
    let mut rows = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let bytes = files::read(path)?;
        let (width, height) = probe(&bytes, &engine.decode)?;
        let r = &py["images"][i];
        let get = |k: &str| r[k].as_f64().ok_or_else(|| Error::internal(format!("the reference gave no {k}")));
        rows.push(ImageRow {
            image: path.display().to_string(),
            width,
            height,
            bytes: bytes.len(),
            petal: steps(seconds, &bytes, &engine.decode, &t, 0)?,
            petal_served: steps(seconds, &bytes, &engine.decode, &t, served_min)?,
            reference: Steps {
                decode_ms: get("decode_ms")?,
                resize_crop_ms: get("resize_crop_ms")?,
                normalise_ms: get("normalise_ms")?,
                total_ms: get("total_ms")?,
            },
        });
    }
    let reference_versions = format!(
        "Pillow {}, torchvision {}",
        py["pillow"].as_str().unwrap_or("?"),
        py["torchvision"].as_str().unwrap_or("?")
    );
    Ok(PreprocessReport { rows, reference_versions })
}

impl PreprocessReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "ms per image, one thread; reference: {} (Resize 256, CenterCrop 224, ToTensor, Normalize)\n",
            self.reference_versions
        );
        s += &format!(
            "{:<40} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "image", "stack", "decode", "resize", "norm", "total", "ref/this"
        );
        for r in &self.rows {
            let name = Path::new(&r.image).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let label = format!("{name} {}x{} {} KB", r.width, r.height, r.bytes / 1024);
            let line = |stack: &str, st: &Steps, label: &str| {
                format!(
                    "{label:<40} {stack:>10} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.2}\n",
                    st.decode_ms,
                    st.resize_crop_ms,
                    st.normalise_ms,
                    st.total_ms,
                    r.reference.total_ms / st.total_ms
                )
            };
            s += &line("reference", &r.reference, &label);
            s += &line("petal", &r.petal, "");
            s += &line("served", &r.petal_served, "");
        }
        s += "petal: full-size decode, pixel for pixel the reference's; served: as /classify decodes by default \
              (a large JPEG shrunk while decoded, inference.engine.jpeg_reducing_gap)\n";
        s
    }
}
