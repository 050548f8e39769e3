//! The bundled demo end to end on SQLite + NDJSON: exact counts of records, profiles,
//! merges and events, and a second run over unchanged input that writes nothing.

use std::collections::BTreeMap;

use conflux::pipeline;

use crate::common::{load, project_copy, read_feed};

#[tokio::test]
async fn a_second_run_over_unchanged_input_writes_no_profile_versions_and_no_events() {
    let project = project_copy();
    let config = load(project.path(), "config/demo.toml");
    let first = pipeline::run(&config, None).await.unwrap();
    assert!(first.events_delivered > 0);
    let feed_path = project.path().join(".conflux/feed.ndjson");
    let events_after_first = read_feed(&feed_path).len();

    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.records_read, 0, "every file is already ingested");
    assert_eq!(
        second.profiles_created + second.profiles_updated + second.profiles_merged,
        0
    );
    assert_eq!(second.events_delivered, 0);
    assert_eq!(read_feed(&feed_path).len(), events_after_first);

    // The same files dropped again under new names are read, but every record is unchanged.
    for (from, to) in [
        (
            "demo/sap/DEBMAS07_customers.xml",
            "demo/sap/DEBMAS07_customers_again.xml",
        ),
        (
            "demo/odoo/res_partner.json",
            "demo/odoo/res_partner_again.json",
        ),
    ] {
        std::fs::copy(project.path().join(from), project.path().join(to)).unwrap();
    }
    let third = pipeline::run(&config, None).await.unwrap();
    assert!(third.records_read > 0);
    assert_eq!(third.records_unchanged, third.records_mapped);
    assert_eq!(third.records_inserted + third.records_updated, 0);
    assert_eq!(third.events_delivered, 0);
    assert_eq!(read_feed(&feed_path).len(), events_after_first);
}

/// Latest event per profile id, following merges (a retired id's last state is its merge).
fn latest_per_profile(feed: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    let mut latest = BTreeMap::new();
    for event in feed {
        latest.insert(
            event["subject"].as_str().unwrap().to_string(),
            event.clone(),
        );
        for retired in event["data"]["merged_ids"].as_array().into_iter().flatten() {
            latest.remove(retired.as_str().unwrap());
        }
    }
    latest
}
