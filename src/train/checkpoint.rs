//! Training checkpoints: everything one backbone's run needs to go on where it stopped, so that a
//! job taken over by another worker, or run again after a restart, resumes instead of starting
//! over — and, on the CPU, ends with the same weights and metrics, bit for bit, as a run that was
//! never interrupted.
//!
//! A checkpoint holds the model (every variable, batch-norm statistics included), the optimiser's
//! moments and step counts, the loss scaler, the best model so far (unless it is the model
//! itself), early stopping's state, the epochs measured, and where the run is: the phase, the
//! epoch and the batch next to run, with the sums of the epoch in progress. Random state needs no
//! saving: the trainer reseeds libtorch's generator before every batch, and each batch's
//! augmentation and each epoch's order draw from generators seeded by (seed, phase, epoch,
//! batch) — a position is all it takes to draw the same numbers again.
//!
//! Bytes: `PETALCK1`, the sha256 of the rest (32 bytes), then safetensors whose metadata holds
//! the `State` as JSON. A truncated or altered checkpoint fails the sha256 check and is not used.
//! A run keeps two per backbone (`Slot`): the last one written, and a copy of the one at the best
//! epoch — the fallback when the last is damaged.
use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::{Error, ErrorCode, Result};
use crate::train::arch::Arch;
use crate::train::recipe::EarlyStop;
use crate::train::trainer::{EpochMetrics, PhaseEnd};

const MAGIC: &[u8; 8] = b"PETALCK1";
const STATE_KEY: &str = "petal.training_state";
/// The version of `State` this build writes and reads.
pub const FORMAT: u32 = 1;

/// Which of a backbone's two checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The newest.
    Last,
    /// The one written at the best epoch so far.
    Best,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Last => "last",
            Slot::Best => "best",
        }
    }
}

/// Where a run keeps its checkpoints: the job's area of the registry (`jobs::runner`), a folder
/// (`petal finetune --checkpoints`), memory (tests).
pub trait CheckpointStore {
    /// The bytes of `backbone`'s checkpoint in `slot`, when there is one.
    fn get(&mut self, backbone: Arch, slot: Slot) -> Result<Option<Vec<u8>>>;
    /// Replaces `backbone`'s checkpoint in `slot`, atomically (readers see the old or the new).
    fn put(&mut self, backbone: Arch, slot: Slot, bytes: &[u8]) -> Result<()>;
    /// The largest checkpoint it keeps, in bytes: a backbone whose checkpoints would be larger
    /// trains without (`estimate_bytes`, checked before training).
    fn max_bytes(&self) -> u64;
}

/// Where a run is: the phase, the epoch within it (0-based) and the batch next to run. Phase 3 is
/// the end: the backbone is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    pub phase: u8,
    pub epoch: usize,
    pub step: usize,
}

impl Position {
    pub const DONE: Position = Position { phase: 3, epoch: 0, step: 0 };
}

/// The sums of an epoch in progress (or whose training part is over but not its evaluation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: usize,
    /// Seconds spent on its training batches.
    pub seconds: f64,
}

/// The best epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestSoFar {
    pub val_accuracy: f64,
    /// (phase, epoch, 1-based)
    pub at: (u8, usize),
    /// Its weights are in the checkpoint's `best/` tensors; `false`: they are the model's own.
    pub stored: bool,
}

/// What a checkpoint says besides its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// The run it belongs to (`fingerprint`): a checkpoint of another run is never used.
    pub fingerprint: String,
    pub backbone: Arch,
    /// The next thing to run.
    pub next: Position,
    /// The epoch in progress at `next`, when `next.step > 0`.
    pub partial: Option<EpochSums>,
    pub epochs: Vec<EpochMetrics>,
    pub phases: Vec<PhaseEnd>,
    pub best: Option<BestSoFar>,
    /// Early stopping's state in the phase of `next`.
    pub early_stop: Option<EarlyStop>,
    /// Optimiser steps taken in the phase of `next`.
    pub optimizer_steps: u64,
    /// Images processed so far (training and evaluation), for progress.
    pub images_done: f64,
    /// Seconds the backbone has trained, over every attempt.
    pub seconds: f64,
    pub saved_at: String,
}

