//! The committed OpenAPI document is the one the code describes.
use utoipa::OpenApi;

#[test]
fn committed_spec_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).expect("openapi/openapi.json exists");
    let current = petal::api::ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
    assert!(
        committed == current,
        "openapi/openapi.json is out of date with the code: run `make openapi` and commit the result"
    );
}
