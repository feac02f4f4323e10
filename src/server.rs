//! `petal serve` and `petal worker`: the actix-web server, its start-up checks and graceful
//! shutdown. A worker serves only `/healthz`, `/readyz` and `/metrics`.

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api::{self, AppState};
use crate::config::Config;
use crate::config::Role;

/// Binds, serves until SIGTERM/SIGINT, then drains in-flight requests (up to
/// `server.shutdown_timeout_s`) and returns; a worker first stops its running jobs and releases
/// them to other workers. Must run inside an actix system.
pub async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let state = web::Data::new(AppState::new(config.clone(), role));
    let factory_state = state.clone();
    let mut server = HttpServer::new(move || {
        let app = App::new().app_data(factory_state.clone());
        let app =
            if role == Role::Worker { app.configure(api::configure_worker) } else { app.configure(api::configure) };
        app.wrap(from_fn(api::auth::authorize)).wrap(from_fn(api::observe::observe))
    })
    .on_connect(api::connection::on_connect)
    .shutdown_timeout(config.server.shutdown_timeout_s)
    .disable_signals();
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let host = if role == Role::Worker { config.server.host.clone() } else { bind_host(&config) };
    let server = server
        .bind((host.as_str(), config.server.port))
        .map_err(|e| anyhow::anyhow!("cannot bind {host}:{}: {e}", config.server.port))?;
    for addr in server.addrs() {
        if role == Role::Worker {
            tracing::info!(addr = %addr, "listening on http://{addr}");
        } else {
            tracing::info!(addr = %addr, "listening on http://{addr} (the web console: http://{addr}/)");
        }
    }
    let server = server.run();
    let handle = server.handle();

    actix_web::rt::spawn(startup_checks(state.clone()));
    let shutdown_state = state.clone();
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested: refusing readiness, draining in-flight requests");
        shutdown_state.readiness.set("shutdown", false, "the server is shutting down");
        if let Some(runner) = shutdown_state.runner.get().filter(|r| r.role() != Role::Api) {
            tracing::info!(
                "stopping the running jobs at their next step, with a checkpoint, for another worker or the next start"
            );
            // Within the worker Deployment's 120 s grace period (k8s/base), with time left to exit.
            runner.shutdown(std::time::Duration::from_secs(100)).await;
        }
        handle.stop(true).await;
    });

    server.await?;
    tracing::info!("stopped");
    Ok(())
}

/// The address to bind: `server.host`, unless no API token is configured — then loopback only.
fn bind_host(config: &Config) -> String {
    let host = config.server.host.clone();
    if !config.auth.tokens.is_empty() {
        return host;
    }
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        tracing::warn!("no API token configured (auth.tokens): the API is open, and served on loopback only");
        host
    } else {
        tracing::warn!(
            configured = %host,
            "no API token configured (auth.tokens): binding to 127.0.0.1 only instead of {host}; configure tokens to serve other hosts"
        );
        "127.0.0.1".into()
    }
}

/// Runs each readiness check once at start; `/readyz` reports them.
async fn startup_checks(state: web::Data<AppState>) {
    // A worker neither classifies nor loads models: onnxruntime is not its business.
    let serves = state.role != Role::Worker;
    if serves {
        check_onnxruntime(&state).await;
    }
    match open_and_seed_registry(&state).await {
        Ok(detail) => {
            state.readiness.set("registry", true, detail);
            start_jobs(&state).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "registry unavailable");
            state.readiness.set("registry", false, e.message)
        }
    }
    if serves {
        load_models(&state).await;
        if state.config.inference.reload_poll_ms > 0 && !state.config.inference.models.is_empty() {
            actix_web::rt::spawn(follow_aliases(state.clone()));
        }
    }
    state.readiness.set("startup", true, "start-up checks done");
    let report = state.readiness.report();
    state.metrics.ready.set(i64::from(report.ready));
    if report.ready {
        tracing::info!("ready");
    } else {
        tracing::warn!(reasons = ?report.reasons, "not ready");
    }
}

async fn check_onnxruntime(state: &web::Data<AppState>) {
    let ort_config = state.config.onnxruntime.clone();
    let ort =
        web::block(move || crate::infer::runtime::OrtRuntime::init(&ort_config).map(|rt| rt.version.clone())).await;
    match ort {
        Ok(Ok(version)) => state.readiness.set("onnxruntime", true, format!("onnxruntime {version} loaded")),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "onnxruntime unavailable");
            state.readiness.set("onnxruntime", false, e.message)
        }
        Err(e) => state.readiness.set("onnxruntime", false, format!("check failed: {e}")),
    }
}