/// A checkpoint: its state and its tensors, by prefix: `model/`, `best/`, `optim/`, `scaler/`.
#[derive(Debug)]
pub struct Checkpoint {
    pub state: State,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// The tensors under `prefix/`, without it, sorted by name.
    pub fn group(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let p = format!("{prefix}/");
        let mut v: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&p).map(|k| (k.to_string(), t.shallow_clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The tensors under `prefix/`, by name without it.
    pub fn group_map(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.group(prefix).into_iter().collect()
    }
}

/// The identity of a run: what it trains (backbone, starting weights), on what (the dataset's
/// digest and class names) and how (the whole recipe). Two runs with one fingerprint compute the
/// same thing.
pub fn fingerprint(
    backbone: Arch,
    weights: Option<&[(String, Tensor)]>,
    dataset_digest: &str,
    classes: &[String],
    recipe: &crate::train::recipe::Recipe,
) -> String {
    let mut h = Sha256::new();
    h.update(format!("petal-checkpoint-{FORMAT}\n{}\n{dataset_digest}\n", backbone.name()));
    h.update(serde_json::to_vec(classes).expect("serializes"));
    h.update(serde_json::to_vec(recipe).expect("serializes"));
    match weights {
        None => h.update(b"scratch"),
        Some(w) => {
            for (name, t) in w {
                let t = t.detach().to_device(tch::Device::Cpu).contiguous();
                h.update(format!("{name}{:?}{:?}", t.size(), t.kind()));
                let n = t.numel() * t.kind().elt_size_in_bytes();
                let mut bytes = vec![0u8; n];
                t.copy_data_u8(&mut bytes, t.numel());
                h.update(&bytes);
            }
        }
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A checkpoint's bytes.
pub fn encode(state: &State, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state).expect("serializes"))]);
    let payload = crate::train::finetune::checkpoint_bytes(tensors, meta)?;
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

fn damaged(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::IntegrityError, msg)
}

/// A checkpoint from its bytes, checked: the magic, the sha256 of the rest, the format.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
    if bytes.len() < 40 || &bytes[..8] != MAGIC {
        return Err(damaged(format!("not a petal checkpoint ({} bytes, no PETALCK1 header)", bytes.len())));
    }
    let (want, payload) = (&bytes[8..40], &bytes[40..]);
    if Sha256::digest(payload).as_slice() != want {
        return Err(damaged(format!(
            "sha256 mismatch: {} bytes that are not those written (truncated or altered)",
            bytes.len()
        )));
    }
    let meta = crate::train::finetune::checkpoint_metadata(payload)?;
    let json = meta.get(STATE_KEY).ok_or_else(|| damaged("the checkpoint has no training state"))?;
    let state: State = serde_json::from_str(json).map_err(|e| damaged(format!("training state: {e}")))?;
    if state.format != FORMAT {
        return Err(damaged(format!("checkpoint format {} (this petal reads {FORMAT})", state.format)));
    }
    let tensors = crate::train::weights::read_bytes(payload)?.into_iter().collect();
    Ok(Checkpoint { state, tensors })
}

/// An upper bound of a backbone's checkpoint size: the model, the best model, two optimiser
/// moments (float32 each), and room for the rest.
pub fn estimate_bytes(backbone: Arch, classes: i64) -> u64 {
    let floats: i64 = backbone.network(classes).params().iter().map(|p| p.shape.iter().product::<i64>()).sum();
    4 * 4 * floats as u64 + (1 << 20)
}

/// The checkpoint to resume from, of those `store` has for `backbone`: the newest that is whole
/// and of this run; `discarded` says why the others were not used.
pub struct Found {
    pub checkpoint: Checkpoint,
    pub slot: Slot,
    pub discarded: Vec<String>,
}

/// Reads both slots and picks the newest usable checkpoint; `Ok(None)` with the reasons in
/// `discarded` when none is (the run starts from the beginning).
pub fn find(store: &mut dyn CheckpointStore, backbone: Arch, fingerprint: &str) -> (Option<Found>, Vec<String>) {
    let mut usable = Vec::new();
    let mut discarded = Vec::new();
    for slot in [Slot::Last, Slot::Best] {
        match store.get(backbone, slot) {
            Ok(None) => {}
            Ok(Some(bytes)) => match decode(&bytes) {
                Ok(c) if c.state.fingerprint != fingerprint || c.state.backbone != backbone => discarded
                    .push(format!("{} checkpoint: of another run (different dataset, recipe or weights)", slot.name())),
                Ok(c) => usable.push((slot, c)),
                Err(e) => discarded.push(format!("{} checkpoint: {}", slot.name(), e.message)),
            },
            Err(e) => discarded.push(format!("{} checkpoint: cannot read it: {}", slot.name(), e.message)),
        }
    }
    usable.sort_by_key(|u| std::cmp::Reverse(u.1.state.next));
    let found = usable.into_iter().next().map(|(slot, checkpoint)| Found { checkpoint, slot, discarded: Vec::new() });
    match found {
        Some(mut f) => {
            f.discarded = discarded;
            (Some(f), Vec::new())
        }
        None => (None, discarded),
    }
}

