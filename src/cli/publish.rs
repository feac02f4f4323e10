//! `petal publish`: a fine-tuning run's winner into the registry, with its full provenance.
use std::path::PathBuf;

use crate::config::Config;
use crate::error::Result;
use crate::publish::{prepare_run, publish_prepared, EvaluateOn, PublishRun};
use crate::records::names::{AliasName, ModelName};
use crate::registry::Registry;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The output folder of `petal finetune` (holding summary.json).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Publish as a new version of this model.
    #[arg(long)]
    pub model: ModelName,
    /// Then move this alias to the new version (e.g. production).
    #[arg(long)]
    pub alias: Option<AliasName>,
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
    /// Evaluate the version on this dataset's validation images (its own split, else the seeded
    /// stratified split the run made) and publish the report as `evaluation.json`.
    #[arg(long, value_name = "PATH")]
    pub eval_data: Option<PathBuf>,
    /// Local registry folder (registry.path).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

pub(super) fn run(config: &Config, args: PublishArgs) -> Result<()> {
    let registry = Registry::open(&config.registry)?;
    let opts = PublishRun {
        model: args.model,
        alias: args.alias,
        by: super::default_actor(args.by),
        dataset_name: args.dataset_name,
        dataset_terms: args.dataset_terms,
        fp16: args.fp16,
        with_checkpoint: args.with_checkpoint,
        command: args.command,
        hardware: args.ran_here.then(|| {
            let mut h = crate::train::device::hardware(tch::Device::Cpu);
            h["recorded"] = "at publish time, on the machine that ran the training (--ran-here)".into();
            h
        }),
        acknowledge_terms: args.acknowledge_terms,
        job: None,
    };
    let set = match &args.eval_data {
        Some(path) => {
            let summary = crate::train::finetune::read_summary(&args.run)?;
            let options = crate::dataset::IngestOptions { seed: summary.recipe.seed, ..Default::default() };
            let transform = &summary.recipe.eval_transform;
            Some(crate::dataset::load_eval(path, &options, transform, crate::dataset::EvalSplit::Val)?)
        }
        None => None,
    };
    let evaluate = set.as_ref().map(|set| EvaluateOn {
        set,
        test: None,
        onnxruntime: &config.onnxruntime,
        engine: &config.inference.engine,
    });
    let version = prepare_run(&args.run, &opts, evaluate)?;
    let m = super::invocation::block_on(publish_prepared(&registry, version, &opts, config.registry.usage))?;
    let onnx = m.artifact("model.onnx").expect("published with model.onnx");
    println!("published {} version {} (model.onnx {} bytes, sha256 {})", m.model, m.version, onnx.size, onnx.sha256);
    if let Some(alias) = &opts.alias {
        println!("{}@{alias} -> version {}", m.model, m.version);
    }
    Ok(())
}
