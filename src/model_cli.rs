//! `petal publish` (a fine-tuning run into the registry) and `petal eval` (a model's accuracy on a
//! labelled dataset through the serving path).
use std::path::PathBuf;

use petal::config::Config;
use petal::dataset::{self, EvalSplit, IngestOptions};
use petal::error::Result;
use petal::infer::engine::ModelHandle;
use petal::infer::runtime::OrtRuntime;
use petal::registry::{ModelRef, Registry};

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The output folder of `petal finetune` (holding summary.json).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Publish as a new version of this model.
    #[arg(long)]
    pub model: String,
    /// Then move this alias to the new version (e.g. production).
    #[arg(long)]
    pub alias: Option<String>,
    /// The dataset's name, for the provenance record and the model card.
    #[arg(long, default_value = "")]
    pub dataset_name: String,
    /// The terms the dataset may be used under (recorded verbatim; without a structured licence
    /// they count as not allowing commercial use).
    #[arg(long)]
    pub dataset_terms: Option<String>,
    /// Store the ONNX weights as float16.
    #[arg(long)]
    pub fp16: bool,
    /// Also store the training checkpoint (safetensors) in the registry.
    #[arg(long)]
    pub with_checkpoint: bool,
    /// The command that reproduces the run, for runs whose summary does not record it.
    #[arg(long, value_name = "TEXT")]
    pub command: Option<String>,
    /// Record this machine as the one the run used, for runs whose summary does not record it
    /// (only true when the run ran here).
    #[arg(long)]
    pub ran_here: bool,
    /// Who publishes (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Acknowledge the lineage's non-commercial terms (needed to promote under registry.usage = commercial).
    #[arg(long)]
    pub acknowledge_terms: bool,
    /// Local registry folder (registry.path).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

pub async fn publish(config: &Config, args: PublishArgs) -> Result<()> {
    let registry = Registry::open(&config.registry)?;
    let opts = petal::publish::PublishRun {
        model: args.model,
        alias: args.alias,
        by: args.by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "petal".into()),
        dataset_name: args.dataset_name,
        dataset_terms: args.dataset_terms,
        fp16: args.fp16,
        with_checkpoint: args.with_checkpoint,
        command: args.command,
        hardware: args.ran_here.then(|| {
            let mut h = petal::train::device::hardware(tch::Device::Cpu);
            h["recorded"] = "at publish time, on the machine that ran the training (--ran-here)".into();
            h
        }),
        acknowledge_terms: args.acknowledge_terms,
        job: None,
    };
    let m = petal::publish::publish_run(&registry, &args.run, &opts, config.registry.usage).await?;
    let onnx = m.artifact("model.onnx").expect("published with model.onnx");
    println!("published {} version {} (model.onnx {} bytes, sha256 {})", m.model, m.version, onnx.size, onnx.sha256);
    if let Some(alias) = &opts.alias {
        println!("{}@{alias} -> version {}", m.model, m.version);
    }
    Ok(())
}

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
    #[arg(long, default_value = "auto")]
    pub split: String,
    /// Oxford Flowers 102 split: reference (validate on trnid+valid) or papers (validate on tstid).
    #[arg(long, default_value = "reference")]
    pub oxford_split: String,
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

pub fn eval(config: &Config, args: EvalArgs) -> Result<()> {
    let handle = load_handle(config, args.model.as_deref(), args.onnx.as_ref())?;
    let opts = IngestOptions {
        val_fraction: args.val_fraction,
        seed: args.seed,
        oxford_split: args.oxford_split.parse()?,
        ..Default::default()
    };
    let split: EvalSplit = args.split.parse()?;
    let set = dataset::load_eval(&args.data, &opts, &handle.info.transform, split)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = petal::infer::eval::evaluate(&handle, &set, args.batch.unwrap_or(handle.info.max_batch), threads)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        print!("{}", report.to_text(args.show));
    }
    Ok(())
}

/// Loads a model for use outside the server: from the registry (seeded from `registry.seed`
/// first, as `petal serve` does, so the bundled model is there on a fresh clone) or an ONNX file.
pub fn load_handle(config: &Config, model: Option<&str>, onnx: Option<&PathBuf>) -> Result<ModelHandle> {
    let (bytes, name, version) = match (model, onnx) {
        (_, Some(file)) => (std::fs::read(file)?, file.display().to_string(), 0),
        (Some(m), None) => {
            let r: ModelRef = m.parse()?;
            crate::block_on(async {
                let registry = Registry::open(&config.registry)?;
                registry.seed_from_config(&config.registry).await?;
                let v = registry.resolve(&r).await?;
                let manifest = registry.verify(r.model(), v).await?;
                let bytes = registry.read_artifact(&manifest, "model.onnx").await?;
                Ok::<_, petal::Error>((bytes, r.model().to_string(), v))
            })?
        }
        (None, None) => return Err(petal::Error::invalid_request("give --model NAME[@alias|:version] or --onnx FILE")),
    };
    let runtime = OrtRuntime::init(&config.onnxruntime)?;
    ModelHandle::load(&runtime, &bytes, &name, version, &config.inference.engine)
}
