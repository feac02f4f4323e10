//! The whole story through a Rust client generated from the committed OpenAPI document (3.0.3
//! rendering) by openapi-generator `rust`: check an upload, upload it, retry with the same
//! Idempotency-Key, follow the job's events, promote the version, classify a held-out image, read
//! the card, queue a second job on the stored dataset with `POST /jobs` and cancel it, and read
//! typed errors by status.
//!
//! usage: petal-sdk-story BASE_URL TOKEN DATASET_ZIP SPEC_JSON HELD_OUT_IMAGE EXPECTED_CLASS
use std::path::PathBuf;

use petal_client::apis::configuration::Configuration;
use petal_client::apis::{inference_api, models_api, training_api, Error};
use petal_client::models::{self, ErrorCode, JobEvent, JobSpec, JobState};

/// The typed error body of a failed call: every operation's errors are its `default` response.
fn error_of<T: std::fmt::Debug>(e: Error<T>) -> (u16, T) {
    match e {
        Error::ResponseError(r) => (r.status.as_u16(), r.entity.expect("a typed error body")),
        other => panic!("not an error response: {other}"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, token, zip, spec_json, image, expected] = &args[..] else {
        panic!("usage: petal-sdk-story BASE_URL TOKEN DATASET_ZIP SPEC_JSON HELD_OUT_IMAGE EXPECTED_CLASS")
    };
    let config =
        Configuration { base_path: base.clone(), bearer_access_token: Some(token.clone()), ..Configuration::default() };
    let spec: JobSpec = serde_json::from_str(spec_json).expect("a job spec");
    // The spec part is JSON text: the model's own serializer writes it.
    let spec_text = serde_json::to_string(&spec).unwrap();
    let zip = PathBuf::from(zip);

    // The dry run answers what petal read, and queues nothing.
    let checked = training_api::check_finetune(&config, &spec_text, Some(zip.clone())).await.unwrap();
    assert!(checked.dataset.train_images > 0 && checked.sha256.len() == 64, "{checked:?}");

    // Upload; a retry with the same key gets the same job.
    let key = format!("rust-story-{}", std::process::id());
    let job = training_api::finetune(&config, &spec_text, Some(&key), Some(zip.clone())).await.unwrap();
    assert_eq!(job.spec.model, spec.model);
    let retried = training_api::finetune(&config, &spec_text, Some(&key), Some(zip.clone())).await.unwrap();
    assert_eq!(retried.id, job.id, "the retry answers the first job");

    // Follow the job through its server-sent events until the stream closes after the final state.
    let stream = training_api::job_events(&config, &job.id).await.unwrap().text().await.unwrap();
    let mut events = Vec::new();
    let mut name = String::new();
    for line in stream.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: serde_json::Value = serde_json::from_str(data).unwrap();
            let event: JobEvent = serde_json::from_value(serde_json::json!({"event": name, "data": data}))
                .unwrap_or_else(|e| panic!("event {name}: {e}: {data}"));
            events.push(event);
        }
    }
    assert!(events.iter().any(|e| matches!(e, JobEvent::Progress(_))));
    assert!(events.iter().any(|e| matches!(e, JobEvent::Epoch(_))));
    match events.last() {
        Some(JobEvent::State(s)) => assert_eq!(s.data.state, JobState::Succeeded),
        other => panic!("the last event: {other:?}"),
    }
    let done = training_api::get_job(&config, &job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let result = done.result.clone().flatten().expect("a result");
    let (model, version) = (result.model.clone(), result.version);

    // Promote it (compare-and-swap from "no alias yet"), then classify a held-out image by alias.
    let mut promote = models::PromoteRequest::new(version);
    promote.reason = Some("rust story".into());
    let entry = models_api::promote(&config, &model, "production", promote, Some("0")).await.unwrap();
    assert_eq!((entry.version, entry.seq), (version, 1));
    let answer =
        inference_api::classify(&config, PathBuf::from(image), Some(&model), None, Some("production"), Some(1))
            .await
            .unwrap();
    assert_eq!(&answer.predictions[0].name, expected, "{answer:?}");
    assert_eq!(answer.version, version);

    // The model card (Markdown) and the ONNX file come back as they are.
    let card = models_api::get_card(&config, &model, version, None).await.unwrap().text().await.unwrap();
    assert!(card.contains(&format!("# {model} — version {version}")), "{card}");
    let onnx = models_api::download_onnx(&config, &model, version, None).await.unwrap().bytes().await.unwrap();
    assert!(onnx.len() > 1000);

    // A second job on the stored dataset, by JSON, then canceled.
    let mut second_spec = spec.clone();
    let mut dataset = second_spec.dataset.clone().map(|d| *d).unwrap_or_default();
    dataset.sha256 = Some(Some(done.dataset.sha256.clone()));
    second_spec.dataset = Some(Box::new(dataset));
    let second = training_api::create_job(&config, second_spec, None).await.unwrap();
    assert_eq!(second.dataset.sha256, done.dataset.sha256);
    let canceled = training_api::cancel_job(&config, &second.id).await.unwrap();
    assert_eq!(canceled.id, second.id);

    // A tagged union goes both ways as the server writes it (no tag lost, none doubled).
    let decay = serde_json::json!({"kind": "geometric", "factor": 2.5});
    let typed: models::Decay = serde_json::from_value(decay.clone()).unwrap();
    assert!(matches!(typed, models::Decay::Geometric(_)), "{typed:?}");
    assert_eq!(serde_json::to_value(&typed).unwrap(), decay);

    // Errors are typed by their body, and the status is the one the server sent.
    let (status, training_api::GetJobError::DefaultResponse(body)) =
        error_of(training_api::get_job(&config, "00000000-0000-4000-8000-000000000000").await.unwrap_err())
    else {
        panic!("an untyped error")
    };
    assert_eq!((status, body.error.code), (404, ErrorCode::NotFound));
    let stranger = Configuration { bearer_access_token: Some("wrong-token-0123456789".into()), ..config.clone() };
    let (status, training_api::ListJobsError::DefaultResponse(body)) =
        error_of(training_api::list_jobs(&stranger, None, None, None).await.unwrap_err())
    else {
        panic!("an untyped error")
    };
    assert_eq!((status, body.error.code), (401, ErrorCode::Unauthorized));
    println!(
        "{}",
        serde_json::json!({"job": job.id, "version": version, "events": events.len(), "answer": answer.predictions[0].name})
    );
}
