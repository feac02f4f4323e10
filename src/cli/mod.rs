//! The `petal` command line, one file per subcommand, each with its own clap arguments and a
//! `run`. This module holds the global flags, the configuration layering (defaults < file < env <
//! flags) and the dispatch; what the commands share (reporting, JSON output, the recorded command
//! line, who acts) lives in `invocation`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, Overrides};

pub mod bench;
mod classify;
mod doctor;
mod eval;
mod export;
mod finetune;
mod invocation;
mod openapi;
mod print_config;
mod probe;
mod publish;
mod registry;
mod serve;
mod weights;

pub use invocation::{default_actor, recorded_command};

#[derive(Parser)]
#[command(name = "petal", version, about = "Turns a labelled image dataset into a served image classifier")]
pub struct Cli {
    /// TOML configuration file (else $PETAL_CONFIG). Layers: defaults < file < PETAL__SECTION__KEY env < flags.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `petal=debug` (log.level).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (defaults to 127.0.0.1:8080 and the local registry in var/registry).
    Serve(serve::ServeArgs),
    /// Train jobs of the registry's shared queue, each under a lease renewed by heartbeat; serve
    /// only /healthz, /readyz and /metrics. SIGTERM stops the running job at its next step and
    /// releases it to another worker.
    Worker(serve::WorkerArgs),
    /// GET a URL (default: this host's /healthz); exit 0 on a 2xx answer, else 1. For container
    /// health checks, where there is no curl.
    Probe(probe::ProbeArgs),
    /// Report versions, devices, execution providers and the registry; exits 1 when something is wrong.
    Doctor(doctor::DoctorArgs),
    /// Print the effective configuration (after every layer) as JSON.
    Config,
    /// The model registry: list, show, publish, promote, history, verify, gc.
    Registry(registry::RegistryArgs),
    /// Export a backbone with its weights to ONNX, optionally publishing it into the registry.
    Export(export::ExportArgs),
    /// Classify images with a model from the registry (or an ONNX file), without the server.
    Classify(classify::ClassifyArgs),
    /// Fine-tune backbones on a dataset with the two-phase recipe (no server needed).
    Finetune(finetune::FinetuneArgs),
    /// Export a fine-tuning run's winner to ONNX and publish it with its full provenance.
    Publish(publish::PublishArgs),
    /// Top-1/top-5 accuracy and confusions of a model on labelled images, through the serving path.
    Eval(eval::EvalArgs),
    /// Benchmarks, each against its reference measured in the same run.
    Bench(bench::BenchArgs),
    /// Pretrained weights: the catalog, and the local cache (weights.cache).
    Weights(weights::WeightsArgs),
    /// Write the OpenAPI document.
    Openapi(openapi::OpenapiArgs),
}

impl Cli {
    /// Loads the configuration with this command line's flags on top, then runs the subcommand.
    pub fn run(self) -> ExitCode {
        if let Command::Probe(args) = &self.command {
            return probe::run(args); // needs no configuration
        }
        let mut overrides =
            Overrides { log_level: self.log_level.clone(), log_format: self.log_format, ..Default::default() };
        self.command.override_config(&mut overrides);
        let config = match Config::load(self.config.as_deref(), &overrides) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("petal: {e}");
                return ExitCode::from(2);
            }
        };
        crate::telemetry::init(&config.log);
        crate::train::tensor_cache::set_limit(config.jobs.tensor_cache_bytes);
        self.command.run(config)
    }
}

impl Command {
    /// The configuration keys this subcommand's flags set.
    fn override_config(&self, o: &mut Overrides) {
        match self {
            Command::Serve(a) => a.override_config(o),
            Command::Worker(a) => a.override_config(o),
            Command::Weights(a) => a.override_config(o),
            Command::Registry(registry::RegistryArgs { registry, .. })
            | Command::Export(export::ExportArgs { registry, .. })
            | Command::Classify(classify::ClassifyArgs { registry, .. })
            | Command::Publish(publish::PublishArgs { registry, .. })
            | Command::Eval(eval::EvalArgs { registry, .. }) => o.registry_path = registry.clone(),
            _ => {}
        }
    }

    fn run(self, config: Config) -> ExitCode {
        use invocation::report;
        match self {
            Command::Serve(a) => serve::run(config, a.role),
            Command::Worker(_) => serve::run(config, crate::config::Role::Worker),
            Command::Probe(a) => probe::run(&a),
            Command::Doctor(a) => doctor::run(&config, &a),
            Command::Config => print_config::run(&config),
            Command::Registry(a) => report(invocation::block_on(registry::run(&config, a.command))),
            Command::Export(a) => report(invocation::block_on(export::run(&config, a))),
            Command::Classify(a) => report(classify::run(&config, a)),
            Command::Finetune(a) => report(finetune::run(&config, a)),
            Command::Publish(a) => report(publish::run(&config, a)),
            Command::Eval(a) => report(eval::run(&config, a)),
            Command::Bench(a) => report(bench::run(&config, a)),
            Command::Weights(a) => report(weights::run(&config, a.command)),
            Command::Openapi(a) => openapi::run(&a),
        }
    }
}
