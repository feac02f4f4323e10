//! `petal finetune`: the recipe on a dataset, without the server, with a progress bar.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::dataset::{self, IngestOptions, OnBadImage, OxfordSplit};
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::files;
use crate::train::arch::Arch;
use crate::train::checkpoint::FolderStore;
use crate::train::device::DeviceChoice;
use crate::train::finetune;
use crate::train::recipe::Recipe;
use crate::train::trainer::Event;
use crate::train::weights::store::WeightStore;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Dataset: a folder, .zip or .tar(.gz) (ImageFolder, train/ + val/, or Oxford Flowers 102).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Backbones; each runs the recipe and the best validation accuracy wins.
    #[arg(long, value_delimiter = ',', default_value = "mobilenet_v2")]
    pub backbone: Vec<Arch>,
    /// Starting weights: FILE, a catalog name (IMAGENET1K_V1), or `scratch`; `ARCH=…` for one
    /// backbone among several. Default: the cached catalog default of each backbone.
    #[arg(long, value_name = "SPEC")]
    pub weights: Vec<String>,
    /// Output folder (checkpoint, metrics, curves per backbone; summary.json).
    #[arg(long, value_name = "DIR", default_value = "runs/latest")]
    pub out: PathBuf,
    /// The whole recipe as JSON (see `Recipe`); the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Recipe values over the `--recipe` file (or the default recipe).
    #[command(flatten)]
    pub settings: crate::train::recipe::Overrides,
    /// Where to train (auto: CUDA when present).
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// libtorch CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Share of each class held out when the dataset brings no split.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Oxford Flowers 102 split: reference (train tstid) or papers (train trnid+valid).
    #[arg(long, value_enum, default_value_t)]
    pub oxford_split: OxfordSplit,
    /// Leave out undecodable files with a warning instead of refusing the dataset.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Keep training checkpoints in DIR (per backbone, after every epoch); the same command run
    /// again goes on from them instead of starting over.
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The recipe: `--recipe` (else the default) with the flags on top, checked as a job's is.
pub fn recipe_from(args: &FinetuneArgs) -> Result<Recipe> {
    let recipe: Recipe = match &args.recipe {
        Some(p) => serde_json::from_slice(&files::read(p)?)
            .map_err(|e| Error::new(ErrorCode::InvalidJson, format!("{}: {e}", p.display())))?,
        None => Recipe::default(),
    };
    let recipe = recipe.with(&args.settings);
    recipe.validate()?;
    Ok(recipe)
}

pub(super) fn run(config: &Config, args: FinetuneArgs) -> Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = crate::train::device::select(args.device)?;
    let recipe = recipe_from(&args)?;
    let opts = IngestOptions {
        on_bad_image: if args.skip_bad_images { OnBadImage::Skip } else { OnBadImage::Fail },
        val_fraction: args.val_fraction,
        seed: recipe.seed,
        oxford_split: args.oxford_split,
        ..Default::default()
    };
    let archs = &args.backbone;
    let store = WeightStore::from_config(&config.weights);
    let mut backbones = Vec::new();
    for &arch in archs {
        let spec = weights_spec(&args.weights, arch, archs.len())?;
        backbones.push((arch, finetune::resolve_weights(arch, spec.as_deref(), &store)?));
    }
    let t0 = std::time::Instant::now();
    let data = dataset::load(&args.data, &opts, &recipe.eval_transform)?;
    eprintln!(
        "dataset {}: {} classes, {} train / {} validation images ({:?}, split {}), read in {:.1} s, digest {}",
        args.data.display(),
        data.classes.len(),
        data.train.len(),
        data.val.len(),
        data.layout,
        data.split,
        t0.elapsed().as_secs_f64(),
        &data.digest[..16]
    );
    for w in data.warnings.iter().take(20) {
        eprintln!("warning: {w}");
    }
    let cancel = AtomicBool::new(false);
    let bar = progress_bar();
    let mut on_event = |e: &Event| show_event(bar.as_ref(), e);
    let command = super::recorded_command();
    let plan = finetune::FinetuneRun {
        dataset: &data,
        backbones: &backbones,
        recipe: &recipe,
        device,
        out: &args.out,
        command: Some(&command),
    };
    let mut folder = args.checkpoints.as_ref().map(|dir| FolderStore { dir: dir.clone(), max_bytes: u64::MAX });
    let steering = finetune::Steering {
        cancel: &cancel,
        preempt: None,
        checkpoints: folder.as_mut().map(|f| f as &mut dyn crate::train::checkpoint::CheckpointStore),
    };
    let summary = finetune::finetune(&plan, steering, &mut on_event)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_summary(&summary, args.json, &args.out);
    Ok(())
}

