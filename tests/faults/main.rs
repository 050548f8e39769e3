//! Faults against the real services of this machine, proven with exact counts: the broker
//! stopped in the middle of publishing, the daemon killed with SIGKILL mid-run, a source
//! failing beyond its retry budget.
//!
//! This is its own test binary because it stops and starts RabbitMQ: cargo runs test binaries
//! one after another, so no other test talks to the broker meanwhile, and the tests here take
//! a lock so they never overlap each other either.

#[allow(dead_code)]
#[path = "../it/common.rs"]
mod common;

mod broker; // RabbitMQ stop_app / start_app mid-publish: every event reaches the consumer
mod kill; // SIGKILL mid-run and restart: the final state equals an uninterrupted run's
mod source; // a source answering 500s past its retry budget: the run fails, the next catches up

use std::path::Path;

/// Serialises the tests of this binary: they disturb shared services.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A shop export of `count` private customers in the demo's shop format, each with its own
/// e-mail address, so every row becomes one profile and one event.
pub fn write_bulk_shop_export(project: &Path, count: usize) {
    let mut csv = String::from(
        "Kundennr;Kundengruppe;Vorname;Nachname;Firma;E-Mail;Telefon;Strasse;PLZ;Ort;Land;Anmeldedatum\n",
    );
    for i in 0..count {
        csv.push_str(&format!(
            "B-{i};Privatkunde;Vor{i};Nach{i};;kunde{i}@example.com;;Weg {i};10115;Berlin;Deutschland;02.05.2022\n"
        ));
    }
    std::fs::write(project.join("demo/shop/customers_bulk.csv"), csv).unwrap();
}

/// The latest content of every live profile of an NDJSON feed, without ids and timestamps
/// (which differ between two projects), sorted: two runs over the same input compare equal.
pub fn final_profiles(feed: &[serde_json::Value]) -> Vec<String> {
    final_state(feed, false)
}

/// [`final_profiles`] without version numbers: the state a feed converges to whatever the
/// run boundaries (a run that ends early publishes what it committed, so a profile completed
/// by the next run has one version more than in a single run).
pub fn final_contents(feed: &[serde_json::Value]) -> Vec<String> {
    final_state(feed, true)
}

fn final_state(feed: &[serde_json::Value], without_versions: bool) -> Vec<String> {
    let mut live = std::collections::BTreeMap::new();
    for event in feed {
        for retired in event["data"]["merged_ids"].as_array().into_iter().flatten() {
            live.remove(retired.as_str().unwrap().to_string().as_str());
        }
        let mut data = event["data"].clone();
        let object = data.as_object_mut().unwrap();
        object.remove("profile_id");
        object.remove("merged_ids");
        if without_versions {
            object.remove("version");
        }
        live.insert(
            event["subject"].as_str().unwrap().to_string(),
            data.to_string(),
        );
    }
    let mut out: Vec<String> = live.into_values().collect();
    out.sort();
    out
}
