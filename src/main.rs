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
    /// Write the OpenAPI document.
    Openapi {
        /// Output file; `-` for standard output.
        #[arg(long, default_value = "openapi/openapi.json")]
        out: PathBuf,
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
