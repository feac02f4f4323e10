//! The model registry against a real S3-compatible server (s3s-fs on 127.0.0.1) and the local
//! filesystem: round trips, racing promotions, a server dying mid-publish, tampering, licences.
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::S3Server;
use petal::config::{RegistryBackend, RegistryConfig, Usage};
use petal::records::names::{AliasName, ModelName};
use petal::registry::manifest::{BaseWeights, DatasetRecord};
use petal::registry::{NewArtifact, Promotion, Provenance, Registry};
use petal::train::arch::Arch;
use petal::train::catalog::Catalog;
use petal::ErrorCode;

fn local(dir: &Path) -> Registry {
    Registry::open(&RegistryConfig { backend: RegistryBackend::Local, path: dir.to_path_buf(), ..Default::default() })
        .unwrap()
}

/// Provenance as training records it: ImageNet weights (non-commercial) and a dataset with terms.
fn provenance() -> Provenance {
    let entry = Catalog::embedded().find(Arch::MobilenetV2, Some("IMAGENET1K_V1")).unwrap();
    let mut p = Provenance {
        base_weights: Some(BaseWeights {
            catalog: Some(entry.weights.clone()),
            arch: "mobilenet_v2".into(),
            url: Some(entry.url.clone()),
            sha256: entry.sha256.clone().unwrap(),
            licences: entry.licences.clone(),
        }),
        dataset: Some(DatasetRecord {
            digest: "sha256:abc".into(),
            name: "shapes".into(),
            class_names: vec!["circle".into(), "square".into()],
            counts: [("train".to_string(), 40), ("val".to_string(), 10)].into(),
            terms: Some("CC-BY-4.0, made by the test".into()),
            licences: Vec::new(),
        }),
        recipe: serde_json::json!({"phases": [{"name": "feature_extraction", "epochs": 16}]}),
        ..Default::default()
    };
    p.metrics.best.insert("val_top1".into(), 0.97);
    p.metrics.per_epoch.push(serde_json::json!({"epoch": 1, "val_top1": 0.97}));
    p.timings.insert("train_s".into(), 12.5);
    p
}

fn artifacts(tag: &str) -> Vec<NewArtifact> {
    vec![
        NewArtifact::new("model.onnx", format!("onnx bytes {tag}").into_bytes()),
        NewArtifact::new("metrics.json", format!("{{\"tag\": \"{tag}\"}}").into_bytes()),
    ]
}

