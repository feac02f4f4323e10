//! `petal export`: a backbone with its weights to ONNX, optionally published into the registry.
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::export::onnx::{export_weights, ExportedWeights, WeightsExport};
use crate::foundation::files;
use crate::records::names::ModelName;
use crate::registry::manifest::BaseWeights;
use crate::registry::{NewArtifact, Provenance, Registry};
use crate::train::arch::Arch;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Architecture (resnet50, mobilenet_v2, …).
    #[arg(long)]
    pub arch: Arch,
    /// Weight file (.pth or .safetensors) with torchvision's names.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Class names: a JSON list or one name per line (default: ImageNet's for a 1000-class head).
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
    /// Square input size of the exported graph (default: the checkpoint's or catalog's eval crop, else 224).
    #[arg(long)]
    pub image_size: Option<i64>,
    /// Write the ONNX model here.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Publish it as a new version of this model in the registry.
    #[arg(long, value_name = "MODEL")]
    pub publish: Option<String>,
    /// Store the weights as float16 (half the size; compute stays float32).
    #[arg(long)]
    pub fp16: bool,
    /// Local registry folder (registry.path).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = files::read_to_string(path)?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| Error::invalid_request(format!("{}: {e}", path.display())))
    } else {
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }
}

pub(super) async fn run(config: &Config, args: ExportArgs) -> Result<()> {
    let ExportArgs { arch, weights: weights_file, class_names, image_size, out, publish, fp16, .. } = args;
    let bytes = files::read(&weights_file)?;
    let names = class_names.as_deref().map(read_class_names).transpose()?;
    let ExportedWeights { onnx, sha256, classes, image_size, catalog } = export_weights(
        arch,
        &bytes,
        WeightsExport { class_names: names, image_size, model_name: publish.clone(), fp16 },
    )?;
    if let Some(out) = &out {
        files::write(out, &onnx)?;
        println!("wrote {} ({} bytes)", out.display(), onnx.len());
    }
    if let Some(name) = publish {
        let registry = Registry::open(&config.registry)?;
        let provenance = Provenance {
            base_weights: Some(BaseWeights {
                catalog: catalog.map(|e| e.weights.clone()),
                arch: arch.name().into(),
                url: catalog.map(|e| e.url.clone()),
                sha256,
                licences: catalog.map(|e| e.licences.clone()).unwrap_or_default(),
            }),
            recipe: serde_json::json!({"kind": "export", "image_size": image_size, "classes": classes, "fp16_weights": fp16}),
            command: Some(super::recorded_command()),
            ..Default::default()
        };
        let name = ModelName::new(name)?;
        let m = registry.publish(&name, vec![NewArtifact::new("model.onnx", onnx)], provenance, |_| {}).await?;
        println!("published {} version {}", m.model, m.version);
    }
    Ok(())
}
