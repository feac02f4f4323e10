//! The inference engine: an ONNX model in an ort session on the CUDA execution provider when it
//! loads (else CPU), fed by a dynamic batcher — requests queue in a bounded channel (full → 429
//! with Retry-After), one thread per model gathers up to `max_batch` images or waits at most
//! `max_delay`, runs them in one call and answers each request with its own logits. The HTTP
//! layer admits a request (`ModelHandle::admit`) before decoding its images, so an overloaded
//! model refuses at once instead of decoding images it has no room for.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::ArrayView4;
use ort::ep::{ExecutionProvider, CPU, CUDA};
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;

use crate::config::{EngineConfig, ProviderMode};
use crate::error::{Error, ErrorCode, Result};
use crate::infer::runtime::OrtRuntime;
use crate::records::model_io::{meta, INPUT_NAME, OUTPUT_NAME};
use crate::telemetry::metrics;
use crate::vision::{decode_reduced, EvalTransform};

/// What a loaded model is.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: u64,
    pub arch: String,
    pub class_names: Vec<String>,
    pub image_size: usize,
    pub transform: EvalTransform,
    /// The execution provider the session really uses.
    pub provider: &'static str,
    /// Images per session call, as resolved for the provider.
    pub max_batch: usize,
}

/// One class of a prediction.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Prediction {
    pub index: usize,
    pub name: String,
    pub probability: f32,
}

struct Job {
    inputs: Vec<f32>,
    images: usize,
    enqueued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>>>,
}

/// A loaded model and its batcher. Cloning shares both; the batcher stops when the last clone
/// is dropped and the queue is drained (requests in flight finish on the model they started on).
#[derive(Clone)]
pub struct ModelHandle {
    pub info: Arc<ModelInfo>,
    queue: SyncSender<Job>,
    config: Arc<EngineConfig>,
    admitted: Arc<Admitted>,
}

/// What a model has admitted: requests and their images; and how fast it answers them.
#[derive(Default)]
struct Admitted {
    requests: AtomicUsize,
    images: AtomicUsize,
    /// Images per second the batcher answers, an exponential moving average over its batches
    /// (f64 bits; 0: not measured yet).
    drain_rate: std::sync::atomic::AtomicU64,
}

impl Admitted {
    fn drain_rate(&self) -> f64 {
        f64::from_bits(self.drain_rate.load(Ordering::Relaxed))
    }

    /// Takes one batch's `images` answered in `seconds`.
    fn drained(&self, images: usize, seconds: f64) {
        let sample = images as f64 / seconds.max(1e-6);
        let old = self.drain_rate();
        let new = if old > 0.0 { 0.8 * old + 0.2 * sample } else { sample };
        self.drain_rate.store(new.to_bits(), Ordering::Relaxed);
    }
}

/// Seconds until a queue holding `backlog` images, answered at `rate` images per second, has room
/// again: at least 1, at most 60 (1 while the rate is not measured yet).
fn retry_after_s(backlog: usize, rate: f64) -> u64 {
    if rate <= 0.0 || !rate.is_finite() {
        return 1;
    }
    ((backlog as f64 / rate).ceil() as u64).clamp(1, 60)
}

/// A request's place among those a model has admitted, and its images; given back when dropped
/// (when the request ends, or its client goes away).
pub struct Admission {
    admitted: Arc<Admitted>,
    images: usize,
    /// `petal_inference_in_flight` of the model.
    in_flight: prometheus::IntGauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.requests.fetch_sub(1, Ordering::AcqRel);
        self.admitted.images.fetch_sub(self.images, Ordering::AcqRel);
        self.in_flight.dec();
    }
}

fn ort_error(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("onnxruntime: {e}"))
}

