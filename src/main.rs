//! The `petal` command line.
mod finetune_cli;
mod model_cli;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petal::config::{Config, LogFormat, Overrides};
use petal::infer::engine::ProviderMode;
use petal::jobs::runner::Role;
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

/// What `petal serve` does with jobs.
#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum ServeRole {
    /// Accept, train and serve in this one process (the embedded default).
    #[default]
    All,
    /// Accept jobs into the registry's shared queue and serve /classify; train nothing
    /// (`petal worker`s train).
    Api,
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
        /// `all`: one process does everything; `api`: an API replica in front of `petal worker`s
        /// sharing the registry (S3 when there is more than one machine).
        #[arg(long, value_enum, default_value_t)]
        role: ServeRole,
    },
    /// Train jobs of the registry's shared queue, each under a lease renewed by heartbeat; serve
    /// only /healthz, /readyz and /metrics. SIGTERM stops the running job at its next step and
    /// releases it to another worker.
    Worker {
        /// Address of the health endpoints (server.host).
        #[arg(long)]
        host: Option<String>,
        /// Port of the health endpoints; 0 picks a free one (server.port).
        #[arg(long)]
        port: Option<u16>,
        /// Local registry folder (registry.path), for workers on one machine.
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// GET a URL (default: this host's /healthz); exit 0 on a 2xx answer, else 1. For container
    /// health checks, where there is no curl.
    Probe {
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Report versions, devices, execution providers and the registry; exits 1 when something is wrong.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (after every layer) as JSON.
    Config,
    /// The model registry: list, show, publish, promote, history, verify, gc.
    Registry {
        /// Local registry folder (registry.path; selects the local backend).
        #[arg(long, global = true, value_name = "DIR")]
        registry: Option<PathBuf>,
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Export a backbone with its weights to ONNX, optionally publishing it into the registry.
    Export {
        /// Architecture (resnet50, mobilenet_v2, …).
        #[arg(long)]
        arch: String,
        /// Weight file (.pth or .safetensors) with torchvision's names.
        #[arg(long, value_name = "FILE")]
        weights: PathBuf,
        /// Class names: a JSON list or one name per line (default: ImageNet's for a 1000-class head).
        #[arg(long, value_name = "FILE")]
        class_names: Option<PathBuf>,
        /// Square input size of the exported graph (default: the checkpoint's or catalog's eval crop, else 224).
        #[arg(long)]
        image_size: Option<i64>,
        /// Write the ONNX model here.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Publish it as a new version of this model in the registry.
        #[arg(long, value_name = "MODEL")]
        publish: Option<String>,
        /// Store the weights as float16 (half the size; compute stays float32).
        #[arg(long)]
        fp16: bool,
        /// Local registry folder (registry.path).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Classify images with a model from the registry (or an ONNX file), without the server.
    Classify {
        /// MODEL, MODEL:VERSION or MODEL@ALIAS.
        #[arg(long, conflicts_with = "onnx")]
        model: Option<String>,
        /// An ONNX file exported by petal.
        #[arg(long, value_name = "FILE")]
        onnx: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Local registry folder (registry.path).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Fine-tune backbones on a dataset with the two-phase recipe (no server needed).
    Finetune(finetune_cli::FinetuneArgs),
    /// Export a fine-tuning run's winner to ONNX and publish it with its full provenance.
    Publish(model_cli::PublishArgs),
    /// Top-1/top-5 accuracy and confusions of a model on labelled images, through the serving path.
    Eval(model_cli::EvalArgs),
    /// Benchmarks, each against its reference measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
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
enum RegistryCommand {
    /// Models, or the versions of one model.
    Ls { model: Option<String> },
    /// A version's manifest (JSON) or model card: MODEL, MODEL:VERSION or MODEL@ALIAS.
    Show {
        model: String,
        /// Print the Markdown model card instead of the manifest.
        #[arg(long)]
        card: bool,
    },
    /// Publish local files as a new version of MODEL.
    Publish {
        model: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Provenance record (JSON, the manifest's `provenance` shape).
        #[arg(long, value_name = "FILE")]
        provenance: Option<PathBuf>,
    },
    /// Move an alias to a version (compare-and-swap with --if-match).
    Promote {
        model: String,
        version: u64,
        #[arg(long)]
        alias: String,
        /// Only move if the alias is still at this seq (0: it must not exist yet).
        #[arg(long)]
        if_match: Option<u64>,
        /// Who moves it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Acknowledge the non-commercial terms of the model's lineage (needed under registry.usage = commercial).
        #[arg(long)]
        acknowledge_terms: bool,
    },
    /// Every move of an alias.
    History { model: String, alias: String },
    /// Check every artifact's sha256 and size: one reference, or everything.
    Verify { model: Option<String> },
    /// Remove upload folders no manifest references, and what `jobs.retention` expires:
    /// finished jobs' records and leases, queue markers of ended jobs, unused datasets.
    Gc {
        /// Leave uploads younger than this alone (they may be publishes in progress).
        #[arg(long, default_value_t = 3600)]
        grace_s: u64,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The reference training stack (torchvision + DataLoader) and petal on the same images.
    Train {
        /// Dataset folder (ImageFolder or Oxford Flowers 102).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: String,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Training images end to end (two epochs; the second is reported).
        #[arg(long, default_value_t = 256)]
        images: usize,
        /// Images for the input-pipeline measurements.
        #[arg(long, default_value_t = 300)]
        pipeline_images: usize,
        /// Bare-step measurement: steps after warm-up.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// DataLoader workers and petal loader threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// auto, cpu or cuda.
        #[arg(long, default_value = "auto")]
        device: String,
        /// fp16 autocast + loss scaling, channels_last (default: on with CUDA).
        #[arg(long)]
        mixed: Option<bool>,
        #[arg(long)]
        channels_last: Option<bool>,
        /// The Python with torch and torchvision.
        #[arg(long, env = "PETAL_PYTHON", default_value = "python3")]
        python: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Python onnxruntime session.run vs petal's engine in process vs petal over HTTP.
    Infer {
        /// A model exported by `petal export`.
        #[arg(long, value_name = "FILE")]
        onnx: PathBuf,
        /// The image every request sends.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrent clients for the throughput rows.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
        /// Batch size with batching on.
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
        #[command(flatten)]
        engine: EngineBenchArgs,
    },
    /// Images/s at fixed batch sizes: petal's engine vs Python onnxruntime and PyTorch eager.
    Batch {
        /// A model exported by `petal export` …
        #[arg(long, value_name = "FILE", conflicts_with = "arch", required_unless_present = "arch")]
        onnx: Option<PathBuf>,
        /// … or an architecture, exported here with random weights (1000 classes, 224×224).
        #[arg(long)]
        arch: Option<String>,
        /// Batch sizes, each measured as one request of that many images at a time.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
        batches: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[command(flatten)]
        engine: EngineBenchArgs,
    },
}

/// What the inference benchmarks share.
#[derive(clap::Args)]
struct EngineBenchArgs {
    /// Execution provider of petal's engine: auto, cuda or cpu; the references run on the one the
    /// engine resolved.
    #[arg(long, default_value = "auto")]
    provider: ProviderMode,
    /// The Python for the references (onnxruntime; for `bench batch` also torch and torchvision).
    #[arg(long, env = "PETAL_PYTHON", default_value = ".venv/bin/python")]
    python: PathBuf,
    #[arg(long)]
    json: bool,
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

fn serve(config: Config, role: Role) -> ExitCode {
    match actix_web::rt::System::new().block_on(petal::server::serve(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("petal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `petal probe`: 0 when `url` answers 2xx within `timeout_s`.
fn probe(url: &str, timeout_s: u64) -> ExitCode {
    let client = match reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(timeout_s)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petal probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send() {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("petal probe: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("petal probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
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
    if let Command::Serve { host, port, workers, registry, .. } = &cli.command {
        overrides.host = host.clone();
        overrides.port = *port;
        overrides.workers = *workers;
        overrides.registry_path = registry.clone();
    }
    if let Command::Worker { host, port, registry } = &cli.command {
        overrides.host = host.clone();
        overrides.port = *port;
        overrides.registry_path = registry.clone();
    }
    if let Command::Probe { url, timeout } = &cli.command {
        return probe(url, *timeout);
    }
    if let Command::Registry { registry, .. }
    | Command::Export { registry, .. }
    | Command::Classify { registry, .. }
    | Command::Publish(model_cli::PublishArgs { registry, .. })
    | Command::Eval(model_cli::EvalArgs { registry, .. }) = &cli.command
    {
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
        Command::Serve { role, .. } => serve(
            config,
            match role {
                ServeRole::All => Role::All,
                ServeRole::Api => Role::Api,
            },
        ),
        Command::Worker { .. } => serve(config, Role::Worker),
        Command::Probe { .. } => unreachable!("answered before the configuration is loaded"),
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
        Command::Registry { command, .. } => report(block_on(registry_command(&config, command))),
        Command::Finetune(args) => report(finetune_cli::run(&config, args)),
        Command::Publish(args) => report(block_on(model_cli::publish(&config, args))),
        Command::Eval(args) => report(model_cli::eval(&config, args)),
        Command::Export { arch, weights, class_names, image_size, out, publish, fp16, .. } => {
            let args = ExportArgs { arch, weights, class_names, image_size, out, publish, fp16 };
            report(block_on(export_command(&config, args)))
        }
        Command::Classify { model, onnx, top_k, json, images, .. } => {
            report(classify_command(&config, model, onnx, top_k, json, &images))
        }
        Command::Bench {
            command:
                BenchCommand::Infer {
                    onnx,
                    image,
                    seconds,
                    clients,
                    max_batch,
                    engine: EngineBenchArgs { provider, python, json },
                },
        } => {
            let b = petal::bench::InferBench {
                onnx,
                image,
                python,
                seconds,
                clients,
                max_batch,
                provider,
                ort: config.onnxruntime.clone(),
            };
            report(petal::bench::infer(&b).map(|r| {
                if json {
                    print_json(&r);
                } else {
                    print!("{}", r.to_text());
                }
            }))
        }
        Command::Bench {
            command:
                BenchCommand::Batch { onnx, arch, batches, seconds, engine: EngineBenchArgs { provider, python, json } },
        } => report((|| {
            use petal::bench::batch::{batch, BatchBench, BatchModel};
            let model = match (onnx, arch) {
                (Some(path), _) => BatchModel::Onnx(path),
                (None, Some(arch)) => BatchModel::Arch(arch.parse()?),
                (None, None) => unreachable!("clap requires --onnx or --arch"),
            };
            let b = BatchBench { model, batches, seconds, provider, python, ort: config.onnxruntime.clone() };
            let r = batch(&b)?;
            if json {
                print_json(&r);
            } else {
                print!("{}", r.to_text());
            }
            Ok(())
        })()),
        Command::Bench {
            command:
                BenchCommand::Train {
                    data,
                    backbone,
                    batch,
                    images,
                    pipeline_images,
                    steps,
                    warmup,
                    workers,
                    device,
                    mixed,
                    channels_last,
                    python,
                    json,
                },
        } => report((|| {
            let device = petal::train::device::select(&device)?;
            let b = petal::bench::train::TrainBench {
                data,
                arch: backbone.parse()?,
                batch,
                images,
                pipeline_images,
                python,
                device,
                workers,
                steps,
                warmup,
                mixed: mixed.unwrap_or(device.is_cuda()),
                channels_last: channels_last.unwrap_or(device.is_cuda()),
            };
            let r = petal::bench::train::train(&b)?;
            if json {
                print_json(&r);
            } else {
                print!("{}", r.to_text());
            }
            Ok(())
        })()),
        Command::Weights { command, .. } => report(weights_command(&config, command)),
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
            let stored = block_on(store.fetch(entry, config.weights.mirror.as_deref()))?;
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

async fn registry_command(config: &Config, command: RegistryCommand) -> petal::Result<()> {
    use petal::registry::{ModelRef, NewArtifact, Promotion, Provenance, Registry};

    let registry = Registry::open(&config.registry)?;
    match command {
        RegistryCommand::Ls { model: None } => {
            println!("{:<32} {:>8}  aliases", "model", "versions");
            for m in registry.models().await? {
                let versions = registry.versions(&m).await?;
                let mut aliases = Vec::new();
                for a in registry.aliases(&m).await? {
                    if let Some(e) = registry.current(&m, &a).await? {
                        aliases.push(format!("{a}→{}", e.version));
                    }
                }
                println!("{m:<32} {:>8}  {}", versions.len(), aliases.join(" "));
            }
            println!("registry: {}", registry.location());
        }
        RegistryCommand::Ls { model: Some(m) } => {
            let mut pointing: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
            for a in registry.aliases(&m).await? {
                if let Some(e) = registry.current(&m, &a).await? {
                    pointing.entry(e.version).or_default().push(a);
                }
            }
            println!("{:>7}  {:<20} {:>9}  {:<24} aliases", "version", "created", "artifacts", "best");
            for v in registry.versions(&m).await? {
                let man = registry.manifest(&m, v).await?;
                let best: Vec<String> =
                    man.provenance.metrics.best.iter().map(|(k, x)| format!("{k}={x:.4}")).collect();
                println!(
                    "{v:>7}  {:<20} {:>9}  {:<24} {}",
                    man.created_at,
                    man.artifacts.len(),
                    best.join(","),
                    pointing.get(&v).map(|a| a.join(" ")).unwrap_or_default()
                );
            }
        }
        RegistryCommand::Show { model, card } => {
            let r: ModelRef = model.parse()?;
            let v = registry.resolve(&r).await?;
            let man = registry.manifest(r.model(), v).await?;
            if card {
                print!("{}", man.card());
            } else {
                print_json(&man);
            }
        }
        RegistryCommand::Publish { model, files, provenance } => {
            let provenance: Provenance = match provenance {
                Some(p) => {
                    let bytes = std::fs::read(&p)?;
                    serde_json::from_slice(&bytes).map_err(|e| {
                        petal::Error::invalid_request(format!("{}: not a provenance record: {e}", p.display()))
                    })?
                }
                None => Provenance::default(),
            };
            let mut artifacts = Vec::new();
            for f in &files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                artifacts.push(NewArtifact::new(name, std::fs::read(f)?));
            }
            let man = registry.publish(&model, artifacts, provenance, |_| {}).await?;
            println!("published {} version {}", man.model, man.version);
        }
        RegistryCommand::Promote { model, version, alias, if_match, by, reason, acknowledge_terms } => {
            let p = Promotion {
                version,
                if_match,
                by: by.or_else(|| std::env::var("USER").ok()).unwrap_or_default(),
                reason,
                acknowledge_terms,
            };
            let e = registry.promote(&model, &alias, &p, config.registry.usage).await?;
            println!(
                "{}@{} → version {} (seq {}, was {})",
                e.model,
                e.alias,
                e.version,
                e.seq,
                e.from.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
            );
        }
        RegistryCommand::History { model, alias } => {
            let h = registry.history(&model, &alias).await?;
            if h.is_empty() {
                return Err(petal::Error::new(petal::ErrorCode::NotFound, format!("{model} has no alias {alias}")));
            }
            print_json(&h);
        }
        RegistryCommand::Verify { model } => {
            let targets: Vec<(String, u64)> = match model {
                Some(m) => {
                    let r: ModelRef = m.parse()?;
                    match r {
                        ModelRef::Latest(m) => {
                            registry.versions(&m).await?.into_iter().map(|v| (m.clone(), v)).collect()
                        }
                        other => vec![(other.model().to_string(), registry.resolve(&other).await?)],
                    }
                }
                None => {
                    let mut all = Vec::new();
                    for m in registry.models().await? {
                        all.extend(registry.versions(&m).await?.into_iter().map(|v| (m.clone(), v)));
                    }
                    all
                }
            };
            for (m, v) in &targets {
                let man = registry.verify(m, *v).await?;
                println!("ok  {m}:{v}  {} artifacts", man.artifacts.len());
            }
            println!("{} versions verified", targets.len());
        }
        RegistryCommand::Gc { grace_s, dry_run } => {
            let removed = registry.gc(std::time::Duration::from_secs(grace_s), dry_run).await?;
            for r in &removed {
                println!("{} {r}", if dry_run { "would remove" } else { "removed" });
            }
            println!("{} orphaned objects", removed.len());
            let expired = registry.expire(&config.jobs.retention, dry_run).await?;
            for r in expired.jobs.iter().chain(&expired.leases).chain(&expired.queue).chain(&expired.datasets) {
                println!("{} {r}", if dry_run { "would remove" } else { "removed" });
            }
            println!(
                "{} expired objects: {} job records, {} lease records, {} queue markers, {} dataset objects",
                expired.total(),
                expired.jobs.len(),
                expired.leases.len(),
                expired.queue.len(),
                expired.datasets.len()
            );
        }
    }
    Ok(())
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

/// Runs a future to completion on a fresh tokio runtime (the CLI's async commands).
fn block_on<T>(f: impl std::future::Future<Output = petal::Result<T>>) -> petal::Result<T> {
    tokio::runtime::Runtime::new().map_err(|e| petal::Error::internal(e.to_string()))?.block_on(f)
}

fn report(result: petal::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petal: {} [{}]", e.message, e.code.as_str());
            ExitCode::FAILURE
        }
    }
}

fn read_class_names(path: &std::path::Path) -> petal::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| petal::Error::invalid_request(format!("{}: {e}", path.display())))
    } else {
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }
}

struct ExportArgs {
    arch: String,
    weights: PathBuf,
    class_names: Option<PathBuf>,
    image_size: Option<i64>,
    out: Option<PathBuf>,
    publish: Option<String>,
    fp16: bool,
}

async fn export_command(config: &Config, args: ExportArgs) -> petal::Result<()> {
    let ExportArgs { arch, weights: weights_file, class_names, image_size, out, publish, fp16 } = args;
    use petal::export::onnx::{export_weights, ExportedWeights};
    use petal::registry::manifest::BaseWeights;
    use petal::registry::{NewArtifact, Provenance, Registry};
    use petal::train::arch::Arch;

    let arch: Arch = arch.parse()?;
    let bytes = std::fs::read(&weights_file)?;
    let names = class_names.as_deref().map(read_class_names).transpose()?;
    let ExportedWeights { onnx, sha256, classes, image_size, catalog } =
        export_weights(arch, &bytes, names, image_size, publish.clone(), fp16)?;
    if let Some(out) = &out {
        std::fs::write(out, &onnx)?;
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
            command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
            ..Default::default()
        };
        let m = registry.publish(&name, vec![NewArtifact::new("model.onnx", onnx)], provenance, |_| {}).await?;
        println!("published {} version {}", m.model, m.version);
    }
    Ok(())
}

fn classify_command(
    config: &Config,
    model: Option<String>,
    onnx: Option<PathBuf>,
    top_k: usize,
    json: bool,
    images: &[PathBuf],
) -> petal::Result<()> {
    let handle = model_cli::load_handle(config, model.as_deref(), onnx.as_ref())?;
    let (name, version) = (handle.info.name.clone(), handle.info.version);
    let mut results = Vec::new();
    for path in images {
        let input = handle.preprocess(&std::fs::read(path)?)?;
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
