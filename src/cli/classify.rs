//! `petal classify`: images through a model from the registry or an ONNX file, without the server.
use std::path::PathBuf;

use super::invocation::print_json;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::foundation::files;
use crate::infer::engine::ModelHandle;
use crate::infer::runtime::OrtRuntime;
use crate::registry::{ModelRef, Registry};

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// MODEL, MODEL:VERSION or MODEL@ALIAS.
    #[arg(long, conflicts_with = "onnx")]
    pub model: Option<String>,
    /// An ONNX file exported by petal.
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Local registry folder (registry.path).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub(super) fn run(config: &Config, args: ClassifyArgs) -> Result<()> {
    let ClassifyArgs { model, onnx, top_k, json, images, .. } = args;
    let handle = load_handle(config, model.as_deref(), onnx.as_ref())?;
    let (name, version) = (handle.info.name.clone(), handle.info.version);
    let mut results = Vec::new();
    for path in &images {
        let input = handle.preprocess(&files::read(path)?)?;
        let logits = handle.infer_blocking(input, 1)?.remove(0);
        results.push((path.display().to_string(), handle.top_k(&logits, top_k)));
    }
    if json {
        let v: Vec<_> =
            results.iter().map(|(p, preds)| serde_json::json!({"image": p, "predictions": preds})).collect();
        print_json(
            &serde_json::json!({"model": name, "version": version, "provider": handle.info.provider, "results": v}),
        );
    } else {
        println!("model {name} version {version} on {}", handle.info.provider);
        for (p, preds) in results {
            println!("{p}");
            for pr in preds {
                println!("  {:>6.2}%  {:>4}  {}", pr.probability * 100.0, pr.index, pr.name);
            }
        }
    }
    Ok(())
}

/// Loads a model for use outside the server: from the registry (seeded from `registry.seed`
/// first, as `petal serve` does, so the bundled model is there on a fresh clone) or an ONNX file.
pub(super) fn load_handle(config: &Config, model: Option<&str>, onnx: Option<&PathBuf>) -> Result<ModelHandle> {
    let (bytes, name, version) = match (model, onnx) {
        (_, Some(file)) => (files::read(file)?, file.display().to_string(), 0),
        (Some(m), None) => {
            let r: ModelRef = m.parse()?;
            super::invocation::block_on(async {
                let registry = Registry::open(&config.registry)?;
                registry.seed_from_config(&config.registry).await?;
                let v = registry.resolve(&r).await?;
                let manifest = registry.verify(r.model(), v).await?;
                let bytes = registry.read_artifact(&manifest, "model.onnx").await?;
                Ok::<_, Error>((bytes, r.model().to_string(), v))
            })?
        }
        (None, None) => return Err(Error::invalid_request("give --model NAME[@alias|:version] or --onnx FILE")),
    };
    let runtime = OrtRuntime::init(&config.onnxruntime)?;
    ModelHandle::load(&runtime, &bytes, &name, version, &config.inference.engine)
}
