//! Datasets: a folder, `.zip` or `.tar(.gz)` turned into labelled, decoded, split images — or a
//! list of every problem found.
//!
//! Layouts, recognised in this order (below one optional common top-level folder):
//! 1. Oxford Flowers 102: `imagelabels.mat` + `jpg/image_NNNNN.jpg` (+ `setid.mat`). Classes `1`…`K`,
//!    named from `class_names.txt` (line k) or `cat_to_name.json`. Split: the reference's
//!    (train `tstid`, validate `trnid`+`valid`) or the papers' (train `trnid`+`valid`, validate
//!    `tstid`); without `setid.mat`, a seeded stratified split.
//! 2. ImageFolder with `train/` and `val/` (or `valid/`, `validation/`): `train/<class>/…`.
//! 3. ImageFolder: `<class>/…` (files in nested folders belong to the top one, as in torchvision),
//!    split by a seeded stratified split.
//!
//! Classes are sorted by folder name (torchvision's order); `cat_to_name.json` at the top maps
//! folder names to display names. Images are decoded once, at ingest, and kept in memory with the
//! shorter side reduced to the eval transform's resize (so evaluation sees exactly the pixels it
//! would from the original), or kept encoded beyond the memory budget.
//!
//! The digest — sha256 over the sorted `path \t class \t sha256(bytes)` lines of the images used —
//! and the class list identify the dataset.
pub mod archive;
pub mod mat;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::DecodeLimits;
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::hash::sha256_hex;
use crate::records::dataset::{DatasetSummary, Layout};
use crate::vision::{self, EvalTransform};
pub use archive::{ArchiveLimits, Files};

/// What to do with files that are not decodable images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBadImage {
    /// Refuse the dataset, listing every bad file.
    #[default]
    Fail,
    /// Leave them out, with a warning each.
    Skip,
}

/// Which official split of Oxford Flowers 102 to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OxfordSplit {
    /// The reference experiment's: train on `tstid` (6,149), validate on `trnid` + `valid` (2,040).
    #[default]
    Reference,
    /// The papers': train on `trnid` + `valid`, validate on `tstid`.
    Papers,
}

impl std::str::FromStr for OxfordSplit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reference" => Ok(OxfordSplit::Reference),
            "papers" => Ok(OxfordSplit::Papers),
            other => Err(Error::invalid_request(format!("oxford split: reference or papers, not {other:?}"))),
        }
    }
}

/// How a dataset is read and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestOptions {
    pub limits: ArchiveLimits,
    #[schema(value_type = Object)]
    pub decode: DecodeLimits,
    pub on_bad_image: OnBadImage,
    /// Share of each class held out for validation when the dataset brings no split.
    pub val_fraction: f64,
    /// Seed of the stratified split.
    pub seed: u64,
    pub oxford_split: OxfordSplit,
    /// Decoded images are kept in memory up to this many bytes; the rest stay encoded and are
    /// decoded at each use.
    pub memory_budget_bytes: u64,
    /// Most classes a dataset may have (checked before anything is allocated for them: a label
    /// value in `imagelabels.mat` is a class count).
    pub max_classes: usize,
    /// Check and count the images without keeping them (an upload's check, a dry run): each is
    /// decoded and dropped, so memory holds one decoded image per thread.
    pub check_only: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            limits: ArchiveLimits::default(),
            decode: DecodeLimits::default(),
            on_bad_image: OnBadImage::Fail,
            val_fraction: 0.2,
            seed: 0,
            oxford_split: OxfordSplit::Reference,
            memory_budget_bytes: 8 << 30,
            max_classes: DEFAULT_MAX_CLASSES,
            check_only: false,
        }
    }
}

pub use crate::config::DEFAULT_MAX_CLASSES;

fn too_many_classes(n: usize, max: usize) -> Error {
    Error::new(
        ErrorCode::DatasetTooLarge,
        format!("the dataset has {n} classes; the limit is {max} (jobs.max_classes)"),
    )
}

/// An image's pixels: decoded (shorter side at most the eval resize) or still encoded.
pub enum Pixels {
    Decoded(RgbImage),
    Encoded(Vec<u8>),
}

/// One labelled image.
pub struct Sample {
    pub path: String,
    pub label: usize,
    pub pixels: Pixels,
}

