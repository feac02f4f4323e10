//! The registry's dataset area: uploaded archives, content-addressed by their sha256
//! (`datasets/{sha256}/archive`), each with a record of what it is (`datasets/{sha256}/dataset.json`).
//! Archives move between disk and the store in parts, never whole in memory.
use std::io::Read;
use std::path::Path;

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{layout, store_error, Registry};
use crate::error::{Error, ErrorCode, Result};
use crate::records::dataset::DatasetSummary;

/// What a stored dataset is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StoredDataset {
    /// sha256 of the archive: the dataset's id.
    pub sha256: String,
    pub size: u64,
    pub name: String,
    /// The terms given at upload, verbatim.
    pub terms: Option<String>,
    /// What petal read in it (layout, split, classes, counts, content digest).
    pub summary: DatasetSummary,
    pub uploaded_at: String,
}

const PART: usize = 8 << 20;

/// The terms a model trained on a dataset carries: the first recorded terms of the dataset stand,
/// and a later job's spec may add to them, never remove or replace them (omitting terms on a
/// reused dataset does not make it unrestricted).
pub fn combined_terms(recorded: Option<&str>, later: Option<&str>) -> Option<String> {
    let clean = |t: Option<&str>| t.map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
    match (clean(recorded), clean(later)) {
        (Some(a), Some(b)) if a == b => Some(a),
        (Some(a), Some(b)) => Some(format!("{a}; in addition, as given by a later job: {b}")),
        (a, b) => a.or(b),
    }
}

/// A dataset id: 64 lowercase hex digits.
pub fn check_sha256(s: &str) -> Result<()> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(Error::invalid_request(format!("{s:?} is not a dataset sha256 (64 lowercase hex digits)")))
    }
}

impl Registry {
    /// Stores the archive at `file` and its record, unless a dataset with this sha256 is already
    /// there (uploads are idempotent). The record is written last: a dataset without one does not
    /// exist.
    pub async fn put_dataset(&self, file: &Path, record: &StoredDataset) -> Result<()> {
        check_sha256(&record.sha256)?;
        if self.dataset(&record.sha256).await.is_ok() {
            return Ok(());
        }
        let what = format!("dataset {}", record.sha256);
        let mut upload = self
            .store
            .put_multipart(&layout::dataset_archive(&record.sha256))
            .await
            .map_err(|e| store_error(&what, e))?;
        let sent: Result<()> = async {
            let mut f = std::fs::File::open(file).map_err(|e| Error::io("opening", file, e))?;
            loop {
                let mut buf = vec![0u8; PART];
                let mut n = 0;
                while n < PART {
                    match f.read(&mut buf[n..]).map_err(|e| Error::io("reading", file, e))? {
                        0 => break,
                        k => n += k,
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                upload.put_part(PutPayload::from(buf)).await.map_err(|e| store_error(&what, e))?;
            }
        }
        .await;
        if let Err(e) = sent {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload.complete().await.map_err(|e| store_error(&what, e))?;
        let bytes = serde_json::to_vec_pretty(record).expect("record serializes");
        match self
            .store
            .put_opts(&layout::dataset_record(&record.sha256), bytes.into(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(store_error(&what, e)),
        }
    }

    /// A stored dataset's record.
    pub async fn dataset(&self, sha256: &str) -> Result<StoredDataset> {
        check_sha256(sha256)?;
        let what = format!("dataset {sha256}");
        let bytes = match self.store.get(&layout::dataset_record(sha256)).await {
            Ok(r) => r.bytes().await.map_err(|e| store_error(&what, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(ErrorCode::NotFound, format!("no dataset {sha256} in the registry")))
            }
            Err(e) => return Err(store_error(&what, e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(ErrorCode::IntegrityError, format!("{what}: unreadable record: {e}")))
    }

    /// Writes a stored dataset's archive to `to`, checking its sha256 and size.
    pub async fn fetch_dataset(&self, sha256: &str, to: &Path) -> Result<StoredDataset> {
        let record = self.dataset(sha256).await?;
        let what = format!("dataset {sha256}");
        let got = self.store.get(&layout::dataset_archive(sha256)).await.map_err(|e| store_error(&what, e))?;
        let (sha, size) = super::download(got, to, u64::MAX, &what).await?;
        if sha != sha256 || size != record.size {
            return Err(Error::new(
                ErrorCode::IntegrityError,
                format!(
                    "{what}: the stored archive has sha256 {sha} and {size} bytes; its record says {sha256}, {}",
                    record.size
                ),
            ));
        }
        Ok(record)
    }

    /// Every stored dataset's record.
    pub async fn datasets(&self) -> Result<Vec<StoredDataset>> {
        let listed: Vec<_> = self.list_all(&layout::datasets(), "listing datasets").await?;
        let mut out = Vec::new();
        for meta in listed {
            if layout::is_dataset_record(&meta.location) {
                if let Some(sha) = layout::dataset_of(&meta.location) {
                    out.push(self.dataset(&sha).await?);
                }
            }
        }
        Ok(out)
    }
}
