//! Byte streams with a size limit: collected in memory (request bodies, multipart parts) or
//! written to a file with their sha256 counted as they arrive (uploads, downloads). The limit is
//! checked as bytes arrive, never trusted from a header.
use std::io::Write;

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Collects `stream`, refusing it with `too_large()` past `limit` bytes; a stream error becomes
/// `error(e)`.
pub async fn collect<E>(
    mut stream: impl Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    limit: usize,
    too_large: impl Fn() -> Error,
    error: impl Fn(E) -> Error,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&error)?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Writes `stream` to `file`, refusing it with `too_large()` past `limit` bytes; returns its
/// sha256 (hex) and size.
pub async fn to_file<E>(
    mut stream: impl Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    file: &std::fs::File,
    limit: u64,
    too_large: impl Fn() -> Error,
    error: impl Fn(E) -> Error,
) -> Result<(String, u64)> {
    let write_error = |e: std::io::Error| Error::internal(format!("writing a received stream to its file: {e}"));
    let mut out = std::io::BufWriter::new(file);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&error)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large());
        }
        hash.update(&chunk);
        out.write_all(&chunk).map_err(write_error)?;
    }
    out.flush().map_err(write_error)?;
    Ok((hex::encode(hash.finalize()), size))
}