impl Sample {
    /// The image, ready for the eval transform or augmentation (shorter side ≤ its resize).
    pub fn rgb(&self, eval: &EvalTransform, limits: &DecodeLimits) -> Result<Cow<'_, RgbImage>> {
        match &self.pixels {
            Pixels::Decoded(img) => Ok(Cow::Borrowed(img)),
            Pixels::Encoded(bytes) => Ok(Cow::Owned(decode_image(bytes, limits, eval)?)),
        }
    }
}

/// A checked dataset.
pub struct Dataset {
    /// Class ids (folder names, or `1`…`K`), in label order.
    pub classes: Vec<String>,
    /// Display names, in label order.
    pub class_names: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Images of a `test/` folder, held out: counted, never trained or validated on (a published
    /// version is evaluated on them).
    pub test_images: usize,
    pub layout: Layout,
    /// How the split was made, in words.
    pub split: String,
    pub digest: String,
    /// Files left out, with the reason (bad images under `skip`, files outside the layout).
    pub warnings: Vec<String>,
    /// The common top-level folder(s) removed from every path (`flowers/`), or empty.
    pub prefix: String,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.summary().fmt(f)
    }
}

impl Dataset {
    pub fn summary(&self) -> DatasetSummary {
        let class_counts = self.class_counts();
        let (smallest, largest) = (class_counts.iter().min().copied(), class_counts.iter().max().copied());
        let imbalance = match (smallest, largest) {
            (Some(lo), Some(hi)) if lo > 0 => hi as f64 / lo as f64,
            _ => 0.0,
        };
        DatasetSummary {
            digest: self.digest.clone(),
            layout: self.layout,
            split: self.split.clone(),
            classes: self.classes.clone(),
            class_names: self.class_names.clone(),
            train_images: self.train.len(),
            val_images: self.val.len(),
            test_images: self.test_images,
            warnings: self.warnings.len(),
            class_counts,
            imbalance,
        }
    }

    /// Training images per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.train {
            counts[s.label] += 1;
        }
        counts
    }
}