impl ModelHandle {
    /// Creates the session (provider per `config.provider`), reads petal's metadata from the
    /// model, warms up at batch size 1 and `max_batch`, and starts the batcher.
    pub fn load(
        runtime: &OrtRuntime,
        onnx: &[u8],
        name: &str,
        version: u64,
        config: &EngineConfig,
    ) -> Result<ModelHandle> {
        let (mut session, provider) = open_session(runtime, onnx, config.provider)?;
        let md = session.metadata().map_err(ort_error)?;
        let custom = |k: &str| md.custom(k);
        let class_names: Vec<String> = custom(meta::CLASS_NAMES)
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| Error::new(ErrorCode::ModelInvalid, "the model has no petal.class_names metadata"))?;
        let image_size: usize = custom(meta::IMAGE_SIZE)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorCode::ModelInvalid, "the model has no petal.image_size metadata"))?;
        let transform: EvalTransform =
            custom(meta::TRANSFORM).and_then(|s| serde_json::from_str(&s).ok()).ok_or_else(|| {
                Error::new(ErrorCode::ModelInvalid, "the model has no valid petal.eval_transform metadata")
            })?;
        let arch = custom(meta::ARCH).unwrap_or_default();
        drop(md);
        transform.check().map_err(|m| Error::new(ErrorCode::ModelInvalid, format!("petal.eval_transform: {m}")))?;
        if transform.crop as usize != image_size {
            return Err(Error::new(
                ErrorCode::ModelInvalid,
                "the eval transform's crop differs from the model's input size",
            ));
        }
        let max_batch = match config.max_batch {
            0 if provider == CUDA::NAME => 32,
            0 => 1,
            n => n,
        };
        let info = Arc::new(ModelInfo {
            name: name.into(),
            version,
            arch,
            class_names,
            image_size,
            transform,
            provider,
            max_batch,
        });
        let per_image = 3 * image_size * image_size;
        for batch in [1, max_batch] {
            let zeros = vec![0f32; batch * per_image];
            run(&mut session, &zeros, batch, image_size, info.class_names.len())?;
        }
        let (queue, rx) = mpsc::sync_channel::<Job>(config.queue_capacity.max(1));
        let worker_info = info.clone();
        let delay = Duration::from_millis(config.max_delay_ms);
        let admitted: Arc<Admitted> = Default::default();
        let drain = admitted.clone();
        std::thread::Builder::new()
            .name(format!("batcher-{name}-{version}"))
            .spawn(move || batcher(session, rx, worker_info, (max_batch, delay), &drain))
            .map_err(|e| Error::internal(format!("cannot start the batcher: {e}")))?;
        Ok(ModelHandle { info, queue, config: Arc::new(config.clone()), admitted })
    }

    /// An image's width and height from its header, checked against the decode limits (before
    /// anything is decoded).
    pub fn probe(&self, bytes: &[u8]) -> Result<(u32, u32)> {
        crate::vision::probe(bytes, &self.config.decode)
    }

    /// Decodes and transforms one image for this model (a large JPEG shrunk while it is decoded,
    /// per `jpeg_reducing_gap`).
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let t = &self.info.transform;
        let img = decode_reduced(bytes, &self.config.decode, t.min_decoded_shorter(self.config.jpeg_reducing_gap))?;
        Ok(t.apply(&img))
    }

    /// Admits one request of `images` images, or refuses it with 429 when `queue_capacity`
    /// requests or `max_admitted_images` images are admitted already (a request alone is always
    /// admitted when nothing else is); the place is held until the `Admission` is dropped.
    pub fn admit(&self, images: usize) -> Result<Admission> {
        let capacity = self.config.queue_capacity.max(1);
        let max_images = self.config.max_admitted_images.max(1);
        let a = &self.admitted;
        let before = a.requests.fetch_add(1, Ordering::AcqRel);
        let images_before = a.images.fetch_add(images, Ordering::AcqRel);
        let in_flight = metrics::global().in_flight.with_label_values(&[&self.info.name]);
        in_flight.inc();
        let admission = Admission { admitted: a.clone(), images, in_flight };
        if before >= capacity || (images_before > 0 && images_before + images > max_images) {
            drop(admission);
            return Err(self.queue_full());
        }
        Ok(admission)
    }

    /// 429 with a Retry-After from the measured drain rate: the images admitted now, answered at
    /// the rate the batcher has been answering.
    fn queue_full(&self) -> Error {
        let backlog = self.admitted.images.load(Ordering::Acquire).max(1);
        let retry = retry_after_s(backlog, self.admitted.drain_rate());
        Error::new(
            ErrorCode::QueueFull,
            format!(
                "the inference queue of {} is full (at most {} requests and {} images at once); retry shortly",
                self.info.name, self.config.queue_capacity, self.config.max_admitted_images
            ),
        )
        .with_header("retry-after", retry.to_string())
    }

    fn enqueue(&self, inputs: Vec<f32>, images: usize) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<f32>>>> {
        let per_image = 3 * self.info.image_size * self.info.image_size;
        if images == 0 || inputs.len() != images * per_image {
            return Err(Error::invalid_request("inputs do not match the number of images"));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Counted before it is sent: the batcher may take it (and count it out) at once.
        let depth = metrics::global().depth(&self.info.name);
        depth.inc();
        match self.queue.try_send(Job { inputs, images, enqueued: Instant::now(), reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                depth.dec();
                match e {
                    TrySendError::Full(_) => Err(self.queue_full()),
                    TrySendError::Disconnected(_) => Err(Error::internal("the batcher stopped")),
                }
            }
        }
    }

    fn split(&self, flat: Vec<f32>) -> Vec<Vec<f32>> {
        flat.chunks(self.info.class_names.len()).map(<[f32]>::to_vec).collect()
    }

    /// Logits for `images` preprocessed images (concatenated), one `Vec` per image.
    pub async fn infer(&self, inputs: Vec<f32>, images: usize) -> Result<Vec<Vec<f32>>> {
        let rx = self.enqueue(inputs, images)?;
        let flat = rx.await.map_err(|_| Error::internal("the batcher dropped the request"))??;
        Ok(self.split(flat))
    }

    /// `infer` for callers outside an async runtime.
    pub fn infer_blocking(&self, inputs: Vec<f32>, images: usize) -> Result<Vec<Vec<f32>>> {
        let rx = self.enqueue(inputs, images)?;
        let flat = rx.blocking_recv().map_err(|_| Error::internal("the batcher dropped the request"))??;
        Ok(self.split(flat))
    }

    /// The `k` most probable classes (softmax over the logits).
    pub fn top_k(&self, logits: &[f32], k: usize) -> Vec<Prediction> {
        top_k(logits, &self.info.class_names, k)
    }
}

