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

#[tokio::test]
async fn the_demo_merges_customers_across_three_systems_with_exact_counts() {
    let project = project_copy();
    let config = load(project.path(), "config/demo.toml");
    let summary = pipeline::run(&config, None).await.unwrap();

    // 24 customer rows (one broken e-mail), 19 orders, 12 stock rows, 11 supplier items.
    assert_eq!(summary.records_read, 66);
    assert_eq!(summary.records_mapped, 65);
    assert_eq!(summary.records_inserted, 65);
    assert_eq!(summary.records_quarantined, 1);
    assert_eq!(summary.files_read, 7);
    // 18 identities appear. Odoo's Müller shares no key with SAP's but the same company name,
    // street and postcode: the probabilistic matcher links it on arrival, so no merge happens.
    assert_eq!(summary.profiles_created, 18);
    assert_eq!(summary.profiles_merged, 0);
    // Every profile the batches touched is built once at the end of the run, with its
    // orders, stock and supplier lead times: 18 created. Then the 11 buyers get their RFM
    // scores once the whole base is known: 11 re-segmented versions.
    assert_eq!(summary.profiles_resegmented, 11);
    assert_eq!(summary.profiles_updated, 0);
    assert_eq!(summary.events_delivered, 29);
    assert_eq!(summary.events_pending, 0);

    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_eq!(feed.len(), 29);
    let count = |t: &str| feed.iter().filter(|e| e["type"] == t).count();
    assert_eq!(count("customer.profile.created"), 18);
    assert_eq!(count("customer.profile.updated"), 11);
    assert_eq!(count("customer.profile.merged"), 0);
    for event in &feed {
        let id = format!(
            "{}:{}",
            event["subject"].as_str().unwrap(),
            event["data"]["version"]
        );
        assert_eq!(event["id"], id.as_str());
        assert_eq!(event["source"], "urn:conflux:demo");
    }

    let profiles = latest_per_profile(&feed);
    assert_eq!(
        profiles.len(),
        18,
        "23 customer records resolve into 18 customers"
    );
    let by_name = |name: &str| {
        profiles
            .values()
            .find(|e| e["data"]["golden"]["full_name"] == name)
            .unwrap_or_else(|| panic!("no profile named {name}"))
    };

    let mueller = by_name("Müller Maschinenbau GmbH");
    assert_eq!(
        mueller["type"], "customer.profile.updated",
        "a buyer: re-segmented after it was created"
    );
    // Odoo's Müller joined SAP's profile on arrival (same company, street and postcode), so
    // one profile was ever created for the three records, and no merge happened.
    let created: Vec<&serde_json::Value> = feed
        .iter()
        .filter(|e| {
            e["type"] == "customer.profile.created"
                && e["data"]["sources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["source_id"] == "0000100001")
        })
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["subject"], mueller["subject"]);
    assert_eq!(created[0]["data"]["sources"].as_array().unwrap().len(), 3);
    let sources: Vec<String> = mueller["data"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["system"].as_str().unwrap(),
                s["source_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(sources, ["odoo/7", "sap/0000100001", "shop/K-1001"]);
    assert_eq!(mueller["data"]["metrics"]["order_count"], 5);
    assert_eq!(
        mueller["data"]["metrics"]["lifetime_value"]["amount"],
        "13390"
    );
    assert_eq!(
        mueller["data"]["metrics"]["lifetime_value"]["currency"],
        "EUR"
    );
    let emails = &mueller["data"]["golden"]["emails"];
    assert_eq!(
        emails[0]["value"],
        "einkauf@mueller-maschinenbau.example.de"
    );
    assert_eq!(emails[0]["systems"], serde_json::json!(["sap", "shop"]));
    assert_eq!(
        emails[1]["value"],
        "buchhaltung@mueller-maschinenbau.example.de"
    );

    // Segments, as of the pinned 2026-11-23: 5 orders since 2024-03-12 (loyal needs 4 over
    // a year), 13390 EUR is diamond (>= 10000); the largest value and order count of the
    // 11 buyers score 5.
    assert_eq!(
        mueller["data"]["segment"],
        serde_json::json!({
            "rfm": {"recency": 2, "frequency": 5, "monetary": 5},
            "value_tier": "diamond",
            "lifecycle": "loyal"
        })
    );
    assert_eq!(mueller["data"]["data_quality"]["completeness"], 100);
    let open: Vec<(&str, &str)> = mueller["data"]["open_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_number"].as_str().unwrap(),
                o["supply_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(open, [("0000045107", "backorder"), ("S00042", "available")]);
    assert_eq!(mueller["data"]["earliest_projected_date"], "2026-12-14");

    let boehm = by_name("Böhm Elektrotechnik KG");
    // Last order more than 365 days before 2026-11-23.
    assert_eq!(boehm["data"]["segment"]["lifecycle"], "lapsed");
    assert_eq!(boehm["data"]["segment"]["value_tier"], "gold");
    assert_eq!(
        boehm["data"]["sources"].as_array().unwrap().len(),
        2,
        "linked by VAT"
    );
    assert_eq!(boehm["data"]["metrics"]["order_count"], 2);
    assert_eq!(boehm["data"]["metrics"]["lifetime_value"]["amount"], "5027");

    let weber = profiles
        .values()
        .find(|e| {
            e["data"]["golden"]["full_name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Weber")
        })
        .unwrap();
    assert_eq!(
        weber["data"]["sources"].as_array().unwrap().len(),
        2,
        "linked by phone"
    );
    assert_eq!(weber["data"]["metrics"]["lifetime_value"]["amount"], "9930");
    // SKU-100: 2 available (MUC-01 2 - 1, NUE-01 1 - 0) for 3 ordered; SUP-020's 14 days
    // beat SUP-010's 28.
    let line = &weber["data"]["open_orders"][0]["lines"][0];
    assert_eq!(line["sku"], "SKU-100");
    assert_eq!(line["status"], "backorder");
    assert_eq!(line["allocated"], "2");
    assert_eq!(line["projected_date"], "2026-12-07");
    assert_eq!(weber["data"]["segment"]["lifecycle"], "repeat");

    let sommer = profiles
        .values()
        .find(|e| {
            e["data"]["golden"]["full_name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Sommer")
        })
        .unwrap();
    assert_eq!(
        sommer["data"]["metrics"]["lifetime_value"]["amount"], "1993.64",
        "USD 2167.00 at 0.92"
    );

    let store = pipeline::open_store(&config).await.unwrap();
    let quarantined = store.quarantine_rows(10).await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].source_ref, "customers.csv:7 (record 6)");
    assert!(quarantined[0].reason.contains("hans.at.example.de"));
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
