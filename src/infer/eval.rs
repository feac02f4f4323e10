//! `petal eval`: a model's accuracy measured through the serving path — each image's original
//! bytes decoded and transformed by the serving code, run by the model's ort session — with
//! top-1, top-5, per-class accuracy and the most frequent confusions.
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::dataset::EvalSet;
use crate::error::{Error, ErrorCode, Result};
use crate::infer::engine::ModelHandle;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "flowers102", "version": 1, "provider": "CPUExecutionProvider",
    "split": "validation (trnid + valid)", "dataset_digest": "e878…", "images": 2040, "top1_correct": 1947,
    "top5_correct": 2021, "top1": 0.9544, "top5": 0.9907, "seconds": 61.2, "images_per_s": 33.3,
    "macro_f1": 0.951, "ece": 0.021,
    "per_class": [{"class": "sweet pea", "images": 10, "top1": 0.6, "precision": 0.75, "recall": 0.6, "f1": 0.667}],
    "confusions": [{"actual": "sweet pea", "predicted": "wallflower", "count": 2, "examples": ["jpg/image_07523.jpg"]}],
    "confidently_wrong": [{"image": "jpg/image_07523.jpg", "actual": "sweet pea", "predicted": "wallflower", "confidence": 0.93}],
    "predictions": [{"image": "jpg/image_06734.jpg", "actual": "pink primrose", "predicted": "pink primrose", "confidence": 0.99}],
    "confusion_matrix": [[10, 0], [0, 10]], "class_names": ["pink primrose", "hard-leaved pocket orchid"]}))]
pub struct EvalReport {
    pub model: String,
    pub version: u64,
    pub provider: String,
    /// Which images were measured.
    pub split: String,
    pub dataset_digest: String,
    pub images: usize,
    pub top1_correct: usize,
    pub top5_correct: usize,
    pub top1: f64,
    pub top5: f64,
    /// Wall time of decoding, transforming and running every image.
    pub seconds: f64,
    pub images_per_s: f64,
    /// Mean of the per-class F1 scores (classes with images).
    pub macro_f1: f64,
    /// Expected calibration error over 15 equal-width confidence bins: Σ |accuracy − confidence| ×
    /// share of images, per bin.
    pub ece: f64,
    /// Every class of the dataset, worst top-1 first.
    pub per_class: Vec<ClassAccuracy>,
    /// Off-diagonal cells of the confusion matrix, most frequent first, with example images.
    pub confusions: Vec<Confusion>,
    /// The wrong answers given with the most confidence, most confident first (at most 20).
    pub confidently_wrong: Vec<ImagePrediction>,
    /// Every image's answer, in the dataset's order.
    pub predictions: Vec<ImagePrediction>,
    /// Rows: the true class, columns: the predicted class, both in the model's class order.
    pub confusion_matrix: Vec<Vec<u32>>,
    pub class_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassAccuracy {
    pub class: String,
    /// Images of the class (support).
    pub images: usize,
    /// Top-1 accuracy on its images (= recall).
    pub top1: f64,
    /// Of the images predicted as the class, the share that are (0 when none is).
    pub precision: f64,
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are).
    pub f1: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Confusion {
    pub actual: String,
    pub predicted: String,
    pub count: u32,
    /// Up to three of the images (their paths in the dataset).
    pub examples: Vec<String>,
}

/// One image's answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagePrediction {
    pub image: String,
    pub actual: String,
    pub predicted: String,
    /// The predicted class's probability.
    pub confidence: f64,
}