/// The probabilities of `logits` (softmax).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Softmax, then the `k` largest, most probable first.
pub fn top_k(logits: &[f32], names: &[String], k: usize) -> Vec<Prediction> {
    let p = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction { index: i, name: names.get(i).cloned().unwrap_or_default(), probability: p[i] })
        .collect()
}

fn open_session(runtime: &OrtRuntime, onnx: &[u8], mode: ProviderMode) -> Result<(Session, &'static str)> {
    if mode != ProviderMode::Cpu {
        let attempt = runtime.session_builder().and_then(|b| {
            b.with_execution_providers([CUDA::default().build().error_on_failure()])
                .map_err(|e| ort_error(ort::Error::<()>::from(e)))?
                .commit_from_memory(onnx)
                .map_err(|e| Error::new(ErrorCode::ModelInvalid, format!("the ONNX model does not load: {e}")))
        });
        match attempt {
            Ok(s) => return Ok((s, CUDA::NAME)),
            Err(e) if mode == ProviderMode::Cuda => {
                return Err(Error::new(
                    ErrorCode::ProviderUnavailable,
                    format!("CUDA execution provider: {}", e.message),
                ))
            }
            Err(e) => tracing::warn!(error = %e.message, "CUDA execution provider unavailable; inference runs on CPU"),
        }
    }
    let session = runtime
        .cpu_session(onnx)
        .map_err(|e| Error::new(ErrorCode::ModelInvalid, format!("the ONNX model does not load: {}", e.message)))?;
    Ok((session, CPU::NAME))
}