/// Reads, decodes and checks a dataset at `path` (folder, zip, tar or tar.gz), streaming it:
/// each image is decoded as it is read, and only what the dataset keeps is held (see `Read`).
pub fn load(path: &Path, opts: &IngestOptions, eval: &EvalTransform) -> Result<Dataset> {
    labelled_into_dataset(
        read_labelled(read(|sink| archive::visit_path(path, &opts.limits, sink), opts, eval)?, opts)?,
        opts,
    )
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn is_image_name(path: &str) -> bool {
    path.rsplit_once('.').is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Where an image goes before the split is decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Train,
    Val,
    /// Held out for a final evaluation (a `test/` folder): never trained or validated on.
    Test,
    Unsplit,
}

struct Plan {
    layout: Layout,
    classes: Vec<String>,
    class_names: Vec<String>,
    /// (path, label, part)
    items: Vec<(String, usize, Part)>,
    split: Option<String>,
    warnings: Vec<String>,
    problems: Vec<String>,
}

fn invalid(problems: &[String]) -> Error {
    const SHOWN: usize = 25;
    let mut msg = format!("the dataset has {} problem(s): ", problems.len());
    msg.push_str(&problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; "));
    if problems.len() > SHOWN {
        msg.push_str(&format!("; … and {} more", problems.len() - SHOWN));
    }
    Error::new(ErrorCode::DatasetInvalid, msg)
}

/// Checks, decodes and splits files already read.
pub fn from_files(files: Files, opts: &IngestOptions, eval: &EvalTransform) -> Result<Dataset> {
    let read = read(|sink| files.into_iter().try_for_each(|(path, bytes)| sink(path, bytes)), opts, eval)?;
    labelled_into_dataset(read_labelled(read, opts)?, opts)
}

/// Splits (when the dataset brings no split) and checks labelled images.
fn labelled_into_dataset(labelled: Labelled, opts: &IngestOptions) -> Result<Dataset> {
    let Labelled { mut plan, mut kept, digest, prefix } = labelled;
    let split_desc = match plan.split.take() {
        Some(s) => s,
        None => {
            stratify(&mut kept, plan.classes.len(), opts)?;
            format!("stratified, {:.0} % of each class for validation, seed {}", opts.val_fraction * 100.0, opts.seed)
        }
    };
    let (mut train, mut val, mut test_images) = (Vec::new(), Vec::new(), 0);
    for (s, part) in kept {
        match part {
            Part::Train => train.push(s),
            Part::Val => val.push(s),
            Part::Test => test_images += 1,
            Part::Unsplit => unreachable!("stratify assigns every sample"),
        }
    }
    check_classes(&plan.classes, &train, &val)?;
    Ok(Dataset {
        classes: plan.classes,
        class_names: plan.class_names,
        train,
        val,
        test_images,
        layout: plan.layout,
        split: split_desc,
        digest,
        warnings: plan.warnings,
        prefix,
    })
}

/// A dataset's images, labelled and decoded (checked), before any split or class check.
struct Labelled {
    plan: Plan,
    kept: Vec<(Sample, Part)>,
    digest: String,
    prefix: String,
}

/// Label and name files read at the top of a dataset; only these non-image files are kept.
const LABEL_FILES: [&str; 4] = ["imagelabels.mat", "setid.mat", "class_names.txt", "cat_to_name.json"];

/// Most bytes of label files a dataset may hold together (they are kept in memory).
const MAX_LABEL_BYTES: u64 = 64 << 20;

/// What reading a dataset's files keeps: every path, the label files' bytes, and for each image
/// its sha256 and its pixels — decoded (within `memory_budget_bytes`), still encoded, or, for a
/// check (`check_only`), nothing but whether it decodes. Images are decoded on all cores while the
/// archive is read, through a queue of a few images: memory holds what is kept plus a few images
/// in flight, never the whole archive.
struct Read {
    names: BTreeSet<String>,
    meta: Files,
    images: BTreeMap<String, (String, Result<Pixels>)>,
}

fn read(visit: impl FnOnce(archive::Sink) -> Result<()>, opts: &IngestOptions, eval: &EvalTransform) -> Result<Read> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(threads * 2);
    let rx = std::sync::Mutex::new(rx);
    let images = std::sync::Mutex::new(BTreeMap::new());
    let used = std::sync::atomic::AtomicU64::new(0);
    let mut names = BTreeSet::new();
    let mut meta = Files::new();
    let mut meta_bytes = 0u64;
    let visited = std::thread::scope(|scope| {
        let decoders: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, images, used) = (&rx, &images, &used);
                scope.spawn(move || loop {
                    let Ok((path, bytes)) = rx.lock().expect("decoder queue").recv() else { return };
                    let sha = sha256_hex(&bytes);
                    let pixels = decode_image(&bytes, &opts.decode, eval).map(|img| {
                        if opts.check_only {
                            return Pixels::Encoded(Vec::new());
                        }
                        let size = img.as_raw().len() as u64;
                        let before = used.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                        if before + size <= opts.memory_budget_bytes {
                            Pixels::Decoded(img)
                        } else {
                            Pixels::Encoded(bytes)
                        }
                    });
                    images.lock().expect("decoded images").insert(path, (sha, pixels));
                })
            })
            .collect();
        let visited = visit(&mut |path: String, bytes: Vec<u8>| {
            names.insert(path.clone());
            if is_image_name(&path) {
                // Blocks while the decoders are busy: the reader never runs ahead by more than
                // the queue.
                tx.send((path, bytes)).map_err(|_| Error::internal("the image decoders stopped"))?;
            } else if LABEL_FILES.contains(&path.rsplit('/').next().unwrap_or("")) {
                meta_bytes += bytes.len() as u64;
                if meta_bytes > MAX_LABEL_BYTES {
                    return Err(Error::new(
                        ErrorCode::DatasetTooLarge,
                        format!("the dataset's label files add up to more than {MAX_LABEL_BYTES} bytes"),
                    ));
                }
                meta.insert(path, bytes);
            }
            Ok(())
        });
        drop(tx);
        // Joined, not left to the scope: a scope returns once each closure has returned, while
        // the thread may still be running its thread-locals' destructors (LeakSanitizer under
        // the `archive` fuzz target saw one such allocation as a leak).
        for d in decoders {
            d.join().expect("an image decoder panicked");
        }
        visited
    });
    visited?;
    Ok(Read { names, meta, images: images.into_inner().expect("decoded images") })
}

/// The paths of a dataset and its label files, for the layout plans.
struct Listing {
    names: BTreeSet<String>,
    meta: Files,
}

