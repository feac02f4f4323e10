//! The batch loader: a dataset's samples in a given order, cut into batches that worker threads
//! prepare (decode when kept encoded, augment or eval-transform, normalise) and hand over in
//! order. Each batch draws its augmentation from its own generator, seeded by (run seed, phase,
//! epoch, batch), so a run is repeatable whatever the thread timing.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use rand::SeedableRng;
use tch::{Device, Tensor};

use crate::config::DecodeLimits;
use crate::dataset::Sample;
use crate::error::{Error, Result};
use crate::train::augment;
use crate::train::recipe::Recipe;

/// A seed for (run seed, phase, epoch, batch).
pub(crate) fn mix(seed: u64, phase: u8, epoch: usize, batch: u64) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [u64::from(phase), epoch as u64, batch] {
        h = (h ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

/// `order` cut into batches of `bs`. For training, a trailing single image joins the batch before
/// it: one image would give batch norm a single value per channel where the feature map is 1×1
/// (small inputs), and a NaN running variance (PyTorch refuses such a batch).
pub(crate) fn batch_slices(order: &[usize], bs: usize, training: bool) -> Vec<&[usize]> {
    let mut batches: Vec<&[usize]> = order.chunks(bs).collect();
    if training && batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
        batches.pop();
        let start = (batches.len() - 1) * bs;
        *batches.last_mut().expect("more than one batch") = &order[start..];
    }
    batches
}

/// One batch's pixels (normalised, NCHW) and labels, on the host.
type HostBatch = (Vec<f32>, Vec<i64>);

/// What makes the batches of one pass.
struct Batches<'a> {
    recipe: &'a Recipe,
    samples: &'a [Sample],
    slices: Vec<&'a [usize]>,
    /// (run seed, phase, epoch) when training augmentation applies.
    augment_seeds: Option<(u64, u8, usize)>,
    device: Device,
}

impl Batches<'_> {
    /// Batch `b` on the host.
    fn prepare(&self, b: usize) -> Result<HostBatch> {
        let eval = &self.recipe.eval_transform;
        // Images kept encoded passed the dataset's limits (`jobs.decode`) when it was read;
        // decoding them again checks nothing new.
        let limits = DecodeLimits { max_pixels: u64::MAX, max_side: u32::MAX, max_aspect_ratio: 0 };
        let idx = self.slices[b];
        let per = (3 * eval.crop * eval.crop) as usize;
        let mut x = Vec::with_capacity(per * idx.len());
        let mut y = Vec::with_capacity(idx.len());
        let mut rng =
            self.augment_seeds.map(|(s, p, e)| rand_chacha::ChaCha8Rng::seed_from_u64(mix(s, p, e, b as u64)));
        for &i in idx {
            let s = &self.samples[i];
            let img = s.rgb(eval, &limits)?;
            match rng.as_mut() {
                Some(r) => augment::train_sample(&img, &self.recipe.augment, eval, r, &mut x),
                None => eval.normalize_into(&eval.resize_crop(&img), &mut x),
            }
            y.push(s.label as i64);
        }
        Ok((x, y))
    }

    /// A host batch as tensors on the device.
    fn to_tensors(&self, (x, y): HostBatch) -> (Tensor, Tensor) {
        let n = y.len() as i64;
        let c = i64::from(self.recipe.eval_transform.crop);
        let x = Tensor::from_slice(&x).view([n, 3, c, c]).to_device(self.device);
        (x, Tensor::from_slice(&y).to_device(self.device))
    }
}

/// Prepares batches of `samples` in `order` on worker threads and hands them, in order, to
/// `consume(step, images, labels)`, from batch `first` on (a resumed epoch; earlier batches are
/// not prepared, and later ones are the same as ever). With `augment_seeds`, training
/// augmentation is applied, each batch drawing from its own generator.
pub(crate) fn load_batches(
    recipe: &Recipe,
    samples: &[Sample],
    (order, first): (&[usize], usize),
    augment_seeds: Option<(u64, u8, usize)>,
    device: Device,
    mut consume: impl FnMut(usize, Tensor, Tensor) -> Result<()>,
) -> Result<()> {
    let slices = batch_slices(order, recipe.batch_size, augment_seeds.is_some());
    let threads = match recipe.loader_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(slices.len().saturating_sub(first).max(1));
    let batches = Batches { recipe, samples, slices, augment_seeds, device };
    if threads <= 1 {
        for b in first..batches.slices.len() {
            let (x, y) = batches.to_tensors(batches.prepare(b)?);
            consume(b, x, y)?;
        }
        return Ok(());
    }
    load_threaded(&batches, first, threads, consume)
}

/// `threads` workers take batch numbers in turn; the batches are handed to `consume` in order.
fn load_threaded(
    batches: &Batches,
    first: usize,
    threads: usize,
    mut consume: impl FnMut(usize, Tensor, Tensor) -> Result<()>,
) -> Result<()> {
    let count = batches.slices.len();
    let next = AtomicUsize::new(first);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<HostBatch>)>(threads * 2);
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= count || stop.load(Ordering::Relaxed) {
                    break;
                }
                if tx.send((b, batches.prepare(b))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = first;
        let result = (|| {
            while want < count {
                while let Some(batch) = pending.remove(&want) {
                    let (x, y) = batches.to_tensors(batch?);
                    consume(want, x, y)?;
                    want += 1;
                }
                if want >= count {
                    break;
                }
                let (b, batch) = rx.recv().map_err(|_| Error::internal("a batch loader thread stopped"))?;
                pending.insert(b, batch);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        drop(rx); // unblocks senders
        result
    })
}
