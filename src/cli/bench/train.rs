//! `petal bench train`: the reference training stack (PIL + torchvision transforms + DataLoader,
//! torchvision model, `torch.optim.Adam`, from the venv) and petal on the same images in the same
//! run: the input pipeline alone (images/s on one core, and with every worker), the bare training
//! step on synthetic tensors, and end-to-end full fine-tuning — with the ratios.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use crate::cli::bench::python_reference;
use crate::config::DecodeLimits;
use crate::dataset::{self, IngestOptions};
use crate::error::Result;
use crate::foundation::files;
use crate::train::arch::Arch;
use crate::train::augment;
use crate::train::precision::Precision;
use crate::train::recipe::Recipe;
use crate::train::tensor_cache;
use crate::train::trainer::{self, Context};

const PY_BENCH: &str = include_str!("../../../scripts/bench_train.py");

pub struct TrainBench {
    pub data: PathBuf,
    pub arch: Arch,
    pub batch: usize,
    /// Training images used end to end (the first ones of the train split).
    pub images: usize,
    /// Images for the pipeline-alone measurements.
    pub pipeline_images: usize,
    pub python: PathBuf,
    pub device: tch::Device,
    /// DataLoader workers of the reference, and petal's loader threads (0 = all cores).
    pub workers: usize,
    pub steps: usize,
    pub warmup: usize,
    /// petal's number format, and the reference's.
    pub precision: Precision,
    pub reference_precision: Precision,
    pub channels_last: bool,
    /// Whole measurements (reference and petal each time), for the spread.
    pub runs: usize,
}

/// Every run's report.
#[derive(Debug, Serialize)]
pub struct TrainRuns {
    pub runs: Vec<TrainReport>,
}

#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub arch: Arch,
    pub device: String,
    pub batch: usize,
    pub precision: Precision,
    pub reference_precision: Precision,
    pub channels_last: bool,
    pub workers: usize,
    /// The reference's numbers (images/s), as its script printed them.
    pub reference: serde_json::Value,
    /// Decode + augment + normalise, one thread, from the encoded files.
    pub petal_pipeline_one_core: f64,
    /// Augment + normalise from the decoded images kept in memory (petal's steady state), one thread.
    pub petal_pipeline_one_core_cached: f64,
    /// Petal's loader with all its threads, decoded images in memory.
    pub petal_pipeline_all_threads: f64,
    pub petal_bare_step: f64,
    /// Seconds per bare step in forward (with the loss), backward and the optimiser.
    pub petal_step_parts: [f64; 3],
    /// The tensor cache over the bare steps: hits, misses, evictions, most bytes in use at once.
    pub petal_tensor_cache: [u64; 4],
    /// A steady epoch (the second) of phase 2 through petal's trainer.
    pub petal_end_to_end: f64,
}

pub fn train(b: &TrainBench) -> Result<TrainRuns> {
    let runs = (0..b.runs.max(1)).map(|_| train_once(b)).collect::<Result<_>>()?;
    Ok(TrainRuns { runs })
}

fn train_once(b: &TrainBench) -> Result<TrainReport> {
    let mut recipe = Recipe { batch_size: b.batch, loader_threads: b.workers, ..Default::default() };
    recipe.phase1.epochs = 0;
    recipe.phase2.epochs = 2;
    recipe.mixed_precision = Some(b.precision.is_mixed());
    recipe.channels_last = Some(b.channels_last);
    let mut data = dataset::load(&b.data, &IngestOptions::default(), &recipe.eval_transform)?;
    data.train.truncate(b.images.max(b.batch));
    data.val.truncate(b.batch);
    let root = b.data.join(&data.prefix);
    let classes = data.classes.len();

    // The reference, on the same files.
    let dir = files::temp_dir()?;
    let list: String = data.train.iter().map(|s| format!("{}\t{}\n", root.join(&s.path).display(), s.label)).collect();
    files::write(&dir.path().join("list.tsv"), list.as_bytes())?;
    let workers = if b.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { b.workers };
    let args = serde_json::json!({
        "list": dir.path().join("list.tsv"), "arch": b.arch.name(), "batch": b.batch, "workers": workers,
        "device": if b.device.is_cuda() { "cuda" } else { "cpu" }, "amp": b.reference_precision.is_mixed(), "channels_last": b.channels_last,
        "pipeline_images": b.pipeline_images, "steps": b.steps, "warmup_steps": b.warmup, "classes": classes,
        "threads": tch::get_num_threads(), "resize": recipe.eval_transform.resize, "crop": recipe.eval_transform.crop,
    });
    let reference = python_reference(&b.python, dir.path(), "bench_train.py", PY_BENCH, [args.to_string()])?;

    // Petal's input pipeline, one thread: from the encoded files, then from memory.
    let eval = &recipe.eval_transform;
    let n = b.pipeline_images.min(data.train.len());
    let files: Vec<Vec<u8>> =
        data.train[..n].iter().map(|s| files::read(&root.join(&s.path))).collect::<Result<_>>()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut buf = Vec::new();
    let t0 = Instant::now();
    for bytes in &files {
        let img = dataset::decode_image(bytes, &DecodeLimits::default(), eval)?;
        buf.clear();
        augment::train_sample(&img, &recipe.augment, eval, &mut rng, &mut buf);
    }
    let petal_pipeline_one_core = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for s in &data.train[..n] {
        let img = s.rgb(eval, &DecodeLimits::default())?;
        buf.clear();
        augment::train_sample(&img, &recipe.augment, eval, &mut rng, &mut buf);
    }
    let petal_pipeline_one_core_cached = n as f64 / t0.elapsed().as_secs_f64();
    let petal_pipeline_all_threads = trainer::pipeline_rate(&recipe, &data.train[..n])?;

    let size = i64::from(eval.crop);
    let cache_before = tensor_cache::stats();
    let step = trainer::bare_step_rate(
        b.arch,
        classes as i64,
        b.batch as i64,
        size,
        (b.warmup, b.steps),
        b.device,
        b.precision,
        b.channels_last,
    )?;
    let cache_after = tensor_cache::stats();
    let cancel = AtomicBool::new(false);
    let mut quiet = |_: &trainer::Event| {};
    let mut ctx = Context::new(b.device, &cancel, &mut quiet);
    let trained = trainer::train(b.arch, None, &data, &recipe, &mut ctx)?;
    let petal_end_to_end = trained.epochs.last().map_or(f64::NAN, |e| e.images_per_s);
    Ok(TrainReport {
        arch: b.arch,
        device: format!("{:?}", b.device),
        batch: b.batch,
        precision: b.precision,
        reference_precision: b.reference_precision,
        channels_last: b.channels_last,
        workers,
        reference,
        petal_pipeline_one_core,
        petal_pipeline_one_core_cached,
        petal_pipeline_all_threads,
        petal_bare_step: step.images_per_s,
        petal_step_parts: [step.forward_s, step.backward_s, step.optimizer_s],
        petal_tensor_cache: [
            cache_after.hits - cache_before.hits,
            cache_after.misses - cache_before.misses,
            cache_after.evictions - cache_before.evictions,
            cache_after.high_water_bytes,
        ],
        petal_end_to_end,
    })
}