fn read_labelled(read: Read, opts: &IngestOptions) -> Result<Labelled> {
    let Read { names, meta, mut images } = read;
    let (names, prefix) = strip_common_folder(names);
    let strip = |p: String| p[prefix.len()..].to_string();
    let meta: Files = meta.into_iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (strip(k), v)).collect();
    let listing = Listing { names, meta };
    let mut plan = if listing.names.contains("imagelabels.mat") {
        plan_oxford(&listing, opts)?
    } else {
        plan_image_folder(&listing, opts)?
    };
    if !plan.problems.is_empty() {
        return Err(invalid(&plan.problems));
    }
    let mut bad = Vec::new();
    let mut kept = Vec::new();
    let mut digest_lines = Vec::new();
    for (path, label, part) in plan.items.iter().cloned() {
        let Some((sha, result)) = images.remove(&format!("{prefix}{path}")) else {
            bad.push(format!("{path}: not read"));
            continue;
        };
        match result {
            Ok(pixels) => {
                digest_lines.push(format!("{}\t{}\t{}\n", path, plan.classes[label], sha));
                kept.push((Sample { path, label, pixels }, part));
            }
            Err(e) => bad.push(format!("{path}: {}", e.message)),
        }
    }
    match opts.on_bad_image {
        OnBadImage::Fail if !bad.is_empty() => return Err(invalid(&bad)),
        _ => plan.warnings.extend(bad.into_iter().map(|b| format!("skipped {b}"))),
    }
    let mut digest = Sha256::new();
    for line in &digest_lines {
        digest.update(line);
    }
    Ok(Labelled { plan, kept, digest: hex::encode(digest.finalize()), prefix })
}

/// Which images an evaluation measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EvalSplit {
    /// The dataset's own validation split when it brings one (Oxford Flowers 102's, or
    /// `train/` + `val/` folders), else every image.
    #[default]
    Auto,
    /// The validation split; for a dataset without one, the same seeded stratified split
    /// training makes (same `val_fraction` and seed).
    Val,
    Train,
    /// The dataset's `test/` folder.
    Test,
    All,
}

impl std::str::FromStr for EvalSplit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => EvalSplit::Auto,
            "val" => EvalSplit::Val,
            "train" => EvalSplit::Train,
            "test" => EvalSplit::Test,
            "all" => EvalSplit::All,
            other => {
                return Err(Error::invalid_request(format!("split: auto, val, train, test or all, not {other:?}")))
            }
        })
    }
}

/// Labelled images to evaluate a model on, kept as their original encoded bytes so that they go
/// through the serving path (decode, eval transform) exactly as a request would.
pub struct EvalSet {
    pub class_names: Vec<String>,
    pub samples: Vec<Sample>,
    /// Which images these are, for people.
    pub split: String,
    pub layout: Layout,
    pub digest: String,
    pub warnings: Vec<String>,
}

/// Reads a dataset for evaluation: every layout `load` reads, with no minimum of classes or
/// images per split (a handful of photos of a few classes is a valid test set).
pub fn load_eval(path: &Path, opts: &IngestOptions, eval: &EvalTransform, which: EvalSplit) -> Result<EvalSet> {
    let opts = IngestOptions { memory_budget_bytes: 0, ..opts.clone() };
    let read = read(|sink| archive::visit_path(path, &opts.limits, sink), &opts, eval)?;
    let Labelled { mut plan, mut kept, digest, .. } = read_labelled(read, &opts)?;
    let own_split = plan.split.take();
    let (want, split) = match (which, own_split) {
        (EvalSplit::All, _) | (EvalSplit::Auto, None) => (None, "every image".to_string()),
        (EvalSplit::Auto | EvalSplit::Val, Some(s)) => (Some(Part::Val), format!("validation split of {s}")),
        (EvalSplit::Train, Some(s)) => (Some(Part::Train), format!("training split of {s}")),
        (EvalSplit::Test, Some(s)) => (Some(Part::Test), format!("test split of {s}")),
        (EvalSplit::Test, None) => return Err(invalid(&["the dataset brings no test/ split".to_string()])),
        (EvalSplit::Val | EvalSplit::Train, None) => {
            stratify(&mut kept, plan.classes.len(), &opts)?;
            let part = if which == EvalSplit::Val { "validation" } else { "training" };
            let s = format!(
                "{part} part of a stratified split, {:.0} % of each class held out, seed {}",
                opts.val_fraction * 100.0,
                opts.seed
            );
            (Some(if which == EvalSplit::Val { Part::Val } else { Part::Train }), s)
        }
    };
    let samples: Vec<Sample> = kept.into_iter().filter(|(_, p)| want.is_none_or(|w| *p == w)).map(|(s, _)| s).collect();
    if samples.is_empty() {
        return Err(invalid(&[format!("no image to evaluate in the {split}")]));
    }
    Ok(EvalSet { class_names: plan.class_names, samples, split, layout: plan.layout, digest, warnings: plan.warnings })
}

