//! `petal registry`: list, show, publish, promote, history, verify, gc.
use std::path::PathBuf;

use clap::Subcommand;

use super::invocation::print_json;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::foundation::files;
use crate::records::names::{AliasName, ModelName};
use crate::registry::{ModelRef, NewArtifact, Promotion, Provenance, Registry};

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Local registry folder (registry.path; selects the local backend).
    #[arg(long, global = true, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Subcommand)]
pub enum RegistryCommand {
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

pub(super) async fn run(config: &Config, command: RegistryCommand) -> Result<()> {
    let registry = Registry::open(&config.registry)?;
    match command {
        RegistryCommand::Ls { model: None } => list_models(&registry).await,
        RegistryCommand::Ls { model: Some(m) } => list_versions(&registry, m).await,
        RegistryCommand::Show { model, card } => show(&registry, model, card).await,
        RegistryCommand::Publish { model, files, provenance } => publish(&registry, model, files, provenance).await,
        RegistryCommand::Promote { model, version, alias, if_match, by, reason, acknowledge_terms } => {
            let p = Promotion { version, if_match, by: super::default_actor(by), reason, acknowledge_terms };
            promote(&registry, config, &model, &alias, &p).await
        }
        RegistryCommand::History { model, alias } => history(&registry, model, alias).await,
        RegistryCommand::Verify { model } => verify(&registry, model).await,
        RegistryCommand::Gc { grace_s, dry_run } => gc(&registry, config, grace_s, dry_run).await,
    }
}

async fn list_models(registry: &Registry) -> Result<()> {
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
    Ok(())
}

async fn list_versions(registry: &Registry, m: String) -> Result<()> {
    let mut pointing: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for a in registry.aliases(&m).await? {
        if let Some(e) = registry.current(&m, &a).await? {
            pointing.entry(e.version).or_default().push(a);
        }
    }
    println!("{:>7}  {:<20} {:>9}  {:<24} aliases", "version", "created", "artifacts", "best");
    for v in registry.versions(&m).await? {
        let man = registry.manifest(&m, v).await?;
        let best: Vec<String> = man.provenance.metrics.best.iter().map(|(k, x)| format!("{k}={x:.4}")).collect();
        println!(
            "{v:>7}  {:<20} {:>9}  {:<24} {}",
            man.created_at,
            man.artifacts.len(),
            best.join(","),
            pointing.get(&v).map(|a| a.join(" ")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn show(registry: &Registry, model: String, card: bool) -> Result<()> {
    let r: ModelRef = model.parse()?;
    let v = registry.resolve(&r).await?;
    let man = registry.manifest(r.model(), v).await?;
    if card {
        print!("{}", man.card());
    } else {
        print_json(&man);
    }
    Ok(())
}

async fn publish(registry: &Registry, model: String, files: Vec<PathBuf>, provenance: Option<PathBuf>) -> Result<()> {
    let provenance: Provenance = match provenance {
        Some(p) => {
            let bytes = files::read(&p)?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid_request(format!("{}: not a provenance record: {e}", p.display())))?
        }
        None => Provenance::default(),
    };
    let mut artifacts = Vec::new();
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        artifacts.push(NewArtifact::new(name, files::read(f)?));
    }
    let man = registry.publish(&ModelName::new(model)?, artifacts, provenance, |_| {}).await?;
    println!("published {} version {}", man.model, man.version);
    Ok(())
}

async fn promote(registry: &Registry, config: &Config, model: &str, alias: &str, p: &Promotion) -> Result<()> {
    let e = registry.promote(&ModelName::new(model)?, &AliasName::new(alias)?, p, config.registry.usage).await?;
    println!(
        "{}@{} → version {} (seq {}, was {})",
        e.model,
        e.alias,
        e.version,
        e.seq,
        e.from.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
    );
    Ok(())
}

async fn history(registry: &Registry, model: String, alias: String) -> Result<()> {
    let h = registry.history(&model, &alias).await?;
    if h.is_empty() {
        return Err(Error::new(ErrorCode::NotFound, format!("{model} has no alias {alias}")));
    }
    print_json(&h);
    Ok(())
}

async fn verify(registry: &Registry, model: Option<String>) -> Result<()> {
    let targets: Vec<(String, u64)> = match model {
        Some(m) => {
            let r: ModelRef = m.parse()?;
            match r {
                ModelRef::Latest(m) => registry.versions(&m).await?.into_iter().map(|v| (m.clone(), v)).collect(),
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
    Ok(())
}

async fn gc(registry: &Registry, config: &Config, grace_s: u64, dry_run: bool) -> Result<()> {
    let removed = registry.gc(std::time::Duration::from_secs(grace_s), dry_run).await?;
    for r in &removed {
        println!("{} {r}", if dry_run { "would remove" } else { "removed" });
    }
    println!("{} orphaned objects", removed.len());
    let expired = registry.expire(&config.jobs.retention, config.jobs.idempotency_ttl_s, dry_run).await?;
    let all = [
        &expired.jobs,
        &expired.leases,
        &expired.queue,
        &expired.checkpoints,
        &expired.idempotency_keys,
        &expired.datasets,
    ];
    for r in all.into_iter().flatten() {
        println!("{} {r}", if dry_run { "would remove" } else { "removed" });
    }
    println!(
        "{} expired objects: {} job records, {} lease records, {} queue markers, {} training checkpoints, {} \
         Idempotency-Keys, {} dataset objects",
        expired.total(),
        expired.jobs.len(),
        expired.leases.len(),
        expired.queue.len(),
        expired.checkpoints.len(),
        expired.idempotency_keys.len(),
        expired.datasets.len()
    );
    Ok(())
}