/// Checkpoints in a folder: `{dir}/{backbone}/{slot}.ckpt`, each written to a temporary file and
/// renamed.
pub struct FolderStore {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl FolderStore {
    fn path(&self, backbone: Arch, slot: Slot) -> PathBuf {
        self.dir.join(backbone.name()).join(format!("{}.ckpt", slot.name()))
    }
}

impl CheckpointStore for FolderStore {
    fn get(&mut self, backbone: Arch, slot: Slot) -> Result<Option<Vec<u8>>> {
        let path = self.path(backbone, slot);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    fn put(&mut self, backbone: Arch, slot: Slot, bytes: &[u8]) -> Result<()> {
        let path = self.path(backbone, slot);
        crate::foundation::files::create_dir_all(path.parent().expect("a parent"))?;
        crate::foundation::files::write_atomically(&path, bytes)
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

/// Checkpoints in memory (tests, and runs that only need to survive a stop within the process).
#[derive(Default)]
pub struct MemoryStore {
    pub objects: HashMap<(Arch, Slot), Vec<u8>>,
    pub max_bytes: Option<u64>,
}

impl CheckpointStore for MemoryStore {
    fn get(&mut self, backbone: Arch, slot: Slot) -> Result<Option<Vec<u8>>> {
        Ok(self.objects.get(&(backbone, slot)).cloned())
    }

    fn put(&mut self, backbone: Arch, slot: Slot, bytes: &[u8]) -> Result<()> {
        self.objects.insert((backbone, slot), bytes.to_vec());
        Ok(())
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(next: Position) -> State {
        State {
            format: FORMAT,
            fingerprint: "f".into(),
            backbone: Arch::MobilenetV2,
            next,
            partial: Some(EpochSums { loss_sum: 0.1 + 0.2, correct: 3, seen: 4, seconds: 1.5 }),
            epochs: Vec::new(),
            phases: Vec::new(),
            best: None,
            early_stop: None,
            optimizer_steps: 7,
            images_done: 12.0,
            seconds: 3.0,
            saved_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let t = Tensor::from_slice(&[1.0f32, 2.5, -3.0]);
        let steps = Tensor::from_slice(&[5i64]);
        let bytes = encode(
            &state(Position { phase: 2, epoch: 1, step: 3 }),
            &[("model/a".into(), t.shallow_clone()), ("optim/head/step".into(), steps.shallow_clone())],
        )
        .unwrap();
        let c = decode(&bytes).unwrap();
        assert_eq!(c.state.next, Position { phase: 2, epoch: 1, step: 3 });
        assert_eq!(c.state.partial.unwrap().loss_sum, 0.1 + 0.2, "f64 survives exactly");
        assert!(c.group("model")[0].1.equal(&t));
        assert!(c.group_map("optim")["head/step"].equal(&steps));
        // Truncated, altered, foreign.
        assert!(decode(&bytes[..bytes.len() - 1]).unwrap_err().message.contains("sha256"));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(decode(&flipped).unwrap_err().message.contains("sha256"));
        assert!(decode(b"short").is_err());
        assert_eq!(decode(&bytes[40..]).unwrap_err().code, ErrorCode::IntegrityError);
    }

    #[test]
    fn the_newest_whole_checkpoint_of_this_run_wins() {
        let enc = |next, fp: &str| {
            let mut s = state(next);
            s.fingerprint = fp.into();
            encode(&s, &[("model/a".into(), Tensor::from_slice(&[1.0f32]))]).unwrap()
        };
        let older = Position { phase: 1, epoch: 2, step: 0 };
        let newer = Position { phase: 2, epoch: 0, step: 4 };
        let mut store = MemoryStore::default();
        let b = Arch::MobilenetV2;
        assert!(find(&mut store, b, "f").0.is_none());
        store.put(b, Slot::Best, &enc(older, "f")).unwrap();
        store.put(b, Slot::Last, &enc(newer, "f")).unwrap();
        let (found, _) = find(&mut store, b, "f");
        let found = found.unwrap();
        assert_eq!((found.slot, found.checkpoint.state.next), (Slot::Last, newer));
        // The last one damaged: the best one, and why.
        let mut bad = enc(newer, "f");
        bad.truncate(bad.len() / 2);
        store.put(b, Slot::Last, &bad).unwrap();
        let found = find(&mut store, b, "f").0.unwrap();
        assert_eq!((found.slot, found.checkpoint.state.next), (Slot::Best, older));
        assert!(found.discarded[0].starts_with("last checkpoint: sha256 mismatch"), "{:?}", found.discarded);
        // Another run's: not used.
        let (none, why) = find(&mut store, b, "g");
        assert!(none.is_none() && why.len() == 2, "{why:?}");
    }
}
