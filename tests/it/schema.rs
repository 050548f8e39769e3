//! The feed's JSON Schema is generated from the Rust types and committed; this test fails
//! when they drift. Regenerate with `CONFLUX_UPDATE_SCHEMA=1 cargo test schema`.

use conflux::model::event::ProfileEvent;

use crate::common::repo_root;

#[test]
fn committed_profile_schema_matches_the_types() {
    let path = repo_root().join("schema/customer-profile.schema.json");
    let generated = serde_json::to_string_pretty(&ProfileEvent::json_schema()).unwrap() + "\n";
    if std::env::var("CONFLUX_UPDATE_SCHEMA").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/customer-profile.schema.json is out of date with the types; \
         regenerate it with CONFLUX_UPDATE_SCHEMA=1 cargo test schema and review the diff"
    );
}

#[test]
fn schema_requires_the_cloudevents_envelope_and_profile_fields() {
    let schema = ProfileEvent::json_schema();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
    ] {
        assert!(
            required.contains(&field),
            "envelope field {field} must be required"
        );
    }
    let text = schema.to_string();
    for name in [
        "customer.profile.created",
        "customer.profile.updated",
        "customer.profile.merged",
        "schema_version",
        "lifetime_value",
    ] {
        assert!(text.contains(name), "schema must mention {name}");
    }
}
