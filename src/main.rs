//! The `petal` command line.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petal::config::{Config, LogFormat, Overrides};
use utoipa::OpenApi;

#[derive(Parser)]
#[command(name = "petal", version, about = "Turns a labelled image dataset into a served image classifier")]
struct Cli {
    /// TOML configuration file (else $PETAL_CONFIG). Layers: defaults < file < PETAL__SECTION__KEY env < flags.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `petal=debug` (log.level).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Auto,
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (defaults to 127.0.0.1:8080 and the local registry in var/registry).
    Serve {
        /// Address to bind (server.host).
        #[arg(long)]
        host: Option<String>,
        /// Port to bind; 0 picks a free one (server.port).
        #[arg(long)]
        port: Option<u16>,
        /// HTTP worker threads; 0 = one per core (server.workers).
        #[arg(long)]
        workers: Option<usize>,
        /// Local registry folder (registry.path).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Report versions, devices, execution providers and the registry; exits 1 when something is wrong.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (after every layer) as JSON.
    Config,
    /// Pretrained weights: the catalog, and the local cache (weights.cache).
    Weights {
        /// Cache folder (weights.cache).
        #[arg(long, global = true, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[command(subcommand)]
        command: WeightsCommand,
    },
    /// Write the OpenAPI document.
    Openapi {
        /// Output file; `-` for standard output.
        #[arg(long, default_value = "openapi/openapi.json")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// The catalog of known weights, and what is cached.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download catalog weights, verify their sha256 and that they load, and cache them.
    Fetch {
        /// Architecture: resnet18|34|50|101|152, vgg16, vgg16_bn, mobilenet_v2, efficientnet_b0.
        arch: String,
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
        arch: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Overrides {
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Auto => LogFormat::Auto,
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Text => LogFormat::Text,
        }),
        ..Default::default()
    };
    if let Command::Serve { host, port, workers, registry } = &cli.command {
        overrides.host = host.clone();
        overrides.port = *port;
        overrides.workers = *workers;
        overrides.registry_path = registry.clone();
    }
    if let Command::Weights { cache, command } = &cli.command {
        overrides.weights_cache = cache.clone();
        if let WeightsCommand::Fetch { mirror, .. } = command {
            overrides.weights_mirror = mirror.clone();
        }
    }
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petal: {e}");
            return ExitCode::from(2);
        }
    };
    petal::telemetry::init(&config.log);

    match cli.command {
        Command::Serve { .. } => match actix_web::rt::System::new().block_on(petal::server::serve(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                eprintln!("petal: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor { json } => {
            let report = petal::doctor::run(&config);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
            } else {
                print!("{}", report.to_text());
            }
            if report.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Weights { command, .. } => match weights_command(&config, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("petal: {} [{}]", e.message, e.code.as_str());
                ExitCode::FAILURE
            }
        },
        Command::Config => {
            println!("{}", serde_json::to_string_pretty(&config).expect("config serializes"));
            ExitCode::SUCCESS
        }
        Command::Openapi { out } => {
            let spec = petal::api::ApiDoc::openapi().to_pretty_json().expect("spec serializes") + "\n";
            let written = if out.as_os_str() == "-" {
                print!("{spec}");
                Ok(())
            } else {
                out.parent().map(std::fs::create_dir_all).transpose().and_then(|_| std::fs::write(&out, spec))
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("petal: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn weights_command(config: &Config, command: WeightsCommand) -> petal::Result<()> {
    use petal::train::arch::Arch;
    use petal::train::catalog::Catalog;
    use petal::train::weights::store::WeightStore;

    let store = WeightStore::new(&config.weights.cache);
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
            let arch: Arch = arch.parse()?;
            let entry = catalog.find(arch, weights.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| petal::Error::internal(e.to_string()))?;
            let stored = runtime.block_on(store.fetch(entry, config.weights.mirror.as_deref()))?;
            report_stored(&stored);
            Ok(())
        }
        WeightsCommand::Import { file, arch } => {
            let arch = arch.map(|a| a.parse::<Arch>()).transpose()?;
            let stored = store.import(&file, arch)?;
            report_stored(&stored);
            Ok(())
        }
    }
}

fn report_stored(w: &petal::train::weights::store::CachedWeights) {
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