/// Drops top-level folders that everything sits in (`flowers/…` → `…`) while folders remain;
/// returns the remaining paths and what was dropped (`flowers/`).
fn strip_common_folder(names: BTreeSet<String>) -> (BTreeSet<String>, String) {
    let mut names = names;
    let mut prefix = String::new();
    loop {
        let first = |p: &str| p.split_once('/').map(|(a, _)| a.to_string());
        let Some(Some(top)) = names.iter().next().map(|k| first(k)) else { return (names, prefix) };
        let all_under = names.iter().all(|k| first(k).as_deref() == Some(top.as_str()));
        let deeper = names.iter().any(|k| k.matches('/').count() >= 2);
        if !(all_under && deeper) {
            return (names, prefix);
        }
        names = names.into_iter().map(|k| k[top.len() + 1..].to_string()).collect();
        prefix.push_str(&top);
        prefix.push('/');
    }
}

fn stratify(kept: &mut [(Sample, Part)], classes: usize, opts: &IngestOptions) -> Result<()> {
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(Error::invalid_request(format!("val_fraction must be in (0, 1), not {}", opts.val_fraction)));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, (s, _)) in kept.iter().enumerate() {
        by_class[s.label].push(i);
    }
    for idx in &mut by_class {
        idx.shuffle(&mut rng);
        // At least one of each side when the class has two images (checked afterwards otherwise).
        let n = idx.len();
        let n_val = ((n as f64 * opts.val_fraction).round() as usize).clamp(usize::from(n >= 2), n.saturating_sub(1));
        for (k, &i) in idx.iter().enumerate() {
            kept[i].1 = if k < n_val { Part::Val } else { Part::Train };
        }
    }
    Ok(())
}

fn check_classes(classes: &[String], train: &[Sample], val: &[Sample]) -> Result<()> {
    let mut problems = Vec::new();
    if classes.len() < 2 {
        problems.push(format!("a classifier needs at least 2 classes; found {}", classes.len()));
    }
    let count = |set: &[Sample]| {
        let mut c = vec![0usize; classes.len()];
        set.iter().for_each(|s| c[s.label] += 1);
        c
    };
    let (tc, vc) = (count(train), count(val));
    for (i, name) in classes.iter().enumerate() {
        match (tc[i], vc[i]) {
            (0, 0) => problems.push(format!("class {name:?} has no usable image")),
            (0, _) => problems.push(format!("class {name:?} has no training image")),
            (_, 0) => problems.push(format!("class {name:?} has no validation image")),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(invalid(&problems))
    }
}

/// Decodes an image as datasets keep it: reduced so its shorter side is the eval transform's
/// resize (never enlarged), which the eval transform then leaves unchanged.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits, eval: &EvalTransform) -> Result<RgbImage> {
    let img = vision::decode(bytes, limits)?;
    Ok(if img.width().min(img.height()) > eval.resize { eval.resize_shorter(&img) } else { img })
}

/// `cat_to_name.json` at the top: folder name → display name.
fn name_map(files: &Listing, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let Some(bytes) = files.meta.get("cat_to_name.json") else { return BTreeMap::new() };
    match serde_json::from_slice::<BTreeMap<String, String>>(bytes) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("cat_to_name.json is not an object of strings: {e}"));
            BTreeMap::new()
        }
    }
}