impl TrainRuns {
    /// A row per measurement: the medians over the runs and, with several runs, the ratio's
    /// smallest and largest; then where a bare step's time goes on each side.
    pub fn to_text(&self) -> String {
        let first = &self.runs[0];
        let mut s = format!(
            "{} on {:?}, batch {}, {}, channels_last {}, {} workers, {} run(s)\n",
            first.arch,
            first.device,
            first.batch,
            if first.precision == first.reference_precision {
                format!("{:?}", first.precision).to_lowercase()
            } else {
                format!("{:?} / {:?} (reference / petal)", first.reference_precision, first.precision).to_lowercase()
            },
            first.channels_last,
            first.workers,
            self.runs.len()
        );
        s += &format!(
            "{:<44} {:>12} {:>12} {:>9} {:>15}\n",
            "images/s (median)", "reference", "petal", "ratio", "ratio min–max"
        );
        type Pick = fn(&TrainReport) -> (f64, f64);
        let rows: [(&str, Pick); 5] = [
            ("input pipeline, one core (decode + augment)", |r| {
                (r.reference_of("pipeline_one_core"), r.petal_pipeline_one_core)
            }),
            ("input pipeline, one core (petal: decoded once)", |r| {
                (r.reference_of("pipeline_one_core"), r.petal_pipeline_one_core_cached)
            }),
            ("input pipeline, all workers", |r| (r.reference_of("pipeline_loader"), r.petal_pipeline_all_threads)),
            ("bare training step (synthetic tensors)", |r| (r.reference_of("bare_step"), r.petal_bare_step)),
            ("end-to-end full fine-tuning", |r| (r.reference_of("end_to_end"), r.petal_end_to_end)),
        ];
        for (name, pick) in rows {
            let pairs: Vec<(f64, f64)> = self.runs.iter().map(pick).collect();
            let ratios: Vec<f64> = pairs.iter().map(|(a, b)| b / a).collect();
            let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| (l.min(r), h.max(r)));
            s += &format!(
                "{name:<44} {:>12.1} {:>12.1} {:>8.2}× {:>15}\n",
                median(pairs.iter().map(|p| p.0)),
                median(pairs.iter().map(|p| p.1)),
                median(ratios.iter().copied()),
                format!("{lo:.2}–{hi:.2}")
            );
        }
        let parts = |f: fn(&TrainReport) -> [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|i| median(self.runs.iter().map(|r| f(r)[i])) * 1e3)
        };
        let petal = parts(|r| r.petal_step_parts);
        let reference = parts(|r| {
            let p = &r.reference["step_parts"];
            std::array::from_fn(|i| p[i].as_f64().unwrap_or(f64::NAN))
        });
        s += &format!(
            "bare step, ms (median): forward {:.1} / {:.1}, backward {:.1} / {:.1}, optimizer {:.1} / {:.1} (reference / petal)\n",
            reference[0], petal[0], reference[1], petal[1], reference[2], petal[2]
        );
        let cache = |i: usize| median(self.runs.iter().map(|r| r.petal_tensor_cache[i] as f64));
        s += &format!(
            "petal's tensor cache over the bare steps (median): {:.0} hits, {:.0} misses, {:.0} evictions, {:.0} MiB in use at most\n",
            cache(0),
            cache(1),
            cache(2),
            cache(3) / (1 << 20) as f64
        );
        s += &format!(
            "petal end-to-end / petal bare step: {:.2}×; reference end-to-end / its bare step: {:.2}×\n",
            median(self.runs.iter().map(|r| r.petal_end_to_end / r.petal_bare_step)),
            median(self.runs.iter().map(|r| r.reference_of("end_to_end") / r.reference_of("bare_step")))
        );
        s
    }
}

impl TrainReport {
    fn reference_of(&self, key: &str) -> f64 {
        self.reference[key].as_f64().unwrap_or(f64::NAN)
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
