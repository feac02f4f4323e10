//! `petal eval`: a model's accuracy and confusions on labelled images, through the serving path.
use std::path::PathBuf;

use crate::config::Config;
use crate::dataset::{self, EvalSplit, IngestOptions, OxfordSplit};
use crate::error::Result;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// MODEL, MODEL:VERSION or MODEL@ALIAS.
    #[arg(long, conflicts_with = "onnx")]
    pub model: Option<String>,
    /// An ONNX file exported by petal.
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Labelled images: a folder, .zip or .tar(.gz) (ImageFolder, train/ + val/, or Oxford Flowers 102).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Which images: auto (the dataset's own validation split, else all), val, train or all.
    #[arg(long, value_enum, default_value_t)]
    pub split: EvalSplit,
    /// Oxford Flowers 102 split: reference (validate on trnid+valid) or papers (validate on tstid).
    #[arg(long, value_enum, default_value_t)]
    pub oxford_split: OxfordSplit,
    /// Share held out by the stratified split of a dataset without its own (as in training).
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of that split (as in training).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per inference call (default: the engine's max batch).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Classes and confusions listed in the text report.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// Print the whole report (confusion matrix included) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Local registry folder (registry.path).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

pub(super) fn run(config: &Config, args: EvalArgs) -> Result<()> {
    let handle = super::classify::load_handle(config, args.model.as_deref(), args.onnx.as_ref())?;
    let opts = IngestOptions {
        val_fraction: args.val_fraction,
        seed: args.seed,
        oxford_split: args.oxford_split,
        ..Default::default()
    };
    let set = dataset::load_eval(&args.data, &opts, &handle.info.transform, args.split)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = crate::infer::eval::evaluate(&handle, &set, args.batch.unwrap_or(handle.info.max_batch), threads)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        print!("{}", report.to_text(args.show));
    }
    Ok(())
}