fn plan_image_folder(files: &Listing, opts: &IngestOptions) -> Result<Plan> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let tops: BTreeSet<&str> = files.names.iter().filter_map(|k| k.split_once('/').map(|(a, _)| a)).collect();
    let val_dir = ["val", "valid", "validation"].into_iter().find(|d| tops.contains(d));
    let test_dir = ["test", "testing"].into_iter().find(|d| tops.contains(d));
    let split = tops.contains("train") && val_dir.is_some();
    let (layout, class_depth) = if split { (Layout::ImageFolderSplit, 1) } else { (Layout::ImageFolder, 0) };
    let mut entries = Vec::new();
    for path in &files.names {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 1 {
            if is_image_name(path) {
                problems.push(format!("{path}: images must be inside a class folder"));
            }
            continue; // metadata at the top (class-name files, README, licence)
        }
        let part = if split {
            match parts[0] {
                "train" => Part::Train,
                d if Some(d) == val_dir => Part::Val,
                d if Some(d) == test_dir => Part::Test,
                other => {
                    let val = val_dir.unwrap_or("val");
                    warnings.push(format!("ignored {path}: {other}/ is none of train/, {val}/ and test/"));
                    continue;
                }
            }
        } else {
            Part::Unsplit
        };
        if parts.len() < class_depth + 2 {
            problems.push(format!("{path}: images must be inside a class folder"));
            continue;
        }
        if !is_image_name(path) {
            problems.push(format!("{path}: not an image (JPEG, PNG or WebP by extension)"));
            continue;
        }
        entries.push((path.clone(), parts[class_depth].to_string(), part));
    }
    let classes: Vec<String> = entries
        .iter()
        .filter(|e| matches!(e.2, Part::Train | Part::Unsplit))
        .map(|e| e.1.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() > opts.max_classes {
        return Err(too_many_classes(classes.len(), opts.max_classes));
    }
    if classes.is_empty() && problems.is_empty() {
        return Err(Error::new(
            ErrorCode::DatasetLayout,
            "no class folders with images found: expected <class>/<image>, train/<class>/…, or the Oxford Flowers \
             102 files (imagelabels.mat, jpg/)",
        ));
    }
    let index: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut items = Vec::new();
    for (path, class, part) in entries {
        match index.get(class.as_str()) {
            Some(&label) => items.push((path, label, part)),
            None => {
                let folder = if part == Part::Test { "test" } else { "validation" };
                problems.push(format!("{path}: class {class:?} exists only in the {folder} folder"))
            }
        }
    }
    let names = name_map(files, &mut problems);
    let class_names = classes.iter().map(|c| names.get(c).cloned().unwrap_or_else(|| c.clone())).collect();
    let split = split.then(|| match test_dir {
        Some(t) => format!("given: train/, {}/ and {t}/", val_dir.unwrap_or("val")),
        None => format!("given: train/ and {}/", val_dir.unwrap_or("val")),
    });
    Ok(Plan { layout, classes, class_names, items, split, warnings, problems })
}