async fn roundtrip(r: &Registry) {
    assert!(r.models().await.unwrap().is_empty());
    r.check().await.unwrap();
    let v1 = r.publish(&model("flowers"), artifacts("one"), provenance(), |_| {}).await.unwrap();
    let v2 = r.publish(&model("flowers"), artifacts("two"), provenance(), |_| {}).await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(r.models().await.unwrap(), vec!["flowers".to_string()]);
    assert_eq!(r.versions("flowers").await.unwrap(), vec![1, 2]);

    let m = r.manifest("flowers", 2).await.unwrap();
    assert_eq!(m, v2);
    assert_eq!(m.artifacts.len(), 2);
    assert_eq!(r.read_artifact(&m, "model.onnx").await.unwrap(), b"onnx bytes two");
    assert_eq!(m.provenance.code.petal_version, env!("CARGO_PKG_VERSION"));
    r.verify("flowers", 1).await.unwrap();
    assert_eq!(r.manifest("flowers", 3).await.unwrap_err().code, ErrorCode::NotFound);

    let promote = |v, by: &str| Promotion { version: v, by: by.into(), reason: "test".into(), ..Default::default() };
    let e1 = r.promote(&model("flowers"), &alias("production"), &promote(1, "alice"), Usage::Research).await.unwrap();
    assert_eq!((e1.seq, e1.from, e1.version), (1, None, 1));
    let e2 = r.promote(&model("flowers"), &alias("production"), &promote(2, "bob"), Usage::Research).await.unwrap();
    assert_eq!((e2.seq, e2.from, e2.version), (2, Some(1), 2));
    assert_eq!(r.current("flowers", "production").await.unwrap().unwrap().version, 2);
    let h = r.history("flowers", "production").await.unwrap();
    assert_eq!(h.iter().map(|e| (e.by.as_str(), e.version)).collect::<Vec<_>>(), vec![("alice", 1), ("bob", 2)]);
    assert_eq!(r.aliases("flowers").await.unwrap(), vec!["production".to_string()]);
    // A promotion to a version that does not exist changes nothing.
    assert_eq!(
        r.promote(&model("flowers"), &alias("production"), &promote(9, "eve"), Usage::Research).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(r.history("flowers", "production").await.unwrap().len(), 2);
    // Stale If-Match.
    let stale = Promotion { if_match: Some(1), ..promote(1, "carol") };
    assert_eq!(
        r.promote(&model("flowers"), &alias("production"), &stale, Usage::Research).await.unwrap_err().code,
        ErrorCode::AliasPreconditionFailed
    );

    let card = m.card();
    for want in [
        "# flowers — version 2",
        "## Base model",
        "MobileNet_V2_Weights.IMAGENET1K_V1",
        "## Dataset",
        "CC-BY-4.0",
        "Non-commercial use only",
        "model.onnx",
        "val_top1",
    ] {
        assert!(card.contains(want), "card lacks {want:?}:\n{card}");
    }
}

/// A model name for these tests (the registry's write path takes checked names).
fn model(name: &str) -> ModelName {
    ModelName::new(name).unwrap()
}

fn alias(name: &str) -> AliasName {
    AliasName::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundtrip_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    roundtrip(&local(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundtrip_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    roundtrip(&Registry::open(&s3.registry_config("rt")).unwrap()).await;
    // The objects really are in the bucket, under the prefix and the documented layout.
    assert!(dir.path().join("petal/rt/models/flowers/versions/00000002.json").exists());
}

/// N promotions race from the same state with If-Match: exactly one wins. Then N race without
/// If-Match, each retrying on conflict: all land, one after another, none lost.
async fn racing_promotions(r: Arc<Registry>) {
    for tag in ["a", "b", "c"] {
        r.publish(&model("race"), artifacts(tag), Provenance::default(), |_| {}).await.unwrap();
    }
    const N: u64 = 8;
    let mut tasks = Vec::new();
    for i in 0..N {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let p = Promotion { version: 1 + i % 3, if_match: Some(0), by: format!("w{i}"), ..Default::default() };
            r.promote(&model("race"), &alias("prod"), &p, Usage::Research).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(e) => assert!(matches!(e.code, ErrorCode::AliasConflict | ErrorCode::AliasPreconditionFailed), "{e:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one of {N} racing promotions wins");
    assert_eq!(r.history("race", "prod").await.unwrap().len(), 1);

    let mut tasks = Vec::new();
    for i in 0..N {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let p = Promotion { version: 1 + i % 3, by: format!("retry{i}"), ..Default::default() };
            for _ in 0..100 {
                match r.promote(&model("race"), &alias("prod"), &p, Usage::Research).await {
                    Ok(e) => return e,
                    Err(e) if e.code == ErrorCode::AliasConflict => continue,
                    Err(e) => panic!("{e:?}"),
                }
            }
            panic!("promotion never landed")
        }));
    }
    let mut landed = Vec::new();
    for t in tasks {
        landed.push(t.await.unwrap());
    }
    let history = r.history("race", "prod").await.unwrap();
    assert_eq!(history.len() as u64, 1 + N, "no history entry lost");
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        if i > 0 {
            assert_eq!(e.from, Some(history[i - 1].version), "the chain of moves is unbroken");
        }
    }
    let ids: BTreeSet<&str> = history.iter().map(|e| e.promotion_id.as_str()).collect();
    assert_eq!(ids.len(), history.len());
    for e in &landed {
        assert!(history.iter().any(|h| h.promotion_id == e.promotion_id), "every reported success is in the history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_promotions_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    racing_promotions(Arc::new(local(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_promotions_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    racing_promotions(Arc::new(Registry::open(&s3.registry_config("race")).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stopped_mid_publish_leaves_no_version_and_gc_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(dir.path());
    let r = Registry::open(&s3.registry_config("crash")).unwrap();
    let mut killed = false;
    let err = r
        .publish(&model("m"), artifacts("x"), provenance(), |name| {
            if name == "model.onnx" {
                s3.stop();
                killed = true;
            }
        })
        .await
        .unwrap_err();
    assert!(killed);
    assert_eq!(err.code, ErrorCode::RegistryUnavailable, "{err:?}");
    assert!(err.message.contains("metrics.json"), "the error names what failed: {}", err.message);

    s3.restart();
    assert!(r.versions("m").await.unwrap().is_empty(), "no visible partial version");
    assert!(r.models().await.unwrap().is_empty());
    let v = r.publish(&model("m"), artifacts("y"), provenance(), |_| {}).await.unwrap();
    assert_eq!(v.version, 1);

    // The first attempt's uploaded artifact is an orphan; a young one is left alone.
    assert!(r.gc(std::time::Duration::from_secs(3600), false).await.unwrap().is_empty());
    let would = r.gc(std::time::Duration::ZERO, true).await.unwrap();
    assert_eq!(would.len(), 1, "{would:?}");
    assert!(would[0].ends_with("/model.onnx") && !would[0].contains(&v.upload_id));
    let removed = r.gc(std::time::Duration::ZERO, false).await.unwrap();
    assert_eq!(removed, would);
    assert!(r.gc(std::time::Duration::ZERO, false).await.unwrap().is_empty());
    r.verify("m", 1).await.unwrap();
}

async fn tampering_is_detected(r: &Registry, object_file: impl Fn(&str) -> std::path::PathBuf) {
    let m = r.publish(&model("t"), artifacts("clean"), provenance(), |_| {}).await.unwrap();
    let a = m.artifact("model.onnx").unwrap();
    let file = object_file(&a.path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let e = r.verify("t", 1).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IntegrityError);
    assert!(e.message.contains("model.onnx") && e.message.contains("sha256"), "{}", e.message);
    bytes.truncate(5);
    std::fs::write(&file, &bytes).unwrap();
    let e = r.read_artifact(&m, "model.onnx").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IntegrityError);
    assert!(e.message.contains("truncated"), "{}", e.message);
    // The other artifact is still fine.
    assert!(r.read_artifact(&m, "metrics.json").await.is_ok());
}

#[tokio::test]
async fn tampering_is_detected_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    tampering_is_detected(&local(&root), |p| root.join(p)).await;

    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    let bucket = dir.path().join("petal/tamper");
    tampering_is_detected(&Registry::open(&s3.registry_config("tamper")).unwrap(), |p| bucket.join(p)).await;
}

