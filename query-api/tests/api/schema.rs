use std::path::PathBuf;

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi/query-api.json");
    let generated = serde_json::to_string_pretty(&query_api::openapi::document()).unwrap() + "\n";
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(checked_in == generated, "{} differs from the generated document: run `cargo xtask schemas`", path.display());
}
