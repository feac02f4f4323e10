//! Objects fetched from outside the registry: pretrained weights over HTTP(S), through the same
//! `object_store` client stack the registry uses.
use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use crate::error::{Error, ErrorCode, Result};

/// GETs a URL through object_store's HTTP client (TLS with the system's roots; plain http allowed
/// for mirrors on a private network).
pub async fn fetch_url(url: &str) -> Result<Vec<u8>> {
    let failed = |e: &dyn std::fmt::Display| Error::new(ErrorCode::DownloadFailed, format!("downloading {url}: {e}"));
    let (base, file) = url.rsplit_once('/').ok_or_else(|| failed(&"not a URL"))?;
    let store = object_store::http::HttpBuilder::new()
        .with_url(base)
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .build()
        .map_err(|e| failed(&e))?;
    let result = store.get(&object_store::path::Path::from(file)).await.map_err(|e| failed(&e))?;
    let mut stream = result.into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(|e| failed(&e))?);
    }
    Ok(out)
}
