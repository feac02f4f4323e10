//! `petal serve` and `petal worker`: the HTTP server in one of its roles.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, Overrides, Role};

#[derive(clap::Args)]
pub struct ServeArgs {
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
    pub role: Role,
}

impl ServeArgs {
    pub(super) fn override_config(&self, o: &mut Overrides) {
        o.host = self.host.clone();
        o.port = self.port;
        o.workers = self.workers;
        o.registry_path = self.registry.clone();
    }
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Address of the health endpoints (server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port of the health endpoints; 0 picks a free one (server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Local registry folder (registry.path), for workers on one machine.
    #[arg(long, value_name = "DIR")]
    registry: Option<PathBuf>,
}

impl WorkerArgs {
    pub(super) fn override_config(&self, o: &mut Overrides) {
        o.host = self.host.clone();
        o.port = self.port;
        o.registry_path = self.registry.clone();
    }
}

/// Serves until SIGTERM or SIGINT.
pub(super) fn run(config: Config, role: Role) -> ExitCode {
    match actix_web::rt::System::new().block_on(crate::server::serve(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("petal: {e}");
            ExitCode::FAILURE
        }
    }
}