/// Starts the job runner (recovering the registry's jobs); a readiness check.
async fn start_jobs(state: &web::Data<AppState>) {
    let started = match state.registry() {
        Ok(registry) => crate::jobs::runner::Runner::start(&state.config, registry, state.role).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(runner) => {
            let _ = state.runner.set(runner);
            let workers = state.config.jobs.workers;
            let detail = match state.role {
                Role::All => format!("{workers} job worker(s) running"),
                Role::Api => format!("jobs go to the shared queue of {}", runner_location(state)),
                Role::Worker => format!(
                    "{workers} job worker(s) of {} polling the shared queue of {}",
                    state.runner.get().map_or("", |r| r.name()),
                    runner_location(state)
                ),
            };
            state.readiness.set("jobs", true, detail);
            if state.role != Role::Worker && state.config.jobs.retention.interval_s > 0 {
                actix_web::rt::spawn(expire_periodically(state.clone()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the job runner");
            state.readiness.set("jobs", false, format!("{} [{}]", e.message, e.code.as_str()));
        }
    }
}

/// Applies `jobs.retention` every `interval_s` (the first time one interval after start).
async fn expire_periodically(state: web::Data<AppState>) {
    let policy = state.config.jobs.retention.clone();
    loop {
        actix_web::rt::time::sleep(std::time::Duration::from_secs(policy.interval_s)).await;
        let Ok(registry) = state.registry() else { continue };
        match registry.expire(&policy, state.config.jobs.idempotency_ttl_s, false).await {
            Ok(r) if r.total() > 0 => tracing::info!(
                jobs = r.jobs.len(),
                leases = r.leases.len(),
                queue = r.queue.len(),
                checkpoints = r.checkpoints.len(),
                idempotency_keys = r.idempotency_keys.len(),
                datasets = r.datasets.len(),
                "retention: removed expired records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention: cannot apply jobs.retention now"),
        }
    }
}

fn runner_location(state: &AppState) -> String {
    state.runner.get().map(|r| r.registry().location().to_string()).unwrap_or_default()
}

/// Loads, warms up and starts serving every configured model; each is a readiness check.
async fn load_models(state: &web::Data<AppState>) {
    for reference in state.config.inference.models.clone() {
        let check = format!("model {reference}");
        state.readiness.set(&check, false, "loading");
        match load_model(state, &reference).await {
            Ok(handle) => serve_handle(state, &reference, handle, None),
            Err(e) => {
                tracing::error!(model = %reference, error = %e, "cannot serve model");
                state.readiness.set(&check, false, format!("{} [{}]", e.message, e.code.as_str()));
            }
        }
    }
}

/// Starts serving `handle` for `reference` (replacing `previous`): serving set, metrics, readiness.
fn serve_handle(
    state: &web::Data<AppState>,
    reference: &str,
    handle: crate::infer::engine::ModelHandle,
    previous: Option<&crate::infer::engine::ModelHandle>,
) {
    let info = handle.info.clone();
    if let Some(old) = previous {
        tracing::info!(model = %reference, from = old.info.version, to = info.version, "swapping in the new version");
        state.metrics.model_unloaded(&old.info.name, old.info.version, old.info.provider);
    } else {
        tracing::info!(model = %info.name, version = info.version, provider = info.provider, "serving");
    }
    state.metrics.model_loaded(&info.name, info.version, info.provider);
    state.serving.put(handle);
    let detail = format!(
        "{} version {} on {}, warmed up at batch 1 and {}",
        info.name, info.version, info.provider, info.max_batch
    );
    state.readiness.set(&format!("model {reference}"), true, detail);
}

/// Swaps in the version an alias (or "latest") points at when it moves. The old version keeps
/// answering until the new one is loaded and warmed up; requests already queued on the old one
/// finish there.
async fn follow_aliases(state: web::Data<AppState>) {
    let period = std::time::Duration::from_millis(state.config.inference.reload_poll_ms);
    loop {
        actix_web::rt::time::sleep(period).await;
        for reference in state.config.inference.models.clone() {
            let Ok(r) = reference.parse::<crate::registry::ModelRef>() else { continue };
            if matches!(r, crate::registry::ModelRef::Version(..)) {
                continue;
            }
            let Ok(current) = state.serving.get(Some(r.model())) else { continue };
            let target = match state.registry() {
                Ok(registry) => registry.resolve(&r).await,
                Err(e) => Err(e),
            };
            match target {
                Ok(v) if v != current.info.version => match load_model(&state, &reference).await {
                    Ok(handle) => serve_handle(&state, &reference, handle, Some(&current)),
                    Err(e) => {
                        tracing::error!(model = %reference, version = v, error = %e, "cannot load the new version; still serving the old one")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(model = %reference, error = %e, "cannot check the registry for a moved alias"),
            }
        }
    }
}

async fn load_model(state: &web::Data<AppState>, reference: &str) -> crate::Result<crate::infer::engine::ModelHandle> {
    let r: crate::registry::ModelRef = reference.parse()?;
    let registry = state.registry()?;
    let version = registry.resolve(&r).await?;
    crate::infer::load::load_version(&state.config, &registry, r.model(), version).await
}

/// Opens the registry, proves it writable, and seeds it from `registry.seed`.
async fn open_and_seed_registry(state: &AppState) -> crate::Result<String> {
    let config = &state.config;
    let registry = state.registry()?;
    registry.check().await?;
    for (model, version) in registry.seed_from_config(&config.registry).await? {
        tracing::info!(model, version, seed = %config.registry.seed.display(), "seeded the registry");
    }
    Ok(format!("{} is writable", registry.location()))
}

/// Waits for SIGTERM or SIGINT and names it.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
