//! Models for serving, loaded from the registry: a version's ONNX file, checked against its
//! manifest and `inference.max_model_bytes`, opened in a warmed-up session.
use crate::config::Config;
use crate::infer::engine::ModelHandle;
use crate::infer::runtime::OrtRuntime;
use crate::registry::Registry;

/// Loads and warms up one version of a model from the registry (its ONNX file checked against
/// the manifest).
pub async fn load_version(
    config: &Config,
    registry: &Registry,
    name: &str,
    version: u64,
) -> crate::Result<ModelHandle> {
    let started = std::time::Instant::now();
    let loaded = load(config, registry, name, version).await;
    let m = crate::telemetry::metrics::global();
    m.loads.with_label_values(&[if loaded.is_ok() { "ok" } else { "error" }]).inc();
    if loaded.is_ok() {
        m.load_seconds.observe(started.elapsed().as_secs_f64());
    }
    loaded
}

async fn load(config: &Config, registry: &Registry, name: &str, version: u64) -> crate::Result<ModelHandle> {
    let manifest = registry.manifest(name, version).await?;
    let size = manifest.artifacts.iter().find(|a| a.name == "model.onnx").map_or(0, |a| a.size);
    if size > config.inference.max_model_bytes {
        return Err(crate::Error::new(
            crate::error::ErrorCode::ModelInvalid,
            format!(
                "{name} version {version}: its ONNX file has {size} bytes, more than inference.max_model_bytes ({})",
                config.inference.max_model_bytes
            ),
        ));
    }
    let onnx = registry.read_artifact(&manifest, "model.onnx").await?;
    let config = config.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let runtime = OrtRuntime::init(&config.onnxruntime)?;
        ModelHandle::load(&runtime, &onnx, &name, version, &config.inference.engine)
    })
    .await
    .map_err(|e| crate::Error::internal(e.to_string()))?
}
