//! The committed OpenAPI documents (3.1, and its 3.0.3 rendering) are the ones the code describes.
#[test]
fn committed_spec_matches_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = petal::api::document();
    let current = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let rendered = serde_json::to_string_pretty(&petal::api::openapi30::render(&doc)).unwrap() + "\n";
    for (file, want) in [("openapi/openapi.json", current), ("openapi/openapi-3.0.json", rendered)] {
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(committed == want, "{file} is out of date with the code: run `make openapi` and commit the result");
    }
}