fn run(session: &mut Session, inputs: &[f32], batch: usize, size: usize, classes: usize) -> Result<Vec<f32>> {
    let view = ArrayView4::from_shape((batch, 3, size, size), inputs).map_err(|e| Error::internal(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![INPUT_NAME => TensorRef::from_array_view(view).map_err(ort_error)?])
        .map_err(ort_error)?;
    let (_, data) = outputs[OUTPUT_NAME].try_extract_tensor::<f32>().map_err(ort_error)?;
    if data.len() != batch * classes {
        return Err(Error::internal(format!("the model returned {} values for {batch}×{classes}", data.len())));
    }
    Ok(data.to_vec())
}

fn batcher(
    mut session: Session,
    rx: Receiver<Job>,
    info: Arc<ModelInfo>,
    (max_batch, delay): (usize, Duration),
    drain: &Admitted,
) {
    let size = info.image_size;
    let classes = info.class_names.len();
    let per_image = 3 * size * size;
    let m = metrics::global();
    let (depth, waited) = (m.depth(&info.name), m.queue_seconds.with_label_values(&[&info.name]));
    let (compute, batch_size) =
        (m.compute_seconds.with_label_values(&[&info.name]), m.batch_size.with_label_values(&[&info.name]));
    // A job leaves the queue: counted out, its wait recorded.
    let taken = |j: Job| {
        depth.dec();
        waited.observe(j.enqueued.elapsed().as_secs_f64());
        j
    };
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => taken(j),
                Err(_) => return, // every handle dropped and the queue drained
            },
        };
        let deadline = first.enqueued + delay;
        let mut images = first.images;
        let mut jobs = vec![first];
        while images < max_batch {
            let now = Instant::now();
            let next = if now >= deadline {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(deadline - now)
            };
            match next.map(&taken) {
                Ok(j) if images + j.images <= max_batch => {
                    images += j.images;
                    jobs.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        // A lone request runs on its own buffer; a batch is gathered into one.
        let gathered: Vec<f32>;
        let inputs: &[f32] = if jobs.len() == 1 {
            &jobs[0].inputs
        } else {
            let mut all = Vec::with_capacity(images * per_image);
            for j in &jobs {
                all.extend_from_slice(&j.inputs);
            }
            gathered = all;
            &gathered
        };
        debug_assert_eq!(inputs.len(), images * per_image);
        let started = Instant::now();
        // A request of more images than `max_batch` runs in calls of at most `max_batch`: what
        // one call allocates (activations grow with the batch) stays bounded by configuration.
        let result = inputs
            .chunks(max_batch.max(1) * per_image)
            .map(|chunk| {
                let t0 = Instant::now();
                let out = run(&mut session, chunk, chunk.len() / per_image, size, classes);
                compute.observe(t0.elapsed().as_secs_f64());
                batch_size.observe((chunk.len() / per_image) as f64);
                out
            })
            .collect::<Result<Vec<Vec<f32>>>>()
            .map(|parts| parts.concat());
        tracing::trace!(images, jobs = jobs.len(), run_ms = started.elapsed().as_secs_f64() * 1000.0, "batch");
        drain.drained(images, started.elapsed().as_secs_f64());
        match result {
            Ok(out) => {
                let mut at = 0;
                for j in jobs {
                    let n = j.images * classes;
                    let _ = j.reply.send(Ok(out[at..at + n].to_vec()));
                    at += n;
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_measured_drain_rate() {
        assert_eq!(retry_after_s(10, 0.0), 1, "not measured yet");
        assert_eq!(retry_after_s(1, 500.0), 1, "at least a second");
        assert_eq!(retry_after_s(10, 2.0), 5);
        assert_eq!(retry_after_s(11, 2.0), 6, "rounded up");
        assert_eq!(retry_after_s(10_000, 1.0), 60, "at most a minute");
        let a = Admitted::default();
        a.drained(10, 1.0);
        assert_eq!(a.drain_rate(), 10.0);
        a.drained(20, 1.0);
        assert!((a.drain_rate() - 12.0).abs() < 1e-9, "a moving average: {}", a.drain_rate());
    }

    #[test]
    fn top_k_is_a_sorted_softmax() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = top_k(&[1.0, 3.0, 2.0], &names, 2);
        assert_eq!(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["b", "c"]);
        let total: f32 = top_k(&[1.0, 3.0, 2.0], &names, 3).iter().map(|p| p.probability).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((p[0].probability - 0.66524).abs() < 1e-4);
    }
}