/// A step on the progress bar (when on a terminal), an epoch as a line.
fn show_event(bar: Option<&indicatif::ProgressBar>, e: &Event) {
    match e {
        Event::Step { backbone, phase, epoch, epochs, step, steps, loss, images_per_s, progress, eta_s } => {
            if let Some(bar) = bar {
                bar.set_position((progress * 1000.0) as u64);
                bar.set_message(format!(
                    "{backbone} phase {phase} epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.4} {images_per_s:.1} img/s ETA {}",
                    eta(*eta_s)
                ));
            }
        }
        Event::Resumed(r) => {
            let mut line = match (r.from, r.next) {
                (Some(slot), Some(n)) if n.phase > 2 => {
                    format!("{}: already trained (its {} checkpoint)", r.backbone, slot.name())
                }
                (Some(slot), Some(n)) => format!(
                    "{}: resuming from its {} checkpoint at phase {} epoch {} step {} ({} optimiser steps)",
                    r.backbone,
                    slot.name(),
                    n.phase,
                    n.epoch + 1,
                    n.step,
                    r.optimizer_steps
                ),
                _ => format!("{}: no usable checkpoint, starting from the beginning", r.backbone),
            };
            for d in &r.discarded {
                line.push_str(&format!("\n  not used: {d}"));
            }
            say(bar, line);
        }
        Event::Checkpoint(_) => {}
        Event::Epoch(m) => {
            let line = format!(
                "{} phase {} epoch {:>2}: lr {:.2e} train loss {:.4} acc {:.2} % | val loss {:.4} acc {:.2} %{} | {:.1} img/s, {:.0} s",
                m.backbone,
                m.phase,
                m.epoch,
                m.lr,
                m.train_loss,
                m.train_accuracy * 100.0,
                m.val_loss,
                m.val_accuracy * 100.0,
                if m.best { " (best)" } else { "" },
                m.images_per_s,
                m.seconds
            );
            say(bar, line);
        }
    }
}

fn say(bar: Option<&indicatif::ProgressBar>, line: String) {
    match bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

fn print_summary(summary: &finetune::Summary, json: bool, out: &std::path::Path) {
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("serializes"));
    } else {
        for r in &summary.results {
            println!(
                "{:<16} best validation accuracy {:.2} % (phase {} epoch {}), {:.0} s",
                r.backbone.name(),
                r.best_val_accuracy * 100.0,
                r.best_phase,
                r.best_epoch,
                r.seconds
            );
        }
        println!("winner: {} — outputs in {}", summary.winner, out.display());
    }
}

/// The `--weights` entry for `arch`: `ARCH=SPEC`, or a bare SPEC when there is one backbone.
fn weights_spec(specs: &[String], arch: Arch, backbones: usize) -> Result<Option<String>> {
    for s in specs {
        match s.split_once('=') {
            Some((a, spec)) if a.parse::<Arch>().ok() == Some(arch) => return Ok(Some(spec.to_string())),
            Some(_) => {}
            None if backbones == 1 => return Ok(Some(s.clone())),
            None => {
                return Err(Error::invalid_request(format!(
                    "with several backbones, write --weights ARCH=SPEC (got {s:?})"
                )))
            }
        }
    }
    Ok(None)
}

fn eta(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% {msg}").expect("valid template"));
    Some(bar)
}