#[tokio::test]
async fn commercial_use_needs_the_terms_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let r = local(dir.path());
    r.publish(&model("lic"), artifacts("l"), provenance(), |_| {}).await.unwrap();
    let p = Promotion { version: 1, by: "ops".into(), ..Default::default() };
    let e = r.promote(&model("lic"), &alias("production"), &p, Usage::Commercial).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LicenceNotAcknowledged);
    assert!(e.message.contains("base weights MobileNet_V2_Weights.IMAGENET1K_V1"), "{}", e.message);
    assert!(e.message.contains("ImageNet"), "{}", e.message);
    assert!(e.message.contains("dataset shapes") && e.message.contains("CC-BY-4.0"), "{}", e.message);
    assert!(r.history("lic", "production").await.unwrap().is_empty(), "nothing moved");

    let ack = Promotion { acknowledge_terms: true, ..p.clone() };
    let entry = r.promote(&model("lic"), &alias("production"), &ack, Usage::Commercial).await.unwrap();
    assert_eq!(entry.acknowledged_terms.len(), 2, "{:?}", entry.acknowledged_terms);
    // Research use needs no acknowledgement.
    r.promote(&model("lic"), &alias("staging"), &p, Usage::Research).await.unwrap();
    // A model without restricted lineage needs none either.
    r.publish(&model("free"), artifacts("f"), Provenance::default(), |_| {}).await.unwrap();
    r.promote(&model("free"), &alias("production"), &Promotion { version: 1, ..Default::default() }, Usage::Commercial)
        .await
        .unwrap();
}

#[tokio::test]
async fn seeding_copies_missing_versions_and_aliases_once() {
    let seed_dir = tempfile::tempdir().unwrap();
    let seed = local(seed_dir.path());
    seed.publish(&model("bundled"), artifacts("s"), provenance(), |_| {}).await.unwrap();
    seed.promote(
        &model("bundled"),
        &alias("production"),
        &Promotion { version: 1, by: "seed".into(), ..Default::default() },
        Usage::Research,
    )
    .await
    .unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let target = local(target_dir.path());
    assert_eq!(target.seed_from(&seed).await.unwrap(), vec![("bundled".to_string(), 1)]);
    assert_eq!(target.current("bundled", "production").await.unwrap().unwrap().version, 1);
    target.verify("bundled", 1).await.unwrap();
    assert!(target.seed_from(&seed).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundtrip_and_races_in_memory() {
    let config = RegistryConfig { backend: RegistryBackend::Memory, ..Default::default() };
    roundtrip(&Registry::open(&config).unwrap()).await;
    racing_promotions(Arc::new(Registry::open(&config).unwrap())).await;
}
