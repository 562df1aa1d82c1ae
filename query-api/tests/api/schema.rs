//! The OpenAPI document is generated from the answer types; the copy
//! checked in under `schemas/openapi/` must match it.

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    test_support::assert_checked_in("schemas/openapi/query-api.json", &query_api::openapi::document());
}