fn plan_oxford(files: &Listing, opts: &IngestOptions) -> Result<Plan> {
    let layout_err = |m: String| Error::new(ErrorCode::DatasetLayout, m);
    let max = opts.limits.max_file_bytes as usize;
    let read = |name: &str| -> Result<BTreeMap<String, mat::Matrix>> {
        let bytes = files.meta.get(name).ok_or_else(|| layout_err(format!("{name} is missing")))?;
        mat::parse(bytes, max).map_err(|e| layout_err(format!("{name}: {e}")))
    };
    let ids = |vars: &BTreeMap<String, mat::Matrix>, file: &str, var: &str| -> Result<Vec<usize>> {
        let m = vars.get(var).ok_or_else(|| layout_err(format!("{file} has no variable {var:?}")))?;
        let v = m.as_vector().ok_or_else(|| layout_err(format!("{file}: {var} is not a vector")))?;
        v.iter()
            .map(|&x| {
                if x >= 1.0 && x.fract() == 0.0 && x < 1e9 {
                    Ok(x as usize)
                } else {
                    Err(layout_err(format!("{file}: {var} holds {x}, not a positive whole number")))
                }
            })
            .collect()
    };
    let labels = ids(&read("imagelabels.mat")?, "imagelabels.mat", "labels")?;
    let k = labels.iter().copied().max().unwrap_or(0);
    if k > opts.max_classes {
        return Err(too_many_classes(k, opts.max_classes));
    }
    let classes: Vec<String> = (1..=k).map(|c| c.to_string()).collect();
    let mut problems = Vec::new();
    let mut class_names = classes.clone();
    if let Some(txt) = files.meta.get("class_names.txt") {
        let lines: Vec<&str> = std::str::from_utf8(txt).unwrap_or("").lines().collect();
        if lines.len() == k {
            class_names = lines.iter().map(|l| l.trim().to_string()).collect();
        } else {
            problems.push(format!("class_names.txt has {} lines for {k} classes", lines.len()));
        }
    } else {
        let names = name_map(files, &mut problems);
        class_names = classes.iter().map(|c| names.get(c).cloned().unwrap_or_else(|| c.clone())).collect();
    }
    let image = |i: usize| format!("jpg/image_{i:05}.jpg");
    let mut part = vec![Part::Unsplit; labels.len()];
    let split = if files.names.contains("setid.mat") {
        let vars = read("setid.mat")?;
        let (tst, trn, val) =
            (ids(&vars, "setid.mat", "tstid")?, ids(&vars, "setid.mat", "trnid")?, ids(&vars, "setid.mat", "valid")?);
        let (train_ids, val_ids, desc) = match opts.oxford_split {
            OxfordSplit::Reference => {
                ([tst].concat(), [trn, val].concat(), "the reference's: train tstid, validate trnid+valid")
            }
            OxfordSplit::Papers => ([trn, val].concat(), tst, "the papers': train trnid+valid, validate tstid"),
        };
        for (ids, p) in [(train_ids, Part::Train), (val_ids, Part::Val)] {
            for i in ids {
                match part.get_mut(i - 1) {
                    Some(slot) if *slot == Part::Unsplit => *slot = p,
                    Some(_) => problems.push(format!("setid.mat: image {i} is in more than one split")),
                    None => problems.push(format!("setid.mat: image {i} has no label in imagelabels.mat")),
                }
            }
        }
        Some(format!("Oxford Flowers 102 setid.mat, {desc}"))
    } else {
        None
    };
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let path = image(i + 1);
        if split.is_some() && part[i] == Part::Unsplit {
            warnings.push(format!("ignored {path}: in no split of setid.mat"));
            continue;
        }
        if !files.names.contains(&path) {
            problems.push(format!("{path} is labelled in imagelabels.mat but missing"));
            continue;
        }
        items.push((path, label - 1, if split.is_some() { part[i] } else { Part::Unsplit }));
    }
    Ok(Plan { layout: Layout::Oxford102, classes, class_names, items, split, warnings, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(rgb: [u8; 3]) -> Vec<u8> {
        let img = RgbImage::from_pixel(8, 6, image::Rgb(rgb));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn folder(classes: &[(&str, usize)]) -> Files {
        let mut f = Files::new();
        for (k, (c, n)) in classes.iter().enumerate() {
            for i in 0..*n {
                f.insert(format!("data/{c}/{i}.png"), png([k as u8 * 60, i as u8, 0]));
            }
        }
        f
    }

    fn load(files: Files) -> Result<Dataset> {
        from_files(files, &IngestOptions::default(), &EvalTransform::default())
    }

    #[test]
    fn image_folder_is_split_stratified_and_identified() {
        let d = load(folder(&[("cat", 10), ("dog", 5)])).unwrap();
        assert_eq!(d.layout, Layout::ImageFolder);
        assert_eq!(d.classes, ["cat", "dog"]);
        assert_eq!((d.train.len(), d.val.len()), (12, 3)); // 20 %: 2 + 1 per class
        let again = load(folder(&[("cat", 10), ("dog", 5)])).unwrap();
        assert_eq!(d.digest, again.digest);
        let val: Vec<_> = d.val.iter().map(|s| s.path.clone()).collect();
        assert_eq!(val, again.val.iter().map(|s| s.path.clone()).collect::<Vec<_>>(), "seeded split");
        let other = from_files(
            folder(&[("cat", 10), ("dog", 5)]),
            &IngestOptions { seed: 7, ..Default::default() },
            &EvalTransform::default(),
        )
        .unwrap();
        assert_eq!(d.digest, other.digest, "the digest is the files, not the split");
        let mut changed = folder(&[("cat", 10), ("dog", 5)]);
        changed.insert("data/dog/0.png".into(), png([1, 2, 3]));
        assert_ne!(load(changed).unwrap().digest, d.digest);
    }

    #[test]
    fn given_split_and_class_names() {
        let mut f = Files::new();
        for (part, n) in [("train", 3), ("val", 1)] {
            for c in ["a", "b"] {
                for i in 0..n {
                    f.insert(format!("{part}/{c}/{i}.png"), png([0, 0, i as u8]));
                }
            }
        }
        f.insert("cat_to_name.json".into(), br#"{"a": "alpha", "b": "beta"}"#.to_vec());
        let d = load(f.clone()).unwrap();
        assert_eq!(d.layout, Layout::ImageFolderSplit);
        assert_eq!(d.class_names, ["alpha", "beta"]);
        assert_eq!((d.train.len(), d.val.len()), (6, 2));
        f.insert("val/c/0.png".into(), png([1, 1, 1]));
        let err = load(f).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetInvalid);
        assert!(err.message.contains("exists only in the validation folder"), "{}", err.message);
    }

    #[test]
    fn a_test_folder_is_held_out_and_counted() {
        let mut f = Files::new();
        for (part, n) in [("train", 3), ("val", 1), ("test", 2)] {
            for c in ["a", "b"] {
                for i in 0..n {
                    f.insert(format!("{part}/{c}/{i}.png"), png([0, 0, i as u8]));
                }
            }
        }
        let d = load(f.clone()).unwrap();
        assert_eq!(d.layout, Layout::ImageFolderSplit);
        assert_eq!((d.train.len(), d.val.len(), d.test_images), (6, 2, 4));
        assert_eq!(d.summary().test_images, 4);
        assert!(d.split.contains("test/"), "{}", d.split);
        f.insert("test/c/0.png".into(), png([1, 1, 1]));
        let err = load(f).unwrap_err();
        assert!(err.message.contains("exists only in the test folder"), "{}", err.message);
    }

    #[test]
    fn each_bad_dataset_has_its_own_error() {
        let err = load(folder(&[("only", 6)])).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetInvalid);
        assert!(err.message.contains("at least 2 classes"), "{}", err.message);

        let err = load(folder(&[("a", 4), ("b", 1)])).unwrap_err();
        assert!(err.message.contains("class \"b\" has no"), "{}", err.message);

        let mut f = folder(&[("a", 4), ("b", 4)]);
        f.insert("data/a/broken.jpg".into(), b"\xff\xd8\xff\xe0 not really".to_vec());
        f.insert("data/b/notes.txt".into(), b"hello".to_vec());
        let err = load(f.clone()).unwrap_err();
        assert!(err.message.contains("notes.txt: not an image"), "{}", err.message);
        f.remove("data/b/notes.txt");
        let err = load(f.clone()).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetInvalid);
        assert!(err.message.contains("a/broken.jpg"), "{}", err.message);
        let skip = IngestOptions { on_bad_image: OnBadImage::Skip, ..Default::default() };
        let d = from_files(f, &skip, &EvalTransform::default()).unwrap();
        assert_eq!(d.train.len() + d.val.len(), 8);
        assert!(d.warnings.iter().any(|w| w.contains("broken.jpg")), "{:?}", d.warnings);

        let mut f = Files::new();
        f.insert("x.png".into(), png([0, 0, 0]));
        let err = load(f).unwrap_err();
        assert!(err.message.contains("inside a class folder"), "{}", err.message);

        let mut f = Files::new();
        f.insert("README.md".into(), b"# nothing".to_vec());
        assert_eq!(load(f).unwrap_err().code, ErrorCode::DatasetLayout);

        let mut f = folder(&[("a", 2), ("b", 2)]);
        f.insert("data/imagelabels.mat".into(), b"MATLAB garbage".to_vec());
        assert_eq!(load(f).unwrap_err().code, ErrorCode::DatasetLayout);

        let mut big = folder(&[("a", 2), ("b", 2)]);
        let huge = {
            // A PNG header declaring 100000×100000 pixels.
            let mut p = png([0, 0, 0]);
            p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
            p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
            p
        };
        big.insert("data/a/huge.png".into(), huge);
        let err = load(big).unwrap_err();
        assert!(err.message.contains("huge.png"), "{}", err.message);
    }

    #[test]
    fn oversized_images_are_kept_at_the_eval_size() {
        let mut f = folder(&[("a", 2), ("b", 2)]);
        let img = RgbImage::from_pixel(600, 400, image::Rgb([9, 9, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        f.insert("data/a/big.png".into(), out.into_inner());
        let d = load(f).unwrap();
        let s = d.train.iter().chain(&d.val).find(|s| s.path.ends_with("big.png")).unwrap();
        let rgb = s.rgb(&EvalTransform::default(), &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.dimensions(), (384, 256));
        assert!(matches!(s.pixels, Pixels::Decoded(_)));
        // Past the memory budget images stay encoded, and come out the same.
        let mut f = folder(&[("a", 2), ("b", 2)]);
        f.insert("data/a/big.png".into(), {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        });
        let lean = IngestOptions { memory_budget_bytes: 0, ..Default::default() };
        let d2 = from_files(f, &lean, &EvalTransform::default()).unwrap();
        let s2 = d2.train.iter().chain(&d2.val).find(|s| s.path.ends_with("big.png")).unwrap();
        assert!(matches!(s2.pixels, Pixels::Encoded(_)));
        assert_eq!(*s2.rgb(&EvalTransform::default(), &DecodeLimits::default()).unwrap(), *rgb);
    }
}
