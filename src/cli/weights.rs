//! `petal weights`: the catalog of pretrained weights, and the local cache.
use std::path::PathBuf;

use clap::Subcommand;

use crate::config::{Config, Overrides};
use crate::error::Result;
use crate::train::arch::Arch;
use crate::train::catalog::Catalog;
use crate::train::weights::store::{CachedWeights, WeightStore};

#[derive(clap::Args)]
pub struct WeightsArgs {
    /// Cache folder (weights.cache).
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    pub command: WeightsCommand,
}

impl WeightsArgs {
    pub(super) fn override_config(&self, o: &mut Overrides) {
        o.weights_cache = self.cache.clone();
        if let WeightsCommand::Fetch { mirror, .. } = &self.command {
            o.weights_mirror = mirror.clone();
        }
    }
}

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// The catalog of known weights, and what is cached.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download catalog weights, verify their sha256 and that they load, and cache them.
    Fetch {
        /// Architecture: resnet18|34|50|101|152, vgg16, vgg16_bn, mobilenet_v2, efficientnet_b0.
        arch: Arch,
        /// Which weights (e.g. IMAGENET1K_V1); default: torchvision's DEFAULT.
        #[arg(long)]
        weights: Option<String>,
        /// Download `{mirror}/{file_name}` instead of the canonical URL (weights.mirror).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Import a local .pth/.safetensors file: checked against the catalog when it names a known
    /// file, proven to load into its architecture, then cached.
    Import {
        file: PathBuf,
        /// The architecture, when the catalog does not know the file.
        #[arg(long)]
        arch: Option<Arch>,
    },
}

pub(super) fn run(config: &Config, command: WeightsCommand) -> Result<()> {
    let store = WeightStore::from_config(&config.weights);
    let catalog = Catalog::embedded();
    match command {
        WeightsCommand::List { json } => {
            let cached = store.list();
            if json {
                let v = serde_json::json!({"catalog": catalog, "cached": cached});
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
                return Ok(());
            }
            println!(
                "{:<16} {:<40} {:>7} {:>7} {:>9}  {:<8} cached",
                "arch", "weights", "top-1", "top-5", "params", "default"
            );
            for e in &catalog.weights {
                let here = cached.iter().any(|c| c.file_name == e.file_name);
                println!(
                    "{:<16} {:<40} {:>6.2}% {:>6.2}% {:>8.1}M  {:<8} {}",
                    e.arch.name(),
                    e.weights,
                    e.imagenet_top1,
                    e.imagenet_top5,
                    e.num_params as f64 / 1e6,
                    if e.default { "yes" } else { "" },
                    if here { "yes" } else { "" }
                );
            }
            println!(
                "\nWeights trained on ImageNet-1k carry its terms: non-commercial research and educational use only. \
                 Code: BSD-3-Clause (torchvision)."
            );
            println!("cache: {}", store.dir().display());
            Ok(())
        }
        WeightsCommand::Fetch { arch, weights, .. } => {
            let entry = catalog.find(arch, weights.as_deref())?;
            let stored = super::invocation::block_on(store.fetch(entry, config.weights.mirror.as_deref()))?;
            report_stored(&stored);
            Ok(())
        }
        WeightsCommand::Import { file, arch } => {
            let stored = store.import(&file, arch)?;
            report_stored(&stored);
            Ok(())
        }
    }
}

fn report_stored(w: &CachedWeights) {
    println!("stored {}", w.path.display());
    println!("  sha256       {} ({:?})", w.sha256, w.verification);
    println!("  catalog      {}", w.catalog.as_deref().unwrap_or("not in the catalog"));
    println!("  arch         {}", w.arch.map(|a| a.name()).unwrap_or("unknown"));
    println!("  tensors      {}", w.tensors);
    println!("  source       {}", w.source);
    for l in &w.licences {
        println!(
            "  licence      {}: {}",
            l.component,
            l.spdx.as_deref().unwrap_or(if l.commercial_use { "" } else { "non-commercial terms" })
        );
    }
}