/// Runs every image of `set` through `handle`, `batch` images per call, decoding on `threads`
/// threads. The dataset's classes are matched to the model's by name.
pub fn evaluate(handle: &ModelHandle, set: &EvalSet, batch: usize, threads: usize) -> Result<EvalReport> {
    let names = &handle.info.class_names;
    let to_model = class_mapping(handle, &set.class_names)?;
    let k = names.len();
    let mut matrix = vec![vec![0u32; k]; k];
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut predictions = Vec::with_capacity(set.samples.len());
    let started = Instant::now();
    let batch = batch.max(1);
    let threads = threads.max(1);
    for chunk in set.samples.chunks(batch) {
        let flat = preprocess_chunk(handle, chunk, threads)?;
        let logits = handle.infer_blocking(flat, chunk.len())?;
        for (s, l) in chunk.iter().zip(logits) {
            let truth = to_model[s.label];
            let ranked = handle.top_k(&l, 5.min(k));
            let predicted = ranked[0].index;
            matrix[truth][predicted] += 1;
            top1 += usize::from(predicted == truth);
            top5 += usize::from(ranked.iter().any(|p| p.index == truth));
            predictions.push(ImagePrediction {
                image: s.path.clone(),
                actual: names[truth].clone(),
                predicted: names[predicted].clone(),
                confidence: f64::from(ranked[0].probability),
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let images = set.samples.len();
    let (per_class, mut confusions) = breakdown(&matrix, &set.class_names, &to_model, names);
    // Up to three example images per confusion, in one pass over the answers.
    let mut examples: std::collections::HashMap<(&str, &str), Vec<String>> = std::collections::HashMap::new();
    for p in predictions.iter().filter(|p| p.actual != p.predicted) {
        let found = examples.entry((p.actual.as_str(), p.predicted.as_str())).or_default();
        if found.len() < 3 {
            found.push(p.image.clone());
        }
    }
    for c in &mut confusions {
        c.examples = examples.remove(&(c.actual.as_str(), c.predicted.as_str())).unwrap_or_default();
    }
    let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / per_class.len().max(1) as f64;
    let mut confidently_wrong: Vec<ImagePrediction> =
        predictions.iter().filter(|p| p.actual != p.predicted).cloned().collect();
    confidently_wrong.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then_with(|| a.image.cmp(&b.image)));
    confidently_wrong.truncate(20);
    Ok(EvalReport {
        model: handle.info.name.clone(),
        version: handle.info.version,
        provider: handle.info.provider.to_string(),
        split: set.split.clone(),
        dataset_digest: set.digest.clone(),
        images,
        top1_correct: top1,
        top5_correct: top5,
        top1: top1 as f64 / images as f64,
        top5: top5 as f64 / images as f64,
        seconds,
        images_per_s: images as f64 / seconds,
        macro_f1,
        ece: expected_calibration_error(&predictions, 15),
        per_class,
        confusions,
        confidently_wrong,
        predictions,
        confusion_matrix: matrix,
        class_names: names.clone(),
    })
}

/// For each class of the dataset, the model's class of the same name; a dataset class the model
/// does not have is an error naming (up to ten of) them.
fn class_mapping(handle: &ModelHandle, classes: &[String]) -> Result<Vec<usize>> {
    let names = &handle.info.class_names;
    let mut to_model = Vec::with_capacity(classes.len());
    let mut unknown = Vec::new();
    for c in classes {
        match names.iter().position(|n| n == c) {
            Some(i) => to_model.push(i),
            None => {
                unknown.push(c.clone());
                to_model.push(usize::MAX)
            }
        }
    }
    if !unknown.is_empty() {
        return Err(Error::new(
            ErrorCode::DatasetInvalid,
            format!(
                "{} class(es) of the dataset are not classes of {}: {}",
                unknown.len(),
                handle.info.name,
                unknown.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(to_model)
}

/// The model's input for `chunk`, each image decoded through the serving path, on `threads`
/// threads.
fn preprocess_chunk(handle: &ModelHandle, chunk: &[crate::dataset::Sample], threads: usize) -> Result<Vec<f32>> {
    let per_thread = chunk.len().div_ceil(threads);
    let inputs: Vec<Result<Vec<f32>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = chunk
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for s in part {
                        let bytes = match &s.pixels {
                            crate::dataset::Pixels::Encoded(b) => b,
                            crate::dataset::Pixels::Decoded(_) => {
                                return Err(Error::internal("evaluation needs the images' original bytes"))
                            }
                        };
                        out.extend(
                            handle
                                .preprocess(bytes)
                                .map_err(|e| Error::new(e.code, format!("{}: {}", s.path, e.message)))?,
                        );
                    }
                    Ok(out)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("decoder thread panicked")).collect()
    });
    let mut flat = Vec::new();
    for part in inputs {
        flat.extend(part?);
    }
    Ok(flat)
}

/// Per-class top-1 (worst first) and every confusion (most frequent first) of `matrix`
/// (dataset class by model class).
fn breakdown(
    matrix: &[Vec<u32>],
    classes: &[String],
    to_model: &[usize],
    names: &[String],
) -> (Vec<ClassAccuracy>, Vec<Confusion>) {
    let mut per_class: Vec<ClassAccuracy> = classes
        .iter()
        .zip(to_model)
        .map(|(c, &i)| {
            let n: u32 = matrix[i].iter().sum();
            let predicted: u32 = matrix.iter().map(|row| row[i]).sum();
            let hits = f64::from(matrix[i][i]);
            let recall = hits / f64::from(n.max(1));
            let precision = if predicted == 0 { 0.0 } else { hits / f64::from(predicted) };
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassAccuracy { class: c.clone(), images: n as usize, top1: recall, precision, recall, f1 }
        })
        .filter(|c| c.images > 0)
        .collect();
    per_class.sort_by(|a, b| a.top1.total_cmp(&b.top1).then_with(|| a.class.cmp(&b.class)));
    let mut confusions = Vec::new();
    for (a, row) in matrix.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            if a != p && count > 0 {
                let (actual, predicted) = (names[a].clone(), names[p].clone());
                confusions.push(Confusion { actual, predicted, count, examples: Vec::new() });
            }
        }
    }
    confusions.sort_by(|x, y| y.count.cmp(&x.count).then_with(|| x.actual.cmp(&y.actual)));
    (per_class, confusions)
}

/// Expected calibration error: images binned by confidence into `bins` equal-width bins of
/// (0, 1]; Σ over bins of |accuracy − mean confidence| × the bin's share of the images.
fn expected_calibration_error(predictions: &[ImagePrediction], bins: usize) -> f64 {
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for p in predictions {
        let b = ((p.confidence * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        sums[b].0 += 1;
        sums[b].1 += p.confidence;
        sums[b].2 += usize::from(p.actual == p.predicted);
    }
    let n = predictions.len().max(1) as f64;
    sums.iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|&(count, conf, right)| {
            let c = count as f64;
            (right as f64 / c - conf / c).abs() * c / n
        })
        .sum()
}

impl EvalReport {
    /// The report for people: accuracy, the worst classes and the most frequent confusions.
    pub fn to_text(&self, shown: usize) -> String {
        let mut s = format!(
            "{} version {} on {}: {} images ({})\n",
            self.model, self.version, self.provider, self.images, self.split
        );
        s += &format!(
            "top-1 {:.2} % ({} of {}), top-5 {:.2} % ({} of {})\n",
            self.top1 * 100.0,
            self.top1_correct,
            self.images,
            self.top5 * 100.0,
            self.top5_correct,
            self.images
        );
        s += &format!("macro F1 {:.4}, expected calibration error {:.4}\n", self.macro_f1, self.ece);
        s += &format!("{:.1} s, {:.1} images/s (decode, transform and inference)\n", self.seconds, self.images_per_s);
        let worst: Vec<&ClassAccuracy> = self.per_class.iter().filter(|c| c.top1 < 1.0).take(shown).collect();
        if !worst.is_empty() {
            s += "\nworst classes (top-1, images):\n";
            for c in worst {
                s += &format!("  {:>6.2} %  {:>4}  {}\n", c.top1 * 100.0, c.images, c.class);
            }
        }
        if !self.confusions.is_empty() {
            s += "\nmost frequent confusions (true -> predicted):\n";
            for c in self.confusions.iter().take(shown) {
                s += &format!("  {:>4} x  {} -> {}\n", c.count, c.actual, c.predicted);
            }
        }
        s
    }
}
