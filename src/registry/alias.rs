//! Aliases (`production`, `staging`, any name): moved only by an explicit promotion, with
//! compare-and-swap, and every move kept as an audit entry.
//!
//! Each move is its own object `models/{model}/aliases/{alias}/{seq:012}.json`, written with a
//! conditional create (`If-None-Match: *` on S3, a no-clobber link on a local folder). The entry
//! with the highest `seq` is the alias's target; `seq` is the alias's ETag. Two promotions that
//! start from the same state race for the same `seq`: exactly one create succeeds, the other gets
//! a conflict — nobody wins silently, and no history entry is ever overwritten.
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Usage;
use crate::error::{Error, ErrorCode, Result};
use crate::records::names::{self, AliasName, ModelName};
use crate::registry::{layout, store_error, Registry};

/// One move of an alias.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(example = json!({"model": "flowers102", "alias": "production", "seq": 1, "from": null, "version": 1,
    "at": "2026-11-28T03:20:00Z", "by": "ops", "reason": "first", "promotion_id": "5d0c…"}))]
pub struct AliasEntry {
    pub model: String,
    pub alias: String,
    /// Position in the alias's history, from 1; the alias's ETag.
    pub seq: u64,
    /// The version the alias pointed at before (none for the first move).
    pub from: Option<u64>,
    /// The version it points at from now on.
    pub version: u64,
    pub at: String,
    pub by: String,
    pub reason: String,
    /// Non-commercial terms the caller acknowledged for this move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_terms: Vec<String>,
    /// Unique id of the promotion that wrote this entry.
    pub promotion_id: String,
}

/// A request to move an alias.
#[derive(Debug, Clone, Default)]
pub struct Promotion {
    pub version: u64,
    /// Only move if the alias is still at this `seq` (0: the alias must not exist yet).
    pub if_match: Option<u64>,
    pub by: String,
    pub reason: String,
    /// Accept the non-commercial terms of the model's lineage under a `commercial` policy.
    pub acknowledge_terms: bool,
}

impl Registry {
    /// The aliases a model has.
    pub async fn aliases(&self, model: &str) -> Result<Vec<String>> {
        names::check("model", model)?;
        let listed = self
            .store
            .list_with_delimiter(Some(&layout::aliases(model)))
            .await
            .map_err(|e| store_error("listing aliases", e))?;
        let mut out: Vec<String> = listed.common_prefixes.iter().filter_map(layout::name_of).collect();
        out.sort();
        Ok(out)
    }

    /// Every move of an alias, oldest first.
    pub async fn history(&self, model: &str, alias: &str) -> Result<Vec<AliasEntry>> {
        names::check("model", model)?;
        names::check("alias", alias)?;
        let metas: Vec<_> = self.list_all(&layout::alias(model, alias), "listing alias history").await?;
        let mut entries = Vec::with_capacity(metas.len());
        for m in metas {
            if m.location.filename().is_some_and(|f| f.ends_with(".json")) {
                let bytes = self
                    .store
                    .get(&m.location)
                    .await
                    .map_err(|e| store_error("reading alias history", e))?
                    .bytes()
                    .await
                    .map_err(|e| store_error("reading alias history", e))?;
                let entry: AliasEntry = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(ErrorCode::IntegrityError, format!("alias entry {} is unreadable: {e}", m.location))
                })?;
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    /// Where an alias points now.
    pub async fn current(&self, model: &str, alias: &str) -> Result<Option<AliasEntry>> {
        Ok(self.history(model, alias).await?.pop())
    }

    pub(crate) async fn put_alias_entry(&self, entry: &AliasEntry) -> Result<bool> {
        let path = layout::alias_move(&entry.model, &entry.alias, entry.seq);
        let bytes = serde_json::to_vec_pretty(entry).expect("entry serializes");
        match self.store.put_opts(&path, bytes.into(), PutOptions::from(PutMode::Create)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(store_error("writing the alias entry", e)),
        }
    }

    /// Moves `alias` of `model` to `p.version`. Under a `commercial` usage policy, a model whose
    /// lineage carries non-commercial terms is refused unless `p.acknowledge_terms`.
    pub async fn promote(
        &self,
        model: &ModelName,
        alias: &AliasName,
        p: &Promotion,
        usage: Usage,
    ) -> Result<AliasEntry> {
        let manifest = self.manifest(model, p.version).await?;
        let restricted = manifest.non_commercial();
        if usage == Usage::Commercial && !restricted.is_empty() && !p.acknowledge_terms {
            let list: Vec<String> = restricted.iter().map(|r| format!("{}: {}", r.component, r.terms)).collect();
            return Err(Error::new(
                ErrorCode::LicenceNotAcknowledged,
                format!(
                    "this deployment's use is commercial, and {model} version {} carries non-commercial terms; \
                     promote again acknowledging them to proceed. {}",
                    p.version,
                    list.join(" | ")
                ),
            ));
        }
        let current = self.current(model, alias).await?;
        let current_seq = current.as_ref().map(|e| e.seq).unwrap_or(0);
        if let Some(expected) = p.if_match {
            if expected != current_seq {
                return Err(Error::new(
                    ErrorCode::AliasPreconditionFailed,
                    format!("{model}@{alias} is at seq {current_seq}, not {expected}: it moved since you read it"),
                ));
            }
        }
        let entry = AliasEntry {
            model: model.to_string(),
            alias: alias.to_string(),
            seq: current_seq + 1,
            from: current.map(|e| e.version),
            version: p.version,
            at: crate::foundation::clock::now_rfc3339(),
            by: if p.by.is_empty() { "unknown".into() } else { p.by.clone() },
            reason: p.reason.clone(),
            acknowledged_terms: if p.acknowledge_terms {
                restricted.iter().map(|r| format!("{}: {}", r.component, r.terms)).collect()
            } else {
                Vec::new()
            },
            promotion_id: uuid::Uuid::new_v4().to_string(),
        };
        let conflict = || {
            Error::new(
                ErrorCode::AliasConflict,
                format!(
                    "another promotion of {model}@{alias} won the race for seq {}; read it again and retry",
                    entry.seq
                ),
            )
        };
        if !self.put_alias_entry(&entry).await? {
            return Err(conflict());
        }
        // Guard for stores whose conditional create is not atomic: the entry must be ours.
        let stored = self.history(model, alias).await?.into_iter().find(|e| e.seq == entry.seq);
        match stored {
            Some(e) if e.promotion_id == entry.promotion_id => Ok(entry),
            _ => Err(conflict()),
        }
    }
}
